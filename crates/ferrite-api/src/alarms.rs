//! The alarms REST surface, and the contract ([`AlarmsApi`]) the server's alarm store
//! implements for it. Alarms are raised and cleared by rule actions (`raise_alarm`,
//! `clear_alarm`); operators list, acknowledge and clear them here.
//!
//! - `GET /api/v1/alarms?state=&severity=&device=&rule=&limit=&after=` → `{items, next}`,
//!   newest first; `state` is one of `active`, `acknowledged`, `cleared_unacknowledged`,
//!   `cleared` or `open` (any but `cleared`); `next` is the `after` of the next page;
//! - `GET /api/v1/alarms/stats` → the [`AlarmCounters`] of every rule added up;
//! - `GET /api/v1/alarms/{id}` → the alarm with its history;
//! - `POST /api/v1/alarms/{id}/ack` `{note?}` → the alarm; 409 if it is already acknowledged
//!   or closed;
//! - `POST /api/v1/alarms/{id}/clear` `{note?}` → the alarm, closed; 409 if it was closed.
//!
//! Reads need [`Permission::ReadFleet`] (viewer), ack and clear [`Permission::WriteRules`]
//! (operator); both are recorded in the audit log (`alarm.ack`, `alarm.clear`, target
//! `alarm/{id}`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferrite_fleet::{ApiPrincipal, Permission};
pub use ferrite_rules::alarm::{Alarm, AlarmState, Severity};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fleet::{require, tri};
use crate::{ApiState, error};

/// Which alarms to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlarmFilter {
    /// Only open alarms (any state but cleared).
    pub open: bool,
    /// Only this state.
    pub state: Option<AlarmState>,
    /// Only this severity.
    pub severity: Option<Severity>,
    /// Only this device.
    pub device: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
}

impl AlarmFilter {
    /// Whether `a` passes.
    pub fn matches(&self, a: &Alarm) -> bool {
        (!self.open || a.state.is_open())
            && self.state.is_none_or(|s| a.state == s)
            && self.severity.is_none_or(|s| a.severity == s)
            && self.device.as_ref().is_none_or(|d| a.device == *d)
            && self.rule.as_ref().is_none_or(|r| a.rule == *r)
    }
}

/// One page of alarms, newest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlarmPage {
    /// The alarms.
    pub items: Vec<Alarm>,
    /// The `after` of the next page, if there is one.
    pub next: Option<u64>,
}

/// Counters of alarm handling (per rule in the rule's stats, or added up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmCounters {
    /// Raises that opened a new alarm or re-activated a cleared-unacknowledged one.
    pub raised: u64,
    /// Raises folded into an open alarm (count and last values updated, nothing published).
    pub deduped: u64,
    /// Raises that escalated an alarm's severity.
    pub escalated: u64,
    /// Acknowledgements.
    pub acknowledged: u64,
    /// Clears, by rules or operators.
    pub cleared: u64,
    /// Events not published because the alarm was flapping.
    pub suppressed_flapping: u64,
    /// New alarms refused by the per-device rate limit.
    pub rate_limited: u64,
    /// Lifecycle events published.
    pub published: u64,
    /// Lifecycle events dropped because the publication queue was full.
    pub publish_dropped: u64,
}

impl AlarmCounters {
    /// Add `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.raised += other.raised;
        self.deduped += other.deduped;
        self.escalated += other.escalated;
        self.acknowledged += other.acknowledged;
        self.cleared += other.cleared;
        self.suppressed_flapping += other.suppressed_flapping;
        self.rate_limited += other.rate_limited;
        self.published += other.published;
        self.publish_dropped += other.publish_dropped;
    }
}

/// Why an alarms operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmsApiError {
    /// No alarm has this id.
    #[error("no alarm {0}")]
    NotFound(u64),
    /// The transition does not apply in the alarm's state.
    #[error("{0}")]
    Conflict(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed or the store is closed.
    #[error("{0}")]
    Internal(String),
}

/// What the alarm store offers the API. Methods may block briefly (a redb commit with an
/// fsync); the API calls them off the async workers.
pub trait AlarmsApi: Send + Sync + 'static {
    /// A page of alarms passing `filter`, newest first, with ids below `after`.
    fn list(
        &self,
        filter: &AlarmFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AlarmPage, AlarmsApiError>;
    /// One alarm.
    fn get(&self, id: u64) -> Result<Alarm, AlarmsApiError>;
    /// Acknowledge an alarm.
    fn acknowledge(
        &self,
        id: u64,
        who: &str,
        note: Option<String>,
    ) -> Result<Alarm, AlarmsApiError>;
    /// Clear (close) an alarm.
    fn clear(&self, id: u64, who: &str, note: Option<String>) -> Result<Alarm, AlarmsApiError>;
    /// Every rule's counters added up.
    fn stats(&self) -> AlarmCounters;
}

fn alarms_error(e: &AlarmsApiError) -> Response {
    match e {
        AlarmsApiError::NotFound(_) => error(StatusCode::NOT_FOUND, &e.to_string()),
        AlarmsApiError::Conflict(_) => error(StatusCode::CONFLICT, &e.to_string()),
        AlarmsApiError::Invalid(_) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        AlarmsApiError::Internal(_) => {
            tracing::error!(error = %e, "alarms operation failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// Run an alarm store call on a blocking thread.
async fn call<T, F>(state: &ApiState, f: F) -> Result<T, Box<Response>>
where
    T: Send + 'static,
    F: FnOnce(&dyn AlarmsApi) -> Result<T, AlarmsApiError> + Send + 'static,
{
    let store: Arc<dyn AlarmsApi> = state.alarms.clone().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this server has no alarm store",
        ))
    })?;
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(alarms_error(&e))),
        Err(e) => {
            tracing::error!(error = %e, "alarms task failed");
            Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "alarms operation failed",
            )))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListAlarms {
    state: Option<String>,
    severity: Option<String>,
    device: Option<String>,
    rule: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

/// Parse a query value with the same names as the JSON.
fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
    all: &[&str],
) -> Result<T, Box<Response>> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("{what} {text:?}: use one of {}", all.join(", ")),
        ))
    })
}

pub(crate) async fn list(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Query(q): Query<ListAlarms>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let mut filter = AlarmFilter {
        device: q.device,
        rule: q.rule,
        ..AlarmFilter::default()
    };
    match q.state.as_deref() {
        None => {}
        Some("open") => filter.open = true,
        Some(s) => {
            let mut names: Vec<&str> = AlarmState::ALL.iter().map(|s| s.as_str()).collect();
            names.push("open");
            filter.state = Some(tri!(parse("state", s, &names)));
        }
    }
    if let Some(s) = q.severity.as_deref() {
        let names: Vec<&str> = Severity::ALL.iter().map(|s| s.as_str()).collect();
        filter.severity = Some(tri!(parse("severity", s, &names)));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = q.after;
    let page = tri!(call(&state, move |a| a.list(&filter, after, limit)).await);
    Json(page).into_response()
}

pub(crate) async fn stats(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    Json(tri!(call(&state, |a| Ok(a.stats())).await)).into_response()
}

pub(crate) async fn get(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let id = tri!(alarm_id(&id));
    Json(tri!(call(&state, move |a| a.get(id)).await)).into_response()
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: Option<String>,
}

/// The optional `{note}` body (an empty body is no note).
fn note(body: &Bytes) -> Result<Option<String>, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<NoteBody>(body)
        .map(|b| b.note)
        .map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"note\": \"...\"}} or empty: {e}"),
            ))
        })
}

fn alarm_id(text: &str) -> Result<u64, Box<Response>> {
    text.parse().map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("alarm id {text:?} is not a number"),
        ))
    })
}

pub(crate) async fn ack(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    change(state, p, id, body, "alarm.ack").await
}

pub(crate) async fn clear(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    change(state, p, id, body, "alarm.clear").await
}

async fn change(
    state: ApiState,
    p: ApiPrincipal,
    id: String,
    body: Bytes,
    action: &'static str,
) -> Response {
    tri!(require(&p, Permission::WriteRules));
    let id = tri!(alarm_id(&id));
    let note = tri!(note(&body));
    let who = p.actor().to_string();
    let detail = json!({ "note": note });
    let alarm = tri!(
        call(&state, move |a| if action == "alarm.ack" {
            a.acknowledge(id, &who, note)
        } else {
            a.clear(id, &who, note)
        })
        .await
    );
    crate::rules::audit(&state, &p, action, &format!("alarm/{id}"), detail).await;
    Json(alarm).into_response()
}
