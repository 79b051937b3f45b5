//! The control channel's protocol (a second serial port that `cargo xtask
//! run --detach` turns into a Unix socket; `cargo xtask ctl` speaks it).
//!
//! One request per line, at most [`LINE_MAX`] bytes; one JSON line back:
//!
//! | request        | answer |
//! |----------------|--------|
//! | `list`         | `{"guests":[{"name":..,"tenant":..,"state":..,"cpu_ns":..,"memory_bytes":..,"sent_frames":..,"received_frames":..},...]}` |
//! | `stats`        | `{"guests":[GUEST_STATS,...],"machine":MACHINE}` (the console's JSON lines, for guests not on a CPU at that instant) |
//! | `stop NAME`    | `{"stopped":"NAME"}` once it is marked; it ends at its next exit |
//! | `capture WHAT COUNT SECS` | `{"capturing":"WHAT"}`, then one `{"wall_ns":..,"frame":"HEX"}` per frame that guest `WHAT` sends or receives (or that a guest of `tenant:T` sends, and frames from the host for tenant 0), until COUNT frames or SECS seconds, then `{"captured":N,"dropped":D}` (D: frames past a 256-frame backlog) |
//! | `images`       | `{"images":["echo.hermit",...]}`: the images loaded (the bundle's, then uploads) |
//! | `image-begin NAME LEN`, `image-data HEX`..., `image-end` | uploads a Hermit image of LEN bytes in chunks of at most 4096 bytes (hex); `image-end` answers `{"image":NAME}` once it is validated and loaded, or the reason it was rejected (the data lines are not answered) |
//! | `start NAME IMAGE MEMORY TENANT [ARG...]` | creates guest NAME (unique, `[a-z0-9_-]`) from the loaded image IMAGE with MEMORY bytes, in tenant TENANT (a number, or `none` for no vNIC): `{"started":NAME,"ip":"10.T.0.N"\|null}` |
//! | anything else  | `{"error":"..."}` |
//!
//! Every number is range-checked here: TENANT below [`abi::MAX_TENANTS`],
//! LEN at most the largest image, MEMORY above 0 (the hypervisor checks it
//! against the machine). A request that does not end within [`STALL_NS`]
//! of its last byte, and an upload with no `image-data` for as long, are
//! dropped with an error: a quiet client holds nothing but its buffer.

mod session;

pub use session::{ControlHost, Row, Session};

/// Longest request line (an `image-data` line of 4096 bytes in hex fits);
/// longer ones are refused whole.
pub const LINE_MAX: usize = 8448;
/// Most bytes one `image-data` line carries.
pub const CHUNK_MAX: usize = 4096;
/// Most arguments `start` passes.
pub const ARGS_MAX: usize = 16;
/// A request line, or an upload, quiet for this long is dropped.
pub const STALL_NS: u64 = 5_000_000_000;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    List,
    Stats,
    Stop(&'a str),
    Capture { what: &'a str, count: u32, secs: u32 },
    Images,
    ImageBegin { name: &'a str, len: usize },
    ImageData(alloc::vec::Vec<u8>),
    ImageEnd,
    Start { name: &'a str, image: &'a str, memory: u64, tenant: Option<u32>, args: alloc::vec::Vec<&'a str> },
}

/// Whether `name` may name a guest or an image: 1 to 64 of [a-z0-9_.-].
fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= abi::layout::NAME_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

fn hex(s: &str) -> Option<alloc::vec::Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * CHUNK_MAX {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Result<Request<'_>, &'static str> {
    let mut words = line.split_whitespace();
    let req = match (words.next(), words.next()) {
        (Some("list"), None) => Request::List,
        (Some("stats"), None) => Request::Stats,
        (Some("stop"), Some(name)) => Request::Stop(name),
        (Some("stop"), None) => return Err("stop needs a guest name"),
        (Some("images"), None) => Request::Images,
        (Some("image-begin"), Some(name)) => match words.next().and_then(|w| w.parse().ok()) {
            Some(len) if good_name(name) && (1..=crate::image::MAX_IMAGE_BYTES).contains(&len) => Request::ImageBegin { name, len },
            Some(_) if good_name(name) => return Err("image-begin: LEN must be 1 to 67108864 bytes"),
            _ => return Err("image-begin needs a name ([a-z0-9_.-]) and a length"),
        },
        (Some("image-data"), Some(h)) => Request::ImageData(hex(h).ok_or("image-data needs at most 4096 bytes in hex")?),
        (Some("image-end"), None) => Request::ImageEnd,
        (Some("start"), Some(name)) => {
            let image = words.next().ok_or("start needs NAME IMAGE MEMORY TENANT [ARG...]")?;
            let memory =
                words.next().and_then(|w| w.parse().ok()).filter(|&m| m > 0).ok_or("start: MEMORY must be a number of bytes above 0")?;
            let tenant = match words.next() {
                Some("none") => None,
                Some(t) => {
                    Some(t.parse().ok().filter(|&t| t < abi::MAX_TENANTS).ok_or("start: TENANT must be a number below 256, or none")?)
                }
                None => return Err("start needs NAME IMAGE MEMORY TENANT [ARG...]"),
            };
            let args: alloc::vec::Vec<&str> = words.by_ref().collect();
            if !good_name(name) || name.contains('.') {
                return Err("start: NAME must be 1 to 64 of [a-z0-9_-]");
            }
            if args.len() > ARGS_MAX {
                return Err("start: at most 16 arguments");
            }
            return Ok(Request::Start { name, image, memory, tenant, args });
        }
        (Some("capture"), Some(what)) => {
            let mut num = || words.next().and_then(|w| w.parse::<u32>().ok()).filter(|&n| n > 0);
            match (num(), num()) {
                (Some(count), Some(secs)) => Request::Capture { what, count, secs },
                _ => return Err("capture needs a guest or tenant:N, a frame count and seconds, both above 0"),
            }
        }
        (None, _) => return Err("empty request"),
        _ => return Err("unknown request (list, stats, stop, capture, images, image-begin, image-data, image-end, start)"),
    };
    if words.next().is_some() {
        return Err("too many words");
    }
    Ok(req)
}

/// Collects request lines from the bytes of the channel.
#[derive(Default)]
pub struct LineReader {
    line: alloc::vec::Vec<u8>,
    overflow: bool,
    /// When the last byte of the unfinished line came.
    last_ns: u64,
}

impl LineReader {
    /// Whether a line has begun and not ended.
    pub fn in_progress(&self) -> bool {
        !self.line.is_empty() || self.overflow
    }

    /// Whether an unfinished line has had no byte for [`STALL_NS`] at `now_ns`.
    pub fn stalled(&self, now_ns: u64) -> bool {
        self.in_progress() && now_ns.saturating_sub(self.last_ns) > STALL_NS
    }

    /// Forgets the unfinished line.
    pub fn clear(&mut self) {
        self.line = alloc::vec::Vec::new();
        self.overflow = false;
    }

    /// Feeds one byte that came at `now_ns`; returns a complete line (or an
    /// error for one too long or not UTF-8).
    pub fn push(&mut self, b: u8, now_ns: u64) -> Option<Result<alloc::string::String, &'static str>> {
        self.last_ns = now_ns;
        match b {
            b'\n' | b'\r' => {
                let line = core::mem::take(&mut self.line);
                if core::mem::take(&mut self.overflow) {
                    return Some(Err("request too long"));
                }
                if line.is_empty() {
                    return None;
                }
                Some(alloc::string::String::from_utf8(line).map_err(|_| "request is not UTF-8"))
            }
            _ if self.line.len() >= LINE_MAX => {
                self.overflow = true;
                None
            }
            _ => {
                // LINE_MAX bounds it; reserve it whole once instead of growing.
                if self.line.capacity() == 0 && self.line.try_reserve_exact(LINE_MAX).is_err() {
                    self.overflow = true;
                    return None;
                }
                self.line.push(b);
                None
            }
        }
    }
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> alloc::string::String {
    let mut out = alloc::string::String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&alloc::format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_refused() {
        assert_eq!(parse("list"), Ok(Request::List));
        assert_eq!(parse(" stats "), Ok(Request::Stats));
        assert_eq!(parse("stop echo-0"), Ok(Request::Stop("echo-0")));
        assert_eq!(parse("capture tenant:1 10 5"), Ok(Request::Capture { what: "tenant:1", count: 10, secs: 5 }));
        assert_eq!(parse("image-begin echo.hermit 1234"), Ok(Request::ImageBegin { name: "echo.hermit", len: 1234 }));
        assert_eq!(parse("image-data 00ff7f"), Ok(Request::ImageData(vec![0, 0xff, 0x7f])));
        assert!(parse("image-data 0g").is_err() && parse("image-data 123").is_err() && parse("image-begin ../x 1").is_err());
        assert_eq!(
            parse("start web-1 echo.hermit 1048576 2 serve 7"),
            Ok(Request::Start { name: "web-1", image: "echo.hermit", memory: 1 << 20, tenant: Some(2), args: vec!["serve", "7"] })
        );
        assert_eq!(parse("start w x 4096 none").map(|r| matches!(r, Request::Start { tenant: None, .. })), Ok(true));
        assert!(
            parse("start W x 4096 0").is_err()
                && parse("start w x lots 0").is_err()
                && parse("start w x 1 t").is_err()
                && parse("start w").is_err()
        );
        assert!(parse("capture a 0 5").is_err() && parse("capture a 10").is_err() && parse("capture a x 1").is_err());
        assert!(parse("stop").is_err() && parse("").is_err() && parse("rm -rf /").is_err() && parse("list x").is_err());
        let mut r = LineReader::default();
        let mut got = Vec::new();
        for b in b"list\r\n\nstop a\n".iter().chain([b'x'; LINE_MAX + 1].iter()).chain(b"\n\xff\xfe\n".iter()) {
            if let Some(l) = r.push(*b, 0) {
                got.push(l);
            }
        }
        assert_eq!(got, [Ok("list".into()), Ok("stop a".into()), Err("request too long"), Err("request is not UTF-8")]);
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }

    #[test]
    fn numbers_are_range_checked() {
        // A tenant of 4 billion once made the hypervisor size a table by it.
        assert!(parse("start w x 4096 4000000000").is_err());
        assert!(parse("start w x 4096 256").is_err());
        assert!(matches!(parse("start w x 4096 255"), Ok(Request::Start { tenant: Some(255), .. })));
        assert!(parse("start w x 0 1").is_err() && parse("start w x 18446744073709551616 1").is_err());
        assert!(
            parse("image-begin x 0").is_err()
                && parse("image-begin x 67108865").is_err()
                && parse("image-begin x 99999999999999999999999").is_err()
        );
        assert_eq!(parse("image-begin x 67108864"), Ok(Request::ImageBegin { name: "x", len: 67_108_864 }));
        assert!(parse("capture a 4294967296 1").is_err());
    }

    #[test]
    fn a_quiet_half_request_stalls_and_is_cleared() {
        let mut r = LineReader::default();
        assert!(!r.stalled(u64::MAX), "nothing begun, nothing stalled");
        for b in b"lis" {
            assert_eq!(r.push(*b, 1_000), None);
        }
        assert!(!r.stalled(1_000 + STALL_NS) && r.stalled(1_001 + STALL_NS));
        r.clear();
        assert!(!r.in_progress() && !r.stalled(u64::MAX));
        // The next request is read whole, not glued to the dropped bytes.
        let got: Vec<_> = b"list\n".iter().filter_map(|b| r.push(*b, 2)).collect();
        assert_eq!(got, [Ok("list".into())]);
    }
}
