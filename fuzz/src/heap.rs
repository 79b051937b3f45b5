//! A counting global allocator, so that a target can assert how much heap
//! the code under test took: [`track`] runs a closure and reports the most
//! bytes it had allocated at once (above what was live when it began) and
//! its largest single allocation. The hypervisor's heap is small and an
//! allocation failure there aborts the machine, so "allocates at most the
//! budget" is an invariant worth checking, and on the host nothing else
//! would notice a breach.
//!
//! The counters are per thread (`cargo test` runs targets in parallel); a
//! block freed on another thread than the one that allocated it skews both
//! threads' counts, which no tracked code does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counted.
pub struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    // Const-initialised and without destructors: using them allocates
    // nothing and works at any point of a thread's life.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(bytes as isize);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(bytes)));
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(bytes as isize)));
}

// SAFETY: every call goes to `System` with the caller's arguments
// unchanged, and its result is returned unchanged; the bookkeeping around
// it touches only thread-local cells and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with
        // `layout`, as our caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a move: the new block, then the old one freed (the
            // peak includes both, as a realloc that cannot grow in place
            // needs them both).
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

/// What [`track`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Most bytes allocated at once, beyond those live when tracking began.
    pub peak: usize,
    /// The largest single allocation (or reallocation's new size).
    pub largest: usize,
}

/// Runs `f` and reports the heap it used on this thread.
pub fn track<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    LARGEST.with(|l| l.set(0));
    let r = f();
    let peak = PEAK.with(Cell::get).saturating_sub(base).max(0) as usize;
    (r, Usage { peak, largest: LARGEST.with(Cell::get) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_sees_the_peak_and_the_largest_block() {
        let (_, u) = track(|| {
            let a = vec![0u8; 1000];
            let b = vec![0u8; 3000];
            drop(a);
            drop(b);
            let c = vec![0u8; 2000];
            c.len()
        });
        assert_eq!(u, Usage { peak: 4000, largest: 3000 });
        let (_, u) = track(|| ());
        assert_eq!(u, Usage { peak: 0, largest: 0 });
    }

    #[test]
    fn what_f_returns_counts() {
        let (v, u) = track(|| vec![1u8; 5000]);
        assert_eq!(v.len(), 5000);
        assert!(u.peak >= 5000);
    }
}
