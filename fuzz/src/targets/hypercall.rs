//! Hypercall argument validation and exit handling: a guest with
//! fuzz-chosen registers exits again and again (`syscall` with any number
//! and arguments, page faults at any address, other exceptions and
//! interrupts) and `Guest::handle_exit` decides each time.
//!
//! Invariants: no panic; the guest is never resumed at a non-canonical
//! address; a guest is never charged beyond its limit; console lines are
//! single, prefixed lines; destroying the guest returns every frame it
//! took, so the machine is back to the kernel root, the time page and the
//! image.

use abi::Hypercall;
use abi::layout::{self, NIC_TX_RING, PAGE_SIZE, STACK_MAX, STACK_TOP, USER_END};

/// Where the heap of a guest without a vNIC starts.
const HEAP_START: u64 = layout::heap_start(0);
use hypervisor::guest::regs::{Regs, VECTOR_SYSCALL};
use hypervisor::guest::{Guest, LoadedImage, Step};
use hypervisor::image::{Image, Perms, Segment};
use hypervisor::mm::PhysMem;

use crate::input::Input;
use crate::mem::FuzzMem;

const TEXT: u64 = 0x40_1000;
const DATA: u64 = 0x40_2000;
/// Most exits per input.
const MAX_EXITS: usize = 256;

/// Text (one page, its first bytes from the input), data (one page) and
/// bss (two pages).
fn image(text: &[u8]) -> Image {
    let mut elf = vec![0u8; 0x2000];
    elf[..text.len()].copy_from_slice(text);
    elf[0x1000..0x1004].copy_from_slice(b"DATA");
    Image {
        elf,
        entry: TEXT,
        segments: vec![
            Segment { vaddr: TEXT, mem_size: 0x1000, file_offset: 0, file_size: 0x1000, perms: Perms::READ | Perms::EXECUTE },
            Segment { vaddr: DATA, mem_size: 0x3000, file_offset: 0x1000, file_size: 4, perms: Perms::READ | Perms::WRITE },
        ],
        tls: None,
        app_args: vec![],
        kernel_name: "k".into(),
    }
}

/// A guest address: near somewhere that matters, or anything.
fn addr(inp: &mut Input<'_>, limit: u64) -> u64 {
    let sel = inp.u8();
    let off = if sel & 0x80 != 0 { inp.u16() as u64 } else { inp.u8() as u64 * 8 };
    let near_end = |x: u64| x.wrapping_sub(off);
    match sel & 0x7f {
        0 => HEAP_START + off,
        1 => near_end(STACK_TOP),
        2 => layout::START_PAGE + off,
        3 => layout::EVENT_PAGE + off,
        4 => layout::TIME_PAGE + off,
        5 => TEXT + off,
        6 => DATA + off,
        7 => near_end(USER_END),
        8 => 0xffff_8000_0000_0000 + off,
        9 => near_end(u64::MAX),
        10 => near_end(STACK_TOP - STACK_MAX),
        11 => near_end(HEAP_START + limit),
        12 => NIC_TX_RING + off,
        13 => off,
        14 => HEAP_START + (inp.u32() as u64) * PAGE_SIZE,
        _ => inp.u64(),
    }
}

/// A length: small, about a page, or anything.
fn len(inp: &mut Input<'_>) -> u64 {
    match inp.u8() % 6 {
        0 => inp.u8() as u64,
        1 => PAGE_SIZE - 8 + (inp.u8() % 16) as u64,
        2 => inp.u16() as u64,
        3 => (inp.u8() as u64) * PAGE_SIZE,
        4 => inp.u64(),
        _ => 0,
    }
}

pub fn hypercall(data: &[u8]) {
    let mut inp = Input::new(data);
    let text = inp.bytes(16);
    let limit = [64 << 10, 96 << 10, 256 << 10, 1 << 20][inp.below(4)];
    // Sometimes a machine too small for the guest: machine-OOM paths.
    let machine = if inp.u8() < 32 { 20 + inp.below(40) } else { 4096 };

    let mut mem = FuzzMem::new(machine);
    let kernel_root = mem.alloc().unwrap();
    let time_page = mem.alloc().unwrap();
    let Some(loaded) = LoadedImage::load(&mut mem, "fuzz.hermit", &image(text)) else {
        assert_eq!(mem.live, 2, "a failed load leaked frames");
        return;
    };
    let base = mem.live;
    let name = "fz-0";
    let mut g = match Guest::create(&mut mem, kernel_root, time_page, &loaded, name, &["a", "b"], &["K=v"], limit, HEAP_START, |_, _| {}) {
        Ok(g) => g,
        Err(_) => {
            assert_eq!(mem.live, base, "a failed creation leaked frames");
            return;
        }
    };

    let mut lines = 0usize;
    let clock = core::cell::Cell::new(0u64);
    for _ in 0..MAX_EXITS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let rip = if op & 0x80 != 0 { addr(&mut inp, limit) } else { g.regs.rip };
        let (rax, rdi, rsi) = match op & 0x7 {
            // A hypercall: a known number (mostly) with pointer-ish arguments.
            0..=3 => {
                let nr = if op & 0x40 != 0 { inp.u64() } else { (inp.u8() % 10) as u64 };
                let a0 = if nr == Hypercall::Block as u64 || nr == Hypercall::Exit as u64 { inp.u64() } else { addr(&mut inp, limit) };
                g.regs = Regs { vector: VECTOR_SYSCALL, rax: nr, rdi: a0, rsi: len(&mut inp), rip, ..g.regs.clone() };
                (nr, a0, g.regs.rsi)
            }
            // A page fault: any error code, any address.
            4 => {
                g.regs = Regs { vector: 14, error: inp.u8() as u64 & 0x1f, cr2: addr(&mut inp, limit), rip, ..g.regs.clone() };
                (0, 0, 0)
            }
            // Another exception or an interrupt, with garbage in every register.
            5 => {
                let vector = inp.u8() as u64;
                g.regs = Regs {
                    vector,
                    error: inp.u32() as u64,
                    cr2: inp.u64(),
                    rip,
                    rsp: inp.u64(),
                    rflags: inp.u64(),
                    rax: inp.u64(),
                    rbx: inp.u64(),
                    ..g.regs.clone()
                };
                (0, 0, 0)
            }
            // The guest stores into its memory (how it sets up buffers).
            6 => {
                let at = addr(&mut inp, limit);
                let n = inp.u8() as usize;
                let bytes = inp.bytes(n);
                let _ = g.memory.write(&mut mem, at, bytes);
                assert!(g.memory.charged_bytes() <= limit, "a store charged beyond the limit");
                continue;
            }
            // Events arrive; a blocked guest wakes.
            _ => {
                g.raise_events(&mut mem, inp.u64());
                g.wake_from_block(&mut mem);
                let _ = g.pending_events(&mut mem);
                continue;
            }
        };
        let vector = g.regs.vector;
        if trace() {
            let r = &g.regs;
            eprintln!(
                "exit vector {} rax {:#x} rdi {:#x} rsi {:#x} cr2 {:#x} err {:#x} rip {:#x} live {} charged {}",
                r.vector,
                r.rax,
                r.rdi,
                r.rsi,
                r.cr2,
                r.error,
                r.rip,
                mem.live,
                g.memory.charged_bytes()
            );
        }
        // The clock moves a quarter of a millisecond per reading, so the rate
        // limits both refuse and refill.
        let step = g.handle_exit(&mut mem, &|| clock.replace(clock.get() + 250_000), &mut |l: &str| {
            lines += 1;
            assert!(l.starts_with("fz-0| ") && !l.contains('\n'), "bad console line {l:?}");
        });
        assert!(g.memory.charged_bytes() <= g.memory.limit_bytes(), "charged beyond the limit");
        assert!(g.memory.limit_bytes() <= limit);
        assert_eq!(g.via_sysret, vector == VECTOR_SYSCALL);
        match &step {
            Step::Stopped(why) => {
                // The sentence is one line, and the record reads back as the same reason.
                let text = why.to_string();
                assert!(!text.is_empty() && !text.contains('\n'), "bad reason {why:?}");
                let json = serde_json::to_string(why).unwrap();
                assert_eq!(&serde_json::from_str::<abi::stop::StopReason>(&json).unwrap(), why, "{json}");
            }
            Step::Exited(_) => {}
            // Every other step enters the guest again, sooner or later.
            _ => assert!(g.regs.rip < USER_END, "resumed at non-canonical {:#x} after {step:?}", g.regs.rip),
        }
        if vector == VECTOR_SYSCALL && step == Step::Resume && rax == Hypercall::ConsoleWrite as u64 {
            assert_eq!(g.regs.rax, rsi, "console_write of {rsi:#x} bytes at {rdi:#x} returned {:#x}", g.regs.rax);
        }
        if trace() {
            eprintln!("  -> {step:?} live {} charged {} tables {}", mem.live, g.memory.charged_bytes(), g.memory.table_bytes());
        }
        if matches!(step, Step::Stopped(_) | Step::Exited(_)) {
            break;
        }
    }
    g.flush_console(&mut |l: &str| assert!(l.starts_with("fz-0| ") && !l.contains('\n'), "bad console line {l:?}"));
    let live = mem.live;
    let freed = g.destroy(&mut mem);
    assert_eq!(mem.live, live - freed);
    assert_eq!(mem.live, base, "destroying the guest did not return every frame");
    loaded.unload(&mut mem);
    assert_eq!(mem.live, 2);
    let _ = lines;
}

/// Whether to print each exit (`FUZZ_TRACE=1`, for reading a crash).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// Builds inputs op by op.
struct Seed(Vec<u8>);

impl Seed {
    fn new(limit_sel: u8) -> Self {
        // Text: hlt, wrmsr, mov cr3, in, out, int 0x80, lgdt ...
        let text = [0xf4, 0x0f, 0x30, 0x0f, 0x22, 0xd8, 0xec, 0xee, 0xcd, 0x80, 0x0f, 0x01, 0x10, 0xfa, 0x90, 0x90];
        let mut v = text.to_vec();
        v.push(limit_sel);
        v.push(0xff); // a big machine
        Seed(v)
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn hc(self, nr: u8, addr_sel: &[u8], len: &[u8]) -> Self {
        self.op(&[0, nr]).op(addr_sel).op(len)
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let cw = Hypercall::ConsoleWrite as u8;
    vec![
        // Store "hi\n" in the heap, print it, yield, nop, net_kick, exit.
        Seed::new(3)
            .op(&[6, 0, 0, 3])
            .op(b"hi\n")
            .hc(cw, &[0, 0], &[0, 3])
            .hc(Hypercall::Yield as u8, &[0, 0], &[5])
            .hc(Hypercall::Nop as u8, &[0, 0], &[5])
            .hc(Hypercall::NetKick as u8, &[0, 0], &[5])
            .op(&[0, Hypercall::Exit as u8, 7, 0, 0, 0, 0, 0, 0, 0, 5])
            .0,
        // Block, events arrive, block again.
        Seed::new(2)
            .op(&[0, Hypercall::Block as u8])
            .op(&[0xff; 8])
            .op(&[5])
            .op(&[7, 1, 0, 0, 0, 0, 0, 0, 0])
            .op(&[0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 5])
            .0,
        // Discard heap pages after touching them.
        Seed::new(3).op(&[4, 6, 0, 0]).op(&[4, 6, 14, 1, 0, 0, 0]).op(&[0, Hypercall::Discard as u8, 0, 0]).op(&[3, 2]).0,
        // Bad pointers: hypervisor half, wrapping, unmapped, past the limit.
        Seed::new(0).hc(cw, &[8, 0], &[0, 16]).0,
        Seed::new(0).hc(cw, &[9, 1], &[0, 64]).0,
        Seed::new(0).hc(cw, &[13, 0x10], &[0, 16]).0,
        Seed::new(0).hc(cw, &[11, 1], &[1]).0,
        // Page faults: stack, heap until the limit, the guard page, text write.
        Seed::new(0)
            .op(&[4, 6, 1, 2])
            .op(&[4, 6, 14, 0, 0, 0, 0])
            .op(&[4, 6, 14, 1, 0, 0, 0])
            .op(&[4, 6, 14, 2, 0, 0, 0])
            .op(&[4, 6, 14, 20, 0, 0, 0])
            .0,
        Seed::new(1).op(&[4, 6, 10, 1]).0,
        Seed::new(1).op(&[4, 7, 5, 0]).0,
        // Exceptions at the privileged instructions in the text, and an interrupt.
        Seed::new(1).op(&[5, 13, 0, 0, 0, 0]).0,
        Seed::new(1).op(&[0x85, 5, 1, 6, 0, 0, 0, 0]).0,
        Seed::new(1).op(&[0x85, 5, 8, 32, 0, 0, 0, 0]).op(&[0x85, 5, 10, 6, 0, 0, 0, 0]).0,
        // A syscall at the very end of the guest half.
        Seed::new(1).op(&[0x80, 7, 0, 3, 0, 0]).0,
    ]
}
