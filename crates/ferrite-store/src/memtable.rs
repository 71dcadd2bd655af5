//! In-memory tables of the points not yet in files: one [`Table`] per measurement, rows keyed
//! by (series, time) so a rewrite of the same series and time replaces the row (last write
//! wins, which makes retried writes idempotent). Also the conversions between rows and Arrow
//! record batches, used for snapshots, flushes and merges.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimestampNanosecondType, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use ferrite_core::{Measurement, Point, TIME_COLUMN, Value, ValueType};

use crate::schema::TableSchema;

/// Rows per record batch built from rows.
const BATCH_ROWS: usize = 8192;

/// A series: its tags in key order.
pub(crate) type SeriesKey = Arc<BTreeMap<String, String>>;
/// A map keyed by series, with a fast hasher (series keys are not attacker-chosen in a way
/// that matters: a device can only make its own series slow).
pub(crate) type SeriesMap<V> = HashMap<SeriesKey, V, foldhash::fast::RandomState>;
/// A row's field values, sorted by name. The names are shared: a table's rows point at one
/// copy of each name (see [`Names`]), so a row costs its values and a pointer per field
/// rather than a map node and a string per field.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Fields(Vec<(Arc<str>, Value)>);

impl Fields {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Set `name` (replacing its value if it has one).
    pub(crate) fn insert(&mut self, name: impl Into<Arc<str>>, value: Value) {
        let name = name.into();
        match self.find(&name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Value)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl<N: Into<Arc<str>>> FromIterator<(N, Value)> for Fields {
    fn from_iter<I: IntoIterator<Item = (N, Value)>>(iter: I) -> Self {
        let mut out = Self::new();
        for (n, v) in iter {
            out.insert(n, v);
        }
        out
    }
}

impl<N: Into<Arc<str>>, const K: usize> From<[(N, Value); K]> for Fields {
    fn from(pairs: [(N, Value); K]) -> Self {
        pairs.into_iter().collect()
    }
}

/// One shared copy of each field name of a table.
#[derive(Default)]
pub(crate) struct Names(std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>);

impl Names {
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&n));
        n
    }

    /// A point's fields (sorted already, as a `BTreeMap`) as a row.
    pub(crate) fn fields(&mut self, fields: BTreeMap<String, Value>) -> Fields {
        let mut out = Vec::with_capacity(fields.len());
        for (n, v) in fields {
            out.push((self.get(&n), v));
        }
        Fields(out)
    }
}
/// A borrowed row: series, time, fields.
pub(crate) type RowRef<'a> = (&'a SeriesKey, i64, &'a Fields);

/// The time partition (start, ns) that `time` falls in.
pub(crate) fn partition_of(time: i64, partition_ns: i64) -> i64 {
    time.div_euclid(partition_ns).saturating_mul(partition_ns)
}

/// One measurement's rows.
///
/// Rows are kept per series (found by hashing its tag map once per row), each series' rows
/// by time; readers get them in (series, time) order by sorting the series, not the rows,
/// so a write costs one hash lookup and an integer-keyed insert however many tags it has.
#[derive(Default)]
pub(crate) struct Table {
    /// Each series (interned: its rows share the tag map) and its rows by time.
    series: SeriesMap<Series>,
    /// Partitions holding rows at or before their series' flushed high-water mark: such a row
    /// may replace one already in a file, so reads of those partitions must merge.
    late_partitions: BTreeSet<i64>,
    /// The field names of the rows.
    names: Names,
}

/// One series' rows, and the flushed high-water mark it had when it first came into this
/// table (looked up once per series, not once per row).
#[derive(Default)]
struct Series {
    rows: BTreeMap<i64, Fields>,
    high_water: Option<i64>,
}

impl Table {
    /// Insert a row; `late` says it may replace a row already in a file of `partition`.
    /// Whether it is a new row (not replacing one of the same series and time).
    pub(crate) fn insert(
        &mut self,
        tags: BTreeMap<String, String>,
        time: i64,
        fields: Fields,
        late: Option<i64>,
    ) -> bool {
        if let Some(partition) = late {
            self.late_partitions.insert(partition);
        }
        let series = match self.series.get_mut(&tags) {
            Some(series) => series,
            None => self.series.entry(Arc::new(tags)).or_default(),
        };
        series.rows.insert(time, fields).is_none()
    }

    /// Insert a point's row, its field names shared with the table's other rows. It is late
    /// (may replace a row already in a file of its partition) if it is at or before its
    /// series' flushed high-water mark, which `high_water` looks up the first time the
    /// series comes into this table. Whether it is a new row.
    pub(crate) fn insert_point(
        &mut self,
        tags: BTreeMap<String, String>,
        time: i64,
        fields: BTreeMap<String, Value>,
        partition_ns: i64,
        high_water: impl FnOnce(&BTreeMap<String, String>) -> Option<i64>,
    ) -> bool {
        let fields = self.names.fields(fields);
        let series = match self.series.get_mut(&tags) {
            Some(series) => series,
            None => {
                let high_water = high_water(&tags);
                self.series.entry(Arc::new(tags)).or_insert(Series {
                    rows: BTreeMap::new(),
                    high_water,
                })
            }
        };
        if series.high_water.is_some_and(|hw| time <= hw) {
            self.late_partitions
                .insert(partition_of(time, partition_ns));
        }
        series.rows.insert(time, fields).is_none()
    }

    pub(crate) fn late_partitions(&self) -> &BTreeSet<i64> {
        &self.late_partitions
    }

    /// The series in tag order, each with its rows.
    fn sorted_series(&self) -> Vec<(&SeriesKey, &BTreeMap<i64, Fields>)> {
        let mut series: Vec<_> = self.series.iter().map(|(k, s)| (k, &s.rows)).collect();
        series.sort_unstable_by(|a, b| a.0.cmp(b.0));
        series
    }

    /// Every row in (series, time) order.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (&SeriesKey, i64, &Fields)> {
        self.sorted_series()
            .into_iter()
            .flat_map(|(s, rows)| rows.iter().map(move |(t, f)| (s, *t, f)))
    }

    /// The rows whose time is in `range`, in (series, time) order, without visiting the
    /// rows of each series outside it.
    pub(crate) fn rows_in(
        &self,
        range: RangeInclusive<i64>,
    ) -> impl Iterator<Item = (&SeriesKey, i64, &Fields)> {
        self.sorted_series()
            .into_iter()
            .flat_map(move |(s, rows)| rows.range(range.clone()).map(move |(t, f)| (s, *t, f)))
    }

    /// The latest row of every series, in no particular order.
    pub(crate) fn last_rows(&self) -> impl Iterator<Item = (&SeriesKey, i64, &Fields)> {
        self.series
            .iter()
            .filter_map(|(s, series)| series.rows.last_key_value().map(|(t, f)| (s, *t, f)))
    }

    /// The latest time of every series.
    pub(crate) fn series_max(&self) -> impl Iterator<Item = (&SeriesKey, i64)> {
        self.series
            .iter()
            .filter_map(|(s, series)| series.rows.last_key_value().map(|(t, _)| (s, *t)))
    }

    /// Add the rows of a record batch (read back from a file): a row replaces any row of the
    /// same series and time already here. Columns are found by name; `schema` says which are
    /// tags and the field types.
    pub(crate) fn insert_batch(
        &mut self,
        schema: &TableSchema,
        batch: &RecordBatch,
    ) -> Result<(), ArrowError> {
        let time = batch
            .column_by_name(TIME_COLUMN)
            .ok_or_else(|| ArrowError::SchemaError("a data file has no time column".into()))?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(|| ArrowError::SchemaError("the time column is not ns".into()))?
            .clone();
        let mut tags = Vec::new();
        for key in &schema.tag_keys {
            if let Some(col) = batch.column_by_name(key) {
                tags.push((key, string_column(col)?));
            }
        }
        let mut fields = Vec::new();
        for (name, ty) in &schema.fields {
            if let Some(col) = batch.column_by_name(name) {
                fields.push((self.names.get(name), *ty, Arc::clone(col)));
            }
        }
        // Files hold rows by series: a row of the same series as the one before shares its
        // tag map, and finds its series by pointer.
        let mut prev: Option<SeriesKey> = None;
        for row in 0..batch.num_rows() {
            let same = prev.as_ref().is_some_and(|p| {
                let mut n = 0;
                tags.iter().all(|(key, col)| {
                    if col.is_valid(row) {
                        n += 1;
                        p.get(*key).is_some_and(|v| v == col.value(row))
                    } else {
                        !p.contains_key(*key)
                    }
                }) && n == p.len()
            });
            let series = match (&prev, same) {
                (Some(p), true) => Arc::clone(p),
                _ => {
                    let mut t = BTreeMap::new();
                    for (key, col) in &tags {
                        if col.is_valid(row) {
                            t.insert((*key).clone(), col.value(row).to_owned());
                        }
                    }
                    match self.series.get_key_value(&t) {
                        Some((k, _)) => Arc::clone(k),
                        None => Arc::new(t),
                    }
                }
            };
            let mut f = Vec::with_capacity(fields.len());
            for (name, ty, col) in &fields {
                if let Some(v) = value_at(col, *ty, row) {
                    f.push((Arc::clone(name), v));
                }
            }
            f.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let entry = match self.series.get_mut(&series) {
                Some(e) => e,
                None => self.series.entry(Arc::clone(&series)).or_default(),
            };
            entry.rows.insert(time.value(row), Fields(f));
            prev = Some(series);
        }
        Ok(())
    }
}

fn string_column(col: &ArrayRef) -> Result<arrow::array::StringArray, ArrowError> {
    match col.data_type() {
        DataType::Utf8 => Ok(col.as_string::<i32>().clone()),
        _ => arrow::compute::cast(col, &DataType::Utf8).map(|a| a.as_string::<i32>().clone()),
    }
}

fn value_at(col: &ArrayRef, ty: ValueType, row: usize) -> Option<Value> {
    if col.is_null(row) {
        return None;
    }
    Some(match ty {
        ValueType::F64 => Value::F64(col.as_primitive_opt::<Float64Type>()?.value(row)),
        ValueType::I64 => Value::I64(col.as_primitive_opt::<Int64Type>()?.value(row)),
        ValueType::U64 => Value::U64(col.as_primitive_opt::<UInt64Type>()?.value(row)),
        ValueType::Bool => Value::Bool(col.as_boolean_opt()?.value(row)),
        ValueType::Str => Value::Str(col.as_string_opt::<i32>()?.value(row).to_owned()),
    })
}

/// Build record batches of `schema` from rows given in the order they should appear.
pub(crate) fn build_batches<'a>(
    schema: &TableSchema,
    arrow: &SchemaRef,
    rows: impl Iterator<Item = (&'a SeriesKey, i64, &'a Fields)>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut batches = Vec::new();
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(BATCH_ROWS).collect();
        batches.push(chunk_batch(schema, arrow, &chunk)?);
    }
    Ok(batches)
}

fn chunk_batch(
    schema: &TableSchema,
    arrow: &SchemaRef,
    chunk: &[(&SeriesKey, i64, &Fields)],
) -> Result<RecordBatch, ArrowError> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(arrow.fields().len());
    let mut time = TimestampNanosecondBuilder::with_capacity(chunk.len()).with_timezone("UTC");
    for (_, t, _) in chunk {
        time.append_value(*t);
    }
    cols.push(Arc::new(time.finish()));
    for key in &schema.tag_keys {
        let mut b = StringBuilder::with_capacity(chunk.len(), chunk.len() * 8);
        // Rows come by series: look the tag up once per run of one series' rows.
        let mut last: Option<(&SeriesKey, Option<&String>)> = None;
        for (tags, _, _) in chunk {
            let value = match last {
                Some((s, v)) if Arc::ptr_eq(s, tags) => v,
                _ => {
                    let v = tags.get(key);
                    last = Some((tags, v));
                    v
                }
            };
            b.append_option(value);
        }
        cols.push(Arc::new(b.finish()));
    }
    for (name, ty) in &schema.fields {
        let col: ArrayRef = match ty {
            ValueType::F64 => {
                let mut b = Float64Builder::with_capacity(chunk.len());
                for (_, _, f) in chunk {
                    b.append_option(match f.get(name) {
                        Some(Value::F64(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ValueType::I64 => {
                let mut b = Int64Builder::with_capacity(chunk.len());
                for (_, _, f) in chunk {
                    b.append_option(match f.get(name) {
                        Some(Value::I64(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ValueType::U64 => {
                let mut b = UInt64Builder::with_capacity(chunk.len());
                for (_, _, f) in chunk {
                    b.append_option(match f.get(name) {
                        Some(Value::U64(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ValueType::Bool => {
                let mut b = BooleanBuilder::with_capacity(chunk.len());
                for (_, _, f) in chunk {
                    b.append_option(match f.get(name) {
                        Some(Value::Bool(v)) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            ValueType::Str => {
                let mut b = StringBuilder::new();
                for (_, _, f) in chunk {
                    b.append_option(match f.get(name) {
                        Some(Value::Str(v)) => Some(v.as_str()),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
        };
        cols.push(col);
    }
    RecordBatch::try_new(Arc::clone(arrow), cols)
}

/// The rows of every table not yet in files.
#[derive(Default)]
pub(crate) struct Memtables {
    pub(crate) tables: BTreeMap<Measurement, Table>,
    rows: usize,
}

impl Memtables {
    /// Insert a point whose schema was admitted; `high_water` looks up its series' flushed
    /// high-water mark (see [`Table::insert_point`]).
    pub(crate) fn insert(
        &mut self,
        p: Point,
        partition_ns: i64,
        high_water: impl FnOnce(&Measurement, &BTreeMap<String, String>) -> Option<i64>,
    ) {
        let table = match self.tables.get_mut(&p.measurement) {
            Some(t) => t,
            None => self.tables.entry(p.measurement.clone()).or_default(),
        };
        let m = &p.measurement;
        if table.insert_point(p.tags, p.time.as_nanos(), p.fields, partition_ns, |tags| {
            high_water(m, tags)
        }) {
            self.rows += 1;
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows == 0
    }
}
