//! Internet checksums for frames that cross the uplink: guests leave them
//! unfilled (`abi::ring::flags::TX_CSUM_BLANK`), since between guests the
//! hypervisor copies the bytes itself and nothing can corrupt them.
//!
//! - [`fill`]: a guest's frame leaving for the host gets its IPv4 header
//!   checksum and its TCP, UDP or ICMP checksum computed here.
//! - [`verify`]: a frame from the host has them checked here before a
//!   guest gets it (flagged `RX_CSUM_OK`), so guests verify nothing.
//!
//! Rules:
//! - Frames are untrusted bytes, read through checked `get`s; nothing here
//!   panics or indexes out of bounds on any input (host-tested over every
//!   cut of real packets; fuzz target `csum`).
//! - Only untagged Ethernet IPv4 is looked at (the guests have no IPv6 and
//!   the switch drops their tagged frames). IPv4 options are covered (the
//!   header is IHL words long). Bytes after the IPv4 total length (Ethernet
//!   padding) are not part of any checksum.
//! - A fragment (MF set or an offset) gets its IPv4 header checksum only:
//!   a TCP or UDP checksum covers the whole datagram, which no single
//!   fragment holds. Guests do not fragment (smoltcp is built without
//!   fragmentation) and drop fragments they receive.
//! - Malformed (an IHL below 5, a header or total length past the frame, a
//!   TCP/UDP/ICMP header cut short, a UDP length that disagrees with the
//!   IP payload): [`fill`] leaves the frame unchanged (the host's stack
//!   drops it as it would any malformed packet); [`verify`] says `Bad`
//!   (the hypervisor drops it: a guest that trusts the flag must never
//!   see it).
//! - A UDP checksum of zero means "none" (RFC 768): [`fill`] writes
//!   `0xffff` for a computed zero, [`verify`] accepts a zero.

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// What [`fill`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The IPv4 header and its TCP/UDP/ICMP checksum (if it carries one).
    Filled,
    /// An IPv4 fragment: the IP header checksum only.
    Fragment,
    /// Not an IPv4 frame: nothing to fill.
    NotIpv4,
    /// Not parseable: left unchanged.
    Malformed,
}

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every checksum it has is right (or it has none: ARP, UDP with 0).
    Good,
    /// An IPv4 fragment whose header checksum is right; its TCP/UDP
    /// checksum cannot be checked from one fragment.
    Fragment,
    /// A wrong checksum, or an IPv4 frame that cannot be parsed.
    Bad,
}

/// An IPv4 packet inside a frame, its lengths checked.
struct Ipv4 {
    /// Offset of the IP header in the frame.
    at: usize,
    header_len: usize,
    total_len: usize,
    protocol: u8,
    fragment: bool,
}

enum Parsed {
    NotIpv4,
    Malformed,
    Ipv4(Ipv4),
}

fn parse(frame: &[u8]) -> Parsed {
    if frame.get(12..14) != Some(&ETHERTYPE_IPV4[..]) {
        return Parsed::NotIpv4;
    }
    let at = ETH_HEADER;
    let Some(&vihl) = frame.get(at) else { return Parsed::Malformed };
    let header_len = usize::from(vihl & 0xf) * 4;
    let total_len = match frame.get(at + 2..at + 4) {
        Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
        None => return Parsed::Malformed,
    };
    if vihl >> 4 != 4 || header_len < 20 || total_len < header_len || at + total_len > frame.len() {
        return Parsed::Malformed;
    }
    let (Some(flags_off), Some(&protocol)) = (frame.get(at + 6..at + 8), frame.get(at + 9)) else {
        return Parsed::Malformed;
    };
    let flags_off = u16::from_be_bytes([flags_off[0], flags_off[1]]);
    let fragment = flags_off & 0x2000 != 0 || flags_off & 0x1fff != 0;
    Parsed::Ipv4(Ipv4 { at, header_len, total_len, protocol, fragment })
}

/// The one's-complement sum of `bytes` (a trailing odd byte padded with
/// zero) added to `sum`, not yet folded.
fn add(mut sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // Four 16-bit words in one go; the carry out is added back in.
        let (s, carry) = sum.overflowing_add(w);
        sum = s + u64::from(carry);
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        sum = add_word(sum, u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        sum = add_word(sum, u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn add_word(sum: u64, w: u16) -> u64 {
    let (s, carry) = sum.overflowing_add(u64::from(w));
    s + u64::from(carry)
}

/// Folds a sum to 16 bits and complements it: the checksum field's value.
fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sum of the TCP/UDP pseudo-header for `ip` carrying `len` bytes.
fn pseudo(frame: &[u8], ip: &Ipv4, len: usize) -> u64 {
    let addrs = frame.get(ip.at + 12..ip.at + 20).unwrap_or(&[]);
    add_word(add_word(add(0, addrs), u16::from(ip.protocol)), len as u16)
}

/// Where the transport checksum of `ip` is and what it covers: (offset of
/// the checksum field, payload range, whether a pseudo-header is summed),
/// or `None` if the header is cut short; `Some(None)` for a protocol with
/// no checksum here.
type Transport = Option<(usize, core::ops::Range<usize>, bool)>;

fn transport(frame: &[u8], ip: &Ipv4) -> Option<Transport> {
    let start = ip.at + ip.header_len;
    let end = ip.at + ip.total_len;
    let len = end - start;
    match ip.protocol {
        PROTO_TCP => (len >= 20).then_some(Some((start + 16, start..end, true))),
        PROTO_UDP => {
            let b = frame.get(start + 4..start + 6)?;
            let udp_len = usize::from(u16::from_be_bytes([b[0], b[1]]));
            (len >= 8 && udp_len == len).then_some(Some((start + 6, start..end, true)))
        }
        PROTO_ICMP => (len >= 4).then_some(Some((start + 2, start..end, false))),
        _ => Some(None),
    }
}

fn put(frame: &mut [u8], at: usize, v: u16) {
    if let Some(b) = frame.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

fn get(frame: &[u8], at: usize) -> u16 {
    frame.get(at..at + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// The checksum of `range` of `frame` with the 2-byte field at `field`
/// (an even offset into the range) left out, plus the pseudo-header if
/// `pseudo_header`. (Leaving the field out, rather than adding its
/// complement back, keeps an all-zero sum from coming out as the other
/// zero, 0xffff, which would then verify wrong.)
fn sum_without(frame: &[u8], ip: &Ipv4, field: usize, range: core::ops::Range<usize>, pseudo_header: bool) -> u16 {
    let len = range.len();
    let mut sum = if pseudo_header { pseudo(frame, ip, len) } else { 0 };
    sum = add(sum, frame.get(range.start..field).unwrap_or(&[]));
    sum = add(sum, frame.get(field + 2..range.end).unwrap_or(&[]));
    finish(sum)
}

/// Fills the IPv4 header checksum and the TCP, UDP or ICMP checksum of an
/// Ethernet frame in place (see the module's rules).
pub fn fill(frame: &mut [u8]) -> Filled {
    let ip = match parse(frame) {
        Parsed::NotIpv4 => return Filled::NotIpv4,
        Parsed::Malformed => return Filled::Malformed,
        Parsed::Ipv4(ip) => ip,
    };
    let l4 = if ip.fragment { Some(None) } else { transport(frame, &ip) };
    let Some(l4) = l4 else { return Filled::Malformed };
    let h = sum_without(frame, &ip, ip.at + 10, ip.at..ip.at + ip.header_len, false);
    put(frame, ip.at + 10, h);
    if ip.fragment {
        return Filled::Fragment;
    }
    if let Some((field, range, pseudo_header)) = l4 {
        let mut c = sum_without(frame, &ip, field, range, pseudo_header);
        if ip.protocol == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        put(frame, field, c);
    }
    Filled::Filled
}

/// Checks the IPv4 header checksum and the TCP, UDP or ICMP checksum of a
/// frame from the host (see the module's rules).
pub fn verify(frame: &[u8]) -> Check {
    let ip = match parse(frame) {
        Parsed::NotIpv4 => return Check::Good,
        Parsed::Malformed => return Check::Bad,
        Parsed::Ipv4(ip) => ip,
    };
    let header = frame.get(ip.at..ip.at + ip.header_len).unwrap_or(&[]);
    if finish(add(0, header)) != 0 {
        return Check::Bad;
    }
    if ip.fragment {
        return Check::Fragment;
    }
    match transport(frame, &ip) {
        None => Check::Bad,
        Some(None) => Check::Good,
        Some(Some((field, _, _))) if ip.protocol == PROTO_UDP && get(frame, field) == 0 => Check::Good,
        Some(Some((_, range, pseudo_header))) => {
            let len = range.len();
            let mut sum = if pseudo_header { pseudo(frame, &ip, len) } else { 0 };
            sum = add(sum, frame.get(range).unwrap_or(&[]));
            if finish(sum) == 0 { Check::Good } else { Check::Bad }
        }
    }
}

/// The RX flags for a frame from the host that [`verify`] did not call
/// `Bad`: `RX_CSUM_OK` unless it is an IPv4 fragment. Cheap (a few header
/// bytes), for frames retried from a guest's queue.
pub fn host_rx_flags(frame: &[u8]) -> u16 {
    match parse(frame) {
        Parsed::Ipv4(ip) if ip.fragment => 0,
        _ => abi::ring::flags::RX_CSUM_OK,
    }
}

#[cfg(test)]
mod tests;
