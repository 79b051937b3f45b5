//! Making guests: loading images, creating guests from them (addresses,
//! vNIC, the boot record), and starting the bundle's guests at boot.
//!
//! Rules:
//! - Nothing a bundle or a control client asks for is trusted: a tenant
//!   number is bounded before anything is sized by it, an image is parsed
//!   within what the heap can spare, a guest is not created unless the
//!   heap keeps [`HEAP_HEADROOM`] free.
//! - A guest is published tables first, its scheduler last: once it can
//!   run, everything any CPU looks up about it is there.
//! - A guest that cannot be finished is destroyed whole (every frame it
//!   got, its ring pages too, goes back).
//! - Addresses: guest `id` of tenant `t` gets MAC `02:id(4 bytes):t` and
//!   the `n`th address of its tenant (`abi::guest_ipv4`). Addresses are
//!   never given twice (a peer's ARP cache never points a reused address
//!   at another guest); MACs are unique among the guests that exist.

use super::report::sizes;
use super::{GuestStatus, Machine, Network, Platform, WAITING};
use crate::guest::{Guest, LoadedImage};
use crate::image::Image;
use crate::machine::network::Attach;
use crate::mm::{FRAME_SIZE, PhysAddr, PhysMem, paging::Pte, user::Fault};
use crate::net::port::RingAllocError;
use abi::bundle::{Bundle, Settings, TENANT_NONE};
use abi::control::Reason::{NoRoom, NotFound};
use abi::control::Refusal;
use abi::time::TimeInfo;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use hermit_entry::boot_info::{BootInfo, HardwareInfo, LoadInfo, PlatformInfo, RawBootInfo};

const _: () = assert!(core::mem::size_of::<RawBootInfo>() as u64 <= abi::layout::START_INFO_OFFSET);

/// A guest is not started unless the hypervisor's heap keeps this much free
/// (its records, the switch, the schedulers grow with every guest).
pub const HEAP_HEADROOM: usize = 1 << 20;
/// Guest entries with more instances than this get progress lines instead
/// of one line per guest.
const QUIET_ABOVE: u32 = 100;

/// What creating guests needs to keep between them.
#[derive(Default)]
pub(super) struct Creating {
    /// Guests with a vNIC so far, per tenant (see abi::guest_ipv4).
    pub(super) next_host: Vec<u32>,
    /// Tenants' names, by number (the manifest's, and those `start` named).
    pub(super) names: Vec<Option<String>>,
    /// Ids given before and free again (their records were forgotten).
    pub(super) free: Vec<usize>,
    /// Ended guests whose records are kept, the longest ended first.
    pub(super) kept: VecDeque<usize>,
    /// Guests created so far.
    pub(super) created: u64,
}

/// An image the machine holds: loaded, or refused with the reason (a
/// bundle's refused image keeps its index, so its entries stay numbered),
/// or a free entry (`name` empty) an `image-remove` left.
pub struct ImageEntry {
    pub name: String,
    /// SHA-256 of the image file: `images` and `start` name it by this.
    pub digest: [u8; 32],
    /// The image file's size.
    pub bytes: u64,
    pub image: Result<LoadedImage, String>,
}

impl ImageEntry {
    /// Validates and loads the image file `data` (see [`load_image`]).
    pub fn load<P: Platform>(platform: &P, name: &str, data: &[u8]) -> Self {
        Self { name: name.into(), digest: digest(data), bytes: data.len() as u64, image: load_image(platform, name, data) }
    }

    /// `sha256:` and the digest in lowercase hex.
    pub fn digest_string(&self) -> String {
        digest_string(&self.digest)
    }

    /// A free entry.
    pub(super) fn free() -> Self {
        Self { name: String::new(), digest: [0; 32], bytes: 0, image: Err(String::new()) }
    }

    /// Whether `which` (a name or a `sha256:` digest) names this image.
    pub fn answers_to(&self, which: &str) -> bool {
        !self.is_free() && (self.name == which || self.digest_string() == which)
    }

    /// Whether `image-remove` left this entry for reuse.
    pub fn is_free(&self) -> bool {
        self.name.is_empty()
    }
}

/// `sha256:` and `digest` in lowercase hex: how images and snapshots are
/// named to clients.
pub fn digest_string(digest: &[u8; 32]) -> String {
    let mut s = String::from("sha256:");
    let _ = abi::control::write_hex(&mut s, digest);
    s
}

/// The SHA-256 of `data`.
pub fn digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// A guest just created.
pub(super) struct Created {
    pub id: usize,
    pub create_ns: u64,
    pub ip: Option<[u8; 4]>,
    /// For the `started` line: image, memory, address, tenant.
    pub describe: String,
}

/// Bytes an image may take while it is parsed: what the heap can spare
/// beside the guests' headroom.
pub(super) fn image_budget(heap_room: usize) -> usize {
    heap_room.saturating_sub(2 * HEAP_HEADROOM)
}

/// Validates and loads one image, saying so on the console.
///
/// Parsing may use what the hypervisor's heap can spare beside the guests'
/// headroom, and no more: a gzip bomb (from the bundle or an upload) is
/// refused by its declared size before anything that size is allocated.
pub fn load_image<P: Platform>(platform: &P, name: &str, data: &[u8]) -> Result<LoadedImage, String> {
    let loaded = match Image::parse_within(data, image_budget(platform.heap_room())) {
        Ok(parsed) => LoadedImage::load(&mut platform.mem(), name, &parsed).ok_or_else(|| String::from("the machine is out of memory")),
        Err(e) => Err(format!("{e}")),
    };
    platform.console_line(&match &loaded {
        Ok(l) => format!(
            "[hv] image {name} loaded: entry {:#x}, {} shared, {} private per guest",
            l.entry,
            sizes(l.shared_bytes()),
            sizes(l.private_bytes())
        ),
        Err(why) => format!("[hv] image {name} rejected: {why}"),
    });
    loaded
}

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Creates the bundle's guests, saying so on the console; returns how
    /// many could not be started.
    pub fn start_bundle(&self, bundle: &Bundle<'_>) -> u32 {
        let out = |l: &str| self.platform.console_line(l);
        // The manifest's tenant names (those the control channel can name).
        self.creating.lock().names = bundle.tenants().map(|t| abi::control::good_tenant_name(t).then(|| t.into())).collect();
        let mut not_started = 0u32;
        let (mut started, mut create_ns) = (0u64, 0u64);
        // Each entry's instance 0, if it booted (a template for `from`).
        let mut firsts: Vec<Option<usize>> = Vec::new();
        for entry in bundle.guests() {
            let mut nic_range: (Option<[u8; 4]>, Option<[u8; 4]>) = (None, None);
            let manifest_args: Vec<&str> = entry.args().collect();
            let st = entry.settings;
            if let abi::bundle::Start::From(t) = entry.start {
                // Made once their template has started and first blocked.
                firsts.push(None);
                match firsts.get(t as usize).copied().flatten() {
                    Some(tid) => self.plan_clones(tid, entry.name, 0, entry.count, false),
                    None => {
                        out(&format!("[hv] guests {}-*: not started: the entry they clone started no instance to clone", entry.name));
                        not_started += entry.count;
                    }
                }
                continue;
            }
            let warm = entry.start == abi::bundle::Start::Warm;
            let booted = if warm { entry.count.min(1) } else { entry.count };
            // Instance 0, if it started.
            let mut zero = None;
            for i in 0..booted {
                let name = format!("{}-{i}", entry.name);
                match self.create_guest(&name, entry.image as usize, &st, &manifest_args, &[], 0) {
                    Ok(c) => {
                        if i == 0 {
                            zero = Some(c.id);
                        }
                        create_ns += c.create_ns;
                        started += 1;
                        if let Some(ip) = c.ip {
                            nic_range.0.get_or_insert(ip);
                            nic_range.1 = Some(ip);
                        }
                        // A line per guest, except in the middle of a big entry:
                        // there, progress every 1000 and a summary at the end.
                        if entry.count <= QUIET_ABOVE || i < 3 {
                            out(&format!("[hv] guest {name} started ({})", c.describe));
                        } else if (i + 1) % 1000 == 0 {
                            out(&format!("[hv] {}: {}/{} guests created", entry.name, i + 1, entry.count));
                        }
                    }
                    Err(e) => {
                        out(&format!("[hv] guest {name} not started: {e}"));
                        not_started += 1;
                    }
                }
            }
            firsts.push(zero);
            if warm && entry.count > 1 {
                match zero {
                    Some(tid) => self.plan_clones(tid, entry.name, 1, entry.count - 1, true),
                    None => not_started += entry.count - 1,
                }
            }
            if entry.count > QUIET_ABOVE {
                let last = nic_range.1.unwrap_or([0; 4]);
                out(&match nic_range.0 {
                    Some(a) => format!(
                        "[hv] guests {0}-0..{0}-{1} created (ips {2}.{3}.{4}.{5}..{6}.{7}.{8}.{9}, tenant {10})",
                        entry.name,
                        entry.count - 1,
                        a[0],
                        a[1],
                        a[2],
                        a[3],
                        last[0],
                        last[1],
                        last[2],
                        last[3],
                        st.tenant
                    ),
                    None => format!("[hv] guests {0}-0..{0}-{1} created", entry.name, entry.count - 1),
                });
            }
        }
        if let Some(each_us) = (create_ns / 1000).checked_div(started) {
            out(&format!("[hv] created {started} guests in {} ms of hypervisor time ({each_us} us each)", create_ns / 1_000_000));
        }
        not_started
    }

    /// Has guest `tid` pause when it first blocks, and then be cloned
    /// `count` times as `name-first`, ...; with `resume`, it goes on after.
    fn plan_clones(&self, tid: usize, name: &str, first: u32, count: u32, resume: bool) {
        self.status(tid).pause_at_block.store(true, Ordering::Release);
        self.clone_jobs.lock().push(super::clone::CloneJob { template: tid, name: name.into(), first, count, resume });
    }

    /// Creates guest `name` from image `image` and makes it runnable (at
    /// boot, and for `start` on the control channel).
    /// `watch`: the control clients (a bit each) its console lines and end
    /// go to.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_guest(
        &self,
        name: &str,
        image: usize,
        st: &Settings,
        args: &[&str],
        env: &[&str],
        watch: u32,
    ) -> Result<Created, Refusal> {
        let mut creating = self.creating.lock();
        let images = self.images.lock();
        let Some(entry) = images.get(image).filter(|e| !e.is_free()) else {
            return Err(Refusal::new(NotFound, format!("there is no image {image}")));
        };
        let img = entry.image.as_ref().map_err(|_| String::from("its image was rejected"))?;
        let args: Vec<&str> = if args.is_empty() { img.app_args.iter().map(String::as_str).collect() } else { args.to_vec() };
        self.heap_headroom().map_err(|e| Refusal::new(NoRoom, e))?;
        let Some(id) = self.take_id(&mut creating) else {
            return Err(Refusal::new(NoRoom, format!("no room for more guests ({} at most at once)", self.status.len())));
        };
        let created = self.create_as(id, &mut creating, name, img, image, st, &args, env, watch);
        if created.is_err() {
            creating.free.push(id);
        }
        created.map_err(Refusal::from)
    }

    /// An id for a new guest: a free one, else one never given, else that
    /// of the guest that ended longest ago (its record is forgotten).
    pub(super) fn take_id(&self, c: &mut Creating) -> Option<usize> {
        self.take_ended(c);
        if let Some(id) = c.free.pop() {
            return Some(id);
        }
        let high = self.high.load(Ordering::Relaxed);
        if high < self.status.len() {
            return Some(high);
        }
        let id = c.kept.pop_front()?;
        self.forget(id);
        Some(id)
    }

    /// Moves the guests whose end is complete into `c.kept`.
    pub(super) fn take_ended(&self, c: &mut Creating) {
        c.kept.extend(self.ended.lock().drain(..));
    }

    /// Empties ended guest `id`'s entries: its id may be given again.
    pub(super) fn forget(&self, id: usize) {
        self.status[id].take();
        self.event_pages[id].take();
        self.net.release(id);
    }

    /// Creates guest `name` as id `id` (see `create_guest`).
    #[allow(clippy::too_many_arguments)]
    fn create_as(
        &self,
        id: usize,
        creating: &mut Creating,
        name: &str,
        img: &LoadedImage,
        image: usize,
        st: &Settings,
        args: &[&str],
        env: &[&str],
        watch: u32,
    ) -> Result<Created, String> {
        let mut mem = self.platform.mem();
        let created_ns = self.now();
        let nic = if st.tenant == TENANT_NONE { None } else { Some(creating.address(id, st)?) };
        let time = &self.time;
        let slots = nic.as_ref().map_or(0, |i| i.ring_slots);
        if nic.is_some() && !abi::ring::valid_slots(slots) {
            return Err(format!("ring_slots {slots} is not a power of two between {} and {}", abi::ring::SLOTS_MIN, abi::ring::SLOTS_MAX));
        }
        // The heap follows the rings.
        let heap_start = abi::layout::heap_start(slots);
        let mut g = Guest::create(&mut mem, self.guest_upper, self.time_page, img, name, args, env, st.memory, heap_start, |_, page| {
            self.platform.write_boot_info(page, boot_info(img, heap_start, st.memory, time));
        })
        .map_err(|e| format!("{e}"))?;
        let Some(events) = self.platform.events_of(&g) else {
            g.destroy(&mut mem);
            return Err("its event page is not mapped".into());
        };
        if let Some(info) = &nic
            && let Err(e) = attach_nic(&self.platform, &mut g, &mut mem, &self.net, st, info, id, &events, RingFill::Zero, (0, 0))
        {
            // Every frame it got so far (ring pages too) goes back.
            g.destroy(&mut mem);
            return Err(e);
        }
        self.settle(&mut g, st, created_ns);
        let describe = match &nic {
            Some(n) => format!(
                "image {}, memory {}, ip {}.{}.{}.{}, tenant {}",
                img.name,
                sizes(st.memory),
                n.ipv4[0],
                n.ipv4[1],
                n.ipv4[2],
                n.ipv4[3],
                st.tenant
            ),
            None => format!("image {}, memory {}", img.name, sizes(st.memory)),
        };
        let created = Created { id, create_ns: g.stats.create_ns, ip: nic.as_ref().map(|n| n.ipv4), describe };
        self.publish(id, g, events, name, nic.is_some(), st, image, watch, creating);
        Ok(created)
    }

    /// Gives new guest `g`, begun at `created_ns`, its rate limits from
    /// `st` and its creation times.
    pub(super) fn settle(&self, g: &mut Guest, st: &Settings, created_ns: u64) {
        g.stats.created_ns = created_ns;
        g.console_limit = crate::limit::TokenBucket::new(st.limits.console_bytes);
        g.kick_limit = crate::limit::TokenBucket::new(st.limits.notifications);
        g.stats.create_ns = self.now() - created_ns;
    }

    /// Keeps [`HEAP_HEADROOM`] free in the heap (growing it if it can)
    /// before a guest is made, or says why not.
    pub(super) fn heap_headroom(&self) -> Result<(), String> {
        if self.platform.reserve_heap(HEAP_HEADROOM) {
            return Ok(());
        }
        Err(format!("the hypervisor's heap is full ({} used)", sizes(self.platform.heap_usage().1 as u64)))
    }

    /// The number of the tenant `t` names: `TENANT_NONE` for none, a
    /// number as it is, a name the manifest's or a new one's.
    pub(super) fn tenant_number(&self, t: abi::control::Tenant<'_>) -> Result<u32, String> {
        Ok(match t {
            abi::control::Tenant::None => TENANT_NONE,
            abi::control::Tenant::Number(n) => n,
            abi::control::Tenant::Named(n) => self.creating.lock().tenant_named(n, true)?,
        })
    }

    /// Makes new guest `g` (id `id`, with its event page `events`) known
    /// and runnable: tables first, the scheduler last, so that once it can
    /// run everything any CPU looks up about it is there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &self,
        id: usize,
        g: Guest,
        events: P::Events,
        name: &str,
        has_nic: bool,
        st: &Settings,
        image: usize,
        watch: u32,
        creating: &mut Creating,
    ) {
        let created_ns = g.stats.created_ns;
        self.guests.lock()[id] = Some(Box::new(g));
        self.event_pages[id].set(events);
        self.status[id].set(GuestStatus {
            name: name.into(),
            tenant: has_nic.then_some(st.tenant),
            state: AtomicU8::new(WAITING),
            cpu_ns: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            stop_requested: AtomicBool::new(false),
            pause_requested: AtomicBool::new(false),
            pause_at_block: AtomicBool::new(false),
            settings: *st,
            image,
            seq: creating.created,
            watched: AtomicU32::new(watch),
            end: spin::Once::new(),
        });
        self.high.fetch_max(id + 1, Ordering::Release);
        creating.created += 1;
        self.watch.lock().iter_mut().for_each(|w| w.started(name));
        self.live.fetch_add(1, Ordering::AcqRel);
        // Spread new guests over the CPUs; balancing evens out the rest.
        let cpu = id % self.cpus;
        self.home[id].store(cpu, Ordering::Release);
        self.scheds[cpu].lock().add(id, st.weight, (st.cap != 0).then_some(st.cap), created_ns);
        if cpu != 0 {
            self.platform.wake_cpu(cpu);
        }
    }
}

impl Creating {
    /// The number of tenant `name`: its own, or (if `create`) the lowest
    /// that has neither a name nor had a guest.
    pub(super) fn tenant_named(&mut self, name: &str, create: bool) -> Result<u32, String> {
        if let Some(t) = self.names.iter().position(|n| n.as_deref() == Some(name)) {
            return Ok(t as u32);
        }
        if !create {
            return Err(format!("no tenant {name}"));
        }
        let used = |t: usize| self.names.get(t).is_some_and(Option::is_some) || self.next_host.get(t).is_some_and(|&n| n > 0);
        let t = (0..abi::MAX_TENANTS as usize).find(|&t| !used(t)).ok_or_else(|| format!("no tenant number left for {name}"))?;
        if self.names.len() <= t {
            self.names.resize(t + 1, None);
        }
        self.names[t] = Some(name.into());
        Ok(t as u32)
    }

    /// The vNIC record of guest `id` (`st.tenant` is not `TENANT_NONE`):
    /// its MAC and the next address of its tenant.
    pub(super) fn address(&mut self, id: usize, st: &Settings) -> Result<abi::NicInfo, String> {
        // Tenant numbers come from the bundle and the control channel:
        // bounded before anything is sized by them.
        if st.tenant >= abi::MAX_TENANTS {
            return Err(format!("tenant {} is not below {}", st.tenant, abi::MAX_TENANTS));
        }
        let t = st.tenant as usize;
        if self.next_host.len() <= t {
            self.next_host.resize(t + 1, 0);
        }
        let n = self.next_host[t];
        if n >= abi::MAX_TENANT_HOSTS {
            return Err(format!("tenant {} has no address left ({} guests with a vNIC at most)", st.tenant, abi::MAX_TENANT_HOSTS));
        }
        self.next_host[t] += 1;
        Ok(abi::NicInfo {
            magic: abi::NIC_MAGIC,
            prefix: abi::GUEST_PREFIX,
            mac: [0x02, (id >> 24) as u8, (id >> 16) as u8, (id >> 8) as u8, id as u8, st.tenant as u8, 0, 0],
            ipv4: abi::guest_ipv4(st.tenant, n),
            gateway: abi::gateway_ipv4(st.tenant),
            ring_slots: st.ring_slots,
            mtu: abi::ring::max_frame(st.ring_slots) as u32,
        })
    }
}

/// What a new guest's ring slots hold.
pub(super) enum RingFill<'a> {
    /// Nothing yet (a new guest).
    Zero,
    /// A copy of this guest's (a clone's template).
    Guest(&'a Guest),
    /// The pages of this snapshot at their addresses (zero where it has
    /// none).
    Snapshot(&'a abi::snapshot::Snapshot<'a>),
}

/// Gives a new guest its vNIC: its record in its shared page
/// (`Guest::set_nic`), its ring pages (`nic_rings`: made at
/// first use, or mapped now, charged, filled as `fill` says) and a port
/// on the network, whose own indices start at `at`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attach_nic<P: Platform>(
    platform: &P,
    g: &mut Guest,
    mem: &mut impl PhysMem,
    net: &impl Network<Ring = P::Ring, Events = P::Events>,
    st: &Settings,
    info: &abi::NicInfo,
    id: usize,
    events: &P::Events,
    fill: RingFill<'_>,
    at: (u32, u32),
) -> Result<(), String> {
    g.set_nic(mem, info);
    let (tx, rx) = nic_rings(platform, g, mem, info, events, &fill)?;
    let mac = [info.mac[0], info.mac[1], info.mac[2], info.mac[3], info.mac[4], info.mac[5]];
    net.attach(Attach {
        guest: id,
        tenant: st.tenant,
        mac,
        ipv4: info.ipv4,
        ring_slots: info.ring_slots,
        limits: &st.limits,
        tx,
        rx,
        events: events.clone(),
        at,
    })
}

/// A new guest's two vNIC rings: slot pages mapped into `g` (charged to
/// its memory), filled as `fill` says; or, when they would hold nothing
/// (a new guest, a template with no frame in flight, a snapshot without
/// them), deferred to their first touch, by the guest or by a frame for
/// it (`GuestMemory::defer_rings`): an idle guest never pays for them.
fn nic_rings<P: Platform>(
    platform: &P,
    g: &mut Guest,
    mem: &mut impl PhysMem,
    info: &abi::NicInfo,
    events: &P::Events,
    fill: &RingFill<'_>,
) -> Result<(P::Ring, P::Ring), String> {
    // (Checked by `create_as`.)
    let slots = info.ring_slots;
    let rings = abi::layout::NIC_TX_RING..abi::layout::heap_start(slots);
    let defer = match fill {
        RingFill::Zero => true,
        RingFill::Guest(t) => t.memory.rings_deferred() || t.rings_idle(&*mem),
        RingFill::Snapshot(s) => rings.clone().step_by(FRAME_SIZE as usize).all(|va| s.page(va).is_none()),
    };
    if defer {
        // Refused now if they could never be made.
        if !g.memory.has_room_for((rings.end - rings.start) / FRAME_SIZE) {
            return Err(format!("vNIC rings: {}", Fault::OutOfMemory { limit: g.memory.limit_bytes() }));
        }
        g.memory.defer_rings(rings);
        let tx = platform.deferred_ring(events, abi::layout::NIC_TX_INDICES, slots);
        return Ok((tx, platform.deferred_ring(events, abi::layout::NIC_RX_INDICES, slots)));
    }
    let mut ring = |indices: u64, base: u64| {
        let va = |i: usize| base + i as u64 * FRAME_SIZE;
        // A template's slots are copied as each page is taken.
        let copy = |i: usize| match fill {
            RingFill::Guest(t) => t.memory.space.translate(&*mem, va(i)).map(|(pa, _)| pa),
            _ => None,
        };
        let copy: Vec<Option<PhysAddr>> = (0..abi::ring::slots_bytes(slots).div_ceil(FRAME_SIZE as usize)).map(copy).collect();
        platform
            .ring(
                events,
                indices,
                slots,
                |i| copy.get(i).copied().flatten(),
                |i, page| {
                    if let RingFill::Snapshot(s) = fill
                        && let Some(p) = s.page(va(i))
                    {
                        mem.write(page, 0, p.data);
                    }
                    g.memory.map_private(mem, va(i), page, Pte::WRITABLE | Pte::NO_EXECUTE)
                },
            )
            .map_err(|e| match e {
                RingAllocError::NoMemory => String::from("the machine is out of memory"),
                RingAllocError::Map(e) => format!("vNIC rings: {e}"),
            })
    };
    let tx = ring(abi::layout::NIC_TX_INDICES, abi::layout::NIC_TX_RING)?;
    let rx = ring(abi::layout::NIC_RX_INDICES, abi::layout::nic_rx_ring(slots))?;
    Ok((tx, rx))
}

/// hermit-entry's boot record for a guest of `image` with `memory` bytes
/// and its heap at `heap_start`.
pub(super) fn boot_info(image: &LoadedImage, heap_start: u64, memory: u64, time: &TimeInfo) -> RawBootInfo {
    let boot_time = time::OffsetDateTime::from_unix_timestamp_nanos(time.boot_wall_ns as i128).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let info = BootInfo {
        hardware_info: HardwareInfo { phys_addr_range: heap_start..heap_start + memory, serial_port_base: None, device_tree: None },
        load_info: LoadInfo { kernel_image_addr_range: image.vaddr_range.clone(), tls_info: None },
        platform_info: PlatformInfo::Uhyve {
            has_pci: false,
            // Each guest has one virtual CPU.
            num_cpus: core::num::NonZeroU64::MIN,
            cpu_freq: core::num::NonZeroU32::new((time.tsc_hz / 1000) as u32),
            boot_time,
        },
    };
    RawBootInfo::from(info)
}
