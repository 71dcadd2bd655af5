//! The rules engine end to end: rules created over REST, fed by real MQTT clients, acting
//! through the broker (republish), the store (table), HTTP (webhook), alarms and device
//! commands, surviving a restart and switched on and off without one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;

use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, EventLoop as EventLoop5};
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod common;
use common::{WAIT, api, config, connect_v5, start_with};

const HOT: &str = "SELECT device_id() AS device, temp FROM 'devices/+/telemetry' WHERE temp > 30";

struct Fixture {
    server: ferrite_server::Server,
    base: String,
    mqtt: SocketAddr,
}

async fn start(dir: &Path) -> Fixture {
    let server = start_with(dir, ferrite_api::Anonymous::Loopback).await;
    fixture(server)
}

/// Like [`start`], with the configuration changed by `f` first.
async fn start_configured(dir: &Path, f: impl FnOnce(&mut ferrite_server::Config)) -> Fixture {
    let mut c = config(dir, ferrite_api::Anonymous::Loopback);
    f(&mut c);
    fixture(
        ferrite_server::Server::start(c)
            .await
            .expect("server starts"),
    )
}

fn fixture(server: ferrite_server::Server) -> Fixture {
    Fixture {
        base: format!("http://{}/api/v1", server.http_addr()),
        mqtt: server.mqtt_addr(),
        server,
    }
}

impl Fixture {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        api(method, format!("{}{path}", self.base), None, body).await
    }

    async fn create(&self, rule: Value) {
        let (status, v) = self.call(Method::POST, "/rules", Some(rule)).await;
        assert_eq!(status, 201, "{v}");
    }

    /// A connected MQTT client (anonymous, from loopback).
    async fn client(&self, id: &str) -> Mqtt {
        let (code, client, el) = connect_v5(self.mqtt, id, None).await;
        assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);
        Mqtt { client, el }
    }
}

struct Mqtt {
    client: Client5,
    el: EventLoop5,
}

impl Mqtt {
    async fn next<T>(&mut self, mut f: impl FnMut(Packet5) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.el.poll().await {
                    Ok(Event5::Incoming(p)) => {
                        if let Some(v) = f(p) {
                            return v;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection failed: {e}"),
                }
            }
        })
        .await
        .expect("the expected packet arrives in time")
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS5::AtLeastOnce)
            .await
            .unwrap();
        self.next(|p| matches!(p, Packet5::SubAck(_)).then_some(()))
            .await;
    }

    /// Publish at QoS 1 and wait for the PUBACK (so the message has been routed).
    async fn publish(&mut self, topic: &str, payload: Value) {
        self.client
            .publish(topic, QoS5::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
        let reason = self
            .next(|p| match p {
                Packet5::PubAck(a) => Some(a.reason),
                _ => None,
            })
            .await;
        assert_eq!(reason, PubAckReason::Success);
    }

    /// The next message delivered: its topic and JSON payload.
    async fn message(&mut self) -> (String, Value) {
        self.next(|p| match p {
            Packet5::Publish(p) => Some((
                String::from_utf8(p.topic.to_vec()).unwrap(),
                serde_json::from_slice(&p.payload).unwrap(),
            )),
            _ => None,
        })
        .await
    }
}

fn hot_rule(name: &str) -> Value {
    json!({
        "name": name,
        "sql": HOT,
        "actions": [{"type": "republish", "topic": "alerts/${device}", "qos": 1}],
    })
}

#[tokio::test]
async fn filter_rule_republishes_exactly_the_hot_readings() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(hot_rule("hot")).await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("alerts/#").await;
    let mut dev = fx.client("publisher").await;
    for (device, temp) in [
        ("s1", 25.0),
        ("s1", 31.5),
        ("s2", 40.0),
        ("s2", 10.0),
        ("s3", 99.0),
    ] {
        dev.publish(
            &format!("devices/{device}/telemetry"),
            json!({ "temp": temp }),
        )
        .await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.message().await);
    }
    assert_eq!(
        got,
        vec![
            (
                "alerts/s1".to_owned(),
                json!({"device": "s1", "temp": 31.5})
            ),
            (
                "alerts/s2".to_owned(),
                json!({"device": "s2", "temp": 40.0})
            ),
            (
                "alerts/s3".to_owned(),
                json!({"device": "s3", "temp": 99.0})
            ),
        ]
    );
    let (status, v) = fx.call(Method::GET, "/rules/hot", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["running"], true);
    assert_eq!(v["stats"]["messages"], 5);
    assert_eq!(v["stats"]["matched"], 3);
    assert_eq!(v["stats"]["rows"], 3);
    let (status, v) = fx.call(Method::GET, "/rules", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    // The same name again is a conflict.
    let (status, _) = fx.call(Method::POST, "/rules", Some(hot_rule("hot"))).await;
    assert_eq!(status, 409);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn tumbling_window_rule_writes_aggregates_to_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(json!({
        "name": "per-second",
        "sql": "SELECT device_id() AS device_id, count(*) AS n, avg(temp) AS avg_temp \
                FROM 'devices/+/telemetry' GROUP BY device_id(), TUMBLE('1s')",
        "out_of_orderness": "0s",
        "actions": [
            {"type": "table", "table": "temp_1s"},
            {"type": "republish", "topic": "windows/${device_id}"},
        ],
    }))
    .await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("windows/#").await;
    let mut dev = fx.client("w1").await;
    // Event times (ms) in two 1 s windows, then one far later that moves the watermark.
    let base: i64 = 1_700_000_000_000;
    for (offset, temp) in [
        (100, 10.0),
        (500, 20.0),
        (1200, 30.0),
        (1700, 40.0),
        (1900, 50.0),
        (5000, 0.0),
    ] {
        dev.publish(
            "devices/w1/telemetry",
            json!({ "ts": base + offset, "temp": temp }),
        )
        .await;
    }
    // Actions run in order: once the republish of a row arrives, its table write is done.
    let first = sub.message().await;
    let second = sub.message().await;
    assert_eq!(first.0, "windows/w1");
    assert_eq!(first.1["n"], 2);
    assert_eq!(second.1["n"], 3);
    let (status, rows) = fx
        .call(
            Method::POST,
            "/query",
            Some(json!({"sql": "SELECT device_id, n, avg_temp FROM temp_1s ORDER BY time"})),
        )
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows,
        json!([
            {"device_id": "w1", "n": 2.0, "avg_temp": 15.0},
            {"device_id": "w1", "n": 3.0, "avg_temp": 40.0},
        ])
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn windowed_rules_drop_readings_a_device_sent_twice() {
    drop_readings_sent_twice(None).await;
}

#[tokio::test]
async fn windowed_rules_drop_readings_sent_twice_with_a_bloom_filter() {
    drop_readings_sent_twice(Some(
        json!({"method": "bloom", "false_positive_rate": 0.0001}),
    ))
    .await;
}

async fn drop_readings_sent_twice(dedup: Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    let mut def = json!({
        "name": "dedup",
        "sql": "SELECT device_id() AS device, count(*) AS n, sum(temp) AS total \
                FROM 'devices/+/telemetry' GROUP BY device_id(), TUMBLE('1s')",
        "out_of_orderness": "0s",
        "message_id": "seq",
        "actions": [{"type": "republish", "topic": "counted/${device}"}],
    });
    if let Some(d) = dedup {
        def["dedup"] = d;
    }
    fx.create(def).await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("counted/#").await;
    let mut dev = fx.client("dups").await;
    let base: i64 = 1_700_000_000_000;
    // d1 sends seq 1 twice (a retry), d2 also has a seq 1 (its own), one reading has no id.
    for (device, offset, seq, temp) in [
        ("d1", 100, Some(1), 10.0),
        ("d1", 100, Some(1), 10.0),
        ("d1", 400, Some(2), 20.0),
        ("d2", 200, Some(1), 5.0),
        ("d1", 600, None, 1.0),
    ] {
        let mut p = json!({ "ts": base + offset, "temp": temp });
        if let Some(seq) = seq {
            p["seq"] = json!(seq);
        }
        dev.publish(&format!("devices/{device}/telemetry"), p).await;
    }
    // Far later: the watermark passes the first window.
    dev.publish(
        "devices/d3/telemetry",
        json!({ "ts": base + 5_000, "temp": 0 }),
    )
    .await;
    let mut got = [sub.message().await, sub.message().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got[0],
        (
            "counted/d1".to_owned(),
            json!({"device": "d1", "n": 3, "total": 31.0})
        )
    );
    assert_eq!(
        got[1],
        (
            "counted/d2".to_owned(),
            json!({"device": "d2", "n": 1, "total": 5.0})
        )
    );
    let (_, v) = fx.call(Method::GET, "/rules/dedup", None).await;
    assert_eq!(v["stats"]["duplicates"], 1, "{v}");
    // An empty path is refused.
    let (status, _) = fx
        .call(
            Method::POST,
            "/rules",
            Some(json!({"name": "x", "sql": "SELECT count(*) FROM 'a' GROUP BY TUMBLE('1s')", "message_id": "a..b"})),
        )
        .await;
    assert_eq!(status, 400);
    // So are a dedup policy out of range, one of no known method, and one without ids.
    for (dedup, message_id, says) in [
        (
            json!({"method": "bloom", "false_positive_rate": 2}),
            json!("seq"),
            "false_positive_rate",
        ),
        (
            json!({"method": "exact", "capacity": 0}),
            json!("seq"),
            "capacity",
        ),
        (json!({"method": "cuckoo"}), json!("seq"), "cuckoo"),
        (json!({"method": "exact"}), Value::Null, "message_id"),
    ] {
        let (status, v) = fx
            .call(
                Method::POST,
                "/rules",
                Some(
                    json!({"name": "y", "sql": "SELECT count(*) FROM 'a' GROUP BY TUMBLE('1s')",
                            "message_id": message_id, "dedup": dedup}),
                ),
            )
            .await;
        assert!(status == 400 || status == 422, "{dedup}: {status} {v}");
        assert!(v.to_string().contains(says), "{dedup}: {v}");
    }
    let (_, v) = fx.call(Method::GET, "/rules", None).await;
    assert_eq!(
        v["items"].as_array().map(Vec::len),
        Some(1),
        "nothing refused was kept: {v}"
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn open_windows_survive_a_restart_and_restart_empty_when_the_rule_changes() {
    let dir = tempfile::tempdir().unwrap();
    let per_minute = json!({
        "name": "per-minute",
        "sql": "SELECT device_id() AS device, count(*) AS n, sum(temp) AS total, \
                approx_distinct(temp) AS kinds FROM 'devices/+/telemetry' \
                GROUP BY device_id(), TUMBLE('1m')",
        "out_of_orderness": "0s",
        "actions": [{"type": "republish", "topic": "minutes/${device}"}],
    });
    let base: i64 = 1_699_999_980_000; // a minute boundary, in ms
    let reading = |offset: i64, temp: f64| json!({ "ts": base + offset, "temp": temp });
    let state = dir
        .path()
        .join("rules")
        .join("state")
        .join("rule-per-minute.cbor");

    let fx = start_configured(dir.path(), |c| {
        c.rules.checkpoint_interval = std::time::Duration::from_millis(50);
    })
    .await;
    fx.create(per_minute.clone()).await;
    let mut dev = fx.client("m1").await;
    dev.publish("devices/m1/telemetry", reading(1_000, 1.0))
        .await;
    dev.publish("devices/m1/telemetry", reading(2_000, 2.0))
        .await;
    // The periodic checkpoint appears (the rule saw input since the last one).
    tokio::time::timeout(WAIT, async {
        while !state.exists() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a checkpoint is written");
    fx.server.shutdown().await;

    // Restarted: the open window carries on with its two readings.
    let fx = start(dir.path()).await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("minutes/#").await;
    let mut dev = fx.client("m1").await;
    dev.publish("devices/m1/telemetry", reading(3_000, 3.0))
        .await;
    dev.publish("devices/m1/telemetry", reading(61_000, 0.0))
        .await;
    let (topic, row) = sub.message().await;
    assert_eq!(topic, "minutes/m1");
    assert_eq!(
        row,
        json!({"device": "m1", "n": 3, "total": 6.0, "kinds": 3})
    );
    fx.server.shutdown().await;
    assert!(state.exists(), "the last checkpoint is written at shutdown");

    // Replacing the rule restarts its state: the window with the 61 s reading is gone.
    let fx = start(dir.path()).await;
    let mut replaced = per_minute.clone();
    replaced["description"] = json!("same SQL, new definition");
    let (status, _) = fx
        .call(Method::PUT, "/rules/per-minute", Some(replaced))
        .await;
    assert_eq!(status, 200);
    let mut sub = fx.client("watcher").await;
    sub.subscribe("minutes/#").await;
    let mut dev = fx.client("m1").await;
    dev.publish("devices/m1/telemetry", reading(62_000, 5.0))
        .await;
    dev.publish("devices/m1/telemetry", reading(121_000, 0.0))
        .await;
    let (_, row) = sub.message().await;
    assert_eq!(row["n"], 1, "only the reading after the change: {row}");
    // Deleting it removes the checkpoint.
    let (status, _) = fx.call(Method::DELETE, "/rules/per-minute", None).await;
    assert_eq!(status, 204);
    assert!(!state.exists());
    fx.server.shutdown().await;
}

#[tokio::test]
async fn a_device_that_goes_silent_raises_an_alarm_without_sending_anything() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(json!({
        "name": "silent",
        "sql": "SELECT device_id() AS device FROM 'devices/+/telemetry' WHERE gap('1s')",
        "actions": [
            {"type": "raise_alarm", "alarm": "no_data", "severity": "warning", "message": "no data"},
            {"type": "republish", "topic": "silent/${device_id}"},
        ],
    }))
    .await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("silent/#").await;
    let mut dev = fx.client("quiet").await;
    // One reading (event time = arrival), then nothing: the rule's processing-time tick
    // reports the silence once it passes a second.
    dev.publish("devices/q1/telemetry", json!({"temp": 20}))
        .await;
    let (topic, row) = sub.message().await;
    assert_eq!(
        (topic.as_str(), row),
        ("silent/q1", json!({"device": "q1"}))
    );
    let (_, alarms) = fx.call(Method::GET, "/alarms?state=active", None).await;
    let items = alarms["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{alarms}");
    assert_eq!(
        (items[0]["device"].as_str(), items[0]["type"].as_str()),
        (Some("q1"), Some("no_data"))
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn bad_rules_are_refused_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    let (status, v) = fx
        .call(
            Method::POST,
            "/rules",
            Some(json!({"name": "bad", "sql": "SELECT temp,\n  nosuch(temp) AS x FROM 'a'"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["line"], 2, "{v}");
    assert_eq!(v["column"], 3, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    let (status, v) = fx
        .call(
            Method::POST,
            "/rules",
            Some(json!({"name": "bad", "sql": "SELEC temp FROM 'a'"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["line"], 1, "{v}");
    let (status, v) = fx
        .call(
            Method::POST,
            "/rules",
            Some(json!({"name": "bad", "sql": HOT, "actions": [{"type": "mail"}]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // Nothing was stored.
    let (_, v) = fx.call(Method::GET, "/rules", None).await;
    assert_eq!(v["items"], json!([]));
    let (status, _) = fx.call(Method::GET, "/rules/bad", None).await;
    assert_eq!(status, 404);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn rules_survive_restart_and_switch_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(hot_rule("hot")).await;
    fx.server.shutdown().await;

    let fx = start(dir.path()).await;
    let (status, v) = fx.call(Method::GET, "/rules/hot", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["running"], true);
    assert_eq!(v["sql"], HOT);
    let mut sub = fx.client("watcher").await;
    sub.subscribe("alerts/#").await;
    let mut dev = fx.client("publisher").await;
    dev.publish("devices/r1/telemetry", json!({"temp": 50}))
        .await;
    assert_eq!(sub.message().await.0, "alerts/r1");

    // Disabled: a hot reading goes unnoticed; enabled again, the next one is seen first.
    let (status, v) = fx.call(Method::POST, "/rules/hot/disable", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["running"], false);
    assert_eq!(v["enabled"], false);
    dev.publish("devices/a/telemetry", json!({"temp": 50}))
        .await;
    let (status, v) = fx.call(Method::POST, "/rules/hot/enable", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["running"], true);
    dev.publish("devices/b/telemetry", json!({"temp": 50}))
        .await;
    assert_eq!(sub.message().await.0, "alerts/b");

    // Replaced: the new definition applies at once.
    let mut replaced = hot_rule("hot");
    replaced["actions"][0]["topic"] = json!("alerts/replaced/${device}");
    let (status, v) = fx.call(Method::PUT, "/rules/hot", Some(replaced)).await;
    assert_eq!(status, 200, "{v}");
    dev.publish("devices/p/telemetry", json!({"temp": 50}))
        .await;
    assert_eq!(sub.message().await.0, "alerts/replaced/p");

    // Deleted: gone at once (the name is free again, and nothing fires in between).
    let (status, _) = fx.call(Method::DELETE, "/rules/hot", None).await;
    assert_eq!(status, 204);
    let (status, _) = fx.call(Method::GET, "/rules/hot", None).await;
    assert_eq!(status, 404);
    dev.publish("devices/c/telemetry", json!({"temp": 50}))
        .await;
    fx.create(hot_rule("hot")).await;
    dev.publish("devices/d/telemetry", json!({"temp": 50}))
        .await;
    assert_eq!(sub.message().await.0, "alerts/d");

    // Every change is in the audit log, in order.
    let (status, audit) = fx.call(Method::GET, "/audit?target=hot", None).await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rule.create",
            "rule.disable",
            "rule.enable",
            "rule.replace",
            "rule.delete",
            "rule.create"
        ]
    );
    fx.server.shutdown().await;

    // The state after the changes is what a restart finds.
    let fx = start(dir.path()).await;
    let (_, v) = fx.call(Method::GET, "/rules", None).await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["actions"][0]["topic"], "alerts/${device}");
    fx.server.shutdown().await;
}

/// A one-route HTTP server that hands every POSTed body (and its `x-test` header) over.
async fn webhook_receiver() -> (SocketAddr, mpsc::Receiver<(Option<String>, Value)>) {
    let (tx, rx) = mpsc::channel(16);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let h = headers
                        .get("x-test")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    tx.send((h, body)).await.unwrap();
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

#[tokio::test]
async fn webhooks_deliver_rows_and_failures_reach_the_error_action() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    let (hook, mut received) = webhook_receiver().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    fx.create(json!({
        "name": "hook",
        "sql": HOT,
        "actions": [{"type": "webhook", "url": format!("http://{hook}/hook"), "headers": {"x-test": "yes"}}],
    }))
    .await;
    fx.create(json!({
        "name": "broken",
        "sql": HOT,
        "actions": [{"type": "webhook", "url": format!("http://{closed}/hook")}],
        "error_action": {"type": "republish", "topic": "errors/${device_id}"},
    }))
    .await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("errors/#").await;
    let mut dev = fx.client("publisher").await;
    dev.publish("devices/h1/telemetry", json!({"temp": 45}))
        .await;

    let (header, body) = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the webhook is called in time")
        .unwrap();
    assert_eq!(header.as_deref(), Some("yes"));
    assert_eq!(body, json!({"device": "h1", "temp": 45}));

    let (topic, error) = sub.message().await;
    assert_eq!(topic, "errors/h1");
    assert_eq!(error["rule"], "broken");
    assert_eq!(error["action"], "webhook");
    assert_eq!(error["row"], json!({"device": "h1", "temp": 45}));
    assert!(
        error["error"].as_str().unwrap().contains("3 attempts"),
        "{error}"
    );
    let (_, v) = fx.call(Method::GET, "/rules/broken", None).await;
    assert_eq!(v["stats"]["actions_failed"], 1, "{v}");
    fx.server.shutdown().await;
}

/// An HTTPS endpoint with a certificate for `localhost` signed by `issuer`: answers every
/// request `200` and hands the body over. Plain HTTP/1.1 over the TLS stream, enough for one
/// POST per connection.
async fn https_receiver(
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> (u16, mpsc::Receiver<Value>) {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{ServerConfig, crypto};

    let config =
        ServerConfig::builder_with_provider(std::sync::Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate fails the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                tls.shutdown().await.ok();
                tx.send(serde_json::from_slice(&body).unwrap()).await.ok();
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn https_webhooks_trust_the_configured_ca_and_refuse_other_certificates() {
    let dir = tempfile::tempdir().unwrap();
    // A private CA the server is told to trust, and a certificate it issued for localhost.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &rcgen::Issuer::new(ca_params, &ca_key))
        .unwrap();
    let ca_file = dir.path().join("webhook-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // A self-signed certificate nobody trusts.
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let rogue = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&rogue_key)
        .unwrap();

    let (trusted, mut received) = https_receiver(&leaf, &leaf_key).await;
    let (untrusted, mut never) = https_receiver(&rogue, &rogue_key).await;
    let fx = start_configured(&dir.path().join("data"), |c| {
        c.rules.webhook_ca_file = ca_file.clone();
    })
    .await;
    fx.create(json!({
        "name": "secure",
        "sql": HOT,
        "actions": [{"type": "webhook", "url": format!("https://localhost:{trusted}/hook")}],
    }))
    .await;
    fx.create(json!({
        "name": "rogue",
        "sql": HOT,
        "actions": [{"type": "webhook", "url": format!("https://localhost:{untrusted}/hook")}],
        "error_action": {"type": "republish", "topic": "errors/${device_id}"},
    }))
    .await;
    let mut sub = fx.client("watcher").await;
    sub.subscribe("errors/#").await;
    let mut dev = fx.client("publisher").await;
    dev.publish("devices/s1/telemetry", json!({"temp": 41}))
        .await;

    let body = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the https webhook is called in time")
        .unwrap();
    assert_eq!(body, json!({"device": "s1", "temp": 41}));
    let (topic, error) = sub.message().await;
    assert_eq!(topic, "errors/s1");
    assert_eq!(error["rule"], "rogue");
    assert!(
        never.try_recv().is_err(),
        "an untrusted server never gets the row"
    );
    fx.server.shutdown().await;

    // A CA file that holds no certificate stops the start with a message naming it.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let mut c = config(&dir.path().join("data"), ferrite_api::Anonymous::Loopback);
    c.rules.webhook_ca_file = ca_file.clone();
    let err = ferrite_server::Server::start(c)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("webhook_ca_file"), "{err}");
}

#[tokio::test]
async fn a_rule_replays_stored_telemetry_and_backfills_through_its_actions() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    // Three hours of readings from two devices, every 20 minutes (ms timestamps), an hour
    // apart from the epoch's hours; one reading in another table; one row without a device.
    let base: i64 = 1_699_999_200_000;
    let minute = 60_000;
    let mut dev = fx.client("replayer").await;
    for k in 0..9i64 {
        for (d, offset) in [("r1", 0.0), ("r2", 100.0)] {
            dev.publish(
                &format!("devices/{d}/telemetry"),
                json!({ "ts": base + k * 20 * minute, "temp": offset + k as f64 }),
            )
            .await;
        }
    }
    dev.publish(
        "devices/r1/telemetry/engine",
        json!({ "ts": base + minute, "rpm": 900 }),
    )
    .await;
    let http = fx.base.trim_end_matches("/api/v1").to_owned();
    let resp = reqwest::Client::new()
        .post(format!("{http}/api/v2/write?precision=ms"))
        .body(format!("telemetry temp=999 {}", base + 5 * minute))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    fx.create(json!({
        "name": "hourly",
        "sql": "SELECT device_id() AS device_id, count(*) AS n, max(temp) AS max_temp \
                FROM 'devices/+/telemetry' GROUP BY device_id(), TUMBLE('1h')",
        "enabled": false,
        "actions": [{"type": "table", "table": "temp_1h"}],
    }))
    .await;
    let (from, to) = (
        (base * 1_000_000).to_string(),
        ((base + 180 * minute) * 1_000_000).to_string(),
    );

    let (status, v) = fx
        .call(
            Method::POST,
            "/rules/hourly/replay",
            Some(json!({"from": from, "to": to})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tables"], json!(["telemetry"]), "{v}");
    assert_eq!(
        (v["messages"].as_u64(), v["skipped"].as_u64()),
        (Some(18), Some(1)),
        "{v}"
    );
    assert_eq!(v["emitted"], 6, "two devices × three hours: {v}");
    let mut rows: Vec<(String, f64, f64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let row = &r["row"];
            (
                row["device_id"].as_str().unwrap().to_owned(),
                row["n"].as_f64().unwrap(),
                row["max_temp"].as_f64().unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        rows,
        [
            ("r1".to_owned(), 3.0, 2.0),
            ("r1".to_owned(), 3.0, 5.0),
            ("r1".to_owned(), 3.0, 8.0),
            ("r2".to_owned(), 3.0, 102.0),
            ("r2".to_owned(), 3.0, 105.0),
            ("r2".to_owned(), 3.0, 108.0),
        ]
    );
    // A dry run acted on nothing.
    let (status, _) = fx
        .call(
            Method::POST,
            "/query",
            Some(json!({"sql": "SELECT count(*) FROM temp_1h"})),
        )
        .await;
    assert_eq!(status, 400, "no table before the backfill");

    // Half the range, two rows shown of the three emitted.
    let half = ((base + 60 * minute) * 1_000_000).to_string();
    let (_, v) = fx
        .call(
            Method::POST,
            "/rules/hourly/replay",
            Some(json!({"from": from, "to": half, "limit": 1})),
        )
        .await;
    assert_eq!(
        (v["emitted"].as_u64(), v["truncated"].as_bool()),
        (Some(2), Some(true)),
        "{v}"
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);

    // The backfill: the same rows, written by the rule's table action.
    let (status, v) = fx
        .call(
            Method::POST,
            "/rules/hourly/replay",
            Some(json!({"from": from, "to": to, "actions": true})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["actions_ok"].as_u64(), v["actions_failed"].as_u64()),
        (Some(6), Some(0))
    );
    let (_, got) = fx
        .call(
            Method::POST,
            "/query",
            Some(
                json!({"sql": "SELECT device_id, max_temp FROM temp_1h ORDER BY device_id, time"}),
            ),
        )
        .await;
    assert_eq!(
        got,
        json!([
            {"device_id": "r1", "max_temp": 2.0},
            {"device_id": "r1", "max_temp": 5.0},
            {"device_id": "r1", "max_temp": 8.0},
            {"device_id": "r2", "max_temp": 102.0},
            {"device_id": "r2", "max_temp": 105.0},
            {"device_id": "r2", "max_temp": 108.0},
        ])
    );

    // A rule on another table's topic reads that table only.
    fx.create(json!({
        "name": "engine",
        "sql": "SELECT device_id() AS d, rpm FROM 'devices/+/telemetry/engine'",
        "enabled": false,
    }))
    .await;
    let (_, v) = fx
        .call(
            Method::POST,
            "/rules/engine/replay",
            Some(json!({"from": from, "to": to})),
        )
        .await;
    assert_eq!(v["tables"], json!(["engine"]), "{v}");
    assert_eq!(
        v["rows"],
        json!([{"row": {"d": "r1", "rpm": 900.0}}]),
        "{v}"
    );

    // Bad requests change nothing and say why.
    let (status, v) = fx
        .call(
            Method::POST,
            "/rules/hourly/replay",
            Some(json!({"from": to, "to": from})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("before"), "{v}");
    let (status, _) = fx
        .call(
            Method::POST,
            "/rules/nope/replay",
            Some(json!({"from": from, "to": to})),
        )
        .await;
    assert_eq!(status, 404);
    fx.server.shutdown().await;
}

// ---- alarms and commands ----

const HOTTER: &str =
    "SELECT device_id() AS device, temp FROM 'devices/+/telemetry' WHERE temp > 80";
const COOLER: &str =
    "SELECT device_id() AS device, temp FROM 'devices/+/telemetry' WHERE temp <= 70";

/// A rule raising `overheat` for hot readings; its second action republishes a marker on
/// `done/{rule}/{device}` once the alarm's events are routed.
fn raising_rule(name: &str) -> Value {
    json!({
        "name": name,
        "sql": HOTTER,
        "actions": [
            {"type": "raise_alarm", "alarm": "overheat", "severity": "major",
             "message": "temperature ${temp}"},
            {"type": "republish", "topic": format!("done/{name}/${{device}}")},
        ],
    })
}

/// A rule clearing the `overheat` alarms of rule `of`, with a marker like [`raising_rule`].
fn clearing_rule(name: &str, of: &str) -> Value {
    json!({
        "name": name,
        "sql": COOLER,
        "actions": [
            {"type": "clear_alarm", "alarm": "overheat", "rule": of},
            {"type": "republish", "topic": format!("done/{name}/${{device}}")},
        ],
    })
}

impl Mqtt {
    /// Messages delivered before the one on `marker` (which is consumed).
    async fn until(&mut self, marker: &str) -> Vec<(String, Value)> {
        let mut before = Vec::new();
        loop {
            let (topic, v) = self.message().await;
            if topic == marker {
                return before;
            }
            before.push((topic, v));
        }
    }

    /// Publish a reading of `device` and return the alarm events published before the
    /// marker of rule `marker_rule`.
    async fn reading(
        &mut self,
        watcher: &mut Mqtt,
        device: &str,
        body: Value,
        marker_rule: &str,
    ) -> Vec<(String, Value)> {
        self.publish(&format!("devices/{device}/telemetry"), body)
            .await;
        watcher.until(&format!("done/{marker_rule}/{device}")).await
    }
}

fn events(got: &[(String, Value)]) -> Vec<String> {
    got.iter()
        .map(|(t, v)| {
            assert_eq!(t.rsplit('/').next(), v["event"].as_str(), "{t} {v}");
            t.clone()
        })
        .collect()
}

#[tokio::test]
async fn repeated_raises_are_one_alarm_per_device_with_one_raised_event() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(raising_rule("hot")).await;
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("$ferrite/alarms/#").await;
    watcher.subscribe("done/#").await;
    let mut dev = fx.client("publisher").await;
    let mut got = Vec::new();
    for temp in [85.0, 90.0, 95.5, 99.0, 120.0] {
        got.extend(
            dev.reading(&mut watcher, "s1", json!({ "temp": temp }), "hot")
                .await,
        );
    }
    assert_eq!(events(&got), ["$ferrite/alarms/hot/s1/raised"]);
    let raised = &got[0].1["alarm"];
    assert_eq!(raised["state"], "active");
    assert_eq!(raised["severity"], "major");
    assert_eq!(raised["count"], 1);
    assert_eq!(raised["message"], "temperature 85.0");

    let (status, v) = fx.call(Method::GET, "/alarms?state=active", None).await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let a = &items[0];
    assert_eq!(
        (&a["rule"], &a["device"], &a["type"]),
        (&json!("hot"), &json!("s1"), &json!("overheat"))
    );
    assert_eq!(a["count"], 5);
    assert_eq!(a["message"], "temperature 120.0");
    assert_eq!(a["values"], json!({"device": "s1", "temp": 120.0}));
    assert!(a["last_raised_at"].as_str().unwrap() > a["first_raised_at"].as_str().unwrap());

    // Another device: a second alarm, and its own raised event.
    let got = dev
        .reading(&mut watcher, "s2", json!({"temp": 81}), "hot")
        .await;
    assert_eq!(events(&got), ["$ferrite/alarms/hot/s2/raised"]);
    let (_, v) = fx.call(Method::GET, "/alarms", None).await;
    let devices: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["s2", "s1"], "newest first");
    let (_, v) = fx.call(Method::GET, "/alarms?device=s1", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (status, _) = fx.call(Method::GET, "/alarms?severity=bad", None).await;
    assert_eq!(status, 400);

    let (_, rule) = fx.call(Method::GET, "/rules/hot", None).await;
    let stats = &rule["stats"]["alarms"];
    assert_eq!(stats["raised"], 2, "{rule}");
    assert_eq!(stats["deduped"], 4, "{rule}");
    assert_eq!(stats["published"], 2, "{rule}");
    let (_, totals) = fx.call(Method::GET, "/alarms/stats", None).await;
    assert_eq!(&totals, stats);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn alarms_are_acknowledged_cleared_by_rules_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(raising_rule("hot")).await;
    fx.create(clearing_rule("cool", "hot")).await;
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("$ferrite/alarms/#").await;
    watcher.subscribe("done/#").await;
    let mut dev = fx.client("publisher").await;

    let got = dev
        .reading(&mut watcher, "k1", json!({"temp": 90}), "hot")
        .await;
    assert_eq!(events(&got), ["$ferrite/alarms/hot/k1/raised"]);
    let first = got[0].1["alarm"]["id"].as_u64().unwrap();

    // A viewer reads but may not acknowledge.
    let (status, t) = fx
        .call(
            Method::POST,
            "/tokens",
            Some(json!({"name": "wall", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let viewer = t["token"].as_str().unwrap();
    let url = |p: &str| format!("{}{p}", fx.base);
    let (status, _) = api(
        Method::GET,
        url(&format!("/alarms/{first}")),
        Some(viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(
        Method::POST,
        url(&format!("/alarms/{first}/ack")),
        Some(viewer),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // Acknowledged: state, event, audit; a second ack is a conflict.
    let (status, a) = fx
        .call(
            Method::POST,
            &format!("/alarms/{first}/ack"),
            Some(json!({"note": "fan replaced"})),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["state"], "acknowledged");
    assert_eq!(a["ack_note"], "fan replaced");
    let (topic, event) = watcher.message().await;
    assert_eq!(topic, "$ferrite/alarms/hot/k1/acknowledged");
    assert_eq!(event["alarm"]["acknowledged_by"], a["acknowledged_by"]);
    let (status, v) = fx
        .call(Method::POST, &format!("/alarms/{first}/ack"), None)
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("already acknowledged")
    );

    // Cleared by the other rule: an acknowledged alarm closes.
    let got = dev
        .reading(&mut watcher, "k1", json!({"temp": 60}), "cool")
        .await;
    assert_eq!(events(&got), ["$ferrite/alarms/hot/k1/cleared"]);
    let (_, a) = fx
        .call(Method::GET, &format!("/alarms/{first}"), None)
        .await;
    assert_eq!(a["state"], "cleared");
    assert_eq!(a["cleared_by"], "rule:cool");
    let history: Vec<&str> = a["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["raised", "acknowledged", "cleared"]);

    // Hot again: a new alarm; an operator clears it, and a second clear is a conflict.
    let got = dev
        .reading(&mut watcher, "k1", json!({"temp": 95}), "hot")
        .await;
    assert_eq!(events(&got), ["$ferrite/alarms/hot/k1/raised"]);
    let second = got[0].1["alarm"]["id"].as_u64().unwrap();
    assert_ne!(second, first);
    let (status, a) = fx
        .call(Method::POST, &format!("/alarms/{second}/clear"), None)
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["state"], "cleared");
    assert_eq!(watcher.message().await.0, "$ferrite/alarms/hot/k1/cleared");
    let (status, _) = fx
        .call(Method::POST, &format!("/alarms/{second}/clear"), None)
        .await;
    assert_eq!(status, 409);
    let (status, _) = fx.call(Method::POST, "/alarms/999/ack", None).await;
    assert_eq!(status, 404);

    for (id, action) in [(first, "alarm.ack"), (second, "alarm.clear")] {
        let (status, audit) = fx
            .call(Method::GET, &format!("/audit?target=alarm/{id}"), None)
            .await;
        assert_eq!(status, 200, "{audit}");
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, [action], "{audit}");
    }
    fx.server.shutdown().await;
}

#[tokio::test]
async fn flapping_alarms_stop_publishing_and_count_what_they_suppress() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start_configured(dir.path(), |c| {
        c.alarms.flap_threshold = 3;
        c.alarms.flap_window = std::time::Duration::from_secs(600);
    })
    .await;
    fx.create(raising_rule("hot")).await;
    fx.create(clearing_rule("cool", "hot")).await;
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("$ferrite/alarms/#").await;
    watcher.subscribe("done/#").await;
    let mut dev = fx.client("publisher").await;
    let mut got = Vec::new();
    // Open, then six flips: the fourth flip makes it flapping, flips 4 to 6 are suppressed.
    for i in 0..7 {
        let (temp, rule) = if i % 2 == 0 {
            (90, "hot")
        } else {
            (60, "cool")
        };
        got.extend(
            dev.reading(&mut watcher, "f1", json!({ "temp": temp }), rule)
                .await,
        );
    }
    let prefix = "$ferrite/alarms/hot/f1/";
    assert_eq!(
        events(&got),
        ["raised", "cleared", "raised", "cleared", "flapping"].map(|e| format!("{prefix}{e}"))
    );
    assert_eq!(got[4].1["alarm"]["flapping"], true);
    let (_, v) = fx.call(Method::GET, "/alarms", None).await;
    let a = &v["items"][0];
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        1,
        "one alarm throughout"
    );
    assert_eq!(a["flapping"], true);
    assert_eq!(a["state"], "active");
    assert_eq!(a["count"], 4);
    let (_, rule) = fx.call(Method::GET, "/rules/hot", None).await;
    assert_eq!(rule["stats"]["alarms"]["suppressed_flapping"], 3, "{rule}");
    assert_eq!(rule["stats"]["alarms"]["published"], 5, "{rule}");
    fx.server.shutdown().await;
}

#[tokio::test]
async fn new_alarms_are_rate_limited_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start_configured(dir.path(), |c| c.alarms.max_new_per_device = 2).await;
    fx.create(json!({
        "name": "kinds",
        "sql": "SELECT device_id() AS device, kind, temp FROM 'devices/+/telemetry' WHERE temp > 80",
        "actions": [
            {"type": "raise_alarm", "alarm": "${kind}", "severity": "minor"},
            {"type": "republish", "topic": "done/kinds/${device}"},
        ],
    }))
    .await;
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("$ferrite/alarms/#").await;
    watcher.subscribe("done/#").await;
    let mut dev = fx.client("publisher").await;
    let mut raised = Vec::new();
    for (device, kind) in [
        ("r1", "a"),
        ("r1", "b"),
        ("r1", "c"),
        ("r1", "a"),
        ("r2", "c"),
    ] {
        let got = dev
            .reading(
                &mut watcher,
                device,
                json!({"temp": 90, "kind": kind}),
                "kinds",
            )
            .await;
        raised.extend(got.iter().map(|(_, v)| {
            format!(
                "{}/{}",
                v["alarm"]["device"].as_str().unwrap(),
                v["alarm"]["type"].as_str().unwrap()
            )
        }));
    }
    assert_eq!(
        raised,
        ["r1/a", "r1/b", "r2/c"],
        "r1's third new alarm is dropped"
    );
    let (_, v) = fx.call(Method::GET, "/alarms?rule=kinds", None).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    let (_, rule) = fx.call(Method::GET, "/rules/kinds", None).await;
    let stats = &rule["stats"]["alarms"];
    assert_eq!(stats["rate_limited"], 1, "{rule}");
    assert_eq!(stats["deduped"], 1, "{rule}");
    assert_eq!(
        rule["stats"]["actions_failed"], 0,
        "a dropped raise is not a failure"
    );
    fx.server.shutdown().await;
}

#[tokio::test]
async fn alarms_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(raising_rule("hot")).await;
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("done/#").await;
    let mut dev = fx.client("publisher").await;
    for device in ["p1", "p2", "p3", "p1"] {
        dev.reading(&mut watcher, device, json!({"temp": 88}), "hot")
            .await;
    }
    let (status, _) = fx.call(Method::POST, "/alarms/2/ack", None).await;
    assert_eq!(status, 200);
    let (status, _) = fx.call(Method::POST, "/alarms/3/clear", None).await;
    assert_eq!(status, 200);
    let (_, before) = fx.call(Method::GET, "/alarms", None).await;
    fx.server.shutdown().await;

    let fx = start(dir.path()).await;
    let (status, after) = fx.call(Method::GET, "/alarms", None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before);
    let states: Vec<&str> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["cleared", "acknowledged", "active"]);
    assert_eq!(after["items"][2]["count"], 2);
    // The open alarm of p1 is still the one a raise folds into.
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("done/#").await;
    let mut dev = fx.client("publisher").await;
    dev.reading(&mut watcher, "p1", json!({"temp": 88}), "hot")
        .await;
    let (_, a) = fx.call(Method::GET, "/alarms/1", None).await;
    assert_eq!(a["count"], 3);
    fx.server.shutdown().await;
}

#[tokio::test]
async fn command_action_reaches_the_device_and_undeliverable_ones_the_error_action() {
    let dir = tempfile::tempdir().unwrap();
    let fx = start(dir.path()).await;
    fx.create(json!({
        "name": "cooling",
        "sql": HOTTER,
        "actions": [{"type": "command", "name": "fan",
                     "payload": {"speed": "max", "reading": "${temp}", "why": "${device} is hot"}}],
        "error_action": {"type": "republish", "topic": "errors/${device_id}"},
    }))
    .await;
    let mut device = fx.client("c1").await;
    device.subscribe("devices/c1/commands/#").await;
    let mut watcher = fx.client("watcher").await;
    watcher.subscribe("errors/#").await;
    let mut dev = fx.client("publisher").await;

    dev.publish("devices/c1/telemetry", json!({"temp": 95.5}))
        .await;
    let (topic, command) = device.message().await;
    assert_eq!(topic, "devices/c1/commands/fan");
    assert_eq!(command["name"], "fan");
    assert_eq!(command["rule"], "cooling");
    assert_eq!(
        command["payload"],
        json!({"speed": "max", "reading": 95.5, "why": "c1 is hot"})
    );
    assert!(!command["id"].as_str().unwrap().is_empty());

    // Nobody listens for c2's commands: the failure goes to the error action.
    dev.publish("devices/c2/telemetry", json!({"temp": 99}))
        .await;
    let (topic, error) = watcher.message().await;
    assert_eq!(topic, "errors/c2");
    assert_eq!(error["action"], "command");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("nothing subscribed"),
        "{error}"
    );
    let (_, rule) = fx.call(Method::GET, "/rules/cooling", None).await;
    assert_eq!(rule["stats"]["actions_ok"], 1, "{rule}");
    assert_eq!(rule["stats"]["actions_failed"], 1, "{rule}");

    // Bad alarm and command definitions are refused.
    for action in [
        json!({"type": "raise_alarm", "alarm": "has space", "severity": "major"}),
        json!({"type": "raise_alarm", "alarm": "x", "severity": "fatal"}),
        json!({"type": "command", "name": "a/b"}),
        json!({"type": "clear_alarm", "alarm": "x", "rule": "no/such"}),
    ] {
        let (status, v) = fx
            .call(
                Method::POST,
                "/rules",
                Some(json!({"name": "bad", "sql": HOTTER, "actions": [action]})),
            )
            .await;
        assert_eq!(status, 400, "{action} {v}");
    }
    fx.server.shutdown().await;
}
