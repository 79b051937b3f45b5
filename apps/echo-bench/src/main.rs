//! Load generators for the echo guest (`apps/echo`):
//!
//! | arguments | what it does |
//! |-----------|--------------|
//! | `IP PORT CONNECTIONS MESSAGE_BYTES DURATION [WARMUP_MS]` | round trips against `echo serve` (below) |
//! | `bulk IP PORT CONNECTIONS[,...] TOTAL_BYTES [CHUNK_BYTES]` | streams TOTAL_BYTES to `echo sink`, split over the connections, in writes of CHUNK_BYTES (256 KiB); prints `{"bench":"bulk","connections":C,"bytes":B,"duration_ms":T,"mbytes_per_sec":M,"gbits_per_sec":G,"errors":E}` per setting (see `bulk`) |
//! | `raw-send FRAME_BYTES[,...] DURATION_MS [WARMUP_MS]` | raw Ethernet frames to `echo raw-sink` as fast as the TX ring allows, per size; prints `{"bench":"switch-send",...}` per size, or `"refused"` for a size the vNIC does not carry (see `raw`) |
//!
//! Round trips: `CONNECTIONS` TCP
//! connections, a task each, each sending a `MESSAGE_BYTES` message and
//! waiting for all of its echo (checked byte for byte) before the next one,
//! round after round, for `DURATION` (milliseconds, e.g. `10000`) or for a
//! count of round trips per connection (e.g. `500x`).
//!
//! ```text
//! echo-bench IP PORT CONNECTIONS MESSAGE_BYTES DURATION [WARMUP_MS]
//! ```
//!
//! Prints one JSON line, then exits 0 (also when there were errors, which
//! the line counts):
//!
//! ```text
//! {"bench":"echo","connections":16,"message_bytes":64,"duration_ms":10004.1,"round_trips":91234,
//!  "round_trips_per_sec":9119.6,"bytes_per_sec":583654.4,
//!  "latency_us":{"p50":1701.4,"p90":2105.3,"p99":3002.1,"max":9123.0,"mean":1742.0},"errors":0}
//! ```
//!
//! `CONNECTIONS` may be a list (`1,16`): each setting runs in turn and
//! prints its own line. The connections are made (retrying for up to 10 s
//! while the server is not yet listening) before the clock starts, and with
//! `WARMUP_MS` they first run that long unmeasured (under TCG the first
//! round trips also pay for translating the code); `duration_ms` runs from
//! the start until the last connection finished its last round trip. A round trip's latency is from just before its write to
//! the end of its echo (`libos::time::Instant`), kept in a log-linear
//! histogram (`loadgen::Histogram`), not sample by sample. `bytes_per_sec` counts
//! payload bytes echoed (each crosses the network twice). An error is a
//! connection that could not be made, ended early, echoed different bytes,
//! or was still stuck 10 s after the end; it stops that connection only.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

mod bulk;
mod raw;

use alloc::rc::Rc;
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

#[derive(Default)]
struct Stats {
    hist: Histogram,
    errors: u64,
    finished: usize,
    last_end: Option<Instant>,
}

/// The connections, by id ([`loadgen::Slots`]).
type Slots = loadgen::Slots<TcpStream>;
type Until = loadgen::Until<Instant>;

/// Connects, retrying while the server is not yet there (refused) for up to `patience`.
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

async fn connection(mut conn: TcpStream, id: usize, len: usize, until: Until, stats: Rc<RefCell<Stats>>, slots: Slots) {
    let mut msg: Vec<u8> = (0..len).map(|j| (j * 7 + id * 13) as u8).collect();
    let mut back = vec![0u8; len];
    let mut round: u64 = 0;
    let ok = 'rounds: loop {
        match until {
            Until::Time(deadline) if Instant::now() >= deadline => break true,
            Until::Count(n) if round >= n => break true,
            _ => {}
        }
        // Vary the message from round to round (its first bytes carry the round).
        for (b, r) in msg.iter_mut().zip(round.to_le_bytes()) {
            *b = r;
        }
        let t0 = Instant::now();
        if conn.write_all(&msg).await.is_err() {
            break false;
        }
        let mut got = 0;
        while got < len {
            match conn.read(&mut back[got..]).await {
                Ok(0) | Err(_) => break 'rounds false,
                Ok(n) => got += n,
            }
        }
        let ns = t0.elapsed().as_nanos() as u64;
        if back != msg {
            break false;
        }
        stats.borrow_mut().hist.record(ns);
        round += 1;
    };
    let mut s = stats.borrow_mut();
    if ok {
        slots.put_back(id, conn);
    } else {
        s.errors += 1; // and `conn` is dropped, which closes it
    }
    s.finished += 1;
    s.last_end = Some(Instant::now());
}

/// What one phase measured.
struct Phase {
    hist: Histogram,
    errors: u64,
    secs: f64,
}

/// Runs every connection in `slots` for `length`.
async fn phase(slots: &Slots, len: usize, length: Length) -> Phase {
    let stats = Rc::new(RefCell::new(Stats::default()));
    let start = Instant::now();
    let until = length.until(start);
    let conns = slots.take_all();
    let running = conns.len();
    for (id, conn) in conns {
        spawn(connection(conn, id, len, until, stats.clone(), slots.clone()));
    }
    // Wait for every connection, giving up on stuck ones.
    let hard = until.give_up(start);
    while stats.borrow().finished < running && Instant::now() < hard {
        sleep(Duration::from_millis(10)).await;
    }
    let mut s = stats.borrow_mut();
    let stuck = (running - s.finished) as u64;
    let end = if stuck > 0 { Instant::now() } else { s.last_end.unwrap_or(start) };
    Phase { hist: core::mem::take(&mut s.hist), errors: s.errors + stuck, secs: end.duration_since(start).as_nanos() as f64 / 1e9 }
}

async fn run(ip: Ipv4, port: u16, connections: usize, len: usize, length: Length, warmup_ms: u64) {
    // Connect everything first, concurrently.
    let connecting: Vec<_> = (0..connections).map(|_| spawn(connect(ip, port, Duration::from_secs(10)))).collect();
    let slots = Slots::new(libos::task::join_all(connecting).await);
    let mut errors = slots.empty() as u64;
    if warmup_ms > 0 {
        errors += phase(&slots, len, Length::Millis(warmup_ms)).await.errors;
    }
    let Phase { hist, errors: phase_errors, secs } = phase(&slots, len, length).await;
    slots.clear(); // closes them
    let trips = hist.count();
    let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    println!(
        "{{\"bench\":\"echo\",\"connections\":{connections},\"message_bytes\":{len},\"duration_ms\":{:.1},\
         \"round_trips\":{trips},\"round_trips_per_sec\":{:.1},\"bytes_per_sec\":{:.1},\"latency_us\":{},\"errors\":{}}}",
        secs * 1e3,
        per_sec(trips as f64),
        per_sec((trips * len as u64) as f64),
        hist.json_us(),
        errors + phase_errors
    );
}

fn usage() -> i32 {
    println!("usage: echo-bench IP PORT CONNECTIONS[,CONNECTIONS...] MESSAGE_BYTES DURATION_MS|COUNTx [WARMUP_MS]");
    2
}

fn numbers(list: &str) -> Option<Vec<usize>> {
    list.split(',').map(|c| c.parse().ok().filter(|&c| c > 0)).collect()
}

async fn main() -> i32 {
    let args: Vec<&str> = libos::args().collect();
    match args[..] {
        ["bulk", ref rest @ ..] => {
            let parsed = match *rest {
                [ip, port, conns, total] => Some((ip, port, conns, total, Some(256 * 1024))),
                [ip, port, conns, total, chunk] => Some((ip, port, conns, total, chunk.parse().ok().filter(|&c| c > 0))),
                _ => None,
            };
            let Some((Ok(ip), Ok(port), Some(conns), Ok(total @ 1..), Some(chunk))) = parsed.map(|(ip, port, conns, total, chunk)| {
                (ip.parse::<Ipv4>(), port.parse::<u16>(), numbers(conns), total.parse::<u64>(), chunk)
            }) else {
                println!("usage: echo-bench bulk IP PORT CONNECTIONS[,CONNECTIONS...] TOTAL_BYTES [CHUNK_BYTES]");
                return 2;
            };
            for c in conns {
                bulk::run(ip, port, c, total, chunk).await;
            }
            return 0;
        }
        ["raw-send", ref rest @ ..] => {
            let parsed = match *rest {
                [sizes, ms] => Some((sizes, ms, Some(0))),
                [sizes, ms, warmup] => Some((sizes, ms, warmup.parse().ok())),
                _ => None,
            };
            let Some((Some(sizes), Ok(ms @ 1..), Some(warmup))) =
                parsed.map(|(sizes, ms, warmup)| (numbers(sizes), ms.parse::<u64>(), warmup))
            else {
                println!("usage: echo-bench raw-send FRAME_BYTES[,FRAME_BYTES...] DURATION_MS [WARMUP_MS]");
                return 2;
            };
            return raw::run(&sizes, ms, warmup).await;
        }
        _ => {}
    }
    let (ip, port, conns, len, duration, warmup) = match args[..] {
        [ip, port, conns, len, duration] => (ip, port, conns, len, duration, "0"),
        [ip, port, conns, len, duration, warmup] => (ip, port, conns, len, duration, warmup),
        _ => return usage(),
    };
    let (Ok(ip), Ok(port), Ok(len), Ok(warmup_ms)) = (ip.parse::<Ipv4>(), port.parse::<u16>(), len.parse::<usize>(), warmup.parse::<u64>())
    else {
        return usage();
    };
    let length = Length::parse(duration);
    let counts = numbers(conns);
    let (Some(length), Some(counts)) = (length, counts) else { return usage() };
    if len == 0 {
        return usage();
    }
    for c in counts {
        run(ip, port, c, len, length, warmup_ms).await;
    }
    0
}
