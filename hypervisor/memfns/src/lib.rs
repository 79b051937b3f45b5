//! The C memory functions that `core` calls and that a freestanding binary
//! must supply itself (the hypervisor and every guest link this crate).
//!
//! Copies and fills use `rep movsb`/`rep stosb` rather than Rust loops: a
//! loop could be recognised by the compiler and turned back into a call to
//! the very function being defined.
#![no_std]

use core::arch::asm;

/// # Safety
/// `dst` and `src` are valid for `n` bytes and do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        // Eight bytes at a time, then the rest: as fast as `rep movsb` on
        // hardware with ERMS, and eight times fewer steps under emulation
        // (QEMU's TCG runs a string instruction one element per step).
        // `cld` although the ABI promises DF = 0: a copy that ran backwards
        // would write below `dst`, so this does not rest on every entry path
        // getting it right.
        asm!("cld", "rep movsq", "mov ecx, {rest:e}", "rep movsb",
             rest = in(reg) n & 7, inout("rcx") n >> 3 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack));
    }
    dst
}

/// # Safety
/// `dst` and `src` are valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dst is below src or the ranges are disjoint.
        // SAFETY: as for memcpy; a forward byte copy handles dst < src.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: copy backwards (DF set for the duration, cleared after)
        // so an overlapping dst above src reads each byte before it is
        // overwritten.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
        dst
    }
}

/// # Safety
/// `dst` is valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst` is valid for `n` bytes.
    unsafe {
        // As in memcpy: eight bytes at a time, then the rest.
        // As in memcpy: `cld` first, a backwards fill would clear the
        // memory below `dst` and leave `dst` as it was.
        asm!("cld", "rep stosq", "mov ecx, {rest:e}", "rep stosb",
             rest = in(reg) n & 7, inout("rcx") n >> 3 => _, inout("rdi") dst => _,
             in("rax") (c as u8 as u64).wrapping_mul(0x0101_0101_0101_0101),
             options(nostack));
    }
    dst
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both ranges are valid for n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Unwinding is never used (`panic = "abort"`), but `core` references it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the precompiled `core`/`alloc` landing pads; never reached
/// with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
