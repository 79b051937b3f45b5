//! Host programs the commands and tests need, installed from Debian's
//! packages when missing: as root with apt-get (echoing the command),
//! otherwise the error gives the exact command to run.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{echo, run};

/// `containerd` and its client `ctr`, from Debian's `containerd` package.
pub const CONTAINERD: &str = "containerd";
/// containerd's command-line client.
pub const CTR: &str = "ctr";

/// True if an executable `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter_map(|dir| fs::metadata(dir.join(program)).ok())
        .any(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True if `what` is there: a program on `PATH`, or (with a `/`) a file
/// or directory.
fn present(what: &str) -> bool {
    if what.contains('/') { std::path::Path::new(what).exists() } else { on_path(what) }
}

/// Makes sure every one of `programs` is there (a program on `PATH`, or a
/// path such as a firmware file): as root, installs `package` (one or more
/// Debian packages, space-separated) with apt-get (running `apt-get update`
/// first if the install fails); otherwise fails with the command to run.
pub fn ensure(programs: &[&str], package: &str) -> Result<()> {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !present(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what = missing.join(" and ");
    let mut id = Command::new("id");
    id.arg("-u");
    echo(&id);
    let uid = id.output().context("running `id -u`")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("{what} is not installed; install it with:\n    sudo apt-get install -y {package}");
    }
    eprintln!("{what} is not installed; installing {package}");
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let install = || run(apt().args(["install", "-y"]).args(package.split_whitespace()));
    if install().is_err() {
        run(apt().arg("update"))?;
        install()?;
    }
    if let Some(still) = programs.iter().find(|p| !present(p)) {
        bail!("installed {package} but {still} is still not on PATH");
    }
    Ok(())
}

/// Makes sure containerd and `ctr` are installed (Debian's `containerd`),
/// for the tests that import our OCI images and run guests through it.
pub fn ensure_containerd() -> Result<()> {
    ensure(&[CONTAINERD, CTR], "containerd")
}

/// The Protocol Buffers compiler, from Debian's `protobuf-compiler`.
pub const PROTOC: &str = "protoc";

/// Makes sure `protoc` is installed (Debian's `protobuf-compiler`): the
/// CRI test's client (`k8s-cri`) generates its code with it when the
/// tests are built, so `test` and `lint` (clippy on every target) need it.
pub fn ensure_protoc() -> Result<()> {
    ensure(&[PROTOC], "protobuf-compiler")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-here"));
        assert!(ensure(&["sh"], "dash").is_ok(), "nothing to install");
        assert!(ensure(&["sh", "/bin"], "dash").is_ok(), "paths count as present");
        assert!(!present("/no/such/firmware.fd"));
    }
}
