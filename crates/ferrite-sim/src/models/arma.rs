//! How one device's value moves in time: an ARMA(p, q) process.
//!
//! ```text
//! X(t) = μ + Σᵢ₌₁..ₚ αᵢ·(X(t−i) − μ) + Σⱼ₌₁..q βⱼ·ε(t−j) + ε(t),   ε ~ N(0, σ²) i.i.d.
//! ```
//!
//! μ is the mean offset ([`Arma::with_mean`]). The process starts from a zero history
//! (X = μ, ε = 0); [`Arma::warm_up`] discards steps until the start is forgotten, which takes
//! a few times 1/(1 − |largest root⁻¹|) steps.
//!
//! **Stationarity.** [`Arma::new`] refuses AR coefficients unless every root of
//! 1 − α₁z − … − αₚzᵖ lies strictly outside the unit circle, the condition for a finite,
//! time-invariant variance. For p ≤ 2 this is checked in closed form (|α₁| < 1; for p = 2 the
//! triangle α₁ + α₂ < 1, α₂ − α₁ < 1, |α₂| < 1). For p > 2 it is checked exactly too, by the
//! Schur–Cohn step-down recursion (Levinson–Durbin run backwards): with k = αₚ, stationary iff
//! |k| < 1 and the order-(p−1) coefficients (αᵢ + k·αₚ₋ᵢ)/(1 − k²) are stationary. This accepts
//! every model the simpler sufficient test Σ|αᵢ| < 1 accepts, and also stationary models it
//! would wrongly refuse (e.g. AR(2) with α = (1.5, −0.56), roots 1/0.7 and 1/0.8).
//! The MA part needs no condition for generation (invertibility only matters for estimation).

use rand::Rng;

use super::{ModelError, check, standard_normal};

/// Most ψ-weights [`Arma::variance`] sums; enough for roots up to about 1/0.9999.
const MAX_PSI_TERMS: usize = 1_000_000;

/// An ARMA(p, q) generator; see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct Arma {
    /// α₁…αₚ, validated stationary.
    ar: Vec<f64>,
    /// β₁…β_q, validated finite.
    ma: Vec<f64>,
    /// σ of the innovations; ≥ 0.
    sigma: f64,
    /// μ, the level the process reverts to.
    mean: f64,
    /// X(t−1) − μ, …, X(t−p) − μ: most recent first, length p.
    past_x: Vec<f64>,
    /// ε(t−1), …, ε(t−q): most recent first, length q.
    past_eps: Vec<f64>,
}

impl Arma {
    /// An ARMA process with AR coefficients `ar` (α₁ first), MA coefficients `ma` (β₁ first)
    /// and innovation standard deviation `sigma`, mean 0.
    ///
    /// Refuses non-finite coefficients, a negative or non-finite `sigma`, and non-stationary
    /// AR coefficients ([`ModelError::NonStationary`]).
    pub fn new(ar: Vec<f64>, ma: Vec<f64>, sigma: f64) -> Result<Self, ModelError> {
        for &a in &ar {
            check("ar", a, "finite AR coefficients", |_| true)?;
        }
        for &b in &ma {
            check("ma", b, "finite MA coefficients", |_| true)?;
        }
        check("sigma", sigma, "a finite standard deviation ≥ 0", |v| {
            v >= 0.0
        })?;
        if !is_stationary(&ar) {
            return Err(ModelError::NonStationary { ar });
        }
        Ok(Self {
            past_x: vec![0.0; ar.len()],
            past_eps: vec![0.0; ma.len()],
            ar,
            ma,
            sigma,
            mean: 0.0,
        })
    }

    /// The same process around `mean` instead of 0 (a finite level, in the reading's unit).
    pub fn with_mean(mut self, mean: f64) -> Result<Self, ModelError> {
        self.mean = check("mean", mean, "a finite level", |_| true)?;
        Ok(self)
    }

    /// α₁…αₚ.
    pub fn ar(&self) -> &[f64] {
        &self.ar
    }

    /// β₁…β_q.
    pub fn ma(&self) -> &[f64] {
        &self.ma
    }

    /// σ of the innovations.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// μ, the mean offset.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The next value X(t).
    pub fn next<R: Rng + ?Sized>(&mut self, rng: &mut R) -> f64 {
        let eps = self.sigma * standard_normal(rng);
        let ar: f64 = self.ar.iter().zip(&self.past_x).map(|(a, x)| a * x).sum();
        let ma: f64 = self.ma.iter().zip(&self.past_eps).map(|(b, e)| b * e).sum();
        let x = ar + ma + eps;
        push_front(&mut self.past_x, x);
        push_front(&mut self.past_eps, eps);
        self.mean + x
    }

    /// Discards `steps` values so the zero start is forgotten.
    pub fn warm_up<R: Rng + ?Sized>(&mut self, steps: usize, rng: &mut R) {
        for _ in 0..steps {
            self.next(rng);
        }
    }

    /// Starts the process near its stationary distribution instead of from zero: every past
    /// value is set to one draw from N(0, Var X) and the past innovations to zero, then a few
    /// steps are discarded. Exact for AR(1) (whose state is its last value); for higher orders
    /// the start is close to stationary and its error decays like the process's memory. Much
    /// cheaper than [`warm_up`](Self::warm_up) for persistent processes (α close to 1), whose
    /// zero start would take thousands of steps to forget.
    pub fn start_stationary<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let level = self.variance().sqrt() * standard_normal(rng);
        self.past_x.iter_mut().for_each(|x| *x = level);
        self.past_eps.iter_mut().for_each(|e| *e = 0.0);
        let settle = 2 * (self.ar.len() + self.ma.len());
        self.warm_up(settle, rng);
    }

    /// The stationary variance Var X = σ²·Σₖ ψₖ², where ψ₀ = 1 and
    /// ψₖ = βₖ + Σᵢ αᵢ·ψₖ₋ᵢ (βₖ = 0 beyond q) are the process's MA(∞) weights. The sum stops
    /// when the weights have decayed below 10⁻¹² of the running total, or after a million terms.
    pub fn variance(&self) -> f64 {
        let p = self.ar.len();
        // ψₖ₋₁, …, ψₖ₋ₚ: most recent first.
        let mut recent = vec![0.0; p];
        let mut sum = 1.0;
        if p > 0 {
            recent[0] = 1.0;
        }
        // Once k > q and the last p weights are all negligible, every later weight is too.
        let mut quiet = 0;
        for k in 1..MAX_PSI_TERMS {
            let ma = self.ma.get(k - 1).copied().unwrap_or(0.0);
            let psi = ma + self.ar.iter().zip(&recent).map(|(a, s)| a * s).sum::<f64>();
            sum += psi * psi;
            push_front(&mut recent, psi);
            quiet = if psi * psi < 1e-12 * sum {
                quiet + 1
            } else {
                0
            };
            if k > self.ma.len() && quiet > p {
                break;
            }
        }
        self.sigma * self.sigma * sum
    }
}

/// Whether AR coefficients α₁…αₚ give a stationary process: every root of 1 − Σ αᵢ zⁱ strictly
/// outside the unit circle. Exact for every p; see the [module docs](self).
pub fn is_stationary(ar: &[f64]) -> bool {
    if ar.iter().any(|a| !a.is_finite()) {
        return false;
    }
    match *ar {
        [] => true,
        [a1] => a1.abs() < 1.0,
        [a1, a2] => a2.abs() < 1.0 && a1 + a2 < 1.0 && a2 - a1 < 1.0,
        _ => step_down(ar),
    }
}

/// The Schur–Cohn step-down test: the partial autocorrelations k recovered from the AR
/// coefficients must all satisfy |k| < 1.
fn step_down(ar: &[f64]) -> bool {
    let mut a = ar.to_vec();
    while let Some(&k) = a.last() {
        if k.abs() >= 1.0 {
            return false;
        }
        let m = a.len();
        let scale = 1.0 - k * k;
        a = (0..m - 1)
            .map(|i| (a[i] + k * a[m - 2 - i]) / scale)
            .collect();
    }
    true
}

/// Shifts `v` one place back (dropping the oldest) and puts `value` first.
fn push_front(v: &mut [f64], value: f64) {
    if let Some(oldest) = v.last_mut() {
        *oldest = value;
        v.rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn series(model: &mut Arma, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        model.warm_up(1_000, &mut rng);
        (0..n).map(|_| model.next(&mut rng)).collect()
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    fn variance(xs: &[f64]) -> f64 {
        let m = mean(xs);
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64
    }

    fn autocorrelation(xs: &[f64], lag: usize) -> f64 {
        let m = mean(xs);
        let num: f64 = xs
            .iter()
            .zip(&xs[lag..])
            .map(|(a, b)| (a - m) * (b - m))
            .sum();
        let den: f64 = xs.iter().map(|x| (x - m).powi(2)).sum();
        num / den
    }

    #[test]
    fn ar1_has_lag1_autocorrelation_alpha_and_variance_sigma2_over_1_minus_alpha2() {
        let (alpha, sigma) = (0.8, 1.5);
        let mut model = Arma::new(vec![alpha], vec![], sigma)
            .unwrap()
            .with_mean(20.0)
            .unwrap();
        let xs = series(&mut model, 200_000, 1);
        let r1 = autocorrelation(&xs, 1);
        assert!((r1 - alpha).abs() < 0.02, "lag-1 autocorrelation {r1}");
        let r2 = autocorrelation(&xs, 2);
        assert!(
            (r2 - alpha * alpha).abs() < 0.02,
            "lag-2 autocorrelation {r2}"
        );
        let expected = sigma * sigma / (1.0 - alpha * alpha);
        let v = variance(&xs);
        assert!(
            (v / expected - 1.0).abs() < 0.05,
            "variance {v}, expected {expected}"
        );
        assert!((model.variance() - expected).abs() < 1e-9 * expected);
        // Standard error of the mean ≈ √(Var·(1+α)/(1−α)/n) ≈ 0.017.
        let m = mean(&xs);
        assert!((m - 20.0).abs() < 0.07, "mean {m}");
    }

    #[test]
    fn ma1_has_lag1_autocorrelation_beta_over_1_plus_beta2_and_none_beyond() {
        let beta = 0.5;
        let mut model = Arma::new(vec![], vec![beta], 1.0).unwrap();
        let xs = series(&mut model, 200_000, 2);
        let r1 = autocorrelation(&xs, 1);
        let expected = beta / (1.0 + beta * beta);
        assert!(
            (r1 - expected).abs() < 0.02,
            "lag-1 {r1}, expected {expected}"
        );
        let r2 = autocorrelation(&xs, 2);
        assert!(r2.abs() < 0.02, "lag-2 {r2}");
        let r3 = autocorrelation(&xs, 3);
        assert!(r3.abs() < 0.02, "lag-3 {r3}");
        let v = variance(&xs);
        assert!((v / (1.0 + beta * beta) - 1.0).abs() < 0.05, "variance {v}");
        assert!(mean(&xs).abs() < 0.02);
    }

    #[test]
    fn arma21_sample_variance_matches_the_psi_weight_variance() {
        // Complex AR roots (α₁² + 4α₂ < 0): a damped oscillation.
        let mut model = Arma::new(vec![0.5, -0.3], vec![0.4], 2.0).unwrap();
        let expected = model.variance();
        let xs = series(&mut model, 200_000, 3);
        let v = variance(&xs);
        assert!(
            (v / expected - 1.0).abs() < 0.05,
            "variance {v}, expected {expected}"
        );
        // Yule–Walker for lag 2 (beyond q = 1): ρ₂ = α₁ρ₁ + α₂.
        let (r1, r2) = (autocorrelation(&xs, 1), autocorrelation(&xs, 2));
        assert!((r2 - (0.5 * r1 - 0.3)).abs() < 0.02, "ρ₁ {r1}, ρ₂ {r2}");
    }

    #[test]
    fn a_stationary_start_has_the_stationary_spread_from_the_first_value() {
        // AR(1) with α = 0.999 forgets a zero start only after thousands of steps; the
        // stationary start has the right spread at once. Over 4 000 independent starts the first
        // value's variance is Var X ± 2.2%.
        let (alpha, sigma) = (0.999, 0.1);
        let model = Arma::new(vec![alpha], vec![], sigma).unwrap();
        let expected = model.variance();
        let mut rng = StdRng::seed_from_u64(4);
        let firsts: Vec<f64> = (0..4_000)
            .map(|_| {
                let mut m = model.clone();
                m.start_stationary(&mut rng);
                m.next(&mut rng)
            })
            .collect();
        let v = variance(&firsts);
        assert!((v / expected - 1.0).abs() < 0.1, "{v} vs {expected}");
        let cold_first = (0..4_000)
            .map(|_| model.clone().next(&mut rng))
            .collect::<Vec<_>>();
        assert!(
            variance(&cold_first) < expected / 100.0,
            "a zero start is far off"
        );
    }

    #[test]
    fn stationarity_is_checked_exactly() {
        for ar in [
            vec![1.0],
            vec![-1.0],
            vec![0.5, 0.5],
            vec![1.2, -0.1],
            vec![0.0, -1.0],
        ] {
            assert!(
                matches!(
                    Arma::new(ar.clone(), vec![], 1.0),
                    Err(ModelError::NonStationary { .. })
                ),
                "{ar:?} has a root on or inside the unit circle"
            );
        }
        // (1 − 0.7z)(1 − 0.8z): stationary although Σ|α| = 2.06.
        assert!(Arma::new(vec![1.5, -0.56], vec![], 1.0).is_ok());
        // (1 − 0.7z)(1 − 0.8z)(1 − 0.9z) is stationary; with 1.1 in place of 0.7 it is not.
        let cubic = |a: f64, b: f64, c: f64| vec![a + b + c, -(a * b + a * c + b * c), a * b * c];
        assert!(is_stationary(&cubic(0.7, 0.8, 0.9)));
        assert!(!is_stationary(&cubic(1.1, 0.8, 0.5)));
        assert!(!is_stationary(&cubic(-1.05, 0.2, 0.3)));
        assert!(is_stationary(&cubic(-0.95, 0.2, 0.3)));
        // Quartic with a complex pair of modulus 0.9 and two real roots.
        let quartic = {
            // (1 − 2·0.9·cos(1)z + 0.81z²)(1 − 0.5z)(1 + 0.6z)
            let c = 2.0 * 0.9 * 1.0_f64.cos();
            let (p1, p2) = (c, -0.81);
            let (q1, q2) = (0.5 - 0.6, 0.3); // (1 − 0.5z)(1 + 0.6z) = 1 + 0.1z − 0.3z²
            // (1 − p1 z − p2 z²)(1 − q1 z − q2 z²) = 1 − Σ αᵢ zⁱ
            vec![p1 + q1, p2 + q2 - p1 * q1, -(p1 * q2 + p2 * q1), -p2 * q2]
        };
        assert!(is_stationary(&quartic));
        let mut grown = quartic.clone();
        grown[3] = 1.0;
        assert!(!is_stationary(&grown));
        // Every Σ|α| < 1 model passes.
        assert!(is_stationary(&[0.3, -0.2, 0.25, 0.2]));
        // The step-down test agrees with the closed-form triangle for p = 2.
        for i in -20..=20 {
            for j in -10..=10 {
                let ar = [f64::from(i) * 0.1 + 0.013, f64::from(j) * 0.1 + 0.007];
                assert_eq!(step_down(&ar), is_stationary(&ar), "{ar:?}");
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused_and_the_start_is_deterministic() {
        assert!(Arma::new(vec![f64::NAN], vec![], 1.0).is_err());
        assert!(Arma::new(vec![], vec![f64::INFINITY], 1.0).is_err());
        assert!(Arma::new(vec![], vec![], -1.0).is_err());
        assert!(
            Arma::new(vec![], vec![], 1.0)
                .unwrap()
                .with_mean(f64::NAN)
                .is_err()
        );
        let mut silent = Arma::new(vec![0.5], vec![0.5], 0.0)
            .unwrap()
            .with_mean(3.0)
            .unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        assert!(
            (0..10).all(|_| silent.next(&mut rng) == 3.0),
            "σ = 0 stays at μ"
        );
        let mut a = Arma::new(vec![0.3, 0.2, 0.1], vec![0.5], 1.0).unwrap();
        let mut b = a.clone();
        assert_eq!(series(&mut a, 100, 7), series(&mut b, 100, 7));
    }
}
