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
//! the hypervisor. When a guest kicks its TX ring (or the hypervisor polls
//! it), the back end takes each frame's length once out of the slot, copies
//! the 14-byte Ethernet header into a private buffer, and asks the switch
//! ([`switch::Switch`]) where the frame goes: the switch decides from that
//! private header and the length only, so a guest that rewrites its slot
//! while the hypervisor reads it cannot change the decision (no double
//! fetch). For every destination port the back end then writes the checked
//! header and copies the payload straight from the sender's TX slot into the
//! receiver's RX slot (or the uplink's transmit buffer): one copy per
//! packet per receiver, no intermediate buffer. A full RX ring drops the
//! frame for that receiver only (the switch counts it) and never blocks
//! the sender.
//!
//! The switch is a learning L2 bridge in which every tenant is its own
//! broadcast domain: a frame never leaves its tenant, a guest may send only
//! with its own MAC, and the outside world reaches exactly one tenant
//! through the uplink. It is pure logic over byte slices and timestamps,
//! tested on the host; the rings, the notification and the virtio driver
//! are the mechanism around it.

pub mod switch;
