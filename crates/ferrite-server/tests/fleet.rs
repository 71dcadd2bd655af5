//! Fleet security end to end: the whole server in-process, driven through its REST API and
//! real MQTT clients (rumqttc, both protocol versions) — the ACL matrix, provisioning by claim
//! over MQTT and HTTP, token rotation and revocation of live sessions, roles per endpoint,
//! presence under session takeover with its `$`-topic events, HTTP publish with device
//! credentials, import/export and the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Packet as Packet5, PubAckReason, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, EventLoop as EventLoop5};
use serde_json::{Value, json};

mod common;
use common::{WAIT, api, connect_v5, start_with};

struct Fixture {
    server: ferrite_server::Server,
    mqtt: SocketAddr,
    base: String,
    admin: String,
    _dir: tempfile::TempDir,
}

/// A secured server (anonymous only from loopback, for the monitoring subscriber).
async fn fixture() -> Fixture {
    fixture_with(ferrite_api::Anonymous::Loopback).await
}

async fn fixture_with(anonymous: ferrite_api::Anonymous) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), anonymous).await;
    let admin = server.bootstrap_token().unwrap().to_owned();
    Fixture {
        mqtt: server.mqtt_addr(),
        base: format!("http://{}/api/v1", server.http_addr()),
        admin,
        server,
        _dir: dir,
    }
}

impl Fixture {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        api(
            method,
            format!("{}{path}", self.base),
            Some(&self.admin),
            body,
        )
        .await
    }

    /// Register a device with a token; returns the token.
    async fn device(&self, body: Value) -> String {
        let mut body = body;
        body["credential"] = json!(true);
        let (status, v) = self.call(Method::POST, "/devices", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }
}

/// Wait for the first event of `el` that `f` maps to `Some`.
async fn next5<T>(el: &mut EventLoop5, mut f: impl FnMut(Packet5) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
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

async fn subscribe5(client: &Client5, el: &mut EventLoop5, filter: &str) -> SubscribeReasonCode {
    client.subscribe(filter, QoS5::AtLeastOnce).await.unwrap();
    next5(el, |p| match p {
        Packet5::SubAck(a) => Some(a.return_codes[0]),
        _ => None,
    })
    .await
}

async fn publish5(
    client: &Client5,
    el: &mut EventLoop5,
    topic: &str,
    payload: &str,
) -> PubAckReason {
    client
        .publish(topic, QoS5::AtLeastOnce, false, payload.to_owned())
        .await
        .unwrap();
    next5(el, |p| match p {
        Packet5::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await
}

/// The reason of the DISCONNECT the server ends this connection with (`None`: it just closed).
async fn server_disconnect(el: &mut EventLoop5) -> Option<DisconnectReasonCode> {
    use rumqttc::v5::{ConnectionError, StateError};
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event5::Incoming(Packet5::Disconnect(d))) => return Some(d.reason_code),
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return Some(reason_code),
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("the connection ends in time")
}

/// An MQTT 3.1.1 client with credentials, connected.
async fn connect_v311(
    mqtt: SocketAddr,
    id: &str,
    token: &str,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut o = rumqttc::MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_credentials(id, token);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
    next3(&mut el, |p| match p {
        rumqttc::Packet::ConnAck(a) => {
            assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
            Some(())
        }
        _ => None,
    })
    .await;
    (client, el)
}

async fn next3<T>(
    el: &mut rumqttc::EventLoop,
    mut f: impl FnMut(rumqttc::Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => {
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

/// Every cell of device × topic × publish/subscribe × protocol version, allowed or denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_matrix_for_both_protocol_versions() {
    let f = fixture().await;
    let t1 = f
        .device(json!({"id": "d1", "type": "meter", "groups": ["lobby"]}))
        .await;
    let t2 = f.device(json!({"id": "d2"})).await;
    let (status, v) = f
        .call(
            Method::PUT,
            "/policies/lobby-broadcast",
            Some(json!({
                "attach": ["group:lobby"],
                "allow": [{"access": "subscribe", "topics": ["broadcast/${group}/#"]},
                          {"access": "publish", "topics": ["shared/${type}/status"]}],
                "deny": [{"access": "both", "topics": ["devices/${device_id}/secret/#"]}]
            })),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // (device, action, topic or filter, allowed)
    let matrix: &[(&str, &str, &str, bool)] = &[
        ("d1", "pub", "devices/d1/telemetry", true),
        ("d1", "pub", "devices/d1/state/x", true),
        ("d1", "pub", "devices/d2/telemetry", false),
        ("d1", "pub", "shared/meter/status", true),
        ("d1", "pub", "shared/other/status", false),
        ("d1", "pub", "devices/d1/secret/key", false),
        ("d1", "pub", "broadcast/lobby/x", false),
        ("d1", "pub", "$ferrite/events/presence/connected/d1", false),
        ("d1", "sub", "devices/d1/commands/#", true),
        ("d1", "sub", "devices/d1/#", false), // covers the denied secret subtree
        ("d1", "sub", "broadcast/lobby/#", true),
        ("d1", "sub", "broadcast/+/#", false),
        ("d1", "sub", "devices/d2/#", false),
        ("d1", "sub", "#", false),
        ("d2", "pub", "devices/d2/telemetry", true),
        ("d2", "pub", "shared/meter/status", false),
        ("d2", "sub", "devices/d2/#", true),
        ("d2", "sub", "broadcast/lobby/#", false),
        ("d2", "sub", "devices/d1/commands/#", false),
    ];

    // A monitor with full access sees which publishes got through.
    let (code, monitor, mut mel) = connect_v5(f.mqtt, "monitor", None).await;
    assert_eq!(code, ConnectReturnCode::Success);
    for filter in ["devices/#", "shared/#", "broadcast/#"] {
        assert!(matches!(
            subscribe5(&monitor, &mut mel, filter).await,
            SubscribeReasonCode::Success(_)
        ));
    }

    for version in ["5", "3.1.1"] {
        for (device, token) in [("d1", &t1), ("d2", &t2)] {
            let cells: Vec<_> = matrix.iter().filter(|c| c.0 == device).collect();
            if version == "5" {
                let (code, client, mut el) =
                    connect_v5(f.mqtt, device, Some((device, token))).await;
                assert_eq!(code, ConnectReturnCode::Success);
                for &&(_, action, topic, allowed) in &cells {
                    let ok = if action == "pub" {
                        let r = publish5(&client, &mut el, topic, "{\"v\":1}").await;
                        assert!(
                            matches!(r, PubAckReason::Success | PubAckReason::NotAuthorized),
                            "{r:?}"
                        );
                        r == PubAckReason::Success
                    } else {
                        let r = subscribe5(&client, &mut el, topic).await;
                        assert!(
                            matches!(
                                r,
                                SubscribeReasonCode::Success(_)
                                    | SubscribeReasonCode::NotAuthorized
                            ),
                            "{r:?}"
                        );
                        matches!(r, SubscribeReasonCode::Success(_))
                    };
                    assert_eq!(ok, allowed, "MQTT 5 {device} {action} {topic}");
                }
                client.disconnect().await.unwrap();
            } else {
                let (client, mut el) = connect_v311(f.mqtt, device, token).await;
                for &&(_, action, topic, allowed) in &cells {
                    if action == "sub" {
                        client
                            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
                            .await
                            .unwrap();
                        let r = next3(&mut el, |p| match p {
                            rumqttc::Packet::SubAck(a) => Some(a.return_codes[0]),
                            _ => None,
                        })
                        .await;
                        let ok =
                            matches!(r, rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(_));
                        assert_eq!(ok, allowed, "MQTT 3.1.1 {device} sub {topic}: {r:?}");
                    } else {
                        // 3.1.1 has no negative PUBACK: a denied publish is acknowledged and
                        // dropped. What the monitor receives tells.
                        client
                            .publish(topic, rumqttc::QoS::AtLeastOnce, false, "{\"v\":3}")
                            .await
                            .unwrap();
                        next3(&mut el, |p| {
                            matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                        })
                        .await;
                    }
                }
                client.disconnect().await.unwrap();
            }
        }
    }

    // The monitor got exactly the allowed publishes, in order, once per protocol version; a
    // marker published last proves nothing denied is still on its way.
    monitor
        .publish("devices/marker", QoS5::AtLeastOnce, false, "end")
        .await
        .unwrap();
    let mut received = Vec::new();
    next5(&mut mel, |p| match p {
        Packet5::Publish(p) => {
            let topic = String::from_utf8(p.topic.to_vec()).unwrap();
            if topic == "devices/marker" {
                return Some(());
            }
            received.push(topic);
            None
        }
        _ => None,
    })
    .await;
    let allowed: Vec<String> = matrix
        .iter()
        .filter(|c| c.1 == "pub" && c.3 && !c.2.starts_with('$'))
        .map(|c| c.2.to_owned())
        .collect();
    let expected: Vec<String> = allowed.iter().chain(allowed.iter()).cloned().collect();
    assert_eq!(received, expected);
    let denied = f
        .server
        .mqtt_stats()
        .publishes_denied
        .load(std::sync::atomic::Ordering::Relaxed);
    let denied_cells = matrix.iter().filter(|c| c.1 == "pub" && !c.3).count() as u64;
    assert_eq!(denied, 2 * denied_cells, "every denied publish is counted");
    f.server.shutdown().await;
}

/// The next provisioning answer (skipping the echo of the client's own request).
async fn answer(el: &mut EventLoop5) -> (String, Value) {
    next5(el, |p| match p {
        Packet5::Publish(p) => {
            let topic = String::from_utf8(p.topic.to_vec()).unwrap();
            (!topic.ends_with("/request"))
                .then(|| (topic, serde_json::from_slice::<Value>(&p.payload).unwrap()))
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_provisioning_over_mqtt_and_http() {
    let f = fixture().await;
    let (status, claim) = f
        .call(
            Method::POST,
            "/claims",
            Some(json!({
                "label": "batch 7",
                "template": {"type": "meter", "groups": ["field"], "id_prefix": "m-"},
                "expires_in": "1h",
                "max_uses": 2
            })),
        )
        .await;
    assert_eq!(status, 201, "{claim}");
    let claim_token = claim["token"].as_str().unwrap().to_owned();

    // HTTP: a wrong token is 401 and changes nothing; the right one enrolls a device.
    let (status, _) = api(
        Method::POST,
        format!("{}/provision", f.base),
        Some("fc_wrong"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 401);
    let (_, counts) = f.call(Method::GET, "/fleet", None).await;
    assert_eq!(
        counts["auth"]["failures"], 1,
        "the failure is counted: {counts}"
    );
    let (status, p) = api(
        Method::POST,
        format!("{}/provision", f.base),
        Some(&claim_token),
        Some(json!({"device_id": "m-http"})),
    )
    .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["device"]["id"], "m-http");
    assert_eq!(p["device"]["type"], "meter");
    let http_token = p["token"].as_str().unwrap().to_owned();
    let (code, _, _) = connect_v5(f.mqtt, "m-http", Some(("m-http", &http_token))).await;
    assert_eq!(code, ConnectReturnCode::Success);

    // MQTT: connect as `$claim`, ask on the request topic, read the answer.
    let (code, client, mut el) =
        connect_v5(f.mqtt, "factory-1", Some(("$claim", &claim_token))).await;
    assert_eq!(code, ConnectReturnCode::Success);
    assert!(matches!(
        subscribe5(&client, &mut el, "$ferrite/provision/factory-1/+").await,
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(
        subscribe5(&client, &mut el, "devices/#").await,
        SubscribeReasonCode::NotAuthorized,
        "a claim connection may do nothing else"
    );
    assert_eq!(
        publish5(&client, &mut el, "devices/m-1/telemetry", "{}").await,
        PubAckReason::NotAuthorized
    );
    // An id outside the template's prefix is rejected, and the use is not counted.
    client
        .publish(
            "$ferrite/provision/factory-1/request",
            QoS5::AtLeastOnce,
            false,
            r#"{"device_id": "other-1"}"#,
        )
        .await
        .unwrap();
    let (topic, body) = answer(&mut el).await;
    assert_eq!(topic, "$ferrite/provision/factory-1/rejected", "{body}");
    client
        .publish(
            "$ferrite/provision/factory-1/request",
            QoS5::AtLeastOnce,
            false,
            r#"{"device_id": "m-42"}"#,
        )
        .await
        .unwrap();
    let (topic, body) = answer(&mut el).await;
    assert_eq!(topic, "$ferrite/provision/factory-1/accepted", "{body}");
    assert_eq!(body["device"]["id"], "m-42");
    assert_eq!(body["device"]["groups"], json!(["field"]));
    let token = body["token"].as_str().unwrap().to_owned();
    client.disconnect().await.unwrap();

    let (code, device, mut del) = connect_v5(f.mqtt, "m-42", Some(("m-42", &token))).await;
    assert_eq!(code, ConnectReturnCode::Success);
    assert_eq!(
        publish5(
            &device,
            &mut del,
            "devices/m-42/telemetry",
            r#"{"kwh": 1.5}"#
        )
        .await,
        PubAckReason::Success
    );
    device.disconnect().await.unwrap();

    // Two uses spent: the claim is exhausted for both transports.
    let (code, _, _) = connect_v5(f.mqtt, "factory-2", Some(("$claim", &claim_token))).await;
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    let (status, _) = api(
        Method::POST,
        format!("{}/provision", f.base),
        Some(&claim_token),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (_, claims) = f.call(Method::GET, "/claims", None).await;
    assert_eq!(claims[0]["uses"], 2, "{claims}");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_keeps_devices_connected_and_revocation_disconnects_at_once() {
    let f = fixture().await;
    let old = f.device(json!({"id": "r1"})).await;
    let (_, creds) = f.call(Method::GET, "/devices/r1/credentials", None).await;
    let old_id = creds[0]["id"].as_str().unwrap().to_owned();
    let (code, live_old, mut old_el) = connect_v5(f.mqtt, "r1", Some(("r1", &old))).await;
    assert_eq!(code, ConnectReturnCode::Success);

    let (status, rotated) = f
        .call(
            Method::POST,
            &format!("/devices/r1/credentials/{old_id}/rotate"),
            Some(json!({"label": "2026-q4"})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["token"].as_str().unwrap().to_owned();
    let (_, creds) = f.call(Method::GET, "/devices/r1/credentials", None).await;
    assert_eq!(
        creds.as_array().unwrap().len(),
        2,
        "both work during rotation"
    );
    assert_eq!(
        publish5(&live_old, &mut old_el, "devices/r1/telemetry", r#"{"x":1}"#).await,
        PubAckReason::Success,
        "rotation does not disturb the live session"
    );

    // The device moves to the new token (a takeover), then the old one is revoked.
    drop(live_old);
    drop(old_el);
    let (code, live_new, mut new_el) = connect_v5(f.mqtt, "r1", Some(("r1", &new))).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (status, _) = f
        .call(
            Method::DELETE,
            &format!("/devices/r1/credentials/{old_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (code, _, _) = connect_v5(f.mqtt, "r1", Some(("r1", &old))).await;
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    // That connect attempt failed before takeover: the new-token session is still up.
    assert_eq!(
        publish5(&live_new, &mut new_el, "devices/r1/telemetry", r#"{"x":2}"#).await,
        PubAckReason::Success
    );

    // Revoking the credential in use disconnects the live session with 0x87 at once.
    let (_, creds) = f.call(Method::GET, "/devices/r1/credentials", None).await;
    let new_id = creds[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = f
        .call(
            Method::DELETE,
            &format!("/devices/r1/credentials/{new_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        server_disconnect(&mut new_el).await,
        Some(DisconnectReasonCode::NotAuthorized)
    );
    f.server.shutdown().await;
}

/// Which role may call what: every endpoint, every role, and no token at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_per_endpoint() {
    let f = fixture_with(ferrite_api::Anonymous::Off).await;
    f.device(json!({"id": "x1"})).await;
    let mut tokens = Vec::new();
    for role in ["viewer", "operator", "admin"] {
        let (status, t) = f
            .call(
                Method::POST,
                "/tokens",
                Some(json!({"name": format!("{role}-1"), "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        tokens.push((role, t["token"].as_str().unwrap().to_owned()));
    }
    // (method, path, body, least role allowed: 0 viewer, 1 operator, 2 admin)
    let endpoints: Vec<(Method, &str, Option<Value>, usize)> = vec![
        (Method::GET, "/devices", None, 0),
        (Method::GET, "/devices/x1", None, 0),
        (Method::GET, "/devices/x1/credentials", None, 0),
        (Method::GET, "/devices/x1/certs", None, 0),
        (Method::GET, "/fleet", None, 0),
        (Method::GET, "/policies", None, 0),
        (Method::GET, "/claims", None, 0),
        (Method::GET, "/devices/export", None, 0),
        (Method::POST, "/query", Some(json!({"sql": "SELECT 1"})), 0),
        (Method::POST, "/devices", Some(json!({"id": "new-{n}"})), 1),
        (Method::PATCH, "/devices/x1", Some(json!({"name": "X"})), 1),
        (Method::POST, "/devices/x1/credentials", Some(json!({})), 1),
        (Method::POST, "/claims", Some(json!({"label": "c"})), 1),
        (Method::POST, "/devices/import", None, 1),
        (Method::POST, "/publish/devices/x1/cmd", None, 1),
        (Method::GET, "/audit", None, 2),
        (Method::GET, "/tokens", None, 2),
        (
            Method::PUT,
            "/policies/p1",
            Some(json!({"attach": ["all"]})),
            2,
        ),
        (
            Method::POST,
            "/tokens",
            Some(json!({"name": "t-{n}", "role": "viewer"})),
            2,
        ),
    ];
    let mut n = 0;
    for (method, path, body, least) in &endpoints {
        for (rank, who) in [None, Some(0), Some(1), Some(2)].into_iter().enumerate() {
            n += 1;
            let body = body.as_ref().map(|b| {
                serde_json::from_str(&b.to_string().replace("{n}", &n.to_string())).unwrap()
            });
            let token = who.map(|i: usize| tokens[i].1.as_str());
            let (status, v) = api(method.clone(), format!("{}{path}", f.base), token, body).await;
            let expected_ok = who.is_some_and(|i| i >= *least);
            match (who, expected_ok) {
                (None, _) => assert_eq!(status, 401, "{method} {path} without a token"),
                (Some(_), false) => {
                    assert_eq!(
                        status,
                        403,
                        "{method} {path} as {}: {v}",
                        tokens[rank - 1].0
                    )
                }
                (Some(_), true) => assert!(
                    (200..300).contains(&status),
                    "{method} {path} as {}: {status} {v}",
                    tokens[rank - 1].0
                ),
            }
        }
    }
    // A body that is not the expected JSON is a 400 naming the problem, and changes nothing.
    let (status, v) = f
        .call(
            Method::POST,
            "/devices",
            Some(json!({"id": "y1", "colour": "red"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("colour"), "{v}");
    let (status, _) = f.call(Method::GET, "/devices/y1", None).await;
    assert_eq!(status, 404);

    // A revoked token stops working at once.
    let (_, list) = f.call(Method::GET, "/tokens", None).await;
    let viewer_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "viewer-1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = f
        .call(Method::DELETE, &format!("/tokens/{viewer_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = api(
        Method::GET,
        format!("{}/devices", f.base),
        Some(&tokens[0].1),
        None,
    )
    .await;
    assert_eq!(status, 401);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_takeover_and_is_announced_on_dollar_topics() {
    let f = fixture().await;
    let token = f.device(json!({"id": "p1"})).await;
    let (_, monitor, mut mel) = connect_v5(f.mqtt, "presence-monitor", None).await;
    assert!(matches!(
        subscribe5(&monitor, &mut mel, "$ferrite/events/presence/#").await,
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(
        subscribe5(&monitor, &mut mel, "#").await,
        SubscribeReasonCode::Success(QoS5::AtLeastOnce)
    );
    let event = async |mel: &mut EventLoop5| {
        next5(mel, |p| match p {
            Packet5::Publish(p) => {
                let topic = String::from_utf8(p.topic.to_vec()).unwrap();
                Some((topic, serde_json::from_slice::<Value>(&p.payload).unwrap()))
            }
            _ => None,
        })
        .await
    };

    let (_, first, mut first_el) = connect_v5(f.mqtt, "p1", Some(("p1", &token))).await;
    let (topic, e1) = event(&mut mel).await;
    assert_eq!(topic, "$ferrite/events/presence/connected/p1", "{e1}");
    assert_eq!(e1["device_id"], "p1");

    // The same device connects again: the old connection is taken over.
    let (_, second, mut second_el) = connect_v5(f.mqtt, "p1", Some(("p1", &token))).await;
    let (topic, e2) = event(&mut mel).await;
    assert_eq!(topic, "$ferrite/events/presence/connected/p1", "{e2}");
    assert!(e2["connection"].as_u64() > e1["connection"].as_u64());
    // The old connection ends (with DISCONNECT 0x8E, which rumqttc reports only when it reads
    // the packet before the close).
    let ended = server_disconnect(&mut first_el).await;
    assert!(
        matches!(ended, None | Some(DisconnectReasonCode::SessionTakenOver)),
        "{ended:?}"
    );
    drop(first);
    // Still online: the old connection closing did not make the device offline.
    let (_, d) = f.call(Method::GET, "/devices/p1", None).await;
    assert_eq!(d["presence"]["online"], true, "{d}");
    let (_, counts) = f.call(Method::GET, "/fleet", None).await;
    assert_eq!(counts["online"], 1, "{counts}");

    // A clean disconnect of the live connection: one `disconnected`, for that connection.
    second.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while second_el.poll().await.is_ok() {} }).await;
    let (topic, e3) = event(&mut mel).await;
    assert_eq!(topic, "$ferrite/events/presence/disconnected/p1", "{e3}");
    assert_eq!(e3["connection"], e2["connection"]);
    let (_, d) = f.call(Method::GET, "/devices/p1", None).await;
    assert_eq!(d["presence"]["online"], false, "{d}");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_over_http_with_their_token_under_their_acl() {
    let f = fixture().await;
    let token = f.device(json!({"id": "h1"})).await;
    let http = reqwest::Client::new();
    let url = |topic: &str| format!("{}/publish/{topic}", f.base);
    let post = |topic: &str, user: &str, pass: &str, body: &str| {
        http.post(url(topic))
            .basic_auth(user, Some(pass))
            .body(body.to_owned())
            .send()
    };
    let r = post(
        "devices/h1/telemetry/env",
        "h1",
        &token,
        r#"{"temperature": 21.5}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{:?}", r.text().await);
    let r = post(
        "devices/h2/telemetry/env",
        "h1",
        &token,
        r#"{"temperature": 1}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = post("devices/h1/telemetry/env", "h1", "fd_wrong", "{}")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post("$ferrite/events/x", "h1", &token, "{}").await.unwrap();
    assert!(r.status().as_u16() == 403 || r.status().as_u16() == 400);
    let r = post("devices/h1/telemetry/env", "h1", &token, "not json")
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "a bad payload is refused like over MQTT"
    );
    // Device credentials open nothing but publishing.
    let r = http
        .get(format!("{}/devices", f.base))
        .basic_auth("h1", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = http
        .post(format!("{}/query", f.base))
        .bearer_auth(&f.admin)
        .body("SELECT device_id, temperature FROM env")
        .send()
        .await
        .unwrap();
    let rows: Value = r.json().await.unwrap();
    assert_eq!(rows, json!([{"device_id": "h1", "temperature": 21.5}]));
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_idempotent_export_round_trips_and_the_audit_log_says_who() {
    let f = fixture().await;
    let ndjson: String = (0..500)
        .map(|i| {
            format!(
                "{{\"id\":\"imp-{i:04}\",\"type\":\"pump\",\"tags\":{{\"site\":\"s{}\"}}}}\n",
                i % 5
            )
        })
        .collect();
    let http = reqwest::Client::new();
    let import = async |body: String| -> Value {
        let r = http
            .post(format!("{}/devices/import", f.base))
            .bearer_auth(&f.admin)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    };
    let first = import(ndjson.clone()).await;
    assert_eq!(
        (first["created"].as_u64(), first["failed"].as_u64()),
        (Some(500), Some(0))
    );
    let again = import(ndjson.clone()).await;
    assert_eq!(again["unchanged"], 500, "{again}");
    let bad = import("{\"id\":\"ok-1\"}\n{\"id\": 7}\n".to_owned()).await;
    assert_eq!(
        (bad["created"].as_u64(), bad["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(bad["errors"][0]["line"], 2, "{bad}");

    let (status, page) = f
        .call(Method::GET, "/devices?tag=site:s3&limit=50", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = f
        .call(
            Method::GET,
            &format!("/devices?tag=site:s3&limit=50&after={next}"),
            None,
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 50);
    assert!(page2["next"].is_null(), "100 devices at site s3");

    let export = http
        .get(format!("{}/devices/export", f.base))
        .bearer_auth(&f.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(export.lines().count(), 501);
    let back = import(export).await;
    assert_eq!(
        back["unchanged"], 501,
        "the export imports back unchanged: {back}"
    );

    let (status, audit) = f.call(Method::GET, "/audit?target=imp-0007", None).await;
    assert_eq!(status, 200);
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "created once, never changed: {audit}");
    assert_eq!(items[0]["action"], "device.import.create");
    assert!(
        items[0]["actor"].to_string().contains("admin"),
        "the actor is the bootstrap admin token: {}",
        items[0]["actor"]
    );
    f.server.shutdown().await;
}

/// Mutual TLS against the fleet's own CA: created while the server runs (no restart), a
/// certificate issued through the API names the device, and revoking it disconnects the live
/// session and refuses the next handshake's CONNECT. Token devices keep using the same TLS port
/// without a certificate (`client_auth = "optional"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_fleet_ca_and_live_revocation() {
    use bytes::BytesMut;
    use ferrite_mqtt_codec::{Connect, Decoder, Packet, Properties, ProtocolVersion, ReasonCode};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut config = common::config(&dir.path().join("data"), ferrite_api::Anonymous::Off);
    config.mqtt.tls.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.tls.cert = cert_path;
    config.mqtt.tls.key = key_path;
    config.mqtt.tls.client_ca = ferrite_server::FLEET_CA.into();
    config.mqtt.tls.client_auth = ferrite_mqtt::ClientAuth::Optional;
    let server = ferrite_server::Server::start(config).await.unwrap();
    let tls_addr = server.mqtt_tls_addr().unwrap();
    let f = Fixture {
        mqtt: server.mqtt_addr(),
        base: format!("http://{}/api/v1", server.http_addr()),
        admin: server.bootstrap_token().unwrap().to_owned(),
        server,
        _dir: dir,
    };

    let connector = |client: Option<(&str, &str)>| {
        let mut roots = RootCertStore::empty();
        roots.add(server_cert.der().clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        TlsConnector::from(Arc::new(config))
    };
    // TLS, then CONNECT; the CONNACK reason and the live stream (None if the handshake failed).
    let connect = async |connector: TlsConnector, id: &str, password: Option<&str>| {
        let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.ok()?;
        let mut buf = BytesMut::new();
        Packet::Connect(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: id.into(),
            will: None,
            username: password.map(|_| id.into()),
            password: password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            properties: Properties::default(),
        })
        .encode(ProtocolVersion::V5, &mut buf)
        .unwrap();
        tls.write_all(&buf).await.ok()?;
        let mut decoder = Decoder::new(1 << 20);
        decoder.set_version(ProtocolVersion::V5);
        let mut rbuf = BytesMut::new();
        loop {
            if let Some(Packet::ConnAck(a)) = decoder.decode(&mut rbuf).unwrap() {
                return Some((a.reason_code, tls, decoder, rbuf));
            }
            if tls.read_buf(&mut rbuf).await.ok()? == 0 {
                return None;
            }
        }
    };

    // The CA is created through the API; the TLS listener picks it up without a restart.
    let (status, _) = f
        .call(
            Method::POST,
            "/ca",
            Some(json!({"common_name": "Test fleet CA"})),
        )
        .await;
    assert_eq!(status, 201);
    f.device(json!({"id": "c1"})).await;
    let (status, issued) = f
        .call(Method::POST, "/devices/c1/certs", Some(json!({})))
        .await;
    assert_eq!(status, 201, "{issued}");
    let (cert, key) = (
        issued["cert"].as_str().unwrap().to_owned(),
        issued["key"].as_str().unwrap().to_owned(),
    );
    let live = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(c) = connect(connector(Some((&cert, &key))), "c1", None).await {
                return c;
            }
            // The reload follows the CA event; retry the handshake until it is trusted.
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the fleet CA is trusted without a restart");
    let (reason, mut stream, mut decoder, mut rbuf) = live;
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (_, d) = f.call(Method::GET, "/devices/c1", None).await;
    assert_eq!(d["presence"]["online"], true, "{d}");

    // A token device on the same port without a certificate.
    let token = f.device(json!({"id": "t1"})).await;
    let (reason, ..) = connect(connector(None), "t1", Some(&token)).await.unwrap();
    assert_eq!(reason, ReasonCode::SUCCESS);
    // A certificate does not let a device claim another id.
    let (reason, ..) = connect(connector(Some((&cert, &key))), "t1", None)
        .await
        .unwrap();
    assert_eq!(reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);

    // Revocation: the live session is told 0x87 and closed; the next CONNECT is refused.
    let serial = issued["serial"].as_str().unwrap();
    let (status, _) = f
        .call(Method::DELETE, &format!("/certs/{serial}"), None)
        .await;
    assert_eq!(status, 204);
    let disconnect = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = decoder.decode(&mut rbuf).unwrap() {
                return Some(p);
            }
            if stream.read_buf(&mut rbuf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
    .unwrap();
    match disconnect {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    let (reason, ..) = connect(connector(Some((&cert, &key))), "c1", None)
        .await
        .unwrap();
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    f.server.shutdown().await;
}
