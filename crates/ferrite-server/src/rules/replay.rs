//! Replay: a rule's definition, compiled afresh, over the stored telemetry of a time range.
//!
//! Each stored row of a device becomes the message it was: topic `devices/{device_id}/telemetry`
//! (or `…/telemetry/{table}` for tables other than the default), the row's other tags and
//! fields as the JSON payload, event and processing time = the row's time, the device's
//! current registry tags. Only tables whose topics the rule's `FROM` can match are read, an
//! hour at a time in time order (rows of several tables merged by time), so windows fire as
//! the watermark passes them as they would have live; windows still open at the end are
//! closed. Rows without a `device_id` tag (written over HTTP without one) are counted as
//! skipped. The live rule's state and counters are not touched; with `actions` every emitted
//! row goes through the rule's actions, one after the other.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::TimestampNanosecondType;
use ferrite_api::rules::{REPLAY_MAX_ROWS, ReplayReport, ReplayRequest, RulesApiError};
use ferrite_core::{DEFAULT_MEASUREMENT, DeviceId, Timestamp, TopicFilter, TopicName};
use ferrite_rules::lang::{Message, Output, Rule};
use futures_util::StreamExt;

use super::{Deps, Job, TagCache, actions};

/// Rows read (and sorted) at a time.
const CHUNK: Duration = Duration::from_secs(3600);
/// Rows returned when the request names no limit.
const DEFAULT_ROWS: usize = 1000;

/// The tables whose telemetry topics `filter` can match, for devices it can match.
pub(super) fn tables_for(filter: &TopicFilter, tables: &[String]) -> Vec<String> {
    let device = filter
        .as_str()
        .split('/')
        .nth(1)
        .filter(|l| !matches!(*l, "+" | "#"))
        .unwrap_or("replay");
    tables
        .iter()
        .filter(|t| TopicName::new(topic_of(device, t)).is_ok_and(|topic| filter.matches(&topic)))
        .cloned()
        .collect()
}

fn topic_of(device: &str, table: &str) -> String {
    if table == DEFAULT_MEASUREMENT {
        format!("devices/{device}/telemetry")
    } else {
        format!("devices/{device}/telemetry/{table}")
    }
}

/// Run the replay; `rule` is the freshly compiled definition of the rule `name`.
pub(super) async fn run(
    name: &str,
    mut rule: Rule,
    message_id: Option<&str>,
    runner: Option<actions::Runner>,
    deps: Arc<Deps>,
    request: &ReplayRequest,
) -> Result<ReplayReport, RulesApiError> {
    let at = |what: &str, v: &str| {
        v.parse::<Timestamp>()
            .map_err(|e| RulesApiError::invalid(format!("{what}: {e}")))
    };
    let (from, to) = (at("from", &request.from)?, at("to", &request.to)?);
    if from >= to {
        return Err(RulesApiError::invalid("from must be before to"));
    }
    let limit = request.limit.unwrap_or(DEFAULT_ROWS).min(REPLAY_MAX_ROWS);
    let tables = tables_for(rule.filter(), &deps.store.tables());
    let mut report = ReplayReport {
        tables: tables.clone(),
        ..ReplayReport::default()
    };
    let mut tags = TagCache::new(deps.fleet.clone());
    let me = actions::publisher(name);
    let mut out = Vec::new();
    let step = i64::try_from(CHUNK.as_nanos()).unwrap_or(i64::MAX);
    let mut start = from;
    while start < to {
        let end = Timestamp::from_nanos(start.as_nanos().saturating_add(step).min(to.as_nanos()));
        let mut messages = Vec::new();
        for table in &tables {
            let mut stream = deps
                .query
                .range_in_time_order(table, start, end)
                .await
                .map_err(|e| RulesApiError::Internal(format!("reading {table}: {e}")))?;
            while let Some(batch) = stream.next().await {
                let batch =
                    batch.map_err(|e| RulesApiError::Internal(format!("reading {table}: {e}")))?;
                report.skipped += to_messages(&batch, table, &mut tags, &mut messages)
                    .map_err(|e| RulesApiError::Internal(format!("reading {table}: {e}")))?;
            }
        }
        // Tables are each in order; merge them (stable, so a table's order stays).
        messages.sort_by_key(Message::time);
        for msg in &mut messages {
            if let Some(field) = message_id {
                msg.set_id_from(field);
            }
            report.messages += 1;
            rule.process(msg, &mut out);
            deliver(&mut out, Some(msg), &runner, &me, limit, &mut report).await;
        }
        drop(rule.drain_late());
        start = end;
    }
    rule.flush(&mut out);
    deliver(&mut out, None, &runner, &me, limit, &mut report).await;
    let stats = rule.stats();
    report.matched = stats.matched;
    report.late_events = stats.late_events;
    report.duplicates = stats.duplicates;
    if let Some(r) = &runner {
        let c = r.counters.snapshot();
        (report.actions_ok, report.actions_failed) = (c.actions_ok, c.actions_failed);
    }
    Ok(report)
}

/// Count, keep (up to `limit`) and act on what the rule emitted for `source`.
async fn deliver(
    out: &mut Vec<Output>,
    source: Option<&Message>,
    runner: &Option<actions::Runner>,
    me: &Arc<str>,
    limit: usize,
    report: &mut ReplayReport,
) {
    for o in out.drain(..) {
        report.emitted += 1;
        if report.rows.len() < limit {
            report.rows.push(emitted(&o));
        } else {
            report.truncated = true;
        }
        if let Some(r) = runner {
            let job = Job::of(o, source, r.deps.clock.now());
            r.run_all(&job, me).await;
        }
    }
}

/// An emitted row as `ferrite rule test` prints it.
fn emitted(o: &Output) -> serde_json::Value {
    let mut v = serde_json::json!({ "row": o.row });
    if let Some(w) = &o.window {
        v["window"] = serde_json::json!({"start": w.start.to_string(), "end": w.end.to_string()});
    }
    if o.is_update {
        v["update"] = serde_json::Value::Bool(true);
    }
    v
}

/// The rows of one batch as messages; returns how many had no device.
fn to_messages(
    batch: &RecordBatch,
    table: &str,
    tags: &mut TagCache,
    out: &mut Vec<Message>,
) -> Result<u64, String> {
    let schema = batch.schema();
    let time_at = schema.index_of("time").map_err(|e| e.to_string())?;
    let times = batch
        .column(time_at)
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or("the time column is not a nanosecond timestamp")?
        .clone();
    // Every other column through Arrow's JSON writer (nulls left out, as a device would).
    let mut rest = batch.clone();
    rest.remove_column(time_at);
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(&rest).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let text = writer.into_inner();
    let mut skipped = 0;
    for (i, line) in text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let mut payload: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let device = payload
            .remove("device_id")
            .and_then(|v| v.as_str().and_then(|d| DeviceId::new(d).ok()));
        let Some(device) = device else {
            skipped += 1;
            continue;
        };
        if times.is_null(i) {
            skipped += 1;
            continue;
        }
        let time = Timestamp::from_nanos(times.value(i));
        let topic = TopicName::new(topic_of(device.as_str(), table)).map_err(|e| e.to_string())?;
        let device_tags = tags.get(&device);
        out.push(Message {
            client_id: device.as_str().to_owned(),
            device_id: Some(device),
            event_time: Some(time),
            tags: device_tags,
            ..Message::new(topic, serde_json::Value::Object(payload), time)
        });
    }
    Ok(skipped)
}
