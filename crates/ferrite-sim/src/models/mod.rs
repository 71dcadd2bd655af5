//! The simulator's stream models: small, pure generators that shape what simulated devices
//! send and when. No I/O and no clock: time is always an argument (seconds, `f64`) and all
//! randomness comes from a caller-provided seeded generator, so a seed reproduces a run.
//!
//! - [`rate`] — **when** readings arrive. [`ArrivalRate`] is a periodic intensity
//!   λ(t) = λ₀ + Σᵢ αᵢ·cos(2π fᵢ t + φᵢ) + ε(t), ε ~ N(0, σ²), clamped at ≥ 0 (typically a
//!   daily and a weekly harmonic), and [`ArrivalRate::arrivals`] draws the arrival times of a
//!   non-homogeneous Poisson process with that intensity by Lewis–Shedler thinning.
//! - [`arma`] — **how one device's value moves in time**. [`Arma`] is an ARMA(p, q) process
//!   X(t) = μ + Σᵢ αᵢ (X(t−i) − μ) + Σⱼ βⱼ ε(t−j) + ε(t), ε ~ N(0, σ²), refusing AR
//!   coefficients that are not stationary.
//! - [`spatial`] — **how devices move together**. [`SpatialField`] is a zero-mean Gaussian
//!   field over 2-D device positions with covariance C(d) = σ²·exp(−d/r), sampled in
//!   O(devices × features) by random Fourier features (never a dense covariance matrix), and
//!   evolved in time by an AR(1) step of its feature weights.
//!
//! The models compose by addition: a device's reading can be a base level plus its own ARMA
//! noise plus the spatial field at its position, published at times drawn from an arrival
//! rate. Wiring them into `ferrite simulate` is not this module's job.
//!
//! Invalid parameters (a negative standard deviation, non-stationary AR coefficients, a
//! non-finite position, …) are refused at construction with a [`ModelError`]; after that the
//! generators cannot fail.

pub mod arma;
pub mod rate;
pub mod spatial;

use rand::Rng;

pub use arma::Arma;
pub use rate::{ArrivalRate, Harmonic};
pub use spatial::{FieldWeights, SpatialField};

/// Why a model could not be built: always a caller error, never retryable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A parameter is outside its domain (NaN, infinite, negative, zero where it must not be).
    #[error("invalid {name} = {value}: expected {expected}")]
    InvalidParameter {
        /// The parameter's name as in the constructor.
        name: &'static str,
        /// The refused value (counts are reported as `f64` too).
        value: f64,
        /// What the parameter must be.
        expected: &'static str,
    },
    /// The AR coefficients describe a non-stationary process: a root of the characteristic
    /// polynomial 1 − Σ αᵢ zⁱ lies on or inside the unit circle, so the variance would grow
    /// without bound.
    #[error("AR coefficients {ar:?} are not stationary")]
    NonStationary {
        /// The refused coefficients α₁…αₚ.
        ar: Vec<f64>,
    },
}

impl ferrite_core::Classify for ModelError {
    fn kind(&self) -> ferrite_core::ErrorKind {
        ferrite_core::ErrorKind::InvalidInput
    }
}

/// Refuses `value` unless it is finite and `ok(value)` holds.
fn check(
    name: &'static str,
    value: f64,
    expected: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, ModelError> {
    if value.is_finite() && ok(value) {
        Ok(value)
    } else {
        Err(ModelError::InvalidParameter {
            name,
            value,
            expected,
        })
    }
}

/// One draw from the standard normal distribution N(0, 1).
pub(crate) fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    standard_normal_pair(rng).0
}

/// Two independent draws from N(0, 1), by the Box–Muller transform (exact).
fn standard_normal_pair<R: Rng + ?Sized>(rng: &mut R) -> (f64, f64) {
    // `random::<f64>()` is in [0, 1); 1 − u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let radius = (-2.0 * u1.ln()).sqrt();
    let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
    (radius * cos, radius * sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn standard_normal_pairs_have_unit_moments_normal_tails_and_no_correlation() {
        let mut rng = StdRng::seed_from_u64(11);
        let n = 200_000;
        let xs: Vec<f64> = (0..n / 2)
            .flat_map(|_| {
                let (a, b) = standard_normal_pair(&mut rng);
                [a, b]
            })
            .collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: mean 1/√n ≈ 0.0022, variance √(2/n) ≈ 0.0032.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        // P(|Z| > 1.96) = 0.05; standard error √(0.05·0.95/n) ≈ 0.0005.
        let tail = xs.iter().filter(|x| x.abs() > 1.96).count() as f64 / n as f64;
        assert!((tail - 0.05).abs() < 0.003, "tail {tail}");
        // The two halves of a pair are independent: correlation ≈ 0 ± 1/√(n/2) ≈ 0.003.
        let pairs = xs.chunks_exact(2).map(|p| p[0] * p[1]).sum::<f64>() / (n / 2) as f64;
        assert!(pairs.abs() < 0.015, "pair correlation {pairs}");
        let mut rng = StdRng::seed_from_u64(12);
        let single = (0..10_000)
            .map(|_| standard_normal(&mut rng).powi(2))
            .sum::<f64>();
        assert!((single / 10_000.0 - 1.0).abs() < 0.06, "E[Z²] {single}");
    }

    #[test]
    fn check_refuses_non_finite_and_out_of_domain() {
        assert_eq!(check("sigma", 1.0, "≥ 0", |v| v >= 0.0), Ok(1.0));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let err = check("sigma", bad, "≥ 0", |v| v >= 0.0);
            assert!(
                matches!(err, Err(ModelError::InvalidParameter { name: "sigma", .. })),
                "{err:?}"
            );
        }
        use ferrite_core::Classify;
        let err = ModelError::NonStationary { ar: vec![1.0] };
        assert_eq!(err.kind(), ferrite_core::ErrorKind::InvalidInput);
        assert!(!err.retryable());
    }
}
