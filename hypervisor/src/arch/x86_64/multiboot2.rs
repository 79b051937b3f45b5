//! The Multiboot2 boot information GRUB hands over in `%ebx`, read out of
//! low memory and parsed by `hypervisor::bootinfo::multiboot2`.

use hypervisor::bootinfo::{self, BootError, BootInfo};

/// Reads the information at physical `pa`.
///
/// # Safety
/// Must run on the boot page tables, which identity-map the first 4 GiB,
/// where a Multiboot2 loader puts the information (its address is 32-bit).
pub unsafe fn read(pa: u32) -> Result<BootInfo, BootError> {
    let pa = pa as usize;
    // SAFETY: identity-mapped (caller); the first 8 bytes are the header.
    let head = unsafe { core::ptr::read_unaligned(pa as *const [u8; 8]) };
    let size = bootinfo::multiboot2_size(head)?;
    if pa + size > 1 << 32 {
        return Err(BootError::BadSize(size as u32));
    }
    // SAFETY: `size` bytes below 4 GiB, identity-mapped (checked above,
    // caller); the loader wrote them and nothing changes them while the
    // parser reads.
    let bytes = unsafe { core::slice::from_raw_parts(pa as *const u8, size) };
    bootinfo::multiboot2(bytes)
}
