//! Attacks with RFLAGS.DF and AC set at the moment the guest leaves for the
//! hypervisor. An interrupt gate clears neither, so a hypervisor that runs
//! its own code with the guest's DF copies and zeroes memory backwards
//! (a "zeroed" frame keeps its old contents and the 4 KiB below it are
//! cleared), and with the guest's AC, SMAP is off.
//!
//! | argument          | what it does                                           |
//! |-------------------|--------------------------------------------------------|
//! | `df-resume`       | with DF and AC set: a hypercall, 200 ms of spinning through timer interrupts, 256 demand-zero page faults; then checks every page it got is zero; exits 0 if so, 3 if not |
//! | `df-forge`        | sprays fake page-table entries into 64 pages, gives them back, faults in fresh regions (new page tables) with DF and AC set, then checks every sampled page reads zero; exits 0 if so, 3 if not |
//! | `df-ud2`, `df-divide`, `df-hlt`, `df-int3`, `df-icebp`, `df-pagefault`, `df-x87`, `df-stack-segment`, `df-noncanonical` | takes that exception with DF and AC set (the hypervisor must stop it) |
//! | `keep-secret SECS` | a victim: fills 32 heap pages with a secret and checks it every 10 ms for SECS seconds; exits 0 if it never changed, 4 if it did |
//!
//! There is no SIMD-exception attack: QEMU's TCG never raises #XM, so it
//! could not be tested here.

use core::arch::asm;
use libos::println;

/// Sets AC and DF. Every asm block that uses it ends with `clear_flags!()` or
/// never returns: Rust code assumes DF = 0.
macro_rules! set_flags {
    () => {
        "pushfq; or qword ptr [rsp], 0x40000; popfq; std"
    };
}
/// Clears DF and AC again.
macro_rules! clear_flags {
    () => {
        "cld; pushfq; and qword ptr [rsp], ~0x40000; popfq"
    };
}

const GIB: u64 = 1 << 30;
const PAGE: u64 = abi::layout::PAGE_SIZE;

/// A 1 GiB-aligned region `n` GiB into the heap, far from anything the
/// libos allocator hands out (it grows from the heap's start).
fn region(n: u64) -> u64 {
    (libos::start_info().heap_start + n * GIB).next_multiple_of(GIB)
}

fn rdtsc() -> u64 {
    // SAFETY: reading the time-stamp counter has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the page at `va` reads as zero, except its first word, which
/// must be `first`.
fn page_is_zero(va: u64, first: u64) -> bool {
    (0..PAGE / 8).all(|i| {
        // SAFETY: `va` lies in this guest's heap; a read maps a zero page.
        let w = unsafe { core::ptr::read_volatile((va + i * 8) as *const u64) };
        w == if i == 0 { first } else { 0 }
    })
}

pub fn run(attack: &str, arg: Option<&str>) -> i32 {
    match attack {
        "df-resume" => resume(),
        "df-forge" => forge(),
        "keep-secret" => keep_secret(arg.and_then(|s| s.parse().ok()).unwrap_or(10)),
        _ => exception(attack),
    }
}

fn resume() -> i32 {
    let name = libos::name();
    // A hypercall: `syscall` (SFMASK clears the flags on this path).
    let ret: i64;
    // SAFETY: the flags are set and cleared inside the block; `syscall`
    // clobbers rcx and r11 only.
    unsafe {
        asm!(set_flags!(), "syscall", clear_flags!(),
             inlateout("rax") abi::Hypercall::Nop as u64 => ret, lateout("rcx") _, lateout("r11") _);
    }
    // Spin with the flags set for 200 ms: timer interrupts take the CPU
    // from us many times.
    let ms = libos::time::Instant::now();
    let t0 = rdtsc();
    libos::time::sleep(core::time::Duration::from_millis(20));
    let tsc_per_ms = (rdtsc() - t0) / ms.elapsed().as_millis().max(1) as u64;
    let until = rdtsc() + 200 * tsc_per_ms;
    // SAFETY: only registers change; the flags are cleared at the end.
    unsafe {
        asm!(set_flags!(), "2:", "rdtsc", "shl rdx, 32", "or rax, rdx", "cmp rax, {until}", "jb 2b", clear_flags!(),
             until = in(reg) until, out("rax") _, out("rdx") _);
    }
    // Demand-zero faults: the hypervisor zeroes a frame for each page.
    let base = region(256);
    const PAGES: u64 = 256;
    const MARK: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    // SAFETY: writes one word to each of PAGES fresh pages of this guest's
    // own heap; the flags are cleared at the end.
    unsafe {
        asm!(set_flags!(), "2:", "mov qword ptr [{p}], {mark}", "add {p}, 4096", "dec {n}", "jnz 2b", clear_flags!(),
             p = inout(reg) base => _, n = inout(reg) PAGES => _, mark = in(reg) MARK);
    }
    let dirty = (0..PAGES).filter(|i| !page_is_zero(base + i * PAGE, MARK)).count();
    if dirty > 0 {
        println!("{name}: df-resume: {dirty} of {PAGES} fresh pages held old data");
        return 3;
    }
    println!("{name}: df-resume: hypercall returned {ret}, spun 200 ms, {PAGES} fresh pages all zero");
    0
}

fn forge() -> i32 {
    let name = libos::name();
    // Spray: pages full of entries that would map low physical memory
    // (the hypervisor's own image) present, writable and user-accessible.
    const SPRAY: u64 = 64;
    let spray = region(300);
    for p in 0..SPRAY {
        for i in 0..PAGE / 8 {
            let fake = (0x10_0000 + ((p * 512 + i) % 1024) * PAGE) | 0x7;
            // SAFETY: this guest's own heap.
            unsafe { core::ptr::write_volatile((spray + p * PAGE + i * 8) as *mut u64, fake) };
        }
    }
    let given = libos::hypercall::discard(spray, SPRAY * PAGE);
    // Fresh regions, each needing new page tables (a new PD for the new
    // GiB, a new PT for every 2 MiB), faulted in with the flags set: the
    // tables come from the frames just given back.
    let fresh = region(400);
    let touched: [u64; 6] = [0, 2 << 20, 10 << 20, 64 << 20, 300 << 20, GIB + (4 << 20)];
    for off in touched {
        // SAFETY: one write to this guest's own heap; flags cleared after.
        unsafe {
            asm!(set_flags!(), "mov qword ptr [{p}], 1", clear_flags!(), p = in(reg) fresh + off);
        }
    }
    // Every page of those regions must read zero: a stale entry in a new
    // table would map someone else's memory instead of a zero page.
    let mut sampled = 0;
    for off in touched {
        for (k, idx) in [0u64, 1, 7, 100, 255, 256, 400, 511].into_iter().enumerate() {
            let va = fresh + off + idx * PAGE;
            sampled += 1;
            if !page_is_zero(va, if idx == 0 { 1 } else { 0 }) {
                println!("{name}: df-forge: page {va:#x} (sample {k}) is not zero: a stale page-table entry");
                return 3;
            }
        }
        // And a 2 MiB region beside it that was never touched (a stale PD
        // entry would map it through a forged table).
        let next = fresh + off + (6 << 20);
        sampled += 1;
        if !page_is_zero(next, 0) {
            println!("{name}: df-forge: page {next:#x} is not zero: a stale page-directory entry");
            return 3;
        }
    }
    println!("{name}: df-forge: sprayed and gave back {given} bytes; {sampled} pages of fresh tables all zero");
    0
}

/// Takes one exception with DF and AC set; never returns.
fn exception(attack: &str) -> i32 {
    let zero = core::hint::black_box(0u64);
    let x87_control: u16 = 0x037b; // every x87 exception masked but divide-by-zero
    // SAFETY: each block sets the flags and takes an exception that gets
    // this guest stopped: none returns to Rust code with DF set.
    unsafe {
        match attack {
            "df-ud2" => asm!(set_flags!(), "ud2"),
            "df-divide" => asm!(set_flags!(), "div {}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _),
            "df-hlt" => asm!(set_flags!(), "hlt"),
            "df-int3" => asm!(set_flags!(), "int3"),
            "df-icebp" => asm!(set_flags!(), ".byte 0xf1"),
            "df-pagefault" => asm!(set_flags!(), "mov qword ptr [{}], 1", in(reg) 0x7000_dead_0000u64),
            "df-x87" => asm!(set_flags!(), "fninit", "fldcw word ptr [{}]", "fld1", "fldz", "fdivp st(1), st", "fwait",
                             in(reg) &x87_control),
            "df-stack-segment" => asm!(set_flags!(), "mov rsp, {}", "push rax", in(reg) 0x8000_0000_0000_0000u64),
            "df-noncanonical" => asm!(set_flags!(), "mov qword ptr [{}], 1", in(reg) 0x8000_0000_0000_0000u64),
            other => {
                println!("unknown attack {other:?}");
                return 2;
            }
        }
    }
    println!("{}: survived {attack} (the hypervisor should have stopped me)", libos::name());
    1
}

fn keep_secret(secs: u64) -> i32 {
    let name = libos::name();
    const PAGES: usize = 32;
    let secret = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ec2_e75e_c2e7_5ec2;
    let mut pages = alloc::vec![0u64; PAGES * 512];
    for (i, w) in pages.iter_mut().enumerate() {
        *w = secret(i);
    }
    let start = libos::time::Instant::now();
    let mut checks = 0u64;
    while start.elapsed().as_secs() < secs {
        libos::time::sleep(core::time::Duration::from_millis(10));
        checks += 1;
        // Volatile reads: the compiler may not assume the memory unchanged.
        if let Some(i) = (0..pages.len()).find(|&i| unsafe_read(&pages, i) != secret(i)) {
            println!("{name}: secret changed at word {i} after {checks} checks");
            return 4;
        }
    }
    println!("{name}: secret intact after {checks} checks");
    0
}

fn unsafe_read(words: &[u64], i: usize) -> u64 {
    // SAFETY: a reference to an initialised word is valid to read.
    unsafe { core::ptr::read_volatile(&words[i]) }
}
