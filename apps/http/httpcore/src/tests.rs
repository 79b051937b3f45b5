use super::*;

fn complete(buf: &[u8]) -> Request<'_> {
    match parse(buf) {
        Parse::Complete(r) => r,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn invalid(buf: &[u8]) -> Status {
    match parse(buf) {
        Parse::Invalid(s) => s,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

#[test]
fn a_simple_get_parses() {
    let buf = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\nGET / HTTP/1.1\r\n";
    let r = complete(buf);
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.target, b"/health?x=1");
    assert_eq!(r.path, b"/health");
    assert!(r.http11 && r.keep_alive);
    assert_eq!(r.content_length, 0);
    assert_eq!(r.head_len, buf.len() - b"GET / HTTP/1.1\r\n".len());
    assert_eq!(Reply::to(&r).content, Content::Health);
}

#[test]
fn every_prefix_of_a_valid_head_is_incomplete() {
    let buf = b"\r\nHEAD http://example.com HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 5\r\n\r\n";
    for n in 0..buf.len() {
        assert_eq!(parse(&buf[..n]), Parse::Incomplete, "prefix {n}");
    }
    let r = complete(buf);
    assert_eq!((r.method, r.path, r.http11, r.keep_alive, r.content_length), (Method::Head, &b"/"[..], false, true, 5));
    assert_eq!(r.head_len, buf.len());
    let reply = Reply::to(&r);
    assert!(reply.head_only && reply.keep_alive_header && !reply.close);
}

#[test]
fn bare_line_feeds_are_accepted() {
    let r = complete(b"GET / HTTP/1.1\nHost: x\n\n");
    assert_eq!(r.head_len, 24);
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let ka = |s: &str| complete(s.as_bytes()).keep_alive;
    assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, CLOSE\r\n\r\n"));
    assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
    assert!(ka("GET / HTTP/1.0\r\nconnection:keep-alive\r\n\r\n"));
    assert!(ka("GET / HTTP/1.9\r\nHost: a\r\n\r\n"));
}

#[test]
fn routes_and_methods() {
    let reply = |s: &str| Reply::to(&complete(s.as_bytes()));
    assert_eq!(reply("GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, Status::Ok);
    assert_eq!(reply("GET /nope HTTP/1.1\r\nHost: a\r\n\r\n").status, Status::NotFound);
    assert_eq!(reply("get / HTTP/1.1\r\nHost: a\r\n\r\n").status, Status::MethodNotAllowed);
    let post = reply("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!((post.status, post.close), (Status::MethodNotAllowed, false));
}

#[test]
fn malformed_requests_are_400() {
    for bad in [
        "garbage\r\n",
        "GET /\r\n",
        "GET  / HTTP/1.1\r\n",
        "GET / HTTP/1.1 \r\n",
        "GET / http/1.1\r\n",
        "GET / HTTP/11\r\n",
        "GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "\x16\x03\x01\x02\x00",
        "G\x00",
    ] {
        assert_eq!(invalid(bad.as_bytes()), Status::BadRequest, "{bad:?}");
    }
}

#[test]
fn other_errors() {
    assert_eq!(invalid(b"GET / HTTP/2.0\r\n"), Status::VersionNotSupported);
    assert_eq!(invalid(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), Status::NotImplemented);
    let cl = |n: &str| parse(format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").as_bytes()).to_owned_status();
    assert_eq!(cl("65536"), None);
    assert_eq!(cl("65537"), Some(Status::ContentTooLarge));
    assert_eq!(cl("99999999999999999999999999"), Some(Status::ContentTooLarge));
    // The same length twice is fine.
    let r = complete(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\ncontent-length: 007\r\n\r\n");
    assert_eq!(r.content_length, 7);
}

trait OwnedStatus {
    fn to_owned_status(&self) -> Option<Status>;
}
impl OwnedStatus for Parse<'_> {
    fn to_owned_status(&self) -> Option<Status> {
        match self {
            Parse::Invalid(s) => Some(*s),
            _ => None,
        }
    }
}

#[test]
fn oversized_heads_are_431() {
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    while big.len() < HEAD_MAX {
        big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    // Not yet complete, but already too big.
    assert_eq!(invalid(&big[..HEAD_MAX]), Status::HeaderFieldsTooLarge);
    big.extend_from_slice(b"\r\n");
    assert_eq!(invalid(&big), Status::HeaderFieldsTooLarge);
    // Too many fields, however small.
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for _ in 0..HEADERS_MAX {
        many.extend_from_slice(b"a:b\r\n");
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(invalid(&many), Status::HeaderFieldsTooLarge);
    // One fewer fits.
    let n = many.len();
    many.drain(n - 7..n - 2);
    assert!(matches!(parse(&many), Parse::Complete(_)));
    // Empty lines before the request line count too.
    assert_eq!(invalid(&[b'\n'; HEAD_MAX]), Status::HeaderFieldsTooLarge);
}

#[test]
fn no_input_panics() {
    // Every byte string up to 3 bytes over a small alphabet, and a
    // pseudo-random walk, in front of a valid head and alone.
    let alphabet = b"G /\r\n:H1.T\x00\xff";
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..4 {
        let total = alphabet.len().pow(len);
        for mut k in 0..total {
            let mut s = Vec::new();
            for _ in 0..len {
                s.push(alphabet[k % alphabet.len()]);
                k /= alphabet.len();
            }
            let _ = parse(&s);
            s.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let _ = parse(&s);
        }
    }
    for _ in 0..20_000 {
        let mut s = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n".to_vec();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % s.len();
            s[at] = alphabet[(x >> 32) as usize % alphabet.len()];
        }
        if let Parse::Complete(r) = parse(&s) {
            assert!(r.head_len <= s.len());
        }
    }
}

#[test]
fn response_heads() {
    let mut out = [0u8; RESPONSE_HEAD_MAX];
    let req = complete(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    let n = write_head(&mut out, &Reply::to(&req), 1024, 784_111_777, "hv-http");
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 200 OK\r\nServer: hv-http\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: 1024\r\n\r\n"
    );
    let req = complete(b"DELETE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let n = write_head(&mut out, &Reply::to(&req), 3, 0, "hv-http");
    let s = std::str::from_utf8(&out[..n]).unwrap();
    assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{s}");
    assert!(s.contains("\r\nAllow: GET, HEAD\r\n") && s.ends_with("\r\nConnection: close\r\n\r\n"), "{s}");
    let n = write_head(&mut out, &Reply::error(Status::HeaderFieldsTooLarge), usize::MAX, u64::MAX, "hv-http");
    assert!(n < RESPONSE_HEAD_MAX);
    assert!(std::str::from_utf8(&out[..n]).unwrap().contains("Date: Fri, 31 Dec 9999 23:59:59 GMT\r\n"));
}

#[test]
fn the_page_repeats_a_word() {
    let mut p = [0u8; 25];
    fill_page(&mut p);
    assert_eq!(&p, b"hypervisor hypervisor hyp");
}

#[test]
fn dates_match_known_instants() {
    let d = |s| String::from_utf8(imf_fixdate(s).to_vec()).unwrap();
    assert_eq!(d(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(d(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(d(951_782_399), "Mon, 28 Feb 2000 23:59:59 GMT");
    assert_eq!(d(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_eq!(d(1_709_208_000), "Thu, 29 Feb 2024 12:00:00 GMT");
    assert_eq!(d(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    assert_eq!(d(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
}

#[test]
fn civil_dates_agree_with_counting_days() {
    // Walk the calendar a day at a time from 1970 to 2400.
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
    for days in 0..157_000i64 {
        assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
        let month_len = match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        d += 1;
        if d > month_len {
            d = 1;
            m += 1;
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
    }
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}
