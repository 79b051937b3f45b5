//! `cargo xtask bench hypercall|boot|net|density`: our hypervisor and a Linux peer VM
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
//! - `net`: echo round trips/s and HTTP requests/s ([`NetSettings`]). Ours:
//!   `apps/echo-bench` → `apps/echo` and `apps/http-load` → `apps/http` in
//!   one tenant (two boots, each stopped once its load guest is done), and
//!   the host's `wrk` through the forwarded port. Linux: one boot whose
//!   `/init` runs `peer echo-client` → `peer echo-server` and `peer
//!   http-load` → nginx over `lo`, then serves the host's `wrk` on `eth0`
//!   ([`linux::net_init_script`]). A part that cannot run is reported as
//!   not measured, with the reason, and the rest still runs.
//!
//! - `density`: idle echo guests per GiB of machine, bytes and start time
//!   per guest, the idle machine's CPU, memory back after creating and
//!   destroying 10,000 guests; Linux: idle busybox `nc` echo processes
//!   (`peer density N`). See [`density`].
//!
//! The console parsing ([`json_lines`], [`guest_stats`], [`boot_figures`],
//! [`GuestLines`], [`parse_wrk`]) is host-tested below.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use abi::report::{GUEST_STATS_PREFIX, GuestStats};
use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::linux::{self, Kernel, Machine};
use crate::manifest::{MIB, parse_size};
use crate::qemu::{Accel, ManifestSource, QEMU, RunConfig, RunOutput, prepare, run_captured};
use crate::workspace_root;

mod density;

/// Which benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Null hypercall vs. Linux's getppid system call, in TSC cycles.
    Hypercall,
    /// Guests started per second and start latency vs. Linux fork+exec.
    Boot,
    /// Echo round trips/s and HTTP requests/s, guest to guest and from the
    /// host, vs. a Linux VM over its loopback and through its NIC.
    Net,
    /// Idle echo guests per GiB, bytes and start time per guest, idle CPU,
    /// memory back after create/destroy, vs. idle busybox nc processes.
    Density,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Hypercall => "hypercall",
            Which::Boot => "boot",
            Which::Net => "net",
            Which::Density => "density",
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
    linux::ensure_packages()?;
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
    fn run_config(&self, manifest: String, exit_when_idle: bool) -> RunConfig {
        RunConfig {
            manifest: ManifestSource::Text { text: manifest, base_dir: workspace_root().to_path_buf() },
            exit_when_idle,
            accel: self.machine.accel,
            smp: self.machine.smp,
            memory: format!("{}M", self.machine.memory_mib),
            bundle: None,
            gdb: None,
            detach: None,
            // Measure what this CPU needs, no more.
            force_mitigations: false,
        }
    }

    /// Boots our hypervisor with `manifest` and waits (at most `timeout`)
    /// until every guest is gone.
    fn ours(&self, what: &str, manifest: String, timeout: Duration) -> Result<Ours> {
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
        let text = console.text();
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

    fn hypercall(&self) -> Result<(String, Value)> {
        let (n, rounds) = if self.quick { (20_000, 3) } else { (200_000, 7) };
        let manifest = format!("[[guest]]\nname = \"b\"\napp = \"bench\"\nargs = [\"hypercall\", \"{n}\", \"{rounds}\"]\n");
        let ours = self.ours(&format!("bench hypercall {n} × {rounds} rounds"), manifest, Duration::from_secs(180))?;
        let ghz = tsc_ghz(&ours.out.console).context("no `[hv] TSC x.xxx GHz` line")?;
        let ours_v = json_lines(&ours.out.console)
            .into_iter()
            .find(|(who, v)| *who == Some("b-0") && v["bench"] == "hypercall")
            .map(|(_, v)| v)
            .context("apps/bench printed no hypercall result")?;
        let linux = self.linux(&[format!("getppid {n} {rounds}")], Duration::from_secs(300))?;
        let linux_v = linux.result("getppid")?;

        let get = |v: &Value, k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        let (ours_c, linux_c) = (get(&ours_v, "cycles_per_call")?, get(linux_v, "cycles_per_call")?);
        let (ours_min, linux_min) = (get(&ours_v, "min_cycles_per_call")?, get(linux_v, "min_cycles_per_call")?);
        let ratio = ours_c / linux_c;

        let mut t = self.header("hypercall");
        t += "\n                           ours      linux    ratio\n";
        let _ = writeln!(t, "null call (cycles)   {ours_c:>10.1} {linux_c:>10.1}   {ratio:>5.2}x   goal <= 0.5x");
        let _ = writeln!(t, "best round (cycles)  {ours_min:>10.1} {linux_min:>10.1}   {:>5.2}x", ours_min / linux_min);
        let _ = write!(
            t,
            "null call (ns)       {:>10.0} {:>10.0}            at {ghz:.3} GHz\n\
             (median of {rounds} rounds of {n} calls; ours: nop hypercall, linux: syscall(SYS_getppid))",
            ours_c / ghz,
            linux_c / ghz
        );

        let mut report = self.report("hypercall", &ours.qemu_args, &linux);
        report["method"] = json!(format!(
            "warm-up of max(N/10, 1000) calls, then {rounds} rounds of N = {n} calls timed with rdtsc; \
             cycles_per_call is the median over the rounds, min_cycles_per_call the best round"
        ));
        report["tsc_ghz"] = json!(ghz);
        report["ours"] = json!({
            "call": "nop hypercall (abi::Hypercall::Nop)",
            "iterations": n,
            "rounds": rounds,
            "cycles_per_call": ours_c,
            "min_cycles_per_call": ours_min,
            "round_cycles_per_call": ours_v["round_cycles_per_call"],
            "ns_per_call": ours_c / ghz,
            "wall_s": ours.wall.as_secs_f64(),
        });
        report["linux"] = json!({
            "call": "syscall(SYS_getppid)",
            "iterations": n,
            "rounds": rounds,
            "cycles_per_call": linux_c,
            "min_cycles_per_call": linux_min,
            "round_cycles_per_call": linux_v["round_cycles_per_call"],
            "ns_per_call": linux_c / ghz,
        });
        report["ratio"] = json!(ratio);
        report["goal"] = json!({ "ratio_at_most": 0.5, "met": ratio <= 0.5 });
        Ok((t, report))
    }

    fn boot(&self) -> Result<(String, Value)> {
        let (counts, spawns): (&[u32], u32) = if self.quick { (&[1, 10, 100], 50) } else { (&[1, 100, 1000], 1000) };
        let mut ours = Vec::new();
        let mut ours_args = Vec::new();
        for &count in counts {
            let manifest = format!("[[guest]]\nname = \"b\"\napp = \"bench\"\ncount = {count}\nmemory = \"256 KiB\"\nargs = [\"first\"]\n");
            let guests = if count == 1 { "guest" } else { "guests" };
            let run = self.ours(&format!("{count} {guests} of bench first"), manifest, Duration::from_secs(120 + u64::from(count) / 4))?;
            let stats = guest_stats(&run.out.console);
            let mains = guest_mains(&run.out.console);
            let fig = boot_figures(&stats, &mains).with_context(|| format!("no guest_stats lines in the {count}-guest run"))?;
            if fig.guests != count as usize {
                bail!("{count} guests asked, {} reported stats", fig.guests);
            }
            ours_args = run.qemu_args.clone();
            ours.push((fig, run.wall));
        }
        let linux = self.linux(&[format!("spawn {spawns}")], Duration::from_secs(300))?;
        let spawn = linux.result("spawn")?;
        let get = |k: &str| spawn[k].as_f64().with_context(|| format!("no {k} in {spawn}"));
        let (linux_med, linux_rate) = (get("median_us")?, get("spawns_per_sec")?);

        let mut t = self.header("boot");
        t += "\n                         started/s   all entered   median start     per guest\n";
        let opt = |v: Option<f64>| v.map_or(format!("{:>9}", "-"), |v| format!("{v:>9.0}"));
        for (f, _) in &ours {
            let label = format!("ours, {} guest{}", f.guests, if f.guests == 1 { "" } else { "s" });
            let _ = writeln!(
                t,
                "{label:<23}  {}  {:>9.2} ms  {:>10.1} µs  {:>9.1} µs",
                opt(f.started_per_sec),
                f.span_ns / 1e6,
                f.median_start_ns / 1e3,
                f.per_guest_ns() / 1e3
            );
        }
        let linux_per = 1e6 / linux_rate;
        let _ = writeln!(
            t,
            "{:<23}  {linux_rate:>9.0}  {:>12}  {linux_med:>10.1} µs  {linux_per:>9.1} µs",
            format!("linux fork+exec ×{spawns}"),
            "-"
        );
        let last = ours.last().map(|(f, _)| f).expect("counts is not empty");
        let first = &ours[0].0;
        let rate_ratio = last.started_per_sec.map(|r| r / linux_rate);
        let per_ratio = last.per_guest_ns() / 1e3 / linux_per;
        let start_ratio = first.median_start_ns / 1e3 / linux_med;
        let _ = write!(
            t,
            "ours/linux: started/s ({n} guests) {}, per guest ({n} guests) {per_ratio:.2}x, \
             median start (1 guest) {start_ratio:.2}x\n\
             ours: started/s = guests / (last created_ns - first created_ns), all entered = first \
             created_ns to last first_entry_ns,\n      median start = median(first_entry_ns - \
             created_ns), per guest = all entered / guests\n\
             linux: fork + exec + waitpid of a static binary: runs/s, median time, 1 / (runs/s)",
            rate_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            n = last.guests,
        );

        let mut report = self.report("boot", &ours_args, &linux);
        report["method"] = json!(
            "ours: N guests of `apps/bench first` created up front, then scheduled; from each guest's \
             guest_stats line: started_per_sec = N / (last created_ns - first created_ns), \
             first_created_to_last_entry_ms, per_guest_us = that span / N, median_start_us = median(first_entry_ns - created_ns), \
             median_created_to_main_us = median(guest main's clock - created_ns), \
             median_create_interval_us = median gap between consecutive created_ns. linux: fork + execve \
             of a static binary + waitpid, timed with CLOCK_MONOTONIC"
        );
        report["ours"] = Value::Array(
            ours.iter()
                .map(|(f, wall)| {
                    json!({
                        "guests": f.guests,
                        "started_per_sec": f.started_per_sec,
                        "first_created_to_last_entry_ms": f.span_ns / 1e6,
                        "per_guest_us": f.per_guest_ns() / 1e3,
                        "median_start_us": f.median_start_ns / 1e3,
                        "median_created_to_main_us": f.median_to_main_ns.map(|n| n / 1e3),
                        "median_create_interval_us": f.median_create_ns.map(|n| n / 1e3),
                        "qemu_wall_s": wall.as_secs_f64(),
                    })
                })
                .collect(),
        );
        report["linux"] = json!({
            "what": "fork + execve + waitpid of a static binary",
            "runs": spawn["runs"],
            "median_us": linux_med,
            "min_us": spawn["min_us"],
            "spawns_per_sec": linux_rate,
            "per_spawn_us": linux_per,
        });
        report["ratio"] = json!({
            "started_per_sec": { "guests": last.guests, "ours_over_linux": rate_ratio },
            "per_guest": { "guests": last.guests, "ours_over_linux": per_ratio },
            "median_start_1_guest": { "ours_over_linux": start_ratio },
        });
        Ok((t, report))
    }
}

/// The settings of `bench net`.
#[derive(Clone, Debug)]
pub struct NetSettings {
    /// Echo runs, one per connection count, in turn.
    pub echo_connections: Vec<usize>,
    pub message_bytes: usize,
    pub echo_ms: u64,
    pub http_connections: usize,
    /// The body of `/` (our http guest's second argument; nginx's `/`).
    pub body_bytes: usize,
    pub http_ms: u64,
    /// The host's `wrk -c`.
    pub host_connections: usize,
    pub host_secs: u64,
    /// Every run starts with this long unmeasured on its connections (a
    /// separate 1 s wrk run for the host's).
    pub warmup_ms: u64,
}

impl NetSettings {
    /// The defaults (10 s per measurement), or 2 s each with `quick`.
    pub fn new(quick: bool) -> Self {
        let ms = if quick { 2_000 } else { 10_000 };
        NetSettings {
            echo_connections: vec![1, 16],
            message_bytes: 64,
            echo_ms: ms,
            http_connections: 16,
            body_bytes: 1024,
            http_ms: ms,
            host_connections: 16,
            host_secs: ms / 1000,
            warmup_ms: if quick { 500 } else { 1000 },
        }
    }

    fn echo_list(&self) -> String {
        let list: Vec<String> = self.echo_connections.iter().map(|c| c.to_string()).collect();
        list.join(",")
    }

    fn json(&self) -> Value {
        json!({
            "echo": {
                "connections": self.echo_connections,
                "message_bytes": self.message_bytes,
                "duration_ms": self.echo_ms,
                "port": linux::ECHO_PORT,
            },
            "http": {
                "connections": self.http_connections,
                "path": "/",
                "body_bytes": self.body_bytes,
                "duration_ms": self.http_ms,
                "port": linux::HTTP_PORT,
            },
            "host": {
                "client": "wrk -t1 --latency --timeout 5s",
                "connections": self.host_connections,
                "duration_s": self.host_secs,
                "warmup_s": 1,
            },
            "warmup_ms": self.warmup_ms,
        })
    }
}

/// One figure set on one side: the JSON the load generator printed, or why
/// it was not measured.
pub type Measured = std::result::Result<Value, String>;

/// What one side of `bench net` measured.
struct NetSide {
    /// One per [`NetSettings::echo_connections`].
    echo: Vec<Measured>,
    http: Measured,
    host: Measured,
}

fn measured_json(m: &Measured) -> Value {
    match m {
        Ok(v) => v.clone(),
        Err(why) => json!({ "not_measured": why }),
    }
}

/// The longest line the hypervisor prints for a guest before it breaks it
/// (`hypervisor/src/guest/console.rs`, `LINE_MAX`).
pub const GUEST_LINE_MAX: usize = 200;

/// Splits `NAME| TEXT` into the guest's name and its text.
fn guest_line(line: &str) -> Option<(&str, &str)> {
    let (name, rest) = line.split_once("| ")?;
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    ok.then_some((name, rest))
}

/// Guest console lines with the pieces of a long line joined again (the
/// hypervisor breaks a guest's line every [`GUEST_LINE_MAX`] bytes).
#[derive(Default)]
pub struct GuestLines {
    pending: std::collections::HashMap<String, String>,
}

impl GuestLines {
    /// Takes one console line; returns (guest, whole line) when a guest's
    /// line is complete.
    pub fn push(&mut self, line: &str) -> Option<(String, String)> {
        let (name, text) = guest_line(line)?;
        let buf = self.pending.entry(name.to_string()).or_default();
        buf.push_str(text);
        if text.len() >= GUEST_LINE_MAX {
            return None;
        }
        Some((name.to_string(), std::mem::take(buf)))
    }

    /// Like [`push`](Self::push), for lines that are JSON objects.
    pub fn push_json(&mut self, line: &str) -> Option<(String, Value)> {
        let (who, text) = self.push(line)?;
        parse_json(&text).map(|v| (who, v))
    }
}

/// Every JSON object a guest printed (long lines joined), with its name.
pub fn guest_json(console: &str) -> Vec<(String, Value)> {
    let mut g = GuestLines::default();
    console.lines().filter_map(|l| g.push_json(l)).collect()
}

/// A duration as wrk prints it (`207.00us`, `1.23ms`, `2.00s`, `1.00m`), in µs.
fn wrk_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// The figures in `wrk --latency` output: requests, requests/s, latency
/// (mean, p50, p75, p90, p99, max, in µs), socket errors and non-2xx/3xx
/// responses. `None` without a `Requests/sec:` line.
pub fn parse_wrk(out: &str) -> Option<Value> {
    let mut rps = None;
    let mut requests = None;
    let mut lat = serde_json::Map::new();
    let mut socket_errors = 0u64;
    let mut non_2xx = 0u64;
    for line in out.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if l.contains(" requests in ") {
            requests = words.first().and_then(|w| w.parse::<u64>().ok());
        } else if words.first() == Some(&"Latency") && words.len() >= 4 {
            if let (Some(mean), Some(max)) = (wrk_us(words[1]), wrk_us(words[3])) {
                lat.insert("mean".into(), json!(mean));
                lat.insert("max".into(), json!(max));
            }
        } else if words.len() == 2
            && let Some(p) = words[0].strip_suffix('%')
            && let Some(us) = wrk_us(words[1])
        {
            let p = p.split('.').next().unwrap_or(p);
            lat.insert(format!("p{p}"), json!(us));
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            socket_errors = rest.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum();
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(0);
        }
    }
    Some(json!({
        "bench": "wrk",
        "requests": requests,
        "requests_per_sec": rps?,
        "latency_us": lat,
        "socket_errors": socket_errors,
        "non_2xx_3xx": non_2xx,
        "errors": socket_errors + non_2xx,
    }))
}

/// Waits (up to `patience`) until 127.0.0.1:`port` answers `GET /` with a
/// status line (QEMU's forward accepts connections before anything listens
/// behind it).
fn wait_for_http(port: u16, patience: Duration) -> std::result::Result<(), String> {
    use std::io::{Read as _, Write as _};
    let give_up = Instant::now() + patience;
    let mut last = String::new();
    while Instant::now() < give_up {
        let attempt = || -> std::io::Result<bool> {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
            let mut buf = [0u8; 16];
            let n = c.read(&mut buf)?;
            Ok(buf[..n].starts_with(b"HTTP/1."))
        };
        match attempt() {
            Ok(true) => return Ok(()),
            Ok(false) => last = "no HTTP status line".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("127.0.0.1:{port} did not answer HTTP within {} s ({last})", patience.as_secs()))
}

/// `wrk` on the host against 127.0.0.1:`port`, after a 1 s warm-up run
/// whose figures are dropped.
fn host_wrk(wrk: &std::path::Path, port: u16, connections: usize, secs: u64) -> Measured {
    wait_for_http(port, Duration::from_secs(30))?;
    let wrk_for = |secs: u64| {
        let mut cmd = Command::new(wrk);
        cmd.args([
            "-t1".to_string(),
            format!("-c{connections}"),
            format!("-d{secs}s"),
            "--latency".into(),
            "--timeout".into(),
            "5s".into(),
            format!("http://127.0.0.1:{port}/"),
        ]);
        crate::cmd::echo(&cmd);
        cmd.output().map_err(|e| format!("running wrk: {e}"))
    };
    wrk_for(1)?;
    let out = wrk_for(secs)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).ok_or_else(|| format!("wrk printed no figures: {}{}", text.trim(), String::from_utf8_lossy(&out.stderr).trim()))
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rate_of(v: &Value) -> Option<f64> {
    v["round_trips_per_sec"].as_f64().or_else(|| v["requests_per_sec"].as_f64())
}

fn describe_result(v: &Value) -> String {
    let lat = &v["latency_us"];
    let rate = rate_of(v).unwrap_or(0.0);
    let what = if v["bench"] == "echo" { "round trips/s" } else { "requests/s" };
    format!(
        "{rate:.0} {what}, p50 {:.0} µs, p99 {:.0} µs, {} errors",
        lat["p50"].as_f64().unwrap_or(0.0),
        lat["p99"].as_f64().unwrap_or(0.0),
        v["errors"]
    )
}

/// The lines that end one of our guests: exited, stopped or not started.
fn guest_ended(line: &str, guest: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix("[hv] guest ") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(guest) else {
        return false;
    };
    [" exited", " stopped", " not started"].iter().any(|e| rest.starts_with(e))
}

impl Bench {
    /// Boots our hypervisor with `manifest` (not exiting when idle) and
    /// feeds each console line to `on_line` until it says stop, QEMU ends,
    /// or `timeout`. Returns QEMU's arguments and the console.
    fn ours_live(
        &self,
        what: &str,
        manifest: String,
        timeout: Duration,
        mut on_line: impl FnMut(&str) -> linux::Reply,
    ) -> Result<(Vec<String>, linux::Console)> {
        let cfg = self.run_config(manifest, false);
        let prepared = prepare(&cfg)?;
        progress(&format!("booting our hypervisor: {what}…"));
        let console = linux::boot_interactive(&prepared.qemu_args, timeout, |_, l| on_line(l))?;
        progress(&format!("  ours done after {:.1} s", console.elapsed.as_secs_f64()));
        Ok((prepared.qemu_args.clone(), console))
    }

    /// echo-bench → echo in one tenant.
    fn ours_echo(&self, st: &NetSettings) -> Result<(Vec<String>, Vec<Measured>)> {
        let most = st.echo_connections.iter().copied().max().unwrap_or(1);
        let memory = 16 + most / 8;
        let manifest = format!(
            "[[guest]]\nname = \"echo\"\napp = \"echo\"\ntenant = \"bench\"\nmemory = \"{memory} MiB\"\nring_slots = 32\n\
             args = [\"serve\", \"{port}\"]\n\n\
             [[guest]]\nname = \"echo-bench\"\napp = \"echo-bench\"\ntenant = \"bench\"\nmemory = \"{memory} MiB\"\nring_slots = 32\n\
             args = [\"10.0.0.2\", \"{port}\", \"{}\", \"{}\", \"{}\", \"{}\"]\n",
            st.echo_list(),
            st.message_bytes,
            st.echo_ms,
            st.warmup_ms,
            port = linux::ECHO_PORT,
        );
        let runs = st.echo_connections.len() as u64;
        let timeout = Duration::from_secs(120 + runs * (st.echo_ms / 1000 + 25));
        let mut lines = GuestLines::default();
        let mut results = Vec::new();
        let (args, console) =
            self.ours_live(&format!("echo-bench → echo, {} connections", st.echo_list()), manifest, timeout, |line| {
                if let Some((who, v)) = lines.push_json(line)
                    && who == "echo-bench-0"
                    && v["bench"] == "echo"
                {
                    progress(&format!("  ours echo, {} conns: {}", v["connections"], describe_result(&v)));
                    results.push(v);
                }
                if guest_ended(line, "echo-bench-0") || guest_ended(line, "echo-0") { linux::Reply::Stop } else { linux::Reply::Continue }
            })?;
        if results.len() != st.echo_connections.len() {
            bail!(
                "echo-bench reported {} of {} runs{}\n{}{}",
                results.len(),
                st.echo_connections.len(),
                if console.timed_out { " (timed out)" } else { "" },
                console.stderr,
                console.tail(30)
            );
        }
        Ok((args, results.into_iter().map(Ok).collect()))
    }

    /// http-load → http in one tenant, then the host's wrk through the
    /// forwarded port.
    fn ours_http(&self, st: &NetSettings, wrk: std::result::Result<&std::path::Path, &str>) -> Result<(Vec<String>, Measured, Measured)> {
        let host_port = free_port()?;
        let memory = 32 + st.http_connections / 4;
        let manifest = format!(
            "[[guest]]\nname = \"http\"\napp = \"http\"\ntenant = \"bench\"\nmemory = \"{memory} MiB\"\nring_slots = 32\n\
             args = [\"{port}\", \"{}\"]\nports = [\"{host_port}:{port}\"]\n\n\
             [[guest]]\nname = \"http-load\"\napp = \"http-load\"\ntenant = \"bench\"\nmemory = \"{memory} MiB\"\nring_slots = 32\n\
             args = [\"10.0.0.2\", \"{port}\", \"/\", \"{}\", \"{}\", \"{}\"]\n",
            st.body_bytes,
            st.http_connections,
            st.http_ms,
            st.warmup_ms,
            port = linux::HTTP_PORT,
        );
        let timeout = Duration::from_secs(180 + st.http_ms / 1000 + st.host_secs);
        let mut lines = GuestLines::default();
        let mut http = Err("http-load printed no result".to_string());
        let mut host = Err("the http guest ended before the host's turn".to_string());
        let (args, console) =
            self.ours_live(&format!("http-load → http, {} connections", st.http_connections), manifest, timeout, |line| {
                if let Some((who, v)) = lines.push_json(line)
                    && who == "http-load-0"
                    && v["bench"] == "http"
                {
                    progress(&format!("  ours http: {}", describe_result(&v)));
                    http = Ok(v);
                }
                if guest_ended(line, "http-0") {
                    return linux::Reply::Stop;
                }
                if guest_ended(line, "http-load-0") {
                    host = match wrk {
                        Ok(wrk) => {
                            progress(&format!("  host wrk → our http guest (127.0.0.1:{host_port}), {} s…", st.host_secs));
                            let r = host_wrk(wrk, host_port, st.host_connections, st.host_secs);
                            if let Ok(v) = &r {
                                progress(&format!("  host → ours: {}", describe_result(v)));
                            }
                            r
                        }
                        Err(why) => Err(why.to_string()),
                    };
                    return linux::Reply::Stop;
                }
                linux::Reply::Continue
            })?;
        if http.is_err() {
            let why = if console.timed_out { "timed out" } else { "no result" };
            http = Err(format!("http-load → http: {why}; console tail:\n{}", console.tail(15)));
        }
        Ok((args, http, host))
    }

    /// The Linux peer of `bench net`: one boot runs the echo and HTTP loads
    /// over loopback, then serves the host's wrk through a forwarded port.
    /// Whatever does not work is reported as not measured.
    fn linux_net(
        &self,
        st: &NetSettings,
        nginx: std::result::Result<&std::path::Path, &str>,
        wrk: std::result::Result<&std::path::Path, &str>,
    ) -> (NetSide, Value) {
        let fail_all = |why: String| {
            (
                NetSide {
                    echo: st.echo_connections.iter().map(|_| Err(why.clone())).collect(),
                    http: Err(why.clone()),
                    host: Err(why.clone()),
                },
                json!({ "not_measured": why }),
            )
        };
        let kernel = match Kernel::find() {
            Ok(k) => k,
            Err(e) => return fail_all(format!("no Linux kernel: {e:#}")),
        };
        let program = match linux::build_peer_program() {
            Ok(p) => p,
            Err(e) => return fail_all(format!("building the peer program failed: {e:#}")),
        };
        let mut http_why = nginx.err().map(|e| format!("nginx: {e}"));
        let mut host_why = match (&http_why, wrk) {
            (Some(w), _) => Some(w.clone()),
            (None, Err(e)) => Some(e.to_string()),
            (None, Ok(_)) => None,
        };
        let modules: Result<Vec<PathBuf>> = linux::VIRTIO_NET_MODULES.iter().map(|m| kernel.module(m)).collect();
        if let (None, Err(e)) = (&host_why, &modules) {
            host_why = Some(format!("no virtio-net modules: {e:#}"));
        }
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => return fail_all(format!("no free port: {e:#}")),
        };
        let mut plan = linux::NetPlan {
            echo_connections: st.echo_list(),
            message_bytes: st.message_bytes,
            echo_length: st.echo_ms.to_string(),
            nginx: http_why.is_none(),
            http_connections: st.http_connections.to_string(),
            http_length: st.http_ms.to_string(),
            body_bytes: st.body_bytes,
            warmup_ms: st.warmup_ms,
            nic: host_why.is_none(),
        };
        let build = |plan: &linux::NetPlan| {
            linux::initramfs_with(&linux::net_init_script(plan), &program, |t| {
                if let (true, Ok(nginx)) = (plan.nginx, nginx) {
                    linux::add_nginx(t, nginx, plan.body_bytes)?;
                }
                if plan.nic {
                    linux::add_virtio_net(t, &kernel)?;
                }
                Ok(())
            })
        };
        let image = match build(&plan) {
            Ok(i) => i,
            Err(e) => {
                // Leave out what could not be added, keep the echo.
                let why = format!("assembling the initramfs with nginx failed: {e:#}");
                http_why.get_or_insert(why.clone());
                host_why.get_or_insert(why);
                plan.nginx = false;
                plan.nic = false;
                match build(&plan) {
                    Ok(i) => i,
                    Err(e) => return fail_all(format!("assembling the initramfs failed: {e:#}")),
                }
            }
        };
        let initrd = workspace_root().join("target/bench/peer-net.cpio.gz");
        if let Err(e) = fs::write(&initrd, &image) {
            return fail_all(format!("writing {}: {e}", initrd.display()));
        }
        let mut qemu_args = linux::qemu_args(&self.machine, &kernel.image, &initrd, &self.append);
        if plan.nic {
            qemu_args.extend(linux::nic_args(port));
        }
        progress(&format!(
            "booting Linux peer {} ({} KiB initramfs{}{})…",
            kernel.version,
            image.len() / 1024,
            if plan.nginx { ", nginx" } else { "" },
            if plan.nic { ", virtio-net" } else { "" }
        ));
        let runs = st.echo_connections.len() as u64;
        let timeout = Duration::from_secs(180 + runs * (st.echo_ms / 1000 + 25) + st.http_ms / 1000 + st.host_secs + 60);
        let mut echo: Vec<Value> = Vec::new();
        let mut http: Option<Value> = None;
        let mut host: Measured = Err(host_why.clone().unwrap_or_else(|| "the peer never said it was serving".into()));
        let mut failed: Vec<String> = Vec::new();
        let mut up = Value::Null;
        let console = linux::boot_interactive(&qemu_args, timeout, |t, line| {
            let Some(v) = parse_json(line) else {
                return linux::Reply::Continue;
            };
            if v["peer"] == "up" {
                progress(&format!("  Linux reached /init after {:.1} s (clock source {})", t.as_secs_f64(), v["clocksource"]));
                up = v;
            } else if v["bench"] == "echo" {
                progress(&format!("  linux echo, {} conns: {}", v["connections"], describe_result(&v)));
                echo.push(v);
            } else if v["bench"] == "http" {
                progress(&format!("  linux http: {}", describe_result(&v)));
                http = Some(v);
            } else if v["peer"] == "failed" {
                progress(&format!("  linux: {line}"));
                failed.push(v["command"].as_str().unwrap_or("?").to_string());
            } else if v["peer"] == "serving" {
                if let Ok(wrk) = wrk {
                    progress(&format!("  host wrk → Linux nginx (127.0.0.1:{port}), {} s…", st.host_secs));
                    host = host_wrk(wrk, port, st.host_connections, st.host_secs);
                    if let Ok(v) = &host {
                        progress(&format!("  host → linux: {}", describe_result(v)));
                    }
                }
                return linux::Reply::Type(b"done\n".to_vec());
            }
            linux::Reply::Continue
        });
        let console = match console {
            Ok(c) => c,
            Err(e) => return fail_all(format!("booting the Linux peer failed: {e:#}")),
        };
        progress(&format!("  Linux finished in {:.1} s", console.elapsed.as_secs_f64()));
        let ended = if console.timed_out {
            format!("the Linux peer did not finish within {} s", timeout.as_secs())
        } else {
            "the Linux peer printed no result".into()
        };
        let why = |command: &str, fallback: &str| {
            if failed.iter().any(|f| f == command) {
                format!("`{command}` failed in the Linux peer (console: target/bench/peer-net.log)")
            } else {
                fallback.to_string()
            }
        };
        let echo_results = st
            .echo_connections
            .iter()
            .map(|&c| echo.iter().find(|v| v["connections"].as_u64() == Some(c as u64)).cloned().ok_or_else(|| why("echo-client", &ended)))
            .collect();
        let http = match (http, http_why) {
            (Some(v), _) => Ok(v),
            (None, Some(w)) => Err(w),
            (None, None) if failed.iter().any(|f| f == "nginx") => Err(why("nginx", &ended)),
            (None, None) => Err(why("http-load", &ended)),
        };
        if host.is_err() && failed.iter().any(|f| f == "eth0") {
            host = Err(why("eth0", &ended));
        }
        let _ = fs::write(workspace_root().join("target/bench/peer-net.log"), console.text());
        let info = json!({
            "version": kernel.version,
            "cmdline": self.append,
            "meltdown": up["meltdown"],
            "spectre_v2": up["spectre_v2"],
            "clocksource": up["clocksource"],
            "tsc_mhz": up["tsc_mhz"],
            "init_after_s": up["uptime_s"],
            "wall_s": console.elapsed.as_secs_f64(),
            "qemu_args": qemu_args,
            "nginx": plan.nginx.then_some(linux::NGINX),
        });
        (NetSide { echo: echo_results, http, host }, info)
    }

    fn net(&self) -> Result<(String, Value)> {
        let st = NetSettings::new(self.quick);
        let (nginx, wrk) = linux::ensure_net_tools();
        let (nginx, wrk) = (nginx.as_deref(), wrk.as_deref());
        let wrk = wrk.map_err(String::as_str);

        let (ours_echo_args, ours_echo) = self.ours_echo(&st)?;
        let has_http = crate::build::apps()?.iter().any(|a| a == "http");
        let (ours_http_args, ours_http, ours_host) = if has_http {
            match self.ours_http(&st, wrk) {
                Ok(r) => r,
                Err(e) => {
                    let why = format!("our http guest could not be booted: {e:#}");
                    (Vec::new(), Err(why.clone()), Err(why))
                }
            }
        } else {
            let why = "apps/http does not exist".to_string();
            (Vec::new(), Err(why.clone()), Err(why))
        };
        let ours = NetSide { echo: ours_echo, http: ours_http, host: ours_host };
        let (linux, linux_info) = self.linux_net(&st, nginx.map_err(String::as_str), wrk);

        // The table.
        struct Row<'a> {
            key: String,
            label: String,
            unit: &'static str,
            ours: &'a Measured,
            linux: &'a Measured,
            goal: bool,
        }
        let mut rows = Vec::new();
        for (i, &c) in st.echo_connections.iter().enumerate() {
            rows.push(Row {
                key: format!("echo_{c}_conn{}", if c == 1 { "" } else { "s" }),
                label: format!("echo, {c} conn{}, {} B", if c == 1 { "" } else { "s" }, st.message_bytes),
                unit: "round trips/s",
                ours: &ours.echo[i],
                linux: &linux.echo[i],
                goal: true,
            });
        }
        rows.push(Row {
            key: "http".into(),
            label: format!("http, {} conns, {} B body", st.http_connections, st.body_bytes),
            unit: "requests/s",
            ours: &ours.http,
            linux: &linux.http,
            goal: true,
        });
        rows.push(Row {
            key: "host_http".into(),
            label: format!("host wrk, {} conns", st.host_connections),
            unit: "requests/s",
            ours: &ours.host,
            linux: &linux.host,
            goal: false,
        });

        let mut t = self.header("net");
        let _ = writeln!(t, "\n{:<44}{:>14} {:>14} {:>8}", "", "ours", "linux", "ratio");
        let mut ratios = serde_json::Map::new();
        let mut goals = serde_json::Map::new();
        let mut not_measured = Vec::new();
        let mut notes = Vec::new();
        for row in &rows {
            let rate = |m: &Measured| m.as_ref().ok().and_then(rate_of);
            let (o, l) = (rate(row.ours), rate(row.linux));
            let ratio = o.zip(l).filter(|(_, l)| *l > 0.0).map(|(o, l)| o / l);
            let cell = |v: Option<f64>| v.map_or(format!("{:>14}", "n/m"), |v| format!("{v:>14.0}"));
            let goal = if row.goal {
                ratio.map_or("   goal >= 2x".to_string(), |r| format!("   goal >= 2x{}", if r >= 2.0 { " (met)" } else { "" }))
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "{:<29}{:>15}{} {} {:>8}{goal}",
                row.label,
                row.unit,
                cell(o),
                cell(l),
                ratio.map_or("-".into(), |r| format!("{r:.2}x"))
            );
            let lat = |m: &Measured| {
                m.as_ref().ok().map_or(format!("{:>14}", "-"), |v| {
                    let l = &v["latency_us"];
                    format!("{:>14}", format!("{:.0} / {:.0}", l["p50"].as_f64().unwrap_or(0.0), l["p99"].as_f64().unwrap_or(0.0)))
                })
            };
            let _ = writeln!(t, "{:<29}{:>15}{} {}", "", "p50 / p99 µs", lat(row.ours), lat(row.linux));
            ratios.insert(row.key.clone(), json!(ratio));
            if row.goal {
                goals.insert(row.key.clone(), json!({ "ratio_at_least": 2.0, "met": ratio.map(|r| r >= 2.0) }));
            }
            for (side, m) in [("ours", row.ours), ("linux", row.linux)] {
                match m {
                    Err(why) => {
                        let first = why.lines().next().unwrap_or("");
                        notes.push(format!("not measured: {side} {}: {first}", row.label));
                        not_measured.push(json!({ "side": side, "what": row.key, "reason": why }));
                    }
                    Ok(v) if v["errors"].as_u64().is_some_and(|e| e > 0) => {
                        notes.push(format!("{side} {}: {} errors", row.label, v["errors"]));
                    }
                    Ok(_) => {}
                }
            }
        }
        for n in &notes {
            let _ = writeln!(t, "{n}");
        }
        let _ = write!(
            t,
            "ratio = ours / linux (higher is better for us); n/m = not measured\n\
             ours: echo-bench → echo and http-load → http guests, one tenant, over the hypervisor's switch\n\
             linux: peer echo-client → peer echo-server, peer http-load → nginx, over lo\n\
             host: wrk -t1 through QEMU's user-net port forward (ours: to the http guest; linux: to nginx on eth0)"
        );

        let report = json!({
            "bench": "net",
            "date": iso_date(SystemTime::now()),
            "quick": self.quick,
            "machine": self.machine_json(),
            "ours_build": build_info(),
            "settings": st.json(),
            "method": "Each load generator keeps its connections in lockstep (one message or request \
                       outstanding per connection), all driven by one thread or executor; a latency \
                       runs from the write to the last byte of the answer; rates are completed round \
                       trips or responses per second of the run (connections made before the clock starts). \
                       ours: apps/echo-bench -> apps/echo, apps/http-load -> apps/http, guests in one tenant. \
                       linux: xtask/src/peer/net.c (echo-client -> echo-server, http-load -> nginx) over lo. \
                       host: wrk through QEMU's user-net port forward.",
            "qemu_args": {
                "ours_echo": ours_echo_args,
                "ours_http": ours_http_args,
                "linux": linux_info["qemu_args"].clone(),
            },
            "linux_kernel": linux_info,
            "ours": {
                "echo": ours.echo.iter().map(measured_json).collect::<Vec<_>>(),
                "http": measured_json(&ours.http),
                "host_http": measured_json(&ours.host),
            },
            "linux": {
                "echo": linux.echo.iter().map(measured_json).collect::<Vec<_>>(),
                "http": measured_json(&linux.http),
                "host_http": measured_json(&linux.host),
            },
            "ratio": ratios,
            "goal": goals,
            "not_measured": not_measured,
        });
        Ok((t, report))
    }
}

/// A line as JSON, if it is a JSON object.
fn parse_json(line: &str) -> Option<Value> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Value>(line).ok().filter(Value::is_object)
}

/// Every JSON object line on a console, with the guest that printed it
/// (`NAME| {...}`), or `None` for lines of the hypervisor or of Linux.
pub fn json_lines(console: &str) -> Vec<(Option<&str>, Value)> {
    let is_name = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    console
        .lines()
        .filter_map(|line| {
            let (who, rest) = match line.split_once("| ") {
                Some((name, rest)) if is_name(name) => (Some(name), rest),
                _ => (None, line),
            };
            parse_json(rest).map(|v| (who, v))
        })
        .collect()
}

/// The TSC rate from the hypervisor's `[hv] TSC 2.457 GHz, ...` line.
pub fn tsc_ghz(console: &str) -> Option<f64> {
    console.lines().find_map(|l| l.trim().strip_prefix("[hv] TSC ")?.split_once(" GHz")?.0.parse().ok())
}

/// Every `guest_stats` record on our console (the hypervisor's own lines:
/// a guest's always begin with its `NAME| `).
pub fn guest_stats(console: &str) -> Vec<GuestStats> {
    console.lines().map(str::trim).filter(|l| l.starts_with(GUEST_STATS_PREFIX)).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Every `machine` record on our console, in order.
pub fn machine_stats(console: &str) -> Vec<abi::report::MachineStats> {
    console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(abi::report::MACHINE_PREFIX))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Each guest's `{"bench":"first","ns":...}` line: (guest, monotonic ns at main).
pub fn guest_mains(console: &str) -> Vec<(String, u64)> {
    json_lines(console)
        .into_iter()
        .filter_map(|(who, v)| (v["bench"] == "first").then(|| Some((who?.to_string(), v["ns"].as_u64()?)))?)
        .collect()
}

/// What one boot run says about starting guests.
#[derive(Clone, Debug, PartialEq)]
pub struct BootFigures {
    pub guests: usize,
    /// guests / (last created_ns − first created_ns); `None` for one guest.
    pub started_per_sec: Option<f64>,
    /// Last first_entry_ns − first created_ns.
    pub span_ns: f64,
    /// Median of first_entry_ns − created_ns.
    pub median_start_ns: f64,
    /// Median of (the guest's clock at main) − created_ns, over the guests
    /// that printed it.
    pub median_to_main_ns: Option<f64>,
    /// Median gap between consecutive created_ns: the warm cost of creating
    /// one guest (the first creation also pays for QEMU translating the
    /// code); `None` for one guest.
    pub median_create_ns: Option<f64>,
}

impl BootFigures {
    /// The span from the first creation to the last entry, per guest.
    pub fn per_guest_ns(&self) -> f64 {
        self.span_ns / self.guests as f64
    }
}

/// The figures for `stats` (guests that were never entered are left out);
/// `None` if there are none.
pub fn boot_figures(stats: &[GuestStats], mains: &[(String, u64)]) -> Option<BootFigures> {
    let entered: Vec<&GuestStats> = stats.iter().filter(|s| s.first_entry_ns != 0).collect();
    let first_created = entered.iter().map(|s| s.created_ns).min()?;
    let last_created = entered.iter().map(|s| s.created_ns).max()?;
    let last_entry = entered.iter().map(|s| s.first_entry_ns).max()?;
    let n = entered.len();
    let mut starts: Vec<f64> = entered.iter().map(|s| s.first_entry_ns.saturating_sub(s.created_ns) as f64).collect();
    let mut to_main: Vec<f64> = mains
        .iter()
        .filter_map(|(g, ns)| {
            let s = entered.iter().find(|s| &s.guest == g)?;
            Some(ns.saturating_sub(s.created_ns) as f64)
        })
        .collect();
    let mut created: Vec<u64> = entered.iter().map(|s| s.created_ns).collect();
    created.sort_unstable();
    let mut gaps: Vec<f64> = created.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    Some(BootFigures {
        guests: n,
        started_per_sec: (n > 1 && last_created > first_created).then(|| n as f64 / ((last_created - first_created) as f64 / 1e9)),
        span_ns: last_entry.saturating_sub(first_created) as f64,
        median_start_ns: median(&mut starts)?,
        median_to_main_ns: median(&mut to_main),
        median_create_ns: median(&mut gaps),
    })
}

/// The median (mean of the middle two for an even count); `None` if empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        len if len % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// Rounds every non-integer number in `v` to 3 decimals (the figures are
/// not nearly that precise; this keeps the JSON readable).
fn round_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(r) = n.as_f64().and_then(|x| serde_json::Number::from_f64((x * 1e3).round() / 1e3)) {
                *n = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round_floats),
        Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// The commit our side was built from, and whether the hypervisor, libos,
/// abi or apps had uncommitted changes (read-only git queries).
fn build_info() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let changed = git(&["status", "--porcelain", "--untracked-files=no", "--", "hypervisor", "libos", "apps"]);
    json!({ "commit": commit, "uncommitted_changes": changed.map(|c| !c.is_empty()) })
}

/// `qemu-system-x86_64 --version`'s first line.
fn qemu_version() -> Option<String> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string())
}

/// `t` as `2026-11-25T20:22:15Z` (UTC).
pub fn iso_date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where the JSON of `which` goes.
pub fn report_path(which: Which) -> PathBuf {
    workspace_root().join("target/bench").join(format!("{}.json", which.name()))
}

/// The guests' latency histogram, tested on the host.
#[cfg(test)]
#[path = "../../apps/echo-bench/src/hist.rs"]
mod guest_hist;

#[cfg(test)]
mod tests {
    use super::*;
    use abi::report::GuestState;
    use abi::stop::StopReason;

    const OURS: &str = "\
[hv] hypervisor 0.1.0 booting\r
[hv] TSC 2.454 GHz, APIC timer in one-shot mode, wall clock 1795638393 s since the epoch
[hv] guest b-0 started (image bench.hermit, memory 256 KiB)
[hv] guest b-1 started (image bench.hermit, memory 256 KiB)
[hv] guest b-2 started (image bench.hermit, memory 256 KiB)
b-0| {\"bench\":\"first\",\"tsc\":858322963,\"ns\":2500}
b-1| {\"bench\":\"first\",\"tsc\":869719751,\"ns\":4000}
b-1| {not json
b-2| {\"bench\":\"hypercall\",\"iterations\":1000,\"rounds\":3,\"cycles_per_call\":3398.5,\"min_cycles_per_call\":3075.1}
[hv] guest b-0 exited with code 0
{\"event\":\"guest_stats\",\"guest\":\"b-0\",\"state\":\"exited\",\"cpu_ns\":1018460,\"cpu_ns_per_cpu\":[1018460],\"wakeups\":0,\"preemptions\":0,\"yields\":0,\"hypercalls\":0,\"memory_bytes\":0,\"memory_limit\":0,\"private_bytes\":0,\"ring_bytes\":0,\"table_bytes\":0,\"shared_bytes\":0,\"hv_bytes\":0,\"console_dropped\":0,\"kicks_ignored\":0,\"nic_limited\":0,\"ring_errors\":0,\"uplink_dropped\":0,\"spoofed_frames\":0,\"created_ns\":1000,\"create_ns\":0,\"first_entry_ns\":2000,\"exit_code\":0,\"stop_reason\":null}
{\"event\":\"guest_stats\",\"guest\":\"b-1\",\"state\":\"exited\",\"cpu_ns\":1,\"cpu_ns_per_cpu\":[1],\"wakeups\":0,\"preemptions\":0,\"yields\":0,\"hypercalls\":0,\"memory_bytes\":0,\"memory_limit\":0,\"private_bytes\":0,\"ring_bytes\":0,\"table_bytes\":0,\"shared_bytes\":0,\"hv_bytes\":0,\"console_dropped\":0,\"kicks_ignored\":0,\"nic_limited\":0,\"ring_errors\":0,\"uplink_dropped\":0,\"spoofed_frames\":0,\"created_ns\":1500,\"create_ns\":0,\"first_entry_ns\":3500,\"exit_code\":0,\"stop_reason\":null}
{\"event\":\"guest_stats\",\"guest\":\"b-2\",\"state\":\"stopped\",\"cpu_ns\":1,\"cpu_ns_per_cpu\":[1],\"wakeups\":0,\"preemptions\":0,\"yields\":0,\"hypercalls\":0,\"memory_bytes\":0,\"memory_limit\":0,\"private_bytes\":0,\"ring_bytes\":0,\"table_bytes\":0,\"shared_bytes\":0,\"hv_bytes\":0,\"console_dropped\":0,\"kicks_ignored\":0,\"nic_limited\":0,\"ring_errors\":0,\"uplink_dropped\":0,\"spoofed_frames\":0,\"created_ns\":3000,\"create_ns\":0,\"first_entry_ns\":9000,\"exit_code\":null,\"stop_reason\":\"operator\"}
[hv] no guests left: 3 exited, 0 stopped, 0 not started; 456220 KiB free
";

    #[test]
    fn json_lines_know_who_printed_them() {
        let lines = json_lines(OURS);
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[0].0, Some("b-0"));
        assert_eq!(lines[0].1["tsc"], 858322963);
        let hc = &lines[2];
        assert_eq!(hc.0, Some("b-2"));
        assert_eq!(hc.1["cycles_per_call"].as_f64(), Some(3398.5));
        assert_eq!(lines[3].0, None);
        assert_eq!(lines[3].1["event"], "guest_stats");
        // Linux's console: CRLF line ends, kernel noise, JSON lines.
        let linux = "[    0.5] random: crng init done\r\n{\"peer\":\"up\",\"kernel\":\"6.1.0\"}\r\n\
                     {\"bench\":\"getppid\",\"cycles_per_call\":9000.5}\r\n";
        let lines = json_lines(linux);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], (None, json!({"bench":"getppid","cycles_per_call":9000.5})));
    }

    #[test]
    fn tsc_rate_from_the_boot_line() {
        assert_eq!(tsc_ghz(OURS), Some(2.454));
        assert_eq!(tsc_ghz("[hv] booting\n"), None);
    }

    #[test]
    fn machine_records_are_read_typed_and_guests_cannot_forge_them() {
        let m = r#"{"event":"machine","uptime_ns":5,"live":1,"exited":0,"stopped":0,"total_bytes":8,"free_bytes":4,"hv_heap_bytes":2,"hv_heap_used_bytes":1,"cpu_idle_ns":[3,4]}"#;
        let console = format!("[hv] booting\r\n{m}\r\nb-0| {m}\n");
        let got = machine_stats(&console);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].uptime_ns, got[0].free_bytes, got[0].cpu_idle_ns.as_slice()), (5, 4, &[3, 4][..]));
        assert!(guest_stats(&console).is_empty());
    }

    #[test]
    fn boot_figures_from_guest_stats() {
        let stats = guest_stats(OURS);
        assert_eq!(stats.len(), 3);
        let b2 = &stats[2];
        assert_eq!((b2.guest.as_str(), b2.state, b2.created_ns, b2.first_entry_ns), ("b-2", GuestState::Stopped, 3000, 9000));
        assert_eq!(b2.stop_reason, Some(StopReason::Operator));
        let mains = guest_mains(OURS);
        assert_eq!(mains, [("b-0".to_string(), 2500), ("b-1".to_string(), 4000)]);
        let f = boot_figures(&stats, &mains).unwrap();
        assert_eq!(f.guests, 3);
        // 3 guests created over 2000 ns.
        assert_eq!(f.started_per_sec, Some(3.0 / 2e-6));
        assert_eq!(f.span_ns, 8000.0);
        // Starts 1000, 2000, 6000.
        assert_eq!(f.median_start_ns, 2000.0);
        // To main: 1500, 2500.
        assert_eq!(f.median_to_main_ns, Some(2000.0));
        // Created at 1000, 1500, 3000.
        assert_eq!(f.median_create_ns, Some(1000.0));

        let one = boot_figures(&stats[..1], &[]).unwrap();
        assert_eq!(one.started_per_sec, None);
        assert_eq!(one.median_start_ns, 1000.0);
        assert_eq!(one.median_to_main_ns, None);
        assert_eq!(one.median_create_ns, None);
        assert!(boot_figures(&[], &[]).is_none());
    }

    #[test]
    fn json_floats_are_rounded() {
        let mut v = json!({"a": 1.23456, "b": [2.0004, 7], "c": {"d": 1e-9}, "e": "x"});
        round_floats(&mut v);
        assert_eq!(v, json!({"a": 1.235, "b": [2.0, 7], "c": {"d": 0.0}, "e": "x"}));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn guest_histogram_buckets_and_quantiles() {
        use super::guest_hist::{BUCKETS, Histogram, bucket, index};
        // Buckets are contiguous, increasing and cover every u64.
        assert_eq!(index(0), 0);
        assert_eq!(index(63), 63);
        assert_eq!(index(64), 64);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, width) = bucket(i);
            assert_eq!(low, next, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + (width - 1)), i);
            // At most 1/32 of the value wide.
            assert!(width == 1 || width * 32 <= low, "bucket {i}: {low} + {width}");
            next = low.wrapping_add(width);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");

        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.mean(), 500_500);
        let within = |got: u64, want: u64| got.abs_diff(want) * 32 <= want;
        assert!(within(h.quantile(0.5), 500_000), "{}", h.quantile(0.5));
        assert!(within(h.quantile(0.99), 990_000), "{}", h.quantile(0.99));
        assert_eq!(h.quantile(1.0), 1_000_000, "never above the maximum");
        let v: Value = serde_json::from_str(&h.json_us()).unwrap();
        assert_eq!(v["max"], 1000.0);
        assert_eq!(v["mean"], 500.5);
        assert!(v["p90"].as_f64().unwrap() > 870.0 && v["p90"].as_f64().unwrap() < 930.0, "{v}");
    }

    #[test]
    fn long_guest_lines_are_joined() {
        let json = format!("{{\"bench\":\"echo\",\"pad\":\"{}\",\"errors\":0}}", "x".repeat(2 * GUEST_LINE_MAX));
        let (a, rest) = json.split_at(GUEST_LINE_MAX);
        let (b, c) = rest.split_at(GUEST_LINE_MAX);
        let console = format!(
            "[hv] guest eb-0 started\neb-0| {a}\nother-0| {{\"x\":1}}\neb-0| {b}\n[hv] noise\neb-0| {c}\n\
             eb-0| short line\n"
        );
        let got = guest_json(&console);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], ("other-0".to_string(), json!({"x": 1})));
        assert_eq!(got[1].0, "eb-0");
        assert_eq!(got[1].1["errors"], 0);
        assert_eq!(got[1].1["pad"].as_str().unwrap().len(), 2 * GUEST_LINE_MAX);
        let mut g = GuestLines::default();
        assert_eq!(g.push("eb-0| short line"), Some(("eb-0".into(), "short line".into())));
        assert_eq!(g.push("[hv] guest eb-0 exited with code 0"), None);
    }

    #[test]
    fn guest_end_lines() {
        assert!(guest_ended("[hv] guest echo-bench-0 exited with code 0", "echo-bench-0"));
        assert!(guest_ended("\r[hv] guest http-0 stopped: page fault", "http-0"));
        assert!(guest_ended("[hv] guest http-0 not started: no image", "http-0"));
        assert!(!guest_ended("[hv] guest http-0 started (image http.hermit)", "http-0"));
        assert!(!guest_ended("[hv] guest http-load-0 exited with code 0", "http-0"));
        assert!(!guest_ended("http-0| [hv] guest http-0 exited", "http-0"));
    }

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 2s test @ http://127.0.0.1:18080/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   227.24us  180.87us   4.49ms   97.50%
    Req/Sec    36.75k     7.06k   53.43k    65.00%
  Latency Distribution
     50%  207.00us
     75%  255.00us
     90%    1.31ms
     99%    2.00s
  72893 requests in 2.00s, 87.80MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  36441.16
Transfer/sec:     43.89MB
";
        let v = parse_wrk(out).unwrap();
        assert_eq!(v["requests"], 72893);
        assert_eq!(v["requests_per_sec"], 36441.16);
        let lat = &v["latency_us"];
        assert_eq!(lat["p50"], 207.0);
        assert_eq!(lat["p90"], 1310.0);
        assert_eq!(lat["p99"], 2e6);
        assert_eq!(lat["mean"], 227.24);
        assert_eq!(lat["max"], 4490.0);
        assert_eq!(v["socket_errors"], 7);
        assert_eq!(v["non_2xx_3xx"], 5);
        assert_eq!(v["errors"], 12);
        assert_eq!(rate_of(&v), Some(36441.16));
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_none());
    }

    #[test]
    fn net_settings_fit_the_time_budget() {
        for quick in [false, true] {
            let st = NetSettings::new(quick);
            let secs = (st.echo_connections.len() as u64 * (st.echo_ms + st.warmup_ms) + st.http_ms + st.warmup_ms) / 1000 * 2
                + 2 * (st.host_secs + 1);
            // Measurement time on both sides; boots and builds come on top.
            assert!(secs < if quick { 30 } else { 150 }, "{secs} s");
        }
        let st = NetSettings::new(false);
        assert_eq!(st.echo_list(), "1,16");
        assert_eq!(st.json()["http"]["body_bytes"], 1024);
    }

    #[test]
    fn dates_are_utc_iso() {
        let at = |s| iso_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_638_393), "2026-11-25T20:26:33Z");
    }
}
