//! Provisioning by claim: an operator creates a claim token (`fc_…`, stored hashed) with an
//! expiry, a use limit and a template; a factory-fresh device presents it once and receives a
//! registry entry built from the template plus a credential — a token, or a certificate signed
//! from the device's CSR.
//!
//! [`Fleet::claim`] runs in one redb write transaction: check the claim, count the use, create
//! the device, create the credential, audit. redb admits one writer at a time, so concurrent
//! claims cannot exceed `max_uses`, and a failure anywhere leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};

use ferrite_core::{DeviceId, Timestamp};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::credential::IssuedCredential;
use crate::device::{Device, NewDevice, validate};
use crate::pki::IssuedCert;
use crate::schema::{CLAIM_HASHES, CLAIMS, DEVICES, from_json, to_json};
use crate::secret::{SecretToken, TokenKind};
use crate::{Fleet, FleetError};

/// What a device provisioned by a claim starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimTemplate {
    /// Its type.
    #[serde(rename = "type")]
    pub device_type: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Its groups.
    pub groups: BTreeSet<String>,
    /// Required prefix of the device id; generated ids are `{prefix}{12 hex digits}`
    /// (`dev-` when no prefix is set).
    pub id_prefix: Option<String>,
}

/// A claim token to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewClaim {
    /// What it is for (`factory batch 7`).
    pub label: String,
    /// The devices it creates.
    pub template: ClaimTemplate,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// How many devices it may create (at least 1).
    pub max_uses: u32,
}

/// A claim token as listed (never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// Its id.
    pub id: String,
    /// What it is for.
    pub label: String,
    /// The devices it creates.
    pub template: ClaimTemplate,
    /// When it was created.
    pub created: Timestamp,
    /// When it stops working.
    pub expires_at: Option<Timestamp>,
    /// How many devices it may create.
    pub max_uses: u32,
    /// How many it has created.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A new claim token, shown once.
#[derive(Clone, Debug)]
pub struct IssuedClaim {
    /// The claim.
    pub info: ClaimInfo,
    /// The token to put on the devices.
    pub token: SecretToken,
}

/// The credential a claim hands out.
#[derive(Clone, Debug)]
pub enum ProvisionedCredential {
    /// A token (when the device sent no CSR).
    Token(IssuedCredential),
    /// A certificate signed from the device's CSR.
    Certificate(IssuedCert),
}

/// The result of a successful claim.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// The new device.
    pub device: Device,
    /// Its credential.
    pub credential: ProvisionedCredential,
}

impl ClaimTemplate {
    fn validate(&self) -> Result<(), FleetError> {
        if let Some(p) = &self.id_prefix {
            // The prefix plus generated hex must form a valid id.
            DeviceId::new(format!("{p}0"))
                .map_err(|e| FleetError::invalid("id prefix", e.to_string()))?;
            if p.len() > 100 {
                return Err(FleetError::invalid("id prefix", "at most 100 bytes"));
            }
        }
        let probe = DeviceId::new("probe").map_err(|e| FleetError::invalid("id", e.to_string()))?;
        validate(&Device {
            name: probe.to_string(),
            id: probe,
            device_type: self.device_type.clone(),
            tags: self.tags.clone(),
            groups: self.groups.clone(),
            firmware_version: None,
            enabled: true,
            created: Timestamp::from_nanos(0),
            updated: Timestamp::from_nanos(0),
            last_seen: None,
        })
    }
}

fn get_claim(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<ClaimInfo>, FleetError> {
    table.get(id)?.map(|v| from_json(v.value(), id)).transpose()
}

impl Fleet {
    /// Create a claim token.
    pub fn create_claim(&self, actor: &Actor, new: NewClaim) -> Result<IssuedClaim, FleetError> {
        new.template.validate()?;
        if new.max_uses == 0 {
            return Err(FleetError::invalid("max uses", "must be at least 1"));
        }
        if new.label.len() > 128 || new.label.chars().any(char::is_control) {
            return Err(FleetError::invalid(
                "claim label",
                "at most 128 bytes, no control characters",
            ));
        }
        let secrets = &self.inner().secrets;
        let (token, hash) = secrets.new_token(TokenKind::Claim)?;
        let id = secrets.random_hex(8)?;
        self.write(actor, |tx| {
            if new.expires_at.is_some_and(|e| e <= tx.now) {
                return Err(FleetError::invalid("expiry", "lies in the past"));
            }
            let info = ClaimInfo {
                id: id.clone(),
                label: new.label.clone(),
                template: new.template.clone(),
                created: tx.now,
                expires_at: new.expires_at,
                max_uses: new.max_uses,
                uses: 0,
                revoked: false,
            };
            tx.txn
                .open_table(CLAIMS)?
                .insert(id.as_str(), to_json(&info)?.as_slice())?;
            tx.txn
                .open_table(CLAIM_HASHES)?
                .insert(hash.as_slice(), id.as_str())?;
            tx.audit(
                "claim.create",
                &id,
                serde_json::to_value(&info).unwrap_or_default(),
            )?;
            Ok(IssuedClaim { info, token })
        })
    }

    /// Every claim token, by id.
    pub fn list_claims(&self) -> Result<Vec<ClaimInfo>, FleetError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(CLAIMS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push(from_json(v.value(), k.value())?);
        }
        Ok(out)
    }

    /// Revoke a claim token: it provisions nothing more. Devices it created stay.
    pub fn revoke_claim(&self, actor: &Actor, id: &str) -> Result<(), FleetError> {
        self.write(actor, |tx| {
            let mut table = tx.txn.open_table(CLAIMS)?;
            let mut info =
                get_claim(&table, id)?.ok_or_else(|| FleetError::not_found("claim", id))?;
            info.revoked = true;
            table.insert(id, to_json(&info)?.as_slice())?;
            drop(table);
            tx.audit("claim.revoke", id, serde_json::Value::Null)
        })
    }

    /// The claim a token belongs to, if it could provision a device now (known, not revoked,
    /// not expired, not used up). Read-only: for admitting a claim connection before its
    /// request arrives; [`Fleet::claim`] checks again.
    pub fn check_claim(&self, token: &str) -> Result<ClaimInfo, FleetError> {
        let hash = self.inner().secrets.hash(token.as_bytes());
        let txn = self.db().begin_read()?;
        let id = txn
            .open_table(CLAIM_HASHES)?
            .get(hash.as_slice())?
            .map(|v| v.value().to_owned())
            .ok_or(FleetError::ClaimInvalid)?;
        let info = get_claim(&txn.open_table(CLAIMS)?, &id)?.ok_or(FleetError::ClaimInvalid)?;
        if info.revoked {
            return Err(FleetError::ClaimInvalid);
        }
        if info.expires_at.is_some_and(|e| e <= self.now()) {
            return Err(FleetError::ClaimExpired);
        }
        if info.uses >= info.max_uses {
            return Err(FleetError::ClaimExhausted);
        }
        Ok(info)
    }

    /// Provision a device with a claim token. `requested_id` must carry the template's prefix;
    /// without it an id is generated. With `csr_pem` the credential is a certificate signed
    /// from it (a CA must be configured), else a token. Fails with `ClaimInvalid`,
    /// `ClaimExpired` or `ClaimExhausted` (unauthorized), `AlreadyExists` if the id is taken;
    /// on any failure nothing changes and the use is not counted.
    pub fn claim(
        &self,
        token: &str,
        requested_id: Option<DeviceId>,
        csr_pem: Option<&str>,
    ) -> Result<Provisioned, FleetError> {
        let hash = self.inner().secrets.hash(token.as_bytes());
        // Resolve the claim id first (read-only) so the audit actor names it.
        let claim_id = {
            let txn = self.db().begin_read()?;
            let v = txn.open_table(CLAIM_HASHES)?.get(hash.as_slice())?;
            v.map(|v| v.value().to_owned())
                .ok_or(FleetError::ClaimInvalid)?
        };
        let actor = Actor::Claim {
            id: claim_id.clone(),
        };
        self.write(&actor, |tx| {
            let mut info = get_claim(&tx.txn.open_table(CLAIMS)?, &claim_id)?
                .ok_or(FleetError::ClaimInvalid)?;
            if info.revoked {
                return Err(FleetError::ClaimInvalid);
            }
            if info.expires_at.is_some_and(|e| e <= tx.now) {
                return Err(FleetError::ClaimExpired);
            }
            if info.uses >= info.max_uses {
                return Err(FleetError::ClaimExhausted);
            }
            let prefix = info.template.id_prefix.as_deref();
            let id = match requested_id {
                Some(id) => {
                    if let Some(p) = prefix
                        && !id.as_str().starts_with(p)
                    {
                        return Err(FleetError::invalid(
                            "device id",
                            format!("this claim only creates ids starting with {p:?}"),
                        ));
                    }
                    id
                }
                None => self.generate_id(tx, prefix.unwrap_or("dev-"))?,
            };
            let new = NewDevice {
                device_type: info.template.device_type.clone(),
                tags: info.template.tags.clone(),
                groups: info.template.groups.clone(),
                ..NewDevice::new(id.clone())
            };
            let device = crate::device::create_tx(tx, new, "device.claim")?;
            let credential = match csr_pem {
                Some(csr) => ProvisionedCredential::Certificate(self.sign_csr_tx(tx, &id, csr)?),
                None => ProvisionedCredential::Token(crate::credential::create_tx(
                    self,
                    tx,
                    &id,
                    &format!("claim:{claim_id}"),
                    None,
                )?),
            };
            info.uses += 1;
            tx.txn
                .open_table(CLAIMS)?
                .insert(claim_id.as_str(), to_json(&info)?.as_slice())?;
            tx.audit(
                "claim.use",
                &claim_id,
                serde_json::json!({"device": id, "uses": info.uses}),
            )?;
            Ok(Provisioned { device, credential })
        })
    }

    fn generate_id(&self, tx: &crate::fleet::Tx<'_>, prefix: &str) -> Result<DeviceId, FleetError> {
        let devices = tx.txn.open_table(DEVICES)?;
        for _ in 0..8 {
            let id = DeviceId::new(format!("{prefix}{}", self.inner().secrets.random_hex(6)?))
                .map_err(|e| FleetError::invalid("id prefix", e.to_string()))?;
            if devices.get(id.as_str())?.is_none() {
                return Ok(id);
            }
        }
        Err(FleetError::Conflict(
            "could not generate a free device id".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_validation() {
        assert!(ClaimTemplate::default().validate().is_ok());
        let t = ClaimTemplate {
            id_prefix: Some("bad/".into()),
            ..ClaimTemplate::default()
        };
        assert!(t.validate().is_err());
        let t = ClaimTemplate {
            groups: BTreeSet::from(["#".into()]),
            ..ClaimTemplate::default()
        };
        assert!(t.validate().is_err());
        let t: ClaimTemplate =
            serde_json::from_str(r#"{"type":"meter","groups":["g"],"id_prefix":"m-"}"#)
                .expect("json");
        assert!(t.validate().is_ok());
    }
}
