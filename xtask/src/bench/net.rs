//! `bench net`: echo round trips/s and HTTP requests/s ([`NetSettings`]).
//! Ours: `apps/echo-bench` → `apps/echo` and `apps/http-load` →
//! `apps/http` in one tenant (two boots, each stopped once its load guest is
//! done), and the host's `wrk` through the forwarded port. The Linux side is
//! in [`super::net_linux`]. A part that cannot run is reported as not
//! measured, with the reason, and the rest still runs.

use super::wrk::host_wrk;
use super::*;

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

    pub(super) fn echo_list(&self) -> String {
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
pub(super) struct NetSide {
    /// One per [`NetSettings::echo_connections`].
    pub(super) echo: Vec<Measured>,
    pub(super) http: Measured,
    pub(super) host: Measured,
}

pub(super) fn measured_json(m: &Measured) -> Value {
    match m {
        Ok(v) => v.clone(),
        Err(why) => json!({ "not_measured": why }),
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn rate_of(v: &Value) -> Option<f64> {
    v["round_trips_per_sec"].as_f64().or_else(|| v["requests_per_sec"].as_f64())
}

pub(super) fn describe_result(v: &Value) -> String {
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

impl Bench {
    /// echo-bench → echo in one tenant, beside `neighbours` (e.g. the
    /// spinners of `bench latency`).
    pub(super) fn ours_echo(&self, st: &NetSettings, neighbours: &[Guest]) -> Result<(Vec<String>, Vec<Measured>)> {
        let most = st.echo_connections.iter().copied().max().unwrap_or(1);
        let memory = 16 + most / 8;
        let port = linux::ECHO_PORT;
        let entry = |name: &str, app: &str| Guest::app(name, app).tenant("bench").memory(memory as u64 * MIB).ring_slots(32);
        let manifest = Manifest::new(
            [
                entry("echo", "echo").args(["serve".to_string(), port.to_string()]),
                entry("echo-bench", "echo-bench").args([
                    "10.0.0.2".to_string(),
                    port.to_string(),
                    st.echo_list(),
                    st.message_bytes.to_string(),
                    st.echo_ms.to_string(),
                    st.warmup_ms.to_string(),
                ]),
            ]
            .into_iter()
            .chain(neighbours.iter().cloned()),
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
                if guest_ended(line, "echo-bench-0") || guest_ended(line, "echo-0") { Reply::Stop } else { Reply::Continue }
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
        let port = linux::HTTP_PORT;
        let entry = |name: &str, app: &str| Guest::app(name, app).tenant("bench").memory(memory as u64 * MIB).ring_slots(32);
        let manifest = Manifest::new([
            entry("http", "http").args([port.to_string(), st.body_bytes.to_string()]).port(host_port, port),
            entry("http-load", "http-load").args([
                "10.0.0.2".to_string(),
                port.to_string(),
                "/".into(),
                st.http_connections.to_string(),
                st.http_ms.to_string(),
                st.warmup_ms.to_string(),
            ]),
        ]);
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
                    return Reply::Stop;
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
                    return Reply::Stop;
                }
                Reply::Continue
            })?;
        if http.is_err() {
            let why = if console.timed_out { "timed out" } else { "no result" };
            http = Err(format!("http-load → http: {why}; console tail:\n{}", console.tail(15)));
        }
        Ok((args, http, host))
    }

    /// `bench net`: both sides, the table and the report.
    pub(super) fn net(&self) -> Result<(String, Value)> {
        let st = NetSettings::new(self.quick);
        let (nginx, wrk) = linux::ensure_net_tools();
        let (nginx, wrk) = (nginx.as_deref(), wrk.as_deref());
        let wrk = wrk.map_err(String::as_str);

        let (ours_echo_args, ours_echo) = self.ours_echo(&st, &[])?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
