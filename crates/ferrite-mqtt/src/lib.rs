//! Ferrite's MQTT gateway.
//!
//! Owns the MQTT server side: the TCP and TLS listeners ([`MqttServer`]; mutual TLS hands the
//! client certificate to the [`Authenticator`]), one task per connection that
//! speaks MQTT 3.1.1 and 5.0 (negotiated per connection), and the [`Router`] every message
//! goes through, with its subscription tree and retained messages. Internal consumers (the
//! store, rules, fleet state) subscribe to the router exactly like clients do
//! ([`Router::subscribe_internal`]); publishers are acknowledged only after the durable ones
//! settled the message.
//!
//! Who may connect is decided behind the [`Authenticator`] trait. The wire format is
//! `ferrite-mqtt-codec`'s. Sessions with Clean Start = 0 outlive their connection (`session`:
//! subscriptions kept, messages queued, in-flight QoS 1/2 resent on resume, expiry, delayed
//! wills). A router made with [`Router::durable`] keeps retained messages and persistent
//! sessions (subscriptions, queued and in-flight QoS 1/2 deliveries, inbound QoS 2 state)
//! crash-safe in a redb file (`persist`), read back when the gateway starts; acknowledgements
//! wait for that state to be committed. MQTT over WebSocket enters through [`MqttHandle`]
//! from the HTTP API.

mod auth;
mod config;
mod connection;
mod persist;
pub mod router;
mod server;
mod session;
mod tls;
pub mod trie;

use std::net::SocketAddr;

pub use auth::{AnonymousLoopback, Authenticator, ConnectRequest, SessionGuard, Unrestricted};
pub use config::{ClientAuth, MqttConfig, TlsConfig};
pub use persist::{PersistError, PersistStats};
pub use router::{
    Delivery, InternalSubscription, Message, PublishOutcome, QueueFullPolicy, Router, Verdict,
};
pub use server::{GatewayStats, MqttHandle, MqttServer, MqttStats};

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The listener could not be bound.
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be loaded.
    #[error("MQTT over TLS: {0}")]
    Tls(String),
}

impl ferrite_core::Classify for MqttError {
    fn kind(&self) -> ferrite_core::ErrorKind {
        ferrite_core::ErrorKind::Unavailable
    }
}
