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
    /// Units owed by [`TokenBucket::charge`]: refills pay them first.
    debt: u128,
    last_ns: u64,
    /// Tokens refused so far.
    pub refused: u64,
}

const SCALE: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (0: unlimited).
    pub const fn new(rate: u64) -> Self {
        Self { rate, units: rate as u128 * SCALE, debt: 0, last_ns: 0, refused: 0 }
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
        self.refill(now_ns);
        let want = (n as u128).saturating_mul(SCALE);
        if self.units >= want {
            self.units -= want;
            true
        } else {
            self.refused += n;
            false
        }
    }

    /// Takes `n` tokens at time `now_ns` whether or not there are enough:
    /// what is missing becomes a debt that the refill pays off before the
    /// bucket gives anything again (for work already done that must still
    /// be paid for, such as a flood's copies).
    pub fn charge(&mut self, now_ns: u64, n: u64) {
        if self.rate == 0 {
            return;
        }
        self.refill(now_ns);
        let want = (n as u128).saturating_mul(SCALE);
        let paid = want.min(self.units);
        self.units -= paid;
        self.debt = self.debt.saturating_add(want - paid);
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            let full = self.rate as u128 * SCALE;
            let mut refill = ((now_ns - self.last_ns) as u128).saturating_mul(self.rate as u128);
            let repaid = refill.min(self.debt);
            self.debt -= repaid;
            refill -= repaid;
            self.units = self.units.saturating_add(refill).min(full);
            self.last_ns = now_ns;
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
    fn a_charge_beyond_the_tokens_is_a_debt_paid_before_anything_else() {
        let mut b = TokenBucket::new(100);
        assert!(b.take(0, 1));
        // 1,000 tokens' worth of work done: 99 paid, 901 owed.
        b.charge(0, 1000);
        assert!(!b.take(0, 1));
        // 9 s refill 900: still owing one token's worth.
        assert!(!b.take(9 * S, 1));
        assert!(!b.take(9 * S + S / 100, 1), "the debt is paid first");
        assert!(b.take(9 * S + 2 * S / 100, 1));
        // A charge within the tokens is a plain take; unlimited owes nothing.
        b.charge(20 * S, 100);
        assert!(!b.take(20 * S, 1));
        let mut u = TokenBucket::new(0);
        u.charge(0, u64::MAX);
        assert!(u.take(0, u64::MAX));
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
