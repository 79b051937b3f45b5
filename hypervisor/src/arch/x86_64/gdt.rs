//! Segments: the GDT, the TSS with its interrupt stacks, and the selectors
//! that `syscall`/`sysret` derive from `STAR`.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
/// Ring-3 data and code: `sysret` loads SS = STAR[63:48] + 8 and
/// CS = STAR[63:48] + 16, so user data must sit right below user code.
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;

/// Interrupt stacks (TSS IST slots 1..=4): every IDT entry uses one, so an
/// interrupt never lands on the stack the hypervisor's Rust code was using
/// (the precompiled `core` uses the red zone).
pub const IST_EXCEPTION: u16 = 1;
pub const IST_DOUBLE_FAULT: u16 = 2;
pub const IST_NMI: u16 = 3;
pub const IST_MACHINE_CHECK: u16 = 4;
const IST_SIZE: usize = 16 * 1024;

/// Each CPU has its own TSS (its own interrupt stacks) and so its own GDT.
static TSS: [Once<TaskStateSegment>; super::smp::MAX_CPUS] = [const { Once::new() }; super::smp::MAX_CPUS];
static GDT: [Once<GlobalDescriptorTable>; super::smp::MAX_CPUS] = [const { Once::new() }; super::smp::MAX_CPUS];

/// The interrupt stacks' tops, by CPU. They are mapped in the image's
/// part of the address space rather than reached through the direct map:
/// with page-table isolation a guest's tables map the image but not the
/// direct map, and the CPU pushes an interrupt's frame before any code can
/// switch tables. Mapped for each CPU that is started, not for every CPU
/// there could be.
static IST_TOPS: [[AtomicU64; 4]; super::smp::MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 4] }; super::smp::MAX_CPUS];

/// Maps CPU `cpu`'s interrupt stacks (each with an unmapped guard page
/// below it); false if memory ran out. Run by the boot CPU, before `cpu`
/// starts.
pub fn prepare(cpu: usize, kernel_root: u64) -> bool {
    for top in &IST_TOPS[cpu] {
        match super::paging::map_image_stack(kernel_root, IST_SIZE as u64) {
            Some(t) => top.store(t, Ordering::Relaxed),
            None => return false,
        }
    }
    true
}

/// Loads CPU `cpu`'s GDT and TSS.
pub fn init(cpu: usize) {
    let tss = TSS[cpu].call_once(|| {
        let mut tss = TaskStateSegment::new();
        // The TSS is packed, so its table is copied out, filled and copied back.
        let mut ist = tss.interrupt_stack_table;
        for (entry, top) in ist.iter_mut().zip(&IST_TOPS[cpu]) {
            let top = top.load(Ordering::Relaxed);
            assert!(top != 0, "CPU {cpu}'s interrupt stacks were not prepared");
            *entry = VirtAddr::new(top);
        }
        tss.interrupt_stack_table = ist;
        tss
    });
    let gdt = GDT[cpu].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let selectors = [
            gdt.append(Descriptor::kernel_code_segment()),
            gdt.append(Descriptor::kernel_data_segment()),
            gdt.append(Descriptor::user_data_segment()),
            gdt.append(Descriptor::user_code_segment()),
        ];
        assert_eq!(selectors.map(|s| s.0), [KERNEL_CS, KERNEL_DS, USER_DS, USER_CS]);
        gdt.append(Descriptor::tss_segment(tss));
        gdt
    });
    gdt.load();
    // SAFETY: the selectors name the descriptors just loaded; the TSS
    // descriptor follows the four segments (index 5, selector 0x28).
    unsafe {
        CS::set_reg(SegmentSelector(KERNEL_CS));
        SS::set_reg(SegmentSelector(KERNEL_DS));
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        load_tss(SegmentSelector(0x28));
    }
}
