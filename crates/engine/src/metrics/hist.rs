//! A lock-free histogram of non-negative values on logarithmic buckets: four buckets per power
//! of two (each at most 19 % wide), recorded with one relaxed atomic add, read as percentiles
//! by interpolating inside the bucket that holds the rank. Each thread records into its own row
//! ([`super::shard`]); reads add the rows up.

use super::shard::{self, Padded, SHARDS};
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets per power of two.
const SUB: usize = 4;
/// Values below this are exact (one bucket each).
const LINEAR: u64 = 8;
/// 0..8 exact, then 4 buckets per power of two from 8 up to 2^63.
pub const BUCKETS: usize = LINEAR as usize + (64 - 3) * SUB;

/// One thread's counts and sum (kept on cache lines of their own: [`Padded`]).
struct Row {
    counts: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

pub struct Histogram {
    rows: Box<[Padded<Row>; SHARDS]>,
}

impl Default for Histogram {
    fn default() -> Self {
        let row = || Row { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) };
        Histogram { rows: Box::new(std::array::from_fn(|_| Padded(row()))) }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("count", &self.count()).finish()
    }
}

/// The bucket of `v`.
pub fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let log = 63 - v.leading_zeros() as usize; // >= 3
    let sub = ((v >> (log - 2)) & 3) as usize; // the two bits after the leading one
    LINEAR as usize + (log - 3) * SUB + sub
}

/// The smallest value of bucket `i`, and the smallest of the next one.
pub fn bounds(i: usize) -> (u64, u64) {
    if i < LINEAR as usize {
        return (i as u64, i as u64 + 1);
    }
    let k = i - LINEAR as usize;
    let log = k / SUB + 3;
    let sub = (k % SUB) as u64;
    let lo = (1u64 << log) + (sub << (log - 2));
    let hi = lo.saturating_add(1u64 << (log - 2));
    (lo, hi)
}

impl Histogram {
    pub fn record(&self, v: u64) {
        let row = &self.rows[shard::index()].0;
        row.counts[bucket(v)].fetch_add(1, Ordering::Relaxed);
        row.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.snapshot().iter().sum()
    }

    pub fn sum(&self) -> u64 {
        self.rows.iter().map(|r| r.0.sum.load(Ordering::Relaxed)).sum()
    }

    /// The counts per bucket (a consistent enough copy for reading).
    pub fn snapshot(&self) -> Vec<u64> {
        let mut out = vec![0u64; BUCKETS];
        for row in self.rows.iter() {
            for (o, c) in out.iter_mut().zip(&row.0.counts) {
                *o += c.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// The value at quantile `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        quantile(&self.snapshot(), q)
    }
}

/// How many of the values counted in `counts` are at most `v` (exact at bucket bounds).
pub fn count_below(counts: &[u64], v: u64) -> u64 {
    counts[..bucket(v.saturating_add(1)).min(counts.len())].iter().sum()
}

/// The value at quantile `q` of bucket counts: the rank's bucket, interpolated linearly.
pub fn quantile(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let (lo, hi) = bounds(i);
            if hi - lo <= 1 {
                return lo as f64;
            }
            let within = (rank - seen as f64) / c as f64;
            return lo as f64 + within * (hi - lo) as f64;
        }
        seen += c;
    }
    bounds(counts.len() - 1).0 as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket(v);
            assert!(b < BUCKETS, "{v}");
            assert!(b >= last, "{v}");
            last = b;
            let (lo, hi) = bounds(b);
            assert!(lo <= v && (v < hi || hi == u64::MAX), "{v} in {lo}..{hi}");
        }
    }

    /// Percentiles of known values are within a bucket's width (19 %).
    #[test]
    fn percentiles_of_known_values() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile(q);
            assert!((got - want).abs() / want < 0.1, "p{q}: {got} vs {want}");
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum(), 500_500);
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
        let one = Histogram::default();
        one.record(3);
        assert_eq!(one.quantile(0.99), 3.0);
    }
}
