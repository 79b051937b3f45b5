//! The control channel's protocol (a second serial port that `cargo xtask
//! run --detach` turns into a Unix socket; `cargo xtask ctl` speaks it).
//!
//! One request per line, at most [`LINE_MAX`] bytes; one JSON line back:
//!
//! | request        | answer |
//! |----------------|--------|
//! | `list`         | `{"guests":[{"name":..,"tenant":..,"state":..,"cpu_ns":..,"memory_bytes":..,"tx_frames":..,"rx_frames":..},...]}` |
//! | `stats`        | `{"guests":[GUEST_STATS,...],"machine":MACHINE}` (the console's JSON lines, for guests not on a CPU at that instant) |
//! | `stop NAME`    | `{"stopped":"NAME"}` once it is marked; it ends at its next exit |
//! | `capture WHAT COUNT SECS` | `{"capturing":"WHAT"}`, then one `{"wall_ns":..,"frame":"HEX"}` per frame that guest `WHAT` sends or receives (or that a guest of `tenant:T` sends, and frames from the host for tenant 0), until COUNT frames or SECS seconds, then `{"captured":N,"dropped":D}` (D: frames past a 256-frame backlog) |
//! | `images`       | `{"images":["echo.hermit",...]}`: the images loaded (the bundle's, then uploads) |
//! | `image-begin NAME LEN`, `image-data HEX`..., `image-end` | uploads a Hermit image of LEN bytes in chunks of at most 4096 bytes (hex); `image-end` answers `{"image":NAME}` once it is validated and loaded, or the reason it was rejected (the data lines are not answered) |
//! | `start NAME IMAGE MEMORY TENANT [ARG...]` | creates guest NAME (unique, `[a-z0-9_-]`) from the loaded image IMAGE with MEMORY bytes, in tenant TENANT (a number, or `none` for no vNIC): `{"started":NAME,"ip":"10.T.0.N"\|null}` |
//! | anything else  | `{"error":"..."}` |

/// Longest request line (an `image-data` line of 4096 bytes in hex fits);
/// longer ones are refused whole.
pub const LINE_MAX: usize = 8448;
/// Most bytes one `image-data` line carries.
pub const CHUNK_MAX: usize = 4096;
/// Most arguments `start` passes.
pub const ARGS_MAX: usize = 16;

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
    !name.is_empty() && name.len() <= abi::layout::NAME_MAX && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
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
            Some(len) if good_name(name) => Request::ImageBegin { name, len },
            _ => return Err("image-begin needs a name ([a-z0-9_.-]) and a length"),
        },
        (Some("image-data"), Some(h)) => Request::ImageData(hex(h).ok_or("image-data needs at most 4096 bytes in hex")?),
        (Some("image-end"), None) => Request::ImageEnd,
        (Some("start"), Some(name)) => {
            let image = words.next().ok_or("start needs NAME IMAGE MEMORY TENANT [ARG...]")?;
            let memory = words.next().and_then(|w| w.parse().ok()).ok_or("start: MEMORY must be a number of bytes")?;
            let tenant = match words.next() {
                Some("none") => None,
                Some(t) => Some(t.parse().map_err(|_| "start: TENANT must be a number or none")?),
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
        _ => return Err("unknown request (list, stats, stop NAME)"),
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
}

impl LineReader {
    /// Whether a line has begun and not ended.
    pub fn in_progress(&self) -> bool {
        !self.line.is_empty() || self.overflow
    }

    /// Feeds one byte; returns a complete line (or an error for one too
    /// long or not UTF-8).
    pub fn push(&mut self, b: u8) -> Option<Result<alloc::string::String, &'static str>> {
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
        assert!(parse("start W x 4096 0").is_err() && parse("start w x lots 0").is_err() && parse("start w x 1 t").is_err() && parse("start w").is_err());
        assert!(parse("capture a 0 5").is_err() && parse("capture a 10").is_err() && parse("capture a x 1").is_err());
        assert!(parse("stop").is_err() && parse("").is_err() && parse("rm -rf /").is_err() && parse("list x").is_err());
        let mut r = LineReader::default();
        let mut got = Vec::new();
        for b in b"list\r\n\nstop a\n".iter().chain([b'x'; LINE_MAX + 1].iter()).chain(b"\n\xff\xfe\n".iter()) {
            if let Some(l) = r.push(*b) {
                got.push(l);
            }
        }
        assert_eq!(got, [Ok("list".into()), Ok("stop a".into()), Err("request too long"), Err("request is not UTF-8")]);
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
