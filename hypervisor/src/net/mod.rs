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
//! reads each frame's length once (checked) and copies its first
//! [`switch::INSPECT_BYTES`] (the Ethernet header and enough for the IPv4
//! source or the ARP sender) into a private buffer; the switch
//! ([`switch::Switch::forward_header`]) decides on that private copy only,
//! so a guest rewriting its slot cannot change the decision (no double
//! fetch). For each receiver the back end writes the checked header and
//! copies the rest straight from the sender's TX slot into the receiver's
//! RX slot: one copy per packet per receiver. Frames to and from the
//! uplink (virtio-net, `src/uplink.rs`) go through a buffer. A full RX
//! ring drops the frame for that receiver only (the switch counts it) and
//! never blocks the sender; a frame from the host for one guest may
//! instead wait a little in that guest's own bounded queue
//! ([`uplink_queue`]).
//!
//! The switch is a learning L2 bridge in which every tenant is its own
//! broadcast domain: a frame never leaves its tenant, a guest may send only
//! with its own MAC and, in IPv4 and ARP, its own IPv4 address (neither of
//! which the outside may claim), and the outside world reaches exactly one
//! tenant through the uplink. It is pure logic over byte slices and timestamps,
//! tested on the host; the rings, the notification and the virtio driver
//! are the mechanism around it.

pub mod gate;
pub mod switch;
pub mod uplink_queue;
pub mod virtq;
