//! Running a rule's actions on its output rows, one row at a time, every action in order.
//!
//! - `republish`: the row as a JSON payload on the rendered topic template (`${column}` of
//!   the row — a string as is, `null` empty, anything else as JSON — else `${device_id}` or
//!   `${topic}` of the message that produced the row), published through the router with
//!   publisher `$rule/{name}`. A refusal by a durable subscriber (the store, for a telemetry
//!   topic) is a failure.
//! - `table`: the row as one point of measurement `table`, written like ingested telemetry
//!   (waits for the WAL fsync): string columns become tags (plus `device_id` from the message
//!   when the row has none), numbers become `f64` fields (like JSON telemetry), booleans
//!   boolean fields; `null`s, arrays and objects are left out. Its time is the window end for
//!   windowed rules, else the message's event time. A row without a number or boolean is a
//!   failure.
//! - `webhook`: `POST` the row as JSON; [`WEBHOOK_ATTEMPTS`] tries, [`WEBHOOK_TIMEOUT`] each,
//!   backoff doubling from [`WEBHOOK_BACKOFF`]; connection errors and 5xx/429 are retried,
//!   other statuses are not; anything but 2xx is a failure.
//!
//! A failed action is counted and logged, and if the rule has an `error_action` it runs with
//! the row `{"rule", "action", "error", "row"}` (its own failure is only logged).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ferrite_api::rules::Action;
use ferrite_core::decode::check_field_name;
use ferrite_core::{DEVICE_ID_TAG, Measurement, Point, TopicName, Value};
use ferrite_mqtt::{Message, Verdict};
use ferrite_mqtt_codec::{Properties, QoS};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Counters, Deps, Job};

/// Tries per webhook call.
pub(crate) const WEBHOOK_ATTEMPTS: u32 = 3;
/// Wait before the second try; doubled before each next one.
pub(crate) const WEBHOOK_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for one webhook try.
pub(crate) const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The MQTT publisher id of a rule's messages.
pub(crate) fn publisher(rule: &str) -> Arc<str> {
    Arc::from(format!("$rule/{rule}"))
}

/// One rule's actions and what running them needs.
pub(crate) struct Runner {
    pub(crate) rule: Arc<str>,
    pub(crate) actions: Vec<Action>,
    pub(crate) error_action: Option<Action>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) deps: Arc<Deps>,
}

/// Run queued rows until the evaluator stops or `cancel` (an action in progress is abandoned).
pub(crate) async fn run(runner: Runner, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
    let me = publisher(&runner.rule);
    loop {
        let job = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            j = rx.recv() => match j {
                Some(j) => j,
                None => return,
            },
        };
        let done = tokio::select! {
            biased;
            () = cancel.cancelled() => false,
            () = runner.run_all(&job, &me) => true,
        };
        if !done {
            return;
        }
    }
}

impl Runner {
    async fn run_all(&self, job: &Job, me: &Arc<str>) {
        for action in &self.actions {
            match execute(action, job, &self.deps, me).await {
                Ok(()) => {
                    self.counters.actions_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters.actions_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rule = %self.rule, action = action.kind(), %error, "rule action failed");
                    let Some(on_error) = &self.error_action else {
                        continue;
                    };
                    let report = Job {
                        row: serde_json::json!({
                            "rule": &*self.rule,
                            "action": action.kind(),
                            "error": error,
                            "row": job.row,
                        })
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                        ..job.clone()
                    };
                    if let Err(e) = execute(on_error, &report, &self.deps, me).await {
                        tracing::warn!(rule = %self.rule, action = on_error.kind(), error = %e, "rule error action failed");
                    }
                }
            }
        }
    }
}

async fn execute(action: &Action, job: &Job, deps: &Deps, me: &Arc<str>) -> Result<(), String> {
    match action {
        Action::Republish { topic, qos, retain } => {
            let topic = render(topic, job)?;
            let topic =
                TopicName::new(topic.as_str()).map_err(|e| format!("topic {topic:?}: {e}"))?;
            let payload = serde_json::to_vec(&job.row).map_err(|e| e.to_string())?;
            let outcome = deps
                .router
                .publish(Message {
                    topic,
                    payload: Bytes::from(payload),
                    qos: if *qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    },
                    retain: *retain,
                    properties: Properties {
                        payload_format_indicator: Some(1),
                        content_type: Some("application/json".to_owned()),
                        ..Properties::default()
                    },
                    publisher: Arc::clone(me),
                    received_at: deps.clock.now(),
                })
                .await;
            match outcome.verdict {
                Verdict::Accepted => Ok(()),
                Verdict::Rejected(code, why) => Err(format!("refused ({code:?}): {why}")),
            }
        }
        Action::Table { table } => {
            let point = to_point(table, job)?;
            deps.store
                .write(vec![point])
                .await
                .map_err(|e| e.to_string())
        }
        Action::Webhook { url, headers } => webhook(&deps.http, url, headers, &job.row).await,
    }
}

/// Fill `${name}` placeholders from the row, then `device_id` and `topic` of the message.
fn render(template: &str, job: &Job) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {template:?}"))?;
        let key = &after[..end];
        match job.row.get(key) {
            Some(Json::String(s)) => out.push_str(s),
            Some(Json::Null) => {}
            Some(v) => out.push_str(&v.to_string()),
            None => match key {
                "device_id" => out.push_str(job.device_id.as_deref().unwrap_or_default()),
                "topic" => out.push_str(job.topic.as_deref().unwrap_or_default()),
                _ => return Err(format!("${{{key}}}: no such column in the row")),
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn to_point(table: &str, job: &Job) -> Result<Point, String> {
    let measurement = Measurement::new(table).map_err(|e| e.to_string())?;
    let mut tags = BTreeMap::new();
    let mut fields = BTreeMap::new();
    for (k, v) in &job.row {
        let value = match v {
            Json::String(s) => {
                tags.insert(k.clone(), s.clone());
                continue;
            }
            Json::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Value::F64(f),
                _ => continue,
            },
            Json::Bool(b) => Value::Bool(*b),
            Json::Null | Json::Array(_) | Json::Object(_) => continue,
        };
        check_field_name(k).map_err(|e| e.to_string())?;
        fields.insert(k.clone(), value);
    }
    if fields.is_empty() {
        return Err("the row has no number or boolean column to store".to_owned());
    }
    if let Some(d) = &job.device_id
        && !tags.contains_key(DEVICE_ID_TAG)
    {
        tags.insert(DEVICE_ID_TAG.to_owned(), d.clone());
    }
    Ok(Point {
        measurement,
        time: job.time,
        tags,
        fields,
    })
}

async fn webhook(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    row: &serde_json::Map<String, Json>,
) -> Result<(), String> {
    let mut backoff = WEBHOOK_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let mut req = client.post(url).json(row);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                last = format!("{url} answered {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(last);
                }
            }
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(format!("{last} (after {WEBHOOK_ATTEMPTS} attempts)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ferrite_core::Timestamp;

    use super::*;

    fn job(row: Json) -> Job {
        Job {
            row: row.as_object().cloned().unwrap(),
            time: Timestamp::from_nanos(7),
            device_id: Some("d1".to_owned()),
            topic: Some("devices/d1/telemetry".to_owned()),
        }
    }

    #[test]
    fn templates_use_columns_then_message_facts() {
        let j = job(serde_json::json!({"device": "d9", "n": 3, "none": null}));
        assert_eq!(
            render("a/${device}/${n}/${device_id}${none}", &j).unwrap(),
            "a/d9/3/d1"
        );
        assert_eq!(render("${topic}/x", &j).unwrap(), "devices/d1/telemetry/x");
        assert!(render("a/${nope}", &j).is_err());
        assert!(render("a/${device", &j).is_err());
    }

    #[test]
    fn rows_become_points() {
        let p = to_point(
            "hot",
            &job(serde_json::json!({"device": "d9", "n": 3, "ok": true, "x": null})),
        )
        .unwrap();
        assert_eq!(p.time, Timestamp::from_nanos(7));
        assert_eq!(p.tags["device"], "d9");
        assert_eq!(p.tags[DEVICE_ID_TAG], "d1");
        assert_eq!(p.fields["n"], Value::F64(3.0));
        assert_eq!(p.fields["ok"], Value::Bool(true));
        assert!(!p.fields.contains_key("x"));
        assert!(to_point("hot", &job(serde_json::json!({"device": "d9"}))).is_err());
    }
}
