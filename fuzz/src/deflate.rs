//! A small deflate (RFC 1951) encoder for hostile streams: the caller
//! chooses every literal, match, block boundary and stored block, so that
//! a few bytes of fuzz input become megabytes of output (a match of 258
//! bytes costs 13 bits: over 150:1 with fixed Huffman codes), and it can
//! leave out the final block or write an invalid code. It counts the output
//! the stream stands for and, if asked, keeps it (for a trailer's CRC).

/// One thing in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sym {
    /// A literal byte.
    Lit(u8),
    /// Copy `len` (3..=258) bytes from `dist` (1..=32768) back.
    Match { len: u16, dist: u16 },
    /// End the current fixed-Huffman block and start another.
    NewBlock,
    /// End the current block, write these bytes as a stored block
    /// (at most 65535) and go on with a fixed-Huffman block.
    Stored(Vec<u8>),
    /// An invalid code: a distance code of 30 after a length code (`0`),
    /// literal/length code 286 (`1`), or block type 3 (`2`). The stream is
    /// corrupt from there; what follows is written anyway.
    Invalid(u8),
}

const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385,
    24577,
];
const DIST_EXTRA: [u8; 30] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// The fixed literal/length code of every symbol 0..=287 (RFC 1951
/// 3.2.6), bit-reversed for writing least significant bit first, and its
/// length.
const FIXED_LITLEN: [(u16, u8); 288] = {
    let mut t = [(0u16, 0u8); 288];
    let mut s = 0;
    while s < 288 {
        let (code, len) = match s {
            0..=143 => (0x30 + s, 8),
            144..=255 => (0x190 + s - 144, 9),
            256..=279 => (s - 256, 7),
            _ => (0xc0 + s - 280, 8),
        };
        t[s as usize] = (((code as u32).reverse_bits() >> (32 - len)) as u16, len as u8);
        s += 1;
    }
    t
};

/// The length code's index for every length 3..=258 (a table: the fuzz
/// loop encodes millions of matches, and a search costs a comparison the
/// fuzzer traces per step).
const LEN_INDEX: [u8; 259] = {
    let mut t = [0u8; 259];
    let mut len = 3;
    while len <= 258 {
        let mut i = 28;
        while LEN_BASE[i] > len as u16 {
            i -= 1;
        }
        t[len] = i as u8;
        len += 1;
    }
    t
};

/// The distance code's index for `dist` (1..=32768): two codes per power
/// of two from 4 on, the second for the upper half.
fn dist_index(dist: u16) -> usize {
    let d = u32::from(dist - 1);
    if d < 4 {
        return d as usize;
    }
    let bit = 31 - d.leading_zeros();
    (2 * bit + ((d >> (bit - 1)) & 1)) as usize
}

/// A deflate stream being written, and the bytes it inflates to.
pub struct Encoder {
    bytes: Vec<u8>,
    bit_buf: u64,
    bit_count: u32,
    /// How many bytes the stream inflates to so far.
    len: usize,
    /// Those bytes, if kept.
    out: Option<Vec<u8>>,
    /// Whether every symbol so far was valid.
    valid: bool,
}

/// A finished stream.
pub struct Stream {
    /// The deflate bytes.
    pub bytes: Vec<u8>,
    /// How many bytes they inflate to (as far as they are valid).
    pub len: usize,
    /// Those bytes, if the encoder kept them.
    pub out: Option<Vec<u8>>,
    /// Whether the stream is valid and complete.
    pub valid: bool,
}

impl Encoder {
    /// A stream with its first (non-final) fixed-Huffman block begun;
    /// `keep`: keep the output, not just count it.
    pub fn new(keep: bool) -> Self {
        let out = keep.then(Vec::new);
        let mut e = Encoder { bytes: Vec::new(), bit_buf: 0, bit_count: 0, len: 0, out, valid: true };
        e.block_header(false, 1);
        e
    }

    /// Bytes of output so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bits(&mut self, value: u32, count: u32) {
        debug_assert!(count <= 32);
        self.bit_buf |= u64::from(value) << self.bit_count;
        self.bit_count += count;
        if self.bit_count >= 32 {
            self.bytes.extend_from_slice(&(self.bit_buf as u32).to_le_bytes());
            self.bit_buf >>= 32;
            self.bit_count -= 32;
        }
    }

    /// A Huffman code: written most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.bits(code.reverse_bits() >> (32 - len), len);
    }

    /// Pads to a byte boundary and writes out every whole byte.
    fn align(&mut self) {
        let bytes = self.bit_count.div_ceil(8);
        self.bytes.extend_from_slice(&self.bit_buf.to_le_bytes()[..bytes as usize]);
        self.bit_buf = 0;
        self.bit_count = 0;
    }

    fn block_header(&mut self, last: bool, btype: u32) {
        self.bits(u32::from(last), 1);
        self.bits(btype, 2);
    }

    /// Literal/length symbol `s` (0..=287) in the fixed code.
    fn litlen(&mut self, s: u32) {
        let (bits, len) = FIXED_LITLEN[s as usize];
        self.bits(u32::from(bits), u32::from(len));
    }

    /// Appends `sym` (a `Match` reaching before the start of the output is
    /// written as it is and makes the stream invalid).
    pub fn push(&mut self, sym: &Sym) {
        match *sym {
            Sym::Lit(b) => {
                self.litlen(u32::from(b));
                self.len += 1;
                if let Some(out) = &mut self.out {
                    out.push(b);
                }
            }
            Sym::Match { len, dist } => {
                let len = len.clamp(3, 258);
                let dist = dist.max(1);
                let li = usize::from(LEN_INDEX[usize::from(len)]);
                self.litlen(257 + li as u32);
                self.bits(u32::from(len - LEN_BASE[li]), u32::from(LEN_EXTRA[li]));
                let di = dist_index(dist);
                self.code(di as u32, 5);
                self.bits(u32::from(dist - DIST_BASE[di]), u32::from(DIST_EXTRA[di]));
                self.copy(usize::from(len), usize::from(dist));
            }
            Sym::NewBlock => {
                self.litlen(256);
                self.block_header(false, 1);
            }
            Sym::Stored(ref data) => {
                let data = &data[..data.len().min(0xffff)];
                self.litlen(256);
                self.block_header(false, 0);
                self.align();
                let n = data.len() as u16;
                self.bytes.extend_from_slice(&n.to_le_bytes());
                self.bytes.extend_from_slice(&(!n).to_le_bytes());
                self.bytes.extend_from_slice(data);
                self.len += data.len();
                if let Some(out) = &mut self.out {
                    out.extend_from_slice(data);
                }
                self.block_header(false, 1);
            }
            Sym::Invalid(kind) => {
                self.valid = false;
                match kind % 3 {
                    0 => {
                        self.litlen(257);
                        self.code(30, 5);
                    }
                    1 => self.litlen(286),
                    _ => {
                        self.litlen(256);
                        self.block_header(false, 3);
                    }
                }
            }
        }
    }

    /// The output of a match, as an inflater makes it.
    fn copy(&mut self, len: usize, dist: usize) {
        let Some(start) = self.len.checked_sub(dist) else {
            self.valid = false;
            return;
        };
        self.len += len;
        let Some(out) = &mut self.out else { return };
        // From `start` on, the output repeats with period `dist`: while what
        // is appended is a whole number of periods, it can be copied from
        // `start` again, twice as much each round.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(out.len() - start);
            out.extend_from_within(start..start + n);
            done += n;
        }
    }

    /// Ends the stream: closes the open block and, if `last`, adds an empty
    /// final block (without it the stream is truncated).
    pub fn finish(mut self, last: bool) -> Stream {
        self.litlen(256);
        if last {
            self.block_header(true, 1);
            self.litlen(256);
        }
        self.align();
        Stream { bytes: self.bytes, len: self.len, out: self.out, valid: self.valid && last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(stream: &[u8]) -> Result<Vec<u8>, miniz_oxide::inflate::DecompressError> {
        miniz_oxide::inflate::decompress_to_vec_with_limit(stream, 16 << 20)
    }

    #[test]
    fn every_length_and_distance_round_trips() {
        let mut e = Encoder::new(true);
        for b in 0..=255u8 {
            e.push(&Sym::Lit(b));
        }
        for len in 3..=258u16 {
            e.push(&Sym::Match { len, dist: 1 + len % 256 });
        }
        // Fill 32 KiB so every distance is in reach, then use each.
        e.push(&Sym::Stored((0..40_000u32).map(|i| (i * 7 + i / 300) as u8).collect()));
        for dist in (1..=32768u16).step_by(97).chain([32767, 32768]) {
            e.push(&Sym::Match { len: 3 + dist % 256, dist });
            e.push(&Sym::NewBlock);
        }
        let s = e.finish(true);
        assert!(s.valid);
        let out = s.out.unwrap();
        assert_eq!(out.len(), s.len);
        assert_eq!(inflate(&s.bytes).unwrap(), out);
    }

    #[test]
    fn runs_compress_over_150_to_1() {
        let mut e = Encoder::new(true);
        e.push(&Sym::Lit(0));
        for _ in 0..4096 {
            e.push(&Sym::Match { len: 258, dist: 1 });
        }
        let s = e.finish(true);
        let out = s.out.unwrap();
        assert_eq!(out.len(), 1 + 4096 * 258);
        assert!(out.len() / s.bytes.len() > 150, "{} -> {}", s.bytes.len(), out.len());
        assert_eq!(inflate(&s.bytes).unwrap(), out);
    }

    #[test]
    fn invalid_and_unfinished_streams_fail() {
        for kind in 0..3 {
            let mut e = Encoder::new(true);
            e.push(&Sym::Lit(1));
            e.push(&Sym::Invalid(kind));
            let s = e.finish(true);
            assert!(!s.valid);
            assert!(inflate(&s.bytes).is_err(), "kind {kind}");
        }
        let mut e = Encoder::new(true);
        e.push(&Sym::Match { len: 3, dist: 1 });
        let s = e.finish(true);
        assert!(!s.valid);
        assert!(inflate(&s.bytes).is_err());
        let mut e = Encoder::new(true);
        e.push(&Sym::Lit(1));
        let s = e.finish(false);
        assert!(!s.valid);
        assert_eq!(s.out.unwrap(), [1]);
        assert!(inflate(&s.bytes).is_err());
    }
}
