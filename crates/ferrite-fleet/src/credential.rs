//! Device credentials: random tokens (`fd_…`), shown once, stored as keyed hashes.
//!
//! A device may hold several active credentials (up to `max_credentials_per_device`), each
//! with an id, a label, a creation time and an optional expiry, so rotation is: create a new
//! one, move the device over, revoke the old one ([`Fleet::rotate_credential`] does the first
//! step and can put an expiry on the old one). Revoking deletes the hash and emits
//! [`FleetEvent::CredentialRevoked`] so the gateway can close sessions that used it.
//!
//! [`Fleet::verify`] is served from the in-memory cache after the first lookup: one HMAC and a
//! constant-time comparison against each of the device's hashes, no disk access.

use std::time::Duration;

use ferrite_core::{DeviceId, Timestamp};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::fleet::{FleetEvent, Tx};
use crate::schema::{CREDENTIALS, DEVICES, from_json, plus, to_json};
use crate::secret::{SecretToken, TokenHash, TokenKind, hash_eq, hex32};
use crate::{Fleet, FleetError};

/// A credential as listed (never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    /// Its id (16 hex digits).
    pub id: String,
    /// Its device.
    pub device: DeviceId,
    /// What it is for (`factory`, `rotation-2025-06` …).
    pub label: String,
    /// When it was created.
    pub created: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

/// A new credential with its token, to be shown once.
#[derive(Clone, Debug)]
pub struct IssuedCredential {
    /// The credential.
    pub info: CredentialInfo,
    /// The token: the device's MQTT password.
    pub token: SecretToken,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CredentialRecord {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) created: Timestamp,
    pub(crate) expires_at: Option<Timestamp>,
    #[serde(with = "hex32")]
    pub(crate) hash: TokenHash,
}

impl CredentialRecord {
    fn info(&self, device: &DeviceId) -> CredentialInfo {
        CredentialInfo {
            id: self.id.clone(),
            device: device.clone(),
            label: self.label.clone(),
            created: self.created,
            expires_at: self.expires_at,
        }
    }
}

/// Longest credential label.
const MAX_LABEL: usize = 128;

/// All credential records of a device, inside a write transaction.
fn records_tx(tx: &Tx<'_>, device: &DeviceId) -> Result<Vec<CredentialRecord>, FleetError> {
    let table = tx.txn.open_table(CREDENTIALS)?;
    collect(&table, device)
}

/// All credential records of a device from any readable table.
pub(crate) fn collect(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    device: &DeviceId,
) -> Result<Vec<CredentialRecord>, FleetError> {
    let mut out = Vec::new();
    for row in table.range::<(&str, &str)>((device.as_str(), "")..)? {
        let (k, v) = row?;
        let (d, c) = k.value();
        if d != device.as_str() {
            break;
        }
        out.push(from_json(v.value(), c)?);
    }
    Ok(out)
}

/// Create a credential inside a transaction (the device must exist).
pub(crate) fn create_tx(
    fleet: &Fleet,
    tx: &mut Tx<'_>,
    device: &DeviceId,
    label: &str,
    expires_at: Option<Timestamp>,
) -> Result<IssuedCredential, FleetError> {
    if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
        return Err(FleetError::invalid(
            "credential label",
            format!("at most {MAX_LABEL} bytes, no control characters"),
        ));
    }
    if expires_at.is_some_and(|e| e <= tx.now) {
        return Err(FleetError::invalid("expiry", "lies in the past"));
    }
    if tx.txn.open_table(DEVICES)?.get(device.as_str())?.is_none() {
        return Err(FleetError::not_found("device", device.as_str()));
    }
    // Expired credentials are dead weight: drop them so they do not count against the cap.
    let now = tx.now;
    let existing = records_tx(tx, device)?;
    let mut live = 0;
    {
        let mut table = tx.txn.open_table(CREDENTIALS)?;
        for r in &existing {
            if r.expires_at.is_some_and(|e| e <= now) {
                table.remove((device.as_str(), r.id.as_str()))?;
            } else {
                live += 1;
            }
        }
    }
    let max = fleet.config().max_credentials_per_device;
    if live >= max {
        return Err(FleetError::Conflict(format!(
            "device {device} already has {live} credentials (the maximum is {max}); revoke one first"
        )));
    }
    let secrets = &fleet.inner().secrets;
    let (token, hash) = secrets.new_token(TokenKind::Device)?;
    let record = CredentialRecord {
        id: secrets.random_hex(8)?,
        label: label.to_owned(),
        created: now,
        expires_at,
        hash,
    };
    tx.txn.open_table(CREDENTIALS)?.insert(
        (device.as_str(), record.id.as_str()),
        to_json(&record)?.as_slice(),
    )?;
    tx.touch(device);
    let info = record.info(device);
    tx.audit(
        "credential.create",
        device.as_str(),
        serde_json::json!({"credential": info.id, "label": info.label, "expires_at": info.expires_at}),
    )?;
    Ok(IssuedCredential { info, token })
}

impl Fleet {
    /// Create a token credential for a device. The token is in the result and nowhere else.
    pub fn create_credential(
        &self,
        actor: &Actor,
        device: &DeviceId,
        label: &str,
        expires_at: Option<Timestamp>,
    ) -> Result<IssuedCredential, FleetError> {
        self.write(actor, |tx| create_tx(self, tx, device, label, expires_at))
    }

    /// Rotation, first step: a new credential, while `old` keeps working until it is revoked —
    /// or, with `grace`, until `now + grace` (its expiry is moved earlier, never later).
    pub fn rotate_credential(
        &self,
        actor: &Actor,
        device: &DeviceId,
        old: &str,
        grace: Option<Duration>,
        label: &str,
    ) -> Result<IssuedCredential, FleetError> {
        self.write(actor, |tx| {
            let key = (device.as_str(), old);
            let mut record: CredentialRecord = {
                let table = tx.txn.open_table(CREDENTIALS)?;
                let v = table.get(key)?;
                match v {
                    Some(v) => from_json(v.value(), old)?,
                    None => return Err(FleetError::not_found("credential", old)),
                }
            };
            if let Some(g) = grace {
                let until = plus(tx.now, g);
                record.expires_at = Some(record.expires_at.map_or(until, |e| e.min(until)));
                tx.txn
                    .open_table(CREDENTIALS)?
                    .insert(key, to_json(&record)?.as_slice())?;
            }
            let issued = create_tx(self, tx, device, label, None)?;
            tx.audit(
                "credential.rotate",
                device.as_str(),
                serde_json::json!({"old": old, "new": issued.info.id, "old_expires_at": record.expires_at}),
            )?;
            Ok(issued)
        })
    }

    /// Revoke (delete) a credential; emits [`FleetEvent::CredentialRevoked`].
    pub fn revoke_credential(
        &self,
        actor: &Actor,
        device: &DeviceId,
        credential: &str,
    ) -> Result<(), FleetError> {
        self.write(actor, |tx| {
            let removed = tx
                .txn
                .open_table(CREDENTIALS)?
                .remove((device.as_str(), credential))?
                .is_some();
            if !removed {
                return Err(FleetError::not_found("credential", credential));
            }
            tx.touch(device);
            tx.emit(FleetEvent::CredentialRevoked {
                device: device.clone(),
                credential: credential.to_owned(),
            });
            tx.audit(
                "credential.revoke",
                device.as_str(),
                serde_json::json!({"credential": credential}),
            )
        })
    }

    /// A device's credentials (expired ones included until the next create drops them).
    pub fn list_credentials(&self, device: &DeviceId) -> Result<Vec<CredentialInfo>, FleetError> {
        use redb::ReadableDatabase;
        let txn = self.db().begin_read()?;
        let table = txn.open_table(CREDENTIALS)?;
        Ok(collect(&table, device)?
            .iter()
            .map(|r| r.info(device))
            .collect())
    }

    /// Check a device's token: `Some(credential id)` if it is one of the device's unexpired
    /// credentials and the device exists and is enabled, `None` otherwise.
    ///
    /// Constant-time with respect to the token: the HMAC is computed even for an unknown
    /// device, and every stored hash is compared without early exit. Served from memory after
    /// the device's first lookup.
    pub fn verify(&self, device: &DeviceId, token: &[u8]) -> Result<Option<String>, FleetError> {
        let presented = self.inner().secrets.hash(token);
        let Some(auth) = self.device_auth(device)? else {
            return Ok(None);
        };
        let now = self.now();
        let mut found: Option<&str> = None;
        for (id, hash, expires) in &auth.credentials {
            let live = expires.is_none_or(|e| e > now);
            if hash_eq(hash, &presented) && live {
                found = Some(id);
            }
        }
        Ok(found.filter(|_| auth.enabled).map(str::to_owned))
    }
}
