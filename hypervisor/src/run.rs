//! The run loop: load the bundle's images, start the manifest's guests and
//! schedule them on every CPU until none is left.
//!
//! Each CPU has its own scheduler (weighted fair share with caps, see
//! `hypervisor::sched`) and runs the guests in it, preempted by its own
//! APIC timer. A CPU with nothing to run takes a runnable guest from the
//! busiest other CPU, and otherwise halts until its next timer.
//!
//! Console lines (documented in README.md): `[hv] image NAME rejected:
//! REASON`, `[hv] guest NAME started ...`, `[hv] guest NAME exited with
//! code N`, `[hv] guest NAME stopped: REASON`, `[hv] guest NAME not started:
//! REASON`, guests' own output as `NAME| TEXT`, and one JSON accounting line
//! per guest when it ends (and for every guest when `stats` is typed).

use crate::arch::x86_64::paging::{Mem, free_frames, phys_to_virt, total_frames};
use crate::arch::x86_64::{apic, cpu, entry, serial};
use crate::println;
use crate::vnic::{self, Net, Port};
use abi::bundle::{Bundle, FLAG_EXIT_WHEN_IDLE};
use abi::control::Response;
use abi::report::{GuestState, GuestStats, MachineStats};
use abi::stop::StopReason;
use abi::time::{TimeInfo, events};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use hermit_entry::boot_info::{BootInfo, HardwareInfo, LoadInfo, PlatformInfo, RawBootInfo};
use hypervisor::control::json_line;
use hypervisor::guest::{Guest, LoadedImage, Step};
use hypervisor::image::Image;
use hypervisor::mm::PhysMem;
use hypervisor::sched::{Scheduler, Stop};
use spin::{Mutex, Once};

const _: () = assert!(core::mem::size_of::<RawBootInfo>() as u64 <= abi::layout::START_INFO_OFFSET);

/// An idle CPU wakes at least this often to look for work and for the end.
const IDLE_TICK_NS: u64 = 10_000_000;
/// TSC ticks an application processor halts between looks for the guests
/// (a few ms at any clock rate).
const AP_WAIT_TSC: u64 = 10_000_000;
/// Guest entries with more instances than this get progress lines instead
/// of one line per guest.
const QUIET_ABOVE: u32 = 100;
/// A guest is not started unless the hypervisor's heap keeps this much free
/// (its records, the switch, the schedulers grow with every guest).
const HEAP_HEADROOM: usize = 1 << 20;
/// How often an idle CPU 0 polls the uplink for frames from the host.
const UPLINK_POLL_NS: u64 = 500_000;
/// ... for this long after the host last sent a frame; then every
/// IDLE_TICK_NS (the first frame after a quiet second waits up to that).
const UPLINK_ACTIVE_NS: u64 = 1_000_000_000;

fn sizes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

/// What all CPUs share.
///
/// The per-guest tables have room for every guest id there will be (those
/// of the bundle, and `SPARE_GUESTS` more with a control channel), so that
/// guests created while others run never move them; ids below `count` are
/// in use.
struct Host {
    kernel_root: u64,
    /// What guests' tables map of the hypervisor: `kernel_root`'s upper
    /// half, or with page-table isolation `paging::isolated_upper`.
    guest_upper: u64,
    time: TimeInfo,
    time_page: u64,
    cpus: usize,
    /// Guests by id; `None` while a CPU runs it (or after it ended).
    guests: Mutex<Vec<Option<Box<Guest>>>>,
    /// One scheduler per CPU.
    scheds: Vec<Mutex<Scheduler>>,
    /// The CPU whose scheduler holds each guest.
    home: Vec<AtomicUsize>,
    /// Each guest's event page frame (for raising events from any CPU).
    event_frames: Vec<AtomicU64>,
    net: Net,
    /// Guests not yet ended.
    live: AtomicUsize,
    exited: AtomicU32,
    stopped: AtomicU32,
    /// Time each CPU spent halted with nothing to run.
    idle_ns: Vec<AtomicU64>,
    /// What the control channel reports of every guest, by id, whichever
    /// CPU has it (see `hypervisor::control`).
    board: Vec<Once<Board>>,
    /// Guest ids handed out.
    count: AtomicUsize,
    /// Whether QEMU gave us a control channel (COM2).
    control: bool,
    /// When the last control byte arrived.
    control_rx_ns: AtomicU64,
    /// Keep running with no guest left (a control channel may start more).
    keep_running: bool,
    /// Set once the boot guests are created; the other CPUs wait for it.
    ready: core::sync::atomic::AtomicBool,
    /// Images by index: the bundle's, then those sent on the control channel.
    images: Mutex<Vec<(String, Result<LoadedImage, String>)>>,
    creating: Mutex<Creating>,
}

/// A guest as the control channel sees it.
struct Board {
    name: String,
    tenant: Option<u32>,
    /// [`STATES`] index.
    state: core::sync::atomic::AtomicU8,
    cpu_ns: AtomicU64,
    memory_bytes: AtomicU64,
    /// Set by `stop NAME`; the CPU that next takes the guest ends it.
    kill: core::sync::atomic::AtomicBool,
}

const STATES: [GuestState; 4] = [GuestState::Waiting, GuestState::Running, GuestState::Exited, GuestState::Stopped];
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const EXITED: u8 = 2;
const STOPPED: u8 = 3;

static HOST: Once<Host> = Once::new();

impl Host {
    fn now(&self) -> u64 {
        self.time.ns(cpu::rdtsc())
    }

    /// Whether control bytes are arriving (CPU 0 then looks every
    /// [`CONTROL_POLL_NS`], and runs guests for short slices).
    fn control_flowing(&self, now: u64) -> bool {
        self.control && now.saturating_sub(self.control_rx_ns.load(Ordering::Relaxed)) < CONTROL_FLOWING_NS
    }

    /// Guest `id`'s board (set before the guest can be scheduled).
    fn board(&self, id: usize) -> &Board {
        self.board[id].get().expect("a created guest has a board")
    }

    /// The id of the guest called `name`.
    fn find(&self, name: &str) -> Option<usize> {
        self.boards().find(|(_, b)| b.name == name).map(|(id, _)| id)
    }

    /// The boards of every guest created so far, with their ids.
    fn boards(&self) -> impl Iterator<Item = (usize, &Board)> {
        self.board[..self.count.load(Ordering::Acquire)].iter().enumerate().filter_map(|(id, b)| Some((id, b.get()?)))
    }

    fn busiest_other(&self, me: usize) -> Option<(usize, usize)> {
        (0..self.scheds.len()).filter(|&c| c != me).map(|c| (c, self.scheds[c].lock().runnable_len())).max_by_key(|&(_, n)| n)
    }

    /// Takes a runnable guest from the busiest other CPU if it has at
    /// least `margin` more waiting than this one; returns whether one moved.
    /// (An idle CPU takes one with margin 1; the periodic check uses 2, so
    /// that one waiting guest does not bounce between two busy CPUs.)
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

    /// Wakes guest `id` if it is blocked (an event arrived for it), and
    /// interrupts its CPU if that is another one.
    fn wake(&self, id: usize, me: usize) {
        let home = self.home[id].load(Ordering::Acquire);
        // A guest that is moving between CPUs was runnable: nothing to wake.
        if self.scheds[home].lock().wake(id) && home != me {
            apic::wake_cpu(home);
        }
    }

    /// Forwards the frames guest `id` (named `name`) queued; disconnects
    /// its vNIC if it lied in its ring.
    fn drain(&self, id: usize, name: &str, me: usize) {
        let now = self.now();
        if let Err(why) = self.net.drain(id, now, &mut |g, _| self.wake(g, me)) {
            self.net.disconnect(id);
            println!("[hv] guest {name} vNIC disconnected: {why}");
        }
    }

    /// Runs guest `id` (taken out of the table) for at most `slice_ns`.
    fn run_one(&self, id: usize, g: &mut Guest, cpu_index: usize, slice_ns: u64, next_timer: Option<u64>) -> (Step, u64) {
        let mut mem = Mem;
        let start = cpu::rdtsc();
        // Preempt at the end of the slice, or earlier if a sleeper is due.
        let mut deadline = start.saturating_add(self.time.tsc(slice_ns) - self.time.tsc_base);
        if let Some(t) = next_timer {
            deadline = deadline.min(self.time.tsc(t));
        }
        apic::arm(deadline);
        g.wake_from_block(&mut mem);
        if g.stats.first_entry_ns == 0 {
            g.stats.first_entry_ns = self.time.ns(start).max(1);
        }
        // Without isolation the hypervisor runs on the guest's tables
        // between exits (they map its half too); with it, `entry::run`
        // switches to them last and back first.
        let isolated = entry::isolated();
        let root = g.memory.space.root();
        if !isolated {
            // SAFETY: the guest's PML4 maps the hypervisor's half like every
            // other address space (copied from the kernel root at creation).
            unsafe { cpu::write_cr3(root) };
        }
        let step = loop {
            entry::run(&mut g.regs, &mut g.fpu, g.via_sysret, root);
            g.now_ns = self.time.ns(cpu::rdtsc());
            let step = g.handle_exit(&mut mem, &mut |l| println!("{l}"));
            match step {
                Step::Resume => {}
                // With isolation every entry loads the guest's root, which
                // flushes the TLB anyway.
                Step::FlushTlb => {
                    if !isolated {
                        // SAFETY: reloading the guest's own root (the one it
                        // runs on) only flushes the TLB after it gave pages back.
                        unsafe { cpu::write_cr3(root) }
                    }
                }
                Step::NetKick => self.drain(id, &g.name, cpu_index),
                step => break step,
            }
        };
        // Whatever it queued goes out now that it stops running.
        self.drain(id, &g.name, cpu_index);
        if !isolated {
            // SAFETY: back to the hypervisor's own tables: the guest may move
            // to another CPU and end there, freeing the tables it ran on.
            unsafe { cpu::write_cr3(self.kernel_root) };
        }
        let ran = self.time.ns(cpu::rdtsc()) - self.time.ns(start);
        g.stats.cpu_ns += ran;
        if g.stats.cpu_ns_per_cpu.len() <= cpu_index {
            g.stats.cpu_ns_per_cpu.resize(cpu_index + 1, 0);
        }
        g.stats.cpu_ns_per_cpu[cpu_index] += ran;
        (step, ran)
    }

    /// Reports and frees a guest that ended.
    fn finish(&self, id: usize, mut g: Box<Guest>, how: Result<i32, StopReason>) {
        g.flush_console(&mut |l| println!("{l}"));
        match &how {
            Ok(code) => println!("[hv] guest {} exited with code {code}", g.name),
            Err(why) => {
                println!("[hv] guest {} stopped: {why}", g.name);
                for line in g.crash_report(&mut Mem) {
                    println!("[hv] guest {} {line}", g.name);
                }
            }
        }
        let state = if how.is_ok() { GuestState::Exited } else { GuestState::Stopped };
        let mut stats = guest_stats(&g, state, self.net.port(id));
        (stats.exit_code, stats.stop_reason) = (how.as_ref().ok().copied(), how.as_ref().err().cloned());
        println!("{}", json_line(&stats));
        match how {
            Ok(_) => self.exited.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stopped.fetch_add(1, Ordering::Relaxed),
        };
        self.board(id).state.store(if how.is_ok() { EXITED } else { STOPPED }, Ordering::Relaxed);
        g.destroy(&mut Mem);
        self.live.fetch_sub(1, Ordering::Release);
    }

    /// The scheduling loop of CPU `me`; returns when no guest is left.
    fn cpu_loop(&self, me: usize) {
        let mut timed_out = Vec::new();
        let mut console_in = String::new();
        let mut control_in = hypervisor::control::Session::default();
        let mut last_balance = 0;
        loop {
            if me == 0 {
                self.poll_console(&mut console_in);
                if self.control {
                    self.poll_control(&mut control_in);
                }
                let now = self.now();
                self.net.poll_uplink(now, &mut |g| self.wake(g, me));
            }
            if self.live.load(Ordering::Acquire) == 0 && !self.keep_running {
                return;
            }
            let now = self.now();
            if now.saturating_sub(last_balance) >= IDLE_TICK_NS {
                last_balance = now;
                self.balance(me, 2);
            }
            let (pick, next_timer) = {
                let mut s = self.scheds[me].lock();
                s.expire(now, |id| timed_out.push(id));
                (s.pick(now), s.next_timer())
            };
            for id in timed_out.drain(..) {
                vnic::raise(self.event_frames[id].load(Ordering::Acquire), events::TIMER);
            }
            let Some((id, slice)) = pick else {
                if self.balance(me, 1) {
                    continue;
                }
                // Nothing runnable here: halt until the next deadline, or a
                // tick to look for work and for the end.
                // CPU 0 polls the uplink, so it looks more often when there is one.
                // and often only while the host has been sending: an idle
                // machine wakes 100 times a second, not 2000.
                let busy_uplink =
                    self.net.uplink.is_some() && now.saturating_sub(self.net.uplink_rx_ns.load(Ordering::Relaxed)) < UPLINK_ACTIVE_NS;
                let tick = match me {
                    0 if self.control_flowing(now) => CONTROL_POLL_NS,
                    0 if busy_uplink => UPLINK_POLL_NS,
                    _ => IDLE_TICK_NS,
                };
                let wake = next_timer.unwrap_or(u64::MAX).min(now + tick);
                apic::arm(self.time.tsc(wake));
                let halted = cpu::rdtsc();
                cpu::idle();
                self.idle_ns[me].fetch_add(self.time.ns(cpu::rdtsc()) - self.time.ns(halted), Ordering::Relaxed);
                continue;
            };
            let Some(mut g) = self.guests.lock()[id].take() else { continue };
            let board = self.board(id);
            if board.kill.load(Ordering::Acquire) {
                self.scheds[me].lock().remove(id);
                self.net.disconnect(id);
                self.finish(id, g, Err(StopReason::Operator));
                continue;
            }
            board.state.store(RUNNING, Ordering::Relaxed);
            let slice = if me == 0 && self.control_flowing(now) { slice.min(CONTROL_SLICE_NS) } else { slice };
            let (step, ran) = self.run_one(id, &mut g, me, slice, next_timer);
            board.cpu_ns.store(g.stats.cpu_ns, Ordering::Relaxed);
            board.memory_bytes.store(g.memory.charged_bytes(), Ordering::Relaxed);
            board.state.store(WAITING, Ordering::Relaxed);
            let now = self.now();
            let stop = match step {
                Step::Resume | Step::Preempted | Step::NetKick | Step::FlushTlb => Stop::Preempted,
                Step::Yield => Stop::Yielded,
                Step::Block { deadline } => Stop::Blocked { deadline },
                Step::Exited(code) => {
                    self.scheds[me].lock().remove(id);
                    self.net.disconnect(id);
                    self.finish(id, g, Ok(code));
                    continue;
                }
                Step::Stopped(why) => {
                    self.scheds[me].lock().remove(id);
                    self.net.disconnect(id);
                    self.finish(id, g, Err(why));
                    continue;
                }
            };
            self.guests.lock()[id] = Some(g);
            self.scheds[me].lock().put(id, now, ran, stop);
            // An event raised by another CPU while this guest was on its way
            // to sleep found it not yet blocked and could not wake it: the
            // raiser sets the bit before it looks, so look again now. The
            // same for `ctl stop`, which sets the kill flag before it wakes.
            if matches!(stop, Stop::Blocked { .. })
                && (vnic::pending(self.event_frames[id].load(Ordering::Acquire)) != 0 || board.kill.load(Ordering::Acquire))
            {
                self.scheds[me].lock().wake(id);
            }
        }
    }

    /// Answers the requests waiting on the control channel
    /// (`hypervisor::control::Session` reads and bounds them, and never
    /// waits for a byte). While bytes are arriving CPU 0 looks again soon
    /// ([`Host::control_flowing`]), which is what keeps uploads fast with
    /// the UART's 16-byte FIFO and no interrupt.
    fn poll_control(&self, session: &mut hypervisor::control::Session) {
        let now = self.now();
        let read = session.poll(self, now, &mut serial::control_read, &mut |a| serial::control_write_line(a));
        // Only bytes that arrive count: a client that went quiet half-way
        // gets no faster polling, just its timeout.
        if read > 0 {
            self.control_rx_ns.store(now, Ordering::Relaxed);
        }
        if self.net.capturing.load(Ordering::Acquire) {
            self.drain_capture();
        }
    }

    /// Hands the captured frames to the control channel, and ends the
    /// capture when it has its count or its time is up.
    fn drain_capture(&self) {
        loop {
            let next = {
                let mut c = self.net.capture.lock();
                match c.frames.pop_front() {
                    Some(f) => Ok(f),
                    None if c.taken >= c.max || self.now() >= c.until_ns => {
                        self.net.capturing.store(false, Ordering::Release);
                        let end = json_line(&Response::Captured { captured: c.taken.into(), dropped: c.dropped });
                        *c = Default::default();
                        Err(Some(end))
                    }
                    None => Err(None),
                }
            };
            match next {
                Ok((ns, frame)) => {
                    let wall = self.time.boot_wall_ns.saturating_add(ns);
                    serial::control_write_line(&json_line(&Response::frame(wall, &frame)));
                }
                Err(end) => {
                    if let Some(end) = end {
                        serial::control_write_line(&end);
                    }
                    return;
                }
            }
        }
    }

    /// The record of the whole machine: memory (frames, the hypervisor's
    /// heap) and how long each CPU has been idle.
    fn machine_stats(&self) -> MachineStats {
        let (heap, heap_used) = crate::heap_usage();
        MachineStats {
            uptime_ns: self.now(),
            live: self.live.load(Ordering::Relaxed) as u64,
            exited: self.exited.load(Ordering::Relaxed) as u64,
            stopped: self.stopped.load(Ordering::Relaxed) as u64,
            total_bytes: total_frames() as u64 * 4096,
            free_bytes: free_frames() as u64 * 4096,
            hv_heap_bytes: heap as u64,
            hv_heap_used_bytes: heap_used as u64,
            cpu_idle_ns: self.idle_ns.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        }
    }

    /// The machine's record as a console line.
    fn machine_line(&self) -> String {
        json_line(&self.machine_stats())
    }

    /// Guest `id`'s accounting record if it is waiting in the table (not on
    /// a CPU, not ended). The table's lock is held for this one guest only,
    /// so a listing of thousands does not keep every CPU from its guests.
    fn waiting_stats(&self, id: usize) -> Option<GuestStats> {
        let guests = self.guests.lock();
        Some(guest_stats(guests.get(id)?.as_ref()?, GuestState::Running, self.net.port(id)))
    }

    /// Reads console input: `stats` prints every waiting guest's accounting
    /// line and the machine line, `machine` only the machine line.
    fn poll_console(&self, line: &mut String) {
        while let Some(b) = serial::try_read() {
            match b {
                b'\r' | b'\n' => {
                    if line.trim() == "stats" {
                        for stats in (0..self.count.load(Ordering::Acquire)).filter_map(|id| self.waiting_stats(id)) {
                            println!("{}", json_line(&stats));
                        }
                        println!("{}", self.machine_line());
                    } else if line.trim() == "machine" {
                        println!("{}", self.machine_line());
                    }
                    line.clear();
                }
                _ if line.len() < 64 => line.push(b as char),
                _ => {}
            }
        }
    }
}

/// What a guest has cost ([`GuestStats`] says what each field counts).
fn guest_stats(g: &Guest, state: GuestState, port: Option<&Port>) -> GuestStats {
    let s = &g.stats;
    let m = &g.memory;
    let hv_bytes = g.record_bytes()
        + (core::mem::size_of::<Option<Box<Guest>>>()
            + core::mem::size_of::<AtomicUsize>()
            + core::mem::size_of::<u64>()
            + core::mem::size_of::<Option<Port>>()
            + Scheduler::BYTES_PER_GUEST) as u64
        + port.map_or(0, |p| p.record_bytes() + hypervisor::net::switch::Switch::BYTES_PER_PORT as u64);
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
        ring_bytes: port.map_or(0, Port::ring_bytes),
        table_bytes: m.table_bytes(),
        shared_bytes: m.shared_bytes(),
        hv_bytes,
        console_dropped: g.console_limit.refused,
        kicks_ignored: g.kick_limit.refused,
        nic_limited: port.map_or(0, Port::limited),
        ring_errors: port.map_or(0, |p| p.ring_errors.load(Ordering::Relaxed)),
        uplink_dropped: port.map_or(0, Port::uplink_dropped),
        spoofed_frames: port.map_or(0, |p| p.spoofed.load(Ordering::Relaxed)),
        created_ns: s.created_ns,
        create_ns: s.create_ns,
        first_entry_ns: s.first_entry_ns,
        exit_code: None,
        stop_reason: None,
    }
}

/// An application processor: waits for the boot CPU to create the guests,
/// then schedules until none is left, then halts.
pub fn ap_entry(me: usize) -> ! {
    // Halt (not spin) while the boot CPU creates the guests: under
    // emulation a spinning CPU takes a host core from the one working.
    let host = loop {
        if let Some(h) = HOST.get().filter(|h| h.ready.load(Ordering::Acquire)) {
            break h;
        }
        apic::arm(cpu::rdtsc().saturating_add(AP_WAIT_TSC));
        cpu::idle();
    };
    // Decided by the boot CPU before `ready`.
    if entry::isolated() {
        cpu::disable_global_pages();
    }
    host.cpu_loop(me);
    cpu::halt_forever()
}

/// The boot CPU: loads images, creates guests, schedules with the others,
/// and reports the end.
pub fn run(kernel_root: u64, time: TimeInfo, cpus: usize, bundle: &[u8]) -> ! {
    let mut mem = Mem;
    let bundle = match Bundle::parse(bundle) {
        Ok(b) => b,
        Err(e) => panic!("bad bundle: {e}"),
    };
    // The time page: one read-only frame mapped into every guest.
    let time_page = mem.alloc().expect("a frame for the time page");
    mem.write(time_page, 0, &time.to_bytes());

    let mut images: Vec<(String, Result<LoadedImage, String>)> = Vec::new();
    for img in bundle.images() {
        images.push((img.name.into(), load_image(img.name, img.data)));
    }

    let boot_guests: usize = bundle.guests().map(|g| g.count as usize).sum();
    let control = serial::init_control();
    // Room for guests started later through the control channel.
    let cap = boot_guests + if control { SPARE_GUESTS } else { 0 };
    let mut net = Net::new(cap);
    let free_before_uplink = free_frames();
    match crate::uplink::Uplink::probe(kernel_root) {
        Ok(Some(up)) => {
            // The host reaches the first tenant (tenant 0) through it.
            if let Ok(port) = net.switch.lock().add_uplink(0) {
                println!(
                    "[hv] uplink: virtio-net {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, tenant 0, {} KiB of queues",
                    up.mac[0],
                    up.mac[1],
                    up.mac[2],
                    up.mac[3],
                    up.mac[4],
                    up.mac[5],
                    (free_before_uplink - free_frames()) * 4
                );
                net.uplink = Some((port, Mutex::new(up)));
            }
        }
        Ok(None) => {}
        Err(why) => println!("[hv] uplink: {why}; guests can reach each other but not the host"),
    }
    let exit_when_idle = bundle.flags & FLAG_EXIT_WHEN_IDLE != 0;
    let spec = cpu::speculation();
    let forced = bundle.flags & abi::bundle::FLAG_FORCE_MITIGATIONS != 0;
    let verw = (spec.mds && spec.md_clear) || forced;
    entry::clear_buffers_on_entry(verw);
    // Page-table isolation where the CPU reads supervisor pages from ring
    // 3 speculatively (or when forced): guests' tables map the image and
    // the APIC, not the direct map.
    let guest_upper = match (spec.meltdown || forced).then(|| crate::arch::x86_64::paging::isolated_upper(kernel_root)) {
        Some(Some(upper)) => {
            cpu::disable_global_pages();
            entry::isolate(kernel_root);
            upper
        }
        Some(None) => panic!("no memory for the isolated page tables"),
        None => kernel_root,
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    let how = |needed: bool, on: bool| match (needed, on) {
        (true, true) => "yes",
        (false, true) => "yes (forced)",
        (_, false) => "no",
    };
    println!(
        "[hv] speculation: meltdown {}, mds {}{}; page-table isolation: {}; buffers cleared on every guest entry: {}",
        yes(spec.meltdown),
        yes(spec.mds),
        if spec.mds && !spec.md_clear { " (NOT mitigated: no MD_CLEAR microcode)" } else { "" },
        how(spec.meltdown, entry::isolated()),
        how(spec.mds, verw)
    );
    let host = HOST.call_once(|| Host {
        kernel_root,
        guest_upper,
        time,
        time_page,
        cpus,
        guests: Mutex::new((0..cap).map(|_| None).collect()),
        scheds: (0..cpus).map(|_| Mutex::new(Scheduler::new())).collect(),
        home: (0..cap).map(|_| AtomicUsize::new(0)).collect(),
        event_frames: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        net,
        live: AtomicUsize::new(0),
        exited: AtomicU32::new(0),
        stopped: AtomicU32::new(0),
        idle_ns: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
        board: (0..cap).map(|_| Once::new()).collect(),
        count: AtomicUsize::new(0),
        control,
        control_rx_ns: AtomicU64::new(0),
        keep_running: control && !exit_when_idle,
        ready: core::sync::atomic::AtomicBool::new(false),
        images: Mutex::new(images),
        creating: Mutex::new(Creating::default()),
    });

    let mut not_started = 0u32;
    let (mut started, mut create_ns) = (0u64, 0u64);
    for entry in bundle.guests() {
        let mut nic_range: (Option<[u8; 4]>, Option<[u8; 4]>) = (None, None);
        let manifest_args: Vec<&str> = entry.args().collect();
        let st = entry.settings;
        for i in 0..entry.count {
            let name = format!("{}-{i}", entry.name);
            match host.create_guest(&name, entry.image as usize, &st, &manifest_args) {
                Ok(c) => {
                    create_ns += c.create_ns;
                    started += 1;
                    if let Some(ip) = c.ip {
                        nic_range.0.get_or_insert(ip);
                        nic_range.1 = Some(ip);
                    }
                    // A line per guest, except in the middle of a big entry:
                    // there, progress every 1000 and a summary at the end.
                    if entry.count <= QUIET_ABOVE || i < 3 {
                        println!("[hv] guest {name} started ({})", c.describe);
                    } else if (i + 1) % 1000 == 0 {
                        println!("[hv] {}: {}/{} guests created", entry.name, i + 1, entry.count);
                    }
                }
                Err(e) => {
                    println!("[hv] guest {name} not started: {e}");
                    not_started += 1;
                }
            }
        }
        if entry.count > QUIET_ABOVE {
            let last = nic_range.1.unwrap_or([0; 4]);
            match nic_range.0 {
                Some(a) => println!(
                    "[hv] guests {0}-0..{0}-{1} created (ips {2}.{3}.{4}.{5}..{6}.{7}.{8}.{9}, tenant {10})",
                    entry.name,
                    entry.count - 1,
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    last[0],
                    last[1],
                    last[2],
                    last[3],
                    st.tenant
                ),
                None => println!("[hv] guests {0}-0..{0}-{1} created", entry.name, entry.count - 1),
            }
        }
    }
    if let Some(each_us) = (create_ns / 1000).checked_div(started) {
        println!("[hv] created {started} guests in {} ms of hypervisor time ({each_us} us each)", create_ns / 1_000_000);
    }
    // Where the machine stands with every guest created (the hostile
    // tests compare the hypervisor heap at the end with this).
    println!("{}", host.machine_line());
    host.ready.store(true, Ordering::Release);
    host.cpu_loop(0);

    for (_, img) in core::mem::take(&mut *host.images.lock()) {
        if let Ok(img) = img {
            img.unload(&mut mem);
        }
    }
    mem.free(time_page);
    if host.guest_upper != kernel_root {
        crate::arch::x86_64::paging::free_isolated_upper(host.guest_upper);
    }
    println!("{}", host.machine_line());
    println!(
        "[hv] no guests left: {} exited, {} stopped, {not_started} not started; {} KiB free",
        host.exited.load(Ordering::Relaxed),
        host.stopped.load(Ordering::Relaxed),
        free_frames() as u64 * 4
    );
    if exit_when_idle {
        cpu::debug_exit(abi::debug_exit::SUCCESS);
    }
    println!("[hv] idle; halting");
    cpu::halt_forever()
}

/// Validates and loads one image, saying so on the console.
///
/// Parsing may use what the hypervisor's heap can spare beside the guests'
/// headroom, and no more: a gzip bomb (from the bundle or an upload) is
/// refused by its declared size before anything that size is allocated.
fn load_image(name: &str, data: &[u8]) -> Result<LoadedImage, String> {
    let (heap, heap_used) = crate::heap_usage();
    let budget = heap.saturating_sub(heap_used).saturating_sub(2 * HEAP_HEADROOM);
    let loaded = match Image::parse_within(data, budget) {
        Ok(parsed) => LoadedImage::load(&mut Mem, name, &parsed).ok_or_else(|| String::from("the machine is out of memory")),
        Err(e) => Err(format!("{e}")),
    };
    match &loaded {
        Ok(l) => println!(
            "[hv] image {name} loaded: entry {:#x}, {} shared, {} private per guest",
            l.entry,
            sizes(l.shared_bytes()),
            sizes(l.private_bytes())
        ),
        Err(why) => println!("[hv] image {name} rejected: {why}"),
    }
    loaded
}

/// How often an idle CPU 0 looks at the control channel while bytes are
/// arriving (the UART holds 16 and does not interrupt).
const CONTROL_POLL_NS: u64 = 50_000;
/// The longest CPU 0 runs a guest while control bytes are arriving.
const CONTROL_SLICE_NS: u64 = 200_000;
/// Bytes count as arriving for this long after the last one.
const CONTROL_FLOWING_NS: u64 = 2_000_000;
/// Most images loaded at once (the bundle's and uploads).
const MAX_IMAGES: usize = 256;
/// Room for guests started after boot through the control channel.
const SPARE_GUESTS: usize = 1024;

/// What creating guests needs to keep between them.
#[derive(Default)]
struct Creating {
    /// Guests with a vNIC so far, per tenant (see abi::guest_ipv4).
    next_host: Vec<u32>,
}

/// A guest just created.
struct Created {
    create_ns: u64,
    ip: Option<[u8; 4]>,
    /// For the `started` line: image, memory, address, tenant.
    describe: String,
}

impl Host {
    /// Creates guest `name` from image `image` and makes it runnable (at
    /// boot, and for `start` on the control channel).
    fn create_guest(&self, name: &str, image: usize, st: &abi::bundle::Settings, args: &[&str]) -> Result<Created, String> {
        let mut mem = Mem;
        let mut creating = self.creating.lock();
        let images = self.images.lock();
        let Some((_, img)) = images.get(image) else { return Err(format!("there is no image {image}")) };
        let img = img.as_ref().map_err(|_| String::from("its image was rejected"))?;
        let args: Vec<&str> = if args.is_empty() { img.app_args.iter().map(String::as_str).collect() } else { args.to_vec() };
        let (heap, heap_used) = crate::heap_usage();
        if heap - heap_used < HEAP_HEADROOM {
            return Err(format!("the hypervisor's heap is full ({} used)", sizes(heap_used as u64)));
        }
        let id = self.count.load(Ordering::Relaxed);
        if id >= self.board.len() {
            return Err(format!("no room for more guests ({} at most)", self.board.len()));
        }
        let created_ns = self.now();
        let nic = if st.tenant == abi::bundle::TENANT_NONE {
            None
        } else {
            // Tenant numbers come from the bundle and the control channel:
            // bounded before anything is sized by them.
            if st.tenant >= abi::MAX_TENANTS {
                return Err(format!("tenant {} is not below {}", st.tenant, abi::MAX_TENANTS));
            }
            let t = st.tenant as usize;
            if creating.next_host.len() <= t {
                creating.next_host.resize(t + 1, 0);
            }
            let n = creating.next_host[t];
            if n >= abi::MAX_TENANT_HOSTS {
                return Err(format!("tenant {} has no address left ({} guests with a vNIC at most)", st.tenant, abi::MAX_TENANT_HOSTS));
            }
            creating.next_host[t] += 1;
            Some(abi::NicInfo {
                magic: abi::NIC_MAGIC,
                prefix: abi::GUEST_PREFIX,
                mac: [0x02, (id >> 24) as u8, (id >> 16) as u8, (id >> 8) as u8, id as u8, st.tenant as u8, 0, 0],
                ipv4: abi::guest_ipv4(st.tenant, n),
                gateway: abi::gateway_ipv4(st.tenant),
                ring_slots: st.ring_slots,
                reserved: 0,
            })
        };
        let time = &self.time;
        let mut g = Guest::create(&mut mem, self.guest_upper, self.time_page, img, name, &args, st.memory, |m, page| {
            write_boot_info(page, img, st.memory, time);
            if let Some(info) = &nic {
                m.write(page, abi::layout::NIC_INFO_OFFSET as usize, &info.to_bytes());
            }
        })
        .map_err(|e| format!("{e}"))?;
        let port = match &nic {
            Some(info) => match attach_nic(&mut g, &self.net, st, info, id) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Every frame it got so far (ring pages too) goes back.
                    g.destroy(&mut mem);
                    return Err(e);
                }
            },
            None => None,
        };
        let events = g.memory.space.translate(&mem, abi::layout::EVENT_PAGE).map(|(pa, _)| pa).expect("create maps the event page");
        g.stats.created_ns = created_ns;
        g.console_limit = hypervisor::limit::TokenBucket::new(st.limits.console_bytes);
        g.kick_limit = hypervisor::limit::TokenBucket::new(st.limits.notifications);
        g.stats.create_ns = self.now() - created_ns;
        let describe = match &nic {
            Some(n) => format!(
                "image {}, memory {}, ip {}.{}.{}.{}, tenant {}",
                img.name,
                sizes(st.memory),
                n.ipv4[0],
                n.ipv4[1],
                n.ipv4[2],
                n.ipv4[3],
                st.tenant
            ),
            None => format!("image {}, memory {}", img.name, sizes(st.memory)),
        };
        let created = Created { create_ns: g.stats.create_ns, ip: nic.as_ref().map(|n| n.ipv4), describe };
        // Publish it: tables first, the scheduler last.
        self.guests.lock()[id] = Some(Box::new(g));
        if let Some(p) = port {
            self.net.ports[id].call_once(|| p);
        }
        self.event_frames[id].store(events, Ordering::Release);
        self.board[id].call_once(|| Board {
            name: name.into(),
            tenant: nic.as_ref().map(|_| st.tenant),
            state: core::sync::atomic::AtomicU8::new(WAITING),
            cpu_ns: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            kill: core::sync::atomic::AtomicBool::new(false),
        });
        self.count.store(id + 1, Ordering::Release);
        self.live.fetch_add(1, Ordering::AcqRel);
        // Spread new guests over the CPUs; balancing evens out the rest.
        let cpu = id % self.cpus;
        self.home[id].store(cpu, Ordering::Release);
        self.scheds[cpu].lock().add(id, st.weight, (st.cap != 0).then_some(st.cap), created_ns);
        if cpu != 0 {
            apic::wake_cpu(cpu);
        }
        Ok(created)
    }
}

/// Gives a new guest its vNIC: ring frames mapped into it (charged to its
/// memory) and a port on the switch.
fn attach_nic(g: &mut Guest, net: &Net, st: &abi::bundle::Settings, info: &abi::NicInfo, id: usize) -> Result<Port, String> {
    let tenant = st.tenant;
    use abi::ring::{slots_bytes, valid_slots};
    use hypervisor::mm::{FRAME_SIZE, paging::Pte};
    let slots = info.ring_slots;
    if !valid_slots(slots) {
        return Err(format!("ring_slots {slots} is not a power of two between {} and {}", abi::ring::SLOTS_MIN, abi::ring::SLOTS_MAX));
    }
    let mut mem = Mem;
    let pages = slots_bytes(slots) / FRAME_SIZE as usize;
    let mut rings: [Vec<u64>; 2] = [Vec::with_capacity(pages), Vec::with_capacity(pages)];
    for (ring, base) in rings.iter_mut().zip([abi::layout::NIC_TX_RING, abi::layout::NIC_RX_RING]) {
        for i in 0..pages {
            let f = mem.alloc().ok_or("the machine is out of memory")?;
            let va = base + i as u64 * FRAME_SIZE;
            g.memory.map_private(&mut mem, va, f, Pte::WRITABLE | Pte::NO_EXECUTE).map_err(|e| {
                mem.free(f);
                format!("vNIC rings: {e}")
            })?;
            ring.push(f);
        }
    }
    let mac = [info.mac[0], info.mac[1], info.mac[2], info.mac[3], info.mac[4], info.mac[5]];
    let port = net.switch.lock().add_port(tenant, mac, info.ipv4).map_err(|e| format!("switch: {e:?}"))?;
    match net.guest_of_slot.get(port.slot()) {
        Some(slot) => slot.store(id, Ordering::Release),
        None => {
            net.switch.lock().remove_port(port);
            return Err("no room for another vNIC".into());
        }
    }
    let events = g.memory.space.translate(&mem, abi::layout::EVENT_PAGE).map(|(pa, _)| pa).ok_or("no event page")?;
    let [tx, rx] = rings;
    Ok(Port::new(port, tenant, slots, &st.limits, tx.into_boxed_slice(), rx.into_boxed_slice(), events))
}

/// Puts hermit-entry's `RawBootInfo` at the start of the guest's start page.
fn write_boot_info(page: u64, image: &LoadedImage, memory: u64, time: &TimeInfo) {
    let boot_time = time::OffsetDateTime::from_unix_timestamp_nanos(time.boot_wall_ns as i128).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: abi::layout::HEAP_START..abi::layout::HEAP_START + memory,
            serial_port_base: None,
            device_tree: None,
        },
        load_info: LoadInfo { kernel_image_addr_range: image.vaddr_range.clone(), tls_info: None },
        platform_info: PlatformInfo::Uhyve {
            has_pci: false,
            // Each guest has one virtual CPU.
            num_cpus: core::num::NonZeroU64::MIN,
            cpu_freq: core::num::NonZeroU32::new((time.tsc_hz / 1000) as u32),
            boot_time,
        },
    };
    let raw = RawBootInfo::from(info);
    // SAFETY: `page` is a fresh frame of the guest's start page, direct-
    // mapped and not yet visible to the guest; RawBootInfo fits before
    // START_INFO_OFFSET (checked at compile time above).
    unsafe { core::ptr::write_unaligned(phys_to_virt(page) as *mut RawBootInfo, raw) };
}

impl hypervisor::control::ControlHost for Host {
    fn upload_room(&self) -> usize {
        let (heap, heap_used) = crate::heap_usage();
        heap.saturating_sub(heap_used).saturating_sub(2 * HEAP_HEADROOM)
    }

    fn image_slot_free(&self) -> bool {
        self.images.lock().len() < MAX_IMAGES
    }

    fn image_names(&self) -> Vec<String> {
        self.images.lock().iter().filter(|(_, i)| i.is_ok()).map(|(n, _)| n.clone()).collect()
    }

    fn add_image(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let img = load_image(name, data)?;
        self.images.lock().push((name.into(), Ok(img)));
        Ok(())
    }

    fn start(&self, name: &str, image: &str, memory: u64, tenant: Option<u32>, args: &[&str]) -> Result<Option<[u8; 4]>, String> {
        if self.find(name).is_some() {
            return Err(format!("a guest named {name} exists already"));
        }
        // A limit the machine could never honour is a mistake (as in a manifest).
        let machine = total_frames() as u64 * 4096;
        if memory > machine {
            return Err(format!("guest {name} not started: memory {} is more than the machine's {}", sizes(memory), sizes(machine)));
        }
        let index =
            self.images.lock().iter().position(|(n, i)| n == image && i.is_ok()).ok_or_else(|| format!("no image {image} (see images)"))?;
        let st = abi::bundle::Settings { memory, tenant: tenant.unwrap_or(abi::bundle::TENANT_NONE), ..Default::default() };
        let c = self.create_guest(name, index, &st, args).map_err(|e| format!("guest {name} not started: {e}"))?;
        println!("[hv] guest {name} started ({})", c.describe);
        Ok(c.ip)
    }

    fn stop(&self, name: &str) -> Result<(), String> {
        let id = self.find(name).ok_or_else(|| format!("no guest {name}"))?;
        if self.board(id).state.load(Ordering::Relaxed) >= EXITED {
            return Err(format!("guest {name} has already ended"));
        }
        self.board(id).kill.store(true, Ordering::Release);
        self.wake(id, 0);
        Ok(())
    }

    fn list(&self, row: &mut dyn FnMut(hypervisor::control::Row<'_>)) {
        let switch = self.net.switch.lock();
        for (id, b) in self.boards() {
            let st = self.net.port(id).and_then(|p| switch.stats(p.switch_port)).unwrap_or_default();
            row(hypervisor::control::Row {
                name: &b.name,
                tenant: b.tenant,
                state: STATES[b.state.load(Ordering::Relaxed) as usize],
                cpu_ns: b.cpu_ns.load(Ordering::Relaxed),
                memory_bytes: b.memory_bytes.load(Ordering::Relaxed),
                // The switch counts what it received from the port (the
                // guest sent) and what it transmitted to it.
                sent_frames: st.rx_frames,
                received_frames: st.tx_frames,
            });
        }
    }

    fn stats(&self) -> (Vec<GuestStats>, MachineStats) {
        ((0..self.count.load(Ordering::Acquire)).filter_map(|id| self.waiting_stats(id)).collect(), self.machine_stats())
    }

    fn capture(&self, what: &str, count: u32, secs: u32) -> Result<(), String> {
        let target = match what.strip_prefix("tenant:") {
            Some(t) => t.parse().ok().map(vnic::CaptureTarget::Tenant),
            None => self.find(what).map(vnic::CaptureTarget::Guest),
        };
        let t = target.ok_or_else(|| format!("no guest or tenant {what}"))?;
        *self.net.capture.lock() = vnic::Capture {
            target: Some(t),
            max: count,
            until_ns: self.now().saturating_add(u64::from(secs) * 1_000_000_000),
            ..Default::default()
        };
        self.net.capturing.store(true, Ordering::Release);
        Ok(())
    }
}
