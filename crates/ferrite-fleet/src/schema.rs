//! The on-disk layout of `fleet.redb`, format version 1.
//!
//! ```text
//! table            key                          value (JSON unless noted)
//! meta             &str                         "format" → u32 LE (= 1),
//!                                               "audit_seq" → u64 LE (next audit sequence)
//! devices          device id                    DeviceRecord
//! credentials      (device id, credential id)   CredentialRecord (HMAC hash, expiry, label)
//! certs            serial (lowercase hex)       CertRecord (device, issued/not-after, revoked)
//! certs_by_device  (device id, serial)          ()  — index for "revoke all certs of a device"
//! cert_cutoffs     device id                    i64 ns: certs of this device whose notBefore
//!                                               is at or before it are revoked (covers certs
//!                                               of an external CA we never saw)
//! claims           claim id                     ClaimRecord
//! claim_hashes     HMAC hash (32 bytes)         claim id
//! policies         policy name                  Policy
//! api_tokens       token id                     ApiTokenRecord
//! api_hashes       HMAC hash (32 bytes)         token id
//! audit            (i64 time ns, u64 seq)       AuditEntry
//! presence         device id                    PresenceRecord (connected/disconnected/last seen)
//! ```
//!
//! Records are JSON so fields can be added with `#[serde(default)]` without a migration; a
//! breaking change bumps [`FORMAT_VERSION`], and a build refuses a folder newer than it knows.
//! Besides the database the fleet folder holds `fleet.key` (the HMAC key, 0600) and `ca/`
//! (`ca.pem`, `ca.key` 0600) once a CA is created or imported.

use std::time::Duration;

use ferrite_core::Timestamp;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FleetError;

/// The format this build writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
pub(crate) const CREDENTIALS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("credentials");
pub(crate) const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
pub(crate) const CERTS_BY_DEVICE: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("certs_by_device");
pub(crate) const CERT_CUTOFFS: TableDefinition<&str, i64> = TableDefinition::new("cert_cutoffs");
pub(crate) const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
pub(crate) const CLAIM_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("claim_hashes");
pub(crate) const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
pub(crate) const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
pub(crate) const API_HASHES: TableDefinition<&[u8], &str> = TableDefinition::new("api_hashes");
pub(crate) const AUDIT: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("audit");
pub(crate) const PRESENCE: TableDefinition<&str, &[u8]> = TableDefinition::new("presence");

/// Create every table and check or write the format version.
pub(crate) fn init(db: &redb::Database) -> Result<(), FleetError> {
    let found = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(t) => t.get("format")?.map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(bytes) = found {
        let arr: [u8; 4] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| FleetError::Corrupt {
                what: "meta/format".into(),
                reason: "not 4 bytes".into(),
            })?;
        let found = u32::from_le_bytes(arr);
        if found > FORMAT_VERSION {
            return Err(FleetError::NewerFormat {
                found,
                supported: FORMAT_VERSION,
            });
        }
    }
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get("format")?.is_none() {
            meta.insert("format", FORMAT_VERSION.to_le_bytes().as_slice())?;
        }
        txn.open_table(DEVICES)?;
        txn.open_table(CREDENTIALS)?;
        txn.open_table(CERTS)?;
        txn.open_table(CERTS_BY_DEVICE)?;
        txn.open_table(CERT_CUTOFFS)?;
        txn.open_table(CLAIMS)?;
        txn.open_table(CLAIM_HASHES)?;
        txn.open_table(POLICIES)?;
        txn.open_table(API_TOKENS)?;
        txn.open_table(API_HASHES)?;
        txn.open_table(AUDIT)?;
        txn.open_table(PRESENCE)?;
    }
    txn.commit()?;
    Ok(())
}

/// Encode a record.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, FleetError> {
    serde_json::to_vec(value).map_err(|e| FleetError::Corrupt {
        what: std::any::type_name::<T>().into(),
        reason: e.to_string(),
    })
}

/// Decode a record; `what` names it in the error.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, FleetError> {
    serde_json::from_slice(bytes).map_err(|e| FleetError::Corrupt {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// `t + d`, saturating.
pub(crate) fn plus(t: Timestamp, d: Duration) -> Timestamp {
    let d = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Timestamp::from_nanos(t.as_nanos().saturating_add(d))
}
