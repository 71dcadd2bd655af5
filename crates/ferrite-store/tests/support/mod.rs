//! Column readers and file listings shared by the store's tests.
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

/// Every file below `dir` (none if it does not exist), sorted.
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
