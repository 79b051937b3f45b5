//! The PVH start info (`hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`)
//! that QEMU hands over in `%ebx`: memory map, modules, command line.

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
pub const MAX_MEMMAP: usize = 128;
/// E820 type of usable RAM.
pub const RAM: u32 = 1;

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
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct ModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

/// What the hypervisor needs from the start info, copied out of low memory.
pub struct BootInfo {
    pub memmap: [MemmapEntry; MAX_MEMMAP],
    pub memmap_len: usize,
    /// The first module: the bundle (physical range).
    pub module: Option<(u64, u64)>,
}

impl BootInfo {
    pub fn memmap(&self) -> &[MemmapEntry] {
        &self.memmap[..self.memmap_len]
    }
}

/// Reads the start info at physical `pa`.
///
/// # Safety
/// Must run on the boot page tables, which identity-map the first GiB where
/// QEMU puts the start info, its memory map and module list.
pub unsafe fn read(pa: u64) -> Result<BootInfo, &'static str> {
    // SAFETY: identity-mapped and written by QEMU's PVH option ROM (caller).
    let si = unsafe { core::ptr::read_unaligned(pa as *const StartInfo) };
    if si.magic != MAGIC {
        return Err("bad PVH start info magic");
    }
    if si.version < 1 || si.memmap_entries == 0 {
        return Err("the PVH start info has no memory map (version 0)");
    }
    let mut info = BootInfo { memmap: [MemmapEntry::default(); MAX_MEMMAP], memmap_len: 0, module: None };
    let n = (si.memmap_entries as usize).min(MAX_MEMMAP);
    for i in 0..n {
        // SAFETY: the table holds memmap_entries entries (caller).
        info.memmap[i] = unsafe { core::ptr::read_unaligned((si.memmap_paddr as *const MemmapEntry).add(i)) };
    }
    info.memmap_len = n;
    if si.nr_modules > 0 {
        // SAFETY: the list holds nr_modules entries (caller).
        let m = unsafe { core::ptr::read_unaligned(si.modlist_paddr as *const ModlistEntry) };
        info.module = Some((m.paddr, m.size));
    }
    Ok(info)
}
