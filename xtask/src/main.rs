//! The `cargo xtask` command line.
#![forbid(unsafe_code)]

mod fuzz;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
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
    /// Talk to the hypervisor that `run --detach` started.
    Ctl {
        #[command(subcommand)]
        what: Ctl,
    },
    /// Check formatting and run clippy (-D warnings) on every crate, host and freestanding.
    Lint,
    /// Run the host tests and the QEMU integration tests (`cargo test`).
    Test {
        /// Arguments for `cargo test`, e.g. `-- -p xtask -- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Every guest: name, tenant, state, CPU, memory, frames sent and received.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Per-guest accounting (CPU, memory, NIC, limits) and the machine's, as JSON.
    Stats,
    /// The list, refreshed every second (COUNT times; default until Ctrl-C).
    Top {
        #[arg(long, value_name = "COUNT")]
        count: Option<u32>,
    },
    /// Start a guest on the running hypervisor.
    Start {
        /// Its name (unique; [a-z0-9_-]).
        name: String,
        /// An app under apps/ (built as for run) ...
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        app: Option<String>,
        /// ... or a Hermit image file.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Its tenant (a vNIC in that broadcast domain); none: no vNIC.
        #[arg(long)]
        tenant: Option<String>,
        /// Its memory limit, e.g. "2 MiB".
        #[arg(long, default_value = "2 MiB")]
        memory: String,
        /// Application arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop a guest; the others keep running.
    Stop { name: String },
    /// A guest's console lines and the hypervisor's lines about it.
    Logs { name: String },
    /// Capture frames of a guest (sent and received) or of `tenant:N`
    /// (sent by its guests, and the host's for tenant 0) into a pcap file.
    Capture {
        what: String,
        /// Where to write the pcap.
        #[arg(short, long, value_name = "FILE")]
        write: PathBuf,
        /// Stop after this many frames.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Stop the detached hypervisor (QEMU).
    Shutdown,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(clap::Args)]
#[command(
    after_help = "Without --manifest, boots three `hello` guests and an `echo` guest on 127.0.0.1:8007 (TCP). A manifest lists guests:\n\n  \
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
    /// Number of CPUs (the hypervisor drives up to 16 and parks the rest).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=xtask::MAX_SMP as i64))]
    smp: u32,
    /// Machine memory, e.g. 512M or 1 GiB.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// Stop QEMU (and fail) after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Run in the background (console in target/run/detached/console.log);
    /// then use `cargo xtask ctl`.
    #[arg(long, conflicts_with_all = ["exit_when_idle", "gdb", "timeout"])]
    detach: bool,
    /// Start paused, with QEMU's gdbstub on 127.0.0.1:PORT, and print how
    /// to attach gdb to the hypervisor and to the guests.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "1234")]
    gdb: Option<u16>,
    /// Isolate guests' page tables and clear CPU buffers (VERW) on every
    /// return to a guest even where the CPU does not need it (the tests
    /// run this way).
    #[arg(long)]
    force_mitigations: bool,
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
                    manifest: args.manifest.map_or(ManifestSource::Default, ManifestSource::File),
                    exit_when_idle: args.exit_when_idle,
                    accel: args.accel,
                    smp: args.smp,
                    memory: args.memory,
                    bundle: Some(xtask::workspace_root().join("target/run/bundle.bin")),
                    gdb: args.gdb,
                    detach: None,
                    force_mitigations: args.force_mitigations,
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
                xtask::run_interactive(&prepared, args.timeout.map(Duration::from_secs))?;
            }
            Command::Bench(args) => xtask::bench::run(&args)?,
            Command::Fuzz(args) => fuzz::run(&args)?,
            Command::Ctl { what } => {
                let inst = xtask::ctl::Instance::open(&xtask::ctl::default_dir())?;
                match what {
                    Ctl::List { output: Format::Json } => println!("{}", inst.request("list")?),
                    Ctl::List { output: Format::Table } => print!("{}", xtask::ctl::table(&inst.request("list")?)),
                    Ctl::Stats => println!("{}", inst.request("stats")?),
                    Ctl::Top { count } => {
                        for i in 0.. {
                            if count.is_some_and(|c| i >= c) {
                                break;
                            }
                            let t = xtask::ctl::table(&inst.request("list")?);
                            // Clear the screen and home the cursor, then the table.
                            print!("\x1b[2J\x1b[H{t}");
                            std::io::Write::flush(&mut std::io::stdout())?;
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    Ctl::Start { name, app, image, tenant, memory, args } => {
                        let memory = xtask::manifest::parse_size(&memory).map_err(|e| anyhow::anyhow!("--memory {memory:?}: {e}"))?;
                        let (image, elf) = match (app, image) {
                            (Some(app), _) => (xtask::build_apps(&[app.as_str()])?.remove(0), Some(xtask::app_elf(&app))),
                            (None, Some(image)) => (image, None),
                            (None, None) => anyhow::bail!("--app or --image"),
                        };
                        let tenant = tenant.map(|t| inst.tenant(&t)).transpose()?;
                        println!("{}", inst.start(&name, &image, elf.as_deref(), memory, tenant, &args)?);
                    }
                    Ctl::Stop { name } => println!("{}", inst.request(&format!("stop {name}"))?),
                    Ctl::Logs { name } => print!("{}", xtask::ctl::logs(&inst, &name)?),
                    Ctl::Capture { what, write, count, seconds } => {
                        let (frames, dropped) = inst.capture(&what, count, seconds)?;
                        std::fs::write(&write, xtask::ctl::pcap(&frames)).with_context(|| format!("writing {}", write.display()))?;
                        eprintln!("{} frames of {what} written to {} ({dropped} dropped)", frames.len(), write.display());
                    }
                    Ctl::Shutdown => inst.shutdown()?,
                }
            }
            Command::Lint => xtask::lint::lint()?,
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
