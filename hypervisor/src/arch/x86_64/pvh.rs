//! The PVH start info (`hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`)
//! that QEMU hands over in `%ebx`: memory map, modules, ACPI root pointer.

use hypervisor::bootinfo::{BootInfo, Protocol, Rsdp};

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct ModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

/// Most memory-map entries read (a guard against a wild count; QEMU
/// gives a handful).
const MAX_ENTRIES: u32 = 4096;

/// Reads the start info at physical `pa`.
///
/// # Safety
/// Must run on the boot page tables, which identity-map the first 4 GiB
/// where QEMU puts the start info, its memory map and module list.
pub unsafe fn read(pa: u64) -> Result<BootInfo, &'static str> {
    // SAFETY: identity-mapped and written by QEMU's PVH option ROM (caller).
    let si = unsafe { core::ptr::read_unaligned(pa as *const StartInfo) };
    if si.magic != MAGIC {
        return Err("bad PVH start info magic");
    }
    if si.version < 1 || si.memmap_entries == 0 {
        return Err("the PVH start info has no memory map (version 0)");
    }
    if si.memmap_entries > MAX_ENTRIES {
        return Err("the PVH start info claims more than 4096 memory-map entries");
    }
    let mut info = BootInfo::new(Protocol::Pvh);
    for i in 0..si.memmap_entries as usize {
        // SAFETY: the table holds memmap_entries entries (caller).
        let e = unsafe { core::ptr::read_unaligned((si.memmap_paddr as *const MemmapEntry).add(i)) };
        info.memory.add(e.addr, e.size, e.kind);
    }
    if si.nr_modules > 0 {
        // SAFETY: the list holds nr_modules entries (caller).
        let m = unsafe { core::ptr::read_unaligned(si.modlist_paddr as *const ModlistEntry) };
        info.module = Some(m.paddr..m.paddr.saturating_add(m.size));
        info.extra_modules = si.nr_modules as usize - 1;
    }
    if si.cmdline_paddr != 0 && si.cmdline_paddr < 1 << 32 {
        // SAFETY: the command line QEMU wrote (NUL-terminated), below
        // 4 GiB, identity-mapped (caller); at most CMDLINE_MAX bytes are read.
        let line = unsafe { core::ptr::read_unaligned(si.cmdline_paddr as *const [u8; hypervisor::bootinfo::CMDLINE_MAX]) };
        info.set_cmdline(&line);
    }
    if si.rsdp_paddr != 0 {
        info.rsdp = Rsdp::At(si.rsdp_paddr);
    }
    Ok(info)
}
