//! Helpers shared by the host tests.

use crate::image::{Image, Perms, Segment};

/// An image with one page of text (0x401000, starting `TEXT`) and one page
/// of data (0x402000, starting `DATA`).
pub fn two_page_image() -> Image {
    let mut elf = alloc::vec![0u8; 0x2000];
    elf[0..4].copy_from_slice(b"TEXT");
    elf[0x1000..0x1004].copy_from_slice(b"DATA");
    Image {
        elf,
        entry: 0x401000,
        segments: alloc::vec![
            Segment { vaddr: 0x401000, mem_size: 0x1000, file_offset: 0, file_size: 0x1000, perms: Perms::READ | Perms::EXECUTE },
            Segment { vaddr: 0x402000, mem_size: 0x1000, file_offset: 0x1000, file_size: 4, perms: Perms::READ | Perms::WRITE },
        ],
        tls: None,
        app_args: alloc::vec![],
        kernel_name: "k".into(),
    }
}

/// A deterministic xorshift64 generator, for mutation and model tests.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // an endless generator, not an Iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True about once in `n` calls.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n.max(1))
    }
}
