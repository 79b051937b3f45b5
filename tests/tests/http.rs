//! The HTTP guest (`apps/http`) answering a host client through a
//! forwarded port: responses, keep-alive, pipelining, error statuses, and
//! serving on beside idle, slow, garbage-sending and vanishing clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use integration_tests::{Guest, Live, MIB, Manifest, free_port};

/// Boots an http guest with `args` behind host port `port` and waits until
/// it listens.
fn boot(port: u16, args: &[&str], memory: u64) -> Live {
    let mut live = Live::start(Manifest::new([Guest::app("http", "http").memory(memory).args(args).port(port, 80)]), 2);
    assert!(live.wait_for("http-0| http: listening on 10.0.0.2:80", Duration::from_secs(90)), "{}", live.console);
    live
}

/// Runs `checks`; if one fails, shows what the console said as well.
fn with_console(live: &mut Live, checks: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks)) {
        // Collects the lines that are still coming (no line holds a newline).
        live.wait_for("\n", Duration::from_millis(500));
        eprintln!("console:\n{}", live.console);
        std::panic::resume_unwind(e);
    }
}

/// One client connection with a reader that keeps what it has buffered
/// (pipelined responses may arrive together).
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

#[derive(Debug)]
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("Content-Length").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no Content-Length: {self:?}"))
    }
}

impl Conn {
    fn open(port: u16) -> Conn {
        let w = (0..30)
            .find_map(|_| {
                TcpStream::connect(("127.0.0.1", port)).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(500));
                    None
                })
            })
            .expect("connecting to the forwarded port");
        w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        w.set_nodelay(true).unwrap();
        Conn { r: BufReader::new(w.try_clone().unwrap()), w }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("sending a request");
    }

    /// Reads one response; `head_only` for an answer to HEAD.
    fn response(&mut self, head_only: bool) -> Response {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("reading a status line");
        assert!(line.ends_with("\r\n"), "status line {line:?}");
        let status = line.trim_end().to_string();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("reading a header");
            assert!(line.ends_with("\r\n"), "header line {line:?} after {status:?}");
            if line == "\r\n" {
                break;
            }
            let (n, v) = line.trim_end().split_once(": ").unwrap_or_else(|| panic!("header line {line:?}"));
            headers.push((n.to_string(), v.to_string()));
        }
        let mut r = Response { status, headers, body: Vec::new() };
        if !head_only {
            r.body = vec![0; r.content_length()];
            self.r.read_exact(&mut r.body).expect("reading a body");
        }
        r
    }

    /// Sends `req` and reads the response.
    fn get(&mut self, req: &str) -> Response {
        self.send(req.as_bytes());
        self.response(req.starts_with("HEAD "))
    }

    /// Whether the server closed the connection (end of stream or reset,
    /// and nothing else arriving first).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_)) && !matches!(self.r.read(&mut b), Ok(1..))
    }
}

fn page(n: usize) -> Vec<u8> {
    b"hypervisor ".iter().copied().cycle().take(n).collect()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`, the inverse of what the guest uses).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`): its shape, that
/// the weekday fits the date, and that it is now give or take ten minutes.
fn check_date(date: &str) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let b = date.as_bytes();
    let num = |r: std::ops::Range<usize>| -> i64 {
        assert!(b[r.clone()].iter().all(u8::is_ascii_digit), "Date {date:?}");
        date[r].parse().unwrap()
    };
    assert_eq!(b.len(), 29, "Date {date:?}");
    assert!(&date[3..5] == ", " && b[7] == b' ' && b[11] == b' ' && b[16] == b' ', "Date {date:?}");
    assert!(b[19] == b':' && b[22] == b':' && &date[25..] == " GMT", "Date {date:?}");
    let month = MONTHS.iter().position(|m| *m == &date[8..11]).unwrap_or_else(|| panic!("Date {date:?}")) as i64 + 1;
    let (day, year, h, m, s) = (num(5..7), num(12..16), num(17..19), num(20..22), num(23..25));
    assert!((1..=31).contains(&day) && h < 24 && m < 60 && s < 60, "Date {date:?}");
    let days = days_from_civil(year, month, day);
    assert_eq!(DAYS[days.rem_euclid(7) as usize], &date[..3], "weekday of {date:?}");
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((secs - now).abs() < 600, "Date {date:?} is not now ({now})");
}

/// A 200 with the headers every response must have.
fn check_ok(r: &Response, body_len: usize) {
    assert_eq!(r.status, "HTTP/1.1 200 OK", "{r:?}");
    assert_eq!(r.content_length(), body_len, "{r:?}");
    check_date(r.header("Date").unwrap_or_else(|| panic!("no Date: {r:?}")));
    assert!(r.header("Content-Type").is_some_and(|t| t.starts_with("text/plain")), "{r:?}");
    assert!(r.header("Server").is_some(), "{r:?}");
}

#[test]
fn http_guest_answers_get_head_health_keep_alive_pipelining_and_bad_requests() {
    const BODY: usize = 5000; // more than one segment
    let port = free_port();
    let body = BODY.to_string();
    let mut live = boot(port, &["80", &body], 16 * MIB);
    with_console(&mut live, || {
        let host = "Host: test\r\n";

        // GET /, HEAD / and GET /health on one connection: HEAD leaves no body
        // behind, or the next status line would not parse.
        let mut c = Conn::open(port);
        let get = c.get(&format!("GET / HTTP/1.1\r\n{host}\r\n"));
        check_ok(&get, BODY);
        assert!(get.body == page(BODY), "the page is not `hypervisor ` repeated");
        let head = c.get(&format!("HEAD / HTTP/1.1\r\n{host}\r\n"));
        check_ok(&head, BODY);
        assert_eq!(head.header("Content-Type"), get.header("Content-Type"));
        let health = c.get(&format!("GET /health HTTP/1.1\r\n{host}\r\n"));
        check_ok(&health, 3);
        assert_eq!(health.body, b"ok\n");

        // Keep-alive: many more requests on the same connection.
        for i in 0..20 {
            let path = if i % 2 == 0 { "/health" } else { "/" };
            let r = c.get(&format!("GET {path} HTTP/1.1\r\n{host}\r\n"));
            check_ok(&r, if i % 2 == 0 { 3 } else { BODY });
        }

        // Pipelining: three requests in one write, three answers in order.
        c.send(format!("GET /health HTTP/1.1\r\n{host}\r\nGET /missing HTTP/1.1\r\n{host}\r\nGET / HTTP/1.1\r\n{host}\r\n").as_bytes());
        let (a, b, d) = (c.response(false), c.response(false), c.response(false));
        assert_eq!((a.status.as_str(), a.body.as_slice()), ("HTTP/1.1 200 OK", &b"ok\n"[..]), "{a:?}");
        assert_eq!(b.status, "HTTP/1.1 404 Not Found", "{b:?}");
        check_ok(&d, BODY);

        // `Connection: close` is honoured, and so is HTTP/1.0's default.
        let r = c.get(&format!("GET /health HTTP/1.1\r\n{host}Connection: close\r\n\r\n"));
        assert_eq!((r.status.as_str(), r.header("Connection")), ("HTTP/1.1 200 OK", Some("close")), "{r:?}");
        assert!(c.closed(), "the server kept the connection after Connection: close");
        let mut c = Conn::open(port);
        check_ok(&c.get("GET /health HTTP/1.0\r\n\r\n"), 3);
        assert!(c.closed(), "the server kept an HTTP/1.0 connection");
        let mut c = Conn::open(port);
        let r = c.get("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(r.header("Connection"), Some("keep-alive"), "{r:?}");
        check_ok(&c.get("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 3);

        // 404 and 405 keep the connection; a 405's body is skipped.
        let mut c = Conn::open(port);
        let r = c.get(&format!("GET /nope HTTP/1.1\r\n{host}\r\n"));
        assert_eq!(r.status, "HTTP/1.1 404 Not Found", "{r:?}");
        let r = c.get(&format!("POST / HTTP/1.1\r\n{host}Content-Length: 11\r\n\r\nhello world"));
        assert_eq!(r.status, "HTTP/1.1 405 Method Not Allowed", "{r:?}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{r:?}");
        check_ok(&c.get(&format!("GET /health HTTP/1.1\r\n{host}\r\n")), 3);

        // Requests that leave the stream unusable: the status, then close.
        let mut headers = String::new();
        while headers.len() < 9 * 1024 {
            headers.push_str(&format!("X-Filler-{}: {}\r\n", headers.len(), "x".repeat(60)));
        }
        let cases = [
            ("HELLO WORLD\r\n\r\n".to_string(), "HTTP/1.1 400 Bad Request"),
            ("GET / HTTP/one\r\nHost: test\r\n\r\n".to_string(), "HTTP/1.1 400 Bad Request"),
            (format!("GET / HTTP/1.1\r\n{host}Content-Length: ten\r\n\r\n"), "HTTP/1.1 400 Bad Request"),
            ("GET / HTTP/1.1\r\n\r\n".to_string(), "HTTP/1.1 400 Bad Request"), // no Host
            ("GET / HTTP/2.0\r\n\r\n".to_string(), "HTTP/1.1 505 HTTP Version Not Supported"),
            (format!("POST / HTTP/1.1\r\n{host}Content-Length: 100000000\r\n\r\n"), "HTTP/1.1 413 Content Too Large"),
            (format!("GET / HTTP/1.1\r\n{host}{headers}\r\n"), "HTTP/1.1 431 Request Header Fields Too Large"),
        ];
        for (req, status) in cases {
            let mut c = Conn::open(port);
            c.send(req.as_bytes());
            let r = c.response(false);
            assert_eq!(r.status, status, "for {:?}", &req[..req.len().min(60)]);
            assert_eq!(r.header("Connection"), Some("close"), "{r:?}");
            assert_eq!(r.body, format!("{}\n", &status[9..]).as_bytes(), "{r:?}");
            assert!(c.closed(), "the server kept the connection after {status}");
        }
    });
}

#[test]
fn http_guest_keeps_serving_beside_idle_slowloris_garbage_and_abrupt_clients() {
    const IDLE: usize = 200;
    const BODY: usize = 100_000;
    let port = free_port();
    let body = BODY.to_string();
    let mut live = boot(port, &["80", &body, "--idle-timeout", "120", "--header-timeout", "8"], 64 * MIB);
    with_console(&mut live, || {
        let host = "Host: test\r\n";
        let started = Instant::now();

        // A slowloris client: one byte of a header every 200 ms, never done.
        let mut slow = Conn::open(port);
        slow.send(format!("GET / HTTP/1.1\r\n{host}X-Slow: ").as_bytes());
        let mut slow_writer = slow.w.try_clone().unwrap();
        let slow_started = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_dripping = stop.clone();
        let dripping = std::thread::spawn(move || {
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(200));
                if stop_dripping.load(std::sync::atomic::Ordering::Relaxed) || slow_writer.write_all(b"a").is_err() {
                    break;
                }
            }
        });

        // Idle connections that never send. QEMU's user network drops
        // connections that come faster than it accepts them (the client then
        // waits a second to retry), so they are paced.
        let mut idle: Vec<Conn> = (0..IDLE)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(5));
                Conn::open(port)
            })
            .collect();

        // Abrupt disconnects: mid-request head, mid-body, and mid-response.
        let mut c = Conn::open(port);
        c.send(b"GET / HTTP/1.1\r\nHo");
        drop(c);
        let mut c = Conn::open(port);
        c.send(format!("POST / HTTP/1.1\r\n{host}Content-Length: 5000\r\n\r\nonly part").as_bytes());
        drop(c);
        for _ in 0..3 {
            let mut c = Conn::open(port);
            c.send(format!("GET / HTTP/1.1\r\n{host}\r\nGET / HTTP/1.1\r\n{host}\r\n").as_bytes());
            let mut some = [0u8; 100];
            c.r.read_exact(&mut some).expect("the start of a response");
            drop(c);
        }
        // Garbage: binary bytes in place of a request.
        let mut c = Conn::open(port);
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();
        c.send(&garbage);
        assert_eq!(c.response(false).status, "HTTP/1.1 400 Bad Request");

        // A fresh client is served at once, while all that is going on.
        let t = Instant::now();
        let mut c = Conn::open(port);
        check_ok(&c.get(&format!("GET / HTTP/1.1\r\n{host}\r\n")), BODY);
        let fresh = t.elapsed();
        assert!(fresh < Duration::from_secs(3), "a fresh client took {fresh:?}");
        assert!(slow_started.elapsed() < Duration::from_secs(8), "the fresh client came after the slowloris timed out");

        // The slowloris client gets 408 once its head has taken 8 s. (Later
        // is tolerated: on a loaded host the hypervisor's TSC calibration
        // can make the guest's clock run slow.)
        slow.w.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let r = slow.response(false);
        let waited = slow_started.elapsed();
        assert_eq!(r.status, "HTTP/1.1 408 Request Timeout", "{r:?}");
        assert!(waited > Duration::from_secs(7) && waited < Duration::from_secs(60), "408 after {waited:?}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(slow.closed(), "the server kept the slowloris connection");
        dripping.join().unwrap();

        // Every idle connection is still open and served.
        for (i, c) in idle.iter_mut().enumerate() {
            let r = c.get(&format!("GET /health HTTP/1.1\r\n{host}\r\n"));
            assert_eq!(
                (r.status.as_str(), r.body.as_slice()),
                ("HTTP/1.1 200 OK", &b"ok\n"[..]),
                "idle connection {i}, {:?} after the start: {r:?}",
                started.elapsed()
            );
        }
        check_ok(&c.get(&format!("GET / HTTP/1.1\r\n{host}\r\n")), BODY);
    });

    // Nothing went wrong in the guest.
    assert!(!live.wait_for("[hv] guest http-0", Duration::from_millis(200)), "{}", live.console);
    assert!(!live.console.contains("panicked"), "{}", live.console);
}
