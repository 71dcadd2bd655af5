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
//! - `raise_alarm` / `clear_alarm`: the alarm store ([`crate::alarms`]) raises or clears the
//!   alarm of (rule, device, type) — type, message and device rendered like topics (device
//!   default `${device_id}`) — and the action waits until the lifecycle events are routed, so
//!   a later action's effects never overtake them. A rate-limited raise and a clear with
//!   nothing to clear are not failures (they are counted in the rule's alarm stats).
//! - `command`: `{id, name, payload, rule, issued_at}` published at the action's QoS on
//!   `devices/{device}/commands/{name}` through the router (the device contract of the
//!   design); `payload` strings are rendered, and a string that is exactly `${column}` takes
//!   the column's JSON value. A device the registry knows as disabled, or a command nothing
//!   is subscribed to receive (the device is offline and has no persistent session), is a
//!   failure.
//!
//! A failed action is counted and logged, and if the rule has an `error_action` it runs with
//! the row `{"rule", "action", "error", "row"}` (its own failure is only logged).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferrite_api::rules::Action;
use ferrite_core::decode::check_field_name;
use ferrite_core::{DEVICE_ID_TAG, DeviceId, Measurement, Point, TopicName, Value};
use ferrite_mqtt::{Message, Verdict};
use ferrite_mqtt_codec::{Properties, QoS};
use ferrite_rules::alarm::Raise;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Counters, Deps, Job};
use crate::rules::valid_alarm_type;

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
    pub(crate) async fn run_all(&self, job: &Job, me: &Arc<str>) {
        for action in &self.actions {
            match execute(action, job, &self.deps, &self.rule, me).await {
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
                    if let Err(e) = execute(on_error, &report, &self.deps, &self.rule, me).await {
                        tracing::warn!(rule = %self.rule, action = on_error.kind(), error = %e, "rule error action failed");
                    }
                }
            }
        }
    }
}

async fn execute(
    action: &Action,
    job: &Job,
    deps: &Deps,
    rule: &str,
    me: &Arc<str>,
) -> Result<(), String> {
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
        Action::RaiseAlarm {
            alarm,
            severity,
            message,
            device,
        } => {
            let raise = Raise {
                rule: rule.to_owned(),
                device: device_of(device.as_deref(), job)?,
                alarm_type: alarm_type(alarm, job)?,
                severity: *severity,
                message: message.as_deref().map(|m| render(m, job)).transpose()?,
                values: job.row.clone(),
                at: job.time,
            };
            let alarms = deps.alarms.clone();
            let done = tokio::task::spawn_blocking(move || alarms.raise(raise))
                .await
                .map_err(|e| format!("alarm task failed: {e}"))??;
            if let Some(done) = done {
                let _ = done.await;
            }
            Ok(())
        }
        Action::ClearAlarm {
            alarm,
            rule: of,
            device,
        } => {
            let device = device_of(device.as_deref(), job)?;
            let alarm_type = alarm_type(alarm, job)?;
            let of = of.as_deref().unwrap_or(rule).to_owned();
            let (alarms, by) = (deps.alarms.clone(), rule.to_owned());
            let done = tokio::task::spawn_blocking(move || {
                alarms.clear_by_rule((&of, &device, &alarm_type), &by)
            })
            .await
            .map_err(|e| format!("alarm task failed: {e}"))??;
            if let Some(done) = done {
                let _ = done.await;
            }
            Ok(())
        }
        Action::Command {
            name,
            payload,
            device,
            qos,
        } => {
            command(
                name,
                payload.as_ref(),
                device.as_deref(),
                *qos,
                job,
                deps,
                rule,
                me,
            )
            .await
        }
    }
}

/// The device an alarm or command is about: the rendered template, else `${device_id}`.
fn device_of(template: Option<&str>, job: &Job) -> Result<String, String> {
    let device = render(template.unwrap_or("${device_id}"), job)?;
    if device.is_empty() {
        return Err(
            "no device: the message has none and the row no device_id; set the action's device"
                .to_owned(),
        );
    }
    DeviceId::new(device.as_str()).map_err(|e| format!("device {device:?}: {e}"))?;
    Ok(device)
}

fn alarm_type(template: &str, job: &Job) -> Result<String, String> {
    let t = render(template, job)?;
    if !valid_alarm_type(&t) {
        return Err(format!(
            "alarm type {t:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(t)
}

/// Commands issued by this process, for unique ids.
static COMMANDS: AtomicU64 = AtomicU64::new(0);

#[allow(clippy::too_many_arguments)] // the action's fields and what running it needs
async fn command(
    name: &str,
    payload: Option<&Json>,
    device: Option<&str>,
    qos: u8,
    job: &Job,
    deps: &Deps,
    rule: &str,
    me: &Arc<str>,
) -> Result<(), String> {
    let device = device_of(device, job)?;
    let name = render(name, job)?;
    if name.is_empty() || name.contains(['/', '+', '#']) {
        return Err(format!(
            "command name {name:?} must be one non-empty topic level"
        ));
    }
    let id = DeviceId::new(device.as_str()).map_err(|e| e.to_string())?;
    let fleet = deps.fleet.clone();
    let registered = tokio::task::spawn_blocking(move || fleet.get_device(&id))
        .await
        .map_err(|e| format!("registry task failed: {e}"))?
        .map_err(|e| format!("registry: {e}"))?;
    if registered.is_some_and(|d| !d.enabled) {
        return Err(format!("device {device} is disabled"));
    }
    let topic = format!("devices/{device}/commands/{name}");
    let topic = TopicName::new(topic.as_str()).map_err(|e| format!("topic {topic:?}: {e}"))?;
    let now = deps.clock.now();
    let seq = COMMANDS.fetch_add(1, Ordering::Relaxed);
    let command_id = format!("{:x}-{seq:x}", now.as_nanos());
    let body = serde_json::json!({
        "id": command_id,
        "name": name,
        "payload": payload.map(|p| render_json(p, job)).transpose()?.unwrap_or(Json::Null),
        "rule": rule,
        "issued_at": now.to_string(),
    });
    let outcome = deps
        .router
        .publish(Message {
            topic,
            payload: Bytes::from(body.to_string()),
            qos: if qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".to_owned()),
                ..Properties::default()
            },
            publisher: Arc::clone(me),
            received_at: now,
        })
        .await;
    match outcome.verdict {
        Verdict::Rejected(code, why) => Err(format!("command refused ({code:?}): {why}")),
        Verdict::Accepted if outcome.matched == 0 => Err(format!(
            "command {name} ({command_id}) to {device}: nothing subscribed to receive it \
             (the device is offline)"
        )),
        Verdict::Accepted => Ok(()),
    }
}

/// Render every string of `template`; a string that is exactly `${column}` of an existing
/// column takes that column's JSON value.
fn render_json(template: &Json, job: &Job) -> Result<Json, String> {
    Ok(match template {
        Json::String(s) => {
            let whole = s
                .strip_prefix("${")
                .and_then(|r| r.strip_suffix('}'))
                .filter(|k| !k.contains(['{', '}', '$']));
            match whole.and_then(|k| job.row.get(k)) {
                Some(v) => v.clone(),
                None => Json::String(render(s, job)?),
            }
        }
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| render_json(v, job))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, job)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
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
    fn command_payloads_keep_column_types() {
        let j = job(serde_json::json!({"temp": 91.5, "device": "d9"}));
        let p = render_json(
            &serde_json::json!({"reading": "${temp}", "note": "hot ${device}", "n": [1, "${device}"]}),
            &j,
        )
        .unwrap();
        assert_eq!(
            p,
            serde_json::json!({"reading": 91.5, "note": "hot d9", "n": [1, "d9"]})
        );
        assert_eq!(device_of(None, &j).unwrap(), "d1");
        assert_eq!(device_of(Some("${device}"), &j).unwrap(), "d9");
        assert!(device_of(Some("a/b"), &j).is_err());
        assert!(alarm_type("x y", &j).is_err());
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
