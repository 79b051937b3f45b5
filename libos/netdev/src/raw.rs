//! [`RawDevice`]: the vNIC's rings without a network stack, for a guest
//! that sends and receives whole Ethernet frames itself (the switch
//! benchmark of `bench net`). Made from a [`RingDevice`] with
//! [`RingDevice::into_raw`], so it continues the rings where the stack left
//! them. The same checks as the stack's device: a frame the ring cannot
//! hold is refused before anything is written, a received length outside
//! the ring's bounds is counted and the frame skipped, and a broken index
//! reads as an empty ring.

use abi::ring::{Consumer, MIN_FRAME, Producer, RingSlices};

use crate::{RingDevice, Stats};

/// Why a frame was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Its length is outside `MIN_FRAME..=max` (the ring's frame bounds).
    Size { len: usize, min: usize, max: usize },
    /// The hypervisor broke the ring protocol (counted in `ring_errors`).
    Ring,
}

/// A vNIC's TX and RX rings, used frame by frame.
pub struct RawDevice<M: RingSlices> {
    tx_mem: M,
    tx: Producer,
    rx_mem: M,
    rx: Consumer,
    /// The largest frame sent and received (the stack's MTU).
    mtu: usize,
    pub stats: Stats,
}

impl<M: RingSlices> RingDevice<M> {
    /// The same rings as a [`RawDevice`], continuing from their indices
    /// (whatever the stack had queued stays queued).
    pub fn into_raw(self) -> RawDevice<M> {
        RawDevice { tx_mem: self.tx_mem, tx: self.tx, rx_mem: self.rx_mem, rx: self.rx, mtu: self.mtu, stats: self.stats }
    }
}

impl<M: RingSlices> RawDevice<M> {
    /// The largest frame the rings carry (`NicInfo::mtu`).
    pub fn max_frame(&self) -> usize {
        self.mtu
    }

    /// Slots per ring.
    pub fn slots(&self) -> u32 {
        self.tx.slots()
    }

    /// Copies `frame` into the next TX slots and publishes it: `Ok(false)`
    /// (nothing written) when the ring has no room for it. Raw frames
    /// carry their own checksums, if any (no `TX_CSUM_BLANK`). The hypervisor forwards it
    /// when the guest blocks, yields, is preempted or kicks.
    pub fn send(&mut self, frame: &[u8]) -> Result<bool, SendError> {
        self.send_with(frame.len(), |buf| buf.copy_from_slice(frame))
    }

    /// Builds a frame of `len` bytes in place: `fill` gets its span in the
    /// TX ring (holding whatever the ring held before: it writes every
    /// byte that matters), then the frame is published. `Ok(false)` (and
    /// `fill` not called) when the ring has no room for it. Nothing is
    /// copied, so a producer pays only for what it writes.
    pub fn send_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<bool, SendError> {
        if !(MIN_FRAME..=self.max_frame()).contains(&len) {
            return Err(SendError::Size { len, min: MIN_FRAME, max: self.max_frame() });
        }
        match self.tx.reserve(&self.tx_mem, len) {
            Ok(Some(at)) => {
                self.tx_mem.with_slice_mut(at, len, fill);
                self.tx.commit(&self.tx_mem, len, 0);
                self.tx.publish(&self.tx_mem);
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
                Ok(true)
            }
            Ok(None) => {
                self.stats.tx_full += 1;
                Ok(false)
            }
            Err(_) => {
                self.stats.ring_errors += 1;
                Err(SendError::Ring)
            }
        }
    }

    /// Whether a frame of `len` bytes fits in the TX ring now (false if
    /// the hypervisor broke the ring).
    pub fn tx_fits(&mut self, len: usize) -> bool {
        self.tx.fits(&self.tx_mem, len).unwrap_or_else(|_| {
            self.stats.ring_errors += 1;
            false
        })
    }

    /// Frames sent so far (the TX producer index).
    pub fn tx_index(&self) -> u32 {
        self.tx.index()
    }

    /// Whether a received frame is waiting.
    pub fn rx_pending(&self) -> bool {
        matches!(self.rx.pending(&self.rx_mem), Ok(n) if n > 0)
    }

    /// Copies the next received frame into `buf` (which must hold
    /// [`RawDevice::max_frame`] bytes; a longer frame is cut to it) and
    /// gives its slots back; its length, or `None` when none is waiting. A
    /// frame with a bad length is counted and skipped.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.recv_with(|f| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            f.len()
        })
    }

    /// Hands the next received frame, where it lies in the RX ring, to
    /// `f`, then gives its slots back; `f`'s answer, or `None` when no
    /// frame is waiting. A frame with a bad length is counted and skipped.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let frame = crate::next_frame(&mut self.rx, &self.rx_mem, &mut self.stats)?;
        let r = self.rx_mem.with_slice(frame.at, frame.len, f);
        let _ = self.rx.skip(&self.rx_mem);
        self.rx.release(&self.rx_mem);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;

    use super::*;
    use abi::ring::testing::VecRing;
    use abi::ring::{PROD_OFFSET, RingMemory, SLOTS_DEFAULT, slot_offset};
    use alloc::vec;
    use alloc::vec::Vec;

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn frames_cross_a_wire_in_order_until_the_ring_is_full() {
        let (ab, ba) = (VecRing::default(), VecRing::default());
        let mut a = RingDevice::new(&ab, &ba, SLOTS_DEFAULT).into_raw();
        let mut b = RingDevice::new(&ba, &ab, SLOTS_DEFAULT).into_raw();
        // One slot each (header and frame within 2048 bytes).
        let sizes: Vec<usize> = (0..SLOTS_DEFAULT as usize).map(|i| MIN_FRAME + i * 97).collect();
        for (i, &len) in sizes.iter().enumerate() {
            assert_eq!(a.send(&frame(len, i as u8)), Ok(true));
        }
        assert!(!a.tx_fits(MIN_FRAME));
        assert_eq!(a.send(&frame(64, 0)), Ok(false), "a full ring takes nothing");
        assert_eq!(a.stats.tx_full, 1);
        assert!(b.rx_pending());
        let mut buf = vec![0u8; b.max_frame()];
        for (i, &len) in sizes.iter().enumerate() {
            assert_eq!(b.recv(&mut buf), Some(len));
            assert_eq!(buf[..len], frame(len, i as u8)[..]);
        }
        assert_eq!(b.recv(&mut buf), None);
        assert!(!b.rx_pending());
        assert!(a.tx_fits(a.max_frame()), "received slots are given back");
        assert_eq!((a.stats.tx_frames, b.stats.rx_frames), (SLOTS_DEFAULT as u64, SLOTS_DEFAULT as u64));
    }

    #[test]
    fn frames_built_and_read_in_place_cross_like_copied_ones() {
        let (ab, ba) = (VecRing::new(128), VecRing::new(128));
        let mut a = RingDevice::new(&ab, &ba, 128).into_raw();
        let mut b = RingDevice::new(&ba, &ab, 128).into_raw();
        let max = a.max_frame();
        // Largest frames until the ring is full (three of 33 slots in 128);
        // `fill` is not called for the one that does not fit.
        assert_eq!(a.send_with(max, |buf| buf.copy_from_slice(&frame(max, 3))), Ok(true));
        assert_eq!(a.send_with(max, |buf| buf.fill(4)), Ok(true));
        assert_eq!(a.send_with(max, |buf| buf.fill(5)), Ok(true));
        assert_eq!(a.send_with(max, |_| panic!("no room, no fill")), Ok(false));
        assert_eq!(a.send_with(max + 1, |_| panic!("too big")), Err(SendError::Size { len: max + 1, min: MIN_FRAME, max }));
        assert_eq!(b.recv_with(|f| f == &frame(max, 3)[..]), Some(true));
        for x in [4, 5] {
            assert_eq!(b.recv_with(|f| f.len() == max && f.iter().all(|&b| b == x)), Some(true));
        }
        assert_eq!(b.recv_with(|f| f.len()), None);
        // Given back: a copied frame goes in and comes out in place.
        assert_eq!(a.send(&frame(100, 9)), Ok(true));
        assert_eq!(b.recv_with(|f| f.to_vec()), Some(frame(100, 9)));
        assert_eq!((a.stats.tx_frames, a.stats.tx_full, b.stats.rx_frames), (4, 1, 4));
    }

    #[test]
    fn frames_outside_the_bounds_are_refused_before_writing() {
        let (ab, ba) = (VecRing::default(), VecRing::default());
        let mut a = RingDevice::new(&ab, &ba, SLOTS_DEFAULT).into_raw();
        let max = a.max_frame();
        for len in [0, MIN_FRAME - 1, max + 1, 65536] {
            assert_eq!(a.send(&vec![0; len]), Err(SendError::Size { len, min: MIN_FRAME, max }));
        }
        assert_eq!(a.tx_index(), 0);
        assert_eq!(a.send(&vec![7; max]), Ok(true));
    }

    #[test]
    fn a_lying_producer_costs_a_frame_or_reads_as_empty() {
        let (ab, ba) = (VecRing::default(), VecRing::default());
        let mut a = RingDevice::new(&ab, &ba, SLOTS_DEFAULT).into_raw();
        let mut b = RingDevice::new(&ba, &ab, SLOTS_DEFAULT).into_raw();
        assert_eq!(a.send(&frame(60, 1)), Ok(true));
        assert_eq!(a.send(&frame(61, 2)), Ok(true));
        // The first entry's length is rewritten beyond the ring's bound:
        // where the next entry starts is unknown, so everything published
        // is passed over (counted once), and the ring goes on after it.
        ab.write(slot_offset(0, SLOTS_DEFAULT), &u16::MAX.to_le_bytes());
        let mut buf = vec![0u8; b.max_frame()];
        assert_eq!(b.recv(&mut buf), None);
        assert_eq!(b.stats.ring_errors, 1);
        assert_eq!(a.send(&frame(62, 3)), Ok(true));
        assert_eq!(b.recv(&mut buf), Some(62));
        // A producer index far ahead: nothing is read.
        ab.store(PROD_OFFSET, 10_000);
        assert_eq!(b.recv(&mut buf), None);
        assert!(!b.rx_pending());
        assert_eq!(b.stats.ring_errors, 2);
    }

    #[test]
    fn the_raw_device_continues_where_the_stack_left_off() {
        let (ab, ba) = (VecRing::default(), VecRing::default());
        let mut a = RingDevice::new(&ab, &ba, SLOTS_DEFAULT);
        let mut b = RingDevice::new(&ba, &ab, SLOTS_DEFAULT).into_raw();
        // Three frames through the smoltcp device first.
        for _ in 0..3 {
            let tx = smoltcp::phy::Device::transmit(&mut a, smoltcp::time::Instant::ZERO).unwrap();
            smoltcp::phy::TxToken::consume(tx, 60, |b| b.fill(1));
        }
        let mut buf = vec![0u8; b.max_frame()];
        for _ in 0..3 {
            assert_eq!(b.recv(&mut buf), Some(60));
        }
        let mut a = a.into_raw();
        assert_eq!(a.tx_index(), 3);
        assert_eq!(a.send(&frame(70, 9)), Ok(true));
        assert_eq!(b.recv(&mut buf), Some(70));
        assert_eq!(buf[..70], frame(70, 9)[..]);
    }
}
