use super::*;
use alloc::vec;
use alloc::vec::Vec;

/// The textbook sum: 16-bit big-endian words one by one, folded at the end.
fn naive(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, b) in bytes.iter().enumerate() {
        sum += if i % 2 == 0 { u32::from(*b) << 8 } else { u32::from(*b) };
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An Ethernet frame carrying IPv4 (with `options` words of options)
/// protocol `proto` and `payload` (the transport header and data), plus 6
/// bytes of Ethernet padding; every checksum zero.
fn packet(proto: u8, options: usize, payload: &[u8]) -> Vec<u8> {
    let hl = 20 + 4 * options;
    let total = hl + payload.len();
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x40 | (hl / 4) as u8, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
    f.extend((0..4 * options).map(|i| if i == 0 { 0x94 } else { i as u8 }));
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0xee; 6]);
    f
}

fn tcp(data_len: usize) -> Vec<u8> {
    let mut t = vec![0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
    t.extend((0..data_len).map(|i| (i * 7 + 3) as u8));
    t
}

fn udp(data_len: usize) -> Vec<u8> {
    let len = 8 + data_len;
    let mut u = vec![0x13, 0x88, 0x00, 0x07, (len >> 8) as u8, len as u8, 0, 0];
    u.extend((0..data_len).map(|i| (i * 13 + 1) as u8));
    u
}

fn icmp(data_len: usize) -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    i.extend((0..data_len).map(|i| i as u8));
    i
}

/// Checks `f`'s checksums with the textbook sum: the IP header sums to
/// 0xffff, and so does the transport segment with its pseudo-header.
fn naive_ok(f: &[u8]) -> bool {
    let hl = usize::from(f[14] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let (proto, seg) = (f[23], &f[14 + hl..14 + total]);
    let mut pseudo = f[26..34].to_vec();
    pseudo.extend_from_slice(&[0, proto, (seg.len() >> 8) as u8, seg.len() as u8]);
    pseudo.extend_from_slice(seg);
    let l4 = if proto == PROTO_ICMP { naive(seg) } else { naive(&pseudo) };
    naive(&f[14..14 + hl]) == 0xffff && l4 == 0xffff
}

#[test]
fn the_textbook_ipv4_header_sums_right() {
    // Wikipedia's "IPv4 header checksum" example: the checksum is 0xb861.
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ]);
    f.resize(14 + 0x73, 0);
    // Its UDP length field (zero here) disagrees: the header is filled, the
    // rest is malformed and left alone.
    assert_eq!(fill(&mut f), Filled::Malformed);
    assert_eq!(&f[24..26], &[0, 0]);
    f[14 + 20 + 5] = 0x73 - 20;
    assert_eq!(fill(&mut f), Filled::Filled);
    assert_eq!(&f[24..26], &[0xb8, 0x61]);
    assert_eq!(verify(&f), Check::Good);
}

#[test]
fn filled_frames_verify_and_match_the_textbook_sum() {
    for options in [0, 1, 10] {
        for (proto, seg) in [
            (PROTO_TCP, tcp(0)),
            (PROTO_TCP, tcp(1)),
            (PROTO_TCP, tcp(1447)),
            (PROTO_TCP, tcp(60_000)),
            (PROTO_UDP, udp(0)),
            (PROTO_UDP, udp(333)),
            (PROTO_ICMP, icmp(56)),
            (PROTO_ICMP, icmp(57)),
        ] {
            let mut f = packet(proto, options, &seg);
            assert_eq!(verify(&f), Check::Bad, "zero sums are wrong");
            assert_eq!(fill(&mut f), Filled::Filled);
            assert!(naive_ok(&f), "proto {proto}, {} bytes, {options} option words", seg.len());
            assert_eq!(verify(&f), Check::Good);
            // Filling again changes nothing; any byte of the packet
            // changed is caught (the Ethernet padding is not covered).
            let g = f.clone();
            assert_eq!(fill(&mut f), Filled::Filled);
            assert_eq!(f, g);
            for at in (14..f.len()).step_by(97) {
                let mut h = f.clone();
                h[at] ^= 0x10;
                let covered = at < f.len() - 6;
                assert_eq!(verify(&h) == Check::Good, !covered, "byte {at} of {}", f.len());
            }
        }
    }
}

#[test]
fn udp_zero_means_none_and_a_computed_zero_is_sent_as_ffff() {
    let mut f = packet(PROTO_UDP, 0, &udp(20));
    f[42..44].copy_from_slice(&[0, 0]);
    assert_eq!(fill(&mut f), Filled::Filled);
    let c = u16::from_be_bytes([f[40], f[41]]);
    // Two data bytes set to the checksum make the sum 0xffff: a zero result.
    f[42..44].copy_from_slice(&c.to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(fill(&mut f), Filled::Filled);
    assert_eq!(&f[40..42], &[0xff, 0xff]);
    assert_eq!(verify(&f), Check::Good);
    f[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(verify(&f), Check::Good, "no checksum");
    f[50] ^= 1;
    assert_eq!(verify(&f), Check::Good, "no checksum covers nothing");
}

#[test]
fn fragments_get_their_ip_header_only() {
    for frag in [[0x20, 0x00], [0x00, 0x10], [0x20, 0x10]] {
        let mut f = packet(PROTO_UDP, 0, &udp(100));
        f[20..22].copy_from_slice(&frag);
        assert_eq!(fill(&mut f), Filled::Fragment);
        assert_eq!(&f[40..42], &[0, 0], "UDP checksum untouched");
        assert_eq!(verify(&f), Check::Fragment);
        assert_eq!(host_rx_flags(&f), 0);
        f[15] ^= 1;
        assert_eq!(verify(&f), Check::Bad);
    }
    assert_eq!(host_rx_flags(&packet(PROTO_UDP, 0, &udp(1))), abi::ring::flags::RX_CSUM_OK);
}

#[test]
fn other_frames_pass_and_malformed_ones_are_left_alone_or_refused() {
    // ARP, IPv6, a VLAN tag: not IPv4, nothing to do.
    for ethertype in [[0x08, 0x06], [0x86, 0xdd], [0x81, 0x00]] {
        let mut f = packet(PROTO_TCP, 0, &tcp(10));
        f[12..14].copy_from_slice(&ethertype);
        let g = f.clone();
        assert_eq!(fill(&mut f), Filled::NotIpv4);
        assert_eq!((f == g, verify(&f)), (true, Check::Good));
    }
    // An unknown protocol: the IP header only.
    let mut f = packet(99, 0, &[1, 2, 3]);
    assert_eq!(fill(&mut f), Filled::Filled);
    assert_eq!(verify(&f), Check::Good);
    // Malformed: version, IHL, total length, cut transport headers.
    let cases: [(usize, u8); 4] = [(14, 0x65), (14, 0x44), (16, 0xff), (17, 19)];
    for (at, v) in cases {
        let mut f = packet(PROTO_TCP, 0, &tcp(10));
        f[at] = v;
        let g = f.clone();
        assert_eq!(fill(&mut f), Filled::Malformed, "byte {at} = {v}");
        assert_eq!((f == g, verify(&f)), (true, Check::Bad));
    }
    for (proto, seg) in [(PROTO_TCP, &tcp(0)[..19]), (PROTO_UDP, &udp(0)[..7]), (PROTO_ICMP, &icmp(0)[..3])] {
        let mut f = packet(proto, 0, seg);
        let g = f.clone();
        assert_eq!(fill(&mut f), Filled::Malformed);
        assert_eq!((f == g, verify(&f)), (true, Check::Bad));
    }
}

#[test]
fn every_cut_of_a_frame_is_handled_without_panicking() {
    for (proto, seg) in [(PROTO_TCP, tcp(40)), (PROTO_UDP, udp(40)), (PROTO_ICMP, icmp(40))] {
        let mut whole = packet(proto, 3, &seg);
        fill(&mut whole);
        for cut in 0..whole.len() {
            let mut f = whole[..cut].to_vec();
            let g = f.clone();
            let filled = fill(&mut f);
            let check = verify(&g);
            // Past the IP total length only padding is cut: still whole.
            let intact = cut >= whole.len() - 6;
            assert_eq!(filled == Filled::Filled, intact, "cut at {cut}: {filled:?}");
            if cut >= 14 && !intact {
                assert_eq!((filled, f == g, check), (Filled::Malformed, true, Check::Bad), "cut at {cut}");
            }
        }
    }
}
