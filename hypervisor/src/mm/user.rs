//! A guest's memory as the hypervisor sees it: its address space, the
//! regions that are filled with zeroes on first touch, and the checked copy
//! routines through which every guest pointer passes.
//!
//! Guest pointers are allegations (Hubris `umem.rs`): a range is accepted
//! only if it does not wrap, lies in the guest half, and every page of it is
//! mapped user-accessible (and writable, for writes) in this guest's own
//! tables. Data is copied through the frames' physical addresses, so the
//! hypervisor never dereferences a guest address and SMAP stays on.

use super::paging::{AddressSpace, MapError, Pte};
use super::{FRAME_SIZE, PhysAddr, PhysMem};
use abi::layout::{USER_END, page_down};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

/// Why a guest memory access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The address is not mapped and not in a demand-zero region.
    Unmapped(u64),
    /// Mapped, but not with the access asked for (e.g. write to text).
    Protection(u64),
    /// The range wraps around or leaves the guest half.
    OutOfRange { addr: u64, len: u64 },
    /// The guest hit its memory limit.
    OutOfMemory { limit: u64 },
    /// The machine ran out of frames.
    MachineOutOfMemory,
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Fault::Unmapped(a) => write!(f, "address {a:#x} is not mapped"),
            Fault::Protection(a) => write!(f, "address {a:#x} is not writable"),
            Fault::OutOfRange { addr, len } => write!(f, "range {addr:#x}+{len:#x} leaves the guest's half"),
            Fault::OutOfMemory { limit } => write!(f, "out of memory (limit {} KiB)", limit / 1024),
            Fault::MachineOutOfMemory => f.write_str("the machine is out of memory"),
        }
    }
}

/// Pages a guest owned once and froze to be shared copy-on-write with its
/// clones (and itself): read-only to all of them, freed with the last one
/// (`GuestMemory::destroy`); and the page tables that held only such
/// pages (and image pages), shared the same way (`AddressSpace::share_tables`).
#[derive(Debug)]
pub struct Frozen {
    frames: Vec<PhysAddr>,
}

impl Frozen {
    /// Frames in the set.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the set holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// A guest's memory: address space, demand-zero regions, and accounting.
#[derive(Debug)]
pub struct GuestMemory {
    pub space: AddressSpace,
    /// Regions filled with zero pages on first touch (heap, stack).
    zero_fill: [Range<u64>; 2],
    /// Where its vNIC's ring slot pages lie if they were deferred
    /// (`defer_rings`), made or not.
    rings: Range<u64>,
    /// They are not made yet: all of them are made at the first touch of
    /// one, by the guest or the hypervisor (`make_rings`).
    rings_deferred: bool,
    /// Ring pages were made since `take_made_rings` last looked: the back
    /// end must learn their frames before the guest runs on.
    rings_made: bool,
    /// Frames the guest owns (not counting page tables).
    private: u64,
    /// Frames mapped that other guests share (image text, the time page,
    /// frozen pages).
    shared: u64,
    limit_frames: u64,
    /// The frozen sets its copy-on-write pages belong to (one per freeze
    /// of it or of a guest it was cloned from).
    frozen: Vec<Arc<Frozen>>,
    /// Its own pages are those of the last freeze: none came since (a
    /// template cloned again and again walks its tables once).
    unchanged_since_freeze: bool,
    /// What its clones' address spaces are copies of, made at its first
    /// clone since it last changed (`clone_shared`), and gone at its next
    /// change.
    prototype: Option<Prototype>,
}

/// A template's clone as its tables would be, never run: a clone's are
/// copies of these, table by table (`AddressSpace::replicate`).
#[derive(Debug)]
struct Prototype {
    space: AddressSpace,
    plan: crate::mm::paging::TablePlan,
    /// Leaves it maps (all shared).
    leaves: u64,
}

impl GuestMemory {
    pub fn new(space: AddressSpace, heap: Range<u64>, stack: Range<u64>, limit_bytes: u64) -> Self {
        Self {
            space,
            zero_fill: [heap, stack],
            rings: 0..0,
            rings_deferred: false,
            rings_made: false,
            private: 0,
            shared: 0,
            limit_frames: limit_bytes / FRAME_SIZE,
            frozen: Vec::new(),
            unchanged_since_freeze: false,
            prototype: None,
        }
    }

    /// Its private pages and page tables, its clones' prototype included.
    fn charged(&self) -> u64 {
        self.private + self.table_frames()
    }

    /// What its limit holds: what it is charged, and its ring pages not
    /// made yet with the tables they may need (so that making them never
    /// finds the limit full).
    fn committed(&self) -> u64 {
        let deferred = if self.rings_deferred { (self.rings.end - self.rings.start) / FRAME_SIZE + 3 } else { 0 };
        self.charged() + deferred
    }

    fn table_frames(&self) -> u64 {
        (self.space.table_frames() + self.prototype.as_ref().map_or(0, |p| p.space.table_frames())) as u64
    }

    /// Frees its clones' prototype: it is about to change.
    fn changing(&mut self, mem: &mut impl PhysMem) {
        if let Some(p) = self.prototype.take() {
            p.space.destroy(mem);
        }
    }

    /// Bytes charged to the guest: its private pages and its page tables.
    pub fn charged_bytes(&self) -> u64 {
        self.charged() * FRAME_SIZE
    }

    /// Bytes of the guest's own pages (not page tables).
    pub fn private_bytes(&self) -> u64 {
        self.private * FRAME_SIZE
    }

    /// Bytes of page tables (with a template's prototype for its clones).
    pub fn table_bytes(&self) -> u64 {
        self.table_frames() * FRAME_SIZE
    }

    /// Bytes mapped that are shared with other guests (not charged), and
    /// the page tables shared with them.
    pub fn shared_bytes(&self) -> u64 {
        (self.shared + self.space.shared_table_frames() as u64) * FRAME_SIZE
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_frames * FRAME_SIZE
    }

    /// Maps a frame the guest owns, charging it (and any new page tables)
    /// against the limit.
    pub fn map_private(&mut self, mem: &mut impl PhysMem, va: u64, pa: PhysAddr, flags: Pte) -> Result<(), Fault> {
        self.map(mem, va, pa, flags, 1)
    }

    /// Maps a frame shared with other guests; only page tables are charged.
    pub fn map_shared(&mut self, mem: &mut impl PhysMem, va: u64, pa: PhysAddr, flags: Pte) -> Result<(), Fault> {
        self.map(mem, va, pa, flags | Pte::SHARED, 0)
    }

    fn map(&mut self, mem: &mut impl PhysMem, va: u64, pa: PhysAddr, flags: Pte, cost: u64) -> Result<(), Fault> {
        self.changing(mem);
        // Worst case three new tables; refuse before touching anything.
        if self.committed() + cost + 3 > self.limit_frames {
            return Err(Fault::OutOfMemory { limit: self.limit_bytes() });
        }
        match self.space.map_user(mem, va, pa, flags) {
            Ok(()) => {
                self.private += cost;
                self.shared += 1 - cost;
                self.unchanged_since_freeze &= cost == 0;
                Ok(())
            }
            Err(MapError::OutOfMemory) => Err(Fault::MachineOutOfMemory),
            Err(MapError::AlreadyMapped | MapError::BadAddress) => Err(Fault::Unmapped(va)),
        }
    }

    /// Whether `frames` more private frames (and three page tables) fit
    /// under its limit now, beside its ring pages not made yet.
    pub fn has_room_for(&self, frames: u64) -> bool {
        self.committed() + frames + 3 <= self.limit_frames
    }

    /// Leaves the vNIC ring slot pages at `range` unmade until their first
    /// touch (`make_rings`): an idle guest never pays for them, though its
    /// limit holds room for them (the caller checked `has_room_for`).
    pub fn defer_rings(&mut self, range: Range<u64>) {
        self.rings_deferred = !range.is_empty();
        self.rings = range;
    }

    /// The frames of its deferred ring pages, once made, in address order.
    pub fn ring_frames(&self, mem: &impl PhysMem) -> Vec<PhysAddr> {
        self.rings.clone().step_by(FRAME_SIZE as usize).filter_map(|va| self.space.translate(mem, va).map(|(pa, _)| pa)).collect()
    }

    /// Whether its ring pages wait to be made.
    pub fn rings_deferred(&self) -> bool {
        self.rings_deferred
    }

    /// Makes the deferred ring pages (zeroed, charged; each one not
    /// mapped yet, so that a call after a failure goes on where it
    /// stopped). Nothing if none are deferred.
    pub fn make_rings(&mut self, mem: &mut impl PhysMem) -> Result<(), Fault> {
        // Out of the reservation while they are charged one by one; back
        // in if the machine has no frame for one.
        if !core::mem::take(&mut self.rings_deferred) {
            return Ok(());
        }
        for va in self.rings.clone().step_by(FRAME_SIZE as usize) {
            if self.space.translate(mem, va).is_some() {
                continue;
            }
            let made = match mem.alloc() {
                Some(frame) => self.map_private(mem, va, frame, Pte::WRITABLE | Pte::NO_EXECUTE).inspect_err(|_| mem.free(frame)),
                None => Err(Fault::MachineOutOfMemory),
            };
            if let Err(e) = made {
                self.rings_deferred = true;
                return Err(e);
            }
        }
        self.rings_made = true;
        Ok(())
    }

    /// Whether ring pages were made since the last call (the back end must
    /// learn their frames now).
    pub fn take_made_rings(&mut self) -> bool {
        core::mem::take(&mut self.rings_made)
    }

    /// Whether `va` lies in a demand-zero region.
    pub fn is_zero_fill(&self, va: u64) -> bool {
        self.zero_fill.iter().any(|r| r.contains(&va))
    }

    /// Resolves a not-present fault at `va`: maps a zeroed page if `va` is
    /// in a demand-zero region. Returns the frame, and whether it was mapped
    /// just now (false: present already, made so for the guest meanwhile or
    /// seen through a stale translation of a page table it shared and has
    /// since copied; the caller flushes the TLB). Any other fault is the
    /// guest's and is returned.
    pub fn fault_in(&mut self, mem: &mut impl PhysMem, va: u64) -> Result<(PhysAddr, bool), Fault> {
        if let Some((pa, _)) = self.space.translate(mem, page_down(va)) {
            return Ok((pa, false));
        }
        if self.rings_deferred && self.rings.contains(&va) {
            self.make_rings(mem)?;
            let (pa, _) = self.space.translate(mem, page_down(va)).ok_or(Fault::Unmapped(va))?;
            return Ok((pa, true));
        }
        if !self.is_zero_fill(va) {
            return Err(Fault::Unmapped(va));
        }
        if self.committed() + 4 > self.limit_frames {
            return Err(Fault::OutOfMemory { limit: self.limit_bytes() });
        }
        let frame = mem.alloc().ok_or(Fault::MachineOutOfMemory)?;
        if let Err(e) = self.map_private(mem, page_down(va), frame, Pte::WRITABLE | Pte::NO_EXECUTE) {
            mem.free(frame);
            return Err(e);
        }
        Ok((frame, true))
    }

    /// The frame behind the guest page at `va`, checked for `write` access,
    /// faulting in demand-zero pages and copying copy-on-write ones.
    fn page(&mut self, mem: &mut impl PhysMem, va: u64, write: bool) -> Result<PhysAddr, Fault> {
        match self.space.translate(mem, va) {
            Some((_, fl)) if write && fl.contains(Pte::COW) => self.copy_on_write(mem, va)?.ok_or(Fault::Protection(va)),
            Some((pa, fl)) => {
                if !fl.contains(Pte::USER) || (write && !fl.contains(Pte::WRITABLE)) {
                    return Err(Fault::Protection(va));
                }
                Ok(page_down(pa))
            }
            None => self.fault_in(mem, va).map(|(pa, _)| page_down(pa)),
        }
    }

    /// Resolves a write to the copy-on-write page at `va`: copies its
    /// frozen frame into a frame of the guest's own, charged, and maps
    /// that writable in its place. `Ok(None)` if `va` is no copy-on-write
    /// page (the fault is the guest's); the caller flushes the TLB.
    pub fn copy_on_write(&mut self, mem: &mut impl PhysMem, va: u64) -> Result<Option<PhysAddr>, Fault> {
        let va = page_down(va);
        let Some((src, flags)) = self.space.translate(mem, va).filter(|(_, f)| f.contains(Pte::COW)) else {
            return Ok(None);
        };
        self.changing(mem);
        // Its page table too, if that is shared.
        let table = self.space.shares_table_over(mem, va);
        if self.committed() + 1 + u64::from(table) > self.limit_frames {
            return Err(Fault::OutOfMemory { limit: self.limit_bytes() });
        }
        if table {
            self.space.unshare_table(mem, va).map_err(|_| Fault::MachineOutOfMemory)?;
        }
        let frame = mem.alloc_copy(page_down(src)).ok_or(Fault::MachineOutOfMemory)?;
        let own = (flags - Pte::COW - Pte::SHARED - Pte::ACCESSED - Pte::DIRTY) | Pte::WRITABLE;
        self.space.remap_user(mem, va, frame, own);
        self.private += 1;
        self.shared -= 1;
        self.unchanged_since_freeze = false;
        Ok(Some(frame))
    }

    /// Freezes every page the guest owns outside `keep(va)` (its own
    /// per-instance pages: start page, shared page, rings): each becomes
    /// read-only, shared, and (if it was writable) copy-on-write, in one
    /// new frozen set, with the page tables left holding only shared
    /// pages. The guest is charged for them no more; a write copies the
    /// page (and its table) back (`copy_on_write`). Returns how many pages
    /// froze. Nothing changes if the list of them cannot be allocated.
    /// The caller flushes the TLB (the guest is on no CPU).
    pub fn freeze(&mut self, mem: &mut impl PhysMem, keep: &impl Fn(u64) -> bool) -> Result<usize, Fault> {
        if self.unchanged_since_freeze {
            return Ok(0);
        }
        self.changing(mem);
        let mut n = 0usize;
        self.space.each_user_page(mem, &mut |_, va, _, fl| {
            n += usize::from(!fl.contains(Pte::SHARED) && !keep(va));
        });
        if n == 0 {
            self.unchanged_since_freeze = true;
            return Ok(0);
        }
        let mut frames = Vec::new();
        frames.try_reserve_exact(n + self.space.table_frames()).map_err(|_| Fault::MachineOutOfMemory)?;
        self.frozen.try_reserve(1).map_err(|_| Fault::MachineOutOfMemory)?;
        self.space.rewrite_user_pages(mem, &mut |_, va, pa, fl| {
            if fl.contains(Pte::SHARED) || keep(va) || frames.len() == n {
                return None;
            }
            frames.push(pa);
            let cow = if fl.contains(Pte::WRITABLE) { Pte::COW } else { Pte::empty() };
            Some((fl - Pte::WRITABLE) | Pte::SHARED | cow)
        });
        let frozen = frames.len();
        self.private -= frozen as u64;
        self.shared += frozen as u64;
        self.space.share_tables(mem, &mut |t| frames.push(t));
        self.frozen.push(Arc::new(Frozen { frames }));
        self.unchanged_since_freeze = true;
        Ok(frozen)
    }

    /// A new guest memory over a fresh address space (`kernel_root`'s upper
    /// half) that maps every page this one shares (image text, time page,
    /// frozen pages: `freeze` first) where this one has it, with the same
    /// rights, except the pages `keep(va)` picks (the clone maps its own
    /// there). It owns nothing but its page tables, charged against
    /// `limit_bytes`, and holds this one's frozen sets.
    ///
    /// The first clone since this one last changed makes a prototype (its
    /// tables copied a table at a time, with only the shared leaves:
    /// `AddressSpace::copy_shared`), charged to this one; every clone's
    /// tables are copies of the prototype's. So `kernel_root` and `keep`
    /// must be the same for every clone of it.
    pub fn clone_shared(
        &mut self,
        mem: &mut impl PhysMem,
        kernel_root: PhysAddr,
        limit_bytes: u64,
        keep: &impl Fn(u64) -> bool,
    ) -> Result<Self, Fault> {
        if self.prototype.is_none() {
            let leaf = |va, fl: Pte| (!keep(va)).then(|| fl - Pte::ACCESSED - Pte::DIRTY);
            let (space, leaves) = self.space.copy_shared(mem, kernel_root, &leaf).ok_or(Fault::MachineOutOfMemory)?;
            let plan = space.table_plan(mem);
            self.prototype = Some(Prototype { space, plan, leaves: leaves as u64 });
        }
        let Some(p) = &self.prototype else { return Err(Fault::MachineOutOfMemory) };
        let space = AddressSpace::replicate(mem, &p.plan).ok_or(Fault::MachineOutOfMemory)?;
        let mut copy = Self::new(space, self.zero_fill[0].clone(), self.zero_fill[1].clone(), limit_bytes);
        copy.shared = p.leaves;
        let mut frozen = Vec::new();
        if copy.charged() > copy.limit_frames || frozen.try_reserve_exact(self.frozen.len()).is_err() {
            let full = copy.charged() > copy.limit_frames;
            copy.destroy(mem);
            return Err(if full { Fault::OutOfMemory { limit: limit_bytes } } else { Fault::MachineOutOfMemory });
        }
        frozen.extend(self.frozen.iter().cloned());
        copy.frozen = frozen;
        Ok(copy)
    }

    /// Frames in the frozen sets it holds (shared with its clones).
    pub fn frozen_frames(&self) -> usize {
        self.frozen.iter().map(|f| f.len()).sum()
    }

    /// Checks a guest range for wrap-around and for staying in the guest half.
    pub fn check_range(addr: u64, len: u64) -> Result<(), Fault> {
        match addr.checked_add(len) {
            Some(end) if end <= USER_END => Ok(()),
            _ => Err(Fault::OutOfRange { addr, len }),
        }
    }

    /// Walks `[addr, addr + len)` page by page, checked for `write` access,
    /// calling `f(mem, frame, offset in frame, range in the buffer)`.
    fn each_page<M: PhysMem>(
        &mut self,
        mem: &mut M,
        addr: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(&mut M, PhysAddr, usize, Range<usize>),
    ) -> Result<(), Fault> {
        Self::check_range(addr, len as u64)?;
        let mut done = 0;
        while done < len {
            let va = addr + done as u64;
            let off = (va % FRAME_SIZE) as usize;
            let n = (FRAME_SIZE as usize - off).min(len - done);
            let frame = self.page(mem, va, write)?;
            f(mem, frame, off, done..done + n);
            done += n;
        }
        Ok(())
    }

    /// Copies guest memory at `addr` into `dst` (copy-in: the hypervisor
    /// then works on its own copy, so the guest cannot change it under us).
    pub fn read(&mut self, mem: &mut impl PhysMem, addr: u64, dst: &mut [u8]) -> Result<(), Fault> {
        self.each_page(mem, addr, dst.len(), false, |mem, frame, off, r| mem.read(frame, off, &mut dst[r]))
    }

    /// Copies `src` into guest memory at `addr`.
    pub fn write(&mut self, mem: &mut impl PhysMem, addr: u64, src: &[u8]) -> Result<(), Fault> {
        self.each_page(mem, addr, src.len(), true, |mem, frame, off, r| mem.write(frame, off, &src[r]))
    }

    /// Gives back the pages mapped in `[start, end)` of a demand-zero
    /// region (page-aligned; checked by the caller): their frames are
    /// freed and the pages read as zero on the next touch. Returns how many
    /// pages were given back; the caller flushes the TLB if any were. A
    /// shared page table the range covers in part is copied first, which
    /// may take the guest past its limit.
    pub fn discard(&mut self, mem: &mut impl PhysMem, start: u64, end: u64) -> Result<u64, Fault> {
        const TABLE_SPAN: u64 = 512 * FRAME_SIZE;
        if start >= end {
            return Ok(0);
        }
        self.changing(mem);
        for at in [start, end - FRAME_SIZE] {
            let table = at - at % TABLE_SPAN;
            let whole = table >= start && table + TABLE_SPAN <= end;
            if !whole && self.space.shares_table_over(mem, at) {
                if self.committed() + 1 > self.limit_frames {
                    return Err(Fault::OutOfMemory { limit: self.limit_bytes() });
                }
                self.space.unshare_table(mem, at).map_err(|_| Fault::MachineOutOfMemory)?;
            }
        }
        let (mut freed, mut unshared) = (0, 0);
        self.space.unmap_user_range(mem, start, end, &mut |mem, pa, flags| {
            if flags.contains(Pte::SHARED) {
                // A frozen page (its set keeps the frame).
                unshared += 1;
            } else {
                mem.free(pa);
                freed += 1;
            }
        });
        self.private -= freed;
        self.shared -= unshared;
        Ok(freed)
    }

    /// Whether `[start, start + len)` is whole pages inside the heap.
    pub fn is_discardable(&self, start: u64, len: u64) -> bool {
        let heap = &self.zero_fill[0];
        start.is_multiple_of(FRAME_SIZE)
            && len.is_multiple_of(FRAME_SIZE)
            && start.checked_add(len).is_some_and(|end| heap.start <= start && end <= heap.end)
    }

    /// Frees everything the guest owns, and the frozen sets it was the
    /// last to hold. Returns the frames freed.
    pub fn destroy(mut self, mem: &mut impl PhysMem) -> usize {
        let tables = self.table_frames() as usize;
        self.changing(mem);
        let mut freed = self.space.destroy(mem) + tables;
        for set in self.frozen {
            // Exactly one of the holders dropping theirs at once gets it.
            if let Some(set) = Arc::into_inner(set) {
                freed += set.frames.len();
                set.frames.into_iter().for_each(|f| mem.free(f));
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testmem::TestMem;

    fn guest(mem: &mut TestMem, limit: u64) -> GuestMemory {
        let k = mem.alloc().unwrap();
        let space = AddressSpace::new(mem, k).unwrap();
        GuestMemory::new(space, 0x10_0000..0x20_0000, 0x7000_0000..0x7001_0000, limit)
    }

    #[test]
    fn copies_across_pages_and_zero_fills_on_demand() {
        let mut mem = TestMem::new(1000);
        let mut g = guest(&mut mem, 1 << 20);
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        g.write(&mut mem, 0x10_0ff0, &data).unwrap();
        let mut back = vec![0; 6000];
        g.read(&mut mem, 0x10_0ff0, &mut back).unwrap();
        assert_eq!(back, data);
        let mut z = [1u8; 16];
        g.read(&mut mem, 0x7000_8000, &mut z).unwrap();
        assert_eq!(z, [0; 16]);
    }

    #[test]
    fn bad_pointers_are_refused() {
        let mut mem = TestMem::new(1000);
        let mut g = guest(&mut mem, 1 << 20);
        let mut b = [0u8; 8];
        assert_eq!(g.read(&mut mem, 0x5000, &mut b), Err(Fault::Unmapped(0x5000)));
        assert!(matches!(g.read(&mut mem, u64::MAX - 3, &mut b), Err(Fault::OutOfRange { .. })));
        assert!(matches!(g.read(&mut mem, 0xffff_8000_0000_0000, &mut b), Err(Fault::OutOfRange { .. })));
        assert!(matches!(g.read(&mut mem, USER_END - 4, &mut b), Err(Fault::OutOfRange { .. })));
        // Read-only page: readable, not writable.
        let f = mem.alloc().unwrap();
        g.map_shared(&mut mem, 0x40_0000, f, Pte::empty()).unwrap();
        g.read(&mut mem, 0x40_0000, &mut b).unwrap();
        assert_eq!(g.write(&mut mem, 0x40_0000, &b), Err(Fault::Protection(0x40_0000)));
        // A range that starts mapped and runs into unmapped memory.
        let mut big = vec![0u8; 8192];
        assert_eq!(g.read(&mut mem, 0x40_0000, &mut big), Err(Fault::Unmapped(0x40_1000)));
    }

    #[test]
    fn the_limit_is_enforced_and_destroy_returns_everything() {
        let mut mem = TestMem::new(1000);
        let k_live = {
            let g = guest(&mut mem, 16 * 4096);
            let live = mem.live;
            g.destroy(&mut mem);
            assert_eq!(mem.live, live - 1);
            mem.live
        };
        let mut g = guest(&mut mem, 16 * 4096);
        let mut touched = 0;
        let err = loop {
            match g.fault_in(&mut mem, 0x10_0000 + touched * 4096) {
                Ok(_) => touched += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, Fault::OutOfMemory { limit: 16 * 4096 });
        assert!(g.charged_bytes() <= 16 * 4096);
        assert!(touched >= 8);
        // Giving pages back frees them and makes room under the limit again.
        let before = (mem.live, g.charged_bytes());
        assert_eq!(g.discard(&mut mem, 0x10_0000, 0x10_0000 + 4 * 4096), Ok(4));
        assert_eq!((mem.live, g.charged_bytes()), (before.0 - 4, before.1 - 4 * 4096));
        let mut z = [1u8; 8];
        g.read(&mut mem, 0x10_0000, &mut z).unwrap();
        assert_eq!(z, [0; 8], "a discarded page reads as zero");
        assert!(g.fault_in(&mut mem, 0x10_0000 + 4096).is_ok());
        assert!(g.is_discardable(0x10_0000, 0x1_0000));
        assert!(!g.is_discardable(0x10_0001, 0x1000) && !g.is_discardable(0x10_0000, 0x1001));
        assert!(!g.is_discardable(0x10_0000, 0x20_0000), "past the region");
        assert!(!g.is_discardable(0x40_0000, 0x1000) && !g.is_discardable(!0xfff, 0x2000));
        g.destroy(&mut mem);
        assert_eq!(mem.live, k_live + 1, "only the second kernel root is left");
    }

    /// Deferred ring pages: nothing is made or charged until one is
    /// touched, by a fault or by the hypervisor's copy; then all are, at
    /// once, charged, and reported once; a guest at its limit is refused.
    #[test]
    fn deferred_rings_are_made_whole_at_the_first_touch() {
        let rings = 0x30_0000..0x30_4000;
        let mut mem = TestMem::new(1000);
        let mut g = guest(&mut mem, 32 * 4096);
        g.defer_rings(rings.clone());
        let (live, charged) = (mem.live, g.charged_bytes());
        assert!(g.rings_deferred() && !g.take_made_rings());
        assert_eq!(g.read(&mut mem, 0x30_0000, &mut [0u8; 4]), Ok(()), "the hypervisor's touch makes them too");
        assert!(!g.rings_deferred() && g.take_made_rings() && !g.take_made_rings(), "reported once");
        assert_eq!(g.ring_frames(&mem).len(), 4);
        assert_eq!(g.charged_bytes() - charged, 4 * 4096 + 4096 * (mem.live - live - 4) as u64);
        for va in rings.clone().step_by(4096) {
            assert!(g.space.translate(&mem, va).is_some_and(|(_, f)| f.contains(Pte::WRITABLE | Pte::USER)));
        }
        assert_eq!(g.fault_in(&mut mem, 0x30_1000).map(|(_, new)| new), Ok(false), "made already");
        assert_eq!(g.fault_in(&mut mem, 0x30_4000), Err(Fault::Unmapped(0x30_4000)), "past the rings");
        g.destroy(&mut mem);

        // The limit holds them before they are made: the heap cannot take
        // their room, and making them never finds the limit full.
        let mut g = guest(&mut mem, 16 * 4096);
        assert!(g.has_room_for(4));
        g.defer_rings(rings);
        let mut heap = 0;
        while g.fault_in(&mut mem, 0x10_0000 + heap * 4096).is_ok() {
            heap += 1;
        }
        assert!(!g.has_room_for(1));
        assert_eq!(g.fault_in(&mut mem, 0x30_2000).map(|(_, new)| new), Ok(true));
        assert!(g.charged_bytes() <= 16 * 4096, "{} charged", g.charged_bytes());
        g.destroy(&mut mem);
    }

    /// A template's pages frozen and shared by clones: each reads the
    /// template's bytes, a write copies the page for the writer alone and
    /// charges it, the per-instance pages `keep` picks are left out, and
    /// the frozen frames go back with the last holder, whichever order
    /// they end in.
    #[test]
    fn clones_share_frozen_pages_and_copy_on_write() {
        for template_ends_first in [true, false] {
            let mut mem = TestMem::new(1000);
            let k = mem.alloc().unwrap();
            let base = mem.live;
            let mut t = guest(&mut mem, 1 << 20);
            let text = mem.alloc().unwrap();
            t.map_shared(&mut mem, 0x40_0000, text, Pte::empty()).unwrap();
            t.write(&mut mem, 0x10_0000, b"heap of the template").unwrap();
            t.write(&mut mem, 0x7000_0ff8, b"stack!!!").unwrap();
            let own = mem.alloc().unwrap();
            t.map_private(&mut mem, 0x50_0000, own, Pte::WRITABLE).unwrap();
            let keep = |va: u64| va == 0x50_0000;
            let before = (t.private_bytes(), t.shared_bytes());
            assert_eq!(t.freeze(&mut mem, &keep), Ok(2));
            // The heap's and the stack's page tables held only those two:
            // they are shared too.
            assert_eq!((t.private_bytes(), t.shared_bytes()), (before.0 - 2 * 4096, before.1 + 4 * 4096));
            assert_eq!(t.frozen_frames(), 4);
            assert_eq!(t.freeze(&mut mem, &keep), Ok(0), "nothing left to freeze");

            let mut a = t.clone_shared(&mut mem, k, 1 << 20, &keep).unwrap();
            let mut b = t.clone_shared(&mut mem, k, 1 << 20, &keep).unwrap();
            assert_eq!((a.private_bytes(), a.shared_bytes()), (0, 5 * 4096), "text, two frozen pages, their tables");
            assert!(a.space.translate(&mem, 0x50_0000).is_none(), "a kept page is the clone's to map");
            let mut buf = [0u8; 20];
            a.read(&mut mem, 0x10_0000, &mut buf).unwrap();
            assert_eq!(&buf, b"heap of the template");
            // A write by the hypervisor on a clone's behalf copies too.
            a.write(&mut mem, 0x10_0000, b"heap of clone a").unwrap();
            assert_eq!(a.private_bytes(), 4096);
            // Its copy is its own until it is frozen in turn (a clone of a).
            let mut aa = {
                assert_eq!(a.freeze(&mut mem, &keep), Ok(1));
                a.clone_shared(&mut mem, k, 1 << 20, &keep).unwrap()
            };
            aa.read(&mut mem, 0x10_0000, &mut buf[..15]).unwrap();
            assert_eq!(&buf[..15], b"heap of clone a");
            aa.write(&mut mem, 0x10_0000, b"x").unwrap();
            aa.destroy(&mut mem);
            b.read(&mut mem, 0x10_0000, &mut buf).unwrap();
            assert_eq!(&buf, b"heap of the template", "b still sees the frozen page");
            // The guest's own write fault: only copy-on-write pages copy.
            assert!(b.copy_on_write(&mut mem, 0x7000_0ffc).unwrap().is_some());
            assert_eq!(b.copy_on_write(&mut mem, 0x7000_0ffc), Ok(None), "already its own");
            assert_eq!(b.copy_on_write(&mut mem, 0x40_0000), Ok(None), "text is never copied");
            assert_eq!(b.write(&mut mem, 0x40_0000, b"x"), Err(Fault::Protection(0x40_0000)));
            let mut st = [0u8; 8];
            b.read(&mut mem, 0x7000_0ff8, &mut st).unwrap();
            assert_eq!(&st, b"stack!!!");
            // Giving a frozen heap page back unmaps it, frees nothing shared.
            let live = mem.live;
            assert_eq!(b.discard(&mut mem, 0x10_0000, 0x10_1000), Ok(0));
            assert_eq!((mem.live, b.shared_bytes()), (live + 1, 4096), "text only: its stack page is its own copy");
            b.read(&mut mem, 0x10_0000, &mut buf).unwrap();
            assert_eq!(buf, [0; 20], "a discarded page reads as zero");

            let (first, mut second) = if template_ends_first { (t, a) } else { (a, t) };
            first.destroy(&mut mem);
            let mut four = [0u8; 4];
            second.read(&mut mem, 0x10_0000, &mut four).unwrap();
            assert_eq!(&four, b"heap", "what is left reads on");
            second.destroy(&mut mem);
            b.destroy(&mut mem);
            mem.free(text);
            assert_eq!(mem.live, base + 1, "every frame is back but the kernel root the template had");
        }
    }

    /// Page tables that hold only frozen (and image) pages are shared too:
    /// a clone owns only the tables over its own pages, and copies a shared
    /// one (charged) before it changes anything in it: a copy-on-write, a
    /// demand-zero page, a discard of part of it. A discard of all of it
    /// unlinks it. The template copies as a clone does. Everything comes
    /// back, whoever ends first.
    #[test]
    fn page_tables_of_frozen_pages_are_shared_and_copied_before_a_change() {
        const MB2: u64 = 2 << 20;
        for order in 0..3 {
            let mut mem = TestMem::new(1000);
            let k = mem.alloc().unwrap();
            let base = mem.live;
            let mut t = {
                let k = mem.alloc().unwrap();
                let space = AddressSpace::new(&mut mem, k).unwrap();
                GuestMemory::new(space, MB2..4 * MB2, 0x7000_0000..0x7001_0000, 1 << 20)
            };
            // The heap spans two tables (a page in each), the stack one; the
            // per-instance page shares the text's table.
            t.write(&mut mem, MB2, b"first").unwrap();
            t.write(&mut mem, 2 * MB2 + 4096, b"second").unwrap();
            t.write(&mut mem, 0x7000_0000, b"stack").unwrap();
            let text = mem.alloc().unwrap();
            t.map_shared(&mut mem, 0x1000_1000, text, Pte::empty()).unwrap();
            let own = mem.alloc().unwrap();
            t.map_private(&mut mem, 0x1000_0000, own, Pte::WRITABLE).unwrap();
            let keep = |va: u64| va == 0x1000_0000;
            let tables = t.space.table_frames();
            assert_eq!(t.freeze(&mut mem, &keep), Ok(3));
            assert_eq!((t.space.table_frames(), t.space.shared_table_frames()), (tables - 3, 3), "the heap's two, the stack's");
            assert_eq!(t.frozen_frames(), 6);

            let live = mem.live;
            let mut c = t.clone_shared(&mut mem, k, 1 << 20, &keep).unwrap();
            let mut d = t.clone_shared(&mut mem, k, 1 << 20, &keep).unwrap();
            // PML4, the directory-pointer table, two directories, the
            // text's table (without the kept page): 5 tables, no leaf page.
            assert_eq!((c.charged_bytes(), c.space.shared_table_frames()), (5 * 4096, 3));
            assert_eq!(mem.live, live + 15, "two clones, five tables each, and the prototype they copy");
            assert_eq!(t.table_bytes(), (tables - 3 + 5) as u64 * 4096, "the template holds the prototype");
            assert_eq!(c.shared_bytes(), (4 + 3) * 4096, "text, three frozen pages, three tables");

            // A write copies the table (once) and the page, both charged.
            c.write(&mut mem, MB2, b"C").unwrap();
            assert_eq!((c.charged_bytes(), c.space.shared_table_frames()), (7 * 4096, 2));
            c.write(&mut mem, MB2 + 4096, b"new").unwrap();
            assert_eq!(c.charged_bytes(), 8 * 4096, "a demand-zero page in a table it owns now");
            // A demand-zero page in a shared table copies it first.
            assert!(c.fault_in(&mut mem, 2 * MB2 + 3 * 4096).is_ok());
            assert_eq!((c.charged_bytes(), c.space.shared_table_frames()), (10 * 4096, 1));
            let mut b5 = [0u8; 5];
            for g in [&mut t, &mut d] {
                g.read(&mut mem, MB2, &mut b5).unwrap();
                assert_eq!(&b5, b"first", "the others still see the frozen page");
                assert!(g.space.translate(&mem, MB2 + 4096).is_none() && g.space.translate(&mem, 2 * MB2 + 3 * 4096).is_none());
            }
            assert_eq!(d.space.shared_table_frames(), 3);
            c.read(&mut mem, MB2, &mut b5).unwrap();
            assert_eq!(&b5, b"Cirst");

            // At its limit, a clone cannot copy a table: refused, unchanged.
            let mut e = t.clone_shared(&mut mem, k, 5 * 4096, &keep).unwrap();
            assert_eq!(e.write(&mut mem, 0x7000_0000, b"x"), Err(Fault::OutOfMemory { limit: 5 * 4096 }));
            assert_eq!((e.charged_bytes(), e.space.shared_table_frames()), (5 * 4096, 3));
            assert_eq!(e.discard(&mut mem, MB2, MB2 + 4096), Err(Fault::OutOfMemory { limit: 5 * 4096 }));
            // A discard of a whole shared table unlinks it: nothing to copy.
            let live = mem.live;
            assert_eq!(e.discard(&mut mem, 2 * MB2, 3 * MB2), Ok(0));
            assert_eq!((mem.live, e.space.shared_table_frames(), e.shared_bytes()), (live, 2, (3 + 2) * 4096));
            assert!(e.space.translate(&mem, 2 * MB2 + 4096).is_none(), "demand-zero again");
            let mut b6 = [0u8; 6];
            d.read(&mut mem, 2 * MB2 + 4096, &mut b6).unwrap();
            assert_eq!(&b6, b"second");
            e.destroy(&mut mem);

            // The template's own write copies too, and ends the prototype.
            let live = mem.live;
            t.write(&mut mem, 0x7000_0000, b"T").unwrap();
            assert_eq!(t.space.shared_table_frames(), 2);
            assert_eq!((mem.live, t.table_bytes()), (live + 2 - 5, (tables - 3 + 1) as u64 * 4096));
            d.read(&mut mem, 0x7000_0000, &mut b5).unwrap();
            assert_eq!(&b5, b"stack");

            let mut all = [Some(t), Some(c), Some(d)];
            for i in [order, (order + 1) % 3, (order + 2) % 3] {
                all[i].take().unwrap().destroy(&mut mem);
            }
            mem.free(text);
            assert_eq!(mem.live, base + 1, "every frame is back but the template's kernel root");
        }
    }

    /// A clone that writes to every page it shares is charged for each
    /// copy and stops at its limit; its siblings and the template keep
    /// their pages.
    #[test]
    fn copies_are_charged_against_the_clone_s_limit() {
        let mut mem = TestMem::new(1000);
        let k = mem.alloc().unwrap();
        let mut t = guest(&mut mem, 1 << 20);
        for i in 0..32u64 {
            t.write(&mut mem, 0x10_0000 + i * 4096, &[i as u8 + 1]).unwrap();
        }
        t.freeze(&mut mem, &|_| false).unwrap();
        let mut c = t.clone_shared(&mut mem, k, 16 * 4096, &|_| false).unwrap();
        let mut copied = 0;
        let err = loop {
            match c.write(&mut mem, 0x10_0000 + copied * 4096, &[0xff]) {
                Ok(()) => copied += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, Fault::OutOfMemory { limit: 16 * 4096 });
        assert!(c.charged_bytes() <= 16 * 4096 && copied >= 8, "{copied} copied");
        let mut b = [0u8; 1];
        t.read(&mut mem, 0x10_0000, &mut b).unwrap();
        assert_eq!(b, [1], "the template's page is untouched");
        let mut d = t.clone_shared(&mut mem, k, 1 << 20, &|_| false).unwrap();
        d.read(&mut mem, 0x10_0000 + 31 * 4096, &mut b).unwrap();
        assert_eq!(b, [32]);
        for g in [c, d, t] {
            g.destroy(&mut mem);
        }
        assert_eq!(mem.live, 2, "only the two kernel roots are left");
    }
}
