//! `cargo xtask lint`: the checks `.ci/run` runs before the tests.
//!
//! - `cargo fmt --all --check` (the style is `rustfmt.toml`);
//! - clippy with `-D warnings` on the host crates (every target: libraries,
//!   binaries, tests, examples);
//! - clippy with `-D warnings` on the freestanding crates, each built the way
//!   `cargo xtask build` and `build-app` build it (the hypervisor binary with
//!   its linker script, libos and the apps with the guest flags), into the
//!   same target directories, so a lint run after a build checks only what
//!   changed;
//! - `unsafe` only where the project allows it ([`UNSAFE_ALLOWED`]): a
//!   block, impl, trait or function marked `unsafe` anywhere else fails.
//! - no x87 or MMX instruction in the hypervisor outside its entry code
//!   ([`fpu`]: a hypercall keeps the guest's x87 state in the CPU).

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::{GUEST_RUSTFLAGS, TARGET, apps, cargo, hypervisor_rustflags, workspace_root};

mod fpu;

/// Runs every check, all of them even when one fails, and fails if any did.
pub fn lint() -> Result<()> {
    let root = workspace_root();
    // clippy builds the tests, whose CRI client is generated with protoc.
    crate::ensure_protoc()?;
    let mut failed = Vec::new();
    let mut check = |what: &str, cmd: &mut std::process::Command| {
        if crate::run(cmd).is_err() {
            failed.push(what.to_string());
        }
    };
    check("formatting (run `cargo fmt --all`)", cargo().args(["fmt", "--all", "--check"]));
    check("clippy on the host crates", cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]));
    check(
        "clippy on the hypervisor binary",
        cargo()
            .args(["clippy", "--release", "-p", "hypervisor", "--bin", "hypervisor", "--features", "bare-metal"])
            .args(["--target", TARGET, "--target-dir", "target/hv", "--", "-D", "warnings"])
            .env("RUSTFLAGS", hypervisor_rustflags(root)),
    );
    let mut guests = cargo();
    guests.args(["clippy", "--release", "-p", "libos"]);
    for app in apps()? {
        guests.args(["-p", &app]);
    }
    guests.args(["--target", TARGET, "--target-dir", "target/guest", "--", "-D", "warnings"]).env("RUSTFLAGS", GUEST_RUSTFLAGS);
    check("clippy on libos and the apps", &mut guests);
    let mut scan = |what: &str, found: Result<Vec<String>>| match found {
        Ok(found) if found.is_empty() => {}
        Ok(found) => {
            for f in &found {
                eprintln!("{f}");
            }
            failed.push(format!("{what} ({} found)", found.len()));
        }
        Err(e) => failed.push(format!("{what}: could not check: {e:#}")),
    };
    scan("`unsafe` outside the places allowed for it", unsafe_outside_allowed(root));
    scan(
        "x87/MMX instructions in the hypervisor outside its entry code",
        crate::build_hypervisor().and_then(|elf| fpu::x87_outside_entry(&elf)),
    );
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    eprintln!("xtask lint: formatting, clippy, unsafe and x87 checks clean");
    Ok(())
}

/// Where `unsafe` may appear (path prefixes from the workspace root), each
/// for a reason the code cannot avoid: the hardware (arch), the C runtime
/// functions, the boot glue, the guest's start-up, heap and fixed mappings,
/// attack guests, and the fuzzer's counting global allocator.
pub const UNSAFE_ALLOWED: &[&str] = &[
    "hypervisor/src/arch/",
    "hypervisor/memfns/",
    "hypervisor/src/main.rs",
    "libos/src/lib.rs",
    "libos/src/rt.rs",
    "libos/src/heap.rs",
    "libos/src/sys.rs",
    "apps/hostile/",
    "fuzz/src/heap.rs",
];

/// Code the project carries but did not write (a patched copy of a
/// published crate, `libos/smoltcp/PATCHES.md`): not ours to restructure,
/// so the `unsafe` scan passes over it (its `unsafe` is in std-only
/// modules the guests never compile). Clippy does not lint it either: it
/// is not a workspace member.
pub const THIRD_PARTY: &[&str] = &["libos/smoltcp/"];

/// Every `unsafe` keyword in a Rust source file of the workspace outside
/// [`UNSAFE_ALLOWED`] and [`THIRD_PARTY`], as `path:line: text`. Comments are skipped (a line's
/// text after `//`), and so is the attribute `#[unsafe(...)]`, which marks
/// a link-time promise (`no_mangle`, `link_section`) rather than code.
pub fn unsafe_outside_allowed(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if path.is_dir() {
                let ours = !THIRD_PARTY.iter().any(|t| format!("{rel}/") == *t);
                if ours && !matches!(path.file_name().and_then(|n| n.to_str()), Some("target" | ".git")) {
                    stack.push(path);
                }
            } else if rel.ends_with(".rs") && !UNSAFE_ALLOWED.iter().any(|a| rel.starts_with(a)) {
                let text = fs::read_to_string(&path).with_context(|| format!("reading {rel}"))?;
                found.extend(unsafe_lines(&text).into_iter().map(|(n, line)| format!("{rel}:{n}: {}", line.trim())));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The lines (1-based) of `text` with the keyword `unsafe` in code.
fn unsafe_lines(text: &str) -> Vec<(usize, &str)> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = code_of(line).replace("#[unsafe(", "");
            code.match_indices("unsafe").any(|(i, _)| !code[..i].ends_with(word) && !code[i + "unsafe".len()..].starts_with(word))
        })
        .map(|(i, line)| (i + 1, line))
        .collect()
}

/// A line without its comment and without the contents of its string
/// literals (a line-by-line approximation: good enough for one keyword).
fn code_of(line: &str) -> String {
    let mut code = String::new();
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => {
                in_string = false;
                code.push(c);
            }
            (true, _) => {}
            (false, '"') => {
                in_string = true;
                code.push(c);
            }
            (false, '/') if chars.peek() == Some(&'/') => break,
            (false, _) => code.push(c),
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_is_found_in_code_not_in_comments_names_or_attributes() {
        let text = concat!(
            "fn a() {}\n",
            "    unsafe { x() }\n",
            "// unsafe in a comment\n",
            "let unsafe_code = 1;\n",
            "#[unsafe(no_mangle)]\n",
            "unsafe impl Send for A {}\n",
            "let b = 2; // unsafe\n",
            "let s = \"unsafe { \\\" }\"; unsafe fn f() {}\n",
        );
        assert_eq!(unsafe_lines(text).iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 6, 8]);
    }
}
