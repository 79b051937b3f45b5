//! An HTTP/1.1 server: GET and HEAD on `/` (a page of BODY_BYTES bytes,
//! `hypervisor ` repeated) and `/health` (`ok\n`).
//!
//! ```text
//! http [PORT] [BODY_BYTES] [--idle-timeout SECS] [--header-timeout SECS] [--max-connections N] [--backlog N]
//! ```
//!
//! Defaults: port 80, 1024 bytes, 30 s, 10 s, as many connections as the
//! guest's memory allows (about 48 KiB each, see [`CONNECTION_BYTES`]),
//! backlog 64.
//!
//! Each connection is a task with one fixed buffer of
//! [`httpcore::HEAD_MAX`] bytes, so a connection never holds more than that
//! plus its socket. Requests are answered in order, as many as are
//! buffered (pipelining); connections stay open unless the request says
//! otherwise (HTTP/1.1 keep-alive; HTTP/1.0 only with `Connection:
//! keep-alive`). Request bodies (at most 64 KiB, `Content-Length` only) are
//! read and discarded. The protocol itself (parsing, routing, response heads,
//! `Date`) is in the host-tested `httpcore` crate.
//!
//! Slow or dead clients cost only their own connection: one that sends
//! nothing for the idle timeout is closed; one that takes longer than the
//! header timeout to send a request head gets 408 and is closed
//! (slowloris); one that stops reading or sending a body stalls for at
//! most the idle timeout. After an answer that ends the connection
//! (400, 408, 413, 431, 501, 505 or `Connection: close`) the server sends
//! FIN and reads what the client still sends for up to 2 s, so the client
//! sees the answer rather than a reset. Over the connection limit a new
//! connection gets 503 and is closed.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::future::{Future, poll_fn};
use core::pin::{Pin, pin};
use core::task::{Context, Poll};
use core::time::Duration;
use httpcore::{Content, HEAD_MAX, HEALTH_BODY, Parse, RESPONSE_HEAD_MAX, Reply, Status};
use libos::net::{TcpListener, TcpStream};
use libos::println;
use libos::task::{Sleep, sleep_until, spawn};
use libos::time::Instant;

libos::main!(async main);

const SERVER: &str = "hv-http";
/// What one connection is reckoned to cost for the default connection
/// limit: the socket's buffers (2 × 16 KiB), the read buffer and the task.
const CONNECTION_BYTES: u64 = 48 * 1024;
/// Memory kept out of the connection budget: the listener's backlog of
/// sockets, the vNIC rings, the stack's tables.
const RESERVED_BYTES: u64 = 4 * 1024 * 1024;
/// How long a closing connection keeps draining what the client sends.
const LINGER: Duration = Duration::from_secs(2);
/// How much a closing connection drains at most.
const LINGER_BYTES: usize = 256 * 1024;

struct Config {
    page: Vec<u8>,
    idle: Duration,
    header: Duration,
}

/// A deadline that can move without piling up timers: at most one libos
/// timer is armed per `Timer` at a time; when it fires before the
/// (moved) deadline, the next one is armed for the rest.
struct Timer {
    deadline: Instant,
    sleep: Option<(Instant, Sleep)>,
}

impl Timer {
    fn new() -> Self {
        Timer { deadline: Instant::MAX, sleep: None }
    }

    fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if Instant::now() >= self.deadline {
                self.sleep = None;
                return Poll::Ready(());
            }
            match &mut self.sleep {
                // Armed no later than the deadline: wait for it, then look again.
                Some((at, sleep)) if *at <= self.deadline => match Pin::new(sleep).poll(cx) {
                    Poll::Ready(()) => self.sleep = None,
                    Poll::Pending => return Poll::Pending,
                },
                _ => self.sleep = Some((self.deadline, sleep_until(self.deadline))),
            }
        }
    }

    /// Runs `fut` until the deadline; `None` if the deadline came first.
    async fn run<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            self.poll_expired(cx).map(|()| None)
        })
        .await
    }
}

fn after(d: Duration) -> Instant {
    Instant::now().saturating_add(d)
}

/// Writes all of `data`, giving up if the client takes no bytes for the
/// idle timeout.
async fn send(conn: &mut TcpStream, timer: &mut Timer, idle: Duration, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        timer.set(after(idle));
        match timer.run(conn.write(data)).await {
            Some(Ok(n)) => data = &data[n..],
            _ => return Err(()),
        }
    }
    Ok(())
}

/// Sends the response for `reply`.
async fn respond(conn: &mut TcpStream, timer: &mut Timer, cfg: &Config, reply: &Reply) -> Result<(), ()> {
    let body: &[u8] = match reply.content {
        Content::Page => &cfg.page,
        Content::Health => HEALTH_BODY,
        Content::Error => reply.status.error_body().as_bytes(),
    };
    let secs = libos::time::wall_clock_ns() / 1_000_000_000;
    let mut head = [0u8; RESPONSE_HEAD_MAX];
    let n = httpcore::write_head(&mut head, reply, body.len(), secs, SERVER);
    // Head and body go into the socket's buffer in the same turn of the
    // executor, so a small response leaves in one segment.
    send(conn, timer, cfg.idle, &head[..n]).await?;
    if !reply.head_only {
        send(conn, timer, cfg.idle, body).await?;
    }
    Ok(())
}

/// Sends FIN, then reads and drops what the client still sends until it
/// closes, [`LINGER`] passes or [`LINGER_BYTES`] came.
async fn linger(conn: &mut TcpStream, timer: &mut Timer, buf: &mut [u8]) {
    conn.shutdown();
    timer.set(after(LINGER));
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match timer.run(conn.read(buf)).await {
            Some(Ok(n @ 1..)) => drained += n,
            _ => return,
        }
    }
}

/// Serves one connection until it closes.
async fn serve(mut conn: TcpStream, cfg: Rc<Config>) {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut timer = Timer::new();
    // buf[..len] holds bytes received and not yet used.
    let mut len = 0usize;
    // Body bytes of the last request still to discard.
    let mut skip = 0u64;
    // When the first byte of the request head being received came.
    let mut head_started: Option<Instant> = None;
    loop {
        // Answer every complete request buffered, in order.
        let mut start = 0;
        loop {
            if skip > 0 {
                let k = skip.min((len - start) as u64);
                start += k as usize;
                skip -= k;
                if skip > 0 {
                    break;
                }
            }
            if start == len {
                break;
            }
            match httpcore::parse(&buf[start..len]) {
                Parse::Complete(req) => {
                    let reply = Reply::to(&req);
                    start += req.head_len;
                    skip = req.content_length;
                    head_started = None;
                    if respond(&mut conn, &mut timer, &cfg, &reply).await.is_err() {
                        return;
                    }
                    if reply.close {
                        return linger(&mut conn, &mut timer, &mut buf).await;
                    }
                }
                Parse::Incomplete => break,
                Parse::Invalid(status) => {
                    if respond(&mut conn, &mut timer, &cfg, &Reply::error(status)).await.is_ok() {
                        linger(&mut conn, &mut timer, &mut buf).await;
                    }
                    return;
                }
            }
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if len == buf.len() {
            // Cannot happen (parse refuses a full buffer with 431), but a
            // read into no room would look like the end of the stream.
            let _ = respond(&mut conn, &mut timer, &cfg, &Reply::error(Status::HeaderFieldsTooLarge)).await;
            return;
        }
        if len > 0 && skip == 0 {
            head_started.get_or_insert_with(Instant::now);
        }
        // Wait for more: a request head must be complete within the header
        // timeout of its first byte; otherwise a silence of the idle
        // timeout ends the connection.
        let deadline = match head_started {
            Some(t) => t.saturating_add(cfg.header),
            None => after(cfg.idle),
        };
        timer.set(deadline);
        match timer.run(conn.read(&mut buf[len..])).await {
            Some(Ok(n @ 1..)) => len += n,
            // The client finished or vanished.
            Some(_) => return,
            None => {
                if head_started.is_some() {
                    let _ = respond(&mut conn, &mut timer, &cfg, &Reply::error(Status::RequestTimeout)).await;
                }
                return;
            }
        }
    }
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(mut conn: TcpStream, cfg: Rc<Config>) {
    let mut timer = Timer::new();
    if respond(&mut conn, &mut timer, &cfg, &Reply::error(Status::ServiceUnavailable)).await.is_ok() {
        let mut buf = [0u8; 512];
        linger(&mut conn, &mut timer, &mut buf).await;
    }
}

/// Decrements the live-connection count when a connection's task ends.
struct Live(Rc<Cell<usize>>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn usage() -> i32 {
    println!("usage: http [PORT] [BODY_BYTES] [--idle-timeout SECS] [--header-timeout SECS] [--max-connections N] [--backlog N]");
    2
}

async fn main() -> i32 {
    let mut positional = Vec::new();
    let (mut idle, mut header, mut max_conns, mut backlog) = (30u64, 10u64, None, 64usize);
    let mut args = libos::args();
    while let Some(arg) = args.next() {
        let mut value = |slot: &mut u64| match args.next().and_then(|v| v.parse().ok()) {
            Some(v) => {
                *slot = v;
                true
            }
            None => false,
        };
        let ok = match arg {
            "--idle-timeout" => value(&mut idle),
            "--header-timeout" => value(&mut header),
            "--max-connections" => {
                let mut n = 0;
                let ok = value(&mut n);
                max_conns = Some(n as usize);
                ok
            }
            "--backlog" => {
                let mut n = 0;
                let ok = value(&mut n);
                backlog = n as usize;
                ok
            }
            a if a.starts_with("--") => false,
            a => {
                positional.push(a);
                true
            }
        };
        if !ok {
            return usage();
        }
    }
    let port: u16 = match positional.first().map(|p| p.parse()) {
        None => 80,
        Some(Ok(p)) => p,
        Some(Err(_)) => return usage(),
    };
    let body: usize = match positional.get(1).map(|b| b.parse()) {
        None => 1024,
        Some(Ok(b)) => b,
        Some(Err(_)) => return usage(),
    };
    if positional.len() > 2 {
        return usage();
    }
    let limit = libos::start_info().memory_limit;
    let max_conns = max_conns.unwrap_or_else(|| (limit.saturating_sub(RESERVED_BYTES + body as u64) / CONNECTION_BYTES).max(1) as usize);
    let mut page = vec![0u8; body];
    httpcore::fill_page(&mut page);
    let cfg = Rc::new(Config { page, idle: Duration::from_secs(idle), header: Duration::from_secs(header) });

    let mut listener = match TcpListener::bind(port, backlog) {
        Ok(l) => l,
        Err(e) => {
            println!("http: cannot listen on port {port}: {e:?}");
            return 1;
        }
    };
    let ip = libos::net::ipv4().map_or([0; 4], |a| a.octets());
    println!(
        "http: listening on {}.{}.{}.{}:{port} (body {body} bytes, up to {max_conns} connections, idle {idle} s, header {header} s)",
        ip[0], ip[1], ip[2], ip[3]
    );
    let live = Rc::new(Cell::new(0usize));
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                println!("http: accept failed: {e:?}");
                return 1;
            }
        };
        if live.get() >= max_conns {
            spawn(refuse(conn, cfg.clone()));
            continue;
        }
        live.set(live.get() + 1);
        let guard = Live(live.clone());
        let cfg = cfg.clone();
        spawn(async move {
            let _guard = guard;
            serve(conn, cfg).await;
        });
    }
}
