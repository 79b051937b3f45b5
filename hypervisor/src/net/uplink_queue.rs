//! Frames from the host that wait for room in one guest's RX ring.
//!
//! The uplink takes frames from the host in batches and switches each one.
//! A frame for one guest alone (unicast to a MAC the switch knows) whose
//! RX ring is full waits here, in that guest's own queue, and is retried
//! when that guest is retried (the back end does it on every poll of the
//! uplink); frames for other guests never wait behind it. Once a guest has
//! frames waiting, its next ones queue behind them, so a guest sees the
//! host's frames in the order they came. Broadcast and flooded frames never
//! come here: they go to whoever has room at once.
//!
//! Everything is bounded, so neither a guest that never drains its ring
//! nor a host that sends without pause can grow the hypervisor's heap
//! without limit: frames per guest, frames and bytes over all guests
//! ([`Bounds`]), and time: a frame that waited [`Bounds::max_wait_ns`] is
//! dropped. What is refused or dropped is returned to the caller, which
//! counts it against the guest. A guest's queue is freed with
//! [`UplinkQueue::remove`] when its vNIC goes.
//!
//! Pure data: the caller's `deliver` closures do the copying into rings,
//! so this is tested on the host.

use abi::ring::MTU_FRAME;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::ops::Bound;

/// How much may wait, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Frames waiting for one guest.
    pub guest_frames: usize,
    /// Frames waiting for all guests together.
    pub total_frames: usize,
    /// Bytes of frames waiting for all guests together.
    pub total_bytes: usize,
    /// How long a frame may wait before it is dropped.
    pub max_wait_ns: u64,
}

impl Bounds {
    /// The uplink's: a guest may have 32 frames waiting (two rings' worth
    /// at the default 16 slots, more than a 16 KiB TCP window of
    /// full-size segments), all guests 256 frames and 256 KiB, each for at
    /// most 100 ms (what 200 polls at the uplink's 0.5 ms tick took when
    /// the limit was counted in polls).
    pub const UPLINK: Bounds = Bounds { guest_frames: 32, total_frames: 256, total_bytes: 256 * 1024, max_wait_ns: 100_000_000 };
}

/// Why a frame was not held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The guest already has [`Bounds::guest_frames`] waiting.
    GuestFull,
    /// All guests together have [`Bounds::total_frames`] or
    /// [`Bounds::total_bytes`] waiting.
    TotalFull,
    /// The heap had no room for it.
    NoMemory,
    /// Longer than a frame from the host can be.
    TooBig,
}

/// What became of an offered frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// It went into the guest's ring at once.
    Delivered,
    /// It waits in the guest's queue.
    Held,
    /// It was dropped (count it against the guest).
    Dropped(Refused),
}

/// What a retry did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retried {
    /// Frames that went into the ring.
    pub delivered: usize,
    /// Frames dropped for having waited too long (count them against the
    /// guest).
    pub expired: usize,
}

struct Held {
    since_ns: u64,
    buf: Buffer,
    len: usize,
}

/// A buffer for one frame from the host.
type Buffer = Box<[u8; MTU_FRAME]>;

/// Per-guest queues of frames from the host, keyed by guest `K`.
pub struct UplinkQueue<K> {
    queues: BTreeMap<K, VecDeque<Held>>,
    /// Buffers of frames that went on, kept for the next ones: a frame is
    /// held without a heap allocation once as many have waited at once
    /// before (at most `total_frames` buffers ever).
    spare: Vec<Buffer>,
    frames: usize,
    bytes: usize,
    bounds: Bounds,
}

impl<K: Ord + Copy> UplinkQueue<K> {
    pub const fn new(bounds: Bounds) -> Self {
        Self { queues: BTreeMap::new(), spare: Vec::new(), frames: 0, bytes: 0, bounds }
    }

    /// Whether frames for `k` are waiting.
    pub fn is_waiting(&self, k: K) -> bool {
        self.queues.contains_key(&k)
    }

    /// Frames waiting for `k`.
    pub fn waiting(&self, k: K) -> usize {
        self.queues.get(&k).map_or(0, VecDeque::len)
    }

    /// Frames waiting for all guests.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Bytes of frames waiting for all guests.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The first guest after `after` (from the start with `None`) that has
    /// frames waiting.
    pub fn next_waiting(&self, after: Option<K>) -> Option<K> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.queues.range((from, Bound::Unbounded)).next().map(|(k, _)| *k)
    }

    /// A frame from the host for guest `k` alone, at `now_ns`: if nothing
    /// waits for `k`, `deliver` tries to put it in the ring; if something
    /// does (it goes behind, in order) or the ring is full, it is held, or
    /// dropped when holding it would pass a bound.
    pub fn offer(&mut self, k: K, frame: &[u8], now_ns: u64, deliver: impl FnOnce(&[u8]) -> bool) -> Offered {
        if !self.is_waiting(k) && deliver(frame) {
            return Offered::Delivered;
        }
        match self.hold(k, frame, now_ns) {
            Ok(()) => Offered::Held,
            Err(why) => Offered::Dropped(why),
        }
    }

    fn hold(&mut self, k: K, frame: &[u8], now_ns: u64) -> Result<(), Refused> {
        if frame.len() > MTU_FRAME {
            return Err(Refused::TooBig);
        }
        if self.waiting(k) >= self.bounds.guest_frames {
            return Err(Refused::GuestFull);
        }
        if self.frames >= self.bounds.total_frames || self.bytes + frame.len() > self.bounds.total_bytes {
            return Err(Refused::TotalFull);
        }
        // Fallible allocations: a full heap costs the frame, not the
        // hypervisor.
        // Room to give a buffer back later without allocating.
        if self.spare.try_reserve(self.frames + 1).is_err() {
            return Err(Refused::NoMemory);
        }
        let mut buf = match self.spare.pop() {
            Some(b) => b,
            None => new_buffer().ok_or(Refused::NoMemory)?,
        };
        let queue = self.queues.entry(k).or_default();
        if queue.try_reserve(1).is_err() {
            if queue.is_empty() {
                self.queues.remove(&k);
            }
            self.spare.push(buf);
            return Err(Refused::NoMemory);
        }
        buf[..frame.len()].copy_from_slice(frame);
        queue.push_back(Held { since_ns: now_ns, buf, len: frame.len() });
        self.frames += 1;
        self.bytes += frame.len();
        Ok(())
    }

    /// Tries `k`'s waiting frames in order with `deliver` until it finds
    /// no room, then drops those that have waited [`Bounds::max_wait_ns`]
    /// or longer.
    pub fn retry(&mut self, k: K, now_ns: u64, mut deliver: impl FnMut(&[u8]) -> bool) -> Retried {
        let Some(queue) = self.queues.get_mut(&k) else { return Retried::default() };
        let mut done = Retried::default();
        while let Some(h) = queue.front() {
            let old = now_ns.saturating_sub(h.since_ns) >= self.bounds.max_wait_ns;
            if !old && !deliver(&h.buf[..h.len]) {
                break;
            }
            if old {
                // It may not be tried again: the guest had its time.
                done.expired += 1;
            } else {
                done.delivered += 1;
            }
            let h = queue.pop_front().expect("front exists");
            self.frames -= 1;
            self.bytes -= h.len;
            // `hold` reserved room for it.
            self.spare.push(h.buf);
        }
        if queue.is_empty() {
            self.queues.remove(&k);
        }
        done
    }

    /// Frees `k`'s queue (its vNIC is gone); returns how many frames it
    /// held (count them as dropped).
    pub fn remove(&mut self, k: K) -> usize {
        let Some(queue) = self.queues.remove(&k) else { return 0 };
        let n = queue.len();
        self.frames -= n;
        for h in queue {
            self.bytes -= h.len;
            self.spare.push(h.buf);
        }
        n
    }
}

/// A zeroed frame buffer, allocated fallibly (the heap may be full).
fn new_buffer() -> Option<Buffer> {
    let mut v = Vec::new();
    v.try_reserve_exact(MTU_FRAME).ok()?;
    v.resize(MTU_FRAME, 0u8);
    v.into_boxed_slice().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const B: Bounds = Bounds { guest_frames: 3, total_frames: 5, total_bytes: 5 * 100, max_wait_ns: 1000 };

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    /// A guest's ring in the tests: room for `room` more frames, and what
    /// it got.
    #[derive(Default)]
    struct Ring {
        room: usize,
        got: Vec<u8>,
    }

    impl Ring {
        fn deliver(&mut self, f: &[u8]) -> bool {
            if self.room == 0 {
                return false;
            }
            self.room -= 1;
            self.got.push(f[0]);
            true
        }
    }

    #[test]
    fn a_stalled_guest_never_delays_another_guests_frame() {
        let mut q = UplinkQueue::new(B);
        let (mut a, mut b) = (Ring::default(), Ring { room: 100, ..Default::default() });
        // A's ring is full: its frames wait, and as many as it may hold.
        for t in 0..3 {
            assert_eq!(q.offer(1, &frame(t, 60), 0, |f| a.deliver(f)), Offered::Held);
        }
        // B's frames, coming after and in between, go straight through.
        for t in 10..20 {
            assert_eq!(q.offer(2, &frame(t, 60), 1, |f| b.deliver(f)), Offered::Delivered);
            assert_eq!(q.retry(1, 2, |f| a.deliver(f)), Retried::default());
        }
        assert_eq!(b.got, (10..20).collect::<Vec<u8>>());
        assert!(!q.is_waiting(2));
        assert_eq!(q.next_waiting(None), Some(1));
        assert_eq!(q.next_waiting(Some(1)), None);
        // B's ring fills too: B's frames wait in B's queue, not behind A's,
        // and come out as soon as B has room, while A still has none.
        b.room = 0;
        assert_eq!(q.offer(2, &frame(20, 60), 3, |f| b.deliver(f)), Offered::Held);
        assert_eq!(q.next_waiting(Some(1)), Some(2));
        b.room = 1;
        assert_eq!(q.retry(1, 4, |f| a.deliver(f)).delivered, 0);
        assert_eq!(q.retry(2, 4, |f| b.deliver(f)), Retried { delivered: 1, expired: 0 });
        assert_eq!(b.got.last(), Some(&20));
        assert!(!q.is_waiting(2));
    }

    #[test]
    fn a_guests_frames_keep_their_order() {
        let mut q = UplinkQueue::new(B);
        let mut a = Ring::default();
        assert_eq!(q.offer(1, &frame(1, 60), 0, |f| a.deliver(f)), Offered::Held);
        // Room now, but frame 1 waits: frame 2 goes behind it, undelivered.
        a.room = 10;
        assert_eq!(q.offer(1, &frame(2, 60), 1, |f| a.deliver(f)), Offered::Held);
        assert!(a.got.is_empty());
        assert_eq!(q.retry(1, 2, |f| a.deliver(f)), Retried { delivered: 2, expired: 0 });
        assert_eq!(a.got, [1, 2]);
        // Nothing waits any more: the next one is delivered at once.
        assert_eq!(q.offer(1, &frame(3, 60), 3, |f| a.deliver(f)), Offered::Delivered);
        assert_eq!(a.got, [1, 2, 3]);
        // A ring with room for one of two waiting frames takes the first.
        a.room = 0;
        q.offer(1, &frame(4, 60), 4, |f| a.deliver(f));
        q.offer(1, &frame(5, 60), 4, |f| a.deliver(f));
        a.room = 1;
        assert_eq!(q.retry(1, 5, |f| a.deliver(f)).delivered, 1);
        assert_eq!((a.got.last(), q.waiting(1)), (Some(&4), 1));
    }

    #[test]
    fn bounds_hold() {
        let mut q = UplinkQueue::new(B);
        let full = |_: &[u8]| false;
        for t in 0..3 {
            assert_eq!(q.offer(1, &frame(t, 100), 0, full), Offered::Held);
        }
        assert_eq!(q.offer(1, &frame(3, 100), 0, full), Offered::Dropped(Refused::GuestFull));
        assert_eq!(q.offer(2, &frame(4, 100), 0, full), Offered::Held);
        // 4 frames, 400 bytes held: a 101-byte frame passes the byte budget.
        assert_eq!(q.offer(3, &frame(5, 101), 0, full), Offered::Dropped(Refused::TotalFull));
        assert_eq!(q.offer(3, &frame(5, 100), 0, full), Offered::Held);
        assert_eq!((q.frames(), q.bytes()), (5, 500));
        // The frame budget is full, for every guest.
        assert_eq!(q.offer(4, &frame(6, 60), 0, full), Offered::Dropped(Refused::TotalFull));
        assert!(!q.is_waiting(4));
        // Many guests, many frames: never more than the bounds.
        let mut q = UplinkQueue::new(B);
        for i in 0..1000u32 {
            q.offer(i % 7, &frame(i as u8, 60 + (i as usize % 41)), u64::from(i), full);
            assert!(q.frames() <= B.total_frames && q.bytes() <= B.total_bytes);
            assert!((0..7).all(|k| q.waiting(k) <= B.guest_frames));
        }
    }

    #[test]
    fn frames_that_waited_too_long_are_dropped_and_counted() {
        let mut q = UplinkQueue::new(B);
        let mut a = Ring::default();
        q.offer(1, &frame(1, 60), 0, |f| a.deliver(f));
        q.offer(1, &frame(2, 60), 500, |f| a.deliver(f));
        // Not yet too old: kept.
        assert_eq!(q.retry(1, 999, |f| a.deliver(f)), Retried::default());
        // The first has waited 1000 ns: dropped, even though the ring now
        // has room; the second is delivered.
        a.room = 5;
        assert_eq!(q.retry(1, 1000, |f| a.deliver(f)), Retried { delivered: 1, expired: 1 });
        assert_eq!(a.got, [2]);
        // Both too old with a full ring: both dropped, the queue is gone.
        a.room = 0;
        q.offer(1, &frame(3, 60), 2000, |f| a.deliver(f));
        q.offer(1, &frame(4, 60), 2001, |f| a.deliver(f));
        assert_eq!(q.retry(1, 3001, |f| a.deliver(f)), Retried { delivered: 0, expired: 2 });
        assert!(!q.is_waiting(1));
        assert_eq!((q.frames(), q.bytes()), (0, 0));
    }

    #[test]
    fn removing_a_guest_frees_its_queue_only() {
        let mut q = UplinkQueue::new(B);
        let full = |_: &[u8]| false;
        q.offer(1, &frame(1, 100), 0, full);
        q.offer(1, &frame(2, 80), 0, full);
        q.offer(2, &frame(3, 70), 0, full);
        assert_eq!(q.remove(1), 2);
        assert_eq!((q.frames(), q.bytes(), q.is_waiting(1)), (1, 70, false));
        assert_eq!(q.remove(1), 0);
        assert_eq!(q.waiting(2), 1);
        // Its room is free for others again.
        for t in 0..4 {
            assert_eq!(q.offer(3, &frame(t, 100), 0, full), if t < 3 { Offered::Held } else { Offered::Dropped(Refused::GuestFull) });
        }
        assert_eq!(q.remove(2) + q.remove(3), 4);
        assert_eq!((q.frames(), q.bytes(), q.next_waiting(None)), (0, 0, None));
    }

    /// Buffers are kept and reused: holding frames again costs no heap
    /// allocation, and no more buffers exist than ever waited at once.
    #[test]
    fn buffers_are_reused_not_allocated_per_frame() {
        let mut q = UplinkQueue::new(B);
        let mut a = Ring::default();
        for round in 0..50u8 {
            for t in 0..3 {
                assert_eq!(q.offer(1, &frame(t, 60 + round as usize), 0, |f| a.deliver(f)), Offered::Held);
            }
            assert!(q.spare.is_empty(), "round {round}: every spare buffer in use");
            a.room = 3;
            assert_eq!(q.retry(1, 1, |f| a.deliver(f)).delivered, 3);
            assert_eq!(q.spare.len(), 3, "round {round}");
            assert!(q.spare.capacity() >= 3);
        }
        assert_eq!(q.offer(2, &vec![0u8; MTU_FRAME + 1], 0, |_| false), Offered::Dropped(Refused::TooBig));
    }
}
