//! Framing and decoding: the fixed header, the per-connection [`Decoder`] and the
//! stateless [`decode_packet`].
//!
//! Order of checks, so that a hostile peer costs little: packet type against the
//! connection state (first packet must be CONNECT, no second CONNECT), fixed header
//! flags, remaining length against the maximum packet size. Only then is the body
//! buffered and parsed, from a [`Reader`] bounded by the remaining length.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    AckKind, Auth, ConnAck, Connect, Disconnect, Packet, PubAck, Publish, SubAck, Subscribe,
    UnsubAck, Unsubscribe, kind,
};
use crate::primitives::{Reader, parse_varint};
use crate::version::ProtocolVersion;

/// A parsed and checked fixed header.
#[derive(Clone, Copy, Debug)]
struct FixedHeader {
    /// Packet type (high nibble).
    kind: u8,
    /// Flags (low nibble).
    flags: u8,
    /// Bytes taken by the fixed header itself (2 to 5).
    header_len: usize,
    /// Whole packet size: fixed header plus remaining length.
    total_len: usize,
}

/// Parse the fixed header at the front of `buf`; `Ok(None)` if it is incomplete.
fn parse_fixed_header(
    buf: &[u8],
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let (packet_kind, flags) = (first >> 4, first & 0x0F);
    check_kind(packet_kind, version)?;
    check_flags(packet_kind, flags)?;
    let Some((remaining, varint_len)) = parse_varint(rest)? else {
        return Ok(None);
    };
    // u32 -> usize is lossless on every platform this crate supports (>= 32 bit).
    let total_len = 1 + varint_len + remaining as usize;
    if total_len > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size: total_len,
            max: max_packet_size,
        });
    }
    Ok(Some(FixedHeader {
        kind: packet_kind,
        flags,
        header_len: 1 + varint_len,
        total_len,
    }))
}

/// Is this packet type acceptable in the connection's state?
fn check_kind(packet_kind: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    match (packet_kind, version) {
        (0, _) => Err(DecodeError::MalformedPacket("reserved packet type 0")),
        (kind::CONNECT, None) => Ok(()),
        (_, None) => Err(DecodeError::ProtocolError("first packet is not CONNECT")),
        (kind::CONNECT, Some(_)) => Err(DecodeError::ProtocolError("second CONNECT packet")),
        (kind::AUTH, Some(ProtocolVersion::V311)) => Err(DecodeError::ProtocolError(
            "AUTH packet on an MQTT 3.1.1 connection",
        )),
        _ => Ok(()),
    }
}

/// Fixed header flags: fixed values for every type but PUBLISH.
fn check_flags(packet_kind: u8, flags: u8) -> Result<(), DecodeError> {
    let ok = match packet_kind {
        // DUP and RETAIN are free; QoS 3 is malformed (MQTT-3.3.1-4).
        kind::PUBLISH => (flags >> 1) & 0b11 != 3,
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else if packet_kind == kind::PUBLISH {
        Err(DecodeError::MalformedPacket("PUBLISH QoS 3"))
    } else {
        Err(DecodeError::MalformedPacket("invalid fixed header flags"))
    }
}

/// Decode a packet body whose fixed header has been checked.
fn decode_body(
    header: FixedHeader,
    body: Bytes,
    version: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let r = &mut r;
    // `check_kind` guarantees `version` is None exactly for CONNECT.
    let Some(v) = version else {
        return Connect::read(r).map(Packet::Connect);
    };
    let packet = match header.kind {
        kind::CONNACK => Packet::ConnAck(ConnAck::read(v, r)?),
        kind::PUBLISH => Packet::Publish(Publish::read(header.flags, v, r)?),
        kind::PUBACK => Packet::PubAck(PubAck::read(AckKind::Ack, v, r)?),
        kind::PUBREC => Packet::PubRec(PubAck::read(AckKind::Rec, v, r)?),
        kind::PUBREL => Packet::PubRel(PubAck::read(AckKind::Rel, v, r)?),
        kind::PUBCOMP => Packet::PubComp(PubAck::read(AckKind::Comp, v, r)?),
        kind::SUBSCRIBE => Packet::Subscribe(Subscribe::read(v, r)?),
        kind::SUBACK => Packet::SubAck(SubAck::read(v, r)?),
        kind::UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::read(v, r)?),
        kind::UNSUBACK => Packet::UnsubAck(UnsubAck::read(v, r)?),
        kind::PINGREQ => {
            r.expect_end()?;
            Packet::PingReq
        }
        kind::PINGRESP => {
            r.expect_end()?;
            Packet::PingResp
        }
        kind::DISCONNECT => Packet::Disconnect(Disconnect::read(v, r)?),
        kind::AUTH => Packet::Auth(Auth::read(r)?),
        _ => return Err(DecodeError::ProtocolError("unexpected packet type")),
    };
    Ok(packet)
}

/// Decode one packet from the front of `buf`, statelessly.
///
/// `version` is the connection's protocol version, `None` before CONNECT (then only a
/// CONNECT is accepted, and a CONNECT is rejected otherwise). Returns the packet and the
/// number of bytes it took, or `Ok(None)` if `buf` does not yet hold a whole packet.
/// Binary fields are copied out of `buf`; [`Decoder`] avoids that copy.
pub fn decode_packet(
    buf: &[u8],
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = parse_fixed_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(header.header_len..header.total_len) else {
        return Ok(None);
    };
    let packet = decode_body(header, Bytes::copy_from_slice(frame), version)?;
    Ok(Some((packet, header.total_len)))
}

/// Incremental decoder for one connection (server or client side).
///
/// Tracks the protocol version: it starts unknown, so only a CONNECT is accepted, and
/// a decoded CONNECT fixes it (a client sets it with [`Decoder::set_version`] after
/// sending its CONNECT). After any error the connection must be closed; the buffer is
/// then in an unspecified state.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Protocol version of the connection; `None` until CONNECT. Set by `decode` (server
    /// side) or `set_version` (client side).
    version: Option<ProtocolVersion>,
    /// Largest accepted packet, fixed header included (our MQTT 5 Maximum Packet Size).
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for a new connection accepting packets up to `max_packet_size` bytes.
    pub const fn new(max_packet_size: u32) -> Self {
        Self {
            version: None,
            max_packet_size,
        }
    }

    /// The connection's protocol version, once known.
    pub const fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Fix the protocol version (client side, after sending CONNECT).
    pub const fn set_version(&mut self, v: ProtocolVersion) {
        self.version = Some(v);
    }

    /// The largest accepted packet size.
    pub const fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Consume one complete packet from the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed; `buf` is then untouched. The packet size
    /// is checked against the maximum as soon as the fixed header is complete, and
    /// nothing is allocated for the announced size. Binary fields and payloads of the
    /// returned packet share `buf`'s allocation (no copy).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = parse_fixed_header(buf, self.version, self.max_packet_size)? else {
            return Ok(None);
        };
        if buf.len() < header.total_len {
            // No `reserve` for the announced size: a peer could announce the maximum
            // and never send it. The buffer grows only as bytes actually arrive.
            return Ok(None);
        }
        let mut frame = buf.split_to(header.total_len).freeze();
        frame.advance(header.header_len);
        let packet = decode_body(header, frame, self.version)?;
        if let Packet::Connect(connect) = &packet {
            self.version = Some(connect.protocol);
        }
        Ok(Some(packet))
    }
}
