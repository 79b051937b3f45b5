//! `bench hypercall`: the cost of calls into the hypervisor against the
//! same calls into Linux, in TSC cycles, as the median over rounds
//! (`apps/bench hypercall N ROUNDS` and `peer getppid|poll-ready|clock N
//! ROUNDS`, the same method on both sides). Three rows:
//! - null call: a `nop` hypercall against `syscall(SYS_getppid)` (the goal
//!   row: at most half of Linux);
//! - block with an event pending: a `block` hypercall that returns at once
//!   against `poll` on an eventfd that is readable;
//! - clock: the libos's `Instant::now` (the time page, no hypercall)
//!   against `clock_gettime(CLOCK_MONOTONIC)` (the vDSO, no system call).

use super::*;

/// One row: its label, our `bench` name, the peer's command and `bench`
/// name, and what each side calls.
struct Row {
    label: &'static str,
    key: &'static str,
    ours: &'static str,
    peer_command: &'static str,
    linux: &'static str,
    ours_call: &'static str,
    linux_call: &'static str,
}

const ROWS: [Row; 3] = [
    Row {
        label: "null call",
        key: "null_call",
        ours: "hypercall",
        peer_command: "getppid",
        linux: "getppid",
        ours_call: "nop hypercall (abi::Hypercall::Nop)",
        linux_call: "syscall(SYS_getppid)",
    },
    Row {
        label: "block, event pending",
        key: "block_pending",
        ours: "block_pending",
        peer_command: "poll-ready",
        linux: "poll_ready",
        ours_call: "block hypercall with an event bit already set (returns at once)",
        linux_call: "poll() on a readable eventfd (returns at once)",
    },
    Row {
        label: "clock",
        key: "clock",
        ours: "clock",
        peer_command: "clock",
        linux: "clock_gettime",
        ours_call: "libos::time::Instant::now (time page + rdtsc, no hypercall)",
        linux_call: "clock_gettime(CLOCK_MONOTONIC) (vDSO, no system call)",
    },
];

impl Bench {
    pub(super) fn hypercall(&self) -> Result<(String, Value)> {
        let (n, rounds) = if self.quick { (20_000, 3) } else { (200_000, 7) };
        let manifest = Manifest::new([Guest::app("b", "bench").args(["hypercall".to_string(), n.to_string(), rounds.to_string()])]);
        let ours = self.ours(&format!("bench hypercall {n} × {rounds} rounds"), manifest, Duration::from_secs(180))?;
        let ghz = tsc_ghz(&ours.out.console).context("no `[hv] TSC x.xxx GHz` line")?;
        let ours_lines = json_lines(&ours.out.console);
        let commands: Vec<String> = ROWS.iter().map(|r| format!("{} {n} {rounds}", r.peer_command)).collect();
        let linux = self.linux(&commands, Duration::from_secs(300))?;

        let get = |v: &Value, k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        let mut t = self.header("hypercall");
        let _ = writeln!(t, "\n{:<30} {:>10} {:>10} {:>8}", "", "ours", "linux", "ratio");
        let mut rows = serde_json::Map::new();
        let mut null_ratio = f64::NAN;
        for row in &ROWS {
            let ours_v = ours_lines
                .iter()
                .find(|(who, v)| *who == Some("b-0") && v["bench"] == row.ours)
                .map(|(_, v)| v)
                .with_context(|| format!("apps/bench printed no {} result", row.ours))?;
            let linux_v = linux.result(row.linux)?;
            let (ours_c, linux_c) = (get(ours_v, "cycles_per_call")?, get(linux_v, "cycles_per_call")?);
            let (ours_min, linux_min) = (get(ours_v, "min_cycles_per_call")?, get(linux_v, "min_cycles_per_call")?);
            let ratio = ours_c / linux_c;
            let goal = if row.key == "null_call" {
                null_ratio = ratio;
                "   goal <= 0.5x"
            } else {
                ""
            };
            let _ = writeln!(t, "{:<30} {ours_c:>10.1} {linux_c:>10.1}   {ratio:>5.2}x{goal}", format!("{} (cycles)", row.label));
            let side = |v: &Value, call: &str, c: f64, min: f64| {
                json!({
                    "call": call,
                    "cycles_per_call": c,
                    "min_cycles_per_call": min,
                    "round_cycles_per_call": v["round_cycles_per_call"],
                    "ns_per_call": c / ghz,
                })
            };
            rows.insert(
                row.key.into(),
                json!({
                    "ours": side(ours_v, row.ours_call, ours_c, ours_min),
                    "linux": side(linux_v, row.linux_call, linux_c, linux_min),
                    "ratio": ratio,
                }),
            );
        }
        let _ = write!(
            t,
            "(median of {rounds} rounds of {n} calls at {ghz:.3} GHz; ours: nop, block with an event pending, Instant::now; \
             linux: getppid, poll on a readable eventfd, clock_gettime)"
        );

        let mut report = self.report("hypercall", &ours.qemu_args, &linux);
        report["method"] = json!(format!(
            "per row: warm-up of max(N/10, 1000) calls, then {rounds} rounds of N = {n} calls timed with rdtsc; \
             cycles_per_call is the median over the rounds, min_cycles_per_call the best round"
        ));
        report["tsc_ghz"] = json!(ghz);
        report["iterations"] = json!(n);
        report["rounds"] = json!(rounds);
        report["ours_wall_s"] = json!(ours.wall.as_secs_f64());
        report["rows"] = Value::Object(rows);
        report["ratio"] = json!(null_ratio);
        report["goal"] = json!({ "row": "null_call", "ratio_at_most": 0.5, "met": null_ratio <= 0.5 });
        Ok((t, report))
    }
}
