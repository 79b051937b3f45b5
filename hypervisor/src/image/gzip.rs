//! gzip (RFC 1952) unwrapping: header fields, deflate via `miniz_oxide`'s
//! streaming core, and the CRC-32/length trailer.
//!
//! The output buffer is sized once, from the trailer, and never grown: the
//! trailer's ISIZE (the uncompressed length) is read before anything is
//! allocated, a member declaring more than the caller's budget is refused,
//! and otherwise exactly ISIZE bytes are reserved with `try_reserve_exact`
//! (a failure is [`ImageError::OutOfMemory`], not an abort) and the stream
//! is inflated into them. A stream that would write past ISIZE is stopped
//! there and refused, one that ends short of it fails the length check; so
//! a lying trailer can make us allocate at most the budget, and a bomb
//! (a small file that inflates to gigabytes) costs at most the budget in
//! memory and about as much in inflation work. There is no ratio heuristic:
//! a legitimate image that compresses 1000:1 is fine if it fits.

use alloc::vec::Vec;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress as inflate};

use super::{ImageError, MAX_IMAGE_BYTES};

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const FRESERVED: u8 = 0xe0;

/// The deflate window: the farthest back a match can reach (RFC 1951).
const WINDOW: usize = 32 << 10;

/// Whether `file` starts with the gzip magic.
pub(super) fn is_gzip(file: &[u8]) -> bool {
    file.starts_with(&[0x1f, 0x8b])
}

/// Decompresses a single-member gzip file. It allocates at most
/// `min(budget, MAX_IMAGE_BYTES)` bytes for the output (exactly what the
/// trailer declares), plus the inflater's state (about 11 KiB) and, when it
/// refuses the file, a 32 KiB window to [`survey`] the stream with (so that
/// the refusal says what is wrong: a truncated file's "trailer" is deflate
/// data and may declare anything).
pub(super) fn decompress(file: &[u8], budget: usize) -> Result<Vec<u8>, ImageError> {
    let body = file.get(header_len(file)?..).ok_or(ImageError::GzipHeader("truncated"))?;
    let (deflate, trailer) = body.len().checked_sub(8).map(|n| body.split_at(n)).ok_or(ImageError::GzipCorrupt)?;
    let crc = le_u32(trailer, 0).ok_or(ImageError::GzipCorrupt)?;
    let declared = le_u32(trailer, 4).ok_or(ImageError::GzipCorrupt)?;
    let limit = budget.min(MAX_IMAGE_BYTES);
    let size = match usize::try_from(declared) {
        Ok(size) if size <= limit => size,
        _ => return Err(oversized(deflate, declared, budget)),
    };

    let out_of_memory = || ImageError::OutOfMemory { needed: u64::from(declared), available: budget as u64 };
    let mut inflater = inflater().ok_or_else(out_of_memory)?;
    let state = inflater.first_mut().ok_or_else(out_of_memory)?;
    let mut data = Vec::new();
    if data.try_reserve_exact(size).is_err() {
        drop(inflater);
        return Err(no_room(deflate, size, budget));
    }
    data.resize(size, 0);
    let flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _, written) = inflate(state, deflate, &mut data, 0, flags);
    match status {
        TINFLStatus::Done => {}
        // The buffer is full and the stream has more: longer than declared,
        // unless it turns out to be corrupt further on.
        TINFLStatus::HasMoreOutput => {
            drop(data);
            drop(inflater);
            return Err(match survey(deflate, limit) {
                Survey::Corrupt => ImageError::GzipCorrupt,
                Survey::Ends(_) | Survey::Exceeds | Survey::NoRoom => ImageError::GzipLongerThanDeclared { declared: u64::from(declared) },
            });
        }
        _ => return Err(ImageError::GzipCorrupt),
    }
    if written != size || crc != crc32(&data) {
        return Err(ImageError::GzipChecksum);
    }
    Ok(data)
}

/// Why a member whose trailer declares more than we may allocate is
/// refused. Its ISIZE may be a lie or garbage (a truncated file's last four
/// bytes are deflate data), so the stream is surveyed to tell which: it
/// really expands past the limit (too large, or no room for it), it ends
/// first (the length does not match), or it is corrupt or truncated.
fn oversized(deflate: &[u8], declared: u32, budget: usize) -> ImageError {
    let limit = budget.min(MAX_IMAGE_BYTES);
    match survey(deflate, limit) {
        Survey::Exceeds | Survey::NoRoom if usize::try_from(declared).is_ok_and(|d| d <= MAX_IMAGE_BYTES) => {
            ImageError::OutOfMemory { needed: u64::from(declared), available: budget as u64 }
        }
        Survey::Exceeds | Survey::NoRoom => ImageError::GzipTooLarge { declared: u64::from(declared) },
        Survey::Ends(_) => ImageError::GzipChecksum,
        Survey::Corrupt => ImageError::GzipCorrupt,
    }
}

/// Why a member declaring `size` bytes, within the budget, is refused when
/// the heap could not give us them after all (it is fragmented, or the
/// budget was more than it had). As for [`oversized`], the stream is
/// surveyed (up to `size`) so that a truncated or lying file is called
/// that; only a stream that really is `size` bytes long is "no room".
pub(super) fn no_room(deflate: &[u8], size: usize, budget: usize) -> ImageError {
    match survey(deflate, size) {
        Survey::Ends(n) if n == size => ImageError::OutOfMemory { needed: size as u64, available: budget as u64 },
        Survey::NoRoom => ImageError::OutOfMemory { needed: size as u64, available: budget as u64 },
        Survey::Ends(_) => ImageError::GzipChecksum,
        Survey::Exceeds => ImageError::GzipLongerThanDeclared { declared: size as u64 },
        Survey::Corrupt => ImageError::GzipCorrupt,
    }
}

/// What inflating a deflate stream, output thrown away, showed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Survey {
    /// It is well-formed and ends after this many bytes, within the limit.
    Ends(usize),
    /// It goes on past the limit (whatever comes after).
    Exceeds,
    /// It is corrupt or truncated before the limit.
    Corrupt,
    /// The heap had no room for the survey's 43 KiB of scratch.
    NoRoom,
}

/// Inflates `deflate` into a 32 KiB window that wraps, keeping only the
/// count, and stops as soon as it passes `limit`: at most `limit` bytes of
/// inflation work, and no memory sized by the input.
pub(super) fn survey(deflate: &[u8], limit: usize) -> Survey {
    let (Some(mut inflater), Some(mut window)) = (inflater(), zeroed(WINDOW)) else {
        return Survey::NoRoom;
    };
    let Some(state) = inflater.first_mut() else {
        return Survey::NoRoom;
    };
    let mut input = deflate;
    let mut pos = 0usize;
    let mut total = 0usize;
    loop {
        // No flags: the window wraps (its size is a power of two).
        let (status, read, written) = inflate(state, input, &mut window, pos, 0);
        total = total.saturating_add(written);
        if total > limit {
            return Survey::Exceeds;
        }
        match status {
            TINFLStatus::HasMoreOutput if read > 0 || written > 0 => {
                input = input.get(read..).unwrap_or_default();
                pos = (pos + written) & (WINDOW - 1);
            }
            TINFLStatus::Done => return Survey::Ends(total),
            _ => return Survey::Corrupt,
        }
    }
}

/// A fresh inflater on the heap (it is about 11 KiB), or `None` if the heap
/// has no room for it.
fn inflater() -> Option<Vec<DecompressorOxide>> {
    let mut v = Vec::new();
    v.try_reserve_exact(1).ok()?;
    v.push(DecompressorOxide::new());
    Some(v)
}

/// `len` zero bytes, or `None` if the heap has no room for them.
fn zeroed(len: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(v)
}

/// Length of the gzip header, with its optional fields, after checking it.
fn header_len(file: &[u8]) -> Result<usize, ImageError> {
    let truncated = ImageError::GzipHeader("truncated");
    let fixed = file.get(..10).ok_or(truncated.clone())?;
    if fixed.get(2) != Some(&8) {
        return Err(ImageError::GzipHeader("compression method is not deflate"));
    }
    let flags = fixed.get(3).copied().unwrap_or(0);
    if flags & FRESERVED != 0 {
        return Err(ImageError::GzipHeader("reserved flag bits are set"));
    }
    let mut pos = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = le_u16(file, pos).ok_or(truncated.clone())?;
        pos = pos + 2 + usize::from(xlen);
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let rest = file.get(pos..).ok_or(truncated.clone())?;
            let nul = rest.iter().position(|&b| b == 0).ok_or(truncated.clone())?;
            pos = pos + nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        let stored = le_u16(file, pos).ok_or(truncated.clone())?;
        let header = file.get(..pos).ok_or(truncated)?;
        if stored != crc32(header) as u16 {
            return Err(ImageError::GzipHeader("header CRC does not match"));
        }
        pos += 2;
    }
    Ok(pos)
}

fn le_u16(bytes: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(pos..pos.checked_add(2)?)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(pos..pos.checked_add(4)?)?.try_into().ok()?))
}

/// CRC-32 (IEEE 802.3, reflected, as in gzip and zip).
pub(super) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}
