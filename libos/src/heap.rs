//! The guest's heap: talc for small blocks over an arena that grows as it
//! is needed, and whole fresh pages for big ones.
//!
//! The hypervisor gives heap pages on first touch and charges only those,
//! so what matters is which pages get *written*:
//! - talc's arena starts small at the bottom of the heap region and grows
//!   on demand ([`Grow`]): talc writes its bookkeeping at the ends of free
//!   space, so one huge arena would touch a page far away;
//! - blocks of [`BIG`] bytes or more (socket buffers) are runs of whole
//!   pages from `layout::HEAP_BIG_OFFSET` up in the heap region ([`Big`]),
//!   still in the first GiB so that they share page tables; never written
//!   by the allocator: a fresh run reads as zero because nobody touched it,
//!   and a freed run is handed back to the hypervisor (`discard`), so it
//!   reads as zero again when reused. A zeroed big block costs nothing until
//!   used, and a closed connection's buffers return their memory.

use alloc::collections::BTreeMap;
use core::alloc::{GlobalAlloc, Layout};
use talc::{OomHandler, Span, Talc, Talck};

/// Blocks at least this big are runs of whole pages.
const BIG: usize = 8 * 1024;
/// Talc's arena grows in steps of at least this much.
const GROW_STEP: usize = 64 * 1024;
const PAGE: usize = abi::layout::PAGE_SIZE as usize;

/// Grows talc's arena up through its half of the heap region.
pub struct Grow {
    arena: Span,
    end: usize,
}

impl OomHandler for Grow {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        let Some((base, acme)) = talc.oom_handler.arena.get_base_acme() else { return Err(()) };
        let need = (layout.size() + layout.align() + 128).next_multiple_of(GROW_STEP);
        let new_acme = (acme as usize).checked_add(need).filter(|&a| a <= talc.oom_handler.end).ok_or(())?;
        let old = talc.oom_handler.arena;
        // SAFETY: the new span only adds heap pages right above the old
        // arena, which are ours alone and zero-filled on first touch.
        talc.oom_handler.arena = unsafe { talc.extend(old, Span::new(base, new_acme as *mut u8)) };
        Ok(())
    }
}

/// Runs of whole pages: never-used address space above `next`, and freed
/// runs (already handed back) by start address, merged with neighbours.
struct Big {
    next: usize,
    end: usize,
    free: BTreeMap<usize, usize>,
}

impl Big {
    fn alloc(&mut self, bytes: usize) -> *mut u8 {
        let len = bytes.next_multiple_of(PAGE);
        if let Some((&at, &run)) = self.free.iter().find(|&(_, &run)| run >= len) {
            self.free.remove(&at);
            if run > len {
                self.free.insert(at + len, run - len);
            }
            return at as *mut u8;
        }
        match self.next.checked_add(len).filter(|&e| e <= self.end) {
            Some(e) => core::mem::replace(&mut self.next, e) as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    fn free(&mut self, at: usize, bytes: usize) {
        let len = bytes.next_multiple_of(PAGE);
        crate::hypercall::discard(at as u64, len as u64);
        let (mut start, mut end) = (at, at + len);
        if let Some((&s, &l)) = self.free.range(..at).next_back()
            && s + l == at
        {
            self.free.remove(&s);
            start = s;
        }
        if let Some(l) = self.free.remove(&end) {
            end += l;
        }
        if end == self.next {
            self.next = start;
        } else {
            self.free.insert(start, end - start);
        }
    }
}

/// The global allocator (see the module documentation).
pub struct Heap {
    small: Talck<spin::Mutex<()>, Grow>,
    big: spin::Mutex<Big>,
}

#[global_allocator]
static HEAP: Heap = Heap {
    small: Talc::new(Grow { arena: Span::empty(), end: 0 }).lock(),
    big: spin::Mutex::new(Big { next: 0, end: 0, free: BTreeMap::new() }),
};

fn is_big(layout: &Layout) -> bool {
    layout.size() >= BIG && layout.align() <= PAGE
}

/// Hands the heap region `[start, start + len)` to the allocator: the first
/// `HEAP_BIG_OFFSET` bytes to talc, the rest to big blocks.
///
/// # Safety
/// Called once, before any allocation; the region must be this guest's
/// demand-zero heap, page-aligned.
pub(crate) unsafe fn init(start: u64, len: u64) {
    let (start, len) = (start as usize, len as usize / PAGE * PAGE);
    let small = len.min(abi::layout::HEAP_BIG_OFFSET as usize);
    let mut big = HEAP.big.lock();
    (big.next, big.end) = (start + small, start + len);
    let mut talc = HEAP.small.lock();
    talc.oom_handler.end = start + small;
    // SAFETY: the caller gives us the heap region, ours alone.
    if let Ok(span) = unsafe { talc.claim(Span::from_base_size(start as *mut u8, small.min(GROW_STEP))) } {
        talc.oom_handler.arena = span;
    }
}

// SAFETY: small blocks are talc's, which upholds GlobalAlloc's contract;
// big blocks are disjoint runs of whole pages in the other half of the
// heap region, each handed out once until freed.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_big(&layout) {
            return self.big.lock().alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.small.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_big(&layout) {
            // Never written since the hypervisor last gave it: zero.
            return self.big.lock().alloc(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.small.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_big(&layout) {
            return self.big.lock().free(p as usize, layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.small.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size and layout.align() make a layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_big(&layout) && !is_big(&new) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.small.realloc(p, layout, new_size) };
        }
        // SAFETY: a fresh block of the new layout; copy what both hold, free the old.
        unsafe {
            let q = self.alloc(new);
            if !q.is_null() {
                core::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
            q
        }
    }
}
