//! The on-disk layout of `alarms.redb`, format version 1.
//!
//! ```text
//! table    key                          value
//! meta     &str                         "format" → u32 LE (= 1), "next_id" → u64 LE
//! alarms   u64 alarm id                 JSON `ferrite_rules::alarm::Alarm`
//! keys     (rule, device, alarm type)   u64: the key's latest alarm (open unless cleared)
//! ```
//!
//! Alarms are JSON so fields can be added with `#[serde(default)]` without a migration; a
//! breaking change bumps [`FORMAT_VERSION`], and a build refuses a file newer than it knows.
//! Closed alarms are deleted [`purge_closed`] some time after they closed (`alarms.closed_retention`).

use std::path::Path;

use ferrite_api::alarms::{AlarmFilter, AlarmPage};
use ferrite_core::Timestamp;
use ferrite_rules::alarm::{Alarm, AlarmState};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

/// The format this build writes and the newest it reads.
const FORMAT_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ALARMS: TableDefinition<u64, &[u8]> = TableDefinition::new("alarms");
const KEYS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("keys");

/// Page cache: alarms are small and few next to the registry.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

fn e(err: impl std::fmt::Display) -> String {
    format!("alarm store: {err}")
}

/// Open or create the database, creating the tables and checking the format.
pub(super) fn open(path: &Path) -> Result<redb::Database, String> {
    let db = redb::Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    let txn = db.begin_write().map_err(e)?;
    {
        let mut meta = txn.open_table(META).map_err(e)?;
        let found = meta.get("format").map_err(e)?.map(|v| v.value().to_vec());
        match found {
            Some(bytes) => {
                let arr: [u8; 4] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| e("meta/format is not 4 bytes"))?;
                let found = u32::from_le_bytes(arr);
                if found > FORMAT_VERSION {
                    return Err(format!(
                        "{} has format {found}; this build reads up to {FORMAT_VERSION}",
                        path.display()
                    ));
                }
            }
            None => {
                meta.insert("format", FORMAT_VERSION.to_le_bytes().as_slice())
                    .map_err(e)?;
            }
        }
        txn.open_table(ALARMS).map_err(e)?;
        txn.open_table(KEYS).map_err(e)?;
    }
    txn.commit().map_err(e)?;
    Ok(db)
}

pub(super) fn begin(db: &redb::Database) -> Result<WriteTransaction, String> {
    db.begin_write().map_err(e)
}

/// Commit; without `durable` the commit is not fsynced (the next durable one covers it).
pub(super) fn commit(mut txn: WriteTransaction, durable: bool) -> Result<(), String> {
    if !durable {
        txn.set_durability(Durability::None).map_err(e)?;
    }
    txn.commit().map_err(e)
}

fn decode(bytes: &[u8], id: u64) -> Result<Alarm, String> {
    serde_json::from_slice(bytes).map_err(|err| e(format!("alarm {id} is damaged: {err}")))
}

pub(super) fn get(txn: &WriteTransaction, id: u64) -> Result<Option<Alarm>, String> {
    let alarms = txn.open_table(ALARMS).map_err(e)?;
    let found = alarms.get(id).map_err(e)?;
    found.map(|v| decode(v.value(), id)).transpose()
}

/// The latest alarm of `key`.
pub(super) fn last_of(
    txn: &WriteTransaction,
    key: (&str, &str, &str),
) -> Result<Option<Alarm>, String> {
    let id = {
        let keys = txn.open_table(KEYS).map_err(e)?;
        keys.get(key).map_err(e)?.map(|v| v.value())
    };
    match id {
        Some(id) => get(txn, id),
        None => Ok(None),
    }
}

pub(super) fn set_last(
    txn: &WriteTransaction,
    key: (&str, &str, &str),
    id: u64,
) -> Result<(), String> {
    let mut keys = txn.open_table(KEYS).map_err(e)?;
    keys.insert(key, id).map_err(e)?;
    Ok(())
}

pub(super) fn put(txn: &WriteTransaction, alarm: &Alarm) -> Result<(), String> {
    let bytes = serde_json::to_vec(alarm).map_err(e)?;
    let mut alarms = txn.open_table(ALARMS).map_err(e)?;
    alarms.insert(alarm.id, bytes.as_slice()).map_err(e)?;
    Ok(())
}

/// Take the next alarm id (ids start at 1 and are never reused).
pub(super) fn next_id(txn: &WriteTransaction) -> Result<u64, String> {
    let mut meta = txn.open_table(META).map_err(e)?;
    let next = match meta.get("next_id").map_err(e)? {
        Some(v) => {
            let arr: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| e("meta/next_id is not 8 bytes"))?;
            u64::from_le_bytes(arr)
        }
        None => 1,
    };
    meta.insert("next_id", (next + 1).to_le_bytes().as_slice())
        .map_err(e)?;
    Ok(next)
}

/// One alarm, outside a write.
pub(super) fn read(db: &redb::Database, id: u64) -> Result<Option<Alarm>, String> {
    let txn = db.begin_read().map_err(e)?;
    let alarms = txn.open_table(ALARMS).map_err(e)?;
    let found = alarms.get(id).map_err(e)?;
    found.map(|v| decode(v.value(), id)).transpose()
}

/// Alarms passing `filter` with ids below `after`, newest first (a scan: fine for the
/// thousands of alarms a fleet keeps; an index by state would come with retention).
pub(super) fn list(
    db: &redb::Database,
    filter: &AlarmFilter,
    after: Option<u64>,
    limit: usize,
) -> Result<AlarmPage, String> {
    let txn = db.begin_read().map_err(e)?;
    let alarms = txn.open_table(ALARMS).map_err(e)?;
    let mut items = Vec::new();
    let mut next = None;
    for entry in alarms.range(..after.unwrap_or(u64::MAX)).map_err(e)?.rev() {
        let (id, bytes) = entry.map_err(e)?;
        let alarm = decode(bytes.value(), id.value())?;
        if !filter.matches(&alarm) {
            continue;
        }
        if items.len() == limit {
            next = items.last().map(|a: &Alarm| a.id);
            break;
        }
        items.push(alarm);
    }
    Ok(AlarmPage { items, next })
}

/// When a closed alarm closed: its clear, or the acknowledgement that closed a cleared one.
fn closed_at(alarm: &Alarm) -> Option<Timestamp> {
    (alarm.state == AlarmState::Cleared)
        .then(|| alarm.cleared_at.max(alarm.acknowledged_at))
        .flatten()
}

/// Delete up to `limit` alarms that closed before `before` (with their key's entry when it
/// still names them, so the key's next raise opens a new alarm as after any close), oldest
/// id first. Returns how many were deleted and whether the scan reached the end.
pub(super) fn purge_closed(
    txn: &WriteTransaction,
    before: Timestamp,
    limit: usize,
) -> Result<(u64, bool), String> {
    let mut doomed = Vec::new();
    let mut complete = true;
    {
        let alarms = txn.open_table(ALARMS).map_err(e)?;
        for entry in alarms.iter().map_err(e)? {
            let (id, bytes) = entry.map_err(e)?;
            let alarm = decode(bytes.value(), id.value())?;
            if closed_at(&alarm).is_some_and(|t| t < before) {
                if doomed.len() == limit {
                    complete = false;
                    break;
                }
                doomed.push(alarm);
            }
        }
    }
    let mut alarms = txn.open_table(ALARMS).map_err(e)?;
    let mut keys = txn.open_table(KEYS).map_err(e)?;
    for a in &doomed {
        alarms.remove(a.id).map_err(e)?;
        let key = (a.rule.as_str(), a.device.as_str(), a.alarm_type.as_str());
        let latest = keys.get(key).map_err(e)?.map(|v| v.value());
        if latest == Some(a.id) {
            keys.remove(key).map_err(e)?;
        }
    }
    Ok((doomed.len() as u64, complete))
}
