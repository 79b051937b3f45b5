//! The ACPI tables the hypervisor needs: CPUs and interrupt controllers
//! (MADT), power management and reset (FADT, and `\_S5_` in the DSDT), and
//! the optional HPET, MCFG (PCIe ECAM) and SPCR (serial console).
//!
//! Firmware tables are hostile input here: nothing read from memory is
//! trusted. [`parse`] reads through a [`Firmware`] (physical memory, read
//! only), checks every table's signature, length (at least the 36-byte
//! header, at most [`MAX_TABLE_LEN`], wholly readable) and checksum before
//! it looks inside, reads fields only within a table's own length, and
//! bounds every loop by a length it has checked and every list by a cap.
//! No input makes it panic (the `acpi` fuzz target holds it to that).
//!
//! A bad RSDP, root table (XSDT or RSDT), MADT or FADT is a hard error:
//! without them the hypervisor cannot know its CPUs or turn the machine
//! off. A bad DSDT, HPET, MCFG or SPCR, a duplicate or overlapping table,
//! or a MADT entry that is wrong but harmless (a repeated APIC ID) is only
//! a [`Tables::problems`] entry, and the rest is still used.

mod aml;
mod fadt;
mod hpet;
mod madt;
mod mcfg;
mod spcr;
#[cfg(test)]
mod tests;

use alloc::collections::TryReserveError;
use alloc::vec::Vec;
use core::fmt;

pub use aml::{SleepType, find_s5};
pub use fadt::{Fadt, PmTimer, ResetRegister};
pub use hpet::Hpet;
pub use madt::{InterruptOverride, IoApic, Madt, Processor};
pub use mcfg::EcamRegion;
pub use spcr::Spcr;

/// Largest table we read (a real DSDT is tens to hundreds of KiB).
pub const MAX_TABLE_LEN: u32 = 1 << 20;
/// Most root-table entries we look at.
pub const MAX_TABLES: usize = 256;
/// Most [`Tables::problems`] kept; further ones are dropped.
pub const MAX_PROBLEMS: usize = 64;
/// Size of the standard table header (signature to creator revision).
pub const HEADER_LEN: usize = 36;

/// Read-only access to physical memory, where the tables lie.
pub trait Firmware {
    /// Fills `buf` from physical address `pa`; false if any byte of it is
    /// not readable (not RAM, not mapped, past the end).
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool;
}

/// A [`Firmware`] over regions of bytes in memory, for tests and fuzzing.
#[derive(Clone, Debug, Default)]
pub struct MemImage {
    regions: Vec<(u64, Vec<u8>)>,
}

impl MemImage {
    /// An image with nothing readable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` at physical address `base` (a later region shadows an
    /// earlier one where they overlap).
    pub fn add(&mut self, base: u64, bytes: Vec<u8>) -> &mut Self {
        self.regions.insert(0, (base, bytes));
        self
    }
}

impl Firmware for MemImage {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = pa.checked_add(done as u64) else { return false };
            let piece = self.regions.iter().find_map(|(base, bytes)| {
                let off = usize::try_from(at.checked_sub(*base)?).ok()?;
                bytes.get(off..).filter(|rest| !rest.is_empty())
            });
            let Some(piece) = piece else { return false };
            let n = piece.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&piece[..n]);
            done += n;
        }
        true
    }
}

/// The tables [`parse`] found, and what was wrong with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// The RSDP's revision (0 for ACPI 1.0, 2 for 2.0 and later).
    pub rsdp_revision: u8,
    /// Whether the XSDT (rather than the RSDT) was walked.
    pub xsdt: bool,
    /// CPUs and interrupt controllers.
    pub madt: Madt,
    /// Power management, reset and the DSDT's address.
    pub fadt: Fadt,
    /// The `\_S5_` (soft off) sleep type values from the DSDT.
    pub s5: Option<SleepType>,
    /// The first HPET.
    pub hpet: Option<Hpet>,
    /// PCIe configuration space (ECAM) regions; empty without an MCFG.
    pub mcfg: Vec<EcamRegion>,
    /// The serial port the firmware used as its console.
    pub spcr: Option<Spcr>,
    /// Tables and entries that were refused or ignored, at most
    /// [`MAX_PROBLEMS`]; the fields above hold what was good.
    pub problems: Vec<AcpiError>,
}

/// A table, as errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableId {
    Rsdp,
    Rsdt,
    Xsdt,
    Madt,
    Fadt,
    Dsdt,
    Hpet,
    Mcfg,
    Spcr,
}

impl TableId {
    /// The signature the table carries in its header.
    pub fn signature(self) -> &'static [u8; 4] {
        match self {
            TableId::Rsdp => b"RSD ",
            TableId::Rsdt => b"RSDT",
            TableId::Xsdt => b"XSDT",
            TableId::Madt => b"APIC",
            TableId::Fadt => b"FACP",
            TableId::Dsdt => b"DSDT",
            TableId::Hpet => b"HPET",
            TableId::Mcfg => b"MCFG",
            TableId::Spcr => b"SPCR",
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            TableId::Rsdp => "RSDP",
            TableId::Rsdt => "RSDT",
            TableId::Xsdt => "XSDT",
            TableId::Madt => "MADT",
            TableId::Fadt => "FADT",
            TableId::Dsdt => "DSDT",
            TableId::Hpet => "HPET",
            TableId::Mcfg => "MCFG",
            TableId::Spcr => "SPCR",
        };
        f.write_str(name)
    }
}

/// A table refused, or something in it ignored. Displays as
/// `MADT: entry at offset 0x2c has length 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiError {
    /// The table at fault (for a bad root entry, the root table).
    pub table: TableId,
    /// What was wrong.
    pub kind: ErrorKind,
}

/// What was wrong with a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `len` bytes at `pa` are not readable.
    NotReadable { pa: u64, len: u64 },
    /// The signature is not the table's.
    Signature { found: [u8; 4] },
    /// The bytes do not sum to zero.
    Checksum { sum: u8 },
    /// The declared length is below what the table needs.
    TooShort { length: u64, min: u64 },
    /// The declared length is above [`MAX_TABLE_LEN`] (or the RSDP's limit).
    TooLong { length: u64, max: u64 },
    /// No memory to read a table of `len` bytes into.
    OutOfMemory { len: u64 },
    /// The RSDP names neither an XSDT nor an RSDT.
    NoRoot,
    /// A table of entries ends with a partial entry.
    TrailingBytes { offset: usize, count: usize },
    /// The root table lists more than [`MAX_TABLES`] entries.
    TooManyTables { count: usize },
    /// Root entry `index` is the null address.
    NullEntry { index: usize },
    /// Root entry `index` repeats an address listed before.
    DuplicateEntry { index: usize, pa: u64 },
    /// A second table with this signature, at `pa`, ignored.
    Duplicate { pa: u64 },
    /// The table at `pa` overlaps the one at `other`; ignored.
    Overlap { pa: u64, other: u64 },
    /// The table is not there (required ones), or not named.
    Missing,
    /// An entry's length is below 2, so the walk cannot go on.
    EntryLength { offset: usize, length: u8 },
    /// An entry runs past the end of the table.
    EntryPastEnd { offset: usize, length: u8, end: usize },
    /// An entry is too short for its type.
    EntryTooShort { offset: usize, entry_type: u8, length: u8 },
    /// More than `limit` of something (in the MADT, the first `limit`
    /// are kept).
    TooMany { what: &'static str, limit: usize },
    /// An APIC ID listed twice; the first was kept.
    DuplicateApicId { id: u32 },
    /// An MCFG region whose last bus is below its first.
    BusRange { index: usize, start: u8, end: u8 },
    /// An MCFG region whose base is not 1 MiB aligned.
    Misaligned { index: usize, base: u64 },
    /// An address that must be in system memory is not.
    NotMemory { space: AddressSpace },
    /// The DSDT has no `\_S5_` object.
    NoS5,
    /// The `\_S5_` package at `offset` is cut short or malformed.
    BadS5 { offset: usize },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.table, self.kind)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ErrorKind::NotReadable { pa, len } => write!(f, "cannot read {len} bytes at {pa:#x}"),
            ErrorKind::Signature { found } => write!(f, "signature is \"{}\"", found.escape_ascii()),
            ErrorKind::Checksum { sum } => write!(f, "checksum fails (bytes sum to {sum:#04x}, not 0)"),
            ErrorKind::TooShort { length, min } => write!(f, "length {length} is below the minimum of {min}"),
            ErrorKind::TooLong { length, max } => write!(f, "length {length} is above the limit of {max}"),
            ErrorKind::OutOfMemory { len } => write!(f, "no memory to read {len} bytes into"),
            ErrorKind::NoRoot => write!(f, "names neither an XSDT nor an RSDT"),
            ErrorKind::TrailingBytes { offset, count } => write!(f, "{count} bytes at offset {offset:#x} are not a whole entry"),
            ErrorKind::TooManyTables { count } => write!(f, "{count} entries; only the first {MAX_TABLES} are read"),
            ErrorKind::NullEntry { index } => write!(f, "entry {index} is null"),
            ErrorKind::DuplicateEntry { index, pa } => write!(f, "entry {index} lists {pa:#x} again"),
            ErrorKind::Duplicate { pa } => write!(f, "a second one at {pa:#x} is ignored"),
            ErrorKind::Overlap { pa, other } => write!(f, "the table at {pa:#x} overlaps the one at {other:#x} and is ignored"),
            ErrorKind::Missing => write!(f, "not found"),
            ErrorKind::EntryLength { offset, length } => write!(f, "entry at offset {offset:#x} has length {length}"),
            ErrorKind::EntryPastEnd { offset, length, end } => {
                write!(f, "entry at offset {offset:#x} with length {length} runs past the end of the table at {end:#x}")
            }
            ErrorKind::EntryTooShort { offset, entry_type, length } => {
                write!(f, "entry at offset {offset:#x} of type {entry_type} is too short ({length} bytes)")
            }
            ErrorKind::TooMany { what, limit } => write!(f, "more than {limit} {what}"),
            ErrorKind::DuplicateApicId { id } => write!(f, "APIC ID {id} is listed twice; kept the first"),
            ErrorKind::BusRange { index, start, end } => write!(f, "region {index} ends at bus {end}, before its first bus {start}"),
            ErrorKind::Misaligned { index, base } => write!(f, "region {index} base {base:#x} is not 1 MiB aligned"),
            ErrorKind::NotMemory { space } => write!(f, "address is in {space:?} space, not system memory"),
            ErrorKind::NoS5 => write!(f, "no \\_S5_ object"),
            ErrorKind::BadS5 { offset } => write!(f, "the \\_S5_ package at offset {offset:#x} is cut short or malformed"),
        }
    }
}

/// An ACPI Generic Address Structure: a register in some address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenericAddress {
    pub space: AddressSpace,
    /// Width of the register in bits (0 if not given).
    pub bit_width: u8,
    /// Offset of the register within the address, in bits.
    pub bit_offset: u8,
    /// 0 undefined, 1 byte, 2 word, 3 dword, 4 qword access.
    pub access_size: u8,
    pub address: u64,
}

/// The address space of a [`GenericAddress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    SystemMemory,
    SystemIo,
    PciConfig,
    Other(u8),
}

impl GenericAddress {
    /// Size of the structure in a table.
    pub const LEN: usize = 12;

    /// The I/O port this names, if it is a nonzero port in I/O space.
    pub fn io_port(&self) -> Option<u16> {
        (self.space == AddressSpace::SystemIo && self.address != 0).then(|| u16::try_from(self.address).ok()).flatten()
    }

    /// Decodes the structure at `offset` of `table`, if it lies within it.
    pub fn at(table: &[u8], offset: usize) -> Option<Self> {
        let b: [u8; Self::LEN] = bytes(table, offset)?;
        let space = match b[0] {
            0 => AddressSpace::SystemMemory,
            1 => AddressSpace::SystemIo,
            2 => AddressSpace::PciConfig,
            n => AddressSpace::Other(n),
        };
        Some(Self { space, bit_width: b[1], bit_offset: b[2], access_size: b[3], address: u64_at(&b, 4)? })
    }

    /// An I/O port block from a FADT's 32-bit legacy field, `len` bytes wide.
    fn io(port: u32, len: u8) -> Self {
        Self { space: AddressSpace::SystemIo, bit_width: len.saturating_mul(8), bit_offset: 0, access_size: 0, address: port.into() }
    }
}

/// `N` bytes at `offset` of `b`, if they are all there.
fn bytes<const N: usize>(b: &[u8], offset: usize) -> Option<[u8; N]> {
    b.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], offset: usize) -> Option<u16> {
    bytes(b, offset).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], offset: usize) -> Option<u32> {
    bytes(b, offset).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], offset: usize) -> Option<u64> {
    bytes(b, offset).map(u64::from_le_bytes)
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |sum, &x| sum.wrapping_add(x))
}

/// Records a problem, up to [`MAX_PROBLEMS`].
fn note(problems: &mut Vec<AcpiError>, table: TableId, kind: ErrorKind) {
    if problems.len() < MAX_PROBLEMS {
        problems.push(AcpiError { table, kind });
    }
}

/// What an optional table decoded to, or `None` with the problem noted.
fn kept<T>(problems: &mut Vec<AcpiError>, table: TableId, result: Result<T, ErrorKind>) -> Option<T> {
    result.map_err(|kind| note(problems, table, kind)).ok()
}

/// The standard header's fields.
mod header {
    pub const SIGNATURE: usize = 0;
    pub const LENGTH: usize = 4;
    pub const REVISION: usize = 8;
}

/// The RSDP's fields (ACPI 6.5, 5.2.5.3).
mod rsdp {
    pub const SIGNATURE: &[u8; 8] = b"RSD PTR ";
    pub const V1_LEN: usize = 20;
    pub const REVISION: usize = 15;
    pub const RSDT: usize = 16;
    pub const LENGTH: usize = 20;
    pub const XSDT: usize = 24;
    pub const V2_LEN: usize = 36;
    /// Largest RSDP length we accept (the spec's is 36).
    pub const MAX_LEN: u32 = 4096;
}

/// The root table the RSDP names.
struct Root {
    revision: u8,
    pa: u64,
    xsdt: bool,
}

/// Reads and checks the RSDP at `pa`.
fn read_rsdp(fw: &impl Firmware, pa: u64) -> Result<Root, ErrorKind> {
    let mut v1 = [0; rsdp::V1_LEN];
    if !fw.read(pa, &mut v1) {
        return Err(ErrorKind::NotReadable { pa, len: v1.len() as u64 });
    }
    if &v1[..8] != rsdp::SIGNATURE {
        return Err(ErrorKind::Signature { found: bytes(&v1, 0).unwrap_or_default() });
    }
    match checksum(&v1) {
        0 => {}
        sum => return Err(ErrorKind::Checksum { sum }),
    }
    let revision = v1[rsdp::REVISION];
    let rsdt = u32_at(&v1, rsdp::RSDT).unwrap_or(0);
    if revision >= 2 {
        let mut v2 = [0; rsdp::V2_LEN];
        if !fw.read(pa, &mut v2) {
            return Err(ErrorKind::NotReadable { pa, len: v2.len() as u64 });
        }
        let length = u32_at(&v2, rsdp::LENGTH).unwrap_or(0);
        let full = read_checked(fw, pa, length, rsdp::V2_LEN as u32, rsdp::MAX_LEN)?;
        let xsdt = u64_at(&full, rsdp::XSDT).unwrap_or(0);
        if xsdt != 0 {
            return Ok(Root { revision, pa: xsdt, xsdt: true });
        }
    }
    match rsdt {
        0 => Err(ErrorKind::NoRoot),
        rsdt => Ok(Root { revision, pa: rsdt.into(), xsdt: false }),
    }
}

/// Reads `length` bytes at `pa` after checking that length lies in
/// `min..=max`, and checks that they sum to zero.
fn read_checked(fw: &impl Firmware, pa: u64, length: u32, min: u32, max: u32) -> Result<Vec<u8>, ErrorKind> {
    if length < min {
        return Err(ErrorKind::TooShort { length: length.into(), min: min.into() });
    }
    if length > max {
        return Err(ErrorKind::TooLong { length: length.into(), max: max.into() });
    }
    let len = length as usize;
    // Before allocating: is the last byte there at all?
    if !pa.checked_add(u64::from(length) - 1).is_some_and(|last| fw.read(last, &mut [0])) {
        return Err(ErrorKind::NotReadable { pa, len: len as u64 });
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_: TryReserveError| ErrorKind::OutOfMemory { len: len as u64 })?;
    buf.resize(len, 0);
    if !fw.read(pa, &mut buf) {
        return Err(ErrorKind::NotReadable { pa, len: len as u64 });
    }
    match checksum(&buf) {
        0 => Ok(buf),
        sum => Err(ErrorKind::Checksum { sum }),
    }
}

/// A table's signature and declared length, from its header at `pa`.
fn read_header(fw: &impl Firmware, pa: u64) -> Result<([u8; 4], u32), ErrorKind> {
    let mut h = [0; HEADER_LEN];
    if !fw.read(pa, &mut h) {
        return Err(ErrorKind::NotReadable { pa, len: h.len() as u64 });
    }
    Ok((bytes(&h, header::SIGNATURE).unwrap_or_default(), u32_at(&h, header::LENGTH).unwrap_or(0)))
}

/// Reads and checks the table `id` at `pa`: signature, length (at least
/// `min`), readability and checksum.
fn read_table(fw: &impl Firmware, pa: u64, id: TableId, min: usize) -> Result<Vec<u8>, AcpiError> {
    let err = |kind| AcpiError { table: id, kind };
    let (signature, length) = read_header(fw, pa).map_err(err)?;
    if &signature != id.signature() {
        return Err(err(ErrorKind::Signature { found: signature }));
    }
    read_checked(fw, pa, length, min.max(HEADER_LEN) as u32, MAX_TABLE_LEN).map_err(err)
}

/// Finds the RSDP where BIOS firmware leaves it: in the first KiB of the
/// EBDA (whose segment the word at 0x40E holds) or in 0xE0000..0x100000,
/// on a 16-byte boundary, with its signature and checksums right. For boot
/// paths that are not handed its address (QEMU's PVH entry may pass 0).
pub fn find_rsdp_in_bios(fw: &impl Firmware) -> Option<u64> {
    let mut segment = [0; 2];
    let ebda = if fw.read(0x40e, &mut segment) { u64::from(u16::from_le_bytes(segment)) << 4 } else { 0 };
    let ebda = (ebda >= 0x400).then_some(ebda..ebda + 0x400);
    const CHUNK: usize = 1024;
    let mut chunk = [0; CHUNK];
    for area in ebda.into_iter().chain(Some(0xe0000..0x100000)) {
        for base in area.step_by(CHUNK) {
            // A KiB at a time; where that is not all readable, 8 bytes at a time.
            let whole = fw.read(base, &mut chunk);
            for off in (0..CHUNK).step_by(16) {
                let pa = base + off as u64;
                let mut signature = [0; 8];
                let candidate = match whole {
                    true => chunk.get(off..off + 8) == Some(rsdp::SIGNATURE),
                    false => fw.read(pa, &mut signature) && &signature == rsdp::SIGNATURE,
                };
                if candidate && read_rsdp(fw, pa).is_ok() {
                    return Some(pa);
                }
            }
        }
    }
    None
}

/// Reads the ACPI tables from the RSDP at `rsdp_pa`: the root table (the
/// XSDT from an ACPI 2.0 RSDP that names one, else the RSDT), and through it
/// the MADT and FADT (required), the DSDT's `\_S5_`, HPET, MCFG and SPCR
/// (optional: a bad one is noted in [`Tables::problems`]). Other tables are
/// ignored.
pub fn parse(fw: &impl Firmware, rsdp_pa: u64) -> Result<Tables, AcpiError> {
    let root = read_rsdp(fw, rsdp_pa).map_err(|kind| AcpiError { table: TableId::Rsdp, kind })?;
    let (root_id, entry_len) = if root.xsdt { (TableId::Xsdt, 8) } else { (TableId::Rsdt, 4) };
    let root_table = read_table(fw, root.pa, root_id, HEADER_LEN)?;
    let entries = &root_table[HEADER_LEN..];
    if entries.len() % entry_len != 0 {
        let count = entries.len() % entry_len;
        return Err(AcpiError { table: root_id, kind: ErrorKind::TrailingBytes { offset: root_table.len() - count, count } });
    }

    let mut problems = Vec::new();
    let count = entries.len() / entry_len;
    if count > MAX_TABLES {
        note(&mut problems, root_id, ErrorKind::TooManyTables { count });
    }
    // Known tables found so far, with the ranges they cover (the root's
    // first), so that a repeated or overlapping entry is ignored.
    let mut found: Vec<(Option<TableId>, u64, u64)> = Vec::new();
    found.push((None, root.pa, root.pa.saturating_add(root_table.len() as u64)));
    let known = [TableId::Madt, TableId::Fadt, TableId::Hpet, TableId::Mcfg, TableId::Spcr];
    for (index, entry) in entries.chunks_exact(entry_len).take(MAX_TABLES).enumerate() {
        let pa = match *entry {
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]).into(),
            _ => u64_at(entry, 0).unwrap_or(0),
        };
        if pa == 0 {
            note(&mut problems, root_id, ErrorKind::NullEntry { index });
            continue;
        }
        if entries.chunks_exact(entry_len).take(index).any(|e| e == entry) {
            note(&mut problems, root_id, ErrorKind::DuplicateEntry { index, pa });
            continue;
        }
        let (signature, length) = match read_header(fw, pa) {
            Ok(header) => header,
            Err(kind) => {
                note(&mut problems, root_id, kind);
                continue;
            }
        };
        let Some(&id) = known.iter().find(|id| id.signature() == &signature) else { continue };
        if found.iter().any(|&(t, _, _)| t == Some(id)) {
            note(&mut problems, id, ErrorKind::Duplicate { pa });
            continue;
        }
        // The length is checked by read_table; here it only places the table.
        let end = pa.saturating_add(length.min(MAX_TABLE_LEN).into());
        if let Some(&(_, other, _)) = found.iter().find(|&&(_, start, stop)| pa < stop && start < end) {
            note(&mut problems, id, ErrorKind::Overlap { pa, other });
            continue;
        }
        found.push((Some(id), pa, end));
    }
    let table_at = |id| found.iter().find(|&&(t, _, _)| t == Some(id)).map(|&(_, pa, _)| pa);
    let required = |id| table_at(id).ok_or(AcpiError { table: id, kind: ErrorKind::Missing });

    let madt = madt::parse(&read_table(fw, required(TableId::Madt)?, TableId::Madt, madt::MIN_LEN)?, &mut problems)
        .map_err(|kind| AcpiError { table: TableId::Madt, kind })?;
    let fadt = fadt::parse(&read_table(fw, required(TableId::Fadt)?, TableId::Fadt, fadt::MIN_LEN)?)
        .map_err(|kind| AcpiError { table: TableId::Fadt, kind })?;

    // The optional tables: a bad one is a problem, not an error.
    let mut optional =
        |id: TableId, min: usize, pa: Option<u64>| read_table(fw, pa?, id, min).map_err(|e| note(&mut problems, e.table, e.kind)).ok();
    let dsdt = optional(TableId::Dsdt, HEADER_LEN, fadt.dsdt);
    let hpet = optional(TableId::Hpet, hpet::LEN, table_at(TableId::Hpet));
    let mcfg = optional(TableId::Mcfg, mcfg::ENTRIES, table_at(TableId::Mcfg));
    let spcr = optional(TableId::Spcr, spcr::MIN_LEN, table_at(TableId::Spcr));
    if fadt.dsdt.is_none() {
        note(&mut problems, TableId::Dsdt, ErrorKind::Missing);
    }
    let s5 = dsdt.and_then(|t| kept(&mut problems, TableId::Dsdt, aml::find_s5(&t)));
    let hpet = hpet.and_then(|t| kept(&mut problems, TableId::Hpet, hpet::parse(&t)));
    let mcfg = mcfg.and_then(|t| kept(&mut problems, TableId::Mcfg, mcfg::parse(&t))).unwrap_or_default();
    let spcr = spcr.and_then(|t| kept(&mut problems, TableId::Spcr, spcr::parse(&t)));
    Ok(Tables { rsdp_revision: root.revision, xsdt: root.xsdt, madt, fadt, s5, hpet, mcfg, spcr, problems })
}
