//! The network back end (`hypervisor::net`) as the hypervisor runs it:
//! guests' rings and event pages through the direct map
//! ([`super::guest_pages`]), the uplink over whichever NIC PCI enumeration
//! finds: virtio-net ([`super::virtio_pci`]) first, else an Intel 82574L
//! ([`super::e1000e_pci`]); interrupt-driven through MSI-X
//! ([`super::msix`]) where the device has it.

use super::e1000e_pci::{self, Mmio};
use super::guest_pages::{DirectRing, EventPage};
use super::virtio_pci::{self, PciTransport};
use abi::ring::MTU_FRAME;
use hypervisor::net::backend::UplinkDevice;
use hypervisor::net::e1000e::{E1000e, E1000eError};
use hypervisor::net::virtio_net::{VirtioError, VirtioNet};

/// All vNICs, the switch and the uplink.
pub type Net = hypervisor::net::backend::Net<DirectRing, EventPage, Uplink>;

/// The NIC to the host.
pub enum Uplink {
    Virtio(VirtioNet<PciTransport>),
    E1000e(E1000e<Mmio>),
}

/// Why the NIC found could not be started.
#[derive(Clone, Copy, Debug)]
pub enum UplinkError {
    Virtio(VirtioError),
    E1000e(E1000eError),
}

impl core::fmt::Display for UplinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "virtio-net: {e}"),
            Self::E1000e(e) => write!(f, "e1000e: {e}"),
        }
    }
}

/// Finds and starts the uplink: a virtio-net, else an 82574L; `None` if
/// the machine has neither.
pub fn probe(kernel_root: u64) -> Result<Option<Uplink>, UplinkError> {
    if let Some(up) = virtio_pci::probe(kernel_root).map_err(UplinkError::Virtio)? {
        return Ok(Some(Uplink::Virtio(up)));
    }
    Ok(e1000e_pci::probe(kernel_root).map_err(UplinkError::E1000e)?.map(Uplink::E1000e))
}

impl Uplink {
    /// The driver's name, for the console.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Virtio(_) => "virtio-net",
            Self::E1000e(_) => "e1000e",
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        match self {
            Self::Virtio(up) => up.mac,
            Self::E1000e(up) => up.mac,
        }
    }
}

impl UplinkDevice for Uplink {
    fn send(&mut self, frame: &[u8]) -> bool {
        match self {
            Self::Virtio(up) => up.send(frame),
            Self::E1000e(up) => up.send(frame),
        }
    }
    fn has_room(&mut self) -> bool {
        match self {
            Self::Virtio(up) => up.has_room(),
            Self::E1000e(up) => up.has_room(),
        }
    }
    fn flush(&mut self) {
        match self {
            Self::Virtio(up) => up.flush(),
            Self::E1000e(up) => up.flush(),
        }
    }
    fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        match self {
            Self::Virtio(up) => up.receive(buf),
            Self::E1000e(up) => up.receive(buf),
        }
    }
    fn notify_rx(&mut self) {
        match self {
            Self::Virtio(up) => up.notify_rx(),
            Self::E1000e(up) => up.notify_rx(),
        }
    }
    fn rearm_interrupt(&mut self) {
        match self {
            Self::Virtio(up) => up.rearm_interrupt(),
            Self::E1000e(up) => up.rearm_interrupt(),
        }
    }
    fn notifies(&self) -> u64 {
        match self {
            Self::Virtio(up) => up.notifies,
            Self::E1000e(up) => up.notifies,
        }
    }
}

/// Whether the uplink's device interrupts CPU 0 on `apic::UPLINK_VECTOR`
/// (set once at boot by whoever started it, before the machine runs).
static UPLINK_INTERRUPTS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The uplink's driver routed its device's interrupts to
/// `apic::UPLINK_VECTOR` on CPU 0 and the device took them: CPU 0 polls
/// it only when one comes. Call before the machine runs.
pub fn set_uplink_interrupts() {
    UPLINK_INTERRUPTS.store(true, core::sync::atomic::Ordering::Release);
}

/// Whether the uplink interrupts (else CPU 0 polls it on every pass).
pub fn uplink_interrupts() -> bool {
    UPLINK_INTERRUPTS.load(core::sync::atomic::Ordering::Acquire)
}
