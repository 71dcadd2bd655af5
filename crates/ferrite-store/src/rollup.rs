//! Downsampling: rollup tables the store maintains at every flush.
//!
//! `[store.tables.<t>] rollups = ["1m", "1h"]` gives table `t` a table per interval,
//! `<t>_1m` and `<t>_1h`, with one row per series and bucket (`time` is the bucket's start,
//! aligned to the Unix epoch; the bucket is `[time, time + interval)`) and, for every field
//! `f` of `t`:
//!
//! - numeric fields (f64, i64, u64): `f_count` (u64), `f_sum` and `f_mean` (f64), `f_min`,
//!   `f_max` and `f_last` (the field's type);
//! - bool and string fields: `f_count` and `f_last`.
//!
//! They are ordinary tables for readers (SQL, `latest.*`, export, retention of their own by
//! `[store.tables.<t>_1m] retention`), but only the store writes them: a write to one is
//! refused.
//!
//! # How they stay exact
//!
//! A flush writes its rollup rows into files of the rollup tables in the same catalog commit
//! as the raw files, so a crash leaves both or neither. For a bucket, the rollup row must
//! summarise every stored raw row of the bucket after last-write-wins:
//!
//! - A *plain* raw row (newer than its series' high-water mark) replaces no stored row, and
//!   the only stored rollup row of its series that its bucket can share is the series' latest
//!   one (every stored row of the series is at or before the high-water mark). So the flush
//!   merges its plain rows' aggregates into that latest rollup row (the latest-row index holds
//!   it) — or starts a new one — without reading any raw file.
//! - A *late* raw row may replace a stored one (a retry, a correction), so the buckets late
//!   rows touch are computed again from the raw files and the flushed rows. Buckets of raw
//!   partitions retention has dropped are left as they are.
//!
//! The new row replaces the old by last-write-wins (it lands in a late file of the rollup
//! table when the rollup table already has a row at or after its time). The latest-row index
//! must agree with the rollup files it is merged with: it records the flush it was written
//! by, and where it is ahead of the catalog (a crash between the two) [`crate::Store::open`]
//! rebuilds the rollup tables' entries from their files.
//!
//! Rows still in memory are not in the rollups yet: a rollup is as recent as the last flush
//! (`store.flush_interval`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferrite_core::{Measurement, Value, ValueType};

use crate::catalog::DataFile;
use crate::error::StoreError;
use crate::memtable::{Fields, SeriesKey, Table};
use crate::schema::TableSchema;

/// One rollup of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Bucket width (ns).
    pub(crate) interval_ns: i64,
    /// The rollup table.
    pub(crate) name: Measurement,
}

/// The table-name suffix of a rollup interval: `30s`, `1m`, `1h`, `1d`.
pub(crate) fn suffix(interval: Duration) -> String {
    let s = interval.as_secs();
    match s {
        _ if s > 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s > 0 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// The rollup table's name for `table` and `interval`, if it is a valid table name.
pub(crate) fn table_name(table: &str, interval: Duration) -> Option<Measurement> {
    Measurement::new(format!("{table}_{}", suffix(interval))).ok()
}

/// Parse a configured interval (`"1m"`, `"1h"`, humantime syntax).
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Whether a field type gets sum, mean, min and max.
fn numeric(ty: ValueType) -> bool {
    matches!(ty, ValueType::F64 | ValueType::I64 | ValueType::U64)
}

/// The rollup table's columns for a raw table's.
pub(crate) fn schema_of(raw: &TableSchema) -> TableSchema {
    let mut fields = Vec::new();
    for (name, ty) in &raw.fields {
        fields.push((format!("{name}_count"), ValueType::U64));
        if numeric(*ty) {
            fields.push((format!("{name}_sum"), ValueType::F64));
            fields.push((format!("{name}_mean"), ValueType::F64));
            fields.push((format!("{name}_min"), *ty));
            fields.push((format!("{name}_max"), *ty));
        }
        fields.push((format!("{name}_last"), *ty));
    }
    TableSchema::new(raw.tag_keys.clone(), fields)
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F64(x) => Some(*x),
        #[allow(clippy::cast_precision_loss)]
        Value::I64(x) => Some(*x as f64),
        #[allow(clippy::cast_precision_loss)]
        Value::U64(x) => Some(*x as f64),
        Value::Bool(_) | Value::Str(_) => None,
    }
}

/// `a < b` for two numeric values of one field (NaN is never smaller or larger).
fn less(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F64(x), Value::F64(y)) => x < y,
        (Value::I64(x), Value::I64(y)) => x < y,
        (Value::U64(x), Value::U64(y)) => x < y,
        _ => false,
    }
}

/// The summary of one field's values in one bucket.
#[derive(Clone, Debug, PartialEq)]
struct FieldAgg {
    count: u64,
    /// Numeric fields only.
    sum: f64,
    min: Option<Value>,
    max: Option<Value>,
    /// The value of the bucket's latest row that has the field.
    last: Value,
}

impl FieldAgg {
    fn new(v: &Value) -> Self {
        let num = as_f64(v);
        Self {
            count: 1,
            sum: num.unwrap_or(0.0),
            min: num.map(|_| v.clone()),
            max: num.map(|_| v.clone()),
            last: v.clone(),
        }
    }

    /// Add the value of a row later than every row summarised so far.
    fn add(&mut self, v: &Value) {
        self.merge_later(&Self::new(v));
    }

    /// Merge the summary of rows later than every row summarised here.
    fn merge_later(&mut self, later: &Self) {
        self.count += later.count;
        self.sum += later.sum;
        if let Some(m) = &later.min
            && self.min.as_ref().is_none_or(|cur| less(m, cur))
        {
            self.min = Some(m.clone());
        }
        if let Some(m) = &later.max
            && self.max.as_ref().is_none_or(|cur| less(cur, m))
        {
            self.max = Some(m.clone());
        }
        self.last = later.last.clone();
    }

    /// Read back the summary of field `name` from a stored rollup row.
    fn from_row(name: &str, ty: ValueType, row: &Fields) -> Option<Self> {
        let count = match row.get(&format!("{name}_count"))? {
            Value::U64(n) => *n,
            _ => return None,
        };
        let last = row.get(&format!("{name}_last"))?.clone();
        let (sum, min, max) = if numeric(ty) {
            let sum = match row.get(&format!("{name}_sum")) {
                Some(Value::F64(s)) => *s,
                _ => return None,
            };
            (
                sum,
                row.get(&format!("{name}_min")).cloned(),
                row.get(&format!("{name}_max")).cloned(),
            )
        } else {
            (0.0, None, None)
        };
        Some(Self {
            count,
            sum,
            min,
            max,
            last,
        })
    }

    fn write(&self, name: &str, ty: ValueType, out: &mut Fields) {
        out.insert(format!("{name}_count"), Value::U64(self.count));
        if numeric(ty) {
            out.insert(format!("{name}_sum"), Value::F64(self.sum));
            #[allow(clippy::cast_precision_loss)]
            let mean = self.sum / self.count.max(1) as f64;
            out.insert(format!("{name}_mean"), Value::F64(mean));
            if let Some(m) = &self.min {
                out.insert(format!("{name}_min"), m.clone());
            }
            if let Some(m) = &self.max {
                out.insert(format!("{name}_max"), m.clone());
            }
        }
        out.insert(format!("{name}_last"), self.last.clone());
    }
}

/// Per field, the summary of one series' rows in one bucket.
type Bucket = BTreeMap<std::sync::Arc<str>, FieldAgg>;
/// Buckets by series and start.
type Buckets = BTreeMap<(SeriesKey, i64), Bucket>;

/// The bucket (start, ns) of `time`.
fn bucket_of(time: i64, interval_ns: i64) -> i64 {
    time.div_euclid(interval_ns).saturating_mul(interval_ns)
}

/// Summarise rows given in (series, time) order into buckets.
fn aggregate<'a>(
    rows: impl Iterator<Item = (&'a SeriesKey, i64, &'a Fields)>,
    interval_ns: i64,
    out: &mut Buckets,
) {
    for (series, time, fields) in rows {
        let bucket = out
            .entry((SeriesKey::clone(series), bucket_of(time, interval_ns)))
            .or_default();
        for (name, v) in fields.iter() {
            match bucket.get_mut(&**name) {
                Some(agg) => agg.add(v),
                None => {
                    bucket.insert(std::sync::Arc::clone(name), FieldAgg::new(v));
                }
            }
        }
    }
}

fn to_fields(bucket: &Bucket, raw: &TableSchema) -> Fields {
    let mut out = Fields::new();
    for (name, agg) in bucket {
        if let Some(ty) = raw.field_type(name) {
            agg.write(name, ty, &mut out);
        }
    }
    out
}

/// What a flush needs to compute one raw table's rollup rows.
pub(crate) struct Input<'a> {
    /// The raw table's schema.
    pub(crate) raw: &'a TableSchema,
    /// The frozen rows of the table being flushed.
    pub(crate) frozen: &'a Table,
    /// Each series' high-water mark before this flush's rows (a row at or before it is late).
    pub(crate) high_water_before: Option<&'a crate::memtable::SeriesMap<i64>>,
    /// The raw table's data files in the catalog (not this flush's).
    pub(crate) files: Vec<std::sync::Arc<DataFile>>,
    /// Reads them, wherever they are.
    pub(crate) tier: &'a crate::cold::Tier,
    /// Raw rows before this time are gone (retention): their buckets are left alone.
    pub(crate) retained_from: i64,
    /// The rollups and, for each, the latest row of every series of the rollup table.
    pub(crate) rollups: Vec<(
        Spec,
        Option<&'a crate::memtable::SeriesMap<crate::latest::LatestRow>>,
    )>,
}

/// The rollup rows one flush brings for one raw table: per rollup table, its schema and its
/// new or replaced rows.
pub(crate) fn rows_for_flush(
    input: &Input<'_>,
) -> Result<Vec<(Measurement, TableSchema, Table)>, StoreError> {
    let is_late = |series: &SeriesKey, time: i64| {
        input
            .high_water_before
            .and_then(|b| b.get(series))
            .is_some_and(|hw| time <= *hw)
    };
    // Buckets late rows touch, per rollup: computed again from the raw data.
    let mut late: Vec<BTreeSet<(SeriesKey, i64)>> = vec![BTreeSet::new(); input.rollups.len()];
    for (series, time, _) in input.frozen.rows() {
        if is_late(series, time) {
            for (i, (spec, _)) in input.rollups.iter().enumerate() {
                let bucket = bucket_of(time, spec.interval_ns);
                if bucket.saturating_add(spec.interval_ns) > input.retained_from {
                    late[i].insert((SeriesKey::clone(series), bucket));
                }
            }
        }
    }
    let recomputed = recompute(input, &late)?;
    let schema = schema_of(input.raw);
    let mut out = Vec::new();
    for (i, (spec, latest)) in input.rollups.iter().enumerate() {
        let mut plain = BTreeMap::new();
        aggregate(
            input.frozen.rows().filter(|(s, t, _)| !is_late(s, *t)),
            spec.interval_ns,
            &mut plain,
        );
        let mut rows = Table::default();
        for ((series, bucket), mut aggs) in plain {
            if late[i].contains(&(SeriesKey::clone(&series), bucket)) {
                continue;
            }
            // The series' latest stored rollup row is the only one this bucket can share.
            if let Some(row) = latest.and_then(|l| l.get(&series))
                && row.0 == bucket
            {
                let mut merged = Bucket::new();
                for (name, ty) in &input.raw.fields {
                    let base = FieldAgg::from_row(name, *ty, &row.1);
                    let new = aggs.remove(name.as_str());
                    let agg = match (base, new) {
                        (Some(mut b), Some(n)) => {
                            b.merge_later(&n);
                            b
                        }
                        (Some(b), None) => b,
                        (None, Some(n)) => n,
                        (None, None) => continue,
                    };
                    merged.insert(std::sync::Arc::from(name.as_str()), agg);
                }
                aggs = merged;
            }
            rows.insert((*series).clone(), bucket, to_fields(&aggs, input.raw), None);
        }
        for ((series, bucket), aggs) in &recomputed[i] {
            rows.insert(
                (**series).clone(),
                *bucket,
                to_fields(aggs, input.raw),
                None,
            );
        }
        out.push((spec.name.clone(), schema.clone(), rows));
    }
    Ok(out)
}

/// The buckets late rows touched, summarised from every stored raw row in them (files read
/// oldest flush first, then this flush's rows).
fn recompute(
    input: &Input<'_>,
    late: &[BTreeSet<(SeriesKey, i64)>],
) -> Result<Vec<Buckets>, StoreError> {
    let mut out = vec![BTreeMap::new(); late.len()];
    let mut lo = i64::MAX;
    let mut hi = i64::MIN;
    let mut series: BTreeSet<&SeriesKey> = BTreeSet::new();
    for (set, (spec, _)) in late.iter().zip(&input.rollups) {
        for (s, bucket) in set {
            lo = lo.min(*bucket);
            hi = hi.max(bucket.saturating_add(spec.interval_ns - 1));
            series.insert(s);
        }
    }
    if series.is_empty() {
        return Ok(out);
    }
    let mut files: Vec<_> = input
        .files
        .iter()
        .filter(|f| f.meta.max_time >= lo && f.meta.min_time <= hi)
        .collect();
    files.sort_by_key(|f| f.meta.seq);
    let mut raw = Table::default();
    for f in files {
        // One file's rows at a time; only the series and times the late rows touch stay.
        let mut rows = Table::default();
        for b in input.tier.read(f)? {
            rows.insert_batch(input.raw, &b)
                .map_err(|e| StoreError::Encode(e.to_string()))?;
        }
        for (s, time, fields) in rows.rows_in(lo..=hi) {
            if series.contains(s) {
                raw.insert((**s).clone(), time, fields.clone(), None);
            }
        }
    }
    for (s, time, fields) in input.frozen.rows_in(lo..=hi) {
        if series.contains(s) {
            raw.insert((**s).clone(), time, fields.clone(), None);
        }
    }
    for (i, (set, (spec, _))) in late.iter().zip(&input.rollups).enumerate() {
        let mut all = BTreeMap::new();
        aggregate(
            raw.rows_in(lo..=hi).filter(|(s, t, _)| {
                set.contains(&(SeriesKey::clone(s), bucket_of(*t, spec.interval_ns)))
            }),
            spec.interval_ns,
            &mut all,
        );
        out[i] = all;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_name_the_interval_in_its_largest_whole_unit() {
        assert_eq!(suffix(Duration::from_secs(30)), "30s");
        assert_eq!(suffix(Duration::from_secs(60)), "1m");
        assert_eq!(suffix(Duration::from_secs(90)), "90s");
        assert_eq!(suffix(Duration::from_secs(900)), "15m");
        assert_eq!(suffix(Duration::from_secs(3600)), "1h");
        assert_eq!(suffix(Duration::from_secs(86_400)), "1d");
        assert_eq!(
            table_name("readings", Duration::from_secs(60))
                .unwrap()
                .as_str(),
            "readings_1m"
        );
    }

    #[test]
    fn merging_later_summaries_equals_summarising_all_values() {
        let values = [3.5, -1.0, 7.25, 7.25, 0.0];
        let mut all = FieldAgg::new(&Value::F64(values[0]));
        for v in &values[1..] {
            all.add(&Value::F64(*v));
        }
        let mut first = FieldAgg::new(&Value::F64(values[0]));
        first.add(&Value::F64(values[1]));
        let mut second = FieldAgg::new(&Value::F64(values[2]));
        for v in &values[3..] {
            second.add(&Value::F64(*v));
        }
        first.merge_later(&second);
        assert_eq!(first, all);
        assert_eq!(all.count, 5);
        assert_eq!(all.min, Some(Value::F64(-1.0)));
        assert_eq!(all.max, Some(Value::F64(7.25)));
        assert_eq!(all.last, Value::F64(0.0));
        // And a summary survives being written as a row and read back.
        let mut row = Fields::new();
        all.write("v", ValueType::F64, &mut row);
        assert_eq!(row.get("v_mean"), Some(&Value::F64(17.0 / 5.0)));
        assert_eq!(FieldAgg::from_row("v", ValueType::F64, &row).unwrap(), all);
        let mut s = FieldAgg::new(&Value::Str("a".into()));
        s.add(&Value::Str("b".into()));
        let mut row = Fields::new();
        s.write("state", ValueType::Str, &mut row);
        assert_eq!(row.len(), 2);
        assert_eq!(
            FieldAgg::from_row("state", ValueType::Str, &row).unwrap(),
            s
        );
    }
}
