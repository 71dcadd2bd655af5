//! The gateway alone, over real TCP: malformed input closes the connection with the right
//! reason and never takes the server down; durable internal consumers gate the PUBACK.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferrite_core::{SystemClock, TopicFilter};
use ferrite_mqtt::{AnonymousLoopback, MqttConfig, MqttServer, Router, Verdict};
use ferrite_mqtt_codec::{
    Connect, Decoder, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
static NEXT_CLIENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn start(router: Router) -> (MqttServer, CancellationToken) {
    let config = MqttConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..MqttConfig::default()
    };
    let shutdown = CancellationToken::new();
    let server = MqttServer::start(
        config,
        router,
        Arc::new(AnonymousLoopback {
            allow_remote: false,
        }),
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
            client_id: format!(
                "raw-{}",
                NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            will: None,
            username: None,
            password: None,
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
