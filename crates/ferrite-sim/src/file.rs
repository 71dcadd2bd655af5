//! File mode: offline datasets from a scenario, in line protocol, NDJSON or CSV
//! ([`generate_file`]), with the ground truth of the faults beside them.
//!
//! [`FleetStream`] merges the devices' readings into **arrival order** — the order a server
//! would receive them — while each row carries its event time on the device's clock. So a
//! delayed reading appears after readings stamped later than it (out of order, late), a
//! duplicate appears twice with one timestamp, and a skewed clock shows in the timestamps,
//! exactly as the ground truth says. Ties are broken by device index, then generation order.
//!
//! Memory is bounded by the fleet, not by the time span: the stream keeps one generator per
//! device and, per device, only the readings not yet written (the current tick's, plus
//! delayed readings still in flight), merged through a heap of one entry per device. Output
//! is written in 64 KiB chunks as it is produced. 1 000 devices × 1 day × 2 measurements at
//! a 10 s interval (17 million rows) runs in constant memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use ferrite_core::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::encode::{CsvLayout, OutputFormat};
use crate::faults::{FaultCounts, TruthRecord, count};
use crate::fleet::{Cadence, DeviceSim, Fleet, FleetConfig, Outgoing};
use crate::scenario::Scenario;
use crate::{Progress, SimError};

/// Bytes buffered before a write to the output.
const CHUNK: usize = 64 * 1024;

/// What dataset to write.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    /// Number of devices.
    pub devices: usize,
    /// First instant (inclusive).
    pub from: Timestamp,
    /// Last instant (exclusive).
    pub to: Timestamp,
    /// A reading every interval per device ([`Cadence::Interval`]) or a mean number of
    /// readings per second over the fleet following λ(t) ([`Cadence::Rate`]).
    pub cadence: Cadence,
    /// The format.
    pub format: OutputFormat,
    /// Seed: the same seed and configuration give a byte-identical file.
    pub seed: u64,
    /// Device id prefix; `None` takes the scenario's.
    pub prefix: Option<String>,
    /// Inject the scenario's faults (false: clean data, no truth).
    pub faults: bool,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReport {
    /// The scenario's name.
    pub scenario: String,
    /// Devices simulated.
    pub devices: usize,
    /// First instant, Unix ns.
    pub from_ns: i64,
    /// End (exclusive), Unix ns.
    pub to_ns: i64,
    /// Interval between a device's readings, seconds (interval cadence).
    pub interval_s: Option<f64>,
    /// Mean readings per second over the fleet (rate cadence).
    pub rate: Option<f64>,
    /// The format.
    pub format: OutputFormat,
    /// The seed.
    pub seed: u64,
    /// Rows (readings, duplicates included) written.
    pub rows: u64,
    /// Rows per measurement.
    pub measurements: BTreeMap<String, u64>,
    /// Bytes written to the output.
    pub bytes: u64,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Where the data went, if written to a path.
    pub out: Option<PathBuf>,
    /// Where the ground truth went, if written to a path.
    pub truth: Option<PathBuf>,
    /// False if cancelled before the end.
    pub complete: bool,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

/// A reading waiting in a device's queue, ordered by (send time, generation order).
#[derive(Debug)]
pub(crate) struct Held {
    /// When it leaves, true Unix ns.
    pub(crate) send_at: i64,
    /// Generation order, breaking ties.
    pub(crate) seq: u64,
    /// The reading.
    pub(crate) item: Outgoing,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.send_at, self.seq) == (other.send_at, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.send_at, self.seq).cmp(&(other.send_at, other.seq))
    }
}

/// One device's generator and its readings not yet emitted.
#[derive(Debug)]
struct Cursor {
    sim: DeviceSim,
    pending: BinaryHeap<Reverse<Held>>,
    next_tick: Option<i64>,
    seq: u64,
}

impl Cursor {
    /// Tick until the earliest pending reading is final: no later tick can send earlier
    /// (a tick at t sends at ≥ t), or there are no more ticks. Returns its send time.
    fn fill(&mut self, scratch: &mut Vec<Outgoing>, truth: &mut Vec<TruthRecord>) -> Option<i64> {
        while let Some(t) = self.next_tick {
            if self.pending.peek().is_some_and(|h| h.0.send_at <= t) {
                break;
            }
            self.sim.tick(t, scratch, truth);
            for item in scratch.drain(..) {
                self.seq += 1;
                self.pending.push(Reverse(Held {
                    send_at: item.send_at_ns,
                    seq: self.seq,
                    item,
                }));
            }
            self.next_tick = self.sim.next_tick_time();
        }
        self.pending.peek().map(|h| h.0.send_at)
    }
}

/// Every device's readings merged into arrival order; see the [module docs](self).
#[derive(Debug)]
pub struct FleetStream {
    fleet: Fleet,
    cursors: Vec<Cursor>,
    /// (send time, device): one entry per device with something pending.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    truth: Vec<TruthRecord>,
    scratch: Vec<Outgoing>,
}

impl FleetStream {
    /// The stream of `fleet`'s devices over its configured span.
    pub fn new(fleet: Fleet) -> Self {
        let mut stream = Self {
            cursors: Vec::with_capacity(fleet.devices()),
            heap: BinaryHeap::with_capacity(fleet.devices()),
            truth: Vec::new(),
            scratch: Vec::new(),
            fleet,
        };
        for i in 0..stream.fleet.devices() {
            let mut sim = stream.fleet.device(i);
            let next_tick = sim.next_tick_time();
            let mut cursor = Cursor {
                sim,
                pending: BinaryHeap::new(),
                next_tick,
                seq: 0,
            };
            if let Some(at) = cursor.fill(&mut stream.scratch, &mut stream.truth) {
                stream.heap.push(Reverse((at, i)));
            }
            stream.cursors.push(cursor);
        }
        stream
    }

    /// The fleet.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Device `index`'s generator (for its id and tags, to encode its readings).
    pub fn device(&self, index: usize) -> Option<&DeviceSim> {
        self.cursors.get(index).map(|c| &c.sim)
    }

    /// Ground-truth records produced so far, oldest first; taking them empties the list.
    pub fn take_truth(&mut self) -> Vec<TruthRecord> {
        std::mem::take(&mut self.truth)
    }

    /// When the next reading leaves (true Unix ns); `None` at the end of the stream.
    pub fn next_send_time(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Readings generated but not yet emitted, over all devices: the stream's memory.
    pub fn buffered(&self) -> usize {
        self.cursors.iter().map(|c| c.pending.len()).sum()
    }

    /// Append up to `rows` readings to `out` as line protocol or NDJSON — an HTTP write batch
    /// (`POST /api/v2/write` takes line protocol with nanosecond timestamps). Returns the
    /// rows appended; fewer than asked only at the end of the stream. Ground truth
    /// accumulates for [`take_truth`](Self::take_truth). CSV is refused (it needs a header);
    /// use [`CsvLayout`].
    pub fn next_batch(
        &mut self,
        rows: usize,
        format: OutputFormat,
        out: &mut String,
    ) -> Result<usize, SimError> {
        if format == OutputFormat::Csv {
            return Err(SimError::Config(
                "batches are line protocol or NDJSON".to_owned(),
            ));
        }
        let mut n = 0;
        while n < rows {
            let Some(item) = self.next() else { break };
            if let Some(device) = self.device(item.reading.device) {
                match format {
                    OutputFormat::Ndjson => device.write_ndjson(&item.reading, out),
                    _ => device.write_line_protocol(&item.reading, out),
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

impl Iterator for FleetStream {
    type Item = Outgoing;

    fn next(&mut self) -> Option<Outgoing> {
        let Reverse((_, device)) = self.heap.pop()?;
        let cursor = self.cursors.get_mut(device)?;
        let Reverse(held) = cursor.pending.pop()?;
        if let Some(at) = cursor.fill(&mut self.scratch, &mut self.truth) {
            self.heap.push(Reverse((at, device)));
        }
        Some(held.item)
    }
}

/// Problems with a dataset's configuration, found before any file is created.
fn validate(config: &FileConfig) -> Result<(), SimError> {
    let (from, to) = (config.from.as_nanos(), config.to.as_nanos());
    if to <= from {
        return Err(SimError::Config(format!(
            "the end ({to} ns) must be after the start ({from} ns)"
        )));
    }
    match config.cadence {
        Cadence::Interval(d) if d.is_zero() => {
            return Err(SimError::Config("the interval must be > 0".to_owned()));
        }
        Cadence::Rate(r) if !(r.is_finite() && r > 0.0) => {
            return Err(SimError::Config("the rate must be > 0".to_owned()));
        }
        Cadence::Manual => {
            return Err(SimError::Config(
                "a dataset needs an interval or a rate".to_owned(),
            ));
        }
        _ => {}
    }
    if config.devices == 0 {
        return Err(SimError::Config("at least one device is needed".to_owned()));
    }
    Ok(())
}

/// Write a dataset of `scenario` to `out` (and the ground truth as NDJSON to `truth`),
/// counting rows in `progress.sent`; stops early (report `complete: false`) when `cancel`
/// fires. CPU-bound and blocking: run it on a blocking thread.
pub fn generate_file(
    scenario: &Scenario,
    config: &FileConfig,
    mut out: impl Write,
    mut truth: Option<&mut dyn Write>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<FileReport, SimError> {
    let start = Instant::now();
    validate(config)?;
    let (from, to) = (config.from.as_nanos(), config.to.as_nanos());
    let fleet = Fleet::new(
        scenario,
        FleetConfig {
            devices: config.devices,
            seed: config.seed,
            prefix: config.prefix.clone(),
            start_ns: from,
            end_ns: Some(to),
            cadence: config.cadence,
            faults: config.faults,
        },
    )?;
    let mut per_measurement = vec![0u64; fleet.measurements()];
    let mut faults = FaultCounts::new();
    let mut stream = FleetStream::new(fleet);
    let csv = (config.format == OutputFormat::Csv).then(|| CsvLayout::new(stream.fleet()));
    let mut buf = String::with_capacity(CHUNK + 4096);
    let mut truth_buf = String::new();
    if let Some(csv) = &csv {
        buf.push_str(&csv.header());
    }
    let (mut rows, mut bytes, mut unreported) = (0u64, 0u64, 0u64);
    let mut complete = true;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| SimError::Io { what, source }
    };
    while let Some(item) = stream.next() {
        let reading = &item.reading;
        if let Some(device) = stream.device(reading.device) {
            match (&csv, config.format) {
                (Some(csv), _) => csv.write_row(device, reading, &mut buf),
                (None, OutputFormat::Ndjson) => device.write_ndjson(reading, &mut buf),
                (None, _) => device.write_line_protocol(reading, &mut buf),
            }
        }
        if let Some(n) = per_measurement.get_mut(reading.measurement) {
            *n += 1;
        }
        rows += 1;
        unreported += 1;
        let records = stream.take_truth();
        if !records.is_empty() {
            count(&records, &mut faults);
            if truth.is_some() {
                for r in &records {
                    truth_buf.push_str(&r.to_ndjson());
                }
            }
        }
        if buf.len() >= CHUNK {
            out.write_all(buf.as_bytes()).map_err(io("the output"))?;
            bytes += buf.len() as u64;
            buf.clear();
        }
        if let Some(t) = truth.as_mut()
            && truth_buf.len() >= CHUNK
        {
            t.write_all(truth_buf.as_bytes())
                .map_err(io("the ground truth"))?;
            truth_buf.clear();
        }
        if unreported >= 4096 {
            progress.sent.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
            if cancel.is_cancelled() {
                complete = false;
                break;
            }
        }
    }
    // Faults of ticks that produced no row (offline periods at the very end).
    let records = stream.take_truth();
    count(&records, &mut faults);
    if let Some(t) = truth.as_mut() {
        for r in &records {
            truth_buf.push_str(&r.to_ndjson());
        }
        t.write_all(truth_buf.as_bytes())
            .and_then(|()| t.flush())
            .map_err(io("the ground truth"))?;
    }
    out.write_all(buf.as_bytes())
        .and_then(|()| out.flush())
        .map_err(io("the output"))?;
    bytes += buf.len() as u64;
    progress.sent.fetch_add(unreported, Ordering::Relaxed);
    let fleet = stream.fleet();
    Ok(FileReport {
        scenario: scenario.name.clone(),
        devices: config.devices,
        from_ns: from,
        to_ns: to,
        interval_s: match config.cadence {
            Cadence::Interval(d) => Some(d.as_secs_f64()),
            _ => None,
        },
        rate: match config.cadence {
            Cadence::Rate(r) => Some(r),
            _ => None,
        },
        format: config.format,
        seed: config.seed,
        rows,
        measurements: per_measurement
            .iter()
            .enumerate()
            .map(|(m, n)| (fleet.measurement_name(m).to_owned(), *n))
            .collect(),
        bytes,
        faults,
        out: None,
        truth: None,
        complete,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

/// [`generate_file`] to a file at `out` (created or truncated) and the ground truth to
/// `truth`, recording both paths in the report.
pub fn generate_to_path(
    scenario: &Scenario,
    config: &FileConfig,
    out: &Path,
    truth: Option<&Path>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<FileReport, SimError> {
    validate(config)?;
    let create = |path: &Path| {
        std::fs::File::create(path).map_err(|source| SimError::Io {
            what: path.display().to_string(),
            source,
        })
    };
    let data = create(out)?;
    let mut truth_file = truth.map(create).transpose()?.map(std::io::BufWriter::new);
    let mut report = generate_file(
        scenario,
        config,
        data,
        truth_file.as_mut().map(|w| w as &mut dyn Write),
        progress,
        cancel,
    )?;
    report.out = Some(out.to_owned());
    report.truth = truth.map(Path::to_owned);
    Ok(report)
}

#[cfg(test)]
mod tests;
