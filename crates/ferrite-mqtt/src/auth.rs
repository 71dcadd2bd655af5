//! The seam between the gateway and whoever decides who may connect and what they may do:
//! the fleet layer implements [`Authenticator`] and [`SessionGuard`]; [`AnonymousLoopback`]
//! (with [`Unrestricted`] guards) serves operators who turn anonymous access on.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use ferrite_mqtt_codec::ReasonCode;

/// What a client presented on CONNECT.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    /// Client identifier (possibly assigned by the server).
    pub client_id: &'a str,
    /// User name, if sent.
    pub username: Option<&'a str>,
    /// Password, if sent.
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client certificate (DER) verified by mutual TLS, if the connection used it.
    pub client_cert: Option<&'a [u8]>,
}

/// What an accepted connection may do, and the hooks of its life; made by the
/// [`Authenticator`] for each connection it accepts. Checked on every PUBLISH (including the
/// will) and every SUBSCRIBE filter: implementations must be fast and must not block.
pub trait SessionGuard: Send + Sync + 'static {
    /// Who the connection is (a device id), for logs.
    fn principal(&self) -> &str;
    /// Whether it may publish to `topic`.
    fn may_publish(&self, topic: &str) -> bool;
    /// Whether it may subscribe with `filter` (as sent, possibly `$share/{group}/{filter}`).
    fn may_subscribe(&self, filter: &str) -> bool;
    /// Cancelled when the connection must end at once (credentials revoked, device
    /// disabled or deleted); the gateway then closes it with reason 0x87 not authorized.
    /// The token must be this guard's own, never shared with another connection's: the
    /// gateway cancels it too when the connection ends for another reason (a takeover,
    /// shutdown), so that each connection waits on one token for all of them.
    fn revoked(&self) -> CancellationToken;
    /// The connection was accepted; `connection` is unique for the server's lifetime and
    /// increases, so a later connection of the same device has a larger id.
    fn connected(&self, connection: u64, peer: SocketAddr) {
        let _ = (connection, peer);
    }
    /// The connection ended (also after a takeover, with its own id).
    fn disconnected(&self, connection: u64, reason: &str) {
        let _ = (connection, reason);
    }
}

/// Decides whether a connection is accepted, and what it may do. Called once per CONNECT, on
/// the connection's task: implementations must be fast (no slow password hash for machine
/// tokens).
pub trait Authenticator: Send + Sync + 'static {
    /// The connection's guard to accept, or the CONNACK reason code to refuse with.
    fn authenticate(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn SessionGuard>, ReasonCode>;
}

/// A guard that allows everything but publishing to `$`-topics (which carry the server's own
/// messages: presence events, provisioning answers): anonymous clients the operator chose to
/// let in.
#[derive(Debug, Default)]
pub struct Unrestricted {
    name: String,
    revoked: CancellationToken,
}

impl Unrestricted {
    /// A guard for the client `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            revoked: CancellationToken::new(),
        }
    }
}

impl SessionGuard for Unrestricted {
    fn principal(&self) -> &str {
        &self.name
    }
    fn may_publish(&self, topic: &str) -> bool {
        !topic.starts_with('$')
    }
    fn may_subscribe(&self, _filter: &str) -> bool {
        true
    }
    fn revoked(&self) -> CancellationToken {
        self.revoked.clone()
    }
}

/// Accepts clients without credentials, with full access, but only from loopback addresses
/// unless `allow_remote` is set. Used only when the operator turns anonymous access on.
#[derive(Debug, Clone, Copy)]
pub struct AnonymousLoopback {
    /// Accept anonymous clients from any address (the operator's explicit choice).
    pub allow_remote: bool,
}

impl Authenticator for AnonymousLoopback {
    fn authenticate(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn SessionGuard>, ReasonCode> {
        if self.allow_remote || request.peer.ip().is_loopback() {
            Ok(Arc::new(Unrestricted::new(request.client_id)))
        } else {
            Err(ReasonCode::NOT_AUTHORIZED)
        }
    }
}
