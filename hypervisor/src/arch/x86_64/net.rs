//! The network back end (`hypervisor::net`) as the hypervisor runs it:
//! guests' rings and event pages through the direct map
//! ([`super::guest_pages`]), the uplink over virtio PCI
//! ([`super::virtio_pci`]).

use super::guest_pages::{DirectRing, EventPage};
use super::virtio_pci::Uplink;

/// All vNICs, the switch and the uplink.
pub type Net = hypervisor::net::backend::Net<DirectRing, EventPage, Uplink>;
