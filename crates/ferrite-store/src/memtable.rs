//! In-memory tables of the points not yet in files: one [`Table`] per measurement, rows keyed
//! by (series, time) so a rewrite of the same series and time replaces the row (last write
//! wins, which makes retried writes idempotent).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use ferrite_core::decode::PayloadError;
use ferrite_core::{DEVICE_ID_TAG, Measurement, Point, TIME_COLUMN, Value, ValueType};

/// Rows per record batch in a snapshot.
const BATCH_ROWS: usize = 8192;

/// A row's identity: its tags in key order (the series) and its time.
type RowKey = (Arc<BTreeMap<String, String>>, i64);

/// One measurement's rows and schema.
#[derive(Default)]
pub(crate) struct Table {
    /// Tag keys in the order they were first seen; `device_id` first when present.
    tag_keys: Vec<String>,
    /// Field names and types in the order they were first seen.
    fields: Vec<(String, ValueType)>,
    field_types: HashMap<String, ValueType>,
    rows: BTreeMap<RowKey, BTreeMap<String, Value>>,
    /// Interned series so rows of one series share their tag map.
    series: HashMap<Arc<BTreeMap<String, String>>, ()>,
}

impl Table {
    fn insert(&mut self, point: Point) {
        for key in point.tags.keys() {
            if !self.tag_keys.iter().any(|k| k == key) {
                if key == DEVICE_ID_TAG {
                    self.tag_keys.insert(0, key.clone());
                } else {
                    self.tag_keys.push(key.clone());
                }
            }
        }
        for (name, value) in &point.fields {
            if !self.field_types.contains_key(name) {
                self.field_types.insert(name.clone(), value.value_type());
                self.fields.push((name.clone(), value.value_type()));
            }
        }
        let tags = match self.series.get_key_value(&point.tags) {
            Some((k, ())) => Arc::clone(k),
            None => {
                let k = Arc::new(point.tags);
                self.series.insert(Arc::clone(&k), ());
                k
            }
        };
        self.rows
            .insert((tags, point.time.as_nanos()), point.fields);
    }

    fn schema(&self) -> SchemaRef {
        let mut cols = Vec::with_capacity(1 + self.tag_keys.len() + self.fields.len());
        cols.push(Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ));
        for k in &self.tag_keys {
            cols.push(Field::new(k, DataType::Utf8, true));
        }
        for (name, ty) in &self.fields {
            let dt = match ty {
                ValueType::F64 => DataType::Float64,
                ValueType::I64 => DataType::Int64,
                ValueType::Bool => DataType::Boolean,
                ValueType::Str => DataType::Utf8,
                ValueType::U64 => DataType::UInt64,
            };
            cols.push(Field::new(name, dt, true));
        }
        Arc::new(Schema::new(cols))
    }

    /// The rows as Arrow record batches, sorted by series then time.
    fn to_batches(&self) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
        let schema = self.schema();
        let mut batches = Vec::with_capacity(self.rows.len().div_ceil(BATCH_ROWS));
        let mut rows = self.rows.iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(BATCH_ROWS).collect();
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
            let mut time =
                TimestampNanosecondBuilder::with_capacity(chunk.len()).with_timezone("UTC");
            for ((_, t), _) in &chunk {
                time.append_value(*t);
            }
            cols.push(Arc::new(time.finish()));
            for key in &self.tag_keys {
                let mut b = StringBuilder::with_capacity(chunk.len(), chunk.len() * 8);
                for ((tags, _), _) in &chunk {
                    b.append_option(tags.get(key));
                }
                cols.push(Arc::new(b.finish()));
            }
            for (name, ty) in &self.fields {
                let col: ArrayRef = match ty {
                    ValueType::F64 => {
                        let mut b = Float64Builder::with_capacity(chunk.len());
                        for (_, f) in &chunk {
                            b.append_option(match f.get(name) {
                                Some(Value::F64(v)) => Some(*v),
                                _ => None,
                            });
                        }
                        Arc::new(b.finish())
                    }
                    ValueType::I64 => {
                        let mut b = Int64Builder::with_capacity(chunk.len());
                        for (_, f) in &chunk {
                            b.append_option(match f.get(name) {
                                Some(Value::I64(v)) => Some(*v),
                                _ => None,
                            });
                        }
                        Arc::new(b.finish())
                    }
                    ValueType::U64 => {
                        let mut b = UInt64Builder::with_capacity(chunk.len());
                        for (_, f) in &chunk {
                            b.append_option(match f.get(name) {
                                Some(Value::U64(v)) => Some(*v),
                                _ => None,
                            });
                        }
                        Arc::new(b.finish())
                    }
                    ValueType::Bool => {
                        let mut b = BooleanBuilder::with_capacity(chunk.len());
                        for (_, f) in &chunk {
                            b.append_option(match f.get(name) {
                                Some(Value::Bool(v)) => Some(*v),
                                _ => None,
                            });
                        }
                        Arc::new(b.finish())
                    }
                    ValueType::Str => {
                        let mut b = StringBuilder::new();
                        for (_, f) in &chunk {
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
            batches.push(RecordBatch::try_new(Arc::clone(&schema), cols)?);
        }
        Ok((schema, batches))
    }
}

/// Field types decided by writes validated in the current group commit but not yet applied.
#[derive(Default)]
pub(crate) struct PendingTypes(HashMap<(Measurement, String), ValueType>);

/// All memtables.
#[derive(Default)]
pub(crate) struct Memtables {
    tables: BTreeMap<Measurement, Table>,
    rows: usize,
}

impl Memtables {
    /// Check that every point fits its table's schema (and the types of writes accepted
    /// earlier in the same group commit); on success record the new field types in `pending`.
    pub(crate) fn check(
        &self,
        points: &[Point],
        pending: &mut PendingTypes,
    ) -> Result<(), PayloadError> {
        let mut new = Vec::new();
        for p in points {
            let table = self.tables.get(&p.measurement);
            for (name, value) in &p.fields {
                let found = value.value_type();
                let key = (p.measurement.clone(), name.clone());
                let expected = table
                    .and_then(|t| t.field_types.get(name).copied())
                    .or_else(|| pending.0.get(&key).copied())
                    .or_else(|| new.iter().find(|(k, _)| *k == key).map(|(_, t)| *t));
                match expected {
                    Some(expected) if expected != found => {
                        return Err(PayloadError::TypeConflict {
                            field: name.clone(),
                            expected,
                            found,
                        });
                    }
                    Some(_) => {}
                    None => new.push((key, found)),
                }
            }
        }
        pending.0.extend(new);
        Ok(())
    }

    /// Insert points that passed [`Memtables::check`]. A point that does not fit (possible
    /// only in a WAL written by a buggy build) is skipped and reported.
    pub(crate) fn apply(&mut self, points: Vec<Point>) {
        for p in points {
            let fits = self.tables.get(&p.measurement).is_none_or(|t| {
                p.fields
                    .iter()
                    .all(|(n, v)| t.field_types.get(n).is_none_or(|ty| *ty == v.value_type()))
            });
            if !fits {
                tracing::error!(measurement = %p.measurement, "point conflicts with its table's schema; skipped");
                continue;
            }
            let table = self.tables.entry(p.measurement.clone()).or_default();
            let before = table.rows.len();
            table.insert(p);
            self.rows += table.rows.len() - before;
        }
    }

    pub(crate) fn table_names(&self) -> Vec<String> {
        self.tables.keys().map(|m| m.as_str().to_owned()).collect()
    }

    pub(crate) fn schema(&self, table: &str) -> Option<SchemaRef> {
        let m = Measurement::new(table).ok()?;
        self.tables.get(&m).map(Table::schema)
    }

    pub(crate) fn snapshot(
        &self,
        table: &str,
    ) -> Option<Result<(SchemaRef, Vec<RecordBatch>), ArrowError>> {
        let m = Measurement::new(table).ok()?;
        self.tables.get(&m).map(Table::to_batches)
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }
}
