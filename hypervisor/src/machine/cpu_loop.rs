//! The loop each CPU runs: pick a guest, enter it, account for it, put it
//! back, and between guests wake sleepers, balance, steal, idle.
//!
//! Rules:
//! - One pass of the loop is [`Machine::step`]; [`Machine::cpu_loop`] only
//!   repeats it. Nothing blocks inside a pass but [`Platform::idle`].
//! - The lost-wake-up rule: an event for a guest is raised in its event
//!   word before its scheduler is asked to wake it, and a guest put to
//!   sleep has its event word (and its stop request) looked at again after
//!   the put. A raiser that came between the guest's own check (in the
//!   `block` hypercall) and the put found it running and could not wake
//!   it; this second look does.
//! - A guest leaves the CPU with its TX drained and its FPU state out of
//!   the CPU ([`Platform::end_guest`]) before any other CPU can take it.
//!   The CPU stays on its tables until it enters the next guest (one
//!   switch of tables per guest switch) or idles; a guest's tables are
//!   released on every CPU ([`Platform::release_tables`]) before they are
//!   freed.
//! - An idle CPU takes a runnable guest from the busiest other CPU (margin
//!   1); every `IDLE_TICK_NS` a CPU evens out with margin 2, so that one
//!   waiting guest does not bounce between two busy CPUs.

use super::{EXITED, Machine, Network, PAUSED, Platform, RUNNING, STOPPED, WAITING};
use crate::control::{Session, json_line};
use crate::guest::{Guest, Step};
use crate::net::port::GuestEvents as _;
use crate::sched::Leave;
use abi::report::GuestState;
use abi::stop::StopReason;
use abi::time::events;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// An idle CPU wakes at least this often to look for work and for the end.
pub const IDLE_TICK_NS: u64 = 10_000_000;
/// How often an idle CPU 0 polls an uplink without interrupts for frames
/// from the host ...
pub(super) const UPLINK_POLL_NS: u64 = 500_000;
/// ... for this long after the host last sent a frame; then every
/// IDLE_TICK_NS (the first frame after a quiet second waits up to that).
/// An uplink that interrupts is never polled on a timer: only frames held
/// for a guest's full ring are retried every UPLINK_POLL_NS while they wait.
const UPLINK_ACTIVE_NS: u64 = 1_000_000_000;
/// How often an idle CPU 0 looks at the control channel while bytes are
/// arriving (the UART holds 16 and does not interrupt).
pub(super) const CONTROL_POLL_NS: u64 = 50_000;
/// The longest CPU 0 runs a guest while control bytes are arriving.
const CONTROL_SLICE_NS: u64 = 200_000;
/// Bytes count as arriving for this long after the last one.
const CONTROL_FLOWING_NS: u64 = 2_000_000;

/// What one CPU keeps between passes of its loop.
#[derive(Default)]
pub struct CpuState {
    timed_out: Vec<usize>,
    console_in: String,
    /// A session per control client.
    control_in: Vec<Session>,
    last_balance: u64,
    /// CPU 0, uplink with interrupts: the last poll stopped at its batch,
    /// so the device may hold more (poll again without an interrupt).
    uplink_more: bool,
    /// CPU 0: frames from the host wait for room in a guest's ring.
    uplink_held: bool,
    /// CPU 0: when senders waiting for a full receiver are next due for a
    /// retry (`Network::retry_waiting`), if some wait: an idle CPU 0 wakes
    /// for it.
    waiting_until: Option<u64>,
}

/// Whether the loop goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Again,
    /// No guest is left and none can come: the CPU is done.
    Done,
}

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// The scheduling loop of CPU `me`; returns when no guest is left.
    pub fn cpu_loop(&self, me: usize) {
        let mut st = CpuState::default();
        while self.step(me, &mut st) == Pass::Again {}
    }

    /// Whether control bytes are arriving (CPU 0 then looks every
    /// [`CONTROL_POLL_NS`], and runs guests for short slices).
    fn control_flowing(&self, now: u64) -> bool {
        self.control && now.saturating_sub(self.control_rx_ns.load(Ordering::Relaxed)) < CONTROL_FLOWING_NS
    }

    /// One pass of CPU `me`'s loop.
    pub fn step(&self, me: usize, st: &mut CpuState) -> Pass {
        if me == 0 {
            self.poll_console(&mut st.console_in);
            if self.control {
                self.poll_control(&mut st.control_in);
            }
            self.service_uplink(me, st);
            self.service_waiting(me, st);
        }
        if !self.keep_running {
            let live = self.live.load(Ordering::Acquire);
            if live == 0 {
                return Pass::Done;
            }
            // Only templates are left, paused for good: a machine that
            // ends when idle stops them.
            if me == 0 && live == self.paused.load(Ordering::Acquire) {
                self.stop_paused();
            }
        }
        let now = self.now();
        if now.saturating_sub(st.last_balance) >= IDLE_TICK_NS {
            st.last_balance = now;
            self.balance(me, 2);
        }
        let (pick, next_timer) = {
            let mut s = self.scheds[me].lock();
            s.expire(now, |id| st.timed_out.push(id));
            (s.pick(now), s.next_timer())
        };
        for id in st.timed_out.drain(..) {
            if let Some(e) = self.event_pages[id].get() {
                e.raise(events::TIMER);
            }
        }
        let Some((id, slice)) = pick else {
            // The device may still hold frames (its last poll stopped at
            // its batch): take them now rather than halt.
            if !self.balance(me, 1) && !st.uplink_more {
                self.idle(me, now, next_timer, st);
            }
            return Pass::Again;
        };
        let Some(mut g) = self.guests.lock()[id].take() else {
            // Out of the table: a paused template being cloned. Parked as
            // if paused; woken again at once if it is not paused (any
            // more), to be picked once it is back.
            self.scheds[me].lock().put(id, now, 0, Leave::Blocked { deadline: u64::MAX });
            if self.status[id].get().is_some_and(|s| !s.pause_requested.load(Ordering::Acquire)) {
                self.scheds[me].lock().wake(id, now);
            }
            return Pass::Again;
        };
        let status = self.status(id);
        if status.stop_requested.load(Ordering::Acquire) {
            self.finish(me, id, g, Err(StopReason::Operator));
            return Pass::Again;
        }
        if status.pause_requested.load(Ordering::Acquire) {
            // Parked: asleep with no deadline, out of every run queue;
            // an event wakes it only to be parked again here, `resume`
            // clears the request and wakes it for good.
            if status.state.swap(PAUSED, Ordering::AcqRel) != PAUSED {
                self.paused.fetch_add(1, Ordering::AcqRel);
            }
            self.guests.lock()[id] = Some(g);
            self.scheds[me].lock().put(id, now, 0, Leave::Blocked { deadline: u64::MAX });
            // `resume` may have cleared the request before it saw PAUSED.
            if !status.pause_requested.load(Ordering::Acquire) {
                self.unpark(&status);
                self.scheds[me].lock().wake(id, now);
            }
            // The manifest's clones of it, if it was their template.
            self.run_clone_jobs(id, &status.name);
            return Pass::Again;
        }
        status.state.store(RUNNING, Ordering::Relaxed);
        let slice = if me == 0 && self.control_flowing(now) { slice.min(CONTROL_SLICE_NS) } else { slice };
        self.preempt[me].store(false, Ordering::Relaxed);
        let (step, ran) = self.give_slice(id, &mut g, me, slice, next_timer);
        status.cpu_ns.store(g.stats.cpu_ns, Ordering::Relaxed);
        status.memory_bytes.store(g.memory.charged_bytes(), Ordering::Relaxed);
        status.state.store(WAITING, Ordering::Relaxed);
        let now = self.now();
        let leave = match step {
            Step::Resume | Step::Preempted | Step::NetKick | Step::FlushTlb => Leave::Preempted,
            Step::Yield => Leave::Yielded,
            Step::Block { deadline } => {
                // A manifest template pauses here, initialised and idle
                // (parked on its next pick: the wake below).
                if status.pause_at_block.swap(false, Ordering::AcqRel) {
                    status.pause_requested.store(true, Ordering::Release);
                }
                Leave::Blocked { deadline }
            }
            Step::Exited(code) => {
                self.finish(me, id, g, Ok(code));
                return Pass::Again;
            }
            Step::Stopped(why) => {
                self.finish(me, id, g, Err(why));
                return Pass::Again;
            }
        };
        self.guests.lock()[id] = Some(g);
        self.scheds[me].lock().put(id, now, ran, leave);
        // The lost-wake-up rule (module doc): an event raised by another
        // CPU while this guest was on its way to sleep found it not yet
        // blocked and could not wake it: the raiser sets the bit before it
        // looks, so look again now. The same for `ctl stop`, which sets
        // the stop request before it wakes.
        if matches!(leave, Leave::Blocked { .. })
            && (self.event_pages[id].get().is_some_and(|e| e.pending() != 0)
                || status.stop_requested.load(Ordering::Acquire)
                || status.pause_requested.load(Ordering::Acquire))
        {
            self.scheds[me].lock().wake(id, now);
        }
        Pass::Again
    }

    /// Stops every paused guest (once each).
    fn stop_paused(&self) {
        for (id, s) in self.statuses() {
            if s.state.load(Ordering::Acquire) == PAUSED && !s.stop_requested.swap(true, Ordering::AcqRel) {
                self.wake(id, 0);
            }
        }
    }

    /// CPU 0's look at the uplink, once per pass. With interrupts, the
    /// device is polled only when its interrupt came (the flag is taken
    /// before the poll, so a frame that arrives during the poll interrupts
    /// again: no lost wake-up) or the last poll stopped at its batch (the
    /// device may hold more, and will not interrupt for frames it already
    /// announced); otherwise only frames held for a guest's full ring are
    /// retried. Without interrupts it is polled on every pass, and each
    /// such poll is counted in `uplink_polls`.
    fn service_uplink(&self, me: usize, st: &mut CpuState) {
        let now = self.now();
        let wake = &mut |g| self.wake(g, me);
        if !self.platform.uplink_interrupts() {
            if self.net.uplink_rx_ns().is_some() {
                self.uplink_polls.fetch_add(1, Ordering::Relaxed);
            }
            self.net.poll_uplink(now, wake);
            return;
        }
        if self.platform.take_uplink_interrupt() | core::mem::take(&mut st.uplink_more) {
            st.uplink_more = self.net.poll_uplink(now, wake);
            // It may have held frames for a full ring: look below.
            st.uplink_held = true;
        }
        if st.uplink_held {
            st.uplink_held = self.net.retry_uplink_held(now, wake);
        }
    }

    /// CPU 0's look at the senders whose frames wait for a full receiver
    /// (`net::backend`): those waiting for the uplink, for a receiver that
    /// is gone or past their bounded wait are retried when due.
    fn service_waiting(&self, me: usize, st: &mut CpuState) {
        let now = self.now();
        let (next, broken) = self.net.retry_waiting(now, &mut |g| self.wake(g, me));
        st.waiting_until = next;
        self.disconnect_broken(broken);
    }

    /// Disconnects the vNICs of senders found lying in their TX ring while
    /// another guest's turn drained them.
    fn disconnect_broken(&self, broken: Vec<(usize, String)>) {
        for (id, why) in broken {
            self.net.disconnect(id);
            let name = &self.status(id).name;
            self.platform.console_line(&alloc::format!("[hv] guest {name} vNIC disconnected: {why}"));
        }
    }

    /// How long an idle CPU `me` may halt at most, whatever its guests'
    /// deadlines: CPU 0 looks at the control channel often while bytes
    /// arrive; it polls an uplink without interrupts often while the host
    /// has been sending (an idle machine wakes 100 times a second, not
    /// 2000), and retries frames held for a full ring often while some
    /// wait; an uplink with interrupts wakes CPU 0 itself (and one whose
    /// last poll stopped at its batch is polled again before any halt).
    /// Otherwise every [`IDLE_TICK_NS`], to look for work and for the end.
    fn idle_tick(&self, me: usize, now: u64, st: &CpuState) -> u64 {
        if me != 0 {
            return IDLE_TICK_NS;
        }
        let busy_uplink = if self.platform.uplink_interrupts() {
            st.uplink_held
        } else {
            self.net.uplink_rx_ns().is_some_and(|rx| now.saturating_sub(rx) < UPLINK_ACTIVE_NS)
        };
        let tick = if self.control_flowing(now) {
            CONTROL_POLL_NS
        } else if busy_uplink {
            UPLINK_POLL_NS
        } else {
            IDLE_TICK_NS
        };
        // Senders waiting for a full receiver are retried when due.
        st.waiting_until.map_or(tick, |at| tick.min(at.saturating_sub(now).max(UPLINK_POLL_NS)))
    }

    /// Nothing runnable here: halt until the next deadline, or the tick
    /// ([`Self::idle_tick`]).
    fn idle(&self, me: usize, now: u64, next_timer: Option<u64>, st: &CpuState) {
        let tick = self.idle_tick(me, now, st);
        self.arm(me, next_timer.unwrap_or(u64::MAX).min(now + tick));
        let halted = self.now();
        self.platform.idle(me);
        self.interrupted(me);
        self.idle_ns[me].fetch_add(self.now().saturating_sub(halted), Ordering::Relaxed);
    }

    /// Arms CPU `me`'s timer for `deadline_ns`, unless the interrupt it
    /// armed before is still to come and due no later (Linux's
    /// `hrtimer_reprogram` likewise reprograms only for an earlier
    /// expiry): that one takes the CPU first, which then finds a slice not
    /// over, or nothing due, and arms again. A CPU that switches between
    /// guests every few microseconds (a sender and its receiver) would
    /// otherwise reprogram at every switch, which costs a VM exit under
    /// KVM and wakes QEMU's main loop under TCG.
    ///
    /// Every interrupt reaches the loop as a guest's exit to it or the
    /// end of an idle halt (the hypervisor runs with interrupts off
    /// elsewhere, so one that comes meanwhile is taken at the next entry);
    /// both forget what was armed ([`Self::interrupted`]), so an armed
    /// timer is never counted on after it may have fired.
    fn arm(&self, me: usize, deadline_ns: u64) {
        let due = &self.timer_due[me];
        let armed = due.load(Ordering::Relaxed);
        if armed != 0 && armed <= deadline_ns {
            return;
        }
        self.platform.arm_timer(deadline_ns);
        due.store(deadline_ns.max(1), Ordering::Relaxed);
    }

    /// CPU `me` took an interrupt, perhaps its timer's: nothing is known
    /// to be armed any more.
    fn interrupted(&self, me: usize) {
        self.timer_due[me].store(0, Ordering::Relaxed);
    }

    fn busiest_other(&self, me: usize) -> Option<(usize, usize)> {
        (0..self.scheds.len()).filter(|&c| c != me).map(|c| (c, self.scheds[c].lock().runnable_len())).max_by_key(|&(_, n)| n)
    }

    /// Takes a runnable guest from the busiest other CPU if it has at
    /// least `margin` more waiting than this one; returns whether one moved.
    fn balance(&self, me: usize, margin: usize) -> bool {
        let mine = self.scheds[me].lock().runnable_len();
        let Some((other, theirs)) = self.busiest_other(me) else { return false };
        if theirs < mine + margin {
            return false;
        }
        let Some((id, migrant)) = self.scheds[other].lock().take_migrant() else { return false };
        self.scheds[me].lock().add_migrant(id, migrant);
        self.home[id].store(me, Ordering::Release);
        true
    }

    /// Forwards the frames guest `id` (named `name`) queued; disconnects
    /// its vNIC if it lied in its ring. Then the senders waiting for room
    /// in its RX ring, which it may have emptied, try again.
    fn drain(&self, id: usize, name: &str, me: usize) {
        let now = self.now();
        if let Err(why) = self.net.drain(id, now, &mut |g| self.wake(g, me)) {
            self.net.disconnect(id);
            self.platform.console_line(&alloc::format!("[hv] guest {name} vNIC disconnected: {why}"));
        }
        let broken = self.net.receiver_ran(id, now, &mut |g| self.wake(g, me));
        self.disconnect_broken(broken);
    }

    /// Gives guest `id` (taken out of the table) CPU `me` for at most
    /// `slice_ns`, or until the next sleeper is due; returns why it left
    /// and how long it ran.
    fn give_slice(&self, id: usize, g: &mut Guest, me: usize, slice_ns: u64, next_timer: Option<u64>) -> (Step, u64) {
        let mut mem = self.platform.mem();
        let start = self.now();
        // Preempt at the end of the slice, or earlier if a sleeper is due.
        self.arm(me, start.saturating_add(slice_ns).min(next_timer.unwrap_or(u64::MAX)));
        if let Err(why) = self.make_rings(id, g, &mut mem) {
            return (Step::Stopped(why), 0);
        }
        g.wake_from_block(&mut mem);
        if g.stats.first_entry_ns == 0 {
            g.stats.first_entry_ns = start.max(1);
        }
        let root = g.memory.space.root();
        // Its tables may have changed on another CPU since it last ran here.
        let moved = g.last_cpu.replace(me) != Some(me);
        self.platform.begin_guest(me, root, moved);
        let watched = self.status(id).watched.load(Ordering::Relaxed);
        let step = loop {
            self.platform.enter(g);
            let step = g.handle_exit(&mut mem, &|| self.now(), &mut |l| self.console_out(id, watched, l));
            if g.memory.take_made_rings() {
                // Its first touch of them (or a hypercall's) made them.
                self.rings_made(id, g, &mem);
            }
            match step {
                Step::Resume => {}
                Step::FlushTlb => self.platform.flush_tlb(root),
                Step::NetKick => {
                    self.drain(id, &g.name, me);
                    // A guest it woke here should run now (`Machine::wake`).
                    if self.preempt[me].swap(false, Ordering::Relaxed) {
                        break Step::Preempted;
                    }
                }
                step => break step,
            }
        };
        if g.regs.interrupted() {
            self.interrupted(me);
        }
        // Whatever it queued goes out now that it leaves the CPU.
        self.drain(id, &g.name, me);
        self.platform.end_guest(&mut g.fpu);
        if g.via_sysret {
            // It left at a hypercall, which saved only its control words
            // (the ABI clobbers the rest): it resumes with clean registers.
            g.fpu.clobber_for_hypercall();
        }
        let ran = self.now().saturating_sub(start);
        g.stats.cpu_ns += ran;
        if g.stats.cpu_ns_per_cpu.len() <= me {
            g.stats.cpu_ns_per_cpu.resize(me + 1, 0);
        }
        g.stats.cpu_ns_per_cpu[me] += ran;
        (step, ran)
    }

    /// Before guest `id` runs: makes its deferred ring pages if a frame
    /// for it found them missing (the back end then raised `NET_RX`), and
    /// tells its port of ring pages made since it last ran (by a control
    /// request that read them). A guest that raises `NET_RX` itself only
    /// gets its own rings made.
    fn make_rings(&self, id: usize, g: &mut Guest, mem: &mut P::Mem<'_>) -> Result<(), StopReason> {
        if g.memory.rings_deferred() && g.pending_events(mem) & events::NET_RX != 0 {
            g.memory.make_rings(mem).map_err(|e| match e {
                crate::mm::user::Fault::OutOfMemory { limit } => {
                    StopReason::OutOfMemory { address: abi::layout::NIC_TX_RING, limit_bytes: limit }
                }
                _ => StopReason::MachineOutOfMemory,
            })?;
        }
        if g.memory.take_made_rings() {
            self.rings_made(id, g, mem);
        }
        Ok(())
    }

    /// Guest `id`'s ring pages were just made: its port learns their
    /// frames (TX's first: the TX ring's pages come first in its layout,
    /// and both rings are the same size) before the guest runs on.
    fn rings_made(&self, id: usize, g: &Guest, mem: &P::Mem<'_>) {
        let frames = g.memory.ring_frames(mem);
        let (tx, rx) = frames.split_at(frames.len() / 2);
        self.net.rings_made(id, tx, rx);
    }

    /// A console line about guest `id` (its own, `NAME| ...`, or the
    /// hypervisor's, `[hv] guest NAME ...`): to the console, and to the
    /// control clients in `watched` (a bit each).
    fn console_out(&self, id: usize, watched: u32, line: &str) {
        self.platform.console_line(line);
        if watched != 0 {
            let name = &self.status(id).name;
            // Its own lines lose the console's prefix; the hypervisor's keep theirs.
            let own = line.strip_prefix(name.as_str()).and_then(|l| l.strip_prefix("| ")).unwrap_or(line);
            for (c, w) in self.watch.lock().iter_mut().enumerate() {
                if watched & (1 << c) != 0 {
                    w.console(name, own);
                }
            }
        }
    }

    /// Ends guest `id` on CPU `me`: out of the scheduler and the network,
    /// reported, freed. `how` is its exit code, or why it was stopped.
    fn finish(&self, me: usize, id: usize, mut g: Box<Guest>, how: Result<i32, StopReason>) {
        self.scheds[me].lock().remove(id);
        self.net.disconnect(id);
        let watched = self.status(id).watched.load(Ordering::Relaxed);
        let out = |l: &str| self.console_out(id, watched, l);
        g.flush_console(&mut |l| out(l));
        let mut mem = self.platform.mem();
        match &how {
            Ok(code) => out(&alloc::format!("[hv] guest {} exited with code {code}", g.name)),
            Err(why) => {
                out(&alloc::format!("[hv] guest {} stopped: {why}", g.name));
                for line in g.crash_report(&mut mem) {
                    out(&alloc::format!("[hv] guest {} {line}", g.name));
                }
            }
        }
        let state = if how.is_ok() { GuestState::Exited } else { GuestState::Stopped };
        let mut stats = self.guest_stats(&g, state, self.net.port_stats(id));
        (stats.exit_code, stats.stop_reason) = (how.as_ref().ok().copied(), how.as_ref().err().cloned());
        self.platform.console_line(&json_line(&stats));
        let event = abi::control::GuestEvent {
            event: abi::control::EventKind::Ended,
            guest: g.name.clone(),
            state,
            exit_code: stats.exit_code,
            stop_reason: stats.stop_reason,
        };
        // Recorded before it is queued: a `wait` that finds no end yet is
        // registered under the same lock this takes, so it is answered
        // either way.
        let status = self.status(id);
        let event = status.end.call_once(|| event);
        // Nothing below looks the id up again (`status` is held, the rest
        // is the guest's own): its room may be given to another guest from
        // now on. Before its end is queued, so that a client told of the
        // end (the shim, which then removes the guest) always finds it
        // removable.
        self.ended.lock().push(id);
        for (c, w) in self.watch.lock().iter_mut().enumerate() {
            w.ended(id, event, watched & (1 << c) != 0);
        }
        match how {
            Ok(_) => self.exited.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stopped.fetch_add(1, Ordering::Relaxed),
        };
        if status.state.swap(if how.is_ok() { EXITED } else { STOPPED }, Ordering::AcqRel) == PAUSED {
            self.paused.fetch_sub(1, Ordering::AcqRel);
        }
        self.platform.release_tables(me, g.memory.space.root());
        g.destroy(&mut mem);
        drop(mem);
        self.live.fetch_sub(1, Ordering::Release);
        self.drop_clone_jobs(id, &status.name);
    }
}
