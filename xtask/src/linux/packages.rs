//! What the Linux peer needs on the host: the kernel, a static busybox and
//! a static C toolchain ([`ensure_packages`]), nginx and wrk for `bench net`
//! ([`ensure_net_tools`]). As root, what is missing is installed with
//! apt-get (echoing the command); otherwise the error gives the command.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::initramfs::BUSYBOX;
use super::kernel::Kernel;
use crate::cmd::run;
use crate::install::on_path;

fn is_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output().context("running `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// True if `path` is an ELF file without a program interpreter (a static
/// executable), read from its program headers.
pub fn is_static_elf(path: &Path) -> bool {
    fs::read(path).is_ok_and(|elf| static_elf(&elf))
}

fn static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    // 64-bit little-endian ELF.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| phoff.checked_add(i * phentsize).and_then(u32_at).is_some_and(|t| t != PT_INTERP))
}

/// Makes sure the kernel, a static busybox and a static C toolchain are
/// installed: as root, installs what is missing with apt-get (echoing the
/// command); otherwise fails with the exact command to run.
pub fn ensure_packages() -> Result<()> {
    let mut missing = Vec::new();
    if Kernel::find().is_err() {
        missing.push("linux-image-amd64");
    }
    if !is_static_elf(Path::new(BUSYBOX)) {
        missing.push("busybox-static");
    }
    if !on_path("gcc") {
        missing.push("gcc");
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists() {
        missing.push("libc6-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", missing.join(" "));
    if !is_root()? {
        bail!("the Linux peer needs {}; install with:\n    sudo {command}", missing.join(", "));
    }
    eprintln!("bench: installing {} for the Linux peer", missing.join(", "));
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let install = || run(apt().args(["install", "-y"]).args(&missing));
    if install().is_err() {
        run(apt().arg("update"))?;
        install()?;
    }
    Kernel::find().context("after installing linux-image-amd64")?;
    if !is_static_elf(Path::new(BUSYBOX)) {
        bail!("{BUSYBOX} is not a static executable even after installing busybox-static");
    }
    Ok(())
}

/// nginx (Debian's `nginx-light`) and `wrk` for the network benchmark.
pub const NGINX: &str = "/usr/sbin/nginx";

/// Makes sure nginx and wrk are installed (as root: apt-get install
/// nginx-light wrk when missing). Returns, for each, its path or why it is
/// not there.
pub fn ensure_net_tools() -> (Result<PathBuf, String>, Result<PathBuf, String>) {
    let wrk = || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join("wrk")).find(|p| p.is_file());
    let mut missing = Vec::new();
    if !Path::new(NGINX).is_file() {
        missing.push("nginx-light");
    }
    if wrk().is_none() {
        missing.push("wrk");
    }
    let mut why = String::new();
    if !missing.is_empty() {
        let command = format!("apt-get install -y {}", missing.join(" "));
        if is_root().unwrap_or(false) {
            eprintln!("bench: installing {} for the network benchmark", missing.join(", "));
            let apt = || {
                let mut cmd = Command::new("apt-get");
                cmd.env("DEBIAN_FRONTEND", "noninteractive");
                cmd
            };
            if run(apt().args(["install", "-y"]).args(&missing)).is_err() {
                let _ = run(apt().arg("update"));
                if let Err(e) = run(apt().args(["install", "-y"]).args(&missing)) {
                    why = format!("`{command}` failed: {e:#}");
                }
            }
        } else {
            why = format!("not installed (run: sudo {command})");
        }
    }
    let nginx = if Path::new(NGINX).is_file() { Ok(PathBuf::from(NGINX)) } else { Err(format!("{NGINX} {why}")) };
    let wrk = wrk().ok_or_else(|| format!("wrk {why}"));
    (nginx, wrk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        let mut elf = vec![0u8; 0x40 + 2 * 0x38];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 0x40; // phoff
        elf[0x36] = 0x38; // phentsize
        elf[0x38] = 2; // phnum
        elf[0x40] = 1; // PT_LOAD
        elf[0x40 + 0x38] = 6; // PT_PHDR
        assert!(static_elf(&elf));
        elf[0x40 + 0x38] = 3; // PT_INTERP
        assert!(!static_elf(&elf));
        assert!(!static_elf(b"#!/bin/sh"));
        elf[0x38] = 200; // headers beyond the file
        assert!(!static_elf(&elf));
    }
}
