//! The catalog: which Parquet files make up each table, the tables' schemas, each series'
//! flushed high-water mark, and which WAL segments the files already hold.
//!
//! # Format, version 2
//!
//! ```text
//! catalog.bin : "FCAT" | version: u16 LE = 2 | reserved: u16 = 0 | len: u32 LE | crc32: u32 LE
//!               | payload: postcard(CatalogData)
//! tables/{measurement}/{partition start, UTC, YYYYMMDDTHHMMSSZ}/{file id:020}.parquet
//! cache/{file id:020}.parquet        (local copies of cold files, see `cold`)
//! ```
//!
//! Version 2 added the cold tier: whether each file is in object storage, and the object
//! store's URL as configured. Version 1 catalogs (every file local) are read and rewritten as
//! version 2 by the next commit. A cold file's object key is its path under `tables/`.
//!
//! The catalog is replaced atomically: written to `catalog.bin.tmp`, fsynced, renamed over
//! `catalog.bin`, and the folder fsynced. A data file is written and fsynced before the catalog
//! that names it, and deleted only after a catalog without it is durable, so a crash at any
//! point leaves the last catalog and every file it names intact. Files the catalog does not
//! name (a flush or compaction cut short) are deleted on open.
//!
//! **Sequence numbers and last-write-wins.** Every file carries the sequence number of the
//! flush that wrote it (a compaction's output keeps the highest of its inputs). Where two files
//! hold a row of the same series and time, the higher sequence wins; the memtables are newer
//! than every file. A flush writes rows newer than their series' high-water mark to a plain
//! file and older rows to a *late* file, so plain files of one table never share a row:
//! only partitions with a late file (or late rows in memory) need merging when read, and
//! compaction merges them away.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrite_core::Measurement;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::framed::Format;
use crate::memtable::SeriesMap;
use crate::schema::{Schemas, TableSchema};

const FORMAT: Format = Format {
    magic: b"FCAT",
    version: 2,
    what: "catalog",
};
const FILE_NAME: &str = "catalog.bin";

/// What the catalog records about one Parquet file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Unique id; also the file name.
    pub id: u64,
    /// Flush sequence: where files share a row, the higher sequence wins.
    pub seq: u64,
    /// Start of the time partition (ns since the epoch, UTC).
    pub partition: i64,
    /// Earliest row time in the file (ns).
    pub min_time: i64,
    /// Latest row time in the file (ns).
    pub max_time: i64,
    /// Rows in the file.
    pub rows: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Holds rows at or before their series' earlier high-water mark, which may replace rows
    /// of other files of the partition.
    pub late: bool,
    /// In object storage (the cold tier) rather than under `tables/`.
    pub cold: bool,
}

/// `FileMeta` as catalog version 1 wrote it (no tiers).
#[derive(Serialize, Deserialize)]
struct FileMetaV1 {
    id: u64,
    seq: u64,
    partition: i64,
    min_time: i64,
    max_time: i64,
    rows: u64,
    bytes: u64,
    late: bool,
}

impl From<FileMetaV1> for FileMeta {
    fn from(m: FileMetaV1) -> Self {
        Self {
            id: m.id,
            seq: m.seq,
            partition: m.partition,
            min_time: m.min_time,
            max_time: m.max_time,
            rows: m.rows,
            bytes: m.bytes,
            late: m.late,
            cold: false,
        }
    }
}

/// A data file named by the catalog. When the catalog drops it (compaction, retention) the
/// file is deleted only after `store.file_grace`, so queries already reading it finish.
#[derive(Debug)]
pub struct DataFile {
    /// What the catalog knows of it.
    pub meta: FileMeta,
    /// Where it is read: under `tables/`, or for a cold file its place in the local cache
    /// (there only while cached: read cold files through the store).
    pub path: PathBuf,
    /// Its path relative to the data folder's `tables/` parent: the object key when cold.
    pub key: String,
}

impl DataFile {
    /// The file of `table` that `meta` describes, in the store under `root`.
    pub(crate) fn at(root: &Path, table: &str, meta: FileMeta) -> Self {
        let key = file_key(table, &meta);
        let path = if meta.cold {
            cache_path(root, meta.id)
        } else {
            root.join(&key)
        };
        Self { meta, path, key }
    }
}

/// The files and high-water marks of one table.
#[derive(Default)]
pub(crate) struct TableFiles {
    pub(crate) files: Vec<Arc<DataFile>>,
    /// Latest time of each series that reached a file (or a flush in progress).
    pub(crate) high_water: SeriesMap<i64>,
}

/// The catalog in memory.
#[derive(Default)]
pub(crate) struct Catalog {
    pub(crate) next_file_id: u64,
    pub(crate) next_seq: u64,
    /// WAL segments numbered below this are wholly in files.
    pub(crate) wal_floor: u64,
    pub(crate) tables: BTreeMap<Measurement, TableFiles>,
    /// The `store.cold_url` the cold files were written under, once there were any.
    pub(crate) cold_url: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CatalogData<F = FileMeta> {
    next_file_id: u64,
    next_seq: u64,
    wal_floor: u64,
    tables: Vec<TableEntry<F>>,
}

/// What version 2 added after version 1's `CatalogData` (whose files then carry `cold`).
#[derive(Serialize, Deserialize)]
struct Tiers {
    /// `store.cold_url` the cold files were written under (empty: the default local folder).
    cold_url: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct TableEntry<F = FileMeta> {
    name: String,
    schema: TableSchema,
    files: Vec<F>,
    high_water: Vec<(Vec<(String, String)>, i64)>,
}

/// A data file's path below the data folder (`tables/{table}/{partition}/{id}.parquet`),
/// and its object key in the cold tier.
pub(crate) fn file_key(table: &str, meta: &FileMeta) -> String {
    let partition = chrono::DateTime::from_timestamp_nanos(meta.partition)
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    format!("tables/{table}/{partition}/{:020}.parquet", meta.id)
}

/// The path of a new (local) data file.
pub(crate) fn file_path(root: &Path, table: &str, meta: &FileMeta) -> PathBuf {
    root.join(file_key(table, meta))
}

/// Where a cold file is kept while cached.
pub(crate) fn cache_path(root: &Path, id: u64) -> PathBuf {
    root.join("cache").join(format!("{id:020}.parquet"))
}

impl Catalog {
    /// Load the catalog of the store in `root` (an empty one if there is none yet), with the
    /// schemas it records.
    pub(crate) fn load(root: &Path) -> Result<(Self, Schemas), StoreError> {
        let path = root.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((
                    Self {
                        next_file_id: 1,
                        next_seq: 1,
                        wal_floor: 0,
                        tables: BTreeMap::new(),
                        cold_url: None,
                    },
                    Schemas::default(),
                ));
            }
            Err(e) => return Err(StoreError::io("reading", &path, e)),
        };
        let bad = |why: String| {
            StoreError::io(
                "reading",
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, why),
            )
        };
        let (version, payload) = FORMAT.payload_since(&bytes, 1).map_err(bad)?;
        let undecodable = |e: postcard::Error| bad(format!("undecodable catalog: {e}"));
        let (data, tiers): (CatalogData, Tiers) = if version == 1 {
            let v1: CatalogData<FileMetaV1> = postcard::from_bytes(payload).map_err(undecodable)?;
            let data = CatalogData {
                next_file_id: v1.next_file_id,
                next_seq: v1.next_seq,
                wal_floor: v1.wal_floor,
                tables: v1
                    .tables
                    .into_iter()
                    .map(|t| TableEntry {
                        name: t.name,
                        schema: t.schema,
                        files: t.files.into_iter().map(FileMeta::from).collect(),
                        high_water: t.high_water,
                    })
                    .collect(),
            };
            (data, Tiers { cold_url: None })
        } else {
            postcard::from_bytes(payload).map_err(undecodable)?
        };
        let mut catalog = Self {
            next_file_id: data.next_file_id,
            next_seq: data.next_seq,
            wal_floor: data.wal_floor,
            tables: BTreeMap::new(),
            cold_url: tiers.cold_url,
        };
        let mut schemas = Schemas::default();
        for t in data.tables {
            let name = Measurement::new(t.name).map_err(|e| bad(e.to_string()))?;
            let files = t
                .files
                .into_iter()
                .map(|m| Arc::new(DataFile::at(root, name.as_str(), m)))
                .collect();
            let high_water = t
                .high_water
                .into_iter()
                .map(|(tags, t)| (Arc::new(tags.into_iter().collect()), t))
                .collect();
            schemas.tables.insert(name.clone(), t.schema);
            catalog
                .tables
                .insert(name, TableFiles { files, high_water });
        }
        Ok((catalog, schemas))
    }

    /// Write the catalog durably (see the module docs for the protocol).
    pub(crate) fn save(&self, root: &Path, schemas: &Schemas) -> Result<(), StoreError> {
        let data = CatalogData {
            next_file_id: self.next_file_id,
            next_seq: self.next_seq,
            wal_floor: self.wal_floor,
            tables: schemas
                .tables
                .iter()
                .map(|(name, schema)| {
                    let files = self.tables.get(name);
                    TableEntry {
                        name: name.as_str().to_owned(),
                        schema: schema.clone(),
                        files: files
                            .map(|t| t.files.iter().map(|f| f.meta.clone()).collect())
                            .unwrap_or_default(),
                        high_water: files
                            .map(|t| {
                                t.high_water
                                    .iter()
                                    .map(|(s, t)| {
                                        let tags =
                                            s.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                                        (tags, *t)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        };
        let tiers = Tiers {
            cold_url: self.cold_url.clone(),
        };
        FORMAT.write(root, FILE_NAME, &(data, tiers))
    }

    /// The times each table's files span (see [`crate::latest::Coverage`]).
    pub(crate) fn coverage(&self) -> BTreeMap<Measurement, crate::latest::Coverage> {
        self.tables
            .iter()
            .map(|(name, t)| (name.clone(), crate::latest::Coverage::of_files(&t.files)))
            .collect()
    }

    /// Delete files under `tables/` that the catalog does not name: leftovers of a flush or
    /// compaction a crash cut short. Returns how many.
    pub(crate) fn remove_orphans(&self, root: &Path) -> Result<usize, StoreError> {
        let named: std::collections::HashSet<&Path> = self
            .tables
            .values()
            .flat_map(|t| t.files.iter().filter(|f| !f.meta.cold))
            .map(|f| f.path.as_path())
            .collect();
        let mut removed = 0;
        let tables = root.join("tables");
        if !tables.is_dir() {
            return Ok(0);
        }
        for file in walk(&tables)? {
            if !named.contains(file.as_path()) {
                fs::remove_file(&file).map_err(|e| StoreError::io("removing", &file, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|e| StoreError::io("listing", &d, e))? {
            let entry = entry.map_err(|e| StoreError::io("listing", &d, e))?;
            let path = entry.path();
            if entry
                .file_type()
                .map_err(|e| StoreError::io("listing", &path, e))?
                .is_dir()
            {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsyncing", dir, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_catalog_is_read_with_every_file_local_and_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = CatalogData {
            next_file_id: 8,
            next_seq: 5,
            wal_floor: 3,
            tables: vec![TableEntry {
                name: "readings".to_owned(),
                schema: TableSchema::default(),
                files: vec![FileMetaV1 {
                    id: 7,
                    seq: 4,
                    partition: 0,
                    min_time: 10,
                    max_time: 20,
                    rows: 2,
                    bytes: 999,
                    late: false,
                }],
                high_water: vec![(vec![("device_id".to_owned(), "d1".to_owned())], 20)],
            }],
        };
        let old = Format {
            version: 1,
            ..FORMAT
        };
        old.write(dir.path(), FILE_NAME, &v1).unwrap();
        let (catalog, schemas) = Catalog::load(dir.path()).unwrap();
        let check = |catalog: &Catalog| {
            assert_eq!(
                (catalog.next_file_id, catalog.next_seq, catalog.wal_floor),
                (8, 5, 3)
            );
            assert_eq!(catalog.cold_url, None);
            let t = &catalog.tables[&Measurement::new("readings").unwrap()];
            assert_eq!(t.files.len(), 1);
            let f = &t.files[0];
            assert_eq!((f.meta.id, f.meta.bytes, f.meta.cold), (7, 999, false));
            assert_eq!(
                f.key,
                "tables/readings/19700101T000000Z/00000000000000000007.parquet"
            );
            assert_eq!(f.path, dir.path().join(&f.key));
            assert_eq!(t.high_water.len(), 1);
        };
        check(&catalog);
        catalog.save(dir.path(), &schemas).unwrap();
        let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
        check(&Catalog::load(dir.path()).unwrap().0);
    }
}
