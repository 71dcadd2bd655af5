//! The fleet's REST surface and API access control.
//!
//! Every endpoint but `/healthz` and `/mqtt` (which authenticates with MQTT's own CONNECT)
//! needs `Authorization: Bearer <token>` (InfluxDB clients' `Token <token>` works too); the
//! token's role decides what it may do ([`Permission`]). Anonymous requests are let in as
//! admin only where the operator turned anonymous access on ([`Anonymous`]).
//!
//! - `POST /api/v1/devices` `{id, name?, type?, tags?, groups?, firmware_version?, enabled?,
//!   credential?}` → 201 `{device, token?}` (the token is shown this once);
//! - `GET /api/v1/devices?type=&group=&enabled=&online=&prefix=&tag=k:v&limit=&after=` →
//!   `{items, next}`;
//! - `GET|PATCH|DELETE /api/v1/devices/{id}`;
//! - `POST /api/v1/devices/{id}/credentials` `{label?}` → 201 `{credential, token}`;
//! - `GET /api/v1/fleet` → counts (total, online, never seen, disabled);
//! - `POST /api/v1/tokens` `{name, role}` → 201 `{token, info}`; `GET /api/v1/tokens`;
//!   `DELETE /api/v1/tokens/{id}`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_core::{Classify, DeviceId};
use ferrite_fleet::{
    ApiPrincipal, Cursor, DeviceFilter, DevicePatch, FleetError, NewDevice, Permission, Role,
};
use serde::{Deserialize, Serialize};

use crate::{ApiState, error, status_of};

/// Who may use the API (and MQTT) without credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Nobody: every request carries a token (the default).
    #[default]
    Off,
    /// Requests from loopback addresses (a laptop trying things out).
    Loopback,
    /// Anyone who can reach the listener.
    Any,
}

impl Anonymous {
    /// Whether an anonymous caller at `peer` is let in.
    pub fn admits(self, peer: SocketAddr) -> bool {
        match self {
            Anonymous::Off => false,
            Anonymous::Loopback => peer.ip().is_loopback(),
            Anonymous::Any => true,
        }
    }
}

/// The access middleware: resolve the caller to an [`ApiPrincipal`] or answer 401.
pub(crate) async fn access(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/mqtt" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("Token "))
                .map(|t| t.trim().to_owned())
        });
    let principal = match (presented, &state.fleet) {
        (Some(token), Some(fleet)) => match fleet.verify_api_token(&token) {
            Ok(Some(p)) => p,
            Ok(None) => return unauthorized("unknown or revoked API token"),
            Err(e) => return fleet_error(&e),
        },
        (Some(_), None) => return unauthorized("this server has no API tokens"),
        (None, _) if state.anonymous.admits(peer) => ApiPrincipal {
            token_id: "anonymous".to_owned(),
            name: "anonymous".to_owned(),
            role: Role::Admin,
        },
        (None, _) => {
            return unauthorized("an API token is required: Authorization: Bearer <token>");
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// 403 unless `principal` may `permission`.
pub(crate) fn require(
    principal: &ApiPrincipal,
    permission: Permission,
) -> Result<(), Box<Response>> {
    if principal.can(permission) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            &format!(
                "the {:?} role may not do this ({permission:?})",
                principal.role
            ),
        )))
    }
}

fn fleet_error(e: &FleetError) -> Response {
    let status = match e.kind() {
        ferrite_core::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ferrite_core::ErrorKind::Conflict => StatusCode::CONFLICT,
        k => status_of(k),
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "fleet operation failed");
    }
    error(status, &e.to_string())
}

fn fleet(state: &ApiState) -> Result<&ferrite_fleet::Fleet, Box<Response>> {
    state.fleet.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this server has no device registry",
        ))
    })
}

fn device_id(id: &str) -> Result<DeviceId, Box<Response>> {
    DeviceId::new(id).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.to_string())))
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDevice {
    id: String,
    name: Option<String>,
    #[serde(rename = "type")]
    device_type: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeSet<String>,
    firmware_version: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    /// Also create a token credential and return it.
    #[serde(default)]
    credential: bool,
}

fn yes() -> bool {
    true
}

pub(crate) async fn create_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Json(body): Json<CreateDevice>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let fleet = tri!(fleet(&state));
    let id = tri!(device_id(&body.id));
    let new = NewDevice {
        id: id.clone(),
        name: body.name,
        device_type: body.device_type,
        tags: body.tags,
        groups: body.groups,
        firmware_version: body.firmware_version,
        enabled: body.enabled,
    };
    let actor = p.actor();
    let device = match fleet.create_device(&actor, new) {
        Ok(d) => d,
        Err(e) => return fleet_error(&e),
    };
    let token = if body.credential {
        match fleet.create_credential(&actor, &id, "initial", None) {
            Ok(c) => Some(c.token.into_string()),
            Err(e) => return fleet_error(&e),
        }
    } else {
        None
    };
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "device": device, "token": token })),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListDevices {
    #[serde(rename = "type")]
    device_type: Option<String>,
    group: Option<String>,
    enabled: Option<bool>,
    online: Option<bool>,
    prefix: Option<String>,
    /// `key:value`.
    tag: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

pub(crate) async fn list_devices(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Query(q): Query<ListDevices>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let fleet = tri!(fleet(&state));
    let mut tags = BTreeMap::new();
    if let Some(t) = q.tag {
        match t.split_once(':') {
            Some((k, v)) => {
                tags.insert(k.to_owned(), v.to_owned());
            }
            None => return error(StatusCode::BAD_REQUEST, "tag must be key:value"),
        }
    }
    let filter = DeviceFilter {
        device_type: q.device_type,
        group: q.group,
        tags,
        enabled: q.enabled,
        online: q.online,
        id_prefix: q.prefix,
    };
    let after = q.after.map(Cursor::parse);
    match fleet.list_devices(&filter, after.as_ref(), q.limit.unwrap_or(100)) {
        Ok(page) => Json(serde_json::json!({
            "items": page.items,
            "next": page.next.map(|c| c.as_str().to_owned()),
        }))
        .into_response(),
        Err(e) => fleet_error(&e),
    }
}

pub(crate) async fn get_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let fleet = tri!(fleet(&state));
    let id = tri!(device_id(&id));
    match fleet.get_device(&id) {
        Ok(Some(d)) => {
            let presence = fleet.presence(&id);
            Json(serde_json::json!({ "device": d, "presence": presence })).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no device {id}")),
        Err(e) => fleet_error(&e),
    }
}

pub(crate) async fn update_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    Json(patch): Json<DevicePatch>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let fleet = tri!(fleet(&state));
    let id = tri!(device_id(&id));
    match fleet.update_device(&p.actor(), &id, &patch) {
        Ok(d) => Json(d).into_response(),
        Err(e) => fleet_error(&e),
    }
}

pub(crate) async fn delete_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let fleet = tri!(fleet(&state));
    let id = tri!(device_id(&id));
    match fleet.delete_device(&p.actor(), &id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fleet_error(&e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCredential {
    label: Option<String>,
}

pub(crate) async fn create_credential(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    body: Option<Json<CreateCredential>>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let fleet = tri!(fleet(&state));
    let id = tri!(device_id(&id));
    let label = body
        .and_then(|b| b.0.label)
        .unwrap_or_else(|| "api".to_owned());
    match fleet.create_credential(&p.actor(), &id, &label, None) {
        Ok(c) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "credential": c.info, "token": c.token.into_string() })),
        )
            .into_response(),
        Err(e) => fleet_error(&e),
    }
}

pub(crate) async fn counts(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let fleet = tri!(fleet(&state));
    match fleet.counts() {
        Ok(c) => Json(c).into_response(),
        Err(e) => fleet_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    name: String,
    role: Role,
}

pub(crate) async fn create_token(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Json(body): Json<CreateToken>,
) -> Response {
    tri!(require(&p, Permission::ManageTokens));
    let fleet = tri!(fleet(&state));
    match fleet.create_api_token(&p.actor(), &body.name, body.role) {
        Ok(t) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "info": t.info, "token": t.token.into_string() })),
        )
            .into_response(),
        Err(e) => fleet_error(&e),
    }
}

pub(crate) async fn list_tokens(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ManageTokens));
    let fleet = tri!(fleet(&state));
    match fleet.list_api_tokens() {
        Ok(t) => Json(t).into_response(),
        Err(e) => fleet_error(&e),
    }
}

pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ManageTokens));
    let fleet = tri!(fleet(&state));
    match fleet.revoke_api_token(&p.actor(), &id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fleet_error(&e),
    }
}
