//! The guest's virtual address space, as the hypervisor builds it.
//!
//! The lower half (`0 .. USER_END`) belongs to the guest; the upper half is
//! the hypervisor's, mapped supervisor-only in every address space.
//!
//! ```text
//! 0x0000_0000_0000_0000  unmapped (null guard, USER_MIN)
//! 0x0000_0000_0001_0000  image segments, where the ELF puts them (< IMAGE_END)
//! 0x0000_5000_0000_0000  heap, zero-filled on first touch (StartInfo::heap_*)
//! 0x0000_7ffe_ff00_0000  stack, zero-filled on first touch, guard page below
//! 0x0000_7fff_c000_0000  vNIC TX ring, then RX ring (ring::RING_BYTES each), read-write
//! 0x0000_7fff_e000_0000  time page, read-only, the same for all guests (time::TimeInfo)
//! 0x0000_7fff_e000_1000  event page, read-write, the guest's own (time::events)
//! 0x0000_7fff_f000_0000  start page, read-only: RawBootInfo + StartInfo + strings
//! 0x0000_8000_0000_0000  end of the guest half (USER_END)
//! ```

/// Page size used for every guest mapping.
pub const PAGE_SIZE: u64 = 4096;
/// Lowest address an image segment may use.
pub const USER_MIN: u64 = 0x1_0000;
/// Image segments must end at or below this address.
pub const IMAGE_END: u64 = 0x0000_4000_0000_0000;
/// Start of the heap region.
pub const HEAP_START: u64 = 0x0000_5000_0000_0000;
/// Top of the initial stack (exclusive); the entry `rsp`.
pub const STACK_TOP: u64 = 0x0000_7fff_0000_0000;
/// Largest stack a guest may grow; one unmapped guard page lies below it.
pub const STACK_MAX: u64 = 1 << 20;
/// The vNIC's TX ring (guest produces) and RX ring (hypervisor produces).
pub const NIC_TX_RING: u64 = 0x0000_7fff_c000_0000;
pub const NIC_RX_RING: u64 = NIC_TX_RING + 0x2_0000;
/// Offset of [`crate::NicInfo`] within the start page.
pub const NIC_INFO_OFFSET: u64 = 0x180;

/// The time page (read-only, shared by all guests).
pub const TIME_PAGE: u64 = 0x0000_7fff_e000_0000;
/// The guest's event page (read-write).
pub const EVENT_PAGE: u64 = 0x0000_7fff_e000_1000;
/// The start page: hermit-entry's `RawBootInfo` at offset 0.
pub const START_PAGE: u64 = 0x0000_7fff_f000_0000;
/// Offset of [`crate::StartInfo`] within the start page.
pub const START_INFO_OFFSET: u64 = 0x100;
/// Offset of the name and argument strings within the start page.
pub const START_STRINGS_OFFSET: u64 = 0x200;
/// Room for the name and the arguments (each NUL-terminated) in the start page.
pub const START_STRINGS_MAX: u64 = PAGE_SIZE - START_STRINGS_OFFSET;
/// Address of [`crate::StartInfo`].
pub const START_INFO: u64 = START_PAGE + START_INFO_OFFSET;
/// End of the guest half (exclusive): the first non-canonical address.
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Longest instance name (bytes).
pub const NAME_MAX: usize = 64;

// The regions are ordered and disjoint, checked at compile time.
const _: () = {
    assert!(USER_MIN < IMAGE_END);
    assert!(IMAGE_END <= HEAP_START);
    assert!(STACK_TOP - STACK_MAX - PAGE_SIZE > HEAP_START);
    assert!(STACK_TOP < NIC_TX_RING);
    assert!(NIC_RX_RING + crate::ring::RING_BYTES as u64 <= TIME_PAGE);
    assert!(NIC_INFO_OFFSET >= START_INFO_OFFSET + core::mem::size_of::<crate::StartInfo>() as u64);
    assert!(NIC_INFO_OFFSET + core::mem::size_of::<crate::NicInfo>() as u64 <= START_STRINGS_OFFSET);
    assert!(crate::ring::RING_BYTES as u64 <= NIC_RX_RING - NIC_TX_RING);
    assert!(EVENT_PAGE + PAGE_SIZE <= START_PAGE);
    assert!(START_PAGE + PAGE_SIZE <= USER_END);
    assert!(START_STRINGS_OFFSET >= START_INFO_OFFSET + core::mem::size_of::<crate::StartInfo>() as u64);
};

/// Rounds `x` up to a page boundary, or `None` on overflow.
pub const fn page_up(x: u64) -> Option<u64> {
    match x.checked_add(PAGE_SIZE - 1) {
        Some(v) => Some(v & !(PAGE_SIZE - 1)),
        None => None,
    }
}

/// Rounds `x` down to a page boundary.
pub const fn page_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_rounding() {
        assert_eq!(page_up(0), Some(0));
        assert_eq!(page_up(1), Some(4096));
        assert_eq!(page_up(4096), Some(4096));
        assert_eq!(page_up(u64::MAX), None);
        assert_eq!(page_down(8191), 4096);
    }
}
