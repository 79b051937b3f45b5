//! Rule 3 of the switch (see its module documentation): the addresses an
//! IPv4 or ARP frame claims for its sender, checked on the switch's private
//! copy of the frame's first [`INSPECT_BYTES`](super::INSPECT_BYTES) bytes,
//! through named field offsets; and the ARP replies of rule 5.

use super::{ARP_REPLY_LEN, DropReason, Ipv4, Kind, Mac, Switch};

/// Ethernet header fields: destination, source, EtherType.
pub(super) const ETH_DST: usize = 0;
pub(super) const ETH_SRC: usize = 6;
const ETH_TYPE: usize = 12;
/// The IPv4 header's version/IHL byte and its source address.
const IPV4_VERSION_IHL: usize = 14;
const IPV4_SRC: usize = 26;
/// The ARP body's htype/ptype/hlen/plen, sender MAC and sender IPv4.
const ARP_KINDS: core::ops::Range<usize> = 14..20;
const ARP_OP: usize = 20;
const ARP_SHA: usize = 22;
const ARP_SPA: usize = 28;
const ARP_THA: usize = 32;
const ARP_TPA: usize = 38;
/// ARP's operations.
pub(super) const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// 802.1Q, 802.1ad and the older pre-standard QinQ tag.
const ETHERTYPE_TAGS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// Shortest IPv4 frame: Ethernet header and a 20-byte IPv4 header.
const MIN_IPV4_FRAME: usize = 14 + 20;
/// Shortest ARP frame: Ethernet header and a 28-byte Ethernet/IPv4 ARP body.
const MIN_ARP_FRAME: usize = 14 + 28;
/// ARP's htype (Ethernet), ptype (IPv4), hlen and plen, as they appear.
const ARP_ETHERNET_IPV4: [u8; 6] = [0, 1, 0x08, 0x00, 6, 4];

impl Switch {
    /// Whether `mac` is the own MAC of a guest of `tenant`.
    pub(super) fn is_guest_mac(&self, tenant: u32, mac: &Mac) -> bool {
        self.table.get(&super::mac_key(tenant, *mac)).is_some_and(|e| e.seen_ns.is_none())
    }

    /// Rule 3 of the module documentation: the addresses an IPv4 or ARP
    /// frame claims for its sender, from the private `header` copy.
    pub(super) fn inspect(&self, tenant: u32, kind: Kind, header: &[u8], len: usize) -> Result<(), DropReason> {
        let Some(ethertype) = u16_at(header, ETH_TYPE) else { return Err(DropReason::Runt) };
        match ethertype {
            ETHERTYPE_IPV4 => {
                let whole = len >= MIN_IPV4_FRAME && header.get(IPV4_VERSION_IHL).is_some_and(|&b| b >> 4 == 4 && b & 0xf >= 5);
                let ok = match (whole, ipv4_at(header, IPV4_SRC), kind) {
                    (true, Some(src), Kind::Guest { ip, .. }) => src == ip,
                    (true, Some(src), Kind::Uplink) => !self.ips.contains_key(&super::ip_key(tenant, src)),
                    _ => false,
                };
                if ok { Ok(()) } else { Err(DropReason::SpoofedIp) }
            }
            ETHERTYPE_ARP => {
                let whole = len >= MIN_ARP_FRAME && header.get(ARP_KINDS) == Some(&ARP_ETHERNET_IPV4[..]);
                let ok = match (whole, mac_at(header, ARP_SHA), ipv4_at(header, ARP_SPA), kind) {
                    (true, Some(sha), Some(spa), Kind::Guest { mac, ip }) => sha == mac && spa == ip,
                    (true, Some(sha), Some(spa), Kind::Uplink) => {
                        !self.is_guest_mac(tenant, &sha) && !self.ips.contains_key(&super::ip_key(tenant, spa))
                    }
                    _ => false,
                };
                if ok { Ok(()) } else { Err(DropReason::SpoofedArp) }
            }
            t if ETHERTYPE_TAGS.contains(&t) && matches!(kind, Kind::Guest { .. }) => Err(DropReason::Tagged),
            _ => Ok(()),
        }
    }
}

/// The fields of an Ethernet/IPv4 ARP frame that rule 5 needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Arp {
    pub op: u16,
    pub sha: Mac,
    pub spa: Ipv4,
    pub tpa: Ipv4,
}

/// The ARP fields of `header`, if it is a whole Ethernet/IPv4 ARP frame.
pub(super) fn arp_of(header: &[u8]) -> Option<Arp> {
    if u16_at(header, ETH_TYPE)? != ETHERTYPE_ARP || header.get(ARP_KINDS)? != ARP_ETHERNET_IPV4 {
        return None;
    }
    Some(Arp { op: u16_at(header, ARP_OP)?, sha: mac_at(header, ARP_SHA)?, spa: ipv4_at(header, ARP_SPA)?, tpa: ipv4_at(header, ARP_TPA)? })
}

/// The reply to an ARP request: `mac` is at `ip`, from `mac` to the
/// requester's Ethernet source `to`, its sender MAC `tha` and address `tpa`.
pub(super) fn arp_reply(mac: Mac, ip: Ipv4, to: Mac, tha: Mac, tpa: Ipv4) -> [u8; ARP_REPLY_LEN] {
    let mut f = [0u8; ARP_REPLY_LEN];
    f[ETH_DST..ETH_DST + 6].copy_from_slice(&to);
    f[ETH_SRC..ETH_SRC + 6].copy_from_slice(&mac);
    f[ETH_TYPE..ETH_TYPE + 2].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[ARP_KINDS].copy_from_slice(&ARP_ETHERNET_IPV4);
    f[ARP_OP..ARP_OP + 2].copy_from_slice(&ARP_REPLY.to_be_bytes());
    f[ARP_SHA..ARP_SHA + 6].copy_from_slice(&mac);
    f[ARP_SPA..ARP_SPA + 4].copy_from_slice(&ip);
    f[ARP_THA..ARP_THA + 6].copy_from_slice(&tha);
    f[ARP_TPA..ARP_TPA + 4].copy_from_slice(&tpa);
    f
}

pub(super) fn mac_at(header: &[u8], at: usize) -> Option<Mac> {
    header.get(at..at.checked_add(6)?)?.try_into().ok()
}

fn ipv4_at(header: &[u8], at: usize) -> Option<Ipv4> {
    header.get(at..at.checked_add(4)?)?.try_into().ok()
}

fn u16_at(header: &[u8], at: usize) -> Option<u16> {
    let b: [u8; 2] = header.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(b))
}
