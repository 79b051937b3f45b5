//! `bench hypercall`: a null hypercall (`apps/bench hypercall N ROUNDS`,
//! `nop` timed with rdtsc in the guest) against Linux's `getppid` system
//! call (`peer getppid N ROUNDS`), both as the median over rounds, in TSC
//! cycles.

use super::*;

impl Bench {
    pub(super) fn hypercall(&self) -> Result<(String, Value)> {
        let (n, rounds) = if self.quick { (20_000, 3) } else { (200_000, 7) };
        let manifest = Manifest::new([Guest::app("b", "bench").args(["hypercall".to_string(), n.to_string(), rounds.to_string()])]);
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
}
