//! Decode and encode errors.
//!
//! Every decode failure is invalid input from the peer and never retryable: the
//! connection must be closed, after sending a DISCONNECT (MQTT 5) or CONNACK carrying
//! [`DecodeError::reason_code`] where the spec allows one. Encode failures are bugs or
//! limits on the sending side and are reported before any byte is written.

use crate::reason::ReasonCode;
use crate::version::ProtocolVersion;

/// Why bytes received from a peer could not be decoded into a [`crate::Packet`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes do not follow the packet grammar (MQTT 5 "Malformed Packet").
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// The packet is well formed but breaks a protocol rule (MQTT 5 "Protocol Error").
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// The packet (fixed header included) is bigger than the configured maximum.
    /// Reported as soon as the fixed header is read, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total size announced by the fixed header.
        size: usize,
        /// The decoder's limit.
        max: u32,
    },
    /// CONNECT asked for a protocol level other than 4 (3.1.1) or 5 (5.0); carries the level.
    #[error("unsupported protocol version (level {0})")]
    UnsupportedProtocolVersion(u8),
    /// A UTF-8 Encoded String field is not valid UTF-8 (a malformed packet).
    #[error("malformed packet: string is not valid UTF-8")]
    InvalidUtf8,
}

impl DecodeError {
    /// The MQTT 5 reason code to report this error with (in DISCONNECT or CONNACK).
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            Self::MalformedPacket(_) | Self::InvalidUtf8 => ReasonCode::MALFORMED_PACKET,
            Self::ProtocolError(_) => ReasonCode::PROTOCOL_ERROR,
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a [`crate::Packet`] could not be encoded. Nothing is appended to the output on error.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field is longer than its two-byte length prefix can express.
    #[error("{field} is {len} bytes long, over the 65535 byte limit")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A string field contains U+0000, which MQTT forbids.
    #[error("{field} contains the null character U+0000")]
    NullCharacter {
        /// Which field.
        field: &'static str,
    },
    /// A length or value does not fit a Variable Byte Integer (max 268,435,455); for the
    /// remaining length this means the packet is too big for MQTT.
    #[error("{field} of {value} exceeds the variable byte integer maximum of 268435455")]
    TooLarge {
        /// Which length or value.
        field: &'static str,
        /// The value that did not fit.
        value: usize,
    },
    /// The packet or one of its fields cannot be expressed in the requested version.
    #[error("{what} cannot be expressed in {version}")]
    Unsupported {
        /// What could not be expressed.
        what: &'static str,
        /// The version it was encoded for.
        version: ProtocolVersion,
    },
    /// The packet breaks a rule the receiver would reject it for (e.g. a QoS 1 PUBLISH
    /// without packet identifier, packet identifier 0, an empty SUBSCRIBE).
    #[error("invalid packet: {0}")]
    InvalidPacket(&'static str),
    /// A property value is out of its allowed range (e.g. Receive Maximum 0).
    #[error("invalid property: {0}")]
    InvalidProperty(&'static str),
    /// A property is set that the packet type may not carry.
    #[error("property {property} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property's spec name.
        property: &'static str,
        /// The packet (or "Will") it was set on.
        packet: &'static str,
    },
    /// A reason code is set that the packet type may not carry.
    #[error("reason code {code} is not allowed in {packet}")]
    ReasonCodeNotAllowed {
        /// The offending code.
        code: ReasonCode,
        /// The packet type.
        packet: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_follow_error_class() {
        assert_eq!(DecodeError::InvalidUtf8.reason_code(), ReasonCode(0x81));
        assert_eq!(
            DecodeError::MalformedPacket("x").reason_code(),
            ReasonCode(0x81)
        );
        assert_eq!(
            DecodeError::ProtocolError("x").reason_code(),
            ReasonCode(0x82)
        );
        assert_eq!(
            DecodeError::PacketTooLarge { size: 10, max: 5 }.reason_code(),
            ReasonCode(0x95)
        );
        assert_eq!(
            DecodeError::UnsupportedProtocolVersion(3).reason_code(),
            ReasonCode(0x84)
        );
    }
}
