//! The virtio 1.0 PCI transport (virtio 1.0 §4.1) for the uplink's driver
//! (`hypervisor::net::virtio_net`): finds QEMU's virtio-net on bus 0,
//! maps the common, notify and device configuration structures its
//! capabilities point at (uncached), and reaches them with volatile
//! accesses of each register's width. DMA memory is the direct map's
//! ([`DirectMap`]): the device sees physical addresses.

use super::msix::Msix;
use super::paging::{DirectMap, map_device};
use super::{apic, pci};
use hypervisor::control::virtio_console::{VIRTIO_CONSOLE_DEVICES, VirtioConsole};
use hypervisor::net::virtio_net::{CommonCfg, MsixEntries, Transport, VIRTIO_NET_DEVICES, VIRTIO_VENDOR, VirtioError, VirtioNet};

/// The control channel: a virtio console (virtio-serial) over PCI.
pub type ControlConsole = VirtioConsole<PciTransport>;

/// A virtio vendor-specific PCI capability (`virtio_pci_cap`, §4.1.4):
/// offsets of its fields from the capability's start.
mod cap {
    pub const CFG_TYPE: u8 = 3;
    pub const BAR: u8 = 4;
    pub const OFFSET: u8 = 8;
    pub const LENGTH: u8 = 12;
    /// `notify_off_multiplier`, in the notify capability only.
    pub const NOTIFY_OFF_MULTIPLIER: u8 = 16;
    /// `cfg_type` values.
    pub const COMMON_CFG: u8 = 1;
    pub const NOTIFY_CFG: u8 = 2;
    pub const DEVICE_CFG: u8 = 4;
    /// Largest structure we map.
    pub const MAX_LENGTH: u64 = 1 << 20;
    /// Capabilities we look at before giving up on a looping list.
    pub const MAX_CAPS: u32 = 48;
}

/// The device's configuration structures, as virtual addresses.
pub struct PciTransport {
    common: u64,
    notify: u64,
    notify_mult: u32,
    device: u64,
    mem: DirectMap,
}

fn read<T: Copy>(va: u64) -> T {
    // SAFETY: `va` lies in a device register window mapped by `map_device`
    // (uncached), at an offset the virtio spec defines for this width
    // (`CommonCfg::offset`/`width`, the device configuration's bytes).
    unsafe { (va as *const T).read_volatile() }
}

fn write<T: Copy>(va: u64, v: T) {
    // SAFETY: as in `read`.
    unsafe { (va as *mut T).write_volatile(v) }
}

/// Finds the structures `f`'s virtio capabilities point at and maps them.
fn transport(f: pci::Function, root: u64) -> Option<PciTransport> {
    let (mut common, mut notify, mut device, mut notify_mult) = (None, None, None, 0);
    let mut ptr = f.read8(pci::CAPABILITIES_POINTER) & !3;
    let mut looked = 0;
    while ptr != 0 && looked < cap::MAX_CAPS {
        looked += 1;
        if f.read8(ptr.wrapping_add(pci::CAP_ID)) == pci::CAP_ID_VENDOR {
            let kind = f.read8(ptr.wrapping_add(cap::CFG_TYPE));
            let bar = f.read8(ptr.wrapping_add(cap::BAR));
            let offset = f.read32(ptr.wrapping_add(cap::OFFSET)) as u64;
            let length = f.read32(ptr.wrapping_add(cap::LENGTH)) as u64;
            if bar < pci::BARS
                && length > 0
                && length <= cap::MAX_LENGTH
                && let Some(base) = f.bar(bar).filter(|&b| b != 0)
            {
                let va = || map_device(root, base + offset, length);
                match kind {
                    cap::COMMON_CFG => common = Some(va()),
                    cap::NOTIFY_CFG => {
                        notify = Some(va());
                        notify_mult = f.read32(ptr.wrapping_add(cap::NOTIFY_OFF_MULTIPLIER));
                    }
                    cap::DEVICE_CFG => device = Some(va()),
                    _ => {}
                }
            }
        }
        ptr = f.read8(ptr.wrapping_add(pci::CAP_NEXT)) & !3;
    }
    Some(PciTransport { common: common?, notify: notify?, notify_mult, device: device?, mem: DirectMap })
}

/// The transport of the first virtio device of one of `devices`, with
/// memory decoding and bus mastering on.
fn find(kernel_root: u64, devices: &[u16]) -> Result<Option<PciTransport>, VirtioError> {
    let Some(f) = pci::find(VIRTIO_VENDOR, devices) else { return Ok(None) };
    start_function(f, kernel_root).map(Some)
}

/// Turns memory decoding and bus mastering on for `f` and maps its
/// virtio structures.
fn start_function(f: pci::Function, kernel_root: u64) -> Result<PciTransport, VirtioError> {
    f.write32(pci::COMMAND, f.read32(pci::COMMAND) | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER);
    transport(f, kernel_root).ok_or(VirtioError::NoModernInterface)
}

/// Finds and starts QEMU's virtio-net, if there is one: with its
/// interrupts through MSI-X to CPU 0 on `apic::UPLINK_VECTOR` where the
/// function has MSI-X and the device takes the entries (then the uplink
/// is marked interrupt-driven, `net::set_uplink_interrupts`), else polled.
pub fn probe(kernel_root: u64) -> Result<Option<VirtioNet<PciTransport>>, VirtioError> {
    let Some(f) = pci::find(VIRTIO_VENDOR, &VIRTIO_NET_DEVICES) else { return Ok(None) };
    let t = start_function(f, kernel_root)?;
    let msix = Msix::setup(f, kernel_root).and_then(|m| {
        let entries = MsixEntries::for_table(m.entries());
        // The configuration's, the receive queue's and the transmit
        // queue's entries all raise the one uplink vector.
        let cpu0 = apic::id_of(0) as u8;
        [entries.config, entries.rx, entries.tx].iter().all(|&e| m.route(e, cpu0, apic::UPLINK_VECTOR)).then(|| {
            m.enable();
            (m, entries)
        })
    });
    let up = VirtioNet::start_with(t, msix.as_ref().map(|&(_, e)| e))?;
    match msix {
        // A reset of the device leaves the function's MSI-X as it was;
        // checked anyway, as interrupts that never come would leave the
        // host's frames unread.
        Some((m, e)) if up.interrupts && m.is_enabled() => {
            super::net::set_uplink_interrupts();
            crate::println!(
                "[hv] uplink interrupts: MSI-X entries {}/{}/{} of {} (configuration/receive/transmit), vector {:#x} to CPU 0",
                e.config,
                e.rx,
                e.tx,
                m.entries(),
                apic::UPLINK_VECTOR
            );
        }
        Some((m, _)) => {
            for e in 0..m.entries() {
                m.mask(e);
            }
            crate::println!("[hv] uplink interrupts: none, the device refused its MSI-X entries; CPU 0 polls it");
        }
        None => crate::println!("[hv] uplink interrupts: none, no usable MSI-X; CPU 0 polls it"),
    }
    Ok(Some(up))
}

/// Finds and starts a virtio console (the control channel), if there is one.
pub fn probe_console(kernel_root: u64) -> Result<Option<ControlConsole>, VirtioError> {
    find(kernel_root, &VIRTIO_CONSOLE_DEVICES)?.map(VirtioConsole::start).transpose()
}

impl Transport for PciTransport {
    type Dma = DirectMap;

    fn read(&mut self, reg: CommonCfg) -> u64 {
        let va = self.common + reg.offset() as u64;
        match reg.width() {
            1 => read::<u8>(va).into(),
            2 => read::<u16>(va).into(),
            4 => read::<u32>(va).into(),
            _ => read::<u64>(va),
        }
    }

    fn write(&mut self, reg: CommonCfg, v: u64) {
        let va = self.common + reg.offset() as u64;
        match reg.width() {
            1 => write::<u8>(va, v as u8),
            2 => write::<u16>(va, v as u16),
            4 => write::<u32>(va, v as u32),
            _ => write::<u64>(va, v),
        }
    }

    fn device_config(&mut self, offset: usize) -> u8 {
        read::<u8>(self.device + offset as u64)
    }

    fn notify(&mut self, queue: u16, notify_off: u16) {
        write::<u16>(self.notify + u64::from(notify_off) * u64::from(self.notify_mult), queue);
    }

    fn dma(&mut self) -> &mut DirectMap {
        &mut self.mem
    }
}
