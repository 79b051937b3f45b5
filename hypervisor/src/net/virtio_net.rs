//! The uplink's driver: virtio 1.0 network device (virtio-net), the
//! switch's port to the host, over a [`Transport`].
//!
//! Two split virtqueues (receive 0, transmit 1, see `net::virtq`), each
//! buffer a page holding the 12-byte virtio-net header and then the
//! Ethernet frame. The device is polled (by CPU 0 on every pass of its
//! scheduling loop and on its idle tick), not interrupt-driven.
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
use abi::ring::{MIN_FRAME, MTU_FRAME};
use core::sync::atomic::{Ordering, fence};

/// PCI vendor of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// The transitional and the modern virtio-net PCI device ids.
pub const VIRTIO_NET_DEVICES: [u16; 2] = [0x1000, 0x1041];
/// `virtio_net_hdr` (virtio 1.0 §5.1.6, no mergeable buffers), before each
/// frame in a buffer; ours is all zeros (no offloads).
pub const NET_HDR_BYTES: usize = 12;
/// Entries per queue we ask for (at most what the device offers).
const QUEUE_SIZE: u16 = 128;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Reads of the status register before a reset counts as failed.
const RESET_POLLS: u32 = 1_000_000;

/// `device_status` bits (virtio 1.0 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
}

/// Feature bits (virtio 1.0 §5.1.3, §6).
pub mod feature {
    /// The device has a MAC address in its configuration space.
    pub const NET_MAC: u64 = 1 << 5;
    /// The device complies with virtio 1.0.
    pub const VERSION_1: u64 = 1 << 32;
}

/// The registers of `virtio_pci_common_cfg` (virtio 1.0 §4.1.4.3) we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonCfg {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    DeviceStatus,
    QueueSelect,
    QueueSize,
    QueueEnable,
    QueueNotifyOff,
    QueueDesc,
    QueueDriver,
    QueueDevice,
}

impl CommonCfg {
    /// Its offset in the structure.
    pub const fn offset(self) -> usize {
        match self {
            Self::DeviceFeatureSelect => 0x00,
            Self::DeviceFeature => 0x04,
            Self::DriverFeatureSelect => 0x08,
            Self::DriverFeature => 0x0c,
            Self::DeviceStatus => 0x14,
            Self::QueueSelect => 0x16,
            Self::QueueSize => 0x18,
            Self::QueueEnable => 0x1c,
            Self::QueueNotifyOff => 0x1e,
            Self::QueueDesc => 0x20,
            Self::QueueDriver => 0x28,
            Self::QueueDevice => 0x30,
        }
    }

    /// Its width in bytes (1, 2, 4 or 8).
    pub const fn width(self) -> usize {
        match self {
            Self::DeviceStatus => 1,
            Self::QueueSelect | Self::QueueSize | Self::QueueEnable | Self::QueueNotifyOff => 2,
            Self::DeviceFeatureSelect | Self::DeviceFeature | Self::DriverFeatureSelect | Self::DriverFeature => 4,
            Self::QueueDesc | Self::QueueDriver | Self::QueueDevice => 8,
        }
    }
}

/// How the driver reaches its device.
pub trait Transport {
    /// Memory the device reaches by physical address (queues, buffers).
    type Dma: PhysMem;
    /// Reads a common configuration register (at its width).
    fn read(&mut self, reg: CommonCfg) -> u64;
    /// Writes a common configuration register (at its width).
    fn write(&mut self, reg: CommonCfg, value: u64);
    /// Reads byte `offset` of the device-specific configuration.
    fn device_config(&mut self, offset: usize) -> u8;
    /// Tells the device that `queue` (whose `queue_notify_off` is
    /// `notify_off`) has new buffers.
    fn notify(&mut self, queue: u16, notify_off: u16);
    /// The DMA memory.
    fn dma(&mut self) -> &mut Self::Dma;
}

/// Why the device could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    /// The transport found no virtio 1.0 interface (PCI: capabilities).
    NoModernInterface,
    /// The device did not finish its reset.
    ResetTimeout,
    NoVersion1,
    FeaturesRefused,
    QueueMissing(u16),
    OutOfMemory,
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoModernInterface => f.write_str("virtio-net has no modern (virtio 1.0) interface"),
            Self::ResetTimeout => f.write_str("virtio-net did not reset"),
            Self::NoVersion1 => f.write_str("virtio-net does not offer VIRTIO_F_VERSION_1"),
            Self::FeaturesRefused => f.write_str("virtio-net refused our features"),
            Self::QueueMissing(_) => f.write_str("virtio-net queue missing"),
            Self::OutOfMemory => f.write_str("out of memory for virtqueues"),
        }
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
    /// Receive buffers given back since the device was last told.
    rx_returned: bool,
}

impl<T: Transport> VirtioNet<T> {
    /// Resets and starts the device behind `transport` (virtio 1.0 §3.1.1).
    pub fn start(mut t: T) -> Result<Self, VirtioError> {
        use CommonCfg::*;
        t.write(DeviceStatus, 0);
        if !(0..RESET_POLLS).any(|_| t.read(DeviceStatus) == 0) {
            return Err(VirtioError::ResetTimeout);
        }
        t.write(DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER));
        let mut features = 0u64;
        for sel in 0..2 {
            t.write(DeviceFeatureSelect, sel);
            features |= (t.read(DeviceFeature) & 0xffff_ffff) << (32 * sel);
        }
        if features & feature::VERSION_1 == 0 {
            return Err(VirtioError::NoVersion1);
        }
        let want = feature::VERSION_1 | (features & feature::NET_MAC);
        for sel in 0..2 {
            t.write(DriverFeatureSelect, sel);
            t.write(DriverFeature, (want >> (32 * sel)) & 0xffff_ffff);
        }
        t.write(DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        if t.read(DeviceStatus) & u64::from(status::FEATURES_OK) == 0 {
            return Err(VirtioError::FeaturesRefused);
        }
        let (rx, rx_notify_off) = Self::queue(&mut t, RX_QUEUE)?;
        let (tx, tx_notify_off) = Self::queue(&mut t, TX_QUEUE)?;
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = t.device_config(i);
        }
        t.write(DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK));
        let mut up =
            Self { transport: t, rx, tx, rx_notify_off, tx_notify_off, mac, rx_frames: 0, tx_frames: 0, dropped: 0, rx_returned: false };
        while let Some(id) = up.rx.take() {
            up.rx.submit(up.transport.dma(), id, BUFFER_BYTES, true);
        }
        up.transport.notify(RX_QUEUE, up.rx_notify_off);
        Ok(up)
    }

    /// Sets up queue `index`: the largest power of two up to
    /// [`QUEUE_SIZE`] the device allows. Returns it and its notify offset.
    fn queue(t: &mut T, index: u16) -> Result<(Virtq, u16), VirtioError> {
        use CommonCfg::*;
        t.write(QueueSelect, u64::from(index));
        let max = t.read(QueueSize) as u16;
        if max == 0 {
            return Err(VirtioError::QueueMissing(index));
        }
        let size = QUEUE_SIZE.min(1 << (15 - max.leading_zeros()));
        let q = Virtq::new(t.dma(), size).ok_or(VirtioError::OutOfMemory)?;
        t.write(QueueSize, u64::from(q.size));
        t.write(QueueDesc, q.desc);
        t.write(QueueDriver, q.avail);
        t.write(QueueDevice, q.used);
        let notify_off = t.read(QueueNotifyOff) as u16;
        t.write(QueueEnable, 1);
        Ok((q, notify_off))
    }

    /// The transport (the host tests' fake device).
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends one frame to the host; returns false if the queue is full.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        loop {
            match self.tx.pop_used(self.transport.dma()) {
                Ok(Some(u)) => self.tx.give_back(u.id),
                Err(VirtqError::BadUsedLen { id, .. }) => self.tx.give_back(id),
                Ok(None) | Err(VirtqError::BadUsedId(_)) => break,
            }
        }
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
        fence(Ordering::SeqCst);
        self.transport.notify(TX_QUEUE, self.tx_notify_off);
        self.tx_frames += 1;
        true
    }

    /// Copies the next frame the host sent into `buf` and gives its
    /// buffer back to the device (announced by [`Self::notify_rx`]);
    /// returns its length, or `None` when none is waiting. Frames of a bad
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
                    self.rx_returned = true;
                    if good {
                        return Some(len);
                    }
                }
                Ok(None) => return None,
                Err(VirtqError::BadUsedLen { id, .. }) => {
                    // Its buffer is ours again: back to the device.
                    self.dropped += 1;
                    self.rx.submit(mem, id, BUFFER_BYTES, true);
                    self.rx_returned = true;
                }
                Err(VirtqError::BadUsedId(_)) => {
                    self.dropped += 1;
                    return None;
                }
            }
        }
        None
    }

    /// Tells the device about the buffers [`Self::receive`] gave back
    /// (once per batch, not per frame: each notification is an exit).
    pub fn notify_rx(&mut self) {
        if core::mem::take(&mut self.rx_returned) {
            fence(Ordering::SeqCst);
            self.transport.notify(RX_QUEUE, self.rx_notify_off);
        }
    }
}

impl<T: Transport + Send> UplinkDevice for VirtioNet<T> {
    fn send(&mut self, frame: &[u8]) -> bool {
        VirtioNet::send(self, frame)
    }
    fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        VirtioNet::receive(self, buf)
    }
    fn notify_rx(&mut self) {
        VirtioNet::notify_rx(self)
    }
}

#[cfg(test)]
mod tests;
