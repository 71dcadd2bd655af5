//! How devices move together: a Gaussian random field over device positions with exponential
//! covariance, sampled by random Fourier features and evolved in time.
//!
//! # The field
//!
//! Devices sit at fixed 2-D positions x (meters). The field f is zero-mean Gaussian with
//!
//! ```text
//! Cov(f(x), f(y)) = C(‖x − y‖),   C(d) = σ²·exp(−d/r)
//! ```
//!
//! (the Matérn-½ or Laplace kernel; r is the range in meters, correlation e⁻¹ at d = r).
//! A dense covariance over N devices would need N² memory and an N³ factorisation, hopeless
//! for 100 000 devices. Instead:
//!
//! # Random Fourier features
//!
//! By Bochner's theorem a stationary kernel is the Fourier transform of its spectral
//! density: C(h) = σ²·E_ω[cos(ω·h)] with ω drawn from the normalised spectral density p(ω).
//! Then with D frequencies ω₁…ω_D and independent weights aⱼ, bⱼ ~ N(0, 1),
//!
//! ```text
//! f(x) = σ/√D · Σⱼ ( aⱼ·cos(ωⱼ·x) + bⱼ·sin(ωⱼ·x) )
//! ```
//!
//! is Gaussian with Var f(x) = σ²/D·Σⱼ(cos² + sin²) = σ² **exactly**, and
//! Cov(f(x), f(y)) = σ²/D·Σⱼ cos(ωⱼ·(x − y)), a D-point estimate of C(‖x − y‖) that is
//! unbiased over the draw of the ωⱼ. Sampling costs O(N·D) time and O(N + D) memory.
//!
//! **The spectral density of exp(−‖h‖/r) in 2-D** is p(ω) ∝ (1 + r²‖ω‖²)^(−3/2): the
//! bivariate Student-t with ν = 1 (the isotropic bivariate Cauchy) with scale 1/r.
//! Derivation: let g ~ N(0, 1) and, given g, ω ~ N(0, I/(r²g²)), i.e. ω = z/(r·|g|) with
//! z ~ N(0, I₂) (the usual t construction z/√(χ²₁/1)). Then
//! E[cos(ω·h) | g] = exp(−‖h‖²/(2r²g²)); W = 1/g² is Lévy-distributed with Laplace transform
//! E[e^(−λW)] = e^(−√(2λ)), so with λ = ‖h‖²/(2r²), E[cos(ω·h)] = exp(−‖h‖/r). ∎
//!
//! In polar form ω = (ρ/r)·(cos θ, sin θ) with θ uniform on [0, 2π) and ρ = ‖z‖/|g| of density
//! ρ(1 + ρ²)^(−3/2), whose CDF F(ρ) = 1 − (1 + ρ²)^(−½) inverts to
//! ρ = √((1 − u)⁻² − 1). This module draws (u, θ/2π) for the D features from a randomly
//! shifted rank-1 lattice — uⱼ = frac((j + ½)/D + s₁), vⱼ = frac(j·φ⁻¹ + s₂) with golden ratio φ
//! and uniform shifts s₁, s₂ — rather than independently. Every ωⱼ still has exactly the
//! density p, so the kernel estimate stays unbiased, but the radii are stratified and the
//! angles evenly spread, which cuts its error well below the i.i.d. 1/√D (≈ ±0.03 at
//! D = 512). Remaining error comes from the heavy tail (high frequencies), and shrinks
//! with more features.
//!
//! # Time
//!
//! [`SpatialField::step`] moves the weights by an AR(1) step a ← ρ·a + √(1 − ρ²)·z,
//! z ~ N(0, 1), which keeps them N(0, 1), so the field keeps its spatial covariance while each
//! device's value becomes an AR(1) series with lag-1 correlation ρ (ρ = 0 draws an
//! independent field; ρ = 1 freezes it). The frequencies stay fixed for the field's life.
//!
//! One caveat: a single draw has only D independent modes, so statistics taken across space
//! *within one draw* (say, the correlation of neighbours over a whole city) carry an error of
//! order 1/√D. Statistics over many draws or steps converge to the kernel this feature draw
//! realises ([`SpatialField::realized_correlation`]), which is C(d) within the error above.
//! Use more features when single-draw spatial statistics matter.

use std::f64::consts::TAU;

use rand::Rng;

use super::{ModelError, check, standard_normal_pair};

/// Features used when the caller has no reason to choose: kernel error around ±0.01 RMS for
/// distances up to 2r.
pub const DEFAULT_FEATURES: usize = 512;

/// 1/φ, the golden-ratio step that spreads the feature angles evenly for any D.
const GOLDEN_STEP: f64 = 0.618_033_988_749_894_8;

/// The feature weights of a [`SpatialField`] at one moment ([`SpatialField::weights`]): with
/// the field's fixed frequencies they determine its value everywhere at that moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldWeights {
    /// aⱼ at that moment.
    cos: Vec<f64>,
    /// bⱼ at that moment.
    sin: Vec<f64>,
}

/// A spatially and temporally correlated field over devices; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SpatialField {
    /// Device positions in meters, validated finite; `sample` returns values in this order.
    positions: Vec<(f64, f64)>,
    /// ωⱼ in radians per meter; drawn once, fixed for the field's life.
    frequencies: Vec<(f64, f64)>,
    /// aⱼ, the weights of cos(ωⱼ·x); each N(0, 1), moved by `step`.
    cos_weights: Vec<f64>,
    /// bⱼ, the weights of sin(ωⱼ·x); each N(0, 1), moved by `step`.
    sin_weights: Vec<f64>,
    /// σ, standard deviation of every device's value.
    sigma: f64,
    /// r, the range in meters.
    range_m: f64,
}

impl SpatialField {
    /// A field over `positions` (meters) with standard deviation `sigma`, covariance
    /// σ²·exp(−d/`range_m`) and `features` random Fourier features
    /// ([`DEFAULT_FEATURES`] is a good start), its frequencies and first weights drawn
    /// from `rng`.
    ///
    /// Refuses non-finite positions, a negative or non-finite `sigma`, a non-positive or
    /// non-finite `range_m` and zero features.
    pub fn new<R: Rng + ?Sized>(
        positions: &[(f64, f64)],
        sigma: f64,
        range_m: f64,
        features: usize,
        rng: &mut R,
    ) -> Result<Self, ModelError> {
        check("sigma", sigma, "a finite standard deviation ≥ 0", |v| {
            v >= 0.0
        })?;
        check("range_m", range_m, "a finite range > 0 meters", |v| v > 0.0)?;
        if features == 0 {
            return Err(ModelError::InvalidParameter {
                name: "features",
                value: 0.0,
                expected: "at least one feature",
            });
        }
        for &(x, y) in positions {
            check("position x", x, "finite coordinates in meters", |_| true)?;
            check("position y", y, "finite coordinates in meters", |_| true)?;
        }
        let (shift_radius, shift_angle): (f64, f64) = (rng.random(), rng.random());
        let d = features as f64;
        let frequencies = (0..features)
            .map(|j| {
                let u = ((j as f64 + 0.5) / d + shift_radius).fract();
                let v = (j as f64 * GOLDEN_STEP + shift_angle).fract();
                // u < 1, so 1 − u ≥ 2⁻⁵³ and ρ is finite.
                let rho = ((1.0 - u).powi(-2) - 1.0).sqrt();
                let (sin, cos) = (TAU * v).sin_cos();
                (rho / range_m * cos, rho / range_m * sin)
            })
            .collect();
        let mut field = Self {
            positions: positions.to_vec(),
            frequencies,
            cos_weights: vec![0.0; features],
            sin_weights: vec![0.0; features],
            sigma,
            range_m,
        };
        field.redraw(0.0, rng);
        Ok(field)
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the field has no devices.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The device positions in meters, in the order [`sample`](Self::sample) uses.
    pub fn positions(&self) -> &[(f64, f64)] {
        &self.positions
    }

    /// σ, the standard deviation of every device's value.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// r, the range in meters.
    pub fn range_m(&self) -> f64 {
        self.range_m
    }

    /// D, the number of random Fourier features.
    pub fn features(&self) -> usize {
        self.frequencies.len()
    }

    /// The field's current value at every device, in position order. O(devices × features).
    pub fn sample(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.positions.len());
        self.sample_into(&mut out);
        out
    }

    /// Like [`sample`](Self::sample), reusing `out`'s allocation (it is cleared first).
    pub fn sample_into(&self, out: &mut Vec<f64>) {
        out.clear();
        out.extend(self.positions.iter().map(|&(x, y)| self.value_at(x, y)));
    }

    /// The field's current value at any point (meters), not only at a device.
    pub fn value_at(&self, x: f64, y: f64) -> f64 {
        // Plain indexed loop: the hot path (devices × features), kept cheap in debug builds.
        let mut sum = 0.0;
        for j in 0..self.frequencies.len() {
            let (wx, wy) = self.frequencies[j];
            let (sin, cos) = (wx * x + wy * y).sin_cos();
            sum += self.cos_weights[j] * cos + self.sin_weights[j] * sin;
        }
        self.sigma / (self.frequencies.len() as f64).sqrt() * sum
    }

    /// The correlation C(h)/σ² this feature draw actually realises for the offset (dx, dy)
    /// in meters: (1/D)·Σⱼ cos(ωⱼ·h), an estimate of exp(−‖h‖/r).
    pub fn realized_correlation(&self, dx: f64, dy: f64) -> f64 {
        self.frequencies
            .iter()
            .map(|&(wx, wy)| (wx * dx + wy * dy).cos())
            .sum::<f64>()
            / self.frequencies.len() as f64
    }

    /// Advances the field one time step: every device's value keeps lag-1 correlation `rho`
    /// with its previous value, and the spatial covariance is unchanged. `rho = 0` draws an
    /// independent field; `rho = 1` leaves it as it is.
    ///
    /// Refuses `rho` outside [−1, 1] (leaving the field unchanged).
    pub fn step<R: Rng + ?Sized>(&mut self, rho: f64, rng: &mut R) -> Result<(), ModelError> {
        check("rho", rho, "a correlation in [−1, 1]", |v| {
            (-1.0..=1.0).contains(&v)
        })?;
        self.redraw(rho, rng);
        Ok(())
    }

    /// A copy of the current feature weights, to evaluate this moment of the field later with
    /// [`value_with`](Self::value_with) while the field itself moves on. O(features).
    pub fn weights(&self) -> FieldWeights {
        FieldWeights {
            cos: self.cos_weights.clone(),
            sin: self.sin_weights.clone(),
        }
    }

    /// The field's value at a point (meters) at the moment `weights` was taken from this field.
    /// Weights of another field (of a different feature count) give 0 for the missing features.
    pub fn value_with(&self, weights: &FieldWeights, x: f64, y: f64) -> f64 {
        let mut sum = 0.0;
        let n = self
            .frequencies
            .len()
            .min(weights.cos.len())
            .min(weights.sin.len());
        for j in 0..n {
            let (wx, wy) = self.frequencies[j];
            let (sin, cos) = (wx * x + wy * y).sin_cos();
            sum += weights.cos[j] * cos + weights.sin[j] * sin;
        }
        self.sigma / (self.frequencies.len() as f64).sqrt() * sum
    }

    fn redraw<R: Rng + ?Sized>(&mut self, rho: f64, rng: &mut R) {
        let innovation = (1.0 - rho * rho).sqrt();
        for (a, b) in self.cos_weights.iter_mut().zip(&mut self.sin_weights) {
            let (za, zb) = standard_normal_pair(rng);
            *a = rho * *a + innovation * za;
            *b = rho * *b + innovation * zb;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::f64::consts::PI;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    fn variance(a: &[f64]) -> f64 {
        let n = a.len() as f64;
        let m = a.iter().sum::<f64>() / n;
        a.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n
    }

    /// Per device, its values over the draws.
    fn draws(field: &mut SpatialField, rho: f64, n: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
        let mut series = vec![Vec::with_capacity(n); field.len()];
        let mut sample = Vec::new();
        for _ in 0..n {
            field.step(rho, rng).unwrap();
            field.sample_into(&mut sample);
            for (s, v) in series.iter_mut().zip(&sample) {
                s.push(*v);
            }
        }
        series
    }

    #[test]
    fn pair_correlation_over_draws_is_exp_minus_d_over_r_and_variance_is_sigma2() {
        let (sigma, range) = (2.0, 100.0);
        let ratios = [0.5, 1.0, 2.0];
        let orientations = 4;
        // Pairs at each distance in several orientations, far apart from each other.
        let mut positions = Vec::new();
        for (i, ratio) in ratios.iter().enumerate() {
            for k in 0..orientations {
                let angle = PI * f64::from(k) / f64::from(orientations);
                let origin = (1_000.0 * i as f64, 1_000.0 * f64::from(k));
                let d = ratio * range;
                positions.push(origin);
                positions.push((origin.0 + d * angle.cos(), origin.1 + d * angle.sin()));
            }
        }
        let mut rng = StdRng::seed_from_u64(2024);
        let mut field =
            SpatialField::new(&positions, sigma, range, DEFAULT_FEATURES, &mut rng).unwrap();
        let series = draws(&mut field, 0.0, 5_000, &mut rng);
        // Per pair: kernel error ≈ 0.01 RMS plus sampling error (1 − ρ²)/√5000 ≈ 0.012, so
        // ±0.05 is about 3σ; the mean over orientations is held to ±0.03.
        for (i, ratio) in ratios.iter().enumerate() {
            let expected = (-ratio).exp();
            let mut sum = 0.0;
            for k in 0..orientations as usize {
                let first = 2 * (i * orientations as usize + k);
                let r = correlation(&series[first], &series[first + 1]);
                assert!(
                    (r - expected).abs() < 0.05,
                    "d = {ratio}r, orientation {k}: correlation {r}, expected {expected}"
                );
                sum += r;
            }
            let mean = sum / f64::from(orientations);
            assert!((mean - expected).abs() < 0.03, "d = {ratio}r: mean {mean}");
        }
        let variances: Vec<f64> = series.iter().map(|s| variance(s)).collect();
        let pooled = variances.iter().sum::<f64>() / variances.len() as f64;
        assert!(
            (pooled / (sigma * sigma) - 1.0).abs() < 0.05,
            "variance {pooled}"
        );
        // One device's variance over 5 000 draws has a standard error of √(2/5000) ≈ 2%.
        for v in variances {
            assert!((v / (sigma * sigma) - 1.0).abs() < 0.10, "variance {v}");
        }
    }

    #[test]
    fn the_realized_kernel_is_close_to_the_exponential_in_every_direction() {
        let mut rng = StdRng::seed_from_u64(5);
        let field = SpatialField::new(&[], 1.0, 10.0, DEFAULT_FEATURES, &mut rng).unwrap();
        assert!((field.realized_correlation(0.0, 0.0) - 1.0).abs() < 1e-12);
        // Over feature draws the error is ≈ 0.004 (d = 0.1r) to 0.013 (d = 4r) RMS, against
        // ≈ 0.03 for independent frequencies; allow ≈ 4 RMS per offset and 2 RMS overall.
        let mut squares = 0.0;
        let mut offsets = 0.0;
        for ratio in [0.1, 0.5, 1.0, 2.0, 4.0] {
            for k in 0..12 {
                let angle = PI * f64::from(k) / 12.0;
                let d = ratio * 10.0;
                let error =
                    field.realized_correlation(d * angle.cos(), d * angle.sin()) - (-ratio).exp();
                assert!(
                    error.abs() < 0.05,
                    "d = {ratio}r at {angle:.2} rad: off by {error}"
                );
                squares += error * error;
                offsets += 1.0;
            }
        }
        let rms = (squares / offsets).sqrt();
        assert!(rms < 0.02, "RMS error {rms}");
    }

    #[test]
    fn steps_make_each_device_an_ar1_series_with_correlation_rho() {
        let (sigma, rho, steps) = (1.5, 0.9, 10_000);
        // Eight devices 5 km apart (r = 50 m): independent series.
        let positions: Vec<(f64, f64)> = (0..8)
            .map(|i| (5_000.0 * f64::from(i % 4), 5_000.0 * f64::from(i / 4)))
            .collect();
        let mut rng = StdRng::seed_from_u64(77);
        let mut field = SpatialField::new(&positions, sigma, 50.0, 64, &mut rng).unwrap();
        let series = draws(&mut field, rho, steps, &mut rng);
        for s in &series {
            // Standard errors (Bartlett): lag 1 √((1 − ρ²)/n) ≈ 0.0044, lag 5 ≈ 0.016.
            let r1 = correlation(&s[..s.len() - 1], &s[1..]);
            assert!((r1 - rho).abs() < 0.02, "lag-1 {r1}");
            let r5 = correlation(&s[..s.len() - 5], &s[5..]);
            assert!((r5 - rho.powi(5)).abs() < 0.06, "lag-5 {r5}");
        }
        // The marginal variance is kept. Effective sample ≈ 8 × n × (1 − ρ)/(1 + ρ) ≈ 4 200,
        // a standard error of ≈ 2.2%.
        let pooled = series.iter().map(|s| variance(s)).sum::<f64>() / series.len() as f64;
        assert!(
            (pooled / (sigma * sigma) - 1.0).abs() < 0.10,
            "variance {pooled}"
        );

        let frozen = field.sample();
        field.step(1.0, &mut rng).unwrap();
        assert_eq!(field.sample(), frozen, "ρ = 1 freezes the field");
        assert!(field.step(1.5, &mut rng).is_err());
        assert!(field.step(f64::NAN, &mut rng).is_err());
        assert_eq!(field.sample(), frozen, "a refused step changes nothing");
    }

    #[test]
    fn one_sample_for_100k_devices_is_linear_and_spatially_plausible() {
        // A 400 × 250 grid at 50 m = r/2 spacing: 100 000 devices over 20 km × 12.5 km.
        let (cols, rows, spacing, range, sigma) = (400_usize, 250_usize, 50.0, 100.0, 3.0);
        let positions: Vec<(f64, f64)> = (0..rows)
            .flat_map(|j| (0..cols).map(move |i| (i as f64 * spacing, j as f64 * spacing)))
            .collect();
        assert_eq!(positions.len(), 100_000);
        let mut rng = StdRng::seed_from_u64(100_000);
        let field = SpatialField::new(&positions, sigma, range, 512, &mut rng).unwrap();
        let values = field.sample();
        assert_eq!(values.len(), 100_000);
        assert!(values.iter().all(|v| v.is_finite()));
        // Within one draw, spatial statistics carry a ≈ 1/√D error (see the module docs):
        // ≈ 4% on the variance and ≈ 0.03 on the correlations.
        let v = variance(&values);
        assert!(
            (v / (sigma * sigma) - 1.0).abs() < 0.20,
            "spatial variance {v}"
        );
        for (lag, expected) in [
            (1, (-0.5_f64).exp()),
            (2, (-1.0_f64).exp()),
            (4, (-2.0_f64).exp()),
        ] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for j in 0..rows {
                for i in 0..cols - lag {
                    a.push(values[j * cols + i]);
                    b.push(values[j * cols + i + lag]);
                }
            }
            let r = correlation(&a, &b);
            assert!(
                (r - expected).abs() < 0.10,
                "lag {lag}: {r}, expected {expected}"
            );
        }
    }

    #[test]
    fn weight_snapshots_keep_a_moment_of_the_field() {
        let mut rng = StdRng::seed_from_u64(21);
        let mut field = SpatialField::new(&[], 1.0, 50.0, 64, &mut rng).unwrap();
        let then = field.weights();
        let before = field.value_at(12.0, -3.0);
        assert_eq!(field.value_with(&then, 12.0, -3.0), before);
        field.step(0.0, &mut rng).unwrap();
        assert_ne!(field.value_at(12.0, -3.0), before, "the field moved on");
        assert_eq!(
            field.value_with(&then, 12.0, -3.0),
            before,
            "the snapshot did not"
        );
    }

    #[test]
    fn value_at_agrees_with_sample_and_bad_parameters_are_refused() {
        let mut rng = StdRng::seed_from_u64(8);
        let positions = [(1.0, 2.0), (-30.0, 7.5)];
        let field = SpatialField::new(&positions, 1.0, 20.0, 64, &mut rng).unwrap();
        let values = field.sample();
        for (p, v) in positions.iter().zip(&values) {
            assert_eq!(field.value_at(p.0, p.1), *v);
        }
        assert_eq!(field.len(), 2);
        assert_eq!(field.features(), 64);
        let bad = |p: &[(f64, f64)], sigma, range, features| {
            SpatialField::new(p, sigma, range, features, &mut StdRng::seed_from_u64(0)).is_err()
        };
        assert!(bad(&positions, -1.0, 20.0, 64));
        assert!(bad(&positions, 1.0, 0.0, 64));
        assert!(bad(&positions, 1.0, f64::INFINITY, 64));
        assert!(bad(&positions, 1.0, 20.0, 0));
        assert!(bad(&[(f64::NAN, 0.0)], 1.0, 20.0, 64));
        let a = SpatialField::new(&positions, 1.0, 20.0, 64, &mut StdRng::seed_from_u64(3));
        let b = SpatialField::new(&positions, 1.0, 20.0, 64, &mut StdRng::seed_from_u64(3));
        assert_eq!(
            a.unwrap().sample(),
            b.unwrap().sample(),
            "reproducible from the seed"
        );
    }
}
