//! The vNICs' back ends: each guest's rings, and the switch between them.
//!
//! A guest's TX ring is drained when it blocks, yields, is preempted, ends
//! or kicks: each frame is copied out of the ring once, switched
//! (`hypervisor::net::switch`), and copied into every receiver's RX ring,
//! whose guest then gets `events::NET_RX` and is woken if it sleeps. A guest
//! that breaks the ring protocol (an index beyond the ring, or moved
//! backwards) is disconnected; a bad length only loses that frame.
//!
//! Frames from the host (the uplink) for a guest whose RX ring is full wait
//! in that guest's own bounded queue (`hypervisor::net::uplink_queue`),
//! never in front of other guests' frames.

use crate::arch::x86_64::paging::phys_to_virt;
use abi::ring::{Consumer, INDEX_BYTES, MTU_FRAME, Producer, RingError, RingMemory, SLOTS_OFFSET, ring_bytes};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hypervisor::limit::TokenBucket;
use hypervisor::mm::{FRAME_SIZE, PhysAddr};
use hypervisor::net::gate::Gate;
use hypervisor::net::switch::{INSPECT_BYTES, PortId, Switch, Verdict, is_multicast};
use hypervisor::net::uplink_queue::{Bounds, Offered, UplinkQueue};
use spin::{Mutex, Once};

/// One ring of a guest, reached through the direct map: its index block in
/// the guest's shared page, its slots in frames of their own.
struct FrameRing<'a> {
    /// Direct-map address of the index block.
    indices: u64,
    slots: &'a [PhysAddr],
}

impl<'a> FrameRing<'a> {
    fn new(shared_page: PhysAddr, index_offset: u64, slots: &'a [PhysAddr]) -> Self {
        Self { indices: phys_to_virt(shared_page) + index_offset, slots }
    }

    fn bytes(&self) -> usize {
        SLOTS_OFFSET + self.slots.len() * FRAME_SIZE as usize
    }

    /// The direct-map address of slot-area `offset` (at or above SLOTS_OFFSET).
    fn at(&self, offset: usize) -> u64 {
        let o = offset - SLOTS_OFFSET;
        phys_to_virt(self.slots[o / FRAME_SIZE as usize]) + (o % FRAME_SIZE as usize) as u64
    }

    /// The index at `offset` of the index block.
    fn index(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= INDEX_BYTES);
        // SAFETY: inside the index block (asserted), which lies in the
        // guest's shared page, a pinned, direct-mapped frame; 4-byte aligned.
        unsafe { &*((self.indices + offset as u64) as *const AtomicU32) }
    }

    fn copy(&self, offset: usize, len: usize, mut f: impl FnMut(u64, core::ops::Range<usize>)) {
        assert!(offset >= SLOTS_OFFSET && offset + len <= self.bytes());
        let mut done = 0;
        while done < len {
            let o = offset + done;
            let n = (FRAME_SIZE as usize - o % FRAME_SIZE as usize).min(len - done);
            f(self.at(o), done..done + n);
            done += n;
        }
    }

    /// Copies `len` bytes at `from` in this ring to `to` in `dst`, frame to
    /// frame through the direct map: the packet's one copy.
    fn copy_to(&self, from: usize, dst: &FrameRing<'_>, to: usize, len: usize) {
        assert!(from >= SLOTS_OFFSET && to >= SLOTS_OFFSET && from + len <= self.bytes() && to + len <= dst.bytes());
        let page = FRAME_SIZE as usize;
        let mut done = 0;
        while done < len {
            let (s, d) = (from + done, to + done);
            let n = (page - s % page).min(page - d % page).min(len - done);
            // SAFETY: both ranges lie inside one pinned, direct-mapped frame
            // each (split above), in different guests' rings, so they do not
            // overlap; a guest writing its TX slot meanwhile only changes the
            // bytes copied.
            unsafe { core::ptr::copy_nonoverlapping(self.at(s) as *const u8, dst.at(d) as *mut u8, n) };
            done += n;
        }
    }
}

// SAFETY: the frames are the guest's shared page and ring pages, pinned
// while its port is alive (its RX gate is closed, under its locks, before
// the frames are freed); offsets are bounds-checked against the index
// block and the slots; index accesses are 4-byte aligned atomics.
unsafe impl RingMemory for FrameRing<'_> {
    fn load(&self, offset: usize) -> u32 {
        self.index(offset).load(Ordering::Acquire)
    }
    fn store(&self, offset: usize, v: u32) {
        self.index(offset).store(v, Ordering::Release)
    }
    fn read(&self, offset: usize, dst: &mut [u8]) {
        self.copy(offset, dst.len(), |va, r| {
            let d = &mut dst[r];
            // SAFETY: inside one pinned frame (split by `copy`); the guest
            // may write concurrently, which only changes the copied bytes.
            unsafe { core::ptr::copy_nonoverlapping(va as *const u8, d.as_mut_ptr(), d.len()) }
        });
    }
    fn write(&self, offset: usize, src: &[u8]) {
        self.copy(offset, src.len(), |va, r| {
            let s = &src[r];
            // SAFETY: as in read.
            unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), va as *mut u8, s.len()) }
        });
    }
}

/// Sets event bits in a guest's event page (atomically: other CPUs may set
/// bits at the same time, and the guest clears them with an atomic AND).
/// Only for a guest known to be alive (its own CPU's timers); deliveries
/// go through [`Port::notify`].
pub fn raise(event_frame: PhysAddr, bits: u64) {
    // SAFETY: the event page is a pinned frame of a live guest; offset 0 is
    // 8-byte aligned.
    unsafe { &*(phys_to_virt(event_frame) as *const AtomicU64) }.fetch_or(bits, Ordering::AcqRel);
}

/// The event bits pending in a guest's event page.
pub fn pending(event_frame: PhysAddr) -> u64 {
    // SAFETY: as in `raise`.
    unsafe { &*(phys_to_virt(event_frame) as *const AtomicU64) }.load(Ordering::Acquire)
}

/// A vNIC's TX side: the ring's consumer and the sender's rate limits.
struct Tx {
    ring: Consumer,
    packets: TokenBucket,
    bytes: TokenBucket,
    broadcasts: TokenBucket,
    /// Frames dropped for being over a limit.
    limited: u64,
}

impl Tx {
    /// Whether the sender's limits let this frame through now (if not, it
    /// is counted and dropped).
    fn allows(&mut self, now_ns: u64, header: &[u8; INSPECT_BYTES], len: usize) -> bool {
        let dst: [u8; 6] = [header[0], header[1], header[2], header[3], header[4], header[5]];
        let ok = self.packets.take(now_ns, 1)
            && self.bytes.take(now_ns, len as u64)
            && (!hypervisor::net::switch::is_multicast(&dst) || self.broadcasts.take(now_ns, 1));
        self.limited += u64::from(!ok);
        ok
    }
}

/// One guest's vNIC back end.
pub struct Port {
    pub switch_port: PortId,
    pub tenant: u32,
    /// The frames of the TX and RX rings' slots (pinned while the port lives).
    pub tx_frames: Box<[PhysAddr]>,
    pub rx_frames: Box<[PhysAddr]>,
    /// The guest's shared page: event bits and both rings' indices.
    pub event_frame: PhysAddr,
    tx: Mutex<Tx>,
    /// The RX producer behind a gate (`hypervisor::net::gate`): closed by
    /// `disconnect` before the guest's pages may be freed, and every
    /// delivery and event runs under it while it is open.
    rx: Gate<Producer>,
    pub ring_errors: AtomicU64,
    /// Frames from the host for this guest that its full RX ring never
    /// took: flooded ones it had no room for, and ones that found its
    /// queue full, waited too long, or were waiting when its vNIC went.
    uplink_dropped: AtomicU64,
    /// Frames the switch dropped as spoofed (`DropReason::is_spoof`),
    /// counted from its verdicts here so that the count outlives the
    /// switch port.
    pub spoofed: AtomicU64,
}

impl Port {
    /// A port over rings of `slots` slots whose slot pages are `tx_frames`
    /// and `rx_frames` (`ring::slots_bytes(slots)` each).
    pub fn new(
        switch_port: PortId,
        tenant: u32,
        slots: u32,
        limits: &abi::bundle::Limits,
        tx_frames: Box<[PhysAddr]>,
        rx_frames: Box<[PhysAddr]>,
        event_frame: PhysAddr,
    ) -> Self {
        debug_assert!(ring_bytes(slots) == SLOTS_OFFSET + tx_frames.len() * FRAME_SIZE as usize && tx_frames.len() == rx_frames.len());
        Self {
            switch_port,
            tenant,
            tx_frames,
            rx_frames,
            event_frame,
            tx: Mutex::new(Tx {
                ring: Consumer::new(slots),
                packets: TokenBucket::new(limits.nic_packets),
                bytes: TokenBucket::new(limits.nic_bytes),
                broadcasts: TokenBucket::new(limits.nic_broadcasts),
                limited: 0,
            }),
            rx: Gate::new(Producer::new(slots)),
            ring_errors: AtomicU64::new(0),
            uplink_dropped: AtomicU64::new(0),
            spoofed: AtomicU64::new(0),
        }
    }
}

impl Port {
    /// Sets event bits in the guest's event page, unless the port is closed.
    /// Its guest may have ended and its event frame be free again (or a
    /// page table by now): `disconnect` closes the RX gate before the guest
    /// is destroyed, so the frame stays the guest's while the gate is open
    /// (the gate's host test destroys a receiver under delivering threads).
    pub fn notify(&self, bits: u64) -> bool {
        self.rx.with(|_| raise(self.event_frame, bits)).is_some()
    }

    /// Bytes of the guest's ring slots (both rings).
    pub fn ring_bytes(&self) -> u64 {
        (self.tx_frames.len() + self.rx_frames.len()) as u64 * FRAME_SIZE
    }

    /// Frames dropped for being over the sender's rate limits.
    pub fn limited(&self) -> u64 {
        self.tx.lock().limited
    }

    /// Frames from the host lost to this guest's full RX ring.
    pub fn uplink_dropped(&self) -> u64 {
        self.uplink_dropped.load(Ordering::Relaxed)
    }

    fn count_uplink_drops(&self, n: usize) {
        if n > 0 {
            self.uplink_dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Bytes the hypervisor holds for this port.
    pub fn record_bytes(&self) -> u64 {
        (core::mem::size_of::<Self>() + (self.tx_frames.len() + self.rx_frames.len()) * core::mem::size_of::<PhysAddr>()) as u64
    }
}

/// All vNICs and the switch.
pub struct Net {
    pub switch: Mutex<Switch>,
    /// The port to the host, and its driver.
    pub uplink: Option<(PortId, Mutex<crate::uplink::Uplink>)>,
    /// Ports by guest id (room for every guest id there will be; a port is
    /// set once, when its guest is created).
    pub ports: Vec<Once<Port>>,
    /// Guest id by switch port slot (`usize::MAX`: none).
    pub guest_of_slot: Vec<AtomicUsize>,
    /// Frames from the host waiting for room in a guest's RX ring, per
    /// guest id (see `poll_uplink`). First in the lock order: taken by the
    /// uplink's poll and by `disconnect` before anything else.
    pub held: Mutex<UplinkQueue<usize>>,
    /// When (monotonic ns) a frame last came from the host.
    pub uplink_rx_ns: AtomicU64,
    /// A packet capture in progress (`ctl capture`), if `capturing`.
    pub capture: Mutex<Capture>,
    pub capturing: AtomicBool,
}

/// What a capture takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureTarget {
    /// Frames a guest (by id) sends or receives.
    Guest(usize),
    /// Frames the guests of a tenant send, and the host's for tenant 0.
    Tenant(u32),
}

/// A capture: its target, the frames taken and not yet handed out.
#[derive(Default)]
pub struct Capture {
    pub target: Option<CaptureTarget>,
    /// (monotonic ns, frame), at most CAPTURE_BACKLOG.
    pub frames: alloc::collections::VecDeque<(u64, Vec<u8>)>,
    pub taken: u32,
    pub max: u32,
    pub until_ns: u64,
    pub dropped: u64,
}

/// Frames a capture holds before it drops (the control channel is slow).
const CAPTURE_BACKLOG: usize = 256;

impl Capture {
    fn push(&mut self, now_ns: u64, frame: &[u8]) {
        if self.target.is_none() || self.taken >= self.max {
            return;
        }
        self.taken += 1;
        if self.frames.len() >= CAPTURE_BACKLOG {
            self.dropped += 1;
        } else {
            self.frames.push_back((now_ns, frame.to_vec()));
        }
    }
}

/// Frames taken from the uplink per poll.
const UPLINK_BATCH: usize = 32;

impl Net {
    /// No ports yet, room for `guests` guests (and their switch ports).
    pub fn new(guests: usize) -> Self {
        Self {
            switch: Mutex::new(Switch::new()),
            uplink: None,
            ports: (0..guests).map(|_| Once::new()).collect(),
            guest_of_slot: (0..guests + 1).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            held: Mutex::new(UplinkQueue::new(Bounds::UPLINK)),
            uplink_rx_ns: AtomicU64::new(0),
            capture: Mutex::new(Default::default()),
            capturing: AtomicBool::new(false),
        }
    }

    /// Adds a frame to the capture if it is for `wants`; `fill` writes the
    /// frame into a buffer and returns its length.
    fn tap(&self, now_ns: u64, wants: impl Fn(CaptureTarget) -> bool, fill: impl FnOnce(&mut [u8; MTU_FRAME]) -> usize) {
        let mut c = self.capture.lock();
        if c.target.is_some_and(wants) {
            let mut buf = [0u8; MTU_FRAME];
            let n = fill(&mut buf);
            c.push(now_ns, &buf[..n]);
        }
    }

    /// Guest `id`'s port, if it has one.
    pub fn port(&self, id: usize) -> Option<&Port> {
        self.ports.get(id).and_then(Once::get)
    }

    /// Forwards every frame waiting in `guest`'s TX ring. Calls `wake` for
    /// each guest that received frames. Returns why the guest must be
    /// disconnected, if it broke the ring protocol.
    pub fn drain(&self, guest: usize, now_ns: u64, wake: &mut impl FnMut(usize, PhysAddr)) -> Result<(), String> {
        let Some(port) = self.port(guest) else { return Ok(()) };
        if port.rx.is_closed() {
            return Ok(());
        }
        let ring = FrameRing::new(port.event_frame, abi::layout::NIC_TX_INDICES, &port.tx_frames);
        let mut tx = port.tx.lock();
        let mut woken: Vec<usize> = Vec::new();
        let result = loop {
            match tx.ring.peek(&ring) {
                Ok(Some((at, len))) => {
                    // Decide on a private copy of the header and the length
                    // read once; then copy the frame slot to slot.
                    let mut header = [0u8; INSPECT_BYTES];
                    let hl = len.min(INSPECT_BYTES);
                    ring.read(at, &mut header[..hl]);
                    if !tx.allows(now_ns, &header, len) {
                        let _ = tx.ring.skip(&ring);
                        continue;
                    }
                    if self.capturing.load(Ordering::Relaxed) {
                        self.tap(
                            now_ns,
                            |t| t == CaptureTarget::Guest(guest) || t == CaptureTarget::Tenant(port.tenant),
                            |buf| {
                                ring.read(at, &mut buf[..len]);
                                len
                            },
                        );
                    }
                    let mut switch = self.switch.lock();
                    let verdict = switch.forward_header(port.switch_port, &header[..hl], len, now_ns, &mut |dest| {
                        self.deliver_from(dest, &ring, at, &header[..hl], len, &mut woken, now_ns)
                    });
                    drop(switch);
                    if let Verdict::Dropped(why) = verdict
                        && why.is_spoof()
                    {
                        port.spoofed.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = tx.ring.skip(&ring);
                }
                Ok(None) => break Ok(()),
                Err(RingError::BadLength { .. }) => {
                    port.ring_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.ring.skip(&ring);
                }
                Err(e @ RingError::BadIndex { .. }) => break Err(alloc::format!("vNIC TX ring: {e}")),
            }
        };
        tx.ring.release(&ring);
        drop(tx);
        woken.sort_unstable();
        woken.dedup();
        for g in woken {
            if let Some(p) = self.port(g)
                && p.notify(abi::time::events::NET_RX)
            {
                wake(g, p.event_frame);
            }
        }
        result
    }

    /// Copies the `len`-byte frame at `at` in the sender's TX ring `src`
    /// straight into the RX ring behind `dest` (one copy), with the checked
    /// `header` (its first `header.len()` bytes, at most `len`) in front; to
    /// the uplink through a buffer. Returns whether it fit.
    #[allow(clippy::too_many_arguments)]
    fn deliver_from(
        &self,
        dest: PortId,
        src: &FrameRing<'_>,
        at: usize,
        header: &[u8],
        len: usize,
        woken: &mut Vec<usize>,
        now_ns: u64,
    ) -> bool {
        let hl = header.len();
        if self.uplink.as_ref().is_some_and(|(p, _)| *p == dest) {
            let mut frame = [0u8; MTU_FRAME];
            frame[..hl].copy_from_slice(header);
            src.read(at + hl, &mut frame[hl..len]);
            return self.deliver(dest, &frame[..len], woken, now_ns);
        }
        self.to_guest(dest, woken, now_ns, |rx, ring| {
            let Some(dst) = rx.reserve(ring, len)? else { return Ok(false) };
            ring.write(dst, header);
            src.copy_to(at + hl, ring, dst + hl, len - hl);
            rx.commit(ring, len);
            Ok(true)
        })
    }

    /// Runs `fill` on the RX ring of the live guest behind switch port
    /// `dest` (under its lock), publishes and notes the guest if it put a
    /// frame there. Returns whether it did.
    fn to_guest(
        &self,
        dest: PortId,
        woken: &mut Vec<usize>,
        now_ns: u64,
        fill: impl FnOnce(&mut Producer, &FrameRing<'_>) -> Result<bool, RingError>,
    ) -> bool {
        let Some((g, p)) = self.guest_at(dest) else { return false };
        let (mut rx, open) = p.rx.lock();
        if !open {
            return false;
        }
        let ring = FrameRing::new(p.event_frame, abi::layout::NIC_RX_INDICES, &p.rx_frames);
        match fill(&mut rx, &ring) {
            Ok(true) => {
                if self.capturing.load(Ordering::Relaxed) {
                    // The frame just committed, read back from its slot.
                    let at = abi::ring::slot_offset(rx.index().wrapping_sub(1), rx.slots());
                    self.tap(
                        now_ns,
                        |t| t == CaptureTarget::Guest(g),
                        |buf| {
                            let mut len = [0u8; 2];
                            ring.read(at, &mut len);
                            let len = (u16::from_le_bytes(len) as usize).min(MTU_FRAME);
                            ring.read(at + 2, &mut buf[..len]);
                            len
                        },
                    );
                }
                rx.publish(&ring);
                woken.push(g);
                true
            }
            Ok(false) => false,
            Err(_) => {
                // The guest moved its RX consumer index somewhere impossible.
                p.ring_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Copies a frame into the RX ring of the guest behind switch port
    /// `dest`; returns whether it fit.
    fn deliver(&self, dest: PortId, frame: &[u8], woken: &mut Vec<usize>, now_ns: u64) -> bool {
        if let Some((port, up)) = &self.uplink
            && *port == dest
        {
            return up.lock().send(frame);
        }
        self.to_guest(dest, woken, now_ns, |rx, ring| rx.push(ring, frame))
    }

    /// The guest (id and port) behind switch port `dest`, if any.
    fn guest_at(&self, dest: PortId) -> Option<(usize, &Port)> {
        let g = self.guest_of_slot.get(dest.slot())?.load(Ordering::Acquire);
        Some((g, self.port(g)?))
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
    /// other guests never wait, and up to `UPLINK_BATCH` frames are taken
    /// from the device on every poll.
    pub fn poll_uplink(&self, now_ns: u64, wake: &mut impl FnMut(usize)) {
        let Some((port, up)) = &self.uplink else { return };
        let mut held = self.held.lock();
        let mut woken = Vec::new();
        let mut next = held.next_waiting(None);
        while let Some(g) = next {
            self.retry_held(&mut held, g, now_ns, &mut woken);
            next = held.next_waiting(Some(g));
        }
        let mut frame = [0u8; MTU_FRAME];
        let mut took = 0;
        while took < UPLINK_BATCH {
            // One frame at a time, the uplink unlocked while it is
            // switched (the lock order is switch -> uplink).
            let Some(len) = up.lock().receive(&mut frame) else { break };
            took += 1;
            self.switch_host_frame(&mut held, *port, &frame[..len], now_ns, &mut woken);
        }
        up.lock().notify_rx();
        drop(held);
        if took > 0 {
            self.uplink_rx_ns.store(now_ns, Ordering::Relaxed);
        }
        woken.sort_unstable();
        woken.dedup();
        for g in woken {
            if let Some(p) = self.port(g)
                && p.notify(abi::time::events::NET_RX)
            {
                wake(g);
            }
        }
    }

    /// Switches one frame from the host (see `poll_uplink`).
    fn switch_host_frame(&self, held: &mut UplinkQueue<usize>, uplink: PortId, f: &[u8], now_ns: u64, woken: &mut Vec<usize>) {
        let mut switch = self.switch.lock();
        let tenant = switch.tenant_of(uplink);
        if self.capturing.load(Ordering::Relaxed) {
            self.tap(
                now_ns,
                |t| Some(t) == tenant.map(CaptureTarget::Tenant),
                |buf| {
                    buf[..f.len()].copy_from_slice(f);
                    f.len()
                },
            );
        }
        // The one port it is for, if the switch will not flood it (a frame
        // too short to name one is the switch's to refuse).
        let dst: Option<[u8; 6]> = f.get(..6).and_then(|d| d.try_into().ok());
        let one = match (dst, tenant) {
            (Some(dst), Some(t)) if !is_multicast(&dst) => switch.lookup(t, dst, now_ns),
            _ => None,
        };
        switch.forward(uplink, f, now_ns, &mut |dest| {
            let Some((g, p)) = self.guest_at(dest) else { return false };
            if Some(dest) == one {
                match held.offer(g, f, now_ns, |f| self.to_guest(dest, woken, now_ns, |rx, ring| rx.push(ring, f))) {
                    Offered::Delivered => true,
                    Offered::Held => false,
                    Offered::Dropped(_) => {
                        p.count_uplink_drops(1);
                        false
                    }
                }
            } else {
                let ok = self.deliver(dest, f, woken, now_ns);
                p.count_uplink_drops(usize::from(!ok));
                ok
            }
        });
    }

    /// Retries the frames waiting for guest `g` (in order, under its RX
    /// lock), dropping those that waited too long.
    fn retry_held(&self, held: &mut UplinkQueue<usize>, g: usize, now_ns: u64, woken: &mut Vec<usize>) {
        let Some(p) = self.port(g) else {
            held.remove(g);
            return;
        };
        let (mut rx, open) = p.rx.lock();
        if !open {
            // `disconnect` frees the queue; this only makes sure.
            p.count_uplink_drops(held.remove(g));
            return;
        }
        let ring = FrameRing::new(p.event_frame, abi::layout::NIC_RX_INDICES, &p.rx_frames);
        let capturing = self.capturing.load(Ordering::Relaxed);
        let done = held.retry(g, now_ns, |f| match rx.push(&ring, f) {
            Ok(true) => {
                if capturing {
                    self.tap(
                        now_ns,
                        |t| t == CaptureTarget::Guest(g),
                        |buf| {
                            buf[..f.len()].copy_from_slice(f);
                            f.len()
                        },
                    );
                }
                true
            }
            Ok(false) => false,
            Err(_) => {
                // The guest moved its RX consumer index somewhere impossible.
                p.ring_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        });
        if done.delivered > 0 {
            rx.publish(&ring);
            woken.push(g);
        }
        p.count_uplink_drops(done.expired);
    }

    /// Disconnects `guest`'s vNIC (it ended or lied): nothing is delivered
    /// to its rings any more, so their frames may be freed; the host's
    /// frames waiting for it are freed (and counted as dropped).
    pub fn disconnect(&self, guest: usize) {
        let Some(p) = self.port(guest) else { return };
        // The lock order everywhere is: the uplink's held frames (poll),
        // a sender's TX, the switch, a receiver's RX (drain, deliver), the
        // uplink. Taking RX before the switch here once deadlocked against
        // a drain delivering to this guest.
        let mut held = self.held.lock();
        let _tx = p.tx.lock();
        let mut switch = self.switch.lock();
        if p.rx.close() {
            switch.remove_port(p.switch_port);
        }
        p.count_uplink_drops(held.remove(guest));
    }
}
