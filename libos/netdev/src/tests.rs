extern crate alloc;
extern crate std;

use super::*;
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

fn host<'r>(tx: &'r VecRing, rx: &'r VecRing, n: u8) -> Host<'r> {
    let mut dev = RingDevice::new(tx, rx, abi::ring::SLOTS_DEFAULT);
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
        let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16384]), tcp::SocketBuffer::new(vec![0; 16384]));
        self.sockets.add(s)
    }
}

/// Two stacks on one wire (A's TX ring is B's RX ring and back).
fn with_pair(f: impl FnOnce(&mut Host<'_>, &mut Host<'_>)) {
    let (ab, ba) = (VecRing::default(), VecRing::default());
    let mut a = host(&ab, &ba, 1);
    let mut b = host(&ba, &ab, 2);
    f(&mut a, &mut b);
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
        let udp = |h: &mut Host<'_>, port| {
            let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
            let mut s = udp::Socket::new(buf(), buf());
            s.bind(port).unwrap();
            h.sockets.add(s)
        };
        let (ua, ub) = (udp(a, 5000), udp(b, 7));
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
    // A slot with a runt length, then an index far beyond the ring.
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
