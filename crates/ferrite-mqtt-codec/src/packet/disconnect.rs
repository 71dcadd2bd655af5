//! DISCONNECT (MQTT 5.0 section 3.14, 3.1.1 section 3.14): the last packet of a
//! connection.
//!
//! ```text
//! 3.1.1: empty body
//! 5.0:   [reason code u8 | [properties]]  (empty body = Normal disconnection)
//! ```

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::version::ProtocolVersion;

/// DISCONNECT. In MQTT 3.1.1 the body is empty: `reason_code` and `properties` are
/// dropped on encode and decode as Normal disconnection with no properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Why the connection is closed.
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5): Session Expiry Interval, Reason String, Server Reference,
    /// User Properties.
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with `reason_code` and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if v == ProtocolVersion::V311 {
            return Ok(());
        }
        if !self.reason_code.valid_in(ReasonContext::Disconnect) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                code: self.reason_code,
                packet: "DISCONNECT",
            });
        }
        if self.properties.is_empty() {
            if self.reason_code != ReasonCode::NORMAL_DISCONNECTION {
                s.write_u8(self.reason_code.0);
            }
            return Ok(());
        }
        s.write_u8(self.reason_code.0);
        self.properties.write(PropertyContext::Disconnect, s)
    }

    pub(crate) fn read(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let mut packet = Self::new(ReasonCode::NORMAL_DISCONNECTION);
        if v == ProtocolVersion::V5 {
            (packet.reason_code, packet.properties) = super::read_reason_tail(
                r,
                ReasonCode::NORMAL_DISCONNECTION,
                ReasonContext::Disconnect,
                PropertyContext::Disconnect,
                "reason code not valid in DISCONNECT",
            )?;
        }
        r.expect_end()?;
        Ok(packet)
    }
}
