//! What the per-CPU loop, guest creation and the control channel need of
//! the network back end (the guests' vNIC rings, the switch, the uplink,
//! packet capture).
//!
//! Rules: guests are named by their id (`sched::Id`); a guest's port is
//! attached once, at creation, and disconnected once, when it ends,
//! before its frames are freed. Every method may be called from any CPU
//! at any time; the back end does its own locking. A back end that finds
//! a guest lying in its rings says why and the loop disconnects it.

use crate::mm::PhysAddr;
use crate::net::backend::{Net, UplinkDevice};
use crate::net::capture::Capture;
pub use crate::net::capture::CaptureTarget;
use crate::net::port::{GuestEvents, GuestRing, Port};
use crate::net::switch::Switch;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// A vNIC to attach: its rings, its event page and its limits.
pub struct Attach<'a, R, E> {
    pub guest: usize,
    pub tenant: u32,
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub ring_slots: u32,
    pub limits: &'a abi::bundle::Limits,
    pub tx: R,
    pub rx: R,
    /// The guest's event page (its ring indices live there too).
    pub events: E,
    /// Where the back end's own indices start: its TX consumer's and its
    /// RX producer's (0, 0 for a new guest; a clone's template's).
    pub at: (u32, u32),
}

/// What a guest's port has seen, for the accounting line and the listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the guest sent (the switch received them from its port) and
    /// frames it received.
    pub sent_frames: u64,
    pub received_frames: u64,
    /// Bytes of its rings, and what the back end holds for the port.
    pub ring_bytes: u64,
    pub record_bytes: u64,
    /// Frames dropped for its rate limits, ring-protocol errors, frames from
    /// the host dropped for it, frames it sent with a forged source.
    pub limited: u64,
    pub ring_errors: u64,
    pub uplink_dropped: u64,
    pub spoofed: u64,
    /// Times a frame it sent waited for a full receiver; frames from other
    /// guests its full ring refused.
    pub tx_waits: u64,
    pub rx_full_drops: u64,
    /// Its ARP requests the switch answered itself.
    pub arp_answered: u64,
    /// Frames it sent too large for a receiver; frames from the host for
    /// it with a bad checksum.
    pub oversize: u64,
    pub bad_checksums: u64,
}

/// The next thing a capture hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Captured {
    /// A frame taken at monotonic ns.
    Frame(u64, Vec<u8>),
    /// The capture ended (its count reached or its time up).
    End { taken: u32, dropped: u64 },
}

/// The two counters in front of a value behind an `Arc`.
const ARC_COUNTS: u64 = 2 * core::mem::size_of::<usize>() as u64;

/// The network back end.
pub trait Network: Sync {
    /// A guest's ring, as the platform makes it.
    type Ring;
    /// A guest's event page, as the platform makes it.
    type Events;
    /// Gives guest `a.guest` its port.
    fn attach(&self, a: Attach<'_, Self::Ring, Self::Events>) -> Result<(), String>;
    /// Forwards every frame waiting in `guest`'s TX ring; calls `wake` for
    /// each guest that received some (its event bits are already raised).
    /// Returns why the guest must be disconnected, if it broke the ring
    /// protocol.
    fn drain(&self, guest: usize, now_ns: u64, wake: &mut dyn FnMut(usize)) -> Result<(), String>;
    /// Guest `guest`'s deferred ring pages were just made (its memory made
    /// them at their first touch): its port's rings learn their frames,
    /// in ring order, and take frames from then on.
    fn rings_made(&self, guest: usize, tx: &[PhysAddr], rx: &[PhysAddr]);
    /// Guest `guest` left a CPU (it may have taken frames from its RX
    /// ring): senders whose frames wait for room in it try again. Returns
    /// the senders that broke their TX ring meanwhile, and why.
    fn receiver_ran(&self, guest: usize, now_ns: u64, wake: &mut dyn FnMut(usize)) -> Vec<(usize, String)>;
    /// Retries senders waiting for the uplink's queue, for a receiver that
    /// is gone, or past their bounded wait. Returns when to call it next
    /// (`None`: nobody waits) and the senders that broke their TX ring.
    fn retry_waiting(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) -> (Option<u64>, Vec<(usize, String)>);
    /// Takes frames from the host, if there is an uplink (after retrying
    /// those waiting for room in a guest's ring); calls `wake` as
    /// [`Network::drain`] does. Returns true if it stopped at its batch
    /// with frames perhaps still waiting in the device: poll again soon.
    fn poll_uplink(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) -> bool;
    /// Retries only the host's frames waiting for room in guests' rings,
    /// without touching the device; returns whether some still wait.
    fn retry_uplink_held(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) -> bool;
    /// When a frame last came from the host, if there is an uplink.
    fn uplink_rx_ns(&self) -> Option<u64>;
    /// Nothing is delivered to `guest` any more (it ended or lied).
    fn disconnect(&self, guest: usize);
    /// Forgets `guest`'s port (disconnected before): its id may be reused.
    fn release(&self, guest: usize);
    /// Guest `guest`'s port's counters, if it has a port.
    fn port_stats(&self, guest: usize) -> Option<PortStats>;
    /// ARP requests the switch answered itself: all of them, and the
    /// host's (through the uplink).
    fn arp_answered(&self) -> (u64, u64);
    /// Notifications the uplink's driver sent its device (0 without one).
    fn uplink_notifies(&self) -> u64;
    /// What the back end holds per guest whether it has a port or not.
    fn bytes_per_guest(&self) -> u64;
    /// Starts a capture of at most `max` frames, until `until_ns`.
    fn start_capture(&self, target: CaptureTarget, max: u32, until_ns: u64);
    /// Whether a capture is in progress.
    fn capturing(&self) -> bool;
    /// The next captured frame, or the end of the capture, or `None` while
    /// it goes on with nothing new.
    fn next_captured(&self, now_ns: u64) -> Option<Captured>;
}

/// The library's back end (`net::backend`) is the network; the arch layer
/// supplies its rings, event pages and uplink device.
impl<R: GuestRing, E: GuestEvents, U: UplinkDevice + Send> Network for Net<R, E, U> {
    type Ring = R;
    type Events = E;

    fn attach(&self, a: Attach<'_, R, E>) -> Result<(), String> {
        let port = self.switch.lock().add_port(a.tenant, a.mac, a.ipv4).map_err(|e| alloc::format!("switch: {e:?}"))?;
        match self.guest_of_slot.get(port.slot()) {
            Some(slot) => slot.store(a.guest, Ordering::Release),
            None => {
                self.switch.lock().remove_port(port);
                return Err("no room for another vNIC".into());
            }
        }
        let p = Port::new(port, a.tenant, a.ring_slots, a.limits, a.tx, a.rx, a.events).starting_at(a.at);
        match self.ports.get(a.guest) {
            Some(slot) => {
                slot.set(p);
                Ok(())
            }
            None => {
                self.switch.lock().remove_port(p.switch_port);
                Err("no room for another vNIC".into())
            }
        }
    }

    fn rings_made(&self, guest: usize, tx: &[PhysAddr], rx: &[PhysAddr]) {
        if let Some(p) = self.port(guest) {
            p.provide_rings(tx, rx);
        }
    }

    fn drain(&self, guest: usize, now_ns: u64, wake: &mut dyn FnMut(usize)) -> Result<(), String> {
        Net::drain(self, guest, now_ns, &mut |g, _| wake(g)).map_err(|e| alloc::format!("{e}"))
    }

    fn receiver_ran(&self, guest: usize, now_ns: u64, wake: &mut dyn FnMut(usize)) -> Vec<(usize, String)> {
        let broken = Net::receiver_ran(self, guest, now_ns, &mut |g, _| wake(g));
        broken.into_iter().map(|(g, e)| (g, alloc::format!("{e}"))).collect()
    }

    fn retry_waiting(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) -> (Option<u64>, Vec<(usize, String)>) {
        let (next, broken) = Net::retry_waiting(self, now_ns, &mut |g, _| wake(g));
        (next, broken.into_iter().map(|(g, e)| (g, alloc::format!("{e}"))).collect())
    }

    fn poll_uplink(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) -> bool {
        Net::poll_uplink(self, now_ns, &mut |g| wake(g))
    }

    fn retry_uplink_held(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) -> bool {
        Net::retry_uplink_held(self, now_ns, &mut |g| wake(g))
    }

    fn uplink_rx_ns(&self) -> Option<u64> {
        self.uplink.as_ref().map(|_| self.uplink_rx_ns.load(Ordering::Relaxed))
    }

    fn disconnect(&self, guest: usize) {
        Net::disconnect(self, guest)
    }

    fn release(&self, guest: usize) {
        Net::release(self, guest)
    }

    fn port_stats(&self, guest: usize) -> Option<PortStats> {
        let p = self.port(guest)?;
        let st = self.switch.lock().stats(p.switch_port).unwrap_or_default();
        Some(PortStats {
            // The switch counts what it received from the port (the guest
            // sent) and what it transmitted to it.
            sent_frames: st.rx_frames,
            received_frames: st.tx_frames,
            ring_bytes: p.ring_bytes(),
            record_bytes: p.record_bytes() + Switch::BYTES_PER_PORT as u64 + ARC_COUNTS,
            limited: p.limited(),
            ring_errors: p.ring_errors.load(Ordering::Relaxed),
            uplink_dropped: p.uplink_dropped(),
            spoofed: p.spoofed.load(Ordering::Relaxed),
            tx_waits: p.tx_waits(),
            rx_full_drops: p.rx_full_drops(),
            arp_answered: p.arp_answered.load(Ordering::Relaxed),
            oversize: p.oversize.load(Ordering::Relaxed),
            bad_checksums: p.bad_checksums.load(Ordering::Relaxed),
        })
    }

    fn arp_answered(&self) -> (u64, u64) {
        let switch = self.switch.lock();
        let host = switch.uplink().and_then(|up| switch.stats(up)).map_or(0, |s| s.arp_answered);
        (switch.totals().arp_answered, host)
    }

    fn uplink_notifies(&self) -> u64 {
        Net::uplink_notifies(self)
    }

    fn bytes_per_guest(&self) -> u64 {
        (crate::slot::Slot::<Port<R, E>>::BYTES + core::mem::size_of::<core::sync::atomic::AtomicUsize>()) as u64
    }

    fn start_capture(&self, target: CaptureTarget, max: u32, until_ns: u64) {
        *self.capture.lock() = Capture { target: Some(target), max, until_ns, ..Default::default() };
        self.capturing.store(true, Ordering::Release);
    }

    fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Acquire)
    }

    fn next_captured(&self, now_ns: u64) -> Option<Captured> {
        let mut c = self.capture.lock();
        match c.pop() {
            Some((ns, frame)) => Some(Captured::Frame(ns, frame)),
            None if c.taken >= c.max || now_ns >= c.until_ns => {
                self.capturing.store(false, Ordering::Release);
                let end = Captured::End { taken: c.taken, dropped: c.dropped };
                *c = Default::default();
                Some(end)
            }
            None => None,
        }
    }
}
