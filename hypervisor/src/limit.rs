//! Per-guest rate limits: token buckets refilled by the monotonic clock.
//!
//! A guest may burst up to a second's worth, then gets its rate; what it
//! sends beyond that is dropped and counted (frames, console bytes) or
//! ignored (notifications whose work happens anyway later). No floating
//! point: tokens are kept in units of 1/1e9, refilled with integer math.

/// One rate limit. `rate == 0` means unlimited.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens per second (and the burst: one second's worth).
    rate: u64,
    /// Tokens × 1e9 (so each nanosecond refills `rate` units).
    units: u128,
    last_ns: u64,
    /// Tokens refused so far.
    pub refused: u64,
}

const SCALE: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (0: unlimited).
    pub const fn new(rate: u64) -> Self {
        Self { rate, units: rate as u128 * SCALE, last_ns: 0, refused: 0 }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// [`TokenBucket::take`] at the time `clock` tells, read only if this
    /// bucket has a limit.
    pub fn take_by(&mut self, clock: impl FnOnce() -> u64, n: u64) -> bool {
        self.rate == 0 || self.take(clock(), n)
    }

    /// Takes `n` tokens at time `now_ns` if there are enough; otherwise
    /// takes none, counts them as refused and returns false.
    pub fn take(&mut self, now_ns: u64, n: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let full = self.rate as u128 * SCALE;
        if now_ns > self.last_ns {
            let refill = ((now_ns - self.last_ns) as u128).saturating_mul(self.rate as u128);
            self.units = self.units.saturating_add(refill).min(full);
            self.last_ns = now_ns;
        }
        let want = (n as u128).saturating_mul(SCALE);
        if self.units >= want {
            self.units -= want;
            true
        } else {
            self.refused += n;
            false
        }
    }
}

/// A guest's limits, as the manifest sets them (per second; 0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub nic_packets: u64,
    pub nic_bytes: u64,
    pub console_bytes: u64,
    pub notifications: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: u64 = 1_000_000_000;

    #[test]
    fn bursts_a_second_then_gives_the_rate() {
        let mut b = TokenBucket::new(100);
        assert!((0..100).all(|_| b.take(0, 1)), "a full second's burst");
        assert!(!b.take(0, 1));
        assert_eq!(b.refused, 1);
        // 10 ms later: one more token.
        assert!(b.take(S / 100, 1));
        assert!(!b.take(S / 100, 1));
        // Over ten seconds the rate holds, whatever the call pattern.
        let mut got = 0;
        for ms in 1..=10_000u64 {
            while b.take(S / 100 + ms * 1_000_000, 7) {
                got += 7;
            }
        }
        assert!((990..=1000).contains(&got), "{got}");
        // A long pause refills to the burst, not beyond.
        assert!(b.take(1000 * S, 100) && !b.take(1000 * S, 1));
    }

    #[test]
    fn unlimited_and_huge_values_never_overflow() {
        let mut b = TokenBucket::new(0);
        assert!(b.take(0, u64::MAX) && b.take(u64::MAX, u64::MAX));
        let mut b = TokenBucket::new(u64::MAX);
        assert!(b.take(u64::MAX, u64::MAX));
        assert!(!b.take(0, 1), "time going backwards refills nothing and breaks nothing");
        let mut b = TokenBucket::new(10);
        assert!(!b.take(0, 11), "more than the burst at once is refused");
        assert!(b.take(0, 10));
    }
}
