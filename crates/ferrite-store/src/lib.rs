//! Ferrite's time-series store.
//!
//! Owns the write path of telemetry: [`Store::submit`] validates points against their
//! table's schema, appends them to the write-ahead log ([`wal`]), fsyncs (one fsync serves
//! every write queued meanwhile: group commit), applies them to the in-memory tables and only
//! then completes the [`PendingWrite`]. On [`Store::open`] the log is replayed, so every
//! completed write survives a crash. Readers take consistent Arrow snapshots of a table
//! ([`Store::snapshot`]).
//!
//! Does not (yet) flush memtables to Parquet, compact, or apply retention; those arrive with
//! the storage engine and the WAL then gets truncated after each flush. It knows nothing of
//! MQTT or SQL.

mod error;
mod memtable;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferrite_core::Point;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use error::StoreError;
use memtable::{Memtables, PendingTypes};
pub use wal::ReplayReport;

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
    /// Rows the in-memory tables may hold. Until memtables are flushed to Parquet files
    /// (storage engine issue), this bounds memory: writes beyond it are refused as
    /// retryable (MQTT 5 reason 0x97 quota exceeded, HTTP 503), never half-applied.
    pub max_memtable_rows: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            write_queue: 8192,
            max_group_commit: 4096,
            commit_linger: Duration::ZERO,
            max_memtable_rows: 5_000_000,
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
        if self.max_memtable_rows == 0 {
            errs.push("store.max_memtable_rows must be at least 1".to_owned());
        }
        if self.commit_linger > Duration::from_millis(100) {
            errs.push("store.commit_linger must be at most 100ms".to_owned());
        }
        errs
    }
}

/// Counters of the store, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Write requests made durable.
    pub writes: u64,
    /// Write requests rejected (schema conflicts).
    pub rejected: u64,
    /// Group commits (fsyncs) done.
    pub commits: u64,
    /// Bytes appended to the WAL since start.
    pub wal_bytes: u64,
    /// Rows held in memtables.
    pub rows: usize,
}

struct WriteRequest {
    points: Vec<Point>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    rejected: AtomicU64,
    commits: AtomicU64,
    wal_bytes: AtomicU64,
}

/// A consistent copy of one table's rows.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's schema at the time of the snapshot.
    pub schema: SchemaRef,
    /// Its rows, sorted by series then time.
    pub batches: Vec<RecordBatch>,
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
    tx: RwLock<Option<mpsc::Sender<WriteRequest>>>,
    /// Written by the WAL writer thread only (after each fsync), read by queries.
    memtables: Arc<RwLock<Memtables>>,
    counters: Arc<Counters>,
    /// Set by the writer thread when a WAL write failed; checked by `submit`.
    failed: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl Store {
    /// Open (or create) the store under `dir`, replaying its WAL.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<(Self, ReplayReport), StoreError> {
        let mut memtables = Memtables::default();
        let (wal, report) = wal::open(&dir.join("wal"), |record| memtables.apply(record.points))?;
        let memtables = Arc::new(RwLock::new(memtables));
        let (tx, rx) = mpsc::channel(config.write_queue.max(1));
        let counters = Arc::new(Counters::default());
        let failed = Arc::new(AtomicBool::new(false));
        let writer = {
            let memtables = Arc::clone(&memtables);
            let counters = Arc::clone(&counters);
            let failed = Arc::clone(&failed);
            let limits = Limits {
                max_group: config.max_group_commit.max(1),
                linger: config.commit_linger,
                max_rows: config.max_memtable_rows,
            };
            std::thread::Builder::new()
                .name("ferrite-wal".into())
                .spawn(move || run_writer(rx, wal, &memtables, &counters, &failed, &limits))
                .map_err(|e| StoreError::io("starting the WAL writer for", dir, e))?
        };
        Ok((
            Self {
                tx: RwLock::new(Some(tx)),
                memtables,
                counters,
                failed,
                writer: Mutex::new(Some(writer)),
                dir: dir.to_owned(),
            },
            report,
        ))
    }

    /// Queue `points` as one write (all stored or none). Waits while the queue is full.
    pub async fn submit(&self, points: Vec<Point>) -> Result<PendingWrite, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        let tx = self
            .tx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::ShuttingDown)?;
        let (done, rx) = oneshot::channel();
        tx.send(WriteRequest { points, done })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(PendingWrite(rx))
    }

    /// Queue and wait: returns once the points are durable and queryable.
    pub async fn write(&self, points: Vec<Point>) -> Result<(), StoreError> {
        self.submit(points).await?.wait().await
    }

    /// Names of the tables that have rows.
    pub fn tables(&self) -> Vec<String> {
        self.read().table_names()
    }

    /// A table's current schema.
    pub fn schema(&self, table: &str) -> Option<SchemaRef> {
        self.read().schema(table)
    }

    /// A consistent copy of a table's rows; `None` if there is no such table.
    pub fn snapshot(&self, table: &str) -> Option<Result<TableSnapshot, StoreError>> {
        let snap = self.read().snapshot(table)?;
        Some(
            snap.map(|(schema, batches)| TableSnapshot { schema, batches })
                .map_err(|e| StoreError::Encode(e.to_string())),
        )
    }

    /// Counters since start.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            wal_bytes: self.counters.wal_bytes.load(Ordering::Relaxed),
            rows: self.read().rows(),
        }
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop taking writes, let the writer finish every queued write, and wait for it.
    /// Blocking: call from a blocking context.
    pub fn close(&self) {
        self.tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the WAL writer thread panicked");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Memtables> {
        self.memtables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it drained; no join here (Drop may run on
        // an async worker).
        self.tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// What bounds one group commit and the memtables.
struct Limits {
    max_group: usize,
    linger: Duration,
    max_rows: usize,
}

/// The WAL writer thread: take a group of requests, validate, append, fsync once, apply to
/// the memtables, then complete every request of the group.
fn run_writer(
    mut rx: mpsc::Receiver<WriteRequest>,
    mut wal: wal::WalWriter,
    memtables: &RwLock<Memtables>,
    counters: &Counters,
    failed: &AtomicBool,
    limits: &Limits,
) {
    let (max, linger) = (limits.max_group, limits.linger);
    let mut group: Vec<WriteRequest> = Vec::with_capacity(max);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        let deadline = std::time::Instant::now() + linger;
        while group.len() < max {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        if failed.load(Ordering::Acquire) {
            for r in group.drain(..) {
                let _ = r.done.send(Err(StoreError::Failed));
            }
            continue;
        }
        // Validate against the schema; a rejected request is answered now and not logged.
        let mut accepted = Vec::with_capacity(group.len());
        {
            let mem = memtables.read().unwrap_or_else(PoisonError::into_inner);
            let mut pending = PendingTypes::default();
            let mut rows = mem.rows();
            for r in group.drain(..) {
                // Counts every point as a new row: a replacement may be refused near the limit.
                if rows + r.points.len() > limits.max_rows {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = r.done.send(Err(StoreError::Full {
                        max_rows: limits.max_rows,
                    }));
                    continue;
                }
                match mem.check(&r.points, &mut pending) {
                    Ok(()) => {
                        rows += r.points.len();
                        accepted.push(r);
                    }
                    Err(e) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        let _ = r.done.send(Err(StoreError::Rejected(e)));
                    }
                }
            }
        }
        if accepted.is_empty() {
            continue;
        }
        let mut records = Vec::with_capacity(accepted.len());
        let mut dones = Vec::with_capacity(accepted.len());
        for r in accepted {
            records.push(wal::WalRecord { points: r.points });
            dones.push(r.done);
        }
        let appended = records.iter().try_for_each(|rec| wal.append(rec));
        match appended.and_then(|()| wal.commit()) {
            Ok(bytes) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .wal_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                counters
                    .writes
                    .fetch_add(dones.len() as u64, Ordering::Relaxed);
                {
                    let mut mem = memtables.write().unwrap_or_else(PoisonError::into_inner);
                    for rec in records {
                        mem.apply(rec.points);
                    }
                }
                for d in dones {
                    let _ = d.send(Ok(()));
                }
            }
            Err(e) => {
                // After a failed write or fsync the file's state is unknown (fsync errors may
                // not be reported twice), so stop acknowledging anything until restart.
                tracing::error!(error = %e, "WAL write failed; the store refuses further writes");
                failed.store(true, Ordering::Release);
                wal.discard();
                for d in dones {
                    let _ = d.send(Err(StoreError::Failed));
                }
            }
        }
    }
    tracing::debug!("WAL writer stopped");
}
