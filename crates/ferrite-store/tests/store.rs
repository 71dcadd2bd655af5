//! The store's contract: durable after `write` returns, replayed after reopen, torn tails cut,
//! schema conflicts rejected whole, last write wins per series and time.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;

use arrow::array::{Array, Float64Array, StringArray};
use ferrite_core::{Measurement, Point, Timestamp, Value};
use ferrite_store::{Store, StoreConfig, StoreError};

mod support;
use support::{devices_and_times, f64_column};

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
        // Closed without a flush: the rows are only in the WAL, like a crash after the acks.
        store.close();
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

fn config() -> StoreConfig {
    StoreConfig {
        partition: std::time::Duration::from_secs(3600),
        file_grace: std::time::Duration::ZERO,
        ..StoreConfig::default()
    }
}

const HOUR: i64 = 3_600_000_000_000;

fn values(store: &Store) -> Vec<(String, i64, f64)> {
    rows_of(&store.snapshot("telemetry").unwrap().unwrap())
}

fn latest(store: &Store) -> Vec<(String, i64, f64)> {
    rows_of(&store.latest("telemetry").unwrap().unwrap())
}

fn rows_of(snap: &ferrite_store::TableSnapshot) -> Vec<(String, i64, f64)> {
    let mut out = Vec::new();
    for b in &snap.batches {
        let d = b
            .column_by_name("device_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let t = b
            .column_by_name("time")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::TimestampNanosecondArray>()
            .unwrap();
        let v = b
            .column_by_name("t")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.push((d.value(i).to_owned(), t.value(i), v.value(i)));
        }
    }
    out
}

fn wal_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("wal")).unwrap().count()
}

fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    support::files_under(&dir.join("tables"))
}

#[tokio::test]
async fn flush_moves_rows_into_parquet_files_and_truncates_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), &config()).unwrap();
        // Two partitions (hours 0 and 1), three devices.
        let points: Vec<_> = (0..300)
            .map(|i| {
                point(
                    &format!("d{}", i % 3),
                    i * HOUR / 150,
                    "t",
                    Value::F64(i as f64),
                )
            })
            .collect();
        store.write(points).await.unwrap();
        store.flush().await.unwrap();
        let stats = store.stats();
        assert_eq!(stats.rows, 0, "memtables are empty after a flush");
        assert_eq!(stats.files, 2, "one file per partition");
        assert_eq!(stats.file_rows, 300);
        assert_eq!(wal_segments(dir.path()), 1, "older WAL segments deleted");
        assert_eq!(values(&store).len(), 300);
        store.close();
    }
    let (store, report) = Store::open(dir.path(), &config()).unwrap();
    assert_eq!(report.records, 0, "nothing left to replay");
    let v = values(&store);
    assert_eq!(v.len(), 300);
    assert!(
        v.iter()
            .any(|(d, t, x)| d == "d2" && *t == 299 * HOUR / 150 && *x == 299.0)
    );
    // Any Parquet reader sees the rows, sorted by series then time, with the UTC timestamp.
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 2);
    let mut total = 0;
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap();
        assert_eq!(
            reader.schema().field_with_name("time").unwrap().data_type(),
            &arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Nanosecond,
                Some("UTC".into())
            )
        );
        for b in reader.build().unwrap() {
            total += b.unwrap().num_rows();
        }
    }
    assert_eq!(total, 300);
}

#[tokio::test]
async fn late_rewrites_win_over_flushed_rows_before_and_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), &config()).unwrap();
    store
        .write(
            (0..10)
                .map(|i| point("d1", i, "t", Value::F64(1.0)))
                .collect(),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    // Rewrite t=3 (a retry with a corrected value) and add t=20.
    store
        .write(vec![
            point("d1", 3, "t", Value::F64(30.0)),
            point("d1", 20, "t", Value::F64(2.0)),
        ])
        .await
        .unwrap();
    let view = store.table_view("telemetry", 0..=100).unwrap().unwrap();
    assert_eq!(
        view.merged_partitions, 1,
        "a late row makes its partition merge"
    );
    assert!(
        view.files.is_empty(),
        "the merged partition's files are not scanned again"
    );
    let v = values(&store);
    assert_eq!(v.len(), 11);
    assert_eq!(v[3], ("d1".to_owned(), 3, 30.0));
    store.flush().await.unwrap();
    assert_eq!(
        store.stats().files,
        3,
        "the first file, a late file and a plain one"
    );
    assert_eq!(values(&store)[3].2, 30.0);
    // The late file is merged with the file whose time span it meets (t 0..9), not with the
    // newer one (t 20), which cannot hold a row it replaces.
    let mut before = parquet_files(dir.path());
    before.sort();
    assert_eq!(store.maintain().unwrap(), 1);
    let stats = store.stats();
    assert_eq!((stats.files, stats.file_rows), (2, 11));
    let kept: Vec<_> = before.iter().filter(|f| f.exists()).collect();
    assert_eq!(
        kept.len(),
        1,
        "only the file the late rows do not meet is kept"
    );
    assert_ne!(kept[0], &before[0], "the first flush's file was merged");
    let view = store.table_view("telemetry", 0..=100).unwrap().unwrap();
    assert_eq!(view.merged_partitions, 0);
    assert_eq!(view.files.len(), 2);
    assert_eq!(values(&store)[3].2, 30.0);
    assert_eq!(
        parquet_files(dir.path()).len(),
        2,
        "compacted inputs deleted"
    );
    store.close();
    drop(store);
    let (store, _) = Store::open(dir.path(), &config()).unwrap();
    assert_eq!(values(&store)[3].2, 30.0);
}

#[tokio::test]
async fn many_small_files_are_compacted_into_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        compaction_min_files: 4,
        ..config()
    };
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    for round in 0..5 {
        store
            .write(
                (0..20)
                    .map(|i| point(&format!("d{i}"), round * 100 + i, "t", Value::F64(1.0)))
                    .collect(),
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    assert_eq!(store.stats().files, 5);
    assert_eq!(store.maintain().unwrap(), 1);
    let stats = store.stats();
    assert_eq!((stats.files, stats.file_rows), (1, 100));
    assert_eq!(values(&store).len(), 100);
}

#[tokio::test]
async fn retention_drops_whole_partitions_past_their_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        retention: std::time::Duration::from_secs(2 * 3600),
        ..config()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    store
        .write(vec![
            point("d1", now - 5 * HOUR, "t", Value::F64(1.0)),
            point("d1", now - 4 * HOUR, "t", Value::F64(2.0)),
            point("d1", now - 60_000_000_000, "t", Value::F64(3.0)),
        ])
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.stats().files, 3);
    store.maintain().unwrap();
    let stats = store.stats();
    assert_eq!(stats.files, 1);
    assert_eq!(stats.partitions_dropped, 2);
    assert_eq!(
        values(&store).into_iter().map(|r| r.2).collect::<Vec<_>>(),
        [3.0]
    );
}

#[tokio::test]
async fn latest_keeps_one_row_per_series_through_flushes_late_rows_retention_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        retention: std::time::Duration::from_secs(2 * 3600),
        ..config()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let recent = now - 60_000_000_000;
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    let write = |points| store.write(points);
    write(vec![
        point("d1", now - 5 * HOUR, "t", Value::F64(1.0)),
        point("d2", now - 5 * HOUR, "t", Value::F64(10.0)),
    ])
    .await
    .unwrap();
    store.flush().await.unwrap();
    // In memory over the files.
    write(vec![point("d1", recent, "t", Value::F64(3.0))])
        .await
        .unwrap();
    let expected = vec![
        ("d1".to_owned(), recent, 3.0),
        ("d2".to_owned(), now - 5 * HOUR, 10.0),
    ];
    assert_eq!(latest(&store), expected);
    // A late row changes nothing; a rewrite of the latest row replaces it.
    write(vec![point("d1", now - HOUR / 2, "t", Value::F64(2.0))])
        .await
        .unwrap();
    assert_eq!(latest(&store), expected);
    store.flush().await.unwrap();
    write(vec![point("d1", recent, "t", Value::F64(4.0))])
        .await
        .unwrap();
    let expected = vec![
        ("d1".to_owned(), recent, 4.0),
        ("d2".to_owned(), now - 5 * HOUR, 10.0),
    ];
    assert_eq!(latest(&store), expected);
    store.flush().await.unwrap();
    assert_eq!(latest(&store), expected);
    store.close();
    drop(store);

    // From latest.bin, then rebuilt from the files without it.
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    assert_eq!(latest(&store), expected);
    store.close();
    drop(store);
    std::fs::remove_file(dir.path().join("latest.bin")).unwrap();
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    assert_eq!(latest(&store), expected);

    // Retention drops d2's only partition, and its latest row with it, also after a reopen.
    store.maintain().unwrap();
    assert_eq!(store.stats().partitions_dropped, 1);
    let expected = vec![("d1".to_owned(), recent, 4.0)];
    assert_eq!(latest(&store), expected);
    store.close();
    drop(store);
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    assert_eq!(latest(&store), expected);
    assert!(store.latest("no_such_table").is_none());
}

#[tokio::test]
async fn files_outside_the_catalog_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path(), &config()).unwrap();
        store
            .write(vec![point("d1", 1, "t", Value::F64(1.0))])
            .await
            .unwrap();
        store.flush().await.unwrap();
        store.close();
    }
    // A flush cut short by a crash: a file written, never committed to the catalog.
    let stray = parquet_files(dir.path())[0].with_file_name("00000000000000000099.parquet");
    std::fs::write(&stray, b"partial").unwrap();
    let (store, _) = Store::open(dir.path(), &config()).unwrap();
    assert!(!stray.exists());
    assert_eq!(values(&store).len(), 1);
}

#[tokio::test]
async fn a_second_open_of_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = Store::open(dir.path(), &config()).unwrap();
    let err = Store::open(dir.path(), &config()).err().unwrap();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[tokio::test]
async fn failing_flushes_keep_rows_and_refuse_writes_past_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        flush_rows: 2,
        max_memtable_rows: 3,
        ..config()
    };
    // `tables` as a file: every flush fails, like a full or broken disk.
    std::fs::write(dir.path().join("tables"), b"").unwrap();
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    store
        .write(vec![
            point("d1", 1, "t", Value::F64(1.0)),
            point("d1", 2, "t", Value::F64(1.0)),
        ])
        .await
        .unwrap();
    // The flush of those two fails and holds them; the next rows fill memory.
    let err = loop {
        match store
            .write(vec![
                point("d1", 3, "t", Value::F64(1.0)),
                point("d1", 4, "t", Value::F64(1.0)),
            ])
            .await
        {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::Full { max_rows: 3 }), "{err}");
    assert_eq!(
        ferrite_core::Classify::kind(&err),
        ferrite_core::ErrorKind::Unavailable
    );
    assert!(store.stats().flush_errors >= 1);
    assert_eq!(rows(&store), 4, "nothing acknowledged was lost");
    store.close();
    drop(store);
    // The disk is fixed: everything is replayed and flushes again.
    std::fs::remove_file(dir.path().join("tables")).unwrap();
    let (store, _) = Store::open(dir.path(), &config).unwrap();
    assert_eq!(rows(&store), 4);
    store.flush().await.unwrap();
    assert_eq!(store.stats().file_rows, 4);
}

#[tokio::test]
async fn writes_past_the_storage_budget_are_refused_and_change_nothing() {
    use ferrite_core::{Classify, ErrorKind};
    let dir = tempfile::tempdir().unwrap();
    let budget = |max_bytes| StoreConfig {
        max_bytes,
        ..config()
    };
    // Under the budget (no files yet), writes go in.
    let (store, _) = Store::open(dir.path(), &budget(1)).unwrap();
    store
        .write(
            (0..3)
                .map(|h| point("d1", h * HOUR, "t", Value::F64(h as f64)))
                .collect(),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    let used = store.stats().file_bytes;
    assert!(used > 1);
    store.close();
    drop(store);

    // At the budget: refused, retryable, nothing changes.
    let (store, _) = Store::open(dir.path(), &budget(used)).unwrap();
    let err = store
        .write(vec![point("d1", 5 * HOUR, "t", Value::F64(5.0))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::OverBudget { used: u, max } if u == used && max == used),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("store.max_bytes"), "{err}");
    assert_eq!(values(&store).len(), 3);
    store.close();
    drop(store);

    // A raised budget takes writes again.
    let (store, _) = Store::open(dir.path(), &budget(used + 1_000_000)).unwrap();
    store
        .write(vec![point("d1", 5 * HOUR, "t", Value::F64(5.0))])
        .await
        .unwrap();
    assert_eq!(values(&store).len(), 4);
}

fn rollup_config() -> StoreConfig {
    StoreConfig {
        tables: BTreeMap::from([(
            "telemetry".to_owned(),
            ferrite_store::TableConfig {
                rollups: vec!["1m".to_owned()],
                ..Default::default()
            },
        )]),
        ..StoreConfig::default()
    }
}

/// (device, bucket) → (count, sum, min, max, last) of field `t`, as the rollup table holds it.
type RollupRows = BTreeMap<(String, i64), (f64, f64, f64, f64, f64)>;

fn rollup_rows(store: &Store) -> RollupRows {
    let mut out = BTreeMap::new();
    let Some(snap) = store.snapshot("telemetry_1m") else {
        return out;
    };
    for b in snap.unwrap().batches {
        let col = |name: &str| f64_column(&b, name);
        let (dev, time) = devices_and_times(&b);
        let (n, s, lo, hi, last) = (
            col("t_count"),
            col("t_sum"),
            col("t_min"),
            col("t_max"),
            col("t_last"),
        );
        for i in 0..b.num_rows() {
            out.insert(
                (dev.value(i).to_owned(), time.value(i)),
                (
                    n.value(i),
                    s.value(i),
                    lo.value(i),
                    hi.value(i),
                    last.value(i),
                ),
            );
        }
    }
    out
}

const MINUTE: i64 = 60_000_000_000;

#[tokio::test]
async fn rollups_summarise_late_rows_and_retries_exactly_and_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &rollup_config()).unwrap().0;
    // Minute 0 over two flushes (in order), then a retry of one of its rows with a new value
    // and a late row: the bucket is recomputed, not double counted.
    store
        .write(vec![
            point("a", 1_000, "t", Value::F64(1.0)),
            point("a", 2_000, "t", Value::F64(5.0)),
        ])
        .await
        .unwrap();
    store.flush().await.unwrap();
    store
        .write(vec![
            point("a", 3_000, "t", Value::F64(-2.0)),
            point("a", MINUTE + 1, "t", Value::F64(10.0)),
        ])
        .await
        .unwrap();
    store.flush().await.unwrap();
    let rows = rollup_rows(&store);
    assert_eq!(rows[&("a".to_owned(), 0)], (3.0, 4.0, -2.0, 5.0, -2.0));
    assert_eq!(
        rows[&("a".to_owned(), MINUTE)],
        (1.0, 10.0, 10.0, 10.0, 10.0)
    );
    store
        .write(vec![
            point("a", 2_000, "t", Value::F64(7.0)),
            point("a", 500, "t", Value::F64(0.5)),
        ])
        .await
        .unwrap();
    store.flush().await.unwrap();
    let rows = rollup_rows(&store);
    assert_eq!(rows[&("a".to_owned(), 0)], (4.0, 6.5, -2.0, 7.0, -2.0));
    assert_eq!(rows.len(), 2);
    // The rollup table is the store's: writing to it is refused, nothing changes.
    let err = store
        .write(vec![Point {
            measurement: Measurement::new("telemetry_1m").unwrap(),
            ..point("a", 1, "t_count", Value::U64(1))
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Derived { .. }), "{err}");
    assert!(err.to_string().contains("rollup of telemetry"), "{err}");
    store.close();
}

#[tokio::test]
async fn a_crash_between_the_index_and_the_catalog_does_not_count_rows_twice() {
    let dir = tempfile::tempdir().unwrap();
    let before = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &rollup_config()).unwrap().0;
        store
            .write(vec![point("a", 1_000, "t", Value::F64(1.0))])
            .await
            .unwrap();
        store.flush().await.unwrap();
        store
            .write(vec![point("a", 2_000, "t", Value::F64(2.0))])
            .await
            .unwrap();
        store.close();
        drop(store);
        // The folder as it was before the next flush: the second row only in the WAL.
        copy_dir(dir.path(), before.path());
        let store = Store::open(dir.path(), &rollup_config()).unwrap().0;
        store.flush().await.unwrap();
        store.close();
    }
    // A crash after that flush wrote the latest-row index and before its catalog: the index
    // already merged the second row into the rollup, the catalog and WAL do not have it yet.
    std::fs::copy(
        dir.path().join("latest.bin"),
        before.path().join("latest.bin"),
    )
    .unwrap();
    let store = Store::open(before.path(), &rollup_config()).unwrap().0;
    store.flush().await.unwrap();
    assert_eq!(
        rollup_rows(&store)[&("a".to_owned(), 0)],
        (2.0, 3.0, 1.0, 2.0, 2.0),
        "the second row counted once"
    );
    store.close();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" && entry.file_name() != ".lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
