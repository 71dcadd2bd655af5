//! Access policies, the fleet CA and device certificates, claim tokens and provisioning.
//!
//! - `GET /api/v1/policies`; `GET|PUT|DELETE /api/v1/policies/{name}` (a [`Policy`] as JSON;
//!   the name in the path wins);
//! - `GET /api/v1/ca` → the CA certificate (PEM); `POST /api/v1/ca` `{common_name}` creates the
//!   fleet CA; `PUT /api/v1/ca` `{cert, key}` imports the operator's CA (PEM);
//! - `POST /api/v1/devices/{id}/certs` `{csr?}` → 201 `{serial, cert, key?, ca, not_after}`
//!   (with a CSR the key never leaves the device); `GET /api/v1/devices/{id}/certs`;
//!   `DELETE /api/v1/certs/{serial}` revokes (a live session using it is disconnected);
//! - `POST /api/v1/claims` `{label, template?, expires_in?, max_uses?}` → 201 `{info, token}`;
//!   `GET /api/v1/claims`; `DELETE /api/v1/claims/{id}`;
//! - `POST /api/v1/provision` with `Authorization: Bearer <claim token>` and
//!   `{device_id?, csr?}` → 201 `{device, token?, certificate?}`: a device enrolls itself. This
//!   is the one endpoint a claim token opens; failures count against the caller's address in
//!   the brute-force limiter.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrite_core::Timestamp;
use ferrite_fleet::{
    ApiPrincipal, ClaimTemplate, FleetError, IssuedCert, NewClaim, Permission, Policy, Provisioned,
    ProvisionedCredential,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::fleet::{call, device_id, fleet_error, require, tri};
use crate::{ApiState, JsonBody, error};

pub(crate) async fn list_policies(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let list = tri!(call(&state, |f| Ok(f.list_policies())).await);
    Json(list).into_response()
}

pub(crate) async fn get_policy(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    match tri!(call(&state, move |f| Ok(f.get_policy(&name))).await) {
        Some(policy) => Json(policy).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such policy"),
    }
}

pub(crate) async fn put_policy(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
    JsonBody(mut body): JsonBody<Value>,
) -> Response {
    tri!(require(&p, Permission::ManagePolicies));
    if let Some(o) = body.as_object_mut() {
        o.insert("name".to_owned(), Value::String(name));
    }
    let policy: Policy = match serde_json::from_value(body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad policy: {e}")),
    };
    let actor = p.actor();
    let saved = policy.clone();
    tri!(call(&state, move |f| f.put_policy(&actor, &policy)).await);
    Json(saved).into_response()
}

pub(crate) async fn delete_policy(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ManagePolicies));
    let actor = p.actor();
    tri!(call(&state, move |f| f.delete_policy(&actor, &name)).await);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn get_ca(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    match tri!(call(&state, |f| Ok(f.ca_cert_pem())).await) {
        Some(pem) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no CA is configured: create one with `ferrite cert ca-init` (POST /api/v1/ca)",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InitCa {
    #[serde(default = "default_cn")]
    common_name: String,
}

fn default_cn() -> String {
    "Ferrite device CA".to_owned()
}

pub(crate) async fn init_ca(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    body: Option<Json<InitCa>>,
) -> Response {
    tri!(require(&p, Permission::ManagePki));
    let cn = body.map_or_else(default_cn, |b| b.0.common_name);
    let actor = p.actor();
    let pem = tri!(call(&state, move |f| f.ca_init(&actor, &cn)).await);
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        pem,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportCa {
    cert: String,
    key: String,
}

pub(crate) async fn import_ca(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    JsonBody(body): JsonBody<ImportCa>,
) -> Response {
    tri!(require(&p, Permission::ManagePki));
    let actor = p.actor();
    tri!(call(&state, move |f| f.ca_import(&actor, &body.cert, &body.key)).await);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueCert {
    /// A PEM certificate request: the device keeps its key.
    csr: Option<String>,
}

fn cert_json(c: &IssuedCert) -> Value {
    json!({
        "device": c.device,
        "serial": c.serial,
        "cert": c.cert_pem,
        "key": c.key_pem,
        "ca": c.ca_pem,
        "not_after": c.not_after,
    })
}

pub(crate) async fn issue_cert(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    body: Option<Json<IssueCert>>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&id));
    let csr = body.and_then(|b| b.0.csr);
    let actor = p.actor();
    let cert = tri!(
        call(&state, move |f| {
            if f.get_device(&id)?.is_none() {
                return Err(FleetError::NotFound {
                    what: "device",
                    id: id.to_string(),
                });
            }
            match csr {
                Some(csr) => f.sign_csr(&actor, &id, &csr),
                None => f.issue_cert(&actor, &id),
            }
        })
        .await
    );
    (StatusCode::CREATED, Json(cert_json(&cert))).into_response()
}

pub(crate) async fn list_certs(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let id = tri!(device_id(&id));
    let list = tri!(call(&state, move |f| f.list_certs(&id)).await);
    Json(list).into_response()
}

pub(crate) async fn revoke_cert(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(serial): Path<String>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let actor = p.actor();
    tri!(call(&state, move |f| f.revoke_cert(&actor, &serial)).await);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateClaim {
    label: String,
    #[serde(default)]
    template: ClaimTemplate,
    /// How long the token works (`7d`); without it, until revoked or used up.
    expires_in: Option<String>,
    /// How many devices it may create.
    #[serde(default = "one")]
    max_uses: u32,
}

fn one() -> u32 {
    1
}

pub(crate) async fn create_claim(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    JsonBody(body): JsonBody<CreateClaim>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let ttl = match body.expires_in.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("expires_in: {e}")),
    };
    let actor = p.actor();
    let claim = tri!(
        call(&state, move |f| {
            let expires_at = ttl.map(|d| {
                let ns = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
                Timestamp::from_nanos(f.now().as_nanos().saturating_add(ns))
            });
            f.create_claim(
                &actor,
                NewClaim {
                    label: body.label,
                    template: body.template,
                    expires_at,
                    max_uses: body.max_uses,
                },
            )
        })
        .await
    );
    (
        StatusCode::CREATED,
        Json(json!({ "info": claim.info, "token": claim.token.into_string() })),
    )
        .into_response()
}

pub(crate) async fn list_claims(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let list = tri!(call(&state, |f| f.list_claims()).await);
    Json(list).into_response()
}

pub(crate) async fn revoke_claim(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let actor = p.actor();
    tri!(call(&state, move |f| f.revoke_claim(&actor, &id)).await);
    StatusCode::NO_CONTENT.into_response()
}

/// What a device asks for when it provisions itself (HTTP body or MQTT request payload).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// The id it wants (must carry the claim's prefix); generated when absent.
    pub device_id: Option<String>,
    /// A PEM certificate request: the answer is a certificate instead of a token.
    pub csr: Option<String>,
}

/// The answer to a successful provisioning, as JSON: `{device, token}` or
/// `{device, certificate: {serial, cert, ca, not_after}}`.
pub fn provisioned_json(p: Provisioned) -> Value {
    match p.credential {
        ProvisionedCredential::Token(c) => json!({
            "device": p.device,
            "credential": c.info,
            "token": c.token.into_string(),
        }),
        ProvisionedCredential::Certificate(c) => json!({
            "device": p.device,
            "certificate": cert_json(&c),
        }),
    }
}

/// `POST /api/v1/provision`: enroll a device with a claim token.
pub(crate) async fn provision(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Option<Json<ProvisionRequest>>,
) -> Response {
    let fleet = tri!(crate::fleet::fleet(&state)).clone();
    if let Err(t) = fleet.limiter().check(peer.ip(), None) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many failed attempts; retry in {:?}", t.retry_after),
        );
    }
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
    else {
        return crate::fleet::unauthorized(
            "a claim token is required: Authorization: Bearer <claim token>",
        );
    };
    let request = body.map(|b| b.0).unwrap_or_default();
    let requested = match request.device_id.as_deref().map(device_id).transpose() {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let result = fleet.claim(&token, requested, request.csr.as_deref());
        if matches!(
            result,
            Err(FleetError::ClaimInvalid | FleetError::ClaimExpired | FleetError::ClaimExhausted)
        ) {
            fleet.limiter().record_failure(peer.ip(), None);
        }
        result
    })
    .await;
    match outcome {
        Ok(Ok(p)) => {
            tracing::info!(device_id = %p.device.id, %peer, "device provisioned by claim over HTTP");
            (StatusCode::CREATED, Json(provisioned_json(p))).into_response()
        }
        Ok(Err(
            e @ (FleetError::ClaimInvalid | FleetError::ClaimExpired | FleetError::ClaimExhausted),
        )) => crate::fleet::unauthorized(&e.to_string()),
        Ok(Err(e)) => fleet_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
