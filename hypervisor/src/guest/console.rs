//! Per-guest console: bytes from `console_write` are gathered into lines and
//! printed with the guest's name in front, so that guests' output does not
//! interleave mid-line and a guest cannot forge hypervisor lines or send
//! terminal escape sequences.

use alloc::vec::Vec;

/// Longest line kept before it is printed anyway. A printed piece of
/// exactly this many bytes says that the line goes on in the next one
/// (readers join them: `xtask::bench::GuestLines`); a line whose length is
/// a multiple of it ends with an empty piece, so that it is not taken for
/// the start of a longer one.
pub const LINE_MAX: usize = 200;

#[derive(Debug, Default)]
pub struct LineBuffer {
    line: Vec<u8>,
    /// The last piece printed was a full `LINE_MAX` and the line it
    /// belongs to has not ended yet.
    continued: bool,
}

impl LineBuffer {
    /// Bytes allocated for the line being collected.
    pub fn capacity(&self) -> usize {
        self.line.capacity()
    }

    /// Adds bytes; calls `emit` with each completed line (without the
    /// newline, control characters replaced by `.`: ASCII's here, C1 and
    /// Unicode format controls in `flush`).
    pub fn push(&mut self, bytes: &[u8], emit: &mut impl FnMut(&str)) {
        for &b in bytes {
            match b {
                b'\n' => self.flush(emit),
                b'\r' => {}
                _ => {
                    let printable = b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80;
                    self.line.push(if printable { b } else { b'.' });
                    if self.line.len() >= LINE_MAX {
                        self.emit_piece(emit);
                        self.continued = true;
                    }
                }
            }
        }
    }

    /// Ends the line (a newline, or the guest's exit): emits what is left,
    /// or an empty piece if the line ended exactly at a break.
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        if self.line.is_empty() && self.continued {
            emit("");
        }
        self.emit_piece(emit);
        self.continued = false;
    }

    fn emit_piece(&mut self, emit: &mut impl FnMut(&str)) {
        if !self.line.is_empty() {
            let text: alloc::string::String =
                alloc::string::String::from_utf8_lossy(&self.line).chars().map(|c| if is_control(c) { '.' } else { c }).collect();
            emit(&text);
            self.line.clear();
        }
    }
}

/// Characters a terminal acts on instead of showing, beyond ASCII's (those
/// are replaced byte by byte in `push`): the C1 controls (U+0080..U+009F,
/// among them CSI, which starts escape sequences on terminals that take
/// 8-bit controls), and the Unicode format controls that reorder or hide
/// text (bidi overrides and isolates, zero-width characters, line and
/// paragraph separators), with which a line could show other text than it
/// holds.
fn is_control(c: char) -> bool {
    matches!(c, '\u{80}'..='\u{9f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut lb = LineBuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c, &mut |l| out.push(l.to_string()));
        }
        lb.flush(&mut |l| out.push(l.to_string()));
        out
    }

    #[test]
    fn joins_chunks_into_lines() {
        assert_eq!(lines(&[b"hel", b"lo\nwor", b"ld\r\n", b"tail"]), ["hello", "world", "tail"]);
    }

    #[test]
    fn escapes_control_characters_and_bounds_lines() {
        assert_eq!(lines(&[b"\x1b[2Jx\x07"]), [".[2Jx."]);
        // C1 CSI (U+009B in UTF-8), a bidi override, a line separator, DEL.
        assert_eq!(lines(&["a\u{9b}2Jb\u{202e}c\u{2028}d\x7f".as_bytes()]), ["a.2Jb.c.d."]);
        // Other text passes, and invalid UTF-8 becomes U+FFFD.
        assert_eq!(lines(&["héllo wörld ✓".as_bytes(), b"\xff\n"]), ["héllo wörld ✓\u{fffd}"]);
        let long = vec![b'a'; LINE_MAX * 2 + 5];
        let l = lines(&[&long]);
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|s| s.len() <= LINE_MAX));
        // A line of exactly LINE_MAX (or twice) ends with an empty piece, so
        // a reader does not take it for the start of a longer line; one
        // byte less or more needs none.
        for (n, pieces) in [(LINE_MAX - 1, 1), (LINE_MAX, 2), (LINE_MAX + 1, 2), (2 * LINE_MAX, 3)] {
            let mut line = vec![b'b'; n];
            line.push(b'\n');
            let l = lines(&[&line, b"next\n"]);
            assert_eq!(l.len(), pieces + 1, "{n} bytes: {l:?}");
            assert_eq!(l.last().map(String::as_str), Some("next"));
            assert_eq!(l[..pieces].concat().len(), n);
            assert!(l[pieces - 1].len() < LINE_MAX, "{n} bytes: the last piece is short");
        }
    }
}
