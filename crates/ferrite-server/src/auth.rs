//! The gateway's authenticator, backed by the fleet registry: devices connect with their
//! token (user name = device id, password = token) or a client certificate; each session's
//! guard asks the fleet's cached ACL on every publish and subscription, reports presence, and
//! is revoked when the fleet says the device was disabled, deleted or lost the credential it
//! connected with. Clients with the user name `$claim` are claim connections
//! ([`crate::provision`]). Anonymous clients get in only if `auth.anonymous` allows them, with full
//! access.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ferrite_api::Anonymous;
use ferrite_core::{Clock, DeviceId};
use ferrite_fleet::{Action, AuthMethod, AuthRefusal, ConnectAttempt, Decision, Fleet, FleetEvent};
use ferrite_mqtt::{AnonymousLoopback, Authenticator, ConnectRequest, SessionGuard};
use ferrite_mqtt_codec::ReasonCode;
use tokio::sync::broadcast;

use crate::events::{PresenceEvent, PresenceEvents};
use crate::provision::{CLAIM_USERNAME, ClaimGuard, ClaimSessions};
use tokio_util::sync::CancellationToken;

/// Live sessions per device, to revoke them.
type Sessions = Mutex<HashMap<DeviceId, Vec<Weak<DeviceGuard>>>>;

/// The fleet-backed [`Authenticator`].
pub(crate) struct FleetAuthenticator {
    fleet: Fleet,
    anonymous: Anonymous,
    clock: Arc<dyn Clock>,
    sessions: Arc<Sessions>,
    events: PresenceEvents,
    claims: ClaimSessions,
}

impl FleetAuthenticator {
    pub(crate) fn new(
        fleet: Fleet,
        anonymous: Anonymous,
        clock: Arc<dyn Clock>,
        events: PresenceEvents,
        claims: ClaimSessions,
    ) -> Self {
        Self {
            fleet,
            anonymous,
            clock,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            events,
            claims,
        }
    }

    /// Revoke live sessions as the fleet's events require, until `shutdown`.
    pub(crate) fn watch_events(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut events = self.fleet.subscribe();
        let fleet = self.fleet.clone();
        let sessions = Arc::clone(&self.sessions);
        async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return,
                    e = events.recv() => e,
                };
                match event {
                    Ok(
                        FleetEvent::DeviceDisabled { device }
                        | FleetEvent::DeviceDeleted { device },
                    ) => {
                        for g in live(&sessions, Some(&device)) {
                            g.revoked.cancel();
                        }
                    }
                    Ok(FleetEvent::CredentialRevoked { device, .. }) => {
                        recheck(&fleet, &sessions, Some(&device));
                    }
                    Ok(FleetEvent::CertRevoked { device, .. }) => {
                        recheck(&fleet, &sessions, device.as_ref());
                    }
                    // ACLs are looked up in the fleet's cache on every check: nothing to do.
                    Ok(FleetEvent::DeviceChanged { .. } | FleetEvent::PoliciesChanged) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fleet events missed; rechecking every session");
                        recheck(&fleet, &sessions, None);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// The live guards of `device` (or of every device), pruning the dead.
fn live(sessions: &Sessions, device: Option<&DeviceId>) -> Vec<Arc<DeviceGuard>> {
    let mut map = sessions.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    let mut collect = |list: &mut Vec<Weak<DeviceGuard>>| {
        list.retain(|w| match w.upgrade() {
            Some(g) => {
                out.push(g);
                true
            }
            None => false,
        });
    };
    match device {
        Some(d) => {
            if let Some(list) = map.get_mut(d) {
                collect(list);
            }
        }
        None => {
            for list in map.values_mut() {
                collect(list);
            }
            map.retain(|_, l| !l.is_empty());
        }
    }
    out
}

/// Revoke the sessions whose credentials are no longer valid.
fn recheck(fleet: &Fleet, sessions: &Sessions, device: Option<&DeviceId>) {
    for g in live(sessions, device) {
        match fleet.session_valid(&g.device, &g.method) {
            Ok(true) => {}
            Ok(false) => g.revoked.cancel(),
            Err(e) => {
                tracing::error!(device_id = %g.device, error = %e, "cannot recheck a session's credentials");
            }
        }
    }
}

impl Authenticator for FleetAuthenticator {
    fn authenticate(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Arc<dyn SessionGuard>, ReasonCode> {
        if request.username == Some(CLAIM_USERNAME) && request.client_cert.is_none() {
            let guard = ClaimGuard::admit(
                &self.fleet,
                &self.claims,
                request.client_id,
                request.password,
                request.peer,
            )?;
            return Ok(guard);
        }
        let anonymous = request.username.is_none()
            && request.password.is_none()
            && request.client_cert.is_none();
        if anonymous {
            let allow_remote = match self.anonymous {
                Anonymous::Off => return Err(ReasonCode::NOT_AUTHORIZED),
                Anonymous::Loopback => false,
                Anonymous::Any => true,
            };
            return AnonymousLoopback { allow_remote }.authenticate(request);
        }
        let attempt = ConnectAttempt {
            client_id: request.client_id,
            username: request.username,
            password: request.password,
            peer: request.peer.ip(),
            client_cert: request.client_cert,
        };
        match self.fleet.authenticate(&attempt) {
            Ok(auth) => {
                let guard = Arc::new(DeviceGuard {
                    fleet: self.fleet.clone(),
                    clock: Arc::clone(&self.clock),
                    device: auth.device.clone(),
                    method: auth.method,
                    revoked: CancellationToken::new(),
                    events: self.events.clone(),
                });
                self.sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(auth.device)
                    .or_default()
                    .push(Arc::downgrade(&guard));
                Ok(guard)
            }
            Err(refusal) => {
                tracing::info!(client_id = request.client_id, peer = %request.peer, reason = %refusal, "authentication failed");
                Err(match refusal {
                    AuthRefusal::Throttled { .. } => ReasonCode::CONNECTION_RATE_EXCEEDED,
                    AuthRefusal::MissingCredentials | AuthRefusal::NotAuthorized => {
                        ReasonCode::NOT_AUTHORIZED
                    }
                    AuthRefusal::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                    AuthRefusal::ClientIdMismatch => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    AuthRefusal::Unavailable(_) => ReasonCode::SERVER_UNAVAILABLE,
                })
            }
        }
    }
}

/// One device session's permissions and presence hooks.
struct DeviceGuard {
    fleet: Fleet,
    clock: Arc<dyn Clock>,
    device: DeviceId,
    method: AuthMethod,
    revoked: CancellationToken,
    events: PresenceEvents,
}

impl DeviceGuard {
    fn allows(&self, action: Action, topic: &str) -> bool {
        match self.fleet.authorize(&self.device, action, topic) {
            Ok(Decision::Allow) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::error!(device_id = %self.device, error = %e, "ACL lookup failed; denying");
                false
            }
        }
    }
}

impl SessionGuard for DeviceGuard {
    fn principal(&self) -> &str {
        self.device.as_str()
    }

    fn may_publish(&self, topic: &str) -> bool {
        self.allows(Action::Publish, topic)
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.allows(Action::Subscribe, filter)
    }

    fn revoked(&self) -> CancellationToken {
        self.revoked.clone()
    }

    fn connected(&self, connection: u64, peer: SocketAddr) {
        let at = self.clock.now();
        if self.fleet.connected(&self.device, connection, peer, at) {
            self.events.send(PresenceEvent::Connected {
                device: self.device.clone(),
                connection,
                peer,
                at,
            });
        }
    }

    fn disconnected(&self, connection: u64, reason: &str) {
        let at = self.clock.now();
        // A connection replaced by a newer one (takeover) does not make the device offline.
        if self
            .fleet
            .disconnected(&self.device, connection, reason, at)
        {
            self.events.send(PresenceEvent::Disconnected {
                device: self.device.clone(),
                connection,
                reason: reason.to_owned(),
                at,
            });
        }
    }
}
