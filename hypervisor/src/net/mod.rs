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
//! One file per concept:
//! - [`port`]: one guest's vNIC (its rings' memory and event page, the
//!   sender's rate limits, its counters);
//! - [`backend`]: all ports, the switch and the uplink: drain, deliver,
//!   flow control, and the lock order;
//! - [`gate`]: a receiver other CPUs deliver to while its owner may end;
//! - [`switch`]: the learning bridge with tenants and anti-spoofing;
//! - [`uplink_queue`]: the host's frames waiting for a guest's full ring;
//! - [`capture`]: `ctl capture`'s target and bounded backlog;
//! - [`csum`]: the checksums filled for frames to the host and verified
//!   for frames from it (guests compute none);
//! - [`virtio_net`] over [`virtq`]: the driver for the host uplink, over a
//!   transport trait (the x86 PCI transport is `arch/x86_64/virtio_pci.rs`);
//! - [`e1000e`]: the other uplink driver, Intel 82574L, over a register
//!   trait (its x86 PCI side is `arch/x86_64/e1000e_pci.rs`).
//!
//! Each guest's vNIC is a pair of rings ([`abi::ring`]) in pages shared with
//! the hypervisor, which the arch layer reaches through its direct map
//! (`arch/x86_64/guest_pages.rs`). When a guest kicks its TX ring, or
//! blocks, yields or is preempted, the back end reads each frame's header
//! once (checked) and copies its first [`switch::INSPECT_BYTES`] (the
//! Ethernet header and enough for the IPv4 source or the ARP sender) into a
//! private buffer; the switch ([`switch::Switch::forward_header`]) decides
//! on that private copy only, so a guest rewriting its slot cannot change
//! the decision (no double fetch). For each receiver the back end writes
//! the checked header and copies the rest straight from the sender's TX
//! span into the receiver's RX span (frames of up to 64 KiB): one copy per
//! packet per receiver. Frames to and from the uplink (1514 bytes at most)
//! go through a buffer, where [`csum`] fills the checksums guests leave
//! blank and verifies the host's. A full RX ring drops
//! the frame for that receiver only (the switch counts it) and never blocks
//! the sender; a frame from the host for one guest may instead wait a
//! little in that guest's own bounded queue ([`uplink_queue`]).
//!
//! The switch is a learning L2 bridge in which every tenant is its own
//! broadcast domain: a frame never leaves its tenant, a guest may send only
//! with its own MAC and, in IPv4 and ARP, its own IPv4 address (neither of
//! which the outside may claim), and the outside world reaches exactly one
//! tenant through the uplink. Everything here is `#![forbid(unsafe_code)]`
//! logic tested on the host; the arch layer supplies the memory and the
//! device registers.
//!
//! Words: a *frame* is an Ethernet frame; the physical memory under rings
//! and virtqueues is in *pages*.

pub mod backend;
pub mod capture;
pub mod csum;
pub mod e1000e;
pub mod gate;
pub mod port;
pub mod switch;
pub mod uplink_queue;
pub mod virtio_net;
pub mod virtq;
