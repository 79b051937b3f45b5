//! Gzip images with hostile compression ratios: `Image::parse_within` with
//! a small budget over gzip files whose deflate stream the fuzzer writes
//! symbol by symbol (a 258-byte match costs 13 bits, so a few bytes of
//! input stand for megabytes), whose trailer may lie about the length, and
//! whose stream may be corrupt or end early. Parsing must not panic, must
//! never allocate more than the budget (plus a fixed allowance for scratch
//! that no input sizes), and must refuse with the error the sizes call for.
//!
//! Input: `[knobs: u8][budget: u8][isize: u32][cut: u16]`, then a program,
//! one op a byte (the low 3 bits the kind, the high 5 an argument `a`):
//! - `0`, `7`: `a + 1` literal bytes from the input;
//! - `1`: a run of byte `v: u8`, `(n: u16 + 1) << (a % 16)` long;
//! - `2`: copy `(n: u8 + 3) << (a % 12)` bytes from `d: u16` back (reduced
//!   to lie inside the output so far);
//! - `3`: a stored block of `n: u16` bytes from the input;
//! - `4`: a new fixed-Huffman block;
//! - `5`: an invalid code (the stream is corrupt from there);
//! - `6`: `(n: u8 + 1) << 16` zeros.
//!
//! The program's output stops growing past [`OUT_CAP`]. The budget is one
//! of [`BUDGETS`] (`budget % 4`): the smallest refuses even valid images,
//! the largest lets a hostile `hermit.toml` of up to the 8 KiB limit reach
//! the TOML parser, whose heap use is bounded only by the per-byte share of
//! the budget it is charged ([`CONFIG_HEAP_PER_BYTE`]). Knobs:
//! - bits 0-1, what the output is: `0` the whole archive; `1`, `3` the tail
//!   of the kernel of a valid image (after a small valid ELF); `2` the
//!   image's `hermit.toml`;
//! - bits 2-4, the trailer's ISIZE: `0`, `1` the true length; `2` the true
//!   length plus `isize as i8`; `3` `isize`; `4` the budget; `5` the budget
//!   plus one; `6` 64 MiB plus `isize % 2`; `7` `u32::MAX - isize % 256`;
//! - bit 5: a wrong CRC;
//! - bit 6: no final block (a truncated stream);
//! - bit 7: the deflate bytes cut to `cut` bytes.

use hypervisor::image::{CONFIG_HEAP_PER_BYTE, Image, ImageError, MAX_IMAGE_BYTES};

use crate::deflate::{Encoder, Sym};
use crate::heap;
use crate::images;
use crate::input::Input;

/// The budgets `parse_within` is given.
pub const BUDGETS: [usize; 4] = [64 << 10, 512 << 10, 2 << 20, 16 << 20];
/// Heap that parsing may use beyond the budget, for what no input sizes:
/// the inflater (about 11 KiB), the 32 KiB window a refusal surveys the
/// stream with, the program headers and segments, the kernel's name.
pub const ALLOWANCE: usize = 64 << 10;
/// The largest allocation that no input sizes: the 32 KiB window a
/// refusal surveys a gzip stream with.
pub const WINDOW: usize = 32 << 10;
/// Most bytes the program's output grows to: past the two smaller budgets
/// (the larger ones are met by what the trailer declares, which decides
/// before inflating whether the stream is only surveyed), and small enough
/// that an input runs in about a millisecond.
pub const OUT_CAP: usize = 640 << 10;

pub fn gzip(data: &[u8]) {
    let _ = check(data);
}

/// Runs one input, asserts, and returns what parsing said.
fn check(data: &[u8]) -> Result<Image, ImageError> {
    let mut inp = Input::new(data);
    let knobs = inp.u8();
    let budget = BUDGETS[inp.u8() as usize % 4];
    let isize_arg = inp.u32();
    let cut = inp.u16() as usize;
    let program = program(&mut inp);
    let wrap = knobs & 3;
    let prog_len = program.len;

    // The deflate stream: the program, inside a valid archive or not.
    let elf = images::small_elf();
    let toml = images::hermit_toml("hello", &["a"]);
    let mut syms = Vec::new();
    match wrap {
        0 => syms = program.syms,
        2 => {
            syms.push(Sym::Stored(images::tar_header(b"hermit.toml", prog_len, b'0').to_vec()));
            syms.extend(program.syms);
            let mut rest = vec![0u8; prog_len.next_multiple_of(512) - prog_len];
            images::tar_push(&mut rest, b"hello", b'0', &elf);
            syms.push(Sym::Stored(rest));
            zeros(&mut syms, 1024);
        }
        _ => {
            let mut head = Vec::new();
            images::tar_push(&mut head, b"hermit.toml", b'0', toml.as_bytes());
            head.extend_from_slice(&images::tar_header(b"hello", elf.len() + prog_len, b'0'));
            head.extend_from_slice(&elf);
            syms.push(Sym::Stored(head));
            syms.extend(program.syms);
            let kernel = elf.len() + prog_len;
            zeros(&mut syms, kernel.next_multiple_of(512) - kernel + 1024);
        }
    }
    let encode = |keep: bool| {
        let mut e = Encoder::new(keep);
        syms.iter().for_each(|s| e.push(s));
        e.finish(knobs & 0x40 == 0)
    };
    // Counted only: keeping megabytes of output (for a CRC that the parser
    // may never check) would cost more than the rest of the run.
    let stream = encode(false);
    let mut deflate = stream.bytes;
    let mut valid = stream.valid;
    if knobs & 0x80 != 0 && cut < deflate.len() {
        deflate.truncate(cut);
        valid = false;
    }

    let len = stream.len;
    let declared: u32 = match (knobs >> 2) & 7 {
        0 | 1 => len as u32,
        2 => (len as u32).wrapping_add(isize_arg as i8 as u32),
        3 => isize_arg,
        4 => budget as u32,
        5 => budget as u32 + 1,
        6 => MAX_IMAGE_BYTES as u32 + isize_arg % 2,
        _ => u32::MAX - isize_arg % 256,
    };
    let crc_wrong = knobs & 0x20 != 0;
    // The CRC matters only where the parser reaches it: the length right
    // and within the budget.
    let crc = if declared as usize == len && len <= budget.min(MAX_IMAGE_BYTES) {
        let out = encode(true).out.unwrap_or_default();
        images::crc32(&out) ^ u32::from(crc_wrong)
    } else {
        u32::from(crc_wrong)
    };
    let mut file = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    file.extend_from_slice(&deflate);
    file.extend_from_slice(&crc.to_le_bytes());
    file.extend_from_slice(&declared.to_le_bytes());

    let (result, usage) = heap::track(|| Image::parse_within(&file, budget));

    // Never more than the budget, whatever the file says or holds.
    assert!(usage.largest <= budget.max(WINDOW), "an allocation of {} bytes, budget {budget}: {usage:?}", usage.largest);
    assert!(usage.peak <= budget + ALLOWANCE, "parsing took {} bytes of heap, budget {budget}: {usage:?}", usage.peak);

    let declared = declared as usize;
    if !valid {
        // A corrupt or unfinished stream never gets past gzip.
        let e = result.as_ref().err();
        assert!(
            matches!(
                e,
                Some(
                    ImageError::GzipCorrupt
                        | ImageError::GzipChecksum
                        | ImageError::GzipLongerThanDeclared { .. }
                        | ImageError::GzipTooLarge { .. }
                        | ImageError::OutOfMemory { .. }
                )
            ),
            "a broken stream gave {result:?}"
        );
        if let Some(ImageError::OutOfMemory { needed, available }) = e {
            assert_eq!((*needed, *available), (declared as u64, budget as u64));
        }
        return result;
    }

    // A valid stream of `len` bytes behind a trailer that says `declared`.
    let expected = if declared > budget.min(MAX_IMAGE_BYTES) {
        Some(if len <= budget.min(MAX_IMAGE_BYTES) {
            ImageError::GzipChecksum
        } else if declared <= MAX_IMAGE_BYTES {
            ImageError::OutOfMemory { needed: declared as u64, available: budget as u64 }
        } else {
            ImageError::GzipTooLarge { declared: declared as u64 }
        })
    } else if len > declared {
        Some(ImageError::GzipLongerThanDeclared { declared: declared as u64 })
    } else if len < declared || crc_wrong {
        Some(ImageError::GzipChecksum)
    } else {
        None
    };
    // What a valid image (wrap 1) needs: the archive and hermit.toml's share.
    let image_needs = len + toml.len() * CONFIG_HEAP_PER_BYTE;
    match (expected, &result) {
        (Some(want), _) => assert_eq!(result.as_ref().err(), Some(&want), "{len} bytes declared as {declared}"),
        (None, Err(ImageError::OutOfMemory { needed, available })) => {
            // Room for the archive, not for hermit.toml's share beside it.
            assert_eq!(*available, budget as u64);
            assert!(*needed > *available && *needed > len as u64, "{needed} {available}");
            assert!(wrap & 1 == 0 || *needed == image_needs as u64, "{needed} vs {image_needs}");
        }
        (None, Err(e)) => {
            assert!(!format!("{e:?}").starts_with("Gzip"), "a sound gzip layer refused: {e:?}");
            assert!(wrap & 1 == 0, "a valid image within its budget was refused: {e:?}");
        }
        (None, Ok(img)) => {
            assert!(img.elf.len() <= budget);
            assert!(wrap & 1 == 0 || image_needs <= budget);
            if wrap & 1 == 1 {
                assert_eq!(img.elf.len(), elf.len() + prog_len);
                assert!(img.elf.starts_with(&elf));
            }
        }
    }
    result
}

/// A run of `n` zeros.
fn zeros(syms: &mut Vec<Sym>, n: usize) {
    if n == 0 {
        return;
    }
    syms.push(Sym::Lit(0));
    repeat(n - 1, 1, &mut |s| syms.push(s));
}

/// Matches copying `n` bytes from `dist` back, in pieces of 3 to 258 (a
/// remainder under 3 rounds up to 3). Returns the bytes it stands for.
fn repeat(n: usize, dist: u16, emit: &mut impl FnMut(Sym)) -> usize {
    let mut left = n;
    let mut made = 0;
    while left > 0 {
        let piece = match left {
            0..=258 => left.max(3),
            259..=260 => 255,
            _ => 258,
        };
        emit(Sym::Match { len: piece as u16, dist });
        made += piece;
        left = left.saturating_sub(piece);
    }
    made
}

/// A program's symbols and the length of what they inflate to.
struct Program {
    syms: Vec<Sym>,
    len: usize,
}

fn program(inp: &mut Input<'_>) -> Program {
    let mut syms = Vec::new();
    let mut len = 0usize;
    while !inp.is_empty() && len < OUT_CAP {
        let op = inp.u8();
        let a = u32::from(op >> 3);
        let mut push = |s: Sym| syms.push(s);
        match op & 7 {
            1 | 6 => {
                let (v, n) =
                    if op & 7 == 1 { (inp.u8(), (usize::from(inp.u16()) + 1) << (a % 16)) } else { (0, (usize::from(inp.u8()) + 1) << 16) };
                let n = n.min(OUT_CAP - len);
                push(Sym::Lit(v));
                len += 1 + repeat(n.saturating_sub(1), 1, &mut push);
            }
            2 => {
                let d = usize::from(inp.u16());
                let n = (usize::from(inp.u8()) + 3) << (a % 12);
                if len > 0 {
                    let dist = 1 + d % len.min(32768);
                    len += repeat(n.min(OUT_CAP - len), dist as u16, &mut push);
                }
            }
            3 => {
                let n = usize::from(inp.u16());
                let bytes = inp.bytes(n).to_vec();
                len += bytes.len();
                push(Sym::Stored(bytes));
            }
            4 => push(Sym::NewBlock),
            5 => push(Sym::Invalid(a as u8)),
            _ => {
                for &b in inp.bytes(a as usize + 1) {
                    push(Sym::Lit(b));
                    len += 1;
                }
            }
        }
    }
    Program { syms, len }
}

/// Knobs byte: what the output is (bits 0-1) and the ISIZE choice (2-4).
fn knobs(wrap: u8, isize: u8) -> u8 {
    wrap | (isize << 2)
}

/// An input: knobs, budget 512 KiB, ISIZE argument, cut, program.
fn input(knobs: u8, isize: u32, cut: u16, program: &[u8]) -> Vec<u8> {
    let mut v = vec![knobs, 1];
    v.extend_from_slice(&isize.to_le_bytes());
    v.extend_from_slice(&cut.to_le_bytes());
    v.extend_from_slice(program);
    v
}

/// Program op: a stored block of `data`.
fn stored(data: &[u8]) -> Vec<u8> {
    let mut v = vec![3];
    v.extend_from_slice(&(data.len() as u16).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Program op: a run of `v`, `(n + 1) << shift` long.
fn run(v: u8, n: u16, shift: u8) -> Vec<u8> {
    let mut op = vec![1 | (shift << 3), v];
    op.extend_from_slice(&n.to_le_bytes());
    op
}

/// `seed` with budget `BUDGETS[i]`.
fn budget(i: u8, mut seed: Vec<u8>) -> Vec<u8> {
    seed[1] = i;
    seed
}

pub fn seeds() -> Vec<Vec<u8>> {
    let archive = images::hermit_tar(images::hermit_toml("hello", &["x"]).as_bytes(), &images::small_elf());
    let text = [&[7u8 << 3 | 7][..], b"padding!"].concat();
    let b = BUDGETS[1];
    // A table per dot: the costliest TOML known (see CONFIG_HEAP_PER_BYTE).
    let dots = [stored(b"x = ["), stored(&b"{..............................}".repeat(40))].concat();
    let hostile_toml = [stored(b"x = ["), run(b'[', 3_400, 0), run(b']', 3_400, 0), stored(b"]\n")].concat();
    vec![
        // A valid image: its kernel's tail a short run, honest trailer.
        input(knobs(1, 0), 0, 0, &run(0x90, 999, 0)),
        // The same, with text and a copy.
        input(knobs(1, 0), 0, 0, &[text.clone(), vec![2 | (2 << 3), 5, 0, 40]].concat()),
        // The whole archive as a stored block: a valid image.
        input(knobs(0, 0), 0, 0, &stored(&archive)),
        // A kernel past the budget (a 1 MiB run): no room.
        input(knobs(1, 0), 0, 0, &run(0, 0xffff, 4)),
        // A bomb that says it is 60 MiB.
        input(knobs(0, 3), 60 << 20, 0, &[6, 0xff]),
        // ... that says it is 100 bytes.
        input(knobs(0, 3), 100, 0, &[6, 0xff]),
        // A trailer one byte off either way.
        input(knobs(1, 2), 1, 0, &run(7, 3000, 0)),
        input(knobs(1, 2), 0xff, 0, &run(7, 3000, 0)),
        // Exactly the budget, and one past it.
        input(knobs(0, 4), 0, 0, &run(0, (b / 8 - 1) as u16, 3)),
        input(knobs(0, 5), 0, 0, &run(0, (b / 8 - 1) as u16, 3)),
        // Past the hard limit, for real (past the budget) or not.
        input(knobs(0, 6), 1, 0, &run(0, 0xffff, 4)),
        input(knobs(0, 7), 0, 0, &run(0, 10, 0)),
        // A wrong CRC; no final block; a cut stream; an invalid code.
        input(knobs(1, 0) | 0x20, 0, 0, &run(1, 100, 0)),
        input(knobs(1, 0) | 0x40, 0, 0, &run(1, 100, 0)),
        input(knobs(1, 0) | 0x80, 0, 700, &run(1, 100, 0)),
        input(knobs(1, 0), 0, 0, &[run(1, 100, 0), vec![5]].concat()),
        // hermit.toml from the program: a valid one; a hostile 7 KB one
        // (refused: its share of the budget), and with room for it (parsed,
        // and refused by the TOML parser, within its share).
        input(knobs(2, 0), 0, 0, &stored(images::hermit_toml("hello", &["a", "b"]).as_bytes())),
        input(knobs(2, 0), 0, 0, &hostile_toml),
        budget(3, input(knobs(2, 0), 0, 0, &hostile_toml)),
        // A valid image and a 64 KiB budget: no room for hermit.toml's share.
        budget(0, input(knobs(1, 0), 0, 0, &run(0x90, 999, 0))),
        // A 512 KiB kernel in a 16 MiB budget.
        budget(3, input(knobs(1, 0), 0, 0, &run(0x90, 0xffff, 3))),
        // The costliest known hermit.toml, with room for its share.
        budget(3, input(knobs(2, 0), 0, 0, &dots)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_say_what_they_should() {
        let variant = |r: Result<Image, ImageError>| match r {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{e:?}").split([' ', '(']).next().unwrap_or_default().to_string(),
        };
        let got: Vec<String> = seeds().iter().map(|seed| variant(check(seed))).collect();
        let want = [
            "Ok",
            "Ok",
            "Ok",
            "OutOfMemory",
            "OutOfMemory",
            "GzipLongerThanDeclared",
            "GzipChecksum",
            "GzipLongerThanDeclared",
            "NotTar",
            "GzipChecksum",
            "GzipTooLarge",
            "GzipChecksum",
            "GzipChecksum",
            "GzipCorrupt",
            "GzipCorrupt",
            "GzipCorrupt",
            "Ok",
            "OutOfMemory",
            "Config",
            "OutOfMemory",
            "Ok",
            "Config",
        ];
        assert_eq!(got, want);
        // The bomb's refusal, exactly.
        assert_eq!(check(&seeds()[4]).err(), Some(ImageError::OutOfMemory { needed: 60 << 20, available: BUDGETS[1] as u64 }));
    }

    /// The reproduced finding, through `parse_within` with the allocator
    /// counting: 60 MiB of zeros in about 60 KB is refused having
    /// allocated well under the 8 MiB budget; with room for it, it is
    /// unpacked into one exact allocation.
    #[test]
    fn a_real_60_mib_bomb_allocates_within_its_budget() {
        let size = 60 << 20;
        let zeros = vec![0u8; size];
        let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
        bomb.extend(miniz_oxide::deflate::compress_to_vec(&zeros, 9));
        drop(zeros);
        // The CRC does not matter to a refusal; the sizes do.
        bomb.extend_from_slice(&0u32.to_le_bytes());
        bomb.extend_from_slice(&(size as u32).to_le_bytes());
        assert!(bomb.len() < 100 << 10);

        let budget = 8 << 20;
        let (result, usage) = heap::track(|| Image::parse_within(&bomb, budget));
        assert_eq!(result.err(), Some(ImageError::OutOfMemory { needed: size as u64, available: budget as u64 }));
        assert!(usage.peak < 64 << 10, "{usage:?}");

        // With room for it, a smaller one is unpacked into one allocation
        // of exactly the declared size (then fails its CRC).
        let size = 4 << 20;
        let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
        bomb.extend(miniz_oxide::deflate::compress_to_vec(&vec![0u8; size], 9));
        bomb.extend_from_slice(&0u32.to_le_bytes());
        bomb.extend_from_slice(&(size as u32).to_le_bytes());
        let (result, usage) = heap::track(|| Image::parse_within(&bomb, size));
        assert_eq!(result.err(), Some(ImageError::GzipChecksum));
        assert_eq!(usage.largest, size);
        assert!(usage.peak < size + (64 << 10), "{usage:?}");
    }
}
