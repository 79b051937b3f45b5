//! The local APIC (xAPIC, MMIO) and its timer: one-shot count mode, or
//! TSC-deadline mode where the CPU has it.

use super::cpu;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where the APIC's registers are mapped (uncached), see `paging::map_mmio`.
pub const APIC_VA: u64 = 0xffff_ffff_fee0_0000;
/// Vector of the timer interrupt.
pub const TIMER_VECTOR: u8 = hypervisor::guest::regs::VECTOR_FIRST_INTERRUPT as u8;
/// Vector for spurious interrupts (needs no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

const MSR_APIC_BASE: u32 = 0x1b;
const MSR_TSC_DEADLINE: u32 = 0x6e0;
const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xb0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL: u64 = 0x380;
const REG_CURRENT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;
/// IA32_APIC_BASE: the APIC is enabled; the base address bits.
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// Spurious-vector register: the APIC is software-enabled.
const SVR_ENABLE: u32 = 1 << 8;
/// Interrupt command register: the IPI is not yet delivered; the
/// "all excluding self" destination shorthand.
const ICR_PENDING: u32 = 1 << 12;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;
/// LVT timer: masked; TSC-deadline mode (one-shot is 0).
const LVT_MASKED: u32 = 1 << 16;
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
/// Divide configuration: by 16.
const DIVIDE_BY_16: u32 = 0b0011;
/// Where the APIC id sits in the ID register and in the ICR's high half.
const ID_SHIFT: u32 = 24;

/// The EOI register's address, for the interrupt stubs (entry.rs), which
/// acknowledge every interrupt they take; as an `i64` because the stubs use
/// it as a sign-extended 32-bit absolute address.
pub const EOI_VA: i64 = (APIC_VA + REG_EOI) as i64;

/// Vector of the wake-up IPI (a guest on that CPU became runnable).
pub const WAKE_VECTOR: u8 = 0xf0;
/// Vector of the uplink's interrupts (MSI-X, to CPU 0): the first device
/// vector, which the stubs note for the loop (`entry::take_device_interrupt`).
pub const UPLINK_VECTOR: u8 = super::entry::DEVICE_VECTOR_FIRST;

static TSC_DEADLINE: AtomicBool = AtomicBool::new(false);
/// APIC ids by CPU index, for IPIs.
static IDS: [core::sync::atomic::AtomicU32; super::smp::MAX_CPUS] = [const { core::sync::atomic::AtomicU32::new(0) }; super::smp::MAX_CPUS];

/// Interrupt command register: delivery modes INIT and start-up, and the
/// level bit INIT needs.
pub const ICR_INIT: u32 = 0b101 << 8;
pub const ICR_STARTUP: u32 = 0b110 << 8;
pub const ICR_ASSERT: u32 = 1 << 14;

/// The xAPIC destination that means every CPU: ids stop below it.
pub const BROADCAST_ID: u32 = 0xff;

/// This CPU's APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> ID_SHIFT
}

/// Records this CPU's APIC id under its index.
pub fn register(cpu: usize) {
    IDS[cpu].store(id(), Ordering::Relaxed);
}

/// Sends an IPI to APIC id `dest` (`low` holds the delivery mode and
/// vector) and waits until it is delivered.
pub fn ipi(dest: u32, low: u32) {
    write(REG_ICR_HIGH, dest << ID_SHIFT);
    write(REG_ICR_LOW, low);
    while read(REG_ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// CPU `cpu`'s local APIC id (as registered), the destination of
/// interrupts meant for it (MSI-X messages, IPIs).
pub fn id_of(cpu: usize) -> u32 {
    IDS[cpu].load(Ordering::Relaxed)
}

/// Interrupts CPU `cpu` with the wake-up vector (it leaves `hlt`, or its
/// guest exits, and it looks at its run queue again).
pub fn wake_cpu(cpu: usize) {
    ipi(id_of(cpu), WAKE_VECTOR as u32);
}
/// APIC timer ticks (divide by 16) per 2^32 TSC ticks.
static TICKS_PER_TSC: AtomicU64 = AtomicU64::new(0);

fn read(reg: u64) -> u32 {
    // SAFETY: APIC_VA maps the APIC's register page (uncached); `reg` is a
    // valid, aligned register offset.
    unsafe { ((APIC_VA + reg) as *const u32).read_volatile() }
}

fn write(reg: u64, v: u32) {
    // SAFETY: as in `read`.
    unsafe { ((APIC_VA + reg) as *mut u32).write_volatile(v) }
}

/// The APIC's physical base address.
pub fn base() -> u64 {
    cpu::rdmsr(MSR_APIC_BASE) & APIC_BASE_ADDRESS
}

/// IA32_APIC_BASE: x2APIC mode (EXTD).
const APIC_BASE_X2APIC: u64 = 1 << 10;
/// Set when the firmware left an APIC in x2APIC mode and it was switched
/// back to xAPIC.
static LEFT_IN_X2APIC: AtomicBool = AtomicBool::new(false);

/// Whether the firmware had left an APIC in x2APIC mode (and it was
/// switched to xAPIC, which the hypervisor drives).
pub fn was_x2apic() -> bool {
    LEFT_IN_X2APIC.load(Ordering::Relaxed)
}

fn enable() {
    let base = cpu::rdmsr(MSR_APIC_BASE);
    if base & APIC_BASE_X2APIC != 0 {
        // Firmware on large machines may hand over in x2APIC mode, where
        // the memory-mapped registers are gone. The only way back to xAPIC
        // is through disabled (SDM 10.12.5); the APIC ids the MADT gives
        // fit xAPIC (ids past 254 are not started).
        // SAFETY: disables, then re-enables the APIC in xAPIC mode at the
        // same base; interrupts are off and nothing is pending that matters
        // before the hypervisor programs it below.
        unsafe {
            cpu::wrmsr(MSR_APIC_BASE, base & !(APIC_BASE_ENABLE | APIC_BASE_X2APIC));
            cpu::wrmsr(MSR_APIC_BASE, base & !APIC_BASE_X2APIC);
        }
        LEFT_IN_X2APIC.store(true, Ordering::Relaxed);
    }
    // SAFETY: sets the global-enable bit of IA32_APIC_BASE, keeping the base.
    unsafe { cpu::wrmsr(MSR_APIC_BASE, cpu::rdmsr(MSR_APIC_BASE) | APIC_BASE_ENABLE) };
    write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
}

/// Enables an application processor's APIC with the boot CPU's timer
/// calibration (all APICs run off the same bus clock).
pub fn init_ap() {
    enable();
    if TSC_DEADLINE.load(Ordering::Relaxed) {
        write(REG_LVT_TIMER, LVT_TSC_DEADLINE | TIMER_VECTOR as u32);
    } else {
        write(REG_DIVIDE, DIVIDE_BY_16);
        write(REG_LVT_TIMER, TIMER_VECTOR as u32);
    }
}

/// Sends an IPI with the "all excluding self" shorthand (`low` holds the
/// delivery mode and vector) and waits until it is delivered.
pub fn ipi_all_others(low: u32) {
    write(REG_ICR_HIGH, 0);
    write(REG_ICR_LOW, low | ICR_ALL_BUT_SELF);
    while read(REG_ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// Enables the boot CPU's APIC and calibrates its timer against the TSC.
pub fn init(tsc_hz: u64) {
    enable();
    let deadline = cpu::has_tsc_deadline();
    TSC_DEADLINE.store(deadline, Ordering::Relaxed);
    if deadline {
        write(REG_LVT_TIMER, LVT_TSC_DEADLINE | TIMER_VECTOR as u32);
        return;
    }
    // Count APIC ticks over 10 ms of TSC.
    write(REG_DIVIDE, DIVIDE_BY_16);
    write(REG_LVT_TIMER, LVT_MASKED | TIMER_VECTOR as u32); // while measuring
    let window = tsc_hz / 100;
    let start = cpu::rdtsc();
    write(REG_INITIAL, u32::MAX);
    while cpu::rdtsc() - start < window {
        core::hint::spin_loop();
    }
    let ticks = (u32::MAX - read(REG_CURRENT)) as u64;
    write(REG_INITIAL, 0);
    TICKS_PER_TSC.store((ticks << 32) / window.max(1), Ordering::Relaxed);
    write(REG_LVT_TIMER, TIMER_VECTOR as u32); // one-shot
}

/// Arms the timer to fire at TSC value `deadline` (at once if it passed).
pub fn arm(deadline: u64) {
    if TSC_DEADLINE.load(Ordering::Relaxed) {
        // The write to IA32_TSC_DEADLINE is not ordered after earlier
        // stores to the memory-mapped APIC (the LVT write that chose
        // deadline mode, an EOI): the SDM (10.5.4.1) asks for a fence,
        // as Linux does (`weak_wrmsr_fence`).
        // SAFETY: fences only order memory accesses.
        unsafe { core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags)) };
        // SAFETY: IA32_TSC_DEADLINE exists (CPUID checked in init).
        unsafe { cpu::wrmsr(MSR_TSC_DEADLINE, deadline.max(1)) };
        return;
    }
    let delta = deadline.saturating_sub(cpu::rdtsc());
    let ticks = ((delta as u128 * TICKS_PER_TSC.load(Ordering::Relaxed) as u128) >> 32).clamp(1, u32::MAX as u128);
    write(REG_INITIAL, ticks as u32);
}
