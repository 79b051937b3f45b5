use super::*;

/// Builds Multiboot2 information from (type, body) tags.
fn info(tags: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    for (kind, body) in tags.iter().chain([(tag::END, Vec::new())].iter()) {
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        b.extend_from_slice(body);
        b.resize(b.len().next_multiple_of(8), 0);
    }
    let n = b.len() as u32;
    b[..4].copy_from_slice(&n.to_le_bytes());
    b
}

fn mmap(entries: &[(u64, u64, u32)]) -> (u16, Vec<u8>) {
    let mut body = Vec::new();
    body.extend_from_slice(&24u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for (a, s, k) in entries {
        body.extend_from_slice(&a.to_le_bytes());
        body.extend_from_slice(&s.to_le_bytes());
        body.extend_from_slice(&k.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
    }
    (tag::MMAP, body)
}

fn module(start: u32, end: u32) -> (u16, Vec<u8>) {
    let mut body = Vec::new();
    body.extend_from_slice(&start.to_le_bytes());
    body.extend_from_slice(&end.to_le_bytes());
    body.extend_from_slice(b"bundle\0");
    (tag::MODULE, body)
}

/// The map GRUB gives on QEMU `pc` with 512 MiB, SeaBIOS.
fn pc_map() -> (u16, Vec<u8>) {
    mmap(&[(0, 0x9fc00, 1), (0x9fc00, 0x400, 2), (0xf0000, 0x10000, 2), (0x100000, 0x1fee0000, 1), (0x1ffe0000, 0x20000, 2)])
}

#[test]
fn a_grub_map_module_and_rsdp() {
    let mut rsdp = b"RSD PTR ".to_vec();
    rsdp.resize(36, 7);
    let b = info(&[pc_map(), module(0x12_3000, 0x15_0000), (tag::ACPI_NEW, rsdp.clone())]);
    let boot = multiboot2(&b).unwrap();
    assert_eq!(boot.protocol, Protocol::Multiboot2);
    assert_eq!(boot.memory.ram(), &[0..0x9f000, 0x100000..0x1ffe0000]);
    assert_eq!(boot.memory.entries, 5);
    assert_eq!(boot.memory.lost_bytes, 0);
    assert_eq!(boot.module, Some(0x12_3000..0x15_0000));
    let Rsdp::Copy(copy, 36) = boot.rsdp else { panic!("{:?}", boot.rsdp) };
    assert_eq!(&copy[..], &rsdp[..]);
}

#[test]
fn the_newer_acpi_tag_wins_whatever_the_order() {
    let old = b"RSD PTR 01234567890A".to_vec();
    let mut new = b"RSD PTR ".to_vec();
    new.resize(36, 2);
    for tags in [
        vec![pc_map(), (tag::ACPI_OLD, old.clone()), (tag::ACPI_NEW, new.clone())],
        vec![pc_map(), (tag::ACPI_NEW, new.clone()), (tag::ACPI_OLD, old.clone())],
    ] {
        assert!(matches!(multiboot2(&info(&tags)).unwrap().rsdp, Rsdp::Copy(_, 36)));
    }
    assert!(matches!(multiboot2(&info(&[pc_map(), (tag::ACPI_OLD, old)])).unwrap().rsdp, Rsdp::Copy(_, 20)));
}

#[test]
fn extra_modules_are_counted_not_taken() {
    let b = info(&[pc_map(), module(0x20_0000, 0x30_0000), module(0x30_0000, 0x40_0000)]);
    let boot = multiboot2(&b).unwrap();
    assert_eq!(boot.module, Some(0x20_0000..0x30_0000));
    assert_eq!(boot.extra_modules, 1);
}

#[test]
fn bad_information_is_refused_with_its_reason() {
    let good = info(&[pc_map()]);
    // Total size past the bytes given, or absurd.
    assert_eq!(multiboot2(&good[..good.len() - 8]).unwrap_err(), BootError::BadSize(good.len() as u32));
    let mut tiny = good.clone();
    tiny[..4].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(multiboot2(&tiny).unwrap_err(), BootError::BadSize(4));
    // A tag running past the end.
    let mut long = good.clone();
    long[12..16].copy_from_slice(&0xffffu32.to_le_bytes());
    assert!(matches!(multiboot2(&long).unwrap_err(), BootError::BadTag { offset: 8, kind: 6, size: 0xffff }));
    // A tag smaller than its own header would loop forever.
    let mut zero = good.clone();
    zero[12..16].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(multiboot2(&zero).unwrap_err(), BootError::BadTag { size: 0, .. }));
    // No memory map; a map with no RAM; a module ending before it starts.
    assert_eq!(multiboot2(&info(&[])).unwrap_err(), BootError::NoMemoryMap);
    assert_eq!(multiboot2(&info(&[mmap(&[(0, 0x1000, 2)])])).unwrap_err(), BootError::NoMemoryMap);
    assert_eq!(multiboot2(&info(&[pc_map(), module(0x3000, 0x2000)])).unwrap_err(), BootError::BadModule);
    // Map entries too small to hold an entry.
    let (k, mut body) = pc_map();
    body[..4].copy_from_slice(&8u32.to_le_bytes());
    assert!(matches!(multiboot2(&info(&[(k, body)])).unwrap_err(), BootError::BadTag { kind: 6, .. }));
}

#[test]
fn every_prefix_and_every_byte_flip_is_handled() {
    let b = info(&[pc_map(), module(0x12_3000, 0x15_0000), (tag::ACPI_OLD, b"RSD PTR 01234567890A".to_vec())]);
    for n in 0..b.len() {
        let _ = multiboot2(&b[..n]);
    }
    for i in 0..b.len() {
        for v in [0, 1, 0x7f, 0xff] {
            let mut c = b.clone();
            c[i] = v;
            let _ = multiboot2(&c);
        }
    }
}

#[test]
fn the_memory_map_merges_sorts_and_trims_to_pages() {
    let mut m = MemoryMap::default();
    m.add(0x20_0000, 0x10_0000, RAM);
    m.add(0x10_0000, 0x10_0000, RAM); // touches the first
    m.add(0x28_0000, 0x10_0000, RAM); // overlaps it
    m.add(0x40_0800, 0x1000, RAM); // no whole page
    m.add(0x50_0000, 0x1000, 2); // not RAM
    m.add(0x60_0001, 0x2fff, RAM); // one whole page inside
    assert_eq!(m.ram(), &[0x10_0000..0x38_0000, 0x60_1000..0x60_3000]);
    assert_eq!(m.entries, 6);
    assert_eq!(m.total(), 0x28_0000 + 0x2000);
}

#[test]
fn a_map_too_fragmented_keeps_the_largest_ranges_and_says_what_it_lost() {
    let mut m = MemoryMap::default();
    // Twice the room, every range apart from the others; sizes grow.
    for i in 0..2 * MAX_RAM_RANGES as u64 {
        m.add(i * 0x100_0000, (i + 1) * 0x1000, RAM);
    }
    assert_eq!(m.ram().len(), MAX_RAM_RANGES);
    let lost: u64 = (0..MAX_RAM_RANGES as u64).map(|i| (i + 1) * 0x1000).sum();
    assert_eq!(m.lost_bytes, lost);
    assert_eq!(m.ram()[0].start, MAX_RAM_RANGES as u64 * 0x100_0000);
    assert!(m.ram().windows(2).all(|w| w[0].end < w[1].start));
}

#[test]
fn the_trampoline_page_is_free_low_ram() {
    let mut m = MemoryMap::default();
    m.add(0, 0x9fc00, RAM);
    m.add(0x10_0000, 0x100_0000, RAM);
    assert_eq!(m.low_page(&[]), Some(0x1000));
    assert_eq!(m.low_page(std::slice::from_ref(&(0..0x8000))), Some(0x8000));
    assert_eq!(m.low_page(&[0x1000..0x2000, 0x2000..0x5800]), Some(0x6000));
    // Nothing below 1 MiB but the real-mode interrupt table's page.
    let mut high = MemoryMap::default();
    high.add(0, 0x1000, RAM);
    high.add(0x10_0000, 0x100_0000, RAM);
    assert_eq!(high.low_page(&[]), None);
    assert_eq!(m.low_page(std::slice::from_ref(&(0..0x10_0000))), None);
}

#[test]
fn the_command_line_comes_from_its_tag_and_gives_maxcpus() {
    let boot = multiboot2(&info(&[pc_map(), (tag::CMDLINE, b"/boot/hypervisor maxcpus=16 quiet\0".to_vec())])).unwrap();
    assert_eq!(boot.options(), Options { max_cpus: Some(16), unknown: 1 });
    assert_eq!(multiboot2(&info(&[pc_map()])).unwrap().options(), Options::default());
    for bad in [&b"maxcpus=0"[..], b"maxcpus=", b"maxcpus=x", b"maxcpus=99999999999999999999999"] {
        assert_eq!(Options::parse(bad), Options { max_cpus: None, unknown: 1 }, "{bad:?}");
    }
    // Cut at its NUL and at the room kept.
    let mut b = BootInfo::new(Protocol::Pvh);
    b.set_cmdline(b"maxcpus=2\0maxcpus=3");
    assert_eq!(b.options().max_cpus, Some(2));
    let mut long = vec![b'x'; 300];
    long.extend_from_slice(b" maxcpus=4");
    b.set_cmdline(&long);
    assert_eq!(b.options(), Options { max_cpus: None, unknown: 1 });
}
