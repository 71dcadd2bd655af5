//! Presence events on MQTT: every time a device comes online or goes offline the server
//! publishes a JSON message on
//!
//! - `$ferrite/events/presence/connected/{device-id}` —
//!   `{"device_id", "event": "connected", "at", "connection", "peer"}`;
//! - `$ferrite/events/presence/disconnected/{device-id}` —
//!   `{"device_id", "event": "disconnected", "at", "connection", "reason"}`.
//!
//! Events follow the registry's presence, not raw sockets: when a device reconnects and takes
//! its old session over, subscribers see one `connected` and no `disconnected` (the old
//! connection closing does not make the device offline). `$`-topics are not matched by `#` or
//! `+` at the root; subscribe to `$ferrite/events/presence/#` (anonymous or policy-granted
//! clients). Events are QoS 1, not retained; when more than [`QUEUE`] are waiting to be
//! routed, further ones are dropped and counted rather than slowing connects down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferrite_core::{DeviceId, Timestamp, TopicName};
use ferrite_mqtt::{Message, Router};
use ferrite_mqtt_codec::{Properties, QoS};
use tokio::sync::mpsc;

/// Events waiting to be routed at most.
pub(crate) const QUEUE: usize = 16_384;

/// The topic prefix of presence events.
pub const PRESENCE_TOPIC: &str = "$ferrite/events/presence";

/// A presence change to announce.
#[derive(Debug)]
pub(crate) enum PresenceEvent {
    Connected {
        device: DeviceId,
        connection: u64,
        peer: SocketAddr,
        at: Timestamp,
    },
    Disconnected {
        device: DeviceId,
        connection: u64,
        reason: String,
        at: Timestamp,
    },
}

/// The sending side, held by every device session guard.
#[derive(Clone)]
pub(crate) struct PresenceEvents {
    tx: mpsc::Sender<PresenceEvent>,
    dropped: Arc<AtomicU64>,
}

impl PresenceEvents {
    /// A sender and the receiver [`run`] consumes.
    pub(crate) fn new() -> (Self, mpsc::Receiver<PresenceEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Self {
                tx,
                dropped: Arc::default(),
            },
            rx,
        )
    }

    /// Queue an event without waiting; counted as dropped when the queue is full.
    pub(crate) fn send(&self, event: PresenceEvent) {
        if self.tx.try_send(event).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "presence events dropped: too many at once");
            }
        }
    }
}

fn message(event: &PresenceEvent) -> Option<Message> {
    let (kind, device, at, body) = match event {
        PresenceEvent::Connected {
            device,
            connection,
            peer,
            at,
        } => (
            "connected",
            device,
            *at,
            serde_json::json!({
                "device_id": device,
                "event": "connected",
                "at": at.to_string(),
                "connection": connection,
                "peer": peer.to_string(),
            }),
        ),
        PresenceEvent::Disconnected {
            device,
            connection,
            reason,
            at,
        } => (
            "disconnected",
            device,
            *at,
            serde_json::json!({
                "device_id": device,
                "event": "disconnected",
                "at": at.to_string(),
                "connection": connection,
                "reason": reason,
            }),
        ),
    };
    let topic = TopicName::new(format!("{PRESENCE_TOPIC}/{kind}/{device}")).ok()?;
    Some(Message {
        topic,
        payload: Bytes::from(body.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".to_owned()),
            ..Properties::default()
        },
        publisher: Arc::from("$ferrite"),
        received_at: at,
    })
}

/// Route queued events until every sender is gone.
pub(crate) async fn run(mut rx: mpsc::Receiver<PresenceEvent>, router: Router) {
    while let Some(event) = rx.recv().await {
        if let Some(m) = message(&event) {
            router.publish(m).await;
        }
    }
}
