//! Time at boot: the TSC's frequency (measured against the PIT, since CPUID
//! does not give it on every CPU) and the wall clock (from the CMOS RTC).

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

/// TSC ticks per second: the smallest of five 10 ms measurements against
/// PIT channel 2. Under emulation the host may deschedule the VM during a
/// window, which only ever inflates a measurement, so the minimum is the
/// best estimate.
pub fn calibrate_tsc() -> u64 {
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
