//! The control channel (the ports of a virtio console, or a second serial
//! port, that `cargo xtask run --detach` turns into Unix sockets; `cargo
//! xtask ctl` speaks it): the bytes of a client read into request lines
//! ([`LineReader`]), and the answers of a [`Session`] per client over a
//! [`ControlHost`]. The transports: [`virtio_console`] (several clients
//! at once) and the UART (`arch`), one client.
//!
//! The protocol itself (requests, answers, errors, limits, its version) is
//! the contract in [`abi::control`], documented for people in
//! `docs/control.md`: one request per line, at most [`LINE_MAX`] bytes;
//! one JSON line back, an [`abi::control::Response`].
//!
//! Every number is range-checked by [`abi::control::parse`]: TENANT below
//! [`abi::MAX_TENANTS`], LEN at most the largest image, MEMORY above 0 (the
//! hypervisor checks it against the machine). A request that does not end
//! within [`STALL_NS`] of its last byte, and an upload with no `image-data`
//! for as long, are dropped with an error: a quiet client holds nothing
//! but its buffer.

mod session;
pub mod virtio_console;

use abi::control::RequestError;
pub use abi::control::{ARGS_MAX, CHUNK_MAX, LINE_MAX, Request, Response, STALL_NS, parse};
pub use session::{Cloned, ControlHost, Session};

/// Clients served at once (a virtio console's ports; a UART is one).
pub const MAX_CLIENTS: usize = virtio_console::MAX_PORTS;

/// What the control channel's transport found, per client (numbered from
/// 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// A client connected: a new session begins.
    Opened(usize),
    /// The client went away: its session ends, and what it watched.
    Closed(usize),
    /// Bytes the client sent.
    Bytes(usize, &'a [u8]),
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
    pub fn push(&mut self, b: u8, now_ns: u64) -> Option<Result<alloc::string::String, RequestError>> {
        let mut line = None;
        self.push_slice(&[b], now_ns, &mut |l| line = Some(l));
        line
    }

    /// Feeds the bytes that came at `now_ns`, a run at a time (an upload
    /// is megabytes of hex); each complete line (or the error for one too
    /// long or not UTF-8) goes to `on`.
    pub fn push_slice(&mut self, bytes: &[u8], now_ns: u64, on: &mut dyn FnMut(Result<alloc::string::String, RequestError>)) {
        if bytes.is_empty() {
            return;
        }
        self.last_ns = now_ns;
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
            let (part, next) = match end {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            self.extend(part);
            if end.is_some()
                && let Some(l) = self.end_line()
            {
                on(l);
            }
            rest = next;
        }
    }

    /// Appends to the unfinished line, up to [`LINE_MAX`].
    fn extend(&mut self, part: &[u8]) {
        if part.is_empty() || self.overflow {
            return;
        }
        if self.line.len() + part.len() > LINE_MAX {
            self.overflow = true;
            self.line = alloc::vec::Vec::new();
            return;
        }
        // LINE_MAX bounds it; reserve it whole once instead of growing.
        if self.line.capacity() == 0 && self.line.try_reserve_exact(LINE_MAX).is_err() {
            self.overflow = true;
            return;
        }
        self.line.extend_from_slice(part);
    }

    /// Ends the unfinished line: the line, its error, or nothing for an
    /// empty one.
    fn end_line(&mut self) -> Option<Result<alloc::string::String, RequestError>> {
        let line = core::mem::take(&mut self.line);
        if core::mem::take(&mut self.overflow) {
            return Some(Err(RequestError::TooLong));
        }
        if line.is_empty() {
            return None;
        }
        Some(alloc::string::String::from_utf8(line).map_err(|_| RequestError::NotUtf8))
    }
}

/// `value` as one line of JSON (no newline): an answer, or a record of
/// [`abi::report`] for the console. The types hold no map with non-string
/// keys and no float, so serializing cannot fail; if it ever did, the line
/// says so instead of being cut.
pub fn json_line(value: &impl serde::Serialize) -> alloc::string::String {
    serde_json::to_string(value).unwrap_or_else(|_| alloc::string::String::from(r#"{"error":"unserializable record","kind":"internal"}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_checked() {
        let mut r = LineReader::default();
        let mut got = Vec::new();
        for b in b"list\r\n\nstop a\n".iter().chain([b'x'; LINE_MAX + 1].iter()).chain(b"\n\xff\xfe\n".iter()) {
            if let Some(l) = r.push(*b, 0) {
                got.push(l);
            }
        }
        assert_eq!(got, [Ok("list".into()), Ok("stop a".into()), Err(RequestError::TooLong), Err(RequestError::NotUtf8)]);
    }

    #[test]
    fn the_parser_refuses_what_the_upload_limit_refuses() {
        assert_eq!(abi::control::IMAGE_BYTES_MAX, crate::image::MAX_IMAGE_BYTES);
    }

    #[test]
    fn lines_split_anywhere_read_the_same() {
        let text: Vec<u8> =
            b"list\r\n\nimage-data 00ff\nstop a\n".iter().copied().chain([b'y'; LINE_MAX + 1]).chain(*b"\nversion\n").collect();
        let whole = {
            let mut r = LineReader::default();
            let mut got = Vec::new();
            r.push_slice(&text, 0, &mut |l| got.push(l));
            got
        };
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[4], Ok("version".into()));
        for cut in [1, 2, 3, 7, 13, 64, 4096] {
            let mut r = LineReader::default();
            let mut got = Vec::new();
            text.chunks(cut).for_each(|c| r.push_slice(c, 0, &mut |l| got.push(l)));
            assert_eq!(got, whole, "in chunks of {cut}");
        }
        // Exactly LINE_MAX fits.
        let mut r = LineReader::default();
        let mut got = Vec::new();
        r.push_slice(&[b'z'; LINE_MAX], 0, &mut |l| got.push(l));
        r.push_slice(b"\n", 0, &mut |l| got.push(l));
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().is_ok_and(|l| l.len() == LINE_MAX));
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
