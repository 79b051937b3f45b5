//! The C memory functions that `core` calls and that a freestanding binary
//! must supply itself (the hypervisor and every guest link this crate).
//!
//! Copies and fills are assembly rather than Rust loops: a loop could be
//! recognised by the compiler and turned back into a call to the very
//! function being defined. Whole 64-byte blocks go eight registers at a
//! time in a loop, the rest by `rep movsq`/`rep movsb`: QEMU's TCG runs a
//! string instruction one element per step (each a trip through its
//! dispatcher), while a loop of plain moves runs as one translated block,
//! chained to itself, so a 4 KiB copy costs several times less under
//! emulation; on hardware the loop keeps up with `rep movsb`.
#![no_std]

use core::arch::asm;

/// # Safety
/// `dst` and `src` are valid for `n` bytes and do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint;
    // the block loop reads and writes `n & !63` bytes from the starts, the
    // string instructions the rest after them.
    unsafe {
        let (mut d, mut s) = (dst, src);
        let blocks = n >> 6;
        if blocks != 0 {
            asm!(
                "2:",
                "mov {a}, [{s}]", "mov {b}, [{s} + 8]", "mov [{d}], {a}", "mov [{d} + 8], {b}",
                "mov {a}, [{s} + 16]", "mov {b}, [{s} + 24]", "mov [{d} + 16], {a}", "mov [{d} + 24], {b}",
                "mov {a}, [{s} + 32]", "mov {b}, [{s} + 40]", "mov [{d} + 32], {a}", "mov [{d} + 40], {b}",
                "mov {a}, [{s} + 48]", "mov {b}, [{s} + 56]", "mov [{d} + 48], {a}", "mov [{d} + 56], {b}",
                "add {s}, 64", "add {d}, 64", "dec {n}", "jnz 2b",
                s = inout(reg) s, d = inout(reg) d, n = inout(reg) blocks => _, a = out(reg) _, b = out(reg) _,
                options(nostack),
            );
        }
        // The rest, eight bytes at a time, then byte by byte. `cld`
        // although the ABI promises DF = 0: a copy that ran backwards would
        // write below `dst`, so this does not rest on every entry path
        // getting it right.
        let rest = n & 63;
        asm!("cld", "rep movsq", "mov ecx, {bytes:e}", "rep movsb",
             bytes = in(reg) rest & 7, inout("rcx") rest >> 3 => _, inout("rdi") d => _, inout("rsi") s => _,
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
    // SAFETY: the caller guarantees `dst` is valid for `n` bytes; as in
    // memcpy, the blocks cover `n & !63` of them and the rest follows.
    unsafe {
        let fill = (c as u8 as u64).wrapping_mul(0x0101_0101_0101_0101);
        let mut d = dst;
        let blocks = n >> 6;
        if blocks != 0 {
            asm!(
                "2:",
                "mov [{d}], {v}", "mov [{d} + 8], {v}", "mov [{d} + 16], {v}", "mov [{d} + 24], {v}",
                "mov [{d} + 32], {v}", "mov [{d} + 40], {v}", "mov [{d} + 48], {v}", "mov [{d} + 56], {v}",
                "add {d}, 64", "dec {n}", "jnz 2b",
                d = inout(reg) d, n = inout(reg) blocks => _, v = in(reg) fill,
                options(nostack),
            );
        }
        // As in memcpy: the rest eight bytes at a time, then byte by byte;
        // `cld` first, a backwards fill would clear the memory below `dst`.
        let rest = n & 63;
        asm!("cld", "rep stosq", "mov ecx, {bytes:e}", "rep stosb",
             bytes = in(reg) rest & 7, inout("rcx") rest >> 3 => _, inout("rdi") d => _, in("rax") fill,
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
