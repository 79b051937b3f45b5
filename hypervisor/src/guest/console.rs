//! Per-guest console: bytes from `console_write` are gathered into lines and
//! printed with the guest's name in front, so that guests' output does not
//! interleave mid-line and a guest cannot forge hypervisor lines or send
//! terminal escape sequences.

use alloc::vec::Vec;

/// Longest line kept before it is printed anyway.
pub const LINE_MAX: usize = 200;

#[derive(Debug, Default)]
pub struct LineBuffer {
    line: Vec<u8>,
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
                        self.flush(emit);
                    }
                }
            }
        }
    }

    /// Emits what is left (at exit).
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
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
    }
}
