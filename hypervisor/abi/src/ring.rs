//! The virtual NIC's shared rings, written once for both sides.
//!
//! A vNIC is two single-producer/single-consumer rings in memory shared by a
//! guest and the hypervisor: TX (guest produces frames, hypervisor consumes)
//! and RX (hypervisor produces, guest consumes). Each ring has `slots`
//! fixed slots of [`SLOT_SIZE`] bytes (a power of two up to [`SLOTS_MAX`],
//! chosen per guest and told it in `NicInfo`).
//!
//! An entry starts at a slot with a [`HEADER`] of 4 bytes (`u16` LE length,
//! `u16` LE [`flags`]); a frame's bytes follow the header and run on
//! contiguously into the following slots, so a frame of `len` bytes takes
//! [`span`]`(len)` = ceil((4 + len) / SLOT_SIZE) slots. An entry never
//! wraps past the ring's end: when a frame does not fit before the end,
//! the producer first writes a padding entry ([`flags::PAD`], length 0)
//! that takes every slot up to the end, and the consumer skips it. The
//! largest frame a ring carries is [`max_frame`]`(slots)` (half the ring's
//! bytes less the header, at most [`MAX_FRAME`]), so two of them are in
//! flight at once. An entry has no address in it, so a guest cannot point
//! the hypervisor anywhere: the worst it can say is a wrong length, which
//! is checked.
//!
//! Indices are free-running `u32`s counting slots, as in Xen's
//! `io/ring.h`: the producer owns `prod`, the consumer owns `cons`,
//! `prod - cons` (wrapping) is the number of slots in flight, and
//! anything above `slots` means the peer lies. Each side keeps a private
//! copy of its own index and reads the peer's index once per look; the
//! producer writes the entry before publishing `prod` (release), the
//! consumer reads `prod` (acquire) before the entry, and copies the header
//! out of shared memory once before checking it. A header that lies (a
//! length outside `MIN_FRAME..=max_frame`, or an entry that runs past
//! `prod` or the ring's end) cannot say where the next entry starts, so
//! the consumer drops everything published up to the `prod` it read
//! (`RingError::BadLength`; the caller counts it and skips).
//!
//! Memory access goes through [`RingMemory`], so the same code runs over raw
//! pointers in the guest, over physical frames in the hypervisor, and over a
//! byte array in the tests. A ring is addressed as one region: its index
//! block below [`SLOTS_OFFSET`] and its slots from there; the guest's rings
//! keep their index blocks in the shared page and their slots in pages of
//! their own (`layout::NIC_TX_INDICES`, `layout::NIC_TX_RING`).

/// Most slots a ring may have.
pub const SLOTS_MAX: u32 = 2048;
/// Fewest slots a ring may have.
pub const SLOTS_MIN: u32 = 2;
/// Slots per ring unless the manifest says otherwise.
pub const SLOTS_DEFAULT: u32 = 16;
/// Bytes per slot.
pub const SLOT_SIZE: usize = 2048;
/// Bytes of an entry's header: `u16` LE length, `u16` LE flags.
pub const HEADER: usize = 4;
/// Largest frame any ring carries (its length is a `u16`).
pub const MAX_FRAME: usize = 65535;
/// Largest frame on an Ethernet wire (no FCS): 1500 bytes of payload and
/// the header. What the uplink sends and receives; every ring carries it.
pub const MTU_FRAME: usize = 1514;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// The flags of an entry's header. Unknown bits are ignored.
pub mod flags {
    /// TX: the guest left the IPv4 header, TCP, UDP and ICMP checksums
    /// unfilled; the hypervisor fills them for frames that leave the
    /// machine (frames between guests need none).
    pub const TX_CSUM_BLANK: u16 = 1 << 0;
    /// RX: the frame's checksums need not be checked: it never left the
    /// machine, or the hypervisor verified them (frames from the host).
    pub const RX_CSUM_OK: u16 = 1 << 1;
    /// A padding entry: no frame, it takes every slot to the ring's end.
    pub const PAD: u16 = 1 << 15;
}

const _: () = assert!(valid_slots(SLOTS_DEFAULT) && valid_slots(SLOTS_MAX) && valid_slots(SLOTS_MIN));
const _: () = assert!(max_frame(SLOTS_MIN) >= MTU_FRAME && max_frame(SLOTS_MAX) == MAX_FRAME);

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

/// The largest frame a ring of `slots` slots carries (the guest's MTU,
/// Ethernet header included, told it in `NicInfo::mtu`): half the ring's
/// bytes less the header, at most [`MAX_FRAME`]. 16 slots: 16380 bytes;
/// 64 slots and more: 64 KiB less 4 (65532) and 65535.
pub const fn max_frame(slots: u32) -> usize {
    let half = (slots_bytes(slots) / 2).saturating_sub(HEADER);
    if half < MAX_FRAME { half } else { MAX_FRAME }
}

/// Whether a producer at index `prod`, its consumer at `cons`, has room
/// in a ring of `slots` for a frame of `len` bytes, padding included:
/// [`Producer::fits`], for the consumer's side to tell when its producer
/// was out of room (false for an impossible pair of indices).
pub const fn fits_between(prod: u32, cons: u32, slots: u32, len: usize) -> bool {
    let used = prod.wrapping_sub(cons);
    if len < MIN_FRAME || len > max_frame(slots) || used > slots {
        return false;
    }
    let (n, to_end) = (span(len), slots - (prod & (slots - 1)));
    let need = if n > to_end { to_end + n } else { n };
    slots - used >= need
}

/// Slots an entry holding a frame of `len` bytes takes.
pub const fn span(len: usize) -> u32 {
    (HEADER + len).div_ceil(SLOT_SIZE) as u32
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

/// A ring whose bytes can be lent in place (the guest's, and the tests'):
/// a frame is read where it lies in the RX slots and written where it
/// will lie in the TX slots, with no copy. The ring protocol is what makes
/// lending sound: the slots of a peeked entry are the consumer's until it
/// releases them, and reserved slots the producer's until it publishes.
pub trait RingSlices: RingMemory {
    /// Calls `f` on the `len` bytes at `offset` (inside the slots).
    fn with_slice<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Calls `f` on the `len` bytes at `offset` (inside the slots), to write.
    fn with_slice_mut<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R;
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

// Forwards to `T`.
impl<T: RingSlices + ?Sized> RingSlices for &T {
    fn with_slice<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        (**self).with_slice(offset, len, f)
    }
    fn with_slice_mut<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        (**self).with_slice_mut(offset, len, f)
    }
}

/// How a peer broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer's index is more than `slots` ahead of ours (or behind:
    /// an index moved backwards wraps to a huge distance).
    BadIndex { prod: u32, cons: u32, slots: u32 },
    /// An entry's header lies: its length is below [`MIN_FRAME`] or above
    /// the ring's [`max_frame`], or the entry runs past `prod` or the
    /// ring's end (or, for a producer, a frame it was asked to write is
    /// such).
    BadLength { index: u32, len: u16 },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RingError::BadIndex { prod, cons, slots } => {
                write!(f, "producer index {prod} is not within {slots} of consumer index {cons}")
            }
            RingError::BadLength { index, len } => {
                write!(f, "entry at slot index {index} has length {len}, outside the ring's frames or past its end")
            }
        }
    }
}

/// Where in a ring of `slots` slots the slot of index `index` starts.
pub fn slot_offset(index: u32, slots: u32) -> usize {
    SLOTS_OFFSET + (index & (slots - 1)) as usize * SLOT_SIZE
}

/// An entry's header bytes.
fn header(len: usize, flags: u16) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..2].copy_from_slice(&(len as u16).to_le_bytes());
    h[2..].copy_from_slice(&flags.to_le_bytes());
    h
}

/// A frame in a ring: where its bytes are, how many, and its header's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Offset of its first byte in the ring's region (after the header).
    pub at: usize,
    pub len: usize,
    pub flags: u16,
}

/// The producing side of a ring.
#[derive(Debug)]
pub struct Producer {
    /// Our `prod`, never read back from shared memory.
    prod: u32,
    slots: u32,
    /// The last frame committed (for a capture to read it back).
    last: Option<Frame>,
}

impl Producer {
    /// A producer for a fresh ring (both indices 0) of `slots` slots.
    ///
    /// # Panics
    /// If `slots` is not [`valid_slots`] (callers check what they are told).
    pub const fn new(slots: u32) -> Self {
        assert!(valid_slots(slots));
        Self { prod: 0, slots, last: None }
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

    /// The largest frame this ring carries ([`max_frame`]).
    pub fn max_frame(&self) -> usize {
        max_frame(self.slots)
    }

    /// Whether a frame of `len` bytes fits now, padding included (what
    /// [`Producer::reserve`] would say, without writing anything).
    pub fn fits(&self, m: &impl RingMemory, len: usize) -> Result<bool, RingError> {
        let cons = m.load(CONS_OFFSET);
        if self.prod.wrapping_sub(cons) > self.slots {
            return Err(RingError::BadIndex { prod: self.prod, cons, slots: self.slots });
        }
        Ok(fits_between(self.prod, cons, self.slots, len))
    }

    /// [`Producer::fits`] for a producer that waits for the consumer's
    /// signal when the answer is no (`events::NET_TX` for a guest's TX
    /// ring): a "no" is asked again after a full fence, so the index this
    /// producer published is visible to a consumer that gives slots back
    /// and then looks ([`Consumer::release_and_look`]). Either this
    /// producer sees the slots given back, or that consumer sees the ring
    /// it found full and signals: the store-then-load on each side needs
    /// the fence on both.
    pub fn fits_before_wait(&self, m: &impl RingMemory, len: usize) -> Result<bool, RingError> {
        if self.fits(m, len)? {
            return Ok(true);
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.fits(m, len)
    }

    /// Slots from our index to the ring's end.
    fn to_end(&self) -> u32 {
        self.slots - (self.prod & (self.slots - 1))
    }

    /// Writes `frame` (with header `flags`) into the next slots without
    /// publishing it; returns `false` (and writes nothing but maybe a
    /// padding entry) when the ring has no room. Call
    /// [`Producer::publish`] after a batch.
    pub fn push(&mut self, m: &impl RingMemory, frame: &[u8], flags: u16) -> Result<bool, RingError> {
        let Some(at) = self.reserve(m, frame.len())? else { return Ok(false) };
        m.write(at, frame);
        self.commit(m, frame.len(), flags);
        Ok(true)
    }

    /// Reserves the next slots for a frame of `len` bytes that the caller
    /// writes itself at the returned offset (straight from another ring,
    /// or in place); `None` when the ring has no room now. When the frame
    /// does not fit before the ring's end, a padding entry is written (not
    /// published) first, whether or not it then fits. Finish with
    /// [`Producer::commit`] of at most `len` bytes.
    pub fn reserve(&mut self, m: &impl RingMemory, len: usize) -> Result<Option<usize>, RingError> {
        if !(MIN_FRAME..=self.max_frame()).contains(&len) {
            return Err(RingError::BadLength { index: self.prod, len: len.min(u16::MAX as usize) as u16 });
        }
        let n = span(len);
        let mut free = self.space(m)?;
        let to_end = self.to_end();
        if n > to_end {
            if free < to_end {
                return Ok(None);
            }
            m.write(slot_offset(self.prod, self.slots), &header(0, flags::PAD));
            self.prod = self.prod.wrapping_add(to_end);
            free -= to_end;
        }
        Ok((free >= n).then(|| slot_offset(self.prod, self.slots) + HEADER))
    }

    /// Completes a [`Producer::reserve`]d entry holding `len` bytes (at
    /// most what was reserved) with header `flags` (not yet published).
    pub fn commit(&mut self, m: &impl RingMemory, len: usize, flags: u16) {
        let at = slot_offset(self.prod, self.slots);
        m.write(at, &header(len, flags & !flags::PAD));
        self.last = Some(Frame { at: at + HEADER, len, flags });
        self.prod = self.prod.wrapping_add(span(len));
    }

    /// The frame committed last, if any.
    pub fn last(&self) -> Option<Frame> {
        self.last
    }

    /// Makes every pushed frame visible to the consumer.
    pub fn publish(&self, m: &impl RingMemory) {
        m.store(PROD_OFFSET, self.prod);
    }

    /// Slots used so far (our private index).
    pub fn index(&self) -> u32 {
        self.prod
    }

    /// A producer going on from index `prod` of a ring of `slots` slots
    /// (a copy of a ring whose producer was there).
    pub fn at(slots: u32, prod: u32) -> Self {
        Self { prod, ..Self::new(slots) }
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
    /// Slots the entry (or the bad entries) [`Consumer::peek`] saw last
    /// take: what [`Consumer::skip`] passes over. 0: nothing peeked.
    peeked: u32,
}

impl Consumer {
    /// A consumer for a fresh ring of `slots` slots.
    ///
    /// # Panics
    /// If `slots` is not [`valid_slots`].
    pub const fn new(slots: u32) -> Self {
        assert!(valid_slots(slots));
        Self { cons: 0, slots, peeked: 0 }
    }

    /// Slots in this ring.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The largest frame this ring carries ([`max_frame`]).
    pub fn max_frame(&self) -> usize {
        max_frame(self.slots)
    }

    /// Slots in flight (frames and padding), from the producer's index as
    /// it is now.
    pub fn pending(&self, m: &impl RingMemory) -> Result<u32, RingError> {
        let prod = m.load(PROD_OFFSET);
        let n = prod.wrapping_sub(self.cons);
        if n > self.slots {
            return Err(RingError::BadIndex { prod, cons: self.cons, slots: self.slots });
        }
        Ok(n)
    }

    /// Copies the next frame into `buf` and returns it (its `at` is where
    /// it lay in the ring), or `None` if the ring is empty. Its slots are
    /// not released until [`Consumer::release`]. A frame longer than `buf`
    /// is `BadLength` (skip it).
    pub fn pop(&mut self, m: &impl RingMemory, buf: &mut [u8]) -> Result<Option<Frame>, RingError> {
        let Some(f) = self.peek(m)? else { return Ok(None) };
        if f.len > buf.len() {
            return Err(RingError::BadLength { index: self.cons, len: f.len as u16 });
        }
        m.read(f.at, &mut buf[..f.len]);
        self.skip(m)?;
        Ok(Some(f))
    }

    /// The next frame without copying it, or `None` if the ring is empty;
    /// padding before it is passed over. Its header is read once and
    /// checked; the frame stays in place until [`Consumer::skip`]. On
    /// `BadLength` a `skip` drops every slot published so far.
    pub fn peek(&mut self, m: &impl RingMemory) -> Result<Option<Frame>, RingError> {
        self.peeked = 0;
        let mut avail = self.pending(m)?;
        loop {
            if avail == 0 {
                return Ok(None);
            }
            let at = slot_offset(self.cons, self.slots);
            let mut h = [0u8; HEADER];
            m.read(at, &mut h);
            let len = u16::from_le_bytes([h[0], h[1]]);
            let flags = u16::from_le_bytes([h[2], h[3]]);
            let to_end = self.slots - (self.cons & (self.slots - 1));
            if flags & flags::PAD != 0 && to_end <= avail {
                self.cons = self.cons.wrapping_add(to_end);
                avail -= to_end;
                continue;
            }
            let n = span(len as usize);
            if flags & flags::PAD != 0 || !(MIN_FRAME..=self.max_frame()).contains(&(len as usize)) || n > to_end || n > avail {
                self.peeked = avail;
                return Err(RingError::BadLength { index: self.cons, len });
            }
            self.peeked = n;
            return Ok(Some(Frame { at: at + HEADER, len: len as usize, flags }));
        }
    }

    /// Passes over the frame [`Consumer::peek`] returned (or, after a
    /// `BadLength`, everything published up to then); without a peek
    /// before, over the next frame, if there is one.
    pub fn skip(&mut self, m: &impl RingMemory) -> Result<(), RingError> {
        if self.peeked == 0 {
            match self.peek(m) {
                Ok(_) | Err(RingError::BadLength { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.cons = self.cons.wrapping_add(self.peeked);
        self.peeked = 0;
        Ok(())
    }

    /// Gives every slot passed over back to the producer.
    pub fn release(&self, m: &impl RingMemory) {
        m.store(CONS_OFFSET, self.cons);
    }

    /// Gives every slot passed over back to the producer, then (after a
    /// full fence) reads the producer's index: the pair of
    /// [`Producer::fits_before_wait`]. A producer that found the ring full
    /// before this release and waits for a signal had published the index
    /// this returns.
    pub fn release_and_look(&self, m: &impl RingMemory) -> u32 {
        self.release(m);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        m.load(PROD_OFFSET)
    }

    /// Slots consumed so far (our private index).
    pub fn index(&self) -> u32 {
        self.cons
    }

    /// A consumer going on from index `cons` of a ring of `slots` slots
    /// (a copy of a ring whose consumer was there).
    pub fn at(slots: u32, cons: u32) -> Self {
        Self { cons, ..Self::new(slots) }
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

    // Lends the bytes under a `RefCell` borrow (bounds-checked by slice
    // indexing).
    impl RingSlices for VecRing {
        fn with_slice<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            f(&self.0.borrow()[offset..offset + len])
        }
        fn with_slice_mut<R>(&self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
            f(&mut self.0.borrow_mut()[offset..offset + len])
        }
    }

    /// A ring in ordinary memory that threads may share: the hypervisor's
    /// back-end tests deliver to it from several threads while another
    /// plays the guest. Every access is bounds-checked (a bad offset
    /// panics the test); bytes are read and written one by one, index
    /// words as one atomic access each.
    pub struct SharedRing(alloc::boxed::Box<[core::sync::atomic::AtomicU32]>, core::sync::atomic::AtomicBool);

    impl SharedRing {
        /// A zeroed ring region of `slots` slots.
        pub fn new(slots: u32) -> Self {
            Self((0..ring_bytes(slots) / 4).map(|_| core::sync::atomic::AtomicU32::new(0)).collect(), true.into())
        }

        /// A ring whose slot pages are not made yet (the hypervisor's
        /// deferred rings): the tests' back end must not write its slots
        /// before [`SharedRing::set_ready`].
        pub fn deferred(slots: u32) -> Self {
            let r = Self::new(slots);
            r.1.store(false, core::sync::atomic::Ordering::Release);
            r
        }

        /// Whether its slots are made.
        pub fn is_ready(&self) -> bool {
            self.1.load(core::sync::atomic::Ordering::Acquire)
        }

        /// Its slots are made.
        pub fn set_ready(&self) {
            self.1.store(true, core::sync::atomic::Ordering::Release)
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
            assert!(offset < SLOTS_OFFSET || self.is_ready(), "a write to slots not made yet");
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
    use alloc::vec::Vec;

    const SLOTS: u32 = SLOTS_DEFAULT;
    const RING_BYTES: usize = ring_bytes(SLOTS);

    fn frame(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    /// Frame `i`'s length in the wrap tests: small, one slot, a few, the largest.
    fn len_of(i: u32) -> usize {
        match i % 5 {
            0 => 60,
            1 => 14 + (i as usize * 37) % 2000,
            2 => 3000 + (i as usize * 101) % 6000,
            3 => max_frame(SLOTS),
            _ => MTU_FRAME,
        }
    }

    #[test]
    fn the_largest_frames_follow_the_ring_size() {
        assert_eq!([max_frame(2), max_frame(16), max_frame(64), max_frame(128)], [2044, 16380, 65532, 65535]);
        assert_eq!([span(14), span(2044), span(2045), span(65535)], [1, 1, 2, 33]);
        for slots in [2, 4, 16, 64, 128] {
            assert!(span(max_frame(slots)) <= slots / 2, "two of the largest fit in {slots} slots");
        }
    }

    #[test]
    fn frames_cross_in_order_through_many_wraps() {
        let m = VecRing::default();
        let (mut p, mut c) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        let mut buf = alloc::vec![0u8; MAX_FRAME];
        let (mut sent, mut next_expected) = (0u32, 0u32);
        for round in 0..2000u32 {
            let batch = round % 5;
            for _ in 0..batch {
                if !p.push(&m, &frame(sent, len_of(sent)), (sent % 3) as u16).unwrap() {
                    break;
                }
                sent += 1;
            }
            p.publish(&m);
            while let Some(f) = c.pop(&m, &mut buf).unwrap() {
                assert_eq!(&buf[..f.len], &frame(next_expected, len_of(next_expected))[..]);
                assert_eq!(f.flags, (next_expected % 3) as u16);
                next_expected += 1;
            }
            c.release(&m);
        }
        assert_eq!(next_expected, sent);
        assert!(p.index() > 20 * SLOTS, "the ring wrapped many times");
    }

    #[test]
    fn a_frame_that_does_not_fit_before_the_end_goes_after_padding() {
        let m = VecRing::default();
        let (mut p, mut c) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        // 13 one-slot frames, consumed: the producer is 3 slots from the end.
        for i in 0..13 {
            assert!(p.push(&m, &frame(i, 100), 0).unwrap());
        }
        p.publish(&m);
        while c.peek(&m).unwrap().is_some() {
            c.skip(&m).unwrap();
        }
        c.release(&m);
        // A 5-slot frame: padding over slots 13..16, the frame at slot 0.
        let big = frame(99, 4 * SLOT_SIZE);
        assert_eq!(span(big.len()), 5);
        assert!(p.push(&m, &big, flags::RX_CSUM_OK).unwrap());
        p.publish(&m);
        assert_eq!(p.index(), 13 + 3 + 5);
        let mut hdr = [0u8; HEADER];
        m.read(slot_offset(13, SLOTS), &mut hdr);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), flags::PAD);
        let f = c.peek(&m).unwrap().unwrap();
        assert_eq!((f.at, f.len, f.flags), (SLOTS_OFFSET + HEADER, big.len(), flags::RX_CSUM_OK));
        let mut got = alloc::vec![0u8; f.len];
        m.read(f.at, &mut got);
        assert_eq!(got, big);
        c.skip(&m).unwrap();
        assert_eq!((c.index(), c.pending(&m)), (21, Ok(0)));
    }

    #[test]
    fn padding_is_written_even_when_the_frame_then_waits() {
        let m = VecRing::new(4);
        let (mut p, mut c) = (Producer::new(4), Consumer::new(4));
        assert_eq!(max_frame(4), 4092);
        assert!(p.push(&m, &frame(0, 100), 0).unwrap());
        assert!(p.push(&m, &frame(1, 100), 0).unwrap());
        assert!(p.push(&m, &frame(2, 100), 0).unwrap());
        p.publish(&m);
        // One slot to the end, one free: a 2-slot frame pads and waits.
        assert!(!p.fits(&m, 4000).unwrap());
        assert!(!p.push(&m, &frame(3, 4000), 0).unwrap());
        assert_eq!(p.index(), 4, "the padding took the last slot");
        let mut buf = [0u8; 4096];
        for _ in 0..3 {
            assert!(c.pop(&m, &mut buf).unwrap().is_some());
        }
        c.release(&m);
        assert!(p.fits(&m, 4000).unwrap());
        assert!(p.push(&m, &frame(3, 4000), 0).unwrap());
        p.publish(&m);
        let f = c.pop(&m, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..f.len], &frame(3, 4000)[..]);
        assert_eq!(c.index(), 6);
    }

    #[test]
    fn frames_copy_straight_from_one_ring_to_another() {
        let (a, b) = (VecRing::default(), VecRing::default());
        let (mut pa, mut ca) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        let (mut pb, mut cb) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        let mut buf = alloc::vec![0u8; MAX_FRAME];
        for i in 0..200u32 {
            let f = frame(i, len_of(i));
            assert!(pa.push(&a, &f, flags::TX_CSUM_BLANK).unwrap());
            pa.publish(&a);
            let got = ca.peek(&a).unwrap().unwrap();
            assert_eq!((got.len, got.flags), (f.len(), flags::TX_CSUM_BLANK));
            let dst = pb.reserve(&b, got.len).unwrap().unwrap();
            let mut tmp = alloc::vec![0u8; got.len];
            a.read(got.at, &mut tmp);
            b.write(dst, &tmp);
            pb.commit(&b, got.len, flags::RX_CSUM_OK);
            assert_eq!(pb.last(), Some(Frame { at: dst, len: got.len, flags: flags::RX_CSUM_OK }));
            pb.publish(&b);
            ca.skip(&a).unwrap();
            ca.release(&a);
            let out = cb.pop(&b, &mut buf).unwrap().unwrap();
            assert_eq!((out.len, out.flags), (f.len(), flags::RX_CSUM_OK));
            assert_eq!(&buf[..f.len()], &f[..]);
            cb.release(&b);
        }
        assert_eq!(ca.peek(&a), Ok(None));
        assert!(matches!(pb.reserve(&b, 5), Err(RingError::BadLength { .. })));
        assert!(matches!(pb.reserve(&b, max_frame(SLOTS) + 1), Err(RingError::BadLength { .. })));
    }

    #[test]
    fn a_full_ring_refuses_and_nothing_is_lost() {
        let m = VecRing::default();
        let (mut p, mut c) = (Producer::new(SLOTS), Consumer::new(SLOTS));
        for i in 0..SLOTS {
            assert!(p.push(&m, &frame(i, 64), 0).unwrap());
        }
        assert!(!p.push(&m, &frame(99, 64), 0).unwrap(), "full");
        assert!(!p.fits(&m, 64).unwrap());
        p.publish(&m);
        let mut buf = [0u8; MTU_FRAME];
        assert_eq!(c.pop(&m, &mut buf).unwrap().map(|f| f.len), Some(64));
        assert!(!p.push(&m, &frame(99, 64), 0).unwrap(), "still full until released");
        c.release(&m);
        assert!(p.push(&m, &frame(99, 64), 0).unwrap());
    }

    #[test]
    fn the_free_running_indices_wrap_around_u32() {
        let m = VecRing::default();
        let start = u32::MAX - 5;
        m.store(PROD_OFFSET, start);
        m.store(CONS_OFFSET, start);
        let mut p = Producer { prod: start, slots: SLOTS, last: None };
        let mut c = Consumer { cons: start, slots: SLOTS, peeked: 0 };
        let mut buf = alloc::vec![0u8; MAX_FRAME];
        for i in 0..20 {
            assert!(p.push(&m, &frame(i, len_of(i)), 0).unwrap());
            p.publish(&m);
            let f = c.pop(&m, &mut buf).unwrap().unwrap();
            assert_eq!(&buf[..f.len], &frame(i, len_of(i))[..]);
            c.release(&m);
        }
        assert_eq!(p.index(), c.index());
        assert!(p.index() < start, "wrapped");
    }

    /// A ring whose producer published `prod` with the header `len`/`flags`
    /// written at slot `at`.
    fn lying(at: u32, len: u16, fl: u16, prod: u32) -> (VecRing, Consumer) {
        let m = VecRing::default();
        m.write(slot_offset(at, SLOTS), &header(len as usize, fl));
        m.store(PROD_OFFSET, prod);
        m.store(CONS_OFFSET, at);
        (m, Consumer { cons: at, slots: SLOTS, peeked: 0 })
    }

    #[test]
    fn a_lying_producer_is_caught() {
        let m = VecRing::default();
        let mut c = Consumer::new(SLOTS);
        let mut buf = alloc::vec![0u8; MAX_FRAME];
        // prod beyond the ring size.
        m.store(PROD_OFFSET, SLOTS + 1);
        assert_eq!(c.pop(&m, &mut buf), Err(RingError::BadIndex { prod: SLOTS + 1, cons: 0, slots: SLOTS }));
        // prod moved backwards (wraps to a huge distance).
        m.store(PROD_OFFSET, u32::MAX);
        assert!(matches!(c.pop(&m, &mut buf), Err(RingError::BadIndex { .. })));
        // Bad lengths: zero, a runt, over the ring's largest frame.
        for len in [0u16, 13, (max_frame(SLOTS) + 1) as u16, u16::MAX] {
            let (m, mut c) = lying(0, len, 0, 3);
            assert_eq!(c.pop(&m, &mut buf), Err(RingError::BadLength { index: 0, len }));
            c.skip(&m).unwrap();
            assert_eq!(c.pending(&m), Ok(0), "everything published is dropped");
        }
        // A frame that runs past `prod`: 3000 bytes take 2 slots, 1 published.
        let (m, mut c) = lying(0, 3000, 0, 1);
        assert_eq!(c.peek(&m), Err(RingError::BadLength { index: 0, len: 3000 }));
        c.skip(&m).unwrap();
        assert_eq!((c.index(), c.pending(&m)), (1, Ok(0)));
        // A frame that runs past the ring's end (from its last slot).
        let (m, mut c) = lying(SLOTS - 1, 3000, 0, SLOTS + 3);
        assert_eq!(c.peek(&m), Err(RingError::BadLength { index: SLOTS - 1, len: 3000 }));
        c.skip(&m).unwrap();
        assert_eq!(c.index(), SLOTS + 3);
        // Padding that runs past `prod`: 3 slots to the end, 2 published.
        let (m, mut c) = lying(SLOTS - 3, 0, flags::PAD, SLOTS - 1);
        assert!(matches!(c.peek(&m), Err(RingError::BadLength { .. })));
        c.skip(&m).unwrap();
        assert_eq!(c.pending(&m), Ok(0));
        // A frame bigger than the caller's buffer is its own to skip.
        let (m, mut c) = lying(0, 100, 0, 1);
        let mut small = [0u8; 50];
        assert!(matches!(c.pop(&m, &mut small), Err(RingError::BadLength { .. })));
        c.skip(&m).unwrap();
        assert_eq!(c.index(), 1);
    }

    #[test]
    fn every_flipped_header_bit_is_caught_or_harmless() {
        for byte in 0..HEADER {
            for bit in 0..8 {
                let m = VecRing::default();
                let mut p = Producer::new(SLOTS);
                // A 3-slot frame, then a 1-slot one.
                assert!(p.push(&m, &frame(1, 5000), 0).unwrap());
                assert!(p.push(&m, &frame(2, 100), 0).unwrap());
                p.publish(&m);
                let mut h = [0u8; 1];
                m.read(SLOTS_OFFSET + byte, &mut h);
                m.write(SLOTS_OFFSET + byte, &[h[0] ^ (1 << bit)]);
                let mut c = Consumer::new(SLOTS);
                let mut seen = 0;
                loop {
                    match c.peek(&m) {
                        Ok(Some(f)) => {
                            assert!((MIN_FRAME..=max_frame(SLOTS)).contains(&f.len) && f.at + f.len <= RING_BYTES);
                            seen += 1;
                        }
                        Ok(None) => break,
                        Err(RingError::BadLength { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    c.skip(&m).unwrap();
                    assert!(c.index() <= 4, "never past prod");
                }
                assert_eq!(c.index(), 4, "byte {byte} bit {bit}: the consumer ends at prod");
                assert!(seen <= 2);
            }
        }
    }

    #[test]
    fn a_lying_consumer_is_caught() {
        let m = VecRing::default();
        let mut p = Producer::new(SLOTS);
        // cons ahead of prod (moved past what was produced).
        m.store(CONS_OFFSET, 5);
        assert!(matches!(p.push(&m, &frame(0, 64), 0), Err(RingError::BadIndex { .. })));
        assert!(matches!(p.space(&m), Err(RingError::BadIndex { .. })));
        assert!(matches!(p.fits(&m, 64), Err(RingError::BadIndex { .. })));
    }

    #[test]
    fn producers_refuse_bad_frames() {
        let m = VecRing::default();
        let mut p = Producer::new(SLOTS);
        assert!(matches!(p.push(&m, &[0; 10], 0), Err(RingError::BadLength { .. })));
        assert!(matches!(p.push(&m, &alloc::vec![0; max_frame(SLOTS) + 1], 0), Err(RingError::BadLength { .. })));
        assert!(!p.fits(&m, max_frame(SLOTS) + 1).unwrap());
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
        let mut buf = alloc::vec![0u8; MAX_FRAME];
        for _ in 0..2000 {
            let m = VecRing::default();
            for _ in 0..64 {
                let at = (next() as usize) % (RING_BYTES - 4);
                m.store(at & !3, next() as u32);
            }
            let mut c = Consumer { cons: next() as u32 % 64, slots: SLOTS, peeked: 0 };
            for _ in 0..40 {
                match c.pop(&m, &mut buf) {
                    Ok(Some(f)) => assert!((MIN_FRAME..=max_frame(SLOTS)).contains(&f.len) && f.at + f.len <= RING_BYTES),
                    Ok(None) => break,
                    Err(RingError::BadLength { .. }) => c.skip(&m).unwrap_or(()),
                    Err(RingError::BadIndex { .. }) => break,
                }
            }
        }
    }
}
