//! The run loop: load the bundle's images, start the manifest's guests and
//! run them round-robin until none is left.
//!
//! Console lines (documented in README.md):
//! `[hv] image NAME rejected: REASON`, `[hv] guest NAME started`,
//! `[hv] guest NAME exited with code N`, `[hv] guest NAME stopped: REASON`,
//! `[hv] guest NAME not started: REASON`, and guests' own output as
//! `NAME| TEXT`.

use crate::arch::x86_64::{cpu, entry, paging::DirectMem, paging::phys_to_virt};
use crate::println;
use abi::bundle::{Bundle, FLAG_EXIT_WHEN_IDLE};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hermit_entry::boot_info::{BootInfo, HardwareInfo, LoadInfo, PlatformInfo, RawBootInfo};
use hypervisor::guest::{Guest, LoadedImage, Step};
use hypervisor::image::Image;

const _: () = assert!(core::mem::size_of::<RawBootInfo>() as u64 <= abi::layout::START_INFO_OFFSET);

fn sizes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) }
}

pub fn run(mut mem: DirectMem, kernel_root: u64, bundle: &[u8]) -> ! {
    let bundle = match Bundle::parse(bundle) {
        Ok(b) => b,
        Err(e) => panic!("bad bundle: {e}"),
    };

    let mut images: Vec<Result<LoadedImage, String>> = Vec::new();
    for img in bundle.images() {
        let loaded = match Image::parse(img.data) {
            Ok(parsed) => LoadedImage::load(&mut mem, img.name, &parsed).ok_or_else(|| String::from("the machine is out of memory")),
            Err(e) => Err(format!("{e}")),
        };
        match &loaded {
            Ok(l) => println!(
                "[hv] image {} loaded: entry {:#x}, {} shared, {} private per guest",
                img.name,
                l.entry,
                sizes(l.shared_bytes()),
                sizes(l.private_bytes())
            ),
            Err(why) => println!("[hv] image {} rejected: {why}", img.name),
        }
        images.push(loaded);
    }

    let mut guests: Vec<Option<Guest>> = Vec::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let (mut exited, mut stopped, mut not_started) = (0u32, 0u32, 0u32);
    for entry in bundle.guests() {
        let image = &images[entry.image as usize];
        let manifest_args: Vec<&str> = entry.args().collect();
        for i in 0..entry.count {
            let name = format!("{}-{i}", entry.name);
            let image = match image {
                Ok(img) => img,
                Err(_) => {
                    println!("[hv] guest {name} not started: its image was rejected");
                    not_started += 1;
                    continue;
                }
            };
            let args: Vec<&str> =
                if manifest_args.is_empty() { image.app_args.iter().map(String::as_str).collect() } else { manifest_args.clone() };
            let created = Guest::create(&mut mem, kernel_root, image, &name, &args, entry.memory, |_, page| {
                write_boot_info(page, image, entry.memory)
            });
            match created {
                Ok(g) => {
                    println!("[hv] guest {name} started (image {}, memory {})", image.name, sizes(entry.memory));
                    queue.push_back(guests.len());
                    guests.push(Some(g));
                }
                Err(e) => {
                    println!("[hv] guest {name} not started: {e}");
                    not_started += 1;
                }
            }
        }
    }

    let mut out = |line: &str| println!("{line}");
    while let Some(id) = queue.pop_front() {
        let Some(g) = guests[id].as_mut() else { continue };
        // SAFETY: the guest's PML4 maps the hypervisor's half like every
        // other address space (copied from the kernel root at creation).
        unsafe { cpu::write_cr3(g.memory.space.root()) };
        let step = loop {
            entry::run(&mut g.regs, &mut g.fpu, g.via_sysret);
            match g.handle_exit(&mut mem, &mut out) {
                Step::Resume => continue,
                other => break other,
            }
        };
        match step {
            Step::Resume | Step::Yield => {
                queue.push_back(id);
                continue;
            }
            Step::Exited(code) => {
                g.flush_console(&mut out);
                println!("[hv] guest {} exited with code {code}", g.name);
                exited += 1;
            }
            Step::Stopped(why) => {
                g.flush_console(&mut out);
                println!("[hv] guest {} stopped: {why}", g.name);
                stopped += 1;
            }
        }
        // SAFETY: back to the hypervisor's own tables before the guest's
        // are freed.
        unsafe { cpu::write_cr3(kernel_root) };
        if let Some(g) = guests[id].take() {
            g.destroy(&mut mem);
        }
    }

    for img in images.into_iter().flatten() {
        img.unload(&mut mem);
    }
    println!(
        "[hv] no guests left: {exited} exited, {stopped} stopped, {not_started} not started; {} KiB free",
        mem.frames.free_frames() as u64 * 4
    );
    if bundle.flags & FLAG_EXIT_WHEN_IDLE != 0 {
        cpu::debug_exit(abi::debug_exit::SUCCESS);
    }
    println!("[hv] idle; halting");
    cpu::halt_forever()
}

/// Puts hermit-entry's `RawBootInfo` at the start of the guest's start page.
fn write_boot_info(page: u64, image: &LoadedImage, memory: u64) {
    let info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: abi::layout::HEAP_START..abi::layout::HEAP_START + memory,
            serial_port_base: None,
            device_tree: None,
        },
        load_info: LoadInfo { kernel_image_addr_range: image.vaddr_range.clone(), tls_info: None },
        platform_info: PlatformInfo::Uhyve {
            has_pci: false,
            num_cpus: core::num::NonZeroU64::MIN,
            cpu_freq: None,
            boot_time: time::OffsetDateTime::UNIX_EPOCH,
        },
    };
    let raw = RawBootInfo::from(info);
    // SAFETY: `page` is a fresh frame of the guest's start page, direct-
    // mapped and not yet visible to the guest; RawBootInfo fits before
    // START_INFO_OFFSET (checked at compile time above).
    unsafe { core::ptr::write_unaligned(phys_to_virt(page) as *mut RawBootInfo, raw) };
}

