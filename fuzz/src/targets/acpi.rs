//! The ACPI table parser: `hypervisor::acpi::parse` (and
//! `find_rsdp_in_bios`, `find_s5`) over a simulated physical memory.
//!
//! The first byte is flags. In raw mode (bit 0) the rest is the BIOS area
//! at 0xE0000, searched for an RSDP. Otherwise the rest is tables
//! separated by [`SEPARATOR`], laid out one after the other (16-byte
//! aligned, in one region, so a long length runs into the next table or
//! off the end of memory) behind an RSDT, or an XSDT and an ACPI 2.0 RSDP
//! (bit 2), that the harness writes. Since a fuzzer rarely gets a checksum
//! right, bit 1 fixes every table's checksum over the bytes its length
//! covers after layout; bit 3 points the FADT's DSDT fields at the first
//! table signed `DSDT`; bit 4 appends the first table's bytes, read as
//! addresses, to the root's entries (repeats, nulls, wild pointers);
//! bit 5 also searches the BIOS area for the RSDP.
//!
//! Invariants: no panic; an accepted MADT has at most 4096 processors,
//! each enabled or online-capable, no APIC ID twice; MCFG regions are
//! ordered and aligned; lists and problems are within their caps; every
//! error reads as one line that names its table.

use hypervisor::acpi::{self, AcpiError, MemImage, Tables};

use crate::input::Input;

/// Between two tables of a structured input.
pub const SEPARATOR: &[u8] = b"\xa5TBL";

const RAW: u8 = 1 << 0;
const FIX_CHECKSUMS: u8 = 1 << 1;
const XSDT: u8 = 1 << 2;
const PATCH_DSDT: u8 = 1 << 3;
const EXTRA_ENTRIES: u8 = 1 << 4;
const SCAN: u8 = 1 << 5;

const BDA: u64 = 0x400;
const EBDA_SEGMENT: u16 = 0x9fc0;
const BIOS: u64 = 0xe0000;
const BIOS_LEN: usize = 0x20000;
const RSDP_PA: u64 = 0xf0000;
/// Where the root table goes; the tables follow it.
const ROOT_PA: u64 = 0x7ff0_0000;

pub fn acpi(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let rest = input.rest();
    let (mem, rsdp) = if flags & RAW != 0 { raw(rest) } else { structured(flags, rest) };
    if flags & SCAN != 0 {
        let found = acpi::find_rsdp_in_bios(&mem);
        if flags & RAW == 0 {
            assert_eq!(found, Some(RSDP_PA), "the harness's RSDP was not found");
        }
    }
    match acpi::parse(&mem, rsdp) {
        Ok(t) => check(&t),
        Err(e) => check_error(&e),
    }
}

/// The BIOS area from the input; the RSDP where the search finds it.
fn raw(rest: &[u8]) -> (MemImage, u64) {
    let mut bios = vec![0; BIOS_LEN];
    let n = rest.len().min(BIOS_LEN);
    bios[..n].copy_from_slice(&rest[..n]);
    let mut mem = low_memory();
    mem.add(BIOS, bios);
    let rsdp = acpi::find_rsdp_in_bios(&mem).unwrap_or(BIOS);
    (mem, rsdp)
}

/// The BDA's EBDA pointer and an empty EBDA.
fn low_memory() -> MemImage {
    let mut bda = vec![0; 0x100];
    bda[0xe..0x10].copy_from_slice(&EBDA_SEGMENT.to_le_bytes());
    let mut mem = MemImage::new();
    mem.add(BDA, bda).add(u64::from(EBDA_SEGMENT) << 4, vec![0; 0x400]);
    mem
}

fn split(rest: &[u8]) -> Vec<&[u8]> {
    let mut tables = Vec::new();
    let (mut start, mut at) = (0, 0);
    // Found by its first byte, which is rare in tables: fast unoptimised.
    while let Some(i) = rest[at..].iter().position(|&b| b == SEPARATOR[0]) {
        at += i;
        if rest[at..].starts_with(SEPARATOR) {
            tables.push(&rest[start..at]);
            start = at + SEPARATOR.len();
        }
        at += 1;
    }
    tables.push(&rest[start..]);
    tables
}

fn align16(x: usize) -> usize {
    x.div_ceil(16) * 16
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
}

/// Sets byte 9 of the table at `at` in `region` so that the bytes its
/// length covers (as far as the region goes) sum to zero.
fn fix_checksum(region: &mut [u8], at: usize) {
    let Some(t) = region.get_mut(at..) else { return };
    if t.len() < 10 {
        return;
    }
    let len = (u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize).clamp(10, t.len());
    t[9] = 0;
    t[9] = 0u8.wrapping_sub(sum(&t[..len]));
}

fn structured(flags: u8, rest: &[u8]) -> (MemImage, u64) {
    let tables = split(rest);
    let xsdt = flags & XSDT != 0;
    let entry_len = if xsdt { 8 } else { 4 };
    let mut entries: Vec<u64> = Vec::new();
    let extra: Vec<u64> = if flags & EXTRA_ENTRIES != 0 {
        tables[0].chunks(entry_len).map(|c| c.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b))).collect()
    } else {
        Vec::new()
    };
    let root_len = 36 + entry_len * (tables.len() + extra.len());
    let mut offsets = Vec::new();
    let mut at = align16(root_len);
    for t in &tables {
        offsets.push(at);
        at = align16(at + t.len());
    }
    let mut region = vec![0; at];
    for (t, &off) in tables.iter().zip(&offsets) {
        region[off..off + t.len()].copy_from_slice(t);
        entries.push(ROOT_PA + off as u64);
    }
    entries.extend(extra);

    if flags & PATCH_DSDT != 0 {
        let find = |signature: &[u8]| tables.iter().position(|t| t.starts_with(signature));
        if let (Some(f), Some(d)) = (find(b"FACP"), find(b"DSDT")) {
            let pa = ROOT_PA + offsets[d] as u64;
            let fadt = &mut region[offsets[f]..offsets[f] + tables[f].len()];
            if let Some(field) = fadt.get_mut(40..44) {
                field.copy_from_slice(&(pa as u32).to_le_bytes());
            }
            if let Some(field) = fadt.get_mut(140..148) {
                field.copy_from_slice(&pa.to_le_bytes());
            }
        }
    }
    if flags & FIX_CHECKSUMS != 0 {
        // Last first: a table that runs into the next is fixed after it.
        for &off in offsets.iter().rev() {
            fix_checksum(&mut region, off);
        }
    }

    let mut root = Vec::with_capacity(root_len);
    root.extend_from_slice(if xsdt { b"XSDT" } else { b"RSDT" });
    root.extend_from_slice(&(root_len as u32).to_le_bytes());
    root.extend_from_slice(b"\x01\0FUZZ  FUZZTABL\x01\0\0\0FUZZ\x01\0\0\0");
    for e in entries {
        root.extend_from_slice(&e.to_le_bytes()[..entry_len]);
    }
    fix_checksum(&mut root, 0);
    region[..root_len].copy_from_slice(&root);

    let mut rsdp = b"RSD PTR \0FUZZ  ".to_vec();
    rsdp.push(if xsdt { 2 } else { 0 });
    rsdp.extend_from_slice(&(if xsdt { 0 } else { ROOT_PA as u32 }).to_le_bytes());
    if xsdt {
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&ROOT_PA.to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
    }
    rsdp[8] = 0u8.wrapping_sub(sum(&rsdp[..20]));
    if xsdt {
        rsdp[32] = 0u8.wrapping_sub(sum(&rsdp));
    }
    let mut bios = vec![0; BIOS_LEN];
    let at = (RSDP_PA - BIOS) as usize;
    bios[at..at + rsdp.len()].copy_from_slice(&rsdp);

    let mut mem = low_memory();
    mem.add(BIOS, bios).add(ROOT_PA, region);
    (mem, RSDP_PA)
}

fn check(t: &Tables) {
    let m = &t.madt;
    assert!(m.processors.len() <= 4096, "{} processors", m.processors.len());
    let mut ids: Vec<u32> = m.processors.iter().map(|p| p.apic_id).collect();
    ids.sort_unstable();
    assert!(ids.windows(2).all(|w| w[0] != w[1]), "an APIC ID twice");
    for p in &m.processors {
        assert!(p.enabled || p.online_capable, "{p:?}");
        assert!(p.apic_id != if p.x2apic { u32::MAX } else { 0xff }, "{p:?}");
        assert!(p.x2apic || p.apic_id <= 0xff && p.uid <= 0xff, "{p:?}");
    }
    assert!(m.io_apics.len() <= 128 && m.overrides.len() <= 256);
    assert!(t.mcfg.len() <= 256);
    for r in &t.mcfg {
        assert!(r.bus_start <= r.bus_end && r.base % (1 << 20) == 0, "{r:?}");
    }
    assert!(t.fadt.pm_timer.is_none_or(|p| p.bits == 24 || p.bits == 32));
    assert!(t.problems.len() <= acpi::MAX_PROBLEMS);
    t.problems.iter().for_each(check_error);
}

fn check_error(e: &AcpiError) {
    let text = e.to_string();
    assert!(text.starts_with(&format!("{}: ", e.table)) && !text.contains('\n'), "{text:?}");
}

/// Tables captured from QEMU 7.2 (`hypervisor/src/acpi/testdata`).
macro_rules! captured {
    ($machine:literal: $($table:literal),*) => {
        [$(&include_bytes!(concat!("../../../hypervisor/src/acpi/testdata/", $machine, "/", $table, ".bin"))[..]),*]
    };
}

/// A structured input of `tables` with `flags`.
fn input(flags: u8, tables: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend(tables.join(SEPARATOR));
    v
}

pub fn seeds() -> Vec<Vec<u8>> {
    let pc = captured!("pc": "FACP", "APIC", "HPET", "WAET", "DSDT");
    let q35 = captured!("q35": "FACP", "APIC", "HPET", "MCFG", "WAET", "DSDT");
    let fixed = FIX_CHECKSUMS | PATCH_DSDT;
    let mut bios = vec![RAW];
    bios.resize(1 + 0x159d0, 0);
    bios.extend_from_slice(captured!("pc": "RSDP")[0]);
    vec![
        input(fixed, &pc),
        input(fixed | XSDT, &q35),
        input(fixed | SCAN, &q35),
        // The tables as captured: right checksums, the FADT's own DSDT address.
        input(0, &q35),
        // Repeats and wild entries: the first "table" is addresses.
        input(fixed | XSDT | EXTRA_ENTRIES, &[&[0x40, 0, 0xf0, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], pc[0], pc[1], pc[2]]),
        bios,
    ]
}
