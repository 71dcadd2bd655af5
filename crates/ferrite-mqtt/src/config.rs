//! `[mqtt]` settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// MQTT listener and session limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// TCP address of the MQTT listener (MQTT 3.1.1 and 5.0 on the same port).
    pub listen: SocketAddr,
    /// Connections beyond this wait in the OS backlog until one closes.
    pub max_connections: usize,
    /// Largest packet accepted from a client, in bytes; larger packets close the connection
    /// (MQTT 5 reason 0x95).
    pub max_packet_size: u32,
    /// QoS 1/2 publishes a client may have unacknowledged at once (MQTT 5 Receive Maximum).
    /// Reading from a client pauses while this many are waiting for the store.
    pub receive_maximum: u16,
    /// Deliveries queued per session, connected or not; what does not fit is dropped as
    /// `session_queue_full` says, and counted.
    pub session_queue: usize,
    /// Bytes (topic + payload) queued per session at most, connected or not; deliveries
    /// beyond it are dropped and counted like those beyond `session_queue`.
    pub session_queue_bytes: usize,
    /// What a full session queue drops: `drop_newest` (the new delivery; what is queued
    /// arrives) or `drop_oldest` (the oldest queued deliveries, also from the session
    /// store; the newest arrive).
    pub session_queue_full: crate::router::QueueFullPolicy,
    /// Bytes (topic + payload) queued across all sessions at most (0: no limit): the
    /// gateway's memory high-watermark. While it is reached, a publish that has session
    /// subscribers waits (its publisher is not read meanwhile) until the sessions drain below
    /// it, at most `queue_wait`; deliveries that still do not fit are dropped and counted as
    /// `dropped_memory`.
    pub max_queued_bytes: usize,
    /// Longest a publish waits for room under `max_queued_bytes`.
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
    /// Longest keep-alive granted; clients asking for more (or for none, in MQTT 5) are told
    /// this value as Server Keep Alive.
    #[serde(with = "humantime_serde")]
    pub max_keep_alive: Duration,
    /// Longest a session is kept after its connection ends: MQTT 5 clients asking for a
    /// longer Session Expiry Interval are told this value; MQTT 3.1.1 clients with
    /// Clean Session = 0 get exactly this.
    #[serde(with = "humantime_serde")]
    pub max_session_expiry: Duration,
    /// Sessions kept for disconnected clients at most; a session whose connection ends while
    /// this many are kept ends with it (counted; the client sees Session Present = 0 when it
    /// returns).
    pub max_parked_sessions: usize,
    /// Time a new connection has to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Topic aliases a MQTT 5 client may use when publishing.
    pub topic_alias_maximum: u16,
    /// Retained messages kept; retained publishes to new topics beyond this are not retained
    /// (counted), updates and clears of existing ones always are.
    pub max_retained: usize,
    /// MQTT over TLS (`[mqtt.tls]`).
    pub tls: TlsConfig,
}

/// `[mqtt.tls]`: a second listener speaking MQTT over TLS, started when `cert` is set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain of the server; empty: no TLS listener.
    pub cert: PathBuf,
    /// PEM private key of the server certificate.
    pub key: PathBuf,
    /// PEM CA certificates for mutual TLS: a client certificate must be signed by one of them
    /// and is handed to the authenticator.
    pub client_ca: PathBuf,
    /// With `client_ca`: whether every client must present a certificate (`required`) or
    /// may connect without one and authenticate with a token (`optional`).
    pub client_auth: ClientAuth,
}

/// Whether a TLS client must present a certificate.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Connections without a client certificate fail the handshake.
    #[default]
    Required,
    /// A certificate is checked if presented; without one the client authenticates on CONNECT.
    Optional,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            client_auth: ClientAuth::Required,
        }
    }
}

impl TlsConfig {
    /// Whether a TLS listener is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 100_000,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            session_queue: 1000,
            session_queue_bytes: 4 << 20,
            session_queue_full: crate::router::QueueFullPolicy::DropNewest,
            max_queued_bytes: 1 << 30,
            queue_wait: Duration::from_secs(5),
            max_keep_alive: Duration::from_secs(3600),
            max_session_expiry: Duration::from_secs(2 * 3600),
            max_parked_sessions: 100_000,
            connect_timeout: Duration::from_secs(10),
            topic_alias_maximum: 64,
            max_retained: 100_000,
            tls: TlsConfig::default(),
        }
    }
}

impl MqttConfig {
    /// Problems with these settings, all of them.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.max_connections == 0 {
            errs.push("mqtt.max_connections must be at least 1".to_owned());
        }
        if !(64..=268_435_460).contains(&self.max_packet_size) {
            errs.push("mqtt.max_packet_size must be between 64 and 268435460 bytes".to_owned());
        }
        if self.receive_maximum == 0 {
            errs.push("mqtt.receive_maximum must be at least 1".to_owned());
        }
        if self.session_queue_bytes == 0 {
            errs.push("mqtt.session_queue_bytes must be at least 1".to_owned());
        }
        if self.session_queue == 0 {
            errs.push("mqtt.session_queue must be at least 1".to_owned());
        }
        if self.queue_wait > Duration::from_secs(60) {
            errs.push("mqtt.queue_wait must be at most 60s".to_owned());
        }
        if self.max_keep_alive.is_zero() || self.max_keep_alive > Duration::from_secs(65_535) {
            errs.push("mqtt.max_keep_alive must be between 1s and 65535s".to_owned());
        }
        let (cert, key) = (self.tls.cert.as_os_str(), self.tls.key.as_os_str());
        if cert.is_empty() != key.is_empty() {
            errs.push("mqtt.tls.cert and mqtt.tls.key must be set together".to_owned());
        }
        if cert.is_empty() && !self.tls.client_ca.as_os_str().is_empty() {
            errs.push("mqtt.tls.client_ca needs mqtt.tls.cert and mqtt.tls.key".to_owned());
        }
        if self.max_session_expiry > Duration::from_secs(u64::from(u32::MAX) - 1) {
            errs.push("mqtt.max_session_expiry must be less than 136 years".to_owned());
        }
        if self.connect_timeout.is_zero() {
            errs.push("mqtt.connect_timeout must be more than 0s".to_owned());
        }
        errs
    }
}
