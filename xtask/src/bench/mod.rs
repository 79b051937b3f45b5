//! `cargo xtask bench hypercall|boot|net|density|latency`: our hypervisor and a Linux peer VM
//! ([`crate::linux`]) measured in the same invocation, on the same QEMU
//! machine (`-machine pc -cpu max -accel A -smp N -m M`). Each prints a
//! table and writes `target/bench/<name>.json`.
//!
//! - `hypercall`: the cost of a null call. Ours: `apps/bench hypercall N`
//!   (`nop` hypercalls timed with rdtsc in the guest). Linux:
//!   `peer getppid N` (the same loop around `syscall(SYS_getppid)`). Both
//!   report the median over rounds of N calls, in TSC cycles.
//! - `boot`: how fast guests start. Ours: 1, 100 and 1000 guests of
//!   `apps/bench first`, each timed by the hypervisor's `guest_stats`
//!   (`created_ns`, `first_entry_ns`). Linux: fork + exec + wait of a static
//!   binary (`peer spawn K`).
//! - `net`: echo round trips/s, bulk TCP MB/s, HTTP requests/s, the
//!   switch's ceiling with raw frames, and the host's wrk (requests/s, p99,
//!   max) ([`NetSettings`]). Ours: `apps/echo-bench` → `apps/echo` (echo,
//!   `bulk` → `sink`, `raw-send` → `raw-sink`) and `apps/http-load` →
//!   `apps/http` in one tenant (a boot each, stopped once its load guest is
//!   done), `apps/bench memcpy` as the switch's yardstick, the host's
//!   `wrk` through the forwarded port, and (as root) through a tap device
//!   that is the uplink ([`crate::tap`]). Linux: one boot whose `/init` runs
//!   `peer echo-client` → `peer echo-server`, `peer bulk-send` → `peer
//!   bulk-sink` and `peer http-load` → nginx over `lo`, then serves the
//!   host's `wrk` on `eth0` and, on a tap, `eth1`
//!   ([`linux::net_init_script`]). A part that
//!   cannot run is reported as not measured, with the reason, and the rest
//!   still runs.
//!
//! - `latency`: how late a 1 ms sleeper wakes beside 2 spinners per CPU,
//!   and echo round-trip p99 alone and beside them. Ours: `apps/bench
//!   sleep-lateness` and `spin`, `bench net`'s echo pair. Linux: `peer
//!   spinning K sleep-lateness ...` and `peer echo-pair` (see [`latency`]).
//!
//! - `hosting`: one HTTP request to each of 10,000 `apps/http` guests in
//!   one tenant in turn (a new connection each), three rounds, against as
//!   many to one guest; ours only. See [`hosting`].
//!
//! - `density`: idle echo guests per GiB of machine, bytes and start time
//!   per guest, the idle machine's CPU, memory back after creating and
//!   destroying 10,000 guests; Linux: idle busybox `nc` echo processes
//!   (`peer density N`). See [`density`].
//!
//! One file per benchmark ([`hypercall`], [`boot`], [`net`] with its
//! Linux side [`net_linux`] and the host's [`wrk`], [`density`],
//! [`latency`]); the
//! console parsing in [`console`] and the report's common parts in
//! [`report`] are host-tested there. Both machines boot through the one QEMU
//! runner ([`crate::runner`]).

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::linux::{self, Kernel, Machine};
use crate::manifest::{Guest, KIB, MIB, Manifest, parse_size};
use crate::qemu::{Accel, ManifestSource, RunConfig, prepare, run_captured};
use crate::runner::{Reply, RunOutput};
use crate::workspace_root;

mod boot;
pub mod console;
mod density;
mod host_load;
mod hosting;
mod hypercall;
mod latency;
mod net;
mod net_linux;
mod net_stream;
pub mod report;
mod wrk;

pub use abi::report::GuestStats;
pub use boot::{BootFigures, boot_figures};
pub use console::{GUEST_LINE_MAX, GuestLines, guest_json, guest_mains, guest_stats, json_lines, machine_stats, tsc_ghz};
use console::{guest_ended, parse_json};
pub use latency::LatencySettings;
pub use net::{Measured, NetSettings};
use net::{NetSide, describe_result};
use report::{build_info, qemu_version, round_floats};
pub use report::{iso_date, median, report_path};
pub use wrk::parse_wrk;

/// Which benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Null hypercall vs. Linux's getppid system call, in TSC cycles.
    Hypercall,
    /// Guests started per second and start latency vs. Linux fork+exec.
    Boot,
    /// Echo round trips/s, bulk TCP MB/s and HTTP requests/s guest to
    /// guest, and the host's wrk, vs. a Linux VM over its loopback and
    /// through its NIC; the switch's raw-frame ceiling vs. memcpy.
    Net,
    /// Idle echo guests per GiB, bytes and start time per guest, idle CPU,
    /// memory back after create/destroy, vs. idle busybox nc processes.
    Density,
    /// Lateness of a 1 ms sleeper beside 2 spinners per CPU, and echo
    /// round-trip p99 alone and beside them, vs. a Linux VM.
    Latency,
    /// One HTTP request to each of 10,000 http guests in one tenant, a new
    /// connection each, three rounds, vs. as many to one guest (no Linux side).
    Hosting,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Hypercall => "hypercall",
            Which::Boot => "boot",
            Which::Net => "net",
            Which::Density => "density",
            Which::Latency => "latency",
            Which::Hosting => "hosting",
        }
    }
}

/// `cargo xtask bench` arguments.
#[derive(Clone, Debug, clap::Args)]
#[command(after_help = "Both sides run under the same QEMU settings; results go to \
    target/bench/<name>.json. Under TCG expect a few percent of noise between runs.")]
pub struct BenchArgs {
    /// The benchmark.
    #[arg(value_enum)]
    pub which: Which,
    /// A short run (seconds, fewer iterations), e.g. for checking that it works.
    #[arg(long)]
    pub quick: bool,
    /// QEMU accelerator for both sides; auto picks kvm only if the CPU has vmx/svm.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Number of CPUs for both sides.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub smp: u32,
    /// Machine memory for both sides, e.g. 512M or 1 GiB.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,
    /// Extra Linux kernel arguments (e.g. "mitigations=off"), after the
    /// default `console=ttyS0 quiet panic=-1`.
    #[arg(long, value_name = "ARGS")]
    pub linux_append: Option<String>,
}

/// Runs the benchmark `args` names.
pub fn run(args: &BenchArgs) -> Result<()> {
    let memory = parse_size(&args.memory).map_err(|e| anyhow::anyhow!("--memory {:?}: {e}", args.memory))?;
    if !memory.is_multiple_of(MIB) || memory < 64 * MIB {
        bail!("--memory {:?}: must be whole MiB and at least 64 MiB", args.memory);
    }
    let machine = Machine { accel: args.accel.resolve(), smp: args.smp, memory_mib: memory / MIB };
    crate::qemu::ensure_qemu()?;
    if args.which != Which::Hosting {
        linux::ensure_packages()?;
    }
    let append = match &args.linux_append {
        Some(extra) => format!("{} {extra}", linux::CMDLINE),
        None => linux::CMDLINE.to_string(),
    };
    let bench = Bench { machine, quick: args.quick, append };
    progress(&format!("bench {} ({}){}", args.which.name(), machine.describe(), if args.quick { ", quick" } else { "" }));
    let (table, report) = match args.which {
        Which::Hypercall => bench.hypercall()?,
        Which::Boot => bench.boot()?,
        Which::Net => bench.net()?,
        Which::Density => bench.density()?,
        Which::Latency => bench.latency()?,
        Which::Hosting => bench.hosting()?,
    };
    let path = report_path(args.which);
    fs::create_dir_all(path.parent().unwrap()).context("creating target/bench")?;
    let mut report = report;
    round_floats(&mut report);
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("{table}");
    progress(&format!("wrote {}", path.display()));
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

struct Bench {
    machine: Machine,
    quick: bool,
    /// The Linux kernel command line.
    append: String,
}

/// Our side of one measurement.
struct Ours {
    qemu_args: Vec<String>,
    out: RunOutput,
    wall: Duration,
}

/// The Linux side of one measurement.
struct Peer {
    kernel: Kernel,
    qemu_args: Vec<String>,
    /// The `{"peer":"up",...}` line.
    up: Value,
    /// The `{"bench":...}` lines.
    results: Vec<Value>,
    wall: Duration,
}

impl Peer {
    fn result(&self, bench: &str) -> Result<&Value> {
        self.results.iter().find(|v| v["bench"] == bench).with_context(|| format!("the Linux peer printed no {bench} result"))
    }
}

impl Bench {
    /// Our hypervisor with `manifest` on this bench's machine settings.
    fn run_config(&self, manifest: Manifest, exit_when_idle: bool) -> RunConfig {
        RunConfig {
            manifest: ManifestSource::Built(manifest),
            exit_when_idle,
            accel: self.machine.accel,
            smp: self.machine.smp,
            memory: format!("{}M", self.machine.memory_mib),
            bundle: None,
            gdb: None,
            detach: None,
            // Measure what this CPU needs, no more.
            force_mitigations: false,
            prealloc: true,
            ..RunConfig::default()
        }
    }

    /// Boots our hypervisor with `manifest` and waits (at most `timeout`)
    /// until every guest is gone.
    fn ours(&self, what: &str, manifest: Manifest, timeout: Duration) -> Result<Ours> {
        let cfg = self.run_config(manifest, true);
        let prepared = prepare(&cfg)?;
        progress(&format!("booting our hypervisor: {what}…"));
        let start = Instant::now();
        let out = run_captured(&prepared, timeout)?;
        let wall = start.elapsed();
        if !out.success() {
            let tail: Vec<&str> = out.console.lines().rev().take(30).collect();
            let why = if out.timed_out {
                format!("did not finish within {} s", timeout.as_secs())
            } else {
                format!("QEMU exited with status {:?}", out.status)
            };
            bail!("our hypervisor {why}\n{}{}", out.stderr, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        progress(&format!("  ours finished in {:.1} s", wall.as_secs_f64()));
        Ok(Ours { qemu_args: prepared.qemu_args.clone(), out, wall })
    }

    /// Boots the Linux peer running `peer COMMAND` for each command.
    fn linux(&self, commands: &[String], timeout: Duration) -> Result<Peer> {
        let kernel = Kernel::find()?;
        let program = linux::build_peer_program()?;
        let initrd = workspace_root().join("target/bench/peer.cpio.gz");
        let image = linux::initramfs(&linux::init_script(commands), &program)?;
        fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
        let qemu_args = linux::qemu_args(&self.machine, &kernel.image, &initrd, &self.append);
        progress(&format!("booting Linux peer {} ({} KiB initramfs)…", kernel.version, image.len() / 1024));
        let console = linux::boot(&qemu_args, timeout, |t, line| {
            let Some(v) = parse_json(line) else { return };
            if v["peer"] == "up" {
                progress(&format!("  Linux reached /init after {:.1} s; running {}…", t.as_secs_f64(), commands.join(", ")));
            } else if v.get("bench").is_some() || v["peer"] == "failed" {
                progress(&format!("  linux: {line}"));
            }
        })?;
        let text = console.console.clone();
        let lines = json_lines(&text);
        let up = lines.iter().find(|(_, v)| v["peer"] == "up").map(|(_, v)| v.clone());
        let done = lines.iter().any(|(_, v)| v["peer"] == "done" && v["status"] == 16);
        let ok = done && console.status == Some(abi::debug_exit::qemu_status(abi::debug_exit::SUCCESS));
        let Some(up) = up.filter(|_| ok) else {
            let why = if console.timed_out {
                format!("did not finish within {} s", timeout.as_secs())
            } else {
                format!("ended with QEMU status {:?}", console.status)
            };
            bail!("the Linux peer {why}\n{}{}", console.stderr, console.tail(30));
        };
        progress(&format!("  Linux finished in {:.1} s", console.elapsed.as_secs_f64()));
        Ok(Peer {
            kernel,
            qemu_args,
            up,
            results: lines.into_iter().filter(|(_, v)| v.get("bench").is_some()).map(|(_, v)| v).collect(),
            wall: console.elapsed,
        })
    }

    fn header(&self, name: &str) -> String {
        format!("bench {name} ({})", self.machine.describe())
    }

    fn machine_json(&self) -> Value {
        json!({
            "accel": self.machine.accel.as_str(),
            "smp": self.machine.smp,
            "memory_mib": self.machine.memory_mib,
            "cpu": "max",
            "qemu": qemu_version(),
            "host_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    }

    fn report(&self, name: &str, ours_args: &[String], linux: &Peer) -> Value {
        json!({
            "bench": name,
            "date": iso_date(SystemTime::now()),
            "quick": self.quick,
            "machine": self.machine_json(),
            "ours_build": build_info(),
            "qemu_args": { "ours": ours_args, "linux": linux.qemu_args },
            "linux_kernel": {
                "version": linux.kernel.version,
                "cmdline": self.append,
                "meltdown": linux.up["meltdown"],
                "tsc_mhz": linux.up["tsc_mhz"],
                "init_after_s": linux.up["uptime_s"],
                "wall_s": linux.wall.as_secs_f64(),
            },
        })
    }

    /// Boots our hypervisor with `manifest` (not exiting when idle) and
    /// feeds each console line to `on_line` until it says stop, QEMU ends,
    /// or `timeout`. Returns QEMU's arguments and the console.
    fn ours_live(
        &self,
        what: &str,
        manifest: Manifest,
        timeout: Duration,
        on_line: impl FnMut(&str) -> Reply,
    ) -> Result<(Vec<String>, RunOutput)> {
        self.ours_live_with(what, manifest, timeout, |_| {}, on_line)
    }

    /// [`Self::ours_live`] with the machine's settings changed by `set`.
    fn ours_live_with(
        &self,
        what: &str,
        manifest: Manifest,
        timeout: Duration,
        set: impl FnOnce(&mut RunConfig),
        mut on_line: impl FnMut(&str) -> Reply,
    ) -> Result<(Vec<String>, RunOutput)> {
        let mut cfg = self.run_config(manifest, false);
        set(&mut cfg);
        let prepared = prepare(&cfg)?;
        progress(&format!("booting our hypervisor: {what}…"));
        let console = linux::boot_interactive(&prepared.qemu_args, timeout, |_, l| on_line(l))?;
        progress(&format!("  ours done after {:.1} s", console.elapsed.as_secs_f64()));
        Ok((prepared.qemu_args.clone(), console))
    }
}
