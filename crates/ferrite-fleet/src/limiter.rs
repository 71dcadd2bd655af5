//! [`AuthLimiter`]: brute-force protection for authentication, per source address and per
//! claimed device id.
//!
//! Each key has a failure budget: `burst` failures at once, refilled at one failure per
//! `refill_every`. It is kept as a GCRA ("generic cell rate algorithm") state, a single
//! timestamp per key (the *theoretical arrival time*, TAT): a failure moves the TAT
//! `refill_every` further into the future, and a key is refused while its TAT lies more than
//! `(burst - 1) × refill_every` ahead of now. A key whose TAT has passed is identical to an
//! unknown key and may be forgotten.
//!
//! Memory is bounded: each map tracks at most `max_tracked` keys. When full, the key closest to
//! a full budget (smallest TAT) is evicted, found in O(log n) through an index ordered by TAT.
//! An attacker who spreads over more keys than that can reset budgets by eviction; the per-IP
//! key for IPv6 is the /64 prefix, so one host cannot simply walk its own subnet.
//!
//! Time comes from the injected [`Clock`]; nothing here sleeps.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_core::{Clock, Timestamp};
use serde::{Deserialize, Serialize};

/// A failure budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Failures allowed in a row before refusing.
    pub burst: u32,
    /// One failure of budget comes back per this interval.
    #[serde(with = "humantime_serde")]
    pub refill_every: Duration,
}

/// Configuration of the [`AuthLimiter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterConfig {
    /// Budget per source address (IPv4 address, IPv6 /64).
    pub per_ip: Budget,
    /// Budget per claimed device id.
    pub per_device: Budget,
    /// Most keys tracked per map (addresses and device ids each).
    pub max_tracked: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            per_ip: Budget {
                burst: 30,
                refill_every: Duration::from_secs(2),
            },
            per_device: Budget {
                burst: 10,
                refill_every: Duration::from_secs(6),
            },
            max_tracked: 50_000,
        }
    }
}

/// Why an attempt is refused before its credentials are even checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// Which budget is exhausted.
    pub by: ThrottleKey,
    /// When the next attempt would be accepted.
    pub retry_after: Duration,
}

/// Which budget refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleKey {
    /// The source address's.
    SourceAddress,
    /// The claimed device id's.
    DeviceId,
}

/// Counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Attempts refused because the source address was over budget.
    pub refused_by_ip: u64,
    /// Attempts refused because the device id was over budget.
    pub refused_by_device: u64,
    /// Failures recorded.
    pub failures: u64,
    /// Keys evicted to stay within `max_tracked`.
    pub evicted: u64,
    /// Addresses currently tracked.
    pub tracked_ips: usize,
    /// Device ids currently tracked.
    pub tracked_devices: usize,
}

/// Per-address and per-device failure budgets. Cheap to share: one mutex, O(log n) per call.
pub struct AuthLimiter {
    config: LimiterConfig,
    clock: Arc<dyn Clock>,
    /// Both maps and the counters; held only for the few map operations of one call.
    state: Mutex<State>,
}

struct State {
    ips: Gcra<IpKey>,
    devices: Gcra<Box<str>>,
    stats: LimiterStats,
}

/// Longest device id kept as a key; longer claimed ids are cut (they are invalid anyway).
const MAX_DEVICE_KEY: usize = 128;

impl AuthLimiter {
    /// A limiter reading time from `clock`.
    pub fn new(config: LimiterConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State {
                ips: Gcra::new(config.per_ip, config.max_tracked),
                devices: Gcra::new(config.per_device, config.max_tracked),
                stats: LimiterStats::default(),
            }),
            config,
            clock,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LimiterConfig {
        &self.config
    }

    /// Whether an attempt from `ip` for `device` may be checked at all. Call before verifying
    /// credentials; a refusal is counted.
    pub fn check(&self, ip: IpAddr, device: Option<&str>) -> Result<(), Throttled> {
        let now = self.clock.now();
        let mut s = self.lock();
        if let Some(wait) = s.ips.wait(&IpKey::from(ip), now) {
            s.stats.refused_by_ip += 1;
            return Err(Throttled {
                by: ThrottleKey::SourceAddress,
                retry_after: wait,
            });
        }
        if let Some(d) = device
            && let Some(wait) = s.devices.wait(device_key(d), now)
        {
            s.stats.refused_by_device += 1;
            return Err(Throttled {
                by: ThrottleKey::DeviceId,
                retry_after: wait,
            });
        }
        Ok(())
    }

    /// Record a failed attempt against both budgets.
    pub fn record_failure(&self, ip: IpAddr, device: Option<&str>) {
        let now = self.clock.now();
        let mut s = self.lock();
        s.stats.failures += 1;
        let mut evicted = s.ips.fail(IpKey::from(ip), now);
        if let Some(d) = device {
            evicted += s.devices.fail(Box::from(device_key(d)), now);
        }
        s.stats.evicted += evicted;
    }

    /// Counters and sizes.
    pub fn stats(&self) -> LimiterStats {
        let s = self.lock();
        LimiterStats {
            tracked_ips: s.ips.len(),
            tracked_devices: s.devices.len(),
            ..s.stats
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent in a way that
        // matters for safety (worst case: a budget is off by one), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for AuthLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimiter")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

fn device_key(d: &str) -> &str {
    let mut end = d.len().min(MAX_DEVICE_KEY);
    while !d.is_char_boundary(end) {
        end -= 1;
    }
    &d[..end]
}

/// An address as a budget key: IPv4 whole, IPv6 by /64 (one host usually owns a /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IpKey {
    V4(u32),
    V6Net(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// GCRA states for one kind of key, with an index by TAT for eviction.
struct Gcra<K> {
    budget: Budget,
    cap: usize,
    /// key → (TAT ns, sequence number that disambiguates equal TATs in `by_tat`).
    tats: HashMap<K, (i64, u64)>,
    /// (TAT, seq) → key: the eviction order, smallest TAT first.
    by_tat: BTreeMap<(i64, u64), K>,
    seq: u64,
}

impl<K: Hash + Eq + Clone> Gcra<K> {
    fn new(budget: Budget, cap: usize) -> Self {
        Self {
            budget,
            cap: cap.max(1),
            tats: HashMap::new(),
            by_tat: BTreeMap::new(),
            seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.tats.len()
    }

    /// How long until `key` may try again; `None` if it may now.
    fn wait<Q>(&self, key: &Q, now: Timestamp) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (tat, _) = *self.tats.get(key)?;
        let interval = nanos(self.budget.refill_every);
        let slack = interval.saturating_mul(i64::from(self.budget.burst.saturating_sub(1)));
        let allowed_at = tat.saturating_sub(slack);
        let now = now.as_nanos();
        (allowed_at > now)
            .then(|| Duration::from_nanos(u64::try_from(allowed_at - now).unwrap_or(u64::MAX)))
    }

    /// Record a failure; returns how many keys were evicted to make room.
    fn fail(&mut self, key: K, now: Timestamp) -> u64 {
        let now = now.as_nanos();
        let interval = nanos(self.budget.refill_every);
        let old = self.tats.remove(&key);
        if let Some(old) = old {
            self.by_tat.remove(&old);
        }
        let mut evicted = 0;
        if old.is_none() {
            // Forget keys whose budget is full again, then the closest to full, to make room.
            while self.tats.len() >= self.cap {
                let Some((_, k)) = self.by_tat.pop_first() else {
                    break;
                };
                let expired = self.tats.remove(&k).is_some_and(|(tat, _)| tat <= now);
                if !expired {
                    evicted += 1;
                }
            }
        }
        let base = old.map_or(now, |(tat, _)| tat.max(now));
        let tat = base.saturating_add(interval);
        self.seq += 1;
        let entry = (tat, self.seq);
        self.by_tat.insert(entry, key.clone());
        self.tats.insert(key, entry);
        evicted
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_core::ManualClock;
    use std::net::Ipv6Addr;

    fn limiter(burst: u32, max: usize) -> (AuthLimiter, ManualClock) {
        let clock = ManualClock::new(Timestamp::from_nanos(1_000_000_000_000));
        let budget = Budget {
            burst,
            refill_every: Duration::from_secs(10),
        };
        let config = LimiterConfig {
            per_ip: budget,
            per_device: budget,
            max_tracked: max,
        };
        (AuthLimiter::new(config, Arc::new(clock.clone())), clock)
    }

    fn advance(clock: &ManualClock, d: Duration) {
        clock.set(plus(clock.now(), d));
    }

    fn plus(t: Timestamp, d: Duration) -> Timestamp {
        Timestamp::from_nanos(t.as_nanos() + nanos(d))
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn burst_then_refill() {
        let (l, clock) = limiter(3, 100);
        for _ in 0..3 {
            assert!(l.check(ip(1), None).is_ok());
            l.record_failure(ip(1), None);
        }
        let t = l.check(ip(1), None).expect_err("over budget");
        assert_eq!(t.by, ThrottleKey::SourceAddress);
        assert_eq!(t.retry_after, Duration::from_secs(10));
        assert!(l.check(ip(2), None).is_ok(), "other addresses unaffected");
        advance(&clock, Duration::from_secs(10));
        assert!(l.check(ip(1), None).is_ok(), "one failure refilled");
        l.record_failure(ip(1), None);
        assert!(l.check(ip(1), None).is_err());
        assert_eq!(l.stats().refused_by_ip, 2);
        assert_eq!(l.stats().failures, 4);
    }

    #[test]
    fn per_device_budget_across_addresses() {
        let (l, _clock) = limiter(2, 100);
        l.record_failure(ip(1), Some("d1"));
        l.record_failure(ip(2), Some("d1"));
        let t = l.check(ip(3), Some("d1")).expect_err("device over budget");
        assert_eq!(t.by, ThrottleKey::DeviceId);
        assert!(l.check(ip(3), Some("d2")).is_ok());
        assert_eq!(l.stats().refused_by_device, 1);
    }

    #[test]
    fn memory_is_bounded_and_evicts_closest_to_full() {
        let (l, clock) = limiter(2, 3);
        l.record_failure(ip(1), None);
        advance(&clock, Duration::from_secs(1));
        l.record_failure(ip(2), None);
        l.record_failure(ip(2), None);
        l.record_failure(ip(3), None);
        l.record_failure(ip(4), None); // evicts ip(1), the smallest TAT
        let stats = l.stats();
        assert_eq!(stats.tracked_ips, 3);
        assert_eq!(stats.evicted, 1);
        assert!(l.check(ip(2), None).is_err(), "the attacker key is kept");
        for n in 10..200 {
            l.record_failure(ip(n), None);
        }
        assert_eq!(l.stats().tracked_ips, 3);
    }

    #[test]
    fn expired_keys_are_dropped_without_counting_as_evictions() {
        let (l, clock) = limiter(2, 1);
        l.record_failure(ip(1), None);
        advance(&clock, Duration::from_secs(60));
        l.record_failure(ip(2), None);
        assert_eq!(l.stats().evicted, 0);
        assert_eq!(l.stats().tracked_ips, 1);
    }

    #[test]
    fn ipv6_is_keyed_by_slash_64() {
        let (l, _clock) = limiter(1, 100);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 2));
        let c = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        l.record_failure(a, None);
        assert!(l.check(b, None).is_err(), "same /64");
        assert!(l.check(c, None).is_ok(), "other /64");
    }

    #[test]
    fn long_device_ids_are_cut() {
        let (l, _clock) = limiter(1, 100);
        let long = "é".repeat(200);
        l.record_failure(ip(1), Some(&long));
        assert!(l.check(ip(2), Some(&long)).is_err());
    }
}
