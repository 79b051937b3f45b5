//! Request lines: [`parse`] turns the bytes a client sent into a
//! [`Request`] or a [`RequestError`], and a request's `Display` is the line
//! that parses back to it (what a client sends).
//!
//! The parser reads hostile bytes (the `control` fuzz target drives it):
//! it splits on whitespace, allocates only for `image-data`'s bytes (at
//! most [`CHUNK_MAX`]), and range-checks every number before anything
//! else sees it.

use alloc::vec::Vec;
use core::fmt;

use super::{ARGS_MAX, CHUNK_MAX, IMAGE_BYTES_MAX};
use crate::MAX_TENANTS;

/// A parsed request; its strings borrow from the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `list`
    List,
    /// `stats`
    Stats,
    /// `stop NAME`
    Stop(&'a str),
    /// `capture WHAT COUNT SECS` (a guest, or `tenant:N`)
    Capture { what: &'a str, count: u32, secs: u32 },
    /// `images`
    Images,
    /// `image-begin NAME LEN`
    ImageBegin { name: &'a str, len: usize },
    /// `image-data HEX`
    ImageData(Vec<u8>),
    /// `image-end`
    ImageEnd,
    /// `start NAME IMAGE MEMORY TENANT [ARG...]` (`TENANT` is `none` for no vNIC)
    Start { name: &'a str, image: &'a str, memory: u64, tenant: Option<u32>, args: Vec<&'a str> },
    /// `version`
    Version,
}

/// Why a request line was refused; the `Display` is the `error` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// A line with no word.
    Empty,
    /// The first word names no request.
    Unknown,
    /// More words than the request takes.
    TooManyWords,
    /// A line longer than [`super::LINE_MAX`].
    TooLong,
    /// A line that is not UTF-8.
    NotUtf8,
    StopNeedsName,
    ImageBeginLength,
    ImageBeginUsage,
    ImageDataHex,
    StartUsage,
    StartMemory,
    StartTenant,
    StartName,
    StartArgs,
    CaptureUsage,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty request",
            Self::Unknown => "unknown request (list, stats, stop, capture, images, image-begin, image-data, image-end, start, version)",
            Self::TooManyWords => "too many words",
            Self::TooLong => "request too long",
            Self::NotUtf8 => "request is not UTF-8",
            Self::StopNeedsName => "stop needs a guest name",
            Self::ImageBeginLength => "image-begin: LEN must be 1 to 67108864 bytes",
            Self::ImageBeginUsage => "image-begin needs a name ([a-z0-9_.-]) and a length",
            Self::ImageDataHex => "image-data needs at most 4096 bytes in hex",
            Self::StartUsage => "start needs NAME IMAGE MEMORY TENANT [ARG...]",
            Self::StartMemory => "start: MEMORY must be a number of bytes above 0",
            Self::StartTenant => "start: TENANT must be a number below 256, or none",
            Self::StartName => "start: NAME must be 1 to 64 of [a-z0-9_-]",
            Self::StartArgs => "start: at most 16 arguments",
            Self::CaptureUsage => "capture needs a guest or tenant:N, a frame count and seconds, both above 0",
        })
    }
}

/// Whether `name` may name a guest or an image: 1 to 64 of [a-z0-9_.-]
/// (a guest's name has no `.`).
pub fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::layout::NAME_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// The bytes of `s`, two lowercase or uppercase hex digits each, if it
/// holds at most `max` of them.
pub fn from_hex(s: &str, max: usize) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * max {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Writes `bytes` as lowercase hex.
pub fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Result<Request<'_>, RequestError> {
    use RequestError as E;
    let mut words = line.split_whitespace();
    let req = match (words.next(), words.next()) {
        (Some("list"), None) => Request::List,
        (Some("stats"), None) => Request::Stats,
        (Some("version"), None) => Request::Version,
        (Some("stop"), Some(name)) => Request::Stop(name),
        (Some("stop"), None) => return Err(E::StopNeedsName),
        (Some("images"), None) => Request::Images,
        (Some("image-begin"), Some(name)) => match words.next().and_then(|w| w.parse().ok()) {
            Some(len) if good_name(name) && (1..=IMAGE_BYTES_MAX).contains(&len) => Request::ImageBegin { name, len },
            Some(_) if good_name(name) => return Err(E::ImageBeginLength),
            _ => return Err(E::ImageBeginUsage),
        },
        (Some("image-data"), Some(h)) => Request::ImageData(from_hex(h, CHUNK_MAX).ok_or(E::ImageDataHex)?),
        (Some("image-end"), None) => Request::ImageEnd,
        (Some("start"), Some(name)) => {
            let image = words.next().ok_or(E::StartUsage)?;
            let memory = words.next().and_then(|w| w.parse().ok()).filter(|&m| m > 0).ok_or(E::StartMemory)?;
            let tenant = match words.next() {
                Some("none") => None,
                Some(t) => Some(t.parse().ok().filter(|&t| t < MAX_TENANTS).ok_or(E::StartTenant)?),
                None => return Err(E::StartUsage),
            };
            let args: Vec<&str> = words.by_ref().collect();
            if !good_name(name) || name.contains('.') {
                return Err(E::StartName);
            }
            if args.len() > ARGS_MAX {
                return Err(E::StartArgs);
            }
            return Ok(Request::Start { name, image, memory, tenant, args });
        }
        (Some("capture"), Some(what)) => {
            let mut num = || words.next().and_then(|w| w.parse::<u32>().ok()).filter(|&n| n > 0);
            match (num(), num()) {
                (Some(count), Some(secs)) => Request::Capture { what, count, secs },
                _ => return Err(E::CaptureUsage),
            }
        }
        (None, _) => return Err(E::Empty),
        _ => return Err(E::Unknown),
    };
    if words.next().is_some() {
        return Err(E::TooManyWords);
    }
    Ok(req)
}

/// The request line (without its newline) that [`parse`] reads back as
/// this request.
impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::List => f.write_str("list"),
            Self::Stats => f.write_str("stats"),
            Self::Version => f.write_str("version"),
            Self::Stop(name) => write!(f, "stop {name}"),
            Self::Capture { what, count, secs } => write!(f, "capture {what} {count} {secs}"),
            Self::Images => f.write_str("images"),
            Self::ImageBegin { name, len } => write!(f, "image-begin {name} {len}"),
            Self::ImageData(bytes) => {
                f.write_str("image-data ")?;
                write_hex(f, bytes)
            }
            Self::ImageEnd => f.write_str("image-end"),
            Self::Start { name, image, memory, tenant, args } => {
                write!(f, "start {name} {image} {memory} ")?;
                match tenant {
                    Some(t) => write!(f, "{t}")?,
                    None => f.write_str("none")?,
                }
                args.iter().try_for_each(|a| write!(f, " {a}"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
