//! PCI configuration space through the legacy I/O ports (0xcf8/0xcfc), and
//! a scan of bus 0 (where QEMU's `pc` machine puts its devices).

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

    pub fn read32(self, offset: u8) -> u32 {
        // SAFETY: the configuration-space ports are the hypervisor's; a read
        // of an absent device returns all ones.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS).write(self.address(offset));
            Port::<u32>::new(CONFIG_DATA).read()
        }
    }

    pub fn write32(self, offset: u8, v: u32) {
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

/// Finds the first function on bus 0 with `vendor` and one of `devices`.
pub fn find(vendor: u16, devices: &[u16]) -> Option<Function> {
    for device in 0..32 {
        for function in 0..8 {
            let f = Function { bus: 0, device, function };
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
            // Only multi-function devices have functions beyond 0.
            if function == 0 && f.read8(HEADER_TYPE) & MULTI_FUNCTION == 0 {
                break;
            }
        }
    }
    None
}
