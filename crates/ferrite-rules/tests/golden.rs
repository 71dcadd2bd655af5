//! Golden data-file tests: each folder under `tests/golden/` holds a rule (`rule.sql`),
//! optional settings (`options.json`), input messages (`input.ndjson`) and the rows the rule
//! must produce (`expected.ndjson`), the input followed by an end-of-input flush.
//!
//! Input line: `{"topic", "payload", "device"?, "client"?, "received" (s), "event"? (s),
//! "tags"?, "id"?, "partition"?}`. Output line: `{"row", "window"?: [start_s, end_s],
//! "update"?: true, "superseded"?: [[s, e], ...]}`. Times are seconds for readability.
//! Run with `BLESS=1` to rewrite the expected files (then review the diff).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrite_core::{DeviceId, Timestamp, TopicName};
use ferrite_rules::lang::{Message, Output, Rule, RuleOptions};
use ferrite_rules::window::{WatermarkConfig, Window};
use serde_json::{Value, json};

fn secs_to_ts(v: &Value) -> Option<Timestamp> {
    v.as_f64()
        .map(|s| Timestamp::from_nanos((s * 1e9).round() as i64))
}

fn ts_to_secs(t: Timestamp) -> Value {
    let s = t.as_nanos() as f64 / 1e9;
    if s.fract() == 0.0 && s.abs() < 1e15 {
        json!(s as i64)
    } else {
        json!(s)
    }
}

fn window_json(w: &Window) -> Value {
    json!([ts_to_secs(w.start), ts_to_secs(w.end)])
}

fn options(dir: &Path) -> RuleOptions {
    let mut o = RuleOptions::default();
    let Ok(text) = std::fs::read_to_string(dir.join("options.json")) else {
        return o;
    };
    let v: Value = serde_json::from_str(&text).expect("options.json is JSON");
    let dur = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(|s| humantime::parse_duration(s).expect("duration"))
    };
    o.watermark = WatermarkConfig {
        out_of_orderness: dur("out_of_orderness").unwrap_or(o.watermark.out_of_orderness),
        idle_timeout: if v.get("idle_timeout").is_some_and(Value::is_null) {
            None
        } else {
            dur("idle_timeout").or(o.watermark.idle_timeout)
        },
    };
    o.allowed_lateness = dur("allowed_lateness").unwrap_or(Duration::ZERO);
    o
}

fn message(line: &Value) -> Message {
    let topic = TopicName::new(line["topic"].as_str().expect("topic")).expect("valid topic");
    let received = secs_to_ts(&line["received"]).expect("received");
    let mut m = Message::new(topic, line["payload"].clone(), received);
    m.event_time = secs_to_ts(&line["event"]);
    if let Some(d) = line["device"].as_str() {
        m.device_id = Some(DeviceId::new(d).expect("valid device id"));
        m.client_id = d.to_owned();
    }
    if let Some(c) = line["client"].as_str() {
        m.client_id = c.to_owned();
    }
    if let Some(tags) = line["tags"].as_object() {
        let map: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        m.tags = Arc::new(map);
    }
    m.message_id = line["id"].as_str().map(str::to_owned);
    m.partition = line["partition"].as_u64().unwrap_or(0) as u32;
    m
}

fn output_json(o: &Output) -> Value {
    let mut v = json!({ "row": Value::Object(o.row.clone()) });
    if let Some(w) = &o.window {
        v["window"] = window_json(w);
    }
    if o.is_update {
        v["update"] = json!(true);
    }
    if !o.superseded.is_empty() {
        v["superseded"] = Value::Array(o.superseded.iter().map(window_json).collect());
    }
    v
}

fn run_case(dir: &Path) -> Result<(), String> {
    let sql = std::fs::read_to_string(dir.join("rule.sql")).map_err(|e| e.to_string())?;
    let mut rule = Rule::new(&sql, options(dir)).map_err(|e| format!("rule: {e}"))?;
    let input = std::fs::read_to_string(dir.join("input.ndjson")).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("input {line}: {e}"))?;
        rule.process(&message(&v), &mut out);
    }
    rule.flush(&mut out);
    let got: Vec<Value> = out.iter().map(output_json).collect();
    let expected_path = dir.join("expected.ndjson");
    if std::env::var_os("BLESS").is_some() {
        let text: String = got.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(&expected_path, text).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected: Vec<Value> = std::fs::read_to_string(&expected_path)
        .map_err(|e| e.to_string())?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("expected {l}: {e}")))
        .collect::<Result<_, _>>()?;
    if got != expected {
        let show = |xs: &[Value]| xs.iter().map(|v| format!("  {v}\n")).collect::<String>();
        return Err(format!(
            "got:\n{}expected:\n{}",
            show(&got),
            show(&expected)
        ));
    }
    Ok(())
}

#[test]
fn golden_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/golden exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "golden cases missing");
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| run_case(d).err().map(|e| format!("{}: {e}", d.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
