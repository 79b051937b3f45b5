//! The virtual switch: a learning L2 Ethernet bridge in which every tenant
//! is a separate broadcast domain.
//!
//! Ports are guest vNICs (each with its tenant, its own MAC and its own
//! IPv4 address, fixed when the port is added: the hypervisor assigns
//! both) and at most one *uplink*, the outside world. The
//! uplink belongs to exactly one tenant, chosen when it is added
//! ([`Switch::add_uplink`]): the tenant whose guests the host and the
//! network beyond it reach (the manifest's default tenant, 0, unless it
//! says otherwise). Guests of every other tenant have no path outside the
//! machine; routing between tenants is not the switch's business.
//!
//! For each frame handed to [`Switch::forward`]:
//! 1. The sending port must exist ([`DropReason::UnknownPort`]); the frame
//!    must be [`MIN_FRAME`]`..=`[`MAX_FRAME`] bytes (`Runt`, `Oversize`;
//!    whether a receiver takes a frame of its size is the back end's);
//!    its source MAC must be unicast (`BadSource`).
//! 2. Source-MAC enforcement: a guest port may send only with its own MAC;
//!    the uplink may send with any MAC except a guest's of its tenant (the
//!    outside cannot impersonate a local guest) (`Spoofed`).
//! 3. Address inspection (IP source guard and ARP inspection, as Xen's
//!    vif anti-spoofing rules and OVS do), on the first
//!    [`INSPECT_BYTES`] of the frame, by EtherType (at offset 12):
//!    - IPv4 (`0x0800`): the frame must hold a whole IPv4 header (version
//!      4, IHL at least 5, `len` at least 34) and, from a guest, its
//!      source address must be the port's own (so not 0.0.0.0 either:
//!      guests are given their address and do not use DHCP); from the
//!      uplink, it must not be the address of a guest of the uplink's
//!      tenant (`SpoofedIp`).
//!    - ARP (`0x0806`): it must be Ethernet/IPv4 ARP (htype 1, ptype
//!      `0x0800`, hlen 6, plen 4, `len` at least 42); from a guest its
//!      sender hardware and protocol addresses must be the port's own MAC
//!      and IPv4 address; from the uplink, neither may be a guest's of its
//!      tenant (`SpoofedArp`). The operation and the target fields are
//!      not checked: they claim nothing about the sender.
//!    - 802.1Q/802.1ad tags (`0x8100`, `0x88a8`, `0x9100`) from a guest
//!      are dropped (`Tagged`): the tag would hide the fields above, and
//!      no guest is given a VLAN. The uplink's pass: no guest stack here
//!      reads a tagged frame.
//!    - Every other EtherType (IPv6 included: no guest is given an IPv6
//!      address and the libos has no IPv6) is forwarded within the tenant
//!      uninspected, under rules 1, 2, 4 and 6 only.
//!
//!    A forged frame is dropped before it can teach the table anything.
//! 4. Learning: the uplink's source MACs are learned per tenant with a
//!    timestamp and forgotten [`AGE_NS`] after they were last seen. A
//!    guest's own MAC is known from the moment the port is added and never
//!    ages, so a guest's frames teach the switch nothing new.
//! 5. Proxy ARP: the switch knows every guest's MAC and address, so it
//!    answers ARP itself (the request is [`Verdict::Answered`]; the
//!    sender's tenant only; counted at the sender):
//!    - A request (op 1, broadcast or unicast) for the address of a guest
//!      of the sender's tenant other than the sender is answered: a reply
//!      from that guest's MAC and address to the request's source MAC and
//!      sender address (both checked by rule 3) goes to the requesting
//!      port ([`Out::Reply`], `arp_answered`), and the request itself to
//!      the guest asked for only ([`Out::Frame`]): as on a wire, it learns
//!      the asker from the request and need not ask back before it
//!      answers, and it is woken only by a station about to talk to it.
//!      Nothing is flooded. The uplink's requests (QEMU asking for a
//!      guest) are answered the same way, through the uplink.
//!    - Any other request from a guest (an address no guest of the tenant
//!      has, or its own: an announcement or gratuitous ARP), and any ARP
//!      from a guest to a group address (a gratuitous reply), goes to the
//!      tenant's uplink only, where the host may own the address (QEMU's
//!      gateway) or cache the announcement; in a tenant without an uplink
//!      every address is the hypervisor's to assign, so it is dropped
//!      (`arp_unknown`; `unrouted`). No guest needs another's
//!      announcement: the switch answers for every guest, and a guest's
//!      binding never changes while its port exists.
//!    - A request from the uplink the switch cannot answer (not a guest's
//!      address: an announcement of the host's, a probe for a free one)
//!      is dropped the same way: only the switch speaks for the tenant.
//!    - Unicast ARP replies are switched as any frame (rule 6).
//! 6. Delivery, within the sender's tenant only and never back out of the
//!    port the frame came in on: broadcast and multicast go to every other
//!    port of the tenant (the uplink included if it is the tenant's);
//!    a known unicast destination goes to its port; an unknown (or aged)
//!    one floods like a broadcast. The MAC table is keyed by
//!    `(tenant, MAC)`, so the same MAC in two tenants names two different
//!    stations and a lookup can never find another tenant's port. The
//!    verdict says how many ports the frame was handed to, so that the
//!    back end charges a guest's flood to its rate limits copy by copy.
//!
//! Cost: a frame costs a few hash-table lookups plus one callback per
//! receiver; flooding walks the tenant's own port list, never all ports;
//! an answered ARP request costs one lookup and one 60-byte reply.
//! Adding and removing a guest port is `O(1)` (amortized: the tables
//! grow by doubling); removing the uplink walks the MAC table once.
//! Nothing is allocated per frame. The tables hash with a seed
//! ([`Switch::keyed`]; the hypervisor draws it at boot), so the outside,
//! which chooses the MACs the switch learns, cannot aim them at one
//! bucket.
//!
//! Frames are guest-supplied bytes: they are read only through checked
//! `get`s at fixed offsets; nothing here indexes by them or panics on
//! them. Everything is counted: per port and in totals that
//! survive removed ports (see [`Stats`] for the invariants).

use abi::ring::{MAX_FRAME, MIN_FRAME};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use foldhash::fast::FixedState;
use hashbrown::HashMap;

/// A learned (outside) MAC is forgotten this long after it was last seen.
pub const AGE_NS: u64 = 300 * 1_000_000_000;
/// At most this many MACs are learned from the uplink by default (see
/// [`Switch::with_max_learned`]); past it, new ones are not learned (their
/// frames flood) until old ones age out. Bounds the memory the outside
/// world can make the hypervisor spend.
pub const DEFAULT_MAX_LEARNED: usize = 4096;
/// How often (in frame timestamps) [`Switch::forward`] sweeps aged entries
/// out of the table by itself.
const SWEEP_NS: u64 = AGE_NS / 4;

pub type Mac = [u8; 6];
pub type Ipv4 = [u8; 4];
pub const BROADCAST: Mac = [0xff; 6];

/// How much of a frame's start the switch decides on: an Ethernet header
/// and an Ethernet/IPv4 ARP body (14 + 28), which also covers an IPv4
/// header's source address (bytes 26..30) and a VLAN tag (12..16).
pub const INSPECT_BYTES: usize = 42;

/// Multicast (and broadcast) MACs have the group bit set.
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// Whether a frame whose first bytes are `header` may be flooded to its
/// sender's tenant, and so takes one of the sender's broadcast tokens: a
/// broadcast or multicast that is not ARP (rule 5: the switch answers an
/// ARP request itself, at the cost of one reply and one copy to the guest
/// asked for, or sends it to the uplink only; it floods no ARP).
pub fn may_flood(header: &[u8; INSPECT_BYTES]) -> bool {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&header[..6]);
    is_multicast(&dst) && inspect::arp_of(header).is_none()
}

/// A switch port. A slot number plus a generation, so that the id of a
/// removed port stays dead even after its slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId {
    slot: u32,
    generation: u32,
}

impl PortId {
    /// A small dense number, unique among the ports that exist now (for
    /// the caller's own per-port tables).
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

/// Whether `ip` can be a guest's own address: not 0.0.0.0, not the
/// limited broadcast, not multicast (224.0.0.0/4).
pub fn is_unicast_ipv4(ip: &Ipv4) -> bool {
    *ip != [0; 4] && *ip != [0xff; 4] && ip[0] & 0xf0 != 0xe0
}

/// Why a port could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortError {
    /// A guest's MAC must be unicast.
    MulticastMac,
    /// Another port of the tenant already has this MAC.
    DuplicateMac,
    /// A guest's IPv4 address must be unicast ([`is_unicast_ipv4`]).
    BadIpv4,
    /// Another port of the tenant already has this IPv4 address.
    DuplicateIpv4,
    /// There is already an uplink.
    UplinkExists,
    /// More than `u32::MAX` port slots.
    TooManyPorts,
}

/// Why a frame was dropped before delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The sending port does not exist (never did, or was removed).
    UnknownPort,
    /// Shorter than an Ethernet header ([`MIN_FRAME`]).
    Runt,
    /// Longer than [`MAX_FRAME`].
    Oversize,
    /// The source MAC is multicast or broadcast.
    BadSource,
    /// A guest sent with a MAC not its own, or the uplink with a local
    /// guest's MAC.
    Spoofed,
    /// An IPv4 frame from a guest with a source address not its own, from
    /// the uplink with a local guest's, or too short or malformed to tell.
    SpoofedIp,
    /// An ARP frame from a guest whose sender MAC or IPv4 address is not
    /// its own, from the uplink naming a local guest's, or not a whole
    /// Ethernet/IPv4 ARP.
    SpoofedArp,
    /// A VLAN-tagged frame from a guest.
    Tagged,
}

impl DropReason {
    /// Whether the frame claimed an identity not its sender's, or hid
    /// what it claimed (all but the size and port checks).
    pub fn is_spoof(self) -> bool {
        matches!(self, Self::Spoofed | Self::SpoofedIp | Self::SpoofedArp | Self::Tagged)
    }
}

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted; handed to `copies` ports (0: nobody else to send it to,
    /// e.g. the destination is the sender itself or the tenant has no
    /// other port).
    Forwarded {
        copies: u32,
    },
    /// An ARP request the switch answered itself (rule 5): the reply was
    /// handed back to the requesting port, and the request to the guest it
    /// asked for.
    Answered,
    Dropped(DropReason),
}

impl Verdict {
    /// How many frames the switch handed to ports for it: the copies of a
    /// forwarded frame; the reply to an answered request and the request.
    pub fn handed(self) -> u32 {
        match self {
            Self::Forwarded { copies } => copies,
            Self::Answered => 2,
            Self::Dropped(_) => 0,
        }
    }
}

/// What [`Switch::forward`]'s `out` hands a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out<'a> {
    /// The frame being switched: the caller copies it from the sender.
    Frame,
    /// A whole frame the switch made: the reply to an ARP request, for the
    /// port that asked.
    Reply(&'a [u8]),
}

/// The length of the ARP replies the switch makes: an Ethernet/IPv4 ARP
/// (42 bytes) padded with zeros to Ethernet's shortest frame.
pub const ARP_REPLY_LEN: usize = 60;

/// Counters of one port, or of the whole switch ([`Switch::totals`]).
///
/// For every frame handed to [`Switch::forward`] exactly one of
/// `rx_frames` (accepted) and the eight `drop_*` counters goes up, at the
/// sending port and in the totals (`drop_unknown_port` only in the totals:
/// there is no port). An accepted frame is either an ARP request the
/// switch answered (`arp_answered`; its reply is handed to the sender) or
/// handed to zero or more ports; if zero, `unrouted` goes up as well. Each
/// hand-over, replies included, bumps, at the receiving port,
/// `tx_frames`/`tx_bytes` if the receiver took it or `tx_full` if its ring
/// was full. The totals are the sums over all ports that ever existed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames (and their bytes) accepted from this port.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames (and their bytes) delivered to this port.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames for this port that its receive ring had no room for.
    pub tx_full: u64,
    /// Accepted frames that had nowhere to go.
    pub unrouted: u64,
    /// Source MACs the uplink sent that the full table could not learn.
    pub learn_full: u64,
    /// ARP requests from this port that the switch answered itself.
    pub arp_answered: u64,
    /// ARP requests (and group-addressed ARP) from this port that the
    /// switch could not answer: for an address no guest of the tenant has,
    /// or announcements; sent to the uplink only, or nowhere (rule 5).
    pub arp_unknown: u64,
    pub drop_runt: u64,
    pub drop_oversize: u64,
    pub drop_bad_source: u64,
    pub drop_spoofed: u64,
    pub drop_spoofed_ip: u64,
    pub drop_spoofed_arp: u64,
    pub drop_tagged: u64,
    pub drop_unknown_port: u64,
}

impl Stats {
    /// Every frame dropped before delivery.
    pub fn dropped(&self) -> u64 {
        self.drop_runt + self.drop_oversize + self.drop_bad_source + self.spoofed() + self.drop_unknown_port
    }

    /// Frames dropped for a forged or hidden identity
    /// ([`DropReason::is_spoof`]): MAC, IPv4, ARP, VLAN tag.
    pub fn spoofed(&self) -> u64 {
        self.drop_spoofed + self.drop_spoofed_ip + self.drop_spoofed_arp + self.drop_tagged
    }

    fn count_drop(&mut self, why: DropReason) {
        match why {
            DropReason::UnknownPort => self.drop_unknown_port += 1,
            DropReason::Runt => self.drop_runt += 1,
            DropReason::Oversize => self.drop_oversize += 1,
            DropReason::BadSource => self.drop_bad_source += 1,
            DropReason::Spoofed => self.drop_spoofed += 1,
            DropReason::SpoofedIp => self.drop_spoofed_ip += 1,
            DropReason::SpoofedArp => self.drop_spoofed_arp += 1,
            DropReason::Tagged => self.drop_tagged += 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Guest { mac: Mac, ip: Ipv4 },
    Uplink,
}

#[derive(Debug)]
struct Port {
    tenant: u32,
    kind: Kind,
    /// Where this port sits in its tenant's port list.
    pos: usize,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    port: Option<Port>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    /// When the MAC was last seen; `None`: a guest's own, never ages.
    seen_ns: Option<u64>,
}

impl Entry {
    fn live(&self, now_ns: u64) -> bool {
        match self.seen_ns {
            None => true,
            Some(seen) => now_ns.saturating_sub(seen) < AGE_NS,
        }
    }
}

/// The switch. See the module documentation for the rules.
#[derive(Debug)]
pub struct Switch {
    slots: Vec<Slot>,
    /// Slots of removed ports, to reuse.
    free: Vec<u32>,
    /// Each tenant's ports, for flooding. A tenant with no port has no
    /// entry.
    tenants: BTreeMap<u32, Vec<PortId>>,
    /// `(tenant, MAC)` → port, keyed by [`mac_key`].
    table: HashMap<u128, Entry, FixedState>,
    /// `(tenant, IPv4)` → guest port (the guests' own addresses only),
    /// keyed by [`ip_key`].
    ips: HashMap<u64, PortId, FixedState>,
    uplink: Option<PortId>,
    /// Entries with a timestamp (learned from the uplink) in `table`.
    learned: usize,
    max_learned: usize,
    next_sweep_ns: u64,
    totals: Stats,
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}

impl Switch {
    /// What one guest port costs the switch: its slot, its place in its
    /// tenant's list, its MAC and its address table entries (the hash
    /// tables' spare room, up to half of them, not counted).
    pub const BYTES_PER_PORT: usize = core::mem::size_of::<Slot>()
        + core::mem::size_of::<PortId>()
        + core::mem::size_of::<(u128, Entry)>()
        + core::mem::size_of::<(u64, PortId)>()
        // A control byte per bucket in each table.
        + 2;

    pub fn new() -> Self {
        Self::with_max_learned(DEFAULT_MAX_LEARNED)
    }

    /// This switch (with no port yet) hashing its tables with `seed`:
    /// the hypervisor's is drawn at boot from the CPU's random numbers.
    pub fn keyed(self, seed: u64) -> Self {
        debug_assert!(self.slots.is_empty());
        let state = FixedState::with_seed(seed);
        Self { table: HashMap::with_hasher(state), ips: HashMap::with_hasher(state), ..self }
    }

    /// A switch that learns at most `max_learned` outside MACs at a time.
    pub fn with_max_learned(max_learned: usize) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            tenants: BTreeMap::new(),
            table: HashMap::with_hasher(FixedState::with_seed(0)),
            ips: HashMap::with_hasher(FixedState::with_seed(0)),
            uplink: None,
            learned: 0,
            max_learned,
            next_sweep_ns: SWEEP_NS,
            totals: Stats::default(),
        }
    }

    /// Adds a guest's vNIC to `tenant`. `mac` is the only source MAC the
    /// port may send with, and frames to it reach the port from now on;
    /// `ip` is the only IPv4 source (and ARP sender) address it may use,
    /// and the uplink may not claim it.
    pub fn add_port(&mut self, tenant: u32, mac: Mac, ip: Ipv4) -> Result<PortId, PortError> {
        if is_multicast(&mac) {
            return Err(PortError::MulticastMac);
        }
        if !is_unicast_ipv4(&ip) {
            return Err(PortError::BadIpv4);
        }
        if let Some(e) = self.table.get(&mac_key(tenant, mac))
            && e.seen_ns.is_none()
        {
            return Err(PortError::DuplicateMac);
        }
        if self.ips.contains_key(&ip_key(tenant, ip)) {
            return Err(PortError::DuplicateIpv4);
        }
        let id = self.insert(tenant, Kind::Guest { mac, ip })?;
        // A guest's MAC overrides the same MAC learned from the outside.
        if let Some(old) = self.table.insert(mac_key(tenant, mac), Entry { port: id, seen_ns: None })
            && old.seen_ns.is_some()
        {
            self.learned = self.learned.saturating_sub(1);
        }
        self.ips.insert(ip_key(tenant, ip), id);
        Ok(id)
    }

    /// Adds the uplink, in `tenant` (see the module documentation).
    pub fn add_uplink(&mut self, tenant: u32) -> Result<PortId, PortError> {
        if self.uplink.is_some() {
            return Err(PortError::UplinkExists);
        }
        let id = self.insert(tenant, Kind::Uplink)?;
        self.uplink = Some(id);
        Ok(id)
    }

    fn insert(&mut self, tenant: u32, kind: Kind) -> Result<PortId, PortError> {
        let list = self.tenants.entry(tenant).or_default();
        let port = Port { tenant, kind, pos: list.len(), stats: Stats::default() };
        let id = match self.free.pop() {
            Some(slot) => match self.slots.get_mut(slot as usize) {
                Some(s) => {
                    s.port = Some(port);
                    PortId { slot, generation: s.generation }
                }
                None => return Err(PortError::TooManyPorts), // unreachable: free slots exist
            },
            None => {
                let slot = u32::try_from(self.slots.len()).map_err(|_| PortError::TooManyPorts)?;
                self.slots.push(Slot { generation: 0, port: Some(port) });
                PortId { slot, generation: 0 }
            }
        };
        list.push(id);
        Ok(id)
    }

    /// Removes a port and every table entry that points at it; returns its
    /// final counters, or `None` if there is no such port.
    pub fn remove_port(&mut self, id: PortId) -> Option<Stats> {
        let slot = self.slots.get_mut(id.slot as usize).filter(|s| s.generation == id.generation)?;
        let port = slot.port.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.slot);

        if let Some(list) = self.tenants.get_mut(&port.tenant) {
            if list.get(port.pos) == Some(&id) {
                list.swap_remove(port.pos);
                if let Some(&moved) = list.get(port.pos)
                    && let Some(p) = port_in(&mut self.slots, moved)
                {
                    p.pos = port.pos;
                }
            }
            if list.is_empty() {
                self.tenants.remove(&port.tenant);
            }
        }
        match port.kind {
            Kind::Guest { mac, ip } => {
                if self.table.get(&mac_key(port.tenant, mac)).is_some_and(|e| e.port == id) {
                    self.table.remove(&mac_key(port.tenant, mac));
                }
                if self.ips.get(&ip_key(port.tenant, ip)) == Some(&id) {
                    self.ips.remove(&ip_key(port.tenant, ip));
                }
            }
            Kind::Uplink => {
                self.table.retain(|_, e| e.port != id);
                self.learned = 0;
                self.uplink = None;
            }
        }
        Some(port.stats)
    }

    fn port(&self, id: PortId) -> Option<&Port> {
        self.slots.get(id.slot as usize).filter(|s| s.generation == id.generation)?.port.as_ref()
    }

    /// The port's counters, if it exists.
    pub fn stats(&self, id: PortId) -> Option<Stats> {
        self.port(id).map(|p| p.stats)
    }

    /// The switch's counters: sums over every port that ever existed, plus
    /// frames from unknown ports.
    pub fn totals(&self) -> Stats {
        self.totals
    }

    /// The port's tenant, if it exists.
    pub fn tenant_of(&self, id: PortId) -> Option<u32> {
        self.port(id).map(|p| p.tenant)
    }

    pub fn uplink(&self) -> Option<PortId> {
        self.uplink
    }

    /// Ports that exist now.
    pub fn port_count(&self) -> usize {
        self.tenants.values().map(Vec::len).sum()
    }

    /// Outside MACs in the table now (aged ones included until swept).
    pub fn learned_count(&self) -> usize {
        self.learned
    }

    /// Where a frame from `tenant` to `mac` would go at `now_ns`, if it
    /// would not flood.
    pub fn lookup(&self, tenant: u32, mac: Mac, now_ns: u64) -> Option<PortId> {
        self.table.get(&mac_key(tenant, mac)).filter(|e| e.live(now_ns)).map(|e| e.port)
    }

    /// Forgets every learned MAC not seen for [`AGE_NS`]; returns how many.
    /// [`Switch::forward`] calls it every `AGE_NS / 4` of frame time, so
    /// the caller need not; it walks the whole table.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.table.len();
        self.table.retain(|_, e| e.live(now_ns));
        let gone = before - self.table.len();
        self.learned = self.learned.saturating_sub(gone);
        self.next_sweep_ns = now_ns.saturating_add(SWEEP_NS);
        gone
    }

    /// Switches one frame that `from` sent at `now_ns`: calls
    /// `out(port, Out::Frame)` once for each port that should receive it,
    /// in no particular order, or, for an ARP request it answers,
    /// `out(from, Out::Reply(reply))` once. `out` copies the frame (or the
    /// reply) into that port's receive ring (or the uplink's transmit
    /// queue) and returns `false` if there was no room.
    pub fn forward(&mut self, from: PortId, frame: &[u8], now_ns: u64, out: &mut impl FnMut(PortId, Out<'_>) -> bool) -> Verdict {
        self.forward_header(from, frame, frame.len(), now_ns, out)
    }

    /// [`Switch::forward`] for a frame the caller has not copied: `header`
    /// holds the frame's first `len.min(`[`INSPECT_BYTES`]`)` bytes (at
    /// least the 14 of the Ethernet header; anything past `INSPECT_BYTES`
    /// is ignored; an IPv4 or ARP frame whose header copy is too short to
    /// inspect is dropped), copied out of the sender's buffer, and `len` is
    /// the frame's length, read once. The decision rests on these private
    /// copies only; `out` then writes `header` and copies the rest from the
    /// sender's buffer.
    pub fn forward_header(
        &mut self,
        from: PortId,
        header: &[u8],
        len: usize,
        now_ns: u64,
        out: &mut impl FnMut(PortId, Out<'_>) -> bool,
    ) -> Verdict {
        if now_ns >= self.next_sweep_ns {
            self.expire(now_ns);
        }
        let Some(port) = port_in(&mut self.slots, from) else {
            return self.drop(None, DropReason::UnknownPort);
        };
        let (tenant, kind) = (port.tenant, port.kind);
        if len < MIN_FRAME {
            return self.drop(Some(from), DropReason::Runt);
        }
        if len > MAX_FRAME {
            return self.drop(Some(from), DropReason::Oversize);
        }
        // A header shorter than an Ethernet header is a runt too, whatever
        // `len` claims.
        let (Some(dst), Some(src), true) =
            (inspect::mac_at(header, inspect::ETH_DST), inspect::mac_at(header, inspect::ETH_SRC), header.len() >= MIN_FRAME)
        else {
            return self.drop(Some(from), DropReason::Runt);
        };
        if is_multicast(&src) {
            return self.drop(Some(from), DropReason::BadSource);
        }
        let spoofed = match kind {
            Kind::Guest { mac, .. } => src != mac,
            Kind::Uplink => self.is_guest_mac(tenant, &src),
        };
        if spoofed {
            return self.drop(Some(from), DropReason::Spoofed);
        }
        if let Err(why) = self.inspect(tenant, kind, header, len) {
            return self.drop(Some(from), why);
        }
        if kind == Kind::Uplink {
            match self.table.get_mut(&mac_key(tenant, src)) {
                Some(e) => *e = Entry { port: from, seen_ns: Some(now_ns) },
                None if self.learned < self.max_learned => {
                    self.table.insert(mac_key(tenant, src), Entry { port: from, seen_ns: Some(now_ns) });
                    self.learned += 1;
                }
                None => {
                    if let Some(p) = port_in(&mut self.slots, from) {
                        p.stats.learn_full += 1;
                    }
                    self.totals.learn_full += 1;
                }
            }
        }

        let bytes = len as u64;
        if let Some(p) = port_in(&mut self.slots, from) {
            p.stats.rx_frames += 1;
            p.stats.rx_bytes += bytes;
        }
        self.totals.rx_frames += 1;
        self.totals.rx_bytes += bytes;

        // Rule 5: ARP the switch answers, or sends to the uplink only.
        let mut only_uplink = false;
        if let Some(arp) = inspect::arp_of(header) {
            let target = (arp.op == inspect::ARP_REQUEST)
                .then(|| self.ips.get(&ip_key(tenant, arp.tpa)).copied())
                .flatten()
                .filter(|&t| t != from)
                .and_then(|t| match self.port(t)?.kind {
                    Kind::Guest { mac, ip } => Some((t, mac, ip)),
                    Kind::Uplink => None,
                });
            if let Some((to, mac, ip)) = target {
                let reply = inspect::arp_reply(mac, ip, src, arp.sha, arp.spa);
                if let Some(p) = port_in(&mut self.slots, from) {
                    p.stats.arp_answered += 1;
                }
                self.totals.arp_answered += 1;
                deliver(&mut self.slots, &mut self.totals, from, reply.len() as u64, Out::Reply(&reply), out);
                // The guest asked for hears the request, as on a wire, and
                // learns the asker from it: it need not ask back before it
                // answers (smoltcp asks for one address per second, so a
                // server with many new clients would wait).
                deliver(&mut self.slots, &mut self.totals, to, bytes, Out::Frame, out);
                return Verdict::Answered;
            }
            let guest = matches!(kind, Kind::Guest { .. });
            if arp.op == inspect::ARP_REQUEST || (guest && is_multicast(&dst)) {
                if let Some(p) = port_in(&mut self.slots, from) {
                    p.stats.arp_unknown += 1;
                }
                self.totals.arp_unknown += 1;
                only_uplink = true;
            }
        }

        let unicast_to = if is_multicast(&dst) {
            None
        } else {
            self.table
                .get(&mac_key(tenant, dst))
                .filter(|e| e.live(now_ns))
                .map(|e| e.port)
                // The table is keyed by tenant, so this always holds.
                .filter(|&to| self.port(to).is_some_and(|p| p.tenant == tenant))
        };
        // A unicast to a MAC no port has: no guest can want it (the
        // hypervisor gave every guest its MAC, and the switch knows them
        // all), so it goes to the host's side only, or nowhere. Flooding it
        // cost a tenant of 10,000 guests 10,000 copies of every frame for
        // a guest that had just gone.
        if unicast_to.is_none() && !is_multicast(&dst) {
            only_uplink = true;
        }
        let mut copies = 0u32;
        if only_uplink {
            // The tenant's uplink, if it has one and did not send it.
            if let Some(up) = self.uplink.filter(|&up| up != from && self.port(up).is_some_and(|p| p.tenant == tenant))
                && deliver(&mut self.slots, &mut self.totals, up, bytes, Out::Frame, out)
            {
                copies = 1;
            }
        } else {
            match unicast_to {
                Some(to) => {
                    if to != from && deliver(&mut self.slots, &mut self.totals, to, bytes, Out::Frame, out) {
                        copies = 1;
                    }
                }
                None => {
                    for &to in self.tenants.get(&tenant).map(Vec::as_slice).unwrap_or_default() {
                        if to != from && deliver(&mut self.slots, &mut self.totals, to, bytes, Out::Frame, out) {
                            copies += 1;
                        }
                    }
                }
            }
        }
        if copies == 0 {
            if let Some(p) = port_in(&mut self.slots, from) {
                p.stats.unrouted += 1;
            }
            self.totals.unrouted += 1;
        }
        Verdict::Forwarded { copies }
    }

    fn drop(&mut self, from: Option<PortId>, why: DropReason) -> Verdict {
        if let Some(p) = from.and_then(|id| port_in(&mut self.slots, id)) {
            p.stats.count_drop(why);
        }
        self.totals.count_drop(why);
        Verdict::Dropped(why)
    }
}

/// The MAC table's key for `mac` in `tenant`: one integer, so that a
/// lookup compares words, not a tuple and a byte array.
fn mac_key(tenant: u32, mac: Mac) -> u128 {
    let mut m = [0u8; 8];
    m[2..].copy_from_slice(&mac);
    (u128::from(tenant) << 64) | u128::from(u64::from_be_bytes(m))
}

/// The address table's key for `ip` in `tenant` (as [`mac_key`]).
fn ip_key(tenant: u32, ip: Ipv4) -> u64 {
    (u64::from(tenant) << 32) | u64::from(u32::from_be_bytes(ip))
}

fn port_in(slots: &mut [Slot], id: PortId) -> Option<&mut Port> {
    slots.get_mut(id.slot as usize).filter(|s| s.generation == id.generation)?.port.as_mut()
}

/// Hands a frame (`what`, of `bytes`) to `to` (a live port) and counts
/// it; `false` if there is no such port and nothing was handed over.
fn deliver(
    slots: &mut [Slot],
    totals: &mut Stats,
    to: PortId,
    bytes: u64,
    what: Out<'_>,
    out: &mut impl FnMut(PortId, Out<'_>) -> bool,
) -> bool {
    let Some(p) = port_in(slots, to) else { return false };
    let took = out(to, what);
    if took {
        p.stats.tx_frames += 1;
        p.stats.tx_bytes += bytes;
        totals.tx_frames += 1;
        totals.tx_bytes += bytes;
    } else {
        p.stats.tx_full += 1;
        totals.tx_full += 1;
    }
    true
}

mod inspect;
#[cfg(test)]
mod tests;
