//! `cargo xtask ctl metrics`: the hypervisor's accounting as Prometheus
//! (OpenMetrics text) metrics, from its `list` and `stats` answers, either
//! printed once or served on `GET /metrics`.
//!
//! Every guest ever created appears in `list` (CPU, memory, frames); the
//! finer records (`stats`: limit, drops, limits hit) exist only for guests
//! waiting in the table at that instant, so the exporter keeps the last
//! record it saw of each guest ([`Exporter`]): a series does not vanish
//! while its guest happens to be on a CPU, and a counter never goes back.
//! The encoding is `prometheus-client`'s.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use abi::control::Response;
use abi::report::{GuestRow, GuestState, GuestStats, MachineStats};
use anyhow::{Context as _, Result, bail};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ctl::Instance;

/// The content type of what [`Exporter::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestLabels {
    guest: String,
    /// The tenant's number, or `none` without a vNIC.
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    guest: String,
    tenant: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    guest: String,
    tenant: String,
    /// `rate_limit`, `ring_error`, `uplink_full`, `spoofed`, `rx_full`,
    /// `oversize` or `bad_checksum`.
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabels {
    cpu: String,
}

/// Keeps the last `guest_stats` record of each guest between scrapes.
#[derive(Default)]
pub struct Exporter {
    last: HashMap<String, GuestStats>,
}

impl Exporter {
    /// Asks `inst` for `list` and `stats` and renders the metrics.
    pub fn scrape(&mut self, inst: &Instance) -> Result<String> {
        let list = inst.list()?;
        let (stats, machine) = match inst.request("stats")?.0 {
            Response::Stats { guests, machine } => (guests, machine),
            other => bail!("stats was answered {other:?}"),
        };
        Ok(self.render(&list, &stats, &machine))
    }

    /// The metrics of one scrape: every guest of `list`, its details from
    /// `stats` (or the last record seen), and the machine.
    pub fn render(&mut self, list: &[GuestRow], stats: &[GuestStats], machine: &MachineStats) -> String {
        for s in stats {
            self.last.insert(s.guest.clone(), s.clone());
        }
        let mut reg = <Registry>::with_prefix("hive");
        let counter = |reg: &mut Registry, name: &str, help: &str| {
            let f = Family::<GuestLabels, Counter>::default();
            reg.register(name, help, f.clone());
            f
        };
        let gauge = |reg: &mut Registry, name: &str, help: &str| {
            let f = Family::<GuestLabels, Gauge>::default();
            reg.register(name, help, f.clone());
            f
        };
        let cpu = Family::<GuestLabels, Counter<f64>>::default();
        reg.register("guest_cpu_seconds", "CPU time the guest has run", cpu.clone());
        let memory = gauge(&mut reg, "guest_memory_bytes", "Memory charged to the guest (private pages, rings, page tables)");
        let limit = gauge(&mut reg, "guest_memory_limit_bytes", "The guest's memory limit");
        let sent = counter(&mut reg, "guest_sent_frames", "Frames the guest sent into the switch");
        let received = counter(&mut reg, "guest_received_frames", "Frames the switch delivered to the guest");
        let hypercalls = counter(&mut reg, "guest_hypercalls", "Hypercalls the guest made");
        let console_dropped = counter(&mut reg, "guest_console_dropped_bytes", "Console bytes dropped past the guest's rate limit");
        let kicks_ignored = counter(&mut reg, "guest_kicks_ignored", "Notifications ignored past the guest's rate limit");
        let drops = Family::<DropLabels, Counter>::default();
        reg.register("guest_dropped_frames", "Frames of the guest dropped, by reason", drops.clone());
        let state = Family::<StateLabels, Gauge>::default();
        reg.register("guest_state", "1 for the guest's state (waiting, running, paused, exited, stopped)", state.clone());

        for g in list {
            let l = GuestLabels { guest: g.name.clone(), tenant: g.tenant.map_or("none".into(), |t| t.to_string()) };
            cpu.get_or_create(&l).inc_by(g.cpu_ns as f64 / 1e9);
            memory.get_or_create(&l).set(g.memory_bytes as i64);
            sent.get_or_create(&l).inc_by(g.sent_frames);
            received.get_or_create(&l).inc_by(g.received_frames);
            let s = serde_json::to_value(g.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            state.get_or_create(&StateLabels { guest: l.guest.clone(), tenant: l.tenant.clone(), state: s }).set(1);
            let Some(st) = self.last.get(&g.name) else { continue };
            limit.get_or_create(&l).set(st.memory_limit as i64);
            hypercalls.get_or_create(&l).inc_by(st.hypercalls);
            console_dropped.get_or_create(&l).inc_by(st.console_dropped);
            kicks_ignored.get_or_create(&l).inc_by(st.kicks_ignored);
            for (reason, n) in [
                ("rate_limit", st.nic_limited),
                ("ring_error", st.ring_errors),
                ("uplink_full", st.uplink_dropped),
                ("spoofed", st.spoofed_frames),
                ("rx_full", st.rx_full_drops),
                ("oversize", st.oversize_frames),
                ("bad_checksum", st.bad_checksums),
            ] {
                drops.get_or_create(&DropLabels { guest: l.guest.clone(), tenant: l.tenant.clone(), reason: reason.into() }).inc_by(n);
            }
        }
        // Records of guests no longer listed are not kept.
        self.last.retain(|name, _| list.iter().any(|g| &g.name == name && !matches!(g.state, GuestState::Exited | GuestState::Stopped)));

        let machine_gauge = |reg: &mut Registry, name: &str, help: &str, v: u64| {
            let g = Gauge::<i64>::default();
            g.set(v as i64);
            reg.register(name, help, g);
        };
        machine_gauge(&mut reg, "machine_memory_bytes", "Memory for guests", machine.total_bytes);
        machine_gauge(&mut reg, "machine_memory_free_bytes", "Memory for guests not in use", machine.free_bytes);
        machine_gauge(&mut reg, "machine_heap_bytes", "The hypervisor's own heap", machine.hv_heap_bytes);
        machine_gauge(&mut reg, "machine_heap_used_bytes", "The hypervisor's own heap in use", machine.hv_heap_used_bytes);
        machine_gauge(
            &mut reg,
            "machine_heap_grown_bytes",
            "Memory for guests the hypervisor's heap took as it grew",
            machine.hv_heap_grown_bytes,
        );
        machine_gauge(&mut reg, "machine_guests_live", "Guests created and not yet ended", machine.live);
        let ended = |n: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(n);
            c
        };
        reg.register("machine_guests_exited", "Guests that exited", ended(machine.exited));
        reg.register("machine_guests_stopped", "Guests the hypervisor stopped", ended(machine.stopped));
        reg.register("machine_uplink_interrupts", "Interrupts the uplink raised (MSI-X)", ended(machine.uplink_interrupts));
        reg.register("machine_uplink_polls", "Polls of the uplink no interrupt prompted", ended(machine.uplink_polls));
        reg.register(
            "machine_uplink_notifies",
            "Notifications the uplink's driver sent its device (each an exit in a VM)",
            ended(machine.uplink_notifies),
        );
        reg.register(
            "machine_arp_answered",
            "ARP requests the switch answered itself (guests' and the host's)",
            ended(machine.arp_answered),
        );
        let uptime = Counter::<f64>::default();
        uptime.inc_by(machine.uptime_ns as f64 / 1e9);
        reg.register("machine_uptime_seconds", "Time since the hypervisor booted", uptime);
        let idle = Family::<CpuLabels, Counter<f64>>::default();
        reg.register("machine_cpu_idle_seconds", "Time each CPU spent halted with nothing to run", idle.clone());
        for (i, ns) in machine.cpu_idle_ns.iter().enumerate() {
            idle.get_or_create(&CpuLabels { cpu: i.to_string() }).inc_by(*ns as f64 / 1e9);
        }

        let mut out = String::new();
        // Writing to a String cannot fail; the encoder's only error is fmt's.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// Serves `GET /metrics` on `listen` until the process ends, a scrape of
/// `inst` per request; prints where.
pub fn serve(inst: &Instance, listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
    serve_on(inst, listener)
}

/// [`serve`] on a listener already bound.
pub fn serve_on(inst: &Instance, listener: TcpListener) -> Result<()> {
    let mut exporter = Exporter::default();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // One client's trouble (a slow or garbled request) is its own.
        if let Err(e) = answer(&mut exporter, inst, conn) {
            eprintln!("metrics: {e:#}");
        }
    }
    Ok(())
}

/// Reads one HTTP request (its head, at most 8 KiB, within 5 s) and
/// answers it.
fn answer(exporter: &mut Exporter, inst: &Instance, mut conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).context("reading the request")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(&mut conn, "431 Request Header Fields Too Large", "text/plain", "request head too large\n");
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => match exporter.scrape(inst) {
            Ok(body) => respond(&mut conn, "200 OK", CONTENT_TYPE, &body),
            Err(e) => respond(&mut conn, "503 Service Unavailable", "text/plain", &format!("the hypervisor did not answer: {e:#}\n")),
        },
        (Some("GET"), Some(_)) => respond(&mut conn, "404 Not Found", "text/plain", "see /metrics\n"),
        _ => respond(&mut conn, "400 Bad Request", "text/plain", "GET /metrics\n"),
    }
}

fn respond(conn: &mut TcpStream, status: &str, content_type: &str, body: &str) -> Result<()> {
    write!(conn, "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, tenant: Option<u32>, state: GuestState, cpu_ns: u64, sent: u64) -> GuestRow {
        GuestRow { name: name.into(), tenant, state, cpu_ns, memory_bytes: 90112, sent_frames: sent, received_frames: 2 }
    }

    /// The value of the sample whose line starts with `prefix`.
    fn value(text: &str, prefix: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn guests_and_the_machine_become_series_that_only_grow() {
        let mut e = Exporter::default();
        let stats = GuestStats {
            guest: "web".into(),
            memory_limit: 4 << 20,
            nic_limited: 3,
            spoofed_frames: 1,
            hypercalls: 9,
            ..Default::default()
        };
        let machine = MachineStats {
            total_bytes: 1 << 30,
            free_bytes: 1 << 29,
            cpu_idle_ns: vec![1_500_000_000, 0],
            live: 2,
            uplink_interrupts: 7,
            arp_answered: 5,
            uplink_notifies: 6,
            ..Default::default()
        };
        let list = [row("web", Some(0), GuestState::Waiting, 2_000_000_000, 10), row("h", None, GuestState::Exited, 1, 0)];
        let t = e.render(&list, std::slice::from_ref(&stats), &machine);
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert!(t.contains("# TYPE hive_guest_cpu_seconds counter"), "{t}");
        assert_eq!(value(&t, r#"hive_guest_cpu_seconds_total{guest="web",tenant="0"}"#), 2.0);
        assert_eq!(value(&t, r#"hive_guest_memory_limit_bytes{guest="web",tenant="0"}"#), (4 << 20) as f64);
        assert_eq!(value(&t, r#"hive_guest_dropped_frames_total{guest="web",tenant="0",reason="rate_limit"}"#), 3.0);
        assert_eq!(value(&t, r#"hive_guest_state{guest="h",tenant="none",state="exited"}"#), 1.0);
        assert_eq!(value(&t, r#"hive_machine_cpu_idle_seconds_total{cpu="0"}"#), 1.5);
        assert_eq!(value(&t, "hive_machine_memory_free_bytes "), (1 << 29) as f64);
        assert_eq!(value(&t, "hive_machine_uplink_interrupts_total "), 7.0);
        assert_eq!(value(&t, "hive_machine_uplink_polls_total "), 0.0);
        assert_eq!(value(&t, "hive_machine_uplink_notifies_total "), 6.0);
        assert_eq!(value(&t, "hive_machine_arp_answered_total "), 5.0);
        // Next scrape: web is on a CPU (no stats record): its details stay.
        let list = [row("web", Some(0), GuestState::Running, 3_000_000_000, 12)];
        let t = e.render(&list, &[], &machine);
        assert_eq!(value(&t, r#"hive_guest_sent_frames_total{guest="web",tenant="0"}"#), 12.0);
        assert_eq!(value(&t, r#"hive_guest_hypercalls_total{guest="web",tenant="0"}"#), 9.0);
        // A label value with quotes or a newline is escaped, not broken.
        let t = e.render(&[row("a\"b\nc", None, GuestState::Waiting, 0, 0)], &[], &machine);
        assert!(t.contains(r#"guest="a\"b\nc""#), "{t}");
    }
}
