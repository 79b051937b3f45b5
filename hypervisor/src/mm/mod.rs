//! Memory: physical frames, page tables, and checked access to guest memory.
//!
//! All of it is written against [`PhysMem`], so the host tests run it over a
//! simulated physical memory and the hypervisor over its direct map.

pub mod frames;
pub mod paging;
pub mod user;

/// A physical address.
pub type PhysAddr = u64;

/// Size of a frame and of every page the hypervisor maps for guests.
pub const FRAME_SIZE: u64 = 4096;

/// Access to physical memory, one 4 KiB frame at a time.
///
/// The hypervisor implements it over its direct map of all RAM; the host
/// tests implement it over a `Vec` of simulated frames.
pub trait PhysMem {
    /// A zero-filled frame, or `None` when memory is exhausted.
    fn alloc(&mut self) -> Option<PhysAddr>;
    /// Returns a frame to the free pool.
    fn free(&mut self, frame: PhysAddr);
    /// Reads entry `index` (0..512) of the page table in `table`.
    fn read_pte(&self, table: PhysAddr, index: usize) -> u64;
    /// Writes entry `index` (0..512) of the page table in `table`.
    fn write_pte(&mut self, table: PhysAddr, index: usize, value: u64);
    /// Copies `src` into `frame` at `offset` (`offset + src.len() <= 4096`).
    fn write(&mut self, frame: PhysAddr, offset: usize, src: &[u8]);
    /// Copies from `frame` at `offset` into `dst` (`offset + dst.len() <= 4096`).
    fn read(&self, frame: PhysAddr, offset: usize, dst: &mut [u8]);
    /// A new frame holding a copy of frame `src` (not zeroed first: the
    /// copy overwrites it whole), or `None` when memory is exhausted.
    fn alloc_copy(&mut self, src: PhysAddr) -> Option<PhysAddr> {
        let f = self.alloc()?;
        self.copy_frame(f, src);
        Some(f)
    }
    /// Copies frame `src` whole into frame `dst`.
    fn copy_frame(&mut self, dst: PhysAddr, src: PhysAddr) {
        let mut buf = [0u8; 512];
        for off in (0..FRAME_SIZE as usize).step_by(buf.len()) {
            self.read(src, off, &mut buf);
            self.write(dst, off, &buf);
        }
    }
}

#[cfg(test)]
pub mod testmem {
    //! A simulated physical memory for host tests.
    use super::*;

    pub struct TestMem {
        frames: Vec<Option<Box<[u8; 4096]>>>,
        pub limit: usize,
        pub live: usize,
    }

    impl TestMem {
        pub fn new(limit: usize) -> Self {
            // Frame 0 is never handed out, so 0 can mean "none".
            Self { frames: vec![None], limit, live: 0 }
        }
        fn frame(&self, pa: PhysAddr) -> &[u8; 4096] {
            self.frames[(pa / FRAME_SIZE) as usize].as_ref().expect("access to a freed frame")
        }
        fn frame_mut(&mut self, pa: PhysAddr) -> &mut [u8; 4096] {
            self.frames[(pa / FRAME_SIZE) as usize].as_mut().expect("access to a freed frame")
        }
    }

    impl PhysMem for TestMem {
        fn alloc(&mut self) -> Option<PhysAddr> {
            if self.live == self.limit {
                return None;
            }
            self.live += 1;
            if let Some(i) = self.frames.iter().skip(1).position(Option::is_none) {
                self.frames[i + 1] = Some(Box::new([0; 4096]));
                return Some((i as u64 + 1) * FRAME_SIZE);
            }
            self.frames.push(Some(Box::new([0; 4096])));
            Some((self.frames.len() as u64 - 1) * FRAME_SIZE)
        }
        fn free(&mut self, frame: PhysAddr) {
            assert!(self.frames[(frame / FRAME_SIZE) as usize].take().is_some(), "double free");
            self.live -= 1;
        }
        fn read_pte(&self, table: PhysAddr, index: usize) -> u64 {
            let b = &self.frame(table)[index * 8..index * 8 + 8];
            u64::from_le_bytes(b.try_into().unwrap())
        }
        fn write_pte(&mut self, table: PhysAddr, index: usize, value: u64) {
            self.frame_mut(table)[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
        }
        fn write(&mut self, frame: PhysAddr, offset: usize, src: &[u8]) {
            self.frame_mut(frame)[offset..offset + src.len()].copy_from_slice(src);
        }
        fn read(&self, frame: PhysAddr, offset: usize, dst: &mut [u8]) {
            dst.copy_from_slice(&self.frame(frame)[offset..offset + dst.len()]);
        }
    }
}
