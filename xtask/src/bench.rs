//! `cargo xtask bench hypercall|boot`: our hypervisor and a Linux peer VM
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
//!
//! The console parsing ([`json_lines`], [`guest_stats`], [`boot_figures`])
//! is host-tested below.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::linux::{self, Kernel, Machine};
use crate::manifest::{MIB, parse_size};
use crate::qemu::{Accel, ManifestSource, QEMU, RunConfig, RunOutput, prepare, run_captured};
use crate::workspace_root;

/// Which benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Null hypercall vs. Linux's getppid system call, in TSC cycles.
    Hypercall,
    /// Guests started per second and start latency vs. Linux fork+exec.
    Boot,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Hypercall => "hypercall",
            Which::Boot => "boot",
        }
    }
}

/// `cargo xtask bench` arguments.
#[derive(Clone, Debug, clap::Args)]
#[command(
    after_help = "Both sides run under the same QEMU settings; results go to \
    target/bench/<name>.json. Under TCG expect a few percent of noise between runs."
)]
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
    let memory =
        parse_size(&args.memory).map_err(|e| anyhow::anyhow!("--memory {:?}: {e}", args.memory))?;
    if !memory.is_multiple_of(MIB) || memory < 64 * MIB {
        bail!(
            "--memory {:?}: must be whole MiB and at least 64 MiB",
            args.memory
        );
    }
    let machine = Machine {
        accel: args.accel.resolve(),
        smp: args.smp,
        memory_mib: memory / MIB,
    };
    crate::qemu::ensure_qemu()?;
    linux::ensure_packages()?;
    let append = match &args.linux_append {
        Some(extra) => format!("{} {extra}", linux::CMDLINE),
        None => linux::CMDLINE.to_string(),
    };
    let bench = Bench {
        machine,
        quick: args.quick,
        append,
    };
    progress(&format!(
        "bench {} ({}){}",
        args.which.name(),
        machine.describe(),
        if args.quick { ", quick" } else { "" }
    ));
    let (table, report) = match args.which {
        Which::Hypercall => bench.hypercall()?,
        Which::Boot => bench.boot()?,
    };
    let path = report_path(args.which);
    fs::create_dir_all(path.parent().unwrap()).context("creating target/bench")?;
    let mut report = report;
    round_floats(&mut report);
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
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
        self.results
            .iter()
            .find(|v| v["bench"] == bench)
            .with_context(|| format!("the Linux peer printed no {bench} result"))
    }
}

impl Bench {
    /// Boots our hypervisor with `manifest` and waits (at most `timeout`)
    /// until every guest is gone.
    fn ours(&self, what: &str, manifest: String, timeout: Duration) -> Result<Ours> {
        let cfg = RunConfig {
            manifest: ManifestSource::Text {
                text: manifest,
                base_dir: workspace_root().to_path_buf(),
            },
            exit_when_idle: true,
            accel: self.machine.accel,
            smp: self.machine.smp,
            memory: format!("{}M", self.machine.memory_mib),
            bundle: None,
        };
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
            bail!(
                "our hypervisor {why}\n{}{}",
                out.stderr,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        progress(&format!("  ours finished in {:.1} s", wall.as_secs_f64()));
        Ok(Ours {
            qemu_args: prepared.qemu_args.clone(),
            out,
            wall,
        })
    }

    /// Boots the Linux peer running `peer COMMAND` for each command.
    fn linux(&self, commands: &[String], timeout: Duration) -> Result<Peer> {
        let kernel = Kernel::find()?;
        let program = linux::build_peer_program()?;
        let initrd = workspace_root().join("target/bench/peer.cpio.gz");
        let image = linux::initramfs(&linux::init_script(commands), &program)?;
        fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
        let qemu_args = linux::qemu_args(&self.machine, &kernel.image, &initrd, &self.append);
        progress(&format!(
            "booting Linux peer {} ({} KiB initramfs)…",
            kernel.version,
            image.len() / 1024
        ));
        let console = linux::boot(&qemu_args, timeout, |t, line| {
            let Some(v) = parse_json(line) else { return };
            if v["peer"] == "up" {
                progress(&format!(
                    "  Linux reached /init after {:.1} s; running {}…",
                    t.as_secs_f64(),
                    commands.join(", ")
                ));
            } else if v.get("bench").is_some() || v["peer"] == "failed" {
                progress(&format!("  linux: {line}"));
            }
        })?;
        let text = console.text();
        let lines = json_lines(&text);
        let up = lines
            .iter()
            .find(|(_, v)| v["peer"] == "up")
            .map(|(_, v)| v.clone());
        let done = lines
            .iter()
            .any(|(_, v)| v["peer"] == "done" && v["status"] == 16);
        let ok =
            done && console.status == Some(abi::debug_exit::qemu_status(abi::debug_exit::SUCCESS));
        let Some(up) = up.filter(|_| ok) else {
            let why = if console.timed_out {
                format!("did not finish within {} s", timeout.as_secs())
            } else {
                format!("ended with QEMU status {:?}", console.status)
            };
            bail!(
                "the Linux peer {why}\n{}{}",
                console.stderr,
                console.tail(30)
            );
        };
        progress(&format!(
            "  Linux finished in {:.1} s",
            console.elapsed.as_secs_f64()
        ));
        Ok(Peer {
            kernel,
            qemu_args,
            up,
            results: lines
                .into_iter()
                .filter(|(_, v)| v.get("bench").is_some())
                .map(|(_, v)| v)
                .collect(),
            wall: console.elapsed,
        })
    }

    fn header(&self, name: &str) -> String {
        format!("bench {name} ({})", self.machine.describe())
    }

    fn report(&self, name: &str, ours_args: &[String], linux: &Peer) -> Value {
        json!({
            "bench": name,
            "date": iso_date(SystemTime::now()),
            "quick": self.quick,
            "machine": {
                "accel": self.machine.accel.as_str(),
                "smp": self.machine.smp,
                "memory_mib": self.machine.memory_mib,
                "cpu": "max",
                "qemu": qemu_version(),
                "host_cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            },
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
        let (n, rounds) = if self.quick {
            (20_000, 3)
        } else {
            (200_000, 7)
        };
        let manifest = format!(
            "[[guest]]\nname = \"b\"\napp = \"bench\"\nargs = [\"hypercall\", \"{n}\", \"{rounds}\"]\n"
        );
        let ours = self.ours(
            &format!("bench hypercall {n} × {rounds} rounds"),
            manifest,
            Duration::from_secs(180),
        )?;
        let ghz = tsc_ghz(&ours.out.console).context("no `[hv] TSC x.xxx GHz` line")?;
        let ours_v = json_lines(&ours.out.console)
            .into_iter()
            .find(|(who, v)| *who == Some("b-0") && v["bench"] == "hypercall")
            .map(|(_, v)| v)
            .context("apps/bench printed no hypercall result")?;
        let linux = self.linux(&[format!("getppid {n} {rounds}")], Duration::from_secs(300))?;
        let linux_v = linux.result("getppid")?;

        let get = |v: &Value, k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        let (ours_c, linux_c) = (
            get(&ours_v, "cycles_per_call")?,
            get(linux_v, "cycles_per_call")?,
        );
        let (ours_min, linux_min) = (
            get(&ours_v, "min_cycles_per_call")?,
            get(linux_v, "min_cycles_per_call")?,
        );
        let ratio = ours_c / linux_c;

        let mut t = self.header("hypercall");
        t += "\n                           ours      linux    ratio\n";
        let _ = writeln!(
            t,
            "null call (cycles)   {ours_c:>10.1} {linux_c:>10.1}   {ratio:>5.2}x   goal <= 0.5x"
        );
        let _ = writeln!(
            t,
            "best round (cycles)  {ours_min:>10.1} {linux_min:>10.1}   {:>5.2}x",
            ours_min / linux_min
        );
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
        let (counts, spawns): (&[u32], u32) = if self.quick {
            (&[1, 10, 100], 50)
        } else {
            (&[1, 100, 1000], 1000)
        };
        let mut ours = Vec::new();
        let mut ours_args = Vec::new();
        for &count in counts {
            let manifest = format!(
                "[[guest]]\nname = \"b\"\napp = \"bench\"\ncount = {count}\nmemory = \"256 KiB\"\nargs = [\"first\"]\n"
            );
            let guests = if count == 1 { "guest" } else { "guests" };
            let run = self.ours(
                &format!("{count} {guests} of bench first"),
                manifest,
                Duration::from_secs(120 + u64::from(count) / 4),
            )?;
            let stats = guest_stats(&run.out.console);
            let mains = guest_mains(&run.out.console);
            let fig = boot_figures(&stats, &mains)
                .with_context(|| format!("no guest_stats lines in the {count}-guest run"))?;
            if fig.guests != count as usize {
                bail!("{count} guests asked, {} reported stats", fig.guests);
            }
            ours_args = run.qemu_args.clone();
            ours.push((fig, run.wall));
        }
        let linux = self.linux(&[format!("spawn {spawns}")], Duration::from_secs(300))?;
        let spawn = linux.result("spawn")?;
        let get = |k: &str| {
            spawn[k]
                .as_f64()
                .with_context(|| format!("no {k} in {spawn}"))
        };
        let (linux_med, linux_rate) = (get("median_us")?, get("spawns_per_sec")?);

        let mut t = self.header("boot");
        t += "\n                         started/s   all entered   median start     per guest\n";
        let opt = |v: Option<f64>| v.map_or(format!("{:>9}", "-"), |v| format!("{v:>9.0}"));
        for (f, _) in &ours {
            let label = format!(
                "ours, {} guest{}",
                f.guests,
                if f.guests == 1 { "" } else { "s" }
            );
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

/// A line as JSON, if it is a JSON object.
fn parse_json(line: &str) -> Option<Value> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(Value::is_object)
}

/// Every JSON object line on a console, with the guest that printed it
/// (`NAME| {...}`), or `None` for lines of the hypervisor or of Linux.
pub fn json_lines(console: &str) -> Vec<(Option<&str>, Value)> {
    let is_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
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
    console.lines().find_map(|l| {
        l.trim()
            .strip_prefix("[hv] TSC ")?
            .split_once(" GHz")?
            .0
            .parse()
            .ok()
    })
}

/// The timestamps of one guest's `guest_stats` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStats {
    pub guest: String,
    pub state: String,
    pub created_ns: u64,
    pub first_entry_ns: u64,
}

/// Every `{"event":"guest_stats",...}` line on our console.
pub fn guest_stats(console: &str) -> Vec<GuestStats> {
    json_lines(console)
        .into_iter()
        .filter(|(who, v)| who.is_none() && v["event"] == "guest_stats")
        .filter_map(|(_, v)| {
            Some(GuestStats {
                guest: v["guest"].as_str()?.to_string(),
                state: v["state"].as_str()?.to_string(),
                created_ns: v["created_ns"].as_u64()?,
                first_entry_ns: v["first_entry_ns"].as_u64()?,
            })
        })
        .collect()
}

/// Each guest's `{"bench":"first","ns":...}` line: (guest, monotonic ns at main).
pub fn guest_mains(console: &str) -> Vec<(String, u64)> {
    json_lines(console)
        .into_iter()
        .filter_map(|(who, v)| {
            (v["bench"] == "first").then(|| Some((who?.to_string(), v["ns"].as_u64()?)))?
        })
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
    let mut starts: Vec<f64> = entered
        .iter()
        .map(|s| s.first_entry_ns.saturating_sub(s.created_ns) as f64)
        .collect();
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
        started_per_sec: (n > 1 && last_created > first_created)
            .then(|| n as f64 / ((last_created - first_created) as f64 / 1e9)),
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
            if let Some(r) = n
                .as_f64()
                .and_then(|x| serde_json::Number::from_f64((x * 1e3).round() / 1e3))
            {
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
    let changed = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "hypervisor",
        "libos",
        "apps",
    ]);
    json!({ "commit": commit, "uncommitted_changes": changed.map(|c| !c.is_empty()) })
}

/// `qemu-system-x86_64 --version`'s first line.
fn qemu_version() -> Option<String> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .to_string(),
    )
}

/// `t` as `2026-11-25T20:22:15Z` (UTC).
pub fn iso_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
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
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Where the JSON of `which` goes.
pub fn report_path(which: Which) -> PathBuf {
    workspace_root()
        .join("target/bench")
        .join(format!("{}.json", which.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
{\"event\":\"guest_stats\",\"guest\":\"b-0\",\"state\":\"exited\",\"cpu_ns\":1018460,\"cpu_ns_per_cpu\":[1018460],\"wakeups\":0,\"created_ns\":1000,\"first_entry_ns\":2000}
{\"event\":\"guest_stats\",\"guest\":\"b-1\",\"state\":\"exited\",\"cpu_ns\":1,\"created_ns\":1500,\"first_entry_ns\":3500}
{\"event\":\"guest_stats\",\"guest\":\"b-2\",\"state\":\"stopped\",\"cpu_ns\":1,\"created_ns\":3000,\"first_entry_ns\":9000}
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
        assert_eq!(
            lines[1],
            (None, json!({"bench":"getppid","cycles_per_call":9000.5}))
        );
    }

    #[test]
    fn tsc_rate_from_the_boot_line() {
        assert_eq!(tsc_ghz(OURS), Some(2.454));
        assert_eq!(tsc_ghz("[hv] booting\n"), None);
    }

    #[test]
    fn boot_figures_from_guest_stats() {
        let stats = guest_stats(OURS);
        assert_eq!(stats.len(), 3);
        assert_eq!(
            stats[2],
            GuestStats {
                guest: "b-2".into(),
                state: "stopped".into(),
                created_ns: 3000,
                first_entry_ns: 9000
            }
        );
        let mains = guest_mains(OURS);
        assert_eq!(
            mains,
            [("b-0".to_string(), 2500), ("b-1".to_string(), 4000)]
        );
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
        assert_eq!(
            v,
            json!({"a": 1.235, "b": [2.0, 7], "c": {"d": 0.0}, "e": "x"})
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn dates_are_utc_iso() {
        let at = |s| iso_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_638_393), "2026-11-25T20:26:33Z");
    }
}
