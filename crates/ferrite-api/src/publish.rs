//! `POST /api/v1/publish/{topic}?qos=0|1&retain=true|false`: publish one message over HTTP, as
//! an MQTT client would — for devices that cannot keep a connection open (cellular modems that
//! wake, send and sleep) and for scripts.
//!
//! The body is the payload, unchanged; the message goes through the gateway's router, so
//! subscribers, retained state, rules and telemetry ingestion (`devices/{id}/telemetry/...`)
//! see it exactly like an MQTT publish. The answer comes after every durable consumer took it:
//! for telemetry, 204 means fsynced. Callers:
//!
//! - a **device** with HTTP Basic credentials `device-id:token` (the same token it uses as its
//!   MQTT password): the topic must pass the device's ACL, as for MQTT (403 otherwise);
//! - an **API token** with the `write_devices` permission: any topic.
//!
//! Topics beginning with `$` are the server's and refused for both.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferrite_core::{Clock, DeviceId, SystemClock, TopicName};
use ferrite_fleet::{Action, ApiPrincipal, Decision, Permission};
use ferrite_mqtt::{Message, Verdict};
use ferrite_mqtt_codec::{Properties, QoS, ReasonCode};
use serde::Deserialize;

use crate::fleet::{require, tri};
use crate::{ApiState, error};

/// A device authenticated by HTTP Basic credentials (only on the publish endpoint).
#[derive(Clone, Debug)]
pub(crate) struct DeviceCaller {
    pub(crate) device: DeviceId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishParams {
    #[serde(default = "one")]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

fn one() -> u8 {
    1
}

pub(crate) async fn publish(
    State(state): State<ApiState>,
    api: Option<Extension<ApiPrincipal>>,
    device: Option<Extension<DeviceCaller>>,
    Path(topic): Path<String>,
    Query(params): Query<PublishParams>,
    body: Bytes,
) -> Response {
    let Some(router) = state.router.clone() else {
        return error(StatusCode::NOT_FOUND, "this server has no MQTT gateway");
    };
    let qos = match params.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => return error(StatusCode::BAD_REQUEST, "qos must be 0 or 1"),
    };
    let topic = match TopicName::new(topic) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("topic: {e}")),
    };
    if topic.as_str().starts_with('$') {
        return error(
            StatusCode::FORBIDDEN,
            "topics beginning with $ are reserved for the server",
        );
    }
    let publisher: Arc<str> = match (device, api) {
        (Some(Extension(d)), _) => {
            let fleet = tri!(crate::fleet::fleet(&state));
            match fleet.authorize(&d.device, Action::Publish, topic.as_str()) {
                Ok(Decision::Allow) => {}
                Ok(_) => {
                    tracing::info!(device_id = %d.device, topic = %topic, "HTTP publish denied by ACL");
                    return error(
                        StatusCode::FORBIDDEN,
                        &format!("device {} may not publish to {topic}", d.device),
                    );
                }
                Err(e) => return crate::fleet::fleet_error(&e),
            }
            fleet.seen(&d.device, SystemClock.now());
            Arc::from(d.device.as_str())
        }
        (None, Some(Extension(p))) => {
            tri!(require(&p, Permission::WriteDevices));
            Arc::from(format!("http:{}", p.name))
        }
        (None, None) => return error(StatusCode::UNAUTHORIZED, "no credentials"),
    };
    let message = Message {
        topic,
        payload: body,
        qos,
        retain: params.retain,
        properties: Properties::default(),
        publisher,
        received_at: SystemClock.now(),
    };
    let outcome = router.publish(message).await;
    match outcome.verdict {
        Verdict::Accepted => StatusCode::NO_CONTENT.into_response(),
        Verdict::Rejected(code, reason) => {
            let status = if code == ReasonCode::QUOTA_EXCEEDED
                || code == ReasonCode::SERVER_BUSY
                || code == ReasonCode::SERVER_UNAVAILABLE
                || code == ReasonCode::UNSPECIFIED_ERROR
            {
                StatusCode::SERVICE_UNAVAILABLE
            } else if code == ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            error(status, &reason)
        }
    }
}
