//! A guest's state as a snapshot file (`abi::snapshot`), and a guest
//! made from one, here or on another hypervisor.
//!
//! Rules:
//! - Only a guest on no CPU is saved (paused: the caller took it out of
//!   the table), so its registers and pages are those of one instant; a
//!   guest in a `block` hypercall is saved as blocked and wakes when
//!   restored.
//! - Saved: every page it owns (copy-on-write ones it shares with clones
//!   included) except its start page; not its image's read-only pages or
//!   the time page, nor the pages of its heap and stack that are all zero
//!   (a touch maps a zero page again).
//! - Restored: everything in the file is checked (`Snapshot::parse`)
//!   before this sees it, and what the hypervisor relies on is its own:
//!   the image's read-only pages come from the loaded image, the shared
//!   page is mapped writable and never executable whatever the file says,
//!   the start page is new, every page is charged against the limit, and
//!   any failure frees everything it took.
//! - The restored guest is a new copy: `events::CLONED` and a new
//!   generation, as for a clone; its clock goes on from the saved one
//!   (`layout::EVENT_CLOCK_OFFSET`).

use super::regs::{FpuState, Regs};
use super::{
    CreateError, Guest, LoadedImage, Stats, console::LineBuffer, map_image, start_page, start_strings, valid_name, write_identity,
};
use crate::mm::paging::{AddressSpace, Pte};
use crate::mm::user::{Fault, GuestMemory};
use crate::mm::{PhysAddr, PhysMem};
use abi::bundle::Settings;
use abi::layout::{self, HEAP_LEN, PAGE_SIZE, STACK_MAX, STACK_TOP, START_PAGE, TIME_PAGE};
use abi::snapshot::{Snapshot, State, Writer};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

impl Regs {
    /// The registers in the snapshot's order (`abi::snapshot::REGISTERS`).
    fn to_words(&self) -> [u64; 21] {
        let r = self;
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rip, r.rsp, r.rflags,
            r.vector, r.error, r.cr2,
        ]
    }

    fn from_words(w: &[u64; 21]) -> Self {
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rsp, rflags, vector, error, cr2] = *w;
        Self { rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rsp, rflags, vector, error, cr2 }
    }
}

/// The image's read-only pages by address (sorted), which a snapshot
/// leaves out and a restore maps from the image.
fn image_shared(image: &LoadedImage) -> Vec<(u64, PhysAddr)> {
    let mut v: Vec<(u64, PhysAddr)> = image.pages.iter().filter(|p| !p.writable).map(|p| (p.vaddr, p.frame)).collect();
    v.sort_unstable();
    v
}

/// Whether the page at `va` (frame `pa`, flags `fl`) of `memory` goes
/// into a snapshot; its bytes are in `buf` if so. Not the start page, the
/// time page or the image's read-only pages (`shared`); not a heap or
/// stack page of zeroes (touched again, it is a zero page again).
fn saved(
    memory: &GuestMemory,
    mem: &mut impl PhysMem,
    va: u64,
    pa: PhysAddr,
    fl: Pte,
    shared: &[(u64, PhysAddr)],
    buf: &mut [u8; 4096],
) -> bool {
    if va == START_PAGE || va == TIME_PAGE {
        return false;
    }
    let image_page = fl.contains(Pte::SHARED)
        && !fl.contains(Pte::COW)
        && shared.binary_search_by_key(&va, |&(v, _)| v).is_ok_and(|i| shared[i].1 == pa);
    if image_page {
        return false;
    }
    mem.read(pa, 0, buf);
    !memory.is_zero_fill(va) || buf.iter().any(|&b| b != 0)
}

impl Guest {
    /// Its state as a snapshot file: `image` is the image it runs (whose
    /// file has SHA-256 `digest`), `settings` its own, `now` the
    /// hypervisor's clock. For a guest on no CPU. `Err` if the file would
    /// take more than `room` bytes of the heap, or the buffer cannot be
    /// had, or its start page cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot(
        &mut self,
        mem: &mut impl PhysMem,
        image: &LoadedImage,
        digest: [u8; 32],
        settings: &Settings,
        now: u64,
        room: usize,
    ) -> Result<Vec<u8>, String> {
        let si = self.start_info(mem);
        let (args, env) = self.start_strings(mem, &si).ok_or_else(|| String::from("its start page cannot be read"))?;
        let (args, env): (Vec<&str>, Vec<&str>) = (args.iter().map(String::as_str).collect(), env.iter().map(String::as_str).collect());
        let shared = image_shared(image);
        let mut page = Box::new([0u8; PAGE_SIZE as usize]);
        let memory = &self.memory;
        let mut count = 0u32;
        memory.space.each_user_page(mem, &mut |m, va, pa, fl| count += u32::from(saved(memory, m, va, pa, fl, &shared, &mut page)));
        let state = State {
            abi: abi::ABI_VERSION,
            image_digest: digest,
            settings: *settings,
            clock_ns: self.guest_clock(now),
            blocked: self.blocked,
            regs: self.regs.to_words(),
            fpu: self.fpu.0,
        };
        let size = Writer::size(&image.name, &self.name, &args, &env, count);
        if size > room {
            return Err(format!("its file of {size} bytes is more than the hypervisor's heap has room for ({room} bytes)"));
        }
        let mut w = Writer::new(&state, &image.name, &self.name, &args, &env, count)
            .ok_or_else(|| format!("the hypervisor's heap has no room for its {} pages", count))?;
        memory.space.each_user_page(mem, &mut |m, va, pa, fl| {
            if saved(memory, m, va, pa, fl, &shared, &mut page) {
                w.page(va, fl.contains(Pte::WRITABLE) || fl.contains(Pte::COW), !fl.contains(Pte::NO_EXECUTE), &page);
            }
        });
        w.finish().ok_or_else(|| String::from("its pages changed while it was saved"))
    }

    /// A guest made from snapshot `snap` of a guest of `image`, named
    /// `name` (with `args` if given, else the saved arguments), with a new
    /// start page (`write_boot_info` writes the boot
    /// and vNIC records into it), at `now` on the hypervisor's clock. The
    /// pages in `rings` (its vNIC's ring slots) are left to the caller,
    /// who maps them from the snapshot with its rings.
    #[allow(clippy::too_many_arguments)]
    pub fn restore<M: PhysMem>(
        mem: &mut M,
        kernel_root: PhysAddr,
        time_page: PhysAddr,
        image: &LoadedImage,
        snap: &Snapshot<'_>,
        name: &str,
        args: Option<&[&str]>,
        heap_start: u64,
        rings: Range<u64>,
        now: u64,
        write_boot_info: impl FnOnce(&mut M, PhysAddr),
    ) -> Result<Self, String> {
        let st = &snap.state;
        let limit = st.settings.memory;
        let args: Vec<&str> = match args {
            Some(a) => a.to_vec(),
            None => snap.args().collect(),
        };
        let env: Vec<&str> = snap.env().collect();
        let strings = start_strings(&args, &env).filter(|_| valid_name(name)).ok_or_else(|| format!("{}", CreateError::ArgsTooLong))?;
        let space = AddressSpace::new(mem, kernel_root).ok_or_else(|| format!("{}", CreateError::MachineOutOfMemory))?;
        let heap = heap_start..heap_start + HEAP_LEN;
        let stack = STACK_TOP - STACK_MAX..STACK_TOP;
        let mut memory = GuestMemory::new(space, heap.clone(), stack.clone(), limit);
        let built = (|| -> Result<PhysAddr, String> {
            let mut event_frame = None;
            let why = |e: Fault| match e {
                Fault::OutOfMemory { limit } => format!("its pages do not fit its memory limit of {} KiB", limit / 1024),
                Fault::MachineOutOfMemory => String::from("the machine is out of memory"),
                e => format!("a page of it overlaps another: {e}"),
            };
            // The image's writable pages it saved are its own (a snapshot
            // this hypervisor wrote holds them all).
            map_image(&mut memory, mem, image, time_page, |va| snap.page(va).is_some()).map_err(why)?;
            for p in snap.pages() {
                if rings.contains(&p.vaddr) {
                    continue;
                }
                let mut flags = Pte::empty();
                if p.writable {
                    flags |= Pte::WRITABLE;
                }
                if !p.executable {
                    flags |= Pte::NO_EXECUTE;
                }
                if p.vaddr == layout::EVENT_PAGE {
                    flags = Pte::WRITABLE | Pte::NO_EXECUTE;
                }
                let f = mem.alloc().ok_or_else(|| why(Fault::MachineOutOfMemory))?;
                mem.write(f, 0, p.data);
                memory.map_private(mem, p.vaddr, f, flags).inspect_err(|_| mem.free(f)).map_err(why)?;
                if p.vaddr == layout::EVENT_PAGE {
                    event_frame = Some(f);
                }
            }
            let events = match event_frame {
                Some(f) => f,
                None => {
                    let f = mem.alloc().ok_or_else(|| why(Fault::MachineOutOfMemory))?;
                    memory
                        .map_private(mem, layout::EVENT_PAGE, f, Pte::WRITABLE | Pte::NO_EXECUTE)
                        .inspect_err(|_| mem.free(f))
                        .map_err(why)?;
                    f
                }
            };
            let page = start_page(mem, &strings, heap.clone(), stack.clone(), limit, write_boot_info).map_err(why)?;
            memory.map_private(mem, START_PAGE, page, Pte::NO_EXECUTE).inspect_err(|_| mem.free(page)).map_err(why)?;
            Ok(events)
        })();
        let events = match built {
            Ok(f) => f,
            Err(e) => {
                memory.destroy(mem);
                return Err(e);
            }
        };
        // A new copy: CLONED, the next generation, and its clock going on
        // from the saved one.
        let clock_offset = (i128::from(st.clock_ns) - i128::from(now)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let word = |at: u64| {
            let mut b = [0u8; 8];
            mem.read(events, at as usize, &mut b);
            u64::from_le_bytes(b)
        };
        let (pending, generation) = (word(0), word(layout::EVENT_GENERATION_OFFSET));
        mem.write(events, 0, &(pending | abi::time::events::CLONED).to_le_bytes());
        mem.write(events, layout::EVENT_GENERATION_OFFSET as usize, &generation.wrapping_add(1).to_le_bytes());
        mem.write(events, layout::EVENT_CLOCK_OFFSET as usize, &clock_offset.to_le_bytes());
        // Its own name; its vNIC record is the caller's (`Guest::set_nic`).
        write_identity(mem, events, name, None);
        Ok(Self {
            name: name.into(),
            memory,
            regs: Regs::from_words(&st.regs),
            fpu: Box::new(FpuState(st.fpu)),
            // `iretq` restores every register, whatever the exit was.
            via_sysret: false,
            last_cpu: None,
            blocked: st.blocked,
            console: LineBuffer::default(),
            stats: Stats::default(),
            console_limit: crate::limit::TokenBucket::new(0),
            kick_limit: crate::limit::TokenBucket::new(0),
            text: image.text_range(),
            event_frame: events,
            clock_offset,
        })
    }
}
