//! MSI-X (PCI 3.0 §6.8.2) for any PCI device driver: the function's
//! table mapped uncached, entries programmed with a fixed, edge-triggered
//! message to one CPU's local APIC, and MSI-X turned on. The capability
//! walk, the table's layout and the message's encoding are the library's
//! (`hypervisor::pci`, host-tested); this file only maps and writes.
//!
//! A driver (virtio-net in `virtio_pci`; any other NIC the same way):
//! 1. turn memory decoding on in the command register, then
//!    [`Msix::setup`] (`None`: the function has no usable MSI-X; poll it);
//! 2. [`Msix::route`] each entry it uses to a vector (for the uplink
//!    `apic::UPLINK_VECTOR`, to CPU 0), then [`Msix::enable`];
//! 3. tell the device which entry each of its interrupt sources uses (a
//!    device-specific register: virtio's `queue_msix_vector`, an e1000e's
//!    IVAR) and unmask its receive cause, and
//!    [`super::net::set_uplink_interrupts`] once it takes them. CPU 0 then
//!    calls `UplinkDevice::receive` until `None` after each interrupt and
//!    then `UplinkDevice::rearm_interrupt`, where a device whose cause
//!    masks itself when it fires unmasks it.
//!
//! The stubs (`entry`) acknowledge a device vector's interrupt and note
//! it for the loop; nothing here runs at interrupt time.

use super::paging::map_device;
use super::pci::Function;
use hypervisor::pci::ConfigSpace;
use hypervisor::pci::msix::{self, Capability};

/// A function's MSI-X table, mapped.
pub struct Msix {
    function: Function,
    cap: Capability,
    /// The table's virtual address (uncached).
    table: u64,
}

impl Msix {
    /// Finds `f`'s MSI-X capability and maps its table (uncached, in the
    /// tables at `kernel_root`), with every entry masked and the function
    /// masked, MSI-X not yet on. `None` if `f` has no MSI-X capability or
    /// its table's BAR is not a memory BAR. Memory decoding must be on.
    pub fn setup(f: Function, kernel_root: u64) -> Option<Self> {
        let cap = Capability::find(&f)?;
        let base = f.bar(cap.table_bar).filter(|&b| b != 0)?;
        let control = cap.offset + msix::MESSAGE_CONTROL;
        f.write16(control, (f.read16(control) | msix::FUNCTION_MASK) & !msix::ENABLE);
        let table = map_device(kernel_root, base + u64::from(cap.table_offset), cap.table_bytes());
        let m = Self { function: f, cap, table };
        for i in 0..cap.entries {
            m.mask(i);
        }
        Some(m)
    }

    /// Entries in the table.
    pub fn entries(&self) -> u16 {
        self.cap.entries
    }

    fn write(&self, entry: u16, field: u64, value: u32) {
        debug_assert!(entry < self.cap.entries);
        let va = self.table + u64::from(entry) * msix::ENTRY_BYTES + field;
        // SAFETY: `va` is a 32-bit field of entry `entry` (< entries) of
        // the table `setup` mapped uncached for this function alone.
        unsafe { (va as *mut u32).write_volatile(value) }
    }

    /// Masks entry `entry` (out of range: nothing).
    pub fn mask(&self, entry: u16) {
        if entry < self.cap.entries {
            self.write(entry, msix::ENTRY_VECTOR_CONTROL, msix::VECTOR_MASKED);
        }
    }

    /// Programs entry `entry` to interrupt the CPU whose local APIC id is
    /// `apic_id` with `vector` (fixed, edge) and unmasks it; false if the
    /// table has no such entry.
    pub fn route(&self, entry: u16, apic_id: u8, vector: u8) -> bool {
        if entry >= self.cap.entries {
            return false;
        }
        let [lo, hi, data, control] = msix::x86_entry(apic_id, vector);
        // Masked while the message changes; unmasked last.
        self.mask(entry);
        self.write(entry, msix::ENTRY_ADDRESS_LOW, lo);
        self.write(entry, msix::ENTRY_ADDRESS_HIGH, hi);
        self.write(entry, msix::ENTRY_DATA, data);
        self.write(entry, msix::ENTRY_VECTOR_CONTROL, control);
        true
    }

    /// Turns MSI-X on (and the function mask off): unmasked entries fire.
    pub fn enable(&self) {
        self.cap.enable(&self.function);
    }

    /// Whether MSI-X is on and the function unmasked.
    pub fn is_enabled(&self) -> bool {
        self.cap.is_enabled(&self.function)
    }
}
