//! Ferrite's time-series store.
//!
//! Owns the write path of telemetry and its files: [`Store::submit`] validates points against
//! their table's schema, appends them to the write-ahead log ([`wal`]), fsyncs (one fsync
//! serves every write queued meanwhile: group commit), applies them to the in-memory tables
//! and only then completes the [`PendingWrite`]. When the memtables grow past
//! `store.flush_rows` or age past `store.flush_interval`, the WAL rotates, the memtables
//! freeze, and a background thread writes them into Parquet files per table and time
//! partition ([`files`]), records them in the [`catalog`] and deletes the WAL segments they
//! cover. The same thread compacts small and overlapping files (last write wins) and drops
//! partitions past their retention. Readers take a [`TableView`] of a table for a time range:
//! the files to scan plus the in-memory rows, with partitions that need last-write-wins
//! merging already merged.
//!
//! On [`Store::open`] the catalog is loaded, files it does not name are deleted, and the WAL
//! segments not yet in files are replayed, so every completed write survives a crash.
//!
//! Tables may have rollups (downsampling, module `rollup`): tables of per-series, per-bucket
//! summaries written by each flush in the same catalog commit as the raw rows.
//!
//! Partitions older than `store.cold_after` move to object storage (module `cold`) and stay
//! in the catalog and in queries, read through a size-bounded local cache.
//!
//! It knows nothing of MQTT or SQL.

pub mod catalog;
mod cold;
mod error;
mod files;
mod flush;
mod framed;
mod latest;
mod memtable;
mod rollup;
mod schema;
pub mod wal;

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferrite_core::{Measurement, Point};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use catalog::Catalog;
pub use catalog::{DataFile, FileMeta};
pub use cold::Local;
pub use error::StoreError;
use memtable::{Memtables, SeriesKey, Table, build_batches, partition_of};
use schema::{PendingTypes, Schemas};
pub use wal::ReplayReport;

/// Settings of one table (`[store.tables.<name>]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TableConfig {
    /// Partitions older than this are deleted; `0s` keeps them forever. Overrides
    /// `store.retention` for this table.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Downsampling: a rollup table per interval (`["1m", "1h"]` → `<table>_1m` and
    /// `<table>_1h`), with count, sum, mean, min, max and last of every field per series
    /// and bucket, maintained at every flush (see `rollup`).
    pub rollups: Vec<String>,
    /// Partitions older than this move to the cold tier; `0s` keeps them local. Overrides
    /// `store.cold_after` for this table.
    #[serde(with = "humantime_serde")]
    pub cold_after: Option<Duration>,
}

/// What happens when the data files reach `store.max_bytes`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// New writes are refused as retryable; nothing stored is deleted.
    #[default]
    Refuse,
    /// The oldest partitions (cold ones first, as they are the oldest) are deleted until the
    /// files fit; the newest partition of each table is never deleted, and writes are refused
    /// only if the files still do not fit without them.
    EvictOldest,
}

/// Store settings (`[store]` in the config file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Write requests that may wait for the WAL writer. When full, writers wait
    /// (backpressure reaches the publishing device as a delayed PUBACK).
    pub write_queue: usize,
    /// Most write requests one group commit (one fsync) takes.
    pub max_group_commit: usize,
    /// How long the writer lingers for more requests before an fsync when it has fewer than
    /// `max_group_commit`; `0s` commits as soon as the queue is empty.
    #[serde(with = "humantime_serde")]
    pub commit_linger: Duration,
    /// Rows in memory that start a flush to Parquet files.
    pub flush_rows: usize,
    /// Age of the oldest unflushed row that starts a flush (also bounds WAL replay on start).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rows the in-memory tables may hold while a flush is running. Past it writers wait for
    /// the flush; if flushing fails (disk full), writes are refused as retryable (MQTT 5
    /// reason 0x97 quota exceeded, HTTP 503), never half-applied.
    pub max_memtable_rows: usize,
    /// Width of the time partitions files are cut into (and retention drops whole).
    #[serde(with = "humantime_serde")]
    pub partition: Duration,
    /// Default retention of every table: partitions ending longer ago are deleted; `0s`
    /// keeps data forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Per-table settings by measurement name.
    pub tables: BTreeMap<String, TableConfig>,
    /// A partition with this many small files is compacted into one.
    pub compaction_min_files: usize,
    /// Most rows one compaction merges (it holds them in memory).
    pub compaction_max_rows: usize,
    /// Files replaced by compaction or retention are deleted after this delay, so queries
    /// already reading them finish.
    #[serde(with = "humantime_serde")]
    pub file_grace: Duration,
    /// Storage budget: most bytes the data files may take, local and cold (0: no budget).
    /// What happens at it is `when_full`. The WAL (bounded by the flush settings), retired
    /// files waiting out `file_grace` and the cold cache come on top.
    pub max_bytes: u64,
    /// The policy at `max_bytes`.
    pub when_full: WhenFull,
    /// Partitions that ended longer ago than this move to the cold tier (`cold_url`); `0s`
    /// keeps every file local. Per table: `[store.tables.T] cold_after`.
    #[serde(with = "humantime_serde")]
    pub cold_after: Duration,
    /// Where cold files go: empty for the folder `cold/` in the data folder, another folder
    /// (`/mnt/archive`, `file:///mnt/archive`; relative to the data folder), or an
    /// S3-compatible bucket `s3://bucket/prefix` (credentials, region and endpoint from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`). Must not change while cold files exist.
    pub cold_url: String,
    /// Most bytes the local cache of cold files may take (files being read may hold more).
    pub cold_cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            write_queue: 8192,
            max_group_commit: 4096,
            commit_linger: Duration::ZERO,
            flush_rows: 500_000,
            flush_interval: Duration::from_secs(60),
            max_memtable_rows: 2_000_000,
            partition: Duration::from_secs(24 * 3600),
            retention: Duration::ZERO,
            tables: BTreeMap::new(),
            compaction_min_files: 8,
            compaction_max_rows: 2_000_000,
            file_grace: Duration::from_secs(600),
            max_bytes: 0,
            when_full: WhenFull::Refuse,
            cold_after: Duration::ZERO,
            cold_url: String::new(),
            cold_cache_bytes: 1 << 30,
        }
    }
}

impl StoreConfig {
    /// Problems with these settings, all of them.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.write_queue == 0 {
            errs.push("store.write_queue must be at least 1".to_owned());
        }
        if self.max_group_commit == 0 {
            errs.push("store.max_group_commit must be at least 1".to_owned());
        }
        if self.flush_rows == 0 {
            errs.push("store.flush_rows must be at least 1".to_owned());
        }
        if self.max_memtable_rows < self.flush_rows {
            errs.push("store.max_memtable_rows must be at least store.flush_rows".to_owned());
        }
        if self.commit_linger > Duration::from_millis(100) {
            errs.push("store.commit_linger must be at most 100ms".to_owned());
        }
        if self.flush_interval < Duration::from_millis(10) {
            errs.push("store.flush_interval must be at least 10ms".to_owned());
        }
        if self.partition < Duration::from_secs(60)
            || self.partition.as_nanos() > i64::MAX as u128 / 4
        {
            errs.push("store.partition must be between 1m and 100y".to_owned());
        }
        if self.compaction_min_files < 2 {
            errs.push("store.compaction_min_files must be at least 2".to_owned());
        }
        if let Err(e) = cold::Backend::parse(&self.cold_url, Path::new(".")) {
            errs.push(format!("store.cold_url: {e}"));
        }
        for (name, table) in &self.tables {
            if let Err(e) = Measurement::new(name.as_str()) {
                errs.push(format!("store.tables.{name}: {e}"));
            }
            for raw in &table.rollups {
                if let Err(e) = self.rollup_spec(name, raw) {
                    errs.push(format!("store.tables.{name}.rollups: {e}"));
                }
            }
        }
        let derived = self.derived_tables();
        for (rollup, raw) in &derived {
            if self
                .tables
                .get(rollup.as_str())
                .is_some_and(|t| !t.rollups.is_empty())
            {
                errs.push(format!(
                    "store.tables.{rollup}: a rollup table of {raw} cannot have rollups itself"
                ));
            }
        }
        errs
    }

    /// The rollups of `table`, finest first (intervals that do not validate are left out).
    fn rollups_of(&self, table: &str) -> Vec<rollup::Spec> {
        let mut specs: Vec<rollup::Spec> = self
            .tables
            .get(table)
            .map(|t| t.rollups.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|raw| self.rollup_spec(table, raw).ok())
            .collect();
        specs.sort_by_key(|s| s.interval_ns);
        specs.dedup();
        specs
    }

    /// The rollup of `table` that the configured interval `raw` asks for.
    fn rollup_spec(&self, table: &str, raw: &str) -> Result<rollup::Spec, String> {
        let interval = rollup::parse_interval(raw)?;
        if interval < Duration::from_secs(1)
            || interval.subsec_nanos() != 0
            || !self
                .partition
                .as_nanos()
                .is_multiple_of(interval.as_nanos())
        {
            return Err(format!(
                "{raw:?} must be whole seconds that divide store.partition ({})",
                humantime_serde::re::humantime::format_duration(self.partition)
            ));
        }
        let name = rollup::table_name(table, interval)
            .ok_or_else(|| format!("{raw:?} gives no valid table name"))?;
        let interval_ns = i64::try_from(interval.as_nanos())
            .map_err(|_| format!("{raw:?} is too long an interval"))?;
        Ok(rollup::Spec { interval_ns, name })
    }

    /// Every rollup table and the table it summarises.
    fn derived_tables(&self) -> BTreeMap<Measurement, Measurement> {
        let mut out = BTreeMap::new();
        for name in self.tables.keys() {
            let Ok(raw) = Measurement::new(name.as_str()) else {
                continue;
            };
            for spec in self.rollups_of(name) {
                out.insert(spec.name, raw.clone());
            }
        }
        out
    }

    fn partition_ns(&self) -> i64 {
        i64::try_from(self.partition.as_nanos()).unwrap_or(i64::MAX)
    }

    /// The age past which `table`'s partitions go cold, if they do.
    fn cold_after_of(&self, table: &str) -> Option<Duration> {
        let c = self
            .tables
            .get(table)
            .and_then(|t| t.cold_after)
            .unwrap_or(self.cold_after);
        (!c.is_zero()).then_some(c)
    }

    /// Whether any table's partitions go cold.
    fn tiering(&self) -> bool {
        !self.cold_after.is_zero()
            || self
                .tables
                .values()
                .any(|t| t.cold_after.is_some_and(|c| !c.is_zero()))
    }

    /// The retention of `table`, if it has one.
    fn retention_of(&self, table: &str) -> Option<Duration> {
        let r = self
            .tables
            .get(table)
            .and_then(|t| t.retention)
            .unwrap_or(self.retention);
        (!r.is_zero()).then_some(r)
    }
}

/// Counters of the store, for logs, metrics and `GET /api/v1/store`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Write requests made durable.
    pub writes: u64,
    /// Write requests rejected (schema conflicts, memory full).
    pub rejected: u64,
    /// Group commits (fsyncs) done.
    pub commits: u64,
    /// Bytes appended to the WAL since start.
    pub wal_bytes: u64,
    /// Rows held in memtables (active and being flushed).
    pub rows: usize,
    /// Flushes completed since start.
    pub flushes: u64,
    /// Flushes that failed (retried later).
    pub flush_errors: u64,
    /// Compactions completed since start.
    pub compactions: u64,
    /// Partitions deleted by retention since start.
    pub partitions_dropped: u64,
    /// Data files in the catalog.
    pub files: usize,
    /// Bytes of data files in the catalog.
    pub file_bytes: u64,
    /// Rows in data files (before last-write-wins between overlapping files).
    pub file_rows: u64,
    /// Data files in the cold tier (counted in `files` too).
    pub cold_files: usize,
    /// Bytes of cold files (counted in `file_bytes` too).
    pub cold_bytes: u64,
    /// Files moved to the cold tier since start.
    pub files_tiered: u64,
    /// Bytes the local cache of cold files holds.
    pub cache_bytes: u64,
    /// Reads of a cold file served from the cache since start.
    pub cache_hits: u64,
    /// Reads of a cold file that fetched it from object storage since start.
    pub cache_misses: u64,
    /// Partitions deleted to fit `store.max_bytes` (`when_full = "evict_oldest"`) since start.
    pub partitions_evicted: u64,
}

enum Job {
    Write(WriteRequest),
    /// Freeze the memtables and flush them; answered when their rows are in files.
    Flush(Option<oneshot::Sender<Result<(), StoreError>>>),
}

struct WriteRequest {
    points: Vec<Point>,
    /// The points as one WAL record (`wal::encode`), made by the submitter.
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    rejected: AtomicU64,
    commits: AtomicU64,
    wal_bytes: AtomicU64,
    flushes: AtomicU64,
    flush_errors: AtomicU64,
    compactions: AtomicU64,
    partitions_dropped: AtomicU64,
    partitions_evicted: AtomicU64,
}

/// Memtables frozen for a flush: immutable, read by queries until their files are in the
/// catalog.
struct Frozen {
    mem: Memtables,
    /// Sequence number the flushed files get.
    seq: u64,
    /// First WAL segment not covered by these memtables.
    wal_floor: u64,
    /// Per table, the high-water mark each series had before this freeze (absent: none).
    high_water_before: BTreeMap<Measurement, memtable::SeriesMap<i64>>,
}

/// Everything readers and the writer share, under one lock.
struct State {
    schemas: Schemas,
    active: Memtables,
    frozen: Option<Arc<Frozen>>,
    catalog: Catalog,
    /// The latest row of every series in the data files (the memtables' are laid over it).
    latest: Arc<latest::LatestIndex>,
}

/// Whether a flush is running, for the writer to wait on when memory is full.
#[derive(Default)]
struct FlushGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

struct Shared {
    state: RwLock<State>,
    counters: Counters,
    gate: FlushGate,
    /// Set by the writer thread when a WAL write failed; checked by `submit`.
    failed: AtomicBool,
    /// Held by whoever changes the file set outside a flush (compaction, retention).
    maintenance: Mutex<()>,
    /// The data folder's lock file, held (and the folder ours) while this lives.
    _lock: std::fs::File,
    /// Files dropped from the catalog, deleted once `file_grace` has passed.
    graveyard: Mutex<Vec<(std::time::Instant, flush::Retired)>>,
    /// The cold tier and its cache.
    cold: cold::Tier,
    /// Set while `when_full = "evict_oldest"` cannot bring the files under the budget.
    over_budget: AtomicBool,
    config: StoreConfig,
    /// Rollup tables (written only by flushes) and the table each summarises.
    derived: BTreeMap<Measurement, Measurement>,
    /// The rollups of each table that has some, finest first.
    rollups: BTreeMap<Measurement, Vec<rollup::Spec>>,
    dir: PathBuf,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A consistent copy of one table's rows.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's schema at the time of the snapshot.
    pub schema: SchemaRef,
    /// Its rows, sorted by series then time.
    pub batches: Vec<RecordBatch>,
}

/// What a reader needs to answer a query over one table and time range: the data files to
/// scan and the rows that are not in those files. Rows in `files` and `batches` never share a
/// series and time (partitions that could were merged into `batches`), so their union is the
/// table. Files are not deleted while a view may still read them (see `store.file_grace`).
#[derive(Debug, Clone)]
pub struct TableView {
    /// The table's schema (every file and batch holds a subset of its columns).
    pub schema: SchemaRef,
    /// Files whose time range meets the requested range, each readable at its path while
    /// the view lives (cold ones are held in the cache).
    pub files: Vec<ViewFile>,
    /// In-memory rows and merged partitions within the range (may hold rows outside it).
    pub batches: Vec<RecordBatch>,
    /// Partitions whose files had to be merged in memory (late data not yet compacted).
    pub merged_partitions: usize,
    /// Files the table has in all, inside the range or not (the rest were pruned by time).
    pub files_total: usize,
}

/// A data file of a [`TableView`].
#[derive(Debug, Clone)]
pub struct ViewFile {
    /// What the catalog knows of it.
    pub meta: FileMeta,
    /// Where to read it: under `tables/`, or the cached copy of a cold file.
    pub path: PathBuf,
    _local: Local,
}

/// A write that was queued; await [`PendingWrite::wait`] for its durability.
#[derive(Debug)]
pub struct PendingWrite(oneshot::Receiver<Result<(), StoreError>>);

impl PendingWrite {
    /// Resolves once the write is fsynced and visible to queries, or with why it was rejected.
    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::ShuttingDown))
    }
}

/// The store: cheap to share behind an `Arc`.
pub struct Store {
    /// Queue to the WAL writer thread; `None` once shutdown began. Bounded: see
    /// [`StoreConfig::write_queue`].
    tx: RwLock<Option<mpsc::Sender<Job>>>,
    /// Dropped to stop the maintenance thread (compaction, retention).
    stop_maintenance: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Store {
    /// Open (or create) the store under `dir`: load the catalog, delete files it does not
    /// name, replay the WAL segments not yet in files.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<(Self, ReplayReport), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir, e))?;
        let lock = lock_dir(dir)?;
        let (catalog, mut schemas) = Catalog::load(dir)?;
        let orphans = catalog.remove_orphans(dir)?;
        if orphans > 0 {
            tracing::info!(
                orphans,
                "deleted data files a crash left outside the catalog"
            );
        }
        let cold = open_tier(dir, config, &catalog)?;
        let mut latest = match latest::LatestIndex::load(dir) {
            Some(index) => index,
            None if catalog.tables.values().all(|t| t.files.is_empty()) => {
                latest::LatestIndex::default()
            }
            None => latest::LatestIndex::rebuild(&catalog, &schemas, &cold)?,
        };
        // Rollups merge into the index's rows of their tables, so those rows must be the
        // files' exactly: after a crash between writing the index and the catalog, the index
        // is ahead of the files, and the rollup tables' entries are read from the files.
        let derived = config.derived_tables();
        let flushed = catalog
            .tables
            .values()
            .flat_map(|t| t.files.iter())
            .map(|f| f.meta.seq)
            .max()
            .unwrap_or(0);
        if latest.flush_seq > flushed {
            let names: Vec<Measurement> = derived.keys().cloned().collect();
            latest.rebuild_tables(&catalog, &schemas, &cold, &names)?;
        }
        latest.flush_seq = flushed;
        latest.retain_covered(&catalog.coverage());
        let partition_ns = config.partition_ns();
        let mut active = Memtables::default();
        let (wal, report) = wal::open(&dir.join("wal"), catalog.wal_floor, |record| {
            for p in record.points {
                admit(&mut schemas, &catalog, &mut active, p, partition_ns);
            }
        })?;
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                schemas,
                active,
                frozen: None,
                catalog,
                latest: Arc::new(latest),
            }),
            counters: Counters::default(),
            gate: FlushGate::default(),
            failed: AtomicBool::new(false),
            maintenance: Mutex::new(()),
            _lock: lock,
            graveyard: Mutex::new(Vec::new()),
            cold,
            over_budget: AtomicBool::new(false),
            config: config.clone(),
            derived,
            rollups: config
                .tables
                .keys()
                .filter_map(|name| {
                    let specs = config.rollups_of(name);
                    let name = Measurement::new(name.as_str()).ok()?;
                    (!specs.is_empty()).then_some((name, specs))
                })
                .collect(),
            dir: dir.to_owned(),
        });
        let (tx, rx) = mpsc::channel(config.write_queue.max(1));
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<flush::Task>(1);
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ferrite-wal".into())
                .spawn(move || run_writer(rx, wal, &shared, &flush_tx))
                .map_err(|e| StoreError::io("starting the WAL writer for", dir, e))?
        };
        let flusher = {
            let shared = Arc::clone(&shared);
            let jobs = tx.downgrade();
            std::thread::Builder::new()
                .name("ferrite-flush".into())
                .spawn(move || flush::run(&shared, &flush_rx, &jobs))
                .map_err(|e| StoreError::io("starting the flush thread for", dir, e))?
        };
        let (stop_maintenance, stop) = std::sync::mpsc::channel::<()>();
        let maintainer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ferrite-maintain".into())
                .spawn(move || flush::run_maintenance(&shared, &stop))
                .map_err(|e| StoreError::io("starting the maintenance thread for", dir, e))?
        };
        Ok((
            Self {
                tx: RwLock::new(Some(tx)),
                stop_maintenance: Mutex::new(Some(stop_maintenance)),
                shared,
                threads: Mutex::new(vec![writer, flusher, maintainer]),
            },
            report,
        ))
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        self.tx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::ShuttingDown)
    }

    /// Queue `points` as one write (all stored or none). Waits while the queue is full.
    pub async fn submit(&self, points: Vec<Point>) -> Result<PendingWrite, StoreError> {
        let tx = self.sender()?;
        // Encoded here, on the submitter's thread, so encoding runs on as many cores as
        // there are writers; the log's one writer thread only copies the bytes.
        let frame = wal::encode(&points)?;
        let (done, rx) = oneshot::channel();
        tx.send(Job::Write(WriteRequest {
            points,
            frame,
            done,
        }))
        .await
        .map_err(|_| StoreError::ShuttingDown)?;
        Ok(PendingWrite(rx))
    }

    /// Queue and wait: returns once the points are durable and queryable.
    pub async fn write(&self, points: Vec<Point>) -> Result<(), StoreError> {
        self.submit(points).await?.wait().await
    }

    /// Flush every row written before this call into data files; returns once they are in
    /// the catalog (and their WAL segments deleted).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let tx = self.sender()?;
        let (done, rx) = oneshot::channel();
        tx.send(Job::Flush(Some(done)))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Run compaction and retention now instead of at the next flush tick (for tests and
    /// operators); returns the number of compactions done.
    pub fn maintain(&self) -> Result<usize, StoreError> {
        flush::maintain(&self.shared)
    }

    /// Names of the tables.
    pub fn tables(&self) -> Vec<String> {
        self.shared
            .read()
            .schemas
            .tables
            .keys()
            .map(|m| m.as_str().to_owned())
            .collect()
    }

    /// A table's current schema.
    pub fn schema(&self, table: &str) -> Option<SchemaRef> {
        let m = Measurement::new(table).ok()?;
        self.shared.read().schemas.tables.get(&m).map(|s| s.arrow())
    }

    /// What a reader needs for the rows of `table` with time in `range` (ns); `None` if
    /// there is no such table. Partitions that hold late rows not yet compacted are merged
    /// here (read from their files), so the caller never sees two versions of a row.
    pub fn table_view(
        &self,
        table: &str,
        range: RangeInclusive<i64>,
    ) -> Option<Result<TableView, StoreError>> {
        let m = Measurement::new(table).ok()?;
        let partition_ns = self.shared.config.partition_ns();
        let (lo, hi) = (*range.start(), *range.end());
        let state = self.shared.read();
        let schema = state.schemas.tables.get(&m)?.clone();
        let arrow = schema.arrow();
        let frozen = state.frozen.clone();
        let files_total = state.catalog.tables.get(&m).map_or(0, |t| t.files.len());
        let files: Vec<Arc<DataFile>> = state
            .catalog
            .tables
            .get(&m)
            .map(|t| {
                t.files
                    .iter()
                    .filter(|f| f.meta.max_time >= lo && f.meta.min_time <= hi)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // Partitions needing a merge: a late file, or late rows in memory.
        let mut dirty: std::collections::BTreeSet<i64> = files
            .iter()
            .filter(|f| f.meta.late)
            .map(|f| f.meta.partition)
            .collect();
        let active = state.active.tables.get(&m);
        let frozen_table = frozen.as_ref().and_then(|f| f.mem.tables.get(&m));
        for t in active.into_iter().chain(frozen_table) {
            dirty.extend(
                t.late_partitions()
                    .range(partition_of(lo, partition_ns)..=partition_of(hi, partition_ns)),
            );
        }
        let clean = |t: i64| !dirty.contains(&partition_of(t, partition_ns));
        let result = (|| {
            let mut batches = Vec::new();
            // Rows in clean partitions: files, then frozen, then active never share a row.
            if let Some(t) = frozen_table {
                batches.extend(build_batches(
                    &schema,
                    &arrow,
                    t.rows_in(lo..=hi).filter(|(_, t, _)| clean(*t)),
                )?);
            }
            if let Some(t) = active {
                batches.extend(build_batches(
                    &schema,
                    &arrow,
                    t.rows_in(lo..=hi).filter(|(_, t, _)| clean(*t)),
                )?);
            }
            // Active rows of dirty partitions are copied now; the merge reads files unlocked.
            let active_dirty = match active {
                Some(t) if !dirty.is_empty() => build_batches(
                    &schema,
                    &arrow,
                    t.rows_in(lo..=hi).filter(|(_, t, _)| !clean(*t)),
                )?,
                _ => Vec::new(),
            };
            Ok::<_, arrow::error::ArrowError>((batches, active_dirty))
        })();
        drop(state);
        let (mut batches, active_dirty) = match result {
            Ok(r) => r,
            Err(e) => return Some(Err(StoreError::Encode(e.to_string()))),
        };
        let (clean_files, dirty_files): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|f| !dirty.contains(&f.meta.partition));
        if !dirty.is_empty() {
            let mut merged = Table::default();
            let mut dirty_files = dirty_files;
            dirty_files.sort_by_key(|f| f.meta.seq);
            let merge = (|| {
                for f in &dirty_files {
                    for b in self.shared.cold.read(f)? {
                        merged
                            .insert_batch(&schema, &b)
                            .map_err(|e| StoreError::Encode(e.to_string()))?;
                    }
                }
                if let Some(t) = frozen_table {
                    for (s, time, fields) in t.rows_in(lo..=hi).filter(|(_, t, _)| !clean(*t)) {
                        merged.insert((**s).clone(), time, fields.clone(), None);
                    }
                }
                for b in &active_dirty {
                    merged
                        .insert_batch(&schema, b)
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                }
                build_batches(&schema, &arrow, merged.rows_in(lo..=hi))
                    .map_err(|e| StoreError::Encode(e.to_string()))
            })();
            match merge {
                Ok(b) => batches.extend(b),
                Err(e) => return Some(Err(e)),
            }
        }
        let clean_files = clean_files
            .iter()
            .map(|f| {
                let local = self.shared.cold.local(f)?;
                Ok(ViewFile {
                    meta: f.meta.clone(),
                    path: local.path.clone(),
                    _local: local,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>();
        let clean_files = match clean_files {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(TableView {
            schema: arrow,
            files: clean_files,
            batches,
            merged_partitions: dirty.len(),
            files_total,
        }))
    }

    /// The latest row of every series of `table` (the row with the greatest time; at equal
    /// times the last write), sorted by series: one row per series, whatever the number of
    /// rows stored, read from memory. `None` if there is no such table.
    pub fn latest(&self, table: &str) -> Option<Result<TableSnapshot, StoreError>> {
        let m = Measurement::new(table).ok()?;
        let state = self.shared.read();
        let schema = state.schemas.tables.get(&m)?.clone();
        let arrow = schema.arrow();
        let mut rows: HashMap<&SeriesKey, (i64, &memtable::Fields)> = HashMap::new();
        if let (Some(index), Some(files)) =
            (state.latest.tables.get(&m), state.catalog.tables.get(&m))
        {
            let cover = latest::Coverage::of_files(&files.files);
            rows.extend(
                index
                    .iter()
                    .filter(|(_, row)| cover.covers(row.0))
                    .map(|(s, row)| (s, (row.0, &row.1))),
            );
        }
        // Frozen rows are newer than the files and active rows newer still: at equal times
        // the later layer wins.
        let frozen = state.frozen.as_ref().and_then(|f| f.mem.tables.get(&m));
        for t in frozen.into_iter().chain(state.active.tables.get(&m)) {
            for (series, time, fields) in t.last_rows() {
                match rows.get(series) {
                    Some((seen, _)) if *seen > time => {}
                    _ => {
                        rows.insert(series, (time, fields));
                    }
                }
            }
        }
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let batches = build_batches(
            &schema,
            &arrow,
            rows.into_iter().map(|(s, (t, f))| (s, t, f)),
        );
        drop(state);
        Some(
            batches
                .map(|batches| TableSnapshot {
                    schema: arrow,
                    batches,
                })
                .map_err(|e| StoreError::Encode(e.to_string())),
        )
    }

    /// Every row of a table, merged (last write wins), sorted by series then time; reads
    /// every data file, so meant for tests, exports and small tables. `None` if there is no
    /// such table.
    pub fn snapshot(&self, table: &str) -> Option<Result<TableSnapshot, StoreError>> {
        let view = match self.table_view(table, i64::MIN..=i64::MAX)? {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let m = Measurement::new(table).ok()?;
        let schema = self.shared.read().schemas.tables.get(&m)?.clone();
        let result = (|| {
            let mut merged = Table::default();
            let mut files = view.files.clone();
            files.sort_by_key(|f| f.meta.seq);
            for f in &files {
                for b in files::read(&f.path)? {
                    merged
                        .insert_batch(&schema, &b)
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                }
            }
            for b in &view.batches {
                merged
                    .insert_batch(&schema, b)
                    .map_err(|e| StoreError::Encode(e.to_string()))?;
            }
            let batches = build_batches(&schema, &view.schema, merged.rows())
                .map_err(|e| StoreError::Encode(e.to_string()))?;
            Ok(TableSnapshot {
                schema: view.schema.clone(),
                batches,
            })
        })();
        Some(result)
    }

    /// Counters since start.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        let state = self.shared.read();
        let files = state.catalog.tables.values().flat_map(|t| t.files.iter());
        let (mut n, mut bytes, mut rows, mut cold_files, mut cold_bytes) = (0, 0, 0, 0, 0);
        for f in files {
            n += 1;
            bytes += f.meta.bytes;
            rows += f.meta.rows;
            if f.meta.cold {
                cold_files += 1;
                cold_bytes += f.meta.bytes;
            }
        }
        let tier = &self.shared.cold.counters;
        StoreStats {
            writes: c.writes.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            wal_bytes: c.wal_bytes.load(Ordering::Relaxed),
            rows: state.active.rows() + state.frozen.as_ref().map_or(0, |f| f.mem.rows()),
            flushes: c.flushes.load(Ordering::Relaxed),
            flush_errors: c.flush_errors.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            partitions_dropped: c.partitions_dropped.load(Ordering::Relaxed),
            files: n,
            file_bytes: bytes,
            file_rows: rows,
            cold_files,
            cold_bytes,
            files_tiered: tier.uploaded.load(Ordering::Relaxed),
            cache_bytes: self.shared.cold.cache_bytes(),
            cache_hits: tier.hits.load(Ordering::Relaxed),
            cache_misses: tier.misses.load(Ordering::Relaxed),
            partitions_evicted: c.partitions_evicted.load(Ordering::Relaxed),
        }
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Stop taking writes, let the writer finish every queued write, stop the flush thread
    /// (a flush in progress completes), and wait for both. Unflushed rows stay in the WAL.
    /// Blocking: call from a blocking context.
    pub fn close(&self) {
        self.tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.stop_maintenance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handles =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for h in handles {
            if h.join().is_err() {
                tracing::error!("a store thread panicked");
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it drained, and with it the flush thread;
        // no join here (Drop may run on an async worker).
        self.tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.stop_maintenance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Open the cold tier: with its object store when tiering is configured or the catalog names
/// cold files (which must be where the catalog says); index the cache; delete objects the
/// catalog does not name (logged, not fatal, when the object store cannot be reached).
fn open_tier(
    dir: &Path,
    config: &StoreConfig,
    catalog: &Catalog,
) -> Result<cold::Tier, StoreError> {
    let cold: HashMap<u64, u64> = catalog
        .tables
        .values()
        .flat_map(|t| t.files.iter())
        .filter(|f| f.meta.cold)
        .map(|f| (f.meta.id, f.meta.bytes))
        .collect();
    if !cold.is_empty() {
        let recorded = catalog.cold_url.clone().unwrap_or_default();
        if recorded != config.cold_url {
            return Err(StoreError::ColdConfig(format!(
                "{} cold files are in {recorded:?} but store.cold_url is {:?}: set it back, or \
                 move the objects there first",
                cold.len(),
                config.cold_url
            )));
        }
    }
    let url = (config.tiering() || !cold.is_empty()).then_some(config.cold_url.as_str());
    let tier = cold::Tier::open(dir, url, config.cold_cache_bytes)?;
    tier.load_cache(&cold)?;
    if tier.enabled() {
        let named: std::collections::HashSet<&str> = catalog
            .tables
            .values()
            .flat_map(|t| t.files.iter())
            .filter(|f| f.meta.cold)
            .map(|f| f.key.as_str())
            .collect();
        match tier.remove_orphans(&named) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                objects = n,
                "deleted cold-tier objects a crash left outside the catalog"
            ),
            Err(e) => tracing::warn!(error = %e, "could not list the cold tier for leftovers"),
        }
    }
    Ok(tier)
}

/// Take the data folder's lock so a second process (or store) cannot open it at once.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("opening", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StoreError::Locked(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io("locking", &path, e)),
    }
}

/// Admit a point whose types were checked into the schemas and the active memtables, marking
/// it late if it is at or before its series' flushed high-water mark.
fn admit(
    schemas: &mut Schemas,
    catalog: &Catalog,
    active: &mut Memtables,
    p: Point,
    partition_ns: i64,
) {
    if !schemas.admit(&p) {
        tracing::error!(measurement = %p.measurement, "point conflicts with its table's schema; skipped");
        return;
    }
    insert_admitted(catalog, active, p, partition_ns);
}

/// Insert a point whose columns its table's schema has, with their types.
fn insert_admitted(catalog: &Catalog, active: &mut Memtables, p: Point, partition_ns: i64) {
    active.insert(p, partition_ns, |m, tags| {
        catalog
            .tables
            .get(m)
            .and_then(|t| t.high_water.get(tags))
            .copied()
    });
}

/// The WAL writer thread: take a group of requests, validate, append, fsync once, apply to
/// the memtables, then complete every request of the group. Also freezes the memtables for
/// the flush thread when they are due.
fn run_writer(
    mut rx: mpsc::Receiver<Job>,
    mut wal: wal::WalWriter,
    shared: &Shared,
    flush_tx: &std::sync::mpsc::SyncSender<flush::Task>,
) {
    let config = &shared.config;
    let max = config.max_group_commit.max(1);
    let linger = config.commit_linger;
    let partition_ns = config.partition_ns();
    let counters = &shared.counters;
    let mut group: Vec<WriteRequest> = Vec::with_capacity(max);
    let mut waiting_flushes: Vec<oneshot::Sender<Result<(), StoreError>>> = Vec::new();
    let mut last_freeze = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let (mut flush_now, mut tick) = (false, false);
        let mut take = |job: Job, group: &mut Vec<WriteRequest>| match job {
            Job::Write(w) => group.push(w),
            Job::Flush(Some(done)) => {
                flush_now = true;
                waiting_flushes.push(done);
            }
            Job::Flush(None) => tick = true,
        };
        take(first, &mut group);
        let deadline = std::time::Instant::now() + linger;
        while group.len() < max {
            match rx.try_recv() {
                Ok(job) => take(job, &mut group),
                Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        if shared.failed.load(Ordering::Acquire) {
            for r in group.drain(..) {
                let _ = r.done.send(Err(StoreError::Failed));
            }
            for d in waiting_flushes.drain(..) {
                let _ = d.send(Err(StoreError::Failed));
            }
            continue;
        }
        // Memory would overflow: wait for a running flush, then freeze to make room. Only if
        // the last flush failed (its rows still frozen) are writes refused below.
        let incoming: usize = group.iter().map(|r| r.points.len()).sum();
        if !group.is_empty() && shared.read().active.rows() + incoming > config.max_memtable_rows {
            flush::wait_idle(&shared.gate);
            if let Err(e) = freeze(shared, &mut wal, flush_tx, None) {
                fail(shared, &mut wal, &e);
                continue;
            }
            last_freeze = std::time::Instant::now();
        }
        let mut accepted = Vec::with_capacity(group.len());
        {
            let state = shared.read();
            let mut pending = PendingTypes::default();
            let mut rows = state.active.rows();
            let used: u64 = if config.max_bytes > 0 {
                state
                    .catalog
                    .tables
                    .values()
                    .flat_map(|t| t.files.iter())
                    .map(|f| f.meta.bytes)
                    .sum()
            } else {
                0
            };
            let refuse_over_budget = match config.when_full {
                WhenFull::Refuse => true,
                WhenFull::EvictOldest => shared.over_budget.load(Ordering::Acquire),
            };
            for r in group.drain(..) {
                if config.max_bytes > 0 && used >= config.max_bytes && refuse_over_budget {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = r.done.send(Err(StoreError::OverBudget {
                        used,
                        max: config.max_bytes,
                    }));
                    continue;
                }
                // Counts every point as a new row: a replacement may be refused near the limit.
                if rows + r.points.len() > config.max_memtable_rows.max(r.points.len()) {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = r.done.send(Err(StoreError::Full {
                        max_rows: config.max_memtable_rows,
                    }));
                    continue;
                }
                if let Some((table, source)) = r
                    .points
                    .iter()
                    .find_map(|p| shared.derived.get_key_value(&p.measurement))
                {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = r.done.send(Err(StoreError::Derived {
                        table: table.as_str().to_owned(),
                        source_table: source.as_str().to_owned(),
                    }));
                    continue;
                }
                match state.schemas.check(&r.points, &mut pending) {
                    Ok(grows) => {
                        rows += r.points.len();
                        accepted.push((r, grows));
                    }
                    Err(e) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        let _ = r.done.send(Err(StoreError::Rejected(e)));
                    }
                }
            }
        }
        if !accepted.is_empty() {
            let mut records = Vec::with_capacity(accepted.len());
            let mut dones = Vec::with_capacity(accepted.len());
            for (r, grows) in accepted {
                wal.append(&r.frame);
                records.push((r.points, grows));
                dones.push(r.done);
            }
            match wal.commit() {
                Ok(bytes) => {
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    counters
                        .wal_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    counters
                        .writes
                        .fetch_add(dones.len() as u64, Ordering::Relaxed);
                    {
                        let mut state = shared.write();
                        let State {
                            schemas,
                            active,
                            catalog,
                            ..
                        } = &mut *state;
                        for (points, grows) in records {
                            for p in points {
                                if grows.0 {
                                    admit(schemas, catalog, active, p, partition_ns);
                                } else {
                                    insert_admitted(catalog, active, p, partition_ns);
                                }
                            }
                        }
                    }
                    for d in dones {
                        let _ = d.send(Ok(()));
                    }
                }
                Err(e) => {
                    for d in dones {
                        let _ = d.send(Err(StoreError::Failed));
                    }
                    fail(shared, &mut wal, &e);
                    continue;
                }
            }
        }
        let due = {
            let state = shared.read();
            !state.active.is_empty()
                && state.frozen.is_none()
                && (tick
                    || state.active.rows() >= config.flush_rows
                    || last_freeze.elapsed() >= config.flush_interval)
        };
        if flush_now || due {
            if flush_now {
                // An explicit flush covers everything written before it: finish the running
                // flush first so this one can take all the rest.
                flush::wait_idle(&shared.gate);
            }
            let waiting = std::mem::take(&mut waiting_flushes);
            match freeze(shared, &mut wal, flush_tx, Some(waiting)) {
                Ok(()) => last_freeze = std::time::Instant::now(),
                Err(e) => fail(shared, &mut wal, &e),
            }
        }
    }
    for d in waiting_flushes {
        let _ = d.send(Err(StoreError::ShuttingDown));
    }
    tracing::debug!("WAL writer stopped");
}

/// After a failed write, fsync or rotation the WAL's state is unknown (fsync errors may not be
/// reported twice), so stop acknowledging anything until restart.
fn fail(shared: &Shared, wal: &mut wal::WalWriter, e: &StoreError) {
    tracing::error!(error = %e, "WAL write failed; the store refuses further writes");
    shared.failed.store(true, Ordering::Release);
    wal.discard();
}

/// Rotate the WAL and freeze the active memtables for the flush thread, which must be idle
/// (no frozen memtables). With nothing to flush, answers the waiting flush requests at once.
fn freeze(
    shared: &Shared,
    wal: &mut wal::WalWriter,
    flush_tx: &std::sync::mpsc::SyncSender<flush::Task>,
    waiting: Option<Vec<oneshot::Sender<Result<(), StoreError>>>>,
) -> Result<(), StoreError> {
    let waiting = waiting.unwrap_or_default();
    {
        let state = shared.read();
        if state.frozen.is_some() {
            // A failed flush still holds the last freeze; it is retried by the flush thread.
            drop(state);
            for d in waiting {
                let _ = d.send(Err(StoreError::FlushPending));
            }
            return Ok(());
        }
        if state.active.is_empty() {
            for d in waiting {
                let _ = d.send(Ok(()));
            }
            return Ok(());
        }
    }
    let wal_floor = wal.rotate()?;
    let mut state = shared.write();
    let mem = std::mem::take(&mut state.active);
    let seq = state.catalog.next_seq;
    state.catalog.next_seq += 1;
    let mut high_water_before = BTreeMap::new();
    for (name, table) in &mem.tables {
        let files = state.catalog.tables.entry(name.clone()).or_default();
        let mut before = memtable::SeriesMap::default();
        for (series, max) in table.series_max() {
            let hw = files
                .high_water
                .entry(Arc::clone(series))
                .or_insert(i64::MIN);
            if *hw != i64::MIN {
                before.insert(Arc::clone(series), *hw);
            }
            *hw = (*hw).max(max);
        }
        high_water_before.insert(name.clone(), before);
    }
    let frozen = Arc::new(Frozen {
        mem,
        seq,
        wal_floor,
        high_water_before,
    });
    state.frozen = Some(Arc::clone(&frozen));
    drop(state);
    flush::mark_busy(&shared.gate);
    if flush_tx
        .send(flush::Task {
            frozen,
            done: waiting,
        })
        .is_err()
    {
        flush::mark_idle(&shared.gate);
    }
    Ok(())
}
