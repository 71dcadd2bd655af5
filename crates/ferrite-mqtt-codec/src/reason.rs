//! MQTT 5 reason codes, their names, and which codes each packet type may carry.
//!
//! [`ReasonCode`] is a transparent newtype over the wire byte so that unknown codes
//! received from a peer can still be represented; validity per packet type is checked
//! by the codec via [`ReasonCode::valid_in`].

use std::fmt;

use crate::version::QoS;

/// A one-byte MQTT 5 reason code (MQTT 5.0 section 2.4). Codes `>= 0x80` are errors.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// 0x00 Success.
    pub const SUCCESS: Self = Self(0x00);
    /// 0x00 Normal disconnection (DISCONNECT).
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    /// 0x00 Granted QoS 0 (SUBACK).
    pub const GRANTED_QOS_0: Self = Self(0x00);
    /// 0x01 Granted QoS 1 (SUBACK).
    pub const GRANTED_QOS_1: Self = Self(0x01);
    /// 0x02 Granted QoS 2 (SUBACK).
    pub const GRANTED_QOS_2: Self = Self(0x02);
    /// 0x04 Disconnect with Will Message.
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    /// 0x10 No matching subscribers.
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    /// 0x11 No subscription existed.
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    /// 0x18 Continue authentication.
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    /// 0x19 Re-authenticate.
    pub const REAUTHENTICATE: Self = Self(0x19);
    /// 0x80 Unspecified error.
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    /// 0x81 Malformed Packet.
    pub const MALFORMED_PACKET: Self = Self(0x81);
    /// 0x82 Protocol Error.
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    /// 0x83 Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    /// 0x84 Unsupported Protocol Version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    /// 0x85 Client Identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    /// 0x86 Bad User Name or Password.
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    /// 0x87 Not authorized.
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    /// 0x88 Server unavailable.
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    /// 0x89 Server busy.
    pub const SERVER_BUSY: Self = Self(0x89);
    /// 0x8A Banned.
    pub const BANNED: Self = Self(0x8A);
    /// 0x8B Server shutting down.
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    /// 0x8C Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    /// 0x8D Keep Alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    /// 0x8E Session taken over.
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    /// 0x8F Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    /// 0x90 Topic Name invalid.
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    /// 0x91 Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    /// 0x92 Packet Identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    /// 0x93 Receive Maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    /// 0x94 Topic Alias invalid.
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    /// 0x95 Packet too large.
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    /// 0x96 Message rate too high.
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    /// 0x97 Quota exceeded.
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    /// 0x98 Administrative action.
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    /// 0x99 Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    /// 0x9A Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    /// 0x9B QoS not supported.
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    /// 0x9C Use another server.
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    /// 0x9D Server moved.
    pub const SERVER_MOVED: Self = Self(0x9D);
    /// 0x9E Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    /// 0x9F Connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    /// 0xA0 Maximum connect time.
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    /// 0xA1 Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    /// 0xA2 Wildcard Subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    /// True for failure codes (`>= 0x80`).
    pub const fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The SUBACK "Granted QoS n" code for `qos`.
    pub const fn granted(qos: QoS) -> Self {
        Self(qos as u8)
    }

    /// The spec's name for this code (the name in the SUCCESS column for 0x00), or `None`
    /// for a value the spec does not define.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "Success",
            0x01 => "Granted QoS 1",
            0x02 => "Granted QoS 2",
            0x04 => "Disconnect with Will Message",
            0x10 => "No matching subscribers",
            0x11 => "No subscription existed",
            0x18 => "Continue authentication",
            0x19 => "Re-authenticate",
            0x80 => "Unspecified error",
            0x81 => "Malformed Packet",
            0x82 => "Protocol Error",
            0x83 => "Implementation specific error",
            0x84 => "Unsupported Protocol Version",
            0x85 => "Client Identifier not valid",
            0x86 => "Bad User Name or Password",
            0x87 => "Not authorized",
            0x88 => "Server unavailable",
            0x89 => "Server busy",
            0x8A => "Banned",
            0x8B => "Server shutting down",
            0x8C => "Bad authentication method",
            0x8D => "Keep Alive timeout",
            0x8E => "Session taken over",
            0x8F => "Topic Filter invalid",
            0x90 => "Topic Name invalid",
            0x91 => "Packet Identifier in use",
            0x92 => "Packet Identifier not found",
            0x93 => "Receive Maximum exceeded",
            0x94 => "Topic Alias invalid",
            0x95 => "Packet too large",
            0x96 => "Message rate too high",
            0x97 => "Quota exceeded",
            0x98 => "Administrative action",
            0x99 => "Payload format invalid",
            0x9A => "Retain not supported",
            0x9B => "QoS not supported",
            0x9C => "Use another server",
            0x9D => "Server moved",
            0x9E => "Shared Subscriptions not supported",
            0x9F => "Connection rate exceeded",
            0xA0 => "Maximum connect time",
            0xA1 => "Subscription Identifiers not supported",
            0xA2 => "Wildcard Subscriptions not supported",
            _ => return None,
        })
    }

    /// Whether MQTT 5 allows this code in a packet of type `packet`.
    pub(crate) fn valid_in(self, packet: ReasonContext) -> bool {
        packet.allowed().contains(&self.0)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Unknown reason code 0x{:02X}", self.0),
        }
    }
}

impl ReasonCode {
    /// Whether MQTT 5 allows this code in a PUBACK or PUBREC (section 3.4.2.1).
    pub fn allowed_in_puback(self) -> bool {
        ReasonContext::PubAck.allowed().contains(&self.0)
    }
}

/// The packet types that carry reason codes, each with its own table of allowed codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReasonContext {
    ConnAck,
    /// PUBACK and PUBREC share a table.
    PubAck,
    /// PUBREL and PUBCOMP share a table.
    PubRel,
    SubAck,
    UnsubAck,
    Disconnect,
    Auth,
}

impl ReasonContext {
    /// The allowed codes, from the tables in MQTT 5.0 sections 3.2.2.2 to 3.15.2.1.
    const fn allowed(self) -> &'static [u8] {
        match self {
            Self::ConnAck => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            Self::PubAck => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            Self::PubRel => &[0x00, 0x92],
            Self::SubAck => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            Self::UnsubAck => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            Self::Disconnect => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
            Self::Auth => &[0x00, 0x18, 0x19],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puback_codes_follow_the_spec_table() {
        assert!(ReasonCode::QUOTA_EXCEEDED.allowed_in_puback());
        assert!(ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR.allowed_in_puback());
        assert!(!ReasonCode::SERVER_UNAVAILABLE.allowed_in_puback());
        assert!(!ReasonCode::MALFORMED_PACKET.allowed_in_puback());
    }

    #[test]
    fn error_threshold() {
        assert!(!ReasonCode::SUCCESS.is_error());
        assert!(!ReasonCode::REAUTHENTICATE.is_error());
        assert!(ReasonCode::UNSPECIFIED_ERROR.is_error());
        assert!(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED.is_error());
    }

    #[test]
    fn display_uses_spec_names() {
        assert_eq!(ReasonCode::MALFORMED_PACKET.to_string(), "Malformed Packet");
        assert_eq!(ReasonCode::NORMAL_DISCONNECTION.to_string(), "Success");
        assert_eq!(ReasonCode(0x42).to_string(), "Unknown reason code 0x42");
    }

    #[test]
    fn every_allowed_code_has_a_name() {
        use ReasonContext as C;
        for ctx in [
            C::ConnAck,
            C::PubAck,
            C::PubRel,
            C::SubAck,
            C::UnsubAck,
            C::Disconnect,
            C::Auth,
        ] {
            for &code in ctx.allowed() {
                assert!(ReasonCode(code).name().is_some(), "{code:#x}");
            }
        }
        assert!(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND.valid_in(C::PubRel));
        assert!(!ReasonCode::NOT_AUTHORIZED.valid_in(C::PubRel));
        assert_eq!(
            ReasonCode::granted(QoS::ExactlyOnce),
            ReasonCode::GRANTED_QOS_2
        );
    }
}
