//! The driver side of a virtio 1.0 split virtqueue, over [`PhysMem`].
//!
//! Descriptor table, available ring and used ring each sit in a page of
//! their own (a queue of at most [`MAX_SIZE`] entries fits, with the
//! event index after each ring). Buffers are whole pages handed to the
//! device by physical address. Everything read back from the device (used
//! ring entries) is checked before it is used: a descriptor id out of
//! range or a length beyond the buffer is refused.
//!
//! Notifications (virtio 1.x §2.7.7, §2.7.10): without
//! `VIRTIO_F_EVENT_IDX` the driver notifies once per batch it published
//! ([`Virtq::kick_prepare`]) and asks for interrupts, or not, with the
//! available ring's flag. With it ([`Virtq::use_event_idx`]) the driver
//! notifies only when the device's `avail_event` lies among the entries
//! just published ([`need_event`]), and its `used_event` asks for an
//! interrupt at the next used entry after the last it took, or (no
//! interrupts wanted) one a whole wrap of the index away; a
//! [`Virtq::pop_used`] that finds the ring empty sets it and looks again,
//! so a used entry never waits for an interrupt that will not come.

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
    /// buffer (without VIRTIO_F_EVENT_IDX; with it the flags are 0).
    pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
    pub const RING_ENTRIES: usize = 4;
    /// An available entry: a descriptor id (u16).
    pub const AVAIL_ENTRY_BYTES: usize = 2;
    /// A used entry: a descriptor id (u32) and the bytes written (u32).
    pub const USED_ENTRY_BYTES: usize = 8;

    /// With VIRTIO_F_EVENT_IDX: the driver's `used_event` (u16), after
    /// the available ring's `size` entries: the device interrupts once the
    /// used index passes it.
    pub const fn used_event(size: u16) -> usize {
        RING_ENTRIES + AVAIL_ENTRY_BYTES * size as usize
    }
    /// With VIRTIO_F_EVENT_IDX: the device's `avail_event` (u16), after
    /// the used ring's `size` entries: the driver notifies once the
    /// available index passes it.
    pub const fn avail_event(size: u16) -> usize {
        RING_ENTRIES + USED_ENTRY_BYTES * size as usize
    }
}

// Each part, event index included, fits in its page at the largest size
// (and the pages' alignment is beyond the 16, 2 and 4 bytes §2.6 asks).
const _: () = assert!(DESC_BYTES * MAX_SIZE as usize <= FRAME_SIZE as usize);
const _: () = assert!(layout::used_event(MAX_SIZE) + 2 <= FRAME_SIZE as usize);
const _: () = assert!(layout::avail_event(MAX_SIZE) + 2 <= FRAME_SIZE as usize);

/// Whether the side that asked to be told at index `event` must be, now
/// that the index moved from `old` to `new` (virtio 1.x §2.7.10,
/// `vring_need_event`): whether `event` is one of `old..new`, in wrapping
/// u16 arithmetic.
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
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
    /// The available index when the device was last notified, or found
    /// not to need it ([`Self::kick_prepare`]).
    kicked_idx: u16,
    /// VIRTIO_F_EVENT_IDX was negotiated: the event indexes rule.
    event_idx: bool,
    /// Whether the driver asked for interrupts ([`Self::set_interrupts`]).
    interrupts: bool,
    /// The `used_event` last written (with `event_idx`).
    used_event: u16,
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
        Some(Self {
            size,
            desc,
            avail,
            used,
            buffers,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            kicked_idx: 0,
            event_idx: false,
            interrupts: true,
            used_event: 0,
        })
    }

    /// VIRTIO_F_EVENT_IDX was negotiated: from now on notifications go by
    /// the event indexes (call before [`Self::set_interrupts`], which
    /// writes `used_event`).
    pub fn use_event_idx(&mut self) {
        self.event_idx = true;
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

    /// Whether the device must be notified of the entries [`Self::submit`]
    /// published since the last call (call once per batch; the caller then
    /// notifies). Without the event index: whenever there are some. With
    /// it: only if the device's `avail_event`, read once after a full
    /// fence (the device may be stopping at the old index as we publish;
    /// as Linux's `virtqueue_kick_prepare`), is among them.
    pub fn kick_prepare(&mut self, mem: &mut impl PhysMem) -> bool {
        let (old, new) = (self.kicked_idx, self.avail_idx);
        if old == new {
            return false;
        }
        self.kicked_idx = new;
        // The index store before the device's event index is looked at.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if !self.event_idx {
            return true;
        }
        let mut event = [0u8; 2];
        mem.read(self.used, avail_event(self.size), &mut event);
        need_event(u16::from_le_bytes(event), new, old)
    }

    /// Asks the device to interrupt, or not, when it finishes with a
    /// buffer of this queue (a hint: it may interrupt anyway).
    pub fn set_interrupts(&mut self, mem: &mut impl PhysMem, on: bool) {
        self.interrupts = on;
        if self.event_idx {
            // §2.7.10: the flags are 0; `used_event` says it instead.
            mem.write(self.avail, RING_FLAGS, &0u16.to_le_bytes());
            self.used_event = self.wanted_used_event();
            mem.write(self.avail, used_event(self.size), &self.used_event.to_le_bytes());
        } else {
            let flags = if on { 0 } else { AVAIL_F_NO_INTERRUPT };
            mem.write(self.avail, RING_FLAGS, &flags.to_le_bytes());
        }
    }

    /// The `used_event` for what the driver wants: an interrupt at the
    /// next used entry after the last one taken, or none until the used
    /// index runs a whole wrap past it (the device holds at most `size`
    /// buffers, and this moves on with every `pop_used` that empties the
    /// ring, so it never gets there).
    fn wanted_used_event(&self) -> u16 {
        if self.interrupts { self.last_used } else { self.last_used.wrapping_sub(1) }
    }

    /// With the event index, on finding the used ring empty: moves
    /// `used_event` on to what the driver wants, if it is not there yet,
    /// and, when interrupts are wanted, looks at the used index again after
    /// a full fence: an entry the device wrote before it could see the new
    /// `used_event` would not interrupt. Returns whether one is there.
    fn rearm(&mut self, mem: &mut impl PhysMem) -> bool {
        let want = self.wanted_used_event();
        if !self.event_idx || want == self.used_event {
            return false;
        }
        self.used_event = want;
        mem.write(self.avail, used_event(self.size), &want.to_le_bytes());
        if !self.interrupts {
            return false;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.used_idx(mem) != self.last_used
    }

    /// With the event index and interrupts wanted: asks for one at the
    /// device's next used entry, wherever its used index is now (read
    /// once), even past entries the driver has not taken (it gave up on
    /// them: a lying device); without, nothing to do.
    pub fn interrupt_at_next(&mut self, mem: &mut impl PhysMem) {
        if self.event_idx && self.interrupts {
            self.used_event = self.used_idx(mem);
            mem.write(self.avail, used_event(self.size), &self.used_event.to_le_bytes());
        }
    }

    /// The device's used index (read once).
    fn used_idx(&self, mem: &mut impl PhysMem) -> u16 {
        let mut idx = [0u8; 2];
        mem.read(self.used, RING_IDX, &mut idx);
        u16::from_le_bytes(idx)
    }

    /// How many buffers the device has finished with and not yet popped
    /// (at most the queue's size: a device that claims more is lying).
    pub fn used_count(&self, mem: &mut impl PhysMem) -> u16 {
        self.used_idx(mem).wrapping_sub(self.last_used).min(self.size)
    }

    /// The next buffer the device finished with, checked. With the event
    /// index, `None` comes only after `used_event` was set (see
    /// [`Self::rearm`]).
    pub fn pop_used(&mut self, mem: &mut impl PhysMem) -> Result<Option<Used>, VirtqError> {
        if self.used_idx(mem) == self.last_used && !self.rearm(mem) {
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
    fn need_event_is_whether_the_event_is_among_the_new_entries_in_wrapping_u16() {
        // Index moved 10 -> 15: entries 10..15 are new.
        assert!(need_event(10, 15, 10) && need_event(14, 15, 10));
        assert!(!need_event(15, 15, 10) && !need_event(9, 15, 10) && !need_event(200, 15, 10));
        // Across the wrap: 65530 -> 4 is 65530..=65535, 0..4.
        for e in [65530, 65535, 0, 3] {
            assert!(need_event(e, 4, 65530), "{e}");
        }
        for e in [65529, 4, 5, 30000] {
            assert!(!need_event(e, 4, 65530), "{e}");
        }
        // Nothing new: never; all but one index new: all but that one.
        assert!(!need_event(7, 7, 7));
        assert!((0..=u16::MAX).all(|e| need_event(e, 9, 10) == (e != 9)));
        // Against the event's distance past `old`, counted without
        // wrapping, over a spread of events, starts and lengths.
        for old in [0u16, 1, 100, 32767, 65000, 65535] {
            for n in [0u16, 1, 2, 17, 256, 40000] {
                let new = old.wrapping_add(n);
                for e in (0..=u16::MAX).step_by(7).chain([old, new, old.wrapping_sub(1), new.wrapping_sub(1)]) {
                    let among = (u32::from(e) + 65536 - u32::from(old)) % 65536 < u32::from(n);
                    assert_eq!(need_event(e, new, old), among, "event {e}, {old} -> {new}");
                }
            }
        }
    }

    #[test]
    fn the_event_indexes_sit_after_each_rings_entries_in_its_page() {
        assert_eq!((layout::used_event(8), layout::avail_event(8)), (4 + 2 * 8, 4 + 8 * 8));
        assert_eq!((layout::used_event(MAX_SIZE), layout::avail_event(MAX_SIZE)), (516, 2052));
        assert!(layout::avail_event(MAX_SIZE) + 2 <= FRAME_SIZE as usize);
        // They are what the driver writes and reads: `used_event` in the
        // available ring's page, `avail_event` in the used ring's.
        let mut mem = TestMem::new(100);
        let mut q = Virtq::new(&mut mem, 8).unwrap();
        q.use_event_idx();
        q.set_interrupts(&mut mem, false);
        assert_eq!(rd16(&mem, q.avail, 20), u16::MAX);
        q.set_interrupts(&mut mem, true);
        assert_eq!(rd16(&mem, q.avail, 20), 0);
        let id = q.take().unwrap();
        q.submit(&mut mem, id, 60, false);
        mem.write(q.used, 68, &1u16.to_le_bytes());
        assert!(!q.kick_prepare(&mut mem), "the device asked at index 1, not 0");
    }

    /// A batch of N frames is N available entries and at most one
    /// notification, only when the device's `avail_event` is among them,
    /// through the wrap of the 16-bit index.
    #[test]
    fn with_the_event_index_a_batch_kicks_at_most_once_and_only_when_asked() {
        use crate::virtio::testing::FakeQueue;
        let mut mem = TestMem::new(300);
        let mut q = Virtq::new(&mut mem, 256).unwrap();
        q.use_event_idx();
        q.set_interrupts(&mut mem, false);
        let mut dev =
            FakeQueue { size: 256, desc: q.desc, avail: q.avail, used: q.used, enabled: true, event_idx: true, ..Default::default() };
        let (mut kicks, mut published) = (0u32, 0u32);
        const ROUNDS: u32 = 2100;
        for round in 0..ROUNDS {
            let n = 1 + round % 64;
            let before = rd16(&mem, q.avail, RING_IDX);
            for _ in 0..n {
                let id = q.take().expect("the device gave every buffer back");
                q.submit(&mut mem, id, 60, false);
            }
            published += n;
            assert_eq!(rd16(&mem, q.avail, RING_IDX), before.wrapping_add(n as u16), "one entry per frame");
            // Every third batch the device is still busy with the last one
            // (it will look at the index past it by itself): no kick then.
            let busy = round % 3 == 1;
            if busy {
                mem.write(q.used, avail_event(256), &before.wrapping_add(n as u16).to_le_bytes());
            }
            let kick = q.kick_prepare(&mut mem);
            assert_eq!(kick, !busy, "round {round}");
            assert!(!q.kick_prepare(&mut mem), "nothing new, nothing to say");
            kicks += u32::from(kick);
            // The device takes them all (and says where it would be told
            // next), uses them, and never interrupts.
            while let Some((id, ..)) = dev.take_avail(&mut mem) {
                assert!(!dev.put_used(&mut mem, id.into(), 60), "asked for an interrupt");
            }
            while let Some(u) = q.pop_used(&mut mem).unwrap() {
                q.give_back(u.id);
            }
        }
        assert!(published > 65536, "the index wrapped: {published}");
        assert_eq!(kicks, (0..ROUNDS).filter(|r| r % 3 != 1).count() as u32);
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
