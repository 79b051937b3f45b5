//! Networking: smoltcp over the vNIC rings, with async TCP and UDP sockets.
//!
//! The interface is configured from the shared page (`abi::NicInfo`: MAC,
//! IPv4 address and prefix, gateway). The executor (`task`) polls the stack
//! whenever it runs and blocks in the hypervisor until the stack's next
//! deadline or an `events::NET_RX` wake-up, so an idle networked guest
//! costs no CPU. Sockets wake the tasks waiting on them through smoltcp's
//! wakers. A socket pointed at a neighbour asks for its MAC at once
//! (`netdev::arp`), not at smoltcp's pace of one address per second.
//! [`raw`] takes the vNIC away from the stack for a guest that sends and
//! receives Ethernet frames itself.
//!
//! A clone of a paused guest (ABI 7) resumes with its template's stack:
//! the same interface, sockets and random state. The hypervisor writes its
//! own identity (name, MAC, address: ABI 9) into its own copy of the
//! shared page and grows the generation word of
//! the shared page; the `CLONED` event bit may be taken by any waiter, so
//! the word is what counts. Every use of the stack (each poll, kick,
//! socket call, [`raw::take`]) first compares that word with the one it
//! last saw, one load, and on a change takes the new identity before
//! anything else (`netdev::clone`): a new smoltcp interface with the new
//! MAC, address and default route and a fresh random seed (RDRAND where
//! the CPU has it, the TSC, the MAC, the generation; so no initial
//! sequence number repeats the template's or a sibling's), which also
//! forgets the neighbour cache; the first ephemeral port re-drawn; the
//! template's TCP connections closed without a segment (reads see the
//! end, writes fail: they belong to the template's peers, and a RST would
//! carry the old address); listeners, and UDP sockets emptied of the
//! template's datagrams, kept at the new address. A listener's backlog
//! socket that was closed listens again at the next `accept`.

use crate::sys::{self, InSharedPage, MappedRing, nic_info};
use crate::time::Instant;
use abi::ring::valid_slots;
use abi::{NIC_MAGIC, layout};
use alloc::vec;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Poll;
use netdev::RingDevice;
use netdev::arp::{self, Asker};
use netdev::clone::{self, Generation, Identity};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, IpAddress, IpEndpoint, Ipv4Address};
use spin::Mutex;

pub use smoltcp::wire::Ipv4Address as Ipv4;

pub mod raw;

struct Stack {
    dev: RingDevice<MappedRing>,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// Sockets dropped by their owner, removed once closed.
    closing: Vec<SocketHandle>,
    kicked_at: u32,
    ip: Ipv4Address,
    mac: EthernetAddress,
    /// Whom we asked for lately (`netdev::arp`: smoltcp asks for one
    /// address per second at most).
    asker: Asker,
    /// The generation word when the stack last looked (`lock`).
    generation: Generation,
}

impl Stack {
    /// Takes the identity the hypervisor gave this clone (see the module
    /// documentation): a new interface, the template's sockets adopted.
    /// False if the clone has no vNIC (its stack must go).
    #[cold]
    fn reidentify(&mut self) -> bool {
        let info = nic_info();
        if info.magic != NIC_MAGIC || info.ring_slots != self.dev.slots() {
            return false;
        }
        let id = identity(&info);
        let seed = fresh_seed(&id, self.generation.get());
        self.iface = clone::interface(&id, seed, &mut self.dev, now());
        clone::adopt_sockets(&mut self.sockets, self.ip, id.ip, new_tcp);
        self.ip = id.ip;
        self.mac = id.mac;
        self.asker = Asker::new(id.ip, id.prefix);
        // What the template queued and did not see forwarded is not ours
        // to push.
        self.kicked_at = self.dev.tx_index();
        true
    }

    /// Asks for `addr`'s MAC now if it is on the link and was not asked
    /// for lately, and has the hypervisor forward the request at once, so
    /// that the switch's answer is waiting when smoltcp next polls.
    fn ask_ahead(&mut self, addr: Ipv4Address) {
        if self.asker.should_ask(addr, now()) && self.dev.send_frame(&arp::request(self.mac, self.ip, addr)) {
            self.kicked_at = self.dev.tx_index();
            crate::hypercall::net_kick();
        }
    }
}

/// In the shared page, as the executor's state is (`InSharedPage`): every
/// poll writes it.
static STACK: InSharedPage<Mutex<Option<Stack>>> = InSharedPage::new(|| Mutex::new(None));

fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((Instant::now().as_nanos() / 1000) as i64)
}

/// Places the network's state (each `InSharedPage`) at start-up, after the
/// executor's (`task::place_state`).
pub(crate) fn place_state() {
    let _ = (&*NEXT_PORT, &*raw::WAITING, &*STACK);
}

/// Brings the interface up if the hypervisor gave this guest a vNIC.
pub(crate) fn init() {
    let info = nic_info();
    if info.magic != NIC_MAGIC || !valid_slots(info.ring_slots) {
        return;
    }
    let slots = info.ring_slots;
    let tx = MappedRing::new(layout::NIC_TX_INDICES, layout::NIC_TX_RING, slots);
    let rx = MappedRing::new(layout::NIC_RX_INDICES, layout::nic_rx_ring(slots), slots);
    let mut dev = RingDevice::new(tx, rx, slots).with_mtu(info.mtu as usize);
    let mut generation = Generation::new();
    generation.changed(sys::generation());
    let id = identity(&info);
    let iface = clone::interface(&id, fresh_seed(&id, generation.get()), &mut dev, now());
    let asker = Asker::new(id.ip, id.prefix);
    *STACK.lock() = Some(Stack {
        dev,
        iface,
        sockets: SocketSet::new(vec![]),
        closing: Vec::new(),
        kicked_at: 0,
        ip: id.ip,
        mac: id.mac,
        asker,
        generation,
    });
}

/// What the shared page's vNIC record says this interface is.
fn identity(info: &abi::NicInfo) -> Identity {
    let m = info.mac;
    Identity::new([m[0], m[1], m[2], m[3], m[4], m[5]], info.ipv4, info.prefix, info.gateway)
}

/// A seed for smoltcp's randomness (and the first ephemeral port, which
/// it also sets): RDRAND where the CPU has it, the TSC, the MAC and the
/// generation, so that neither a reboot nor a clone repeats another's.
fn fresh_seed(id: &Identity, generation: u64) -> u64 {
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&id.mac.0);
    let tsc = sys::rdtsc();
    let seed = match sys::rdrand() {
        Some(r) => clone::seed(&[r, tsc, u64::from_le_bytes(mac), generation]),
        None => clone::seed(&[tsc, u64::from_le_bytes(mac), generation, crate::time::wall_clock_ns()]),
    };
    NEXT_PORT.store((seed >> 32) as u32, Ordering::Relaxed);
    seed
}

/// The stack, after it took a clone's new identity if the generation word
/// changed since it last looked: every use of the stack goes through here,
/// so nothing is sent or made with the template's identity.
fn lock() -> spin::MutexGuard<'static, Option<Stack>> {
    let mut guard = STACK.lock();
    if let Some(s) = guard.as_mut()
        && s.generation.changed(sys::generation())
        && !s.reidentify()
    {
        *guard = None;
    }
    guard
}

/// This guest's IPv4 address, if it has a vNIC.
pub fn ipv4() -> Option<Ipv4Address> {
    lock().as_ref().map(|s| s.ip)
}

/// Runs the stack: takes received frames, sends what sockets queued.
/// Returns whether anything happened.
pub(crate) fn poll() -> bool {
    let mut guard = lock();
    let Some(s) = guard.as_mut() else { return raw::poll() };
    let changed = s.iface.poll(now(), &mut s.dev, &mut s.sockets) != smoltcp::iface::PollResult::None;
    let Stack { sockets, closing, .. } = s;
    closing.retain(|&h| {
        // TimeWait only guards against stray segments of an old connection;
        // a guest does not keep its buffers for that.
        let done = matches!(sockets.get::<tcp::Socket>(h).state(), tcp::State::Closed | tcp::State::TimeWait);
        if done {
            sockets.remove(h);
        }
        !done
    });
    changed
}

/// When the stack next needs polling (retransmits, delayed ACKs), if ever.
pub(crate) fn poll_at() -> Option<Instant> {
    let mut guard = lock();
    let s = guard.as_mut()?;
    let at = s.iface.poll_at(now(), &s.sockets)?;
    Some(Instant::from_nanos(at.total_micros().max(0) as u64 * 1000))
}

/// Whether the vNIC's TX ring was full at the last poll: the stack's "poll
/// now" then means "when there is room", which the hypervisor announces
/// with `events::NET_TX` (see `task::block_on`).
pub(crate) fn tx_stalled() -> bool {
    lock().as_ref().is_some_and(|s| s.dev.stats.tx_stalled())
}

/// Asks the hypervisor to forward what was queued, if anything was, for a
/// guest that keeps running instead of blocking.
pub(crate) fn kick() {
    let mut guard = lock();
    let Some(s) = guard.as_mut() else { return };
    if s.dev.tx_index() != s.kicked_at {
        s.kicked_at = s.dev.tx_index();
        crate::hypercall::net_kick();
    }
}

fn with<R>(f: impl FnOnce(&mut Stack) -> R) -> Result<R, Error> {
    lock().as_mut().map(f).ok_or(Error::NoNetwork)
}

/// Socket errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// This guest has no vNIC (`net = true` in the manifest).
    NoNetwork,
    /// The peer closed or reset the connection, or it could not be made.
    ConnectionClosed,
    /// The local port is in use or invalid.
    AddressInUse,
    /// A datagram that cannot be sent there (no such address, too big).
    Unaddressable,
}

/// Bytes of a socket's receive and of its send buffer (TCP; UDP's hold
/// the datagrams' bytes): 256 KiB (smoltcp then scales the TCP window,
/// and a UDP datagram of 64 KiB, one frame between guests with large
/// rings, fits), or a 32nd of the guest's memory limit if that is less,
/// never below 16 KiB. An idle socket costs nothing: buffers this big are
/// runs of untouched demand-zero pages (`heap`), charged only as traffic
/// writes them (a long transfer writes them all).
fn buffer_bytes() -> usize {
    const MAX: usize = 256 * 1024;
    const MIN: usize = 16 * 1024;
    let limit = crate::rt::start_info().memory_limit as usize;
    (limit / 32).clamp(MIN, MAX).next_multiple_of(abi::layout::PAGE_SIZE as usize)
}

fn new_tcp() -> tcp::Socket<'static> {
    let n = buffer_bytes();
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; n]), tcp::SocketBuffer::new(vec![0; n]))
}

/// A TCP listening port with a backlog of sockets waiting for connections.
pub struct TcpListener {
    port: u16,
    waiting: Vec<SocketHandle>,
}

impl TcpListener {
    /// Listens on `port` with room for `backlog` connections being set up.
    pub fn bind(port: u16, backlog: usize) -> Result<Self, Error> {
        let mut waiting = Vec::new();
        for _ in 0..backlog.max(1) {
            waiting.push(Self::listen(port)?);
        }
        Ok(Self { port, waiting })
    }

    fn listen(port: u16) -> Result<SocketHandle, Error> {
        with(|s| {
            let mut sock = new_tcp();
            sock.listen(port).map_err(|_| Error::AddressInUse)?;
            Ok(s.sockets.add(sock))
        })?
    }

    /// Waits for the next connection.
    pub async fn accept(&mut self) -> Result<TcpStream, Error> {
        let handle = poll_fn(|cx| {
            let mut guard = lock();
            let Some(s) = guard.as_mut() else { return Poll::Ready(Err(Error::NoNetwork)) };
            for (i, &h) in self.waiting.iter().enumerate() {
                let sock = s.sockets.get_mut::<tcp::Socket>(h);
                if sock.state() == tcp::State::Closed {
                    // Reset before it was accepted, or a connection of
                    // the template this clone closed: listen again.
                    *sock = new_tcp();
                    let _ = sock.listen(self.port);
                }
                if sock.may_send() || sock.may_recv() {
                    return Poll::Ready(Ok(i));
                }
                sock.register_recv_waker(cx.waker());
            }
            Poll::Pending
        })
        .await?;
        let h = self.waiting.swap_remove(handle);
        self.waiting.push(Self::listen(self.port)?);
        Ok(TcpStream { handle: h })
    }
}

static NEXT_PORT: InSharedPage<AtomicU32> = InSharedPage::new(|| AtomicU32::new(0));

/// A TCP connection.
pub struct TcpStream {
    handle: SocketHandle,
}

impl TcpStream {
    /// Connects to `addr:port`.
    pub async fn connect(addr: Ipv4Address, port: u16) -> Result<Self, Error> {
        let local = 49152 + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 16384) as u16;
        let handle = with(|s| {
            s.ask_ahead(addr);
            let mut sock = new_tcp();
            let cx = s.iface.context();
            sock.connect(cx, IpEndpoint::new(IpAddress::Ipv4(addr), port), local).map_err(|_| Error::ConnectionClosed)?;
            Ok(s.sockets.add(sock))
        })??;
        let stream = TcpStream { handle };
        poll_fn(|cx| {
            stream.socket(|sock| {
                if sock.may_send() {
                    Poll::Ready(Ok(()))
                } else if sock.state() == tcp::State::Closed {
                    Poll::Ready(Err(Error::ConnectionClosed))
                } else {
                    sock.register_send_waker(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await?;
        Ok(stream)
    }

    fn socket<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> Poll<Result<R, Error>>) -> Poll<Result<R, Error>> {
        match lock().as_mut() {
            Some(s) => f(s.sockets.get_mut::<tcp::Socket>(self.handle)),
            None => Poll::Ready(Err(Error::NoNetwork)),
        }
    }

    /// Reads what has arrived (at least one byte); `Ok(0)` when the peer
    /// has finished sending.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        poll_fn(|cx| {
            self.socket(|sock| {
                if sock.can_recv() {
                    return Poll::Ready(sock.recv_slice(buf).map_err(|_| Error::ConnectionClosed));
                }
                if !sock.may_recv() {
                    return Poll::Ready(Ok(0));
                }
                sock.register_recv_waker(cx.waker());
                Poll::Pending
            })
        })
        .await
    }

    /// Writes some of `buf` (at least one byte), waiting for buffer space:
    /// a slow peer slows the writer down rather than growing a buffer.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        poll_fn(|cx| {
            self.socket(|sock| {
                if !sock.may_send() {
                    return Poll::Ready(Err(Error::ConnectionClosed));
                }
                if sock.can_send() {
                    return Poll::Ready(sock.send_slice(buf).map_err(|_| Error::ConnectionClosed));
                }
                sock.register_send_waker(cx.waker());
                Poll::Pending
            })
        })
        .await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// One line on the connection for a person reading a log: its TCP
    /// state, bytes queued each way, the room left in its receive buffer,
    /// and the vNIC's counters (frames lost to a full TX ring among them).
    pub fn describe(&self) -> alloc::string::String {
        let mut guard = lock();
        let Some(s) = guard.as_mut() else { return "no network".into() };
        let sock = s.sockets.get::<tcp::Socket>(self.handle);
        let d = s.dev.stats;
        alloc::format!(
            "tcp {} (send queue {}, receive queue {} of {}); vnic rx {} tx {} tx_full {} ring_errors {}",
            sock.state(),
            sock.send_queue(),
            sock.recv_queue(),
            sock.recv_capacity(),
            d.rx_frames,
            d.tx_frames,
            d.tx_full,
            d.ring_errors
        )
    }

    /// Finishes sending (the peer reads end of stream).
    pub fn shutdown(&mut self) {
        let _ = with(|s| s.sockets.get_mut::<tcp::Socket>(self.handle).close());
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let _ = with(|s| {
            let sock = s.sockets.get_mut::<tcp::Socket>(self.handle);
            sock.close();
            // A peer that never finishes closing cannot pin the socket.
            sock.set_timeout(Some(smoltcp::time::Duration::from_secs(30)));
            s.closing.push(self.handle);
        });
    }
}

/// A UDP socket.
pub struct UdpSocket {
    handle: SocketHandle,
}

impl UdpSocket {
    pub fn bind(port: u16) -> Result<Self, Error> {
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0; buffer_bytes()]);
        let handle = with(|s| {
            let mut sock = udp::Socket::new(buf(), buf());
            sock.bind(port).map_err(|_| Error::AddressInUse)?;
            Ok(s.sockets.add(sock))
        })??;
        Ok(Self { handle })
    }

    /// Waits for a datagram; returns its length and sender.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, Ipv4Address, u16), Error> {
        poll_fn(|cx| match lock().as_mut() {
            None => Poll::Ready(Err(Error::NoNetwork)),
            Some(s) => {
                let sock = s.sockets.get_mut::<udp::Socket>(self.handle);
                match sock.recv_slice(buf) {
                    Ok((n, meta)) => {
                        let IpAddress::Ipv4(a) = meta.endpoint.addr;
                        Poll::Ready(Ok((n, a, meta.endpoint.port)))
                    }
                    Err(_) => {
                        sock.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                }
            }
        })
        .await
    }

    /// Queues a datagram, waiting for room in the send buffer (so a full
    /// vNIC, and the hypervisor's backpressure behind it, slows the sender
    /// down instead of losing datagrams).
    pub async fn send(&mut self, buf: &[u8], addr: Ipv4Address, port: u16) -> Result<(), Error> {
        poll_fn(|cx| match lock().as_mut() {
            None => Poll::Ready(Err(Error::NoNetwork)),
            Some(s) => {
                let sock = s.sockets.get_mut::<udp::Socket>(self.handle);
                match sock.send_slice(buf, IpEndpoint::new(IpAddress::Ipv4(addr), port)) {
                    Ok(()) => {
                        s.ask_ahead(addr);
                        Poll::Ready(Ok(()))
                    }
                    Err(udp::SendError::BufferFull) => {
                        sock.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    // Too big for the buffer, or no route to the address.
                    Err(udp::SendError::Unaddressable) => Poll::Ready(Err(Error::Unaddressable)),
                }
            }
        })
        .await
    }

    /// Queues a datagram (dropped if the send buffer is full).
    pub fn send_to(&mut self, buf: &[u8], addr: Ipv4Address, port: u16) -> Result<(), Error> {
        with(|s| {
            let sock = s.sockets.get_mut::<udp::Socket>(self.handle);
            if sock.send_slice(buf, IpEndpoint::new(IpAddress::Ipv4(addr), port)).is_ok() {
                s.ask_ahead(addr);
            }
        })
    }
}
