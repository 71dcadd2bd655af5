//! SenML (RFC 8428) in its JSON form: an array of records.
//!
//! Base fields (`bn`, `bt`, `bv`, `bs`) apply to the record that carries them and every later
//! one, as §4.6 resolves them. The resolved name (`bn` + `n`) is the field name; records with
//! the same resolved time become one point. Times are seconds; a resolved time below 2^28 is
//! relative to the receive time (§4.5.3); times are kept to the microsecond. Values: `v` (float, plus `bv`), `vs` (string),
//! `vb` (boolean), `vd` (data, kept as its base64 string); a record with only a sum `s` is
//! stored as the field `{name}_sum`. Units are not stored. Fields ending in `_` ("must
//! understand") are refused, as the RFC requires of a receiver that does not know them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as Json;

use super::{PayloadError, check_field_name};
use crate::{DEVICE_ID_TAG, DeviceId, Measurement, Point, Timestamp, Value};

#[derive(Deserialize, Default)]
struct Record {
    bn: Option<String>,
    bt: Option<f64>,
    bv: Option<f64>,
    bs: Option<f64>,
    n: Option<String>,
    t: Option<f64>,
    v: Option<f64>,
    vs: Option<String>,
    vb: Option<bool>,
    vd: Option<String>,
    s: Option<f64>,
}

/// Times below this (in seconds) are relative to now (RFC 8428 §4.5.3).
const RELATIVE_BELOW: f64 = 268_435_456.0;

/// Decode a SenML JSON pack into points of `measurement` for `device`.
pub fn decode_senml(
    payload: &[u8],
    device: &DeviceId,
    measurement: &Measurement,
    received: Timestamp,
) -> Result<Vec<Point>, PayloadError> {
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Syntax(e.to_string()))?;
    let Json::Array(items) = json else {
        return Err(PayloadError::NotAnObject("not a SenML array"));
    };
    let (mut bn, mut bt, mut bv, mut bs) = (String::new(), 0.0, 0.0, 0.0);
    let mut by_time: BTreeMap<i64, BTreeMap<String, Value>> = BTreeMap::new();
    for (i, item) in items.into_iter().enumerate() {
        let Json::Object(map) = &item else {
            return Err(PayloadError::NotAnObject(
                "a SenML record that is not an object",
            ));
        };
        if let Some(k) = map.keys().find(|k| k.ends_with('_')) {
            return Err(PayloadError::BadFieldName {
                field: k.clone(),
                why: "a must-understand SenML field Ferrite does not know",
            });
        }
        let only_base = map.keys().all(|k| k.starts_with('b'));
        let r: Record = serde_json::from_value(item)
            .map_err(|e| PayloadError::Syntax(format!("record {i}: {e}")))?;
        if let Some(x) = r.bn {
            bn = x;
        }
        if let Some(x) = r.bt {
            bt = x;
        }
        if let Some(x) = r.bv {
            bv = x;
        }
        if let Some(x) = r.bs {
            bs = x;
        }
        let mut name = format!("{bn}{}", r.n.unwrap_or_default());
        let value = if let Some(v) = r.v {
            Value::F64(v + bv)
        } else if let Some(s) = r.vs {
            Value::Str(s)
        } else if let Some(b) = r.vb {
            Value::Bool(b)
        } else if let Some(d) = r.vd {
            Value::Str(d)
        } else if let Some(s) = r.s {
            name.push_str("_sum");
            Value::F64(s + bs)
        } else {
            // A record with only base fields carries no value.
            if only_base {
                continue;
            }
            return Err(PayloadError::NoFields);
        };
        check_field_name(&name)?;
        if let Value::F64(f) = value
            && !f.is_finite()
        {
            return Err(PayloadError::NotFinite(name));
        }
        let secs = bt + r.t.unwrap_or(0.0);
        // Float seconds carry about 0.2 µs of precision today: keep whole microseconds,
        // and do the rest in integers.
        let micros = (secs * 1e6).round();
        let out_of_range =
            || PayloadError::BadTimestamp(format!("record {i}: time {secs} is out of range"));
        if !micros.is_finite() || micros.abs() >= (i64::MAX / 1000) as f64 {
            return Err(out_of_range());
        }
        // In range by the check above.
        let mut ns = micros as i64 * 1000;
        if secs.abs() < RELATIVE_BELOW {
            ns = received
                .as_nanos()
                .checked_add(ns)
                .ok_or_else(out_of_range)?;
        }
        by_time.entry(ns).or_default().insert(name, value);
    }
    if by_time.is_empty() {
        return Err(PayloadError::NoFields);
    }
    let tags = BTreeMap::from([(DEVICE_ID_TAG.to_owned(), device.as_str().to_owned())]);
    Ok(by_time
        .into_iter()
        .map(|(t, fields)| Point {
            measurement: measurement.clone(),
            time: Timestamp::from_nanos(t),
            tags: tags.clone(),
            fields,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Vec<Point>, PayloadError> {
        decode_senml(
            s.as_bytes(),
            &DeviceId::new("d1").expect("valid"),
            &Measurement::new("telemetry").expect("valid"),
            Timestamp::from_nanos(1_000_000_000_000_000_000),
        )
    }

    #[test]
    fn rfc_example_with_base_values() {
        // RFC 8428 §5.1.2-style pack: base name and time, two records at two times.
        let p = dec(r#"[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e9,"bu":"A","n":"voltage","u":"V","v":120.1},
                        {"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3}]"#)
            .expect("valid pack");
        assert_eq!(p.len(), 3);
        let last = &p[2];
        assert_eq!(
            last.fields["urn:dev:ow:10e2073a0108006:voltage"],
            Value::F64(120.1)
        );
        assert_eq!(last.time.as_nanos(), 1_276_020_076_001_000_000);
        assert_eq!(
            p[0].fields["urn:dev:ow:10e2073a0108006:current"],
            Value::F64(1.2)
        );
        assert_eq!(p[0].tags["device_id"], "d1");
    }

    #[test]
    fn value_kinds_and_relative_time() {
        let p =
            dec(r#"[{"n":"door","vs":"open"},{"n":"on","vb":true},{"n":"energy","s":5,"bs":1}]"#)
                .expect("valid");
        assert_eq!(p.len(), 1, "same resolved time → one point");
        assert_eq!(p[0].time.as_nanos(), 1_000_000_000_000_000_000);
        assert_eq!(p[0].fields["door"], Value::Str("open".into()));
        assert_eq!(p[0].fields["on"], Value::Bool(true));
        assert_eq!(p[0].fields["energy_sum"], Value::F64(6.0));
    }

    #[test]
    fn rejections() {
        assert!(dec(r#"{"n":"x","v":1}"#).is_err());
        assert!(dec(r#"[]"#).is_err());
        assert!(dec(r#"[{"n":"x"}]"#).is_err());
        assert!(dec(r#"[{"n":"x","v":"one"}]"#).is_err());
        assert!(dec(r#"[{"n":"x","v":1,"foo_":1}]"#).is_err());
        assert!(dec(r#"[{"n":"time","v":1}]"#).is_err());
    }
}
