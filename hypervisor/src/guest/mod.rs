//! Guest lifecycle: a validated image becomes shared frames once
//! ([`LoadedImage`]); each instance gets its own address space over them
//! ([`Guest::create`]), runs, and leaves through [`Guest::handle_exit`],
//! which turns every exit (hypercall, fault, interrupt) into a [`Step`].

pub mod console;
pub mod fault;
pub mod regs;
mod snapshot;

use crate::image::Image;
use crate::mm::paging::Pte;
use crate::mm::user::{Fault, GuestMemory};
use crate::mm::{FRAME_SIZE, PhysAddr, PhysMem, paging::AddressSpace};
use abi::layout::{self, HEAP_LEN, PAGE_SIZE, STACK_MAX, STACK_TOP, START_PAGE};
use abi::stop::{HypercallError, MemoryError, StopReason};
use abi::{CONSOLE_WRITE_MAX, Hypercall, StartInfo};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use console::LineBuffer;
use regs::{FpuState, Regs, VECTOR_FIRST_INTERRUPT, VECTOR_PAGE_FAULT, VECTOR_SYSCALL};

/// One page of a loaded image.
#[derive(Clone, Copy, Debug)]
pub struct ImagePage {
    pub vaddr: u64,
    /// Shared pages are mapped as they are; writable pages are a pristine
    /// copy that each instance copies.
    pub frame: PhysAddr,
    pub flags: Pte,
    pub writable: bool,
}

/// An image in memory, ready to be instantiated any number of times.
#[derive(Debug)]
pub struct LoadedImage {
    pub name: String,
    pub entry: u64,
    pub pages: Vec<ImagePage>,
    pub app_args: Vec<String>,
    pub vaddr_range: core::ops::Range<u64>,
}

impl LoadedImage {
    /// Copies a validated image's pages into frames. Returns `None` (having
    /// freed what it took) if memory runs out: frames, or the heap for the
    /// page list (reserved once, fallibly: its size comes from the image).
    pub fn load(mem: &mut impl PhysMem, name: &str, image: &Image) -> Option<Self> {
        let count = usize::try_from(image.mapped_bytes() / PAGE_SIZE).ok()?;
        let mut pages = Vec::new();
        pages.try_reserve_exact(count).ok()?;
        let mut buf = Box::new([0u8; 4096]);
        for seg in &image.segments {
            let writable = seg.perms.contains(crate::image::Perms::WRITE);
            let mut flags = Pte::empty();
            if writable {
                flags |= Pte::WRITABLE;
            }
            if !seg.perms.contains(crate::image::Perms::EXECUTE) {
                flags |= Pte::NO_EXECUTE;
            }
            for vaddr in seg.pages().step_by(PAGE_SIZE as usize) {
                let Some(frame) = mem.alloc() else {
                    pages.iter().for_each(|p: &ImagePage| mem.free(p.frame));
                    return None;
                };
                image.fill_page(vaddr, &mut buf);
                mem.write(frame, 0, &buf[..]);
                pages.push(ImagePage { vaddr, frame, flags, writable });
            }
        }
        Some(Self { name: name.into(), entry: image.entry, pages, app_args: image.app_args.clone(), vaddr_range: image.vaddr_range() })
    }

    /// Returns the image's frames (once no instance is left).
    pub fn unload(self, mem: &mut impl PhysMem) {
        for p in self.pages {
            mem.free(p.frame);
        }
    }

    /// The span of the image's executable pages (empty if it has none).
    pub fn text_range(&self) -> core::ops::Range<u64> {
        let mut exec = self.pages.iter().filter(|p| !p.flags.contains(Pte::NO_EXECUTE)).map(|p| p.vaddr);
        let Some(first) = exec.next() else { return 0..0 };
        let (lo, hi) = exec.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)));
        lo..hi + PAGE_SIZE
    }

    /// Bytes each instance must copy (writable pages).
    pub fn private_bytes(&self) -> u64 {
        self.pages.iter().filter(|p| p.writable).count() as u64 * FRAME_SIZE
    }

    /// Bytes all instances share (read-only pages).
    pub fn shared_bytes(&self) -> u64 {
        self.pages.iter().filter(|p| !p.writable).count() as u64 * FRAME_SIZE
    }
}

/// What the scheduler does with a guest after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Enter it again at once.
    Resume,
    /// Put it at the back of the run queue.
    Yield,
    /// An interrupt (the timer) took the CPU from it; it stays runnable.
    Preempted,
    /// It asked for its vNIC's TX ring to be forwarded now; then resume it.
    NetKick,
    /// It gave pages back: flush this CPU's TLB, then resume it.
    FlushTlb,
    /// It sleeps until an event or the monotonic clock reaches `deadline`
    /// (ns; `u64::MAX`: no deadline). Resume it with [`Guest::wake_from_block`].
    Block { deadline: u64 },
    /// It called `exit(code)`.
    Exited(i32),
    /// It is stopped for the given reason (fault, bad hypercall, limit).
    Stopped(StopReason),
}

/// A running guest instance.
pub struct Guest {
    pub name: String,
    pub memory: GuestMemory,
    pub regs: Regs,
    pub fpu: Box<FpuState>,
    /// Whether the next entry may use `sysret` (the last exit was a
    /// `syscall`); otherwise `iretq` restores every register.
    pub via_sysret: bool,
    /// The CPU it ran on last (`None` before its first run): the per-CPU
    /// loop keeps its tables loaded, without a TLB flush, when it runs
    /// again on that CPU with nothing run there in between.
    pub last_cpu: Option<usize>,
    /// In a `block` hypercall: on resume it returns the pending events.
    blocked: bool,
    console: LineBuffer,
    pub stats: Stats,
    /// Console bytes per second.
    pub console_limit: crate::limit::TokenBucket,
    /// `net_kick`s per second.
    pub kick_limit: crate::limit::TokenBucket,
    /// Where its image's executable pages lie (for crash reports).
    text: core::ops::Range<u64>,
    /// The frame of its event page, mapped at `layout::EVENT_PAGE` from
    /// creation to destruction (nothing a guest asks for unmaps it): the
    /// `block` path reads the event word here, without a page walk.
    event_frame: PhysAddr,
    /// Its clock minus the hypervisor's (ns; `layout::EVENT_CLOCK_OFFSET`):
    /// 0 unless it was restored from a snapshot. Its `block` deadlines
    /// are on its clock. This copy is the hypervisor's; the guest's own
    /// in its shared page changes nothing here.
    clock_offset: i64,
}

/// What a guest has cost, for the accounting lines.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub cpu_ns: u64,
    pub wakeups: u64,
    pub preemptions: u64,
    pub yields: u64,
    pub hypercalls: u64,
    /// Monotonic ns when the hypervisor began creating the guest, and when
    /// it first entered it (0 until then).
    pub created_ns: u64,
    pub first_entry_ns: u64,
    /// Hypervisor time spent creating it (address space, pages, vNIC).
    pub create_ns: u64,
    /// CPU time per CPU (index = CPU number).
    pub cpu_ns_per_cpu: Vec<u64>,
}

/// What every clone of a template made at once starts from: the
/// template's start record, and the arguments and environment their start
/// pages get (`Guest::clone_base`).
pub struct CloneBase {
    si: StartInfo,
    /// Other arguments than the template's (with its environment), for a
    /// start page of each clone's own; `None`: they share the template's.
    own_start: Option<StartStrings>,
}

/// Why a guest could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateError {
    /// The memory limit is below what the image needs to start.
    TooSmall { needed: u64, limit: u64 },
    /// Arguments and environment do not fit in the start page, or one
    /// has a NUL byte, or a variable no `=`; or the name is longer than
    /// `layout::NAME_MAX` or has a NUL byte.
    ArgsTooLong,
    /// The machine has no frames left.
    MachineOutOfMemory,
}

impl CreateError {
    /// Why a guest that needs `needed` bytes could not be built, from the
    /// fault that stopped it: its limit, or the machine's memory.
    fn from_fault(e: Fault, needed: u64) -> Self {
        match e {
            Fault::OutOfMemory { limit } => CreateError::TooSmall { needed, limit },
            _ => CreateError::MachineOutOfMemory,
        }
    }
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::TooSmall { needed, limit } => {
                write!(f, "memory {} KiB is too small: the image needs at least {} KiB", limit / 1024, needed.div_ceil(1024))
            }
            CreateError::ArgsTooLong => write!(
                f,
                "arguments and environment take more than {} bytes, or one holds a NUL byte (or a variable has no '='), \
                 or the name is longer than {} bytes or holds a NUL byte",
                layout::START_STRINGS_MAX,
                layout::NAME_MAX
            ),
            CreateError::MachineOutOfMemory => f.write_str("the machine is out of memory"),
        }
    }
}

impl Guest {
    /// Builds an instance of `image`: its own address space with the
    /// image's read-only pages shared, its writable pages copied, demand-zero
    /// heap and stack, the shared time page (`time_page`, read-only), its
    /// event page, and the start page. The heap begins at `heap_start`
    /// (after the vNIC rings it will have: `layout::heap_start`).
    /// `write_boot_info` puts hermit-entry's `RawBootInfo` at the start of
    /// the start page's frame.
    #[allow(clippy::too_many_arguments)]
    pub fn create<M: PhysMem>(
        mem: &mut M,
        kernel_root: PhysAddr,
        time_page: PhysAddr,
        image: &LoadedImage,
        name: &str,
        args: &[&str],
        env: &[&str],
        memory_limit: u64,
        heap_start: u64,
        write_boot_info: impl FnOnce(&mut M, PhysAddr),
    ) -> Result<Self, CreateError> {
        // Image copies, start and event pages, and a handful of page tables.
        let needed = image.private_bytes() + 2 * PAGE_SIZE + 8 * PAGE_SIZE;
        if memory_limit < needed {
            return Err(CreateError::TooSmall { needed, limit: memory_limit });
        }
        let strings = start_strings(args, env).filter(|_| valid_name(name)).ok_or(CreateError::ArgsTooLong)?;
        let space = AddressSpace::new(mem, kernel_root).ok_or(CreateError::MachineOutOfMemory)?;
        let heap = heap_start..heap_start + HEAP_LEN;
        let stack = STACK_TOP - STACK_MAX..STACK_TOP;
        let mut memory = GuestMemory::new(space, heap.clone(), stack.clone(), memory_limit);

        let mut event_frame = 0;
        let built = (|| {
            map_image(&mut memory, mem, image, time_page, |_| false)?;
            let events = mem.alloc().ok_or(Fault::MachineOutOfMemory)?;
            memory.map_private(mem, layout::EVENT_PAGE, events, Pte::WRITABLE | Pte::NO_EXECUTE).inspect_err(|_| mem.free(events))?;
            event_frame = events;
            write_identity(mem, events, name, None);
            let page = start_page(mem, &strings, heap.clone(), stack.clone(), memory_limit, write_boot_info)?;
            memory.map_private(mem, START_PAGE, page, Pte::NO_EXECUTE).inspect_err(|_| mem.free(page))
        })();
        if let Err(e) = built {
            memory.destroy(mem);
            return Err(CreateError::from_fault(e, needed));
        }

        let regs = Regs {
            rip: image.entry,
            // As if `call`ed: rsp + 8 is 16-byte aligned at the first instruction.
            rsp: STACK_TOP - 8,
            rdi: START_PAGE,
            rsi: 0,
            rflags: regs::RFLAGS_FIXED,
            ..Regs::default()
        };
        Ok(Self {
            name: name.into(),
            memory,
            regs,
            fpu: Box::default(),
            via_sysret: false,
            last_cpu: None,
            blocked: false,
            console: LineBuffer::default(),
            stats: Stats::default(),
            console_limit: crate::limit::TokenBucket::new(0),
            kick_limit: crate::limit::TokenBucket::new(0),
            text: image.text_range(),
            event_frame,
            clock_offset: 0,
        })
    }

    /// Whether `va` is one of the pages each instance has of its own (a
    /// clone gets its own, never its template's): the shared page (its
    /// events, ring indices and identity) and the vNIC's ring slots, which
    /// the hypervisor writes through their frames, not through the guest's
    /// tables. The start page is its template's (ABI 9: the identity is
    /// not in it), unless the clone is given other arguments.
    fn own_page(va: u64, heap_start: u64) -> bool {
        va == layout::EVENT_PAGE || (layout::NIC_TX_RING..heap_start).contains(&va)
    }

    /// What its clones start from ([`CloneBase`]): read once for a batch
    /// of them. With `args`, they get those instead of its arguments (and
    /// each a start page of its own).
    pub fn clone_base(&mut self, mem: &mut impl PhysMem, args: Option<&[&str]>) -> Result<CloneBase, CreateError> {
        let si = self.start_info(mem);
        let Some(args) = args else { return Ok(CloneBase { si, own_start: None }) };
        let (_, env) = self.start_strings(mem, &si).ok_or(CreateError::ArgsTooLong)?;
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let strings = start_strings(args, &env).ok_or(CreateError::ArgsTooLong)?;
        Ok(CloneBase { si, own_start: Some(strings) })
    }

    /// Makes a copy of `template` (paused: on no CPU) named `name` that
    /// goes on where the template is: its registers and FPU state, and
    /// every page it owns, frozen and shared copy-on-write (`GuestMemory::
    /// freeze`; the template's own writes copy too from now on), its start
    /// page among them. Its own pages are new: a shared page copied from
    /// the template's, with `name` for its name, no vNIC record (the
    /// caller gives it its own: [`Guest::set_nic`]), `events::CLONED`
    /// raised and the generation word one past the template's; and, if
    /// `base` has other arguments than the template's, a start page with
    /// them (`write_boot_info` writes the boot record into it). The caller
    /// gives it its vNIC rings (`heap_start` says where they end): made at
    /// first use, or copies of the template's when a frame is in flight
    /// there.
    #[allow(clippy::too_many_arguments)]
    pub fn clone_from<M: PhysMem>(
        template: &mut Guest,
        base: &CloneBase,
        mem: &mut M,
        kernel_root: PhysAddr,
        name: &str,
        heap_start: u64,
        write_boot_info: impl FnOnce(&mut M, PhysAddr),
    ) -> Result<Self, CreateError> {
        if !valid_name(name) {
            return Err(CreateError::ArgsTooLong);
        }
        let (limit, si) = (template.memory.limit_bytes(), &base.si);
        let keep = |va| Self::own_page(va, heap_start);
        if template.memory.freeze(mem, &keep).map_err(|_| CreateError::MachineOutOfMemory)? > 0 {
            // Its pages are read-only now: no CPU may keep its writable
            // translations for its next run (`last_cpu` skips the flush).
            template.last_cpu = None;
        }
        // A clone's limit is its template's; one that does not fit needs more.
        let mut memory = template.memory.clone_shared(mem, kernel_root, limit, &keep).map_err(|e| CreateError::from_fault(e, limit + 1))?;
        let mut event_frame = 0;
        let built = (|| {
            let events = mem.alloc_copy(template.event_frame).ok_or(Fault::MachineOutOfMemory)?;
            let mut word = [0u8; 8];
            mem.read(events, 0, &mut word);
            mem.write(events, 0, &(u64::from_le_bytes(word) | abi::time::events::CLONED).to_le_bytes());
            let at = layout::EVENT_GENERATION_OFFSET as usize;
            mem.read(events, at, &mut word);
            mem.write(events, at, &u64::from_le_bytes(word).wrapping_add(1).to_le_bytes());
            write_identity(mem, events, name, None);
            memory.map_private(mem, layout::EVENT_PAGE, events, Pte::WRITABLE | Pte::NO_EXECUTE).inspect_err(|_| mem.free(events))?;
            event_frame = events;
            let Some(strings) = &base.own_start else { return Ok(()) };
            // Its own arguments: its own start page instead of the template's.
            memory.discard(mem, START_PAGE, START_PAGE + PAGE_SIZE)?;
            let heap = si.heap_start..si.heap_start + si.heap_len;
            let page = start_page(mem, strings, heap, si.stack_bottom..si.stack_top, limit, write_boot_info)?;
            memory.map_private(mem, START_PAGE, page, Pte::NO_EXECUTE).inspect_err(|_| mem.free(page))
        })();
        if let Err(e) = built {
            memory.destroy(mem);
            return Err(CreateError::from_fault(e, limit + 1));
        }
        Ok(Self {
            name: name.into(),
            memory,
            regs: template.regs.clone(),
            fpu: template.fpu.clone(),
            via_sysret: template.via_sysret,
            last_cpu: None,
            blocked: template.blocked,
            console: LineBuffer::default(),
            stats: Stats::default(),
            console_limit: crate::limit::TokenBucket::new(0),
            kick_limit: crate::limit::TokenBucket::new(0),
            text: template.text.clone(),
            event_frame,
            clock_offset: template.clock_offset,
        })
    }

    /// Gives it its vNIC record (in its shared page, `layout::
    /// EVENT_NIC_OFFSET`): before it first runs, or while it is on no CPU.
    pub fn set_nic(&mut self, mem: &mut impl PhysMem, info: &abi::NicInfo) {
        mem.write(self.event_frame, layout::EVENT_NIC_OFFSET as usize, &info.to_bytes());
    }

    /// The vNIC indices the hypervisor last published in its shared page:
    /// the TX ring's consumer index and the RX ring's producer index
    /// (where a clone's back end goes on from: its copied rings hold what
    /// these say).
    pub fn published_ring_indices(&self, mem: &impl PhysMem) -> (u32, u32) {
        let word = |at| self.shared_word(mem, at);
        (word(layout::NIC_TX_INDICES + abi::ring::CONS_OFFSET as u64), word(layout::NIC_RX_INDICES + abi::ring::PROD_OFFSET as u64))
    }

    /// The `u32` at offset `at` of its shared page.
    fn shared_word(&self, mem: &impl PhysMem, at: u64) -> u32 {
        let mut b = [0u8; 4];
        mem.read(self.event_frame, at as usize, &mut b);
        u32::from_le_bytes(b)
    }

    /// Whether its vNIC rings hold no frame in flight, as its shared page
    /// says (both rings' producer and consumer indices equal): a clone of
    /// it then needs no copy of its ring pages.
    pub fn rings_idle(&self, mem: &impl PhysMem) -> bool {
        let word = |at| self.shared_word(mem, at);
        let (prod, cons) = (abi::ring::PROD_OFFSET as u64, abi::ring::CONS_OFFSET as u64);
        [layout::NIC_TX_INDICES, layout::NIC_RX_INDICES].iter().all(|&at| word(at + prod) == word(at + cons))
    }

    /// The start-info record of its start page (written by the hypervisor
    /// and read-only to the guest; all zero if the page is missing).
    fn start_info(&mut self, mem: &mut impl PhysMem) -> StartInfo {
        let mut b = [0u8; core::mem::size_of::<StartInfo>()];
        let _ = self.memory.read(mem, abi::layout::START_INFO, &mut b);
        StartInfo::from_bytes(&b)
    }

    /// Its arguments and environment, as its start page holds them.
    fn start_strings(&mut self, mem: &mut impl PhysMem, si: &StartInfo) -> Option<(Vec<String>, Vec<String>)> {
        let mut read = |addr: u64, len: u64, count: u32| -> Option<Vec<String>> {
            if len > layout::START_STRINGS_MAX {
                return None;
            }
            let mut b = alloc::vec![0u8; len as usize];
            self.memory.read(mem, addr, &mut b).ok()?;
            let mut v: Vec<String> = Vec::new();
            for part in b.split(|&c| c == 0).take(count as usize) {
                v.push(String::from(core::str::from_utf8(part).ok()?));
            }
            (v.len() == count as usize).then_some(v)
        };
        Some((read(si.args_addr, si.args_len, si.argc)?, read(si.env_addr, si.env_len, si.envc)?))
    }

    /// Decides what follows an exit. Console output goes to `out` as whole
    /// lines prefixed with the guest's name. `clock` is the monotonic clock
    /// (ns), read only when a rate limit is consulted (a console write, a
    /// kick): most exits need no time at all.
    pub fn handle_exit(&mut self, mem: &mut impl PhysMem, clock: &impl Fn() -> u64, out: &mut impl FnMut(&str)) -> Step {
        let r = &self.regs;
        self.via_sysret = r.vector == VECTOR_SYSCALL;
        let step = match r.vector {
            VECTOR_SYSCALL => self.hypercall(mem, clock, out),
            VECTOR_PAGE_FAULT if r.error & regs::pf::PRESENT == 0 => match self.memory.fault_in(mem, r.cr2) {
                Ok((_, true)) => Step::Resume,
                // Present by now: a stale translation.
                Ok((_, false)) => Step::FlushTlb,
                Err(Fault::OutOfMemory { limit }) => Step::Stopped(StopReason::OutOfMemory { address: r.cr2, limit_bytes: limit }),
                Err(Fault::MachineOutOfMemory) => Step::Stopped(StopReason::MachineOutOfMemory),
                Err(_) => self.fault_step(mem),
            },
            // A write to a present page: copy-on-write, or the guest's fault.
            VECTOR_PAGE_FAULT
                if r.error & (regs::pf::PRESENT | regs::pf::WRITE | regs::pf::FETCH) == regs::pf::PRESENT | regs::pf::WRITE =>
            {
                match self.memory.copy_on_write(mem, r.cr2) {
                    // The old read-only entry may be cached: flush it.
                    Ok(Some(_)) => Step::FlushTlb,
                    // Writable by now (copied on the hypervisor's write for
                    // it): the TLB held the old entry.
                    Ok(None) if self.memory.space.translate(mem, r.cr2).is_some_and(|(_, f)| f.contains(Pte::WRITABLE | Pte::USER)) => {
                        Step::FlushTlb
                    }
                    Ok(None) => self.fault_step(mem),
                    Err(Fault::OutOfMemory { limit }) => Step::Stopped(StopReason::OutOfMemory { address: r.cr2, limit_bytes: limit }),
                    Err(Fault::MachineOutOfMemory) => Step::Stopped(StopReason::MachineOutOfMemory),
                    Err(_) => self.fault_step(mem),
                }
            }
            0..VECTOR_FIRST_INTERRUPT => self.fault_step(mem),
            // External interrupts: the guest was preempted.
            _ => {
                self.stats.preemptions += 1;
                Step::Preempted
            }
        };
        if matches!(step, Step::Resume | Step::Yield | Step::Preempted | Step::NetKick | Step::FlushTlb | Step::Block { .. })
            && self.regs.rip >= layout::USER_END
        {
            // Only a `syscall` in the last bytes of the guest half can get
            // here; never `sysret`/`iret` to a non-canonical address.
            return Step::Stopped(StopReason::NonCanonicalReturn { ip: self.regs.rip });
        }
        step
    }

    /// Time `ns` on the guest's clock, on the hypervisor's (`u64::MAX`,
    /// no deadline, stays; a time before the hypervisor's zero is 0).
    fn host_clock(&self, ns: u64) -> u64 {
        if ns == u64::MAX {
            return ns;
        }
        (i128::from(ns) - i128::from(self.clock_offset)).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The guest's clock when the hypervisor's reads `now`.
    pub fn guest_clock(&self, now: u64) -> u64 {
        (i128::from(now) + i128::from(self.clock_offset)).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The guest's pending event bits (read once from its event page).
    pub fn pending_events(&mut self, mem: &mut impl PhysMem) -> u64 {
        let mut b = [0u8; 8];
        mem.read(self.event_frame, 0, &mut b);
        u64::from_le_bytes(b)
    }

    /// Sets event bits in the guest's event page (tests and the fuzzer;
    /// the hypervisor raises events through `Platform::Events`).
    pub fn raise_events(&mut self, mem: &mut impl PhysMem, bits: u64) {
        let now = self.pending_events(mem) | bits;
        mem.write(self.event_frame, 0, &now.to_le_bytes());
    }

    /// Whether it sleeps in a `block` hypercall.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Call before entering the guest: completes a `block` hypercall it
    /// is in, which returns the pending event bits.
    pub fn wake_from_block(&mut self, mem: &mut impl PhysMem) {
        if self.blocked {
            self.blocked = false;
            self.regs.rax = self.pending_events(mem);
            self.stats.wakeups += 1;
        }
    }

    /// Bytes the hypervisor holds for this guest outside its pages: this
    /// record, its FPU area, name, console line and accounting.
    pub fn record_bytes(&self) -> u64 {
        (core::mem::size_of::<Self>()
            + core::mem::size_of::<FpuState>()
            + self.name.capacity()
            + self.console.capacity()
            + self.stats.cpu_ns_per_cpu.capacity() * 8) as u64
    }

    /// A crash report for a stopped guest: its registers, and a backtrace:
    /// `rip`, then what looks like return addresses (words pointing into
    /// its text just after a call) among the first 4 KiB of its stack, at
    /// most 16 in all.
    /// The guest's memory is read through its own tables, checked.
    pub fn crash_report(&mut self, mem: &mut impl PhysMem) -> [String; 2] {
        let r = self.regs.clone();
        let registers = format!(
            "rip={:#x} rsp={:#x} rbp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x} vector={} error={:#x} cr2={:#x}",
            r.rip,
            r.rsp,
            r.rbp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.r8,
            r.r9,
            r.r10,
            r.r11,
            r.r12,
            r.r13,
            r.r14,
            r.r15,
            r.vector,
            r.error,
            r.cr2
        );
        let mut trace = format!("{:#x}", r.rip);
        let mut found = 1;
        let mut word = [0u8; 8];
        for i in 0..512u64 {
            if found == 16 {
                break;
            }
            let Some(at) = (r.rsp & !7).checked_add(i * 8) else { break };
            // Only pages already there: a crash report must not allocate.
            if self.memory.space.translate(mem, at).is_none() || self.memory.read(mem, at, &mut word).is_err() {
                break;
            }
            let v = u64::from_le_bytes(word);
            let mut before = [0u8; 7];
            if self.text.contains(&v) && self.memory.read(mem, v - 7, &mut before).is_ok() && abi::backtrace::follows_call(&before) {
                trace += &format!(" {v:#x}");
                found += 1;
            }
        }
        [format!("registers: {registers}"), format!("backtrace: {trace}")]
    }

    /// Flushes a partial console line (call when the guest is gone).
    pub fn flush_console(&mut self, out: &mut impl FnMut(&str)) {
        let name = &self.name;
        self.console.flush(&mut |l| out(&format!("{name}| {l}")));
    }

    fn fault_step(&mut self, mem: &mut impl PhysMem) -> Step {
        let r = self.regs.clone();
        let mut insn = [0u8; 4];
        let n = (0..insn.len()).take_while(|&i| self.memory.read(mem, r.rip + i as u64, &mut insn[i..i + 1]).is_ok()).count();
        let guard = STACK_TOP - STACK_MAX - PAGE_SIZE..STACK_TOP - STACK_MAX;
        Step::Stopped(fault::reason(&fault::FaultInfo {
            vector: r.vector,
            error: r.error,
            cr2: r.cr2,
            rip: r.rip,
            insn: &insn[..n],
            stack_guard: r.vector == 14 && guard.contains(&r.cr2),
        }))
    }

    fn hypercall(&mut self, mem: &mut impl PhysMem, clock: &impl Fn() -> u64, out: &mut impl FnMut(&str)) -> Step {
        let (nr, a0, a1) = (self.regs.rax, self.regs.rdi, self.regs.rsi);
        self.stats.hypercalls += 1;
        let Ok(hc) = Hypercall::try_from(nr) else {
            return bad(HypercallError::UnknownNumber { number: nr });
        };
        match hc {
            Hypercall::ConsoleWrite => {
                if a1 > CONSOLE_WRITE_MAX as u64 {
                    return bad(HypercallError::ConsoleWriteLength { length: a1, max: CONSOLE_WRITE_MAX as u64 });
                }
                let mut buf = [0u8; CONSOLE_WRITE_MAX];
                let buf = &mut buf[..a1 as usize];
                if let Err(e) = self.memory.read(mem, a0, buf) {
                    return bad(HypercallError::ConsoleWriteBuffer { address: a0, length: a1, error: memory_error(e) });
                }
                self.regs.rax = a1;
                if !self.console_limit.take_by(clock, a1) {
                    // Over its rate: dropped and counted; said the first time.
                    if self.console_limit.refused == a1 {
                        out(&format!("[hv] guest {} console over its limit of {} bytes/s: dropping", self.name, self.console_limit.rate()));
                    }
                    return Step::Resume;
                }
                let name = &self.name;
                self.console.push(buf, &mut |l| out(&format!("{name}| {l}")));
                Step::Resume
            }
            Hypercall::Exit => Step::Exited(a0 as u32 as i32),
            Hypercall::Yield => {
                self.regs.rax = 0;
                self.stats.yields += 1;
                Step::Yield
            }
            Hypercall::Nop => {
                self.regs.rax = 0;
                Step::Resume
            }
            Hypercall::NetKick => {
                self.regs.rax = 0;
                // Past its rate a kick does nothing: its frames still go out
                // when it blocks, yields or is preempted.
                if self.kick_limit.take_by(clock, 1) { Step::NetKick } else { Step::Resume }
            }
            Hypercall::Discard => {
                if !self.memory.is_discardable(a0, a1) {
                    return bad(HypercallError::Discard { address: a0, length: a1 });
                }
                match self.memory.discard(mem, a0, a0 + a1) {
                    Ok(pages) => {
                        self.regs.rax = pages * PAGE_SIZE;
                        if pages > 0 { Step::FlushTlb } else { Step::Resume }
                    }
                    // Copying a shared page table it covers in part.
                    Err(Fault::OutOfMemory { limit }) => Step::Stopped(StopReason::OutOfMemory { address: a0, limit_bytes: limit }),
                    Err(_) => Step::Stopped(StopReason::MachineOutOfMemory),
                }
            }
            Hypercall::Block => {
                let pending = self.pending_events(mem);
                if pending != 0 {
                    self.regs.rax = pending;
                    Step::Resume
                } else {
                    self.blocked = true;
                    Step::Block { deadline: self.host_clock(a0) }
                }
            }
        }
    }

    /// Returns every frame the guest owns to `mem`.
    pub fn destroy(self, mem: &mut impl PhysMem) -> usize {
        self.memory.destroy(mem)
    }
}

/// Maps `image` and the time page into `memory`: the image's read-only
/// pages shared, and a copy of each of its writable pages except those
/// `has_own(va)` says the guest brings itself (a restored guest's saved
/// ones).
fn map_image<M: PhysMem>(
    memory: &mut GuestMemory,
    mem: &mut M,
    image: &LoadedImage,
    time_page: PhysAddr,
    has_own: impl Fn(u64) -> bool,
) -> Result<(), Fault> {
    for p in &image.pages {
        if !p.writable {
            memory.map_shared(mem, p.vaddr, p.frame, p.flags)?;
        } else if !has_own(p.vaddr) {
            let f = mem.alloc_copy(p.frame).ok_or(Fault::MachineOutOfMemory)?;
            memory.map_private(mem, p.vaddr, f, p.flags).inspect_err(|_| mem.free(f))?;
        }
    }
    memory.map_shared(mem, layout::TIME_PAGE, time_page, Pte::NO_EXECUTE)
}

/// A guest stopped for a bad hypercall.
fn bad(e: HypercallError) -> Step {
    Step::Stopped(StopReason::BadHypercall(e))
}

/// A failed access to guest memory, as a stop reason tells it.
pub fn memory_error(f: Fault) -> MemoryError {
    match f {
        Fault::Unmapped(address) => MemoryError::Unmapped { address },
        Fault::Protection(address) => MemoryError::NotWritable { address },
        Fault::OutOfRange { addr, len } => MemoryError::OutOfRange { address: addr, length: len },
        Fault::OutOfMemory { limit } => MemoryError::OutOfMemory { limit_bytes: limit },
        Fault::MachineOutOfMemory => MemoryError::MachineOutOfMemory,
    }
}

/// A start page (a new frame) for a guest with `strings`, its heap, its
/// stack and its memory limit; `write_boot_info` adds the boot record
/// (and the vNIC record).
fn start_page<M: PhysMem>(
    mem: &mut M,
    strings: &StartStrings,
    heap: core::ops::Range<u64>,
    stack: core::ops::Range<u64>,
    memory_limit: u64,
    write_boot_info: impl FnOnce(&mut M, PhysAddr),
) -> Result<PhysAddr, Fault> {
    let page = mem.alloc().ok_or(Fault::MachineOutOfMemory)?;
    let strings_at = START_PAGE + layout::START_STRINGS_OFFSET;
    let si = StartInfo {
        magic: abi::START_MAGIC,
        abi_version: abi::ABI_VERSION,
        argc: strings.argc,
        // The name is in the shared page (ABI 9).
        name_addr: 0,
        name_len: 0,
        args_addr: strings_at + strings.args.start as u64,
        args_len: strings.args.len() as u64,
        env_addr: strings_at + strings.env.start as u64,
        env_len: strings.env.len() as u64,
        envc: strings.envc,
        reserved: 0,
        heap_start: heap.start,
        heap_len: heap.end - heap.start,
        stack_bottom: stack.start,
        stack_top: stack.end,
        memory_limit,
    };
    mem.write(page, layout::START_INFO_OFFSET as usize, &si.to_bytes());
    mem.write(page, layout::START_STRINGS_OFFSET as usize, &strings.bytes);
    write_boot_info(mem, page);
    Ok(page)
}

/// The start page's strings: the arguments and the environment, each
/// NUL-terminated (where each list lies in `bytes`).
struct StartStrings {
    bytes: Vec<u8>,
    args: core::ops::Range<usize>,
    argc: u32,
    env: core::ops::Range<usize>,
    envc: u32,
}

/// Whether `name` can be an instance name: at most `layout::NAME_MAX`
/// bytes, no NUL.
fn valid_name(name: &str) -> bool {
    name.len() <= layout::NAME_MAX && !name.contains('\0')
}

/// Writes a guest's identity into its shared page `events`: its name, and
/// its vNIC record (`None`: zero, none yet).
fn write_identity(mem: &mut impl PhysMem, events: PhysAddr, name: &str, nic: Option<&abi::NicInfo>) {
    let mut slot = [0u8; 8 + layout::NAME_MAX];
    let name = &name.as_bytes()[..name.len().min(layout::NAME_MAX)];
    slot[..8].copy_from_slice(&(name.len() as u64).to_le_bytes());
    slot[8..8 + name.len()].copy_from_slice(name);
    mem.write(events, layout::EVENT_NAME_OFFSET as usize, &slot);
    mem.write(events, layout::EVENT_NIC_OFFSET as usize, &nic.copied().unwrap_or_default().to_bytes());
}

/// The start page's strings, if they fit, hold no NUL byte, and every
/// variable is `KEY=VALUE` with a key (the name is apart: `valid_name`).
fn start_strings(args: &[&str], env: &[&str]) -> Option<StartStrings> {
    let mut bytes = Vec::new();
    let mut put = |parts: &[&str]| {
        let start = bytes.len();
        for p in parts {
            bytes.extend_from_slice(p.as_bytes());
            bytes.push(0);
        }
        start..bytes.len()
    };
    let args_at = put(args);
    let env_at = put(env);
    let clean = args.iter().chain(env).all(|p| !p.contains('\0'));
    let vars = env.iter().all(|v| v.find('=').is_some_and(|i| i > 0));
    let fits = bytes.len() as u64 <= layout::START_STRINGS_MAX;
    (clean && vars && fits).then_some(StartStrings { bytes, args: args_at, argc: args.len() as u32, env: env_at, envc: env.len() as u32 })
}

#[cfg(test)]
pub(crate) mod tests;
