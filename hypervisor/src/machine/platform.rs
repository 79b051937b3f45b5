//! What the per-CPU loop needs of the machine it runs on.
//!
//! Rules: every method is called on the CPU it concerns (the timer, the
//! halt, the guest's address space are that CPU's own), except
//! [`Platform::wake_cpu`] and the [`Platform::Events`] handles, which any
//! CPU may use for any guest that is alive. Nothing here decides anything: the loop
//! (`machine::cpu_loop`) decides, the platform does what it is told. Times
//! are monotonic nanoseconds since boot, the clock the guests see.
//!
//! The x86_64 implementation (`arch::x86_64::platform` in the binary)
//! writes CR3, arms the local APIC timer, halts, sends IPIs and enters
//! guests through `arch::x86_64::entry`; the host tests implement it over
//! simulated memory and a scripted clock.

use crate::guest::Guest;
use crate::guest::regs::FpuState;
use crate::mm::{PhysAddr, PhysMem};
use crate::net::port::{GuestEvents, GuestRing, RingAllocError};
use hermit_entry::boot_info::RawBootInfo;

/// The machine under the per-CPU loop.
pub trait Platform: Sync {
    /// Physical memory (frames, page tables, guests' pages).
    type Mem<'a>: PhysMem
    where
        Self: 'a;
    fn mem(&self) -> Self::Mem<'_>;

    /// The monotonic clock (ns since boot).
    fn now_ns(&self) -> u64;
    /// Arms this CPU's one-shot timer for `deadline_ns` (an interrupt then
    /// takes the CPU from a guest, or ends [`Platform::idle`]).
    fn arm_timer(&self, deadline_ns: u64);
    /// Halts this CPU until an interrupt: the armed timer or a
    /// [`Platform::wake_cpu`] from another CPU. It halts on the
    /// hypervisor's own tables, never a guest's. `cpu` is this CPU.
    fn idle(&self, cpu: usize);
    /// Interrupts CPU `cpu` (it has work: a guest woke or arrived there).
    fn wake_cpu(&self, cpu: usize);

    /// Whether the uplink's device interrupts CPU 0 when frames arrive
    /// (MSI-X), so that CPU 0 polls it only when told; else it is polled.
    /// Decided before the machine runs and never changed.
    fn uplink_interrupts(&self) -> bool;
    /// Takes the uplink's "interrupted" flag: whether its interrupt came
    /// since the last call. The interrupt sets the flag, wakes a halted
    /// CPU 0 and takes CPU 0 from its guest, so a set flag is seen on
    /// CPU 0's next pass. Called on CPU 0 only.
    fn take_uplink_interrupt(&self) -> bool;
    /// Interrupts the uplink has raised since boot.
    fn uplink_interrupt_count(&self) -> u64;

    /// Makes this CPU ready to enter the guest whose page tables are at
    /// `root`: one switch of tables, straight from whichever this CPU ran
    /// on (the hypervisor's half is mapped in every guest's tables), or
    /// none if this CPU is still on `root` and the guest has not `moved`
    /// (run on another CPU since it last ran here, where its tables may
    /// have changed under this CPU's TLB). With page-table isolation every
    /// entry switches instead. `cpu` is this CPU.
    fn begin_guest(&self, cpu: usize, root: PhysAddr, moved: bool);
    /// Runs `g` until its next exit; `g.regs` then say why it left.
    fn enter(&self, g: &mut Guest);
    /// Flushes this CPU's TLB for `root` after the guest gave pages back.
    fn flush_tlb(&self, root: PhysAddr);
    /// The guest whose FPU area is `fpu` leaves this CPU: its FPU state
    /// is out of the CPU (after a hypercall exit, which saved only MXCSR,
    /// its x87 control word is stored in `fpu`), and no later entry here
    /// takes the light return. The CPU may stay on the guest's tables
    /// until the next [`Platform::begin_guest`], [`Platform::idle`] or
    /// [`Platform::release_tables`]: the guest may move to another CPU.
    fn end_guest(&self, fpu: &mut FpuState);
    /// Before the tables at `root` are freed (their guest has ended, on
    /// CPU `cpu`, this one): no CPU runs on them any more once this
    /// returns. This CPU switches to the hypervisor's own tables (whatever
    /// it ran on, so that no CPU waiting here holds a guest's tables);
    /// another CPU still on them is between two guests and switches soon
    /// without waiting for anything, so this waits for it. Call holding no
    /// lock.
    fn release_tables(&self, cpu: usize, root: PhysAddr);

    /// A guest's event page, through which any CPU raises its events.
    type Events: GuestEvents + Clone;
    /// One of a guest's vNIC rings.
    type Ring: GuestRing;
    /// The event page `g`'s creation mapped (`None` if it has none, which
    /// creation rules out). The only way to reach a guest's event word:
    /// nothing here takes a physical address to write to.
    fn events_of(&self, g: &Guest) -> Option<Self::Events>;
    /// A ring of `slots` slots whose index block is at `index_offset` in
    /// `events`: its slot pages come from the frame allocator (zeroed, or
    /// a copy of the frame `copy(index)` names) and are handed, with their
    /// index, to `map`, which maps each into the guest (whose teardown then
    /// frees them); a page `map` refuses is freed.
    fn ring<E>(
        &self,
        events: &Self::Events,
        index_offset: u64,
        slots: u32,
        copy: impl Fn(usize) -> Option<PhysAddr>,
        map: impl FnMut(usize, PhysAddr) -> Result<(), E>,
    ) -> Result<Self::Ring, RingAllocError<E>>;
    /// A ring as [`Platform::ring`] makes it, its slot pages not made yet:
    /// the guest's memory makes them at their first touch
    /// (`GuestMemory::defer_rings`) and the ring learns them then
    /// (`GuestRing::provide`).
    fn deferred_ring(&self, events: &Self::Events, index_offset: u64, slots: u32) -> Self::Ring;

    /// Writes hermit-entry's boot record at the start of a new guest's
    /// start page (`frame`, not yet visible to the guest).
    fn write_boot_info(&self, frame: PhysAddr, info: RawBootInfo);

    /// Prints one line on the hypervisor's console.
    fn console_line(&self, line: &str);
    /// The next byte typed on the console, if one is waiting.
    fn console_read(&self) -> Option<u8>;
    /// Polls the control channel: clients connecting and leaving and the
    /// bytes they sent, in order, each to `on`. Never waits. `on` answers
    /// through [`Platform::control_write_line`]: no lock that takes may be
    /// held while it runs.
    fn control_poll(&self, on: &mut dyn FnMut(crate::control::Input<'_>));
    /// Writes one line to control client `client` (dropped if it has gone).
    fn control_write_line(&self, client: usize, line: &str);
    /// Bytes that may be written to control client `client` now without
    /// holding more than the channel should (a snapshot going out is
    /// written as the client reads it).
    fn control_room(&self, _client: usize) -> usize {
        usize::MAX
    }

    /// The hypervisor heap's size and the bytes allocated from it now.
    fn heap_usage(&self) -> (usize, usize);
    /// Makes sure the heap has `bytes` free, growing it into free frames
    /// if it can: whether it has.
    fn reserve_heap(&self, bytes: usize) -> bool {
        let (heap, used) = self.heap_usage();
        heap.saturating_sub(used) >= bytes
    }
    /// Bytes of frames the heap took as it grew since boot (it keeps
    /// them: free frames plus these are what was free at boot, once every
    /// guest has ended).
    fn heap_grown(&self) -> usize {
        0
    }
    /// Bytes the heap could still hand out for a passing need (an image
    /// unpacked, a snapshot going out): free in it, and the frames it may
    /// grow into for that.
    fn heap_room(&self) -> usize {
        let (heap, used) = self.heap_usage();
        heap.saturating_sub(used)
    }
    /// Frames free for guests now, and all the frames of the machine.
    fn frames(&self) -> (usize, usize);
}
