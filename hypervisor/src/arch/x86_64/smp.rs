//! Bringing up the application processors (APs).
//!
//! The boot CPU copies a real-mode trampoline to a free page of low memory
//! (from the memory map), prepares a stack and interrupt stacks for every
//! CPU it expects, and sends INIT, SIPI, SIPI to each CPU the ACPI MADT
//! lists, by APIC id (or, without a MADT, to all others at once). Each AP
//! climbs from real mode to long mode on a small page table (the kernel's
//! upper half plus an identity map of the first 2 MiB, where the
//! trampoline runs), takes a CPU index with an atomic increment, loads the
//! stack the boot CPU prepared for that index, and calls `ap_main(index)`
//! in the upper half. A CPU whose index has no stack (more CPUs than
//! expected, or than [`MAX_CPUS`]) halts in the trampoline before it reads
//! anything by that index.

use super::{apic, cpu, gdt, paging};
use alloc::boxed::Box;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use hypervisor::mm::PhysMem;
use hypervisor::mm::paging::{self as pt, Pte};

/// Most CPUs the hypervisor drives.
pub const MAX_CPUS: usize = 256;
/// CPUs prepared for when the firmware does not list them (no MADT).
pub const BROADCAST_CPUS: usize = 16;
const AP_STACK_SIZE: usize = 128 * 1024;

/// The next CPU index to hand out; the boot CPU is 0.
#[unsafe(no_mangle)]
static AP_NEXT: AtomicU32 = AtomicU32::new(1);
/// Indices below this have a stack; the trampoline parks the others.
#[unsafe(no_mangle)]
static AP_LIMIT: AtomicU32 = AtomicU32::new(0);
/// Stack tops for the APs, by CPU index.
#[unsafe(no_mangle)]
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_gdt_base: u8;
    static ap_trampoline_far32: u8;
    static ap_trampoline_far64: u8;
    static ap_trampoline_cr3: u8;
}

global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    /* Runs at the page the boot CPU copied it to (CS = page >> 4, IP = 0):
       real-mode data is CS-relative, and the three absolute fields below
       (the GDT's base, the far pointers) are filled in with that page. */
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movzwl %ax, %ebx
    shll $4, %ebx               /* %ebx: the trampoline's physical base */
    lgdtl (tr_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(tr_far32 - ap_trampoline_start)

    .code32
tr_32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl (ap_trampoline_cr3 - ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x901, %eax            /* LME | NXE | SCE */
    wrmsr
    movl %cr0, %eax
    andl $0xfffffffb, %eax
    orl $0x80010023, %eax       /* PG | WP | NE | MP | PE */
    movl %eax, %cr0
    ljmpl *(tr_far64 - ap_trampoline_start)(%ebx)

    .code64
tr_64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movabs $AP_NEXT, %rax
    movl $1, %ecx
    lock xaddl %ecx, (%rax)
    /* An index past the prepared stacks (more CPUs than expected, or
       than MAX_CPUS) parks here, before anything is read by it: no
       stack, no per-CPU block. */
    movabs $AP_LIMIT, %rax
    cmpl (%rax), %ecx
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
    .global ap_trampoline_gdt_base
ap_trampoline_gdt_base:
    .long tr_gdt - ap_trampoline_start
    .global ap_trampoline_far32
ap_trampoline_far32:
tr_far32:
    .long tr_32 - ap_trampoline_start
    .word 0x08
    .global ap_trampoline_far64
ap_trampoline_far64:
tr_far64:
    .long tr_64 - ap_trampoline_start
    .word 0x18
    .global ap_trampoline_cr3
ap_trampoline_cr3:
    .long 0
    .global ap_trampoline_end
ap_trampoline_end:
    .text
    "#,
    ap_main = sym crate::ap_main,
    options(att_syntax)
);

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Starts the other CPUs, by APIC id where the firmware listed them
/// (`apic_ids`, the boot CPU's own id among them or not), else by a
/// broadcast to whatever CPUs there are (up to [`BROADCAST_CPUS`] are
/// given stacks; the rest park). The start-up code goes to the free low
/// page `trampoline`. With `max_cpus` (the `maxcpus=N` boot option) only
/// that many are given stacks. Returns how many CPUs run (the boot CPU
/// included). `kernel_root` is the hypervisor's PML4.
pub fn start_aps(kernel_root: u64, tsc_hz: u64, trampoline: u64, apic_ids: Option<&[u32]>, max_cpus: Option<usize>) -> usize {
    let own = apic::id();
    let listed = match apic_ids {
        Some(ids) => ids.iter().filter(|&&id| id != own).count().min(MAX_CPUS - 1),
        None => BROADCAST_CPUS - 1,
    };
    // Every listed CPU is still started (to park it in the trampoline
    // rather than leave it in the firmware's hands), but only `prepared`
    // get a stack.
    let expected = listed.min(max_cpus.unwrap_or(MAX_CPUS).saturating_sub(1));
    if listed == 0 {
        return 1;
    }
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
    let (start, end) = unsafe { (sym(&ap_trampoline_start), sym(&ap_trampoline_end)) };
    // SAFETY: the trampoline's bytes lie in the hypervisor's text.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    mem.write(trampoline, 0, bytes);
    // The fields that hold absolute addresses: offsets from the start,
    // made physical addresses of the page it now runs at.
    // SAFETY: as above.
    let fields = unsafe { [sym(&ap_trampoline_gdt_base), sym(&ap_trampoline_far32), sym(&ap_trampoline_far64)] };
    for field in fields {
        let off = (field - start) as usize;
        let mut rel = [0; 4];
        mem.read(trampoline, off, &mut rel);
        mem.write(trampoline, off, &(u32::from_le_bytes(rel) + trampoline as u32).to_le_bytes());
    }
    // SAFETY: as above.
    let cr3 = unsafe { sym(&ap_trampoline_cr3) };
    mem.write(trampoline, (cr3 - start) as usize, &(root as u32).to_le_bytes());

    // Stacks for every CPU expected, and their interrupt stacks, before
    // any of them runs: the APs take their index in the order they arrive.
    let mut prepared = 1;
    for (cpu, slot) in AP_STACKS.iter().enumerate().skip(1).take(expected) {
        #[repr(C, align(16))]
        struct ApStack([u8; AP_STACK_SIZE]);
        if !gdt::prepare(cpu, kernel_root) {
            break;
        }
        let stack = Box::leak(Box::new(ApStack([0; AP_STACK_SIZE])));
        slot.store(stack as *mut ApStack as u64 + AP_STACK_SIZE as u64, Ordering::Relaxed);
        prepared = cpu + 1;
    }
    AP_LIMIT.store(prepared as u32, Ordering::Release);

    // INIT, wait 10 ms, SIPI, wait 200 us, SIPI (Intel SDM 8.4.4.1).
    let wait = |us: u64| {
        let until = cpu::rdtsc() + tsc_hz / 1_000_000 * us;
        while cpu::rdtsc() < until {
            core::hint::spin_loop();
        }
    };
    let send = |low: u32| match apic_ids {
        Some(ids) => ids.iter().filter(|&&id| id != own).for_each(|&id| apic::ipi(id, low)),
        None => apic::ipi_all_others(low),
    };
    send(apic::ICR_INIT | apic::ICR_ASSERT);
    wait(10_000);
    for _ in 0..2 {
        send(apic::ICR_STARTUP | (trampoline >> 12) as u32);
        wait(200);
    }
    // Wait for every CPU expected, or until none has checked in for
    // 100 ms (TCG is slow to start them; a listed CPU may be dead).
    let mut seen = AP_NEXT.load(Ordering::Acquire);
    loop {
        if apic_ids.is_some() && seen as usize > listed {
            break;
        }
        wait(100_000);
        let now = AP_NEXT.load(Ordering::Acquire);
        if now == seen {
            break;
        }
        seen = now;
    }
    let found = seen as usize;
    if found > prepared {
        crate::println!("[hv] {found} CPUs found; the hypervisor drives {prepared}, the other {} stay parked", found - prepared);
    }
    found.min(prepared)
}
