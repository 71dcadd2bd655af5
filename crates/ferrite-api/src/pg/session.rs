//! Per-connection state and the registry CancelRequests look connections up in.
//!
//! A CancelRequest arrives on a connection of its own carrying the process id and secret key
//! the server gave the session at startup (BackendKeyData). [`Sessions`] maps the id to the
//! session's current query, whose [`CancellationToken`] the request cancels; the running
//! query (planning, execution and the stream of rows) ends with SQLSTATE 57014.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use ferrite_fleet::ApiPrincipal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What one authenticated connection knows about itself; kept in pgwire's session
/// extensions, so it lives exactly as long as the connection.
pub(crate) struct Session {
    /// Who is connected (role checked at startup).
    pub(crate) principal: ApiPrincipal,
    /// Cancels the query running now; replaced at the start of every query. Shared with the
    /// registry entry, which a CancelRequest (another connection's task) cancels through.
    current: CurrentQuery,
    /// Removes the registry entry when the connection ends.
    registration: Registration,
}

impl Session {
    /// A fresh token for the query about to run; a CancelRequest from now on cancels it.
    pub(crate) fn start_query(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *lock(&self.current) = token.clone();
        // Only now can a CancelRequest reach this query: tell whoever watches.
        self.registration
            .sessions
            .started
            .send_modify(|n| *n = n.wrapping_add(1));
        token
    }
}

/// The token of a session's running query, swapped at each query start.
type CurrentQuery = Arc<Mutex<CancellationToken>>;

/// The live sessions by process id, shared by every connection of one listener.
pub(crate) struct Sessions {
    /// pid → (secret key, current query token). Written at startup and when a connection
    /// ends, read by CancelRequests.
    map: Mutex<HashMap<i32, (Bytes, CurrentQuery)>>,
    /// Counts queries started on this listener, from the moment they can be cancelled.
    started: watch::Sender<u64>,
}

impl Sessions {
    /// An empty registry that counts started queries into `started`.
    pub(crate) fn new(started: watch::Sender<u64>) -> Self {
        Self {
            map: Mutex::default(),
            started,
        }
    }

    /// Register the connection that was given `pid` and `secret`.
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: Bytes,
        principal: ApiPrincipal,
    ) -> Session {
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        lock(&self.map).insert(pid, (secret, Arc::clone(&current)));
        Session {
            principal,
            current,
            registration: Registration {
                pid,
                sessions: Arc::clone(self),
            },
        }
    }

    /// Cancel the running query of session `pid` if `secret` is its key; `false` if there is
    /// no such session.
    pub(crate) fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let map = lock(&self.map);
        match map.get(&pid) {
            Some((key, current)) if key.as_ref() == secret => {
                lock(current).cancel();
                true
            }
            _ => false,
        }
    }

    /// Number of registered sessions (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

struct Registration {
    pid: i32,
    sessions: Arc<Sessions>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.sessions.map).remove(&self.pid);
    }
}

/// Lock, ignoring poisoning: the guarded maps and tokens stay consistent whatever panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_fleet::Role;

    #[test]
    fn cancel_needs_the_secret_and_reaches_the_current_query() {
        let (started, watcher) = watch::channel(0);
        let sessions = Arc::new(Sessions::new(started));
        let principal = ApiPrincipal {
            token_id: "t".into(),
            name: "n".into(),
            role: Role::Viewer,
        };
        let session = sessions.register(7, Bytes::from_static(b"key"), principal);
        let first = session.start_query();
        let second = session.start_query();
        assert_eq!(*watcher.borrow(), 2, "each query start is counted");
        assert!(!sessions.cancel(7, b"wrong"));
        assert!(!second.is_cancelled());
        assert!(sessions.cancel(7, b"key"));
        assert!(second.is_cancelled());
        assert!(!first.is_cancelled(), "only the running query is cancelled");
        drop(session);
        assert_eq!(sessions.len(), 0);
        assert!(!sessions.cancel(7, b"key"));
    }
}
