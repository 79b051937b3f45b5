//! The records the hypervisor writes about its guests and itself: the
//! `guest_stats` and `machine` records (console and control channel) and
//! the capture's lines, built as the typed records of `abi::report` and
//! `abi::control` and written as one JSON line each (`control::json_line`).
//!
//! Rules: one line per record; the field names are the ABI's
//! (`docs/abi.md`), never renamed without its version.

use super::network::PortStats;
use super::{GuestStatus, Machine, Network, Platform};
use crate::control::json_line;
use crate::guest::Guest;
use crate::net::port::GuestEvents as _;
use crate::sched::Scheduler;
use crate::slot::Slot;
use abi::control::Response;
use abi::report::{GuestState, GuestStats, MachineStats};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A size for people: whole MiB, else KiB.
pub fn sizes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// What guest `g` has cost ([`GuestStats`] says what each field counts).
    pub(super) fn guest_stats(&self, g: &Guest, state: GuestState, port: Option<PortStats>) -> GuestStats {
        let s = &g.stats;
        let m = &g.memory;
        // Each `Slot`'s value sits behind two reference counts.
        let counted = |value: usize| Slot::<()>::BYTES + value + 2 * core::mem::size_of::<usize>();
        let hv_bytes = g.record_bytes()
            + (core::mem::size_of::<Option<Box<Guest>>>()
                + core::mem::size_of::<AtomicUsize>()
                + counted(core::mem::size_of::<P::Events>())
                + counted(core::mem::size_of::<GuestStatus>() + g.name.len())
                + Scheduler::BYTES_PER_GUEST) as u64
            + self.net.bytes_per_guest()
            + port.map_or(0, |p| p.record_bytes);
        GuestStats {
            guest: g.name.clone(),
            state,
            cpu_ns: s.cpu_ns,
            cpu_ns_per_cpu: s.cpu_ns_per_cpu.clone(),
            wakeups: s.wakeups,
            preemptions: s.preemptions,
            yields: s.yields,
            hypercalls: s.hypercalls,
            memory_bytes: m.charged_bytes(),
            memory_limit: m.limit_bytes(),
            private_bytes: m.private_bytes(),
            ring_bytes: port.map_or(0, |p| p.ring_bytes),
            table_bytes: m.table_bytes(),
            shared_bytes: m.shared_bytes(),
            hv_bytes,
            console_dropped: g.console_limit.refused,
            kicks_ignored: g.kick_limit.refused,
            nic_limited: port.map_or(0, |p| p.limited),
            ring_errors: port.map_or(0, |p| p.ring_errors),
            uplink_dropped: port.map_or(0, |p| p.uplink_dropped),
            spoofed_frames: port.map_or(0, |p| p.spoofed),
            tx_waits: port.map_or(0, |p| p.tx_waits),
            rx_full_drops: port.map_or(0, |p| p.rx_full_drops),
            blocked: g.is_blocked(),
            events_pending: 0,
            sent_frames: port.map_or(0, |p| p.sent_frames),
            received_frames: port.map_or(0, |p| p.received_frames),
            arp_answered: port.map_or(0, |p| p.arp_answered),
            oversize_frames: port.map_or(0, |p| p.oversize),
            bad_checksums: port.map_or(0, |p| p.bad_checksums),
            created_ns: s.created_ns,
            create_ns: s.create_ns,
            first_entry_ns: s.first_entry_ns,
            exit_code: None,
            stop_reason: None,
        }
    }

    /// Guest `id`'s accounting record if it is waiting in the table (not
    /// on a CPU, not ended). The table's lock is held for this one guest
    /// only, so a listing of thousands does not keep every CPU from its
    /// guests.
    pub(super) fn waiting_stats(&self, id: usize) -> Option<GuestStats> {
        // The port's counters first: no other lock under the table's.
        let port = self.net.port_stats(id);
        let events = self.event_pages.get(id).and_then(|e| e.get()).map_or(0, |e| e.pending());
        let guests = self.guests.lock();
        let mut stats = self.guest_stats(guests.get(id)?.as_ref()?, GuestState::Running, port);
        stats.events_pending = events;
        Some(stats)
    }

    /// The accounting records of every waiting guest.
    pub(super) fn waiting_stats_all(&self) -> Vec<GuestStats> {
        (0..self.high.load(Ordering::Acquire)).filter_map(|id| self.waiting_stats(id)).collect()
    }

    /// The record of the whole machine: memory (frames, the hypervisor's
    /// heap) and how long each CPU has been idle.
    pub fn machine_stats(&self) -> MachineStats {
        let (heap, heap_used) = self.platform.heap_usage();
        let (free, total) = self.platform.frames();
        let (arp_answered, uplink_arp_answered) = self.net.arp_answered();
        MachineStats {
            uptime_ns: self.now(),
            live: self.live.load(Ordering::Relaxed) as u64,
            exited: self.exited.load(Ordering::Relaxed) as u64,
            stopped: self.stopped.load(Ordering::Relaxed) as u64,
            total_bytes: total as u64 * 4096,
            free_bytes: free as u64 * 4096,
            hv_heap_bytes: heap as u64,
            hv_heap_used_bytes: heap_used as u64,
            hv_heap_grown_bytes: self.platform.heap_grown() as u64,
            cpu_idle_ns: self.idle_ns.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
            uplink_interrupts: self.platform.uplink_interrupt_count(),
            uplink_polls: self.uplink_polls.load(Ordering::Relaxed),
            arp_answered,
            uplink_arp_answered,
            uplink_notifies: self.net.uplink_notifies(),
        }
    }

    /// The machine's record as a console line.
    pub fn machine_line(&self) -> String {
        json_line(&self.machine_stats())
    }

    /// The control channel's line for a captured frame taken at monotonic
    /// `ns`.
    pub(super) fn captured_frame_line(&self, ns: u64, frame: &[u8]) -> String {
        json_line(&Response::frame(self.time.boot_wall_ns.saturating_add(ns), frame))
    }

    /// The control channel's line that ends a capture.
    pub(super) fn capture_end_line(taken: u32, dropped: u64) -> String {
        json_line(&Response::Captured { captured: taken.into(), dropped })
    }
}
