//! MQTT 5 properties (MQTT 5.0 section 2.2.2): one [`Properties`] struct for every
//! packet, plus the table of which property each packet type may carry.
//!
//! Wire form: a Variable Byte Integer length, then `identifier value` pairs. Encoding
//! writes set properties in identifier order. Decoding rejects unknown identifiers
//! (malformed), properties not allowed in the packet type, repeated single-valued
//! properties and out-of-range values (protocol errors). MQTT 3.1.1 has no properties;
//! the packet encoders simply omit them for that version.

use bytes::Bytes;

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{
    Counter, MAX_VARINT, Reader, Sink, write_binary, write_string, write_varint,
};

/// Every MQTT 5 property. Unset properties are `None` / empty.
///
/// Which properties a packet may carry is checked on encode and decode; see the
/// MQTT 5.0 table in section 2.2.2.2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator (0 = bytes, 1 = UTF-8). PUBLISH, Will.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval in seconds. PUBLISH, Will.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type. PUBLISH, Will.
    pub content_type: Option<String>,
    /// 0x08 Response Topic. PUBLISH, Will.
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data. PUBLISH, Will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s), each 1..=268,435,455. PUBLISH (any number),
    /// SUBSCRIBE (at most one).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval in seconds. CONNECT, CONNACK, DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier. CONNACK.
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive in seconds. CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method. CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data. CONNECT, CONNACK, AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (0 or 1). CONNECT.
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval in seconds. Will.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information (0 or 1). CONNECT.
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information. CONNACK.
    pub response_information: Option<String>,
    /// 0x1C Server Reference. CONNACK, DISCONNECT.
    pub server_reference: Option<String>,
    /// 0x1F Reason String. CONNACK, PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK, UNSUBACK,
    /// DISCONNECT, AUTH.
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum (non-zero). CONNECT, CONNACK.
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum. CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (non-zero). PUBLISH.
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1). CONNACK.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available (0 or 1). CONNACK.
    pub retain_available: Option<u8>,
    /// 0x26 User Property pairs, in order; may repeat. Every packet with properties.
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size (non-zero). CONNECT, CONNACK.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (0 or 1). CONNACK.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available (0 or 1). CONNACK.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available (0 or 1). CONNACK.
    pub shared_subscription_available: Option<u8>,
}

/// Where a property list appears; decides which properties are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP, which allow the same properties.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        1 << self as u16
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Will => "Will properties",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::Ack => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }
}

/// Property identifiers (MQTT 5.0 section 2.2.2.2).
mod id {
    pub(super) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(super) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(super) const CONTENT_TYPE: u8 = 0x03;
    pub(super) const RESPONSE_TOPIC: u8 = 0x08;
    pub(super) const CORRELATION_DATA: u8 = 0x09;
    pub(super) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(super) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(super) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(super) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(super) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(super) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(super) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(super) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(super) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(super) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(super) const SERVER_REFERENCE: u8 = 0x1C;
    pub(super) const REASON_STRING: u8 = 0x1F;
    pub(super) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(super) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(super) const TOPIC_ALIAS: u8 = 0x23;
    pub(super) const MAXIMUM_QOS: u8 = 0x24;
    pub(super) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(super) const USER_PROPERTY: u8 = 0x26;
    pub(super) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(super) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(super) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(super) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Name and allowed-context mask of a property identifier; `None` if unknown.
fn spec(property: u32) -> Option<(&'static str, u16)> {
    use PropertyContext as C;
    const PUBLISH_WILL: u16 = C::Publish.bit() | C::Will.bit();
    const CONNECT_CONNACK: u16 = C::Connect.bit() | C::ConnAck.bit();
    const AUTH_EXCHANGE: u16 = C::Connect.bit() | C::ConnAck.bit() | C::Auth.bit();
    const REASON: u16 = C::ConnAck.bit()
        | C::Ack.bit()
        | C::SubAck.bit()
        | C::UnsubAck.bit()
        | C::Disconnect.bit()
        | C::Auth.bit();
    const ALL: u16 = (1 << (C::Auth as u16 + 1)) - 1;

    let Ok(property) = u8::try_from(property) else {
        return None;
    };
    Some(match property {
        id::PAYLOAD_FORMAT_INDICATOR => ("Payload Format Indicator", PUBLISH_WILL),
        id::MESSAGE_EXPIRY_INTERVAL => ("Message Expiry Interval", PUBLISH_WILL),
        id::CONTENT_TYPE => ("Content Type", PUBLISH_WILL),
        id::RESPONSE_TOPIC => ("Response Topic", PUBLISH_WILL),
        id::CORRELATION_DATA => ("Correlation Data", PUBLISH_WILL),
        id::SUBSCRIPTION_IDENTIFIER => (
            "Subscription Identifier",
            C::Publish.bit() | C::Subscribe.bit(),
        ),
        id::SESSION_EXPIRY_INTERVAL => (
            "Session Expiry Interval",
            CONNECT_CONNACK | C::Disconnect.bit(),
        ),
        id::ASSIGNED_CLIENT_IDENTIFIER => ("Assigned Client Identifier", C::ConnAck.bit()),
        id::SERVER_KEEP_ALIVE => ("Server Keep Alive", C::ConnAck.bit()),
        id::AUTHENTICATION_METHOD => ("Authentication Method", AUTH_EXCHANGE),
        id::AUTHENTICATION_DATA => ("Authentication Data", AUTH_EXCHANGE),
        id::REQUEST_PROBLEM_INFORMATION => ("Request Problem Information", C::Connect.bit()),
        id::WILL_DELAY_INTERVAL => ("Will Delay Interval", C::Will.bit()),
        id::REQUEST_RESPONSE_INFORMATION => ("Request Response Information", C::Connect.bit()),
        id::RESPONSE_INFORMATION => ("Response Information", C::ConnAck.bit()),
        id::SERVER_REFERENCE => ("Server Reference", C::ConnAck.bit() | C::Disconnect.bit()),
        id::REASON_STRING => ("Reason String", REASON),
        id::RECEIVE_MAXIMUM => ("Receive Maximum", CONNECT_CONNACK),
        id::TOPIC_ALIAS_MAXIMUM => ("Topic Alias Maximum", CONNECT_CONNACK),
        id::TOPIC_ALIAS => ("Topic Alias", C::Publish.bit()),
        id::MAXIMUM_QOS => ("Maximum QoS", C::ConnAck.bit()),
        id::RETAIN_AVAILABLE => ("Retain Available", C::ConnAck.bit()),
        id::USER_PROPERTY => ("User Property", ALL),
        id::MAXIMUM_PACKET_SIZE => ("Maximum Packet Size", CONNECT_CONNACK),
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
            ("Wildcard Subscription Available", C::ConnAck.bit())
        }
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            ("Subscription Identifier Available", C::ConnAck.bit())
        }
        id::SHARED_SUBSCRIPTION_AVAILABLE => ("Shared Subscription Available", C::ConnAck.bit()),
        _ => return None,
    })
}

impl Properties {
    /// True when no property is set (encodes as a single zero length byte).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Range checks shared by encode and decode; the message names the violated rule.
    fn check_values(&self, ctx: PropertyContext) -> Result<(), &'static str> {
        let flags = [
            self.payload_format_indicator,
            self.request_problem_information,
            self.request_response_information,
            self.maximum_qos,
            self.retain_available,
            self.wildcard_subscription_available,
            self.subscription_identifier_available,
            self.shared_subscription_available,
        ];
        if flags.iter().flatten().any(|v| *v > 1) {
            return Err("a byte property that must be 0 or 1 has another value");
        }
        if self.receive_maximum == Some(0) {
            return Err("Receive Maximum of 0");
        }
        if self.maximum_packet_size == Some(0) {
            return Err("Maximum Packet Size of 0");
        }
        if self.topic_alias == Some(0) {
            return Err("Topic Alias of 0");
        }
        if self
            .subscription_identifiers
            .iter()
            .any(|v| *v == 0 || *v > MAX_VARINT)
        {
            return Err("Subscription Identifier outside 1..=268435455");
        }
        if ctx == PropertyContext::Subscribe && self.subscription_identifiers.len() > 1 {
            return Err("more than one Subscription Identifier in SUBSCRIBE");
        }
        Ok(())
    }

    /// Append the property length and the properties, for a packet of type `ctx`.
    pub(crate) fn write<S: Sink>(
        &self,
        ctx: PropertyContext,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        let mut counter = Counter::default();
        self.write_entries(ctx, &mut counter)?;
        write_varint(sink, "property length", counter.len)?;
        self.write_entries(ctx, sink)
    }

    fn write_entries<S: Sink>(&self, ctx: PropertyContext, s: &mut S) -> Result<(), EncodeError> {
        self.check_values(ctx)
            .map_err(EncodeError::InvalidProperty)?;
        let mut w = EntryWriter { ctx, sink: s };
        if let Some(v) = self.payload_format_indicator {
            w.id(id::PAYLOAD_FORMAT_INDICATOR)?.write_u8(v);
        }
        if let Some(v) = self.message_expiry_interval {
            w.id(id::MESSAGE_EXPIRY_INTERVAL)?.write_u32(v);
        }
        if let Some(v) = &self.content_type {
            write_string(w.id(id::CONTENT_TYPE)?, "Content Type", v)?;
        }
        if let Some(v) = &self.response_topic {
            write_string(w.id(id::RESPONSE_TOPIC)?, "Response Topic", v)?;
        }
        if let Some(v) = &self.correlation_data {
            write_binary(w.id(id::CORRELATION_DATA)?, "Correlation Data", v)?;
        }
        for v in &self.subscription_identifiers {
            let value = *v as usize;
            write_varint(
                w.id(id::SUBSCRIPTION_IDENTIFIER)?,
                "Subscription Identifier",
                value,
            )?;
        }
        if let Some(v) = self.session_expiry_interval {
            w.id(id::SESSION_EXPIRY_INTERVAL)?.write_u32(v);
        }
        if let Some(v) = &self.assigned_client_identifier {
            let field = "Assigned Client Identifier";
            write_string(w.id(id::ASSIGNED_CLIENT_IDENTIFIER)?, field, v)?;
        }
        if let Some(v) = self.server_keep_alive {
            w.id(id::SERVER_KEEP_ALIVE)?.write_u16(v);
        }
        if let Some(v) = &self.authentication_method {
            write_string(w.id(id::AUTHENTICATION_METHOD)?, "Authentication Method", v)?;
        }
        if let Some(v) = &self.authentication_data {
            write_binary(w.id(id::AUTHENTICATION_DATA)?, "Authentication Data", v)?;
        }
        if let Some(v) = self.request_problem_information {
            w.id(id::REQUEST_PROBLEM_INFORMATION)?.write_u8(v);
        }
        if let Some(v) = self.will_delay_interval {
            w.id(id::WILL_DELAY_INTERVAL)?.write_u32(v);
        }
        if let Some(v) = self.request_response_information {
            w.id(id::REQUEST_RESPONSE_INFORMATION)?.write_u8(v);
        }
        if let Some(v) = &self.response_information {
            write_string(w.id(id::RESPONSE_INFORMATION)?, "Response Information", v)?;
        }
        if let Some(v) = &self.server_reference {
            write_string(w.id(id::SERVER_REFERENCE)?, "Server Reference", v)?;
        }
        if let Some(v) = &self.reason_string {
            write_string(w.id(id::REASON_STRING)?, "Reason String", v)?;
        }
        if let Some(v) = self.receive_maximum {
            w.id(id::RECEIVE_MAXIMUM)?.write_u16(v);
        }
        if let Some(v) = self.topic_alias_maximum {
            w.id(id::TOPIC_ALIAS_MAXIMUM)?.write_u16(v);
        }
        if let Some(v) = self.topic_alias {
            w.id(id::TOPIC_ALIAS)?.write_u16(v);
        }
        if let Some(v) = self.maximum_qos {
            w.id(id::MAXIMUM_QOS)?.write_u8(v);
        }
        if let Some(v) = self.retain_available {
            w.id(id::RETAIN_AVAILABLE)?.write_u8(v);
        }
        for (key, value) in &self.user_properties {
            let sink = w.id(id::USER_PROPERTY)?;
            write_string(sink, "User Property name", key)?;
            write_string(sink, "User Property value", value)?;
        }
        if let Some(v) = self.maximum_packet_size {
            w.id(id::MAXIMUM_PACKET_SIZE)?.write_u32(v);
        }
        if let Some(v) = self.wildcard_subscription_available {
            w.id(id::WILDCARD_SUBSCRIPTION_AVAILABLE)?.write_u8(v);
        }
        if let Some(v) = self.subscription_identifier_available {
            w.id(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE)?.write_u8(v);
        }
        if let Some(v) = self.shared_subscription_available {
            w.id(id::SHARED_SUBSCRIPTION_AVAILABLE)?.write_u8(v);
        }
        Ok(())
    }

    /// Read a property length and the properties of a packet of type `ctx`.
    pub(crate) fn read(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.varint_len()?;
        let mut r = r.sub_reader(len)?;
        let mut p = Self::default();
        while !r.is_empty() {
            let property = r.varint()?;
            let Some((_, allowed)) = spec(property) else {
                return Err(DecodeError::MalformedPacket("unknown property identifier"));
            };
            if allowed & ctx.bit() == 0 {
                return Err(DecodeError::ProtocolError(
                    "property not allowed in this packet type",
                ));
            }
            // `spec` only knows identifiers below 0x80, so this is the one-byte form.
            match u8::try_from(property).unwrap_or(0) {
                id::PAYLOAD_FORMAT_INDICATOR => once(&mut p.payload_format_indicator, r.u8()?)?,
                id::MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32()?)?,
                id::CONTENT_TYPE => once(&mut p.content_type, r.string()?)?,
                id::RESPONSE_TOPIC => once(&mut p.response_topic, r.string()?)?,
                id::CORRELATION_DATA => once(&mut p.correlation_data, r.binary()?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let value = r.varint()?;
                    if ctx == PropertyContext::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DUPLICATE);
                    }
                    p.subscription_identifiers.push(value);
                }
                id::SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32()?)?,
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    once(&mut p.assigned_client_identifier, r.string()?)?;
                }
                id::SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16()?)?,
                id::AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string()?)?,
                id::AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary()?)?,
                id::REQUEST_PROBLEM_INFORMATION => {
                    once(&mut p.request_problem_information, r.u8()?)?;
                }
                id::WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32()?)?,
                id::REQUEST_RESPONSE_INFORMATION => {
                    once(&mut p.request_response_information, r.u8()?)?;
                }
                id::RESPONSE_INFORMATION => once(&mut p.response_information, r.string()?)?,
                id::SERVER_REFERENCE => once(&mut p.server_reference, r.string()?)?,
                id::REASON_STRING => once(&mut p.reason_string, r.string()?)?,
                id::RECEIVE_MAXIMUM => once(&mut p.receive_maximum, r.u16()?)?,
                id::TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16()?)?,
                id::TOPIC_ALIAS => once(&mut p.topic_alias, r.u16()?)?,
                id::MAXIMUM_QOS => once(&mut p.maximum_qos, r.u8()?)?,
                id::RETAIN_AVAILABLE => once(&mut p.retain_available, r.u8()?)?,
                id::USER_PROPERTY => {
                    let key = r.string()?;
                    let value = r.string()?;
                    p.user_properties.push((key, value));
                }
                id::MAXIMUM_PACKET_SIZE => once(&mut p.maximum_packet_size, r.u32()?)?,
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    once(&mut p.wildcard_subscription_available, r.u8()?)?;
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    once(&mut p.subscription_identifier_available, r.u8()?)?;
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    once(&mut p.shared_subscription_available, r.u8()?)?;
                }
                _ => return Err(DecodeError::MalformedPacket("unknown property identifier")),
            }
        }
        p.check_values(ctx).map_err(DecodeError::ProtocolError)?;
        Ok(p)
    }
}

const DUPLICATE: DecodeError =
    DecodeError::ProtocolError("property that may appear only once appears twice");

/// Store a single-valued property, failing if it was already present.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DUPLICATE);
    }
    *slot = Some(value);
    Ok(())
}

/// Writes property identifiers after checking they are allowed in the context.
struct EntryWriter<'a, S> {
    ctx: PropertyContext,
    sink: &'a mut S,
}

impl<S: Sink> EntryWriter<'_, S> {
    /// Write identifier `property` and return the sink for its value.
    fn id(&mut self, property: u8) -> Result<&mut S, EncodeError> {
        let (name, allowed) = spec(u32::from(property)).unwrap_or(("unknown", 0));
        if allowed & self.ctx.bit() == 0 {
            return Err(EncodeError::PropertyNotAllowed {
                property: name,
                packet: self.ctx.name(),
            });
        }
        // Every identifier is below 0x80: its Variable Byte Integer is the byte itself.
        self.sink.write_u8(property);
        Ok(self.sink)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bytes::BytesMut;

    use super::*;

    fn read(bytes: &'static [u8], ctx: PropertyContext) -> Result<Properties, DecodeError> {
        Properties::read(&mut Reader::new(Bytes::from_static(bytes)), ctx)
    }

    #[test]
    fn encodes_in_identifier_order() {
        let p = Properties {
            topic_alias: Some(5),
            payload_format_indicator: Some(1),
            user_properties: vec![("a".into(), "b".into())],
            ..Properties::default()
        };
        let mut out = BytesMut::new();
        p.write(PropertyContext::Publish, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &[12, 0x01, 1, 0x23, 0, 5, 0x26, 0, 1, b'a', 0, 1, b'b']
        );
        let back = read(
            &[12, 0x01, 1, 0x23, 0, 5, 0x26, 0, 1, b'a', 0, 1, b'b'],
            PropertyContext::Publish,
        );
        assert_eq!(back.unwrap(), p);
    }

    #[test]
    fn decode_rules() {
        use PropertyContext as C;
        assert_eq!(
            read(&[2, 0x7F, 0], C::Publish),
            Err(DecodeError::MalformedPacket("unknown property identifier"))
        );
        assert!(matches!(
            read(&[3, 0x13, 0, 1], C::Publish),
            Err(DecodeError::ProtocolError(_))
        ));
        assert_eq!(
            read(&[6, 0x23, 0, 1, 0x23, 0, 2], C::Publish),
            Err(DUPLICATE)
        );
        assert_eq!(read(&[4, 0x0B, 1, 0x0B, 2], C::Subscribe), Err(DUPLICATE));
        assert_eq!(
            read(&[4, 0x0B, 1, 0x0B, 2], C::Publish)
                .unwrap()
                .subscription_identifiers,
            vec![1, 2]
        );
        assert!(matches!(
            read(&[3, 0x21, 0, 0], C::Connect),
            Err(DecodeError::ProtocolError(_))
        ));
        assert!(matches!(
            read(&[2, 0x01, 2], C::Publish),
            Err(DecodeError::ProtocolError(_))
        ));
        assert!(matches!(
            read(&[2, 0x0B, 0], C::Publish),
            Err(DecodeError::ProtocolError(_))
        ));
        // Property length beyond the packet, and a value cut by the property length.
        assert!(matches!(
            read(&[9, 0x01, 1], C::Publish),
            Err(DecodeError::MalformedPacket(_))
        ));
        assert!(matches!(
            read(&[2, 0x23, 0, 1], C::Publish),
            Err(DecodeError::MalformedPacket(_))
        ));
    }

    #[test]
    fn encode_rejects_misplaced_and_out_of_range() {
        let mut sink = Counter::default();
        let p = Properties {
            topic_alias: Some(1),
            ..Properties::default()
        };
        assert_eq!(
            p.write(PropertyContext::Connect, &mut sink),
            Err(EncodeError::PropertyNotAllowed {
                property: "Topic Alias",
                packet: "CONNECT"
            })
        );
        let p = Properties {
            receive_maximum: Some(0),
            ..Properties::default()
        };
        assert!(matches!(
            p.write(PropertyContext::Connect, &mut sink),
            Err(EncodeError::InvalidProperty(_))
        ));
        let p = Properties {
            subscription_identifiers: vec![1, 2],
            ..Properties::default()
        };
        assert!(matches!(
            p.write(PropertyContext::Subscribe, &mut sink),
            Err(EncodeError::InvalidProperty(_))
        ));
    }
}
