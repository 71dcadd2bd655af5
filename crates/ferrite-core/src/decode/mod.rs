//! Payload decoders: device payload bytes in, [`crate::Point`]s out. Pure functions; the
//! caller decides what a rejection means on its protocol.

mod json;
mod line_protocol;
mod senml;

pub use json::{decode_json, parse_ts};
pub use line_protocol::{LineError, Precision, decode_line_protocol};
pub use senml::decode_senml;

use crate::ValueType;

/// Why a payload was rejected. Nothing of a rejected payload is stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// Not valid JSON at all.
    #[error("payload is not valid JSON: {0}")]
    Syntax(String),
    /// Valid JSON, but not an object.
    #[error("payload must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A field's value is an object or array.
    #[error("field {field:?} is {found}; only numbers, strings and booleans are stored")]
    NotScalar {
        /// The field name.
        field: String,
        /// What was found instead.
        found: &'static str,
    },
    /// A field name is empty, too long, or reserved.
    #[error("field name {field:?} is not allowed: {why}")]
    BadFieldName {
        /// The field name.
        field: String,
        /// Why not.
        why: &'static str,
    },
    /// The object has no field with a value.
    #[error("payload has no fields to store")]
    NoFields,
    /// `ts` is present but is not a usable timestamp.
    #[error("bad ts: {0}")]
    BadTimestamp(String),
    /// A number that is not finite (cannot come from JSON, kept for other decoders).
    #[error("field {0:?} is not a finite number")]
    NotFinite(String),
    /// Line protocol with bad lines (each named).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Lines(Vec<LineError>),
    /// A field's type differs from the column already stored under that name.
    #[error("field {field:?} is {found} but the column is {expected}")]
    TypeConflict {
        /// The field name.
        field: String,
        /// The type stored so far.
        expected: ValueType,
        /// The type in this payload.
        found: ValueType,
    },
}

impl crate::Classify for PayloadError {
    fn kind(&self) -> crate::ErrorKind {
        match self {
            PayloadError::TypeConflict { .. } => crate::ErrorKind::Conflict,
            _ => crate::ErrorKind::InvalidInput,
        }
    }
}

/// Decode a device's telemetry payload, telling the format by its first non-blank byte:
/// `{` a flat JSON object, `[` a SenML pack, anything else InfluxDB line protocol (timestamps
/// in nanoseconds). Every point gets the device id tag; JSON and SenML points go to
/// `measurement` (from the topic), line protocol names its own measurements.
pub fn decode_payload(
    payload: &[u8],
    device: &crate::DeviceId,
    measurement: &crate::Measurement,
    received: crate::Timestamp,
) -> Result<Vec<crate::Point>, PayloadError> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => decode_json(payload, device, measurement, received).map(|p| vec![p]),
        Some(b'[') => decode_senml(payload, device, measurement, received),
        _ => {
            let text = std::str::from_utf8(payload)
                .map_err(|_| PayloadError::Syntax("payload is not UTF-8 text".to_owned()))?;
            decode_line_protocol(
                text,
                Precision::Nanoseconds,
                received,
                &[(crate::DEVICE_ID_TAG, device.as_str())],
            )
            .map_err(PayloadError::Lines)
        }
    }
}

/// Longest accepted field name, in bytes.
pub const MAX_FIELD_NAME_LEN: usize = 128;

/// Check a field name against the reserved column names and length limit.
pub fn check_field_name(name: &str) -> Result<(), PayloadError> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_FIELD_NAME_LEN {
        "longer than 128 bytes"
    } else if name == crate::TIME_COLUMN || name == crate::DEVICE_ID_TAG {
        "reserved column name"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(PayloadError::BadFieldName {
        field: name.to_owned(),
        why,
    })
}
