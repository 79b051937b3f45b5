//! The HPET table: where the first HPET's registers are (IA-PC HPET
//! specification 1.0a, 3.2.4).

use super::{AddressSpace, ErrorKind, GenericAddress, HEADER_LEN, u16_at, u32_at};

/// The whole table.
pub const LEN: usize = HEADER_LEN + 20;

const EVENT_TIMER_BLOCK_ID: usize = HEADER_LEN;
const BASE_ADDRESS: usize = HEADER_LEN + 4;
const HPET_NUMBER: usize = HEADER_LEN + 16;
const MIN_TICK: usize = HEADER_LEN + 17;

/// What the HPET table says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hpet {
    /// Physical address of the register block (always system memory).
    pub base: u64,
    /// The hardware's ID: vendor, counter size, comparator count, revision.
    pub block_id: u32,
    /// Which HPET this is (0 for the first).
    pub number: u8,
    /// The smallest periodic tick, in main counter ticks, that the firmware
    /// says does not lose interrupts.
    pub min_tick: u16,
}

/// Decodes a checked HPET table of at least [`LEN`] bytes.
pub fn parse(t: &[u8]) -> Result<Hpet, ErrorKind> {
    let short = ErrorKind::TooShort { length: t.len() as u64, min: LEN as u64 };
    let base = GenericAddress::at(t, BASE_ADDRESS).ok_or(short.clone())?;
    if base.space != AddressSpace::SystemMemory {
        return Err(ErrorKind::NotMemory { space: base.space });
    }
    Ok(Hpet {
        base: base.address,
        block_id: u32_at(t, EVENT_TIMER_BLOCK_ID).ok_or(short.clone())?,
        number: *t.get(HPET_NUMBER).ok_or(short.clone())?,
        min_tick: u16_at(t, MIN_TICK).ok_or(short)?,
    })
}
