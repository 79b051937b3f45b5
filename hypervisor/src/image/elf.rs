//! A strict ELF64 program-header reader for x86_64 executables.
//!
//! Only the ELF header, the program headers and the notes are read; section
//! headers are ignored.

use alloc::vec::Vec;

use abi::layout::{IMAGE_END, PAGE_SIZE, USER_END, USER_MIN, page_up};

use super::{ImageError, MAX_MAPPED_BYTES, Perms, Segment, Tls, span};

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const MAX_PHDRS: u16 = 64;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PT_TLS: u32 = 7;

const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// What the loader needs from the ELF.
pub(super) struct Plan {
    pub entry: u64,
    pub segments: Vec<Segment>,
    pub tls: Option<Tls>,
}

/// One program header.
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// Reads a little-endian integer of `N` bytes at `off`; 0 if out of range
/// (callers pass slices they have already sized).
fn le<const N: usize>(bytes: &[u8], off: usize) -> u64 {
    let mut buf = [0u8; 8];
    if let (Some(dst), Some(src)) = (buf.get_mut(..N), bytes.get(off..off + N)) {
        dst.copy_from_slice(src);
    }
    u64::from_le_bytes(buf)
}

/// Parses and validates the kernel ELF `file`.
pub(super) fn parse(file: &[u8]) -> Result<Plan, ImageError> {
    let file_size = file.len() as u64;
    let ehdr = file.get(..EHDR_SIZE).ok_or(ImageError::ElfTooShort { size: file_size })?;
    if ehdr.get(..4) != Some(b"\x7fELF") {
        return Err(ImageError::NotElf);
    }
    let class = le::<1>(ehdr, 4) as u8;
    if class != ELFCLASS64 {
        return Err(ImageError::ElfClass(class));
    }
    let data = le::<1>(ehdr, 5) as u8;
    if data != ELFDATA2LSB {
        return Err(ImageError::ElfEndian(data));
    }
    let e_type = le::<2>(ehdr, 16) as u16;
    let machine = le::<2>(ehdr, 18) as u16;
    if machine != EM_X86_64 {
        return Err(ImageError::ElfMachine(machine));
    }
    match e_type {
        ET_EXEC => {}
        ET_DYN => return Err(ImageError::PositionIndependent),
        other => return Err(ImageError::ElfType(other)),
    }
    let entry = le::<8>(ehdr, 24);
    let phoff = le::<8>(ehdr, 32);
    let phentsize = le::<2>(ehdr, 54) as u16;
    let phnum = le::<2>(ehdr, 56) as u16;
    if phentsize as usize != PHDR_SIZE {
        return Err(ImageError::PhentSize(phentsize));
    }
    if phnum > MAX_PHDRS {
        return Err(ImageError::TooManyPhdrs(phnum));
    }
    let table = span(phoff, u64::from(phnum) * PHDR_SIZE as u64).and_then(|r| file.get(r)).ok_or(ImageError::PhdrsPastEnd {
        offset: phoff,
        count: phnum,
        file_size,
    })?;
    let phdrs: Vec<Phdr> = table
        .chunks_exact(PHDR_SIZE)
        .map(|ph| Phdr {
            p_type: le::<4>(ph, 0) as u32,
            flags: le::<4>(ph, 4) as u32,
            offset: le::<8>(ph, 8),
            vaddr: le::<8>(ph, 16),
            filesz: le::<8>(ph, 32),
            memsz: le::<8>(ph, 40),
            align: le::<8>(ph, 48),
        })
        .collect();

    // Loadable segments, tagged with their program header index.
    let mut loads: Vec<(usize, Segment)> = Vec::new();
    let mut tls = None;
    for (index, ph) in phdrs.iter().enumerate() {
        match ph.p_type {
            PT_LOAD => {
                if let Some(seg) = load_segment(index, ph, file_size)? {
                    loads.push((index, seg));
                }
            }
            PT_TLS => {
                if tls.is_some() {
                    return Err(ImageError::MultipleTls);
                }
                if ph.filesz > ph.memsz {
                    return Err(ImageError::SegmentFileSize { index, file_size: ph.filesz, mem_size: ph.memsz });
                }
                if ph.align != 0 && !ph.align.is_power_of_two() {
                    return Err(ImageError::TlsAlign(ph.align));
                }
                tls = Some(Tls { start: ph.vaddr, filesz: ph.filesz, memsz: ph.memsz, align: ph.align });
            }
            _ => {}
        }
    }
    if loads.is_empty() {
        return Err(ImageError::NoLoadSegment);
    }

    loads.sort_by_key(|(_, seg)| seg.vaddr);
    let mut total: u64 = 0;
    for pair in loads.windows(2) {
        if let [(first, a), (second, b)] = pair
            && a.pages().end > b.pages().start
        {
            let (first, second) = (*first.min(second), *first.max(second));
            return Err(ImageError::SegmentsSharePage { first, second });
        }
    }
    for (_, seg) in &loads {
        let pages = seg.pages();
        total = total.saturating_add(pages.end - pages.start);
    }
    if total > MAX_MAPPED_BYTES {
        return Err(ImageError::SegmentsTooLarge { total });
    }
    let segments: Vec<Segment> = loads.into_iter().map(|(_, seg)| seg).collect();

    if !segments.iter().any(|s| s.perms.contains(Perms::EXECUTE) && s.contains(entry)) {
        return Err(ImageError::EntryNotExecutable { entry });
    }

    if let Some(t) = &tls {
        // The initialisation image must be loaded; `.tbss` needs no memory in
        // the image, so `memsz` may reach past the segment.
        let end = t.start.checked_add(t.filesz);
        let inside = end.is_some_and(|end| segments.iter().any(|s| s.contains(t.start) && end - s.vaddr <= s.mem_size));
        if !inside || t.start.checked_add(t.memsz).is_none() {
            return Err(ImageError::TlsOutsideSegment { start: t.start, end: end.unwrap_or(u64::MAX) });
        }
    }

    check_notes(file, &phdrs)?;
    Ok(Plan { entry, segments, tls })
}

/// Validates one `PT_LOAD`; `None` for an empty one (`p_memsz == 0`).
fn load_segment(index: usize, ph: &Phdr, file_size: u64) -> Result<Option<Segment>, ImageError> {
    if ph.filesz > ph.memsz {
        return Err(ImageError::SegmentFileSize { index, file_size: ph.filesz, mem_size: ph.memsz });
    }
    check_file_range(index, ph, file_size)?;
    if ph.memsz == 0 {
        return Ok(None);
    }
    if ph.vaddr < USER_MIN {
        return Err(ImageError::SegmentTooLow { index, vaddr: ph.vaddr });
    }
    let end =
        ph.vaddr.checked_add(ph.memsz).and_then(page_up).ok_or(ImageError::SegmentWraps { index, vaddr: ph.vaddr, mem_size: ph.memsz })?;
    if end > USER_END {
        return Err(ImageError::SegmentInHypervisorHalf { index, start: ph.vaddr, end });
    }
    if end > IMAGE_END {
        return Err(ImageError::SegmentPastImageEnd { index, start: ph.vaddr, end });
    }
    if ph.memsz > MAX_MAPPED_BYTES {
        return Err(ImageError::SegmentsTooLarge { total: ph.memsz });
    }
    if ph.align >= PAGE_SIZE && ph.vaddr % PAGE_SIZE != ph.offset % PAGE_SIZE {
        return Err(ImageError::SegmentMisaligned { index, vaddr: ph.vaddr, offset: ph.offset });
    }
    let mut perms = Perms::empty();
    perms.set(Perms::READ, ph.flags & PF_R != 0);
    perms.set(Perms::WRITE, ph.flags & PF_W != 0);
    perms.set(Perms::EXECUTE, ph.flags & PF_X != 0);
    if perms.contains(Perms::WRITE | Perms::EXECUTE) {
        return Err(ImageError::WritableAndExecutable { index });
    }
    Ok(Some(Segment { vaddr: ph.vaddr, mem_size: ph.memsz, file_offset: ph.offset, file_size: ph.filesz, perms }))
}

fn check_file_range(index: usize, ph: &Phdr, file_size: u64) -> Result<(), ImageError> {
    match ph.offset.checked_add(ph.filesz) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(ImageError::SegmentPastFileEnd { index, offset: ph.offset, size: ph.filesz, file_size }),
    }
}

/// Walks every `PT_NOTE` and checks the two notes we require.
fn check_notes(file: &[u8], phdrs: &[Phdr]) -> Result<(), ImageError> {
    use abi::note;
    let mut hermit = false;
    let mut abi = false;
    for (index, ph) in phdrs.iter().enumerate().filter(|(_, ph)| ph.p_type == PT_NOTE) {
        check_file_range(index, ph, file.len() as u64)?;
        let notes = span(ph.offset, ph.filesz).and_then(|r| file.get(r)).unwrap_or_default();
        let pad = if ph.align == 8 { 8 } else { 4 };
        let mut pos = 0usize;
        while pos < notes.len() {
            let truncated = ImageError::NoteTruncated { index, offset: ph.offset + pos as u64 };
            let header = notes.get(pos..pos + 12).ok_or(truncated.clone())?;
            let namesz = le::<4>(header, 0) as u32;
            let descsz = le::<4>(header, 4) as u32;
            let ty = le::<4>(header, 8) as u32;
            if namesz == 0 {
                return Err(ImageError::NoteNameEmpty);
            }
            let name_start = pos + 12;
            let name_end = name_start.checked_add(namesz as usize).ok_or(truncated.clone())?;
            let desc_start = name_end.checked_next_multiple_of(pad).ok_or(truncated.clone())?;
            let desc_end = desc_start.checked_add(descsz as usize).ok_or(truncated.clone())?;
            // The padding after the last note may be cut off by `p_filesz`.
            let next = desc_end.checked_next_multiple_of(pad).ok_or(truncated.clone())?;
            let name = notes.get(name_start..name_end).ok_or(truncated.clone())?;
            let desc = notes.get(desc_start..desc_end).ok_or(truncated.clone())?;
            let name = name.strip_suffix(b"\0").unwrap_or(name);

            if name == note::HERMIT_NAME && ty == note::HERMIT_TYPE {
                let [version] = desc else {
                    return Err(ImageError::NoteDescSize { note: "HERMIT", size: descsz, expected: 1 });
                };
                if *version != note::HERMIT_ENTRY_VERSION {
                    return Err(ImageError::HermitVersion(*version));
                }
                hermit = true;
            } else if name == note::NAME && ty == note::TYPE {
                let Ok(version) = <[u8; 4]>::try_from(desc) else {
                    return Err(ImageError::NoteDescSize { note: "HVABI", size: descsz, expected: 4 });
                };
                let version = u32::from_le_bytes(version);
                if version != abi::ABI_VERSION {
                    return Err(ImageError::AbiVersion(version));
                }
                abi = true;
            }
            pos = next;
        }
    }
    if !hermit {
        return Err(ImageError::MissingHermitNote);
    }
    if !abi {
        return Err(ImageError::MissingAbiNote);
    }
    Ok(())
}
