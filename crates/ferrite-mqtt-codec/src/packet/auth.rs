//! AUTH (MQTT 5.0 section 3.15): extended authentication exchange. MQTT 5 only.
//!
//! ```text
//! [reason code u8 | [properties]]  (empty body = Success)
//! ```

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::version::ProtocolVersion;

/// AUTH: one step of an enhanced authentication exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties: Authentication Method and Data, Reason String, User Properties.
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if v == ProtocolVersion::V311 {
            return Err(EncodeError::Unsupported {
                what: "the AUTH packet",
                version: v,
            });
        }
        if !self.reason_code.valid_in(ReasonContext::Auth) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                code: self.reason_code,
                packet: "AUTH",
            });
        }
        if self.reason_code == ReasonCode::SUCCESS && self.properties.is_empty() {
            return Ok(());
        }
        s.write_u8(self.reason_code.0);
        self.properties.write(PropertyContext::Auth, s)
    }

    /// Decode the body (the decoder rejects AUTH on MQTT 3.1.1 connections before this).
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut packet = Self {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        (packet.reason_code, packet.properties) = super::read_reason_tail(
            r,
            ReasonCode::SUCCESS,
            ReasonContext::Auth,
            PropertyContext::Auth,
            "reason code not valid in AUTH",
        )?;
        r.expect_end()?;
        Ok(packet)
    }
}
