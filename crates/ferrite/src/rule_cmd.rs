//! `ferrite rule …`: the rules of a running Ferrite over its HTTP API, and `ferrite rule test`,
//! which runs a rule offline with the rules library over recorded messages.
//!
//! `rule test` reads NDJSON lines `{"topic": "...", "payload": {...}, "client_id"?: "...",
//! "ts"?: ...}` and prints one JSON line per message — `{"line", "topic", "emitted": [...]}`,
//! each emitted item `{"row", "window"?, "update"?}` — then `{"flush": [...], "stats": {...}}`
//! with the windows still open at the end of the input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use ferrite_core::decode::parse_ts;
use ferrite_core::{Clock, DeviceId, SystemClock, Timestamp, TopicName};
use ferrite_rules::agg::DedupPolicy;
use ferrite_rules::lang::{Message, Output, Rule, RuleOptions};
use ferrite_rules::window::WatermarkConfig;
use serde_json::{Value, json};

use crate::fleet_cmd::{ApiArgs, call, finish, pretty, read_file};

#[derive(Subcommand)]
pub(crate) enum RuleCommand {
    /// Create a rule from flags or from a JSON definition file (with --replace: update the
    /// rule of that name to this whole definition; it applies at once, window state of a
    /// changed rule starts empty).
    Create {
        /// The rule's name (with --file: overrides the file's).
        name: Option<String>,
        /// The rule SQL.
        #[arg(long, required_unless_present = "file")]
        sql: Option<String>,
        /// An action as JSON, e.g. '{"type":"republish","topic":"alerts/${device_id}"}'
        /// (repeatable, run in order).
        #[arg(long = "action", value_name = "JSON")]
        actions: Vec<String>,
        /// Where failed actions report, as JSON like --action.
        #[arg(long, value_name = "JSON")]
        error_action: Option<String>,
        /// Windowed rules: lateness tolerated before a window fires, e.g. `5s`.
        #[arg(long, value_name = "DURATION")]
        out_of_orderness: Option<String>,
        /// Windowed rules: how long a fired window still takes late readings.
        #[arg(long, value_name = "DURATION")]
        allowed_lateness: Option<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// A whole definition as JSON (`-` for standard input).
        #[arg(long, conflicts_with_all = ["sql", "actions", "error_action"])]
        file: Option<PathBuf>,
        /// Replace the existing rule of that name instead of creating one.
        #[arg(long)]
        replace: bool,
    },
    /// List rules with their counters.
    List,
    /// Show one rule and its counters.
    Show {
        /// Rule name.
        name: String,
    },
    /// Delete a rule (it stops at once).
    Rm {
        /// Rule name.
        name: String,
    },
    /// Enable a rule.
    Enable {
        /// Rule name.
        name: String,
    },
    /// Disable a rule (it stops at once; open windows are discarded).
    Disable {
        /// Rule name.
        name: String,
    },
    /// Run a stored rule, with fresh state, over the telemetry stored between two times, and
    /// print what it emits (one JSON line per row, then the counts); the live rule is not
    /// touched. With --actions the rows also go through the rule's actions (backfill).
    Replay {
        /// Rule name.
        name: String,
        /// Start, inclusive: RFC 3339 (`2026-12-01T00:00:00Z`) or integer nanoseconds.
        #[arg(long)]
        from: String,
        /// End, exclusive.
        #[arg(long)]
        to: String,
        /// Run the rule's actions on every emitted row.
        #[arg(long)]
        actions: bool,
        /// Most rows to print (all are counted); at most 100,000.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Run a rule offline (no server) over NDJSON messages and print what it emits for each.
    Test {
        /// The rule SQL.
        #[arg(long)]
        sql: String,
        /// NDJSON messages: {"topic", "payload", "client_id"?, "ts"?} (`-` for standard input).
        #[arg(long)]
        input: PathBuf,
        /// Windowed rules: lateness tolerated before a window fires.
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        out_of_orderness: humantime::Duration,
        /// Windowed rules: how long a fired window still takes late readings.
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        allowed_lateness: humantime::Duration,
        /// Windowed rules: the payload field holding message ids (duplicates are dropped).
        #[arg(long, value_name = "FIELD")]
        message_id: Option<String>,
        /// How ids are remembered, as JSON like a definition's `dedup`, e.g.
        /// '{"method":"bloom","false_positive_rate":0.001}' (default: exact).
        #[arg(long, value_name = "JSON", requires = "message_id")]
        dedup: Option<String>,
        /// Stateless rules with `gap()`: after the last message, report the series silent at
        /// this time too (RFC 3339 or epoch milliseconds). Silences between messages are
        /// reported at each message's time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
    },
}

pub(crate) async fn rule(api: ApiArgs, command: RuleCommand) -> ExitCode {
    finish(rule_inner(api, command).await)
}

async fn rule_inner(api: ApiArgs, command: RuleCommand) -> Result<String, ExitCode> {
    use reqwest::Method;
    match command {
        RuleCommand::Create {
            name,
            sql,
            actions,
            error_action,
            out_of_orderness,
            allowed_lateness,
            description,
            disabled,
            file,
            replace,
        } => {
            let mut body = match file {
                Some(f) => {
                    let text = read_file(&f)?;
                    serde_json::from_str::<Value>(&text).map_err(|e| {
                        eprintln!("error: {}: not JSON: {e}", f.display());
                        ExitCode::from(2)
                    })?
                }
                None => {
                    let actions = actions
                        .iter()
                        .map(|a| parse_json("--action", a))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut body = json!({ "sql": sql, "actions": actions });
                    if let Some(e) = error_action {
                        body["error_action"] = parse_json("--error-action", &e)?;
                    }
                    body
                }
            };
            let Some(obj) = body.as_object_mut() else {
                eprintln!("error: a rule definition is a JSON object");
                return Err(ExitCode::from(2));
            };
            for (key, value) in [
                ("name", name),
                ("out_of_orderness", out_of_orderness),
                ("allowed_lateness", allowed_lateness),
                ("description", description),
            ] {
                if let Some(v) = value {
                    obj.insert(key.to_owned(), Value::String(v));
                }
            }
            if disabled {
                obj.insert("enabled".to_owned(), Value::Bool(false));
            }
            if !obj.contains_key("name") {
                eprintln!("error: the rule needs a name (argument NAME or \"name\" in the file)");
                return Err(ExitCode::from(2));
            }
            if replace {
                let name = obj["name"].as_str().unwrap_or_default().to_owned();
                call(&api, Method::PUT, &path(&name, ""), Some(body))
                    .await
                    .map(|v| format!("rule {} replaced\n", v["name"].as_str().unwrap_or("?")))
            } else {
                call(&api, Method::POST, "/api/v1/rules", Some(body))
                    .await
                    .map(|v| format!("rule {} created\n", v["name"].as_str().unwrap_or("?")))
            }
        }
        RuleCommand::List => {
            let v = call(&api, Method::GET, "/api/v1/rules", None).await?;
            let mut text = String::new();
            for r in v["items"].as_array().into_iter().flatten() {
                let s = &r["stats"];
                text.push_str(&format!(
                    "{}\t{}\tmatched={} rows={} ok={} failed={} dropped={}\t{}\n",
                    r["name"].as_str().unwrap_or("?"),
                    if r["running"] == true {
                        "running"
                    } else if r["enabled"] == true {
                        "error"
                    } else {
                        "disabled"
                    },
                    s["matched"],
                    s["rows"],
                    s["actions_ok"],
                    s["actions_failed"],
                    s["actions_dropped"],
                    r["sql"].as_str().unwrap_or_default(),
                ));
            }
            Ok(text)
        }
        RuleCommand::Show { name } => call(&api, Method::GET, &path(&name, ""), None)
            .await
            .map(|v| pretty(&v)),
        RuleCommand::Rm { name } => call(&api, Method::DELETE, &path(&name, ""), None)
            .await
            .map(|_| format!("rule {name} deleted\n")),
        RuleCommand::Enable { name } => call(&api, Method::POST, &path(&name, "/enable"), None)
            .await
            .map(|_| format!("rule {name} enabled\n")),
        RuleCommand::Disable { name } => call(&api, Method::POST, &path(&name, "/disable"), None)
            .await
            .map(|_| format!("rule {name} disabled\n")),
        RuleCommand::Replay {
            name,
            from,
            to,
            actions,
            limit,
        } => {
            let body = json!({"from": from, "to": to, "actions": actions, "limit": limit});
            let mut v = call(&api, Method::POST, &path(&name, "/replay"), Some(body)).await?;
            let mut text = String::new();
            if let Some(rows) = v.as_object_mut().and_then(|o| o.remove("rows")) {
                for r in rows.as_array().into_iter().flatten() {
                    text.push_str(&r.to_string());
                    text.push('\n');
                }
            }
            text.push_str(&json!({ "stats": v }).to_string());
            text.push('\n');
            Ok(text)
        }
        RuleCommand::Test {
            sql,
            input,
            out_of_orderness,
            allowed_lateness,
            message_id,
            dedup,
            until,
        } => {
            let until = match until {
                Some(t) => {
                    let v = t
                        .parse::<i64>()
                        .map_or_else(|_| Value::String(t.clone()), Value::from);
                    Some(parse_ts(&v).map_err(|e| {
                        eprintln!("error: --until {t:?}: {e}");
                        ExitCode::from(2)
                    })?)
                }
                None => None,
            };
            let dedup = match dedup {
                Some(d) => serde_json::from_value(parse_json("--dedup", &d)?).map_err(|e| {
                    eprintln!("error: --dedup: {e}");
                    ExitCode::from(2)
                })?,
                None => DedupPolicy::default(),
            };
            let text = read_file(&input)?;
            test(
                &sql,
                &text,
                (out_of_orderness.into(), allowed_lateness.into()),
                message_id.as_deref(),
                dedup,
                until,
            )
        }
    }
}

fn path(name: &str, suffix: &str) -> String {
    format!("/api/v1/rules/{name}{suffix}")
}

fn parse_json(flag: &str, text: &str) -> Result<Value, ExitCode> {
    serde_json::from_str(text).map_err(|e| {
        eprintln!("error: {flag} {text}: not JSON: {e}");
        ExitCode::from(2)
    })
}

/// Run `sql` over the NDJSON `input`; the trace as JSON lines.
/// `lateness` is (out-of-orderness, allowed lateness).
fn test(
    sql: &str,
    input: &str,
    (out_of_orderness, allowed_lateness): (Duration, Duration),
    message_id: Option<&str>,
    dedup: DedupPolicy,
    until: Option<Timestamp>,
) -> Result<String, ExitCode> {
    let options = RuleOptions {
        watermark: WatermarkConfig {
            out_of_orderness,
            ..WatermarkConfig::default()
        },
        allowed_lateness,
        dedup,
        ..RuleOptions::default()
    };
    let mut rule = Rule::new(sql, options).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let mut trace = String::new();
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut msg = message(line).map_err(|e| {
            eprintln!("error: input line {n}: {e}");
            ExitCode::from(2)
        })?;
        if let Some(field) = message_id {
            msg.set_id_from(field);
        }
        // Processing time is the message's time: the series silent by then are reported
        // first, as the server's evaluator would between messages.
        if !rule.is_windowed() {
            silences(&mut rule, msg.received_at, &mut trace);
        }
        rule.process(&msg, &mut out);
        trace.push_str(
            &json!({
                "line": n,
                "topic": msg.topic.as_str(),
                "emitted": out.drain(..).map(emitted).collect::<Vec<_>>(),
            })
            .to_string(),
        );
        trace.push('\n');
    }
    if let Some(t) = until
        && !rule.is_windowed()
    {
        silences(&mut rule, t, &mut trace);
    }
    rule.flush(&mut out);
    let s = rule.stats();
    trace.push_str(
        &json!({
            "flush": out.drain(..).map(emitted).collect::<Vec<_>>(),
            "stats": {
                "messages": s.messages,
                "matched": s.matched,
                "rows": s.rows,
                "having_rejected": s.having_rejected,
                "late_events": s.late_events,
                "duplicates": s.duplicates,
                "dedup_unchecked": s.dedup_unchecked,
            },
        })
        .to_string(),
    );
    trace.push('\n');
    Ok(trace)
}

/// Trace the rows `gap()` silences make at processing time `now`, if any.
fn silences(rule: &mut Rule, now: Timestamp, trace: &mut String) {
    let mut out = Vec::new();
    rule.advance(now, &mut out);
    if !out.is_empty() {
        trace.push_str(
            &json!({
                "at": now.to_string(),
                "silences": out.into_iter().map(emitted).collect::<Vec<_>>(),
            })
            .to_string(),
        );
        trace.push('\n');
    }
}

fn emitted(o: Output) -> Value {
    let mut v = json!({ "row": o.row });
    if let Some(m) = &o.silence {
        v["silent"] = Value::String(m.topic.as_str().to_owned());
    }
    if let Some(w) = o.window {
        v["window"] = json!({"start": w.start.to_string(), "end": w.end.to_string()});
    }
    if o.is_update {
        v["update"] = Value::Bool(true);
    }
    v
}

/// One input line as the server would see the message: device from `devices/{id}/…` or the
/// client id; event time from the line's `ts`, else the payload's `ts`/`time`; processing
/// time = event time when known (so runs are repeatable), else now.
fn message(line: &str) -> Result<Message, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let topic = v["topic"]
        .as_str()
        .ok_or("\"topic\" (a string) is missing")?;
    let topic = TopicName::new(topic).map_err(|e| format!("topic {topic:?}: {e}"))?;
    let payload = v.get("payload").cloned().unwrap_or(Value::Null);
    let client_id = v["client_id"].as_str().unwrap_or_default().to_owned();
    let mut levels = topic.levels();
    let device_id = match (levels.next(), levels.next()) {
        (Some("devices"), Some(id)) => DeviceId::new(id).ok(),
        _ => None,
    }
    .or_else(|| DeviceId::new(client_id.as_str()).ok());
    let event_time = match v.get("ts") {
        Some(ts) => Some(parse_ts(ts).map_err(|e| e.to_string())?),
        None => payload
            .as_object()
            .and_then(|o| o.get("ts").or_else(|| o.get("time")))
            .and_then(|t| parse_ts(t).ok()),
    };
    let received_at: Timestamp = event_time.unwrap_or_else(|| SystemClock.now());
    Ok(Message {
        client_id,
        device_id,
        event_time,
        ..Message::new(topic, payload, received_at)
    })
}
