//! Start-up, the heap, the start page, exit and panics.

use abi::{START_MAGIC, StartInfo, layout};
use hermit_entry::boot_info::RawBootInfo;

/// The start page the hypervisor wrote before entering us.
pub fn start_info() -> &'static StartInfo {
    // SAFETY: the hypervisor maps the start page read-only at this fixed
    // address before the first instruction and never unmaps or changes it;
    // `start` checks the magic before anything else runs.
    unsafe { &*(layout::START_INFO as *const StartInfo) }
}

fn start_str(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: the hypervisor places the strings inside the read-only start
    // page (checked in `start`), which lives for the whole run.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

/// This instance's name, e.g. `hello-0`.
pub fn name() -> &'static str {
    let si = start_info();
    core::str::from_utf8(start_str(si.name_addr, si.name_len)).unwrap_or("?")
}

/// The application arguments from the manifest (or the image's hermit.toml).
pub fn args() -> impl Iterator<Item = &'static str> {
    let si = start_info();
    start_str(si.args_addr, si.args_len)
        .split(|&b| b == 0)
        .take(si.argc as usize)
        .map(|a| core::str::from_utf8(a).unwrap_or("?"))
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
    if si.magic != START_MAGIC || si.abi_version != abi::ABI_VERSION
        || !inside(si.name_addr, si.name_len) || !inside(si.args_addr, si.args_len)
    {
        exit(127);
    }
    if si.heap_len > 0 {
        // SAFETY: called once, before any allocation; the heap region is
        // ours alone, zero-filled on first touch.
        unsafe { crate::heap::init(si.heap_start, si.heap_len) };
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
    exit(101)
}

// Linked for `core`; see the memfns crate.
use memfns as _;
