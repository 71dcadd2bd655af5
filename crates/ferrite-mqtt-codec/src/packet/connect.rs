//! CONNECT (MQTT 5.0 section 3.1, 3.1.1 section 3.1): the packet that opens a
//! connection and fixes its protocol version.
//!
//! ```text
//! variable header: "MQTT" (string) | level u8 | flags u8 | keep alive u16 | [v5 properties]
//! flags: 7 user name | 6 password | 5 will retain | 4-3 will QoS | 2 will | 1 clean start | 0 reserved
//! payload: client id | [v5 will properties | will topic | will payload] | [user name] | [password]
//! ```

use bytes::Bytes;

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{Reader, Sink, write_binary, write_string};
use crate::properties::{Properties, PropertyContext};
use crate::version::{ProtocolVersion, QoS};

/// The protocol name every supported level uses.
const PROTOCOL_NAME: &str = "MQTT";
/// The MQTT 3.1 (level 3) protocol name, recognised only to report its level.
const LEGACY_PROTOCOL_NAME: &str = "MQIsdp";

/// Connect flag bits.
const RESERVED: u8 = 0b0000_0001;
const CLEAN_START: u8 = 0b0000_0010;
const WILL: u8 = 0b0000_0100;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0b0010_0000;
const PASSWORD: u8 = 0b0100_0000;
const USER_NAME: u8 = 0b1000_0000;

/// CONNECT: a client opening a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version requested (the protocol level byte). Must equal the version the
    /// packet is encoded with.
    pub protocol: ProtocolVersion,
    /// Clean Start (MQTT 5) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty (the server then assigns one or refuses).
    pub client_id: String,
    /// Will message published if the connection ends abnormally.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password (arbitrary bytes). Without a user name only in MQTT 5.
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties,
}

/// The Will message carried by a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// QoS to publish the will with.
    pub qos: QoS,
    /// Publish the will as a retained message.
    pub retain: bool,
    /// Will properties (MQTT 5).
    pub properties: Properties,
}

impl Connect {
    pub(crate) fn write_body<S: Sink>(
        &self,
        v: ProtocolVersion,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        if self.protocol != v {
            return Err(EncodeError::InvalidPacket(
                "CONNECT protocol differs from the version it is encoded with",
            ));
        }
        if v == ProtocolVersion::V311 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::Unsupported {
                what: "a password without a user name",
                version: v,
            });
        }
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL | (will.qos.as_u8() << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        if self.username.is_some() {
            flags |= USER_NAME;
        }
        write_string(s, "protocol name", PROTOCOL_NAME)?;
        s.write_u8(v.level());
        s.write_u8(flags);
        s.write_u16(self.keep_alive);
        if v == ProtocolVersion::V5 {
            self.properties.write(PropertyContext::Connect, s)?;
        }
        write_string(s, "client identifier", &self.client_id)?;
        if let Some(will) = &self.will {
            if v == ProtocolVersion::V5 {
                will.properties.write(PropertyContext::Will, s)?;
            }
            write_string(s, "will topic", &will.topic)?;
            write_binary(s, "will payload", &will.payload)?;
        }
        if let Some(username) = &self.username {
            write_string(s, "user name", username)?;
        }
        if let Some(password) = &self.password {
            write_binary(s, "password", password)?;
        }
        Ok(())
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.string()?;
        let level = r.u8()?;
        if name != PROTOCOL_NAME {
            return Err(if name == LEGACY_PROTOCOL_NAME {
                DecodeError::UnsupportedProtocolVersion(level)
            } else {
                DecodeError::ProtocolError("CONNECT protocol name is not \"MQTT\"")
            });
        }
        let protocol = ProtocolVersion::from_level(level)
            .ok_or(DecodeError::UnsupportedProtocolVersion(level))?;
        let flags = r.u8()?;
        if flags & RESERVED != 0 {
            return Err(DecodeError::MalformedPacket("CONNECT reserved flag is set"));
        }
        let will_flag = flags & WILL != 0;
        let will_retain = flags & WILL_RETAIN != 0;
        let will_qos = QoS::from_u8((flags >> WILL_QOS_SHIFT) & 0b11)
            .ok_or(DecodeError::MalformedPacket("will QoS 3"))?;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::MalformedPacket(
                "will QoS or will retain set without the will flag",
            ));
        }
        let has_username = flags & USER_NAME != 0;
        let has_password = flags & PASSWORD != 0;
        if protocol == ProtocolVersion::V311 && has_password && !has_username {
            return Err(DecodeError::ProtocolError(
                "password flag set without user name flag",
            ));
        }
        let keep_alive = r.u16()?;
        let properties = match protocol {
            ProtocolVersion::V5 => Properties::read(r, PropertyContext::Connect)?,
            ProtocolVersion::V311 => Properties::default(),
        };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = match protocol {
                ProtocolVersion::V5 => Properties::read(r, PropertyContext::Will)?,
                ProtocolVersion::V311 => Properties::default(),
            };
            let topic = r.string()?;
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        r.expect_end()?;
        Ok(Self {
            protocol,
            clean_start: flags & CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }
}
