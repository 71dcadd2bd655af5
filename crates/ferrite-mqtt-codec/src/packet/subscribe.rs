//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (MQTT 5.0 sections 3.8-3.11).
//!
//! ```text
//! SUBSCRIBE:   packet id u16 | [v5 properties] | (filter string, options u8)+
//!              options: bits 7-6 reserved | 5-4 retain handling | 3 RAP | 2 NL | 1-0 QoS
//!              (3.1.1: bits 7-2 reserved)
//! SUBACK:      packet id u16 | [v5 properties] | reason code u8 +
//! UNSUBSCRIBE: packet id u16 | [v5 properties] | filter string +
//! UNSUBACK:    packet id u16 | [v5 properties | reason code u8 +]   (3.1.1: packet id only)
//! ```
//!
//! Topic filter syntax (wildcards, shared subscriptions) is not checked here.

use super::{nonzero_packet_id, write_packet_id};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink, write_string};
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::version::{ProtocolVersion, QoS};

const NO_LOCAL: u8 = 0b0000_0100;
const RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const RETAIN_HANDLING_SHIFT: u8 = 4;

/// Per-filter options of a SUBSCRIBE. Only `qos` exists in MQTT 3.1.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS the client accepts for this subscription.
    pub qos: QoS,
    /// Do not forward messages published by this same client (MQTT 5).
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded messages as published (MQTT 5).
    pub retain_as_published: bool,
    /// 0: send retained messages on subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    fn to_byte(self, v: ProtocolVersion) -> Result<u8, EncodeError> {
        if self.retain_handling > 2 {
            return Err(EncodeError::InvalidPacket("retain handling above 2"));
        }
        let extended = self.no_local || self.retain_as_published || self.retain_handling != 0;
        if v == ProtocolVersion::V311 && extended {
            return Err(EncodeError::Unsupported {
                what: "no local, retain as published or retain handling",
                version: v,
            });
        }
        let mut byte = self.qos.as_u8() | (self.retain_handling << RETAIN_HANDLING_SHIFT);
        if self.no_local {
            byte |= NO_LOCAL;
        }
        if self.retain_as_published {
            byte |= RETAIN_AS_PUBLISHED;
        }
        Ok(byte)
    }

    fn from_byte(byte: u8, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let reserved = match v {
            ProtocolVersion::V311 => 0b1111_1100,
            ProtocolVersion::V5 => 0b1100_0000,
        };
        if byte & reserved != 0 {
            return Err(DecodeError::MalformedPacket(
                "subscription options reserved bits are set",
            ));
        }
        let qos = match (QoS::from_u8(byte & 0b11), v) {
            (Some(qos), _) => qos,
            (None, ProtocolVersion::V311) => {
                return Err(DecodeError::MalformedPacket("subscription QoS 3"));
            }
            (None, ProtocolVersion::V5) => {
                return Err(DecodeError::ProtocolError("subscription QoS 3"));
            }
        };
        let retain_handling = (byte >> RETAIN_HANDLING_SHIFT) & 0b11;
        if retain_handling == 3 {
            return Err(DecodeError::ProtocolError("retain handling 3"));
        }
        Ok(Self {
            qos,
            no_local: byte & NO_LOCAL != 0,
            retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }
}

/// SUBSCRIBE: one or more topic filters with options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier; non-zero.
    pub packet_id: u16,
    /// Topic filters and their options; at least one.
    pub filters: Vec<(String, SubscriptionOptions)>,
    /// Properties (MQTT 5): at most one Subscription Identifier, User Properties.
    pub properties: Properties,
}

/// SUBACK: one reason code per filter of the SUBSCRIBE.
///
/// In MQTT 3.1.1 the return codes are 0, 1, 2 (granted QoS) and 0x80 (failure); every
/// error code encodes as 0x80 and 0x80 decodes as [`ReasonCode::UNSPECIFIED_ERROR`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Identifier of the SUBSCRIBE; non-zero.
    pub packet_id: u16,
    /// One code per requested filter, in order; at least one.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (MQTT 5): Reason String, User Properties.
    pub properties: Properties,
}

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier; non-zero.
    pub packet_id: u16,
    /// Topic filters; at least one.
    pub filters: Vec<String>,
    /// Properties (MQTT 5): User Properties.
    pub properties: Properties,
}

/// UNSUBACK: acknowledges an UNSUBSCRIBE.
///
/// MQTT 3.1.1 has no payload: `reason_codes` and `properties` are dropped on encode and
/// decode as empty. In MQTT 5 there is one code per filter (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Identifier of the UNSUBSCRIBE; non-zero.
    pub packet_id: u16,
    /// One code per filter (MQTT 5).
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (MQTT 5): Reason String, User Properties.
    pub properties: Properties,
}

/// Write the properties when the version has them.
fn write_properties<S: Sink>(
    p: &Properties,
    ctx: PropertyContext,
    v: ProtocolVersion,
    s: &mut S,
) -> Result<(), EncodeError> {
    match v {
        ProtocolVersion::V5 => p.write(ctx, s),
        ProtocolVersion::V311 => Ok(()),
    }
}

/// Read the properties when the version has them.
fn read_properties(
    r: &mut Reader,
    ctx: PropertyContext,
    v: ProtocolVersion,
) -> Result<Properties, DecodeError> {
    match v {
        ProtocolVersion::V5 => Properties::read(r, ctx),
        ProtocolVersion::V311 => Ok(Properties::default()),
    }
}

/// Check and write MQTT 5 reason codes.
fn write_reason_codes<S: Sink>(
    codes: &[ReasonCode],
    ctx: ReasonContext,
    packet: &'static str,
    s: &mut S,
) -> Result<(), EncodeError> {
    for &code in codes {
        if !code.valid_in(ctx) {
            return Err(EncodeError::ReasonCodeNotAllowed { code, packet });
        }
        s.write_u8(code.0);
    }
    Ok(())
}

/// Read MQTT 5 reason codes up to the end of the packet.
fn read_reason_codes(r: &mut Reader, ctx: ReasonContext) -> Result<Vec<ReasonCode>, DecodeError> {
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = ReasonCode(r.u8()?);
        if !code.valid_in(ctx) {
            return Err(DecodeError::MalformedPacket(
                "reason code not valid for this packet type",
            ));
        }
        codes.push(code);
    }
    Ok(codes)
}

impl Subscribe {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::InvalidPacket(
                "SUBSCRIBE without topic filters",
            ));
        }
        write_packet_id(s, self.packet_id)?;
        write_properties(&self.properties, PropertyContext::Subscribe, v, s)?;
        for (filter, options) in &self.filters {
            write_string(s, "topic filter", filter)?;
            s.write_u8(options.to_byte(v)?);
        }
        Ok(())
    }

    pub(crate) fn read(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r.u16()?)?;
        let properties = read_properties(r, PropertyContext::Subscribe, v)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            let options = SubscriptionOptions::from_byte(r.u8()?, v)?;
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::ProtocolError(
                "SUBSCRIBE without topic filters",
            ));
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }
}

impl SubAck {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if self.reason_codes.is_empty() {
            return Err(EncodeError::InvalidPacket("SUBACK without reason codes"));
        }
        write_packet_id(s, self.packet_id)?;
        match v {
            ProtocolVersion::V5 => {
                self.properties.write(PropertyContext::SubAck, s)?;
                write_reason_codes(&self.reason_codes, ReasonContext::SubAck, "SUBACK", s)
            }
            ProtocolVersion::V311 => {
                for &code in &self.reason_codes {
                    let byte = match code.0 {
                        0..=2 => code.0,
                        0x80.. => 0x80,
                        _ => {
                            return Err(EncodeError::Unsupported {
                                what: "a SUBACK reason code other than granted QoS or failure",
                                version: v,
                            });
                        }
                    };
                    s.write_u8(byte);
                }
                Ok(())
            }
        }
    }

    pub(crate) fn read(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r.u16()?)?;
        let (properties, reason_codes) = match v {
            ProtocolVersion::V5 => {
                let properties = Properties::read(r, PropertyContext::SubAck)?;
                (properties, read_reason_codes(r, ReasonContext::SubAck)?)
            }
            ProtocolVersion::V311 => {
                let mut codes = Vec::with_capacity(r.remaining());
                while !r.is_empty() {
                    let code = r.u8()?;
                    if !matches!(code, 0 | 1 | 2 | 0x80) {
                        return Err(DecodeError::MalformedPacket("invalid SUBACK return code"));
                    }
                    codes.push(ReasonCode(code));
                }
                (Properties::default(), codes)
            }
        };
        if reason_codes.is_empty() {
            return Err(DecodeError::ProtocolError("SUBACK without reason codes"));
        }
        Ok(Self {
            packet_id,
            reason_codes,
            properties,
        })
    }
}

impl Unsubscribe {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::InvalidPacket(
                "UNSUBSCRIBE without topic filters",
            ));
        }
        write_packet_id(s, self.packet_id)?;
        write_properties(&self.properties, PropertyContext::Unsubscribe, v, s)?;
        for filter in &self.filters {
            write_string(s, "topic filter", filter)?;
        }
        Ok(())
    }

    pub(crate) fn read(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r.u16()?)?;
        let properties = read_properties(r, PropertyContext::Unsubscribe, v)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::ProtocolError(
                "UNSUBSCRIBE without topic filters",
            ));
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }
}

impl UnsubAck {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        write_packet_id(s, self.packet_id)?;
        if v == ProtocolVersion::V311 {
            return Ok(());
        }
        if self.reason_codes.is_empty() {
            return Err(EncodeError::InvalidPacket("UNSUBACK without reason codes"));
        }
        self.properties.write(PropertyContext::UnsubAck, s)?;
        write_reason_codes(&self.reason_codes, ReasonContext::UnsubAck, "UNSUBACK", s)
    }

    pub(crate) fn read(v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r.u16()?)?;
        let mut ack = Self {
            packet_id,
            reason_codes: Vec::new(),
            properties: Properties::default(),
        };
        if v == ProtocolVersion::V5 {
            ack.properties = Properties::read(r, PropertyContext::UnsubAck)?;
            ack.reason_codes = read_reason_codes(r, ReasonContext::UnsubAck)?;
            if ack.reason_codes.is_empty() {
                return Err(DecodeError::ProtocolError("UNSUBACK without reason codes"));
            }
        }
        r.expect_end()?;
        Ok(ack)
    }
}
