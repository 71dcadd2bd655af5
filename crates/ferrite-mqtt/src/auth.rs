//! The seam between the gateway and whoever decides who may connect: the fleet layer
//! implements [`Authenticator`]; until then [`AnonymousLoopback`] is the policy.

use std::net::SocketAddr;

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

/// Decides whether a connection is accepted. Called once per CONNECT, on the connection's
/// task: implementations must be fast (no slow password hash for machine tokens).
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok` to accept, or the CONNACK reason code to refuse with.
    fn authenticate(&self, request: &ConnectRequest<'_>) -> Result<(), ReasonCode>;
}

/// Accepts clients without credentials, but only from loopback addresses unless
/// `allow_remote` is set. This is the policy while no device registry exists: a laptop
/// install works out of the box and nothing on the network can write unauthenticated.
#[derive(Debug, Clone, Copy)]
pub struct AnonymousLoopback {
    /// Accept anonymous clients from any address (the operator's explicit choice).
    pub allow_remote: bool,
}

impl Authenticator for AnonymousLoopback {
    fn authenticate(&self, request: &ConnectRequest<'_>) -> Result<(), ReasonCode> {
        if self.allow_remote || request.peer.ip().is_loopback() {
            Ok(())
        } else {
            Err(ReasonCode::NOT_AUTHORIZED)
        }
    }
}
