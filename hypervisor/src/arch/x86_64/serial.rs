//! The 16550 UARTs: COM1 is the hypervisor's console, COM2 (when QEMU
//! gives one) the control channel (`hypervisor::control`).

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const COM2: u16 = 0x2f8;

pub struct Serial;

fn outb(port: u16, v: u8) {
    // SAFETY: COM1's registers are owned by the hypervisor; writing them
    // has no effect on memory.
    unsafe { Port::new(port).write(v) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reading LSR has no side effects.
    unsafe { Port::new(port).read() }
}

/// 115200 8N1, FIFOs on, interrupts off.
fn setup(base: u16) {
    outb(base + 1, 0x00);
    outb(base + 3, 0x80);
    outb(base, 0x01);
    outb(base + 1, 0x00);
    outb(base + 3, 0x03);
    outb(base + 2, 0xc7);
    outb(base + 4, 0x03);
}

pub fn init() {
    setup(COM1);
}

/// Sets up COM2 if there is one (its scratch register keeps a value; an
/// absent port reads back all ones). Returns whether it is there.
pub fn init_control() -> bool {
    outb(COM2 + 7, 0x5a);
    if inb(COM2 + 7) != 0x5a {
        return false;
    }
    setup(COM2);
    true
}

/// A byte from the control channel, if one is waiting.
pub fn control_read() -> Option<u8> {
    (inb(COM2 + 5) & 1 != 0).then(|| inb(COM2))
}

/// Writes a line to the control channel.
pub fn control_write_line(s: &str) {
    for b in s.bytes().chain(core::iter::once(b'\n')) {
        while inb(COM2 + 5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        outb(COM2, b);
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// A byte typed on the console, if one is waiting.
pub fn try_read() -> Option<u8> {
    (inb(COM1 + 5) & 1 != 0).then(|| inb(COM1))
}

fn put(b: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, b);
}
