//! A table's schema: its tag keys and typed field columns, grown by writes and persisted in
//! the catalog so that type conflicts are caught even after the rows left memory for files.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ferrite_core::decode::PayloadError;
use ferrite_core::{DEVICE_ID_TAG, Measurement, Point, TIME_COLUMN, ValueType};
use serde::{Deserialize, Serialize};

/// Columns of one table, in column order after `time`: tags, then fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct TableSchema {
    /// Tag keys in the order they were first seen; `device_id` first when present.
    pub(crate) tag_keys: Vec<String>,
    /// Field names and types in the order they were first seen.
    pub(crate) fields: Vec<(String, ValueType)>,
    /// Every column by name, for lookups per point without a scan; used when it names every
    /// column (it is rebuilt by the first [`Schemas::admit`] after a load or a construction).
    #[serde(skip)]
    index: std::collections::HashMap<String, Column, foldhash::fast::RandomState>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Column {
    Tag,
    Field(ValueType),
}

impl PartialEq for TableSchema {
    fn eq(&self, other: &Self) -> bool {
        self.tag_keys == other.tag_keys && self.fields == other.fields
    }
}

impl TableSchema {
    /// A schema of these columns.
    pub(crate) fn new(tag_keys: Vec<String>, fields: Vec<(String, ValueType)>) -> Self {
        let mut s = Self {
            tag_keys,
            fields,
            index: Default::default(),
        };
        s.reindex();
        s
    }

    fn indexed(&self) -> bool {
        self.index.len() == self.tag_keys.len() + self.fields.len()
    }

    fn reindex(&mut self) {
        self.index.clear();
        for k in &self.tag_keys {
            self.index.insert(k.clone(), Column::Tag);
        }
        for (n, t) in &self.fields {
            self.index.insert(n.clone(), Column::Field(*t));
        }
    }

    pub(crate) fn field_type(&self, name: &str) -> Option<ValueType> {
        if self.indexed() {
            return match self.index.get(name) {
                Some(Column::Field(t)) => Some(*t),
                _ => None,
            };
        }
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    pub(crate) fn is_tag(&self, name: &str) -> bool {
        if self.indexed() {
            return self.index.get(name) == Some(&Column::Tag);
        }
        self.tag_keys.iter().any(|k| k == name)
    }

    /// Add the columns `point` brings. The caller has checked types with [`Schemas::check`].
    fn extend(&mut self, point: &Point) {
        if self.index.is_empty() {
            self.reindex();
        }
        for key in point.tags.keys() {
            if !self.is_tag(key) {
                if key == DEVICE_ID_TAG {
                    self.tag_keys.insert(0, key.clone());
                } else {
                    self.tag_keys.push(key.clone());
                }
                self.index.insert(key.clone(), Column::Tag);
            }
        }
        for (name, value) in &point.fields {
            if self.field_type(name).is_none() {
                self.fields.push((name.clone(), value.value_type()));
                self.index
                    .insert(name.clone(), Column::Field(value.value_type()));
            }
        }
    }

    /// Whether `point`'s fields have this table's types.
    fn fits(&self, point: &Point) -> bool {
        point
            .fields
            .iter()
            .all(|(n, v)| self.field_type(n).is_none_or(|t| t == v.value_type()))
    }

    /// The Arrow schema: `time` (ns, UTC), tags (UTF-8), fields (typed), all but time nullable.
    pub(crate) fn arrow(&self) -> SchemaRef {
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
            cols.push(Field::new(name, arrow_type(*ty), true));
        }
        Arc::new(Schema::new(cols))
    }
}

/// The Arrow type of a field column.
pub(crate) fn arrow_type(ty: ValueType) -> DataType {
    match ty {
        ValueType::F64 => DataType::Float64,
        ValueType::I64 => DataType::Int64,
        ValueType::Bool => DataType::Boolean,
        ValueType::Str => DataType::Utf8,
        ValueType::U64 => DataType::UInt64,
    }
}

/// Field types decided by writes validated in the current group commit but not yet applied.
/// Whether a checked write brings columns its tables lack (else applying it needs no schema
/// work at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grows(pub(crate) bool);

#[derive(Default)]
pub(crate) struct PendingTypes(BTreeMap<(Measurement, String), ValueType>);

/// The schemas of every table.
#[derive(Clone, Debug, Default)]
pub(crate) struct Schemas {
    pub(crate) tables: BTreeMap<Measurement, TableSchema>,
}

impl Schemas {
    /// Check that every point fits its table's schema (and the types of writes accepted
    /// earlier in the same group commit); on success record the new field types in `pending`.
    pub(crate) fn check(
        &self,
        points: &[Point],
        pending: &mut PendingTypes,
    ) -> Result<Grows, PayloadError> {
        let mut new: Vec<((Measurement, String), ValueType)> = Vec::new();
        let mut grows = Grows(false);
        for p in points {
            let table = self.tables.get(&p.measurement);
            if !grows.0 {
                grows.0 = table.is_none_or(|t| p.tags.keys().any(|k| !t.is_tag(k)));
            }
            for (name, value) in &p.fields {
                let found = value.value_type();
                // The common case, a known field, allocates nothing.
                let (expected, key) = match table.and_then(|t| t.field_type(name)) {
                    Some(t) => (Some(t), None),
                    None => {
                        let key = (p.measurement.clone(), name.clone());
                        let t = pending
                            .0
                            .get(&key)
                            .copied()
                            .or_else(|| new.iter().find(|(k, _)| *k == key).map(|(_, t)| *t));
                        (t, Some(key))
                    }
                };
                match expected {
                    Some(expected) if expected != found => {
                        return Err(PayloadError::TypeConflict {
                            field: name.clone(),
                            expected,
                            found,
                        });
                    }
                    Some(_) => {}
                    None => new.extend(key.as_ref().map(|k| (k.clone(), found))),
                }
                // A field the table does not have yet (even if an earlier write of this
                // group commit brings it).
                grows.0 |= key.is_some();
            }
        }
        pending.0.extend(new);
        Ok(grows)
    }

    /// Grow the schema for `point`; `false` (and nothing changed) if its types conflict, which
    /// only a WAL written by a buggy build can cause.
    pub(crate) fn admit(&mut self, point: &Point) -> bool {
        let table = match self.tables.get_mut(&point.measurement) {
            Some(t) => t,
            None => self.tables.entry(point.measurement.clone()).or_default(),
        };
        if !table.fits(point) {
            return false;
        }
        table.extend(point);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferrite_core::{Timestamp, Value};

    fn point(tags: &[(&str, &str)], fields: Vec<(&str, Value)>) -> Point {
        Point {
            measurement: Measurement::new("m").unwrap(),
            time: Timestamp::from_nanos(1),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    #[test]
    fn device_id_is_the_first_tag_and_columns_keep_first_seen_order() {
        let mut s = Schemas::default();
        assert!(s.admit(&point(&[("site", "a")], vec![("b", Value::F64(1.0))])));
        assert!(s.admit(&point(
            &[("device_id", "d"), ("site", "a")],
            vec![("a", Value::I64(1))]
        )));
        let arrow = s.tables[&Measurement::new("m").unwrap()].arrow();
        let names: Vec<_> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["time", "device_id", "site", "b", "a"]);
    }

    #[test]
    fn conflicts_are_caught_against_stored_and_pending_types() {
        let mut s = Schemas::default();
        assert!(s.admit(&point(&[], vec![("x", Value::F64(1.0))])));
        let mut pending = PendingTypes::default();
        let err = s
            .check(&[point(&[], vec![("x", Value::Bool(true))])], &mut pending)
            .unwrap_err();
        assert!(matches!(err, PayloadError::TypeConflict { .. }));
        s.check(&[point(&[], vec![("y", Value::I64(1))])], &mut pending)
            .unwrap();
        assert!(
            s.check(
                &[point(&[], vec![("y", Value::Str("s".into()))])],
                &mut pending
            )
            .is_err()
        );
        assert!(!s.admit(&point(&[], vec![("x", Value::I64(1))])));
    }
}
