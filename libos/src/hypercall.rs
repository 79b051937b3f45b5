//! Raw hypercalls: `syscall` with the number in `rax`, arguments in `rdi`,
//! `rsi`, `rdx`, `r10`, `r8`, `r9`, the result in `rax` (see `abi::Hypercall`).

use crate::sys::{event_word, hypercall2};
use abi::Hypercall;

/// Writes bytes to the guest's console (split into chunks the hypervisor accepts).
pub fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(abi::CONSOLE_WRITE_MAX) {
        hypercall2(Hypercall::ConsoleWrite, chunk.as_ptr() as u64, chunk.len() as u64);
    }
}

/// Does nothing in the hypervisor: the cost of a round trip.
pub fn nop() {
    hypercall2(Hypercall::Nop, 0, 0);
}

/// Asks the hypervisor to forward the frames in this guest's TX ring now.
pub fn net_kick() {
    hypercall2(Hypercall::NetKick, 0, 0);
}

/// Gives the hypervisor back the whole heap pages in `[addr, addr + len)`
/// (page-aligned); they read as zero on the next touch. Returns the bytes
/// given back.
pub fn discard(addr: u64, len: u64) -> u64 {
    hypercall2(Hypercall::Discard, addr, len) as u64
}

/// Gives the CPU to the next runnable guest.
pub fn yield_now() {
    hypercall2(Hypercall::Yield, 0, 0);
}

/// Sleeps until an event bit is set or the monotonic clock reaches
/// `deadline_ns`; returns the pending event bits (still set).
pub fn block(deadline_ns: u64) -> u64 {
    hypercall2(Hypercall::Block, deadline_ns, 0) as u64
}

/// Sets `bits` in this guest's own event page, as if the hypervisor had
/// raised them: the next `block` returns at once.
pub fn raise_own_events(bits: u64) {
    event_word().fetch_or(bits, core::sync::atomic::Ordering::AcqRel);
}

/// Clears `bits` in this guest's event page; returns the bits that were set.
pub fn take_events(bits: u64) -> u64 {
    event_word().fetch_and(!bits, core::sync::atomic::Ordering::AcqRel) & bits
}

/// Stops this guest with `code`.
pub fn exit(code: i32) -> ! {
    hypercall2(Hypercall::Exit, code as u32 as u64, 0);
    // The hypervisor never returns from exit.
    loop {
        core::hint::spin_loop();
    }
}
