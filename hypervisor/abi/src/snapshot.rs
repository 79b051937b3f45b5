//! A guest's saved state (`ctl snapshot`), from which `ctl restore`
//! creates a guest that goes on where it was, on this hypervisor or on
//! another one. The file is hostile input to the one that restores it:
//! [`Snapshot::parse`] checks every length and value before anything is
//! built from it, and never panics (`cargo xtask fuzz snapshot`).
//!
//! Little-endian, length-prefixed, no padding (format [`FORMAT_VERSION`]):
//!
//! ```text
//! magic      8 bytes  "HVSNAP01" (MAGIC)
//! version    u32      FORMAT_VERSION
//! abi        u32      the guest ABI (crate::ABI_VERSION) it ran under
//! length     u64      the whole file's length, digest included
//! image      32 bytes SHA-256 of its image file (as `images` names it);
//!                     image pages are not in the file: the restoring
//!                     hypervisor must have that image loaded
//! image name str      its image's name then (for messages)
//! name       str      its name then (for messages)
//! settings   memory limit u64, weight u32, cap u32, tenant u32 (u32::MAX:
//!            no vNIC), ring slots u32, limits per second u64 x 5 (NIC
//!            packets, NIC bytes, NIC broadcasts, console bytes,
//!            notifications), as in the bundle
//! clock      u64      its monotonic clock (ns) when it was saved: the
//!                     restored guest's clock goes on from there
//! flags      u32      FLAG_BLOCKED: it sleeps in a `block` hypercall
//! registers  u64 x 21 REGISTERS, in that order
//! fpu        512 bytes its x87/SSE state as `fxsave64` stores it
//! args       u32 count, str each
//! env        u32 count, str each (KEY=VALUE)
//! pages      u32 count, then each: address u64 (page-aligned, ascending),
//!            flags u32 (PAGE_WRITABLE, PAGE_EXECUTABLE), 4096 bytes.
//!            Every page it owned, its shared page and ring slots included;
//!            not its start page (the restorer writes a new one), the time
//!            page, or its image's read-only pages.
//! digest     32 bytes SHA-256 of everything before it
//! str = u32 length + UTF-8 bytes
//! ```

use crate::bundle::{Limits, Settings, TENANT_NONE};
use crate::layout::{PAGE_SIZE, START_PAGE, TIME_PAGE, USER_END, USER_MIN};
use crate::wire::{Reader, Short};
use core::fmt;
use sha2::{Digest, Sha256};

/// First bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"HVSNAP01";
/// The version of this layout.
pub const FORMAT_VERSION: u32 = 1;
/// `flags`: the guest sleeps in a `block` hypercall (it returns the
/// pending events when the guest runs again).
pub const FLAG_BLOCKED: u32 = 1 << 0;
/// A page's flags: writable, executable.
pub const PAGE_WRITABLE: u32 = 1 << 0;
pub const PAGE_EXECUTABLE: u32 = 1 << 1;
/// The saved registers, in file order.
pub const REGISTERS: [&str; 21] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rsp", "rflags",
    "vector", "error", "cr2",
];
/// Index of `rip` in the registers.
pub const RIP: usize = 15;
/// Bytes of the FPU state.
pub const FPU_BYTES: usize = 512;
/// Where MXCSR lies in the FPU state; bits 16 and up must be clear
/// (`fxrstor` faults otherwise).
pub const FPU_MXCSR_OFFSET: usize = 24;
/// Arguments and variables a snapshot may carry (as a start may).
pub const ARGS_MAX: u32 = 256;
/// Longest image or guest name.
pub const NAME_MAX: usize = 64;
/// Bytes of the digest that ends the file.
const DIGEST_BYTES: usize = 32;

/// Why a snapshot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    BadMagic,
    /// A format this hypervisor does not read.
    Version(u32),
    /// Shorter than it says, or than its fields.
    Truncated,
    /// Longer than it says.
    TrailingBytes,
    /// Its digest does not match its bytes.
    Altered,
    /// Taken under another guest ABI.
    Abi(u32),
    NotUtf8,
    /// A name too long, or too many arguments.
    TooLong(&'static str),
    /// A setting out of range.
    BadSettings(&'static str),
    /// `rip` is not in the guest's half.
    BadRip(u64),
    /// MXCSR has reserved bits set.
    BadFpu,
    /// Unknown flag bits.
    BadFlags(u32),
    /// A page address not aligned, out of the guest half, not ascending,
    /// or one the restorer makes itself (start page, time page), or
    /// unknown page flags.
    BadPage(u64),
    /// More pages than its memory limit holds.
    TooManyPages(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::BadMagic => f.write_str("not a snapshot (bad magic)"),
            Error::Version(v) => write!(f, "snapshot format {v}; this hypervisor reads format {FORMAT_VERSION}"),
            Error::Truncated => f.write_str("the snapshot is truncated"),
            Error::TrailingBytes => f.write_str("the snapshot has bytes past its end"),
            Error::Altered => f.write_str("the snapshot was altered (its digest does not match)"),
            Error::Abi(v) => write!(f, "the snapshot is of a guest of ABI {v}; this hypervisor speaks ABI {}", crate::ABI_VERSION),
            Error::NotUtf8 => f.write_str("the snapshot holds a string that is not UTF-8"),
            Error::TooLong(what) => write!(f, "the snapshot's {what} is too long"),
            Error::BadSettings(what) => write!(f, "the snapshot's {what} is out of range"),
            Error::BadRip(rip) => write!(f, "the snapshot's rip {rip:#x} is not in the guest's half"),
            Error::BadFpu => f.write_str("the snapshot's FPU state has reserved MXCSR bits set"),
            Error::BadFlags(v) => write!(f, "the snapshot has unknown flags {v:#x}"),
            Error::BadPage(va) => write!(f, "the snapshot holds a bad page at {va:#x}"),
            Error::TooManyPages(n) => write!(f, "the snapshot holds {n} pages, more than its memory limit"),
        }
    }
}

/// A saved page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page<'a> {
    pub vaddr: u64,
    pub writable: bool,
    pub executable: bool,
    pub data: &'a [u8; PAGE_SIZE as usize],
}

/// Bytes one page takes in the file.
pub const PAGE_RECORD: usize = 8 + 4 + PAGE_SIZE as usize;

/// What a snapshot holds besides its strings and pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub abi: u32,
    pub image_digest: [u8; 32],
    pub settings: Settings,
    pub clock_ns: u64,
    pub blocked: bool,
    pub regs: [u64; 21],
    pub fpu: [u8; FPU_BYTES],
}

/// A parsed, fully checked snapshot; strings and pages borrow the file.
#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    pub state: State,
    pub image_name: &'a str,
    pub name: &'a str,
    argc: u32,
    args: &'a [u8],
    envc: u32,
    env: &'a [u8],
    page_count: u32,
    pages: &'a [u8],
}

impl From<Short> for Error {
    fn from(_: Short) -> Self {
        Error::Truncated
    }
}

/// The snapshot's own fields.
impl<'a> Reader<'a> {
    fn str_at_most(&mut self, max: usize, what: &'static str) -> Result<&'a str, Error> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(Error::TooLong(what));
        }
        core::str::from_utf8(self.take(n)?).map_err(|_| Error::NotUtf8)
    }
    /// `count` strings (checked); the bytes they take.
    fn strs(&mut self, what: &'static str) -> Result<(u32, &'a [u8]), Error> {
        let count = self.u32()?;
        if count > ARGS_MAX {
            return Err(Error::TooLong(what));
        }
        let start = self.buf;
        for _ in 0..count {
            let s = self.str_at_most(PAGE_SIZE as usize, what)?;
            if s.contains('\0') {
                return Err(Error::BadSettings(what));
            }
        }
        Ok((count, &start[..start.len() - self.buf.len()]))
    }
}

/// The strings of a list [`Reader::strs`] checked.
fn strings(bytes: &[u8], count: u32) -> impl Iterator<Item = &str> {
    let mut r = Reader { buf: bytes };
    (0..count).map_while(move |_| r.str_at_most(usize::MAX, "").ok())
}

impl<'a> Snapshot<'a> {
    /// Decodes and checks a whole snapshot file.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader { buf };
        if r.take(MAGIC.len()).map_err(|_| Error::BadMagic)? != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(Error::Version(version));
        }
        let abi = r.u32()?;
        let length = r.u64()?;
        if length > buf.len() as u64 {
            return Err(Error::Truncated);
        }
        if length < buf.len() as u64 {
            return Err(Error::TrailingBytes);
        }
        let Some(body_len) = buf.len().checked_sub(DIGEST_BYTES) else { return Err(Error::Truncated) };
        let (body, digest) = buf.split_at(body_len);
        if Sha256::digest(body).as_slice() != digest {
            return Err(Error::Altered);
        }
        if abi != crate::ABI_VERSION {
            return Err(Error::Abi(abi));
        }
        // The digest covers what remains: parse the body only.
        r.buf = body.get(buf.len() - r.buf.len()..).ok_or(Error::Truncated)?;
        let image_digest = *r.array::<32>()?;
        let image_name = r.str_at_most(NAME_MAX, "image name")?;
        let name = r.str_at_most(NAME_MAX, "name")?;
        let settings = Settings {
            memory: r.u64()?,
            weight: r.u32()?,
            cap: r.u32()?,
            tenant: r.u32()?,
            ring_slots: r.u32()?,
            limits: Limits {
                nic_packets: r.u64()?,
                nic_bytes: r.u64()?,
                nic_broadcasts: r.u64()?,
                console_bytes: r.u64()?,
                notifications: r.u64()?,
            },
        };
        check_settings(&settings)?;
        let clock_ns = r.u64()?;
        let flags = r.u32()?;
        if flags & !FLAG_BLOCKED != 0 {
            return Err(Error::BadFlags(flags));
        }
        let mut regs = [0u64; 21];
        for v in &mut regs {
            *v = r.u64()?;
        }
        if regs[RIP] >= USER_END {
            return Err(Error::BadRip(regs[RIP]));
        }
        let fpu = *r.array::<FPU_BYTES>()?;
        let mxcsr =
            u32::from_le_bytes([fpu[FPU_MXCSR_OFFSET], fpu[FPU_MXCSR_OFFSET + 1], fpu[FPU_MXCSR_OFFSET + 2], fpu[FPU_MXCSR_OFFSET + 3]]);
        if mxcsr >> 16 != 0 {
            return Err(Error::BadFpu);
        }
        let (argc, args) = r.strs("arguments")?;
        let (envc, env) = r.strs("environment")?;
        let page_count = r.u32()?;
        if u64::from(page_count) > settings.memory / PAGE_SIZE {
            return Err(Error::TooManyPages(page_count));
        }
        let pages = r.take(page_count as usize * PAGE_RECORD)?;
        if !r.buf.is_empty() {
            return Err(Error::TrailingBytes);
        }
        let mut last = None;
        for chunk in pages.chunks_exact(PAGE_RECORD) {
            let va = u64::from_le_bytes(chunk[..8].try_into().map_err(|_| Error::Truncated)?);
            let fl = u32::from_le_bytes(chunk[8..12].try_into().map_err(|_| Error::Truncated)?);
            let bad = !va.is_multiple_of(PAGE_SIZE)
                || !(USER_MIN..USER_END).contains(&va)
                || last.is_some_and(|l| va <= l)
                || va == START_PAGE
                || va == TIME_PAGE
                || fl & !(PAGE_WRITABLE | PAGE_EXECUTABLE) != 0;
            if bad {
                return Err(Error::BadPage(va));
            }
            last = Some(va);
        }
        Ok(Snapshot {
            state: State { abi, image_digest, settings, clock_ns, blocked: flags & FLAG_BLOCKED != 0, regs, fpu },
            image_name,
            name,
            argc,
            args,
            envc,
            env,
            page_count,
            pages,
        })
    }

    /// The arguments, in order.
    pub fn args(&self) -> impl Iterator<Item = &'a str> + 'a {
        strings(self.args, self.argc)
    }

    /// The environment, in order.
    pub fn env(&self) -> impl Iterator<Item = &'a str> + 'a {
        strings(self.env, self.envc)
    }

    /// How many pages it holds.
    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// The pages, in ascending address order.
    pub fn pages(&self) -> impl Iterator<Item = Page<'a>> + 'a {
        self.pages.chunks_exact(PAGE_RECORD).filter_map(|c| {
            let (head, data) = c.split_at(12);
            let vaddr = u64::from_le_bytes(head[..8].try_into().ok()?);
            let fl = u32::from_le_bytes(head[8..12].try_into().ok()?);
            Some(Page { vaddr, writable: fl & PAGE_WRITABLE != 0, executable: fl & PAGE_EXECUTABLE != 0, data: data.try_into().ok()? })
        })
    }

    /// The page at `vaddr`, if it holds one.
    pub fn page(&self, vaddr: u64) -> Option<Page<'a>> {
        let n = self.page_count as usize;
        let at = |i: usize| u64::from_le_bytes(self.pages[i * PAGE_RECORD..i * PAGE_RECORD + 8].try_into().unwrap_or([0xff; 8]));
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if at(mid) < vaddr { lo = mid + 1 } else { hi = mid }
        }
        (lo < n && at(lo) == vaddr).then(|| self.pages().nth(lo)).flatten()
    }
}

/// Settings a guest can have (as the manifest and `start` allow).
fn check_settings(s: &Settings) -> Result<(), Error> {
    if s.memory < PAGE_SIZE || s.memory > 1 << 40 {
        return Err(Error::BadSettings("memory limit"));
    }
    if !(1..=10_000).contains(&s.weight) {
        return Err(Error::BadSettings("weight"));
    }
    if s.cap > 100 {
        return Err(Error::BadSettings("cap"));
    }
    if s.tenant != TENANT_NONE && (s.tenant >= crate::MAX_TENANTS || !crate::ring::valid_slots(s.ring_slots)) {
        return Err(Error::BadSettings("tenant or ring slots"));
    }
    Ok(())
}

/// Writes a snapshot into a buffer of exactly its size, reserved once
/// (fallibly: a guest's pages may be more than the heap has room for).
#[cfg(feature = "alloc")]
pub struct Writer {
    buf: alloc::vec::Vec<u8>,
    pages_left: u32,
}

#[cfg(feature = "alloc")]
impl Writer {
    /// The bytes a snapshot with these strings and `pages` pages takes.
    pub fn size(image_name: &str, name: &str, args: &[&str], env: &[&str], pages: u32) -> usize {
        let strs = |v: &[&str]| 4 + v.iter().map(|s| 4 + s.len()).sum::<usize>();
        8 + 4
            + 4
            + 8
            + 32
            + (4 + image_name.len())
            + (4 + name.len())
            + (8 + 4 * 4 + 5 * 8)
            + 8
            + 4
            + 21 * 8
            + FPU_BYTES
            + strs(args)
            + strs(env)
            + 4
            + pages as usize * PAGE_RECORD
            + DIGEST_BYTES
    }

    /// Begins a snapshot of `state` with `pages` pages to follow (through
    /// [`Writer::page`], ascending); `None` if the buffer cannot be had.
    pub fn new(state: &State, image_name: &str, name: &str, args: &[&str], env: &[&str], pages: u32) -> Option<Self> {
        let size = Self::size(image_name, name, args, env, pages);
        let mut buf = alloc::vec::Vec::new();
        buf.try_reserve_exact(size).ok()?;
        let mut w = Self { buf, pages_left: pages };
        w.put(MAGIC);
        w.put(&FORMAT_VERSION.to_le_bytes());
        w.put(&state.abi.to_le_bytes());
        w.put(&(size as u64).to_le_bytes());
        w.put(&state.image_digest);
        w.str(image_name);
        w.str(name);
        let s = &state.settings;
        w.put(&s.memory.to_le_bytes());
        for v in [s.weight, s.cap, s.tenant, s.ring_slots] {
            w.put(&v.to_le_bytes());
        }
        let l = &s.limits;
        for v in [l.nic_packets, l.nic_bytes, l.nic_broadcasts, l.console_bytes, l.notifications, state.clock_ns] {
            w.put(&v.to_le_bytes());
        }
        w.put(&(if state.blocked { FLAG_BLOCKED } else { 0 }).to_le_bytes());
        for r in state.regs {
            w.put(&r.to_le_bytes());
        }
        w.put(&state.fpu);
        for list in [args, env] {
            w.put(&(list.len() as u32).to_le_bytes());
            list.iter().for_each(|s| w.str(s));
        }
        w.put(&pages.to_le_bytes());
        Some(w)
    }

    fn put(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.put(&(s.len() as u32).to_le_bytes());
        self.put(s.as_bytes());
    }

    /// Adds the next page (at most as many as announced).
    pub fn page(&mut self, vaddr: u64, writable: bool, executable: bool, data: &[u8; PAGE_SIZE as usize]) {
        if self.pages_left == 0 {
            return;
        }
        self.pages_left -= 1;
        self.put(&vaddr.to_le_bytes());
        let fl = if writable { PAGE_WRITABLE } else { 0 } | if executable { PAGE_EXECUTABLE } else { 0 };
        self.put(&fl.to_le_bytes());
        self.put(data);
    }

    /// The finished file (its digest appended); `None` if fewer pages came
    /// than announced.
    pub fn finish(mut self) -> Option<alloc::vec::Vec<u8>> {
        if self.pages_left != 0 {
            return None;
        }
        let digest = Sha256::digest(&self.buf);
        self.put(&digest);
        Some(self.buf)
    }
}

#[cfg(test)]
mod tests;
