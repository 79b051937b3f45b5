//! Request lines: [`parse`] turns the bytes a client sent into a
//! [`Request`] or a [`RequestError`], and a request's `Display` is the line
//! that parses back to it (what a client sends).
//!
//! The parser reads hostile bytes (the `control` fuzz target drives it):
//! it splits on whitespace, allocates only for `image-data`'s bytes (at
//! most [`CHUNK_MAX`]), and range-checks every number before anything
//! else sees it.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::{ARGS_MAX, CHUNK_MAX, ENV_MAX, IMAGE_BYTES_MAX, SNAPSHOT_BYTES_MAX};
use crate::MAX_TENANTS;
use crate::bundle::Limits;

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
    /// `start NAME IMAGE MEMORY TENANT [OPTION... --] [ARG...]`; the
    /// options `env=KEY=VALUE` (percent-escaped) give `env`, and `escaped`
    /// says the arguments are percent-escaped (protocol 5).
    Start {
        name: &'a str,
        image: &'a str,
        memory: u64,
        tenant: Tenant<'a>,
        options: StartOptions,
        args: Vec<Cow<'a, str>>,
        env: Vec<Cow<'a, str>>,
    },
    /// `version`
    Version,
    /// `image-remove IMAGE` (a name or a digest)
    ImageRemove(&'a str),
    /// `tenants`
    Tenants,
    /// `tenant-remove NAME`
    TenantRemove(&'a str),
    /// `wait NAME`
    Wait(&'a str),
    /// `events`
    Events,
    /// `console NAME`
    Console(&'a str),
    /// `remove NAME` (protocol 5): forget an ended guest's record.
    Remove(&'a str),
    /// `pause NAME` (protocol 6): take a guest off the CPUs at its next
    /// exit, until `resume`.
    Pause(&'a str),
    /// `resume NAME` (protocol 6): a paused guest runs again.
    Resume(&'a str),
    /// `clone TEMPLATE NAME [COUNT]` (protocol 6): guests that share the
    /// paused guest TEMPLATE's pages copy-on-write; NAME, or NAME-0 ..
    /// NAME-(COUNT-1) when COUNT is given.
    /// With `-- ARG...` (protocol 7) they get those arguments instead of
    /// the template's.
    Clone { template: &'a str, name: &'a str, count: Option<u32>, args: Option<Vec<Cow<'a, str>>> },
    /// `snapshot NAME` (protocol 7): the paused guest's state, streamed.
    Snapshot(&'a str),
    /// `restore-begin NAME LEN [TENANT] [-- ARG...]` (protocol 7): an
    /// upload of a snapshot of LEN bytes from which guest NAME is made (in
    /// TENANT, or the snapshot's; with ARGs instead of the saved
    /// arguments), its chunks `image-data` lines.
    RestoreBegin { name: &'a str, len: usize, tenant: Option<Tenant<'a>>, args: Option<Vec<Cow<'a, str>>> },
    /// `restore-end`
    RestoreEnd,
}

/// Most clones one `clone` request makes.
pub const CLONES_MAX: u32 = 65_536;

/// The tenant `start` puts a guest in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tenant<'a> {
    /// `none`: no vNIC.
    None,
    /// A tenant by number, below [`MAX_TENANTS`].
    Number(u32),
    /// A tenant by name (1 to 64 of `[a-z0-9_-]`, starting with a letter):
    /// the manifest's, or a new one the hypervisor numbers.
    Named(&'a str),
}

/// What `start` may set beside memory and tenant, as `KEY=VALUE` words
/// before a `--` (the manifest's keys and ranges); unset ones take the
/// manifest's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// `weight=N`: CPU share, 1..=10000.
    pub weight: Option<u32>,
    /// `cap=P`: at most P percent of one CPU, 1..=100.
    pub cap: Option<u32>,
    /// `ring_slots=N`: slots in each vNIC ring (a power of two, 2..=2048: `ring::SLOTS_MIN..=SLOTS_MAX`).
    pub ring_slots: Option<u32>,
    /// `nic_packets=`, `nic_bytes=`, `nic_broadcasts=`, `console_bytes=`,
    /// `notifications=`: rate limits per second (0: none), in the order of
    /// [`StartOptions::LIMITS`].
    pub limits: [Option<u64>; 5],
    /// `watch`: this client gets the guest's console lines and its end
    /// (as `console` and `event` records) from its first instruction on.
    pub watch: bool,
}

impl StartOptions {
    /// The names of the rate-limit options, in the order of `limits`.
    pub const LIMITS: [&'static str; 5] = ["nic_packets", "nic_bytes", "nic_broadcasts", "console_bytes", "notifications"];

    /// `limits` with these options applied.
    pub fn apply_limits(&self, mut limits: Limits) -> Limits {
        let fields = [
            &mut limits.nic_packets,
            &mut limits.nic_bytes,
            &mut limits.nic_broadcasts,
            &mut limits.console_bytes,
            &mut limits.notifications,
        ];
        for (field, value) in fields.into_iter().zip(self.limits) {
            if let Some(v) = value {
                *field = v;
            }
        }
        limits
    }

    /// Reads one `KEY=VALUE` (or `watch`) word.
    fn set(&mut self, word: &str) -> Result<(), RequestError> {
        if word == "watch" {
            self.watch = true;
            return Ok(());
        }
        let (key, value) = word.split_once('=').ok_or(RequestError::StartOption)?;
        let number =
            |range: core::ops::RangeInclusive<u32>| value.parse().ok().filter(|v| range.contains(v)).ok_or(RequestError::StartOption);
        match key {
            "weight" => self.weight = Some(number(1..=10_000)?),
            "cap" => self.cap = Some(number(1..=100)?),
            "ring_slots" => {
                self.ring_slots = Some(
                    number(crate::ring::SLOTS_MIN..=crate::ring::SLOTS_MAX)
                        .and_then(|n| if n.is_power_of_two() { Ok(n) } else { Err(RequestError::StartOption) })?,
                )
            }
            _ => {
                let i = Self::LIMITS.iter().position(|&k| k == key).ok_or(RequestError::StartOption)?;
                self.limits[i] = Some(value.parse().map_err(|_| RequestError::StartOption)?);
            }
        }
        Ok(())
    }
}

impl fmt::Display for StartOptions {
    /// The option words, each followed by a space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in [("weight", self.weight), ("cap", self.cap), ("ring_slots", self.ring_slots)] {
            if let Some(v) = value {
                write!(f, "{key}={v} ")?;
            }
        }
        for (key, value) in Self::LIMITS.iter().zip(self.limits) {
            if let Some(v) = value {
                write!(f, "{key}={v} ")?;
            }
        }
        if self.watch {
            f.write_str("watch ")?;
        }
        Ok(())
    }
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
    StartEnv,
    StartEscape,
    StartOption,
    CaptureUsage,
    NeedsName,
    CloneUsage,
    RestoreUsage,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty request",
            Self::Unknown => {
                "unknown request (list, stats, stop, remove, pause, resume, clone, snapshot, restore-begin, restore-end, capture, images, \
                 image-begin, image-data, image-end, image-remove, start, tenants, tenant-remove, wait, events, console, version)"
            }
            Self::TooManyWords => "too many words",
            Self::TooLong => "request too long",
            Self::NotUtf8 => "request is not UTF-8",
            Self::StopNeedsName => "stop needs a guest name",
            Self::ImageBeginLength => "image-begin: LEN must be 1 to 67108864 bytes",
            Self::ImageBeginUsage => "image-begin needs a name ([a-z0-9_.-]) and a length",
            Self::ImageDataHex => "image-data needs at most 4096 bytes in hex",
            Self::StartUsage => "start needs NAME IMAGE MEMORY TENANT [ARG...]",
            Self::StartMemory => "start: MEMORY must be a number of bytes above 0",
            Self::StartTenant => "start: TENANT must be a number below 256, a name ([A-Za-z0-9_-], not only digits), or none",
            Self::StartName => "start: NAME must be 1 to 64 of [a-z0-9_-]",
            Self::StartArgs => "start, clone, restore-begin: at most 16 arguments",
            Self::StartEnv => "start: env=KEY=VALUE needs a KEY, and at most 64 of them",
            Self::StartEscape => "start, clone, restore-begin: a %XX escape is malformed, or decodes to a NUL byte or not to UTF-8",
            Self::StartOption => {
                "start: options before -- are weight=1..10000, cap=1..100, ring_slots=2..2048 (a power of two), \
                 nic_packets=, nic_bytes=, nic_broadcasts=, console_bytes=, notifications= (per second, 0: none), watch"
            }
            Self::NeedsName => "image-remove, tenant-remove, wait, console, remove, pause, resume and snapshot need one name",
            Self::CloneUsage => "clone needs TEMPLATE NAME [COUNT] [-- ARG...]: NAME 1 to 64 of [a-z0-9_-], COUNT 1 to 65536",
            Self::RestoreUsage => {
                "restore-begin needs NAME LEN [TENANT] [-- ARG...]: NAME 1 to 64 of [a-z0-9_-], LEN 1 to 1073741824, TENANT a number \
                 below 256, a name or none"
            }
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

/// Whether `name` may name a tenant: 1 to 64 of `[A-Za-z0-9_-]` (the
/// manifest's tenant names), not only digits (those are numbers) and not
/// `none`.
pub fn good_tenant_name(name: &str) -> bool {
    (1..=crate::layout::NAME_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.bytes().all(|b| b.is_ascii_digit())
        && name != "none"
}

/// The bytes of `s`, two lowercase or uppercase hex digits each, if it
/// holds at most `max` of them.
pub fn from_hex(s: &str, max: usize) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * max {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes().chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// Whether `s` cannot travel as one word as it is: empty, or with a byte
/// outside printable ASCII, or a `%`.
pub fn needs_escape(s: &str) -> bool {
    s.is_empty() || s.bytes().any(|b| !b.is_ascii_graphic() || b == b'%')
}

/// Writes `s` with every byte outside printable ASCII, and `%`, as `%XX`.
pub fn write_escaped(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    for b in s.bytes() {
        match b.is_ascii_graphic() && b != b'%' {
            true => f.write_char(b as char)?,
            false => write!(f, "%{b:02X}")?,
        }
    }
    Ok(())
}

/// `s` with its `%XX` escapes decoded, if each is two hex digits and the
/// result is UTF-8 without a NUL byte (borrowed when it has none).
pub fn unescape(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.extend(from_hex(core::str::from_utf8(&hex).ok()?, 1)?);
            }
            b => out.push(b),
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(Cow::Owned(s))
}

/// Writes `bytes` as lowercase hex.
pub fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// The arguments after a `--` that `words` has just passed (each
/// percent-escaped, at most [`ARGS_MAX`]); `None` if the line has no `--`.
fn escaped_args<'a>(words: &mut impl Iterator<Item = &'a str>, line: &str) -> Result<Option<Vec<Cow<'a, str>>>, RequestError> {
    if !line.split_whitespace().any(|w| w == "--") {
        return Ok(None);
    }
    let args: Vec<&str> = words.collect();
    if args.len() > ARGS_MAX {
        return Err(RequestError::StartArgs);
    }
    args.into_iter().map(|a| unescape(a).ok_or(RequestError::StartEscape)).collect::<Result<_, _>>().map(Some)
}

/// Writes ` -- ARG...` (each percent-escaped) if there are arguments to give.
fn write_args(f: &mut fmt::Formatter<'_>, args: &Option<Vec<Cow<'_, str>>>) -> fmt::Result {
    if let Some(args) = args {
        f.write_str(" --")?;
        for a in args {
            f.write_str(" ")?;
            write_escaped(f, a)?;
        }
    }
    Ok(())
}

/// The tenant a word names: `none`, a number below [`MAX_TENANTS`], or a
/// name (what `Tenant`'s `Display` writes).
pub fn parse_tenant(word: &str) -> Option<Tenant<'_>> {
    match word {
        "none" => Some(Tenant::None),
        t if good_tenant_name(t) => Some(Tenant::Named(t)),
        t => t.parse().ok().filter(|&t| t < MAX_TENANTS).map(Tenant::Number),
    }
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
            let tenant = parse_tenant(words.next().ok_or(E::StartUsage)?).ok_or(E::StartTenant)?;
            let rest: Vec<&str> = words.by_ref().collect();
            // Options only before a `--`; without one every word is an
            // argument (protocol 3's form).
            let mut options = StartOptions::default();
            let (mut env, mut escaped) = (Vec::new(), false);
            let args = match rest.iter().position(|&w| w == "--") {
                Some(i) => {
                    for &w in &rest[..i] {
                        match (w, w.strip_prefix("env=")) {
                            (_, Some(var)) => {
                                let var = unescape(var).ok_or(E::StartEscape)?;
                                if env.len() == ENV_MAX || var.find('=').is_none_or(|k| k == 0) {
                                    return Err(E::StartEnv);
                                }
                                env.push(var);
                            }
                            ("escaped", None) => escaped = true,
                            _ => options.set(w)?,
                        }
                    }
                    &rest[i + 1..]
                }
                None => &rest[..],
            };
            if !good_name(name) || name.contains('.') {
                return Err(E::StartName);
            }
            if args.len() > ARGS_MAX {
                return Err(E::StartArgs);
            }
            let args = match escaped {
                true => args.iter().map(|a| unescape(a).ok_or(E::StartEscape)).collect::<Result<_, _>>()?,
                false => args.iter().map(|&a| Cow::Borrowed(a)).collect(),
            };
            return Ok(Request::Start { name, image, memory, tenant, options, args, env });
        }
        (Some("image-remove"), Some(w)) => Request::ImageRemove(w),
        (Some("tenants"), None) => Request::Tenants,
        (Some("tenant-remove"), Some(w)) => Request::TenantRemove(w),
        (Some("wait"), Some(w)) => Request::Wait(w),
        (Some("events"), None) => Request::Events,
        (Some("console"), Some(w)) => Request::Console(w),
        (Some("remove"), Some(w)) => Request::Remove(w),
        (Some("pause"), Some(w)) => Request::Pause(w),
        (Some("resume"), Some(w)) => Request::Resume(w),
        (Some("snapshot"), Some(w)) => Request::Snapshot(w),
        (Some("restore-begin"), Some(name)) => {
            let len = words.next().and_then(|w| w.parse().ok()).filter(|l| (1..=SNAPSHOT_BYTES_MAX).contains(l));
            let mut rest = words.by_ref().take_while(|&w| w != "--");
            let tenant = match rest.next() {
                Some(w) => Some(parse_tenant(w).ok_or(E::RestoreUsage)?),
                None => None,
            };
            if rest.next().is_some() {
                return Err(E::RestoreUsage);
            }
            let args = escaped_args(&mut words, line)?;
            match len {
                Some(len) if good_name(name) && !name.contains('.') => return Ok(Request::RestoreBegin { name, len, tenant, args }),
                _ => return Err(E::RestoreUsage),
            }
        }
        (Some("restore-begin"), None) => return Err(E::RestoreUsage),
        (Some("restore-end"), None) => Request::RestoreEnd,
        (Some("image-remove" | "tenant-remove" | "wait" | "console" | "remove" | "pause" | "resume" | "snapshot"), None) => {
            return Err(E::NeedsName);
        }
        (Some("clone"), Some(template)) => {
            let name = words.next().filter(|n| good_name(n) && !n.contains('.')).ok_or(E::CloneUsage)?;
            let mut rest = words.by_ref().take_while(|&w| w != "--");
            let count = match rest.next() {
                Some(w) => Some(w.parse().ok().filter(|n| (1..=CLONES_MAX).contains(n)).ok_or(E::CloneUsage)?),
                None => None,
            };
            if rest.next().is_some() {
                return Err(E::TooManyWords);
            }
            let args = escaped_args(&mut words, line)?;
            return Ok(Request::Clone { template, name, count, args });
        }
        (Some("clone"), None) => return Err(E::CloneUsage),
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
            Self::Start { name, image, memory, tenant, options, args, env } => {
                write!(f, "start {name} {image} {memory} {tenant}")?;
                // Arguments are escaped if one needs it; a `--` whenever
                // it is needed: options, or an argument that is itself `--`.
                let escaped = args.iter().any(|a| needs_escape(a));
                if *options != StartOptions::default() || !env.is_empty() || escaped || args.iter().any(|a| a == "--") {
                    f.write_str(" ")?;
                    for var in env {
                        f.write_str("env=")?;
                        write_escaped(f, var)?;
                        f.write_str(" ")?;
                    }
                    if escaped {
                        f.write_str("escaped ")?;
                    }
                    write!(f, "{options}--")?;
                }
                args.iter().try_for_each(|a| {
                    f.write_str(" ")?;
                    match escaped {
                        true => write_escaped(f, a),
                        false => f.write_str(a),
                    }
                })
            }
            Self::ImageRemove(w) => write!(f, "image-remove {w}"),
            Self::Tenants => f.write_str("tenants"),
            Self::TenantRemove(w) => write!(f, "tenant-remove {w}"),
            Self::Remove(w) => write!(f, "remove {w}"),
            Self::Pause(w) => write!(f, "pause {w}"),
            Self::Resume(w) => write!(f, "resume {w}"),
            Self::Clone { template, name, count, args } => {
                write!(f, "clone {template} {name}")?;
                if let Some(n) = count {
                    write!(f, " {n}")?;
                }
                write_args(f, args)
            }
            Self::Wait(w) => write!(f, "wait {w}"),
            Self::Events => f.write_str("events"),
            Self::Console(w) => write!(f, "console {w}"),
            Self::Snapshot(w) => write!(f, "snapshot {w}"),
            Self::RestoreBegin { name, len, tenant, args } => {
                write!(f, "restore-begin {name} {len}")?;
                if let Some(t) = tenant {
                    write!(f, " {t}")?;
                }
                write_args(f, args)
            }
            Self::RestoreEnd => f.write_str("restore-end"),
        }
    }
}

impl fmt::Display for Tenant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Number(t) => write!(f, "{t}"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests;
