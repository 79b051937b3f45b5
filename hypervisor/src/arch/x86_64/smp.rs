//! Bringing up the application processors (APs).
//!
//! The boot CPU copies a real-mode trampoline to physical 0x8000 and sends
//! INIT, SIPI, SIPI to all other CPUs at once. Each AP climbs from real
//! mode to long mode on a small page table (the kernel's upper half plus an
//! identity map of the first 2 MiB, where the trampoline runs), takes a CPU
//! index with an atomic increment, loads the stack the boot CPU prepared for
//! that index, and calls `ap_main(index)` in the upper half. A CPU whose
//! index is past [`MAX_CPUS`] halts in the trampoline before it reads
//! anything by that index.

use super::{apic, cpu, paging};
use alloc::boxed::Box;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use hypervisor::mm::PhysMem;
use hypervisor::mm::paging::{self as pt, Pte};

/// Most CPUs the hypervisor drives.
pub const MAX_CPUS: usize = 16;
/// Physical address of the trampoline (SIPI vector 0x08).
const TRAMPOLINE: u64 = 0x8000;
const AP_STACK_SIZE: usize = 128 * 1024;

/// The next CPU index to hand out; the boot CPU is 0.
#[unsafe(no_mangle)]
static AP_NEXT: AtomicU32 = AtomicU32::new(1);
/// Stack tops for the APs, by CPU index.
#[unsafe(no_mangle)]
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_cr3: u8;
}

global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (tr_gdt_ptr - ap_trampoline_start + 0x8000)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(tr_32 - ap_trampoline_start + 0x8000)

    .code32
tr_32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl (ap_trampoline_cr3 - ap_trampoline_start + 0x8000), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x901, %eax            /* LME | NXE | SCE */
    wrmsr
    movl %cr0, %eax
    andl $0xfffffffb, %eax
    orl $0x80010023, %eax       /* PG | WP | NE | MP | PE */
    movl %eax, %cr0
    ljmpl $0x18, $(tr_64 - ap_trampoline_start + 0x8000)

    .code64
tr_64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movabs $AP_NEXT, %rax
    movl $1, %ecx
    lock xaddl %ecx, (%rax)
    /* An index past the tables (more CPUs than MAX_CPUS) parks here,
       before anything is read by it: no stack, no per-CPU block. */
    cmpl ${max_cpus}, %ecx
    jae 1f
    movabs $AP_STACKS, %rax
    movq (%rax,%rcx,8), %rsp
    movl %ecx, %edi
    movabs ${ap_main}, %rax
    call *%rax
1:  cli
    hlt
    jmp 1b

    .p2align 3
tr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
tr_gdt_ptr:
    .word tr_gdt_ptr - tr_gdt - 1
    .long tr_gdt - ap_trampoline_start + 0x8000
    .global ap_trampoline_cr3
ap_trampoline_cr3:
    .long 0
    .global ap_trampoline_end
ap_trampoline_end:
    .text
    "#,
    ap_main = sym crate::ap_main,
    max_cpus = const MAX_CPUS,
    options(att_syntax)
);

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Starts every other CPU; returns how many CPUs run (the boot CPU
/// included). `kernel_root` is the hypervisor's PML4.
pub fn start_aps(kernel_root: u64, tsc_hz: u64) -> usize {
    let mut mem = paging::DirectMap;
    // The APs' page table: the kernel's upper half plus an identity map
    // of the first 2 MiB (the trampoline switches paging on from there).
    let Some(root) = mem.alloc() else { return 1 };
    if root >= 1 << 32 {
        // CR3 is loaded in 32-bit mode.
        return 1;
    }
    for i in 256..512 {
        let e = mem.read_pte(kernel_root, i);
        mem.write_pte(root, i, e);
    }
    if pt::map(&mut mem, root, 0, 0, Pte::WRITABLE, 2, Pte::WRITABLE).is_err() {
        return 1;
    }

    // SAFETY: linker-defined symbols; only their addresses are used.
    let (start, end, cr3) = unsafe { (sym(&ap_trampoline_start), sym(&ap_trampoline_end), sym(&ap_trampoline_cr3)) };
    let code = start..end;
    // SAFETY: the trampoline's bytes lie in the hypervisor's text.
    let bytes = unsafe { core::slice::from_raw_parts(code.start as *const u8, (code.end - code.start) as usize) };
    mem.write(TRAMPOLINE, 0, bytes);
    mem.write(TRAMPOLINE, (cr3 - start) as usize, &(root as u32).to_le_bytes());

    for slot in AP_STACKS.iter().skip(1) {
        #[repr(C, align(16))]
        struct ApStack([u8; AP_STACK_SIZE]);
        let stack = Box::leak(Box::new(ApStack([0; AP_STACK_SIZE])));
        slot.store(stack as *mut ApStack as u64 + AP_STACK_SIZE as u64, Ordering::Relaxed);
    }

    // INIT, wait 10 ms, SIPI, wait 200 us, SIPI (Intel SDM 8.4.4.1).
    let wait = |us: u64| {
        let until = cpu::rdtsc() + tsc_hz / 1_000_000 * us;
        while cpu::rdtsc() < until {
            core::hint::spin_loop();
        }
    };
    apic::ipi_all_others(0b101 << 8 | 1 << 14);
    wait(10_000);
    for _ in 0..2 {
        apic::ipi_all_others(0b110 << 8 | (TRAMPOLINE >> 12) as u32);
        wait(200);
    }
    // Wait until no new CPU has checked in for 100 ms (TCG is slow to start them).
    let mut seen = AP_NEXT.load(Ordering::Acquire);
    loop {
        wait(100_000);
        let now = AP_NEXT.load(Ordering::Acquire);
        if now == seen {
            break;
        }
        seen = now;
    }
    let found = seen as usize;
    if found > MAX_CPUS {
        crate::println!("[hv] {found} CPUs found; the hypervisor drives {MAX_CPUS}, the other {} stay parked", found - MAX_CPUS);
    }
    found.min(MAX_CPUS)
}
