//! What the boot loader tells the hypervisor, whichever protocol started
//! it: PVH (QEMU's `-kernel`) or Multiboot2 (GRUB, from BIOS or UEFI).
//!
//! The loader's structures are input like any other: [`multiboot2`] walks
//! the Multiboot2 information by its own sizes, checked against the bytes
//! it was given, and the RAM ranges of either protocol go through
//! [`MemoryMap`], which sorts and merges them and says how much it could
//! not keep instead of dropping entries silently. Nothing here allocates:
//! it runs before the heap exists.

use core::ops::Range;

/// RAM ranges kept after merging (a UEFI map has a hundred entries or more,
/// but its RAM merges into a few dozen ranges at most).
pub const MAX_RAM_RANGES: usize = 128;
/// E820 / Multiboot2 memory type of usable RAM.
pub const RAM: u32 = 1;
const PAGE: u64 = 4096;

/// Usable RAM, sorted, merged, whole pages.
#[derive(Clone, Debug)]
pub struct MemoryMap {
    ranges: [Range<u64>; MAX_RAM_RANGES],
    len: usize,
    /// Entries the loader gave (of any type).
    pub entries: usize,
    /// RAM in ranges that did not fit (0 unless the map is very fragmented).
    pub lost_bytes: u64,
}

impl Default for MemoryMap {
    fn default() -> Self {
        MemoryMap { ranges: [const { 0..0 }; MAX_RAM_RANGES], len: 0, entries: 0, lost_bytes: 0 }
    }
}

impl MemoryMap {
    /// Adds one loader entry; only RAM is kept, trimmed to whole pages.
    pub fn add(&mut self, addr: u64, size: u64, kind: u32) {
        self.entries += 1;
        if kind != RAM {
            return;
        }
        let start = addr.saturating_add(PAGE - 1) & !(PAGE - 1);
        let end = addr.saturating_add(size) & !(PAGE - 1);
        if start < end {
            self.insert(start..end);
        }
    }

    fn insert(&mut self, mut r: Range<u64>) {
        // Absorb every range that overlaps or touches `r`.
        let mut i = 0;
        while i < self.len {
            let x = &self.ranges[i];
            if x.start <= r.end && r.start <= x.end {
                r = r.start.min(x.start)..r.end.max(x.end);
                self.remove(i);
            } else {
                i += 1;
            }
        }
        if self.len == MAX_RAM_RANGES {
            // Keep the larger: the smallest range is the one lost.
            let (small, _) = self.ranges.iter().enumerate().min_by_key(|(_, x)| x.end - x.start).expect("full");
            let small_len = self.ranges[small].end - self.ranges[small].start;
            if small_len >= r.end - r.start {
                self.lost_bytes += r.end - r.start;
                return;
            }
            self.lost_bytes += small_len;
            self.remove(small);
            return self.insert(r);
        }
        let at = self.ranges[..self.len].iter().position(|x| x.start > r.start).unwrap_or(self.len);
        self.ranges[at..=self.len].rotate_right(1);
        self.ranges[at] = r;
        self.len += 1;
    }

    fn remove(&mut self, i: usize) {
        self.ranges[i..self.len].rotate_left(1);
        self.len -= 1;
    }

    /// The RAM ranges, in address order.
    pub fn ram(&self) -> &[Range<u64>] {
        &self.ranges[..self.len]
    }

    /// Total RAM.
    pub fn total(&self) -> u64 {
        self.ram().iter().map(|r| r.end - r.start).sum()
    }

    /// A page of RAM below 1 MiB (the reach of a SIPI vector), above the
    /// real-mode interrupt table, overlapping none of `avoid`: where the
    /// application processors' start-up code goes.
    pub fn low_page(&self, avoid: &[Range<u64>]) -> Option<u64> {
        const LOW_END: u64 = 0x10_0000;
        for r in self.ram() {
            let mut p = r.start.max(PAGE);
            while p + PAGE <= r.end.min(LOW_END) {
                if let Some(a) = avoid.iter().find(|a| a.start < p + PAGE && p < a.end) {
                    p = a.end.next_multiple_of(PAGE);
                    continue;
                }
                return Some(p);
            }
        }
        None
    }
}

/// The ACPI root pointer as the loader gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rsdp {
    /// Not given: look in the BIOS area.
    #[default]
    Unknown,
    /// Its physical address (PVH).
    At(u64),
    /// A copy of its bytes (Multiboot2's ACPI tags): 20 for ACPI 1.0,
    /// up to 36 for 2.0 and later.
    Copy([u8; 36], usize),
}

/// What the command line asks for: `maxcpus=N` (drive at most N CPUs,
/// the boot CPU included; the others stay parked). Words it does not know
/// are counted, for a console line; a path (a loader may pass the file's
/// own name first) is not a word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub max_cpus: Option<usize>,
    pub unknown: usize,
}

impl Options {
    pub fn parse(line: &[u8]) -> Options {
        let mut o = Options::default();
        for word in line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty() && w[0] != b'/') {
            let n = word.strip_prefix(b"maxcpus=").and_then(|v| core::str::from_utf8(v).ok()).and_then(|v| v.parse::<usize>().ok());
            match n {
                Some(n) if n >= 1 => o.max_cpus = Some(n),
                _ => o.unknown += 1,
            }
        }
        o
    }
}

/// Which protocol started the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot2,
}

/// The loader's facts, copied out of its structures.
#[derive(Clone, Debug)]
pub struct BootInfo {
    pub protocol: Protocol,
    pub memory: MemoryMap,
    /// The first module: the bundle (physical range).
    pub module: Option<Range<u64>>,
    /// Modules beyond the first (ignored, but reported).
    pub extra_modules: usize,
    pub rsdp: Rsdp,
    /// The hypervisor's command line (`-append`, GRUB's `multiboot2` line
    /// after the file name), cut at [`CMDLINE_MAX`] bytes.
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
}

/// Longest command line kept.
pub const CMDLINE_MAX: usize = 256;

impl BootInfo {
    pub fn new(protocol: Protocol) -> Self {
        BootInfo {
            protocol,
            memory: MemoryMap::default(),
            module: None,
            extra_modules: 0,
            rsdp: Rsdp::Unknown,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
        }
    }

    /// Keeps `bytes` (up to a NUL) as the command line.
    pub fn set_cmdline(&mut self, bytes: &[u8]) {
        let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
        let n = bytes.len().min(CMDLINE_MAX);
        self.cmdline[..n].copy_from_slice(&bytes[..n]);
        self.cmdline_len = n;
    }

    /// The command line's options.
    pub fn options(&self) -> Options {
        Options::parse(&self.cmdline[..self.cmdline_len])
    }

    fn add_module(&mut self, r: Range<u64>) {
        if self.module.is_none() {
            self.module = Some(r);
        } else {
            self.extra_modules += 1;
        }
    }
}

/// What is wrong with the loader's information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// Entered through the Multiboot2 entry without its magic in `%eax`.
    BadMagic,
    /// The information's total size is too small or past what was read.
    BadSize(u32),
    /// A tag's size is too small or runs past the end.
    BadTag { offset: usize, kind: u16, size: u32 },
    /// No memory map (or no RAM in it).
    NoMemoryMap,
    /// A module ends before it starts.
    BadModule,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::BadMagic => write!(f, "entered through the Multiboot2 header without the Multiboot2 magic"),
            BootError::BadSize(n) => write!(f, "Multiboot2 information of {n} bytes"),
            BootError::BadTag { offset, kind, size } => {
                write!(f, "Multiboot2 tag {kind} at offset {offset} has size {size}, past the information's end")
            }
            BootError::NoMemoryMap => write!(f, "the boot loader gave no memory map with RAM in it"),
            BootError::BadModule => write!(f, "a boot module ends before it starts"),
        }
    }
}

/// Multiboot2 information tag types (Multiboot2 spec 3.6).
mod tag {
    pub const END: u16 = 0;
    pub const CMDLINE: u16 = 1;
    pub const MODULE: u16 = 3;
    pub const MMAP: u16 = 6;
    pub const ACPI_OLD: u16 = 14;
    pub const ACPI_NEW: u16 = 15;
}

/// The value `%eax` holds when a Multiboot2 loader enters the hypervisor.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// Largest information structure accepted.
pub const MULTIBOOT2_MAX: usize = 1 << 20;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The total size a Multiboot2 information structure claims (its first
/// word), to know how much to read.
pub fn multiboot2_size(first8: [u8; 8]) -> Result<usize, BootError> {
    let n = u32::from_le_bytes(first8[..4].try_into().expect("4 bytes"));
    if n < 16 || n as usize > MULTIBOOT2_MAX {
        return Err(BootError::BadSize(n));
    }
    Ok(n as usize)
}

/// Parses Multiboot2 boot information (`info`: exactly the bytes its
/// total size names): memory map, modules, the ACPI root pointer.
pub fn multiboot2(info: &[u8]) -> Result<BootInfo, BootError> {
    let total = match info.get(..8) {
        Some(h) => multiboot2_size(h.try_into().expect("8 bytes"))?,
        None => return Err(BootError::BadSize(info.len() as u32)),
    };
    if total > info.len() {
        return Err(BootError::BadSize(total as u32));
    }
    let info = &info[..total];
    let mut boot = BootInfo::new(Protocol::Multiboot2);
    let mut saw_mmap = false;
    let mut at = 8;
    while at + 8 <= total {
        let (kind, size) = (u16_at(info, at), u32_at(info, at + 4));
        if size < 8 || at + size as usize > total {
            return Err(BootError::BadTag { offset: at, kind, size });
        }
        let body = &info[at + 8..at + size as usize];
        match kind {
            tag::END => break,
            tag::MMAP if body.len() >= 8 => {
                let entry_size = u32_at(body, 0) as usize;
                if entry_size < 24 {
                    return Err(BootError::BadTag { offset: at, kind, size });
                }
                saw_mmap = true;
                for e in body[8..].chunks_exact(entry_size) {
                    boot.memory.add(u64_at(e, 0), u64_at(e, 8), u32_at(e, 16));
                }
            }
            tag::CMDLINE => boot.set_cmdline(body),
            tag::MODULE if body.len() >= 8 => {
                let (start, end) = (u32_at(body, 0) as u64, u32_at(body, 4) as u64);
                if end < start {
                    return Err(BootError::BadModule);
                }
                boot.add_module(start..end);
            }
            // The newer tag wins over the older, whatever their order.
            tag::ACPI_OLD | tag::ACPI_NEW
                if body.len() >= 20 && (kind == tag::ACPI_NEW || !matches!(boot.rsdp, Rsdp::Copy(_, n) if n > 20)) =>
            {
                let n = body.len().min(36);
                let mut copy = [0; 36];
                copy[..n].copy_from_slice(&body[..n]);
                boot.rsdp = Rsdp::Copy(copy, n);
            }
            _ => {}
        }
        at = (at + size as usize).next_multiple_of(8);
    }
    if !saw_mmap || boot.memory.ram().is_empty() {
        return Err(BootError::NoMemoryMap);
    }
    Ok(boot)
}

#[cfg(test)]
mod tests;
