//! The event-time watermark: how far event time has progressed, per partition and overall.
//!
//! Each partition (a JetStream partition, an MQTT source — whatever the caller feeds in
//! order) tracks the largest event time it has seen. Its watermark is that maximum minus
//! the configured out-of-orderness; the overall watermark is the minimum over *active*
//! partitions, and it never decreases. A partition that has not delivered anything for
//! `idle_timeout` of processing time is idle: it no longer holds the watermark back (and is
//! forgotten). When it resumes, it counts again from its new events; anything it sends
//! below the watermark by then is late. When every partition is idle the watermark stays
//! where it is (Flink's behaviour: idleness never *advances* time by itself).
//!
//! Processing time is passed in explicitly (`now`), never read from a clock.
//!
//! Convention (see [`crate::window`]): a watermark `W` asserts that no more events with
//! event time `< W` are expected, so an event with `t < W` is late and a window
//! `[start, end)` is complete once `W ≥ end`.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use ferrite_core::Timestamp;

use crate::error::RulesError;

/// Watermark settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WatermarkConfig {
    /// How far behind the largest event time seen events may still arrive in order to be
    /// on time (Flink's bounded out-of-orderness).
    pub out_of_orderness: Duration,
    /// After this much processing time without an event a partition is idle and stops
    /// holding the watermark back. `None`: partitions never go idle.
    pub idle_timeout: Option<Duration>,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            out_of_orderness: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// A duration as i64 nanoseconds, or a config error if it does not fit.
pub(crate) fn nanos(what: &'static str, d: Duration) -> Result<i64, RulesError> {
    i64::try_from(d.as_nanos())
        .map_err(|_| RulesError::config(what, format!("{d:?} exceeds 292 years")))
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Partition {
    /// Largest event time seen, ns.
    max_event: i64,
    /// Processing time of the last event, ns.
    last_active: i64,
}

/// Tracks the watermark over partitions of type `P`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "P: serde::Serialize + Hash + Eq",
    deserialize = "P: serde::Deserialize<'de> + Hash + Eq"
))]
pub struct WatermarkTracker<P> {
    out_of_orderness: i64,
    idle_timeout: Option<i64>,
    partitions: HashMap<P, Partition, foldhash::fast::RandomState>,
    /// The watermark last computed; only ever raised.
    current: Option<i64>,
}

impl<P: Hash + Eq + Clone> WatermarkTracker<P> {
    /// A tracker with no partitions and no watermark yet.
    pub fn new(config: WatermarkConfig) -> Result<Self, RulesError> {
        let idle_timeout = config
            .idle_timeout
            .map(|d| nanos("idle timeout", d))
            .transpose()?;
        if idle_timeout == Some(0) {
            return Err(RulesError::config("idle timeout", "must be positive"));
        }
        Ok(Self {
            out_of_orderness: nanos("out-of-orderness", config.out_of_orderness)?,
            idle_timeout,
            partitions: HashMap::default(),
            current: None,
        })
    }

    /// Record an event of `partition` with `event_time`, received at processing time `now`.
    /// Does not move the watermark; call [`WatermarkTracker::advance`] for that.
    pub fn observe(&mut self, partition: &P, event_time: Timestamp, now: Timestamp) {
        let (t, now) = (event_time.as_nanos(), now.as_nanos());
        match self.partitions.get_mut(partition) {
            Some(p) => {
                p.max_event = p.max_event.max(t);
                p.last_active = p.last_active.max(now);
            }
            None => {
                self.partitions.insert(
                    partition.clone(),
                    Partition {
                        max_event: t,
                        last_active: now,
                    },
                );
            }
        }
    }

    /// Recompute the watermark at processing time `now` and return it (`None` until some
    /// active partition has delivered an event). Idle partitions are dropped. Never returns
    /// a value lower than an earlier one.
    pub fn advance(&mut self, now: Timestamp) -> Option<Timestamp> {
        let now = now.as_nanos();
        if let Some(idle) = self.idle_timeout {
            self.partitions
                .retain(|_, p| now.saturating_sub(p.last_active) < idle);
        }
        let candidate = self
            .partitions
            .values()
            .map(|p| p.max_event.saturating_sub(self.out_of_orderness))
            .min();
        if let Some(c) = candidate {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current()
    }

    /// The watermark as last computed.
    pub fn current(&self) -> Option<Timestamp> {
        self.current.map(Timestamp::from_nanos)
    }

    /// Whether an event at `event_time` is behind the watermark (`t < W`).
    pub fn is_late(&self, event_time: Timestamp) -> bool {
        self.current.is_some_and(|w| event_time.as_nanos() < w)
    }

    /// Partitions currently tracked (active ones, after the last `advance`).
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ns: i64) -> Timestamp {
        Timestamp::from_nanos(ns)
    }

    fn tracker(ooo: u64, idle: Option<u64>) -> WatermarkTracker<u32> {
        WatermarkTracker::new(WatermarkConfig {
            out_of_orderness: Duration::from_nanos(ooo),
            idle_timeout: idle.map(Duration::from_nanos),
        })
        .expect("valid config")
    }

    #[test]
    fn watermark_is_max_event_time_minus_out_of_orderness() {
        let mut w = tracker(10, None);
        assert_eq!(w.advance(t(0)), None);
        w.observe(&0, t(100), t(0));
        assert_eq!(w.advance(t(0)), Some(t(90)));
        // An out-of-order event does not lower it.
        w.observe(&0, t(50), t(1));
        assert_eq!(w.advance(t(1)), Some(t(90)));
        assert!(w.is_late(t(89)));
        assert!(!w.is_late(t(90)));
        w.observe(&0, t(130), t(2));
        assert_eq!(w.advance(t(2)), Some(t(120)));
    }

    #[test]
    fn slowest_active_partition_holds_the_watermark() {
        let mut w = tracker(0, None);
        w.observe(&1, t(100), t(0));
        w.observe(&2, t(40), t(0));
        assert_eq!(w.advance(t(0)), Some(t(40)));
        w.observe(&2, t(70), t(0));
        assert_eq!(w.advance(t(0)), Some(t(70)));
    }

    #[test]
    fn idle_partition_does_not_hold_back_the_watermark() {
        let mut w = tracker(0, Some(1_000));
        w.observe(&1, t(100), t(0));
        w.observe(&2, t(10), t(0));
        assert_eq!(w.advance(t(500)), Some(t(10)));
        // Partition 1 keeps talking; 2 falls silent for ≥ the idle timeout.
        w.observe(&1, t(300), t(900));
        assert_eq!(w.advance(t(999)), Some(t(10)), "not idle yet");
        assert_eq!(w.advance(t(1_000)), Some(t(300)), "2 is idle now");
        assert_eq!(w.partitions(), 1);
        // 2 resumes far behind: the watermark does not go back, its events are late.
        w.observe(&2, t(20), t(1_100));
        assert_eq!(w.advance(t(1_100)), Some(t(300)));
        assert!(w.is_late(t(20)));
    }

    #[test]
    fn all_partitions_idle_keeps_the_watermark() {
        let mut w = tracker(5, Some(10));
        w.observe(&1, t(100), t(0));
        assert_eq!(w.advance(t(1)), Some(t(95)));
        assert_eq!(w.advance(t(1_000)), Some(t(95)));
        assert_eq!(w.partitions(), 0);
    }

    #[test]
    fn never_decreases_under_any_sequence() {
        let mut w = tracker(3, Some(50));
        let mut last = None;
        let mut seed = 17u64;
        for step in 0..2_000i64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let part = (seed >> 60) as u32;
            let ev = (seed >> 20) as i64 % 1_000 + step / 2;
            w.observe(&part, t(ev), t(step));
            let now = w.advance(t(step));
            assert!(now >= last, "{now:?} < {last:?}");
            last = now;
        }
    }

    #[test]
    fn rejects_zero_idle_timeout() {
        assert!(
            WatermarkTracker::<u32>::new(WatermarkConfig {
                out_of_orderness: Duration::ZERO,
                idle_timeout: Some(Duration::ZERO)
            })
            .is_err()
        );
    }
}
