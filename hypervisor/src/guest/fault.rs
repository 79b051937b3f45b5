//! Turning a CPU exception taken in a guest into a stop reason a person can
//! act on: which fault, at which address, doing what.

use alloc::format;
use alloc::string::String;

/// Names the privileged or I/O instruction at the start of `insn`, if any.
pub fn privileged_insn(insn: &[u8]) -> Option<&'static str> {
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
    Some(match (op, next) {
        (0xf4, _) => "hlt",
        (0xfa, _) => "cli",
        (0xfb, _) => "sti",
        (0xe4..=0xe7 | 0xec..=0xef, _) => "in/out (port I/O)",
        (0x6c..=0x6f, _) => "ins/outs (port I/O)",
        (0xcd, _) => "int n",
        (0x0f, Some(0x30)) => "wrmsr",
        (0x0f, Some(0x32)) => "rdmsr",
        (0x0f, Some(0x22)) => "mov to control register",
        (0x0f, Some(0x20)) => "mov from control register",
        (0x0f, Some(0x23 | 0x21)) => "mov debug register",
        (0x0f, Some(0x01)) => "system table instruction (lgdt/lidt/...)",
        (0x0f, Some(0x00)) => "system segment instruction (lldt/ltr/...)",
        (0x0f, Some(0x06)) => "clts",
        (0x0f, Some(0x08 | 0x09)) => "invd/wbinvd",
        (0x0f, Some(0x35)) => "sysexit",
        (0x0f, Some(0x07)) => "sysret",
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

/// A one-line reason for stopping a guest after a CPU exception.
pub fn describe(f: &FaultInfo<'_>) -> String {
    let at = f.rip;
    match f.vector {
        0 => format!("divide error at ip {at:#x}"),
        1 => format!("debug trap at ip {at:#x}"),
        3 => format!("breakpoint (int3) at ip {at:#x}"),
        4 => format!("overflow (into) at ip {at:#x}"),
        5 => format!("bound range exceeded at ip {at:#x}"),
        6 => format!("invalid opcode at ip {at:#x}"),
        7 => format!("device not available at ip {at:#x}"),
        13 => {
            if f.error & 2 != 0 {
                // The gate's vector: from the instruction where it can be read
                // (QEMU's error code scales the IDT index by 16, not 8).
                let vector = match f.insn {
                    [0xcd, v, ..] => *v as u64,
                    [0xcc, ..] => 3,
                    [0xce, ..] => 4,
                    [0xf1, ..] => 1,
                    _ => f.error >> 3,
                };
                format!("int {vector:#x} is not allowed (general protection fault at ip {at:#x})")
            } else if let Some(name) = privileged_insn(f.insn) {
                format!("privileged instruction {name} at ip {at:#x}")
            } else {
                format!("general protection fault (error {:#x}) at ip {at:#x}", f.error)
            }
        }
        14 => {
            let access = if f.error & 16 != 0 {
                "execute"
            } else if f.error & 2 != 0 {
                "write"
            } else {
                "read"
            };
            if f.stack_guard {
                format!("stack overflow: {access} at {:#x} (guard page) at ip {at:#x}", f.cr2)
            } else if f.error & 1 != 0 {
                format!("page fault: {access} to protected address {:#x} at ip {at:#x}", f.cr2)
            } else {
                format!("page fault: {access} to unmapped address {:#x} at ip {at:#x}", f.cr2)
            }
        }
        12 => format!("stack-segment fault at ip {at:#x}"),
        16 => format!("x87 floating-point exception at ip {at:#x}"),
        17 => format!("alignment check at ip {at:#x}"),
        19 => format!("SIMD floating-point exception at ip {at:#x}"),
        v => format!("CPU exception {v} (error {:#x}) at ip {at:#x}", f.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(vector: u64, error: u64, cr2: u64, insn: &[u8]) -> String {
        describe(&FaultInfo { vector, error, cr2, rip: 0x401000, insn, stack_guard: false })
    }

    #[test]
    fn names_privileged_instructions() {
        assert_eq!(d(13, 0, 0, &[0xf4]), "privileged instruction hlt at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[0xfa]), "privileged instruction cli at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[0x0f, 0x30]), "privileged instruction wrmsr at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[0x0f, 0x22, 0xd8]), "privileged instruction mov to control register at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[0xee]), "privileged instruction in/out (port I/O) at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[0x66, 0xec]), "privileged instruction in/out (port I/O) at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[0x0f, 0x01, 0x10]), "privileged instruction system table instruction (lgdt/lidt/...) at ip 0x401000");
        assert_eq!(d(13, 0x80 << 4 | 2, 0, &[0xcd, 0x80]), "int 0x80 is not allowed (general protection fault at ip 0x401000)");
        assert_eq!(d(13, 0x21 << 3 | 2, 0, &[]), "int 0x21 is not allowed (general protection fault at ip 0x401000)");
        assert_eq!(d(13, 0, 0, &[0x90]), "general protection fault (error 0x0) at ip 0x401000");
        assert_eq!(d(13, 0, 0, &[]), "general protection fault (error 0x0) at ip 0x401000");
    }

    #[test]
    fn describes_page_faults_and_arithmetic() {
        assert_eq!(d(14, 0b110, 0xdead0000, &[]), "page fault: write to unmapped address 0xdead0000 at ip 0x401000");
        assert_eq!(d(14, 0b111, 0x401000, &[]), "page fault: write to protected address 0x401000 at ip 0x401000");
        assert_eq!(d(14, 0b10101, 0x5000, &[]), "page fault: execute to protected address 0x5000 at ip 0x401000");
        assert_eq!(d(0, 0, 0, &[]), "divide error at ip 0x401000");
        assert_eq!(d(6, 0, 0, &[]), "invalid opcode at ip 0x401000");
        let so = describe(&FaultInfo { vector: 14, error: 0b110, cr2: 0x7ffe_ffef_fff8, rip: 1, insn: &[], stack_guard: true });
        assert!(so.starts_with("stack overflow"), "{so}");
    }
}
