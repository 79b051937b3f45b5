//! The network back end (`hypervisor::net`) as the hypervisor runs it:
//! guests' rings and event pages through the direct map
//! ([`super::guest_pages`]), the uplink over virtio PCI
//! ([`super::virtio_pci`]), interrupt-driven through MSI-X
//! ([`super::msix`]) where the device has it.

use super::guest_pages::{DirectRing, EventPage};
use super::virtio_pci::Uplink;

/// All vNICs, the switch and the uplink.
pub type Net = hypervisor::net::backend::Net<DirectRing, EventPage, Uplink>;

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
