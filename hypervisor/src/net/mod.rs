//! Networking: the guests' virtual NICs, the virtual switch between them, and
//! the uplink to the machine's NIC.
//!
//! ```text
//!  guest A                      hypervisor                        guest B
//!  TX ring ──pop header──▶ switch::Switch::forward ──copy──▶ RX ring
//!                                    │
//!                                    └──copy──▶ uplink (virtio-net TX) ──▶ host
//!  host ──▶ uplink (virtio-net RX) ──▶ forward ──copy──▶ guests' RX rings
//! ```
//!
//! Each guest's vNIC is a pair of rings ([`abi::ring`]) in pages shared with
//! the hypervisor (the back end is `src/vnic.rs` in the binary). When a
//! guest kicks its TX ring, or blocks, yields or is preempted, the back end
//! copies each frame out of the slot once (length read once and checked),
//! asks the switch ([`switch::Switch`]) where it goes, and copies it into
//! every receiver's RX ring: two copies per packet per receiver today.
//! [`switch::Switch::forward_header`] exists for the one-copy path (decide
//! on a private copy of the header, then copy slot to slot), which is the
//! next step. A full RX ring drops the frame for that receiver only (the
//! switch counts it) and never blocks the sender. The uplink (virtio-net to
//! the host) is not written yet.
//!
//! The switch is a learning L2 bridge in which every tenant is its own
//! broadcast domain: a frame never leaves its tenant, a guest may send only
//! with its own MAC, and the outside world reaches exactly one tenant
//! through the uplink. It is pure logic over byte slices and timestamps,
//! tested on the host; the rings, the notification and the virtio driver
//! are the mechanism around it.

pub mod switch;
pub mod virtq;
