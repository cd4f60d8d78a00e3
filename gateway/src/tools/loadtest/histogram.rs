//! Latency histogram: log buckets with 32 sub-buckets per power of two
//! (~3%), merged across connections.

use std::sync::atomic::{AtomicU64, Ordering};

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) << SUB_BITS;

/// A lock-free latency histogram in nanoseconds.
pub struct Histogram {
    pub(super) buckets: Vec<AtomicU64>,
    pub(super) max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    (((msb - SUB_BITS + 1) as usize) << SUB_BITS) + sub as usize
}

/// The largest value of a bucket.
fn bucket_high(i: usize) -> u64 {
    let (block, sub) = (i >> SUB_BITS, (i as u64) & (SUB - 1));
    if block == 0 {
        return sub;
    }
    let shift = block as u32 - 1;
    ((SUB + sub + 1) << shift) - 1
}

impl Histogram {
    /// Counts one value.
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The largest value so far.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

/// The q-quantile (0..=1) of bucket counts, as the bucket's upper bound.
pub fn quantile(counts: &[u64], q: f64, max: u64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_high(i).min(max);
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_bound_their_values() {
        for v in [0u64, 1, 31, 32, 33, 1000, 123_456, 10_000_000, u64::MAX / 2] {
            let b = bucket_of(v);
            assert!(bucket_high(b) >= v, "{v}");
            assert!(b == 0 || bucket_high(b - 1) < v, "{v}");
        }
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let c = h.counts();
        let p50 = quantile(&c, 0.5, h.max());
        assert!((500_000..=520_000).contains(&p50), "{p50}");
        assert_eq!(quantile(&c, 1.0, h.max()), 1_000_000);
    }
}
