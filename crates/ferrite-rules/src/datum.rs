//! [`Datum`]: the dynamically typed value that rule expressions, group keys and aggregates
//! compute with.
//!
//! Numbers compare and hash by value across `Int` and `Float` (`1 = 1.0`, both hash alike),
//! so a group key taken from a JSON payload does not split on how a device spelled a number.
//! `NaN` equals itself and `-0.0` equals `0.0`, which makes `Datum` a lawful `Eq + Hash` key.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// A scalar (or, for JSON sub-documents, structured) value.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub enum Datum {
    /// SQL `NULL`: missing field, failed coercion, empty aggregate.
    #[default]
    Null,
    /// Boolean.
    Bool(bool),
    /// 64-bit signed integer.
    Int(i64),
    /// 64-bit float.
    Float(f64),
    /// UTF-8 string.
    Str(String),
    /// A JSON array or object (payload sub-documents, sketch results).
    Json(serde_json::Value),
}

impl Datum {
    /// Whether this is `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, Datum::Null)
    }

    /// The numeric value of an `Int` or `Float`; `None` for every other variant.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Datum::Int(i) => Some(*i as f64),
            Datum::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as a string slice, for `Str` only.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Datum::Str(s) => Some(s),
            _ => None,
        }
    }

    /// SQL truthiness: only `Bool(true)` is true (`NULL` and everything else is not).
    pub fn is_true(&self) -> bool {
        matches!(self, Datum::Bool(true))
    }

    /// A short name of the variant, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Datum::Null => "null",
            Datum::Bool(_) => "boolean",
            Datum::Int(_) => "integer",
            Datum::Float(_) => "float",
            Datum::Str(_) => "string",
            Datum::Json(v) if v.is_array() => "array",
            Datum::Json(_) => "object",
        }
    }

    /// Convert a JSON value: integers that fit `i64` become `Int`, other numbers `Float`,
    /// arrays and objects stay JSON.
    pub fn from_json(value: &serde_json::Value) -> Datum {
        use serde_json::Value as J;
        match value {
            J::Null => Datum::Null,
            J::Bool(b) => Datum::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Datum::Int(i),
                None => n.as_f64().map_or(Datum::Null, Datum::Float),
            },
            J::String(s) => Datum::Str(s.clone()),
            J::Array(_) | J::Object(_) => Datum::Json(value.clone()),
        }
    }

    /// Convert to JSON; non-finite floats become `null` (JSON has no NaN or infinity).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Datum::Null => J::Null,
            Datum::Bool(b) => J::Bool(*b),
            Datum::Int(i) => J::from(*i),
            Datum::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Datum::Str(s) => J::String(s.clone()),
            Datum::Json(v) => v.clone(),
        }
    }

    /// Convert to JSON, consuming the value.
    pub fn into_json(self) -> serde_json::Value {
        match self {
            Datum::Str(s) => serde_json::Value::String(s),
            Datum::Json(v) => v,
            other => other.to_json(),
        }
    }

    /// A total order used by `MIN`/`MAX` and sorting: `NULL` < booleans < numbers (by value)
    /// < strings < JSON (by its text).
    pub fn total_cmp(&self, other: &Datum) -> Ordering {
        fn rank(d: &Datum) -> u8 {
            match d {
                Datum::Null => 0,
                Datum::Bool(_) => 1,
                Datum::Int(_) | Datum::Float(_) => 2,
                Datum::Str(_) => 3,
                Datum::Json(_) => 4,
            }
        }
        match (self, other) {
            (Datum::Bool(a), Datum::Bool(b)) => a.cmp(b),
            (Datum::Int(a), Datum::Int(b)) => a.cmp(b),
            (Datum::Int(_) | Datum::Float(_), Datum::Int(_) | Datum::Float(_)) => {
                let (a, b) = (self.as_f64().unwrap_or(0.0), other.as_f64().unwrap_or(0.0));
                a.total_cmp(&b)
            }
            (Datum::Str(a), Datum::Str(b)) => a.cmp(b),
            (Datum::Json(a), Datum::Json(b)) => a.to_string().cmp(&b.to_string()),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

/// The integer a float is equal to, when it is one (so `1.0` hashes like `1`).
fn integral(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; every float strictly inside (-2^63, 2^63) with no
    // fraction converts exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && f > -LIMIT && f < LIMIT).then_some(f as i64)
}

fn canonical_bits(f: f64) -> u64 {
    if f.is_nan() {
        f64::NAN.to_bits()
    } else if f == 0.0 {
        0
    } else {
        f.to_bits()
    }
}

impl PartialEq for Datum {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Datum::Null, Datum::Null) => true,
            (Datum::Bool(a), Datum::Bool(b)) => a == b,
            (Datum::Int(a), Datum::Int(b)) => a == b,
            (Datum::Float(a), Datum::Float(b)) => canonical_bits(*a) == canonical_bits(*b),
            (Datum::Int(i), Datum::Float(f)) | (Datum::Float(f), Datum::Int(i)) => {
                integral(*f) == Some(*i)
            }
            (Datum::Str(a), Datum::Str(b)) => a == b,
            (Datum::Json(a), Datum::Json(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Datum {}

impl Hash for Datum {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Datum::Null => state.write_u8(0),
            Datum::Bool(b) => {
                state.write_u8(1);
                b.hash(state);
            }
            Datum::Int(i) => {
                state.write_u8(2);
                i.hash(state);
            }
            Datum::Float(f) => match integral(*f) {
                Some(i) => {
                    state.write_u8(2);
                    i.hash(state);
                }
                None => {
                    state.write_u8(3);
                    canonical_bits(*f).hash(state);
                }
            },
            Datum::Str(s) => {
                state.write_u8(4);
                s.hash(state);
            }
            Datum::Json(v) => {
                state.write_u8(5);
                v.to_string().hash(state);
            }
        }
    }
}

impl From<f64> for Datum {
    fn from(v: f64) -> Self {
        Datum::Float(v)
    }
}

impl From<i64> for Datum {
    fn from(v: i64) -> Self {
        Datum::Int(v)
    }
}

impl From<bool> for Datum {
    fn from(v: bool) -> Self {
        Datum::Bool(v)
    }
}

impl From<&str> for Datum {
    fn from(v: &str) -> Self {
        Datum::Str(v.to_owned())
    }
}

impl From<String> for Datum {
    fn from(v: String) -> Self {
        Datum::Str(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbers_are_equal_and_hash_alike_across_int_and_float() {
        let mut set = HashSet::new();
        set.insert(Datum::Int(1));
        assert!(set.contains(&Datum::Float(1.0)));
        assert!(!set.contains(&Datum::Float(1.5)));
        assert_eq!(Datum::Float(-0.0), Datum::Float(0.0));
        assert_eq!(Datum::Float(f64::NAN), Datum::Float(f64::NAN));
        assert_ne!(Datum::Int(1), Datum::Str("1".into()));
    }

    #[test]
    fn json_round_trip_and_total_order() {
        let v = serde_json::json!({"a": [1, 2.5, "x", null, true]});
        assert_eq!(Datum::from_json(&v).to_json(), v);
        assert_eq!(Datum::from_json(&serde_json::json!(3)), Datum::Int(3));
        assert_eq!(
            Datum::Float(f64::INFINITY).to_json(),
            serde_json::Value::Null
        );
        let mut xs = [
            Datum::Str("b".into()),
            Datum::Float(2.5),
            Datum::Null,
            Datum::Int(2),
            Datum::Bool(true),
        ];
        xs.sort_by(Datum::total_cmp);
        assert_eq!(
            xs,
            [
                Datum::Null,
                Datum::Bool(true),
                Datum::Int(2),
                Datum::Float(2.5),
                Datum::Str("b".into())
            ]
        );
    }
}
