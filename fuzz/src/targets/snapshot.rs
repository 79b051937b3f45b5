//! Snapshot files (`abi::snapshot`): `Snapshot::parse` over any bytes, as
//! a hypervisor that restores one reads them, and the accessors of what
//! it accepts (`pages`, `page`, `args`, `env`).
//!
//! The first byte picks how the rest becomes the file (its low two bits):
//! 0 as it is; 1 (and 3) resealed, its length field and closing SHA-256 made right
//! (a fuzzer never gets a digest right, so this is how mutations reach
//! the checks behind it, as the acpi target fixes checksums); 2 built with
//! `Writer` from fuzz-drawn fields (names, settings, registers, MXCSR,
//! arguments, pages at valid or wild addresses), then a few bytes laid
//! over it, resealed if bit 2 says so.
//!
//! Invariants: no panic; a resealed file is never refused as altered; an
//! error's sentence is one line; an accepted snapshot holds what the
//! checks promise (its ABI, names and strings within bounds and without
//! NUL, rip in the guest's half, MXCSR's reserved bits clear, pages
//! page-aligned, ascending, in the guest's half, never the start or time
//! page, no more than its memory limit holds, as many as it says), `page`
//! finds exactly its pages, and `Writer` writes it back byte for byte.

use abi::bundle::{Limits, Settings, TENANT_NONE};
use abi::layout::{PAGE_SIZE, START_PAGE, TIME_PAGE, USER_END, USER_MIN};
use abi::snapshot::{ARGS_MAX, Error, FPU_BYTES, FPU_MXCSR_OFFSET, NAME_MAX, RIP, Snapshot, State, Writer};
use sha2::{Digest, Sha256};

use crate::input::Input;

/// Where the length field lies, and the bytes of the closing digest.
const LENGTH_AT: usize = 16;
const DIGEST_BYTES: usize = 32;

const RAW: u8 = 0;
const RESEALED: u8 = 1;
const BUILT: u8 = 2;
/// With [`BUILT`]: reseal after the overlays.
const RESEAL_BUILT: u8 = 1 << 2;

pub fn snapshot(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let file = match mode & 3 {
        RAW => inp.rest().to_vec(),
        BUILT => {
            let mut f = build(&mut inp);
            for _ in 0..inp.below(4) {
                let at = inp.u16() as usize;
                if let Some(b) = f.get_mut(at) {
                    *b = inp.u8();
                }
            }
            if mode & RESEAL_BUILT != 0 { reseal(f) } else { f }
        }
        _ => reseal(inp.rest().to_vec()),
    };
    let resealed = match mode & 3 {
        RAW => false,
        BUILT => mode & RESEAL_BUILT != 0,
        _ => true,
    };
    match Snapshot::parse(&file) {
        Ok(s) => check(&s, &file, &mut inp),
        Err(e) => {
            let why = e.to_string();
            assert!(!why.is_empty() && !why.contains('\n'), "{e:?}: {why:?}");
            assert!(!(resealed && file.len() >= LENGTH_AT + 8 + DIGEST_BYTES && e == Error::Altered), "a resealed file is altered");
        }
    }
}

/// `f` with its length field and digest made right (if it has room for
/// them).
fn reseal(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < LENGTH_AT + 8 + DIGEST_BYTES {
        return f;
    }
    let len = f.len() as u64;
    f[LENGTH_AT..LENGTH_AT + 8].copy_from_slice(&len.to_le_bytes());
    let body = f.len() - DIGEST_BYTES;
    let sum = Sha256::digest(&f[..body]);
    f[body..].copy_from_slice(&sum);
    f
}

/// A page address: mostly valid and ascending from `last`, sometimes one
/// the parser must refuse.
fn vaddr(inp: &mut Input, last: u64) -> u64 {
    match inp.below(8) {
        0 => inp.u64(),
        1 => [START_PAGE, TIME_PAGE, USER_END, USER_MIN - PAGE_SIZE, last][inp.below(5)],
        2 => last.wrapping_add(1 + inp.u16() as u64),
        _ => last.max(USER_MIN - PAGE_SIZE).wrapping_add(PAGE_SIZE * (1 + inp.below(64) as u64)),
    }
}

/// A string of up to `max` bytes from the input (not always UTF-8-safe
/// to cut: `from_utf8_lossy` keeps it a `str`).
fn string(inp: &mut Input, max: usize) -> String {
    let n = inp.below(max + 1);
    String::from_utf8_lossy(inp.bytes(n)).into_owned()
}

/// A snapshot written with `Writer` from fields drawn from the input.
fn build(inp: &mut Input) -> Vec<u8> {
    let flags = inp.u8();
    let settings = Settings {
        memory: match inp.below(4) {
            0 => inp.u64(),
            _ => PAGE_SIZE * (1 + inp.u16() as u64),
        },
        weight: if flags & 1 != 0 { inp.u32() } else { 1 + inp.below(200) as u32 },
        cap: if flags & 2 != 0 { inp.u32() } else { inp.below(101) as u32 },
        tenant: match inp.below(4) {
            0 => inp.u32(),
            1 => TENANT_NONE,
            _ => inp.below(abi::MAX_TENANTS as usize) as u32,
        },
        ring_slots: if flags & 4 != 0 { inp.u32() } else { 1 << inp.below(12) },
        limits: Limits {
            nic_packets: inp.u64(),
            nic_bytes: inp.u64(),
            nic_broadcasts: inp.u64(),
            console_bytes: inp.u64(),
            notifications: inp.u64(),
        },
    };
    let mut regs = [0u64; 21];
    for r in &mut regs {
        *r = inp.u64();
    }
    if flags & 8 == 0 {
        regs[RIP] %= USER_END;
    }
    let mut fpu = [0u8; FPU_BYTES];
    let fill = inp.bytes(FPU_BYTES);
    fpu[..fill.len()].copy_from_slice(fill);
    let mxcsr = if flags & 16 != 0 { inp.u32() } else { 0x1f80 };
    fpu[FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4].copy_from_slice(&mxcsr.to_le_bytes());
    let state = State {
        abi: if flags & 32 != 0 { inp.u32() } else { abi::ABI_VERSION },
        image_digest: Sha256::digest(inp.bytes(8)).into(),
        settings,
        clock_ns: inp.u64(),
        blocked: inp.bool(),
        regs,
        fpu,
    };
    let image_name = string(inp, NAME_MAX + 2);
    let name = string(inp, NAME_MAX + 2);
    let args: Vec<String> = (0..inp.below(5)).map(|_| string(inp, 24)).collect();
    let env: Vec<String> = (0..inp.below(4)).map(|_| string(inp, 24)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let pages = inp.below(6) as u32;
    let Some(mut w) = Writer::new(&state, &image_name, &name, &args, &env, pages) else { return Vec::new() };
    let mut last = 0;
    for _ in 0..pages {
        let va = vaddr(inp, last);
        last = va;
        let mut data = [0u8; PAGE_SIZE as usize];
        let fill = inp.bytes(16);
        for (i, b) in data.iter_mut().enumerate() {
            *b = fill.get(i % 16).copied().unwrap_or(i as u8);
        }
        let fl = inp.u8();
        w.page(va, fl & 1 != 0, fl & 2 != 0, &data);
    }
    w.finish().unwrap_or_default()
}

/// What an accepted snapshot promises.
fn check(s: &Snapshot<'_>, file: &[u8], inp: &mut Input) {
    let st = &s.state;
    assert_eq!(st.abi, abi::ABI_VERSION);
    assert!(s.image_name.len() <= NAME_MAX && s.name.len() <= NAME_MAX, "{s:?}");
    assert!(st.regs[RIP] < USER_END, "{s:?}");
    let mxcsr = u32::from_le_bytes(st.fpu[FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4].try_into().unwrap());
    assert_eq!(mxcsr >> 16, 0, "reserved MXCSR bits accepted");
    assert!(st.settings.memory >= PAGE_SIZE && (1..=10_000).contains(&st.settings.weight) && st.settings.cap <= 100, "{st:?}");
    assert!(
        st.settings.tenant == TENANT_NONE || (st.settings.tenant < abi::MAX_TENANTS && abi::ring::valid_slots(st.settings.ring_slots)),
        "{st:?}"
    );
    let args: Vec<&str> = s.args().collect();
    let env: Vec<&str> = s.env().collect();
    for list in [&args, &env] {
        assert!(list.len() <= ARGS_MAX as usize, "{} strings", list.len());
        assert!(list.iter().all(|a| !a.contains('\0')), "{list:?}");
    }

    let pages: Vec<_> = s.pages().collect();
    assert_eq!(pages.len(), s.page_count() as usize);
    assert!(u64::from(s.page_count()) <= st.settings.memory / PAGE_SIZE, "more pages than the memory limit");
    for (i, p) in pages.iter().enumerate() {
        assert!(p.vaddr.is_multiple_of(PAGE_SIZE) && (USER_MIN..USER_END).contains(&p.vaddr), "{:#x}", p.vaddr);
        assert!(p.vaddr != START_PAGE && p.vaddr != TIME_PAGE, "{:#x}", p.vaddr);
        assert!(i == 0 || pages[i - 1].vaddr < p.vaddr, "pages not ascending");
        assert_eq!(s.page(p.vaddr), Some(*p), "page({:#x})", p.vaddr);
        assert_eq!(s.page(p.vaddr + 1), None);
        if i == 0 || pages[i - 1].vaddr != p.vaddr - PAGE_SIZE {
            assert_eq!(s.page(p.vaddr - PAGE_SIZE), None);
        }
    }
    for va in [0, USER_MIN, START_PAGE, TIME_PAGE, USER_END, u64::MAX, inp.u64(), inp.u64() & !(PAGE_SIZE - 1)] {
        if let Some(p) = s.page(va) {
            assert!(pages.contains(&p) && p.vaddr == va, "page({va:#x}) gave {:#x}", p.vaddr);
        } else {
            assert!(pages.iter().all(|p| p.vaddr != va), "page({va:#x}) missed it");
        }
    }

    // Written again, it is the same file: nothing was accepted that the
    // parser did not read.
    let mut w = Writer::new(st, s.image_name, s.name, &args, &env, s.page_count()).expect("room for a copy");
    for p in &pages {
        w.page(p.vaddr, p.writable, p.executable, p.data);
    }
    assert!(w.finish().is_some_and(|copy| copy == file), "a snapshot does not write back as it was read");
}

pub fn seeds() -> Vec<Vec<u8>> {
    let mut fpu = [0u8; FPU_BYTES];
    fpu[FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
    let mut regs = [3u64; 21];
    regs[RIP] = 0x20_1000;
    let state = State {
        abi: abi::ABI_VERSION,
        image_digest: [0xab; 32],
        settings: Settings { tenant: 1, ring_slots: 16, ..Settings::default() },
        clock_ns: 7_000_000_000,
        blocked: true,
        regs,
        fpu,
    };
    let valid = |pages: &[u64]| {
        let mut w = Writer::new(&state, "worker.hermit", "c-0", &["counter", "100", "100000"], &["K=V"], pages.len() as u32).unwrap();
        for (i, &va) in pages.iter().enumerate() {
            w.page(va, i != 1, i == 1, &[i as u8; PAGE_SIZE as usize]);
        }
        w.finish().unwrap()
    };
    let mut out = Vec::new();
    for pages in [&[][..], &[0x20_0000], &[0x20_0000, 0x20_1000, 0x40_0000]] {
        let f = valid(pages);
        // As it is, and (cut short) to be resealed.
        out.push([&[RAW][..], &f].concat());
        out.push([&[RESEALED][..], &f].concat());
        out.push([&[RESEALED][..], &f[..f.len() - 8]].concat());
    }
    // Built from drawn fields: mostly valid, and with overlays resealed.
    out.push(vec![BUILT, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.push([&[BUILT | RESEAL_BUILT, 0, 2, 0x10, 0, 0, 0, 0, 0, 0, 0, 50, 0, 2][..], &[7u8; 64]].concat());
    out
}
