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
//! | anything else  | `{"error":"..."}` |

/// Longest request line; longer ones are refused whole.
pub const LINE_MAX: usize = 256;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    List,
    Stats,
    Stop(&'a str),
    Capture { what: &'a str, count: u32, secs: u32 },
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Result<Request<'_>, &'static str> {
    let mut words = line.split_whitespace();
    let req = match (words.next(), words.next()) {
        (Some("list"), None) => Request::List,
        (Some("stats"), None) => Request::Stats,
        (Some("stop"), Some(name)) => Request::Stop(name),
        (Some("stop"), None) => return Err("stop needs a guest name"),
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
        assert!(parse("capture a 0 5").is_err() && parse("capture a 10").is_err() && parse("capture a x 1").is_err());
        assert!(parse("stop").is_err() && parse("").is_err() && parse("rm -rf /").is_err() && parse("list x").is_err());
        let mut r = LineReader::default();
        let mut got = Vec::new();
        for b in b"list\r\n\nstop a\n".iter().chain([b'x'; 300].iter()).chain(b"\n\xff\xfe\n".iter()) {
            if let Some(l) = r.push(*b) {
                got.push(l);
            }
        }
        assert_eq!(got, [Ok("list".into()), Ok("stop a".into()), Err("request too long"), Err("request is not UTF-8")]);
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
