//! The cold tier: old partitions move to object storage (here the default folder backend),
//! stay in every read, are fetched through a bounded cache, survive reopens, take late rows,
//! and are deleted by retention and by the storage budget's evict-oldest policy.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, Float64Array, StringArray, TimestampNanosecondArray};
use ferrite_core::{Measurement, Point, Timestamp, Value};
use ferrite_store::{Store, StoreConfig, StoreError, TableConfig, WhenFull};

mod support;
use support::files_under;

const HOUR: i64 = 3_600_000_000_000;

fn point(device: &str, t: i64, v: f64) -> Point {
    Point {
        measurement: Measurement::new("telemetry").unwrap(),
        time: Timestamp::from_nanos(t),
        tags: BTreeMap::from([("device_id".to_owned(), device.to_owned())]),
        fields: BTreeMap::from([("t".to_owned(), Value::F64(v))]),
    }
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

/// Hour partitions; those that ended more than a day ago go cold.
fn config() -> StoreConfig {
    StoreConfig {
        partition: Duration::from_secs(3600),
        file_grace: Duration::ZERO,
        cold_after: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    }
}

fn open(dir: &Path, config: &StoreConfig) -> Store {
    Store::open(dir, config).unwrap().0
}

fn values(store: &Store) -> Vec<(String, i64, f64)> {
    let snap = store.snapshot("telemetry").unwrap().unwrap();
    let mut out = Vec::new();
    for b in &snap.batches {
        let col = |name: &str| b.column_by_name(name).unwrap().as_any();
        let d = col("device_id").downcast_ref::<StringArray>().unwrap();
        let t = col("time")
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        let v = col("t").downcast_ref::<Float64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((d.value(i).to_owned(), t.value(i), v.value(i)));
        }
    }
    out.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    out
}

/// Three old hour partitions (1970) and one of the current hour, two devices each.
async fn write_old_and_new(store: &Store) -> i64 {
    let recent = now();
    let mut points = Vec::new();
    for h in 0..3 {
        for d in ["d1", "d2"] {
            points.push(point(d, h * HOUR + 5, h as f64));
            points.push(point(d, h * HOUR + 10, h as f64 + 0.5));
        }
    }
    points.push(point("d1", recent, 99.0));
    store.write(points).await.unwrap();
    store.flush().await.unwrap();
    recent
}

#[tokio::test]
async fn old_partitions_go_cold_and_stay_readable_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let store = open(dir.path(), &config);
    write_old_and_new(&store).await;
    let before = values(&store);
    assert_eq!(before.len(), 13);
    assert_eq!(store.stats().files, 4);

    store.maintain().unwrap();
    let stats = store.stats();
    assert_eq!((stats.cold_files, stats.files_tiered), (3, 3));
    assert_eq!(stats.files, 4, "cold files stay in the catalog");
    // The old partitions' files left the data folder for the cold folder; the new one stayed.
    assert_eq!(files_under(&dir.path().join("tables")).len(), 1);
    let objects = files_under(&dir.path().join("cold"));
    assert_eq!(objects.len(), 3, "{objects:?}");
    assert!(objects.iter().all(|p| {
        let p = p.to_string_lossy();
        p.contains("cold/tables/telemetry/1970") && p.ends_with(".parquet")
    }));
    // Another Parquet reader opens an object as is.
    let file = std::fs::File::open(&objects[0]).unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    assert!(reader.metadata().file_metadata().num_rows() > 0);

    // Reads fetch cold files into the cache, once.
    assert_eq!(values(&store), before);
    let stats = store.stats();
    assert_eq!((stats.cache_misses, stats.cache_hits), (3, 0));
    assert_eq!(stats.cache_bytes, stats.cold_bytes);
    assert_eq!(values(&store), before);
    assert_eq!(store.stats().cache_hits, 3);
    // A second pass finds nothing more to move.
    store.maintain().unwrap();
    assert_eq!(store.stats().files_tiered, 3);
    store.close();
    drop(store);

    // Reopened: still cold, the cache is found again.
    let store = open(dir.path(), &config);
    assert_eq!(store.stats().cold_files, 3);
    assert_eq!(values(&store), before);
    assert_eq!(store.stats().cache_misses, 0);
    store.close();
    drop(store);

    // With the cache gone (or damaged), files come back from the cold tier.
    let cached = files_under(&dir.path().join("cache"));
    assert_eq!(cached.len(), 3);
    std::fs::remove_file(&cached[0]).unwrap();
    std::fs::write(&cached[1], b"not parquet").unwrap();
    let store = open(dir.path(), &config);
    assert_eq!(values(&store), before);
    assert_eq!(store.stats().cache_misses, 2);
    // Latest rows are served from the index, whatever the tier.
    let latest = store.latest("telemetry").unwrap().unwrap();
    assert_eq!(
        latest.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        2
    );
}

#[tokio::test]
async fn the_cache_keeps_to_its_bound_except_for_files_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &config());
    write_old_and_new(&store).await;
    store.maintain().unwrap();
    let largest = files_under(&dir.path().join("cold"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    store.close();
    drop(store);

    let small = StoreConfig {
        cold_cache_bytes: largest,
        ..config()
    };
    let store = open(dir.path(), &small);
    let all = values(&store);
    assert_eq!(all.len(), 13);
    let stats = store.stats();
    assert_eq!(stats.cache_misses, 3);
    assert!(stats.cache_bytes <= largest, "{stats:?}");
    assert_eq!(files_under(&dir.path().join("cache")).len(), 1);

    // A view holds its files: all three stay readable while it lives.
    let view = store
        .table_view("telemetry", i64::MIN..=i64::MAX)
        .unwrap()
        .unwrap();
    let cold: Vec<_> = view.files.iter().filter(|f| f.meta.cold).collect();
    assert_eq!(cold.len(), 3);
    assert!(cold.iter().all(|f| f.path.is_file()));
    assert!(store.stats().cache_bytes > largest);
    // Released, the cache trims what nobody holds.
    drop(view);
    assert!(store.stats().cache_bytes <= largest);
    assert_eq!(files_under(&dir.path().join("cache")).len(), 1);
}

#[tokio::test]
async fn late_rows_into_a_cold_partition_win_and_are_compacted_back_to_cold() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &config());
    write_old_and_new(&store).await;
    store.maintain().unwrap();
    assert_eq!(store.stats().cold_files, 3);

    // A retry rewrites a cold row; a late row adds one.
    store
        .write(vec![point("d1", 5, -1.0), point("d1", 7, -2.0)])
        .await
        .unwrap();
    let seen = values(&store);
    assert!(seen.contains(&("d1".into(), 5, -1.0)), "{seen:?}");
    assert!(seen.contains(&("d1".into(), 7, -2.0)));
    assert!(!seen.contains(&("d1".into(), 5, 0.0)));
    assert_eq!(seen.len(), 14);
    store.flush().await.unwrap();
    assert_eq!(values(&store), seen);

    // Compaction merges the late file with the cold one; the result goes cold again and the
    // replaced object is deleted.
    store.maintain().unwrap();
    let stats = store.stats();
    assert!(stats.compactions >= 1);
    assert_eq!(stats.cold_files, 3, "{stats:?}");
    assert_eq!(files_under(&dir.path().join("cold")).len(), 3);
    assert_eq!(files_under(&dir.path().join("tables")).len(), 1);
    assert_eq!(values(&store), seen);
}

#[tokio::test]
async fn retention_deletes_cold_partitions_objects_and_copies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &config());
    write_old_and_new(&store).await;
    store.maintain().unwrap();
    values(&store); // fill the cache
    store.close();
    drop(store);

    let keep_a_week = StoreConfig {
        retention: Duration::from_secs(7 * 24 * 3600),
        ..config()
    };
    let store = open(dir.path(), &keep_a_week);
    store.maintain().unwrap();
    let stats = store.stats();
    assert_eq!((stats.files, stats.cold_files), (1, 0));
    assert_eq!(stats.partitions_dropped, 3);
    assert!(files_under(&dir.path().join("cold")).is_empty());
    assert!(files_under(&dir.path().join("cache")).is_empty());
    assert_eq!(values(&store).len(), 1);
}

#[tokio::test]
async fn leftovers_of_a_crash_are_removed_and_a_moved_cold_tier_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &config());
    write_old_and_new(&store).await;
    store.maintain().unwrap();
    store.close();
    drop(store);

    // An upload whose catalog commit never happened, and a half-fetched cache file.
    let stray = dir
        .path()
        .join("cold/tables/telemetry/19700101T000000Z/00000000000000000999.parquet");
    std::fs::write(&stray, b"uploaded before a crash").unwrap();
    std::fs::create_dir_all(dir.path().join("cache")).unwrap();
    let partial = dir.path().join("cache/00000000000000000001.parquet.tmp");
    std::fs::write(&partial, b"half").unwrap();
    let store = open(dir.path(), &config());
    assert!(!stray.exists());
    assert!(!partial.exists());
    assert_eq!(values(&store).len(), 13);
    store.close();
    drop(store);

    // The catalog's cold files are in the default folder: another URL is refused at open.
    let elsewhere = StoreConfig {
        cold_url: dir.path().join("archive").display().to_string(),
        ..config()
    };
    let err = Store::open(dir.path(), &elsewhere).err().unwrap();
    assert!(matches!(err, StoreError::ColdConfig(_)), "{err}");
    assert!(err.to_string().contains("3 cold files"), "{err}");

    // Turning tiering off keeps the cold files readable and moves nothing more.
    let off = StoreConfig {
        cold_after: Duration::ZERO,
        ..config()
    };
    let store = open(dir.path(), &off);
    assert_eq!(values(&store).len(), 13);
    assert_eq!(store.stats().cold_files, 3);
}

#[tokio::test]
async fn a_table_setting_overrides_when_partitions_go_cold() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        tables: BTreeMap::from([(
            "telemetry".to_owned(),
            TableConfig {
                cold_after: Some(Duration::ZERO),
                ..TableConfig::default()
            },
        )]),
        ..config()
    };
    let store = open(dir.path(), &config);
    write_old_and_new(&store).await;
    store.maintain().unwrap();
    assert_eq!(store.stats().cold_files, 0);
}

#[tokio::test]
async fn evict_oldest_deletes_the_oldest_partitions_to_fit_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let local = StoreConfig {
        cold_after: Duration::ZERO,
        ..config()
    };
    let store = open(dir.path(), &local);
    let mut points = Vec::new();
    for h in 0..4 {
        for i in 0..50 {
            points.push(point("d1", h * HOUR + i, (h * 100 + i) as f64));
        }
    }
    store.write(points).await.unwrap();
    store.flush().await.unwrap();
    let per_file = store.stats().file_bytes / 4;
    store.close();
    drop(store);

    // Room for about two partitions: the two oldest go; writes keep being taken.
    let budget = StoreConfig {
        max_bytes: per_file * 2 + per_file / 2,
        when_full: WhenFull::EvictOldest,
        ..local
    };
    let store = open(dir.path(), &budget);
    store
        .write(vec![point("d1", 3 * HOUR + 99, 1.0)])
        .await
        .unwrap();
    store.maintain().unwrap();
    let stats = store.stats();
    assert_eq!(stats.partitions_evicted, 2);
    assert_eq!(stats.files, 2);
    let times: Vec<i64> = values(&store).iter().map(|r| r.1).collect();
    assert!(times.iter().all(|t| *t >= 2 * HOUR), "{times:?}");
    assert_eq!(times.len(), 101);

    // A budget even the newest partition does not fit: it is kept, and writes are refused.
    store.close();
    drop(store);
    let tiny = StoreConfig {
        max_bytes: 1,
        ..budget
    };
    let store = open(dir.path(), &tiny);
    store.maintain().unwrap();
    assert_eq!(store.stats().files, 1);
    let err = store
        .write(vec![point("d1", 3 * HOUR + 100, 1.0)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OverBudget { .. }), "{err}");
}
