//! The store's contract: durable after `write` returns, replayed after reopen, torn tails cut,
//! schema conflicts rejected whole, last write wins per series and time.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;

use arrow::array::{Array, Float64Array, StringArray};
use ferrite_core::{Measurement, Point, Timestamp, Value};
use ferrite_store::{Store, StoreConfig, StoreError};

fn point(device: &str, t: i64, field: &str, v: Value) -> Point {
    Point {
        measurement: Measurement::new("telemetry").unwrap(),
        time: Timestamp::from_nanos(t),
        tags: BTreeMap::from([("device_id".to_owned(), device.to_owned())]),
        fields: BTreeMap::from([(field.to_owned(), v)]),
    }
}

fn rows(store: &Store) -> usize {
    store
        .snapshot("telemetry")
        .map(|s| s.unwrap().batches.iter().map(|b| b.num_rows()).sum())
        .unwrap_or(0)
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreConfig::default()).unwrap().0
}

#[tokio::test]
async fn written_points_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let mut pending = Vec::new();
        for i in 0..500 {
            pending.push(
                store
                    .submit(vec![point(
                        &format!("d{}", i % 7),
                        i,
                        "t",
                        Value::F64(i as f64),
                    )])
                    .await
                    .unwrap(),
            );
        }
        for p in pending {
            p.wait().await.unwrap();
        }
        assert_eq!(rows(&store), 500);
        let stats = store.stats();
        assert_eq!(stats.writes, 500);
        assert!(stats.commits <= 500 && stats.commits >= 1);
        // Dropped without close: like a crash after the acks.
    }
    let (store, report) = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    assert_eq!(report.records, 500);
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(rows(&store), 500);
}

#[tokio::test]
async fn torn_tail_is_cut_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..3 {
            store
                .write(vec![point("d1", i, "t", Value::F64(1.0))])
                .await
                .unwrap();
        }
        store.close();
    }
    let seg = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    // Half a record header and some garbage: what a crash mid-write leaves.
    f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let len_before = std::fs::metadata(&seg).unwrap().len();
    let (store, report) = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.torn_bytes, 7);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len_before - 7);
    assert_eq!(rows(&store), 3);
    // And the log keeps working after the cut.
    store
        .write(vec![point("d1", 10, "t", Value::F64(1.0))])
        .await
        .unwrap();
    store.close();
    drop(store);
    let (store, report) = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    assert_eq!((report.records, report.torn_bytes), (4, 0));
    assert_eq!(rows(&store), 4);
}

#[tokio::test]
async fn corrupted_record_in_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .write(vec![point("d1", 1, "t", Value::F64(1.0))])
            .await
            .unwrap();
        store
            .write(vec![point("d1", 2, "t", Value::F64(2.0))])
            .await
            .unwrap();
        store.close();
    }
    let seg = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let (store, report) = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    assert_eq!(report.records, 1);
    assert!(report.torn_bytes > 0);
    assert_eq!(rows(&store), 1);
}

#[tokio::test]
async fn type_conflict_rejects_whole_write_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .write(vec![point("d1", 1, "t", Value::F64(1.0))])
        .await
        .unwrap();
    let mut bad = point("d1", 2, "ok_field", Value::F64(2.0));
    bad.fields.insert("t".into(), Value::Str("hot".into()));
    let err = store.write(vec![bad]).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("\"t\""), "{err}");
    assert_eq!(rows(&store), 1);
    // The rejected write's new column did not appear either.
    let schema = store.schema("telemetry").unwrap();
    assert!(schema.field_with_name("ok_field").is_err());
    assert_eq!(store.stats().rejected, 1);
}

#[tokio::test]
async fn conflict_within_one_group_commit_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store
        .submit(vec![point("d1", 1, "new", Value::F64(1.0))])
        .await
        .unwrap();
    let b = store
        .submit(vec![point("d2", 1, "new", Value::Bool(true))])
        .await
        .unwrap();
    let (a, b) = (a.wait().await, b.wait().await);
    assert_eq!(
        a.is_ok() as u8 + b.is_ok() as u8,
        1,
        "exactly one of two conflicting writes may land: {a:?} {b:?}"
    );
    assert_eq!(rows(&store), 1);
}

#[tokio::test]
async fn same_series_and_time_last_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .write(vec![point("d1", 5, "t", Value::F64(1.0))])
        .await
        .unwrap();
    store
        .write(vec![point("d1", 5, "t", Value::F64(2.0))])
        .await
        .unwrap();
    store
        .write(vec![point("d2", 5, "t", Value::F64(3.0))])
        .await
        .unwrap();
    let snap = store.snapshot("telemetry").unwrap().unwrap();
    let b = &snap.batches[0];
    assert_eq!(b.num_rows(), 2);
    let dev = b
        .column_by_name("device_id")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let t = b
        .column_by_name("t")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!((dev.value(0), t.value(0)), ("d1", 2.0));
    assert_eq!((dev.value(1), t.value(1)), ("d2", 3.0));
}

#[tokio::test]
async fn writes_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.close();
    assert!(matches!(
        store
            .write(vec![point("d1", 1, "t", Value::F64(1.0))])
            .await,
        Err(StoreError::ShuttingDown)
    ));
}

#[tokio::test]
async fn memtable_row_limit_refuses_whole_writes_and_keeps_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_memtable_rows: 3,
        ..StoreConfig::default()
    };
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    store
        .write(vec![
            point("d1", 1, "t", Value::F64(1.0)),
            point("d1", 2, "t", Value::F64(1.0)),
        ])
        .await
        .unwrap();
    let err = store
        .write(vec![
            point("d1", 3, "t", Value::F64(1.0)),
            point("d1", 4, "t", Value::F64(1.0)),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { max_rows: 3 }), "{err}");
    assert_eq!(
        ferrite_core::Classify::kind(&err),
        ferrite_core::ErrorKind::Unavailable
    );
    assert_eq!(rows(&store), 2);
    store
        .write(vec![point("d1", 3, "t", Value::F64(1.0))])
        .await
        .unwrap();
    assert_eq!(rows(&store), 3);
}
