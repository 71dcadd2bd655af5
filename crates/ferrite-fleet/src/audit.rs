//! The audit log: who changed what, when. Every mutating call of the fleet layer takes an
//! [`Actor`] and appends an [`AuditEntry`] in the same redb transaction as the change, so the
//! log holds exactly the changes that happened.
//!
//! Entries are keyed by (time, sequence number), so a time range is one B-tree range scan and
//! pagination is stable. Details never contain secrets (tokens, keys).

use std::fmt;
use std::ops::Bound;

use ferrite_core::{DeviceId, Timestamp};
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};

use crate::page::{Cursor, Page, clamp_limit};
use crate::schema::{AUDIT, from_json};
use crate::{Fleet, FleetError};

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// Ferrite itself (startup, bootstrap, maintenance).
    System,
    /// A local operator using the CLI, by OS user or given name.
    Operator {
        /// The operator's name.
        name: String,
    },
    /// A caller of the HTTP API, by token.
    ApiToken {
        /// The token's id.
        id: String,
        /// The token's name.
        name: String,
    },
    /// A device acting on itself.
    Device {
        /// The device.
        id: DeviceId,
    },
    /// A device provisioning itself with a claim token.
    Claim {
        /// The claim token's id.
        id: String,
    },
}

impl Actor {
    /// A local operator.
    pub fn operator(name: impl Into<String>) -> Self {
        Self::Operator { name: name.into() }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::Operator { name } => write!(f, "operator:{name}"),
            Self::ApiToken { name, id } => write!(f, "api:{name}({id})"),
            Self::Device { id } => write!(f, "device:{id}"),
            Self::Claim { id } => write!(f, "claim:{id}"),
        }
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number, increasing in commit order within one process run.
    pub seq: u64,
    /// When the change was made.
    pub at: Timestamp,
    /// Who made it.
    pub actor: Actor,
    /// What was done, dotted: `device.create`, `credential.revoke`, `policy.put` …
    pub action: String,
    /// What it was done to (a device id, token id, policy name …).
    pub target: String,
    /// Details as JSON (never secrets).
    pub detail: serde_json::Value,
}

/// Which audit entries to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Entries at or after this time.
    pub since: Option<Timestamp>,
    /// Entries strictly before this time.
    pub until: Option<Timestamp>,
    /// Only entries about this target.
    pub target: Option<String>,
    /// Resume after this cursor (from a previous page).
    pub after: Option<Cursor>,
    /// Page size (clamped to `1..=1000`).
    pub limit: usize,
}

fn key_bytes(at: i64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&at.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn parse_key(c: &Cursor) -> Result<(i64, u64), FleetError> {
    let k = c.key()?;
    let bad = || FleetError::invalid("cursor", "not an audit cursor");
    let at: [u8; 8] = k.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let seq: [u8; 8] = k.get(8..).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    Ok((i64::from_be_bytes(at), u64::from_be_bytes(seq)))
}

impl Fleet {
    /// Record a change made outside the registry (rules, …) in the audit log, in its own
    /// transaction.
    pub fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), FleetError> {
        self.write(actor, |tx| tx.audit(action, target, detail))
    }

    /// List audit entries in time order.
    pub fn audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>, FleetError> {
        let limit = clamp_limit(query.limit);
        let start = match &query.after {
            Some(c) => Bound::Excluded(parse_key(c)?),
            None => match query.since {
                Some(t) => Bound::Included((t.as_nanos(), 0)),
                None => Bound::Unbounded,
            },
        };
        let end = match query.until {
            Some(t) => Bound::Excluded((t.as_nanos(), 0)),
            None => Bound::Unbounded,
        };
        let txn = self.db().begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for row in table.range::<(i64, u64)>((start, end))? {
            let (k, v) = row?;
            let key = k.value();
            if query.since.is_some_and(|s| key.0 < s.as_nanos()) {
                continue;
            }
            let entry: AuditEntry = from_json(v.value(), "audit entry")?;
            if query.target.as_ref().is_some_and(|t| *t != entry.target) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            last = Some(key);
            items.push(entry);
        }
        let next = match (more, last) {
            (true, Some((at, seq))) => Some(Cursor::from_key(&key_bytes(at, seq))),
            _ => None,
        };
        Ok(Page { items, next })
    }

    /// Delete audit entries older than `before`; returns how many. Logged as an entry itself.
    pub fn prune_audit(&self, actor: &Actor, before: Timestamp) -> Result<u64, FleetError> {
        self.write(actor, |tx| {
            let mut n = 0u64;
            {
                let mut table = tx.txn.open_table(AUDIT)?;
                let removed = table
                    .extract_from_if::<(i64, u64), _>(..(before.as_nanos(), 0), |_, _| true)?;
                for r in removed {
                    r?;
                    n += 1;
                }
            }
            tx.audit(
                "audit.prune",
                "audit",
                serde_json::json!({"before": before, "removed": n}),
            )?;
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_serde_and_display() {
        let a = Actor::ApiToken {
            id: "t1".into(),
            name: "ci".into(),
        };
        let json = serde_json::to_value(&a).expect("ser");
        assert_eq!(json["kind"], "api_token");
        assert_eq!(a.to_string(), "api:ci(t1)");
        assert_eq!(Actor::operator("ana").to_string(), "operator:ana");
        let back: Actor = serde_json::from_value(json).expect("de");
        assert_eq!(back, a);
    }

    #[test]
    fn cursor_keys() {
        let c = Cursor::from_key(&key_bytes(-5, 7));
        assert_eq!(parse_key(&c).expect("ok"), (-5, 7));
        assert!(parse_key(&Cursor::from_key(b"short")).is_err());
    }
}
