//! A wrk-like HTTP/1.1 load generator guest: `CONNECTIONS` keep-alive
//! connections, a task each, each sending `GET PATH` and reading the whole
//! response (status line, headers up to the blank line, `Content-Length`
//! bytes of body) before the next request, for `DURATION` (milliseconds, e.g.
//! `10000`) or a count of requests per connection (e.g. `500x`).
//!
//! ```text
//! http-load IP PORT PATH CONNECTIONS DURATION [WARMUP_MS]
//! http-load each N ROUNDS PORT PATH [FIRST]
//! ```
//!
//! | arguments | what it does |
//! |-----------|--------------|
//! | `IP PORT PATH CONNECTIONS DURATION [WARMUP_MS]` | keep-alive load on one server (below) |
//! | `each N ROUNDS PORT PATH [FIRST]` | one request to each of the N guests of its own tenant from the FIRST-th (0: `10.T.0.2`, as `abi::guest_ipv4` numbers them) in turn, a new TCP connection each time, ROUNDS rounds; N = 1 is the same load on one guest. Prints `{"bench":"each","guests":N,"rounds":R,...}` with the fields below (`connections` 1, no `reconnects`) |
//!
//! Prints one JSON line, then exits 0 (errors are counted in the line):
//!
//! ```text
//! {"bench":"http","connections":16,"path":"/","duration_ms":10001.3,"requests":41234,
//!  "requests_per_sec":4122.9,"bytes_per_sec":5012345.0,
//!  "latency_us":{"p50":3801.2,"p90":4410.0,"p99":6120.3,"max":15012.0,"mean":3880.1},
//!  "status":{"200":41234},"errors":0,"reconnects":0}
//! ```
//!
//! `CONNECTIONS` may be a list (`1,16`): each setting runs in turn and
//! prints its own line. Connections are made (retrying for up to 10 s while
//! the server is not yet listening) before the clock starts, and with
//! `WARMUP_MS` they first run that long unmeasured. A request's
//! latency runs from just before its write to the last byte of its
//! response, kept in a log-linear histogram (`loadgen::Histogram`).
//! `bytes_per_sec` counts response bytes (headers and bodies). A response
//! with `Connection: close` makes the connection reconnect (counted in
//! `reconnects`, not an error). An error is a connection that could not be
//! made, a response that is not HTTP/1.x, has no `Content-Length` (chunked
//! bodies are not supported) or headers over 16 KiB, a connection that ends
//! mid-response, or one still stuck 10 s after the end; the connection then
//! reconnects once and carries on, or stops if that fails.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::time::Duration;
use libos::net::{Ipv4, TcpStream};
use libos::println;
use libos::task::{sleep, spawn};
use libos::time::Instant;
use loadgen::{Histogram, Length};

libos::main!(async main);

/// Longest response head (status line and headers) accepted.
const HEAD_MAX: usize = 16 * 1024;

#[derive(Default)]
struct Stats {
    hist: Histogram,
    /// (status, responses), in order of first appearance.
    status: Vec<(u16, u64)>,
    bytes: u64,
    errors: u64,
    reconnects: u64,
    finished: usize,
    last_end: Option<Instant>,
}

async fn connect(ip: Ipv4, port: u16, patience: Duration) -> Option<TcpStream> {
    let give_up = Instant::now().saturating_add(patience);
    loop {
        match TcpStream::connect(ip, port).await {
            Ok(c) => return Some(c),
            Err(_) if Instant::now() < give_up => sleep(Duration::from_millis(100)).await,
            Err(_) => return None,
        }
    }
}

/// What the head of a response says.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: usize,
    close: bool,
}

/// Parses a response head (without its final blank line).
fn parse_head(head: &[u8]) -> Option<Head> {
    let head = core::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.")?;
    let status: u16 = rest.get(2..5)?.parse().ok()?;
    if rest.as_bytes().get(1) != Some(&b' ') {
        return None;
    }
    let mut content_length = None;
    let mut close = rest.starts_with('0');
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    // 1xx, 204 and 304 responses have no body.
    let bodiless = status < 200 || status == 204 || status == 304;
    let content_length = if bodiless { 0 } else { content_length? };
    Some(Head { status, content_length, close })
}

fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from.saturating_sub(3)..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + from.saturating_sub(3))
}

/// One request on `conn`: sends it, reads the whole response. Returns the
/// response's head and its size; bytes after it stay in `buf[..*have]`.
async fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut [u8], have: &mut usize) -> Option<(Head, usize)> {
    conn.write_all(request).await.ok()?;
    // The head.
    let mut scanned = 0;
    let end = loop {
        if let Some(at) = find_blank_line(&buf[..*have], scanned) {
            break at;
        }
        scanned = *have;
        if *have == buf.len() {
            return None; // head too long
        }
        match conn.read(&mut buf[*have..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => *have += n,
        }
    };
    let head = parse_head(&buf[..end])?;
    let head_len = end + 4;
    let total = head_len + head.content_length;
    // The body: whatever of it is buffered, then read and discard the rest.
    let mut body_left = head.content_length;
    let buffered = (*have - head_len).min(body_left);
    body_left -= buffered;
    let used = head_len + buffered;
    buf.copy_within(used..*have, 0);
    *have -= used;
    while body_left > 0 {
        let want = body_left.min(buf.len());
        match conn.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body_left -= n,
        }
    }
    Some((head, total))
}

/// The connections, by id ([`loadgen::Slots`]).
type Slots = loadgen::Slots<TcpStream>;
type Until = loadgen::Until<Instant>;

/// Where a connection's requests go.
#[derive(Clone)]
struct Target {
    ip: Ipv4,
    port: u16,
    request: Rc<Vec<u8>>,
}

async fn connection(mut conn: TcpStream, id: usize, target: Target, until: Until, stats: Rc<RefCell<Stats>>, slots: Slots) {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut have = 0;
    let mut sent: u64 = 0;
    let alive = loop {
        match until {
            Until::Time(deadline) if Instant::now() >= deadline => break true,
            Until::Count(n) if sent >= n => break true,
            _ => {}
        }
        let t0 = Instant::now();
        let result = exchange(&mut conn, &target.request, &mut buf, &mut have).await;
        let ns = t0.elapsed().as_nanos() as u64;
        sent += 1;
        let reconnect = {
            let mut s = stats.borrow_mut();
            match result {
                Some((head, bytes)) => {
                    s.hist.record(ns);
                    s.bytes += bytes as u64;
                    match s.status.iter_mut().find(|(st, _)| *st == head.status) {
                        Some((_, n)) => *n += 1,
                        None => s.status.push((head.status, 1)),
                    }
                    if head.close {
                        s.reconnects += 1;
                    }
                    head.close
                }
                None => {
                    s.errors += 1;
                    true
                }
            }
        };
        if reconnect {
            have = 0;
            match connect(target.ip, target.port, Duration::from_secs(1)).await {
                Some(c) => conn = c, // drops (closes) the old one
                None => {
                    stats.borrow_mut().errors += 1;
                    break false;
                }
            }
        }
    };
    // (No request is outstanding, so nothing is left in `buf`.)
    if alive {
        slots.put_back(id, conn);
    }
    let mut s = stats.borrow_mut();
    s.finished += 1;
    s.last_end = Some(Instant::now());
}

/// Runs every connection in `slots` for `length`; returns the stats and
/// the seconds it took.
async fn phase(slots: &Slots, target: &Target, length: Length) -> (Stats, f64) {
    let stats = Rc::new(RefCell::new(Stats::default()));
    let start = Instant::now();
    let until = length.until(start);
    let conns = slots.take_all();
    let running = conns.len();
    for (id, conn) in conns {
        spawn(connection(conn, id, target.clone(), until, stats.clone(), slots.clone()));
    }
    // Wait for every connection, giving up on stuck ones.
    let hard = until.give_up(start);
    while stats.borrow().finished < running && Instant::now() < hard {
        sleep(Duration::from_millis(10)).await;
    }
    let mut s = stats.borrow_mut();
    let stuck = (running - s.finished) as u64;
    let end = if stuck > 0 { Instant::now() } else { s.last_end.unwrap_or(start) };
    let mut out = core::mem::take(&mut *s);
    out.errors += stuck;
    (out, end.duration_since(start).as_nanos() as f64 / 1e9)
}

async fn run(ip: Ipv4, port: u16, path: &str, connections: usize, length: Length, warmup_ms: u64) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: http-load\r\n\r\n");
    let target = Target { ip, port, request: Rc::new(request.into_bytes()) };
    let connecting: Vec<_> = (0..connections).map(|_| spawn(connect(ip, port, Duration::from_secs(10)))).collect();
    let slots = Slots::new(libos::task::join_all(connecting).await);
    let mut errors = slots.empty() as u64;
    if warmup_ms > 0 {
        errors += phase(&slots, &target, Length::Millis(warmup_ms)).await.0.errors;
    }
    let (s, secs) = phase(&slots, &target, length).await;
    slots.clear(); // closes them
    let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    let status: Vec<String> = s.status.iter().map(|(st, n)| format!("\"{st}\":{n}")).collect();
    let requests = s.hist.count();
    println!(
        "{{\"bench\":\"http\",\"connections\":{connections},\"path\":\"{}\",\"duration_ms\":{:.1},\"requests\":{requests},\
         \"requests_per_sec\":{:.1},\"bytes_per_sec\":{:.1},\"latency_us\":{},\"status\":{{{}}},\"errors\":{},\"reconnects\":{}}}",
        path.escape_default(),
        secs * 1e3,
        per_sec(requests as f64),
        per_sec(s.bytes as f64),
        s.hist.json_us(),
        status.join(","),
        errors + s.errors,
        s.reconnects
    );
}

/// `each`: one request per guest in turn, a new connection each (so each
/// is an ARP lookup, a handshake and an idle guest's wake-up), `rounds`
/// times over `n` guests of this tenant from its `first`-th. A request's
/// latency runs from the connect to the last byte of the response; an
/// error is a connection not made within 10 s or a response not whole.
async fn each(n: u32, rounds: u32, port: u16, path: &str, first: u32) -> i32 {
    let Some(me) = libos::net::ipv4() else {
        println!("each: no network");
        return 2;
    };
    let t = me.octets()[1];
    let mut s = Stats::default();
    let mut buf = vec![0u8; HEAD_MAX];
    let start = Instant::now();
    for _ in 0..rounds {
        for i in 0..n {
            let h = first + i + 2;
            let ip = Ipv4::from([10, t, (h >> 8) as u8, h as u8]);
            let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: http-load\r\n\r\n");
            let t0 = Instant::now();
            // A connection and its exchange get 10 s each: a guest that
            // never answers is an error, not a hang of the whole run.
            let Some(Some(mut conn)) = libos::task::timeout(Duration::from_secs(10), connect(ip, port, Duration::from_secs(10))).await
            else {
                s.errors += 1;
                println!("each: no connection to {ip} within 10 s");
                continue;
            };
            let mut have = 0;
            let answer = libos::task::timeout(Duration::from_secs(10), exchange(&mut conn, request.as_bytes(), &mut buf, &mut have)).await;
            if answer.is_none() {
                println!("each: no whole answer from {ip} within 10 s: {}", conn.describe());
            }
            match answer.flatten() {
                Some((head, bytes)) => {
                    s.hist.record(t0.elapsed().as_nanos() as u64);
                    s.bytes += bytes as u64;
                    match s.status.iter_mut().find(|(st, _)| *st == head.status) {
                        Some((_, k)) => *k += 1,
                        None => s.status.push((head.status, 1)),
                    }
                }
                None => s.errors += 1,
            }
            drop(conn);
        }
    }
    let secs = start.elapsed().as_nanos() as f64 / 1e9;
    let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    let status: Vec<String> = s.status.iter().map(|(st, k)| format!("\"{st}\":{k}")).collect();
    let requests = s.hist.count();
    println!(
        "{{\"bench\":\"each\",\"guests\":{n},\"rounds\":{rounds},\"connections\":1,\"path\":\"{}\",\"duration_ms\":{:.1},\"requests\":{requests},\
         \"requests_per_sec\":{:.1},\"bytes_per_sec\":{:.1},\"latency_us\":{},\"status\":{{{}}},\"errors\":{}}}",
        path.escape_default(),
        secs * 1e3,
        per_sec(requests as f64),
        per_sec(s.bytes as f64),
        s.hist.json_us(),
        status.join(","),
        s.errors
    );
    0
}

fn usage() -> i32 {
    println!("usage: http-load IP PORT PATH CONNECTIONS[,CONNECTIONS...] DURATION_MS|COUNTx [WARMUP_MS]");
    println!("       http-load each N ROUNDS PORT PATH [FIRST]");
    2
}

async fn main() -> i32 {
    let args: Vec<&str> = libos::args().collect();
    if let ["each", n, rounds, port, path, rest @ ..] = &args[..] {
        let first = rest.first().copied().unwrap_or("0");
        let (Ok(n), Ok(rounds), Ok(port), Ok(first)) = (n.parse::<u32>(), rounds.parse::<u32>(), port.parse::<u16>(), first.parse::<u32>())
        else {
            return usage();
        };
        if n == 0 || rest.len() > 1 || !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return usage();
        }
        return each(n, rounds, port, path, first).await;
    }
    let (ip, port, path, conns, duration, warmup) = match args[..] {
        [ip, port, path, conns, duration] => (ip, port, path, conns, duration, "0"),
        [ip, port, path, conns, duration, warmup] => (ip, port, path, conns, duration, warmup),
        _ => return usage(),
    };
    let (Ok(ip), Ok(port), Ok(warmup_ms)) = (ip.parse::<Ipv4>(), port.parse::<u16>(), warmup.parse::<u64>()) else {
        return usage();
    };
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return usage();
    }
    let length = Length::parse(duration);
    let counts: Option<Vec<usize>> = conns.split(',').map(|c| c.parse().ok().filter(|&c| c > 0)).collect();
    let (Some(length), Some(counts)) = (length, counts) else { return usage() };
    for c in counts {
        run(ip, port, path, c, length, warmup_ms).await;
    }
    0
}
