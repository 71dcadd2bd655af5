//! Arrow columns as PostgreSQL values: the type a column is described with (its OID in the
//! RowDescription) and each value's text or binary encoding in a DataRow.
//!
//! Pure: arrays in, bytes out. Timestamps and dates are formatted here rather than through a
//! date library, in PostgreSQL's output style with `TimeZone = UTC` and `DateStyle = ISO`.
//!
//! | Arrow | PostgreSQL |
//! |---|---|
//! | Boolean | `bool` |
//! | Int8, Int16, UInt8 | `int2` |
//! | Int32, UInt16 | `int4` |
//! | Int64, UInt32 | `int8` |
//! | UInt64, Decimal128/256 | `numeric` |
//! | Float16, Float32 | `float4` |
//! | Float64 | `float8` |
//! | Utf8, LargeUtf8, Utf8View, dictionaries of them | `text` |
//! | Binary, LargeBinary, BinaryView, FixedSizeBinary | `bytea` |
//! | Timestamp (any unit) without / with a time zone | `timestamp` / `timestamptz` (µs) |
//! | Date32, Date64 | `date` |
//! | anything else | `text`, as Arrow displays it |

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::api::results::FieldFormat;
use pgwire::messages::data::DataRow;

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01.
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's epoch.
pub(crate) const PG_EPOCH_DAYS: i32 = 10_957;

/// The PostgreSQL type a column of `dt` is described and encoded as.
pub(crate) fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Dictionary(_, value) => pg_type(value),
        _ => Type::TEXT,
    }
}

/// Turns record batches into DataRows for one result: the column formats the client asked
/// for (text or binary) are fixed for the whole result.
pub(crate) struct RowEncoder {
    formats: Vec<FieldFormat>,
    options: FormatOptions<'static>,
}

impl RowEncoder {
    /// An encoder writing column `i` in `formats[i]`.
    pub(crate) fn new(formats: Vec<FieldFormat>) -> Self {
        Self {
            formats,
            options: FormatOptions::new().with_null(""),
        }
    }

    /// Every row of `batch` as a DataRow.
    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<Vec<DataRow>, ArrowError> {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| normalize(c))
            .collect::<Result<_, _>>()?;
        let mut writers = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let binary = self.formats.get(i) == Some(&FieldFormat::Binary);
            writers.push(Column::new(column.as_ref(), binary, &self.options)?);
        }
        let field_count = i16::try_from(columns.len())
            .map_err(|_| ArrowError::ComputeError("more than 32767 columns".to_owned()))?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut scratch = String::new();
        for row in 0..batch.num_rows() {
            let mut data = BytesMut::new();
            for (column, writer) in columns.iter().zip(&writers) {
                if column.is_null(row) {
                    data.put_i32(-1);
                    continue;
                }
                let start = data.len();
                data.put_i32(0);
                writer.write(row, &mut data, &mut scratch)?;
                let len = i32::try_from(data.len() - start - 4)
                    .map_err(|_| ArrowError::ComputeError("value over 2 GiB".to_owned()))?;
                data[start..start + 4].copy_from_slice(&len.to_be_bytes());
            }
            rows.push(DataRow::new(data, field_count));
        }
        Ok(rows)
    }
}

/// Dictionaries become their values and the wide or view string and binary layouts the plain
/// ones, so [`Column`] deals with few layouts.
fn normalize(column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let target = match column.data_type() {
        DataType::Dictionary(_, value) => match value.as_ref() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
            other => other.clone(),
        },
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        _ => return Ok(Arc::clone(column)),
    };
    arrow::compute::cast(column, &target)
}

/// One column of a batch, ready to write value by value.
enum Column<'a> {
    Bool(&'a arrow::array::BooleanArray, bool),
    /// Integers up to 64 bits as `int2`/`int4`/`int8` (by `width` bytes in binary).
    Int(IntSource<'a>, usize, bool),
    UInt64(&'a arrow::array::PrimitiveArray<UInt64Type>, bool),
    Float32(Float32Source<'a>, bool),
    Float64(&'a arrow::array::PrimitiveArray<Float64Type>, bool),
    Text(&'a arrow::array::StringArray),
    Bytes(&'a arrow::array::BinaryArray, bool),
    /// Timestamps as µs since the Unix epoch; `tz` says whether to print an offset.
    Timestamp(TimestampSource<'a>, bool, bool),
    Date(DateSource<'a>, bool),
    /// `numeric` columns: decimal text, converted to the binary form on request.
    Numeric(ArrayFormatter<'a>, bool),
    /// Everything else: Arrow's display text.
    Display(ArrayFormatter<'a>),
}

#[derive(Clone, Copy)]
enum IntSource<'a> {
    I8(&'a arrow::array::PrimitiveArray<Int8Type>),
    I16(&'a arrow::array::PrimitiveArray<Int16Type>),
    I32(&'a arrow::array::PrimitiveArray<Int32Type>),
    I64(&'a arrow::array::PrimitiveArray<Int64Type>),
    U8(&'a arrow::array::PrimitiveArray<UInt8Type>),
    U16(&'a arrow::array::PrimitiveArray<UInt16Type>),
    U32(&'a arrow::array::PrimitiveArray<UInt32Type>),
}

impl IntSource<'_> {
    fn value(self, i: usize) -> i64 {
        match self {
            IntSource::I8(a) => i64::from(a.value(i)),
            IntSource::I16(a) => i64::from(a.value(i)),
            IntSource::I32(a) => i64::from(a.value(i)),
            IntSource::I64(a) => a.value(i),
            IntSource::U8(a) => i64::from(a.value(i)),
            IntSource::U16(a) => i64::from(a.value(i)),
            IntSource::U32(a) => i64::from(a.value(i)),
        }
    }
}

#[derive(Clone, Copy)]
enum Float32Source<'a> {
    F16(&'a arrow::array::PrimitiveArray<Float16Type>),
    F32(&'a arrow::array::PrimitiveArray<Float32Type>),
}

#[derive(Clone, Copy)]
enum TimestampSource<'a> {
    S(&'a arrow::array::PrimitiveArray<TimestampSecondType>),
    Ms(&'a arrow::array::PrimitiveArray<TimestampMillisecondType>),
    Us(&'a arrow::array::PrimitiveArray<TimestampMicrosecondType>),
    Ns(&'a arrow::array::PrimitiveArray<TimestampNanosecondType>),
}

impl TimestampSource<'_> {
    /// Microseconds since the Unix epoch (nanoseconds rounded down, as PostgreSQL keeps µs).
    fn micros(self, i: usize) -> i64 {
        match self {
            TimestampSource::S(a) => a.value(i).saturating_mul(1_000_000),
            TimestampSource::Ms(a) => a.value(i).saturating_mul(1_000),
            TimestampSource::Us(a) => a.value(i),
            TimestampSource::Ns(a) => a.value(i).div_euclid(1_000),
        }
    }
}

#[derive(Clone, Copy)]
enum DateSource<'a> {
    D32(&'a arrow::array::PrimitiveArray<Date32Type>),
    D64(&'a arrow::array::PrimitiveArray<Date64Type>),
}

impl DateSource<'_> {
    /// Days since the Unix epoch.
    fn days(self, i: usize) -> i64 {
        match self {
            DateSource::D32(a) => i64::from(a.value(i)),
            DateSource::D64(a) => a.value(i).div_euclid(86_400_000),
        }
    }
}

impl<'a> Column<'a> {
    fn new(
        array: &'a dyn Array,
        binary: bool,
        options: &FormatOptions<'a>,
    ) -> Result<Self, ArrowError> {
        Ok(match array.data_type() {
            DataType::Boolean => Column::Bool(array.as_boolean(), binary),
            DataType::Int8 => Column::Int(IntSource::I8(array.as_primitive()), 2, binary),
            DataType::Int16 => Column::Int(IntSource::I16(array.as_primitive()), 2, binary),
            DataType::UInt8 => Column::Int(IntSource::U8(array.as_primitive()), 2, binary),
            DataType::Int32 => Column::Int(IntSource::I32(array.as_primitive()), 4, binary),
            DataType::UInt16 => Column::Int(IntSource::U16(array.as_primitive()), 4, binary),
            DataType::Int64 => Column::Int(IntSource::I64(array.as_primitive()), 8, binary),
            DataType::UInt32 => Column::Int(IntSource::U32(array.as_primitive()), 8, binary),
            DataType::UInt64 => Column::UInt64(array.as_primitive(), binary),
            DataType::Float16 => Column::Float32(Float32Source::F16(array.as_primitive()), binary),
            DataType::Float32 => Column::Float32(Float32Source::F32(array.as_primitive()), binary),
            DataType::Float64 => Column::Float64(array.as_primitive(), binary),
            DataType::Utf8 => Column::Text(array.as_string::<i32>()),
            DataType::Binary => Column::Bytes(array.as_binary::<i32>(), binary),
            DataType::Timestamp(unit, tz) => {
                let source = match unit {
                    TimeUnit::Second => TimestampSource::S(array.as_primitive()),
                    TimeUnit::Millisecond => TimestampSource::Ms(array.as_primitive()),
                    TimeUnit::Microsecond => TimestampSource::Us(array.as_primitive()),
                    TimeUnit::Nanosecond => TimestampSource::Ns(array.as_primitive()),
                };
                Column::Timestamp(source, tz.is_some(), binary)
            }
            DataType::Date32 => Column::Date(DateSource::D32(array.as_primitive()), binary),
            DataType::Date64 => Column::Date(DateSource::D64(array.as_primitive()), binary),
            DataType::Decimal128(..) | DataType::Decimal256(..) => {
                Column::Numeric(ArrayFormatter::try_new(array, options)?, binary)
            }
            _ => Column::Display(ArrayFormatter::try_new(array, options)?),
        })
    }

    /// Append the encoding of the (non-null) value in `row`.
    fn write(
        &self,
        row: usize,
        out: &mut BytesMut,
        scratch: &mut String,
    ) -> Result<(), ArrowError> {
        use std::fmt::Write as _;
        scratch.clear();
        match self {
            Column::Bool(a, binary) => {
                let v = a.value(row);
                if *binary {
                    out.put_u8(u8::from(v));
                } else {
                    out.put_u8(if v { b't' } else { b'f' });
                }
            }
            Column::Int(source, width, binary) => {
                let v = source.value(row);
                if *binary {
                    // The source type fits the width by construction of the mapping.
                    match width {
                        2 => out.put_i16(v as i16),
                        4 => out.put_i32(v as i32),
                        _ => out.put_i64(v),
                    }
                } else {
                    let _ = write!(scratch, "{v}");
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::UInt64(a, binary) => {
                let _ = write!(scratch, "{}", a.value(row));
                if *binary {
                    numeric_binary(scratch, out);
                } else {
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Float32(source, binary) => {
                let v = match source {
                    Float32Source::F16(a) => a.value(row).to_f32(),
                    Float32Source::F32(a) => a.value(row),
                };
                if *binary {
                    out.put_f32(v);
                } else {
                    float_text(f64::from(v), Some(v), scratch);
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Float64(a, binary) => {
                let v = a.value(row);
                if *binary {
                    out.put_f64(v);
                } else {
                    float_text(v, None, scratch);
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Text(a) => out.put_slice(a.value(row).as_bytes()),
            Column::Bytes(a, binary) => {
                let v = a.value(row);
                if *binary {
                    out.put_slice(v);
                } else {
                    out.put_slice(b"\\x");
                    for b in v {
                        let _ = write!(scratch, "{b:02x}");
                    }
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Timestamp(source, tz, binary) => {
                let micros = source.micros(row);
                if *binary {
                    out.put_i64(micros.saturating_sub(PG_EPOCH_MICROS));
                } else {
                    timestamp_text(micros, *tz, scratch);
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Date(source, binary) => {
                let days = source.days(row);
                if *binary {
                    let pg = days - i64::from(PG_EPOCH_DAYS);
                    out.put_i32(i32::try_from(pg).unwrap_or(if pg < 0 {
                        i32::MIN
                    } else {
                        i32::MAX
                    }));
                } else {
                    date_text(days, scratch);
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Numeric(formatter, binary) => {
                let _ = write!(scratch, "{}", formatter.value(row));
                if *binary {
                    numeric_binary(scratch, out);
                } else {
                    out.put_slice(scratch.as_bytes());
                }
            }
            Column::Display(formatter) => {
                write!(scratch, "{}", formatter.value(row))
                    .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
                out.put_slice(scratch.as_bytes());
            }
        }
        Ok(())
    }
}

/// PostgreSQL's text for a float: shortest round-trip digits, `Infinity`, `-Infinity`, `NaN`.
/// `single` holds the value as f32 when the column is `float4`, printed at that precision.
fn float_text(v: f64, single: Option<f32>, out: &mut String) {
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else if let Some(s) = single {
        let _ = write!(out, "{s}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Year, month, day of the proleptic Gregorian calendar for days since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn date_text(days: i64, out: &mut String) {
    use std::fmt::Write as _;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (fraction without trailing zeros), `+00` with a time zone:
/// what PostgreSQL prints with `DateStyle = ISO` and `TimeZone = UTC`.
fn timestamp_text(micros: i64, tz: bool, out: &mut String) {
    use std::fmt::Write as _;
    let days = micros.div_euclid(86_400_000_000);
    let in_day = micros.rem_euclid(86_400_000_000);
    date_text(days, out);
    let secs = in_day / 1_000_000;
    let frac = in_day % 1_000_000;
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    if tz {
        out.push_str("+00");
    }
}

/// The binary `numeric` of a decimal text such as `-123.4500`: digit count, weight, sign and
/// display scale, then base-10000 digits.
pub(crate) fn numeric_binary(text: &str, out: &mut BytesMut) {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let int_part = int_part.trim_start_matches('0');
    let dscale = frac_part.len();
    // Integer digits in groups of four counted from the point; fraction digits padded right.
    let mut groups: Vec<i16> = Vec::new();
    let lead = int_part.len() % 4;
    let mut int_groups = 0i16;
    if lead > 0 {
        groups.push(digits_value(&int_part[..lead]));
        int_groups += 1;
    }
    for chunk in int_part.as_bytes()[lead..].chunks(4) {
        groups.push(digits_value(std::str::from_utf8(chunk).unwrap_or("0")));
        int_groups += 1;
    }
    for chunk in frac_part.as_bytes().chunks(4) {
        let mut g = digits_value(std::str::from_utf8(chunk).unwrap_or("0"));
        for _ in chunk.len()..4 {
            g *= 10;
        }
        groups.push(g);
    }
    let mut weight = int_groups - 1;
    // Leading zero groups (fractions below 1) lower the weight; trailing ones are dropped.
    let first = groups.iter().position(|g| *g != 0);
    let digits: &[i16] = match first {
        Some(first) => {
            weight -= first as i16;
            let last = groups.iter().rposition(|g| *g != 0).unwrap_or(first);
            &groups[first..=last]
        }
        None => &[],
    };
    if digits.is_empty() {
        weight = 0;
    }
    out.put_i16(digits.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_i16(dscale as i16);
    for d in digits {
        out.put_i16(*d);
    }
}

fn digits_value(digits: &str) -> i16 {
    digits.bytes().fold(0i16, |acc, b| {
        acc * 10 + i16::from(b.wrapping_sub(b'0') % 10)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arrow::array::{
        BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampNanosecondArray, UInt64Array,
    };
    use arrow::datatypes::{Field, Schema};

    fn cells(row: &DataRow) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let mut data = &row.data[..];
        for _ in 0..row.field_count {
            let len = i32::from_be_bytes(data[..4].try_into().unwrap());
            data = &data[4..];
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(data[..len as usize].to_vec()));
                data = &data[len as usize..];
            }
        }
        out
    }

    fn batch() -> RecordBatch {
        let tags: DictionaryArray<Int32Type> = vec![Some("d1"), None].into_iter().collect();
        let schema = Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("device_id", tags.data_type().clone(), true),
            Field::new("x", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("c", DataType::UInt64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int32, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_767_225_600_123_456_789, -1_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(tags),
                Arc::new(Float64Array::from(vec![Some(21.5), Some(f64::INFINITY)])),
                Arc::new(Int64Array::from(vec![Some(-7), None])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
                Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(0)])),
                Arc::new(StringArray::from(vec![Some("é"), Some("")])),
                Arc::new(Int32Array::from(vec![Some(3), Some(-3)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn types_follow_the_arrow_columns() {
        let schema = batch().schema();
        let types: Vec<Type> = schema
            .fields()
            .iter()
            .map(|f| pg_type(f.data_type()))
            .collect();
        assert_eq!(
            types,
            [
                Type::TIMESTAMPTZ,
                Type::TEXT,
                Type::FLOAT8,
                Type::INT8,
                Type::BOOL,
                Type::NUMERIC,
                Type::TEXT,
                Type::INT4
            ]
        );
        assert_eq!(
            pg_type(&DataType::Timestamp(TimeUnit::Nanosecond, None)),
            Type::TIMESTAMP
        );
    }

    #[test]
    fn text_encoding_matches_postgresql_output() {
        let rows = RowEncoder::new(vec![FieldFormat::Text; 8])
            .encode(&batch())
            .unwrap();
        let text = |c: &Option<Vec<u8>>| c.as_ref().map(|v| String::from_utf8(v.clone()).unwrap());
        let r0: Vec<Option<String>> = cells(&rows[0]).iter().map(text).collect();
        assert_eq!(
            r0,
            [
                Some("2026-01-01 00:00:00.123456+00".to_owned()),
                Some("d1".to_owned()),
                Some("21.5".to_owned()),
                Some("-7".to_owned()),
                Some("t".to_owned()),
                Some("18446744073709551615".to_owned()),
                Some("é".to_owned()),
                Some("3".to_owned()),
            ]
        );
        let r1: Vec<Option<String>> = cells(&rows[1]).iter().map(text).collect();
        assert_eq!(r1[0].as_deref(), Some("1969-12-31 23:59:59.999999+00"));
        assert_eq!(r1[1], None);
        assert_eq!(r1[2].as_deref(), Some("Infinity"));
        assert_eq!(r1[3], None);
        assert_eq!(r1[4].as_deref(), Some("f"));
    }

    #[test]
    fn binary_encoding_is_big_endian_from_the_postgresql_epoch() {
        let rows = RowEncoder::new(vec![FieldFormat::Binary; 8])
            .encode(&batch())
            .unwrap();
        let c = cells(&rows[0]);
        let micros = 1_767_225_600_123_456 - PG_EPOCH_MICROS;
        assert_eq!(c[0].as_deref(), Some(&micros.to_be_bytes()[..]));
        assert_eq!(c[2].as_deref(), Some(&21.5f64.to_be_bytes()[..]));
        assert_eq!(c[3].as_deref(), Some(&(-7i64).to_be_bytes()[..]));
        assert_eq!(c[4].as_deref(), Some(&[1u8][..]));
        assert_eq!(c[7].as_deref(), Some(&3i32.to_be_bytes()[..]));
    }

    #[test]
    fn calendar_and_numeric_edges() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(i64::from(PG_EPOCH_DAYS)), (2000, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let enc = |s: &str| {
            let mut b = BytesMut::new();
            numeric_binary(s, &mut b);
            b.chunks(2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
                .collect::<Vec<_>>()
        };
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(enc("123.45"), [2, 0, 0, 2, 123, 4500]);
        assert_eq!(enc("10000"), [1, 1, 0, 0, 1]);
        assert_eq!(enc("0.0001"), [1, -1, 0, 4, 1]);
        assert_eq!(enc("-5"), [1, 0, 0x4000, 0, 5]);
        assert_eq!(enc("0"), [0, 0, 0, 0]);
    }
}
