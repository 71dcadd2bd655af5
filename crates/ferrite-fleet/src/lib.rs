//! Fleet identity and security: who the devices are, how they prove it, what they may do.
//!
//! **Owns**, behind one handle, [`Fleet`] (a fleet folder: `fleet.redb`, `fleet.key`, `ca/`):
//!
//! - the device **registry** ([`Device`], [`NewDevice`], [`DevicePatch`], [`DeviceFilter`],
//!   cursor pagination with [`Page`]/[`Cursor`]) with idempotent bulk **import/export**
//!   (NDJSON, CSV: [`ImportFormat`], [`ImportReport`]);
//! - device **credentials**: random tokens stored as keyed hashes, several per device for
//!   rotation ([`IssuedCredential`], [`Fleet::verify`]);
//! - **X.509** for mutual TLS: the fleet CA, issuing and CSR signing, certificate → device
//!   mapping, revocation ([`IssuedCert`], [`parse_client_cert`], [`Fleet::is_revoked`]);
//! - **provisioning by claim** tokens ([`NewClaim`], [`ClaimTemplate`], [`Fleet::claim`]);
//! - **authorization**: operator [`Policy`]s with topic templates, compiled per device into a
//!   [`CompiledAcl`] whose [`CompiledAcl::authorize`] decides publishes and subscriptions
//!   (with an exact filter-subset check);
//! - HTTP **API tokens** with [`Role`]s and the [`Permission`] matrix, and the **audit log**
//!   ([`Actor`], [`AuditEntry`]) written in the same transaction as every change;
//! - **presence** (online state in memory, history written behind: [`Fleet::connected`],
//!   [`Fleet::flush_presence`]) and **brute-force protection** ([`AuthLimiter`]);
//! - the composed connect check for the gateway ([`Fleet::authenticate`] →
//!   [`Authenticated`] / [`AuthRefusal`]) and [`FleetEvent`]s that tell live sessions to
//!   disconnect or refresh their ACL.
//!
//! **Does not**: speak MQTT or HTTP (the server crate adapts [`Fleet::authenticate`] to the
//! gateway's `Authenticator` and maps [`AuthRefusal`] to reason codes), validate certificate
//! chains (rustls does, against `ca/ca.pem`), run timers (the server calls
//! [`Fleet::flush_presence`] periodically), or hold shadows, commands and firmware rollouts
//! yet (later issues). Every call is synchronous; mutating calls commit a redb transaction and
//! belong on a blocking thread in async code, lookups on the connect and publish paths are
//! served from memory.
//!
//! Time comes from an injected [`ferrite_core::Clock`] ([`Fleet::open_with_clock`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod acl;
mod api_token;
mod audit;
mod auth;
mod claim;
mod config;
mod credential;
mod device;
mod error;
mod filter;
mod fleet;
mod import;
mod limiter;
mod page;
mod pki;
mod policy;
mod presence;
mod schema;
mod secret;

pub use acl::{Action, CompiledAcl, Decision, DeviceContext, Effect, authorize};
pub use api_token::{ApiPrincipal, ApiTokenInfo, IssuedApiToken, Permission, Role};
pub use audit::{Actor, AuditEntry, AuditQuery};
pub use auth::{AuthMethod, AuthRefusal, Authenticated, ConnectAttempt};
pub use claim::{
    ClaimInfo, ClaimTemplate, IssuedClaim, NewClaim, Provisioned, ProvisionedCredential,
};
pub use config::FleetConfig;
pub use credential::{CredentialInfo, IssuedCredential};
pub use device::{Device, DeviceFilter, DevicePatch, NewDevice};
pub use error::FleetError;
pub use fleet::{DB_FILE, Fleet, FleetEvent};
pub use import::{ImportFormat, ImportReport, LineError};
pub use limiter::{AuthLimiter, Budget, LimiterConfig, LimiterStats, ThrottleKey, Throttled};
pub use page::{Cursor, MAX_PAGE, Page};
pub use pki::{CertInfo, DEVICE_SAN_PREFIX, IssuedCert, PresentedCert, parse_client_cert};
pub use policy::{Access, Attach, Policy, Rule};
pub use presence::{FleetCounts, PresenceInfo};
pub use secret::SecretToken;
