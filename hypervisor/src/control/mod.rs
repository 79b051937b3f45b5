//! The control channel (a second serial port that `cargo xtask run
//! --detach` turns into a Unix socket; `cargo xtask ctl` speaks it): the
//! bytes of a client read into request lines ([`LineReader`]), and the
//! answers of a [`Session`] over a [`ControlHost`].
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

use abi::control::RequestError;
pub use abi::control::{ARGS_MAX, CHUNK_MAX, LINE_MAX, Request, Response, STALL_NS, parse};
pub use session::{ControlHost, Session};

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
        self.last_ns = now_ns;
        match b {
            b'\n' | b'\r' => {
                let line = core::mem::take(&mut self.line);
                if core::mem::take(&mut self.overflow) {
                    return Some(Err(RequestError::TooLong));
                }
                if line.is_empty() {
                    return None;
                }
                Some(alloc::string::String::from_utf8(line).map_err(|_| RequestError::NotUtf8))
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
