extern crate alloc;
extern crate std;

use super::*;
use abi::ring::RingMemory;
use abi::ring::testing::VecRing;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

/// One side of a wire: a device and a smoltcp stack on it.
struct Host<'r> {
    dev: RingDevice<&'r VecRing>,
    iface: Interface,
    sockets: SocketSet<'static>,
}

fn host_with<'r>(tx: &'r VecRing, rx: &'r VecRing, n: u8, slots: u32) -> Host<'r> {
    let mut dev = RingDevice::new(tx, rx, slots);
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([0x02, 0, 0, 0, 0, n])));
    let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::v4(10, 0, 0, n), 24)).unwrap());
    Host { dev, iface, sockets: SocketSet::new(vec![]) }
}

impl Host<'_> {
    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
    }
    fn tcp(&mut self) -> SocketHandle {
        self.tcp_sized(16384)
    }
    fn tcp_sized(&mut self, bytes: usize) -> SocketHandle {
        let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; bytes]), tcp::SocketBuffer::new(vec![0; bytes]));
        self.sockets.add(s)
    }
    fn udp(&mut self, port: u16, bytes: usize) -> SocketHandle {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; bytes]);
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(port).unwrap();
        self.sockets.add(s)
    }
}

/// Two stacks on one wire (A's TX ring is B's RX ring and back).
fn with_pair(f: impl FnOnce(&mut Host<'_>, &mut Host<'_>)) {
    with_pair_of(abi::ring::SLOTS_DEFAULT, f)
}

/// Two stacks on one wire of rings of `slots` slots.
fn with_pair_of(slots: u32, f: impl FnOnce(&mut Host<'_>, &mut Host<'_>)) {
    let (ab, ba) = (VecRing::new(slots), VecRing::new(slots));
    let mut a = host_with(&ab, &ba, 1, slots);
    let mut b = host_with(&ba, &ab, 2, slots);
    f(&mut a, &mut b);
}

/// Sends `message` from A to B over TCP (B's socket buffers `buffer`
/// bytes each way); returns what B received.
fn tcp_transfer(a: &mut Host<'_>, b: &mut Host<'_>, message: &[u8], buffer: usize) -> Vec<u8> {
    let server = b.tcp_sized(buffer);
    b.sockets.get_mut::<tcp::Socket>(server).listen(7).unwrap();
    let client = a.tcp_sized(buffer);
    let cx = a.iface.context();
    a.sockets.get_mut::<tcp::Socket>(client).connect(cx, (IpAddress::v4(10, 0, 0, 2), 7), 49152).unwrap();
    let (mut sent, mut got) = (0, Vec::new());
    let mut now = Instant::ZERO;
    for _ in 0..100_000 {
        now += smoltcp::time::Duration::from_millis(1);
        a.poll(now);
        b.poll(now);
        let c = a.sockets.get_mut::<tcp::Socket>(client);
        if c.may_send() && sent < message.len() {
            sent += c.send_slice(&message[sent..]).unwrap();
        }
        let s = b.sockets.get_mut::<tcp::Socket>(server);
        if s.can_recv() {
            s.recv(|d| {
                got.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
        if got.len() == message.len() {
            break;
        }
    }
    got
}

#[test]
fn tcp_echo_of_mixed_sizes_is_byte_exact() {
    with_pair(|a, b| {
        let server = b.tcp();
        b.sockets.get_mut::<tcp::Socket>(server).listen(7).unwrap();
        let client = a.tcp();
        let cx = a.iface.context();
        a.sockets.get_mut::<tcp::Socket>(client).connect(cx, (IpAddress::v4(10, 0, 0, 2), 7), 49152).unwrap();

        let message: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut sent, mut echoed) = (0, Vec::new());
        let mut now = Instant::ZERO;
        for _ in 0..200_000 {
            now += smoltcp::time::Duration::from_millis(1);
            a.poll(now);
            b.poll(now);
            // Server: echo whatever arrives.
            let s = b.sockets.get_mut::<tcp::Socket>(server);
            if s.can_recv() && s.can_send() {
                let mut buf = [0u8; 4096];
                let room = s.send_capacity() - s.send_queue();
                let n = s.recv_slice(&mut buf[..room.min(4096)]).unwrap();
                assert_eq!(s.send_slice(&buf[..n]).unwrap(), n);
            }
            // Client: send in chunks of varying size, collect the echo.
            let c = a.sockets.get_mut::<tcp::Socket>(client);
            if c.may_send() && sent < message.len() {
                let chunk = 1 + (sent * 13) % 3000;
                sent += c.send_slice(&message[sent..(sent + chunk).min(message.len())]).unwrap();
            }
            if c.can_recv() {
                c.recv(|d| {
                    echoed.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            if echoed.len() == message.len() {
                break;
            }
        }
        assert_eq!(echoed.len(), message.len(), "only {} of {} bytes came back", echoed.len(), message.len());
        assert!(echoed == message, "echo differs");
        assert_eq!(a.dev.stats.ring_errors + b.dev.stats.ring_errors, 0);
        assert!(a.dev.stats.tx_frames > 100 && b.dev.stats.rx_frames > 100);
    });
}

#[test]
fn udp_datagrams_cross_in_both_directions() {
    with_pair(|a, b| {
        let (ua, ub) = (a.udp(5000, 16384), b.udp(7, 16384));
        let to_b = IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 7);
        a.sockets.get_mut::<udp::Socket>(ua).send_slice(b"ping over the ring", to_b).unwrap();
        let mut now = Instant::ZERO;
        let mut got = None;
        for _ in 0..100 {
            now += smoltcp::time::Duration::from_millis(10);
            a.poll(now);
            b.poll(now);
            let s = b.sockets.get_mut::<udp::Socket>(ub);
            if let Ok((data, meta)) = s.recv() {
                let data = data.to_vec();
                s.send_slice(&data, meta.endpoint).unwrap();
            }
            if let Ok((data, _)) = a.sockets.get_mut::<udp::Socket>(ua).recv() {
                got = Some(data.to_vec());
                break;
            }
        }
        assert_eq!(got.as_deref(), Some(&b"ping over the ring"[..]));
    });
}

#[test]
fn a_lying_hypervisor_is_counted_not_trusted() {
    let (tx, rx) = (VecRing::default(), VecRing::default());
    let mut dev = RingDevice::new(&tx, &rx, abi::ring::SLOTS_DEFAULT);
    // An entry with a runt length, then an index far beyond the ring.
    rx.write(abi::ring::SLOTS_OFFSET, &3u16.to_le_bytes());
    rx.store(abi::ring::PROD_OFFSET, 1);
    assert!(phy::Device::receive(&mut dev, Instant::ZERO).is_none());
    assert_eq!(dev.stats.ring_errors, 1);
    rx.store(abi::ring::PROD_OFFSET, 1_000_000);
    assert!(phy::Device::receive(&mut dev, Instant::ZERO).is_none());
    assert_eq!(dev.stats.ring_errors, 2);
    // The consumer index of our TX ring moved past what we produced.
    tx.store(abi::ring::CONS_OFFSET, 77);
    assert!(phy::Device::transmit(&mut dev, Instant::ZERO).is_none());
    assert_eq!(dev.stats.ring_errors, 3);
}

#[test]
fn the_mtu_follows_the_rings_and_no_checksum_is_computed() {
    for (slots, mtu) in [(2, 2044), (16, 16380), (64, 65532), (128, 65535)] {
        let (tx, rx) = (VecRing::new(slots), VecRing::new(slots));
        let dev = RingDevice::new(&tx, &rx, slots);
        let caps = phy::Device::capabilities(&dev);
        assert_eq!((dev.mtu(), caps.max_transmission_unit), (mtu, mtu));
        assert!(!caps.checksum.ipv4.tx() && !caps.checksum.ipv4.rx() && !caps.checksum.tcp.rx() && !caps.checksum.udp.tx());
        assert_eq!(RingDevice::new(&tx, &rx, slots).with_mtu(100).mtu(), 1514);
        assert_eq!(RingDevice::new(&tx, &rx, slots).with_mtu(1 << 20).mtu(), mtu);
    }
}

#[test]
fn a_60_kib_udp_datagram_crosses_in_one_frame() {
    with_pair_of(64, |a, b| {
        let (ua, ub) = (a.udp(5000, 128 << 10), b.udp(7, 128 << 10));
        let data: Vec<u8> = (0..60 * 1024u32).map(|i| (i * 13 + i / 509) as u8).collect();
        let to_b = IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 7);
        let mut now = Instant::ZERO;
        // ARP first, then the datagram.
        a.sockets.get_mut::<udp::Socket>(ua).send_slice(b"hello", to_b).unwrap();
        let mut got = Vec::new();
        for i in 0..200 {
            now += smoltcp::time::Duration::from_millis(10);
            if i == 50 {
                a.sockets.get_mut::<udp::Socket>(ua).send_slice(&data, to_b).unwrap();
            }
            a.poll(now);
            b.poll(now);
            while let Ok((d, _)) = b.sockets.get_mut::<udp::Socket>(ub).recv() {
                got.push(d.to_vec());
            }
        }
        assert_eq!(got.len(), 2, "the greeting and the datagram");
        assert!(got[1] == data, "the datagram arrived whole");
        assert_eq!(a.dev.stats.tx_frames, 3, "ARP request, greeting, one frame for 60 KiB");
        assert_eq!(a.dev.stats.tx_bytes as usize, 42 + (14 + 20 + 8 + 5) + (14 + 20 + 8 + data.len()));
        assert_eq!(a.dev.stats.ring_errors + b.dev.stats.ring_errors, 0);
    });
}

#[test]
fn a_tcp_stream_uses_frames_as_large_as_the_mtu() {
    with_pair_of(64, |a, b| {
        let message: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let got = tcp_transfer(a, b, &message, 256 << 10);
        assert_eq!(got.len(), message.len());
        assert!(got == message, "stream differs");
        let avg = a.dev.stats.tx_bytes / a.dev.stats.tx_frames;
        assert!(avg > 30_000, "{} frames of {avg} bytes on average", a.dev.stats.tx_frames);
        assert_eq!(a.dev.stats.ring_errors + b.dev.stats.ring_errors, 0);
    });
}

#[test]
fn small_rings_refuse_frames_larger_than_they_carry_cleanly() {
    with_pair_of(2, |a, b| {
        assert_eq!(a.dev.mtu(), 2044);
        // TCP keeps its segments to the MTU.
        let message: Vec<u8> = (0..300_000u32).map(|i| (i * 3) as u8).collect();
        let got = tcp_transfer(a, b, &message, 16 << 10);
        assert!(got == message, "stream differs");
        assert!(a.dev.stats.tx_bytes / a.dev.stats.tx_frames > 1514, "frames over the Ethernet MTU");
        // A UDP datagram over the MTU is not sent; the next one is.
        let (ua, ub) = (a.udp(5000, 16 << 10), b.udp(8, 16 << 10));
        let to_b = IpEndpoint::new(IpAddress::v4(10, 0, 0, 2), 8);
        a.sockets.get_mut::<udp::Socket>(ua).send_slice(&[7u8; 3000], to_b).unwrap();
        a.sockets.get_mut::<udp::Socket>(ua).send_slice(&[8u8; 2000], to_b).unwrap();
        let mut now = Instant::from_secs(1000);
        let mut got = Vec::new();
        for _ in 0..50 {
            now += smoltcp::time::Duration::from_millis(10);
            a.poll(now);
            b.poll(now);
            while let Ok((d, _)) = b.sockets.get_mut::<udp::Socket>(ub).recv() {
                got.push(d.to_vec());
            }
        }
        assert_eq!(got, [vec![8u8; 2000]]);
        assert_eq!(a.dev.stats.ring_errors + b.dev.stats.ring_errors, 0);
        // And a frame too large for the ring is refused by the ring itself.
        let (tx, rx) = (VecRing::new(2), VecRing::new(2));
        let mut dev = RingDevice::new(&tx, &rx, 2);
        let token = phy::Device::transmit(&mut dev, Instant::ZERO).unwrap();
        phy::TxToken::consume(token, 3000, |buf| buf.fill(1));
        assert_eq!((dev.stats.tx_full, dev.stats.tx_frames, dev.tx_index()), (1, 0, 0));
    });
}

/// Steps both stacks 1 ms at a time until A's `client` may send; the
/// virtual milliseconds that took (`None` after 3 s).
fn handshake_ms(a: &mut Host<'_>, b: &mut Host<'_>, client: SocketHandle, mut now: Instant) -> Option<i64> {
    let start = now;
    for _ in 0..3000 {
        now += smoltcp::time::Duration::from_millis(1);
        a.poll(now);
        b.poll(now);
        if a.sockets.get_mut::<tcp::Socket>(client).may_send() {
            return Some((now - start).total_millis() as i64);
        }
    }
    None
}

/// A connects to B right after smoltcp asked for someone else (which
/// silences its ARP for a second), asking ahead for B or not.
fn connect_after_another_request(ask_ahead: bool) -> Option<i64> {
    let mut took = None;
    with_pair(|a, b| {
        let server = b.tcp();
        b.sockets.get_mut::<tcp::Socket>(server).listen(7).unwrap();
        // A datagram for 10.0.0.9, which nobody has: smoltcp's request.
        let u = a.udp(5000, 4096);
        a.sockets.get_mut::<udp::Socket>(u).send_slice(b"x", IpEndpoint::new(IpAddress::v4(10, 0, 0, 9), 9)).unwrap();
        let now = Instant::from_secs(10);
        a.poll(now);
        b.poll(now);
        // (Gone, or it would ask for 10.0.0.9 again whenever the silence
        // ends, before the connection's turn.)
        a.sockets.remove(u);
        let b_ip = smoltcp::wire::Ipv4Address::new(10, 0, 0, 2);
        let mut asker = arp::Asker::new(smoltcp::wire::Ipv4Address::new(10, 0, 0, 1), 24);
        if ask_ahead && asker.should_ask(b_ip, now) {
            let mac = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
            assert!(a.dev.send_frame(&arp::request(mac, smoltcp::wire::Ipv4Address::new(10, 0, 0, 1), b_ip)));
        }
        let client = a.tcp();
        let cx = a.iface.context();
        a.sockets.get_mut::<tcp::Socket>(client).connect(cx, (IpAddress::Ipv4(b_ip), 7), 49152).unwrap();
        took = handshake_ms(a, b, client, now);
    });
    took
}

#[test]
fn asking_ahead_does_not_wait_out_smoltcps_arp_silence() {
    let plain = connect_after_another_request(false).expect("connected");
    let ahead = connect_after_another_request(true).expect("connected");
    // smoltcp alone waits out its second of silence; asked ahead, the
    // handshake takes a few polls.
    assert!(plain >= 990, "smoltcp's own request came after {plain} ms");
    assert!(ahead <= 5, "asked ahead, the handshake took {ahead} ms");
}

#[test]
fn the_asker_asks_for_on_link_unicast_addresses_once_per_period() {
    let ip = |d| smoltcp::wire::Ipv4Address::new(10, 0, 0, d);
    let mut asker = arp::Asker::new(ip(5), 24);
    let t0 = Instant::from_secs(100);
    // Not on the link, ourselves, the network and broadcast addresses.
    for other in [smoltcp::wire::Ipv4Address::new(10, 0, 1, 2), ip(5), ip(0), ip(255), smoltcp::wire::Ipv4Address::new(224, 0, 0, 1)] {
        assert!(!asker.should_ask(other, t0), "{other}");
    }
    assert!(asker.should_ask(ip(2), t0));
    assert!(!asker.should_ask(ip(2), t0 + smoltcp::time::Duration::from_secs(4)));
    assert!(asker.should_ask(ip(2), t0 + arp::Asker::REASK));
    // More neighbours than it remembers: the oldest is asked for again.
    for d in 10..10 + arp::Asker::RECENT as u8 {
        assert!(asker.should_ask(ip(d), t0 + arp::Asker::REASK));
    }
    assert!(asker.should_ask(ip(2), t0 + arp::Asker::REASK));
    // A request parses as one, from us, for the target.
    let frame = arp::request(EthernetAddress([2, 0, 0, 0, 0, 5]), ip(5), ip(2));
    let eth = smoltcp::wire::EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
    let repr = smoltcp::wire::ArpRepr::parse(&smoltcp::wire::ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    let smoltcp::wire::ArpRepr::EthernetIpv4 { operation, source_protocol_addr, target_protocol_addr, .. } = repr else {
        panic!("not IPv4 ARP")
    };
    assert_eq!((operation, source_protocol_addr, target_protocol_addr), (smoltcp::wire::ArpOperation::Request, ip(5), ip(2)));
}

/// A TCP segment from 10.0.0.1 (MAC ..:01) port 40000 to guest B
/// (10.0.0.2, port 7), as an Ethernet frame.
fn segment(control: smoltcp::wire::TcpControl, seq: u32, ack: Option<u32>, payload: &[u8], window_scale: Option<u8>) -> Vec<u8> {
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 7,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale,
        max_seg_size: window_scale.map(|_| 65000),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr { src_addr: src, dst_addr: dst, next_header: IpProtocol::Tcp, payload_len: tcp.buffer_len(), hop_limit: 64 };
    let mut f = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: EthernetAddress([0x02, 0, 0, 0, 0, 1]),
        dst_addr: EthernetAddress([0x02, 0, 0, 0, 0, 2]),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::ignored();
    let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp, &caps);
    tcp.emit(&mut TcpPacket::new_unchecked(ipp.payload_mut()), &src.into(), &dst.into(), &caps);
    f
}

/// A peer that sends a few bytes past the window the guest advertised,
/// but within its receive buffer (the window is scaled, so it was rounded
/// down), is taken in stride. smoltcp 0.12 panicked on its next dispatch
/// ("attempt to subtract sequence numbers with underflow" in
/// `last_scaled_window`): any TCP peer could crash a guest with a receive
/// buffer over 64 KiB (`bench net`'s bulk sink did). The libos carries
/// the fix (`libos/smoltcp/PATCHES.md`).
#[test]
fn a_peer_sending_past_the_scaled_window_does_not_crash_the_guest() {
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpControl, TcpPacket};
    let slots = 512;
    let (to_b, from_b) = (VecRing::new(slots), VecRing::new(slots));
    let mut b = host_with(&from_b, &to_b, 2, slots);
    let buffer = 256 << 10;
    let server = b.tcp_sized(buffer);
    b.sockets.get_mut::<tcp::Socket>(server).listen(7).unwrap();
    let (mut tx, mut rx) = (abi::ring::Producer::new(slots), abi::ring::Consumer::new(slots));
    let mut inject = |f: &[u8]| {
        assert_eq!(tx.push(&to_b, f, abi::ring::flags::RX_CSUM_OK), Ok(true));
        tx.publish(&to_b);
    };
    // The peer asks for the guest's MAC (so the guest learns the peer's),
    // then the handshake, the peer offering window scaling.
    let peer = (EthernetAddress([0x02, 0, 0, 0, 0, 1]), smoltcp::wire::Ipv4Address::new(10, 0, 0, 1));
    inject(&arp::request(peer.0, peer.1, smoltcp::wire::Ipv4Address::new(10, 0, 0, 2)));
    inject(&segment(TcpControl::Syn, 1000, None, &[], Some(0)));
    let now = Instant::from_secs(1);
    b.poll(now);
    let mut buf = vec![0u8; abi::ring::MAX_FRAME];
    rx.pop(&from_b, &mut buf).unwrap().expect("an ARP reply");
    assert_eq!(&buf[12..14], &[0x08, 0x06]);
    let f = rx.pop(&from_b, &mut buf).unwrap().expect("a SYN-ACK");
    rx.release(&from_b);
    let eth = EthernetFrame::new_checked(&buf[..f.len]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let synack = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(synack.syn() && synack.ack());
    let isn = synack.seq_number().0 as u32;
    inject(&segment(TcpControl::None, 1001, Some(isn.wrapping_add(1)), &[], None));
    b.poll(now);
    // The peer fills the guest's 262,144-byte buffer but for 6 bytes: the
    // guest acknowledges with a window of 6 >> 2 = 1 (4 bytes), and the
    // peer then sends the 6 that fit: 2 past the window advertised.
    let payload = vec![0x5a; 65_000];
    let mut seq = 1001u32;
    let mut send = |inject: &mut dyn FnMut(&[u8]), bytes: usize| {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(payload.len());
            inject(&segment(TcpControl::None, seq, Some(isn.wrapping_add(1)), &payload[..n], None));
            seq = seq.wrapping_add(n as u32);
            left -= n;
        }
    };
    send(&mut inject, buffer - 6);
    b.poll(now);
    send(&mut inject, 6);
    b.poll(now);
    b.poll(now + smoltcp::time::Duration::from_millis(100));
    let s = b.sockets.get_mut::<tcp::Socket>(server);
    assert_eq!(s.state(), tcp::State::Established);
    assert_eq!(s.recv_queue(), buffer, "every byte that fit was taken in");
}

#[test]
fn the_generation_changes_once_per_new_word_and_seeds_depend_on_every_source() {
    let mut g = clone::Generation::new();
    assert!(!g.changed(0), "a booted guest is generation 0");
    assert!(g.changed(1));
    assert!(!g.changed(1));
    assert!(g.changed(2));
    assert_eq!(g.get(), 2);

    let base = [0x1234_5678_9abc_def0, 42, 0x0200_0000_0003, 1];
    let s = clone::seed(&base);
    // Flipping any one bit of any source changes many bits of the seed.
    for i in 0..base.len() {
        for bit in [0, 17, 63] {
            let mut other = base;
            other[i] ^= 1 << bit;
            let d = (clone::seed(&other) ^ s).count_ones();
            assert!((12..=52).contains(&d), "source {i} bit {bit}: {d} bits differ");
        }
    }
    // A source left out (no RDRAND) still leaves a seed that differs.
    assert_ne!(clone::seed(&base[1..]), s);
    assert_ne!(clone::seed(&[]), clone::seed(&[0]));
}

/// A template (A, 10.0.0.1) with a connection to B, a listener and a UDP
/// socket is cloned: the clone (10.0.0.3) says nothing on the template's
/// connection, and its listener and UDP socket work at the new address.
#[test]
fn a_clone_drops_its_templates_connections_silently_and_serves_at_its_new_address() {
    with_pair(|a, b| {
        let server = b.tcp();
        b.sockets.get_mut::<tcp::Socket>(server).listen(7).unwrap();
        let conn = a.tcp();
        let cx = a.iface.context();
        a.sockets.get_mut::<tcp::Socket>(conn).connect(cx, (IpAddress::v4(10, 0, 0, 2), 7), 49152).unwrap();
        let listener = a.tcp();
        a.sockets.get_mut::<tcp::Socket>(listener).listen(80).unwrap();
        let ua = a.udp(53, 4096);
        let mut now = Instant::ZERO;
        for _ in 0..100 {
            now += smoltcp::time::Duration::from_millis(10);
            a.poll(now);
            b.poll(now);
        }
        assert_eq!(a.sockets.get::<tcp::Socket>(conn).state(), tcp::State::Established);
        // Queued by the template but not sent when it was paused.
        a.sockets.get_mut::<tcp::Socket>(conn).send_slice(b"the template's").unwrap();
        a.sockets.get_mut::<udp::Socket>(ua).send_slice(b"the template's", (IpAddress::v4(10, 0, 0, 2), 9)).unwrap();

        let old = smoltcp::wire::Ipv4Address::new(10, 0, 0, 1);
        let id = clone::Identity::new([0x02, 0, 0, 0, 0, 3], [10, 0, 0, 3], 24, [0; 4]);
        a.iface = clone::interface(&id, clone::seed(&[1, 2, 3]), &mut a.dev, now);
        let new_tcp = || tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16384]), tcp::SocketBuffer::new(vec![0; 16384]));
        let done = clone::adopt_sockets(&mut a.sockets, old, id.ip, new_tcp);
        assert_eq!(done, clone::Adopted { closed: 1, relistened: 0, rebound: 1 });
        assert_eq!(a.sockets.get::<tcp::Socket>(conn).state(), tcp::State::Closed);
        assert!(!a.sockets.get::<tcp::Socket>(conn).may_recv());
        assert_eq!(a.sockets.get::<tcp::Socket>(listener).state(), tcp::State::Listen);

        // Seconds pass: no RST, data, retransmission or datagram leaves.
        let before = a.dev.stats.tx_frames;
        for _ in 0..100 {
            now += smoltcp::time::Duration::from_millis(100);
            a.poll(now);
        }
        assert_eq!(a.dev.stats.tx_frames, before, "the clone sent frames of the template's");

        // B reaches the clone's listener at the new address.
        let client = b.tcp();
        let cx = b.iface.context();
        b.sockets.get_mut::<tcp::Socket>(client).connect(cx, (IpAddress::v4(10, 0, 0, 3), 80), 49153).unwrap();
        let ub = b.udp(9, 4096);
        b.sockets.get_mut::<udp::Socket>(ub).send_slice(b"to the clone", (IpAddress::v4(10, 0, 0, 3), 53)).unwrap();
        let mut got = None;
        for _ in 0..300 {
            now += smoltcp::time::Duration::from_millis(10);
            a.poll(now);
            b.poll(now);
            if let Ok((data, meta)) = a.sockets.get_mut::<udp::Socket>(ua).recv() {
                got = Some((data.to_vec(), meta.endpoint.addr));
            }
        }
        let l = a.sockets.get::<tcp::Socket>(listener);
        assert_eq!(l.state(), tcp::State::Established);
        assert_eq!(l.local_endpoint().map(|e| e.addr), Some(IpAddress::v4(10, 0, 0, 3)));
        assert_eq!(b.sockets.get::<tcp::Socket>(client).state(), tcp::State::Established);
        assert_eq!(got, Some((b"to the clone".to_vec(), IpAddress::v4(10, 0, 0, 2))));
        // Nothing B received came from the template's address after the clone.
        assert_eq!(b.sockets.get::<udp::Socket>(ub).recv_queue(), 0);
    });
}

/// An idle UDP socket (nothing queued, bound to any address) is left as it
/// is, so an idle clone copies no page for it; one holding only an empty
/// datagram of the template's, or bound to the old address, is emptied
/// and bound again.
#[test]
fn a_clone_leaves_an_idle_udp_socket_untouched() {
    with_pair(|a, _| {
        let idle = a.udp(53, 4096);
        let queued = a.udp(54, 4096);
        a.sockets.get_mut::<udp::Socket>(queued).send_slice(b"", (IpAddress::v4(10, 0, 0, 2), 9)).unwrap();
        let at_old = a.udp(55, 4096);
        let old = smoltcp::wire::Ipv4Address::new(10, 0, 0, 1);
        {
            let s = a.sockets.get_mut::<udp::Socket>(at_old);
            s.close();
            s.bind((IpAddress::Ipv4(old), 55)).unwrap();
        }
        let new = smoltcp::wire::Ipv4Address::new(10, 0, 0, 3);
        let new_tcp = || tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 64]), tcp::SocketBuffer::new(vec![0; 64]));
        let done = clone::adopt_sockets(&mut a.sockets, old, new, new_tcp);
        assert_eq!(done, clone::Adopted { closed: 0, relistened: 0, rebound: 2 });
        assert_eq!(a.sockets.get::<udp::Socket>(idle).endpoint().port, 53);
        assert!(a.sockets.get::<udp::Socket>(queued).send_is_empty(), "the template's empty datagram was dropped");
        assert_eq!(a.sockets.get::<udp::Socket>(at_old).endpoint().addr, Some(IpAddress::Ipv4(new)));
    });
}
