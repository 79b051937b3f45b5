//! The guest side of a vNIC: [`RingDevice`], a `smoltcp::phy::Device` over
//! the TX and RX rings of `abi::ring`.
//!
//! No copies of its own: smoltcp builds a frame in place in the next TX
//! span ([`Producer::reserve`]), then the header is written and the frame
//! published at once (a store, no hypercall); the hypervisor drains the
//! ring when the guest blocks, yields or kicks. A received frame is handed
//! to smoltcp where it lies in the RX span, and its slots are released
//! after smoltcp is done with it. A hypervisor that broke the ring
//! protocol is counted and treated as an empty ring: the guest never
//! trusts shared memory with its own memory safety.
//!
//! Frames are up to the ring's `max_frame` (`NicInfo::mtu`; 16 KiB with
//! the default 16 slots, 64 KiB from 64). No checksum is computed or
//! verified here (`ChecksumCapabilities::ignored`): every TX frame says
//! so (`flags::TX_CSUM_BLANK`), and the hypervisor fills them for frames
//! that leave the machine and verifies the host's before they arrive
//! (`flags::RX_CSUM_OK`); between guests the hypervisor copies the bytes
//! itself.
//!
//! [`RawDevice`] is the same rings without smoltcp, frame by frame.
//! [`clone`] gives a clone of a paused guest its new identity.
//!
//! Pure logic over `abi::ring::RingSlices`, so the tests below run two
//! smoltcp stacks against each other on the host.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use abi::ring::{Consumer, MTU_FRAME, Producer, RingError, RingSlices, flags};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub mod arp;
pub mod clone;
mod raw;
pub use raw::{RawDevice, SendError};

/// What the device has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Bytes of the frames sent.
    pub tx_bytes: u64,
    /// Frames smoltcp wanted to send while the TX ring was full, or larger
    /// than it carries (dropped).
    pub tx_full: u64,
    /// Ring protocol violations seen (bad index or header).
    pub ring_errors: u64,
    /// Frames received without `RX_CSUM_OK` (IPv4 fragments from the
    /// host, which smoltcp drops here anyway).
    pub rx_unchecked: u64,
    /// The last look at the TX ring found no room for a frame of the MTU.
    tx_stalled: bool,
}

impl Stats {
    /// Whether smoltcp last found no room in the TX ring (cleared when it
    /// finds room): the guest may then block until the hypervisor says
    /// there is room (`events::NET_TX`) instead of polling for it.
    pub fn tx_stalled(&self) -> bool {
        self.tx_stalled
    }
}

/// A vNIC: the TX ring (we produce) and the RX ring (we consume).
pub struct RingDevice<M: RingSlices> {
    tx_mem: M,
    tx: Producer,
    rx_mem: M,
    rx: Consumer,
    /// The largest frame we send and expect.
    mtu: usize,
    pub stats: Stats,
}

impl<M: RingSlices> RingDevice<M> {
    /// A device over fresh rings (both indices 0) of `slots` slots each,
    /// its MTU the largest frame they carry (`abi::ring::max_frame`).
    ///
    /// # Panics
    /// If `slots` is not `abi::ring::valid_slots`.
    pub fn new(tx_mem: M, rx_mem: M, slots: u32) -> Self {
        let tx = Producer::new(slots);
        let mtu = tx.max_frame();
        Self { tx_mem, tx, rx_mem, rx: Consumer::new(slots), mtu, stats: Stats::default() }
    }

    /// Lowers the MTU to `mtu` (what `NicInfo::mtu` says), never below the
    /// Ethernet's [`MTU_FRAME`] nor above what the rings carry.
    pub fn with_mtu(mut self, mtu: usize) -> Self {
        self.mtu = mtu.clamp(MTU_FRAME, self.tx.max_frame());
        self
    }

    /// Slots per ring.
    pub fn slots(&self) -> u32 {
        self.tx.slots()
    }

    /// The largest frame sent and received.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Whether a received frame is waiting (for the executor: poll the
    /// stack before blocking).
    pub fn rx_pending(&self) -> bool {
        matches!(self.rx.pending(&self.rx_mem), Ok(n) if n > 0)
    }

    /// TX slots used so far (the TX producer index): it moves when a frame
    /// is sent.
    pub fn tx_index(&self) -> u32 {
        self.tx.index()
    }

    /// Queues a frame the caller built (an ARP request of [`arp`]) beside
    /// smoltcp's, if the TX ring has room for it; whether it was queued.
    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        match self.tx.push(&self.tx_mem, frame, 0) {
            Ok(true) => {
                self.tx.publish(&self.tx_mem);
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
                true
            }
            Ok(false) => false,
            Err(_) => {
                self.stats.ring_errors += 1;
                false
            }
        }
    }

    /// The next received frame, in place; lying headers are counted and
    /// skipped.
    fn peek(&mut self) -> Option<abi::ring::Frame> {
        next_frame(&mut self.rx, &self.rx_mem, &mut self.stats)
    }

    /// Whether the TX ring has room for a frame of the MTU (so a token's
    /// frame, whatever its size, goes in). A "no" makes the guest wait for
    /// `events::NET_TX` (`tx_stalled`), so it is asked the way that cannot
    /// miss the hypervisor's drain (`Producer::fits_before_wait`).
    fn tx_space(&mut self) -> bool {
        let room = match self.tx.fits_before_wait(&self.tx_mem, self.mtu) {
            Ok(room) => room,
            Err(_) => {
                self.stats.ring_errors += 1;
                false
            }
        };
        self.stats.tx_stalled = !room;
        room
    }
}

/// The next frame in an RX ring, in place (counted), passing over and
/// counting entries with lying headers; `None` when the ring is empty or
/// its producer broke the index.
fn next_frame<M: RingSlices>(rx: &mut Consumer, mem: &M, stats: &mut Stats) -> Option<abi::ring::Frame> {
    loop {
        match rx.peek(mem) {
            Ok(Some(f)) => {
                stats.rx_frames += 1;
                stats.rx_unchecked += u64::from(f.flags & flags::RX_CSUM_OK == 0);
                return Some(f);
            }
            Ok(None) => return None,
            Err(RingError::BadLength { .. }) => {
                stats.ring_errors += 1;
                let _ = rx.skip(mem);
                rx.release(mem);
            }
            Err(RingError::BadIndex { .. }) => {
                stats.ring_errors += 1;
                return None;
            }
        }
    }
}

/// A received frame where it lies in the RX ring; its slots are released
/// once smoltcp has consumed it.
pub struct RxToken<'a, M: RingSlices> {
    mem: &'a M,
    rx: &'a mut Consumer,
    frame: abi::ring::Frame,
}

/// The next TX span, for smoltcp to write a frame into.
pub struct TxToken<'a, M: RingSlices> {
    mem: &'a M,
    tx: &'a mut Producer,
    mtu: usize,
    stats: &'a mut Stats,
}

impl<M: RingSlices> phy::RxToken for RxToken<'_, M> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = self.mem.with_slice(self.frame.at, self.frame.len, f);
        let _ = self.rx.skip(self.mem);
        self.rx.release(self.mem);
        r
    }
}

impl<M: RingSlices> phy::TxToken for TxToken<'_, M> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let reserved = if len > self.mtu { Ok(None) } else { self.tx.reserve(self.mem, len) };
        let at = match reserved {
            Ok(Some(at)) => at,
            other => {
                // No room (a token handed out with a received frame), or a
                // frame over the MTU: smoltcp writes it into scratch memory
                // and it is dropped, as a full NIC would.
                match other {
                    Err(RingError::BadIndex { .. }) => self.stats.ring_errors += 1,
                    _ => {
                        self.stats.tx_full += 1;
                        self.stats.tx_stalled = true;
                    }
                }
                return f(&mut alloc::vec![0u8; len]);
            }
        };
        let r = self.mem.with_slice_mut(at, len, f);
        self.tx.commit(self.mem, len, flags::TX_CSUM_BLANK);
        self.tx.publish(self.mem);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        r
    }
}

impl<M: RingSlices> phy::Device for RingDevice<M> {
    type RxToken<'a>
        = RxToken<'a, M>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, M>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_, M>, TxToken<'_, M>)> {
        let frame = self.peek()?;
        let rx = RxToken { mem: &self.rx_mem, rx: &mut self.rx, frame };
        let tx = TxToken { mem: &self.tx_mem, tx: &mut self.tx, mtu: self.mtu, stats: &mut self.stats };
        Some((rx, tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_, M>> {
        if !self.tx_space() {
            return None;
        }
        Some(TxToken { mem: &self.tx_mem, tx: &mut self.tx, mtu: self.mtu, stats: &mut self.stats })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(self.tx.slots() as usize);
        caps.checksum = ChecksumCapabilities::ignored();
        caps
    }
}

#[cfg(test)]
mod tests;
