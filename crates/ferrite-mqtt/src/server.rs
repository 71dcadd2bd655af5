//! The TCP accept loop and the state all connections share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ferrite_core::Clock;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::MqttError;
use crate::auth::Authenticator;
use crate::config::{MqttConfig, TlsConfig};
use crate::router::Router;

/// Gateway counters.
#[derive(Debug, Default, serde::Serialize)]
pub struct MqttStats {
    /// Connections accepted (CONNACK success) since start.
    pub connections: AtomicU64,
    /// CONNECTs refused (auth, client id, protocol version).
    pub connects_refused: AtomicU64,
    /// Connections closed for malformed packets.
    pub malformed: AtomicU64,
    /// PUBLISH packets received.
    pub publishes_in: AtomicU64,
    /// Publishes refused by a durable consumer (bad payload, store unavailable).
    pub publishes_rejected: AtomicU64,
    /// Publishes (QoS 0 ones dropped, others answered 0x87) the client was not authorized for.
    pub publishes_denied: AtomicU64,
    /// Subscription filters refused as not authorized.
    pub subscriptions_denied: AtomicU64,
    /// Connections closed because their credentials were revoked.
    pub revoked: AtomicU64,
    /// PUBLISH packets sent to subscribers.
    pub publishes_out: AtomicU64,
    /// Deliveries dropped because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Sessions kept after their connection ended (Clean Start = 0, expiry > 0).
    pub sessions_parked: AtomicU64,
    /// Parked sessions taken back by a reconnecting client.
    pub sessions_resumed: AtomicU64,
    /// Parked sessions ended because their expiry interval passed.
    pub sessions_expired: AtomicU64,
    /// Sessions ended at disconnect because `mqtt.max_parked_sessions` were kept already.
    pub sessions_dropped_full: AtomicU64,
    /// Persistent sessions read back from the session store at start.
    pub sessions_restored: AtomicU64,
    /// Wills read back from the session store at start whose session had ended (each is
    /// published after its delay unless the client returns first).
    pub wills_restored: AtomicU64,
    /// QoS 1/2 deliveries resent (DUP) or released again on session resume.
    pub redelivered: AtomicU64,
    /// TLS handshakes that failed or timed out (bad or missing client certificates among them).
    pub tls_handshake_failed: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) config: MqttConfig,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: Arc<MqttStats>,
    /// Live connection per client id, for session takeover: its connection id, the token
    /// that tells it to stop, and the token it cancels once it has ended (and parked its
    /// session). Touched on connect and close.
    clients: Mutex<HashMap<Arc<str>, LiveClient>>,
    /// Sessions whose connection ended, kept for the client's return.
    pub(crate) sessions: crate::session::Sessions,
    next_connection: AtomicU64,
    /// Keep-alive deadlines count milliseconds from here.
    pub(crate) epoch: tokio::time::Instant,
    /// The TLS listener's acceptor; replaced by [`MqttHandle::reload_tls`].
    tls: Option<std::sync::RwLock<TlsAcceptor>>,
}

/// How often the keep-alive reaper looks for connections past their deadline: a silent
/// client is closed between 1.5 × its keep-alive and that plus this.
const KEEP_ALIVE_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// What a live connection shares with the client registry, in one small allocation.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// The keep-alive deadline in milliseconds since [`Shared::epoch`]: 0 while there is
    /// none, [`EXPIRED`] once the reaper has stopped the connection for it. The connection
    /// moves it on with every read; the reaper (one task for the server, instead of a timer
    /// in every connection's task) compares it with the clock.
    deadline: AtomicU64,
    /// Set once the connection has ended and its session is parked or ended.
    finished: std::sync::atomic::AtomicBool,
    done: tokio::sync::Notify,
}

const EXPIRED: u64 = u64::MAX;

impl Live {
    /// Whether the reaper stopped the connection for its keep-alive.
    pub(crate) fn expired(&self) -> bool {
        self.deadline.load(Ordering::Relaxed) == EXPIRED
    }

    /// The connection has ended and its session is parked or ended.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.done.notify_waiters();
    }

    /// Wait for [`Live::finish`].
    pub(crate) async fn finished(&self) {
        let notified = self.done.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a finish in between still wakes it.
        notified.as_mut().enable();
        if !self.finished.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// The live connection of one client id.
pub(crate) struct LiveClient {
    conn: u64,
    /// Cancelled to make the connection stop (takeover, keep-alive expiry, shutdown).
    pub(crate) stop: CancellationToken,
    /// Its keep-alive deadline and end.
    pub(crate) live: Arc<Live>,
}

impl Shared {
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Record `conn` as the live connection of `client_id` (stopped through `stop`; it calls
    /// `live.finish()` when done); returns the previous live connection, if any.
    pub(crate) fn register_client(
        &self,
        client_id: &Arc<str>,
        conn: u64,
        stop: CancellationToken,
        live: Arc<Live>,
    ) -> Option<LiveClient> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.insert(Arc::clone(client_id), LiveClient { conn, stop, live })
    }

    /// Milliseconds since [`Shared::epoch`] (never 0).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(EXPIRED - 1)
            .saturating_add(1)
    }

    /// Move `live`'s keep-alive deadline to `after` from now, unless the reaper already
    /// expired it.
    pub(crate) fn touch(&self, live: &Live, after: std::time::Duration) {
        let deadline = self
            .now_ms()
            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(EXPIRED))
            .min(EXPIRED - 1);
        let _ = live
            .deadline
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                (d != EXPIRED).then_some(deadline)
            });
    }

    /// Stop the connections whose keep-alive deadline has passed.
    fn expire_silent(&self) {
        let now = self.now_ms();
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        for c in clients.values() {
            let d = c.live.deadline.load(Ordering::Relaxed);
            if d != 0
                && d < now
                && c.live
                    .deadline
                    .compare_exchange(d, EXPIRED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                c.stop.cancel();
            }
        }
    }

    /// Stop every registered connection (at shutdown; a connection registering later sees
    /// the shutdown token itself).
    fn stop_clients(&self) {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        for c in clients.values() {
            c.stop.cancel();
        }
    }

    /// Whether `conn` is still `client_id`'s registered connection (not taken over).
    pub(crate) fn is_current(&self, client_id: &Arc<str>, conn: u64) -> bool {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.get(client_id).is_some_and(|c| c.conn == conn)
    }

    /// Forget `conn` as `client_id`'s live connection, unless a newer one replaced it.
    pub(crate) fn unregister_client(&self, client_id: &Arc<str>, conn: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.get(client_id).is_some_and(|c| c.conn == conn) {
            clients.remove(client_id);
        }
    }

    fn connected(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Lets another transport (MQTT over WebSocket in the HTTP API) hand connections to the
/// gateway. Cheap to clone.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
}

/// The gateway's state and counters since start, as `GET /api/v1/mqtt` shows them.
#[derive(Debug, serde::Serialize)]
pub struct GatewayStats<'a> {
    /// Clients connected now.
    pub clients_connected: usize,
    /// Persistent sessions kept for clients that are away now.
    pub sessions_away: usize,
    /// Retained messages held now.
    pub retained: usize,
    /// Topic and payload bytes queued for delivery across all sessions now (against
    /// `mqtt.max_queued_bytes`).
    pub queued_bytes: usize,
    /// Connections, publishes, sessions, refusals.
    pub gateway: &'a MqttStats,
    /// Routing and the deliveries dropped by each queue limit.
    pub router: &'a crate::router::RouterStats,
    /// The session store's commits; absent for a gateway without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_store: Option<&'a crate::persist::PersistStats>,
}

impl MqttHandle {
    /// A snapshot of the gateway's state and its counters.
    pub fn stats(&self) -> GatewayStats<'_> {
        let s = &self.shared;
        GatewayStats {
            clients_connected: s
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            sessions_away: s.sessions.len(),
            retained: s.router.retained_count(),
            queued_bytes: s.router.queued_bytes(),
            gateway: &s.stats,
            router: s.router.stats(),
            session_store: s.router.persist_stats().map(|a| &**a),
        }
    }

    /// Serve one already-established byte stream as an MQTT connection, under the same
    /// connection cap as the listeners. Returns when the connection ends.
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_permit) = Arc::clone(&self.limit).acquire_owned().await else {
            return;
        };
        // Tracked, so shutdown waits for it like for listener connections.
        let shared = Arc::clone(&self.shared);
        let task = self
            .tracker
            .spawn(async move { crate::connection::serve(stream, peer, None, shared).await });
        let _ = task.await;
    }

    /// Rebuild the TLS listener's configuration from `config` (re-reading its PEM files: a
    /// renewed server certificate, a new client CA) for connections accepted from now on.
    /// Fails, keeping the current configuration, if the files are unusable or no TLS
    /// listener runs.
    pub fn reload_tls(&self, config: &TlsConfig) -> Result<(), MqttError> {
        let Some(slot) = &self.shared.tls else {
            return Err(MqttError::Tls("no TLS listener is running".to_owned()));
        };
        let acceptor = crate::tls::acceptor(config)?;
        *slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
        Ok(())
    }
}

/// A running MQTT listener.
pub struct MqttServer {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// The connection cap shared by every transport.
    limit: Arc<Semaphore>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl MqttServer {
    /// Bind the listener and start accepting connections on the current runtime. Stops when
    /// `shutdown` is cancelled; [`MqttServer::wait`] then waits for every connection to close.
    pub async fn start(
        config: MqttConfig,
        router: Router,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Result<Self, MqttError> {
        let (listener, local_addr) = bind(config.listen).await?;
        let (tls, acceptor) = if config.tls.enabled() {
            let acceptor = crate::tls::acceptor(&config.tls)?;
            let (listener, addr) = bind(config.tls.listen).await?;
            (
                Some((listener, addr)),
                Some(std::sync::RwLock::new(acceptor)),
            )
        } else {
            (None, None)
        };
        router.limit_queued_bytes(config.max_queued_bytes, config.queue_wait);
        let shared = Arc::new(Shared {
            router,
            auth,
            clock,
            shutdown,
            stats: Arc::default(),
            clients: Mutex::default(),
            sessions: crate::session::Sessions::default(),
            next_connection: AtomicU64::new(1),
            epoch: tokio::time::Instant::now(),
            tls: acceptor,
            config,
        });
        crate::session::restore(&shared);
        let tracker = TaskTracker::new();
        // Connections wait on one token each for takeover, revocation, keep-alive expiry and
        // shutdown; this task expires silent ones and passes the shutdown on to them.
        let sweep = Arc::clone(&shared);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(KEEP_ALIVE_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = sweep.shutdown.cancelled() => break,
                    _ = tick.tick() => sweep.expire_silent(),
                }
            }
            sweep.stop_clients();
        });
        // One cap for both listeners: when all permits are taken, accepting pauses and new
        // connections wait in the OS backlog.
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        tracker.spawn(accept_loop(
            listener,
            false,
            Arc::clone(&shared),
            Arc::clone(&limit),
            tracker.clone(),
        ));
        let tls_addr = tls.map(|(listener, addr)| {
            tracker.spawn(accept_loop(
                listener,
                true,
                Arc::clone(&shared),
                Arc::clone(&limit),
                tracker.clone(),
            ));
            addr
        });
        Ok(Self {
            local_addr,
            tls_addr,
            limit,
            shared,
            tracker,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for other transports to serve MQTT connections through this gateway.
    pub fn handle(&self) -> MqttHandle {
        MqttHandle {
            shared: Arc::clone(&self.shared),
            limit: Arc::clone(&self.limit),
            tracker: self.tracker.clone(),
        }
    }

    /// The TLS listener's address, if TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<MqttStats> {
        &self.shared.stats
    }

    /// Clients connected now.
    pub fn connected(&self) -> usize {
        self.shared.connected()
    }

    /// Sessions kept for clients that are not connected now.
    pub fn parked_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Wait until the accept loop and every connection task ended (after shutdown).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), MqttError> {
    let err = |source| MqttError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// The task of one accepted connection; holds its slot under `mqtt.max_connections`. It
/// lives as long as the connection, so its size is paid by every idle connection.
async fn connection_task(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    match tls {
        None => crate::connection::serve(stream, peer, None, shared).await,
        // Boxed: the handshake's and the TLS stream's state is large, and inline it would
        // make every plain connection's task that large.
        Some(acceptor) => Box::pin(serve_tls(stream, peer, acceptor, shared)).await,
    }
    drop(permit);
}

/// Serve a TLS connection: the handshake (within the CONNECT timeout), then MQTT with the
/// client's certificate, if it sent one.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    // The handshake counts against the time a client has to CONNECT.
    let handshake =
        tokio::time::timeout(shared.config.connect_timeout, acceptor.accept(stream)).await;
    match handshake {
        Ok(Ok(tls)) => {
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            crate::connection::serve(tls, peer, cert, shared).await;
        }
        Ok(Err(e)) => {
            shared
                .stats
                .tls_handshake_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            shared
                .stats
                .tls_handshake_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let tls = if tls {
                    shared.tls.as_ref().map(|slot| {
                        slot.read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone()
                    })
                } else {
                    None
                };
                tracker.spawn(connection_task(stream, peer, tls, shared, permit));
            }
            Err(e) => {
                // Usually EMFILE or a reset before accept; back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every connection's task lives as long as the connection, so its size is paid per idle
    /// connection: the connect and close stages, the session and the TLS variant are boxed
    /// to keep it to the session loop's state.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let shared = Arc::new(Shared {
            router: Router::new(10),
            config: MqttConfig::default(),
            auth: Arc::new(crate::AnonymousLoopback {
                allow_remote: false,
            }),
            clock: Arc::new(ferrite_core::SystemClock),
            shutdown: CancellationToken::new(),
            stats: Arc::default(),
            clients: Mutex::default(),
            sessions: crate::session::Sessions::default(),
            next_connection: AtomicU64::new(1),
            epoch: tokio::time::Instant::now(),
            tls: None,
        });
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let task = connection_task(stream, peer, None, shared, permit);
        let size = std::mem::size_of_val(&task);
        let parts = crate::connection::sizes();
        // Measured: 696 bytes in the test profile, most of it the session loop's state; the
        // session itself (boxed) is on the heap once. It waits on one cancellation (takeover,
        // revocation, keep-alive expiry and shutdown alike) and has no timer of its own. (With
        // the TLS handshake and stream, the CONNECT stage and the CONNECT packet inline, a
        // release build's task took 7.2 KB; with a keep-alive timer and a second cancellation
        // in the loop, 992 bytes.)
        assert!(
            size <= 760,
            "the connection future takes {size} bytes; parts: {parts:?}"
        );
        assert!(parts[0].1 <= 480, "a session takes {} bytes", parts[0].1);
    }
}
