//! The control channel's handling, not only its parsing: fuzz-chosen bytes
//! and well-formed requests with fuzz-chosen numbers go through
//! `control::Session` to a host with the hypervisor's real state behind
//! it: uploaded images are validated and loaded by `Image::parse_within` and
//! `LoadedImage::load`, guests are created by `Guest::create` and
//! destroyed on `stop`, all over simulated memory of bounded size.
//!
//! Invariants: no panic; every answer is one line holding one
//! `abi::control::Response` (the typed answer reads back from its JSON);
//! an upload holds at most what the host said it had room for; stopping
//! every guest and unloading every image gives every frame back.

use std::cell::RefCell;

use abi::control::{GuestEvent, ImageInfo, Refusal, Request, Response, StartOptions, Tenant, TenantRow};
use abi::report::{GuestRow, GuestState, GuestStats, MachineStats};
use hypervisor::control::{ControlHost, STALL_NS, Session};
use hypervisor::guest::{Guest, LoadedImage};
use hypervisor::image::Image;
use hypervisor::mm::PhysMem;

use crate::images;
use crate::input::Input;
use crate::mem::FuzzMem;

/// Bytes an upload may take (the hypervisor says what its heap has left).
const ROOM: usize = 64 << 10;
/// What parsing an upload may use (hermit.toml's parse is charged 2 KiB a
/// byte, so even the smallest image wants a few hundred KiB).
const PARSE_BUDGET: usize = 1 << 20;
/// Frames of the simulated machine.
const FRAMES: usize = 512;
/// Most operations per input.
const MAX_OPS: usize = 64;

struct State {
    mem: FuzzMem,
    kernel_root: u64,
    time_page: u64,
    images: Vec<(String, [u8; 32], LoadedImage)>,
    guests: Vec<(String, Guest)>,
    /// Named tenants, by number.
    tenants: Vec<String>,
    /// The guests paused (`pause`), which `clone` may copy.
    paused: Vec<String>,
    /// The last snapshot taken (`snapshot`), which a restore op uploads.
    snapshot: Option<Vec<u8>>,
}

fn digest_string(d: &[u8; 32]) -> String {
    let mut s = String::from("sha256:");
    let _ = abi::control::write_hex(&mut s, d);
    s
}

struct FuzzHost(RefCell<State>);

impl ControlHost for FuzzHost {
    fn upload_room(&self) -> usize {
        ROOM
    }
    fn image_slot_free(&self) -> bool {
        self.0.borrow().images.len() < 4
    }
    fn images(&self) -> Vec<ImageInfo> {
        let info =
            |(n, d, _): &(String, [u8; 32], LoadedImage)| ImageInfo { name: n.clone(), digest: digest_string(d), bytes: 0, guests: 0 };
        self.0.borrow().images.iter().map(info).collect()
    }
    fn add_image(&self, name: &str, data: &[u8]) -> Result<(String, String), String> {
        let d = hypervisor::machine::digest(data);
        if let Some((n, d, _)) = self.0.borrow().images.iter().find(|(_, x, _)| *x == d) {
            return Ok((n.clone(), digest_string(d)));
        }
        let parsed = Image::parse_within(data, PARSE_BUDGET).map_err(|e| e.to_string())?;
        let st = &mut *self.0.borrow_mut();
        let loaded = LoadedImage::load(&mut st.mem, name, &parsed).ok_or("the machine is out of memory")?;
        st.images.push((name.into(), d, loaded));
        Ok((name.into(), digest_string(&d)))
    }
    fn remove_image(&self, which: &str) -> Result<String, Refusal> {
        let st = &mut *self.0.borrow_mut();
        let i = st
            .images
            .iter()
            .position(|(n, d, _)| n == which || digest_string(d) == which)
            .ok_or_else(|| Refusal::from(format!("no image {which}")))?;
        if !st.guests.is_empty() {
            return Err(Refusal::from(format!("image {which} may be in use")));
        }
        let (name, _, img) = st.images.remove(i);
        img.unload(&mut st.mem);
        Ok(name)
    }
    fn start(
        &self,
        _: usize,
        name: &str,
        image: &str,
        memory: u64,
        tenant: Tenant<'_>,
        _: &StartOptions,
        args: &[&str],
        env: &[&str],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), Refusal> {
        let st = &mut *self.0.borrow_mut();
        if st.guests.iter().any(|(n, _)| n == name) {
            return Err(Refusal::from(format!("a guest named {name} exists already")));
        }
        let machine = (FRAMES * 4096) as u64;
        if memory > machine {
            return Err(Refusal::from(format!("memory {memory} is more than the machine's {machine}")));
        }
        if let Tenant::Named(t) = tenant
            && !st.tenants.iter().any(|n| n == t)
        {
            if st.tenants.len() >= abi::MAX_TENANTS as usize {
                return Err(Refusal::from(format!("no tenant number left for {t}")));
            }
            st.tenants.push(t.into());
        }
        let img = st
            .images
            .iter()
            .find(|(n, d, _)| n == image || digest_string(d) == image)
            .map(|(_, _, i)| i)
            .ok_or_else(|| Refusal::from(format!("no image {image}")))?;
        let g =
            Guest::create(&mut st.mem, st.kernel_root, st.time_page, img, name, args, env, memory, abi::layout::heap_start(0), |_, _| {})
                .map_err(|e| Refusal::from(e.to_string()))?;
        st.guests.push((name.into(), g));
        Ok((None, None))
    }
    fn tenants(&self) -> Vec<TenantRow> {
        let row = |(i, n): (usize, &String)| TenantRow { name: Some(n.clone()), id: i as u32, guests: 0 };
        self.0.borrow().tenants.iter().enumerate().map(row).collect()
    }
    fn remove_tenant(&self, name: &str) -> Result<(), Refusal> {
        let st = &mut *self.0.borrow_mut();
        let i = st.tenants.iter().position(|n| n == name).ok_or_else(|| Refusal::from(format!("no tenant {name}")))?;
        st.tenants.remove(i);
        Ok(())
    }
    fn remove_guest(&self, name: &str) -> Result<(), Refusal> {
        // Its guests are live until stopped, which forgets them.
        match self.0.borrow().guests.iter().any(|(n, _)| n == name) {
            true => Err(format!("guest {name} has not ended (stop it first)").into()),
            false => Err(format!("no guest {name}").into()),
        }
    }
    fn wait(&self, client: usize, name: &str) -> Result<Option<GuestEvent>, Refusal> {
        self.watch_console(client, name).map(|()| None)
    }
    fn watch_events(&self, _: usize) {}
    fn watch_console(&self, _: usize, name: &str) -> Result<(), Refusal> {
        match self.0.borrow().guests.iter().any(|(n, _)| n == name) {
            true => Ok(()),
            false => Err(format!("no guest {name}").into()),
        }
    }
    fn stop(&self, name: &str) -> Result<(), Refusal> {
        let st = &mut *self.0.borrow_mut();
        let i = st.guests.iter().position(|(n, _)| n == name).ok_or_else(|| Refusal::from(format!("no guest {name}")))?;
        let (_, g) = st.guests.remove(i);
        g.destroy(&mut st.mem);
        st.paused.retain(|n| n != name);
        Ok(())
    }
    fn pause(&self, name: &str) -> Result<(), Refusal> {
        let st = &mut *self.0.borrow_mut();
        if !st.guests.iter().any(|(n, _)| n == name) {
            return Err(Refusal::from(format!("no guest {name}")));
        }
        if !st.paused.iter().any(|n| n == name) {
            st.paused.push(name.into());
        }
        Ok(())
    }
    fn resume(&self, name: &str) -> Result<(), Refusal> {
        let st = &mut *self.0.borrow_mut();
        let i = st.paused.iter().position(|n| n == name).ok_or_else(|| Refusal::from(format!("guest {name} is not paused")))?;
        st.paused.remove(i);
        Ok(())
    }
    fn clone_guest(
        &self,
        template: &str,
        name: &str,
        numbered: Option<(u32, u32)>,
        args: Option<&[&str]>,
    ) -> Result<hypervisor::control::Cloned, Refusal> {
        let st = &mut *self.0.borrow_mut();
        if !st.paused.iter().any(|n| n == template) {
            return Err(Refusal::from(format!("guest {template} is not paused")));
        }
        let mut made = hypervisor::control::Cloned::default();
        // Bounded: every clone costs the fuzzer a page walk.
        let (at, count) = numbered.unwrap_or((0, 1));
        for i in at..at + count.min(4) {
            let nm = if numbered.is_some() { format!("{name}-{i}") } else { name.into() };
            if st.guests.iter().any(|(n, _)| *n == nm) {
                made.error = Some(format!("a guest named {nm} exists already"));
                break;
            }
            let State { mem, kernel_root, guests, .. } = st;
            let Some(t) = guests.iter_mut().find(|(n, _)| n == template).map(|(_, g)| g) else { break };
            let clone = t
                .clone_base(mem, args)
                .and_then(|base| Guest::clone_from(t, &base, mem, *kernel_root, &nm, abi::layout::heap_start(0), |_, _| {}));
            match clone {
                Ok(g) => {
                    guests.push((nm.clone(), g));
                    if made.count == 0 {
                        made.first = nm;
                    }
                    made.count += 1;
                }
                Err(e) => {
                    made.error = Some(e.to_string());
                    break;
                }
            }
        }
        if made.count == 0 {
            return Err(Refusal::from(made.error.unwrap_or_default()));
        }
        Ok(made)
    }
    fn list(&self) -> Result<Vec<GuestRow>, Refusal> {
        let row = |(n, g): &(String, Guest)| GuestRow {
            name: n.clone(),
            tenant: None,
            state: GuestState::Waiting,
            cpu_ns: 0,
            memory_bytes: g.memory.charged_bytes(),
            sent_frames: 0,
            received_frames: 0,
        };
        Ok(self.0.borrow().guests.iter().map(row).collect())
    }
    fn stats(&self) -> Result<(Vec<GuestStats>, MachineStats), Refusal> {
        let st = self.0.borrow();
        let guests = st
            .guests
            .iter()
            .map(|(n, g)| GuestStats { guest: n.clone(), memory_bytes: g.memory.charged_bytes(), ..Default::default() })
            .collect();
        Ok((guests, MachineStats { live: st.guests.len() as u64, total_bytes: (FRAMES * 4096) as u64, ..Default::default() }))
    }
    fn snapshot(&self, name: &str) -> Result<(Vec<u8>, String), Refusal> {
        let st = &mut *self.0.borrow_mut();
        if !st.paused.iter().any(|n| n == name) {
            return Err(Refusal::from(format!("guest {name} is not paused")));
        }
        let State { mem, guests, images, snapshot, .. } = st;
        let Some(g) = guests.iter_mut().find(|(n, _)| n == name).map(|(_, g)| g) else {
            return Err(Refusal::from(format!("no guest {name}")));
        };
        // The fuzz host's guests all run its first image.
        let (_, digest, img) = images.first().ok_or_else(|| Refusal::from(String::from("its image is gone")))?;
        let data = g.snapshot(mem, img, *digest, &abi::bundle::Settings::default(), 0, PARSE_BUDGET).map_err(Refusal::from)?;
        abi::snapshot::Snapshot::parse(&data).unwrap_or_else(|e| panic!("a snapshot the hypervisor wrote does not parse: {e}"));
        *snapshot = Some(data.clone());
        let sum = digest_string(&hypervisor::machine::digest(&data));
        Ok((data, sum))
    }
    fn restore(
        &self,
        _: usize,
        name: &str,
        _: Option<Tenant<'_>>,
        args: Option<&[&str]>,
        data: &[u8],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), String> {
        let snap = abi::snapshot::Snapshot::parse(data).map_err(|e| e.to_string())?;
        let st = &mut *self.0.borrow_mut();
        if st.guests.iter().any(|(n, _)| n == name) {
            return Err(format!("a guest named {name} exists already"));
        }
        if snap.state.settings.tenant != abi::bundle::TENANT_NONE {
            return Err(String::from("the fuzz host has no network"));
        }
        let State { mem, guests, images, kernel_root, time_page, .. } = st;
        let img = images.iter().find(|(_, d, _)| *d == snap.state.image_digest).map(|(_, _, i)| i).ok_or("its image is not loaded")?;
        let heap_start = abi::layout::heap_start(0);
        let g = Guest::restore(mem, *kernel_root, *time_page, img, &snap, name, args, heap_start, 0..0, 0, |_, _| {})?;
        guests.push((name.into(), g));
        Ok((None, None))
    }
    fn capture(&self, _: usize, what: &str, _count: u32, _secs: u32) -> Result<(), Refusal> {
        let st = self.0.borrow();
        match what.strip_prefix("tenant:") {
            Some(t) => t.parse::<u32>().map(|_| ()).map_err(|_| Refusal::from(format!("no tenant {t}"))),
            None if st.guests.iter().any(|(n, _)| n == what) => Ok(()),
            None => Err(format!("no guest or tenant {what}").into()),
        }
    }
}

/// A valid image for uploads: the image target's smallest seed, gzipped
/// (1.2 KB of hex: every uploaded byte costs the fuzzer two traced loops).
fn valid_image() -> Vec<u8> {
    images::gzip(&images::hermit_tar(images::hermit_toml("hello", &["a"]).as_bytes(), &images::small_elf()), 0, 9)
}

/// Uploads per input (each is a whole image's bytes to push).
const MAX_UPLOADS: usize = 2;

/// The valid image and its hex, made once.
static IMAGE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();

/// Each byte's two hex digits.
const HEX: [[u8; 2]; 256] = {
    let digits = *b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    t
};

const NAMES: &[&str] = &["a", "b", "x.hermit", "up", "g-0", ""];

fn name(inp: &mut Input<'_>) -> &'static str {
    NAMES[inp.below(NAMES.len())]
}

fn number(inp: &mut Input<'_>) -> String {
    match inp.u8() % 6 {
        0 => inp.u8().to_string(),
        1 => (inp.u32() as u64 * 4096).to_string(),
        2 => inp.u64().to_string(),
        3 => "99999999999999999999999".into(),
        4 => format!("-{}", inp.u8()),
        _ => String::from_utf8_lossy(inp.bytes(4)).into_owned(),
    }
}

pub fn control(data: &[u8]) {
    run(data);
}

/// Runs one input; returns every answer.
fn run(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut inp = Input::new(data);
    let mut mem = FuzzMem::new(FRAMES);
    let kernel_root = mem.alloc().unwrap();
    let time_page = mem.alloc().unwrap();
    let host = FuzzHost(RefCell::new(State {
        mem,
        kernel_root,
        time_page,
        images: Vec::new(),
        guests: Vec::new(),
        tenants: Vec::new(),
        paused: Vec::new(),
        snapshot: None,
    }));
    let (image, image_hex) = IMAGE.get_or_init(|| {
        let image = valid_image();
        let hex = image.iter().flat_map(|&b| HEX[usize::from(b)]).collect();
        (image, hex)
    });
    let mut session = Session::default();
    let mut now = 0u64;
    let mut uploads = 0;
    for op in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let mut bytes: Vec<u8> = Vec::new();
        match inp.u8() % 8 {
            // Raw bytes, anything at all.
            0 => {
                let n = inp.below(96);
                bytes.extend_from_slice(inp.bytes(n));
            }
            // A well-formed request with fuzz-chosen words and numbers.
            1..=3 => {
                let req = match inp.u8() % 20 {
                    19 => format!("snapshot {}", name(&mut inp)),
                    16 => format!("pause {}", name(&mut inp)),
                    17 => format!("resume {}", name(&mut inp)),
                    18 if inp.bool() => format!("clone {} {}", name(&mut inp), name(&mut inp)),
                    18 if inp.bool() => format!("clone {} {} -- x%20y {}", name(&mut inp), name(&mut inp), number(&mut inp)),
                    18 => format!("clone {} {} {}", name(&mut inp), name(&mut inp), number(&mut inp)),
                    0 => Request::List.to_string(),
                    1 => Request::Stats.to_string(),
                    2 => Request::Images.to_string(),
                    3 => Request::Stop(name(&mut inp)).to_string(),
                    4 => format!("start {} {} {} {}", name(&mut inp), name(&mut inp), number(&mut inp), number(&mut inp)),
                    5 => {
                        let (name, memory) = (name(&mut inp), [65536u64, 1 << 20, 4 << 20][inp.below(3)]);
                        let (tenant, options) = (Tenant::None, StartOptions::default());
                        let args = vec!["a".into(), "b".into()];
                        Request::Start { name, image: "x.hermit", memory, tenant, options, args, env: Vec::new() }.to_string()
                    }
                    10 => {
                        let (name, memory) = (name(&mut inp), [65536u64, 1 << 20, 4 << 20][inp.below(3)]);
                        let tenant = match inp.u8() % 3 {
                            0 => Tenant::None,
                            1 => Tenant::Number(inp.u8().into()),
                            _ => Tenant::Named(NAMES[inp.below(4)]),
                        };
                        let options = StartOptions {
                            weight: inp.bool().then(|| 1 + inp.below(10_000) as u32),
                            cap: inp.bool().then(|| 1 + inp.below(100) as u32),
                            ring_slots: inp.bool().then(|| 2 << inp.below(11)),
                            limits: [inp.bool().then(|| inp.u32().into()), None, None, inp.bool().then(|| inp.u32().into()), None],
                            watch: inp.bool(),
                        };
                        // Arguments and variables that need escaping (spaces,
                        // `%`, non-ASCII), and a `--` among the arguments.
                        let odd = ["", "x y", "100%", "ü\t", "=v"][inp.below(5)];
                        let args = vec!["a".into(), odd.into(), "--".into()];
                        let env = (0..inp.below(3)).map(|i| format!("K{i}={odd}").into()).collect();
                        Request::Start { name, image: "x.hermit", memory, tenant, options, args, env }.to_string()
                    }
                    11 => format!("image-remove {}", name(&mut inp)),
                    12 => Request::Tenants.to_string(),
                    13 if inp.bool() => format!("tenant-remove {}", name(&mut inp)),
                    13 => format!("remove {}", name(&mut inp)),
                    14 => format!("wait {}", name(&mut inp)),
                    15 if inp.bool() => Request::Events.to_string(),
                    15 => format!("console {}", name(&mut inp)),
                    6 => format!("capture {} {} {}", name(&mut inp), number(&mut inp), number(&mut inp)),
                    7 => format!("image-begin {} {}", name(&mut inp), number(&mut inp)),
                    8 => Request::Version.to_string(),
                    _ => Request::ImageEnd.to_string(),
                };
                bytes.extend_from_slice(req.as_bytes());
                bytes.push(if inp.u8() < 240 { b'\n' } else { b'\r' });
            }
            // The valid image uploaded, perhaps corrupted, cut or padded.
            4 if uploads < MAX_UPLOADS => {
                uploads += 1;
                let mut hex = image_hex.clone();
                if inp.bool() {
                    let at = inp.below(image.len());
                    let b = image[at] ^ (inp.u8() | 1);
                    hex[2 * at..2 * at + 2].copy_from_slice(&HEX[usize::from(b)]);
                }
                let len = if inp.u8() < 32 { inp.below(image.len() + 64) } else { image.len() };
                bytes.extend_from_slice(format!("image-begin x.hermit {len}\n").as_bytes());
                for chunk in hex.chunks(2 + 2 * inp.below(4096)) {
                    bytes.extend_from_slice(b"image-data ");
                    bytes.extend_from_slice(chunk);
                    bytes.push(b'\n');
                }
                if inp.u8() < 224 {
                    bytes.extend_from_slice(b"image-end\n");
                }
            }
            // The last snapshot restored, perhaps corrupted (and resealed,
            // so that the checks behind the digest are reached), cut or
            // padded.
            7 if inp.bool() && uploads < MAX_UPLOADS && host.0.borrow().snapshot.is_some() => {
                uploads += 1;
                let mut snap = host.0.borrow().snapshot.clone().unwrap_or_default();
                if inp.bool() {
                    let at = inp.below(snap.len());
                    snap[at] ^= inp.u8() | 1;
                    if inp.bool() {
                        snap = reseal(snap);
                    }
                }
                let len = if inp.u8() < 32 { inp.below(snap.len() + 64) } else { snap.len() };
                bytes.extend_from_slice(format!("restore-begin {} {len}\n", name(&mut inp)).as_bytes());
                for chunk in snap.chunks(1 + inp.below(4096)) {
                    bytes.extend_from_slice(b"image-data ");
                    chunk.iter().for_each(|&b| bytes.extend_from_slice(&HEX[usize::from(b)]));
                    bytes.push(b'\n');
                }
                bytes.extend_from_slice(b"restore-end\n");
            }
            // Time passes: a little, or past the stall deadline.
            5 => now += if inp.bool() { STALL_NS + 1 } else { inp.u32() as u64 },
            // A line end alone, or a very long line.
            6 => bytes.push(b'\n'),
            // Rarely (it is 8 KiB of bytes to push): a line too long.
            _ if inp.u8() < 8 => bytes.resize(hypervisor::control::LINE_MAX + inp.below(16), b'a'),
            _ => bytes.extend_from_slice(b"image-data 00\n"),
        }
        // In pieces as a transport hands them over: a UART's 16 bytes, a
        // virtio buffer's page, or all at once.
        let piece = [usize::MAX, 16, 4096][op % 3];
        let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(piece.min(bytes.len())).collect() };
        let mut check = |a: &str| {
            assert!(!a.contains('\n'), "an answer of more than one line: {a:?}");
            let typed: Response = serde_json::from_str(a).unwrap_or_else(|e| panic!("answer is not a Response ({e}): {a:?}"));
            assert_eq!(serde_json::to_string(&typed).unwrap(), a, "the answer does not print back the same");
            out.push(a.to_string());
        };
        for chunk in chunks {
            session.poll(&host, now, chunk, &mut check);
            // A snapshot goes out in as many looks as the client's room takes.
            session.pump([usize::MAX, 9000, 20_000][op % 3], now, &mut check);
        }
        assert!(session.held_bytes() <= ROOM, "an upload holds {} bytes, more than the {ROOM} offered", session.held_bytes());
    }
    // Everything goes back: guests stopped, images unloaded.
    let names: Vec<String> = host.0.borrow().guests.iter().map(|(n, _)| n.clone()).collect();
    for n in names {
        host.stop(&n).unwrap();
    }
    let mut st = host.0.into_inner();
    for (_, _, img) in st.images.drain(..) {
        img.unload(&mut st.mem);
    }
    assert_eq!(st.mem.live, 2, "frames leaked: {} live beyond the kernel root and time page", st.mem.live - 2);
    out
}

/// `snap` with its length and digest made right again.
fn reseal(mut snap: Vec<u8>) -> Vec<u8> {
    if snap.len() < 56 {
        return snap;
    }
    let len = snap.len() as u64;
    snap[16..24].copy_from_slice(&len.to_le_bytes());
    let body = snap.len() - 32;
    let d = hypervisor::machine::digest(&snap[..body]);
    snap[body..].copy_from_slice(&d);
    snap
}

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // Upload the image whole in 256-byte chunks; start "a" and "b" from it
        // (1 MiB each), list them, stop "a".
        // (op 4: no corruption, whole length, 256-byte chunks, image-end;
        // op 1 kind 5: start NAME x.hermit 1 MiB; kind 0: list; kind 3: stop)
        vec![4, 0, 255, 255, 0, 1, 5, 0, 1, 0, 1, 5, 1, 1, 0, 1, 0, 0, 1, 3, 0, 0],
        // An upload begun with a lying length, then silence past the deadline.
        vec![1, 7, 2, 1, 5, 1, 0, 0, 0, 0, 5, 1, 1, 0, 0],
        // Half a request, then silence.
        [&[0u8, 3][..], b"lis", &[5, 1, 1, 2, 0]].concat(),
        vec![7, 9, 6, 1, 4, 5, 0, 0, 0],
    ]
}

#[cfg(test)]
mod tests {
    /// The first seed reaches real guest creation (so mutations of it do).
    #[test]
    fn the_first_seed_uploads_starts_lists_and_stops() {
        let answers = super::run(&super::seeds()[0]);
        assert_eq!(answers[0], r#"{"receiving":"x.hermit"}"#, "{answers:?}");
        assert!(answers[1].starts_with(r#"{"image":"x.hermit","digest":"sha256:"#), "{answers:?}");
        assert!(answers.contains(&r#"{"started":"a","ip":null,"tenant":null}"#.to_string()), "{answers:?}");
        assert!(answers.contains(&r#"{"started":"b","ip":null,"tenant":null}"#.to_string()), "{answers:?}");
        assert!(answers.iter().any(|a| a.starts_with(r#"{"guests":[{"name":"a""#)), "{answers:?}");
        assert!(answers.contains(&r#"{"stopped":"a"}"#.to_string()), "{answers:?}");
    }
}
