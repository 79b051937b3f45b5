//! The control channel over a virtio 1.0 console device (virtio-serial,
//! virtio 1.0 §5.3) with the multiport feature: one port per client, so
//! that several clients are served at once, each with its own session,
//! and bytes move a page at a time instead of at a UART's pace.
//!
//! Queues: control receive 2 and transmit 3; port `p` (1 and up) receive
//! `2p + 2` and transmit `2p + 3`. Port 0 (the legacy console) is not
//! used. Control messages (`virtio_console_control`: id u32, event u16,
//! value u16): the driver says DEVICE_READY; the device adds each port
//! (DEVICE_ADD), the driver answers PORT_READY; the device says PORT_OPEN
//! 1 when a client connects to the port's host side and 0 when it leaves,
//! and the driver opens its side (PORT_OPEN 1) in return.
//!
//! Rules:
//! - The device is not trusted (`crate::virtio`): port ids are bounded,
//!   lengths checked, one poll looks at a queue's worth of entries at
//!   most.
//! - Nothing waits for a client: what the device has no buffer for yet
//!   waits in the port's pending bytes (at most [`PENDING_MAX`], then
//!   lines are dropped and counted) and goes out as the device frees
//!   buffers, at the next write or poll.
//! - Clients are numbered 0.. in port order ([`Input`]); a port's client
//!   is new each time it opens, so the caller starts a fresh session.
//! - Called by CPU 0 only, between guests.

pub use super::Input;
use crate::mm::PhysMem;
use crate::net::virtq::{BUFFER_BYTES, Virtq, VirtqError};
use crate::virtio::{CommonCfg, Transport, VirtioError, feature::VERSION_1, status};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

/// The transitional and the modern virtio-console PCI device ids.
pub const VIRTIO_CONSOLE_DEVICES: [u16; 2] = [0x1003, 0x1043];
/// Feature bit: several ports, and the control queues (virtio 1.0 §5.3.3).
pub const MULTIPORT: u64 = 1 << 1;
/// Ports (clients at once) driven at most; the device may have fewer.
pub const MAX_PORTS: usize = abi::control::CLIENTS_MAX;
/// Entries of each port's receive queue (a page each: 128 KiB in flight).
const RX_SIZE: u16 = 32;
/// Entries of each transmit queue.
const TX_SIZE: u16 = 16;
/// Entries of the control receive queue (QEMU drops a control message it has no
/// buffer for, and a lost `PORT_OPEN` would strand a client: room for 16
/// clients coming and going between two polls).
const CONTROL_RX_SIZE: u16 = 32;
/// Entries of the control transmit queue (the device takes each at once).
const CONTROL_TX_SIZE: u16 = 8;
const CONTROL_RX: u16 = 2;
const CONTROL_TX: u16 = 3;
/// Bytes written to a client and not yet taken by the device, at most
/// (a client that does not read its answers fills it; then its lines are
/// dropped and counted).
pub const PENDING_MAX: usize = 1 << 20;
/// `virtio_console_control`: id (u32), event (u16), value (u16).
const CONTROL_BYTES: usize = 8;

/// Control events (virtio 1.0 §5.3.6.2).
mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const DEVICE_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const PORT_OPEN: u16 = 6;
}

struct Port {
    rx: Virtq,
    rx_notify: u16,
    tx: Virtq,
    tx_notify: u16,
    /// The device added it (DEVICE_ADD).
    added: bool,
    /// A client is connected.
    open: bool,
    /// Written, waiting for a free transmit buffer.
    pending: alloc::collections::VecDeque<u8>,
}

/// A started virtio console.
pub struct VirtioConsole<T> {
    transport: T,
    control_rx: Virtq,
    control_rx_notify: u16,
    control_tx: Virtq,
    control_tx_notify: u16,
    ports: Vec<Port>,
    /// A receive buffer's bytes, handed to the caller.
    buf: Vec<u8>,
    /// Bytes dropped: written to a port with no client or a queue that
    /// stayed full, or a bad used entry from the device.
    pub dropped: u64,
}

impl<T: Transport> VirtioConsole<T> {
    /// Resets and starts the device: every port's queues and the control
    /// queues, then DEVICE_READY.
    pub fn start(mut t: T) -> Result<Self, VirtioError> {
        let agreed = crate::virtio::negotiate(&mut t, |_| VERSION_1 | MULTIPORT)?;
        if agreed & MULTIPORT == 0 {
            return Err(VirtioError::FeaturesRefused);
        }
        // `max_nr_ports` (u32 at offset 4), port 0 included.
        let max = u32::from_le_bytes([t.device_config(4), t.device_config(5), t.device_config(6), t.device_config(7)]);
        let n = (max.saturating_sub(1) as usize).min(MAX_PORTS);
        let (control_rx, control_rx_notify) = crate::virtio::queue(&mut t, CONTROL_RX, CONTROL_RX_SIZE)?;
        let (control_tx, control_tx_notify) = crate::virtio::queue(&mut t, CONTROL_TX, CONTROL_TX_SIZE)?;
        let mut ports = Vec::with_capacity(n);
        for p in 1..=n as u16 {
            let (rx, rx_notify) = crate::virtio::queue(&mut t, 2 * p + 2, RX_SIZE)?;
            let (tx, tx_notify) = crate::virtio::queue(&mut t, 2 * p + 3, TX_SIZE)?;
            ports.push(Port { rx, rx_notify, tx, tx_notify, added: false, open: false, pending: Default::default() });
        }
        t.write(CommonCfg::DeviceStatus, u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK));
        let mut c = Self {
            transport: t,
            control_rx,
            control_rx_notify,
            control_tx,
            control_tx_notify,
            ports,
            buf: vec![0; BUFFER_BYTES as usize],
            dropped: 0,
        };
        let mem = c.transport.dma();
        while let Some(id) = c.control_rx.take() {
            c.control_rx.submit(mem, id, BUFFER_BYTES, true);
        }
        for p in &mut c.ports {
            while let Some(id) = p.rx.take() {
                p.rx.submit(mem, id, BUFFER_BYTES, true);
            }
        }
        fence(Ordering::SeqCst);
        c.transport.notify(CONTROL_RX, c.control_rx_notify);
        for (i, p) in c.ports.iter().enumerate() {
            c.transport.notify(2 * (i as u16 + 1) + 2, p.rx_notify);
        }
        c.control(0, event::DEVICE_READY, 1);
        Ok(c)
    }

    /// How many clients it can serve at once.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// The transport (the host tests' fake device).
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Handles what the device has done since the last poll: control
    /// messages (clients coming and going) and bytes clients sent, each
    /// handed to `on` in order. Never waits.
    ///
    /// Bytes and control messages come in different queues, so which
    /// client sent a port's bytes follows from QEMU's order: it queues a
    /// client's `PORT_OPEN 1` before it reads a byte from that client, and
    /// every byte it read from a client before that client's `PORT_OPEN 0`.
    /// So each port's received buffers are counted first, then the control
    /// messages read and handled, then the counted bytes handed over: a
    /// counted byte's client is one whose open is here by then. A leaving
    /// client's counted bytes go to its own session before it ends (unless
    /// the port's next open is here too: a client reads its answers before
    /// it leaves, so those bytes are the newcomer's), and bytes on a port
    /// closed here wait in its queue for the open that QEMU sent first.
    pub fn poll(&mut self, on: &mut dyn FnMut(Input<'_>)) {
        let mut counted = [0u16; MAX_PORTS];
        for (n, p) in counted.iter_mut().zip(&self.ports) {
            *n = p.rx.used_count(self.transport.dma());
        }
        fence(Ordering::SeqCst);
        self.poll_control(&mut counted, on);
        for i in 0..self.ports.len() {
            self.flush(i);
        }
        for (i, &n) in counted.iter().enumerate().take(self.ports.len()) {
            if self.ports[i].open {
                self.receive(i, n, on);
            }
        }
    }

    /// Hands port `i`'s first `n` received buffers to `on` as its client's
    /// bytes and gives the buffers back to the device.
    fn receive(&mut self, i: usize, n: u16, on: &mut dyn FnMut(Input<'_>)) {
        let p = &mut self.ports[i];
        let returned = receive(self.transport.dma(), &mut p.rx, n, &mut self.buf, &mut self.dropped, &mut |bytes| {
            if !bytes.is_empty() {
                on(Input::Bytes(i, bytes));
            }
        });
        if returned {
            fence(Ordering::SeqCst);
            self.transport.notify(2 * (i as u16 + 1) + 2, p.rx_notify);
        }
    }

    /// Handles the control messages; a leaving client's `counted` buffers
    /// go to its session first.
    fn poll_control(&mut self, counted: &mut [u16; MAX_PORTS], on: &mut dyn FnMut(Input<'_>)) {
        let mut msgs: Vec<(u32, u16, u16)> = Vec::new();
        let size = self.control_rx.size;
        let returned = receive(self.transport.dma(), &mut self.control_rx, size, &mut self.buf, &mut self.dropped, &mut |m| {
            if let Some(m) = m.first_chunk::<CONTROL_BYTES>() {
                let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                msgs.push((id, u16::from_le_bytes([m[4], m[5]]), u16::from_le_bytes([m[6], m[7]])));
            }
        });
        if returned {
            fence(Ordering::SeqCst);
            self.transport.notify(CONTROL_RX, self.control_rx_notify);
        }
        for (n, &(id, ev, value)) in msgs.iter().enumerate() {
            // Port `id` is ours if 1..=ports; others are refused.
            let port = (id as usize).checked_sub(1).filter(|&i| i < self.ports.len());
            match (ev, port) {
                (event::DEVICE_ADD, Some(i)) => {
                    self.ports[i].added = true;
                    self.control(id, event::PORT_READY, 1);
                }
                (event::DEVICE_ADD, None) => self.control(id, event::PORT_READY, 0),
                (event::DEVICE_REMOVE, Some(i)) => {
                    self.ports[i].added = false;
                    self.ports[i].pending.clear();
                    if core::mem::take(&mut self.ports[i].open) {
                        on(Input::Closed(i));
                    }
                }
                (event::PORT_OPEN, Some(i)) if self.ports[i].added => match (self.ports[i].open, value != 0) {
                    (false, true) => {
                        self.ports[i].open = true;
                        self.control(id, event::PORT_OPEN, 1);
                        on(Input::Opened(i));
                    }
                    (true, false) => {
                        let reopened = msgs[n + 1..].iter().any(|&(o, e, v)| o == id && e == event::PORT_OPEN && v != 0);
                        if !reopened {
                            self.receive(i, core::mem::take(&mut counted[i]), on);
                        }
                        self.ports[i].open = false;
                        self.ports[i].pending.clear();
                        on(Input::Closed(i));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    /// Sends a control message.
    fn control(&mut self, id: u32, ev: u16, value: u16) {
        let mut m = [0u8; CONTROL_BYTES];
        m[..4].copy_from_slice(&id.to_le_bytes());
        m[4..6].copy_from_slice(&ev.to_le_bytes());
        m[6..].copy_from_slice(&value.to_le_bytes());
        let Self { transport, control_tx, control_tx_notify, dropped, .. } = self;
        if !send(transport, control_tx, CONTROL_TX, *control_tx_notify, &m) {
            *dropped += 1;
        }
    }

    /// Bytes written to client `client` that wait for the device.
    pub fn backlog(&self, client: usize) -> usize {
        self.ports.get(client).map_or(0, |p| p.pending.len())
    }

    /// Writes `line` and a newline to client `client` (dropped and
    /// counted if it has gone, or has [`PENDING_MAX`] bytes unread).
    pub fn write_line(&mut self, client: usize, line: &str) {
        let Some(p) = self.ports.get_mut(client).filter(|p| p.open && p.pending.len() + line.len() < PENDING_MAX) else {
            self.dropped += line.len() as u64 + 1;
            return;
        };
        p.pending.extend(line.as_bytes());
        p.pending.push_back(b'\n');
        self.flush(client);
    }

    /// Moves client `client`'s pending bytes into the transmit buffers the
    /// device has finished with (a page each) and tells it; never waits.
    fn flush(&mut self, client: usize) {
        let q = 2 * (client as u16 + 1) + 3;
        let Self { transport, ports, .. } = self;
        let p = &mut ports[client];
        let mut sent = false;
        while !p.pending.is_empty() {
            loop {
                match p.tx.pop_used(transport.dma()) {
                    Ok(Some(u)) => p.tx.give_back(u.id),
                    Err(VirtqError::BadUsedLen { id, .. }) => p.tx.give_back(id),
                    Ok(None) | Err(VirtqError::BadUsedId(_)) => break,
                }
            }
            let Some(id) = p.tx.take() else { break };
            let n = p.pending.len().min(BUFFER_BYTES as usize);
            let (a, b) = p.pending.as_slices();
            let mem = transport.dma();
            let buf = p.tx.buffer(id);
            let first = a.len().min(n);
            mem.write(buf, 0, &a[..first]);
            if n > first {
                mem.write(buf, first, &b[..n - first]);
            }
            p.pending.drain(..n);
            p.tx.submit(mem, id, n as u32, false);
            sent = true;
        }
        if sent {
            fence(Ordering::SeqCst);
            transport.notify(q, p.tx_notify);
        }
    }
}

/// Takes what the device put in `rx` (at most `n` buffers), hands each
/// buffer's bytes to `each` (through `buf`) and gives the buffers back;
/// a bad used entry is counted in `dropped`. Returns whether any buffer
/// went back (the device is then to be told).
fn receive(mem: &mut impl PhysMem, rx: &mut Virtq, n: u16, buf: &mut [u8], dropped: &mut u64, each: &mut dyn FnMut(&[u8])) -> bool {
    let mut returned = false;
    for _ in 0..n.min(rx.size) {
        match rx.pop_used(mem) {
            Ok(Some(u)) => {
                let len = u.len as usize;
                mem.read(rx.buffer(u.id), 0, &mut buf[..len]);
                rx.submit(mem, u.id, BUFFER_BYTES, true);
                returned = true;
                each(&buf[..len]);
            }
            Ok(None) => break,
            Err(VirtqError::BadUsedLen { id, .. }) => {
                *dropped += 1;
                rx.submit(mem, id, BUFFER_BYTES, true);
                returned = true;
            }
            Err(VirtqError::BadUsedId(_)) => {
                *dropped += 1;
                break;
            }
        }
    }
    returned
}

/// Puts `bytes` (at most a page) in a transmit buffer of `tx` and tells
/// the device, if a buffer is free (control messages: a few, and the
/// device answers each at once).
fn send<T: Transport>(t: &mut T, tx: &mut Virtq, queue: u16, notify: u16, bytes: &[u8]) -> bool {
    loop {
        match tx.pop_used(t.dma()) {
            Ok(Some(u)) => tx.give_back(u.id),
            Err(VirtqError::BadUsedLen { id, .. }) => tx.give_back(id),
            Ok(None) | Err(VirtqError::BadUsedId(_)) => break,
        }
    }
    let Some(id) = tx.take() else { return false };
    let mem = t.dma();
    mem.write(tx.buffer(id), 0, bytes);
    tx.submit(mem, id, bytes.len() as u32, false);
    fence(Ordering::SeqCst);
    t.notify(queue, notify);
    true
}

#[cfg(test)]
mod tests;
