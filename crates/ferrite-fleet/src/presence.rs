//! Presence: which devices are connected now, and when each was last connected, disconnected
//! and seen.
//!
//! **Choice: online state lives in memory; history is written behind in batches.** The gateway
//! calls [`Fleet::connected`] / [`Fleet::disconnected`] / [`Fleet::seen`], which only update an
//! in-memory map under one short mutex (no disk I/O, no allocation for a known device), so a
//! reconnect storm of 10,000 devices costs microseconds each. The server calls
//! [`Fleet::flush_presence`] periodically (every few seconds) and at shutdown; it writes every
//! changed entry in one redb transaction (one fsync). A crash loses at most the last interval
//! of `last_seen` updates, which is the accepted price. After a restart every device is
//! offline (connections did not survive it), with its persisted history loaded back.
//!
//! **Takeover safety.** Every connection carries the gateway's monotonically increasing
//! connection id. A device is online with exactly one connection id; a disconnect for any
//! other id (the old connection of a takeover, closing late) changes nothing, and a connect
//! with an id lower than one already seen (reordered) does not replace the newer one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use ferrite_core::{DeviceId, Timestamp};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::fleet::lock;
use crate::schema::{DEVICES, PRESENCE, from_json, to_json};
use crate::{Fleet, FleetError};

/// A device's connectivity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceInfo {
    /// Connected now.
    pub online: bool,
    /// The current connection's id, while online.
    pub connection: Option<u64>,
    /// The address of the current or last connection.
    pub peer: Option<SocketAddr>,
    /// When the current or last connection was established.
    pub connected_at: Option<Timestamp>,
    /// When the last connection ended.
    pub disconnected_at: Option<Timestamp>,
    /// When the device was last connected or sent anything.
    pub last_seen: Option<Timestamp>,
    /// Why the last connection ended.
    pub last_reason: Option<String>,
}

/// Fleet-wide counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetCounts {
    /// Devices in the registry.
    pub total: u64,
    /// Connected now.
    pub online: u64,
    /// Never connected.
    pub never_seen: u64,
    /// Disabled.
    pub disabled: u64,
}

/// What is persisted per device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PresenceRecord {
    #[serde(default)]
    connected_at: Option<Timestamp>,
    #[serde(default)]
    disconnected_at: Option<Timestamp>,
    #[serde(default)]
    last_seen: Option<Timestamp>,
    #[serde(default)]
    last_reason: Option<String>,
    #[serde(default)]
    peer: Option<SocketAddr>,
}

#[derive(Debug, Default)]
struct State {
    /// The connection the device is online with.
    connection: Option<u64>,
    /// Highest connection id seen for this device (reordering guard).
    highest: u64,
    record: PresenceRecord,
    /// Bumped on every change; equal to `flushed` when the disk is up to date.
    version: u64,
    flushed: u64,
}

/// The in-memory presence map.
pub(crate) struct Presence {
    map: Mutex<HashMap<DeviceId, State>>,
    /// Serializes flushes so a slow one and the next cannot interleave.
    flushing: Mutex<()>,
}

impl Presence {
    /// Load persisted history; every device starts offline.
    pub(crate) fn load(db: &redb::Database) -> Result<Self, FleetError> {
        let txn = db.begin_read()?;
        let table = txn.open_table(PRESENCE)?;
        let mut map = HashMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let Ok(id) = DeviceId::new(k.value()) else {
                continue;
            };
            let record: PresenceRecord = from_json(v.value(), k.value())?;
            map.insert(
                id,
                State {
                    record,
                    ..State::default()
                },
            );
        }
        Ok(Self {
            map: Mutex::new(map),
            flushing: Mutex::new(()),
        })
    }

    pub(crate) fn last_seen(&self, id: &DeviceId) -> Option<Timestamp> {
        lock(&self.map).get(id).and_then(|s| s.record.last_seen)
    }

    pub(crate) fn forget(&self, id: &DeviceId) {
        lock(&self.map).remove(id);
    }

    fn with<R>(&self, id: &DeviceId, f: impl FnOnce(&mut State) -> R) -> R {
        let mut map = lock(&self.map);
        let state = match map.get_mut(id) {
            Some(s) => s,
            None => map.entry(id.clone()).or_default(),
        };
        f(state)
    }
}

fn later(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl Fleet {
    /// The gateway accepted connection `connection` (its monotonically increasing id) of
    /// `device`. Returns whether the device is now online with this connection (`false` only
    /// for a connect that arrives after a newer one). Memory only; see the module docs.
    pub fn connected(
        &self,
        device: &DeviceId,
        connection: u64,
        peer: SocketAddr,
        at: Timestamp,
    ) -> bool {
        self.inner().presence.with(device, |s| {
            s.record.last_seen = later(s.record.last_seen, at);
            s.version += 1;
            if connection < s.highest {
                return false;
            }
            s.highest = connection;
            s.connection = Some(connection);
            s.record.connected_at = Some(at);
            s.record.peer = Some(peer);
            true
        })
    }

    /// Connection `connection` of `device` ended. Returns whether the device went offline: a
    /// disconnect of a connection that was already replaced (takeover) changes nothing.
    pub fn disconnected(
        &self,
        device: &DeviceId,
        connection: u64,
        reason: &str,
        at: Timestamp,
    ) -> bool {
        self.inner().presence.with(device, |s| {
            if s.connection != Some(connection) {
                return false;
            }
            s.connection = None;
            s.record.disconnected_at = Some(at);
            s.record.last_seen = later(s.record.last_seen, at);
            s.record.last_reason = Some(reason.to_owned());
            s.version += 1;
            true
        })
    }

    /// The device sent something at `at` (keeps `last_seen` fresh between connects).
    pub fn seen(&self, device: &DeviceId, at: Timestamp) {
        self.inner().presence.with(device, |s| {
            if s.record.last_seen.is_none_or(|l| l < at) {
                s.record.last_seen = Some(at);
                s.version += 1;
            }
        });
    }

    /// Whether the device is connected now.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        lock(&self.inner().presence.map)
            .get(device)
            .is_some_and(|s| s.connection.is_some())
    }

    /// The device's connectivity; `None` if it has never connected since it was created.
    pub fn presence(&self, device: &DeviceId) -> Option<PresenceInfo> {
        lock(&self.inner().presence.map)
            .get(device)
            .map(|s| PresenceInfo {
                online: s.connection.is_some(),
                connection: s.connection,
                peer: s.record.peer,
                connected_at: s.record.connected_at,
                disconnected_at: s.record.disconnected_at,
                last_seen: s.record.last_seen,
                last_reason: s.record.last_reason.clone(),
            })
    }

    /// Ids of the devices connected now.
    pub fn online_devices(&self) -> Vec<DeviceId> {
        lock(&self.inner().presence.map)
            .iter()
            .filter(|(_, s)| s.connection.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Write every presence change since the last flush in one transaction; returns how many
    /// devices were written. Entries of devices no longer in the registry are skipped.
    pub fn flush_presence(&self) -> Result<usize, FleetError> {
        let presence = &self.inner().presence;
        let _one_at_a_time = lock(&presence.flushing);
        let dirty: Vec<(DeviceId, u64, PresenceRecord)> = lock(&presence.map)
            .iter()
            .filter(|(_, s)| s.version != s.flushed)
            .map(|(id, s)| (id.clone(), s.version, s.record.clone()))
            .collect();
        if dirty.is_empty() {
            return Ok(0);
        }
        let written = self.write(&Actor::System, |tx| {
            let devices = tx.txn.open_table(DEVICES)?;
            let mut table = tx.txn.open_table(PRESENCE)?;
            let mut n = 0;
            for (id, _, record) in &dirty {
                if devices.get(id.as_str())?.is_none() {
                    continue;
                }
                table.insert(id.as_str(), to_json(record)?.as_slice())?;
                n += 1;
            }
            Ok(n)
        })?;
        let mut map = lock(&presence.map);
        for (id, version, _) in dirty {
            if let Some(s) = map.get_mut(&id) {
                s.flushed = s.flushed.max(version);
            }
        }
        Ok(written)
    }

    /// Fleet-wide counts: total, online, never seen, disabled.
    pub fn counts(&self) -> Result<FleetCounts, FleetError> {
        let mut c = FleetCounts::default();
        let mut ids = Vec::new();
        {
            let txn = self.db().begin_read()?;
            let table = txn.open_table(DEVICES)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let d: crate::Device = from_json(v.value(), k.value())?;
                c.total += 1;
                c.disabled += u64::from(!d.enabled);
                ids.push(d.id);
            }
        }
        // Take the presence lock only after the scan, so connects are not held up by it.
        let map = lock(&self.inner().presence.map);
        for id in &ids {
            match map.get(id) {
                Some(s) if s.connection.is_some() => c.online += 1,
                Some(s) if s.record.last_seen.is_some() => {}
                _ => c.never_seen += 1,
            }
        }
        Ok(c)
    }
}
