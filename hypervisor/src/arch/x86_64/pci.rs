//! PCI configuration space, through PCI Express's memory-mapped ECAM where
//! the ACPI MCFG table gives one (segment 0; each bus's 1 MiB mapped
//! uncached when first touched), else through the legacy I/O ports
//! (0xcf8/0xcfc); and a scan of every bus reachable from bus 0 through
//! PCI-to-PCI bridges (QEMU's `q35` puts devices behind PCI Express root
//! ports, whose buses the firmware numbered).

use super::paging::map_device;
use core::sync::atomic::{AtomicU64, Ordering};
use hypervisor::acpi::EcamRegion;
use spin::Once;
use x86_64::instructions::port::Port;

/// The configuration-address and -data ports (configuration mechanism #1).
const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// The configuration-address register's enable bit.
const CONFIG_ENABLE: u32 = 1 << 31;

/// Configuration-space registers (type 0 header) and their bits.
pub const VENDOR_DEVICE: u8 = 0x00;
pub const COMMAND: u8 = 0x04;
/// Command bits: respond to memory-space accesses; master the bus (DMA).
pub const COMMAND_MEMORY: u32 = 1 << 1;
pub const COMMAND_BUS_MASTER: u32 = 1 << 2;
pub const HEADER_TYPE: u8 = 0x0e;
/// Header-type bit: the device has functions beyond 0.
const MULTI_FUNCTION: u8 = 0x80;
/// The first base address register, and how many there are.
const BAR0: u8 = 0x10;
pub const BARS: u8 = 6;
/// BAR bits: an I/O BAR; the memory BAR's type field (2: 64-bit).
const BAR_IO: u32 = 1;
const BAR_TYPE_SHIFT: u32 = 1;
const BAR_TYPE_64: u32 = 2;
const BAR_FLAGS: u32 = 0xf;
pub const CAPABILITIES_POINTER: u8 = 0x34;
/// A capability's fields: its id and the next capability's offset.
pub const CAP_ID: u8 = 0;
pub const CAP_NEXT: u8 = 1;
/// The vendor-specific capability id (virtio's).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Vendor id of an absent function.
const NO_VENDOR: u32 = 0xffff;
/// Header type (low 7 bits) of a PCI-to-PCI bridge, and where a bridge's
/// secondary bus number sits.
const HEADER_BRIDGE: u8 = 0x01;
const SECONDARY_BUS: u8 = 0x19;

/// Segment 0's ECAM window: its physical base, its buses, and where each
/// bus is mapped (0: not yet).
struct Ecam {
    root: u64,
    base: u64,
    buses: core::ops::RangeInclusive<u8>,
    mapped: [AtomicU64; 256],
}

static ECAM: Once<Option<Ecam>> = Once::new();

/// Uses segment 0's ECAM region from the MCFG (if any) for configuration
/// space from now on. Called once, before any device is looked for.
pub fn init(kernel_root: u64, mcfg: &[EcamRegion]) -> bool {
    ECAM.call_once(|| {
        let r = mcfg.iter().find(|r| r.segment == 0)?;
        Some(Ecam { root: kernel_root, base: r.base, buses: r.bus_start..=r.bus_end, mapped: [const { AtomicU64::new(0) }; 256] })
    })
    .is_some()
}

impl Ecam {
    /// The virtual address of `bus`'s 1 MiB, mapping it on first use.
    fn bus(&self, bus: u8) -> Option<u64> {
        if !self.buses.contains(&bus) {
            return None;
        }
        let slot = &self.mapped[bus as usize];
        let va = slot.load(Ordering::Acquire);
        if va != 0 {
            return Some(va);
        }
        // Only the boot CPU scans, before the others run; a second
        // mapping of the same bus would only waste window.
        let pa = self.base + (((bus - self.buses.start()) as u64) << 20);
        let va = map_device(self.root, pa, 1 << 20);
        slot.store(va, Ordering::Release);
        Some(va)
    }
}

/// A device's address on the bus.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Function {
    fn address(self, offset: u8) -> u32 {
        CONFIG_ENABLE | (self.bus as u32) << 16 | (self.device as u32) << 11 | (self.function as u32) << 8 | (offset as u32 & 0xfc)
    }

    /// The function's register at `offset` in the ECAM window, if the
    /// machine has one covering its bus.
    fn ecam(self, offset: u8) -> Option<*mut u32> {
        let bus = ECAM.get()?.as_ref()?.bus(self.bus)?;
        let off = (self.device as u64 & 0x1f) << 15 | (self.function as u64 & 7) << 12 | (offset as u64 & 0xfc);
        Some((bus + off) as *mut u32)
    }

    pub fn read32(self, offset: u8) -> u32 {
        if let Some(reg) = self.ecam(offset) {
            // SAFETY: an aligned register of this function's 4 KiB in the
            // ECAM window, mapped uncached; an absent function reads all ones.
            return unsafe { reg.read_volatile() };
        }
        // SAFETY: the configuration-space ports are the hypervisor's; a read
        // of an absent device returns all ones.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(self.address(offset));
            Port::<u32>::new(CONFIG_DATA).read()
        }
    }

    pub fn write32(self, offset: u8, v: u32) {
        if let Some(reg) = self.ecam(offset) {
            // SAFETY: as in read32; callers write only registers they own.
            return unsafe { reg.write_volatile(v) };
        }
        // SAFETY: as in read32; callers write only registers they own.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(self.address(offset));
            Port::<u32>::new(CONFIG_DATA).write(v);
        }
    }

    pub fn read8(self, offset: u8) -> u8 {
        (self.read32(offset) >> ((offset & 3) * 8)) as u8
    }

    /// The physical address of memory BAR `n` (64-bit BARs combined).
    pub fn bar(self, n: u8) -> Option<u64> {
        if n >= BARS {
            return None;
        }
        let lo = self.read32(BAR0 + 4 * n);
        if lo & BAR_IO != 0 {
            return None;
        }
        let base = (lo & !BAR_FLAGS) as u64;
        if (lo >> BAR_TYPE_SHIFT) & 3 == BAR_TYPE_64 && n + 1 < BARS {
            Some(base | (self.read32(BAR0 + 4 * (n + 1)) as u64) << 32)
        } else {
            Some(base)
        }
    }
}

/// Configuration space for the library's capability walk and MSI-X
/// logic (`hypervisor::pci`).
impl hypervisor::pci::ConfigSpace for Function {
    fn read32(&self, offset: u8) -> u32 {
        Function::read32(*self, offset)
    }
    fn write32(&self, offset: u8, value: u32) {
        Function::write32(*self, offset, value)
    }
}

/// Finds the first function with `vendor` and one of `devices`, on bus 0
/// or any bus behind a bridge.
pub fn find(vendor: u16, devices: &[u16]) -> Option<Function> {
    let mut seen = [false; 256];
    find_on(0, vendor, devices, &mut seen)
}

fn find_on(bus: u8, vendor: u16, devices: &[u16], seen: &mut [bool; 256]) -> Option<Function> {
    // A bus is scanned once: bridges misnumbered into a loop end here.
    if core::mem::replace(&mut seen[bus as usize], true) {
        return None;
    }
    for device in 0..32 {
        for function in 0..8 {
            let f = Function { bus, device, function };
            let id = f.read32(VENDOR_DEVICE);
            if id & 0xffff == NO_VENDOR {
                if function == 0 {
                    break;
                }
                continue;
            }
            if id as u16 == vendor && devices.contains(&((id >> 16) as u16)) {
                return Some(f);
            }
            let header = f.read8(HEADER_TYPE);
            if header & !MULTI_FUNCTION == HEADER_BRIDGE {
                let secondary = f.read8(SECONDARY_BUS);
                // 0 is an unconfigured bridge (no firmware numbered it).
                if secondary != 0
                    && let Some(found) = find_on(secondary, vendor, devices, seen)
                {
                    return Some(found);
                }
            }
            // Only multi-function devices have functions beyond 0.
            if function == 0 && header & MULTI_FUNCTION == 0 {
                break;
            }
        }
    }
    None
}
