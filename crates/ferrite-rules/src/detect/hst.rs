//! Streaming Half-Space Trees (Tan, Ting & Liu, "Fast Anomaly Detection for Streaming
//! Data", IJCAI 2011): a multivariate detector for one device's feature vector.
//!
//! Each tree splits a randomly perturbed work space in half along a random dimension at
//! every level. Nodes count how many points of the *reference* window (the previous
//! `window` points) fell into them; a point's score is the sum over trees of
//! `mass × 2^depth` at the deepest node on its path whose reference mass is still at least
//! `size_limit` — a density estimate. The *latest* window's counts build up alongside and
//! replace the reference when the window is full, so the model follows drift.
//!
//! Half-space trees need features in [0, 1]: the first window is buffered to learn each
//! dimension's range (or ranges are given), then the trees are built and fed that window.
//! Low density is anomalous; rather than a fixed cut on the raw score (whose scale depends
//! on depth, window and the data), each score's log is compared to an exponentially
//! weighted mean and deviation of recent log-scores: an anomaly is a log-density more than
//! `threshold` deviations *below* normal.

use ferrite_core::Timestamp;

use super::{Anomaly, AnomalyKind, Episode};
use crate::agg::reservoir::SplitMix64;
use crate::error::RulesError;

/// Half-space tree settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HstConfig {
    /// Number of trees (the paper uses 25; 40 halves the score noise at little cost).
    pub trees: usize,
    /// Depth of each tree (the paper uses 15; 10 is plenty for a handful of features).
    pub depth: usize,
    /// Points per reference window (the paper uses 250; 1000 describes the normal
    /// region's edges well enough that they are not mistaken for anomalies).
    pub window: usize,
    /// How many deviations below the typical log-density flags a point. Log-densities are
    /// heavy-tailed on the low side (the edges of the normal region), hence a high default:
    /// on the generated test data normal points reach about 12, injected anomalies 19+.
    pub threshold: f64,
    /// Feature ranges `(min, max)` per dimension; `None`: learned from the first window.
    pub ranges: Option<Vec<(f64, f64)>>,
    /// Seed of the random tree structure.
    pub seed: u64,
}

impl Default for HstConfig {
    fn default() -> Self {
        Self {
            trees: 40,
            depth: 10,
            window: 1000,
            threshold: 14.0,
            ranges: None,
            seed: 0x4853_5453,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Tree {
    /// Split dimension and value per internal node, complete binary tree layout
    /// (children of `i` at `2i + 1`, `2i + 2`).
    split: Vec<(u32, f64)>,
    /// Reference-window mass per node (all nodes, leaves included).
    r: Vec<u32>,
    /// Latest-window mass per node.
    l: Vec<u32>,
}

/// Streaming half-space trees over `dims`-dimensional points.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HalfSpaceTrees {
    dims: usize,
    config: HstConfig,
    /// `(min, 1/(max − min))` per dimension once known.
    scale: Vec<(f64, f64)>,
    trees: Vec<Tree>,
    /// Points of the first window, before the trees exist.
    warmup: Vec<Vec<f64>>,
    /// Points in the latest window so far.
    filled: usize,
    /// Whether a reference window exists (scores are meaningful).
    has_reference: bool,
    size_limit: u32,
    /// EWMA of log-scores: (n, mean, variance).
    log_stats: (u64, f64, f64),
    episode: Episode,
}

impl HalfSpaceTrees {
    /// A detector for `dims` features.
    pub fn new(dims: usize, config: HstConfig) -> Result<Self, RulesError> {
        if dims == 0 || dims > 64 {
            return Err(RulesError::config(
                "half-space trees",
                "needs 1..=64 features",
            ));
        }
        if config.trees == 0 || config.trees > 200 || !(1..=20).contains(&config.depth) {
            return Err(RulesError::config(
                "half-space trees",
                "needs 1..=200 trees of depth 1..=20",
            ));
        }
        if config.window < 10 || config.threshold.is_nan() || config.threshold <= 0.0 {
            return Err(RulesError::config(
                "half-space trees",
                "needs a window of at least 10 points and a positive threshold",
            ));
        }
        if let Some(r) = &config.ranges
            && (r.len() != dims
                || r.iter()
                    .any(|(lo, hi)| lo.partial_cmp(hi) != Some(std::cmp::Ordering::Less)))
        {
            return Err(RulesError::config(
                "half-space trees",
                "needs one range min < max per feature",
            ));
        }
        let mut hst = Self {
            dims,
            scale: Vec::new(),
            trees: Vec::new(),
            warmup: Vec::new(),
            filled: 0,
            has_reference: false,
            size_limit: ((config.window as f64 * 0.1) as u32).max(1),
            log_stats: (0, 0.0, 0.0),
            episode: Episode::default(),
            config,
        };
        if let Some(ranges) = hst.config.ranges.clone() {
            hst.build(&ranges);
        }
        Ok(hst)
    }

    fn build(&mut self, ranges: &[(f64, f64)]) {
        self.scale = ranges
            .iter()
            .map(|(lo, hi)| {
                let w = hi - lo;
                (*lo, if w > 0.0 { 1.0 / w } else { 1.0 })
            })
            .collect();
        let mut rng = SplitMix64::new(self.config.seed);
        let internal = (1usize << self.config.depth) - 1;
        let nodes = (1usize << (self.config.depth + 1)) - 1;
        self.trees = (0..self.config.trees)
            .map(|_| {
                // Work space: around a random point s in [0,1]^d, half-width 2·max(s, 1−s),
                // so [0,1] is always covered and split positions vary between trees.
                let mut lo = vec![0.0; self.dims];
                let mut hi = vec![0.0; self.dims];
                for q in 0..self.dims {
                    let s = rng.unit();
                    let w = 2.0 * s.max(1.0 - s);
                    lo[q] = s - w;
                    hi[q] = s + w;
                }
                let mut split = vec![(0u32, 0.0); internal];
                // Iterative pre-order build carrying each node's box.
                let mut stack = vec![(0usize, lo, hi)];
                while let Some((i, lo, hi)) = stack.pop() {
                    if i >= internal {
                        continue;
                    }
                    let q = rng.below(self.dims as u64) as usize;
                    let mid = (lo[q] + hi[q]) / 2.0;
                    split[i] = (q as u32, mid);
                    let (mut l_hi, mut r_lo) = (hi.clone(), lo.clone());
                    l_hi[q] = mid;
                    r_lo[q] = mid;
                    stack.push((2 * i + 1, lo, l_hi));
                    stack.push((2 * i + 2, r_lo, hi));
                }
                Tree {
                    split,
                    r: vec![0; nodes],
                    l: vec![0; nodes],
                }
            })
            .collect();
        let buffered = std::mem::take(&mut self.warmup);
        for x in buffered {
            self.learn(&x);
        }
    }

    fn normalize(&self, x: &[f64], out: &mut [f64]) {
        for ((o, v), (lo, inv)) in out.iter_mut().zip(x).zip(&self.scale) {
            *o = (v - lo) * inv;
        }
    }

    /// Count `x` (raw) into the latest window; swap windows when it is full.
    fn learn(&mut self, x: &[f64]) {
        let mut z = vec![0.0; self.dims];
        self.normalize(x, &mut z);
        let internal = self.trees.first().map_or(0, |t| t.split.len());
        for tree in &mut self.trees {
            let mut i = 0;
            loop {
                tree.l[i] += 1;
                if i >= internal {
                    break;
                }
                let (q, v) = tree.split[i];
                i = if z[q as usize] < v {
                    2 * i + 1
                } else {
                    2 * i + 2
                };
            }
        }
        self.filled += 1;
        if self.filled >= self.config.window {
            for tree in &mut self.trees {
                std::mem::swap(&mut tree.r, &mut tree.l);
                tree.l.iter_mut().for_each(|m| *m = 0);
            }
            self.filled = 0;
            self.has_reference = true;
        }
    }

    /// The mass score of `x` against the reference window (higher = denser = more normal).
    fn mass(&self, x: &[f64]) -> f64 {
        let mut z = vec![0.0; self.dims];
        self.normalize(x, &mut z);
        let internal = self.trees.first().map_or(0, |t| t.split.len());
        let mut total = 0.0;
        for tree in &self.trees {
            let (mut i, mut depth) = (0usize, 0i32);
            loop {
                let leaf = i >= internal;
                if leaf || tree.r[i] < self.size_limit {
                    total += f64::from(tree.r[i]) * 2f64.powi(depth);
                    break;
                }
                let (q, v) = tree.split[i];
                i = if z[q as usize] < v {
                    2 * i + 1
                } else {
                    2 * i + 2
                };
                depth += 1;
            }
        }
        total
    }

    /// Score `x` and learn it. Returns how many deviations the point's log-density lies
    /// *below* the recent typical one (positive = sparser than usual), or `None` while the
    /// first windows are still being collected or `x` has the wrong length / a non-finite
    /// coordinate.
    pub fn update(&mut self, x: &[f64]) -> Option<f64> {
        if x.len() != self.dims || x.iter().any(|v| !v.is_finite()) {
            return None;
        }
        if self.trees.is_empty() {
            self.warmup.push(x.to_vec());
            if self.warmup.len() >= self.config.window {
                let ranges: Vec<(f64, f64)> = (0..self.dims)
                    .map(|q| {
                        let (lo, hi) = self
                            .warmup
                            .iter()
                            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[q]), b.max(p[q])));
                        (lo, hi)
                    })
                    .collect();
                self.build(&ranges);
            }
            return None;
        }
        let score = self.has_reference.then(|| self.mass(x));
        self.learn(x);
        let ls = (score? + 1.0).ln();
        // EWMA of log-scores over roughly a window of points.
        let alpha = 2.0 / (self.config.window as f64 + 1.0);
        let (n, mean, var) = self.log_stats;
        let sd = var.sqrt().max(1e-3);
        let z = (mean - ls) / sd;
        // Points flagged as anomalous do not move the baseline (an attack of anomalies
        // would otherwise teach it that sparse is normal).
        let warm = n >= self.config.window as u64 / 2;
        if !warm || z <= self.config.threshold {
            self.log_stats = if n == 0 {
                (1, ls, 0.0)
            } else {
                let diff = ls - mean;
                let incr = alpha * diff;
                (n + 1, mean + incr, (1.0 - alpha) * (var + diff * incr))
            };
        }
        warm.then_some(z)
    }

    /// Feed one point; `Some` if it is anomalous.
    pub fn observe(&mut self, time: Timestamp, x: &[f64]) -> Option<Anomaly> {
        let z = self.update(x)?;
        let threshold = self.config.threshold;
        let value = x.first().copied().unwrap_or(f64::NAN);
        self.episode.report(z > threshold, |onset| Anomaly {
            kind: AnomalyKind::Multivariate,
            time,
            value,
            score: z / threshold,
            expected: None,
            onset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testdata::{SEC, std_normal};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Correlated 3-feature readings (temperature, current, vibration of a motor): each
    /// coordinate alone stays within its usual range in the injected anomalies, only the
    /// combination is wrong.
    fn reading(rng: &mut StdRng, load: f64) -> [f64; 3] {
        let temp = 40.0 + 20.0 * load + std_normal(rng) * 0.8;
        let current = 2.0 + 8.0 * load + std_normal(rng) * 0.3;
        let vib = 0.5 + 1.5 * load + std_normal(rng) * 0.05;
        [temp, current, vib]
    }

    #[test]
    fn flags_broken_correlations_without_false_alarms() {
        let mut rng = StdRng::seed_from_u64(21);
        let mut hst = HalfSpaceTrees::new(3, HstConfig::default()).expect("valid");
        let mut anomalies = Vec::new();
        let inject = [3_000usize, 4_500, 6_000, 7_777];
        for i in 0..9_000usize {
            // The machine's operating point varies sample to sample over its whole range.
            let load = 0.1 + 0.8 * rng.random::<f64>();
            let mut x = reading(&mut rng, load);
            if inject.contains(&i) {
                // Hot and vibrating hard at low current: each value seen before, never together.
                x = [59.0, 2.5, 1.9];
            }
            if let Some(a) = hst.observe(Timestamp::from_nanos(i as i64 * SEC), &x) {
                anomalies.push((i, a.score));
            }
        }
        let at: Vec<usize> = anomalies.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, inject, "{anomalies:?}");
    }

    #[test]
    fn validates_and_rejects_bad_points() {
        assert!(HalfSpaceTrees::new(0, HstConfig::default()).is_err());
        let bad = HstConfig {
            ranges: Some(vec![(1.0, 0.0)]),
            ..HstConfig::default()
        };
        assert!(HalfSpaceTrees::new(1, bad).is_err());
        let mut hst = HalfSpaceTrees::new(2, HstConfig::default()).expect("valid");
        assert_eq!(hst.update(&[1.0]), None);
        assert_eq!(hst.update(&[1.0, f64::NAN]), None);
    }
}
