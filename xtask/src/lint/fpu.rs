//! The hypervisor never runs an x87 or MMX instruction outside its entry
//! code.
//!
//! A hypercall exit saves only the guest's MXCSR and x87 control word
//! (docs/abi.md, ABI 4): the guest's x87 registers, status (a pending
//! unmasked exception included) and MMX state stay in the CPU while the
//! hypervisor handles the call, and the return to the same guest does not
//! reload them. That is sound only while no hypervisor code touches x87 or
//! MMX state: an `fld` would overwrite the guest's stack, a waiting x87
//! instruction would raise the guest's pending #MF in ring 0. Rust code on
//! x86_64 uses SSE for floating point, so none is expected; this check
//! disassembles the built hypervisor and fails on any such instruction
//! outside the few the entry code needs ([`ALLOWED`]).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// (function, mnemonic) pairs the entry code (`arch/x86_64/entry.rs`) uses.
pub const ALLOWED: &[(&str, &str)] =
    &[("fpu_leave", "fnstcw"), ("guest_exit", "fxsave64"), ("guest_exit", "fninit"), ("enter_guest", "fxrstor64")];

/// The x87/MMX instructions in the ELF at `elf` outside [`ALLOWED`], as
/// `function: instruction`.
pub fn x87_outside_entry(elf: &Path) -> Result<Vec<String>> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(elf)
        .output()
        .with_context(|| "running objdump (Debian package binutils)".to_string())?;
    if !out.status.success() {
        bail!("objdump -d {} failed: {}", elf.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(x87_in_disassembly(&String::from_utf8_lossy(&out.stdout)))
}

/// The offending instructions in `objdump -d --no-show-raw-insn` output.
pub fn x87_in_disassembly(text: &str) -> Vec<String> {
    let mut function = "";
    let mut found = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")).map(|(_, n)| n) {
            function = name;
            continue;
        }
        let Some((addr, insn)) = line.split_once(":\t") else { continue };
        if addr.trim().is_empty() || !addr.trim().chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let insn = insn.trim();
        let mnemonic = insn.split_whitespace().next().unwrap_or("");
        if touches_x87(mnemonic, insn) && !ALLOWED.contains(&(function, mnemonic)) {
            found.push(format!("{function}: {insn}"));
        }
    }
    found
}

/// Whether an instruction reads or writes x87 or MMX state: every x87
/// mnemonic begins with `f` (and `wait`), MMX names `%mm0`-`%mm7`, `emms`.
fn touches_x87(mnemonic: &str, insn: &str) -> bool {
    let mmx = insn.match_indices("%mm").any(|(i, _)| insn[i + 3..].starts_with(|c: char| c.is_ascii_digit()));
    mnemonic.starts_with('f') || mnemonic == "wait" || mnemonic == "emms" || mmx
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISASSEMBLY: &str = "
ffffffff8012bf45 <fpu_leave>:
ffffffff8012c00c:\tfnstcw (%rdi)
ffffffff8012c010:\tmovq   %rax,%gs:0x58

ffffffff8012c020 <guest_exit>:
ffffffff8012c029:\tfxsave64 (%rax)
ffffffff8012c02d:\tfninit
ffffffff8012c030:\tmovaps %xmm0,(%rsp)

ffffffff80100000 <_ZN4core3fmt5float9float_to8decimal17h0123E>:
ffffffff80100004:\tmovsd  %xmm1,%xmm0
";

    #[test]
    fn the_entry_codes_own_instructions_and_sse_pass() {
        assert_eq!(x87_in_disassembly(DISASSEMBLY), Vec::<String>::new());
    }

    #[test]
    fn x87_and_mmx_anywhere_else_fail() {
        let text = format!(
            "{DISASSEMBLY}\nffffffff80100100 <hypervisor::guest::Guest::hypercall>:\nffffffff80100104:\tfldt   (%rdi)\n\
             ffffffff80100108:\tmovq   %mm1,%rax\nffffffff8010010c:\temms\n\
             ffffffff80100200 <enter_guest>:\nffffffff80100204:\tfninit\n"
        );
        assert_eq!(
            x87_in_disassembly(&text),
            [
                "hypervisor::guest::Guest::hypercall: fldt   (%rdi)",
                "hypervisor::guest::Guest::hypercall: movq   %mm1,%rax",
                "hypervisor::guest::Guest::hypercall: emms",
                "enter_guest: fninit",
            ]
        );
    }
}
