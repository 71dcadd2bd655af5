//! Provisioning by claim over MQTT: a device that has only a claim token (flashed at the
//! factory) enrolls itself.
//!
//! 1. It connects with user name `$claim` and the claim token as password (any client id made
//!    of letters, digits, `-`, `_`, `.`, `:`). The connection may do only what follows.
//! 2. It subscribes to `$ferrite/provision/{client-id}/+` and publishes a JSON request to
//!    `$ferrite/provision/{client-id}/request`: `{}` for a generated id and a token, or
//!    `{"device_id": "...", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}`.
//! 3. The answer arrives on `$ferrite/provision/{client-id}/accepted` —
//!    `{"device": {...}, "token": "fd_..."}` or `{"device": {...}, "certificate": {...}}` — or
//!    on `.../rejected` — `{"error": "..."}`. An MQTT 5 request's correlation data is echoed.
//! 4. It disconnects and reconnects as the new device.
//!
//! Only the claim connection itself can subscribe to its client id's topics, so the credential
//! is never routed to anyone else (clients with full access cannot publish on `$`-topics).
//! Failed claim connects count against the source address in the brute-force limiter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;
use ferrite_api::security::{ProvisionRequest, provisioned_json};
use ferrite_core::{Clock, DeviceId, TopicFilter, TopicName};
use ferrite_fleet::{Fleet, FleetError};
use ferrite_mqtt::{Delivery, Message, Router, SessionGuard};
use ferrite_mqtt_codec::{Properties, QoS, ReasonCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The user name that marks a claim connection.
pub const CLAIM_USERNAME: &str = "$claim";

/// Live claim connections by client id.
pub(crate) type ClaimSessions = Arc<Mutex<HashMap<Arc<str>, Weak<ClaimGuard>>>>;

/// A claim connection's permissions: its own provisioning topics only.
pub(crate) struct ClaimGuard {
    principal: String,
    request_topic: String,
    reply_filter: String,
    token: String,
    revoked: CancellationToken,
}

impl ClaimGuard {
    /// Admit a claim connection for `client_id` holding `token`, or say why not.
    pub(crate) fn admit(
        fleet: &Fleet,
        sessions: &ClaimSessions,
        client_id: &str,
        token: Option<&[u8]>,
        peer: SocketAddr,
    ) -> Result<Arc<Self>, ReasonCode> {
        if fleet.limiter().check(peer.ip(), None).is_err() {
            return Err(ReasonCode::CONNECTION_RATE_EXCEEDED);
        }
        if DeviceId::new(client_id).is_err() {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let token = token
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or(ReasonCode::BAD_USER_NAME_OR_PASSWORD)?;
        match fleet.check_claim(token) {
            Ok(info) => {
                let guard = Arc::new(Self {
                    principal: format!("claim:{}", info.id),
                    request_topic: format!("$ferrite/provision/{client_id}/request"),
                    reply_filter: format!("$ferrite/provision/{client_id}/"),
                    token: token.to_owned(),
                    revoked: CancellationToken::new(),
                });
                sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(Arc::from(client_id), Arc::downgrade(&guard));
                tracing::info!(client_id, claim = %info.id, %peer, "claim connection accepted");
                Ok(guard)
            }
            Err(
                FleetError::ClaimInvalid | FleetError::ClaimExpired | FleetError::ClaimExhausted,
            ) => {
                fleet.limiter().record_failure(peer.ip(), None);
                tracing::info!(client_id, %peer, "claim connection refused: bad claim token");
                Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
            Err(e) => {
                tracing::error!(error = %e, "claim check failed");
                Err(ReasonCode::SERVER_UNAVAILABLE)
            }
        }
    }
}

impl SessionGuard for ClaimGuard {
    fn principal(&self) -> &str {
        &self.principal
    }

    fn may_publish(&self, topic: &str) -> bool {
        topic == self.request_topic
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        filter
            .strip_prefix(self.reply_filter.as_str())
            .is_some_and(|rest| matches!(rest, "+" | "#" | "accepted" | "rejected"))
    }

    fn revoked(&self) -> CancellationToken {
        self.revoked.clone()
    }
}

/// Answer provisioning requests until `shutdown` (the task holds a router handle, so it must
/// not wait for the router to go away).
pub(crate) fn start(
    router: &Router,
    fleet: Fleet,
    sessions: ClaimSessions,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let filters: Vec<TopicFilter> = TopicFilter::new("$ferrite/provision/+/request")
        .into_iter()
        .collect();
    let rx = router.subscribe_internal(&filters, 256, false);
    let router = router.clone();
    async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = run(rx, router, fleet, sessions, clock) => {}
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    router: Router,
    fleet: Fleet,
    sessions: ClaimSessions,
    clock: Arc<dyn Clock>,
) {
    while let Some(delivery) = rx.recv().await {
        let message = Arc::clone(&delivery.message);
        delivery.settle(ferrite_mqtt::Verdict::Accepted);
        let Some(client_id) = message.topic.as_str().split('/').nth(2) else {
            continue;
        };
        // Only the claim connection with this client id can publish here (its guard), but a
        // message may outlive the connection: then there is nobody to answer.
        let guard = sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client_id)
            .and_then(Weak::upgrade);
        let Some(guard) = guard else { continue };
        if *message.publisher != *client_id {
            continue;
        }
        let payload: &[u8] = if message.payload.is_empty() {
            b"{}"
        } else {
            &message.payload
        };
        let (outcome, body) = match serde_json::from_slice::<ProvisionRequest>(payload) {
            Err(e) => (
                "rejected",
                serde_json::json!({ "error": format!("bad request: {e}") }),
            ),
            Ok(request) => {
                let fleet = fleet.clone();
                let token = guard.token.clone();
                let answer = tokio::task::spawn_blocking(move || {
                    let id = request
                        .device_id
                        .map(DeviceId::new)
                        .transpose()
                        .map_err(|e| FleetError::Invalid {
                            what: "device_id",
                            reason: e.to_string(),
                        })?;
                    fleet.claim(&token, id, request.csr.as_deref())
                })
                .await;
                match answer {
                    Ok(Ok(p)) => {
                        tracing::info!(client_id, device_id = %p.device.id, "device provisioned by claim over MQTT");
                        ("accepted", provisioned_json(p))
                    }
                    Ok(Err(e)) => ("rejected", serde_json::json!({ "error": e.to_string() })),
                    Err(e) => ("rejected", serde_json::json!({ "error": e.to_string() })),
                }
            }
        };
        let Ok(topic) = TopicName::new(format!("$ferrite/provision/{client_id}/{outcome}")) else {
            continue;
        };
        router
            .publish(Message {
                topic,
                payload: Bytes::from(body.to_string()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties {
                    payload_format_indicator: Some(1),
                    content_type: Some("application/json".to_owned()),
                    correlation_data: message.properties.correlation_data.clone(),
                    ..Properties::default()
                },
                publisher: Arc::from("$ferrite"),
                received_at: clock.now(),
            })
            .await;
    }
}
