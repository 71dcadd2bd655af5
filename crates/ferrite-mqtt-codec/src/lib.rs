//! Sans-IO MQTT 3.1.1 (protocol level 4) and MQTT 5.0 (level 5) packet codec.
//!
//! This crate owns the wire format of MQTT control packets and nothing else: bytes in,
//! [`Packet`] values out ([`Decoder`], [`decode_packet`]), and back
//! ([`Packet::encode`]). It does no I/O, keeps no clock and knows nothing about
//! sessions, topic matching, topic aliases or flow control; those belong to the
//! session layer built on top. Topic name and filter syntax is not validated here.
//!
//! Main types: [`Packet`] and one struct per packet ([`Connect`], [`Publish`],
//! [`PubAck`] for the four publish acknowledgements, ...), [`Properties`] (every MQTT 5
//! property, one struct for all packets), [`ReasonCode`], [`ProtocolVersion`],
//! [`QoS`], and the errors [`DecodeError`] (with its MQTT 5 reason code) and
//! [`EncodeError`].
//!
//! # Wire format (MQTT 3.1.1 and 5.0)
//!
//! ```text
//! fixed header:  byte 0 = packet type (bits 7-4) | flags (bits 3-0)
//!                remaining length = Variable Byte Integer, 1-4 bytes, 7 bits each,
//!                little-endian groups, bit 7 = "more"; max 268,435,455
//! body:          variable header | payload   (exactly `remaining length` bytes)
//!
//! Two Byte / Four Byte Integer: big-endian
//! UTF-8 string:  u16 length | bytes (valid UTF-8, no U+0000)
//! Binary Data:   u16 length | bytes
//! properties:    (MQTT 5 only) Variable Byte Integer length | (identifier value)*
//!
//! type  flags  packet        body
//!  1    0000   CONNECT       "MQTT" level flags keep-alive [props] client-id [will] [user] [pass]
//!  2    0000   CONNACK       ack-flags code [props]
//!  3    DQQR   PUBLISH       topic [packet-id if QoS>0] [props] payload
//!  4-7  0000*  PUBACK..COMP  packet-id [code [props]]      (* PUBREL flags 0010)
//!  8    0010   SUBSCRIBE     packet-id [props] (filter options)+
//!  9    0000   SUBACK        packet-id [props] code+
//! 10    0010   UNSUBSCRIBE   packet-id [props] filter+
//! 11    0000   UNSUBACK      packet-id [props code+]
//! 12/13 0000   PINGREQ/RESP  empty
//! 14    0000   DISCONNECT    [code [props]]
//! 15    0000   AUTH          [code [props]]                 (MQTT 5 only)
//! ```
//!
//! Brackets mark parts that are MQTT 5 only or optional. Each packet module documents
//! its exact layout. The version is negotiated once per connection by CONNECT; the
//! mapping between [`ProtocolVersion`] and the level byte is
//! [`ProtocolVersion::level`] / [`ProtocolVersion::from_level`].
//!
//! # Guarantees
//!
//! - Decoding never panics and never allocates more than the bytes actually received;
//!   the announced packet size is checked against the configured maximum before the
//!   body is awaited ([`DecodeError::PacketTooLarge`]).
//! - Every rule the specs classify as Malformed Packet or Protocol Error at the packet
//!   level is enforced on decode, and encode refuses to produce what decode rejects, so
//!   `decode(encode(p)) == p` for every packet that encodes.
//! - MQTT 3.1.1 encoding drops what the version cannot carry but the receiver does not
//!   need (properties, acknowledgement reason codes) and fails on what would change the
//!   meaning (AUTH, MQTT 5 subscription options, password without user name).
//!
//! # Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use ferrite_mqtt_codec::{Decoder, Packet, Properties, ProtocolVersion, Publish, QoS};
//!
//! let publish = Packet::Publish(Publish {
//!     dup: false,
//!     qos: QoS::AtLeastOnce,
//!     retain: false,
//!     topic: "sensors/1/temp".into(),
//!     packet_id: Some(7),
//!     properties: Properties::default(),
//!     payload: Bytes::from_static(b"21.5"),
//! });
//! let mut wire = BytesMut::new();
//! publish.encode(ProtocolVersion::V5, &mut wire)?;
//! assert_eq!(wire.len(), publish.encoded_len(ProtocolVersion::V5)?);
//!
//! // A client-side decoder: the version is known from the CONNECT it sent.
//! let mut decoder = Decoder::new(64 * 1024);
//! decoder.set_version(ProtocolVersion::V5);
//! assert_eq!(decoder.decode(&mut wire)?, Some(publish));
//! assert!(wire.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decoder;
mod error;
mod packet;
mod primitives;
mod properties;
mod reason;
mod version;

pub use decoder::{Decoder, decode_packet};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use properties::Properties;
pub use reason::ReasonCode;
pub use version::{ProtocolVersion, QoS};

/// Largest remaining length MQTT can express (the Variable Byte Integer maximum).
pub const MAX_REMAINING_LENGTH: usize = primitives::MAX_VARINT as usize;

/// Largest possible MQTT packet: a 5-byte fixed header plus the largest remaining
/// length. Use as `Decoder::new(MAX_PACKET_SIZE)` to accept anything MQTT allows.
pub const MAX_PACKET_SIZE: u32 = primitives::MAX_VARINT + 5;
