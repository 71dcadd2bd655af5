//! The latest row of every series: what a dashboard's "current value" or a fleet's "last known
//! position" asks for, answered in time proportional to the number of series, not the rows
//! stored (SQL: `latest.{table}`).
//!
//! The index holds, per table and series, the row with the greatest time among the rows in
//! data files; [`crate::Store::latest`] lays the memtables' latest rows over it. A flush merges
//! the frozen memtables' latest rows into a new index and writes it to `latest.bin` *before*
//! the catalog that names the flushed files, so the index on disk never lags the files. After
//! a crash between the two it is ahead of the catalog, which is harmless: those rows are still
//! in the WAL, come back on replay, and a row replayed at the same series and time wins over
//! the index. Retention and compaction change files, not the index: an entry counts only while
//! a file of its table spans its time (a dropped partition takes its entries with it), and the
//! next flush leaves the others out. Without a readable `latest.bin` (a store from before it,
//! or a damaged file) [`crate::Store::open`] rebuilds the index from the data files.
//!
//! The index also records the flush that wrote it, so [`crate::Store::open`] can tell when it
//! is ahead of the catalog; rollup tables need their entries to match the files exactly (see
//! `rollup`), so theirs are then read again from the files.
//!
//! # Format, version 2
//!
//! ```text
//! latest.bin : "FLST" | version: u16 LE = 2 | reserved: u16 = 0 | len: u32 LE | crc32: u32 LE
//!              | payload: postcard(IndexData { flush_seq: u64, tables: Vec<TableData> })
//! ```
//!
//! A version 1 file (no flush sequence) is not read: the index is rebuilt from the files.
//!
//! Written and replaced atomically like the catalog (`framed`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use ferrite_core::{Measurement, Value};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, DataFile};
use crate::error::StoreError;
use crate::framed::Format;
use crate::memtable::{Fields, SeriesMap, Table};
use crate::schema::Schemas;

const FORMAT: Format = Format {
    magic: b"FLST",
    version: 2,
    what: "latest-row index",
};
const FILE_NAME: &str = "latest.bin";

/// A series' latest row: its time and fields, shared between index generations.
pub(crate) type LatestRow = Arc<(i64, Fields)>;

/// The latest row of every series whose rows reached a data file, per table.
#[derive(Debug, Default, Clone)]
pub(crate) struct LatestIndex {
    pub(crate) tables: BTreeMap<Measurement, SeriesMap<LatestRow>>,
    /// Sequence of the flush whose files this index includes.
    pub(crate) flush_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct IndexData {
    flush_seq: u64,
    tables: Vec<TableData>,
}

#[derive(Serialize, Deserialize)]
struct TableData {
    name: String,
    rows: Vec<RowData>,
}

#[derive(Serialize, Deserialize)]
struct RowData {
    tags: Vec<(String, String)>,
    time: i64,
    fields: Vec<(String, Value)>,
}

/// Which times a table's files span: an entry outside every file's span belongs to data that
/// retention dropped.
pub(crate) struct Coverage {
    /// (min_time, greatest max_time of this and every earlier span), by min_time.
    spans: Vec<(i64, i64)>,
}

impl Coverage {
    pub(crate) fn new(spans: impl Iterator<Item = (i64, i64)>) -> Self {
        let mut spans: Vec<(i64, i64)> = spans.collect();
        spans.sort_unstable();
        let mut reach = i64::MIN;
        for s in &mut spans {
            reach = reach.max(s.1);
            s.1 = reach;
        }
        Self { spans }
    }

    pub(crate) fn of_files(files: &[Arc<DataFile>]) -> Self {
        Self::new(files.iter().map(|f| (f.meta.min_time, f.meta.max_time)))
    }

    /// Whether some span holds `time`: the spans starting at or before it reach it.
    pub(crate) fn covers(&self, time: i64) -> bool {
        let n = self.spans.partition_point(|(min, _)| *min <= time);
        n > 0 && self.spans[n - 1].1 >= time
    }
}

impl LatestIndex {
    /// Take the latest row of each series of `table` where it is at least as new as the
    /// index's (rows merged later are newer writes, so they win at equal times).
    pub(crate) fn merge(&mut self, name: &Measurement, table: &Table) {
        let index = self.tables.entry(name.clone()).or_default();
        for (series, time, fields) in table.last_rows() {
            match index.get(series) {
                Some(row) if row.0 > time => {}
                _ => {
                    index.insert(Arc::clone(series), Arc::new((time, fields.clone())));
                }
            }
        }
    }

    /// Keep only the entries some file of their table spans.
    pub(crate) fn retain_covered(&mut self, coverage: &BTreeMap<Measurement, Coverage>) {
        self.tables.retain(|name, index| {
            let Some(cover) = coverage.get(name) else {
                return false;
            };
            index.retain(|_, row| cover.covers(row.0));
            !index.is_empty()
        });
    }

    /// Read `latest.bin`; `None` if there is none or it cannot be read (reported), in which
    /// case the caller rebuilds the index from the files.
    pub(crate) fn load(root: &Path) -> Option<Self> {
        let path = root.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the latest-row index; rebuilding it from the data files");
                return None;
            }
        };
        match decode(&bytes) {
            Ok(index) => Some(index),
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "the latest-row index is unreadable; rebuilding it from the data files");
                None
            }
        }
    }

    /// Write the index durably (see the module docs).
    pub(crate) fn save(&self, root: &Path) -> Result<(), StoreError> {
        let tables: Vec<TableData> = self
            .tables
            .iter()
            .map(|(name, index)| TableData {
                name: name.as_str().to_owned(),
                rows: index
                    .iter()
                    .map(|(series, row)| RowData {
                        tags: series.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        time: row.0,
                        fields: row
                            .1
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        let data = IndexData {
            flush_seq: self.flush_seq,
            tables,
        };
        FORMAT.write(root, FILE_NAME, &data)
    }

    /// Build the index by reading every data file, oldest flush first (so at equal times the
    /// row that wins in queries wins here too). One file's rows are in memory at a time.
    pub(crate) fn rebuild(
        catalog: &Catalog,
        schemas: &Schemas,
        tier: &crate::cold::Tier,
    ) -> Result<Self, StoreError> {
        let mut index = Self::default();
        let all: Vec<Measurement> = catalog.tables.keys().cloned().collect();
        index.rebuild_tables(catalog, schemas, tier, &all)?;
        Ok(index)
    }

    /// Replace the entries of the tables `names` by what their data files hold.
    pub(crate) fn rebuild_tables(
        &mut self,
        catalog: &Catalog,
        schemas: &Schemas,
        tier: &crate::cold::Tier,
        names: &[Measurement],
    ) -> Result<(), StoreError> {
        let index = self;
        for name in names {
            index.tables.remove(name);
            let (Some(t), Some(schema)) = (catalog.tables.get(name), schemas.tables.get(name))
            else {
                continue;
            };
            let mut files = t.files.clone();
            files.sort_by_key(|f| f.meta.seq);
            for f in &files {
                let mut rows = Table::default();
                for b in tier.read(f)? {
                    rows.insert_batch(schema, &b)
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                }
                index.merge(name, &rows);
            }
        }
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<LatestIndex, String> {
    let payload = FORMAT.payload(bytes)?;
    let data: IndexData = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
    let mut index = LatestIndex {
        flush_seq: data.flush_seq,
        ..LatestIndex::default()
    };
    for t in data.tables {
        let name = Measurement::new(t.name).map_err(|e| e.to_string())?;
        let rows = t
            .rows
            .into_iter()
            .map(|r| {
                (
                    Arc::new(r.tags.into_iter().collect()),
                    Arc::new((r.time, r.fields.into_iter().collect())),
                )
            })
            .collect();
        index.tables.insert(name, rows);
    }
    Ok(index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn coverage_finds_times_inside_overlapping_spans() {
        let c = Coverage::new([(10, 20), (15, 18), (30, 40), (35, 50)].into_iter());
        for t in [10, 17, 20, 30, 45, 50] {
            assert!(c.covers(t), "{t}");
        }
        for t in [9, 21, 29, 51] {
            assert!(!c.covers(t), "{t}");
        }
        assert!(!Coverage::new(std::iter::empty()).covers(0));
    }

    #[test]
    fn a_damaged_index_is_refused() {
        let mut index = LatestIndex::default();
        let mut t = Table::default();
        t.insert(
            BTreeMap::from([("d".to_owned(), "a".to_owned())]),
            5,
            Fields::from([("v".to_owned(), Value::F64(1.5))]),
            None,
        );
        index.merge(&Measurement::new("m").unwrap(), &t);
        let dir = tempfile::tempdir().unwrap();
        index.save(dir.path()).unwrap();
        let mut bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert!(decode(&bytes).is_ok());
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(decode(&bytes).unwrap_err().contains("damaged"));
        assert!(decode(b"FLST").is_err());
    }
}
