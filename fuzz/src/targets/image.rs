//! Image validation and loading: `Image::parse`, then `LoadedImage::load`
//! and `Guest::create` over simulated memory.
//!
//! The first byte picks how the rest becomes an image file, so that the
//! fuzzer reaches the ELF and `hermit.toml` readers without having to
//! forge tar and gzip checksums:
//! - `0`: the rest is the file;
//! - `1`: `[toml_len: u16][hermit.toml][kernel ELF]`, wrapped in a valid tar;
//! - `2`: the same, tar'd and gzip'd (valid CRC);
//! - `3`: the rest gzip'd (a fuzzed archive behind a valid gzip layer).

use std::borrow::Cow;

use abi::layout::{IMAGE_END, PAGE_SIZE, USER_MIN};
use hypervisor::guest::{Guest, LoadedImage};
use hypervisor::image::{Image, MAX_MAPPED_BYTES, Perms};
use hypervisor::mm::PhysMem;

use crate::images::{self, FCOMMENT, FEXTRA, FHCRC, FNAME};
use crate::input::Input;
use crate::mem::FuzzMem;

/// Frames the simulated machine has: bigger images exercise the
/// out-of-memory paths of loading and creation.
const MACHINE_FRAMES: usize = 96;

pub fn image(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let file: Cow<'_, [u8]> = match mode % 4 {
        0 => Cow::Borrowed(rest),
        1 => Cow::Owned(structured(rest)),
        2 => Cow::Owned(images::gzip(&structured(rest), (mode >> 2) & 0x1e, 1)),
        _ => Cow::Owned(images::gzip(rest, 0, 1)),
    };
    check(&file, mode);
}

/// `[toml_len: u16][toml][elf]` as a valid image archive.
fn structured(rest: &[u8]) -> Vec<u8> {
    let mut inp = Input::new(rest);
    let toml_len = inp.u16() as usize;
    let toml = inp.bytes(toml_len);
    images::hermit_tar(toml, inp.rest())
}

fn check(file: &[u8], knobs: u8) {
    let Ok(img) = Image::parse(file) else { return };

    // The load plan keeps every promise the loader relies on.
    assert!(!img.segments.is_empty(), "an image without segments was accepted");
    for s in &img.segments {
        let pages = s.pages();
        assert!(s.mem_size >= 1 && s.file_size <= s.mem_size, "{s:?}");
        assert!(s.vaddr >= USER_MIN && pages.start >= USER_MIN && pages.end <= IMAGE_END, "segment outside the image region: {s:?}");
        assert!(!s.perms.contains(Perms::WRITE | Perms::EXECUTE), "W+X segment accepted: {s:?}");
        let end = s.file_offset.checked_add(s.file_size).expect("file range wraps");
        assert!(end <= img.elf.len() as u64, "segment file range past the ELF: {s:?}");
    }
    for w in img.segments.windows(2) {
        assert!(w[0].pages().end <= w[1].pages().start, "segments overlap or share a page: {:?}", w);
    }
    assert!(
        img.segments.iter().any(|s| s.perms.contains(Perms::EXECUTE) && s.contains(img.entry)),
        "entry {:#x} is not in an executable segment",
        img.entry
    );
    assert!(img.mapped_bytes() <= MAX_MAPPED_BYTES);
    if let Some(tls) = img.tls {
        assert!(tls.align == 0 || tls.align.is_power_of_two(), "{tls:?}");
        assert!(tls.filesz == 0 || img.segments.iter().any(|s| s.contains(tls.start)), "TLS outside the segments: {tls:?}");
    }

    // Load it into a small machine; nothing may leak whether it fits or not.
    let mut mem = FuzzMem::new(MACHINE_FRAMES);
    let kernel_root = mem.alloc().unwrap();
    let time_page = mem.alloc().unwrap();
    let base = mem.live;
    let page_count: u64 = img.segments.iter().map(|s| (s.pages().end - s.pages().start) / PAGE_SIZE).sum();
    let Some(loaded) = LoadedImage::load(&mut mem, "fuzz.hermit", &img) else {
        assert_eq!(mem.live, base, "a failed load leaked frames");
        assert!(page_count > (MACHINE_FRAMES - base) as u64, "load failed with room to spare");
        return;
    };
    assert_eq!(loaded.pages.len() as u64, page_count);
    assert_eq!(loaded.entry, img.entry);
    let mut want = [0u8; PAGE_SIZE as usize];
    let mut got = [0u8; PAGE_SIZE as usize];
    for p in &loaded.pages {
        assert!(img.fill_page(p.vaddr, &mut want), "loaded page {:#x} outside the image", p.vaddr);
        mem.read(p.frame, 0, &mut got);
        assert!(want == got, "page {:#x} loaded wrong", p.vaddr);
    }
    let with_image = mem.live;

    // An instance with the image's own arguments and a fuzz-chosen limit.
    let limit = [64 << 10, 128 << 10, 256 << 10, 1 << 20][(knobs >> 6) as usize];
    let args: Vec<&str> = img.app_args.iter().map(String::as_str).collect();
    if let Ok(mut g) =
        Guest::create(&mut mem, kernel_root, time_page, &loaded, "fuzz-0", &args, &[], limit, abi::layout::heap_start(0), |_, _| {})
    {
        assert!(g.memory.charged_bytes() <= limit, "creation charged beyond the limit");
        let mut b = [0u8; 1];
        assert!(g.memory.read(&mut mem, img.entry, &mut b).is_ok(), "entry point not readable");
        let text = loaded.pages.iter().find(|p| !p.writable).map(|p| p.vaddr);
        if let Some(va) = text {
            assert!(g.memory.write(&mut mem, va, &[0]).is_err(), "a shared page is writable");
        }
        let live = mem.live;
        let freed = g.destroy(&mut mem);
        assert_eq!(mem.live, live - freed);
    }
    assert_eq!(mem.live, with_image, "creating and destroying a guest leaked frames");
    loaded.unload(&mut mem);
    assert_eq!(mem.live, base, "unloading the image leaked frames");
}

pub fn seeds() -> Vec<Vec<u8>> {
    let elf = images::small_elf();
    let toml = images::hermit_toml("hello", &["--port", "8080", "héllo"]);
    let no_args = images::hermit_toml("hello", &[]);
    let tar = images::hermit_tar(toml.as_bytes(), &elf);
    let with = |mode: u8, body: &[u8]| [&[mode][..], body].concat();
    let structured = |toml: &str| [&(toml.len() as u16).to_le_bytes()[..], toml.as_bytes(), &elf].concat();

    let mut seeds = vec![
        with(0, &tar),
        with(0, &images::gzip(&tar, 0, 6)),
        with(0, &images::gzip(&tar, FHCRC | FEXTRA | FNAME | FCOMMENT, 9)),
        with(1, &structured(&toml)),
        with(1 | 0x40, &structured(&no_args)),
        with(1 | 0x80, &structured(&toml)),
        with(2 | (FNAME << 2), &structured(&toml)),
        with(3, &tar),
    ];
    // A pax path record and a GNU long name in front of the kernel.
    let mut pax = Vec::new();
    images::tar_push(&mut pax, b"hermit.toml", b'0', toml.as_bytes());
    images::tar_push(&mut pax, b"PaxHeaders/hello", b'x', b"14 path=hello\n");
    images::tar_push(&mut pax, b"ignored", b'0', &elf);
    pax.extend_from_slice(&[0; 1024]);
    seeds.push(with(0, &pax));
    let mut gnu = Vec::new();
    images::tar_push(&mut gnu, b"././@LongLink", b'L', b"hello\0");
    images::tar_push(&mut gnu, b"ignored", b'0', &elf);
    images::tar_push(&mut gnu, b"./hermit.toml", b'0', toml.as_bytes());
    gnu.extend_from_slice(&[0; 1024]);
    seeds.push(with(0, &gnu));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_images_are_valid() {
        for (i, seed) in seeds().iter().enumerate() {
            let file: Vec<u8> = match seed[0] % 4 {
                0 => seed[1..].to_vec(),
                1 => structured(&seed[1..]),
                2 => images::gzip(&structured(&seed[1..]), (seed[0] >> 2) & 0x1e, 1),
                _ => images::gzip(&seed[1..], 0, 1),
            };
            let img = Image::parse(&file).unwrap_or_else(|e| panic!("seed {i}: {e}"));
            assert_eq!(img.entry, images::ENTRY);
            assert_eq!(img.segments.len(), 3);
        }
    }
}
