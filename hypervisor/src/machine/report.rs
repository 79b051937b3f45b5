//! The records the hypervisor writes about its guests and itself: the
//! `guest_stats` and `machine` JSON lines (console and control channel)
//! and the capture's lines, moved here as they were so that their typed
//! form (`abi::report`) replaces them in one place.
//!
//! Rules: one line per record, no field ever renamed without the ABI's
//! version; numbers as JSON numbers, names escaped by nothing (guest names
//! are `[a-z0-9_-]+`).

use super::network::PortStats;
use super::{Machine, Network, Platform};
use crate::guest::Guest;
use crate::sched::Scheduler;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A size for people: whole MiB, else KiB.
pub fn sizes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

impl<P: Platform, N: Network> Machine<P, N> {
    /// One JSON line with what guest `id` (`g`) has cost. Memory:
    /// `memory_bytes` is what is charged against its limit
    /// (`private_bytes`, which includes its `ring_bytes`, plus
    /// `table_bytes`); `shared_bytes` is mapped but shared with other
    /// guests; `hv_bytes` is what the hypervisor holds for it outside its
    /// pages.
    pub(super) fn stats_line(&self, g: &Guest, state: &str, port: Option<PortStats>) -> String {
        let s = &g.stats;
        let m = &g.memory;
        let per_cpu: Vec<String> = s.cpu_ns_per_cpu.iter().map(|n| format!("{n}")).collect();
        let ring_bytes = port.map_or(0, |p| p.ring_bytes);
        let hv_bytes = g.record_bytes()
            + (core::mem::size_of::<Option<Box<Guest>>>()
                + core::mem::size_of::<AtomicUsize>()
                + core::mem::size_of::<u64>()
                + Scheduler::BYTES_PER_GUEST) as u64
            + self.net.bytes_per_guest()
            + port.map_or(0, |p| p.record_bytes);
        format!(
            r#"{{"event":"guest_stats","guest":"{}","state":"{state}","cpu_ns":{},"cpu_ns_per_cpu":[{}],"wakeups":{},"preemptions":{},"yields":{},"hypercalls":{},"memory_bytes":{},"memory_limit":{},"private_bytes":{},"ring_bytes":{ring_bytes},"table_bytes":{},"shared_bytes":{},"hv_bytes":{hv_bytes},"console_dropped":{},"kicks_ignored":{},"nic_limited":{},"ring_errors":{},"uplink_dropped":{},"spoofed_frames":{},"created_ns":{},"create_ns":{},"first_entry_ns":{}}}"#,
            g.name,
            s.cpu_ns,
            per_cpu.join(","),
            s.wakeups,
            s.preemptions,
            s.yields,
            s.hypercalls,
            m.charged_bytes(),
            m.limit_bytes(),
            m.private_bytes(),
            m.table_bytes(),
            m.shared_bytes(),
            g.console_limit.refused,
            g.kick_limit.refused,
            port.map_or(0, |p| p.limited),
            port.map_or(0, |p| p.ring_errors),
            port.map_or(0, |p| p.uplink_dropped),
            port.map_or(0, |p| p.spoofed),
            s.created_ns,
            s.create_ns,
            s.first_entry_ns
        )
    }

    /// Guest `id`'s accounting line if it is waiting in the table (not on
    /// a CPU, not ended). The table's lock is held for this one guest only,
    /// so a listing of thousands does not keep every CPU from its guests.
    pub(super) fn waiting_stats_line(&self, id: usize) -> Option<String> {
        // The port's counters first: no other lock under the table's.
        let port = self.net.port_stats(id);
        let guests = self.guests.lock();
        Some(self.stats_line(guests.get(id)?.as_ref()?, "running", port))
    }

    /// The accounting lines of every waiting guest.
    pub(super) fn waiting_stats_lines(&self) -> Vec<String> {
        (0..self.count.load(Ordering::Acquire)).filter_map(|id| self.waiting_stats_line(id)).collect()
    }

    /// One JSON line about the whole machine: memory (frames, the
    /// hypervisor's heap) and how long each CPU has been idle.
    pub fn machine_line(&self) -> String {
        let (heap, heap_used) = self.platform.heap_usage();
        let (free, total) = self.platform.frames();
        let idle: Vec<String> = self.idle_ns.iter().map(|a| format!("{}", a.load(Ordering::Relaxed))).collect();
        format!(
            r#"{{"event":"machine","uptime_ns":{},"live":{},"exited":{},"stopped":{},"total_bytes":{},"free_bytes":{},"hv_heap_bytes":{heap},"hv_heap_used_bytes":{heap_used},"cpu_idle_ns":[{}]}}"#,
            self.now(),
            self.live.load(Ordering::Relaxed),
            self.exited.load(Ordering::Relaxed),
            self.stopped.load(Ordering::Relaxed),
            total as u64 * 4096,
            free as u64 * 4096,
            idle.join(",")
        )
    }

    /// The control channel's line for a captured frame taken at monotonic
    /// `ns`.
    pub(super) fn captured_frame_line(&self, ns: u64, frame: &[u8]) -> String {
        let mut hex = String::with_capacity(frame.len() * 2);
        for b in frame {
            let _ = core::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
        }
        let wall = self.time.boot_wall_ns.saturating_add(ns);
        format!(r#"{{"wall_ns":{wall},"frame":"{hex}"}}"#)
    }

    /// The control channel's line that ends a capture.
    pub(super) fn capture_end_line(taken: u32, dropped: u64) -> String {
        format!(r#"{{"captured":{taken},"dropped":{dropped}}}"#)
    }
}
