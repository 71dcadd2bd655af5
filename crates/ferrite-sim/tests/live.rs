//! Live mode against a small fake broker (built on the same codec) that acknowledges every
//! publish and logs what it sees: connects with or without a will, publishes, and whether a
//! connection ended with DISCONNECT or just closed. Checks that the classic run still does
//! what `ferrite simulate` promises, and that a scenario's faults act on the wire as the
//! ground truth says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{
    ConnAck, Decoder, Packet, Properties, ProtocolVersion, PubAck, QoS, ReasonCode,
};
use ferrite_sim::{
    FaultKind, LiveOptions, Progress, Scenario, SimConfig, SimReport, TruthRecord, run, run_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bound on a whole run; runs take about a second.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Event {
    Connected {
        client: String,
        will: bool,
    },
    Published {
        client: String,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    },
    Closed {
        client: String,
        clean: bool,
    },
}

/// What the broker saw, and a signal on every new event.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Event>>,
    changed: tokio::sync::Notify,
    /// Client ids the broker refuses (CONNACK 0x87).
    refuse: Vec<String>,
    /// When set, CONNECTs are answered only in groups of the barrier's size, all at once: the
    /// broker proves that many connects were in progress together.
    connack_group: Option<Arc<tokio::sync::Barrier>>,
    /// CONNECTs received and not yet answered: now, and the most at once.
    connecting: Mutex<(usize, usize)>,
}

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap()
    }

    /// Wait until every connection the broker accepted has ended (the client's last
    /// DISCONNECT may be read after the run returns).
    async fn all_closed(&self) {
        tokio::time::timeout(LIMIT, async {
            loop {
                let changed = self.changed.notified();
                {
                    let events = self.lock();
                    let opened = events
                        .iter()
                        .filter(|e| matches!(e, Event::Connected { .. }))
                        .count();
                    let closed = events
                        .iter()
                        .filter(|e| matches!(e, Event::Closed { .. }))
                        .count();
                    if opened == closed {
                        return;
                    }
                }
                changed.await;
            }
        })
        .await
        .expect("every connection ends");
    }
}

type Log = Arc<Seen>;

async fn broker() -> (SocketAddr, Log) {
    broker_with(Seen::default()).await
}

async fn broker_with(seen: Seen) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::new(seen);
    let accept_log = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Arc::clone(&accept_log)));
        }
    });
    (addr, log)
}

async fn serve(mut stream: TcpStream, log: Log) {
    let mut decoder = Decoder::new(1 << 20);
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let mut client = String::new();
    let mut version = ProtocolVersion::V5;
    let push = |e: Event| {
        log.lock().push(e);
        log.changed.notify_waiters();
    };
    loop {
        let reply = match decoder.decode(&mut buf) {
            Err(_) => return,
            Ok(None) => {
                if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    push(Event::Closed {
                        client,
                        clean: false,
                    });
                    return;
                }
                continue;
            }
            Ok(Some(Packet::Connect(c))) => {
                client.clone_from(&c.client_id);
                version = c.protocol;
                {
                    let mut connecting = log.connecting.lock().unwrap();
                    connecting.0 += 1;
                    connecting.1 = connecting.1.max(connecting.0);
                }
                if let Some(group) = &log.connack_group {
                    // Held until the rest of its group has sent CONNECT too.
                    group.wait().await;
                }
                log.connecting.lock().unwrap().0 -= 1;
                if log.refuse.contains(&c.client_id) {
                    let refusal = Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: ReasonCode::NOT_AUTHORIZED,
                        properties: Properties::default(),
                    });
                    out.clear();
                    refusal.encode(version, &mut out).unwrap();
                    let _ = stream.write_all(&out).await;
                    return;
                }
                push(Event::Connected {
                    client: c.client_id,
                    will: c.will.is_some(),
                });
                Some(Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                }))
            }
            Ok(Some(Packet::Publish(p))) => {
                push(Event::Published {
                    client: client.clone(),
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos,
                    retain: p.retain,
                });
                p.packet_id.map(|packet_id| {
                    Packet::PubAck(PubAck {
                        packet_id,
                        reason_code: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    })
                })
            }
            Ok(Some(Packet::Disconnect(_))) => {
                push(Event::Closed {
                    client,
                    clean: true,
                });
                return;
            }
            Ok(Some(Packet::PingReq)) => Some(Packet::PingResp),
            Ok(Some(_)) => None,
        };
        if let Some(reply) = reply {
            out.clear();
            reply.encode(version, &mut out).unwrap();
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

fn published(log: &Log) -> Vec<(String, String, Bytes, QoS, bool)> {
    log.lock()
        .iter()
        .filter_map(|e| match e {
            Event::Published {
                client,
                topic,
                payload,
                qos,
                retain,
            } => Some((
                client.clone(),
                topic.clone(),
                payload.clone(),
                *qos,
                *retain,
            )),
            _ => None,
        })
        .collect()
}

async fn bounded(
    f: impl std::future::Future<Output = Result<SimReport, ferrite_sim::SimError>>,
) -> SimReport {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the run ends")
        .expect("the run succeeds")
}

#[tokio::test]
async fn the_classic_run_publishes_its_count_to_the_telemetry_topic() {
    let (addr, log) = broker().await;
    let config = SimConfig {
        server: addr,
        devices: 3,
        rate: Some(2000.0),
        count: Some(60),
        ..SimConfig::default()
    };
    let report = bounded(run(
        config,
        Arc::new(Progress::default()),
        CancellationToken::new(),
    ))
    .await;
    log.all_closed().await;
    assert_eq!((report.sent, report.acked, report.errors), (60, 60, 0));
    assert_eq!(
        report.measurements,
        BTreeMap::from([("telemetry".into(), 60)])
    );
    assert!(report.faults.is_empty());
    assert_eq!(report.config.scenario, None);
    let publishes = published(&log);
    assert_eq!(publishes.len(), 60);
    for (client, topic, payload, qos, _) in &publishes {
        assert_eq!(topic, &format!("devices/{client}/telemetry"));
        assert_eq!(*qos, QoS::AtLeastOnce);
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert!(v["temperature"].is_number());
    }
    let json = serde_json::to_value(&report).unwrap();
    for key in ["acked_per_s", "p50_ms", "p99_ms", "max_ms", "config"] {
        assert!(json.get(key).is_some(), "{key} in the report");
    }
}

const WIRE: &str = r#"
name = "wire"
description = "faults every few hundred milliseconds"
[devices]
id_prefix = "w"
[[measurements]]
name = "a"
fields = [{ name = "x", mean = 1.0, sd = 0.1, ar = [0.5], decimals = 3 }]
[[measurements]]
name = "b"
fields = [{ name = "y", type = "integer", mean = 5.0 }]
[faults]
offline = { per_day = 432000.0, duration_mean = "30ms", abrupt = 0.5, will = true }
duplicate = { probability = 0.1, retry_after = "5ms" }
delay = { probability = 0.1, distribution = "uniform", mean = "40ms" }
"#;

#[tokio::test]
async fn scenario_faults_act_on_the_wire_as_the_ground_truth_says() {
    let (addr, log) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.ndjson");
    let scenario = Scenario::from_toml(WIRE, "test").unwrap();
    let config = SimConfig {
        server: addr,
        devices: 4,
        rate: Some(800.0),
        count: Some(600),
        prefix: "w".into(),
        ..SimConfig::default()
    };
    let options = LiveOptions {
        scenario: Some(scenario),
        truth: Some(truth_path.clone()),
        clean: false,
        ..LiveOptions::default()
    };
    let progress = Arc::new(Progress::default());
    let report = bounded(run_with(
        config,
        options,
        Arc::clone(&progress),
        CancellationToken::new(),
    ))
    .await;
    assert_eq!((report.sent, report.acked, report.errors), (600, 600, 0));
    assert_eq!(report.measurements.values().sum::<u64>(), 600);
    assert_eq!(report.measurements.len(), 2);
    assert_eq!(report.truth.as_deref(), Some(truth_path.as_path()));
    assert_eq!(report.config.scenario.as_deref(), Some("wire"));

    let truth: Vec<TruthRecord> = std::fs::read_to_string(&truth_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut counts = ferrite_sim::FaultCounts::new();
    ferrite_sim::faults::count(&truth, &mut counts);
    assert_eq!(counts, report.faults);
    assert_eq!(
        progress.faults.load(std::sync::atomic::Ordering::Relaxed),
        truth.len() as u64
    );

    // Offline periods: every one closes the connection — abruptly or with DISCONNECT as
    // recorded — and the device comes back with its will.
    log.all_closed().await;
    let events = log.lock().clone();
    for device in (0..4).map(|i| format!("w{i}")) {
        let offline: Vec<&TruthRecord> = truth
            .iter()
            .filter(|r| r.device == device && r.kind == FaultKind::Offline)
            .collect();
        let connects = events
            .iter()
            .filter(|e| matches!(e, Event::Connected { client, will: true } if *client == device))
            .count();
        let abrupt = events
            .iter()
            .filter(|e| matches!(e, Event::Closed { client, clean: false } if *client == device))
            .count();
        let clean = events
            .iter()
            .filter(|e| matches!(e, Event::Closed { client, clean: true } if *client == device))
            .count();
        let recorded_abrupt = offline
            .iter()
            .filter(|r| r.detail.abrupt == Some(true))
            .count();
        assert_eq!(
            connects,
            1 + offline.len(),
            "{device} reconnects after each"
        );
        assert_eq!(abrupt, recorded_abrupt, "{device}: abrupt closes");
        assert_eq!(
            clean,
            offline.len() - recorded_abrupt + 1,
            "{device}: clean closes, and one at the end"
        );
    }
    let offline_records = truth.iter().filter(|r| r.kind == FaultKind::Offline);
    assert!(
        offline_records
            .clone()
            .any(|r| r.detail.abrupt == Some(true))
    );
    assert!(
        offline_records
            .clone()
            .any(|r| r.detail.abrupt == Some(false))
    );
    assert!(offline_records.clone().all(|r| r.detail.will == Some(true)));

    // Telemetry: flat JSON per measurement topic; duplicates repeat a payload exactly and
    // delayed readings arrive after newer ones, as recorded.
    let publishes = published(&log);
    let mut seen: HashMap<(String, String, Bytes), usize> = HashMap::new();
    let mut newest: HashMap<(String, String), i64> = HashMap::new();
    let mut late = Vec::new();
    let mut telemetry = 0;
    for (client, topic, payload, qos, retain) in &publishes {
        if topic.ends_with("/status") {
            assert!(*retain && *qos == QoS::AtMostOnce);
            continue;
        }
        telemetry += 1;
        assert_eq!(*qos, QoS::AtLeastOnce);
        let measurement = topic
            .strip_prefix(&format!("devices/{client}/telemetry/"))
            .unwrap();
        let point = ferrite_core::decode::decode_json(
            payload,
            &ferrite_core::DeviceId::new(client.clone()).unwrap(),
            &ferrite_core::Measurement::new(measurement).unwrap(),
            ferrite_core::Timestamp::from_nanos(0),
        )
        .unwrap();
        let ts = point.time.as_nanos();
        *seen
            .entry((client.clone(), topic.clone(), payload.clone()))
            .or_default() += 1;
        let key = (client.clone(), measurement.to_owned());
        match newest.get(&key) {
            Some(&n) if n > ts => late.push((client.clone(), ts)),
            _ => {
                newest.insert(key, ts);
            }
        }
    }
    assert_eq!(telemetry, 600);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n == 2).collect();
    assert!(!twice.is_empty(), "some duplicates were sent");
    assert!(seen.values().all(|n| *n <= 2));
    let ts_of = |payload: &Bytes| -> i64 {
        serde_json::from_slice::<serde_json::Value>(payload).unwrap()["ts"]
            .as_i64()
            .unwrap()
    };
    for ((client, _, payload), _) in &twice {
        let ts = ts_of(payload);
        assert!(
            truth
                .iter()
                .any(|r| r.kind == FaultKind::Duplicate && r.device == *client && r.start_ns == ts),
            "a repeated payload is a recorded duplicate"
        );
    }
    assert!(!late.is_empty(), "some readings arrived late");
    for (client, ts) in &late {
        assert!(
            truth.iter().any(
                |r| (r.kind == FaultKind::Delay || r.kind == FaultKind::Duplicate)
                    && r.device == *client
                    && r.start_ns == *ts
            ),
            "a late reading is a recorded delay (or a retry)"
        );
    }
}

#[tokio::test]
async fn a_scenario_at_maximum_rate_and_without_faults_publishes_its_count() {
    let (addr, log) = broker().await;
    let config = SimConfig {
        server: addr,
        devices: 2,
        rate: None,
        count: Some(300),
        prefix: "truck_".into(),
        version: ProtocolVersion::V311,
        window: 8,
        ..SimConfig::default()
    };
    let options = LiveOptions {
        scenario: Some(Scenario::builtin("fleet_trucks").unwrap()),
        truth: None,
        clean: true,
        ..LiveOptions::default()
    };
    let report = bounded(run_with(
        config,
        options,
        Arc::new(Progress::default()),
        CancellationToken::new(),
    ))
    .await;
    assert_eq!((report.sent, report.acked, report.errors), (300, 300, 0));
    assert!(report.faults.is_empty());
    assert!(!report.config.faults);
    let publishes = published(&log);
    assert_eq!(publishes.len(), 300, "no status messages without faults");
    let readings = publishes
        .iter()
        .filter(|p| p.1.ends_with("/telemetry/readings"))
        .count();
    let diagnostics = publishes
        .iter()
        .filter(|p| p.1.ends_with("/telemetry/diagnostics"))
        .count();
    assert_eq!(readings + diagnostics, 300);
    assert!(readings.abs_diff(diagnostics) <= 2, "one of each per tick");
    assert!(
        log.lock()
            .iter()
            .all(|e| !matches!(e, Event::Connected { will: true, .. }))
    );
}

#[tokio::test]
async fn no_server_is_a_connect_error() {
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = SimConfig {
        server: addr,
        devices: 2,
        count: Some(1),
        ..SimConfig::default()
    };
    let options = LiveOptions {
        scenario: Some(Scenario::builtin("smart_building").unwrap()),
        ..LiveOptions::default()
    };
    let err = tokio::time::timeout(
        LIMIT,
        run_with(
            config,
            options,
            Arc::new(Progress::default()),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(err, ferrite_sim::SimError::Connect { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn connect_only_holds_every_connection_then_leaves_and_reports_the_storm() {
    let (addr, log) = broker_with(Seen {
        refuse: vec!["c1".to_owned()],
        connack_group: Some(Arc::new(tokio::sync::Barrier::new(2))),
        ..Seen::default()
    })
    .await;
    let config = SimConfig {
        server: addr,
        devices: 6,
        prefix: "c".into(),
        ..SimConfig::default()
    };
    let options = LiveOptions {
        connect_only: true,
        connect_concurrency: 2,
        ..LiveOptions::default()
    };
    let progress = Arc::new(Progress::default());
    let report = bounded(run_with(
        config,
        options,
        Arc::clone(&progress),
        CancellationToken::new(),
    ))
    .await;
    log.all_closed().await;
    let storm = report.connect.clone().expect("connect figures");
    assert_eq!((storm.attempted, storm.connected), (6, 5));
    assert_eq!(
        storm.refused,
        BTreeMap::from([("Not authorized (0x87)".to_owned(), 1)])
    );
    assert!(storm.failed.is_empty(), "{storm:?}");
    assert_eq!(storm.concurrency, 2);
    // Three rounds of two CONNACKs, each answered only once both CONNECTs were in: the run
    // ending at all proves two connects were in progress together.
    assert!(storm.storm_s > 0.0, "{storm:?}");
    assert!(storm.p50_ms > 0.0 && storm.p99_ms >= storm.p50_ms && storm.max_ms >= storm.p99_ms);
    assert_eq!(
        log.connecting.lock().unwrap().1,
        2,
        "at most --connect-concurrency connections in progress"
    );
    assert_eq!((report.sent, report.acked, report.errors), (0, 0, 1));
    assert!(report.config.connect_only);
    assert_eq!(
        progress
            .connected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Every accepted device was connected at once — all connects before the first close —
    // and each left with DISCONNECT; nothing was published.
    let events = log.lock().clone();
    let first_close = events
        .iter()
        .position(|e| matches!(e, Event::Closed { .. }))
        .unwrap();
    let connects: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Connected { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(connects.len(), 5);
    assert!(connects.iter().all(|i| *i < first_close), "{events:?}");
    assert!(events.iter().all(|e| !matches!(e, Event::Published { .. })));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Closed { clean: true, .. }))
            .count(),
        5
    );
}

#[tokio::test]
async fn a_publishing_run_reports_its_connect_storm_too() {
    let (addr, _log) = broker().await;
    let config = SimConfig {
        server: addr,
        devices: 3,
        count: Some(30),
        rate: Some(3000.0),
        ..SimConfig::default()
    };
    let report = bounded(run(
        config,
        Arc::new(Progress::default()),
        CancellationToken::new(),
    ))
    .await;
    let storm = report.connect.expect("connect figures");
    assert_eq!((storm.attempted, storm.connected), (3, 3));
    assert!(storm.refused.is_empty() && storm.failed.is_empty());
    assert!(report.provisioning.is_none() && report.http.is_none());
    assert!(!report.config.authenticated);
}
