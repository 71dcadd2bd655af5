//! The rules engine end to end: rules created over REST, fed by real MQTT clients, acting
//! through the broker (republish), the store (table) and HTTP (webhook), surviving a restart
//! and switched on and off without one.
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
use common::{WAIT, api, connect_v5, start_with};

const HOT: &str = "SELECT device_id() AS device, temp FROM 'devices/+/telemetry' WHERE temp > 30";

struct Fixture {
    server: ferrite_server::Server,
    base: String,
    mqtt: SocketAddr,
}

async fn start(dir: &Path) -> Fixture {
    let server = start_with(dir, ferrite_api::Anonymous::Loopback).await;
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
