//! The fleet's REST surface and API access control.
//!
//! Every endpoint but `/healthz` and `/mqtt` (which authenticates with MQTT's own CONNECT)
//! needs `Authorization: Bearer <token>` (InfluxDB clients' `Token <token>` works too); the
//! token's role decides what it may do ([`Permission`]). Anonymous requests are let in as
//! admin only where the operator turned anonymous access on ([`Anonymous`]).
//!
//! - `POST /api/v1/devices` `{id, name?, type?, tags?, groups?, firmware_version?, enabled?,
//!   credential?, credential_label?}` → 201 `{device, token?}` (the token is shown this once);
//! - `GET /api/v1/devices?type=&group=&enabled=&online=&prefix=&tag=k:v&limit=&after=` →
//!   `{items, next}`;
//! - `GET|PATCH|DELETE /api/v1/devices/{id}`;
//! - `GET|POST /api/v1/devices/{id}/credentials` (`{label?, expires_at?}` → 201
//!   `{credential, token}`); `DELETE /api/v1/devices/{id}/credentials/{cred}` revokes (live
//!   sessions using it end); `POST …/{cred}/rotate` `{label?, grace?}` → a new token while the
//!   old one works until revoked or for `grace`;
//! - `POST /api/v1/devices/import?format=ndjson|csv` → the import report (idempotent);
//!   `GET /api/v1/devices/export?format=ndjson|csv`, streamed;
//! - `GET /api/v1/audit?since=&until=&target=&limit=&after=`;
//! - `GET /api/v1/fleet` → counts (total, online, never seen, disabled) and `auth`: failed
//!   authentications and attempts refused by the brute-force limiter;
//! - `POST /api/v1/tokens` `{name, role}` → 201 `{token, info}`; `GET /api/v1/tokens`;
//!   `DELETE /api/v1/tokens/{id}`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_core::{Classify, DeviceId};
use ferrite_fleet::{
    ApiPrincipal, AuditQuery, Cursor, DeviceFilter, DevicePatch, Fleet, FleetError, ImportFormat,
    NewDevice, Permission, Role,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{ApiState, JsonBody, error, status_of};

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

/// The access middleware: resolve the caller to an [`ApiPrincipal`] (API token), a device
/// (HTTP Basic `device-id:token`, only for `/api/v1/publish/…`), or answer 401.
/// `/healthz`, `/mqtt` (MQTT authenticates itself) and `/api/v1/provision` (claim tokens) pass.
pub(crate) async fn access(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/mqtt" || path == "/api/v1/provision" {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if let Some(basic) = authorization.and_then(|v| v.strip_prefix("Basic ")) {
        if !path.starts_with("/api/v1/publish/") {
            return unauthorized(
                "device credentials (Basic) only work on /api/v1/publish/; use an API token",
            );
        }
        let device = match device_basic(&state, basic.trim(), peer) {
            Ok(d) => d,
            Err(r) => return *r,
        };
        request
            .extensions_mut()
            .insert(crate::publish::DeviceCaller { device });
        return next.run(request).await;
    }
    let presented = authorization.and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("Token "))
            .map(|t| t.trim().to_owned())
    });
    let principal = match resolve_principal(
        state.fleet.as_ref(),
        state.anonymous,
        presented.as_deref(),
        peer,
    ) {
        Ok(p) => p,
        Err(AccessRefusal::Fleet(e)) => return fleet_error(&e),
        Err(AccessRefusal::UnknownToken) => return unauthorized("unknown or revoked API token"),
        Err(AccessRefusal::NoTokens) => return unauthorized("this server has no API tokens"),
        Err(AccessRefusal::TokenRequired) => {
            return unauthorized("an API token is required: Authorization: Bearer <token>");
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Why a caller of the API (HTTP or PostgreSQL wire) was not let in.
#[derive(Debug)]
pub(crate) enum AccessRefusal {
    /// The token is not an active API token.
    UnknownToken,
    /// A token was presented but this server has no token registry.
    NoTokens,
    /// No token, and anonymous access does not admit the caller.
    TokenRequired,
    /// The registry could not be asked.
    Fleet(FleetError),
}

/// Who the caller at `peer` presenting `token` (or none) is, under the `anonymous` policy:
/// the one access rule shared by HTTP and the PostgreSQL wire protocol. A presented token
/// is always checked; without one, an admitted anonymous caller is an admin.
pub(crate) fn resolve_principal(
    fleet: Option<&Fleet>,
    anonymous: Anonymous,
    token: Option<&str>,
    peer: SocketAddr,
) -> Result<ApiPrincipal, AccessRefusal> {
    match (token, fleet) {
        (Some(token), Some(fleet)) => match fleet.verify_api_token(token) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(AccessRefusal::UnknownToken),
            Err(e) => Err(AccessRefusal::Fleet(e)),
        },
        (Some(_), None) => Err(AccessRefusal::NoTokens),
        (None, _) if anonymous.admits(peer) => Ok(ApiPrincipal {
            token_id: "anonymous".to_owned(),
            name: "anonymous".to_owned(),
            role: Role::Admin,
        }),
        (None, _) => Err(AccessRefusal::TokenRequired),
    }
}

/// Check HTTP Basic device credentials exactly like an MQTT CONNECT (brute-force limiter,
/// enabled device, valid token).
fn device_basic(
    state: &ApiState,
    encoded: &str,
    peer: SocketAddr,
) -> Result<DeviceId, Box<Response>> {
    use base64::Engine as _;
    let fleet = fleet(state)?;
    let bad = || Box::new(unauthorized("bad device credentials"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, token) = text.split_once(':').ok_or_else(bad)?;
    let attempt = ferrite_fleet::ConnectAttempt {
        client_id: id,
        username: Some(id),
        password: Some(token.as_bytes()),
        peer: peer.ip(),
        client_cert: None,
    };
    match fleet.authenticate(&attempt) {
        Ok(a) => Ok(a.device),
        Err(ferrite_fleet::AuthRefusal::Throttled { retry_after }) => Err(Box::new(error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("too many failed attempts; retry in {retry_after:?}"),
        ))),
        Err(ferrite_fleet::AuthRefusal::Unavailable(e)) => {
            Err(Box::new(error(StatusCode::SERVICE_UNAVAILABLE, &e)))
        }
        Err(ferrite_fleet::AuthRefusal::NotAuthorized) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the device is disabled",
        ))),
        Err(e) => {
            tracing::info!(device_id = id, %peer, reason = %e, "HTTP device authentication failed");
            Err(bad())
        }
    }
}

pub(crate) fn unauthorized(message: &str) -> Response {
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

pub(crate) fn fleet_error(e: &FleetError) -> Response {
    let status = match e.kind() {
        ferrite_core::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ferrite_core::ErrorKind::Conflict => StatusCode::CONFLICT,
        ferrite_core::ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
        k => status_of(k),
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "fleet operation failed");
    }
    error(status, &e.to_string())
}

pub(crate) fn fleet(state: &ApiState) -> Result<&Fleet, Box<Response>> {
    state.fleet.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this server has no device registry",
        ))
    })
}

/// Run a registry call on a blocking thread (writes commit a redb transaction with an fsync,
/// which must not stall the async workers).
pub(crate) async fn call<T, F>(state: &ApiState, f: F) -> Result<T, Box<Response>>
where
    T: Send + 'static,
    F: FnOnce(&Fleet) -> Result<T, FleetError> + Send + 'static,
{
    let fleet = fleet(state)?.clone();
    match tokio::task::spawn_blocking(move || f(&fleet)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(fleet_error(&e))),
        Err(e) => {
            tracing::error!(error = %e, "fleet task failed");
            Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fleet operation failed",
            )))
        }
    }
}

pub(crate) fn device_id(id: &str) -> Result<DeviceId, Box<Response>> {
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
pub(crate) use tri;

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
    /// The label of that credential (default `initial`).
    credential_label: Option<String>,
}

fn yes() -> bool {
    true
}

pub(crate) async fn create_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    JsonBody(body): JsonBody<CreateDevice>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&body.id));
    let new = NewDevice {
        id,
        name: body.name,
        device_type: body.device_type,
        tags: body.tags,
        groups: body.groups,
        firmware_version: body.firmware_version,
        enabled: body.enabled,
    };
    let actor = p.actor();
    let with_credential = body.credential;
    let label = body
        .credential_label
        .unwrap_or_else(|| "initial".to_owned());
    let (device, token) = tri!(
        call(&state, move |f| {
            if with_credential {
                let (d, c) = f.create_device_with_credential(&actor, new, &label)?;
                Ok((d, Some(c.token.into_string())))
            } else {
                Ok((f.create_device(&actor, new)?, None))
            }
        })
        .await
    );
    (
        StatusCode::CREATED,
        Json(json!({ "device": device, "token": token })),
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
    let limit = q.limit.unwrap_or(100);
    let page = tri!(
        call(&state, move |f| f.list_devices(
            &filter,
            after.as_ref(),
            limit
        ))
        .await
    );
    Json(json!({
        "items": page.items,
        "next": page.next.map(|c| c.as_str().to_owned()),
    }))
    .into_response()
}

pub(crate) async fn get_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let id = tri!(device_id(&id));
    let found = tri!(
        call(&state, move |f| Ok(f
            .get_device(&id)?
            .map(|d| (f.presence(&d.id), d))))
        .await
    );
    match found {
        Some((presence, device)) => {
            Json(json!({ "device": device, "presence": presence })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such device"),
    }
}

pub(crate) async fn update_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<DevicePatch>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&id));
    let actor = p.actor();
    let d = tri!(call(&state, move |f| f.update_device(&actor, &id, &patch)).await);
    Json(d).into_response()
}

pub(crate) async fn delete_device(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&id));
    let actor = p.actor();
    tri!(call(&state, move |f| f.delete_device(&actor, &id)).await);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCredential {
    label: Option<String>,
    /// When the token stops working (RFC 3339), if ever.
    expires_at: Option<String>,
}

pub(crate) async fn create_credential(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    body: Option<Json<CreateCredential>>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&id));
    let body = body.map(|b| b.0).unwrap_or_default();
    let label = body.label.unwrap_or_else(|| "api".to_owned());
    let expires_at = tri!(opt_time("expires_at", body.expires_at.as_deref()));
    let actor = p.actor();
    let c = tri!(
        call(&state, move |f| f
            .create_credential(&actor, &id, &label, expires_at))
        .await
    );
    (
        StatusCode::CREATED,
        Json(json!({ "credential": c.info, "token": c.token.into_string() })),
    )
        .into_response()
}

pub(crate) async fn list_credentials(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let id = tri!(device_id(&id));
    let list = tri!(
        call(&state, move |f| {
            if f.get_device(&id)?.is_none() {
                return Err(FleetError::NotFound {
                    what: "device",
                    id: id.to_string(),
                });
            }
            f.list_credentials(&id)
        })
        .await
    );
    Json(list).into_response()
}

pub(crate) async fn revoke_credential(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path((id, credential)): Path<(String, String)>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&id));
    let actor = p.actor();
    tri!(
        call(&state, move |f| f.revoke_credential(
            &actor,
            &id,
            &credential
        ))
        .await
    );
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateCredential {
    label: Option<String>,
    /// How long the old token keeps working (`1h`); without it, until it is revoked.
    grace: Option<String>,
}

pub(crate) async fn rotate_credential(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path((id, credential)): Path<(String, String)>,
    body: Option<Json<RotateCredential>>,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let id = tri!(device_id(&id));
    let body = body.map(|b| b.0).unwrap_or_default();
    let grace = match body.grace.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("grace: {e}")),
    };
    let label = body.label.unwrap_or_else(|| "rotation".to_owned());
    let actor = p.actor();
    let c = tri!(
        call(&state, move |f| f.rotate_credential(
            &actor,
            &id,
            &credential,
            grace,
            &label
        ))
        .await
    );
    (
        StatusCode::CREATED,
        Json(json!({ "credential": c.info, "token": c.token.into_string() })),
    )
        .into_response()
}

/// Parse an optional RFC 3339 time parameter.
pub(crate) fn opt_time(
    what: &str,
    value: Option<&str>,
) -> Result<Option<ferrite_core::Timestamp>, Box<Response>> {
    value
        .map(|v| {
            v.parse().map_err(|e: String| {
                Box::new(error(StatusCode::BAD_REQUEST, &format!("{what}: {e}")))
            })
        })
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FormatParam {
    format: Option<ImportFormat>,
}

fn format_of(param: Option<ImportFormat>, headers: &HeaderMap) -> ImportFormat {
    param.unwrap_or_else(|| {
        let csv = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/csv"));
        if csv {
            ImportFormat::Csv
        } else {
            ImportFormat::Ndjson
        }
    })
}

/// `POST /api/v1/devices/import`: an idempotent upsert of NDJSON or CSV records
/// (`?format=`, else by `Content-Type: text/csv`); answers the [`ferrite_fleet::ImportReport`].
pub(crate) async fn import_devices(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Query(q): Query<FormatParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tri!(require(&p, Permission::WriteDevices));
    let format = format_of(q.format, &headers);
    let actor = p.actor();
    let report = tri!(call(&state, move |f| f.import(&actor, format, &body[..], |_| {})).await);
    Json(report).into_response()
}

/// `GET /api/v1/devices/export?format=ndjson|csv`, streamed: memory stays small however large
/// the registry.
pub(crate) async fn export_devices(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Query(q): Query<FormatParam>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let fleet = tri!(fleet(&state)).clone();
    let format = q.format.unwrap_or(ImportFormat::Ndjson);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = fleet
            .export(format, &mut out)
            .map_err(|e| e.to_string())
            .and_then(|_| std::io::Write::flush(&mut out).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::error!(error = %e, "device export failed");
            // The client sees a cut-off body rather than a silently short file.
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let content_type = match format {
        ImportFormat::Ndjson => "application/x-ndjson",
        ImportFormat::Csv => "text/csv; charset=utf-8",
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

const CHUNK: usize = 64 * 1024;

/// A `Write` that sends 64 KiB chunks to an async body (from a blocking thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

pub(crate) async fn counts(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let (c, limiter) = tri!(call(&state, |f| Ok((f.counts()?, f.limiter().stats()))).await);
    let mut v = json!(c);
    v["auth"] = json!({
        "failures": limiter.failures,
        "refused_by_ip": limiter.refused_by_ip,
        "refused_by_device": limiter.refused_by_device,
        "tracked_ips": limiter.tracked_ips,
        "tracked_devices": limiter.tracked_devices,
    });
    Json(v).into_response()
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
    JsonBody(body): JsonBody<CreateToken>,
) -> Response {
    tri!(require(&p, Permission::ManageTokens));
    let actor = p.actor();
    let t = tri!(
        call(&state, move |f| f
            .create_api_token(&actor, &body.name, body.role))
        .await
    );
    (
        StatusCode::CREATED,
        Json(json!({ "info": t.info, "token": t.token.into_string() })),
    )
        .into_response()
}

pub(crate) async fn list_tokens(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ManageTokens));
    let t = tri!(call(&state, |f| f.list_api_tokens()).await);
    Json(t).into_response()
}

pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ManageTokens));
    let actor = p.actor();
    tri!(call(&state, move |f| f.revoke_api_token(&actor, &id)).await);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListAudit {
    since: Option<String>,
    until: Option<String>,
    target: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /api/v1/audit?since=&until=&target=&limit=&after=`: who changed what, when.
pub(crate) async fn audit(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Query(q): Query<ListAudit>,
) -> Response {
    tri!(require(&p, Permission::ReadAudit));
    let query = AuditQuery {
        since: tri!(opt_time("since", q.since.as_deref())),
        until: tri!(opt_time("until", q.until.as_deref())),
        target: q.target,
        after: q.after.map(Cursor::parse),
        limit: q.limit.unwrap_or(100),
    };
    let page = tri!(call(&state, move |f| f.audit(&query)).await);
    Json(json!({
        "items": page.items,
        "next": page.next.map(|c| c.as_str().to_owned()),
    }))
    .into_response()
}
