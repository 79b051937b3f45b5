//! Why the hypervisor stopped a guest, as data.
//!
//! The hypervisor decides a [`StopReason`] where it stops a guest (a CPU
//! exception, a bad hypercall, its memory limit, the operator), prints its
//! [`Display`](core::fmt::Display) sentence on the console
//! (`[hv] guest NAME stopped: SENTENCE`) and puts the value itself in the
//! guest's `guest_stats` record (`stop_reason`). Programs match the value;
//! the sentences are for people and may be reworded.
//!
//! Every field is what the hypervisor saw (the guest's `rip`, the faulting
//! address), never a pointer it followed.

use core::fmt;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// Why a guest was stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum StopReason {
    /// A CPU exception with no more specific variant below: divide error
    /// (0), debug (1), breakpoint (3), overflow (4), bound (5), invalid
    /// opcode (6), device not available (7), stack-segment fault (12), x87
    /// (16), alignment check (17), SIMD (19), or any other vector.
    Exception { vector: u8, error: u64, ip: u64 },
    /// A general-protection fault from `int n` through a gate the guest may
    /// not use (`vector` is `n`).
    InterruptNotAllowed { vector: u64, ip: u64 },
    /// A general-protection fault on a privileged or I/O instruction.
    PrivilegedInstruction { instruction: Instruction, ip: u64 },
    /// Any other general-protection fault.
    GeneralProtection { error: u64, ip: u64 },
    /// A page fault: `protected` if the page is mapped but not for this
    /// access (a write to text), else the address is not mapped at all.
    PageFault { access: Access, address: u64, protected: bool, ip: u64 },
    /// A page fault in the guard page below the stack.
    StackOverflow { access: Access, address: u64, ip: u64 },
    /// It touched a fresh page at `address` beyond its memory limit.
    OutOfMemory { address: u64, limit_bytes: u64 },
    /// The machine had no frame left for a page it touched.
    MachineOutOfMemory,
    /// A `syscall` at the very end of the guest half: the return address
    /// `ip` is not canonical, and returning there would fault in ring 0.
    NonCanonicalReturn { ip: u64 },
    /// A hypercall with an unknown number or arguments outside its rules.
    BadHypercall(HypercallError),
    /// The operator stopped it (`ctl stop`).
    Operator,
}

/// The access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// A privileged or I/O instruction a guest tried (ring 3 may not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum Instruction {
    Hlt,
    Cli,
    Sti,
    /// `in`/`out`.
    PortIo,
    /// `ins`/`outs`.
    StringPortIo,
    /// `int n`.
    IntN,
    Wrmsr,
    Rdmsr,
    MovToControlRegister,
    MovFromControlRegister,
    MovDebugRegister,
    /// `lgdt`, `lidt`, `sgdt`, ... (`0f 01`).
    SystemTable,
    /// `lldt`, `ltr`, ... (`0f 00`).
    SystemSegment,
    Clts,
    /// `invd`/`wbinvd`.
    Invd,
    Sysexit,
    Sysret,
}

/// A hypercall the hypervisor refused by stopping its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum HypercallError {
    /// `rax` held no hypercall number.
    UnknownNumber { number: u64 },
    /// `console_write` of more than `max` bytes.
    ConsoleWriteLength { length: u64, max: u64 },
    /// `console_write`'s buffer is not readable guest memory.
    ConsoleWriteBuffer { address: u64, length: u64, error: MemoryError },
    /// `discard` of a range that is not whole pages inside the heap.
    Discard { address: u64, length: u64 },
}

/// Why the hypervisor could not use a range of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum MemoryError {
    /// Not mapped, and not in a zero-filled region.
    Unmapped { address: u64 },
    /// Mapped, but not writable.
    NotWritable { address: u64 },
    /// The range wraps around or leaves the guest's half.
    OutOfRange { address: u64, length: u64 },
    /// A fresh page would pass the guest's memory limit.
    OutOfMemory { limit_bytes: u64 },
    /// The machine has no frame left.
    MachineOutOfMemory,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Execute => "execute",
        })
    }
}

impl Instruction {
    /// The name in the stop sentence.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hlt => "hlt",
            Self::Cli => "cli",
            Self::Sti => "sti",
            Self::PortIo => "in/out (port I/O)",
            Self::StringPortIo => "ins/outs (port I/O)",
            Self::IntN => "int n",
            Self::Wrmsr => "wrmsr",
            Self::Rdmsr => "rdmsr",
            Self::MovToControlRegister => "mov to control register",
            Self::MovFromControlRegister => "mov from control register",
            Self::MovDebugRegister => "mov debug register",
            Self::SystemTable => "system table instruction (lgdt/lidt/...)",
            Self::SystemSegment => "system segment instruction (lldt/ltr/...)",
            Self::Clts => "clts",
            Self::Invd => "invd/wbinvd",
            Self::Sysexit => "sysexit",
            Self::Sysret => "sysret",
        }
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unmapped { address } => write!(f, "address {address:#x} is not mapped"),
            Self::NotWritable { address } => write!(f, "address {address:#x} is not writable"),
            Self::OutOfRange { address, length } => write!(f, "range {address:#x}+{length:#x} leaves the guest's half"),
            Self::OutOfMemory { limit_bytes } => write!(f, "out of memory (limit {} KiB)", limit_bytes / 1024),
            Self::MachineOutOfMemory => f.write_str("the machine is out of memory"),
        }
    }
}

impl fmt::Display for HypercallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownNumber { number } => write!(f, "bad hypercall: unknown number {number:#x}"),
            Self::ConsoleWriteLength { length, max } => write!(f, "bad hypercall console_write: length {length:#x} exceeds {max}"),
            Self::ConsoleWriteBuffer { address, length, error } => {
                write!(f, "bad hypercall console_write: buffer {address:#x}+{length:#x}: {error}")
            }
            Self::Discard { address, length } => {
                write!(f, "bad hypercall discard: {address:#x}+{length:#x} is not whole pages inside the heap")
            }
        }
    }
}

/// The name of exception `vector` in a stop sentence, for those with one.
fn exception_name(vector: u8) -> Option<&'static str> {
    Some(match vector {
        0 => "divide error",
        1 => "debug trap",
        3 => "breakpoint (int3)",
        4 => "overflow (into)",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        12 => "stack-segment fault",
        16 => "x87 floating-point exception",
        17 => "alignment check",
        19 => "SIMD floating-point exception",
        _ => return None,
    })
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exception { vector, error, ip } => match exception_name(*vector) {
                Some(name) => write!(f, "{name} at ip {ip:#x}"),
                None => write!(f, "CPU exception {vector} (error {error:#x}) at ip {ip:#x}"),
            },
            Self::InterruptNotAllowed { vector, ip } => {
                write!(f, "int {vector:#x} is not allowed (general protection fault at ip {ip:#x})")
            }
            Self::PrivilegedInstruction { instruction, ip } => write!(f, "privileged instruction {instruction} at ip {ip:#x}"),
            Self::GeneralProtection { error, ip } => write!(f, "general protection fault (error {error:#x}) at ip {ip:#x}"),
            Self::PageFault { access, address, protected, ip } => {
                let what = if *protected { "protected" } else { "unmapped" };
                write!(f, "page fault: {access} to {what} address {address:#x} at ip {ip:#x}")
            }
            Self::StackOverflow { access, address, ip } => {
                write!(f, "stack overflow: {access} at {address:#x} (guard page) at ip {ip:#x}")
            }
            Self::OutOfMemory { address, limit_bytes } => {
                write!(f, "out of memory: touched {address:#x} beyond its {} KiB limit", limit_bytes / 1024)
            }
            Self::MachineOutOfMemory => f.write_str("the machine is out of memory"),
            Self::NonCanonicalReturn { ip } => {
                write!(f, "return address {ip:#x} is not canonical (syscall at the end of the guest half)")
            }
            Self::BadHypercall(e) => write!(f, "{e}"),
            Self::Operator => f.write_str("stopped by the operator (ctl stop)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate alloc;
    use alloc::string::ToString;

    /// The sentences people and their greps read, exactly as before the
    /// reasons were typed.
    #[test]
    fn every_reason_reads_as_it_always_did() {
        let ip = 0x401000;
        let cases: &[(StopReason, &str)] = &[
            (StopReason::Exception { vector: 0, error: 0, ip }, "divide error at ip 0x401000"),
            (StopReason::Exception { vector: 3, error: 0, ip }, "breakpoint (int3) at ip 0x401000"),
            (StopReason::Exception { vector: 6, error: 0, ip }, "invalid opcode at ip 0x401000"),
            (StopReason::Exception { vector: 16, error: 0, ip }, "x87 floating-point exception at ip 0x401000"),
            (StopReason::Exception { vector: 30, error: 8, ip }, "CPU exception 30 (error 0x8) at ip 0x401000"),
            (StopReason::InterruptNotAllowed { vector: 0x80, ip }, "int 0x80 is not allowed (general protection fault at ip 0x401000)"),
            (
                StopReason::PrivilegedInstruction { instruction: Instruction::PortIo, ip },
                "privileged instruction in/out (port I/O) at ip 0x401000",
            ),
            (StopReason::GeneralProtection { error: 0, ip }, "general protection fault (error 0x0) at ip 0x401000"),
            (
                StopReason::PageFault { access: Access::Write, address: 0xdead0000, protected: false, ip },
                "page fault: write to unmapped address 0xdead0000 at ip 0x401000",
            ),
            (
                StopReason::PageFault { access: Access::Execute, address: 0x5000, protected: true, ip },
                "page fault: execute to protected address 0x5000 at ip 0x401000",
            ),
            (
                StopReason::StackOverflow { access: Access::Write, address: 0x1ffff8, ip },
                "stack overflow: write at 0x1ffff8 (guard page) at ip 0x401000",
            ),
            (StopReason::OutOfMemory { address: 0x7000, limit_bytes: 256 << 10 }, "out of memory: touched 0x7000 beyond its 256 KiB limit"),
            (StopReason::MachineOutOfMemory, "the machine is out of memory"),
            (
                StopReason::NonCanonicalReturn { ip: 0x8000_0000_0000 },
                "return address 0x800000000000 is not canonical (syscall at the end of the guest half)",
            ),
            (StopReason::BadHypercall(HypercallError::UnknownNumber { number: 0xdead }), "bad hypercall: unknown number 0xdead"),
            (
                StopReason::BadHypercall(HypercallError::ConsoleWriteLength { length: 1 << 40, max: 4096 }),
                "bad hypercall console_write: length 0x10000000000 exceeds 4096",
            ),
            (
                StopReason::BadHypercall(HypercallError::ConsoleWriteBuffer {
                    address: 0xffff_ffff_8000_0000,
                    length: 0x10,
                    error: MemoryError::OutOfRange { address: 0xffff_ffff_8000_0000, length: 0x10 },
                }),
                "bad hypercall console_write: buffer 0xffffffff80000000+0x10: range 0xffffffff80000000+0x10 leaves the guest's half",
            ),
            (
                StopReason::BadHypercall(HypercallError::Discard { address: 0x10000, length: 0x1000 }),
                "bad hypercall discard: 0x10000+0x1000 is not whole pages inside the heap",
            ),
            (StopReason::Operator, "stopped by the operator (ctl stop)"),
        ];
        for (reason, sentence) in cases {
            assert_eq!(reason.to_string(), *sentence);
        }
    }

    #[test]
    fn reasons_survive_json() {
        let reasons = [
            StopReason::PageFault { access: Access::Read, address: u64::MAX, protected: true, ip: 1 },
            StopReason::PrivilegedInstruction { instruction: Instruction::SystemTable, ip: 2 },
            StopReason::BadHypercall(HypercallError::ConsoleWriteBuffer {
                address: 3,
                length: 4,
                error: MemoryError::Unmapped { address: 3 },
            }),
            StopReason::Operator,
            StopReason::MachineOutOfMemory,
        ];
        for r in reasons {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<StopReason>(&json).unwrap(), r, "{json}");
        }
        assert_eq!(serde_json::to_string(&StopReason::Operator).unwrap(), r#""operator""#);
        assert_eq!(
            serde_json::to_string(&StopReason::Exception { vector: 6, error: 0, ip: 16 }).unwrap(),
            r#"{"exception":{"vector":6,"error":0,"ip":16}}"#
        );
    }
}
