//! Time without hypercalls: the hypervisor maps one read-only page at
//! [`crate::layout::TIME_PAGE`] into every guest, holding a [`TimeInfo`].
//! Guests read the TSC themselves and convert with it; the values never
//! change after boot, so no retry loop is needed.

/// The record at the start of the time page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TimeInfo {
    /// [`TIME_MAGIC`].
    pub magic: u64,
    /// TSC ticks per second, calibrated at boot.
    pub tsc_hz: u64,
    /// TSC value at the monotonic clock's zero (hypervisor boot).
    pub tsc_base: u64,
    /// Wall-clock time at `tsc_base`, in nanoseconds since the Unix epoch.
    pub boot_wall_ns: u64,
}

crate::record::shared_record!(TimeInfo { magic, tsc_hz, tsc_base, boot_wall_ns });

pub const TIME_MAGIC: u64 = u64::from_le_bytes(*b"HVTIME01");
pub const NS_PER_SEC: u64 = 1_000_000_000;

impl TimeInfo {
    /// The record for a TSC running at `tsc_hz`, zero at `tsc_base`.
    pub fn new(tsc_hz: u64, tsc_base: u64, boot_wall_ns: u64) -> Self {
        Self { magic: TIME_MAGIC, tsc_hz: tsc_hz.clamp(1, 1 << 40), tsc_base, boot_wall_ns }
    }

    /// Nanoseconds since boot at TSC value `tsc` (0 before the base).
    /// Exact, with two 64-bit divisions (`tsc_hz` < 2^40 keeps
    /// `rem * 1e9` in range).
    pub fn ns(&self, tsc: u64) -> u64 {
        let hz = self.tsc_hz.clamp(1, 1 << 40);
        let delta = tsc.saturating_sub(self.tsc_base);
        (delta / hz).saturating_mul(NS_PER_SEC).saturating_add((delta % hz) * NS_PER_SEC / hz)
    }

    /// The TSC value at `ns` nanoseconds since boot (saturating).
    pub fn tsc(&self, ns: u64) -> u64 {
        let ticks = (ns as u128 * self.tsc_hz as u128) / NS_PER_SEC as u128;
        (self.tsc_base as u128 + ticks).min(u64::MAX as u128) as u64
    }
}

/// Event bits in the per-guest event page at [`crate::layout::EVENT_PAGE`]
/// (a `u64` at offset 0). The hypervisor sets them; the guest clears the
/// ones it handled with an atomic AND.
pub mod events {
    /// A `block` deadline passed.
    pub const TIMER: u64 = 1 << 0;
    /// Frames arrived in the vNIC's RX ring.
    pub const NET_RX: u64 = 1 << 1;
    /// The hypervisor took frames from a vNIC TX ring that was full: there
    /// is room again (a guest that found its ring full may block until
    /// this, rather than spin; its head frame may have waited for a full
    /// receiver, see docs/abi.md).
    pub const NET_TX: u64 = 1 << 2;
    /// The guest is a new copy (a clone, ABI 7): its name and addresses in
    /// the shared page (ABI 9) are its own now, and the generation
    /// word (`layout::EVENT_GENERATION_OFFSET`) grew. Before it sends
    /// anything it re-reads them and re-keys whatever it drew from a
    /// random seed, which its template drew too (the libos does).
    pub const CLONED: u64 = 1 << 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways() {
        let t = TimeInfo::new(2_300_000_000, 1_000, 0);
        assert_eq!(t.ns(1_000), 0);
        assert_eq!(t.ns(0), 0, "before the base is zero, not a wrap");
        let one_sec = t.tsc(NS_PER_SEC);
        assert_eq!(one_sec, 1_000 + 2_300_000_000);
        let back = t.ns(one_sec);
        assert!(back.abs_diff(NS_PER_SEC) <= 1, "{back}");
        // A day later still within a microsecond.
        let day = 86_400 * NS_PER_SEC;
        assert!(t.ns(t.tsc(day)).abs_diff(day) <= 1);
        assert_eq!(t.tsc(u64::MAX), u64::MAX, "saturates");
        assert!(t.ns(u64::MAX) > 0);
    }

    /// The offsets are the ABI: guests read the time page through them.
    #[test]
    fn offsets_are_pinned_and_the_bytes_follow_them() {
        use core::mem::offset_of;
        assert_eq!(TimeInfo::SIZE, 32);
        assert_eq!(
            [offset_of!(TimeInfo, magic), offset_of!(TimeInfo, tsc_hz), offset_of!(TimeInfo, tsc_base), offset_of!(TimeInfo, boot_wall_ns)],
            [0, 8, 16, 24]
        );
        let t = TimeInfo::new(1_000_000_000, 7, 9);
        let b = t.to_bytes();
        assert_eq!(&b[0..8], b"HVTIME01");
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 1_000_000_000);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 9);
    }
}
