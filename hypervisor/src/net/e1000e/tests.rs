//! The driver against a fake 82574 over simulated memory: the reset and
//! bring-up sequence, frames both ways through the descriptor rings and
//! round them many times, a full transmit ring, and a device that lies in
//! the descriptors it writes back.

use super::*;
use crate::mm::testmem::TestMem;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x57];

/// An 82574 as the datasheet (and QEMU) has it: a register file, the
/// legacy rings over the driver's memory, and the host's side of the wire.
struct FakeDevice {
    mem: TestMem,
    regs: BTreeMap<u32, u32>,
    /// Every register write, in order.
    writes: Vec<(u32, u32)>,
    /// RAL0/RAH0 hold the MAC after a reset (QEMU's do); else only the
    /// EEPROM has it.
    mac_in_ral: bool,
    /// CTRL.RST never clears.
    stuck_in_reset: bool,
    /// Transmit descriptors are left alone (a busy wire).
    tx_paused: bool,
    /// Frames the host sent, not yet given to the driver.
    from_host: VecDeque<Vec<u8>>,
    /// Frames the driver sent.
    to_host: Vec<Vec<u8>>,
}

fn le16(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

impl FakeDevice {
    fn new() -> Self {
        let mut d = Self {
            mem: TestMem::new(1000),
            regs: BTreeMap::new(),
            writes: Vec::new(),
            mac_in_ral: true,
            stuck_in_reset: false,
            tx_paused: false,
            from_host: VecDeque::new(),
            to_host: Vec::new(),
        };
        // Power-on state: something other than what the driver wants, so
        // the test sees it changed.
        d.regs.insert(reg::RCTL, 3 << 16);
        d.regs.insert(reg::IMS, icr::RXT0);
        d.regs.insert(reg::ICR, icr::LSC);
        d
    }

    fn reg(&self, offset: u32) -> u32 {
        self.regs.get(&offset).copied().unwrap_or(0)
    }

    /// What a software reset does: registers to their defaults (the
    /// receive address from the EEPROM), the link up.
    fn reset(&mut self) {
        self.regs.clear();
        self.regs.insert(reg::STATUS, 1 << 1);
        self.regs.insert(reg::TIPG, TIPG_COPPER);
        if self.mac_in_ral {
            self.regs.insert(reg::RAL0, u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
            self.regs.insert(reg::RAH0, u32::from(u16::from_le_bytes([MAC[4], MAC[5]])) | RAH_AV);
        }
    }

    fn ring(&self, bal: u32) -> PhysAddr {
        u64::from(self.reg(bal)) | u64::from(self.reg(bal + 4)) << 32
    }

    fn descriptors(&self, len: u32) -> u32 {
        self.reg(len) / desc::BYTES as u32
    }

    fn read_desc(&self, base: PhysAddr, i: u32) -> [u8; 16] {
        let mut d = [0u8; 16];
        self.mem.read(base, 16 * i as usize, &mut d);
        d
    }

    /// Reads `len` bytes at physical `addr` (within one page).
    fn read_phys(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read(addr & !(FRAME_SIZE - 1), (addr % FRAME_SIZE) as usize, &mut v);
        v
    }

    /// Sends every transmit descriptor from TDH up to TDT.
    fn transmit(&mut self) {
        if self.tx_paused || self.reg(reg::TCTL) & tctl::EN == 0 {
            return;
        }
        let (base, n) = (self.ring(reg::TDBAL), self.descriptors(reg::TDLEN));
        while self.reg(reg::TDH) != self.reg(reg::TDT) {
            let h = self.reg(reg::TDH);
            let mut d = self.read_desc(base, h);
            let addr = u64::from_le_bytes(d[desc::ADDR].try_into().unwrap());
            let len = le16(&d, desc::LEN.start) as usize;
            assert_eq!(d[desc::TX_CMD] & desc::TX_CMD_EOP, desc::TX_CMD_EOP, "one descriptor per frame");
            assert!(len <= BUFFER_BYTES, "a transmit length beyond the buffer");
            self.to_host.push(self.read_phys(addr, len));
            if d[desc::TX_CMD] & desc::TX_CMD_RS != 0 {
                d[desc::TX_STATUS] |= desc::STATUS_DD;
                self.mem.write(base, 16 * h as usize, &d);
            }
            self.regs.insert(reg::TDH, (h + 1) % n);
            self.regs.insert(reg::ICR, self.reg(reg::ICR) | icr::TXDW);
        }
    }

    /// Writes back the receive descriptor at RDH as the device would
    /// (any length, status and errors: the device may lie), after copying
    /// `data` into its buffer. False if the driver gave no descriptor.
    fn put_rx(&mut self, data: &[u8], len: u16, status: u8, errors: u8) -> bool {
        let (base, n) = (self.ring(reg::RDBAL), self.descriptors(reg::RDLEN));
        let h = self.reg(reg::RDH);
        if self.reg(reg::RCTL) & rctl::EN == 0 || h == self.reg(reg::RDT) {
            return false;
        }
        let mut d = self.read_desc(base, h);
        assert_eq!(d[desc::RX_STATUS], 0, "a receive descriptor given back with its status");
        let addr = u64::from_le_bytes(d[desc::ADDR].try_into().unwrap());
        let room = data.len().min(BUFFER_BYTES);
        self.mem.write(addr & !(FRAME_SIZE - 1), (addr % FRAME_SIZE) as usize, &data[..room]);
        d[desc::LEN].copy_from_slice(&len.to_le_bytes());
        d[desc::RX_STATUS] = status;
        d[desc::RX_ERRORS] = errors;
        self.mem.write(base, 16 * h as usize, &d);
        self.regs.insert(reg::RDH, (h + 1) % n);
        self.regs.insert(reg::ICR, self.reg(reg::ICR) | icr::RXT0);
        true
    }

    /// Puts the host's frames into the receive descriptors the driver
    /// gave, one descriptor each.
    fn deliver(&mut self) {
        while let Some(f) = self.from_host.front().cloned() {
            if !self.put_rx(&f, f.len() as u16, desc::STATUS_DD | desc::RX_STATUS_EOP, 0) {
                return;
            }
            self.from_host.pop_front();
        }
    }

    fn writes_to(&self, offset: u32) -> usize {
        self.writes.iter().filter(|(o, _)| *o == offset).count()
    }
}

impl Registers for FakeDevice {
    type Dma = TestMem;
    fn read32(&mut self, offset: u32) -> u32 {
        assert_eq!(offset % 4, 0);
        match offset {
            reg::ICR => self.regs.remove(&reg::ICR).unwrap_or(0),
            _ => self.reg(offset),
        }
    }
    fn write32(&mut self, offset: u32, v: u32) {
        assert_eq!(offset % 4, 0);
        self.writes.push((offset, v));
        match offset {
            reg::CTRL if v & ctrl::RST != 0 => {
                self.reset();
                self.regs.insert(reg::CTRL, if self.stuck_in_reset { v } else { v & !ctrl::RST });
            }
            reg::IMS => {
                self.regs.insert(reg::IMS, self.reg(reg::IMS) | v);
            }
            reg::IMC => {
                self.regs.insert(reg::IMS, self.reg(reg::IMS) & !v);
            }
            reg::ICR => {
                self.regs.insert(reg::ICR, self.reg(reg::ICR) & !v);
            }
            reg::EERD => {
                let addr = (v >> eerd::ADDR_SHIFT) as usize;
                let word = if v & eerd::START != 0 && addr < 3 { u16::from_le_bytes([MAC[2 * addr], MAC[2 * addr + 1]]) } else { 0 };
                self.regs.insert(reg::EERD, u32::from(word) << eerd::DATA_SHIFT | eerd::DONE);
            }
            reg::TDT => {
                self.regs.insert(reg::TDT, v);
                self.transmit();
            }
            _ => {
                self.regs.insert(offset, v);
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

fn started() -> E1000e<FakeDevice> {
    E1000e::start(FakeDevice::new()).unwrap()
}

/// Takes every frame waiting, then tells the device once.
fn receive_all(up: &mut E1000e<FakeDevice>) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; MTU_FRAME];
    while let Some(n) = up.receive(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    up.notify_rx();
    got
}

#[test]
fn it_resets_masks_interrupts_and_sets_up_both_rings() {
    let mut up = started();
    assert_eq!(up.mac, MAC);
    let d = up.regs();
    // Interrupts masked before the reset, and again after it; the reset
    // before anything is set up.
    assert_eq!(d.writes[0], (reg::IMC, icr::ALL));
    assert_eq!(d.writes[1].0, reg::CTRL);
    assert_ne!(d.writes[1].1 & ctrl::RST, 0);
    assert_eq!(d.reg(reg::IMS), 0, "every cause masked");
    assert_eq!(d.reg(reg::ICR), 0, "causes from before the reset dropped");
    assert_ne!(d.reg(reg::CTRL) & ctrl::SLU, 0, "link up");
    assert_eq!(d.reg(reg::CTRL) & ctrl::RST, 0);
    for (bal, len, head) in [(reg::RDBAL, reg::RDLEN, reg::RDH), (reg::TDBAL, reg::TDLEN, reg::TDH)] {
        let base = d.ring(bal);
        assert!(base != 0 && base.is_multiple_of(FRAME_SIZE), "a ring in a page of its own");
        assert_eq!(d.reg(len), 4096, "256 descriptors");
        assert_eq!(d.reg(head), 0);
    }
    assert_eq!(d.reg(reg::RDT), u32::from(RING - 1), "every receive descriptor but one to the device");
    assert_eq!(d.reg(reg::TDT), 0, "nothing to send");
    let rctl = d.reg(reg::RCTL);
    let want = rctl::EN | rctl::UPE | rctl::MPE | rctl::BAM | rctl::SECRC;
    assert_eq!(rctl & want, want, "on, promiscuous (frames are for the guests' MACs), CRC stripped");
    assert_eq!(rctl & rctl::BSIZE_MASK, 0, "2048-byte buffers");
    assert_eq!(d.reg(reg::TCTL), tctl::EN | tctl::PSP | tctl::CT | tctl::COLD);
    assert_eq!(d.reg(reg::TIPG), TIPG_COPPER);
    assert_eq!(d.reg(reg::RXCSUM), 0, "no checksum offload");
    // Receive descriptors each point at a buffer of their own, 2 KiB
    // apart, status clear.
    let base = d.ring(reg::RDBAL);
    let mut addrs: Vec<u64> = (0..RING as u32).map(|i| u64::from_le_bytes(d.read_desc(base, i)[desc::ADDR].try_into().unwrap())).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), RING as usize);
    assert!(addrs.iter().all(|a| a.is_multiple_of(BUFFER_BYTES as u64)));
    // Rings and buffers: two descriptor pages, 256 buffer pages.
    assert_eq!(d.mem.live, 2 + 2 * RING as usize / 2);
}

#[test]
fn without_a_mac_in_ral0_it_reads_the_eeprom_and_programs_ral0() {
    let mut dev = FakeDevice::new();
    dev.mac_in_ral = false;
    let mut up = E1000e::start(dev).unwrap();
    assert_eq!(up.mac, MAC);
    let d = up.regs();
    assert_eq!(d.writes_to(reg::EERD), 3);
    assert_eq!(d.reg(reg::RAL0), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
    assert_eq!(d.reg(reg::RAH0), 0x5734 | RAH_AV);
}

#[test]
fn a_device_that_stays_in_reset_is_refused() {
    let mut dev = FakeDevice::new();
    dev.stuck_in_reset = true;
    assert_eq!(E1000e::start(dev).err(), Some(E1000eError::ResetTimeout));
}

#[test]
fn frames_go_both_ways_and_the_tail_moves_once_per_batch() {
    let mut up = started();
    let tail_writes = up.regs().writes_to(reg::TDT);
    assert!(up.send(&frame(1, 60)));
    assert!(up.send(&frame(2, MTU_FRAME)));
    assert!(up.regs().to_host.is_empty(), "not handed over before the flush");
    up.flush();
    up.flush();
    assert_eq!(up.regs().to_host, [frame(1, 60), frame(2, MTU_FRAME)]);
    assert_eq!(up.regs().writes_to(reg::TDT), tail_writes + 1, "one tail write for the batch");
    assert_eq!(up.tx_frames, 2);

    let before = up.regs().writes_to(reg::RDT);
    up.regs().from_host.extend([frame(3, 42), frame(4, MIN_FRAME), frame(5, MTU_FRAME)]);
    up.regs().deliver();
    assert_eq!(receive_all(&mut up), [frame(3, 42), frame(4, MIN_FRAME), frame(5, MTU_FRAME)]);
    assert_eq!(up.rx_frames, 3);
    assert_eq!(up.regs().writes_to(reg::RDT), before + 1, "one tail write for the batch");
    assert_eq!(up.regs().reg(reg::RDT), 2, "the tail on the last buffer given back");
    up.notify_rx();
    assert_eq!(up.regs().writes_to(reg::RDT), before + 1, "nothing given back, nothing told");
    assert_eq!(up.dropped, 0);
    assert_eq!(up.notifies, 2, "the two tail writes since the start, counted");
}

#[test]
fn buffers_go_round_both_rings_many_times() {
    let mut up = started();
    for round in 0..2000u32 {
        let len = MIN_FRAME + (round as usize * 7) % (MTU_FRAME - MIN_FRAME + 1);
        assert!(up.send(&frame(round as u8, len)), "round {round}");
        up.flush();
        let sent = up.regs().to_host.pop().unwrap();
        assert_eq!(sent, frame(round as u8, len));
        // A few frames at a time from the host.
        let n = 1 + round as usize % 5;
        let batch: Vec<Vec<u8>> = (0..n).map(|k| frame((round + k as u32) as u8, len)).collect();
        up.regs().from_host.extend(batch.iter().cloned());
        up.regs().deliver();
        assert!(up.regs().from_host.is_empty(), "round {round}: the device ran out of buffers");
        assert_eq!(receive_all(&mut up), batch, "round {round}");
    }
    assert_eq!(up.dropped, 0);
    assert_eq!(up.tx_frames, 2000);
}

#[test]
fn a_full_transmit_ring_refuses_the_frame_until_the_device_catches_up() {
    let mut up = started();
    up.regs().tx_paused = true;
    for n in 0..RING - 1 {
        assert!(up.send(&frame(n as u8, 100)), "descriptor {n}");
    }
    up.flush();
    assert!(!up.has_room());
    assert!(!up.send(&frame(0, 100)), "the ring is full");
    assert_eq!(up.dropped, 1);
    assert_eq!(up.regs().reg(reg::TDT), u32::from(RING - 1), "the tail never catches the head");
    assert!(up.regs().to_host.is_empty());
    // The device sends them all; their descriptors come back.
    up.regs().tx_paused = false;
    up.regs().transmit();
    assert_eq!(up.regs().to_host.len(), RING as usize - 1);
    assert!(up.has_room());
    for n in 0..RING - 1 {
        assert!(up.send(&frame(n as u8, 100)), "descriptor {n} after the wrap");
        up.flush();
    }
    assert_eq!(up.regs().to_host.len(), 2 * (RING as usize - 1));
    assert_eq!(up.regs().to_host.last().unwrap(), &frame((RING - 2) as u8, 100));
    // Lengths a frame cannot have are never handed to the device.
    assert!(!up.send(&[0u8; MIN_FRAME - 1]));
    assert!(!up.send(&[0u8; MTU_FRAME + 1]));
    assert_eq!(up.dropped, 3);
}

#[test]
fn bad_descriptors_from_the_device_are_dropped_not_trusted() {
    let mut up = started();
    let dd_eop = desc::STATUS_DD | desc::RX_STATUS_EOP;
    let big = vec![0xaau8; BUFFER_BYTES];
    let d = up.regs();
    // A length beyond the buffer, one beyond a frame, one too short, zero.
    assert!(d.put_rx(&big, u16::MAX, dd_eop, 0));
    assert!(d.put_rx(&big, BUFFER_BYTES as u16, dd_eop, 0));
    assert!(d.put_rx(&big, (MTU_FRAME + 1) as u16, dd_eop, 0));
    assert!(d.put_rx(&big, (MIN_FRAME - 1) as u16, dd_eop, 0));
    assert!(d.put_rx(&big, 0, dd_eop, 0));
    // A receive error (CRC).
    assert!(d.put_rx(&frame(9, 60), 60, dd_eop, 0x01));
    // A frame over three descriptors: dropped once, as a whole.
    assert!(d.put_rx(&frame(9, 60), 60, desc::STATUS_DD, 0));
    assert!(d.put_rx(&frame(9, 60), 60, desc::STATUS_DD, 0));
    assert!(d.put_rx(&frame(9, 60), 60, dd_eop, 0));
    // Checksum-offload bits are not frame errors; then a good frame.
    assert!(d.put_rx(&frame(7, 64), 64, dd_eop, 0x60));
    assert!(d.put_rx(&frame(8, 70), 70, dd_eop, 0));
    assert_eq!(receive_all(&mut up), [frame(7, 64), frame(8, 70)]);
    assert_eq!(up.dropped, 7);
    assert_eq!(up.rx_frames, 2);
    // Every buffer went back: the device has all but one descriptor again.
    let d = up.regs();
    assert_eq!(d.reg(reg::RDT), 10);
    assert_eq!(d.reg(reg::RDH), 11);
    d.from_host.push_back(frame(1, 100));
    d.deliver();
    assert_eq!(receive_all(&mut up), [frame(1, 100)]);
}

#[test]
fn a_device_that_marks_every_descriptor_done_costs_one_ring_per_receive() {
    let mut up = started();
    // The device lies: every descriptor done, every length bad.
    let base = up.rx.desc;
    let mem = &mut up.regs().mem;
    for i in 0..RING as usize {
        mem.write(base, 16 * i + desc::RX_STATUS, &[desc::STATUS_DD | desc::RX_STATUS_EOP]);
    }
    let mut buf = [0u8; MTU_FRAME];
    assert_eq!(up.receive(&mut buf), None, "gives up after a ring's worth");
    assert_eq!(up.dropped, RING as u64);
    assert_eq!(up.receive(&mut buf), None, "the buffers given back are clear");
    assert_eq!(up.dropped, RING as u64);
}

#[test]
fn interrupt_causes_can_be_enabled_read_and_acknowledged() {
    let mut up = started();
    assert_eq!(up.take_interrupt_causes(), 0);
    up.enable_interrupts(icr::UPLINK);
    assert_eq!(up.regs().reg(reg::IMS), icr::UPLINK);
    assert!(up.send(&frame(1, 60)));
    up.flush();
    up.regs().from_host.push_back(frame(2, 60));
    up.regs().deliver();
    assert_eq!(up.take_interrupt_causes(), icr::TXDW | icr::RXT0);
    assert_eq!(up.take_interrupt_causes(), 0, "acknowledged");
    up.disable_interrupts(icr::ALL);
    assert_eq!(up.regs().reg(reg::IMS), 0);
}

#[test]
fn msix_routes_the_receive_queue_and_rearm_unmasks_it() {
    let mut up = started();
    // Polled: re-arming touches nothing.
    UplinkDevice::rearm_interrupt(&mut up);
    assert_eq!(up.regs().reg(reg::IMS), 0);
    up.route_rx_to_msix(2);
    assert_eq!(up.regs().reg(reg::IVAR), 2 | 1 << 3, "receive queue 0 to entry 2, valid");
    assert_eq!(up.regs().reg(reg::EIAC), icr::RXQ0, "cleared once its message is sent");
    assert_eq!(up.regs().reg(reg::IMS), icr::RXQ0);
    // The device masks the cause when it sends the message (EIAC without
    // IAME); a poll that emptied the ring unmasks it.
    up.disable_interrupts(icr::RXQ0);
    UplinkDevice::rearm_interrupt(&mut up);
    assert_eq!(up.regs().reg(reg::IMS), icr::RXQ0);
}
