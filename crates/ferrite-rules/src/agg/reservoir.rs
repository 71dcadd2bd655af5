//! Uniform reservoir sampling (Vitter's Algorithm R) with an exact merge.
//!
//! Written here: the sampling crates on crates.io cannot merge two reservoirs, which panes
//! and sessions need. Merging draws each of the `k` slots from one side or the other with
//! probability proportional to how many of that side's inputs are not yet drawn (a
//! sequential hypergeometric draw), then picks uniformly inside that side's sample; the result is a
//! uniform sample without replacement of the concatenated input.

use ferrite_core::Timestamp;

use super::Accumulator;
use crate::datum::Datum;

/// SplitMix64: a tiny, well-distributed generator; reproducible from a seed, no dependency.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for n < 2^32).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A uniform sample without replacement of up to `k` non-null inputs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reservoir {
    k: usize,
    /// Inputs seen (the sample represents this many).
    seen: u64,
    sample: Vec<Datum>,
    rng: SplitMix64,
}

impl Reservoir {
    /// An empty reservoir of capacity `k` (at least 1).
    pub fn new(k: usize, seed: u64) -> Self {
        Self {
            k: k.max(1),
            seen: 0,
            sample: Vec::new(),
            rng: SplitMix64::new(seed),
        }
    }

    /// The current sample, in no particular order.
    pub fn sample(&self) -> &[Datum] {
        &self.sample
    }

    /// Inputs seen.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

impl Accumulator for Reservoir {
    fn update(&mut self, _time: Timestamp, value: &Datum) {
        if value.is_null() {
            return;
        }
        self.seen += 1;
        if self.sample.len() < self.k {
            self.sample.push(value.clone());
        } else {
            let j = self.rng.below(self.seen);
            if let Some(slot) = self.sample.get_mut(j as usize) {
                *slot = value.clone();
            }
        }
    }

    fn merge(&mut self, other: &Self) {
        if other.seen == 0 {
            return;
        }
        if self.seen == 0 {
            self.seen = other.seen;
            self.sample = other.sample.clone();
            return;
        }
        let take = self.k.min(self.sample.len() + other.sample.len());
        let mut mine = std::mem::take(&mut self.sample);
        let mut theirs = other.sample.clone();
        // Inputs of each side not yet drawn: the next slot comes from a side with probability
        // proportional to them (exactly the hypergeometric split of a uniform sample of the
        // union). Neither side can run dry early: a side with fewer than k inputs holds all
        // of them, and no side is drawn more than k times.
        let (mut rem_a, mut rem_b) = (self.seen as f64, other.seen as f64);
        let mut out = Vec::with_capacity(take);
        while out.len() < take {
            let from_a = if mine.is_empty() {
                false
            } else if theirs.is_empty() {
                true
            } else {
                self.rng.unit() * (rem_a + rem_b) < rem_a
            };
            let side = if from_a { &mut mine } else { &mut theirs };
            let i = self.rng.below(side.len() as u64) as usize;
            out.push(side.swap_remove(i));
            if from_a {
                rem_a -= 1.0;
            } else {
                rem_b -= 1.0;
            }
        }
        self.sample = out;
        self.seen += other.seen;
    }

    /// The sample as a JSON array.
    fn finish(&self) -> Datum {
        Datum::Json(serde_json::Value::Array(
            self.sample.iter().map(Datum::to_json).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        Timestamp::from_nanos(0)
    }

    /// Pearson χ² of inclusion counts against the uniform expectation; with `m` cells it has
    /// m − 1 degrees of freedom, mean m − 1 and standard deviation √(2(m − 1)).
    fn chi_square(counts: &[u64], expected: f64) -> f64 {
        counts
            .iter()
            .map(|c| (*c as f64 - expected).powi(2) / expected)
            .sum()
    }

    fn check_uniform(counts: &[u64], expected: f64) {
        let dof = (counts.len() - 1) as f64;
        let chi = chi_square(counts, expected);
        // Six standard deviations above the mean: a loose bound that a biased sampler (e.g.
        // one favouring early or late inputs) still fails by orders of magnitude.
        assert!(
            chi < dof + 6.0 * (2.0 * dof).sqrt(),
            "chi² {chi} for {dof} dof"
        );
    }

    #[test]
    fn single_stream_sample_is_uniform() {
        let (m, k, trials) = (200usize, 10usize, 4000u64);
        let mut counts = vec![0u64; m];
        for trial in 0..trials {
            let mut r = Reservoir::new(k, trial * 7 + 1);
            for i in 0..m {
                r.update(t0(), &Datum::Int(i as i64));
            }
            assert_eq!(r.sample().len(), k);
            for d in r.sample() {
                if let Datum::Int(i) = d {
                    counts[*i as usize] += 1;
                }
            }
        }
        check_uniform(&counts, (trials * k as u64) as f64 / m as f64);
    }

    /// Unequal parts (30 / 170 inputs, the first smaller than k in some trials) merged.
    #[test]
    fn merged_sample_is_uniform() {
        let (m, k, trials) = (200usize, 40usize, 3000u64);
        let mut counts = vec![0u64; m];
        for trial in 0..trials {
            let mut a = Reservoir::new(k, trial * 2 + 1);
            let mut b = Reservoir::new(k, trial * 2 + 2);
            for i in 0..m {
                let r = if i < 30 { &mut a } else { &mut b };
                r.update(t0(), &Datum::Int(i as i64));
            }
            a.merge(&b);
            assert_eq!(a.seen(), m as u64);
            assert_eq!(a.sample().len(), k);
            let mut distinct = a.sample().to_vec();
            distinct.sort_by(Datum::total_cmp);
            distinct.dedup();
            assert_eq!(distinct.len(), k, "sampling is without replacement");
            for d in a.sample() {
                if let Datum::Int(i) = d {
                    counts[*i as usize] += 1;
                }
            }
        }
        check_uniform(&counts, (trials * k as u64) as f64 / m as f64);
    }

    #[test]
    fn small_inputs_are_kept_whole() {
        let mut a = Reservoir::new(5, 1);
        let mut b = Reservoir::new(5, 2);
        a.update(t0(), &Datum::Int(1));
        b.update(t0(), &Datum::Int(2));
        b.update(t0(), &Datum::Null);
        a.merge(&b);
        let mut s = a.sample().to_vec();
        s.sort_by(Datum::total_cmp);
        assert_eq!(s, vec![Datum::Int(1), Datum::Int(2)]);
    }
}
