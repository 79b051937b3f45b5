//! The answers to the control channel (`crate::control::ControlHost`) and
//! to the console's `stats`/`machine` requests, over the machine's tables.
//!
//! Rules: only CPU 0 reads the control channel and the console, between
//! guests, and never waits for a byte; an answer looks at the guest table
//! one guest at a time, so that a listing of thousands does not keep the
//! other CPUs from their guests. A stop request sets the guest's flag and
//! wakes it: the CPU that takes it next ends it (see `cpu_loop`).

use super::create::{ImageEntry, digest, image_budget};
use super::network::{CaptureTarget, Captured};
use super::report::sizes;
use super::{EXITED, GuestStatus, MAX_IMAGES, Machine, Network, Platform, STATES};
use crate::control::{Cloned, ControlHost, Input, Session, json_line};
use abi::bundle::Settings;
use abi::control::Reason::{Ended, Exists, InUse, NotEnded, NotFound, NotPaused};
use abi::control::{GuestEvent, ImageInfo, Refusal, StartOptions, Tenant, TenantRow};
use abi::report::{GuestRow, GuestStats, MachineStats};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// Heap bytes an answer to `list` takes per guest: its row and its JSON
/// (about 150 bytes), with room to spare.
const LIST_BYTES_PER_GUEST: usize = 512;
/// The same for `stats` (a record of some 900 bytes of JSON).
const STATS_BYTES_PER_GUEST: usize = 3 << 10;

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Answers the requests waiting on the control channel: each client
    /// has its own session (`Session` reads and bounds its requests, and
    /// never waits for a byte). While bytes are arriving CPU 0 looks again
    /// soon (see `cpu_loop`), which is what keeps uploads fast through a
    /// UART's 16-byte FIFO.
    pub(super) fn poll_control(&self, sessions: &mut Vec<Session>) {
        if sessions.is_empty() {
            *sessions = (0..crate::control::MAX_CLIENTS).map(Session::new).collect();
        }
        let now = self.now();
        let mut read = 0;
        self.platform.control_poll(&mut |input| match input {
            Input::Opened(c) | Input::Closed(c) => {
                if let Some(s) = sessions.get_mut(c) {
                    *s = Session::new(c);
                    self.client_gone(c);
                }
            }
            Input::Bytes(c, bytes) => {
                if let Some(s) = sessions.get_mut(c) {
                    read += s.poll(self, now, bytes, &mut |a| self.platform.control_write_line(c, a));
                }
            }
        });
        // Requests and uploads gone quiet; snapshots going out, as fast as
        // each client reads (`Platform::control_room`).
        let mut downloading = false;
        for (c, s) in sessions.iter_mut().enumerate() {
            s.poll(self, now, &[], &mut |a| self.platform.control_write_line(c, a));
            if s.downloading() {
                s.pump(self.platform.control_room(c), now, &mut |a| self.platform.control_write_line(c, a));
                downloading |= s.downloading();
            }
        }
        // Only bytes that arrive count: a client that went quiet half-way
        // gets no faster polling, just its timeout.
        if read > 0 || downloading {
            self.control_rx_ns.store(now, Ordering::Relaxed);
        }
        if self.net.capturing() {
            self.drain_capture();
        }
        // Records pushed by any CPU, in the order they were queued; one at
        // a time, so the lock is never held while a line is written.
        for c in 0..crate::control::MAX_CLIENTS {
            while let Some(record) = self.next_pushed(c) {
                self.platform.control_write_line(c, &record);
            }
        }
    }

    fn next_pushed(&self, client: usize) -> Option<String> {
        self.watch.lock().get_mut(client)?.next()
    }

    /// Client `client` left (or a new one took its place): it watches
    /// nothing any more.
    fn client_gone(&self, client: usize) {
        if let Some(w) = self.watch.lock().get_mut(client) {
            *w = Default::default();
        }
        for (_, s) in self.statuses() {
            s.watched.fetch_and(!(1 << client), Ordering::Relaxed);
        }
    }

    /// Guests not yet ended that run image `index`.
    fn image_users(&self, index: usize) -> u32 {
        self.statuses().filter(|(_, s)| s.image == index && s.state.load(Ordering::Relaxed) < EXITED).count() as u32
    }

    /// Hands the captured frames to the control channel; the capture's end
    /// line when it has its count or its time is up.
    fn drain_capture(&self) {
        let client = self.capture_client.load(Ordering::Relaxed);
        while let Some(c) = self.net.next_captured(self.now()) {
            match c {
                Captured::Frame(ns, frame) => self.platform.control_write_line(client, &self.captured_frame_line(ns, &frame)),
                Captured::End { taken, dropped } => {
                    self.platform.control_write_line(client, &Self::capture_end_line(taken, dropped));
                    return;
                }
            }
        }
    }

    /// Whether the heap has room for an answer of `per_guest` bytes per
    /// guest (its records and their JSON line), or refuses it: an answer
    /// that did not fit would end the machine. A passing need, like an
    /// image: it may grow the heap only as far as `heap_room` says (the
    /// heap keeps what it grows into, so a client asking again and again
    /// cannot turn more of the guests' memory into heap than that).
    fn room_to_report(&self, per_guest: usize) -> Result<(), Refusal> {
        let n = self.high.load(Ordering::Acquire);
        if self.platform.heap_room() >= n.saturating_mul(per_guest).saturating_add(super::create::HEAP_HEADROOM) {
            return Ok(());
        }
        Err(Refusal::new(
            abi::control::Reason::NoRoom,
            format!("the hypervisor's heap has no room for an answer about {n} guests; the console's `stats` lists them one at a time"),
        ))
    }

    /// Reads console input: `stats` prints every waiting guest's accounting
    /// line and the machine line (one at a time: nothing holds them all),
    /// `machine` only the machine line.
    pub(super) fn poll_console(&self, line: &mut String) {
        while let Some(b) = self.platform.console_read() {
            match b {
                b'\r' | b'\n' => {
                    if line.trim() == "stats" {
                        for id in 0..self.high.load(Ordering::Acquire) {
                            if let Some(s) = self.waiting_stats(id) {
                                self.platform.console_line(&json_line(&s));
                            }
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
        image_budget(self.platform.heap_room())
    }

    fn image_slot_free(&self) -> bool {
        self.images.lock().len() < MAX_IMAGES
    }

    fn images(&self) -> Vec<ImageInfo> {
        let images = self.images.lock();
        let info = |(i, e): (usize, &ImageEntry)| ImageInfo {
            name: e.name.clone(),
            digest: e.digest_string(),
            bytes: e.bytes,
            guests: self.image_users(i),
        };
        images.iter().enumerate().filter(|(_, e)| !e.is_free() && e.image.is_ok()).map(info).collect()
    }

    fn add_image(&self, name: &str, data: &[u8]) -> Result<(String, String), String> {
        let sum = digest(data);
        {
            let images = self.images.lock();
            if let Some(e) = images.iter().find(|e| !e.is_free() && e.image.is_ok() && e.digest == sum) {
                return Ok((e.name.clone(), e.digest_string()));
            }
            if images.iter().any(|e| !e.is_free() && e.image.is_ok() && e.name == name) {
                return Err(format!("another image named {name} is loaded (image-remove it first, or use another name)"));
            }
        }
        // Parsed and loaded with no lock held: it may take a while.
        let entry = ImageEntry::load(&self.platform, name, data);
        entry.image.as_ref().map_err(String::clone)?;
        let answer = (entry.name.clone(), entry.digest_string());
        let mut images = self.images.lock();
        match images.iter().position(ImageEntry::is_free) {
            Some(i) => images[i] = entry,
            None => images.push(entry),
        }
        Ok(answer)
    }

    fn remove_image(&self, which: &str) -> Result<String, Refusal> {
        let mut images = self.images.lock();
        // Guests are created under this lock: none can start on it meanwhile.
        let i = images
            .iter()
            .position(|e| e.answers_to(which) && e.image.is_ok())
            .ok_or_else(|| Refusal::new(NotFound, format!("no image {which} (see images)")))?;
        match self.image_users(i) {
            0 => {}
            n => return Err(Refusal::new(InUse, format!("image {which} is in use by {n} guest(s)"))),
        }
        let entry = core::mem::replace(&mut images[i], ImageEntry::free());
        drop(images);
        if let Ok(img) = entry.image {
            img.unload(&mut self.platform.mem());
        }
        self.platform.console_line(&format!("[hv] image {} removed", entry.name));
        Ok(entry.name)
    }

    fn start(
        &self,
        client: usize,
        name: &str,
        image: &str,
        memory: u64,
        tenant: Tenant<'_>,
        options: &StartOptions,
        args: &[&str],
        env: &[&str],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), Refusal> {
        if self.find(name).is_some() {
            return Err(Refusal::new(Exists, format!("a guest named {name} exists already")));
        }
        // A limit the machine could never honour is a mistake (as in a manifest).
        let machine = self.platform.frames().1 as u64 * 4096;
        if memory > machine {
            return Err(Refusal::from(format!(
                "guest {name} not started: memory {} is more than the machine's {}",
                sizes(memory),
                sizes(machine)
            )));
        }
        let index = self
            .images
            .lock()
            .iter()
            .position(|e| e.answers_to(image) && e.image.is_ok())
            .ok_or_else(|| Refusal::new(NotFound, format!("no image {image} (see images)")))?;
        let tenant = self.tenant_number(tenant)?;
        let defaults = Settings::default();
        let st = Settings {
            memory,
            tenant,
            weight: options.weight.unwrap_or(defaults.weight),
            cap: options.cap.unwrap_or(defaults.cap),
            ring_slots: options.ring_slots.unwrap_or(defaults.ring_slots),
            limits: options.apply_limits(defaults.limits),
        };
        let watch = if options.watch { 1 << client } else { 0 };
        let c = self
            .create_guest(name, index, &st, args, env, watch)
            .map_err(|e| Refusal { why: format!("guest {name} not started: {e}"), reason: e.reason })?;
        self.platform.console_line(&format!("[hv] guest {name} started ({})", c.describe));
        Ok((c.ip, c.ip.map(|_| tenant)))
    }

    fn stop(&self, name: &str) -> Result<(), Refusal> {
        let (id, status) = self.live_guest(name)?;
        status.stop_requested.store(true, Ordering::Release);
        self.wake(id, 0);
        Ok(())
    }

    fn pause(&self, name: &str) -> Result<(), Refusal> {
        let (id, status) = self.live_guest(name)?;
        status.pause_requested.store(true, Ordering::Release);
        // A guest asleep is woken to be parked (`cpu_loop`).
        self.wake(id, 0);
        Ok(())
    }

    fn resume(&self, name: &str) -> Result<(), Refusal> {
        let (id, status) = self.live_guest(name)?;
        if !status.pause_requested.swap(false, Ordering::AcqRel) {
            return Err(Refusal::new(NotPaused, format!("guest {name} is not paused")));
        }
        // Parked: runnable again (one still on its way to its park sees the
        // request gone and wakes itself, `cpu_loop`).
        if self.unpark(&status) {
            self.wake(id, 0);
        }
        Ok(())
    }

    fn clone_guest(&self, template: &str, name: &str, numbered: Option<(u32, u32)>, args: Option<&[&str]>) -> Result<Cloned, Refusal> {
        let tid = self.find(template).ok_or_else(|| not_found(template))?;
        self.clone_guests(tid, name, numbered, args)
    }

    fn list(&self) -> Result<Vec<GuestRow>, Refusal> {
        self.room_to_report(LIST_BYTES_PER_GUEST)?;
        let row = |(id, b): (usize, Arc<GuestStatus>)| {
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
        let mut all: Vec<_> = self.statuses().collect();
        all.sort_unstable_by_key(|(_, s)| s.seq);
        Ok(all.into_iter().map(row).collect())
    }

    fn stats(&self) -> Result<(Vec<GuestStats>, MachineStats), Refusal> {
        self.room_to_report(STATS_BYTES_PER_GUEST)?;
        Ok((self.waiting_stats_all(), self.machine_stats()))
    }

    fn tenants(&self) -> Vec<TenantRow> {
        let mut rows: Vec<TenantRow> = {
            let c = self.creating.lock();
            let n = c.names.len().max(c.next_host.len());
            (0..n)
                .filter(|&t| c.names.get(t).is_some_and(Option::is_some) || c.next_host.get(t).is_some_and(|&h| h > 0))
                .map(|t| TenantRow { name: c.names.get(t).cloned().flatten(), id: t as u32, guests: 0 })
                .collect()
        };
        for (_, s) in self.statuses() {
            if let Some(t) = s.tenant
                && s.state.load(Ordering::Relaxed) < EXITED
                && let Some(row) = rows.iter_mut().find(|r| r.id == t)
            {
                row.guests += 1;
            }
        }
        rows
    }

    fn remove_tenant(&self, name: &str) -> Result<(), Refusal> {
        let mut c = self.creating.lock();
        let t = c.tenant_named(name, false).map_err(|e| Refusal::new(NotFound, e))?;
        // Guests are created under this lock: none can join it meanwhile.
        let n = self.statuses().filter(|(_, s)| s.tenant == Some(t) && s.state.load(Ordering::Relaxed) < EXITED).count();
        if n > 0 {
            return Err(Refusal::new(InUse, format!("tenant {name} still has {n} guest(s)")));
        }
        c.names[t as usize] = None;
        Ok(())
    }

    fn remove_guest(&self, name: &str) -> Result<(), Refusal> {
        let mut c = self.creating.lock();
        self.take_ended(&mut c);
        let id = self.find(name).ok_or_else(|| not_found(name))?;
        let Some(i) = c.kept.iter().position(|&k| k == id) else {
            let why = match self.status(id).end.is_completed() {
                true => format!("guest {name} is still ending (try again)"),
                false => format!("guest {name} has not ended (stop it first)"),
            };
            return Err(Refusal::new(NotEnded, why));
        };
        c.kept.remove(i);
        self.forget(id);
        c.free.push(id);
        Ok(())
    }

    fn wait(&self, client: usize, name: &str) -> Result<Option<GuestEvent>, Refusal> {
        let id = self.find(name).ok_or_else(|| not_found(name))?;
        // Under the watch lock: `finish` records the end before it takes
        // the lock, so either the end is seen here or the wait is there.
        let mut watch = self.watch.lock();
        match self.status(id).end.get() {
            Some(end) => Ok(Some(end.clone())),
            None => {
                if let Some(w) = watch.get_mut(client) {
                    w.wait_for(id);
                }
                Ok(None)
            }
        }
    }

    fn watch_events(&self, client: usize) {
        if let Some(w) = self.watch.lock().get_mut(client) {
            w.watch_events();
        }
    }

    fn watch_console(&self, client: usize, name: &str) -> Result<(), Refusal> {
        let id = self.find(name).ok_or_else(|| not_found(name))?;
        let status = self.status(id);
        if status.end.is_completed() {
            return Err(Refusal::new(Ended, format!("guest {name} has already ended")));
        }
        status.watched.fetch_or(1 << client, Ordering::Relaxed);
        Ok(())
    }

    fn snapshot(&self, name: &str) -> Result<(Vec<u8>, String), Refusal> {
        let (data, sum) = self.snapshot_guest(name)?;
        Ok((data, super::create::digest_string(&sum)))
    }

    fn restore(
        &self,
        _client: usize,
        name: &str,
        tenant: Option<Tenant<'_>>,
        args: Option<&[&str]>,
        data: &[u8],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), String> {
        self.restore_guest(name, tenant, args, data)
    }

    fn capture(&self, client: usize, what: &str, count: u32, secs: u32) -> Result<(), Refusal> {
        let target = match what.strip_prefix("tenant:") {
            Some(t) => t.parse().ok().map(CaptureTarget::Tenant),
            None => self.find(what).map(CaptureTarget::Guest),
        };
        let t = target.ok_or_else(|| Refusal::new(NotFound, format!("no guest or tenant {what}")))?;
        self.capture_client.store(client, Ordering::Relaxed);
        self.net.start_capture(t, count, self.now().saturating_add(u64::from(secs) * 1_000_000_000));
        Ok(())
    }
}

/// `no guest NAME`.
impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Guest `name`'s id and status, if it has not ended.
    fn live_guest(&self, name: &str) -> Result<(usize, Arc<GuestStatus>), Refusal> {
        let id = self.find(name).ok_or_else(|| not_found(name))?;
        let status = self.status(id);
        if status.state.load(Ordering::Relaxed) >= EXITED {
            return Err(Refusal::new(Ended, format!("guest {name} has already ended")));
        }
        Ok((id, status))
    }
}

fn not_found(name: &str) -> Refusal {
    Refusal::new(NotFound, format!("no guest {name}"))
}
