//! The uplink's second driver: Intel 82574L (QEMU's `-device e1000e`),
//! the switch's port to the host, over a [`Registers`] window.
//!
//! Legacy descriptors (82574 datasheet §7.1.4, §7.2.10): one receive and
//! one transmit ring of [`RING`] 16-byte descriptors, each ring in one
//! page, each descriptor owning a [`BUFFER_BYTES`] buffer (two per page),
//! all allocated once at start: a frame is copied into or out of a buffer,
//! never allocated. The receiver is promiscuous, as QEMU's virtio-net
//! is: the host's frames are addressed to the guests behind the switch.
//! The device is polled like virtio-net (by CPU 0), with
//! every interrupt cause masked; [`E1000e::enable_interrupts`] and
//! [`E1000e::take_interrupt_causes`] are there for interrupt delivery
//! (MSI-X) when it comes.
//!
//! Rules:
//! - The register window and DMA memory are the [`Registers`]'; this
//!   file holds the device's logic and no address of its own. The x86 PCI
//!   side is `arch/x86_64/e1000e_pci.rs`.
//! - The device is not trusted to be well-behaved: a descriptor it wrote
//!   is copied out of shared memory once and then checked; its length
//!   must fit the buffer and a frame's bounds, or the frame is lost
//!   (counted in `dropped`) and its buffer given back; a frame spread over
//!   several descriptors or flagged with a receive error is dropped the
//!   same way; buffer addresses are never read back from the ring; one
//!   receive looks at most at a ring's worth of descriptors; the reset
//!   and EEPROM handshakes wait a bounded time. Nothing the device does
//!   panics.
//! - Called under the back end's uplink lock, the last but the capture in
//!   its order (`net::backend`).
//!
//! Rings: the device owns the descriptors from its head (RDH/TDH) up to,
//! not including, the tail (RDT/TDT) we write. Receive: every descriptor
//! but one is the device's; the one before `rx_next` is the gap, and
//! giving a buffer back moves the tail onto it. Transmit: `tx_clean` up
//! to `tx_next` are in flight, at most `RING - 1`; a descriptor is done
//! when the device has set its DD bit (we ask for it with RS).

use super::backend::UplinkDevice;
use crate::mm::{FRAME_SIZE, PhysAddr, PhysMem};
use abi::ring::{MIN_FRAME, MTU_FRAME};
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

/// Intel's PCI vendor id and the 82574L's device id.
pub const INTEL_VENDOR: u16 = 0x8086;
pub const E1000E_DEVICES: [u16; 1] = [0x10d3];

/// Descriptors per ring: 256 × 16 bytes, one page.
pub const RING: u16 = 256;
/// Bytes of each descriptor's buffer (RCTL.BSIZE 2048).
pub const BUFFER_BYTES: usize = 2048;
const BUFFERS_PER_PAGE: usize = FRAME_SIZE as usize / BUFFER_BYTES;

/// Polls of CTRL (reset) and EERD (EEPROM read) before giving up.
const POLLS: u32 = 1_000_000;

/// Register offsets in BAR0 (82574 datasheet §10.2; QEMU `e1000_regs.h`).
pub mod reg {
    pub const CTRL: u32 = 0x0000;
    pub const STATUS: u32 = 0x0008;
    pub const EERD: u32 = 0x0014;
    /// Interrupt cause read (clears on read, or by writing ones).
    pub const ICR: u32 = 0x00c0;
    /// Interrupt mask set and clear.
    pub const IMS: u32 = 0x00d0;
    pub const IMC: u32 = 0x00d8;
    /// Extended interrupt auto-clear: these causes clear once their
    /// MSI-X message is sent.
    pub const EIAC: u32 = 0x00dc;
    /// Interrupt vector allocation: which MSI-X entry each cause raises.
    pub const IVAR: u32 = 0x00e4;
    pub const RCTL: u32 = 0x0100;
    pub const TCTL: u32 = 0x0400;
    pub const TIPG: u32 = 0x0410;
    pub const RDBAL: u32 = 0x2800;
    pub const RDBAH: u32 = 0x2804;
    pub const RDLEN: u32 = 0x2808;
    pub const RDH: u32 = 0x2810;
    pub const RDT: u32 = 0x2818;
    pub const TDBAL: u32 = 0x3800;
    pub const TDBAH: u32 = 0x3804;
    pub const TDLEN: u32 = 0x3808;
    pub const TDH: u32 = 0x3810;
    pub const TDT: u32 = 0x3818;
    /// Receive checksum offload control.
    pub const RXCSUM: u32 = 0x5000;
    /// The multicast table: 128 words.
    pub const MTA: u32 = 0x5200;
    pub const MTA_WORDS: u32 = 128;
    /// Receive address 0, low and high.
    pub const RAL0: u32 = 0x5400;
    pub const RAH0: u32 = 0x5404;
}

/// CTRL bits.
pub mod ctrl {
    /// Set link up.
    pub const SLU: u32 = 1 << 6;
    /// Software reset (self-clearing).
    pub const RST: u32 = 1 << 26;
}

/// RCTL bits.
pub mod rctl {
    pub const EN: u32 = 1 << 1;
    /// Unicast and multicast promiscuous: the uplink is a switch port, and
    /// the host's frames are for the guests' MACs, not the NIC's.
    pub const UPE: u32 = 1 << 3;
    pub const MPE: u32 = 1 << 4;
    /// Accept broadcast.
    pub const BAM: u32 = 1 << 15;
    /// BSIZE (bits 16-17) and BSEX (bit 25) clear: 2048-byte buffers.
    pub const BSIZE_MASK: u32 = 3 << 16 | 1 << 25;
    /// Strip the Ethernet CRC.
    pub const SECRC: u32 = 1 << 26;
}

/// TCTL bits and fields.
pub mod tctl {
    pub const EN: u32 = 1 << 1;
    /// Pad short packets.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold (15, the datasheet's value).
    pub const CT: u32 = 0x0f << 4;
    /// Collision distance for full duplex (63 byte times).
    pub const COLD: u32 = 0x3f << 12;
}

/// TIPG for copper (IPGT 8, IPGR1 8, IPGR2 6; the datasheet's and QEMU's).
pub const TIPG_COPPER: u32 = 8 | 8 << 10 | 6 << 20;

/// EERD fields (82574: address from bit 2).
pub mod eerd {
    pub const START: u32 = 1;
    pub const DONE: u32 = 1 << 1;
    pub const ADDR_SHIFT: u32 = 2;
    pub const DATA_SHIFT: u32 = 16;
    /// EEPROM words 0-2 hold the MAC address.
    pub const MAC_WORDS: u32 = 3;
}

/// RAH0's address-valid bit.
pub const RAH_AV: u32 = 1 << 31;

/// Interrupt causes (ICR, IMS, IMC bits).
pub mod icr {
    /// A transmit descriptor written back.
    pub const TXDW: u32 = 1 << 0;
    /// Link status change.
    pub const LSC: u32 = 1 << 2;
    /// Receive descriptors below the minimum threshold.
    pub const RXDMT0: u32 = 1 << 4;
    /// Receiver overrun (no descriptor for a frame).
    pub const RXO: u32 = 1 << 6;
    /// Receive timer: a frame arrived.
    pub const RXT0: u32 = 1 << 7;
    /// With MSI-X (IVAR): receive queue 0, transmit queue 0, other.
    pub const RXQ0: u32 = 1 << 20;
    pub const TXQ0: u32 = 1 << 22;
    pub const OTHER: u32 = 1 << 24;
    /// Every cause: what IMC masks at start.
    pub const ALL: u32 = u32::MAX;
    /// The causes the uplink will want when interrupts come: a frame in,
    /// the receive ring running dry or overrun, a transmit done, the link.
    pub const UPLINK: u32 = RXT0 | RXDMT0 | RXO | TXDW | LSC;
}

/// The legacy descriptors' layout (16 bytes, little-endian).
pub mod desc {
    use core::ops::Range;
    pub const BYTES: usize = 16;
    /// Buffer address (both kinds).
    pub const ADDR: Range<usize> = 0..8;
    /// Length: bytes written (RX) or to send (TX).
    pub const LEN: Range<usize> = 8..10;
    /// RX: status and errors bytes.
    pub const RX_STATUS: usize = 12;
    pub const RX_ERRORS: usize = 13;
    /// TX: command and status bytes.
    pub const TX_CMD: usize = 11;
    pub const TX_STATUS: usize = 12;
    /// Status: descriptor done (both kinds).
    pub const STATUS_DD: u8 = 1 << 0;
    /// RX status: end of packet.
    pub const RX_STATUS_EOP: u8 = 1 << 1;
    /// RX errors that lose the frame: CRC/alignment (CE), symbol (SE),
    /// sequence (SEQ), carrier extension (CXE), RX data error (RXE). The
    /// checksum-offload bits (IPE, TCPE) are not frame errors, and the
    /// offload is off anyway.
    pub const RX_ERRORS_FRAME: u8 = 0x01 | 0x02 | 0x04 | 0x10 | 0x80;
    /// TX command: end of packet, insert FCS, report status (DD).
    pub const TX_CMD_EOP: u8 = 1 << 0;
    pub const TX_CMD_IFCS: u8 = 1 << 1;
    pub const TX_CMD_RS: u8 = 1 << 3;
}

/// The 82574's register window and the memory its rings live in.
pub trait Registers {
    type Dma: PhysMem;
    /// Reads the 32-bit register at byte `offset` of BAR0.
    fn read32(&mut self, offset: u32) -> u32;
    /// Writes the 32-bit register at byte `offset` of BAR0.
    fn write32(&mut self, offset: u32, value: u32);
    /// Memory the device reaches by physical address.
    fn dma(&mut self) -> &mut Self::Dma;
}

/// Why the device could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E1000eError {
    /// The PCI function has no memory BAR0 (the transport's finding).
    NoRegisters,
    /// CTRL.RST did not clear.
    ResetTimeout,
    /// Neither RAL0/RAH0 nor the EEPROM gave a MAC address.
    NoMac,
    /// No memory for the rings and buffers.
    OutOfMemory,
}

impl core::fmt::Display for E1000eError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRegisters => f.write_str("the e1000e has no register window (BAR0)"),
            Self::ResetTimeout => f.write_str("the e1000e did not reset"),
            Self::NoMac => f.write_str("the e1000e has no MAC address"),
            Self::OutOfMemory => f.write_str("out of memory for e1000e rings"),
        }
    }
}

/// One descriptor ring: its page and its buffers' pages.
struct Ring {
    desc: PhysAddr,
    pages: Vec<PhysAddr>,
}

impl Ring {
    fn new(mem: &mut impl PhysMem) -> Option<Self> {
        let desc = mem.alloc()?;
        let mut pages = Vec::with_capacity(RING as usize / BUFFERS_PER_PAGE);
        for _ in 0..RING as usize / BUFFERS_PER_PAGE {
            pages.push(mem.alloc()?);
        }
        Some(Self { desc, pages })
    }

    /// Descriptor `i`'s buffer: its page and offset in it.
    fn buffer(&self, i: u16) -> (PhysAddr, usize) {
        let i = i as usize;
        (self.pages[i / BUFFERS_PER_PAGE], i % BUFFERS_PER_PAGE * BUFFER_BYTES)
    }

    /// Copies descriptor `i` out of shared memory (once).
    fn read(&self, mem: &impl PhysMem, i: u16) -> [u8; desc::BYTES] {
        let mut d = [0u8; desc::BYTES];
        mem.read(self.desc, desc::BYTES * i as usize, &mut d);
        d
    }

    /// Writes descriptor `i`: our buffer's address, `len`, `cmd` (TX), and
    /// a clear status.
    fn write(&self, mem: &mut impl PhysMem, i: u16, len: u16, cmd: u8) {
        let (page, off) = self.buffer(i);
        let mut d = [0u8; desc::BYTES];
        d[desc::ADDR].copy_from_slice(&(page + off as u64).to_le_bytes());
        d[desc::LEN].copy_from_slice(&len.to_le_bytes());
        d[desc::TX_CMD] = cmd;
        mem.write(self.desc, desc::BYTES * i as usize, &d);
    }

    fn free(self, mem: &mut impl PhysMem) {
        mem.free(self.desc);
        for p in self.pages {
            mem.free(p);
        }
    }
}

fn next(i: u16) -> u16 {
    (i + 1) % RING
}

/// A started 82574L.
pub struct E1000e<R> {
    regs: R,
    rx: Ring,
    tx: Ring,
    /// The next receive descriptor the device will complete.
    rx_next: u16,
    /// Inside a frame spread over several descriptors (being dropped).
    rx_discarding: bool,
    /// The next transmit descriptor to fill.
    tx_next: u16,
    /// The tail last written to TDT (`flush`).
    tx_tail: u16,
    /// The oldest transmit descriptor handed to the device.
    tx_clean: u16,
    pub mac: [u8; 6],
    /// Frames received from and sent to the host.
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames lost: no room to send, a bad length from either side, or a
    /// receive error, a spread frame or a bad length from the device.
    pub dropped: u64,
    /// Tail writes (TDT and RDT) telling the device of new descriptors.
    pub notifies: u64,
    /// Receive buffers given back since the device was last told.
    rx_returned: bool,
    /// The causes routed to MSI-X, which the device masks each time it
    /// sends their message (EIAC without CTRL_EXT.IAME) and
    /// `rearm_interrupt` unmasks.
    msix_causes: u32,
}

impl<R: Registers> E1000e<R> {
    /// Resets and starts the device behind `regs`: interrupts masked, the
    /// MAC read, link up, both rings set up and receive and transmit on.
    pub fn start(mut regs: R) -> Result<Self, E1000eError> {
        use reg::*;
        regs.write32(IMC, icr::ALL);
        let c = regs.read32(CTRL);
        regs.write32(CTRL, c | ctrl::RST);
        if !(0..POLLS).any(|_| regs.read32(CTRL) & ctrl::RST == 0) {
            return Err(E1000eError::ResetTimeout);
        }
        // The reset unmasks nothing, but say so again, and drop any cause
        // pending from before it.
        regs.write32(IMC, icr::ALL);
        let _ = regs.read32(ICR);
        let mac = read_mac(&mut regs).ok_or(E1000eError::NoMac)?;
        let c = regs.read32(CTRL);
        regs.write32(CTRL, c | ctrl::SLU);

        let mem = regs.dma();
        let rx = Ring::new(mem).ok_or(E1000eError::OutOfMemory)?;
        let Some(tx) = Ring::new(mem) else {
            rx.free(mem);
            return Err(E1000eError::OutOfMemory);
        };
        for i in 0..RING {
            rx.write(mem, i, 0, 0);
            tx.write(mem, i, 0, 0);
        }
        let ring_bytes = RING as u32 * desc::BYTES as u32;
        for (base, rings) in [(RDBAL, &rx), (TDBAL, &tx)] {
            // BAL, BAH, LEN, then head and tail: consecutive for both.
            regs.write32(base, rings.desc as u32);
            regs.write32(base + (RDBAH - RDBAL), (rings.desc >> 32) as u32);
            regs.write32(base + (RDLEN - RDBAL), ring_bytes);
            regs.write32(base + (RDH - RDBAL), 0);
            regs.write32(base + (RDT - RDBAL), 0);
        }
        // Promiscuous (RCTL below), so no multicast table; no receive
        // checksum offload.
        for w in 0..MTA_WORDS {
            regs.write32(MTA + 4 * w, 0);
        }
        regs.write32(RXCSUM, 0);
        regs.write32(TIPG, TIPG_COPPER);
        regs.write32(TCTL, tctl::EN | tctl::PSP | tctl::CT | tctl::COLD);
        let r = regs.read32(RCTL) & !rctl::BSIZE_MASK;
        regs.write32(RCTL, r | rctl::EN | rctl::UPE | rctl::MPE | rctl::BAM | rctl::SECRC);
        // Every receive descriptor but the gap before descriptor 0.
        regs.write32(RDT, u32::from(RING - 1));
        Ok(Self {
            regs,
            rx,
            tx,
            rx_next: 0,
            rx_discarding: false,
            tx_next: 0,
            tx_tail: 0,
            tx_clean: 0,
            mac,
            rx_frames: 0,
            tx_frames: 0,
            dropped: 0,
            notifies: 0,
            rx_returned: false,
            msix_causes: 0,
        })
    }

    /// The register window (the host tests' fake device).
    pub fn regs(&mut self) -> &mut R {
        &mut self.regs
    }

    /// Unmasks interrupt causes (`icr::*`): for when the device's
    /// interrupts are delivered (MSI-X). Nothing calls it yet.
    pub fn enable_interrupts(&mut self, causes: u32) {
        self.regs.write32(reg::IMS, causes);
    }

    /// Routes the receive queue's interrupt to MSI-X entry `entry` (IVAR)
    /// and unmasks it. The cause clears itself once its message is sent
    /// (EIAC), so no read of ICR is needed between two, and masks itself
    /// too: [`UplinkDevice::rearm_interrupt`] unmasks it once a poll has
    /// emptied the ring (a frame that came meanwhile fires at once).
    /// Transmit completions raise nothing: `send` reclaims finished
    /// descriptors.
    pub fn route_rx_to_msix(&mut self, entry: u8) {
        const VALID: u32 = 1 << 3;
        self.regs.write32(reg::IVAR, u32::from(entry & 7) | VALID);
        self.regs.write32(reg::EIAC, icr::RXQ0);
        self.msix_causes = icr::RXQ0;
        self.enable_interrupts(icr::RXQ0);
    }

    /// Masks interrupt causes again.
    pub fn disable_interrupts(&mut self, causes: u32) {
        self.regs.write32(reg::IMC, causes);
    }

    /// The interrupt causes raised since the last call, acknowledged (an
    /// interrupt handler's first step).
    pub fn take_interrupt_causes(&mut self) -> u32 {
        let causes = self.regs.read32(reg::ICR);
        if causes != 0 {
            // ICR clears on read only while an interrupt is asserted;
            // writing the ones clears them in every case.
            self.regs.write32(reg::ICR, causes);
        }
        causes
    }

    /// Transmit descriptors handed to the device and not yet done.
    fn tx_in_flight(&self) -> u16 {
        (self.tx_next + RING - self.tx_clean) % RING
    }

    /// Takes back the transmit descriptors the device is done with.
    fn reclaim_tx(&mut self) {
        let mem = self.regs.dma();
        while self.tx_clean != self.tx_next {
            let mut status = [0u8];
            mem.read(self.tx.desc, desc::BYTES * self.tx_clean as usize + desc::TX_STATUS, &mut status);
            if status[0] & desc::STATUS_DD == 0 {
                break;
            }
            self.tx_clean = next(self.tx_clean);
        }
    }

    /// Sends one frame to the host; returns false if the ring is full or
    /// the frame's length is out of bounds (dropped).
    /// Whether [`Self::send`] would find a free transmit descriptor now.
    pub fn has_room(&mut self) -> bool {
        self.reclaim_tx();
        self.tx_in_flight() < RING - 1
    }

    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.reclaim_tx();
        if !(MIN_FRAME..=MTU_FRAME).contains(&frame.len()) || self.tx_in_flight() == RING - 1 {
            self.dropped += 1;
            return false;
        }
        let i = self.tx_next;
        let (page, off) = self.tx.buffer(i);
        let mem = self.regs.dma();
        mem.write(page, off, frame);
        let cmd = desc::TX_CMD_EOP | desc::TX_CMD_IFCS | desc::TX_CMD_RS;
        self.tx.write(mem, i, frame.len() as u16, cmd);
        self.tx_next = next(i);
        self.tx_frames += 1;
        true
    }

    /// Hands the device the descriptors [`Self::send`] filled since the
    /// last call (one TDT write per batch: each is an exit in a VM).
    pub fn flush(&mut self) {
        if self.tx_tail != self.tx_next {
            // The descriptors before the tail that publishes them.
            fence(Ordering::SeqCst);
            self.regs.write32(reg::TDT, self.tx_next.into());
            self.tx_tail = self.tx_next;
            self.notifies += 1;
        }
    }

    /// Copies the next frame the host sent into `buf` and gives its buffer
    /// back to the device (announced by [`Self::notify_rx`]); returns its
    /// length, or `None` when none is waiting. Frames the device flags,
    /// spreads over several descriptors or gives a bad length are skipped
    /// and counted; at most a ring's worth of descriptors is looked at.
    pub fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        for _ in 0..RING {
            let i = self.rx_next;
            let mem = self.regs.dma();
            let mut status = [0u8];
            mem.read(self.rx.desc, desc::BYTES * i as usize + desc::RX_STATUS, &mut status);
            if status[0] & desc::STATUS_DD == 0 {
                return None;
            }
            // The device writes the descriptor's other fields before DD:
            // copy the whole descriptor after seeing DD, and decide on that
            // copy alone.
            fence(Ordering::Acquire);
            let d = self.rx.read(mem, i);
            let (status, errors) = (d[desc::RX_STATUS], d[desc::RX_ERRORS]);
            let len = u16::from_le_bytes([d[desc::LEN.start], d[desc::LEN.start + 1]]) as usize;
            let eop = status & desc::RX_STATUS_EOP != 0;
            // A descriptor without EOP starts (or continues) a frame
            // spread over several: dropped at the descriptor that ends it.
            let spread = core::mem::replace(&mut self.rx_discarding, !eop);
            let good = status & desc::STATUS_DD != 0
                && eop
                && !spread
                && errors & desc::RX_ERRORS_FRAME == 0
                && (MIN_FRAME..=MTU_FRAME).contains(&len);
            if good {
                let (page, off) = self.rx.buffer(i);
                mem.read(page, off, &mut buf[..len]);
                self.rx_frames += 1;
            } else if eop {
                // A frame ends here: count it once, however many
                // descriptors it took.
                self.dropped += 1;
            }
            self.rx.write(mem, i, 0, 0);
            self.rx_next = next(i);
            self.rx_returned = true;
            if good {
                return Some(len);
            }
        }
        None
    }

    /// Tells the device about the buffers [`Self::receive`] gave back
    /// (once per batch, not per frame: each register write is an exit).
    pub fn notify_rx(&mut self) {
        if core::mem::take(&mut self.rx_returned) {
            fence(Ordering::SeqCst);
            // The tail goes onto the gap: the descriptor before `rx_next`.
            self.regs.write32(reg::RDT, ((self.rx_next + RING - 1) % RING).into());
            self.notifies += 1;
        }
    }
}

/// The MAC address: RAL0/RAH0 if valid (QEMU fills them at reset), else
/// EEPROM words 0-2.
fn read_mac(regs: &mut impl Registers) -> Option<[u8; 6]> {
    let (lo, hi) = (regs.read32(reg::RAL0), regs.read32(reg::RAH0));
    let mut mac = [0u8; 6];
    mac[..4].copy_from_slice(&lo.to_le_bytes());
    mac[4..].copy_from_slice(&hi.to_le_bytes()[..2]);
    if hi & RAH_AV != 0 && mac != [0; 6] {
        return Some(mac);
    }
    for w in 0..eerd::MAC_WORDS {
        regs.write32(reg::EERD, w << eerd::ADDR_SHIFT | eerd::START);
        let v = (0..POLLS).map(|_| regs.read32(reg::EERD)).find(|v| v & eerd::DONE != 0)?;
        let word = ((v >> eerd::DATA_SHIFT) as u16).to_le_bytes();
        mac[2 * w as usize..2 * w as usize + 2].copy_from_slice(&word);
    }
    if mac == [0; 6] || mac[0] & 1 != 0 {
        return None;
    }
    // Receive our own unicast address.
    regs.write32(reg::RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
    regs.write32(reg::RAH0, u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV);
    Some(mac)
}

impl<R: Registers + Send> UplinkDevice for E1000e<R> {
    fn send(&mut self, frame: &[u8]) -> bool {
        E1000e::send(self, frame)
    }
    fn has_room(&mut self) -> bool {
        E1000e::has_room(self)
    }
    fn flush(&mut self) {
        E1000e::flush(self)
    }
    fn receive(&mut self, buf: &mut [u8; MTU_FRAME]) -> Option<usize> {
        E1000e::receive(self, buf)
    }
    fn notify_rx(&mut self) {
        E1000e::notify_rx(self)
    }
    fn rearm_interrupt(&mut self) {
        if self.msix_causes != 0 {
            self.enable_interrupts(self.msix_causes);
        }
    }
    fn notifies(&self) -> u64 {
        self.notifies
    }
}

#[cfg(test)]
mod tests;
