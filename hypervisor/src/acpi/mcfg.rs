//! The MCFG: where PCI Express configuration space (ECAM) is mapped (PCI
//! Firmware Specification 3.2, 4.1.2).

use alloc::vec::Vec;

use super::{ErrorKind, HEADER_LEN, u16_at, u64_at};

/// Header and 8 reserved bytes; the entries follow.
pub const ENTRIES: usize = HEADER_LEN + 8;
/// Most regions kept (one per PCI segment group, at most 65,536 of them).
pub const MAX_REGIONS: usize = 256;

const ENTRY_LEN: usize = 16;
const BASE: usize = 0;
const SEGMENT: usize = 8;
const BUS_START: usize = 10;
const BUS_END: usize = 11;

/// One ECAM region: buses `bus_start..=bus_end` of PCI segment `segment`,
/// bus `n`'s configuration space at `base + (n << 20)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// Decodes a checked MCFG. A region with its buses backwards or its base
/// not 1 MiB aligned, or a partial entry at the end, refuses the table.
pub fn parse(t: &[u8]) -> Result<Vec<EcamRegion>, ErrorKind> {
    let entries = t.get(ENTRIES..).ok_or(ErrorKind::TooShort { length: t.len() as u64, min: ENTRIES as u64 })?;
    let count = entries.len() % ENTRY_LEN;
    if count != 0 {
        return Err(ErrorKind::TrailingBytes { offset: t.len() - count, count });
    }
    if entries.len() / ENTRY_LEN > MAX_REGIONS {
        return Err(ErrorKind::TooMany { what: "ECAM regions", limit: MAX_REGIONS });
    }
    let mut regions = Vec::new();
    // chunks_exact gives whole entries, which all decode.
    for (index, r) in entries.chunks_exact(ENTRY_LEN).filter_map(region).enumerate() {
        let EcamRegion { base, bus_start, bus_end, .. } = r;
        if bus_end < bus_start {
            return Err(ErrorKind::BusRange { index, start: bus_start, end: bus_end });
        }
        if base % (1 << 20) != 0 {
            return Err(ErrorKind::Misaligned { index, base });
        }
        regions.push(r);
    }
    Ok(regions)
}

fn region(e: &[u8]) -> Option<EcamRegion> {
    Some(EcamRegion { base: u64_at(e, BASE)?, segment: u16_at(e, SEGMENT)?, bus_start: *e.get(BUS_START)?, bus_end: *e.get(BUS_END)? })
}
