//! What live mode measures, kept while the run goes on: latency samples with their
//! percentiles ([`Latencies`]), and the figures of the connect storm at the start of a run
//! ([`ConnectStats`] → [`ConnectReport`]).
//!
//! Percentiles are nearest-rank: the p-th percentile of n sorted samples is the sample of
//! rank ⌈p·n⌉ (so p50 of 1..=100 is 50 and p99 is 99). Samples are kept in microseconds, at
//! most [`MAX_SAMPLES`] per run (later ones only move the maximum).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::ClientError;

/// Most latency samples kept per series.
pub const MAX_SAMPLES: usize = 2_000_000;

/// Latency samples (microseconds, capped at [`MAX_SAMPLES`]) and their maximum; shared by
/// the tasks that record them.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Largest latency so far, microseconds (kept beyond the cap).
    max_us: AtomicU64,
    /// The samples, in arrival order; sorted copies answer percentiles.
    samples: Mutex<Vec<u32>>,
}

impl Latencies {
    /// Record one latency.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() < MAX_SAMPLES {
            samples.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// Samples recorded (up to the cap).
    pub fn len(&self) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (p50, p99) so far; zero without samples.
    pub fn percentiles(&self) -> (Duration, Duration) {
        let mut sorted = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        sorted.sort_unstable();
        let at = |q| Duration::from_micros(u64::from(percentile(&sorted, q)));
        (at(0.50), at(0.99))
    }

    /// The largest latency so far.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }
}

/// The nearest-rank `q`-quantile (0 ≤ q ≤ 1) of `sorted` (ascending); 0 when empty.
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The connect storm: every device's first connection, from TCP connect to CONNACK.
/// Reconnections after a fault are not part of it.
#[derive(Debug, Default)]
pub struct ConnectStats {
    /// First connections finished, with success or not.
    attempted: AtomicU64,
    /// First connections accepted (CONNACK success).
    connected: AtomicU64,
    /// TCP connect → CONNACK of each accepted first connection.
    latencies: Latencies,
    /// When the storm began and ended, and why connections failed; one short lock per
    /// connection.
    outcomes: Mutex<Outcomes>,
}

#[derive(Debug, Default)]
struct Outcomes {
    /// The earliest start of a first connection.
    first_start: Option<Instant>,
    /// The latest CONNACK of a first connection.
    last_connack: Option<Instant>,
    /// Refusals (CONNACK with an error reason code), by reason.
    refused: BTreeMap<String, u64>,
    /// Other failures (network, timeout, protocol), by error.
    failed: BTreeMap<String, u64>,
}

impl ConnectStats {
    /// Record a first connection that started at `started` and ended at `ended` with
    /// `outcome`.
    pub fn record(&self, started: Instant, ended: Instant, outcome: Result<(), &ClientError>) {
        let mut o = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        o.first_start = Some(o.first_start.map_or(started, |s| s.min(started)));
        match outcome {
            Ok(()) => {
                o.last_connack = Some(o.last_connack.map_or(ended, |e| e.max(ended)));
                self.connected.fetch_add(1, Ordering::Relaxed);
                self.latencies
                    .record(ended.saturating_duration_since(started));
            }
            Err(ClientError::Refused(code)) => {
                *o.refused
                    .entry(format!("{code} (0x{:02X})", code.0))
                    .or_default() += 1;
            }
            Err(e) => *o.failed.entry(e.to_string()).or_default() += 1,
        }
        self.attempted.fetch_add(1, Ordering::Relaxed);
    }

    /// First connections finished so far.
    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::Relaxed)
    }

    /// First connections accepted so far.
    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// The figures so far.
    pub fn report(&self, concurrency: usize) -> ConnectReport {
        let (p50, p99) = self.latencies.percentiles();
        let o = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        let storm = match (o.first_start, o.last_connack) {
            (Some(s), Some(e)) => e.saturating_duration_since(s),
            _ => Duration::ZERO,
        };
        ConnectReport {
            attempted: self.attempted(),
            connected: self.connected(),
            refused: o.refused.clone(),
            failed: o.failed.clone(),
            concurrency,
            storm_s: storm.as_secs_f64(),
            p50_ms: ms(p50),
            p99_ms: ms(p99),
            max_ms: ms(self.latencies.max()),
        }
    }
}

/// The connect storm in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectReport {
    /// Devices that tried to connect.
    pub attempted: u64,
    /// Devices the server accepted.
    pub connected: u64,
    /// Connections the server refused, by CONNACK reason code.
    pub refused: BTreeMap<String, u64>,
    /// Connections that failed otherwise (network, timeout), by error.
    pub failed: BTreeMap<String, u64>,
    /// Connections allowed in progress at once (`--connect-concurrency`).
    pub concurrency: usize,
    /// Seconds from the first connection's start to the last CONNACK.
    pub storm_s: f64,
    /// Median TCP connect → CONNACK, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile TCP connect → CONNACK, milliseconds.
    pub p99_ms: f64,
    /// Slowest TCP connect → CONNACK, milliseconds.
    pub max_ms: f64,
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use ferrite_mqtt_codec::ReasonCode;

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.5), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&sorted, 1.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[1, 2], 0.5), 1);
        assert_eq!(percentile(&[1, 2], 0.99), 2);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn latencies_answer_percentiles_and_max_in_any_order() {
        let l = Latencies::default();
        assert_eq!(l.percentiles(), (Duration::ZERO, Duration::ZERO));
        for ms in (1..=200u64).rev() {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.len(), 200);
        assert_eq!(
            l.percentiles(),
            (Duration::from_millis(100), Duration::from_millis(198))
        );
        assert_eq!(l.max(), Duration::from_millis(200));
    }

    #[test]
    fn the_storm_runs_from_the_first_start_to_the_last_connack() {
        let stats = ConnectStats::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        stats.record(at(10), at(30), Ok(()));
        stats.record(at(0), at(50), Ok(()));
        // A refusal after the last CONNACK does not lengthen the storm.
        stats.record(
            at(20),
            at(90),
            Err(&ClientError::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)),
        );
        stats.record(at(5), at(95), Err(&ClientError::Timeout));
        stats.record(
            at(6),
            at(96),
            Err(&ClientError::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD)),
        );
        let r = stats.report(8);
        assert_eq!((r.attempted, r.connected, r.concurrency), (5, 2, 8));
        assert!((r.storm_s - 0.050).abs() < 1e-9, "{r:?}");
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (20.0, 50.0, 50.0));
        assert_eq!(
            r.refused,
            BTreeMap::from([("Bad User Name or Password (0x86)".to_owned(), 2)])
        );
        assert_eq!(
            r.failed,
            BTreeMap::from([("timed out waiting for the server".to_owned(), 1)])
        );
    }
}
