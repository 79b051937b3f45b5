//! The FADT ("FACP"): the PM timer, the PM1 control blocks for sleep
//! states, the reset register and the DSDT's address (ACPI 6.5, 5.2.9).
//!
//! A revision 1 FADT is 116 bytes (up to `FLAGS`); later ones add the
//! reset register and the 64-bit `X_` fields. Every field is read only if
//! it lies within the table's length, and an `X_` field, where present and
//! nonzero, wins over its 32-bit twin.

use super::{ErrorKind, GenericAddress, header, u32_at, u64_at};

/// Up to and including `FLAGS`: the ACPI 1.0 table.
pub const MIN_LEN: usize = FLAGS + 4;

const DSDT: usize = 40;
const SMI_CMD: usize = 48;
const ACPI_ENABLE: usize = 52;
const PM1A_CNT_BLK: usize = 64;
const PM1B_CNT_BLK: usize = 68;
const PM_TMR_BLK: usize = 76;
const PM1_CNT_LEN: usize = 89;
const PM_TMR_LEN: usize = 91;
const CENTURY: usize = 108;
const FLAGS: usize = 112;
const RESET_REG: usize = 116;
const RESET_VALUE: usize = 128;
const X_DSDT: usize = 140;
const X_PM1A_CNT_BLK: usize = 172;
const X_PM1B_CNT_BLK: usize = 184;
const X_PM_TMR_BLK: usize = 208;

/// `FLAGS`: the PM timer counts 32 bits (else 24).
const TMR_VAL_EXT: u32 = 1 << 8;
/// `FLAGS`: `RESET_REG` is supported.
const RESET_REG_SUP: u32 = 1 << 10;
/// `FLAGS`: no fixed-hardware ACPI (no PM timer, PM1 blocks or SCI).
const HW_REDUCED_ACPI: u32 = 1 << 20;

/// What the FADT says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fadt {
    pub revision: u8,
    /// The ACPI PM timer (3.579545 MHz), if any.
    pub pm_timer: Option<PmTimer>,
    /// PM1a control block (SLP_TYPa and SLP_EN are written here to sleep).
    pub pm1a_control: Option<GenericAddress>,
    /// PM1b control block, if the machine has one.
    pub pm1b_control: Option<GenericAddress>,
    /// The reset register, if the FADT says it is supported.
    pub reset: Option<ResetRegister>,
    /// A hardware-reduced ACPI platform.
    pub hw_reduced: bool,
    /// CMOS RAM index of the century, if the RTC has one.
    pub century: Option<u8>,
    /// Physical address of the DSDT (`X_DSDT` if set, else `DSDT`).
    pub dsdt: Option<u64>,
    /// Where firmware that booted in legacy mode is asked to hand the
    /// fixed hardware over (SCI_EN), and what to write there: the
    /// `SMI_CMD` port and `ACPI_ENABLE`. `None` when the machine is always
    /// in ACPI mode (both zero).
    pub acpi_enable: Option<(u16, u8)>,
}

/// The ACPI PM timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmTimer {
    pub block: GenericAddress,
    /// 24 or 32 (TMR_VAL_EXT).
    pub bits: u8,
}

/// Writing `value` to `register` resets the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRegister {
    pub register: GenericAddress,
    pub value: u8,
}

/// Decodes a checked FADT of at least [`MIN_LEN`] bytes.
pub fn parse(t: &[u8]) -> Result<Fadt, ErrorKind> {
    let flags = u32_at(t, FLAGS).ok_or(ErrorKind::TooShort { length: t.len() as u64, min: MIN_LEN as u64 })?;
    let byte = |offset| t.get(offset).copied().unwrap_or(0);
    let pm_timer = block(t, X_PM_TMR_BLK, PM_TMR_BLK, byte(PM_TMR_LEN))
        .map(|block| PmTimer { block, bits: if flags & TMR_VAL_EXT != 0 { 32 } else { 24 } });
    let reset = match GenericAddress::at(t, RESET_REG) {
        Some(register) if flags & RESET_REG_SUP != 0 && register.address != 0 && t.len() > RESET_VALUE => {
            Some(ResetRegister { register, value: byte(RESET_VALUE) })
        }
        _ => None,
    };
    let x_dsdt = u64_at(t, X_DSDT).filter(|&a| a != 0);
    Ok(Fadt {
        revision: byte(header::REVISION),
        pm_timer,
        pm1a_control: block(t, X_PM1A_CNT_BLK, PM1A_CNT_BLK, byte(PM1_CNT_LEN)),
        pm1b_control: block(t, X_PM1B_CNT_BLK, PM1B_CNT_BLK, byte(PM1_CNT_LEN)),
        reset,
        hw_reduced: flags & HW_REDUCED_ACPI != 0,
        century: Some(byte(CENTURY)).filter(|&c| c != 0),
        dsdt: x_dsdt.or(u32_at(t, DSDT).filter(|&a| a != 0).map(u64::from)),
        acpi_enable: match (u32_at(t, SMI_CMD).and_then(|p| u16::try_from(p).ok()), byte(ACPI_ENABLE)) {
            (Some(port), value) if port != 0 && value != 0 => Some((port, value)),
            _ => None,
        },
    })
}

/// A register block: the `X_` field at `x` if it is in the table and
/// nonzero, else the 32-bit I/O port at `legacy` (`len` bytes) if nonzero.
fn block(t: &[u8], x: usize, legacy: usize, len: u8) -> Option<GenericAddress> {
    let x = GenericAddress::at(t, x).filter(|g| g.address != 0);
    x.or_else(|| u32_at(t, legacy).filter(|&port| port != 0).map(|port| GenericAddress::io(port, len)))
}
