//! The ELF note that stamps a guest image with the ABI it was built for.
//!
//! Besides hermit-entry's `HERMIT` version note, every image built with our
//! libos carries a note named [`NAME`] of type [`TYPE`] whose 4-byte
//! descriptor is [`crate::ABI_VERSION`] (little endian). The hypervisor
//! refuses images without it or with another version.

/// Note name (without the terminating NUL).
pub const NAME: &[u8] = b"HVABI";
/// Note type.
pub const TYPE: u32 = 0x4856_0001;

/// hermit-entry's note name for its entry version.
pub const HERMIT_NAME: &[u8] = b"HERMIT";
/// hermit-entry's note type for its entry version (`NT_HERMIT_ENTRY_VERSION`).
pub const HERMIT_TYPE: u32 = 0x5a00;
/// The hermit-entry entry version this ABI speaks (hermit-entry 0.10).
pub const HERMIT_ENTRY_VERSION: u8 = 4;

/// The in-memory layout of the ABI note, for the libos to place in a
/// `.note.*` section.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(4))]
pub struct AbiNote {
    pub namesz: u32,
    pub descsz: u32,
    pub ty: u32,
    pub name: [u8; 8],
    pub desc: [u8; 4],
}

impl AbiNote {
    /// The note for this crate's [`crate::ABI_VERSION`].
    pub const fn current() -> Self {
        Self { namesz: NAME.len() as u32 + 1, descsz: 4, ty: TYPE, name: *b"HVABI\0\0\0", desc: crate::ABI_VERSION.to_le_bytes() }
    }
}
