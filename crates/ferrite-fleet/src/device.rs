//! The device registry: [`Device`] records and their create / get / update / delete / list.
//!
//! Groups, types and tag keys use the device-id character set (`A-Z a-z 0-9 _ - . :`, no `/`,
//! `+`, `#`), because policies expand them into topic filters. Listing is a scan in id order
//! with the filters applied on the way and an id cursor; that is fine for fleets of hundreds of
//! thousands and needs no secondary index to keep consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use ferrite_core::{DeviceId, Timestamp};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::fleet::{FleetEvent, Tx};
use crate::page::{Cursor, Page, clamp_limit};
use crate::schema::{CREDENTIALS, DEVICES, PRESENCE, from_json, to_json};
use crate::{Fleet, FleetError};

/// One device of the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Identity; also the MQTT client id and the `devices/{id}/` topic namespace.
    pub id: DeviceId,
    /// Human-readable name (defaults to the id).
    pub name: String,
    /// Type or profile (`thermostat-v2`); policies can attach by it.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Free key → value labels; also added to the device's telemetry as tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Groups; policies can attach by group.
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Firmware version the device runs, as last reported or set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// A disabled device cannot connect; its live sessions are closed.
    pub enabled: bool,
    /// When it was created.
    pub created: Timestamp,
    /// When its registry entry last changed (not bumped by no-op updates).
    pub updated: Timestamp,
    /// When it was last connected or seen (from presence; not stored in the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
}

/// A device to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    /// Identity.
    pub id: DeviceId,
    /// Name; `None` uses the id.
    pub name: Option<String>,
    /// Type or profile.
    pub device_type: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Groups.
    pub groups: BTreeSet<String>,
    /// Firmware version.
    pub firmware_version: Option<String>,
    /// Whether it may connect.
    pub enabled: bool,
}

impl NewDevice {
    /// An enabled device with nothing but an id.
    pub fn new(id: DeviceId) -> Self {
        Self {
            id,
            name: None,
            device_type: None,
            tags: BTreeMap::new(),
            groups: BTreeSet::new(),
            firmware_version: None,
            enabled: true,
        }
    }

    pub(crate) fn into_device(self, now: Timestamp) -> Device {
        Device {
            name: self.name.unwrap_or_else(|| self.id.to_string()),
            id: self.id,
            device_type: self.device_type,
            tags: self.tags,
            groups: self.groups,
            firmware_version: self.firmware_version,
            enabled: self.enabled,
            created: now,
            updated: now,
            last_seen: None,
        }
    }
}

/// A partial update: each `Some` field replaces that field, `None` leaves it as it is.
/// For the optional fields, `Some(None)` clears.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicePatch {
    /// New name.
    pub name: Option<String>,
    /// New type (`Some(None)` clears).
    #[serde(rename = "type", with = "double_option")]
    pub device_type: Option<Option<String>>,
    /// New tags (replaces all).
    pub tags: Option<BTreeMap<String, String>>,
    /// Tags to set, keeping the others (applied after `tags`).
    pub set_tags: BTreeMap<String, String>,
    /// Tag keys to remove (applied after `set_tags`).
    pub remove_tags: BTreeSet<String>,
    /// New groups (replaces all).
    pub groups: Option<BTreeSet<String>>,
    /// New firmware version (`Some(None)` clears).
    #[serde(with = "double_option")]
    pub firmware_version: Option<Option<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

impl DevicePatch {
    /// `device` with this patch applied; `updated` untouched.
    pub fn apply(&self, device: &Device) -> Device {
        let mut d = device.clone();
        if let Some(n) = &self.name {
            d.name.clone_from(n);
        }
        if let Some(t) = &self.device_type {
            d.device_type.clone_from(t);
        }
        if let Some(t) = &self.tags {
            d.tags.clone_from(t);
        }
        for (k, v) in &self.set_tags {
            d.tags.insert(k.clone(), v.clone());
        }
        for k in &self.remove_tags {
            d.tags.remove(k);
        }
        if let Some(g) = &self.groups {
            d.groups.clone_from(g);
        }
        if let Some(f) = &self.firmware_version {
            d.firmware_version.clone_from(f);
        }
        if let Some(e) = self.enabled {
            d.enabled = e;
        }
        d
    }
}

/// Serde for `Option<Option<T>>`: absent → `None`, `null` → `Some(None)`.
pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None | Some(None) => s.serialize_none(),
            Some(Some(x)) => x.serialize(s),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Which devices to list. Every set criterion must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Of this type.
    pub device_type: Option<String>,
    /// Member of this group.
    pub group: Option<String>,
    /// Having all these tags with these values.
    pub tags: BTreeMap<String, String>,
    /// Enabled (`true`) or disabled (`false`).
    pub enabled: Option<bool>,
    /// Connected now (`true`) or not (`false`).
    pub online: Option<bool>,
    /// Id starts with this.
    pub id_prefix: Option<String>,
}

impl DeviceFilter {
    fn matches(&self, d: &Device, online: impl Fn(&DeviceId) -> bool) -> bool {
        self.device_type
            .as_ref()
            .is_none_or(|t| d.device_type.as_ref() == Some(t))
            && self.group.as_ref().is_none_or(|g| d.groups.contains(g))
            && self.tags.iter().all(|(k, v)| d.tags.get(k) == Some(v))
            && self.enabled.is_none_or(|e| d.enabled == e)
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|p| d.id.as_str().starts_with(p.as_str()))
            && self.online.is_none_or(|o| online(&d.id) == o)
    }
}

/// Longest group, type or tag key.
pub(crate) const MAX_LABEL: usize = 64;
/// Longest name or tag value.
pub(crate) const MAX_TEXT: usize = 256;
/// Most tags or groups on one device.
pub(crate) const MAX_ITEMS: usize = 64;

/// Check a group, type or tag-key label: 1–64 bytes of `A-Z a-z 0-9 _ - . :`.
pub(crate) fn check_label(what: &'static str, s: &str) -> Result<(), FleetError> {
    if s.is_empty() || s.len() > MAX_LABEL {
        return Err(FleetError::invalid(
            what,
            format!("{s:?} must be 1–{MAX_LABEL} bytes"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(FleetError::invalid(
            what,
            format!("{s:?} contains {c:?}; allowed are A-Z a-z 0-9 _ - . :"),
        ));
    }
    Ok(())
}

fn check_text(what: &'static str, s: &str, allow_empty: bool) -> Result<(), FleetError> {
    if (!allow_empty && s.is_empty()) || s.len() > MAX_TEXT {
        return Err(FleetError::invalid(
            what,
            format!("must be {}–{MAX_TEXT} bytes", u8::from(!allow_empty)),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FleetError::invalid(what, "contains a control character"));
    }
    Ok(())
}

/// Validate every field of a device.
pub(crate) fn validate(d: &Device) -> Result<(), FleetError> {
    check_text("name", &d.name, false)?;
    if let Some(t) = &d.device_type {
        check_label("type", t)?;
    }
    if d.tags.len() > MAX_ITEMS || d.groups.len() > MAX_ITEMS {
        return Err(FleetError::invalid(
            "device",
            format!("at most {MAX_ITEMS} tags and {MAX_ITEMS} groups"),
        ));
    }
    for (k, v) in &d.tags {
        check_label("tag key", k)?;
        check_text("tag value", v, true)?;
    }
    for g in &d.groups {
        check_label("group", g)?;
    }
    if let Some(f) = &d.firmware_version {
        check_text("firmware version", f, false)?;
    }
    Ok(())
}

/// Whether anything but the timestamps differs.
pub(crate) fn same_content(a: &Device, b: &Device) -> bool {
    a.name == b.name
        && a.device_type == b.device_type
        && a.tags == b.tags
        && a.groups == b.groups
        && a.firmware_version == b.firmware_version
        && a.enabled == b.enabled
}

/// Read a device inside a write transaction.
pub(crate) fn get_tx(tx: &Tx<'_>, id: &DeviceId) -> Result<Option<Device>, FleetError> {
    let table = tx.txn.open_table(DEVICES)?;
    let v = table.get(id.as_str())?;
    v.map(|v| from_json(v.value(), id.as_str())).transpose()
}

/// Insert or replace a device record inside a write transaction.
pub(crate) fn put_tx(tx: &Tx<'_>, d: &Device) -> Result<(), FleetError> {
    let mut stored = d.clone();
    stored.last_seen = None;
    tx.txn
        .open_table(DEVICES)?
        .insert(d.id.as_str(), to_json(&stored)?.as_slice())?;
    Ok(())
}

/// Create `new` inside a transaction (validated, audited).
pub(crate) fn create_tx(
    tx: &mut Tx<'_>,
    new: NewDevice,
    action: &str,
) -> Result<Device, FleetError> {
    insert_new_tx(tx, new.into_device(tx.now), action)
}

/// Insert a new device record inside a transaction (validated, audited).
pub(crate) fn insert_new_tx(
    tx: &mut Tx<'_>,
    d: Device,
    action: &str,
) -> Result<Device, FleetError> {
    validate(&d)?;
    if get_tx(tx, &d.id)?.is_some() {
        return Err(FleetError::exists("device", d.id.as_str()));
    }
    put_tx(tx, &d)?;
    tx.touch(&d.id);
    tx.audit(
        action,
        d.id.as_str(),
        serde_json::to_value(&d).unwrap_or_default(),
    )?;
    Ok(d)
}

/// Apply `patch` to `old` inside a transaction; returns the new device and whether it changed.
pub(crate) fn update_tx(
    tx: &mut Tx<'_>,
    old: &Device,
    patch: &DevicePatch,
    action: &str,
) -> Result<(Device, bool), FleetError> {
    let mut new = patch.apply(old);
    validate(&new)?;
    if same_content(old, &new) {
        return Ok((old.clone(), false));
    }
    new.updated = tx.now;
    put_tx(tx, &new)?;
    tx.touch(&new.id);
    if old.enabled && !new.enabled {
        tx.emit(FleetEvent::DeviceDisabled {
            device: new.id.clone(),
        });
    }
    if old.device_type != new.device_type || old.groups != new.groups || old.tags != new.tags {
        tx.emit(FleetEvent::DeviceChanged {
            device: new.id.clone(),
        });
    }
    tx.audit(
        action,
        new.id.as_str(),
        serde_json::to_value(patch).unwrap_or_default(),
    )?;
    Ok((new, true))
}

impl Fleet {
    /// Create a device. Fails with `AlreadyExists` if the id is taken.
    pub fn create_device(&self, actor: &Actor, new: NewDevice) -> Result<Device, FleetError> {
        self.write(actor, |tx| create_tx(tx, new, "device.create"))
            .map(|d| self.with_presence(d))
    }

    /// Create a device and a first token credential for it in one transaction: either both
    /// exist afterwards or neither does.
    pub fn create_device_with_credential(
        &self,
        actor: &Actor,
        new: NewDevice,
        label: &str,
    ) -> Result<(Device, crate::IssuedCredential), FleetError> {
        self.write(actor, |tx| {
            let device = create_tx(tx, new, "device.create")?;
            let credential = crate::credential::create_tx(self, tx, &device.id, label, None)?;
            Ok((device, credential))
        })
        .map(|(d, c)| (self.with_presence(d), c))
    }

    /// The device with this id, if any.
    pub fn get_device(&self, id: &DeviceId) -> Result<Option<Device>, FleetError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let v = table.get(id.as_str())?;
        let d: Option<Device> = v.map(|v| from_json(v.value(), id.as_str())).transpose()?;
        Ok(d.map(|d| self.with_presence(d)))
    }

    /// Apply a partial update. A patch that changes nothing writes nothing and does not bump
    /// `updated`. Disabling emits [`FleetEvent::DeviceDisabled`]; changing type, groups or tags
    /// emits [`FleetEvent::DeviceChanged`].
    pub fn update_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        patch: &DevicePatch,
    ) -> Result<Device, FleetError> {
        self.write(actor, |tx| {
            let old =
                get_tx(tx, id)?.ok_or_else(|| FleetError::not_found("device", id.as_str()))?;
            update_tx(tx, &old, patch, "device.update").map(|(d, _)| d)
        })
        .map(|d| self.with_presence(d))
    }

    /// Enable or disable a device (a shorthand for [`Fleet::update_device`]).
    pub fn set_enabled(
        &self,
        actor: &Actor,
        id: &DeviceId,
        enabled: bool,
    ) -> Result<Device, FleetError> {
        let patch = DevicePatch {
            enabled: Some(enabled),
            ..DevicePatch::default()
        };
        self.update_device(actor, id, &patch)
    }

    /// Delete a device with its credentials and presence; its certificates are revoked (so a
    /// device re-created with the same id does not inherit them). Emits
    /// [`FleetEvent::DeviceDeleted`].
    pub fn delete_device(&self, actor: &Actor, id: &DeviceId) -> Result<(), FleetError> {
        self.write(actor, |tx| {
            if tx.txn.open_table(DEVICES)?.remove(id.as_str())?.is_none() {
                return Err(FleetError::not_found("device", id.as_str()));
            }
            let removed_credentials = {
                let mut creds = tx.txn.open_table(CREDENTIALS)?;
                let mut n = 0usize;
                for r in creds.extract_from_if::<(&str, &str), _>((id.as_str(), "").., |k, _| {
                    k.0 == id.as_str()
                })? {
                    r?;
                    n += 1;
                }
                n
            };
            let revoked_certs = crate::pki::revoke_device_certs_tx(tx, id)?;
            tx.txn.open_table(PRESENCE)?.remove(id.as_str())?;
            tx.forget_presence(id);
            tx.touch(id);
            tx.emit(FleetEvent::DeviceDeleted { device: id.clone() });
            tx.audit(
                "device.delete",
                id.as_str(),
                serde_json::json!({
                    "credentials_removed": removed_credentials,
                    "certs_revoked": revoked_certs,
                }),
            )?;
            Ok(())
        })
    }

    /// One page of devices matching `filter`, in id order, starting after `after`.
    pub fn list_devices(
        &self,
        filter: &DeviceFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Device>, FleetError> {
        let limit = clamp_limit(limit);
        let start = after.map(Cursor::key_str).transpose()?;
        let txn = self.db().begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let lower = match (&start, &filter.id_prefix) {
            (Some(s), _) => Bound::Excluded(s.as_str()),
            (None, Some(p)) => Bound::Included(p.as_str()),
            (None, None) => Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut more = false;
        for row in table.range::<&str>((lower, Bound::Unbounded))? {
            let (k, v) = row?;
            if let Some(p) = &filter.id_prefix
                && !k.value().starts_with(p.as_str())
            {
                if k.value() > p.as_str() {
                    break;
                }
                continue;
            }
            let d: Device = from_json(v.value(), k.value())?;
            if !filter.matches(&d, |id| self.is_online(id)) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(self.with_presence(d));
        }
        let next = if more {
            items
                .last()
                .map(|d: &Device| Cursor::from_key(d.id.as_str().as_bytes()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Visit every device in id order (export, counts).
    pub(crate) fn for_each_device(
        &self,
        mut f: impl FnMut(Device) -> Result<(), FleetError>,
    ) -> Result<(), FleetError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(DEVICES)?;
        for row in table.iter()? {
            let (k, v) = row?;
            let d: Device = from_json(v.value(), k.value())?;
            f(self.with_presence(d))?;
        }
        Ok(())
    }

    fn with_presence(&self, mut d: Device) -> Device {
        d.last_seen = self.inner().presence.last_seen(&d.id);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device {
            id: DeviceId::new("d1").expect("id"),
            name: "d1".into(),
            device_type: Some("meter".into()),
            tags: BTreeMap::from([("site".into(), "berlin".into())]),
            groups: BTreeSet::from(["g1".into()]),
            firmware_version: None,
            enabled: true,
            created: Timestamp::from_nanos(1),
            updated: Timestamp::from_nanos(1),
            last_seen: None,
        }
    }

    #[test]
    fn patch_semantics() {
        let d = dev();
        let p = DevicePatch {
            set_tags: BTreeMap::from([("floor".into(), "2".into())]),
            device_type: Some(None),
            ..DevicePatch::default()
        };
        let n = p.apply(&d);
        assert_eq!(n.tags.len(), 2);
        assert_eq!(n.device_type, None);
        assert_eq!(n.groups, d.groups);
        let p: DevicePatch =
            serde_json::from_str(r#"{"type":null,"remove_tags":["site"]}"#).expect("json");
        assert_eq!(p.device_type, Some(None));
        let n = p.apply(&d);
        assert!(n.tags.is_empty());
        let p: DevicePatch = serde_json::from_str(r#"{"name":"x"}"#).expect("json");
        assert_eq!(p.device_type, None);
        assert!(serde_json::from_str::<DevicePatch>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn validation() {
        let mut d = dev();
        assert!(validate(&d).is_ok());
        d.groups.insert("a/b".into());
        assert!(validate(&d).is_err(), "groups expand into topics");
        let mut d = dev();
        d.groups.insert("+".into());
        assert!(validate(&d).is_err());
        let mut d = dev();
        d.tags
            .insert("k".into(), "any text / with # is fine".into());
        assert!(validate(&d).is_ok());
        d.tags.insert("bad key".into(), "v".into());
        assert!(validate(&d).is_err());
        let mut d = dev();
        d.name = "line\nbreak".into();
        assert!(validate(&d).is_err());
        d.name = String::new();
        assert!(validate(&d).is_err());
    }
}
