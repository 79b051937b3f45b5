//! The Intel 82574L (QEMU's `-device e1000e`) on PCI, for the uplink's
//! driver (`hypervisor::net::e1000e`): finds it on bus 0, turns on memory
//! decoding and bus mastering, maps its register window (BAR0, 128 KiB)
//! uncached, and reaches the registers with volatile 32-bit accesses; its
//! receive interrupts go through MSI-X to CPU 0 where it has MSI-X. DMA
//! memory is the direct map's ([`DirectMap`]): the device sees physical
//! addresses.

use super::msix::Msix;
use super::paging::{DirectMap, map_device};
use super::{apic, pci};
use hypervisor::net::e1000e::{E1000E_DEVICES, E1000e, E1000eError, INTEL_VENDOR, Registers};

/// Bytes of BAR0, the register window.
const BAR0_BYTES: u64 = 128 * 1024;

/// The 82574L's register window, as a virtual address.
pub struct Mmio {
    base: u64,
    mem: DirectMap,
}

/// Finds and starts the first 82574L on bus 0, if there is one.
pub fn probe(kernel_root: u64) -> Result<Option<E1000e<Mmio>>, E1000eError> {
    let Some(f) = pci::find(INTEL_VENDOR, &E1000E_DEVICES) else { return Ok(None) };
    let Some(bar) = f.bar(0).filter(|&b| b != 0) else { return Err(E1000eError::NoRegisters) };
    f.write32(pci::COMMAND, f.read32(pci::COMMAND) | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER);
    let base = map_device(kernel_root, bar, BAR0_BYTES);
    let mut up = E1000e::start(Mmio { base, mem: DirectMap })?;
    // Receive interrupts through MSI-X entry 0 to CPU 0, where the
    // function has MSI-X (the 82574L does); else CPU 0 polls it.
    const RX_ENTRY: u16 = 0;
    match Msix::setup(f, kernel_root) {
        Some(m) if m.route(RX_ENTRY, apic::id_of(0) as u8, apic::UPLINK_VECTOR) => {
            m.enable();
            up.route_rx_to_msix(RX_ENTRY as u8);
            super::net::set_uplink_interrupts();
            crate::println!(
                "[hv] uplink interrupts: MSI-X entry {RX_ENTRY} of {} (receive), vector {:#x} to CPU 0",
                m.entries(),
                apic::UPLINK_VECTOR
            );
        }
        _ => crate::println!("[hv] uplink interrupts: none, no usable MSI-X; CPU 0 polls it"),
    }
    Ok(Some(up))
}

impl Registers for Mmio {
    type Dma = DirectMap;

    fn read32(&mut self, offset: u32) -> u32 {
        assert!(u64::from(offset) + 4 <= BAR0_BYTES && offset.is_multiple_of(4));
        // SAFETY: `base` is BAR0's window of BAR0_BYTES, mapped uncached by
        // `map_device`; the offset is an aligned register inside it
        // (checked above).
        unsafe { ((self.base + u64::from(offset)) as *const u32).read_volatile() }
    }

    fn write32(&mut self, offset: u32, value: u32) {
        assert!(u64::from(offset) + 4 <= BAR0_BYTES && offset.is_multiple_of(4));
        // SAFETY: as in `read32`.
        unsafe { ((self.base + u64::from(offset)) as *mut u32).write_volatile(value) }
    }

    fn dma(&mut self) -> &mut DirectMap {
        &mut self.mem
    }
}
