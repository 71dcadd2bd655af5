//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 5.0 sections 3.4-3.7): the QoS 1 and QoS 2
//! acknowledgements, which share one body layout and the [`PubAck`] struct.
//!
//! ```text
//! 3.1.1: packet id u16
//! 5.0:   packet id u16 | [reason code u8 | [properties]]
//!        (reason code omitted = Success; properties omitted = none)
//! ```

use super::{nonzero_packet_id, read_reason_tail, write_packet_id};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::version::ProtocolVersion;

/// Which of the four acknowledgements a [`PubAck`] body belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// PUBACK.
    Ack,
    /// PUBREC.
    Rec,
    /// PUBREL.
    Rel,
    /// PUBCOMP.
    Comp,
}

impl AckKind {
    const fn name(self) -> &'static str {
        match self {
            Self::Ack => "PUBACK",
            Self::Rec => "PUBREC",
            Self::Rel => "PUBREL",
            Self::Comp => "PUBCOMP",
        }
    }

    const fn reasons(self) -> ReasonContext {
        match self {
            Self::Ack | Self::Rec => ReasonContext::PubAck,
            Self::Rel | Self::Comp => ReasonContext::PubRel,
        }
    }
}

/// Body of PUBACK, PUBREC, PUBREL and PUBCOMP.
///
/// In MQTT 3.1.1 only `packet_id` is sent; the reason code and properties are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    /// Identifier of the PUBLISH (or PUBREL) being acknowledged; non-zero.
    pub packet_id: u16,
    /// MQTT 5 reason code.
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5): Reason String and User Properties.
    pub properties: Properties,
}

impl PubAck {
    /// A successful acknowledgement without properties.
    pub fn new(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }

    pub(crate) fn write_body<S: Sink>(
        &self,
        kind: AckKind,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        write_packet_id(s, self.packet_id)?;
        if v == ProtocolVersion::V311 {
            return Ok(());
        }
        if !self.reason_code.valid_in(kind.reasons()) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                code: self.reason_code,
                packet: kind.name(),
            });
        }
        if self.properties.is_empty() {
            if self.reason_code != ReasonCode::SUCCESS {
                s.write_u8(self.reason_code.0);
            }
            return Ok(());
        }
        s.write_u8(self.reason_code.0);
        self.properties.write(PropertyContext::Ack, s)
    }

    pub(crate) fn read(
        kind: AckKind,
        v: ProtocolVersion,
        r: &mut Reader,
    ) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r.u16()?)?;
        let mut ack = Self::new(packet_id);
        if v == ProtocolVersion::V5 {
            (ack.reason_code, ack.properties) = read_reason_tail(
                r,
                ReasonCode::SUCCESS,
                kind.reasons(),
                PropertyContext::Ack,
                "reason code not valid for this packet type",
            )?;
        }
        r.expect_end()?;
        Ok(ack)
    }
}
