//! Ferrite's HTTP API.
//!
//! Owns the HTTP surface operators, scripts and InfluxDB-speaking agents use:
//! - `GET /healthz`;
//! - `POST /api/v1/query`: SQL in the body as text, or JSON `{"sql": "..."}`; the answer is a
//!   JSON array of row objects, CSV (`Accept: text/csv`) or an Arrow IPC stream
//!   (`Accept: application/vnd.apache.arrow.stream`); errors are JSON `{"error": "..."}`;
//! - `GET /api/v1/export?table=T&from=&to=`: every row of a table in a time range, streamed as
//!   Arrow IPC for `ferrite export` ([`export`]);
//! - `POST /api/v2/write` and `POST /write`: InfluxDB 2.x and 1.x line-protocol writes
//!   ([`write`]), answered 204 only after the batch is fsynced;
//! - `GET /mqtt`: MQTT over WebSocket (subprotocol `mqtt`), served by the gateway.
//!
//! Statuses come from the error's [`ErrorKind`]: 400 for bad input, 503 when overloaded, 500
//! for internal failures.
//!
//! - the device registry and API tokens ([`fleet`]);
//! - rules: definitions, enable/disable and counters ([`rules`]), served by whatever engine
//!   the server puts in [`ApiState::rules`];
//! - alarms raised by rules: list, acknowledge, clear ([`alarms`]), served by the store in
//!   [`ApiState::alarms`].
//!
//! Access: bearer API tokens with roles on every endpoint but `/healthz` and `/mqtt`
//! ([`fleet::access`]); anonymous callers only where [`Anonymous`] allows.
//! The same engine and access rules also answer over the PostgreSQL wire protocol ([`pg`]).
//! `/api/v1/query` answers are collected under `query.max_rows`; large results stream through
//! pgwire or `/api/v1/export`.

pub mod alarms;
pub mod export;
pub mod fleet;
pub mod pg;
mod publish;
pub mod rules;
pub mod security;
mod write;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ferrite_core::{Classify, ErrorKind};
use ferrite_query::{QueryEngine, QueryError, QueryResult};
pub use fleet::Anonymous;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the HTTP API needs from the rest of the system.
#[derive(Clone)]
pub struct ApiState {
    /// Answers SQL.
    pub query: Arc<QueryEngine>,
    /// Takes line-protocol writes.
    pub store: Arc<ferrite_store::Store>,
    /// Largest request body accepted (after decompression for writes).
    pub max_body_bytes: usize,
    /// The MQTT gateway, for MQTT over WebSocket at `/mqtt`; `None` disables it.
    pub mqtt: Option<ferrite_mqtt::MqttHandle>,
    /// The device registry and API tokens; `None` serves no registry and accepts no tokens.
    pub fleet: Option<ferrite_fleet::Fleet>,
    /// Who may call without a token.
    pub anonymous: Anonymous,
    /// The gateway's router, for `POST /api/v1/publish/{topic}`; `None` disables it.
    pub router: Option<ferrite_mqtt::Router>,
    /// The rules engine, for `/api/v1/rules`; `None` serves no rules.
    pub rules: Option<Arc<dyn rules::RulesApi>>,
    /// The alarm store, for `/api/v1/alarms`; `None` serves no alarms.
    pub alarms: Option<Arc<dyn alarms::AlarmsApi>>,
}

/// Build the API's router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/query", post(query))
        .route("/api/v1/export", get(export::handle))
        .route("/api/v1/store", get(store_stats))
        .route("/api/v1/mqtt", get(mqtt_stats))
        .route("/api/v2/write", post(write::handle))
        .route("/write", post(write::handle))
        .route("/mqtt", get(ws::upgrade))
        .route(
            "/api/v1/devices",
            post(fleet::create_device).get(fleet::list_devices),
        )
        .route(
            "/api/v1/devices/{id}",
            get(fleet::get_device)
                .patch(fleet::update_device)
                .delete(fleet::delete_device),
        )
        .route("/api/v1/devices/import", post(fleet::import_devices))
        .route("/api/v1/devices/export", get(fleet::export_devices))
        .route(
            "/api/v1/devices/{id}/credentials",
            post(fleet::create_credential).get(fleet::list_credentials),
        )
        .route(
            "/api/v1/devices/{id}/credentials/{credential}",
            delete(fleet::revoke_credential),
        )
        .route(
            "/api/v1/devices/{id}/credentials/{credential}/rotate",
            post(fleet::rotate_credential),
        )
        .route(
            "/api/v1/devices/{id}/certs",
            post(security::issue_cert).get(security::list_certs),
        )
        .route("/api/v1/certs/{serial}", delete(security::revoke_cert))
        .route(
            "/api/v1/ca",
            get(security::get_ca)
                .post(security::init_ca)
                .put(security::import_ca),
        )
        .route("/api/v1/policies", get(security::list_policies))
        .route(
            "/api/v1/policies/{name}",
            get(security::get_policy)
                .put(security::put_policy)
                .delete(security::delete_policy),
        )
        .route(
            "/api/v1/claims",
            post(security::create_claim).get(security::list_claims),
        )
        .route("/api/v1/claims/{id}", delete(security::revoke_claim))
        .route("/api/v1/provision", post(security::provision))
        .route("/api/v1/publish/{*topic}", post(publish::publish))
        .route("/api/v1/audit", get(fleet::audit))
        .route("/api/v1/fleet", get(fleet::counts))
        .route(
            "/api/v1/tokens",
            post(fleet::create_token).get(fleet::list_tokens),
        )
        .route("/api/v1/tokens/{id}", delete(fleet::revoke_token))
        .route("/api/v1/rules", post(rules::create).get(rules::list))
        .route(
            "/api/v1/rules/{name}",
            get(rules::get).put(rules::replace).delete(rules::delete),
        )
        .route("/api/v1/rules/{name}/enable", post(rules::enable))
        .route("/api/v1/rules/{name}/disable", post(rules::disable))
        .route("/api/v1/rules/{name}/replay", post(rules::replay))
        .route("/api/v1/alarms", get(alarms::list))
        .route("/api/v1/alarms/stats", get(alarms::stats))
        .route("/api/v1/alarms/{id}", get(alarms::get))
        .route("/api/v1/alarms/{id}/ack", post(alarms::ack))
        .route("/api/v1/alarms/{id}/clear", post(alarms::clear))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), fleet::access))
        .with_state(state)
}

/// Serve `app` on `listener` until `shutdown` is cancelled, then finish in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// `GET /api/v1/store`: the store's counters (rows in memory, files and bytes local and cold,
/// the cold cache, flushes, compactions, partitions dropped and evicted). Anyone who may query.
async fn store_stats(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<ferrite_fleet::ApiPrincipal>,
) -> Response {
    if let Err(r) = fleet::require(&principal, ferrite_fleet::Permission::Query) {
        return *r;
    }
    axum::Json(state.store.stats()).into_response()
}

/// `GET /api/v1/mqtt`: the MQTT gateway's state (clients connected, sessions kept for absent
/// clients, retained messages, bytes queued) and its counters since start (connections,
/// publishes in and out, deliveries dropped by each queue limit, refusals, session-store
/// commits). Anyone who may read the fleet.
async fn mqtt_stats(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<ferrite_fleet::ApiPrincipal>,
) -> Response {
    if let Err(r) = fleet::require(&principal, ferrite_fleet::Permission::ReadFleet) {
        return *r;
    }
    match &state.mqtt {
        Some(mqtt) => axum::Json(mqtt.stats()).into_response(),
        None => error(StatusCode::NOT_FOUND, "the MQTT gateway is not running"),
    }
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
}

async fn query(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<ferrite_fleet::ApiPrincipal>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = fleet::require(&principal, ferrite_fleet::Permission::Query) {
        return *r;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sql = if is_json {
        match serde_json::from_slice::<QueryBody>(&body) {
            Ok(b) => b.sql,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("body must be {{\"sql\": \"...\"}}: {e}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => s,
            Err(_) => return error(StatusCode::BAD_REQUEST, "the SQL must be UTF-8"),
        }
    };
    if sql.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "empty query: send SQL in the request body",
        );
    }
    let format = AnswerFormat::from_accept(&headers);
    match state.query.sql(&sql).await {
        Ok(result) => match format.encode(&result) {
            Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the answer: {e}"),
            ),
        },
        Err(e) => query_error(&e),
    }
}

/// The answer's encoding, chosen by the `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnswerFormat {
    /// `application/json` (default): an array of row objects.
    Json,
    /// `text/csv`: a header line, then one line per row.
    Csv,
    /// `application/vnd.apache.arrow.stream`: an Arrow IPC stream, types intact.
    Arrow,
}

/// Media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

impl AnswerFormat {
    fn from_accept(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains(ARROW_STREAM) {
            Self::Arrow
        } else if accept.contains("text/csv") {
            Self::Csv
        } else {
            Self::Json
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => ARROW_STREAM,
        }
    }

    fn encode(self, result: &QueryResult) -> Result<Vec<u8>, arrow::error::ArrowError> {
        match self {
            Self::Json => to_json(result),
            Self::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(Vec::new());
                for batch in &result.batches {
                    writer.write(batch)?;
                }
                let mut out = writer.into_inner();
                if result.batches.is_empty() {
                    let names: Vec<&str> = result
                        .schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect();
                    out.extend_from_slice(names.join(",").as_bytes());
                    out.push(b'\n');
                }
                Ok(out)
            }
            Self::Arrow => {
                let mut writer =
                    arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &result.schema)?;
                for batch in &result.batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                writer.into_inner()
            }
        }
    }
}

fn to_json(result: &QueryResult) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in &result.batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let mut out = writer.into_inner();
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    out.push(b'\n');
    Ok(out)
}

fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::Conflict | ErrorKind::NotFound => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn query_error(e: &QueryError) -> Response {
    let status = status_of(e.kind());
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "query failed");
    }
    error(status, &e.to_string())
}

/// A JSON request body; a body that is not the expected JSON is answered 400
/// `{"error": "..."}` like every other bad input (axum's own extractor answers 422 in text).
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, &e.body_text())),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}
