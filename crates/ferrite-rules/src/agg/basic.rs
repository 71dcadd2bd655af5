//! The exact aggregates: count, sum, min/max, mean and standard deviation (Welford's online
//! moments with Chan et al.'s parallel merge), first/last by event time.

use ferrite_core::Timestamp;

use super::Accumulator;
use crate::datum::Datum;

/// Number of non-null inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Count(u64);

impl Accumulator for Count {
    #[inline]
    fn update(&mut self, _time: Timestamp, value: &Datum) {
        if !value.is_null() {
            self.0 += 1;
        }
    }

    fn merge(&mut self, other: &Self) {
        self.0 += other.0;
    }

    fn finish(&self) -> Datum {
        Datum::Int(i64::try_from(self.0).unwrap_or(i64::MAX))
    }
}

/// Sum of numeric inputs: exact `i64` while every input is an integer and the sum fits,
/// `f64` otherwise; `NULL` when there was no numeric input.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sum {
    /// How many numeric inputs were added (`NULL` result when zero).
    n: u64,
    /// Exact integer sum, valid while `all_int`.
    int: i64,
    /// Float sum of every input, always maintained.
    float: f64,
    /// Whether every input so far was an `Int` and `int` did not overflow.
    all_int: bool,
}

impl Sum {
    fn add_int(&mut self, i: i64) {
        if self.n == 0 {
            self.all_int = true;
        }
        if self.all_int {
            match self.int.checked_add(i) {
                Some(s) => self.int = s,
                None => self.all_int = false,
            }
        }
    }
}

impl Accumulator for Sum {
    #[inline]
    fn update(&mut self, _time: Timestamp, value: &Datum) {
        match value {
            Datum::Int(i) => {
                self.add_int(*i);
                self.float += *i as f64;
            }
            Datum::Float(f) => {
                self.all_int = false;
                self.float += f;
            }
            _ => return,
        }
        self.n += 1;
    }

    fn merge(&mut self, other: &Self) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        self.all_int = self.all_int && other.all_int;
        if self.all_int {
            match self.int.checked_add(other.int) {
                Some(s) => self.int = s,
                None => self.all_int = false,
            }
        }
        self.float += other.float;
        self.n += other.n;
    }

    fn finish(&self) -> Datum {
        match (self.n, self.all_int) {
            (0, _) => Datum::Null,
            (_, true) => Datum::Int(self.int),
            (_, false) => Datum::Float(self.float),
        }
    }
}

/// Minimum or maximum by [`Datum::total_cmp`] (numbers by value, then strings).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Extreme {
    /// The current extreme, `None` before the first non-null input.
    best: Option<Datum>,
    /// `true` for MAX, `false` for MIN.
    max: bool,
}

impl Extreme {
    /// A MIN accumulator.
    pub fn min() -> Self {
        Self {
            best: None,
            max: false,
        }
    }

    /// A MAX accumulator.
    pub fn max() -> Self {
        Self {
            best: None,
            max: true,
        }
    }

    fn offer(&mut self, value: &Datum) {
        let better = match &self.best {
            None => true,
            Some(b) => {
                let ord = value.total_cmp(b);
                if self.max { ord.is_gt() } else { ord.is_lt() }
            }
        };
        if better {
            // Reuse the float slot without reallocating in the common numeric case.
            match (&mut self.best, value) {
                (Some(Datum::Float(b)), Datum::Float(v)) => *b = *v,
                _ => self.best = Some(value.clone()),
            }
        }
    }
}

impl Accumulator for Extreme {
    #[inline]
    fn update(&mut self, _time: Timestamp, value: &Datum) {
        if !value.is_null() {
            self.offer(value);
        }
    }

    fn merge(&mut self, other: &Self) {
        if let Some(b) = &other.best {
            self.offer(b);
        }
    }

    fn finish(&self) -> Datum {
        self.best.clone().unwrap_or(Datum::Null)
    }
}

/// Which statistic a [`Moments`] accumulator reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum MomentStat {
    Mean,
    StddevSamp,
    StddevPop,
}

/// Count, mean and sum of squared deviations (Welford), merged with Chan et al.'s formula;
/// numerically stable where the naive Σx² − (Σx)²/n cancels catastrophically.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    n: u64,
    mean: f64,
    /// Σ (x − mean)².
    m2: f64,
    stat: MomentStat,
}

impl Moments {
    fn new(stat: MomentStat) -> Self {
        Self {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            stat,
        }
    }

    /// Reports the mean.
    pub fn mean() -> Self {
        Self::new(MomentStat::Mean)
    }

    /// Reports the sample standard deviation.
    pub fn stddev_samp() -> Self {
        Self::new(MomentStat::StddevSamp)
    }

    /// Reports the population standard deviation.
    pub fn stddev_pop() -> Self {
        Self::new(MomentStat::StddevPop)
    }

    /// Number of numeric inputs.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Add one number.
    #[inline]
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }
}

impl Accumulator for Moments {
    #[inline]
    fn update(&mut self, _time: Timestamp, value: &Datum) {
        if let Some(x) = value.as_f64() {
            self.push(x);
        }
    }

    fn merge(&mut self, other: &Self) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            let stat = self.stat;
            *self = *other;
            self.stat = stat;
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        let (na, nb, nf) = (self.n as f64, other.n as f64, n as f64);
        self.mean += delta * nb / nf;
        self.m2 += other.m2 + delta * delta * na * nb / nf;
        self.n = n;
    }

    fn finish(&self) -> Datum {
        match self.stat {
            MomentStat::Mean if self.n > 0 => Datum::Float(self.mean),
            MomentStat::StddevSamp if self.n > 1 => {
                Datum::Float((self.m2 / (self.n - 1) as f64).max(0.0).sqrt())
            }
            MomentStat::StddevPop if self.n > 0 => {
                Datum::Float((self.m2 / self.n as f64).max(0.0).sqrt())
            }
            _ => Datum::Null,
        }
    }
}

/// The input with the smallest (FIRST) or largest (LAST) event time. On equal times FIRST
/// keeps the earlier arrival and LAST takes the later one; a merge treats `self` as the
/// earlier arrival.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FirstLast {
    best: Option<(Timestamp, Datum)>,
    last: bool,
}

impl FirstLast {
    /// A FIRST accumulator.
    pub fn first() -> Self {
        Self {
            best: None,
            last: false,
        }
    }

    /// A LAST accumulator.
    pub fn last() -> Self {
        Self {
            best: None,
            last: true,
        }
    }

    fn offer(&mut self, time: Timestamp, value: &Datum) {
        let take = match &self.best {
            None => true,
            Some((t, _)) => {
                if self.last {
                    time >= *t
                } else {
                    time < *t
                }
            }
        };
        if take {
            self.best = Some((time, value.clone()));
        }
    }
}

impl Accumulator for FirstLast {
    #[inline]
    fn update(&mut self, time: Timestamp, value: &Datum) {
        if !value.is_null() {
            self.offer(time, value);
        }
    }

    fn merge(&mut self, other: &Self) {
        if let Some((t, v)) = &other.best {
            self.offer(*t, v);
        }
    }

    fn finish(&self) -> Datum {
        self.best.as_ref().map_or(Datum::Null, |(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ns: i64) -> Timestamp {
        Timestamp::from_nanos(ns)
    }

    #[test]
    fn count_and_sum_ignore_nulls_and_keep_integers_exact() {
        let mut c = Count::default();
        let mut s = Sum::default();
        for v in [
            Datum::Int(2),
            Datum::Null,
            Datum::Int(i64::MAX - 5),
            Datum::Str("x".into()),
        ] {
            c.update(t(0), &v);
            s.update(t(0), &v);
        }
        assert_eq!(c.finish(), Datum::Int(3));
        assert_eq!(s.finish(), Datum::Int(i64::MAX - 3));
        s.update(t(0), &Datum::Int(10)); // overflows i64 → falls back to float
        assert!(matches!(s.finish(), Datum::Float(f) if f > 9.2e18));
        let mut f = Sum::default();
        f.update(t(0), &Datum::Int(1));
        f.update(t(0), &Datum::Float(0.5));
        assert_eq!(f.finish(), Datum::Float(1.5));
        assert_eq!(Sum::default().finish(), Datum::Null);
    }

    #[test]
    fn min_max_order_numbers_by_value() {
        let mut lo = Extreme::min();
        let mut hi = Extreme::max();
        for v in [
            Datum::Int(3),
            Datum::Float(-1.5),
            Datum::Null,
            Datum::Int(7),
        ] {
            lo.update(t(0), &v);
            hi.update(t(0), &v);
        }
        assert_eq!(lo.finish(), Datum::Float(-1.5));
        assert_eq!(hi.finish(), Datum::Int(7));
        assert_eq!(Extreme::max().finish(), Datum::Null);
    }

    #[test]
    fn welford_is_stable_with_a_large_offset() {
        // Naive Σx² − (Σx)²/n loses every digit here; Welford keeps them.
        let mut m = Moments::stddev_samp();
        for x in [1e9 + 4.0, 1e9 + 7.0, 1e9 + 13.0, 1e9 + 16.0] {
            m.push(x);
        }
        let Datum::Float(sd) = m.finish() else {
            panic!("stddev of four numbers is a float")
        };
        assert!((sd - 30f64.sqrt()).abs() < 1e-6, "{sd}");
        let mut one = Moments::stddev_samp();
        one.push(1.0);
        assert_eq!(one.finish(), Datum::Null);
        let mut pop = Moments::stddev_pop();
        pop.push(1.0);
        pop.push(3.0);
        assert_eq!(pop.finish(), Datum::Float(1.0));
    }

    #[test]
    fn first_last_follow_event_time_not_arrival() {
        let mut first = FirstLast::first();
        let mut last = FirstLast::last();
        for (ts, v) in [(5, "b"), (1, "a"), (9, "c"), (3, "x"), (9, "d")] {
            first.update(t(ts), &v.into());
            last.update(t(ts), &v.into());
        }
        assert_eq!(first.finish(), Datum::from("a"));
        assert_eq!(last.finish(), Datum::from("d"));
    }
}
