//! Writing and reading the Parquet data files.
//!
//! A file holds rows of one table and one time partition, sorted by series then time. The
//! encodings are chosen for telemetry: tags dictionary-encoded, `time` delta-encoded,
//! integers delta-encoded, all pages zstd-compressed, with page statistics for pruning.
//!
//! Floats: most readings are decimals with a few digits (`21.37`, `36.49894`, `279`). When
//! every value of a float column in a file is such a decimal with at most [`MAX_SCALE`]
//! digits after the point — exactly: the value is the one `v / 10^k` gives for an integer
//! `v`, bit for bit — the column is stored as `DECIMAL(18, k)` (INT64, delta-encoded), which
//! turns a slowly changing reading into small integer steps. Otherwise (NaN, infinities,
//! `-0.0`, full-precision floats) it stays `DOUBLE`, byte-stream-split so zstd finds the
//! repeated exponent and high mantissa bytes. Reading casts such a column back to `f64`
//! with the same `v / 10^k`, so values come back bit for bit.
//!
//! The Arrow schema is embedded, so any Parquet reader sees the columns' types (`time` as a
//! UTC nanosecond timestamp; a decimal-stored float as a decimal of the same value).

use std::fs::{self, File};
use std::path::Path;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::catalog::sync_dir;
use crate::error::StoreError;

/// Rows per Parquet row group: large enough for good compression, small enough that time
/// pruning skips most of a day's file.
const ROW_GROUP_ROWS: usize = 256 * 1024;

fn properties(schema: &SchemaRef, tag_count: usize) -> WriterProperties {
    let sorting: Vec<SortingColumn> = (1..=tag_count)
        .chain(std::iter::once(0))
        .map(|i| SortingColumn {
            column_idx: i32::try_from(i).unwrap_or(i32::MAX),
            descending: false,
            nulls_first: true,
        })
        .collect();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(sorting));
    for field in schema.fields() {
        let col = ColumnPath::from(field.name().as_str());
        b = match field.data_type() {
            DataType::Timestamp(..)
            | DataType::Int64
            | DataType::UInt64
            | DataType::Decimal128(..) => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED),
            DataType::Float64 => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT),
            _ => b.set_column_dictionary_enabled(col, true),
        };
    }
    b.build()
}

/// Write `batches` to a new Parquet file at `path`, durably: a temporary file is written and
/// fsynced, then renamed into place and the folder fsynced. Returns the file's size.
pub(crate) fn write(
    path: &Path,
    schema: &SchemaRef,
    tag_count: usize,
    batches: &[RecordBatch],
) -> Result<u64, StoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Encode(format!("{} has no folder", path.display())))?;
    create_dir_durably(dir)?;
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| StoreError::io("creating", &tmp, e))?;
    let parquet_err = |e: parquet::errors::ParquetError| {
        StoreError::io("writing", &tmp, std::io::Error::other(e.to_string()))
    };
    let (file_schema, scales) = decimal_schema(schema, batches);
    let mut writer = ArrowWriter::try_new(
        file,
        file_schema.clone(),
        Some(properties(&file_schema, tag_count)),
    )
    .map_err(parquet_err)?;
    for batch in batches {
        let batch = to_decimals(batch, &file_schema, &scales)
            .map_err(|e| StoreError::Encode(format!("storing floats as decimals: {e}")))?;
        writer.write(&batch).map_err(parquet_err)?;
    }
    let file = writer.into_inner().map_err(parquet_err)?;
    file.sync_all()
        .map_err(|e| StoreError::io("fsyncing", &tmp, e))?;
    let bytes = file
        .metadata()
        .map_err(|e| StoreError::io("reading", &tmp, e))?
        .len();
    fs::rename(&tmp, path).map_err(|e| StoreError::io("renaming", &tmp, e))?;
    sync_dir(dir)?;
    Ok(bytes)
}

/// Every row of a data file.
pub(crate) fn read(path: &Path) -> Result<Vec<RecordBatch>, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let err = |e: String| StoreError::io("reading", path, std::io::Error::other(e));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| err(e.to_string()))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| err(e.to_string()))?;
    reader
        .map(|b| {
            b.and_then(|b| from_decimals(&b))
                .map_err(|e| err(e.to_string()))
        })
        .collect()
}

/// Most digits after the decimal point a float column is stored with as a decimal.
pub(crate) const MAX_SCALE: i8 = 9;

/// Decimal values stay below this, so `v as f64` is exact (and within DECIMAL(18)).
const MAX_DECIMAL: f64 = 9_007_199_254_740_992.0; // 2^53

/// The smallest scale `k` with which every value of `values` is exactly `v / 10^k` for an
/// integer `v` (computed as Arrow's decimal → float cast computes it); `None` if there is none
/// up to [`MAX_SCALE`].
fn decimal_scale<'a>(
    values: impl Iterator<Item = &'a arrow::array::Float64Array> + Clone,
) -> Option<i8> {
    (0..=MAX_SCALE).find(|&k| {
        let p = 10f64.powi(i32::from(k));
        values.clone().all(|array| {
            array.iter().flatten().all(|x| {
                // Through the integer, as the file holds it: -0.0 becomes 0 and fails here.
                let v = (x * p).round();
                v.abs() < MAX_DECIMAL && ((v as i64) as f64 / p).to_bits() == x.to_bits()
            })
        })
    })
}

/// The file schema for `batches`: each float column all of whose values are short decimals
/// becomes `DECIMAL(18, k)`; and the scale per column index (`None`: stays as it is).
fn decimal_schema(schema: &SchemaRef, batches: &[RecordBatch]) -> (SchemaRef, Vec<Option<i8>>) {
    let mut scales = vec![None; schema.fields().len()];
    let mut fields: Vec<Field> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let mut field = field.as_ref().clone();
        if field.data_type() == &DataType::Float64 {
            let arrays = batches
                .iter()
                .filter_map(|b| b.column(i).as_primitive_opt::<Float64Type>());
            let any = batches
                .iter()
                .any(|b| b.column(i).null_count() < b.num_rows());
            if any && let Some(k) = decimal_scale(arrays) {
                scales[i] = Some(k);
                field = field.with_data_type(DataType::Decimal128(18, k));
            }
        }
        fields.push(field);
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    (Arc::new(schema), scales)
}

/// `batch` with the float columns `scales` names as decimals.
fn to_decimals(
    batch: &RecordBatch,
    file_schema: &SchemaRef,
    scales: &[Option<i8>],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if scales.iter().all(Option::is_none) {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(scales)
        .map(
            |(column, scale)| match (scale, column.as_primitive_opt::<Float64Type>()) {
                (Some(k), Some(floats)) => {
                    let p = 10f64.powi(i32::from(*k));
                    let decimals: Decimal128Array = floats
                        .iter()
                        .map(|x| x.map(|x| (x * p).round() as i128))
                        .collect();
                    Ok(Arc::new(decimals.with_precision_and_scale(18, *k)?) as ArrayRef)
                }
                _ => Ok(Arc::clone(column)),
            },
        )
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    RecordBatch::try_new(Arc::clone(file_schema), columns)
}

/// `batch` with its decimal-stored float columns back as `f64` (Arrow's cast: `v / 10^k`).
fn from_decimals(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Decimal128(..)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if matches!(field.data_type(), DataType::Decimal128(..)) {
            fields.push(field.as_ref().clone().with_data_type(DataType::Float64));
            columns.push(arrow::compute::cast(column, &DataType::Float64)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
        }
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    RecordBatch::try_new(Arc::new(schema), columns)
}

/// Create `dir` and any missing parents, fsyncing each parent whose entries changed so the
/// new folders survive a crash.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(StoreError::io("creating", dir, e)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, TimestampNanosecondArray};
    use arrow::datatypes::TimeUnit;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("v", DataType::Float64, true),
        ]))
    }

    fn batch(values: Vec<Option<f64>>) -> RecordBatch {
        let n = values.len() as i64;
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from_iter_values(0..n).with_timezone("UTC")),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap()
    }

    /// Write, read back, and say how the float column was stored.
    fn round_trip(values: Vec<Option<f64>>) -> (Vec<Option<f64>>, DataType, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let bytes = write(&path, &schema(), 0, &[batch(values)]).unwrap();
        let stored = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .schema()
            .field(1)
            .data_type()
            .clone();
        let back = read(&path).unwrap();
        assert_eq!(back[0].schema(), schema(), "read gives the table's types");
        let got = back
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<Float64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect();
        (got, stored, bytes)
    }

    fn same_bits(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.map(f64::to_bits) == y.map(f64::to_bits))
    }

    #[test]
    fn short_decimals_are_stored_as_decimals_and_come_back_bit_for_bit() {
        let values: Vec<Option<f64>> = (0..10_000)
            .map(|i| {
                let text = format!("{:.2}", 21.0 + f64::from(i % 977) * 0.37 - 150.0);
                Some(text.parse::<f64>().unwrap())
            })
            .chain([None, Some(0.0), Some(-3.5)])
            .collect();
        let (back, stored, _) = round_trip(values.clone());
        assert_eq!(stored, DataType::Decimal128(18, 2));
        assert!(same_bits(&values, &back));

        let integers: Vec<Option<f64>> = (0..100).map(|i| Some(f64::from(i) * 10.0)).collect();
        assert_eq!(round_trip(integers).1, DataType::Decimal128(18, 0));
        let five: Vec<Option<f64>> = vec![Some(36.49894), Some(124.09995), Some(-0.00001)];
        let (back, stored, _) = round_trip(five.clone());
        assert_eq!(stored, DataType::Decimal128(18, 5));
        assert!(same_bits(&five, &back));
    }

    #[test]
    fn floats_that_are_not_short_decimals_stay_doubles_bit_for_bit() {
        for odd in [
            std::f64::consts::PI,
            f64::NAN,
            f64::INFINITY,
            -0.0,
            1e300,
            0.1 + 0.2,
            1e-12,
        ] {
            let values = vec![Some(1.5), Some(odd), None];
            let (back, stored, _) = round_trip(values.clone());
            assert_eq!(stored, DataType::Float64, "{odd}");
            assert!(same_bits(&values, &back), "{odd}: {back:?}");
        }
        // A column of nulls only stays a double column.
        assert_eq!(round_trip(vec![None, None]).1, DataType::Float64);
    }

    #[test]
    fn a_slowly_drifting_reading_takes_about_a_byte_per_value() {
        // A random walk in steps of 0.01 around 21 °C (a fixed LCG for the noise).
        let mut state: u64 = 7;
        let mut x: i64 = 2100;
        let values: Vec<Option<f64>> = (0..100_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x += (state >> 61) as i64 - 3;
                Some(
                    format!("{}.{:02}", x / 100, x % 100)
                        .parse::<f64>()
                        .unwrap(),
                )
            })
            .collect();
        let (back, stored, bytes) = round_trip(values.clone());
        assert_eq!(stored, DataType::Decimal128(18, 2));
        assert!(same_bits(&values, &back));
        // Timestamps 1 ns apart cost almost nothing; the values are 3-bit steps.
        assert!(bytes < 100_000, "{bytes} bytes for 100,000 values");
    }
}
