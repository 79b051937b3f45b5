//! `bench latency`: how late a sleeper wakes beside CPU-bound neighbours,
//! and what they do to an echo round trip. Ours: `apps/bench
//! sleep-lateness N PERIOD_US` beside [`LatencySettings::spinners`]
//! `apps/bench spin` guests (2 per CPU); then `bench net`'s echo pair
//! (`apps/echo-bench` → `apps/echo`) alone and beside the same spinners.
//! Linux: `peer spinning K sleep-lateness N PERIOD_US` (a relative
//! `clock_nanosleep` loop beside K spinning processes), then `peer
//! echo-pair` (`bench net`'s echo server and client over `lo`) alone and
//! under `peer spinning K`. Both sides measure a sleep the same way, after
//! max(N/10, 10) unmeasured ones: read the monotonic clock, sleep the
//! period, read it again; lateness is the wake time less (start + period).

use super::net::{NetSettings, measured_json};
use super::*;

/// The settings of `bench latency`.
#[derive(Clone, Debug)]
pub struct LatencySettings {
    /// Sleeps measured.
    pub iterations: u64,
    pub period_us: u64,
    /// CPU-bound neighbours: 2 per CPU.
    pub spinners: u32,
    /// The echo runs: one connection, `bench net`'s message size.
    pub echo: NetSettings,
}

impl LatencySettings {
    /// 1,000 sleeps of 1 ms and 5 s of echo, or 200 sleeps and 2 s with `quick`.
    pub fn new(quick: bool, smp: u32) -> Self {
        let mut echo = NetSettings::new(quick);
        echo.echo_connections = vec![1];
        echo.echo_ms = if quick { 2_000 } else { 5_000 };
        LatencySettings { iterations: if quick { 200 } else { 1_000 }, period_us: 1_000, spinners: 2 * smp, echo }
    }

    fn json(&self) -> Value {
        json!({
            "sleep": { "iterations": self.iterations, "warmup": (self.iterations / 10).max(10), "period_us": self.period_us },
            "spinners": self.spinners,
            "echo": {
                "connections": 1,
                "message_bytes": self.echo.message_bytes,
                "duration_ms": self.echo.echo_ms,
                "warmup_ms": self.echo.warmup_ms,
                "port": linux::ECHO_PORT,
            },
        })
    }

    /// The Linux peer's commands: the sleeper beside the spinners, the
    /// echo pair alone, the echo pair beside the spinners.
    pub fn linux_commands(&self) -> Vec<String> {
        let echo = format!("echo-pair {} 1 {} {} {}", linux::ECHO_PORT, self.echo.message_bytes, self.echo.echo_ms, self.echo.warmup_ms);
        vec![
            format!("spinning {} sleep-lateness {} {}", self.spinners, self.iterations, self.period_us),
            echo.clone(),
            format!("spinning {} {echo}", self.spinners),
        ]
    }
}

/// `v["latency_us"][key]` or `v["lateness_us"][key]`, in µs.
fn us(v: &Value, key: &str) -> Option<f64> {
    v["lateness_us"][key].as_f64().or_else(|| v["latency_us"][key].as_f64())
}

impl Bench {
    /// Our sleeper beside `spinners`; its `sleep-lateness` line.
    fn ours_sleep(&self, st: &LatencySettings, spinners: &Guest) -> Result<(Vec<String>, Value)> {
        let sleeper = Guest::app("lat", "bench").args(["sleep-lateness".to_string(), st.iterations.to_string(), st.period_us.to_string()]);
        let manifest = Manifest::new([sleeper, spinners.clone()]);
        let mut lines = GuestLines::default();
        let mut result = None;
        let timeout = Duration::from_secs(120 + st.iterations * st.period_us / 100_000);
        let what = format!("{} sleeps of {} µs beside {} spinners", st.iterations, st.period_us, st.spinners);
        let (args, console) = self.ours_live(&what, manifest, timeout, |line| {
            if let Some((who, v)) = lines.push_json(line)
                && who == "lat-0"
                && v["bench"] == "sleep-lateness"
            {
                result = Some(v);
            }
            if guest_ended(line, "lat-0") { Reply::Stop } else { Reply::Continue }
        })?;
        let v = result.with_context(|| {
            format!(
                "apps/bench printed no sleep-lateness result{}\n{}",
                if console.timed_out { " (timed out)" } else { "" },
                console.tail(30)
            )
        })?;
        progress(&format!("  ours: lateness p50 {:.0} µs, p99 {:.0} µs", us(&v, "p50").unwrap_or(0.0), us(&v, "p99").unwrap_or(0.0)));
        Ok((args, v))
    }

    /// `bench latency`: both sides, the table and the report.
    pub(super) fn latency(&self) -> Result<(String, Value)> {
        let st = LatencySettings::new(self.quick, self.machine.smp);
        let spinners = Guest::app("spin", "bench").count(st.spinners).memory(MIB).args(["spin"]);
        let (sleep_args, ours_sleep) = self.ours_sleep(&st, &spinners)?;
        let (echo_args, ours_echo) = self.ours_echo(&st.echo, &[])?;
        let (echo_spin_args, ours_echo_spin) = self.ours_echo(&st.echo, &[spinners])?;
        let secs = st.iterations * st.period_us / 100_000 + 2 * (st.echo.echo_ms + st.echo.warmup_ms) / 1000;
        let linux = self.linux(&st.linux_commands(), Duration::from_secs(300 + secs))?;
        let linux_sleep = linux.result("sleep-lateness")?.clone();
        let linux_echo: Vec<&Value> = linux.results.iter().filter(|v| v["bench"] == "echo").collect();
        let [linux_echo, linux_echo_spin] = linux_echo[..] else {
            bail!("the Linux peer printed {} echo results, not 2", linux_echo.len());
        };
        let first = |m: &[Measured]| m.first().map(measured_json).unwrap_or(Value::Null);
        let (ours_echo, ours_echo_spin) = (first(&ours_echo), first(&ours_echo_spin));

        let (ours_p99, linux_p99) =
            (us(&ours_sleep, "p99").context("no p99 from ours")?, us(&linux_sleep, "p99").context("no p99 from Linux")?);
        let (at_most_linux, under_5ms) = (ours_p99 <= linux_p99, ours_p99 < 5_000.0);
        let mut t = self.header("latency");
        let _ = writeln!(t, "\n{:<40}{:>10} {:>10}", "", "ours", "linux");
        let row = |t: &mut String, label: &str, o: &Value, l: &Value, key: &str| {
            let cell = |v: &Value| us(v, key).map_or(format!("{:>10}", "n/m"), |x| format!("{x:>10.0}"));
            let _ = writeln!(t, "{label:<40}{} {}", cell(o), cell(l));
        };
        for key in ["p50", "p99", "max"] {
            row(&mut t, &format!("sleep 1 ms, lateness {key} (µs)"), &ours_sleep, &linux_sleep, key);
        }
        row(&mut t, "echo round trip p99 (µs), alone", &ours_echo, linux_echo, "p99");
        row(&mut t, "echo round trip p99 (µs), spinners", &ours_echo_spin, linux_echo_spin, "p99");
        let met = |b: bool| if b { "met" } else { "not met" };
        let _ = write!(
            t,
            "goal: lateness p99 <= Linux's ({}) and < 5 ms ({})\n\
             ({} sleeps of {} µs beside {} spinners; echo: 1 connection, {} B, {} ms)",
            met(at_most_linux),
            met(under_5ms),
            st.iterations,
            st.period_us,
            st.spinners,
            st.echo.message_bytes,
            st.echo.echo_ms
        );

        let mut report = self.report("latency", &sleep_args, &linux);
        report["qemu_args"]["ours_echo"] = json!(echo_args);
        report["qemu_args"]["ours_echo_spinners"] = json!(echo_spin_args);
        report["settings"] = st.json();
        report["method"] = json!(
            "sleep: after max(N/10, 10) unmeasured sleeps, each of N sleeps reads the monotonic clock, sleeps the \
             period, reads it again; lateness = wake - (start + period), nearest-rank quantiles. ours: apps/bench sleep-lateness (libos sleep: the block \
             hypercall with a deadline) beside apps/bench spin guests; linux: peer sleep-lateness (relative \
             clock_nanosleep on CLOCK_MONOTONIC) beside peer spin processes. echo: bench net's pair (ours: \
             apps/echo-bench -> apps/echo in one tenant; linux: peer echo-client -> peer echo-server over lo), \
             alone and beside the same spinners."
        );
        report["ours"] = json!({ "sleep": ours_sleep, "echo": ours_echo, "echo_spinners": ours_echo_spin });
        report["linux"] = json!({ "sleep": linux_sleep, "echo": linux_echo, "echo_spinners": linux_echo_spin });
        report["goal"] = json!({
            "lateness_p99_at_most_linux": { "ours_us": ours_p99, "linux_us": linux_p99, "met": at_most_linux },
            "lateness_p99_under_us": { "limit_us": 5_000, "met": under_5ms },
        });
        Ok((t, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_settings_match_on_both_sides() {
        let st = LatencySettings::new(false, 2);
        assert_eq!((st.iterations, st.period_us, st.spinners), (1_000, 1_000, 4));
        assert_eq!(
            st.linux_commands(),
            ["spinning 4 sleep-lateness 1000 1000", "echo-pair 7 1 64 5000 1000", "spinning 4 echo-pair 7 1 64 5000 1000"]
        );
        assert_eq!(st.json()["echo"]["message_bytes"], st.echo.message_bytes);
        assert_eq!(LatencySettings::new(true, 1).spinners, 2);
        let v = json!({"lateness_us": {"p99": 12.5}, "latency_us": {"p50": 3.0}});
        assert_eq!((us(&v, "p99"), us(&v, "p50"), us(&v, "max")), (Some(12.5), Some(3.0), None));
    }
}
