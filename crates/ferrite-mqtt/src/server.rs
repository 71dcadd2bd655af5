//! The TCP accept loop and the state all connections share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ferrite_core::Clock;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::MqttError;
use crate::auth::Authenticator;
use crate::config::MqttConfig;
use crate::router::Router;

/// Gateway counters.
#[derive(Debug, Default)]
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
    /// PUBLISH packets sent to subscribers.
    pub publishes_out: AtomicU64,
    /// Deliveries dropped because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) config: MqttConfig,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: Arc<MqttStats>,
    /// Live connection per client id, for session takeover. Touched on connect and close.
    clients: Mutex<HashMap<Arc<str>, (u64, CancellationToken)>>,
    next_connection: AtomicU64,
}

impl Shared {
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Record `conn` as the live connection of `client_id`; returns the previous one's token.
    pub(crate) fn register_client(
        &self,
        client_id: &Arc<str>,
        conn: u64,
        token: CancellationToken,
    ) -> Option<CancellationToken> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .insert(Arc::clone(client_id), (conn, token))
            .map(|(_, t)| t)
    }

    /// Forget `conn` as `client_id`'s live connection, unless a newer one replaced it.
    pub(crate) fn unregister_client(&self, client_id: &Arc<str>, conn: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.get(client_id).is_some_and(|(c, _)| *c == conn) {
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

/// A running MQTT listener.
pub struct MqttServer {
    local_addr: SocketAddr,
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
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| MqttError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| MqttError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            router,
            auth,
            clock,
            shutdown,
            stats: Arc::default(),
            clients: Mutex::default(),
            next_connection: AtomicU64::new(1),
            config,
        });
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(listener, Arc::clone(&shared), tracker.clone()));
        Ok(Self {
            local_addr,
            shared,
            tracker,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<MqttStats> {
        &self.shared.stats
    }

    /// Clients connected now.
    pub fn connected(&self) -> usize {
        self.shared.connected()
    }

    /// Wait until the accept loop and every connection task ended (after shutdown).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    // Caps live connections: when all permits are taken, accepting pauses and new
    // connections wait in the OS backlog.
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
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
                tracker.spawn(async move {
                    crate::connection::serve(stream, peer, shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually EMFILE or a reset before accept; back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
