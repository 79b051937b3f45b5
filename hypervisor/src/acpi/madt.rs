//! The MADT ("APIC"): local APICs and x2APICs (the CPUs), I/O APICs and
//! interrupt source overrides (ACPI 6.5, 5.2.12).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use super::{AcpiError, ErrorKind, HEADER_LEN, TableId, note, u16_at, u32_at, u64_at};

/// Header, local APIC address and flags.
pub const MIN_LEN: usize = ENTRIES;
/// Most processors kept (the first ones).
pub const MAX_PROCESSORS: usize = 4096;
/// Most I/O APICs kept.
pub const MAX_IO_APICS: usize = 128;
/// Most interrupt source overrides kept.
pub const MAX_OVERRIDES: usize = 256;

const LOCAL_APIC_ADDRESS: usize = HEADER_LEN;
const FLAGS: usize = HEADER_LEN + 4;
const ENTRIES: usize = HEADER_LEN + 8;
/// `FLAGS`: the machine also has dual 8259 PICs.
const PCAT_COMPAT: u32 = 1 << 0;

/// Entry types, and the offsets of their fields within the entry.
mod entry {
    pub const LOCAL_APIC: u8 = 0;
    pub const IO_APIC: u8 = 1;
    pub const OVERRIDE: u8 = 2;
    pub const LOCAL_APIC_OVERRIDE: u8 = 5;
    pub const LOCAL_X2APIC: u8 = 9;
    /// A processor's flags: usable now.
    pub const ENABLED: u32 = 1 << 0;
    /// A processor's flags: may be brought online later.
    pub const ONLINE_CAPABLE: u32 = 1 << 1;
}

/// What the MADT says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Madt {
    /// The local APIC's physical address (a type 5 entry overrides the
    /// 32-bit field).
    pub local_apic_address: u64,
    /// PCAT_COMPAT: the machine also has 8259 PICs (to be masked).
    pub pcat_compat: bool,
    /// Processors that are enabled or online-capable, in table order, at
    /// most [`MAX_PROCESSORS`], no APIC ID twice.
    pub processors: Vec<Processor>,
    /// At most [`MAX_IO_APICS`].
    pub io_apics: Vec<IoApic>,
    /// At most [`MAX_OVERRIDES`].
    pub overrides: Vec<InterruptOverride>,
}

/// A processor (local APIC, type 0, or local x2APIC, type 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
    /// Usable now (else only online-capable).
    pub enabled: bool,
    /// May be brought online later.
    pub online_capable: bool,
    /// From an x2APIC entry.
    pub x2apic: bool,
}

/// An I/O APIC (type 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    /// The first global system interrupt it handles.
    pub gsi_base: u32,
}

/// An interrupt source override (type 2): ISA IRQ `source` is GSI `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    pub bus: u8,
    pub source: u8,
    pub gsi: u32,
    /// MPS INTI flags: polarity (bits 0-1) and trigger mode (bits 2-3).
    pub flags: u16,
}

/// Decodes a checked MADT. Structural errors (an entry of length below 2,
/// or past the end, or too short for its type) refuse the table; repeated
/// APIC IDs and entries past the caps are noted in `problems`.
pub fn parse(table: &[u8], problems: &mut Vec<AcpiError>) -> Result<Madt, ErrorKind> {
    let too_short = ErrorKind::TooShort { length: table.len() as u64, min: MIN_LEN as u64 };
    let flags = u32_at(table, FLAGS).ok_or(too_short.clone())?;
    let mut madt = Madt {
        local_apic_address: u32_at(table, LOCAL_APIC_ADDRESS).ok_or(too_short)?.into(),
        pcat_compat: flags & PCAT_COMPAT != 0,
        processors: Vec::new(),
        io_apics: Vec::new(),
        overrides: Vec::new(),
    };
    let mut apic_override = None;
    let mut ids = BTreeSet::new();
    let mut offset = ENTRIES;
    // Each turn moves `offset` on by at least 2, to at most the table's end.
    while offset < table.len() {
        let (entry_type, length) = match table.get(offset..offset + 2) {
            Some(&[t, l]) => (t, l),
            _ => return Err(ErrorKind::EntryPastEnd { offset, length: 0, end: table.len() }),
        };
        if length < 2 {
            return Err(ErrorKind::EntryLength { offset, length });
        }
        let e = table.get(offset..offset + usize::from(length)).ok_or(ErrorKind::EntryPastEnd { offset, length, end: table.len() })?;
        let short = ErrorKind::EntryTooShort { offset, entry_type, length };
        match entry_type {
            entry::LOCAL_APIC | entry::LOCAL_X2APIC => {
                let p = processor(e).ok_or(short)?;
                if !p.enabled && !p.online_capable || p.apic_id == invalid_id(p.x2apic) {
                    // Not present, or (ID 0xff, 0xffffffff) not usable.
                } else if ids.contains(&p.apic_id) {
                    note(problems, TableId::Madt, ErrorKind::DuplicateApicId { id: p.apic_id });
                } else if madt.processors.len() == MAX_PROCESSORS {
                    too_many(problems, ErrorKind::TooMany { what: "processors", limit: MAX_PROCESSORS });
                } else {
                    ids.insert(p.apic_id);
                    madt.processors.push(p);
                }
            }
            entry::IO_APIC => {
                let io = io_apic(e).ok_or(short)?;
                match madt.io_apics.len() {
                    MAX_IO_APICS => too_many(problems, ErrorKind::TooMany { what: "I/O APICs", limit: MAX_IO_APICS }),
                    _ => madt.io_apics.push(io),
                }
            }
            entry::OVERRIDE => {
                let o = interrupt_override(e).ok_or(short)?;
                match madt.overrides.len() {
                    MAX_OVERRIDES => too_many(problems, ErrorKind::TooMany { what: "interrupt overrides", limit: MAX_OVERRIDES }),
                    _ => madt.overrides.push(o),
                }
            }
            entry::LOCAL_APIC_OVERRIDE => {
                let address = u64_at(e, 4).ok_or(short)?;
                apic_override.get_or_insert(address);
            }
            _ => {}
        }
        offset += usize::from(length);
    }
    if let Some(address) = apic_override {
        madt.local_apic_address = address;
    }
    Ok(madt)
}

/// Notes that a list is full, once.
fn too_many(problems: &mut Vec<AcpiError>, kind: ErrorKind) {
    if !problems.iter().any(|p| p.kind == kind) {
        note(problems, TableId::Madt, kind);
    }
}

/// The APIC ID that names no processor.
fn invalid_id(x2apic: bool) -> u32 {
    if x2apic { u32::MAX } else { 0xff }
}

/// A type 0 or type 9 entry, if it is long enough.
fn processor(e: &[u8]) -> Option<Processor> {
    let x2apic = e.first() == Some(&entry::LOCAL_X2APIC);
    let (uid, apic_id, flags) =
        if x2apic { (u32_at(e, 12)?, u32_at(e, 4)?, u32_at(e, 8)?) } else { ((*e.get(2)?).into(), (*e.get(3)?).into(), u32_at(e, 4)?) };
    Some(Processor { apic_id, uid, enabled: flags & entry::ENABLED != 0, online_capable: flags & entry::ONLINE_CAPABLE != 0, x2apic })
}

fn io_apic(e: &[u8]) -> Option<IoApic> {
    Some(IoApic { id: *e.get(2)?, address: u32_at(e, 4)?, gsi_base: u32_at(e, 8)? })
}

fn interrupt_override(e: &[u8]) -> Option<InterruptOverride> {
    Some(InterruptOverride { bus: *e.get(2)?, source: *e.get(3)?, gsi: u32_at(e, 4)?, flags: u16_at(e, 8)? })
}
