//! Time at boot: the TSC's frequency and the wall clock (from the CMOS RTC).
//!
//! The TSC's rate comes from CPUID where the CPU states it (leaf 0x15, the
//! crystal and its ratio; else leaf 0x16, the base frequency), else it is
//! measured against the ACPI PM timer (from the FADT), else against the
//! PIT. Nothing assumes emulated timing: every measurement takes the
//! fastest of several windows, which a descheduled VM only ever lengthens.

use super::cpu;
use x86_64::instructions::port::Port;

fn inb(port: u16) -> u8 {
    // SAFETY: PIT/CMOS/speaker ports, owned by the hypervisor.
    unsafe { Port::new(port).read() }
}

fn outb(port: u16, v: u8) {
    // SAFETY: as in `inb`.
    unsafe { Port::new(port).write(v) }
}

const PIT_HZ: u64 = 1_193_182;
/// The ACPI PM timer's rate.
const PM_TIMER_HZ: u64 = 3_579_545;

/// Where the TSC's rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    Cpuid15,
    Cpuid16,
    PmTimer,
    Pit,
}

impl TscSource {
    pub fn describe(self) -> &'static str {
        match self {
            TscSource::Cpuid15 => "CPUID leaf 0x15",
            TscSource::Cpuid16 => "CPUID leaf 0x16",
            TscSource::PmTimer => "measured against the ACPI PM timer",
            TscSource::Pit => "measured against the PIT",
        }
    }
}

/// The ACPI PM timer: its I/O port and whether it counts 32 bits (else 24).
#[derive(Clone, Copy, Debug)]
pub struct PmTimer {
    pub port: u16,
    pub bits32: bool,
}

/// TSC ticks per second, and where that came from.
pub fn tsc_hz(pm_timer: Option<PmTimer>) -> (u64, TscSource) {
    let max = core::arch::x86_64::__cpuid_count(0, 0).eax;
    if max >= 0x15 {
        let l = core::arch::x86_64::__cpuid_count(0x15, 0);
        // EAX/EBX: TSC to crystal ratio; ECX: the crystal's Hz.
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return (l.ecx as u64 * l.ebx as u64 / l.eax as u64, TscSource::Cpuid15);
        }
    }
    if max >= 0x16 {
        let mhz = core::arch::x86_64::__cpuid_count(0x16, 0).eax & 0xffff;
        if mhz != 0 {
            return (mhz as u64 * 1_000_000, TscSource::Cpuid16);
        }
    }
    match pm_timer.and_then(calibrate_pm_timer) {
        Some(hz) => (hz, TscSource::PmTimer),
        None => (calibrate_tsc(), TscSource::Pit),
    }
}

fn inl(port: u16) -> u32 {
    // SAFETY: the PM timer's port (from the FADT); reading it has no effect.
    unsafe { Port::new(port).read() }
}

/// Port reads before a PM timer that does not move is given up on (a
/// 10 ms window takes tens of thousands).
const PM_TIMER_MAX_READS: u32 = 50_000_000;

/// The smallest of five 10 ms measurements against the PM timer; `None`
/// if the timer does not count.
fn calibrate_pm_timer(t: PmTimer) -> Option<u64> {
    let mask: u32 = if t.bits32 { u32::MAX } else { 0x00ff_ffff };
    let window = (PM_TIMER_HZ / 100) as u32;
    let mut best = None;
    for _ in 0..5 {
        let start_pm = inl(t.port) & mask;
        let start = cpu::rdtsc();
        let hz = (0..PM_TIMER_MAX_READS).find_map(|_| {
            let elapsed = (inl(t.port) & mask).wrapping_sub(start_pm) & mask;
            (elapsed >= window).then(|| (cpu::rdtsc() - start) * PM_TIMER_HZ / elapsed as u64)
        })?;
        best = Some(best.map_or(hz, |b: u64| b.min(hz)));
    }
    best
}

/// TSC ticks per second: the smallest of five 10 ms measurements against
/// PIT channel 2. Under emulation the host may deschedule the VM during a
/// window, which only ever inflates a measurement, so the minimum is the
/// best estimate.
fn calibrate_tsc() -> u64 {
    let count: u64 = PIT_HZ / 100;
    (0..5)
        .map(|_| {
            // Gate channel 2 on, speaker off; mode 0 (interrupt on terminal count).
            outb(0x61, (inb(0x61) & !0x02) | 0x01);
            outb(0x43, 0b1011_0000);
            outb(0x42, count as u8);
            outb(0x42, (count >> 8) as u8);
            let start = cpu::rdtsc();
            while inb(0x61) & 0x20 == 0 {
                core::hint::spin_loop();
            }
            (cpu::rdtsc() - start) * PIT_HZ / count
        })
        .min()
        .unwrap_or(1)
}

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

/// Wall-clock time from the RTC, in nanoseconds since the Unix epoch
/// (0 if the RTC reads nonsense).
pub fn wall_clock_ns() -> u64 {
    // Wait for any update in progress to finish, then read twice until stable.
    let read = || {
        while cmos(0x0a) & 0x80 != 0 {
            core::hint::spin_loop();
        }
        [cmos(0x00), cmos(0x02), cmos(0x04), cmos(0x07), cmos(0x08), cmos(0x09), cmos(0x32)]
    };
    let mut r = read();
    loop {
        let again = read();
        if again == r {
            break;
        }
        r = again;
    }
    let b = cmos(0x0b);
    let binary = b & 0x04 != 0;
    let d = |v| hypervisor::rtc::from_bcd(v, binary);
    let mut hour = d(r[2] & 0x7f);
    if b & 0x02 == 0 && r[2] & 0x80 != 0 {
        hour = (hour % 12) + 12; // 12-hour clock, PM
    }
    let century = match d(r[6]) {
        19..=99 => d(r[6]),
        _ => 20,
    };
    hypervisor::rtc::unix_seconds(century * 100 + d(r[5]), d(r[4]), d(r[3]), hour, d(r[1]), d(r[0])).map_or(0, |s| s * 1_000_000_000)
}
