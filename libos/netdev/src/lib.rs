//! The guest side of a vNIC: [`RingDevice`], a `smoltcp::phy::Device` over
//! the TX and RX rings of `abi::ring`.
//!
//! Transmit: smoltcp builds the frame in a local buffer, which is copied into
//! the next TX slot and published at once (a store, no hypercall); the
//! hypervisor drains the ring when the guest blocks, yields or kicks.
//! Receive: the next RX slot is copied out (its length checked by the ring
//! code) and handed to smoltcp. A hypervisor that broke the ring protocol is
//! counted and treated as an empty ring: the guest never trusts shared memory.
//!
//! [`RawDevice`] is the same rings without smoltcp, frame by frame.
//!
//! Pure logic over `abi::ring::RingMemory`, so the tests below run two
//! smoltcp stacks against each other on the host.
#![no_std]
#![forbid(unsafe_code)]

use abi::ring::{Consumer, MTU_FRAME, Producer, RingError, RingMemory};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

mod raw;
pub use raw::{RawDevice, SendError};

/// What the device has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames smoltcp wanted to send while the TX ring was full.
    pub tx_full: u64,
    /// The last look at the TX ring found it full.
    tx_stalled: bool,
    /// Ring protocol violations seen (bad index or length).
    pub ring_errors: u64,
}

impl Stats {
    /// Whether smoltcp last found the TX ring full (cleared when it finds
    /// room): the guest may then block until the hypervisor says there is
    /// room (`events::NET_TX`) instead of polling for it.
    pub fn tx_stalled(&self) -> bool {
        self.tx_stalled
    }
}

/// A vNIC: the TX ring (we produce) and the RX ring (we consume).
pub struct RingDevice<M: RingMemory> {
    tx_mem: M,
    tx: Producer,
    rx_mem: M,
    rx: Consumer,
    rx_buf: [u8; MTU_FRAME],
    tx_buf: [u8; MTU_FRAME],
    pub stats: Stats,
}

impl<M: RingMemory> RingDevice<M> {
    /// A device over fresh rings (both indices 0) of `slots` slots each.
    ///
    /// # Panics
    /// If `slots` is not `abi::ring::valid_slots`.
    pub fn new(tx_mem: M, rx_mem: M, slots: u32) -> Self {
        Self {
            tx_mem,
            tx: Producer::new(slots),
            rx_mem,
            rx: Consumer::new(slots),
            rx_buf: [0; MTU_FRAME],
            tx_buf: [0; MTU_FRAME],
            stats: Stats::default(),
        }
    }

    /// Whether a received frame is waiting (for the executor: poll the
    /// stack before blocking).
    pub fn rx_pending(&self) -> bool {
        matches!(self.rx.pending(&self.rx_mem), Ok(n) if n > 0)
    }

    /// Frames sent so far (the TX producer index).
    pub fn tx_index(&self) -> u32 {
        self.tx.index()
    }

    fn pop(&mut self) -> Option<usize> {
        loop {
            match self.rx.pop(&self.rx_mem, &mut self.rx_buf) {
                Ok(Some(n)) => {
                    self.rx.release(&self.rx_mem);
                    self.stats.rx_frames += 1;
                    return Some(n);
                }
                Ok(None) => return None,
                Err(RingError::BadLength { .. }) => {
                    self.stats.ring_errors += 1;
                    let _ = self.rx.skip(&self.rx_mem);
                    self.rx.release(&self.rx_mem);
                }
                Err(RingError::BadIndex { .. }) => {
                    self.stats.ring_errors += 1;
                    return None;
                }
            }
        }
    }

    fn tx_space(&mut self) -> bool {
        let room = match self.tx.space(&self.tx_mem) {
            Ok(n) => n > 0,
            Err(_) => {
                self.stats.ring_errors += 1;
                false
            }
        };
        self.stats.tx_stalled = !room;
        room
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a, M: RingMemory> {
    mem: &'a M,
    tx: &'a mut Producer,
    buf: &'a mut [u8; MTU_FRAME],
    stats: &'a mut Stats,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl<M: RingMemory> phy::TxToken for TxToken<'_, M> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU_FRAME);
        let r = f(&mut self.buf[..len]);
        match self.tx.push(self.mem, &self.buf[..len]) {
            Ok(true) => {
                self.tx.publish(self.mem);
                self.stats.tx_frames += 1;
            }
            Ok(false) => {
                self.stats.tx_full += 1;
                self.stats.tx_stalled = true;
            }
            Err(_) => self.stats.ring_errors += 1,
        }
        r
    }
}

impl<M: RingMemory> phy::Device for RingDevice<M> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, M>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_, M>)> {
        let n = self.pop()?;
        let rx = RxToken { frame: &self.rx_buf[..n] };
        let tx = TxToken { mem: &self.tx_mem, tx: &mut self.tx, buf: &mut self.tx_buf, stats: &mut self.stats };
        Some((rx, tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_, M>> {
        if !self.tx_space() {
            return None;
        }
        Some(TxToken { mem: &self.tx_mem, tx: &mut self.tx, buf: &mut self.tx_buf, stats: &mut self.stats })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU_FRAME;
        caps.max_burst_size = Some(self.tx.slots() as usize);
        caps
    }
}

#[cfg(test)]
mod tests;
