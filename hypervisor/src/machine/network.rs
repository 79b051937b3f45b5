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
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

/// A vNIC to attach: where its rings and event page are, and its limits.
pub struct Attach<'a> {
    pub guest: usize,
    pub tenant: u32,
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub ring_slots: u32,
    pub limits: &'a abi::bundle::Limits,
    /// The frames of the TX and the RX ring's slots, in order.
    pub tx_frames: Box<[PhysAddr]>,
    pub rx_frames: Box<[PhysAddr]>,
    /// The guest's event page (its ring indices live there too).
    pub event_page: PhysAddr,
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
}

/// What a packet capture takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureTarget {
    /// Frames a guest (by id) sends or receives.
    Guest(usize),
    /// Frames the guests of a tenant send, and the host's for tenant 0.
    Tenant(u32),
}

/// The next thing a capture hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Captured {
    /// A frame taken at monotonic ns.
    Frame(u64, Vec<u8>),
    /// The capture ended (its count reached or its time up).
    End { taken: u32, dropped: u64 },
}

/// The network back end.
pub trait Network: Sync {
    /// Gives guest `a.guest` its port.
    fn attach(&self, a: Attach<'_>) -> Result<(), String>;
    /// Forwards every frame waiting in `guest`'s TX ring; calls `wake` for
    /// each guest that received some (its event bits are already raised).
    /// Returns why the guest must be disconnected, if it broke the ring
    /// protocol.
    fn drain(&self, guest: usize, now_ns: u64, wake: &mut dyn FnMut(usize)) -> Result<(), String>;
    /// Takes frames from the host, if there is an uplink; calls `wake` as
    /// [`Network::drain`] does.
    fn poll_uplink(&self, now_ns: u64, wake: &mut dyn FnMut(usize));
    /// When a frame last came from the host, if there is an uplink.
    fn uplink_rx_ns(&self) -> Option<u64>;
    /// Nothing is delivered to `guest` any more (it ended or lied).
    fn disconnect(&self, guest: usize);
    /// Guest `guest`'s port's counters, if it has a port.
    fn port_stats(&self, guest: usize) -> Option<PortStats>;
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
