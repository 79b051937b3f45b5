//! The pages a guest shares with the hypervisor, reached through the
//! direct map: its event page and its vNIC rings.
//!
//! Both are newtypes that only this file can make, from memory a guest
//! owns: [`EventPage::of`] takes the page guest creation mapped at
//! `layout::EVENT_PAGE` in the guest's own tables, and
//! [`DirectRing::alloc`] takes its slot pages from the frame allocator and
//! hands each to the caller to map into the guest; a
//! [`DirectRing::deferred`] ring learns them (`provide`) from the pages
//! the guest's memory made at their first touch. Nothing else can name a
//! physical address to write to.
//!
//! Lifetime: the pages are the guest's until it is destroyed. The back end
//! reaches a port's rings and event page only while the port's RX gate is
//! open or under its TX lock (`hypervisor::net::backend`), and
//! `disconnect` closes the gate under those locks before the guest is
//! destroyed. The run loop raises timer events only for a guest its own
//! CPU's scheduler holds (alive).

use super::paging::{DirectMap, phys_to_virt};
use abi::ring::{INDEX_BYTES, RingMemory, SLOTS_OFFSET, slots_bytes};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hypervisor::guest::Guest;
use hypervisor::mm::{FRAME_SIZE, PhysAddr, PhysMem};
use hypervisor::net::port::{GuestEvents, GuestRing, RingAllocError};

const PAGE: usize = FRAME_SIZE as usize;

/// A guest's event page: the event bits (`abi::time::events`) at offset 0,
/// the vNIC rings' index blocks further on.
#[derive(Clone, Debug)]
pub struct EventPage(PhysAddr);

impl EventPage {
    /// The event page of `g`, which its creation mapped to a page of its
    /// own (`None` if it is not mapped, which creation rules out).
    pub fn of(g: &Guest) -> Option<Self> {
        g.memory.space.translate(&DirectMap, abi::layout::EVENT_PAGE).map(|(pa, _)| Self(pa & !(FRAME_SIZE - 1)))
    }

    fn bits(&self) -> &AtomicU64 {
        // SAFETY: the guest's event page, a page it owns (see `of`),
        // direct-mapped; offset 0 is 8-byte aligned; the guest and other
        // CPUs reach the word only atomically.
        unsafe { &*(phys_to_virt(self.0) as *const AtomicU64) }
    }

    /// Sets event bits (atomically: other CPUs may set bits at the same
    /// time, and the guest clears them with an atomic AND). Only for a
    /// guest known to be alive; deliveries go through `Port::notify`.
    pub fn raise(&self, bits: u64) {
        self.bits().fetch_or(bits, Ordering::AcqRel);
    }

    /// The event bits pending.
    pub fn pending(&self) -> u64 {
        self.bits().load(Ordering::Acquire)
    }
}

impl GuestEvents for EventPage {
    fn raise(&self, bits: u64) {
        EventPage::raise(self, bits)
    }
    fn pending(&self) -> u64 {
        EventPage::pending(self)
    }
}

/// One of a guest's vNIC rings through the direct map: its index block in
/// the guest's event page, its slots in pages of their own.
pub struct DirectRing {
    /// Physical address of the index block.
    indices: PhysAddr,
    /// The slot pages, in ring order (0: not made yet). Set once, before
    /// `ready`, and fixed from then on.
    pages: Box<[AtomicU64]>,
    /// Every page is made.
    ready: AtomicBool,
}

impl DirectRing {
    /// A ring of `slots` slots whose index block is at `index_offset` in
    /// `events`: takes its slot pages from the frame allocator and hands
    /// each, with its index, to `map`, which maps it into the guest (so
    /// the guest's teardown frees it). A page `map` refuses is freed here;
    /// pages mapped before a failure stay the guest's.
    pub fn alloc<E>(
        events: &EventPage,
        index_offset: u64,
        slots: u32,
        copy: impl Fn(usize) -> Option<PhysAddr>,
        mut map: impl FnMut(usize, PhysAddr) -> Result<(), E>,
    ) -> Result<Self, RingAllocError<E>> {
        let ring = Self::deferred(events, index_offset, slots);
        let mut mem = DirectMap;
        let mut pages = Vec::with_capacity(ring.pages.len());
        for i in 0..ring.pages.len() {
            let page = match copy(i) {
                Some(src) => mem.alloc_copy(src),
                None => mem.alloc(),
            };
            let page = page.ok_or(RingAllocError::NoMemory)?;
            if let Err(e) = map(i, page) {
                mem.free(page);
                return Err(RingAllocError::Map(e));
            }
            pages.push(page);
        }
        ring.provide(&pages);
        Ok(ring)
    }

    /// A ring of `slots` slots whose index block is at `index_offset` in
    /// `events`, its slot pages not made yet (`provide`).
    pub fn deferred(events: &EventPage, index_offset: u64, slots: u32) -> Self {
        assert!(index_offset.is_multiple_of(4) && index_offset as usize + INDEX_BYTES <= PAGE);
        let n = slots_bytes(slots).div_ceil(PAGE);
        let pages = (0..n).map(|_| AtomicU64::new(0)).collect();
        Self { indices: events.0 + index_offset, pages, ready: AtomicBool::new(false) }
    }

    fn bytes(&self) -> usize {
        SLOTS_OFFSET + self.pages.len() * PAGE
    }

    /// The direct-map address of slot-area `offset` (at or above
    /// SLOTS_OFFSET, inside the ring: callers check), if its page is made.
    fn at(&self, offset: usize) -> Option<u64> {
        let o = offset - SLOTS_OFFSET;
        // Acquire: the page was stored before the guest that touched it
        // ran on, and before `ready`.
        let page = self.pages[o / PAGE].load(Ordering::Acquire);
        (page != 0).then(|| phys_to_virt(page) + (o % PAGE) as u64)
    }

    /// The index at `offset` of the index block.
    fn index(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= INDEX_BYTES);
        // SAFETY: inside the index block (asserted; `alloc` checked that it
        // lies in the event page), a page the guest owns, direct-mapped;
        // 4-byte aligned.
        unsafe { &*((phys_to_virt(self.indices) + offset as u64) as *const AtomicU32) }
    }

    /// Runs `f` on each piece of `[offset, offset + len)` that lies in one
    /// page: its direct-map address (`None`: the page is not made) and its
    /// range in the caller's buffer.
    fn pieces(&self, offset: usize, len: usize, mut f: impl FnMut(Option<u64>, core::ops::Range<usize>)) {
        assert!(offset >= SLOTS_OFFSET && offset + len <= self.bytes());
        let mut done = 0;
        while done < len {
            let o = offset + done;
            let n = (PAGE - o % PAGE).min(len - done);
            f(self.at(o), done..done + n);
            done += n;
        }
    }
}

// The pages are the guest's event page and ring pages, which stay its own
// while its port is open (see the module documentation); offsets are
// bounds-checked against the index block and the slots (`index`, `pieces`)
// before each unsafe block; index accesses are 4-byte aligned atomics with
// the contract's orderings.
impl RingMemory for DirectRing {
    fn load(&self, offset: usize) -> u32 {
        self.index(offset).load(Ordering::Acquire)
    }
    fn store(&self, offset: usize, v: u32) {
        self.index(offset).store(v, Ordering::Release)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) {
        self.pieces(offset, dst.len(), |va, r| {
            let d = &mut dst[r];
            // A page not made reads as the zeroes it will start with.
            let Some(va) = va else { return d.fill(0) };
            // SAFETY: inside one of the ring's pages (split by `pieces`);
            // the guest may write concurrently, which only changes the
            // copied bytes.
            unsafe { core::ptr::copy_nonoverlapping(va as *const u8, d.as_mut_ptr(), d.len()) }
        });
    }
    fn write(&self, offset: usize, src: &[u8]) {
        self.pieces(offset, src.len(), |va, r| {
            let s = &src[r];
            // The back end writes only to a ready ring (`GuestRing::ready`).
            let Some(va) = va else { return };
            // SAFETY: as in read.
            unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), va as *mut u8, s.len()) }
        });
    }
}

impl GuestRing for DirectRing {
    fn copy_to(&self, from: usize, dst: &Self, to: usize, len: usize) {
        assert!(from >= SLOTS_OFFSET && to >= SLOTS_OFFSET && from + len <= self.bytes() && to + len <= dst.bytes());
        let mut done = 0;
        while done < len {
            let (s, d) = (from + done, to + done);
            let n = (PAGE - s % PAGE).min(PAGE - d % PAGE).min(len - done);
            // The back end copies only into a ready ring; from a page not
            // made, zeroes.
            if let Some(to) = dst.at(d) {
                match self.at(s) {
                    // SAFETY: both ranges lie inside one page each (split
                    // above), of different guests' rings (a sender's TX, a
                    // receiver's RX), so they do not overlap; a guest
                    // writing its TX slot meanwhile only changes the bytes
                    // copied.
                    Some(from) => unsafe { core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, n) },
                    // SAFETY: inside one page of the receiver's ring.
                    None => unsafe { core::ptr::write_bytes(to as *mut u8, 0, n) },
                }
            }
            done += n;
        }
    }

    fn slot_bytes(&self) -> u64 {
        if self.ready() { (self.pages.len() * PAGE) as u64 } else { 0 }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn provide(&self, pages: &[PhysAddr]) {
        if self.ready() || pages.len() != self.pages.len() || pages.contains(&0) {
            return;
        }
        for (slot, &pa) in self.pages.iter().zip(pages) {
            slot.store(pa, Ordering::Release);
        }
        self.ready.store(true, Ordering::Release);
    }

    fn record_bytes(&self) -> u64 {
        (self.pages.len() * core::mem::size_of::<PhysAddr>()) as u64
    }
}
