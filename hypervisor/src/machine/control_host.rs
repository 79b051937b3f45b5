//! The answers to the control channel (`crate::control::ControlHost`) and
//! to the console's `stats`/`machine` requests, over the machine's tables.
//!
//! Rules: only CPU 0 reads the control channel and the console, between
//! guests, and never waits for a byte; an answer looks at the guest table
//! one guest at a time, so that a listing of thousands does not keep the
//! other CPUs from their guests. A stop request sets the guest's flag and
//! wakes it: the CPU that takes it next ends it (see `cpu_loop`).

use super::create::{image_budget, load_image};
use super::network::{CaptureTarget, Captured};
use super::report::sizes;
use super::{EXITED, GuestStatus, MAX_IMAGES, Machine, Network, Platform, STATES};
use crate::control::{ControlHost, Session, json_line};
use abi::report::{GuestRow, GuestStats, MachineStats};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Answers the requests waiting on the control channel (`Session`
    /// reads and bounds them, and never waits for a byte). While bytes are
    /// arriving CPU 0 looks again soon (see `cpu_loop`), which is what
    /// keeps uploads fast with the UART's 16-byte FIFO and no interrupt.
    pub(super) fn poll_control(&self, session: &mut Session) {
        let now = self.now();
        let read = session.poll(self, now, &mut || self.platform.control_read(), &mut |a| self.platform.control_write_line(a));
        // Only bytes that arrive count: a client that went quiet half-way
        // gets no faster polling, just its timeout.
        if read > 0 {
            self.control_rx_ns.store(now, Ordering::Relaxed);
        }
        if self.net.capturing() {
            self.drain_capture();
        }
    }

    /// Hands the captured frames to the control channel; the capture's end
    /// line when it has its count or its time is up.
    fn drain_capture(&self) {
        while let Some(c) = self.net.next_captured(self.now()) {
            match c {
                Captured::Frame(ns, frame) => self.platform.control_write_line(&self.captured_frame_line(ns, &frame)),
                Captured::End { taken, dropped } => {
                    self.platform.control_write_line(&Self::capture_end_line(taken, dropped));
                    return;
                }
            }
        }
    }

    /// Reads console input: `stats` prints every waiting guest's accounting
    /// line and the machine line, `machine` only the machine line.
    pub(super) fn poll_console(&self, line: &mut String) {
        while let Some(b) = self.platform.console_read() {
            match b {
                b'\r' | b'\n' => {
                    if line.trim() == "stats" {
                        for l in self.waiting_stats_all().iter().map(json_line) {
                            self.platform.console_line(&l);
                        }
                        self.platform.console_line(&self.machine_line());
                    } else if line.trim() == "machine" {
                        self.platform.console_line(&self.machine_line());
                    }
                    line.clear();
                }
                _ if line.len() < 64 => line.push(b as char),
                _ => {}
            }
        }
    }
}

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> ControlHost for Machine<P, N> {
    fn upload_room(&self) -> usize {
        image_budget(self.platform.heap_usage())
    }

    fn image_slot_free(&self) -> bool {
        self.images.lock().len() < MAX_IMAGES
    }

    fn image_names(&self) -> Vec<String> {
        self.images.lock().iter().filter(|(_, i)| i.is_ok()).map(|(n, _)| n.clone()).collect()
    }

    fn add_image(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let img = load_image(&self.platform, name, data)?;
        self.images.lock().push((name.into(), Ok(img)));
        Ok(())
    }

    fn start(&self, name: &str, image: &str, memory: u64, tenant: Option<u32>, args: &[&str]) -> Result<Option<[u8; 4]>, String> {
        if self.find(name).is_some() {
            return Err(format!("a guest named {name} exists already"));
        }
        // A limit the machine could never honour is a mistake (as in a manifest).
        let machine = self.platform.frames().1 as u64 * 4096;
        if memory > machine {
            return Err(format!("guest {name} not started: memory {} is more than the machine's {}", sizes(memory), sizes(machine)));
        }
        let index =
            self.images.lock().iter().position(|(n, i)| n == image && i.is_ok()).ok_or_else(|| format!("no image {image} (see images)"))?;
        let st = abi::bundle::Settings { memory, tenant: tenant.unwrap_or(abi::bundle::TENANT_NONE), ..Default::default() };
        let c = self.create_guest(name, index, &st, args).map_err(|e| format!("guest {name} not started: {e}"))?;
        self.platform.console_line(&format!("[hv] guest {name} started ({})", c.describe));
        Ok(c.ip)
    }

    fn stop(&self, name: &str) -> Result<(), String> {
        let id = self.find(name).ok_or_else(|| format!("no guest {name}"))?;
        if self.status(id).state.load(Ordering::Relaxed) >= EXITED {
            return Err(format!("guest {name} has already ended"));
        }
        self.status(id).stop_requested.store(true, Ordering::Release);
        self.wake(id, 0);
        Ok(())
    }

    fn list(&self) -> Vec<GuestRow> {
        let row = |(id, b): (usize, &GuestStatus)| {
            let st = self.net.port_stats(id).unwrap_or_default();
            GuestRow {
                name: b.name.clone(),
                tenant: b.tenant,
                state: STATES[b.state.load(Ordering::Relaxed) as usize],
                cpu_ns: b.cpu_ns.load(Ordering::Relaxed),
                memory_bytes: b.memory_bytes.load(Ordering::Relaxed),
                sent_frames: st.sent_frames,
                received_frames: st.received_frames,
            }
        };
        self.statuses().map(row).collect()
    }

    fn stats(&self) -> (Vec<GuestStats>, MachineStats) {
        (self.waiting_stats_all(), self.machine_stats())
    }

    fn capture(&self, what: &str, count: u32, secs: u32) -> Result<(), String> {
        let target = match what.strip_prefix("tenant:") {
            Some(t) => t.parse().ok().map(CaptureTarget::Tenant),
            None => self.find(what).map(CaptureTarget::Guest),
        };
        let t = target.ok_or_else(|| format!("no guest or tenant {what}"))?;
        self.net.start_capture(t, count, self.now().saturating_add(u64::from(secs) * 1_000_000_000));
        Ok(())
    }
}
