//! `GET /api/v1/export`: every row of one table in a time range, streamed as Arrow IPC.
//!
//! Query string: `table` (required), `from` and `to` (optional; RFC 3339 or integer
//! nanoseconds; `from` inclusive, `to` exclusive). The answer is an Arrow IPC stream
//! (`application/vnd.apache.arrow.stream`) whose `x-ferrite-rows` header says how many rows
//! were in the range when the export began, so a client can show progress. `ferrite export`
//! turns it into Parquet, CSV or NDJSON.
//!
//! An export has no row limit or timeout ([`QueryEngine::export`]); it needs the query
//! permission, like SQL. A failure after the first byte cuts the body off before the IPC
//! end-of-stream marker, so a client never mistakes a broken export for a short one.
//!
//! [`QueryEngine::export`]: ferrite_query::QueryEngine::export

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferrite_core::Timestamp;
use ferrite_fleet::{ApiPrincipal, Permission};
use futures_util::StreamExt;

use crate::{ARROW_STREAM, ApiState, error, fleet, query_error};

/// The response header with the number of rows in the range.
pub const ROWS_HEADER: &str = "x-ferrite-rows";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportParams {
    table: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn bound(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, String> {
    value
        .map(|v| v.parse::<Timestamp>().map_err(|e| format!("{name}: {e}")))
        .transpose()
}

pub(crate) async fn handle(
    State(state): State<ApiState>,
    Extension(principal): Extension<ApiPrincipal>,
    params: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = fleet::require(&principal, Permission::Query) {
        return *r;
    }
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let Some(table) = params.table.filter(|t| !t.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing ?table=NAME");
    };
    let range = bound("from", params.from.as_deref())
        .and_then(|from| Ok((from, bound("to", params.to.as_deref())?)));
    let (from, to) = match range {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("from ({f}) must be before to ({t})"),
        );
    }
    let export = match state.query.export(&table, from, to).await {
        Ok(e) => e,
        Err(e) => return query_error(&e),
    };
    let rows = export.rows;
    let schema = export.stream.schema();
    let mut writer = match arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema) {
        Ok(w) => w,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the export: {e}"),
            );
        }
    };
    // The schema message first, then one IPC message per batch, then the end marker.
    let head = Bytes::from(std::mem::take(writer.get_mut()));
    let table_name = table.clone();
    let batches = futures_util::stream::unfold(Some((export.stream, writer)), move |state| {
        let table = table_name.clone();
        async move {
            let (mut stream, mut writer) = state?;
            let item = match stream.next().await {
                Some(Ok(batch)) => writer
                    .write(&batch)
                    .map(|()| Bytes::from(std::mem::take(writer.get_mut()))),
                Some(Err(e)) => Err(arrow::error::ArrowError::ExternalError(Box::new(e))),
                None => {
                    let end = writer
                        .finish()
                        .map(|()| Bytes::from(std::mem::take(writer.get_mut())));
                    return Some((end.map_err(std::io::Error::other), None));
                }
            };
            match item {
                Ok(bytes) => Some((Ok(bytes), Some((stream, writer)))),
                Err(e) => {
                    tracing::error!(%table, error = %e, "export failed");
                    Some((Err(std::io::Error::other(e)), None))
                }
            }
        }
    });
    let body =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(batches);
    (
        [
            (header::CONTENT_TYPE, ARROW_STREAM.to_owned()),
            (
                header::HeaderName::from_static(ROWS_HEADER),
                rows.to_string(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
