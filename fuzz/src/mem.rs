//! A simulated physical memory for the targets (the hypervisor's own
//! `mm::testmem` is test-only), strict about misuse: a double free, an
//! access to a freed frame or an out-of-range offset panics.

use hypervisor::mm::{FRAME_SIZE, PhysAddr, PhysMem};

pub struct FuzzMem {
    frames: Vec<Option<Box<[u8; 4096]>>>,
    free: Vec<usize>,
    /// Most frames live at once; `alloc` fails beyond.
    pub limit: usize,
    /// Frames live now.
    pub live: usize,
}

impl FuzzMem {
    pub fn new(limit: usize) -> Self {
        // Frame 0 is never handed out, so 0 can mean "none".
        Self { frames: vec![None], free: Vec::new(), limit, live: 0 }
    }

    fn frame(&self, pa: PhysAddr) -> &[u8; 4096] {
        assert!(pa.is_multiple_of(FRAME_SIZE), "unaligned frame {pa:#x}");
        self.frames.get((pa / FRAME_SIZE) as usize).and_then(Option::as_deref).expect("access to a freed or unknown frame")
    }

    fn frame_mut(&mut self, pa: PhysAddr) -> &mut [u8; 4096] {
        assert!(pa.is_multiple_of(FRAME_SIZE), "unaligned frame {pa:#x}");
        self.frames.get_mut((pa / FRAME_SIZE) as usize).and_then(Option::as_deref_mut).expect("access to a freed or unknown frame")
    }
}

impl PhysMem for FuzzMem {
    fn alloc(&mut self) -> Option<PhysAddr> {
        if self.live >= self.limit {
            return None;
        }
        self.live += 1;
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.frames.push(None);
                self.frames.len() - 1
            }
        };
        self.frames[i] = Some(Box::new([0; 4096]));
        Some(i as u64 * FRAME_SIZE)
    }

    fn free(&mut self, frame: PhysAddr) {
        assert!(frame.is_multiple_of(FRAME_SIZE), "free of unaligned frame {frame:#x}");
        let i = (frame / FRAME_SIZE) as usize;
        assert!(self.frames.get_mut(i).and_then(Option::take).is_some(), "double free of frame {frame:#x}");
        self.free.push(i);
        self.live -= 1;
    }

    fn read_pte(&self, table: PhysAddr, index: usize) -> u64 {
        assert!(index < 512, "pte index {index}");
        let b = &self.frame(table)[index * 8..index * 8 + 8];
        u64::from_le_bytes(b.try_into().unwrap())
    }

    fn write_pte(&mut self, table: PhysAddr, index: usize, value: u64) {
        assert!(index < 512, "pte index {index}");
        self.frame_mut(table)[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, frame: PhysAddr, offset: usize, src: &[u8]) {
        assert!(offset + src.len() <= 4096, "write past a frame");
        self.frame_mut(frame)[offset..offset + src.len()].copy_from_slice(src);
    }

    fn read(&self, frame: PhysAddr, offset: usize, dst: &mut [u8]) {
        assert!(offset + dst.len() <= 4096, "read past a frame");
        dst.copy_from_slice(&self.frame(frame)[offset..offset + dst.len()]);
    }
}
