//! PCI logic that needs no port or register access, for any PCI device
//! driver: the capability list walk and the MSI-X capability (PCI Local
//! Bus 3.0 §6.7, §6.8.2). The arch layer reads configuration space
//! (`arch/x86_64/pci.rs` implements [`ConfigSpace`] over ports
//! 0xcf8/0xcfc) and writes the MSI-X table (`arch/x86_64/msix.rs`); the
//! host tests walk a fake configuration space.
//!
//! Rules: the device is not trusted: a capability list that loops or
//! points outside the configuration space ends the walk, and an MSI-X
//! capability whose table lies outside its BAR's reach is refused.

/// A function's 256-byte configuration space, read and written in
/// aligned 32-bit words.
pub trait ConfigSpace {
    /// The 32-bit word at `offset` (rounded down to a multiple of 4).
    fn read32(&self, offset: u8) -> u32;
    /// Writes the 32-bit word at `offset` (rounded down to a multiple of 4).
    fn write32(&self, offset: u8, value: u32);

    /// The byte at `offset`.
    fn read8(&self, offset: u8) -> u8 {
        (self.read32(offset) >> ((offset & 3) * 8)) as u8
    }
    /// The 16-bit word at `offset` (2-aligned).
    fn read16(&self, offset: u8) -> u16 {
        (self.read32(offset) >> ((offset & 2) * 8)) as u16
    }
    /// Writes the 16-bit word at `offset` (2-aligned), keeping the other
    /// half of its 32-bit word.
    fn write16(&self, offset: u8, value: u16) {
        let shift = (offset & 2) * 8;
        let word = self.read32(offset) & !(0xffff << shift);
        self.write32(offset, word | u32::from(value) << shift);
    }
}

/// Configuration-space registers the walk needs.
pub mod reg {
    /// Status register; its bit 4 says there is a capability list.
    pub const STATUS: u8 = 0x06;
    pub const STATUS_CAPABILITIES: u16 = 1 << 4;
    pub const CAPABILITIES_POINTER: u8 = 0x34;
    /// A capability's fields: its id and the next capability's offset.
    pub const CAP_ID: u8 = 0;
    pub const CAP_NEXT: u8 = 1;
}

/// Capability ids.
pub mod cap_id {
    pub const MSI: u8 = 0x05;
    /// Vendor-specific (virtio's structures).
    pub const VENDOR: u8 = 0x09;
    pub const MSIX: u8 = 0x11;
}

/// The first capability lies after the 64-byte header; 48 capabilities
/// of 4 bytes fill the rest, so a longer list loops.
const FIRST_CAP: u8 = 0x40;
const MAX_CAPS: usize = 48;

/// The offsets of the function's capabilities, with their ids, in list
/// order (at most 48; a pointer into the header ends the walk).
pub fn capabilities(cfg: &impl ConfigSpace) -> impl Iterator<Item = (u8, u8)> + '_ {
    let has = cfg.read16(reg::STATUS) & reg::STATUS_CAPABILITIES != 0;
    let mut ptr = if has { cfg.read8(reg::CAPABILITIES_POINTER) & !3 } else { 0 };
    core::iter::from_fn(move || {
        if ptr < FIRST_CAP {
            return None;
        }
        let at = ptr;
        ptr = cfg.read8(at + reg::CAP_NEXT) & !3;
        Some((at, cfg.read8(at + reg::CAP_ID)))
    })
    .take(MAX_CAPS)
}

/// The offset of the first capability with id `id`, if the function has one.
pub fn find_capability(cfg: &impl ConfigSpace, id: u8) -> Option<u8> {
    capabilities(cfg).find(|&(_, i)| i == id).map(|(at, _)| at)
}

/// MSI-X (PCI 3.0 §6.8.2): the capability's fields, the table's layout
/// and the message an x86 CPU's local APIC takes.
pub mod msix {
    use super::{ConfigSpace, cap_id, find_capability};

    /// The capability's fields, from its start.
    pub const MESSAGE_CONTROL: u8 = 2;
    pub const TABLE: u8 = 4;
    pub const PBA: u8 = 8;
    /// Message control: MSI-X on; every vector masked; table size - 1.
    pub const ENABLE: u16 = 1 << 15;
    pub const FUNCTION_MASK: u16 = 1 << 14;
    pub const TABLE_SIZE_MASK: u16 = 0x7ff;
    /// Table and PBA: the BAR indicator in the low 3 bits, the offset in
    /// the rest (8-byte aligned).
    pub const BIR_MASK: u32 = 0x7;

    /// One table entry: message address low and high, data, vector
    /// control, 32 bits each.
    pub const ENTRY_BYTES: u64 = 16;
    pub const ENTRY_ADDRESS_LOW: u64 = 0;
    pub const ENTRY_ADDRESS_HIGH: u64 = 4;
    pub const ENTRY_DATA: u64 = 8;
    pub const ENTRY_VECTOR_CONTROL: u64 = 12;
    /// Vector control: this entry is masked.
    pub const VECTOR_MASKED: u32 = 1;

    /// The x86 message address (Intel SDM vol. 3 §11.11.1): 0xfee in the
    /// top 12 bits, the destination APIC id in bits 19:12, physical
    /// destination mode, no redirection hint.
    pub const X86_ADDRESS_BASE: u32 = 0xfee0_0000;
    pub const X86_DEST_SHIFT: u32 = 12;

    /// Where a function's MSI-X table is and how many entries it has.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Capability {
        /// The capability's offset in configuration space.
        pub offset: u8,
        /// Entries in the table (1..=2048).
        pub entries: u16,
        /// The BAR the table is in, and its offset there.
        pub table_bar: u8,
        pub table_offset: u32,
        /// The same for the pending-bit array.
        pub pba_bar: u8,
        pub pba_offset: u32,
    }

    impl Capability {
        /// The function's MSI-X capability, if it has a valid one.
        pub fn find(cfg: &impl ConfigSpace) -> Option<Self> {
            let offset = find_capability(cfg, cap_id::MSIX)?;
            let control = cfg.read16(offset + MESSAGE_CONTROL);
            let table = cfg.read32(offset + TABLE);
            let pba = cfg.read32(offset + PBA);
            let c = Self {
                offset,
                entries: (control & TABLE_SIZE_MASK) + 1,
                table_bar: (table & BIR_MASK) as u8,
                table_offset: table & !BIR_MASK,
                pba_bar: (pba & BIR_MASK) as u8,
                pba_offset: pba & !BIR_MASK,
            };
            // BIRs 6 and 7 are reserved.
            (c.table_bar < 6 && c.pba_bar < 6).then_some(c)
        }

        /// The table's size in bytes.
        pub fn table_bytes(&self) -> u64 {
            u64::from(self.entries) * ENTRY_BYTES
        }

        /// The message control word with MSI-X on and no function mask
        /// (`control` is its value now).
        pub fn enabled_control(control: u16) -> u16 {
            (control | ENABLE) & !FUNCTION_MASK
        }

        /// Turns MSI-X on in the message control word, function mask off
        /// (program and unmask the entries first or after: an entry fires
        /// only while it and the function are unmasked).
        pub fn enable(&self, cfg: &impl ConfigSpace) {
            let at = self.offset + MESSAGE_CONTROL;
            cfg.write16(at, Self::enabled_control(cfg.read16(at)));
        }

        /// Whether MSI-X is on (and not masked as a whole) now.
        pub fn is_enabled(&self, cfg: &impl ConfigSpace) -> bool {
            cfg.read16(self.offset + MESSAGE_CONTROL) & (ENABLE | FUNCTION_MASK) == ENABLE
        }
    }

    /// A table entry's four words (address low, address high, data,
    /// vector control) for a fixed, edge-triggered interrupt with
    /// `vector` to the local APIC `apic_id`, unmasked.
    pub fn x86_entry(apic_id: u8, vector: u8) -> [u32; 4] {
        [X86_ADDRESS_BASE | u32::from(apic_id) << X86_DEST_SHIFT, 0, u32::from(vector), 0]
    }
}

#[cfg(test)]
mod tests {
    use super::msix::{Capability, x86_entry};
    use super::*;
    use core::cell::RefCell;

    /// A configuration space in memory.
    struct Fake(RefCell<[u8; 256]>);

    impl ConfigSpace for Fake {
        fn read32(&self, offset: u8) -> u32 {
            let o = (offset & !3) as usize;
            u32::from_le_bytes(self.0.borrow()[o..o + 4].try_into().unwrap())
        }
        fn write32(&self, offset: u8, value: u32) {
            let o = (offset & !3) as usize;
            self.0.borrow_mut()[o..o + 4].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// A function with a capability list: (offset, id, extra bytes).
    fn fake(caps: &[(u8, u8, &[u8])]) -> Fake {
        let mut c = [0u8; 256];
        c[reg::STATUS as usize] = reg::STATUS_CAPABILITIES as u8;
        c[reg::CAPABILITIES_POINTER as usize] = caps.first().map_or(0, |c| c.0);
        for (i, &(at, id, extra)) in caps.iter().enumerate() {
            c[at as usize] = id;
            c[at as usize + 1] = caps.get(i + 1).map_or(0, |c| c.0);
            c[at as usize + 2..at as usize + 2 + extra.len()].copy_from_slice(extra);
        }
        Fake(RefCell::new(c))
    }

    /// QEMU's virtio-net-pci: vendor capabilities, then MSI-X with 3
    /// entries in BAR 1 at 0 and its PBA at 0x800.
    fn virtio_like() -> Fake {
        let msix = [2, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0];
        fake(&[(0x98, cap_id::MSIX, &msix), (0x84, cap_id::VENDOR, &[]), (0x70, cap_id::VENDOR, &[]), (0x40, cap_id::VENDOR, &[])])
    }

    #[test]
    fn the_walk_finds_every_capability_in_list_order() {
        let f = virtio_like();
        let got: Vec<_> = capabilities(&f).collect();
        assert_eq!(got, [(0x98, 0x11), (0x84, 9), (0x70, 9), (0x40, 9)]);
        assert_eq!(find_capability(&f, cap_id::MSIX), Some(0x98));
        assert_eq!(find_capability(&f, cap_id::MSI), None);
    }

    #[test]
    fn a_looping_or_stray_list_ends() {
        // Points back at itself: the walk stops after 48.
        let f = fake(&[(0x40, cap_id::VENDOR, &[])]);
        f.0.borrow_mut()[0x41] = 0x40;
        assert_eq!(capabilities(&f).count(), 48);
        assert_eq!(find_capability(&f, cap_id::MSIX), None);
        // Into the header: ends there.
        let f = fake(&[(0x50, cap_id::VENDOR, &[])]);
        f.0.borrow_mut()[0x51] = 0x10;
        assert_eq!(capabilities(&f).count(), 1);
        // No capability list at all, whatever the pointer says.
        let f = virtio_like();
        f.0.borrow_mut()[reg::STATUS as usize] = 0;
        assert_eq!(capabilities(&f).count(), 0);
    }

    #[test]
    fn the_msix_capability_is_read_and_enabled() {
        let f = virtio_like();
        let c = Capability::find(&f).unwrap();
        assert_eq!(c, Capability { offset: 0x98, entries: 3, table_bar: 1, table_offset: 0, pba_bar: 1, pba_offset: 0x800 });
        assert_eq!(c.table_bytes(), 48);
        // Function mask on, as firmware may leave it: enabling clears it.
        f.write16(0x98 + msix::MESSAGE_CONTROL, 2 | msix::FUNCTION_MASK);
        assert!(!c.is_enabled(&f));
        c.enable(&f);
        assert!(c.is_enabled(&f));
        assert_eq!(f.read16(0x98 + msix::MESSAGE_CONTROL), 2 | msix::ENABLE);
        // The neighbouring bytes are untouched.
        assert_eq!(f.read8(0x98), cap_id::MSIX);
        assert_eq!(f.read8(0x99), 0x84);
        // A reserved BAR indicator is refused.
        f.write32(0x98 + msix::TABLE, 7);
        assert_eq!(Capability::find(&f), None);
    }

    #[test]
    fn an_entry_is_a_fixed_edge_message_to_one_apic() {
        assert_eq!(x86_entry(0, 0x40), [0xfee0_0000, 0, 0x40, 0]);
        assert_eq!(x86_entry(3, 0x41), [0xfee0_3000, 0, 0x41, 0]);
        assert_eq!(x86_entry(0xff, 0xfe), [0xfeef_f000, 0, 0xfe, 0]);
        // Data: delivery mode fixed (000), edge (bit 15 clear), assert.
        assert_eq!(x86_entry(1, 0x40)[2] & 0xff00, 0);
        assert_eq!(Capability::enabled_control(0x0002), 0x8002);
        assert_eq!(Capability::enabled_control(0x4002), 0x8002);
    }
}
