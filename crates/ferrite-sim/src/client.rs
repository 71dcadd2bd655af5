//! A small MQTT client over one TCP connection, built on `ferrite-mqtt-codec`: connect (with
//! a will if asked), publish at QoS 0/1 with pipelining, read acknowledgements with their
//! latency, and leave cleanly ([`Client::disconnect`]) or abruptly ([`Client::abort`], which
//! makes the broker publish the will). Used by the simulator and by Ferrite's own tests and
//! benchmarks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{
    Connect, DecodeError, Decoder, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet the client accepts from the server.
const MAX_PACKET: u32 = 16 * 1024 * 1024;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something undecodable.
    #[error("bad packet from server: {0}")]
    Decode(#[from] DecodeError),
    /// The server refused the connection.
    #[error("connection refused: {0}")]
    Refused(ReasonCode),
    /// The server closed the connection (with DISCONNECT's reason, if it sent one).
    #[error("server closed the connection{}", .0.map(|c| format!(": {c}")).unwrap_or_default())]
    Closed(Option<ReasonCode>),
    /// The server answered out of protocol.
    #[error("unexpected {0} from server")]
    Unexpected(&'static str),
    /// A packet could not be encoded.
    #[error("encoding: {0}")]
    Encode(String),
    /// No answer in time.
    #[error("timed out waiting for the server")]
    Timeout,
}

/// An acknowledgement of one QoS 1 publish.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Its packet id.
    pub packet_id: u16,
    /// The server's reason code (always success for MQTT 3.1.1).
    pub reason: ReasonCode,
    /// Time from sending the publish to reading this ack.
    pub latency: Duration,
}

/// One MQTT connection.
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
    next_id: u16,
    /// Packet id → send time of unacknowledged QoS 1 publishes.
    inflight: HashMap<u16, Instant>,
    /// Messages received on subscriptions, oldest first.
    received: std::collections::VecDeque<Publish>,
}

/// How to connect: [`Client::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The client id (the device id).
    pub client_id: String,
    /// The MQTT version to speak.
    pub version: ProtocolVersion,
    /// Keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// The will the broker publishes if the connection ends without DISCONNECT.
    pub will: Option<Will>,
    /// User name (a device id, for Ferrite's token authentication).
    pub username: Option<String>,
    /// Password (the device's token).
    pub password: Option<Vec<u8>>,
}

impl ConnectOptions {
    /// Options for `client_id` speaking `version`, keep-alive 60 s, no will.
    pub fn new(client_id: impl Into<String>, version: ProtocolVersion) -> Self {
        Self {
            client_id: client_id.into(),
            version,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
        }
    }
}

impl Client {
    /// Connect with a clean session and wait for CONNACK (10 s at most).
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, ConnectOptions::new(client_id, version)).await
    }

    /// Connect with a clean session and `options`, and wait for CONNACK (10 s at most).
    pub async fn connect_with(
        addr: SocketAddr,
        options: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let ConnectOptions {
            client_id,
            version,
            keep_alive,
            will,
            username,
            password,
        } = options;
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut decoder = Decoder::new(MAX_PACKET);
        decoder.set_version(version);
        let mut client = Self {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            decoder,
            version,
            next_id: 1,
            inflight: HashMap::new(),
            received: std::collections::VecDeque::new(),
        };
        client
            .send(&Packet::Connect(Connect {
                protocol: version,
                clean_start: true,
                keep_alive,
                client_id,
                will,
                username,
                password: password.map(Into::into),
                properties: Properties::default(),
            }))
            .await?;
        let packet = tokio::time::timeout(Duration::from_secs(10), client.read_packet())
            .await
            .map_err(|_| ClientError::Timeout)??;
        match packet {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::SUCCESS => Ok(client),
            Packet::ConnAck(ack) => Err(ClientError::Refused(ack.reason_code)),
            other => Err(ClientError::Unexpected(other.packet_type_name())),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.wbuf.clear();
        packet
            .encode(self.version, &mut self.wbuf)
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        self.stream.write_all(&self.wbuf).await?;
        Ok(())
    }

    /// Read the next packet. Cancel-safe: a partially received packet stays buffered.
    pub async fn read_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.rbuf)? {
                if let Packet::Disconnect(d) = &p {
                    return Err(ClientError::Closed(Some(d.reason_code)));
                }
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed(None));
            }
        }
    }

    /// Publish at QoS 1 without waiting for the ack; returns the packet id.
    pub async fn publish_qos1(&mut self, topic: &str, payload: Bytes) -> Result<u16, ClientError> {
        self.publish(topic, payload, QoS::AtLeastOnce, false)
            .await
            .map(|id| id.unwrap_or(0))
    }

    /// Publish at any QoS up to 1; returns the packet id for QoS 1.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<Option<u16>, ClientError> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.next_packet_id());
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_owned(),
            packet_id,
            properties: Properties::default(),
            payload,
        }))
        .await?;
        if let Some(id) = packet_id {
            self.inflight.insert(id, Instant::now());
        }
        Ok(packet_id)
    }

    fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// Wait for the next PUBACK. Messages arriving meanwhile are kept for
    /// [`Client::next_message`]. Cancel-safe.
    pub async fn next_ack(&mut self) -> Result<Ack, ClientError> {
        loop {
            match self.read_packet().await? {
                Packet::PubAck(a) => {
                    if let Some(sent) = self.inflight.remove(&a.packet_id) {
                        return Ok(Ack {
                            packet_id: a.packet_id,
                            reason: a.reason_code,
                            latency: sent.elapsed(),
                        });
                    }
                }
                Packet::Publish(p) => self.on_publish(p).await?,
                Packet::PingResp | Packet::SubAck(_) | Packet::UnsubAck(_) => {}
                other => return Err(ClientError::Unexpected(other.packet_type_name())),
            }
        }
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), ClientError> {
        if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
            self.send(&Packet::PubAck(ferrite_mqtt_codec::PubAck {
                packet_id: id,
                reason_code: ReasonCode::SUCCESS,
                properties: Properties::default(),
            }))
            .await?;
        }
        self.received.push_back(p);
        Ok(())
    }

    /// Wait for the next message on a subscription (acknowledging QoS 1 deliveries).
    pub async fn next_message(&mut self) -> Result<Publish, ClientError> {
        loop {
            if let Some(p) = self.received.pop_front() {
                return Ok(p);
            }
            match self.read_packet().await? {
                Packet::Publish(p) => self.on_publish(p).await?,
                Packet::PubAck(a) => {
                    self.inflight.remove(&a.packet_id);
                }
                _ => {}
            }
        }
    }

    /// Subscribe to `filter` at `qos` and wait for the SUBACK; returns its reason code.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<ReasonCode, ClientError> {
        let packet_id = self.next_packet_id();
        self.send(&Packet::Subscribe(ferrite_mqtt_codec::Subscribe {
            packet_id,
            filters: vec![(
                filter.to_owned(),
                ferrite_mqtt_codec::SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }))
        .await?;
        loop {
            match self.read_packet().await? {
                Packet::SubAck(s) if s.packet_id == packet_id => {
                    return s
                        .reason_codes
                        .first()
                        .copied()
                        .ok_or(ClientError::Unexpected("empty SUBACK"));
                }
                Packet::Publish(p) => self.on_publish(p).await?,
                Packet::PubAck(a) => {
                    self.inflight.remove(&a.packet_id);
                }
                _ => {}
            }
        }
    }

    /// Publishes sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Close the connection without DISCONNECT, as a device losing power or coverage does:
    /// the broker publishes the will, if there is one. Unacknowledged publishes are
    /// abandoned.
    pub fn abort(self) {
        drop(self);
    }

    /// Send DISCONNECT (normal) and close.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.send(&Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}
