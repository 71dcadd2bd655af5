//! Live mode: N devices, each its own MQTT connection (client id = device id), publishing
//! to a running server at QoS 1 with a window of unacknowledged publishes, measuring what a
//! device sees (publishes acknowledged, refused, publish→PUBACK latency).
//!
//! Two kinds of run ([`run_with`]):
//!
//! - **Classic** (no scenario, [`run`]): [`crate::Readings`] as flat JSON to
//!   `devices/{id}/telemetry` at a fixed total rate — a plain load generator.
//! - **Scenario** ([`LiveOptions::scenario`]): each device is a [`crate::fleet::DeviceSim`]
//!   publishing one flat JSON object per measurement to `devices/{id}/telemetry/{measurement}`
//!   at tick times drawn from the scenario's λ(t), scaled so the fleet publishes `rate`
//!   readings per second on average (or back to back with `rate: None`). Faults act on the
//!   wire: an offline period drains the device's unacknowledged publishes, then closes the
//!   connection — abruptly (no DISCONNECT, so the broker publishes the will
//!   `devices/{id}/status` = `{"online":false}`) or cleanly — and reconnects when it ends;
//!   a delayed reading is held back on the device and published late, after newer ones; a
//!   duplicate is published again, same payload, `retry_after` later. With a will, devices
//!   publish `{"online":true}` (QoS 0, retained) to their status topic on every connect.
//!   Each fault is written to the ground-truth file as it is injected.
//!
//! Event times are the scheduled tick times (so a device that cannot keep up sends readings
//! stamped in the past rather than skipping them); a device queues at most one window of
//! readings beyond its in-flight publishes, and further ticks wait.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferrite_mqtt_codec::{Properties, ProtocolVersion, QoS, Will};
use rand::SeedableRng;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, ConnectOptions};
use crate::faults::{FaultCounts, TruthRecord};
use crate::file::Held;
use crate::fleet::{Cadence, DeviceSim, Fleet, FleetConfig, Outgoing, Tick};
use crate::scenario::Scenario;
use crate::{Readings, SimError, grid_positions, models};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The MQTT server.
    pub server: SocketAddr,
    /// Number of devices (connections).
    pub devices: usize,
    /// Target publishes per second over all devices; `None` publishes as fast as the window
    /// of unacknowledged publishes allows.
    pub rate: Option<f64>,
    /// Stop after this long; `None` runs until `count` or cancellation.
    pub duration: Option<Duration>,
    /// Stop after this many publishes in total.
    pub count: Option<u64>,
    /// Device ids are `{prefix}{index}`.
    pub prefix: String,
    /// Seed for the readings; the same seed gives the same readings.
    pub seed: u64,
    /// MQTT version the devices speak.
    pub version: ProtocolVersion,
    /// Unacknowledged publishes per device before it waits.
    pub window: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            server: SocketAddr::from(([127, 0, 0, 1], 1883)),
            devices: 10,
            rate: Some(100.0),
            duration: None,
            count: None,
            prefix: "sim-".to_owned(),
            seed: 1,
            version: ProtocolVersion::V5,
            window: 32,
        }
    }
}

/// What a live run adds to [`SimConfig`].
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// The scenario; `None` runs the classic load generator.
    pub scenario: Option<Scenario>,
    /// Write the ground truth (NDJSON, [`crate::faults`]) to this file.
    pub truth: Option<PathBuf>,
    /// Inject no faults (clean data).
    pub clean: bool,
}

/// Live counters, readable while the simulation runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Publishes sent (live) or rows written (file).
    pub sent: AtomicU64,
    /// Publishes acknowledged with success.
    pub acked: AtomicU64,
    /// Publishes refused by the server (error reason code) and connection failures.
    pub errors: AtomicU64,
    /// Devices connected now.
    pub connected: AtomicU64,
    /// Faults injected so far (live).
    pub faults: AtomicU64,
    /// Largest publish→ack latency so far, microseconds.
    max_latency_us: AtomicU64,
    /// Publish→ack latencies in microseconds (capped sample).
    latencies: Mutex<Vec<u32>>,
    /// Per-measurement publishes and faults by kind, merged as devices finish.
    tally: Mutex<Tally>,
}

/// Most latency samples kept per run.
const MAX_SAMPLES: usize = 2_000_000;

impl Progress {
    fn record_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.max_latency_us.fetch_max(us, Ordering::Relaxed);
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if l.len() < MAX_SAMPLES {
            l.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// (p50, p99) publish→ack latency so far.
    pub fn percentiles(&self) -> (Duration, Duration) {
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if l.is_empty() {
            return (Duration::ZERO, Duration::ZERO);
        }
        l.sort_unstable();
        let at = |q: f64| {
            Duration::from_micros(u64::from(l[((l.len() - 1) as f64 * q).round() as usize]))
        };
        (at(0.50), at(0.99))
    }

    /// The largest publish→ack latency so far.
    pub fn max_latency(&self) -> Duration {
        Duration::from_micros(self.max_latency_us.load(Ordering::Relaxed))
    }

    fn merge(&self, t: &Tally) {
        let mut all = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        for (m, n) in &t.measurements {
            *all.measurements.entry(m.clone()).or_default() += n;
        }
        for (k, n) in &t.faults {
            *all.faults.entry(*k).or_default() += n;
        }
    }

    fn tally(&self) -> Tally {
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Per-measurement publishes and injected faults of one device or the whole run.
#[derive(Debug, Clone, Default)]
struct Tally {
    measurements: BTreeMap<String, u64>,
    faults: FaultCounts,
}

/// The run's configuration, echoed in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReportConfig {
    /// The MQTT server.
    pub server: String,
    /// Target publishes per second, `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Configured duration, seconds.
    pub duration_s: Option<f64>,
    /// Configured publish count.
    pub count: Option<u64>,
    /// Device id prefix.
    pub prefix: String,
    /// Seed.
    pub seed: u64,
    /// MQTT version: `5` or `3.1.1`.
    pub mqtt_version: String,
    /// Unacknowledged publishes per device.
    pub window: usize,
    /// The scenario, if any.
    pub scenario: Option<String>,
    /// Whether faults were injected.
    pub faults: bool,
}

/// The summary printed (as JSON) at the end of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimReport {
    /// Devices simulated.
    pub devices: usize,
    /// Publishes sent.
    pub sent: u64,
    /// Publishes acknowledged with success.
    pub acked: u64,
    /// Refusals and connection failures.
    pub errors: u64,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Acknowledged publishes per second.
    pub acked_per_s: f64,
    /// Median publish→ack latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile publish→ack latency in milliseconds.
    pub p99_ms: f64,
    /// Largest publish→ack latency in milliseconds.
    pub max_ms: f64,
    /// Publishes sent per measurement (`telemetry` for the classic run).
    pub measurements: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Where the ground truth was written.
    pub truth: Option<PathBuf>,
    /// The configuration of the run.
    pub config: ReportConfig,
}

/// Run the classic load generator (no scenario) until its duration or count is reached or
/// `cancel` fires. Same as [`run_with`] with default [`LiveOptions`].
pub async fn run(
    config: SimConfig,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<SimReport, SimError> {
    run_with(config, LiveOptions::default(), progress, cancel).await
}

/// Run the simulation — a scenario if `options` names one — until its duration or count is
/// reached or `cancel` fires.
pub async fn run_with(
    config: SimConfig,
    options: LiveOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<SimReport, SimError> {
    let start = Instant::now();
    let stop = cancel.child_token();
    if let Some(d) = config.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let scenario_name = options.scenario.as_ref().map(|s| s.name.clone());
    let faults = options.scenario.is_some() && !options.clean;
    let truth = options.truth.clone();
    let outcome = match &options.scenario {
        None => run_classic(&config, &progress, &stop).await,
        Some(scenario) => run_scenario(&config, scenario, &options, &progress, &stop).await,
    };
    stop.cancel();
    outcome?;
    let elapsed = start.elapsed().as_secs_f64();
    let (p50, p99) = progress.percentiles();
    let acked = progress.acked.load(Ordering::Relaxed);
    let tally = progress.tally();
    Ok(SimReport {
        devices: config.devices.max(1),
        sent: progress.sent.load(Ordering::Relaxed),
        acked,
        errors: progress.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        acked_per_s: if elapsed > 0.0 {
            acked as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: p50.as_secs_f64() * 1e3,
        p99_ms: p99.as_secs_f64() * 1e3,
        max_ms: progress.max_latency().as_secs_f64() * 1e3,
        measurements: tally.measurements,
        faults: tally.faults,
        truth,
        config: ReportConfig {
            server: config.server.to_string(),
            rate: config.rate,
            duration_s: config.duration.map(|d| d.as_secs_f64()),
            count: config.count,
            prefix: config.prefix.clone(),
            seed: config.seed,
            mqtt_version: match config.version {
                ProtocolVersion::V5 => "5",
                _ => "3.1.1",
            }
            .to_owned(),
            window: config.window,
            scenario: scenario_name,
            faults,
        },
    })
}

/// Wait for every device task; fail only if no device could connect at all.
async fn join_devices(
    mut tasks: tokio::task::JoinSet<Result<(), ClientError>>,
    server: SocketAddr,
) -> Result<(), SimError> {
    let mut first_error = None;
    let mut connected_any = false;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => connected_any = true,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => tracing::error!(error = %e, "device task failed"),
        }
    }
    match first_error {
        Some(source) if !connected_any => Err(SimError::Connect { server, source }),
        _ => Ok(()),
    }
}

async fn run_classic(
    config: &SimConfig,
    progress: &Arc<Progress>,
    stop: &CancellationToken,
) -> Result<(), SimError> {
    let devices = config.devices.max(1);
    let budget = config.count.map(|c| Arc::new(AtomicU64::new(c)));
    let per_device_interval = config
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(devices as f64 / r));
    // Devices stand on a grid 25 m apart in a temperature field of range 200 m that drifts
    // slowly (ρ = 0.995 per second): neighbours read alike, readings wander in time.
    let positions = grid_positions(devices, 25.0);
    let mut field_rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let field = models::SpatialField::new(&positions, 1.5, 200.0, 256, &mut field_rng)
        .ok()
        .map(|f| Arc::new(std::sync::RwLock::new(f)));
    if let Some(field) = &field {
        let field = Arc::clone(field);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let mut f = field.write().unwrap_or_else(PoisonError::into_inner);
                        let _ = f.step(0.995, &mut field_rng);
                    }
                }
            }
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, position) in positions.iter().enumerate() {
        let cfg = config.clone();
        let progress = Arc::clone(progress);
        let stop = stop.clone();
        let budget = budget.clone();
        let mut readings = Readings::new(config.seed, i as u64);
        if let Some(field) = &field {
            readings = readings.with_field(Arc::clone(field), *position);
        }
        tasks.spawn(async move {
            let device = format!("{}{i}", cfg.prefix);
            classic_device(
                &cfg,
                device,
                readings,
                per_device_interval,
                progress,
                stop,
                budget,
            )
            .await
        });
    }
    join_devices(tasks, config.server).await
}

async fn classic_device(
    cfg: &SimConfig,
    device: String,
    mut readings: Readings,
    interval: Option<Duration>,
    progress: Arc<Progress>,
    stop: CancellationToken,
    budget: Option<Arc<AtomicU64>>,
) -> Result<(), ClientError> {
    let mut client = match Client::connect(cfg.server, &device, cfg.version).await {
        Ok(c) => c,
        Err(e) => {
            progress.errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    progress.connected.fetch_add(1, Ordering::Relaxed);
    let topic = format!("devices/{device}/telemetry");
    let mut sent = 0u64;
    let mut last_ts = 0i64;
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let result: Result<(), ClientError> = loop {
        let may_send = client.in_flight() < cfg.window.max(1);
        tokio::select! {
            () = stop.cancelled() => break Ok(()),
            _ = tick(&mut ticker), if may_send => {
                if !take_budget(budget.as_deref()) {
                    break Ok(());
                }
                // Strictly increasing per device: two readings of one device never share a
                // timestamp (which the store would treat as a retry and replace).
                last_ts = now_us().max(last_ts + 1);
                let payload = readings.next_json(last_ts);
                if let Err(e) = client.publish_qos1(&topic, payload.into_bytes().into()).await {
                    break Err(e);
                }
                sent += 1;
                progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            ack = client.next_ack() => match ack {
                Ok(ack) => on_ack(&progress, ack),
                Err(e) => break Err(e),
            },
        }
    };
    drain_acks(&mut client, &progress).await;
    let _ = client.disconnect().await;
    progress.connected.fetch_sub(1, Ordering::Relaxed);
    progress.merge(&Tally {
        measurements: BTreeMap::from([(ferrite_core::DEFAULT_MEASUREMENT.to_owned(), sent)]),
        faults: FaultCounts::new(),
    });
    // A connection lost after connecting is counted and reported, not a failure to start.
    if let Err(e) = &result {
        progress.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device, error = %e, "device stopped");
    }
    Ok(())
}

/// Takes one publish from the budget; false when it is spent.
fn take_budget(budget: Option<&AtomicU64>) -> bool {
    budget.is_none_or(|b| {
        b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    })
}

fn on_ack(progress: &Progress, ack: crate::client::Ack) {
    if ack.reason.is_error() {
        progress.errors.fetch_add(1, Ordering::Relaxed);
    } else {
        progress.acked.fetch_add(1, Ordering::Relaxed);
        progress.record_latency(ack.latency);
    }
}

/// Let outstanding acks arrive (5 s at most).
async fn drain_acks(client: &mut Client, progress: &Progress) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while client.in_flight() > 0 {
            match client.next_ack().await {
                Ok(ack) => on_ack(progress, ack),
                Err(_) => break,
            }
        }
    })
    .await;
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    if let Some(t) = ticker {
        t.tick().await;
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What every device task of a scenario run shares.
struct Shared {
    config: SimConfig,
    fleet: Fleet,
    progress: Arc<Progress>,
    budget: Option<AtomicU64>,
    /// Devices connect with a will and announce their status.
    will: bool,
    /// The ground-truth file; device tasks append under the lock (faults are rare).
    truth: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    /// Unix time and the runtime's clock at the start: Unix time now is
    /// `unix0 + instant0.elapsed()`.
    unix0: i64,
    instant0: Instant,
}

impl Shared {
    fn now_ns(&self) -> i64 {
        let elapsed = i64::try_from(self.instant0.elapsed().as_nanos()).unwrap_or(i64::MAX);
        self.unix0.saturating_add(elapsed)
    }

    /// The runtime instant of Unix time `t_ns`.
    fn instant_of(&self, t_ns: i64) -> Instant {
        let ahead = u64::try_from(t_ns.saturating_sub(self.unix0)).unwrap_or(0);
        self.instant0 + Duration::from_nanos(ahead)
    }

    fn status_topic(id: &str) -> String {
        format!("devices/{id}/status")
    }

    fn connect_options(&self, id: &str) -> ConnectOptions {
        let mut options = ConnectOptions::new(id, self.config.version);
        if self.will {
            options.will = Some(Will {
                topic: Self::status_topic(id),
                payload: bytes::Bytes::from_static(br#"{"online":false}"#),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            });
        }
        options
    }

    /// Publish the device's status (QoS 0, retained) when devices have a will.
    async fn announce(&self, client: &mut Client, id: &str, online: bool) {
        if self.will {
            let payload: &'static [u8] = if online {
                br#"{"online":true}"#
            } else {
                br#"{"online":false}"#
            };
            let _ = client
                .publish(
                    &Self::status_topic(id),
                    bytes::Bytes::from_static(payload),
                    QoS::AtMostOnce,
                    true,
                )
                .await;
        }
    }

    fn record_truth(&self, records: &[TruthRecord], tally: &mut Tally) {
        if records.is_empty() {
            return;
        }
        crate::faults::count(records, &mut tally.faults);
        self.progress
            .faults
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Some(file) = &self.truth {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            for r in records {
                if let Err(e) = f.write_all(r.to_ndjson().as_bytes()) {
                    tracing::warn!(error = %e, "cannot write the ground truth");
                    self.progress.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

async fn run_scenario(
    config: &SimConfig,
    scenario: &Scenario,
    options: &LiveOptions,
    progress: &Arc<Progress>,
    stop: &CancellationToken,
) -> Result<(), SimError> {
    let unix0 = now_ns();
    let cadence = match config.rate {
        Some(r) if r > 0.0 => Cadence::Rate(r),
        _ => Cadence::Manual,
    };
    let faults = !options.clean;
    let fleet = Fleet::new(
        scenario,
        FleetConfig {
            devices: config.devices.max(1),
            seed: config.seed,
            prefix: Some(config.prefix.clone()),
            start_ns: unix0,
            end_ns: None,
            cadence,
            faults,
        },
    )?;
    let truth = match &options.truth {
        None => None,
        Some(path) => Some(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| SimError::Io {
                what: path.display().to_string(),
                source,
            })?,
        ))),
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        fleet,
        progress: Arc::clone(progress),
        budget: config.count.map(AtomicU64::new),
        will: faults && scenario.faults.offline.is_some_and(|o| o.will),
        truth,
        unix0,
        instant0: Instant::now(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..shared.fleet.devices() {
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tasks.spawn(async move { scenario_device(shared, i, stop).await });
    }
    let joined = join_devices(tasks, config.server).await;
    if let Some(file) = &shared.truth {
        let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
        f.flush().map_err(|source| SimError::Io {
            what: options
                .truth
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source,
        })?;
    }
    joined
}

/// One scenario device: tick, hold back, publish, go offline and come back.
async fn scenario_device(
    shared: Arc<Shared>,
    index: usize,
    stop: CancellationToken,
) -> Result<(), ClientError> {
    let progress = Arc::clone(&shared.progress);
    let mut sim = shared.fleet.device(index);
    let id = sim.id().to_owned();
    let mut client =
        match Client::connect_with(shared.config.server, shared.connect_options(&id)).await {
            Ok(c) => c,
            Err(e) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
    progress.connected.fetch_add(1, Ordering::Relaxed);
    shared.announce(&mut client, &id, true).await;
    let mut device = LiveDevice {
        window: shared.config.window.max(1),
        pending: BinaryHeap::new(),
        outbox: VecDeque::new(),
        scratch: Vec::new(),
        truth: Vec::new(),
        tally: Tally::default(),
        seq: 0,
        next_tick: if shared.config.rate.is_some() {
            sim.next_tick_time()
        } else {
            None
        },
        manual: shared.config.rate.is_none_or(|r| r <= 0.0),
    };
    let result = loop {
        if stop.is_cancelled() {
            break Ok(Some(client));
        }
        let now = shared.now_ns();
        device.release(now);
        let offline = device.tick_due(&mut sim, now, client.in_flight());
        shared.record_truth(&device.truth, &mut device.tally);
        device.truth.clear();
        if let Some((until_ns, abrupt)) = offline {
            match go_offline(&shared, client, &id, until_ns, abrupt, &stop).await {
                Some(c) => {
                    client = c;
                    continue;
                }
                None => break Ok(None),
            }
        }
        match device.publish(&shared, &sim, &mut client).await {
            Ok(true) => {}
            Ok(false) => break Ok(Some(client)),
            Err(e) => break Err(e),
        }
        let wake = device.wake(now, client.in_flight());
        tokio::select! {
            () = stop.cancelled() => {}
            () = sleep_until_opt(wake.map(|t| shared.instant_of(t))) => {}
            ack = client.next_ack() => match ack {
                Ok(ack) => on_ack(&progress, ack),
                Err(e) => break Err(e),
            },
        }
    };
    progress.merge(&device.tally);
    match result {
        Ok(Some(mut client)) => {
            drain_acks(&mut client, &progress).await;
            shared.announce(&mut client, &id, false).await;
            let _ = client.disconnect().await;
            progress.connected.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(None) => {}
        Err(e) => {
            // A connection lost after connecting is counted and reported, not a failure to
            // start.
            progress.connected.fetch_sub(1, Ordering::Relaxed);
            progress.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(device = id, error = %e, "device stopped");
        }
    }
    Ok(())
}

/// The state of one scenario device between its generator and its connection.
struct LiveDevice {
    window: usize,
    /// Readings held back (delayed, retries) until their send time.
    pending: BinaryHeap<Reverse<Held>>,
    /// Readings due, in order.
    outbox: VecDeque<Outgoing>,
    scratch: Vec<Outgoing>,
    truth: Vec<TruthRecord>,
    tally: Tally,
    seq: u64,
    next_tick: Option<i64>,
    /// No schedule: tick whenever there is room (maximum rate).
    manual: bool,
}

impl LiveDevice {
    /// Move held-back readings that are due to the outbox.
    fn release(&mut self, now: i64) {
        while self.pending.peek().is_some_and(|h| h.0.send_at <= now) {
            if let Some(Reverse(h)) = self.pending.pop() {
                self.outbox.push_back(h.item);
            }
        }
    }

    /// Run the ticks that are due, while the outbox has room. Returns the offline period
    /// that starts, if one does.
    fn tick_due(&mut self, sim: &mut DeviceSim, now: i64, in_flight: usize) -> Option<(i64, bool)> {
        if self.manual {
            if self.outbox.is_empty() && in_flight < self.window {
                return self.tick(sim, now, now);
            }
            return None;
        }
        while let Some(t) = self.next_tick.filter(|t| *t <= now) {
            if self.outbox.len() >= self.window {
                break;
            }
            self.next_tick = sim.next_tick_time();
            if let Some(offline) = self.tick(sim, t, now) {
                return Some(offline);
            }
        }
        None
    }

    fn tick(&mut self, sim: &mut DeviceSim, t: i64, now: i64) -> Option<(i64, bool)> {
        match sim.tick(t, &mut self.scratch, &mut self.truth) {
            Tick::Offline {
                until_ns,
                abrupt,
                starts: true,
            } => return Some((until_ns, abrupt)),
            Tick::Offline { .. } | Tick::Online => {}
        }
        for item in self.scratch.drain(..) {
            if item.send_at_ns <= now {
                self.outbox.push_back(item);
            } else {
                self.seq += 1;
                self.pending.push(Reverse(Held {
                    send_at: item.send_at_ns,
                    seq: self.seq,
                    item,
                }));
            }
        }
        None
    }

    /// Publish from the outbox while the window has room. False when the budget is spent.
    async fn publish(
        &mut self,
        shared: &Shared,
        sim: &DeviceSim,
        client: &mut Client,
    ) -> Result<bool, ClientError> {
        while client.in_flight() < self.window {
            let Some(item) = self.outbox.pop_front() else {
                break;
            };
            if !take_budget(shared.budget.as_ref()) {
                return Ok(false);
            }
            let reading = &item.reading;
            let payload = sim.json_payload(reading);
            client
                .publish_qos1(&sim.telemetry_topic(reading), payload.into())
                .await?;
            shared.progress.sent.fetch_add(1, Ordering::Relaxed);
            *self
                .tally
                .measurements
                .entry(
                    shared
                        .fleet
                        .measurement_name(reading.measurement)
                        .to_owned(),
                )
                .or_default() += 1;
        }
        Ok(true)
    }

    /// When to look again (Unix ns), if anything but an ack can wake the device.
    fn wake(&self, now: i64, in_flight: usize) -> Option<i64> {
        let room = self.outbox.len() < self.window;
        let tick = if self.manual {
            (room && self.outbox.is_empty() && in_flight < self.window).then_some(now)
        } else {
            self.next_tick.filter(|_| room)
        };
        let held = self.pending.peek().map(|h| h.0.send_at);
        match (tick, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Take the device offline until `until_ns`: drain its acks, leave (abruptly or cleanly),
/// wait, reconnect. `None` when the run stops meanwhile.
async fn go_offline(
    shared: &Shared,
    mut client: Client,
    id: &str,
    until_ns: i64,
    abrupt: bool,
    stop: &CancellationToken,
) -> Option<Client> {
    let progress = &shared.progress;
    drain_acks(&mut client, progress).await;
    if abrupt {
        client.abort();
    } else {
        shared.announce(&mut client, id, false).await;
        let _ = client.disconnect().await;
    }
    progress.connected.fetch_sub(1, Ordering::Relaxed);
    tokio::select! {
        () = stop.cancelled() => return None,
        () = tokio::time::sleep_until(shared.instant_of(until_ns)) => {}
    }
    loop {
        match Client::connect_with(shared.config.server, shared.connect_options(id)).await {
            Ok(mut c) => {
                progress.connected.fetch_add(1, Ordering::Relaxed);
                shared.announce(&mut c, id, true).await;
                return Some(c);
            }
            Err(e) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device = id, error = %e, "reconnecting failed");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
