//! A strict, non-panicking tar reader (POSIX ustar, GNU and pax archives)
//! that allocates nothing.
//!
//! It finds regular files only, under their full path (ustar prefix, GNU
//! `L` long names and pax `path` records applied); every other entry type is
//! skipped. Headers must carry a correct checksum and an octal size, entry
//! data must lie inside the archive, and the archive must end with a zero
//! block.

use core::ops::Range;

use super::ImageError;

const BLOCK: usize = 512;

/// Longest ustar path: a 155-byte prefix, a slash and a 100-byte name.
const USTAR_PATH_MAX: usize = 155 + 1 + 100;

/// Where in `archive` the data of the last regular file whose path equals
/// `path` lies (ignoring leading `./` and `/` on both sides); `None` if there
/// is no such file. The whole archive is checked either way. Nothing is
/// allocated, whatever the archive holds.
pub(super) fn find(archive: &[u8], path: &str) -> Result<Option<Range<usize>>, ImageError> {
    let want = normalize(path.as_bytes());
    let mut found = None;
    walk(archive, |name, data| {
        if normalize(name) == want {
            found = Some(data);
        }
    })?;
    Ok(found)
}

/// Calls `visit(path, data)` for each regular file of `archive`, in archive
/// order, with its full path as stored (e.g. `./hermit.toml`) and where its
/// data lies in `archive`; then checks that the archive ends properly.
fn walk(archive: &[u8], mut visit: impl FnMut(&[u8], Range<usize>)) -> Result<(), ImageError> {
    // A name carried by a preceding GNU `L` entry or pax `x` header.
    let mut long_name: Option<&[u8]> = None;
    let mut offset = 0usize;
    loop {
        let Some(header) = archive.get(offset..).and_then(|rest| rest.get(..BLOCK)) else {
            // Out of data without an end-of-archive block.
            return Err(if offset == 0 { ImageError::NotTar } else { truncated(offset) });
        };
        if header.iter().all(|&b| b == 0) {
            return if offset == 0 { Err(ImageError::NotTar) } else { Ok(()) };
        }
        let corrupt = |reason| {
            if offset == 0 { ImageError::NotTar } else { ImageError::TarCorrupt { offset: offset as u64, reason } }
        };
        if !checksum_ok(header) {
            return Err(corrupt("checksum does not match"));
        }
        let size = field(header, 124, 12)
            .and_then(octal)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or(corrupt("size field is not an octal number"))?;
        let data_start = offset + BLOCK;
        let data = data_start.checked_add(size).and_then(|end| archive.get(data_start..end)).ok_or(truncated(offset))?;
        let data_end = data_start + data.len();
        let next = size.checked_next_multiple_of(BLOCK).and_then(|padded| data_start.checked_add(padded)).ok_or(truncated(offset))?;

        match field(header, 156, 1).and_then(|t| t.first()).copied() {
            // Regular file (and the old contiguous-file type).
            Some(b'0' | 0 | b'7') => {
                let mut buf = [0u8; USTAR_PATH_MAX];
                let name = match long_name.take() {
                    Some(name) => name,
                    None => header_name(header, &mut buf),
                };
                visit(name, data_start..data_end);
            }
            // GNU long name for the next entry.
            Some(b'L') => long_name = Some(until_nul(data)),
            // pax extended header for the next entry.
            Some(b'x') => {
                let path = pax_path(data).ok_or(corrupt("malformed pax extended header"))?;
                if let Some(path) = path {
                    long_name = Some(path);
                }
            }
            // Directories, links, devices, pax globals, ...: not ours.
            _ => long_name = None,
        }
        offset = next;
    }
}

fn normalize(mut path: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = path.strip_prefix(b"./") {
            path = rest;
        } else if let Some(rest) = path.strip_prefix(b"/") {
            path = rest;
        } else {
            return path;
        }
    }
}

fn truncated(offset: usize) -> ImageError {
    ImageError::TarTruncated { offset: offset as u64 }
}

fn field(header: &[u8], start: usize, len: usize) -> Option<&[u8]> {
    header.get(start..start + len)
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or(bytes)
}

/// `prefix/name` for ustar headers (put together in `buf`), `name`
/// otherwise.
fn header_name<'a>(header: &'a [u8], buf: &'a mut [u8; USTAR_PATH_MAX]) -> &'a [u8] {
    let name = until_nul(field(header, 0, 100).unwrap_or_default());
    let ustar = field(header, 257, 6) == Some(b"ustar\0");
    let prefix = until_nul(field(header, 345, 155).unwrap_or_default());
    if !ustar || prefix.is_empty() {
        return name;
    }
    let mut len = 0;
    for &b in prefix.iter().chain(b"/").chain(name) {
        if let Some(slot) = buf.get_mut(len) {
            *slot = b;
            len += 1;
        }
    }
    buf.get(..len).unwrap_or_default()
}

/// Parses an octal numeric field: optional leading spaces, octal digits,
/// then NULs or spaces to the end. At least one digit is required.
fn octal(field: &[u8]) -> Option<u64> {
    let digits = field.iter().skip_while(|&&b| b == b' ');
    let mut value: u64 = 0;
    let mut seen = false;
    let mut done = false;
    for &b in digits {
        match b {
            b'0'..=b'7' if !done => {
                value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
                seen = true;
            }
            0 | b' ' => done = true,
            _ => return None,
        }
    }
    seen.then_some(value)
}

/// The header checksum: the byte sum with the checksum field read as spaces
/// (unsigned, or signed as some old tars computed it).
fn checksum_ok(header: &[u8]) -> bool {
    let Some(stored) = field(header, 148, 8).and_then(octal) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored) == Ok(signed)
}

/// The `path` record, if any, of a pax extended header: records of the form
/// "<len> <key>=<value>\n", `<len>` counting the whole record. `None` if
/// the records are malformed.
fn pax_path(mut records: &[u8]) -> Option<Option<&[u8]>> {
    let mut path = None;
    while !records.is_empty() {
        let space = records.iter().position(|&b| b == b' ')?;
        let len: usize = core::str::from_utf8(records.get(..space)?).ok()?.parse().ok()?;
        let record = records.get(space + 1..len)?;
        let record = record.strip_suffix(b"\n")?;
        record.iter().position(|&b| b == b'=')?;
        if let Some(value) = record.strip_prefix(b"path=") {
            path = Some(value);
        }
        records = records.get(len..)?;
    }
    Some(path)
}
