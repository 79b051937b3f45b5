//! The virtual NIC's shared rings, written once for both sides.
//!
//! A vNIC is two single-producer/single-consumer rings in memory shared by a
//! guest and the hypervisor: TX (guest produces frames, hypervisor consumes)
//! and RX (hypervisor produces, guest consumes). Each ring has `slots`
//! fixed slots of [`SLOT_SIZE`] bytes (a power of two up to [`SLOTS_MAX`],
//! chosen per guest and told it in `NicInfo`); slot `i % slots` holds the
//! frame of index `i`, and its first two bytes hold the frame's length. A
//! slot has no address in it, so a guest cannot point the hypervisor
//! anywhere: the worst it can say is a wrong length, which is checked.
//!
//! Indices are free-running `u32`s as in Xen's `io/ring.h`: the producer
//! owns `prod`, the consumer owns `cons`, `prod - cons` (wrapping) is the
//! number of frames in flight, and anything above `slots` means the peer
//! lies. Each side keeps a private copy of its own index and reads the
//! peer's index once per batch; the producer writes the slot before
//! publishing `prod` (release), the consumer reads `prod` (acquire) before
//! the slot, and copies the length out of shared memory before checking it.
//!
//! Memory access goes through [`RingMemory`], so the same code runs over raw
//! pointers in the guest, over physical frames in the hypervisor, and over a
//! byte array in the tests. A ring is addressed as one region: its index
//! block below [`SLOTS_OFFSET`] and its slots from there; the guest's rings
//! keep their index blocks in the shared page and their slots in pages of
//! their own (`layout::NIC_TX_INDICES`, `layout::NIC_TX_RING`).

/// Most slots a ring may have.
pub const SLOTS_MAX: u32 = 128;
/// Fewest slots a ring may have.
pub const SLOTS_MIN: u32 = 2;
/// Slots per ring unless the manifest says otherwise.
pub const SLOTS_DEFAULT: u32 = 16;
/// Bytes per slot: a 2-byte length, then the frame.
pub const SLOT_SIZE: usize = 2048;
/// Largest Ethernet frame carried (no FCS): 1500 bytes of payload + header.
pub const MTU_FRAME: usize = 1514;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;

const _: () = assert!(valid_slots(SLOTS_DEFAULT) && valid_slots(SLOTS_MAX) && valid_slots(SLOTS_MIN));
const _: () = assert!(2 + MTU_FRAME <= SLOT_SIZE);

/// Offsets of the ring's fields within its region. `prod` and `cons` sit on
/// separate cache lines; the slots start at the next page.
pub const PROD_OFFSET: usize = 0;
pub const CONS_OFFSET: usize = 64;
pub const SLOTS_OFFSET: usize = 4096;
/// Bytes of the index block that hold `prod` and `cons`.
pub const INDEX_BYTES: usize = CONS_OFFSET + 4;

/// Whether a ring may have `slots` slots.
pub const fn valid_slots(slots: u32) -> bool {
    slots.is_power_of_two() && slots >= SLOTS_MIN && slots <= SLOTS_MAX
}

/// Bytes of a ring's slots.
pub const fn slots_bytes(slots: u32) -> usize {
    slots as usize * SLOT_SIZE
}

/// Size of one ring's region as [`RingMemory`] addresses it.
pub const fn ring_bytes(slots: u32) -> usize {
    SLOTS_OFFSET + slots_bytes(slots)
}

/// Access to one ring's shared region.
///
/// Implementations make `load`/`store` single 4-byte atomic accesses with
/// acquire/release ordering, and keep every access inside the region
/// (`offset + len <= ring_bytes(slots)`) or panic. [`Consumer`] and
/// [`Producer`] never rely on that for memory safety (they are safe code
/// and check every index and length they read from the region), so the
/// trait is safe; an implementation that reaches raw memory does so in its
/// own `unsafe` blocks, which check the bounds themselves.
pub trait RingMemory {
    /// Atomically loads the `u32` at `offset` (acquire).
    fn load(&self, offset: usize) -> u32;
    /// Atomically stores `v` at `offset` (release).
    fn store(&self, offset: usize, v: u32);
    /// Copies bytes out of the region.
    fn read(&self, offset: usize, dst: &mut [u8]);
    /// Copies bytes into the region.
    fn write(&self, offset: usize, src: &[u8]);
}

// Forwards to `T`.
impl<T: RingMemory + ?Sized> RingMemory for &T {
    fn load(&self, offset: usize) -> u32 {
        (**self).load(offset)
    }
    fn store(&self, offset: usize, v: u32) {
        (**self).store(offset, v)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) {
        (**self).read(offset, dst)
    }
    fn write(&self, offset: usize, src: &[u8]) {
        (**self).write(offset, src)
    }
}

/// How a peer broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer's index is more than `slots` ahead of ours (or behind:
    /// an index moved backwards wraps to a huge distance).
    BadIndex { prod: u32, cons: u32, slots: u32 },
    /// A slot's length is below [`MIN_FRAME`] or above [`MTU_FRAME`].
    BadLength { index: u32, len: u16 },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RingError::BadIndex { prod, cons, slots } => {
                write!(f, "producer index {prod} is not within {slots} of consumer index {cons}")
            }
            RingError::BadLength { index, len } => {
                write!(f, "frame {index} has length {len}, outside {MIN_FRAME}..={MTU_FRAME}")
            }
        }
    }
}

/// Where in a ring of `slots` slots frame `index` lives (its length field).
pub fn slot_offset(index: u32, slots: u32) -> usize {
    SLOTS_OFFSET + (index & (slots - 1)) as usize * SLOT_SIZE
}

/// The producing side of a ring.
#[derive(Debug)]
pub struct Producer {
    /// Our `prod`, never read back from shared memory.
    prod: u32,
    slots: u32,
}

impl Producer {
    /// A producer for a fresh ring (both indices 0) of `slots` slots.
    ///
    /// # Panics
    /// If `slots` is not [`valid_slots`] (callers check what they are told).
    pub const fn new(slots: u32) -> Self {
        assert!(valid_slots(slots));
        Self { prod: 0, slots }
    }

    /// Free slots, from the consumer's index as it is now.
    pub fn space(&self, m: &impl RingMemory) -> Result<u32, RingError> {
        let cons = m.load(CONS_OFFSET);
        let used = self.prod.wrapping_sub(cons);
        if used > self.slots {
            return Err(RingError::BadIndex { prod: self.prod, cons, slots: self.slots });
        }
        Ok(self.slots - used)
    }

    /// Writes `frame` into the next slot without publishing it; returns
    /// `false` (and writes nothing) when the ring is full. Call
    /// [`Producer::publish`] after a batch.
    pub fn push(&mut self, m: &impl RingMemory, frame: &[u8]) -> Result<bool, RingError> {
        if frame.len() < MIN_FRAME || frame.len() > MTU_FRAME {
            return Err(RingError::BadLength { index: self.prod, len: frame.len().min(u16::MAX as usize) as u16 });
        }
        if self.space(m)? == 0 {
            return Ok(false);
        }
        let at = slot_offset(self.prod, self.slots);
        m.write(at, &(frame.len() as u16).to_le_bytes());
        m.write(at + 2, frame);
        self.prod = self.prod.wrapping_add(1);
        Ok(true)
    }

    /// Reserves the next slot for a frame of `len` bytes that the caller
    /// writes itself at the returned offset (for copying straight from
    /// another ring); `None` when the ring is full. Finish with
    /// [`Producer::commit`].
    pub fn reserve(&self, m: &impl RingMemory, len: usize) -> Result<Option<usize>, RingError> {
        if !(MIN_FRAME..=MTU_FRAME).contains(&len) {
            return Err(RingError::BadLength { index: self.prod, len: len.min(u16::MAX as usize) as u16 });
        }
        Ok((self.space(m)? > 0).then(|| slot_offset(self.prod, self.slots) + 2))
    }

    /// Completes a [`Producer::reserve`]d slot holding `len` bytes (not yet
    /// published).
    pub fn commit(&mut self, m: &impl RingMemory, len: usize) {
        m.write(slot_offset(self.prod, self.slots), &(len as u16).to_le_bytes());
        self.prod = self.prod.wrapping_add(1);
    }

    /// Makes every pushed frame visible to the consumer.
    pub fn publish(&self, m: &impl RingMemory) {
        m.store(PROD_OFFSET, self.prod);
    }

    /// Frames pushed so far (our private index).
    pub fn index(&self) -> u32 {
        self.prod
    }

    /// Slots in this ring.
    pub fn slots(&self) -> u32 {
        self.slots
    }
}

/// The consuming side of a ring.
#[derive(Debug)]
pub struct Consumer {
    /// Our `cons`, never read back from shared memory.
    cons: u32,
    slots: u32,
}

impl Consumer {
    /// A consumer for a fresh ring of `slots` slots.
    ///
    /// # Panics
    /// If `slots` is not [`valid_slots`].
    pub const fn new(slots: u32) -> Self {
        assert!(valid_slots(slots));
        Self { cons: 0, slots }
    }

    /// Slots in this ring.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Frames waiting, from the producer's index as it is now.
    pub fn pending(&self, m: &impl RingMemory) -> Result<u32, RingError> {
        let prod = m.load(PROD_OFFSET);
        let n = prod.wrapping_sub(self.cons);
        if n > self.slots {
            return Err(RingError::BadIndex { prod, cons: self.cons, slots: self.slots });
        }
        Ok(n)
    }

    /// Copies the next frame into `buf` (at least [`MTU_FRAME`] bytes) and
    /// returns its length, or `None` if the ring is empty. The slot is not
    /// released until [`Consumer::release`]. The length is copied out of
    /// shared memory once and checked before use.
    pub fn pop(&mut self, m: &impl RingMemory, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let Some((at, n)) = self.peek(m)? else { return Ok(None) };
        if n > buf.len() {
            return Err(RingError::BadLength { index: self.cons, len: n as u16 });
        }
        m.read(at, &mut buf[..n]);
        self.cons = self.cons.wrapping_add(1);
        Ok(Some(n))
    }

    /// The next frame without copying it: the offset of its bytes in the
    /// ring and its length (read once and checked), or `None` if the ring is
    /// empty. The frame stays in place until [`Consumer::skip`].
    pub fn peek(&self, m: &impl RingMemory) -> Result<Option<(usize, usize)>, RingError> {
        if self.pending(m)? == 0 {
            return Ok(None);
        }
        let at = slot_offset(self.cons, self.slots);
        let mut len = [0u8; 2];
        m.read(at, &mut len);
        let len = u16::from_le_bytes(len);
        if !(MIN_FRAME..=MTU_FRAME).contains(&(len as usize)) {
            return Err(RingError::BadLength { index: self.cons, len });
        }
        Ok(Some((at + 2, len as usize)))
    }

    /// Skips the next frame (after a bad length), if there is one.
    pub fn skip(&mut self, m: &impl RingMemory) -> Result<(), RingError> {
        if self.pending(m)? > 0 {
            self.cons = self.cons.wrapping_add(1);
        }
        Ok(())
    }

    /// Gives every popped slot back to the producer.
    pub fn release(&self, m: &impl RingMemory) {
        m.store(CONS_OFFSET, self.cons);
    }
}

/// A ring in an ordinary byte buffer, for tests on both sides.
#[cfg(any(test, feature = "alloc"))]
pub mod testing {
    use super::*;
    use core::cell::RefCell;

    pub struct VecRing(pub RefCell<alloc::vec::Vec<u8>>);

    impl VecRing {
        /// A zeroed ring region of `slots` slots.
        pub fn new(slots: u32) -> Self {
            Self(RefCell::new(alloc::vec![0; ring_bytes(slots)]))
        }
    }

    impl Default for VecRing {
        /// A ring of [`SLOTS_DEFAULT`] slots.
        fn default() -> Self {
            Self::new(SLOTS_DEFAULT)
        }
    }

    // Single-threaded test memory; every access is bounds-checked by
    // slice indexing (a bad offset panics the test, never corrupts).
    impl RingMemory for VecRing {
        fn load(&self, offset: usize) -> u32 {
            u32::from_le_bytes(self.0.borrow()[offset..offset + 4].try_into().unwrap())
        }
        fn store(&self, offset: usize, v: u32) {
            self.0.borrow_mut()[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn read(&self, offset: usize, dst: &mut [u8]) {
            dst.copy_from_slice(&self.0.borrow()[offset..offset + dst.len()]);
        }
        fn write(&self, offset: usize, src: &[u8]) {
            self.0.borrow_mut()[offset..offset + src.len()].copy_from_slice(src);
        }
    }

    /// A ring in ordinary memory that threads may share: the hypervisor's
    /// back-end tests deliver to it from several threads while another
    /// plays the guest. Every access is bounds-checked (a bad offset
    /// panics the test); bytes are read and written one by one, index
    /// words as one atomic access each.
    pub struct SharedRing(alloc::boxed::Box<[core::sync::atomic::AtomicU32]>);

    impl SharedRing {
        /// A zeroed ring region of `slots` slots.
        pub fn new(slots: u32) -> Self {
            Self((0..ring_bytes(slots) / 4).map(|_| core::sync::atomic::AtomicU32::new(0)).collect())
        }

        /// The size of its region.
        pub fn bytes(&self) -> usize {
            self.0.len() * 4
        }

        fn byte(&self, at: usize) -> u8 {
            (self.0[at / 4].load(core::sync::atomic::Ordering::Acquire) >> (8 * (at % 4))) as u8
        }

        fn set_byte(&self, at: usize, v: u8) {
            let shift = 8 * (at % 4);
            let word = &self.0[at / 4];
            let _ = word.fetch_update(core::sync::atomic::Ordering::AcqRel, core::sync::atomic::Ordering::Acquire, |w| {
                Some(w & !(0xff << shift) | u32::from(v) << shift)
            });
        }
    }

    // Index words are single 4-byte atomics (acquire/release, the offset
    // asserted aligned); every access is bounds-checked by slice indexing,
    // so an access outside the region panics, never corrupts.
    impl RingMemory for SharedRing {
        fn load(&self, offset: usize) -> u32 {
            assert!(offset.is_multiple_of(4));
            self.0[offset / 4].load(core::sync::atomic::Ordering::Acquire)
        }
        fn store(&self, offset: usize, v: u32) {
            assert!(offset.is_multiple_of(4));
            self.0[offset / 4].store(v, core::sync::atomic::Ordering::Release)
        }
        fn read(&self, offset: usize, dst: &mut [u8]) {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = self.byte(offset + i);
            }
        }
        fn write(&self, offset: usize, src: &[u8]) {
            for (i, &s) in src.iter().enumerate() {
                self.set_byte(offset + i, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::VecRing;
    use super::*;

    const SLOTS: u32 = SLOTS_DEFAULT;
    const RING_BYTES: usize = ring_bytes(SLOTS);

    fn frame(i: u32, len: usize) -> alloc::vec::Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    #[test]
    fn frames_cross_in_order_through_many_wraps() {
        let m = VecRing::default();
        let (mut p, mut c) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        let mut buf = [0u8; MTU_FRAME];
        let mut next_expected = 0u32;
        for round in 0..1000u32 {
            let batch = round % (SLOTS + 1);
            let mut sent = 0;
            while sent < batch && p.push(&m, &frame(p.index(), 60 + (p.index() as usize % 1400))).unwrap() {
                sent += 1;
            }
            p.publish(&m);
            while let Some(n) = c.pop(&m, &mut buf).unwrap() {
                assert_eq!(&buf[..n], &frame(next_expected, 60 + (next_expected as usize % 1400))[..]);
                next_expected += 1;
            }
            c.release(&m);
        }
        assert_eq!(next_expected, p.index());
    }

    #[test]
    fn frames_copy_straight_from_one_ring_to_another() {
        let (a, b) = (VecRing::default(), VecRing::default());
        let (mut pa, mut ca) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        let (mut pb, mut cb) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        let mut buf = [0u8; MTU_FRAME];
        for i in 0..100u32 {
            let f = frame(i, 14 + (i as usize * 37) % 1500);
            assert!(pa.push(&a, &f).unwrap());
            pa.publish(&a);
            let (off, len) = ca.peek(&a).unwrap().unwrap();
            assert_eq!(len, f.len());
            let dst = pb.reserve(&b, len).unwrap().unwrap();
            let mut tmp = alloc::vec![0u8; len];
            a.read(off, &mut tmp);
            b.write(dst, &tmp);
            pb.commit(&b, len);
            pb.publish(&b);
            ca.skip(&a).unwrap();
            ca.release(&a);
            assert_eq!(cb.pop(&b, &mut buf).unwrap(), Some(f.len()));
            assert_eq!(&buf[..f.len()], &f[..]);
            cb.release(&b);
        }
        assert_eq!(ca.peek(&a), Ok(None));
        assert!(matches!(pb.reserve(&b, 5), Err(RingError::BadLength { .. })));
    }

    #[test]
    fn a_full_ring_refuses_and_nothing_is_lost() {
        let m = VecRing::default();
        let (mut p, mut c) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        for i in 0..SLOTS {
            assert!(p.push(&m, &frame(i, 64)).unwrap());
        }
        assert!(!p.push(&m, &frame(99, 64)).unwrap(), "full");
        p.publish(&m);
        let mut buf = [0u8; MTU_FRAME];
        assert_eq!(c.pop(&m, &mut buf).unwrap(), Some(64));
        assert!(!p.push(&m, &frame(99, 64)).unwrap(), "still full until released");
        c.release(&m);
        assert!(p.push(&m, &frame(99, 64)).unwrap());
    }

    #[test]
    fn the_free_running_indices_wrap_around_u32() {
        let m = VecRing::default();
        let start = u32::MAX - 5;
        m.store(PROD_OFFSET, start);
        m.store(CONS_OFFSET, start);
        let (mut p, mut c) = (Producer { prod: start, slots: SLOTS }, Consumer { cons: start, slots: SLOTS });
        let mut buf = [0u8; MTU_FRAME];
        for i in 0..20 {
            assert!(p.push(&m, &frame(i, 100)).unwrap());
            p.publish(&m);
            assert_eq!(c.pop(&m, &mut buf).unwrap(), Some(100));
            c.release(&m);
        }
        assert_eq!(p.index(), 14u32);
    }

    #[test]
    fn a_lying_producer_is_caught() {
        let m = VecRing::default();
        let mut c = Consumer::new(SLOTS);
        let mut buf = [0u8; MTU_FRAME];
        // prod beyond the ring size.
        m.store(PROD_OFFSET, SLOTS + 1);
        assert_eq!(c.pop(&m, &mut buf), Err(RingError::BadIndex { prod: SLOTS + 1, cons: 0, slots: SLOTS }));
        // prod moved backwards (wraps to a huge distance).
        m.store(PROD_OFFSET, u32::MAX);
        assert!(matches!(c.pop(&m, &mut buf), Err(RingError::BadIndex { .. })));
        // Bad lengths: zero, a runt, oversized, bigger than our buffer.
        for len in [0u16, 13, (MTU_FRAME + 1) as u16, u16::MAX] {
            let m = VecRing::default();
            m.write(SLOTS_OFFSET, &len.to_le_bytes());
            m.store(PROD_OFFSET, 1);
            let mut c = Consumer::new(SLOTS);
            assert_eq!(c.pop(&m, &mut buf), Err(RingError::BadLength { index: 0, len }));
            c.skip(&m).unwrap();
            assert_eq!(c.pending(&m), Ok(0), "a bad frame can be skipped");
        }
        let m = VecRing::default();
        m.write(SLOTS_OFFSET, &100u16.to_le_bytes());
        m.store(PROD_OFFSET, 1);
        let mut small = [0u8; 50];
        assert!(matches!(Consumer::new(SLOTS).pop(&m, &mut small), Err(RingError::BadLength { .. })));
    }

    #[test]
    fn a_lying_consumer_is_caught() {
        let m = VecRing::default();
        let mut p = Producer::new(SLOTS);
        // cons ahead of prod (moved past what was produced).
        m.store(CONS_OFFSET, 5);
        assert!(matches!(p.push(&m, &frame(0, 64)), Err(RingError::BadIndex { .. })));
        assert!(matches!(p.space(&m), Err(RingError::BadIndex { .. })));
    }

    #[test]
    fn producers_refuse_bad_frames() {
        let m = VecRing::default();
        let mut p = Producer::new(SLOTS);
        assert!(matches!(p.push(&m, &[0; 10]), Err(RingError::BadLength { .. })));
        assert!(matches!(p.push(&m, &[0; MTU_FRAME + 1]), Err(RingError::BadLength { .. })));
        assert_eq!(p.index(), 0);
    }

    #[test]
    fn random_garbage_in_shared_memory_never_panics_the_consumer() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = [0u8; MTU_FRAME];
        for _ in 0..2000 {
            let m = VecRing::default();
            for _ in 0..64 {
                let at = (next() as usize) % (RING_BYTES - 4);
                m.store(at & !3, next() as u32);
            }
            let mut c = Consumer { cons: next() as u32 % 64, slots: SLOTS };
            for _ in 0..40 {
                match c.pop(&m, &mut buf) {
                    Ok(Some(n)) => assert!((MIN_FRAME..=MTU_FRAME).contains(&n)),
                    Ok(None) => break,
                    Err(RingError::BadLength { .. }) => c.skip(&m).unwrap_or(()),
                    Err(RingError::BadIndex { .. }) => break,
                }
            }
        }
    }
}
