//! What every virtio 1.0 driver shares (virtio 1.0 §2, §3, §4.1.4): the
//! [`Transport`] a device is reached through, its common configuration
//! registers, the status handshake ([`negotiate`]) and queue set-up
//! ([`queue`]). The drivers are `net::virtio_net` (the uplink) and
//! `control::virtio_console` (the control channel); the x86 PCI transport
//! is `arch/x86_64/virtio_pci.rs`.
//!
//! Rules: the device is not trusted; a handshake waits a bounded time;
//! nothing a device does panics.

use crate::mm::PhysMem;
use crate::net::virtq::Virtq;

/// PCI vendor of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Reads of the status register before a reset counts as failed.
const RESET_POLLS: u32 = 1_000_000;
/// `msix_config` / `queue_msix_vector`: no interrupt (virtio 1.0 §4.1.5.1.2);
/// also what the device answers when it refuses an entry.
pub const NO_VECTOR: u16 = 0xffff;

/// `device_status` bits (virtio 1.0 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
}

/// Feature bits every device type shares (virtio 1.0 §6).
pub mod feature {
    /// The device complies with virtio 1.0.
    pub const VERSION_1: u64 = 1 << 32;
    /// The rings' event indexes, `used_event` and `avail_event`, say when
    /// to notify (virtio 1.x §2.7.10; `net::virtq`).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// The registers of `virtio_pci_common_cfg` (virtio 1.0 §4.1.4.3) we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonCfg {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    /// The MSI-X table entry for configuration changes (PCI only).
    MsixConfig,
    DeviceStatus,
    QueueSelect,
    QueueSize,
    /// The MSI-X table entry for the selected queue (PCI only).
    QueueMsixVector,
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
            Self::MsixConfig => 0x10,
            Self::DeviceStatus => 0x14,
            Self::QueueSelect => 0x16,
            Self::QueueSize => 0x18,
            Self::QueueMsixVector => 0x1a,
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
            Self::MsixConfig | Self::QueueSelect | Self::QueueSize | Self::QueueMsixVector | Self::QueueEnable | Self::QueueNotifyOff => 2,
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
            Self::NoModernInterface => f.write_str("no modern (virtio 1.0) interface"),
            Self::ResetTimeout => f.write_str("the device did not reset"),
            Self::NoVersion1 => f.write_str("the device does not offer VIRTIO_F_VERSION_1"),
            Self::FeaturesRefused => f.write_str("the device refused our features"),
            Self::QueueMissing(q) => write!(f, "queue {q} missing"),
            Self::OutOfMemory => f.write_str("out of memory for virtqueues"),
        }
    }
}

/// Resets the device and negotiates features (virtio 1.0 §3.1.1 up to
/// FEATURES_OK): `want` picks ours from those offered, and must include
/// VERSION_1. Returns the features agreed.
pub fn negotiate<T: Transport>(t: &mut T, want: impl FnOnce(u64) -> u64) -> Result<u64, VirtioError> {
    use CommonCfg::*;
    t.write(DeviceStatus, 0);
    if !(0..RESET_POLLS).any(|_| t.read(DeviceStatus) == 0) {
        return Err(VirtioError::ResetTimeout);
    }
    t.write(DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER));
    let mut offered = 0u64;
    for sel in 0..2 {
        t.write(DeviceFeatureSelect, sel);
        offered |= (t.read(DeviceFeature) & 0xffff_ffff) << (32 * sel);
    }
    if offered & feature::VERSION_1 == 0 {
        return Err(VirtioError::NoVersion1);
    }
    let agreed = want(offered) & offered;
    for sel in 0..2 {
        t.write(DriverFeatureSelect, sel);
        t.write(DriverFeature, (agreed >> (32 * sel)) & 0xffff_ffff);
    }
    t.write(DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
    if t.read(DeviceStatus) & u64::from(status::FEATURES_OK) == 0 {
        return Err(VirtioError::FeaturesRefused);
    }
    Ok(agreed)
}

/// Sets up queue `index`: the largest power of two up to `size` the
/// device allows. Returns it and its notify offset.
pub fn queue<T: Transport>(t: &mut T, index: u16, size: u16) -> Result<(Virtq, u16), VirtioError> {
    use CommonCfg::*;
    t.write(QueueSelect, u64::from(index));
    let max = t.read(QueueSize) as u16;
    if max == 0 {
        return Err(VirtioError::QueueMissing(index));
    }
    let size = size.min(1 << (15 - max.leading_zeros()));
    let q = Virtq::new(t.dma(), size).ok_or(VirtioError::OutOfMemory)?;
    t.write(QueueSize, u64::from(q.size));
    t.write(QueueDesc, q.desc);
    t.write(QueueDriver, q.avail);
    t.write(QueueDevice, q.used);
    let notify_off = t.read(QueueNotifyOff) as u16;
    t.write(QueueEnable, 1);
    Ok((q, notify_off))
}

/// Routes the device's configuration-change interrupt to MSI-X table
/// entry `entry` (`NO_VECTOR`: none); returns whether the device took it
/// (it answers `NO_VECTOR` when it refuses).
pub fn config_vector<T: Transport>(t: &mut T, entry: u16) -> bool {
    t.write(CommonCfg::MsixConfig, u64::from(entry));
    t.read(CommonCfg::MsixConfig) == u64::from(entry)
}

/// Routes queue `index`'s interrupt to MSI-X table entry `entry`
/// (`NO_VECTOR`: none); returns whether the device took it.
pub fn queue_vector<T: Transport>(t: &mut T, index: u16, entry: u16) -> bool {
    t.write(CommonCfg::QueueSelect, u64::from(index));
    t.write(CommonCfg::QueueMsixVector, u64::from(entry));
    t.read(CommonCfg::QueueMsixVector) == u64::from(entry)
}

/// The device's side of a split virtqueue, for the drivers' host tests.
#[cfg(test)]
pub mod testing {
    use crate::mm::testmem::TestMem;
    use crate::mm::{PhysAddr, PhysMem};
    use crate::net::virtq::layout::*;

    /// A queue as the driver set it up, and how far the device got.
    #[derive(Default, Clone, Copy)]
    pub struct FakeQueue {
        pub size: u16,
        pub desc: PhysAddr,
        pub avail: PhysAddr,
        pub used: PhysAddr,
        pub enabled: bool,
        /// Available entries taken, used entries written.
        pub seen: u16,
        pub used_idx: u16,
        /// VIRTIO_F_EVENT_IDX was negotiated.
        pub event_idx: bool,
    }

    pub fn rd16(mem: &TestMem, pa: PhysAddr, off: usize) -> u16 {
        let mut b = [0u8; 2];
        mem.read(pa, off, &mut b);
        u16::from_le_bytes(b)
    }

    impl FakeQueue {
        /// The next available descriptor: its id, buffer, length and flags.
        pub fn take_avail(&mut self, mem: &mut TestMem) -> Option<(u16, PhysAddr, u32, u16)> {
            if rd16(mem, self.avail, RING_IDX) == self.seen {
                return None;
            }
            let id = rd16(mem, self.avail, RING_ENTRIES + AVAIL_ENTRY_BYTES * (self.seen % self.size) as usize);
            let mut d = [0u8; DESC_BYTES];
            mem.read(self.desc, DESC_BYTES * id as usize, &mut d);
            self.seen = self.seen.wrapping_add(1);
            if self.event_idx {
                // As QEMU's `virtqueue_pop`: be told when there is more
                // than what was taken.
                mem.write(self.used, avail_event(self.size), &self.seen.to_le_bytes());
            }
            Some((
                id,
                u64::from_le_bytes(d[DESC_ADDR].try_into().unwrap()),
                u32::from_le_bytes(d[DESC_LEN].try_into().unwrap()),
                u16::from_le_bytes(d[DESC_FLAGS].try_into().unwrap()),
            ))
        }

        /// Writes a used entry (any id and length: the device may lie);
        /// returns whether the driver asked to be interrupted for it
        /// (virtio 1.x §2.7.10: its `used_event` just passed, or without
        /// the event index, no `AVAIL_F_NO_INTERRUPT`).
        pub fn put_used(&mut self, mem: &mut TestMem, id: u32, len: u32) -> bool {
            let mut e = [0u8; USED_ENTRY_BYTES];
            e[..4].copy_from_slice(&id.to_le_bytes());
            e[4..].copy_from_slice(&len.to_le_bytes());
            mem.write(self.used, RING_ENTRIES + USED_ENTRY_BYTES * (self.used_idx % self.size) as usize, &e);
            let old = self.used_idx;
            self.used_idx = self.used_idx.wrapping_add(1);
            mem.write(self.used, RING_IDX, &self.used_idx.to_le_bytes());
            if self.event_idx {
                crate::net::virtq::need_event(rd16(mem, self.avail, used_event(self.size)), self.used_idx, old)
            } else {
                rd16(mem, self.avail, RING_FLAGS) & AVAIL_F_NO_INTERRUPT == 0
            }
        }
    }
}
