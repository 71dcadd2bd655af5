//! Heavy hitters: a Count-Min sketch (Cormode & Muthukrishnan 2005) plus a small candidate
//! list of the `k` values with the largest estimates.
//!
//! Written here because no maintained crate offers a *mergeable* CMS + top-k pair (the
//! existing ones either cannot merge or keep an unbounded exact map). Width
//! `w = ⌈e/ε⌉`, depth `d = ⌈ln(1/δ)⌉`: an estimate never undershoots, and overshoots the
//! true count by more than εN with probability at most δ (N = number of inputs).
//!
//! Merging adds the tables cell by cell (the merged table is exactly the table of the
//! concatenated input) and re-ranks the union of both candidate lists against it.

use ferrite_core::Timestamp;

use super::{Accumulator, stable_hash};
use crate::datum::Datum;

/// Count-Min sketch with top-`k` candidates.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HeavyHitters {
    width: usize,
    depth: usize,
    /// `depth` rows of `width` counters, row-major.
    table: Vec<u32>,
    /// Total inputs (N).
    total: u64,
    k: usize,
    /// Up to `k` values with their latest estimates, unordered; `k` is small (≤ a few
    /// hundred), so a linear scan beats a heap plus index.
    candidates: Vec<(Datum, u64)>,
}

impl HeavyHitters {
    /// A sketch reporting `k` values with additive error `epsilon`·N at probability
    /// `1 − delta`. Parameters are clamped into sane ranges.
    pub fn new(k: usize, epsilon: f64, delta: f64) -> Self {
        let epsilon = epsilon.clamp(1e-6, 0.5);
        let delta = delta.clamp(1e-9, 0.5);
        let width = (std::f64::consts::E / epsilon).ceil() as usize;
        let depth = ((1.0 / delta).ln().ceil() as usize).max(1);
        Self {
            width,
            depth,
            table: vec![0; width * depth],
            total: 0,
            k: k.max(1),
            candidates: Vec::with_capacity(k.max(1)),
        }
    }

    /// Number of inputs seen.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Row `i`'s column for a hash: double hashing `h1 + i·h2` (Kirsch & Mitzenmacher),
    /// which keeps the CMS bound with two independent halves of one 64-bit hash.
    #[inline]
    fn column(&self, h: u64, row: usize) -> usize {
        let h1 = h as u32 as u64;
        let h2 = (h >> 32) | 1;
        (h1.wrapping_add((row as u64).wrapping_mul(h2)) % self.width as u64) as usize
    }

    fn estimate_hash(&self, h: u64) -> u64 {
        (0..self.depth)
            .map(|row| u64::from(self.table[row * self.width + self.column(h, row)]))
            .min()
            .unwrap_or(0)
    }

    /// The estimated count of `value` (never below the true count).
    pub fn estimate(&self, value: &Datum) -> u64 {
        self.estimate_hash(stable_hash(value))
    }

    fn offer(&mut self, value: &Datum, est: u64) {
        if let Some(slot) = self.candidates.iter_mut().find(|(v, _)| v == value) {
            slot.1 = est;
            return;
        }
        if self.candidates.len() < self.k {
            self.candidates.push((value.clone(), est));
            return;
        }
        if let Some((i, _)) = self
            .candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, c))| *c)
            .filter(|(_, (_, c))| est > *c)
        {
            self.candidates[i] = (value.clone(), est);
        }
    }

    /// The top values, largest estimate first (ties by value).
    pub fn top(&self) -> Vec<(Datum, u64)> {
        let mut top = self.candidates.clone();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.total_cmp(&b.0)));
        top
    }
}

impl Accumulator for HeavyHitters {
    fn update(&mut self, _time: Timestamp, value: &Datum) {
        if value.is_null() {
            return;
        }
        let h = stable_hash(value);
        let mut est = u64::MAX;
        for row in 0..self.depth {
            let i = row * self.width + self.column(h, row);
            self.table[i] = self.table[i].saturating_add(1);
            est = est.min(u64::from(self.table[i]));
        }
        self.total += 1;
        self.offer(value, est);
    }

    fn merge(&mut self, other: &Self) {
        if other.width != self.width || other.depth != self.depth {
            return;
        }
        for (a, b) in self.table.iter_mut().zip(&other.table) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        let mut pool: Vec<Datum> = self.candidates.drain(..).map(|(v, _)| v).collect();
        for (v, _) in &other.candidates {
            if !pool.contains(v) {
                pool.push(v.clone());
            }
        }
        let mut ranked: Vec<(Datum, u64)> = pool
            .into_iter()
            .map(|v| {
                let e = self.estimate(&v);
                (v, e)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.total_cmp(&b.0)));
        ranked.truncate(self.k);
        self.candidates = ranked;
    }

    /// `[{"value": v, "count": estimate}, ...]`, largest first.
    fn finish(&self) -> Datum {
        Datum::Json(serde_json::Value::Array(
            self.top()
                .into_iter()
                .map(|(v, c)| serde_json::json!({"value": v.into_json(), "count": c}))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn t0() -> Timestamp {
        Timestamp::from_nanos(0)
    }

    /// A Zipf(1.1)-like stream over 5,000 values, fed as two halves merged: no estimate
    /// undershoots; the fraction overshooting by more than εN stays within δ (with slack for
    /// sampling noise); the true top 5 are reported in order.
    #[test]
    fn cms_overestimate_bound_and_top_k() {
        let (eps, delta) = (0.002, 0.01);
        let mut rng = StdRng::seed_from_u64(11);
        let weights: Vec<f64> = (1..=5000).map(|r| 1.0 / f64::powf(r as f64, 1.1)).collect();
        let total_w: f64 = weights.iter().sum();
        let cdf: Vec<f64> = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total_w;
                Some(*acc)
            })
            .collect();
        let n = 200_000;
        let mut truth: HashMap<i64, u64> = HashMap::new();
        let mut a = HeavyHitters::new(10, eps, delta);
        let mut b = HeavyHitters::new(10, eps, delta);
        for i in 0..n {
            let u: f64 = rng.random();
            let v = cdf.partition_point(|c| *c < u) as i64;
            *truth.entry(v).or_default() += 1;
            if i % 2 == 0 { &mut a } else { &mut b }.update(t0(), &Datum::Int(v));
        }
        a.merge(&b);
        assert_eq!(a.total(), n);
        let bound = (eps * n as f64) as u64;
        let mut violations = 0;
        for v in 0..5000i64 {
            let t = truth.get(&v).copied().unwrap_or(0);
            let e = a.estimate(&Datum::Int(v));
            assert!(e >= t, "undershoot for {v}: {e} < {t}");
            if e - t > bound {
                violations += 1;
            }
        }
        assert!(
            violations as f64 <= 2.0 * delta * 5000.0,
            "{violations} violations"
        );
        let top: Vec<i64> = a
            .top()
            .iter()
            .take(5)
            .map(|(d, _)| match d {
                Datum::Int(i) => *i,
                _ => -1,
            })
            .collect();
        assert_eq!(top, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn finish_lists_values_with_counts() {
        let mut h = HeavyHitters::new(2, 0.01, 0.01);
        for v in ["a", "b", "a", "c", "a", "b"] {
            h.update(t0(), &v.into());
        }
        assert_eq!(
            h.finish().to_json(),
            serde_json::json!([{"value": "a", "count": 3}, {"value": "b", "count": 2}])
        );
    }
}
