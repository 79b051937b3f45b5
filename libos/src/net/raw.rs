//! Raw Ethernet frames on the vNIC, without smoltcp: [`take`] hands the
//! device to the caller for good (sockets answer `NoNetwork` from then
//! on), and [`RawNic`] sends and receives whole frames on its rings
//! (`netdev::RawDevice`). Receiving waits in the executor like a socket
//! does: the task sleeps until the hypervisor raises `NET_RX`.
//!
//! The switch still applies its rules to every frame: the source MAC must
//! be the guest's own ([`RawNic::mac`]), IPv4 and ARP frames must carry
//! its own addresses, and frames stay within its tenant. Any other
//! EtherType (e.g. the local experimental `0x88b5`) is forwarded
//! uninspected.

use super::Error;
use crate::sys::{InSharedPage, MappedRing};
use crate::time::Instant;
use abi::layout;
use abi::ring::{CONS_OFFSET, PROD_OFFSET, RingMemory};
use abi::time::events;
use core::future::poll_fn;
use core::task::{Poll, Waker};
use core::time::Duration;
use netdev::RawDevice;
pub use netdev::{SendError, Stats};
use spin::Mutex;

/// The RX ring and the task waiting for a frame on it, if one is.
pub(super) static WAITING: InSharedPage<Mutex<Option<(MappedRing, Waker)>>> = InSharedPage::new(|| Mutex::new(None));

/// Longest a sender with a full TX ring sleeps before it looks again. A
/// bound only: the hypervisor raises `NET_TX` whenever it takes frames
/// from a full ring, which it does at the latest when they have waited
/// their bounded time for a full or gone receiver.
const ROOM_WAIT: Duration = Duration::from_millis(10);

/// This guest's vNIC, frame by frame.
pub struct RawNic {
    dev: RawDevice<MappedRing>,
}

/// Takes the vNIC away from the network stack. `NoNetwork` if the guest
/// has none or it was taken already.
pub fn take() -> Result<RawNic, Error> {
    // (`lock` takes a clone's identity first, closing the template's
    // connections.)
    let stack = super::lock().take().ok_or(Error::NoNetwork)?;
    Ok(RawNic { dev: stack.dev.into_raw() })
}

/// Wakes the task waiting in [`RawNic::recv`] if a frame has arrived
/// (called by the executor's loop); returns whether it did.
pub(crate) fn poll() -> bool {
    let mut waiting = WAITING.lock();
    let arrived = waiting.as_ref().is_some_and(|(ring, _)| ring.load(PROD_OFFSET) != ring.load(CONS_OFFSET));
    if arrived && let Some((_, waker)) = waiting.take() {
        waker.wake();
    }
    arrived
}

impl RawNic {
    /// The MAC address frames must come from, read from the start page
    /// each time: a clone (ABI 7) has a new one. A guest that builds its
    /// frames itself notices a clone by [`crate::generation`] changing,
    /// and then takes its new MAC from here.
    pub fn mac(&self) -> [u8; 6] {
        let m = crate::sys::nic_info().mac;
        [m[0], m[1], m[2], m[3], m[4], m[5]]
    }

    /// The largest frame the vNIC carries.
    pub fn max_frame(&self) -> usize {
        self.dev.max_frame()
    }

    /// Slots per ring.
    pub fn slots(&self) -> u32 {
        self.dev.slots()
    }

    /// What the device counted.
    pub fn stats(&self) -> Stats {
        self.dev.stats
    }

    /// Queues `frame` if the TX ring has room (`Ok(false)` if not); the
    /// hypervisor forwards it when this guest blocks, yields, is preempted
    /// or kicks.
    pub fn try_send(&mut self, frame: &[u8]) -> Result<bool, SendError> {
        self.dev.send(frame)
    }

    /// Queues `frame`, making room first if the TX ring is full
    /// ([`RawNic::make_room`]).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), SendError> {
        loop {
            if self.dev.send(frame)? {
                return Ok(());
            }
            self.make_room(frame.len());
        }
    }

    /// For a TX ring with no room for a `len`-byte frame: asks the
    /// hypervisor to forward what is queued (a receiver it wakes runs
    /// first), and if that leaves no room, sleeps until it raises
    /// `NET_TX` (it took frames from the ring: its receiver made room) or
    /// [`ROOM_WAIT`] passes. A sender that spun through yields instead
    /// would take the CPU back from its own receiver time and again.
    fn make_room(&mut self, len: usize) {
        // Taken before the kick: a `NET_TX` from here on is about room
        // made after this look.
        crate::hypercall::take_events(events::NET_TX);
        crate::hypercall::net_kick();
        if !self.dev.tx_fits(len) {
            crate::time::block_until(Instant::now().saturating_add(ROOM_WAIT));
        }
    }

    /// Builds a frame of `len` bytes in place in the TX ring (`fill`
    /// writes what matters; the rest holds what the ring held), making
    /// room first as [`RawNic::send`] does. Nothing is copied.
    pub fn send_with(&mut self, len: usize, mut fill: impl FnMut(&mut [u8])) -> Result<(), SendError> {
        loop {
            if self.dev.send_with(len, &mut fill)? {
                return Ok(());
            }
            self.make_room(len);
        }
    }

    /// Asks the hypervisor to forward the queued frames now.
    pub fn kick(&self) {
        crate::hypercall::net_kick();
    }

    /// Copies the next received frame into `buf` (at least
    /// [`RawNic::max_frame`] bytes) without waiting; its length, or `None`.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.dev.recv(buf)
    }

    /// Hands the next received frame, where it lies in the RX ring, to `f`
    /// without waiting; `f`'s answer, or `None`.
    pub fn try_recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.dev.recv_with(f)
    }

    /// Waits for the next received frame and hands it, where it lies in
    /// the RX ring, to `f`; `f`'s answer.
    pub async fn recv_with<R>(&mut self, mut f: impl FnMut(&[u8]) -> R) -> R {
        let slots = self.dev.slots();
        poll_fn(|cx| match self.dev.recv_with(&mut f) {
            Some(r) => Poll::Ready(r),
            None => {
                let ring = MappedRing::new(layout::NIC_RX_INDICES, layout::nic_rx_ring(slots), slots);
                *WAITING.lock() = Some((ring, cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Waits for the next received frame and copies it into `buf` (at
    /// least [`RawNic::max_frame`] bytes); returns its length.
    pub async fn recv(&mut self, buf: &mut [u8]) -> usize {
        let slots = self.dev.slots();
        poll_fn(|cx| match self.dev.recv(buf) {
            Some(n) => Poll::Ready(n),
            None => {
                let ring = MappedRing::new(layout::NIC_RX_INDICES, layout::nic_rx_ring(slots), slots);
                *WAITING.lock() = Some((ring, cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
