//! End-to-end: the whole server in-process on port 0 in a temp dir, driven by independent
//! MQTT clients (rumqttc) and HTTP (reqwest), as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferrite_server::Server;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
use rumqttc::v5::{AsyncClient as Client5, Event as Event5};
use serde_json::Value;

mod common;
use common::{WAIT, api, connect_v5, options5, start_with};

/// A server that admits anonymous clients from loopback, as most tests here need.
async fn start(dir: &Path) -> Server {
    start_with(dir, ferrite_api::Anonymous::Loopback).await
}

async fn sql(http: SocketAddr, q: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/query"))
        .body(q.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn count(http: SocketAddr, table: &str) -> i64 {
    let (status, v) = sql(http, &format!("SELECT count(*) AS n FROM {table}")).await;
    assert_eq!(status, 200, "{v}");
    v[0]["n"].as_i64().unwrap()
}

/// Publish `n` QoS 1 readings as `device` over MQTT 5 and return the PUBACK reasons.
async fn publish_v5(mqtt: SocketAddr, device: &str, payloads: Vec<String>) -> Vec<PubAckReason> {
    let (client, mut el) = Client5::new(options5(device, mqtt), 64);
    let topic = format!("devices/{device}/telemetry");
    let n = payloads.len();
    let publisher = tokio::spawn(async move {
        for p in payloads {
            client
                .publish(topic.clone(), QoS5::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        client
    });
    let mut reasons = Vec::new();
    tokio::time::timeout(WAIT, async {
        while reasons.len() < n {
            if let Event5::Incoming(Packet5::PubAck(ack)) =
                el.poll().await.expect("connection stays up")
            {
                reasons.push(ack.reason);
            }
        }
    })
    .await
    .expect("all PUBACKs arrive");
    let client = publisher.await.unwrap();
    client.disconnect().await.unwrap();
    reasons
}

/// Publish readings over MQTT 3.1.1 and wait for every PUBACK.
async fn publish_v311(mqtt: SocketAddr, device: &str, payloads: Vec<String>) {
    let mut o = rumqttc::MqttOptions::new(device, mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
    let topic = format!("devices/{device}/telemetry/env");
    let n = payloads.len();
    let publisher = tokio::spawn(async move {
        for p in payloads {
            client
                .publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    tokio::time::timeout(WAIT, async {
        while acks < n {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                el.poll().await.expect("connection stays up")
            {
                acks += 1;
            }
        }
    })
    .await
    .expect("all PUBACKs arrive");
    publisher.await.unwrap().disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_acknowledged_readings_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    // Five MQTT 5 devices and three MQTT 3.1.1 devices at once, 125 readings each.
    let mut tasks = Vec::new();
    for d in 0..8 {
        let payloads: Vec<String> = (0..125)
            .map(|i| {
                format!(
                    r#"{{"ts": {}, "temperature": {}.5, "seq": {i}}}"#,
                    1_700_000_000_000i64 + i * 1000,
                    20 + d
                )
            })
            .collect();
        let device = format!("dev-{d}");
        tasks.push(tokio::spawn(async move {
            if d < 5 {
                let reasons = publish_v5(mqtt, &device, payloads).await;
                assert!(
                    reasons.iter().all(|r| *r == PubAckReason::Success),
                    "{reasons:?}"
                );
            } else {
                publish_v311(mqtt, &device, payloads).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Acknowledged means queryable at once.
    assert_eq!(
        count(http, "telemetry").await + count(http, "env").await,
        1000
    );
    server.shutdown().await;

    let server = start(dir.path()).await;
    assert_eq!(server.replay_report().records, 1000);
    let http = server.http_addr();
    assert_eq!(count(http, "telemetry").await, 625);
    assert_eq!(count(http, "env").await, 375);
    let (status, v) = sql(
        http,
        "SELECT device_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM telemetry GROUP BY device_id ORDER BY device_id",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for (d, row) in rows.iter().enumerate() {
        assert_eq!(row["device_id"], format!("dev-{d}"));
        assert_eq!(row["n"], 125);
        assert_eq!(
            (row["lo"].as_f64(), row["hi"].as_f64()),
            (Some(0.0), Some(124.0))
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_receives_what_publisher_sends() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mqtt = server.mqtt_addr();

    let (sub, mut sub_el) = Client5::new(options5("watcher", mqtt), 16);
    sub.subscribe("devices/+/telemetry", QoS5::AtLeastOnce)
        .await
        .unwrap();
    sub.subscribe("alerts/#", QoS5::AtMostOnce).await.unwrap();
    // Wait for both SUBACKs before publishing.
    let mut subacks = 0;
    tokio::time::timeout(WAIT, async {
        while subacks < 2 {
            if let Event5::Incoming(Packet5::SubAck(_)) = sub_el.poll().await.unwrap() {
                subacks += 1;
            }
        }
    })
    .await
    .unwrap();

    let reasons = publish_v5(mqtt, "d7", vec![r#"{"temperature": 21.5}"#.to_owned()]).await;
    assert_eq!(reasons, vec![PubAckReason::Success]);
    let (p, mut p_el) = Client5::new(options5("alerter", mqtt), 16);
    p.publish("alerts/fire/room-1", QoS5::AtMostOnce, false, "smoke")
        .await
        .unwrap();
    p.publish("elsewhere", QoS5::AtMostOnce, false, "not for the watcher")
        .await
        .unwrap();
    tokio::spawn(async move { while p_el.poll().await.is_ok() {} });

    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < 2 {
            if let Event5::Incoming(Packet5::Publish(p)) = sub_el.poll().await.unwrap() {
                got.push((
                    String::from_utf8(p.topic.to_vec()).unwrap(),
                    String::from_utf8(p.payload.to_vec()).unwrap(),
                ));
            }
        }
    })
    .await
    .expect("both messages delivered");
    got.sort();
    assert_eq!(
        got,
        vec![
            ("alerts/fire/room-1".to_owned(), "smoke".to_owned()),
            (
                "devices/d7/telemetry".to_owned(),
                r#"{"temperature": 21.5}"#.to_owned()
            ),
        ]
    );
    // The gateway's counters show what happened: the watcher still connected, the two
    // publishes it received in and out (the third, QoS 0, may still be on its way), nothing
    // dropped.
    let stats: Value = reqwest::get(format!("http://{}/api/v1/mqtt", server.http_addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["clients_connected"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["gateway"]["connections"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert!(
        stats["gateway"]["publishes_in"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert!(
        stats["gateway"]["publishes_out"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert!(
        stats["router"]["published"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert_eq!(stats["router"]["dropped_queue_full"], 0, "{stats}");
    assert_eq!(stats["router"]["dropped_memory"], 0, "{stats}");
    assert!(stats["session_store"]["commits"].is_u64(), "{stats}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_late_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mqtt = server.mqtt_addr();
    let (p, mut p_el) = Client5::new(options5("retainer", mqtt), 16);
    p.publish("config/site-1", QoS5::AtLeastOnce, true, "v2")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event5::Incoming(Packet5::PubAck(_)) = p_el.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .unwrap();
    let (s, mut s_el) = Client5::new(options5("late", mqtt), 16);
    s.subscribe("config/+", QoS5::AtLeastOnce).await.unwrap();
    let msg = tokio::time::timeout(WAIT, async {
        loop {
            if let Event5::Incoming(Packet5::Publish(p)) = s_el.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert!(msg.retain);
    assert_eq!(&msg.payload[..], b"v2");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_rejected_with_0x99_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    let reasons = publish_v5(
        mqtt,
        "d1",
        vec![
            r#"{"temperature": 21.5, "status": "ok"}"#.to_owned(),
            "not json".to_owned(),
            r#"{"nested": {"a": 1}, "temperature": 1}"#.to_owned(),
            r#"[1, 2, 3]"#.to_owned(),
            r#"{}"#.to_owned(),
            r#"{"temperature": "hot"}"#.to_owned(),
            r#"{"ts": "not a time", "temperature": 2}"#.to_owned(),
            r#"{"temperature": 22.5, "status": "ok"}"#.to_owned(),
        ],
    )
    .await;
    let ok = PubAckReason::Success;
    let bad = PubAckReason::PayloadFormatInvalid;
    assert_eq!(reasons, vec![ok, bad, bad, bad, bad, bad, bad, ok]);
    assert_eq!(count(http, "telemetry").await, 2);
    let (_, v) = sql(http, "SELECT * FROM telemetry ORDER BY temperature").await;
    let cols: Vec<&String> = v[0].as_object().unwrap().keys().collect();
    assert!(
        !cols.iter().any(|c| c.as_str() == "nested"),
        "rejected payload added no column: {cols:?}"
    );
    assert_eq!(
        server
            .ingest_stats()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_are_400_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let http = server.http_addr();
    let (status, v) = sql(http, "SELEC 1").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("SELEC"), "{v}");
    let (status, v) = sql(http, "SELECT * FROM no_such_table").await;
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().contains("no_such_table"),
        "{v}"
    );
    let (status, _) = sql(http, "CREATE TABLE x (a INT)").await;
    assert_eq!(status, 400);
    let (status, v) = sql(http, "SELECT 1 + 1 AS two").await;
    assert_eq!((status, v), (200, serde_json::json!([{"two": 2}])));
    let health = reqwest::get(format!("http://{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await;
}

async fn post(url: String, body: Vec<u8>, gzip: bool) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).body(body);
    if gzip {
        req = req.header("Content-Encoding", "gzip");
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_line_protocol_writes_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let http = server.http_addr();
    let batch = "\
readings,name=truck_0,fleet=South latitude=52.31,velocity=40i,odometer=1000u,moving=t 1451606400000000000
readings,name=truck_1,fleet=North latitude=40.12,velocity=0i,odometer=2000u,moving=f 1451606400000000000
diagnostics,name=truck_0 fuel_state=0.9,status=\"ok\" 1451606400000000000
";
    let (status, body) = post(
        format!("http://{http}/api/v2/write?org=o&bucket=b&precision=ns"),
        batch.into(),
        false,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (_, v) = sql(
        http,
        "SELECT name, fleet, velocity, odometer, moving, arrow_typeof(velocity) AS vt, arrow_typeof(odometer) AS ot FROM readings ORDER BY name",
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([
            {"name": "truck_0", "fleet": "South", "velocity": 40, "odometer": 1000, "moving": true, "vt": "Int64", "ot": "UInt64"},
            {"name": "truck_1", "fleet": "North", "velocity": 0, "odometer": 2000, "moving": false, "vt": "Int64", "ot": "UInt64"},
        ])
    );
    assert_eq!(count(http, "diagnostics").await, 1);

    // InfluxDB 1.x endpoint, seconds precision, gzip as Telegraf sends it.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        b"env,room=a temp=21.5 1700000000\nenv,room=b temp=19 1700000000\n",
    )
    .unwrap();
    let (status, body) = post(
        format!("http://{http}/write?db=x&precision=s"),
        gz.finish().unwrap(),
        true,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (_, v) = sql(
        http,
        "SELECT room, CAST(time AS BIGINT) AS t FROM env ORDER BY room",
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([{"room": "a", "t": 1_700_000_000_000_000_000i64}, {"room": "b", "t": 1_700_000_000_000_000_000i64}])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_rejects_the_whole_batch_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let http = server.http_addr();
    let url = format!("http://{http}/api/v2/write");
    let (status, body) = post(
        url.clone(),
        b"m v=1 1\nm v= 2\nm v=3 3\nm,t v=1\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("line 2") && msg.contains("line 4") && !msg.contains("line 1:"),
        "{msg}"
    );
    assert_eq!(v["code"], "invalid");
    let (status, _) = sql(http, "SELECT * FROM m").await;
    assert_eq!(status, 400, "nothing stored, so no table");

    // A type conflict with the stored column rejects the batch too.
    assert_eq!(post(url.clone(), b"m v=1 1\n".to_vec(), false).await.0, 204);
    let (status, body) = post(url.clone(), b"m v=2 2\nm v=\"two\" 3\n".to_vec(), false).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\\\"v\\\" is string but the column is float"),
        "{body}"
    );
    assert_eq!(count(http, "m").await, 1);
    let (status, _) = post(
        format!("{url}?precision=fortnights"),
        b"m v=1".to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_telemetry_accepts_senml_and_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    let reasons = publish_v5(
        mqtt,
        "meter-1",
        vec![
            r#"[{"bn":"meter-1:","bt":1700000000,"n":"voltage","v":230.1},{"n":"current","v":1.5}]"#.to_owned(),
            "power,phase=L1 watts=345.2 1700000000000000000\npower,phase=L2 watts=120.0 1700000000000000000".to_owned(),
            "power,device_id=someone-else watts=1".to_owned(),
        ],
    )
    .await;
    assert_eq!(
        reasons,
        vec![
            PubAckReason::Success,
            PubAckReason::Success,
            PubAckReason::PayloadFormatInvalid
        ]
    );
    let (_, v) = sql(
        http,
        r#"SELECT device_id, "meter-1:voltage" AS v, "meter-1:current" AS c FROM telemetry"#,
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([{"device_id": "meter-1", "v": 230.1, "c": 1.5}])
    );
    let (_, v) = sql(
        http,
        "SELECT device_id, phase, watts FROM power ORDER BY phase",
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([
            {"device_id": "meter-1", "phase": "L1", "watts": 345.2},
            {"device_id": "meter-1", "phase": "L2", "watts": 120.0},
        ])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_stores_telemetry() {
    use bytes::BytesMut;
    use ferrite_mqtt_codec::{
        Connect, Decoder, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    };
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let http = server.http_addr();
    let mut request = format!("ws://{http}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");

    let send = |p: Packet| {
        let mut buf = BytesMut::new();
        p.encode(ProtocolVersion::V5, &mut buf).unwrap();
        Message::Binary(buf.freeze())
    };
    ws.send(send(Packet::Connect(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: "ws-device".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })))
    .await
    .unwrap();
    // PUBLISH split over two WebSocket messages: MQTT framing does not follow message borders.
    let mut publish = BytesMut::new();
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "devices/ws-device/telemetry".into(),
        packet_id: Some(7),
        properties: Properties::default(),
        payload: r#"{"temperature": 18.25}"#.into(),
    })
    .encode(ProtocolVersion::V5, &mut publish)
    .unwrap();
    let second = publish.split_off(5);
    ws.send(Message::Binary(publish.freeze())).await.unwrap();
    ws.send(Message::Binary(second.freeze())).await.unwrap();

    let mut decoder = Decoder::new(1 << 20);
    decoder.set_version(ProtocolVersion::V5);
    let mut rbuf = BytesMut::new();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < 2 {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => rbuf.extend_from_slice(&b),
                _ => continue,
            }
            while let Some(p) = decoder.decode(&mut rbuf).unwrap() {
                got.push(p);
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Packet::PubAck(a) if a.packet_id == 7 && a.reason_code == ReasonCode::SUCCESS),
        "{got:?}"
    );
    let (_, v) = sql(http, "SELECT device_id, temperature FROM telemetry").await;
    assert_eq!(
        v,
        serde_json::json!([{"device_id": "ws-device", "temperature": 18.25}])
    );
    server.shutdown().await;
}

#[tokio::test]
async fn secure_by_default_devices_need_credentials_and_stay_in_their_namespace() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(dir.path(), ferrite_api::Anonymous::Off).await;
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    let admin = server
        .bootstrap_token()
        .expect("first start makes an admin token")
        .to_owned();
    let base = format!("http://{http}/api/v1");

    // Anonymous MQTT and HTTP are refused; health stays open.
    let (code, _, _) = connect_v5(mqtt, "nobody", None).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    let (status, _) = api(reqwest::Method::POST, format!("{base}/query"), None, None).await;
    assert_eq!(status, 401);
    let health = reqwest::get(format!("http://{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // The admin registers a device and gets its token once.
    let (status, created) = api(
        reqwest::Method::POST,
        format!("{base}/devices"),
        Some(&admin),
        Some(serde_json::json!({"id": "d1", "type": "sensor", "credential": true})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let (status, _) = api(
        reqwest::Method::POST,
        format!("{base}/devices"),
        Some(&admin),
        Some(serde_json::json!({"id": "d1"})),
    )
    .await;
    assert_eq!(status, 409, "a second d1 conflicts");

    // Wrong token: bad user name or password; right one: in.
    let (code, _, _) = connect_v5(mqtt, "d1", Some(("d1", "fd_wrong"))).await;
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    let (code, client, mut el) = connect_v5(mqtt, "d1", Some(("d1", &token))).await;
    assert_eq!(code, ConnectReturnCode::Success);
    client
        .publish(
            "devices/d1/telemetry",
            QoS5::AtLeastOnce,
            false,
            r#"{"t":1}"#,
        )
        .await
        .unwrap();
    client
        .publish(
            "devices/d2/telemetry",
            QoS5::AtLeastOnce,
            false,
            r#"{"t":2}"#,
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    tokio::time::timeout(WAIT, async {
        while reasons.len() < 2 {
            if let Event5::Incoming(Packet5::PubAck(a)) = el.poll().await.unwrap() {
                reasons.push(a.reason);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        reasons,
        [PubAckReason::Success, PubAckReason::NotAuthorized]
    );
    let (status, rows) = api(
        reqwest::Method::POST,
        format!("{base}/query"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 400, "empty SQL is a bad request: {rows}");
    let resp = reqwest::Client::new()
        .post(format!("{base}/query"))
        .bearer_auth(&admin)
        .body("SELECT device_id, t FROM telemetry")
        .send()
        .await
        .unwrap();
    let rows: Value = resp.json().await.unwrap();
    assert_eq!(rows, serde_json::json!([{"device_id": "d1", "t": 1.0}]));

    // Presence says online; a viewer may read but not register devices.
    let (status, d) = api(
        reqwest::Method::GET,
        format!("{base}/devices/d1"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(d["presence"]["online"], true, "{d}");
    let (_, viewer) = api(
        reqwest::Method::POST,
        format!("{base}/tokens"),
        Some(&admin),
        Some(serde_json::json!({"name": "dash", "role": "viewer"})),
    )
    .await;
    let viewer = viewer["token"].as_str().unwrap().to_owned();
    let (status, _) = api(
        reqwest::Method::GET,
        format!("{base}/devices"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(
        reqwest::Method::POST,
        format!("{base}/devices"),
        Some(&viewer),
        Some(serde_json::json!({"id": "d9"})),
    )
    .await;
    assert_eq!(status, 403);

    // Deleting the device ends its live session at once.
    let (status, _) = api(
        reqwest::Method::DELETE,
        format!("{base}/devices/d1"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event5::Incoming(Packet5::Disconnect(d))) => return Some(d.reason_code),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("session ends in time");
    if let Some(reason) = ended {
        assert_eq!(
            reason,
            rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NotAuthorized
        );
    }
    let (code, _, _) = connect_v5(mqtt, "d1", Some(("d1", &token))).await;
    assert_ne!(code, ConnectReturnCode::Success);
    server.shutdown().await;
}

/// Past the storage budget a reading is refused: MQTT 5 PUBACK 0x97 (Quota exceeded) with the
/// reason, HTTP 503, the connection stays up, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_storage_budget_get_quota_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), ferrite_api::Anonymous::Loopback);
    config.store.max_bytes = 1;
    let server = Server::start(config).await.unwrap();
    let (mqtt, http) = (server.mqtt_addr(), server.http_addr());
    // No data files yet: under the budget.
    let ok = publish_v5(mqtt, "b1", vec![r#"{"t": 1}"#.to_owned()]).await;
    assert_eq!(ok, vec![PubAckReason::Success]);
    server.store().flush().await.unwrap();
    assert!(server.store().stats().file_bytes > 1);
    let refused = publish_v5(
        mqtt,
        "b1",
        vec![r#"{"t": 2}"#.to_owned(), r#"{"t": 3}"#.to_owned()],
    )
    .await;
    assert_eq!(refused, vec![PubAckReason::QuotaExceeded; 2]);
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/v2/write?bucket=b"))
        .body("telemetry,device_id=b1 t=4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("store.max_bytes"),
        "{body}"
    );
    assert_eq!(count(http, "telemetry").await, 1);
    // The store's counters say why.
    let stats: Value = reqwest::get(format!("http://{http}/api/v1/store"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["files"], 1, "{stats}");
    assert!(stats["file_bytes"].as_u64().unwrap() > 1, "{stats}");
    assert!(stats["rejected"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["cold_files"], 0, "{stats}");
    server.shutdown().await;
}
