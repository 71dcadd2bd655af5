//! The gateway alone, over real TCP: malformed input closes the connection with the right
//! reason and never takes the server down; durable internal consumers gate the PUBACK; the
//! authenticator's guard decides every publish and subscription and can end a session;
//! persistent sessions keep subscriptions, queue while offline, resend what was in flight,
//! expire, and delay wills; QoS 2 flows both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferrite_core::{SystemClock, TopicFilter};
use ferrite_mqtt::{
    AnonymousLoopback, Authenticator, ConnectRequest, MqttConfig, MqttServer, Router, SessionGuard,
    Verdict,
};
use ferrite_mqtt_codec::{
    Connect, Decoder, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
static NEXT_CLIENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn start(router: Router) -> (MqttServer, CancellationToken) {
    start_with(
        router,
        Arc::new(AnonymousLoopback {
            allow_remote: false,
        }),
    )
    .await
}

async fn start_with(
    router: Router,
    auth: Arc<dyn Authenticator>,
) -> (MqttServer, CancellationToken) {
    start_full(MqttConfig::default(), router, auth).await
}

/// A gateway with `config` (on a free loopback port), `router` and `auth`.
async fn start_full(
    config: MqttConfig,
    router: Router,
    auth: Arc<dyn Authenticator>,
) -> (MqttServer, CancellationToken) {
    let config = MqttConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    };
    let shutdown = CancellationToken::new();
    let server = MqttServer::start(
        config,
        router,
        auth,
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (server, shutdown)
}

struct Raw {
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
}

impl Raw {
    async fn connect(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let id = format!(
            "raw-{}",
            NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Self::connect_as(addr, version, &id, None).await
    }

    /// Connect as `client_id`, with `password` (user name = client id) if given.
    async fn connect_as(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        password: Option<&[u8]>,
    ) -> Self {
        let connect = Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 30,
            client_id: client_id.to_owned(),
            will: None,
            username: password.map(|_| client_id.to_owned()),
            password: password.map(|p| p.to_vec().into()),
            properties: Properties::default(),
        };
        let (raw, ack) = Self::open(addr, connect).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        raw
    }

    /// Send `connect` and return the CONNACK.
    async fn open(addr: SocketAddr, connect: Connect) -> (Self, ferrite_mqtt_codec::ConnAck) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let version = connect.protocol;
        let mut decoder = Decoder::new(1 << 20);
        decoder.set_version(version);
        let mut raw = Self {
            stream,
            rbuf: BytesMut::new(),
            decoder,
            version,
        };
        raw.send(&Packet::Connect(connect)).await;
        match raw.next().await {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        let mut buf = BytesMut::new();
        p.encode(self.version, &mut buf).unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    /// The next packet, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.decoder.decode(&mut self.rbuf).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("server answers or closes in time")
    }
}

#[tokio::test]
async fn malformed_packet_gets_disconnect_0x81_and_server_survives() {
    let (server, shutdown) = start(Router::new(100)).await;
    let mut raw = Raw::connect(server.local_addr(), ProtocolVersion::V5).await;
    // PUBLISH with QoS 3: malformed.
    raw.stream.write_all(&[0x36, 0x00]).await.unwrap();
    match raw.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::MALFORMED_PACKET),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(
        raw.next().await.is_none(),
        "connection closed after DISCONNECT"
    );

    // MQTT 3.1.1 has no DISCONNECT from the server: the connection just closes.
    let mut raw = Raw::connect(server.local_addr(), ProtocolVersion::V311).await;
    raw.stream.write_all(&[0xF0, 0x00]).await.unwrap(); // AUTH does not exist in 3.1.1
    assert!(raw.next().await.is_none());

    // The server still serves others.
    let mut ok = Raw::connect(server.local_addr(), ProtocolVersion::V5).await;
    ok.send(&Packet::PingReq).await;
    assert_eq!(ok.next().await, Some(Packet::PingResp));
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn oversized_packet_gets_disconnect_0x95() {
    let (server, shutdown) = start(Router::new(100)).await;
    let mut raw = Raw::connect(server.local_addr(), ProtocolVersion::V5).await;
    // Announce a 100 MiB PUBLISH; the server refuses before reading (or allocating) it.
    raw.stream
        .write_all(&[0x30, 0x80, 0x80, 0x80, 0x32])
        .await
        .unwrap();
    match raw.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn first_packet_must_be_connect_and_old_protocols_are_refused() {
    let (server, shutdown) = start(Router::new(100)).await;
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    s.write_all(&[0xC0, 0x00]).await.unwrap(); // PINGREQ before CONNECT
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed without an answer");

    // MQTT 3.1 ("MQIsdp", level 3): CONNACK return code 1, then close.
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut connect = vec![0x10, 0x11, 0x00, 0x06];
    connect.extend_from_slice(b"MQIsdp");
    connect.extend_from_slice(&[0x03, 0x02, 0x00, 0x3C, 0x00, 0x03]);
    connect.extend_from_slice(b"old");
    s.write_all(&connect).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![0x20, 0x02, 0x00, 0x01]);
    shutdown.cancel();
    server.wait().await;
}

#[tokio::test]
async fn puback_waits_for_the_durable_consumer_and_carries_its_verdict() {
    let router = Router::new(100);
    let mut rx = router.subscribe_internal(&[TopicFilter::new("store/#").unwrap()], 8, true);
    let (server, shutdown) = start(router).await;
    let mut raw = Raw::connect(server.local_addr(), ProtocolVersion::V5).await;
    let publish = |id: u16, payload: &'static str| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "store/x".into(),
            packet_id: Some(id),
            properties: Properties::default(),
            payload: payload.into(),
        })
    };
    raw.send(&publish(1, "good")).await;
    raw.send(&publish(2, "bad")).await;
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Nothing is acknowledged before the consumer settles, and acks keep publish order even
    // when the second is settled first.
    second.settle(Verdict::Rejected(
        ReasonCode::PAYLOAD_FORMAT_INVALID,
        "bad".into(),
    ));
    let early = tokio::time::timeout(Duration::from_millis(200), raw.next()).await;
    assert!(
        early.is_err(),
        "no PUBACK before the first publish is settled: {early:?}"
    );
    first.settle(Verdict::Accepted);
    match (raw.next().await, raw.next().await) {
        (Some(Packet::PubAck(a)), Some(Packet::PubAck(b))) => {
            assert_eq!((a.packet_id, a.reason_code), (1, ReasonCode::SUCCESS));
            assert_eq!(
                (b.packet_id, b.reason_code),
                (2, ReasonCode::PAYLOAD_FORMAT_INVALID)
            );
            assert_eq!(b.properties.reason_string.as_deref(), Some("bad"));
        }
        other => panic!("expected two PUBACKs, got {other:?}"),
    }
    shutdown.cancel();
    server.wait().await;
}

impl Raw {
    async fn subscribe(&mut self, filter: &str) {
        self.send(&Packet::Subscribe(ferrite_mqtt_codec::Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.to_owned(),
                ferrite_mqtt_codec::SubscriptionOptions::default(),
            )],
            properties: Properties::default(),
        }))
        .await;
        match self.next().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, vec![ReasonCode::SUCCESS]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn payloads(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next().await {
                Some(Packet::Publish(p)) => {
                    out.push(String::from_utf8(p.payload.to_vec()).unwrap())
                }
                Some(_) => {}
                None => panic!("connection closed after {} of {n} messages", out.len()),
            }
        }
        out
    }
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    let mut a = Raw::connect(addr, ProtocolVersion::V5).await;
    let mut b = Raw::connect(addr, ProtocolVersion::V311).await;
    let mut all = Raw::connect(addr, ProtocolVersion::V5).await;
    a.subscribe("$share/workers/jobs/#").await;
    b.subscribe("$share/workers/jobs/#").await;
    all.subscribe("jobs/#").await;
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    for i in 0..10 {
        publisher
            .send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "jobs/x".into(),
                packet_id: None,
                properties: Properties::default(),
                payload: format!("{i}").into(),
            }))
            .await;
    }
    let everything = all.payloads(10).await;
    assert_eq!(
        everything,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    // Round robin over two members with room in their queues: five each, none twice.
    let mut shared = a.payloads(5).await;
    shared.extend(b.payloads(5).await);
    shared.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(shared, everything);

    // Invalid shared filters are refused in the SUBACK.
    a.send(&Packet::Subscribe(ferrite_mqtt_codec::Subscribe {
        packet_id: 2,
        filters: vec![
            (
                "$share//jobs".to_owned(),
                ferrite_mqtt_codec::SubscriptionOptions::default(),
            ),
            (
                "$share/g+/jobs".to_owned(),
                ferrite_mqtt_codec::SubscriptionOptions::default(),
            ),
            (
                "$share/g".to_owned(),
                ferrite_mqtt_codec::SubscriptionOptions::default(),
            ),
        ],
        properties: Properties::default(),
    }))
    .await;
    match a.next().await {
        Some(Packet::SubAck(s)) => {
            assert_eq!(s.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID; 3])
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    shutdown.cancel();
    server.wait().await;
}

/// A guard that allows a client only its own `devices/{client id}/` namespace, records its
/// connection events, and can be revoked from the test.
struct OwnNamespace {
    id: String,
    revoked: CancellationToken,
    events: Arc<std::sync::Mutex<Vec<String>>>,
}

impl SessionGuard for OwnNamespace {
    fn principal(&self) -> &str {
        &self.id
    }
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with(&format!("devices/{}/", self.id))
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with(&format!("devices/{}/", self.id))
    }
    fn revoked(&self) -> CancellationToken {
        self.revoked.clone()
    }
    fn connected(&self, connection: u64, _peer: SocketAddr) {
        self.events
            .lock()
            .unwrap()
            .push(format!("up {} {connection}", self.id));
    }
    fn disconnected(&self, connection: u64, reason: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("down {} {connection} {reason}", self.id));
    }
}

#[derive(Default)]
struct Namespaces {
    revoke: std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>,
    events: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Authenticator for Namespaces {
    fn authenticate(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn SessionGuard>, ReasonCode> {
        if request.password != Some(b"secret".as_slice()) {
            return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        }
        let revoked = CancellationToken::new();
        self.revoke
            .lock()
            .unwrap()
            .insert(request.client_id.to_owned(), revoked.clone());
        Ok(Arc::new(OwnNamespace {
            id: request.client_id.to_owned(),
            revoked,
            events: Arc::clone(&self.events),
        }))
    }
}

async fn connect_with_password(addr: SocketAddr, version: ProtocolVersion, id: &str) -> Raw {
    Raw::connect_as(addr, version, id, Some(b"secret")).await
}

fn publish(topic: &str, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.to_owned(),
        packet_id: Some(id),
        payload: bytes::Bytes::from_static(b"x"),
        properties: Properties::default(),
    })
}

fn subscribe(filter: &str, id: u16) -> Packet {
    Packet::Subscribe(ferrite_mqtt_codec::Subscribe {
        packet_id: id,
        filters: vec![(
            filter.to_owned(),
            ferrite_mqtt_codec::SubscriptionOptions::default(),
        )],
        properties: Properties::default(),
    })
}

#[tokio::test]
async fn the_guard_decides_publishes_and_subscriptions_with_each_versions_answer() {
    let auth = Arc::new(Namespaces::default());
    let (server, shutdown) = start_with(Router::new(100), auth.clone()).await;
    let addr = server.local_addr();
    for (version, denied_sub) in [
        (ProtocolVersion::V5, ReasonCode::NOT_AUTHORIZED),
        (ProtocolVersion::V311, ReasonCode::UNSPECIFIED_ERROR),
    ] {
        let id = format!("dev{}", version as u8);
        let mut c = connect_with_password(addr, version, &id).await;
        c.send(&subscribe(&format!("devices/{id}/#"), 1)).await;
        match c.next().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, [ReasonCode::SUCCESS]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        c.send(&subscribe("devices/+/telemetry", 2)).await;
        match c.next().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, [denied_sub]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        // Denied publish: 0x87 for MQTT 5, a plain PUBACK for 3.1.1; never delivered.
        c.send(&publish("devices/other/telemetry", 3)).await;
        match c.next().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.packet_id, 3);
                let expected = if version == ProtocolVersion::V5 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode::SUCCESS
                };
                assert_eq!(a.reason_code, expected);
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
        // An allowed publish comes back through the client's own subscription.
        c.send(&publish(&format!("devices/{id}/telemetry"), 4))
            .await;
        let mut got_ack = false;
        let mut got_message = false;
        while !(got_ack && got_message) {
            match c.next().await {
                Some(Packet::PubAck(a)) if a.packet_id == 4 => got_ack = true,
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.topic, format!("devices/{id}/telemetry"));
                    got_message = true;
                    if let Some(pid) = p.packet_id {
                        c.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck {
                            packet_id: pid,
                            reason_code: ReasonCode::SUCCESS,
                            properties: Properties::default(),
                        }))
                        .await;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(
        server
            .stats()
            .publishes_denied
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // Revocation ends a live session at once with 0x87.
    let mut c = connect_with_password(addr, ProtocolVersion::V5, "victim").await;
    auth.revoke.lock().unwrap()["victim"].cancel();
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(c.next().await.is_none());
    let events = auth.events.lock().unwrap().clone();
    let up = events.iter().find(|e| e.starts_with("up victim")).unwrap();
    let conn: u64 = up.rsplit(' ').next().unwrap().parse().unwrap();
    // The disconnect hook may run just after the socket closed: wait for it.
    tokio::time::timeout(WAIT, async {
        loop {
            if auth
                .events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e == &format!("down victim {conn} credentials revoked"))
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("disconnect hook runs");
    shutdown.cancel();
}

/// A CONNECT for a persistent session (MQTT 5: Session Expiry Interval `expiry` seconds).
fn persistent(version: ProtocolVersion, client_id: &str, expiry: u32) -> Connect {
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        properties.session_expiry_interval = Some(expiry);
    }
    Connect {
        protocol: version,
        clean_start: false,
        keep_alive: 30,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties,
    }
}

fn subscribe_qos(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(ferrite_mqtt_codec::Subscribe {
        packet_id: 7,
        filters: vec![(
            filter.to_owned(),
            ferrite_mqtt_codec::SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    })
}

fn publish_qos(topic: &str, id: u16, qos: QoS, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        payload: bytes::Bytes::from_static(payload),
        properties: Properties::default(),
    })
}

impl Raw {
    /// Publish at QoS 1 and return the PUBACK's reason code.
    async fn publish_acked(&mut self, topic: &str, id: u16, payload: &'static [u8]) -> ReasonCode {
        self.send(&publish_qos(topic, id, QoS::AtLeastOnce, payload))
            .await;
        match self.next().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.packet_id, id);
                a.reason_code
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    async fn expect_publish(&mut self) -> Publish {
        match self.next().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(ferrite_mqtt_codec::Disconnect::new(
            ReasonCode::SUCCESS,
        )))
        .await;
        assert!(
            self.next().await.is_none(),
            "server closes after DISCONNECT"
        );
    }
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscriptions_and_queues_while_offline() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let id = format!("keeper-{version:?}");
        let (mut sub, ack) = Raw::open(addr, persistent(version, &id, 60)).await;
        assert!(!ack.session_present, "{version:?}: a new session");
        sub.send(&subscribe_qos("queue/#", QoS::AtLeastOnce)).await;
        assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
        sub.disconnect().await;
        assert_eq!(server.parked_sessions(), 1, "{version:?}");

        for (i, payload) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
            let code = publisher
                .publish_acked("queue/a", 10 + i as u16, payload)
                .await;
            assert_eq!(code, ReasonCode::SUCCESS, "the offline session matches");
        }
        let (mut sub, ack) = Raw::open(addr, persistent(version, &id, 60)).await;
        assert!(ack.session_present, "{version:?}: the session is resumed");
        let mut got = Vec::new();
        for _ in 0..3 {
            let p = sub.expect_publish().await;
            assert_eq!(p.qos, QoS::AtLeastOnce);
            got.push(p.payload.clone());
            sub.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck::new(
                p.packet_id.unwrap(),
            )))
            .await;
        }
        assert_eq!(
            got,
            [&b"one"[..], b"two", b"three"],
            "{version:?}: in order"
        );
        // Still subscribed without subscribing again.
        publisher.publish_acked("queue/b", 20, b"live").await;
        assert_eq!(sub.expect_publish().await.payload, &b"live"[..]);
        drop(sub);

        // Clean Start ends the session: nothing is subscribed any more.
        let mut clean = persistent(version, &id, 0);
        clean.clean_start = true;
        let (fresh, ack) = Raw::open(addr, clean).await;
        assert!(!ack.session_present, "{version:?}");
        let code = publisher.publish_acked("queue/c", 30, b"gone").await;
        assert_eq!(code, ReasonCode::NO_MATCHING_SUBSCRIBERS, "{version:?}");
        fresh.disconnect().await;
    }
    assert_eq!(server.parked_sessions(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn unacknowledged_deliveries_are_resent_with_dup_on_resume() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    let (mut sub, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "resender", 60)).await;
    sub.send(&subscribe_qos("r/#", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    publisher.publish_acked("r/1", 1, b"first").await;
    let first = sub.expect_publish().await;
    assert!(!first.dup);
    // The connection drops before the client acknowledges.
    drop(sub);
    let (mut sub, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "resender", 60)).await;
    assert!(ack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup, "a resend carries DUP");
    assert_eq!(again.packet_id, first.packet_id, "with the same packet id");
    assert_eq!(again.payload, first.payload);
    sub.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck::new(
        again.packet_id.unwrap(),
    )))
    .await;
    drop(sub);
    // Acknowledged now: the next resume resends nothing; a live message comes first.
    let (mut sub, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "resender", 60)).await;
    publisher.publish_acked("r/2", 2, b"second").await;
    let next = sub.expect_publish().await;
    assert_eq!(next.payload, &b"second"[..]);
    assert!(!next.dup);
    shutdown.cancel();
}

#[tokio::test]
async fn qos2_is_delivered_exactly_once_through_pubrec_pubrel_pubcomp() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let id = format!("exactly-{version:?}");
        let (mut sub, _) = Raw::open(addr, persistent(version, &id, 60)).await;
        sub.send(&subscribe_qos("q2/#", QoS::ExactlyOnce)).await;
        match sub.next().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, [ReasonCode(2)], "QoS 2 granted"),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        // Inbound QoS 2 from the publisher: PUBREC, PUBREL, PUBCOMP.
        publisher
            .send(&publish_qos("q2/x", 5, QoS::ExactlyOnce, b"once"))
            .await;
        assert!(matches!(publisher.next().await, Some(Packet::PubRec(a)) if a.packet_id == 5));
        publisher
            .send(&Packet::PubRel(ferrite_mqtt_codec::PubAck::new(5)))
            .await;
        assert!(matches!(publisher.next().await, Some(Packet::PubComp(a)) if a.packet_id == 5));

        let p = sub.expect_publish().await;
        assert_eq!(p.qos, QoS::ExactlyOnce, "{version:?}");
        let pid = p.packet_id.unwrap();
        sub.send(&Packet::PubRec(ferrite_mqtt_codec::PubAck::new(pid)))
            .await;
        assert!(matches!(sub.next().await, Some(Packet::PubRel(a)) if a.packet_id == pid));
        // Lost before PUBCOMP: the resumed session releases again instead of resending.
        drop(sub);
        let (mut sub, ack) = Raw::open(addr, persistent(version, &id, 60)).await;
        assert!(ack.session_present);
        assert!(
            matches!(sub.next().await, Some(Packet::PubRel(a)) if a.packet_id == pid),
            "{version:?}: PUBREL resent, not the message"
        );
        sub.send(&Packet::PubComp(ferrite_mqtt_codec::PubAck::new(pid)))
            .await;
        publisher
            .send(&publish_qos("q2/y", 6, QoS::AtLeastOnce, b"after"))
            .await;
        assert!(matches!(publisher.next().await, Some(Packet::PubAck(_))));
        let p = sub.expect_publish().await;
        assert_eq!(
            p.payload,
            &b"after"[..],
            "{version:?}: no duplicate of the QoS 2 message"
        );
        sub.disconnect().await;
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_delayed_will_waits_and_is_dropped_when_the_client_returns() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    let mut watcher = Raw::connect(addr, ProtocolVersion::V5).await;
    watcher.subscribe("wills/#").await;
    let with_will = |id: &str, delay: u32, expiry: u32| {
        let mut c = persistent(ProtocolVersion::V5, id, expiry);
        let properties = Properties {
            will_delay_interval: Some(delay),
            ..Default::default()
        };
        c.will = Some(ferrite_mqtt_codec::Will {
            topic: format!("wills/{id}"),
            payload: bytes::Bytes::from(id.to_owned()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties,
        });
        c
    };

    // Lost connection, will delay 1 s: the will comes, but not before the delay.
    let (dev, _) = Raw::open(addr, with_will("late", 1, 60)).await;
    let lost_at = std::time::Instant::now();
    drop(dev);
    let will = watcher.expect_publish().await;
    assert_eq!(will.payload, &b"late"[..]);
    assert!(
        lost_at.elapsed() >= Duration::from_millis(900),
        "published after its delay"
    );

    // The session ends (expiry 1 s) before the will delay (60 s): the will goes at expiry,
    // and the session is gone.
    let (dev, _) = Raw::open(addr, with_will("expiring", 60, 1)).await;
    drop(dev);
    assert_eq!(watcher.expect_publish().await.payload, &b"expiring"[..]);
    let (back, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "expiring", 60)).await;
    assert!(!ack.session_present, "the session expired");
    back.disconnect().await;

    // The client returns within the delay: no will, ever.
    let (dev, _) = Raw::open(addr, with_will("returning", 1, 60)).await;
    drop(dev);
    let (back, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "returning", 60)).await;
    assert!(ack.session_present);
    let quiet = tokio::time::timeout(Duration::from_millis(1500), watcher.next()).await;
    assert!(
        quiet.is_err(),
        "no will after the client came back: {quiet:?}"
    );
    back.disconnect().await;
    shutdown.cancel();
}

#[tokio::test]
async fn sessions_queues_inflight_state_and_retained_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mqtt").join("sessions.redb");
    let router = Router::durable(100, &path).unwrap();
    let (server, shutdown) = start(router.clone()).await;
    let addr = server.local_addr();
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;

    // An offline MQTT 5 session with a QoS 1 and a QoS 2 subscription.
    let (mut keeper, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "keeper", 300)).await;
    keeper.send(&subscribe_qos("d/#", QoS::AtLeastOnce)).await;
    assert!(matches!(keeper.next().await, Some(Packet::SubAck(_))));
    keeper.send(&subscribe_qos("x/#", QoS::ExactlyOnce)).await;
    assert!(matches!(keeper.next().await, Some(Packet::SubAck(_))));
    keeper.disconnect().await;
    assert_eq!(
        publisher.publish_acked("d/1", 1, b"queued").await,
        ReasonCode::SUCCESS
    );
    // A retained message.
    publisher
        .send(&Packet::Publish(Publish {
            retain: true,
            ..match publish_qos("r/1", 2, QoS::AtLeastOnce, b"kept") {
                Packet::Publish(p) => p,
                _ => unreachable!(),
            }
        }))
        .await;
    assert!(matches!(publisher.next().await, Some(Packet::PubAck(_))));
    // An MQTT 3.1.1 session holding a delivery it has not acknowledged.
    let (mut inflight, _) = Raw::open(addr, persistent(ProtocolVersion::V311, "unacked", 0)).await;
    inflight.send(&subscribe_qos("f/#", QoS::AtLeastOnce)).await;
    assert!(matches!(inflight.next().await, Some(Packet::SubAck(_))));
    publisher.publish_acked("f/1", 3, b"in flight").await;
    let sent = inflight.expect_publish().await;
    // An inbound QoS 2 publish taken (PUBREC) but not yet released.
    let (mut p2, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "p2", 300)).await;
    p2.send(&publish_qos("x/1", 9, QoS::ExactlyOnce, b"exactly once"))
        .await;
    assert!(matches!(p2.next().await, Some(Packet::PubRec(a)) if a.packet_id == 9));

    shutdown.cancel();
    server.wait().await;
    drop((publisher, inflight, p2));
    let second = Router::durable(100, &path);
    assert!(
        second.is_err_and(|e| e.to_string().contains("already open")),
        "one gateway at a time"
    );
    router.close_store().await;
    drop(server);
    let (server, shutdown) = start(Router::durable(100, &path).unwrap()).await;
    let addr = server.local_addr();
    assert_eq!(
        server
            .stats()
            .sessions_restored
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(server.parked_sessions(), 3);

    let (mut keeper, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "keeper", 300)).await;
    assert!(ack.session_present, "the session came back from disk");
    let first = keeper.expect_publish().await;
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("d/1", &b"queued"[..])
    );
    keeper
        .send(&Packet::PubAck(ferrite_mqtt_codec::PubAck::new(
            first.packet_id.unwrap(),
        )))
        .await;
    let second = keeper.expect_publish().await;
    assert_eq!(
        (second.topic.as_str(), second.qos),
        ("x/1", QoS::ExactlyOnce)
    );

    let (mut inflight, ack) =
        Raw::open(addr, persistent(ProtocolVersion::V311, "unacked", 0)).await;
    assert!(ack.session_present);
    let again = inflight.expect_publish().await;
    assert!(again.dup, "resent with DUP");
    assert_eq!(again.packet_id, sent.packet_id, "with the packet id it had");
    assert_eq!(again.payload, sent.payload);

    // The QoS 2 publisher resends: acknowledged, not routed a second time.
    let (mut p2, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "p2", 300)).await;
    assert!(ack.session_present);
    p2.send(&Packet::Publish(Publish {
        dup: true,
        ..match publish_qos("x/1", 9, QoS::ExactlyOnce, b"exactly once") {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }))
    .await;
    assert!(matches!(p2.next().await, Some(Packet::PubRec(a)) if a.packet_id == 9));
    p2.send(&Packet::PubRel(ferrite_mqtt_codec::PubAck::new(9)))
        .await;
    assert!(
        matches!(p2.next().await, Some(Packet::PubComp(a)) if a.packet_id == 9 && a.reason_code == ReasonCode::SUCCESS)
    );
    keeper
        .send(&Packet::PubRec(ferrite_mqtt_codec::PubAck::new(
            second.packet_id.unwrap(),
        )))
        .await;
    assert!(matches!(keeper.next().await, Some(Packet::PubRel(_))));
    keeper
        .send(&Packet::PubComp(ferrite_mqtt_codec::PubAck::new(
            second.packet_id.unwrap(),
        )))
        .await;
    p2.publish_acked("x/2", 10, b"marker").await;
    let next = keeper.expect_publish().await;
    assert_eq!(
        next.payload,
        &b"marker"[..],
        "no duplicate of the QoS 2 message"
    );

    // The retained message is there for a new subscriber.
    let mut fresh = Raw::connect(addr, ProtocolVersion::V5).await;
    fresh.send(&subscribe_qos("r/#", QoS::AtLeastOnce)).await;
    assert!(matches!(fresh.next().await, Some(Packet::SubAck(_))));
    let retained = fresh.expect_publish().await;
    assert!(retained.retain);
    assert_eq!(retained.payload, &b"kept"[..]);
    shutdown.cancel();
}

/// A CONNECT with a retained QoS 1 will on `wills/{id}` after `delay` seconds; `expiry`
/// seconds of session (0: the session ends with the connection).
fn with_retained_will(id: &str, delay: u32, expiry: u32) -> Connect {
    let mut c = persistent(ProtocolVersion::V5, id, expiry);
    c.clean_start = expiry == 0;
    c.will = Some(ferrite_mqtt_codec::Will {
        topic: format!("wills/{id}"),
        payload: bytes::Bytes::from(id.to_owned()),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    });
    c
}

#[tokio::test]
async fn wills_owed_at_a_restart_are_published_after_it_unless_the_client_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mqtt").join("sessions.redb");
    let router = Router::durable(100, &path).unwrap();
    let (server, shutdown) = start(router.clone()).await;
    let addr = server.local_addr();
    // Connected when the gateway stops: a clean session with an immediate will, a
    // persistent one whose will waits 1 s, a persistent one whose client comes back within
    // its 2 s delay; and a client that disconnected normally, whose will is not owed.
    let (a, _) = Raw::open(addr, with_retained_will("a", 0, 0)).await;
    let (b, _) = Raw::open(addr, with_retained_will("b", 1, 300)).await;
    let (c, _) = Raw::open(addr, with_retained_will("c", 2, 300)).await;
    let (d, _) = Raw::open(addr, with_retained_will("d", 0, 0)).await;
    d.disconnect().await;
    shutdown.cancel();
    server.wait().await;
    drop((a, b, c));
    router.close_store().await;
    drop(server);

    let router = Router::durable(100, &path).unwrap();
    let restarted_at = std::time::Instant::now();
    let (server, shutdown) = start(router.clone()).await;
    let addr = server.local_addr();
    let stats = server.stats();
    assert_eq!(
        stats
            .sessions_restored
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        stats
            .wills_restored
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the clean session's will"
    );
    let (c, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "c", 300)).await;
    assert!(ack.session_present, "c's session came back from disk");
    let mut watcher = Raw::connect(addr, ProtocolVersion::V5).await;
    watcher.subscribe("wills/#").await;
    // Retained wills: each arrives whether it was published before or after the subscribe.
    let mut got = Vec::new();
    for _ in 0..2 {
        let will = watcher.expect_publish().await;
        got.push(String::from_utf8(will.payload.to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["a", "b"]);
    assert!(
        restarted_at.elapsed() >= Duration::from_millis(900),
        "b's will waited for its delay"
    );
    // c came back within its delay: its will never comes (it would have by now + 2 s).
    let quiet = tokio::time::timeout(
        Duration::from_millis(2500).saturating_sub(restarted_at.elapsed()),
        watcher.next(),
    )
    .await;
    assert!(quiet.is_err(), "no will for c or d: {quiet:?}");
    c.disconnect().await;
    shutdown.cancel();
    server.wait().await;
    drop(watcher);
    router.close_store().await;
    drop(server);

    // Published or dropped, none of them is owed any more.
    let (server, shutdown) = start(Router::durable(100, &path).unwrap()).await;
    assert_eq!(
        server
            .stats()
            .wills_restored
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let mut watcher = Raw::connect(server.local_addr(), ProtocolVersion::V5).await;
    watcher.subscribe("wills/#").await;
    for _ in 0..2 {
        // Only the retained copies of a and b, once each.
        let will = watcher.expect_publish().await;
        assert!(will.retain && ["a", "b"].contains(&&*String::from_utf8_lossy(&will.payload)));
    }
    let quiet = tokio::time::timeout(Duration::from_millis(1500), watcher.next()).await;
    assert!(quiet.is_err(), "no will published again: {quiet:?}");
    shutdown.cancel();
}

/// A gateway with `config`, anonymous loopback clients allowed.
async fn start_config(config: MqttConfig, router: Router) -> (MqttServer, CancellationToken) {
    let auth = Arc::new(AnonymousLoopback {
        allow_remote: false,
    });
    start_full(config, router, auth).await
}

#[tokio::test]
async fn sessions_beyond_max_parked_end_with_their_connection() {
    let config = MqttConfig {
        max_parked_sessions: 1,
        ..MqttConfig::default()
    };
    let (server, shutdown) = start_config(config, Router::new(100)).await;
    let addr = server.local_addr();
    for id in ["kept", "over"] {
        let (mut c, _) = Raw::open(addr, persistent(ProtocolVersion::V5, id, 300)).await;
        c.send(&subscribe_qos("p/#", QoS::AtLeastOnce)).await;
        assert!(matches!(c.next().await, Some(Packet::SubAck(_))));
        c.disconnect().await;
    }
    assert_eq!(server.parked_sessions(), 1);
    let dropped = &server.stats().sessions_dropped_full;
    assert_eq!(dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
    let (_, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "kept", 300)).await;
    assert!(ack.session_present, "the first session was kept");
    let (_, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "over", 300)).await;
    assert!(!ack.session_present, "the one over the cap was not");
    shutdown.cancel();
}

#[tokio::test]
async fn publishers_wait_while_the_sessions_hold_max_queued_bytes() {
    use std::sync::atomic::Ordering::Relaxed;
    // 3 bytes of topic + 40 of payload: the offline session holds one message, the limit.
    let config = MqttConfig {
        max_queued_bytes: 43,
        queue_wait: WAIT,
        ..MqttConfig::default()
    };
    let router = Router::new(100);
    let (server, shutdown) = start_config(config, router.clone()).await;
    let addr = server.local_addr();
    let (mut sub, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "s1", 300)).await;
    sub.send(&subscribe_qos("m/#", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    sub.disconnect().await;
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    let first: &'static [u8] = &[b'a'; 40];
    let second: &'static [u8] = &[b'b'; 40];
    publisher.publish_acked("m/1", 1, first).await;
    assert_eq!(router.queued_bytes(), 43);

    // Full: the next publish is held, its PUBACK not sent, until the session drains.
    publisher
        .send(&publish_qos("m/1", 2, QoS::AtLeastOnce, second))
        .await;
    let mut held = router.held_publishes();
    tokio::time::timeout(WAIT, held.wait_for(|n| *n == 1))
        .await
        .expect("the publish to be held")
        .unwrap();
    let (mut s1, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "s1", 300)).await;
    assert!(ack.session_present);
    let p = s1.expect_publish().await;
    assert_eq!(&p.payload[..], first);
    s1.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck::new(
        p.packet_id.unwrap(),
    )))
    .await;
    // Drained: the held publish goes on, is delivered, and only then acknowledged.
    match publisher.next().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, 2),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(&s1.expect_publish().await.payload[..], second);
    let stats = router.stats();
    assert_eq!(stats.dropped_memory.load(Relaxed), 0);
    assert_eq!(stats.publishes_held.load(Relaxed), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_held_publish_goes_on_after_queue_wait_and_what_does_not_fit_is_dropped() {
    use std::sync::atomic::Ordering::Relaxed;
    let config = MqttConfig {
        max_queued_bytes: 43,
        queue_wait: Duration::from_millis(50),
        ..MqttConfig::default()
    };
    let router = Router::new(100);
    let (server, shutdown) = start_config(config, router.clone()).await;
    let addr = server.local_addr();
    let (mut sub, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "away", 300)).await;
    sub.send(&subscribe_qos("m/#", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    sub.disconnect().await;
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    publisher.publish_acked("m/1", 1, &[b'a'; 40]).await;
    // Nobody drains: the publish waits queue_wait, then is acknowledged; the delivery is
    // dropped and counted, and the queued bytes stay at the limit.
    assert_eq!(
        publisher.publish_acked("m/1", 2, &[b'b'; 40]).await,
        ReasonCode::SUCCESS
    );
    let stats = router.stats();
    assert_eq!(stats.publishes_held.load(Relaxed), 1);
    assert_eq!(stats.dropped_memory.load(Relaxed), 1);
    assert_eq!(router.queued_bytes(), 43);
    // The session ends: its bytes are given back.
    let (mut sub, _) = Raw::open(
        addr,
        Connect {
            clean_start: true,
            ..persistent(ProtocolVersion::V5, "away", 0)
        },
    )
    .await;
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.next().await, Some(Packet::PingResp)));
    assert_eq!(router.queued_bytes(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn a_session_queue_holds_at_most_its_bytes() {
    let config = MqttConfig {
        session_queue_bytes: 100,
        ..MqttConfig::default()
    };
    let router = Router::new(100);
    let (server, shutdown) = start_config(config, router.clone()).await;
    let addr = server.local_addr();
    let (mut sub, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "small", 300)).await;
    sub.send(&subscribe_qos("b/#", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    sub.disconnect().await;
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    // 3 bytes of topic + 40 of payload each: two fit in 100 bytes, the third does not.
    let payloads: [&'static [u8]; 3] = [&[b'a'; 40], &[b'b'; 40], &[b'c'; 40]];
    for (i, p) in payloads.into_iter().enumerate() {
        publisher.publish_acked("b/1", 1 + i as u16, p).await;
    }
    assert_eq!(
        router
            .stats()
            .dropped_queue_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let (mut sub, ack) = Raw::open(addr, persistent(ProtocolVersion::V5, "small", 300)).await;
    assert!(ack.session_present);
    for expected in &payloads[..2] {
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], *expected);
        sub.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck::new(
            p.packet_id.unwrap(),
        )))
        .await;
    }
    // Taken off the queue, the bytes are free again: a new message is queued and delivered.
    publisher.publish_acked("b/1", 9, b"after").await;
    assert_eq!(sub.expect_publish().await.payload, &b"after"[..]);
    shutdown.cancel();
}

#[tokio::test]
async fn a_full_queue_with_drop_oldest_keeps_the_newest_also_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let config = MqttConfig {
        session_queue: 3,
        session_queue_full: ferrite_mqtt::QueueFullPolicy::DropOldest,
        ..MqttConfig::default()
    };
    let router = Router::durable(100, &path).unwrap();
    let (server, shutdown) = start_config(config.clone(), router.clone()).await;
    let addr = server.local_addr();
    let (mut sub, _) = Raw::open(addr, persistent(ProtocolVersion::V5, "newest", 300)).await;
    sub.send(&subscribe_qos("n/#", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    sub.disconnect().await;
    let mut publisher = Raw::connect(addr, ProtocolVersion::V5).await;
    let payloads: [&'static [u8]; 5] = [b"1", b"2", b"3", b"4", b"5"];
    for (i, p) in payloads.into_iter().enumerate() {
        assert_eq!(
            publisher.publish_acked("n/1", 1 + i as u16, p).await,
            ReasonCode::SUCCESS
        );
    }
    assert_eq!(
        router
            .stats()
            .dropped_queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the two oldest were dropped"
    );
    shutdown.cancel();
    server.wait().await;
    drop(publisher);
    router.close_store().await;
    drop(server);

    // The dropped ones are gone from the session store too: the newest three come back.
    let (server, shutdown) = start_config(config, Router::durable(100, &path).unwrap()).await;
    let (mut sub, ack) = Raw::open(
        server.local_addr(),
        persistent(ProtocolVersion::V5, "newest", 300),
    )
    .await;
    assert!(ack.session_present);
    for expected in &payloads[2..] {
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], *expected);
        sub.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck::new(
            p.packet_id.unwrap(),
        )))
        .await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(quiet.is_err(), "nothing else queued: {quiet:?}");
    shutdown.cancel();
}

/// A client silent for 1.5 × its keep-alive is closed (MQTT 5: DISCONNECT 0x8D keep alive
/// timeout; 3.1.1: the connection just closes), never earlier; one that keeps talking stays.
#[tokio::test]
async fn silent_clients_are_closed_after_one_and_a_half_keep_alives() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    let connect = |version, id: &str| Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 1,
        client_id: id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let started = tokio::time::Instant::now();
    let (mut silent5, _) = Raw::open(addr, connect(ProtocolVersion::V5, "silent-5")).await;
    let (mut silent3, _) = Raw::open(addr, connect(ProtocolVersion::V311, "silent-3")).await;
    let (mut talker, _) = Raw::open(addr, connect(ProtocolVersion::V5, "talker")).await;

    // The talker keeps pinging until the silent ones have been closed.
    let (closed, mut until_closed) = tokio::sync::oneshot::channel::<()>();
    let talking = tokio::spawn(async move {
        loop {
            talker.send(&Packet::PingReq).await;
            assert_eq!(talker.next().await, Some(Packet::PingResp), "talker kept");
            if until_closed.try_recv().is_ok() {
                return talker;
            }
        }
    });
    match silent5.next().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT);
        }
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before 1.5 × keep-alive",
        started.elapsed()
    );
    assert!(silent5.next().await.is_none(), "closed after DISCONNECT");
    assert!(silent3.next().await.is_none(), "3.1.1: closed");
    closed.send(()).unwrap();
    let mut talker = talking.await.unwrap();
    talker.send(&Packet::PingReq).await;
    assert_eq!(talker.next().await, Some(Packet::PingResp));
    shutdown.cancel();
    server.wait().await;
}

/// A publish followed at once by DISCONNECT (as `mosquitto_pub` sends them), or by a close,
/// in the same segment is still delivered: packets are handled in order, and the end of the
/// connection does not discard what came before it.
#[tokio::test]
async fn a_last_publish_before_disconnect_or_close_is_delivered() {
    let (server, shutdown) = start(Router::new(100)).await;
    let addr = server.local_addr();
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut sub = Raw::connect(addr, version).await;
        sub.send(&subscribe("last/#", 1)).await;
        assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
        for (n, then_disconnect) in [(1, true), (2, false)] {
            let mut publisher = Raw::connect(addr, version).await;
            let mut bytes = BytesMut::new();
            let mut p = publish(&format!("last/{n}"), 0);
            if let Packet::Publish(p) = &mut p {
                p.qos = QoS::AtMostOnce;
                p.packet_id = None;
            }
            p.encode(version, &mut bytes).unwrap();
            if then_disconnect {
                Packet::Disconnect(ferrite_mqtt_codec::Disconnect {
                    reason_code: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                })
                .encode(version, &mut bytes)
                .unwrap();
            }
            publisher.stream.write_all(&bytes).await.unwrap();
            drop(publisher);
            match sub.next().await {
                Some(Packet::Publish(got)) => assert_eq!(got.topic, format!("last/{n}")),
                other => panic!("{version:?}: expected last/{n}, got {other:?}"),
            }
        }
    }
    shutdown.cancel();
    server.wait().await;
}
