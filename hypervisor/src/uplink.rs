//! The uplink: a virtio 1.0 (modern PCI) driver for QEMU's virtio-net, the
//! switch's port to the host.
//!
//! Two split virtqueues (receive 0, transmit 1, see
//! `hypervisor::net::virtq`), each buffer a frame holding the 12-byte
//! virtio-net header and then the Ethernet frame. The device is polled (by
//! CPU 0 on every pass of its scheduling loop and on its idle tick), not
//! interrupt-driven.

use crate::arch::x86_64::paging::{DirectMap, map_device};
use crate::arch::x86_64::pci;
use abi::ring::{MIN_FRAME, MTU_FRAME};
use hypervisor::mm::PhysMem;
use hypervisor::net::virtq::Virtq;

const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional and modern virtio-net device ids.
const VIRTIO_NET: [u16; 2] = [0x1000, 0x1041];
const HDR: usize = 12;
const QUEUE_SIZE: u16 = 128;

const STATUS_ACK: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const F_MAC: u64 = 1 << 5;
const F_VERSION_1: u64 = 1 << 32;

// virtio_pci_common_cfg offsets.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE_REG: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

fn rd<T: Copy>(va: u64) -> T {
    // SAFETY: `va` lies in a device register window mapped by `map_device`
    // (uncached), at an offset the virtio spec defines for this width.
    unsafe { (va as *const T).read_volatile() }
}

fn wr<T: Copy>(va: u64, v: T) {
    // SAFETY: as in `rd`.
    unsafe { (va as *mut T).write_volatile(v) }
}

pub struct Uplink {
    common: u64,
    rx: Virtq,
    tx: Virtq,
    rx_notify: u64,
    tx_notify: u64,
    pub mac: [u8; 6],
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub dropped: u64,
    /// Receive buffers given back since the device was last told.
    rx_returned: bool,
}

/// The virtio PCI capabilities we need, as virtual addresses.
struct Caps {
    common: u64,
    notify: u64,
    notify_mult: u32,
    device: u64,
}

fn caps(f: pci::Function, root: u64) -> Option<Caps> {
    let (mut common, mut notify, mut device, mut mult) = (None, None, None, 0);
    let mut ptr = f.read8(0x34) & !3;
    let mut guard = 0;
    while ptr != 0 && guard < 48 {
        guard += 1;
        if f.read8(ptr) == 0x09 {
            let kind = f.read8(ptr + 3);
            let bar = f.read8(ptr + 4);
            let offset = f.read32(ptr + 8) as u64;
            let length = f.read32(ptr + 12) as u64;
            if bar < 6
                && length > 0
                && length <= 1 << 20
                && let Some(base) = f.bar(bar).filter(|&b| b != 0)
            {
                let va = || map_device(root, base + offset, length);
                match kind {
                    1 => common = Some(va()),
                    2 => {
                        notify = Some(va());
                        mult = f.read32(ptr + 16);
                    }
                    4 => device = Some(va()),
                    _ => {}
                }
            }
        }
        ptr = f.read8(ptr + 1) & !3;
    }
    Some(Caps { common: common?, notify: notify?, notify_mult: mult, device: device? })
}

impl Uplink {
    /// Finds and starts QEMU's virtio-net, if there is one.
    pub fn probe(kernel_root: u64) -> Result<Option<Uplink>, &'static str> {
        let Some(f) = pci::find(VIRTIO_VENDOR, &VIRTIO_NET) else { return Ok(None) };
        // Memory space and bus mastering on.
        f.write32(0x04, f.read32(0x04) | 0b110);
        let caps = caps(f, kernel_root).ok_or("virtio-net has no modern (virtio 1.0) interface")?;
        let c = caps.common;
        wr::<u8>(c + DEVICE_STATUS, 0);
        while rd::<u8>(c + DEVICE_STATUS) != 0 {
            core::hint::spin_loop();
        }
        wr::<u8>(c + DEVICE_STATUS, STATUS_ACK | STATUS_DRIVER);
        let mut features = 0u64;
        for sel in 0..2u32 {
            wr::<u32>(c + DEVICE_FEATURE_SELECT, sel);
            features |= (rd::<u32>(c + DEVICE_FEATURE) as u64) << (32 * sel);
        }
        if features & F_VERSION_1 == 0 {
            return Err("virtio-net does not offer VIRTIO_F_VERSION_1");
        }
        let want = F_VERSION_1 | (features & F_MAC);
        for sel in 0..2u32 {
            wr::<u32>(c + DRIVER_FEATURE_SELECT, sel);
            wr::<u32>(c + DRIVER_FEATURE, (want >> (32 * sel)) as u32);
        }
        wr::<u8>(c + DEVICE_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        if rd::<u8>(c + DEVICE_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err("virtio-net refused our features");
        }
        let mut mem = DirectMap;
        let mut queue = |index: u16| -> Result<(Virtq, u64), &'static str> {
            wr::<u16>(c + QUEUE_SELECT, index);
            let max = rd::<u16>(c + QUEUE_SIZE_REG);
            if max == 0 {
                return Err("virtio-net queue missing");
            }
            let size = QUEUE_SIZE.min(1 << (15 - max.leading_zeros()));
            let q = Virtq::new(&mut mem, size).ok_or("out of memory for virtqueues")?;
            wr::<u16>(c + QUEUE_SIZE_REG, q.size);
            wr::<u64>(c + QUEUE_DESC, q.desc);
            wr::<u64>(c + QUEUE_DRIVER, q.avail);
            wr::<u64>(c + QUEUE_DEVICE, q.used);
            let off = rd::<u16>(c + QUEUE_NOTIFY_OFF) as u64;
            wr::<u16>(c + QUEUE_ENABLE, 1);
            Ok((q, caps.notify + off * caps.notify_mult as u64))
        };
        let (rx, rx_notify) = queue(0)?;
        let (tx, tx_notify) = queue(1)?;
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = rd::<u8>(caps.device + i as u64);
        }
        wr::<u8>(c + DEVICE_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let mut up = Uplink { common: c, rx, tx, rx_notify, tx_notify, mac, rx_frames: 0, tx_frames: 0, dropped: 0, rx_returned: false };
        while let Some(id) = up.rx.take() {
            up.rx.submit(&mut mem, id, 4096, true);
        }
        wr::<u16>(up.rx_notify, 0);
        Ok(Some(up))
    }

    /// Sends one frame to the host; returns false if the queue is full.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        let mut mem = DirectMap;
        while let Ok(Some(u)) = self.tx.pop_used(&mut mem) {
            self.tx.give_back(u.id);
        }
        let Some(id) = self.tx.take() else {
            self.dropped += 1;
            return false;
        };
        let buf = self.tx.buffer(id);
        mem.write(buf, 0, &[0u8; HDR]);
        mem.write(buf, HDR, frame);
        self.tx.submit(&mut mem, id, (HDR + frame.len()) as u32, false);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        wr::<u16>(self.tx_notify, 1);
        self.tx_frames += 1;
        true
    }

    /// Copies the next frame the host sent into `buf` and gives its
    /// buffer back to the device (announced by [`Uplink::notify_rx`]);
    /// returns its length, or `None` when none is waiting. Frames of a bad
    /// length are skipped and counted.
    pub fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        let mut mem = DirectMap;
        for _ in 0..self.rx.size {
            match self.rx.pop_used(&mut mem) {
                Ok(Some(u)) => {
                    let len = (u.len as usize).saturating_sub(HDR);
                    let good = (MIN_FRAME..=MTU_FRAME).contains(&len);
                    if good {
                        mem.read(self.rx.buffer(u.id), HDR, &mut buf[..len]);
                        self.rx_frames += 1;
                    } else {
                        self.dropped += 1;
                    }
                    self.rx.submit(&mut mem, u.id, 4096, true);
                    self.rx_returned = true;
                    if good {
                        return Some(len);
                    }
                }
                Ok(None) => return None,
                Err(_) => {
                    self.dropped += 1;
                    return None;
                }
            }
        }
        None
    }

    /// Tells the device about the buffers [`Uplink::receive`] gave back
    /// (once per batch, not per frame: each notification is an exit).
    pub fn notify_rx(&mut self) {
        if core::mem::take(&mut self.rx_returned) {
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            wr::<u16>(self.rx_notify, 0);
        }
        let _ = self.common;
    }
}
