//! MQTT broker benchmarks against any broker: throughput (publishers → one subscriber),
//! publish → deliver latency at a fixed rate, connection rate, and resident memory per idle
//! connection. Used by `bench/mqtt` through `ferrite bench mqtt`, the same load for Ferrite
//! and for Mosquitto.
//!
//! The load generator speaks MQTT 5 through the shared codec. Writers batch encoded packets
//! (one write per batch, not per packet) and readers decode whole buffers, so the generator
//! costs little next to the broker it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{
    Connect, Decoder, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent something that does not parse.
    #[error("decoding: {0}")]
    Decode(#[from] ferrite_mqtt_codec::DecodeError),
    /// The broker answered unexpectedly (refused CONNECT, closed, wrong packet).
    #[error("{0}")]
    Protocol(String),
    /// The run did not finish in its time bound.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

const PAYLOAD: usize = 64;
const VERSION: ProtocolVersion = ProtocolVersion::V5;

/// One connection split for concurrent reading and writing.
struct Conn {
    reader: Reader,
    writer: OwnedWriteHalf,
}

struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
}

impl Reader {
    /// The next packet; `None` when the broker closed the connection.
    async fn next(&mut self) -> Result<Option<Packet>, BenchError> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(p));
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

fn encode(packet: &Packet, buf: &mut BytesMut) -> Result<(), BenchError> {
    packet
        .encode(VERSION, buf)
        .map_err(|e| BenchError::Protocol(e.to_string()))
}

async fn connect(addr: SocketAddr, client_id: &str) -> Result<Conn, BenchError> {
    connect_session(addr, client_id, None).await.map(|(c, _)| c)
}

/// Connect; with `expiry` a persistent session (Clean Start = 0, that Session Expiry
/// Interval). Returns the connection and CONNACK's session-present flag.
async fn connect_session(
    addr: SocketAddr,
    client_id: &str,
    expiry: Option<u32>,
) -> Result<(Conn, bool), BenchError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (half, mut writer) = stream.into_split();
    let mut decoder = Decoder::new(1 << 20);
    decoder.set_version(VERSION);
    let mut reader = Reader {
        half,
        buf: BytesMut::with_capacity(64 << 10),
        decoder,
    };
    let mut buf = BytesMut::new();
    encode(
        &Packet::Connect(Connect {
            protocol: VERSION,
            clean_start: expiry.is_none(),
            keep_alive: 300,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                receive_maximum: Some(u16::MAX),
                session_expiry_interval: expiry,
                ..Properties::default()
            },
        }),
        &mut buf,
    )?;
    writer.write_all(&buf).await?;
    match reader.next().await? {
        Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS => {
            Ok((Conn { reader, writer }, a.session_present))
        }
        Some(Packet::ConnAck(a)) => Err(BenchError::Protocol(format!(
            "CONNECT refused: {}",
            a.reason_code
        ))),
        other => Err(BenchError::Protocol(format!(
            "expected CONNACK, got {other:?}"
        ))),
    }
}

async fn subscribe(conn: &mut Conn, filter: &str, qos: QoS) -> Result<(), BenchError> {
    let mut buf = BytesMut::new();
    encode(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }),
        &mut buf,
    )?;
    conn.writer.write_all(&buf).await?;
    match conn.reader.next().await? {
        Some(Packet::SubAck(a)) if a.reason_codes.first().is_some_and(|c| !c.is_error()) => Ok(()),
        other => Err(BenchError::Protocol(format!(
            "expected a granting SUBACK, got {other:?}"
        ))),
    }
}

fn publish(topic: &str, qos: QoS, id: u16, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: Properties::default(),
        payload,
    })
}

/// Nanoseconds since `epoch` in the first 8 bytes, padded to the benchmark's payload size.
fn stamped(epoch: Instant) -> Bytes {
    let mut p = vec![0u8; PAYLOAD];
    let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    p[..8].copy_from_slice(&ns.to_le_bytes());
    Bytes::from(p)
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Read deliveries until `expected` arrived or nothing came for `idle`: acknowledges QoS 1,
/// records publish → deliver latencies (µs). Returns (received, first, last, latencies).
async fn drain(
    mut conn: Conn,
    expected: u64,
    idle: Duration,
    epoch: Instant,
    keep_latencies: bool,
) -> Result<(u64, Option<Instant>, Option<Instant>, Vec<u32>), BenchError> {
    let mut received = 0u64;
    let (mut first, mut last) = (None, None);
    let mut latencies = Vec::new();
    let mut acks = BytesMut::new();
    while received < expected {
        let packet = match tokio::time::timeout(idle, conn.reader.next()).await {
            Ok(p) => p?,
            Err(_) => break,
        };
        match packet {
            Some(Packet::Publish(p)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                received += 1;
                if keep_latencies && let Some(sent) = stamp_of(&p.payload) {
                    let at = u64::try_from(now.duration_since(epoch).as_nanos()).unwrap_or(0);
                    latencies
                        .push(u32::try_from(at.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
                }
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    encode(&Packet::PubAck(PubAck::new(id)), &mut acks)?;
                }
                // Acknowledge in batches: whatever is decoded from what was read so far.
                if !acks.is_empty() && conn.reader.buf.len() < 16 {
                    conn.writer.write_all(&acks).await?;
                    acks.clear();
                }
            }
            Some(_) => {}
            None => {
                return Err(BenchError::Protocol(
                    "the broker closed the subscriber".into(),
                ));
            }
        }
    }
    if !acks.is_empty() {
        conn.writer.write_all(&acks).await?;
    }
    Ok((received, first, last, latencies))
}

/// Publish `count` messages as fast as the window allows: QoS 0 in batches, QoS 1 with at
/// most `window` unacknowledged.
async fn blast(
    conn: Conn,
    topic: String,
    qos: QoS,
    count: u64,
    window: usize,
) -> Result<(), BenchError> {
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    if qos == QoS::AtMostOnce {
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut sent = 0;
        while sent < count {
            buf.clear();
            for _ in 0..count.saturating_sub(sent).min(256) {
                encode(&publish(&topic, qos, 0, payload.clone()), &mut buf)?;
                sent += 1;
            }
            writer.write_all(&buf).await?;
        }
        return Ok(());
    }
    let credits = Arc::new(Semaphore::new(window.max(1)));
    let acked = Arc::new(AtomicU64::new(0));
    let reading = {
        let credits = Arc::clone(&credits);
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            while acked.load(Ordering::Relaxed) < count {
                match reader.next().await? {
                    Some(Packet::PubAck(_)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        credits.add_permits(1);
                    }
                    Some(_) => {}
                    None => {
                        return Err(BenchError::Protocol("the broker closed a publisher".into()));
                    }
                }
            }
            Ok::<_, BenchError>(())
        })
    };
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut id: u16 = 0;
    let mut sent = 0;
    while sent < count {
        let Ok(permit) = credits.acquire().await else {
            break;
        };
        permit.forget();
        buf.clear();
        loop {
            id = id.checked_add(1).unwrap_or(1);
            encode(&publish(&topic, qos, id, payload.clone()), &mut buf)?;
            sent += 1;
            match credits.try_acquire() {
                Ok(p) if sent < count && buf.len() < 32 << 10 => p.forget(),
                Ok(p) => {
                    drop(p);
                    break;
                }
                Err(_) => break,
            }
        }
        writer.write_all(&buf).await?;
    }
    reading
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))??;
    Ok(())
}

/// Figures of one throughput run.
#[derive(Debug, Serialize)]
pub struct Throughput {
    /// What ran.
    pub test: String,
    /// Messages published in all.
    pub published: u64,
    /// Messages the subscriber got.
    pub received: u64,
    /// Messages per second published (first publish → last publisher done).
    pub publish_rate: f64,
    /// Messages per second delivered (first publish → last message received).
    pub deliver_rate: f64,
}

/// `publishers` connections publish `messages` in all at `qos` (QoS 1: `window` in flight
/// each) to topics under `bench/t/`, and one subscriber receives them at the same QoS.
pub async fn throughput(
    addr: SocketAddr,
    publishers: usize,
    messages: u64,
    qos: QoS,
    window: usize,
) -> Result<Throughput, BenchError> {
    let tag = std::process::id();
    let mut sub = connect(addr, &format!("bench-sub-{tag}")).await?;
    subscribe(&mut sub, "bench/t/#", qos).await?;
    let mut pubs = Vec::with_capacity(publishers);
    for i in 0..publishers {
        pubs.push(connect(addr, &format!("bench-pub-{tag}-{i}")).await?);
    }
    let per = messages / publishers.max(1) as u64;
    let total = per * publishers as u64;
    let start = Instant::now();
    let receiving = tokio::spawn(drain(sub, total, Duration::from_secs(5), start, false));
    let mut tasks = Vec::new();
    for (i, conn) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(blast(
            conn,
            format!("bench/t/{i}"),
            qos,
            per,
            window,
        )));
    }
    for t in tasks {
        t.await.map_err(|e| BenchError::Protocol(e.to_string()))??;
    }
    let published_in = start.elapsed();
    let (received, _, last, _) = receiving
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))??;
    let delivered_in = last.map_or(published_in, |l| l.duration_since(start));
    Ok(Throughput {
        test: format!("qos{} {publishers}->1", qos.as_u8()),
        published: total,
        received,
        publish_rate: total as f64 / published_in.as_secs_f64(),
        deliver_rate: received as f64 / delivered_in.as_secs_f64(),
    })
}

/// The `q` quantile of sorted latencies (0 when there are none).
fn quantile(sorted: &[u32], q: f64) -> u32 {
    let at = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(at).copied().unwrap_or(0)
}

/// Figures of one latency run.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// What ran.
    pub test: String,
    /// Messages received and measured.
    pub received: u64,
    /// Publish → deliver latency, median, in µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// Largest, µs.
    pub max_us: u32,
}

/// One publisher sends at `rate` messages per second for `duration` at `qos` to one
/// subscriber; the payload carries the send time, the subscriber measures the delay.
pub async fn latency(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    qos: QoS,
) -> Result<Latency, BenchError> {
    let tag = std::process::id();
    let mut sub = connect(addr, &format!("bench-lsub-{tag}")).await?;
    subscribe(&mut sub, "bench/l/#", qos).await?;
    let Conn {
        mut reader,
        mut writer,
    } = connect(addr, &format!("bench-lpub-{tag}")).await?;
    let count = u64::from(rate) * duration.as_secs().max(1);
    let epoch = Instant::now();
    let receiving = tokio::spawn(drain(sub, count, Duration::from_secs(5), epoch, true));
    // Acks are read and discarded; the window is never the limit at a fixed rate.
    let acks = tokio::spawn(async move { while let Ok(Some(_)) = reader.next().await {} });
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = BytesMut::new();
    let mut id: u16 = 0;
    for _ in 0..count {
        tick.tick().await;
        id = id.checked_add(1).unwrap_or(1);
        buf.clear();
        encode(&publish("bench/l/1", qos, id, stamped(epoch)), &mut buf)?;
        writer.write_all(&buf).await?;
    }
    let (received, _, _, mut lat) = receiving
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))??;
    acks.abort();
    lat.sort_unstable();
    let pick = |q: f64| quantile(&lat, q);
    Ok(Latency {
        test: format!("qos{} latency @{rate}/s", qos.as_u8()),
        received,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: lat.last().copied().unwrap_or(0),
    })
}

/// Figures of one publish → alarm run.
#[derive(Debug, Serialize)]
pub struct AlarmLatency {
    /// What ran.
    pub test: String,
    /// Telemetry messages published.
    pub published: u64,
    /// Messages per second actually published (below the rate when the broker's
    /// acknowledgements held the publisher back at its window of 1,000).
    pub achieved_rate: u64,
    /// Of them, readings that should raise an alarm.
    pub triggers: u64,
    /// `raised` alarm events received (and measured).
    pub alarms: u64,
    /// Publish of the triggering reading → its `raised` event delivered, median, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// Largest, µs.
    pub max_us: u32,
}

/// The alarm path under load: `rate` telemetry readings per second for `duration`, QoS 1,
/// as JSON `{"temp", "sent", "seq"}` on `devices/{id}/telemetry` — normal readings
/// (`temp` 20) from `devices` devices and every `every`-th one hot (`temp` 99) from a
/// device of its own (`hot-{seq}`), so each hot reading opens one new alarm — while a
/// subscriber on `$ferrite/alarms/+/+/raised` takes `alarm.values.sent` of each event. The
/// server must run a rule raising an alarm for `temp > 80` that selects `sent` (bench/rules
/// creates it). At most 1,000 publishes are unacknowledged (within Ferrite's Receive Maximum).
pub async fn alarm_latency(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    devices: u32,
    every: u64,
) -> Result<AlarmLatency, BenchError> {
    let tag = std::process::id();
    let mut sub = connect(addr, &format!("bench-asub-{tag}")).await?;
    subscribe(&mut sub, "$ferrite/alarms/+/+/raised", QoS::AtLeastOnce).await?;
    let Conn {
        mut reader,
        mut writer,
    } = connect(addr, &format!("bench-apub-{tag}")).await?;
    let count = u64::from(rate) * duration.as_secs().max(1);
    let every = every.max(1);
    let triggers = count / every;
    let epoch = Instant::now();
    let receiving = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut acks = BytesMut::new();
        while (lat.len() as u64) < triggers {
            let packet = match tokio::time::timeout(Duration::from_secs(5), sub.reader.next()).await
            {
                Ok(p) => p?,
                Err(_) => break,
            };
            let Some(Packet::Publish(p)) = packet else {
                continue;
            };
            let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let event: serde_json::Value = serde_json::from_slice(&p.payload)
                .map_err(|e| BenchError::Protocol(format!("alarm event is not JSON: {e}")))?;
            if let Some(sent) = event["alarm"]["values"]["sent"].as_u64() {
                lat.push(u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
            }
            if let Some(id) = p.packet_id {
                encode(&Packet::PubAck(PubAck::new(id)), &mut acks)?;
                sub.writer.write_all(&acks).await?;
                acks.clear();
            }
        }
        Ok::<_, BenchError>(lat)
    });
    // A real client keeps within the broker's Receive Maximum: at most WINDOW unacknowledged.
    const WINDOW: usize = 1000;
    let credits = Arc::new(Semaphore::new(WINDOW));
    let acks = {
        let credits = Arc::clone(&credits);
        tokio::spawn(async move {
            while let Ok(Some(p)) = reader.next().await {
                if matches!(p, Packet::PubAck(_)) {
                    credits.add_permits(1);
                }
            }
        })
    };
    // Publish in 1 ms steps: each step sends what the rate owes by then.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = BytesMut::new();
    let mut sent = 0u64;
    let mut id: u16 = 0;
    while sent < count {
        tick.tick().await;
        let due = (epoch.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        buf.clear();
        while sent < due.min(count) {
            let Ok(permit) = credits.try_acquire() else {
                break;
            };
            permit.forget();
            let seq = sent;
            sent += 1;
            let hot = seq % every == every - 1;
            let device = if hot {
                format!("hot-{seq}")
            } else {
                format!("d{}", seq % u64::from(devices.max(1)))
            };
            let stamp = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let payload = format!(
                r#"{{"temp":{},"sent":{stamp},"seq":{seq}}}"#,
                if hot { 99 } else { 20 }
            );
            id = id.checked_add(1).unwrap_or(1);
            encode(
                &publish(
                    &format!("devices/{device}/telemetry"),
                    QoS::AtLeastOnce,
                    id,
                    Bytes::from(payload),
                ),
                &mut buf,
            )?;
        }
        if !buf.is_empty() {
            writer.write_all(&buf).await?;
        }
    }
    let publishing = epoch.elapsed();
    let mut lat = receiving
        .await
        .map_err(|e| BenchError::Protocol(e.to_string()))??;
    acks.abort();
    let alarms = lat.len() as u64;
    lat.sort_unstable();
    let pick = |q: f64| quantile(&lat, q);
    Ok(AlarmLatency {
        test: format!("publish → alarm @{rate}/s, 1 in {every} hot"),
        published: count,
        achieved_rate: (count as f64 / publishing.as_secs_f64().max(1e-9)) as u64,
        triggers,
        alarms,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: lat.last().copied().unwrap_or(0),
    })
}

/// Figures of a connection-rate run.
#[derive(Debug, Serialize)]
pub struct Connections {
    /// What ran.
    pub test: String,
    /// Connections that got a CONNACK.
    pub connected: usize,
    /// CONNECT → CONNACK completed per second.
    pub per_second: f64,
}

/// Open `count` connections, `concurrency` at a time, then close them.
pub async fn connection_rate(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
) -> Result<Connections, BenchError> {
    let tag = std::process::id();
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let limit = Arc::clone(&limit);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            connect(addr, &format!("bench-c-{tag}-{i}")).await
        }));
    }
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        conns.push(t.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    let took = start.elapsed();
    let connected = conns.len();
    drop(conns);
    Ok(Connections {
        test: format!("connect {count} ({concurrency} at a time)"),
        connected,
        per_second: connected as f64 / took.as_secs_f64(),
    })
}

/// Figures of an idle-connection memory run.
#[derive(Debug, Serialize)]
pub struct IdleMemory {
    /// What ran.
    pub test: String,
    /// Idle connections held.
    pub connections: usize,
    /// The broker's resident memory before, in KiB.
    pub rss_before_kib: u64,
    /// With the connections open, in KiB.
    pub rss_after_kib: u64,
    /// (after − before) / connections, in bytes.
    pub bytes_per_connection: f64,
}

/// Resident memory of process `pid` in KiB (Linux `/proc`).
fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(BenchError::Protocol(format!("no VmRSS for process {pid}")))
}

/// Open `count` idle connections (each subscribed to a topic of its own, as a device is)
/// and measure the broker's (`pid`) resident memory before and after.
pub async fn idle_memory(
    addr: SocketAddr,
    pid: u32,
    count: usize,
) -> Result<IdleMemory, BenchError> {
    let tag = std::process::id();
    let before = rss_kib(pid)?;
    let limit = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let limit = Arc::clone(&limit);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut c = connect(addr, &format!("bench-i-{tag}-{i}")).await?;
            subscribe(&mut c, &format!("bench/cmd/{i}"), QoS::AtLeastOnce).await?;
            Ok::<_, BenchError>(c)
        }));
    }
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        conns.push(t.await.map_err(|e| BenchError::Protocol(e.to_string()))??);
    }
    // Let the broker settle its buffers before reading its memory again.
    let mut after = rss_kib(pid)?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = after.max(rss_kib(pid)?);
    }
    drop(conns);
    Ok(IdleMemory {
        test: format!("{count} idle connections"),
        connections: count,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: (after.saturating_sub(before) * 1024) as f64 / count.max(1) as f64,
    })
}

/// What [`publish_logged`] did before its connection ended.
#[derive(Debug, Serialize)]
pub struct PublishLog {
    /// Publishes sent.
    pub sent: u64,
    /// Publishes the broker acknowledged with success (each written to the log).
    pub acked: u64,
}

/// Publish QoS 1 messages numbered from `first` (the number is the payload, as text) to
/// `topic` with `window` in flight, for at most `duration`, appending the number of each
/// successfully acknowledged one to `log` as it is acknowledged. Ends quietly when the
/// broker goes away (that is what the crash test wants).
pub async fn publish_logged(
    addr: SocketAddr,
    topic: &str,
    first: u64,
    duration: Duration,
    window: usize,
    log: &std::path::Path,
) -> Result<PublishLog, BenchError> {
    use std::io::Write;
    let Conn {
        mut reader,
        mut writer,
    } = connect(addr, &format!("bench-log-{first}")).await?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut inflight: std::collections::HashMap<u16, u64> = std::collections::HashMap::new();
    let (mut sent, mut acked, mut id, mut next) = (0u64, 0u64, 0u16, first);
    let deadline = tokio::time::Instant::now() + duration;
    let mut buf = BytesMut::new();
    loop {
        while inflight.len() < window.max(1) {
            id = id.checked_add(1).unwrap_or(1);
            encode(
                &publish(topic, QoS::AtLeastOnce, id, Bytes::from(next.to_string())),
                &mut buf,
            )?;
            inflight.insert(id, next);
            next += 1;
            sent += 1;
        }
        if !buf.is_empty() {
            if writer.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
        }
        let packet = tokio::select! {
            p = reader.next() => p,
            () = tokio::time::sleep_until(deadline) => break,
        };
        match packet {
            Ok(Some(Packet::PubAck(a))) => {
                if let Some(n) = inflight.remove(&a.packet_id)
                    && !a.reason_code.is_error()
                {
                    writeln!(file, "{n}")?;
                    acked += 1;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    file.flush()?;
    file.sync_all()?;
    Ok(PublishLog { sent, acked })
}

/// What [`drain_session`] received.
#[derive(Debug, Serialize)]
pub struct Drained {
    /// Whether the broker still had the session.
    pub session_present: bool,
    /// Messages received (each number appended to the log).
    pub received: u64,
}

/// Connect as the persistent session `client_id` (expiry 1 h), subscribe to `topic` at
/// QoS 1 unless the broker still has the session (then its queue arrives at once), and receive until nothing has come for `idle`, acknowledging each message and
/// appending its payload to `log`.
pub async fn drain_session(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    idle: Duration,
    log: &std::path::Path,
) -> Result<Drained, BenchError> {
    use std::io::Write;
    let (mut conn, session_present) = connect_session(addr, client_id, Some(3600)).await?;
    if !session_present {
        subscribe(&mut conn, topic, QoS::AtLeastOnce).await?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut received = 0;
    let mut acks = BytesMut::new();
    loop {
        let packet = match tokio::time::timeout(idle, conn.reader.next()).await {
            Ok(p) => p?,
            Err(_) => break,
        };
        match packet {
            Some(Packet::Publish(p)) => {
                file.write_all(&p.payload)?;
                file.write_all(b"\n")?;
                received += 1;
                if let Some(id) = p.packet_id {
                    encode(&Packet::PubAck(PubAck::new(id)), &mut acks)?;
                    conn.writer.write_all(&acks).await?;
                    acks.clear();
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    file.sync_all()?;
    Ok(Drained {
        session_present,
        received,
    })
}
