//! The x86_64 layer: everything that needs a privileged instruction, each
//! hardware concept in its own file, each `unsafe` block with its reason.
//!
//! Assumes: ring 0, long mode entered by `boot`, up to `smp::MAX_CPUS`
//! CPUs each with its own GDT, TSS, per-CPU block and APIC, interrupts off
//! whenever hypervisor code runs (guests run with them on).
//!
//! `platform` is what the library's per-CPU loop (`hypervisor::machine`)
//! runs on: it owns the CR3 writes, the timer, the halts and the IPIs.

pub mod apic;
pub mod boot;
pub mod clock;
pub mod cpu;
pub mod e1000e_pci;
pub mod entry;
pub mod firmware;
pub mod gdt;
pub mod guest_pages;
pub mod msix;
pub mod multiboot2;
pub mod net;
pub mod paging;
pub mod pci;
pub mod platform;
pub mod power;
pub mod pvh;
pub mod serial;
pub mod smp;
pub mod virtio_pci;
