//! Turning the machine off: QEMU's `isa-debug-exit` device where it is
//! present (its exit status carries the hypervisor's result to the tests),
//! else ACPI soft-off (S5: the `\_S5_` sleep type written with SLP_EN to
//! the FADT's PM1 control blocks, after asking firmware that left the
//! machine in legacy mode to enter ACPI mode), else halting every CPU.
//!
//! The debug-exit device is found by reading its port: the device reads
//! as 0, an unclaimed port (real hardware, or a QEMU started without the
//! device) as all ones.

use hypervisor::acpi::Tables;
use spin::Once;
use x86_64::instructions::port::Port;

/// How this machine turns off.
#[derive(Clone, Copy, Debug)]
pub struct Power {
    debug_exit: bool,
    /// PM1a (and PM1b) control ports and the values that enter S5.
    s5: Option<[(u16, u16); 2]>,
    /// The FADT's SMI_CMD port and ACPI_ENABLE value, for firmware that
    /// left the machine in legacy mode.
    acpi_enable: Option<(u16, u8)>,
}

static POWER: Once<Power> = Once::new();

/// PM1 control: SLP_TYP's position, SLP_EN, and SCI_EN (set once the
/// machine is in ACPI mode; sleep requests are ignored before).
const SLP_TYP_SHIFT: u16 = 10;
const SLP_EN: u16 = 1 << 13;
const SCI_EN: u16 = 1 << 0;
/// Reads of PM1a control while waiting for the firmware to enter ACPI
/// mode (the ACPI spec allows it a while; each read is a port access).
const SCI_EN_READS: u32 = 10_000_000;

/// Finds out how to power off, from the ACPI tables (if any were read).
pub fn init(acpi: Option<&Tables>) -> &'static Power {
    POWER.call_once(|| {
        // SAFETY: reading the debug-exit port has no effect on any device
        // (an unclaimed port reads as all ones).
        let debug_exit = unsafe { Port::<u8>::new(abi::debug_exit::PORT).read() } == 0;
        let s5 = acpi.and_then(|t| {
            let s5 = t.s5?;
            let a = t.fadt.pm1a_control?.io_port()?;
            let b = t.fadt.pm1b_control.and_then(|g| g.io_port()).unwrap_or(0);
            Some([(a, (s5.a as u16) << SLP_TYP_SHIFT | SLP_EN), (b, (s5.b as u16) << SLP_TYP_SHIFT | SLP_EN)])
        });
        let acpi_enable = acpi.and_then(|t| t.fadt.acpi_enable);
        Power { debug_exit, s5, acpi_enable }
    })
}

impl Power {
    /// How `off` will turn the machine off, for the console.
    pub fn describe(&self) -> &'static str {
        match (self.debug_exit, self.s5.is_some()) {
            (true, _) => "QEMU's debug-exit device",
            (false, true) => "ACPI soft-off (S5)",
            (false, false) => "halting (no debug-exit device, no ACPI S5)",
        }
    }
}

/// Turns the machine off with `code` (the debug-exit device's status;
/// ACPI soft-off carries none). Never returns.
pub fn off(code: u8) -> ! {
    let p = POWER.get().copied().unwrap_or(Power { debug_exit: true, s5: None, acpi_enable: None });
    if p.debug_exit {
        super::cpu::debug_exit(code);
    }
    if let Some(blocks) = p.s5 {
        let pm1a = blocks[0].0;
        // SAFETY: reading the FADT's PM1a control block has no effect.
        let in_acpi_mode = || unsafe { Port::<u16>::new(pm1a).read() } & SCI_EN != 0;
        if let Some((smi, enable)) = p.acpi_enable.filter(|_| !in_acpi_mode()) {
            // SAFETY: writing ACPI_ENABLE to SMI_CMD asks the firmware to
            // hand the fixed hardware over (ACPI 6.5, 4.8.2.1.1), which is
            // what S5 needs; nothing else listens there.
            unsafe { Port::<u8>::new(smi).write(enable) };
            let _ = (0..SCI_EN_READS).any(|_| in_acpi_mode());
        }
        for (port, value) in blocks.into_iter().filter(|&(port, _)| port != 0) {
            // SAFETY: the FADT's PM1 control block; writing SLP_TYP with
            // SLP_EN is how ACPI enters S5, which is what is wanted.
            unsafe { Port::<u16>::new(port).write(value) };
        }
    }
    super::cpu::halt_forever()
}
