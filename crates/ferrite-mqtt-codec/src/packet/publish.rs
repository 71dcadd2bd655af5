//! PUBLISH (MQTT 5.0 section 3.3, 3.1.1 section 3.3): an application message.
//!
//! ```text
//! fixed header flags: bit 3 DUP | bits 2-1 QoS | bit 0 RETAIN
//! variable header: topic (string) | [packet id u16 if QoS > 0] | [v5 properties]
//! payload: everything up to the remaining length (may be empty)
//! ```

use bytes::Bytes;

use super::{nonzero_packet_id, write_packet_id};
use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink, write_string};
use crate::properties::{Properties, PropertyContext};
use crate::version::{ProtocolVersion, QoS};

const DUP: u8 = 0b1000;
const QOS_SHIFT: u8 = 1;
const RETAIN: u8 = 0b0001;

/// PUBLISH: an application message.
///
/// `packet_id` is `Some` exactly when `qos` is above 0. `topic` may be empty only in
/// MQTT 5 with a Topic Alias property set. Topic syntax (wildcards) is not checked here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery of an earlier attempt (QoS > 0 only).
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// Retained message.
    pub retain: bool,
    /// Topic name.
    pub topic: String,
    /// Packet identifier, present iff `qos > 0`.
    pub packet_id: Option<u16>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties,
    /// Application payload.
    pub payload: Bytes,
}

impl Publish {
    /// Fixed header flags nibble.
    pub(crate) fn flags(&self) -> u8 {
        let mut flags = self.qos.as_u8() << QOS_SHIFT;
        if self.dup {
            flags |= DUP;
        }
        if self.retain {
            flags |= RETAIN;
        }
        flags
    }

    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(EncodeError::InvalidPacket("DUP set on a QoS 0 PUBLISH"));
        }
        if self.topic.is_empty()
            && (v == ProtocolVersion::V311 || self.properties.topic_alias.is_none())
        {
            return Err(EncodeError::InvalidPacket(
                "empty topic name without a topic alias",
            ));
        }
        write_string(s, "topic name", &self.topic)?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtMostOnce, Some(_)) => {
                return Err(EncodeError::InvalidPacket(
                    "packet identifier on a QoS 0 PUBLISH",
                ));
            }
            (_, None) => {
                return Err(EncodeError::InvalidPacket(
                    "QoS 1 or 2 PUBLISH without packet identifier",
                ));
            }
            (_, Some(id)) => write_packet_id(s, id)?,
        }
        if v == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::Publish, s)?;
        }
        s.write_slice(&self.payload);
        Ok(())
    }

    /// Decode the body; `flags` is the fixed header's low nibble, already checked for QoS 3.
    pub(crate) fn read(flags: u8, v: ProtocolVersion, r: &mut Reader) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> QOS_SHIFT) & 0b11)
            .ok_or(DecodeError::MalformedPacket("PUBLISH QoS 3"))?;
        let dup = flags & DUP != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::ProtocolError("DUP set on a QoS 0 PUBLISH"));
        }
        let topic = r.string()?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(nonzero_packet_id(r.u16()?)?),
        };
        let properties = match v {
            ProtocolVersion::V5 => Properties::read(r, PropertyContext::Publish)?,
            ProtocolVersion::V311 => Properties::default(),
        };
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::ProtocolError(
                "empty topic name without a topic alias",
            ));
        }
        Ok(Self {
            dup,
            qos,
            retain: flags & RETAIN != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }
}
