//! Provisioning: before a live run against a secured server, register the simulated devices
//! in its registry through the fleet REST API and obtain a device token for each, so every
//! device connects as itself (user name = device id, password = its token).
//!
//! Per device, with an API token of the operator role or more:
//!
//! ```text
//! POST /api/v1/devices {"id": "room-0", "type": "smart_building", "tags": {…}, "credential": true}
//!   → 201 {"device": {…}, "token": "fd_…"}
//!   → 409 when the device exists, then:
//! GET /api/v1/devices/room-0/credentials            (earlier runs' "simulator" tokens …
//! DELETE /api/v1/devices/room-0/credentials/{id}    … are revoked, the device's others kept)
//! POST /api/v1/devices/room-0/credentials {"label": "simulator"}
//!   → 201 {"credential": {…}, "token": "fd_…"}
//! ```
//!
//! The type is the scenario's name (`sim` without one) and the tags are the device's scenario
//! tags but the id tag. Without tokens to fetch (the HTTP transport writes with the API token)
//! devices are only registered, and a 409 is the end of it. Requests run `concurrency` at a
//! time; the first failure (401/403, an unreachable server, a device at its credential cap)
//! ends provisioning with the status and the server's message. A run against existing devices
//! replaces the simulator's token of each, so reruns never pile up credentials.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, refusal};
use crate::{Progress, SimError};

/// A simulated device as the registry is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SimDevice {
    /// Its id (also its MQTT client id and user name).
    pub(crate) id: String,
    /// Its tags in the registry.
    pub(crate) tags: BTreeMap<String, String>,
}

/// What provisioning produced.
#[derive(Debug)]
pub(crate) struct Provisioned {
    /// Device tokens by device index (`None` where none was asked for).
    pub(crate) tokens: Vec<Option<String>>,
    /// The figures.
    pub(crate) report: ProvisionReport,
}

/// Provisioning in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProvisionReport {
    /// Devices registered or found.
    pub devices: usize,
    /// Devices newly registered.
    pub created: u64,
    /// Devices that existed (409) and got a fresh token.
    pub existing: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Wall time of provisioning, seconds.
    pub elapsed_s: f64,
    /// Devices provisioned per second.
    pub per_s: f64,
}

/// How one device went.
struct Registered {
    created: bool,
    token: Option<String>,
}

/// Register `devices` (of type `device_type`) and, if `tokens`, obtain a token for each.
/// Counts into [`Progress::provisioned`]; stops early (with an error) when `stop` fires.
pub(crate) async fn provision(
    api: &Api,
    devices: Vec<SimDevice>,
    device_type: &str,
    tokens: bool,
    concurrency: usize,
    progress: &Progress,
    stop: &CancellationToken,
) -> Result<Provisioned, SimError> {
    let start = Instant::now();
    let concurrency = concurrency.max(1);
    let total = devices.len();
    let device_type: Arc<str> = Arc::from(device_type);
    let mut out: Vec<Option<String>> = vec![None; total];
    let (mut created, mut existing) = (0u64, 0u64);
    let mut pending = devices.into_iter().enumerate();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < concurrency {
            let Some((i, device)) = pending.next() else {
                break;
            };
            let (api, device_type) = (api.clone(), Arc::clone(&device_type));
            tasks.spawn(async move { (i, register(&api, device, &device_type, tokens).await) });
        }
        let joined = tokio::select! {
            () = stop.cancelled() => {
                tasks.abort_all();
                return Err(SimError::Stopped("provisioning the devices"));
            }
            joined = tasks.join_next() => joined,
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok((i, Ok(r))) => {
                if r.created {
                    created += 1;
                } else {
                    existing += 1;
                }
                if let Some(slot) = out.get_mut(i) {
                    *slot = r.token;
                }
                progress.provisioned.fetch_add(1, Ordering::Relaxed);
            }
            Ok((_, Err(e))) => {
                tasks.abort_all();
                return Err(e);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Provisioned {
        tokens: out,
        report: ProvisionReport {
            devices: total,
            created,
            existing,
            concurrency,
            elapsed_s: elapsed,
            per_s: if elapsed > 0.0 {
                total as f64 / elapsed
            } else {
                0.0
            },
        },
    })
}

/// Register one device; on 409, issue it a fresh token if one is wanted.
async fn register(
    api: &Api,
    device: SimDevice,
    device_type: &str,
    want_token: bool,
) -> Result<Registered, SimError> {
    let what = format!("registering device {}", device.id);
    let body = json!({
        "id": device.id,
        "type": device_type,
        "tags": device.tags,
        "credential": want_token,
        "credential_label": "simulator",
    });
    let response = api
        .post_json("/api/v1/devices", &body)
        .send()
        .await
        .map_err(|e| api.unreachable(&what, e))?;
    match response.status() {
        StatusCode::CREATED => {
            let token = if want_token {
                Some(token_of(&what, response).await?)
            } else {
                None
            };
            Ok(Registered {
                created: true,
                token,
            })
        }
        StatusCode::CONFLICT if !want_token => Ok(Registered {
            created: false,
            token: None,
        }),
        StatusCode::CONFLICT => {
            revoke_simulator_tokens(api, &device.id).await?;
            let what = format!("issuing a token for existing device {}", device.id);
            let response = api
                .post_json(
                    &format!("/api/v1/devices/{}/credentials", device.id),
                    &json!({"label": "simulator"}),
                )
                .send()
                .await
                .map_err(|e| api.unreachable(&what, e))?;
            if response.status() != StatusCode::CREATED {
                return Err(refusal(&what, response).await);
            }
            Ok(Registered {
                created: false,
                token: Some(token_of(&what, response).await?),
            })
        }
        _ => Err(refusal(&what, response).await),
    }
}

/// Revoke the tokens earlier simulator runs issued to `device` (label `simulator`).
async fn revoke_simulator_tokens(api: &Api, device: &str) -> Result<(), SimError> {
    let what = format!("listing the credentials of device {device}");
    let response = api
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{device}/credentials"),
        )
        .send()
        .await
        .map_err(|e| api.unreachable(&what, e))?;
    if response.status() != StatusCode::OK {
        return Err(refusal(&what, response).await);
    }
    let list: Value = response
        .json()
        .await
        .map_err(|e| api.unreachable(&what, e))?;
    for c in list.as_array().into_iter().flatten() {
        if c["label"] != "simulator" {
            continue;
        }
        let Some(id) = c["id"].as_str() else { continue };
        let what = format!("revoking an old simulator token of device {device}");
        let response = api
            .request(
                reqwest::Method::DELETE,
                &format!("/api/v1/devices/{device}/credentials/{id}"),
            )
            .send()
            .await
            .map_err(|e| api.unreachable(&what, e))?;
        // 404: revoked meanwhile by someone else; fine.
        if !response.status().is_success() && response.status() != StatusCode::NOT_FOUND {
            return Err(refusal(&what, response).await);
        }
    }
    Ok(())
}

/// The `token` of a 201 answer.
async fn token_of(what: &str, response: reqwest::Response) -> Result<String, SimError> {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| SimError::Api {
            what: what.to_owned(),
            status,
            message: format!(
                "the answer has no token: {}",
                text.chars().take(200).collect::<String>()
            ),
        })
}
