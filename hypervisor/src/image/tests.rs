//! Tests: a small in-memory builder for ELF, tar and gzip, a valid image,
//! one test per way an image can be malformed, and a mutation test.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;

// ---------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// Indices of the program headers in [`ElfSpec::valid`].
const TEXT: usize = 0;
const RODATA: usize = 1;
const DATA: usize = 2;
const NOTE: usize = 3;
const TLS: usize = 4;

const ENTRY: u64 = 0x20_1010;

#[derive(Clone, Debug)]
struct Ph {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

fn ph(p_type: u32, flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64, align: u64) -> Ph {
    Ph { p_type, flags, offset, vaddr, filesz, memsz, align }
}

/// A description of an ELF file; [`ElfSpec::build`] lays it out.
#[derive(Clone, Debug)]
struct ElfSpec {
    e_type: u16,
    machine: u16,
    entry: u64,
    phdrs: Vec<Ph>,
    /// Written at the `PT_NOTE`'s offset; its `p_filesz` is set to the length.
    notes: Vec<u8>,
}

fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&ty.to_le_bytes());
    n.extend_from_slice(name);
    n.push(0);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    n.extend_from_slice(desc);
    while n.len() % 4 != 0 {
        n.push(0);
    }
    n
}

fn hermit_note() -> Vec<u8> {
    note(abi::note::HERMIT_NAME, abi::note::HERMIT_TYPE, &[abi::note::HERMIT_ENTRY_VERSION])
}

fn abi_note(version: u32) -> Vec<u8> {
    note(abi::note::NAME, abi::note::TYPE, &version.to_le_bytes())
}

impl ElfSpec {
    /// text (R+X), rodata (R, holds the notes), data+bss (R+W, holds .tdata).
    fn valid() -> Self {
        let mut notes = note(b"GNU", 3, &[0xaa; 20]);
        notes.extend(hermit_note());
        notes.extend(abi_note(abi::ABI_VERSION));
        ElfSpec {
            e_type: 2,
            machine: 62,
            entry: ENTRY,
            phdrs: vec![
                ph(PT_LOAD, PF_R | PF_X, 0x1000, 0x20_1000, 0x1234, 0x1234, 0x1000),
                ph(PT_LOAD, PF_R, 0x3000, 0x20_3000, 0x800, 0x800, 0x1000),
                ph(PT_LOAD, PF_R | PF_W, 0x4000, 0x20_5000, 0x300, 0x2100, 0x1000),
                ph(PT_NOTE, PF_R, 0x3000, 0x20_3000, 0, 0, 4),
                ph(PT_TLS, PF_R, 0x4000, 0x20_5000, 0x10, 0x40, 8),
            ],
            notes,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut phdrs = self.phdrs.clone();
        for p in phdrs.iter_mut().filter(|p| p.p_type == PT_NOTE) {
            p.filesz = self.notes.len() as u64;
            p.memsz = p.filesz;
        }
        // File length: the end of every sane file range.
        let ranges = phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD || p.p_type == PT_NOTE)
            .filter_map(|p| Some((p.offset as usize, p.offset.checked_add(p.filesz)? as usize)))
            .filter(|&(_, end)| end <= 1 << 20);
        let len = ranges.clone().map(|(_, end)| end).chain([64 + 56 * phdrs.len()]).max().unwrap();
        let mut elf = vec![0u8; len];
        for (start, end) in ranges {
            for (i, b) in elf[start..end].iter_mut().enumerate() {
                *b = pattern(start + i);
            }
        }
        for p in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
            let at = p.offset as usize;
            if at + self.notes.len() <= elf.len() {
                elf[at..at + self.notes.len()].copy_from_slice(&self.notes);
            }
        }
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little endian
        elf[6] = 1; // EV_CURRENT
        put(&mut elf, 16, self.e_type as u64, 2);
        put(&mut elf, 18, self.machine as u64, 2);
        put(&mut elf, 20, 1, 4);
        put(&mut elf, 24, self.entry, 8);
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
}

/// Content of the byte at file offset `off`: never zero, so bss is visible.
fn pattern(off: usize) -> u8 {
    (off % 251) as u8 + 1
}

fn put(buf: &mut [u8], at: usize, value: u64, width: usize) {
    buf[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

const TOML: &str = r#"
version = "1"
kernel = "hello"

[input]
kernel_args = ["-freq", "3000"]
app_args = ["--port", "8080", "héllo wörld"]
env_vars = ["RUST_LOG=info"]

[requirements]
memory = "64 MiB"
cpus = 1
"#;

/// One tar header block (ustar, or GNU magic with `gnu`).
fn tar_header(name: &[u8], prefix: &[u8], size: usize, typeflag: u8, gnu: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14537431170\0");
    h[156] = typeflag;
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[345..345 + prefix.len()].copy_from_slice(prefix);
    }
    seal(&mut h);
    h
}

/// Writes the header checksum.
fn seal(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn tar_push(out: &mut Vec<u8>, header: [u8; 512], data: &[u8]) {
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// A ustar archive of regular files, with the two end-of-archive blocks.
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        tar_push(&mut out, tar_header(name.as_bytes(), b"", data.len(), b'0', false), data);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A plain-tar image holding `hermit.toml` and `elf` as `hello`.
fn image(elf: &[u8]) -> Vec<u8> {
    tar(&[("hermit.toml", TOML.as_bytes()), ("hello", elf)])
}

/// A valid image file (plain tar) whose text holds `tag`: images with
/// different tags have different digests (for the machine's tests).
pub(crate) fn valid_image_file(tag: u8) -> Vec<u8> {
    let mut elf = ElfSpec::valid().build();
    elf[0x1100] = tag;
    image(&elf)
}

fn parse_elf(elf: &[u8]) -> Result<Image, ImageError> {
    Image::parse(&image(elf))
}

fn parse_spec(spec: ElfSpec) -> Result<Image, ImageError> {
    parse_elf(&spec.build())
}

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

/// A gzip file of `data` with the given optional header fields.
fn gzip(data: &[u8], flags: u8) -> Vec<u8> {
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
        let crc = gzip::crc32(&out) as u16;
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend_from_slice(&gzip::crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

use crate::testutil::Rng;

fn err(result: Result<Image, ImageError>) -> ImageError {
    match result {
        Ok(image) => panic!("expected an error, got {image:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------
// Valid images
// ---------------------------------------------------------------------------

#[test]
fn valid_image_parses() {
    let elf = ElfSpec::valid().build();
    let image = parse_elf(&elf).unwrap();
    assert_eq!(image.entry, ENTRY);
    assert_eq!(image.kernel_name, "hello");
    assert_eq!(image.app_args, ["--port", "8080", "héllo wörld"]);
    assert_eq!(image.elf, elf);
    assert_eq!(
        image.segments,
        [
            Segment { vaddr: 0x20_1000, mem_size: 0x1234, file_offset: 0x1000, file_size: 0x1234, perms: Perms::READ | Perms::EXECUTE },
            Segment { vaddr: 0x20_3000, mem_size: 0x800, file_offset: 0x3000, file_size: 0x800, perms: Perms::READ },
            Segment { vaddr: 0x20_5000, mem_size: 0x2100, file_offset: 0x4000, file_size: 0x300, perms: Perms::READ | Perms::WRITE },
        ]
    );
    assert_eq!(image.tls, Some(Tls { start: 0x20_5000, filesz: 0x10, memsz: 0x40, align: 8 }));
    assert_eq!(image.segments[0].pages(), 0x20_1000..0x20_3000);
    assert_eq!(image.segments[2].pages(), 0x20_5000..0x20_8000);
    assert_eq!(image.mapped_bytes(), 6 * 4096);
    assert_eq!(image.vaddr_range(), 0x20_1000..0x20_8000);
}

#[test]
fn fill_page_gives_file_bytes_then_zeros() {
    let elf = ElfSpec::valid().build();
    let image = parse_elf(&elf).unwrap();
    let mut page = [0xccu8; 4096];

    // A full text page.
    assert!(image.fill_page(0x20_1000, &mut page));
    assert_eq!(page[..], elf[0x1000..0x2000]);
    // The last text page: 0x234 file bytes, then zeros.
    assert!(image.fill_page(0x20_2000, &mut page));
    assert_eq!(page[..0x234], elf[0x2000..0x2234]);
    assert!(page[0x234..].iter().all(|&b| b == 0));
    // Data: 0x300 file bytes, then bss, then two pages of bss only.
    assert!(image.fill_page(0x20_5000, &mut page));
    assert_eq!(page[..0x300], elf[0x4000..0x4300]);
    assert!(page[0x300..].iter().all(|&b| b == 0));
    page.fill(0xcc);
    assert!(image.fill_page(0x20_6000, &mut page));
    assert!(page.iter().all(|&b| b == 0));
    page.fill(0xcc);
    assert!(image.fill_page(0x20_7000, &mut page));
    assert!(page.iter().all(|&b| b == 0));

    // Not covered, or not page-aligned: untouched.
    page.fill(0xcc);
    for addr in [0, 0x20_0000, 0x20_4000, 0x20_8000, 0x20_1001, !0xfff] {
        assert!(!image.fill_page(addr, &mut page), "{addr:#x}");
    }
    assert!(page.iter().all(|&b| b == 0xcc));
}

#[test]
fn segment_not_starting_on_a_page_boundary() {
    // rodata starting mid-page: the page's head is zero, file bytes follow.
    let elf = ElfSpec::valid()
        .with(|s| {
            s.phdrs[RODATA].offset = 0x3100;
            s.phdrs[RODATA].vaddr = 0x20_3100;
            s.phdrs[RODATA].filesz = 0x700;
            s.phdrs[RODATA].memsz = 0x700;
            s.phdrs[NOTE].offset = 0x3100;
        })
        .build();
    let image = parse_elf(&elf).unwrap();
    assert_eq!(image.segments[1].pages(), 0x20_3000..0x20_4000);
    let mut page = [0xccu8; 4096];
    assert!(image.fill_page(0x20_3000, &mut page));
    assert!(page[..0x100].iter().all(|&b| b == 0));
    assert_eq!(page[0x100..0x800], elf[0x3100..0x3800]);
    assert!(page[0x800..].iter().all(|&b| b == 0));
}

#[test]
fn segments_are_sorted_by_address() {
    let image = parse_spec(ElfSpec::valid().with(|s| s.phdrs.swap(TEXT, DATA))).unwrap();
    let addrs: Vec<u64> = image.segments.iter().map(|s| s.vaddr).collect();
    assert_eq!(addrs, [0x20_1000, 0x20_3000, 0x20_5000]);
}

#[test]
fn gzip_images_parse() {
    let elf = ElfSpec::valid().build();
    let plain = image(&elf);
    for flags in [0, FNAME, FEXTRA | FNAME | FCOMMENT | FHCRC, FEXTRA, FCOMMENT, FHCRC, 1] {
        let image = Image::parse(&gzip(&plain, flags)).unwrap_or_else(|e| panic!("flags {flags:#x}: {e}"));
        assert_eq!(image.entry, ENTRY);
        // The kernel, moved to the front of the unpacked archive.
        assert_eq!(image.elf, elf);
    }
}

#[test]
fn crc32_check_value() {
    assert_eq!(gzip::crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(gzip::crc32(b""), 0);
}

#[test]
fn tar_names_are_normalized_and_last_wins() {
    let elf = ElfSpec::valid().build();
    let mut bad = elf.clone();
    bad[18] = 183; // aarch64
    let toml = TOML.replace("kernel = \"hello\"", "kernel = \"./bin/hello\"");
    let archive = tar(&[("./hermit.toml", toml.as_bytes()), ("/bin/hello", &bad), ("bin/hello", &elf)]);
    let image = Image::parse(&archive).unwrap();
    assert_eq!(image.kernel_name, "./bin/hello");
    assert_eq!(image.elf, elf);

    // The other order: the bad kernel wins.
    let archive = tar(&[("hermit.toml", toml.as_bytes()), ("bin/hello", &elf), ("./bin/hello", &bad)]);
    assert_eq!(err(Image::parse(&archive)), ImageError::ElfMachine(183));
}

#[test]
fn tar_prefix_long_names_and_other_entry_types() {
    let elf = ElfSpec::valid().build();
    let dir = "d".repeat(120);
    let long = format!("{dir}/{}", "k".repeat(150));
    let toml = TOML.replace("kernel = \"hello\"", &format!("kernel = \"{long}\""));

    // ustar prefix field.
    let short = format!("{dir}/hello");
    let toml_short = TOML.replace("kernel = \"hello\"", &format!("kernel = \"{short}\""));
    let mut a = Vec::new();
    tar_push(&mut a, tar_header(b"./", b"", 0, b'5', false), &[]);
    tar_push(&mut a, tar_header(b"hermit.toml", b"", toml_short.len(), b'0', false), toml_short.as_bytes());
    tar_push(&mut a, tar_header(b"hello", dir.as_bytes(), elf.len(), b'0', false), &elf);
    a.extend_from_slice(&[0; 1024]);
    assert_eq!(Image::parse(&a).unwrap().kernel_name, short);

    // GNU long name ('L'), plus a symlink and a directory to skip.
    let mut a = Vec::new();
    tar_push(&mut a, tar_header(b"hermit.toml", b"", toml.len(), b'0', true), toml.as_bytes());
    tar_push(&mut a, tar_header(b"link", b"", 0, b'2', true), &[]);
    let mut name = long.clone().into_bytes();
    name.push(0);
    tar_push(&mut a, tar_header(b"././@LongLink", b"", name.len(), b'L', true), &name);
    tar_push(&mut a, tar_header(&long.as_bytes()[..100], b"", elf.len(), b'0', true), &elf);
    a.extend_from_slice(&[0; 1024]);
    assert_eq!(Image::parse(&a).unwrap().elf, elf);

    // pax extended header ('x') with a path record.
    let mut a = Vec::new();
    tar_push(&mut a, tar_header(b"hermit.toml", b"", toml.len(), b'0', false), toml.as_bytes());
    let body = format!(" path={long}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    let record = format!("17 mtime=12345.5\n{len}{body}");
    tar_push(&mut a, tar_header(b"PaxHeaders/x", b"", record.len(), b'x', false), record.as_bytes());
    tar_push(&mut a, tar_header(b"truncated-name", b"", elf.len(), b'0', false), &elf);
    a.extend_from_slice(&[0; 1024]);
    assert_eq!(Image::parse(&a).unwrap().elf, elf);

    // A malformed pax header.
    for record in ["18 mtime=12345.5\n", "5 a=b", "x path=a\n", "0 path=a\n", "99 path=a\n"] {
        let mut a = Vec::new();
        tar_push(&mut a, tar_header(b"hermit.toml", b"", toml.len(), b'0', false), toml.as_bytes());
        tar_push(&mut a, tar_header(b"PaxHeaders/x", b"", record.len(), b'x', false), record.as_bytes());
        a.extend_from_slice(&[0; 1024]);
        let e = err(Image::parse(&a));
        assert_eq!(e, ImageError::TarCorrupt { offset: 1024, reason: "malformed pax extended header" }, "{record:?}");
    }
}

/// Archives made by the real `tar` and `gzip` (skipped where not installed).
#[test]
fn real_tar_and_gzip_archives() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("hv-image-test-{}", std::process::id()));
    let long = "k".repeat(130);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let elf = ElfSpec::valid().build();
    std::fs::write(dir.join("src/hello"), &elf).unwrap();
    std::fs::write(dir.join("src").join(&long), &elf).unwrap();
    let cases: [(&str, &[&str], &str); 4] = [
        ("gnu.tar.gz", &["--format=gnu", "-czf"], "hello"),
        ("posix.tar", &["--format=posix", "-cf"], "hello"),
        ("long-gnu.tgz", &["--format=gnu", "-czf"], &long),
        ("long-posix.tgz", &["--format=posix", "-czf"], &long),
    ];
    for (file, args, kernel) in cases {
        let toml = TOML.replace("kernel = \"hello\"", &format!("kernel = \"{kernel}\""));
        std::fs::write(dir.join("src/hermit.toml"), toml).unwrap();
        let out = dir.join(file);
        let status = Command::new("tar").args(args).arg(&out).arg("-C").arg(dir.join("src")).arg(".").status();
        match status {
            Ok(s) if s.success() => {}
            _ => {
                std::eprintln!("skipping {file}: `tar` is not usable here");
                continue;
            }
        }
        let image = Image::parse(&std::fs::read(&out).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(image.elf, elf, "{file}");
    }
    // gzip(1) with a file name in the header.
    let plain = dir.join("plain.tar");
    std::fs::write(&plain, image(&elf)).unwrap();
    if Command::new("gzip").args(["-9", "-N", "-f"]).arg(&plain).status().is_ok_and(|s| s.success()) {
        let gz = std::fs::read(dir.join("plain.tar.gz")).unwrap();
        assert_eq!(Image::parse(&gz).unwrap().elf, elf);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Malformed archives
// ---------------------------------------------------------------------------

#[test]
fn too_large_file() {
    let file = vec![0u8; MAX_IMAGE_BYTES + 1];
    let e = err(Image::parse(&file));
    assert_eq!(e, ImageError::TooLarge { size: MAX_IMAGE_BYTES as u64 + 1 });
    assert_eq!(e.to_string(), "image is 67108865 bytes; the limit is 64 MiB");
}

#[test]
fn not_a_tar() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let random: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    for file in [&random[..], &[], &[0u8; 1024], b"hello world", &random[..511]] {
        assert_eq!(err(Image::parse(file)), ImageError::NotTar);
    }
    assert_eq!(ImageError::NotTar.to_string(), "not a tar archive (no valid tar header)");
}

#[test]
fn truncated_tar() {
    let archive = image(&ElfSpec::valid().build());
    for len in 0..archive.len() - 1024 {
        let e = err(Image::parse(&archive[..len]));
        assert!(matches!(e, ImageError::NotTar | ImageError::TarTruncated { .. }), "{len}: {e}");
    }
    // An entry whose data runs past the end.
    let e = err(Image::parse(&archive[..2000]));
    assert_eq!(e, ImageError::TarTruncated { offset: 1024 });
    assert_eq!(e.to_string(), "tar archive is truncated (ends inside the entry at offset 0x400)");
}

#[test]
fn corrupt_tar_headers() {
    let archive = image(&ElfSpec::valid().build());
    // Second header (the kernel's) at 1024: break its checksum.
    let mut a = archive.clone();
    a[1024] ^= 1;
    assert_eq!(err(Image::parse(&a)), ImageError::TarCorrupt { offset: 1024, reason: "checksum does not match" });
    // A non-octal size with a correct checksum.
    let mut a = archive.clone();
    let mut h: [u8; 512] = a[1024..1536].try_into().unwrap();
    h[124..136].copy_from_slice(b"00000009999\0");
    seal(&mut h);
    a[1024..1536].copy_from_slice(&h);
    assert!(matches!(err(Image::parse(&a)), ImageError::TarCorrupt { offset: 1024, .. }));
    // A huge size.
    h[124..136].copy_from_slice(b"77777777777\0");
    seal(&mut h);
    a[1024..1536].copy_from_slice(&h);
    assert_eq!(err(Image::parse(&a)), ImageError::TarTruncated { offset: 1024 });
    // Corrupting the first header means it is not a tar at all.
    let mut a = archive;
    a[148] = b'x';
    assert_eq!(err(Image::parse(&a)), ImageError::NotTar);
}

#[test]
fn missing_hermit_toml() {
    let archive = tar(&[("hello", &ElfSpec::valid().build()), ("dir/hermit.toml", TOML.as_bytes())]);
    let e = err(Image::parse(&archive));
    assert_eq!(e, ImageError::ConfigMissing);
    assert_eq!(e.to_string(), "hermit.toml is missing");
}

#[test]
fn kernel_missing() {
    let archive = tar(&[("hermit.toml", TOML.as_bytes()), ("hello.elf", &ElfSpec::valid().build())]);
    let e = err(Image::parse(&archive));
    assert_eq!(e, ImageError::KernelMissing("hello".into()));
    assert_eq!(e.to_string(), "kernel 'hello' named by hermit.toml is not in the archive");
}

#[test]
fn bad_toml() {
    let elf = ElfSpec::valid().build();
    let parse = |toml: &[u8]| Image::parse(&tar(&[("hermit.toml", toml), ("hello", &elf)]));
    for toml in [
        "version = ",
        "version = \"2\"\nkernel = \"hello\"\n[input]\nkernel_args = []\napp_args = []\n",
        "version = \"1\"\n[input]\nkernel_args = []\napp_args = []\n",
        "version = \"1\"\nkernel = \"hello\"\n",
        "version = \"1\"\nkernel = \"hello\"\n[input]\nkernel_args = []\napp_args = [1]\n",
        "version = \"1\"\nkernel = \"hello\"\n[input]\nkernel_args = []\napp_args = []\n[requirements]\nmemory = \"1.00000000000000000000000000000000001 ZiB\"\n",
        "version = \"1\"\nkernel = \"hello\"\n[input]\nkernel_args = []\napp_args = []\n[requirements]\nmemory = \"99999999999999999999999999999999999999 EiB\"\n",
        // Deep nesting, within the size limit.
        &format!("a = {}", "[".repeat(8_000)),
        &format!("a = {}", "{b = ".repeat(1_600)),
        &format!("{}= 1", "a.".repeat(4_000)),
        &format!("{}= 1", "[a]\n".repeat(2_000)),
        "",
    ] {
        let e = err(parse(toml.as_bytes()));
        let short: String = toml.chars().take(60).collect();
        let ImageError::Config(reason) = &e else { panic!("{short:?}: {e:?}") };
        assert!(!reason.contains('\n'), "{reason}");
        assert!(e.to_string().starts_with("hermit.toml: "), "{e}");
    }
    assert_eq!(err(parse(b"version = \xff")), ImageError::ConfigNotUtf8);
    let big = vec![b'#'; MAX_CONFIG_BYTES + 1];
    let e = err(parse(&big));
    assert_eq!(e, ImageError::ConfigTooLarge { size: big.len() as u64 });
    assert_eq!(e.to_string(), "hermit.toml is 8193 bytes; the limit is 8 KiB");

    let e = err(parse(b"version = \"1\"\n\nkernel = \n[input]\nkernel_args = []\napp_args = []\n"));
    assert!(e.to_string().starts_with("hermit.toml: line 3: "), "{e}");
    let e = err(parse(b"version = \"1\"\n\nkernel = 5\n[input]\nkernel_args = []\napp_args = []\n"));
    assert_eq!(e.to_string(), "hermit.toml: invalid type: integer `5`, expected a string");
}

/// `data` deflated (level 9), in a gzip file whose trailer holds `crc` and
/// `isize` (pass `gzip::crc32(data)` and `data.len()` for an honest one).
fn gzip_with_trailer(data: &[u8], crc: u32, isize: u32) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 9));
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&isize.to_le_bytes());
    out
}

/// `file` with its trailer's ISIZE replaced.
fn with_isize(file: &[u8], isize: u32) -> Vec<u8> {
    let mut f = file.to_vec();
    let n = f.len();
    f[n - 4..].copy_from_slice(&isize.to_le_bytes());
    f
}

/// The reproduced finding: about 60 KB that inflate to 60 MiB of zeros,
/// with an honest trailer. Built once (it takes a while in a debug build).
fn bomb() -> &'static [u8] {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        let zeros = vec![0u8; BOMB_SIZE];
        gzip_with_trailer(&zeros, gzip::crc32(&zeros), BOMB_SIZE as u32)
    })
}

const BOMB_SIZE: usize = 60 << 20;

#[test]
fn a_gzip_bomb_is_refused_within_its_budget() {
    let bomb = bomb();
    assert!(bomb.len() < 100 << 10, "{} bytes", bomb.len());
    let budget = 8 << 20;
    let e = err(Image::parse_within(bomb, budget));
    assert_eq!(e, ImageError::OutOfMemory { needed: BOMB_SIZE as u64, available: budget as u64 });
    assert_eq!(e.to_string(), "the hypervisor has no room to unpack it (needs 62914560 bytes, has 8388608)");
    // Refused on the trailer's word, checked by inflating into a 32 KiB
    // window only as far as the budget: the 60 MiB are never allocated.
    assert_eq!(gzip::survey(&bomb[10..bomb.len() - 8], budget), gzip::Survey::Exceeds);

    // A smaller bomb, 2 MiB of zeros, right at the edge of its budget
    // (a 60 MiB one would do the same, only slower in a debug build).
    let size = 2 << 20;
    let zeros = vec![0u8; size];
    let small = gzip_with_trailer(&zeros, gzip::crc32(&zeros), size as u32);
    assert_eq!(err(Image::parse_within(&small, size)), ImageError::NotTar);
    assert_eq!(err(Image::parse(&small)), ImageError::NotTar);
    assert_eq!(err(Image::parse_within(&small, size - 1)), ImageError::OutOfMemory { needed: size as u64, available: size as u64 - 1 });
}

#[test]
fn a_gzip_bomb_beyond_the_hard_limit() {
    // The bomb's stream with a trailer claiming 65 MiB: past 64 MiB
    // whatever the budget, once the stream is seen to go on past the
    // budget...
    let declared = 65 << 20;
    let bomb = with_isize(bomb(), declared);
    for budget in [1 << 20, 8 << 20, usize::MAX] {
        let e = err(Image::parse_within(&bomb, budget));
        if budget < BOMB_SIZE {
            assert_eq!(e, ImageError::GzipTooLarge { declared: declared.into() });
            assert_eq!(e.to_string(), "gzip trailer declares 68157440 bytes uncompressed; the limit is 64 MiB");
        } else {
            // ...while with room for 64 MiB it is seen to end at 60: a
            // length that does not match.
            assert_eq!(e, ImageError::GzipChecksum);
        }
    }
}

#[test]
fn a_trailer_declaring_less_than_the_data_is_refused() {
    // The bomb declaring 100 bytes: inflation stops after 100.
    for declared in [0, 1, 100, 4 << 20] {
        let bomb = with_isize(bomb(), declared);
        let e = err(Image::parse_within(&bomb, 8 << 20));
        assert_eq!(e, ImageError::GzipLongerThanDeclared { declared: declared.into() });
    }
    assert_eq!(
        ImageError::GzipLongerThanDeclared { declared: 100 }.to_string(),
        "gzip data expands past the 100 bytes its trailer declares"
    );
    // A valid image one byte longer than its trailer says.
    let plain = image(&ElfSpec::valid().build());
    let g = gzip_with_trailer(&plain, gzip::crc32(&plain), plain.len() as u32 - 1);
    assert_eq!(err(Image::parse(&g)), ImageError::GzipLongerThanDeclared { declared: plain.len() as u64 - 1 });
}

#[test]
fn a_trailer_declaring_more_than_the_data_is_a_length_mismatch() {
    let plain = image(&ElfSpec::valid().build());
    let crc = gzip::crc32(&plain);
    let n = plain.len();
    let budget = 1 << 20;
    // Within the budget (allocated, then found short), past it (surveyed,
    // found short) and past the hard limit.
    for declared in [n + 1, 2 * n, budget, budget + 1, MAX_IMAGE_BYTES + 1, u32::MAX as usize] {
        let g = gzip_with_trailer(&plain, crc, declared as u32);
        assert_eq!(err(Image::parse_within(&g, budget)), ImageError::GzipChecksum, "declared {declared}");
    }
}

#[test]
fn a_truncated_gzip_is_corrupt_whatever_its_last_bytes_declare() {
    // A truncated file's "trailer" is deflate data: it may declare any size.
    let g = gzip_with_trailer(&[7u8; 300_000].repeat(2), 0, 0);
    let body = &g[..g.len() - 8];
    for declared in [0, 10, 1 << 16, 1 << 20, 100 << 20, u32::MAX] {
        let mut t = body[..body.len() / 2].to_vec();
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&declared.to_le_bytes());
        let e = err(Image::parse_within(&t, 1 << 20));
        assert_eq!(e, ImageError::GzipCorrupt, "declared {declared}");
    }
}

#[test]
fn a_budget_smaller_than_a_valid_image_is_refused_cleanly() {
    let elf = ElfSpec::valid().build();
    let plain = image(&elf);
    let gz = gzip(&plain, FNAME);
    let oom = |needed: usize, budget: usize| ImageError::OutOfMemory { needed: needed as u64, available: budget as u64 };
    // hermit.toml's parse is allowed its share.
    let config = TOML.len() * CONFIG_HEAP_PER_BYTE;
    // gzip: the unpacked archive must fit (refused before it is unpacked),
    // then the archive and the config's share together.
    let n = plain.len();
    for budget in [0, 1, n - 1] {
        assert_eq!(err(Image::parse_within(&gz, budget)), oom(n, budget), "budget {budget}");
    }
    for budget in [n, n + config - 1] {
        assert_eq!(err(Image::parse_within(&gz, budget)), oom(n + config, budget), "budget {budget}");
    }
    let image = Image::parse_within(&gz, n + config).unwrap();
    assert_eq!(image.elf, elf);
    // A plain tar: the config's share, then the kernel's copy beside it.
    let k = elf.len();
    assert_eq!(err(Image::parse_within(&plain, config - 1)), oom(config, config - 1));
    assert_eq!(err(Image::parse_within(&plain, k + config - 1)), oom(k + config, k + config - 1));
    assert_eq!(Image::parse_within(&plain, k + config).unwrap().elf, elf);
    // A budget beyond the hard limit is the hard limit for the archive.
    assert_eq!(Image::parse_within(&gz, usize::MAX).unwrap().elf, elf);
    assert_eq!(Image::parse_within(&plain, usize::MAX).unwrap().elf, elf);
}

#[test]
fn a_large_hermit_toml_needs_its_share_of_the_budget() {
    let elf = ElfSpec::valid().build();
    let padded = format!("{TOML}{}\n", "#".repeat(MAX_CONFIG_BYTES - TOML.len() - 1));
    assert_eq!(padded.len(), MAX_CONFIG_BYTES);
    let file = tar(&[("hermit.toml", padded.as_bytes()), ("hello", &elf)]);
    let share = MAX_CONFIG_BYTES * CONFIG_HEAP_PER_BYTE;
    assert_eq!(err(Image::parse_within(&file, 4 << 20)), ImageError::OutOfMemory { needed: share as u64, available: 4 << 20 });
    assert!(Image::parse_within(&file, share + elf.len()).is_ok());
}

#[test]
fn out_of_memory_says_what_it_needed() {
    assert_eq!(
        ImageError::OutOfMemory { needed: 4096, available: 1024 }.to_string(),
        "the hypervisor has no room to unpack it (needs 4096 bytes, has 1024)"
    );
    assert_eq!(
        ImageError::OutOfMemory { needed: 4096, available: 8192 }.to_string(),
        "the hypervisor has no room to unpack it (needs 4096 bytes, and allocating them failed)"
    );
}

#[test]
fn survey_counts_the_output_exactly() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7 + i / 1000) as u8).collect();
    let deflate = miniz_oxide::deflate::compress_to_vec(&data, 6);
    let n = data.len();
    assert_eq!(gzip::survey(&deflate, n), gzip::Survey::Ends(n));
    assert_eq!(gzip::survey(&deflate, usize::MAX), gzip::Survey::Ends(n));
    assert_eq!(gzip::survey(&deflate, n - 1), gzip::Survey::Exceeds);
    assert_eq!(gzip::survey(&deflate[..deflate.len() / 2], n), gzip::Survey::Corrupt);
    assert_eq!(gzip::survey(&[], 10), gzip::Survey::Corrupt);
}

/// When the heap cannot give what the trailer declares (fragmented, or a
/// budget larger than the heap), the refusal still says what is wrong.
#[test]
fn no_room_after_all_says_what_is_wrong() {
    let data = vec![5u8; 50_000];
    let deflate = miniz_oxide::deflate::compress_to_vec(&data, 6);
    let n = data.len();
    assert_eq!(gzip::no_room(&deflate, n, 1 << 20), ImageError::OutOfMemory { needed: n as u64, available: 1 << 20 });
    assert_eq!(gzip::no_room(&deflate, n + 1, 1 << 20), ImageError::GzipChecksum);
    assert_eq!(gzip::no_room(&deflate, n - 1, 1 << 20), ImageError::GzipLongerThanDeclared { declared: n as u64 - 1 });
    assert_eq!(gzip::no_room(&deflate[..deflate.len() - 3], n, 1 << 20), ImageError::GzipCorrupt);
}

#[test]
fn corrupt_gzip() {
    let plain = image(&ElfSpec::valid().build());
    let good = gzip(&plain, FNAME | FHCRC);
    let body = 10 + b"image.tar\0".len() + 2;

    // Wrong trailer CRC / length.
    let mut g = good.clone();
    let n = g.len();
    g[n - 8] ^= 1;
    assert_eq!(err(Image::parse(&g)), ImageError::GzipChecksum);
    let mut g = good.clone();
    g[n - 1] ^= 1;
    assert_eq!(err(Image::parse(&g)), ImageError::GzipChecksum);
    // Garbage in the deflate stream.
    let mut g = good.clone();
    for b in &mut g[body..body + 16] {
        *b = 0xff;
    }
    assert!(matches!(err(Image::parse(&g)), ImageError::GzipCorrupt | ImageError::GzipChecksum));
    // Every truncation.
    for len in 0..good.len() {
        let e = err(Image::parse(&good[..len]));
        assert!(
            matches!(e, ImageError::NotTar | ImageError::GzipHeader(_) | ImageError::GzipCorrupt | ImageError::GzipChecksum),
            "{len}: {e:?}"
        );
    }
    // Header problems.
    let mut g = good.clone();
    g[2] = 7;
    assert_eq!(err(Image::parse(&g)), ImageError::GzipHeader("compression method is not deflate"));
    let mut g = good.clone();
    g[3] |= 0x80;
    assert_eq!(err(Image::parse(&g)), ImageError::GzipHeader("reserved flag bits are set"));
    let mut g = good.clone();
    g[body - 1] ^= 1;
    assert_eq!(err(Image::parse(&g)), ImageError::GzipHeader("header CRC does not match"));
    let mut g = gzip(&plain, FEXTRA);
    g[10] = 0xff;
    g[11] = 0xff;
    assert!(matches!(err(Image::parse(&g)), ImageError::GzipHeader(_) | ImageError::GzipCorrupt));
    // A gzip of something that is not a tar.
    assert_eq!(err(Image::parse(&gzip(b"not a tar", 0))), ImageError::NotTar);
}

// ---------------------------------------------------------------------------
// Malformed ELF
// ---------------------------------------------------------------------------

#[test]
fn truncated_elf_every_prefix() {
    let elf = ElfSpec::valid().build();
    for len in 0..elf.len() {
        assert!(elf::parse(&elf[..len]).is_err(), "prefix of {len} bytes parsed");
    }
    assert_eq!(err(parse_elf(&elf[..10])), ImageError::ElfTooShort { size: 10 });
    assert_eq!(err(parse_elf(&elf[..100])), ImageError::PhdrsPastEnd { offset: 64, count: 5, file_size: 100 });
    assert!(matches!(err(parse_elf(&elf[..elf.len() - 1])), ImageError::SegmentPastFileEnd { index: DATA, .. }));
}

#[test]
fn bad_elf_header() {
    let elf = ElfSpec::valid().build();
    let patched = |at: usize, v: u8| {
        let mut e = elf.clone();
        e[at] = v;
        err(parse_elf(&e))
    };
    assert_eq!(patched(0, 0), ImageError::NotElf);
    assert_eq!(patched(4, 1), ImageError::ElfClass(1));
    assert_eq!(patched(5, 2), ImageError::ElfEndian(2));
    assert_eq!(patched(18, 183), ImageError::ElfMachine(183));
    assert_eq!(patched(18, 3), ImageError::ElfMachine(3));
    assert_eq!(patched(16, 1), ImageError::ElfType(1));
    assert_eq!(patched(54, 64), ImageError::PhentSize(64));
    assert_eq!(patched(56, 65), ImageError::TooManyPhdrs(65));
    let e = patched(16, 3);
    assert_eq!(e, ImageError::PositionIndependent);
    assert_eq!(e.to_string(), "position-independent images are not supported");
}

#[test]
fn program_headers_past_the_end() {
    let mut elf = ElfSpec::valid().build();
    put(&mut elf, 32, 0x4300 - 56 * 4, 8);
    let e = err(parse_elf(&elf));
    assert_eq!(e, ImageError::PhdrsPastEnd { offset: 0x4300 - 224, count: 5, file_size: 0x4300 });
    assert_eq!(e.to_string(), "ELF program header table (offset 0x4220, 5 entries) lies past the end of the 17152-byte file");
    put(&mut elf, 32, u64::MAX - 8, 8);
    assert!(matches!(err(parse_elf(&elf)), ImageError::PhdrsPastEnd { .. }));
}

#[test]
fn segment_file_range_past_the_end() {
    for (offset, filesz) in [(0x4000, 0x301), (0x4300, 1), (u64::MAX, 0x300), (0x4000, u64::MAX)] {
        let mut elf = ElfSpec::valid().build();
        let o = 64 + 56 * DATA;
        put(&mut elf, o + 8, offset, 8);
        put(&mut elf, o + 32, filesz, 8);
        put(&mut elf, o + 40, filesz.max(0x2100), 8);
        let e = err(parse_elf(&elf));
        assert_eq!(e, ImageError::SegmentPastFileEnd { index: DATA, offset, size: filesz, file_size: 0x4300 }, "{e}");
    }
}

#[test]
fn filesz_larger_than_memsz() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].memsz = 0x2ff)));
    assert_eq!(e, ImageError::SegmentFileSize { index: DATA, file_size: 0x300, mem_size: 0x2ff });
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[TLS].memsz = 0x8)));
    assert_eq!(e, ImageError::SegmentFileSize { index: TLS, file_size: 0x10, mem_size: 0x8 });
}

#[test]
fn zero_length_note_name() {
    let spec = ElfSpec::valid().with(|s| {
        s.notes = note(b"", 1, &[1, 2, 3, 4]);
        s.notes[0..4].copy_from_slice(&0u32.to_le_bytes());
        s.notes.extend(hermit_note());
        s.notes.extend(abi_note(abi::ABI_VERSION));
    });
    let e = err(parse_spec(spec));
    assert_eq!(e, ImageError::NoteNameEmpty);
    assert_eq!(e.to_string(), "zero-length note name");
}

#[test]
fn note_sizes_overflowing() {
    for (namesz, descsz) in [(u32::MAX, 4), (4, u32::MAX), (u32::MAX - 2, u32::MAX - 2), (0x1000, 4), (4, 0x1000)] {
        let spec = ElfSpec::valid().with(|s| {
            let mut n = hermit_note();
            n[0..4].copy_from_slice(&namesz.to_le_bytes());
            n[4..8].copy_from_slice(&descsz.to_le_bytes());
            s.notes = abi_note(abi::ABI_VERSION);
            s.notes.extend(n);
        });
        let e = err(parse_spec(spec));
        assert!(matches!(e, ImageError::NoteTruncated { index: NOTE, .. }), "{namesz:#x}/{descsz:#x}: {e}");
    }
    // A note header cut short by p_filesz.
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.notes.extend_from_slice(&[5, 0, 0, 0]))));
    assert!(matches!(e, ImageError::NoteTruncated { .. }), "{e}");
    // A note segment outside the file.
    let mut elf = ElfSpec::valid().build();
    put(&mut elf, 64 + 56 * NOTE + 8, 0x4300, 8);
    let e = err(parse_elf(&elf));
    assert!(matches!(e, ImageError::SegmentPastFileEnd { index: NOTE, .. }), "{e}");
}

#[test]
fn segment_in_the_hypervisor_half() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].vaddr = 0xffff_8000_0000_0000)));
    assert_eq!(e, ImageError::SegmentInHypervisorHalf { index: DATA, start: 0xffff_8000_0000_0000, end: 0xffff_8000_0000_3000 });
    assert_eq!(e.to_string(), "segment 2 [0xffff800000000000, 0xffff800000003000) reaches into the hypervisor's half");
    // Starting in the guest half, ending beyond it; and non-canonical.
    for vaddr in [0x7fff_ffff_f000, 0x7fff_ffff_e000, 0x0000_9000_0000_0000, 0xff00_0000_0000_0000] {
        let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].vaddr = vaddr)));
        assert!(matches!(e, ImageError::SegmentInHypervisorHalf { index: DATA, .. }), "{vaddr:#x}: {e}");
    }
}

#[test]
fn segment_past_image_end_or_below_user_min() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].vaddr = abi::layout::IMAGE_END - 0x1000)));
    assert!(matches!(e, ImageError::SegmentPastImageEnd { index: DATA, .. }), "{e}");
    assert!(e.to_string().contains("reaches past the end of the image region"));
    // Ending exactly at IMAGE_END is fine.
    let image = parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs[DATA].vaddr = abi::layout::IMAGE_END - 0x3000;
        s.phdrs[TLS].vaddr = abi::layout::IMAGE_END - 0x3000;
    }))
    .unwrap();
    assert_eq!(image.vaddr_range().end, abi::layout::IMAGE_END);

    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[TEXT].vaddr = 0x1000)));
    assert_eq!(e, ImageError::SegmentTooLow { index: TEXT, vaddr: 0x1000 });
}

#[test]
fn segment_wrapping_around() {
    for (vaddr, memsz) in
        [(0xffff_ffff_ffff_f000, 0x2000), (0xffff_ffff_ffff_f001, 0xfff), (0xffff_ffff_ffff_e000, 0x1001), (0x20_5000, u64::MAX)]
    {
        let e = err(parse_spec(ElfSpec::valid().with(|s| {
            s.phdrs[DATA].vaddr = vaddr;
            s.phdrs[DATA].memsz = memsz;
        })));
        assert_eq!(e, ImageError::SegmentWraps { index: DATA, vaddr, mem_size: memsz }, "{e}");
    }
}

#[test]
fn absurd_memsz() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].memsz = 2 << 30)));
    assert!(matches!(e, ImageError::SegmentPastImageEnd { .. }), "{e}");
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].memsz = 300 << 20)));
    assert!(matches!(e, ImageError::SegmentsTooLarge { .. }), "{e}");
    // Two segments of 150 MiB each.
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs[RODATA].memsz = 150 << 20;
        s.phdrs[DATA].vaddr = 0x0a00_5000;
        s.phdrs[DATA].memsz = 150 << 20;
        s.phdrs[TLS].vaddr = 0x0a00_5000;
    })));
    assert_eq!(e, ImageError::SegmentsTooLarge { total: 0x2000 + 2 * 0x960_0000 });
    assert!(e.to_string().ends_with("the limit is 256 MiB"));
}

#[test]
fn wrong_abi_or_hermit_notes() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.notes = abi_note(abi::ABI_VERSION))));
    assert_eq!(e, ImageError::MissingHermitNote);
    assert_eq!(e.to_string(), "image has no HERMIT entry-version note");

    let e = err(parse_spec(ElfSpec::valid().with(|s| s.notes = hermit_note())));
    assert_eq!(e, ImageError::MissingAbiNote);

    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.notes = hermit_note();
        s.notes.extend(abi_note(abi::ABI_VERSION - 1));
    })));
    assert_eq!(e, ImageError::AbiVersion(abi::ABI_VERSION - 1));
    assert_eq!(
        e.to_string(),
        format!("image was built for hypervisor ABI v{}; this hypervisor speaks v{}", abi::ABI_VERSION - 1, abi::ABI_VERSION)
    );

    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.notes = note(abi::note::HERMIT_NAME, abi::note::HERMIT_TYPE, &[3]);
        s.notes.extend(abi_note(abi::ABI_VERSION));
    })));
    assert_eq!(e, ImageError::HermitVersion(3));

    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.notes = hermit_note();
        s.notes.extend(note(abi::note::NAME, abi::note::TYPE, &[1, 0, 0, 0, 0, 0, 0, 0]));
    })));
    assert_eq!(e, ImageError::NoteDescSize { note: "HVABI", size: 8, expected: 4 });

    // Right name, wrong type, and right type, wrong name: not our notes.
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.notes = note(abi::note::HERMIT_NAME, 0x5a01, &[4]);
        s.notes.extend(note(b"HERMIX", abi::note::HERMIT_TYPE, &[4]));
        s.notes.extend(abi_note(abi::ABI_VERSION));
    })));
    assert_eq!(e, ImageError::MissingHermitNote);

    // No PT_NOTE at all.
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs.remove(NOTE);
    })));
    assert_eq!(e, ImageError::MissingHermitNote);
}

#[test]
fn notes_with_8_byte_alignment_and_in_two_segments() {
    // A PT_NOTE with p_align 8 pads names and descriptors to 8.
    let spec = ElfSpec::valid().with(|s| {
        s.phdrs[NOTE].align = 8;
        let mut n = Vec::new();
        n.extend_from_slice(&6u32.to_le_bytes()); // "HVABI\0"
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&abi::note::TYPE.to_le_bytes());
        n.extend_from_slice(b"HVABI\0\0\0\0\0\0\0"); // name padded from 12+6 to 24
        n.extend_from_slice(&abi::ABI_VERSION.to_le_bytes());
        n.extend_from_slice(&[0; 4]);
        s.notes = n;
        // The HERMIT note in a second PT_NOTE inside text.
        s.phdrs.push(ph(PT_NOTE, PF_R, 0x1800, 0x20_1800, 0, 0, 4));
    });
    let mut elf = spec.build();
    let hn = hermit_note();
    elf[0x1800..0x1800 + hn.len()].copy_from_slice(&hn);
    put(&mut elf, 64 + 56 * 5 + 32, hn.len() as u64, 8);
    assert!(parse_elf(&elf).is_ok());
}

#[test]
fn writable_and_executable_segment() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[DATA].flags = PF_R | PF_W | PF_X)));
    assert_eq!(e, ImageError::WritableAndExecutable { index: DATA });
    assert_eq!(e.to_string(), "segment 2 is both writable and executable");
}

#[test]
fn segments_sharing_a_page() {
    // rodata starts in text's last page.
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs[RODATA].vaddr = 0x20_2000;
    })));
    assert_eq!(e, ImageError::SegmentsSharePage { first: TEXT, second: RODATA });
    assert_eq!(e.to_string(), "segments 0 and 1 share a page");
    // Fully overlapping, listed in reverse order.
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs[TEXT].vaddr = 0x20_5000;
        s.phdrs[TEXT].flags = PF_R;
        s.entry = 0x20_5000;
    })));
    assert_eq!(e, ImageError::SegmentsSharePage { first: TEXT, second: DATA });
    // Adjacent pages are fine.
    assert!(parse_spec(ElfSpec::valid().with(|s| s.phdrs[RODATA].vaddr = 0x20_4000)).is_ok());
}

#[test]
fn misaligned_segment() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[RODATA].vaddr = 0x20_3800)));
    assert_eq!(e, ImageError::SegmentMisaligned { index: RODATA, vaddr: 0x20_3800, offset: 0x3000 });
    // With p_align below a page the congruence is not required.
    assert!(
        parse_spec(ElfSpec::valid().with(|s| {
            s.phdrs[RODATA].vaddr = 0x20_3800;
            s.phdrs[RODATA].align = 16;
        }))
        .is_ok()
    );
}

#[test]
fn entry_outside_an_executable_segment() {
    for entry in [0, 0x20_3000, 0x20_1000 + 0x1234, 0x20_0fff, u64::MAX] {
        let e = err(parse_spec(ElfSpec::valid().with(|s| s.entry = entry)));
        assert_eq!(e, ImageError::EntryNotExecutable { entry });
    }
    assert!(parse_spec(ElfSpec::valid().with(|s| s.entry = 0x20_1000 + 0x1233)).is_ok());
}

#[test]
fn no_load_segment() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        for p in &mut s.phdrs {
            if p.p_type == PT_LOAD {
                p.p_type = 0x6474_e551; // PT_GNU_STACK
            }
        }
    })));
    assert_eq!(e, ImageError::NoLoadSegment);
}

#[test]
fn tls_checks() {
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[TLS].vaddr = 0x20_4000)));
    assert_eq!(e, ImageError::TlsOutsideSegment { start: 0x20_4000, end: 0x20_4010 });
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[TLS].vaddr = 0x20_7100 - 8)));
    assert!(matches!(e, ImageError::TlsOutsideSegment { .. }), "{e}");
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs[TLS].align = 3)));
    assert_eq!(e, ImageError::TlsAlign(3));
    let e = err(parse_spec(ElfSpec::valid().with(|s| s.phdrs.push(s.phdrs[TLS].clone()))));
    assert_eq!(e, ImageError::MultipleTls);
    let e = err(parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs[TLS].vaddr = u64::MAX - 4;
        s.phdrs[TLS].filesz = 0x10;
    })));
    assert!(matches!(e, ImageError::TlsOutsideSegment { .. }), "{e}");
    // .tbss may reach past the segment; .tdata may not.
    let image = parse_spec(ElfSpec::valid().with(|s| {
        s.phdrs[TLS].vaddr = 0x20_70f0;
        s.phdrs[TLS].memsz = 0x1000;
    }))
    .unwrap();
    assert_eq!(image.tls.unwrap().start, 0x20_70f0);
    // No PT_TLS at all.
    assert_eq!(
        parse_spec(ElfSpec::valid().with(|s| {
            s.phdrs.remove(TLS);
        }))
        .unwrap()
        .tls,
        None
    );
}

#[test]
fn display_is_one_line_without_trailing_period() {
    let errors = [
        ImageError::GzipHeader("truncated"),
        ImageError::GzipCorrupt,
        ImageError::GzipChecksum,
        ImageError::GzipTooLarge { declared: 1 << 30 },
        ImageError::GzipLongerThanDeclared { declared: 0 },
        ImageError::OutOfMemory { needed: 2, available: 1 },
        ImageError::OutOfMemory { needed: 1, available: 2 },
        ImageError::TarCorrupt { offset: 0x400, reason: "checksum does not match" },
        ImageError::ConfigTooLarge { size: 1 },
        ImageError::ConfigNotUtf8,
        ImageError::Config("line 1: x".into()),
        ImageError::KernelMissing("a'\nb".into()),
        ImageError::ElfTooShort { size: 3 },
        ImageError::NotElf,
        ImageError::NoLoadSegment,
        ImageError::SegmentPastFileEnd { index: 1, offset: 2, size: 3, file_size: 4 },
        ImageError::SegmentWraps { index: 1, vaddr: 2, mem_size: 3 },
        ImageError::SegmentsTooLarge { total: 1 << 31 },
        ImageError::EntryNotExecutable { entry: 0x1000 },
        ImageError::NoteTruncated { index: 3, offset: 0x3000 },
        ImageError::NoteDescSize { note: "HERMIT", size: 2, expected: 1 },
        ImageError::MissingAbiNote,
        ImageError::HermitVersion(3),
    ];
    for e in errors {
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.ends_with('.') && !s.is_empty(), "{s:?}");
    }
}

// ---------------------------------------------------------------------------
// Mutation test
// ---------------------------------------------------------------------------

/// Exercises a parsed image's accessors (bounded, so huge bss stays cheap).
fn touch(image: &Image) {
    let _ = image.mapped_bytes();
    let _ = image.vaddr_range();
    let mut page = [0u8; 4096];
    for seg in &image.segments {
        let pages = seg.pages();
        for addr in pages.clone().step_by(4096).take(4).chain([pages.end.saturating_sub(4096)]) {
            assert!(image.fill_page(addr, &mut page));
        }
    }
}

/// Overwrites a few bytes of `buf`, preferring the interesting ranges `hot`.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, hot: &[Range<usize>]) {
    for _ in 0..1 + rng.below(6) {
        if buf.is_empty() {
            return;
        }
        let at = if rng.below(4) != 0 && !hot.is_empty() {
            let r = &hot[rng.below(hot.len())];
            (r.start + rng.below(r.len())).min(buf.len() - 1)
        } else {
            rng.below(buf.len())
        };
        match rng.below(6) {
            0 => buf[at] ^= 1 << rng.below(8),
            1 => buf[at] = rng.next() as u8,
            2 => buf[at] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)],
            3 => {
                // A whole random or extreme 8-byte field.
                let v = [rng.next(), u64::MAX, 0, 1 << 63, 0xffff_8000_0000_0000, 0x1000][rng.below(6)];
                let at = at & !7;
                for (i, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = buf.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            4 => {
                let v = [u32::MAX, 0, 4, 0x1000, rng.next() as u32][rng.below(5)];
                let at = at & !3;
                for (i, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = buf.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            _ => buf.truncate(rng.below(buf.len() + 1)),
        }
    }
}

#[test]
fn mutations_never_panic() {
    let spec = ElfSpec::valid();
    let elf = spec.build();
    let archive = image(&elf);
    let elf_at = archive.windows(4).position(|w| w == b"\x7fELF").unwrap();
    let note_off = spec.phdrs[NOTE].offset as usize;
    let elf_hot = [0..64 + 56 * 5, note_off..note_off + spec.notes.len()];
    let tar_hot = [0..512, elf_at - 512..elf_at, 512..512 + TOML.len()];

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ok = 0;
    for i in 0..20_000 {
        let result = if i % 2 == 0 {
            // Mutate the ELF and wrap it in a well-formed tar.
            let mut e = elf.clone();
            mutate(&mut rng, &mut e, &elf_hot);
            parse_elf(&e)
        } else {
            let mut a = archive.clone();
            let mut hot: Vec<Range<usize>> = tar_hot.to_vec();
            hot.extend(elf_hot.iter().map(|r| r.start + elf_at..r.end + elf_at));
            mutate(&mut rng, &mut a, &hot);
            Image::parse(&a)
        };
        if let Ok(image) = result {
            touch(&image);
            ok += 1;
        }
    }
    // Some mutations land on bytes that do not matter.
    assert!(ok > 100, "only {ok} mutants parsed");

    // A few thousand rounds on the gzip form, including its header and trailer.
    let gz = gzip(&archive, FEXTRA | FNAME | FCOMMENT | FHCRC);
    let n = gz.len();
    let gz_hot = [0..40, n - 8..n, 40..200];
    for i in 0..2_000 {
        let mut g = gz.clone();
        mutate(&mut rng, &mut g, &gz_hot);
        // Every other round within a budget around the archive's size.
        let result = if i % 2 == 0 { Image::parse(&g) } else { Image::parse_within(&g, archive.len() - 2048 + rng.below(4096)) };
        if let Ok(image) = result {
            touch(&image);
        }
    }
}

#[test]
fn mutated_hermit_toml_never_panics() {
    let elf = ElfSpec::valid().build();
    let mut rng = Rng(42);
    let toml = TOML.as_bytes();
    for _ in 0..3_000 {
        let mut t = toml.to_vec();
        mutate(&mut rng, &mut t, core::slice::from_ref(&(0..toml.len())));
        let _ = Image::parse(&tar(&[("hermit.toml", &t), ("hello", &elf)]));
    }
}
