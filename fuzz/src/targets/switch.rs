//! The switch's frame handling: a fuzz-chosen sequence of `add_port`,
//! `add_uplink`, `remove_port`, `forward`, `forward_header` and `expire`,
//! with frames whose MACs and IPv4 addresses come from a small pool (so
//! that they collide) or from the input, mostly IPv4, ARP or VLAN-tagged
//! with their fields from the pools, and time that jumps (also backwards).
//!
//! Invariants, checked against a model of the live ports: no panic; a
//! frame is handed only to live ports of the sender's tenant, never to the
//! sender, never twice; a dropped frame reaches nobody; the verdict's
//! copies match the hand-overs; spoofed guest frames are dropped; the
//! address inspection (IPv4 source, ARP sender, VLAN tags) decides on the
//! header copy exactly as a model of its rules does; an ARP request for a
//! neighbour's address is answered exactly when the model says, with one
//! reply to the sender only; other ARP requests and a guest's
//! group-addressed ARP reach the tenant's uplink only; a unicast frame
//! (not such ARP) to a guest's own MAC in its tenant reaches exactly that
//! guest, and no unicast reaches a guest whose MAC it is not (an unknown
//! one goes to the uplink only); ports come and go as the model says; the totals add up.

use std::collections::BTreeMap;

use abi::ring::{MAX_FRAME, MIN_FRAME};
use hypervisor::net::switch::{
    ARP_REPLY_LEN, BROADCAST, DropReason, Ipv4, Mac, Out, PortError, PortId, Switch, Verdict, is_multicast, is_unicast_ipv4,
};

use crate::input::Input;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Guest(Mac, Ipv4),
    Uplink,
}

/// A MAC from a small pool (guests', outside stations', group
/// addresses), or any.
fn mac(inp: &mut Input<'_>) -> Mac {
    let sel = inp.u8();
    let n = sel & 0x7;
    match (sel >> 3) & 0x7 {
        0..=2 => [0x02, 0, 0, 0, 0, n],
        3 => [0x52, 0x54, 0, 0x12, 0x34, n],
        4 => BROADCAST,
        5 => [0x01, 0x00, 0x5e, 0, 0, n],
        6 => [0x03, 0, 0, 0, 0, n],
        _ => {
            let b = inp.bytes(6);
            let mut m = [0u8; 6];
            m[..b.len()].copy_from_slice(b);
            m
        }
    }
}

/// An IPv4 address from a small pool (guests', QEMU's, the unspecified,
/// broadcast and multicast ones), or any.
fn ipv4(inp: &mut Input<'_>) -> Ipv4 {
    let sel = inp.u8();
    let n = sel & 0x7;
    match (sel >> 3) & 0x7 {
        0..=3 => [10, 0, 0, n],
        4 => [0; 4],
        5 => [0xff; 4],
        6 => [224, 0, 0, n],
        _ => {
            let b = inp.bytes(4);
            let mut a = [0u8; 4];
            a[..b.len()].copy_from_slice(b);
            a
        }
    }
}

/// Rule 3 of the switch, the slow obvious way: why a frame that passed
/// rules 1 and 2 is dropped, judged on the `header` copy the switch saw
/// and the claimed length `len`; `None`: it passes.
fn inspection(
    kind: Kind,
    guest_ip: impl Fn(Ipv4) -> bool,
    guest_mac: impl Fn(Mac) -> bool,
    header: &[u8],
    len: usize,
) -> Option<DropReason> {
    let ip_at = |at: usize| -> Option<Ipv4> { header.get(at..at + 4).map(|b| b.try_into().unwrap()) };
    let mac_at = |at: usize| -> Option<Mac> { header.get(at..at + 6).map(|b| b.try_into().unwrap()) };
    match (header[12], header[13]) {
        (0x08, 0x00) => {
            let v = header.get(14).copied();
            let ok = len >= 34
                && v.is_some_and(|b| b >> 4 == 4 && b & 15 >= 5)
                && match (kind, ip_at(26)) {
                    (Kind::Guest(_, own), Some(src)) => src == own,
                    (Kind::Uplink, Some(src)) => !guest_ip(src),
                    (_, None) => false,
                };
            (!ok).then_some(DropReason::SpoofedIp)
        }
        (0x08, 0x06) => {
            let ok = len >= 42
                && header.get(14..20) == Some(&[0, 1, 8, 0, 6, 4][..])
                && match (kind, mac_at(22), ip_at(28)) {
                    (Kind::Guest(m, a), Some(sha), Some(spa)) => sha == m && spa == a,
                    (Kind::Uplink, Some(sha), Some(spa)) => !guest_mac(sha) && !guest_ip(spa),
                    _ => false,
                };
            (!ok).then_some(DropReason::SpoofedArp)
        }
        (0x81, 0x00) | (0x88, 0xa8) | (0x91, 0x00) if matches!(kind, Kind::Guest(..)) => Some(DropReason::Tagged),
        _ => None,
    }
}

pub fn switch(data: &[u8]) {
    let mut inp = Input::new(data);
    let max_learned = inp.below(6);
    let mut sw = if max_learned == 5 { Switch::new() } else { Switch::with_max_learned(max_learned) };
    // Every id ever issued (removed ones stay, to be used as stale ids).
    let mut ids: Vec<PortId> = Vec::new();
    let mut live: BTreeMap<PortId, (u32, Kind)> = BTreeMap::new();
    let mut now: u64 = 0;
    let mut forwarded = 0u64;
    let mut handovers = 0u64;

    for _ in 0..400 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        match op % 10 {
            0 | 1 => {
                let tenant = (inp.u8() % 3) as u32;
                let m = mac(&mut inp);
                let a = ipv4(&mut inp);
                let dup = live.values().any(|&(t, k)| t == tenant && matches!(k, Kind::Guest(g, _) if g == m));
                let dup_ip = live.values().any(|&(t, k)| t == tenant && matches!(k, Kind::Guest(_, g) if g == a));
                match sw.add_port(tenant, m, a) {
                    Ok(id) => {
                        assert!(
                            !is_multicast(&m) && is_unicast_ipv4(&a) && !dup && !dup_ip,
                            "add_port({tenant}, {m:02x?}, {a:?}) accepted"
                        );
                        assert!(!ids.contains(&id), "port id {id:?} issued twice");
                        ids.push(id);
                        live.insert(id, (tenant, Kind::Guest(m, a)));
                    }
                    Err(PortError::MulticastMac) => assert!(is_multicast(&m)),
                    Err(PortError::BadIpv4) => assert!(!is_multicast(&m) && !is_unicast_ipv4(&a)),
                    Err(PortError::DuplicateMac) => {
                        assert!(dup && !is_multicast(&m) && is_unicast_ipv4(&a), "duplicate refused with no duplicate")
                    }
                    Err(PortError::DuplicateIpv4) => assert!(dup_ip && !dup, "duplicate address refused with no duplicate"),
                    Err(e) => panic!("add_port: {e:?}"),
                }
            }
            2 => {
                let tenant = (inp.u8() % 3) as u32;
                let has = live.values().any(|&(_, k)| k == Kind::Uplink);
                match sw.add_uplink(tenant) {
                    Ok(id) => {
                        assert!(!has, "a second uplink");
                        assert!(!ids.contains(&id));
                        ids.push(id);
                        live.insert(id, (tenant, Kind::Uplink));
                    }
                    Err(PortError::UplinkExists) => assert!(has),
                    Err(e) => panic!("add_uplink: {e:?}"),
                }
            }
            3 => {
                if ids.is_empty() {
                    continue;
                }
                let id = ids[inp.below(ids.len())];
                let was = live.remove(&id);
                assert_eq!(sw.remove_port(id).is_some(), was.is_some(), "remove_port({id:?})");
                if was.is_some_and(|(_, k)| k == Kind::Uplink) {
                    assert_eq!(sw.uplink(), None);
                }
            }
            4 => {
                sw.expire(now);
            }
            5 => {
                // Time moves: a little, a lot (past AGE_NS), or backwards.
                now = match inp.u8() % 4 {
                    0 => now.saturating_add(inp.u32() as u64),
                    1 => now.saturating_add(inp.u16() as u64 * 1_000_000_000),
                    2 => now.saturating_sub(inp.u32() as u64 * 1_000),
                    _ => inp.u64(),
                };
            }
            _ => {
                // A frame from a live port (mostly), a dead one, or a forged id.
                let from = if ids.is_empty() || inp.u8() < 8 {
                    // Not a live port: the id of a port that never existed.
                    let forged = sw.add_port(99, [0x02, 0xff, 0, 0, 0, 0], [10, 99, 0, 2]).expect("tenant 99 is free");
                    sw.remove_port(forged);
                    ids.push(forged);
                    forged
                } else {
                    ids[inp.below(ids.len())]
                };
                let dst = mac(&mut inp);
                // A guest mostly sends with its own MAC (and address).
                let sender = live.get(&from).copied();
                let src = match sender {
                    Some((_, Kind::Guest(own, _))) if inp.u8() < 200 => own,
                    _ => mac(&mut inp),
                };
                let own_or = |inp: &mut Input<'_>| match sender {
                    Some((_, Kind::Guest(_, own))) if inp.u8() < 160 => own,
                    _ => ipv4(inp),
                };
                let len = match inp.u8() % 5 {
                    0 => inp.below(MIN_FRAME + 1),
                    1 => MAX_FRAME - 1 + inp.below(3),
                    2 => inp.u16() as usize,
                    _ => MIN_FRAME + inp.below(100),
                };
                // The start of the frame: MACs, then mostly IPv4 (with its
                // version, header length and source), ARP (with its types,
                // sender MAC and address) or a VLAN tag; or input bytes.
                let mut start = [dst, src].concat();
                match inp.u8() % 8 {
                    0..=2 => {
                        start.extend_from_slice(&[0x08, 0x00, if inp.u8() < 224 { 0x45 } else { inp.u8() }]);
                        start.extend_from_slice(inp.bytes(11));
                        start.resize(26, 0);
                        start.extend_from_slice(&own_or(&mut inp));
                    }
                    3..=5 => {
                        start.extend_from_slice(&[0x08, 0x06]);
                        if inp.u8() < 224 {
                            start.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
                        } else {
                            start.extend_from_slice(inp.bytes(6));
                        }
                        start.resize(20, 0);
                        start.extend_from_slice(&[0, 1 + inp.u8() % 2]);
                        let sha = match sender {
                            Some((_, Kind::Guest(own, _))) if inp.u8() < 200 => own,
                            _ => mac(&mut inp),
                        };
                        start.extend_from_slice(&sha);
                        start.extend_from_slice(&own_or(&mut inp));
                        start.extend_from_slice(&[0; 6]);
                        start.extend_from_slice(&ipv4(&mut inp));
                    }
                    6 => start.extend_from_slice(&[[0x81, 0x00], [0x88, 0xa8], [0x91, 0x00]][inp.below(3)]),
                    _ => start.extend_from_slice(inp.bytes(2)),
                }
                let mut frame = vec![0u8; len.min(MAX_FRAME + 2)];
                let h = frame.len().min(start.len());
                frame[..h].copy_from_slice(&start[..h]);
                let header_only = op & 0x80 != 0;
                let refuse = inp.u8();
                let mut got: Vec<PortId> = Vec::new();
                let mut replies: Vec<(PortId, Vec<u8>)> = Vec::new();
                let mut out = |to: PortId, what: Out<'_>| {
                    match what {
                        Out::Frame => got.push(to),
                        Out::Reply(r) => replies.push((to, r.to_vec())),
                    }
                    // Sometimes the receiver's ring is full.
                    (to.slot() as u8 ^ refuse) & 7 != 0
                };
                // What the switch decides on: the header copy (which may be
                // shorter than the claimed length), or the whole frame.
                let hl = if header_only { inp.below(frame.len() + 1).min(frame.len()) } else { frame.len() };
                let verdict = if header_only {
                    sw.forward_header(from, &frame[..hl], len, now, &mut out)
                } else {
                    sw.forward(from, &frame, now, &mut out)
                };
                let seen = &frame[..hl];
                forwarded += 1;
                handovers += (got.len() + replies.len()) as u64;
                let rule5 = sender.map_or(Rule5::None, |(tenant, kind)| rule5(&live, tenant, kind, from, seen));

                for (i, to) in got.iter().enumerate() {
                    assert_ne!(*to, from, "frame sent back to its sender");
                    let (t, _) = live.get(to).unwrap_or_else(|| panic!("frame delivered to dead port {to:?}"));
                    let (st, _) = sender.expect("frame from a dead port delivered");
                    assert_eq!(*t, st, "frame crossed from tenant {st} to tenant {t}");
                    assert!(!got[..i].contains(to), "frame delivered twice to {to:?}");
                }
                if verdict != Verdict::Answered {
                    assert!(replies.is_empty(), "a reply for {verdict:?}");
                }
                match verdict {
                    Verdict::Answered => {
                        let (tenant, kind) = sender.expect("a dead port's frame was answered");
                        assert_eq!(rule5, Rule5::Answer, "answered, but the model would not: {kind:?} {seen:02x?}");
                        let why = inspection(kind, |a| guest_ip(&live, tenant, a), |m| guest_mac(&live, tenant, m), seen, len);
                        assert_eq!(why, None, "answered, but rule 3 says drop: {kind:?} {seen:02x?} len {len}");
                        // The request goes on to the guest it asked for, only.
                        let tpa: Ipv4 = seen[38..42].try_into().unwrap();
                        let asked: Vec<PortId> = live
                            .iter()
                            .filter(|&(&id, &(t, k))| id != from && t == tenant && matches!(k, Kind::Guest(_, a) if a == tpa))
                            .map(|(&id, _)| id)
                            .collect();
                        assert_eq!(got, asked, "an answered request went elsewhere");
                        assert_eq!(replies.len(), 1);
                        let (to, r) = &replies[0];
                        assert_eq!(*to, from, "the reply went elsewhere");
                        // From the guest asked for, to the requester.
                        assert_eq!(r.len(), ARP_REPLY_LEN);
                        assert!(
                            r[..6] == seen[6..12] && r[32..38] == seen[22..28] && r[38..42] == seen[28..32] && r[28..32] == seen[38..42]
                        );
                        assert!(guest_mac(&live, tenant, r[6..12].try_into().unwrap()) && r[6..12] == r[22..28]);
                    }
                    Verdict::Forwarded { copies } => {
                        assert_eq!(copies as usize, got.len());
                        assert_ne!(rule5, Rule5::Answer, "the model would have answered {seen:02x?}");
                        if rule5 == Rule5::UplinkOnly {
                            assert!(
                                got.iter().all(|to| live.get(to).is_some_and(|p| p.1 == Kind::Uplink)),
                                "unanswered ARP reached a guest"
                            );
                        }
                        let (tenant, kind) = sender.expect("a dead port's frame was forwarded");
                        assert!((MIN_FRAME..=MAX_FRAME).contains(&len));
                        assert!(!is_multicast(&src));
                        if let Kind::Guest(own, _) = kind {
                            assert_eq!(src, own, "a spoofed guest frame was forwarded");
                        }
                        assert!(seen.len() >= MIN_FRAME, "forwarded on a header copy of {} bytes", seen.len());
                        let why = inspection(kind, |a| guest_ip(&live, tenant, a), |m| guest_mac(&live, tenant, m), seen, len);
                        assert_eq!(why, None, "forwarded, but rule 3 says drop: {kind:?} {seen:02x?} len {len}");
                        // A unicast reaches no guest but the one with its MAC
                        // (an unknown one goes to the uplink only).
                        if !is_multicast(&dst) {
                            assert!(
                                got.iter().all(|to| live
                                    .get(to)
                                    .is_some_and(|p| matches!(p.1, Kind::Uplink) || matches!(p.1, Kind::Guest(m, _) if m == dst))),
                                "a unicast to {dst:02x?} reached another guest: {got:?}"
                            );
                        }
                        // A unicast to a live guest of the tenant reaches exactly it.
                        if let Some((&to, _)) = live.iter().find(|&(_, &(t, k))| t == tenant && matches!(k, Kind::Guest(g, _) if g == dst))
                            && rule5 == Rule5::None
                        {
                            if to != from {
                                assert_eq!(got, [to], "unicast to a guest's MAC went elsewhere");
                            } else {
                                assert!(got.is_empty());
                            }
                        }
                    }
                    Verdict::Dropped(why) => {
                        assert!(got.is_empty(), "a dropped frame was delivered");
                        match sender {
                            None => assert_eq!(why, DropReason::UnknownPort),
                            Some(_) => assert_ne!(why, DropReason::UnknownPort),
                        }
                        // An inspection drop is exactly what rule 3 says.
                        if let (DropReason::SpoofedIp | DropReason::SpoofedArp | DropReason::Tagged, Some((tenant, kind))) = (why, sender) {
                            let want = inspection(kind, |a| guest_ip(&live, tenant, a), |m| guest_mac(&live, tenant, m), seen, len);
                            assert_eq!(Some(why), want, "{kind:?} {seen:02x?} len {len}");
                        }
                    }
                }
            }
        }
        // The switch agrees with the model about how many ports exist (and,
        // at the end, about every id ever issued: checking them all after
        // every operation made the target quadratic and slow).
        assert_eq!(sw.port_count(), live.len());
        assert!(max_learned == 5 || sw.learned_count() <= max_learned, "learned {} > {max_learned}", sw.learned_count());
    }
    for id in &ids {
        assert_eq!(sw.tenant_of(*id), live.get(id).map(|p| p.0), "tenant_of({id:?})");
    }
    let t = sw.totals();
    assert_eq!(t.rx_frames + t.dropped(), forwarded, "every frame is accepted or dropped once: {t:?}");
    assert_eq!(t.tx_frames + t.tx_full, handovers, "every hand-over is counted once: {t:?}");
}

/// What rule 5 (proxy ARP) does with an accepted frame, by the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule5 {
    /// A request for another live guest's address of the tenant.
    Answer,
    /// Another request, or a guest's group-addressed ARP: the tenant's
    /// uplink only.
    UplinkOnly,
    /// Not ARP, or an ARP the switch switches as any frame.
    None,
}

fn rule5(live: &BTreeMap<PortId, (u32, Kind)>, tenant: u32, kind: Kind, from: PortId, seen: &[u8]) -> Rule5 {
    if seen.len() < 42 || seen[12..14] != [0x08, 0x06] || seen[14..20] != [0, 1, 8, 0, 6, 4] {
        return Rule5::None;
    }
    let request = seen[20..22] == [0, 1];
    let tpa: Ipv4 = seen[38..42].try_into().unwrap();
    if request && live.iter().any(|(&id, &(t, k))| id != from && t == tenant && matches!(k, Kind::Guest(_, a) if a == tpa)) {
        return Rule5::Answer;
    }
    if request || (matches!(kind, Kind::Guest(..)) && seen[0] & 1 == 1) { Rule5::UplinkOnly } else { Rule5::None }
}

/// Whether `a` is the address of a live guest of `tenant`.
fn guest_ip(live: &BTreeMap<PortId, (u32, Kind)>, tenant: u32, a: Ipv4) -> bool {
    live.values().any(|&(t, k)| t == tenant && matches!(k, Kind::Guest(_, g) if g == a))
}

/// Whether `m` is the MAC of a live guest of `tenant`.
fn guest_mac(live: &BTreeMap<PortId, (u32, Kind)>, tenant: u32, m: Mac) -> bool {
    live.values().any(|&(t, k)| t == tenant && matches!(k, Kind::Guest(g, _) if g == m))
}

pub fn seeds() -> Vec<Vec<u8>> {
    // Operations in the input's encoding (see `switch`, `mac` and `ipv4`).
    // Guest MAC selector n: 02:00:00:00:00:0n; outside (QEMU) n: 0x18 | n;
    // broadcast: 0x20. Address selector n: 10.0.0.n; 0.0.0.0: 0x20.
    let guest = |tenant: u8, mac: u8, ip: u8| vec![0, tenant, mac, ip];
    let uplink = |tenant: u8| vec![2, tenant];
    let remove = |nth: u8| vec![3, nth];
    let later = |secs: u16| [vec![5, 1], secs.to_le_bytes().to_vec()].concat();
    // A frame from the `nth` port issued, to MAC selector `dst`, with
    // source `src` (a guest's own: [0]; else a MAC selector, which is all
    // the uplink gives), `len` bytes (14..=113), `body` from the EtherType
    // selector on; a full ring at every receiver whose slot is 7 mod 8;
    // with `header`, only that many bytes copied (forward_header).
    let frame = |nth: u8, dst: u8, src: &[u8], len: u8, body: &[u8], header: Option<u8>| {
        let op = if header.is_some() { 0x80 } else { 6 };
        [&[op, 9, nth, dst][..], src, &[3, len - 14], body, &[0xff], header.as_slice()].concat()
    };
    // Bodies: IPv4 from its own address / from address `n` (a guest's) /
    // from `n` (the uplink's); ARP (op 1 request, 2 reply) with its own
    // MAC and address / claiming `n`, for target `tpa`; a VLAN tag; an
    // uninspected EtherType.
    let ipv4_own = [&[0u8, 0][..], &[0; 11], &[0]].concat();
    let ipv4_from = |n: u8| [&[0u8, 0][..], &[0; 11], &[200, n]].concat();
    let ipv4_up = |n: u8| [&[0u8, 0][..], &[0; 11], &[n]].concat();
    let arp_own = |op: u8, tpa: u8| vec![3, 0, op - 1, 0, 0, tpa];
    let arp_claiming = |op: u8, n: u8, tpa: u8| vec![3, 0, op - 1, 0, 200, n, tpa];
    let vlan = vec![6, 0];
    let other = vec![7, 0x88, 0xb5];
    vec![
        // Two guests in tenant 0, one in tenant 1, an uplink in 0; frames
        // between them (unicast, broadcast), a MAC spoof, a runt.
        [
            vec![5],
            guest(0, 1, 2),
            guest(0, 2, 3),
            guest(1, 3, 2),
            uplink(0),
            frame(1, 1, &[0], 60, &other, None),
            frame(0, 0x20, &[0], 60, &other, None),
            frame(0, 0x20, &[250, 2], 60, &other, None),
            // A runt of 5 bytes (length selector 0).
            vec![6, 9, 2, 0x20, 0, 0, 5, 7, 0, 0, 0xff],
        ]
        .concat(),
        // The uplink learns outside MACs until the table is full; time
        // passes; expiry.
        [
            vec![2],
            uplink(0),
            guest(0, 1, 2),
            frame(0, 1, &[0x19], 60, &other, None),
            frame(0, 1, &[0x1a], 60, &other, None),
            frame(0, 1, &[0x1b], 60, &other, None),
            later(300),
            vec![4],
            frame(1, 0x19, &[0], 60, &other, None),
        ]
        .concat(),
        // Ports removed and re-added (stale ids), header-only forwarding.
        [
            vec![5],
            guest(0, 1, 2),
            guest(0, 2, 3),
            frame(0, 2, &[0], 60, &ipv4_own, Some(42)),
            remove(1),
            frame(1, 1, &[0], 60, &other, None),
            guest(0, 2, 3),
            frame(2, 1, &[0], 60, &ipv4_own, Some(20)),
        ]
        .concat(),
        // The ARP spoof: M (10.0.0.3) answers A's request for it, then
        // claims A's address (10.0.0.2) in ARP and IPv4, behind a VLAN tag;
        // the uplink claims it too; QEMU asks for A as itself.
        [
            vec![5],
            guest(0, 1, 2),
            guest(0, 2, 3),
            uplink(0),
            frame(0, 0x20, &[0], 60, &arp_own(1, 3), None),
            frame(1, 1, &[0], 60, &arp_own(2, 2), None),
            frame(1, 0x20, &[0], 60, &arp_claiming(2, 2, 2), None),
            frame(1, 1, &[0], 60, &arp_claiming(1, 2, 2), Some(42)),
            frame(1, 1, &[0], 60, &ipv4_from(2), None),
            frame(1, 1, &[0], 60, &ipv4_own, None),
            frame(1, 0x20, &[0], 60, &vlan, None),
            frame(2, 1, &[0x19], 60, &ipv4_up(2), None),
            frame(2, 0x20, &[0x19], 60, &[3, 0, 0, 0x19, 2, 2], None),
            frame(2, 0x20, &[0x19], 60, &[3, 0, 0, 0x19, 1, 2], None),
            // Cut short: ARP of 41 bytes, IPv4 of 33.
            frame(0, 0x20, &[0], 41, &arp_own(1, 3), None),
            frame(0, 2, &[0], 33, &ipv4_own, None),
        ]
        .concat(),
    ]
}
