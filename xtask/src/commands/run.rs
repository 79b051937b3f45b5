//! `cargo xtask run`: boot the hypervisor and a manifest of guests under
//! QEMU, with the console here (or detached, for `ctl`).

use std::time::Duration;

use anyhow::{Context as _, Result};
use xtask::{ManifestSource, RunConfig};

use crate::RunArgs;

/// Runs `args`: in the foreground until QEMU ends (or `--timeout`), or
/// detached.
pub fn run(args: RunArgs) -> Result<()> {
    xtask::ensure_qemu()?;
    let cfg = RunConfig {
        manifest: args.manifest.map_or(ManifestSource::Default, ManifestSource::File),
        exit_when_idle: args.exit_when_idle,
        accel: args.accel,
        smp: args.smp,
        memory: args.memory,
        bundle: Some(xtask::workspace_root().join("target/run/bundle.bin")),
        gdb: args.gdb,
        detach: None,
        force_mitigations: args.force_mitigations,
        boot: args.boot,
        machine: args.machine,
        nic: args.nic,
        tap: args.tap,
        prealloc: false,
    };
    if args.detach {
        let dir = match args.dir {
            Some(d) => std::path::absolute(&d).with_context(|| format!("--dir {}", d.display()))?,
            None => xtask::ctl::default_dir(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg = RunConfig { bundle: Some(dir.join("bundle.bin")), detach: Some(dir.clone()), ..cfg };
        let prepared = xtask::prepare(&cfg)?;
        eprintln!("{}", prepared.summary);
        let inst = xtask::ctl::detach(&prepared, &dir)?;
        println!(
            "detached: QEMU pid {}, console {}; `{} list|stats|top|stop NAME|logs NAME|shutdown`",
            inst.pid,
            inst.console().display(),
            xtask::ctl::ctl_command(&dir)
        );
        return Ok(());
    }
    let prepared = xtask::prepare(&cfg)?;
    eprintln!("{}", prepared.summary);
    xtask::run_interactive(&prepared, args.timeout.map(Duration::from_secs))
}

/// `cargo xtask image`: the hypervisor and `manifest`'s guests as a
/// bootable ISO at `iso`.
pub fn image(manifest: Option<std::path::PathBuf>, iso: &std::path::Path, memory: String) -> Result<()> {
    let cfg = RunConfig { manifest: manifest.map_or(ManifestSource::Default, ManifestSource::File), memory, ..RunConfig::default() };
    let prepared = xtask::prepare(&cfg)?;
    xtask::iso::build(&prepared.kernel, &prepared.bundle, iso)?;
    let size = std::fs::metadata(iso)?.len();
    println!(
        "{}: {} KiB, boots from BIOS or UEFI (GRUB, Multiboot2); in QEMU:\n  \
         qemu-system-x86_64 -machine q35 -m 512M -smp 2 -serial stdio -display none -cdrom {} \\\n    \
         -netdev user,id=n,net=10.0.0.0/16,host=10.0.0.1,hostfwd=tcp:127.0.0.1:8007-10.0.0.2:7 -device e1000e,netdev=n\n\
         (add -bios {} for UEFI); on a machine: write it to a USB stick (dd) and boot it, console on COM1",
        iso.display(),
        size >> 10,
        iso.display(),
        xtask::iso::OVMF
    );
    Ok(())
}
