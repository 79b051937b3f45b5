//! A clone's new identity (`abi::time::events::CLONED`, ABI 7).
//!
//! A clone resumes with its template's memory: the same smoltcp interface
//! (MAC, address, random state, neighbour cache) and the same sockets. The
//! hypervisor gives it a new MAC and address in the start page and grows
//! the generation word in the shared page; the guest notices the word
//! change ([`Generation`]) before its stack does anything and takes its
//! new identity:
//! - a new [`interface`] with the new MAC, address and default route and
//!   a fresh random [`seed`] (smoltcp draws initial sequence numbers and
//!   other randomness from it; a clone must not repeat its template's or
//!   its siblings'), which also empties the neighbour cache;
//! - [`adopt_sockets`]: the template's TCP connections belong to the
//!   template's peers, so they are closed without a word (no RST from an
//!   address that is not ours); listening sockets keep listening, now at
//!   the new address, and so do UDP sockets, their queued datagrams
//!   (received for or sent by the template) dropped.
//!
//! Pure logic over smoltcp, so the tests run it on the host.

use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::{Socket, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, Ipv4Address};

/// Which generation of clones the guest last saw (0: it booted). The
/// check is one comparison, cheap enough for every poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generation(u64);

impl Generation {
    /// A guest that booted.
    pub const fn new() -> Self {
        Self(0)
    }

    /// Whether the generation word now reads `word` after we last saw
    /// another value; notes `word` as seen.
    #[inline]
    pub fn changed(&mut self, word: u64) -> bool {
        if word == self.0 {
            return false;
        }
        self.0 = word;
        true
    }

    /// The generation last seen.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A random seed from several sources, none of which need be good alone:
/// each is folded in through a SplitMix64 step, so a change in any bit
/// of any source changes about half the seed's bits. Sources a caller
/// lacks (no RDRAND) are simply left out.
pub fn seed(sources: &[u64]) -> u64 {
    let mut s = 0x6a09_e667_f3bc_c908u64;
    for &x in sources {
        s = splitmix(s ^ x);
    }
    s
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the start page's `abi::NicInfo` says this interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub mac: EthernetAddress,
    pub ip: Ipv4Address,
    /// Clamped to 32.
    pub prefix: u8,
    /// The default route, if any (`0.0.0.0` in `NicInfo`: none).
    pub gateway: Option<Ipv4Address>,
}

impl Identity {
    /// From `NicInfo`'s fields.
    pub fn new(mac: [u8; 6], ipv4: [u8; 4], prefix: u32, gateway: [u8; 4]) -> Self {
        Self {
            mac: EthernetAddress(mac),
            ip: Ipv4Address::from(ipv4),
            prefix: prefix.min(32) as u8,
            gateway: (gateway != [0; 4]).then(|| Ipv4Address::from(gateway)),
        }
    }
}

/// A fresh interface for `id` on `dev`: its address, its default route,
/// an empty neighbour cache and randomness from `seed`.
pub fn interface<D: Device + ?Sized>(id: &Identity, seed: u64, dev: &mut D, now: Instant) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(id.mac));
    config.random_seed = seed;
    let mut iface = Interface::new(config, dev, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(id.ip), id.prefix));
    });
    if let Some(gw) = id.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    iface
}

/// What [`adopt_sockets`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// TCP connections (or attempts) of the template, now closed.
    pub closed: usize,
    /// Half-open connections to a listening socket, listening again.
    pub relistened: usize,
    /// UDP sockets emptied and bound again (at the new address if they
    /// were bound to the old one).
    pub rebound: usize,
}

/// Makes the template's sockets the clone's, after the clone moved from
/// address `old` to `new`:
/// - a TCP socket in any state but `Listen` and `Closed` is a connection
///   of the template (or one being made): it becomes `Closed` with no
///   connection and nothing sent (an `abort` would send a RST from `old`),
///   its waiting tasks woken, so that reads see the end and writes fail.
///   One half-open in `SynReceived` goes back to listening on its port
///   (it is in a listener's backlog). A socket closed this way keeps
///   empty buffers;
/// - a listening TCP socket keeps listening; one bound to `old` listens
///   at `new` instead;
/// - a bound UDP socket is emptied (what it holds was received for, or
///   queued by, the template) and bound again to its port, at `new` if
///   it was bound to `old`, else as it was (usually any address); one
///   with nothing queued and not bound to `old` is left as it is (not
///   even written: an idle clone then copies no page of it).
///
/// `new_tcp` makes the buffers of a socket that listens again.
pub fn adopt_sockets(
    sockets: &mut SocketSet<'_>,
    old: Ipv4Address,
    new: Ipv4Address,
    mut new_tcp: impl FnMut() -> tcp::Socket<'static>,
) -> Adopted {
    let moved = |addr: Option<IpAddress>| match addr {
        Some(IpAddress::Ipv4(a)) if a == old => Some(IpAddress::Ipv4(new)),
        other => other,
    };
    let mut done = Adopted::default();
    for (_, sock) in sockets.iter_mut() {
        match sock {
            Socket::Tcp(t) => {
                let ep = t.listen_endpoint();
                let listen_at = IpListenEndpoint { addr: moved(ep.addr), port: ep.port };
                let state = t.state();
                let listen = match state {
                    tcp::State::Closed => continue,
                    tcp::State::Listen if listen_at == ep => continue,
                    tcp::State::Listen | tcp::State::SynReceived => true,
                    _ => false,
                };
                // Wakes the tasks waiting on it (they see the change);
                // the replacement below takes the connection away before
                // the RST that `abort` queues is sent.
                t.abort();
                *t = if listen {
                    let mut s = new_tcp();
                    let _ = s.listen(listen_at);
                    s
                } else {
                    closed_tcp()
                };
                match state {
                    tcp::State::Listen => {}
                    tcp::State::SynReceived => done.relistened += 1,
                    _ => done.closed += 1,
                }
            }
            Socket::Udp(u) => {
                let ep = u.endpoint();
                // One with nothing queued and no address to move is left
                // untouched: an idle clone copies no page for it.
                let untouched = u.send_is_empty() && !u.can_recv() && moved(ep.addr) == ep.addr;
                if ep.port != 0 && !untouched {
                    u.close();
                    let _ = u.bind(IpListenEndpoint { addr: moved(ep.addr), port: ep.port });
                    done.rebound += 1;
                }
            }
            _ => {}
        }
    }
    done
}

/// A closed TCP socket without buffers.
fn closed_tcp() -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(Vec::new()), tcp::SocketBuffer::new(Vec::new()))
}
