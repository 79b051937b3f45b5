//! Reading what the firmware left in physical memory outside RAM (the ACPI
//! tables, the BIOS area where the root pointer may be): the direct map
//! covers RAM only, so each page is read through a one-page window mapped
//! read-only for the copy. Addresses come from the tables themselves, so
//! they are checked against what the CPU can address before any is mapped.

use super::{cpu, paging};
use alloc::string::{String, ToString};
use hypervisor::acpi::{self, Tables};
use hypervisor::bootinfo::Rsdp;
use hypervisor::mm::FRAME_SIZE;
use spin::Mutex;

/// The window's virtual address: in the hypervisor's last GiB, below the
/// device window, never mapped in guests' tables.
const WINDOW_VA: u64 = 0xffff_ffff_efff_f000;

/// Physical memory as the firmware left it, read a page at a time.
pub struct FirmwareMemory {
    root: u64,
    limit: u64,
}

/// One reader at a time: the window is one page.
static WINDOW: Mutex<()> = Mutex::new(());

impl FirmwareMemory {
    /// Reads through the hypervisor's tables `kernel_root`.
    pub fn new(kernel_root: u64) -> Self {
        FirmwareMemory { root: kernel_root, limit: 1 << cpu::physical_address_bits() }
    }

    /// Copies `buf.len()` bytes from physical `pa`; false if any of them
    /// lies past what the CPU can address.
    pub fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        if pa.checked_add(buf.len() as u64).is_none_or(|end| end > self.limit) {
            return false;
        }
        let _one = WINDOW.lock();
        let mut done = 0;
        while done < buf.len() {
            let at = pa + done as u64;
            let (page, off) = (at & !(FRAME_SIZE - 1), (at & (FRAME_SIZE - 1)) as usize);
            let n = (FRAME_SIZE as usize - off).min(buf.len() - done);
            paging::map_window(self.root, WINDOW_VA, page);
            // SAFETY: the window maps `page` (just set, and its stale
            // translation flushed); `off + n` stays within the page.
            unsafe { core::ptr::copy_nonoverlapping((WINDOW_VA as *const u8).add(off), buf[done..].as_mut_ptr(), n) };
            done += n;
        }
        true
    }
}

impl hypervisor::acpi::Firmware for FirmwareMemory {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        FirmwareMemory::read(self, pa, buf)
    }
}

/// The RSDP copy a Multiboot2 loader gave, seen at a pseudo-address in
/// front of physical memory (the parser reads the root pointer by address).
struct WithRsdpCopy<'a> {
    mem: &'a FirmwareMemory,
    copy: &'a [u8],
}

/// Where [`WithRsdpCopy`] shows the copy: the top of the physical address
/// space, which no table can name (reads there fail in `FirmwareMemory`).
const COPY_AT: u64 = u64::MAX - 64;

impl hypervisor::acpi::Firmware for WithRsdpCopy<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        if pa >= COPY_AT {
            let off = (pa - COPY_AT) as usize;
            return match self.copy.get(off..off + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    true
                }
                None => false,
            };
        }
        self.mem.read(pa, buf)
    }
}

/// The ACPI tables, from the root pointer the loader gave (an address or
/// a copy) or found in the BIOS area.
pub fn acpi_tables(kernel_root: u64, rsdp: &Rsdp) -> Result<Tables, String> {
    let mem = FirmwareMemory::new(kernel_root);
    match *rsdp {
        Rsdp::At(pa) => acpi::parse(&mem, pa).map_err(|e| e.to_string()),
        Rsdp::Copy(bytes, n) => acpi::parse(&WithRsdpCopy { mem: &mem, copy: &bytes[..n] }, COPY_AT).map_err(|e| e.to_string()),
        Rsdp::Unknown => match acpi::find_rsdp_in_bios(&mem) {
            Some(pa) => acpi::parse(&mem, pa).map_err(|e| e.to_string()),
            None => Err("no ACPI root pointer (RSDP) from the boot loader or in the BIOS area".into()),
        },
    }
}
