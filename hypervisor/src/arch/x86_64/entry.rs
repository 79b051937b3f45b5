//! Entering and leaving guests: `syscall` entry, the 256 interrupt and
//! exception stubs, and `enter_guest`.
//!
//! The model is a vCPU loop, as in KVM's `KVM_RUN`: the hypervisor calls
//! [`enter`] with a guest's saved registers; the guest runs in ring 3 until it
//! makes a hypercall or takes an exception or interrupt; the entry code
//! saves every guest register into the same [`Regs`] (with the vector that
//! ended the entry) and returns from [`enter`] as if from a function call. There
//! is one hypervisor stack per CPU and no per-guest kernel stack, which keeps
//! a guest's hypervisor-side cost to its `Regs` and FPU area.

use super::cpu::{self, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_SFMASK, MSR_STAR};
use super::gdt::{IST_DOUBLE_FAULT, IST_EXCEPTION, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS, KERNEL_DS};
use core::arch::{asm, global_asm};
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};
use hypervisor::guest::regs::{FPU_FCW_OFFSET, FPU_MXCSR_OFFSET, FpuState, Regs, VECTOR_FIRST_INTERRUPT, VECTOR_SYSCALL};
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

/// Per-CPU block, reached through `GS` while in the hypervisor.
#[repr(C)]
struct PerCpu {
    /// Address of this block (`gs:0`).
    this: u64,
    /// The hypervisor's `rsp` inside `enter_guest`, restored on exit.
    kernel_rsp: u64,
    /// Where the running guest's registers are saved.
    regs: u64,
    /// Scratch for the guest `rsp` during `syscall` entry.
    user_rsp: u64,
    /// The running guest's FPU/SSE area.
    fpu: u64,
    /// This CPU's index (0 = the boot CPU).
    index: u64,
    /// Scratch for the return to a guest (its rax and rdi while the page
    /// tables switch).
    scratch: u64,
    scratch2: u64,
    /// The running guest's page-table root (switched to last, with
    /// page-table isolation).
    guest_cr3: u64,
    /// The FPU area of the guest whose x87 registers this CPU still holds
    /// after a hypercall exit (0: none). Set by `syscall_entry`, cleared by
    /// every entry and by [`leave_fpu`]: a return through the light path
    /// below is possible only while it names the guest's own area.
    fpu_live: u64,
    /// The frame `iretq` returns to the guest with: here rather than on the
    /// hypervisor's stack, which a guest's tables do not map under
    /// page-table isolation.
    iret: [u64; 5],
}

static mut PERCPU: [PerCpu; super::smp::MAX_CPUS] = [const {
    PerCpu {
        this: 0,
        kernel_rsp: 0,
        regs: 0,
        user_rsp: 0,
        fpu: 0,
        index: 0,
        scratch: 0,
        scratch2: 0,
        guest_cr3: 0,
        fpu_live: 0,
        iret: [0; 5],
    }
}; super::smp::MAX_CPUS];

fn percpu() -> *mut PerCpu {
    let p: u64;
    // SAFETY: GS points at this CPU's PerCpu block while in the hypervisor
    // (set in `init_cpu`, swapped only around guest execution).
    unsafe { asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags)) };
    p as *mut PerCpu
}

/// Page-table isolation: guests run on tables that map the hypervisor's
/// image and the local APIC but not the direct map (all RAM, every tenant's
/// memory), and every entry switches to [`KERNEL_CR3`] before it touches
/// anything else, every return to the guest's tables last (set once at
/// boot, before any guest runs: [`isolate`]).
#[unsafe(no_mangle)]
static ISOLATE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// The hypervisor's page-table root, for the entry paths.
#[unsafe(no_mangle)]
static KERNEL_CR3: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Turns page-table isolation on: from now on guests must be created on
/// the isolated upper half (`paging::isolated_upper`) and entered with
/// their root in [`enter`]. Call before any guest runs.
pub fn isolate(kernel_root: u64) {
    KERNEL_CR3.store(kernel_root, core::sync::atomic::Ordering::Relaxed);
    ISOLATE.store(1, core::sync::atomic::Ordering::Release);
}

/// Whether page-table isolation is on.
pub fn isolated() -> bool {
    ISOLATE.load(core::sync::atomic::Ordering::Acquire) != 0
}

/// Whether every return to a guest clears the CPU's buffers with VERW
/// (set once at boot, before any guest runs: [`clear_buffers_on_entry`]).
#[unsafe(no_mangle)]
static VERW_ON_ENTRY: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// VERW's operand: any valid writable data selector.
#[unsafe(no_mangle)]
static VERW_SELECTOR: u16 = KERNEL_DS;

/// Makes every return to a guest clear the CPU's internal buffers (VERW
/// with MD_CLEAR microcode), so that nothing the hypervisor just handled
/// can be sampled by the guest (MDS, TAA). Call before any guest runs.
pub fn clear_buffers_on_entry(on: bool) {
    VERW_ON_ENTRY.store(on as u8, core::sync::atomic::Ordering::Relaxed);
}

/// MXCSR for the hypervisor's own code (all exceptions masked).
#[unsafe(no_mangle)]
static KERNEL_MXCSR: u32 = 0x1f80;

/// Device interrupts (MSI-X): vectors `DEVICE_VECTOR_FIRST` and the
/// `DEVICE_VECTORS - 1` after it. The stubs note each one they take, from
/// a guest or in the idle halt alike, in [`DEVICE_PENDING`] (a bit per
/// vector) and count it in [`DEVICE_INTERRUPTS`], after the EOI; the loop
/// takes the bit with [`take_device_interrupt`]. The interrupt itself ends
/// the halt or takes the CPU from its guest (an exit like the timer's).
pub const DEVICE_VECTOR_FIRST: u8 = 0x40;
pub const DEVICE_VECTORS: usize = 16;
#[unsafe(no_mangle)]
static DEVICE_PENDING: AtomicU64 = AtomicU64::new(0);
#[unsafe(no_mangle)]
static DEVICE_INTERRUPTS: [AtomicU64; DEVICE_VECTORS] = [const { AtomicU64::new(0) }; DEVICE_VECTORS];

/// Index of device vector `vector` in the tables above.
fn device_index(vector: u8) -> usize {
    let i = vector.wrapping_sub(DEVICE_VECTOR_FIRST) as usize;
    assert!(i < DEVICE_VECTORS, "vector {vector:#x} is not a device vector");
    i
}

/// Whether device vector `vector` was taken since the last call (the bit
/// is cleared before the caller polls the device: a later interrupt sets
/// it again).
pub fn take_device_interrupt(vector: u8) -> bool {
    let bit = 1 << device_index(vector);
    DEVICE_PENDING.fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// Interrupts taken on device vector `vector` since boot.
pub fn device_interrupts(vector: u8) -> u64 {
    DEVICE_INTERRUPTS[device_index(vector)].load(Ordering::Relaxed)
}

/// The exceptions that run on a stack of their own (see `gdt`).
const VECTOR_NMI: usize = 2;
const VECTOR_DOUBLE_FAULT: usize = 8;
const VECTOR_MACHINE_CHECK: usize = 18;
/// A gate's attributes: present, DPL 0 (so `int n` from ring 3 is a #GP),
/// 64-bit interrupt gate (interrupts off on entry).
const GATE_INTERRUPT_DPL0: u8 = 0x8e;

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

static mut IDT: [Gate; 256] = [Gate { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, reserved: 0 }; 256];

unsafe extern "C" {
    fn interrupt_stubs();
    fn syscall_entry();
    fn enter_guest(regs: *mut Regs, sysret: u64);
    fn fpu_leave(fpu: *mut FpuState);
}

/// Fills the shared IDT (once, on the boot CPU).
#[allow(clippy::needless_range_loop)] // `IDT` is a `static mut`: index, don't borrow.
pub fn init_idt() {
    let stubs = interrupt_stubs as *const () as u64;
    for v in 0..256usize {
        let addr = stubs + 16 * v as u64;
        let ist = match v {
            VECTOR_NMI => IST_NMI,
            VECTOR_DOUBLE_FAULT => IST_DOUBLE_FAULT,
            VECTOR_MACHINE_CHECK => IST_MACHINE_CHECK,
            _ => IST_EXCEPTION,
        };
        let gate = Gate {
            offset_low: addr as u16,
            selector: KERNEL_CS,
            ist: ist as u8,
            attributes: GATE_INTERRUPT_DPL0,
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
        // SAFETY: single-threaded boot; nothing reads the IDT before lidt.
        unsafe { IDT[v] = gate };
    }
}

/// Loads the IDT, this CPU's per-CPU block and the `syscall` MSRs.
pub fn init_cpu(cpu: usize) {
    // SAFETY: the IDT is static and filled (init_idt); each CPU's per-CPU
    // block is its own; the MSR values follow the GDT layout (gdt.rs) and
    // the entry code below.
    unsafe {
        lidt(&DescriptorTablePointer {
            limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
            base: VirtAddr::new(&raw const IDT as u64),
        });
        let percpu = &raw mut PERCPU[cpu];
        (*percpu).this = percpu as u64;
        (*percpu).index = cpu as u64;
        cpu::wrmsr(MSR_GS_BASE, percpu as u64);
        cpu::wrmsr(MSR_KERNEL_GS_BASE, 0);
        cpu::wrmsr(MSR_STAR, ((KERNEL_DS as u64) << 48) | ((KERNEL_CS as u64) << 32));
        cpu::wrmsr(MSR_LSTAR, syscall_entry as *const () as u64);
        // Clear TF, IF, DF, IOPL, NT and AC on entry.
        cpu::wrmsr(MSR_SFMASK, 0x4_7700);
    }
}

/// Runs the guest until its next exit; afterwards `regs` holds its state and
/// `regs.vector` says why it stopped. `root` is the guest's page-table root:
/// with isolation the return path switches to it last; without, the caller
/// has loaded it.
pub fn enter(regs: &mut Regs, fpu: &mut FpuState, sysret: bool, root: u64) {
    regs.rflags = regs.entry_rflags();
    debug_assert!(regs.rip < abi::layout::USER_END);
    // SAFETY: `regs` and `fpu` outlive the call and are reached only through
    // the per-CPU block while the guest runs; the current CR3 maps the
    // guest's half; rflags is sanitised above and rip is canonical (checked
    // by `Guest::handle_exit`), so iret/sysret cannot fault in ring 0.
    unsafe {
        (*percpu()).fpu = fpu as *mut FpuState as u64;
        (*percpu()).guest_cr3 = root;
        enter_guest(regs, sysret as u64);
    }
    // Every entry path sets the hypervisor's flags before Rust runs (SFMASK
    // for `syscall`, `popfq` in the stubs); a path that forgot would hand
    // the guest's DF or AC to everything after this.
    let flags = cpu::rflags();
    assert!(flags & (cpu::RFLAGS_DF | cpu::RFLAGS_AC) == 0, "guest exit with RFLAGS {flags:#x}: DF or AC leaked into the hypervisor");
}

/// The guest whose FPU area is `fpu` leaves this CPU: if a hypercall exit
/// left its x87 state here, its control word goes into `fpu` (the rest is
/// clobbered by the ABI), and the next entry of any guest here restores a
/// whole saved state (so a new guest whose area lands at the same address
/// cannot inherit registers).
pub fn leave_fpu(fpu: &mut FpuState) {
    // SAFETY: `fpu_leave` reads this CPU's block and writes at most the
    // two control-word bytes of `fpu`, which is ours for the call.
    unsafe { fpu_leave(fpu) };
}

/// Interrupt frame as the stub leaves it for [`kernel_fault`].
#[repr(C)]
pub struct KernelFrame {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// An exception in the hypervisor itself: report and stop the machine.
#[unsafe(no_mangle)]
extern "C" fn kernel_fault(frame: &KernelFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    panic!(
        "CPU exception {} (error {:#x}) in the hypervisor at ip {:#x}, rsp {:#x}, cr2 {:#x}",
        frame.vector, frame.error, frame.rip, frame.rsp, cr2
    );
}

global_asm!(
    r#"
    .text
    .altmacro
    .macro stub v
    .p2align 4
    .if (\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    jmp exception_common
    .endm

    .p2align 4
    .global interrupt_stubs
interrupt_stubs:
    .set v, 0
    .rept 256
    stub %v
    .set v, v + 1
    .endr
    .noaltmacro

    /* Page-table isolation, the way in: the hypervisor's tables (with
       isolation the guest's map no hypervisor memory beyond the image),
       clobbering rax. */
    .macro to_kernel_tables
    testb $1, ISOLATE(%rip)
    jz 80f
    movq KERNEL_CR3(%rip), %rax
    movq %rax, %cr3
80:
    .endm

    /* The way out, once every register but rax and rdi holds the guest's
       and rdi points at its `Regs`: rax and rdi go through this CPU's block
       while the guest's tables come in (with isolation), since `Regs` may
       not be mapped in them. */
    .macro to_guest_tables
    movq {rax}(%rdi), %rax
    movq %rax, %gs:{scratch}
    movq {rdi}(%rdi), %rax
    movq %rax, %gs:{scratch2}
    testb $1, ISOLATE(%rip)
    jz 81f
    movq %gs:{guest_cr3}, %rax
    movq %rax, %cr3
81:
    movq %gs:{scratch}, %rax
    movq %gs:{scratch2}, %rdi
    .endm

    /* A device's vector (rax free, the vector at 8(%rsp)): note it for
       the loop and count it (`take_device_interrupt`). The tables are in
       the image, in the top 2 GiB (code-model kernel), so an absolute
       32-bit address with an index reaches them. */
    .macro note_device
    movq 8(%rsp), %rax
    subq ${device_first}, %rax
    cmpq ${device_vectors}, %rax
    jae 83f
    lock btsq %rax, DEVICE_PENDING(%rip)
    lock incq DEVICE_INTERRUPTS(,%rax,8)
83:
    .endm

    /* Last before the return, after every load of hypervisor memory:
       clear the CPU's buffers where that is needed (VERW changes only ZF;
       iretq and sysretq load the guest's flags). */
    .macro clear_buffers
    testb $1, VERW_ON_ENTRY(%rip)
    jz 82f
    verw VERW_SELECTOR(%rip)
82:
    .endm

exception_common:
    /* The hypervisor's own flags before anything else: the gate cleared
       IF, TF and NT, but DF and AC are the interrupted code's. With DF set
       every `rep movs`/`rep stos` runs backwards (a "zeroed" frame keeps its
       contents and the 4 KiB below it are cleared), and AC set turns SMAP
       off. `popfq` of a constant does both on any CPU (`clac` is #UD
       without SMAP); the interrupted RFLAGS is safe in the frame. */
    pushq $2
    popfq
    testb $3, 24(%rsp)
    jz 1f
    swapgs
    pushq %rax
    /* Before anything else (the frame and this push are on the interrupt
       stack, in the image). */
    to_kernel_tables
    /* Acknowledge device interrupts and IPIs (32..=254) here, once per
       interrupt taken, never later in Rust: an EOI sent per exit or per
       idle wake-up is lost when two interrupts arrive for one, and the
       vector then stays in service for good. 255 is the spurious vector
       (no EOI). */
    movq 8(%rsp), %rax
    subq ${first_interrupt}, %rax
    cmpq $({spurious} - {first_interrupt}), %rax
    jae 4f
    movl $0, {apic_eoi}
    note_device
4:
    movq %gs:{regs}, %rax
    movq %rbx, {rbx}(%rax)
    movq %rcx, {rcx}(%rax)
    movq %rdx, {rdx}(%rax)
    movq %rsi, {rsi}(%rax)
    movq %rdi, {rdi}(%rax)
    movq %rbp, {rbp}(%rax)
    movq %r8, {r8}(%rax)
    movq %r9, {r9}(%rax)
    movq %r10, {r10}(%rax)
    movq %r11, {r11}(%rax)
    movq %r12, {r12}(%rax)
    movq %r13, {r13}(%rax)
    movq %r14, {r14}(%rax)
    movq %r15, {r15}(%rax)
    popq %rbx
    movq %rbx, {rax}(%rax)
    popq %rbx
    movq %rbx, {vector}(%rax)
    popq %rbx
    movq %rbx, {error}(%rax)
    popq %rbx
    movq %rbx, {rip}(%rax)
    popq %rbx
    popq %rbx
    movq %rbx, {rflags}(%rax)
    popq %rbx
    movq %rbx, {rsp}(%rax)
    popq %rbx
    movq %cr2, %rbx
    movq %rbx, {cr2}(%rax)
    jmp guest_exit
1:
    cmpq ${first_interrupt}, (%rsp)
    jae 3f
    movq %rsp, %rdi
    subq $8, %rsp
    call kernel_fault
    ud2
3:
    /* An interrupt in the hypervisor (only while idle in cpu::idle):
       acknowledge it unless spurious, note a device's, and return. */
    cmpq ${spurious}, (%rsp)
    je 5f
    movl $0, {apic_eoi}
    pushq %rax
    note_device
    popq %rax
5:
    addq $16, %rsp
    iretq

    .global syscall_entry
syscall_entry:
    swapgs
    /* As in exception_common: the hypervisor's tables first (the flags
       this changes are the hypervisor's: the guest's are in r11). */
    movq %rax, %gs:{scratch}
    to_kernel_tables
    movq %gs:{scratch}, %rax
    movq %rsp, %gs:{user_rsp}
    movq %gs:{regs}, %rsp
    movq %rax, {rax}(%rsp)
    movq %rbx, {rbx}(%rsp)
    movq %rcx, {rcx}(%rsp)
    movq %rdx, {rdx}(%rsp)
    movq %rsi, {rsi}(%rsp)
    movq %rdi, {rdi}(%rsp)
    movq %rbp, {rbp}(%rsp)
    movq %r8, {r8}(%rsp)
    movq %r9, {r9}(%rsp)
    movq %r10, {r10}(%rsp)
    movq %r11, {r11}(%rsp)
    movq %r12, {r12}(%rsp)
    movq %r13, {r13}(%rsp)
    movq %r14, {r14}(%rsp)
    movq %r15, {r15}(%rsp)
    movq %rcx, {rip}(%rsp)
    movq %r11, {rflags}(%rsp)
    movq %gs:{user_rsp}, %rax
    movq %rax, {rsp}(%rsp)
    movq ${syscall_vector}, {vector}(%rsp)
    movq $0, {error}(%rsp)
    /* A hypercall clobbers the vector registers and the x87 stack, as a
       call does (docs/abi.md), so only the guest's MXCSR is saved (its x87
       control word only if it leaves the CPU: `fpu_leave`), and the
       hypervisor's code (the precompiled core uses SSE) gets a MXCSR with
       every exception masked. The hypervisor never runs an x87
       instruction (`cargo xtask lint` checks), so the x87 state stays the
       guest's, a pending exception included; the return zeroes every XMM
       register (`enter_guest`), or, once the guest left the CPU,
       `FpuState::clobber_for_hypercall` clears the saved area. */
    movq %gs:{fpu}, %rax
    stmxcsr {fpu_mxcsr}(%rax)
    movq %rax, %gs:{fpu_live}
    ldmxcsr KERNEL_MXCSR(%rip)
    jmp hypervisor_resume

guest_exit:
    /* An interrupt or exception: save the guest's whole x87/SSE state and
       give the hypervisor's code a MXCSR with every exception masked. */
    movq %gs:{fpu}, %rax
    fxsave64 (%rax)
    /* fninit: a known x87 control word and no pending x87 exception (the
       guest may have unmasked one; fxsave does not clear it). */
    fninit
    ldmxcsr KERNEL_MXCSR(%rip)
hypervisor_resume:
    movq %gs:{kernel_rsp}, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret

    /* rdi: the FPU area of the guest leaving this CPU (`leave_fpu`). */
    .global fpu_leave
fpu_leave:
    cmpq %rdi, %gs:{fpu_live}
    jne 8f
    fnstcw {fpu_fcw}(%rdi)
8:
    movq $0, %gs:{fpu_live}
    ret

    .global enter_guest
enter_guest:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %gs:{kernel_rsp}
    movq %rdi, %gs:{regs}
    movq %gs:{fpu}, %rax
    /* Back from a hypercall on the CPU that still holds the guest's x87
       state (nothing else entered since): its MXCSR, and every XMM
       register zeroed, so that nothing of the hypervisor's (or of a guest
       whose frames it just copied) is left in them. Otherwise the whole
       saved state. */
    testq %rsi, %rsi
    jz 6f
    cmpq %rax, %gs:{fpu_live}
    jne 6f
    xorps %xmm0, %xmm0
    xorps %xmm1, %xmm1
    xorps %xmm2, %xmm2
    xorps %xmm3, %xmm3
    xorps %xmm4, %xmm4
    xorps %xmm5, %xmm5
    xorps %xmm6, %xmm6
    xorps %xmm7, %xmm7
    xorps %xmm8, %xmm8
    xorps %xmm9, %xmm9
    xorps %xmm10, %xmm10
    xorps %xmm11, %xmm11
    xorps %xmm12, %xmm12
    xorps %xmm13, %xmm13
    xorps %xmm14, %xmm14
    xorps %xmm15, %xmm15
    ldmxcsr {fpu_mxcsr}(%rax)
    jmp 7f
6:
    fxrstor64 (%rax)
7:
    movq $0, %gs:{fpu_live}
    testq %rsi, %rsi
    jnz 2f
    /* iretq: the frame goes in this CPU's block (mapped in every guest's
       tables), the registers from `regs` (which may not be), then the
       guest's tables, then rax and rdi from the block. */
    movq %gs:{this}, %rsp
    addq ${iret_end}, %rsp
    pushq ${user_ds}
    pushq {rsp}(%rdi)
    pushq {rflags}(%rdi)
    pushq ${user_cs}
    pushq {rip}(%rdi)
    movq {rbx}(%rdi), %rbx
    movq {rcx}(%rdi), %rcx
    movq {rdx}(%rdi), %rdx
    movq {rsi}(%rdi), %rsi
    movq {rbp}(%rdi), %rbp
    movq {r8}(%rdi), %r8
    movq {r9}(%rdi), %r9
    movq {r10}(%rdi), %r10
    movq {r11}(%rdi), %r11
    movq {r12}(%rdi), %r12
    movq {r13}(%rdi), %r13
    movq {r14}(%rdi), %r14
    movq {r15}(%rdi), %r15
    to_guest_tables
    clear_buffers
    swapgs
    iretq
2:
    /* The guest's rsp through this CPU's block too (rax is free yet). */
    movq {rsp}(%rdi), %rax
    movq %rax, %gs:{user_rsp}
    movq {rip}(%rdi), %rcx
    movq {rflags}(%rdi), %r11
    movq {rbx}(%rdi), %rbx
    movq {rdx}(%rdi), %rdx
    movq {rsi}(%rdi), %rsi
    movq {rbp}(%rdi), %rbp
    movq {r8}(%rdi), %r8
    movq {r9}(%rdi), %r9
    movq {r10}(%rdi), %r10
    movq {r12}(%rdi), %r12
    movq {r13}(%rdi), %r13
    movq {r14}(%rdi), %r14
    movq {r15}(%rdi), %r15
    to_guest_tables
    movq %gs:{user_rsp}, %rsp
    clear_buffers
    swapgs
    sysretq
    "#,
    rax = const offset_of!(Regs, rax),
    rbx = const offset_of!(Regs, rbx),
    rcx = const offset_of!(Regs, rcx),
    rdx = const offset_of!(Regs, rdx),
    rsi = const offset_of!(Regs, rsi),
    rdi = const offset_of!(Regs, rdi),
    rbp = const offset_of!(Regs, rbp),
    r8 = const offset_of!(Regs, r8),
    r9 = const offset_of!(Regs, r9),
    r10 = const offset_of!(Regs, r10),
    r11 = const offset_of!(Regs, r11),
    r12 = const offset_of!(Regs, r12),
    r13 = const offset_of!(Regs, r13),
    r14 = const offset_of!(Regs, r14),
    r15 = const offset_of!(Regs, r15),
    rip = const offset_of!(Regs, rip),
    rsp = const offset_of!(Regs, rsp),
    rflags = const offset_of!(Regs, rflags),
    vector = const offset_of!(Regs, vector),
    error = const offset_of!(Regs, error),
    cr2 = const offset_of!(Regs, cr2),
    regs = const offset_of!(PerCpu, regs),
    user_rsp = const offset_of!(PerCpu, user_rsp),
    fpu = const offset_of!(PerCpu, fpu),
    kernel_rsp = const offset_of!(PerCpu, kernel_rsp),
    this = const offset_of!(PerCpu, this),
    scratch = const offset_of!(PerCpu, scratch),
    scratch2 = const offset_of!(PerCpu, scratch2),
    guest_cr3 = const offset_of!(PerCpu, guest_cr3),
    fpu_live = const offset_of!(PerCpu, fpu_live),
    fpu_fcw = const FPU_FCW_OFFSET,
    fpu_mxcsr = const FPU_MXCSR_OFFSET,
    iret_end = const offset_of!(PerCpu, iret) + 5 * 8,
    apic_eoi = const super::apic::EOI_VA,
    first_interrupt = const VECTOR_FIRST_INTERRUPT,
    spurious = const super::apic::SPURIOUS_VECTOR,
    device_first = const DEVICE_VECTOR_FIRST,
    device_vectors = const DEVICE_VECTORS,
    syscall_vector = const VECTOR_SYSCALL,
    user_ds = const super::gdt::USER_DS,
    user_cs = const super::gdt::USER_CS,
    options(att_syntax)
);
