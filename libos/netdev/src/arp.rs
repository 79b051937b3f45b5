//! Asking ahead for a neighbour's MAC.
//!
//! smoltcp 0.12 sends at most one ARP request per second per interface,
//! whatever address it is for (`NeighborCache::SILENT_TIME`): a guest that
//! contacts new neighbours in a row (a load generator, a proxy, the
//! hosting benchmark's client) would wait up to a second for each one after
//! the first. The switch answers ARP for every guest at once (proxy ARP),
//! so the libos asks itself when a socket is pointed at an on-link address
//! it has not asked about lately ([`Asker`]), with a request it builds
//! ([`request`]) and queues beside smoltcp's frames
//! ([`RingDevice::send_frame`](crate::RingDevice::send_frame)). The reply
//! fills smoltcp's neighbour cache as any reply does, and a socket waiting
//! for that neighbour sends at its next poll.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Ipv4Address, Ipv4Cidr,
};

/// Bytes of an Ethernet frame carrying an ARP request for IPv4.
pub const REQUEST_LEN: usize = 14 + 28;

/// An ARP request from `mac`/`ip` for `target`, broadcast.
pub fn request(mac: EthernetAddress, ip: Ipv4Address, target: Ipv4Address) -> [u8; REQUEST_LEN] {
    let mut frame = [0u8; REQUEST_LEN];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr { src_addr: mac, dst_addr: EthernetAddress::BROADCAST, ethertype: EthernetProtocol::Arp }.emit(&mut eth);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    frame
}

/// Whom this interface asked for lately, so that a guest talking to the
/// same few neighbours asks once per [`Asker::REASK`], not per socket.
pub struct Asker {
    net: Ipv4Cidr,
    recent: [(Ipv4Address, Instant); Asker::RECENT],
    next: usize,
}

impl Asker {
    /// Addresses remembered: half the neighbour cache the libos gives
    /// smoltcp (16), so an address remembered here is most likely still in
    /// smoltcp's cache (its misses fall back to smoltcp's own request).
    pub const RECENT: usize = 8;
    /// How long an answer is trusted to be cached (smoltcp keeps one 60 s).
    pub const REASK: Duration = Duration::from_secs(5);

    /// For the interface at `ip`/`prefix`.
    pub fn new(ip: Ipv4Address, prefix: u8) -> Self {
        let never = Instant::from_micros(i64::MIN / 2);
        Self { net: Ipv4Cidr::new(ip, prefix.min(32)), recent: [(Ipv4Address::UNSPECIFIED, never); Self::RECENT], next: 0 }
    }

    /// Whether to ask for `target` now, and if so notes that it was asked:
    /// only a unicast address of this interface's own network, other than
    /// its own, not asked about in the last [`Asker::REASK`].
    pub fn should_ask(&mut self, target: Ipv4Address, now: Instant) -> bool {
        let net = self.net.network();
        let on_link = self.net.contains_addr(&target)
            && target != self.net.address()
            && target != net.address()
            && net.broadcast() != Some(target)
            && !target.is_multicast()
            && !target.is_unspecified();
        if !on_link {
            return false;
        }
        if let Some(seen) = self.recent.iter_mut().find(|(ip, _)| *ip == target) {
            if now < seen.1 + Self::REASK {
                return false;
            }
            seen.1 = now;
            return true;
        }
        self.recent[self.next] = (target, now);
        self.next = (self.next + 1) % Self::RECENT;
        true
    }
}
