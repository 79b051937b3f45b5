//! The driver against a fake virtio-net device over simulated memory: the
//! bring-up handshake, frames both ways through the descriptors, and a
//! device that lies in its used ring.

use super::*;
use crate::mm::PhysAddr;
use crate::mm::testmem::TestMem;
use crate::net::virtq::layout::*;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

use crate::virtio::testing::FakeQueue as Queue;

/// A virtio-net device as the spec has it, with registers, two queues over
/// the driver's memory, and the host's side of the wire.
struct FakeDevice {
    mem: TestMem,
    status: u8,
    offered: u64,
    feature_select: u64,
    driver_features: u64,
    accept_features: bool,
    resets: bool,
    selected: usize,
    queues: [Queue; 2],
    notifies: [u32; 2],
    /// Interrupts the driver asked for, per queue (sent through the
    /// queue's MSI-X vector, if it has one).
    interrupts: [u32; 2],
    /// Frames the host sent, not yet given to the driver.
    from_host: VecDeque<Vec<u8>>,
    /// Frames the driver sent.
    to_host: Vec<Vec<u8>>,
    /// MSI-X table entries it has; the entry for configuration changes and
    /// for each queue (NO_VECTOR: none).
    msix_entries: u16,
    config_vector: u16,
    queue_vectors: [u16; 2],
}

impl FakeDevice {
    fn new() -> Self {
        Self {
            mem: TestMem::new(1000),
            status: 0x7f,
            // As QEMU's virtio-net-pci: the event index too.
            offered: feature::VERSION_1 | feature::NET_MAC | feature::RING_EVENT_IDX | 1 << 16,
            feature_select: 0,
            driver_features: 0,
            accept_features: true,
            resets: true,
            selected: 0,
            queues: [Queue { size: 256, ..Default::default() }; 2],
            notifies: [0; 2],
            interrupts: [0; 2],
            from_host: VecDeque::new(),
            to_host: Vec::new(),
            msix_entries: 3,
            config_vector: crate::virtio::NO_VECTOR,
            queue_vectors: [crate::virtio::NO_VECTOR; 2],
        }
    }

    fn rd16(&self, pa: PhysAddr, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(pa, off, &mut b);
        u16::from_le_bytes(b)
    }

    /// The next available descriptor of queue `q`: its id, buffer, length
    /// and flags.
    fn take_avail(&mut self, q: usize) -> Option<(u16, PhysAddr, u32, u16)> {
        self.queues[q].take_avail(&mut self.mem)
    }

    /// Writes a used entry (any id and length: the device may lie), and
    /// interrupts if the driver asked.
    fn put_used(&mut self, q: usize, id: u32, len: u32) {
        if self.queues[q].put_used(&mut self.mem, id, len) {
            self.interrupts[q] += 1;
        }
    }

    /// Puts the host's frames into the receive buffers the driver made
    /// available.
    fn deliver(&mut self) {
        while !self.from_host.is_empty() {
            let Some((id, buf, len, flags)) = self.take_avail(0) else { return };
            assert_eq!(flags, DESC_F_WRITE, "a receive buffer the device may not write");
            let f = self.from_host.pop_front().unwrap();
            assert!(NET_HDR_BYTES + f.len() <= len as usize);
            self.mem.write(buf, 0, &[0; NET_HDR_BYTES]);
            self.mem.write(buf, NET_HDR_BYTES, &f);
            self.put_used(0, id.into(), (NET_HDR_BYTES + f.len()) as u32);
        }
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
            CommonCfg::QueueEnable => q.enabled.into(),
            CommonCfg::MsixConfig => self.config_vector.into(),
            CommonCfg::QueueMsixVector => self.queue_vectors[self.selected].into(),
            other => panic!("the driver read {other:?}"),
        }
    }
    fn write(&mut self, reg: CommonCfg, v: u64) {
        let q = &mut self.queues[self.selected];
        match reg {
            CommonCfg::DeviceFeatureSelect => self.feature_select = v,
            CommonCfg::DriverFeatureSelect => self.feature_select = v,
            CommonCfg::DriverFeature => self.driver_features |= v << (32 * self.feature_select),
            CommonCfg::DeviceStatus if v == 0 => self.status = if self.resets { 0 } else { self.status },
            CommonCfg::DeviceStatus => {
                let mut s = v as u8;
                if s & status::FEATURES_OK != 0 && (!self.accept_features || self.driver_features & !self.offered != 0) {
                    s &= !status::FEATURES_OK;
                }
                for q in &mut self.queues {
                    q.event_idx = self.driver_features & feature::RING_EVENT_IDX != 0;
                }
                self.status = s;
            }
            CommonCfg::QueueSelect => self.selected = v as usize,
            CommonCfg::QueueSize => q.size = v as u16,
            CommonCfg::QueueDesc => q.desc = v,
            CommonCfg::QueueDriver => q.avail = v,
            CommonCfg::QueueDevice => q.used = v,
            CommonCfg::QueueEnable => q.enabled = v == 1,
            // As QEMU: an entry beyond the table is refused (NO_VECTOR).
            CommonCfg::MsixConfig => {
                self.config_vector = if v < u64::from(self.msix_entries) { v as u16 } else { crate::virtio::NO_VECTOR }
            }
            CommonCfg::QueueMsixVector => {
                self.queue_vectors[self.selected] = if v < u64::from(self.msix_entries) { v as u16 } else { crate::virtio::NO_VECTOR }
            }
            other => panic!("the driver wrote {other:?}"),
        }
    }
    fn device_config(&mut self, offset: usize) -> u8 {
        MAC[offset]
    }
    fn notify(&mut self, queue: u16, notify_off: u16) {
        assert_eq!(queue, notify_off, "the notify offset the device gave for this queue");
        self.notifies[queue as usize] += 1;
        if queue == 1 {
            while let Some((id, buf, len, flags)) = self.take_avail(1) {
                assert_eq!(flags, 0, "a transmit buffer the device would write");
                let mut f = alloc::vec![0u8; len as usize - NET_HDR_BYTES];
                self.mem.read(buf, NET_HDR_BYTES, &mut f);
                self.to_host.push(f);
                self.put_used(1, id.into(), len);
            }
        }
    }
    fn dma(&mut self) -> &mut TestMem {
        &mut self.mem
    }
}

fn frame(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| n.wrapping_add(i as u8)).collect()
}

#[test]
fn it_starts_with_version_1_and_the_mac_and_offers_every_receive_buffer() {
    let up = VirtioNet::start(FakeDevice::new()).unwrap();
    let d = &up.transport;
    assert_eq!(up.mac, MAC);
    assert_eq!(d.status, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
    assert_eq!(d.driver_features, feature::VERSION_1 | feature::NET_MAC | feature::RING_EVENT_IDX, "only what we use, of what it offers");
    assert!(up.event_idx);
    for q in d.queues {
        assert!(q.enabled && q.size == QUEUE_SIZE);
    }
    assert_eq!(d.rd16(d.queues[0].avail, RING_IDX), QUEUE_SIZE, "every receive buffer offered");
    assert_eq!(d.notifies, [1, 0]);
    // A device offering 100 entries gets 64 (a power of two).
    let mut small = FakeDevice::new();
    small.queues = [Queue { size: 100, ..Default::default() }; 2];
    assert_eq!(VirtioNet::start(small).unwrap().transport.queues[1].size, 64);
    // A device without the event index: none asked for.
    let up = VirtioNet::start(without_event_idx()).unwrap();
    assert_eq!(up.transport.driver_features, feature::VERSION_1 | feature::NET_MAC);
    assert!(!up.event_idx);
}

fn without_event_idx() -> FakeDevice {
    let mut d = FakeDevice::new();
    d.offered &= !feature::RING_EVENT_IDX;
    d
}

#[test]
fn a_device_that_will_not_start_is_refused_not_waited_for() {
    let refuse = |f: fn(&mut FakeDevice)| {
        let mut d = FakeDevice::new();
        f(&mut d);
        VirtioNet::start(d).err()
    };
    assert_eq!(refuse(|d| d.resets = false), Some(VirtioError::ResetTimeout));
    assert_eq!(refuse(|d| d.offered = feature::NET_MAC), Some(VirtioError::NoVersion1));
    assert_eq!(refuse(|d| d.accept_features = false), Some(VirtioError::FeaturesRefused));
    assert_eq!(refuse(|d| d.queues[1].size = 0), Some(VirtioError::QueueMissing(1)));
    assert_eq!(refuse(|d| d.mem.limit = 10), Some(VirtioError::OutOfMemory));
}

#[test]
fn frames_cross_both_ways_through_many_wraps() {
    // With the event index the device, holding plenty of receive buffers,
    // never asks to hear of more: one notification at the start.
    for (d, rx_notifies) in [(without_event_idx(), 1001), (FakeDevice::new(), 1)] {
        let up = frames_cross_both_ways(d);
        assert_eq!(up.transport.notifies, [rx_notifies, 1000], "at most one notification per batch");
        assert_eq!(up.notifies, u64::from(rx_notifies + 1000));
    }
}

fn frames_cross_both_ways(d: FakeDevice) -> VirtioNet<FakeDevice> {
    let mut up = VirtioNet::start(d).unwrap();
    let mut buf = [0u8; MTU_FRAME];
    for round in 0..1000u32 {
        let len = MIN_FRAME + (round as usize * 37) % (MTU_FRAME - MIN_FRAME + 1);
        assert!(up.send(&frame(round as u8, len)));
        up.flush();
        assert_eq!(up.transport.to_host.pop(), Some(frame(round as u8, len)));
        up.transport.from_host.push_back(frame(round as u8 ^ 0x55, len));
        up.transport.from_host.push_back(frame(round as u8 ^ 0xaa, MTU_FRAME));
        up.transport.deliver();
        assert_eq!(up.receive(&mut buf), Some(len));
        assert_eq!(&buf[..len], frame(round as u8 ^ 0x55, len));
        assert_eq!(up.receive(&mut buf), Some(MTU_FRAME));
        assert_eq!(up.receive(&mut buf), None);
        up.notify_rx();
    }
    assert_eq!((up.tx_frames, up.rx_frames, up.dropped), (1000, 2000, 0));
    up
}

/// Used entries naming descriptors out of range or not the device's,
/// lengths beyond the buffer, lengths too short for a header or too long
/// for a frame, and an index far ahead: each costs at most a frame, one
/// receive looks at a bounded number of entries, and the driver keeps
/// working when the device behaves again.
#[test]
fn a_device_that_lies_in_its_used_ring_costs_frames_never_a_panic() {
    let mut up = VirtioNet::start(FakeDevice::new()).unwrap();
    let mut buf = [0u8; MTU_FRAME];
    let d = &mut up.transport;
    let (id, ..) = d.take_avail(0).unwrap();
    let lies = [
        (9999, 60),
        (id.into(), 0),
        (id.into(), 5),
        (id.into(), (NET_HDR_BYTES + MTU_FRAME + 1) as u32),
        (id.into(), 100_000),
        (u32::MAX, 60),
    ];
    for (id, len) in lies {
        d.put_used(0, id, len);
    }
    let mut calls = 0;
    while up.receive(&mut buf).is_some() || calls < lies.len() {
        calls += 1;
        assert!(calls < 100, "receive never ran dry");
    }
    assert!(up.dropped >= lies.len() as u64 - 1, "every lie costs a frame: {}", up.dropped);
    // An index a whole ring ahead: one receive looks at a queue's worth.
    let d = &mut up.transport;
    let used = d.queues[0].used;
    d.queues[0].used_idx = d.queues[0].used_idx.wrapping_add(60_000);
    d.mem.write(used, RING_IDX, &d.queues[0].used_idx.to_le_bytes());
    for _ in 0..10 {
        let _ = up.receive(&mut buf);
    }
    // The transmit side: a used entry for a descriptor never sent, and one
    // with a length beyond its buffer.
    let d = &mut up.transport;
    d.put_used(1, 3, 60);
    assert!(up.send(&frame(1, 60)));
    up.flush();
    let d = &mut up.transport;
    d.put_used(1, 0, 1 << 20);
    for i in 0..300 {
        up.send(&frame(i as u8, 60));
        up.flush();
    }
    assert!(up.transport.to_host.len() >= 2);
    assert!(!up.send(&[0u8; 5]) && !up.send(&alloc::vec![0u8; MTU_FRAME + 1]), "lengths the switch never passes are refused");
}

#[test]
fn with_msix_entries_receive_interrupts_and_transmit_does_not() {
    use crate::virtio::NO_VECTOR;
    let up = VirtioNet::start_with(without_event_idx(), Some(MsixEntries::for_table(3))).unwrap();
    let d = &up.transport;
    assert!(up.interrupts);
    assert_eq!((d.config_vector, d.queue_vectors), (0, [1, 2]));
    assert_eq!(d.rd16(d.queues[0].avail, RING_FLAGS), 0, "receive interrupts on");
    assert_eq!(d.rd16(d.queues[1].avail, RING_FLAGS), AVAIL_F_NO_INTERRUPT, "send reaps its own buffers");
    // With the event index the flags are 0 and `used_event` says it.
    let up = VirtioNet::start_with(FakeDevice::new(), Some(MsixEntries::for_table(3))).unwrap();
    let d = &up.transport;
    assert_eq!((d.rd16(d.queues[0].avail, RING_FLAGS), d.rd16(d.queues[1].avail, RING_FLAGS)), (0, 0));
    assert_eq!(d.rd16(d.queues[0].avail, used_event(QUEUE_SIZE)), 0, "at the first frame");
    assert_eq!(d.rd16(d.queues[1].avail, used_event(QUEUE_SIZE)), u16::MAX, "a whole wrap away");

    // A table of one entry: everything shares it.
    let mut one = FakeDevice::new();
    one.msix_entries = 1;
    let up = VirtioNet::start_with(one, Some(MsixEntries::for_table(1))).unwrap();
    assert!(up.interrupts);
    assert_eq!((up.transport.config_vector, up.transport.queue_vectors), (0, [0, 0]));

    // A device that refuses an entry is polled, with no vector left set.
    let mut refusing = without_event_idx();
    refusing.msix_entries = 2;
    let up = VirtioNet::start_with(refusing, Some(MsixEntries::for_table(3))).unwrap();
    let d = &up.transport;
    assert!(!up.interrupts);
    assert_eq!((d.config_vector, d.queue_vectors), (NO_VECTOR, [NO_VECTOR; 2]));
    assert_eq!(d.rd16(d.queues[0].avail, RING_FLAGS), AVAIL_F_NO_INTERRUPT);

    // Without entries: polled, and the vectors never touched.
    let up = VirtioNet::start(FakeDevice::new()).unwrap();
    assert!(!up.interrupts);
    assert_eq!(up.transport.queue_vectors, [NO_VECTOR; 2]);
}

/// Frames from the host, `n` of them, received until `receive` says none.
fn receive_all(up: &mut VirtioNet<FakeDevice>, n: u8) -> usize {
    let mut buf = [0u8; MTU_FRAME];
    for i in 0..n {
        up.transport.from_host.push_back(frame(i, 60));
    }
    up.transport.deliver();
    let mut got = 0;
    while up.receive(&mut buf).is_some() {
        got += 1;
    }
    up.notify_rx();
    got
}

/// With the event index the device interrupts for the first frame after
/// a poll that emptied the receive queue, not for each, and never for the
/// transmit queue; without it, for every frame.
#[test]
fn with_the_event_index_a_poll_costs_one_interrupt_not_one_per_frame() {
    for (d, per_frame) in [(without_event_idx(), true), (FakeDevice::new(), false)] {
        let mut up = VirtioNet::start_with(d, Some(MsixEntries::for_table(3))).unwrap();
        let mut expected = 0;
        for round in 0..300u32 {
            let n = 1 + (round % 20) as u8;
            assert_eq!(receive_all(&mut up, n), n as usize);
            expected += if per_frame { u32::from(n) } else { 1 };
            assert_eq!(up.transport.interrupts[0], expected, "round {round}");
            for i in 0..n {
                assert!(up.send(&frame(i, 60)));
            }
            up.flush();
        }
        assert_eq!(up.transport.interrupts[1], 0, "send reaps its own buffers");
        assert_eq!(up.rx_frames, (0..300).map(|r| 1 + r % 20).sum::<u64>());
    }

    // A frame while a poll is under way (it stopped before the end, at
    // its batch): no second interrupt; the poll goes on and takes it.
    let mut up = VirtioNet::start_with(FakeDevice::new(), Some(MsixEntries::for_table(3))).unwrap();
    let mut buf = [0u8; MTU_FRAME];
    up.transport.from_host.extend([frame(1, 60), frame(2, 60)]);
    up.transport.deliver();
    assert_eq!(up.receive(&mut buf), Some(60));
    up.transport.from_host.push_back(frame(3, 60));
    up.transport.deliver();
    assert_eq!(up.transport.interrupts[0], 1);
    assert_eq!((up.receive(&mut buf), up.receive(&mut buf), up.receive(&mut buf)), (Some(60), Some(60), None));
    // Emptied: the next frame interrupts.
    up.transport.from_host.push_back(frame(4, 60));
    up.transport.deliver();
    assert_eq!(up.transport.interrupts[0], 2);

    // Polled (no MSI-X): the device is never asked to interrupt, through
    // a wrap of the indexes (82,500 frames each way).
    let mut up = VirtioNet::start(FakeDevice::new()).unwrap();
    for round in 0..5000u32 {
        let n = 1 + (round % 32) as u8;
        assert_eq!(receive_all(&mut up, n), n as usize);
        for i in 0..n {
            assert!(up.send(&frame(i, 60)));
        }
        up.flush();
    }
    assert_eq!(up.transport.interrupts, [0, 0]);
}

/// With the event index a batch of sent frames is one notification, and
/// only if the device's `avail_event` asks for it (a device still working
/// through the queue does not need one).
#[test]
fn with_the_event_index_a_batch_is_one_notification_and_only_when_asked() {
    let mut up = VirtioNet::start(FakeDevice::new()).unwrap();
    let tx_avail_event = |up: &mut VirtioNet<FakeDevice>, at: u16| {
        let used = up.transport.queues[1].used;
        up.transport.mem.write(used, avail_event(QUEUE_SIZE), &at.to_le_bytes());
    };
    for i in 0..20 {
        assert!(up.send(&frame(i, 60)));
    }
    up.flush();
    let d = &up.transport;
    assert_eq!((d.rd16(d.queues[1].avail, RING_IDX), d.notifies[1], d.to_host.len()), (20, 1, 20));
    // The device says it will look again at index 30: 5 frames are no
    // reason to tell it, 10 more are.
    tx_avail_event(&mut up, 30);
    for i in 0..5 {
        assert!(up.send(&frame(i, 60)));
    }
    up.flush();
    assert_eq!((up.transport.notifies[1], up.transport.to_host.len()), (1, 20));
    for i in 0..10 {
        assert!(up.send(&frame(i, 60)));
    }
    up.flush();
    assert_eq!((up.transport.notifies[1], up.transport.to_host.len()), (2, 35));
    // A flush with nothing sent tells it nothing.
    up.flush();
    assert_eq!(up.transport.notifies[1], 2);
    assert_eq!(up.notifies, 3, "the receive queue's one at the start, and two");
}
