//! Turns the addresses of a crash report into function names and source
//! lines, with each guest's ELF (its DWARF).
//!
//! Two kinds of console line carry addresses:
//! - `[hv] guest NAME backtrace: 0xRIP 0xRET ...`: the hypervisor's report
//!   when it stops a guest (the faulting `rip`, then return addresses found
//!   on the guest's stack);
//! - `NAME| backtrace: 0xRET ...`: the libos's panic handler (return
//!   addresses found on its own stack).
//!
//! Return addresses point after a call, so they are looked up one byte
//! earlier. Each address becomes one indented line after the report:
//! `    #0 0x20364d hostile::main at apps/hostile/src/main.rs:60`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Guest ELFs by manifest entry name, loaded on first use.
pub struct Symbolizer {
    elfs: HashMap<String, PathBuf>,
    loaded: HashMap<String, Option<addr2line::Loader>>,
}

/// The guest name and the addresses of a backtrace line, and whether the
/// first address is an exact `rip` (the hypervisor's report) rather than a
/// return address.
pub fn parse(line: &str) -> Option<(&str, bool, Vec<u64>)> {
    let (name, exact, list) = if let Some(rest) = line.strip_prefix("[hv] guest ") {
        let (name, list) = rest.split_once(" backtrace: ")?;
        (name, true, list)
    } else {
        let (name, rest) = line.split_once("| ")?;
        (name, false, rest.strip_prefix("backtrace: ")?)
    };
    let addrs: Option<Vec<u64>> = list.split_whitespace().map(|a| u64::from_str_radix(a.strip_prefix("0x")?, 16).ok()).collect();
    Some((name, exact, addrs?))
}

/// The manifest entry an instance belongs to: `echo-12` → `echo`.
fn entry_of(instance: &str) -> &str {
    match instance.rsplit_once('-') {
        Some((entry, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => entry,
        _ => instance,
    }
}

impl Symbolizer {
    /// A symbolizer for guests of these manifest entries (name, ELF).
    pub fn new(elfs: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        Self { elfs: elfs.into_iter().collect(), loaded: HashMap::new() }
    }

    /// The lines to print after `line`: one per address if it is a
    /// backtrace of a guest whose ELF we have, else none.
    pub fn annotate(&mut self, line: &str) -> Vec<String> {
        let Some((name, exact, addrs)) = parse(line) else { return Vec::new() };
        let entry = entry_of(name).to_string();
        let Some(path) = self.elfs.get(&entry) else { return Vec::new() };
        let loader = self.loaded.entry(entry).or_insert_with(|| addr2line::Loader::new(path).ok());
        let Some(loader) = loader else { return Vec::new() };
        addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let probe = if exact && i == 0 { a } else { a.saturating_sub(1) };
                let mut out = format!("    #{i} {a:#x}");
                let mut named = false;
                if let Ok(mut frames) = loader.find_frames(probe) {
                    while let Ok(Some(f)) = frames.next() {
                        let func = f.function.as_ref().and_then(|n| n.demangle().ok()).map(|n| n.into_owned());
                        let at = f.location.as_ref().and_then(|l| Some(format!("{}:{}", l.file?, l.line?)));
                        if named {
                            out += " (inlined into)";
                        }
                        let _ = write!(out, " {}", func.as_deref().unwrap_or("?"));
                        if let Some(at) = at {
                            let _ = write!(out, " at {at}");
                        }
                        named = true;
                    }
                }
                if !named && let Some(sym) = loader.find_symbol(probe) {
                    let _ = write!(out, " {}", addr2line::demangle_auto(sym.into(), None));
                }
                out
            })
            .collect()
    }

    /// `console` with every backtrace followed by its symbolized lines.
    pub fn annotate_all(&mut self, console: &str) -> String {
        let mut out = String::with_capacity(console.len());
        for line in console.lines() {
            out.push_str(line);
            out.push('\n');
            for extra in self.annotate(line) {
                out.push_str(&extra);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtrace_lines_are_recognized() {
        assert_eq!(parse("[hv] guest h-0 backtrace: 0x201000 0x20a1f3"), Some(("h-0", true, vec![0x201000, 0x20a1f3])));
        assert_eq!(parse("p-0| backtrace: 0x2040"), Some(("p-0", false, vec![0x2040])));
        assert_eq!(parse("p-0| backtrace: nope"), None);
        assert_eq!(parse("p-0| hello"), None);
        assert_eq!(parse("[hv] guest h-0 stopped: x"), None);
        assert_eq!(entry_of("echo-bench-12"), "echo-bench");
        assert_eq!(entry_of("odd-name"), "odd-name");
    }
}
