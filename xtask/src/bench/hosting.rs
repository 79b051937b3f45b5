//! `bench hosting`: many small sites in one tenant. [`GUESTS`] `apps/http`
//! guests (500 with `--quick`), each in [`HTTP_MEMORY`], and one load guest
//! (`http-load each N 3 80 /`) that sends one request to each in turn, a
//! new TCP connection each time (ARP through the switch, its tables, the
//! handshake and each idle guest's wake-up are all on the path), three
//! rounds. The baseline is a second boot with one `http` guest and the
//! same number of requests, all to it (`http-load each 1 3N 80 /`). Goal:
//! the many-guest p99 within 10× the one-guest p99, and no failed request.
//! No Linux side: the question is how our switch and scheduler scale with
//! the tenant, not how we compare.

use super::*;
use crate::bench::console::GuestLines;
use serde::Serialize;

/// Guests in the full run, and in `--quick`.
const GUESTS: u32 = 10_000;
const QUICK_GUESTS: u32 = 500;
/// Rounds over all guests.
const ROUNDS: u32 = 3;
/// Each `http` guest's memory limit: the least it serves in (one
/// connection at a time here).
const HTTP_MEMORY: u64 = 320 * KIB;
/// The machine: what the guests need (their limit, rings and page tables
/// are charged within it) plus room for the hypervisor and the uplink.
fn machine_mib(guests: u32) -> u64 {
    (u64::from(guests) * HTTP_MEMORY / MIB + 320).next_multiple_of(64)
}
/// The body each site serves.
const BODY_BYTES: u32 = 1024;
const PORT: u16 = 80;
/// The goal: the many-guest p99 at most this many times the one-guest p99.
const P99_GOAL: f64 = 10.0;

/// One run of `http-load each`, as the guest printed it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct EachRun {
    pub guests: u32,
    pub rounds: u32,
    pub requests: u64,
    pub duration_ms: f64,
    pub requests_per_sec: f64,
    pub latency_us: Latency,
    pub errors: u64,
    /// Wall time of the boot (seconds), guests' creation included.
    #[serde(default)]
    pub boot_wall_s: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// `target/bench/hosting.json`.
#[derive(Debug, Serialize)]
pub struct HostingReport {
    pub bench: &'static str,
    pub date: String,
    pub quick: bool,
    pub machine: Value,
    pub ours_build: Value,
    pub http_memory_bytes: u64,
    pub body_bytes: u32,
    pub qemu_args: Vec<String>,
    /// N guests, one request each per round.
    pub many: EachRun,
    /// One guest, the same number of requests.
    pub one: EachRun,
    /// many.p99 / one.p99.
    pub p99_ratio: f64,
    pub p99_goal: f64,
    pub goal_met: bool,
}

impl Bench {
    /// Boots `http_guests` http guests and the load guest; returns QEMU's
    /// arguments and the load guest's result.
    fn each_run(&self, http_guests: u32, rounds: u32, machine: Machine) -> Result<(Vec<String>, EachRun)> {
        let b = Bench { machine, quick: self.quick, append: self.append.clone() };
        let http = Guest::app("site", "http").count(http_guests).memory(HTTP_MEMORY).ring_slots(4).net().args([
            PORT.to_string(),
            BODY_BYTES.to_string(),
            "--max-connections".into(),
            "2".into(),
        ]);
        let load = Guest::app("load", "http-load").memory(4 * MIB).ring_slots(32).net().args([
            "each".to_string(),
            http_guests.to_string(),
            rounds.to_string(),
            PORT.to_string(),
            "/".into(),
        ]);
        let manifest = Manifest::new([http, load]);
        let mut lines = GuestLines::default();
        let mut result: Option<Value> = None;
        // Under TCG the guests' start dominates (500 took longer than
        // 395 s: the first quick run timed out with all of them listening
        // and no result yet): allow 0.5 s per guest and 0.2 s per request.
        let requests = u64::from(http_guests) * u64::from(rounds);
        let timeout = Duration::from_secs(300 + u64::from(http_guests) / 2 + requests / 5);
        let start = Instant::now();
        let mut listening = 0u32;
        let (args, console) = b.ours_live(&format!("{http_guests} http guests, {requests} requests"), manifest, timeout, |line| {
            // Progress: guests up (every 100th), and what the load guest
            // says about a request that failed.
            if line.contains(": listening on ") {
                listening += 1;
                if listening.is_multiple_of(100) || listening == http_guests {
                    progress(&format!("  {listening} of {http_guests} http guests listening ({:.0} s)", start.elapsed().as_secs_f64()));
                }
            } else if line.starts_with("load-0| each: ") {
                progress(&format!("  {line}"));
            }
            if let Some((who, v)) = lines.push_json(line)
                && who == "load-0"
                && v["bench"] == "each"
            {
                progress(&format!("  {}", describe_result(&v)));
                result = Some(v);
                return Reply::Stop;
            }
            if guest_ended(line, "load-0") { Reply::Stop } else { Reply::Continue }
        })?;
        let wall = start.elapsed().as_secs_f64();
        let Some(v) = result else {
            let why = if console.timed_out { "timed out" } else { "no result" };
            bail!("http-load each → {http_guests} http guests: {why}; console tail:\n{}", console.tail(30));
        };
        let mut run: EachRun = serde_json::from_value(v).context("http-load's line does not read as a result")?;
        run.boot_wall_s = wall;
        Ok((args, run))
    }

    /// `bench hosting`: the table and the report.
    pub(super) fn hosting(&self) -> Result<(String, Value)> {
        let n = if self.quick { QUICK_GUESTS } else { GUESTS };
        let mib = machine_mib(n).max(self.machine.memory_mib);
        let machine = Machine { memory_mib: mib, ..self.machine };
        let (args, many) = self.each_run(n, ROUNDS, machine)?;
        let (_, one) = self.each_run(1, n * ROUNDS, self.machine)?;
        let ratio = if one.latency_us.p99 > 0.0 { many.latency_us.p99 / one.latency_us.p99 } else { f64::INFINITY };
        let goal_met = ratio <= P99_GOAL && many.errors == 0 && one.errors == 0;

        let mut t = format!("bench hosting ({}, {} MiB for the many)", self.machine.describe(), mib);
        let _ = write!(t, "\n  {:<28}{:>14}{:>14}", "", format!("{n} guests"), "1 guest");
        let row = |t: &mut String, name: &str, f: &dyn Fn(&EachRun) -> String| {
            let _ = write!(t, "\n  {name:<28}{:>14}{:>14}", f(&many), f(&one));
        };
        row(&mut t, "requests (failed)", &|r| format!("{} ({})", r.requests, r.errors));
        row(&mut t, "requests/s", &|r| format!("{:.0}", r.requests_per_sec));
        row(&mut t, "latency p50 / p99 (ms)", &|r| format!("{:.1} / {:.1}", r.latency_us.p50 / 1e3, r.latency_us.p99 / 1e3));
        row(&mut t, "latency max (ms)", &|r| format!("{:.1}", r.latency_us.max / 1e3));
        row(&mut t, "boot, wall (s)", &|r| format!("{:.0}", r.boot_wall_s));
        let _ =
            write!(t, "\n  p99 ratio {ratio:.1}x (goal <= {P99_GOAL}x, no failed request): {}", if goal_met { "met" } else { "NOT met" });
        let report = HostingReport {
            bench: "hosting",
            date: iso_date(SystemTime::now()),
            quick: self.quick,
            machine: json!({ "many_memory_mib": mib, "one": Bench { machine, quick: self.quick, append: String::new() }.machine_json() }),
            ours_build: build_info(),
            http_memory_bytes: HTTP_MEMORY,
            body_bytes: BODY_BYTES,
            qemu_args: args,
            many,
            one,
            p99_ratio: ratio,
            p99_goal: P99_GOAL,
            goal_met,
        };
        Ok((t, serde_json::to_value(report)?))
    }
}
