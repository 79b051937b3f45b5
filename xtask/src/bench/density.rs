//! `bench density`: how many idle echo guests fit in a machine, what each
//! costs, how fast they start, what the idle machine spends, and whether
//! memory comes back — against idle busybox `nc` echo processes in the
//! Linux peer.
//!
//! For each machine size (1 and 2 GiB; 512 MiB with `--quick`):
//! 1. a probe boot of [`PROBE`] idle echo guests measures what one costs
//!    (its charged memory) and what is free;
//! 2. the fill boot starts as many as fit (97% of the room), with a
//!    checker guest first in the tenant (`echo check N SAMPLES 7 1`) that
//!    echoes with a random sample through the switch; once all are
//!    listening and the checker has reported, `stats` gives every guest's
//!    accounting, and two `machine` lines 10 s apart give the idle CPU.
//!
//! Then a create/destroy boot creates [`CYCLE`] networked guests that run
//! and exit, and compares free memory before and after. The Linux peer runs
//! `peer density N` (fork+exec of N `busybox nc` echo listeners, memory per
//! process from MemAvailable, PSS and RSS).

use super::*;
use abi::report::{MACHINE_PREFIX, MachineStats};

/// Idle echo guests in the probe boot.
const PROBE: usize = 200;
/// Guests created and destroyed in the create/destroy boot.
const CYCLE: usize = 10_000;
/// Echo guests the checker samples.
const SAMPLES: usize = 20;
/// Listeners the Linux peer starts.
const LINUX_PROCESSES: usize = 1000;
/// The idle-CPU window.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// An idle echo guest: the smallest rings and a limit with room to serve;
/// with `warm`, instance 0 boots and the others are its clones.
fn echo_entry(count: usize, warm: bool) -> Guest {
    let g = Guest::app("e", "echo").count(count as u32).memory(160 * KIB).ring_slots(4).net();
    if warm { g.warm() } else { g }
}

/// `[hv] N clones of TEMPLATE made in X us of hypervisor time (...)`: (N, X).
fn clones_line(console: &str, template: &str) -> Option<(u64, u64)> {
    let made = format!(" clones of {template} made in ");
    console.lines().find_map(|l| {
        let (n, rest) = l.strip_prefix("[hv] ")?.split_once(&made)?;
        Some((n.parse().ok()?, rest.split_whitespace().next()?.parse().ok()?))
    })
}

fn field(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// The `p`-th quantile (0..=1) of `v`, sorted in place.
fn quantile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0)
}

/// `[hv] created N guests in X ms of hypervisor time (...)`: (N, X).
fn created_line(console: &str) -> Option<(u64, u64)> {
    let l = console.lines().find(|l| l.starts_with("[hv] created ") && l.contains(" guests in "))?;
    let mut w = l.split_whitespace();
    let n = w.nth(2)?.parse().ok()?;
    let ms = w.nth(2)?.parse().ok()?;
    Some((n, ms))
}

/// Free KiB at boot less the uplink's queues, and at the end.
fn free_before_after(console: &str) -> Option<(u64, u64)> {
    let boot = console.lines().find(|l| l.contains(" KiB free for guests"))?;
    let free: u64 = boot.split(", ").find(|p| p.contains(" KiB free for guests"))?.split(' ').next()?.parse().ok()?;
    let uplink: u64 = console
        .lines()
        .find(|l| l.starts_with("[hv] uplink: virtio-net "))
        .and_then(|l| l.rsplit(", ").next()?.trim_end_matches(" KiB of queues").parse().ok())
        .unwrap_or(0);
    let end = console.lines().find(|l| l.starts_with("[hv] no guests left: "))?;
    // Free frames, and the frames the hypervisor's heap grew into.
    let after = end.rsplit("; ").next()?.split(", ").map(|p| p.split(' ').next()?.parse::<u64>().ok()).sum::<Option<u64>>()?;
    Some((free - uplink, after))
}

/// What one fill boot measured.
struct Fill {
    memory_mib: u64,
    /// One boot and clones of it (`warm`), or a boot each.
    warm: bool,
    guests: usize,
    started: usize,
    created_ms: u64,
    /// Median and p99, in µs to a tenth (the goal is a bound near 10).
    create_us: (f64, f64),
    boot_cpu_us: (u64, u64),
    /// From the first guest's creation to the last one's first entry.
    all_entered_ms: u64,
    memory: Value,
    check: String,
    checked: (usize, usize),
    idle_pct: f64,
    /// Over the idle window: the uplink's interrupts, and its polls that
    /// no interrupt prompted (CPU 0's loop passes while it is polled).
    uplink: (u64, u64),
    wall_s: f64,
}

impl Bench {
    pub(super) fn density(&self) -> Result<(String, Value)> {
        let sizes: &[u64] = if self.quick { &[512] } else { &[1024, 2048] };
        let mut fills = Vec::new();
        let mut ours_args = Vec::new();
        for &mib in sizes {
            let (args, fill) = self.fill(mib, false)?;
            ours_args = args;
            fills.push(fill);
        }
        // The same, started as one boot and clones of it (issue 18).
        let (_, fill) = self.fill(sizes[0], true)?;
        fills.push(fill);
        let cycle = if self.quick { CYCLE / 5 } else { CYCLE };
        let at = Bench { machine: Machine { memory_mib: 1024, ..self.machine }, quick: self.quick, append: self.append.clone() };
        let run = at.ours(
            &format!("{cycle} networked guests created, run and destroyed"),
            Manifest::new([Guest::app("c", "hello").count(cycle as u32).memory(128 * KIB).ring_slots(2).net()]),
            Duration::from_secs(600),
        )?;
        let (cycle_created, cycle_ms) = created_line(&run.out.console).context("no `created` line in the create/destroy boot")?;
        let (free_before, free_after) = free_before_after(&run.out.console).context("no free-memory lines in the create/destroy boot")?;
        // The same with clones: a template that blocks at once, cloned
        // `cycle` times; each clone wakes, prints its name and exits. (The
        // sleep is long enough that the template's first poll of its
        // network stack, ~10 ms under TCG, cannot outlast it: a template
        // that never blocks is never cloned.)
        let template = Guest::app("t", "echo").memory(128 * KIB).ring_slots(2).net().args(["later", "50"]);
        let clones = Guest::clones("c", &template, cycle as u32);
        let cloned = at.ours(
            &format!("{cycle} clones of a paused guest made, run and destroyed"),
            Manifest::new([template, clones]),
            Duration::from_secs(600),
        )?;
        let (clone_count, clone_us) = clones_line(&cloned.out.console, "t-0").context("no clone line in the clone/destroy boot")?;
        let clone_ran = cloned.out.console.matches("| later: c-").count();
        let (clone_free_before, clone_free_after) =
            free_before_after(&cloned.out.console).context("no free-memory lines in the clone/destroy boot")?;

        let linux = at.linux(&[format!("density {LINUX_PROCESSES}")], Duration::from_secs(900))?;
        let lx = linux.result("density")?.clone();

        // The machine sizes are the columns'; the rest of the setting is
        // the bench's (and `--memory` is not used here).
        let cpus = if self.machine.smp == 1 { "CPU" } else { "CPUs" };
        let mut t = format!("bench density ({}, {} {cpus}, memory per column)\n", self.machine.accel.as_str(), self.machine.smp);
        let cols: Vec<String> = fills.iter().map(|f| format!("{} MiB{}", f.memory_mib, if f.warm { ", clones" } else { "" })).collect();
        let row = |t: &mut String, name: &str, f: &dyn Fn(&Fill) -> String| {
            let _ = write!(t, "\n  {name:<34}");
            for fill in &fills {
                let _ = write!(t, "{:>22}", f(fill));
            }
        };
        let _ = write!(t, "\n  {:<34}", "ours: idle echo guests");
        for c in &cols {
            let _ = write!(t, "{c:>22}");
        }
        row(&mut t, "started (of tried)", &|f| format!("{} ({})", f.started, f.guests));
        row(&mut t, "guests per GiB", &|f| format!("{:.0}", f.started as f64 * 1024.0 / f.memory_mib as f64));
        row(&mut t, "charged per guest (median)", &|f| format!("{} B", f.memory["memory_bytes"]));
        row(&mut t, "  private / rings / tables", &|f| {
            format!(
                "{}/{}/{} K",
                field(&f.memory, "private_bytes") / 1024,
                field(&f.memory, "ring_bytes") / 1024,
                field(&f.memory, "table_bytes") / 1024
            )
        });
        row(&mut t, "  hypervisor record", &|f| format!("{} B", f.memory["hv_bytes"]));
        row(&mut t, "charged, one that served (max)", &|f| format!("{} B", f.memory["max_memory_bytes"]));
        row(&mut t, "  shared (not charged)", &|f| format!("{} K", field(&f.memory, "shared_bytes") / 1024));
        row(&mut t, "create (clone), median / p99", &|f| format!("{:.1} / {:.1} us", f.create_us.0, f.create_us.1));
        row(&mut t, "guest start CPU, median / p99", &|f| format!("{} / {} us", f.boot_cpu_us.0, f.boot_cpu_us.1));
        row(&mut t, "all created (hypervisor time)", &|f| format!("{} ms", f.created_ms));
        row(&mut t, "all entered after", &|f| format!("{} ms", f.all_entered_ms));
        row(&mut t, "sample answered echo", &|f| format!("{}/{}", f.checked.0, f.checked.1));
        row(&mut t, "idle machine CPU", &|f| format!("{:.2} %", f.idle_pct));
        row(&mut t, "  uplink interrupts / polls", &|f| format!("{} / {}", f.uplink.0, f.uplink.1));
        let _ = write!(
            t,
            "\n\n  ours: {cycle_created} networked guests created in {cycle_ms} ms of hypervisor time, run and destroyed; \
             free {free_before} KiB before, {free_after} KiB after ({:.2}% back)",
            free_after as f64 * 100.0 / free_before as f64
        );
        let _ = write!(
            t,
            "\n  ours: {clone_count} clones of a paused guest made in {} ms of hypervisor time ({} us each), {clone_ran} ran and ended; \
             free {clone_free_before} KiB before, {clone_free_after} KiB after ({:.2}% back)",
            clone_us / 1000,
            clone_us / clone_count.max(1),
            clone_free_after as f64 * 100.0 / clone_free_before as f64
        );
        let lx_bytes = field(&lx, "bytes_per_process");
        let _ = write!(
            t,
            "\n  linux: {} idle busybox nc echo processes: {} B each (MemAvailable), PSS {} B, RSS {} B; \
             fork+exec to listening median {} us, fork+exec+exit median {} us",
            lx["processes"], lx_bytes, lx["pss_bytes"], lx["rss_bytes"], lx["spawn_listen_us"]["median"], lx["fork_exec_us"]["median"]
        );
        let ours_bytes = fills.first().map_or(0, |f| field(&f.memory, "memory_bytes") + field(&f.memory, "hv_bytes"));
        if lx_bytes > 0 && ours_bytes > 0 {
            let _ = write!(
                t,
                "\n  memory per idle echo: ours {ours_bytes} B vs linux {lx_bytes} B ({:.1}x less)",
                lx_bytes as f64 / ours_bytes as f64
            );
        }
        t += "\n\n  goals: >= 10,000 idle echo guests per GiB (<= 100 KiB each); 10,000 starts in < 1 s of hypervisor time; \
              idle CPU <= 1%; 100% of memory back. Clones of a warm template: >= 30,000 per GiB, a clone in <= 10 us \
              (median), 10,000 in < 0.2 s.\n";

        let mut report = self.report("density", &ours_args, &linux);
        report["ours"] = json!({
            "fills": fills.iter().map(|f| json!({
                "memory_mib": f.memory_mib,
                "clones_of_a_warm_template": f.warm,
                "tried": f.guests,
                "started": f.started,
                "guests_per_gib": f.started as f64 * 1024.0 / f.memory_mib as f64,
                "per_guest_median": f.memory,
                "create_us": { "median": f.create_us.0, "p99": f.create_us.1 },
                "boot_cpu_us": { "median": f.boot_cpu_us.0, "p99": f.boot_cpu_us.1 },
                "created_ms_hypervisor": f.created_ms,
                "all_entered_ms": f.all_entered_ms,
                "check": f.check,
                "sample": { "answered": f.checked.0, "tried": f.checked.1 },
                "idle_cpu_pct": f.idle_pct,
                "idle_window_s": IDLE_WINDOW.as_secs(),
                "idle_uplink_interrupts": f.uplink.0,
                "idle_uplink_polls": f.uplink.1,
                "wall_s": f.wall_s,
            })).collect::<Vec<_>>(),
            "clone_destroy": {
                "clones": clone_count,
                "ran": clone_ran,
                "cloned_us_hypervisor": clone_us,
                "free_kib_before": clone_free_before,
                "free_kib_after": clone_free_after,
                "wall_s": cloned.wall.as_secs_f64(),
            },
            "create_destroy": {
                "guests": cycle_created,
                "created_ms_hypervisor": cycle_ms,
                "free_kib_before": free_before,
                "free_kib_after": free_after,
                "wall_s": run.wall.as_secs_f64(),
            },
        });
        report["linux"] = lx;
        report["method"] = json!(
            "ours: a probe boot of 200 idle echo guests (160 KiB limit, 4-slot rings) gives the charged memory per guest; \
             the fill boot starts 97% of what fits (the 3% left is what guests that wake and serve take: their ring \
             pages are made at their first frame, a clone copies what it writes), a checker guest echoes with 20 random ones through the switch, \
             `stats` gives each guest's guest_stats line (medians here), and two `machine` lines 10 s apart give idle CPU \
             = 1 - (idle time delta / (uptime delta * CPUs)), and the uplink's interrupts and polls no interrupt prompted \
             over the same window. create/destroy: 10,000 hello guests with vNICs created, run \
             and ended in one boot; free memory at boot (less the uplink's queues) vs. at the end. clones: the same fill with \
             the echo entry warm (instance 0 boots, the rest are its copy-on-write clones), and a boot of 10,000 clones of a \
             paused guest that each wake, print and exit (free memory before and after). linux: `peer density 1000`."
        );
        Ok((t, report))
    }

    /// Probes, then fills a machine of `mib` MiB with idle echo guests
    /// (with `warm`, one boot and clones of it).
    fn fill(&self, mib: u64, warm: bool) -> Result<(Vec<String>, Fill)> {
        let how = if warm { " (one boot, the rest clones)" } else { "" };
        let b = Bench { machine: Machine { memory_mib: mib, ..self.machine }, quick: self.quick, append: self.append.clone() };
        // Probe: what one idle echo guest costs, and what is free.
        let mut listening = 0;
        // (A machine line also comes once the guests are created; only the
        // one after `stats` counts.)
        let (_, probe) = b.ours_live(
            &format!("{PROBE} idle echo guests in {mib} MiB (probe){how}"),
            Manifest::new([echo_entry(PROBE, warm)]),
            Duration::from_secs(300),
            |l| {
                // Clones go on from a template that was listening.
                let before = listening;
                if l.contains("| echo: listening") {
                    listening += 1;
                }
                if let Some((n, _)) = clones_line(l, "e-0") {
                    listening += n as usize;
                }
                if before < PROBE && listening >= PROBE {
                    std::thread::sleep(Duration::from_secs(1));
                    return Reply::Type(b"stats\n".to_vec());
                }
                if listening >= PROBE && l.starts_with(MACHINE_PREFIX) { Reply::Stop } else { Reply::Continue }
            },
        )?;
        let text = probe.console.clone();
        // The dearest idle guest; with `warm`, the dearest clone (the
        // template, e-0, is one guest that owns what its clones share).
        // What guests take when they wake and serve (a clone's copies, its
        // ring pages) comes out of the 3% the fill leaves free: the
        // checked ones show how much (`max_memory_bytes`).
        let per_guest = guest_stats(&text)
            .iter()
            .filter(|s| !warm || s.guest != "e-0")
            .map(|s| s.memory_bytes + s.hv_bytes)
            .max()
            .context("the probe boot printed no guest_stats")?;
        let machine = machine_stats(&text).pop().context("the probe printed no machine line")?;
        let room = machine.free_bytes + PROBE as u64 * per_guest - (2 << 20);
        let guests = ((room as f64 * 0.97) / per_guest as f64) as usize;
        progress(&format!("  an idle echo guest costs {per_guest} B: {guests} fit in {mib} MiB"));

        // Fill.
        let checker = Guest::app("check", "echo").memory(MIB).net().args([
            "check".to_string(),
            guests.to_string(),
            SAMPLES.to_string(),
            "7".into(),
            "1".into(),
        ]);
        let manifest = Manifest::new([checker, echo_entry(guests, warm)]);
        let (mut listening, mut checked, mut machines, mut asked) = (0usize, false, 0, false);
        let start = Instant::now();
        let (args, console) = b.ours_live(
            &format!("{guests} idle echo guests in {mib} MiB{how}"),
            manifest,
            Duration::from_secs(900 + guests as u64 / 10),
            |l| {
                if let Some((n, _)) = clones_line(l, "e-0") {
                    listening += n as usize;
                    progress(&format!("  {l}"));
                }
                if l.contains("| echo: listening") {
                    listening += 1;
                    if listening % 2000 == 0 {
                        progress(&format!("  {listening} listening"));
                    }
                }
                if l.starts_with("check-0| check: ") {
                    checked = true;
                    progress(&format!("  {l}"));
                }
                if asked && l.starts_with(MACHINE_PREFIX) {
                    machines += 1;
                    return match machines {
                        1 => Reply::Type(b"machine\n".to_vec()),
                        2 => {
                            std::thread::sleep(IDLE_WINDOW);
                            Reply::Type(b"machine\n".to_vec())
                        }
                        _ => Reply::Stop,
                    };
                }
                if !asked && checked && listening == guests {
                    asked = true;
                    // Let the last ones settle, then take everyone's accounting.
                    std::thread::sleep(Duration::from_secs(2));
                    return Reply::Type(b"stats\n".to_vec());
                }
                Reply::Continue
            },
        )?;
        let text = console.console.clone();
        if machines < 3 {
            bail!("the fill boot ended early ({listening} of {guests} listening, checker done: {checked}):\n{}", console.tail(30));
        }
        let stats: Vec<GuestStats> = guest_stats(&text).into_iter().filter(|s| s.guest.starts_with("e-")).collect();
        let col = |k: fn(&GuestStats) -> u64| -> Vec<u64> { stats.iter().map(k).collect() };
        let med = |k: fn(&GuestStats) -> u64| quantile(&mut col(k), 0.5);
        let memory = json!({
            "memory_bytes": med(|s| s.memory_bytes),
            "private_bytes": med(|s| s.private_bytes),
            "ring_bytes": med(|s| s.ring_bytes),
            "table_bytes": med(|s| s.table_bytes),
            "shared_bytes": med(|s| s.shared_bytes),
            "hv_bytes": med(|s| s.hv_bytes),
            // The dearest: one the checker talked to.
            "max_memory_bytes": col(|s| s.memory_bytes).into_iter().max().unwrap_or(0),
        });
        // The last three: after `stats`, then the two `machine` requests.
        let machines = machine_stats(&text);
        let (m0, m1) = (&machines[machines.len() - 2], &machines[machines.len() - 1]);
        let idle = |m: &MachineStats| m.cpu_idle_ns.iter().sum::<u64>();
        let cpus = m1.cpu_idle_ns.len().max(1) as f64;
        let busy = 1.0 - (idle(m1) - idle(m0)) as f64 / ((m1.uptime_ns - m0.uptime_ns) as f64 * cpus);
        let check = text.lines().find(|l| l.starts_with("check-0| check: ")).unwrap_or("").trim_start_matches("check-0| ").to_string();
        let answered = check.split_whitespace().nth(1).and_then(|s| s.split_once('/')).and_then(|(a, _)| a.parse().ok()).unwrap_or(0);
        let created: Vec<u64> = col(|s| s.created_ns);
        let entered = col(|s| s.first_entry_ns);
        let fill = Fill {
            memory_mib: mib,
            warm,
            guests,
            started: listening,
            created_ms: created_line(&text).map_or(0, |(_, ms)| ms) + clones_line(&text, "e-0").map_or(0, |(_, us)| us / 1000),
            create_us: {
                let us = |p| (quantile(&mut col(|s| s.create_ns), p) / 100) as f64 / 10.0;
                (us(0.5), us(0.99))
            },
            boot_cpu_us: (quantile(&mut col(|s| s.cpu_ns), 0.5) / 1000, quantile(&mut col(|s| s.cpu_ns), 0.99) / 1000),
            all_entered_ms: (entered.iter().max().unwrap_or(&0) - created.iter().min().unwrap_or(&0)) / 1_000_000,
            memory,
            check,
            checked: (answered, SAMPLES),
            idle_pct: busy.max(0.0) * 100.0,
            uplink: (m1.uplink_interrupts.saturating_sub(m0.uplink_interrupts), m1.uplink_polls.saturating_sub(m0.uplink_polls)),
            wall_s: start.elapsed().as_secs_f64(),
        };
        Ok((args, fill))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_figures() {
        let c = "[hv] 2 CPUs, 1023 MiB RAM, 980108 KiB free for guests; nx=true\n\
                 [hv] uplink: virtio-net 52:54:00:12:34:56, tenant 0, 1052 KiB of queues\n\
                 [hv] created 2000 guests in 593 ms of hypervisor time (296 us each)\n\
                 [hv] 1999 clones of e-0 made in 91234 us of hypervisor time (45640 ns each)\n\
                 [hv] no guests left: 2000 exited, 0 stopped, 0 not started; 977008 KiB free, 2048 KiB taken by the heap\n";
        assert_eq!(created_line(c), Some((2000, 593)));
        assert_eq!(clones_line(c, "e-0"), Some((1999, 91234)));
        assert_eq!(clones_line(c, "t-0"), None);
        assert_eq!(free_before_after(c), Some((979056, 979056)));
        assert_eq!(quantile(&mut [5, 1, 3, 2, 4], 0.5), 3);
        assert_eq!(quantile(&mut [5, 1, 3, 2, 4], 0.99), 5);
        assert_eq!(quantile(&mut [], 0.5), 0);
    }
}
