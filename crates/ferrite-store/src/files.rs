//! Writing and reading the Parquet data files.
//!
//! A file holds rows of one table and one time partition, sorted by series then time. The
//! encodings are chosen for telemetry: tags dictionary-encoded, `time` delta-encoded, floats
//! byte-stream-split (which lets zstd find the repeated exponent and high mantissa bytes of
//! slowly changing readings), integers delta-encoded, all pages zstd-compressed, with page
//! statistics for pruning. The Arrow schema is embedded, so any Parquet reader sees the same
//! column types (`time` as a UTC nanosecond timestamp).

use std::fs::{self, File};
use std::path::Path;

use arrow::datatypes::{DataType, SchemaRef};
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
            DataType::Timestamp(..) | DataType::Int64 | DataType::UInt64 => b
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
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(properties(schema, tag_count)))
            .map_err(parquet_err)?;
    for batch in batches {
        writer.write(batch).map_err(parquet_err)?;
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
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))
}

/// Create `dir` and any missing parents, fsyncing each parent whose entries changed so the
/// new folders survive a crash.
fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
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
