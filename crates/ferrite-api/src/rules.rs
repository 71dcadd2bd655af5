//! The rules REST surface, and the contract ([`RulesApi`]) the server's rules engine
//! implements for it — this crate does not depend on the server.
//!
//! - `POST /api/v1/rules` a [`RuleDefinition`] → 201 the [`RuleView`]; 409 if the name is
//!   taken; 400 with `line` and `column` when the SQL does not compile;
//! - `GET /api/v1/rules` → `{items: [RuleView]}`;
//! - `GET|PUT|DELETE /api/v1/rules/{name}` (PUT replaces the whole definition; the body's
//!   `name` may be left out, and must equal the path's if given);
//! - `POST /api/v1/rules/{name}/enable`, `POST /api/v1/rules/{name}/disable`.
//!
//! Reads need [`Permission::ReadFleet`], changes [`Permission::WriteRules`]. Changes apply
//! at once, without a restart, and are recorded in the fleet's audit log (`rule.create`,
//! `rule.replace`, `rule.delete`, `rule.enable`, `rule.disable`; who, what, when) right after
//! they are made.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferrite_fleet::{ApiPrincipal, Permission};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alarms::AlarmCounters;
use crate::fleet::{require, tri};
use crate::{ApiState, JsonBody, error};
pub use ferrite_rules::agg::DedupPolicy;
pub use ferrite_rules::alarm::Severity;

/// A rule as the operator defines it; stored as given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDefinition {
    /// Unique name: letters, digits, `-`, `_`, `.`, at most 64 bytes.
    pub name: String,
    /// The rule SQL (see `ferrite_rules::lang`).
    pub sql: String,
    /// Whether it runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What to do with every output row, in order.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Where failures of `actions` go, as `{rule, action, error, row}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_action: Option<Action>,
    /// Windowed rules: how late (in event time) readings may arrive and still be on time
    /// (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub out_of_orderness: Option<Duration>,
    /// Windowed rules: how long after firing a window still takes late readings and fires
    /// again (default 0 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_lateness: Option<Duration>,
    /// Windowed rules: the payload field (dotted path) holding a message id — a device's
    /// sequence number, say. A reading whose id its device already sent within the same
    /// window is dropped as a duplicate (beyond the `dedup` capacity, readings are admitted
    /// unchecked and counted). Without it nothing is deduplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// How message ids are remembered: `{"method": "exact", "capacity": 65536}` (the
    /// default: no false positives) or `{"method": "bloom", "capacity": 1048576,
    /// "false_positive_rate": 0.001}` (a scalable Bloom filter, ~3 bytes an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupPolicy>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn yes() -> bool {
    true
}

/// One thing a rule does with an output row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Publish the row as JSON through the broker, with publisher `$rule/{name}`.
    Republish {
        /// Topic template: `${column}` of the row, `${device_id}`, `${topic}`.
        topic: String,
        /// 0 or 1.
        #[serde(default)]
        qos: u8,
        /// The retain flag.
        #[serde(default)]
        retain: bool,
    },
    /// Write the row into the store as a point of measurement `table`.
    Table {
        /// The measurement.
        table: String,
    },
    /// POST the row as JSON, retrying with exponential backoff.
    Webhook {
        /// `http://…` or `https://…` (the system's roots plus `rules.webhook_ca_file`).
        url: String,
        /// Extra request headers.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// Raise an alarm of type `alarm` for the row's device: one open alarm per rule × device ×
    /// type, however often it fires (see `ferrite_rules::alarm`).
    RaiseAlarm {
        /// The alarm type, a template like republish topics (e.g. `overheat`).
        alarm: String,
        /// How severe.
        severity: Severity,
        /// A message template, e.g. `temperature ${temp} °C`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// The device, a template (default `${device_id}`: the message's device).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Clear the open alarm of type `alarm` raised by `rule` (default: this rule) for the
    /// row's device; nothing to clear is not a failure.
    ClearAlarm {
        /// The alarm type, a template.
        alarm: String,
        /// The rule that raised it (default: this rule).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// The device, a template (default `${device_id}`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Send a command to the row's device: published as JSON `{id, name, payload, rule,
    /// issued_at}` on `devices/{device}/commands/{name}`. Fails (→ the error action) when the
    /// device is disabled in the registry or nothing is subscribed to receive it.
    Command {
        /// The command name, a template; one topic level.
        name: String,
        /// The command's payload: any JSON whose strings are templates (a string that is
        /// exactly `${column}` takes the column's value with its JSON type).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<serde_json::Value>,
        /// The device, a template (default `${device_id}`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// 0 or 1 (default 1).
        #[serde(default = "one")]
        qos: u8,
    },
}

fn one() -> u8 {
    1
}

impl Action {
    /// `republish`, `table`, `webhook`, `raise_alarm`, `clear_alarm` or `command`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Republish { .. } => "republish",
            Self::Table { .. } => "table",
            Self::Webhook { .. } => "webhook",
            Self::RaiseAlarm { .. } => "raise_alarm",
            Self::ClearAlarm { .. } => "clear_alarm",
            Self::Command { .. } => "command",
        }
    }
}

/// Counters of a rule since it was last (re)started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounters {
    /// Messages delivered to the rule.
    pub messages: u64,
    /// Messages whose payload was not a JSON document (skipped).
    pub bad_payloads: u64,
    /// Messages that passed `WHERE`.
    pub matched: u64,
    /// Output rows.
    pub rows: u64,
    /// Windowed rules: readings too late for every window.
    pub late_events: u64,
    /// Windowed rules: readings dropped as duplicates by `message_id`.
    #[serde(default)]
    pub duplicates: u64,
    /// Windowed rules: readings whose id went unchecked because the window's id memory
    /// (`dedup.capacity`) was full.
    #[serde(default)]
    pub dedup_unchecked: u64,
    /// Actions that succeeded (one per row and action).
    pub actions_ok: u64,
    /// Actions that failed (after retries; each went to the error action if any).
    pub actions_failed: u64,
    /// Rows dropped because the rule's action queue was full.
    pub actions_dropped: u64,
    /// What its alarm actions did (and operators did to its alarms) since the server started.
    #[serde(default)]
    pub alarms: AlarmCounters,
}

/// A rule with its state, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    /// The definition.
    #[serde(flatten)]
    pub definition: RuleDefinition,
    /// Whether its task is running (enabled and started).
    pub running: bool,
    /// Its counters.
    pub stats: RuleCounters,
    /// Why an enabled rule is not running (a stored rule that no longer compiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a rules operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesApiError {
    /// The definition is invalid; `line`/`column` locate SQL errors.
    #[error("{message}")]
    Invalid {
        /// What is wrong (includes the position for SQL errors).
        message: String,
        /// 1-based line of a SQL error.
        line: Option<u64>,
        /// 1-based column of a SQL error.
        column: Option<u64>,
    },
    /// No rule has this name.
    #[error("no rule named {0:?}")]
    NotFound(String),
    /// A rule with this name exists.
    #[error("a rule named {0:?} exists")]
    Conflict(String),
    /// Persisting or starting failed.
    #[error("{0}")]
    Internal(String),
}

impl RulesApiError {
    /// An invalid definition without a SQL position.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// `POST /api/v1/rules/{name}/replay`: run a rule over stored telemetry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Start of the range, inclusive: RFC 3339 or integer nanoseconds.
    pub from: String,
    /// End of the range, exclusive.
    pub to: String,
    /// Also run the rule's actions on what it emits (default: only report it).
    #[serde(default)]
    pub actions: bool,
    /// Most emitted rows to return (default 1,000, at most 100,000); all are counted, and
    /// with `actions` all are acted on.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The most rows a replay returns.
pub const REPLAY_MAX_ROWS: usize = 100_000;

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The tables read: those whose telemetry topics the rule's `FROM` can match.
    pub tables: Vec<String>,
    /// Stored rows offered to the rule as messages, in time order.
    pub messages: u64,
    /// Rows without a `device_id` tag (not telemetry from a device), not offered.
    pub skipped: u64,
    /// Messages that passed `WHERE`.
    pub matched: u64,
    /// Rows the rule emitted (windows still open at the end of the range are closed).
    pub emitted: u64,
    /// Windowed rules: readings too late for every window.
    pub late_events: u64,
    /// Windowed rules: readings dropped as duplicates by `message_id`.
    pub duplicates: u64,
    /// The first `limit` emitted rows: `{"row", "window"?, "update"?}`.
    pub rows: Vec<serde_json::Value>,
    /// More rows were emitted than returned.
    pub truncated: bool,
    /// With `actions`: actions that succeeded and that failed.
    pub actions_ok: u64,
    /// With `actions`: actions that failed (each went to the error action if any).
    pub actions_failed: u64,
}

/// What the rules engine offers the API. Methods may block briefly (they persist the rule
/// set with an fsync); the API calls them off the async workers.
pub trait RulesApi: Send + Sync + 'static {
    /// Create a rule (started at once if enabled).
    fn create(&self, who: &str, rule: RuleDefinition) -> Result<RuleView, RulesApiError>;
    /// Replace a rule's definition (its state restarts).
    fn replace(&self, who: &str, rule: RuleDefinition) -> Result<RuleView, RulesApiError>;
    /// Delete a rule (stopped at once; its alarms stay).
    fn delete(&self, who: &str, name: &str) -> Result<(), RulesApiError>;
    /// Enable or disable a rule.
    fn set_enabled(&self, who: &str, name: &str, enabled: bool) -> Result<RuleView, RulesApiError>;
    /// One rule.
    fn get(&self, name: &str) -> Result<RuleView, RulesApiError>;
    /// Every rule, by name.
    fn list(&self) -> Vec<RuleView>;
    /// Run rule `name`'s definition, with fresh state, over the stored telemetry of a time
    /// range (the live rule is not touched). May take long: the API calls it off the workers.
    fn replay(&self, name: &str, request: ReplayRequest) -> Result<ReplayReport, RulesApiError>;
}

fn rules_error(e: &RulesApiError) -> Response {
    match e {
        RulesApiError::Invalid {
            message,
            line,
            column,
        } => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": message, "line": line, "column": column})),
        )
            .into_response(),
        RulesApiError::NotFound(_) => error(StatusCode::NOT_FOUND, &e.to_string()),
        RulesApiError::Conflict(_) => error(StatusCode::CONFLICT, &e.to_string()),
        RulesApiError::Internal(_) => {
            tracing::error!(error = %e, "rules operation failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

fn engine(state: &ApiState) -> Result<Arc<dyn RulesApi>, Box<Response>> {
    state.rules.clone().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this server has no rules engine",
        ))
    })
}

/// Run an engine call on a blocking thread.
async fn call<T, F>(state: &ApiState, f: F) -> Result<T, Box<Response>>
where
    T: Send + 'static,
    F: FnOnce(&dyn RulesApi) -> Result<T, RulesApiError> + Send + 'static,
{
    let engine = engine(state)?;
    match tokio::task::spawn_blocking(move || f(engine.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(rules_error(&e))),
        Err(e) => {
            tracing::error!(error = %e, "rules task failed");
            Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rules operation failed",
            )))
        }
    }
}

fn who(p: &ApiPrincipal) -> String {
    p.actor().to_string()
}

/// Write a rule change into the fleet's audit log (after the change, in its own transaction;
/// a failure to record is logged, the change stands).
pub(crate) async fn audit(
    state: &ApiState,
    p: &ApiPrincipal,
    action: &'static str,
    target: &str,
    detail: serde_json::Value,
) {
    let Some(fleet) = state.fleet.clone() else {
        return;
    };
    let (actor, target) = (p.actor(), target.to_owned());
    let written =
        tokio::task::spawn_blocking(move || fleet.record_audit(&actor, action, &target, detail))
            .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::error!(action, "the audit log did not record a rule change");
    }
}

pub(crate) async fn create(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    JsonBody(rule): JsonBody<RuleDefinition>,
) -> Response {
    tri!(require(&p, Permission::WriteRules));
    let who = who(&p);
    let (name, detail) = (
        rule.name.clone(),
        serde_json::to_value(&rule).unwrap_or_default(),
    );
    let view = tri!(call(&state, move |e| e.create(&who, rule)).await);
    audit(&state, &p, "rule.create", &name, detail).await;
    (StatusCode::CREATED, Json(view)).into_response()
}

pub(crate) async fn list(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    let items = tri!(call(&state, |e| Ok(e.list())).await);
    Json(json!({ "items": items })).into_response()
}

pub(crate) async fn get(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
) -> Response {
    tri!(require(&p, Permission::ReadFleet));
    Json(tri!(call(&state, move |e| e.get(&name)).await)).into_response()
}

pub(crate) async fn replace(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
    JsonBody(mut body): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Response {
    tri!(require(&p, Permission::WriteRules));
    match body.get("name") {
        None => {
            body.insert("name".to_owned(), name.clone().into());
        }
        Some(n) if n.as_str() == Some(name.as_str()) => {}
        Some(n) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body's name {n} differs from the path's {name:?}"),
            );
        }
    }
    let rule: RuleDefinition = match serde_json::from_value(serde_json::Value::Object(body)) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let who = who(&p);
    let detail = serde_json::to_value(&rule).unwrap_or_default();
    let view = tri!(call(&state, move |e| e.replace(&who, rule)).await);
    audit(&state, &p, "rule.replace", &name, detail).await;
    Json(view).into_response()
}

pub(crate) async fn delete(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
) -> Response {
    tri!(require(&p, Permission::WriteRules));
    let who = who(&p);
    let target = name.clone();
    tri!(call(&state, move |e| e.delete(&who, &name)).await);
    audit(&state, &p, "rule.delete", &target, serde_json::Value::Null).await;
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn enable(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
) -> Response {
    set_enabled(state, p, name, true).await
}

pub(crate) async fn disable(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
) -> Response {
    set_enabled(state, p, name, false).await
}

async fn set_enabled(state: ApiState, p: ApiPrincipal, name: String, enabled: bool) -> Response {
    tri!(require(&p, Permission::WriteRules));
    let who = who(&p);
    let target = name.clone();
    let view = tri!(call(&state, move |e| e.set_enabled(&who, &name, enabled)).await);
    let action = if enabled {
        "rule.enable"
    } else {
        "rule.disable"
    };
    audit(&state, &p, action, &target, serde_json::Value::Null).await;
    Json(view).into_response()
}

pub(crate) async fn replay(
    State(state): State<ApiState>,
    Extension(p): Extension<ApiPrincipal>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Response {
    // Reading stored data is a query; acting on it is a rule change.
    tri!(require(&p, Permission::Query));
    if request.actions {
        tri!(require(&p, Permission::WriteRules));
    }
    let (target, detail) = (
        name.clone(),
        serde_json::to_value(&request).unwrap_or_default(),
    );
    let acting = request.actions;
    let report = tri!(call(&state, move |e| e.replay(&name, request)).await);
    if acting {
        audit(&state, &p, "rule.replay", &target, detail).await;
    }
    Json(report).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn definition_round_trips_with_human_durations() {
        let text = r#"{"name": "hot", "sql": "SELECT 1 FROM 'a'", "out_of_orderness": "5s",
            "actions": [{"type": "republish", "topic": "alerts/${device_id}", "qos": 1},
                        {"type": "table", "table": "t"},
                        {"type": "webhook", "url": "http://127.0.0.1:9/x"}]}"#;
        let def: RuleDefinition = serde_json::from_str(text).unwrap();
        assert!(def.enabled);
        assert_eq!(def.out_of_orderness, Some(Duration::from_secs(5)));
        assert_eq!(def.actions.len(), 3);
        assert_eq!(def.actions[0].kind(), "republish");
        let back = serde_json::to_value(&def).unwrap();
        assert_eq!(back["out_of_orderness"], "5s");
        assert_eq!(serde_json::from_value::<RuleDefinition>(back).unwrap(), def);
    }

    #[test]
    fn unknown_action_fields_are_refused() {
        let text = r#"{"name": "x", "sql": "s", "actions": [{"type": "table", "tabel": "t"}]}"#;
        assert!(serde_json::from_str::<RuleDefinition>(text).is_err());
    }
}
