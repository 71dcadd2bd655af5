//! Ferrite's shared vocabulary, used by every other crate.
//!
//! Owns the validated identifier newtypes ([`DeviceId`], [`TopicName`], [`TopicFilter`],
//! [`Measurement`]), time ([`Timestamp`], the injectable [`Clock`]), the telemetry data model
//! ([`Point`], [`Value`]), the payload decoders that turn device payloads into points
//! ([`decode`]), and the error classification every crate maps its errors onto
//! ([`ErrorKind`]).
//!
//! It deliberately does no I/O and knows nothing about MQTT packets, storage or SQL.

pub mod decode;
mod error;
mod id;
mod point;
mod time;
mod topic;

pub use error::{Classify, ErrorKind};
pub use id::{DeviceId, IdError, Measurement};
pub use point::{Point, Value, ValueType};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use topic::{TelemetryTopic, TopicError, TopicFilter, TopicName};

/// Name of the tag column that carries the device id in every telemetry table.
pub const DEVICE_ID_TAG: &str = "device_id";
/// Name of the time column in every telemetry table.
pub const TIME_COLUMN: &str = "time";
/// Measurement used when a telemetry topic names none (`devices/{id}/telemetry`).
pub const DEFAULT_MEASUREMENT: &str = "telemetry";
