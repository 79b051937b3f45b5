//! The records the hypervisor prints for programs to read: one JSON object
//! per line on the console (`guest_stats` when a guest ends and on the
//! console's `stats` request, `machine` at boot and on `stats`/`machine`),
//! and the rows and records of the control channel's `list` and `stats`
//! answers ([`crate::control`]).
//!
//! A record's first key is `event`, so a reader can pick records out of
//! the console by their first bytes ([`GUEST_STATS_PREFIX`],
//! [`MACHINE_PREFIX`]); a guest's own console lines always begin with its
//! `NAME| `, so no guest can forge one. Fields are only ever added; a
//! reader ignores those it does not know.

use alloc::string::String;
use alloc::vec::Vec;

use crate::stop::StopReason;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// How every `guest_stats` line begins.
pub const GUEST_STATS_PREFIX: &str = r#"{"event":"guest_stats","#;
/// How every `machine` line begins.
pub const MACHINE_PREFIX: &str = r#"{"event":"machine","#;

/// Where a guest is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum GuestState {
    /// In the table, waiting for a CPU (or asleep).
    #[default]
    Waiting,
    /// On a CPU (`guest_stats` of a live guest says `running` too).
    Running,
    /// Taken off the CPUs by `pause` until `resume` (a clone template).
    Paused,
    /// It called `exit`.
    Exited,
    /// The hypervisor stopped it ([`GuestStats::stop_reason`] says why).
    Stopped,
}

/// What one guest has cost: printed when it ends, and for every live guest
/// on `stats`.
///
/// Memory: `memory_bytes` is what is charged against its limit
/// (`private_bytes`, which includes its `ring_bytes`, plus `table_bytes`);
/// `shared_bytes` is mapped but shared with other guests; `hv_bytes` is
/// what the hypervisor holds for it outside its pages. Times are ns of the
/// monotonic clock (0 at the hypervisor's boot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(tag = "event", rename = "guest_stats"))]
pub struct GuestStats {
    /// The instance name (`hello-0`).
    pub guest: String,
    pub state: GuestState,
    pub cpu_ns: u64,
    /// CPU time by CPU index.
    pub cpu_ns_per_cpu: Vec<u64>,
    pub wakeups: u64,
    pub preemptions: u64,
    pub yields: u64,
    pub hypercalls: u64,
    pub memory_bytes: u64,
    pub memory_limit: u64,
    pub private_bytes: u64,
    pub ring_bytes: u64,
    pub table_bytes: u64,
    pub shared_bytes: u64,
    pub hv_bytes: u64,
    /// Console bytes dropped over its rate.
    pub console_dropped: u64,
    /// `net_kick`s ignored over its rate.
    pub kicks_ignored: u64,
    /// Frames its vNIC dropped over its rate limits.
    pub nic_limited: u64,
    /// Ring entries it wrote wrongly (a bad length), skipped.
    pub ring_errors: u64,
    /// Frames for the uplink dropped because the uplink was full.
    pub uplink_dropped: u64,
    /// Frames it sent from an address not its own, dropped.
    pub spoofed_frames: u64,
    /// When its creation began, how long it took, and its first entry.
    pub created_ns: u64,
    pub create_ns: u64,
    pub first_entry_ns: u64,
    /// Its exit code, once it has exited (protocol 2).
    #[cfg_attr(feature = "serde", serde(default))]
    pub exit_code: Option<i32>,
    /// Why it was stopped, once it has been (protocol 2).
    #[cfg_attr(feature = "serde", serde(default))]
    pub stop_reason: Option<StopReason>,
    /// Times a frame it sent waited at the head of its TX ring for room in
    /// a full receiver (backpressure).
    #[cfg_attr(feature = "serde", serde(default))]
    pub tx_waits: u64,
    /// Frames from other guests its full RX ring refused.
    #[cfg_attr(feature = "serde", serde(default))]
    pub rx_full_drops: u64,
    /// A live guest waiting in the table: it sleeps in a `block` hypercall
    /// (else it is runnable), and the event bits pending for it as the
    /// hypervisor last saw them (`abi::time::events`). A guest blocked with
    /// events pending for long is a lost wake-up.
    #[cfg_attr(feature = "serde", serde(default))]
    pub blocked: bool,
    #[cfg_attr(feature = "serde", serde(default))]
    pub events_pending: u64,
    /// Frames it sent that the switch accepted, and frames the switch
    /// handed to it (ARP replies the switch made included).
    #[cfg_attr(feature = "serde", serde(default))]
    pub sent_frames: u64,
    #[cfg_attr(feature = "serde", serde(default))]
    pub received_frames: u64,
    /// Its ARP requests the switch answered itself (proxy ARP).
    #[cfg_attr(feature = "serde", serde(default))]
    pub arp_answered: u64,
    /// Frames it sent too large for a receiver (over the uplink's 1514
    /// bytes, or the receiving guest's MTU), dropped for that receiver
    /// (ABI 5).
    #[cfg_attr(feature = "serde", serde(default))]
    pub oversize_frames: u64,
    /// Frames from the host for it with a wrong IPv4, TCP, UDP or ICMP
    /// checksum (or a malformed IPv4 header), dropped (ABI 5).
    #[cfg_attr(feature = "serde", serde(default))]
    pub bad_checksums: u64,
}

/// The whole machine: guests, memory, idle time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(tag = "event", rename = "machine"))]
pub struct MachineStats {
    pub uptime_ns: u64,
    /// Guests created and not yet ended.
    pub live: u64,
    pub exited: u64,
    pub stopped: u64,
    /// Memory for guests (frames), all and free.
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// The hypervisor's own heap, all and in use.
    pub hv_heap_bytes: u64,
    pub hv_heap_used_bytes: u64,
    /// Of `hv_heap_bytes`, what the heap took from the frames of guest
    /// memory as it grew (it keeps them): `free_bytes` plus this is what
    /// was free at boot once every guest has ended.
    #[cfg_attr(feature = "serde", serde(default))]
    pub hv_heap_grown_bytes: u64,
    /// Time each CPU has spent halted, by CPU index.
    pub cpu_idle_ns: Vec<u64>,
    /// Interrupts the uplink's device raised (MSI-X; 0 while it is polled).
    #[cfg_attr(feature = "serde", serde(default))]
    pub uplink_interrupts: u64,
    /// Polls of the uplink's device that no interrupt prompted: one per
    /// pass of CPU 0's loop while it is polled, 0 once it interrupts.
    #[cfg_attr(feature = "serde", serde(default))]
    pub uplink_polls: u64,
    /// ARP requests the switch answered itself, from guests and the host,
    /// and of those the host's (QEMU asking for a guest's MAC).
    #[cfg_attr(feature = "serde", serde(default))]
    pub arp_answered: u64,
    #[cfg_attr(feature = "serde", serde(default))]
    pub uplink_arp_answered: u64,
    /// Notifications the uplink's driver sent its device (virtio's queue
    /// notifications, the 82574L's tail writes; each an exit in a VM).
    #[cfg_attr(feature = "serde", serde(default))]
    pub uplink_notifies: u64,
}

/// One guest in the control channel's `list` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct GuestRow {
    pub name: String,
    /// Its tenant, or none without a vNIC.
    pub tenant: Option<u32>,
    pub state: GuestState,
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    /// Frames it sent into the switch, and the switch sent to it.
    pub sent_frames: u64,
    pub received_frames: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::{Access, StopReason};
    use alloc::vec;

    /// The line the hypervisor printed before the records were typed (ABI
    /// 3), field for field: old readers keep working.
    const OLD_GUEST_STATS: &str = r#"{"event":"guest_stats","guest":"a-0","state":"exited","cpu_ns":5,"cpu_ns_per_cpu":[2,3],"wakeups":1,"preemptions":2,"yields":3,"hypercalls":4,"memory_bytes":8192,"memory_limit":262144,"private_bytes":4096,"ring_bytes":0,"table_bytes":4096,"shared_bytes":0,"hv_bytes":900,"console_dropped":0,"kicks_ignored":0,"nic_limited":0,"ring_errors":0,"uplink_dropped":0,"spoofed_frames":0,"created_ns":10,"create_ns":11,"first_entry_ns":12}"#;

    fn stats() -> GuestStats {
        GuestStats {
            guest: "a-0".into(),
            state: GuestState::Exited,
            cpu_ns: 5,
            cpu_ns_per_cpu: vec![2, 3],
            wakeups: 1,
            preemptions: 2,
            yields: 3,
            hypercalls: 4,
            memory_bytes: 8192,
            memory_limit: 262144,
            private_bytes: 4096,
            table_bytes: 4096,
            hv_bytes: 900,
            created_ns: 10,
            create_ns: 11,
            first_entry_ns: 12,
            ..Default::default()
        }
    }

    #[test]
    fn guest_stats_keep_their_wire_names_and_gain_the_end() {
        let s = stats();
        let line = serde_json::to_string(&s).unwrap();
        assert!(line.starts_with(GUEST_STATS_PREFIX), "{line}");
        // Today's line is yesterday's plus the new fields.
        let new = r#","exit_code":null,"stop_reason":null,"tx_waits":0,"rx_full_drops":0,"blocked":false,"events_pending":0,"sent_frames":0,"received_frames":0,"arp_answered":0,"oversize_frames":0,"bad_checksums":0}"#;
        assert_eq!(line, OLD_GUEST_STATS.replace("}", new));
        assert_eq!(serde_json::from_str::<GuestStats>(OLD_GUEST_STATS).unwrap(), s);
        let stopped = GuestStats {
            state: GuestState::Stopped,
            stop_reason: Some(StopReason::PageFault { access: Access::Write, address: 8, protected: false, ip: 9 }),
            ..s
        };
        let line = serde_json::to_string(&stopped).unwrap();
        assert!(line.ends_with(
            r#""exit_code":null,"stop_reason":{"page_fault":{"access":"write","address":8,"protected":false,"ip":9}},"tx_waits":0,"rx_full_drops":0,"blocked":false,"events_pending":0,"sent_frames":0,"received_frames":0,"arp_answered":0,"oversize_frames":0,"bad_checksums":0}"#
        ));
        assert_eq!(serde_json::from_str::<GuestStats>(&line).unwrap(), stopped);
    }

    #[test]
    fn machine_stats_keep_their_wire_names() {
        let m = MachineStats {
            uptime_ns: 1,
            live: 2,
            exited: 3,
            stopped: 4,
            total_bytes: 5,
            free_bytes: 6,
            hv_heap_bytes: 7,
            hv_heap_used_bytes: 8,
            hv_heap_grown_bytes: 16,
            cpu_idle_ns: vec![9, 10],
            uplink_interrupts: 11,
            uplink_polls: 12,
            arp_answered: 13,
            uplink_arp_answered: 14,
            uplink_notifies: 15,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(
            line,
            r#"{"event":"machine","uptime_ns":1,"live":2,"exited":3,"stopped":4,"total_bytes":5,"free_bytes":6,"hv_heap_bytes":7,"hv_heap_used_bytes":8,"hv_heap_grown_bytes":16,"cpu_idle_ns":[9,10],"uplink_interrupts":11,"uplink_polls":12,"arp_answered":13,"uplink_arp_answered":14,"uplink_notifies":15}"#
        );
        assert!(line.starts_with(MACHINE_PREFIX));
        assert_eq!(serde_json::from_str::<MachineStats>(&line).unwrap(), m);
        // A line from before the uplink's counters reads as zeros.
        let old = line
            .replace(r#","uplink_interrupts":11,"uplink_polls":12,"arp_answered":13,"uplink_arp_answered":14,"uplink_notifies":15"#, "");
        assert_eq!(
            serde_json::from_str::<MachineStats>(&old).unwrap(),
            MachineStats {
                uplink_interrupts: 0,
                uplink_polls: 0,
                arp_answered: 0,
                uplink_arp_answered: 0,
                uplink_notifies: 0,
                ..m.clone()
            }
        );
        // A record is not mistaken for another.
        assert!(serde_json::from_str::<MachineStats>(OLD_GUEST_STATS).is_err());
        assert!(serde_json::from_str::<GuestStats>(&line).is_err());
    }

    #[test]
    fn rows_keep_their_wire_names() {
        let r = GuestRow {
            name: "w".into(),
            tenant: None,
            state: GuestState::Waiting,
            cpu_ns: 1,
            memory_bytes: 2,
            sent_frames: 3,
            received_frames: 4,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"name":"w","tenant":null,"state":"waiting","cpu_ns":1,"memory_bytes":2,"sent_frames":3,"received_frames":4}"#);
        assert_eq!(serde_json::from_str::<GuestRow>(&line).unwrap(), r);
    }
}
