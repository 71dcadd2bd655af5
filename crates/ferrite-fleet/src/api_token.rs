//! HTTP API tokens (`fa_…`, stored hashed) with roles, and the role → permission matrix.
//!
//! | permission        | viewer | operator | admin |
//! |-------------------|:------:|:--------:|:-----:|
//! | `ReadFleet`       |   ✓    |    ✓     |   ✓   |
//! | `Query`           |   ✓    |    ✓     |   ✓   |
//! | `WriteDevices`    |        |    ✓     |   ✓   |
//! | `WriteRules`      |        |    ✓     |   ✓   |
//! | `ReadAudit`       |        |          |   ✓   |
//! | `ManagePolicies`  |        |          |   ✓   |
//! | `ManageTokens`    |        |          |   ✓   |
//! | `ManagePki`       |        |          |   ✓   |
//!
//! Viewer = read and query; operator = viewer + changes to devices (registry, credentials,
//! device certificates, claims, commands) and rules; admin = everything, including who may
//! do what (policies, tokens, the CA) and the audit log.
//!
//! [`Fleet::bootstrap_admin`] creates the first admin token only when no active admin token
//! exists, so it is safe to call at every start: it returns the token once, then `None`.

use std::fmt;

use ferrite_core::Timestamp;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::fleet::lock;
use crate::schema::{API_HASHES, API_TOKENS, from_json, plus, to_json};
use crate::secret::{SecretToken, TokenHash, TokenKind, hex32};
use crate::{Fleet, FleetError};

/// What an API token may do, as a bundle of [`Permission`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read and query.
    Viewer,
    /// Viewer plus device and rule changes.
    Operator,
    /// Everything.
    Admin,
}

/// One thing an API caller may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read the registry, presence, rules, dashboards.
    ReadFleet,
    /// Run SQL and read telemetry.
    Query,
    /// Create, change and delete devices, their credentials and certificates, claims;
    /// send commands.
    WriteDevices,
    /// Create, change and delete rules and alerts.
    WriteRules,
    /// Read the audit log.
    ReadAudit,
    /// Create, change and delete access policies.
    ManagePolicies,
    /// Create, list and revoke API tokens.
    ManageTokens,
    /// Create or import the CA.
    ManagePki,
}

impl Permission {
    /// Every permission, for matrices and documentation.
    pub const ALL: [Self; 8] = [
        Self::ReadFleet,
        Self::Query,
        Self::WriteDevices,
        Self::WriteRules,
        Self::ReadAudit,
        Self::ManagePolicies,
        Self::ManageTokens,
        Self::ManagePki,
    ];
}

impl Role {
    /// Whether this role grants `p` (the matrix in the module docs).
    pub const fn can(self, p: Permission) -> bool {
        match self {
            Self::Admin => true,
            Self::Operator => matches!(
                p,
                Permission::ReadFleet
                    | Permission::Query
                    | Permission::WriteDevices
                    | Permission::WriteRules
            ),
            Self::Viewer => matches!(p, Permission::ReadFleet | Permission::Query),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        })
    }
}

/// Who an API request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiPrincipal {
    /// The token's id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl ApiPrincipal {
    /// Whether the principal's role grants `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.role.can(p)
    }

    /// The principal as the actor of an audited change.
    pub fn actor(&self) -> Actor {
        Actor::ApiToken {
            id: self.token_id.clone(),
            name: self.name.clone(),
        }
    }
}

/// An API token as listed (never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenInfo {
    /// Its id.
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was created.
    pub created: Timestamp,
    /// When it was last used (written at most once per `api_token_touch_interval`).
    pub last_used: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// A new API token, shown once.
#[derive(Clone, Debug)]
pub struct IssuedApiToken {
    /// The token's record.
    pub info: ApiTokenInfo,
    /// The bearer token.
    pub token: SecretToken,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ApiTokenRecord {
    #[serde(flatten)]
    info: ApiTokenInfo,
    #[serde(with = "hex32")]
    hash: TokenHash,
}

fn create_tx(
    fleet: &Fleet,
    tx: &mut crate::fleet::Tx<'_>,
    name: &str,
    role: Role,
) -> Result<IssuedApiToken, FleetError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(FleetError::invalid(
            "token name",
            "1–128 bytes, no control characters",
        ));
    }
    let secrets = &fleet.inner().secrets;
    let (token, hash) = secrets.new_token(TokenKind::Api)?;
    let info = ApiTokenInfo {
        id: secrets.random_hex(8)?,
        name: name.to_owned(),
        role,
        created: tx.now,
        last_used: None,
        revoked_at: None,
    };
    let record = ApiTokenRecord {
        info: info.clone(),
        hash,
    };
    tx.txn
        .open_table(API_TOKENS)?
        .insert(info.id.as_str(), to_json(&record)?.as_slice())?;
    tx.txn
        .open_table(API_HASHES)?
        .insert(hash.as_slice(), info.id.as_str())?;
    tx.audit(
        "api_token.create",
        &info.id,
        serde_json::json!({"name": name, "role": role}),
    )?;
    Ok(IssuedApiToken { info, token })
}

impl Fleet {
    /// Create an API token.
    pub fn create_api_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
    ) -> Result<IssuedApiToken, FleetError> {
        self.write(actor, |tx| create_tx(self, tx, name, role))
    }

    /// Create an admin token named `admin` if no unrevoked admin token exists; `None`
    /// otherwise. Atomic: two concurrent calls create at most one.
    pub fn bootstrap_admin(&self, actor: &Actor) -> Result<Option<IssuedApiToken>, FleetError> {
        self.write(actor, |tx| {
            {
                let table = tx.txn.open_table(API_TOKENS)?;
                for row in table.iter()? {
                    let (k, v) = row?;
                    let r: ApiTokenRecord = from_json(v.value(), k.value())?;
                    if r.info.role == Role::Admin && r.info.revoked_at.is_none() {
                        return Ok(None);
                    }
                }
            }
            create_tx(self, tx, "admin", Role::Admin).map(Some)
        })
    }

    /// Every API token, revoked ones included.
    pub fn list_api_tokens(&self) -> Result<Vec<ApiTokenInfo>, FleetError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(API_TOKENS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push(from_json::<ApiTokenRecord>(v.value(), k.value())?.info);
        }
        Ok(out)
    }

    /// Revoke an API token; it stops working at once.
    pub fn revoke_api_token(&self, actor: &Actor, id: &str) -> Result<(), FleetError> {
        self.write(actor, |tx| {
            let mut table = tx.txn.open_table(API_TOKENS)?;
            let mut r: ApiTokenRecord = match table.get(id)? {
                Some(v) => from_json(v.value(), id)?,
                None => return Err(FleetError::not_found("api token", id)),
            };
            if r.info.revoked_at.is_none() {
                r.info.revoked_at = Some(tx.now);
                table.insert(id, to_json(&r)?.as_slice())?;
            }
            drop(table);
            // The hash index entry goes, so verification fails without reading the record.
            tx.txn.open_table(API_HASHES)?.remove(r.hash.as_slice())?;
            tx.audit("api_token.revoke", id, serde_json::Value::Null)
        })
    }

    /// Who a bearer token belongs to; `None` for unknown or revoked tokens. Records
    /// `last_used`, writing it at most once per `api_token_touch_interval`.
    pub fn verify_api_token(&self, token: &str) -> Result<Option<ApiPrincipal>, FleetError> {
        let hash = self.inner().secrets.hash(token.as_bytes());
        let record: ApiTokenRecord = {
            let txn = self.db().begin_read()?;
            let id = match txn.open_table(API_HASHES)?.get(hash.as_slice())? {
                Some(v) => v.value().to_owned(),
                None => return Ok(None),
            };
            match txn.open_table(API_TOKENS)?.get(id.as_str())? {
                Some(v) => from_json(v.value(), &id)?,
                None => return Ok(None),
            }
        };
        if record.info.revoked_at.is_some() {
            return Ok(None);
        }
        let now = self.now();
        if self.should_touch(&record.info, now) {
            self.touch_api_token(&record.info.id, now)?;
        }
        Ok(Some(ApiPrincipal {
            token_id: record.info.id,
            name: record.info.name,
            role: record.info.role,
        }))
    }

    fn should_touch(&self, info: &ApiTokenInfo, now: Timestamp) -> bool {
        let interval = self.config().api_token_touch_interval;
        let mut touched = lock(&self.inner().api_touched);
        let last = touched.get(&info.id).copied().or(info.last_used);
        if last.is_some_and(|l| plus(l, interval) > now) {
            return false;
        }
        touched.insert(info.id.clone(), now);
        true
    }

    fn touch_api_token(&self, id: &str, now: Timestamp) -> Result<(), FleetError> {
        // Not audited: using a token is not a change anyone made.
        self.write(&Actor::System, |tx| {
            let mut table = tx.txn.open_table(API_TOKENS)?;
            let r: Option<ApiTokenRecord> = table
                .get(id)?
                .map(|v| from_json(v.value(), id))
                .transpose()?;
            if let Some(mut r) = r {
                r.info.last_used = Some(now);
                table.insert(id, to_json(&r)?.as_slice())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_matrix() {
        use Permission::*;
        // (permission, viewer, operator, admin) — every cell asserted.
        let matrix = [
            (ReadFleet, true, true, true),
            (Query, true, true, true),
            (WriteDevices, false, true, true),
            (WriteRules, false, true, true),
            (ReadAudit, false, false, true),
            (ManagePolicies, false, false, true),
            (ManageTokens, false, false, true),
            (ManagePki, false, false, true),
        ];
        assert_eq!(matrix.len(), Permission::ALL.len());
        for (p, viewer, operator, admin) in matrix {
            assert_eq!(Role::Viewer.can(p), viewer, "viewer {p:?}");
            assert_eq!(Role::Operator.can(p), operator, "operator {p:?}");
            assert_eq!(Role::Admin.can(p), admin, "admin {p:?}");
        }
        // Roles are nested: whatever a lower role may, a higher one may too.
        for p in Permission::ALL {
            assert!(!Role::Viewer.can(p) || Role::Operator.can(p));
            assert!(!Role::Operator.can(p) || Role::Admin.can(p));
        }
    }
}
