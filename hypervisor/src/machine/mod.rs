//! The machine: the guest table, one scheduler per CPU, and the loop each
//! CPU runs over them, generic over the [`Platform`] it runs on and the
//! [`Network`] back end (as Tock's `kernel_loop_operation` is generic over
//! its `KernelResources<C: Chip>`), so that the host tests drive it with a
//! fake platform and a scripted clock.
//!
//! Rules:
//! - A guest is in exactly one place: in the table (`guests[id]`, waiting),
//!   or taken out by the one CPU running it, or ended (freed). Its
//!   scheduler entry lives in the scheduler of its home CPU (`home[id]`),
//!   which only that CPU's balancing changes, under both schedulers' locks
//!   in turn.
//! - No lock of the machine is held while another lock is taken, except
//!   in creation, which holds `creating` then `images` while it takes the
//!   table, a scheduler and the network's locks one at a time. The
//!   network is called with no lock of the machine held, and calls back
//!   ([`Machine::wake`]) only into the schedulers.
//! - Any CPU may wake any guest ([`Machine::wake`]): an event is raised in
//!   its event word first and the scheduler asked second, and the CPU that
//!   puts a guest to sleep looks at its event word after the put (the
//!   lost-wake-up rule, see `cpu_loop`).
//! - The per-guest tables have room for every guest there may be at once
//!   (the boot guests, and `SPARE_GUESTS` more with a control channel), so
//!   that guests created while others run never move them. An ended
//!   guest's record (its status: `list`, `wait`) stays until `remove`
//!   forgets it or its id is needed for a new guest (the record that ended
//!   longest ago goes first); then its entries are emptied (`Slot`) and
//!   the id is given again. Whatever still holds an old entry keeps it
//!   alive and sees the old guest; a stale id (a wake-up, a port lookup)
//!   reaches at most the new guest's scheduler entry (a spurious wake-up:
//!   it finds nothing to do), and frames find a guest only through its
//!   switch port, which is never reused.
//!
//! Files: `cpu_loop` (pick, enter, account, wake, balance, idle,
//! migrate), `create` (images, guests, addresses, vNIC attach, the boot
//! guests), `control_host` (the control channel's and the console's
//! requests), `report` (the JSON records and sizes).

mod clone;
mod control_host;
mod cpu_loop;
mod create;
pub mod network;
pub mod platform;
mod report;
mod snapshot;
#[cfg(test)]
mod tests;
mod watch;

pub use cpu_loop::{CpuState, Pass};
pub use create::{ImageEntry, digest, load_image};
pub use network::Network;
pub use platform::Platform;

use crate::guest::Guest;
use crate::sched::{Scheduler, Wake};
use crate::slot::Slot;
use abi::report::GuestState;
use abi::time::TimeInfo;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};

/// Most images loaded at once (the bundle's and uploads).
pub const MAX_IMAGES: usize = 256;
/// Room for guests started after boot through the control channel (at
/// once: an ended guest's id is given again).
pub const SPARE_GUESTS: usize = 1024;

/// How a machine is set up (the boot CPU decides, before any guest).
pub struct Config {
    /// CPUs that run guests.
    pub cpus: usize,
    /// Guests there may be at once (live, and ended ones not yet forgotten).
    pub capacity: usize,
    /// The root whose upper half guests' tables map (the hypervisor's own,
    /// or with page-table isolation the reduced one).
    pub guest_upper: u64,
    pub time: TimeInfo,
    /// Whether there is a control channel.
    pub control: bool,
    /// Keep running with no guest left (a control channel may start more).
    pub keep_running: bool,
}

/// The hypervisor's own state, shared by all CPUs.
pub struct Machine<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> {
    pub platform: P,
    pub net: N,
    guest_upper: u64,
    time: TimeInfo,
    /// The frame of the time page mapped into every guest.
    time_page: u64,
    cpus: usize,
    /// Guests by id; `None` while a CPU runs it (or after it ended).
    guests: Mutex<Vec<Option<Box<Guest>>>>,
    /// One scheduler per CPU.
    scheds: Vec<Mutex<Scheduler>>,
    /// The CPU whose scheduler holds each guest.
    home: Vec<AtomicUsize>,
    /// Per CPU: a guest woken by this CPU itself should take the CPU from
    /// the one running (`wake`); the running guest leaves at its next exit.
    preempt: Vec<AtomicBool>,
    /// Each guest's event page (for raising events from any CPU), set
    /// when it is created.
    event_pages: Vec<Slot<P::Events>>,
    /// Guests not yet ended.
    live: AtomicUsize,
    exited: AtomicU32,
    stopped: AtomicU32,
    /// Time each CPU spent halted with nothing to run.
    idle_ns: Vec<AtomicU64>,
    /// Per CPU, only that CPU's to touch: when the timer it armed last is
    /// due (ns), 0 once an interrupt may have been it (`Machine::arm`).
    timer_due: Vec<AtomicU64>,
    /// Polls of the uplink that no interrupt prompted (`MachineStats`).
    uplink_polls: AtomicU64,
    /// What the control channel reports of every guest, by id.
    status: Vec<Slot<GuestStatus>>,
    /// Ids below this have been given out (they are in use, or free).
    high: AtomicUsize,
    /// Guests whose end is recorded and whose ids `finish` no longer looks
    /// up, for creation to take into `Creating` (their ids may then be
    /// reused).
    ended: Mutex<Vec<usize>>,
    control: bool,
    /// When the last control byte arrived.
    control_rx_ns: AtomicU64,
    keep_running: bool,
    /// Set once the boot guests are created; the other CPUs wait for it.
    ready: AtomicBool,
    /// Images by index: the bundle's, then those sent on the control
    /// channel (a removed one leaves a free entry, so indices never move).
    images: Mutex<Vec<ImageEntry>>,
    creating: Mutex<create::Creating>,
    /// What each control client watches, and the records waiting for it.
    watch: Mutex<Vec<watch::Watch>>,
    /// The control client a capture goes to.
    capture_client: AtomicUsize,
    /// Guests parked now ([`PAUSED`]): once every live guest is, a machine
    /// that ends when idle stops them.
    paused: AtomicUsize,
    /// The manifest's clones to make once their templates pause.
    clone_jobs: Mutex<Vec<clone::CloneJob>>,
}

/// A guest as the control channel sees it, whichever CPU has it.
pub struct GuestStatus {
    name: String,
    tenant: Option<u32>,
    /// [`STATES`] index.
    state: AtomicU8,
    cpu_ns: AtomicU64,
    memory_bytes: AtomicU64,
    /// Set by `ctl stop`; the CPU that next takes the guest ends it.
    stop_requested: AtomicBool,
    /// Set by `ctl pause`, cleared by `ctl resume`; the CPU that next
    /// takes the guest parks it instead of running it ([`PAUSED`]).
    pause_requested: AtomicBool,
    /// A manifest template (`warm`, `from`): it pauses when it first
    /// blocks, and its clones are made then (`clone::CloneJob`).
    pause_at_block: AtomicBool,
    /// What it was created with (its clones are made with the same).
    settings: abi::bundle::Settings,
    /// Its image's index in `images` (counted while it has not ended).
    image: usize,
    /// Guests created before it (ids are reused: this orders `list`).
    seq: u64,
    /// The control clients (a bit each) its console lines go to
    /// (`console`, `start ... watch`).
    watched: AtomicU32,
    /// How it ended, once it has.
    end: Once<abi::control::GuestEvent>,
}

/// The states the control channel names (`ctl list`): waiting for a CPU
/// or for an event, on a CPU, taken off the CPUs by `pause`, ended by
/// itself, ended by the hypervisor (a fault, a limit, the operator). The
/// ended ones come last: `< EXITED` is "live".
const STATES: [GuestState; 5] = [GuestState::Waiting, GuestState::Running, GuestState::Paused, GuestState::Exited, GuestState::Stopped];
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const PAUSED: u8 = 2;
const EXITED: u8 = 3;
const STOPPED: u8 = 4;

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// A machine with no guest yet: `images` are the bundle's (loaded with
    /// [`Machine::load_image`] before), the time page is allocated here.
    pub fn new(platform: P, net: N, config: Config, images: Vec<ImageEntry>) -> Self {
        let time_page = {
            use crate::mm::PhysMem;
            let mut mem = platform.mem();
            let page = mem.alloc().expect("a frame for the time page");
            mem.write(page, 0, &config.time.to_bytes());
            page
        };
        let Config { cpus, capacity, guest_upper, time, control, keep_running } = config;
        Self {
            platform,
            net,
            guest_upper,
            time,
            time_page,
            cpus,
            guests: Mutex::new((0..capacity).map(|_| None).collect()),
            scheds: (0..cpus).map(|_| Mutex::new(Scheduler::new())).collect(),
            home: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
            preempt: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            event_pages: (0..capacity).map(|_| Slot::default()).collect(),
            live: AtomicUsize::new(0),
            exited: AtomicU32::new(0),
            stopped: AtomicU32::new(0),
            idle_ns: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
            timer_due: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
            uplink_polls: AtomicU64::new(0),
            status: (0..capacity).map(|_| Slot::default()).collect(),
            high: AtomicUsize::new(0),
            ended: Mutex::new(Vec::new()),
            control,
            control_rx_ns: AtomicU64::new(0),
            keep_running,
            ready: AtomicBool::new(false),
            images: Mutex::new(images),
            creating: Mutex::new(create::Creating::default()),
            watch: Mutex::new((0..crate::control::MAX_CLIENTS).map(|_| watch::Watch::default()).collect()),
            capture_client: AtomicUsize::new(0),
            paused: AtomicUsize::new(0),
            clone_jobs: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        self.platform.now_ns()
    }

    /// Lets the other CPUs in (the boot guests are created).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the boot CPU has created the boot guests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Guest `id`'s status (set before the guest can be scheduled, and
    /// kept until its id is reused, which its end must have preceded).
    fn status(&self, id: usize) -> Arc<GuestStatus> {
        self.status[id].get().expect("a created guest has a status")
    }

    /// A parked guest's state back to waiting (counted); whether it was
    /// parked.
    fn unpark(&self, status: &GuestStatus) -> bool {
        let was = status.state.compare_exchange(PAUSED, WAITING, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        if was {
            self.paused.fetch_sub(1, Ordering::AcqRel);
        }
        was
    }

    /// The id of the guest called `name`.
    fn find(&self, name: &str) -> Option<usize> {
        self.statuses().find(|(_, b)| b.name == name).map(|(id, _)| id)
    }

    /// The status of every guest (live, and ended and not forgotten),
    /// with their ids.
    fn statuses(&self) -> impl Iterator<Item = (usize, Arc<GuestStatus>)> {
        self.status[..self.high.load(Ordering::Acquire)].iter().enumerate().filter_map(|(id, b)| Some((id, b.get()?)))
    }

    /// Wakes guest `id` if it is blocked (an event arrived for it: its bits
    /// are raised already) on CPU `me`. Its CPU is interrupted only if it
    /// runs no guest (it may be halted) or the woken guest should preempt
    /// the one it runs ([`Wake`]): an IPI to another CPU, or for `me`
    /// itself a flag that ends the running guest's slice at its next exit.
    pub fn wake(&self, id: usize, me: usize) {
        let home = self.home[id].load(Ordering::Acquire);
        // A guest that is moving between CPUs was runnable: nothing to wake.
        let woke = self.scheds[home].lock().wake(id, self.now());
        match woke {
            Wake::Preempt if home == me => self.preempt[me].store(true, Ordering::Relaxed),
            Wake::Preempt | Wake::Idle if home != me => self.platform.wake_cpu(home),
            _ => {}
        }
    }

    /// Frees what the machine holds beyond its guests (every guest has
    /// ended): the images and the time page; then prints the machine line
    /// and the end's summary.
    pub fn shut_down(&self, not_started: u32) {
        use crate::mm::PhysMem;
        let mut mem = self.platform.mem();
        for entry in core::mem::take(&mut *self.images.lock()) {
            if let Ok(img) = entry.image {
                img.unload(&mut mem);
            }
        }
        mem.free(self.time_page);
        self.platform.console_line(&self.machine_line());
        self.platform.console_line(&alloc::format!(
            "[hv] no guests left: {} exited, {} stopped, {not_started} not started; {} KiB free, {} KiB taken by the heap",
            self.exited.load(Ordering::Relaxed),
            self.stopped.load(Ordering::Relaxed),
            self.platform.frames().0 as u64 * 4,
            self.platform.heap_grown() as u64 / 1024
        ));
    }
}
