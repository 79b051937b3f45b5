//! The hypervisor's host-testable core: everything that needs no privileged
//! instruction. The bootable binary (`src/main.rs`, feature `bare-metal`)
//! adds the x86_64 layer on top and is built by `cargo xtask build`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod bootinfo;
pub mod control;
pub mod guest;
pub mod image;
pub mod limit;
pub mod machine;
pub mod mm;
pub mod net;
pub mod pci;
pub mod rtc;
pub mod sched;
pub mod slot;
#[cfg(test)]
pub mod testutil;
pub mod virtio;
