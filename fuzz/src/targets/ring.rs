//! The hypervisor's ring consumer (`abi::ring::Consumer`, the guest's TX
//! ring) and producer (`abi::ring::Producer`, the guest's RX ring, whose
//! `cons` the guest owns), over a byte array whose indices and slots the
//! fuzzer writes between calls and, through scheduled tampering, in the
//! middle of a call (between the consumer's read of `prod` and of a
//! slot's length, or between the length and the frame).
//!
//! Invariants: no access outside the ring's region (the memory asserts
//! it); a frame is `MIN_FRAME..=MTU_FRAME` bytes and fits the caller's
//! buffer; its bytes are the slot's (when nothing changed during the
//! call); the consumer's index moves by one per frame popped or skipped,
//! and never past what it was shown; the producer never reports more
//! space than the ring has and never writes outside its slot.

use std::cell::{Cell, RefCell};

use abi::ring::{
    CONS_OFFSET, Consumer, MIN_FRAME, MTU_FRAME, PROD_OFFSET, Producer, RingError, RingMemory, SLOT_SIZE, SLOTS_OFFSET, ring_bytes,
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

/// A frame length: valid, just outside, or anything.
fn frame_len(inp: &mut Input<'_>) -> u16 {
    match inp.u8() % 4 {
        0 => MIN_FRAME as u16 + inp.u8() as u16,
        1 => MTU_FRAME as u16 - inp.u8() as u16 % 8,
        2 => [0, 1, 13, 14, 1514, 1515, 2046, 2048, u16::MAX][inp.below(9)],
        _ => inp.u16(),
    }
}

pub fn ring(data: &[u8]) {
    let mut inp = Input::new(data);
    let slots = 2u32 << inp.below(7); // 2..=128
    let tx = FuzzRing::new(slots);
    let rx = FuzzRing::new(slots);
    let size = tx.size();
    let mut consumer = Consumer::new(slots);
    let mut producer = Producer::new(slots);
    // Our model of the consumer's private index: exact, since every move
    // is observable (pop's result; skip's effect is checked via release).
    let mut cons = 0u32;
    let mut buf = vec![0u8; MTU_FRAME + 64];
    let mut reserved: Option<(usize, usize)> = None;

    for _ in 0..200 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        match op % 14 {
            // The guest (producer of TX) publishes an index.
            0 => tx.poke(PROD_OFFSET, &index(&mut inp, cons, slots).to_le_bytes()),
            // It writes a slot's length, or a frame's bytes.
            1 => {
                let i = inp.u8() as u32;
                let len = frame_len(&mut inp);
                tx.poke(slot_of(cons.wrapping_add(i), slots), &len.to_le_bytes());
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
                let v = if inp.bool() { frame_len(&mut inp) as u32 } else { index(&mut inp, cons, slots) };
                tx.tampers.borrow_mut().push((when, at, v));
            }
            // The hypervisor consumes.
            4 | 5 => {
                let cap = if op & 0x80 != 0 { inp.u16() as usize % buf.len() } else { MTU_FRAME };
                let before = tx.tampered.get();
                let prod = tx.peek_u32(PROD_OFFSET);
                let expect_at = slot_of(cons, slots) + 2;
                let snapshot = tx.bytes.borrow().clone();
                match consumer.pop(&tx, &mut buf[..cap]) {
                    Ok(Some(n)) => {
                        assert!((MIN_FRAME..=MTU_FRAME).contains(&n) && n <= cap, "popped a {n}-byte frame into {cap} bytes");
                        if tx.tampered.get() == before {
                            assert!(prod.wrapping_sub(cons) >= 1 && prod.wrapping_sub(cons) <= slots, "popped past prod");
                            assert_eq!(u16::from_le_bytes([snapshot[expect_at - 2], snapshot[expect_at - 1]]) as usize, n);
                            assert_eq!(&buf[..n], &snapshot[expect_at..expect_at + n], "popped bytes are not the slot's");
                        }
                        cons = cons.wrapping_add(1);
                    }
                    Ok(None) => {
                        if tx.tampered.get() == before {
                            assert_eq!(prod, cons, "empty while prod {prod} != cons {cons}");
                        }
                    }
                    Err(RingError::BadIndex { cons: c, slots: s, .. }) => assert_eq!((c, s), (cons, slots)),
                    Err(RingError::BadLength { index, .. }) => assert_eq!(index, cons),
                }
            }
            6 => {
                let before = tx.tampered.get();
                let prod = tx.peek_u32(PROD_OFFSET);
                match consumer.peek(&tx) {
                    Ok(Some((at, n))) => {
                        assert_eq!(at, slot_of(cons, slots) + 2, "peek at another slot");
                        assert!((MIN_FRAME..=MTU_FRAME).contains(&n) && at + n <= size, "peeked {at:#x}+{n}");
                        let mut tmp = vec![0u8; n];
                        tx.read(at, &mut tmp);
                    }
                    Ok(None) => {
                        if tx.tampered.get() == before {
                            assert_eq!(prod, cons);
                        }
                    }
                    Err(_) => {}
                }
            }
            7 => {
                let before = tx.tampered.get();
                let prod = tx.peek_u32(PROD_OFFSET);
                let ok = consumer.skip(&tx).is_ok();
                // Skip moves on iff a frame was pending when it looked.
                if tx.tampered.get() == before {
                    let pending = prod.wrapping_sub(cons);
                    assert_eq!(ok, pending <= slots);
                    if ok && pending > 0 {
                        cons = cons.wrapping_add(1);
                    }
                } else {
                    // Unknown: learn where it is from a release.
                    consumer.release(&tx);
                    cons = tx.peek_u32(CONS_OFFSET);
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
                assert_eq!(now, cons, "release published {now}, expected {cons}");
            }
            // The guest (consumer of RX) publishes its index; the hypervisor produces.
            10 => rx.poke(CONS_OFFSET, &index(&mut inp, producer.index().wrapping_sub(slots), slots).to_le_bytes()),
            11 => {
                let n = frame_len(&mut inp) as usize;
                let frame = vec![0x5a; n];
                let before = producer.index();
                match producer.push(&rx, &frame) {
                    Ok(true) => {
                        assert!((MIN_FRAME..=MTU_FRAME).contains(&n));
                        assert_eq!(producer.index(), before.wrapping_add(1));
                    }
                    Ok(false) | Err(_) => assert_eq!(producer.index(), before),
                }
                reserved = None;
            }
            12 => {
                let n = frame_len(&mut inp) as usize;
                match producer.reserve(&rx, n) {
                    Ok(Some(at)) => {
                        assert!((MIN_FRAME..=MTU_FRAME).contains(&n));
                        assert_eq!(at, slot_of(producer.index(), slots) + 2);
                        assert!(at + n <= size);
                        rx.write(at, &vec![0xa5; n]);
                        reserved = Some((at, n));
                    }
                    Ok(None) | Err(_) => reserved = None,
                }
            }
            _ => {
                if let Some((_, n)) = reserved.take() {
                    producer.commit(&rx, n);
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
        // 16 slots: three frames of 60, 1514 and 14 bytes, popped, released.
        vec![3, 1, 0, 0, 60, 1, 1, 1, 0, 0, 0, 1, 2, 2, 0, 0, 4, 4, 4, 4, 9, 8],
        // A lying prod, a bad length, skip, release.
        vec![2, 0, 3, 0, 0, 0x40, 1, 0, 2, 4, 2, 5, 7, 9],
        // Tampering with the length between prod and the slot read.
        vec![3, 0, 0, 3, 1, 3, 2, 0, 0, 60, 4, 3, 1, 2, 0, 2, 8, 4, 6, 9],
        // The RX side: push, reserve/commit, publish, a lying cons.
        vec![6, 11, 0, 60, 12, 1, 13, 10, 0, 3, 11, 2, 5, 13, 10, 3, 0xff, 0xff, 0xff, 0xff, 13],
    ]
}
