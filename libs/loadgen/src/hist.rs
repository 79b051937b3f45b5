//! A bounded latency histogram with log-linear buckets (as HdrHistogram
//! does): values below 64 ns have a bucket each; above, every power of two
//! is split into 32 equal buckets, so a bucket is at most 1/32 (3.1%) of
//! its value wide. 1920 buckets cover all of `u64` nanoseconds in 15 KiB,
//! however many samples are recorded. Percentiles are the midpoint of the
//! bucket holding that rank (never above the exact maximum, which is kept
//! apart).
//!
//! `xtask/src/peer/net.c` has the same buckets for the Linux peer.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every u64: 2 × 32 exact ones, then 32 per power of two from 2^6 to 2^63.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Latencies in nanoseconds.
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket of `v`.
pub fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    (e - SUB_BITS + 1) as usize * SUB + sub
}

/// The lowest value of bucket `i` and its width.
pub fn bucket(i: usize) -> (u64, u64) {
    if i < 2 * SUB {
        return (i as u64, 1);
    }
    let (g, sub) = ((i / SUB) as u32, (i % SUB) as u64);
    ((SUB as u64 + sub) << (g - 1), 1 << (g - 1))
}

impl Histogram {
    pub fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS], count: 0, sum: 0, max: 0 }
    }

    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.count += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 { 0 } else { (self.sum / u128::from(self.count)) as u64 }
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket that
    /// holds the ceil(q × count)-th smallest sample; 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // ceil(x) without std's float functions.
        let x = q * self.count as f64;
        let mut rank = x as u64;
        if (rank as f64) < x {
            rank += 1;
        }
        let rank = rank.clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    /// `{"p50":..,"p90":..,"p99":..,"max":..,"mean":..}` in microseconds.
    pub fn json_us(&self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"max\":{:.1},\"mean\":{:.1}}}",
            us(self.quantile(0.5)),
            us(self.quantile(0.9)),
            us(self.quantile(0.99)),
            us(self.max),
            us(self.mean())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_every_u64() {
        assert_eq!(index(0), 0);
        assert_eq!(index(63), 63);
        assert_eq!(index(64), 64);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, width) = bucket(i);
            assert_eq!(low, next, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + (width - 1)), i);
            // At most 1/32 of the value wide.
            assert!(width == 1 || width * 32 <= low, "bucket {i}: {low} + {width}");
            next = low.wrapping_add(width);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn quantiles_are_within_a_bucket_and_never_above_the_maximum() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.mean(), 500_500);
        let within = |got: u64, want: u64| got.abs_diff(want) * 32 <= want;
        assert!(within(h.quantile(0.5), 500_000), "{}", h.quantile(0.5));
        assert!(within(h.quantile(0.99), 990_000), "{}", h.quantile(0.99));
        assert_eq!(h.quantile(1.0), 1_000_000, "never above the maximum");
        let json = h.json_us();
        let p90 = h.quantile(0.9);
        assert!((870_000..930_000).contains(&p90), "{p90}");
        assert_eq!(
            json,
            format!(
                "{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"max\":1000.0,\"mean\":500.5}}",
                h.quantile(0.5) as f64 / 1000.0,
                p90 as f64 / 1000.0,
                h.quantile(0.99) as f64 / 1000.0
            )
        );
    }
}
