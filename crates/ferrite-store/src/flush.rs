//! The flush thread: writes frozen memtables into Parquet files, commits them to the catalog
//! and deletes the WAL segments they cover; between flushes it compacts, applies retention,
//! deletes retired files after their grace period, and asks the writer for timed flushes.
//!
//! A failed flush (disk full, I/O error) leaves the frozen memtables in memory, still
//! queryable and still in the WAL, and is retried every tick; nothing is lost and no partial
//! file enters the catalog.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrite_core::Measurement;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{DataFile, FileMeta, file_path};
use crate::error::StoreError;
use crate::memtable::{RowRef, SeriesKey, Table, build_batches, partition_of};
use crate::{FlushGate, Frozen, Job, Shared, files, wal};

/// Frozen memtables to flush and who waits for them.
pub(crate) struct Task {
    pub(crate) frozen: Arc<Frozen>,
    pub(crate) done: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

pub(crate) fn mark_busy(gate: &FlushGate) {
    *gate.busy.lock().unwrap_or_else(PoisonError::into_inner) = true;
}

pub(crate) fn mark_idle(gate: &FlushGate) {
    *gate.busy.lock().unwrap_or_else(PoisonError::into_inner) = false;
    gate.idle.notify_all();
}

/// Block until no flush is running.
pub(crate) fn wait_idle(gate: &FlushGate) {
    let mut busy = gate.busy.lock().unwrap_or_else(PoisonError::into_inner);
    while *busy {
        busy = gate.idle.wait(busy).unwrap_or_else(PoisonError::into_inner);
    }
}

/// The thread's loop; ends when the writer is gone.
pub(crate) fn run(shared: &Shared, tasks: &Receiver<Task>, jobs: &mpsc::WeakSender<Job>) {
    let tick = shared.config.flush_interval.min(Duration::from_secs(5));
    let mut last_timed = Instant::now();
    // A flush that failed, retried every tick.
    let mut retry: Option<Task> = None;
    loop {
        let task = match tasks.recv_timeout(tick) {
            Ok(t) => Some(t),
            Err(RecvTimeoutError::Timeout) => retry.take(),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(task) = task {
            mark_busy(&shared.gate);
            match flush(shared, &task.frozen) {
                Ok(()) => {
                    shared.counters.flushes.fetch_add(1, Ordering::Relaxed);
                    for d in task.done {
                        let _ = d.send(Ok(()));
                    }
                }
                Err(e) => {
                    shared.counters.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "flush to data files failed; retrying (the rows stay in memory and in the WAL)");
                    retry = Some(task);
                }
            }
            mark_idle(&shared.gate);
            last_timed = Instant::now();
        }
        if last_timed.elapsed() >= shared.config.flush_interval {
            last_timed = Instant::now();
            let due = {
                let state = shared.read();
                !state.active.is_empty() && state.frozen.is_none()
            };
            if due && let Some(tx) = jobs.upgrade() {
                // Full queue: the writer is busy and will flush by size or age itself.
                let _ = tx.try_send(Job::Flush(None));
            }
        }
    }
    if let Some(task) = retry {
        for d in task.done {
            let _ = d.send(Err(StoreError::ShuttingDown));
        }
    }
    tracing::debug!("flush thread stopped");
}

/// Write frozen memtables into files (plain and late per table and partition), commit them
/// to the catalog with the new WAL floor, then delete the covered WAL segments.
fn flush(shared: &Shared, frozen: &Frozen) -> Result<(), StoreError> {
    let partition_ns = shared.config.partition_ns();
    let mut written: Vec<(Measurement, Arc<DataFile>)> = Vec::new();
    let result = (|| {
        for (name, table) in &frozen.mem.tables {
            let schema = shared
                .read()
                .schemas
                .tables
                .get(name)
                .cloned()
                .unwrap_or_default();
            let arrow = schema.arrow();
            let before = frozen.high_water_before.get(name);
            let mut groups: BTreeMap<(i64, bool), Vec<RowRef<'_>>> = BTreeMap::new();
            for (series, time, fields) in table.rows() {
                let late = before
                    .and_then(|b| b.get(series))
                    .is_some_and(|hw| time <= *hw);
                groups
                    .entry((partition_of(time, partition_ns), late))
                    .or_default()
                    .push((series, time, fields));
            }
            for ((partition, late), rows) in groups {
                let file = write_file(
                    shared, name, &schema, &arrow, partition, frozen.seq, late, &rows,
                )?;
                written.push((name.clone(), file));
            }
        }
        Ok::<_, StoreError>(())
    })();
    // Rollup rows, written in the same catalog commit as the rows they summarise.
    let rollups = result.and_then(|()| write_rollups(shared, frozen, &mut written));
    let rollups = match rollups {
        Ok(r) => r,
        Err(e) => {
            remove_files(written.iter().map(|(_, f)| f.path.clone()));
            return Err(e);
        }
    };
    // The latest-row index with these rows, on disk before the catalog naming their files.
    let latest = {
        let state = shared.read();
        let mut latest = (*state.latest).clone();
        for (name, table) in &frozen.mem.tables {
            latest.merge(name, table);
        }
        for (name, table) in &rollups {
            latest.merge(name, table);
        }
        latest.flush_seq = frozen.seq;
        let mut spans: BTreeMap<Measurement, Vec<(i64, i64)>> = BTreeMap::new();
        let files = state
            .catalog
            .tables
            .iter()
            .flat_map(|(name, t)| t.files.iter().map(move |f| (name, f)))
            .chain(written.iter().map(|(name, f)| (name, f)));
        for (name, f) in files {
            spans
                .entry(name.clone())
                .or_default()
                .push((f.meta.min_time, f.meta.max_time));
        }
        let coverage = spans
            .into_iter()
            .map(|(name, s)| (name, crate::latest::Coverage::new(s.into_iter())))
            .collect();
        latest.retain_covered(&coverage);
        latest
    };
    if let Err(e) = latest.save(&shared.dir) {
        remove_files(written.iter().map(|(_, f)| f.path.clone()));
        return Err(e);
    }
    {
        let mut state = shared.write();
        let old_floor = state.catalog.wal_floor;
        for (name, file) in &written {
            state
                .catalog
                .tables
                .entry(name.clone())
                .or_default()
                .files
                .push(Arc::clone(file));
        }
        state.catalog.wal_floor = frozen.wal_floor;
        // The rollup tables' high-water marks: a later row at or before them replaces one.
        for (name, table) in &rollups {
            let hw = &mut state
                .catalog
                .tables
                .entry(name.clone())
                .or_default()
                .high_water;
            for (series, time) in table.series_max() {
                let mark = hw.entry(SeriesKey::clone(series)).or_insert(time);
                *mark = (*mark).max(time);
            }
        }
        if let Err(e) = state.catalog.save(&shared.dir, &state.schemas) {
            for (name, file) in &written {
                if let Some(t) = state.catalog.tables.get_mut(name) {
                    t.files.retain(|f| !Arc::ptr_eq(f, file));
                }
            }
            state.catalog.wal_floor = old_floor;
            drop(state);
            remove_files(written.iter().map(|(_, f)| f.path.clone()));
            return Err(e);
        }
        state.frozen = None;
        state.latest = Arc::new(latest);
    }
    let removed = wal::remove_below(&shared.dir.join("wal"), frozen.wal_floor)?;
    tracing::debug!(
        files = written.len(),
        rows = frozen.mem.rows(),
        wal_segments_removed = removed,
        "flushed"
    );
    Ok(())
}

/// Compute and write the rollup rows of the flushed tables that have rollups (files pushed
/// onto `written`); returns each rollup table's new rows.
fn write_rollups(
    shared: &Shared,
    frozen: &Frozen,
    written: &mut Vec<(Measurement, Arc<DataFile>)>,
) -> Result<Vec<(Measurement, Table)>, StoreError> {
    let partition_ns = shared.config.partition_ns();
    let mut out = Vec::new();
    for (name, table) in &frozen.mem.tables {
        let Some(specs) = shared.rollups.get(name) else {
            continue;
        };
        let retained_from = shared
            .config
            .retention_of(name.as_str())
            .map_or(i64::MIN, |r| {
                partition_of(
                    now_ns().saturating_sub(i64::try_from(r.as_nanos()).unwrap_or(i64::MAX)),
                    partition_ns,
                )
            });
        let (raw, files, latest) = {
            let state = shared.read();
            let raw = state.schemas.tables.get(name).cloned().unwrap_or_default();
            let files = state
                .catalog
                .tables
                .get(name)
                .map(|t| t.files.clone())
                .unwrap_or_default();
            (raw, files, Arc::clone(&state.latest))
        };
        let input = crate::rollup::Input {
            raw: &raw,
            frozen: table,
            high_water_before: frozen.high_water_before.get(name),
            files,
            tier: &shared.cold,
            retained_from,
            rollups: specs
                .iter()
                .map(|spec| (spec.clone(), latest.tables.get(&spec.name)))
                .collect(),
        };
        for (rollup, schema, rows) in crate::rollup::rows_for_flush(&input)? {
            let high_water = {
                let mut state = shared.write();
                // The rollup table's columns follow the raw table's (which only grow).
                if state.schemas.tables.get(&rollup) != Some(&schema) {
                    state.schemas.tables.insert(rollup.clone(), schema.clone());
                }
                state
                    .catalog
                    .tables
                    .get(&rollup)
                    .map(|t| t.high_water.clone())
                    .unwrap_or_default()
            };
            let arrow = schema.arrow();
            let mut groups: BTreeMap<(i64, bool), Vec<RowRef<'_>>> = BTreeMap::new();
            for (series, time, fields) in rows.rows() {
                let late = high_water.get(series).is_some_and(|hw| time <= *hw);
                groups
                    .entry((partition_of(time, partition_ns), late))
                    .or_default()
                    .push((series, time, fields));
            }
            for ((partition, late), group) in groups {
                let file = write_file(
                    shared, &rollup, &schema, &arrow, partition, frozen.seq, late, &group,
                )?;
                written.push((rollup.clone(), file));
            }
            out.push((rollup, rows));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn write_file(
    shared: &Shared,
    table: &Measurement,
    schema: &crate::schema::TableSchema,
    arrow: &arrow::datatypes::SchemaRef,
    partition: i64,
    seq: u64,
    late: bool,
    rows: &[RowRef<'_>],
) -> Result<Arc<DataFile>, StoreError> {
    let id = {
        let mut state = shared.write();
        let id = state.catalog.next_file_id;
        state.catalog.next_file_id += 1;
        id
    };
    let (min_time, max_time) = rows
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), (_, t, _)| {
            (lo.min(*t), hi.max(*t))
        });
    let batches = build_batches(schema, arrow, rows.iter().copied())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    let mut meta = FileMeta {
        id,
        seq,
        partition,
        min_time,
        max_time,
        rows: rows.len() as u64,
        bytes: 0,
        late,
        cold: false,
    };
    let path = file_path(&shared.dir, table.as_str(), &meta);
    meta.bytes = files::write(&path, arrow, schema.tag_keys.len(), &batches)?;
    Ok(Arc::new(DataFile::at(&shared.dir, table.as_str(), meta)))
}

fn remove_files(paths: impl Iterator<Item = PathBuf>) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "could not delete a data file");
        }
    }
}

/// The maintenance thread's loop: [`maintain`] every tick, on a thread of its own so a long
/// compaction never holds up a flush; ends when `stop`'s sender is dropped.
pub(crate) fn run_maintenance(shared: &Shared, stop: &Receiver<()>) {
    let tick = shared.config.flush_interval.min(Duration::from_secs(5));
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
        if let Err(e) = maintain(shared) {
            tracing::error!(error = %e, "compaction or retention failed; retrying later");
        }
    }
    tracing::debug!("maintenance thread stopped");
}

/// Apply retention, compact what needs it, delete retired files whose grace has passed.
/// Returns the number of compactions done.
pub(crate) fn maintain(shared: &Shared) -> Result<usize, StoreError> {
    let _guard = shared
        .maintenance
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    retention(shared)?;
    let mut compactions = 0;
    while let Some((table, inputs)) = pick_compaction(shared) {
        compact(shared, &table, &inputs)?;
        compactions += 1;
    }
    // Compaction first: a partition goes cold in as few files as it can.
    let tiered = tier(shared);
    let budget = enforce_budget(shared);
    sweep_graveyard(shared);
    tiered?;
    budget?;
    Ok(compactions)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Drop the files of partitions that ended before their table's retention.
fn retention(shared: &Shared) -> Result<(), StoreError> {
    let partition_ns = shared.config.partition_ns();
    let now = now_ns();
    let mut state = shared.write();
    let mut dropped: Vec<(Measurement, Arc<DataFile>)> = Vec::new();
    for (name, files) in &state.catalog.tables {
        let Some(retention) = shared.config.retention_of(name.as_str()) else {
            continue;
        };
        let cutoff = now.saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX));
        for f in &files.files {
            if f.meta.partition.saturating_add(partition_ns) <= cutoff {
                dropped.push((name.clone(), Arc::clone(f)));
            }
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    drop_from_catalog(shared, &mut state, &dropped)?;
    drop(state);
    let partitions: std::collections::BTreeSet<(Measurement, i64)> = dropped
        .iter()
        .map(|(n, f)| (n.clone(), f.meta.partition))
        .collect();
    shared
        .counters
        .partitions_dropped
        .fetch_add(partitions.len() as u64, Ordering::Relaxed);
    tracing::info!(
        partitions = partitions.len(),
        files = dropped.len(),
        "retention dropped partitions"
    );
    retire_files(shared, dropped.into_iter().map(|(_, f)| f));
    Ok(())
}

/// Take `dropped` out of the catalog and commit it; on failure the catalog is as it was.
fn drop_from_catalog(
    shared: &Shared,
    state: &mut crate::State,
    dropped: &[(Measurement, Arc<DataFile>)],
) -> Result<(), StoreError> {
    let before: BTreeMap<Measurement, Vec<Arc<DataFile>>> = state
        .catalog
        .tables
        .iter()
        .map(|(n, t)| (n.clone(), t.files.clone()))
        .collect();
    for (name, file) in dropped {
        if let Some(t) = state.catalog.tables.get_mut(name) {
            t.files.retain(|f| !Arc::ptr_eq(f, file));
        }
    }
    if let Err(e) = state.catalog.save(&shared.dir, &state.schemas) {
        for (name, files) in before {
            if let Some(t) = state.catalog.tables.get_mut(&name) {
                t.files = files;
            }
        }
        return Err(e);
    }
    Ok(())
}

/// A compaction to do: every file of a partition that holds a late file, or the small files
/// of a partition that has `compaction_min_files` of them; within `compaction_max_rows`.
fn pick_compaction(shared: &Shared) -> Option<(Measurement, Vec<Arc<DataFile>>)> {
    const SMALL_FILE_BYTES: u64 = 64 << 20;
    let config = &shared.config;
    let state = shared.read();
    for (name, files) in &state.catalog.tables {
        let mut partitions: BTreeMap<i64, Vec<&Arc<DataFile>>> = BTreeMap::new();
        for f in &files.files {
            partitions.entry(f.meta.partition).or_default().push(f);
        }
        for files in partitions.values() {
            if files.iter().any(|f| f.meta.late) {
                // A late file can share rows only with files whose time span meets its own,
                // so it is merged with those alone (and theirs, transitively), not with the
                // whole partition: late rows near the newest data rewrite the newest files.
                for group in overlapping(files) {
                    let rows: u64 = group.iter().map(|f| f.meta.rows).sum();
                    if group.iter().any(|f| f.meta.late)
                        && rows <= config.compaction_max_rows as u64
                    {
                        return Some((name.clone(), group.into_iter().map(Arc::clone).collect()));
                    }
                }
                continue;
            }
            if files.iter().all(|f| !f.meta.late) {
                let mut small: Vec<_> = files
                    .iter()
                    .filter(|f| f.meta.bytes < SMALL_FILE_BYTES)
                    .collect();
                small.sort_by_key(|f| f.meta.seq);
                let mut picked = Vec::new();
                let mut rows = 0u64;
                for f in small {
                    if rows + f.meta.rows > config.compaction_max_rows as u64 && !picked.is_empty()
                    {
                        break;
                    }
                    rows += f.meta.rows;
                    picked.push(Arc::clone(f));
                }
                if picked.len() >= config.compaction_min_files {
                    return Some((name.clone(), picked));
                }
            }
        }
    }
    None
}

/// The files of one partition in groups whose time spans meet (directly or through other
/// files of the group); files of different groups cannot hold a row of the same time.
fn overlapping<'a>(files: &[&'a Arc<DataFile>]) -> Vec<Vec<&'a Arc<DataFile>>> {
    let mut sorted = files.to_vec();
    sorted.sort_by_key(|f| (f.meta.min_time, f.meta.max_time));
    let mut groups: Vec<Vec<&Arc<DataFile>>> = Vec::new();
    let mut reach = i64::MIN;
    for f in sorted {
        match groups.last_mut() {
            Some(g) if f.meta.min_time <= reach => {
                g.push(f);
                reach = reach.max(f.meta.max_time);
            }
            _ => {
                groups.push(vec![f]);
                reach = f.meta.max_time;
            }
        }
    }
    groups
}

/// Merge `inputs` (one partition of `table`) into one file, last write wins by sequence, and
/// swap it in for them in the catalog.
fn compact(
    shared: &Shared,
    table: &Measurement,
    inputs: &[Arc<DataFile>],
) -> Result<(), StoreError> {
    let schema = shared
        .read()
        .schemas
        .tables
        .get(table)
        .cloned()
        .unwrap_or_default();
    let arrow = schema.arrow();
    let mut sorted = inputs.to_vec();
    sorted.sort_by_key(|f| f.meta.seq);
    let mut merged = Table::default();
    for f in &sorted {
        for batch in shared.cold.read(f)? {
            merged
                .insert_batch(&schema, &batch)
                .map_err(|e| StoreError::Encode(e.to_string()))?;
        }
    }
    let rows: Vec<_> = merged.rows().collect();
    let seq = sorted.iter().map(|f| f.meta.seq).max().unwrap_or(0);
    let partition = sorted.first().map_or(0, |f| f.meta.partition);
    let output = write_file(shared, table, &schema, &arrow, partition, seq, false, &rows)?;
    {
        let mut state = shared.write();
        let Some(t) = state.catalog.tables.get_mut(table) else {
            remove_files(std::iter::once(output.path.clone()));
            return Ok(());
        };
        let before = t.files.clone();
        t.files
            .retain(|f| !inputs.iter().any(|i| Arc::ptr_eq(f, i)));
        t.files.push(Arc::clone(&output));
        if let Err(e) = state.catalog.save(&shared.dir, &state.schemas) {
            if let Some(t) = state.catalog.tables.get_mut(table) {
                t.files = before;
            }
            drop(state);
            remove_files(std::iter::once(output.path.clone()));
            return Err(e);
        }
    }
    shared.counters.compactions.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(table = %table, inputs = inputs.len(), rows = output.meta.rows, "compacted");
    retire_files(shared, inputs.iter().cloned());
    Ok(())
}

/// A file dropped from the catalog, to delete once `store.file_grace` has passed.
pub(crate) enum Retired {
    /// A local file (or the local copy of a file that went cold).
    Local(PathBuf),
    /// A cold file: its object and cached copy.
    Cold { id: u64, key: String },
}

impl Retired {
    fn of(f: &DataFile) -> Self {
        if f.meta.cold {
            Self::Cold {
                id: f.meta.id,
                key: f.key.clone(),
            }
        } else {
            Self::Local(f.path.clone())
        }
    }
}

fn retire(shared: &Shared, files: impl Iterator<Item = Retired>) {
    let now = Instant::now();
    shared
        .graveyard
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(files.map(|f| (now, f)));
}

fn retire_files(shared: &Shared, files: impl Iterator<Item = Arc<DataFile>>) {
    retire(shared, files.map(|f| Retired::of(&f)));
}

fn sweep_graveyard(shared: &Shared) {
    let grace = shared.config.file_grace;
    let due: Vec<Retired> = {
        let mut g = shared
            .graveyard
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (due, keep): (Vec<_>, Vec<_>) = g.drain(..).partition(|(t, _)| t.elapsed() >= grace);
        *g = keep;
        due.into_iter().map(|(_, r)| r).collect()
    };
    for r in due {
        match r {
            Retired::Local(path) => remove_files(std::iter::once(path)),
            Retired::Cold { id, key } => {
                // Left behind on failure: the next open deletes objects the catalog lacks.
                if let Err(e) = shared.cold.delete(id, &key) {
                    tracing::warn!(error = %e, "could not delete a retired cold file");
                }
            }
        }
    }
}

/// Move the files of partitions past their table's `cold_after` to the cold tier: upload,
/// commit a catalog that marks them cold, retire the local copies. Returns how many moved.
fn tier(shared: &Shared) -> Result<usize, StoreError> {
    /// Files uploaded per catalog commit.
    const BATCH: usize = 32;
    if !shared.cold.enabled() || !shared.config.tiering() {
        return Ok(0);
    }
    let partition_ns = shared.config.partition_ns();
    let now = now_ns();
    let due: Vec<(Measurement, Arc<DataFile>)> = {
        let state = shared.read();
        state
            .catalog
            .tables
            .iter()
            .filter_map(|(name, t)| {
                let after = shared.config.cold_after_of(name.as_str())?;
                let cutoff =
                    now.saturating_sub(i64::try_from(after.as_nanos()).unwrap_or(i64::MAX));
                Some(
                    t.files
                        .iter()
                        .filter(move |f| {
                            !f.meta.cold && f.meta.partition.saturating_add(partition_ns) <= cutoff
                        })
                        .map(move |f| (name.clone(), Arc::clone(f))),
                )
            })
            .flatten()
            .collect()
    };
    let mut moved = 0;
    for batch in due.chunks(BATCH) {
        let mut uploaded = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (name, f) in batch {
            match shared.cold.upload(&f.path, &f.key) {
                Ok(()) => uploaded.push((name, f)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        moved += commit_cold(shared, &uploaded)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if moved > 0 {
        tracing::info!(files = moved, "moved files to the cold tier");
    }
    Ok(moved)
}

/// Mark `uploaded` cold in the catalog (those still in it) and retire their local copies;
/// objects of files the catalog dropped meanwhile are deleted again.
fn commit_cold(
    shared: &Shared,
    uploaded: &[(&Measurement, &Arc<DataFile>)],
) -> Result<usize, StoreError> {
    if uploaded.is_empty() {
        return Ok(0);
    }
    let mut state = shared.write();
    let before: Vec<(Measurement, Vec<Arc<DataFile>>)> = uploaded
        .iter()
        .filter_map(|(name, _)| {
            Some((
                (*name).clone(),
                state.catalog.tables.get(*name)?.files.clone(),
            ))
        })
        .collect();
    let old_url = state.catalog.cold_url.clone();
    let mut swapped = Vec::new();
    let mut gone = Vec::new();
    for (name, f) in uploaded {
        let slot = state
            .catalog
            .tables
            .get_mut(*name)
            .and_then(|t| t.files.iter_mut().find(|x| Arc::ptr_eq(x, f)));
        match slot {
            Some(slot) => {
                let meta = FileMeta {
                    cold: true,
                    ..f.meta.clone()
                };
                *slot = Arc::new(DataFile::at(&shared.dir, name.as_str(), meta));
                swapped.push(Arc::clone(f));
            }
            None => gone.push((f.meta.id, f.key.clone())),
        }
    }
    if !swapped.is_empty() {
        state.catalog.cold_url = Some(shared.config.cold_url.clone());
        if let Err(e) = state.catalog.save(&shared.dir, &state.schemas) {
            for (name, files) in before {
                if let Some(t) = state.catalog.tables.get_mut(&name) {
                    t.files = files;
                }
            }
            state.catalog.cold_url = old_url;
            drop(state);
            for f in &swapped {
                gone.push((f.meta.id, f.key.clone()));
            }
            delete_objects(shared, &gone);
            return Err(e);
        }
    }
    drop(state);
    delete_objects(shared, &gone);
    let n = swapped.len();
    retire(
        shared,
        swapped.into_iter().map(|f| Retired::Local(f.path.clone())),
    );
    Ok(n)
}

fn delete_objects(shared: &Shared, objects: &[(u64, String)]) {
    for (id, key) in objects {
        if let Err(e) = shared.cold.delete(*id, key) {
            tracing::warn!(error = %e, "could not delete an object the catalog does not name");
        }
    }
}

/// With `when_full = "evict_oldest"`: while the data files take more than `store.max_bytes`,
/// delete the oldest partition (of any table, never the newest of its table). Sets
/// `over_budget` when they still do not fit, so the writer refuses writes meanwhile.
fn enforce_budget(shared: &Shared) -> Result<(), StoreError> {
    let max = shared.config.max_bytes;
    if max == 0 || shared.config.when_full != crate::WhenFull::EvictOldest {
        return Ok(());
    }
    let mut state = shared.write();
    let mut used: u64 = state
        .catalog
        .tables
        .values()
        .flat_map(|t| t.files.iter())
        .map(|f| f.meta.bytes)
        .sum();
    if used <= max {
        shared.over_budget.store(false, Ordering::Release);
        return Ok(());
    }
    // (partition start, table) → its files, oldest first; each table's newest kept.
    let mut partitions: BTreeMap<(i64, Measurement), Vec<Arc<DataFile>>> = BTreeMap::new();
    for (name, t) in &state.catalog.tables {
        let newest = t.files.iter().map(|f| f.meta.partition).max();
        for f in &t.files {
            if Some(f.meta.partition) != newest {
                partitions
                    .entry((f.meta.partition, name.clone()))
                    .or_default()
                    .push(Arc::clone(f));
            }
        }
    }
    let mut evicted = Vec::new();
    for ((partition, name), files) in partitions {
        if used <= max {
            break;
        }
        used -= files.iter().map(|f| f.meta.bytes).sum::<u64>();
        evicted.push((partition, name, files));
    }
    if !evicted.is_empty() {
        let dropped: Vec<(Measurement, Arc<DataFile>)> = evicted
            .iter()
            .flat_map(|(_, name, files)| files.iter().map(|f| (name.clone(), Arc::clone(f))))
            .collect();
        drop_from_catalog(shared, &mut state, &dropped)?;
    }
    shared.over_budget.store(used > max, Ordering::Release);
    drop(state);
    if !evicted.is_empty() {
        shared
            .counters
            .partitions_evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            partitions = evicted.len(),
            oldest = %ferrite_core::Timestamp::from_nanos(evicted[0].0),
            bytes_now = used,
            max_bytes = max,
            "deleted the oldest partitions to fit store.max_bytes (when_full = evict_oldest)"
        );
    }
    retire_files(shared, evicted.into_iter().flat_map(|(_, _, f)| f));
    Ok(())
}
