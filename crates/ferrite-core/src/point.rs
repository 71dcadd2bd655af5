//! The telemetry data model: a [`Point`] is one reading of one series at one time.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::Measurement;
use crate::time::Timestamp;

/// A field value. The variant is the field's column type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// 64-bit float (every JSON number).
    F64(f64),
    /// 64-bit signed integer.
    I64(i64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// 64-bit unsigned integer (line protocol `u` suffix).
    U64(u64),
}

impl Value {
    /// The column type this value needs.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::F64(_) => ValueType::F64,
            Value::I64(_) => ValueType::I64,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::U64(_) => ValueType::U64,
        }
    }
}

/// The type of a field column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueType {
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    Str,
    /// 64-bit unsigned integer.
    U64,
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::F64 => "float",
            ValueType::I64 => "integer",
            ValueType::Bool => "boolean",
            ValueType::Str => "string",
            ValueType::U64 => "unsigned integer",
        })
    }
}

/// One reading: a measurement (table), a time, the tags that identify its series (always
/// including [`crate::DEVICE_ID_TAG`] for device telemetry) and at least one field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The table this point belongs to.
    pub measurement: Measurement,
    /// Event time of the reading.
    pub time: Timestamp,
    /// Series-identifying tags, ordered by key.
    pub tags: BTreeMap<String, String>,
    /// The readings, ordered by key; never empty for a decoded point.
    pub fields: BTreeMap<String, Value>,
}
