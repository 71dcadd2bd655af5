//! Sensor-fault detectors: stuck-at, flat-line, out-of-range, gap (missing data) and
//! rate-of-change. Each checks a physical plausibility rule, needs no training and keeps O(1)
//! state.

use std::time::Duration;

use ferrite_core::Timestamp;

use super::{Anomaly, AnomalyKind, Detector, Episode};
use crate::error::RulesError;
use crate::window::watermark::nanos;

/// Flags a sensor repeating the bit-identical value for `n` or more consecutive samples
/// (a frozen ADC, a firmware reporting its last good reading).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StuckAt {
    n: u64,
    last: Option<u64>,
    run: u64,
    episode: Episode,
}

impl StuckAt {
    /// Flag from the `n`-th identical sample on (`n ≥ 2`).
    pub fn new(n: u64) -> Result<Self, RulesError> {
        if n < 2 {
            return Err(RulesError::config(
                "stuck-at run length",
                "must be at least 2",
            ));
        }
        Ok(Self {
            n,
            last: None,
            run: 0,
            episode: Episode::default(),
        })
    }
}

impl Detector for StuckAt {
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly> {
        let bits = value.to_bits();
        self.run = if self.last == Some(bits) {
            self.run + 1
        } else {
            1
        };
        self.last = Some(bits);
        let (run, n) = (self.run, self.n);
        self.episode.report(run >= n, |onset| Anomaly {
            kind: AnomalyKind::StuckAt,
            time,
            value,
            score: run as f64 / n as f64,
            expected: None,
            onset,
        })
    }
}

/// Flags a signal whose consecutive samples have stayed within a band of `tolerance`
/// (max − min) for at least `span` of event time: a dead sensor reading noise-free, as
/// opposed to [`StuckAt`]'s exact repeats. A silence longer than `span` between two samples
/// starts a new run: two similar readings either side of an outage are no evidence of a
/// flat line through it (that is the gap detector's to report).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FlatLine {
    span: i64,
    tolerance: f64,
    /// Start time, min and max of the current run of in-band samples.
    run: Option<(i64, f64, f64)>,
    /// Time of the previous sample.
    last: Option<i64>,
    episode: Episode,
}

impl FlatLine {
    /// Flag once a run within `tolerance` has lasted `span`.
    pub fn new(span: Duration, tolerance: f64) -> Result<Self, RulesError> {
        let span = nanos("flat-line span", span)?;
        if span <= 0 || !(tolerance >= 0.0 && tolerance.is_finite()) {
            return Err(RulesError::config(
                "flat-line",
                "needs a positive span and a finite tolerance ≥ 0",
            ));
        }
        Ok(Self {
            span,
            tolerance,
            run: None,
            last: None,
            episode: Episode::default(),
        })
    }
}

impl Detector for FlatLine {
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly> {
        let t = time.as_nanos();
        let silent = self
            .last
            .replace(t)
            .is_some_and(|prev| t.saturating_sub(prev) > self.span);
        let run = match self.run {
            Some((start, lo, hi)) if !silent && value.max(hi) - value.min(lo) <= self.tolerance => {
                (start, value.min(lo), value.max(hi))
            }
            // Out of band: a new run starts at this sample.
            _ => (t, value, value),
        };
        self.run = Some(run);
        let lasted = t.saturating_sub(run.0);
        let span = self.span;
        self.episode.report(lasted >= span, |onset| Anomaly {
            kind: AnomalyKind::FlatLine,
            time,
            value,
            score: lasted as f64 / span as f64,
            expected: None,
            onset,
        })
    }
}

/// Flags values outside `[min, max]` (the sensor's physical or specified range).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OutOfRange {
    min: f64,
    max: f64,
    episode: Episode,
}

impl OutOfRange {
    /// Values must satisfy `min ≤ v ≤ max`; NaN is always out of range.
    pub fn new(min: f64, max: f64) -> Result<Self, RulesError> {
        if min.is_nan() || max.is_nan() || min > max {
            return Err(RulesError::config(
                "range",
                format!("[{min}, {max}] is empty"),
            ));
        }
        Ok(Self {
            min,
            max,
            episode: Episode::default(),
        })
    }
}

impl Detector for OutOfRange {
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly> {
        let bad = !(value >= self.min && value <= self.max);
        let (min, max) = (self.min, self.max);
        let width = (max - min).max(f64::MIN_POSITIVE);
        self.episode.report(bad, |onset| {
            let (bound, excess) = if value < min {
                (min, min - value)
            } else {
                (max, value - max)
            };
            Anomaly {
                kind: AnomalyKind::OutOfRange,
                time,
                value,
                score: 1.0 + excess.max(0.0) / width,
                expected: Some(bound),
                onset,
            }
        })
    }
}

/// Flags missing data: consecutive samples more than `max_gap` apart (reported on the
/// sample after the gap), or, via [`Gap::check`], no sample for `max_gap` as of a given
/// time (a watermark or the processing time the caller passes in).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Gap {
    max_gap: i64,
    last: Option<i64>,
    /// The current silence was reported by [`Gap::silence`]; the reading that ends it is
    /// then not flagged again.
    #[serde(default)]
    reported: bool,
}

impl Gap {
    /// Flag silences longer than `max_gap`.
    pub fn new(max_gap: Duration) -> Result<Self, RulesError> {
        let max_gap = nanos("gap", max_gap)?;
        if max_gap <= 0 {
            return Err(RulesError::config("gap", "must be positive"));
        }
        Ok(Self {
            max_gap,
            last: None,
            reported: false,
        })
    }

    fn anomaly(&self, time: Timestamp, gap: i64) -> Anomaly {
        Anomaly {
            kind: AnomalyKind::Gap,
            time,
            value: gap as f64 / 1e9,
            score: gap as f64 / self.max_gap as f64,
            expected: Some(self.max_gap as f64 / 1e9),
            onset: true,
        }
    }

    /// Whether the series has been silent for more than `max_gap` as of `now`.
    pub fn check(&self, now: Timestamp) -> Option<Anomaly> {
        let gap = now.as_nanos().saturating_sub(self.last?);
        (gap > self.max_gap).then(|| self.anomaly(now, gap))
    }

    /// Like [`Gap::check`], once per silence: a series that stays silent is reported the
    /// first time `now` passes `max_gap` since its last sample, and not again until a sample
    /// has ended the silence (that sample is then not flagged a second time).
    pub fn silence(&mut self, now: Timestamp) -> Option<Anomaly> {
        if self.reported {
            return None;
        }
        let found = self.check(now);
        self.reported = found.is_some();
        found
    }
}

impl Detector for Gap {
    fn observe(&mut self, time: Timestamp, _value: f64) -> Option<Anomaly> {
        let t = time.as_nanos();
        let prev = self.last;
        // An out-of-order sample fills no gap and opens none.
        self.last = Some(prev.map_or(t, |p| p.max(t)));
        let reported = std::mem::take(&mut self.reported);
        let gap = t.saturating_sub(prev?);
        (gap > self.max_gap && !reported).then(|| self.anomaly(time, gap))
    }
}

/// Flags changes faster than `max_per_second` (in value units per second) between
/// consecutive samples: a physically impossible jump, a loose connector.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RateOfChange {
    max_per_second: f64,
    prev: Option<(i64, f64)>,
    episode: Episode,
}

impl RateOfChange {
    /// Flag |Δv / Δt| above `max_per_second`.
    pub fn new(max_per_second: f64) -> Result<Self, RulesError> {
        if !(max_per_second > 0.0 && max_per_second.is_finite()) {
            return Err(RulesError::config("rate of change", "must be positive"));
        }
        Ok(Self {
            max_per_second,
            prev: None,
            episode: Episode::default(),
        })
    }

    /// The rate against the previous sample, if there is one earlier in time.
    pub fn rate(&mut self, time: Timestamp, value: f64) -> Option<f64> {
        let t = time.as_nanos();
        match self.prev {
            Some((pt, pv)) if t > pt => {
                self.prev = Some((t, value));
                Some((value - pv) / ((t - pt) as f64 / 1e9))
            }
            Some(_) => None, // same or older timestamp: no rate, keep the newest sample
            None => {
                self.prev = Some((t, value));
                None
            }
        }
    }
}

impl Detector for RateOfChange {
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly> {
        let prev = self.prev.map(|(_, v)| v);
        let rate = self.rate(time, value)?;
        let max = self.max_per_second;
        self.episode.report(rate.abs() > max, |onset| Anomaly {
            kind: AnomalyKind::RateOfChange,
            time,
            value,
            score: rate.abs() / max,
            expected: prev,
            onset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::{SEC, noise};

    fn t(i: usize) -> Timestamp {
        Timestamp::from_nanos(i as i64 * SEC)
    }

    fn run(d: &mut impl Detector, xs: &[f64]) -> Vec<(usize, Anomaly)> {
        xs.iter()
            .enumerate()
            .filter_map(|(i, x)| d.observe(t(i), *x).map(|a| (i, a)))
            .collect()
    }

    fn onsets(found: &[(usize, Anomaly)]) -> Vec<usize> {
        found
            .iter()
            .filter(|(_, a)| a.onset)
            .map(|(i, _)| *i)
            .collect()
    }

    #[test]
    fn stuck_at_flags_repeats_from_the_nth() {
        let mut xs = noise(5, 2_000, 10.0, 0.2);
        assert!(run(&mut StuckAt::new(5).expect("valid"), &xs).is_empty());
        for x in &mut xs[800..830] {
            *x = 10.125;
        }
        let found = run(&mut StuckAt::new(5).expect("valid"), &xs);
        assert_eq!(onsets(&found), vec![804]);
        assert_eq!(
            found.len(),
            26,
            "every stuck sample from the 5th to the 30th"
        );
        assert!(StuckAt::new(1).is_err());
    }

    #[test]
    fn flat_line_flags_a_noise_free_stretch() {
        let mut xs = noise(6, 3_000, 10.0, 0.2);
        let mut d = FlatLine::new(Duration::from_secs(60), 0.01).expect("valid");
        assert!(run(&mut d, &xs).is_empty());
        // 2 minutes of a dead sensor: tiny drift, no noise.
        for (k, x) in xs[1_000..1_120].iter_mut().enumerate() {
            *x = 7.0 + k as f64 * 1e-5;
        }
        let mut d = FlatLine::new(Duration::from_secs(60), 0.01).expect("valid");
        let found = run(&mut d, &xs);
        assert_eq!(onsets(&found), vec![1_060]);
        assert_eq!(found.last().map(|(i, _)| *i), Some(1_119));
    }

    #[test]
    fn flat_line_does_not_bridge_a_silence() {
        let mut d = FlatLine::new(Duration::from_secs(180), 0.05).expect("valid");
        let at = |s: i64| Timestamp::from_nanos(s * 1_000_000_000);
        // A noisy reading, then 880 s of nothing, then a close value: no flat line.
        assert!(d.observe(at(0), 22.37).is_none());
        assert!(d.observe(at(880), 22.35).is_none());
        // Readings every 10 s within the band do make one once they span 180 s.
        let flagged: Vec<i64> = (1..=20)
            .filter(|k| d.observe(at(880 + k * 10), 22.35).is_some())
            .collect();
        assert_eq!(
            flagged.first(),
            Some(&18),
            "180 s after the run began at 880 s"
        );
    }

    #[test]
    fn out_of_range_flags_only_outside_values() {
        let mut xs = noise(7, 2_000, 20.0, 2.0);
        assert!(run(&mut OutOfRange::new(-40.0, 85.0).expect("valid"), &xs).is_empty());
        xs[300] = 120.0;
        xs[301] = 150.0;
        xs[900] = -273.0;
        xs[901] = f64::NAN;
        let found = run(&mut OutOfRange::new(-40.0, 85.0).expect("valid"), &xs);
        let at: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![300, 301, 900, 901]);
        assert_eq!(onsets(&found), vec![300, 900]);
        assert_eq!(found[0].1.expected, Some(85.0));
        assert_eq!(found[2].1.expected, Some(-40.0));
        assert!(OutOfRange::new(1.0, 0.0).is_err());
    }

    #[test]
    fn gap_flags_missing_data_on_arrival_and_on_check() {
        let mut d = Gap::new(Duration::from_secs(10)).expect("valid");
        let times: Vec<i64> = (0..100).chain(150..200).chain([195, 230]).collect();
        let found: Vec<(i64, f64)> = times
            .iter()
            .filter_map(|s| {
                d.observe(Timestamp::from_nanos(s * SEC), 1.0)
                    .map(|a| (*s, a.value))
            })
            .collect();
        assert_eq!(found, vec![(150, 51.0), (230, 31.0)]);
        assert!(d.check(Timestamp::from_nanos(240 * SEC)).is_none());
        let a = d
            .check(Timestamp::from_nanos(241 * SEC))
            .expect("silent for 11 s");
        assert!(a.score > 1.0 && a.kind == AnomalyKind::Gap);
    }

    #[test]
    fn rate_of_change_flags_jumps_not_slopes() {
        // A steep but plausible ramp (0.5/s) with noise, then a 30-unit jump.
        let mut xs: Vec<f64> = noise(8, 1_000, 0.0, 0.1)
            .iter()
            .enumerate()
            .map(|(i, n)| i as f64 * 0.5 + n)
            .collect();
        let mut d = RateOfChange::new(5.0).expect("valid");
        assert!(run(&mut d, &xs).is_empty());
        xs[600] += 30.0;
        let mut d = RateOfChange::new(5.0).expect("valid");
        let found = run(&mut d, &xs);
        let at: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![600, 601], "the jump up and the return");
        // Duplicate timestamps give no rate.
        let mut d = RateOfChange::new(1.0).expect("valid");
        assert!(d.observe(t(1), 0.0).is_none());
        assert!(d.observe(t(1), 100.0).is_none());
    }
}
