//! [`Fleet`]: the handle to one fleet folder. It owns the redb database, the server key, the
//! in-memory caches (per-device authentication data and compiled ACLs, policies, presence, the
//! CA) and the event channel, and runs every change through one transaction helper that also
//! writes the audit entry and, after commit, invalidates caches and publishes [`FleetEvent`]s.
//!
//! Cache coherence: a reader notes the cache generation before it opens its read transaction
//! and inserts what it loaded only if the generation is unchanged; a writer commits, then bumps
//! the generation and drops the touched entries under the cache lock. So an entry loaded from a
//! snapshot older than a commit is never inserted after that commit's invalidation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ferrite_core::{Clock, DeviceId, SystemClock, Timestamp};
use redb::ReadableDatabase;
use tokio::sync::broadcast;

use crate::acl::CompiledAcl;
use crate::audit::{Actor, AuditEntry};
use crate::limiter::AuthLimiter;
use crate::pki::Ca;
use crate::policy::Policy;
use crate::presence::Presence;
use crate::schema::{self, AUDIT, META, to_json};
use crate::secret::{Secrets, TokenHash};
use crate::{FleetConfig, FleetError};

/// Name of the database file inside the fleet folder.
pub const DB_FILE: &str = "fleet.redb";

/// Something a live session may have to react to at once (disconnect, recompute its ACL).
///
/// Delivered on a bounded broadcast channel ([`Fleet::subscribe`]). A receiver that falls more
/// than `event_capacity` behind gets `RecvError::Lagged` and must re-check all its sessions
/// (for example with [`Fleet::session_valid`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetEvent {
    /// The device was disabled: close its sessions.
    DeviceDisabled {
        /// The device.
        device: DeviceId,
    },
    /// The device was deleted: close its sessions.
    DeviceDeleted {
        /// The device.
        device: DeviceId,
    },
    /// A token credential was revoked: close sessions authenticated with it.
    CredentialRevoked {
        /// The device.
        device: DeviceId,
        /// The credential's id.
        credential: String,
    },
    /// Certificates were revoked: close sessions authenticated with them.
    CertRevoked {
        /// The device, when known.
        device: Option<DeviceId>,
        /// The serial (lowercase hex); `None` means every certificate of `device`.
        serial: Option<String>,
    },
    /// The device's type, groups or tags changed: its ACL must be recompiled
    /// ([`Fleet::acl`]).
    DeviceChanged {
        /// The device.
        device: DeviceId,
    },
    /// Policies changed: every session's ACL must be recompiled.
    PoliciesChanged,
    /// The CA was created or imported: a TLS listener trusting the fleet's CA must reload it.
    CaChanged,
}

/// A device's authentication data and compiled ACL, cached.
#[derive(Debug)]
pub(crate) struct DeviceAuth {
    pub(crate) enabled: bool,
    /// (credential id, hash, expiry).
    pub(crate) credentials: Vec<(String, TokenHash, Option<Timestamp>)>,
    pub(crate) acl: Arc<CompiledAcl>,
}

/// The fleet layer's handle. Cheap to clone; every clone shares the same database and caches.
///
/// All methods are synchronous. Lookups on the connect and publish paths ([`Fleet::verify`],
/// [`Fleet::authenticate`], [`Fleet::acl`], presence updates) are served from memory after the
/// first use and never wait for a disk write; mutating calls commit a redb transaction (one
/// fsync) and belong on a blocking thread when called from async code.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: redb::Database,
    pub(crate) dir: PathBuf,
    pub(crate) config: FleetConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) secrets: Secrets,
    /// Fleet events; `send` never blocks (a full channel overwrites the oldest for laggards).
    pub(crate) events: broadcast::Sender<FleetEvent>,
    pub(crate) cache: AuthCache,
    /// All policies, replaced whole after a policy change commits.
    pub(crate) policies: RwLock<Arc<Vec<Policy>>>,
    pub(crate) presence: Presence,
    /// The CA, once created or imported. Held only to read or swap the `Arc`, never across a
    /// transaction (a claim reads it inside one).
    pub(crate) ca: RwLock<Option<Arc<Ca>>>,
    /// Serializes CA creation and import (held across their file writes and audit commit).
    pub(crate) ca_admin: Mutex<()>,
    pub(crate) limiter: AuthLimiter,
    /// Next audit sequence number; persisted in `meta` with every audited transaction.
    pub(crate) audit_seq: AtomicU64,
    /// API token id → last `last_used` written, to coalesce those writes.
    pub(crate) api_touched: Mutex<HashMap<String, Timestamp>>,
}

/// Per-device cache with a generation for race-free invalidation (see the module docs).
pub(crate) struct AuthCache {
    generation: AtomicU64,
    map: RwLock<HashMap<DeviceId, Arc<DeviceAuth>>>,
    capacity: usize,
}

impl AuthCache {
    fn new(capacity: usize) -> Self {
        Self {
            generation: AtomicU64::new(0),
            map: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn get(&self, id: &DeviceId) -> Option<Arc<DeviceAuth>> {
        read(&self.map).get(id).cloned()
    }

    pub(crate) fn insert_if_current(&self, id: DeviceId, entry: Arc<DeviceAuth>, seen: u64) {
        let mut map = write(&self.map);
        if self.generation.load(Ordering::SeqCst) != seen {
            return;
        }
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(id, entry);
    }

    fn invalidate(&self, ids: &[DeviceId], all: bool) {
        let mut map = write(&self.map);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if all {
            map.clear();
        } else {
            for id in ids {
                map.remove(id);
            }
        }
    }
}

pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Poisoning means a panic elsewhere mid-update of a cache; the data is still a valid value
    // (every update is a single insert/remove/replace), so keep serving it.
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One write transaction in progress, with what must happen after it commits.
pub(crate) struct Tx<'a> {
    pub(crate) txn: redb::WriteTransaction,
    /// The time of this change, read once.
    pub(crate) now: Timestamp,
    actor: &'a Actor,
    seq: &'a AtomicU64,
    audited: bool,
    events: Vec<FleetEvent>,
    touched: Vec<DeviceId>,
    invalidate_all: bool,
    reload_policies: bool,
    forget_presence: Vec<DeviceId>,
}

impl Tx<'_> {
    /// Append an audit entry to this transaction.
    pub(crate) fn audit(
        &mut self,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), FleetError> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let entry = AuditEntry {
            seq,
            at: self.now,
            actor: self.actor.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        self.txn
            .open_table(AUDIT)?
            .insert((self.now.as_nanos(), seq), to_json(&entry)?.as_slice())?;
        self.audited = true;
        Ok(())
    }

    /// Publish `event` once this transaction has committed.
    pub(crate) fn emit(&mut self, event: FleetEvent) {
        self.events.push(event);
    }

    /// Drop `device`'s cached authentication data once this transaction has committed.
    pub(crate) fn touch(&mut self, device: &DeviceId) {
        self.touched.push(device.clone());
    }

    /// Reload policies and drop every cached ACL after commit.
    pub(crate) fn policies_changed(&mut self) {
        self.reload_policies = true;
        self.invalidate_all = true;
    }

    /// Forget the device's in-memory presence after commit.
    pub(crate) fn forget_presence(&mut self, device: &DeviceId) {
        self.forget_presence.push(device.clone());
    }
}

impl Fleet {
    /// Open (creating if needed) the fleet folder `dir` with the system clock.
    pub fn open(dir: impl AsRef<Path>, config: FleetConfig) -> Result<Self, FleetError> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// Open (creating if needed) the fleet folder `dir`, reading time from `clock`.
    ///
    /// Creates `fleet.redb` and `fleet.key` on first use, loads policies, persisted presence
    /// (every device starts offline) and the CA if one exists.
    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        config: FleetConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FleetError> {
        let dir = dir.as_ref().to_path_buf();
        create_private_dir(&dir)?;
        let secrets = Secrets::load_or_create(&dir)?;
        let db = redb::Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(dir.join(DB_FILE))?;
        schema::init(&db)?;
        let seq = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let v = meta.get("audit_seq")?.map(|v| v.value().to_vec());
            match v {
                Some(b) => u64::from_le_bytes(b.as_slice().try_into().map_err(|_| {
                    FleetError::Corrupt {
                        what: "meta/audit_seq".into(),
                        reason: "not 8 bytes".into(),
                    }
                })?),
                None => 0,
            }
        };
        let policies = crate::policy::load_all(&db)?;
        let presence = Presence::load(&db)?;
        let ca = Ca::load(&dir)?;
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let limiter = AuthLimiter::new(config.limiter, clock.clone());
        let cache = AuthCache::new(config.auth_cache_capacity);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                dir,
                clock,
                secrets,
                events,
                cache,
                policies: RwLock::new(Arc::new(policies)),
                presence,
                ca: RwLock::new(ca.map(Arc::new)),
                ca_admin: Mutex::new(()),
                limiter,
                audit_seq: AtomicU64::new(seq),
                api_touched: Mutex::new(HashMap::new()),
                config,
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FleetConfig {
        &self.inner.config
    }

    /// The fleet folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The current time of the injected clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Receive [`FleetEvent`]s from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FleetEvent> {
        self.inner.events.subscribe()
    }

    /// The brute-force limiter used by [`Fleet::authenticate`] (also usable for other
    /// endpoints, such as claiming and API logins).
    pub fn limiter(&self) -> &AuthLimiter {
        &self.inner.limiter
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub(crate) fn db(&self) -> &redb::Database {
        &self.inner.db
    }

    /// Run `f` in one write transaction as `actor`; commit if it returns `Ok`, then apply the
    /// after-commit effects (cache invalidation, policy reload, events).
    pub(crate) fn write<T>(
        &self,
        actor: &Actor,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, FleetError>,
    ) -> Result<T, FleetError> {
        let inner = &*self.inner;
        let mut tx = Tx {
            txn: inner.db.begin_write()?,
            now: inner.clock.now(),
            actor,
            seq: &inner.audit_seq,
            audited: false,
            events: Vec::new(),
            touched: Vec::new(),
            invalidate_all: false,
            reload_policies: false,
            forget_presence: Vec::new(),
        };
        let out = f(&mut tx)?;
        if tx.audited {
            let next = inner.audit_seq.load(Ordering::SeqCst);
            tx.txn
                .open_table(META)?
                .insert("audit_seq", next.to_le_bytes().as_slice())?;
        }
        let Tx {
            txn,
            events,
            touched,
            invalidate_all,
            reload_policies,
            forget_presence,
            ..
        } = tx;
        txn.commit()?;
        if reload_policies {
            match crate::policy::load_all(&inner.db) {
                Ok(p) => *write(&inner.policies) = Arc::new(p),
                Err(e) => tracing::error!(error = %e, "reloading policies after a change failed"),
            }
        }
        if invalidate_all || !touched.is_empty() {
            inner.cache.invalidate(&touched, invalidate_all);
        }
        for d in &forget_presence {
            inner.presence.forget(d);
        }
        for e in events {
            // No receiver is fine: nobody has a session to act on.
            let _ = inner.events.send(e);
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn create_private_dir(dir: &Path) -> Result<(), FleetError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| FleetError::io(dir, e))
}
