//! The host's `wrk` against a forwarded port, and its output parsed.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::net::Measured;
#[cfg(test)]
use super::net::rate_of;

/// A duration as wrk prints it (`207.00us`, `1.23ms`, `2.00s`, `1.00m`), in µs.
fn wrk_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// The figures in `wrk --latency` output: requests, requests/s, latency
/// (mean, p50, p75, p90, p99, max, in µs), socket errors and non-2xx/3xx
/// responses. `None` without a `Requests/sec:` line.
pub fn parse_wrk(out: &str) -> Option<Value> {
    let mut rps = None;
    let mut requests = None;
    let mut lat = serde_json::Map::new();
    let mut socket_errors = 0u64;
    let mut non_2xx = 0u64;
    for line in out.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if l.contains(" requests in ") {
            requests = words.first().and_then(|w| w.parse::<u64>().ok());
        } else if words.first() == Some(&"Latency") && words.len() >= 4 {
            if let (Some(mean), Some(max)) = (wrk_us(words[1]), wrk_us(words[3])) {
                lat.insert("mean".into(), json!(mean));
                lat.insert("max".into(), json!(max));
            }
        } else if words.len() == 2
            && let Some(p) = words[0].strip_suffix('%')
            && let Some(us) = wrk_us(words[1])
        {
            let p = p.split('.').next().unwrap_or(p);
            lat.insert(format!("p{p}"), json!(us));
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            socket_errors = rest.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum();
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(0);
        }
    }
    Some(json!({
        "bench": "wrk",
        "requests": requests,
        "requests_per_sec": rps?,
        "latency_us": lat,
        "socket_errors": socket_errors,
        "non_2xx_3xx": non_2xx,
        "errors": socket_errors + non_2xx,
    }))
}

/// Waits (up to `patience`) until 127.0.0.1:`port` answers `GET /` with a
/// status line (QEMU's forward accepts connections before anything listens
/// behind it).
fn wait_for_http(port: u16, patience: Duration) -> std::result::Result<(), String> {
    use std::io::{Read as _, Write as _};
    let give_up = Instant::now() + patience;
    let mut last = String::new();
    while Instant::now() < give_up {
        let attempt = || -> std::io::Result<bool> {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
            let mut buf = [0u8; 16];
            let n = c.read(&mut buf)?;
            Ok(buf[..n].starts_with(b"HTTP/1."))
        };
        match attempt() {
            Ok(true) => return Ok(()),
            Ok(false) => last = "no HTTP status line".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("127.0.0.1:{port} did not answer HTTP within {} s ({last})", patience.as_secs()))
}

/// The host kernel's count of connections that found a listening
/// socket's accept queue full (`TcpExt: ... ListenOverflows` in
/// `/proc/net/netstat`, a header line and a value line).
fn listen_overflows(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The host's `ListenOverflows` now (`None` off Linux, or unreadable).
fn host_listen_overflows() -> Option<u64> {
    listen_overflows(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// Where the host's wrk goes: a port QEMU forwards on 127.0.0.1, or a
/// guest's address through a tap device, from the tap's namespace.
pub(super) enum Target<'a> {
    Forwarded(u16),
    Tap(&'a crate::tap::HostTap, &'static str, u16),
}

impl Target<'_> {
    fn url(&self) -> String {
        match self {
            Target::Forwarded(port) => format!("http://127.0.0.1:{port}/"),
            Target::Tap(_, ip, port) => format!("http://{ip}:{port}/"),
        }
    }

    fn wrk(&self, wrk: &std::path::Path) -> Command {
        match self {
            Target::Forwarded(_) => Command::new(wrk),
            Target::Tap(tap, ..) => tap.command(wrk),
        }
    }
}

/// `wrk` on the host against `target`, after a 1 s warm-up run whose
/// figures are dropped.
///
/// Through a forwarded port the figures carry `listen_overflows`, the
/// host's count of connections that found a listening socket's queue full
/// during the run: QEMU's user network listens for a forwarded port with a
/// backlog of 1 (libslirp's `tcpx_listen`), so of wrk's connections, all
/// opened at once, some wait for the host kernel to retry their handshake,
/// and the first request on each waits with them (about 0.2 to 3 s).
///
/// wrk corrects its latencies for coordinated omission: for each request
/// slower than twice the mean time between requests on a connection (I,
/// the run's length over the requests per connection), it adds samples at
/// I less, 2I less, ... down to I. One stall of S adds about S / I samples,
/// so the same stall moves the p99 of a fast server (small I) more than a
/// slow one's.
pub(super) fn host_wrk(wrk: &std::path::Path, target: &Target, connections: usize, secs: u64) -> Measured {
    let wrk_for = |secs: u64, connections: usize| {
        let mut cmd = target.wrk(wrk);
        cmd.args([
            "-t1".to_string(),
            format!("-c{connections}"),
            format!("-d{secs}s"),
            "--latency".into(),
            "--timeout".into(),
            "5s".into(),
            target.url(),
        ]);
        crate::cmd::echo(&cmd);
        cmd.output().map_err(|e| format!("running wrk: {e}"))
    };
    match target {
        Target::Forwarded(port) => wait_for_http(*port, Duration::from_secs(30))?,
        // From the namespace, wrk itself asks until the server answers.
        Target::Tap(..) => {
            let give_up = Instant::now() + Duration::from_secs(30);
            loop {
                let out = wrk_for(1, 1)?;
                let answered = parse_wrk(&String::from_utf8_lossy(&out.stdout)).is_some_and(|v| v["requests"].as_u64() > Some(0));
                if answered {
                    break;
                }
                if Instant::now() > give_up {
                    return Err(format!("{} did not answer HTTP within 30 s", target.url()));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    wrk_for(1, connections)?;
    let forwarded = matches!(target, Target::Forwarded(_));
    let before = host_listen_overflows().filter(|_| forwarded);
    let out = wrk_for(secs, connections)?;
    let overflows = before.zip(host_listen_overflows()).map(|(b, a)| a.saturating_sub(b));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = parse_wrk(&text)
        .ok_or_else(|| format!("wrk printed no figures: {}{}", text.trim(), String::from_utf8_lossy(&out.stderr).trim()))?;
    if forwarded {
        v["listen_overflows"] = json!(overflows);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_overflows_are_read_from_netstat() {
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops\n\
                       TcpExt: 0 0 4454 4460\n\
                       IpExt: InNoRoutes ListenOverflows\n\
                       IpExt: 0 9\n";
        assert_eq!(listen_overflows(netstat), Some(4454));
        assert_eq!(listen_overflows("TcpExt: SyncookiesSent\nTcpExt: 0\n"), None);
        assert_eq!(listen_overflows("TcpExt: ListenOverflows\n"), None);
        assert_eq!(listen_overflows(""), None);
    }

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 2s test @ http://127.0.0.1:18080/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   227.24us  180.87us   4.49ms   97.50%
    Req/Sec    36.75k     7.06k   53.43k    65.00%
  Latency Distribution
     50%  207.00us
     75%  255.00us
     90%    1.31ms
     99%    2.00s
  72893 requests in 2.00s, 87.80MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  36441.16
Transfer/sec:     43.89MB
";
        let v = parse_wrk(out).unwrap();
        assert_eq!(v["requests"], 72893);
        assert_eq!(v["requests_per_sec"], 36441.16);
        let lat = &v["latency_us"];
        assert_eq!(lat["p50"], 207.0);
        assert_eq!(lat["p90"], 1310.0);
        assert_eq!(lat["p99"], 2e6);
        assert_eq!(lat["mean"], 227.24);
        assert_eq!(lat["max"], 4490.0);
        assert_eq!(v["socket_errors"], 7);
        assert_eq!(v["non_2xx_3xx"], 5);
        assert_eq!(v["errors"], 12);
        assert_eq!(rate_of(&v), Some(36441.16));
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_none());
    }
}
