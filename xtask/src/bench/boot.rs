//! `bench boot`: how fast guests start. Ours: 1, 100 and 1000 guests of
//! `apps/bench first`, each timed by the hypervisor's `guest_stats`
//! (`created_ns`, `first_entry_ns`); Linux: fork + exec + wait of a static
//! binary (`peer spawn K`).

use super::*;

impl Bench {
    pub(super) fn boot(&self) -> Result<(String, Value)> {
        let (counts, spawns): (&[u32], u32) = if self.quick { (&[1, 10, 100], 50) } else { (&[1, 100, 1000], 1000) };
        let mut ours = Vec::new();
        let mut ours_args = Vec::new();
        for &count in counts {
            let manifest = Manifest::new([Guest::app("b", "bench").count(count).memory(256 * KIB).args(["first"])]);
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

#[cfg(test)]
mod tests {
    use super::console::OURS;
    use super::*;
    use abi::report::GuestState;
    use abi::stop::StopReason;

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
}
