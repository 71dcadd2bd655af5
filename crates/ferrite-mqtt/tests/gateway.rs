//! The gateway alone, over real TCP: malformed input closes the connection with the right
//! reason and never takes the server down; durable internal consumers gate the PUBACK; the
//! authenticator's guard decides every publish and subscription and can end a session.
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
    let config = MqttConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..MqttConfig::default()
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
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut decoder = Decoder::new(1 << 20);
        decoder.set_version(version);
        let mut raw = Self {
            stream,
            rbuf: BytesMut::new(),
            decoder,
            version,
        };
        raw.send(&Packet::Connect(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 30,
            client_id: client_id.to_owned(),
            will: None,
            username: password.map(|_| client_id.to_owned()),
            password: password.map(|p| p.to_vec().into()),
            properties: Properties::default(),
        }))
        .await;
        match raw.next().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
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
