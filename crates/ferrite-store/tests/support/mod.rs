//! Column readers shared by the store's tests.
#![allow(clippy::unwrap_used, dead_code)]

use arrow::array::{Array, Float64Array, StringArray, TimestampNanosecondArray};
use arrow::record_batch::RecordBatch;

/// The `device_id` and `time` columns of a batch.
pub(crate) fn devices_and_times(b: &RecordBatch) -> (StringArray, TimestampNanosecondArray) {
    let dev = b
        .column_by_name("device_id")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone();
    let time = b
        .column_by_name("time")
        .unwrap()
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .unwrap()
        .clone();
    (dev, time)
}

/// A numeric column read as f64 (files may hold a float column as a decimal, counts are u64).
pub(crate) fn f64_column(b: &RecordBatch, name: &str) -> Float64Array {
    let c = arrow::compute::cast(
        b.column_by_name(name).unwrap(),
        &arrow::datatypes::DataType::Float64,
    )
    .unwrap();
    c.as_any().downcast_ref::<Float64Array>().unwrap().clone()
}
