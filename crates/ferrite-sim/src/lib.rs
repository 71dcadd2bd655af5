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
//!   repeated publishes). All devices connect at once at the start (the connect storm,
//!   [`stats`]), or only that (`connect_only`).
//! - [`provision`] — against a secured server: register the devices through the fleet REST
//!   API and fetch a token per device, a bounded number of requests in flight ([`api`] is the
//!   small HTTP client both this and the HTTP transport use).
//! - [`http`](mod@http) — the HTTP transport: line-protocol batches to `/api/v2/write`
//!   ([`Lines`] decides what is due, sans-IO).
//! - [`stats`] — latency percentiles and the connect-storm figures.
//!
//! Not here: the command line (the `ferrite` binary parses flags and prints), and raising
//! the open-file limit for large fleets (see [`live`]).

pub mod api;
pub mod client;
pub mod encode;
pub mod faults;
pub mod file;
pub mod fleet;
pub mod http;
pub mod live;
pub mod models;
pub mod mqttbench;
pub mod provision;
mod readings;
pub mod scenario;
pub mod stats;
pub mod writebench;

use std::net::SocketAddr;

use client::ClientError;

pub use api::ApiConfig;
pub use encode::{CsvLayout, OutputFormat};
pub use faults::{FaultCounts, FaultKind, TruthRecord};
pub use file::{FileConfig, FileReport, FleetStream, generate_file, generate_to_path};
pub use fleet::{Cadence, DeviceSim, Fleet, FleetConfig, Outgoing, Reading, Tick};
pub use http::{HttpReport, Lines};
pub use live::{
    LiveOptions, Phase, Progress, ReportConfig, SimConfig, SimReport, Transport, run, run_with,
};
pub use provision::ProvisionReport;
pub use readings::{Readings, SharedField, grid_positions};
pub use scenario::{BUILTIN_NAMES, Scenario, ScenarioError};
pub use stats::{ConnectReport, ConnectStats, Latencies};

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
    /// The HTTP API refused a request.
    #[error("{what}: the server answered {}: {message}", status_text(*.status))]
    Api {
        /// What was being done ("registering device d1").
        what: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation (its `{"error": ...}`).
        message: String,
    },
    /// The HTTP API could not be reached or did not answer.
    #[error("{what}: cannot reach Ferrite's HTTP API at {url}: {source}")]
    Unreachable {
        /// What was being done.
        what: String,
        /// The API's base URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The run was stopped (Ctrl-C) before it could start.
    #[error("stopped while {0}")]
    Stopped(&'static str),
}

/// `401 Unauthorized`.
fn status_text(status: u16) -> String {
    reqwest::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

impl ferrite_core::Classify for SimError {
    fn kind(&self) -> ferrite_core::ErrorKind {
        match self {
            SimError::Connect { .. } => ferrite_core::ErrorKind::Unavailable,
            SimError::Scenario(e) => e.kind(),
            SimError::Config(_) => ferrite_core::ErrorKind::InvalidInput,
            SimError::Io { .. } => ferrite_core::ErrorKind::Internal,
            SimError::Api { status, .. } => match status {
                401 | 403 => ferrite_core::ErrorKind::Unauthorized,
                404 => ferrite_core::ErrorKind::NotFound,
                409 => ferrite_core::ErrorKind::Conflict,
                400..=499 => ferrite_core::ErrorKind::InvalidInput,
                503 => ferrite_core::ErrorKind::Unavailable,
                _ => ferrite_core::ErrorKind::Internal,
            },
            SimError::Unreachable { .. } | SimError::Stopped(_) => {
                ferrite_core::ErrorKind::Unavailable
            }
        }
    }
}
