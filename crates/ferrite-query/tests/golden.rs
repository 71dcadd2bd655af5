//! Golden query tests: every `tests/golden/*.sql` file is a list of cases (SQL in, expected
//! rows or error out) run over one fixed dataset in every tier the store has — all rows in
//! memory; flushed files plus late rows in late files plus in-memory rows (some late too);
//! after a flush and compaction; after a restart — and each must give the same answer.
//!
//! File format (one case after another, separated by blank lines; `#` starts a comment line):
//!
//! ```text
//! query <name>
//! SELECT …            (one or more lines)
//! ----
//! col_a | col_b       (the answer's column names)
//! 1 | x               (its rows, in order: cells joined by " | ", NULL for null)
//!
//! error <name>
//! SELECT …
//! ----
//! text the error message contains
//! ```
//!
//! Floats are printed with at most six decimals, trailing zeros dropped (`0.5`, `24`,
//! `0.018333`); timestamps as RFC 3339.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use ferrite_core::{Measurement, Point, Timestamp, Value};
use ferrite_query::{QueryConfig, QueryEngine, QueryResult};
use ferrite_store::{Store, StoreConfig};

/// One case of a golden file.
#[derive(Debug)]
struct Case {
    file: String,
    line: usize,
    name: String,
    sql: String,
    expect: Expect,
}

#[derive(Debug)]
enum Expect {
    Rows(Vec<String>),
    Error(String),
}

fn parse(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut cases = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kind, name) = line.split_once(' ').unwrap_or_else(|| {
            panic!(
                "{file}:{}: expected `query <name>` or `error <name>`",
                n + 1
            )
        });
        assert!(
            kind == "query" || kind == "error",
            "{file}:{}: expected `query <name>` or `error <name>`, got {line:?}",
            n + 1
        );
        let mut sql = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim_end() == "----" {
                break;
            }
            sql.push(l);
        }
        let mut expected = Vec::new();
        while let Some((_, l)) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            expected.push(l.trim_end().to_owned());
            lines.next();
        }
        let expect = if kind == "query" {
            Expect::Rows(expected)
        } else {
            Expect::Error(expected.join("\n"))
        };
        cases.push(Case {
            file: file.clone(),
            line: n + 1,
            name: name.trim().to_owned(),
            sql: sql.join("\n"),
            expect,
        });
    }
    cases
}

/// The answer as the golden files write it: the header, then one line per row.
fn render(result: &QueryResult) -> Vec<String> {
    let mut out = vec![
        result
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    ];
    let options = FormatOptions::default().with_null("NULL");
    for batch in &result.batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| (c, ArrayFormatter::try_new(c.as_ref(), &options).unwrap()))
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = columns
                .iter()
                .map(|(array, fmt)| match array.data_type() {
                    DataType::Float64 if array.is_valid(row) => {
                        float(array.as_primitive::<Float64Type>().value(row))
                    }
                    _ => fmt.value(row).to_string(),
                })
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out
}

fn float(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap()
}

fn point(table: &str, device: &str, time: &str, fields: &[(&str, Value)]) -> Point {
    Point {
        measurement: Measurement::new(table).unwrap(),
        time: Timestamp::from_nanos(at(time)),
        tags: BTreeMap::from([("device_id".to_owned(), device.to_owned())]),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

fn climate(device: &str, time: &str, temp: f64, extra: &[(&str, Value)]) -> Point {
    let mut fields = vec![("temp", Value::F64(temp))];
    fields.extend(extra.iter().cloned());
    point("climate", device, time, &fields)
}

fn power(device: &str, time: &str, energy: f64) -> Point {
    point("power", device, time, &[("energy", Value::F64(energy))])
}

fn hum(v: f64) -> (&'static str, Value) {
    ("hum", Value::F64(v))
}

fn status(s: &str) -> (&'static str, Value) {
    ("status", Value::Str(s.to_owned()))
}

/// The dataset, as four writes. Written in order with a flush after the first two, the
/// third lands in late files (a correction of a flushed row and rows older than their
/// series' newest) and the fourth stays in memory (partly late as well). The last write of
/// a series and time wins, so every tier holds the same rows:
///
/// climate (device_id, temp, hum, status):
///   a 2024-03-31 00:00Z 10 50 ok | 01:00Z 12 (first written as 99) | 04:00Z 18 40 | 05:00Z 20 warn
///   b 2024-03-31 00:30Z 20 | 02:15Z 24 60 | 02:45Z 26 ok | 05:00Z 30
///   c 2024-03-30 22:30Z 5 | 23:30Z 7 | 2024-03-31 21:30Z 9 | 22:30Z 11
/// power (device_id, energy), a counter that m1 resets at 00:30:
///   m1 2024-03-31 00:00Z 100 | 00:10Z 110 | 00:20Z 125 | 00:30Z 5 | 00:40Z 20 | 00:50Z 30
///   m2 2024-03-31 00:00Z 0 | 00:30Z 60 | 01:00Z 90
fn writes() -> [Vec<Point>; 4] {
    [
        vec![
            climate(
                "a",
                "2024-03-31T00:00:00Z",
                10.0,
                &[hum(50.0), status("ok")],
            ),
            climate("a", "2024-03-31T01:00:00Z", 99.0, &[]),
            climate("b", "2024-03-31T02:15:00Z", 24.0, &[hum(60.0)]),
            climate("b", "2024-03-31T02:45:00Z", 26.0, &[status("ok")]),
            climate("c", "2024-03-30T22:30:00Z", 5.0, &[]),
            climate("c", "2024-03-30T23:30:00Z", 7.0, &[]),
            power("m1", "2024-03-31T00:00:00Z", 100.0),
            power("m1", "2024-03-31T00:10:00Z", 110.0),
            power("m1", "2024-03-31T00:20:00Z", 125.0),
            power("m2", "2024-03-31T00:30:00Z", 60.0),
        ],
        vec![
            climate("a", "2024-03-31T05:00:00Z", 20.0, &[status("warn")]),
            climate("b", "2024-03-31T05:00:00Z", 30.0, &[]),
            climate("c", "2024-03-31T21:30:00Z", 9.0, &[]),
            power("m1", "2024-03-31T00:30:00Z", 5.0),
            power("m1", "2024-03-31T00:40:00Z", 20.0),
            power("m1", "2024-03-31T00:50:00Z", 30.0),
        ],
        // Late: a correction and two rows older than their series' newest.
        vec![
            climate("a", "2024-03-31T01:00:00Z", 12.0, &[]),
            climate("b", "2024-03-31T00:30:00Z", 20.0, &[]),
            power("m2", "2024-03-31T00:00:00Z", 0.0),
        ],
        // In memory: one more late row and two new ones.
        vec![
            climate("a", "2024-03-31T04:00:00Z", 18.0, &[hum(40.0)]),
            climate("c", "2024-03-31T22:30:00Z", 11.0, &[]),
            power("m2", "2024-03-31T01:00:00Z", 90.0),
        ],
    ]
}

fn config() -> StoreConfig {
    StoreConfig {
        file_grace: std::time::Duration::ZERO,
        ..StoreConfig::default()
    }
}

fn open(dir: &Path) -> Arc<Store> {
    Arc::new(Store::open(dir, &config()).unwrap().0)
}

fn cases() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    files.iter().flat_map(|f| parse(f)).collect()
}

/// Run every case against `store`; the failures, described.
async fn check(tier: &str, store: &Arc<Store>, cases: &[Case]) -> Vec<String> {
    let engine = QueryEngine::new(Arc::clone(store), QueryConfig::default()).unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let answer = engine.sql(&case.sql).await;
        let problem = match (&case.expect, answer) {
            (Expect::Rows(want), Ok(result)) => {
                let got = render(&result);
                (got != *want)
                    .then(|| format!("expected:\n{}\ngot:\n{}", want.join("\n"), got.join("\n")))
            }
            (Expect::Rows(_), Err(e)) => Some(format!("expected rows, got error: {e}")),
            (Expect::Error(want), Ok(result)) => Some(format!(
                "expected an error containing {want:?}, got rows:\n{}",
                render(&result).join("\n")
            )),
            (Expect::Error(want), Err(e)) => (!e.to_string().contains(want.as_str()))
                .then(|| format!("expected an error containing {want:?}, got: {e}")),
        };
        if let Some(p) = problem {
            failures.push(format!(
                "[{tier}] {}:{} {}\n{}\n{p}\n",
                case.file, case.line, case.name, case.sql
            ));
        }
    }
    failures
}

#[tokio::test]
async fn golden_queries_give_the_same_answers_in_every_tier() {
    let cases = cases();
    let mut failures = Vec::new();

    // Everything in memory, replacements and all.
    let memory = tempfile::tempdir().unwrap();
    let store = open(memory.path());
    for w in writes() {
        store.write(w).await.unwrap();
    }
    assert_eq!(store.stats().files, 0);
    failures.extend(check("memory", &store, &cases).await);
    drop(store);

    // Files, late files and memory (with late rows) at once.
    let tiered = tempfile::tempdir().unwrap();
    let store = open(tiered.path());
    let [first, second, late, last] = writes();
    store.write(first).await.unwrap();
    store.flush().await.unwrap();
    store.write(second).await.unwrap();
    store.flush().await.unwrap();
    let files = store.stats().files;
    store.write(late).await.unwrap();
    store.flush().await.unwrap();
    assert!(
        store.stats().files > files,
        "late rows make files of their own"
    );
    store.write(last).await.unwrap();
    failures.extend(check("files+late+memory", &store, &cases).await);

    // Everything flushed and compacted.
    store.flush().await.unwrap();
    assert!(store.maintain().unwrap() >= 1, "something to compact");
    failures.extend(check("compacted", &store, &cases).await);

    // After a restart, from the files alone.
    let store = Arc::into_inner(store).unwrap();
    store.close();
    drop(store);
    let store = open(tiered.path());
    failures.extend(check("reopened", &store, &cases).await);

    // Every partition in the cold tier, read back through a cache of a few kilobytes.
    let store = Arc::into_inner(store).unwrap();
    store.close();
    drop(store);
    let cold_config = StoreConfig {
        cold_after: std::time::Duration::from_secs(86_400),
        cold_cache_bytes: 4 << 10,
        ..config()
    };
    let store = Arc::new(Store::open(tiered.path(), &cold_config).unwrap().0);
    store.maintain().unwrap();
    let stats = store.stats();
    assert!(
        stats.cold_files > 0 && stats.cold_files == stats.files,
        "{stats:?}"
    );
    failures.extend(check("cold", &store, &cases).await);
    assert!(store.stats().cache_misses > 0);

    assert!(
        failures.is_empty(),
        "{} golden case(s) failed of {} cases × 5 tiers:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_golden_format_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sql");
    std::fs::write(
        &path,
        "# comment\nquery one\nSELECT 1\n  AS x\n----\nx\n1\n\nerror two\nSELECT\n----\nbad thing\n",
    )
    .unwrap();
    let cases = parse(&path);
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].sql, "SELECT 1\n  AS x");
    assert!(matches!(&cases[0].expect, Expect::Rows(r) if r == &["x", "1"]));
    assert_eq!(cases[1].line, 9);
    assert!(matches!(&cases[1].expect, Expect::Error(e) if e == "bad thing"));
    assert_eq!(float(1.0 / 3.0), "0.333333");
    assert_eq!(float(24.0), "24");
    assert_eq!(float(-0.0000001), "0");
}

/// Grafana and pgwire clients send the range as parameters: `$1`/`$2` as strings or as
/// timestamps both work, and so does the same prepared statement for another range.
#[tokio::test]
async fn gap_filling_takes_its_range_from_parameters() {
    use ferrite_query::ScalarValue;
    use futures_util::TryStreamExt;

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for w in writes() {
        store.write(w).await.unwrap();
    }
    let engine = QueryEngine::new(Arc::clone(&store), QueryConfig::default()).unwrap();
    let prepared = engine
        .prepare(
            "SELECT time_bucket_gapfill(INTERVAL '1 hour', time, $1, $2) AS hour, count(*) AS n \
             FROM power WHERE time >= $1 AND time < $2 GROUP BY 1 ORDER BY 1",
        )
        .await
        .unwrap();
    let run = |from: ScalarValue, to: ScalarValue| {
        let (engine, prepared) = (&engine, &prepared);
        async move {
            let stream = engine.execute(prepared, vec![from, to]).await.unwrap();
            let schema = stream.schema();
            let batches: Vec<_> = stream.try_collect().await.unwrap();
            render(&QueryResult { schema, batches })
        }
    };
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_owned()));
    assert_eq!(
        run(text("2024-03-31T00:00:00Z"), text("2024-03-31T03:00:00Z")).await,
        [
            "hour | n",
            "2024-03-31T00:00:00Z | 8",
            "2024-03-31T01:00:00Z | 1",
            "2024-03-31T02:00:00Z | NULL",
        ]
    );
    let ts = |s: &str| ScalarValue::TimestampNanosecond(Some(at(s)), Some("UTC".into()));
    assert_eq!(
        run(ts("2024-03-30T23:00:00Z"), ts("2024-03-31T01:00:00Z")).await,
        [
            "hour | n",
            "2024-03-30T23:00:00Z | NULL",
            "2024-03-31T00:00:00Z | 8",
        ]
    );
}
