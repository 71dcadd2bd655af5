//! One client connection: read CONNECT, authenticate, then run the session loop that decodes
//! packets, routes publishes, acknowledges them once the router's durable consumers settled
//! them (in the order received, as MQTT requires), and delivers subscribed messages.
//!
//! The loop owns the socket; nothing else writes to it. It stops reading while
//! `receive_maximum` publishes await their verdict, which is how store backpressure reaches a
//! publishing client.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use ferrite_core::{TopicFilter, TopicName};
use ferrite_mqtt_codec::{
    ConnAck, Connect, DecodeError, Decoder, Disconnect, Packet, Properties, ProtocolVersion,
    PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{ConnectRequest, SessionGuard};
use crate::router::{
    Message, Outgoing, PublishOutcome, SessionHandle, SessionQueue, SubscribeOptions, Verdict,
};
use crate::server::{Live, Shared};
use crate::session::{InFlight, Parked, PendingWill, send_will};

/// Longest client identifier accepted (MQTT requires servers to accept 23; more is allowed).
const MAX_CLIENT_ID_LEN: usize = 256;

/// Read buffer of a quiet connection; it doubles while reads fill it, up to [`RBUF_MAX`], and
/// shrinks back when they stop, so an idle connection holds little memory and a busy one
/// reads in large chunks.
const RBUF_MIN: usize = 64;
const RBUF_MAX: usize = 64 << 10;
/// A write buffer larger than this is released once written, not kept for the next write.
const WBUF_KEEP: usize = 1024;
/// Deliveries taken off the session queue for one write at most, and the bytes they may
/// fill the write buffer with.
const DELIVERY_BATCH: usize = 256;
const DELIVERY_BATCH_BYTES: usize = 64 << 10;

/// Why a connection ends.
#[derive(Debug)]
enum Exit {
    /// The client sent DISCONNECT; `publish_will` for MQTT 5 reason 0x04; an MQTT 5 client
    /// may set a new session expiry interval.
    ClientDisconnect {
        publish_will: bool,
        session_expiry: Option<u32>,
    },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    /// We close it, telling an MQTT 5 client why.
    Close(ReasonCode, &'static str),
    /// Server shutdown.
    Shutdown,
    /// Another connection took over this client id.
    TakenOver,
}

impl Exit {
    /// Why the connection ended, in a few words (for presence records).
    fn describe(&self) -> &'static str {
        match self {
            Exit::ClientDisconnect { .. } => "client disconnected",
            Exit::Lost => "connection lost",
            Exit::Close(_, why) => why,
            Exit::Shutdown => "server shutting down",
            Exit::TakenOver => "session taken over",
        }
    }
}

type AckFuture = Pin<Box<dyn Future<Output = (InboundAck, PublishOutcome)> + Send>>;

/// What to send once a publish is settled.
#[derive(Debug)]
enum InboundAck {
    None,
    PubAck(u16),
    PubRec(u16),
    /// A SUBACK or UNSUBACK of a persistent session, sent once its subscriptions are
    /// stored (`stored` says why not, if they could not be); the retained messages of new
    /// subscriptions follow it.
    Reply {
        packet: Box<Packet>,
        backlog: Vec<Outgoing>,
        stored: Result<(), String>,
    },
}

/// Serve one connection until it ends. Never panics on input.
pub(crate) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    client_cert: Option<Vec<u8>>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(RBUF_MIN);
    let mut decoder = Decoder::new(shared.config.max_packet_size);
    // The connect and close stages are boxed, and the CONNECT they work from never lives
    // in this function: their futures (takeover waits, will publishes) and that packet are
    // large and short-lived, and every idle connection's task would carry their space.
    let accepted = Box::pin(handshake(
        &mut stream,
        &mut rbuf,
        &mut decoder,
        peer,
        client_cert.as_deref(),
        &shared,
    ))
    .await;
    let Some(mut session) = accepted else {
        return;
    };
    let version = session.version;
    let exit = session
        .run(&mut stream, &mut rbuf, &mut decoder, &shared)
        .await;
    Box::pin((*session).finish(&mut stream, exit, version, &shared)).await;
}

/// The client's CONNECT, then CONNACK: the session to run, if the connection goes on.
async fn handshake<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    peer: SocketAddr,
    client_cert: Option<&[u8]>,
    shared: &Arc<Shared>,
) -> Option<Box<Session>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = read_first_connect(stream, rbuf, decoder, peer, shared).await?;
    accept(stream, connect, peer, client_cert, shared).await
}

/// Wait for the client's CONNECT (within `connect_timeout`); `None` when there is none to
/// go on with (refused, malformed, timed out, gone, shutting down).
async fn read_first_connect<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<Connect>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = tokio::select! {
        r = tokio::time::timeout(shared.config.connect_timeout, read_connect(stream, rbuf, decoder)) => r,
        () = shared.shutdown.cancelled() => return None,
    };
    match connect {
        Ok(Ok(c)) => Some(c),
        Ok(Err(ConnectFailure::Decode(DecodeError::UnsupportedProtocolVersion(level)))) => {
            tracing::debug!(%peer, level, "unsupported MQTT protocol level");
            // The 3.1.1 CONNACK layout is what older clients understand (return code 1).
            refuse(
                stream,
                shared,
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ProtocolVersion::V311,
            )
            .await;
            None
        }
        Ok(Err(ConnectFailure::Decode(e))) => {
            tracing::debug!(%peer, error = %e, "malformed CONNECT");
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ok(Err(ConnectFailure::Io)) => None,
        Err(_elapsed) => {
            tracing::debug!(%peer, "no CONNECT within connect_timeout");
            None
        }
    }
}

enum ConnectFailure {
    Decode(DecodeError),
    Io,
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Connect, ConnectFailure> {
    loop {
        match decoder.decode(rbuf) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            // The decoder accepts only CONNECT before a version is known.
            Ok(Some(_)) => {
                return Err(ConnectFailure::Decode(DecodeError::ProtocolError(
                    "first packet must be CONNECT",
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectFailure::Decode(e)),
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(ConnectFailure::Io),
            Ok(_) => {}
        }
    }
}

async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &Packet,
    version: ProtocolVersion,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    if let Err(e) = packet.encode(version, &mut buf) {
        tracing::error!(error = %e, packet = packet.packet_type_name(), "cannot encode packet");
        return Ok(());
    }
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Answer CONNECT with a refusal (the connection is closed by the caller returning).
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    code: ReasonCode,
    version: ProtocolVersion,
) {
    shared
        .stats
        .connects_refused
        .fetch_add(1, Ordering::Relaxed);
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: Properties::default(),
    });
    let _ = write_packet(stream, &ack, version).await;
}

/// Validate CONNECT, authenticate, take over an existing session, send CONNACK.
async fn accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    connect: Connect,
    peer: SocketAddr,
    client_cert: Option<&[u8]>,
    shared: &Arc<Shared>,
) -> Option<Box<Session>> {
    let version = connect.protocol;
    // MQTT 3.1.1 allows an empty client id only with a clean session; we cap its length.
    let empty_id_refused =
        connect.client_id.is_empty() && version == ProtocolVersion::V311 && !connect.clean_start;
    if empty_id_refused || connect.client_id.len() > MAX_CLIENT_ID_LEN {
        refuse(
            stream,
            shared,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            version,
        )
        .await;
        return None;
    }
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        let id = format!(
            "ferrite-{:016x}",
            shared.next_connection_id() ^ shared.clock.now().as_nanos() as u64
        );
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.as_str().into()
    };
    let request = ConnectRequest {
        client_id: &client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer,
        client_cert,
    };
    let guard = match shared.auth.authenticate(&request) {
        Ok(g) => g,
        Err(code) => {
            tracing::info!(%peer, client_id = %client_id, reason = %code, "connection refused");
            refuse(stream, shared, code, version).await;
            return None;
        }
    };
    let will = match connect
        .will
        .map(|w| TopicName::new(w.topic.clone()).map(|t| (t, w)))
    {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            tracing::debug!(%peer, client_id = %client_id, error = %e, "invalid will topic");
            refuse(stream, shared, ReasonCode::TOPIC_NAME_INVALID, version).await;
            return None;
        }
    };

    // Keep-alive: cap it; an MQTT 5 client is told the value it must use.
    let max_keep_alive = u16::try_from(shared.config.max_keep_alive.as_secs()).unwrap_or(u16::MAX);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if version == ProtocolVersion::V5 && (keep_alive == 0 || keep_alive > max_keep_alive) {
        keep_alive = max_keep_alive;
        server_keep_alive = Some(max_keep_alive);
    }

    // Session expiry: MQTT 5 asks for it (0, the default, ends the session with the
    // connection); an MQTT 3.1.1 persistent session gets the configured maximum.
    let max_expiry = shared.config.max_session_expiry;
    let requested = match version {
        ProtocolVersion::V5 => Duration::from_secs(u64::from(
            connect.properties.session_expiry_interval.unwrap_or(0),
        )),
        _ if connect.clean_start => Duration::ZERO,
        _ => max_expiry,
    };
    let expiry = requested.min(max_expiry);
    let told_expiry = (version == ProtocolVersion::V5 && requested > max_expiry)
        .then(|| u32::try_from(max_expiry.as_secs()).unwrap_or(u32::MAX - 1));

    // The guard's own token (see `SessionGuard::revoked`), cancelled by the revocation of
    // the credentials, by a takeover (through the client registry) or at shutdown (the
    // server cancels every registered client's token): the session loop waits on one token
    // for all three, one future less in every connection's task and no token of its own.
    let takeover = guard.revoked();
    let conn_id = shared.next_connection_id();
    let keep_alive_after =
        (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let live = Arc::new(Live::default());
    if let Some(after) = keep_alive_after {
        shared.touch(&live, after);
    }
    let old = shared.register_client(&client_id, conn_id, takeover.clone(), Arc::clone(&live));
    // Registered before this check, so a shutdown either sees this client or is seen here.
    if shared.shutdown.is_cancelled() {
        takeover.cancel();
    }
    let took_over = old.is_some();
    if let Some(old) = old {
        tracing::info!(client_id = %client_id, "session taken over by a new connection");
        // Known as connected before the old connection reports its end, so presence sees a
        // takeover, never a false offline.
        guard.connected(conn_id, peer);
        old.stop.cancel();
        // The old connection parks its session on the way out; wait for it so this one can
        // take the session over. A connection stuck writing is given up on after a while.
        let _ = tokio::time::timeout(Duration::from_secs(5), old.live.finished()).await;
    }
    let announced = took_over;
    let parked = shared.sessions.take(&client_id);
    let resumed = match parked {
        Some(p) if !connect.clean_start => Some(p),
        Some(p) => {
            // Clean Start ends the old session, publishing its pending will.
            end_session(&client_id, p, shared).await;
            None
        }
        None => None,
    };
    // The client is back: a will restored at start and still waiting is no longer owed (and
    // a resumed session's delayed will was dropped with it).
    drop(shared.sessions.take_orphan_will(&client_id, None));
    let will_delay = will.as_ref().map_or(Duration::ZERO, |(_, w)| {
        Duration::from_secs(u64::from(w.properties.will_delay_interval.unwrap_or(0)))
    });
    // This connection's will is owed from CONNACK on, whatever happens to the gateway.
    let stored_will = match (shared.router.session_store(), &will) {
        (Some(store), Some((topic, w))) => {
            let message = will_message(topic.clone(), w.clone(), &client_id, shared);
            store
                .put_will(&client_id, conn_id, &message, will_delay)
                .wait()
                .await
        }
        (Some(store), None) => {
            store.delete_will(&client_id, None);
            Ok(())
        }
        (None, _) => Ok(()),
    };

    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 {
        properties.receive_maximum = Some(shared.config.receive_maximum);
        properties.maximum_packet_size = Some(shared.config.max_packet_size);
        properties.topic_alias_maximum = Some(shared.config.topic_alias_maximum);
        properties.retain_available = Some(1);
        properties.wildcard_subscription_available = Some(1);
        properties.subscription_identifier_available = Some(1);
        properties.shared_subscription_available = Some(1);
        properties.assigned_client_identifier = assigned;
        properties.server_keep_alive = server_keep_alive;
        properties.session_expiry_interval = told_expiry;
    }
    let ack = Packet::ConnAck(ConnAck {
        session_present: resumed.is_some(),
        reason_code: ReasonCode::SUCCESS,
        properties,
    });
    let refused = if let Err(e) = &stored_will {
        tracing::error!(client_id = %client_id, error = %e, "cannot store the will; connection refused");
        refuse(stream, shared, ReasonCode::SERVER_UNAVAILABLE, version).await;
        true
    } else {
        write_packet(stream, &ack, version).await.is_err()
    };
    if refused {
        if let Some(store) = shared.router.session_store() {
            store.delete_will(&client_id, Some(conn_id));
        }
        shared.unregister_client(&client_id, conn_id);
        if let Some(p) = resumed {
            // Not resumed after all: keep it for the next try.
            shared.sessions.park(Arc::clone(&client_id), p);
        }
        if announced {
            guard.disconnected(conn_id, "connection lost");
        }
        live.finish();
        return None;
    }
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    if !announced {
        guard.connected(conn_id, peer);
    }
    tracing::debug!(%peer, client_id = %client_id, principal = guard.principal(), ?version, "client connected");

    let (handle, out_rx, inflight_out, awaiting_rel, next_packet_id, next_seq) = match resumed {
        Some(mut p) => {
            // What the client may subscribe to can have changed while it was away.
            let dropped = p.handle.retain_filters(|raw| guard.may_subscribe(raw));
            if dropped > 0 {
                tracing::info!(client_id = %client_id, dropped, "subscriptions no longer authorized removed on resume");
            }
            tracing::debug!(client_id = %client_id, inflight = p.inflight_out.len(), queued = p.out_rx.len(), "session resumed");
            shared
                .stats
                .sessions_resumed
                .fetch_add(1, Ordering::Relaxed);
            (
                p.handle,
                p.out_rx,
                p.inflight_out,
                p.awaiting_rel,
                p.next_packet_id,
                p.next_seq,
            )
        }
        None => {
            let (tx, out_rx) = SessionQueue::new(
                shared.config.session_queue,
                shared.config.session_queue_bytes,
                shared.config.session_queue_full,
                shared.router.queue_memory(),
            );
            let handle = shared.router.register_session(Arc::clone(&client_id), tx);
            (handle, out_rx, BTreeMap::new(), BTreeSet::new(), 1, 0)
        }
    };
    let mut handle = handle;
    if expiry.is_zero() {
        handle.make_volatile();
    } else {
        // Not waited for: a crash before it commits is seen by the client as a session
        // that is not present on its next CONNACK, which MQTT lets it handle.
        let _ = handle.make_durable(&client_id, expiry, 0);
    }
    let client_receive_max = connect
        .properties
        .receive_maximum
        .unwrap_or(u16::MAX)
        .max(1);
    // Boxed: the connection's future would otherwise hold it twice (as `accept`'s answer
    // and as the running session) for as long as the connection lives.
    Some(Box::new(Session {
        version,
        client_id,
        conn_id,
        peer,
        keep_alive: keep_alive_after,
        live,
        handle,
        out_rx,
        takeover,
        expiry,
        pending: FuturesOrdered::new(),
        inflight_in: 0,
        awaiting_rel,
        inflight_out,
        backlog: VecDeque::new(),
        next_packet_id,
        next_seq,
        will_delay,
        client_receive_max,
        client_max_packet: connect.properties.maximum_packet_size,
        aliases: BTreeMap::new(),
        guard,
        will: will.map(Box::new),
        wbuf: BytesMut::new(),
    }))
}

struct Session {
    version: ProtocolVersion,
    client_id: Arc<str>,
    /// Distinguishes this connection from a later one with the same client id.
    conn_id: u64,
    peer: SocketAddr,
    /// 1.5 × the negotiated keep-alive; `None` when the client disabled it (MQTT 3.1.1).
    keep_alive: Option<Duration>,
    /// Shared with the client registry: the keep-alive deadline the server's reaper watches
    /// (moved on by every read), and the signal, given once the connection has ended and
    /// the session is parked or ended, that a connection taking over may pick it up.
    live: Arc<Live>,
    /// Our subscriptions in the router; dropping it unsubscribes everything.
    handle: SessionHandle,
    /// Deliveries from the router (bounded: `mqtt.session_queue`).
    out_rx: SessionQueue,
    /// The guard's revocation token, also cancelled when another connection takes over the
    /// client id, or at shutdown (by the server's sweep of registered clients).
    takeover: CancellationToken,
    /// How long the session outlives the connection; zero ends it with the connection.
    expiry: Duration,
    /// MQTT 5 Will Delay Interval.
    will_delay: Duration,
    /// Publishes waiting for their verdict, in arrival order (acks go out in that order).
    pending: FuturesOrdered<AckFuture>,
    /// QoS 1/2 publishes received and not yet acknowledged.
    inflight_in: usize,
    /// QoS 2 packet ids between our PUBREC and the client's PUBREL.
    awaiting_rel: BTreeSet<u16>,
    /// QoS 1/2 deliveries sent and not yet completed (PUBACK, or PUBREC then PUBCOMP).
    inflight_out: BTreeMap<u16, InFlight>,
    /// Retained messages to send after a SUBACK, ahead of live deliveries.
    backlog: VecDeque<Outgoing>,
    next_packet_id: u16,
    /// Send order of in-flight deliveries.
    next_seq: u64,
    client_receive_max: u16,
    client_max_packet: Option<u32>,
    /// MQTT 5 topic aliases the client set when publishing.
    aliases: BTreeMap<u16, TopicName>,
    /// Boxed: most connections have none, and every idle connection carries this struct.
    will: Option<Box<(TopicName, ferrite_mqtt_codec::Will)>>,
    /// What this connection may do; checked on every publish and subscribe.
    guard: Arc<dyn SessionGuard>,
    /// Encoded packets waiting to be written.
    wbuf: BytesMut,
}

impl Session {
    async fn run<S>(
        &mut self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        decoder: &mut Decoder,
        shared: &Arc<Shared>,
    ) -> Exit
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.resend_inflight(shared);
        let max_pending = usize::from(shared.config.receive_maximum) + 64;
        let mut read_size = RBUF_MIN;
        loop {
            // Decode everything already buffered, unless too many publishes are pending.
            while self.pending.len() < max_pending {
                match decoder.decode(rbuf) {
                    Ok(Some(packet)) => {
                        if let Err(exit) = self.handle_packet(packet, shared) {
                            return exit;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client_id = %self.client_id, error = %e, "malformed packet; closing");
                        return Exit::Close(e.reason_code(), "malformed packet");
                    }
                }
            }
            self.fill_deliveries(shared);
            if !self.wbuf.is_empty() {
                if stream.write_all(&self.wbuf).await.is_err() || stream.flush().await.is_err() {
                    return Exit::Lost;
                }
                if self.wbuf.capacity() > WBUF_KEEP {
                    self.wbuf = BytesMut::new();
                } else {
                    self.wbuf.clear();
                }
            }
            // Size the read buffer for what reads have been bringing.
            if rbuf.is_empty() && rbuf.capacity() > 2 * read_size {
                *rbuf = BytesMut::with_capacity(read_size);
            } else if rbuf.capacity() - rbuf.len() < read_size {
                rbuf.reserve(read_size);
            }
            let spare = rbuf.capacity() - rbuf.len();
            let can_read = self.pending.len() < max_pending;
            let can_deliver = self.backlog.is_empty()
                && self.inflight_out.len() < usize::from(self.client_receive_max);
            tokio::select! {
                () = self.takeover.cancelled() => {
                    return if shared.shutdown.is_cancelled() {
                        Exit::Shutdown
                    } else if self.live.expired() {
                        tracing::debug!(client_id = %self.client_id, "keep-alive expired");
                        Exit::Close(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep alive timeout")
                    } else if shared.is_current(&self.client_id, self.conn_id) {
                        // Not taken over (the registry would name the new connection).
                        shared.stats.revoked.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(client_id = %self.client_id, principal = self.guard.principal(), "credentials revoked; closing");
                        Exit::Close(ReasonCode::NOT_AUTHORIZED, "credentials revoked")
                    } else {
                        Exit::TakenOver
                    };
                }
                Some((ack, outcome)) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err(exit) = self.settled(ack, outcome, shared) {
                        return exit;
                    }
                }
                Some(out) = self.out_rx.recv(), if can_deliver => {
                    self.deliver(*out, shared);
                    // More are usually queued behind it: take them now, so that one write
                    // carries many deliveries instead of one each.
                    for _ in 1..DELIVERY_BATCH {
                        if !self.backlog.is_empty()
                            || self.inflight_out.len() >= usize::from(self.client_receive_max)
                            || self.wbuf.len() >= DELIVERY_BATCH_BYTES
                        {
                            break;
                        }
                        let Some(out) = self.out_rx.try_recv() else {
                            break;
                        };
                        self.deliver(*out, shared);
                    }
                }
                read = stream.read_buf(rbuf), if can_read => match read {
                    Ok(0) | Err(_) => return Exit::Lost,
                    Ok(n) => {
                        if let Some(after) = self.keep_alive {
                            shared.touch(&self.live, after);
                        }
                        if n >= spare {
                            read_size = (read_size * 2).min(RBUF_MAX);
                        } else if n < read_size / 4 {
                            read_size = (read_size / 2).max(RBUF_MIN);
                        }
                    }
                },
            }
        }
    }

    fn send(&mut self, packet: &Packet) {
        if let Err(e) = packet.encode(self.version, &mut self.wbuf) {
            tracing::error!(client_id = %self.client_id, error = %e, packet = packet.packet_type_name(), "cannot encode packet");
        }
    }

    fn handle_packet(&mut self, packet: Packet, shared: &Arc<Shared>) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, shared),
            Packet::PubAck(a) => {
                if self
                    .inflight_out
                    .get(&a.packet_id)
                    .is_some_and(|f| f.out.qos == QoS::AtLeastOnce)
                {
                    self.complete(a.packet_id);
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let reason = match self.inflight_out.get_mut(&a.packet_id) {
                    Some(f) if f.out.qos == QoS::ExactlyOnce => {
                        if a.reason_code.is_error() {
                            // The client refused the message: the flow ends here.
                            self.complete(a.packet_id);
                            return Ok(());
                        }
                        f.released = true;
                        if let (Some(seq), Some(d)) = (f.out.store_seq, self.handle.durable()) {
                            d.set_inflight(seq, a.packet_id, true);
                        }
                        ReasonCode::SUCCESS
                    }
                    _ => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                };
                self.send(&Packet::PubRel(PubAck {
                    packet_id: a.packet_id,
                    reason_code: reason,
                    properties: Properties::default(),
                }));
                Ok(())
            }
            Packet::PubComp(a) => {
                if self
                    .inflight_out
                    .get(&a.packet_id)
                    .is_some_and(|f| f.released)
                {
                    self.complete(a.packet_id);
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let reason = if self.awaiting_rel.remove(&r.packet_id) {
                    if let Some(d) = self.handle.durable() {
                        d.delete_awaiting_rel(r.packet_id);
                    }
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubComp(PubAck {
                    packet_id: r.packet_id,
                    reason_code: reason,
                    properties: Properties::default(),
                }));
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(s, shared);
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                let session_expiry = d.properties.session_expiry_interval;
                if self.expiry.is_zero() && session_expiry.is_some_and(|e| e > 0) {
                    // MQTT 5 3.14.2.2.2: a session that was to end may not be extended now.
                    return Err(Exit::Close(
                        ReasonCode::PROTOCOL_ERROR,
                        "session expiry set on DISCONNECT after 0 on CONNECT",
                    ));
                }
                Err(Exit::ClientDisconnect {
                    publish_will: d.reason_code == ReasonCode::DISCONNECT_WITH_WILL,
                    session_expiry,
                })
            }
            Packet::Auth(_) => Err(Exit::Close(
                ReasonCode::PROTOCOL_ERROR,
                "enhanced authentication is not supported",
            )),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(Exit::Close(
                ReasonCode::PROTOCOL_ERROR,
                "packet not allowed from a client",
            )),
        }
    }

    fn on_publish(&mut self, p: Publish, shared: &Arc<Shared>) -> Result<(), Exit> {
        // Resolve MQTT 5 topic aliases.
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                if alias == 0 || alias > shared.config.topic_alias_maximum {
                    return Err(Exit::Close(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        "topic alias out of range",
                    ));
                }
                if p.topic.is_empty() {
                    match self.aliases.get(&alias) {
                        Some(t) => t.clone(),
                        None => {
                            return Err(Exit::Close(
                                ReasonCode::PROTOCOL_ERROR,
                                "unknown topic alias",
                            ));
                        }
                    }
                } else {
                    let t = parse_topic(&p.topic)?;
                    self.aliases.insert(alias, t.clone());
                    t
                }
            }
            None => parse_topic(&p.topic)?,
        };
        let ack = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => InboundAck::None,
            (QoS::AtLeastOnce, Some(id)) => InboundAck::PubAck(id),
            (QoS::ExactlyOnce, Some(id)) => {
                if self.awaiting_rel.contains(&id) {
                    // A resend of a QoS 2 publish we already took: acknowledge, don't route.
                    self.send(&Packet::PubRec(PubAck {
                        packet_id: id,
                        reason_code: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    }));
                    return Ok(());
                }
                InboundAck::PubRec(id)
            }
            (_, None) => {
                return Err(Exit::Close(
                    ReasonCode::PROTOCOL_ERROR,
                    "missing packet identifier",
                ));
            }
        };
        if !matches!(ack, InboundAck::None) {
            if self.version == ProtocolVersion::V5
                && self.inflight_in >= usize::from(shared.config.receive_maximum)
            {
                return Err(Exit::Close(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                ));
            }
            self.inflight_in += 1;
        }
        if !self.guard.may_publish(topic.as_str()) {
            shared
                .stats
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(client_id = %self.client_id, principal = self.guard.principal(), topic = %topic, qos = ?p.qos, "publish not authorized");
            // Answered in order with the other acks: 0x87 (MQTT 5) or a plain ack (3.1.1,
            // which cannot refuse a publish); a QoS 0 publish is just dropped.
            let outcome = PublishOutcome {
                matched: 0,
                verdict: Verdict::Rejected(ReasonCode::NOT_AUTHORIZED, "not authorized".into()),
            };
            self.pending
                .push_back(Box::pin(std::future::ready((ack, outcome))));
            return Ok(());
        }
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let message = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            publisher: Arc::clone(&self.client_id),
            received_at: shared.clock.now(),
        };
        shared.stats.publishes_in.fetch_add(1, Ordering::Relaxed);
        let router = shared.router.clone();
        // A persistent session remembers the QoS 2 publishes it took before saying PUBREC,
        // so one resent after a restart is not routed again.
        let durable = match ack {
            InboundAck::PubRec(_) => self.handle.durable().cloned(),
            _ => None,
        };
        self.pending.push_back(Box::pin(async move {
            let mut outcome = router.publish(message).await;
            if let (InboundAck::PubRec(id), Some(durable)) = (&ack, durable)
                && outcome.verdict == Verdict::Accepted
                && let Err(e) = durable.put_awaiting_rel(*id).wait().await
            {
                outcome.verdict = Verdict::Rejected(
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    format!("the QoS 2 state could not be stored: {e}"),
                );
            }
            (ack, outcome)
        }));
        Ok(())
    }

    /// The client completed the delivery `packet_id` (or refused it): forget it, here and in
    /// the session store.
    fn complete(&mut self, packet_id: u16) {
        if let Some(f) = self.inflight_out.remove(&packet_id)
            && let (Some(seq), Some(d)) = (f.out.store_seq, self.handle.durable())
        {
            d.delete_message(seq);
        }
    }

    /// Send a SUBACK/UNSUBACK now, or once the session's subscriptions are stored if it is
    /// persistent; `backlog` (retained messages for new subscriptions) follows it.
    fn reply_after_store(&mut self, packet: Packet, backlog: Vec<Outgoing>) {
        match self.handle.persist_subscriptions() {
            None => {
                self.send(&packet);
                self.backlog.extend(backlog);
            }
            Some(commit) => {
                self.pending.push_back(Box::pin(async move {
                    let stored = commit.wait().await;
                    let outcome = PublishOutcome {
                        matched: 0,
                        verdict: Verdict::Accepted,
                    };
                    let packet = Box::new(packet);
                    (
                        InboundAck::Reply {
                            packet,
                            backlog,
                            stored,
                        },
                        outcome,
                    )
                }));
            }
        }
    }

    /// A publish got its verdict: send PUBACK/PUBREC.
    fn settled(
        &mut self,
        ack: InboundAck,
        outcome: PublishOutcome,
        shared: &Arc<Shared>,
    ) -> Result<(), Exit> {
        let (reason, reason_string) = match outcome.verdict {
            Verdict::Accepted if outcome.matched == 0 => {
                (ReasonCode::NO_MATCHING_SUBSCRIBERS, None)
            }
            Verdict::Accepted => (ReasonCode::SUCCESS, None),
            Verdict::Rejected(code, why) => {
                shared
                    .stats
                    .publishes_rejected
                    .fetch_add(1, Ordering::Relaxed);
                // A consumer's code that PUBACK/PUBREC may not carry must not cost the
                // connection (the ack would fail to encode): fall back to Unspecified error.
                let code = if code.allowed_in_puback() {
                    code
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                };
                (code, Some(why))
            }
        };
        let (packet_id, is_rec) = match ack {
            InboundAck::None => return Ok(()),
            InboundAck::PubAck(id) => (id, false),
            InboundAck::PubRec(id) => (id, true),
            InboundAck::Reply {
                mut packet,
                backlog,
                stored,
            } => {
                if let Err(e) = stored {
                    tracing::error!(client_id = %self.client_id, error = %e, "subscriptions of a persistent session could not be stored");
                    // Tell the client its subscriptions are not safe, so it asks again.
                    let failed = if self.version == ProtocolVersion::V5 {
                        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    };
                    if let Packet::SubAck(ack) = packet.as_mut() {
                        ack.reason_codes.iter_mut().for_each(|c| *c = failed);
                    }
                }
                self.send(&packet);
                self.backlog.extend(backlog);
                return Ok(());
            }
        };
        self.inflight_in = self.inflight_in.saturating_sub(1);
        if self.version == ProtocolVersion::V311 && reason.is_error() && !is_permanent(reason) {
            // MQTT 3.1.1 cannot say "not stored": close without acknowledging, so the client
            // resends later. Permanent refusals (bad payload) are acknowledged instead, so a
            // poison message is not retried forever; they are counted and logged.
            return Err(Exit::Close(reason, "publish could not be accepted"));
        }
        let mut properties = Properties::default();
        if self.version == ProtocolVersion::V5 {
            properties.reason_string = reason_string;
        }
        let ack = PubAck {
            packet_id,
            reason_code: if self.version == ProtocolVersion::V5 {
                reason
            } else {
                ReasonCode::SUCCESS
            },
            properties,
        };
        if is_rec {
            if !reason.is_error() {
                self.awaiting_rel.insert(packet_id);
            }
            self.send(&Packet::PubRec(ack));
        } else {
            self.send(&Packet::PubAck(ack));
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe, shared: &Arc<Shared>) {
        let subscription_id = s.properties.subscription_identifiers.first().copied();
        let mut reason_codes = Vec::with_capacity(s.filters.len());
        let mut backlog = Vec::new();
        for (filter, options) in s.filters {
            let raw = filter;
            let (share, filter) = match parse_filter(&raw) {
                Ok(f) => f,
                Err(()) => {
                    tracing::debug!(client_id = %self.client_id, filter = raw, "invalid topic filter");
                    reason_codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if !self.guard.may_subscribe(&raw) {
                shared
                    .stats
                    .subscriptions_denied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(client_id = %self.client_id, principal = self.guard.principal(), filter = raw, "subscription not authorized");
                reason_codes.push(if self.version == ProtocolVersion::V5 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            if share.is_some() && options.no_local {
                // MQTT 5 forbids No Local on a shared subscription.
                reason_codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let granted = options.qos;
            let sub_options = SubscribeOptions {
                qos: granted,
                no_local: options.no_local,
                retain_as_published: options.retain_as_published,
                subscription_id,
            };
            reason_codes.push(ReasonCode(granted as u8));
            if let Some(share) = share {
                // Retained messages are not sent for shared subscriptions (MQTT 5 4.8.2).
                self.handle.subscribe_shared(&share, &filter, sub_options);
                continue;
            }
            let existed = self.handle.subscribe(&filter, sub_options);
            let send_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send_retained {
                for message in shared.router.retained_matching(&filter) {
                    backlog.push(Outgoing {
                        qos: message.qos.min(granted),
                        retain: true,
                        subscription_ids: subscription_id.into_iter().collect(),
                        message,
                        store_seq: None,
                    });
                }
            }
        }
        let ack = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes,
            properties: Properties::default(),
        });
        self.reply_after_store(ack, backlog);
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let reason_codes = u
            .filters
            .into_iter()
            .map(|f| {
                let removed = match parse_filter(&f) {
                    Ok((Some(share), f)) => self.handle.unsubscribe_shared(&share, &f),
                    Ok((None, f)) => self.handle.unsubscribe(&f),
                    Err(()) => return ReasonCode::TOPIC_FILTER_INVALID,
                };
                if removed {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes,
            properties: Properties::default(),
        });
        self.reply_after_store(ack, Vec::new());
    }

    /// Move retained backlog into the write buffer while the client's receive window allows.
    fn fill_deliveries(&mut self, shared: &Arc<Shared>) {
        while self.inflight_out.len() < usize::from(self.client_receive_max) {
            let Some(out) = self.backlog.pop_front() else {
                break;
            };
            self.deliver(out, shared);
        }
    }

    fn deliver(&mut self, out: Outgoing, shared: &Arc<Shared>) {
        let message = &out.message;
        let mut properties = message.properties.clone();
        if let Some(expiry) = properties.message_expiry_interval {
            let age_ns = shared.clock.now().as_nanos() - message.received_at.as_nanos();
            let age = u32::try_from(age_ns.max(0) / 1_000_000_000).unwrap_or(u32::MAX);
            if age >= expiry {
                self.forget_stored(&out);
                return;
            }
            properties.message_expiry_interval = Some(expiry - age);
        }
        if self.version == ProtocolVersion::V5 {
            properties.subscription_identifiers = out.subscription_ids.clone();
        } else {
            properties = Properties::default();
        }
        let packet_id = match out.qos {
            QoS::AtMostOnce => None,
            _ => Some(self.next_free_packet_id()),
        };
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: out.qos,
            retain: out.retain,
            topic: message.topic.as_str().to_owned(),
            packet_id,
            properties,
            payload: message.payload.clone(),
        });
        if let Some(max) = self.client_max_packet {
            match packet.encoded_len(self.version) {
                Ok(len) if len as u64 <= u64::from(max) => {}
                _ => {
                    shared
                        .stats
                        .dropped_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    self.forget_stored(&out);
                    return;
                }
            }
        }
        self.send(&packet);
        shared.stats.publishes_out.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = packet_id {
            if let (Some(seq), Some(d)) = (out.store_seq, self.handle.durable()) {
                d.set_inflight(seq, id, false);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.inflight_out.insert(
                id,
                InFlight {
                    seq,
                    out,
                    released: false,
                },
            );
        }
    }

    /// A stored delivery that will not be sent (expired, too large) is deleted from the store.
    fn forget_stored(&self, out: &Outgoing) {
        if let (Some(seq), Some(d)) = (out.store_seq, self.handle.durable()) {
            d.delete_message(seq);
        }
    }

    /// After resuming a session: resend what was in flight, in the order first sent —
    /// PUBREL for QoS 2 deliveries the client had received, else the PUBLISH with DUP set.
    fn resend_inflight(&mut self, shared: &Arc<Shared>) {
        let mut ids: Vec<(u64, u16)> = self
            .inflight_out
            .iter()
            .map(|(id, f)| (f.seq, *id))
            .collect();
        ids.sort_unstable();
        for (_, id) in ids {
            let Some(f) = self.inflight_out.get(&id) else {
                continue;
            };
            let packet = if f.released {
                Packet::PubRel(PubAck::new(id))
            } else {
                let message = &f.out.message;
                let mut properties = message.properties.clone();
                if self.version == ProtocolVersion::V5 {
                    properties.subscription_identifiers = f.out.subscription_ids.clone();
                } else {
                    properties = Properties::default();
                }
                Packet::Publish(Publish {
                    dup: true,
                    qos: f.out.qos,
                    retain: f.out.retain,
                    topic: message.topic.as_str().to_owned(),
                    packet_id: Some(id),
                    properties,
                    payload: message.payload.clone(),
                })
            };
            self.send(&packet);
            shared.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn next_free_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight_out.contains_key(&id) {
                return id;
            }
        }
    }

    async fn finish<S: AsyncWrite + Unpin>(
        mut self,
        stream: &mut S,
        exit: Exit,
        version: ProtocolVersion,
        shared: &Arc<Shared>,
    ) {
        // Publishes read before the connection ended are routed before it is torn down, in
        // order: a client's last QoS 0 message followed at once by DISCONNECT (as
        // `mosquitto_pub` sends them) or by a close must not vanish with the connection. No
        // acknowledgement goes out for them any more. Bounded: a publish waits at most
        // `mqtt.queue_wait` for queue room.
        let drain = async {
            while let Some((_, outcome)) = self.pending.next().await {
                if let Verdict::Rejected(..) = outcome.verdict {
                    shared
                        .stats
                        .publishes_rejected
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let _ = tokio::time::timeout(
            shared
                .config
                .queue_wait
                .saturating_add(Duration::from_secs(1)),
            drain,
        )
        .await;
        let (reason, publish_will) = match &exit {
            Exit::ClientDisconnect { publish_will, .. } => (None, *publish_will),
            Exit::Lost => (None, true),
            Exit::Close(code, _) => (Some(*code), true),
            Exit::Shutdown => (Some(ReasonCode::SERVER_SHUTTING_DOWN), false),
            Exit::TakenOver => (Some(ReasonCode::SESSION_TAKEN_OVER), true),
        };
        if let Exit::ClientDisconnect {
            session_expiry: Some(secs),
            ..
        } = &exit
        {
            self.expiry =
                Duration::from_secs(u64::from(*secs)).min(shared.config.max_session_expiry);
            if !self.expiry.is_zero() {
                let _ = self.handle.make_durable(&self.client_id, self.expiry, 0);
            }
        }
        // Acknowledgements already settled still go out on a clean close; unsettled ones
        // never do (the client resends them).
        if let Some(code) = reason
            && version == ProtocolVersion::V5
        {
            let mut properties = Properties::default();
            if let Exit::Close(_, why) = &exit {
                properties.reason_string = Some((*why).to_owned());
            }
            self.send(&Packet::Disconnect(Disconnect {
                reason_code: code,
                properties,
            }));
        }
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = stream.write_all(&self.wbuf).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
        tracing::debug!(client_id = %self.client_id, peer = %self.peer, ?exit, "client disconnected");
        self.guard.disconnected(self.conn_id, exit.describe());
        if publish_will
            && let Some((topic, _)) = self.will.as_deref()
            && !self.guard.may_publish(topic.as_str())
        {
            shared
                .stats
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(client_id = %self.client_id, principal = self.guard.principal(), topic = %topic, "will not authorized; dropped");
            self.will = None;
        }
        let will = match self.will.take().map(|w| *w) {
            Some((topic, will)) if publish_will => Some(PendingWill {
                conn_id: self.conn_id,
                message: will_message(topic, will, &self.client_id, shared),
            }),
            _ => None,
        };
        // A will not owed any more is forgotten; one held back by a shutdown stays stored,
        // for the gateway to publish after its restart unless the client returns first.
        if will.is_none()
            && !matches!(exit, Exit::Shutdown)
            && let Some(store) = shared.router.session_store()
        {
            store.delete_will(&self.client_id, Some(self.conn_id));
        }
        let Session {
            client_id,
            conn_id,
            mut handle,
            out_rx,
            inflight_out,
            awaiting_rel,
            next_packet_id,
            next_seq,
            expiry,
            will_delay,
            live,
            ..
        } = self;
        let full = !expiry.is_zero()
            && !matches!(exit, Exit::Shutdown)
            && shared.sessions.len() >= shared.config.max_parked_sessions;
        if full {
            shared
                .stats
                .sessions_dropped_full
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_id = %client_id, max = shared.config.max_parked_sessions, "too many sessions kept; this one ends with its connection");
        }
        if expiry.is_zero() || full {
            // The session ends with the connection: unsubscribe, then the will.
            handle.make_volatile();
            drop(handle);
            shared.unregister_client(&client_id, conn_id);
            live.finish();
            if let Some(will) = will {
                send_will(shared, &client_id, will).await;
            }
            return;
        }
        // The session outlives the connection: park it, then let a taker-over in.
        let mut delayed_will = None;
        if let Some(will) = will {
            if will_delay.is_zero() {
                send_will(shared, &client_id, will).await;
            } else {
                delayed_will = Some(will);
            }
        }
        let has_will = delayed_will.is_some();
        let generation = shared.sessions.generation();
        let stale = shared.sessions.park(
            Arc::clone(&client_id),
            Parked {
                generation,
                handle,
                out_rx,
                inflight_out,
                awaiting_rel,
                next_packet_id,
                next_seq,
                will: delayed_will,
            },
        );
        shared.unregister_client(&client_id, conn_id);
        live.finish();
        if let Some(stale) = stale {
            end_session(&client_id, stale, shared).await;
        }
        shared.stats.sessions_parked.fetch_add(1, Ordering::Relaxed);
        spawn_session_timers(
            shared,
            client_id,
            generation,
            expiry,
            has_will.then_some(will_delay),
        );
    }
}

/// End a parked session: unsubscribe it and publish its pending will.
async fn end_session(client_id: &Arc<str>, parked: Parked, shared: &Arc<Shared>) {
    let Parked {
        mut handle, will, ..
    } = parked;
    handle.make_volatile();
    drop(handle);
    if let Some(will) = will {
        send_will(shared, client_id, will).await;
    }
}

/// The message a will becomes when it is published.
fn will_message(
    topic: TopicName,
    will: ferrite_mqtt_codec::Will,
    client_id: &Arc<str>,
    shared: &Shared,
) -> Message {
    Message {
        topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        // The delay is the server's business; PUBLISH may not carry it.
        properties: Properties {
            will_delay_interval: None,
            ..will.properties
        },
        publisher: Arc::clone(client_id),
        received_at: shared.clock.now(),
    }
}

/// The timers of a parked session: its expiry, and its will's delay if shorter.
pub(crate) fn spawn_session_timers(
    shared: &Arc<Shared>,
    client_id: Arc<str>,
    generation: u64,
    expiry: Duration,
    will_delay: Option<Duration>,
) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let started = Instant::now();
        if let Some(delay) = will_delay.filter(|d| *d < expiry) {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.shutdown.cancelled() => return,
            }
            if let Some(will) = shared.sessions.take_will(&client_id, generation) {
                send_will(&shared, &client_id, will).await;
            }
        }
        let until = started.checked_add(expiry);
        tokio::select! {
            () = sleep_until(until) => {}
            () = shared.shutdown.cancelled() => return,
        }
        if let Some(parked) = shared.sessions.take_if(&client_id, generation) {
            tracing::debug!(client_id = %client_id, "session expired");
            shared
                .stats
                .sessions_expired
                .fetch_add(1, Ordering::Relaxed);
            end_session(&client_id, parked, &shared).await;
        }
    });
}

/// A subscription filter, possibly shared: `$share/{share name}/{filter}`.
pub(crate) fn parse_filter(raw: &str) -> Result<(Option<String>, TopicFilter), ()> {
    match raw.strip_prefix("$share/") {
        Some(rest) => {
            let (share, filter) = rest.split_once('/').ok_or(())?;
            if share.is_empty() || share.contains(['+', '#']) {
                return Err(());
            }
            let filter = TopicFilter::new(filter).map_err(|_| ())?;
            Ok((Some(share.to_owned()), filter))
        }
        None => TopicFilter::new(raw).map(|f| (None, f)).map_err(|_| ()),
    }
}

fn parse_topic(topic: &str) -> Result<TopicName, Exit> {
    TopicName::new(topic)
        .map_err(|_| Exit::Close(ReasonCode::TOPIC_NAME_INVALID, "invalid topic name"))
}

/// Refusals that resending cannot fix.
fn is_permanent(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::PAYLOAD_FORMAT_INVALID
            | ReasonCode::TOPIC_NAME_INVALID
            | ReasonCode::NOT_AUTHORIZED
    )
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) fn sizes() -> [(&'static str, usize); 6] {
    use std::mem::size_of;
    [
        ("Session", size_of::<Session>()),
        ("Properties", size_of::<Properties>()),
        ("Will", size_of::<ferrite_mqtt_codec::Will>()),
        ("SessionHandle", size_of::<SessionHandle>()),
        ("Packet", size_of::<Packet>()),
        ("FuturesOrdered", size_of::<FuturesOrdered<AckFuture>>()),
    ]
}
