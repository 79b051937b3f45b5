//! The physical frame allocator: a bitmap over all usable RAM.
//!
//! One bit per 4 KiB frame (set = free), a rotating search hint, and an
//! exact count of free frames so that memory accounting is cheap. The
//! bitmap itself lives in memory the caller carves out at boot.

use super::{FRAME_SIZE, PhysAddr};
use core::ops::Range;

pub struct FrameAllocator<'a> {
    bits: &'a mut [u64],
    /// Physical address of the frame that bit 0 stands for.
    base: PhysAddr,
    free: usize,
    total: usize,
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// Number of `u64` words of bitmap needed to cover `[base, end)`.
    pub fn words_for(span: Range<PhysAddr>) -> usize {
        let frames = (span.end.saturating_sub(span.start) / FRAME_SIZE) as usize;
        frames.div_ceil(64)
    }

    /// An allocator covering `[base, base + 64 * bits.len() frames)`, with
    /// every frame taken until [`Self::add_free`] releases it.
    pub fn new(bits: &'a mut [u64], base: PhysAddr) -> Self {
        bits.fill(0);
        Self { bits, base: base & !(FRAME_SIZE - 1), free: 0, total: 0, hint: 0 }
    }

    /// Marks the whole frames inside `range` free (partial frames at the
    /// ends and anything outside the bitmap's span are ignored).
    pub fn add_free(&mut self, range: Range<PhysAddr>) {
        let start = range.start.div_ceil(FRAME_SIZE) * FRAME_SIZE;
        let end = range.end / FRAME_SIZE * FRAME_SIZE;
        let mut pa = start.max(self.base);
        while pa < end {
            let Some(i) = self.index(pa) else { break };
            if self.bits[i / 64] & (1 << (i % 64)) == 0 {
                self.bits[i / 64] |= 1 << (i % 64);
                self.free += 1;
                self.total += 1;
            }
            pa += FRAME_SIZE;
        }
    }

    /// Marks the frames overlapping `range` as taken (for memory that was
    /// handed out before the allocator existed).
    pub fn reserve(&mut self, range: Range<PhysAddr>) {
        let mut pa = range.start / FRAME_SIZE * FRAME_SIZE;
        while pa < range.end {
            if let Some(i) = self.index(pa)
                && self.bits[i / 64] & (1 << (i % 64)) != 0
            {
                self.bits[i / 64] &= !(1 << (i % 64));
                self.free -= 1;
                self.total -= 1;
            }
            pa += FRAME_SIZE;
        }
    }

    fn index(&self, pa: PhysAddr) -> Option<usize> {
        let i = (pa.checked_sub(self.base)? / FRAME_SIZE) as usize;
        (i < self.bits.len() * 64).then_some(i)
    }

    /// Takes a free frame (not zeroed).
    pub fn alloc(&mut self) -> Option<PhysAddr> {
        if self.free == 0 {
            return None;
        }
        let n = self.bits.len();
        for k in 0..n {
            let w = (self.hint + k) % n;
            let word = self.bits[w];
            if word != 0 {
                let bit = word.trailing_zeros() as usize;
                self.bits[w] &= !(1 << bit);
                self.free -= 1;
                self.hint = w;
                return Some(self.base + ((w * 64 + bit) as u64) * FRAME_SIZE);
            }
        }
        None
    }

    /// Takes a run of at least `frames` free frames, physically contiguous
    /// and 256 KiB-aligned: whole words of the bitmap (64 frames each),
    /// the first run of them all free, searched from the top of memory
    /// down (single frames are taken from the bottom up, so the two meet
    /// late). For the hypervisor's heap as it grows. Returns its first
    /// frame and the frames taken (a multiple of 64).
    pub fn alloc_run(&mut self, frames: usize) -> Option<(PhysAddr, usize)> {
        let words = frames.max(1).div_ceil(64);
        if self.free < words * 64 {
            return None;
        }
        let mut run = 0;
        for w in (0..self.bits.len()).rev() {
            run = if self.bits[w] == u64::MAX { run + 1 } else { 0 };
            if run == words {
                self.bits[w..w + words].fill(0);
                self.free -= words * 64;
                return Some((self.base + (w * 64) as u64 * FRAME_SIZE, words * 64));
            }
        }
        None
    }

    /// Returns a frame. Returns `false` (and changes nothing) for a frame
    /// that is outside the allocator or already free: a caller bug that must
    /// not corrupt the count.
    pub fn free(&mut self, pa: PhysAddr) -> bool {
        match self.index(pa) {
            Some(i) if pa.is_multiple_of(FRAME_SIZE) && self.bits[i / 64] & (1 << (i % 64)) == 0 => {
                self.bits[i / 64] |= 1 << (i % 64);
                self.free += 1;
                true
            }
            _ => false,
        }
    }

    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Frames this allocator manages (free or in use).
    pub fn total_frames(&self) -> usize {
        self.total
    }
}

/// Finds `size` bytes (frame-aligned) of RAM that overlap none of the
/// `reserved` ranges: the lowest such place at or above 1 MiB.
pub fn find_free(ram: &[Range<PhysAddr>], reserved: &[Range<PhysAddr>], size: u64) -> Option<PhysAddr> {
    let mut best: Option<PhysAddr> = None;
    for r in ram {
        let mut start = r.start.max(1 << 20).div_ceil(FRAME_SIZE) * FRAME_SIZE;
        'retry: loop {
            let end = start.checked_add(size)?;
            if end > r.end {
                break;
            }
            for x in reserved {
                if x.start < end && start < x.end {
                    start = x.end.div_ceil(FRAME_SIZE) * FRAME_SIZE;
                    continue 'retry;
                }
            }
            best = Some(best.map_or(start, |b| b.min(start)));
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_free_skips_reserved_ranges_and_low_memory() {
        let ram = [0..0x9_f000, 0x10_0000..0x800_0000];
        let reserved = [0x10_0000..0x40_0000, 0x40_0000..0x40_1000, 0x50_0000..0x60_0000];
        assert_eq!(find_free(&ram, &reserved, 0x1000), Some(0x40_1000));
        assert_eq!(find_free(&ram, &reserved, 0x10_0000), Some(0x60_0000));
        assert_eq!(find_free(&ram, &reserved, 0x1000_0000), None);
    }

    #[test]
    fn hands_out_only_free_frames_and_takes_them_back() {
        let mut bits = vec![0u64; FrameAllocator::words_for(0x10_0000..0x20_0000)];
        let mut fa = FrameAllocator::new(&mut bits, 0x10_0000);
        fa.add_free(0x10_0800..0x11_0000); // partial first frame is skipped
        assert_eq!(fa.free_frames(), 15);
        fa.reserve(0x10_3000..0x10_3001);
        assert_eq!(fa.free_frames(), 14);

        let mut got = Vec::new();
        while let Some(f) = fa.alloc() {
            assert!((0x10_1000..0x11_0000).contains(&f) && f != 0x10_3000);
            assert_eq!(f % FRAME_SIZE, 0);
            got.push(f);
        }
        assert_eq!(got.len(), 14);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 14, "a frame was handed out twice");
        assert_eq!(fa.free_frames(), 0);

        for f in &got {
            assert!(fa.free(*f));
        }
        assert_eq!(fa.free_frames(), 14);
        assert!(!fa.free(got[0]), "double free must be refused");
        assert!(!fa.free(0x10_3000 + 1), "unaligned free must be refused");
        assert!(!fa.free(0x9000_0000), "foreign frame must be refused");
        assert_eq!(fa.free_frames(), 14);
        assert_eq!(fa.total_frames(), 14);
    }

    /// Runs are whole free words, from the top down, and only those: a
    /// word with one frame taken breaks a run.
    #[test]
    fn runs_are_whole_free_words_from_the_top() {
        let mut bits = [0u64; 4];
        let mut f = FrameAllocator::new(&mut bits, 0);
        f.add_free(0..256 * FRAME_SIZE);
        let (first, n) = f.alloc_run(1).unwrap();
        assert_eq!((first, n, f.free_frames()), (192 * FRAME_SIZE, 64, 192));
        assert_eq!(f.alloc(), Some(0), "single frames from the bottom");
        assert_eq!(f.alloc_run(129), None, "word 0 has a frame taken: two free words are left");
        assert_eq!(f.alloc_run(65), Some((64 * FRAME_SIZE, 128)));
        assert_eq!((f.free_frames(), f.alloc_run(1)), (63, None), "63 free frames, no whole word");
        f.free(0);
        assert_eq!(f.alloc_run(64), Some((0, 64)));
        assert_eq!((f.free_frames(), f.alloc_run(1)), (0, None));
    }

    #[test]
    fn ranges_outside_the_span_are_ignored() {
        let mut bits = vec![0u64; 1];
        let mut fa = FrameAllocator::new(&mut bits, 0x1000);
        fa.add_free(0..u64::MAX / 2);
        assert_eq!(fa.free_frames(), 64);
    }
}
