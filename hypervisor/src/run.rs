//! The run loop: load the bundle's images, start the manifest's guests and
//! schedule them (weighted fair share, preempted by the APIC timer) until
//! none is left.
//!
//! Console lines (documented in README.md):
//! `[hv] image NAME rejected: REASON`, `[hv] guest NAME started ...`,
//! `[hv] guest NAME exited with code N`, `[hv] guest NAME stopped: REASON`,
//! `[hv] guest NAME not started: REASON`, guests' own output as
//! `NAME| TEXT`, and one JSON accounting line per guest when it ends (and
//! for every guest when `stats` is typed on the console).

use crate::arch::x86_64::{apic, cpu, entry, paging::DirectMem, paging::phys_to_virt, serial};
use crate::println;
use abi::bundle::{Bundle, FLAG_EXIT_WHEN_IDLE};
use abi::time::{TimeInfo, events};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hermit_entry::boot_info::{BootInfo, HardwareInfo, LoadInfo, PlatformInfo, RawBootInfo};
use hypervisor::guest::{Guest, LoadedImage, Step};
use hypervisor::image::Image;
use hypervisor::mm::PhysMem;
use hypervisor::sched::{Scheduler, Stop};

const _: () = assert!(core::mem::size_of::<RawBootInfo>() as u64 <= abi::layout::START_INFO_OFFSET);

fn sizes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

/// Everything the run loop owns.
struct Host {
    mem: DirectMem,
    kernel_root: u64,
    time: TimeInfo,
    guests: Vec<Option<Guest>>,
    sched: Scheduler,
    console_in: String,
    exited: u32,
    stopped: u32,
}

impl Host {
    fn now(&self) -> u64 {
        self.time.ns(cpu::rdtsc())
    }

    /// One JSON line with what guest `id` has cost.
    fn stats_line(&self, id: usize, state: &str) -> String {
        let Some(g) = self.guests[id].as_ref() else { return String::new() };
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

    /// Reads console input; `stats` prints every guest's accounting line.
    fn poll_console(&mut self) {
        while let Some(b) = serial::try_read() {
            match b {
                b'\r' | b'\n' => {
                    if self.console_in.trim() == "stats" {
                        for id in 0..self.guests.len() {
                            if self.guests[id].is_some() {
                                println!("{}", self.stats_line(id, "running"));
                            }
                        }
                    }
                    self.console_in.clear();
                }
                _ if self.console_in.len() < 64 => self.console_in.push(b as char),
                _ => {}
            }
        }
    }

    /// Removes guest `id` after it ended, reporting how.
    fn finish(&mut self, id: usize, how: Result<i32, String>) {
        let state = if how.is_ok() { "exited" } else { "stopped" };
        if let Some(g) = self.guests[id].as_mut() {
            g.flush_console(&mut |l| println!("{l}"));
            match &how {
                Ok(code) => println!("[hv] guest {} exited with code {code}", g.name),
                Err(why) => println!("[hv] guest {} stopped: {why}", g.name),
            }
        }
        println!("{}", self.stats_line(id, state));
        match how {
            Ok(_) => self.exited += 1,
            Err(_) => self.stopped += 1,
        }
        self.sched.remove(id);
        // SAFETY: back to the hypervisor's own tables before the guest's are freed.
        unsafe { cpu::write_cr3(self.kernel_root) };
        if let Some(g) = self.guests[id].take() {
            g.destroy(&mut self.mem);
        }
    }

    /// Runs guest `id` for at most `slice_ns`; returns why it stopped.
    fn run_one(&mut self, id: usize, slice_ns: u64) -> (Step, u64) {
        let start = cpu::rdtsc();
        // Preempt at the end of the slice, or earlier if a sleeper is due.
        let mut deadline = start.saturating_add(self.time.tsc(slice_ns) - self.time.tsc_base);
        if let Some(t) = self.sched.next_timer() {
            deadline = deadline.min(self.time.tsc(t));
        }
        apic::arm(deadline);
        let g = self.guests[id].as_mut().expect("scheduled guest exists");
        g.wake_from_block(&mut self.mem);
        if g.stats.first_entry_ns == 0 {
            g.stats.first_entry_ns = self.time.ns(start).max(1);
        }
        // SAFETY: the guest's PML4 maps the hypervisor's half like every
        // other address space (copied from the kernel root at creation).
        unsafe { cpu::write_cr3(g.memory.space.root()) };
        let step = loop {
            entry::run(&mut g.regs, &mut g.fpu, g.via_sysret);
            let vector = g.regs.vector;
            let step = g.handle_exit(&mut self.mem, &mut |l| println!("{l}"));
            if (32..255).contains(&vector) {
                apic::eoi();
            }
            if step != Step::Resume {
                break step;
            }
        };
        let ran = self.time.ns(cpu::rdtsc()) - self.time.ns(start);
        g.stats.cpu_ns += ran;
        let cpu = 0;
        if g.stats.cpu_ns_per_cpu.len() <= cpu {
            g.stats.cpu_ns_per_cpu.resize(cpu + 1, 0);
        }
        g.stats.cpu_ns_per_cpu[cpu] += ran;
        (step, ran)
    }

    fn schedule(&mut self) {
        loop {
            self.poll_console();
            let now = self.now();
            let guests = &mut self.guests;
            let mem = &mut self.mem;
            self.sched.expire(now, |id| {
                if let Some(g) = guests[id].as_mut() {
                    g.raise_events(mem, events::TIMER);
                }
            });
            let Some((id, slice)) = self.sched.pick(now) else {
                if self.guests.iter().all(Option::is_none) {
                    return;
                }
                // Nothing runnable: sleep until the next deadline (or an
                // interrupt), so an idle machine costs no CPU.
                if let Some(t) = self.sched.next_timer() {
                    apic::arm(self.time.tsc(t));
                }
                cpu::idle();
                apic::eoi();
                continue;
            };
            let (step, ran) = self.run_one(id, slice);
            let now = self.now();
            match step {
                Step::Resume | Step::Preempted => self.sched.put(id, now, ran, Stop::Preempted),
                Step::Yield => self.sched.put(id, now, ran, Stop::Yielded),
                Step::Block { deadline } => self.sched.put(id, now, ran, Stop::Blocked { deadline }),
                Step::Exited(code) => self.finish(id, Ok(code)),
                Step::Stopped(why) => self.finish(id, Err(why)),
            }
        }
    }
}

pub fn run(mut mem: DirectMem, kernel_root: u64, time: TimeInfo, bundle: &[u8]) -> ! {
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

    let mut host = Host {
        mem,
        kernel_root,
        time,
        guests: Vec::new(),
        sched: Scheduler::new(),
        console_in: String::new(),
        exited: 0,
        stopped: 0,
    };
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
            let created_ns = host.now();
            let created = Guest::create(&mut host.mem, kernel_root, time_page, image, &name, &args, entry.memory, |_, page| {
                write_boot_info(page, image, entry.memory, &time)
            });
            match created {
                Ok(mut g) => {
                    g.stats.created_ns = created_ns;
                    println!("[hv] guest {name} started (image {}, memory {})", image.name, sizes(entry.memory));
                    let id = host.guests.len();
                    host.guests.push(Some(g));
                    let now = host.now();
                    host.sched.add(id, entry.weight, cap, now);
                }
                Err(e) => {
                    println!("[hv] guest {name} not started: {e}");
                    not_started += 1;
                }
            }
        }
    }

    host.schedule();

    let mut mem = host.mem;
    for img in images.into_iter().flatten() {
        img.unload(&mut mem);
    }
    mem.free(time_page);
    println!(
        "[hv] no guests left: {} exited, {} stopped, {not_started} not started; {} KiB free",
        host.exited,
        host.stopped,
        mem.frames.free_frames() as u64 * 4
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
