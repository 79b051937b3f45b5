//! Turning a CPU exception taken in a guest into a [`StopReason`]: which
//! fault, at which address, doing what (its `Display` is the sentence a
//! person reads).

use super::regs::{GP_IDT, VECTOR_GENERAL_PROTECTION, VECTOR_PAGE_FAULT, pf};
use abi::stop::{Access, Instruction, StopReason};

/// The privileged or I/O instruction at the start of `insn`, if any.
pub fn privileged_insn(insn: &[u8]) -> Option<Instruction> {
    // Skip legacy and REX prefixes.
    let mut i = 0;
    while let Some(&b) = insn.get(i) {
        if matches!(b, 0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x3e | 0x26 | 0x64 | 0x65 | 0x36) || (0x40..=0x4f).contains(&b) {
            i += 1;
        } else {
            break;
        }
    }
    let op = *insn.get(i)?;
    let next = insn.get(i + 1).copied();
    use Instruction as I;
    Some(match (op, next) {
        (0xf4, _) => I::Hlt,
        (0xfa, _) => I::Cli,
        (0xfb, _) => I::Sti,
        (0xe4..=0xe7 | 0xec..=0xef, _) => I::PortIo,
        (0x6c..=0x6f, _) => I::StringPortIo,
        (0xcd, _) => I::IntN,
        (0x0f, Some(0x30)) => I::Wrmsr,
        (0x0f, Some(0x32)) => I::Rdmsr,
        (0x0f, Some(0x22)) => I::MovToControlRegister,
        (0x0f, Some(0x20)) => I::MovFromControlRegister,
        (0x0f, Some(0x23 | 0x21)) => I::MovDebugRegister,
        (0x0f, Some(0x01)) => I::SystemTable,
        (0x0f, Some(0x00)) => I::SystemSegment,
        (0x0f, Some(0x06)) => I::Clts,
        (0x0f, Some(0x08 | 0x09)) => I::Invd,
        (0x0f, Some(0x35)) => I::Sysexit,
        (0x0f, Some(0x07)) => I::Sysret,
        _ => return None,
    })
}

/// What the guest was doing when it faulted.
pub struct FaultInfo<'a> {
    pub vector: u64,
    pub error: u64,
    pub cr2: u64,
    pub rip: u64,
    /// The first bytes at `rip`, if they could be read.
    pub insn: &'a [u8],
    /// The faulting address lies in the stack's guard area.
    pub stack_guard: bool,
}

/// Why a guest that took exception `f.vector` (0 to 31) is stopped.
pub fn reason(f: &FaultInfo<'_>) -> StopReason {
    let ip = f.rip;
    match f.vector {
        VECTOR_GENERAL_PROTECTION => {
            if f.error & GP_IDT != 0 {
                // The gate's vector: from the instruction where it can be read
                // (QEMU's error code scales the IDT index by 16, not 8).
                let vector = match f.insn {
                    [0xcd, v, ..] => *v as u64,
                    [0xcc, ..] => 3,
                    [0xce, ..] => 4,
                    [0xf1, ..] => 1,
                    _ => f.error >> 3,
                };
                StopReason::InterruptNotAllowed { vector, ip }
            } else if let Some(instruction) = privileged_insn(f.insn) {
                StopReason::PrivilegedInstruction { instruction, ip }
            } else {
                StopReason::GeneralProtection { error: f.error, ip }
            }
        }
        VECTOR_PAGE_FAULT => {
            let access = if f.error & pf::FETCH != 0 {
                Access::Execute
            } else if f.error & pf::WRITE != 0 {
                Access::Write
            } else {
                Access::Read
            };
            if f.stack_guard {
                StopReason::StackOverflow { access, address: f.cr2, ip }
            } else {
                StopReason::PageFault { access, address: f.cr2, protected: f.error & pf::PRESENT != 0, ip }
            }
        }
        // Exits with a vector above 31 are interrupts, never faults.
        v => StopReason::Exception { vector: v.min(255) as u8, error: f.error, ip },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Instruction as I;
    use StopReason as R;

    /// Why a guest at ip 0x401000 that took `vector` is stopped.
    fn d(vector: u64, error: u64, cr2: u64, insn: &[u8]) -> StopReason {
        reason(&FaultInfo { vector, error, cr2, rip: 0x401000, insn, stack_guard: false })
    }

    const IP: u64 = 0x401000;

    #[test]
    fn names_privileged_instructions() {
        let privileged = |instruction| R::PrivilegedInstruction { instruction, ip: IP };
        assert_eq!(d(13, 0, 0, &[0xf4]), privileged(I::Hlt));
        assert_eq!(d(13, 0, 0, &[0xfa]), privileged(I::Cli));
        assert_eq!(d(13, 0, 0, &[0x0f, 0x30]), privileged(I::Wrmsr));
        assert_eq!(d(13, 0, 0, &[0x0f, 0x22, 0xd8]), privileged(I::MovToControlRegister));
        assert_eq!(d(13, 0, 0, &[0xee]), privileged(I::PortIo));
        assert_eq!(d(13, 0, 0, &[0x66, 0xec]), privileged(I::PortIo));
        assert_eq!(d(13, 0, 0, &[0x0f, 0x01, 0x10]), privileged(I::SystemTable));
        assert_eq!(d(13, 0x80 << 4 | 2, 0, &[0xcd, 0x80]), R::InterruptNotAllowed { vector: 0x80, ip: IP });
        assert_eq!(d(13, 0x21 << 3 | 2, 0, &[]), R::InterruptNotAllowed { vector: 0x21, ip: IP });
        assert_eq!(d(13, 0, 0, &[0x90]), R::GeneralProtection { error: 0, ip: IP });
        assert_eq!(d(13, 0, 0, &[]), R::GeneralProtection { error: 0, ip: IP });
    }

    #[test]
    fn describes_page_faults_and_arithmetic() {
        let pf = |access, address, protected| R::PageFault { access, address, protected, ip: IP };
        assert_eq!(d(14, 0b110, 0xdead0000, &[]), pf(Access::Write, 0xdead0000, false));
        assert_eq!(d(14, 0b111, 0x401000, &[]), pf(Access::Write, 0x401000, true));
        assert_eq!(d(14, 0b10101, 0x5000, &[]), pf(Access::Execute, 0x5000, true));
        assert_eq!(d(14, 0b100, 0x5000, &[]), pf(Access::Read, 0x5000, false));
        assert_eq!(d(0, 0, 0, &[]), R::Exception { vector: 0, error: 0, ip: IP });
        assert_eq!(d(6, 0, 0, &[]), R::Exception { vector: 6, error: 0, ip: IP });
        let so = reason(&FaultInfo { vector: 14, error: 0b110, cr2: 0x7ffe_ffef_fff8, rip: 1, insn: &[], stack_guard: true });
        assert_eq!(so, StopReason::StackOverflow { access: Access::Write, address: 0x7ffe_ffef_fff8, ip: 1 });
        assert_eq!(d(17, 0, 0, &[]), R::Exception { vector: 17, error: 0, ip: IP });
        assert_eq!(d(21, 4, 0, &[]), R::Exception { vector: 21, error: 4, ip: IP });
        assert_eq!(
            reason(&FaultInfo { vector: 13, error: 0, cr2: 0, rip: 5, insn: &[0x0f, 0x30], stack_guard: false }),
            StopReason::PrivilegedInstruction { instruction: Instruction::Wrmsr, ip: 5 }
        );
    }
}
