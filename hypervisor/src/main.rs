//! The bootable hypervisor (`cargo xtask build`).
//!
//! Boot order: PVH entry (`arch::x86_64::boot`) → [`kernel_main`]: serial
//! console, CPU features, real page tables, frame allocator and heap, GDT,
//! IDT and `syscall`, the other CPUs (`smp`) → the bundle from the PVH
//! module → [`start_machine`], which loads the images, starts the guests and
//! schedules them on every CPU (`hypervisor::machine`) until none is left.
//!
//! Assumes ring 0 on every CPU, with interrupts off while hypervisor code
//! runs (guests run with them on).
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod console;

use abi::bundle::{Bundle, FLAG_EXIT_WHEN_IDLE, FLAG_FORCE_MITIGATIONS};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use arch::x86_64::net::Net;
use arch::x86_64::platform::{self, X86_64};
use arch::x86_64::{apic, boot, clock, cpu, entry, firmware, gdt, multiboot2, paging, pci, power, pvh, serial, smp};
use core::sync::atomic::{AtomicU64, Ordering};
use hypervisor::bootinfo::{BootError, Protocol};
use hypervisor::machine::{self, Config, Machine};
use spin::Once;
use talc::{OomHandler, Span, Talc, Talck};

#[global_allocator]
static HEAP: Talck<spin::Mutex<()>, GrowFromFrames> = Talc::new(GrowFromFrames).lock();

/// The heap starts at 1/64 of RAM and grows by runs of free frames (at
/// least this much at a time) when it runs out, so that it and the guests
/// share one pool: a machine packed with small guests spends on the
/// hypervisor's records what they take, not a fixed share.
const HEAP_GROWTH: usize = 1 << 20;

/// Bytes of frames the heap took as it grew (it keeps them).
static HEAP_GROWN: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Bytes of frames the heap took from the frame allocator since boot.
pub fn heap_grown() -> usize {
    HEAP_GROWN.load(Ordering::Relaxed)
}

/// Grows the heap by a run of frames when an allocation finds no room.
struct GrowFromFrames;

impl OomHandler for GrowFromFrames {
    fn handle_oom(talc: &mut Talc<Self>, layout: core::alloc::Layout) -> Result<(), ()> {
        // Room for the block, its alignment and the arena's own records.
        let need = layout.size().saturating_add(layout.align()).saturating_add(256);
        grow(talc, need.max(HEAP_GROWTH))
    }
}

/// Claims a run of at least `bytes` of free frames for the heap.
fn grow(talc: &mut Talc<GrowFromFrames>, bytes: usize) -> Result<(), ()> {
    let (pa, frames) = paging::alloc_run(bytes.div_ceil(4096)).ok_or(())?;
    let span = Span::from_base_size(paging::phys_to_virt(pa) as *mut u8, frames * 4096);
    // SAFETY: frames just taken from the allocator, so no one else's,
    // direct-mapped (RAM); the heap keeps them for good.
    match unsafe { talc.claim(span) } {
        Ok(_) => {
            HEAP_GROWN.fetch_add(frames * 4096, Ordering::Relaxed);
            Ok(())
        }
        Err(()) => {
            paging::free_run(pa, frames);
            Err(())
        }
    }
}

/// The hypervisor heap's size and the bytes allocated from it now.
pub fn heap_usage() -> (usize, usize) {
    let h = HEAP.lock();
    let c = h.get_counters();
    (c.claimed_bytes, c.allocated_bytes)
}

/// Makes sure the heap has `bytes` free, growing it if it must: whether
/// it has. Free bytes may be split between arenas; the ask is for many
/// small records, which fit any of them.
pub fn reserve_heap(bytes: usize) -> bool {
    let mut h = HEAP.lock();
    loop {
        let c = h.get_counters();
        let free = c.claimed_bytes.saturating_sub(c.allocated_bytes);
        if free >= bytes {
            return true;
        }
        if grow(&mut h, (bytes - free).max(HEAP_GROWTH)).is_err() {
            return false;
        }
    }
}

/// Bytes the heap could still hand out for a passing need (an image as
/// it is unpacked, a snapshot going out): what it holds free and the free
/// frames it may grow into, up to 1/16 of RAM in all. The heap keeps what
/// it grew into, so a tenant's upload cannot turn more of guests' memory
/// into heap than that.
pub fn heap_room() -> usize {
    let (claimed, used) = heap_usage();
    let cap = paging::total_frames() * 4096 / 16;
    claimed.saturating_sub(used) + (paging::free_frames() * 4096).min(cap.saturating_sub(claimed))
}

/// Entered from the boot stub with the physical address of the loader's
/// information and which entry it came through (`boot::ENTERED_*`).
#[unsafe(no_mangle)]
extern "C" fn kernel_main(info: u32, entered: u32) -> ! {
    serial::init();
    println!("[hv] hypervisor {} booting", env!("CARGO_PKG_VERSION"));
    let boot = match entered {
        // SAFETY: still on the boot tables, which identity-map the first 4 GiB.
        boot::ENTERED_PVH => unsafe { pvh::read(info as u64) }.map_err(String::from),
        // SAFETY: as above.
        boot::ENTERED_MULTIBOOT2 => unsafe { multiboot2::read(info) }.map_err(|e| e.to_string()),
        _ => Err(BootError::BadMagic.to_string()),
    };
    let boot = match boot {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let features = cpu::features();
    if !features.nx {
        panic!("this CPU has no NX (no-execute) bit; the hypervisor needs it to keep guests' data from running");
    }
    let ram = boot.memory.ram();
    // SAFETY: called once, on the boot tables.
    let kernel_root = unsafe { paging::init(ram, &features) };
    harden(&features);
    if boot.memory.lost_bytes > 0 {
        println!(
            "[hv] memory map: {} entries too fragmented to keep; {} KiB of RAM left unused",
            boot.memory.entries,
            boot.memory.lost_bytes >> 10
        );
    }

    let module = boot.module.clone();
    let reserved = [0..0x10_0000, paging::kernel_image(), module.clone().unwrap_or(0..0)];
    let total: u64 = ram.iter().map(|r| r.end - r.start).sum();
    let heap_size = (total / 64).clamp(8 << 20, 256 << 20) & !0xfff;
    let Some(heap) = paging::init_frames(ram, &reserved, heap_size) else {
        panic!("not enough memory for the frame bitmap and a {} MiB heap", heap_size >> 20);
    };
    // SAFETY: the heap range is RAM reserved for it alone, direct-mapped.
    unsafe {
        let base = paging::phys_to_virt(heap.start) as *mut u8;
        HEAP.lock().claim(Span::from_base_size(base, (heap.end - heap.start) as usize)).expect("heap claim");
    }
    if !gdt::prepare(0, kernel_root) {
        panic!("no memory for the boot CPU's interrupt stacks");
    }
    gdt::init(0);
    entry::init_idt();
    entry::init_cpu(0);
    cpu::mask_pic();
    paging::map_mmio(kernel_root, apic::APIC_VA, apic::base());

    let acpi = match firmware::acpi_tables(kernel_root, &boot.rsdp) {
        Ok(t) => {
            for p in &t.problems {
                println!("[hv] ACPI: ignored: {p}");
            }
            Some(t)
        }
        Err(e) => {
            println!("[hv] ACPI: {e}; finding CPUs by broadcast, PCI through I/O ports");
            None
        }
    };
    // The firmware's console, if it names a 16550 in I/O space (interface
    // 0 or 1) other than COM1.
    if let Some(spcr) = acpi.as_ref().and_then(|t| t.spcr)
        && spcr.interface_type <= 1
        && let Some(port) = spcr.base.io_port()
        && port != 0x3f8
    {
        println!("[hv] console: moving to the serial port at {port:#x} (the ACPI SPCR's)");
        if !serial::use_console(port) {
            println!("[hv] console: not moved: {port:#x} is the control channel's port");
        }
    }
    let power = power::init(acpi.as_ref());
    pci::init(kernel_root, acpi.as_ref().map_or(&[], |t| &t.mcfg[..]));
    let pm_timer =
        acpi.as_ref().and_then(|t| t.fadt.pm_timer).and_then(|t| Some(clock::PmTimer { port: t.block.io_port()?, bits32: t.bits == 32 }));
    let (tsc_hz, tsc_source) = clock::tsc_hz(pm_timer);
    let time = abi::time::TimeInfo::new(tsc_hz, cpu::rdtsc(), clock::wall_clock_ns());
    apic::init(tsc_hz);
    apic::register(0);
    if apic::was_x2apic() {
        println!("[hv] the firmware left the APIC in x2APIC mode; switched to xAPIC, which the hypervisor drives");
    }
    println!(
        "[hv] TSC {}.{:03} GHz ({}), APIC timer in {} mode, wall clock {} s since the epoch",
        tsc_hz / 1_000_000_000,
        tsc_hz / 1_000_000 % 1000,
        tsc_source.describe(),
        if cpu::has_tsc_deadline() { "TSC-deadline" } else { "one-shot" },
        time.boot_wall_ns / 1_000_000_000
    );

    KERNEL_ROOT.store(kernel_root, Ordering::Release);
    // The CPUs the MADT lists (enabled ones: online-capable ones are not
    // there yet); xAPIC reaches ids up to 254.
    let apic_ids: Option<Vec<u32>> = acpi.as_ref().map(|t| {
        let (ids, beyond): (Vec<u32>, Vec<u32>) =
            t.madt.processors.iter().filter(|p| p.enabled).map(|p| p.apic_id).partition(|&id| id < apic::BROADCAST_ID);
        if !beyond.is_empty() {
            println!("[hv] {} CPUs have APIC ids past 254, which need x2APIC mode; they stay off", beyond.len());
        }
        ids
    });
    let options = boot.options();
    if options.unknown > 0 {
        println!("[hv] command line: {} word(s) not understood (known: maxcpus=N)", options.unknown);
    }
    let cpus = match boot.memory.low_page(&[module.clone().unwrap_or(0..0)]) {
        Some(trampoline) => smp::start_aps(kernel_root, tsc_hz, trampoline, apic_ids.as_deref(), options.max_cpus),
        None => {
            println!("[hv] no free page of RAM below 1 MiB for the other CPUs' start-up code; running on one CPU");
            1
        }
    };
    println!(
        "[hv] {} CPU{}{}, {} MiB RAM, {} KiB free for guests; nx={} smep={} smap={} umip={}",
        cpus,
        if cpus == 1 { "" } else { "s" },
        match &apic_ids {
            Some(ids) => format!(" of {} in the MADT", ids.len().max(1)),
            None => String::new(),
        },
        total >> 20,
        paging::free_frames() as u64 * 4,
        features.nx,
        features.smep,
        features.smap,
        features.umip
    );
    println!(
        "[hv] booted by {}; ACPI {}; powers off by {}",
        match boot.protocol {
            Protocol::Pvh => "PVH",
            Protocol::Multiboot2 => "Multiboot2",
        },
        match &acpi {
            Some(t) => format!(
                "{}.0 ({}), {} ECAM region{}, PM timer {}",
                if t.rsdp_revision >= 2 { 2 } else { 1 },
                if t.xsdt { "XSDT" } else { "RSDT" },
                t.mcfg.len(),
                if t.mcfg.len() == 1 { "" } else { "s" },
                if pm_timer.is_some() { "yes" } else { "no" }
            ),
            None => "not found".to_string(),
        },
        power.describe()
    );

    let Some(module) = module else { panic!("no bundle: boot with -initrd <bundle>") };
    // SAFETY: the module is reserved RAM that nothing writes, direct-mapped.
    let bundle =
        unsafe { core::slice::from_raw_parts(paging::phys_to_virt(module.start) as *const u8, (module.end - module.start) as usize) };
    start_machine(kernel_root, time, cpus, bundle)
}

/// The hypervisor's state, shared by every CPU.
static MACHINE: Once<Machine<X86_64, Net>> = Once::new();

/// TSC ticks an application processor halts between looks for the machine
/// (a few ms at any clock rate).
const AP_WAIT_TSC: u64 = 10_000_000;

/// The boot CPU: loads the images, creates the guests, schedules with the
/// others, and reports the end.
fn start_machine(kernel_root: u64, time: abi::time::TimeInfo, cpus: usize, bundle: &[u8]) -> ! {
    let bundle = match Bundle::parse(bundle) {
        Ok(b) => b,
        Err(e) => panic!("bad bundle: {e}"),
    };
    let x86 = X86_64 { kernel_root, time };
    let images: Vec<_> = bundle.images().map(|img| machine::ImageEntry::load(&x86, img.name, img.data)).collect();
    let boot_guests: usize = bundle.guests().map(|g| g.count as usize).sum();
    let control = platform::init_control(kernel_root);
    // Room for guests started later through the control channel.
    let capacity = boot_guests + if control { machine::SPARE_GUESTS } else { 0 };
    let (seed, random) = cpu::random_seed();
    if !random {
        println!("[hv] no RDRAND: the switch's tables are keyed from the TSC");
    }
    let mut net = Net::new(capacity).keyed(seed);
    attach_uplink(&mut net, kernel_root);
    let exit_when_idle = bundle.flags & FLAG_EXIT_WHEN_IDLE != 0;
    let guest_upper = platform::mitigate(kernel_root, bundle.flags & FLAG_FORCE_MITIGATIONS != 0);
    let config = Config { cpus, capacity, guest_upper, time, control, keep_running: control && !exit_when_idle };
    let m = MACHINE.call_once(|| Machine::new(x86, net, config, images));
    let not_started = m.start_bundle(&bundle);
    // Where the machine stands with every guest created (the hostile
    // tests compare the hypervisor heap at the end with this).
    println!("{}", m.machine_line());
    m.set_ready();
    m.cpu_loop(0);

    // Every guest has ended: nothing runs on the isolated tables any more.
    if guest_upper != kernel_root {
        paging::free_isolated_upper(guest_upper);
    }
    m.shut_down(not_started);
    if exit_when_idle {
        power::off(abi::debug_exit::SUCCESS);
    }
    println!("[hv] idle; halting");
    cpu::halt_forever()
}

/// Probes for the uplink (virtio-net, else e1000e) and gives it a port on
/// the switch: the host reaches the first tenant (tenant 0) through it.
fn attach_uplink(net: &mut Net, kernel_root: u64) {
    let free_before = paging::free_frames();
    match arch::x86_64::net::probe(kernel_root) {
        Ok(Some(up)) => {
            if let Ok(port) = net.switch.lock().add_uplink(0) {
                let m = up.mac();
                let mac = format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
                let kib = (free_before - paging::free_frames()) * 4;
                println!("[hv] uplink: {} {mac}, tenant 0, {kib} KiB of queues", up.name());
                net.uplink = Some((port, spin::Mutex::new(up)));
            }
        }
        Ok(None) => {}
        Err(why) => println!("[hv] uplink: {why}; guests can reach each other but not the host"),
    }
}

/// The hypervisor's PML4, for the application processors.
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

/// Entered by each application processor from the SMP trampoline with its
/// CPU index, on the stack the boot CPU prepared for it.
#[unsafe(no_mangle)]
extern "C" fn ap_main(cpu: u32) -> ! {
    let cpu = cpu as usize;
    if cpu >= smp::MAX_CPUS {
        cpu::halt_forever();
    }
    // SAFETY: the kernel root maps the hypervisor exactly as the
    // trampoline's table does in the upper half, where this code runs.
    unsafe { cpu::write_cr3(KERNEL_ROOT.load(Ordering::Acquire)) };
    gdt::init(cpu);
    entry::init_cpu(cpu);
    harden(&cpu::features());
    apic::init_ap();
    apic::register(cpu);
    // Halt (not spin) while the boot CPU creates the guests: under
    // emulation a spinning CPU takes a host core from the one working.
    let m = loop {
        if let Some(m) = MACHINE.get().filter(|m| m.is_ready()) {
            break m;
        }
        apic::arm(cpu::rdtsc().saturating_add(AP_WAIT_TSC));
        cpu::idle();
    };
    // Decided by the boot CPU before the machine was ready.
    if entry::isolated() {
        cpu::disable_global_pages();
    }
    m.cpu_loop(cpu);
    cpu::halt_forever()
}

/// Turns on the protections the CPU has: SMEP and SMAP (the hypervisor
/// neither executes nor touches guest pages through guest addresses), UMIP
/// (guests cannot read descriptor-table addresses) and global pages.
fn harden(f: &cpu::Features) {
    let mut cr4 = cpu::read_cr4();
    for (on, bit) in [(f.smep, cpu::cr4::SMEP), (f.smap, cpu::cr4::SMAP), (f.umip, cpu::cr4::UMIP), (f.pge, cpu::cr4::PGE)] {
        if on {
            cr4 |= bit;
        }
    }
    // SAFETY: only features CPUID reports are enabled; the hypervisor never
    // accesses user pages directly (all guest memory goes through the
    // direct map), so SMAP/SMEP cannot trip on our own code.
    unsafe { cpu::write_cr4(cr4) };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Not through the console lock: the panic may have happened while it was held.
    let _ = core::fmt::Write::write_fmt(&mut serial::Serial, format_args!("[hv] PANIC: {info}\n"));
    power::off(abi::debug_exit::FAILURE)
}

// Linked for `core`; see the memfns crate.
use memfns as _;
