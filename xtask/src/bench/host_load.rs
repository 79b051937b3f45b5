//! The host path's latency without the connection burst: a client on the
//! host that makes its connections through the forwarded port one at a
//! time, each answered once before the next is made, and then keeps every
//! one busy for the run (one request outstanding per connection, each on
//! a thread of its own; a latency runs from the write to the last byte of
//! the answer). `wrk` opens all its connections at once, which QEMU's user
//! network, listening with a backlog of 1, cannot take (see
//! `wrk::host_wrk`): this client measures what the forwarded port does
//! with requests once the connections exist.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::net::Measured;

/// Longest wait for one answer before the connection counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body an answer may announce (the bench's is 1 KiB).
const BODY_MAX: usize = 16 << 20;
/// Longest time to make all the connections.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// The request, a `GET /` that keeps the connection.
fn request(port: u16) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
}

/// Where an HTTP/1.1 response in `buf` ends, once its head is complete:
/// the head's length plus `Content-Length`. `Err` for a response that is
/// not a 200 with a length, or that closes the connection.
fn response_end(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return if buf.len() > 16 * 1024 { Err("a response head over 16 KiB".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "a response head that is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(format!("answered {status:?}"));
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            return Err("the server closes the connection".into());
        }
    }
    let length = length.ok_or("a response without Content-Length")?;
    if length > BODY_MAX {
        return Err(format!("Content-Length {length}, over {BODY_MAX}"));
    }
    Ok(Some(head_len + length))
}

/// One request on `conn` and its whole answer; how long it took.
fn exchange(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<Duration, String> {
    let start = Instant::now();
    conn.write_all(req).map_err(|e| format!("writing: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = response_end(buf)?
            && buf.len() >= end
        {
            // A keep-alive peer sends nothing unasked: more is a fault.
            return if buf.len() == end { Ok(start.elapsed()) } else { Err("bytes past the response".into()) };
        }
        // Each read waits at most ANSWER_TIMEOUT; a server that trickles
        // its answer gets no longer in all.
        if start.elapsed() > ANSWER_TIMEOUT {
            return Err(format!("no whole answer within {} s", ANSWER_TIMEOUT.as_secs()));
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

/// A connection to 127.0.0.1:`port` that has been answered once.
fn connect(port: u16, req: &[u8], give_up: Instant) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut last = String::new();
    let mut buf = Vec::new();
    while Instant::now() < give_up {
        let mut attempt = || -> Result<TcpStream, String> {
            let mut c = TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT).map_err(|e| format!("connecting: {e}"))?;
            c.set_nodelay(true).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| e.to_string())?;
            exchange(&mut c, req, &mut buf)?;
            Ok(c)
        };
        match attempt() {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("no answered connection within {} s: {last}", CONNECT_PATIENCE.as_secs()))
}

/// Latencies in ns, sorted: the value at quantile `q` (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The figures of a run from every connection's latencies (ns) and
/// errors, over `secs` seconds.
fn figures(connections: usize, mut latencies: Vec<u64>, errors: Vec<String>, secs: f64) -> Value {
    latencies.sort_unstable();
    let us = |ns: u64| ns as f64 / 1e3;
    let mean = if latencies.is_empty() { 0 } else { latencies.iter().sum::<u64>() / latencies.len() as u64 };
    json!({
        "bench": "host-load",
        "connections": connections,
        "connect": "one at a time, each answered once first",
        "requests": latencies.len(),
        "requests_per_sec": if secs > 0.0 { latencies.len() as f64 / secs } else { 0.0 },
        "latency_us": {
            "p50": us(quantile(&latencies, 0.5)),
            "p90": us(quantile(&latencies, 0.9)),
            "p99": us(quantile(&latencies, 0.99)),
            "max": us(latencies.last().copied().unwrap_or(0)),
            "mean": us(mean),
        },
        "errors": errors.len(),
        "first_error": errors.first(),
    })
}

/// `connections` connections to 127.0.0.1:`port`, made one at a time,
/// then `secs` seconds of requests on all of them at once.
pub(super) fn host_load(port: u16, connections: usize, secs: u64) -> Measured {
    let req = request(port);
    let give_up = Instant::now() + CONNECT_PATIENCE;
    let conns = (0..connections).map(|_| connect(port, &req, give_up)).collect::<Result<Vec<_>, _>>()?;
    let start_line = Arc::new(Barrier::new(connections + 1));
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (start_line, req) = (start_line.clone(), req.clone());
            std::thread::spawn(move || {
                let (mut latencies, mut buf) = (Vec::new(), Vec::new());
                start_line.wait();
                let end = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < end {
                    match exchange(&mut conn, &req, &mut buf) {
                        Ok(d) => latencies.push(d.as_nanos() as u64),
                        Err(e) => return (latencies, Some(e)),
                    }
                }
                (latencies, None)
            })
        })
        .collect();
    start_line.wait();
    let start = Instant::now();
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    for t in threads {
        let (l, e) = t.join().map_err(|_| "a client thread panicked".to_string())?;
        latencies.extend(l);
        errors.extend(e);
    }
    Ok(figures(connections, latencies, errors, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_ends_after_its_content_length() {
        let ok = b"HTTP/1.1 200 OK\r\nServer: x\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(response_end(ok), Ok(Some(ok.len())));
        assert_eq!(response_end(&ok[..20]), Ok(None));
        assert_eq!(response_end(&ok[..ok.len() - 2]), Ok(Some(ok.len())));
        assert!(response_end(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").unwrap_err().contains("503"));
        assert!(response_end(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(response_end(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(response_end(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(response_end(&[b'a'; 20_000]).is_err());
        assert!(response_end(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n").unwrap_err().contains("over"));
    }

    #[test]
    fn figures_are_exact_quantiles_of_every_request() {
        let v = figures(2, (1..=1000).map(|i| i * 1000).collect(), vec!["reading: reset".into()], 2.0);
        assert_eq!(v["requests"], 1000);
        assert_eq!(v["requests_per_sec"], 500.0);
        assert_eq!(v["latency_us"]["p50"], 500.0);
        assert_eq!(v["latency_us"]["p99"], 990.0);
        assert_eq!(v["latency_us"]["max"], 1000.0);
        assert_eq!(v["errors"], 1);
        assert_eq!(figures(1, Vec::new(), Vec::new(), 0.0)["latency_us"]["max"], 0.0);
    }

    #[test]
    fn a_local_server_is_measured_over_kept_connections() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::thread::spawn(move || {
            let mut n = 0;
            for mut c in listener.incoming().take(3).map(Result::unwrap) {
                n += 1;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(k) = c.read(&mut buf) {
                        if k == 0 || c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                            break;
                        }
                    }
                });
            }
            n
        });
        let v = host_load(port, 3, 1).unwrap();
        assert_eq!(accepted.join().unwrap(), 3, "one connection each, kept");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["requests"].as_u64().unwrap() > 30, "{v}");
    }
}
