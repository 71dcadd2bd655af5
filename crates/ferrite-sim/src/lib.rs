//! Ferrite's device fleet simulator.
//!
//! Owns `ferrite simulate`: N simulated devices, each its own MQTT connection (client id =
//! device id), publishing plausible readings ([`Readings`]: temperature from a daily cycle,
//! a spatially correlated field over the fleet's positions and ARMA sensor noise; humidity;
//! a slowly draining battery) as flat JSON to `devices/{id}/telemetry` at a total
//! target rate, at QoS 1, pipelining up to a window of unacknowledged publishes. It measures
//! what a device sees: publishes acknowledged, refused, and publish→PUBACK latency.
//!
//! Speaks MQTT through `ferrite-mqtt-codec`, the same codec the server uses ([`client`]).
//! The stream models live in [`models`] (arrival rate with seasonality, ARMA(p, q),
//! spatially correlated fields for 100k devices), each unit-tested against its stated
//! statistics; readings use the ARMA and spatial models. Still to come: the seasonal arrival
//! rate driving publish times, fault injection, scenarios and file output.

pub mod client;
pub mod models;
mod readings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrite_mqtt_codec::ProtocolVersion;
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use client::{Client, ClientError};
pub use readings::{Readings, SharedField, grid_positions};

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

/// Live counters, readable while the simulation runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Publishes sent.
    pub sent: AtomicU64,
    /// Publishes acknowledged with success.
    pub acked: AtomicU64,
    /// Publishes refused by the server (error reason code) and connection failures.
    pub errors: AtomicU64,
    /// Devices connected now.
    pub connected: AtomicU64,
    /// Publish→ack latencies in microseconds (capped sample).
    latencies: Mutex<Vec<u32>>,
}

/// Most latency samples kept per run.
const MAX_SAMPLES: usize = 2_000_000;

impl Progress {
    fn record_latency(&self, d: Duration) {
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.len() < MAX_SAMPLES {
            l.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// (p50, p99) publish→ack latency so far.
    pub fn percentiles(&self) -> (Duration, Duration) {
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// No device could connect.
    #[error("no device could connect to {server}: {source}")]
    Connect {
        /// The server address.
        server: SocketAddr,
        /// The first failure.
        source: ClientError,
    },
}

/// Run the simulation until its duration or count is reached or `cancel` fires.
pub async fn run(
    config: SimConfig,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<SimReport, SimError> {
    let start = Instant::now();
    let devices = config.devices.max(1);
    let budget = config.count.map(|c| Arc::new(AtomicU64::new(c)));
    let stop = cancel.child_token();
    if let Some(d) = config.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
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
                        let mut f = field.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let _ = f.step(0.995, &mut field_rng);
                    }
                }
            }
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, position) in positions.iter().enumerate() {
        let cfg = config.clone();
        let progress = Arc::clone(&progress);
        let stop = stop.clone();
        let budget = budget.clone();
        let mut readings = Readings::new(config.seed, i as u64);
        if let Some(field) = &field {
            readings = readings.with_field(Arc::clone(field), *position);
        }
        tasks.spawn(async move {
            let device = format!("{}{i}", cfg.prefix);
            device_loop(
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
    if !connected_any && let Some(source) = first_error {
        return Err(SimError::Connect {
            server: config.server,
            source,
        });
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (p50, p99) = progress.percentiles();
    let acked = progress.acked.load(Ordering::Relaxed);
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
        p50_ms: p50.as_secs_f64() * 1e3,
        p99_ms: p99.as_secs_f64() * 1e3,
    })
}

async fn device_loop(
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
                if let Some(b) = &budget
                    && b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err()
                {
                    break Ok(());
                }
                // Strictly increasing per device: two readings of one device never share a
                // timestamp (which the store would treat as a retry and replace).
                last_ts = now_us().max(last_ts + 1);
                let payload = readings.next_json(last_ts);
                if let Err(e) = client.publish_qos1(&topic, payload.into_bytes().into()).await {
                    break Err(e);
                }
                progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            ack = client.next_ack() => match ack {
                Ok(ack) => {
                    if ack.reason.is_error() {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    } else {
                        progress.acked.fetch_add(1, Ordering::Relaxed);
                        progress.record_latency(ack.latency);
                    }
                }
                Err(e) => break Err(e),
            },
        }
    };
    // Let outstanding acks arrive (bounded), then leave cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while client.in_flight() > 0 {
            match client.next_ack().await {
                Ok(ack) if !ack.reason.is_error() => {
                    progress.acked.fetch_add(1, Ordering::Relaxed);
                    progress.record_latency(ack.latency);
                }
                Ok(_) => {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    progress.connected.fetch_sub(1, Ordering::Relaxed);
    // A connection lost after connecting is counted and reported, not a failure to start.
    if let Err(e) = &result {
        progress.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device, error = %e, "device stopped");
    }
    Ok(())
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
