//! Attacks on the hypercall's vector-register contract (ABI 4): a
//! hypercall clobbers XMM0-15 and the x87 stack and preserves MXCSR and
//! the x87 control word; an interrupt preserves everything. The
//! hypervisor saves only MXCSR on a hypercall and zeroes the XMM registers
//! before it returns, so a guest must never find in them a value it did
//! not put there (the hypervisor's, or another guest's).
//!
//! | argument       | what it does |
//! |----------------|--------------|
//! | `fpu-clobber`  | 400 rounds: its own pattern in every XMM register, MXCSR rounding down with flush-to-zero, the x87 at double precision, then a hypercall (`nop`, `console_write`, `discard`, `yield`, `block`) and a look at every register and both control words; between rounds, 10 ms of spinning through timer interrupts with the pattern in place. Exits 0 if everything held; 5 if a register held a value it did not put there, 6 if a control word changed, 7 if an interrupt changed a register |
//! | `fpu-unmasked` | every SSE and x87 exception unmasked and an x87 divide-by-zero pending, then one hypercall of each kind: the hypervisor must run its own MXCSR and no x87 instruction, or it faults. Exits 0 if it came back with its control words intact, 6 if not |

use core::arch::asm;
use libos::println;

type Vectors = [[u64; 2]; 16];

/// XMM0-15 from the 256 bytes at `{i}`.
macro_rules! load_vectors {
    () => {
        "movdqu xmm0, [{i}]; movdqu xmm1, [{i} + 16]; movdqu xmm2, [{i} + 32]; movdqu xmm3, [{i} + 48];
         movdqu xmm4, [{i} + 64]; movdqu xmm5, [{i} + 80]; movdqu xmm6, [{i} + 96]; movdqu xmm7, [{i} + 112];
         movdqu xmm8, [{i} + 128]; movdqu xmm9, [{i} + 144]; movdqu xmm10, [{i} + 160]; movdqu xmm11, [{i} + 176];
         movdqu xmm12, [{i} + 192]; movdqu xmm13, [{i} + 208]; movdqu xmm14, [{i} + 224]; movdqu xmm15, [{i} + 240]"
    };
}
/// XMM0-15 into the 256 bytes at `{o}`.
macro_rules! store_vectors {
    () => {
        "movdqu [{o}], xmm0; movdqu [{o} + 16], xmm1; movdqu [{o} + 32], xmm2; movdqu [{o} + 48], xmm3;
         movdqu [{o} + 64], xmm4; movdqu [{o} + 80], xmm5; movdqu [{o} + 96], xmm6; movdqu [{o} + 112], xmm7;
         movdqu [{o} + 128], xmm8; movdqu [{o} + 144], xmm9; movdqu [{o} + 160], xmm10; movdqu [{o} + 176], xmm11;
         movdqu [{o} + 192], xmm12; movdqu [{o} + 208], xmm13; movdqu [{o} + 224], xmm14; movdqu [{o} + 240], xmm15"
    };
}

/// MXCSR with every exception masked, rounding down, flush-to-zero.
const MXCSR: u32 = 0x1f80 | (1 << 13) | (1 << 15);
/// x87 control word: every exception masked, double precision.
const FCW: u16 = 0x027f;
/// MXCSR's control bits (its status bits are the caller's to lose).
const MXCSR_CONTROL: u32 = 0xffc0;

/// The values this guest puts in XMM0-15 in round `round`.
fn pattern(round: u64) -> Vectors {
    core::array::from_fn(|i| {
        let v = 0x5eed_0000_0000_0000 | (round << 16) | i as u64;
        [v, !v]
    })
}

/// Loads `inp` into XMM0-15 and the control words, makes hypercall `nr`
/// with `a0`, `a1`, and stores the registers into `out`; returns the
/// MXCSR and x87 control word found after the call.
fn call_with_vectors(nr: u64, a0: u64, a1: u64, inp: &Vectors, out: &mut Vectors) -> (u32, u16) {
    let (mut mxcsr, mut fcw) = (MXCSR, FCW);
    // SAFETY: the block saves and restores nothing of Rust's: the XMM
    // registers are declared clobbered, the control words are set back to
    // the defaults at its end, `inp`/`out` are 256-byte arrays, and the
    // hypercall is one the guest may make (rcx/r11 are clobbered by
    // `syscall`, so no input may live there: `out`, not `lateout`).
    unsafe {
        asm!(
            "sub rsp, 8",
            "ldmxcsr [{m}]",
            "fldcw [{f}]",
            load_vectors!(),
            "syscall",
            store_vectors!(),
            "stmxcsr [{m}]",
            "fnstcw [{f}]",
            "mov dword ptr [rsp], 0x1f80",
            "ldmxcsr [rsp]",
            "mov word ptr [rsp], 0x037f",
            "fldcw [rsp]",
            "add rsp, 8",
            i = in(reg) inp.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            m = in(reg) &mut mxcsr,
            f = in(reg) &mut fcw,
            inlateout("rax") nr => _,
            in("rdi") a0,
            in("rsi") a1,
            out("rcx") _,
            out("r11") _,
            clobber_abi("C"),
        );
    }
    (mxcsr, fcw)
}

/// Puts `inp` in XMM0-15, spins until the TSC passes `until` (timer
/// interrupts take the CPU meanwhile), and stores the registers in `out`.
fn spin_with_vectors(until: u64, inp: &Vectors, out: &mut Vectors) {
    // SAFETY: as in `call_with_vectors`, without the hypercall; rdtsc
    // clobbers rax and rdx.
    unsafe {
        asm!(
            load_vectors!(),
            "2:",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "cmp rax, {u}",
            "jb 2b",
            store_vectors!(),
            i = in(reg) inp.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            u = in(reg) until,
            out("rax") _,
            out("rdx") _,
            clobber_abi("C"),
        );
    }
}

/// TSC ticks per millisecond, measured against the monotonic clock.
fn tsc_per_ms() -> u64 {
    let (t0, c0) = (libos::time::rdtsc(), libos::time::Instant::now());
    while c0.elapsed().as_micros() < 2000 {}
    (libos::time::rdtsc() - t0) / 2
}

fn clobber() -> i32 {
    let text = b"fpu-clobber: a console line from inside the vector test\n";
    let page = alloc::vec![0x77u8; 3 * 4096];
    let discard = (page.as_ptr() as u64).next_multiple_of(4096);
    let ms = tsc_per_ms();
    let mut out = [[0u64; 2]; 16];
    for round in 0..400u64 {
        let own = pattern(round);
        let (nr, a0, a1) = match round % 10 {
            3 => (abi::Hypercall::ConsoleWrite as u64, text.as_ptr() as u64, text.len() as u64),
            5 => (abi::Hypercall::Discard as u64, discard, 4096),
            7 => (abi::Hypercall::Yield as u64, 0, 0),
            9 => (abi::Hypercall::Block as u64, libos::time::Instant::now().as_nanos() + 100_000, 0),
            _ => (abi::Hypercall::Nop as u64, 0, 0),
        };
        let (mxcsr, fcw) = call_with_vectors(nr, a0, a1, &own, &mut out);
        for (r, (got, mine)) in out.iter().zip(&own).enumerate() {
            if *got != [0, 0] && got != mine {
                println!(
                    "fpu-clobber: round {round}: after hypercall {nr} xmm{r} = {:#x}:{:#x}, a value this guest did not put there",
                    got[1], got[0]
                );
                return 5;
            }
        }
        if mxcsr & MXCSR_CONTROL != MXCSR & MXCSR_CONTROL || fcw != FCW {
            println!("fpu-clobber: round {round}: after hypercall {nr} MXCSR {mxcsr:#x} (set {MXCSR:#x}), FCW {fcw:#x} (set {FCW:#x})");
            return 6;
        }
        if round % 40 == 0 {
            spin_with_vectors(libos::time::rdtsc() + 10 * ms, &own, &mut out);
            if out != own {
                println!("fpu-clobber: round {round}: an interrupt changed the vector registers");
                return 7;
            }
        }
    }
    println!("fpu-clobber: 400 hypercalls, every vector register zero or its own, control words kept");
    0
}

fn unmasked() -> i32 {
    let text = b"fpu-unmasked: console write with every exception unmasked\n";
    let (mut mxcsr, mut fcw) = (0u32, 0u16);
    // SAFETY: every exception unmasked and an x87 exception pending only
    // inside this block: it ends by clearing the exception (fnclex, which
    // does not wait) and loading the default control words. The
    // hypercalls are ones the guest may make.
    unsafe {
        asm!(
            "sub rsp, 8",
            "mov dword ptr [rsp], 0",
            "ldmxcsr [rsp]",
            "mov word ptr [rsp], 0x0040",
            "fldcw [rsp]",
            "fldz",
            "fld1",
            "fdivrp st(1), st",
            "mov eax, {nop}", "syscall",
            "mov eax, {cw}", "mov rdi, {t}", "mov esi, {tl}", "syscall",
            "mov eax, {yld}", "syscall",
            "mov eax, {blk}", "xor edi, edi", "syscall",
            "stmxcsr [{m}]",
            "fnstcw [{f}]",
            "fnclex",
            "fninit",
            "mov dword ptr [rsp], 0x1f80",
            "ldmxcsr [rsp]",
            "add rsp, 8",
            nop = const abi::Hypercall::Nop as u32,
            cw = const abi::Hypercall::ConsoleWrite as u32,
            yld = const abi::Hypercall::Yield as u32,
            blk = const abi::Hypercall::Block as u32,
            t = in(reg) text.as_ptr(),
            tl = const 58,
            m = in(reg) &mut mxcsr,
            f = in(reg) &mut fcw,
            out("rax") _, out("rdi") _, out("rsi") _, out("rcx") _, out("r11") _,
            clobber_abi("C"),
        );
    }
    if mxcsr & MXCSR_CONTROL != 0 || fcw != 0x0040 {
        println!("fpu-unmasked: MXCSR {mxcsr:#x} and FCW {fcw:#x} after the hypercalls (set 0 and 0x40)");
        return 6;
    }
    println!("fpu-unmasked: four hypercalls with every exception unmasked and one pending");
    0
}

pub fn run(attack: &str) -> i32 {
    match attack {
        "fpu-clobber" => clobber(),
        "fpu-unmasked" => unmasked(),
        _ => 2,
    }
}
