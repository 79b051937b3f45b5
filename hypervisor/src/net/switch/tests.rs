use super::*;
use alloc::vec;

/// A guest MAC (locally administered, unicast).
fn mac(n: u32) -> Mac {
    let b = n.to_be_bytes();
    [0x02, 0, b[0], b[1], b[2], b[3]]
}

/// A guest's IPv4 address (unique for every `n` below 2^24).
fn ip(n: u32) -> Ipv4 {
    let b = n.to_be_bytes();
    [10, b[1], b[2], b[3]]
}

/// An outside station's MAC (QEMU's prefix).
fn outside(n: u8) -> Mac {
    [0x52, 0x54, 0, 0x12, 0x34, n]
}

/// An outside station's IPv4 address (QEMU's own, or beyond it).
fn outside_ip(n: u8) -> Ipv4 {
    [192, 168, 7, n]
}

const MCAST: Mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
const SEC: u64 = 1_000_000_000;

/// A frame of an uninspected EtherType (local experimental).
fn frame(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f.truncate(len);
    f
}

/// An IPv4 frame (a UDP header's worth of payload, 42 bytes, or `len`)
/// from `src_ip` to 10.255.0.1.
fn ipv4(dst: Mac, src: Mac, src_ip: Ipv4, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(42)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14..26].copy_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[26..30].copy_from_slice(&src_ip);
    f[30..34].copy_from_slice(&[10, 255, 0, 1]);
    f.truncate(len);
    f
}

/// An Ethernet/IPv4 ARP frame (42 bytes, or `len`): `op` 1 request, 2
/// reply; sender `sha`/`spa`, target `tpa`.
fn arp(dst: Mac, src: Mac, op: u8, sha: Mac, spa: Ipv4, tpa: Ipv4, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(42)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[38..42].copy_from_slice(&tpa);
    f.truncate(len);
    f
}

/// Sends a frame; returns the verdict and the receivers (of the frame,
/// or of the switch's reply), sorted.
fn send(sw: &mut Switch, from: PortId, f: &[u8], now: u64) -> (Verdict, Vec<PortId>) {
    let mut got = Vec::new();
    let v = sw.forward(from, f, now, &mut |p, _| {
        got.push(p);
        true
    });
    got.sort();
    (v, got)
}

/// What [`ask`] saw: the verdict, the replies the switch made (with the
/// port each went to) and the ports the request itself went to.
type Asked = (Verdict, Vec<(PortId, Vec<u8>)>, Vec<PortId>);

/// Sends an ARP request; what happened to it.
fn ask(sw: &mut Switch, from: PortId, f: &[u8], now: u64) -> Asked {
    let (mut got, mut told) = (Vec::new(), Vec::new());
    let v = sw.forward(from, f, now, &mut |p, what| {
        match what {
            Out::Reply(r) => got.push((p, r.to_vec())),
            Out::Frame => told.push(p),
        }
        true
    });
    (v, got, told)
}

fn sorted(mut v: Vec<PortId>) -> Vec<PortId> {
    v.sort();
    v
}

fn fwd(copies: u32) -> Verdict {
    Verdict::Forwarded { copies }
}

#[test]
fn a_guests_own_mac_is_known_from_the_start_and_never_ages() {
    let mut sw = Switch::new();
    let a = sw.add_port(1, mac(1), ip(1)).unwrap();
    let b = sw.add_port(1, mac(2), ip(2)).unwrap();
    let c = sw.add_port(1, mac(3), ip(3)).unwrap();
    assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), 60), 0), (fwd(1), vec![b]), "first frame already unicast");
    let much_later = 100 * AGE_NS;
    assert_eq!(send(&mut sw, c, &frame(mac(1), mac(3), 60), much_later), (fwd(1), vec![a]));
    assert_eq!(sw.lookup(1, mac(2), u64::MAX), Some(b));
    assert_eq!(sw.learned_count(), 0, "guests' frames teach nothing new");
}

#[test]
fn learning_floods_first_then_unicasts_both_ways() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let x = outside(9);
    // A guest sends to an outside station nobody has seen: to the uplink
    // only (no guest has that MAC: the switch knows all of theirs).
    assert_eq!(send(&mut sw, a, &frame(x, mac(1), 60), SEC), (fwd(1), vec![up]));
    assert_eq!(sw.lookup(0, x, SEC), None);
    // The reply comes in on the uplink, unicast to A; X is learned.
    assert_eq!(send(&mut sw, up, &frame(mac(1), x, 60), 2 * SEC), (fwd(1), vec![a]));
    assert_eq!(sw.lookup(0, x, 2 * SEC), Some(up));
    assert_eq!(sw.learned_count(), 1);
    // From now on both directions are unicast.
    for t in 3..10 {
        assert_eq!(send(&mut sw, a, &frame(x, mac(1), 100), t * SEC), (fwd(1), vec![up]));
        assert_eq!(send(&mut sw, up, &frame(mac(1), x, 100), t * SEC), (fwd(1), vec![a]));
    }
    assert_eq!(sw.stats(b).unwrap().tx_frames, 0, "B saw none of it");
}

#[test]
fn learned_entries_age_out_and_flood_again() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let x = outside(1);
    let t0 = 5 * SEC;
    send(&mut sw, up, &frame(BROADCAST, x, 60), t0);
    assert_eq!(send(&mut sw, a, &frame(x, mac(1), 60), t0 + AGE_NS - 1), (fwd(1), vec![up]));
    // Aged: unknown again, so to the uplink alone (never to B).
    assert_eq!(send(&mut sw, a, &frame(x, mac(1), 60), t0 + AGE_NS), (fwd(1), vec![up]));
    assert_eq!(sw.lookup(0, x, t0 + AGE_NS), None);
    // Seen again: learned again, and each sighting restarts the clock.
    let t1 = t0 + AGE_NS + SEC;
    send(&mut sw, up, &frame(mac(1), x, 60), t1);
    send(&mut sw, up, &frame(mac(1), x, 60), t1 + AGE_NS / 2);
    assert_eq!(send(&mut sw, a, &frame(x, mac(1), 60), t1 + AGE_NS + 1), (fwd(1), vec![up]));
    // The sweep forgets aged entries; the guests' own entries stay.
    assert_eq!(sw.expire(t1 + 2 * AGE_NS), 1);
    assert_eq!(sw.learned_count(), 0);
    assert_eq!(sw.lookup(0, mac(2), t1 + 2 * AGE_NS), Some(b));
    // A clock that steps back a little does not age or panic anything.
    send(&mut sw, up, &frame(mac(1), x, 60), 10 * AGE_NS);
    assert_eq!(sw.lookup(0, x, 10 * AGE_NS - SEC), Some(up));
}

#[test]
fn forward_sweeps_aged_entries_by_itself() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    for n in 0..10 {
        send(&mut sw, up, &frame(mac(1), outside(n), 60), 0);
    }
    assert_eq!(sw.learned_count(), 10);
    send(&mut sw, a, &frame(BROADCAST, mac(1), 60), 2 * AGE_NS);
    assert_eq!(sw.learned_count(), 0);
}

#[test]
fn tenants_are_separate_broadcast_domains() {
    let mut sw = Switch::new();
    let a1 = sw.add_port(1, mac(1), ip(1)).unwrap();
    let a2 = sw.add_port(1, mac(2), ip(2)).unwrap();
    let b1 = sw.add_port(2, mac(3), ip(3)).unwrap();
    let b2 = sw.add_port(2, mac(4), ip(4)).unwrap();
    // Broadcast and multicast stay in the tenant.
    assert_eq!(send(&mut sw, a1, &frame(BROADCAST, mac(1), 60), 0), (fwd(1), vec![a2]));
    assert_eq!(send(&mut sw, a1, &frame(MCAST, mac(1), 60), 0), (fwd(1), vec![a2]));
    assert_eq!(send(&mut sw, b1, &frame(BROADCAST, mac(3), 60), 0), (fwd(1), vec![b2]));
    // Unknown unicast goes nowhere in a tenant without an uplink: every
    // MAC there is a guest's, and the switch knows them.
    assert_eq!(send(&mut sw, a1, &frame(mac(99), mac(1), 60), 0), (fwd(0), vec![]));
    // Unicast to a MAC of the other tenant (that B knows) is unknown in A's tenant.
    assert_eq!(send(&mut sw, a1, &frame(mac(3), mac(1), 60), 0), (fwd(0), vec![]));
    assert_eq!(send(&mut sw, b1, &frame(mac(1), mac(3), 60), 0), (fwd(0), vec![]));
    assert_eq!((sw.stats(b1).unwrap().tx_frames, sw.stats(b2).unwrap().tx_frames), (0, 1), "only B's broadcast");
    // The same MAC in two tenants is two stations.
    let a3 = sw.add_port(1, mac(7), ip(7)).unwrap();
    let b3 = sw.add_port(2, mac(7), ip(7)).unwrap();
    assert_eq!(send(&mut sw, a1, &frame(mac(7), mac(1), 60), 0), (fwd(1), vec![a3]));
    assert_eq!(send(&mut sw, b1, &frame(mac(7), mac(3), 60), 0), (fwd(1), vec![b3]));
    assert_eq!(send(&mut sw, a3, &frame(BROADCAST, mac(7), 60), 0), (fwd(2), sorted(vec![a1, a2])));
    assert_eq!(send(&mut sw, b3, &frame(BROADCAST, mac(7), 60), 0), (fwd(2), sorted(vec![b1, b2])));
    // Removing one leaves the other.
    sw.remove_port(a3).unwrap();
    assert_eq!(sw.lookup(1, mac(7), 0), None);
    assert_eq!(sw.lookup(2, mac(7), 0), Some(b3));
    // An outside station learned in the uplink's tenant is unknown in the other.
    let up = sw.add_uplink(1).unwrap();
    send(&mut sw, up, &frame(BROADCAST, outside(1), 60), 0);
    assert_eq!(send(&mut sw, b1, &frame(outside(1), mac(3), 60), 0), (fwd(0), vec![]));
    assert_eq!(sw.stats(up).unwrap().tx_frames, 0);
}

#[test]
fn spoofed_frames_are_dropped_counted_and_do_not_poison_the_table() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let m = sw.add_port(0, mac(2), ip(2)).unwrap();
    let other = sw.add_port(3, mac(3), ip(3)).unwrap();
    // The mallory port claims to be A, and to be an outside station.
    for src in [mac(1), outside(1), mac(3)] {
        assert_eq!(send(&mut sw, m, &frame(BROADCAST, src, 60), 0), (Verdict::Dropped(DropReason::Spoofed), vec![]));
    }
    assert_eq!(sw.stats(m).unwrap().drop_spoofed, 3);
    assert_eq!(sw.stats(m).unwrap().rx_frames, 0);
    assert_eq!(sw.lookup(0, mac(1), 0), Some(a), "not poisoned");
    assert_eq!(sw.lookup(0, outside(1), 0), None);
    assert_eq!(send(&mut sw, up, &frame(mac(1), outside(2), 60), 0), (fwd(1), vec![a]));
    // The outside world may not claim a local guest's MAC either...
    assert_eq!(send(&mut sw, up, &frame(mac(2), mac(1), 60), 0), (Verdict::Dropped(DropReason::Spoofed), vec![]));
    assert_eq!(sw.lookup(0, mac(1), 0), Some(a));
    // ...but a guest of another tenant is no local guest here.
    assert_eq!(send(&mut sw, up, &frame(mac(1), mac(3), 60), 0), (fwd(1), vec![a]));
    assert_eq!(sw.lookup(3, mac(3), 0), Some(other));
    assert_eq!(sw.totals().drop_spoofed, 4);
    assert_eq!(sw.stats(a).unwrap().tx_frames, 2);
}

#[test]
fn forged_ipv4_sources_are_dropped_and_counted() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let m = sw.add_port(0, mac(2), ip(2)).unwrap();
    let drop = (Verdict::Dropped(DropReason::SpoofedIp), vec![]);
    // Mallory, with its own MAC, claims A's address, an outside one,
    // the unspecified one and a broadcast one.
    for src in [ip(1), outside_ip(1), [0; 4], [255; 4], [10, 0, 255, 255]] {
        assert_eq!(send(&mut sw, m, &ipv4(BROADCAST, mac(2), src, 60), 0), drop, "{src:?}");
        assert_eq!(send(&mut sw, m, &ipv4(mac(1), mac(2), src, 60), 0), drop, "{src:?}");
    }
    let s = sw.stats(m).unwrap();
    assert_eq!((s.drop_spoofed_ip, s.spoofed(), s.rx_frames), (10, 10, 0));
    assert_eq!(sw.totals().drop_spoofed_ip, 10);
    assert_eq!(sw.stats(a).unwrap().tx_frames, 0, "A got none of them");
    // Its own address goes through, unicast and broadcast.
    assert_eq!(send(&mut sw, m, &ipv4(mac(1), mac(2), ip(2), 60), 0), (fwd(1), vec![a]));
    assert_eq!(send(&mut sw, m, &ipv4(BROADCAST, mac(2), ip(2), 42), 0), (fwd(2), sorted(vec![up, a])));
    assert_eq!(sw.stats(m).unwrap().rx_frames, 2);
}

#[test]
fn forged_arp_senders_are_dropped_and_legitimate_arp_passes() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let m = sw.add_port(0, mac(2), ip(2)).unwrap();
    let drop = (Verdict::Dropped(DropReason::SpoofedArp), vec![]);
    // The attack that worked: Mallory's own MAC everywhere, A's address
    // as the sender's: gratuitous, as a reply to A, as a request.
    assert_eq!(send(&mut sw, m, &arp(BROADCAST, mac(2), 2, mac(2), ip(1), ip(1), 42), 0), drop);
    assert_eq!(send(&mut sw, m, &arp(mac(1), mac(2), 2, mac(2), ip(1), ip(1), 60), 0), drop);
    assert_eq!(send(&mut sw, m, &arp(BROADCAST, mac(2), 1, mac(2), ip(1), ip(3), 42), 0), drop);
    // QEMU's address (the gateway) is no more Mallory's than A's is.
    assert_eq!(send(&mut sw, m, &arp(BROADCAST, mac(2), 2, mac(2), outside_ip(1), outside_ip(1), 42), 0), drop);
    // Its own address with another MAC as the sender's, and an ARP probe.
    assert_eq!(send(&mut sw, m, &arp(BROADCAST, mac(2), 2, mac(1), ip(2), ip(2), 42), 0), drop);
    assert_eq!(send(&mut sw, m, &arp(BROADCAST, mac(2), 1, mac(2), [0; 4], ip(1), 42), 0), drop);
    let s = sw.stats(m).unwrap();
    assert_eq!((s.drop_spoofed_arp, s.spoofed(), s.rx_frames), (6, 6, 0));
    assert_eq!((sw.stats(a).unwrap().tx_frames, sw.stats(up).unwrap().tx_frames), (0, 0));
    // The real thing: A asks for M (broadcast; the switch answers A and
    // tells M), M answers A anyway (unicast), and announces itself
    // (gratuitous: to the host only).
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(1), ip(2), 42), 0), (Verdict::Answered, vec![a, m]));
    assert_eq!(send(&mut sw, m, &arp(mac(1), mac(2), 2, mac(2), ip(2), ip(1), 42), 0), (fwd(1), vec![a]));
    assert_eq!(send(&mut sw, m, &arp(BROADCAST, mac(2), 2, mac(2), ip(2), ip(2), 60), 0), (fwd(1), vec![up]));
    assert_eq!(sw.totals().drop_spoofed_arp, 6);
    assert_eq!(sw.totals().rx_frames, 3);
}

/// Checks every field of the switch's ARP reply: `mac` is at `at`, to
/// the requester `to` (its Ethernet source and sender MAC) at `to_ip`.
fn assert_reply(r: &[u8], mac: Mac, at: Ipv4, to: Mac, to_ip: Ipv4) {
    assert_eq!(r.len(), 60, "padded to Ethernet's shortest frame");
    assert_eq!(&r[0..6], &to, "Ethernet destination: the requester");
    assert_eq!(&r[6..12], &mac, "Ethernet source: the guest asked for");
    assert_eq!(&r[12..14], &[0x08, 0x06], "EtherType ARP");
    assert_eq!(&r[14..20], &[0, 1, 0x08, 0x00, 6, 4], "Ethernet/IPv4");
    assert_eq!(&r[20..22], &[0, 2], "a reply");
    assert_eq!((&r[22..28], &r[28..32]), (&mac[..], &at[..]), "sender: the guest asked for");
    assert_eq!((&r[32..38], &r[38..42]), (&to[..], &to_ip[..]), "target: the requester");
    assert!(r[42..].iter().all(|&b| b == 0), "zero padding");
}

#[test]
fn the_switch_answers_arp_for_the_tenants_guests_to_the_requester_only() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let c = sw.add_port(1, mac(3), ip(3)).unwrap();
    let d = sw.add_port(1, mac(4), ip(4)).unwrap();
    let q = outside(1);
    // A asks for B, broadcast and unicast (a cache refresh): answered to A,
    // and the request goes to B only (B learns A from it).
    for dst in [BROADCAST, mac(2)] {
        let (v, replies, told) = ask(&mut sw, a, &arp(dst, mac(1), 1, mac(1), ip(1), ip(2), 42), 0);
        assert_eq!((v, told), (Verdict::Answered, vec![b]));
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, a);
        assert_reply(&replies[0].1, mac(2), ip(2), mac(1), ip(1));
    }
    let (sa, sb) = (sw.stats(a).unwrap(), sw.stats(b).unwrap());
    assert_eq!((sa.arp_answered, sa.rx_frames, sa.tx_frames, sa.tx_bytes, sa.unrouted), (2, 2, 2, 120, 0));
    assert_eq!((sb.rx_frames, sb.tx_frames, sb.tx_bytes, sb.arp_answered), (0, 2, 84, 0), "B heard both requests");
    assert_eq!(sw.stats(up).unwrap().tx_frames, 0, "nothing for the host");
    // QEMU asks for A (with a sender MAC of its own): the reply goes back
    // out through the uplink, to its Ethernet source.
    let (v, replies, told) = ask(&mut sw, up, &arp(BROADCAST, q, 1, outside(2), outside_ip(1), ip(1), 60), 0);
    assert_eq!((v, replies.len(), replies[0].0, told), (Verdict::Answered, 1, up, vec![a]));
    assert_eq!(&replies[0].1[0..6], &q);
    assert_eq!(&replies[0].1[32..38], &outside(2));
    assert_reply(&[&q[..], &replies[0].1[6..32], &q[..], &replies[0].1[38..]].concat(), mac(1), ip(1), q, outside_ip(1));
    assert_eq!(sw.stats(up).unwrap().arp_answered, 1);
    assert_eq!(sw.stats(a).unwrap().tx_frames, 3, "A heard QEMU's request");
    // A asks for C's address, which is another tenant's: not answered, to
    // the host only (the address may be out there).
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(1), ip(3), 42), 0), (fwd(1), vec![up]));
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(1), outside_ip(1), 42), 0), (fwd(1), vec![up]));
    assert_eq!(sw.stats(a).unwrap().arp_unknown, 2);
    // In tenant 1 (no uplink), C asks for D: answered; for A's address or
    // any other: nobody can have it, dropped and counted.
    let (v, replies, told) = ask(&mut sw, c, &arp(BROADCAST, mac(3), 1, mac(3), ip(3), ip(4), 42), 0);
    assert_eq!((v, replies[0].0, told), (Verdict::Answered, c, vec![d]));
    assert_reply(&replies[0].1, mac(4), ip(4), mac(3), ip(3));
    assert_eq!(send(&mut sw, c, &arp(BROADCAST, mac(3), 1, mac(3), ip(3), ip(1), 42), 0), (fwd(0), vec![]));
    assert_eq!(send(&mut sw, c, &arp(BROADCAST, mac(3), 1, mac(3), ip(3), outside_ip(1), 42), 0), (fwd(0), vec![]));
    let sc = sw.stats(c).unwrap();
    assert_eq!((sc.arp_answered, sc.arp_unknown, sc.unrouted), (1, 2, 2));
    assert_eq!((sw.stats(a).unwrap().tx_frames, sw.stats(d).unwrap().tx_frames), (3, 1));
    // Announcements: a guest's gratuitous request or reply goes to the
    // host only, or nowhere; the host's request for an address no guest
    // has (its own announcement, a probe) reaches no guest.
    assert_eq!(send(&mut sw, b, &arp(BROADCAST, mac(2), 1, mac(2), ip(2), ip(2), 42), 0), (fwd(1), vec![up]));
    assert_eq!(send(&mut sw, b, &arp(BROADCAST, mac(2), 2, mac(2), ip(2), ip(2), 42), 0), (fwd(1), vec![up]));
    assert_eq!(send(&mut sw, d, &arp(BROADCAST, mac(4), 1, mac(4), ip(4), ip(4), 42), 0), (fwd(0), vec![]));
    assert_eq!(send(&mut sw, up, &arp(BROADCAST, q, 1, q, outside_ip(1), outside_ip(1), 60), 0), (fwd(0), vec![]));
    assert_eq!(send(&mut sw, up, &arp(BROADCAST, q, 1, q, [0; 4], outside_ip(7), 60), 0), (fwd(0), vec![]));
    // The host's ARP replies (to a guest's question) still reach the guest.
    assert_eq!(send(&mut sw, up, &arp(mac(1), q, 2, q, outside_ip(1), ip(1), 60), 0), (fwd(1), vec![a]));
    // Forged requests are still dropped, and answer nothing.
    let drop = (Verdict::Dropped(DropReason::SpoofedArp), vec![]);
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(2), ip(2), 42), 0), drop);
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(2), ip(1), ip(2), 42), 0), drop);
    assert_eq!(send(&mut sw, up, &arp(BROADCAST, q, 1, q, ip(2), ip(1), 60), 0), drop);
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(1), ip(2), 41), 0), drop, "truncated");
    // A removed guest's address is answered no more.
    sw.remove_port(b).unwrap();
    assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(1), ip(2), 42), 0), (fwd(1), vec![up]));
    let t = sw.totals();
    assert_eq!((t.arp_answered, t.arp_unknown, t.drop_spoofed_arp), (4, 10, 4));
}

#[test]
fn truncated_or_malformed_ipv4_and_arp_are_dropped() {
    let mut sw = Switch::new();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let (bad_ip, bad_arp) = (Verdict::Dropped(DropReason::SpoofedIp), Verdict::Dropped(DropReason::SpoofedArp));
    // Too short for an IPv4 header (even with the source in it: 30..33).
    for len in [14, 15, 20, 26, 29, 30, 33] {
        assert_eq!(send(&mut sw, a, &ipv4(mac(2), mac(1), ip(1), len), 0).0, bad_ip, "{len}");
    }
    assert_eq!(send(&mut sw, a, &ipv4(mac(2), mac(1), ip(1), 34), 0), (fwd(1), vec![b]));
    // Not IPv4 inside: version 6, or a header length under 20 bytes.
    for first in [0x65, 0x44, 0x40, 0x05, 0x00] {
        let mut f = ipv4(mac(2), mac(1), ip(1), 60);
        f[14] = first;
        assert_eq!(send(&mut sw, a, &f, 0).0, bad_ip, "{first:#x}");
    }
    // ARP cut short, or not Ethernet/IPv4.
    for len in [14, 15, 21, 28, 32, 41] {
        assert_eq!(send(&mut sw, a, &arp(BROADCAST, mac(1), 1, mac(1), ip(1), ip(2), len), 0).0, bad_arp, "{len}");
    }
    for (at, v) in [(15, 6), (16, 0x86), (17, 0xdd), (18, 8), (19, 16)] {
        let mut f = arp(BROADCAST, mac(1), 1, mac(1), ip(1), ip(2), 42);
        f[at] = v;
        assert_eq!(send(&mut sw, a, &f, 0).0, bad_arp, "byte {at} = {v:#x}");
    }
    let s = sw.stats(a).unwrap();
    assert_eq!((s.drop_spoofed_ip, s.drop_spoofed_arp, s.rx_frames), (12, 11, 1));
    // Other EtherTypes are not inspected: IPv6, and anything else.
    let mut f = frame(mac(2), mac(1), 60);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(send(&mut sw, a, &f, 0), (fwd(1), vec![b]));
    assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), 14), 0), (fwd(1), vec![b]));
}

#[test]
fn vlan_tagged_frames_from_guests_are_dropped() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    for tag in [[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]] {
        // A tag in front of an ARP that claims B's address.
        let mut f = vec![0u8; 64];
        f[..12].copy_from_slice(&[BROADCAST, mac(1)].concat());
        f[12..14].copy_from_slice(&tag);
        f[14..16].copy_from_slice(&[0, 7]); // VLAN 7
        f[16..18].copy_from_slice(&[0x08, 0x06]);
        f[18..46].copy_from_slice(&arp(BROADCAST, mac(1), 2, mac(1), ip(2), ip(2), 42)[14..]);
        assert_eq!(send(&mut sw, a, &f, 0), (Verdict::Dropped(DropReason::Tagged), vec![]), "{tag:x?}");
        // From the uplink it goes through (no guest here reads tags).
        f[6..12].copy_from_slice(&outside(1));
        assert_eq!(send(&mut sw, up, &f, 0), (fwd(2), sorted(vec![a, b])), "{tag:x?}");
    }
    assert_eq!((sw.stats(a).unwrap().drop_tagged, sw.stats(a).unwrap().spoofed()), (3, 3));
    assert_eq!(sw.totals().drop_tagged, 3);
}

#[test]
fn the_uplink_cannot_claim_a_local_guests_address() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let elsewhere = sw.add_port(3, mac(3), ip(3)).unwrap();
    let q = outside(1);
    let drop = |why| (Verdict::Dropped(why), vec![]);
    // QEMU (or whatever is behind it) sending as A: IPv4 from A's
    // address, ARP with A's address or A's MAC as the sender's.
    assert_eq!(send(&mut sw, up, &ipv4(mac(2), q, ip(1), 60), 0), drop(DropReason::SpoofedIp));
    assert_eq!(send(&mut sw, up, &arp(mac(2), q, 2, q, ip(1), ip(2), 60), 0), drop(DropReason::SpoofedArp));
    assert_eq!(send(&mut sw, up, &arp(BROADCAST, q, 1, q, ip(1), ip(2), 60), 0), drop(DropReason::SpoofedArp));
    assert_eq!(send(&mut sw, up, &arp(BROADCAST, q, 2, mac(1), outside_ip(1), ip(2), 60), 0), drop(DropReason::SpoofedArp));
    assert_eq!(send(&mut sw, up, &ipv4(mac(2), q, ip(1), 30), 0), drop(DropReason::SpoofedIp), "truncated");
    let s = sw.stats(up).unwrap();
    assert_eq!((s.drop_spoofed_ip, s.drop_spoofed_arp, s.rx_frames), (2, 3, 0));
    assert_eq!(sw.lookup(0, q, 0), None, "a forged frame teaches the table nothing");
    assert_eq!((sw.stats(a).unwrap().tx_frames, sw.stats(b).unwrap().tx_frames), (0, 0));
    // QEMU as itself: its ARP request for B (the switch answers), then
    // IPv4 from the outside.
    assert_eq!(send(&mut sw, up, &arp(BROADCAST, q, 1, q, outside_ip(1), ip(2), 60), 0), (Verdict::Answered, vec![up, b]));
    assert_eq!(send(&mut sw, up, &ipv4(mac(2), q, outside_ip(9), 1000), 0), (fwd(1), vec![b]));
    assert_eq!(sw.lookup(0, q, 0), Some(up));
    // Another tenant's guest is no local guest of the uplink's tenant.
    assert_eq!(send(&mut sw, up, &ipv4(mac(2), q, ip(3), 60), 0), (fwd(1), vec![b]));
    assert_eq!(sw.stats(elsewhere).unwrap().tx_frames, 0);
    // A removed guest's address is nobody's: the outside may use it,
    // and a new guest may have it.
    sw.remove_port(a).unwrap();
    assert_eq!(send(&mut sw, up, &ipv4(mac(2), q, ip(1), 60), 0), (fwd(1), vec![b]));
    let a2 = sw.add_port(0, mac(9), ip(1)).unwrap();
    assert_eq!(send(&mut sw, up, &ipv4(mac(9), q, ip(1), 60), 0), drop(DropReason::SpoofedIp));
    assert_eq!(send(&mut sw, a2, &ipv4(mac(2), mac(9), ip(1), 60), 0), (fwd(1), vec![b]));
}

#[test]
fn spoof_reasons_and_their_counters() {
    use DropReason::*;
    let spoofs = [Spoofed, SpoofedIp, SpoofedArp, Tagged];
    for why in [UnknownPort, Runt, Oversize, BadSource, Spoofed, SpoofedIp, SpoofedArp, Tagged] {
        assert_eq!(why.is_spoof(), spoofs.contains(&why), "{why:?}");
        let mut s = Stats::default();
        s.count_drop(why);
        assert_eq!((s.dropped(), s.spoofed()), (1, u64::from(why.is_spoof())), "{why:?}");
    }
}

#[test]
fn runts_oversized_and_group_sources_are_dropped_and_counted() {
    let mut sw = Switch::new();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let drop = |why| (Verdict::Dropped(why), vec![]);
    for len in [0, 1, 6, 12, 13] {
        assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), len), 0), drop(DropReason::Runt), "{len}");
    }
    for len in [MAX_FRAME + 1, 70_000, 1 << 20] {
        assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), len), 0), drop(DropReason::Oversize), "{len}");
    }
    assert_eq!(send(&mut sw, a, &frame(mac(2), BROADCAST, 60), 0), drop(DropReason::BadSource));
    assert_eq!(send(&mut sw, a, &frame(mac(2), MCAST, 60), 0), drop(DropReason::BadSource));
    // The limits themselves pass.
    assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), MIN_FRAME), 0), (fwd(1), vec![b]));
    assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), MAX_FRAME), 0), (fwd(1), vec![b]));
    let s = sw.stats(a).unwrap();
    assert_eq!((s.drop_runt, s.drop_oversize, s.drop_bad_source, s.drop_spoofed), (5, 3, 2, 0));
    assert_eq!((s.rx_frames, s.rx_bytes), (2, (MIN_FRAME + MAX_FRAME) as u64));
    assert_eq!(sw.stats(b).unwrap().tx_bytes, (MIN_FRAME + MAX_FRAME) as u64);
    // A port that does not exist.
    let ghost = PortId { slot: 77, generation: 0 };
    assert_eq!(send(&mut sw, ghost, &frame(mac(2), mac(1), 60), 0), drop(DropReason::UnknownPort));
    let t = sw.totals();
    assert_eq!((t.drop_runt, t.drop_oversize, t.drop_bad_source, t.drop_unknown_port), (5, 3, 2, 1));
    assert_eq!(t.dropped(), 11);
}

#[test]
fn forward_header_decides_on_the_private_header_and_length() {
    let mut sw = Switch::new();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let hdr = frame(mac(2), mac(1), 14);
    let mut got = Vec::new();
    let mut out = |p: PortId, _: Out<'_>| {
        got.push(p);
        true
    };
    assert_eq!(sw.forward_header(a, &hdr, 1000, 0, &mut out), fwd(1));
    assert_eq!(sw.forward_header(a, &hdr[..13], 1000, 0, &mut out), Verdict::Dropped(DropReason::Runt));
    assert_eq!(sw.forward_header(a, &hdr, 13, 0, &mut out), Verdict::Dropped(DropReason::Runt));
    assert_eq!(sw.forward_header(a, &hdr, 65_536, 0, &mut out), Verdict::Dropped(DropReason::Oversize));
    // ARP and IPv4 are decided on the first INSPECT_BYTES of the copy;
    // a copy too short to show the sender's addresses is dropped.
    let arp_hdr = arp(mac(2), mac(1), 2, mac(1), ip(1), ip(2), INSPECT_BYTES);
    assert_eq!(sw.forward_header(a, &arp_hdr, 60, 0, &mut out), fwd(1));
    assert_eq!(sw.forward_header(a, &arp_hdr[..31], 60, 0, &mut out), Verdict::Dropped(DropReason::SpoofedArp));
    let ip_hdr = ipv4(mac(2), mac(1), ip(1), INSPECT_BYTES);
    assert_eq!(sw.forward_header(a, &ip_hdr, 1000, 0, &mut out), fwd(1));
    assert_eq!(sw.forward_header(a, &ip_hdr[..29], 1000, 0, &mut out), Verdict::Dropped(DropReason::SpoofedIp));
    assert_eq!(got, vec![b, b, b]);
    assert_eq!(sw.stats(b).unwrap().tx_bytes, 2060);
}

#[test]
fn a_frame_never_goes_back_out_the_port_it_came_in_on() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let lone = sw.add_port(5, mac(5), ip(5)).unwrap();
    // To itself.
    assert_eq!(send(&mut sw, a, &frame(mac(1), mac(1), 60), 0), (fwd(0), vec![]));
    // Outside to outside, both learned on the uplink.
    send(&mut sw, up, &frame(BROADCAST, outside(1), 60), 0);
    assert_eq!(send(&mut sw, up, &frame(outside(1), outside(2), 60), 0), (fwd(0), vec![]));
    // Alone in its tenant.
    assert_eq!(send(&mut sw, lone, &frame(BROADCAST, mac(5), 60), 0), (fwd(0), vec![]));
    assert_eq!(sw.stats(a).unwrap().unrouted, 1);
    assert_eq!(sw.stats(up).unwrap().unrouted, 1);
    assert_eq!(sw.totals().unrouted, 3);
    assert_eq!(sw.totals().rx_frames, 4);
}

#[test]
fn a_full_receive_ring_is_counted_at_the_receiver() {
    let mut sw = Switch::new();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let c = sw.add_port(0, mac(3), ip(3)).unwrap();
    let v = sw.forward(a, &frame(BROADCAST, mac(1), 100), 0, &mut |p, _| p != b);
    assert_eq!(v, fwd(2), "handed to both; B's ring was full");
    assert_eq!((sw.stats(b).unwrap().tx_full, sw.stats(b).unwrap().tx_frames), (1, 0));
    assert_eq!((sw.stats(c).unwrap().tx_full, sw.stats(c).unwrap().tx_frames), (0, 1));
    assert_eq!(sw.totals().tx_full, 1);
}

#[test]
fn a_removed_port_gets_nothing_and_its_entries_are_gone() {
    let mut sw = Switch::new();
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let b = sw.add_port(0, mac(2), ip(2)).unwrap();
    let c = sw.add_port(0, mac(3), ip(3)).unwrap();
    send(&mut sw, a, &frame(mac(2), mac(1), 60), 0);
    let last = sw.remove_port(b).unwrap();
    assert_eq!(last.tx_frames, 1, "its final counters");
    assert_eq!(sw.remove_port(b), None, "only once");
    assert_eq!(sw.lookup(0, mac(2), 0), None);
    // Its MAC is unknown now: to the uplink only, never to B or C.
    assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), 60), 0), (fwd(1), vec![up]));
    assert_eq!(send(&mut sw, a, &frame(BROADCAST, mac(1), 60), 0), (fwd(2), sorted(vec![up, c])));
    // Its id is dead, even once its slot is reused.
    let d = sw.add_port(0, mac(2), ip(2)).unwrap();
    assert_eq!(d.slot(), b.slot());
    assert_ne!(d, b);
    assert_eq!(send(&mut sw, b, &frame(BROADCAST, mac(2), 60), 0), (Verdict::Dropped(DropReason::UnknownPort), vec![]));
    assert_eq!(sw.stats(b), None);
    assert_eq!(sw.stats(d), Some(Stats::default()));
    assert_eq!(send(&mut sw, a, &frame(mac(2), mac(1), 60), 0), (fwd(1), vec![d]));
    // Removing the uplink forgets everything learned from it.
    send(&mut sw, up, &frame(BROADCAST, outside(1), 60), 0);
    send(&mut sw, up, &frame(BROADCAST, outside(2), 60), 0);
    assert_eq!(sw.learned_count(), 2);
    sw.remove_port(up).unwrap();
    assert_eq!((sw.learned_count(), sw.lookup(0, outside(1), 0), sw.uplink()), (0, None, None));
    assert_eq!(send(&mut sw, a, &frame(outside(1), mac(1), 60), 0), (fwd(0), vec![]), "no uplink: nowhere");
    // Everything gone: the tables are empty.
    for p in [a, c, d] {
        sw.remove_port(p).unwrap();
    }
    assert!(sw.tenants.is_empty() && sw.table.is_empty());
    assert_eq!(sw.port_count(), 0);
}

#[test]
fn the_uplink_learns_the_outside_and_carries_its_tenants_broadcasts() {
    let mut sw = Switch::new();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    let other = sw.add_port(1, mac(2), ip(2)).unwrap();
    let up = sw.add_uplink(0).unwrap();
    assert_eq!(sw.add_uplink(1), Err(PortError::UplinkExists));
    assert_eq!((sw.uplink(), sw.tenant_of(up)), (Some(up), Some(0)));
    // Its tenant's broadcasts reach it; another tenant's do not.
    assert_eq!(send(&mut sw, a, &frame(BROADCAST, mac(1), 60), 0), (fwd(1), vec![up]));
    assert_eq!(send(&mut sw, other, &frame(BROADCAST, mac(2), 60), 0), (fwd(0), vec![]));
    // It may send with any (unicast) source and learns each.
    for n in 0..50 {
        assert_eq!(send(&mut sw, up, &frame(BROADCAST, outside(n), 60), 0), (fwd(1), vec![a]));
    }
    assert_eq!(sw.learned_count(), 50);
    for n in 0..50 {
        assert_eq!(sw.lookup(0, outside(n), 0), Some(up));
    }
    assert_eq!(send(&mut sw, up, &frame(BROADCAST, MCAST, 60), 0).0, Verdict::Dropped(DropReason::BadSource));
    // A guest added with a MAC seen outside takes it over.
    let g = sw.add_port(0, outside(7), ip(7)).unwrap();
    assert_eq!(sw.lookup(0, outside(7), 0), Some(g));
    assert_eq!(sw.learned_count(), 49);
    assert_eq!(send(&mut sw, up, &frame(BROADCAST, outside(7), 60), 0).0, Verdict::Dropped(DropReason::Spoofed));
    // And removing that guest does not hand the MAC back to the uplink.
    sw.remove_port(g).unwrap();
    assert_eq!(sw.lookup(0, outside(7), 0), None);
}

#[test]
fn the_learning_table_is_bounded() {
    let mut sw = Switch::with_max_learned(8);
    let up = sw.add_uplink(0).unwrap();
    let a = sw.add_port(0, mac(1), ip(1)).unwrap();
    for n in 0..20 {
        assert_eq!(send(&mut sw, up, &frame(mac(1), outside(n), 60), 0), (fwd(1), vec![a]), "still forwarded");
    }
    assert_eq!(sw.learned_count(), 8);
    assert_eq!(sw.totals().learn_full, 12);
    assert_eq!(sw.lookup(0, outside(0), 0), Some(up));
    assert_eq!(sw.lookup(0, outside(8), 0), None);
    // Seen-again entries refresh without needing room; aged ones make room.
    send(&mut sw, up, &frame(mac(1), outside(0), 60), AGE_NS / 2);
    send(&mut sw, up, &frame(mac(1), outside(15), 60), AGE_NS + 1);
    assert_eq!(sw.lookup(0, outside(15), AGE_NS + 1), Some(up));
    assert_eq!(sw.learned_count(), 2, "outside(0) and outside(15)");
}

#[test]
fn bad_ports_are_refused() {
    let mut sw = Switch::new();
    sw.add_port(0, mac(1), ip(1)).unwrap();
    assert_eq!(sw.add_port(0, mac(1), ip(1)), Err(PortError::DuplicateMac));
    assert_eq!(sw.add_port(0, BROADCAST, ip(8)), Err(PortError::MulticastMac));
    assert_eq!(sw.add_port(0, MCAST, ip(8)), Err(PortError::MulticastMac));
    assert_eq!(sw.add_port(0, mac(8), ip(1)), Err(PortError::DuplicateIpv4));
    for bad in [[0; 4], [255; 4], [224, 0, 0, 1], [239, 1, 2, 3]] {
        assert_eq!(sw.add_port(0, mac(8), bad), Err(PortError::BadIpv4), "{bad:?}");
    }
    assert!(sw.add_port(1, mac(9), ip(1)).is_ok(), "same address, other tenant");
    assert!(sw.add_port(1, mac(1), ip(2)).is_ok(), "same MAC, other tenant");
    assert_eq!(sw.port_count(), 3);
}

#[test]
fn ten_thousand_ports_in_a_hundred_tenants() {
    extern crate std;
    use std::time::Instant;
    const PORTS: u32 = 10_000;
    const TENANTS: u32 = 100;
    let mut sw = Switch::new();
    let t = Instant::now();
    let ids: Vec<PortId> = (0..PORTS).map(|i| sw.add_port(i % TENANTS, mac(i), ip(i)).unwrap()).collect();
    let up = sw.add_uplink(42).unwrap();
    let added = t.elapsed();

    let in_tenant = |t: u32| -> Vec<PortId> { (0..PORTS).filter(|i| i % TENANTS == t).map(|i| ids[i as usize]).collect() };
    // A broadcast in tenant 7 reaches exactly tenant 7's other ports.
    let from = ids[7];
    let (v, got) = send(&mut sw, from, &frame(BROADCAST, mac(7), 60), 0);
    let want: Vec<PortId> = sorted(in_tenant(7).into_iter().filter(|&p| p != from).collect());
    assert_eq!((v, &got), (fwd(PORTS / TENANTS - 1), &want));
    assert_eq!(got.len(), 99);
    // In tenant 42, the uplink too.
    let (_, got) = send(&mut sw, ids[42], &frame(BROADCAST, mac(42), 60), 0);
    assert_eq!(got.len(), 100);
    assert!(got.contains(&up));

    // Every port: one broadcast and one unicast to its tenant's next port.
    let t = Instant::now();
    let mut copies = 0u64;
    for i in 0..PORTS {
        let next = (i + TENANTS) % PORTS;
        let mut count = |_: PortId, _: Out<'_>| {
            copies += 1;
            true
        };
        sw.forward(ids[i as usize], &frame(BROADCAST, mac(i), 60), 1, &mut count);
        assert_eq!(sw.forward(ids[i as usize], &frame(mac(next), mac(i), 60), 1, &mut count), fwd(1));
    }
    let forwarded = t.elapsed();
    let per_tenant = u64::from(PORTS / TENANTS);
    assert_eq!(copies, u64::from(PORTS) * per_tenant + per_tenant /* the uplink */);

    let t = Instant::now();
    for &id in &ids {
        sw.remove_port(id).unwrap();
    }
    let removed = t.elapsed();
    assert_eq!(sw.port_count(), 1);
    assert!(sw.table.is_empty());
    std::println!("10k ports: add {added:?}, 20k frames ({copies} copies) {forwarded:?}, remove {removed:?}");
}

use crate::testutil::Rng;

/// The switch's rules written the slow, obvious way, to compare with.
#[derive(Default)]
struct Model {
    /// (id, tenant, MAC; `None` for the uplink).
    ports: Vec<(PortId, u32, Option<Mac>)>,
    /// Each guest's address.
    ips: Vec<(PortId, Ipv4)>,
    /// (tenant, MAC, port, last seen) learned from the uplink.
    learned: Vec<(u32, Mac, PortId, u64)>,
}

impl Model {
    fn expect(&mut self, from: PortId, f: &[u8], now: u64) -> (Verdict, Vec<PortId>) {
        let drop = |why| (Verdict::Dropped(why), vec![]);
        let Some(&(_, tenant, own)) = self.ports.iter().find(|p| p.0 == from) else {
            return drop(DropReason::UnknownPort);
        };
        if f.len() < 14 {
            return drop(DropReason::Runt);
        }
        if f.len() > 65_535 {
            return drop(DropReason::Oversize);
        }
        let dst: Mac = f[..6].try_into().unwrap();
        let src: Mac = f[6..12].try_into().unwrap();
        if src[0] & 1 == 1 {
            return drop(DropReason::BadSource);
        }
        let guest_with = |m: Mac| self.ports.iter().find(|p| p.1 == tenant && p.2 == Some(m)).map(|p| p.0);
        let ip_of = |id: PortId| self.ips.iter().find(|i| i.0 == id).map(|i| i.1);
        let guest_ip = |a: Ipv4| self.ips.iter().any(|&(id, i)| i == a && self.ports.iter().any(|p| p.0 == id && p.1 == tenant));
        match own {
            Some(m) if m != src => return drop(DropReason::Spoofed),
            None if guest_with(src).is_some() => return drop(DropReason::Spoofed),
            _ => {}
        }
        // Inspection (lengths first, so the slicing cannot fail).
        match (f[12], f[13]) {
            (0x08, 0x00) => {
                let ok = f.len() >= 34
                    && f[14] >> 4 == 4
                    && f[14] & 15 >= 5
                    && match own {
                        Some(_) => ip_of(from) == Some(f[26..30].try_into().unwrap()),
                        None => !guest_ip(f[26..30].try_into().unwrap()),
                    };
                if !ok {
                    return drop(DropReason::SpoofedIp);
                }
            }
            (0x08, 0x06) => {
                let ok = f.len() >= 42
                    && f[14..20] == [0, 1, 8, 0, 6, 4]
                    && match own {
                        Some(m) => f[22..28] == m && ip_of(from) == Some(f[28..32].try_into().unwrap()),
                        None => guest_with(f[22..28].try_into().unwrap()).is_none() && !guest_ip(f[28..32].try_into().unwrap()),
                    };
                if !ok {
                    return drop(DropReason::SpoofedArp);
                }
            }
            (0x81, 0x00) | (0x88, 0xa8) | (0x91, 0x00) if own.is_some() => return drop(DropReason::Tagged),
            _ => {}
        }
        if own.is_none() {
            match self.learned.iter_mut().find(|l| l.0 == tenant && l.1 == src) {
                Some(l) => (l.2, l.3) = (from, now),
                None => self.learned.push((tenant, src, from, now)),
            }
        }
        // Proxy ARP: a request for a neighbour's address is answered to the
        // sender and goes on to the neighbour; other requests and a guest's
        // group-addressed ARP go to the tenant's uplink only.
        if (f[12], f[13]) == (0x08, 0x06) {
            let request = f[20..22] == [0, 1];
            if request
                && let Some(&(to, _)) =
                    self.ips.iter().find(|&&(id, a)| a == f[38..42] && id != from && self.ports.iter().any(|p| p.0 == id && p.1 == tenant))
            {
                return (Verdict::Answered, sorted(vec![from, to]));
            }
            if request || (own.is_some() && dst[0] & 1 == 1) {
                let up: Vec<PortId> = self.ports.iter().filter(|p| p.1 == tenant && p.2.is_none() && p.0 != from).map(|p| p.0).collect();
                return (fwd(up.len() as u32), up);
            }
        }
        let known = if dst[0] & 1 == 1 {
            None
        } else {
            guest_with(dst)
                .or_else(|| self.learned.iter().find(|l| l.0 == tenant && l.1 == dst && now.saturating_sub(l.3) < AGE_NS).map(|l| l.2))
        };
        let to: Vec<PortId> = match known {
            Some(p) => vec![p],
            // Group-addressed: the tenant; an unknown unicast: its uplink.
            None if dst[0] & 1 == 1 => self.ports.iter().filter(|p| p.1 == tenant).map(|p| p.0).collect(),
            None => self.ports.iter().filter(|p| p.1 == tenant && p.2.is_none()).map(|p| p.0).collect(),
        };
        let to = sorted(to.into_iter().filter(|&p| p != from).collect());
        (fwd(to.len() as u32), to)
    }

    fn add(&mut self, id: PortId, tenant: u32, guest: Option<(Mac, Ipv4)>) {
        if let Some((m, a)) = guest {
            self.learned.retain(|l| !(l.0 == tenant && l.1 == m));
            self.ips.push((id, a));
        }
        self.ports.push((id, tenant, guest.map(|g| g.0)));
    }

    fn remove(&mut self, id: PortId) {
        self.ports.retain(|p| p.0 != id);
        self.ips.retain(|i| i.0 != id);
        self.learned.retain(|l| l.2 != id);
    }
}

fn add_stats(a: &mut Stats, b: &Stats) {
    a.rx_frames += b.rx_frames;
    a.rx_bytes += b.rx_bytes;
    a.tx_frames += b.tx_frames;
    a.tx_bytes += b.tx_bytes;
    a.tx_full += b.tx_full;
    a.unrouted += b.unrouted;
    a.learn_full += b.learn_full;
    a.arp_answered += b.arp_answered;
    a.arp_unknown += b.arp_unknown;
    a.drop_runt += b.drop_runt;
    a.drop_oversize += b.drop_oversize;
    a.drop_bad_source += b.drop_bad_source;
    a.drop_spoofed += b.drop_spoofed;
    a.drop_spoofed_ip += b.drop_spoofed_ip;
    a.drop_spoofed_arp += b.drop_spoofed_arp;
    a.drop_tagged += b.drop_tagged;
    a.drop_unknown_port += b.drop_unknown_port;
}

/// 100,000 random frames, many of them garbage, from random (and dead,
/// and made-up) ports while ports come and go: the switch never panics,
/// agrees with the model on every frame, and its counters add up:
/// - frames sent = accepted (`rx_frames`) + dropped, per reason exactly
///   as the verdicts said;
/// - accepted frames with no receiver = `unrouted`;
/// - hand-overs = `tx_frames` + `tx_full` = the sum of the copies;
/// - bytes: `rx_bytes` = lengths of the accepted frames, `tx_bytes` =
///   lengths of the frames receivers took;
/// - the totals = the sums over all live ports plus the final counters
///   of every removed one (`drop_unknown_port` only in the totals).
#[test]
fn random_frames_never_panic_match_the_model_and_counters_add_up() {
    const FRAMES: u64 = 100_000;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut sw = Switch::new();
    let mut model = Model::default();
    let mut removed = Stats::default();
    let mut dead: Vec<PortId> = Vec::new();
    let outside_pool: Vec<Mac> = (0..16).map(outside).collect();
    let macs = 48u32;

    for i in 0..12u32 {
        let (t, m) = (i % 3, mac(i));
        model.add(sw.add_port(t, m, ip(i)).unwrap(), t, Some((m, ip(i))));
    }
    let up = sw.add_uplink(0).unwrap();
    model.add(up, 0, None);

    let (mut verdicts, mut handed, mut took, mut rx_bytes, mut tx_bytes, mut answered) = ([0u64; 7], 0u64, 0u64, 0u64, 0u64, 0u64);
    // Accepted IPv4 and ARP frames, from guests and from the uplink.
    let mut passed = [[0u64; 2]; 2];
    let mut buf = vec![0u8; 66_000];
    let mut got: Vec<PortId> = Vec::new();
    let mut now = 0u64;
    for _ in 0..FRAMES {
        // Ports come and go.
        if rng.one_in(150) {
            let (t, m, a) = (rng.below(4) as u32, mac(rng.below(macs as usize) as u32), ip(rng.below(macs as usize) as u32));
            let dup = model.ports.iter().any(|p| p.1 == t && p.2 == Some(m));
            let dup_ip = model.ips.iter().any(|&(id, i)| i == a && model.ports.iter().any(|p| p.0 == id && p.1 == t));
            match sw.add_port(t, m, a) {
                Ok(id) => {
                    assert!(!dup && !dup_ip);
                    model.add(id, t, Some((m, a)));
                }
                Err(PortError::DuplicateMac) => assert!(dup),
                Err(e) => assert!(!dup && dup_ip && e == PortError::DuplicateIpv4, "{e:?}"),
            }
        }
        if rng.one_in(2000) {
            let t = rng.below(3) as u32;
            match sw.add_uplink(t) {
                Ok(id) => model.add(id, t, None),
                Err(e) => assert!(e == PortError::UplinkExists && sw.uplink().is_some()),
            }
        }
        if rng.one_in(200) && !model.ports.is_empty() {
            let id = model.ports[rng.below(model.ports.len())].0;
            let last = sw.remove_port(id).unwrap();
            add_stats(&mut removed, &last);
            model.remove(id);
            dead.push(id);
        }

        // Time mostly moves on, sometimes by a lot, rarely back a little.
        now = match rng.below(100) {
            0 => now + AGE_NS,
            1 => now.saturating_sub(SEC),
            _ => now + (rng.next() % (4 * SEC)),
        };

        // Who sends.
        let from = match rng.below(50) {
            0 if !dead.is_empty() => dead[rng.below(dead.len())],
            1 => PortId { slot: rng.next() as u32 % 64, generation: rng.next() as u32 % 4 },
            _ if !model.ports.is_empty() => model.ports[rng.below(model.ports.len())].0,
            _ => PortId { slot: 0, generation: 0 },
        };
        let own = model.ports.iter().find(|p| p.0 == from).and_then(|p| p.2);
        let own_ip = model.ips.iter().find(|i| i.0 == from).map(|i| i.1);

        // What: lengths around every limit and plain garbage.
        let len = match rng.below(10) {
            0 => rng.below(buf.len()),
            1 => rng.below(14),
            2 => [0, 13, 14, 15, 1513, 1514, 1515, MAX_FRAME, MAX_FRAME + 1][rng.below(9)],
            _ => 14 + rng.below(1514 - 13),
        };
        let some_guest = |rng: &mut Rng| mac(rng.below(macs as usize) as u32);
        let pick = |rng: &mut Rng| match rng.below(8) {
            0 => BROADCAST,
            1 => MCAST,
            2 | 3 => outside_pool[rng.below(outside_pool.len())],
            4 => {
                let mut m = [0u8; 6];
                m.iter_mut().for_each(|b| *b = rng.next() as u8);
                m
            }
            _ => some_guest(rng),
        };
        let dst = pick(&mut rng);
        let src = match (own, rng.below(8)) {
            (Some(m), 0..=5) => m,
            _ => pick(&mut rng),
        };
        buf.iter_mut().for_each(|b| *b = rng.next() as u8);
        buf[..6].copy_from_slice(&dst);
        buf[6..12].copy_from_slice(&src);
        // Mostly the sender's own address, else a neighbour's, an
        // outside one, 0.0.0.0 or anything.
        let pick_ip = |rng: &mut Rng| match (own_ip, rng.below(10)) {
            (Some(a), 0..=5) => a,
            (_, 0..=7) => ip(rng.below(macs as usize) as u32),
            (_, 8) => [outside_ip(rng.next() as u8), [0; 4]][rng.below(2)],
            _ => (rng.next() as u32).to_be_bytes(),
        };
        // EtherType: IPv4, ARP, a VLAN tag, or the random one.
        let kind = rng.below(10);
        match kind {
            0..=2 => {
                buf[12..14].copy_from_slice(&[0x08, 0x00]);
                if !rng.one_in(8) {
                    buf[14] = 0x45;
                }
                buf[26..30].copy_from_slice(&pick_ip(&mut rng));
            }
            3..=5 => {
                buf[12..14].copy_from_slice(&[0x08, 0x06]);
                if !rng.one_in(8) {
                    buf[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
                }
                let sha = match (own, rng.below(8)) {
                    (Some(m), 0..=5) => m,
                    _ => pick(&mut rng),
                };
                buf[22..28].copy_from_slice(&sha);
                buf[28..32].copy_from_slice(&pick_ip(&mut rng));
                // Mostly requests, for a neighbour's address or any.
                if !rng.one_in(4) {
                    buf[20..22].copy_from_slice(&[0, 1 + rng.below(2) as u8]);
                }
                let tpa = if rng.one_in(2) { ip(rng.below(macs as usize) as u32) } else { pick_ip(&mut rng) };
                buf[38..42].copy_from_slice(&tpa);
            }
            6 => buf[12..14].copy_from_slice(&[[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]][rng.below(3)]),
            _ => {}
        }
        let f = &buf[..len];

        let want = model.expect(from, f, now);
        got.clear();
        let mut replies = 0;
        let v = sw.forward(from, f, now, &mut |p, what| {
            got.push(p);
            let bytes = match what {
                Out::Frame => len,
                Out::Reply(r) => {
                    replies += 1;
                    // From the neighbour asked for, to the asker.
                    assert!(r.len() == ARP_REPLY_LEN && r[..6] == f[6..12] && r[38..42] == f[28..32] && r[28..32] == f[38..42]);
                    r.len()
                }
            };
            let ok = !rng.one_in(16);
            if ok {
                took += 1;
                tx_bytes += bytes as u64;
            }
            ok
        });
        assert_eq!(replies, u32::from(v == Verdict::Answered), "a reply exactly for an answered request");
        got.sort();
        assert_eq!((v, &got), (want.0, &want.1), "frame from {from:?} len {len} dst {dst:x?} src {src:x?}");
        got.dedup();
        assert_eq!(got.len(), want.1.len(), "no port gets a frame twice");
        let tenant = sw.tenant_of(from);
        assert!(
            got.iter().all(|&p| (p != from || v == Verdict::Answered) && sw.tenant_of(p) == tenant),
            "never across tenants, never back but an ARP reply"
        );

        handed += got.len() as u64;
        let slot = match v {
            Verdict::Forwarded { copies } => {
                rx_bytes += len as u64;
                if kind <= 5 {
                    passed[usize::from(own.is_none())][usize::from(kind >= 3)] += 1;
                }
                if copies == 0 { 5 } else { 0 }
            }
            Verdict::Answered => {
                rx_bytes += len as u64;
                answered += 1;
                0
            }
            Verdict::Dropped(DropReason::UnknownPort) => 1,
            Verdict::Dropped(DropReason::Runt) => 2,
            Verdict::Dropped(DropReason::Oversize) => 3,
            Verdict::Dropped(DropReason::BadSource | DropReason::Spoofed) => 4,
            Verdict::Dropped(DropReason::SpoofedIp | DropReason::SpoofedArp | DropReason::Tagged) => 6,
        };
        verdicts[slot] += 1;
    }

    let t = sw.totals();
    let [routed, unknown, runt, oversize, bad_or_spoofed, unrouted, inspected] = verdicts;
    assert_eq!(t.rx_frames + t.dropped(), FRAMES);
    assert_eq!(t.rx_frames, routed + unrouted);
    assert_eq!(t.unrouted, unrouted);
    assert_eq!(t.arp_answered, answered);
    assert_eq!((t.drop_unknown_port, t.drop_runt, t.drop_oversize), (unknown, runt, oversize));
    assert_eq!(t.drop_bad_source + t.drop_spoofed, bad_or_spoofed);
    assert_eq!(t.drop_spoofed_ip + t.drop_spoofed_arp + t.drop_tagged, inspected);
    assert_eq!((t.tx_frames + t.tx_full, t.tx_frames), (handed, took));
    assert_eq!((t.rx_bytes, t.tx_bytes), (rx_bytes, tx_bytes));
    let mut sum = removed;
    for p in &model.ports {
        add_stats(&mut sum, &sw.stats(p.0).unwrap());
    }
    sum.drop_unknown_port = t.drop_unknown_port;
    assert_eq!(sum, t);
    assert_eq!(sw.port_count(), model.ports.len());
    extern crate std;
    std::println!(
        "verdicts [routed, unknown port, runt, oversize, bad source/spoofed, unrouted, inspection] {verdicts:?}; \
         accepted [[guest IPv4, ARP], [uplink IPv4, ARP]] {passed:?}; {t:?}"
    );
    // Every kind of frame happened.
    assert!(verdicts.iter().all(|&n| n > 100), "{verdicts:?}");
    assert!(t.drop_spoofed > 100 && t.drop_bad_source > 100 && t.tx_full > 100, "{t:?}");
    assert!(t.drop_spoofed_ip > 100 && t.drop_spoofed_arp > 100 && t.drop_tagged > 100, "{t:?}");
    assert!(passed.iter().flatten().all(|&n| n > 100), "{passed:?}");
    assert!(t.arp_answered > 100 && t.arp_unknown > 100, "{t:?}");
    assert!(!dead.is_empty());
}

/// The address tables are hash tables keyed at boot: whatever the seed,
/// thousands of ports and learned stations, with removals in between,
/// are found where they are and nowhere else, and frames go the same way.
#[test]
fn any_seed_finds_every_address_among_thousands_and_forgets_removed_ones() {
    const PORTS: u32 = 5_000;
    const LEARNED: u32 = 1_000;
    let station = |n: u32| -> Mac {
        let b = n.to_be_bytes();
        [0x52, 0x54, b[0], b[1], b[2], b[3]]
    };
    let mut verdicts = Vec::new();
    for seed in [0, 1, 0x9e37_79b9_7f4a_7c15, u64::MAX] {
        let mut sw = Switch::new().keyed(seed);
        let up = sw.add_uplink(0).unwrap();
        // Two tenants with the same MACs: one station each, not one.
        let ports: Vec<PortId> = (0..PORTS).map(|n| sw.add_port(n % 2, mac(n / 2), ip(n)).unwrap()).collect();
        for n in 0..LEARNED {
            let (v, _) = send(&mut sw, up, &frame(mac(0), station(n), 60), SEC);
            assert_eq!(v, fwd(1), "station {n}");
        }
        assert_eq!(sw.learned_count(), LEARNED as usize);
        for (n, &p) in ports.iter().enumerate().filter(|(n, _)| n % 3 == 0) {
            assert!(sw.remove_port(p).is_some(), "port {n}");
        }
        let mut seen = Vec::new();
        for (n, &p) in ports.iter().enumerate() {
            let (t, m) = (n as u32 % 2, mac(n as u32 / 2));
            let want = (n % 3 != 0).then_some(p);
            assert_eq!(sw.lookup(t, m, 2 * SEC), want, "seed {seed:#x}, port {n}");
            if let Some(to) = want {
                // From the other port of the tenant's first pair still there.
                let from = ports[if t == 0 { 2 } else { 1 }];
                if from != to {
                    let src = mac(if t == 0 { 1 } else { 0 });
                    seen.push(send(&mut sw, from, &frame(m, src, 60), 2 * SEC));
                }
            }
        }
        for n in 0..LEARNED {
            assert_eq!(sw.lookup(0, station(n), 2 * SEC), Some(up), "seed {seed:#x}, station {n}");
            assert_eq!(sw.lookup(1, station(n), 2 * SEC), None, "learned in the uplink's tenant only");
        }
        verdicts.push(seen);
    }
    assert!(verdicts.windows(2).all(|w| w[0] == w[1]), "every seed forwards alike");
}
