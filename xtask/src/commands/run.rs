//! `cargo xtask run`: boot the hypervisor and a manifest of guests under
//! QEMU, with the console here (or detached, for `ctl`).

use std::time::Duration;

use anyhow::Result;
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
        nic: args.nic,
    };
    if args.detach {
        let dir = xtask::ctl::default_dir();
        std::fs::create_dir_all(&dir)?;
        let cfg = RunConfig { bundle: Some(dir.join("bundle.bin")), detach: Some(dir.clone()), ..cfg };
        let prepared = xtask::prepare(&cfg)?;
        eprintln!("{}", prepared.summary);
        let inst = xtask::ctl::detach(&prepared, &dir)?;
        println!(
            "detached: QEMU pid {}, console {}; `cargo xtask ctl list|stats|top|stop NAME|logs NAME|shutdown`",
            inst.pid,
            inst.console().display()
        );
        return Ok(());
    }
    let prepared = xtask::prepare(&cfg)?;
    eprintln!("{}", prepared.summary);
    xtask::run_interactive(&prepared, args.timeout.map(Duration::from_secs))
}
