//! The uplink's driver: virtio 1.0 network device (virtio-net), the
//! switch's port to the host, over a [`Transport`].
//!
//! Two split virtqueues (receive 0, transmit 1, see `net::virtq`), each
//! buffer a page holding the 12-byte virtio-net header and then the
//! Ethernet frame. Interrupts: started with [`MsixEntries`] (the PCI
//! transport's owner set up MSI-X), the device is asked to signal the
//! receive queue's used buffers and configuration changes through them,
//! and CPU 0 polls it when one comes (`machine::cpu_loop`); the transmit
//! queue's interrupts are suppressed, since `send` reaps finished buffers
//! itself. Without them, or when the device refuses an entry, it is polled
//! on every pass of CPU 0's loop.
//!
//! Notifications: with `VIRTIO_F_EVENT_IDX` (QEMU offers it) the device is
//! notified of a batch of sent frames or given-back receive buffers only
//! when its `avail_event` asks for it, and it interrupts for the first
//! frame after a poll that emptied the receive queue, not for every frame
//! (`net::virtq`). Without it, it is notified once per batch and the
//! transmit queue's interrupts are suppressed with `AVAIL_F_NO_INTERRUPT`.
//! Each notification is an exit in a VM: [`VirtioNet::notifies`] counts
//! them.
//!
//! Rules:
//! - The transport does register access, DMA memory and notifications;
//!   this file holds the device's logic and no address of its own. The
//!   x86 PCI transport is `arch/x86_64/virtio_pci.rs`.
//! - The device is not trusted to be well-behaved: every used entry is
//!   checked (`Virtq::pop_used`), a length outside a frame's bounds loses
//!   that frame (counted in `dropped`) and gives its buffer back, one
//!   receive looks at most at a queue's worth of entries, and the reset
//!   handshake waits a bounded time. Nothing the device does panics.
//! - Called under the back end's uplink lock, the last but the capture in
//!   its order (`net::backend`).

use super::backend::UplinkDevice;
use super::virtq::{BUFFER_BYTES, Virtq, VirtqError};
use crate::mm::PhysMem;
pub use crate::virtio::{CommonCfg, Transport, VIRTIO_VENDOR, VirtioError, status};
use abi::ring::{MIN_FRAME, MTU_FRAME};

/// The transitional and the modern virtio-net PCI device ids.
pub const VIRTIO_NET_DEVICES: [u16; 2] = [0x1000, 0x1041];
/// `virtio_net_hdr` (virtio 1.0 §5.1.6, no mergeable buffers), before each
/// frame in a buffer; ours is all zeros (no offloads).
pub const NET_HDR_BYTES: usize = 12;
/// Entries per queue we ask for (at most what the device offers).
const QUEUE_SIZE: u16 = 128;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// Feature bits (virtio 1.0 §5.1.3).
pub mod feature {
    /// The device has a MAC address in its configuration space.
    pub const NET_MAC: u64 = 1 << 5;
    pub use crate::virtio::feature::{RING_EVENT_IDX, VERSION_1};
}

/// MSI-X table entries for the device's interrupts (virtio 1.0
/// §4.1.5.1.2); several may share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntries {
    pub config: u16,
    pub rx: u16,
    pub tx: u16,
}

impl MsixEntries {
    /// Entries 0, 1 and 2 for configuration, receive and transmit if the
    /// table has three (QEMU's virtio-net-pci has `2 * queue pairs + 1`),
    /// else entry 0 for all.
    pub fn for_table(entries: u16) -> Self {
        if entries >= 3 { Self { config: 0, rx: 1, tx: 2 } } else { Self { config: 0, rx: 0, tx: 0 } }
    }
}

/// A started virtio-net device.
pub struct VirtioNet<T> {
    transport: T,
    rx: Virtq,
    tx: Virtq,
    rx_notify_off: u16,
    tx_notify_off: u16,
    pub mac: [u8; 6],
    /// Frames received from and sent to the host.
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames lost: no room to send, or a bad length or used entry from
    /// the device.
    pub dropped: u64,
    /// Notifications sent to the device (both queues).
    pub notifies: u64,
    /// The device took our MSI-X entries: it interrupts when frames come.
    pub interrupts: bool,
    /// VIRTIO_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
}

impl<T: Transport> VirtioNet<T> {
    /// Resets and starts the device behind `transport` (virtio 1.0 §3.1.1),
    /// polled.
    pub fn start(t: T) -> Result<Self, VirtioError> {
        Self::start_with(t, None)
    }

    /// The same, with its interrupts through MSI-X table entries `msix`
    /// if given (and the device takes them: see [`Self::interrupts`]).
    pub fn start_with(mut t: T, msix: Option<MsixEntries>) -> Result<Self, VirtioError> {
        use crate::virtio::{NO_VECTOR, config_vector, queue_vector};
        use CommonCfg::*;
        let agreed =
            crate::virtio::negotiate(&mut t, |offered| feature::VERSION_1 | (offered & (feature::NET_MAC | feature::RING_EVENT_IDX)))?;
        let event_idx = agreed & feature::RING_EVENT_IDX != 0;
        // Every entry read back: a device that refuses one (answers
        // NO_VECTOR) is polled, with no vector at all.
        let interrupts = msix.is_some_and(|e| {
            let ok = config_vector(&mut t, e.config) & queue_vector(&mut t, RX_QUEUE, e.rx) & queue_vector(&mut t, TX_QUEUE, e.tx);
            if !ok {
                config_vector(&mut t, NO_VECTOR);
                queue_vector(&mut t, RX_QUEUE, NO_VECTOR);
                queue_vector(&mut t, TX_QUEUE, NO_VECTOR);
            }
            ok
        });
        let (mut rx, rx_notify_off) = crate::virtio::queue(&mut t, RX_QUEUE, QUEUE_SIZE)?;
        let (mut tx, tx_notify_off) = crate::virtio::queue(&mut t, TX_QUEUE, QUEUE_SIZE)?;
        if event_idx {
            rx.use_event_idx();
            tx.use_event_idx();
        }
        rx.set_interrupts(t.dma(), interrupts);
        tx.set_interrupts(t.dma(), false);
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = t.device_config(i);
        }
        t.write(DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK));
        let mut up = Self {
            transport: t,
            rx,
            tx,
            rx_notify_off,
            tx_notify_off,
            mac,
            rx_frames: 0,
            tx_frames: 0,
            dropped: 0,
            notifies: 0,
            interrupts,
            event_idx,
        };
        while let Some(id) = up.rx.take() {
            up.rx.submit(up.transport.dma(), id, BUFFER_BYTES, true);
        }
        up.notify_rx();
        Ok(up)
    }

    /// The transport (the host tests' fake device).
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends one frame to the host; returns false if the queue is full.
    /// Takes back the TX buffers the device is done with.
    fn reap_tx(&mut self) {
        loop {
            match self.tx.pop_used(self.transport.dma()) {
                Ok(Some(u)) => self.tx.give_back(u.id),
                Err(VirtqError::BadUsedLen { id, .. }) => self.tx.give_back(id),
                Ok(None) | Err(VirtqError::BadUsedId(_)) => break,
            }
        }
    }

    /// Whether [`Self::send`] would find a free TX buffer now.
    pub fn has_room(&mut self) -> bool {
        self.reap_tx();
        self.tx.free_count() > 0
    }

    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.reap_tx();
        if !(MIN_FRAME..=MTU_FRAME).contains(&frame.len()) {
            self.dropped += 1;
            return false;
        }
        let Some(id) = self.tx.take() else {
            self.dropped += 1;
            return false;
        };
        let buf = self.tx.buffer(id);
        let mem = self.transport.dma();
        mem.write(buf, 0, &[0u8; NET_HDR_BYTES]);
        mem.write(buf, NET_HDR_BYTES, frame);
        self.tx.submit(mem, id, (NET_HDR_BYTES + frame.len()) as u32, false);
        self.tx_frames += 1;
        true
    }

    /// Copies the next frame the host sent into `buf` and gives its
    /// buffer back to the device (announced by [`Self::notify_rx`]);
    /// returns its length, or `None` when none is waiting (then, with
    /// interrupts, the device interrupts for the next one). Frames of a bad
    /// length are skipped and counted; at most a queue's worth of used
    /// entries is looked at.
    pub fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        for _ in 0..self.rx.size {
            let mem = self.transport.dma();
            match self.rx.pop_used(mem) {
                Ok(Some(u)) => {
                    let len = (u.len as usize).saturating_sub(NET_HDR_BYTES);
                    let good = (MIN_FRAME..=MTU_FRAME).contains(&len);
                    if good {
                        mem.read(self.rx.buffer(u.id), NET_HDR_BYTES, &mut buf[..len]);
                        self.rx_frames += 1;
                    } else {
                        self.dropped += 1;
                    }
                    self.rx.submit(mem, u.id, BUFFER_BYTES, true);
                    if good {
                        return Some(len);
                    }
                }
                Ok(None) => return None,
                Err(VirtqError::BadUsedLen { id, .. }) => {
                    // Its buffer is ours again: back to the device.
                    self.dropped += 1;
                    self.rx.submit(mem, id, BUFFER_BYTES, true);
                }
                Err(VirtqError::BadUsedId(_)) => {
                    self.dropped += 1;
                    break;
                }
            }
        }
        // Given up on a lying device with entries perhaps left behind: the
        // next poll waits for its next used entry to interrupt.
        self.rx.interrupt_at_next(self.transport.dma());
        None
    }

    /// Tells the device about the frames [`Self::send`] queued (once per
    /// batch, and with the event index only if it asked: each notification
    /// is an exit to the device's emulation).
    pub fn flush(&mut self) {
        if self.tx.kick_prepare(self.transport.dma()) {
            self.transport.notify(TX_QUEUE, self.tx_notify_off);
            self.notifies += 1;
        }
    }

    /// Tells the device about the buffers [`Self::receive`] gave back
    /// (once per batch, not per frame, and with the event index only if it
    /// asked: with buffers still in hand it does not).
    pub fn notify_rx(&mut self) {
        if self.rx.kick_prepare(self.transport.dma()) {
            self.transport.notify(RX_QUEUE, self.rx_notify_off);
            self.notifies += 1;
        }
    }
}

impl<T: Transport + Send> UplinkDevice for VirtioNet<T> {
    fn send(&mut self, frame: &[u8]) -> bool {
        VirtioNet::send(self, frame)
    }
    fn has_room(&mut self) -> bool {
        VirtioNet::has_room(self)
    }
    fn flush(&mut self) {
        VirtioNet::flush(self)
    }
    fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        VirtioNet::receive(self, buf)
    }
    fn notify_rx(&mut self) {
        VirtioNet::notify_rx(self)
    }
    fn notifies(&self) -> u64 {
        self.notifies
    }
}

#[cfg(test)]
mod tests;
