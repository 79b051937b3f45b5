//! Time without hypercalls: the TSC and the hypervisor's read-only time
//! page (`abi::time::TimeInfo`), plus sleeping through `block`.

/// The time-stamp counter (cycles; `Instant` converts it to nanoseconds).
pub use crate::sys::rdtsc;
use crate::sys::time_info as info;
use core::time::Duration;

/// A point on the guest's monotonic clock: nanoseconds since the
/// hypervisor booted, or for a guest restored from a snapshot, going on
/// from its clock when it was saved (`abi::layout::EVENT_CLOCK_OFFSET`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The end of time: blocking until it waits for an event only.
    pub const MAX: Instant = Instant(u64::MAX);

    pub fn now() -> Self {
        Instant(info().ns(rdtsc()).saturating_add_signed(crate::sys::clock_offset()))
    }

    /// The point `ns` nanoseconds into the guest's clock.
    pub const fn from_nanos(ns: u64) -> Instant {
        Instant(ns)
    }

    /// Nanoseconds on the guest's clock.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn elapsed(self) -> Duration {
        Self::now().duration_since(self)
    }

    /// Zero if `earlier` is later.
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let ns = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(ns).map(Instant)
    }

    /// `self + d`, or the end of time if that overflows.
    pub fn saturating_add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant(u64::MAX))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of time rather than wrapping.
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

/// Wall-clock time: nanoseconds since the Unix epoch.
pub fn wall_clock_ns() -> u64 {
    let i = info();
    i.boot_wall_ns.saturating_add(i.ns(rdtsc()))
}

/// Sleeps until an event is pending or `deadline` passes; returns the
/// pending event bits (see `abi::time::events`) and clears them.
pub fn block_until(deadline: Instant) -> u64 {
    let bits = crate::hypercall::block(deadline.0);
    crate::hypercall::take_events(bits)
}

/// Sleeps for at least `d` (other guests run meanwhile).
pub fn sleep(d: Duration) {
    let deadline = Instant::now().saturating_add(d);
    while Instant::now() < deadline {
        block_until(deadline);
    }
}
