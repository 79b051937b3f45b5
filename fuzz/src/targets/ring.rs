//! The hypervisor's ring consumer (`abi::ring::Consumer`, the guest's TX
//! ring) and producer (`abi::ring::Producer`, the guest's RX ring, whose
//! `cons` the guest owns), over a byte array whose indices and slots the
//! fuzzer writes between calls and, through scheduled tampering, in the
//! middle of a call (between the consumer's read of `prod` and of an
//! entry's header, or between the header and the frame).
//!
//! Invariants: no access outside the ring's region (the memory asserts
//! it); a frame is `MIN_FRAME..=max_frame(slots)` bytes, fits the caller's
//! buffer and lies in one piece before the ring's end; its bytes and
//! header are the ring's (when nothing changed during the call); the
//! consumer's index only moves forward, never past the `prod` it was
//! shown; the producer never reports more space than the ring has, never
//! writes outside the slots it reserved, and moves its index by the
//! frame's span plus at most the padding to the ring's end.

use std::cell::{Cell, RefCell};

use abi::ring::{
    CONS_OFFSET, Consumer, HEADER, MAX_FRAME, MIN_FRAME, MTU_FRAME, PROD_OFFSET, Producer, RingError, RingMemory, SLOT_SIZE, SLOTS_OFFSET,
    flags, max_frame, ring_bytes, span,
};

use crate::input::Input;

/// A ring region that checks every access and applies scheduled writes
/// when the access counter reaches their time.
struct FuzzRing {
    bytes: RefCell<Vec<u8>>,
    accesses: Cell<u32>,
    /// `(at access number, offset, value)`.
    tampers: RefCell<Vec<(u32, usize, u32)>>,
    /// Tampers applied so far.
    tampered: Cell<u32>,
}

impl FuzzRing {
    fn new(slots: u32) -> Self {
        Self {
            bytes: RefCell::new(vec![0; ring_bytes(slots)]),
            accesses: Cell::new(0),
            tampers: RefCell::new(Vec::new()),
            tampered: Cell::new(0),
        }
    }

    fn size(&self) -> usize {
        self.bytes.borrow().len()
    }

    /// Counts an access to `[offset, offset + len)`, checks it, and first
    /// applies the tampers that are due.
    fn access(&self, offset: usize, len: usize) {
        let n = self.accesses.get();
        self.accesses.set(n.wrapping_add(1));
        let due: Vec<_> = self.tampers.borrow().iter().filter(|t| t.0 == n).copied().collect();
        for (_, at, v) in due {
            self.poke(at, &v.to_le_bytes());
            self.tampered.set(self.tampered.get() + 1);
        }
        let end = offset.checked_add(len).expect("ring access range wraps");
        assert!(end <= self.size(), "ring access {offset:#x}+{len:#x} outside the {:#x}-byte region", self.size());
    }

    /// Writes as the peer does, clipped to the region.
    fn poke(&self, at: usize, src: &[u8]) {
        let mut b = self.bytes.borrow_mut();
        let at = at.min(b.len());
        let n = src.len().min(b.len() - at);
        b[at..at + n].copy_from_slice(&src[..n]);
    }

    fn peek_u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes.borrow()[at..at + 4].try_into().unwrap())
    }
}

// Single-threaded memory; every access is checked against the region (an
// access outside it panics, which is the bug the target looks for).
impl RingMemory for FuzzRing {
    fn load(&self, offset: usize) -> u32 {
        self.access(offset, 4);
        self.peek_u32(offset)
    }
    fn store(&self, offset: usize, v: u32) {
        self.access(offset, 4);
        self.bytes.borrow_mut()[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn read(&self, offset: usize, dst: &mut [u8]) {
        self.access(offset, dst.len());
        dst.copy_from_slice(&self.bytes.borrow()[offset..offset + dst.len()]);
    }
    fn write(&self, offset: usize, src: &[u8]) {
        self.access(offset, src.len());
        self.bytes.borrow_mut()[offset..offset + src.len()].copy_from_slice(src);
    }
}

fn slot_of(index: u32, slots: u32) -> usize {
    SLOTS_OFFSET + (index & (slots - 1)) as usize * SLOT_SIZE
}

/// An index near `base`, or anything.
fn index(inp: &mut Input<'_>, base: u32, slots: u32) -> u32 {
    match inp.u8() % 4 {
        0 | 1 => base.wrapping_add(inp.u8() as u32 % (slots + 3)),
        2 => base.wrapping_sub(1 + inp.u8() as u32),
        _ => inp.u32(),
    }
}

/// A ring offset: an index word, a slot's length, or anywhere.
fn offset(inp: &mut Input<'_>, slots: u32, size: usize) -> usize {
    match inp.u8() % 4 {
        0 => PROD_OFFSET,
        1 => CONS_OFFSET,
        2 => slot_of(inp.u8() as u32, slots),
        _ => inp.u32() as usize % size,
    }
}

/// A frame length: valid, just outside, around a slot or ring limit, or
/// anything.
fn frame_len(inp: &mut Input<'_>, slots: u32) -> u16 {
    let max = max_frame(slots) as u16;
    match inp.u8() % 5 {
        0 => MIN_FRAME as u16 + inp.u8() as u16,
        1 => MTU_FRAME as u16 - inp.u8() as u16 % 8,
        2 => [0, 1, 13, 14, 1514, 1515, 2044, 2045, 4092, 4093, max, max.saturating_add(1), u16::MAX][inp.below(13)],
        3 => max - inp.u16() % max,
        _ => inp.u16(),
    }
}

/// An entry's header bytes: a length and flags (padding sometimes).
fn header(inp: &mut Input<'_>, slots: u32) -> [u8; HEADER] {
    let len = frame_len(inp, slots);
    let fl = match inp.u8() % 4 {
        0 => flags::PAD,
        1 => inp.u16(),
        _ => flags::TX_CSUM_BLANK,
    };
    let mut h = [0u8; HEADER];
    h[..2].copy_from_slice(&len.to_le_bytes());
    h[2..].copy_from_slice(&fl.to_le_bytes());
    h
}

/// Checks a frame the consumer returned against the ring it read.
fn check_frame(f: abi::ring::Frame, slots: u32, size: usize, snapshot: Option<&[u8]>) {
    assert!((MIN_FRAME..=max_frame(slots)).contains(&f.len), "a {}-byte frame", f.len);
    let start = f.at - HEADER;
    assert!(start >= SLOTS_OFFSET && (start - SLOTS_OFFSET).is_multiple_of(SLOT_SIZE), "frame at {:#x}", f.at);
    assert!(f.at + f.len <= size, "frame {:#x}+{} past the ring's end", f.at, f.len);
    assert!(span(f.len) as usize * SLOT_SIZE <= size - start);
    if let Some(b) = snapshot {
        assert_eq!(u16::from_le_bytes([b[start], b[start + 1]]) as usize, f.len);
        assert_eq!(u16::from_le_bytes([b[start + 2], b[start + 3]]), f.flags);
        assert_eq!(f.flags & flags::PAD, 0, "padding returned as a frame");
    }
}

pub fn ring(data: &[u8]) {
    let mut inp = Input::new(data);
    let slots = 2u32 << inp.below(9); // 2..=512
    let tx = FuzzRing::new(slots);
    let rx = FuzzRing::new(slots);
    let size = tx.size();
    let mut consumer = Consumer::new(slots);
    let mut producer = Producer::new(slots);
    let mut buf = vec![0u8; MAX_FRAME + 64];
    let mut reserved: Option<(usize, usize)> = None;
    // The `prod` a peek was shown last (a skip after it passes the frame
    // that peek checked, even if the peer has moved `prod` back since).
    let mut peeked_prod: Option<u32> = None;
    // Whether the consumer's last call was a peek (whose frame a skip passes).
    let mut last_was_peek = false;

    for _ in 0..200 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let cons = consumer.index();
        match op % 14 {
            // The guest (producer of TX) publishes an index.
            0 => tx.poke(PROD_OFFSET, &index(&mut inp, cons, slots).to_le_bytes()),
            // It writes an entry's header, or a frame's bytes.
            1 => {
                let i = inp.u8() as u32;
                let h = header(&mut inp, slots);
                tx.poke(slot_of(cons.wrapping_add(i), slots), &h);
            }
            2 => {
                let at = offset(&mut inp, slots, size);
                let n = inp.u8() as usize;
                tx.poke(at, inp.bytes(n));
            }
            // It schedules a write in the middle of the next call(s).
            3 => {
                let when = tx.accesses.get().wrapping_add(inp.u8() as u32 % 6);
                let at = offset(&mut inp, slots, size);
                let v = if inp.bool() { u32::from_le_bytes(header(&mut inp, slots)) } else { index(&mut inp, cons, slots) };
                tx.tampers.borrow_mut().push((when, at, v));
            }
            // The hypervisor consumes: pop, peek, skip.
            4..=7 => {
                let before = tx.tampered.get();
                let prod = tx.peek_u32(PROD_OFFSET);
                let snapshot = tx.bytes.borrow().clone();
                let result = match op % 14 {
                    4 | 5 => {
                        let cap = if op & 0x80 != 0 { inp.u32() as usize % buf.len() } else { buf.len() };
                        let r = consumer.pop(&tx, &mut buf[..cap]);
                        if let Ok(Some(f)) = r {
                            assert!(f.len <= cap, "popped a {}-byte frame into {cap} bytes", f.len);
                            if tx.tampered.get() == before {
                                assert_eq!(&buf[..f.len], &snapshot[f.at..f.at + f.len], "popped bytes are not the ring's");
                            }
                        }
                        r.map(|f| f.map(|f| (f, true)))
                    }
                    6 => consumer.peek(&tx).map(|f| f.map(|f| (f, false))),
                    _ => consumer.skip(&tx).map(|()| None),
                };
                let calm = tx.tampered.get() == before;
                let moved = consumer.index().wrapping_sub(cons);
                assert!(moved <= slots, "the consumer moved {moved} in a {slots}-slot ring");
                let mut shown = prod.wrapping_sub(cons);
                if op % 14 == 7
                    && let Some(p) = peeked_prod
                    && p.wrapping_sub(cons) <= slots
                {
                    shown = shown.max(p.wrapping_sub(cons));
                }
                let known = op % 14 != 7 || !last_was_peek || peeked_prod.is_some();
                if calm && known {
                    assert!(moved <= shown, "the consumer passed prod {prod} (from {cons} by {moved})");
                }
                // A peek, or a pop refused (its frame too big for the
                // buffer, or a lying header), leaves what a skip passes.
                last_was_peek = op % 14 == 6 || (op % 14 != 7 && matches!(result, Err(RingError::BadLength { .. })));
                peeked_prod = Some(prod).filter(|_| calm && last_was_peek);
                match result {
                    Ok(Some((f, popped))) => {
                        check_frame(f, slots, size, calm.then_some(&snapshot[..]));
                        if popped && calm {
                            assert_eq!(slot_of(consumer.index().wrapping_sub(span(f.len)), slots) + HEADER, f.at);
                        }
                    }
                    Ok(None) => {
                        if calm && op % 14 != 7 {
                            assert_eq!(prod, consumer.index(), "empty while prod {prod} != cons {}", consumer.index());
                        }
                    }
                    Err(RingError::BadIndex { cons: c, slots: s, .. }) => assert_eq!((c, s), (cons, slots)),
                    Err(RingError::BadLength { .. }) => {}
                }
            }
            8 => match consumer.pending(&tx) {
                Ok(n) => assert!(n <= slots, "{n} pending in a {slots}-slot ring"),
                Err(RingError::BadIndex { prod, cons: c, .. }) => {
                    assert_eq!(c, cons);
                    assert!(prod.wrapping_sub(c) > slots);
                }
                Err(e) => panic!("pending returned {e:?}"),
            },
            9 => {
                consumer.release(&tx);
                let now = tx.peek_u32(CONS_OFFSET);
                // Tampers fire before an access, so the store is what stays.
                assert_eq!(now, consumer.index(), "release published {now}");
            }
            // The guest (consumer of RX) publishes its index; the hypervisor produces.
            10 => rx.poke(CONS_OFFSET, &index(&mut inp, producer.index().wrapping_sub(slots), slots).to_le_bytes()),
            11 => {
                let n = frame_len(&mut inp, slots) as usize;
                let frame = vec![0x5a; n];
                let before = producer.index();
                let to_end = slots - (before & (slots - 1));
                let fits = producer.fits(&rx, n);
                match producer.push(&rx, &frame, flags::RX_CSUM_OK) {
                    Ok(true) => {
                        assert!((MIN_FRAME..=max_frame(slots)).contains(&n));
                        let moved = producer.index().wrapping_sub(before);
                        assert!(moved == span(n) || moved == to_end + span(n), "moved {moved} for {n} bytes");
                        assert_eq!(fits, Ok(true));
                    }
                    Ok(false) => {
                        let moved = producer.index().wrapping_sub(before);
                        assert!(moved == 0 || moved == to_end, "moved {moved} without a frame");
                        assert_eq!(fits, Ok(false));
                    }
                    Err(_) => assert_eq!(producer.index(), before),
                }
                reserved = None;
            }
            12 => {
                let n = frame_len(&mut inp, slots) as usize;
                match producer.reserve(&rx, n) {
                    Ok(Some(at)) => {
                        assert!((MIN_FRAME..=max_frame(slots)).contains(&n));
                        assert_eq!(at, slot_of(producer.index(), slots) + HEADER);
                        assert!(at + n <= size);
                        rx.write(at, &vec![0xa5; n]);
                        reserved = Some((at, n));
                    }
                    Ok(None) | Err(_) => reserved = None,
                }
            }
            _ => {
                if let Some((_, n)) = reserved.take() {
                    producer.commit(&rx, n, flags::RX_CSUM_OK);
                }
                producer.publish(&rx);
                match producer.space(&rx) {
                    Ok(free) => assert!(free <= slots),
                    Err(RingError::BadIndex { .. }) => {}
                    Err(e) => panic!("space returned {e:?}"),
                }
            }
        }
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // 16 slots: frames of 60, 1514 and 14 bytes, popped, released.
        vec![3, 1, 0, 0, 60, 1, 1, 1, 0, 0, 0, 1, 2, 2, 0, 0, 4, 4, 4, 4, 9, 8],
        // A lying prod, a bad length, skip, release.
        vec![2, 0, 3, 0, 0, 0x40, 1, 0, 2, 4, 2, 5, 7, 9],
        // Tampering with the header between prod and the entry read.
        vec![3, 0, 0, 3, 1, 3, 2, 0, 0, 60, 4, 3, 1, 2, 0, 2, 8, 4, 6, 9],
        // The RX side: push, reserve/commit, publish, a lying cons.
        vec![6, 11, 0, 60, 12, 1, 13, 10, 0, 3, 11, 2, 5, 13, 10, 3, 0xff, 0xff, 0xff, 0xff, 13],
        // Large frames and padding on the RX side of a 4-slot ring.
        vec![1, 11, 2, 8, 11, 2, 8, 13, 11, 3, 0, 0, 13, 10, 0, 2, 11, 2, 9, 13],
    ]
}
