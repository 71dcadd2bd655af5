//! The telemetry consumer: a durable internal subscriber of the router on
//! `devices/+/telemetry[/+]` that decodes each payload (flat JSON, SenML or line protocol)
//! into points and writes them to the
//! store, settling the message (and so the publisher's PUBACK) only once the write is fsynced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferrite_core::decode::decode_payload;
use ferrite_core::{Classify, ErrorKind, TelemetryTopic};
use ferrite_mqtt::{Delivery, Verdict};
use ferrite_mqtt_codec::ReasonCode;
use ferrite_store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Ingest counters.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Telemetry messages stored.
    pub stored: AtomicU64,
    /// Telemetry messages rejected (bad payload, bad topic, schema conflict).
    pub rejected: AtomicU64,
    /// Telemetry messages that failed because the store was unavailable.
    pub failed: AtomicU64,
}

/// Run until the router drops the subscription (at shutdown). Each queued write is awaited
/// on its own task so many writes share one group commit; `tasks` lets shutdown wait for them.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    store: Arc<Store>,
    stats: Arc<IngestStats>,
    tasks: TaskTracker,
) {
    while let Some(delivery) = rx.recv().await {
        let message = Arc::clone(&delivery.message);
        let topic = match TelemetryTopic::parse(&message.topic) {
            Ok(Some(t)) => t,
            Ok(None) => {
                delivery.settle(Verdict::Accepted);
                continue;
            }
            Err(e) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %message.topic, error = %e, "telemetry rejected: bad topic");
                delivery.settle(Verdict::Rejected(
                    ReasonCode::TOPIC_NAME_INVALID,
                    e.to_string(),
                ));
                continue;
            }
        };
        let points = match decode_payload(
            &message.payload,
            &topic.device,
            &topic.measurement,
            message.received_at,
        ) {
            Ok(p) => p,
            Err(e) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device_id = %topic.device, error = %e, "telemetry rejected");
                delivery.settle(Verdict::Rejected(
                    ReasonCode::PAYLOAD_FORMAT_INVALID,
                    e.to_string(),
                ));
                continue;
            }
        };
        // Waits while the store's queue is full: backpressure up to the publisher.
        let pending = match store.submit(points).await {
            Ok(p) => p,
            Err(e) => {
                settle_error(delivery, &e, &topic, &stats);
                continue;
            }
        };
        let stats = Arc::clone(&stats);
        tasks.spawn(async move {
            match pending.wait().await {
                Ok(()) => {
                    stats.stored.fetch_add(1, Ordering::Relaxed);
                    delivery.settle(Verdict::Accepted);
                }
                Err(e) => settle_error(delivery, &e, &topic, &stats),
            }
        });
    }
}

fn settle_error(delivery: Delivery, e: &StoreError, topic: &TelemetryTopic, stats: &IngestStats) {
    let code = match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Conflict => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(device_id = %topic.device, measurement = %topic.measurement, error = %e, "telemetry rejected");
            ReasonCode::PAYLOAD_FORMAT_INVALID
        }
        _ if matches!(
            e,
            StoreError::Full { .. } | StoreError::OverBudget { .. } | StoreError::FlushPending
        ) =>
        {
            // Overload or a full budget, not a fault: counted, logged per message only at
            // debug (the store logs the cause once).
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(device_id = %topic.device, error = %e, "telemetry refused");
            ReasonCode::QUOTA_EXCEEDED
        }
        _ => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(device_id = %topic.device, error = %e, "telemetry not stored");
            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
        }
    };
    delivery.settle(Verdict::Rejected(code, e.to_string()));
}
