//! CONNACK (MQTT 5.0 section 3.2, 3.1.1 section 3.2): the server's answer to CONNECT.
//!
//! ```text
//! variable header: ack flags u8 (bit 0 session present) | reason/return code u8 | [v5 properties]
//! ```
//!
//! MQTT 3.1.1 has six return codes; [`ConnAck::reason_code`] always holds the MQTT 5
//! code and is mapped to and from the 3.1.1 code here.

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::version::ProtocolVersion;

const SESSION_PRESENT: u8 = 0b0000_0001;

/// CONNACK: acceptance or refusal of a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// The server resumed an existing session. Must be false with an error code.
    pub session_present: bool,
    /// MQTT 5 reason code (mapped to a return code for 3.1.1).
    pub reason_code: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties,
}

/// MQTT 5 reason code to 3.1.1 CONNACK return code.
const fn to_return_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::SUCCESS => 0,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
        ReasonCode::SERVER_UNAVAILABLE
        | ReasonCode::SERVER_BUSY
        | ReasonCode::SERVER_SHUTTING_DOWN => 3,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => 4,
        _ => 5,
    }
}

/// 3.1.1 CONNACK return code to MQTT 5 reason code; `None` for reserved codes.
const fn from_return_code(code: u8) -> Option<ReasonCode> {
    Some(match code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return None,
    })
}

impl ConnAck {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if self.session_present && self.reason_code.is_error() {
            return Err(EncodeError::InvalidPacket(
                "session present with an error reason code",
            ));
        }
        s.write_u8(if self.session_present {
            SESSION_PRESENT
        } else {
            0
        });
        match v {
            ProtocolVersion::V311 => s.write_u8(to_return_code(self.reason_code)),
            ProtocolVersion::V5 => {
                if !self.reason_code.valid_in(ReasonContext::ConnAck) {
                    return Err(EncodeError::ReasonCodeNotAllowed {
                        code: self.reason_code,
                        packet: "CONNACK",
                    });
                }
                s.write_u8(self.reason_code.0);
                self.properties.write(PropertyContext::ConnAck, s)?;
            }
        }
        Ok(())
    }

    pub(crate) fn read(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & !SESSION_PRESENT != 0 {
            return Err(DecodeError::MalformedPacket(
                "CONNACK reserved flag bits are set",
            ));
        }
        let code = r.u8()?;
        let (reason_code, properties) = match v {
            ProtocolVersion::V311 => {
                let reason = from_return_code(code)
                    .ok_or(DecodeError::MalformedPacket("reserved CONNACK return code"))?;
                (reason, Properties::default())
            }
            ProtocolVersion::V5 => {
                let reason = ReasonCode(code);
                if !reason.valid_in(ReasonContext::ConnAck) {
                    return Err(DecodeError::MalformedPacket(
                        "reason code not valid in CONNACK",
                    ));
                }
                (reason, Properties::read(r, PropertyContext::ConnAck)?)
            }
        };
        r.expect_end()?;
        let session_present = flags & SESSION_PRESENT != 0;
        if session_present && reason_code.is_error() {
            return Err(DecodeError::ProtocolError(
                "session present with an error reason code",
            ));
        }
        Ok(Self {
            session_present,
            reason_code,
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_code_mapping() {
        for code in 0..=5 {
            let reason = from_return_code(code);
            assert_eq!(reason.map(to_return_code), Some(code));
        }
        assert_eq!(from_return_code(6), None);
        assert_eq!(to_return_code(ReasonCode::SERVER_BUSY), 3);
        assert_eq!(to_return_code(ReasonCode::SERVER_SHUTTING_DOWN), 3);
        assert_eq!(to_return_code(ReasonCode::BANNED), 5);
        assert_eq!(to_return_code(ReasonCode::NOT_AUTHORIZED), 5);
    }
}
