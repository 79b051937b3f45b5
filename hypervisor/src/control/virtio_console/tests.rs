//! The driver against a fake virtio-serial device over simulated memory:
//! the multiport handshake, clients coming and going, bytes both ways, and
//! a device that lies.

use super::*;
use crate::mm::PhysAddr;
use crate::mm::testmem::TestMem;
use crate::net::virtq::layout::*;
use alloc::vec::Vec;

use crate::virtio::testing::FakeQueue as Queue;

/// Port 0 and two more (`max_nr_ports` 3), as QEMU's virtio-serial-pci
/// with two `virtserialport`s.
const QUEUES: usize = 8;

struct FakeDevice {
    mem: TestMem,
    status: u8,
    offered: u64,
    feature_select: u64,
    selected: usize,
    queues: [Queue; QUEUES],
    max_ports: u32,
}

impl FakeDevice {
    fn new() -> Self {
        Self {
            mem: TestMem::new(2000),
            status: 0,
            offered: VERSION_1 | MULTIPORT | 1,
            feature_select: 0,
            selected: 0,
            queues: [Queue { size: 64, ..Default::default() }; QUEUES],
            max_ports: 3,
        }
    }

    fn take_avail(&mut self, q: usize) -> Option<(u16, PhysAddr, u32, u16)> {
        self.queues[q].take_avail(&mut self.mem)
    }

    /// Writes a used entry (any id and length: the device may lie).
    fn put_used(&mut self, q: usize, id: u32, len: u32) {
        self.queues[q].put_used(&mut self.mem, id, len);
    }

    /// Bytes into the next receive buffer of queue `q`.
    fn give(&mut self, q: usize, bytes: &[u8]) {
        let (id, buf, len, flags) = self.take_avail(q).expect("a receive buffer");
        assert_eq!(flags, DESC_F_WRITE);
        assert!(bytes.len() <= len as usize);
        self.mem.write(buf, 0, bytes);
        self.put_used(q, id.into(), bytes.len() as u32);
    }

    /// A control message to the driver.
    fn control_in(&mut self, id: u32, ev: u16, value: u16) {
        let mut m = [0u8; 8];
        m[..4].copy_from_slice(&id.to_le_bytes());
        m[4..6].copy_from_slice(&ev.to_le_bytes());
        m[6..].copy_from_slice(&value.to_le_bytes());
        self.give(2, &m);
    }

    /// Everything the driver sent on queue `q`, buffer by buffer.
    fn taken(&mut self, q: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((id, buf, len, flags)) = self.take_avail(q) {
            assert_eq!(flags, 0, "a transmit buffer the device may write");
            let mut b = alloc::vec![0u8; len as usize];
            self.mem.read(buf, 0, &mut b);
            out.push(b);
            self.put_used(q, id.into(), len);
        }
        out
    }

    /// The control messages the driver sent.
    fn control_out(&mut self) -> Vec<(u32, u16, u16)> {
        self.taken(3)
            .into_iter()
            .map(|m| {
                assert_eq!(m.len(), 8);
                (u32::from_le_bytes(m[..4].try_into().unwrap()), u16::from_le_bytes([m[4], m[5]]), u16::from_le_bytes([m[6], m[7]]))
            })
            .collect()
    }
}

impl Transport for FakeDevice {
    type Dma = TestMem;
    fn read(&mut self, reg: CommonCfg) -> u64 {
        let q = &self.queues[self.selected];
        match reg {
            CommonCfg::DeviceFeature => (self.offered >> (32 * self.feature_select)) & 0xffff_ffff,
            CommonCfg::DeviceStatus => self.status.into(),
            CommonCfg::QueueSize => q.size.into(),
            CommonCfg::QueueNotifyOff => self.selected as u64,
            _ => 0,
        }
    }
    fn write(&mut self, reg: CommonCfg, v: u64) {
        let sel = self.selected;
        match reg {
            CommonCfg::DeviceFeatureSelect => self.feature_select = v,
            CommonCfg::DeviceStatus => self.status = v as u8,
            CommonCfg::QueueSelect => self.selected = (v as usize).min(QUEUES - 1),
            CommonCfg::QueueSize => self.queues[sel].size = v as u16,
            CommonCfg::QueueDesc => self.queues[sel].desc = v,
            CommonCfg::QueueDriver => self.queues[sel].avail = v,
            CommonCfg::QueueDevice => self.queues[sel].used = v,
            CommonCfg::QueueEnable => self.queues[sel].enabled = v == 1,
            _ => {}
        }
    }
    fn device_config(&mut self, offset: usize) -> u8 {
        let mut cfg = [0u8; 8];
        cfg[4..].copy_from_slice(&self.max_ports.to_le_bytes());
        cfg.get(offset).copied().unwrap_or(0)
    }
    fn notify(&mut self, _queue: u16, _notify_off: u16) {}
    fn dma(&mut self) -> &mut TestMem {
        &mut self.mem
    }
}

fn poll(c: &mut VirtioConsole<FakeDevice>) -> Vec<(char, usize, Vec<u8>)> {
    let mut out = Vec::new();
    c.poll(&mut |i| {
        out.push(match i {
            Input::Opened(p) => ('o', p, Vec::new()),
            Input::Closed(p) => ('c', p, Vec::new()),
            Input::Bytes(p, b) => ('b', p, b.to_vec()),
        })
    });
    out
}

/// A console with its two ports added and port 1's client connected.
fn started() -> VirtioConsole<FakeDevice> {
    let mut c = VirtioConsole::start(FakeDevice::new()).unwrap();
    assert_eq!(c.ports(), 2);
    let d = c.transport();
    assert_eq!(d.status & status::DRIVER_OK, status::DRIVER_OK);
    assert_eq!(d.control_out(), [(0, event::DEVICE_READY, 1)]);
    d.control_in(1, event::DEVICE_ADD, 0);
    d.control_in(2, event::DEVICE_ADD, 0);
    d.control_in(9, event::DEVICE_ADD, 0);
    assert_eq!(poll(&mut c), []);
    assert_eq!(c.transport().control_out(), [(1, event::PORT_READY, 1), (2, event::PORT_READY, 1), (9, event::PORT_READY, 0)]);
    c.transport().control_in(1, event::PORT_OPEN, 1);
    assert_eq!(poll(&mut c), [('o', 0, Vec::new())]);
    assert_eq!(c.transport().control_out(), [(1, event::PORT_OPEN, 1)], "the driver opens its side");
    c
}

#[test]
fn clients_come_and_go_and_bytes_flow_both_ways() {
    let mut c = started();
    // Port 1 is client 0: queues 4 (receive) and 5 (transmit).
    c.transport().give(4, b"list\nsta");
    c.transport().give(4, b"ts\n");
    assert_eq!(poll(&mut c), [('b', 0, b"list\nsta".to_vec()), ('b', 0, b"ts\n".to_vec())]);
    c.write_line(0, "{\"guests\":[]}");
    assert_eq!(c.transport().taken(5), [b"{\"guests\":[]}\n".to_vec()]);
    // A line longer than a page goes in pages, the newline at its end.
    let long = "x".repeat(5000);
    c.write_line(0, &long);
    let pages = c.transport().taken(5);
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4096, 905]);
    assert_eq!(pages.concat(), [long.as_bytes(), b"\n"].concat());
    // A second client on port 2 at the same time.
    c.transport().control_in(2, event::PORT_OPEN, 1);
    c.transport().give(6, b"version\n");
    assert_eq!(poll(&mut c), [('o', 1, Vec::new()), ('b', 1, b"version\n".to_vec())]);
    c.write_line(1, "v");
    assert_eq!((c.transport().taken(7), c.transport().taken(5)), (alloc::vec![b"v\n".to_vec()], Vec::new()));
    // Client 0 leaves; what is written to it is dropped, not queued for
    // the next client of its port.
    c.transport().control_in(1, event::PORT_OPEN, 0);
    assert_eq!(poll(&mut c), [('c', 0, Vec::new())]);
    c.write_line(0, "lost");
    assert_eq!((c.transport().taken(5), c.dropped), (Vec::new(), 5));
    // Many lines: transmit buffers are reused as the device takes them.
    for i in 0..1000 {
        c.write_line(1, &alloc::format!("{i}"));
        assert_eq!(c.transport().taken(7).len(), 1);
    }
}

#[test]
fn a_lying_device_costs_only_what_it_sent() {
    let mut c = started();
    // A used entry naming no buffer, a control message that is too short,
    // events for ports not ours.
    c.transport().put_used(4, 999, 3);
    c.transport().give(2, &[1, 0]);
    c.transport().control_in(0, event::PORT_OPEN, 1);
    c.transport().control_in(77, event::PORT_OPEN, 1);
    c.transport().control_in(u32::MAX, event::DEVICE_REMOVE, 0);
    assert_eq!(poll(&mut c), []);
    assert!(c.dropped >= 1);
    // It still works afterwards, and a removed port closes its client.
    c.transport().give(4, b"list\n");
    let got = poll(&mut c);
    assert!(got.contains(&('b', 0, b"list\n".to_vec())), "{got:?}");
    c.transport().control_in(1, event::DEVICE_REMOVE, 0);
    assert_eq!(poll(&mut c), [('c', 0, Vec::new())]);
    c.transport().control_in(1, event::PORT_OPEN, 1);
    assert_eq!(poll(&mut c), [], "a removed port does not open");
}

/// QEMU's order for a port: the client's `PORT_OPEN 1` is queued before a
/// byte of it is read, and all of a leaving client's bytes before its
/// `PORT_OPEN 0`; control and bytes come in different queues, so the
/// driver sees a client's bytes before its open, or a leaver's after its
/// close. Every byte still goes to the session of the client that sent it.
#[test]
fn each_byte_goes_to_the_client_that_sent_it_when_clients_churn() {
    let mut c = started();
    // Client A (port 1) leaves; the driver sees that. Client B connects
    // and sends at once: its bytes are in the port's queue before its open
    // is in the control queue the driver reads.
    c.transport().control_in(1, event::PORT_OPEN, 0);
    assert_eq!(poll(&mut c), [('c', 0, Vec::new())]);
    c.transport().give(4, b"version\n");
    assert_eq!(poll(&mut c), [], "no session for bytes whose client has not opened yet");
    c.transport().control_in(1, event::PORT_OPEN, 1);
    assert_eq!(poll(&mut c), [('o', 0, Vec::new()), ('b', 0, b"version\n".to_vec())], "they wait for B");
    c.write_line(0, "answer");
    assert_eq!(c.transport().taken(5), [b"answer\n".to_vec()]);
    // B sends its last request and leaves before the driver looked: the
    // request is B's (its session runs it), then B's session ends.
    c.transport().give(4, b"stop x\n");
    c.transport().control_in(1, event::PORT_OPEN, 0);
    assert_eq!(poll(&mut c), [('b', 0, b"stop x\n".to_vec()), ('c', 0, Vec::new())]);
    // C leaves and D arrives between two looks: what is in the queue then
    // is D's (C read its answers before leaving).
    c.transport().control_in(1, event::PORT_OPEN, 1);
    assert_eq!(poll(&mut c), [('o', 0, Vec::new())]);
    c.transport().control_in(1, event::PORT_OPEN, 0);
    c.transport().control_in(1, event::PORT_OPEN, 1);
    c.transport().give(4, b"list\n");
    assert_eq!(poll(&mut c), [('c', 0, Vec::new()), ('o', 0, Vec::new()), ('b', 0, b"list\n".to_vec())]);
    // Sixteen clients come and go between two looks: no open is lost.
    for _ in 0..16 {
        c.transport().control_in(1, event::PORT_OPEN, 0);
        c.transport().control_in(1, event::PORT_OPEN, 1);
    }
    let got = poll(&mut c);
    assert_eq!(got.len(), 32);
    assert_eq!(got.last(), Some(&('o', 0, Vec::new())));
}

#[test]
fn a_device_without_multiport_is_refused() {
    let mut d = FakeDevice::new();
    d.offered = VERSION_1;
    assert!(VirtioConsole::start(d).is_err());
}

#[test]
fn a_client_that_does_not_read_never_holds_the_hypervisor() {
    let mut c = started();
    // The device takes nothing (its socket's reader is stuck): 16 pages go
    // into the queue, then lines wait in the port, then they are dropped.
    let line = "y".repeat(1000);
    let lines = 2 * PENDING_MAX / 1000;
    for _ in 0..lines {
        c.write_line(0, &line);
    }
    assert!(c.dropped > 0 && c.dropped < (lines as u64) * 1001, "{}", c.dropped);
    // The reader wakes up: what waited goes out, in order, whole lines.
    let mut out = Vec::new();
    loop {
        let got = c.transport().taken(5);
        if got.is_empty() {
            break;
        }
        out.extend(got.concat());
        poll(&mut c);
    }
    assert!(out.len() >= PENDING_MAX - 1001 && out.len() % 1001 == 0, "{}", out.len());
    assert!(out.split(|&b| b == b'\n').all(|l| l.is_empty() || l == line.as_bytes()));
}
