//! The libos's machine layer: everything the compiler cannot check about the
//! guest's world, in one file. Besides the start-up (`rt.rs`, the entry
//! point in `main!`) and the heap, this is the only `unsafe` code of the
//! libos; the rest is safe code over these functions.
//!
//! The facts relied on, all given by the hypervisor's ABI (`abi::layout`):
//! - `syscall` enters the hypervisor, which checks every argument, clobbers
//!   `rcx`, `r11`, the vector registers and the x87 stack (as a call does:
//!   the stubs say `clobber_abi("C")`) and preserves every other register,
//!   MXCSR and the x87 control word (ABI 4);
//! - the start page, the time page and the shared (event + ring index) page
//!   are mapped at fixed addresses before the first instruction and stay
//!   mapped for the guest's whole life; the start and time pages read-only;
//! - the hypervisor rewrites the start page and the generation word of a
//!   clone (ABI 7) only while it is on no CPU, before it runs as a clone;
//! - the vNIC's ring slots are mapped read-write at fixed addresses, sized
//!   for the slot count the start page's `NicInfo` announces;
//! - RDTSC is allowed in ring 3 (CR4.TSD is clear), and so are CPUID and,
//!   where CPUID announces it, RDRAND;
//! - a guest has exactly one thread.

use abi::Hypercall;
use abi::ring::{INDEX_BYTES, RingMemory, RingSlices, SLOTS_OFFSET, ring_bytes};
use abi::time::TimeInfo;
use abi::{NicInfo, layout};
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A hypercall with two arguments; returns `rax`.
#[inline(always)]
pub fn hypercall2(nr: Hypercall, a0: u64, a1: u64) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` enters the hypervisor, which validates every
    // argument; it clobbers rcx, r11 and the vector and x87 registers
    // (declared with the C ABI's caller-saved set, which contains them)
    // and preserves everything else.
    unsafe {
        asm!("syscall", inlateout("rax") nr as u64 => ret, in("rdi") a0, in("rsi") a1,
             lateout("rcx") _, lateout("r11") _, clobber_abi("C"), options(nostack));
    }
    ret
}

/// This guest's event word (the first 8 bytes of the shared page), into
/// which the hypervisor ORs `abi::time::events` bits.
pub fn event_word() -> &'static AtomicU64 {
    // SAFETY: the shared page is mapped read-write at this fixed, 8-byte
    // aligned address for the guest's whole life; the hypervisor only ORs
    // bits into the word, atomically.
    unsafe { &*(layout::EVENT_PAGE as *const AtomicU64) }
}

/// The generation word (ABI 7): 0 for a guest that booted, one more than
/// its template's for a clone. One load: it is read before every poll.
#[inline(always)]
pub fn generation() -> u64 {
    // SAFETY: the shared page is mapped read-write at this fixed address
    // for the guest's whole life, and the word lies inside it, 8-byte
    // aligned (abi::layout checks this at compile time); the hypervisor
    // writes it only while the guest is on no CPU.
    let word = unsafe { &*((layout::EVENT_PAGE + layout::EVENT_GENERATION_OFFSET) as *const AtomicU64) };
    word.load(Ordering::Acquire)
}

/// The clock offset (ABI 8, ns): the guest's monotonic clock is the time
/// page's plus this; not 0 only in a guest restored from a snapshot.
#[inline(always)]
pub fn clock_offset() -> i64 {
    // SAFETY: as for `generation`: the word lies inside the shared page,
    // 8-byte aligned (abi::layout checks it), and the hypervisor writes it
    // only while the guest is on no CPU.
    let word = unsafe { &*((layout::EVENT_PAGE + layout::EVENT_CLOCK_OFFSET) as *const AtomicU64) };
    word.load(Ordering::Relaxed) as i64
}

/// A random number from the CPU's RDRAND, if it has the instruction
/// (CPUID.1:ECX bit 30) and it delivered within a few tries.
pub fn rdrand() -> Option<u64> {
    const RDRAND: u32 = 1 << 30;
    if core::arch::x86_64::__cpuid(1).ecx & RDRAND == 0 {
        return None;
    }
    for _ in 0..10 {
        let (v, ok): (u64, u8);
        // SAFETY: CPUID said the CPU has RDRAND, which is allowed in ring 3;
        // it writes the register and the carry flag, nothing else.
        unsafe { asm!("rdrand {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack)) };
        if ok != 0 {
            return Some(v);
        }
    }
    None
}

/// The hypervisor's time page.
pub fn time_info() -> TimeInfo {
    // SAFETY: the hypervisor maps the time page read-only at this fixed
    // address before the first instruction and never changes it.
    unsafe { core::ptr::read_volatile(layout::TIME_PAGE as *const TimeInfo) }
}

/// The time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed in ring 3 (CR4.TSD is clear) and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Our vNIC record, in the shared page (ABI 9; its magic says whether
/// there is a vNIC; a clone's is its own once `generation` grew).
pub fn nic_info() -> NicInfo {
    // SAFETY: the shared page is mapped read-write for the guest's life;
    // the NicInfo record lies inside it, aligned (abi::layout checks this
    // at compile time); every bit pattern is a valid NicInfo; the
    // hypervisor writes it only while the guest is on no CPU.
    unsafe { core::ptr::read_volatile((layout::EVENT_PAGE + layout::EVENT_NIC_OFFSET) as *const NicInfo) }
}

/// A ring mapped at fixed addresses of this guest: its index block in the
/// shared page, its slots in pages of their own.
pub struct MappedRing {
    indices: u64,
    slots: u64,
    bytes: usize,
}

impl MappedRing {
    /// The ring whose index block is at `indices` in the shared page and
    /// whose `slots` slots start at `slots_at`; the two rings of the vNIC
    /// `nic_info` announced are the only ones (`abi::layout::NIC_*`).
    pub fn new(indices: u64, slots_at: u64, slots: u32) -> Self {
        Self { indices: layout::EVENT_PAGE + indices, slots: slots_at, bytes: ring_bytes(slots) }
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= INDEX_BYTES);
        // SAFETY: the shared page is mapped read-write for the guest's whole
        // life; the index block lies inside it (abi::layout checks this at
        // compile time) and the offset inside the block (asserted), aligned.
        unsafe { &*((self.indices + offset as u64) as *const AtomicU32) }
    }

    /// The address of slot-area `offset`, checked for `len` bytes.
    fn slot_addr(&self, offset: usize, len: usize) -> u64 {
        assert!(offset >= SLOTS_OFFSET && offset + len <= self.bytes);
        self.slots + (offset - SLOTS_OFFSET) as u64
    }
}

// The hypervisor maps both rings' slots read-write at their fixed addresses
// for the guest's whole life (NicInfo's magic says so), sized for the slot
// count it announces; every access is bounds-checked (`index`,
// `slot_addr`) before its unsafe block, and index loads/stores are 4-byte
// aligned atomics.
impl RingMemory for MappedRing {
    fn load(&self, offset: usize) -> u32 {
        self.index(offset).load(Ordering::Acquire)
    }
    fn store(&self, offset: usize, v: u32) {
        self.index(offset).store(v, Ordering::Release)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) {
        let at = self.slot_addr(offset, dst.len());
        // SAFETY: in bounds (checked) of the mapped slots; the hypervisor may
        // write concurrently, which only changes the bytes we copy.
        unsafe { core::ptr::copy_nonoverlapping(at as *const u8, dst.as_mut_ptr(), dst.len()) }
    }
    fn write(&self, offset: usize, src: &[u8]) {
        let at = self.slot_addr(offset, src.len());
        // SAFETY: as in read.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), at as *mut u8, src.len()) }
    }
}

// Lends the slots in place to the ring code (netdev hands them to smoltcp
// without a copy).
impl RingSlices for MappedRing {
    fn with_slice<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let at = self.slot_addr(offset, len);
        // SAFETY: in bounds (checked) of the slots, mapped read-write for
        // the guest's life. The only callers lend a frame the consumer
        // peeked and has not released, and by the ring protocol the
        // hypervisor writes no RX slot between `cons` and `prod` (it
        // produces only into released slots), so the bytes do not change
        // while the shared borrow lives. The guest has one thread, and
        // nothing else in it reaches the slots during `f`.
        f(unsafe { core::slice::from_raw_parts(at as *const u8, len) })
    }
    fn with_slice_mut<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let at = self.slot_addr(offset, len);
        // SAFETY: in bounds (checked) of the slots, mapped read-write for
        // the guest's life. The only callers lend TX slots the producer
        // reserved and has not published: the hypervisor reads no TX slot
        // at or past `prod` and never writes TX slots, so nothing else
        // reads or writes them while this exclusive borrow lives (the
        // guest has one thread).
        f(unsafe { core::slice::from_raw_parts_mut(at as *mut u8, len) })
    }
}

/// A value that a `static` may hold though it is not `Send`: a guest has
/// exactly one thread, so nothing in it is ever shared between threads.
pub struct OneThread<T>(pub T);

// SAFETY: a guest has exactly one thread (the hypervisor starts it on one
// vCPU and offers no way to start another), so `T` never crosses threads.
unsafe impl<T> Send for OneThread<T> {}

/// A `static` whose value lives in the guest's own part of its shared page
/// (`layout::EVENT_GUEST_OFFSET` to the page's end; on the heap once that
/// is full): the static itself is written once, when it is first used,
/// and never after (reading it is one load). For the state a guest writes
/// whenever it runs (locks, queues, the network stack): in a clone (issue
/// 18) a write copies the page it lands on, a page of the image's data
/// together with the page table that maps the image, which the clones
/// otherwise share, while the shared page is every guest's own already
/// (a clone gets a copy of its template's, this state included).
pub struct InSharedPage<T: 'static> {
    value: spin::Once<&'static T>,
    init: fn() -> T,
}

impl<T> InSharedPage<T> {
    pub const fn new(init: fn() -> T) -> Self {
        Self { value: spin::Once::new(), init }
    }
}

impl<T> core::ops::Deref for InSharedPage<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.value.call_once(|| place((self.init)()))
    }
}

/// Bytes of the guest's part of the shared page handed out so far.
static PLACED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Moves `v` into the guest's part of its shared page, for good (onto the
/// heap if it does not fit).
fn place<T>(v: T) -> &'static T {
    let start = layout::EVENT_PAGE + layout::EVENT_GUEST_OFFSET;
    let used = PLACED.load(core::sync::atomic::Ordering::Relaxed);
    let at = (start + used).next_multiple_of(core::mem::align_of::<T>() as u64);
    let end = at + core::mem::size_of::<T>() as u64;
    if end > layout::EVENT_PAGE + layout::PAGE_SIZE {
        return alloc::boxed::Box::leak(alloc::boxed::Box::new(v));
    }
    PLACED.store(end - start, core::sync::atomic::Ordering::Relaxed);
    let p = at as *mut T;
    // SAFETY: `[at, end)` lies in the guest's part of its shared page,
    // mapped read-write for the guest's whole life and never touched by
    // the hypervisor; it is aligned for `T`, and handed out once (PLACED
    // moves past it; a guest has one thread, and `InSharedPage` places
    // each value once). Nothing is there yet to drop.
    unsafe {
        p.write(v);
        &*p
    }
}
