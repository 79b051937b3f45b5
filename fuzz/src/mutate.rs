//! The in-house mutator for the short runs in `cargo test` (libFuzzer does
//! its own mutation in the long runs): bit flips, interesting values,
//! byte insertion and deletion, block copies, splices between corpus
//! entries, truncation. Deterministic for a seed.

/// xorshift64*.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    #[allow(clippy::should_implement_trait)] // an endless generator, not an Iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    14,
    13,
    1514,
    1515,
    4096,
    4095,
];

/// One new input: a corpus entry with 1 to 8 mutations stacked.
pub fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(8) {
        mutate_once(rng, &mut buf, corpus);
    }
    buf
}

fn mutate_once(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = buf.len();
    match rng.below(10) {
        // Flip one bit.
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            buf[i] ^= 1 << rng.below(8);
        }
        // A random byte.
        2 if len > 0 => {
            let i = rng.below(len);
            buf[i] = rng.next() as u8;
        }
        // An interesting value of 1, 2, 4 or 8 bytes, either endianness.
        3 | 4 if len > 0 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1, 2, 4, 8][rng.below(4)].min(len);
            let bytes = if rng.below(4) == 0 { v.to_be_bytes() } else { v.to_le_bytes() };
            let at = rng.below(len - width + 1);
            buf[at..at + width].copy_from_slice(&bytes[..width]);
        }
        // Insert bytes.
        5 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let b = rng.next() as u8;
            buf.splice(at..at, std::iter::repeat_n(b, n));
        }
        // Delete bytes.
        6 if len > 0 => {
            let at = rng.below(len);
            let n = (1 + rng.below(16)).min(len - at);
            buf.drain(at..at + n);
        }
        // Copy a block within the input.
        7 if len > 1 => {
            let from = rng.below(len);
            let n = (1 + rng.below(64)).min(len - from);
            let to = rng.below(len - n + 1);
            let block = buf[from..from + n].to_vec();
            buf[to..to + n].copy_from_slice(&block);
        }
        // Splice: our head, another entry's tail.
        8 => {
            let other = &corpus[rng.below(corpus.len())];
            let at = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            buf.truncate(at);
            buf.extend_from_slice(&other[from..]);
        }
        // Truncate.
        _ => {
            let at = rng.below(len + 1);
            buf.truncate(at);
        }
    }
}
