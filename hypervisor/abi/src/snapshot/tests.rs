use super::*;
use alloc::vec::Vec;

fn state() -> State {
    let mut fpu = [0u8; FPU_BYTES];
    fpu[FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
    let mut regs = [7u64; 21];
    regs[RIP] = 0x20_1000;
    State {
        abi: crate::ABI_VERSION,
        image_digest: [0xab; 32],
        settings: Settings { tenant: 3, ring_slots: 4, ..Settings::default() },
        clock_ns: 123_456_789,
        blocked: true,
        regs,
        fpu,
    }
}

/// A snapshot of `state` with pages at `vaddrs` (each filled with its
/// index), arguments `a b` and one variable.
fn file(state: &State, vaddrs: &[u64]) -> Vec<u8> {
    let mut w = Writer::new(state, "echo.hermit", "e-0", &["a", "b"], &["K=V"], vaddrs.len() as u32).unwrap();
    for (i, &va) in vaddrs.iter().enumerate() {
        w.page(va, i % 2 == 0, i == 1, &[i as u8; 4096]);
    }
    w.finish().unwrap()
}

/// `bytes` with its length field and digest made right again (to test
/// the checks behind them).
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = bytes.len() as u64;
    bytes[16..24].copy_from_slice(&len.to_le_bytes());
    let body = bytes.len() - 32;
    let d = Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&d);
    bytes
}

#[test]
fn a_snapshot_round_trips_and_its_size_is_known_before() {
    let st = state();
    let f = file(&st, &[0x10_000, 0x20_3000, 0x20_4000]);
    assert_eq!(f.len(), Writer::size("echo.hermit", "e-0", &["a", "b"], &["K=V"], 3));
    let s = Snapshot::parse(&f).unwrap();
    assert_eq!(s.state, st);
    assert_eq!((s.image_name, s.name), ("echo.hermit", "e-0"));
    assert_eq!(s.args().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(s.env().collect::<Vec<_>>(), ["K=V"]);
    let pages: Vec<_> = s.pages().collect();
    assert_eq!(pages.len(), 3);
    assert_eq!((pages[1].vaddr, pages[1].writable, pages[1].executable, pages[1].data[0]), (0x20_3000, false, true, 1));
    assert_eq!(s.page(0x20_4000).map(|p| p.data[4095]), Some(2));
    assert_eq!(s.page(0x20_5000), None);
    assert_eq!(s.page(0x10_000).map(|p| p.writable), Some(true));
}

#[test]
fn a_short_altered_or_foreign_snapshot_is_refused_with_its_reason() {
    let st = state();
    let f = file(&st, &[0x10_000]);
    assert_eq!(Snapshot::parse(&f[..f.len() - 1]).unwrap_err(), Error::Truncated);
    assert_eq!(Snapshot::parse(&f[..10]).unwrap_err(), Error::Truncated);
    assert_eq!(Snapshot::parse(b"HVSNAP0").unwrap_err(), Error::BadMagic);
    let mut longer = f.clone();
    longer.push(0);
    assert_eq!(Snapshot::parse(&longer).unwrap_err(), Error::TrailingBytes);
    let mut flipped = f.clone();
    flipped[200] ^= 1;
    assert_eq!(Snapshot::parse(&flipped).unwrap_err(), Error::Altered);
    let mut v2 = f.clone();
    v2[8] = 2;
    assert_eq!(Snapshot::parse(&v2).unwrap_err(), Error::Version(2));
    let old = file(&State { abi: crate::ABI_VERSION - 1, ..st.clone() }, &[]);
    assert_eq!(Snapshot::parse(&old).unwrap_err(), Error::Abi(crate::ABI_VERSION - 1));
    // A length field that lies is caught before anything else is read.
    let mut lying = f.clone();
    lying[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(Snapshot::parse(&lying).unwrap_err(), Error::Truncated);
}

#[test]
fn values_a_restorer_must_not_trust_are_checked_even_when_sealed() {
    let st = state();
    let bad = |s: State| Snapshot::parse(&file(&s, &[])).unwrap_err();
    let mut regs = st.regs;
    regs[RIP] = USER_END;
    assert_eq!(bad(State { regs, ..st.clone() }), Error::BadRip(USER_END));
    let mut fpu = st.fpu;
    fpu[FPU_MXCSR_OFFSET + 2] = 1;
    assert_eq!(bad(State { fpu, ..st.clone() }), Error::BadFpu);
    for (settings, what) in [
        (Settings { memory: 0, ..st.settings }, "memory limit"),
        (Settings { weight: 0, ..st.settings }, "weight"),
        (Settings { cap: 101, ..st.settings }, "cap"),
        (Settings { tenant: 256, ..st.settings }, "tenant or ring slots"),
        (Settings { ring_slots: 3, ..st.settings }, "tenant or ring slots"),
    ] {
        assert_eq!(bad(State { settings, ..st.clone() }), Error::BadSettings(what));
    }
    // Pages: unaligned, out of order, the ones the restorer makes, beyond
    // the guest half.
    for vaddrs in [&[0x10_001][..], &[0x20_000, 0x10_000], &[0x10_000, 0x10_000], &[START_PAGE], &[TIME_PAGE], &[USER_END], &[0]] {
        assert!(matches!(Snapshot::parse(&file(&st, vaddrs)).unwrap_err(), Error::BadPage(_)), "{vaddrs:x?}");
    }
    // More pages than its limit holds.
    let small = State { settings: Settings { memory: 4096, ..st.settings }, ..st.clone() };
    assert_eq!(Snapshot::parse(&file(&small, &[0x10_000, 0x11_000])).unwrap_err(), Error::TooManyPages(2));
    // Unknown flags, and unknown page flags, resealed.
    let f = file(&st, &[0x10_000]);
    let flags_at = f.len() - 32 - 4 - PAGE_RECORD - (4 + 4 + 1 + 4 + 1) - (4 + 4 + 3) - FPU_BYTES - 21 * 8 - 4;
    let mut g = f.clone();
    g[flags_at] = 0x80;
    assert_eq!(Snapshot::parse(&resealed(g)).unwrap_err(), Error::BadFlags(0x80));
    let mut g = f.clone();
    let page_flags = f.len() - 32 - PAGE_RECORD + 8;
    g[page_flags] = 4;
    assert_eq!(Snapshot::parse(&resealed(g)).unwrap_err(), Error::BadPage(0x10_000));
    // A page count that claims more than is there.
    let mut g = f.clone();
    let count_at = f.len() - 32 - PAGE_RECORD - 4;
    g[count_at] = 2;
    assert_eq!(Snapshot::parse(&resealed(g)).unwrap_err(), Error::Truncated);
}

#[test]
fn every_prefix_and_every_flipped_byte_is_refused_without_a_panic() {
    let f = file(&state(), &[0x10_000, 0x20_3000]);
    for n in 0..f.len() {
        assert!(Snapshot::parse(&f[..n]).is_err(), "prefix {n}");
    }
    for i in (0..f.len()).step_by(61) {
        let mut g = f.clone();
        g[i] ^= 0x40;
        assert!(Snapshot::parse(&g).is_err(), "byte {i}");
        let _ = Snapshot::parse(&resealed(g));
    }
}

#[test]
fn the_writer_refuses_fewer_pages_than_announced() {
    let w = Writer::new(&state(), "i", "n", &[], &[], 1).unwrap();
    assert!(w.finish().is_none());
}
