//! Anomaly and sensor-fault detectors: small state machines fed `(time, value)` that return
//! an [`Anomaly`] when the newest sample is anomalous.
//!
//! Statistical detectors learn a baseline and score deviations from it: [`EwmaZScore`]
//! (per series), [`SeasonalBaseline`] (per slot of a period, e.g. hour of day) and
//! [`HalfSpaceTrees`] (multivariate, per device; Tan, Ting & Liu 2011). Sensor-fault
//! detectors check physical plausibility: [`StuckAt`], [`FlatLine`], [`OutOfRange`],
//! [`Gap`] (missing data) and [`RateOfChange`].
//!
//! Every detector reports on each anomalous sample while the condition holds; `onset` marks
//! the first sample of an episode, so an alerting layer can notify once per episode.
//! Detectors are sans-IO and deterministic (the tree detector takes a seed).

mod fault;
mod hst;
mod stats;

use ferrite_core::Timestamp;

pub use fault::{FlatLine, Gap, OutOfRange, RateOfChange, StuckAt};
pub use hst::{HalfSpaceTrees, HstConfig};
pub use stats::{EwmaZScore, SeasonalBaseline};

/// Which detector fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnomalyKind {
    /// [`EwmaZScore`].
    ZScore,
    /// [`SeasonalBaseline`].
    Seasonal,
    /// [`HalfSpaceTrees`].
    Multivariate,
    /// [`StuckAt`].
    StuckAt,
    /// [`FlatLine`].
    FlatLine,
    /// [`OutOfRange`].
    OutOfRange,
    /// [`Gap`].
    Gap,
    /// [`RateOfChange`].
    RateOfChange,
}

impl AnomalyKind {
    /// A stable lower-case name (`"zscore"`, `"stuck_at"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::ZScore => "zscore",
            AnomalyKind::Seasonal => "seasonal",
            AnomalyKind::Multivariate => "multivariate",
            AnomalyKind::StuckAt => "stuck_at",
            AnomalyKind::FlatLine => "flat_line",
            AnomalyKind::OutOfRange => "out_of_range",
            AnomalyKind::Gap => "gap",
            AnomalyKind::RateOfChange => "rate_of_change",
        }
    }
}

/// One anomalous sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// Which detector.
    pub kind: AnomalyKind,
    /// Event time of the sample.
    pub time: Timestamp,
    /// The sample (the first coordinate for multivariate input; for [`Gap`] the gap in
    /// seconds).
    pub value: f64,
    /// How anomalous, ≥ 1 at the detector's threshold for threshold-based detectors
    /// (z-scores are reported as |z|; ratios to the limit otherwise).
    pub score: f64,
    /// What the detector expected instead, where it has a notion of it (the baseline
    /// mean, the violated bound, the previous value).
    pub expected: Option<f64>,
    /// First anomalous sample of this episode.
    pub onset: bool,
}

/// A univariate detector.
pub trait Detector {
    /// Feed one sample; `Some` if it is anomalous.
    fn observe(&mut self, time: Timestamp, value: f64) -> Option<Anomaly>;
}

/// Tracks episode onsets: `onset` is true when the previous sample was normal.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Episode(bool);

impl Episode {
    pub(crate) fn report(
        &mut self,
        anomalous: bool,
        build: impl FnOnce(bool) -> Anomaly,
    ) -> Option<Anomaly> {
        let onset = anomalous && !self.0;
        self.0 = anomalous;
        anomalous.then(|| build(onset))
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Deterministic generated series shared by the detector tests.
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// One second in ns.
    pub(crate) const SEC: i64 = 1_000_000_000;

    /// Standard normal by Box–Muller (keeps `rand_distr` out of the dependencies).
    pub(crate) fn std_normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` samples: a sine of `amp` and `period` samples around `level`, plus Gaussian noise
    /// of standard deviation `sd`.
    pub(crate) fn sine(
        seed: u64,
        n: usize,
        level: f64,
        amp: f64,
        period: usize,
        sd: f64,
    ) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let phase = i as f64 / period as f64 * std::f64::consts::TAU;
                level + amp * phase.sin() + sd * std_normal(&mut rng)
            })
            .collect()
    }

    /// Gaussian noise around `level`.
    pub(crate) fn noise(seed: u64, n: usize, level: f64, sd: f64) -> Vec<f64> {
        sine(seed, n, level, 0.0, 1, sd)
    }
}
