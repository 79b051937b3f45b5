//! The `cargo xtask` command line.
#![forbid(unsafe_code)]

mod fuzz;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::{Accel, ManifestSource, RunConfig};

/// Build, boot and test the hypervisor and its guests.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the hypervisor ELF (target/hv/.../release/hypervisor).
    Build,
    /// Build apps under apps/ into Hermit images (target/guests/<app>.hermit).
    BuildApp {
        /// App names (directories under apps/).
        #[arg(required = true)]
        apps: Vec<String>,
    },
    /// Boot the hypervisor and a manifest of guests under QEMU.
    Run(RunArgs),
    /// Benchmark the hypervisor against a Linux peer VM on the same QEMU machine.
    Bench(xtask::bench::BenchArgs),
    /// Fuzz the parsers of guest- and tenant-supplied bytes with libFuzzer (see fuzz/README.md).
    Fuzz(fuzz::FuzzArgs),
    /// Run the host tests and the QEMU integration tests (`cargo test`).
    Test {
        /// Arguments for `cargo test`, e.g. `-- -p xtask -- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
#[command(
    after_help = "Without --manifest, boots three `hello` guests and an `echo` guest on 127.0.0.1:8007. A manifest lists guests:\n\n  \
    [[guest]]\n  name = \"hello\"      # instances are hello-0, hello-1, ...\n  \
    app = \"hello\"       # a directory under apps/, or: image = \"path/to/x.hermit\"\n  \
    count = 3           # default 1\n  memory = \"2 MiB\"    # per instance, default 2 MiB\n  \
    args = [\"a\", \"b\"]   # default []"
)]
struct RunArgs {
    /// Manifest (TOML) of the guests to boot.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Power off when the last guest is gone (instead of idling).
    #[arg(long)]
    exit_when_idle: bool,
    /// QEMU accelerator; auto picks kvm only if the CPU has vmx/svm.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Number of CPUs (the hypervisor drives up to 16).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    smp: u32,
    /// Machine memory, e.g. 512M or 1 GiB.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// Stop QEMU (and fail) after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Start paused, with QEMU's gdbstub on 127.0.0.1:PORT, and print how
    /// to attach gdb to the hypervisor and to the guests.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "1234")]
    gdb: Option<u16>,
}

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    fn run(self) -> Result<()> {
        match self {
            Command::Build => println!("{}", xtask::build_hypervisor()?.display()),
            Command::BuildApp { apps } => {
                let names: Vec<&str> = apps.iter().map(String::as_str).collect();
                for path in xtask::build_apps(&names)? {
                    println!("{}", path.display());
                }
            }
            Command::Run(args) => {
                xtask::ensure_qemu()?;
                let cfg = RunConfig {
                    manifest: args
                        .manifest
                        .map_or(ManifestSource::Default, ManifestSource::File),
                    exit_when_idle: args.exit_when_idle,
                    accel: args.accel,
                    smp: args.smp,
                    memory: args.memory,
                    bundle: Some(xtask::workspace_root().join("target/run/bundle.bin")),
                    gdb: args.gdb,
                };
                let prepared = xtask::prepare(&cfg)?;
                eprintln!("{}", prepared.summary);
                xtask::run_interactive(&prepared, args.timeout.map(Duration::from_secs))?;
            }
            Command::Bench(args) => xtask::bench::run(&args)?,
            Command::Fuzz(args) => fuzz::run(&args)?,
            Command::Test { args } => {
                xtask::ensure_qemu()?;
                let start = Instant::now();
                let result = xtask::run(xtask::cargo().arg("test").args(&args));
                let secs = start.elapsed().as_secs_f64();
                match &result {
                    Ok(()) => eprintln!("xtask test: all tests passed ({secs:.1} s)"),
                    Err(_) => eprintln!("xtask test: FAILED ({secs:.1} s)"),
                }
                result?;
            }
        }
        Ok(())
    }
}
