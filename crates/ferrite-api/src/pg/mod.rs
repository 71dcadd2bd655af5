//! SQL over the PostgreSQL wire protocol (v3), so `psql`, drivers and Grafana's PostgreSQL
//! data source query Ferrite unchanged. Protocol framing is the `pgwire` crate's; this module
//! supplies what is Ferrite's:
//!
//! - [`serve`]: the accept loop, a task per connection, a semaphore capping connections
//!   (more wait in the OS backlog), all of them ended at shutdown;
//! - `auth`: startup — anonymous by the HTTP API's policy, else cleartext password = API
//!   token, role must allow queries; wrong token → FATAL `28P01`;
//! - `query`: simple and extended query (Parse/Bind/Describe/Execute) over the
//!   [`QueryEngine`](ferrite_query::QueryEngine), parameters bound by the engine, answers
//!   streamed batch by batch within the engine's limits;
//! - `encode`/`params`: Arrow ↔ PostgreSQL types, text and binary;
//! - `command`: `SET`, `SHOW`, `BEGIN`/`COMMIT`/`ROLLBACK`, `SELECT version()`;
//! - `session`: CancelRequest → the running query of that session, ended with `57014`.
//!
//! Not here: TLS (SSLRequest is refused, clients fall back to plain TCP — use loopback or a
//! trusted network), `COPY`, `pg_catalog` (psql's `\d` commands answer an error; use
//! `information_schema`), writes of any kind.

mod auth;
mod command;
mod encode;
mod params;
mod query;
mod session;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgwire::api::PgWireServerHandlers;
use pgwire::api::cancel::CancelHandler;
use pgwire::messages::cancel::CancelRequest;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ApiState;

/// Serve the PostgreSQL wire protocol on `listener` until `shutdown` is cancelled, then end
/// every connection. At most `max_connections` are served at once; further clients wait in
/// the listen backlog until one ends. `started` counts the queries begun, from the moment a
/// CancelRequest can reach each one.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    max_connections: usize,
    started: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let sessions = Arc::new(session::Sessions::new(started));
    let handlers = Arc::new(Handlers {
        startup: Arc::new(auth::Startup::new(state.clone(), Arc::clone(&sessions))),
        queries: Arc::new(query::Queries::new(Arc::clone(&state.query))),
        cancel: Arc::new(Cancel { sessions }),
    });
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "pgwire accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handlers = Arc::clone(&handlers);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = shutdown.cancelled() => {}
                r = pgwire::tokio::process_socket(socket, None, handlers) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "pgwire connection ended with an error");
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The handlers pgwire asks for, shared by every connection of the listener.
struct Handlers {
    startup: Arc<auth::Startup>,
    queries: Arc<query::Queries>,
    cancel: Arc<Cancel>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// Answers CancelRequests from the session registry.
struct Cancel {
    sessions: Arc<session::Sessions>,
}

#[async_trait]
impl CancelHandler for Cancel {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self
            .sessions
            .cancel(request.pid, &request.secret_key.to_bytes());
        tracing::debug!(pid = request.pid, found, "pgwire cancel request");
    }
}
