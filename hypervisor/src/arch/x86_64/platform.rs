//! The x86_64 [`Platform`] under the per-CPU loop (`hypervisor::machine`):
//! the TSC as the clock, the local APIC's timer and IPIs, `hlt`, CR3 and
//! the entry code.
//!
//! Rules: without page-table isolation the hypervisor runs on a guest's
//! own tables from [`Platform::begin_guest`] to [`Platform::end_guest`]
//! (they map its half too); with it, `entry::enter` switches to them last
//! and back first, so the CR3 writes here are skipped. The APIC's vectors
//! and EOIs stay in `apic` and `entry`; nothing here decides anything.

use super::guest_pages::{DirectRing, EventPage};
use super::paging::{DirectMap, free_frames, phys_to_virt, total_frames};
use super::smp::MAX_CPUS;
use super::{apic, cpu, entry, serial};
use abi::time::TimeInfo;
use core::sync::atomic::{AtomicU64, Ordering};
use hermit_entry::boot_info::RawBootInfo;
use hypervisor::guest::Guest;
use hypervisor::guest::regs::FpuState;
use hypervisor::machine::Platform;
use hypervisor::mm::PhysAddr;
use hypervisor::net::port::RingAllocError;

/// The page-table root each CPU runs on (without page-table isolation):
/// between two guests a CPU stays on the first one's tables, which map the
/// hypervisor's half too, so that a guest switch is one CR3 write; it goes
/// back to the hypervisor's own before it halts and before the tables are
/// freed ([`Platform::release_tables`], which reads the other CPUs' too).
static LOADED_TABLES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Switches this CPU to the tables at `root` (a guest's, whose PML4 maps
/// the hypervisor's half like every address space, or the hypervisor's).
fn load_tables(cpu: usize, root: PhysAddr) {
    // SAFETY: `root` is a live PML4 that maps the hypervisor's half (a
    // guest's copies it at creation, and is freed only after
    // `release_tables`); the direct map and this code stay mapped.
    unsafe { cpu::write_cr3(root) };
    // After the write: a CPU that reads another root here no longer uses
    // the old one.
    LOADED_TABLES[cpu].store(root, Ordering::Release);
}

/// The machine the hypervisor boots on.
/// The control channel's transport, chosen once at boot ([`init_control`]).
pub enum Control {
    /// A virtio console: a client per port, several at once.
    Console(alloc::boxed::Box<spin::Mutex<super::virtio_pci::ControlConsole>>),
    /// COM2: one client.
    Uart,
}

static CONTROL: spin::Once<Control> = spin::Once::new();

/// Finds the control channel: a virtio console if there is one, else COM2
/// if there is one. Returns whether there is a channel.
pub fn init_control(kernel_root: u64) -> bool {
    let c = match super::virtio_pci::probe_console(kernel_root) {
        Ok(Some(c)) => {
            crate::println!("[hv] control channel: virtio console, {} clients at once", c.ports());
            Some(Control::Console(alloc::boxed::Box::new(spin::Mutex::new(c))))
        }
        Ok(None) => serial::init_control().then_some(Control::Uart),
        Err(why) => {
            crate::println!("[hv] control channel: virtio console: {why}");
            serial::init_control().then_some(Control::Uart)
        }
    };
    c.map(|c| CONTROL.call_once(|| c)).is_some()
}

pub struct X86_64 {
    /// The hypervisor's own page-table root.
    pub kernel_root: PhysAddr,
    /// TSC <-> ns.
    pub time: TimeInfo,
}

impl Platform for X86_64 {
    type Mem<'a> = DirectMap;
    type Events = EventPage;
    type Ring = DirectRing;

    fn mem(&self) -> DirectMap {
        DirectMap
    }

    fn now_ns(&self) -> u64 {
        self.time.ns(cpu::rdtsc())
    }

    fn arm_timer(&self, deadline_ns: u64) {
        apic::arm(self.time.tsc(deadline_ns));
    }

    fn idle(&self, me: usize) {
        if !entry::isolated() && LOADED_TABLES[me].load(Ordering::Relaxed) != self.kernel_root {
            load_tables(me, self.kernel_root);
        }
        cpu::idle();
    }

    fn wake_cpu(&self, cpu: usize) {
        apic::wake_cpu(cpu);
    }

    fn uplink_interrupts(&self) -> bool {
        super::net::uplink_interrupts()
    }

    fn take_uplink_interrupt(&self) -> bool {
        entry::take_device_interrupt(apic::UPLINK_VECTOR)
    }

    fn uplink_interrupt_count(&self) -> u64 {
        entry::device_interrupts(apic::UPLINK_VECTOR)
    }

    fn begin_guest(&self, cpu: usize, root: PhysAddr, moved: bool) {
        // Still on its tables, and nobody changed them elsewhere: its TLB
        // entries here are good (a guest alone on a CPU keeps them from
        // slice to slice).
        let current = !moved && LOADED_TABLES[cpu].load(Ordering::Relaxed) == root;
        if !entry::isolated() && !current {
            load_tables(cpu, root);
        }
    }

    fn enter(&self, g: &mut Guest) {
        let root = g.memory.space.root();
        entry::enter(&mut g.regs, &mut g.fpu, g.via_sysret, root);
    }

    fn flush_tlb(&self, root: PhysAddr) {
        // With isolation every entry loads the guest's root, which flushes
        // the TLB anyway.
        if !entry::isolated() {
            // SAFETY: reloading the guest's own root (the one it runs on)
            // only flushes the TLB after it gave pages back.
            unsafe { cpu::write_cr3(root) }
        }
    }

    fn end_guest(&self, fpu: &mut FpuState) {
        entry::leave_fpu(fpu);
    }

    fn release_tables(&self, me: usize, root: PhysAddr) {
        if entry::isolated() {
            // Every exit switched back to the hypervisor's tables already.
            return;
        }
        if LOADED_TABLES[me].load(Ordering::Relaxed) != self.kernel_root {
            load_tables(me, self.kernel_root);
        }
        for (cpu, loaded) in LOADED_TABLES.iter().enumerate() {
            // That CPU is between two guests: it switches at its next entry
            // or idle, waiting for nothing this CPU holds.
            while cpu != me && loaded.load(Ordering::Acquire) == root {
                core::hint::spin_loop();
            }
        }
    }

    fn events_of(&self, g: &Guest) -> Option<EventPage> {
        EventPage::of(g)
    }

    fn ring<E>(
        &self,
        events: &EventPage,
        index_offset: u64,
        slots: u32,
        copy: impl Fn(usize) -> Option<PhysAddr>,
        map: impl FnMut(usize, PhysAddr) -> Result<(), E>,
    ) -> Result<DirectRing, RingAllocError<E>> {
        DirectRing::alloc(events, index_offset, slots, copy, map)
    }

    fn deferred_ring(&self, events: &EventPage, index_offset: u64, slots: u32) -> DirectRing {
        DirectRing::deferred(events, index_offset, slots)
    }

    fn write_boot_info(&self, frame: PhysAddr, info: RawBootInfo) {
        // SAFETY: `frame` is a fresh frame of the guest's start page,
        // direct-mapped and not yet visible to the guest; RawBootInfo fits
        // before START_INFO_OFFSET (checked at compile time in
        // `hypervisor::machine`).
        unsafe { core::ptr::write_unaligned(phys_to_virt(frame) as *mut RawBootInfo, info) };
    }

    fn console_line(&self, line: &str) {
        crate::println!("{line}");
    }

    fn console_read(&self) -> Option<u8> {
        serial::try_read()
    }

    fn control_poll(&self, on: &mut dyn FnMut(hypervisor::control::Input<'_>)) {
        use hypervisor::control::Input;
        match CONTROL.get() {
            Some(Control::Console(c)) => {
                // `on` answers through `control_write_line`, which takes the
                // device's lock: collect first, hand over with it released.
                let mut got: alloc::vec::Vec<(usize, u8, alloc::vec::Vec<u8>)> = alloc::vec::Vec::new();
                c.lock().poll(&mut |i| match i {
                    Input::Opened(p) => got.push((p, 0, alloc::vec::Vec::new())),
                    Input::Closed(p) => got.push((p, 1, alloc::vec::Vec::new())),
                    Input::Bytes(p, b) => got.push((p, 2, b.to_vec())),
                });
                for (p, kind, bytes) in got {
                    on(match kind {
                        0 => Input::Opened(p),
                        1 => Input::Closed(p),
                        _ => Input::Bytes(p, &bytes),
                    });
                }
            }
            Some(Control::Uart) => {
                // The UART holds 16 bytes: take what is there.
                let mut buf = [0u8; 16];
                let n = buf.iter_mut().map_while(|b| serial::control_read().map(|v| *b = v)).count();
                if n > 0 {
                    on(Input::Bytes(0, &buf[..n]));
                }
            }
            None => {}
        }
    }

    fn control_write_line(&self, client: usize, line: &str) {
        match CONTROL.get() {
            Some(Control::Console(c)) => c.lock().write_line(client, line),
            Some(Control::Uart) if client == 0 => serial::control_write_line(line),
            _ => {}
        }
    }

    fn control_room(&self, client: usize) -> usize {
        match CONTROL.get() {
            // At most 256 KiB waiting for the device.
            Some(Control::Console(c)) => (256usize << 10).saturating_sub(c.lock().backlog(client)),
            // The UART is written byte by byte, waiting: a line per look.
            Some(Control::Uart) => 2 * abi::control::CHUNK_MAX + 64,
            None => 0,
        }
    }

    fn heap_usage(&self) -> (usize, usize) {
        crate::heap_usage()
    }

    fn reserve_heap(&self, bytes: usize) -> bool {
        crate::reserve_heap(bytes)
    }

    fn heap_room(&self) -> usize {
        crate::heap_room()
    }

    fn heap_grown(&self) -> usize {
        crate::heap_grown()
    }

    fn frames(&self) -> (usize, usize) {
        (free_frames(), total_frames())
    }
}

/// Decides the guest-entry mitigations before any guest runs, and says so
/// on the console: VERW on every entry where the CPU has MDS and the
/// microcode to clear, page-table isolation where it reads supervisor
/// pages from ring 3 speculatively (or both when `forced`). Returns the
/// root whose upper half guests' tables map: `kernel_root`, or with
/// isolation the reduced tables that map the image and the APIC, not the
/// direct map.
pub fn mitigate(kernel_root: PhysAddr, forced: bool) -> PhysAddr {
    let spec = cpu::speculation();
    let verw = (spec.mds && spec.md_clear) || forced;
    entry::clear_buffers_on_entry(verw);
    let guest_upper = match (spec.meltdown || forced).then(|| super::paging::isolated_upper(kernel_root)) {
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
    crate::println!(
        "[hv] speculation: meltdown {}, mds {}{}; page-table isolation: {}; buffers cleared on every guest entry: {}",
        yes(spec.meltdown),
        yes(spec.mds),
        if spec.mds && !spec.md_clear { " (NOT mitigated: no MD_CLEAR microcode)" } else { "" },
        how(spec.meltdown, entry::isolated()),
        how(spec.mds, verw)
    );
    guest_upper
}
