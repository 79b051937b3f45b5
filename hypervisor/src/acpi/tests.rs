//! Tests over tables captured from QEMU 7.2 (`testdata/README.md`), placed
//! in a simulated physical memory behind their real RSDP (and RSDT) or a
//! made-up ACPI 2.0 RSDP and XSDT, and over the same tables broken.

use super::*;

/// Where QEMU's SeaBIOS put the DSDT (the FADTs point there).
const DSDT_PA: u64 = 0x1ffe_0040;
/// Where the tables' region starts.
const HIGH: u64 = 0x1ffe_0000;
/// The BIOS area the RSDP is searched in.
const BIOS: u64 = 0xe0000;
/// The EBDA segment SeaBIOS leaves at 0x40E.
const EBDA_SEGMENT: u16 = 0x9fc0;

/// A firmware's tables, to be laid out in memory by [`Fw::image`].
#[derive(Clone)]
struct Fw {
    rsdp_pa: u64,
    rsdp: Vec<u8>,
    /// Where the RSDP says the root table is.
    root_pa: u64,
    xsdt: bool,
    dsdt: Vec<u8>,
    /// Laid out one after the other (16-byte aligned) after the root.
    tables: Vec<Vec<u8>>,
    /// The root's entries, if not the tables' addresses.
    entries: Option<Vec<u64>>,
}

fn sum_to_zero(t: &mut [u8], at: usize, over: usize) {
    t[at] = 0;
    t[at] = 0u8.wrapping_sub(checksum(&t[..over]));
}

/// Recomputes a table's checksum (over its declared length).
fn fix(t: &mut [u8]) {
    let len = (u32_at(t, 4).unwrap() as usize).min(t.len());
    sum_to_zero(t, 9, len);
}

/// A table with a standard header around `body`, checksum right.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(signature);
    t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(b"TESTS TESTTABL\x01\0\0\0TEST\x01\0\0\0");
    assert_eq!(t.len(), HEADER_LEN);
    t.extend_from_slice(body);
    fix(&mut t);
    t
}

/// An ACPI 2.0 RSDP naming `xsdt` (and an unreadable RSDT, which must not
/// be used).
fn rsdp_v2(xsdt: u64) -> Vec<u8> {
    let mut r = b"RSD PTR \0TESTS \x02".to_vec();
    r.extend_from_slice(&0xdead_0000u32.to_le_bytes());
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    sum_to_zero(&mut r, 8, 20);
    sum_to_zero(&mut r, 32, 36);
    r
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

macro_rules! testdata {
    ($machine:literal, $table:literal) => {
        include_bytes!(concat!("testdata/", $machine, "/", $table, ".bin")).to_vec()
    };
}

impl Fw {
    /// QEMU 7.2 `-machine pc -smp 4`: its RSDP and RSDT (as SeaBIOS made them).
    fn pc() -> Self {
        let rsdp = testdata!("pc", "RSDP");
        let tables = vec![testdata!("pc", "FACP"), testdata!("pc", "APIC"), testdata!("pc", "HPET"), testdata!("pc", "WAET")];
        Fw {
            rsdp_pa: 0xf59d0,
            root_pa: u32_at(&rsdp, 16).unwrap().into(),
            rsdp,
            xsdt: false,
            dsdt: testdata!("pc", "DSDT"),
            tables,
            entries: None,
        }
    }

    /// QEMU 7.2 `-machine q35 -smp 32`.
    fn q35() -> Self {
        let rsdp = testdata!("q35", "RSDP");
        let tables = vec![
            testdata!("q35", "FACP"),
            testdata!("q35", "APIC"),
            testdata!("q35", "HPET"),
            testdata!("q35", "MCFG"),
            testdata!("q35", "WAET"),
        ];
        Fw {
            rsdp_pa: 0xf59e0,
            root_pa: u32_at(&rsdp, 16).unwrap().into(),
            rsdp,
            xsdt: false,
            dsdt: testdata!("q35", "DSDT"),
            tables,
            entries: None,
        }
    }

    /// The same tables behind an ACPI 2.0 RSDP and an XSDT.
    fn with_xsdt(mut self) -> Self {
        self.rsdp = rsdp_v2(self.root_pa);
        self.xsdt = true;
        self
    }

    fn table(&mut self, signature: &[u8; 4]) -> &mut Vec<u8> {
        self.tables.iter_mut().find(|t| t.starts_with(signature)).unwrap()
    }

    fn entry_len(&self) -> usize {
        if self.xsdt { 8 } else { 4 }
    }

    /// Where each table goes: one after the other after the root.
    fn addresses(&self) -> Vec<u64> {
        let entries = self.entries.as_ref().map_or(self.tables.len(), Vec::len);
        let mut at = align16(self.root_pa + (HEADER_LEN + self.entry_len() * entries) as u64);
        self.tables
            .iter()
            .map(|t| {
                let pa = at;
                at = align16(at + t.len() as u64);
                pa
            })
            .collect()
    }

    fn root(&self) -> Vec<u8> {
        let entries = self.entries.clone().unwrap_or_else(|| self.addresses());
        let body: Vec<u8> =
            entries.iter().flat_map(|&pa| if self.xsdt { pa.to_le_bytes().to_vec() } else { (pa as u32).to_le_bytes().to_vec() }).collect();
        sdt(if self.xsdt { b"XSDT" } else { b"RSDT" }, 1, &body)
    }

    /// Memory holding it all: the BDA's EBDA pointer, an empty EBDA, the
    /// BIOS area with the RSDP, and the tables, up to the last one's end.
    fn image(&self) -> MemImage {
        let mut low = vec![0; 0x20000];
        let at = (self.rsdp_pa - BIOS) as usize;
        low[at..at + self.rsdp.len()].copy_from_slice(&self.rsdp);
        let mut high = Vec::new();
        let mut put = |pa: u64, bytes: &[u8]| {
            let at = (pa - HIGH) as usize;
            if high.len() < at + bytes.len() {
                high.resize(at + bytes.len(), 0);
            }
            high[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(DSDT_PA, &self.dsdt);
        put(self.root_pa, &self.root());
        for (t, pa) in self.tables.iter().zip(self.addresses()) {
            put(pa, t);
        }
        let mut mem = MemImage::new();
        mem.add(0x400, {
            let mut bda = vec![0; 0x100];
            bda[0xe..0x10].copy_from_slice(&EBDA_SEGMENT.to_le_bytes());
            bda
        });
        mem.add(u64::from(EBDA_SEGMENT) << 4, vec![0; 0x400]).add(BIOS, low).add(HIGH, high);
        mem
    }

    fn parse(&self) -> Result<Tables, AcpiError> {
        parse(&self.image(), self.rsdp_pa)
    }
}

fn io(port: u64, bit_width: u8) -> GenericAddress {
    GenericAddress { space: AddressSpace::SystemIo, bit_width, bit_offset: 0, access_size: 0, address: port }
}

fn kinds(t: &Tables) -> Vec<(TableId, ErrorKind)> {
    t.problems.iter().map(|p| (p.table, p.kind.clone())).collect()
}

fn err(r: Result<Tables, AcpiError>) -> (TableId, ErrorKind) {
    let e = r.expect_err("parse should have failed");
    (e.table, e.kind)
}

// ---- The real tables ----

#[test]
fn qemu_pc_through_its_own_rsdp_and_rsdt() {
    let t = Fw::pc().parse().unwrap();
    assert_eq!(kinds(&t), []);
    assert_eq!((t.rsdp_revision, t.xsdt), (0, false));

    let m = &t.madt;
    assert_eq!(m.local_apic_address, 0xfee0_0000);
    assert!(m.pcat_compat);
    let ids: Vec<u32> = m.processors.iter().map(|p| p.apic_id).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert!(m.processors.iter().all(|p| p.enabled && !p.x2apic));
    assert_eq!(m.io_apics, [IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 }]);
    // IRQ 0 is GSI 2; 5, 9, 10, 11 level-triggered active high (flags 0xd).
    let overrides: Vec<(u8, u32, u16)> = m.overrides.iter().map(|o| (o.source, o.gsi, o.flags)).collect();
    assert_eq!(overrides, [(0, 2, 0), (5, 5, 0xd), (9, 9, 0xd), (10, 10, 0xd), (11, 11, 0xd)]);

    // A revision 1 FADT: 116 bytes, no reset register, no X_ fields.
    let f = &t.fadt;
    assert_eq!(f.revision, 1);
    assert_eq!(f.pm_timer, Some(PmTimer { block: io(0x608, 32), bits: 24 }));
    assert_eq!(f.pm1a_control, Some(io(0x604, 16)));
    assert_eq!(f.pm1b_control, None);
    assert_eq!(f.reset, None);
    assert!(!f.hw_reduced);
    assert_eq!(f.century, Some(0x32));
    assert_eq!(f.dsdt, Some(DSDT_PA));
    assert_eq!(f.acpi_enable, Some((0xb2, 0xf1)), "PIIX4's APM port and enable command");

    assert_eq!(t.s5, Some(SleepType { a: 0, b: 0 }));
    assert_eq!(t.hpet, Some(Hpet { base: 0xfed0_0000, block_id: 0x8086_a201, number: 0, min_tick: 0 }));
    assert_eq!(t.mcfg, []);
    assert_eq!(t.spcr, None);
}

#[test]
fn qemu_q35_through_its_own_rsdp_and_rsdt() {
    let t = Fw::q35().parse().unwrap();
    assert_eq!(kinds(&t), []);
    let ids: Vec<u32> = t.madt.processors.iter().map(|p| p.apic_id).collect();
    assert_eq!(ids, (0..32).collect::<Vec<_>>());
    assert_eq!(t.madt.io_apics, [IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 }]);
    assert_eq!(t.mcfg, [EcamRegion { base: 0xb000_0000, segment: 0, bus_start: 0, bus_end: 255 }]);

    let f = &t.fadt;
    assert_eq!(f.revision, 3);
    // X_PM_TMR_BLK: port 0x608, 32 bits wide, but a 24-bit count.
    assert_eq!(f.pm_timer, Some(PmTimer { block: io(0x608, 32), bits: 24 }));
    assert_eq!(f.pm1a_control.map(|g| g.address), Some(0x604));
    assert_eq!(f.reset, Some(ResetRegister { register: io(0xcf9, 8), value: 0x0f }));
    assert_eq!(f.dsdt, Some(DSDT_PA));
    assert_eq!(f.acpi_enable, Some((0xb2, 0x02)), "ICH9's APM port and enable command");
    assert_eq!(t.s5, Some(SleepType { a: 0, b: 0 }));
    assert_eq!(t.hpet.map(|h| h.base), Some(0xfed0_0000));
}

#[test]
fn an_xsdt_is_preferred_to_the_rsdt() {
    // rsdp_v2 names an unreadable RSDT: only the XSDT can give this.
    let t = Fw::q35().with_xsdt().parse().unwrap();
    assert_eq!((t.rsdp_revision, t.xsdt), (2, true));
    assert_eq!(t, Tables { rsdp_revision: 2, xsdt: true, ..Fw::q35().parse().unwrap() });
}

#[test]
fn the_rsdp_is_found_in_the_bios_area_or_the_ebda() {
    let pc = Fw::pc();
    assert_eq!(find_rsdp_in_bios(&pc.image()), Some(0xf59d0));

    // The EBDA is searched first.
    let mut mem = pc.image();
    let mut ebda = vec![0; 0x400];
    ebda[0x20..0x20 + 20].copy_from_slice(&pc.rsdp);
    mem.add(u64::from(EBDA_SEGMENT) << 4, ebda);
    assert_eq!(find_rsdp_in_bios(&mem), Some((u64::from(EBDA_SEGMENT) << 4) + 0x20));

    // A signature with a bad checksum is passed over.
    let mut bios = vec![0; 0x20000];
    bios[0x100..0x108].copy_from_slice(b"RSD PTR ");
    bios[0x15000..0x15014].copy_from_slice(&pc.rsdp);
    bios[0x16000..0x16000 + 20].copy_from_slice(&pc.rsdp);
    bios[0x16000 + 8] ^= 1;
    mem.add(u64::from(EBDA_SEGMENT) << 4, vec![0; 0x400]).add(BIOS, bios);
    assert_eq!(find_rsdp_in_bios(&mem), Some(BIOS + 0x15000));

    // Off a 16-byte boundary, or nowhere: not found.
    let mut bios = vec![0; 0x20000];
    bios[0x15008..0x1501c].copy_from_slice(&pc.rsdp);
    mem.add(BIOS, bios);
    assert_eq!(find_rsdp_in_bios(&mem), None);
    assert_eq!(find_rsdp_in_bios(&MemImage::new()), None);
}

// ---- RSDP and root ----

#[test]
fn a_bad_rsdp_is_refused() {
    let mut fw = Fw::pc();
    fw.rsdp[8] = fw.rsdp[8].wrapping_add(1);
    assert_eq!(err(fw.parse()), (TableId::Rsdp, ErrorKind::Checksum { sum: 1 }));
    let mut fw = Fw::pc();
    fw.rsdp[0] = b'X';
    assert!(matches!(err(fw.parse()), (TableId::Rsdp, ErrorKind::Signature { .. })));
    assert_eq!(err(parse(&MemImage::new(), 0xf59d0)), (TableId::Rsdp, ErrorKind::NotReadable { pa: 0xf59d0, len: 20 }));

    // ACPI 2.0: the extended checksum, and a sane length.
    let mut fw = Fw::q35().with_xsdt();
    fw.rsdp[33] = 1;
    assert!(matches!(err(fw.parse()), (TableId::Rsdp, ErrorKind::Checksum { .. })));
    for (length, kind) in [
        (20, ErrorKind::TooShort { length: 20, min: 36 }),
        (0x1_0000, ErrorKind::TooLong { length: 0x1_0000, max: 4096 }),
        (4096, ErrorKind::NotReadable { pa: 0xff010, len: 4096 }),
    ] {
        let mut fw = Fw::q35().with_xsdt();
        fw.rsdp[20..24].copy_from_slice(&(length as u32).to_le_bytes());
        fw.rsdp_pa = 0xff010; // 4080 bytes before the end of the BIOS area
        assert_eq!(err(fw.parse()), (TableId::Rsdp, kind));
    }

    // Neither root.
    let mut fw = Fw::pc();
    fw.rsdp[16..20].fill(0);
    sum_to_zero(&mut fw.rsdp, 8, 20);
    assert_eq!(err(fw.parse()), (TableId::Rsdp, ErrorKind::NoRoot));
}

#[test]
fn a_bad_root_table_is_refused() {
    let mut image = Fw::q35().with_xsdt().image();
    let xsdt = Fw::q35().root_pa;
    let mut bad = Fw::q35().with_xsdt().root();
    bad[12] = bad[12].wrapping_add(1);
    image.add(xsdt, bad.clone());
    assert_eq!(err(parse(&image, 0xf59e0)), (TableId::Xsdt, ErrorKind::Checksum { sum: 1 }));

    bad[4..8].copy_from_slice(&20u32.to_le_bytes());
    image.add(xsdt, bad.clone());
    assert_eq!(err(parse(&image, 0xf59e0)), (TableId::Xsdt, ErrorKind::TooShort { length: 20, min: 36 }));

    bad[4..8].copy_from_slice(&(MAX_TABLE_LEN + 1).to_le_bytes());
    image.add(xsdt, bad.clone());
    assert!(matches!(err(parse(&image, 0xf59e0)), (TableId::Xsdt, ErrorKind::TooLong { .. })));

    // Past the end of memory.
    bad[4..8].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image.add(xsdt, bad.clone());
    assert_eq!(err(parse(&image, 0xf59e0)), (TableId::Xsdt, ErrorKind::NotReadable { pa: xsdt, len: 0x10_0000 }));

    // A partial entry at the end.
    let mut fw = Fw::q35().with_xsdt();
    let mut root = fw.root();
    root.extend_from_slice(&[0; 3]);
    let len = root.len() as u32;
    root[4..8].copy_from_slice(&len.to_le_bytes());
    fix(&mut root);
    let mut image = fw.image();
    image.add(fw.root_pa, root);
    assert!(matches!(err(parse(&image, fw.rsdp_pa)), (TableId::Xsdt, ErrorKind::TrailingBytes { count: 3, .. })));

    // A wrong signature.
    fw.xsdt = false; // an RSDT where the XSDT should be
    let rsdt = fw.root();
    let mut image = Fw::q35().with_xsdt().image();
    image.add(fw.root_pa, rsdt);
    assert_eq!(err(parse(&image, fw.rsdp_pa)), (TableId::Xsdt, ErrorKind::Signature { found: *b"RSDT" }));
}

#[test]
fn repeated_overlapping_and_null_entries_are_skipped() {
    let mut fw = Fw::pc().with_xsdt();
    // FACP, APIC, HPET, WAET; then a second HPET and a second MADT.
    let hpet = fw.table(b"HPET").clone();
    let mut madt = fw.table(b"APIC").clone();
    madt[10] = b'Z';
    fix(&mut madt);
    fw.tables.extend([hpet, madt]);
    fw.entries = Some(vec![0; 8]);
    let a = fw.addresses();
    fw.entries = Some(vec![a[0], a[1], a[2], a[3], a[1], 0, a[4], a[5]]);
    let t = fw.parse().unwrap();
    assert_eq!(
        kinds(&t),
        [
            (TableId::Xsdt, ErrorKind::DuplicateEntry { index: 4, pa: a[1] }),
            (TableId::Xsdt, ErrorKind::NullEntry { index: 5 }),
            (TableId::Hpet, ErrorKind::Duplicate { pa: a[4] }),
            (TableId::Madt, ErrorKind::Duplicate { pa: a[5] }),
        ]
    );
    assert_eq!(t.madt.processors.len(), 4);

    // A FADT whose length reaches into the MADT after it: whichever the
    // root lists first is kept, and the other (required) one is missing.
    let mut fw = Fw::pc().with_xsdt();
    fw.table(b"FACP")[4..8].copy_from_slice(&0x100u32.to_le_bytes());
    assert_eq!(err(fw.parse()), (TableId::Madt, ErrorKind::Missing));
    let a = fw.addresses();
    fw.entries = Some(vec![a[1], a[0], a[2], a[3]]);
    assert_eq!(err(fw.parse()), (TableId::Fadt, ErrorKind::Missing));

    // An HPET reaching into the MCFG: the MCFG is ignored for the overlap,
    // the HPET for its checksum (it now sums the MCFG's bytes too).
    let mut fw = Fw::q35().with_xsdt();
    fw.table(b"HPET")[4..8].copy_from_slice(&0x50u32.to_le_bytes());
    let a = fw.addresses();
    let t = fw.parse().unwrap();
    assert_eq!(kinds(&t)[0], (TableId::Mcfg, ErrorKind::Overlap { pa: a[3], other: a[2] }));
    assert!(matches!(kinds(&t)[1], (TableId::Hpet, ErrorKind::Checksum { .. })));
    assert_eq!((t.problems.len(), t.hpet, t.mcfg.len()), (2, None, 0));
}

#[test]
fn unreadable_entries_and_unknown_tables_are_ignored() {
    let mut fw = Fw::q35().with_xsdt();
    fw.entries = Some(vec![0; 6]);
    let a = fw.addresses();
    fw.entries = Some([vec![0x7000_0000], a].concat()); // nothing there
    let t = fw.parse().unwrap();
    assert_eq!(kinds(&t), [(TableId::Xsdt, ErrorKind::NotReadable { pa: 0x7000_0000, len: 36 })]);
    assert_eq!(t.madt.processors.len(), 32);
}

#[test]
fn more_than_256_entries_are_not_read() {
    // 300 entries into zeroed memory (no signature) and the real ones:
    // after them, the real ones are not read; before them, they are.
    let mut fw = Fw::pc().with_xsdt();
    fw.entries = Some(vec![0; 304]);
    let a = fw.addresses();
    let zeros = (0..300).map(|i| BIOS + 16 * i);
    fw.entries = Some(zeros.clone().chain(a.iter().copied()).collect());
    assert_eq!(err(fw.parse()), (TableId::Madt, ErrorKind::Missing));
    fw.entries = Some(a.iter().copied().chain(zeros).collect());
    let t = fw.parse().unwrap();
    assert_eq!(kinds(&t), [(TableId::Xsdt, ErrorKind::TooManyTables { count: 304 })]);
    assert_eq!(t.problems[0].to_string(), "XSDT: 304 entries; only the first 256 are read");
}

// ---- Required and optional tables ----

#[test]
fn a_bad_madt_or_fadt_is_an_error_and_a_bad_optional_table_a_problem() {
    let mut fw = Fw::pc();
    fw.table(b"APIC")[40] += 1; // a flag byte, 1
    assert_eq!(err(fw.parse()), (TableId::Madt, ErrorKind::Checksum { sum: 1 }));

    let mut fw = Fw::pc();
    fw.tables.remove(0);
    assert_eq!(err(fw.parse()), (TableId::Fadt, ErrorKind::Missing));

    let mut fw = Fw::q35();
    fw.table(b"HPET")[40] = 1; // I/O space
    fix(fw.table(b"HPET"));
    fw.table(b"MCFG")[20] -= 1; // an OEM table ID byte, " "
    let t = fw.parse().unwrap();
    assert_eq!(
        kinds(&t),
        [(TableId::Mcfg, ErrorKind::Checksum { sum: 0xff }), (TableId::Hpet, ErrorKind::NotMemory { space: AddressSpace::SystemIo })]
    );
    assert_eq!((t.hpet, t.mcfg.len(), t.madt.processors.len(), t.s5.is_some()), (None, 0, 32, true));
}

#[test]
fn a_table_that_runs_past_the_end_of_memory_is_refused() {
    let mut fw = Fw::pc();
    fw.tables.swap(2, 3); // the HPET last, right at the end of memory
    let hpet = fw.table(b"HPET");
    hpet[4..8].copy_from_slice(&57u32.to_le_bytes());
    let pa = fw.addresses()[3];
    let t = fw.parse().unwrap();
    assert_eq!(kinds(&t), [(TableId::Hpet, ErrorKind::NotReadable { pa, len: 57 })]);

    let hpet = fw.table(b"HPET");
    hpet[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(kinds(&fw.parse().unwrap()), [(TableId::Hpet, ErrorKind::TooLong { length: u32::MAX.into(), max: MAX_TABLE_LEN.into() })]);
    let hpet = fw.table(b"HPET");
    hpet[4..8].copy_from_slice(&30u32.to_le_bytes());
    assert_eq!(kinds(&fw.parse().unwrap()), [(TableId::Hpet, ErrorKind::TooShort { length: 30, min: 56 })]);
}

#[test]
fn a_missing_or_bad_dsdt_only_loses_s5() {
    let mut fw = Fw::q35();
    fw.dsdt[100] ^= 4;
    let t = fw.parse().unwrap();
    assert_eq!(kinds(&t), [(TableId::Dsdt, ErrorKind::Checksum { sum: 4 })]);
    assert_eq!(t.s5, None);

    // No DSDT address at all (both fields zero).
    let mut fw = Fw::q35();
    let facp = fw.table(b"FACP");
    facp[40..44].fill(0);
    facp[140..148].fill(0);
    fix(facp);
    assert_eq!(kinds(&fw.parse().unwrap()), [(TableId::Dsdt, ErrorKind::Missing)]);

    // The _S5_ package cut short (its PkgLength runs past the table).
    let mut fw = Fw::pc();
    let at = fw.dsdt.windows(4).position(|w| w == b"_S5_").unwrap();
    fw.dsdt.truncate(at + 8);
    fw.dsdt[4..8].copy_from_slice(&((at + 8) as u32).to_le_bytes());
    fix(&mut fw.dsdt);
    let t = fw.parse().unwrap();
    assert_eq!(kinds(&t), [(TableId::Dsdt, ErrorKind::BadS5 { offset: at })]);
    assert_eq!(t.problems[0].to_string(), format!("DSDT: the \\_S5_ package at offset {at:#x} is cut short or malformed"));
}

#[test]
fn a_short_fadt_is_read_only_as_far_as_it_goes() {
    // The q35 FADT cut to revision 1's 116 bytes: no reset register, and
    // the PM timer from the 32-bit field.
    let mut fw = Fw::q35();
    let facp = fw.table(b"FACP");
    facp.truncate(116);
    facp[4..8].copy_from_slice(&116u32.to_le_bytes());
    fix(facp);
    let t = fw.parse().unwrap();
    assert_eq!((t.fadt.reset, t.fadt.pm_timer.map(|p| p.block), t.fadt.dsdt), (None, Some(io(0x608, 32)), Some(DSDT_PA)));

    // Cut into the reset register: not read.
    let facp = fw.table(b"FACP");
    facp[4..8].copy_from_slice(&120u32.to_le_bytes());
    facp.extend_from_slice(&[1, 8, 0, 0]);
    fix(facp);
    assert_eq!(fw.parse().unwrap().fadt.reset, None);

    // Shorter than 116: refused.
    let facp = fw.table(b"FACP");
    facp[4..8].copy_from_slice(&100u32.to_le_bytes());
    fix(facp);
    assert_eq!(err(fw.parse()), (TableId::Fadt, ErrorKind::TooShort { length: 100, min: 116 }));
}

#[test]
fn fadt_flags_choose_the_timer_width_and_hardware_reduced() {
    let mut fw = Fw::q35();
    let facp = fw.table(b"FACP");
    facp[113] |= 1; // TMR_VAL_EXT, bit 8
    facp[113] &= !4; // RESET_REG_SUP, bit 10
    facp[114] |= 0x10; // HW_REDUCED_ACPI, bit 20
    fix(facp);
    let f = fw.parse().unwrap().fadt;
    assert_eq!((f.pm_timer.map(|p| p.bits), f.hw_reduced, f.reset), (Some(32), true, None));
}

// ---- MADT ----

/// A MADT with the given entries after the header, address and flags.
fn madt(entries: &[&[u8]]) -> Vec<u8> {
    let mut body = 0xfee0_0000u32.to_le_bytes().to_vec();
    body.extend_from_slice(&1u32.to_le_bytes());
    entries.iter().for_each(|e| body.extend_from_slice(e));
    sdt(b"APIC", 5, &body)
}

fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
    [&[0, 8, uid, id][..], &flags.to_le_bytes()].concat()
}

fn x2apic(uid: u32, id: u32, flags: u32) -> Vec<u8> {
    [&[9, 16, 0, 0][..], &id.to_le_bytes(), &flags.to_le_bytes(), &uid.to_le_bytes()].concat()
}

fn with_madt(madt: Vec<u8>) -> Result<Tables, AcpiError> {
    let mut fw = Fw::pc().with_xsdt();
    *fw.table(b"APIC") = madt;
    fw.parse()
}

#[test]
fn madt_entries_that_break_the_walk_refuse_the_table() {
    let ok = lapic(0, 0, 1);
    let e = with_madt(madt(&[&ok, &[0, 0, 0, 0, 0, 0, 0, 0]])).unwrap_err();
    assert_eq!((e.table, e.kind.clone()), (TableId::Madt, ErrorKind::EntryLength { offset: 0x34, length: 0 }));
    assert_eq!(e.to_string(), "MADT: entry at offset 0x34 has length 0");
    assert_eq!(err(with_madt(madt(&[&[1, 1]]))), (TableId::Madt, ErrorKind::EntryLength { offset: 0x2c, length: 1 }));
    assert_eq!(
        err(with_madt(madt(&[&ok, &[1, 12, 0, 0]]))),
        (TableId::Madt, ErrorKind::EntryPastEnd { offset: 0x34, length: 12, end: 0x38 })
    );
    assert_eq!(err(with_madt(madt(&[&ok, &[7]]))), (TableId::Madt, ErrorKind::EntryPastEnd { offset: 0x34, length: 0, end: 0x35 }));
    assert_eq!(
        err(with_madt(madt(&[&[0, 4, 0, 0]]))),
        (TableId::Madt, ErrorKind::EntryTooShort { offset: 0x2c, entry_type: 0, length: 4 })
    );
    assert_eq!(
        err(with_madt(madt(&[&[9, 8, 0, 0, 0, 0, 0, 0]]))),
        (TableId::Madt, ErrorKind::EntryTooShort { offset: 0x2c, entry_type: 9, length: 8 })
    );
    // Unknown types of any length of 2 or more are stepped over.
    assert_eq!(with_madt(madt(&[&[0x7f, 2], &[0x80, 3, 0], &ok])).unwrap().madt.processors.len(), 1);
}

#[test]
fn madt_processors_x2apic_flags_and_overrides() {
    let entries = [
        lapic(0, 0, 1),
        lapic(1, 1, 0),                                  // neither enabled nor online-capable
        lapic(2, 2, 2),                                  // online-capable
        lapic(3, 0xff, 1),                               // not a usable ID
        x2apic(4, 300, 1),                               // x2APIC
        x2apic(5, u32::MAX, 1),                          // not a usable ID
        vec![5, 12, 0, 0, 0, 0, 0xe0, 0xfe, 1, 0, 0, 0], // local APIC address override
        vec![1, 12, 7, 0, 0, 0, 0xc0, 0xfe, 24, 0, 0, 0],
        vec![2, 10, 0, 9, 20, 0, 0, 0, 0xf, 0],
    ];
    let t = with_madt(madt(&entries.iter().map(Vec::as_slice).collect::<Vec<_>>())).unwrap();
    let p: Vec<(u32, u32, bool, bool, bool)> =
        t.madt.processors.iter().map(|p| (p.apic_id, p.uid, p.enabled, p.online_capable, p.x2apic)).collect();
    assert_eq!(p, [(0, 0, true, false, false), (2, 2, false, true, false), (300, 4, true, false, true)]);
    assert_eq!(t.madt.local_apic_address, 0x1_fee0_0000);
    assert_eq!(t.madt.io_apics, [IoApic { id: 7, address: 0xfec0_0000, gsi_base: 24 }]);
    assert_eq!(t.madt.overrides, [InterruptOverride { bus: 0, source: 9, gsi: 20, flags: 0xf }]);
    assert_eq!(kinds(&t), []);
}

#[test]
fn duplicate_apic_ids_keep_the_first() {
    let t = with_madt(madt(&[&lapic(0, 0, 1), &lapic(1, 1, 1), &x2apic(2, 1, 1), &lapic(3, 0, 1)])).unwrap();
    let p: Vec<(u32, u32)> = t.madt.processors.iter().map(|p| (p.apic_id, p.uid)).collect();
    assert_eq!(p, [(0, 0), (1, 1)]);
    assert_eq!(kinds(&t), [(TableId::Madt, ErrorKind::DuplicateApicId { id: 1 }), (TableId::Madt, ErrorKind::DuplicateApicId { id: 0 })]);
}

#[test]
fn an_absurd_number_of_cpus_is_capped() {
    let entries: Vec<Vec<u8>> = (0..5000).map(|i| x2apic(i, i, 1)).collect();
    let t = with_madt(madt(&entries.iter().map(Vec::as_slice).collect::<Vec<_>>())).unwrap();
    assert_eq!(t.madt.processors.len(), madt::MAX_PROCESSORS);
    assert_eq!(t.madt.processors.last().map(|p| p.apic_id), Some(4095));
    assert_eq!(kinds(&t), [(TableId::Madt, ErrorKind::TooMany { what: "processors", limit: 4096 })]);
    assert_eq!(t.problems[0].to_string(), "MADT: more than 4096 processors");
}

// ---- MCFG, HPET, SPCR ----

fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
    let mut body = vec![0; 8];
    for &(base, segment, start, end) in entries {
        body.extend_from_slice(&base.to_le_bytes());
        body.extend_from_slice(&segment.to_le_bytes());
        body.extend_from_slice(&[start, end, 0, 0, 0, 0]);
    }
    sdt(b"MCFG", 1, &body)
}

#[test]
fn mcfg_regions_are_checked() {
    let ok = mcfg(&[(0xb000_0000, 0, 0, 255), (0xe000_0000, 1, 16, 31)]);
    assert_eq!(mcfg::parse(&ok).unwrap()[1], EcamRegion { base: 0xe000_0000, segment: 1, bus_start: 16, bus_end: 31 });
    assert_eq!(mcfg::parse(&mcfg(&[])), Ok(vec![]));
    assert_eq!(
        mcfg::parse(&mcfg(&[(0xb000_0000, 0, 0, 255), (0xc000_0000, 0, 5, 4)])),
        Err(ErrorKind::BusRange { index: 1, start: 5, end: 4 })
    );
    assert_eq!(mcfg::parse(&mcfg(&[(0xb008_0000, 0, 0, 255)])), Err(ErrorKind::Misaligned { index: 0, base: 0xb008_0000 }));
    let mut partial = ok.clone();
    partial.truncate(ok.len() - 4);
    assert_eq!(mcfg::parse(&partial), Err(ErrorKind::TrailingBytes { offset: 60, count: 12 }));

    // In place of q35's own: a problem, and the rest stands.
    let mut fw = Fw::q35();
    *fw.table(b"MCFG") = mcfg(&[(0xb000_0000, 0, 9, 8)]);
    let t = fw.parse().unwrap();
    assert_eq!(t.problems.iter().map(ToString::to_string).collect::<Vec<_>>(), ["MCFG: region 0 ends at bus 8, before its first bus 9"]);
    assert_eq!(t.madt.processors.len(), 32);
}

#[test]
fn spcr_is_decoded_and_added_to_the_tables() {
    let mut body = vec![0; 80 - HEADER_LEN];
    body[0] = 0; // 16550
    body[4..16].copy_from_slice(&[1, 8, 0, 1, 0xf8, 3, 0, 0, 0, 0, 0, 0]);
    body[22] = 7; // 115200
    let mut fw = Fw::q35();
    fw.tables.push(sdt(b"SPCR", 2, &body));
    let t = fw.parse().unwrap();
    assert_eq!(t.spcr, Some(Spcr { interface_type: 0, base: GenericAddress { access_size: 1, ..io(0x3f8, 8) }, baud_rate: 7 }));
    fw.tables.last_mut().unwrap()[4] = 79;
    fix(fw.tables.last_mut().unwrap());
    assert_eq!(kinds(&fw.parse().unwrap()), [(TableId::Spcr, ErrorKind::TooShort { length: 79, min: 80 })]);
}

// ---- \_S5_ ----

fn dsdt(aml: &[u8]) -> Vec<u8> {
    sdt(b"DSDT", 2, aml)
}

#[test]
fn s5_forms() {
    let s5 = |aml: &[u8]| find_s5(&dsdt(aml));
    // QEMU's: Name (_S5, Package (4) {Zero, Zero, Zero, Zero}).
    assert_eq!(s5(b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00"), Ok(SleepType { a: 0, b: 0 }));
    // Root prefix, BytePrefix values (as on many PCs).
    assert_eq!(s5(b"\x10\x05\x08\\_S5_\x12\x08\x04\x0a\x07\x0a\x05\x00\x00"), Ok(SleepType { a: 7, b: 5 }));
    assert_eq!(s5(b"\x08_S5_\x12\x06\x02\x01\x0b\x05\x00"), Ok(SleepType { a: 1, b: 5 }));
    // A two-byte PkgLength: 0x2 | 0x04 << 4 = 0x42 bytes.
    let mut long = b"\x08_S5_\x12\x42\x04\x02\x0a\x06\x0c\x03\x00\x00\x00".to_vec();
    long.resize(6 + 0x42 + 1, 0);
    assert_eq!(s5(&long), Ok(SleepType { a: 6, b: 3 }));
    // A reference to \_S5_ (not after NameOp) is passed over.
    assert_eq!(s5(b"\x70\\_S5_\x60\x08_S5_\x12\x04\x02\x01\x01"), Ok(SleepType { a: 1, b: 1 }));

    let bad = |aml: &[u8]| s5(aml).unwrap_err();
    assert_eq!(bad(b"\x08_S4_\x12\x06\x04\x00\x00\x00\x00"), ErrorKind::NoS5);
    assert_eq!(bad(b""), ErrorKind::NoS5);
    assert_eq!(find_s5(b"DSDT"), Err(ErrorKind::NoS5));
    assert_eq!(bad(b"\x08_S5_\x12\x06\x04\x00"), ErrorKind::BadS5 { offset: 37 }); // past the table
    assert_eq!(bad(b"\x08_S5_\x12\x03\x04\x00\x00\x00\x00"), ErrorKind::BadS5 { offset: 37 }); // past the package
    assert_eq!(bad(b"\x08_S5_\x12\x06\x01\x00\x00\x00\x00"), ErrorKind::BadS5 { offset: 37 }); // one element
    assert_eq!(bad(b"\x08_S5_\x12\x04\x04\x00\x0a\x00\x00"), ErrorKind::BadS5 { offset: 37 }); // BytePrefix, no byte
    assert_eq!(bad(b"\x08_S5_\x12\x06\x02\x0b\x00\x01\x00"), ErrorKind::BadS5 { offset: 37 }); // 0x100
    assert_eq!(bad(b"\x08_S5_\x12\x06\x04\x0d\x00\x00\x00"), ErrorKind::BadS5 { offset: 37 }); // a string
    assert_eq!(bad(b"\x08_S5_\x0a\x05"), ErrorKind::BadS5 { offset: 37 }); // not a package
    assert_eq!(bad(b"\x08_S5_\x12\xc0"), ErrorKind::BadS5 { offset: 37 }); // PkgLength cut
}

// ---- No panics ----

/// Every length of every real table, and every byte of the MADT and FADT
/// flipped, with the checksum fixed so that the contents are looked at.
#[test]
fn cut_or_flipped_real_tables_never_panic() {
    let base = Fw::q35().with_xsdt();
    for i in 0..base.tables.len() {
        for len in 0..base.tables[i].len() as u32 + 8 {
            let mut fw = base.clone();
            fw.tables[i][4..8].copy_from_slice(&len.to_le_bytes());
            let end = (len as usize).min(fw.tables[i].len());
            if end > 9 {
                sum_to_zero(&mut fw.tables[i], 9, end);
            }
            let _ = fw.parse().map(|t| t.problems.iter().for_each(|p| assert!(!p.to_string().is_empty())));
        }
    }
    for i in 0..2 {
        for at in HEADER_LEN..base.tables[i].len() {
            let mut fw = base.clone();
            fw.tables[i][at] ^= 0xa5;
            fix(&mut fw.tables[i]);
            let _ = fw.parse();
        }
    }
}

#[test]
fn memimage_reads_across_adjacent_regions_and_not_past_them() {
    let mut m = MemImage::new();
    m.add(0x1000, vec![1; 16]).add(0x1010, vec![2; 16]);
    let mut b = [0; 8];
    assert!(m.read(0x100c, &mut b));
    assert_eq!(b, [1, 1, 1, 1, 2, 2, 2, 2]);
    assert!(!m.read(0x101c, &mut b));
    assert!(!m.read(u64::MAX - 3, &mut b));
    assert!(m.read(0, &mut []));
}

#[test]
fn an_io_port_is_a_nonzero_16_bit_address_in_io_space() {
    assert_eq!(io(0x604, 16).io_port(), Some(0x604));
    assert_eq!(io(0, 16).io_port(), None);
    assert_eq!(io(0x1_0000, 16).io_port(), None);
    assert_eq!(GenericAddress { space: AddressSpace::SystemMemory, ..io(0x604, 16) }.io_port(), None);
}
