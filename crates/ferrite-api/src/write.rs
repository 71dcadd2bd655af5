//! InfluxDB-compatible writes: `POST /api/v2/write?org=&bucket=&precision=` (2.x) and
//! `POST /write?db=&precision=` (1.x), line protocol in the body, optionally gzip-encoded
//! (`Content-Encoding: gzip`, as Telegraf sends by default).
//!
//! A batch is all or nothing: if any line is bad, the answer is 400 naming every bad line (up
//! to 20) and nothing of the batch is stored; otherwise the whole batch is one WAL record and
//! the answer, 204, is sent after its fsync. Ferrite has one namespace: `org`, `bucket` and
//! `db` are accepted and ignored; the measurement is the table.

use std::collections::HashMap;
use std::io::Read;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrite_core::decode::{Precision, decode_line_protocol};
use ferrite_core::{Classify, Clock, SystemClock};

use crate::{ApiState, status_of};

/// `POST /api/v2/write` and `POST /write`: the two differ only in parameters Ferrite ignores
/// (`org`/`bucket` versus `db`); `precision` is read from either.
pub(crate) async fn handle(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<ferrite_fleet::ApiPrincipal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = crate::fleet::require(&principal, ferrite_fleet::Permission::WriteDevices) {
        return *r;
    }
    write(
        &state,
        params.get("precision").map(String::as_str),
        &headers,
        body,
    )
    .await
}

async fn write(
    state: &ApiState,
    precision: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let precision = match precision.map(Precision::parse) {
        None => Precision::Nanoseconds,
        Some(Some(p)) => p,
        Some(None) => {
            return invalid(
                StatusCode::BAD_REQUEST,
                "precision must be one of ns, us, ms, s (or n, u, m, h)",
            );
        }
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        match gunzip(&body, state.max_body_bytes) {
            Ok(b) => b,
            Err((status, message)) => return invalid(status, &message),
        }
    } else {
        body.to_vec()
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return invalid(
            StatusCode::BAD_REQUEST,
            "the body must be UTF-8 line protocol",
        );
    };
    let points = match decode_line_protocol(text, precision, SystemClock.now(), &[]) {
        Ok(p) => p,
        Err(lines) => {
            let message = lines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return invalid(StatusCode::BAD_REQUEST, &message);
        }
    };
    let n = points.len();
    match state.store.write(points).await {
        Ok(()) => {
            tracing::debug!(points = n, "line-protocol batch stored");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            let status = status_of(e.kind());
            if status.is_server_error() {
                tracing::error!(error = %e, "write failed");
            }
            invalid(status, &e.to_string())
        }
    }
}

/// Decompress at most `limit` bytes; more is refused (a small gzip can expand enormously).
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, (StatusCode, String)> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    if let Err(e) = decoder.read_to_end(&mut out) {
        return Err((StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")));
    }
    if out.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the decompressed body exceeds {limit} bytes (http.max_body_bytes)"),
        ));
    }
    Ok(out)
}

/// InfluxDB's error body shape, so its clients show the message.
fn invalid(status: StatusCode, message: &str) -> Response {
    let code = if status.is_client_error() {
        "invalid"
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        "unavailable"
    } else {
        "internal error"
    };
    (
        status,
        axum::Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}
