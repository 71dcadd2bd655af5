//! Startup: who the client is.
//!
//! A client that anonymous access admits (the same [`Anonymous`](crate::Anonymous) policy as
//! HTTP, by its address) is let in without a password. Any other client is asked for a
//! cleartext password, which must be an API token (any user name): tokens are stored as
//! keyed hashes, so MD5 or SCRAM, which need the password or a verifier, cannot work. The
//! token's role must allow queries (every role does; viewer is enough). A wrong token is
//! refused with FATAL `28P01` and the connection closes.
//!
//! The password crosses the network in the clear: there is no TLS on this listener yet, so
//! keep it on loopback or a trusted network.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use ferrite_fleet::{ApiPrincipal, Permission};
use futures_util::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::session::Sessions;
use crate::ApiState;
use crate::fleet::{AccessRefusal, resolve_principal};

/// The startup handler: anonymous or API-token login, then the session registered for
/// cancellation.
pub(crate) struct Startup {
    state: ApiState,
    driver: AuthDriver<DefaultServerParameterProvider, ApiPrincipal>,
    password: CleartextPasswordAuth<TokenSource>,
    sessions: Arc<Sessions>,
}

impl Startup {
    pub(crate) fn new(state: ApiState, sessions: Arc<Sessions>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = "16.6".to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.time_zone = "UTC".to_owned();
        parameters.date_style = "ISO, MDY".to_owned();
        Self {
            password: CleartextPasswordAuth::new(Arc::new(TokenSource {
                state: state.clone(),
            })),
            state,
            driver: AuthDriver::new(parameters),
            sessions,
        }
    }

    /// Let `principal` in: register the session and send AuthenticationOk, the parameters,
    /// BackendKeyData and ReadyForQuery.
    async fn admit<C>(&self, client: &mut C, principal: ApiPrincipal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !principal.can(Permission::Query) {
            return Err(fatal(
                "42501",
                format!("the {:?} role may not run queries", principal.role),
            ));
        }
        tracing::debug!(peer = %client.socket_addr(), token = %principal.name, "pgwire login");
        // Completing sets the process id and key; register with them right after, before
        // the client can have seen them.
        self.driver.complete_authentication(client, None).await?;
        let (pid, secret) = client.pid_and_secret_key();
        let session = self.sessions.register(pid, secret.to_bytes(), principal);
        client.session_extensions().insert(session);
        Ok(())
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let peer = client.socket_addr();
                // Without a token: in if the anonymous policy admits this address.
                match resolve_principal(None, self.state.anonymous, None, peer) {
                    Ok(anonymous) => self.admit(client, anonymous).await,
                    Err(_) if self.state.fleet.is_none() => Err(fatal(
                        "28000",
                        "this server has no API tokens and anonymous access is off".to_owned(),
                    )),
                    Err(_) => {
                        let mechanism = self.password.create();
                        match self.driver.begin_authentication(client, mechanism).await? {
                            AuthOutcome::InProgress => Ok(()),
                            AuthOutcome::Authenticated { identity, .. } => match identity {
                                Some(p) => self.admit(client, p).await,
                                None => Err(PgWireError::InvalidPassword(user(client))),
                            },
                        }
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                match self.driver.advance_authentication(client, message).await? {
                    AuthOutcome::InProgress => Ok(()),
                    AuthOutcome::Authenticated {
                        identity: Some(principal),
                        ..
                    } => self.admit(client, principal).await,
                    AuthOutcome::Authenticated { identity: None, .. } => {
                        Err(PgWireError::InvalidPassword(user(client)))
                    }
                }
            }
            _ => {
                if matches!(
                    client.state(),
                    PgWireConnectionState::AuthenticationInProgress
                ) {
                    Err(PgWireError::InvalidStartupMessage)
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn user<C: ClientInfo>(client: &C) -> String {
    client
        .metadata()
        .get(pgwire::api::METADATA_USER)
        .cloned()
        .unwrap_or_default()
}

/// Checks a presented password as an API token.
struct TokenSource {
    state: ApiState,
}

impl Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource<ApiPrincipal> for TokenSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Tokens are stored hashed: there is no password to hand out.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<ApiPrincipal>> {
        let user = login.user().unwrap_or_default().to_owned();
        let Ok(token) = std::str::from_utf8(presented).map(|t| t.trim().to_owned()) else {
            return Err(PgWireError::InvalidPassword(user));
        };
        let peer = login
            .host()
            .parse()
            .map(|ip| std::net::SocketAddr::new(ip, 0))
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let fleet = self.state.fleet.clone();
        let anonymous = self.state.anonymous;
        // The registry is a blocking database.
        let verdict = tokio::task::spawn_blocking(move || {
            resolve_principal(fleet.as_ref(), anonymous, Some(&token), peer)
        })
        .await
        .map_err(|e| fatal("XX000", format!("token check failed: {e}")))?;
        match verdict {
            Ok(principal) => Ok(Some(principal)),
            Err(AccessRefusal::Fleet(e)) => {
                tracing::error!(error = %e, "pgwire token check failed");
                Err(fatal("58000", format!("cannot check the token: {e}")))
            }
            Err(_) => {
                tracing::info!(%user, host = login.host(), "pgwire authentication failed");
                Err(PgWireError::InvalidPassword(user))
            }
        }
    }
}
