//! Bound parameter values (Bind message) as engine values.
//!
//! Each value arrives as bytes in text or binary format, typed by the OID the client gave in
//! Parse or, failing that, by the type the planner inferred for its placeholder. It becomes a
//! [`ScalarValue`] the engine binds into the plan (cast there to the placeholder's type):
//! never text spliced into SQL. Pure.

use bytes::Bytes;
use ferrite_query::{DataType, ScalarValue};
use pgwire::api::Type;
use pgwire::api::results::FieldFormat;

use super::encode::{PG_EPOCH_DAYS, PG_EPOCH_MICROS};

/// A parameter value the client sent that cannot be read as its type.
#[derive(Debug, thiserror::Error)]
#[error("parameter ${index}: {message}")]
pub(crate) struct ParamError {
    /// 1-based, like `$1`.
    pub(crate) index: usize,
    /// What is wrong.
    pub(crate) message: String,
}

/// The PostgreSQL type announced for a placeholder the planner typed `dt` (`text` if unknown).
pub(crate) fn param_pg_type(dt: Option<&DataType>) -> Type {
    match dt {
        Some(dt) => super::encode::pg_type(dt),
        None => Type::TEXT,
    }
}

/// Read parameter `index` (0-based) given as `raw` in `format`, typed `ty`.
pub(crate) fn decode(
    index: usize,
    raw: Option<&Bytes>,
    format: FieldFormat,
    ty: &Type,
) -> Result<ScalarValue, ParamError> {
    let err = |message: String| ParamError {
        index: index + 1,
        message,
    };
    let Some(raw) = raw else {
        return Ok(null_of(ty));
    };
    if format == FieldFormat::Binary {
        return decode_binary(raw, ty).map_err(err);
    }
    let text = std::str::from_utf8(raw).map_err(|_| err("text value is not UTF-8".to_owned()))?;
    decode_text(text, ty).map_err(err)
}

fn null_of(ty: &Type) -> ScalarValue {
    match *ty {
        Type::BOOL => ScalarValue::Boolean(None),
        Type::INT2 => ScalarValue::Int16(None),
        Type::INT4 => ScalarValue::Int32(None),
        Type::INT8 => ScalarValue::Int64(None),
        Type::FLOAT4 => ScalarValue::Float32(None),
        Type::FLOAT8 => ScalarValue::Float64(None),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(None, None),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(None, Some("UTC".into())),
        Type::DATE => ScalarValue::Date32(None),
        Type::BYTEA => ScalarValue::Binary(None),
        _ => ScalarValue::Utf8(None),
    }
}

fn fixed<const N: usize>(raw: &[u8], name: &str) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("binary {name} must be {N} bytes, got {}", raw.len()))
}

fn decode_binary(raw: &[u8], ty: &Type) -> Result<ScalarValue, String> {
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(fixed::<1>(raw, "bool")?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(raw, "int2")?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(raw, "int4")?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(raw, "int8")?))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(raw, "float4")?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(raw, "float8")?))),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let pg = i64::from_be_bytes(fixed(raw, "timestamp")?);
            let tz = (*ty == Type::TIMESTAMPTZ).then(|| "UTC".into());
            ScalarValue::TimestampMicrosecond(Some(pg.saturating_add(PG_EPOCH_MICROS)), tz)
        }
        Type::DATE => {
            let pg = i32::from_be_bytes(fixed(raw, "date")?);
            ScalarValue::Date32(Some(pg.saturating_add(PG_EPOCH_DAYS)))
        }
        Type::BYTEA => ScalarValue::Binary(Some(raw.to_vec())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            let s = std::str::from_utf8(raw).map_err(|_| "text value is not UTF-8".to_owned())?;
            ScalarValue::Utf8(Some(s.to_owned()))
        }
        _ => {
            return Err(format!(
                "binary parameters of type {} are not supported; send it as text",
                ty.name()
            ));
        }
    })
}

fn decode_text(text: &str, ty: &Type) -> Result<ScalarValue, String> {
    let bad = |what: &str| format!("invalid input syntax for type {what}: {text:?}");
    let t = text.trim();
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => true,
            "f" | "false" | "n" | "no" | "off" | "0" => false,
            _ => return Err(bad("boolean")),
        })),
        Type::INT2 => ScalarValue::Int16(Some(t.parse().map_err(|_| bad("smallint"))?)),
        Type::INT4 => ScalarValue::Int32(Some(t.parse().map_err(|_| bad("integer"))?)),
        Type::INT8 => ScalarValue::Int64(Some(t.parse().map_err(|_| bad("bigint"))?)),
        Type::FLOAT4 => {
            ScalarValue::Float32(Some(parse_float(t).ok_or_else(|| bad("real"))? as f32))
        }
        Type::FLOAT8 => {
            ScalarValue::Float64(Some(parse_float(t).ok_or_else(|| bad("double precision"))?))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::DATE => {
            let target = match *ty {
                Type::TIMESTAMP => {
                    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
                }
                Type::TIMESTAMPTZ => {
                    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()))
                }
                _ => DataType::Date32,
            };
            ScalarValue::Utf8(Some(normalize_offset(t)))
                .cast_to(&target)
                .map_err(|_| bad(ty.name()))?
        }
        Type::BYTEA => match t.strip_prefix("\\x") {
            Some(hex) => ScalarValue::Binary(Some(unhex(hex).ok_or_else(|| bad("bytea"))?)),
            None => ScalarValue::Binary(Some(text.as_bytes().to_vec())),
        },
        // Everything else (text, unknown, numeric, ...) goes as text; the engine casts it to
        // the placeholder's type.
        _ => ScalarValue::Utf8(Some(text.to_owned())),
    })
}

fn parse_float(t: &str) -> Option<f64> {
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" | "inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => t.parse().ok(),
    }
}

/// PostgreSQL prints offsets as `+00` or `+05:30`; the Arrow parser wants `+00:00`.
fn normalize_offset(t: &str) -> String {
    let bytes = t.as_bytes();
    let n = bytes.len();
    if n > 10
        && (bytes[n - 3] == b'+' || bytes[n - 3] == b'-')
        && bytes[n - 2].is_ascii_digit()
        && bytes[n - 1].is_ascii_digit()
    {
        format!("{t}:00")
    } else {
        t.to_owned()
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(v: &str, ty: &Type) -> ScalarValue {
        decode(
            0,
            Some(&Bytes::copy_from_slice(v.as_bytes())),
            FieldFormat::Text,
            ty,
        )
        .unwrap()
    }

    #[test]
    fn text_values_of_each_type() {
        assert_eq!(text("t", &Type::BOOL), ScalarValue::Boolean(Some(true)));
        assert_eq!(text("42", &Type::INT8), ScalarValue::Int64(Some(42)));
        assert_eq!(text("2.5", &Type::FLOAT8), ScalarValue::Float64(Some(2.5)));
        assert_eq!(
            text("d1", &Type::UNKNOWN),
            ScalarValue::Utf8(Some("d1".to_owned()))
        );
        let ts = ScalarValue::TimestampMicrosecond(Some(1_767_225_600_000_000), Some("UTC".into()));
        assert_eq!(text("2026-01-01 00:00:00+00", &Type::TIMESTAMPTZ), ts);
        assert_eq!(text("2026-01-01T00:00:00Z", &Type::TIMESTAMPTZ), ts);
        assert_eq!(
            text("\\x00ff", &Type::BYTEA),
            ScalarValue::Binary(Some(vec![0, 255]))
        );
        assert!(
            decode(
                2,
                Some(&Bytes::from_static(b"x")),
                FieldFormat::Text,
                &Type::INT4
            )
            .unwrap_err()
            .to_string()
            .starts_with("parameter $3")
        );
    }

    #[test]
    fn binary_values_and_nulls() {
        let bin = |b: &[u8], ty: &Type| {
            decode(0, Some(&Bytes::copy_from_slice(b)), FieldFormat::Binary, ty).unwrap()
        };
        assert_eq!(
            bin(&0i64.to_be_bytes(), &Type::TIMESTAMPTZ),
            ScalarValue::TimestampMicrosecond(Some(PG_EPOCH_MICROS), Some("UTC".into()))
        );
        assert_eq!(
            bin(&1.5f64.to_be_bytes(), &Type::FLOAT8),
            ScalarValue::Float64(Some(1.5))
        );
        assert_eq!(bin(&[1], &Type::BOOL), ScalarValue::Boolean(Some(true)));
        assert_eq!(
            bin(b"abc", &Type::TEXT),
            ScalarValue::Utf8(Some("abc".into()))
        );
        assert_eq!(
            decode(0, None, FieldFormat::Binary, &Type::INT4).unwrap(),
            ScalarValue::Int32(None)
        );
        assert!(
            decode(
                0,
                Some(&Bytes::from_static(b"12")),
                FieldFormat::Binary,
                &Type::INT4
            )
            .is_err()
        );
    }
}
