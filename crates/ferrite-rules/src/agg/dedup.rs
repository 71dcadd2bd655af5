//! Duplicate suppression by message id within a window.
//!
//! An exact set of 64-bit id hashes with a cap. Exact rather than a Bloom filter because a
//! false positive would silently drop a *real* reading, while a capped exact set fails
//! open: past the cap new ids are admitted unchecked (and counted), so the worst case is a
//! double count, never a lost event. At 8 bytes an id (plus table overhead), the default
//! cap of 65,536 ids costs about 1 MiB for a window that actually sees that many.

use std::collections::HashSet;

use super::stable_hash;

/// A message id, hashed to 64 bits (a collision between two distinct ids in one window has
/// probability about n²/2^65: negligible at any window size a rule can hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The id of a textual message id (a device's sequence number, an MQTT 5 correlation
    /// data, a payload field ...).
    pub fn of(id: &str) -> Self {
        Self(stable_hash(id))
    }
}

/// What [`DedupSet::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: remembered.
    New,
    /// Seen before: the caller drops the event.
    Duplicate,
    /// The set is full: admitted without being remembered.
    Unchecked,
}

/// The ids seen in one window (or pane, or session).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DedupSet {
    ids: HashSet<u64, foldhash::fast::FixedState>,
    /// Ids admitted unchecked because the set was full.
    unchecked: u64,
}

/// Default cap on remembered ids per window.
pub const DEFAULT_DEDUP_CAP: usize = 65_536;

impl DedupSet {
    /// Check `id` and remember it if there is room.
    pub fn check(&mut self, id: MessageId, cap: usize) -> Seen {
        if self.ids.contains(&id.0) {
            Seen::Duplicate
        } else if self.ids.len() >= cap {
            self.unchecked += 1;
            Seen::Unchecked
        } else {
            self.ids.insert(id.0);
            Seen::New
        }
    }

    /// Whether `id` was remembered.
    pub fn contains(&self, id: MessageId) -> bool {
        self.ids.contains(&id.0)
    }

    /// Absorb another set (sessions merging), up to `cap` ids.
    pub fn merge(&mut self, other: &DedupSet, cap: usize) {
        for id in &other.ids {
            if self.ids.len() >= cap {
                self.unchecked += 1;
            } else {
                self.ids.insert(*id);
            }
        }
        self.unchecked += other.unchecked;
    }

    /// Remembered ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids admitted unchecked because the set was full.
    pub fn unchecked(&self) -> u64 {
        self.unchecked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_and_the_cap_fails_open() {
        let mut d = DedupSet::default();
        assert_eq!(d.check(MessageId::of("a"), 2), Seen::New);
        assert_eq!(d.check(MessageId::of("a"), 2), Seen::Duplicate);
        assert_eq!(d.check(MessageId::of("b"), 2), Seen::New);
        assert_eq!(d.check(MessageId::of("c"), 2), Seen::Unchecked);
        assert_eq!(d.check(MessageId::of("c"), 2), Seen::Unchecked);
        assert_eq!(d.unchecked(), 2);
        assert_eq!(d.check(MessageId::of("b"), 2), Seen::Duplicate);
        let mut e = DedupSet::default();
        e.check(MessageId::of("z"), 10);
        e.merge(&d, 10);
        assert!(e.contains(MessageId::of("a")) && e.contains(MessageId::of("z")));
        assert_eq!(e.len(), 3);
    }
}
