//! The hypervisor's page tables and its view of physical memory.
//!
//! `init` replaces the boot tables with the real ones: every byte of RAM
//! (and nothing but RAM) mapped once at [`PHYS_OFFSET`] (read-write,
//! no-execute, supervisor), and
//! the hypervisor image at `KERNEL_VMA` with per-section permissions (text
//! read-execute, rodata read-only, data read-write no-execute). The lower
//! half is left empty for guests; each guest's PML4 copies the upper half.

use core::ops::Range;
use hypervisor::mm::frames::{self, FrameAllocator};
use hypervisor::mm::paging::{self, Pte};
use hypervisor::mm::{FRAME_SIZE, PhysAddr, PhysMem};
use spin::Mutex;

/// Where all of physical memory is mapped.
pub const PHYS_OFFSET: u64 = 0xffff_8000_0000_0000;
/// Where the hypervisor image is linked (see hypervisor.ld).
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Physical range of the hypervisor image.
pub fn kernel_image() -> Range<PhysAddr> {
    // SAFETY: linker-defined symbols; only their addresses are used.
    let end = unsafe { sym(&__kernel_end) };
    0x10_0000..end - KERNEL_VMA
}

#[repr(C, align(4096))]
struct Frame([u8; 4096]);
const POOL: usize = 96;
/// Frames for the hypervisor's own tables, taken before the frame
/// allocator exists. They live in .bss, so they are reachable both before
/// and after the switch through the image mapping.
static mut EARLY_POOL: [Frame; POOL] = [const { Frame([0; 4096]) }; POOL];

struct EarlyMem {
    next: usize,
}

impl EarlyMem {
    fn ptr(pa: PhysAddr) -> *mut u8 {
        (pa + KERNEL_VMA) as *mut u8
    }
}

impl PhysMem for EarlyMem {
    fn alloc(&mut self) -> Option<PhysAddr> {
        if self.next == POOL {
            return None;
        }
        // SAFETY: each pool frame is handed out once; .bss is zeroed at boot.
        let va = unsafe { &raw mut EARLY_POOL[self.next] } as u64;
        self.next += 1;
        Some(va - KERNEL_VMA)
    }
    fn free(&mut self, _: PhysAddr) {}
    fn read_pte(&self, table: PhysAddr, index: usize) -> u64 {
        // SAFETY: `table` is a pool frame (mapped at KERNEL_VMA + pa).
        unsafe { (Self::ptr(table) as *const u64).add(index).read() }
    }
    fn write_pte(&mut self, table: PhysAddr, index: usize, value: u64) {
        // SAFETY: as in read_pte.
        unsafe { (Self::ptr(table) as *mut u64).add(index).write(value) }
    }
    fn write(&mut self, _: PhysAddr, _: usize, _: &[u8]) {
        unreachable!("early memory holds page tables only")
    }
    fn read(&self, _: PhysAddr, _: usize, _: &mut [u8]) {
        unreachable!("early memory holds page tables only")
    }
}

/// Builds the hypervisor's tables, switches to them and returns the root.
///
/// The direct map covers the RAM ranges of the memory map and nothing
/// else: no device window is mapped write-back there (device registers are
/// mapped uncached, once, by [`map_device`]), and the local APIC's page has
/// no cacheable alias. Each range takes the largest pages that fit it.
///
/// # Safety
/// Called once, on the boot tables, before anything uses the direct map.
pub unsafe fn init(ram: &[Range<PhysAddr>], features: &super::cpu::Features) -> PhysAddr {
    let mut mem = EarlyMem { next: 0 };
    let root = mem.alloc().expect("early pool");
    let table = Pte::WRITABLE;
    let global = if features.pge { Pte::GLOBAL } else { Pte::empty() };
    let nx = if features.nx { Pte::NO_EXECUTE } else { Pte::empty() };
    const MIB2: u64 = 2 << 20;
    const GIB: u64 = 1 << 30;
    for r in ram {
        let (mut pa, end) = (r.start.next_multiple_of(FRAME_SIZE), r.end & !(FRAME_SIZE - 1));
        while pa < end {
            let fits = |size: u64| pa.is_multiple_of(size) && end - pa >= size;
            let (level, size) = match () {
                _ if features.pdpe1gb && fits(GIB) => (3, GIB),
                _ if fits(MIB2) => (2, MIB2),
                _ => (1, FRAME_SIZE),
            };
            match paging::map(&mut mem, root, PHYS_OFFSET + pa, pa, Pte::WRITABLE | nx | global, level, table) {
                // Overlapping memory-map entries: mapped already.
                Ok(_) | Err(paging::MapError::AlreadyMapped) => {}
                Err(e) => panic!("direct map of {pa:#x}: {e:?} (early pool of {POOL} tables)"),
            }
            pa += size;
        }
    }
    // SAFETY: linker-defined symbols; only their addresses are used.
    let sections = unsafe {
        [
            (sym(&__text_start)..sym(&__text_end), global),
            (sym(&__rodata_start)..sym(&__rodata_end), nx | global),
            (sym(&__data_start)..sym(&__kernel_end), Pte::WRITABLE | nx | global),
        ]
    };
    for (range, flags) in sections {
        let mut va = range.start;
        while va < range.end {
            paging::map(&mut mem, root, va, va - KERNEL_VMA, flags, 1, table).expect("kernel map");
            va += FRAME_SIZE;
        }
    }
    // SAFETY: the new tables map the image, its stacks and .bss as the boot
    // tables did (at KERNEL_VMA), plus the direct map.
    unsafe { super::cpu::write_cr3(root) };
    root
}

/// Maps one page of device registers (uncached, no-execute) at `va` in
/// the hypervisor's half, which every guest's PML4 shares.
pub fn map_mmio(root: PhysAddr, va: u64, pa: PhysAddr) {
    let flags = Pte::WRITABLE | Pte::NO_CACHE | Pte::WRITE_THROUGH | Pte::NO_EXECUTE;
    paging::map(&mut DirectMap, root, va, pa, flags, 1, Pte::WRITABLE).expect("mapping device registers");
}

/// A PML4 whose upper half is all a guest's tables map of the hypervisor
/// under page-table isolation: the hypervisor's image (code, data, the
/// per-CPU blocks, descriptor tables and interrupt stacks the entry paths
/// need) and the local APIC's page (the stubs send EOIs before switching
/// tables back), but not the direct map (all RAM: every tenant's memory)
/// nor any other device window. Guests created with it as their kernel
/// root copy these entries; its three tables are shared by every guest and
/// freed with [`free_isolated_upper`] once none is left.
pub fn isolated_upper(kernel_root: PhysAddr) -> Option<PhysAddr> {
    let mut mem = DirectMap;
    let top = mem.read_pte(kernel_root, 511);
    let kernel_pdpt = top & paging::ADDR_MASK;
    let apic_gib = mem.read_pte(kernel_pdpt, 511);
    let kernel_pd = apic_gib & paging::ADDR_MASK;
    let apic_index = ((super::apic::APIC_VA >> 21) & 0x1ff) as usize;
    let (root, pdpt, pd) = (mem.alloc()?, mem.alloc()?, mem.alloc()?);
    // The image's GiB (KERNEL_VMA) holds the image and nothing else: share it.
    mem.write_pte(pdpt, ((KERNEL_VMA >> 30) & 0x1ff) as usize, mem.read_pte(kernel_pdpt, ((KERNEL_VMA >> 30) & 0x1ff) as usize));
    // The last GiB holds the APIC and the device window: only the APIC's table.
    mem.write_pte(pd, apic_index, mem.read_pte(kernel_pd, apic_index));
    mem.write_pte(pdpt, 511, pd | (apic_gib & !paging::ADDR_MASK));
    mem.write_pte(root, 511, pdpt | (top & !paging::ADDR_MASK));
    Some(root)
}

/// Frees what [`isolated_upper`] made (its three tables; the image's and
/// the APIC's tables are the kernel's), once no guest uses it.
pub fn free_isolated_upper(root: PhysAddr) {
    let mut mem = DirectMap;
    let pdpt = mem.read_pte(root, 511) & paging::ADDR_MASK;
    let pd = mem.read_pte(pdpt, 511) & paging::ADDR_MASK;
    for t in [pd, pdpt, root] {
        mem.free(t);
    }
}

/// Points the one-page window at `va` to physical `page` (read-only,
/// no-execute) and flushes its old translation: for reading firmware
/// memory outside the direct map. The first call builds its tables.
pub fn map_window(root: PhysAddr, va: u64, page: PhysAddr) {
    let mut mem = DirectMap;
    let flags = Pte::PRESENT | Pte::NO_EXECUTE;
    let mut table = root;
    for level in (2..=4).rev() {
        let index = ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize;
        let e = mem.read_pte(table, index);
        table = if e & Pte::PRESENT.bits() != 0 {
            e & paging::ADDR_MASK
        } else {
            let t = mem.alloc().expect("a page table for the firmware window");
            mem.write_pte(table, index, t | (Pte::PRESENT | Pte::WRITABLE).bits());
            t
        };
    }
    mem.write_pte(table, ((va >> 12) & 0x1ff) as usize, page | flags.bits());
    // SAFETY: invalidates one translation of the hypervisor's own window.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// Next free address for stacks mapped in the image's GiB (which a
/// guest's tables share under page-table isolation), above the image.
static IMAGE_STACKS_NEXT: Mutex<u64> = Mutex::new(KERNEL_VMA + 0x2000_0000);
/// The end of that window: the image's GiB.
const IMAGE_STACKS_END: u64 = KERNEL_VMA + 0x4000_0000;

/// Maps a zeroed stack of `size` bytes (whole pages) in the image's GiB,
/// with an unmapped guard page below it; returns its top, or `None` when
/// memory or the window ran out.
pub fn map_image_stack(root: PhysAddr, size: u64) -> Option<u64> {
    let size = size.next_multiple_of(FRAME_SIZE);
    let mut next = IMAGE_STACKS_NEXT.lock();
    let base = *next + FRAME_SIZE;
    if base + size > IMAGE_STACKS_END {
        return None;
    }
    let mut mem = DirectMap;
    for va in (base..base + size).step_by(FRAME_SIZE as usize) {
        let frame = mem.alloc()?;
        let flags = Pte::WRITABLE | Pte::NO_EXECUTE | Pte::GLOBAL;
        if paging::map(&mut mem, root, va, frame, flags, 1, Pte::WRITABLE).is_err() {
            mem.free(frame);
            return None;
        }
    }
    *next = base + size;
    Some(base + size)
}

/// Next free address in the window for device registers.
static MMIO_NEXT: Mutex<u64> = Mutex::new(0xffff_ffff_f000_0000);

/// Maps `len` bytes of device registers at physical `pa` (uncached) and
/// returns the virtual address of `pa`.
pub fn map_device(root: PhysAddr, pa: PhysAddr, len: u64) -> u64 {
    let start = pa & !(FRAME_SIZE - 1);
    let end = (pa + len).div_ceil(FRAME_SIZE) * FRAME_SIZE;
    let mut next = MMIO_NEXT.lock();
    let base = *next;
    for (i, page) in (start..end).step_by(FRAME_SIZE as usize).enumerate() {
        map_mmio(root, base + i as u64 * FRAME_SIZE, page);
    }
    *next = base + (end - start);
    base + (pa - start)
}

/// The frame allocator, shared by all CPUs.
static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Free frames right now.
pub fn free_frames() -> usize {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}

/// Takes a run of at least `frames` contiguous frames for the heap
/// (`FrameAllocator::alloc_run`): its physical address and its frames.
pub fn alloc_run(frames: usize) -> Option<(PhysAddr, usize)> {
    FRAMES.lock().as_mut()?.alloc_run(frames)
}

/// Gives back a run `alloc_run` took.
pub fn free_run(start: PhysAddr, frames: usize) {
    let mut f = FRAMES.lock();
    if let Some(f) = f.as_mut() {
        for i in 0..frames as u64 {
            f.free(start + i * FRAME_SIZE);
        }
    }
}

/// Frames the allocator manages (free or in use).
pub fn total_frames() -> usize {
    FRAMES.lock().as_ref().map_or(0, |f| f.total_frames())
}

/// Physical memory through the direct map; frames from the shared
/// allocator. A handle with no state, so every CPU can hold one.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectMap;

fn direct(pa: PhysAddr) -> *mut u8 {
    (PHYS_OFFSET + pa) as *mut u8
}

/// Returns the direct-map address of physical `pa`.
pub fn phys_to_virt(pa: PhysAddr) -> u64 {
    PHYS_OFFSET + pa
}

/// Sets up the frame allocator over the RAM in `ram`, minus `reserved`
/// and the bitmap itself. Returns the physical range carved out for the
/// hypervisor's heap (`heap_size` bytes).
pub fn init_frames(ram: &[Range<PhysAddr>], reserved: &[Range<PhysAddr>], heap_size: u64) -> Option<Range<PhysAddr>> {
    let max = ram.iter().map(|r| r.end).max()?;
    let words = FrameAllocator::words_for(0..max);
    let bitmap_bytes = (words as u64 * 8).div_ceil(FRAME_SIZE) * FRAME_SIZE;
    let bitmap = frames::find_free(ram, reserved, bitmap_bytes)?;
    let mut more: heapless_ranges::Ranges = heapless_ranges::Ranges::new(reserved);
    more.push(bitmap..bitmap + bitmap_bytes);
    let heap = frames::find_free(ram, more.as_slice(), heap_size)?;
    more.push(heap..heap + heap_size);
    // SAFETY: the bitmap range is RAM that nothing else uses (found
    // above, reserved below) and is mapped by the direct map.
    let bits = unsafe { core::slice::from_raw_parts_mut(direct(bitmap) as *mut u64, words) };
    let mut frames = FrameAllocator::new(bits, 0);
    for r in ram {
        frames.add_free(r.clone());
    }
    for r in more.as_slice() {
        frames.reserve(r.clone());
    }
    *FRAMES.lock() = Some(frames);
    Some(heap..heap + heap_size)
}

/// A small fixed-capacity list of ranges (no heap exists yet at boot).
mod heapless_ranges {
    use core::ops::Range;
    pub struct Ranges {
        items: [Range<u64>; 16],
        len: usize,
    }
    impl Ranges {
        pub fn new(from: &[Range<u64>]) -> Self {
            let mut r = Self { items: [const { 0..0 }; 16], len: 0 };
            for x in from {
                r.push(x.clone());
            }
            r
        }
        pub fn push(&mut self, x: Range<u64>) {
            self.items[self.len] = x;
            self.len += 1;
        }
        pub fn as_slice(&self) -> &[Range<u64>] {
            &self.items[..self.len]
        }
    }
}

impl PhysMem for DirectMap {
    fn alloc(&mut self) -> Option<PhysAddr> {
        let pa = FRAMES.lock().as_mut()?.alloc()?;
        // SAFETY: a free frame from the allocator, mapped by the direct map.
        unsafe { core::ptr::write_bytes(direct(pa), 0, FRAME_SIZE as usize) };
        Some(pa)
    }
    fn alloc_copy(&mut self, src: PhysAddr) -> Option<PhysAddr> {
        assert!(src.is_multiple_of(FRAME_SIZE));
        let pa = FRAMES.lock().as_mut()?.alloc()?;
        // SAFETY: a free frame from the allocator (so not `src`, which is
        // in use), and `src`, both whole direct-mapped frames; the copy
        // overwrites every byte of the new one.
        unsafe { core::ptr::copy_nonoverlapping(direct(src), direct(pa), FRAME_SIZE as usize) };
        Some(pa)
    }
    fn free(&mut self, frame: PhysAddr) {
        if !FRAMES.lock().as_mut().is_some_and(|f| f.free(frame)) {
            panic!("freeing frame {frame:#x} that is not in use");
        }
    }
    fn read_pte(&self, table: PhysAddr, index: usize) -> u64 {
        debug_assert!(index < 512);
        // SAFETY: `table` is a page-table frame (direct-mapped), index < 512.
        unsafe { (direct(table) as *const u64).add(index).read_volatile() }
    }
    fn write_pte(&mut self, table: PhysAddr, index: usize, value: u64) {
        debug_assert!(index < 512);
        // SAFETY: as in read_pte.
        unsafe { (direct(table) as *mut u64).add(index).write_volatile(value) }
    }
    fn write(&mut self, frame: PhysAddr, offset: usize, src: &[u8]) {
        assert!(offset + src.len() <= FRAME_SIZE as usize);
        // SAFETY: inside one direct-mapped frame (checked above).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), direct(frame).add(offset), src.len()) }
    }
    fn read(&self, frame: PhysAddr, offset: usize, dst: &mut [u8]) {
        assert!(offset + dst.len() <= FRAME_SIZE as usize);
        // SAFETY: inside one direct-mapped frame (checked above).
        unsafe { core::ptr::copy_nonoverlapping(direct(frame).add(offset), dst.as_mut_ptr(), dst.len()) }
    }
    fn copy_frame(&mut self, dst: PhysAddr, src: PhysAddr) {
        assert!(dst.is_multiple_of(FRAME_SIZE) && src.is_multiple_of(FRAME_SIZE) && dst != src);
        // SAFETY: two distinct whole direct-mapped frames (checked above).
        unsafe { core::ptr::copy_nonoverlapping(direct(src), direct(dst), FRAME_SIZE as usize) }
    }
}
