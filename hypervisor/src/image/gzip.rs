//! gzip (RFC 1952) unwrapping: header fields, deflate via `miniz_oxide` with
//! an output limit, and the CRC-32/length trailer.

use alloc::vec::Vec;

use miniz_oxide::inflate::{TINFLStatus, decompress_to_vec_with_limit};

use super::ImageError;

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const FRESERVED: u8 = 0xe0;

/// Whether `file` starts with the gzip magic.
pub(super) fn is_gzip(file: &[u8]) -> bool {
    file.starts_with(&[0x1f, 0x8b])
}

/// Decompresses a single-member gzip file into at most `limit` bytes.
pub(super) fn decompress(file: &[u8], limit: usize) -> Result<Vec<u8>, ImageError> {
    let body = file
        .get(header_len(file)?..)
        .ok_or(ImageError::GzipHeader("truncated"))?;
    let (deflate, trailer) = body
        .len()
        .checked_sub(8)
        .map(|n| body.split_at(n))
        .ok_or(ImageError::GzipCorrupt)?;
    let data = decompress_to_vec_with_limit(deflate, limit).map_err(|e| match e.status {
        TINFLStatus::HasMoreOutput => ImageError::GzipTooLarge,
        _ => ImageError::GzipCorrupt,
    })?;
    let crc = trailer
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    let size = trailer
        .get(4..)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    if crc != Some(crc32(&data)) || size != Some(data.len() as u32) {
        return Err(ImageError::GzipChecksum);
    }
    Ok(data)
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
    Some(u16::from_le_bytes(
        bytes.get(pos..pos.checked_add(2)?)?.try_into().ok()?,
    ))
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
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}
