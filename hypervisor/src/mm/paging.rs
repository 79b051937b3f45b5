//! x86_64 four-level page tables, built and torn down over [`PhysMem`].
//!
//! The lower half of every address space belongs to one guest; the upper
//! half (PML4 entries 256..512) is the hypervisor's and is shared by copying
//! the kernel's top-level entries into each new PML4.

use super::{FRAME_SIZE, PhysAddr, PhysMem};
use alloc::vec::Vec;

bitflags::bitflags! {
    /// Page-table entry bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Pte: u64 {
        const PRESENT = 1 << 0;
        const WRITABLE = 1 << 1;
        const USER = 1 << 2;
        const WRITE_THROUGH = 1 << 3;
        const NO_CACHE = 1 << 4;
        const ACCESSED = 1 << 5;
        const DIRTY = 1 << 6;
        /// A 2 MiB (level 2) or 1 GiB (level 3) leaf.
        const HUGE = 1 << 7;
        const GLOBAL = 1 << 8;
        /// Software bit: the frame is shared (image text), not owned by
        /// this address space, and must not be freed with it. In a
        /// page-directory entry (where the CPU ignores it): the page table
        /// it points to is shared (a frozen set's, `user::Frozen`), read by
        /// several address spaces and written by none; a space copies it
        /// before changing an entry in it ([`AddressSpace::unshare_table`]).
        const SHARED = 1 << 9;
        /// Software bit: a copy-on-write page (with `SHARED`, mapped
        /// read-only): its frame belongs to a frozen set several guests
        /// share (`user::Frozen`), and the first write maps a private copy.
        const COW = 1 << 10;
        const NO_EXECUTE = 1 << 63;
    }
}

/// Bits of an entry that hold the physical address.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// First address of the hypervisor's half.
pub const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    AlreadyMapped,
    /// Not page-aligned, or not in the half this call may touch.
    BadAddress,
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// Maps `va -> pa` with a leaf at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB)
/// in the tree rooted at `root`, creating intermediate tables with
/// `table_flags`. Returns how many table frames it allocated.
pub fn map(
    mem: &mut impl PhysMem,
    root: PhysAddr,
    va: u64,
    pa: PhysAddr,
    flags: Pte,
    level: u32,
    table_flags: Pte,
) -> Result<usize, MapError> {
    let size = FRAME_SIZE << (9 * (level - 1));
    if !(1..=3).contains(&level) || !va.is_multiple_of(size) || !pa.is_multiple_of(size) {
        return Err(MapError::BadAddress);
    }
    let mut table = root;
    let mut created = 0;
    // The tables this call allocates, and where the first is linked in: if
    // memory runs out half-way, they are unlinked and freed, so a failed
    // map leaves the tree (and its owner's count of table frames) as it was.
    let mut new_tables = [0; 3];
    let mut first_link = None;
    for l in (level + 1..=4).rev() {
        let i = index(va, l);
        let e = mem.read_pte(table, i);
        table = if e & Pte::PRESENT.bits() != 0 {
            if e & Pte::HUGE.bits() != 0 {
                return Err(MapError::AlreadyMapped);
            }
            e & ADDR_MASK
        } else {
            let Some(t) = mem.alloc() else {
                if let Some((parent, pi)) = first_link {
                    mem.write_pte(parent, pi, 0);
                }
                new_tables[..created].iter().for_each(|&t| mem.free(t));
                return Err(MapError::OutOfMemory);
            };
            first_link.get_or_insert((table, i));
            new_tables[created] = t;
            created += 1;
            mem.write_pte(table, i, t | table_flags.bits() | Pte::PRESENT.bits());
            t
        };
    }
    let i = index(va, level);
    if mem.read_pte(table, i) & Pte::PRESENT.bits() != 0 {
        return Err(MapError::AlreadyMapped);
    }
    let leaf = if level > 1 { flags | Pte::HUGE } else { flags };
    mem.write_pte(table, i, pa | leaf.bits() | Pte::PRESENT.bits());
    Ok(created)
}

/// Looks up the 4 KiB-granular translation of `va`: the physical address
/// and the flags of the leaf. Huge leaves are honoured.
pub fn translate(mem: &impl PhysMem, root: PhysAddr, va: u64) -> Option<(PhysAddr, Pte)> {
    let mut table = root;
    for level in (1..=4).rev() {
        let e = mem.read_pte(table, index(va, level));
        if e & Pte::PRESENT.bits() == 0 {
            return None;
        }
        if level == 1 || e & Pte::HUGE.bits() != 0 {
            let size = FRAME_SIZE << (9 * (level - 1));
            let base = e & ADDR_MASK & !(size - 1);
            return Some((base + (va & (size - 1)), Pte::from_bits_retain(e & !ADDR_MASK)));
        }
        table = e & ADDR_MASK;
    }
    None
}

/// Whether entry `e` of a page directory points to a shared page table.
/// How to build copies of one address space ([`AddressSpace::table_plan`],
/// [`AddressSpace::replicate`]).
#[derive(Debug)]
pub struct TablePlan {
    /// Its own tables but the PML4, parents first: where each hangs (the
    /// position in this order of its parent, 0 for the PML4, and 1 + the
    /// position in `links` for the others; the index of the entry there;
    /// the entry's flags).
    links: Vec<PlanEntry>,
    /// Every other present entry of its own tables (leaves, shared tables,
    /// the kernel half), by table position and index.
    entries: Vec<PlanEntry>,
    /// Shared tables it links.
    shared_tables: usize,
}

#[derive(Debug)]
struct PlanEntry {
    table: u32,
    index: u32,
    value: u64,
}

impl TablePlan {
    /// The tables a copy has of its own.
    pub fn tables(&self) -> usize {
        self.links.len() + 1
    }
}

fn shared_table(e: u64) -> bool {
    e & (Pte::PRESENT | Pte::SHARED | Pte::HUGE).bits() == (Pte::PRESENT | Pte::SHARED).bits()
}

/// Calls `f` with every present 4 KiB leaf of the guest half of the tree
/// at `root`; where it returns flags, the leaf takes them (same frame),
/// except in a shared page table, which is never written.
fn walk_leaves<M: PhysMem>(mem: &mut M, root: PhysAddr, f: &mut impl FnMut(&mut M, u64, PhysAddr, Pte) -> Option<Pte>) {
    fn walk<M: PhysMem>(
        mem: &mut M,
        table: PhysAddr,
        level: u32,
        base: u64,
        shared: bool,
        f: &mut impl FnMut(&mut M, u64, PhysAddr, Pte) -> Option<Pte>,
    ) {
        let span = FRAME_SIZE << (9 * (level - 1));
        // The PML4's upper half is the hypervisor's.
        let entries = if level == 4 { 256 } else { 512 };
        for i in 0..entries {
            let e = mem.read_pte(table, i);
            if e & Pte::PRESENT.bits() == 0 {
                continue;
            }
            let (va, pa) = (base + i as u64 * span, e & ADDR_MASK);
            if level == 1 {
                if let Some(flags) = f(mem, va, pa, Pte::from_bits_retain(e & !ADDR_MASK))
                    && !shared
                {
                    mem.write_pte(table, i, pa | (flags | Pte::PRESENT).bits());
                }
            } else if e & Pte::HUGE.bits() == 0 {
                walk(mem, pa, level - 1, va, level == 2 && shared_table(e), f);
            }
        }
    }
    walk(mem, root, 4, 0, false, f);
}

/// A guest's address space: its own PML4 with the hypervisor's half shared.
///
/// A page table whose leaves are all shared may itself be shared with
/// other spaces (`share_tables`, after a freeze; `copy_shared` links it
/// instead of copying it): its directory entry says `SHARED`, it is not
/// this space's to free, and every change to it first makes it this
/// space's own (`unshare_table`; `map_user` does so itself,
/// `remap_user` refuses, `unmap_user_range` unlinks one it covers whole).
#[derive(Debug)]
pub struct AddressSpace {
    root: PhysAddr,
    /// Page-table frames this space owns (PML4 included).
    tables: usize,
    /// Shared page tables linked in (not owned).
    shared_tables: usize,
}

impl AddressSpace {
    /// A new, empty guest half over a copy of `kernel_root`'s upper half.
    pub fn new(mem: &mut impl PhysMem, kernel_root: PhysAddr) -> Option<Self> {
        let root = mem.alloc()?;
        for i in 256..512 {
            let e = mem.read_pte(kernel_root, i);
            mem.write_pte(root, i, e);
        }
        Some(Self { root, tables: 1, shared_tables: 0 })
    }

    /// The value for CR3.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Page-table frames this space owns.
    pub fn table_frames(&self) -> usize {
        self.tables
    }

    /// Shared page tables linked into this space (not owned).
    pub fn shared_table_frames(&self) -> usize {
        self.shared_tables
    }

    /// The page-directory entry over `va` (the directory, the index, the
    /// entry), if the directory exists.
    fn directory_entry(&self, mem: &impl PhysMem, va: u64) -> Option<(PhysAddr, usize, u64)> {
        let mut table = self.root;
        for level in [4, 3] {
            let e = mem.read_pte(table, index(va, level));
            if e & Pte::PRESENT.bits() == 0 || e & Pte::HUGE.bits() != 0 {
                return None;
            }
            table = e & ADDR_MASK;
        }
        let i = index(va, 2);
        Some((table, i, mem.read_pte(table, i)))
    }

    /// Whether the page table over `va` is a shared one.
    pub fn shares_table_over(&self, mem: &impl PhysMem, va: u64) -> bool {
        self.directory_entry(mem, va).is_some_and(|(_, _, e)| shared_table(e))
    }

    /// Makes the page table over `va` this space's own if it is a shared
    /// one: copies it into a new frame, owned and counted, and points the
    /// directory at the copy. True if it copied. The caller flushes the
    /// TLB before the guest relies on the copy's changes (a stale entry
    /// can only fault again: the copy holds the same leaves or more).
    pub fn unshare_table(&mut self, mem: &mut impl PhysMem, va: u64) -> Result<bool, MapError> {
        match self.directory_entry(mem, va) {
            Some((dir, i, e)) if shared_table(e) => self.unshare_entry(mem, dir, i, e).map(|()| true),
            _ => Ok(false),
        }
    }

    /// [`AddressSpace::unshare_table`] for the shared table that entry `i`
    /// (`e`) of directory `dir` points to.
    fn unshare_entry(&mut self, mem: &mut impl PhysMem, dir: PhysAddr, i: usize, e: u64) -> Result<(), MapError> {
        let copy = mem.alloc_copy(e & ADDR_MASK).ok_or(MapError::OutOfMemory)?;
        mem.write_pte(dir, i, copy | (e & !ADDR_MASK & !Pte::SHARED.bits()));
        self.tables += 1;
        self.shared_tables -= 1;
        Ok(())
    }

    /// Shares every page table of the guest half (but the PML4's, the
    /// directories' and directory-pointer tables) whose present leaves are
    /// all `SHARED`, one at least: marks its directory entry `SHARED` and
    /// gives its frame to `f` (which keeps it: the space owns it no more).
    /// Returns how many. Tables shared already stay as they are.
    pub fn share_tables(&mut self, mem: &mut impl PhysMem, f: &mut impl FnMut(PhysAddr)) -> usize {
        fn walk<M: PhysMem>(mem: &mut M, table: PhysAddr, level: u32, f: &mut impl FnMut(PhysAddr), shared: &mut usize) {
            let entries = if level == 4 { 256 } else { 512 };
            for i in 0..entries {
                let e = mem.read_pte(table, i);
                if e & Pte::PRESENT.bits() == 0 || e & Pte::HUGE.bits() != 0 {
                    continue;
                }
                let pa = e & ADDR_MASK;
                if level > 2 {
                    walk(mem, pa, level - 1, f, shared);
                    continue;
                }
                if shared_table(e) {
                    continue;
                }
                let (mut leaves, mut all_shared) = (0, true);
                for j in 0..512 {
                    let l = mem.read_pte(pa, j);
                    if l & Pte::PRESENT.bits() != 0 {
                        leaves += 1;
                        all_shared &= l & Pte::SHARED.bits() != 0;
                    }
                }
                if leaves > 0 && all_shared {
                    mem.write_pte(table, i, e | Pte::SHARED.bits());
                    f(pa);
                    *shared += 1;
                }
            }
        }
        let mut shared = 0;
        walk(mem, self.root, 4, f, &mut shared);
        self.tables -= shared;
        self.shared_tables += shared;
        shared
    }

    /// Maps one user page. `flags` gets `USER` and `PRESENT` added. A
    /// shared page table in the way is copied first (and counted).
    pub fn map_user(&mut self, mem: &mut impl PhysMem, va: u64, pa: PhysAddr, flags: Pte) -> Result<(), MapError> {
        if va >= abi::layout::USER_END {
            return Err(MapError::BadAddress);
        }
        if let Some((dir, i, e)) = self.directory_entry(mem, va)
            && shared_table(e)
        {
            if mem.read_pte(e & ADDR_MASK, index(va, 1)) & Pte::PRESENT.bits() != 0 {
                return Err(MapError::AlreadyMapped);
            }
            self.unshare_entry(mem, dir, i, e)?;
        }
        let table_flags = Pte::WRITABLE | Pte::USER;
        self.tables += map(mem, self.root, va, pa, flags | Pte::USER, 1, table_flags)?;
        Ok(())
    }

    pub fn translate(&self, mem: &impl PhysMem, va: u64) -> Option<(PhysAddr, Pte)> {
        if va >= abi::layout::USER_END {
            return None;
        }
        translate(mem, self.root, va)
    }

    /// Calls `f` with every present 4 KiB leaf of the guest half (its
    /// address, frame and flags), in address order.
    pub fn each_user_page<M: PhysMem>(&self, mem: &mut M, f: &mut impl FnMut(&mut M, u64, PhysAddr, Pte)) {
        walk_leaves(mem, self.root, &mut |mem, va, pa, fl| {
            f(mem, va, pa, fl);
            None
        });
    }

    /// [`AddressSpace::each_user_page`], where `f` may return new flags
    /// for the leaf (it keeps its frame). The caller flushes the TLB if any
    /// changed.
    pub fn rewrite_user_pages<M: PhysMem>(&mut self, mem: &mut M, f: &mut impl FnMut(&mut M, u64, PhysAddr, Pte) -> Option<Pte>) {
        walk_leaves(mem, self.root, f);
    }

    /// Points the present leaf of `va` at `pa` with `flags` (`USER` and
    /// `PRESENT` added); returns the frame and flags it had, or `None`
    /// (and changes nothing) if `va` has no 4 KiB leaf or its page table
    /// is shared (`unshare_table` first). The caller flushes the TLB.
    pub fn remap_user(&mut self, mem: &mut impl PhysMem, va: u64, pa: PhysAddr, flags: Pte) -> Option<(PhysAddr, Pte)> {
        if va >= abi::layout::USER_END || !va.is_multiple_of(FRAME_SIZE) {
            return None;
        }
        let (_, _, d) = self.directory_entry(mem, va)?;
        if d & Pte::PRESENT.bits() == 0 || d & Pte::HUGE.bits() != 0 || shared_table(d) {
            return None;
        }
        let table = d & ADDR_MASK;
        let i = index(va, 1);
        let e = mem.read_pte(table, i);
        if e & Pte::PRESENT.bits() == 0 {
            return None;
        }
        mem.write_pte(table, i, pa | (flags | Pte::USER | Pte::PRESENT).bits());
        Some((e & ADDR_MASK, Pte::from_bits_retain(e & !ADDR_MASK)))
    }

    /// Unmaps every page mapped in `[start, end)` of the guest half
    /// (page-aligned), calling `f` with each frame and its flags; returns
    /// how many were unmapped. Walks only the tables that exist, so the
    /// cost follows what is mapped, not the size of the range. Page tables
    /// stay (they are reused by the next touch), but a shared one the
    /// range covers whole is unlinked; one it covers in part is left as it
    /// is (the caller unshares the range's ends first). The caller flushes
    /// the TLB.
    pub fn unmap_user_range<M: PhysMem>(&mut self, mem: &mut M, start: u64, end: u64, f: &mut impl FnMut(&mut M, PhysAddr, Pte)) -> usize {
        /// Counts: leaves unmapped, shared tables unlinked.
        type Counts = (usize, usize);
        #[allow(clippy::too_many_arguments)]
        fn walk<M: PhysMem>(
            mem: &mut M,
            table: PhysAddr,
            level: u32,
            base: u64,
            start: u64,
            end: u64,
            f: &mut impl FnMut(&mut M, PhysAddr, Pte),
            n: &mut Counts,
        ) {
            let span = FRAME_SIZE << (9 * (level - 1));
            let lo = ((start.max(base) - base) / span) as usize;
            let hi = (((end.min(base + 512 * span)) - 1 - base) / span) as usize;
            for i in lo..=hi {
                let e = mem.read_pte(table, i);
                if e & Pte::PRESENT.bits() == 0 {
                    continue;
                }
                let (pa, va) = (e & ADDR_MASK, base + i as u64 * span);
                if level == 1 {
                    mem.write_pte(table, i, 0);
                    f(mem, pa, Pte::from_bits_retain(e & !ADDR_MASK));
                    n.0 += 1;
                } else if level == 2 && shared_table(e) {
                    if start <= va && va + span <= end {
                        mem.write_pte(table, i, 0);
                        for j in 0..512 {
                            let l = mem.read_pte(pa, j);
                            if l & Pte::PRESENT.bits() != 0 {
                                f(mem, l & ADDR_MASK, Pte::from_bits_retain(l & !ADDR_MASK));
                                n.0 += 1;
                            }
                        }
                        n.1 += 1;
                    }
                } else if e & Pte::HUGE.bits() == 0 {
                    walk(mem, pa, level - 1, va, start, end, f, n);
                }
            }
        }
        let end = end.min(abi::layout::USER_END);
        if start >= end || !start.is_multiple_of(FRAME_SIZE) || !end.is_multiple_of(FRAME_SIZE) {
            return 0;
        }
        let mut n = (0, 0);
        walk(mem, self.root, 4, 0, start, end, f, &mut n);
        self.shared_tables -= n.1;
        n.0
    }

    /// A new space over `kernel_root`'s upper half whose guest half has
    /// this one's tables, copied a table at a time, holding those of its
    /// `SHARED` leaves that `keep(va, flags)` gives flags for (with those
    /// flags; never an owned frame: the copy would free it). Every other
    /// leaf is absent. Shared page tables are linked, not copied (all
    /// their leaves kept as they are). `None` if memory runs out (nothing
    /// is left taken). The count of leaves mapped is returned too.
    pub fn copy_shared(
        &self,
        mem: &mut impl PhysMem,
        kernel_root: PhysAddr,
        keep: &impl Fn(u64, Pte) -> Option<Pte>,
    ) -> Option<(Self, usize)> {
        /// Copies table `table` (level `level`, covering from `base`) into
        /// `into`; counts tables made and leaves kept; false if memory ran out.
        fn copy<M: PhysMem>(
            mem: &mut M,
            table: PhysAddr,
            into: PhysAddr,
            level: u32,
            base: u64,
            keep: &impl Fn(u64, Pte) -> Option<Pte>,
            counts: &mut (usize, usize),
        ) -> bool {
            let span = FRAME_SIZE << (9 * (level - 1));
            // The PML4's upper half is the kernel's (as `new` made it).
            let entries = if level == 4 { 256 } else { 512 };
            for i in 0..entries {
                let v = mem.read_pte(table, i);
                if v & Pte::PRESENT.bits() == 0 {
                    continue;
                }
                let (va, pa, fl) = (base + i as u64 * span, v & ADDR_MASK, Pte::from_bits_retain(v & !ADDR_MASK));
                if level == 1 {
                    if let Some(f) = keep(va, fl).filter(|_| fl.contains(Pte::SHARED)) {
                        mem.write_pte(into, i, pa | (f | Pte::SHARED | Pte::USER | Pte::PRESENT).bits());
                        counts.1 += 1;
                    }
                } else if level == 2 && shared_table(v) {
                    mem.write_pte(into, i, v);
                    counts.1 += (0..512).filter(|&j| mem.read_pte(pa, j) & Pte::PRESENT.bits() != 0).count();
                } else if !fl.contains(Pte::HUGE) {
                    let Some(child) = mem.alloc() else { return false };
                    counts.0 += 1;
                    // Linked before it is filled: a failure below frees it
                    // with the rest of the copy.
                    mem.write_pte(into, i, child | (v & !ADDR_MASK));
                    if !copy(mem, pa, child, level - 1, va, keep, counts) {
                        return false;
                    }
                }
            }
            true
        }
        let mut space = Self::new(mem, kernel_root)?;
        let mut counts = (0, 0);
        let ok = copy(mem, self.root, space.root, 4, 0, keep, &mut counts);
        space.tables += counts.0;
        if !ok {
            space.destroy(mem);
            return None;
        }
        // Every shared table of this space is linked in the copy.
        space.shared_tables = self.shared_tables;
        Some((space, counts.1))
    }

    /// What [`AddressSpace::replicate`] builds a copy of this space from,
    /// without reading it again: its own tables in order, and every
    /// present entry of each.
    pub fn table_plan(&self, mem: &impl PhysMem) -> TablePlan {
        fn walk(mem: &impl PhysMem, table: PhysAddr, at: u32, level: u32, plan: &mut TablePlan) {
            for i in 0..512 {
                let e = mem.read_pte(table, i);
                if e & Pte::PRESENT.bits() == 0 {
                    continue;
                }
                // The PML4's upper half is the kernel's; below the page
                // directories, and from a shared table on, entries are
                // leaves or links kept as they are.
                let own_table = i < 256 || level != 4;
                if !own_table || level == 1 || e & Pte::HUGE.bits() != 0 || (level == 2 && shared_table(e)) {
                    plan.entries.push(PlanEntry { table: at, index: i as u32, value: e });
                    continue;
                }
                plan.links.push(PlanEntry { table: at, index: i as u32, value: e & !ADDR_MASK });
                walk(mem, e & ADDR_MASK, plan.links.len() as u32, level - 1, plan);
            }
        }
        let mut plan = TablePlan { links: Vec::new(), entries: Vec::new(), shared_tables: self.shared_tables };
        walk(mem, self.root, 0, 4, &mut plan);
        plan
    }

    /// A copy of the space `plan` was made from (its
    /// [`AddressSpace::table_plan`]): the same leaves and the same kernel
    /// half, its own tables but the shared ones (linked), each a zeroed
    /// frame with the plan's entries written in (a few dozen, where a copy
    /// would move all 512). Only for a space whose leaves are all `SHARED`
    /// (a copy must own no frame). `None` if memory runs out (nothing is
    /// left taken).
    pub fn replicate(mem: &mut impl PhysMem, plan: &TablePlan) -> Option<Self> {
        const ON_STACK: usize = 8;
        let n = plan.links.len() + 1;
        let (mut few, mut many) = ([0; ON_STACK], Vec::new());
        let tables: &mut [PhysAddr] = if n <= ON_STACK {
            &mut few[..n]
        } else {
            many.try_reserve_exact(n).ok()?;
            many.resize(n, 0);
            &mut many
        };
        for k in 0..n {
            let Some(t) = mem.alloc() else {
                tables[..k].iter().for_each(|&t| mem.free(t));
                return None;
            };
            tables[k] = t;
        }
        for (k, l) in plan.links.iter().enumerate() {
            mem.write_pte(tables[l.table as usize], l.index as usize, tables[k + 1] | l.value);
        }
        for e in &plan.entries {
            mem.write_pte(tables[e.table as usize], e.index as usize, e.value);
        }
        Some(Self { root: tables[0], tables: n, shared_tables: plan.shared_tables })
    }

    /// Frees every page table it owns and every owned (non-`SHARED`)
    /// frame of the guest half, and the PML4 (shared page tables are their
    /// frozen set's). Returns the number of owned data frames freed.
    pub fn destroy(self, mem: &mut impl PhysMem) -> usize {
        fn walk(mem: &mut impl PhysMem, table: PhysAddr, level: u32, range: core::ops::Range<usize>) -> usize {
            let mut freed = 0;
            for i in range {
                let e = mem.read_pte(table, i);
                if e & Pte::PRESENT.bits() == 0 {
                    continue;
                }
                let pa = e & ADDR_MASK;
                if level == 1 {
                    if e & Pte::SHARED.bits() == 0 {
                        mem.free(pa);
                        freed += 1;
                    }
                } else if level == 2 && shared_table(e) {
                    continue;
                } else {
                    freed += walk(mem, pa, level - 1, 0..512);
                    mem.free(pa);
                }
            }
            freed
        }
        let freed = walk(mem, self.root, 4, 0..256);
        mem.free(self.root);
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::testmem::TestMem;

    fn kernel_root(mem: &mut TestMem) -> PhysAddr {
        let root = mem.alloc().unwrap();
        let data = mem.alloc().unwrap();
        map(mem, root, 0xffff_ffff_8000_0000, data, Pte::WRITABLE, 1, Pte::WRITABLE).unwrap();
        root
    }

    #[test]
    fn a_map_that_runs_out_of_frames_half_way_leaves_nothing_behind() {
        // Found by the hypercall fuzz target (fuzz/corpus/hypercall/
        // regression-map-oom-tables): the tables a failed map had already
        // linked in were not counted, so the guest was not charged for them
        // and destroy() freed more frames than it reported.
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        let f = mem.alloc().unwrap();
        let live = mem.live;
        mem.limit = live + 2; // two of the three tables it needs
        assert_eq!(a.map_user(&mut mem, 0x40_0000, f, Pte::WRITABLE), Err(MapError::OutOfMemory));
        assert_eq!((a.table_frames(), mem.live), (1, live), "nothing allocated stays");
        assert_eq!(a.translate(&mem, 0x40_0000), None);
        mem.limit = 100;
        a.map_user(&mut mem, 0x40_0000, f, Pte::WRITABLE).unwrap();
        assert_eq!(a.table_frames(), 4);
        assert_eq!(mem.live, live + 3);
        let tables = a.table_frames();
        assert_eq!(a.destroy(&mut mem) + tables, 1 + 4, "the data frame and every table");
        assert_eq!(mem.live, live - 2, "only the kernel's frames remain");
    }

    #[test]
    fn a_shared_copy_has_the_shared_leaves_it_keeps_and_nothing_else() {
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        let (s1, s2, own) = (mem.alloc().unwrap(), mem.alloc().unwrap(), mem.alloc().unwrap());
        a.map_user(&mut mem, 0x40_0000, s1, Pte::SHARED | Pte::NO_EXECUTE | Pte::ACCESSED).unwrap();
        a.map_user(&mut mem, 0x40_1000, s2, Pte::SHARED | Pte::COW).unwrap();
        a.map_user(&mut mem, 0x8000_0000, own, Pte::WRITABLE).unwrap();
        a.map_user(&mut mem, 0x8000_1000, s2, Pte::SHARED).unwrap();
        let keep = |va: u64, fl: Pte| (va != 0x8000_1000).then(|| fl - Pte::ACCESSED);
        let (b, n) = a.copy_shared(&mut mem, k, &keep).unwrap();
        assert_eq!(n, 2);
        let mut leaves = Vec::new();
        b.each_user_page(&mut mem, &mut |_, va, pa, fl| leaves.push((va, pa, fl)));
        let user = Pte::USER | Pte::PRESENT | Pte::SHARED;
        assert_eq!(leaves, [(0x40_0000, s1, user | Pte::NO_EXECUTE), (0x40_1000, s2, user | Pte::COW)]);
        assert_eq!(b.table_frames(), a.table_frames(), "the same tables, copied");
        assert_eq!(b.translate(&mem, 0xffff_ffff_8000_0000), a.translate(&mem, 0xffff_ffff_8000_0000), "the kernel half");
        let live = mem.live;
        let tables = b.table_frames();
        assert_eq!(b.destroy(&mut mem), 0, "a copy owns no data frame");
        assert_eq!(mem.live, live - tables);
        // Out of memory half-way: nothing stays taken.
        for limit in live - tables..live {
            mem.limit = limit;
            assert!(a.copy_shared(&mut mem, k, &keep).is_none(), "limit {limit}");
            assert_eq!(mem.live, live - tables, "limit {limit}");
        }
    }

    /// A shared page table is linked by a copy, never written through: a
    /// remap refuses, a map to a page it holds fails without copying it,
    /// a map beside copies it first; destroy leaves it to its owner.
    #[test]
    fn a_shared_page_table_is_never_written_through() {
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        let s = mem.alloc().unwrap();
        a.map_user(&mut mem, 0x40_0000, s, Pte::SHARED | Pte::COW).unwrap();
        let own = mem.alloc().unwrap();
        a.map_user(&mut mem, 0x8000_0000, own, Pte::WRITABLE).unwrap();
        let mut taken = Vec::new();
        assert_eq!(a.share_tables(&mut mem, &mut |t| taken.push(t)), 1, "only the table of shared leaves");
        assert_eq!((a.table_frames(), a.shared_table_frames()), (5, 1));
        assert_eq!(a.share_tables(&mut mem, &mut |t| taken.push(t)), 0, "shared already");
        let (mut b, leaves) = a.copy_shared(&mut mem, k, &|_, f| Some(f)).unwrap();
        assert_eq!((leaves, b.table_frames(), b.shared_table_frames()), (1, 5, 1));
        let table = taken[0];
        let before = mem.read_pte(table, 0);
        assert_eq!(b.remap_user(&mut mem, 0x40_0000, own, Pte::WRITABLE), None);
        let live = mem.live;
        assert_eq!(b.map_user(&mut mem, 0x40_0000, own, Pte::WRITABLE), Err(MapError::AlreadyMapped));
        assert_eq!(mem.live, live, "nothing copied for a map that fails");
        b.map_user(&mut mem, 0x40_1000, own, Pte::SHARED).unwrap();
        assert_eq!((b.table_frames(), b.shared_table_frames(), mem.live), (6, 0, live + 1));
        assert_eq!(mem.read_pte(table, 0), before);
        assert_eq!(mem.read_pte(table, 1), 0, "the shared table is as it was");
        assert!(a.translate(&mem, 0x40_1000).is_none());
        assert_eq!(b.remap_user(&mut mem, 0x40_0000, s, Pte::SHARED), Some((s, Pte::SHARED | Pte::COW | Pte::USER | Pte::PRESENT)));
        b.destroy(&mut mem);
        assert_eq!(a.destroy(&mut mem), 1, "its own page; the shared table is not its to free");
        assert_eq!(mem.live, live + 1 - 6 - 5 - 1, "both spaces' tables and a's own page gone");
        mem.free(table);
        mem.free(s);
    }

    /// A replica maps what its source maps, through tables of its own (but
    /// the shared ones), and a replica that runs out of memory half-way
    /// leaves nothing taken.
    #[test]
    fn a_replica_maps_the_same_through_its_own_tables() {
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        let pages: Vec<(u64, PhysAddr)> =
            [0x40_0000u64, 0x40_1000, 0x8000_0000, 0x7f00_0000_0000].iter().map(|&va| (va, mem.alloc().unwrap())).collect();
        for &(va, pa) in &pages {
            a.map_user(&mut mem, va, pa, Pte::SHARED | Pte::COW).unwrap();
        }
        assert_eq!(a.share_tables(&mut mem, &mut |_| {}), 3);
        let plan = a.table_plan(&mem);
        assert_eq!(plan.tables(), a.table_frames(), "every table");
        let live = mem.live;
        let b = AddressSpace::replicate(&mut mem, &plan).unwrap();
        assert_eq!((b.table_frames(), b.shared_table_frames()), (a.table_frames(), 3));
        assert_eq!(mem.live, live + a.table_frames());
        for &(va, pa) in &pages {
            assert_eq!(b.translate(&mem, va).map(|t| t.0), Some(pa));
        }
        assert_eq!(b.translate(&mem, 0xffff_ffff_8000_0000), None, "the kernel half is not the guest's");
        assert!(translate(&mem, b.root(), 0xffff_ffff_8000_0000).is_some(), "but is there");
        let frames = |s: &AddressSpace, mem: &TestMem| {
            let mut v = Vec::new();
            let (mut t, va) = (s.root(), 0x8000_0000u64);
            for level in (2..=4).rev() {
                v.push(t);
                t = mem.read_pte(t, index(va, level)) & ADDR_MASK;
            }
            v
        };
        let (fa, fb) = (frames(&a, &mem), frames(&b, &mem));
        assert!(fa.iter().all(|t| !fb.contains(t)), "no table of a's in b: {fa:?} {fb:?}");
        b.destroy(&mut mem);
        assert_eq!(mem.live, live);
        for limit in live..live + a.table_frames() {
            mem.limit = limit;
            assert!(AddressSpace::replicate(&mut mem, &plan).is_none());
            assert_eq!(mem.live, live, "limit {limit}");
        }
    }

    #[test]
    fn maps_translates_and_shares_the_kernel_half() {
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        let f = mem.alloc().unwrap();
        a.map_user(&mut mem, 0x40_0000, f, Pte::WRITABLE | Pte::NO_EXECUTE).unwrap();
        let (pa, fl) = a.translate(&mem, 0x40_0123).unwrap();
        assert_eq!(pa, f + 0x123);
        assert!(fl.contains(Pte::USER | Pte::WRITABLE | Pte::NO_EXECUTE | Pte::PRESENT));
        assert_eq!(a.translate(&mem, 0x40_1000), None);
        assert_eq!(a.translate(&mem, 0xffff_ffff_8000_0000), None, "kernel half is not the guest's");
        assert!(translate(&mem, a.root(), 0xffff_ffff_8000_0000).is_some(), "kernel half is shared");
        assert_eq!(a.map_user(&mut mem, 0x40_0000, f, Pte::empty()), Err(MapError::AlreadyMapped));
        assert_eq!(a.map_user(&mut mem, 0x40_0001, f, Pte::empty()), Err(MapError::BadAddress));
        assert_eq!(a.map_user(&mut mem, abi::layout::USER_END, f, Pte::empty()), Err(MapError::BadAddress));
        assert_eq!(a.table_frames(), 4);
    }

    #[test]
    fn destroy_returns_owned_frames_and_tables_but_not_shared_ones() {
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let before = mem.live;
        let shared = mem.alloc().unwrap();
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        a.map_user(&mut mem, 0x1_0000, shared, Pte::SHARED).unwrap();
        for i in 0..3 {
            let f = mem.alloc().unwrap();
            a.map_user(&mut mem, 0x7fff_0000_0000 + i * 4096, f, Pte::WRITABLE).unwrap();
        }
        assert_eq!(a.destroy(&mut mem), 3);
        assert_eq!(mem.live, before + 1, "only the shared frame is left");
    }

    #[test]
    fn out_of_memory_is_an_error() {
        let mut mem = TestMem::new(6);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        assert_eq!(a.map_user(&mut mem, 0x1000, 0x1000, Pte::empty()), Err(MapError::OutOfMemory));
    }

    #[test]
    fn huge_leaves_translate() {
        let mut mem = TestMem::new(10);
        let root = mem.alloc().unwrap();
        map(&mut mem, root, KERNEL_HALF, 0x4000_0000, Pte::WRITABLE, 3, Pte::WRITABLE).unwrap();
        map(&mut mem, root, KERNEL_HALF + (1 << 30), 0x20_0000, Pte::WRITABLE, 2, Pte::WRITABLE).unwrap();
        assert_eq!(translate(&mem, root, KERNEL_HALF + 0x1234_5678).unwrap().0, 0x5234_5678);
        assert_eq!(translate(&mem, root, KERNEL_HALF + (1 << 30) + 0x1_2345).unwrap().0, 0x21_2345);
    }

    #[test]
    fn unmap_range_takes_only_what_is_mapped_inside_it() {
        let mut mem = TestMem::new(100);
        let k = kernel_root(&mut mem);
        let mut a = AddressSpace::new(&mut mem, k).unwrap();
        let base = 0x3fe0_0000u64;
        for i in [0u64, 1, 2, 5, 600] {
            let f = mem.alloc().unwrap();
            a.map_user(&mut mem, base + i * 4096, f, Pte::WRITABLE).unwrap();
        }
        let mut got = Vec::new();
        // Across a 2 MiB boundary, over a huge mostly-empty range.
        let n = a.unmap_user_range(&mut mem, base + 4096, base + (1 << 40), &mut |m, pa, _| {
            m.free(pa);
            got.push(pa)
        });
        assert_eq!((n, got.len()), (4, 4));
        assert!(a.translate(&mem, base).is_some(), "below the range stays");
        for i in [1u64, 2, 5, 600] {
            assert_eq!(a.translate(&mem, base + i * 4096), None);
        }
        assert_eq!(a.unmap_user_range(&mut mem, base + 1, base + 8192, &mut |_, _, _| {}), 0, "unaligned: nothing");
        assert_eq!(a.unmap_user_range(&mut mem, 0, !0xfff, &mut |m, pa, _| m.free(pa)), 1);
    }
}
