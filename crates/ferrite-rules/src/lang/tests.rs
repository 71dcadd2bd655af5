//! Rule language tests: evaluation of each construct, and errors with their positions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrite_core::{DeviceId, Timestamp, TopicName};
use serde_json::json;

use super::*;
use crate::error::{Position, RulesError};
use crate::window::WatermarkConfig;

const SEC: i64 = 1_000_000_000;

fn msg(topic: &str, payload: serde_json::Value, t_sec: i64) -> Message {
    let mut m = Message::new(
        TopicName::new(topic).expect("valid topic"),
        payload,
        Timestamp::from_nanos(t_sec * SEC),
    );
    if let Some(dev) = topic.split('/').nth(1) {
        m.device_id = DeviceId::new(dev).ok();
        m.client_id = format!("client-{dev}");
    }
    let mut tags = BTreeMap::new();
    tags.insert("site".to_owned(), "berlin".to_owned());
    m.tags = Arc::new(tags);
    m
}

fn run(rule: &mut Rule, m: &Message) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    rule.process(m, &mut out);
    out.into_iter()
        .map(|o| serde_json::Value::Object(o.row))
        .collect()
}

fn rule(sql: &str) -> Rule {
    match Rule::new(sql, RuleOptions::default()) {
        Ok(r) => r,
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn err(sql: &str) -> (Position, String) {
    match Rule::new(sql, RuleOptions::default()) {
        Ok(_) => panic!("expected an error for {sql}"),
        Err(e) => {
            let pos = e.position().unwrap_or_default();
            (pos, e.to_string())
        }
    }
}

#[test]
fn stateless_projection_and_filter() {
    let mut r = rule(
        "SELECT temp, topic(2) AS device, upper(tag('site')) AS site, device_id() AS id, \
         clientid() AS cid, timestamp() AS ts, now() AS now, temp * 9 / 5 + 32 AS fahrenheit \
         FROM 'devices/+/telemetry' WHERE temp > 30 AND device_id() <> 'd9'",
    );
    let mut m = msg("devices/d1/telemetry", json!({"temp": 35.5}), 100);
    m.event_time = Some(Timestamp::from_nanos(99 * SEC));
    assert_eq!(
        run(&mut r, &m),
        vec![json!({
            "temp": 35.5, "device": "d1", "site": "BERLIN", "id": "d1", "cid": "client-d1",
            "ts": 99 * SEC, "now": 100 * SEC, "fahrenheit": 95.9
        })]
    );
    assert!(run(&mut r, &msg("devices/d1/telemetry", json!({"temp": 20}), 1)).is_empty());
    assert!(run(&mut r, &msg("devices/d9/telemetry", json!({"temp": 40}), 1)).is_empty());
    assert!(run(&mut r, &msg("devices/d1/status", json!({"temp": 40}), 1)).is_empty());
    assert!(
        run(
            &mut r,
            &msg("devices/d1/telemetry", json!({"temp": "hot"}), 1)
        )
        .is_empty()
    );
    assert_eq!(r.stats().messages, 5);
    assert_eq!(r.stats().rows, 1);
}

#[test]
fn json_paths_in_every_spelling() {
    let mut r = rule(
        "SELECT a.b, payload.a.c AS c, payload['arr'][1] AS second, payload['x y'] AS spaced, \
         missing.deep AS missing, payload AS whole FROM '#'",
    );
    let p = json!({"a": {"b": 1, "c": "z"}, "arr": [10, 20], "x y": true});
    assert_eq!(
        run(&mut r, &msg("t", p.clone(), 0)),
        vec![json!({"b": 1, "c": "z", "second": 20, "spaced": true, "missing": null, "whole": p})]
    );
}

#[test]
fn wildcard_merges_payload_fields() {
    let mut r = rule("SELECT *, topic() AS topic FROM 'a/#'");
    assert_eq!(
        run(&mut r, &msg("a/b", json!({"x": 1, "y": [2]}), 0)),
        vec![json!({"x": 1, "y": [2], "topic": "a/b"})]
    );
}

#[test]
fn scalar_functions_and_operators() {
    let mut r = rule(
        "SELECT abs(-3) AS a, round(2.567, 2) AS r, floor(2.7) AS f, ceil(2.1) AS c, \
         sqrt(16) AS s, pow(2, 10) AS p, ln(1) AS l, log10(1000) AS lg, \
         lower('AbC') AS lo, concat('a', 1, NULL, 'b') AS cc, 'x' || name AS cat, \
         substr('hello', 2, 3) AS sub, length(name) AS len, trim('  t ') AS tr, \
         regex_match(name, '^pump-[0-9]+$') AS rm, regex_replace(name, '[0-9]', '#') AS rr, \
         CASE WHEN v > 10 THEN 'high' WHEN v > 5 THEN 'mid' ELSE 'low' END AS level, \
         CASE kind WHEN 1 THEN 'one' ELSE 'other' END AS k, \
         CAST(sv AS INT) AS ci, CAST(v AS STRING) AS cs, CAST('true' AS BOOLEAN) AS cb, \
         v IN (1, 7, 9) AS isin, name LIKE 'pump-%' AS lk, name NOT LIKE 'p_mp%' AS nlk, \
         nothing IS NULL AS isnull, v IS NOT NULL AS notnull, v % 4 AS m, -v AS neg, \
         NOT (v > 1) AS nt, coalesce(nothing, v) AS co, 7 / 2 AS idiv, 7.0 / 2 AS fdiv, v / 0 AS dz \
         FROM '#'",
    );
    let out = run(
        &mut r,
        &msg(
            "t",
            json!({"v": 7, "name": "pump-42", "kind": 1, "sv": "12"}),
            0,
        ),
    );
    assert_eq!(
        out,
        vec![json!({
            "a": 3, "r": 2.57, "f": 2.0, "c": 3.0, "s": 4.0, "p": 1024.0, "l": 0.0, "lg": 3.0,
            "lo": "abc", "cc": "a1b", "cat": "xpump-42", "sub": "ell", "len": 7, "tr": "t",
            "rm": true, "rr": "pump-##", "level": "mid", "k": "one", "ci": 12, "cs": "7",
            "cb": true, "isin": true, "lk": true, "nlk": false, "isnull": true, "notnull": true,
            "m": 3, "neg": -7, "nt": false, "co": 7, "idiv": 3, "fdiv": 3.5, "dz": null
        })]
    );
}

#[test]
fn tumbling_aggregation_with_having_and_window_bounds() {
    let mut r = rule(
        "SELECT device_id() AS device, count(*) AS n, avg(temp) AS mean, max(temp) AS hi, \
         window_start() AS ws, window_end() AS we \
         FROM 'devices/+/telemetry' WHERE temp IS NOT NULL \
         GROUP BY device_id(), TUMBLE('10s') HAVING count(*) >= 2",
    );
    let mut out = Vec::new();
    for (dev, t, temp) in [
        ("d1", 1, 10.0),
        ("d2", 2, 5.0),
        ("d1", 5, 20.0),
        ("d1", 12, 1.0),
    ] {
        let mut m = msg(
            &format!("devices/{dev}/telemetry"),
            json!({ "temp": temp }),
            t,
        );
        m.received_at = Timestamp::from_nanos(t * SEC);
        r.process(&m, &mut out);
    }
    // Default out-of-orderness 5 s: W = 12 − 5 = 7 < 10, nothing fired yet.
    assert!(out.is_empty());
    let m = msg("devices/d2/telemetry", json!({"temp": 1}), 16);
    r.process(&m, &mut out);
    let rows: Vec<serde_json::Value> = out
        .iter()
        .map(|o| serde_json::Value::Object(o.row.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![json!({"device": "d1", "n": 2, "mean": 15.0, "hi": 20.0, "ws": 0, "we": 10 * SEC})]
    );
    assert_eq!(r.stats().having_rejected, 1, "d2 had one reading");
}

#[test]
fn late_updates_and_duplicates_through_a_rule() {
    let options = RuleOptions {
        watermark: WatermarkConfig {
            out_of_orderness: Duration::ZERO,
            idle_timeout: None,
        },
        allowed_lateness: Duration::from_secs(30),
        ..RuleOptions::default()
    };
    let mut r = Rule::new(
        "SELECT count(*) AS n, sum(v) AS total FROM 'x/#' GROUP BY TUMBLE(INTERVAL '1' MINUTE)",
        options,
    )
    .expect("valid");
    let mut out = Vec::new();
    let send = |r: &mut Rule, t: i64, v: i64, id: &str, out: &mut Vec<Output>| {
        let mut m = msg("x/y", json!({ "v": v }), t);
        m.message_id = Some(id.to_owned());
        r.process(&m, out);
    };
    send(&mut r, 10, 1, "a", &mut out);
    send(&mut r, 10, 1, "a", &mut out); // duplicate
    send(&mut r, 70, 2, "b", &mut out); // fires [0, 60)
    send(&mut r, 50, 4, "c", &mut out); // late, within lateness: update
    send(&mut r, 95, 8, "d", &mut out); // W = 95 ≥ 60 + 30: [0, 60) purged
    send(&mut r, 55, 16, "e", &mut out); // too late
    let got: Vec<(serde_json::Value, bool)> = out
        .iter()
        .map(|o| (serde_json::Value::Object(o.row.clone()), o.is_update))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!({"n": 1, "total": 1}), false),
            (json!({"n": 2, "total": 5}), true)
        ]
    );
    assert_eq!(r.stats().duplicates, 1);
    assert_eq!(r.stats().late_events, 1);
    assert_eq!(r.drain_late().len(), 1);
    let mut rest = Vec::new();
    r.flush(&mut rest);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].row["n"], json!(2));
}

#[test]
fn detector_functions_keep_state_per_device() {
    let mut r = rule("SELECT device_id() AS d, temp FROM 'devices/+/t' WHERE stuck(temp, 3)");
    let mut out = Vec::new();
    for (i, (dev, temp)) in [
        ("a", 1.0),
        ("b", 1.0),
        ("a", 1.0),
        ("b", 2.0),
        ("a", 1.0), // third identical for a
        ("b", 2.0),
        ("b", 2.0), // third identical for b
    ]
    .iter()
    .enumerate()
    {
        r.process(
            &msg(
                &format!("devices/{dev}/t"),
                json!({ "temp": temp }),
                i as i64,
            ),
            &mut out,
        );
    }
    let devs: Vec<&serde_json::Value> = out.iter().map(|o| &o.row["d"]).collect();
    assert_eq!(devs, vec![&json!("a"), &json!("b")]);

    let mut r = rule("SELECT zscore(v) AS z, out_of_range(v, 0, 100) AS oor FROM '#'");
    let mut last = serde_json::Value::Null;
    for i in 0..40 {
        let out = run(&mut r, &msg("s", json!({"v": 50 + (i % 3)}), i));
        last = out[0].clone();
    }
    assert!(last["z"].is_number(), "warm after 30 samples: {last}");
    assert_eq!(last["oor"], json!(false));
}

#[test]
fn errors_carry_positions() {
    let (pos, text) = err("SELECT temp FROM 'a/#' WHERE temp >");
    assert_eq!(pos.line, 1);
    assert!(text.starts_with("syntax error"), "{text}");

    let (pos, text) = err("SELECT foo(temp)\nFROM 'a/#'");
    assert_eq!((pos.line, pos.column), (1, 8));
    assert!(text.contains("unknown function foo"), "{text}");

    let (pos, text) = err("SELECT temp\nFROM 'a/#'\nWHERE 'abc' + 1 > 2");
    assert_eq!((pos.line, pos.column), (3, 7));
    assert!(text.contains("cannot apply +"), "{text}");

    let (pos, text) = err("SELECT regex_match(name, '([a-z')\nFROM 'a'");
    assert_eq!((pos.line, pos.column), (1, 26));
    assert!(text.contains("invalid regex"), "{text}");

    let (_, text) = err("SELECT count(*) FROM 'a'");
    assert!(text.contains("needs a window"), "{text}");

    let (pos, text) = err("SELECT temp, count(*) FROM 'a' GROUP BY TUMBLE('1m')");
    assert_eq!((pos.line, pos.column), (1, 8));
    assert!(text.contains("GROUP BY"), "{text}");

    let (_, text) = err("SELECT x FROM 'a/#/b'");
    assert!(text.contains("invalid topic filter"), "{text}");

    let (pos, text) = err("SELECT count(*) FROM 'a' GROUP BY HOP('1m', '2m')");
    assert_eq!((pos.line, pos.column), (1, 35));
    assert!(text.contains("slide"), "{text}");

    let (_, text) = err("SELECT count(*) FROM 'a' GROUP BY TUMBLE('soon')");
    assert!(text.contains("invalid duration"), "{text}");

    let (_, text) = err("SELECT x FROM 'a' HAVING x > 1");
    assert!(text.contains("HAVING needs a window"), "{text}");

    let (pos, text) = err("SELECT x FROM 'a' WHERE x + 1");
    assert!(text.contains("WHERE needs a boolean"), "{text}");
    assert_eq!(pos.column, 25);

    let (_, text) = err("SELECT upper(3) FROM 'a'");
    assert!(text.contains("needs a string"), "{text}");

    let (_, text) = err("SELECT x, x FROM 'a'");
    assert!(text.contains("duplicate output column"), "{text}");

    let (_, text) = err("SELECT x FROM 'a' JOIN 'b' ON true");
    assert!(text.contains("no joins"), "{text}");

    let (_, text) = err("SELECT stuck(x, 1) FROM 'a'");
    assert!(text.contains("at least 2"), "{text}");

    let (_, text) = err("SELECT approx_percentile(x, 1.5) FROM 'a' GROUP BY TUMBLE('1s')");
    assert!(text.contains("quantile"), "{text}");

    assert!(matches!(
        Rule::new("DELETE FROM t", RuleOptions::default()),
        Err(RulesError::Semantic { .. })
    ));
}

#[test]
fn every_aggregate_compiles_and_produces_a_value() {
    let mut r = rule(
        "SELECT count(v) AS c, sum(v) AS s, min(v) AS lo, max(v) AS hi, avg(v) AS mean, \
         stddev(v) AS sd, stddev_pop(v) AS sdp, first(v) AS f, last(v) AS l, \
         approx_distinct(v) AS nd, approx_percentile(v, 0.5) AS med, \
         heavy_hitters(v, 2) AS top, sample(v, 3) AS smp, count(*) + 1 AS c1 \
         FROM 'a' GROUP BY SESSION('10s')",
    );
    let mut out = Vec::new();
    for (i, v) in [3, 1, 3, 2, 3].iter().enumerate() {
        r.process(&msg("a", json!({ "v": v }), i as i64), &mut out);
    }
    r.flush(&mut out);
    assert_eq!(out.len(), 1);
    let row = &out[0].row;
    assert_eq!(row["c"], json!(5));
    assert_eq!(row["s"], json!(12));
    assert_eq!((row["lo"].clone(), row["hi"].clone()), (json!(1), json!(3)));
    assert_eq!(row["f"], json!(3));
    assert_eq!(row["l"], json!(3));
    assert_eq!(row["nd"], json!(3));
    assert!((row["med"].as_f64().unwrap_or(0.0) - 3.0).abs() < 0.05);
    assert_eq!(
        row["top"],
        json!([{"value": 3, "count": 3}, {"value": 1, "count": 1}])
    );
    assert_eq!(row["smp"].as_array().map(Vec::len), Some(3));
    assert_eq!(row["c1"], json!(6));
    assert!((row["mean"].as_f64().unwrap_or(0.0) - 2.4).abs() < 1e-9);
    assert_eq!(
        out[0]
            .window
            .map(|w| (w.start.as_nanos(), w.end.as_nanos())),
        Some((0, 14 * SEC))
    );
}

mod never_panics {
    //! Creation and evaluation are total: arbitrary rule text gives `Ok` or a positioned
    //! error, and arbitrary payloads evaluate without panicking.
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "SELECT device_id() AS d, count(*) AS n, avg(t) AS m, \
        approx_percentile(t, 0.9) AS p FROM 'devices/+/telemetry' WHERE t > 0 AND \
        regex_match(name, '^a') GROUP BY device_id(), HOP('10s', '5s') HAVING count(*) > 1";

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)),
            "[a-z0-9 ]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,3}|t|v|name|a|b", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,120}") {
            let _ = Rule::new(&s, RuleOptions::default());
        }

        #[test]
        fn mutated_rules_never_panic(cut in 0usize..400, insert in "[ ,()'*+a-z0-9.\\[\\]-]{0,6}") {
            let cut = cut.min(VALID.len());
            let cut = (0..=cut).rev().find(|i| VALID.is_char_boundary(*i)).unwrap_or(0);
            let text = format!("{}{}{}", &VALID[..cut], insert, &VALID[cut..]);
            if let Err(e) = Rule::new(&text, RuleOptions::default()) {
                prop_assert!(e.position().is_some());
            }
        }

        #[test]
        fn arbitrary_payloads_evaluate(payloads in prop::collection::vec(json_value(), 1..20)) {
            let mut stateless = rule(
                "SELECT *, a.b + 1 AS x, upper(name) AS u, CAST(v AS INT) AS i, t * 2 AS t2, \
                 payload['a'][0] AS first, zscore(t) AS z, stuck(v, 2) AS s, \
                 CASE WHEN t > 1 THEN 'y' END AS c, length(a) AS l, round(t, 3) AS r \
                 FROM '#' WHERE t IS NULL OR t <> 3 OR name LIKE '%a%'",
            );
            let mut windowed = rule(VALID);
            let mut out = Vec::new();
            for (i, p) in payloads.into_iter().enumerate() {
                let m = msg("devices/d1/telemetry", p, i as i64);
                stateless.process(&m, &mut out);
                windowed.process(&m, &mut out);
            }
            windowed.flush(&mut out);
        }
    }
}

#[test]
fn message_ids_come_from_a_payload_path_scoped_by_device() {
    let mut m = Message::new(
        TopicName::new("devices/d1/telemetry").expect("valid topic"),
        serde_json::json!({"meta": {"seq": 7}, "id": "x"}),
        Timestamp::from_nanos(0),
    );
    m.device_id = Some(DeviceId::new("d1").expect("valid id"));
    m.set_id_from("meta.seq");
    assert_eq!(m.message_id.as_deref(), Some("d1/7"));
    m.set_id_from("id");
    assert_eq!(m.message_id.as_deref(), Some("d1/x"));
    let mut none = m.clone();
    none.message_id = None;
    none.set_id_from("meta.missing");
    assert_eq!(none.message_id, None, "no field, no id");
}

/// A run cut in two by a checkpoint — the rest fed to a *new* rule restored from it —
/// emits exactly what one uninterrupted run emits, for every kind of window, every
/// aggregate and sketch, duplicate suppression and the detectors' per-device state.
#[test]
fn a_checkpoint_restores_windows_sketches_and_detectors_exactly() {
    let sqls = [
        "SELECT device_id() AS d, count(*) AS n, sum(v) AS s, avg(v) AS m, stddev(v) AS sd, \
         min(v) AS lo, max(v) AS hi, first(v) AS f, last(v) AS l, approx_distinct(k) AS u, \
         approx_percentile(v, 0.9) AS p90, heavy_hitters(k, 3) AS top, sample(v, 4) AS smp \
         FROM 'devices/+/t' GROUP BY device_id(), TUMBLE('10s')",
        "SELECT count(*) AS n, sum(v) AS s FROM 'devices/+/t' GROUP BY HOP('20s', '5s')",
        "SELECT device_id() AS d, count(*) AS n, window_start() AS ws FROM 'devices/+/t' \
         GROUP BY device_id(), SESSION('7s')",
        "SELECT device_id() AS d, v, zscore(v) AS z, stuck(v, 3) AS st, \
         rate_of_change(v, 50) AS fast, hst(v, v * v) AS h, seasonal(v, '1m', 6) AS sz, \
         flatline(v, '5s', 0.5) AS flat, gap('3s') AS g, out_of_range(v, -2, 18) AS oor \
         FROM 'devices/+/t'",
    ];
    // Three devices, gaps (so sessions close), out-of-order and repeated ids.
    let input: Vec<Message> = (0..300i64)
        .map(|i| {
            let t = i + if i % 17 == 0 { -3 } else { 0 } + if i > 150 { 20 } else { 0 };
            let dev = ["a", "b", "c"][(i % 3) as usize];
            let mut m = msg(
                &format!("devices/{dev}/t"),
                json!({"v": ((i * 37) % 23) as f64 - (i % 5) as f64, "k": format!("k{}", i % 7)}),
                t,
            );
            m.message_id = Some(format!("{dev}/{}", i - i % 4 + (i % 2)));
            m
        })
        .collect();
    let options = RuleOptions {
        watermark: WatermarkConfig {
            out_of_orderness: Duration::from_secs(4),
            ..WatermarkConfig::default()
        },
        allowed_lateness: Duration::from_secs(2),
        ..RuleOptions::default()
    };
    let emitted = |rule: &mut Rule, msgs: &[Message], out: &mut Vec<String>| {
        let mut o = Vec::new();
        for m in msgs {
            rule.process(m, &mut o);
        }
        out.extend(
            o.drain(..)
                .map(|r| format!("{:?} {:?} {}", r.row, r.window, r.is_update)),
        );
    };
    for sql in sqls {
        let mut whole = Rule::new(sql, options).expect("valid");
        let mut expected = Vec::new();
        emitted(&mut whole, &input, &mut expected);
        let mut o = Vec::new();
        whole.flush(&mut o);
        expected.extend(
            o.drain(..)
                .map(|r| format!("{:?} {:?} {}", r.row, r.window, r.is_update)),
        );

        for cut in [1, 100, 151, 299] {
            let mut first = Rule::new(sql, options).expect("valid");
            let mut got = Vec::new();
            emitted(&mut first, &input[..cut], &mut got);
            let bytes = first.checkpoint().expect("checkpoint");
            let mut second = Rule::new(sql, options).expect("valid");
            second.restore(&bytes).expect("restores");
            emitted(&mut second, &input[cut..], &mut got);
            second.flush(&mut o);
            got.extend(
                o.drain(..)
                    .map(|r| format!("{:?} {:?} {}", r.row, r.window, r.is_update)),
            );
            assert_eq!(got, expected, "{sql} cut at {cut}");
            assert_eq!(second.stats(), whole.stats(), "{sql} cut at {cut}");
        }
    }
    // A checkpoint of another definition, or damaged bytes, is refused and changes nothing.
    let mut a = Rule::new(sqls[1], options).expect("valid");
    let mut o = Vec::new();
    for m in &input[..50] {
        a.process(m, &mut o);
    }
    let bytes = a.checkpoint().expect("checkpoint");
    let mut other = Rule::new(sqls[0], options).expect("valid");
    assert!(other.restore(&bytes).is_err());
    let mut changed = Rule::new(sqls[1], RuleOptions::default()).expect("valid");
    assert!(changed.restore(&bytes).is_err(), "other options");
    assert!(changed.restore(&bytes[..bytes.len() / 2]).is_err());
    assert_eq!(changed.stats(), RuleStats::default());
}

#[test]
fn gap_reports_a_series_that_goes_silent_once_per_silence() {
    let mut r =
        rule("SELECT device_id() AS d, topic(3) AS kind FROM 'devices/+/+' WHERE gap('30s')");
    let mut out = Vec::new();
    for t in [0, 10] {
        assert!(run(&mut r, &msg("devices/a/t", json!({"v": 1}), t)).is_empty());
    }
    assert!(run(&mut r, &msg("devices/b/t", json!({"v": 1}), 30)).is_empty());
    r.advance(Timestamp::from_nanos(35 * SEC), &mut out);
    assert!(out.is_empty(), "25 s of silence is within the limit");
    r.advance(Timestamp::from_nanos(45 * SEC), &mut out);
    assert_eq!(out.len(), 1, "a went silent: {out:?}");
    assert_eq!(
        serde_json::Value::Object(out[0].row.clone()),
        json!({"d": "a", "kind": "t"})
    );
    let silence = out[0].silence.as_ref().expect("a silence row");
    assert_eq!(silence.device_id.as_ref().map(DeviceId::as_str), Some("a"));
    out.clear();
    r.advance(Timestamp::from_nanos(61 * SEC), &mut out);
    assert_eq!(out.len(), 1, "b, once; a is not reported again");
    assert_eq!(out[0].row["d"], "b");
    out.clear();
    // a's next reading ends its silence without a second report; a later gap is reported.
    assert!(run(&mut r, &msg("devices/a/t", json!({"v": 1}), 70)).is_empty());
    assert_eq!(
        run(&mut r, &msg("devices/a/t", json!({"v": 1}), 200)).len(),
        1
    );
}
