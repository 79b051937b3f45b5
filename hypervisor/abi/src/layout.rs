//! The guest's virtual address space, as the hypervisor builds it.
//!
//! The lower half (`0 .. USER_END`) belongs to the guest; the upper half is
//! the hypervisor's, mapped supervisor-only in every address space.
//!
//! Everything a guest gets besides its image lies in one 2 MiB window
//! (`WINDOW`) in the first GiB, and the heap starts inside it (for rings
//! up to [`WINDOW_SLOTS`] slots), so a small guest's whole address space
//! needs five or six page tables: the PML4, one PDPT, one page directory,
//! one page table for the image, one for the window, and one more once it
//! touches a big heap block (the libos keeps those `HEAP_BIG_OFFSET` into
//! the heap, still in the first GiB). The rings take the room their
//! `slots` need and the heap follows them ([`nic_rx_ring`],
//! [`heap_start`]): an idle guest's 4-slot rings leave the window nearly
//! free, and a streaming guest may have rings of up to `ring::SLOTS_MAX`
//! slots (4 MiB each).
//!
//! ```text
//! 0x0000_0000_0001_0000  image segments, where the ELF puts them (< IMAGE_END)
//! 0x0000_0000_2000_0000  WINDOW: unmapped guard page below the stack
//! 0x0000_0000_2000_1000  stack (STACK_MAX), zero-filled on first touch; grows down from STACK_TOP
//! 0x0000_0000_2010_1000  start page, read-only: RawBootInfo + StartInfo + arguments (a clone's is its template's)
//! 0x0000_0000_2010_2000  time page, read-only, the same for all guests (time::TimeInfo)
//! 0x0000_0000_2010_3000  shared page, read-write, the guest's own: event bits, vNIC ring indices, name, NicInfo
//! 0x0000_0000_2010_4000  vNIC TX ring slots (ring_slots of them), then RX ring slots
//! heap_start(ring_slots) heap (HEAP_LEN of address space), zero-filled on first touch
//!                        (0x2010_4000 without a vNIC, 0x2010_8000 with 4-slot rings)
//! 0x0000_8000_0000_0000  end of the guest half (USER_END)
//! ```
//!
//! Address space is not memory: a guest is charged only for the pages it
//! touches (and its page tables), up to its memory limit.

/// Page size used for every guest mapping.
pub const PAGE_SIZE: u64 = 4096;
/// Lowest address an image segment may use.
pub const USER_MIN: u64 = 0x1_0000;
/// The 2 MiB window that holds the stack, the fixed pages, the rings and
/// the start of the heap.
pub const WINDOW: u64 = 0x2000_0000;
/// Image segments must end at or below this address.
pub const IMAGE_END: u64 = WINDOW;
/// Largest stack a guest may grow; one unmapped guard page lies below it.
pub const STACK_MAX: u64 = 1 << 20;
/// Top of the initial stack (exclusive); the entry `rsp`.
pub const STACK_TOP: u64 = WINDOW + PAGE_SIZE + STACK_MAX;
/// The start page.
pub const START_PAGE: u64 = STACK_TOP;
/// The time page (read-only, shared by all guests).
pub const TIME_PAGE: u64 = START_PAGE + PAGE_SIZE;
/// The guest's shared page (read-write): the event bits at offset 0 (see
/// `time::events`), the vNIC rings' indices at [`NIC_TX_INDICES`] and
/// [`NIC_RX_INDICES`], its identity at [`EVENT_NIC_OFFSET`] and
/// [`EVENT_NAME_OFFSET`].
pub const EVENT_PAGE: u64 = TIME_PAGE + PAGE_SIZE;
/// Offset in the shared page of the generation word (`u64`, ABI 7): 0
/// for a guest that booted, one more than its template's for a clone
/// (`time::events::CLONED`). Written by the hypervisor only while the
/// guest is on no CPU.
pub const EVENT_GENERATION_OFFSET: u64 = 8;
/// Offset in the shared page of the clock offset (`i64` ns, ABI 8): the
/// guest's monotonic clock is the time page's plus this. 0 for a guest
/// that booted here; a guest restored from a snapshot goes on from the
/// clock it had when it was saved (`snapshot`), on any hypervisor, so its
/// timers are durations. `block` deadlines are on the guest's clock.
/// Written by the hypervisor only while the guest is on no CPU.
pub const EVENT_CLOCK_OFFSET: u64 = 16;
/// Offset in the shared page of the guest's [`crate::NicInfo`] (ABI 9;
/// all zero without a vNIC). Written by the hypervisor before the guest
/// first runs and, in a clone or a restored guest, before it goes on
/// (while it is on no CPU): the identity is the one thing a clone does not
/// share with its template, so it lives here and not in the start page,
/// which clones share.
pub const EVENT_NIC_OFFSET: u64 = 0x300;
/// Offset in the shared page of the guest's instance name (ABI 9): its
/// length in bytes (`u64`, at most [`NAME_MAX`]), then the bytes (UTF-8,
/// zero-padded to `NAME_MAX`). Written as [`EVENT_NIC_OFFSET`] is.
pub const EVENT_NAME_OFFSET: u64 = 0x340;
/// Offset in the shared page from which the rest of the page is the
/// guest's own: the hypervisor neither reads nor writes it (a clone's copy
/// of the page and a snapshot carry it as it is). The libos keeps there
/// the state it writes whenever it runs (`libos::sys::InSharedPage`).
pub const EVENT_GUEST_OFFSET: u64 = 0x800;
/// Offsets in the shared page of the TX and RX rings' index blocks (each
/// `prod` at +0, `cons` at +64: `ring::PROD_OFFSET`, `ring::CONS_OFFSET`).
pub const NIC_TX_INDICES: u64 = 0x100;
pub const NIC_RX_INDICES: u64 = 0x200;
/// The vNIC's TX ring slots (guest produces), `ring::slots_bytes(slots)`
/// long; the RX ring's (hypervisor produces) follow at [`nic_rx_ring`].
pub const NIC_TX_RING: u64 = EVENT_PAGE + PAGE_SIZE;
/// Where the RX ring's slots start, for rings of `slots` slots (the guest
/// reads `slots` from `NicInfo::ring_slots`).
pub const fn nic_rx_ring(slots: u32) -> u64 {
    NIC_TX_RING + crate::ring::slots_bytes(slots) as u64
}
/// Start of the heap region, right after the rings of a guest whose rings
/// have `slots` slots (0: a guest without a vNIC). The guest is told it
/// (`StartInfo::heap_start`).
pub const fn heap_start(slots: u32) -> u64 {
    NIC_TX_RING + 2 * crate::ring::slots_bytes(slots) as u64
}
/// Rings up to this many slots leave the heap starting inside the window.
pub const WINDOW_SLOTS: u32 = 128;
/// Address space given to the heap (1 TiB; memory is what the limit allows).
pub const HEAP_LEN: u64 = 1 << 40;
/// Where in the heap the libos starts its runs of whole pages for big
/// blocks; small blocks live below (so at most this much of them).
pub const HEAP_BIG_OFFSET: u64 = 256 << 20;
/// Offset of [`crate::StartInfo`] within the start page.
pub const START_INFO_OFFSET: u64 = 0x100;
/// Offset of the name and argument strings within the start page.
pub const START_STRINGS_OFFSET: u64 = 0x200;
/// Room for the arguments and the environment (each NUL-terminated) in the start page.
pub const START_STRINGS_MAX: u64 = PAGE_SIZE - START_STRINGS_OFFSET;
/// Address of [`crate::StartInfo`].
pub const START_INFO: u64 = START_PAGE + START_INFO_OFFSET;
/// End of the guest half (exclusive): the first non-canonical address.
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Longest instance name (bytes).
pub const NAME_MAX: usize = 64;

// The regions are ordered, disjoint and where the docs say, checked at
// compile time.
const _: () = {
    assert!(USER_MIN < IMAGE_END);
    assert!(WINDOW.is_multiple_of(2 << 20));
    assert!(STACK_TOP - STACK_MAX - PAGE_SIZE == WINDOW);
    assert!(heap_start(WINDOW_SLOTS) < WINDOW + (2 << 20), "the heap starts inside the window");
    assert!(heap_start(0).is_multiple_of(PAGE_SIZE) && heap_start(crate::ring::SLOTS_MIN).is_multiple_of(PAGE_SIZE));
    assert!(crate::ring::slots_bytes(crate::ring::SLOTS_MIN).is_multiple_of(PAGE_SIZE as usize), "ring sizes are whole pages");
    assert!(heap_start(crate::ring::SLOTS_MAX) + HEAP_LEN <= USER_END);
    assert!((heap_start(crate::ring::SLOTS_MAX) + HEAP_BIG_OFFSET) >> 30 == WINDOW >> 30, "big blocks start in the window's GiB");
    assert!(
        NIC_TX_INDICES >= EVENT_CLOCK_OFFSET + 8
            && EVENT_CLOCK_OFFSET >= EVENT_GENERATION_OFFSET + 8
            && NIC_TX_INDICES + crate::ring::CONS_OFFSET as u64 + 4 <= NIC_RX_INDICES
    );
    assert!(NIC_RX_INDICES + crate::ring::CONS_OFFSET as u64 + 4 <= EVENT_NIC_OFFSET && EVENT_GUEST_OFFSET < PAGE_SIZE);
    assert!(EVENT_NIC_OFFSET + core::mem::size_of::<crate::NicInfo>() as u64 <= EVENT_NAME_OFFSET);
    assert!(EVENT_NAME_OFFSET.is_multiple_of(8) && EVENT_NAME_OFFSET + 8 + NAME_MAX as u64 <= EVENT_GUEST_OFFSET);
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
