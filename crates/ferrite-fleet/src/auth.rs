//! Device authentication on connect, composed for the gateway: [`Fleet::authenticate`] takes
//! what a CONNECT presented and returns the device with its compiled ACL, or why it is
//! refused. The server's `Authenticator` adapter is a field copy and a match from
//! [`AuthRefusal`] to a CONNACK reason code.
//!
//! Rules:
//!
//! - With a verified client certificate (mutual TLS), the certificate names the device; it
//!   must not be revoked. Username and password are ignored.
//! - Otherwise the device id is the username (or the client id when there is none) and the
//!   password is one of its tokens.
//! - The device must exist and be enabled; with `client_id_must_match` (default) the client
//!   id must equal the device id.
//! - The [`crate::AuthLimiter`] is consulted first (per source address and claimed device id)
//!   and told about every failure; a throttled attempt does no credential work at all.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_core::{Classify, DeviceId, ErrorKind, Timestamp};
use redb::ReadableDatabase;

use crate::acl::{Action, CompiledAcl, Decision, DeviceContext};
use crate::credential::collect;
use crate::device::Device;
use crate::fleet::{DeviceAuth, read};
use crate::limiter::Throttled;
use crate::pki::parse_client_cert;
use crate::schema::{CREDENTIALS, DEVICES, from_json};
use crate::secret::hash_eq;
use crate::{Fleet, FleetError};

/// What a client presented on CONNECT (mirrors the gateway's `ConnectRequest`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectAttempt<'a> {
    /// The MQTT client id.
    pub client_id: &'a str,
    /// The user name, if sent.
    pub username: Option<&'a str>,
    /// The password, if sent.
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: IpAddr,
    /// The client certificate (DER) verified by mutual TLS, if any.
    pub client_cert: Option<&'a [u8]>,
}

/// How a device proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A token credential.
    Token {
        /// The credential's id.
        credential: String,
    },
    /// A client certificate.
    Certificate {
        /// Its serial (lowercase hex).
        serial: String,
        /// Its notBefore.
        not_before: Timestamp,
    },
}

/// An accepted connection's identity and permissions.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The device.
    pub device: DeviceId,
    /// How it authenticated (to match against revocation events).
    pub method: AuthMethod,
    /// What it may publish and subscribe to; refresh with [`Fleet::acl`] on
    /// [`crate::FleetEvent::DeviceChanged`] / [`crate::FleetEvent::PoliciesChanged`].
    pub acl: Arc<CompiledAcl>,
}

/// Why a connection is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// Too many recent failures from this address or for this device id
    /// (suggested MQTT 5 reason: 0x9F connection rate exceeded; 3.1.1: not authorized).
    #[error("too many failed attempts; retry in {retry_after:?}")]
    Throttled {
        /// When to retry.
        retry_after: Duration,
    },
    /// Neither a password nor a client certificate (suggested: 0x87 not authorized).
    #[error("no credentials presented")]
    MissingCredentials,
    /// Unknown device, wrong or expired token, unusable certificate
    /// (suggested: 0x86 bad user name or password).
    #[error("bad credentials")]
    BadCredentials,
    /// Valid credentials, but the device is disabled or the certificate revoked
    /// (suggested: 0x87 not authorized; 3.1.1: 0x05).
    #[error("not authorized")]
    NotAuthorized,
    /// The client id is not the device id (suggested: 0x85 client identifier not valid).
    #[error("client id does not match the device id")]
    ClientIdMismatch,
    /// The fleet database failed (suggested: 0x88 server unavailable).
    #[error("fleet unavailable: {0}")]
    Unavailable(String),
}

impl Classify for AuthRefusal {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Throttled { .. } | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::ClientIdMismatch => ErrorKind::InvalidInput,
            _ => ErrorKind::Unauthorized,
        }
    }
}

impl From<Throttled> for AuthRefusal {
    fn from(t: Throttled) -> Self {
        Self::Throttled {
            retry_after: t.retry_after,
        }
    }
}

fn unavailable(e: FleetError) -> AuthRefusal {
    tracing::warn!(error = %e, "fleet lookup failed during authentication");
    AuthRefusal::Unavailable(e.to_string())
}

impl Fleet {
    /// The device's cached authentication data and ACL, loading it on a miss.
    pub(crate) fn device_auth(&self, id: &DeviceId) -> Result<Option<Arc<DeviceAuth>>, FleetError> {
        let cache = &self.inner().cache;
        if let Some(a) = cache.get(id) {
            return Ok(Some(a));
        }
        let generation = cache.generation();
        let txn = self.db().begin_read()?;
        let device: Device = match txn.open_table(DEVICES)?.get(id.as_str())? {
            Some(v) => from_json(v.value(), id.as_str())?,
            None => return Ok(None),
        };
        let credentials = collect(&txn.open_table(CREDENTIALS)?, id)?
            .into_iter()
            .map(|r| (r.id, r.hash, r.expires_at))
            .collect();
        let policies = read(&self.inner().policies).clone();
        let acl = Arc::new(CompiledAcl::compile(
            &DeviceContext::from(&device),
            &policies,
        ));
        let entry = Arc::new(DeviceAuth {
            enabled: device.enabled,
            credentials,
            acl,
        });
        cache.insert_if_current(id.clone(), entry.clone(), generation);
        Ok(Some(entry))
    }

    /// The device's compiled ACL (cached; recompiled after device or policy changes).
    /// `None` for an unknown device.
    pub fn acl(&self, device: &DeviceId) -> Result<Option<Arc<CompiledAcl>>, FleetError> {
        Ok(self.device_auth(device)?.map(|a| a.acl.clone()))
    }

    /// Decide for a device by id (cached ACL). Unknown and disabled devices are denied.
    pub fn authorize(
        &self,
        device: &DeviceId,
        action: Action,
        topic_or_filter: &str,
    ) -> Result<Decision, FleetError> {
        Ok(match self.device_auth(device)? {
            Some(a) if a.enabled => a.acl.authorize(action, topic_or_filter),
            _ => Decision::Deny,
        })
    }

    /// Authenticate a CONNECT; see the module docs for the rules.
    pub fn authenticate(&self, attempt: &ConnectAttempt<'_>) -> Result<Authenticated, AuthRefusal> {
        let limiter = &self.inner().limiter;
        let fail = |device: Option<&str>, r: AuthRefusal| {
            limiter.record_failure(attempt.peer, device);
            Err(r)
        };
        let (device, method) = if let Some(der) = attempt.client_cert {
            let presented = match parse_client_cert(der) {
                Ok(p) => p,
                Err(_) => {
                    limiter.check(attempt.peer, None)?;
                    return fail(None, AuthRefusal::BadCredentials);
                }
            };
            limiter.check(attempt.peer, Some(presented.device.as_str()))?;
            // The holder proved possession of the key during the TLS handshake, so a revoked
            // or disabled result is not a guess and is not counted as a failure.
            if self.is_revoked_parsed(&presented).map_err(unavailable)? {
                return Err(AuthRefusal::NotAuthorized);
            }
            (
                presented.device,
                AuthMethod::Certificate {
                    serial: presented.serial,
                    not_before: presented.not_before,
                },
            )
        } else {
            let claimed = attempt
                .username
                .filter(|u| !u.is_empty())
                .unwrap_or(attempt.client_id);
            limiter.check(attempt.peer, Some(claimed))?;
            let Some(password) = attempt.password else {
                return fail(Some(claimed), AuthRefusal::MissingCredentials);
            };
            let presented = self.inner().secrets.hash(password);
            let Ok(device) = DeviceId::new(claimed) else {
                return fail(Some(claimed), AuthRefusal::BadCredentials);
            };
            let auth = self.device_auth(&device).map_err(unavailable)?;
            let now = self.now();
            let mut found: Option<String> = None;
            for (id, hash, expires) in auth.iter().flat_map(|a| a.credentials.iter()) {
                if hash_eq(hash, &presented) && expires.is_none_or(|e| e > now) {
                    found = Some(id.clone());
                }
            }
            let Some(credential) = found else {
                return fail(Some(claimed), AuthRefusal::BadCredentials);
            };
            (device, AuthMethod::Token { credential })
        };
        let auth = match self.device_auth(&device).map_err(unavailable)? {
            Some(a) if a.enabled => a,
            Some(_) => return Err(AuthRefusal::NotAuthorized),
            None => return fail(Some(device.as_str()), AuthRefusal::NotAuthorized),
        };
        if self.config().client_id_must_match && attempt.client_id != device.as_str() {
            return Err(AuthRefusal::ClientIdMismatch);
        }
        Ok(Authenticated {
            device,
            acl: auth.acl.clone(),
            method,
        })
    }

    /// Whether an authenticated session is still valid: the device exists and is enabled and
    /// its credential or certificate is not revoked or expired. For re-checking every session
    /// after the event receiver lagged.
    pub fn session_valid(
        &self,
        device: &DeviceId,
        method: &AuthMethod,
    ) -> Result<bool, FleetError> {
        let Some(auth) = self.device_auth(device)? else {
            return Ok(false);
        };
        if !auth.enabled {
            return Ok(false);
        }
        Ok(match method {
            AuthMethod::Token { credential } => {
                let now = self.now();
                auth.credentials
                    .iter()
                    .any(|(id, _, e)| id == credential && e.is_none_or(|e| e > now))
            }
            AuthMethod::Certificate { serial, not_before } => {
                !self.is_revoked_parsed(&crate::pki::PresentedCert {
                    device: device.clone(),
                    serial: serial.clone(),
                    not_before: *not_before,
                })?
            }
        })
    }
}
