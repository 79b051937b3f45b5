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

use crate::arch::x86_64::paging::{Mem, free_frames, phys_to_virt};
use crate::arch::x86_64::{apic, cpu, entry, serial};
use crate::println;
use abi::bundle::{Bundle, FLAG_EXIT_WHEN_IDLE};
use abi::time::{TimeInfo, events};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use hermit_entry::boot_info::{BootInfo, HardwareInfo, LoadInfo, PlatformInfo, RawBootInfo};
use hypervisor::guest::{Guest, LoadedImage, Step};
use hypervisor::image::Image;
use hypervisor::mm::PhysMem;
use hypervisor::sched::{Scheduler, Stop};
use spin::{Mutex, Once};

const _: () = assert!(core::mem::size_of::<RawBootInfo>() as u64 <= abi::layout::START_INFO_OFFSET);

/// An idle CPU wakes at least this often to look for work and for the end.
const IDLE_TICK_NS: u64 = 10_000_000;

fn sizes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

/// What all CPUs share.
struct Host {
    kernel_root: u64,
    time: TimeInfo,
    /// Guests by id; `None` while a CPU runs it (or after it ended).
    guests: Mutex<Vec<Option<Box<Guest>>>>,
    /// One scheduler per CPU.
    scheds: Vec<Mutex<Scheduler>>,
    /// Guests not yet ended.
    live: AtomicUsize,
    exited: AtomicU32,
    stopped: AtomicU32,
}

static HOST: Once<Host> = Once::new();

impl Host {
    fn now(&self) -> u64 {
        self.time.ns(cpu::rdtsc())
    }

    fn busiest_other(&self, me: usize) -> Option<(usize, usize)> {
        (0..self.scheds.len())
            .filter(|&c| c != me)
            .map(|c| (c, self.scheds[c].lock().runnable_len()))
            .max_by_key(|&(_, n)| n)
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
        true
    }

    /// Runs guest `id` (taken out of the table) for at most `slice_ns`.
    fn run_one(&self, g: &mut Guest, cpu_index: usize, slice_ns: u64, next_timer: Option<u64>) -> (Step, u64) {
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
        // SAFETY: the guest's PML4 maps the hypervisor's half like every
        // other address space (copied from the kernel root at creation).
        unsafe { cpu::write_cr3(g.memory.space.root()) };
        let step = loop {
            entry::run(&mut g.regs, &mut g.fpu, g.via_sysret);
            let vector = g.regs.vector;
            let step = g.handle_exit(&mut mem, &mut |l| println!("{l}"));
            if (32..255).contains(&vector) {
                apic::eoi();
            }
            if step != Step::Resume {
                break step;
            }
        };
        // SAFETY: back to the hypervisor's own tables: the guest may move
        // to another CPU and end there, freeing the tables it ran on.
        unsafe { cpu::write_cr3(self.kernel_root) };
        let ran = self.time.ns(cpu::rdtsc()) - self.time.ns(start);
        g.stats.cpu_ns += ran;
        if g.stats.cpu_ns_per_cpu.len() <= cpu_index {
            g.stats.cpu_ns_per_cpu.resize(cpu_index + 1, 0);
        }
        g.stats.cpu_ns_per_cpu[cpu_index] += ran;
        (step, ran)
    }

    /// Reports and frees a guest that ended.
    fn finish(&self, mut g: Box<Guest>, how: Result<i32, String>) {
        g.flush_console(&mut |l| println!("{l}"));
        match &how {
            Ok(code) => println!("[hv] guest {} exited with code {code}", g.name),
            Err(why) => println!("[hv] guest {} stopped: {why}", g.name),
        }
        println!("{}", stats_line(&g, if how.is_ok() { "exited" } else { "stopped" }));
        match how {
            Ok(_) => self.exited.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stopped.fetch_add(1, Ordering::Relaxed),
        };
        g.destroy(&mut Mem);
        self.live.fetch_sub(1, Ordering::Release);
    }

    /// The scheduling loop of CPU `me`; returns when no guest is left.
    fn cpu_loop(&self, me: usize) {
        let mut timed_out = Vec::new();
        let mut console_in = String::new();
        let mut last_balance = 0;
        loop {
            if me == 0 {
                self.poll_console(&mut console_in);
            }
            if self.live.load(Ordering::Acquire) == 0 {
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
            if !timed_out.is_empty() {
                let mut guests = self.guests.lock();
                for id in timed_out.drain(..) {
                    if let Some(g) = guests[id].as_mut() {
                        g.raise_events(&mut Mem, events::TIMER);
                    }
                }
            }
            let Some((id, slice)) = pick else {
                if self.balance(me, 1) {
                    continue;
                }
                // Nothing runnable here: halt until the next deadline, or a
                // tick to look for work and for the end.
                let wake = next_timer.unwrap_or(u64::MAX).min(now + IDLE_TICK_NS);
                apic::arm(self.time.tsc(wake));
                cpu::idle();
                apic::eoi();
                continue;
            };
            let Some(mut g) = self.guests.lock()[id].take() else { continue };
            let (step, ran) = self.run_one(&mut g, me, slice, next_timer);
            let now = self.now();
            let stop = match step {
                Step::Resume | Step::Preempted => Stop::Preempted,
                Step::Yield => Stop::Yielded,
                Step::Block { deadline } => Stop::Blocked { deadline },
                Step::Exited(code) => {
                    self.scheds[me].lock().remove(id);
                    self.finish(g, Ok(code));
                    continue;
                }
                Step::Stopped(why) => {
                    self.scheds[me].lock().remove(id);
                    self.finish(g, Err(why));
                    continue;
                }
            };
            self.guests.lock()[id] = Some(g);
            self.scheds[me].lock().put(id, now, ran, stop);
        }
    }

    /// Reads console input; `stats` prints every waiting guest's accounting line.
    fn poll_console(&self, line: &mut String) {
        while let Some(b) = serial::try_read() {
            match b {
                b'\r' | b'\n' => {
                    if line.trim() == "stats" {
                        for g in self.guests.lock().iter().flatten() {
                            println!("{}", stats_line(g, "running"));
                        }
                    }
                    line.clear();
                }
                _ if line.len() < 64 => line.push(b as char),
                _ => {}
            }
        }
    }
}

/// One JSON line with what a guest has cost.
fn stats_line(g: &Guest, state: &str) -> String {
    let s = &g.stats;
    let per_cpu: Vec<String> = s.cpu_ns_per_cpu.iter().map(|n| format!("{n}")).collect();
    format!(
        r#"{{"event":"guest_stats","guest":"{}","state":"{state}","cpu_ns":{},"cpu_ns_per_cpu":[{}],"wakeups":{},"preemptions":{},"yields":{},"hypercalls":{},"memory_bytes":{},"memory_limit":{},"created_ns":{},"first_entry_ns":{}}}"#,
        g.name,
        s.cpu_ns,
        per_cpu.join(","),
        s.wakeups,
        s.preemptions,
        s.yields,
        s.hypercalls,
        g.memory.charged_bytes(),
        g.memory.limit_bytes(),
        s.created_ns,
        s.first_entry_ns
    )
}

/// An application processor: waits for the boot CPU to create the guests,
/// then schedules until none is left, then halts.
pub fn ap_entry(me: usize) -> ! {
    let host = HOST.wait();
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

    let mut images: Vec<Result<LoadedImage, String>> = Vec::new();
    for img in bundle.images() {
        let loaded = match Image::parse(img.data) {
            Ok(parsed) => LoadedImage::load(&mut mem, img.name, &parsed).ok_or_else(|| String::from("the machine is out of memory")),
            Err(e) => Err(format!("{e}")),
        };
        match &loaded {
            Ok(l) => println!(
                "[hv] image {} loaded: entry {:#x}, {} shared, {} private per guest",
                img.name,
                l.entry,
                sizes(l.shared_bytes()),
                sizes(l.private_bytes())
            ),
            Err(why) => println!("[hv] image {} rejected: {why}", img.name),
        }
        images.push(loaded);
    }

    let mut guests: Vec<Option<Box<Guest>>> = Vec::new();
    let mut scheds: Vec<Scheduler> = (0..cpus).map(|_| Scheduler::new()).collect();
    let mut not_started = 0u32;
    for entry in bundle.guests() {
        let image = &images[entry.image as usize];
        let manifest_args: Vec<&str> = entry.args().collect();
        let cap = (entry.cap != 0).then_some(entry.cap);
        for i in 0..entry.count {
            let name = format!("{}-{i}", entry.name);
            let image = match image {
                Ok(img) => img,
                Err(_) => {
                    println!("[hv] guest {name} not started: its image was rejected");
                    not_started += 1;
                    continue;
                }
            };
            let args: Vec<&str> =
                if manifest_args.is_empty() { image.app_args.iter().map(String::as_str).collect() } else { manifest_args.clone() };
            let created_ns = time.ns(cpu::rdtsc());
            let created = Guest::create(&mut mem, kernel_root, time_page, image, &name, &args, entry.memory, |_, page| {
                write_boot_info(page, image, entry.memory, &time)
            });
            match created {
                Ok(mut g) => {
                    g.stats.created_ns = created_ns;
                    println!("[hv] guest {name} started (image {}, memory {})", image.name, sizes(entry.memory));
                    let id = guests.len();
                    guests.push(Some(Box::new(g)));
                    // Spread new guests over the CPUs; balancing evens out the rest.
                    scheds[id % cpus].add(id, entry.weight, cap, created_ns);
                }
                Err(e) => {
                    println!("[hv] guest {name} not started: {e}");
                    not_started += 1;
                }
            }
        }
    }

    let live = guests.len();
    let host = HOST.call_once(|| Host {
        kernel_root,
        time,
        guests: Mutex::new(guests),
        scheds: scheds.into_iter().map(Mutex::new).collect(),
        live: AtomicUsize::new(live),
        exited: AtomicU32::new(0),
        stopped: AtomicU32::new(0),
    });
    host.cpu_loop(0);

    for img in images.into_iter().flatten() {
        img.unload(&mut mem);
    }
    mem.free(time_page);
    println!(
        "[hv] no guests left: {} exited, {} stopped, {not_started} not started; {} KiB free",
        host.exited.load(Ordering::Relaxed),
        host.stopped.load(Ordering::Relaxed),
        free_frames() as u64 * 4
    );
    if bundle.flags & FLAG_EXIT_WHEN_IDLE != 0 {
        cpu::debug_exit(abi::debug_exit::SUCCESS);
    }
    println!("[hv] idle; halting");
    cpu::halt_forever()
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
