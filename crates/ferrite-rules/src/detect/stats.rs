//! Statistical baselines: exponentially weighted z-score per series, and a seasonal
//! baseline with one EWMA mean/variance per slot of a period.

use std::time::Duration;

use ferrite_core::Timestamp;

use super::{Anomaly, AnomalyKind, Detector, Episode};
use crate::error::RulesError;
use crate::window::watermark::nanos;

/// Exponentially weighted mean and variance (West 1979 / Finch 2009 incremental form).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ewma {
    n: u64,
    mean: f64,
    var: f64,
}

impl Ewma {
    /// z-score of `x` against the state *before* `x`, then learn `x`.
    fn score_then_learn(&mut self, x: f64, alpha: f64) -> f64 {
        let sd = self.var.sqrt();
        // A floor keeps a perfectly constant history from turning any change into ∞ while
        // still flagging a real step (relative to the level).
        let floor = 1e-9_f64.max(1e-6 * self.mean.abs());
        let z = if self.n == 0 {
            0.0
        } else {
            (x - self.mean) / sd.max(floor)
        };
        if self.n == 0 {
            self.mean = x;
        } else {
            let diff = x - self.mean;
            let incr = alpha * diff;
            self.mean += incr;
            self.var = (1.0 - alpha) * (self.var + diff * incr);
        }
        self.n += 1;
        z
    }
}

fn check_alpha_threshold(alpha: f64, threshold: f64) -> Result<(), RulesError> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(RulesError::config(
            "smoothing factor",
            format!("{alpha} is not in (0, 1)"),
        ));
    }
    if !(threshold > 0.0 && threshold.is_finite()) {
        return Err(RulesError::config(
            "threshold",
            format!("{threshold} must be positive"),
        ));
    }
    Ok(())
}

/// Flags samples more than `threshold` standard deviations from the exponentially weighted
/// mean of the series. Learns from every sample (so a level shift is flagged, then adopted).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EwmaZScore {
    alpha: f64,
    threshold: f64,
    warmup: u64,
    state: Ewma,
    episode: Episode,
}

impl EwmaZScore {
    /// Smoothing factor `alpha` in (0, 1) (≈ 2/(N+1) for an N-sample memory), `threshold`
    /// in standard deviations, no verdict for the first `warmup` samples.
    pub fn new(alpha: f64, threshold: f64, warmup: u64) -> Result<Self, RulesError> {
        check_alpha_threshold(alpha, threshold)?;
        Ok(Self {
            alpha,
            threshold,
            warmup: warmup.max(2),
            state: Ewma::default(),
            episode: Episode::default(),
        })
    }

    /// Score `x` (signed z against the baseline so far) and learn it; `None` while warming up.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        let warm = self.state.n >= self.warmup;
        let z = self.state.score_then_learn(x, self.alpha);
        warm.then_some(z)
    }
}

impl Detector for EwmaZScore {
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly> {
        let expected = self.state.mean;
        let z = self.update(value)?;
        let threshold = self.threshold;
        self.episode.report(z.abs() > threshold, |onset| Anomaly {
            kind: AnomalyKind::ZScore,
            time,
            value,
            score: z.abs() / threshold,
            expected: Some(expected),
            onset,
        })
    }
}

/// A baseline per slot of a period (e.g. 24 one-hour slots of a day): flags samples more
/// than `threshold` standard deviations from their slot's exponentially weighted mean.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SeasonalBaseline {
    period: i64,
    slots: Vec<Ewma>,
    alpha: f64,
    threshold: f64,
    min_samples: u64,
    episode: Episode,
}

impl SeasonalBaseline {
    /// `slots` equal slots over `period` (aligned to the Unix epoch, UTC), smoothing
    /// `alpha`, `threshold` in standard deviations, no verdict in a slot before it has seen
    /// `min_samples`.
    pub fn new(
        period: Duration,
        slots: usize,
        alpha: f64,
        threshold: f64,
        min_samples: u64,
    ) -> Result<Self, RulesError> {
        check_alpha_threshold(alpha, threshold)?;
        let period = nanos("seasonal period", period)?;
        if period <= 0 || slots == 0 || slots > 100_000 || period < slots as i64 {
            return Err(RulesError::config(
                "seasonal baseline",
                "needs a positive period and 1..=100000 slots no shorter than 1 ns",
            ));
        }
        Ok(Self {
            period,
            slots: vec![Ewma::default(); slots],
            alpha,
            threshold,
            min_samples: min_samples.max(2),
            episode: Episode::default(),
        })
    }

    fn slot(&self, time: Timestamp) -> usize {
        let phase = time.as_nanos().rem_euclid(self.period) as i128;
        ((phase * self.slots.len() as i128) / self.period as i128) as usize
    }

    /// Score `x` against its slot's baseline and learn it; `None` while the slot warms up.
    /// Returns the slot's mean before learning too.
    pub fn update(&mut self, time: Timestamp, x: f64) -> Option<(f64, f64)> {
        if !x.is_finite() {
            return None;
        }
        let i = self.slot(time);
        let (alpha, min) = (self.alpha, self.min_samples);
        let slot = self.slots.get_mut(i)?;
        let warm = slot.n >= min;
        let mean = slot.mean;
        let z = slot.score_then_learn(x, alpha);
        warm.then_some((z, mean))
    }
}

impl Detector for SeasonalBaseline {
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly> {
        let (z, mean) = self.update(time, value)?;
        let threshold = self.threshold;
        self.episode.report(z.abs() > threshold, |onset| Anomaly {
            kind: AnomalyKind::Seasonal,
            time,
            value,
            score: z.abs() / threshold,
            expected: Some(mean),
            onset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::{SEC, noise, sine};

    fn t(i: usize) -> Timestamp {
        Timestamp::from_nanos(i as i64 * SEC)
    }

    #[test]
    fn zscore_flags_injected_spikes_and_nothing_on_clean_data() {
        let clean = noise(1, 5_000, 20.0, 0.5);
        let mut d = EwmaZScore::new(0.02, 5.0, 100).expect("valid");
        let alarms = clean
            .iter()
            .enumerate()
            .filter(|(i, x)| d.observe(t(*i), **x).is_some())
            .count();
        assert_eq!(alarms, 0, "false alarms on clean data");

        let mut series = noise(2, 5_000, 20.0, 0.5);
        let spikes = [700usize, 1_900, 3_100, 4_400];
        for (k, i) in spikes.iter().enumerate() {
            series[*i] += if k % 2 == 0 { 6.0 } else { -6.0 }; // 12 σ
        }
        let mut d = EwmaZScore::new(0.02, 5.0, 100).expect("valid");
        let found: Vec<usize> = series
            .iter()
            .enumerate()
            .filter_map(|(i, x)| d.observe(t(i), *x).map(|a| (i, a)))
            .map(|(i, a)| {
                assert!(a.onset && a.score > 1.0 && a.kind == AnomalyKind::ZScore);
                assert!((a.expected.unwrap_or(0.0) - 20.0).abs() < 0.5);
                i
            })
            .collect();
        assert_eq!(found, spikes);
    }

    #[test]
    fn zscore_warms_up_and_validates() {
        let mut d = EwmaZScore::new(0.1, 3.0, 10).expect("valid");
        for i in 0..10 {
            assert_eq!(d.update(if i == 5 { 1e6 } else { 1.0 }), None);
        }
        assert!(EwmaZScore::new(0.0, 3.0, 10).is_err());
        assert!(EwmaZScore::new(0.5, -1.0, 10).is_err());
    }

    /// A daily cycle (here 240 samples per "day", 24 slots): a value normal at noon but
    /// impossible at midnight is flagged by the seasonal baseline, which a plain z-score on
    /// the whole series misses (the cycle's amplitude dwarfs it).
    #[test]
    fn seasonal_baseline_flags_out_of_season_values() {
        let day = 240usize;
        let period = Duration::from_secs(day as u64);
        let make = || SeasonalBaseline::new(period, 24, 0.1, 6.0, 5).expect("valid");
        let clean = sine(3, day * 30, 50.0, 20.0, day, 0.3);
        let mut d = make();
        let alarms = clean
            .iter()
            .enumerate()
            .filter(|(i, x)| d.observe(t(*i), **x).is_some())
            .count();
        assert_eq!(alarms, 0, "false alarms on clean data");

        let mut series = sine(4, day * 30, 50.0, 20.0, day, 0.3);
        // Day 20, at the trough (phase 3/4): inject the daily mean level, 50 ≈ 20 below the
        // trough's usual 30 but well inside the series' overall range.
        let i = day * 20 + day * 3 / 4;
        series[i] = 50.0;
        let mut d = make();
        let found: Vec<usize> = series
            .iter()
            .enumerate()
            .filter_map(|(k, x)| d.observe(t(k), *x).map(|_| k))
            .collect();
        assert_eq!(found, vec![i]);
        let mut z = EwmaZScore::new(0.02, 6.0, 100).expect("valid");
        assert!(
            series
                .iter()
                .enumerate()
                .all(|(k, x)| z.observe(t(k), *x).is_none()),
            "a global z-score cannot see it"
        );
    }
}
