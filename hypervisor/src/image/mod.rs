//! Guest image validation and load planning.
//!
//! A guest image is a Hermit image (hermit-entry 0.10): a tar archive, plain
//! or gzip-compressed, holding `hermit.toml` and the kernel ELF that it
//! names. [`Image::parse`] takes the raw file, checks every byte of it that
//! matters, and returns a load plan: page-disjoint segments with their
//! permissions, the entry point, the TLS template and the application
//! arguments. [`Image::fill_page`] then produces the contents of any page the
//! image occupies.
//!
//! Images come from outside the hypervisor, so nothing here trusts them:
//! every size and offset is checked with checked arithmetic, every slice is
//! taken with `get`, and no input can make this module panic (a mutation test
//! holds it to that). The tar, gzip and ELF readers are our own for that
//! reason: the ones in hermit-entry and its dependencies assert and unwrap.
//!
//! Nor can an input make this module allocate more than it is allowed to
//! ([`Image::parse_within`]'s budget): the hypervisor's heap is small and a
//! failed allocation aborts the machine, so a gzip image is unpacked into
//! one buffer of the size its trailer declares, reserved fallibly, the tar
//! reader allocates nothing, and `hermit.toml`'s parse is charged up front.

mod elf;
mod gzip;
mod tar;
#[cfg(test)]
pub(crate) mod tests;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use abi::layout::{PAGE_SIZE, page_down, page_up};

/// Largest image file, and largest decompressed archive, we accept.
pub const MAX_IMAGE_BYTES: usize = 64 << 20;
/// Largest `hermit.toml` we accept. A real one is a few hundred bytes (the
/// arguments it can pass must fit in the start page with the guest's name),
/// and its parse costs up to [`CONFIG_HEAP_PER_BYTE`] per byte, so this is
/// kept small: at most 8 KiB of TOML, about 10 MiB of heap at worst.
pub const MAX_CONFIG_BYTES: usize = 8 << 10;
/// Heap that parsing `hermit.toml` may take per byte of it, counted against
/// [`Image::parse_within`]'s budget before the parse. The TOML parser's
/// allocations are not fallible, so they are bounded up front instead. It
/// lexes into a token and an event per byte and builds a tree, and hostile
/// files cost far more than their size: `x=[{.....}{.....}...` (a table
/// per dot) was measured at 1,170 bytes per byte, `x=[}}}...` at 209, long
/// lists of empty tables at 95; a valid one of 200 bytes takes 10 KiB. The
/// `gzip` fuzz target checks the bound.
pub const CONFIG_HEAP_PER_BYTE: usize = 2048;
/// Largest total memory (page-rounded) the loadable segments may occupy.
pub const MAX_MAPPED_BYTES: u64 = 256 << 20;

bitflags::bitflags! {
    /// Access permissions of a segment, from the ELF `p_flags`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Perms: u8 {
        /// Readable (`PF_R`).
        const READ = 1 << 0;
        /// Writable (`PF_W`); never together with [`Perms::EXECUTE`].
        const WRITE = 1 << 1;
        /// Executable (`PF_X`).
        const EXECUTE = 1 << 2;
    }
}

/// A loadable segment: `mem_size` bytes at `vaddr`, the first `file_size` of
/// which come from the ELF at `file_offset`; the rest is zero (bss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest virtual address of the first byte.
    pub vaddr: u64,
    /// Size in memory (`p_memsz`), at least 1.
    pub mem_size: u64,
    /// Offset of the initialised bytes in [`Image::elf`].
    pub file_offset: u64,
    /// Number of initialised bytes (`p_filesz`), at most `mem_size`.
    pub file_size: u64,
    /// Access permissions.
    pub perms: Perms,
}

impl Segment {
    /// The page-aligned address range the segment occupies:
    /// `page_down(vaddr) .. page_up(vaddr + mem_size)` (step by `PAGE_SIZE`).
    pub fn pages(&self) -> Range<u64> {
        let end = self.vaddr.saturating_add(self.mem_size);
        page_down(self.vaddr)..page_up(end).unwrap_or(page_down(end))
    }

    /// Whether `addr` lies inside the segment's memory range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.vaddr && addr - self.vaddr < self.mem_size
    }
}

/// The thread-local storage template (`PT_TLS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tls {
    /// Guest virtual address of the initialisation image.
    pub start: u64,
    /// Size of the initialisation image (`.tdata`); it lies inside a segment.
    pub filesz: u64,
    /// Size of one TLS block (`.tdata` + `.tbss`).
    pub memsz: u64,
    /// Alignment of a TLS block (0 or a power of two).
    pub align: u64,
}

/// A validated guest image and its load plan.
pub struct Image {
    /// The kernel ELF bytes (segments' `file_offset`s point in here).
    pub elf: Vec<u8>,
    /// Entry point; inside an executable segment.
    pub entry: u64,
    /// Loadable segments, sorted by `vaddr`, no two touching the same page.
    pub segments: Vec<Segment>,
    /// The TLS template, if the ELF has one.
    pub tls: Option<Tls>,
    /// Application arguments from `hermit.toml` (`[input] app_args`).
    pub app_args: Vec<String>,
    /// The kernel's path in the archive, as `hermit.toml` names it.
    pub kernel_name: String,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("elf_len", &self.elf.len())
            .field("entry", &format_args!("{:#x}", self.entry))
            .field("segments", &self.segments)
            .field("tls", &self.tls)
            .field("app_args", &self.app_args)
            .field("kernel_name", &self.kernel_name)
            .finish()
    }
}

impl Image {
    /// Parses and fully validates an image file (gzip-compressed tar or tar),
    /// allowing it up to [`MAX_IMAGE_BYTES`] of memory: for the host, or
    /// where the heap is known to have that much room. In the hypervisor,
    /// use [`Image::parse_within`] with what the heap can spare.
    pub fn parse(file: &[u8]) -> Result<Image, ImageError> {
        Image::parse_within(file, MAX_IMAGE_BYTES)
    }

    /// Parses and fully validates an image file, allocating at most `budget`
    /// bytes for it at any time: the unpacked archive of a gzip image (which
    /// then holds [`Image::elf`]) or the copy of the kernel out of a plain
    /// tar, plus [`CONFIG_HEAP_PER_BYTE`] per byte of `hermit.toml` for its
    /// parse and the arguments kept from it. Pass what the heap can spare; a
    /// budget above [`MAX_IMAGE_BYTES`] counts as that for the archive. An
    /// image that needs more is refused with [`ImageError::OutOfMemory`] (or
    /// [`ImageError::GzipTooLarge`] beyond the hard limit) before anything
    /// that size is allocated, and every allocation sized by the file is
    /// fallible, so a failing one is that error too, never an abort.
    ///
    /// Beside the budget, parsing makes only small allocations bounded by
    /// constants, not by the file: the inflater's state (about 11 KiB) and,
    /// when refusing a gzip member, a 32 KiB window; the program header
    /// table (at most 64 entries) and the segment list; the TOML parser's
    /// fixed overhead.
    pub fn parse_within(file: &[u8], budget: usize) -> Result<Image, ImageError> {
        if file.len() > MAX_IMAGE_BYTES {
            return Err(ImageError::TooLarge { size: file.len() as u64 });
        }
        if gzip::is_gzip(file) {
            let unpacked = gzip::decompress(file, budget)?;
            let parts = Parts::find(&unpacked, unpacked.len(), budget)?;
            // The kernel is moved to the front of the buffer it was
            // unpacked into: no second copy (`truncate` and `drain` of an
            // in-range prefix never panic).
            let mut elf = unpacked;
            elf.truncate(parts.kernel.end);
            elf.drain(..parts.kernel.start.min(elf.len()));
            Ok(parts.into_image(elf))
        } else {
            let parts = Parts::find(file, 0, budget)?;
            let kernel = file.get(parts.kernel.clone()).unwrap_or_default();
            // The arguments kept from hermit.toml are still held.
            let needed = kernel.len().saturating_add(parts.config_cost);
            let out_of_memory = || ImageError::OutOfMemory { needed: needed as u64, available: budget as u64 };
            if needed > budget {
                return Err(out_of_memory());
            }
            let mut elf = Vec::new();
            elf.try_reserve_exact(kernel.len()).map_err(|_| out_of_memory())?;
            elf.extend_from_slice(kernel);
            Ok(parts.into_image(elf))
        }
    }

    /// The segment whose pages include the page at `page_vaddr`, if any.
    pub fn segment_at(&self, page_vaddr: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.pages().contains(&page_down(page_vaddr)))
    }

    /// Fills `out` with the contents of the page at page-aligned `page_vaddr`:
    /// file bytes where the segment has them, zero elsewhere (bss, the parts
    /// of a first or last page outside the segment).
    ///
    /// Returns false (and leaves `out` alone) if `page_vaddr` is not
    /// page-aligned or no segment covers that page.
    pub fn fill_page(&self, page_vaddr: u64, out: &mut [u8; PAGE_SIZE as usize]) -> bool {
        if !page_vaddr.is_multiple_of(PAGE_SIZE) {
            return false;
        }
        let Some(seg) = self.segment_at(page_vaddr) else {
            return false;
        };
        out.fill(0);
        // Initialised bytes: [vaddr, vaddr + file_size) ∩ [page, page + PAGE_SIZE).
        let page_end = page_vaddr.saturating_add(PAGE_SIZE);
        let start = seg.vaddr.max(page_vaddr);
        let end = seg.vaddr.saturating_add(seg.file_size).min(page_end);
        if start < end {
            // Both ranges are at most one page long; `elf.get` bounds the source.
            let len = end - start;
            let src = seg.file_offset.checked_add(start - seg.vaddr).and_then(|o| span(o, len));
            let dst = span(start - page_vaddr, len);
            if let (Some(src), Some(dst)) = (src.and_then(|r| self.elf.get(r)), dst.and_then(|r| out.get_mut(r))) {
                dst.copy_from_slice(src);
            }
        }
        true
    }

    /// Total bytes of the pages the image occupies.
    pub fn mapped_bytes(&self) -> u64 {
        self.segments.iter().fold(0u64, |sum, s| sum.saturating_add(s.pages().end - s.pages().start))
    }

    /// From the lowest page the image occupies to the end of its highest.
    pub fn vaddr_range(&self) -> Range<u64> {
        match (self.segments.first(), self.segments.last()) {
            (Some(first), Some(last)) => first.pages().start..last.pages().end,
            _ => 0..0,
        }
    }
}

/// What an archive says, before the kernel is copied out of it.
struct Parts {
    /// Where the kernel's bytes lie in the archive.
    kernel: Range<usize>,
    /// What hermit.toml's parse was allowed (part of it still held).
    config_cost: usize,
    plan: elf::Plan,
    app_args: Vec<String>,
    kernel_name: String,
}

impl Parts {
    /// Finds `hermit.toml` and the kernel it names in a tar archive and
    /// validates both, with `held` bytes of the budget already taken.
    fn find(archive: &[u8], held: usize, budget: usize) -> Result<Parts, ImageError> {
        let config_path = hermit_entry::config::Config::DEFAULT_PATH;
        let config = tar::find(archive, config_path)?.and_then(|r| archive.get(r)).ok_or(ImageError::ConfigMissing)?;
        if config.len() > MAX_CONFIG_BYTES {
            return Err(ImageError::ConfigTooLarge { size: config.len() as u64 });
        }
        let config_cost = config.len().saturating_mul(CONFIG_HEAP_PER_BYTE);
        let needed = held.saturating_add(config_cost);
        if needed > budget {
            return Err(ImageError::OutOfMemory { needed: needed as u64, available: budget as u64 });
        }
        let config = core::str::from_utf8(config).map_err(|_| ImageError::ConfigNotUtf8)?;
        let config: hermit_entry::config::Config<'_> = toml::from_str(config).map_err(|e| ImageError::Config(toml_reason(config, &e)))?;
        let hermit_entry::config::Config::V1 { input, kernel, .. } = config;

        let missing = || ImageError::KernelMissing(kernel.to_string());
        let range = tar::find(archive, &kernel)?.ok_or_else(missing)?;
        let elf = archive.get(range.clone()).ok_or_else(missing)?;
        let plan = elf::parse(elf)?;
        Ok(Parts {
            kernel: range,
            config_cost,
            plan,
            app_args: input.app_args.iter().map(|a| a.to_string()).collect(),
            kernel_name: kernel.to_string(),
        })
    }

    fn into_image(self, elf: Vec<u8>) -> Image {
        Image {
            elf,
            entry: self.plan.entry,
            segments: self.plan.segments,
            tls: self.plan.tls,
            app_args: self.app_args,
            kernel_name: self.kernel_name,
        }
    }
}

/// `offset .. offset + len` as a `usize` range, if it is representable.
fn span(offset: u64, len: u64) -> Option<Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = usize::try_from(offset.checked_add(len)?).ok()?;
    Some(start..end)
}

/// The first line of a TOML error, with the line it happened on.
fn toml_reason(input: &str, e: &toml::de::Error) -> String {
    let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
    match e.span() {
        Some(span) => {
            let line = input.get(..span.start).map_or(0, |s| s.matches('\n').count()) + 1;
            alloc::format!("line {line}: {msg}")
        }
        None => msg.to_string(),
    }
}

/// Why an image was refused.
///
/// `Display` gives a one-line, lower-case reason fit for a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The file is larger than [`MAX_IMAGE_BYTES`].
    TooLarge { size: u64 },
    /// The gzip header is malformed.
    GzipHeader(&'static str),
    /// The deflate stream inside the gzip file is corrupt or truncated.
    GzipCorrupt,
    /// The gzip trailer declares an uncompressed size above
    /// [`MAX_IMAGE_BYTES`] (and the data does expand past the budget, or
    /// there was no room to look).
    GzipTooLarge { declared: u64 },
    /// The deflate stream goes on past the uncompressed size the gzip
    /// trailer declares.
    GzipLongerThanDeclared { declared: u64 },
    /// The gzip trailer's CRC-32 or length does not match the data.
    GzipChecksum,
    /// Unpacking the image needs `needed` bytes of the hypervisor's heap and
    /// the budget allows only `available` (or, if `needed <= available`,
    /// allocating them failed).
    OutOfMemory { needed: u64, available: u64 },
    /// The file starts with no valid tar header.
    NotTar,
    /// A tar header after the first is invalid.
    TarCorrupt { offset: u64, reason: &'static str },
    /// The archive ends inside an entry or has no end-of-archive block.
    TarTruncated { offset: u64 },
    /// The archive has no `hermit.toml`.
    ConfigMissing,
    /// `hermit.toml` is larger than [`MAX_CONFIG_BYTES`].
    ConfigTooLarge { size: u64 },
    /// `hermit.toml` is not UTF-8.
    ConfigNotUtf8,
    /// `hermit.toml` does not parse (first line of the TOML error).
    Config(String),
    /// The kernel that `hermit.toml` names is not in the archive.
    KernelMissing(String),
    /// The kernel is shorter than an ELF header.
    ElfTooShort { size: u64 },
    /// The kernel does not start with the ELF magic.
    NotElf,
    /// `EI_CLASS` is not `ELFCLASS64`.
    ElfClass(u8),
    /// `EI_DATA` is not `ELFDATA2LSB`.
    ElfEndian(u8),
    /// `e_machine` is not `EM_X86_64`.
    ElfMachine(u16),
    /// `e_type` is `ET_DYN`.
    PositionIndependent,
    /// `e_type` is neither `ET_EXEC` nor `ET_DYN`.
    ElfType(u16),
    /// `e_phentsize` is not 56.
    PhentSize(u16),
    /// More than 64 program headers.
    TooManyPhdrs(u16),
    /// The program header table does not fit in the file.
    PhdrsPastEnd { offset: u64, count: u16, file_size: u64 },
    /// No non-empty `PT_LOAD` segment.
    NoLoadSegment,
    /// A segment's file range does not fit in the file.
    SegmentPastFileEnd { index: usize, offset: u64, size: u64, file_size: u64 },
    /// A segment's `p_filesz` exceeds its `p_memsz`.
    SegmentFileSize { index: usize, file_size: u64, mem_size: u64 },
    /// A segment starts below `abi::layout::USER_MIN`.
    SegmentTooLow { index: usize, vaddr: u64 },
    /// `vaddr + memsz` (rounded up to a page) overflows.
    SegmentWraps { index: usize, vaddr: u64, mem_size: u64 },
    /// A segment reaches `abi::layout::USER_END` or beyond.
    SegmentInHypervisorHalf { index: usize, start: u64, end: u64 },
    /// A segment reaches past `abi::layout::IMAGE_END`.
    SegmentPastImageEnd { index: usize, start: u64, end: u64 },
    /// The segments occupy more than [`MAX_MAPPED_BYTES`].
    SegmentsTooLarge { total: u64 },
    /// `p_vaddr` and `p_offset` differ modulo the page size.
    SegmentMisaligned { index: usize, vaddr: u64, offset: u64 },
    /// Two loadable segments touch the same page.
    SegmentsSharePage { first: usize, second: usize },
    /// A segment is both writable and executable.
    WritableAndExecutable { index: usize },
    /// The entry point is not inside an executable segment.
    EntryNotExecutable { entry: u64 },
    /// More than one `PT_TLS`.
    MultipleTls,
    /// The TLS alignment is not 0 or a power of two.
    TlsAlign(u64),
    /// The TLS initialisation image is not inside a loadable segment.
    TlsOutsideSegment { start: u64, end: u64 },
    /// A note's header, name or descriptor runs past its `PT_NOTE` segment.
    NoteTruncated { index: usize, offset: u64 },
    /// A note has `namesz == 0`.
    NoteNameEmpty,
    /// A required note has a descriptor of the wrong size.
    NoteDescSize { note: &'static str, size: u32, expected: u32 },
    /// No hermit-entry version note.
    MissingHermitNote,
    /// The hermit-entry version note names another version.
    HermitVersion(u8),
    /// No `HVABI` note.
    MissingAbiNote,
    /// The `HVABI` note names another ABI version.
    AbiVersion(u32),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ImageError::*;
        match self {
            TooLarge { size } => write!(f, "image is {size} bytes; the limit is 64 MiB"),
            GzipHeader(what) => write!(f, "gzip header is malformed: {what}"),
            GzipCorrupt => f.write_str("gzip data is corrupt or truncated"),
            GzipTooLarge { declared } => write!(f, "gzip trailer declares {declared} bytes uncompressed; the limit is 64 MiB"),
            GzipLongerThanDeclared { declared } => write!(f, "gzip data expands past the {declared} bytes its trailer declares"),
            GzipChecksum => f.write_str("gzip data does not match its CRC-32 or length"),
            OutOfMemory { needed, available } if needed > available => {
                write!(f, "the hypervisor has no room to unpack it (needs {needed} bytes, has {available})")
            }
            OutOfMemory { needed, .. } => {
                write!(f, "the hypervisor has no room to unpack it (needs {needed} bytes, and allocating them failed)")
            }
            NotTar => f.write_str("not a tar archive (no valid tar header)"),
            TarCorrupt { offset, reason } => {
                write!(f, "tar header at offset {offset:#x}: {reason}")
            }
            TarTruncated { offset } => {
                write!(f, "tar archive is truncated (ends inside the entry at offset {offset:#x})")
            }
            ConfigMissing => f.write_str("hermit.toml is missing"),
            ConfigTooLarge { size } => {
                write!(f, "hermit.toml is {size} bytes; the limit is {} KiB", MAX_CONFIG_BYTES >> 10)
            }
            ConfigNotUtf8 => f.write_str("hermit.toml is not valid UTF-8"),
            Config(reason) => write!(f, "hermit.toml: {reason}"),
            KernelMissing(name) => {
                write!(f, "kernel '{}' named by hermit.toml is not in the archive", name.escape_debug())
            }
            ElfTooShort { size } => {
                write!(f, "kernel is {size} bytes, too short for an ELF header")
            }
            NotElf => f.write_str("kernel is not an ELF file (bad magic)"),
            ElfClass(c) => write!(f, "kernel is not a 64-bit ELF (class {c})"),
            ElfEndian(d) => write!(f, "kernel is not a little-endian ELF (data encoding {d})"),
            ElfMachine(m) => write!(f, "kernel is built for ELF machine {m}, not x86_64 (62)"),
            PositionIndependent => f.write_str("position-independent images are not supported"),
            ElfType(t) => write!(f, "kernel ELF type {t} is not an executable"),
            PhentSize(s) => write!(f, "ELF program header size is {s} bytes, expected 56"),
            TooManyPhdrs(n) => write!(f, "ELF has {n} program headers; the limit is 64"),
            PhdrsPastEnd { offset, count, file_size } => {
                write!(f, "ELF program header table (offset {offset:#x}, {count} entries) lies past the end of the {file_size}-byte file")
            }
            NoLoadSegment => f.write_str("ELF has no loadable segment"),
            SegmentPastFileEnd { index, offset, size, file_size } => {
                write!(f, "segment {index} file range (offset {offset:#x}, {size:#x} bytes) lies past the end of the {file_size}-byte file")
            }
            SegmentFileSize { index, file_size, mem_size } => {
                write!(f, "segment {index} has more file bytes ({file_size:#x}) than memory bytes ({mem_size:#x})")
            }
            SegmentTooLow { index, vaddr } => {
                write!(f, "segment {index} starts at {vaddr:#x}, below the lowest image address {:#x}", abi::layout::USER_MIN)
            }
            SegmentWraps { index, vaddr, mem_size } => {
                write!(f, "segment {index} at {vaddr:#x} with size {mem_size:#x} wraps around the address space")
            }
            SegmentInHypervisorHalf { index, start, end } => {
                write!(f, "segment {index} [{start:#x}, {end:#x}) reaches into the hypervisor's half")
            }
            SegmentPastImageEnd { index, start, end } => write!(
                f,
                "segment {index} [{start:#x}, {end:#x}) reaches past the end of the image region at {:#x}",
                abi::layout::IMAGE_END
            ),
            SegmentsTooLarge { total } => {
                write!(f, "segments occupy {total:#x} bytes of memory; the limit is 256 MiB")
            }
            SegmentMisaligned { index, vaddr, offset } => {
                write!(f, "segment {index} address {vaddr:#x} and file offset {offset:#x} differ modulo the page size")
            }
            SegmentsSharePage { first, second } => {
                write!(f, "segments {first} and {second} share a page")
            }
            WritableAndExecutable { index } => {
                write!(f, "segment {index} is both writable and executable")
            }
            EntryNotExecutable { entry } => {
                write!(f, "entry point {entry:#x} is not inside an executable segment")
            }
            MultipleTls => f.write_str("ELF has more than one TLS segment"),
            TlsAlign(a) => write!(f, "TLS alignment {a:#x} is not a power of two"),
            TlsOutsideSegment { start, end } => {
                write!(f, "TLS image [{start:#x}, {end:#x}) is not inside a loadable segment")
            }
            NoteTruncated { index, offset } => {
                write!(f, "note at offset {offset:#x} runs past the end of note segment {index}")
            }
            NoteNameEmpty => f.write_str("zero-length note name"),
            NoteDescSize { note, size, expected } => {
                write!(f, "{note} note has a {size}-byte descriptor, expected {expected}")
            }
            MissingHermitNote => f.write_str("image has no HERMIT entry-version note"),
            HermitVersion(v) => {
                write!(f, "image was built for hermit-entry version {v}; this hypervisor speaks {}", abi::note::HERMIT_ENTRY_VERSION)
            }
            MissingAbiNote => f.write_str("image has no HVABI note (not built for this hypervisor)"),
            AbiVersion(v) => write!(f, "image was built for hypervisor ABI v{v}; this hypervisor speaks v{}", abi::ABI_VERSION),
        }
    }
}

impl core::error::Error for ImageError {}
