//! Builders for the image target: a small valid Hermit kernel ELF, ustar
//! archives and gzip files, so that seeds are valid images and the target
//! can wrap fuzzed parts in correct checksums.

use abi::note;

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const PT_TLS: u32 = 7;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// One program header.
#[derive(Clone, Copy, Debug)]
pub struct Ph {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// An ELF note (4-byte aligned).
pub fn elf_note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ty.to_le_bytes());
    n.extend_from_slice(name);
    n.push(0);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend_from_slice(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

/// The notes every image needs: hermit-entry's version and our ABI's.
pub fn required_notes() -> Vec<u8> {
    let mut notes = elf_note(note::HERMIT_NAME, note::HERMIT_TYPE, &[note::HERMIT_ENTRY_VERSION]);
    notes.extend(elf_note(note::NAME, note::TYPE, &abi::ABI_VERSION.to_le_bytes()));
    notes
}

/// An x86_64 executable with the given program headers and entry, `len`
/// bytes long, with `contents` written at their offsets (the rest is a
/// non-zero pattern).
pub fn elf(phdrs: &[Ph], entry: u64, len: usize, contents: &[(usize, &[u8])]) -> Vec<u8> {
    let len = len.max(64 + 56 * phdrs.len());
    let mut elf: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    for &(at, bytes) in contents {
        if let Some(dst) = elf.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    elf[..64].fill(0);
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1; // EV_CURRENT
    put(&mut elf, 16, 2, 2); // ET_EXEC
    put(&mut elf, 18, 62, 2); // EM_X86_64
    put(&mut elf, 20, 1, 4);
    put(&mut elf, 24, entry, 8);
    put(&mut elf, 32, 64, 8); // e_phoff
    put(&mut elf, 52, 64, 2); // e_ehsize
    put(&mut elf, 54, 56, 2); // e_phentsize
    put(&mut elf, 56, phdrs.len() as u64, 2);
    for (i, p) in phdrs.iter().enumerate() {
        let o = 64 + 56 * i;
        put(&mut elf, o, p.p_type as u64, 4);
        put(&mut elf, o + 4, p.flags as u64, 4);
        put(&mut elf, o + 8, p.offset, 8);
        put(&mut elf, o + 16, p.vaddr, 8);
        put(&mut elf, o + 24, p.vaddr, 8);
        put(&mut elf, o + 32, p.filesz, 8);
        put(&mut elf, o + 40, p.memsz, 8);
        put(&mut elf, o + 48, p.align, 8);
    }
    elf
}

fn put(buf: &mut [u8], at: usize, value: u64, width: usize) {
    buf[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// Entry point of [`small_elf`].
pub const ENTRY: u64 = 0x20_1200;

/// A small valid kernel (0x320 bytes): text, rodata holding the notes,
/// data + bss holding the TLS template.
pub fn small_elf() -> Vec<u8> {
    let notes = required_notes();
    let n = notes.len() as u64;
    let phdrs = [
        Ph { p_type: PT_LOAD, flags: PF_R | PF_X, offset: 0x200, vaddr: 0x20_1200, filesz: 0x80, memsz: 0x80, align: 0x1000 },
        Ph { p_type: PT_LOAD, flags: PF_R, offset: 0x280, vaddr: 0x20_3280, filesz: n, memsz: n, align: 0x1000 },
        Ph { p_type: PT_LOAD, flags: PF_R | PF_W, offset: 0x300, vaddr: 0x20_5300, filesz: 0x20, memsz: 0x2000, align: 0x1000 },
        Ph { p_type: PT_NOTE, flags: PF_R, offset: 0x280, vaddr: 0x20_3280, filesz: n, memsz: n, align: 4 },
        Ph { p_type: PT_TLS, flags: PF_R, offset: 0x300, vaddr: 0x20_5300, filesz: 0x10, memsz: 0x40, align: 8 },
    ];
    // Text: a few instructions worth describing in a fault (hlt, wrmsr, int3).
    elf(&phdrs, ENTRY, 0x320, &[(0x200, &[0xf4, 0x0f, 0x30, 0xcc]), (0x280, &notes)])
}

/// A valid `hermit.toml` naming `kernel`, with `app_args`.
pub fn hermit_toml(kernel: &str, app_args: &[&str]) -> String {
    let args: Vec<String> = app_args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "version = \"1\"\nkernel = \"{kernel}\"\n\n[input]\nkernel_args = []\napp_args = [{}]\nenv_vars = []\n\n[requirements]\nmemory = \"64 MiB\"\ncpus = 1\n",
        args.join(", ")
    )
}

/// One ustar header block.
pub fn tar_header(name: &[u8], size: usize, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", size.min(0o77777777777)).as_bytes());
    h[136..148].copy_from_slice(b"14537431170\0");
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Appends one entry (header, data, padding).
pub fn tar_push(out: &mut Vec<u8>, name: &[u8], typeflag: u8, data: &[u8]) {
    out.extend_from_slice(&tar_header(name, data.len(), typeflag));
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// A ustar archive of regular files with its end-of-archive blocks.
pub fn tar(files: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        tar_push(&mut out, name, b'0', data);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// An image archive: `hermit.toml` and the kernel `hello`.
pub fn hermit_tar(toml: &[u8], elf: &[u8]) -> Vec<u8> {
    tar(&[(b"hermit.toml", toml), (b"hello", elf)])
}

/// The CRC-32 (IEEE) of `data`, as gzip uses it.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

pub const FHCRC: u8 = 2;
pub const FEXTRA: u8 = 4;
pub const FNAME: u8 = 8;
pub const FCOMMENT: u8 = 16;

/// A gzip file of `data` with the optional header fields in `flags`.
pub fn gzip(data: &[u8], flags: u8, level: u8) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, flags, 0x12, 0x34, 0x56, 0x78, 0, 3];
    if flags & FEXTRA != 0 {
        out.extend_from_slice(&[6, 0, b'A', b'B', 2, 0, 0xde, 0xad]);
    }
    if flags & FNAME != 0 {
        out.extend_from_slice(b"image.tar\0");
    }
    if flags & FCOMMENT != 0 {
        out.extend_from_slice(b"a comment\0");
    }
    if flags & FHCRC != 0 {
        let crc = crc32(&out) as u16;
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out.extend(miniz_oxide::deflate::compress_to_vec(data, level));
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
