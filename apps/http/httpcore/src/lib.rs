//! The `http` guest's protocol logic, kept apart from the libos so that it
//! is tested on the host: an HTTP/1.1 request-head parser over a byte
//! buffer, routing, response heads and the IMF-fixdate `Date`.
//!
//! Nothing here allocates or panics on any input. [`parse`] looks at the
//! bytes buffered so far and says whether they start with a complete
//! request head ([`Parse::Complete`]), need more bytes
//! ([`Parse::Incomplete`]) or can never become a valid request
//! ([`Parse::Invalid`], with the status to answer). A request head may be
//! at most [`HEAD_MAX`] bytes with at most [`HEADERS_MAX`] header fields
//! (else 431), and announce a body of at most [`BODY_MAX`] bytes (else
//! 413). Request bodies are only ever skipped: the caller discards
//! [`Request::content_length`] bytes after the head.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use core::fmt::Write as _;

/// Longest request head (request line, header fields, blank line).
pub const HEAD_MAX: usize = 8 * 1024;
/// Most header fields in one request.
pub const HEADERS_MAX: usize = 64;
/// Largest request body announced with `Content-Length`.
pub const BODY_MAX: u64 = 64 * 1024;
/// Room [`write_head`] needs.
pub const RESPONSE_HEAD_MAX: usize = 256;

/// The statuses the server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    NotImplemented,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::ContentTooLarge => 413,
            Status::HeaderFieldsTooLarge => 431,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::ContentTooLarge => "Content Too Large",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// The body sent with an error status: e.g. `404 Not Found\n`.
    pub fn error_body(self) -> &'static str {
        match self {
            Status::Ok => "200 OK\n",
            Status::BadRequest => "400 Bad Request\n",
            Status::NotFound => "404 Not Found\n",
            Status::MethodNotAllowed => "405 Method Not Allowed\n",
            Status::RequestTimeout => "408 Request Timeout\n",
            Status::ContentTooLarge => "413 Content Too Large\n",
            Status::HeaderFieldsTooLarge => "431 Request Header Fields Too Large\n",
            Status::NotImplemented => "501 Not Implemented\n",
            Status::ServiceUnavailable => "503 Service Unavailable\n",
            Status::VersionNotSupported => "505 HTTP Version Not Supported\n",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other well-formed method token (answered 405).
    Other,
}

/// A complete, valid request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The request target as sent.
    pub target: &'a [u8],
    /// The path of the target: without query, and without scheme and
    /// authority for an absolute-form target.
    pub path: &'a [u8],
    /// HTTP/1.1 (or a later 1.x); false for HTTP/1.0.
    pub http11: bool,
    /// Whether the connection stays open after the response: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Body bytes that follow the head (at most [`BODY_MAX`]).
    pub content_length: u64,
    /// Bytes of the head, including any empty lines before the request
    /// line and the blank line that ends it.
    pub head_len: usize,
}

/// What the buffered bytes amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    Complete(Request<'a>),
    /// A prefix of a valid request head (shorter than [`HEAD_MAX`]).
    Incomplete,
    /// Never a valid request: answer this status and close the connection.
    Invalid(Status),
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a field value (VCHAR, SP, HTAB, obs-text).
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Splits off the first line: (line without its LF or CRLF, rest), if a
/// line feed has arrived.
fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &buf[nl + 1..]))
}

/// Bytes of empty lines (CRLF or LF) before the request line, which a
/// server should ignore (RFC 9112 §2.2).
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut pos = 0;
    loop {
        match &buf[pos..] {
            [b'\r', b'\n', ..] => pos += 2,
            [b'\n', ..] => pos += 1,
            _ => return pos,
        }
    }
}

/// The length of the head in `buf` up to and including the blank line
/// that ends it, if it has arrived. `buf` starts at the request line.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

struct RequestLine<'a> {
    method: Method,
    target: &'a [u8],
    path: &'a [u8],
    http11: bool,
}

fn parse_request_line(line: &[u8]) -> Result<RequestLine<'_>, Status> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Status::BadRequest);
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Status::BadRequest);
    }
    let http11 = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            if *major != b'1' {
                return Err(Status::VersionNotSupported);
            }
            *minor != b'0'
        }
        _ => return Err(Status::BadRequest),
    };
    let path = target_path(target).ok_or(Status::BadRequest)?;
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok(RequestLine { method, target, path, http11 })
}

/// The path of an origin-form (`/a?b`), absolute-form
/// (`http://host/a?b`) or asterisk-form (`*`) target.
fn target_path(target: &[u8]) -> Option<&[u8]> {
    let cut_query = |p: &'_ [u8]| -> usize { p.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(p.len()) };
    if target == b"*" {
        return Some(target);
    }
    if target.starts_with(b"/") {
        return Some(&target[..cut_query(target)]);
    }
    let scheme_end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.iter().position(|&b| b == b'/' || b == b'?' || b == b'#').unwrap_or(rest.len());
    if authority_end == 0 {
        return None;
    }
    let path = &rest[authority_end..];
    let path = &path[..cut_query(path)];
    Some(if path.is_empty() { b"/" } else { path })
}

/// Checks what has arrived of the request line before the head is
/// complete, so garbage is refused at once rather than after a timeout.
fn check_partial(buf: &[u8]) -> Result<(), Status> {
    if let Some((line, _)) = split_line(buf) {
        return parse_request_line(line).map(|_| ());
    }
    // The method so far must be a token.
    let method = buf.split(|&b| b == b' ').next().unwrap_or(&[]);
    let method = method.strip_suffix(b"\r").unwrap_or(method);
    if method.iter().all(|&b| is_tchar(b)) { Ok(()) } else { Err(Status::BadRequest) }
}

/// Parses the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse<'_> {
    let skip = leading_empty_lines(buf);
    let Some(end) = head_end(&buf[skip..]) else {
        if let Err(status) = check_partial(&buf[skip..]) {
            return Parse::Invalid(status);
        }
        return if buf.len() >= HEAD_MAX { Parse::Invalid(Status::HeaderFieldsTooLarge) } else { Parse::Incomplete };
    };
    let head_len = skip + end;
    if head_len > HEAD_MAX {
        return Parse::Invalid(Status::HeaderFieldsTooLarge);
    }
    match parse_head(&buf[skip..skip + end]) {
        Ok(mut req) => {
            req.head_len = head_len;
            Parse::Complete(req)
        }
        Err(status) => Parse::Invalid(status),
    }
}

/// Parses a complete head (request line to blank line).
fn parse_head(head: &[u8]) -> Result<Request<'_>, Status> {
    let Some((line, mut rest)) = split_line(head) else { return Err(Status::BadRequest) };
    let rl = parse_request_line(line)?;
    let mut fields = 0;
    let mut content_length: Option<u64> = None;
    let mut chunked_or_other_coding = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut hosts = 0;
    while let Some((line, next)) = split_line(rest) {
        rest = next;
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > HEADERS_MAX {
            return Err(Status::HeaderFieldsTooLarge);
        }
        // obs-fold (a line starting with whitespace) and a name followed
        // by whitespace are both refused (RFC 9112 §5.1, §5.2).
        let colon = line.iter().position(|&b| b == b':').ok_or(Status::BadRequest)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Status::BadRequest);
        }
        if !value.iter().all(|&b| is_field_byte(b)) {
            return Err(Status::BadRequest);
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(Status::BadRequest);
            }
            // Well-formed but beyond u64: too large, not malformed.
            let n = value.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
            if content_length.is_some_and(|c| c != n) {
                return Err(Status::BadRequest);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked_or_other_coding = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // Both framings at once is a smuggling attempt; a transfer coding
    // alone frames a body we do not decode (RFC 9112 §6.1, §6.3).
    if chunked_or_other_coding {
        return Err(if content_length.is_some() { Status::BadRequest } else { Status::NotImplemented });
    }
    // HTTP/1.1 requires exactly one Host (RFC 9112 §3.2).
    if hosts > 1 || (rl.http11 && hosts == 0) {
        return Err(Status::BadRequest);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > BODY_MAX {
        return Err(Status::ContentTooLarge);
    }
    Ok(Request {
        method: rl.method,
        target: rl.target,
        path: rl.path,
        http11: rl.http11,
        keep_alive: !close && (rl.http11 || keep_alive),
        content_length,
        head_len: 0,
    })
}

/// What a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// The configured page (`/`).
    Page,
    /// `ok\n` (`/health`).
    Health,
    /// The status's [`Status::error_body`].
    Error,
}

/// The response to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub content: Content,
    /// HEAD: the head that GET would get, without the body.
    pub head_only: bool,
    /// Close the connection after this response (`Connection: close`).
    pub close: bool,
    /// An HTTP/1.0 client asked to keep the connection
    /// (`Connection: keep-alive` in the response).
    pub keep_alive_header: bool,
}

pub const HEALTH_BODY: &[u8] = b"ok\n";

impl Reply {
    /// The answer to a valid request.
    pub fn to(req: &Request<'_>) -> Reply {
        let (status, content) = match req.method {
            Method::Other => (Status::MethodNotAllowed, Content::Error),
            Method::Get | Method::Head => match req.path {
                b"/" => (Status::Ok, Content::Page),
                b"/health" => (Status::Ok, Content::Health),
                _ => (Status::NotFound, Content::Error),
            },
        };
        Reply {
            status,
            content,
            head_only: req.method == Method::Head,
            close: !req.keep_alive,
            keep_alive_header: req.keep_alive && !req.http11,
        }
    }

    /// An error answer after which the connection closes (the stream may
    /// be out of step, or the server is giving up on it).
    pub fn error(status: Status) -> Reply {
        Reply { status, content: Content::Error, head_only: false, close: true, keep_alive_header: false }
    }
}

/// A fixed buffer that `write!` fills; what does not fit is dropped.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n == s.len() { Ok(()) } else { Err(core::fmt::Error) }
    }
}

/// Writes the response head for `reply` with a body of `body_len` bytes
/// into `out` and returns its length.
pub fn write_head(out: &mut [u8; RESPONSE_HEAD_MAX], reply: &Reply, body_len: usize, unix_secs: u64, server: &str) -> usize {
    let date = imf_fixdate(unix_secs);
    let date = core::str::from_utf8(&date).unwrap_or("Thu, 01 Jan 1970 00:00:00 GMT");
    let mut o = Out { buf: out, len: 0 };
    let _ = write!(
        o,
        "HTTP/1.1 {} {}\r\nServer: {server}\r\nDate: {date}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_len}\r\n",
        reply.status.code(),
        reply.status.reason(),
    );
    if reply.status == Status::MethodNotAllowed {
        let _ = o.write_str("Allow: GET, HEAD\r\n");
    }
    if reply.close {
        let _ = o.write_str("Connection: close\r\n");
    } else if reply.keep_alive_header {
        let _ = o.write_str("Connection: keep-alive\r\n");
    }
    let _ = o.write_str("\r\n");
    o.len
}

/// Fills `buf` with the page: `hypervisor ` repeated.
pub fn fill_page(buf: &mut [u8]) {
    const WORD: &[u8] = b"hypervisor ";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = WORD[i % WORD.len()];
    }
}

/// The proleptic Gregorian (year, month 1..=12, day 1..=31) of a day
/// counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 9110 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`; times past
/// year 9999 show 9999-12-31 23:59:59.
pub fn imf_fixdate(unix_secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let secs = unix_secs.min(253_402_300_799);
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |out: &mut [u8], at: usize, v: u64| {
        out[at] = b'0' + (v / 10) as u8;
        out[at + 1] = b'0' + (v % 10) as u8;
    };
    two(&mut out, 5, u64::from(day));
    out[8..11].copy_from_slice(MONTHS[month as usize - 1]);
    two(&mut out, 12, (year / 100) as u64);
    two(&mut out, 14, (year % 100) as u64);
    two(&mut out, 17, sod / 3600);
    two(&mut out, 20, sod / 60 % 60);
    two(&mut out, 23, sod % 60);
    out
}

#[cfg(test)]
mod tests;
