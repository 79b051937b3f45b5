//! External commands: each is echoed as `$ cmd args` (on stderr) before it
//! runs, and nested cargo calls get a clean environment.

use std::env;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::workspace_root;

/// Variables a nested cargo keeps; every other `CARGO*` and `RUST*` variable
/// (RUSTFLAGS, CARGO_TARGET_DIR, CARGO_MANIFEST_DIR, ... set by the outer
/// cargo) is removed so it cannot leak into the inner build.
/// `RUST_BACKTRACE` only affects how a panic is reported, never what is built.
const KEEP_ENV: &[&str] = &["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "RUST_BACKTRACE"];

/// A `cargo` command (the cargo that runs us, if any) with a clean
/// environment and the workspace root as working directory.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO") || key.starts_with("RUST")) && !KEEP_ENV.contains(&key) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Prints `$ VAR=value cmd args` to stderr, quoted so it can be pasted into a shell.
pub fn echo(cmd: &Command) {
    let mut line = String::from("$");
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            line += &format!(" {}={}", key.to_string_lossy(), quote(value));
        }
    }
    let program = Path::new(cmd.get_program());
    line += " ";
    line += &quote(program.file_name().unwrap_or(program.as_os_str()));
    for arg in cmd.get_args() {
        line += " ";
        line += &quote(arg);
    }
    eprintln!("{line}");
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) { s.into_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// Echoes and runs `cmd`, failing unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let name = Path::new(cmd.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
    let status = cmd.status().with_context(|| format!("could not start {name}"))?;
    if !status.success() {
        let what = cmd.get_args().next().map_or(name.clone(), |a| format!("{name} {}", a.to_string_lossy()));
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote(OsStr::new("--target-dir")), "--target-dir");
        assert_eq!(quote(OsStr::new("-C link-arg=-T/x")), "'-C link-arg=-T/x'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
    }

    #[test]
    fn nested_cargo_environment_is_clean() {
        let cmd = cargo();
        let removed: Vec<_> = cmd.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_owned()).collect();
        // Under `cargo test` CARGO_MANIFEST_DIR is always set; it must not leak.
        assert!(removed.iter().any(|k| k == "CARGO_MANIFEST_DIR"));
        assert!(!removed.iter().any(|k| k == "CARGO_HOME" || k == "PATH"));
        assert_eq!(cmd.get_current_dir(), Some(workspace_root()));
    }
}
