//! The vNICs' back end: every guest's port, the switch between them, and
//! the uplink to the host.
//!
//! A guest's TX ring is drained when it blocks, yields, is preempted, ends
//! or kicks ([`Net::drain`]): each frame's header is read once (checked),
//! its first [`INSPECT_BYTES`] copied privately, the sender's rate limits
//! checked, the switch decides on that private copy, and the frame (up to
//! 64 KiB) is copied once, from the sender's TX span straight into every
//! receiver's RX span, flagged `RX_CSUM_OK` (between guests no checksum
//! is needed). A frame larger than a receiver takes (the receiver ring's
//! `max_frame`, the uplink's `MTU_FRAME`) is dropped for it and counted
//! on the sender (`oversize`). To the uplink it goes through a buffer,
//! where its checksums are filled if the guest left them blank
//! (`net::csum::fill`). Each receiver then gets `events::NET_RX` and is
//! woken if it sleeps. Every copy past the first is charged to the
//! sender's frame and byte limits after the switch has decided (a
//! broadcast to a tenant of 10,000 ports costs 9,999 more frames), so a
//! guest cannot make the hypervisor copy more than its own limits' worth;
//! an ARP request the switch answers (`net::switch`, rule 5) costs the one
//! frame, and its reply goes back into the sender's own RX ring. A guest
//! that breaks the ring protocol (an index beyond the ring, or moved
//! backwards) is to be disconnected; a lying header only loses what it
//! published (`ring_errors`).
//!
//! Frames from the host ([`Net::poll_uplink`]) have their checksums
//! verified (`net::csum::verify`; a bad one is dropped and counted on the
//! guest it was for, `bad_checksums`) and go to guests flagged
//! `RX_CSUM_OK`. One for a guest whose RX ring is full waits in that
//! guest's own bounded queue (`net::uplink_queue`), never in front of
//! other guests' frames.
//!
//! The back end is generic over the guests' ring memory and event pages
//! ([`GuestRing`], [`GuestEvents`]: the arch layer's direct map in the
//! hypervisor, ordinary memory in the host tests) and over the uplink
//! ([`UplinkDevice`]: the virtio-net driver, or a fake).
//!
//! Lock order, everywhere, `disconnect` included:
//!
//! 1. the uplink's held frames (`held`; only `poll_uplink` and
//!    `disconnect` take it),
//! 2. a sender's TX lock,
//! 3. the switch,
//! 4. a receiver's RX lock (its gate),
//! 5. the uplink device,
//! 6. the capture.
//!
//! Taking a guest's RX lock before the switch once deadlocked two CPUs (a
//! drain delivering to a guest that another CPU disconnected); the host
//! test `the_lock_order_holds_under_drains_polls_and_disconnects` runs
//! that race.

use super::capture::{Capture, CaptureTarget};
use super::csum;
use super::port::{GuestEvents, GuestRing, Port};
use super::switch::{INSPECT_BYTES, Out, PortId, Switch, Verdict, is_multicast};
use super::uplink_queue::{Bounds, Offered, UplinkQueue};
use crate::slot::Slot;
use abi::ring::{MTU_FRAME, Producer, RingError, flags};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

#[cfg(test)]
mod tests;

/// The switch's port to the host: a device that sends and receives
/// Ethernet frames.
pub trait UplinkDevice: Send {
    /// Sends one frame to the host; false if it had no room (dropped).
    fn send(&mut self, frame: &[u8]) -> bool;
    /// Tells the device about the frames `send` queued since the last call
    /// (the back end calls it once per drain or poll that sent some).
    fn flush(&mut self) {}
    /// Whether `send` would find room for a frame now (a sender's frame
    /// for the host waits in its TX ring while this says no).
    fn has_room(&mut self) -> bool {
        true
    }
    /// Copies the next frame from the host into `buf`; its length, or
    /// `None` when none is waiting.
    fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize>;
    /// Tells the device about the receive buffers given back since the
    /// last call (once per batch).
    fn notify_rx(&mut self);
    /// Called after a poll that emptied the device (`receive` said
    /// `None`): a device whose interrupt masks itself when it fires (an
    /// e1000e's auto-mask) unmasks it here, and one already pending fires
    /// at once, so no frame waits without an interrupt. Virtio-net's never
    /// masks itself: nothing to do (with the event index it asks for the
    /// next interrupt in `receive`, before it says `None`).
    fn rearm_interrupt(&mut self) {}
    /// Notifications sent to the device so far (`flush`, `notify_rx`):
    /// each an exit in a VM.
    fn notifies(&self) -> u64 {
        0
    }
}

/// The guests frames went to (id and the port they went into), to be
/// told once the locks are dropped.
type Woken<R, E> = Vec<(usize, Arc<Port<R, E>>)>;

/// Notes guest `g` (port `p`) as woken, once for a run of frames to it.
fn note_woken<R, E>(woken: &mut Woken<R, E>, g: usize, p: &Arc<Port<R, E>>) {
    if woken.last().is_none_or(|(w, wp)| *w != g || !Arc::ptr_eq(wp, p)) {
        woken.push((g, p.clone()));
    }
}

/// The guest behind the switch port a drain pass last looked up: a pass
/// sends most of its frames to one receiver, and the lookup (a slot's
/// lock and a reference count, twice a frame) cost a small frame as much
/// as a third of its copy. Kept for one pass only. A receiver that goes
/// away meanwhile is still found here, but closed: its RX lock says so,
/// and nothing is put into it.
struct Receiver<R, E> {
    at: PortId,
    guest: usize,
    port: Arc<Port<R, E>>,
}

type Receivers<R, E> = Option<Receiver<R, E>>;

/// Where a drain pass notes what a delivery did: the guests to wake, its
/// last receiver, and the time.
struct Delivery<'a, R, E> {
    woken: &'a mut Woken<R, E>,
    receivers: &'a mut Receivers<R, E>,
    now_ns: u64,
}

/// Frames taken from the uplink per poll.
pub const UPLINK_BATCH: usize = 32;

/// The longest a frame for one receiver waits at the head of its sender's
/// TX ring for room in the receiver's RX ring (or the uplink's queue);
/// then it is dropped and counted, the receiver is marked stalled (frames
/// for it are dropped at once when they do not fit, until it has caught
/// up: room for a frame of its MTU), and the sender goes on. For a guest
/// receiver the bound runs from when it first fell short
/// (`Port::full_since_ns`), so one that frees a slot now and then cannot
/// hold a sender one bound per frame. Longer than a receiver that is
/// merely busy or descheduled needs (Xen's netback waits 10 s before it
/// calls a frontend stalled).
pub const MAX_WAIT_NS: u64 = 5_000_000_000;

/// How often senders waiting for the uplink's queue are retried (the
/// device does not interrupt when it finishes sending).
pub const UPLINK_WAIT_RETRY_NS: u64 = 500_000;

/// A sender whose head frame waits for room at `dest`.
struct Waiter<R, E> {
    sender: usize,
    port: Arc<Port<R, E>>,
    dest: PortId,
    since_ns: u64,
}

/// What became of a drain.
enum Drained {
    /// The TX ring is empty (or the guest broke it).
    Done(Result<(), RingBroken>),
    /// Its head frame, `len` bytes, waits for room at `dest`.
    Waiting { dest: PortId, len: usize, since_ns: u64 },
}

/// Why a guest's vNIC must be disconnected: it broke its TX ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBroken(pub RingError);

impl core::fmt::Display for RingBroken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "vNIC TX ring: {}", self.0)
    }
}

/// All vNICs, the switch and the uplink.
pub struct Net<R, E, U> {
    pub switch: Mutex<Switch>,
    /// The port to the host, and its driver.
    pub uplink: Option<(PortId, Mutex<U>)>,
    /// Ports by guest id (room for every guest id there may be at once):
    /// set when a guest is created, emptied when its id is reused, so a
    /// port is found by its switch port (`guest_at`), never by id alone.
    pub ports: Vec<Slot<Port<R, E>>>,
    /// Guest id by switch port slot (`usize::MAX`: none).
    pub guest_of_slot: Vec<AtomicUsize>,
    /// Frames from the host waiting for room in a guest's RX ring, per
    /// guest id (see `poll_uplink`). First in the lock order.
    pub held: Mutex<UplinkQueue<usize>>,
    /// When (monotonic ns) a frame last came from the host.
    pub uplink_rx_ns: AtomicU64,
    /// A packet capture in progress (`ctl capture`), if `capturing`.
    pub capture: Mutex<Capture>,
    pub capturing: AtomicBool,
    /// Senders whose head frame waits for room in one receiver's ring
    /// (`drain`): retried when that receiver leaves a CPU
    /// (`receiver_ran`), or by `retry_waiting` for the uplink, a receiver
    /// that is gone and at the end of the bounded wait. Taken with no other
    /// lock held, and it takes none but the slots' (looking up a port).
    waiters: Mutex<Vec<Waiter<R, E>>>,
    waiter_count: AtomicUsize,
    /// The uplink's queue stayed full past a sender's bounded wait.
    uplink_stalled: AtomicBool,
    /// Frames were sent to the uplink and the device not yet told
    /// (`flush_uplink`).
    uplink_unflushed: AtomicBool,
}

impl<R: GuestRing, E: GuestEvents, U: UplinkDevice> Net<R, E, U> {
    /// This network (with no port yet) with its switch's tables hashed
    /// with `seed` ([`Switch::keyed`]).
    pub fn keyed(self, seed: u64) -> Self {
        Self { switch: Mutex::new(self.switch.into_inner().keyed(seed)), ..self }
    }

    /// No ports yet, room for `guests` guests (and their switch ports).
    pub fn new(guests: usize) -> Self {
        Self {
            switch: Mutex::new(Switch::new()),
            uplink: None,
            ports: (0..guests).map(|_| Slot::default()).collect(),
            guest_of_slot: (0..guests + 1).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            held: Mutex::new(UplinkQueue::new(Bounds::UPLINK)),
            uplink_rx_ns: AtomicU64::new(0),
            capture: Mutex::new(Default::default()),
            capturing: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            waiter_count: AtomicUsize::new(0),
            uplink_stalled: AtomicBool::new(false),
            uplink_unflushed: AtomicBool::new(false),
        }
    }

    /// Guest `id`'s port, if it has one.
    pub fn port(&self, id: usize) -> Option<Arc<Port<R, E>>> {
        self.ports.get(id).and_then(Slot::get)
    }

    /// Forgets guest `id`'s port (disconnected before): its id may be
    /// given to another guest.
    pub fn release(&self, id: usize) {
        if let Some(slot) = self.ports.get(id) {
            slot.take();
        }
    }

    /// Records a `len`-byte frame (which `fill` writes) for the capture,
    /// if one runs and wants it.
    fn tap(&self, now_ns: u64, wants: impl Fn(CaptureTarget) -> bool, len: usize, fill: impl FnOnce(&mut [u8])) {
        if self.capturing.load(Ordering::Relaxed) {
            self.capture.lock().tap(now_ns, wants, len, fill);
        }
    }

    /// Forwards every frame waiting in `guest`'s TX ring. Calls `wake` for
    /// each guest that received frames (with its event page). Returns why
    /// the guest must be disconnected, if it broke the ring protocol.
    ///
    /// Backpressure: a frame for one receiver (unicast to a port the
    /// switch knows) whose RX ring is full stays at the head of the TX
    /// ring, and the drain stops there; the sender is listed as waiting,
    /// and is drained again when the receiver leaves a CPU
    /// (`receiver_ran`), when it drains itself, or at the end of the
    /// bounded wait ([`MAX_WAIT_NS`], `retry_waiting`). The same for a
    /// frame for the host while the uplink's queue is full. A sender whose
    /// full TX ring this drain made room in gets `events::NET_TX`.
    pub fn drain(&self, guest: usize, now_ns: u64, wake: &mut impl FnMut(usize, &E)) -> Result<(), RingBroken> {
        let Some(port) = self.port(guest) else { return Ok(()) };
        // A pass takes at most what the ring held when it began: the
        // consumer index is given back at its end, so a sender refilling
        // on another CPU cannot keep this one here. One more pass at most.
        for pass in 0..2 {
            match self.drain_once(guest, &port, now_ns, wake) {
                Drained::Done(result) => return result,
                Drained::Waiting { dest, len, since_ns } => {
                    self.list_waiter(guest, &port, dest, since_ns);
                    // The receiver may have made room and left its CPU
                    // before the sender was listed: look once more (after
                    // that, listed, the receiver's next turn drains it).
                    if pass == 0 && self.room_for(dest, len) != Some(false) {
                        continue;
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn drain_once(&self, guest: usize, port: &Arc<Port<R, E>>, now_ns: u64, wake: &mut impl FnMut(usize, &E)) -> Drained {
        if port.rx.is_closed() {
            return Drained::Done(Ok(()));
        }
        let ring = &port.tx_ring;
        let mut tx = port.tx.lock();
        let mut woken: Woken<R, E> = Vec::new();
        // The consumer index the guest saw last (published by the drain
        // before this one).
        let seen = tx.ring.index();
        let mut moved = 0u32;
        let mut waiting = None;
        let mut receivers: Receivers<R, E> = None;
        let result = loop {
            match tx.ring.peek(ring) {
                Ok(Some(frame)) => {
                    // Decide on a private copy of the header and the length
                    // read once; then copy the frame span to span.
                    let (at, len) = (frame.at, frame.len);
                    let mut header = [0u8; INSPECT_BYTES];
                    let hl = len.min(INSPECT_BYTES);
                    ring.read(at, &mut header[..hl]);
                    let mut switch = self.switch.lock();
                    if let Some(dest) = Self::sole_receiver(&switch, port, &header[..hl], now_ns)
                        && let Some(since_ns) = self.must_wait(&mut tx, dest, len, now_ns, &mut receivers)
                    {
                        waiting = Some((dest, len, since_ns));
                        break Ok(());
                    }
                    tx.wait = None;
                    moved += 1;
                    if !tx.allows(now_ns, &header, len) {
                        drop(switch);
                        let _ = tx.ring.skip(ring);
                        continue;
                    }
                    self.tap(
                        now_ns,
                        |t| t == CaptureTarget::Guest(guest) || t == CaptureTarget::Tenant(port.tenant),
                        len,
                        |buf| ring.read(at, buf),
                    );
                    let verdict = switch.forward_header(port.switch_port, &header[..hl], len, now_ns, &mut |dest, what| match what {
                        Out::Frame => {
                            let to = Delivery { woken: &mut woken, receivers: &mut receivers, now_ns };
                            self.deliver_from(dest, port, ring, at, &header[..hl], len, frame.flags, to)
                        }
                        Out::Reply(reply) => self.deliver(dest, reply, flags::RX_CSUM_OK, &mut woken, now_ns),
                    });
                    drop(switch);
                    match verdict {
                        Verdict::Dropped(why) if why.is_spoof() => {
                            port.spoofed.fetch_add(1, Ordering::Relaxed);
                        }
                        Verdict::Answered => {
                            port.arp_answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    // Every copy past the first costs the sender a frame
                    // of its budget too (`allows` took the first).
                    tx.charge_copies(now_ns, verdict.handed().saturating_sub(1), len);
                    let _ = tx.ring.skip(ring);
                }
                Ok(None) => break Ok(()),
                Err(RingError::BadLength { .. }) => {
                    port.count_ring_error();
                    moved += 1;
                    let _ = tx.ring.skip(ring);
                }
                Err(e @ RingError::BadIndex { .. }) => break Err(RingBroken(e)),
            }
        };
        // Whether the guest may have found no room for a frame of its MTU
        // against `seen` (its driver then blocks until `NET_TX`): looked at
        // after the slots are given back, so that a guest filling its ring
        // while this drain ran is seen too (a look before would miss it,
        // and the guest would wait with room in its ring).
        let prod = tx.ring.release_and_look(ring);
        let slots = tx.ring.slots();
        let was_full = !abi::ring::fits_between(prod, seen, slots, abi::ring::max_frame(slots));
        drop(tx);
        // A receiver whose slots are not made yet is woken to make them.
        if let Some((dest, ..)) = waiting
            && let Some((g, p)) = self.guest_at(dest)
            && !p.rx_ring.ready()
        {
            woken.push((g, p));
        }
        self.flush_uplink();
        self.wake_all(woken, &mut |g, p| wake(g, &p.events));
        // It found its ring full and may wait for room: tell it.
        if was_full && moved > 0 && port.notify(abi::time::events::NET_TX) {
            wake(guest, &port.events);
        }
        match (result, waiting) {
            (Ok(()), Some((dest, len, since_ns))) => Drained::Waiting { dest, len, since_ns },
            (result, _) => Drained::Done(result),
        }
    }

    /// Notifications the uplink's driver sent its device (0 without an
    /// uplink). Takes the uplink's lock alone.
    pub fn uplink_notifies(&self) -> u64 {
        self.uplink.as_ref().map_or(0, |(_, up)| up.lock().notifies())
    }

    /// Tells the uplink's device about the frames sent to it since the last
    /// flush, if any (by whichever CPU: a frame is in the device's queue
    /// before the flag that asks for its flush is set).
    fn flush_uplink(&self) {
        if self.uplink_unflushed.load(Ordering::Relaxed)
            && self.uplink_unflushed.swap(false, Ordering::AcqRel)
            && let Some((_, up)) = &self.uplink
        {
            up.lock().flush();
        }
    }

    /// The one port a frame with `header` from `port` goes to, if the
    /// switch will not flood it: unicast to a MAC it knows in the sender's
    /// tenant, not the sender's own. (The switch still decides; a frame it
    /// will drop may wait first, which costs nothing but the wait.)
    fn sole_receiver(switch: &Switch, port: &Port<R, E>, header: &[u8], now_ns: u64) -> Option<PortId> {
        let dst: [u8; 6] = header.get(..6)?.try_into().ok()?;
        // ARP is the switch's to answer (proxy ARP), never a receiver's.
        if is_multicast(&dst) || is_arp(header) {
            return None;
        }
        switch.lookup(port.tenant, dst, now_ns).filter(|&to| to != port.switch_port)
    }

    /// Whether `dest` has room for a `len`-byte frame now: `None` if it is
    /// no live receiver (the switch drops the frame).
    /// A frame the receiver can never take (larger than its ring's
    /// `max_frame`, or the uplink's `MTU_FRAME`) has no room to wait for:
    /// `None`, and the delivery drops and counts it.
    fn room_for(&self, dest: PortId, len: usize) -> Option<bool> {
        self.room_for_in(dest, len, &mut None)
    }

    /// [`Self::room_for`], looking `dest` up through `receivers`.
    fn room_for_in(&self, dest: PortId, len: usize, receivers: &mut Receivers<R, E>) -> Option<bool> {
        if let Some((up_port, up)) = &self.uplink
            && *up_port == dest
        {
            return (len <= MTU_FRAME).then(|| up.lock().has_room());
        }
        let (_, p) = self.receiver(dest, receivers)?;
        let (rx, open) = p.rx.lock();
        if !open || len > rx.max_frame() {
            return None;
        }
        // Slots not made yet: full until its CPU makes them (the sender's
        // drain wakes it for that).
        if !p.rx_ring.ready() {
            return Some(false);
        }
        // An impossible consumer index is the delivery's to count.
        Some(rx.fits(&p.rx_ring, len).unwrap_or(true))
    }

    /// Under the sender's TX lock and the switch: whether the head frame
    /// for `dest` must wait (and since when), or goes on to the switch
    /// (delivered, or dropped and counted if the ring is still full).
    fn must_wait(&self, tx: &mut super::port::Tx, dest: PortId, len: usize, now_ns: u64, receivers: &mut Receivers<R, E>) -> Option<u64> {
        if self.room_for_in(dest, len, receivers) != Some(false) {
            return None;
        }
        let since_ns = tx.wait.filter(|w| w.dest == dest).map_or(now_ns, |w| w.since_ns);
        // The bound runs from when the receiver first fell short, if that
        // was earlier (a receiver freeing a slot now and then).
        let bound_from = since_ns.min(self.full_since(dest, now_ns));
        if self.is_stalled(dest) || now_ns.saturating_sub(bound_from) >= MAX_WAIT_NS {
            // Waited long enough: this frame goes to be dropped, and the
            // ones after it for this receiver do not wait while it is full.
            self.set_stalled(dest);
            return None;
        }
        if since_ns == now_ns && tx.wait.is_none_or(|w| w.dest != dest) {
            tx.waits += 1;
        }
        tx.wait = Some(super::port::Wait { dest, since_ns });
        Some(bound_from)
    }

    /// Since when guest receiver `dest` has been short of room, noting
    /// `now_ns` if it was not (`Port::full_since_ns`); `now_ns` for the
    /// uplink, whose frames each wait their own bound.
    fn full_since(&self, dest: PortId, now_ns: u64) -> u64 {
        let Some((_, p)) = self.guest_at(dest) else { return now_ns };
        match p.full_since_ns.compare_exchange(0, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => now_ns,
            Err(since) => since,
        }
    }

    fn is_stalled(&self, dest: PortId) -> bool {
        if self.uplink.as_ref().is_some_and(|(p, _)| *p == dest) {
            return self.uplink_stalled.load(Ordering::Relaxed);
        }
        self.guest_at(dest).is_some_and(|(_, p)| p.stalled.load(Ordering::Relaxed))
    }

    fn set_stalled(&self, dest: PortId) {
        if self.uplink.as_ref().is_some_and(|(p, _)| *p == dest) {
            self.uplink_stalled.store(true, Ordering::Relaxed);
        } else if let Some((_, p)) = self.guest_at(dest) {
            p.stalled.store(true, Ordering::Relaxed);
        }
    }

    /// Lists `sender` as waiting for `dest` (once; a sender already listed
    /// now waits for `dest`).
    fn list_waiter(&self, sender: usize, port: &Arc<Port<R, E>>, dest: PortId, since_ns: u64) {
        let mut waiters = self.waiters.lock();
        match waiters.iter_mut().find(|w| w.sender == sender && Arc::ptr_eq(&w.port, port)) {
            Some(w) => {
                w.dest = dest;
                w.since_ns = since_ns;
            }
            None => {
                port.listed.store(true, Ordering::Relaxed);
                waiters.push(Waiter { sender, port: port.clone(), dest, since_ns });
                self.waiter_count.store(waiters.len(), Ordering::Release);
            }
        }
    }

    /// Takes the waiters `pick` chooses out of the list.
    fn take_waiters(&self, mut pick: impl FnMut(&Waiter<R, E>) -> bool) -> Vec<Waiter<R, E>> {
        if self.waiter_count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut waiters = self.waiters.lock();
        let mut taken = Vec::new();
        let mut i = 0;
        while i < waiters.len() {
            if pick(&waiters[i]) {
                let w = waiters.swap_remove(i);
                w.port.listed.store(false, Ordering::Relaxed);
                taken.push(w);
            } else {
                i += 1;
            }
        }
        self.waiter_count.store(waiters.len(), Ordering::Release);
        taken
    }

    /// Drains each of `waiters` again (each may be listed again); returns
    /// the senders that broke their TX ring.
    fn redrain(&self, waiters: Vec<Waiter<R, E>>, now_ns: u64, wake: &mut impl FnMut(usize, &E)) -> Vec<(usize, RingBroken)> {
        let mut broken = Vec::new();
        for w in waiters {
            // Its id may belong to another guest by now.
            if self.port(w.sender).is_some_and(|p| Arc::ptr_eq(&p, &w.port))
                && let Err(e) = self.drain(w.sender, now_ns, wake)
            {
                broken.push((w.sender, e));
            }
        }
        broken
    }

    /// Guest `guest` left a CPU, having perhaps taken frames from its RX
    /// ring: the senders waiting for room in it try again. Returns the
    /// senders that broke their TX ring meanwhile (to be disconnected).
    pub fn receiver_ran(&self, guest: usize, now_ns: u64, wake: &mut impl FnMut(usize, &E)) -> Vec<(usize, RingBroken)> {
        if self.waiter_count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let Some(me) = self.port(guest).map(|p| p.switch_port) else { return Vec::new() };
        let waiters = self.take_waiters(|w| w.dest == me);
        self.redrain(waiters, now_ns, wake)
    }

    /// Retries the senders waiting for the uplink's queue (it does not
    /// interrupt when it has room again), for a receiver that is gone, or
    /// past their bounded wait. Returns when to call it next (`None`:
    /// nobody waits) and the senders that broke their TX ring.
    pub fn retry_waiting(&self, now_ns: u64, wake: &mut impl FnMut(usize, &E)) -> (Option<u64>, Vec<(usize, RingBroken)>) {
        if self.waiter_count.load(Ordering::Acquire) == 0 {
            return (None, Vec::new());
        }
        let uplink = self.uplink.as_ref().map(|(p, _)| *p);
        let waiters = self.take_waiters(|w| {
            Some(w.dest) == uplink
                || now_ns.saturating_sub(w.since_ns) >= MAX_WAIT_NS
                || self.guest_at(w.dest).is_none_or(|(_, p)| p.rx.is_closed())
        });
        let broken = self.redrain(waiters, now_ns, wake);
        let next = {
            let waiters = self.waiters.lock();
            waiters.iter().map(|w| if Some(w.dest) == uplink { now_ns + UPLINK_WAIT_RETRY_NS } else { w.since_ns + MAX_WAIT_NS }).min()
        };
        (next, broken)
    }

    /// Raises `NET_RX` for each port in `woken` (once each) and calls
    /// `wake` for those still open. The ports are those the frames went
    /// into, not looked up again by guest id: an id given to another
    /// guest meanwhile gets no event meant for the one before.
    fn wake_all(&self, mut woken: Woken<R, E>, wake: &mut impl FnMut(usize, &Port<R, E>)) {
        woken.sort_unstable_by_key(|(g, _)| *g);
        woken.dedup_by(|a, b| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1));
        for (g, p) in woken {
            if p.notify(abi::time::events::NET_RX) {
                wake(g, &p);
            }
        }
    }

    /// Copies the `len`-byte frame at `at` in the sender's TX ring `src`
    /// (of port `from`, its header flags `tx_flags`) straight into the RX
    /// ring behind `dest` (one copy), with the checked `header` (its first
    /// `header.len()` bytes, at most `len`) in front; to the uplink through
    /// a buffer, its checksums filled if the sender left them blank.
    /// Returns whether it fit; one too large for `dest` is counted on
    /// `from` (`oversize`).
    #[allow(clippy::too_many_arguments)]
    fn deliver_from(
        &self,
        dest: PortId,
        from: &Port<R, E>,
        src: &R,
        at: usize,
        header: &[u8],
        len: usize,
        tx_flags: u16,
        to: Delivery<'_, R, E>,
    ) -> bool {
        let Delivery { woken, receivers, now_ns } = to;
        let hl = header.len();
        if self.uplink.as_ref().is_some_and(|(p, _)| *p == dest) {
            if len > MTU_FRAME {
                from.count_oversize();
                return false;
            }
            let mut frame = [0u8; MTU_FRAME];
            frame[..hl].copy_from_slice(header);
            src.read(at + hl, &mut frame[hl..len]);
            if tx_flags & flags::TX_CSUM_BLANK != 0 {
                // Unparseable frames go unchanged (`net::csum`).
                let _ = csum::fill(&mut frame[..len]);
            }
            return self.deliver(dest, &frame[..len], 0, woken, now_ns);
        }
        let mut oversize = false;
        let delivered = self.to_guest_in(dest, woken, receivers, now_ns, |rx, ring| {
            if len > rx.max_frame() {
                oversize = true;
                return Ok(false);
            }
            let Some(dst) = rx.reserve(ring, len)? else { return Ok(false) };
            ring.write(dst, header);
            src.copy_to(at + hl, ring, dst + hl, len - hl);
            rx.commit(ring, len, flags::RX_CSUM_OK);
            Ok(true)
        });
        if oversize {
            from.count_oversize();
        } else if !delivered
            && let Some((_, p)) = self.guest_at(dest)
            && !unmade_and_arp(&p, header)
        {
            p.count_rx_full_drop();
        }
        delivered
    }

    /// Runs `fill` on the RX ring of the live guest behind switch port
    /// `dest` (under its lock), publishes and notes the guest if it put a
    /// frame there. Returns whether it did.
    fn to_guest(
        &self,
        dest: PortId,
        woken: &mut Woken<R, E>,
        now_ns: u64,
        fill: impl FnOnce(&mut Producer, &R) -> Result<bool, RingError>,
    ) -> bool {
        self.to_guest_in(dest, woken, &mut None, now_ns, fill)
    }

    /// [`Self::to_guest`], looking `dest` up through `receivers`.
    fn to_guest_in(
        &self,
        dest: PortId,
        woken: &mut Woken<R, E>,
        receivers: &mut Receivers<R, E>,
        now_ns: u64,
        fill: impl FnOnce(&mut Producer, &R) -> Result<bool, RingError>,
    ) -> bool {
        let Some((g, p)) = self.receiver(dest, receivers) else { return false };
        let (mut rx, open) = p.rx.lock();
        if !open {
            return false;
        }
        let ring = &p.rx_ring;
        if !ring.ready() {
            // Its slots are not made yet: its CPU makes them when it
            // wakes with `NET_RX`; this frame finds it full.
            note_woken(woken, g, p);
            return false;
        }
        match fill(&mut rx, ring) {
            Ok(true) => {
                // Caught up once a frame of its MTU would still fit.
                if (p.full_since_ns.load(Ordering::Relaxed) != 0 || p.stalled.load(Ordering::Relaxed))
                    && rx.fits(ring, rx.max_frame()).unwrap_or(false)
                {
                    p.full_since_ns.store(0, Ordering::Relaxed);
                    p.stalled.store(false, Ordering::Relaxed);
                }
                // The frame just committed, read back from its span.
                if let Some(f) = rx.last() {
                    self.tap(now_ns, |t| t == CaptureTarget::Guest(g), f.len, |buf| ring.read(f.at, buf));
                }
                rx.publish(ring);
                note_woken(woken, g, p);
                true
            }
            Ok(false) => false,
            Err(_) => {
                // The guest moved its RX consumer index somewhere impossible.
                p.count_ring_error();
                false
            }
        }
    }

    /// Copies a frame into the RX ring of the guest behind switch port
    /// `dest` (with header flags `rx_flags`), or sends it to the host;
    /// returns whether it fit.
    fn deliver(&self, dest: PortId, frame: &[u8], rx_flags: u16, woken: &mut Woken<R, E>, now_ns: u64) -> bool {
        if let Some((port, up)) = &self.uplink
            && *port == dest
        {
            let sent = up.lock().send(frame);
            if sent {
                self.uplink_unflushed.store(true, Ordering::Release);
                if self.uplink_stalled.load(Ordering::Relaxed) {
                    self.uplink_stalled.store(false, Ordering::Relaxed);
                }
            }
            return sent;
        }
        self.to_guest(dest, woken, now_ns, |rx, ring| rx.push(ring, frame, rx_flags))
    }

    /// The guest (id and port) behind switch port `dest`, if any: the
    /// port must be that switch port (a slot's guest, or a guest id, may
    /// have been given to another since `dest` was looked up).
    fn guest_at(&self, dest: PortId) -> Option<(usize, Arc<Port<R, E>>)> {
        let g = self.guest_of_slot.get(dest.slot())?.load(Ordering::Acquire);
        self.port(g).filter(|p| p.switch_port == dest).map(|p| (g, p))
    }

    /// [`Self::guest_at`] through a pass's last receiver: looked up only
    /// when `dest` is another.
    fn receiver<'c>(&self, dest: PortId, receivers: &'c mut Receivers<R, E>) -> Option<(usize, &'c Arc<Port<R, E>>)> {
        if receivers.as_ref().is_none_or(|r| r.at != dest) {
            *receivers = self.guest_at(dest).map(|(guest, port)| Receiver { at: dest, guest, port });
        }
        receivers.as_ref().map(|r| (r.guest, &r.port))
    }

    /// Switches the frames the host sent to the guests; calls `wake` for
    /// each guest that received some.
    ///
    /// Flow control, per guest: a frame for one guest alone (unicast to a
    /// MAC the switch knows) whose RX ring is full waits in that guest's
    /// own queue, and the ones after it for that guest wait behind it; the
    /// queues are retried first on every poll, bounded in frames and bytes,
    /// and a frame that waited `Bounds::UPLINK.max_wait_ns` is dropped.
    /// Broadcast and flooded frames go to whoever has room. So frames for
    /// other guests never wait, and up to [`UPLINK_BATCH`] frames are taken
    /// from the device on every poll. Returns true if it took a whole
    /// batch: more may be waiting in the device (an interrupt-driven
    /// caller polls again without waiting for another interrupt).
    pub fn poll_uplink(&self, now_ns: u64, wake: &mut impl FnMut(usize)) -> bool {
        let Some((port, up)) = &self.uplink else { return false };
        let mut held = self.held.lock();
        let mut woken: Woken<R, E> = Vec::new();
        self.retry_all_held(&mut held, now_ns, &mut woken);
        let mut frame = [0u8; MTU_FRAME];
        let mut took = 0;
        while took < UPLINK_BATCH {
            // One frame at a time, the uplink unlocked while it is
            // switched (the lock order is switch -> uplink).
            let Some(len) = up.lock().receive(&mut frame) else { break };
            took += 1;
            self.switch_host_frame(&mut held, *port, &frame[..len.min(MTU_FRAME)], now_ns, &mut woken);
        }
        {
            let mut up = up.lock();
            up.notify_rx();
            if took < UPLINK_BATCH {
                up.rearm_interrupt();
            }
        }
        drop(held);
        self.flush_uplink();
        if took > 0 {
            self.uplink_rx_ns.store(now_ns, Ordering::Relaxed);
        }
        self.wake_all(woken, &mut |g, _| wake(g));
        took == UPLINK_BATCH
    }

    /// Retries the host's frames waiting for room in guests' rings (as
    /// `poll_uplink` does first), without touching the device; calls
    /// `wake` for each guest that received some. Returns whether frames
    /// still wait.
    pub fn retry_uplink_held(&self, now_ns: u64, wake: &mut impl FnMut(usize)) -> bool {
        let mut held = self.held.lock();
        if held.next_waiting(None).is_none() {
            return false;
        }
        let mut woken: Woken<R, E> = Vec::new();
        self.retry_all_held(&mut held, now_ns, &mut woken);
        let waiting = held.next_waiting(None).is_some();
        drop(held);
        self.wake_all(woken, &mut |g, _| wake(g));
        waiting
    }

    /// Retries every guest's waiting frames, in guest order.
    fn retry_all_held(&self, held: &mut UplinkQueue<usize>, now_ns: u64, woken: &mut Woken<R, E>) {
        let mut next = held.next_waiting(None);
        while let Some(g) = next {
            self.retry_held(held, g, now_ns, woken);
            next = held.next_waiting(Some(g));
        }
    }

    /// Switches one frame from the host (see `poll_uplink`).
    fn switch_host_frame(&self, held: &mut UplinkQueue<usize>, uplink: PortId, f: &[u8], now_ns: u64, woken: &mut Woken<R, E>) {
        let mut switch = self.switch.lock();
        let tenant = switch.tenant_of(uplink);
        self.tap(now_ns, |t| Some(t) == tenant.map(CaptureTarget::Tenant), f.len(), |buf| buf.copy_from_slice(f));
        // The one port it is for, if the switch will not flood it (a frame
        // too short to name one is the switch's to refuse).
        let dst: Option<[u8; 6]> = f.get(..6).and_then(|d| d.try_into().ok());
        let one = match (dst, tenant) {
            (Some(dst), Some(t)) if !is_multicast(&dst) => switch.lookup(t, dst, now_ns),
            _ => None,
        };
        // Guests verify no checksum: a wrong one is dropped here, counted
        // on the guest it was for (if one alone).
        let rx_flags = match csum::verify(f) {
            csum::Check::Good => flags::RX_CSUM_OK,
            csum::Check::Fragment => 0,
            csum::Check::Bad => {
                if let Some((_, p)) = one.and_then(|d| self.guest_at(d)) {
                    p.bad_checksums.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        switch.forward(uplink, f, now_ns, &mut |dest, what| {
            if let Out::Reply(reply) = what {
                // The switch's answer to the host's ARP request, back out
                // through the uplink.
                return self.deliver(dest, reply, 0, woken, now_ns);
            }
            let Some((g, p)) = self.guest_at(dest) else { return false };
            if Some(dest) == one {
                match held.offer(g, f, now_ns, |f| self.to_guest(dest, woken, now_ns, |rx, ring| rx.push(ring, f, rx_flags))) {
                    Offered::Delivered => true,
                    Offered::Held => false,
                    Offered::Dropped(_) => {
                        p.count_uplink_drops(1);
                        false
                    }
                }
            } else {
                let ok = self.deliver(dest, f, rx_flags, woken, now_ns);
                p.count_uplink_drops(usize::from(!ok && !unmade_and_arp(&p, f)));
                ok
            }
        });
    }

    /// Retries the frames waiting for guest `g` (in order, under its RX
    /// lock), dropping those that waited too long.
    fn retry_held(&self, held: &mut UplinkQueue<usize>, g: usize, now_ns: u64, woken: &mut Woken<R, E>) {
        let Some(p) = self.port(g) else {
            held.remove(g);
            return;
        };
        // Under the switch, as every other delivery: a drain that found
        // room in this ring keeps it until it delivers.
        let _switch = self.switch.lock();
        let (mut rx, open) = p.rx.lock();
        if !open {
            // `disconnect` frees the queue; this only makes sure.
            p.count_uplink_drops(held.remove(g));
            return;
        }
        let ring = &p.rx_ring;
        let ready = ring.ready();
        if !ready {
            woken.push((g, p.clone()));
        }
        let done = held.retry(g, now_ns, |f| {
            let pushed = if ready { rx.push(ring, f, csum::host_rx_flags(f)) } else { Ok(false) };
            match pushed {
                Ok(true) => {
                    // Recorded now that it went in, once (not while it waited).
                    self.tap(now_ns, |t| t == CaptureTarget::Guest(g), f.len(), |buf| buf.copy_from_slice(f));
                    true
                }
                Ok(false) => false,
                Err(_) => {
                    // The guest moved its RX consumer index somewhere impossible.
                    p.count_ring_error();
                    false
                }
            }
        });
        if done.delivered > 0 {
            rx.publish(ring);
            woken.push((g, p.clone()));
        }
        p.count_uplink_drops(done.expired);
    }

    /// Disconnects `guest`'s vNIC (it ended or lied): nothing is delivered
    /// to its rings any more, so their pages may be freed; the host's
    /// frames waiting for it are freed (and counted as dropped).
    pub fn disconnect(&self, guest: usize) {
        let Some(p) = self.port(guest) else { return };
        // The module's lock order: held frames, TX, the switch, then RX
        // (inside `close`). Closing before taking the switch once
        // deadlocked against a drain delivering to this guest.
        let mut held = self.held.lock();
        let _tx = p.tx.lock();
        let mut switch = self.switch.lock();
        if p.rx.close() {
            switch.remove_port(p.switch_port);
        }
        p.count_uplink_drops(held.remove(guest));
        drop((held, _tx, switch));
        // It waits for nobody any more (senders waiting for it are
        // retried by `retry_waiting`: their receiver is gone).
        if p.listed.load(Ordering::Relaxed) {
            self.take_waiters(|w| Arc::ptr_eq(&w.port, &p));
        }
    }
}

/// Whether `frame` (or its first bytes) is ARP.
fn is_arp(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06])
}

/// An ARP frame that found `p`'s ring pages not made yet (it had received
/// nothing so far) is no loss to count: the switch answered the request
/// itself (proxy ARP) and passes it on only so that the target learns the
/// asker's MAC, which it asks the switch for instead.
fn unmade_and_arp<R: GuestRing, E: GuestEvents>(p: &Port<R, E>, frame: &[u8]) -> bool {
    !p.rx_ready() && is_arp(frame)
}

/// A fake uplink, for host tests of the back end and of what drives it.
#[cfg(test)]
pub mod testing {
    use super::*;
    use alloc::collections::VecDeque;

    /// The host behind the uplink: frames it will send, frames it got.
    #[derive(Default)]
    pub struct FakeUplink {
        pub from_host: VecDeque<Vec<u8>>,
        pub to_host: Vec<Vec<u8>>,
        pub notified: usize,
        pub rearmed: usize,
        /// Its send queue is full: it takes nothing.
        pub full: bool,
        /// Times it was told about frames sent (`flush`).
        pub flushed: usize,
    }

    impl UplinkDevice for FakeUplink {
        fn send(&mut self, frame: &[u8]) -> bool {
            if self.full {
                return false;
            }
            self.to_host.push(frame.to_vec());
            true
        }
        fn has_room(&mut self) -> bool {
            !self.full
        }
        fn flush(&mut self) {
            self.flushed += 1;
        }
        fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
            let f = self.from_host.pop_front()?;
            buf[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
        fn notify_rx(&mut self) {
            self.notified += 1;
        }
        fn rearm_interrupt(&mut self) {
            self.rearmed += 1;
        }
        fn notifies(&self) -> u64 {
            (self.flushed + self.notified) as u64
        }
    }
}
