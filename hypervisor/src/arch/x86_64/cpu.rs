//! CPU features, control registers and model-specific registers.

use core::arch::x86_64::__cpuid_count;
use x86_64::registers::model_specific::Msr;

pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_SFMASK: u32 = 0xc000_0084;
pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// CR4 bits the hypervisor turns on (or off).
pub mod cr4 {
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    /// User-mode instruction prevention (`sgdt`, `sidt`, ... fault in ring 3).
    pub const UMIP: u64 = 1 << 11;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
}

/// CPUID feature bits: leaf 1 EDX, leaf 7 EBX/ECX/EDX, leaf 0x8000_0001 EDX.
mod cpuid {
    pub const L1_EDX_PGE: u32 = 1 << 13;
    pub const L7_EBX_SMEP: u32 = 1 << 7;
    pub const L7_EBX_SMAP: u32 = 1 << 20;
    pub const L7_ECX_UMIP: u32 = 1 << 2;
    pub const L7_EDX_MD_CLEAR: u32 = 1 << 10;
    pub const L7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
    pub const E1_EDX_NX: u32 = 1 << 20;
    pub const E1_EDX_PDPE1GB: u32 = 1 << 26;
    pub const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
    pub const L1_ECX_RDRAND: u32 = 1 << 30;
}

/// The features the hypervisor uses or hardens with, read once at boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub nx: bool,
    pub smep: bool,
    pub smap: bool,
    pub umip: bool,
    pub pdpe1gb: bool,
    pub pge: bool,
}

/// Physical address bits (CPUID 0x80000008; 36 where the leaf is missing).
pub fn physical_address_bits() -> u32 {
    if __cpuid_count(0x8000_0000, 0).eax >= 0x8000_0008 { __cpuid_count(0x8000_0008, 0).eax & 0xff } else { 36 }
}

pub fn features() -> Features {
    let (l1, l7, e1) = (__cpuid_count(1, 0), __cpuid_count(7, 0), __cpuid_count(0x8000_0001, 0));
    Features {
        nx: e1.edx & cpuid::E1_EDX_NX != 0,
        pdpe1gb: e1.edx & cpuid::E1_EDX_PDPE1GB != 0,
        pge: l1.edx & cpuid::L1_EDX_PGE != 0,
        smep: l7.ebx & cpuid::L7_EBX_SMEP != 0,
        smap: l7.ebx & cpuid::L7_EBX_SMAP != 0,
        umip: l7.ecx & cpuid::L7_ECX_UMIP != 0,
    }
}

/// IA32_ARCH_CAPABILITIES: which speculation flaws the CPU does not have.
const MSR_ARCH_CAPABILITIES: u32 = 0x10a;
const ARCH_CAP_RDCL_NO: u64 = 1 << 0;
const ARCH_CAP_MDS_NO: u64 = 1 << 5;
const ARCH_CAP_TAA_NO: u64 = 1 << 8;

/// The speculative-execution flaws that matter to a hypervisor whose
/// guests share its page tables' upper half, as CPUID and
/// IA32_ARCH_CAPABILITIES describe them (only Intel's CPUs have them;
/// an Intel CPU without the MSR has them all).
#[derive(Clone, Copy, Debug, Default)]
pub struct Speculation {
    /// Rogue data cache load (Meltdown): ring 3 reads supervisor pages
    /// speculatively.
    pub meltdown: bool,
    /// Microarchitectural data sampling (and TSX async abort): ring 3
    /// samples the CPU's internal buffers.
    pub mds: bool,
    /// VERW clears those buffers (the microcode has MD_CLEAR).
    pub md_clear: bool,
}

pub fn speculation() -> Speculation {
    let l0 = __cpuid_count(0, 0);
    let intel = (l0.ebx, l0.edx, l0.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e); // "GenuineIntel"
    let l7 = __cpuid_count(7, 0);
    let caps = if l7.edx & cpuid::L7_EDX_ARCH_CAPABILITIES != 0 { rdmsr(MSR_ARCH_CAPABILITIES) } else { 0 };
    Speculation {
        meltdown: intel && caps & ARCH_CAP_RDCL_NO == 0,
        mds: intel && caps & (ARCH_CAP_MDS_NO | ARCH_CAP_TAA_NO) != (ARCH_CAP_MDS_NO | ARCH_CAP_TAA_NO),
        md_clear: l7.edx & cpuid::L7_EDX_MD_CLEAR != 0,
    }
}

/// # Safety
/// The caller knows what the MSR controls and that the value is valid.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(msr).write(value) }
}

pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: only called with architectural MSRs that exist on x86_64.
    unsafe { Msr::new(msr).read() }
}

/// Whether the APIC timer has TSC-deadline mode.
pub fn has_tsc_deadline() -> bool {
    __cpuid_count(1, 0).ecx & cpuid::L1_ECX_TSC_DEADLINE != 0
}

/// A random 64-bit seed: RDRAND's where the CPU has it (retried as the
/// SDM advises: it may briefly run dry), else the time-stamp counter's
/// low bits mixed (boot timing varies; a weak seed, said at boot).
pub fn random_seed() -> (u64, bool) {
    if __cpuid_count(1, 0).ecx & cpuid::L1_ECX_RDRAND != 0 {
        for _ in 0..10 {
            let mut v = 0u64;
            // SAFETY: RDRAND exists (CPUID above) and only writes `v`.
            if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
                return (v, true);
            }
        }
    }
    (rdtsc().wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29), false)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// RFLAGS.DF, the direction flag (string instructions run backwards).
pub const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.AC, alignment check; in ring 0 it suspends SMAP.
pub const RFLAGS_AC: u64 = 1 << 18;

/// The current RFLAGS.
pub fn rflags() -> u64 {
    let v: u64;
    // SAFETY: pushfq/pop only read the flags (the push is popped at once).
    unsafe { core::arch::asm!("pushfq; pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

/// Halts until the next interrupt, then returns with interrupts off again.
/// The interrupt is taken on an IST stack (entry.rs) and returns here.
pub fn idle() {
    // SAFETY: `sti; hlt` is the atomic enable-and-wait idiom (the interrupt
    // shadow of sti covers hlt); the ring-0 interrupt path only returns.
    unsafe { core::arch::asm!("sti; hlt; cli", options(nomem, nostack)) };
}

pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// The new value keeps paging, PAE and SSE on and enables only features the
/// CPU has.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Turns global pages off (and so flushes every TLB entry, global ones
/// too): with page-table isolation no translation of the hypervisor's may
/// outlive a switch to a guest's tables.
pub fn disable_global_pages() {
    // SAFETY: clearing CR4.PGE only stops global TLB entries.
    unsafe { write_cr4(read_cr4() & !cr4::PGE) };
}

/// Switches to the page tables rooted at `pml4`.
///
/// # Safety
/// `pml4` maps the hypervisor (code, data, stacks, direct map) exactly as
/// the current tables do.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: interrupts stay off; this CPU simply stops.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Ends QEMU through `isa-debug-exit` with `value` (see `abi::debug_exit`).
/// Returns only when the device is absent.
pub fn debug_exit(value: u8) {
    // SAFETY: port 0xf4 is the debug-exit device or nothing.
    unsafe { x86_64::instructions::port::Port::<u32>::new(abi::debug_exit::PORT).write(value as u32) };
}

/// Masks every line of the legacy 8259 PICs: the hypervisor takes no
/// interrupts from them (their default vectors collide with exceptions).
pub fn mask_pic() {
    // SAFETY: writing the PICs' mask registers only masks interrupt lines.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff);
        x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff);
    }
}
