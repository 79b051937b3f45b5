//! One guest's vNIC as the back end holds it: the memory of its two rings
//! and its event page, the TX ring's consumer with the sender's rate
//! limits, the RX ring's producer behind a gate, and its counters.
//!
//! Rules:
//! - The ring memory ([`GuestRing`]) and the event page ([`GuestEvents`])
//!   are the guest's own pages, made by the arch layer from frames it
//!   allocated or the guest's creation mapped; nothing here can name a
//!   physical address.
//! - Every access to the RX ring and every event raised for a delivery
//!   runs under the RX gate ([`Gate`]) while it is open; the back end's
//!   `disconnect` closes it before the guest's pages may be freed.
//! - The TX ring is reached only under the TX lock, the RX ring only under
//!   the RX gate's lock; the lock order is the back end's
//!   (`net::backend`): TX, then the switch, then RX.
//! - A guest that moves an index somewhere impossible is counted in
//!   `ring_errors`; the back end disconnects it when it is the TX side.

use super::gate::Gate;
use super::switch::{INSPECT_BYTES, PortId, may_flood};
use crate::limit::TokenBucket;
use abi::ring::{Consumer, Producer, RingMemory};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// The memory of one of a guest's rings (its index block in the guest's
/// event page, its slots in pages of their own), as [`RingMemory`]
/// addresses it, plus the one copy between two guests' rings.
pub trait GuestRing: RingMemory + Send + Sync {
    /// Copies `len` bytes at `from` in this ring to `to` in `dst` (both at
    /// or above `SLOTS_OFFSET`, inside their rings): the packet's one copy
    /// from a sender's TX slot into a receiver's RX slot.
    fn copy_to(&self, from: usize, dst: &Self, to: usize, len: usize);
    /// Bytes of the pages that hold its slots (charged to the guest; 0
    /// while they are not made).
    fn slot_bytes(&self) -> u64;
    /// Whether its slot pages are made. A ring made without them (its
    /// guest's first touch makes them: `GuestMemory::defer_rings`) reads
    /// as zeroes and takes no write; the back end treats its RX ring as
    /// full and wakes the guest with `NET_RX`, whose CPU then makes them
    /// before it runs (`Machine::make_rings`).
    fn ready(&self) -> bool;
    /// Its slot pages, just made, in ring order (ignored once it is
    /// ready: a guest's ring pages never change while its port is open).
    fn provide(&self, pages: &[crate::mm::PhysAddr]);
    /// Bytes the hypervisor's heap holds for it beyond its own size.
    fn record_bytes(&self) -> u64;
}

/// A guest's event page: the bits the guest waits on (`abi::time::events`).
pub trait GuestEvents: Send + Sync {
    /// Sets `bits` atomically (other CPUs set bits at the same time, and
    /// the guest clears them with an atomic AND).
    fn raise(&self, bits: u64);
    /// The bits pending now.
    fn pending(&self) -> u64;
}

/// Why a guest's ring could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum RingAllocError<E> {
    /// The machine is out of memory.
    NoMemory,
    /// The caller could not map a page into the guest (the page was freed).
    Map(E),
}

/// The frame at the head of a TX ring waits for room in the ring of its
/// one receiver (`dest`), since `since_ns` (see `net::backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Wait {
    pub(super) dest: PortId,
    pub(super) since_ns: u64,
}

/// A vNIC's TX side: the ring's consumer and the sender's rate limits.
pub(super) struct Tx {
    pub(super) ring: Consumer,
    packets: TokenBucket,
    bytes: TokenBucket,
    broadcasts: TokenBucket,
    /// Frames dropped for being over a limit.
    limited: u64,
    /// The head frame's wait for a full receiver, if it waits.
    pub(super) wait: Option<Wait>,
    /// Times the head frame began to wait.
    pub(super) waits: u64,
}

impl Tx {
    /// Whether the sender's limits let this frame through now (if not, it
    /// is counted and dropped). Only a frame the switch may flood takes a
    /// broadcast token: ARP, which it answers or sends to the uplink only,
    /// is one frame like any other (a client that opens connections to
    /// many guests asks for each one's MAC).
    pub(super) fn allows(&mut self, now_ns: u64, header: &[u8; INSPECT_BYTES], len: usize) -> bool {
        let ok =
            self.packets.take(now_ns, 1) && self.bytes.take(now_ns, len as u64) && (!may_flood(header) || self.broadcasts.take(now_ns, 1));
        self.limited += u64::from(!ok);
        ok
    }

    /// Charges `extra` more copies of a `len`-byte frame that `allows` let
    /// through (the copies of a flood past the first): taken whether or
    /// not the buckets hold that much, the sender's next frames wait until
    /// its rate has paid them off. So over any time a guest makes the
    /// hypervisor copy at most its limits' worth of frames and bytes, plus
    /// one flood.
    pub(super) fn charge_copies(&mut self, now_ns: u64, extra: u32, len: usize) {
        if extra > 0 {
            self.packets.charge(now_ns, u64::from(extra));
            self.bytes.charge(now_ns, u64::from(extra).saturating_mul(len as u64));
        }
    }
}

/// One guest's vNIC back end, over its ring memory `R` and event page `E`.
pub struct Port<R, E> {
    pub switch_port: PortId,
    pub tenant: u32,
    /// The TX ring (the guest produces) and the RX ring (the back end
    /// produces); their pages stay the guest's while the port is open.
    pub(super) tx_ring: R,
    pub(super) rx_ring: R,
    /// The guest's event page.
    pub events: E,
    pub(super) tx: Mutex<Tx>,
    /// The RX producer behind a gate (`net::gate`): closed by
    /// `disconnect` before the guest's pages may be freed, and every
    /// delivery and event runs under it while it is open.
    pub(super) rx: Gate<Producer>,
    pub ring_errors: AtomicU64,
    /// Frames from the host for this guest that its full RX ring never
    /// took: flooded ones it had no room for, and ones that found its
    /// queue full, waited too long, or were waiting when its vNIC went.
    uplink_dropped: AtomicU64,
    /// Frames the switch dropped as spoofed (`DropReason::is_spoof`),
    /// counted from its verdicts here so that the count outlives the
    /// switch port.
    pub spoofed: AtomicU64,
    /// Frames from other guests its full RX ring refused: flooded ones it
    /// had no room for, and unicast ones whose sender's bounded wait ran
    /// out or that came while it was stalled.
    rx_full_drops: AtomicU64,
    /// Since when (ns; 0: not) its RX ring has been short of room: set
    /// when a sender first has to wait for it, cleared by a delivery that
    /// leaves room for a frame of its MTU (it has caught up). The bounded
    /// wait runs from here, so a receiver that frees a slot now and then
    /// cannot hold its senders one bound per frame.
    pub(super) full_since_ns: AtomicU64,
    /// Its RX ring stayed short of room past the bounded wait: frames for
    /// it are dropped at once when they do not fit, until it catches up.
    pub(super) stalled: AtomicBool,
    /// It is in the back end's list of senders waiting for a receiver.
    pub(super) listed: AtomicBool,
    /// Its ARP requests the switch answered itself, counted from its
    /// verdicts here likewise.
    pub arp_answered: AtomicU64,
    /// Frames it sent that a receiver could not take for their size (over
    /// the uplink's `MTU_FRAME`, or the receiver ring's `max_frame`),
    /// dropped for that receiver.
    pub oversize: AtomicU64,
    /// Frames from the host for it with a wrong checksum (or a malformed
    /// IPv4 header), dropped (`net::csum::verify`).
    pub bad_checksums: AtomicU64,
}

impl<R: GuestRing, E: GuestEvents> Port<R, E> {
    /// A port over rings of `slots` slots in `tx_ring` and `rx_ring`, and
    /// the guest's event page `events`.
    pub fn new(switch_port: PortId, tenant: u32, slots: u32, limits: &abi::bundle::Limits, tx_ring: R, rx_ring: R, events: E) -> Self {
        Self {
            switch_port,
            tenant,
            tx_ring,
            rx_ring,
            events,
            tx: Mutex::new(Tx {
                ring: Consumer::new(slots),
                packets: TokenBucket::new(limits.nic_packets),
                bytes: TokenBucket::new(limits.nic_bytes),
                broadcasts: TokenBucket::new(limits.nic_broadcasts),
                limited: 0,
                wait: None,
                waits: 0,
            }),
            rx: Gate::new(Producer::new(slots)),
            ring_errors: AtomicU64::new(0),
            uplink_dropped: AtomicU64::new(0),
            spoofed: AtomicU64::new(0),
            rx_full_drops: AtomicU64::new(0),
            full_since_ns: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            listed: AtomicBool::new(false),
            arp_answered: AtomicU64::new(0),
            oversize: AtomicU64::new(0),
            bad_checksums: AtomicU64::new(0),
        }
    }

    /// This port with the back end's indices at `(tx, rx)`: its TX
    /// consumer's and RX producer's (a clone's, which go on from its
    /// template's; the guest's own indices in its copied heap match).
    pub fn starting_at(self, (tx, rx): (u32, u32)) -> Self {
        let slots = self.tx.lock().ring.slots();
        self.tx.lock().ring = Consumer::at(slots, tx);
        *self.rx.lock().0 = Producer::at(slots, rx);
        self
    }

    /// Sets event bits in the guest's event page, unless the port is closed.
    /// Its guest may have ended and its event page be free again (or a
    /// page table by now): `disconnect` closes the RX gate before the guest
    /// is destroyed, so the page stays the guest's while the gate is open
    /// (the gate's host test destroys a receiver under delivering threads).
    pub fn notify(&self, bits: u64) -> bool {
        self.rx.with(|_| self.events.raise(bits)).is_some()
    }

    /// Its rings' slot pages, just made (`GuestRing::provide`).
    pub fn provide_rings(&self, tx: &[crate::mm::PhysAddr], rx: &[crate::mm::PhysAddr]) {
        self.tx_ring.provide(tx);
        self.rx_ring.provide(rx);
    }

    /// Whether its RX ring's slot pages are made (else it takes nothing).
    pub fn rx_ready(&self) -> bool {
        self.rx_ring.ready()
    }

    /// Bytes of the guest's ring slots (both rings; 0 until made).
    pub fn ring_bytes(&self) -> u64 {
        self.tx_ring.slot_bytes() + self.rx_ring.slot_bytes()
    }

    /// Frames dropped for being over the sender's rate limits.
    pub fn limited(&self) -> u64 {
        self.tx.lock().limited
    }

    /// Times its TX ring's head frame waited for a full receiver.
    pub fn tx_waits(&self) -> u64 {
        self.tx.lock().waits
    }

    /// Frames from other guests lost to its full RX ring.
    pub fn rx_full_drops(&self) -> u64 {
        self.rx_full_drops.load(Ordering::Relaxed)
    }

    pub(super) fn count_rx_full_drop(&self) {
        self.rx_full_drops.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames from the host lost to this guest's full RX ring.
    pub fn uplink_dropped(&self) -> u64 {
        self.uplink_dropped.load(Ordering::Relaxed)
    }

    pub(super) fn count_uplink_drops(&self, n: usize) {
        if n > 0 {
            self.uplink_dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts a frame it sent that a receiver could not take for its size.
    pub(super) fn count_oversize(&self) {
        self.oversize.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a ring the guest broke (an index moved somewhere impossible,
    /// a bad length).
    pub(super) fn count_ring_error(&self) {
        self.ring_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes the hypervisor holds for this port.
    pub fn record_bytes(&self) -> u64 {
        core::mem::size_of::<Self>() as u64 + self.tx_ring.record_bytes() + self.rx_ring.record_bytes()
    }
}

/// A guest's pages in ordinary memory, for host tests of the back end and
/// of what drives it.
#[cfg(test)]
pub mod testing {
    use super::*;
    use abi::ring::SLOTS_OFFSET;
    use abi::ring::testing::SharedRing;

    impl GuestRing for SharedRing {
        fn copy_to(&self, from: usize, dst: &Self, to: usize, len: usize) {
            let mut buf = alloc::vec![0u8; len];
            self.read(from, &mut buf);
            dst.write(to, &buf);
        }
        fn slot_bytes(&self) -> u64 {
            if self.is_ready() { (self.bytes() - SLOTS_OFFSET) as u64 } else { 0 }
        }
        fn ready(&self) -> bool {
            self.is_ready()
        }
        fn provide(&self, _pages: &[crate::mm::PhysAddr]) {
            self.set_ready();
        }
        fn record_bytes(&self) -> u64 {
            self.bytes() as u64
        }
    }

    /// An event page that counts the writes it gets after its guest is gone.
    #[derive(Default)]
    pub struct Events {
        pub bits: AtomicU64,
        /// Set when its guest is gone.
        pub freed: AtomicBool,
        /// Events raised after `freed`.
        pub late: AtomicU64,
    }

    impl GuestEvents for Events {
        fn raise(&self, bits: u64) {
            if self.freed.load(Ordering::Acquire) {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
            self.bits.fetch_or(bits, Ordering::AcqRel);
        }
        fn pending(&self) -> u64 {
            self.bits.load(Ordering::Acquire)
        }
    }
}
