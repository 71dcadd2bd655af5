//! SQL over every tier of a table at once: Parquet files, late rows awaiting compaction, and
//! in-memory rows — the same answers before and after flushes and compactions.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use ferrite_core::{Measurement, Point, Timestamp, Value};
use ferrite_query::{QueryConfig, QueryEngine};
use ferrite_store::{Store, StoreConfig};

const MIN: i64 = 60_000_000_000;

fn point(device: &str, t: i64, v: f64) -> Point {
    Point {
        measurement: Measurement::new("readings").unwrap(),
        time: Timestamp::from_nanos(t),
        tags: BTreeMap::from([("device_id".to_owned(), device.to_owned())]),
        fields: BTreeMap::from([("v".to_owned(), Value::F64(v))]),
    }
}

/// (count, sum) of `v` over the rows the WHERE clause selects.
async fn count_sum(engine: &QueryEngine, filter: &str) -> (i64, f64) {
    let r = engine
        .sql(&format!(
            "SELECT count(*) AS n, coalesce(sum(v), 0) AS s FROM readings {filter}"
        ))
        .await
        .unwrap();
    let b = &r.batches[0];
    (
        b.column(0).as_primitive::<Int64Type>().value(0),
        b.column(1).as_primitive::<Float64Type>().value(0),
    )
}

/// One line per row of a query answering (device_id, time, v), in order.
async fn lines(engine: &QueryEngine, sql: &str) -> Vec<String> {
    let r = engine
        .sql(&format!(
            "SELECT device_id || ' ' || CAST(CAST(time AS BIGINT) AS VARCHAR) || ' ' || \
             CAST(v AS VARCHAR) AS line FROM ({sql}) ORDER BY line"
        ))
        .await
        .unwrap();
    r.batches
        .iter()
        .flat_map(|b| {
            let c = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let c = c.as_string::<i32>();
            (0..b.num_rows())
                .map(|i| c.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `latest.readings` holds exactly the latest row of every device.
async fn assert_latest(engine: &QueryEngine, expected_devices: usize) {
    let latest = lines(engine, "SELECT device_id, time, v FROM latest.readings").await;
    let scanned = lines(
        engine,
        "SELECT DISTINCT ON (device_id) device_id, time, v FROM readings ORDER BY device_id, time DESC",
    )
    .await;
    assert_eq!(latest.len(), expected_devices, "{latest:?}");
    assert_eq!(latest, scanned);
}

#[tokio::test]
async fn answers_span_files_late_rows_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        partition: std::time::Duration::from_secs(3600),
        file_grace: std::time::Duration::ZERO,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(dir.path(), &config).unwrap().0);
    let engine = QueryEngine::new(Arc::clone(&store), QueryConfig::default()).unwrap();
    // Three hours of one reading a minute from two devices, flushed into files.
    let first: Vec<_> = (0..180)
        .flat_map(|m| [point("a", m * MIN, 1.0), point("b", m * MIN, 2.0)])
        .collect();
    store.write(first).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.stats().files, 3);
    // Then a retry that corrects a flushed reading (late), and an hour more in memory.
    store
        .write(vec![point("a", 10 * MIN, 101.0)])
        .await
        .unwrap();
    store
        .write((180..240).map(|m| point("a", m * MIN, 1.0)).collect())
        .await
        .unwrap();

    let whole = (420, 180.0 + 360.0 + 100.0 + 60.0);
    assert_eq!(count_sum(&engine, "").await, whole);
    // The latest rows: a's from memory, b's from its files.
    assert_latest(&engine, 2).await;
    // The first hour holds the corrected reading; the second hour is only files.
    assert_eq!(
        count_sum(&engine, "WHERE time < to_timestamp_nanos(3600000000000)").await,
        (120, 60.0 + 120.0 + 100.0)
    );
    assert_eq!(
        count_sum(
            &engine,
            "WHERE time >= to_timestamp_nanos(3600000000000) AND time < to_timestamp_nanos(7200000000000)"
        )
        .await,
        (120, 180.0)
    );
    assert_eq!(
        count_sum(&engine, "WHERE time >= to_timestamp_nanos(10800000000000)").await,
        (60, 60.0)
    );
    // EXPLAIN shows what the store pruned: one hour's file of the three is scanned.
    let plan = engine
        .sql(
            "EXPLAIN SELECT sum(v) FROM readings \
             WHERE time >= to_timestamp_nanos(3600000000000) AND time < to_timestamp_nanos(7200000000000)",
        )
        .await
        .unwrap();
    let text: String = plan
        .batches
        .iter()
        .flat_map(|b| {
            let col = b.column(1).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| col.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains(
            "StoreScanExec: table=readings, time=[1970-01-01T01:00:00Z, 1970-01-01T01:59:59.999999999Z], \
             files=1 of 3 (2 pruned by time, 0 cold), merged_partitions=0"
        ),
        "{text}"
    );
    // A time range that misses every file reads none of them.
    let view = store
        .table_view("readings", 3 * 60 * MIN..=i64::MAX)
        .unwrap()
        .unwrap();
    assert!(view.files.is_empty());

    // The same answers once everything is in files and compacted.
    store.flush().await.unwrap();
    assert!(store.maintain().unwrap() >= 1);
    assert_eq!(count_sum(&engine, "").await, whole);
    assert_eq!(
        count_sum(
            &engine,
            "WHERE device_id = 'a' AND time = to_timestamp_nanos(600000000000)"
        )
        .await,
        (1, 101.0)
    );

    // And after a restart, from files alone.
    drop(engine);
    let store = Arc::into_inner(store).unwrap();
    store.close();
    drop(store);
    let store = Arc::new(Store::open(dir.path(), &config).unwrap().0);
    let engine = QueryEngine::new(Arc::clone(&store), QueryConfig::default()).unwrap();
    assert_eq!(count_sum(&engine, "").await, whole);
    // Filters on a float field work on files that store it as a decimal (1.0, 2.0, 101.0)…
    assert_eq!(
        count_sum(&engine, "WHERE v > 1.5").await,
        (181, 360.0 + 101.0)
    );
    // …and beside a file where it stays a double (π is no short decimal).
    store
        .write(vec![point("c", 300 * MIN, std::f64::consts::PI)])
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        count_sum(&engine, "WHERE v > 3.0 AND v < 4.0").await,
        (1, std::f64::consts::PI)
    );
    assert_eq!(count_sum(&engine, "WHERE v = 101").await, (1, 101.0));
    let r = engine
        .sql("SELECT device_id, max(time) AS last FROM readings GROUP BY device_id ORDER BY device_id")
        .await
        .unwrap();
    assert_eq!(r.num_rows(), 3);
    assert_eq!(r.batches[0].column(0).as_string_view().value(1), "b");
    assert!(r.batches[0].column(1).is_valid(0));
    assert_latest(&engine, 3).await;
    assert_eq!(
        lines(
            &engine,
            "SELECT device_id, time, v FROM latest.readings WHERE device_id = 'c'"
        )
        .await,
        ["c 18000000000000 3.141592653589793"]
    );
}
