//! Start-up, the heap, the start page, exit and panics.

use abi::{START_MAGIC, StartInfo, layout};
use hermit_entry::boot_info::RawBootInfo;

/// The start page the hypervisor wrote before entering us (in a clone,
/// its template's, shared: ABI 9).
pub fn start_info() -> &'static StartInfo {
    // SAFETY: the hypervisor maps the start page read-only at this fixed
    // address before the first instruction and never unmaps it; only a
    // clone given other arguments sees another one (a page of its own),
    // mapped while it is on no CPU, and it holds only plain integers; `start` checks the magic before anything
    // else runs.
    unsafe { &*(layout::START_INFO as *const StartInfo) }
}

/// The name the hypervisor wrote in the shared page: its length word,
/// then its bytes (a length past `NAME_MAX`, which only the guest's own
/// writes could leave there, is cut to it).
fn name_in_shared_page() -> &'static [u8] {
    let at = layout::EVENT_PAGE + layout::EVENT_NAME_OFFSET;
    // SAFETY: the shared page is mapped read-write for the guest's whole
    // life and the length word lies inside it, aligned (abi::layout checks
    // both at compile time).
    let len = unsafe { core::ptr::read_volatile(at as *const u64) }.min(layout::NAME_MAX as u64);
    // SAFETY: the bytes lie inside the shared page (NAME_MAX of them after
    // the word, checked at compile time); `strings` copies them before
    // handing them out.
    unsafe { core::slice::from_raw_parts((at + 8) as *const u8, len as usize) }
}

fn start_str(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: the hypervisor places the strings inside the start page
    // (checked in `start`), which stays mapped for the whole run. Its
    // bytes change only when the guest is cloned with other arguments,
    // while it is on no CPU; `strings` copies them before handing them
    // out.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

/// Our name (from the shared page: ABI 9), arguments and environment
/// (from the start page), as of generation `generation` (a clone's name
/// is its own: ABI 7).
#[derive(Clone, Copy)]
struct Strings {
    generation: u64,
    name: &'static [u8],
    args: &'static [u8],
    argc: u32,
    env: &'static [u8],
    envc: u32,
}

static STRINGS: spin::Mutex<Option<Strings>> = spin::Mutex::new(None);

/// This generation's strings. They are copied to the heap, once per
/// generation (a clone's are new): the `&'static str`s handed out must
/// not change under their holders when a clone's start page is
/// rewritten. A guest without a heap reads them in place.
fn strings() -> Strings {
    let generation = crate::sys::generation();
    let mut cached = STRINGS.lock();
    if let Some(s) = *cached
        && s.generation == generation
    {
        return s;
    }
    let si = start_info();
    let keep = |b: &'static [u8]| -> &'static [u8] { if si.heap_len > 0 { alloc::boxed::Box::leak(b.into()) } else { b } };
    let s = Strings {
        generation,
        name: keep(name_in_shared_page()),
        args: keep(start_str(si.args_addr, si.args_len)),
        argc: si.argc,
        env: if si.envc == 0 { &[] } else { keep(start_str(si.env_addr, si.env_len)) },
        envc: si.envc,
    };
    *cached = Some(s);
    s
}

/// This instance's name, e.g. `hello-0` (a clone's own name once cloned).
pub fn name() -> &'static str {
    core::str::from_utf8(strings().name).unwrap_or("?")
}

/// The application arguments from the manifest (or the image's hermit.toml).
pub fn args() -> impl Iterator<Item = &'static str> {
    let s = strings();
    s.args.split(|&b| b == 0).take(s.argc as usize).map(|a| core::str::from_utf8(a).unwrap_or("?"))
}

/// The environment the guest was started with (`ctl start --env`, a
/// container's `process.env`): `KEY=VALUE` each, split at the first `=`.
/// Empty under a hypervisor from before environments (its zero bytes).
pub fn vars() -> impl Iterator<Item = (&'static str, &'static str)> {
    let s = strings();
    s.env.split(|&b| b == 0).take(s.envc as usize).filter_map(|v| core::str::from_utf8(v).ok()).filter_map(|v| v.split_once('='))
}

/// The value of environment variable `key`, if the guest was given it.
pub fn var(key: &str) -> Option<&'static str> {
    vars().find(|&(k, _)| k == key).map(|(_, v)| v)
}

/// Stops this guest with exit code `code`.
pub fn exit(code: i32) -> ! {
    crate::hypercall::exit(code)
}

/// What a guest's main function may return.
pub trait Termination {
    fn code(self) -> i32;
}
impl Termination for () {
    fn code(self) -> i32 {
        0
    }
}
impl Termination for i32 {
    fn code(self) -> i32 {
        self
    }
}

/// Runs the guest: checks the start page, sets up the heap, calls `main`
/// and exits with its code.
///
/// # Safety
/// Called once, from the entry point, on the stack the hypervisor set up.
pub unsafe fn start(_boot: &'static RawBootInfo, _cpu_id: u32, main: impl FnOnce() -> i32) -> ! {
    let si = start_info();
    let strings = layout::START_PAGE..layout::START_PAGE + layout::PAGE_SIZE;
    let inside = |a: u64, l: u64| a >= strings.start && a.checked_add(l).is_some_and(|e| e <= strings.end);
    if si.magic != START_MAGIC
        || si.abi_version != abi::ABI_VERSION
        || !inside(si.args_addr, si.args_len)
        || (si.envc != 0 && !inside(si.env_addr, si.env_len))
    {
        exit(127);
    }
    if si.heap_len > 0 {
        // SAFETY: called once, before any allocation; the heap region is
        // ours alone, zero-filled on first touch.
        unsafe { crate::heap::init(si.heap_start, si.heap_len) };
        // Their state first, in the shared page: what a clone writes when
        // it wakes is then that page, its own already, and the top of its
        // stack (`sys::InSharedPage`).
        crate::task::place_state();
        crate::net::place_state();
    }
    crate::net::init();
    exit(main())
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => crate::println!("panicked at {}:{}: {}", l.file(), l.line(), info.message()),
        None => crate::println!("panicked: {}", info.message()),
    }
    print_backtrace();
    exit(101)
}

/// Prints `backtrace: 0x...` with what look like return addresses (words
/// pointing into our text just after a call) between the stack pointer and the top of the
/// stack, innermost first, at most 16; `cargo xtask run` turns them into
/// function names and lines with our ELF.
#[inline(never)]
fn print_backtrace() {
    unsafe extern "C" {
        // Defined by the linker's default script around the executable code.
        static __executable_start: u8;
        static etext: u8;
    }
    let text = (&raw const __executable_start) as u64..(&raw const etext) as u64;
    let mut sp: u64;
    // SAFETY: reads the stack pointer, nothing else.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    let mut line = alloc::string::String::from("backtrace:");
    let mut found = 0;
    sp &= !7;
    while sp + 8 <= layout::STACK_TOP && found < 16 {
        // SAFETY: every page between the stack pointer and the top of the
        // stack was touched on the way down, so it is mapped; aligned.
        let v = unsafe { core::ptr::read_volatile(sp as *const u64) };
        // SAFETY: inside our own text (checked first), which is mapped.
        if text.contains(&v) && v - 7 >= text.start && abi::backtrace::follows_call(unsafe { &*((v - 7) as *const [u8; 7]) }) {
            line += &alloc::format!(" {v:#x}");
            found += 1;
        }
        sp += 8;
    }
    crate::println!("{line}");
}

// Linked for `core`; see the memfns crate.
use memfns as _;
