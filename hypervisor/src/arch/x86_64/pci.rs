//! PCI configuration space through the legacy I/O ports (0xcf8/0xcfc), and
//! a scan of bus 0 (where QEMU's `pc` machine puts its devices).

use x86_64::instructions::port::Port;

/// A device's address on the bus.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Function {
    fn address(self, offset: u8) -> u32 {
        0x8000_0000 | (self.bus as u32) << 16 | (self.device as u32) << 11 | (self.function as u32) << 8 | (offset as u32 & 0xfc)
    }

    pub fn read32(self, offset: u8) -> u32 {
        // SAFETY: the configuration-space ports are the hypervisor's; a read
        // of an absent device returns all ones.
        unsafe {
            Port::<u32>::new(0xcf8).write(self.address(offset));
            Port::<u32>::new(0xcfc).read()
        }
    }

    pub fn write32(self, offset: u8, v: u32) {
        // SAFETY: as in read32; callers write only registers they own.
        unsafe {
            Port::<u32>::new(0xcf8).write(self.address(offset));
            Port::<u32>::new(0xcfc).write(v);
        }
    }

    pub fn read8(self, offset: u8) -> u8 {
        (self.read32(offset) >> ((offset & 3) * 8)) as u8
    }

    /// The physical address of memory BAR `n` (64-bit BARs combined).
    pub fn bar(self, n: u8) -> Option<u64> {
        let lo = self.read32(0x10 + 4 * n);
        if lo & 1 != 0 {
            return None; // an I/O BAR
        }
        let base = (lo & !0xf) as u64;
        if (lo >> 1) & 3 == 2 { Some(base | (self.read32(0x14 + 4 * n) as u64) << 32) } else { Some(base) }
    }
}

/// Finds the first function on bus 0 with `vendor` and one of `devices`.
pub fn find(vendor: u16, devices: &[u16]) -> Option<Function> {
    for device in 0..32 {
        for function in 0..8 {
            let f = Function { bus: 0, device, function };
            let id = f.read32(0);
            if id & 0xffff == 0xffff {
                if function == 0 {
                    break;
                }
                continue;
            }
            if id as u16 == vendor && devices.contains(&((id >> 16) as u16)) {
                return Some(f);
            }
            // Only multi-function devices have functions beyond 0.
            if function == 0 && f.read8(0x0e) & 0x80 == 0 {
                break;
            }
        }
    }
    None
}
