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
//!
//! Against a secured server ([`LiveOptions::api`] with a token) the run starts by registering
//! its devices through the fleet REST API ([`crate::provision`]); each device then connects
//! with user name = its id and password = its own token. All devices connect at once at the
//! start, at most [`LiveOptions::connect_concurrency`] connections in progress at a time: the
//! *connect storm*, measured from the first connection's start to the last CONNACK, with
//! each connection's TCP connect → CONNACK latency and the refusals by reason code
//! ([`crate::stats::ConnectStats`]). [`LiveOptions::connect_only`] stops there: every device
//! connects, then all leave with DISCONNECT. [`Transport::Http`] sends no MQTT at all: the
//! readings go as line protocol to the HTTP API ([`crate::http`]).
//!
//! The process needs a file descriptor per device (and the server one per connection): raise
//! the open-file limit (`ulimit -n`) for large fleets. The simulator does not raise it itself:
//! that takes `setrlimit`, which needs `unsafe` through `libc` (the workspace forbids unsafe
//! code) and no safe wrapper crate is a dependency yet.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferrite_mqtt_codec::{Properties, ProtocolVersion, QoS, Will};
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, ApiConfig};
use crate::client::{Client, ClientError, ConnectOptions};
use crate::faults::{FaultCounts, TruthRecord};
use crate::file::{FleetStream, Held};
use crate::fleet::{Cadence, DeviceSim, Fleet, FleetConfig, Outgoing, Tick};
use crate::http::{HttpReport, Lines};
use crate::provision::{ProvisionReport, SimDevice};
use crate::scenario::Scenario;
use crate::stats::{ConnectReport, ConnectStats, Latencies, ms};
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

/// How readings travel to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One MQTT connection per device, QoS 1 publishes.
    #[default]
    Mqtt,
    /// Line-protocol batches to the HTTP API's `/api/v2/write` ([`crate::http`]).
    Http,
}

impl Transport {
    /// The name used on the command line: `mqtt`, `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
        }
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mqtt" => Ok(Transport::Mqtt),
            "http" => Ok(Transport::Http),
            other => Err(format!(
                "unknown transport {other:?}: expected mqtt or http"
            )),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a live run adds to [`SimConfig`].
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The scenario; `None` runs the classic load generator.
    pub scenario: Option<Scenario>,
    /// Write the ground truth (NDJSON, [`crate::faults`]) to this file.
    pub truth: Option<PathBuf>,
    /// Inject no faults (clean data).
    pub clean: bool,
    /// The HTTP API. With a token, the devices are registered there first
    /// ([`crate::provision`]) and connect with their own tokens; the HTTP transport writes
    /// there.
    pub api: ApiConfig,
    /// How readings travel.
    pub transport: Transport,
    /// Most MQTT connections in progress at once (connect, then wait for CONNACK).
    pub connect_concurrency: usize,
    /// Connect every device, report the connect storm, disconnect; publish nothing.
    pub connect_only: bool,
    /// Registration requests in flight at once while provisioning.
    pub provision_concurrency: usize,
    /// HTTP transport: most lines per write request.
    pub batch_lines: usize,
    /// HTTP transport: write requests in flight at once.
    pub http_requests: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            scenario: None,
            truth: None,
            clean: false,
            api: ApiConfig::default(),
            transport: Transport::Mqtt,
            connect_concurrency: 1000,
            connect_only: false,
            provision_concurrency: 32,
            batch_lines: 5000,
            http_requests: 4,
        }
    }
}

/// What a run is doing now ([`Progress::phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Registering devices through the API.
    Provisioning,
    /// Connecting and publishing (or writing over HTTP).
    Running,
}

/// Live counters, readable while the simulation runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Publishes (or, over HTTP, lines) sent (live) or rows written (file).
    pub sent: AtomicU64,
    /// Publishes (lines) acknowledged with success.
    pub acked: AtomicU64,
    /// Publishes (lines) refused or lost, and connection failures.
    pub errors: AtomicU64,
    /// Devices connected now.
    pub connected: AtomicU64,
    /// Faults injected so far (live).
    pub faults: AtomicU64,
    /// Devices registered (or given a fresh token) so far while provisioning.
    pub provisioned: AtomicU64,
    /// HTTP write requests acknowledged so far.
    pub requests: AtomicU64,
    /// The connect storm: every device's first connection.
    pub connect: ConnectStats,
    /// 0 running, 1 provisioning ([`Phase`]).
    phase: AtomicU8,
    /// Publish→ack latencies, or HTTP write request latencies.
    pub(crate) latencies: Latencies,
    /// Per-measurement publishes and faults by kind, merged as devices finish.
    tally: Mutex<Tally>,
}

impl Progress {
    /// (p50, p99) publish→ack (HTTP: request) latency so far.
    pub fn percentiles(&self) -> (Duration, Duration) {
        self.latencies.percentiles()
    }

    /// The largest publish→ack (HTTP: request) latency so far.
    pub fn max_latency(&self) -> Duration {
        self.latencies.max()
    }

    /// What the run is doing now.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Provisioning,
            _ => Phase::Running,
        }
    }

    fn set_phase(&self, phase: Phase) {
        let v = match phase {
            Phase::Provisioning => 1,
            Phase::Running => 0,
        };
        self.phase.store(v, Ordering::Relaxed);
    }

    fn record_latency(&self, d: Duration) {
        self.latencies.record(d);
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

    pub(crate) fn merge_measurements(&self, measurements: &BTreeMap<String, u64>) {
        self.merge(&Tally {
            measurements: measurements.clone(),
            faults: FaultCounts::new(),
        });
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
    /// Where the readings went: the MQTT server, or the HTTP API with the HTTP transport.
    pub server: String,
    /// How readings travelled: `mqtt` or `http`.
    pub transport: Transport,
    /// The HTTP API, if the run used it (provisioning or the HTTP transport).
    pub api: Option<String>,
    /// Whether devices were provisioned and connected with their own tokens.
    pub authenticated: bool,
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
    /// Most MQTT connections in progress at once.
    pub connect_concurrency: usize,
    /// Whether the run only connected and disconnected.
    pub connect_only: bool,
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
    /// Publishes sent (HTTP transport: lines).
    pub sent: u64,
    /// Publishes acknowledged with success (HTTP transport: lines in batches answered 204).
    pub acked: u64,
    /// Refusals, lost publishes (lines) and connection failures.
    pub errors: u64,
    /// Wall time of the run in seconds, provisioning excluded.
    pub elapsed_s: f64,
    /// Acknowledged publishes (lines) per second.
    pub acked_per_s: f64,
    /// Median publish→ack latency (HTTP transport: write request latency) in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile publish→ack (request) latency in milliseconds.
    pub p99_ms: f64,
    /// Largest publish→ack (request) latency in milliseconds.
    pub max_ms: f64,
    /// Publishes sent per measurement (`telemetry` for the classic run).
    pub measurements: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Where the ground truth was written.
    pub truth: Option<PathBuf>,
    /// Registering the devices, when the run was given an API token.
    pub provisioning: Option<ProvisionReport>,
    /// The connect storm (MQTT transport).
    pub connect: Option<ConnectReport>,
    /// The HTTP transport's requests.
    pub http: Option<HttpReport>,
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
/// reached or `cancel` fires: provision the devices if `options.api` has a token, then
/// connect them and publish (or only connect, or write over HTTP).
pub async fn run_with(
    config: SimConfig,
    options: LiveOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<SimReport, SimError> {
    let devices = config.devices.max(1);
    let stop = cancel.child_token();
    let uses_api = options.api.token.is_some() || options.transport == Transport::Http;
    let api = if uses_api {
        Some(Api::new(
            &options.api,
            options.provision_concurrency.max(options.http_requests),
        )?)
    } else {
        None
    };
    let provisioned = match (&api, &options.api.token) {
        (Some(api), Some(_)) => {
            progress.set_phase(Phase::Provisioning);
            let fleet_devices = sim_devices(&config, options.scenario.as_ref())?;
            let device_type = options
                .scenario
                .as_ref()
                .map_or_else(|| "sim".to_owned(), |s| s.name.clone());
            let result = crate::provision::provision(
                api,
                fleet_devices,
                &device_type,
                options.transport == Transport::Mqtt,
                options.provision_concurrency,
                &progress,
                &stop,
            )
            .await;
            progress.set_phase(Phase::Running);
            Some(result?)
        }
        _ => None,
    };
    let (tokens, provisioning) = match provisioned {
        Some(p) => (Some(p.tokens), Some(p.report)),
        None => (None, None),
    };

    // The run proper: its clock and its duration start after provisioning.
    let start = Instant::now();
    if let Some(d) = config.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let scenario_name = options.scenario.as_ref().map(|s| s.name.clone());
    let faults = options.scenario.is_some() && !options.clean && !options.connect_only;
    let truth = options.truth.clone();
    let connector = Arc::new(Connector {
        server: config.server,
        version: config.version,
        tokens,
        permits: Semaphore::new(options.connect_concurrency.max(1)),
        progress: Arc::clone(&progress),
    });
    let mut http = None;
    let outcome = match (options.transport, &api) {
        (Transport::Http, Some(api)) => run_http(&config, &options, api.clone(), &progress, &stop)
            .await
            .map(|report| http = Some(report)),
        _ if options.connect_only => {
            run_connect_only(&config, &connector, &stop).await;
            Ok(())
        }
        _ => match &options.scenario {
            None => run_classic(&config, &connector, &progress, &stop).await,
            Some(scenario) => {
                run_scenario(&config, scenario, &options, &connector, &progress, &stop).await
            }
        },
    };
    stop.cancel();
    outcome?;
    let elapsed = start.elapsed().as_secs_f64();
    let (p50, p99) = progress.percentiles();
    let acked = progress.acked.load(Ordering::Relaxed);
    let tally = progress.tally();
    let connect = (options.transport == Transport::Mqtt)
        .then(|| progress.connect.report(options.connect_concurrency.max(1)));
    Ok(SimReport {
        devices,
        sent: progress.sent.load(Ordering::Relaxed),
        acked,
        errors: progress.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        acked_per_s: if elapsed > 0.0 {
            acked as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: ms(p50),
        p99_ms: ms(p99),
        max_ms: ms(progress.max_latency()),
        measurements: tally.measurements,
        faults: tally.faults,
        truth,
        provisioning,
        connect,
        http,
        config: ReportConfig {
            server: match options.transport {
                Transport::Mqtt => config.server.to_string(),
                Transport::Http => options.api.addr.clone(),
            },
            transport: options.transport,
            api: uses_api.then(|| options.api.addr.clone()),
            authenticated: options.api.token.is_some(),
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
            connect_concurrency: options.connect_concurrency.max(1),
            connect_only: options.connect_only,
            scenario: scenario_name,
            faults,
        },
    })
}

/// The run's devices as the registry is told about them: ids `{prefix}{index}`, and with a
/// scenario its tags (the id tag aside).
fn sim_devices(
    config: &SimConfig,
    scenario: Option<&Scenario>,
) -> Result<Vec<SimDevice>, SimError> {
    let devices = config.devices.max(1);
    let Some(scenario) = scenario else {
        return Ok((0..devices)
            .map(|i| SimDevice {
                id: format!("{}{i}", config.prefix),
                tags: BTreeMap::new(),
            })
            .collect());
    };
    // The tags do not depend on time or cadence: a fleet built for them alone gives the
    // same devices as the run's.
    let fleet = Fleet::new(
        scenario,
        FleetConfig {
            devices,
            seed: config.seed,
            prefix: Some(config.prefix.clone()),
            start_ns: now_ns(),
            end_ns: None,
            cadence: Cadence::Manual,
            faults: false,
        },
    )?;
    let id_tag = scenario.devices.id_tag.as_str();
    Ok((0..devices)
        .map(|i| {
            let sim = fleet.device(i);
            SimDevice {
                id: sim.id().to_owned(),
                tags: sim
                    .tags()
                    .filter(|(k, _)| *k != id_tag)
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            }
        })
        .collect())
}

/// How devices connect: their credentials, the bound on connections in progress, and the
/// connect-storm figures. Shared by every device task.
struct Connector {
    server: SocketAddr,
    version: ProtocolVersion,
    /// Device tokens by device index (provisioned); `None`: connect anonymously.
    tokens: Option<Vec<Option<String>>>,
    /// One permit per connection in progress (TCP connect → CONNACK); waiting devices queue
    /// in order.
    permits: Semaphore,
    progress: Arc<Progress>,
}

impl Connector {
    /// Options for device `index` (id `id`): its token if it has one.
    fn options(&self, index: usize, id: &str) -> ConnectOptions {
        let mut options = ConnectOptions::new(id, self.version);
        if let Some(Some(token)) = self.tokens.as_ref().and_then(|t| t.get(index)) {
            options.username = Some(id.to_owned());
            options.password = Some(token.clone().into_bytes());
        }
        options
    }

    /// Connect with `options`; a device's `first` connection counts in the connect storm.
    async fn connect(&self, options: ConnectOptions, first: bool) -> Result<Client, ClientError> {
        // The semaphore is never closed; without a permit, connect anyway.
        let _permit = self.permits.acquire().await.ok();
        let started = std::time::Instant::now();
        let result = Client::connect_with(self.server, options).await;
        if first {
            let ended = std::time::Instant::now();
            self.progress
                .connect
                .record(started, ended, result.as_ref().map(|_| ()));
        }
        result
    }
}

/// Connect every device at once (bounded by the connector), hold every connection until the
/// last attempt is over, then leave with DISCONNECT. Refusals and failures are counted, not
/// errors of the run: the report is the point, even when nothing connected.
async fn run_connect_only(
    config: &SimConfig,
    connector: &Arc<Connector>,
    stop: &CancellationToken,
) {
    let progress = &connector.progress;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.devices.max(1) {
        let connector = Arc::clone(connector);
        let id = format!("{}{i}", config.prefix);
        tasks.spawn(async move { connector.connect(connector.options(i, &id), true).await });
    }
    let mut clients = Vec::new();
    let mut aborted = false;
    loop {
        let joined = tokio::select! {
            () = stop.cancelled(), if !aborted => {
                // Stopped during the storm: give up the connections still being made.
                aborted = true;
                tasks.abort_all();
                continue;
            }
            joined = tasks.join_next() => joined,
        };
        match joined {
            None => break,
            Some(Ok(Ok(client))) => {
                progress.connected.fetch_add(1, Ordering::Relaxed);
                clients.push(client);
            }
            Some(Ok(Err(e))) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "a device could not connect");
            }
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Some(Err(_)) => {}
        }
    }
    let mut leaving = tokio::task::JoinSet::new();
    for client in clients {
        let progress = Arc::clone(progress);
        leaving.spawn(async move {
            let _ = client.disconnect().await;
            progress.connected.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while leaving.join_next().await.is_some() {}
}

/// Write the run's readings over HTTP ([`crate::http`]).
async fn run_http(
    config: &SimConfig,
    options: &LiveOptions,
    api: Api,
    progress: &Arc<Progress>,
    stop: &CancellationToken,
) -> Result<HttpReport, SimError> {
    let unix0 = now_ns();
    let instant0 = Instant::now();
    let now = move || {
        unix0.saturating_add(i64::try_from(instant0.elapsed().as_nanos()).unwrap_or(i64::MAX))
    };
    let rate = config.rate.filter(|r| *r > 0.0);
    let lines = match &options.scenario {
        None => Lines::classic(
            (0..config.devices.max(1))
                .map(|i| format!("{}{i}", config.prefix))
                .collect(),
            config.seed,
            rate,
            unix0,
        ),
        Some(scenario) => Lines::scenario(FleetStream::new(Fleet::new(
            scenario,
            FleetConfig {
                devices: config.devices.max(1),
                seed: config.seed,
                prefix: Some(config.prefix.clone()),
                start_ns: unix0,
                end_ns: None,
                cadence: rate.map_or(Cadence::Manual, Cadence::Rate),
                faults: !options.clean,
            },
        )?)),
    };
    let mut truth = match &options.truth {
        None => None,
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| SimError::Io {
                what: path.display().to_string(),
                source,
            })?,
        )),
    };
    let run = crate::http::HttpRun {
        api,
        batch_lines: options.batch_lines,
        in_flight: options.http_requests,
        count: config.count,
        progress,
        stop,
        truth: truth.as_mut(),
    };
    let (report, faults) = crate::http::run(run, lines, now).await?;
    progress.merge(&Tally {
        measurements: BTreeMap::new(),
        faults,
    });
    if let (Some(file), Some(path)) = (truth.as_mut(), &options.truth) {
        file.flush().map_err(|source| SimError::Io {
            what: path.display().to_string(),
            source,
        })?;
    }
    Ok(report)
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
    connector: &Arc<Connector>,
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
        let connector = Arc::clone(connector);
        let stop = stop.clone();
        let budget = budget.clone();
        let mut readings = Readings::new(config.seed, i as u64);
        if let Some(field) = &field {
            readings = readings.with_field(Arc::clone(field), *position);
        }
        tasks.spawn(async move {
            let device = format!("{}{i}", cfg.prefix);
            let options = connector.options(i, &device);
            classic_device(
                &cfg,
                &connector,
                options,
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

#[allow(clippy::too_many_arguments)]
async fn classic_device(
    cfg: &SimConfig,
    connector: &Connector,
    options: ConnectOptions,
    device: String,
    mut readings: Readings,
    interval: Option<Duration>,
    progress: Arc<Progress>,
    stop: CancellationToken,
    budget: Option<Arc<AtomicU64>>,
) -> Result<(), ClientError> {
    let mut client = match connector.connect(options, true).await {
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
    /// Credentials, connect bound and storm figures.
    connector: Arc<Connector>,
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

    fn connect_options(&self, index: usize, id: &str) -> ConnectOptions {
        let mut options = self.connector.options(index, id);
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
    connector: &Arc<Connector>,
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
        connector: Arc::clone(connector),
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
    let mut client = match shared
        .connector
        .connect(shared.connect_options(index, &id), true)
        .await
    {
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
            match go_offline(&shared, client, index, &id, until_ns, abrupt, &stop).await {
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
    index: usize,
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
        match shared
            .connector
            .connect(shared.connect_options(index, id), false)
            .await
        {
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
