//! Reading the consoles: JSON lines and who printed them, guests' lines
//! joined again, the hypervisor's `guest_stats` lines, its TSC line and the
//! lines that end a guest.

use abi::report::{GUEST_STATS_PREFIX, GuestStats};
use serde_json::Value;

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

/// The lines that end one of our guests: exited, stopped or not started.
pub(super) fn guest_ended(line: &str, guest: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix("[hv] guest ") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(guest) else {
        return false;
    };
    [" exited", " stopped", " not started"].iter().any(|e| rest.starts_with(e))
}

/// A line as JSON, if it is a JSON object.
pub(super) fn parse_json(line: &str) -> Option<Value> {
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

/// A console of our hypervisor for the tests.
#[cfg(test)]
pub(super) const OURS: &str = "\
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A line of exactly GUEST_LINE_MAX bytes ends with an empty piece
    /// (`NAME| `), which completes it: it is not lost waiting for more.
    #[test]
    fn a_line_that_fills_a_piece_exactly_is_joined_by_the_empty_one() {
        let body = format!(r#"{{"bench":"x","pad":"{}"}}"#, "p".repeat(GUEST_LINE_MAX - 22));
        assert_eq!(body.len(), GUEST_LINE_MAX);
        let console = format!("g-0| {body}\ng-0| \ng-0| {{\"bench\":\"y\"}}\n");
        let got = guest_json(&console);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].1["bench"], "x");
        assert_eq!(got[1].1["bench"], "y");
    }

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
    fn machine_records_are_read_typed_and_guests_cannot_forge_them() {
        let m = r#"{"event":"machine","uptime_ns":5,"live":1,"exited":0,"stopped":0,"total_bytes":8,"free_bytes":4,"hv_heap_bytes":2,"hv_heap_used_bytes":1,"cpu_idle_ns":[3,4]}"#;
        let console = format!("[hv] booting\r\n{m}\r\nb-0| {m}\n");
        let got = machine_stats(&console);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].uptime_ns, got[0].free_bytes, got[0].cpu_idle_ns.as_slice()), (5, 4, &[3, 4][..]));
        assert!(guest_stats(&console).is_empty());
    }

    #[test]
    fn tsc_rate_from_the_boot_line() {
        assert_eq!(tsc_ghz(OURS), Some(2.454));
        assert_eq!(tsc_ghz("[hv] booting\n"), None);
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
}
