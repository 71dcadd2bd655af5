//! Duplicate suppression by message id within a window.
//!
//! Two methods, chosen per rule ([`DedupPolicy`]):
//!
//! - **exact** (the default): a set of 64-bit id hashes. No false positive, so no real reading
//!   is ever dropped; about 16 bytes an id, so the default capacity of 65,536 ids costs about
//!   1 MiB for a window that actually sees that many.
//! - **bloom**: a scalable Bloom filter (`growable-bloom-filter`), about 3 bytes an id at a
//!   0.1 % false-positive rate (measured: 2.8–3.5 bytes from 5,000 to 500,000 ids), for windows that see millions of ids. A false positive drops a
//!   real reading as a duplicate — at most the configured rate of the distinct ids, which is
//!   why it is not the default.
//!
//! Either way the set holds at most `capacity` ids and then fails open: further ids are
//! admitted unchecked (and counted), so the worst case past the cap is a double count, never
//! a lost event.

use std::collections::HashSet;

use growable_bloom_filter::{GrowableBloom, GrowableBloomBuilder};

use super::stable_hash;
use crate::RulesError;

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

/// Default cap on remembered ids per window (exact method).
pub const DEFAULT_DEDUP_CAP: usize = 65_536;
/// Default cap on remembered ids per window (Bloom method).
pub const DEFAULT_BLOOM_CAP: usize = 1_048_576;
/// Default false-positive rate of the Bloom method.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.001;
/// Largest capacity accepted for the exact method (about 256 MiB a window when full).
pub const MAX_EXACT_CAP: usize = 1 << 24;
/// Largest capacity accepted for the Bloom method.
pub const MAX_BLOOM_CAP: usize = 1 << 27;
/// Ids a Bloom filter is first sized for; it grows by adding filters twice as large.
const BLOOM_INITIAL: usize = 1024;
/// Each added filter's false-positive rate is this times the previous one's, so the rates
/// of all of them sum to at most `first / (1 − r)`: the first is asked for `p · (1 − r)` and
/// the whole set stays within `p` however far it grows (Almeida et al., "Scalable Bloom
/// Filters", 2007).
const BLOOM_TIGHTENING: f64 = 0.8515625;

/// How a rule remembers message ids within a window.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum DedupPolicy {
    /// A set of id hashes: no false positives.
    Exact {
        /// Most ids remembered per window (pane, or session); past it, ids go unchecked.
        #[serde(default = "exact_cap")]
        capacity: usize,
    },
    /// A scalable Bloom filter: far less memory, and a bounded share of distinct ids
    /// wrongly taken for duplicates.
    Bloom {
        /// Most ids remembered per window; past it, ids go unchecked.
        #[serde(default = "bloom_cap")]
        capacity: usize,
        /// The share of distinct ids wrongly taken for duplicates, at most (0 < p < 0.5).
        #[serde(default = "fp_rate")]
        false_positive_rate: f64,
    },
}

fn exact_cap() -> usize {
    DEFAULT_DEDUP_CAP
}
fn bloom_cap() -> usize {
    DEFAULT_BLOOM_CAP
}
fn fp_rate() -> f64 {
    DEFAULT_FALSE_POSITIVE_RATE
}

impl Default for DedupPolicy {
    fn default() -> Self {
        Self::Exact {
            capacity: DEFAULT_DEDUP_CAP,
        }
    }
}

impl DedupPolicy {
    /// Most ids remembered per window.
    pub fn capacity(&self) -> usize {
        match *self {
            Self::Exact { capacity } | Self::Bloom { capacity, .. } => capacity,
        }
    }

    /// Refuse capacities and rates that make no sense or would not fit in memory.
    pub fn validate(&self) -> Result<(), RulesError> {
        let (capacity, max) = match *self {
            Self::Exact { capacity } => (capacity, MAX_EXACT_CAP),
            Self::Bloom {
                capacity,
                false_positive_rate: p,
            } => {
                if !(p > 0.0 && p < 0.5) {
                    return Err(RulesError::config(
                        "dedup false_positive_rate",
                        format!("{p}: must be above 0 and below 0.5"),
                    ));
                }
                (capacity, MAX_BLOOM_CAP)
            }
        };
        if capacity == 0 || capacity > max {
            return Err(RulesError::config(
                "dedup capacity",
                format!("{capacity}: must be 1 to {max} for this method"),
            ));
        }
        Ok(())
    }
}

/// What [`DedupSet::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: remembered.
    New,
    /// Seen before (or, with a Bloom filter, possibly a false positive): the caller drops
    /// the event.
    Duplicate,
    /// The set is full: admitted without being remembered.
    Unchecked,
}

/// The ids seen in one window (or pane, or session). Reads consult both kinds of memory, so
/// a set restored from a checkpoint taken under another policy still finds its ids.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DedupSet {
    ids: HashSet<u64, foldhash::fast::FixedState>,
    /// Bloom method: one filter per session merged into this one (filters of different
    /// sizes cannot be united, and a scalable filter stays within its rate either way).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    blooms: Vec<GrowableBloom>,
    /// Ids remembered in `blooms`.
    #[serde(default)]
    bloom_len: usize,
    /// Ids admitted unchecked because the set was full.
    unchecked: u64,
}

impl DedupSet {
    /// Check `id` and remember it if there is room.
    pub fn check(&mut self, id: MessageId, policy: &DedupPolicy) -> Seen {
        if self.contains(id) {
            return Seen::Duplicate;
        }
        if self.len() >= policy.capacity() {
            self.unchecked += 1;
            return Seen::Unchecked;
        }
        self.remember(id, policy);
        Seen::New
    }

    fn remember(&mut self, id: MessageId, policy: &DedupPolicy) {
        match *policy {
            DedupPolicy::Exact { .. } => {
                self.ids.insert(id.0);
            }
            DedupPolicy::Bloom {
                capacity,
                false_positive_rate,
            } => {
                if self.blooms.is_empty() {
                    self.blooms.push(
                        GrowableBloomBuilder::new()
                            .estimated_insertions(capacity.min(BLOOM_INITIAL))
                            .desired_error_ratio(false_positive_rate * (1.0 - BLOOM_TIGHTENING))
                            .tightening_ratio(BLOOM_TIGHTENING)
                            .build(),
                    );
                }
                if let Some(last) = self.blooms.last_mut() {
                    last.insert(id.0);
                }
                self.bloom_len += 1;
            }
        }
    }

    /// Whether `id` was remembered (with a Bloom filter: or is a false positive).
    pub fn contains(&self, id: MessageId) -> bool {
        self.ids.contains(&id.0) || self.blooms.iter().any(|b| b.contains(id.0))
    }

    /// Absorb another set (sessions merging), up to the policy's capacity.
    pub fn merge(&mut self, other: &DedupSet, policy: &DedupPolicy) {
        let cap = policy.capacity();
        for id in &other.ids {
            if self.len() >= cap {
                self.unchecked += 1;
            } else {
                self.ids.insert(*id);
            }
        }
        // A filter's ids cannot be listed, so it is kept whole: the merged set may hold a
        // little more than `capacity`, and then admits no new ids.
        self.blooms.extend(other.blooms.iter().cloned());
        self.bloom_len += other.bloom_len;
        self.unchecked += other.unchecked;
    }

    /// Remembered ids.
    pub fn len(&self) -> usize {
        self.ids.len() + self.bloom_len
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids admitted unchecked because the set was full.
    pub fn unchecked(&self) -> u64 {
        self.unchecked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXACT_2: DedupPolicy = DedupPolicy::Exact { capacity: 2 };

    #[test]
    fn duplicates_are_found_and_the_cap_fails_open() {
        let mut d = DedupSet::default();
        assert_eq!(d.check(MessageId::of("a"), &EXACT_2), Seen::New);
        assert_eq!(d.check(MessageId::of("a"), &EXACT_2), Seen::Duplicate);
        assert_eq!(d.check(MessageId::of("b"), &EXACT_2), Seen::New);
        assert_eq!(d.check(MessageId::of("c"), &EXACT_2), Seen::Unchecked);
        assert_eq!(d.check(MessageId::of("c"), &EXACT_2), Seen::Unchecked);
        assert_eq!(d.unchecked(), 2);
        assert_eq!(d.check(MessageId::of("b"), &EXACT_2), Seen::Duplicate);
        let mut e = DedupSet::default();
        let ten = DedupPolicy::Exact { capacity: 10 };
        e.check(MessageId::of("z"), &ten);
        e.merge(&d, &ten);
        assert!(e.contains(MessageId::of("a")) && e.contains(MessageId::of("z")));
        assert_eq!(e.len(), 3);
    }

    /// The Bloom method's stated bound: no id it remembered is ever missed, and of distinct
    /// ids at most the configured share is wrongly taken for a duplicate (measured while the
    /// filter grows, which is when a rule checks).
    #[test]
    fn bloom_has_no_false_negatives_and_stays_within_its_false_positive_rate() {
        for (n, p) in [(50_000usize, 0.01), (200_000, 0.001)] {
            let policy = DedupPolicy::Bloom {
                capacity: n,
                false_positive_rate: p,
            };
            let mut d = DedupSet::default();
            let mut false_positives = 0usize;
            for i in 0..n {
                match d.check(MessageId::of(&format!("dev-{}/{i}", i % 97)), &policy) {
                    Seen::New => {}
                    Seen::Duplicate => false_positives += 1,
                    Seen::Unchecked => panic!("{i} ids are within the capacity {n}"),
                }
            }
            for i in 0..n {
                let id = MessageId::of(&format!("dev-{}/{i}", i % 97));
                assert!(d.contains(id), "id {i} was remembered and must be found");
            }
            let rate = false_positives as f64 / n as f64;
            assert!(
                rate <= p,
                "n={n} p={p}: {false_positives} false positives ({rate:.5})"
            );
            // Past the capacity new ids go unchecked, as with the exact method.
            if d.len() == n {
                assert_eq!(d.check(MessageId::of("one more"), &policy), Seen::Unchecked);
            }
        }
    }

    #[test]
    fn bloom_sets_merge_and_survive_a_checkpoint() {
        let policy = DedupPolicy::Bloom {
            capacity: 10_000,
            false_positive_rate: 0.001,
        };
        let (mut a, mut b) = (DedupSet::default(), DedupSet::default());
        for i in 0..3000 {
            a.check(MessageId::of(&format!("a{i}")), &policy);
            b.check(MessageId::of(&format!("b{i}")), &policy);
        }
        a.merge(&b, &policy);
        assert_eq!(a.len(), 6000);
        let mut bytes = Vec::new();
        ciborium::into_writer(&a, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        let back: DedupSet =
            ciborium::from_reader(bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..3000 {
            assert!(back.contains(MessageId::of(&format!("a{i}"))));
            assert!(back.contains(MessageId::of(&format!("b{i}"))));
        }
        // A set restored under the other method still finds its ids.
        let mut back = back;
        assert_eq!(
            back.check(MessageId::of("a7"), &DedupPolicy::default()),
            Seen::Duplicate
        );
    }

    #[test]
    fn policies_are_checked_and_read_from_json() {
        let bloom: DedupPolicy =
            serde_json::from_str(r#"{"method": "bloom"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            bloom,
            DedupPolicy::Bloom {
                capacity: DEFAULT_BLOOM_CAP,
                false_positive_rate: DEFAULT_FALSE_POSITIVE_RATE
            }
        );
        assert!(bloom.validate().is_ok());
        for bad in [
            r#"{"method": "bloom", "false_positive_rate": 0}"#,
            r#"{"method": "bloom", "false_positive_rate": 0.7}"#,
            r#"{"method": "exact", "capacity": 0}"#,
            r#"{"method": "exact", "capacity": 100000000}"#,
        ] {
            let p: DedupPolicy = serde_json::from_str(bad).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.validate().is_err(), "{bad} must be refused");
        }
        assert!(serde_json::from_str::<DedupPolicy>(r#"{"method": "cuckoo"}"#).is_err());
        assert!(serde_json::from_str::<DedupPolicy>(r#"{"method": "exact", "rate": 1}"#).is_err());
    }
}
