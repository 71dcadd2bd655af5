//! The [`Packet`] enum and the per-packet structs, with the encoding entry points.
//!
//! Each submodule owns one family of packets and both directions of its body format:
//! `write_body` (generic over [`Sink`], so one routine both measures and writes) and
//! `read` (from a [`Reader`] over exactly the packet body). The fixed header is handled
//! here (encode) and in [`crate::decoder`] (decode).

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod subscribe;

use bytes::BytesMut;

pub(crate) use self::ack::AckKind;
pub use self::ack::PubAck;
pub use self::auth::Auth;
pub use self::connack::ConnAck;
pub use self::connect::{Connect, Will};
pub use self::disconnect::Disconnect;
pub use self::publish::Publish;
pub use self::subscribe::{SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Counter, MAX_VARINT, Sink, varint_len, write_varint};
use crate::version::ProtocolVersion;

/// Control packet type numbers (high nibble of the first byte).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
    pub(crate) const AUTH: u8 = 15;
}

/// One MQTT control packet, in either protocol version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "plain structs keep construction and matching simple; a packet lives briefly \
              between the socket and the session, so its size is not worth a Box per CONNECT"
)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Connect),
    /// CONNACK (server to client).
    ConnAck(ConnAck),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK: QoS 1 acknowledgement.
    PubAck(PubAck),
    /// PUBREC: QoS 2 step 1.
    PubRec(PubAck),
    /// PUBREL: QoS 2 step 2.
    PubRel(PubAck),
    /// PUBCOMP: QoS 2 step 3.
    PubComp(PubAck),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client).
    UnsubAck(UnsubAck),
    /// PINGREQ (client to server).
    PingReq,
    /// PINGRESP (server to client).
    PingResp,
    /// DISCONNECT (client to server; also server to client in MQTT 5).
    Disconnect(Disconnect),
    /// AUTH (MQTT 5 only, both directions).
    Auth(Auth),
}

impl Packet {
    /// Append the encoded packet to `out`.
    ///
    /// MQTT 3.1.1 has no properties and fewer reason codes: for that version properties
    /// are omitted and acknowledgement reason codes are mapped (CONNACK, SUBACK) or
    /// omitted (PUBACK family, UNSUBACK, DISCONNECT). Errors (nothing is appended): a
    /// field too long for its length prefix, a packet over 268,435,455 bytes of remaining
    /// length, a packet or field the version cannot express (AUTH in 3.1.1), or a
    /// packet the receiver would reject (QoS > 0 PUBLISH without packet identifier,
    /// packet identifier 0, property not allowed in the packet type, ...).
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let body_len = self.body_len(version)?;
        let start = out.len();
        out.reserve(1 + varint_len(body_len) + body_len);
        out.write_u8(self.first_byte());
        write_varint(out, "remaining length", body_len)?;
        if let Err(e) = self.write_body(version, out) {
            // Unreachable in practice: the measuring pass ran the same checks.
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Size in bytes of the whole encoded packet, fixed header included (what MQTT 5's
    /// Maximum Packet Size limits). Fails exactly when [`Packet::encode`] would.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let body_len = self.body_len(version)?;
        Ok(1 + varint_len(body_len) + body_len)
    }

    /// The spec's name for the packet type: "CONNECT", "PUBACK", ...
    pub const fn packet_type_name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck(_) => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck(_) => "PUBACK",
            Self::PubRec(_) => "PUBREC",
            Self::PubRel(_) => "PUBREL",
            Self::PubComp(_) => "PUBCOMP",
            Self::Subscribe(_) => "SUBSCRIBE",
            Self::SubAck(_) => "SUBACK",
            Self::Unsubscribe(_) => "UNSUBSCRIBE",
            Self::UnsubAck(_) => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect(_) => "DISCONNECT",
            Self::Auth(_) => "AUTH",
        }
    }

    /// The remaining length, validating the whole packet on the way.
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut counter = Counter::default();
        self.write_body(version, &mut counter)?;
        if counter.len > MAX_VARINT as usize {
            return Err(EncodeError::TooLarge {
                field: "remaining length",
                value: counter.len,
            });
        }
        Ok(counter.len)
    }

    /// Type nibble and flags nibble.
    fn first_byte(&self) -> u8 {
        let (kind, flags) = match self {
            Self::Connect(_) => (kind::CONNECT, 0),
            Self::ConnAck(_) => (kind::CONNACK, 0),
            Self::Publish(p) => (kind::PUBLISH, p.flags()),
            Self::PubAck(_) => (kind::PUBACK, 0),
            Self::PubRec(_) => (kind::PUBREC, 0),
            Self::PubRel(_) => (kind::PUBREL, 0b0010),
            Self::PubComp(_) => (kind::PUBCOMP, 0),
            Self::Subscribe(_) => (kind::SUBSCRIBE, 0b0010),
            Self::SubAck(_) => (kind::SUBACK, 0),
            Self::Unsubscribe(_) => (kind::UNSUBSCRIBE, 0b0010),
            Self::UnsubAck(_) => (kind::UNSUBACK, 0),
            Self::PingReq => (kind::PINGREQ, 0),
            Self::PingResp => (kind::PINGRESP, 0),
            Self::Disconnect(_) => (kind::DISCONNECT, 0),
            Self::Auth(_) => (kind::AUTH, 0),
        };
        (kind << 4) | flags
    }

    fn write_body<S: Sink>(&self, v: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        match self {
            Self::Connect(p) => p.write_body(v, s),
            Self::ConnAck(p) => p.write_body(v, s),
            Self::Publish(p) => p.write_body(v, s),
            Self::PubAck(p) => p.write_body(AckKind::Ack, v, s),
            Self::PubRec(p) => p.write_body(AckKind::Rec, v, s),
            Self::PubRel(p) => p.write_body(AckKind::Rel, v, s),
            Self::PubComp(p) => p.write_body(AckKind::Comp, v, s),
            Self::Subscribe(p) => p.write_body(v, s),
            Self::SubAck(p) => p.write_body(v, s),
            Self::Unsubscribe(p) => p.write_body(v, s),
            Self::UnsubAck(p) => p.write_body(v, s),
            Self::PingReq | Self::PingResp => Ok(()),
            Self::Disconnect(p) => p.write_body(v, s),
            Self::Auth(p) => p.write_body(v, s),
        }
    }
}

/// Read the optional MQTT 5 tail `[reason code [properties]]` shared by the PUBACK family,
/// DISCONNECT and AUTH: an absent reason code is `default`, absent properties are empty. The
/// caller checks that the packet ends here.
pub(crate) fn read_reason_tail(
    r: &mut crate::primitives::Reader,
    default: crate::reason::ReasonCode,
    reasons: crate::reason::ReasonContext,
    properties: crate::properties::PropertyContext,
    invalid: &'static str,
) -> Result<(crate::reason::ReasonCode, crate::properties::Properties), DecodeError> {
    if r.is_empty() {
        return Ok((default, crate::properties::Properties::default()));
    }
    let code = crate::reason::ReasonCode(r.u8()?);
    if !code.valid_in(reasons) {
        return Err(DecodeError::MalformedPacket(invalid));
    }
    let props = if r.is_empty() {
        crate::properties::Properties::default()
    } else {
        crate::properties::Properties::read(r, properties)?
    };
    Ok((code, props))
}

/// Fail with a protocol error for packet identifier 0.
pub(crate) fn nonzero_packet_id(id: u16) -> Result<u16, DecodeError> {
    if id == 0 {
        Err(DecodeError::ProtocolError("packet identifier 0"))
    } else {
        Ok(id)
    }
}

/// Write a packet identifier, refusing 0.
pub(crate) fn write_packet_id<S: Sink>(s: &mut S, id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::InvalidPacket("packet identifier 0"));
    }
    s.write_u16(id);
    Ok(())
}
