//! When readings arrive: a periodic arrival rate and a non-homogeneous Poisson process.
//!
//! The intensity (events per second) at time `t` (seconds, typically Unix time) is
//!
//! ```text
//! λ(t) = max(0, λ₀ + Σᵢ αᵢ·cos(2π fᵢ t + φᵢ) + ε(t)),   ε(t) ~ N(0, σ²) independently per call
//! ```
//!
//! Harmonic `i` peaks where 2π fᵢ t + φᵢ ≡ 0 (mod 2π), i.e. at t = −φᵢ / (2π fᵢ) modulo its
//! period. [`ArrivalRate::daily_weekly`] uses fᵢ = 1/day and 1/week with φ = 0, so with Unix
//! time it peaks at 00:00 UTC each day and on Thursdays (the epoch was a Thursday).
//!
//! [`ArrivalRate::arrivals`] draws event times by Lewis–Shedler thinning: candidates from a
//! homogeneous Poisson process at a bound λ* ≥ λ(t) (exponential gaps with mean 1/λ*), each
//! kept with probability λ(t)/λ*. The kept points form a Poisson process of intensity λ(t).
//! The bound is λ* = λ₀ + Σ|αᵢ| + 6σ; noise beyond 6σ (probability ≈ 2·10⁻⁹) is truncated.
//! Because ε is drawn independently for every candidate, the process stays Poisson with the
//! intensity E[max(0, λ(t) + ε)], which equals the noise-free rate wherever that is a few σ
//! above zero. Work is proportional to the number of candidates, λ*·(to − from); the output
//! is capped by the caller's `max_count`, so it never allocates without bound.

use rand::Rng;

use super::{ModelError, check, standard_normal};

/// Seconds in a day.
pub const DAY_S: f64 = 86_400.0;
/// Seconds in a week.
pub const WEEK_S: f64 = 7.0 * DAY_S;

/// How far above the noise-free peak the thinning bound reaches, in noise standard deviations.
const NOISE_BOUND_SDS: f64 = 6.0;

/// One periodic component αᵢ·cos(2π fᵢ t + φᵢ) of an [`ArrivalRate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Harmonic {
    /// αᵢ, in events per second; negative values flip the phase.
    pub amplitude: f64,
    /// fᵢ, in cycles per second (1/86 400 for a daily cycle); ≥ 0.
    pub frequency_hz: f64,
    /// φᵢ, in radians.
    pub phase: f64,
}

impl Harmonic {
    fn at(&self, t_secs: f64) -> f64 {
        self.amplitude * (std::f64::consts::TAU * self.frequency_hz * t_secs + self.phase).cos()
    }

    /// ∫ αᵢ·cos(2π fᵢ t + φᵢ) dt over [from, to].
    fn integral(&self, from_s: f64, to_s: f64) -> f64 {
        if self.frequency_hz == 0.0 {
            return self.amplitude * self.phase.cos() * (to_s - from_s);
        }
        let w = std::f64::consts::TAU * self.frequency_hz;
        self.amplitude * ((w * to_s + self.phase).sin() - (w * from_s + self.phase).sin()) / w
    }
}

/// A periodic arrival rate λ(t) with Gaussian noise; see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalRate {
    /// λ₀, events per second; ≥ 0.
    base: f64,
    /// The periodic components, validated finite.
    harmonics: Vec<Harmonic>,
    /// σ of ε(t), events per second; ≥ 0.
    noise_sd: f64,
}

impl ArrivalRate {
    /// A rate of `base` events per second plus `harmonics` plus N(0, `noise_sd`²) noise.
    ///
    /// Refuses a negative or non-finite `base` or `noise_sd`, and harmonics with a non-finite
    /// amplitude or phase or a negative or non-finite frequency.
    pub fn new(base: f64, harmonics: Vec<Harmonic>, noise_sd: f64) -> Result<Self, ModelError> {
        check("base", base, "a finite rate ≥ 0", |v| v >= 0.0)?;
        check(
            "noise_sd",
            noise_sd,
            "a finite standard deviation ≥ 0",
            |v| v >= 0.0,
        )?;
        for h in &harmonics {
            check("amplitude", h.amplitude, "a finite rate", |_| true)?;
            check(
                "frequency_hz",
                h.frequency_hz,
                "a finite frequency ≥ 0",
                |v| v >= 0.0,
            )?;
            check("phase", h.phase, "a finite angle in radians", |_| true)?;
        }
        Ok(Self {
            base,
            harmonics,
            noise_sd,
        })
    }

    /// `base` events per second with a daily and a weekly cosine of the given amplitudes
    /// (events per second), both with phase 0 (peaks at t ≡ 0 modulo a day and a week), and
    /// no noise; add noise with [`with_noise`](Self::with_noise).
    pub fn daily_weekly(base: f64, daily_amp: f64, weekly_amp: f64) -> Result<Self, ModelError> {
        Self::new(
            base,
            vec![
                Harmonic {
                    amplitude: daily_amp,
                    frequency_hz: 1.0 / DAY_S,
                    phase: 0.0,
                },
                Harmonic {
                    amplitude: weekly_amp,
                    frequency_hz: 1.0 / WEEK_S,
                    phase: 0.0,
                },
            ],
            0.0,
        )
    }

    /// The same rate with noise of standard deviation `noise_sd` (events per second).
    pub fn with_noise(self, noise_sd: f64) -> Result<Self, ModelError> {
        Self::new(self.base, self.harmonics, noise_sd)
    }

    /// λ₀, events per second.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// The periodic components.
    pub fn harmonics(&self) -> &[Harmonic] {
        &self.harmonics
    }

    /// σ of the noise, events per second.
    pub fn noise_sd(&self) -> f64 {
        self.noise_sd
    }

    /// The noise-free rate max(0, λ₀ + Σᵢ αᵢ·cos(2π fᵢ t + φᵢ)) at `t_secs`.
    pub fn mean_rate_at(&self, t_secs: f64) -> f64 {
        self.unclamped(t_secs).max(0.0)
    }

    /// The rate at `t_secs` with a fresh noise draw, clamped at ≥ 0.
    pub fn rate_at<R: Rng + ?Sized>(&self, t_secs: f64, rng: &mut R) -> f64 {
        let noise = if self.noise_sd > 0.0 {
            self.noise_sd * standard_normal(rng)
        } else {
            0.0
        };
        (self.unclamped(t_secs) + noise).max(0.0)
    }

    /// λ₀ + Σ|αᵢ|: no noise-free rate exceeds it.
    pub fn peak_rate(&self) -> f64 {
        self.base
            + self
                .harmonics
                .iter()
                .map(|h| h.amplitude.abs())
                .sum::<f64>()
    }

    /// The expected number of arrivals between `from_s` and `to_s` without noise: ∫ λ₀ + Σᵢ αᵢ·cos(…)
    /// dt in closed form. Exact when λ₀ ≥ Σ|αᵢ| (the rate is then never clamped).
    pub fn expected_count(&self, from_s: f64, to_s: f64) -> f64 {
        self.base * (to_s - from_s)
            + self
                .harmonics
                .iter()
                .map(|h| h.integral(from_s, to_s))
                .sum::<f64>()
    }

    /// Arrival times t with `from_s` ≤ t < `to_s`, ascending, from a non-homogeneous Poisson process
    /// with this rate (Lewis–Shedler thinning), stopping after `max_count` arrivals.
    ///
    /// An empty or non-finite window, a zero rate or `max_count == 0` gives no arrivals. If the
    /// result holds `max_count` times, the window was cut short after the last one.
    pub fn arrivals<R: Rng + ?Sized>(
        &self,
        from_s: f64,
        to_s: f64,
        max_count: usize,
        rng: &mut R,
    ) -> Vec<f64> {
        let bound = self.peak_rate() + NOISE_BOUND_SDS * self.noise_sd;
        if !(from_s.is_finite() && to_s.is_finite() && to_s > from_s)
            || max_count == 0
            || !(bound > 0.0 && bound.is_finite())
        {
            return Vec::new();
        }
        let window = to_s - from_s;
        // Room for the expected count plus a margin, never more than the cap (`as` saturates).
        let expected = self.expected_count(from_s, to_s).max(0.0);
        let capacity = ((expected + 4.0 * expected.sqrt() + 16.0) as usize).min(max_count);
        let mut out = Vec::with_capacity(capacity);
        // Time is kept as an offset from `from_s` so the walk always advances, even when
        // `from_s` is a large Unix time whose ulp exceeds the gaps between candidates.
        let mut elapsed = 0.0;
        loop {
            // 1 − u is in (0, 1], so the gap is a finite Exp(bound) draw.
            elapsed += -(1.0 - rng.random::<f64>()).ln() / bound;
            if elapsed >= window {
                break;
            }
            let t = from_s + elapsed;
            if rng.random::<f64>() * bound < self.rate_at(t, rng) {
                out.push(t);
                if out.len() >= max_count {
                    break;
                }
            }
        }
        out
    }

    fn unclamped(&self, t_secs: f64) -> f64 {
        self.base + self.harmonics.iter().map(|h| h.at(t_secs)).sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::f64::consts::TAU;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const HOUR_S: f64 = 3_600.0;

    /// 1 event/s on average, a strong daily cycle peaking at 14:30 and a weak weekly one.
    fn afternoon_peak() -> ArrivalRate {
        ArrivalRate::new(
            1.0,
            vec![
                Harmonic {
                    amplitude: 0.8,
                    frequency_hz: 1.0 / DAY_S,
                    phase: -TAU * 14.5 / 24.0,
                },
                Harmonic {
                    amplitude: 0.1,
                    frequency_hz: 1.0 / WEEK_S,
                    phase: 0.0,
                },
            ],
            0.0,
        )
        .unwrap()
    }

    #[test]
    fn hourly_counts_match_the_integrated_rate_and_peak_where_the_cosine_does() {
        let rate = afternoon_peak();
        let mut rng = StdRng::seed_from_u64(42);
        let days = 14;
        let mut counts = [0_u64; 24];
        let mut expected = [0.0_f64; 24];
        for day in 0..days {
            let start = f64::from(day) * DAY_S;
            let arrivals = rate.arrivals(start, start + DAY_S, 1_000_000, &mut rng);
            assert!(arrivals.len() < 1_000_000, "the cap must not cut the day");
            for t in arrivals {
                counts[((t - start) / HOUR_S) as usize] += 1;
            }
            for (h, e) in expected.iter_mut().enumerate() {
                let from = start + h as f64 * HOUR_S;
                *e += rate.expected_count(from, from + HOUR_S);
            }
        }
        // Each hour's total over the days is Poisson: variance = mean. Allow 4σ.
        for h in 0..24 {
            let (n, e) = (counts[h] as f64, expected[h]);
            assert!(
                (n - e).abs() < 4.0 * e.sqrt(),
                "hour {h}: {n} arrivals, expected {e:.0} ± {:.0}",
                e.sqrt()
            );
            let per_hour = n / f64::from(days);
            let per_hour_expected = e / f64::from(days);
            assert!(
                (per_hour - per_hour_expected).abs() < 4.0 * e.sqrt() / f64::from(days),
                "hour {h}: mean {per_hour} per hour, expected {per_hour_expected}"
            );
        }
        // The phase of the hourly counts' first Fourier coefficient is the daily peak.
        let (mut re, mut im) = (0.0, 0.0);
        for (h, &n) in counts.iter().enumerate() {
            let angle = TAU * (h as f64 + 0.5) / 24.0;
            re += n as f64 * angle.cos();
            im += n as f64 * angle.sin();
        }
        let peak_hour = (im.atan2(re) / TAU * 24.0).rem_euclid(24.0);
        assert!(
            (peak_hour - 14.5).abs() < 0.1,
            "daily peak at {peak_hour} h"
        );
        let argmax = (0..24).max_by_key(|&h| counts[h]).unwrap();
        let argmin = (0..24).min_by_key(|&h| counts[h]).unwrap();
        assert_eq!(argmax, 14, "the cosine peaks at 14:30");
        assert_eq!(argmin, 2, "and bottoms out at 02:30");
    }

    #[test]
    fn arrivals_are_ascending_inside_the_window_and_capped() {
        let rate = ArrivalRate::daily_weekly(50.0, 10.0, 5.0).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let from = 1_700_000_000.0;
        let all = rate.arrivals(from, from + 10.0, usize::MAX, &mut rng);
        assert!(all.windows(2).all(|w| w[0] <= w[1]), "ascending");
        assert!(all.iter().all(|t| (from..from + 10.0).contains(t)));
        // Poisson mean ≈ 650 (rate ≈ 65/s near t ≡ 0), sd ≈ 25.
        let e = rate.expected_count(from, from + 10.0);
        assert!(
            (all.len() as f64 - e).abs() < 4.0 * e.sqrt(),
            "{}",
            all.len()
        );

        let capped = rate.arrivals(from, from + 1e9, 100, &mut rng);
        assert_eq!(capped.len(), 100, "stops at the cap instead of growing");
        assert!(capped.iter().all(|t| (from..from + 1e9).contains(t)));

        assert!(rate.arrivals(from, from, 10, &mut rng).is_empty());
        assert!(rate.arrivals(from + 1.0, from, 10, &mut rng).is_empty());
        assert!(rate.arrivals(f64::NAN, from, 10, &mut rng).is_empty());
        assert!(rate.arrivals(from, from + 10.0, 0, &mut rng).is_empty());
        let silent = ArrivalRate::new(0.0, vec![], 0.0).unwrap();
        assert!(silent.arrivals(0.0, 1e6, 10, &mut rng).is_empty());
    }

    #[test]
    fn arrivals_are_reproducible_from_the_seed() {
        let rate = ArrivalRate::daily_weekly(2.0, 1.0, 0.5)
            .unwrap()
            .with_noise(0.3)
            .unwrap();
        let a = rate.arrivals(0.0, 100.0, 1_000, &mut StdRng::seed_from_u64(9));
        let b = rate.arrivals(0.0, 100.0, 1_000, &mut StdRng::seed_from_u64(9));
        let c = rate.arrivals(0.0, 100.0, 1_000, &mut StdRng::seed_from_u64(10));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn expected_count_matches_a_numeric_integral() {
        let rate = afternoon_peak();
        let (from, to) = (12_345.0, 12_345.0 + 3.0 * DAY_S);
        let steps = 100_000;
        let dt = (to - from) / f64::from(steps);
        let numeric: f64 = (0..steps)
            .map(|i| rate.mean_rate_at(from + (f64::from(i) + 0.5) * dt) * dt)
            .sum();
        let closed = rate.expected_count(from, to);
        assert!(
            (numeric - closed).abs() < 1e-6 * closed,
            "{numeric} vs {closed}"
        );
        let constant = ArrivalRate::new(
            2.0,
            vec![Harmonic {
                amplitude: 1.0,
                frequency_hz: 0.0,
                phase: 0.0,
            }],
            0.0,
        )
        .unwrap();
        assert!((constant.expected_count(0.0, 10.0) - 30.0).abs() < 1e-12);
    }

    #[test]
    fn noise_has_the_requested_spread_and_the_rate_never_goes_negative() {
        let rate = ArrivalRate::daily_weekly(100.0, 20.0, 10.0)
            .unwrap()
            .with_noise(5.0)
            .unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let t = 6.0 * HOUR_S;
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| rate.rate_at(t, &mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / f64::from(n);
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / f64::from(n)).sqrt();
        // Standard errors: mean 5/√n ≈ 0.016, sd 5/√(2n) ≈ 0.011.
        assert!((mean - rate.mean_rate_at(t)).abs() < 0.08, "mean {mean}");
        assert!((sd - 5.0).abs() < 0.06, "sd {sd}");

        let dim = ArrivalRate::new(0.0, vec![], 1.0).unwrap();
        assert!((0..10_000).all(|_| dim.rate_at(0.0, &mut rng) >= 0.0));
        let trough = ArrivalRate::daily_weekly(1.0, 3.0, 0.0).unwrap();
        assert_eq!(trough.mean_rate_at(DAY_S / 2.0), 0.0, "clamped at 0");
    }

    #[test]
    fn daily_weekly_peaks_at_zero_phase_and_bad_parameters_are_refused() {
        let rate = ArrivalRate::daily_weekly(10.0, 3.0, 1.0).unwrap();
        assert!((rate.mean_rate_at(0.0) - 14.0).abs() < 1e-12);
        assert!((rate.mean_rate_at(7.0 * DAY_S) - 14.0).abs() < 1e-9);
        assert!((rate.peak_rate() - 14.0).abs() < 1e-12);
        let half = rate.mean_rate_at(DAY_S / 2.0);
        assert!(
            (half - (10.0 - 3.0 + (TAU / 14.0).cos())).abs() < 1e-12,
            "{half}"
        );

        assert!(ArrivalRate::daily_weekly(-1.0, 0.0, 0.0).is_err());
        assert!(ArrivalRate::daily_weekly(f64::NAN, 0.0, 0.0).is_err());
        assert!(ArrivalRate::daily_weekly(1.0, f64::INFINITY, 0.0).is_err());
        assert!(rate.clone().with_noise(-0.1).is_err());
        let bad_freq = Harmonic {
            amplitude: 1.0,
            frequency_hz: -1.0,
            phase: 0.0,
        };
        assert!(matches!(
            ArrivalRate::new(1.0, vec![bad_freq], 0.0),
            Err(ModelError::InvalidParameter {
                name: "frequency_hz",
                ..
            })
        ));
    }
}
