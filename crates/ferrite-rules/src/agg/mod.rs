//! Mergeable aggregates: the [`Accumulator`] trait, what to compute ([`AggSpec`]) and the
//! closed set of implementations ([`AnyAccumulator`]).
//!
//! Every accumulator is *mergeable*: `a.merge(&b)` leaves `a` as if it had seen both inputs.
//! That is what lets a hopping window be assembled from pane partials, a session window
//! absorb another one, and (later) partial aggregates cross nodes. The exact aggregates are
//! in [`basic`], the sketches in [`sketch`], [`heavy`] and [`reservoir`]; duplicate
//! suppression by message id is [`dedup`].
//!
//! Inputs are [`Datum`]s. Every aggregate ignores `NULL`; numeric aggregates also ignore
//! non-numeric values (a dynamic payload may carry a string where a number was expected;
//! SQL semantics make that a missing value, not an error).

pub mod basic;
pub mod dedup;
pub mod heavy;
pub mod reservoir;
pub mod sketch;

use ferrite_core::Timestamp;

use crate::datum::Datum;
use crate::error::RulesError;

pub use basic::{Count, Extreme, FirstLast, Moments, Sum};
pub use dedup::{DedupPolicy, DedupSet, MessageId, Seen};
pub use heavy::HeavyHitters;
pub use reservoir::Reservoir;
pub use sketch::{Distinct, Quantile};

/// A mergeable aggregate state.
pub trait Accumulator {
    /// Add one input observed at event time `time`.
    fn update(&mut self, time: Timestamp, value: &Datum);
    /// Absorb `other`'s inputs. Both must come from the same [`AggSpec`]; merging
    /// differently configured sketches leaves `self` unchanged.
    fn merge(&mut self, other: &Self);
    /// The aggregate's current result. Does not consume the state, so a window can fire
    /// again (allowed lateness) with an updated result.
    fn finish(&self) -> Datum;
}

/// Default HyperLogLog precision: 2^14 registers, standard error 1.04/√16384 ≈ 0.81 %.
pub const DEFAULT_HLL_PRECISION: u8 = 14;
/// Default DDSketch relative accuracy: quantiles within ±1 % of the true value.
pub const DEFAULT_QUANTILE_ACCURACY: f64 = 0.01;

/// What an aggregate computes, with its accuracy parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum AggSpec {
    /// Number of non-null inputs (`COUNT(*)` feeds a non-null constant).
    Count,
    /// Sum; an integer while every input is an integer and it does not overflow.
    Sum,
    /// Smallest input by [`Datum::total_cmp`].
    Min,
    /// Largest input by [`Datum::total_cmp`].
    Max,
    /// Arithmetic mean.
    Mean,
    /// Sample standard deviation (n − 1), `NULL` below two inputs.
    StddevSamp,
    /// Population standard deviation (n).
    StddevPop,
    /// The input with the smallest event time (the first arrival on ties).
    First,
    /// The input with the largest event time (the last arrival on ties).
    Last,
    /// Approximate distinct count (HyperLogLog++ with `2^precision` registers).
    Distinct {
        /// 4..=18; standard error ≈ 1.04/√(2^precision).
        precision: u8,
    },
    /// Approximate quantile (DDSketch): the answer is within `relative_accuracy` × the true
    /// value of the rank-`⌊q(n−1)⌋` input.
    Quantile {
        /// The quantile, 0..=1.
        q: f64,
        /// Relative accuracy α, in (0, 1).
        relative_accuracy: f64,
    },
    /// The `k` most frequent values with Count-Min estimates: each estimate overshoots the
    /// true count by at most `epsilon` × N with probability at least 1 − `delta`.
    HeavyHitters {
        /// How many values to report.
        k: usize,
        /// Additive error as a fraction of the window's input count.
        epsilon: f64,
        /// Failure probability of the bound, per value.
        delta: f64,
    },
    /// A uniform random sample without replacement of `size` inputs.
    Sample {
        /// Sample size.
        size: usize,
        /// Seed of the sampler's generator (results are reproducible).
        seed: u64,
    },
}

impl AggSpec {
    /// Check the parameters.
    pub fn validate(&self) -> Result<(), RulesError> {
        match *self {
            AggSpec::Distinct { precision } if !(4..=18).contains(&precision) => {
                Err(RulesError::config(
                    "distinct precision",
                    format!("{precision} is not in 4..=18"),
                ))
            }
            AggSpec::Quantile {
                q,
                relative_accuracy,
            } => {
                if !(0.0..=1.0).contains(&q) {
                    return Err(RulesError::config(
                        "quantile",
                        format!("{q} is not in [0, 1]"),
                    ));
                }
                if !(relative_accuracy > 0.0 && relative_accuracy < 1.0) {
                    return Err(RulesError::config(
                        "quantile accuracy",
                        format!("{relative_accuracy} is not in (0, 1)"),
                    ));
                }
                Ok(())
            }
            AggSpec::HeavyHitters { k, epsilon, delta } => {
                if k == 0 || k > 10_000 {
                    return Err(RulesError::config(
                        "heavy hitters k",
                        format!("{k} is not in 1..=10000"),
                    ));
                }
                if !((1e-6..1.0).contains(&epsilon) && delta > 0.0 && delta < 1.0) {
                    return Err(RulesError::config(
                        "heavy hitters accuracy",
                        format!(
                            "epsilon {epsilon} must be in [1e-6, 1) and delta {delta} in (0, 1)"
                        ),
                    ));
                }
                Ok(())
            }
            AggSpec::Sample { size, .. } if size == 0 || size > 100_000 => Err(RulesError::config(
                "sample size",
                format!("{size} is not in 1..=100000"),
            )),
            _ => Ok(()),
        }
    }

    /// A fresh, empty accumulator for this aggregate. Call [`AggSpec::validate`] first; an
    /// invalid parameter is clamped into range here rather than panicking.
    pub fn accumulator(&self) -> AnyAccumulator {
        match *self {
            AggSpec::Count => AnyAccumulator::Count(Count::default()),
            AggSpec::Sum => AnyAccumulator::Sum(Sum::default()),
            AggSpec::Min => AnyAccumulator::Extreme(Extreme::min()),
            AggSpec::Max => AnyAccumulator::Extreme(Extreme::max()),
            AggSpec::Mean => AnyAccumulator::Moments(Moments::mean()),
            AggSpec::StddevSamp => AnyAccumulator::Moments(Moments::stddev_samp()),
            AggSpec::StddevPop => AnyAccumulator::Moments(Moments::stddev_pop()),
            AggSpec::First => AnyAccumulator::FirstLast(FirstLast::first()),
            AggSpec::Last => AnyAccumulator::FirstLast(FirstLast::last()),
            AggSpec::Distinct { precision } => {
                AnyAccumulator::Distinct(Box::new(Distinct::new(precision)))
            }
            AggSpec::Quantile {
                q,
                relative_accuracy,
            } => AnyAccumulator::Quantile(Box::new(Quantile::new(q, relative_accuracy))),
            AggSpec::HeavyHitters { k, epsilon, delta } => {
                AnyAccumulator::HeavyHitters(Box::new(HeavyHitters::new(k, epsilon, delta)))
            }
            AggSpec::Sample { size, seed } => {
                AnyAccumulator::Sample(Box::new(Reservoir::new(size, seed)))
            }
        }
    }
}

/// One accumulator of any kind; dispatch by `match` keeps the per-event path free of
/// virtual calls and the small exact states inline.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum AnyAccumulator {
    /// [`AggSpec::Count`].
    Count(Count),
    /// [`AggSpec::Sum`].
    Sum(Sum),
    /// [`AggSpec::Min`] and [`AggSpec::Max`].
    Extreme(Extreme),
    /// [`AggSpec::Mean`], [`AggSpec::StddevSamp`], [`AggSpec::StddevPop`].
    Moments(Moments),
    /// [`AggSpec::First`] and [`AggSpec::Last`].
    FirstLast(FirstLast),
    /// [`AggSpec::Distinct`].
    Distinct(Box<Distinct>),
    /// [`AggSpec::Quantile`].
    Quantile(Box<Quantile>),
    /// [`AggSpec::HeavyHitters`].
    HeavyHitters(Box<HeavyHitters>),
    /// [`AggSpec::Sample`].
    Sample(Box<Reservoir>),
}

impl Accumulator for AnyAccumulator {
    #[inline]
    fn update(&mut self, time: Timestamp, value: &Datum) {
        match self {
            AnyAccumulator::Count(a) => a.update(time, value),
            AnyAccumulator::Sum(a) => a.update(time, value),
            AnyAccumulator::Extreme(a) => a.update(time, value),
            AnyAccumulator::Moments(a) => a.update(time, value),
            AnyAccumulator::FirstLast(a) => a.update(time, value),
            AnyAccumulator::Distinct(a) => a.update(time, value),
            AnyAccumulator::Quantile(a) => a.update(time, value),
            AnyAccumulator::HeavyHitters(a) => a.update(time, value),
            AnyAccumulator::Sample(a) => a.update(time, value),
        }
    }

    fn merge(&mut self, other: &Self) {
        match (self, other) {
            (AnyAccumulator::Count(a), AnyAccumulator::Count(b)) => a.merge(b),
            (AnyAccumulator::Sum(a), AnyAccumulator::Sum(b)) => a.merge(b),
            (AnyAccumulator::Extreme(a), AnyAccumulator::Extreme(b)) => a.merge(b),
            (AnyAccumulator::Moments(a), AnyAccumulator::Moments(b)) => a.merge(b),
            (AnyAccumulator::FirstLast(a), AnyAccumulator::FirstLast(b)) => a.merge(b),
            (AnyAccumulator::Distinct(a), AnyAccumulator::Distinct(b)) => a.merge(b),
            (AnyAccumulator::Quantile(a), AnyAccumulator::Quantile(b)) => a.merge(b),
            (AnyAccumulator::HeavyHitters(a), AnyAccumulator::HeavyHitters(b)) => a.merge(b),
            (AnyAccumulator::Sample(a), AnyAccumulator::Sample(b)) => a.merge(b),
            // Different kinds never come from the same AggSpec; nothing sensible to do.
            _ => {}
        }
    }

    fn finish(&self) -> Datum {
        match self {
            AnyAccumulator::Count(a) => a.finish(),
            AnyAccumulator::Sum(a) => a.finish(),
            AnyAccumulator::Extreme(a) => a.finish(),
            AnyAccumulator::Moments(a) => a.finish(),
            AnyAccumulator::FirstLast(a) => a.finish(),
            AnyAccumulator::Distinct(a) => a.finish(),
            AnyAccumulator::Quantile(a) => a.finish(),
            AnyAccumulator::HeavyHitters(a) => a.finish(),
            AnyAccumulator::Sample(a) => a.finish(),
        }
    }
}

/// The fixed hash used by the sketches and message ids: stable within a process and across
/// runs (a fixed seed), so partial states built anywhere merge.
pub(crate) fn stable_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed_f3e7_a11c_e5ed).hash_one(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ns: i64) -> Timestamp {
        Timestamp::from_nanos(ns)
    }

    #[test]
    fn specs_validate_their_parameters() {
        assert!(AggSpec::Distinct { precision: 3 }.validate().is_err());
        assert!(AggSpec::Distinct { precision: 14 }.validate().is_ok());
        assert!(
            AggSpec::Quantile {
                q: 1.5,
                relative_accuracy: 0.01
            }
            .validate()
            .is_err()
        );
        assert!(
            AggSpec::Quantile {
                q: 0.5,
                relative_accuracy: 0.0
            }
            .validate()
            .is_err()
        );
        assert!(
            AggSpec::HeavyHitters {
                k: 0,
                epsilon: 0.01,
                delta: 0.01
            }
            .validate()
            .is_err()
        );
        assert!(AggSpec::Sample { size: 0, seed: 1 }.validate().is_err());
    }

    /// Splitting any input anywhere and merging gives the same exact aggregates as one pass.
    #[test]
    fn exact_aggregates_merge_like_one_pass() {
        let specs = [
            AggSpec::Count,
            AggSpec::Sum,
            AggSpec::Min,
            AggSpec::Max,
            AggSpec::Mean,
            AggSpec::StddevSamp,
            AggSpec::StddevPop,
            AggSpec::First,
            AggSpec::Last,
        ];
        let xs: Vec<(i64, Datum)> = (0..50)
            .map(|i| ((i * 7919) % 53, Datum::Float(((i * 31) % 17) as f64 - 4.5)))
            .collect();
        for spec in &specs {
            let mut whole = spec.accumulator();
            for (ts, x) in &xs {
                whole.update(t(*ts), x);
            }
            for cut in [0, 1, 17, 49, 50] {
                let mut a = spec.accumulator();
                let mut b = spec.accumulator();
                for (ts, x) in &xs[..cut] {
                    a.update(t(*ts), x);
                }
                for (ts, x) in &xs[cut..] {
                    b.update(t(*ts), x);
                }
                a.merge(&b);
                match (whole.finish(), a.finish()) {
                    (Datum::Float(w), Datum::Float(m)) => {
                        assert!((w - m).abs() < 1e-9, "{spec:?} cut {cut}: {w} vs {m}")
                    }
                    (w, m) => assert_eq!(w, m, "{spec:?} cut {cut}"),
                }
            }
        }
    }

    #[test]
    fn mismatched_merge_is_ignored() {
        let mut a = AggSpec::Count.accumulator();
        a.update(t(0), &Datum::Int(1));
        a.merge(&AggSpec::Sum.accumulator());
        assert_eq!(a.finish(), Datum::Int(1));
    }
}
