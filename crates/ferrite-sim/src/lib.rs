//! Ferrite's device fleet simulator: live load against a running server, and offline
//! datasets with ground truth.
//!
//! Owns `ferrite simulate`. Its parts, from pure to I/O:
//!
//! - [`models`] — the pure stream models: arrival rate with seasonality (λ(t), thinning),
//!   ARMA(p, q), spatially correlated fields for 100k devices; each unit-tested against its
//!   stated statistics.
//! - [`scenario`] — [`Scenario`]: measurements, fields and their models, device tags,
//!   arrival rate and fault rates as a TOML file; four built in (`smart_building`,
//!   `fleet_trucks` in the TSBS `iot` schema, `factory_vibration`, `city_air_quality`).
//! - [`fleet`] — the sans-IO generator: a [`Fleet`] of [`DeviceSim`]s that turn tick times
//!   into [`Reading`]s, faults and ground truth, deterministic for a seed.
//! - [`faults`] — the fault kinds and the ground-truth NDJSON format ([`TruthRecord`]).
//! - [`encode`] — line protocol, NDJSON, CSV, and the live MQTT topic and JSON payload.
//! - [`file`](mod@file) — [`generate_file`]: a dataset in arrival order, streamed in bounded memory.
//! - [`live`] — [`run`] / [`run_with`]: N MQTT connections ([`client`], a small MQTT client
//!   over `ferrite-mqtt-codec`, the codec the server uses) publishing at a target rate with
//!   a window of unacknowledged QoS 1 publishes, measuring acks and publish→PUBACK latency
//!   into a [`SimReport`]; with a scenario, faults act on the wire (disconnects, late and
//!   repeated publishes).
//!
//! Not here: the command line (the `ferrite` binary parses flags and prints), and HTTP
//! sending (callers batch [`DeviceSim::write_line_protocol`] output themselves).

pub mod client;
pub mod encode;
pub mod faults;
pub mod file;
pub mod fleet;
pub mod live;
pub mod models;
mod readings;
pub mod scenario;

use std::net::SocketAddr;

use client::ClientError;

pub use encode::{CsvLayout, OutputFormat};
pub use faults::{FaultCounts, FaultKind, TruthRecord};
pub use file::{FileConfig, FileReport, FleetStream, generate_file, generate_to_path};
pub use fleet::{Cadence, DeviceSim, Fleet, FleetConfig, Outgoing, Reading, Tick};
pub use live::{LiveOptions, Progress, ReportConfig, SimConfig, SimReport, run, run_with};
pub use readings::{Readings, SharedField, grid_positions};
pub use scenario::{BUILTIN_NAMES, Scenario, ScenarioError};

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
    /// The scenario is unknown or invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The run's parameters make no sense (an empty time span, a zero rate, …).
    #[error("invalid simulation: {0}")]
    Config(String),
    /// Writing the output or the ground truth failed.
    #[error("writing {what}: {source}")]
    Io {
        /// What was being written (a path or "the output").
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ferrite_core::Classify for SimError {
    fn kind(&self) -> ferrite_core::ErrorKind {
        match self {
            SimError::Connect { .. } => ferrite_core::ErrorKind::Unavailable,
            SimError::Scenario(e) => e.kind(),
            SimError::Config(_) => ferrite_core::ErrorKind::InvalidInput,
            SimError::Io { .. } => ferrite_core::ErrorKind::Internal,
        }
    }
}
