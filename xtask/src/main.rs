//! The `cargo xtask` command line: the clap definitions and the dispatch;
//! each subcommand's work is in its file under `commands/` (or, for `bench`
//! and `lint`, in the library).
#![forbid(unsafe_code)]

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::{Accel, Boot, Chipset, Nic};

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
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        apps: Vec<String>,
        /// Instead, the guest crate in DIR, outside this workspace (built
        /// into target/ext/<name>; <name> is its package name).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
    /// Package a guest: its Hermit image, and with --oci an OCI image
    /// (layout tarball) for `ctr image import`, skopeo or a registry.
    Pkg {
        /// The app (a directory under apps/) ...
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        app: Option<String>,
        /// ... or the guest crate in DIR, outside this workspace.
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Write the OCI image layout tarball here.
        #[arg(long, value_name = "FILE")]
        oci: Option<PathBuf>,
        /// The image's reference (default localhost/hive/<app>:latest; no
        /// tag means :latest).
        #[arg(long = "ref", value_name = "NAME:TAG", requires = "oci")]
        reference: Option<String>,
        /// The guest's arguments: written into the image's hermit.toml
        /// (app_args) and the config's Cmd (default: hermit.toml's).
        #[arg(last = true, requires = "oci")]
        args: Option<Vec<String>>,
    },
    /// Boot the hypervisor and a manifest of guests under QEMU.
    Run(RunArgs),
    /// Build a bootable ISO of the hypervisor and a manifest's guests:
    /// GRUB from BIOS or UEFI, for QEMU or a real machine (a USB stick).
    Image {
        /// Manifest (TOML) of the guests to boot (default: run's).
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Write the ISO here.
        #[arg(long, value_name = "FILE")]
        iso: PathBuf,
        /// The machine's memory the manifest is checked against.
        #[arg(long, value_name = "SIZE", default_value = "512M")]
        memory: String,
    },
    /// Benchmark the hypervisor against a Linux peer VM on the same QEMU machine.
    Bench(xtask::bench::BenchArgs),
    /// Fuzz the parsers of guest- and tenant-supplied bytes with libFuzzer (see fuzz/README.md).
    Fuzz(commands::fuzz::FuzzArgs),
    /// Talk to the hypervisor that `run --detach` started.
    Ctl {
        /// The detached hypervisor's directory, as given to `run --detach
        /// --dir` (default target/run/detached).
        #[arg(long, value_name = "DIR", global = true)]
        dir: Option<PathBuf>,
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
        /// Its tenant (a vNIC in that broadcast domain): a manifest's tenant
        /// or a new one by name, or a number; none: no vNIC.
        #[arg(long)]
        tenant: Option<String>,
        /// Its memory limit, e.g. "2 MiB".
        #[arg(long, default_value = "2 MiB")]
        memory: String,
        /// CPU share relative to other guests, 1..=10000 (default 100).
        #[arg(long)]
        weight: Option<u32>,
        /// At most this percent of one CPU, 1..=100 (default: no cap).
        #[arg(long)]
        cap: Option<u32>,
        /// Frames each vNIC ring holds: a power of two, 2..=2048 (default 16).
        #[arg(long)]
        ring_slots: Option<u32>,
        /// Forward a host port (127.0.0.1, TCP) to a guest port, HOST:GUEST
        /// (repeatable); the guest goes into tenant 0, the uplink's. Removed
        /// when the guest has ended, by the next ctl.
        #[arg(long = "port", short = 'p', value_name = "HOST:GUEST")]
        port: Vec<String>,
        /// An environment variable for it, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Follow its console until it ends, and exit with its exit code
        /// (125 if the hypervisor stopped it).
        #[arg(long)]
        attach: bool,
        /// Application arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop a guest; the others keep running.
    Stop { name: String },
    /// Pause a guest: it leaves the CPUs at its next exit and stays, with
    /// its memory, until `resume` (or `stop`). Waits until it has paused.
    Pause { name: String },
    /// Let a paused guest run again.
    Resume { name: String },
    /// Make copy-on-write clones of a guest, paused first if it is not:
    /// they share its pages until they write them, and each gets its own
    /// name (NAME, or NAME-0 .. NAME-(N-1) with --count), MAC, address and
    /// fresh randomness, and goes on where the template was.
    Clone {
        template: String,
        name: String,
        #[arg(long)]
        count: Option<u32>,
        /// The clones' arguments (default: the template's).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Save a guest's state to FILE: it is paused first (and stays paused:
    /// resume or stop it), and can be restored here or on another
    /// hypervisor that has its image.
    Snapshot {
        name: String,
        /// Where to write the snapshot.
        file: PathBuf,
    },
    /// Make guest NAME from a snapshot FILE: it goes on where the saved
    /// guest was, with a new address. Its image is uploaded first if the
    /// hypervisor has not loaded it (from --image, or target/guests/).
    Restore {
        file: PathBuf,
        name: String,
        /// Its tenant (as for start; default: the snapshot's).
        #[arg(long)]
        tenant: Option<String>,
        /// The snapshot's image file, if the hypervisor may lack it and it
        /// is not in target/guests/.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Its arguments (default: the saved ones).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Forget an ended guest (its record, in `list` and for `wait`): its
    /// name and room are free again. Without it, the record stays until
    /// the room is needed for a new guest (the longest ended first).
    Rm { name: String },
    /// Wait for a guest to end; print how (JSON) and exit with its exit
    /// code (125 if the hypervisor stopped it).
    Wait { name: String },
    /// A guest's console lines and the hypervisor's lines about it.
    Logs {
        name: String,
        /// Then follow them until it ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Every guest's start and end as it happens (JSON lines, until Ctrl-C).
    Events,
    /// The images loaded: name, digest, size, guests running each.
    Images,
    /// Unload an image (by name or digest) that no guest runs.
    ImageRm { image: String },
    /// The tenants: name, number, guests.
    Tenants,
    /// Serve Prometheus (OpenMetrics text) metrics on GET /metrics: per
    /// guest CPU, memory, frames, drops; per machine memory, heap, idle.
    Metrics {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
        /// Print them once and exit instead.
        #[arg(long)]
        once: bool,
    },
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
    /// The control protocol's and the guest ABI's versions, as JSON.
    Version,
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
    /// The uplink's NIC: virtio-net or an Intel 82574L (e1000e).
    #[arg(long, value_enum, default_value_t = Nic::Virtio)]
    nic: Nic,
    /// The uplink on the host's tap device NAME (made beforehand: `ip
    /// tuntap add dev NAME mode tap`) instead of QEMU's user network: no
    /// host port forwards; give the host's side 10.0.0.1/16 and reach the
    /// guests at their addresses (10.0.0.2, ...).
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// Number of CPUs (the hypervisor drives those the MADT lists with
    /// xAPIC ids up to 254, 16 without a MADT, and parks the rest).
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
    /// With --detach: the instance's files (console, control sockets) in
    /// DIR instead of target/run/detached, so that several run side by
    /// side (with different host ports); `cargo xtask ctl --dir DIR`
    /// talks to it.
    #[arg(long, value_name = "DIR", requires = "detach")]
    dir: Option<PathBuf>,
    /// Start paused, with QEMU's gdbstub on 127.0.0.1:PORT, and print how
    /// to attach gdb to the hypervisor and to the guests.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "1234")]
    gdb: Option<u16>,
    /// Isolate guests' page tables and clear CPU buffers (VERW) on every
    /// return to a guest even where the CPU does not need it (the tests
    /// run this way).
    #[arg(long)]
    force_mitigations: bool,
    /// How the machine starts the hypervisor: pvh (QEMU loads it; the
    /// fastest), bios or uefi (an ISO through the firmware and GRUB).
    #[arg(long, value_enum, default_value_t = Boot::Pvh)]
    boot: Boot,
    /// QEMU's chipset.
    #[arg(long, value_enum, default_value_t = Chipset::Pc)]
    machine: Chipset,
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
            Command::BuildApp { apps, path } => commands::build_app::run(&apps, path.as_deref())?,
            Command::Pkg { app, path, oci, reference, args } => {
                let app = match (app, path) {
                    (_, Some(dir)) => xtask::App::Path(dir),
                    (Some(name), None) => xtask::App::Workspace(name),
                    (None, None) => unreachable!("clap requires one"),
                };
                commands::pkg::run(app, oci, reference, args)?
            }
            Command::Run(args) => commands::run::run(args)?,
            Command::Image { manifest, iso, memory } => commands::run::image(manifest, &iso, memory)?,
            Command::Bench(args) => xtask::bench::run(&args)?,
            Command::Fuzz(args) => commands::fuzz::run(&args)?,
            Command::Ctl { dir, what } => commands::ctl::run(dir, what)?,
            Command::Lint => xtask::lint::lint()?,
            Command::Test { args } => commands::test::run(&args)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["cargo xtask"].iter().chain(args)).map(|c| c.command)
    }

    #[test]
    fn pkg_takes_an_app_or_a_path_and_arguments_only_with_oci() {
        let Ok(Command::Pkg { app, path, oci, reference, args }) = parse(&["pkg", "echo", "--oci", "e.tar", "--", "serve", "7"]) else {
            panic!("not parsed as pkg")
        };
        assert_eq!((app.as_deref(), path, reference), (Some("echo"), None, None));
        assert_eq!(oci, Some(PathBuf::from("e.tar")));
        assert_eq!(args, Some(vec!["serve".to_string(), "7".to_string()]));

        let Ok(Command::Pkg { app, path, .. }) = parse(&["pkg", "--path", "../svc", "--oci", "s.tar", "--ref", "r/s:1"]) else {
            panic!("not parsed as pkg")
        };
        assert_eq!((app, path), (None, Some(PathBuf::from("../svc"))));

        assert!(parse(&["pkg"]).is_err(), "neither app nor --path");
        assert!(parse(&["pkg", "hello", "--path", "d"]).is_err(), "both");
        assert!(parse(&["pkg", "hello", "--ref", "a:b"]).is_err(), "--ref without --oci");
        assert!(parse(&["pkg", "hello", "--", "x"]).is_err(), "arguments without --oci");
        assert!(parse(&["build-app"]).is_err());
        assert!(parse(&["build-app", "hello", "--path", "d"]).is_err());
        assert!(matches!(parse(&["build-app", "--path", "d"]), Ok(Command::BuildApp { apps, path: Some(_) }) if apps.is_empty()));
    }

    #[test]
    fn a_detached_run_takes_a_dir_and_ctl_talks_to_it() {
        let Ok(Command::Run(args)) = parse(&["run", "--detach", "--dir", "target/b"]) else { panic!("not parsed as run") };
        assert!(args.detach);
        assert_eq!(args.dir, Some(PathBuf::from("target/b")));
        let Ok(Command::Run(args)) = parse(&["run", "--detach"]) else { panic!("not parsed as run") };
        assert_eq!(args.dir, None, "the default directory");
        assert!(parse(&["run", "--dir", "target/b"]).is_err(), "--dir without --detach");

        // Before or after the subcommand.
        for argv in [&["ctl", "--dir", "d", "list"][..], &["ctl", "list", "--dir", "d"]] {
            let Ok(Command::Ctl { dir, what: Ctl::List { .. } }) = parse(argv) else { panic!("{argv:?} not parsed as ctl list") };
            assert_eq!(dir, Some(PathBuf::from("d")), "{argv:?}");
        }
        assert!(matches!(parse(&["ctl", "list"]), Ok(Command::Ctl { dir: None, .. })));
    }

    #[test]
    fn snapshot_takes_a_guest_and_a_file_and_restore_a_file_and_a_name() {
        let Ok(Command::Ctl { what: Ctl::Snapshot { name, file }, .. }) = parse(&["ctl", "snapshot", "c", "c.snap"]) else {
            panic!("not parsed as ctl snapshot")
        };
        assert_eq!((name.as_str(), file), ("c", PathBuf::from("c.snap")));
        assert!(parse(&["ctl", "snapshot", "c"]).is_err(), "no file");

        let Ok(Command::Ctl { dir, what: Ctl::Restore { file, name, tenant, image, .. } }) =
            parse(&["ctl", "--dir", "b", "restore", "c.snap", "c2", "--tenant", "acme"])
        else {
            panic!("not parsed as ctl restore")
        };
        assert_eq!((file, name.as_str(), tenant.as_deref(), image), (PathBuf::from("c.snap"), "c2", Some("acme"), None));
        assert_eq!(dir, Some(PathBuf::from("b")));
        let Ok(Command::Ctl { what: Ctl::Restore { tenant: None, image: Some(image), .. }, .. }) =
            parse(&["ctl", "restore", "c.snap", "c2", "--image", "w.hermit"])
        else {
            panic!("not parsed as ctl restore")
        };
        assert_eq!(image, PathBuf::from("w.hermit"));
        assert!(parse(&["ctl", "restore", "c.snap"]).is_err(), "no name");
    }
}
