//! Writes each target's generated seeds into `<dir>/<target>/seed-<n>`,
//! the working corpus that `cargo xtask fuzz` hands libFuzzer.
//!
//! Usage: `fuzz-seeds DIR [TARGET...]` (all targets by default).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR [TARGET...]");
        return ExitCode::FAILURE;
    };
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = fuzz::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    }
    for name in &names {
        if fuzz::target(name).is_none() {
            eprintln!("no fuzz target '{name}'");
            return ExitCode::FAILURE;
        }
        let out = dir.join(name);
        let seeds = fuzz::seeds(name);
        let written = std::fs::create_dir_all(&out)
            .and_then(|()| seeds.iter().enumerate().try_for_each(|(i, s)| std::fs::write(out.join(format!("seed-{i:02}")), s)));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
