//! The per-CPU loop driven on the host: a fake platform over simulated
//! memory with a scripted clock, guests whose exits are scripted, and
//! threads standing in for CPUs where a race needs one CPU held at an
//! exact point while another acts.

use super::cpu_loop::{IDLE_TICK_NS, UPLINK_POLL_NS};
use super::network::{Attach, CaptureTarget, Captured, PortStats};
use super::*;
use crate::control::ControlHost;
use crate::guest::regs::{FpuState, VECTOR_SYSCALL};
use crate::mm::testmem::TestMem;
use crate::mm::{PhysAddr, PhysMem};
use crate::net::port::{GuestEvents, RingAllocError};
use crate::sched::{self, State};
use abi::Hypercall;
use abi::ring::testing::SharedRing;
use abi::time::events;
use hermit_entry::boot_info::RawBootInfo;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

/// What a scripted guest does each time it is entered.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Computes for `ns`, then the timer interrupt takes the CPU.
    Busy(u64),
    /// Computes until the armed timer (or a wake-up IPI) takes the CPU.
    Spin,
    /// `block(deadline)`.
    Block(u64),
    /// `block(now + ns)`: sleeps `ns` from the moment it asks.
    Sleep(u64),
    /// `net_kick()` (the network back end may wake a guest, see [`Ports`]).
    Kick,
    /// `exit(code)`.
    Exit(i32),
    /// A user-mode write to the page at `va`, not present.
    Touch(u64),
}

/// Simulated physical memory shared by every CPU (each access locks it).
/// The simulated memory, and the page-table root each CPU runs
/// on: freeing a frame some CPU still runs on fails the test.
struct Shared<'a>(&'a Mutex<TestMem>, &'a Mutex<HashMap<usize, PhysAddr>>);

/// A guest's event page in the simulated memory.
#[derive(Clone)]
struct FakeEvents {
    mem: Arc<Mutex<TestMem>>,
    page: PhysAddr,
}

impl GuestEvents for FakeEvents {
    fn raise(&self, bits: u64) {
        let mut mem = self.mem.lock();
        let mut b = [0u8; 8];
        mem.read(self.page, 0, &mut b);
        mem.write(self.page, 0, &(u64::from_le_bytes(b) | bits).to_le_bytes());
    }
    fn pending(&self) -> u64 {
        let mut b = [0u8; 8];
        self.mem.lock().read(self.page, 0, &mut b);
        u64::from_le_bytes(b)
    }
}

impl PhysMem for Shared<'_> {
    fn alloc(&mut self) -> Option<PhysAddr> {
        self.0.lock().alloc()
    }
    fn free(&mut self, frame: PhysAddr) {
        assert!(!self.1.lock().values().any(|&root| root == frame), "freed the page tables a CPU runs on: {frame:#x}");
        self.0.lock().free(frame)
    }
    fn read_pte(&self, table: PhysAddr, index: usize) -> u64 {
        self.0.lock().read_pte(table, index)
    }
    fn write_pte(&mut self, table: PhysAddr, index: usize, value: u64) {
        self.0.lock().write_pte(table, index, value)
    }
    fn write(&mut self, frame: PhysAddr, offset: usize, src: &[u8]) {
        self.0.lock().write(frame, offset, src)
    }
    fn read(&self, frame: PhysAddr, offset: usize, dst: &mut [u8]) {
        self.0.lock().read(frame, offset, dst)
    }
}

std::thread_local! {
    /// The guest this thread (CPU) entered last.
    static ON_CPU: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The fake platform: one clock for all CPUs, advanced by what guests do
/// and by idling to the armed timer.
struct Fake {
    mem: Arc<Mutex<TestMem>>,
    /// The pages of every ring `ring` made, in order.
    rings: Mutex<Vec<Vec<PhysAddr>>>,
    clock: AtomicU64,
    /// The timer: the deadline last armed, whether its interrupt is still
    /// to come (one-shot: it fires once, then only a new `arm_timer`
    /// brings another), and how many times it was armed.
    armed: AtomicU64,
    pending: AtomicBool,
    arms: AtomicUsize,
    idles: AtomicUsize,
    lines: Mutex<Vec<String>>,
    scripts: Mutex<HashMap<String, VecDeque<Act>>>,
    /// CPUs interrupted with `wake_cpu`.
    woken: Mutex<Vec<usize>>,
    /// Every entry into a guest: its name and the clock then.
    entries: Mutex<Vec<(String, u64)>>,
    /// The guest whose CPU stops in `end_guest` (once): between the
    /// guest's own look at its events and the scheduler's put.
    hold: Mutex<Option<String>>,
    /// The tables each CPU runs on, as `begin_guest` left them.
    loaded: Mutex<HashMap<usize, PhysAddr>>,
    /// Every `begin_guest`: the CPU, and whether the guest had moved.
    begins: Mutex<Vec<(usize, bool)>>,
    /// Lines written to the control channel, `CLIENT:LINE`.
    control: Mutex<Vec<String>>,
    /// What control clients send next: bytes, or `None` for a new client.
    inputs: Mutex<Vec<(usize, Option<Vec<u8>>)>>,
    held: Mutex<Option<Sender<()>>>,
    release: Mutex<Option<Receiver<()>>>,
    /// The uplink interrupts (else it is polled); its flag and count.
    uplink_irq: AtomicBool,
    uplink_pending: AtomicBool,
    uplink_count: AtomicU64,
}

impl Fake {
    /// The uplink's interrupt, as the x86 stubs take it.
    fn uplink_interrupt(&self) {
        self.uplink_pending.store(true, Ordering::SeqCst);
        self.uplink_count.fetch_add(1, Ordering::SeqCst);
    }
}

impl Platform for Fake {
    type Mem<'a> = Shared<'a>;

    type Events = FakeEvents;
    type Ring = SharedRing;

    fn mem(&self) -> Shared<'_> {
        Shared(&self.mem, &self.loaded)
    }
    fn events_of(&self, g: &Guest) -> Option<FakeEvents> {
        let page = g.memory.space.translate(&self.mem(), abi::layout::EVENT_PAGE)?.0;
        Some(FakeEvents { mem: self.mem.clone(), page })
    }
    fn ring<E>(
        &self,
        _events: &FakeEvents,
        _index_offset: u64,
        slots: u32,
        copy: impl Fn(usize) -> Option<PhysAddr>,
        mut map: impl FnMut(usize, PhysAddr) -> Result<(), E>,
    ) -> Result<SharedRing, RingAllocError<E>> {
        let mut pages = Vec::new();
        for i in 0..abi::ring::slots_bytes(slots) / 4096 {
            let page = match copy(i) {
                Some(src) => self.mem.lock().alloc_copy(src),
                None => self.mem.lock().alloc(),
            };
            let page = page.ok_or(RingAllocError::NoMemory)?;
            if let Err(e) = map(i, page) {
                self.mem.lock().free(page);
                return Err(RingAllocError::Map(e));
            }
            pages.push(page);
        }
        self.rings.lock().push(pages);
        Ok(SharedRing::new(slots))
    }
    fn deferred_ring(&self, _events: &FakeEvents, _index_offset: u64, slots: u32) -> SharedRing {
        SharedRing::deferred(slots)
    }
    fn now_ns(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
    fn arm_timer(&self, deadline_ns: u64) {
        self.armed.store(deadline_ns, Ordering::SeqCst);
        self.pending.store(true, Ordering::SeqCst);
        self.arms.fetch_add(1, Ordering::SeqCst);
    }
    fn idle(&self, cpu: usize) {
        self.loaded.lock().remove(&cpu);
        self.idles.fetch_add(1, Ordering::SeqCst);
        // Halts until the timer fires: it must be armed (a wake-up IPI
        // from another CPU aside, which these tests do not idle for).
        assert!(self.pending.swap(false, Ordering::SeqCst), "CPU {cpu} halts with no timer armed");
        self.clock.fetch_max(self.armed.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    fn wake_cpu(&self, cpu: usize) {
        self.woken.lock().push(cpu);
    }
    fn uplink_interrupts(&self) -> bool {
        self.uplink_irq.load(Ordering::SeqCst)
    }
    fn take_uplink_interrupt(&self) -> bool {
        self.uplink_pending.swap(false, Ordering::SeqCst)
    }
    fn uplink_interrupt_count(&self) -> u64 {
        self.uplink_count.load(Ordering::SeqCst)
    }
    fn begin_guest(&self, cpu: usize, root: PhysAddr, moved: bool) {
        self.begins.lock().push((cpu, moved));
        self.loaded.lock().insert(cpu, root);
    }
    fn release_tables(&self, me: usize, root: PhysAddr) {
        self.loaded.lock().remove(&me);
        // Another CPU (thread) still on them switches at its next entry or
        // idle; a test that drives every CPU from one thread never gets
        // there, so the wait is bounded.
        let start = std::time::Instant::now();
        while self.loaded.lock().iter().any(|(&cpu, &r)| cpu != me && r == root) {
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "CPU {me} waits for another CPU to leave {root:#x}");
            std::thread::yield_now();
        }
    }
    fn enter(&self, g: &mut Guest) {
        ON_CPU.with(|c| *c.borrow_mut() = g.name.clone());
        self.entries.lock().push((g.name.clone(), self.now_ns()));
        let exit = self.scripts.lock().get_mut(&g.name).and_then(VecDeque::pop_front).unwrap_or(Act::Busy(1_000_000));
        let call = |g: &mut Guest, nr: Hypercall, a0: u64| {
            g.regs.vector = VECTOR_SYSCALL;
            g.regs.rax = nr as u64;
            g.regs.rdi = a0;
        };
        self.clock.fetch_add(1_000, Ordering::SeqCst);
        // A timer already due interrupts the guest before it does anything.
        if self.pending.load(Ordering::SeqCst) && self.armed.load(Ordering::SeqCst) <= self.now_ns() {
            self.pending.store(false, Ordering::SeqCst);
            if let Some(script) = self.scripts.lock().get_mut(&g.name) {
                script.push_front(exit);
            }
            g.regs.vector = crate::guest::regs::VECTOR_FIRST_INTERRUPT;
            return;
        }
        match exit {
            Act::Busy(ns) => {
                self.clock.fetch_add(ns, Ordering::SeqCst);
                if self.armed.load(Ordering::SeqCst) <= self.now_ns() {
                    self.pending.store(false, Ordering::SeqCst);
                }
                g.regs.vector = crate::guest::regs::VECTOR_FIRST_INTERRUPT;
            }
            Act::Spin => {
                assert!(self.pending.swap(false, Ordering::SeqCst), "{} spins with no timer armed", g.name);
                self.clock.fetch_max(self.armed.load(Ordering::SeqCst), Ordering::SeqCst);
                g.regs.vector = crate::guest::regs::VECTOR_FIRST_INTERRUPT;
            }
            Act::Block(deadline) => call(g, Hypercall::Block, deadline),
            Act::Sleep(ns) => {
                // As the libos does: take what woke it last, then block.
                let page = self.events_of(g).expect("a guest has its event page").page;
                self.mem.lock().write(page, 0, &[0; 8]);
                call(g, Hypercall::Block, self.now_ns() + ns)
            }
            Act::Kick => call(g, Hypercall::NetKick, 0),
            Act::Exit(code) => call(g, Hypercall::Exit, code as u64),
            Act::Touch(va) => {
                g.regs.vector = crate::guest::regs::VECTOR_PAGE_FAULT;
                g.regs.error = crate::guest::regs::pf::WRITE | crate::guest::regs::pf::USER;
                g.regs.cr2 = va;
            }
        }
    }
    fn flush_tlb(&self, _root: PhysAddr) {}
    fn end_guest(&self, _fpu: &mut FpuState) {
        let me = ON_CPU.with(|c| c.borrow().clone());
        let hold = self.hold.lock().take_if(|h| *h == me).is_some();
        if hold {
            self.held.lock().take().expect("a hold has its channels").send(()).unwrap();
            self.release.lock().take().expect("a hold has its channels").recv().unwrap();
        }
    }
    fn write_boot_info(&self, _frame: PhysAddr, _info: RawBootInfo) {}
    fn console_line(&self, line: &str) {
        self.lines.lock().push(line.into());
    }
    fn console_read(&self) -> Option<u8> {
        None
    }
    fn control_poll(&self, on: &mut dyn FnMut(crate::control::Input<'_>)) {
        for (client, bytes) in core::mem::take(&mut *self.inputs.lock()) {
            match bytes {
                Some(b) => on(crate::control::Input::Bytes(client, &b)),
                None => on(crate::control::Input::Opened(client)),
            }
        }
    }
    fn control_write_line(&self, client: usize, line: &str) {
        self.control.lock().push(format!("{client}:{line}"));
    }
    fn heap_usage(&self) -> (usize, usize) {
        (64 << 20, 0)
    }
    fn frames(&self) -> (usize, usize) {
        let m = self.mem.lock();
        (m.limit - m.live, m.limit)
    }
}

type TestMachine = Machine<Fake, Ports>;

use crate::testutil::two_page_image as image;

/// A machine of `cpus` CPUs at 1 s on its clock, with one image.
fn machine(cpus: usize) -> TestMachine {
    machine_on(cpus, Ports::refusing())
}

/// The same over network back end `net`.
fn machine_on<N: Network<Ring = SharedRing, Events = FakeEvents>>(cpus: usize, net: N) -> Machine<Fake, N> {
    let mut mem = TestMem::new(100_000);
    let upper = mem.alloc().unwrap();
    let img = crate::guest::LoadedImage::load(&mut mem, "t", &image()).unwrap();
    let fake = Fake {
        mem: Arc::new(Mutex::new(mem)),
        rings: Mutex::new(Vec::new()),
        clock: AtomicU64::new(1_000_000_000),
        armed: AtomicU64::new(0),
        pending: AtomicBool::new(false),
        arms: AtomicUsize::new(0),
        idles: AtomicUsize::new(0),
        lines: Mutex::new(Vec::new()),
        scripts: Mutex::new(HashMap::new()),
        woken: Mutex::new(Vec::new()),
        entries: Mutex::new(Vec::new()),
        hold: Mutex::new(None),
        held: Mutex::new(None),
        release: Mutex::new(None),
        loaded: Mutex::new(HashMap::new()),
        begins: Mutex::new(Vec::new()),
        control: Mutex::new(Vec::new()),
        inputs: Mutex::new(Vec::new()),
        uplink_irq: AtomicBool::new(false),
        uplink_pending: AtomicBool::new(false),
        uplink_count: AtomicU64::new(0),
    };
    let config =
        Config { cpus, capacity: 16, guest_upper: upper, time: TimeInfo::new(1_000_000_000, 0, 0), control: false, keep_running: false };
    let entry = super::ImageEntry { name: "t".into(), digest: [7; 32], bytes: 1, image: Ok(img) };
    Machine::new(fake, net, config, vec![entry])
}

/// Creates guest `name` (ids in order; guest `id` starts on CPU
/// `id % cpus`) that does `script`, then computes forever.
fn guest(m: &TestMachine, name: &str, script: &[Act]) -> usize {
    m.platform.scripts.lock().insert(name.into(), script.iter().copied().collect());
    m.create_guest(name, 0, &abi::bundle::Settings { memory: 1 << 20, ..Default::default() }, &[], &[], 0).unwrap();
    m.find(name).unwrap()
}

fn state(m: &TestMachine, id: usize) -> Option<State> {
    m.scheds[m.home[id].load(Ordering::SeqCst)].lock().state(id)
}

/// What another CPU does to deliver an event: raise it, then wake.
fn deliver(m: &TestMachine, id: usize, from: usize) {
    m.event_pages[id].get().expect("a live guest has its event page").raise(events::NET_RX);
    m.wake(id, from);
}

/// Runs one pass of CPU `me` on another thread and holds it when `name`
/// leaves the CPU; `between` runs while it is held (as another CPU).
fn hold_while(m: &TestMachine, me: usize, name: &str, between: impl FnOnce()) {
    let (held_tx, held_rx) = channel();
    let (release_tx, release_rx) = channel();
    *m.platform.hold.lock() = Some(name.into());
    *m.platform.held.lock() = Some(held_tx);
    *m.platform.release.lock() = Some(release_rx);
    std::thread::scope(|s| {
        let cpu = s.spawn(|| m.step(me, &mut CpuState::default()));
        held_rx.recv().expect("the guest left the CPU");
        between();
        release_tx.send(()).unwrap();
        assert_eq!(cpu.join().unwrap(), Pass::Again);
    });
}

/// Steps CPU `me` until it is done or `max` passes went by.
fn steps(m: &TestMachine, me: usize, st: &mut CpuState, max: usize) -> Pass {
    for _ in 0..max {
        if m.step(me, st) == Pass::Done {
            return Pass::Done;
        }
    }
    Pass::Again
}

fn lines(m: &TestMachine, what: &str) -> usize {
    m.platform.lines.lock().iter().filter(|l| l.contains(what)).count()
}

#[test]
fn an_event_raised_while_a_guest_goes_to_sleep_wakes_it() {
    let m = machine(1);
    let a = guest(&m, "a", &[Act::Block(u64::MAX), Act::Exit(0)]);
    // The guest looked at its events (none), asked to block, and left the
    // CPU; before CPU 0 puts it to sleep, CPU 1 delivers. The wake finds
    // it running and can do nothing: only CPU 0's second look saves it.
    hold_while(&m, 0, "a", || {
        deliver(&m, a, 1);
        assert_eq!(state(&m, a), Some(State::Running));
    });
    assert_eq!(state(&m, a), Some(State::Runnable), "the event was lost: the guest sleeps with NET_RX pending");
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    assert_eq!(lines(&m, "[hv] guest a exited with code 0"), 1);
}

#[test]
fn a_stop_requested_while_a_guest_goes_to_sleep_ends_it() {
    let m = machine(1);
    let a = guest(&m, "a", &[Act::Block(u64::MAX), Act::Block(u64::MAX)]);
    hold_while(&m, 0, "a", || assert_eq!(m.stop("a"), Ok(())));
    assert_eq!(state(&m, a), Some(State::Runnable), "the stop request was lost: the guest sleeps");
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    assert_eq!(lines(&m, &format!("[hv] guest a stopped: {}", abi::stop::StopReason::Operator)), 1);
}

#[test]
fn ctl_stop_ends_a_blocked_guest() {
    let m = machine(1);
    let before = m.platform.mem.lock().live;
    let a = guest(&m, "a", &[Act::Block(u64::MAX), Act::Block(u64::MAX)]);
    let mut cpu = CpuState::default();
    m.step(0, &mut cpu);
    assert_eq!(state(&m, a), Some(State::Blocked { deadline: u64::MAX }));
    assert_eq!(m.stop("a"), Ok(()));
    assert_eq!(steps(&m, 0, &mut cpu, 10), Pass::Done, "a blocked guest must be woken to be stopped");
    assert_eq!(lines(&m, &format!("[hv] guest a stopped: {}", abi::stop::StopReason::Operator)), 1);
    assert_eq!(m.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(m.platform.mem.lock().live, before, "every frame of the guest is freed");
    assert!(m.stop("a").is_err(), "an ended guest cannot be stopped again");
}

#[test]
fn a_guest_stopped_while_deliveries_keep_waking_it_ends_once() {
    // The guest blocks, and every time it does another CPU delivers to it
    // and wakes it: it never sleeps long, but the stop still ends it.
    let m = machine(2);
    let before = m.platform.mem.lock().live;
    let a = guest(&m, "a", &[Act::Block(u64::MAX); 64]);
    let mut cpu0 = CpuState::default();
    m.step(0, &mut cpu0);
    assert_eq!(m.stop("a"), Ok(()));
    for _ in 0..20 {
        if m.live.load(Ordering::SeqCst) == 0 {
            break;
        }
        deliver(&m, a, 1);
        m.step(0, &mut cpu0);
    }
    assert_eq!(m.live.load(Ordering::SeqCst), 0, "the stop was never honoured");
    assert_eq!(lines(&m, "[hv] guest a stopped"), 1);
    assert_eq!(m.platform.mem.lock().live, before, "every frame of the guest is freed");
    // A late wake for the ended guest finds nothing to wake.
    m.wake(a, 1);
    assert_eq!(state(&m, a), None);
}

#[test]
fn an_idle_cpu_steals_a_guest_and_wakes_reach_it_there() {
    let m = machine(2);
    let a = guest(&m, "a", &[]);
    let b = guest(&m, "b", &[Act::Exit(0)]);
    let c = guest(&m, "c", &[]);
    let mut cpu1 = CpuState::default();
    m.step(1, &mut cpu1);
    assert_eq!(lines(&m, "[hv] guest b exited"), 1);
    assert_eq!(state(&m, b), None);
    // CPU 1 has nothing left; CPU 0 has two waiting: CPU 1 takes one
    // instead of idling.
    m.step(1, &mut cpu1);
    assert_eq!(m.platform.idles.load(Ordering::SeqCst), 0, "CPU 1 idled beside a CPU with two waiting");
    let moved = [a, c].into_iter().find(|&g| m.home[g].load(Ordering::SeqCst) == 1).expect("a guest moved to CPU 1");
    assert_eq!(m.scheds[0].lock().state(moved), None);
    // It runs there, blocks there, and a delivery from CPU 0 wakes it there.
    m.platform.scripts.lock().get_mut(if moved == a { "a" } else { "c" }).unwrap().push_back(Act::Block(u64::MAX));
    m.step(1, &mut cpu1);
    assert_eq!(state(&m, moved), Some(State::Blocked { deadline: u64::MAX }));
    let ran = m.guests.lock()[moved].as_ref().unwrap().stats.cpu_ns_per_cpu.clone();
    assert!(ran.len() == 2 && ran[1] > 0, "it ran on CPU 1: {ran:?}");
    m.platform.woken.lock().clear();
    deliver(&m, moved, 0);
    assert_eq!(m.scheds[1].lock().state(moved), Some(State::Runnable), "the wake went to the guest's old CPU");
    assert_eq!(*m.platform.woken.lock(), [1], "CPU 1 is interrupted to run it");
}

#[test]
fn busy_cpus_even_out_but_do_not_bounce_one_guest() {
    let m = machine(2);
    // CPU 0: g0 g2 g4 g6; CPU 1: g1, and g3 g5 g7, which exit at once.
    for i in 0..8 {
        guest(&m, &format!("g{i}"), if i % 2 == 1 && i > 1 { &[Act::Exit(0)] } else { &[] });
    }
    let mut cpu1 = CpuState::default();
    for _ in 0..4 {
        m.step(1, &mut cpu1);
    }
    assert_eq!(lines(&m, "exited with code 0"), 3);
    assert_eq!((m.scheds[0].lock().runnable_len(), m.scheds[1].lock().runnable_len()), (4, 1));
    // Past the balance tick CPU 1 takes one (4 >= 1 + 2) ...
    m.platform.clock.fetch_add(cpu_loop::IDLE_TICK_NS, Ordering::SeqCst);
    m.step(1, &mut cpu1);
    let on = |cpu| (0..8).filter(|&g| m.home[g].load(Ordering::SeqCst) == cpu && state(&m, g).is_some()).count();
    assert_eq!((on(0), on(1)), (3, 2), "CPU 1 did not take a guest from the busier CPU 0");
    // ... and at 3 against 2 nobody moves.
    m.platform.clock.fetch_add(cpu_loop::IDLE_TICK_NS, Ordering::SeqCst);
    m.step(1, &mut cpu1);
    m.platform.clock.fetch_add(cpu_loop::IDLE_TICK_NS, Ordering::SeqCst);
    m.step(0, &mut CpuState::default());
    assert_eq!((on(0), on(1)), (3, 2), "one guest more on a CPU moved");
}

#[test]
fn two_cpus_on_two_threads_run_every_guest_to_its_end() {
    let m = &machine(2);
    let before = m.platform.mem.lock().live;
    for i in 0..12 {
        let sleep = 1_000_000_000 + (i as u64 + 1) * 3_000_000;
        guest(m, &format!("g{i}"), &[Act::Busy(2_000_000), Act::Block(sleep), Act::Busy(1_000_000), Act::Block(u64::MAX), Act::Exit(i)]);
    }
    // Every guest also sleeps without a deadline once: the other CPU
    // delivers to it while both CPUs run, balance and steal.
    std::thread::scope(|s| {
        let cpus: Vec<_> = (0..2).map(|cpu| s.spawn(move || steps(m, cpu, &mut CpuState::default(), 100_000))).collect();
        let mut rounds = 0;
        while m.live.load(Ordering::SeqCst) > 0 && rounds < 100_000 {
            for id in 0..12 {
                // Only for a guest still alive (the network back end's
                // gate does this for real deliveries).
                let alive = m.status(id).state.load(Ordering::SeqCst) < EXITED;
                if alive && state(m, id) == Some(State::Blocked { deadline: u64::MAX }) {
                    deliver(m, id, 1);
                }
            }
            rounds += 1;
            std::thread::yield_now();
        }
        for cpu in cpus {
            assert_eq!(cpu.join().unwrap(), Pass::Done, "a CPU never finished");
        }
    });
    for i in 0..12 {
        assert_eq!(lines(m, &format!("[hv] guest g{i} exited with code {i}")), 1);
    }
    assert_eq!(m.platform.mem.lock().live, before, "every frame of every guest is freed");
}

#[test]
fn shutting_down_returns_the_images_and_the_time_page() {
    let m = machine(1);
    guest(&m, "a", &[Act::Exit(3)]);
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    m.shut_down(2);
    assert_eq!(m.platform.mem.lock().live, 1, "only the test's own root frame is left");
    let last = m.platform.lines.lock().last().cloned().unwrap();
    assert!(last.starts_with("[hv] no guests left: 1 exited, 0 stopped, 2 not started; "), "{last}");
}

#[test]
fn addresses_are_per_tenant_and_bounded() {
    let mut c = create::Creating::default();
    let st = |tenant| abi::bundle::Settings { tenant, ..Default::default() };
    let a = c.address(7, &st(1)).unwrap();
    let b = c.address(8, &st(1)).unwrap();
    let other = c.address(9, &st(2)).unwrap();
    assert_eq!((a.ipv4, b.ipv4, other.ipv4), (abi::guest_ipv4(1, 0), abi::guest_ipv4(1, 1), abi::guest_ipv4(2, 0)));
    assert_eq!(a.mac[..6], [0x02, 0, 0, 0, 7, 1], "the MAC names the guest id and the tenant");
    assert_eq!(a.gateway, abi::gateway_ipv4(1));
    assert!(c.address(10, &st(abi::MAX_TENANTS)).is_err(), "a tenant number beyond the table is refused");
    assert_eq!(c.next_host.len(), 3, "a refused tenant sizes nothing");
    c.next_host[3 - 1] = abi::MAX_TENANT_HOSTS;
    assert!(c.address(11, &st(2)).is_err(), "a full tenant has no address left");
}

#[test]
fn a_guest_whose_vnic_cannot_be_attached_is_destroyed_whole() {
    let m = machine(1);
    let before = m.platform.mem.lock().live;
    let st = abi::bundle::Settings { memory: 1 << 20, tenant: 1, ..Default::default() };
    let e = m.create_guest("n", 0, &st, &[], &[], 0).err().expect("the network refuses the port");
    assert_eq!(e.why, "no network");
    assert_eq!(m.platform.mem.lock().live, before, "its pages, tables and ring frames are all freed");
    assert_eq!((m.high.load(Ordering::SeqCst), m.creating.lock().free.as_slice()), (0, &[0][..]), "no id is used up");
    // Its address was taken all the same (as before: addresses are not reused).
    assert_eq!(m.creating.lock().next_host, [0, 1]);
}

/// A port as [`Ports`] was given it.
struct Given {
    guest: usize,
    tenant: u32,
    ipv4: [u8; 4],
    events: PhysAddr,
}

/// A back end that remembers every port it was given, or refuses them all
/// (a machine whose guests have no vNIC).
#[derive(Default)]
struct Ports {
    given: Mutex<Vec<Given>>,
    refuse: bool,
    /// (sender, receiver): the next drain of the sender's TX wakes the
    /// receiver (as a frame between them would), once.
    deliveries: Mutex<Vec<(usize, usize)>>,
    /// Guests disconnected, and released, in order.
    disconnected: Mutex<Vec<usize>>,
    released: Mutex<Vec<usize>>,
    /// There is an uplink: the clock at each poll of its device and at
    /// each retry of its held frames; polls left that end at a full batch;
    /// retries left that find frames still held.
    uplink: bool,
    polls: Mutex<Vec<u64>>,
    retries: Mutex<Vec<u64>>,
    full_batches: AtomicUsize,
    still_held: AtomicUsize,
    /// Every `rings_made`.
    rings_made: Mutex<Vec<RingsMade>>,
}

/// A `rings_made`: the guest and its TX and RX ring frames.
type RingsMade = (usize, Vec<PhysAddr>, Vec<PhysAddr>);

impl Ports {
    fn refusing() -> Self {
        Self { refuse: true, ..Default::default() }
    }
}

impl Network for Ports {
    type Ring = SharedRing;
    type Events = FakeEvents;
    fn attach(&self, a: Attach<'_, SharedRing, FakeEvents>) -> Result<(), String> {
        if self.refuse {
            return Err("no network".into());
        }
        let given = Given { guest: a.guest, tenant: a.tenant, ipv4: a.ipv4, events: a.events.page };
        self.given.lock().push(given);
        Ok(())
    }
    fn drain(&self, id: usize, _: u64, wake: &mut dyn FnMut(usize)) -> Result<(), String> {
        let due: Vec<usize> = {
            let mut d = self.deliveries.lock();
            let due = d.iter().filter(|&&(from, _)| from == id).map(|&(_, to)| to).collect();
            d.retain(|&(from, _)| from != id);
            due
        };
        due.into_iter().for_each(wake);
        Ok(())
    }
    fn rings_made(&self, id: usize, tx: &[PhysAddr], rx: &[PhysAddr]) {
        self.rings_made.lock().push((id, tx.to_vec(), rx.to_vec()));
    }
    fn receiver_ran(&self, _: usize, _: u64, _: &mut dyn FnMut(usize)) -> Vec<(usize, String)> {
        Vec::new()
    }
    fn retry_waiting(&self, _: u64, _: &mut dyn FnMut(usize)) -> (Option<u64>, Vec<(usize, String)>) {
        (None, Vec::new())
    }
    fn poll_uplink(&self, now: u64, _: &mut dyn FnMut(usize)) -> bool {
        if !self.uplink {
            return false;
        }
        self.polls.lock().push(now);
        self.full_batches.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
    fn retry_uplink_held(&self, now: u64, _: &mut dyn FnMut(usize)) -> bool {
        self.retries.lock().push(now);
        self.still_held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
    fn uplink_rx_ns(&self) -> Option<u64> {
        self.uplink.then_some(0)
    }
    fn disconnect(&self, id: usize) {
        self.disconnected.lock().push(id);
    }
    fn release(&self, id: usize) {
        assert!(self.disconnected.lock().contains(&id), "guest {id}'s port released before it was disconnected");
        self.released.lock().push(id);
    }
    fn port_stats(&self, _: usize) -> Option<PortStats> {
        None
    }
    fn arp_answered(&self) -> (u64, u64) {
        (0, 0)
    }
    fn uplink_notifies(&self) -> u64 {
        0
    }
    fn bytes_per_guest(&self) -> u64 {
        0
    }
    fn start_capture(&self, _: CaptureTarget, _: u32, _: u64) {}
    fn capturing(&self) -> bool {
        false
    }
    fn next_captured(&self, _: u64) -> Option<Captured> {
        None
    }
}

/// A vNIC is a port with the guest's address, and ring pages made at
/// their first use: a frame for the guest (the back end raised `NET_RX`)
/// or the guest's own touch. Its port learns their frames before the guest
/// runs on, and they are charged to it.
#[test]
fn a_vnic_is_a_port_with_its_address_and_rings_made_at_their_first_use() {
    let m = machine_on(1, Ports::default());
    let st = abi::bundle::Settings { memory: 1 << 20, tenant: 3, ring_slots: 4, ..Default::default() };
    let c = m.create_guest("n", 0, &st, &[], &[], 0).unwrap();
    assert_eq!(c.ip, Some(abi::guest_ipv4(3, 0)));
    assert!(c.describe.ends_with("tenant 3"), "{}", c.describe);
    m.platform.scripts.lock().insert("t".into(), [Act::Touch(abi::layout::NIC_TX_RING + 100), Act::Block(u64::MAX)].into_iter().collect());
    m.create_guest("t", 0, &st, &[], &[], 0).unwrap();
    let (n, t) = (m.find("n").unwrap(), m.find("t").unwrap());
    {
        let ports = m.net.given.lock();
        let Given { guest, tenant, ipv4, events } = &ports[0];
        assert_eq!((*guest, *tenant, Some(*ipv4)), (n, 3, c.ip));
        let guests = m.guests.lock();
        let at = guests[n].as_ref().unwrap().memory.space.translate(&m.platform.mem(), abi::layout::EVENT_PAGE);
        assert_eq!(at.map(|(pa, _)| pa), Some(*events));
    }
    assert!(m.platform.rings.lock().is_empty(), "no ring page is made with the guest");
    let pages = abi::ring::slots_bytes(4) / 4096;
    let charged = |id: usize| m.guests.lock()[id].as_ref().unwrap().memory.charged_bytes();
    let before = (charged(n), charged(t));
    {
        let guests = m.guests.lock();
        let g = guests[n].as_ref().unwrap();
        let mem = m.platform.mem();
        assert!(g.memory.rings_deferred() && g.memory.space.translate(&mem, abi::layout::NIC_TX_RING).is_none());
        // The heap follows the rings.
        let heap = abi::layout::heap_start(4);
        assert_eq!(heap, abi::layout::nic_rx_ring(4) + 4096 * pages as u64);
        assert!(g.memory.is_zero_fill(heap) && !g.memory.is_zero_fill(heap - 1), "the heap starts there, not in the RX ring");
    }

    // n gets a frame, t touches its TX ring: both have their rings, and
    // their ports learn them, before either runs on.
    deliver(&m, n, 0);
    let mut cpu = CpuState::default();
    for _ in 0..4 {
        m.step(0, &mut cpu);
    }
    let made = m.net.rings_made.lock().clone();
    assert_eq!(made.iter().map(|(id, ..)| *id).collect::<Vec<_>>().len(), 2, "{made:?}");
    for (id, tx, rx) in &made {
        let guests = m.guests.lock();
        let g = guests[*id].as_ref().unwrap();
        let mem = m.platform.mem();
        let at = |va| g.memory.space.translate(&mem, va).map(|(pa, _)| pa);
        assert_eq!((tx.len(), rx.len()), (pages, pages));
        assert_eq!(at(abi::layout::NIC_TX_RING), Some(tx[0]), "the TX ring's first frame is the guest's");
        assert_eq!(at(abi::layout::nic_rx_ring(4)), Some(rx[0]), "the RX ring follows the TX ring's 4 slots");
        assert_eq!(at(abi::layout::nic_rx_ring(4) + 4096 * (pages as u64 - 1)), Some(rx[pages - 1]));
        assert!(!g.memory.rings_deferred());
    }
    assert_eq!(charged(n) - before.0, 2 * pages as u64 * 4096, "the rings are charged to the guest");
    assert_eq!(charged(t) - before.1, 2 * pages as u64 * 4096);
    assert!(m.platform.lines.lock().iter().all(|l| !l.contains("stopped")), "{:?}", m.platform.lines.lock());
}

/// The entries into guest `name`, by the clock.
fn entries(m: &TestMachine, name: &str) -> Vec<u64> {
    m.platform.entries.lock().iter().filter(|(n, _)| n == name).map(|&(_, t)| t).collect()
}

#[test]
fn a_wake_interrupts_a_busy_cpu_only_when_it_should_preempt() {
    let m = machine(2);
    // CPU 1 holds b and f, which sleep, and d, which computes.
    let names = ["a", "b", "c", "d", "e", "f"];
    let ids: Vec<usize> = names.iter().map(|n| guest(&m, n, if ["b", "f"].contains(n) { &[Act::Block(u64::MAX)] } else { &[] })).collect();
    let (b, d, f) = (ids[1], ids[3], ids[5]);
    let mut cpu1 = CpuState::default();
    while state(&m, b) != Some(State::Blocked { deadline: u64::MAX }) || state(&m, f) != Some(State::Blocked { deadline: u64::MAX }) {
        m.step(1, &mut cpu1);
    }
    // CPU 1 enters d (as far as its scheduler knows) ...
    let now = m.now();
    while m.scheds[1].lock().pick(now).map(|p| p.0) != Some(d) {}
    m.platform.woken.lock().clear();
    // ... and an event for b comes at once: b is not far enough behind d
    // to take the CPU from it, so d is not interrupted.
    deliver(&m, b, 0);
    assert_eq!(state(&m, b), Some(State::Runnable));
    assert_eq!(*m.platform.woken.lock(), [0usize; 0], "CPU 1 was interrupted for a guest that waits its turn");
    // Five milliseconds later d is far ahead of f: an event for f interrupts CPU 1.
    m.platform.clock.fetch_add(5_000_000, Ordering::SeqCst);
    deliver(&m, f, 0);
    assert_eq!(*m.platform.woken.lock(), [1], "f should preempt d");
}

#[test]
fn a_guest_woken_on_its_own_cpu_preempts_the_one_that_woke_it() {
    let m = machine_on(1, Ports::refusing());
    let w = guest(&m, "w", &[Act::Block(u64::MAX), Act::Exit(0)]);
    let k = guest(&m, "k", &[Act::Busy(3_000_000), Act::Kick, Act::Spin, Act::Spin]);
    let mut cpu = CpuState::default();
    m.step(0, &mut cpu);
    assert_eq!(state(&m, w), Some(State::Blocked { deadline: u64::MAX }));
    m.step(0, &mut cpu);
    assert_eq!(entries(&m, "k").len(), 1, "k computed 3 ms, then an interrupt came");
    m.net.deliveries.lock().push((k, w));
    while lines(&m, "[hv] guest w exited") == 0 {
        m.step(0, &mut cpu);
        assert!(m.now() < 2_000_000_000, "w never ran");
    }
    // k kicked its frame to w 3 ms into its slice; w, 3 ms behind it, runs
    // at its kick instead of at the end of k's slice.
    let kick = entries(&m, "k")[1];
    assert_eq!(entries(&m, "w")[1], kick + 1_000, "w ran {} ns after the kick", entries(&m, "w")[1] - kick);
}

#[test]
fn guests_that_hand_the_cpu_back_and_forth_arm_the_timer_once_a_slice() {
    let m = machine(1);
    // a and b wake each other and block at once (a sender and its
    // receiver), or sleep a second.
    let a = guest(&m, "a", &[Act::Sleep(1_000_000_000); 1_000]);
    let b = guest(&m, "b", &[Act::Sleep(1_000_000_000); 1_000]);
    let mut cpu = CpuState::default();
    steps(&m, 0, &mut cpu, 2);
    let (arms, start) = (m.platform.arms.load(Ordering::SeqCst), m.now());
    for _ in 0..500 {
        deliver(&m, a, 0);
        deliver(&m, b, 0);
        steps(&m, 0, &mut cpu, 2);
    }
    assert_eq!(entries(&m, "a").len() + entries(&m, "b").len(), 1_002);
    // 1,000 entries in about 1 ms of the fake clock: the slice armed
    // before them still covers them all (each would have armed a later one).
    assert!(m.now() - start < sched::SLICE_NS, "the rounds took {} ns", m.now() - start);
    let armed = m.platform.arms.load(Ordering::SeqCst) - arms;
    assert!(armed <= 1, "armed {armed} times");
    // A guest that computes is still preempted at the end of its slice,
    // however long ago the timer was armed.
    let c = guest(&m, "c", &[Act::Spin; 3]);
    deliver(&m, a, 0);
    while entries(&m, "c").is_empty() {
        m.step(0, &mut cpu);
    }
    while entries(&m, "a").len() < 502 {
        m.step(0, &mut cpu);
        assert!(entries(&m, "c").len() <= 3, "c ran on while a waited");
    }
    assert_eq!(state(&m, c), Some(State::Runnable));
}

#[test]
fn a_ticker_beside_spinners_runs_at_its_deadlines() {
    let m = machine(1);
    guest(&m, "tick", &[Act::Sleep(1_000_000); 300]);
    for i in 0..2 {
        guest(&m, &format!("spin{i}"), &[Act::Spin; 10_000]);
    }
    let mut cpu = CpuState::default();
    while !m.platform.scripts.lock()["tick"].is_empty() {
        m.step(0, &mut cpu);
    }
    let ticks = entries(&m, "tick");
    // After the first (all three start level), every sleep of 1 ms ends
    // 1 ms after it began (each entry costs the fake clock 1 us).
    let late: Vec<u64> = ticks.windows(2).skip(2).map(|w| w[1] - w[0] - 1_001_000).collect();
    assert!(late.iter().all(|&l| l <= 1_000), "late by {:?} ns", late.iter().max());
    // The spinners still share the rest evenly.
    let cpu_ns = |n: &str| m.guests.lock()[m.find(n).unwrap()].as_ref().unwrap().stats.cpu_ns;
    let (a, b) = (cpu_ns("spin0"), cpu_ns("spin1"));
    assert!(a.abs_diff(b) <= sched::SLICE_NS, "{a} vs {b}");
}

#[test]
fn a_guest_that_naps_and_computes_in_a_storm_gets_its_share_and_no_more() {
    let m = machine(1);
    // Naps 100 us, then computes a whole slice, again and again: every
    // wake-up preempts a spinner, but its time still counts.
    let script: Vec<Act> = (0..2_000).flat_map(|_| [Act::Sleep(100_000), Act::Spin]).collect();
    guest(&m, "storm", &script);
    for i in 0..2 {
        guest(&m, &format!("spin{i}"), &[Act::Spin; 10_000]);
    }
    let start = m.now();
    let mut cpu = CpuState::default();
    while m.now() < start + 2_000_000_000 {
        m.step(0, &mut cpu);
    }
    let cpu_ns = |n: &str| m.guests.lock()[m.find(n).unwrap()].as_ref().unwrap().stats.cpu_ns;
    let total = m.now() - start;
    let storm = cpu_ns("storm") as f64 / total as f64;
    assert!(storm <= 1.0 / 3.0 + 0.01, "the storm guest got {storm:.3} of the CPU");
    assert!(storm >= 1.0 / 3.0 - 0.05, "the storm guest got only {storm:.3} of the CPU");
}

#[test]
fn a_guest_that_stays_on_its_cpu_keeps_its_tables_and_one_that_moved_does_not() {
    let m = machine(2);
    let a = guest(&m, "a", &[]);
    let (mut cpu0, mut cpu1) = (CpuState::default(), CpuState::default());
    m.step(0, &mut cpu0);
    m.step(0, &mut cpu0);
    // CPU 1 has nothing: it takes `a` and runs it; then CPU 0 takes it back.
    m.step(1, &mut cpu1);
    assert_eq!(m.home[a].load(Ordering::SeqCst), 1);
    m.step(1, &mut cpu1);
    m.step(0, &mut cpu0);
    assert_eq!(m.home[a].load(Ordering::SeqCst), 0);
    m.step(0, &mut cpu0);
    m.step(0, &mut cpu0);
    assert_eq!(
        *m.platform.begins.lock(),
        [(0, true), (0, false), (1, true), (0, true), (0, false)],
        "a first run and every run after a move must reload the tables (the TLB may hold what changed elsewhere)"
    );
}

/// What the control channel was sent since the last call.
fn control_lines(m: &TestMachine) -> Vec<String> {
    m.poll_control(&mut Vec::new());
    core::mem::take(&mut *m.platform.control.lock()).into_iter().map(|l| l.strip_prefix("0:").map(String::from).unwrap_or(l)).collect()
}

fn watched() -> abi::control::StartOptions {
    abi::control::StartOptions { watch: true, ..Default::default() }
}

#[test]
fn a_wait_and_a_watch_are_answered_with_the_end_after_the_last_line() {
    use abi::control::Tenant;
    let m = machine(1);
    m.platform.scripts.lock().insert("a".into(), [Act::Exit(3)].into());
    m.platform.scripts.lock().insert("b".into(), [Act::Block(u64::MAX)].into());
    assert_eq!(m.start(0, "a", "t", 1 << 20, Tenant::None, &Default::default(), &[], &[]), Ok((None, None)));
    assert_eq!(
        m.start(
            0,
            "b",
            "sha256:0707070707070707070707070707070707070707070707070707070707070707",
            1 << 20,
            Tenant::None,
            &watched(),
            &[],
            &[]
        ),
        Ok((None, None)),
        "started by digest"
    );
    assert_eq!(m.wait(0, "a"), Ok(None), "not ended yet: answered when it ends");
    assert!(m.wait(0, "nobody").is_err());
    let mut cpu = CpuState::default();
    steps(&m, 0, &mut cpu, 10);
    m.stop("b").unwrap();
    assert_eq!(steps(&m, 0, &mut cpu, 10), Pass::Done);
    let out = control_lines(&m);
    let ended = |name: &str, state: &str, code: &str, why: &str| {
        format!(r#"{{"event":"ended","guest":"{name}","state":"{state}","exit_code":{code},"stop_reason":{why}}}"#)
    };
    // a's wait; then b's console (the hypervisor's lines about it: why it
    // stopped, its registers, ...) and its end; a's console is not watched.
    assert_eq!(out[0], ended("a", "exited", "3", "null"));
    assert_eq!(out[1], r#"{"console":"b","line":"[hv] guest b stopped: stopped by the operator (ctl stop)"}"#);
    assert!(out[2..out.len() - 1].iter().all(|l| l.starts_with(r#"{"console":"b","line":"[hv] guest b "#)), "{out:?}");
    assert_eq!(out[out.len() - 1], ended("b", "stopped", "null", r#""operator""#));
    // A wait on an ended guest is answered at once, and once.
    assert_eq!(m.wait(0, "a").map(|e| e.map(|e| e.exit_code)), Ok(Some(Some(3))));
    assert_eq!(control_lines(&m), Vec::<String>::new());
    assert!(m.watch_console(0, "a").is_err(), "an ended guest has no console to watch");
}

#[test]
fn events_report_every_start_and_end() {
    let m = machine(1);
    m.watch_events(0);
    guest(&m, "a", &[Act::Exit(0)]);
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    let out = control_lines(&m);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with(r#"{"event":"started","guest":"a""#) && out[1].starts_with(r#"{"event":"ended","guest":"a""#), "{out:?}");
}

#[test]
fn images_are_named_by_digest_loaded_once_and_removed_when_unused() {
    use crate::image::tests::valid_image_file;
    let m = machine(1);
    let free = m.platform.mem.lock().live;
    let (name, digest) = m.add_image("u.hermit", &valid_image_file(1)).unwrap();
    assert_eq!(name, "u.hermit");
    assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64, "{digest}");
    // The same bytes under another name: loaded once, under its first name.
    assert_eq!(m.add_image("v.hermit", &valid_image_file(1)), Ok((name.clone(), digest.clone())));
    // Other bytes under a loaded name: refused, so a rebuilt image never
    // silently runs the old code.
    assert!(m.add_image("u.hermit", &valid_image_file(2)).unwrap_err().contains("another image named u.hermit"));
    assert!(m.add_image("x.hermit", b"not an image").is_err());
    let listed: Vec<_> = m.images().into_iter().map(|i| (i.name, i.guests)).collect();
    assert_eq!(listed, [("t".to_string(), 0), ("u.hermit".to_string(), 0)]);

    m.platform.scripts.lock().insert("g".into(), [Act::Block(u64::MAX)].into());
    m.start(0, "g", &digest, 1 << 20, abi::control::Tenant::None, &Default::default(), &[], &[]).unwrap();
    assert_eq!(m.images()[1].guests, 1);
    assert_eq!(m.remove_image(&digest).unwrap_err().reason, Some(abi::control::Reason::InUse));
    m.stop("g").unwrap();
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    assert_eq!(m.remove_image(&digest), Ok(name));
    assert_eq!(m.images().len(), 1);
    assert_eq!(m.platform.mem.lock().live, free, "the image's frames went back");
    assert!(
        m.remove_image("u.hermit").is_err()
            && m.start(0, "h", "u.hermit", 1 << 20, abi::control::Tenant::None, &Default::default(), &[], &[]).is_err()
    );
    // Its entry is reused.
    m.add_image("w.hermit", &valid_image_file(3)).unwrap();
    assert_eq!(m.images.lock().len(), 2);
}

#[test]
fn named_tenants_are_numbered_kept_and_removed_when_empty() {
    use abi::control::Tenant;
    let m = machine_on(1, Ports::default());
    // Tenant 0 has had a guest: a name gets the next number.
    guest(&m, "boot", &[Act::Exit(0)]);
    m.create_guest("boot2", 0, &abi::bundle::Settings { memory: 1 << 20, tenant: 0, ..Default::default() }, &[], &[], 0).unwrap();
    let opts = abi::control::StartOptions { weight: Some(300), cap: Some(20), ..Default::default() };
    assert_eq!(m.start(0, "w", "t", 1 << 20, Tenant::Named("acme"), &opts, &[], &[]).map(|(ip, t)| (ip.is_some(), t)), Ok((true, Some(1))));
    assert_eq!(m.start(0, "v", "t", 1 << 20, Tenant::Named("acme"), &opts, &[], &[]).map(|(_, t)| t), Ok(Some(1)));
    assert_eq!(m.start(0, "z", "t", 1 << 20, Tenant::Named("zed"), &opts, &[], &[]).map(|(_, t)| t), Ok(Some(2)));
    let rows: Vec<_> = m.tenants().into_iter().map(|r| (r.name, r.id, r.guests)).collect();
    assert_eq!(rows, [(None, 0, 1), (Some("acme".into()), 1, 2), (Some("zed".into()), 2, 1)]);
    let e = m.remove_tenant("acme").unwrap_err();
    assert!(e.why.contains("still has 2 guest") && e.reason == Some(abi::control::Reason::InUse), "{e:?}");
    assert!(m.remove_tenant("nobody").is_err());
    let w = m.find("w").unwrap();
    // The options reached the scheduler: a 20% cap is a fifth of its period.
    let budget = Some(sched::CAP_PERIOD_NS / 5);
    assert_eq!(m.scheds[m.home[w].load(Ordering::SeqCst)].lock().weight_budget(w), Some((300, budget)));
}

#[test]
fn each_client_has_its_own_session_and_watches_until_it_goes() {
    let m = machine(1);
    let mut sessions = Vec::new();
    let send = |client: usize, bytes: Option<&[u8]>, sessions: &mut Vec<crate::control::Session>| {
        m.platform.inputs.lock().push((client, bytes.map(<[u8]>::to_vec)));
        m.poll_control(sessions);
        core::mem::take(&mut *m.platform.control.lock())
    };
    // Client 1 watches events and has half a request under way; client 0
    // asks for the version meanwhile.
    assert_eq!(send(1, Some(b"events\nver"), &mut sessions), [r#"1:{"watching":"events"}"#]);
    assert_eq!(send(0, Some(b"version\n"), &mut sessions), [r#"0:{"protocol":7,"abi":10}"#]);
    assert_eq!(send(1, Some(b"sion\n"), &mut sessions), [r#"1:{"protocol":7,"abi":10}"#], "its half line was its own");
    guest(&m, "a", &[Act::Exit(0)]);
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    let out = send(0, None, &mut Vec::new());
    assert!(out.len() == 2 && out.iter().all(|l| l.starts_with(r#"1:{"event":"#)), "only client 1 watches: {out:?}");
    // A new client on port 1 watches nothing of the old one's.
    assert_eq!(send(1, None, &mut sessions), Vec::<String>::new());
    guest(&m, "b", &[Act::Exit(0)]);
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 10), Pass::Done);
    assert_eq!(send(1, Some(b"ver"), &mut sessions), Vec::<String>::new());
    // Nor its half line.
    send(1, None, &mut sessions);
    let out = send(1, Some(b"list\n"), &mut sessions);
    assert!(out.len() == 1 && out[0].starts_with(r#"1:{"guests":"#), "{out:?}");
}

/// A hypervisor starts guests for as long as it runs: an ended guest's
/// record stays (listed, waited for) until `remove` forgets it or its room
/// is needed, the longest ended first; an id given again carries nothing
/// of the guest it was (its port is released, after its disconnection;
/// its event page and status are the new guest's).
#[test]
fn ended_guests_make_room_for_new_ones_the_longest_ended_first() {
    let m = machine_on(1, Ports::default());
    for i in 0..16 {
        guest(&m, &format!("g{i}"), &[Act::Exit(i)]);
    }
    assert_eq!(steps(&m, 0, &mut CpuState::default(), 100), Pass::Done);
    let rows = m.list().unwrap();
    assert_eq!(rows.len(), 16);
    assert!(rows.iter().all(|r| r.state == GuestState::Exited), "{rows:?}");
    assert_eq!(m.wait(0, "g3").map(|e| e.and_then(|e| e.exit_code)), Ok(Some(3)), "an ended guest's record is kept");

    // The room is full of records: a new guest takes that of the guest
    // that ended first, g0 (one CPU runs them in order).
    let new = guest(&m, "new", &[Act::Block(u64::MAX)]);
    assert_eq!(new, 0);
    assert!(m.find("g0").is_none() && m.wait(0, "g0").is_err(), "g0's record is forgotten");
    let names: Vec<String> = m.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!((names.len(), names[0].as_str(), names[15].as_str()), (16, "g1", "new"), "listed in the order they were created");
    let page = m.guests.lock()[0].as_deref().and_then(|g| m.platform.events_of(g)).unwrap().page;
    assert_eq!(m.event_pages[0].get().unwrap().page, page, "the id's event page is the new guest's");
    assert_eq!(m.status(0).name, "new");
    assert_eq!(*m.net.released.lock(), [0]);

    // `remove` forgets an ended guest's record at once, its name is free
    // again, and its id is the next one given; a live guest is refused.
    assert_eq!(m.remove_guest("new").unwrap_err().reason, Some(abi::control::Reason::NotEnded));
    assert_eq!(m.remove_guest("nobody").unwrap_err().reason, Some(abi::control::Reason::NotFound));
    assert_eq!(m.stop("g3").unwrap_err().reason, Some(abi::control::Reason::Ended));
    m.remove_guest("g5").unwrap();
    assert!(m.find("g5").is_none());
    m.wake(5, 0);
    assert_eq!(guest(&m, "g5", &[Act::Exit(55)]), 5, "the name and the id are given again");
    assert_eq!(*m.net.released.lock(), [0, 5]);
    steps(&m, 0, &mut CpuState::default(), 20);
    assert_eq!(m.wait(0, "g5").map(|e| e.and_then(|e| e.exit_code)), Ok(Some(55)), "the new g5's end, not the old one's");
    assert_eq!(m.list().unwrap().len(), 16);
    assert_eq!(m.statuses().filter(|(_, s)| s.state.load(Ordering::Relaxed) < EXITED).count(), 1, "only `new` is live");
}

/// A machine with an uplink (its host last sent at 0 on the clock) that
/// interrupts if `irq`, and one guest that sleeps for good.
fn uplink_machine(irq: bool) -> Machine<Fake, Ports> {
    let m = machine_on(1, Ports { uplink: true, ..Default::default() });
    m.platform.uplink_irq.store(irq, Ordering::SeqCst);
    m.platform.scripts.lock().insert("s".into(), [Act::Block(u64::MAX)].into_iter().collect());
    m.create_guest("s", 0, &abi::bundle::Settings { memory: 1 << 20, ..Default::default() }, &[], &[], 0).unwrap();
    m
}

#[test]
fn a_polled_uplink_is_polled_every_pass_and_each_poll_is_counted() {
    let m = uplink_machine(false);
    let mut st = CpuState::default();
    steps(&m, 0, &mut st, 5);
    assert_eq!(m.net.polls.lock().len(), 5);
    let stats = m.machine_stats();
    assert_eq!((stats.uplink_interrupts, stats.uplink_polls), (0, 5));
    // Idle within a second of the host's last frame: a short tick.
    m.platform.clock.store(500_000_000, Ordering::SeqCst);
    m.step(0, &mut st);
    assert_eq!(m.platform.armed.load(Ordering::SeqCst), 500_000_000 + UPLINK_POLL_NS);
}

#[test]
fn an_uplink_with_interrupts_is_polled_only_when_it_interrupted() {
    let m = uplink_machine(true);
    let mut st = CpuState::default();
    steps(&m, 0, &mut st, 3);
    assert!(m.net.polls.lock().is_empty(), "polled without an interrupt");
    // The idle CPU 0 sleeps a whole tick: no timer to poll, however recent the host's frame.
    let now = m.platform.now_ns();
    m.step(0, &mut st);
    assert_eq!(m.platform.armed.load(Ordering::SeqCst), now + IDLE_TICK_NS);

    m.platform.uplink_interrupt();
    m.step(0, &mut st);
    assert_eq!(m.net.polls.lock().len(), 1);
    // The flag was taken: the next passes do not poll.
    steps(&m, 0, &mut st, 3);
    assert_eq!(m.net.polls.lock().len(), 1);
    let stats = m.machine_stats();
    assert_eq!((stats.uplink_interrupts, stats.uplink_polls), (1, 0));
}

#[test]
fn a_full_batch_is_followed_by_polls_until_the_device_is_empty() {
    let m = uplink_machine(true);
    let mut st = CpuState::default();
    m.step(0, &mut st); // the guest goes to sleep
    // Three full batches, then a short one: four polls for one interrupt,
    // one per pass, and while more may wait an idle CPU 0 does not halt.
    m.net.full_batches.store(3, Ordering::SeqCst);
    m.platform.uplink_interrupt();
    let idles = m.platform.idles.load(Ordering::SeqCst);
    steps(&m, 0, &mut st, 4);
    assert_eq!(m.net.polls.lock().len(), 4);
    assert_eq!(m.platform.idles.load(Ordering::SeqCst), idles + 1, "halted only after the device was empty");
    steps(&m, 0, &mut st, 10);
    assert_eq!(m.net.polls.lock().len(), 4);
    assert_eq!(m.machine_stats().uplink_polls, 0, "polls after a full batch are the interrupt's");
}

#[test]
fn frames_held_for_a_full_ring_are_retried_without_polling_the_device() {
    let m = uplink_machine(true);
    let mut st = CpuState::default();
    // The poll after the interrupt held frames; they wait two more retries.
    m.net.still_held.store(2, Ordering::SeqCst);
    m.platform.uplink_interrupt();
    m.step(0, &mut st);
    assert_eq!(m.net.retries.lock().len(), 1);
    let now = m.platform.now_ns();
    m.step(0, &mut st);
    assert_eq!(m.platform.armed.load(Ordering::SeqCst), now + UPLINK_POLL_NS, "held frames are retried soon");
    steps(&m, 0, &mut st, 5);
    assert_eq!(m.net.retries.lock().len(), 3, "retried until none was held, then left alone");
    assert_eq!(m.net.polls.lock().len(), 1);
    let now = m.platform.now_ns();
    m.step(0, &mut st);
    assert_eq!(m.platform.armed.load(Ordering::SeqCst), now + IDLE_TICK_NS);
}

/// `pause` parks a sleeping guest (woken for it); `clone` refuses a guest
/// that is not paused and copies one that is; the clones run on their
/// own, the template stays paused until a machine that ends when idle
/// stops it, and every frame comes back.
#[test]
fn a_paused_guest_is_cloned_and_everything_ends_with_its_memory_back() {
    use abi::control::Reason;
    let m = machine(1);
    let before = m.platform.mem.lock().live;
    let t = guest(&m, "t", &[Act::Block(u64::MAX), Act::Exit(3)]);
    // Another guest keeps the machine from ending (it ends when only
    // paused guests are left).
    let w = guest(&m, "w", &[Act::Block(u64::MAX), Act::Exit(0)]);
    let mut cpu = CpuState::default();
    m.step(0, &mut cpu);
    m.step(0, &mut cpu);
    assert_eq!(state(&m, t), Some(State::Blocked { deadline: u64::MAX }));
    assert_eq!(m.clone_guest("t", "c", None, None).unwrap_err().reason, Some(Reason::NotPaused));
    assert_eq!(m.resume("t").unwrap_err().reason, Some(Reason::NotPaused));
    m.pause("t").unwrap();
    m.step(0, &mut cpu);
    assert_eq!(m.status(t).state.load(Ordering::SeqCst), PAUSED, "a sleeping guest is woken to be parked");
    assert_eq!(state(&m, t), Some(State::Blocked { deadline: u64::MAX }));
    // An event for a paused guest wakes it only to be parked again.
    deliver(&m, t, 0);
    m.step(0, &mut cpu);
    assert_eq!(m.status(t).state.load(Ordering::SeqCst), PAUSED);

    for c in ["c-0", "c-1"] {
        m.platform.scripts.lock().insert(c.into(), [Act::Exit(0)].into_iter().collect());
    }
    let made = m.clone_guest("t", "c", Some((0, 2)), None).unwrap();
    assert_eq!((made.count, made.first.as_str(), made.error), (2, "c-0", None));
    assert_eq!(m.clone_guest("t", "c", Some((0, 1)), None).unwrap_err().reason, Some(Reason::Exists));
    // Clones share the template's start page (ABI 9); each has its own
    // name in its own shared page. One given other arguments has a start
    // page of its own with them.
    m.platform.scripts.lock().insert("d".into(), [Act::Exit(0)].into_iter().collect());
    m.clone_guest("t", "d", None, Some(&["other"])).unwrap();
    {
        let mut mem = m.platform.mem();
        let mut guests = m.guests.lock();
        let mut look = |name: &str| {
            let g = guests[m.find(name).unwrap()].as_mut().unwrap();
            let start = g.memory.space.translate(&mem, abi::layout::START_PAGE).unwrap().0;
            let shared = g.memory.space.translate(&mem, abi::layout::EVENT_PAGE).unwrap().0;
            let mut si = [0u8; abi::StartInfo::SIZE];
            g.memory.read(&mut mem, abi::layout::START_INFO, &mut si).unwrap();
            let si = abi::StartInfo::from_bytes(&si);
            let mut arg = alloc::vec![0u8; si.args_len as usize];
            g.memory.read(&mut mem, si.args_addr, &mut arg).unwrap();
            (start, shared, crate::guest::tests::name_of(g, &mut mem), arg)
        };
        let (t_start, t_shared, t_name, t_args) = look("t");
        let (c0, c1, d) = (look("c-0"), look("c-1"), look("d"));
        assert_eq!((c0.0, c1.0), (t_start, t_start), "one start page");
        assert!(t_shared != c0.1 && c0.1 != c1.1 && d.1 != c0.1, "a shared page each");
        assert_eq!([t_name.as_str(), &c0.2, &c1.2, &d.2], ["t", "c-0", "c-1", "d"]);
        assert_eq!((c0.3.as_slice(), t_args.as_slice()), (&b""[..], &b""[..]));
        assert!(d.0 != t_start && d.3 == b"other\0", "{:?}", d.3);
    }
    assert_eq!(steps(&m, 0, &mut cpu, 20), Pass::Again);
    assert_eq!(lines(&m, "[hv] guest t stopped: "), 0, "w still lives");
    deliver(&m, w, 0);
    assert_eq!(steps(&m, 0, &mut cpu, 50), Pass::Done, "the paused template is stopped once nothing else is live");
    for l in [
        "[hv] guest c-0 exited with code 0",
        "[hv] guest c-1 exited with code 0",
        "[hv] guest d exited with code 0",
        "[hv] guest t stopped: ",
    ] {
        assert_eq!(lines(&m, l), 1, "{l}: {:?}", m.platform.lines.lock());
    }
    assert_eq!(lines(&m, "[hv] guest t exited"), 0, "the template never ran again");
    assert_eq!(m.paused.load(Ordering::SeqCst), 0);
    assert_eq!(m.platform.mem.lock().live, before, "every frame is back, the frozen ones too");
}

/// `resume` lets a paused guest go on where it was.
#[test]
fn a_resumed_guest_goes_on() {
    let m = machine(1);
    let t = guest(&m, "t", &[Act::Block(u64::MAX), Act::Exit(3)]);
    guest(&m, "w", &[Act::Busy(1_000_000), Act::Exit(0)]);
    let mut cpu = CpuState::default();
    m.step(0, &mut cpu);
    m.pause("t").unwrap();
    for _ in 0..5 {
        if m.status(t).state.load(Ordering::SeqCst) != PAUSED {
            m.step(0, &mut cpu);
        }
    }
    assert_eq!(m.status(t).state.load(Ordering::SeqCst), PAUSED);
    m.resume("t").unwrap();
    assert_eq!(m.paused.load(Ordering::SeqCst), 0);
    assert_eq!(steps(&m, 0, &mut cpu, 10), Pass::Done);
    assert_eq!(lines(&m, "[hv] guest t exited with code 3"), 1);
}

/// `bytes` (a snapshot) with its length and digest made right again.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = bytes.len() as u64;
    bytes[16..24].copy_from_slice(&len.to_le_bytes());
    let body = bytes.len() - 32;
    let d = super::create::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&d);
    bytes
}

/// A paused guest saved and made again from its snapshot: the copy has
/// its pages, registers and arguments, a new address in the tenant asked
/// for, `CLONED` and the next generation, and a clock that goes on from
/// the saved one; files that are cut, altered or for an image not loaded
/// are refused and cost nothing; everything ends with its memory back.
#[test]
fn a_guest_saved_and_restored_goes_on_with_its_pages_and_a_new_identity() {
    use abi::control::{Reason, Tenant};
    let m = machine_on(1, Ports::default());
    let before = m.platform.mem.lock().live;
    let st = abi::bundle::Settings { memory: 1 << 20, tenant: 3, ring_slots: 4, ..Default::default() };
    m.platform.scripts.lock().insert("t".into(), [Act::Block(u64::MAX), Act::Exit(3)].into_iter().collect());
    m.create_guest("t", 0, &st, &["a", "b"], &["K=V"], 0).unwrap();
    let t = m.find("t").unwrap();
    let w = guest(&m, "w", &[Act::Block(u64::MAX), Act::Exit(0)]);
    let mut cpu = CpuState::default();
    m.step(0, &mut cpu);
    m.step(0, &mut cpu);
    let heap = abi::layout::heap_start(4);
    {
        let mut guests = m.guests.lock();
        let g = guests[t].as_mut().unwrap();
        g.memory.write(&mut m.platform.mem(), heap + 100, b"kept across").unwrap();
        // (Which makes its rings: they are saved too.)
        g.memory.write(&mut m.platform.mem(), abi::layout::NIC_TX_RING + 8, b"in a ring").unwrap();
    }
    assert_eq!(m.snapshot("t").unwrap_err().reason, Some(Reason::NotPaused));
    m.pause("t").unwrap();
    m.step(0, &mut cpu);
    assert_eq!(m.status(t).state.load(Ordering::SeqCst), PAUSED);
    {
        // A file bigger than the heap's room is refused before it is made.
        let mut guests = m.guests.lock();
        let images = m.images.lock();
        let img = images[0].image.as_ref().unwrap();
        let why = guests[t].as_mut().unwrap().snapshot(&mut m.platform.mem(), img, [7; 32], &st, 0, 4096).unwrap_err();
        assert!(why.contains("more than the hypervisor's heap has room for (4096 bytes)"), "{why}");
    }
    let (data, digest) = m.snapshot("t").unwrap();
    assert_eq!(digest, format!("sha256:{}", data_hex(&super::create::digest(&data))));
    let snap = abi::snapshot::Snapshot::parse(&data).unwrap();
    assert_eq!((snap.name, snap.image_name, snap.state.blocked, snap.state.settings), ("t", "t", true, st));
    assert_eq!(snap.args().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(snap.state.image_digest, [7; 32]);
    assert!(snap.page(abi::layout::START_PAGE).is_none() && snap.page(abi::layout::TIME_PAGE).is_none());
    assert!(snap.page(abi::layout::EVENT_PAGE).is_some() && snap.page(abi::layout::NIC_TX_RING).is_some());
    assert_eq!(&snap.page(heap).unwrap().data[100..111], b"kept across");
    assert!(snap.page(heap + 4096).is_none(), "untouched heap is not saved");
    let saved_clock = snap.state.clock_ns;

    // Restored into another tenant, at a later time on this clock.
    m.platform.clock.fetch_add(5_000_000_000, Ordering::SeqCst);
    m.platform.scripts.lock().insert("r".into(), [Act::Exit(0)].into_iter().collect());
    let (ip, tenant) = m.restore(0, "r", Some(Tenant::Named("moved")), Some(&["new", "args"]), &data).unwrap();
    let tenant = tenant.unwrap();
    assert_ne!(tenant, 3);
    assert_eq!(ip, Some(abi::guest_ipv4(tenant, 0)));
    let r = m.find("r").unwrap();
    let live = m.platform.mem.lock().live;
    {
        let mut guests = m.guests.lock();
        let [Some(tg), Some(rg)] = guests.get_disjoint_mut([t, r]).unwrap() else { panic!("both in the table") };
        let mut mem = m.platform.mem();
        let mut b = [0u8; 11];
        rg.memory.read(&mut mem, heap + 100, &mut b).unwrap();
        assert_eq!(&b, b"kept across");
        let mut b = [0u8; 9];
        rg.memory.read(&mut mem, abi::layout::NIC_TX_RING + 8, &mut b).unwrap();
        assert_eq!(&b, b"in a ring");
        assert_eq!((&rg.regs, rg.is_blocked()), (&tg.regs, true));
        assert_eq!(rg.fpu.0, tg.fpu.0);
        let word = |g: &mut Box<Guest>, mem: &mut _, at: u64| {
            let mut b = [0u8; 8];
            g.memory.read(mem, abi::layout::EVENT_PAGE + at, &mut b).unwrap();
            u64::from_le_bytes(b)
        };
        assert_ne!(word(rg, &mut mem, 0) & events::CLONED, 0);
        assert_eq!(word(rg, &mut mem, abi::layout::EVENT_GENERATION_OFFSET), 1);
        let now = m.platform.clock.load(Ordering::SeqCst);
        assert_eq!(word(rg, &mut mem, abi::layout::EVENT_CLOCK_OFFSET) as i64, saved_clock as i64 - now as i64);
        assert_eq!(rg.guest_clock(now), saved_clock, "its clock goes on from the saved one");
        assert!(rg.memory.charged_bytes() >= 4 * 4096, "its pages are its own and charged");
        // Its start page is new: its name and the arguments it was given.
        let mut b = [0u8; core::mem::size_of::<abi::StartInfo>()];
        rg.memory.read(&mut mem, abi::layout::START_INFO, &mut b).unwrap();
        let si = abi::StartInfo::from_bytes(&b);
        let mut s = vec![0u8; si.args_len as usize];
        rg.memory.read(&mut mem, si.args_addr, &mut s).unwrap();
        assert_eq!((si.argc, &s[..]), (2, &b"new\0args\0"[..]));
    }
    // Refused, each for its reason, without a frame taken.
    assert!(m.restore(0, "r", None, None, &data).unwrap_err().contains("exists already"));
    assert!(m.restore(0, "x", None, None, &data[..data.len() - 1]).unwrap_err().contains("truncated"));
    let mut flipped = data.clone();
    flipped[300] ^= 1;
    assert!(m.restore(0, "x", None, None, &flipped).unwrap_err().contains("altered"));
    let mut other = data.clone();
    other[24] ^= 1;
    assert!(m.restore(0, "x", None, None, &resealed(other)).unwrap_err().contains("is not loaded here"));
    assert!(m.restore(0, "x", Some(Tenant::None), None, &data).unwrap_err().contains("has a vNIC"));
    assert_eq!(m.platform.mem.lock().live, live, "a refused snapshot takes nothing");
    assert!(m.find("x").is_none());

    // Everything ends: the restored guest exits, the paused one is stopped.
    deliver(&m, w, 0);
    assert_eq!(steps(&m, 0, &mut cpu, 50), Pass::Done);
    assert_eq!(lines(&m, "[hv] guest r exited with code 0"), 1, "{:?}", m.platform.lines.lock());
    assert_eq!(m.platform.mem.lock().live, before, "every frame is back");
}

fn data_hex(d: &[u8]) -> String {
    let mut s = String::new();
    abi::control::write_hex(&mut s, d).unwrap();
    s
}
