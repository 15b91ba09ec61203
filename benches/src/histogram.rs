//! A log-linear histogram of latencies, in nanoseconds.
//!
//! Values below 2^[`PRECISION_BITS`] have a bucket each; above that, every
//! power of two is split into 2^(`PRECISION_BITS` − 1) equal buckets, so a
//! reported percentile is at most 1/128 (0.8 %) above the true value and
//! never below it. Recording is one index computation and an increment; the
//! whole `u64` range fits in about 7,400 buckets (58 KiB).
//!
//! ```text
//! value v < 256:      bucket v
//! value v ≥ 256:      e = msb(v) − 7          (so v >> e is in 128..256)
//!                     bucket = 128·e + (v >> e)
//! ```

use std::time::Duration;

/// Significant bits kept per value: the relative error is below
/// 2^−(PRECISION_BITS − 1).
pub const PRECISION_BITS: u32 = 8;

const LINEAR: u64 = 1 << PRECISION_BITS;
const HALF: u64 = LINEAR / 2;
/// Buckets for the whole `u64` range.
const BUCKETS: usize = ((64 - PRECISION_BITS as usize) * HALF as usize) + LINEAR as usize;

/// Counts of values in log-linear buckets, with exact min, max and sum.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket that holds `value`.
fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb + 1 - PRECISION_BITS;
    // (value >> shift) is in HALF..LINEAR.
    (u64::from(shift) * HALF + (value >> shift)) as usize
}

/// The smallest and largest value of bucket `index`.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < LINEAR {
        return (index, index);
    }
    let shift = index / HALF - 1;
    let mantissa = index - shift * HALF;
    let low = mantissa << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` occurrences of `value`.
    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        if let Some(c) = self.counts.get_mut(bucket_of(value)) {
            *c = c.saturating_add(count);
        }
        self.total = self.total.saturating_add(count);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum = self
            .sum
            .saturating_add(u128::from(value) * u128::from(count));
    }

    /// Records a duration in nanoseconds (saturating at `u64::MAX`).
    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records `count` occurrences of a duration.
    pub fn record_duration_n(&mut self, d: Duration, count: u64) {
        self.record_n(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), count);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.total = self.total.saturating_add(other.total);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The smallest value recorded.
    pub fn min(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.min)
    }

    /// The largest value recorded.
    pub fn max(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.max)
    }

    /// The arithmetic mean.
    pub fn mean(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at quantile `q` (0.0 to 1.0): the smallest recorded value
    /// such that at least `q` of all values are at or below it, reported
    /// as the upper edge of its bucket (clamped to the maximum recorded).
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the value asked for, 1-based: ceil(q · n), at least 1.
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                let (_, high) = bucket_range(index);
                return Some(high.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// [`Histogram::quantile`] as a duration.
    pub fn quantile_duration(&self, q: f64) -> Option<Duration> {
        self.quantile(q).map(Duration::from_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut expected_low = 0u64;
        for index in 0..BUCKETS {
            let (low, high) = bucket_range(index);
            assert_eq!(
                low, expected_low,
                "bucket {index} starts where the last ended"
            );
            assert!(high >= low);
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(high), index);
            if high == u64::MAX {
                assert_eq!(index, BUCKETS - 1, "the last bucket ends the range");
                return;
            }
            expected_low = high + 1;
        }
        panic!("the buckets do not reach u64::MAX");
    }

    #[test]
    fn relative_error_is_below_one_in_128() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            for value in [v, v + 1, v * 3 / 2, v.saturating_mul(2) - 1] {
                let (low, high) = bucket_range(bucket_of(value));
                assert!(low <= value && value <= high);
                let width = (high - low) as f64;
                assert!(
                    width / (low.max(1) as f64) <= 1.0 / 128.0,
                    "bucket of {value}: {low}..={high}"
                );
            }
            v = v * 2 + 1;
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 0..200 {
            h.record(v);
        }
        assert_eq!(h.len(), 200);
        assert_eq!(h.min(), Some(0));
        assert_eq!(h.max(), Some(199));
        assert_eq!(h.quantile(0.0), Some(0));
        // Rank ceil(0.5 · 200) = 100: the 100th value, 99.
        assert_eq!(h.quantile(0.5), Some(99));
        assert_eq!(h.quantile(0.99), Some(197));
        assert_eq!(h.quantile(1.0), Some(199));
        assert_eq!(h.mean(), Some(99.5));
    }

    #[test]
    fn percentiles_of_a_uniform_range_are_within_the_precision() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1_000);
        }
        for (q, exact) in [
            (0.5, 50_000_000u64),
            (0.99, 99_000_000),
            (0.999, 99_900_000),
        ] {
            let got = h.quantile(q).expect("not empty");
            assert!(got >= exact, "q{q}: {got} below {exact}");
            assert!(
                (got - exact) as f64 / exact as f64 <= 1.0 / 128.0,
                "q{q}: {got} too far above {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(100_000_000));
    }

    #[test]
    fn a_single_value_is_every_percentile() {
        let mut h = Histogram::new();
        h.record(123_456_789);
        for q in [0.0, 0.5, 0.99, 0.999, 1.0] {
            assert_eq!(h.quantile(q), Some(123_456_789), "q{q}");
        }
    }

    #[test]
    fn an_empty_histogram_has_no_percentiles() {
        let h = Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.min(), None);
        assert_eq!(h.max(), None);
        assert_eq!(h.mean(), None);
    }

    #[test]
    fn weighted_records_and_tail_percentiles() {
        let mut h = Histogram::new();
        // 998 fast values, 2 slow ones: p99 is fast, p99.9 is slow.
        h.record_n(1_000, 998);
        h.record_n(5_000_000, 2);
        assert_eq!(h.len(), 1_000);
        let p99 = h.quantile(0.99).expect("not empty");
        assert!((1_000..=1_000 + 1_000 / 128).contains(&p99), "{p99}");
        let p999 = h.quantile(0.999).expect("not empty");
        assert!(
            (5_000_000..=5_000_000 + 5_000_000 / 128).contains(&p999),
            "{p999}"
        );
        h.record_n(7, 0);
        assert_eq!(h.len(), 1_000, "a zero count records nothing");
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut all = Histogram::new();
        for v in 0..5_000u64 {
            let value = v * v;
            if v % 3 == 0 {
                a.record(value);
            } else {
                b.record(value);
            }
            all.record(value);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let mut empty = Histogram::new();
        empty.merge(&Histogram::new());
        assert!(empty.is_empty());
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        h.record(0);
        h.record_duration(Duration::MAX);
        assert_eq!(h.max(), Some(u64::MAX));
        assert_eq!(h.quantile(1.0), Some(u64::MAX));
        assert_eq!(h.quantile(f64::NAN), Some(u64::MAX));
        assert_eq!(h.quantile(-1.0), Some(0));
    }
}
