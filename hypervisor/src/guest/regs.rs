//! The saved state of a guest's CPU, shared with the entry/exit assembly.

/// General registers, the interrupt frame, and why the guest last exited.
/// The assembly in `arch::x86_64::entry` reads and writes these fields by
/// offset (`core::mem::offset_of!`), so the layout is `#[repr(C)]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Why the guest last left: a CPU vector (0..=255) or [`VECTOR_SYSCALL`].
    pub vector: u64,
    /// The exception's error code (0 where the CPU pushes none).
    pub error: u64,
    /// CR2 at the time of the exit (the faulting address for #PF).
    pub cr2: u64,
}

/// `Regs::vector` after a `syscall` (outside the CPU's vector space).
pub const VECTOR_SYSCALL: u64 = 256;
/// The page-fault exception (`Regs::cr2` holds the address).
pub const VECTOR_PAGE_FAULT: u64 = 14;
/// #GP: general protection.
pub const VECTOR_GENERAL_PROTECTION: u64 = 13;
/// #GP error-code bit: the fault is about an IDT gate (an `int n` the
/// guest may not use), not a segment.
pub const GP_IDT: u64 = 1 << 1;
/// Vectors below this are CPU exceptions; from it on, interrupts (the
/// timer, IPIs), which only take the CPU from the guest.
pub const VECTOR_FIRST_INTERRUPT: u64 = 32;

impl Regs {
    /// Whether the exit was an interrupt (the timer, an IPI, a device's),
    /// not a fault or a hypercall.
    pub fn interrupted(&self) -> bool {
        (VECTOR_FIRST_INTERRUPT..VECTOR_SYSCALL).contains(&self.vector)
    }
}

/// Page-fault error-code bits (`Regs::error` after [`VECTOR_PAGE_FAULT`]).
pub mod pf {
    /// The page was present (a protection violation, not a missing page).
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access came from ring 3.
    pub const USER: u64 = 1 << 2;
    /// The access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

/// RFLAGS bits a guest may control: the arithmetic flags and DF.
pub const RFLAGS_USER: u64 = 0x0cd5;
/// RFLAGS bits always set for a guest: IF and the reserved bit 1.
pub const RFLAGS_FIXED: u64 = 0x202;

impl Regs {
    /// RFLAGS as the guest will run with it: its own arithmetic flags, and
    /// interrupts on, IOPL 0, no trap, no nested task, no alignment check.
    pub fn entry_rflags(&self) -> u64 {
        (self.rflags & RFLAGS_USER) | RFLAGS_FIXED
    }
}

/// The x87/SSE state, as `fxsave64` stores it.
#[derive(Clone)]
#[repr(C, align(16))]
pub struct FpuState(pub [u8; 512]);

impl Default for FpuState {
    /// The state after `fninit` with SSE exceptions masked (FCW 0x37f,
    /// MXCSR 0x1f80).
    fn default() -> Self {
        let mut s = [0u8; 512];
        s[FPU_FCW_OFFSET..FPU_FCW_OFFSET + 2].copy_from_slice(&0x037fu16.to_le_bytes());
        s[FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        Self(s)
    }
}

/// Where `fxsave64` keeps the x87 control word and MXCSR.
pub const FPU_FCW_OFFSET: usize = 0;
pub const FPU_MXCSR_OFFSET: usize = 24;

impl FpuState {
    /// The state a guest resumes with, on any CPU, after it left the CPU
    /// at a hypercall: the hypercall ABI clobbers the vector registers and
    /// the x87 stack as a function call does, and keeps the x87 control
    /// word and MXCSR (saved at the exit), so everything else is as after
    /// `fninit`, every register zero: nothing of another guest's or the
    /// hypervisor's, and nothing stale of its own.
    pub fn clobber_for_hypercall(&mut self) {
        let fcw = FPU_FCW_OFFSET..FPU_FCW_OFFSET + 2;
        let mxcsr = FPU_MXCSR_OFFSET..FPU_MXCSR_OFFSET + 4;
        let mut clean = [0u8; 512];
        clean[fcw.clone()].copy_from_slice(&self.0[fcw]);
        clean[mxcsr.clone()].copy_from_slice(&self.0[mxcsr]);
        self.0 = clean;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_cannot_raise_their_privileges_through_rflags() {
        let r = Regs { rflags: u64::MAX, ..Default::default() };
        let f = r.entry_rflags();
        assert_eq!(f & (3 << 12), 0, "IOPL");
        assert_eq!(f & (1 << 8), 0, "TF");
        assert_eq!(f & (1 << 14), 0, "NT");
        assert_eq!(f & (1 << 17), 0, "VM");
        assert_eq!(f & (1 << 18), 0, "AC");
        assert_ne!(f & (1 << 9), 0, "IF");
    }

    #[test]
    fn a_hypercall_keeps_the_control_words_and_clears_every_register() {
        let mut f = FpuState([0xa5; 512]);
        f.0[0..2].copy_from_slice(&0x0272u16.to_le_bytes());
        f.0[24..28].copy_from_slice(&0x0040u32.to_le_bytes());
        f.clobber_for_hypercall();
        assert_eq!(u16::from_le_bytes([f.0[0], f.0[1]]), 0x0272, "FCW");
        assert_eq!(u32::from_le_bytes(f.0[24..28].try_into().unwrap()), 0x0040, "MXCSR");
        assert!(f.0[2..24].iter().chain(&f.0[28..]).all(|&b| b == 0), "status, tags, x87 and XMM registers");
    }
}
