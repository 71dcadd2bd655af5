//! Flat JSON objects: `{"ts": 1732366800123, "temperature": 21.5, "door": "open"}`.
//!
//! - Every key except `ts` is a field; numbers become `F64`, strings `Str`, booleans `Bool`;
//!   `null` means "no value in this reading" and is skipped.
//! - `ts` is optional: a number is epoch seconds, milliseconds, microseconds or nanoseconds,
//!   told apart by magnitude (as InfluxDB and AWS IoT do); a string is RFC 3339. Without
//!   `ts` the receive time is used.
//! - Objects and arrays as values, an empty object, and reserved names are rejected whole.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{PayloadError, check_field_name};
use crate::{DEVICE_ID_TAG, DeviceId, Measurement, Point, Timestamp, Value};

/// Decode a flat JSON object into one point of `measurement` for `device`.
pub fn decode_json(
    payload: &[u8],
    device: &DeviceId,
    measurement: &Measurement,
    received: Timestamp,
) -> Result<Point, PayloadError> {
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Syntax(e.to_string()))?;
    let Json::Object(map) = json else {
        return Err(PayloadError::NotAnObject(json_kind(&json)));
    };
    let mut time = received;
    let mut fields = BTreeMap::new();
    for (key, value) in map {
        if key == "ts" {
            time = parse_ts(&value)?;
            continue;
        }
        check_field_name(&key)?;
        let value = match value {
            Json::Null => continue,
            Json::Bool(b) => Value::Bool(b),
            Json::String(s) => Value::Str(s),
            Json::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Value::F64(f),
                _ => return Err(PayloadError::NotFinite(key)),
            },
            other @ (Json::Array(_) | Json::Object(_)) => {
                return Err(PayloadError::NotScalar {
                    field: key,
                    found: json_kind(&other),
                });
            }
        };
        fields.insert(key, value);
    }
    if fields.is_empty() {
        return Err(PayloadError::NoFields);
    }
    let mut tags = BTreeMap::new();
    tags.insert(DEVICE_ID_TAG.to_owned(), device.as_str().to_owned());
    Ok(Point {
        measurement: measurement.clone(),
        time,
        tags,
        fields,
    })
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Epoch numbers below these magnitudes are read as s / ms / µs; above, as ns.
/// 1e11 s is the year 5138, so any realistic reading in seconds is below it.
const SECONDS_BELOW: f64 = 1e11;
const MILLIS_BELOW: f64 = 1e14;
const MICROS_BELOW: f64 = 1e17;

/// Read a JSON `ts` value as [`decode_json`] does: an epoch number in s, ms, µs or ns (told
/// apart by magnitude) or an RFC 3339 string.
pub fn parse_ts(v: &Json) -> Result<Timestamp, PayloadError> {
    match v {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                let abs = i.unsigned_abs() as f64;
                let mult: i64 = if abs < SECONDS_BELOW {
                    1_000_000_000
                } else if abs < MILLIS_BELOW {
                    1_000_000
                } else if abs < MICROS_BELOW {
                    1_000
                } else {
                    1
                };
                return i
                    .checked_mul(mult)
                    .map(Timestamp::from_nanos)
                    .ok_or_else(|| PayloadError::BadTimestamp(format!("{i} is out of range")));
            }
            let f = n
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| PayloadError::BadTimestamp(format!("{n} is not a finite number")))?;
            let abs = f.abs();
            let ns = if abs < SECONDS_BELOW {
                f * 1e9
            } else if abs < MILLIS_BELOW {
                f * 1e6
            } else if abs < MICROS_BELOW {
                f * 1e3
            } else {
                f
            };
            if !(i64::MIN as f64..=i64::MAX as f64).contains(&ns) {
                return Err(PayloadError::BadTimestamp(format!("{n} is out of range")));
            }
            // In range by the check above; `as` truncates sub-nanosecond digits.
            Ok(Timestamp::from_nanos(ns as i64))
        }
        Json::String(s) => {
            let dt = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| PayloadError::BadTimestamp(format!("{s:?} is not RFC 3339: {e}")))?;
            dt.timestamp_nanos_opt()
                .map(Timestamp::from_nanos)
                .ok_or_else(|| PayloadError::BadTimestamp(format!("{s:?} is out of range")))
        }
        other => Err(PayloadError::BadTimestamp(format!(
            "must be a number or an RFC 3339 string, found {}",
            json_kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Point, PayloadError> {
        decode_json(
            s.as_bytes(),
            &DeviceId::new("d1").expect("valid"),
            &Measurement::new("telemetry").expect("valid"),
            Timestamp::from_nanos(42),
        )
    }

    #[test]
    fn flat_object() {
        let p = dec(r#"{"temperature": 21.5, "door": "open", "ok": true, "x": null}"#)
            .expect("valid payload");
        assert_eq!(p.time, Timestamp::from_nanos(42));
        assert_eq!(p.tags.get("device_id").map(String::as_str), Some("d1"));
        assert_eq!(p.fields.len(), 3);
        assert_eq!(p.fields["temperature"], Value::F64(21.5));
        assert_eq!(p.fields["door"], Value::Str("open".into()));
        assert_eq!(p.fields["ok"], Value::Bool(true));
    }

    #[test]
    fn timestamps_by_magnitude_and_rfc3339() {
        let ns = |s: &str| dec(s).expect("valid").time.as_nanos();
        let want = 1_732_366_800_000_000_000;
        assert_eq!(ns(r#"{"ts": 1732366800, "v": 1}"#), want);
        assert_eq!(ns(r#"{"ts": 1732366800000, "v": 1}"#), want);
        assert_eq!(ns(r#"{"ts": 1732366800000000, "v": 1}"#), want);
        assert_eq!(ns(r#"{"ts": 1732366800000000000, "v": 1}"#), want);
        assert_eq!(ns(r#"{"ts": 1732366800.5, "v": 1}"#), want + 500_000_000);
        assert_eq!(ns(r#"{"ts": "2024-11-23T13:00:00Z", "v": 1}"#), want);
        assert_eq!(ns(r#"{"ts": "2024-11-23T15:00:00+02:00", "v": 1}"#), want);
    }

    #[test]
    fn rejections() {
        assert!(matches!(dec("nope"), Err(PayloadError::Syntax(_))));
        assert!(matches!(dec("[1,2]"), Err(PayloadError::NotAnObject(_))));
        assert!(matches!(dec("{}"), Err(PayloadError::NoFields)));
        assert!(matches!(
            dec(r#"{"a": {"b": 1}}"#),
            Err(PayloadError::NotScalar { .. })
        ));
        assert!(matches!(
            dec(r#"{"a": [1]}"#),
            Err(PayloadError::NotScalar { .. })
        ));
        assert!(matches!(
            dec(r#"{"device_id": "x", "v": 1}"#),
            Err(PayloadError::BadFieldName { .. })
        ));
        assert!(matches!(
            dec(r#"{"ts": true, "v": 1}"#),
            Err(PayloadError::BadTimestamp(_))
        ));
        assert!(matches!(
            dec(r#"{"ts": "yesterday", "v": 1}"#),
            Err(PayloadError::BadTimestamp(_))
        ));
        assert!(matches!(
            dec(r#"{"ts": 18446744073709551615, "v": 1}"#),
            Err(PayloadError::BadTimestamp(_))
        ));
    }
}
