//! The 16550 UARTs: COM1 (or the port the firmware's SPCR table names) is
//! the hypervisor's console, COM2 (when QEMU gives one) the control
//! channel (`hypervisor::control`).

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const COM2: u16 = 0x2f8;

/// Register offsets from a UART's base port (16550).
mod reg {
    /// Receive buffer (read) / transmit holding (write); divisor low byte
    /// while DLAB is set.
    pub const DATA: u16 = 0;
    /// Interrupt enable; divisor high byte while DLAB is set.
    pub const IER: u16 = 1;
    /// FIFO control (write).
    pub const FCR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
    /// Scratch: keeps what is written, if the UART exists.
    pub const SCRATCH: u16 = 7;
}

/// Line control: 8 data bits, no parity, 1 stop bit; the divisor latch.
const LCR_8N1: u8 = 0x03;
const LCR_DLAB: u8 = 0x80;
/// FIFO control: enable, clear both FIFOs, 14-byte receive trigger.
const FCR_ENABLE_CLEAR_14: u8 = 0xc7;
/// Modem control: DTR and RTS.
const MCR_DTR_RTS: u8 = 0x03;
/// Line status: a received byte is waiting; the transmit holding register
/// is empty.
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
/// Divisor of the 115,200 baud base clock for 115,200 baud.
const DIVISOR_115200: u8 = 1;

pub struct Serial;

fn outb(port: u16, v: u8) {
    // SAFETY: `port` is a register of COM1 or COM2, which the hypervisor
    // owns (nothing else drives them); port I/O to a UART does not touch
    // memory.
    unsafe { Port::new(port).write(v) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reading a UART register does not touch
    // memory (reading DATA takes the received byte, which is the point).
    unsafe { Port::new(port).read() }
}

/// 115200 8N1, FIFOs on, interrupts off.
fn setup(base: u16) {
    outb(base + reg::IER, 0x00);
    outb(base + reg::LCR, LCR_DLAB);
    outb(base + reg::DATA, DIVISOR_115200);
    outb(base + reg::IER, 0x00);
    outb(base + reg::LCR, LCR_8N1);
    outb(base + reg::FCR, FCR_ENABLE_CLEAR_14);
    outb(base + reg::MCR, MCR_DTR_RTS);
}

/// The console's UART: COM1 unless the firmware's SPCR names another.
static CONSOLE: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(COM1);

fn console() -> u16 {
    CONSOLE.load(core::sync::atomic::Ordering::Relaxed)
}

pub fn init() {
    setup(COM1);
}

/// Moves the console to the 16550 at I/O port `base` (the one the
/// firmware's SPCR table names); false (and no move) for COM2, which is
/// the control channel's.
pub fn use_console(base: u16) -> bool {
    if base == COM2 {
        return false;
    }
    setup(base);
    CONSOLE.store(base, core::sync::atomic::Ordering::Relaxed);
    true
}

/// Sets up COM2 if there is one (its scratch register keeps a value; an
/// absent port reads back all ones). Returns whether it is there.
pub fn init_control() -> bool {
    outb(COM2 + reg::SCRATCH, 0x5a);
    if inb(COM2 + reg::SCRATCH) != 0x5a {
        return false;
    }
    setup(COM2);
    true
}

/// A byte from the control channel, if one is waiting.
pub fn control_read() -> Option<u8> {
    (inb(COM2 + reg::LSR) & LSR_DATA_READY != 0).then(|| inb(COM2 + reg::DATA))
}

/// Reads of a busy transmitter before a control line is given up (a
/// client that stopped reading must not hold CPU 0).
const CONTROL_TX_POLLS: u32 = 100_000;

/// Set when a control line was given up: later lines wait for nothing
/// until the transmitter is free again.
static CONTROL_STUCK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Writes a line to the control channel; drops the rest of it if the
/// transmitter stays busy (the client does not read).
pub fn control_write_line(s: &str) {
    use core::sync::atomic::Ordering::Relaxed;
    for b in s.bytes().chain(core::iter::once(b'\n')) {
        let polls = if CONTROL_STUCK.load(Relaxed) { 1 } else { CONTROL_TX_POLLS };
        if !(0..polls).any(|_| inb(COM2 + reg::LSR) & LSR_THR_EMPTY != 0) {
            CONTROL_STUCK.store(true, Relaxed);
            return;
        }
        CONTROL_STUCK.store(false, Relaxed);
        outb(COM2 + reg::DATA, b);
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
    let port = console();
    (inb(port + reg::LSR) & LSR_DATA_READY != 0).then(|| inb(port + reg::DATA))
}

fn put(b: u8) {
    let port = console();
    while inb(port + reg::LSR) & LSR_THR_EMPTY == 0 {
        core::hint::spin_loop();
    }
    outb(port + reg::DATA, b);
}
