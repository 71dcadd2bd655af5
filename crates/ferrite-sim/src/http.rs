//! The HTTP transport (`--transport http`): the fleet's readings as InfluxDB line protocol
//! in batches to `POST /api/v2/write?bucket=sim&precision=ns` with `Authorization: Token
//! <API token>`, a few requests in flight. A line counts as acknowledged when its batch is
//! answered 204 — after the server's fsync — and the request latency is what p50/p99 measure.
//!
//! Where the lines come from ([`Lines`], sans-IO: given the time, it appends what is due):
//!
//! - a scenario with a rate: a [`FleetStream`] over an open-ended span starting now — the
//!   readings in arrival order following λ(t), with the scenario's delays, duplicates,
//!   offline gaps and clock errors in the data, as file mode writes them; a reading leaves when
//!   its send time has come;
//! - a scenario at maximum rate: the devices tick in turn, stamped now;
//! - no scenario: the classic readings (table `telemetry`, tag `device_id`), the devices in
//!   turn, `rate` lines per second over the fleet or as many as acknowledgements allow.
//!
//! Every tick (100 ms) the lines due go out in batches of at most `batch_lines`; at maximum
//! rate a batch goes as soon as it is full and a request slot is free, so acknowledgements
//! pace the run. A 4xx answer ends the run (a wrong token or role will not get better), and
//! so does a network error before any batch was acknowledged (no server there); later 5xx
//! answers and network errors count their lines as errors and the run goes on.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, refusal};
use crate::faults::{FaultCounts, TruthRecord};
use crate::file::{FleetStream, Held};
use crate::fleet::{DeviceSim, Outgoing};
use crate::{Progress, Readings, SimError};

/// The write endpoint; Ferrite ignores the bucket (one namespace; the measurement is the
/// table).
const WRITE_PATH: &str = "/api/v2/write?bucket=sim&precision=ns";

/// How often due lines are sent when the run follows a rate.
const TICK: Duration = Duration::from_millis(100);

/// The HTTP transport in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpReport {
    /// Write requests answered 204.
    pub requests: u64,
    /// Write requests that failed (5xx, network); their lines are counted as errors.
    pub failed_requests: u64,
    /// Most lines per request (`--batch-lines`).
    pub batch_lines: usize,
    /// Requests in flight at once (`--http-requests`).
    pub in_flight: usize,
    /// The first failure's message, if any request failed.
    pub first_error: Option<String>,
}

/// The lines of a run: appends the lines due at a given time; see the [module docs](self).
#[derive(Debug)]
pub struct Lines {
    source: Source,
    /// Lines appended per measurement.
    measurements: BTreeMap<String, u64>,
    /// Ground truth produced and not yet taken.
    truth: Vec<TruthRecord>,
}

#[derive(Debug)]
enum Source {
    /// A scenario with a rate, in arrival order.
    Stream(Box<FleetStream>),
    /// A scenario at maximum rate: devices tick in turn at the current time.
    Turns {
        devices: Vec<DeviceSim>,
        next: usize,
        /// Readings ticked and not yet appended (delayed ones, or beyond the batch).
        held: BinaryHeap<Reverse<Held>>,
        seq: u64,
        scratch: Vec<Outgoing>,
        /// Each device's last tick time: a device's ticks strictly increase.
        last: Vec<i64>,
        /// The latest tick time (Unix ns): readings sent at or before it are due.
        horizon: i64,
    },
    /// The classic readings, devices in turn.
    Classic {
        devices: Vec<(String, Readings)>,
        next: usize,
        /// Each device's last timestamp: its lines are strictly increasing in time.
        last_ns: Vec<i64>,
        /// Lines per second over the fleet, from `start_ns`; `None`: as many as asked.
        rate: Option<(f64, i64)>,
        emitted: u64,
    },
}

impl Lines {
    /// A scenario's readings: `stream` in arrival order if its fleet has a rate cadence
    /// (the stream of an open-ended fleet starting now), else its devices in turn.
    pub fn scenario(stream: FleetStream) -> Self {
        let source = if stream.fleet().device_rate().is_some() {
            Source::Stream(Box::new(stream))
        } else {
            let fleet = stream.fleet().clone();
            Source::Turns {
                devices: (0..fleet.devices()).map(|i| fleet.device(i)).collect(),
                next: 0,
                held: BinaryHeap::new(),
                seq: 0,
                scratch: Vec::new(),
                last: vec![i64::MIN; fleet.devices()],
                horizon: i64::MIN,
            }
        };
        Self::of(source)
    }

    /// The classic readings of `ids` (one generator each, from `seed`); `rate` lines per
    /// second over the fleet counted from `start_ns`, or `None` for as many as asked.
    pub fn classic(ids: Vec<String>, seed: u64, rate: Option<f64>, start_ns: i64) -> Self {
        let n = ids.len();
        let devices = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, Readings::new(seed, i as u64)))
            .collect();
        Self::of(Source::Classic {
            devices,
            next: 0,
            last_ns: vec![i64::MIN; n],
            rate: rate.filter(|r| *r > 0.0).map(|r| (r, start_ns)),
            emitted: 0,
        })
    }

    fn of(source: Source) -> Self {
        Self {
            source,
            measurements: BTreeMap::new(),
            truth: Vec::new(),
        }
    }

    /// Whether the run has no schedule: lines are as many as asked for at any time.
    pub fn unlimited(&self) -> bool {
        match &self.source {
            Source::Stream(_) => false,
            Source::Turns { .. } => true,
            Source::Classic { rate, .. } => rate.is_none(),
        }
    }

    /// Append to `out` at most `max` lines due at `now_ns` (Unix ns); returns how many.
    pub fn fill(&mut self, now_ns: i64, max: usize, out: &mut String) -> usize {
        let mut n = 0;
        match &mut self.source {
            Source::Stream(stream) => {
                while n < max && stream.next_send_time().is_some_and(|t| t <= now_ns) {
                    let Some(item) = stream.next() else { break };
                    if let Some(device) = stream.device(item.reading.device) {
                        device.write_line_protocol(&item.reading, out);
                        let m = stream.fleet().measurement_name(item.reading.measurement);
                        count(&mut self.measurements, m);
                        n += 1;
                    }
                }
                self.truth.extend(stream.take_truth());
            }
            Source::Turns {
                devices,
                next,
                held,
                seq,
                scratch,
                last,
                horizon,
            } => {
                // A device's ticks strictly increase, so at maximum rate they run a little
                // ahead of `now`: a reading is due once its send time is at most the later of
                // `now` and the latest tick (only delayed readings and retries wait).
                *horizon = (*horizon).max(now_ns);
                // Ticks in a row that produced nothing due (every device offline, or every
                // reading delayed): stop after a few rounds of them rather than spin; the
                // caller comes back at its next tick.
                let idle_limit = devices.len().saturating_mul(8);
                let mut idle = 0;
                while n < max && !devices.is_empty() {
                    if let Some(Reverse(h)) = held.peek()
                        && h.send_at <= *horizon
                    {
                        if let Some(Reverse(h)) = held.pop()
                            && let Some(device) = devices.get(h.item.reading.device)
                        {
                            device.write_line_protocol(&h.item.reading, out);
                            let fleet = device.fleet();
                            count(
                                &mut self.measurements,
                                fleet.measurement_name(h.item.reading.measurement),
                            );
                            n += 1;
                            idle = 0;
                        }
                        continue;
                    }
                    if idle >= idle_limit {
                        break;
                    }
                    idle += 1;
                    let i = *next % devices.len();
                    *next = i + 1;
                    if let (Some(device), Some(last)) = (devices.get_mut(i), last.get_mut(i)) {
                        let t = now_ns.max(last.saturating_add(1));
                        *last = t;
                        *horizon = (*horizon).max(t);
                        device.tick(t, scratch, &mut self.truth);
                    }
                    for item in scratch.drain(..) {
                        *seq += 1;
                        held.push(Reverse(Held {
                            send_at: item.send_at_ns,
                            seq: *seq,
                            item,
                        }));
                    }
                }
            }
            Source::Classic {
                devices,
                next,
                last_ns,
                rate,
                emitted,
            } => {
                let due = match rate {
                    None => max,
                    Some((r, start)) => {
                        let elapsed_s = now_ns.saturating_sub(*start).max(0) as f64 / 1e9;
                        let total = (elapsed_s * *r).floor() as u64;
                        usize::try_from(total.saturating_sub(*emitted))
                            .unwrap_or(usize::MAX)
                            .min(max)
                    }
                };
                while n < due && !devices.is_empty() {
                    let i = *next % devices.len();
                    *next = i + 1;
                    if let (Some((id, readings)), Some(last)) =
                        (devices.get_mut(i), last_ns.get_mut(i))
                    {
                        let ts = now_ns.max(last.saturating_add(1));
                        *last = ts;
                        readings.write_line_protocol(id, ts, out);
                    }
                    n += 1;
                }
                *emitted += n as u64;
                if n > 0 {
                    *self
                        .measurements
                        .entry(ferrite_core::DEFAULT_MEASUREMENT.to_owned())
                        .or_default() += n as u64;
                }
            }
        }
        n
    }

    /// Ground truth produced since the last call, oldest first.
    pub fn take_truth(&mut self) -> Vec<TruthRecord> {
        std::mem::take(&mut self.truth)
    }

    /// Lines appended so far, per measurement.
    pub fn measurements(&self) -> &BTreeMap<String, u64> {
        &self.measurements
    }
}

fn count(measurements: &mut BTreeMap<String, u64>, m: &str) {
    match measurements.get_mut(m) {
        Some(n) => *n += 1,
        None => {
            measurements.insert(m.to_owned(), 1);
        }
    }
}

/// What the HTTP run needs besides its lines.
pub(crate) struct HttpRun<'a> {
    pub(crate) api: Api,
    pub(crate) batch_lines: usize,
    pub(crate) in_flight: usize,
    /// Stop after this many lines in total.
    pub(crate) count: Option<u64>,
    pub(crate) progress: &'a Arc<Progress>,
    pub(crate) stop: &'a CancellationToken,
    /// Where the ground truth goes, if anywhere.
    pub(crate) truth: Option<&'a mut std::io::BufWriter<std::fs::File>>,
}

/// What the request tasks share.
#[derive(Default)]
struct Outcome {
    /// Requests answered 2xx so far.
    ok: AtomicU64,
    failed: AtomicU64,
    /// The error that ends the run, if one did.
    fatal: Mutex<Option<SimError>>,
    first_error: Mutex<Option<String>>,
}

/// Send `lines` until the count, the duration (`stop`) or a fatal error; returns the
/// figures and the faults injected.
pub(crate) async fn run(
    mut run: HttpRun<'_>,
    mut lines: Lines,
    now_ns: impl Fn() -> i64,
) -> Result<(HttpReport, FaultCounts), SimError> {
    let batch_max = run.batch_lines.max(1);
    let permits = Arc::new(Semaphore::new(run.in_flight.max(1)));
    let outcome = Arc::new(Outcome::default());
    let mut requests = JoinSet::new();
    let mut batch = String::with_capacity(64 * batch_max);
    let mut in_batch = 0usize;
    let mut left = run.count;
    let mut faults = FaultCounts::new();
    let mut next_flush = Instant::now() + TICK;
    loop {
        while requests.try_join_next().is_some() {}
        if run.stop.is_cancelled() {
            break;
        }
        let room = (batch_max - in_batch)
            .min(left.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)));
        let n = lines.fill(now_ns(), room, &mut batch);
        in_batch += n;
        if let Some(l) = &mut left {
            *l -= n as u64;
        }
        record_truth(&mut run, lines.take_truth(), &mut faults);
        let spent = left == Some(0);
        let flush_due = Instant::now() >= next_flush;
        if in_batch > 0 && (in_batch >= batch_max || spent || flush_due) {
            // A request slot first (backpressure); stopped meanwhile, the batch stays for
            // the last send below.
            let permit = tokio::select! {
                () = run.stop.cancelled() => break,
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let body = std::mem::replace(&mut batch, String::with_capacity(64 * batch_max));
            let sent = std::mem::take(&mut in_batch);
            spawn_write(&run, &outcome, &mut requests, permit, body, sent);
        }
        if spent {
            break;
        }
        if flush_due {
            next_flush = Instant::now() + TICK;
        }
        if lines.unlimited() && n > 0 {
            continue;
        }
        tokio::select! {
            () = run.stop.cancelled() => break,
            () = tokio::time::sleep_until(next_flush) => {}
        }
    }
    // The last partial batch goes too, unless the run failed.
    let failed = outcome
        .fatal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some();
    if in_batch > 0
        && !failed
        && let Ok(permit) = Arc::clone(&permits).acquire_owned().await
    {
        spawn_write(&run, &outcome, &mut requests, permit, batch, in_batch);
    }
    while let Some(r) = requests.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    run.progress.merge_measurements(lines.measurements());
    if let Some(e) = outcome
        .fatal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(e);
    }
    let first_error = outcome
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok((
        HttpReport {
            requests: outcome.ok.load(Ordering::Relaxed),
            failed_requests: outcome.failed.load(Ordering::Relaxed),
            batch_lines: batch_max,
            in_flight: run.in_flight.max(1),
            first_error,
        },
        faults,
    ))
}

/// Send `body` (`lines` lines) in a request task holding `permit`.
fn spawn_write(
    run: &HttpRun<'_>,
    outcome: &Arc<Outcome>,
    requests: &mut JoinSet<()>,
    permit: OwnedSemaphorePermit,
    body: String,
    lines: usize,
) {
    run.progress.sent.fetch_add(lines as u64, Ordering::Relaxed);
    let (api, progress, outcome, stop) = (
        run.api.clone(),
        Arc::clone(run.progress),
        Arc::clone(outcome),
        run.stop.clone(),
    );
    requests.spawn(async move {
        let _permit = permit;
        write(&api, body, lines as u64, &progress, &outcome, &stop).await;
    });
}

fn record_truth(run: &mut HttpRun<'_>, records: Vec<TruthRecord>, faults: &mut FaultCounts) {
    if records.is_empty() {
        return;
    }
    crate::faults::count(&records, faults);
    run.progress
        .faults
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    if let Some(file) = run.truth.as_mut() {
        for r in &records {
            if let Err(e) = file.write_all(r.to_ndjson().as_bytes()) {
                tracing::warn!(error = %e, "cannot write the ground truth");
                run.progress.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// One write request of `lines` lines: count the answer, or end the run.
async fn write(
    api: &Api,
    body: String,
    lines: u64,
    progress: &Progress,
    outcome: &Outcome,
    stop: &CancellationToken,
) {
    let what = "writing line protocol";
    let started = Instant::now();
    let fail = |e: SimError| {
        let mut fatal = outcome.fatal.lock().unwrap_or_else(PoisonError::into_inner);
        fatal.get_or_insert(e);
        stop.cancel();
    };
    let error = match api.post_lines(WRITE_PATH, body).send().await {
        Ok(r) if r.status().is_success() => {
            outcome.ok.fetch_add(1, Ordering::Relaxed);
            progress.requests.fetch_add(1, Ordering::Relaxed);
            progress.acked.fetch_add(lines, Ordering::Relaxed);
            progress.latencies.record(started.elapsed());
            return;
        }
        Ok(r) if r.status().is_client_error() => return fail(refusal(what, r).await),
        Ok(r) => refusal(what, r).await,
        Err(e) if outcome.ok.load(Ordering::Relaxed) == 0 => {
            return fail(api.unreachable(what, e));
        }
        Err(e) => api.unreachable(what, e),
    };
    tracing::warn!(error = %error, lines, "a write failed");
    outcome.failed.fetch_add(1, Ordering::Relaxed);
    progress.errors.fetch_add(lines, Ordering::Relaxed);
    outcome
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(|| error.to_string());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ferrite_core::decode::{Precision, decode_line_protocol};

    use super::*;
    use crate::fleet::{Cadence, Fleet, FleetConfig};
    use crate::scenario::Scenario;

    const T0: i64 = 1_700_000_000_000_000_000;
    const SEC: i64 = 1_000_000_000;

    fn parse(text: &str) -> Vec<ferrite_core::Point> {
        decode_line_protocol(
            text,
            Precision::Nanoseconds,
            ferrite_core::Timestamp::from_nanos(0),
            &[],
        )
        .unwrap()
    }

    fn fleet(devices: usize, cadence: Cadence) -> Fleet {
        Fleet::new(
            &Scenario::builtin("smart_building").unwrap(),
            FleetConfig {
                devices,
                seed: 3,
                prefix: None,
                start_ns: T0,
                end_ns: None,
                cadence,
                faults: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn classic_lines_follow_the_rate_and_never_exceed_a_batch() {
        let ids = vec!["sim-0".to_owned(), "sim-1".to_owned()];
        let mut lines = Lines::classic(ids, 1, Some(100.0), T0);
        assert!(!lines.unlimited());
        let mut out = String::new();
        assert_eq!(
            lines.fill(T0, 50, &mut out),
            0,
            "nothing is due at the start"
        );
        // 1.5 s at 100/s: 150 due, taken in batches of at most 60.
        let now = T0 + SEC + SEC / 2;
        let mut batches = Vec::new();
        loop {
            let mut batch = String::new();
            let n = lines.fill(now, 60, &mut batch);
            if n == 0 {
                break;
            }
            assert_eq!(batch.lines().count(), n);
            batches.push(n);
            out.push_str(&batch);
        }
        assert_eq!(batches, [60, 60, 30]);
        let points = parse(&out);
        assert_eq!(points.len(), 150);
        assert_eq!(lines.measurements()["telemetry"], 150);
        // Devices take turns, and each device's timestamps strictly increase.
        for id in ["sim-0", "sim-1"] {
            let times: Vec<i64> = points
                .iter()
                .filter(|p| p.tags["device_id"] == id)
                .map(|p| p.time.as_nanos())
                .collect();
            assert_eq!(times.len(), 75);
            assert!(times.windows(2).all(|w| w[0] < w[1]), "{id}");
            assert!(times[0] >= now);
        }
        assert!(points.iter().all(|p| p.fields.contains_key("temperature")));
    }

    #[test]
    fn unlimited_lines_fill_every_batch() {
        let mut lines = Lines::classic(vec!["a".to_owned()], 1, None, T0);
        assert!(lines.unlimited());
        let mut out = String::new();
        assert_eq!(lines.fill(T0, 5000, &mut out), 5000);
        assert_eq!(parse(&out).len(), 5000);

        let mut turns = Lines::scenario(FleetStream::new(fleet(3, Cadence::Manual)));
        assert!(turns.unlimited());
        let mut out = String::new();
        assert_eq!(turns.fill(T0, 7, &mut out), 7);
        let points = parse(&out);
        assert_eq!(points.len(), 7);
        let devices: std::collections::BTreeSet<_> =
            points.iter().map(|p| p.tags["device_id"].clone()).collect();
        assert_eq!(devices.len(), 3, "devices take turns");
        assert!(points.iter().all(|p| p.measurement.as_str() == "room"));
        assert!(points.iter().all(|p| p.tags.contains_key("building")));
    }

    #[test]
    fn at_maximum_rate_delayed_readings_wait_for_their_time() {
        let scenario = Scenario::from_toml(
            r#"
name = "late"
[devices]
id_prefix = "l"
[[measurements]]
name = "m"
fields = [{ name = "x", mean = 1.0 }]
[faults]
delay = { probability = 0.3, distribution = "uniform", mean = "10s" }
"#,
            "test",
        )
        .unwrap();
        let f = Fleet::new(
            &scenario,
            FleetConfig {
                devices: 2,
                seed: 5,
                prefix: None,
                start_ns: T0,
                end_ns: None,
                cadence: Cadence::Manual,
                faults: true,
            },
        )
        .unwrap();
        let mut lines = Lines::scenario(FleetStream::new(f));
        let mut out = String::new();
        assert_eq!(lines.fill(T0, 200, &mut out), 200);
        let delayed = lines.take_truth().len();
        assert!(delayed > 20, "{delayed} delays recorded");
        assert!(parse(&out).iter().all(|p| p.time.as_nanos() < T0 + SEC));
        // A minute later the readings held back are due, and come first, before the
        // readings of new ticks.
        let mut late = String::new();
        assert_eq!(
            lines.fill(T0 + 60 * SEC, 2 * delayed, &mut late),
            2 * delayed
        );
        let old: Vec<bool> = parse(&late)
            .iter()
            .map(|p| p.time.as_nanos() < T0 + SEC)
            .collect();
        let held = old.iter().filter(|o| **o).count();
        assert!(held > 0 && held <= delayed, "{held} of {delayed}");
        assert!(old[..held].iter().all(|o| *o), "held-back readings first");
    }

    #[test]
    fn a_scenario_stream_sends_readings_when_their_time_comes() {
        let f = fleet(4, Cadence::Rate(40.0));
        let mut lines = Lines::scenario(FleetStream::new(f.clone()));
        assert!(!lines.unlimited());
        let mut out = String::new();
        let mut total = 0;
        for step in 1..=20 {
            let now = T0 + step * SEC / 10;
            let n = lines.fill(now, usize::MAX, &mut out);
            total += n;
            let points = parse(&out);
            assert!(points.iter().all(|p| p.time.as_nanos() <= now));
        }
        // 2 s at a mean of 40 readings/s (the scenario's λ(t) moves it somewhat).
        assert!((20..=200).contains(&total), "{total}");
        assert_eq!(lines.measurements()["room"], total as u64);
        let mut capped = String::new();
        let mut fresh = Lines::scenario(FleetStream::new(f));
        assert_eq!(fresh.fill(T0 + 2 * SEC, 3, &mut capped), 3);
    }
}
