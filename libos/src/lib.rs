//! The library OS that every guest links.
//!
//! A guest is a `#![no_std]`, `#![no_main]` binary that names its main
//! function with [`main!`]. The libos supplies the entry point the
//! hypervisor jumps to (hermit-entry's `Entry` signature), a heap over the
//! guest's demand-zero memory (so `alloc` works), `print!`/`println!`, the
//! instance name and arguments, `exit`, and a panic handler that reports the
//! message and exits with status 101.
//!
//! It runs in ring 3 and talks to the hypervisor only through the hypercalls
//! in [`hypercall`] and the read-only start page described in `abi`.
#![no_std]

extern crate alloc;

pub mod console;
mod heap;
pub mod hypercall;
pub mod net;
mod rt;
mod sys;
pub mod task;
pub mod time;

pub use rt::{args, exit, name, start_info, var, vars};
pub use sys::generation;

#[doc(hidden)]
pub mod __private {
    pub use crate::rt::{Termination, start};
    pub use abi::note::AbiNote;
    pub use hermit_entry;
}

/// Declares the guest's main function: `fn main()` or `fn main() -> i32`
/// (the exit code), or with `async`, an `async fn main()` run by the
/// executor in [`task`]. Expands to the entry point and the ELF notes that
/// mark the binary as a Hermit image for this hypervisor's ABI.
#[macro_export]
macro_rules! main {
    (async $main:path) => {
        fn __libos_async_main() -> i32 {
            $crate::__private::Termination::code($crate::task::block_on($main()))
        }
        $crate::main!(__libos_async_main);
    };
    ($main:path) => {
        $crate::__private::hermit_entry::define_entry_version!();

        #[used]
        #[unsafe(link_section = ".note.hvabi")]
        static HVABI_NOTE: $crate::__private::AbiNote = $crate::__private::AbiNote::current();

        /// The entry point (hermit-entry's `Entry`).
        ///
        /// # Safety
        /// Called once by the hypervisor with the start page mapped.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn _start(boot_info: &'static $crate::__private::hermit_entry::boot_info::RawBootInfo, cpu_id: u32) -> ! {
            // SAFETY: forwarded from the hypervisor's entry contract.
            unsafe { $crate::__private::start(boot_info, cpu_id, || $crate::__private::Termination::code($main())) }
        }
    };
}
