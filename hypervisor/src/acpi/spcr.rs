//! The SPCR: the serial port the firmware used as its console (Microsoft's
//! Serial Port Console Redirection Table). Decoded only; which ports to
//! trust is the caller's decision.

use super::{ErrorKind, GenericAddress, HEADER_LEN};

/// Revision 1's length (every revision has at least these fields).
pub const MIN_LEN: usize = 80;

const INTERFACE_TYPE: usize = HEADER_LEN;
const BASE_ADDRESS: usize = HEADER_LEN + 4;
const BAUD_RATE: usize = HEADER_LEN + 22;

/// What the SPCR says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spcr {
    /// 0 is a full 16550, 1 a 16450-compatible subset; others are ARM and
    /// other UARTs (the DBG2 table's port subtypes).
    pub interface_type: u8,
    /// The port: I/O port or MMIO.
    pub base: GenericAddress,
    /// 0 as the firmware left it, 3 9600, 4 19200, 6 57600, 7 115200.
    pub baud_rate: u8,
}

/// Decodes a checked SPCR of at least [`MIN_LEN`] bytes.
pub fn parse(t: &[u8]) -> Result<Spcr, ErrorKind> {
    let short = || ErrorKind::TooShort { length: t.len() as u64, min: MIN_LEN as u64 };
    Ok(Spcr {
        interface_type: *t.get(INTERFACE_TYPE).ok_or_else(short)?,
        base: GenericAddress::at(t, BASE_ADDRESS).ok_or_else(short)?,
        baud_rate: *t.get(BAUD_RATE).ok_or_else(short)?,
    })
}
