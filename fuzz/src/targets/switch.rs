//! The switch's frame handling: a fuzz-chosen sequence of `add_port`,
//! `add_uplink`, `remove_port`, `forward`, `forward_header` and `expire`,
//! with frames whose MACs come from a small pool (so that they collide)
//! or from the input, and time that jumps (also backwards).
//!
//! Invariants, checked against a model of the live ports: no panic; a
//! frame is handed only to live ports of the sender's tenant, never to the
//! sender, never twice; a dropped frame reaches nobody; the verdict's
//! copies match the hand-overs; spoofed guest frames are dropped; a
//! unicast frame to a guest's own MAC in its tenant reaches exactly that
//! guest; ports come and go as the model says; the totals add up.

use std::collections::BTreeMap;

use abi::ring::{MIN_FRAME, MTU_FRAME};
use hypervisor::net::switch::{BROADCAST, DropReason, Mac, PortError, PortId, Switch, Verdict, is_multicast};

use crate::input::Input;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Guest(Mac),
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
                let dup = live.values().any(|&(t, k)| t == tenant && k == Kind::Guest(m));
                // A fresh address for every port (collisions are not this
                // target's business yet).
                let a = [10, 0, (ids.len() >> 8) as u8, ids.len() as u8];
                match sw.add_port(tenant, m, a) {
                    Ok(id) => {
                        assert!(!is_multicast(&m) && !dup, "add_port({tenant}, {m:02x?}) accepted");
                        assert!(!ids.contains(&id), "port id {id:?} issued twice");
                        ids.push(id);
                        live.insert(id, (tenant, Kind::Guest(m)));
                    }
                    Err(PortError::MulticastMac) => assert!(is_multicast(&m)),
                    Err(PortError::DuplicateMac) => assert!(dup, "duplicate refused with no duplicate"),
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
                // A guest mostly sends with its own MAC.
                let src = match live.get(&from) {
                    Some(&(_, Kind::Guest(own))) if inp.u8() < 200 => own,
                    _ => mac(&mut inp),
                };
                let len = match inp.u8() % 5 {
                    0 => inp.below(MIN_FRAME + 1),
                    1 => MTU_FRAME + inp.below(3),
                    2 => inp.u16() as usize,
                    _ => MIN_FRAME + inp.below(100),
                };
                let mut frame = vec![0u8; len.min(MTU_FRAME + 2)];
                let h = frame.len().min(12);
                frame[..h].copy_from_slice(&[dst, src].concat()[..h]);
                let header_only = op & 0x80 != 0;
                let refuse = inp.u8();
                let mut got: Vec<PortId> = Vec::new();
                let mut out = |to: PortId| {
                    got.push(to);
                    // Sometimes the receiver's ring is full.
                    (to.slot() as u8 ^ refuse) & 7 != 0
                };
                let verdict = if header_only {
                    // The header copy may be shorter than the claimed length.
                    let hl = inp.below(frame.len() + 1);
                    sw.forward_header(from, &frame[..hl.min(frame.len())], len, now, &mut out)
                } else {
                    sw.forward(from, &frame, now, &mut out)
                };
                forwarded += 1;
                handovers += got.len() as u64;

                let sender = live.get(&from).copied();
                for (i, to) in got.iter().enumerate() {
                    assert_ne!(*to, from, "frame sent back to its sender");
                    let (t, _) = live.get(to).unwrap_or_else(|| panic!("frame delivered to dead port {to:?}"));
                    let (st, _) = sender.expect("frame from a dead port delivered");
                    assert_eq!(*t, st, "frame crossed from tenant {st} to tenant {t}");
                    assert!(!got[..i].contains(to), "frame delivered twice to {to:?}");
                }
                match verdict {
                    Verdict::Forwarded { copies } => {
                        assert_eq!(copies as usize, got.len());
                        let (tenant, kind) = sender.expect("a dead port's frame was forwarded");
                        assert!((MIN_FRAME..=MTU_FRAME).contains(&len));
                        assert!(!is_multicast(&src));
                        if let Kind::Guest(own) = kind {
                            assert_eq!(src, own, "a spoofed guest frame was forwarded");
                        }
                        // A unicast to a live guest of the tenant reaches exactly it.
                        if let Some((&to, _)) = live.iter().find(|&(_, &(t, k))| t == tenant && k == Kind::Guest(dst)) {
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

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // Two guests in tenant 0, one in tenant 1, an uplink in 0; frames
        // between them (unicast, broadcast), a spoof, a runt.
        vec![5, 0, 0, 1, 0, 1, 1, 0, 1, 2, 2, 0, 6, 9, 1, 0, 3, 0, 0xff, 6, 9, 0, 32, 3, 10, 0xff, 6, 9, 0, 200, 0, 0xff, 6, 9, 0, 0, 5, 0xff],
        // The uplink learns outside MACs until the table is full; time passes; expiry.
        vec![2, 2, 0, 0, 0, 0, 0, 6, 9, 1, 24, 24, 3, 20, 0xff, 6, 9, 1, 0, 25, 3, 20, 0xff, 6, 9, 1, 0, 26, 3, 20, 0xff, 5, 1, 0x2c, 0x01, 4, 6, 9, 1, 24, 27, 3, 0, 0xff],
        // Ports removed and re-added (stale ids), header-only forwarding.
        vec![0, 0, 0, 0, 0, 1, 3, 0, 0, 0, 2, 0x86, 9, 1, 0, 200, 3, 5, 3, 0x86, 9, 0, 0, 3, 3, 14, 1],
    ]
}
