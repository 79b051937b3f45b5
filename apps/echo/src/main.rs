//! Echo over TCP and UDP, and a client that checks it.
//!
//! | arguments                     | what it does                                        |
//! |-------------------------------|-----------------------------------------------------|
//! | (none) or `serve [PORT] [N]`  | echoes TCP connections and UDP datagrams on PORT (7); with N, exits 0 once N connections have come and gone |
//! | `client IP N [PORT]`          | sends N messages of mixed sizes over TCP, checks each echo byte for byte, prints the result |
//! | `probe IP [PORT]`             | tries one TCP connection for 2 s; prints `reachable` or `unreachable` |
//! | `later MS [MODE ARG...]`      | sleeps MS milliseconds (time to pause and clone it), prints `later: NAME at IP, generation G` (in a clone: the clone's own), then does what `MODE ARG...` does (without a MODE: exits 0) |
//! | `udp-burst PORT IP:N [IP:N ...]` | sends N numbered 512-byte datagrams to each IP:PORT in turn, waiting for room (never dropping); prints `udp-burst: sent N to IP in T ms` each |
//! | `udp-sink PORT N PAUSE_MS`    | after the first datagram reads nothing for PAUSE_MS (its vNIC ring fills), then counts to N (or 10 s of silence); prints `udp-sink: received K of N, in order` or `with gaps`; exits 0 if all came in order |
//! | `udp-big IP SIZE N [PORT]`    | sends one UDP datagram of SIZE bytes and checks its echo byte for byte (a datagram is one frame: no IP fragments), then does what `client IP N` does |
//! | `check N SAMPLES [PORT] [FIRST]` | echoes with SAMPLES random guests among N of its tenant from its FIRST-th (0: `10.T.0.2`); exits 0 if all answered |
//! | `raw-sink`                    | the switch benchmark's receiver (`echo-bench raw-send`): takes the vNIC from the stack, counts raw frames and bytes per phase, prints `{"bench":"switch","frame_bytes":S,"frames":N,"bytes":B,"sent":S,"lost":L,"duration_ms":T,"frames_per_sec":F,"gbytes_per_sec":G,...}` per phase; exits 0 when the sender is done (see `raw`) |
//! | `sink [PORT] [BUFFER_BYTES]` | the bulk benchmark's receiver (`echo-bench bulk`): reads each TCP connection on PORT (7) into a BUFFER_BYTES (256 KiB) buffer, counting bytes, until the sender finishes; answers the count as 8 bytes (little-endian) and closes; runs forever |
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

mod raw;
mod udp;

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;
use libos::net::{Ipv4, TcpListener, TcpStream, UdpSocket};
use libos::println;
use libos::task::spawn;
use libos::time::Instant;

libos::main!(async main);

fn parse_ip(s: &str) -> Option<Ipv4> {
    let mut o = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut o {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4::from(o))
}

async fn serve(port: u16, max_connections: Option<usize>) -> i32 {
    let Ok(mut listener) = TcpListener::bind(port, 16) else {
        println!("cannot listen on port {port}");
        return 1;
    };
    if let Ok(mut udp) = UdpSocket::bind(port) {
        spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, ip, p)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], ip, p);
            }
        });
    }
    let ip = libos::net::ipv4().map_or([0; 4], |a| a.octets());
    println!("echo: listening on {}.{}.{}.{}:{port} (tcp and udp)", ip[0], ip[1], ip[2], ip[3]);
    let mut served = Vec::new();
    loop {
        if max_connections.is_some_and(|n| served.len() >= n) {
            libos::task::join_all(served).await;
            println!("echo: served {} connections", max_connections.unwrap_or(0));
            return 0;
        }
        match listener.accept().await {
            Ok(mut conn) => {
                served.push(spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // Echo until the peer finishes; back-pressure comes from
                    // write waiting for room in the send buffer.
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    conn.shutdown();
                }));
                if max_connections.is_none() {
                    // Serving forever: finished connections need no handle.
                    served.clear();
                }
            }
            Err(e) => {
                println!("accept failed: {e:?}");
                return 1;
            }
        }
    }
}

/// `sink`: every connection is read to its end into one big buffer (the
/// bytes are counted, not looked at), then answered with the count so that
/// the sender's clock stops when the last byte has arrived.
async fn sink(port: u16, buffer: usize) -> i32 {
    let Ok(mut listener) = TcpListener::bind(port, 16) else {
        println!("cannot listen on port {port}");
        return 1;
    };
    println!("echo: sink on port {port}, reads of {buffer} bytes");
    loop {
        match listener.accept().await {
            Ok(mut conn) => {
                spawn(async move {
                    let mut buf = vec![0u8; buffer];
                    let mut bytes = 0u64;
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        bytes += n as u64;
                    }
                    let _ = conn.write_all(&bytes.to_le_bytes()).await;
                    conn.shutdown();
                });
            }
            Err(e) => {
                println!("accept failed: {e:?}");
                return 1;
            }
        }
    }
}

/// How long a client waits for a server that is still starting (its
/// connection refused) before it gives up.
const PATIENCE: Duration = Duration::from_secs(10);

/// Connects, retrying every 100 ms while the server refuses (it may not
/// listen yet: guests of one machine start in any order) for [`PATIENCE`].
async fn connect(ip: Ipv4, port: u16) -> Result<TcpStream, libos::net::Error> {
    let give_up = Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(ip, port).await {
            Err(_) if Instant::now() < give_up => libos::task::sleep(Duration::from_millis(100)).await,
            done => return done,
        }
    }
}

async fn client(ip: Ipv4, n: u32, port: u16) -> i32 {
    let start = Instant::now();
    let mut conn = match connect(ip, port).await {
        Ok(c) => c,
        Err(e) => {
            println!("client: cannot connect: {e:?}");
            return 1;
        }
    };
    let mut bytes = 0u64;
    let mut back = vec![0u8; 8192];
    for i in 0..n {
        // Mixed sizes from 1 byte to a few segments, with varied contents.
        let len = 1 + (i as usize * 7919) % 6000;
        let msg: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 17) as u8).collect();
        if conn.write_all(&msg).await.is_err() {
            println!("client: write failed at message {i}");
            return 1;
        }
        let mut got = 0;
        while got < len {
            match conn.read(&mut back[got..len]).await {
                Ok(0) | Err(_) => {
                    println!("client: connection ended at message {i}");
                    return 1;
                }
                Ok(k) => got += k,
            }
        }
        if back[..len] != msg[..] {
            println!("client: message {i} came back different");
            return 1;
        }
        bytes += len as u64;
    }
    conn.shutdown();
    println!("client: {n} messages, {bytes} bytes echoed byte-exact in {} ms", start.elapsed().as_millis());
    0
}

/// Sends one `size`-byte datagram to the echo at `ip` and checks that it
/// comes back whole (between guests nothing is lost: smoltcp holds the
/// datagram until ARP answers; it is sent again while the server is not
/// there yet); then echoes `messages` over TCP as
/// `client` does.
async fn udp_big(ip: Ipv4, size: usize, messages: u32, port: u16) -> i32 {
    let Ok(mut udp) = UdpSocket::bind(40_000) else {
        println!("udp-big: cannot bind");
        return 1;
    };
    let msg: Vec<u8> = (0..size).map(|i| (i * 7 + i / 253) as u8).collect();
    let mut back = vec![0u8; 65536];
    // Sent again every 500 ms until the echo comes: the server may not
    // have bound its port yet (guests of one machine start in any order).
    let give_up = Instant::now() + PATIENCE;
    let answer = loop {
        let _ = udp.send_to(&msg, ip, port);
        match libos::task::timeout(Duration::from_millis(500), udp.recv_from(&mut back)).await {
            Some(answer) => break answer,
            None if Instant::now() < give_up => {}
            None => {
                println!("udp-big: no echo in {} s", PATIENCE.as_secs());
                return 1;
            }
        }
    };
    match answer {
        Ok((n, _, _)) if back[..n] == msg[..] => println!("udp-big: {size} bytes echoed whole in one datagram"),
        Ok((n, _, _)) => {
            println!("udp-big: the echo differs ({n} bytes)");
            return 1;
        }
        Err(e) => {
            println!("udp-big: {e:?}");
            return 1;
        }
    }
    client(ip, messages, port).await
}

async fn probe(ip: Ipv4, port: u16) -> i32 {
    let connect = spawn(TcpStream::connect(ip, port));
    libos::task::sleep(Duration::from_secs(2)).await;
    match connect.try_take() {
        Some(Ok(_)) => println!("reachable"),
        _ => println!("unreachable"),
    }
    0
}

/// Echoes a 32-byte message with `ip` twice on one connection: the first
/// round trip in µs from the start of connect (it includes finding the
/// peer's MAC), then the second on the open connection.
async fn echo_twice(ip: Ipv4, port: u16) -> Option<(u64, u64)> {
    let start = Instant::now();
    let mut conn = TcpStream::connect(ip, port).await.ok()?;
    let msg = *b"density check: are you there? ok";
    let mut times = [0u64; 2];
    for t in &mut times {
        let at = Instant::now();
        conn.write_all(&msg).await.ok()?;
        let mut back = [0u8; 32];
        let mut got = 0;
        while got < back.len() {
            match conn.read(&mut back[got..]).await {
                Ok(0) | Err(_) => return None,
                Ok(k) => got += k,
            }
        }
        if back != msg {
            return None;
        }
        *t = at.elapsed().as_micros() as u64;
    }
    conn.shutdown();
    Some((times[0] + (Instant::now().duration_since(start).as_micros() as u64 - times[0] - times[1]), times[1]))
}

/// Echoes with `samples` guests picked at random among `n` of this
/// guest's tenant from its `first`-th, retrying each for up to 30 s (they may still be
/// starting); prints what answered and how fast (first contact, which
/// includes ARP and connecting, and a round trip on the open connection).
async fn check(n: u32, samples: u32, port: u16, first: u32) -> i32 {
    let Some(me) = libos::net::ipv4() else {
        println!("check: no network");
        return 2;
    };
    let t = me.octets()[1];
    let mut x = Instant::now().as_nanos() | 1;
    let (mut firsts, mut rtts) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let h = first + (x % n as u64) as u32 + 2;
        let ip = Ipv4::from([10, t, (h >> 8) as u8, h as u8]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let rtt = loop {
            let attempt = spawn(echo_twice(ip, port));
            let give_up = Instant::now() + Duration::from_secs(3);
            let got = loop {
                if let Some(r) = attempt.try_take() {
                    break r;
                }
                if Instant::now() >= give_up {
                    break None;
                }
                libos::task::sleep(Duration::from_millis(5)).await;
            };
            if got.is_some() || Instant::now() >= deadline {
                break got;
            }
            libos::task::sleep(Duration::from_millis(200)).await;
        };
        match rtt {
            Some((first, rtt)) => {
                firsts.push(first);
                rtts.push(rtt);
            }
            None => println!("check: {ip} did not answer"),
        }
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        (v.get(v.len() / 2).copied().unwrap_or(0), v.last().copied().unwrap_or(0))
    };
    let ((first, first_max), (rtt, rtt_max)) = (median(&mut firsts), median(&mut rtts));
    println!(
        "check: {}/{samples} answered, first contact median {first} us (max {first_max}), round trip median {rtt} us (max {rtt_max})",
        rtts.len()
    );
    if rtts.len() as u32 == samples { 0 } else { 1 }
}

async fn main() -> i32 {
    let all: Vec<&str> = libos::args().collect();
    let args: Vec<&str> = match (all.first().copied(), all.get(1).and_then(|s| s.parse::<u64>().ok())) {
        // The time to pause and clone it (`ctl clone`): what runs after
        // the sleep runs in each clone, under the clone's own identity.
        (Some("later"), Some(ms)) => {
            libos::task::sleep(Duration::from_millis(ms)).await;
            let ip = libos::net::ipv4().map_or(alloc::string::String::from("none"), |ip| alloc::format!("{ip}"));
            println!("later: {} at {ip}, generation {}", libos::name(), libos::generation());
            if all.len() == 2 {
                // Nothing more: a clone that comes and goes.
                return 0;
            }
            all[2..].to_vec()
        }
        (Some("later"), _) => {
            println!("usage: later MS MODE [ARG...]");
            return 2;
        }
        _ => all,
    };
    let port = |i: usize| args.get(i).and_then(|p| p.parse().ok()).unwrap_or(7);
    match args.first().copied() {
        None | Some("serve") => serve(port(1), args.get(2).and_then(|n| n.parse().ok())).await,
        Some("client") => match (args.get(1).and_then(|a| parse_ip(a)), args.get(2).and_then(|a| a.parse().ok())) {
            (Some(ip), Some(n)) => client(ip, n, port(3)).await,
            _ => {
                println!("usage: client IP N [PORT]");
                2
            }
        },
        Some("check") => match (args.get(1).and_then(|a| a.parse().ok()), args.get(2).and_then(|a| a.parse().ok())) {
            (Some(n @ 1..), Some(samples)) => check(n, samples, port(3), args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0)).await,
            _ => {
                println!("usage: check N SAMPLES [PORT] [FIRST]");
                2
            }
        },
        Some("raw-sink") => raw::run().await,
        Some("sink") => match args.get(2).map_or(Some(256 * 1024), |b| b.parse().ok()) {
            Some(buffer @ 1..) => sink(port(1), buffer).await,
            _ => {
                println!("usage: sink [PORT] [BUFFER_BYTES]");
                2
            }
        },
        Some("udp-big") => match (
            args.get(1).and_then(|a| parse_ip(a)),
            args.get(2).and_then(|a| a.parse().ok()),
            args.get(3).and_then(|a| a.parse().ok()),
        ) {
            (Some(ip), Some(size @ 1..=65_507), Some(n)) => udp_big(ip, size, n, port(4)).await,
            _ => {
                println!("usage: udp-big IP SIZE N [PORT]");
                2
            }
        },
        Some("probe") => match args.get(1).and_then(|a| parse_ip(a)) {
            Some(ip) => probe(ip, port(2)).await,
            None => 2,
        },
        Some("udp-burst") => {
            let targets: Option<Vec<(Ipv4, u32)>> = args
                .get(2..)
                .unwrap_or_default()
                .iter()
                .map(|t| t.split_once(':').and_then(|(ip, n)| Some((parse_ip(ip)?, n.parse().ok()?))))
                .collect();
            match (args.get(1).and_then(|p| p.parse().ok()), targets) {
                (Some(port), Some(t)) if !t.is_empty() => udp::burst(port, &t).await,
                _ => {
                    println!("usage: udp-burst PORT IP:N [IP:N ...]");
                    2
                }
            }
        }
        Some("udp-sink") => match (args.get(1).and_then(|a| a.parse().ok()), args.get(2).and_then(|a| a.parse().ok())) {
            (Some(p), Some(n)) => udp::sink(p, n, args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0)).await,
            _ => {
                println!("usage: udp-sink PORT N PAUSE_MS");
                2
            }
        },
        Some(other) => {
            println!("unknown mode {other:?}");
            2
        }
    }
}
