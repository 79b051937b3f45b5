//! The back end over rings in ordinary memory (`abi::ring::testing::
//! SharedRing`), event pages that notice a write after their guest is
//! gone, and a fake uplink; the guests' side is played with `abi::ring`'s
//! own producer and consumer.

use super::testing::FakeUplink;
use super::*;
use crate::net::port::testing::Events;
use crate::net::switch::{BROADCAST, Ipv4, Mac};
use abi::ring::testing::SharedRing;
use abi::ring::{Consumer, MAX_FRAME, PROD_OFFSET, Producer, RingMemory, SLOTS_OFFSET, max_frame};
use abi::time::events::NET_RX;
use std::sync::Arc;
use std::time::{Duration, Instant};

type TestNet = Net<SharedRing, Events, FakeUplink>;

const HOST_MAC: Mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// An EtherType the switch passes uninspected within a tenant.
const EXPERIMENTAL: [u8; 2] = [0x88, 0xb5];

fn mac(guest: usize) -> Mac {
    [2, 0, 0, 0, guest as u8, 0]
}

fn ip(guest: usize) -> Ipv4 {
    [10, 0, 0, 10 + guest as u8]
}

/// A 60-byte frame from `src` to `dst` carrying `seq`.
fn frame(src: Mac, dst: Mac, seq: u32) -> Vec<u8> {
    let mut f = alloc::vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&EXPERIMENTAL);
    f[14..18].copy_from_slice(&seq.to_le_bytes());
    f
}

fn seq(f: &[u8]) -> u32 {
    u32::from_le_bytes(f[14..18].try_into().unwrap())
}

/// A network with room for `guests` guests and an uplink in tenant 0.
fn net(guests: usize) -> TestNet {
    let mut net = TestNet::new(guests);
    let port = net.switch.lock().add_uplink(0).unwrap();
    net.uplink = Some((port, Mutex::new(FakeUplink::default())));
    net
}

/// Gives guest `id` a vNIC in `tenant` with rings of `slots` slots, as
/// guest creation does.
fn attach(net: &TestNet, id: usize, tenant: u32, slots: u32, limits: abi::bundle::Limits) {
    let sp = net.switch.lock().add_port(tenant, mac(id), ip(id)).unwrap();
    net.guest_of_slot[sp.slot()].store(id, Ordering::Release);
    net.ports[id].set(Port::new(sp, tenant, slots, &limits, SharedRing::new(slots), SharedRing::new(slots), Events::default()));
}

const UNLIMITED: abi::bundle::Limits =
    abi::bundle::Limits { nic_packets: 0, nic_bytes: 0, nic_broadcasts: 0, console_bytes: 0, notifications: 0 };

/// Guest `id` queues `frames` in its TX ring (as its driver does).
fn send(net: &TestNet, id: usize, producer: &mut Producer, frames: &[Vec<u8>]) {
    let ring = &net.port(id).unwrap().tx_ring;
    for f in frames {
        assert_eq!(producer.push(ring, f, 0), Ok(true), "guest {id}'s TX ring is full");
    }
    producer.publish(ring);
}

/// Everything waiting in guest `id`'s RX ring.
fn receive(net: &TestNet, id: usize, consumer: &mut Consumer) -> Vec<Vec<u8>> {
    receive_flagged(net, id, consumer).into_iter().map(|(f, _)| f).collect()
}

/// Everything waiting in guest `id`'s RX ring, with each frame's flags.
fn receive_flagged(net: &TestNet, id: usize, consumer: &mut Consumer) -> Vec<(Vec<u8>, u16)> {
    let ring = &net.port(id).unwrap().rx_ring;
    let mut buf = alloc::vec![0u8; MAX_FRAME];
    let mut got = Vec::new();
    while let Some(f) = consumer.pop(ring, &mut buf).unwrap() {
        got.push((buf[..f.len].to_vec(), f.flags));
    }
    consumer.release(ring);
    got
}

fn host_sends(net: &TestNet, frames: impl IntoIterator<Item = Vec<u8>>) {
    net.uplink.as_ref().unwrap().1.lock().from_host.extend(frames);
}

#[test]
fn a_frame_crosses_once_to_its_receiver_and_wakes_it() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 4, UNLIMITED);
    let mut tx = Producer::new(4);
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 7), frame(mac(1), mac(2), 8)]);
    let mut woken = Vec::new();
    net.drain(1, 0, &mut |g, e: &Events| woken.push((g, e.pending()))).unwrap();
    assert_eq!(woken, [(2, NET_RX)]);
    let mut c2 = Consumer::new(4);
    let got = receive(&net, 2, &mut c2);
    assert_eq!(got, [frame(mac(1), mac(2), 7), frame(mac(1), mac(2), 8)]);
    // To a MAC the switch does not know: the host's side only, never guest 2.
    send(&net, 1, &mut tx, &[frame(mac(1), HOST_MAC, 9)]);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().to_host, [frame(mac(1), HOST_MAC, 9)]);
    assert!(receive(&net, 2, &mut c2).is_empty());
    assert_eq!(got.len(), 2);
}

#[test]
fn a_lying_header_costs_what_was_published_and_a_bad_index_disconnects() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 4, UNLIMITED);
    let ring = &net.port(1).unwrap().tx_ring;
    let mut tx = Producer::new(4);
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 1), frame(mac(1), mac(2), 2)]);
    // The guest rewrites the first slot's length to something impossible:
    // where the next frame starts is unknown, so both are lost.
    ring.write(SLOTS_OFFSET, &9000u16.to_le_bytes());
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    assert_eq!(net.port(1).unwrap().ring_errors.load(Ordering::Relaxed), 1);
    assert_eq!(receive(&net, 2, &mut Consumer::new(4)), Vec::<Vec<u8>>::new());
    // What it sends next crosses.
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 3)]);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    let p2 = net.port(2).unwrap();
    let mut c2 = Consumer::new(4);
    assert_eq!(receive(&net, 2, &mut c2).iter().map(|f| seq(f)).collect::<Vec<_>>(), [3]);
    assert_eq!(p2.ring_errors.load(Ordering::Relaxed), 0);
    // Now it claims 100 frames in a 4-slot ring.
    ring.store(PROD_OFFSET, 102);
    let err = net.drain(1, 0, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err.0, RingError::BadIndex { prod: 102, .. }), "{err}");
}

#[test]
fn rate_limits_and_spoofing_are_counted_at_the_sender() {
    let net = net(3);
    let limits = abi::bundle::Limits { nic_packets: 3, ..UNLIMITED };
    attach(&net, 1, 0, 8, limits);
    attach(&net, 2, 0, 8, UNLIMITED);
    let mut tx = Producer::new(8);
    let frames: Vec<_> = (0..5).map(|i| frame(mac(1), mac(2), i)).collect();
    send(&net, 1, &mut tx, &frames);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    assert_eq!(net.port(1).unwrap().limited(), 2);
    assert_eq!(receive(&net, 2, &mut Consumer::new(8)).len(), 3);
    // A second later the bucket is full again; guest 1 claims guest 2's MAC.
    send(&net, 1, &mut tx, &[frame(mac(2), HOST_MAC, 0)]);
    net.drain(1, 1_000_000_000, &mut |_, _| {}).unwrap();
    assert_eq!(net.port(1).unwrap().spoofed.load(Ordering::Relaxed), 1);
    assert!(net.uplink.as_ref().unwrap().1.lock().to_host.is_empty());
}

/// An Ethernet/IPv4 ARP request (42 bytes) from `sha`/`spa` for `tpa`.
fn arp_request(dst: Mac, sha: Mac, spa: Ipv4, tpa: Ipv4) -> Vec<u8> {
    let mut f = alloc::vec![0u8; 42];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sha);
    f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[38..42].copy_from_slice(&tpa);
    f
}

/// The reply the switch makes: `mac` at `ip`, to `to` at `to_ip`.
fn arp_reply(mac: Mac, ip: Ipv4, to: Mac, to_ip: Ipv4) -> Vec<u8> {
    let mut f = alloc::vec![0u8; 60];
    f[..6].copy_from_slice(&to);
    f[6..12].copy_from_slice(&mac);
    f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    f[32..38].copy_from_slice(&to);
    f[38..42].copy_from_slice(&to_ip);
    f
}

#[test]
fn an_arp_request_is_answered_into_the_requesters_ring_and_told_to_the_guest_asked_for_only() {
    let net = net(5);
    for g in 1..=4 {
        attach(&net, g, if g <= 2 { 0 } else { 1 }, 8, UNLIMITED);
    }
    let mut tx1 = Producer::new(8);
    let mut rx: Vec<Consumer> = (0..5).map(|_| Consumer::new(8)).collect();
    // Guest 1 asks who has guest 2's address: the answer is in its own
    // ring, and the request in guest 2's (which learns guest 1 from it);
    // nobody else hears anything.
    send(&net, 1, &mut tx1, &[arp_request(BROADCAST, mac(1), ip(1), ip(2))]);
    let mut woken = Vec::new();
    net.drain(1, 0, &mut |g, _| woken.push(g)).unwrap();
    woken.sort();
    assert_eq!(woken, [1, 2]);
    assert_eq!(receive(&net, 1, &mut rx[1]), [arp_reply(mac(2), ip(2), mac(1), ip(1))]);
    assert_eq!(net.port(1).unwrap().arp_answered.load(Ordering::Relaxed), 1);
    assert_eq!(receive(&net, 2, &mut rx[2]), [arp_request(BROADCAST, mac(1), ip(1), ip(2))]);
    assert!((3..=4).all(|g| net.port(g).unwrap().events.pending() == 0), "nobody else got an event");
    // Guest 3's address is tenant 1's: not answered, to the host only.
    send(&net, 1, &mut tx1, &[arp_request(BROADCAST, mac(1), ip(1), ip(3))]);
    woken.clear();
    net.drain(1, 0, &mut |g, _| woken.push(g)).unwrap();
    assert!(woken.is_empty());
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().to_host, [arp_request(BROADCAST, mac(1), ip(1), ip(3))]);
    // In tenant 1 (no uplink) guest 3 asks for guest 4, then for an
    // address nobody has: answered, then dropped.
    let mut tx3 = Producer::new(8);
    send(&net, 3, &mut tx3, &[arp_request(BROADCAST, mac(3), ip(3), ip(4)), arp_request(BROADCAST, mac(3), ip(3), [10, 0, 0, 99])]);
    net.drain(3, 0, &mut |_, _| {}).unwrap();
    assert_eq!(receive(&net, 3, &mut rx[3]), [arp_reply(mac(4), ip(4), mac(3), ip(3))]);
    assert_eq!(receive(&net, 4, &mut rx[4]), [arp_request(BROADCAST, mac(3), ip(3), ip(4))]);
    let st = net.switch.lock().stats(net.port(3).unwrap().switch_port).unwrap();
    assert_eq!((st.arp_answered, st.arp_unknown, st.unrouted, st.tx_frames), (1, 1, 1, 1));
    // The host asks for guest 2: the switch answers through the uplink,
    // and only guest 2 hears the request.
    net.uplink.as_ref().unwrap().1.lock().to_host.clear();
    host_sends(&net, [arp_request(BROADCAST, HOST_MAC, [10, 0, 0, 1], ip(2))]);
    let mut woken = Vec::new();
    net.poll_uplink(0, &mut |g| woken.push(g));
    assert_eq!(woken, [2]);
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().to_host, [arp_reply(mac(2), ip(2), HOST_MAC, [10, 0, 0, 1])]);
    assert_eq!(receive(&net, 2, &mut rx[2]), [arp_request(BROADCAST, HOST_MAC, [10, 0, 0, 1], ip(2))]);
    assert!([1, 3, 4].into_iter().all(|g| receive(&net, g, &mut rx[g]).is_empty()));
    // A guest's forged request is dropped and answered by nobody.
    send(&net, 1, &mut tx1, &[arp_request(BROADCAST, mac(1), ip(2), ip(2))]);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    assert_eq!(net.port(1).unwrap().spoofed.load(Ordering::Relaxed), 1);
    assert!(receive(&net, 1, &mut rx[1]).is_empty());
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().to_host.len(), 1);
}

/// Guest 1 with `limits` and guests 2..=`last` without, all in tenant 0
/// with rings of `slots`; guest 1's TX producer.
fn limited_sender_among(net: &TestNet, last: usize, slots: u32, limits: abi::bundle::Limits) -> Producer {
    attach(net, 1, 0, slots, limits);
    for g in 2..=last {
        attach(net, g, 0, slots, UNLIMITED);
    }
    Producer::new(slots)
}

/// The broadcast limit bounds floods. ARP is never flooded (the switch
/// answers a request or sends it to the uplink only), so a client asking
/// for many guests' MACs is held only to its frame limit; other
/// broadcasts over the limit are dropped and counted.
#[test]
fn arp_requests_take_no_broadcast_tokens_but_floods_do() {
    let net = net(6);
    let mut tx = limited_sender_among(&net, 5, 16, abi::bundle::Limits { nic_broadcasts: 2, ..UNLIMITED });
    let mut rx1 = Consumer::new(16);
    // Five requests in the same instant, for four guests and one address
    // nobody has: all answered or passed to the host.
    let asks: Vec<_> = (2..=5).map(|g| arp_request(BROADCAST, mac(1), ip(1), ip(g))).collect();
    send(&net, 1, &mut tx, &asks);
    send(&net, 1, &mut tx, &[arp_request(BROADCAST, mac(1), ip(1), [10, 0, 0, 99])]);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    let replies: Vec<_> = (2..=5).map(|g| arp_reply(mac(g), ip(g), mac(1), ip(1))).collect();
    assert_eq!(receive(&net, 1, &mut rx1), replies);
    assert_eq!(net.port(1).unwrap().limited(), 0);
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().to_host.len(), 1, "the unknown one to the host");
    // Four floods in the same instant: two pass, two are over the limit.
    let floods: Vec<_> = (0..4).map(|i| frame(mac(1), BROADCAST, i)).collect();
    send(&net, 1, &mut tx, &floods);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    let mut rx2 = Consumer::new(16);
    let heard: Vec<u32> = receive(&net, 2, &mut rx2).iter().filter(|f| f[12..14] != [0x08, 0x06]).map(|f| seq(f)).collect();
    assert_eq!(heard, [0, 1]);
    assert_eq!(net.port(1).unwrap().limited(), 2);
}

#[test]
fn a_flood_costs_the_sender_a_frame_of_its_limit_per_copy() {
    const MS: u64 = 1_000_000;
    let net = net(11);
    // 25 frames a second: one token every 40 ms.
    let mut tx = limited_sender_among(&net, 10, 8, abi::bundle::Limits { nic_packets: 25, ..UNLIMITED });
    let mut rx2 = Consumer::new(8);
    // Each broadcast reaches 9 guests and the host: 10 frames of budget.
    // The first two fit, the third runs 5 into debt, the rest wait.
    let floods: Vec<_> = (0..5).map(|i| frame(mac(1), BROADCAST, i)).collect();
    send(&net, 1, &mut tx, &floods);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    assert_eq!(receive(&net, 2, &mut rx2).len(), 3);
    assert_eq!(net.port(1).unwrap().limited(), 2);
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().to_host.len(), 3);
    // 200 ms refill 5 tokens: the debt, nothing more.
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 9)]);
    net.drain(1, 200 * MS, &mut |_, _| {}).unwrap();
    assert!(receive(&net, 2, &mut rx2).is_empty());
    assert_eq!(net.port(1).unwrap().limited(), 3);
    // 40 ms later a token: one unicast frame, one copy.
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 10), frame(mac(1), mac(2), 11)]);
    net.drain(1, 240 * MS, &mut |_, _| {}).unwrap();
    assert_eq!(receive(&net, 2, &mut rx2), [frame(mac(1), mac(2), 10)]);
    assert_eq!(net.port(1).unwrap().limited(), 4);
    // Over 10 s the guest's frames made at most its limit's worth of
    // copies (plus the one flood that ran into debt).
    let mut copies = 0usize;
    let mut rxs: Vec<Consumer> = (0..11).map(|_| Consumer::new(8)).collect();
    rxs[2] = rx2;
    for (g, rx) in rxs.iter_mut().enumerate().skip(3) {
        assert_eq!(receive(&net, g, rx).len(), 3, "the first floods");
    }
    for ms in (250..10_250).step_by(50) {
        send(&net, 1, &mut tx, &[frame(mac(1), BROADCAST, 0)]);
        net.drain(1, ms * MS, &mut |_, _| {}).unwrap();
        copies += (2..=10).map(|g| receive(&net, g, &mut rxs[g]).len()).sum::<usize>();
    }
    let to_host = core::mem::take(&mut net.uplink.as_ref().unwrap().1.lock().to_host).len() - 3;
    let copies = copies + to_host;
    assert!((240..=260).contains(&copies), "{copies} copies in 10 s at 25 frames/s");
}

/// After `disconnect` nothing reaches the guest's pages: no frame from a
/// neighbour or the host, no frame that waited for it, no event.
#[test]
fn a_disconnected_guest_gets_no_frames_and_no_events() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 2, UNLIMITED);
    host_sends(&net, (0..4).map(|i| frame(HOST_MAC, mac(2), i)));
    net.poll_uplink(0, &mut |_| {});
    assert_eq!(net.held.lock().waiting(2), 2);
    let p2 = net.port(2).unwrap();
    p2.events.bits.store(0, Ordering::Relaxed);
    net.disconnect(2);
    assert_eq!(p2.uplink_dropped(), 2, "the frames that waited for it are dropped and counted");
    let prod = p2.rx_ring.load(PROD_OFFSET);
    send(&net, 1, &mut Producer::new(4), &[frame(mac(1), mac(2), 9)]);
    net.drain(1, 1, &mut |_, _| {}).unwrap();
    host_sends(&net, [frame(HOST_MAC, mac(2), 10)]);
    net.poll_uplink(2, &mut |_| {});
    assert!(!p2.notify(NET_RX));
    assert_eq!((p2.rx_ring.load(PROD_OFFSET), p2.events.pending()), (prod, 0));
    assert_eq!(net.drain(2, 3, &mut |_, _| {}), Ok(()), "its own drain does nothing");
}

/// The host's frames for a guest whose ring is full wait (in order, in its
/// own queue, never in front of other guests' frames), then the queue's
/// bound drops the rest, then waiting too long drops the waiting ones;
/// every frame lost is in the guest's `uplink_dropped`.
#[test]
fn a_full_receiver_stalls_the_host_s_frames_then_drops_them_counted() {
    let net = net(4);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 4, UNLIMITED);
    let bound = Bounds::UPLINK.guest_frames;
    let total = 4 + bound + 14;
    // Guest 2 gets a frame after every tenth of guest 1's.
    let mut from_host = Vec::new();
    for i in 0..total as u32 {
        from_host.push(frame(HOST_MAC, mac(1), i));
        if i % 10 == 9 {
            from_host.push(frame(HOST_MAC, mac(2), 1000 + i));
        }
    }
    host_sends(&net, from_host);
    let mut woken = Vec::new();
    // Enough polls to take everything; guest 1 never empties its ring.
    for t in 0..4 {
        net.poll_uplink(t * 1000, &mut |g| woken.push(g));
    }
    let p1 = net.port(1).unwrap();
    assert_eq!(net.held.lock().waiting(1), bound, "a stalled guest holds at most its bound");
    assert_eq!(p1.uplink_dropped(), (total - 4 - bound) as u64);
    // Guest 2's frames never waited behind guest 1's; its fifth waits in
    // its own queue for room.
    let mut c2 = Consumer::new(4);
    assert_eq!(receive(&net, 2, &mut c2).iter().map(|f| seq(f)).collect::<Vec<_>>(), [1009, 1019, 1029, 1039]);
    assert_eq!(net.held.lock().waiting(2), 1);
    net.poll_uplink(5000, &mut |_| {});
    assert_eq!(receive(&net, 2, &mut c2).iter().map(|f| seq(f)).collect::<Vec<_>>(), [1049]);
    assert_eq!(net.port(2).unwrap().uplink_dropped(), 0);
    // Guest 1 drains its ring: its frames arrive in order, the ones that
    // waited next.
    let mut c1 = Consumer::new(4);
    let mut seen: Vec<u32> = receive(&net, 1, &mut c1).iter().map(|f| seq(f)).collect();
    net.poll_uplink(10_000, &mut |g| woken.push(g));
    seen.extend(receive(&net, 1, &mut c1).iter().map(|f| seq(f)));
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    assert_eq!(net.held.lock().waiting(1), bound - 4);
    // The rest waited too long.
    net.poll_uplink(10_000 + Bounds::UPLINK.max_wait_ns, &mut |_| {});
    assert_eq!(net.held.lock().waiting(1), 0);
    assert_eq!(p1.uplink_dropped(), (total - 8) as u64);
    assert!(woken.contains(&1) && woken.contains(&2));
    assert_eq!(p1.events.pending() & NET_RX, NET_RX);
}

/// A guest capture records each frame from the host once, when it goes
/// into the guest's ring; frames waiting behind a stalled one are not
/// recorded again on every poll. A tenant capture records each once, as it
/// comes from the host.
#[test]
fn frames_waiting_for_a_stalled_guest_are_captured_once_when_they_go_in() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    let start = |target| {
        *net.capture.lock() = Capture { target: Some(target), max: 1000, until_ns: u64::MAX, ..Default::default() };
        net.capturing.store(true, Ordering::Release);
    };
    start(CaptureTarget::Guest(1));
    host_sends(&net, (0..12).map(|i| frame(HOST_MAC, mac(1), i)));
    for t in 0..10 {
        net.poll_uplink(t, &mut |_| {});
    }
    let captured = |net: &TestNet| net.capture.lock().frames.iter().map(|(_, f)| seq(f)).collect::<Vec<_>>();
    assert_eq!(captured(&net), [0, 1, 2, 3], "only what went into the ring, once");
    let mut c1 = Consumer::new(4);
    for round in 0..2 {
        receive(&net, 1, &mut c1);
        net.poll_uplink(20 + round, &mut |_| {});
        net.poll_uplink(30 + round, &mut |_| {});
    }
    assert_eq!(captured(&net), (0..12).collect::<Vec<_>>());
    assert_eq!(net.capture.lock().dropped, 0);
    // A tenant capture: at intake, whether or not the guest has room.
    start(CaptureTarget::Tenant(0));
    host_sends(&net, (100..110).map(|i| frame(HOST_MAC, mac(1), i)));
    for t in 0..5 {
        net.poll_uplink(100 + t, &mut |_| {});
    }
    assert_eq!(captured(&net), (100..110).collect::<Vec<_>>());
}

/// Lock order (TX -> switch -> RX -> uplink, held frames first) under every
/// path at once, and a guest disconnected while other threads deliver to
/// it: guests 1 and 2 send to each other and to the host from their own
/// threads, a third thread polls the uplink, which sends to both; the main
/// thread disconnects guest 2 mid-flight and then "frees" its pages. A
/// broken order deadlocks (the watchdog fails the test); a delivery after
/// `disconnect` returned changes guest 2's RX ring or event page.
#[test]
fn the_lock_order_holds_under_drains_polls_and_disconnects() {
    const SLOTS: u32 = 8;
    for round in 0..40u64 {
        let net = Arc::new(net(3));
        attach(&net, 1, 0, SLOTS, UNLIMITED);
        attach(&net, 2, 0, SLOTS, UNLIMITED);
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let guest = |me: usize, other: usize| {
            let (net, stop, delivered) = (net.clone(), stop.clone(), delivered.clone());
            std::thread::spawn(move || {
                let (mut tx, mut rx) = (Producer::new(SLOTS), Consumer::new(SLOTS));
                let ring = &net.port(me).unwrap().tx_ring;
                let mut i = 0u32;
                while !stop.load(Ordering::Acquire) {
                    let to = if i.is_multiple_of(4) { HOST_MAC } else { mac(other) };
                    if tx.push(ring, &frame(mac(me), to, i), 0) == Ok(true) {
                        tx.publish(ring);
                    }
                    i = i.wrapping_add(1);
                    let _ = net.drain(me, u64::from(i), &mut |_, _| {});
                    if me == 1 || !net.port(2).unwrap().rx.is_closed() {
                        delivered.fetch_add(receive(&net, me, &mut rx).len() as u64, Ordering::Relaxed);
                    }
                }
            })
        };
        let threads = [guest(1, 2), guest(2, 1), {
            let (net, stop) = (net.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Acquire) {
                    host_sends(&net, [frame(HOST_MAC, mac(1 + i as usize % 2), i)]);
                    net.poll_uplink(u64::from(i), &mut |_| {});
                    i = i.wrapping_add(1);
                }
            })
        }];
        let watchdog = Instant::now() + Duration::from_secs(20);
        let wait_for = |n: u64| {
            while delivered.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < watchdog, "round {round}: deadlock (nothing delivered for 20 s)");
                std::thread::yield_now();
            }
        };
        wait_for(5 + round % 13 * 7);
        // From another thread, so that a deadlock in it meets the watchdog.
        let disconnect = {
            let net = net.clone();
            std::thread::spawn(move || net.disconnect(2))
        };
        while !disconnect.is_finished() {
            assert!(Instant::now() < watchdog, "round {round}: deadlock (disconnect never returned)");
            std::thread::yield_now();
        }
        disconnect.join().unwrap();
        // Guest 2 is destroyed: from now on its pages are someone else's.
        let p2 = net.port(2).unwrap();
        p2.events.freed.store(true, Ordering::Release);
        let prod = p2.rx_ring.load(PROD_OFFSET);
        let more = delivered.load(Ordering::Relaxed) + 20;
        wait_for(more);
        stop.store(true, Ordering::Release);
        for t in threads {
            while !t.is_finished() {
                assert!(Instant::now() < watchdog, "round {round}: deadlock (a thread never stopped)");
                std::thread::yield_now();
            }
            t.join().unwrap();
        }
        assert_eq!(p2.rx_ring.load(PROD_OFFSET), prod, "round {round}: a frame went into a disconnected guest's ring");
        assert_eq!(p2.events.late.load(Ordering::Relaxed), 0, "round {round}: an event was raised after disconnect");
        assert!(net.held.lock().waiting(2) == 0, "round {round}: frames still held for a disconnected guest");
    }
}

/// A drain pass's last receiver, looked up once, is still what it holds
/// when that guest goes mid-pass; it is closed then, and takes nothing:
/// no room for a frame, no frame put in its ring.
#[test]
fn a_receiver_that_goes_mid_pass_takes_nothing_from_the_pass() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 4, UNLIMITED);
    let dest = net.port(2).unwrap().switch_port;
    let mut receivers = None;
    assert_eq!(net.receiver(dest, &mut receivers).map(|(g, _)| g), Some(2));
    assert_eq!(net.room_for_in(dest, 100, &mut receivers), Some(true));
    let held = net.port(2).unwrap();
    let prod = held.rx_ring.load(PROD_OFFSET);
    net.disconnect(2);
    net.release(2);
    // Still the old port, from the pass's own record...
    assert!(receivers.as_ref().is_some_and(|r| Arc::ptr_eq(&r.port, &held)));
    // ... which is closed.
    assert_eq!(net.room_for_in(dest, 100, &mut receivers), None);
    let mut woken = Vec::new();
    let put = net.to_guest_in(dest, &mut woken, &mut receivers, 0, |rx, ring| rx.push(ring, &frame(mac(1), mac(2), 1), 0));
    assert!(!put && woken.is_empty());
    assert_eq!(held.rx_ring.load(PROD_OFFSET), prod, "a frame went into a disconnected guest's ring");
    // Another receiver is looked up afresh.
    let other = net.port(1).unwrap().switch_port;
    assert_eq!(net.receiver(other, &mut receivers).map(|(g, _)| g), Some(1));
}

/// A guest id given again (its guest ended and its record was forgotten)
/// carries nothing across: the old switch port finds no guest (even where
/// the switch gives its slot again), and frames for the old guest's MAC
/// reach no one in the new guest's tenant.
#[test]
fn a_reused_guest_id_gets_nothing_meant_for_the_guest_it_was() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 4, UNLIMITED);
    let old = net.port(2).unwrap().switch_port;
    net.disconnect(2);
    net.release(2);
    assert!(net.port(2).is_none());
    // Guest id 2 again, in tenant 1, with another MAC.
    let sp = net.switch.lock().add_port(1, [2, 0, 0, 0, 9, 1], [10, 1, 0, 2]).unwrap();
    net.guest_of_slot[sp.slot()].store(2, Ordering::Release);
    net.ports[2].set(Port::new(sp, 1, 4, &UNLIMITED, SharedRing::new(4), SharedRing::new(4), Events::default()));
    assert!(net.guest_at(old).is_none(), "the old switch port finds no guest");
    assert_eq!(net.guest_at(sp).map(|(g, _)| g), Some(2));
    let mut tx = Producer::new(4);
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 1)]);
    let mut woken = Vec::new();
    net.drain(1, 0, &mut |g, _| woken.push(g)).unwrap();
    assert_eq!(woken, Vec::<usize>::new());
    assert_eq!(receive(&net, 2, &mut Consumer::new(4)), Vec::<Vec<u8>>::new());
}

/// What an interrupt-driven caller relies on: a poll that took a whole
/// batch says more may wait, one that emptied the device says not; held
/// frames are retried without the device, and say whether some still wait.
#[test]
fn a_poll_says_when_the_device_may_hold_more_and_held_frames_are_retried_alone() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    assert!(!net.retry_uplink_held(0, &mut |_| {}), "nothing held");
    host_sends(&net, (0..UPLINK_BATCH as u32 + 3).map(|i| frame(HOST_MAC, mac(1), i)));
    assert!(net.poll_uplink(0, &mut |_| {}), "a whole batch: poll again");
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().rearmed, 0, "not emptied: its interrupt stays as it is");
    assert!(!net.poll_uplink(1, &mut |_| {}), "the device is empty");
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().rearmed, 1, "emptied: its interrupt is re-armed");
    // Guest 1's ring took 4; the rest wait for it (up to its bound).
    let waiting = net.held.lock().waiting(1);
    assert!(waiting > 0);
    let before = net.uplink.as_ref().unwrap().1.lock().notified;
    assert!(net.retry_uplink_held(2, &mut |_| {}), "its ring is still full");
    let mut c1 = Consumer::new(4);
    assert_eq!(receive(&net, 1, &mut c1).len(), 4);
    let mut woken = Vec::new();
    assert!(net.retry_uplink_held(3, &mut |g| woken.push(g)));
    assert_eq!(woken, [1]);
    assert_eq!(net.held.lock().waiting(1), waiting - 4);
    assert_eq!(net.uplink.as_ref().unwrap().1.lock().notified, before, "the device was not touched");
}

fn seqs(frames: &[Vec<u8>]) -> Vec<u32> {
    frames.iter().map(|f| seq(f)).collect()
}

fn tx_pending(net: &TestNet, id: usize) -> u32 {
    let p = net.port(id).unwrap();
    p.tx.lock().ring.pending(&p.tx_ring).unwrap()
}

/// Backpressure: a frame for a receiver whose ring is full stays in the
/// sender's TX ring; the receiver's turn on a CPU (after it read) sends it
/// on, in order, nothing lost; the sender hears that its full ring has room.
#[test]
fn a_full_receiver_holds_the_sender_s_frames_until_it_has_read() {
    let net = net(4);
    attach(&net, 1, 1, 4, UNLIMITED);
    attach(&net, 2, 1, 4, UNLIMITED);
    let mut tx = Producer::new(4);
    let mut rx = Consumer::new(4);
    send(&net, 1, &mut tx, &(0..4).map(|i| frame(mac(1), mac(2), i)).collect::<Vec<_>>());
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    send(&net, 1, &mut tx, &(4..8).map(|i| frame(mac(1), mac(2), i)).collect::<Vec<_>>());
    let p1 = net.port(1).unwrap();
    p1.events.bits.store(0, Ordering::Relaxed);
    net.drain(1, 10, &mut |_, _| {}).unwrap();
    assert_eq!(tx_pending(&net, 1), 4, "the frames wait in the sender's ring");
    assert_eq!(p1.tx_waits(), 1);
    assert_eq!(p1.events.pending(), 0, "its ring is still full");
    // Draining it again (it blocked) changes nothing and is not a new wait.
    net.drain(1, 20, &mut |_, _| {}).unwrap();
    assert_eq!((tx_pending(&net, 1), p1.tx_waits()), (4, 1));
    // The receiver reads, then leaves its CPU.
    assert_eq!(seqs(&receive(&net, 2, &mut rx)), [0, 1, 2, 3]);
    let mut woken = Vec::new();
    assert!(net.receiver_ran(2, 30, &mut |g, e: &Events| woken.push((g, e.pending()))).is_empty());
    assert_eq!(seqs(&receive(&net, 2, &mut rx)), [4, 5, 6, 7]);
    assert_eq!(tx_pending(&net, 1), 0);
    assert!(woken.contains(&(2, NET_RX)) && woken.contains(&(1, abi::time::events::NET_TX)), "{woken:?}");
    let p2 = net.port(2).unwrap();
    assert_eq!((p2.rx_full_drops(), net.switch.lock().totals().tx_full), (0, 0), "nothing was lost");
    assert_eq!(net.switch.lock().stats(p1.switch_port).unwrap().rx_frames, 8, "each frame counted once");
    assert_eq!(net.waiter_count.load(Ordering::Relaxed), 0);
}

/// A receiver that never reads costs each sender one bounded wait: then
/// the frame is dropped and counted, the receiver is stalled (later frames
/// for it are dropped at once), and the sender's other traffic goes on.
/// Other senders are never held up by it.
#[test]
fn a_receiver_that_never_reads_costs_the_sender_only_the_bounded_wait() {
    let net = net(5);
    for g in 1..=4 {
        attach(&net, g, 1, 4, UNLIMITED);
    }
    let mut tx1 = Producer::new(4);
    send(&net, 1, &mut tx1, &(0..4).map(|i| frame(mac(1), mac(2), i)).collect::<Vec<_>>());
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    send(&net, 1, &mut tx1, &[frame(mac(1), mac(2), 4), frame(mac(1), mac(3), 5)]);
    net.drain(1, 1_000, &mut |_, _| {}).unwrap();
    assert_eq!(tx_pending(&net, 1), 2, "the frame for 3 waits behind the one for 2");
    // Another sender's traffic to another guest is not held up.
    let mut tx4 = Producer::new(4);
    send(&net, 4, &mut tx4, &[frame(mac(4), mac(3), 40)]);
    net.drain(4, 2_000, &mut |_, _| {}).unwrap();
    let mut c3 = Consumer::new(4);
    assert_eq!(seqs(&receive(&net, 3, &mut c3)), [40]);
    // Before the bound nothing moves; the machine is told when to retry.
    let (next, broken) = net.retry_waiting(MAX_WAIT_NS, &mut |_, _| {});
    assert!(broken.is_empty());
    assert_eq!(next, Some(1_000 + MAX_WAIT_NS));
    assert_eq!(tx_pending(&net, 1), 2);
    // At the bound the frame is dropped and counted; the next goes on.
    let (next, _) = net.retry_waiting(1_000 + MAX_WAIT_NS, &mut |_, _| {});
    assert_eq!(next, None);
    assert_eq!(tx_pending(&net, 1), 0);
    let p2 = net.port(2).unwrap();
    assert_eq!(p2.rx_full_drops(), 1);
    assert_eq!(seqs(&receive(&net, 3, &mut c3)), [5]);
    // Stalled: frames for it are dropped at once, not waited for.
    send(&net, 1, &mut tx1, &[frame(mac(1), mac(2), 6), frame(mac(1), mac(3), 7)]);
    net.drain(1, 2_000 + MAX_WAIT_NS, &mut |_, _| {}).unwrap();
    assert_eq!((tx_pending(&net, 1), p2.rx_full_drops(), net.port(1).unwrap().tx_waits()), (0, 2, 1));
    assert_eq!(seqs(&receive(&net, 3, &mut c3)), [7]);
    // Once it reads, frames reach it again and it is no longer stalled.
    assert_eq!(seqs(&receive(&net, 2, &mut Consumer::new(4))), [0, 1, 2, 3]);
    send(&net, 1, &mut tx1, &[frame(mac(1), mac(2), 8)]);
    net.drain(1, 3_000 + MAX_WAIT_NS, &mut |_, _| {}).unwrap();
    assert!(!p2.stalled.load(Ordering::Relaxed));
    assert_eq!(p2.rx_full_drops(), 2);
}

/// A receiver that frees one slot just before each frame's bound would
/// run out still costs its sender one bound in all, not one per frame:
/// the bound runs from when it first fell short. Once it has caught up
/// (room for a frame of its MTU) it is waited for again.
#[test]
fn a_receiver_that_reads_a_frame_now_and_then_costs_one_bound_in_all() {
    let net = net(4);
    attach(&net, 1, 1, 4, UNLIMITED);
    attach(&net, 2, 1, 4, UNLIMITED);
    let mut tx = Producer::new(4);
    let mut rx = Consumer::new(4);
    let ring = &net.port(2).unwrap().rx_ring;
    let mut buf = alloc::vec![0u8; MAX_FRAME];
    let mut read_one = |rx: &mut Consumer| {
        let f = rx.pop(ring, &mut buf).unwrap().expect("a frame");
        rx.release(ring);
        seq(&buf[..f.len])
    };
    send(&net, 1, &mut tx, &(0..4).map(|i| frame(mac(1), mac(2), i)).collect::<Vec<_>>());
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    send(&net, 1, &mut tx, &(4..7).map(|i| frame(mac(1), mac(2), i)).collect::<Vec<_>>());
    net.drain(1, 1_000, &mut |_, _| {}).unwrap();
    assert_eq!(tx_pending(&net, 1), 3, "held");
    // 0.8 of a bound later it reads one frame: the head frame goes in
    // and fills the ring again.
    let step = MAX_WAIT_NS / 5 * 4;
    assert_eq!(read_one(&mut rx), 0);
    net.receiver_ran(2, 1_000 + step, &mut |_, _| {});
    assert_eq!(tx_pending(&net, 1), 2);
    // Another 0.8 of a bound: past the bound from its first shortfall, so
    // the frames that do not fit are dropped, counted, and not waited for.
    assert_eq!(read_one(&mut rx), 1);
    net.receiver_ran(2, 1_000 + 2 * step, &mut |_, _| {});
    let p2 = net.port(2).unwrap();
    assert_eq!((tx_pending(&net, 1), p2.rx_full_drops()), (0, 1), "5 went in, 6 was dropped");
    assert!(p2.stalled.load(Ordering::Relaxed));
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 7)]);
    net.drain(1, 2_000 + 2 * step, &mut |_, _| {}).unwrap();
    assert_eq!((tx_pending(&net, 1), p2.rx_full_drops(), net.port(1).unwrap().tx_waits()), (0, 2, 2));
    // It reads everything: caught up, no longer stalled, waited for again.
    assert_eq!(seqs(&receive(&net, 2, &mut rx)), [2, 3, 4, 5]);
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 8)]);
    net.drain(1, 3_000 + 2 * step, &mut |_, _| {}).unwrap();
    assert!(!p2.stalled.load(Ordering::Relaxed) && p2.full_since_ns.load(Ordering::Relaxed) == 0);
    send(&net, 1, &mut tx, &(9..13).map(|i| frame(mac(1), mac(2), i)).collect::<Vec<_>>());
    net.drain(1, 4_000 + 2 * step, &mut |_, _| {}).unwrap();
    assert_eq!((tx_pending(&net, 1), net.port(1).unwrap().tx_waits()), (1, 3), "a new shortfall waits again");
}

/// A frame for the host waits while the uplink's queue is full, is
/// retried every `UPLINK_WAIT_RETRY_NS`, and goes out once there is room.
#[test]
fn a_frame_for_the_host_waits_for_room_in_the_uplink() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    // The switch learns the host's MAC from a frame of its own.
    host_sends(&net, [frame(HOST_MAC, mac(1), 0)]);
    net.poll_uplink(0, &mut |_| {});
    net.uplink.as_ref().unwrap().1.lock().full = true;
    let mut tx = Producer::new(4);
    send(&net, 1, &mut tx, &[frame(mac(1), HOST_MAC, 1), frame(mac(1), HOST_MAC, 2)]);
    net.drain(1, 10, &mut |_, _| {}).unwrap();
    assert_eq!(tx_pending(&net, 1), 2);
    let (next, _) = net.retry_waiting(20, &mut |_, _| {});
    assert_eq!(next, Some(20 + UPLINK_WAIT_RETRY_NS));
    net.uplink.as_ref().unwrap().1.lock().full = false;
    let (next, _) = net.retry_waiting(30, &mut |_, _| {});
    assert_eq!(next, None);
    let up = net.uplink.as_ref().unwrap();
    assert_eq!(seqs(&up.1.lock().to_host), [1, 2]);
    // The device is told once per drain that sent it frames, not per frame.
    let flushed = up.1.lock().flushed;
    send(&net, 1, &mut tx, &[frame(mac(1), HOST_MAC, 3), frame(mac(1), HOST_MAC, 4)]);
    net.drain(1, 40, &mut |_, _| {}).unwrap();
    assert_eq!(up.1.lock().flushed, flushed + 1);
    net.drain(1, 50, &mut |_, _| {}).unwrap();
    assert_eq!(up.1.lock().flushed, flushed + 1, "nothing sent, nothing told");
    let told = up.1.lock().notified + flushed + 1;
    assert_eq!(net.uplink_notifies(), told as u64, "the device's count, for the machine record");
}

/// A waiting sender that goes leaves the list; a sender waiting for a
/// receiver that goes moves on at the next retry (its frame dropped).
#[test]
fn waiters_and_receivers_that_go_leave_nothing_behind() {
    let net = net(4);
    for g in 1..=3 {
        attach(&net, g, 1, 2, UNLIMITED);
    }
    let (mut tx1, mut tx3) = (Producer::new(2), Producer::new(2));
    send(&net, 1, &mut tx1, &[frame(mac(1), mac(2), 0), frame(mac(1), mac(2), 1)]);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    send(&net, 1, &mut tx1, &[frame(mac(1), mac(2), 2)]);
    send(&net, 3, &mut tx3, &[frame(mac(3), mac(2), 3)]);
    net.drain(1, 1, &mut |_, _| {}).unwrap();
    net.drain(3, 1, &mut |_, _| {}).unwrap();
    assert_eq!(net.waiter_count.load(Ordering::Relaxed), 2);
    net.disconnect(1);
    assert_eq!(net.waiter_count.load(Ordering::Relaxed), 1);
    net.disconnect(2);
    let (next, broken) = net.retry_waiting(2, &mut |_, _| {});
    assert_eq!((next, broken.len()), (None, 0));
    assert_eq!(tx_pending(&net, 3), 0, "its frame for the gone receiver was dropped");
}

/// A UDP/IPv4 frame of `len` bytes from guest `from` (its MAC and
/// address) to `dst`, every checksum blank.
fn udp_frame(src: Mac, src_ip: Ipv4, dst: Mac, len: usize) -> Vec<u8> {
    let mut f = alloc::vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = len - 14;
    f[14..24].copy_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 1, 0x40, 0, 64, 17]);
    f[26..30].copy_from_slice(&src_ip);
    f[30..34].copy_from_slice(&[10, 0, 0, 1]);
    let udp_len = ip_len - 20;
    f[34..40].copy_from_slice(&[0x13, 0x88, 0x00, 0x07, (udp_len >> 8) as u8, udp_len as u8]);
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    f
}

/// A frame of 60,000 bytes crosses between guests whose rings take it, in
/// one piece, flagged as needing no checksum; a receiver whose ring is too
/// small for it, and the uplink, drop it and the sender counts it.
#[test]
fn a_large_frame_crosses_whole_and_one_too_large_for_a_receiver_is_counted() {
    let net = net(4);
    attach(&net, 1, 0, 64, UNLIMITED);
    attach(&net, 2, 0, 64, UNLIMITED);
    attach(&net, 3, 0, 16, UNLIMITED);
    assert_eq!((max_frame(64), max_frame(16)), (65532, 16380));
    let big = udp_frame(mac(1), ip(1), mac(2), 60_000);
    let ring = &net.port(1).unwrap().tx_ring;
    let mut tx = Producer::new(64);
    let mut c2 = Consumer::new(64);
    // Five times round both rings (two such frames fill one, with padding).
    for _ in 0..10 {
        assert_eq!(tx.push(ring, &big, abi::ring::flags::TX_CSUM_BLANK), Ok(true));
        tx.publish(ring);
        net.drain(1, 0, &mut |_, _| {}).unwrap();
        assert_eq!(receive_flagged(&net, 2, &mut c2), [(big.clone(), abi::ring::flags::RX_CSUM_OK)]);
    }
    assert_eq!(net.port(1).unwrap().oversize.load(Ordering::Relaxed), 0);
    // Broadcast: guest 2 takes it, guest 3's 16-slot ring and the uplink cannot.
    let mut bcast = big.clone();
    bcast[..6].fill(0xff);
    assert_eq!(tx.push(ring, &bcast, 0), Ok(true));
    tx.publish(ring);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    assert_eq!(receive(&net, 2, &mut c2), [bcast]);
    assert_eq!(receive(&net, 3, &mut Consumer::new(16)), Vec::<Vec<u8>>::new());
    assert!(net.uplink.as_ref().unwrap().1.lock().to_host.is_empty());
    assert_eq!(net.port(1).unwrap().oversize.load(Ordering::Relaxed), 2);
    assert_eq!(net.port(3).unwrap().ring_errors.load(Ordering::Relaxed), 0);
}

/// Frames to the host get their checksums filled when the guest left them
/// blank (and only then); the host's frames are verified: a wrong one is
/// dropped and counted, a right one arrives flagged.
#[test]
fn checksums_are_filled_for_the_host_and_verified_from_it() {
    let net = net(3);
    attach(&net, 1, 0, 16, UNLIMITED);
    let ring = &net.port(1).unwrap().tx_ring;
    let mut tx = Producer::new(16);
    let blank = udp_frame(mac(1), ip(1), HOST_MAC, 1514);
    assert_eq!(tx.push(ring, &blank, abi::ring::flags::TX_CSUM_BLANK), Ok(true));
    assert_eq!(tx.push(ring, &blank, 0), Ok(true));
    tx.publish(ring);
    net.drain(1, 0, &mut |_, _| {}).unwrap();
    let sent = core::mem::take(&mut net.uplink.as_ref().unwrap().1.lock().to_host);
    assert_eq!(sent.len(), 2);
    assert_eq!(crate::net::csum::verify(&sent[0]), crate::net::csum::Check::Good);
    assert_ne!(sent[0], blank);
    assert_eq!(sent[1], blank, "filled only when the guest says it left them blank");
    // From the host: the filled one, then it with a byte changed.
    let mut good = sent[0].clone();
    good[..6].copy_from_slice(&mac(1));
    good[6..12].copy_from_slice(&HOST_MAC);
    good[26..30].copy_from_slice(&[10, 0, 0, 1]);
    good[30..34].copy_from_slice(&ip(1));
    crate::net::csum::fill(&mut good);
    let mut bad = good.clone();
    bad[1000] ^= 4;
    host_sends(&net, [good.clone(), bad]);
    net.poll_uplink(0, &mut |_| {});
    let got = receive_flagged(&net, 1, &mut Consumer::new(16));
    assert_eq!(got, [(good, abi::ring::flags::RX_CSUM_OK)]);
    assert_eq!(net.port(1).unwrap().bad_checksums.load(Ordering::Relaxed), 1);
}

/// A sender that found its TX ring full and waits for `NET_TX` always
/// hears it once room is made, however its filling and the drains that
/// make room (its own as it blocks, and a receiver's `receiver_ran` on
/// another CPU) interleave: the drain looks at the ring after giving its
/// slots back. Played by threads; a lost wake-up leaves the sender waiting
/// with room in its ring.
#[test]
fn a_sender_waiting_for_room_is_never_left_waiting() {
    const SLOTS: u32 = 8;
    const FRAMES: u32 = 20_000;
    // A lost wake-up shows in about one round of ten.
    for _ in 0..30 {
        a_sender_waits_for_room_once(SLOTS, FRAMES);
    }
}

fn a_sender_waits_for_room_once(slots: u32, frames: u32) {
    let net = Arc::new(net(3));
    attach(&net, 1, 0, slots, UNLIMITED);
    attach(&net, 2, 0, slots, UNLIMITED);
    let start = Instant::now();
    let now = move || start.elapsed().as_nanos() as u64;
    let receiver = {
        let net = net.clone();
        std::thread::spawn(move || {
            let mut rx = Consumer::new(slots);
            let mut next = 0u32;
            while next < frames {
                for f in receive(&net, 2, &mut rx) {
                    assert_eq!(seq(&f), next, "frames arrive once each, in order");
                    next += 1;
                }
                // It leaves its CPU: the senders waiting for it go on.
                assert!(net.receiver_ran(2, now(), &mut |_, _| {}).is_empty());
                assert!(start.elapsed() < Duration::from_secs(60), "the receiver starved at frame {next}");
            }
        })
    };
    let p1 = net.port(1).unwrap();
    let mut tx = Producer::new(slots);
    let (mut i, mut waits) = (0u32, 0u32);
    while i < frames {
        // The guest's driver: queue while a frame of its MTU fits.
        while i < frames && tx.fits_before_wait(&p1.tx_ring, max_frame(slots)) == Ok(true) {
            assert_eq!(tx.push(&p1.tx_ring, &frame(mac(1), mac(2), i), 0), Ok(true));
            tx.publish(&p1.tx_ring);
            i += 1;
        }
        if i == frames {
            break;
        }
        // Full: it blocks (its ring is drained as it leaves the CPU) and
        // waits for NET_TX alone, as the libos does.
        net.drain(1, now(), &mut |_, _| {}).unwrap();
        let waited = Instant::now();
        while p1.events.bits.fetch_and(!abi::time::events::NET_TX, Ordering::AcqRel) & abi::time::events::NET_TX == 0 {
            let room = tx.fits(&p1.tx_ring, max_frame(slots)) == Ok(true);
            assert!(waited.elapsed() < Duration::from_secs(5), "lost wake-up at frame {i} (room now: {room})");
            std::thread::yield_now();
        }
        waits += 1;
    }
    net.drain(1, now(), &mut |_, _| {}).unwrap();
    receiver.join().unwrap();
    assert!(waits > 0, "the sender never found its ring full: the test tested nothing");
    assert_eq!(net.port(2).unwrap().rx_full_drops(), 0);
}

/// Gives guest `id` a vNIC whose ring slots are not made yet (as guest
/// creation defers them).
fn attach_deferred(net: &TestNet, id: usize, slots: u32) {
    let sp = net.switch.lock().add_port(0, mac(id), ip(id)).unwrap();
    net.guest_of_slot[sp.slot()].store(id, Ordering::Release);
    let (tx, rx) = (SharedRing::deferred(slots), SharedRing::deferred(slots));
    net.ports[id].set(Port::new(sp, 0, slots, &UNLIMITED, tx, rx, Events::default()));
}

/// A receiver whose ring slots are not made yet is full to every sender
/// (nothing is written to them: the test ring panics on such a write): a
/// guest's frame waits and the host's is held, the receiver is woken with
/// `NET_RX` (its CPU makes the slots), and once they are made both arrive,
/// in order, nothing lost.
#[test]
fn a_receiver_without_ring_slots_is_woken_to_make_them_and_loses_nothing() {
    let net = net(3);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach_deferred(&net, 2, 4);
    let p2 = net.port(2).unwrap();
    assert_eq!(p2.ring_bytes(), 0, "nothing charged for slots not made");
    let mut tx = Producer::new(4);
    send(&net, 1, &mut tx, &[frame(mac(1), mac(2), 7), frame(mac(1), mac(2), 8)]);
    let mut woken = Vec::new();
    net.drain(1, 0, &mut |g, e: &Events| woken.push((g, e.pending()))).unwrap();
    assert_eq!(woken, [(2, NET_RX)], "woken to make its slots");
    assert!(net.waiter_count.load(Ordering::Acquire) == 1, "the sender waits");
    host_sends(&net, [frame(HOST_MAC, mac(2), 9)]);
    let mut woken = Vec::new();
    net.poll_uplink(0, &mut |g| woken.push(g));
    assert_eq!(woken, [2]);
    assert!(net.retry_uplink_held(1, &mut |_| {}), "the host's frame is held");
    // Its CPU made them: the waiting frames go in.
    p2.provide_rings(&[0x1000, 0x2000], &[0x3000, 0x4000]);
    assert!(p2.rx_ready() && p2.ring_bytes() == 4 * 4096);
    net.receiver_ran(2, 2, &mut |_, _| {});
    assert!(!net.retry_uplink_held(3, &mut |_| {}), "the host's frame went in");
    let mut c2 = Consumer::new(4);
    let got: Vec<u32> = receive(&net, 2, &mut c2).iter().map(|f| seq(f)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.contains(&9) && got.iter().position(|&s| s == 7) < got.iter().position(|&s| s == 8), "{got:?}");
    assert_eq!((p2.rx_full_drops(), p2.uplink_dropped()), (0, 0));
}

/// A flood finds a receiver without ring slots full: dropped there and
/// counted (the others get it), and it is woken to make them.
#[test]
fn a_flood_to_a_receiver_without_ring_slots_is_dropped_and_wakes_it() {
    let net = net(4);
    attach(&net, 1, 0, 4, UNLIMITED);
    attach(&net, 2, 0, 4, UNLIMITED);
    attach_deferred(&net, 3, 4);
    let mut tx = Producer::new(4);
    send(&net, 1, &mut tx, &[frame(mac(1), BROADCAST, 5)]);
    let mut woken = Vec::new();
    net.drain(1, 0, &mut |g, _: &Events| woken.push(g)).unwrap();
    woken.sort();
    assert_eq!(woken, [2, 3]);
    assert_eq!(receive(&net, 2, &mut Consumer::new(4)).len(), 1);
    assert_eq!(net.port(3).unwrap().rx_full_drops(), 1);
}
