//! The driver side of a virtio 1.0 split virtqueue, over [`PhysMem`].
//!
//! Descriptor table, available ring and used ring each sit in a page of
//! their own (a queue of at most [`MAX_SIZE`] entries fits). Buffers are
//! whole pages handed to the device by physical address. Everything read
//! back from the device (used ring entries) is checked before it is used:
//! a descriptor id out of range or a length beyond the buffer is refused.

use crate::mm::{FRAME_SIZE, PhysAddr, PhysMem};
use alloc::vec::Vec;

/// Bytes of each descriptor's buffer: one page.
pub const BUFFER_BYTES: u32 = FRAME_SIZE as u32;

/// Largest queue we set up (all three parts then fit in one page each).
pub const MAX_SIZE: u16 = 256;

/// The split virtqueue's memory layout (virtio 1.0 §2.4), shared with
/// the device.
pub mod layout {
    use core::ops::Range;
    /// A descriptor: buffer address, length, flags, next.
    pub const DESC_BYTES: usize = 16;
    pub const DESC_ADDR: Range<usize> = 0..8;
    pub const DESC_LEN: Range<usize> = 8..12;
    pub const DESC_FLAGS: Range<usize> = 12..14;
    /// Descriptor flag: the device writes the buffer (else it reads it).
    pub const DESC_F_WRITE: u16 = 2;
    /// The available and used rings: flags (u16), then the index (u16),
    /// then the entries.
    pub const RING_FLAGS: usize = 0;
    pub const RING_IDX: usize = 2;
    /// Available ring flag: the device need not interrupt when it uses a
    /// buffer (without VIRTIO_F_EVENT_IDX, which we do not negotiate).
    pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
    pub const RING_ENTRIES: usize = 4;
    /// An available entry: a descriptor id (u16).
    pub const AVAIL_ENTRY_BYTES: usize = 2;
    /// A used entry: a descriptor id (u32) and the bytes written (u32).
    pub const USED_ENTRY_BYTES: usize = 8;
}

use layout::*;

/// A split virtqueue whose every descriptor owns one buffer page.
pub struct Virtq {
    pub size: u16,
    pub desc: PhysAddr,
    pub avail: PhysAddr,
    pub used: PhysAddr,
    /// Buffer page of each descriptor.
    buffers: Vec<PhysAddr>,
    /// Descriptors not handed to the device.
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
}

/// A completed buffer: the descriptor and the bytes the device wrote (RX)
/// or took (TX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u16,
    pub len: u32,
}

/// The device broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtqError {
    /// A used entry names a descriptor out of range or not the device's.
    BadUsedId(u32),
    /// A used entry for descriptor `id` claims more bytes than its buffer
    /// (the descriptor is the driver's again).
    BadUsedLen { id: u16, len: u32 },
}

impl Virtq {
    /// Allocates a queue of `size` entries (a power of two, at most
    /// [`MAX_SIZE`]) with one buffer page per descriptor.
    pub fn new(mem: &mut impl PhysMem, size: u16) -> Option<Self> {
        let size = size.clamp(1, MAX_SIZE);
        if !size.is_power_of_two() {
            return None;
        }
        let desc = mem.alloc()?;
        let avail = mem.alloc()?;
        let used = mem.alloc()?;
        let mut buffers = Vec::with_capacity(size as usize);
        for _ in 0..size {
            buffers.push(mem.alloc()?);
        }
        for (i, &b) in buffers.iter().enumerate() {
            write_desc(mem, desc, i as u16, b, 0, 0);
        }
        Some(Self { size, desc, avail, used, buffers, free: (0..size).rev().collect(), avail_idx: 0, last_used: 0 })
    }

    /// The buffer page of descriptor `id`.
    pub fn buffer(&self, id: u16) -> PhysAddr {
        self.buffers[id as usize]
    }

    /// Descriptors free for [`Self::take`].
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free descriptor (its buffer is then the caller's to fill).
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Hands descriptor `id` to the device: `len` bytes of its buffer, which
    /// the device writes (`device_writes`, RX) or reads (TX).
    pub fn submit(&mut self, mem: &mut impl PhysMem, id: u16, len: u32, device_writes: bool) {
        let flags = if device_writes { DESC_F_WRITE } else { 0 };
        write_desc(mem, self.desc, id, self.buffers[id as usize], len.min(BUFFER_BYTES), flags);
        let slot = (self.avail_idx % self.size) as usize;
        mem.write(self.avail, RING_ENTRIES + AVAIL_ENTRY_BYTES * slot, &id.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The device must see the ring entry before the index (x86 keeps
        // stores in order; this stops the compiler reordering them).
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        mem.write(self.avail, RING_IDX, &self.avail_idx.to_le_bytes());
    }

    /// Asks the device to interrupt, or not, when it finishes with a
    /// buffer of this queue (a hint: it may interrupt anyway).
    pub fn set_interrupts(&mut self, mem: &mut impl PhysMem, on: bool) {
        let flags = if on { 0 } else { AVAIL_F_NO_INTERRUPT };
        mem.write(self.avail, RING_FLAGS, &flags.to_le_bytes());
    }

    /// How many buffers the device has finished with and not yet popped
    /// (at most the queue's size: a device that claims more is lying).
    pub fn used_count(&self, mem: &mut impl PhysMem) -> u16 {
        let mut idx = [0u8; 2];
        mem.read(self.used, RING_IDX, &mut idx);
        u16::from_le_bytes(idx).wrapping_sub(self.last_used).min(self.size)
    }

    /// The next buffer the device finished with, checked.
    pub fn pop_used(&mut self, mem: &mut impl PhysMem) -> Result<Option<Used>, VirtqError> {
        let mut idx = [0u8; 2];
        mem.read(self.used, RING_IDX, &mut idx);
        if u16::from_le_bytes(idx) == self.last_used {
            return Ok(None);
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let slot = (self.last_used % self.size) as usize;
        let mut e = [0u8; USED_ENTRY_BYTES];
        mem.read(self.used, RING_ENTRIES + USED_ENTRY_BYTES * slot, &mut e);
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if id >= self.size as u32 || self.free.contains(&(id as u16)) {
            return Err(VirtqError::BadUsedId(id));
        }
        if len > BUFFER_BYTES {
            return Err(VirtqError::BadUsedLen { id: id as u16, len });
        }
        Ok(Some(Used { id: id as u16, len }))
    }

    /// Returns a descriptor to the free list.
    pub fn give_back(&mut self, id: u16) {
        if (id as usize) < self.buffers.len() && !self.free.contains(&id) {
            self.free.push(id);
        }
    }
}

fn write_desc(mem: &mut impl PhysMem, table: PhysAddr, id: u16, addr: PhysAddr, len: u32, flags: u16) {
    let mut d = [0u8; DESC_BYTES];
    d[DESC_ADDR].copy_from_slice(&addr.to_le_bytes());
    d[DESC_LEN].copy_from_slice(&len.to_le_bytes());
    d[DESC_FLAGS].copy_from_slice(&flags.to_le_bytes());
    mem.write(table, DESC_BYTES * id as usize, &d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testmem::TestMem;

    fn rd16(mem: &TestMem, f: PhysAddr, off: usize) -> u16 {
        let mut b = [0u8; 2];
        mem.read(f, off, &mut b);
        u16::from_le_bytes(b)
    }

    /// Plays the device: takes every available descriptor and marks it used
    /// with `len`.
    fn device(mem: &mut TestMem, q: &Virtq, seen: &mut u16, used_idx: &mut u16, len: u32) -> Vec<(u16, u64, u32, u16)> {
        let mut out = Vec::new();
        let avail = rd16(mem, q.avail, 2);
        while *seen != avail {
            let id = rd16(mem, q.avail, 4 + 2 * (*seen % q.size) as usize);
            let mut d = [0u8; 16];
            mem.read(q.desc, 16 * id as usize, &mut d);
            out.push((
                id,
                u64::from_le_bytes(d[0..8].try_into().unwrap()),
                u32::from_le_bytes(d[8..12].try_into().unwrap()),
                u16::from_le_bytes(d[12..14].try_into().unwrap()),
            ));
            let slot = (*used_idx % q.size) as usize;
            let mut e = [0u8; 8];
            e[0..4].copy_from_slice(&(id as u32).to_le_bytes());
            e[4..8].copy_from_slice(&len.to_le_bytes());
            mem.write(q.used, 4 + 8 * slot, &e);
            *used_idx = used_idx.wrapping_add(1);
            mem.write(q.used, 2, &used_idx.to_le_bytes());
            *seen = seen.wrapping_add(1);
        }
        out
    }

    #[test]
    fn buffers_go_round_through_many_wraps() {
        let mut mem = TestMem::new(100);
        let mut q = Virtq::new(&mut mem, 8).unwrap();
        let (mut seen, mut used_idx) = (0u16, 0u16);
        for round in 0..20_000u32 {
            let id = q.take().expect("a free descriptor");
            q.submit(&mut mem, id, 100 + round % 1000, round % 2 == 0);
            let got = device(&mut mem, &q, &mut seen, &mut used_idx, 60);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, id);
            assert_eq!(got[0].1, q.buffer(id));
            assert_eq!(got[0].3, if round % 2 == 0 { DESC_F_WRITE } else { 0 });
            let u = q.pop_used(&mut mem).unwrap().unwrap();
            assert_eq!(u, Used { id, len: 60 });
            q.give_back(u.id);
            assert_eq!(q.pop_used(&mut mem), Ok(None));
        }
    }

    #[test]
    fn a_lying_device_is_caught() {
        let mut mem = TestMem::new(100);
        let mut q = Virtq::new(&mut mem, 8).unwrap();
        let id = q.take().unwrap();
        q.submit(&mut mem, id, 64, true);
        // Used entry naming a descriptor that is out of range.
        mem.write(q.used, 4, &[99, 0, 0, 0, 60, 0, 0, 0]);
        mem.write(q.used, 2, &1u16.to_le_bytes());
        assert_eq!(q.pop_used(&mut mem), Err(VirtqError::BadUsedId(99)));
        // Used entry naming a descriptor the device does not hold.
        mem.write(q.used, 12, &[7, 0, 0, 0, 60, 0, 0, 0]);
        mem.write(q.used, 2, &2u16.to_le_bytes());
        assert_eq!(q.pop_used(&mut mem), Err(VirtqError::BadUsedId(7)));
        // A length beyond the buffer.
        mem.write(q.used, 20, &[id as u8, 0, 0, 0, 1, 0x10, 0, 0]);
        mem.write(q.used, 2, &3u16.to_le_bytes());
        assert_eq!(q.pop_used(&mut mem), Err(VirtqError::BadUsedLen { id, len: 0x1001 }));
        assert!(Virtq::new(&mut mem, 6).is_none(), "size must be a power of two");
    }
}
