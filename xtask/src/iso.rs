//! A bootable ISO of the hypervisor and a bundle: GRUB loads the
//! hypervisor by Multiboot2 with the bundle as its module, from BIOS
//! (SeaBIOS, a PC's legacy boot) or UEFI (OVMF, a server's firmware). It
//! depends on nothing on QEMU's command line: the same file boots a QEMU
//! started by hand, with either chipset and NIC, or a machine from a USB
//! stick (`dd if=hive.iso of=/dev/sdX`).

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::install;

/// Debian's packages `grub-mkrescue` needs for an ISO that boots both ways.
pub const GRUB_PACKAGES: &str = "grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools";
/// UEFI firmware for QEMU (Debian's `ovmf`).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Makes sure grub-mkrescue can build a BIOS and UEFI image.
pub fn ensure_grub() -> Result<()> {
    install::ensure(&["grub-mkrescue", "xorriso", "mformat", "/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi"], GRUB_PACKAGES)
}

/// Makes sure OVMF is installed.
pub fn ensure_ovmf() -> Result<()> {
    install::ensure(&[OVMF], "ovmf")
}

/// GRUB's configuration: no menu, no wait; GRUB stays off the serial port,
/// which is the hypervisor's console.
const GRUB_CFG: &str = "\
set timeout=0
set timeout_style=hidden
menuentry \"hive hypervisor\" {
    multiboot2 /boot/hypervisor
    module2 /boot/bundle.bin bundle
    boot
}
";

/// Builds the ISO `out` from the hypervisor ELF and a bundle.
pub fn build(kernel: &Path, bundle: &Path, out: &Path) -> Result<()> {
    ensure_grub()?;
    let stage = out.with_extension("iso.d");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("boot/grub"))?;
    fs::copy(kernel, stage.join("boot/hypervisor")).with_context(|| format!("copying {}", kernel.display()))?;
    fs::copy(bundle, stage.join("boot/bundle.bin")).with_context(|| format!("copying {}", bundle.display()))?;
    fs::write(stage.join("boot/grub/grub.cfg"), GRUB_CFG)?;
    let tmp = out.with_extension("iso.tmp");
    let mut cmd = Command::new("grub-mkrescue");
    cmd.arg("-o").arg(&tmp).arg(&stage);
    crate::echo(&cmd);
    let output = cmd.output().context("running grub-mkrescue")?;
    let _ = fs::remove_dir_all(&stage);
    if !output.status.success() {
        bail!("grub-mkrescue failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
