//! A guest that attacks the hypervisor. Its first argument names the attack;
//! each one must get this guest stopped with a reason, and nothing else.
//!
//! | argument      | what it does                                          |
//! |---------------|-------------------------------------------------------|
//! | `pagefault`   | writes to an unmapped address                         |
//! | `kernel-read` | reads the hypervisor's half                           |
//! | `write-text`  | writes to its own read-only text                      |
//! | `hlt`, `cli`, `wrmsr`, `cr3`, `in`, `out`, `lgdt`, `int` | privileged instructions |
//! | `divide`      | divides by zero                                       |
//! | `ud2`         | executes an undefined opcode                          |
//! | `stack`       | overflows its stack                                   |
//! | `bad-pointer` | passes a hypervisor address to `console_write`        |
//! | `wrap-pointer`| passes a range that wraps around to `console_write`   |
//! | `huge-length` | passes an absurd length to `console_write`            |
//! | `bad-hypercall` | calls a hypercall number that does not exist        |
//! | `oom`         | allocates without bound                               |
//! | `panic`       | panics (exits 101)                                    |
//! | `spin`        | spins forever (`loop {}`)                             |
//! | `yield-storm` | yields in a tight loop, forever                       |
//! | `block-storm` | blocks with a deadline in the past in a tight loop    |
//! | `wake-storm MS` | naps 50 µs and computes 500 µs in a loop for MS ms, exits 0 (see `storm.rs`) |
//! | `block-forever` | blocks with no deadline and no event source          |
//! | `ring-lie`    | (needs a vNIC) claims 1000 frames in its TX ring and kicks |
//! | `ring-rewind` | (needs a vNIC) sends two frames, then moves its producer index back |
//! | `ring-bad-length` | (needs a vNIC) sends frames of length 0xffff and 3, then exits 0 |
//! | `nic-flood [SECS]` | (needs a vNIC) sends minimum-size broadcast frames as fast as it can for SECS (3) s, exits 0 |
//! | `kick-storm`  | (needs a vNIC) calls `net_kick` 2,000,000 times, exits 0 |
//! | `console-flood` | prints 1 KiB lines for 3 s, exits 0                  |
//! | `rx-stall SECS` | (needs a vNIC) never consumes its RX ring (lets it fill) and asks its gateway for its MAC (ARP) every 20 ms for SECS seconds, exits 0 |
//! | `hypercall-garbage` | 100,000 valid hypercalls with random arguments and garbage in every other register, then an unknown number |
//! | `discard-text` | asks `discard` to give back its own text             |
//! | `mov-ss-syscall` | `mov ss` then `syscall` (the interrupt-shadow hazard); exits 0 if it returns |
//! | `debug-regs`  | writes DR7 to arm a breakpoint (privileged)           |
//! | `bad-stack`   | points `rsp` at nothing and pushes                    |
//! | `direct-map-write` | writes where the hypervisor maps all RAM (other guests' memory) |
//! | `df-*`, `keep-secret` | exits taken with RFLAGS.DF and AC set, and a victim for them: see `flags.rs` |
//! | `fpu-clobber`, `fpu-unmasked` | hypercalls with every vector register full, changed control words, every FPU exception unmasked and one pending: see `fpu.rs` |
//! | `cow-hog MS KIB` | fills KIB of heap with a pattern, prints `cow-hog: NAME ready`, sleeps MS ms (time to pause and clone it); then, as whoever it is by then (a clone has its own name): one named `*-hog` writes to every page of it and allocates without bound (stopped `out of memory` at its limit); any other checks the pattern, prints `cow-hog: NAME pattern intact` (or `changed`), exits 0 (1) |
//! | `arp-spoof IP SECS` | (needs a vNIC) claims IPv4 address IP with its own MAC for SECS seconds: every 20 ms gratuitous ARP (broadcast), ARP requests for hosts .1 to .9 of its /24 "from" IP (broadcast), ARP replies to every neighbour it has heard (unicast) and a UDP datagram from IP; answers every ARP request for IP at once; counts the frames it receives, and the IPv4 ones addressed to IP (intercepted); exits 0 |
#![no_std]
#![no_main]

extern crate alloc;

mod flags;
mod fpu;
mod storm;

use core::arch::asm;
use libos::println;

libos::main!(main);

fn raw_hypercall(nr: u64, a0: u64, a1: u64) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` only enters the hypervisor; bad arguments are the
    // point of this guest, and they can only get it stopped.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a0, in("rsi") a1,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// This guest's vNIC rings, driven by hand (the libos stack is not
/// running: `main` is synchronous).
struct RawNic {
    mac: [u8; 6],
    ipv4: [u8; 4],
    gateway: [u8; 4],
    slots: u32,
    prod: u32,
    /// Our RX consumer index.
    rx_cons: u32,
}

impl RawNic {
    fn new() -> Self {
        // SAFETY: the shared page is mapped for the guest's life and holds
        // the record, aligned (ABI 9).
        let info: abi::NicInfo =
            unsafe { core::ptr::read_volatile((abi::layout::EVENT_PAGE + abi::layout::EVENT_NIC_OFFSET) as *const abi::NicInfo) };
        if info.magic != abi::NIC_MAGIC {
            println!("{}: no vNIC", libos::name());
            libos::exit(2);
        }
        let m = info.mac;
        Self {
            mac: [m[0], m[1], m[2], m[3], m[4], m[5]],
            ipv4: info.ipv4,
            gateway: info.gateway,
            slots: info.ring_slots,
            prod: 0,
            rx_cons: 0,
        }
    }

    fn index(offset: usize) -> *mut u32 {
        (abi::layout::EVENT_PAGE + abi::layout::NIC_TX_INDICES + offset as u64) as *mut u32
    }

    fn rx_index(offset: usize) -> *mut u32 {
        (abi::layout::EVENT_PAGE + abi::layout::NIC_RX_INDICES + offset as u64) as *mut u32
    }

    /// Copies the next received frame (its first `MTU_FRAME` bytes) into
    /// `buf` and returns its length (0 for a length out of range), or
    /// `None` if none is waiting. Padding entries are passed over.
    fn recv(&mut self, buf: &mut [u8; abi::ring::MTU_FRAME]) -> Option<usize> {
        // SAFETY: the shared page is mapped read-write; aligned u32s.
        let prod = unsafe { core::ptr::read_volatile(Self::rx_index(abi::ring::PROD_OFFSET)) };
        if prod == self.rx_cons {
            return None;
        }
        let pos = self.rx_cons % self.slots;
        let slot = abi::layout::nic_rx_ring(self.slots) + u64::from(pos) * abi::ring::SLOT_SIZE as u64;
        // SAFETY: the slot lies in the RX ring, mapped read-write; the
        // header's fields are checked before the copy.
        let (len, flags) = unsafe { (core::ptr::read_volatile(slot as *const u16), core::ptr::read_volatile((slot + 2) as *const u16)) };
        let (len, span) = if flags & abi::ring::flags::PAD != 0 {
            (0, self.slots - pos)
        } else {
            let len = usize::from(len);
            let ok = (abi::ring::MIN_FRAME..=abi::ring::max_frame(self.slots)).contains(&len) && abi::ring::span(len) <= self.slots - pos;
            if ok { (len, abi::ring::span(len)) } else { (0, 1) }
        };
        let copy = len.min(abi::ring::MTU_FRAME);
        // SAFETY: as above; `copy` bytes after the header lie in the
        // entry's span, inside the ring (checked).
        unsafe { core::ptr::copy_nonoverlapping((slot + abi::ring::HEADER as u64) as *const u8, buf.as_mut_ptr(), copy) };
        self.rx_cons = self.rx_cons.wrapping_add(span);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(Self::rx_index(abi::ring::CONS_OFFSET), self.rx_cons) };
        Some(len)
    }

    /// Sends `f`, first kicking the hypervisor until the ring has room.
    fn send_waiting(&mut self, f: &[u8]) {
        while self.space() == 0 {
            libos::hypercall::net_kick();
        }
        self.send(f);
    }

    fn space(&self) -> u32 {
        // SAFETY: the shared page is mapped read-write; aligned u32.
        let cons = unsafe { core::ptr::read_volatile(Self::index(abi::ring::CONS_OFFSET)) };
        self.slots - self.prod.wrapping_sub(cons).min(self.slots)
    }

    fn send(&mut self, f: &[u8]) {
        self.send_len(f.len() as u16, f);
    }

    /// Writes `f` (at most `MTU_FRAME` bytes: one slot) into the next slot
    /// with length field `len` and publishes it.
    fn send_len(&mut self, len: u16, f: &[u8]) {
        let slot = abi::layout::NIC_TX_RING + u64::from(self.prod % self.slots) * abi::ring::SLOT_SIZE as u64;
        let f = &f[..f.len().min(abi::ring::MTU_FRAME)];
        // SAFETY: the slot lies in the TX ring, mapped read-write; the
        // header and at most MTU_FRAME bytes fit in one slot.
        unsafe {
            core::ptr::write_volatile(slot as *mut u16, len);
            core::ptr::write_volatile((slot + 2) as *mut u16, 0);
            core::ptr::copy_nonoverlapping(f.as_ptr(), (slot + abi::ring::HEADER as u64) as *mut u8, f.len());
        }
        self.set_prod(self.prod.wrapping_add(1));
    }

    fn set_prod(&mut self, prod: u32) {
        self.prod = prod;
        // SAFETY: as in `space`.
        unsafe { core::ptr::write_volatile(Self::index(abi::ring::PROD_OFFSET), prod) };
    }
}

/// An Ethernet frame of `len` bytes from `src` to `dst`.
fn frame(src: [u8; 6], dst: [u8; 6], len: usize) -> alloc::vec::Vec<u8> {
    let mut f = alloc::vec![0u8; len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f
}

/// A broadcast ARP request from `nic` asking who has `target`, padded to
/// the minimum Ethernet frame.
fn arp_request(nic: &RawNic, target: [u8; 4]) -> alloc::vec::Vec<u8> {
    let mut f = frame(nic.mac, [0xff; 6], 60);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6-byte MACs, 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&nic.mac);
    f[28..32].copy_from_slice(&nic.ipv4);
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&target);
    f
}

/// An Ethernet/IPv4 ARP frame from `mac` to `dst`: operation `op` (1
/// request, 2 reply) saying that `spa` is at `mac`, about `tha`/`tpa`.
fn arp_frame(mac: [u8; 6], dst: [u8; 6], op: u16, spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // htype Ethernet, ptype IPv4, hlen 6, plen 4.
    f[14..20].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&spa);
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa);
    f
}

/// An IPv4/UDP frame from `mac` to `dst`, from `src_ip` to `dst_ip` port 9
/// (discard), with a valid IPv4 header checksum and no UDP checksum.
fn udp_frame(mac: [u8; 6], dst: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let payload = b"spoofed";
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    f[14..26].copy_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[26..30].copy_from_slice(&src_ip);
    f[30..34].copy_from_slice(&dst_ip);
    let sum = f[14..34].chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f[34..42].copy_from_slice(&[0x30, 0x39, 0, 9, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    f[42..42 + payload.len()].copy_from_slice(payload);
    f
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut o = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut o {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(o)
}

/// `arp-spoof`: see the table at the top.
fn arp_spoof(victim: [u8; 4], secs: u64) -> i32 {
    const BCAST: [u8; 6] = [0xff; 6];
    const TICK_NS: u64 = 20_000_000;
    let mut nic = RawNic::new();
    let me = nic.mac;
    // Stations heard from (MAC, IPv4), at most 8.
    let mut heard: alloc::vec::Vec<([u8; 6], [u8; 4])> = alloc::vec::Vec::new();
    let (mut arp, mut ipv4, mut received, mut intercepted) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; abi::ring::MTU_FRAME];
    let start = libos::time::Instant::now().as_nanos();
    let end = start + secs * 1_000_000_000;
    let mut next = start;
    loop {
        let now = libos::time::Instant::now().as_nanos();
        if now >= end {
            break;
        }
        if now >= next {
            next = now + TICK_NS;
            nic.send_waiting(&arp_frame(me, BCAST, 2, victim, BCAST, victim));
            nic.send_waiting(&arp_frame(me, BCAST, 1, victim, [0; 6], victim));
            arp += 2;
            // "Who has .n? Tell <victim>": each stack that answers to .n
            // learns <victim> at our MAC (smoltcp learns only from ARP
            // aimed at it).
            for n in 1..=9u8 {
                let tpa = [victim[0], victim[1], victim[2], n];
                if tpa != victim && tpa != nic.ipv4 {
                    nic.send_waiting(&arp_frame(me, BCAST, 1, victim, [0; 6], tpa));
                    arp += 1;
                }
            }
            for &(mac, ip) in &heard {
                nic.send_waiting(&arp_frame(me, mac, 2, victim, mac, ip));
                arp += 1;
            }
            nic.send_waiting(&udp_frame(me, BCAST, victim, [victim[0], victim[1], 255, 255]));
            ipv4 += 1;
            libos::hypercall::net_kick();
        }
        // Clear what woke us (a deadline leaves TIMER set, which would
        // make every later block return at once), then read the ring.
        let woke = libos::hypercall::block(next.min(end));
        libos::hypercall::take_events(woke);
        while let Some(len) = nic.recv(&mut buf) {
            received += 1;
            let f = &buf[..len];
            let (Some(src), Some(ty)) = (f.get(6..12), f.get(12..14)) else { continue };
            let src: [u8; 6] = src.try_into().unwrap_or_default();
            let sender = match ty {
                [0x08, 0x00] => {
                    if f.get(30..34) == Some(&victim[..]) {
                        intercepted += 1;
                    }
                    f.get(26..30)
                }
                [0x08, 0x06] => {
                    let (op, sha, spa, tpa) = (f.get(20..22), f.get(22..28), f.get(28..32), f.get(38..42));
                    if let (Some([0, 1]), Some(sha), Some(spa), Some(tpa)) = (op, sha, spa, tpa)
                        && tpa == victim
                    {
                        // Someone asks for the victim: answer first.
                        let (sha, spa) = (sha.try_into().unwrap_or_default(), spa.try_into().unwrap_or_default());
                        nic.send_waiting(&arp_frame(me, sha, 2, victim, sha, spa));
                        libos::hypercall::net_kick();
                        arp += 1;
                    }
                    spa
                }
                _ => None,
            };
            if let Some(ip) = sender.and_then(|s| <[u8; 4]>::try_from(s).ok())
                && ip != victim
                && ip != [0; 4]
                && src != me
                && heard.len() < 8
                && !heard.contains(&(src, ip))
            {
                heard.push((src, ip));
            }
        }
    }
    libos::hypercall::net_kick();
    let v = victim;
    println!(
        "{}: arp-spoof sent {arp} ARP and {ipv4} IPv4 frames claiming {}.{}.{}.{} in {secs} s, heard {} stations; received {received} frames, {intercepted} IPv4 to {}.{}.{}.{}",
        libos::name(),
        v[0],
        v[1],
        v[2],
        v[3],
        heard.len(),
        v[0],
        v[1],
        v[2],
        v[3]
    );
    0
}

/// See `cow-hog` in the table above: a clone that writes to all it shares
/// with its template (and then some) against one that only reads.
fn cow_hog(ms: u64, kib: usize) -> i32 {
    let pattern = |i: usize| (i / 4096) as u8 ^ 0x5a;
    let mut buf = alloc::vec![0u8; kib * 1024];
    buf.iter_mut().enumerate().for_each(|(i, b)| *b = pattern(i));
    println!("cow-hog: {} ready", libos::name());
    libos::time::sleep(core::time::Duration::from_millis(ms));
    let me = libos::name();
    if me.ends_with("-hog") {
        println!("cow-hog: {me} writes to every page it shares");
        buf.chunks_mut(4096).for_each(|p| p[0] = !p[0]);
        core::hint::black_box(&buf);
        println!("cow-hog: {me} allocates without bound");
        let mut more = alloc::vec::Vec::new();
        loop {
            more.push(alloc::vec![1u8; 64 * 1024]);
        }
    }
    let intact = buf.iter().enumerate().all(|(i, &b)| b == pattern(i));
    println!("cow-hog: {me} pattern {}", if intact { "intact" } else { "changed" });
    if intact { 0 } else { 1 }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let big = [depth; 64];
    core::hint::black_box(&big);
    recurse(depth + 1) + big[3]
}

fn main() -> i32 {
    let attack = libos::args().next().unwrap_or("");
    println!("{}: trying {attack}", libos::name());
    if attack.starts_with("fpu-") {
        return fpu::run(attack);
    }
    if attack.starts_with("df-") || attack == "keep-secret" {
        return flags::run(attack, libos::args().nth(1));
    }
    if attack == "wake-storm" {
        return storm::run(libos::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3_000));
    }
    if attack == "cow-hog" {
        let mut args = libos::args().skip(1).map(|s| s.parse().ok());
        let (Some(Some(ms)), Some(Some(kib))) = (args.next(), args.next()) else {
            println!("usage: cow-hog MS KIB");
            return 2;
        };
        return cow_hog(ms, kib as usize);
    }
    if attack == "arp-spoof" {
        let mut args = libos::args().skip(1);
        let (Some(victim), Some(secs)) = (args.next().and_then(parse_ipv4), args.next().and_then(|s| s.parse().ok())) else {
            println!("usage: arp-spoof IPV4 SECONDS");
            return 2;
        };
        return arp_spoof(victim, secs);
    }
    // SAFETY: each arm deliberately does something a guest must not; the
    // hypervisor stops the guest before it returns. Nothing here can harm
    // anything but this guest.
    unsafe {
        match attack {
            "pagefault" => core::ptr::write_volatile(0x7000_dead_0000 as *mut u64, 1),
            "kernel-read" => {
                core::ptr::read_volatile(0xffff_ffff_8000_0000 as *const u64);
            }
            "write-text" => core::ptr::write_volatile(main as *const () as *mut u8, 0xc3),
            "hlt" => asm!("hlt"),
            "cli" => asm!("cli"),
            "wrmsr" => asm!("wrmsr", in("ecx") 0xc000_0082u32, in("eax") 0, in("edx") 0),
            "cr3" => asm!("mov cr3, {}", in(reg) 0u64),
            "in" => asm!("in al, dx", in("dx") 0x3f8u16, out("al") _),
            "out" => asm!("out dx, al", in("dx") 0xf4u16, in("al") 0u8),
            "lgdt" => asm!("lgdt [{}]", in(reg) 0x1000u64),
            "int" => asm!("int 0x80"),
            "divide" => {
                let zero = core::hint::black_box(0u64);
                asm!("div {}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
            }
            "ud2" => asm!("ud2"),
            "stack" => {
                recurse(0);
            }
            "bad-pointer" => {
                raw_hypercall(abi::Hypercall::ConsoleWrite as u64, 0xffff_ffff_8000_0000, 16);
            }
            "wrap-pointer" => {
                raw_hypercall(abi::Hypercall::ConsoleWrite as u64, u64::MAX - 8, 64);
            }
            "huge-length" => {
                raw_hypercall(abi::Hypercall::ConsoleWrite as u64, main as *const () as u64, 1 << 40);
            }
            "bad-hypercall" => {
                raw_hypercall(0xdead, 1, 2);
            }
            "oom" => {
                let mut v: alloc::vec::Vec<alloc::vec::Vec<u8>> = alloc::vec::Vec::new();
                loop {
                    v.push(alloc::vec![1u8; 64 * 1024]);
                }
            }
            "panic" => panic!("hostile guest panics on purpose"),
            "spin" => loop {
                core::hint::spin_loop();
            },
            "yield-storm" => loop {
                libos::hypercall::yield_now();
            },
            "block-storm" => loop {
                libos::hypercall::block(0);
            },
            "ring-lie" => {
                let prod = (abi::layout::EVENT_PAGE + abi::layout::NIC_TX_INDICES + abi::ring::PROD_OFFSET as u64) as *mut u32;
                core::ptr::write_volatile(prod, 1000);
                libos::hypercall::net_kick();
                // Still running: the hypervisor disconnects the vNIC, not the guest.
                println!("{}: vNIC lie told", libos::name());
                return 0;
            }
            "ring-rewind" => {
                let mut nic = RawNic::new();
                nic.send(&frame(nic.mac, [0xff; 6], 60));
                nic.send(&frame(nic.mac, [0xff; 6], 60));
                libos::hypercall::net_kick();
                nic.set_prod(0);
                libos::hypercall::net_kick();
                println!("{}: TX producer index moved back", libos::name());
                return 0;
            }
            "ring-bad-length" => {
                let mut nic = RawNic::new();
                // One per drain: a lying header costs what it published.
                nic.send_len(0xffff, &frame(nic.mac, [0xff; 6], 60));
                libos::hypercall::net_kick();
                nic.send_len(3, &frame(nic.mac, [0xff; 6], 60));
                libos::hypercall::net_kick();
                println!("{}: bad lengths sent", libos::name());
                return 0;
            }
            "nic-flood" => {
                let mut nic = RawNic::new();
                let f = frame(nic.mac, [0xff; 6], 60);
                let secs: u64 = libos::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
                let end = libos::time::Instant::now().as_nanos() + secs * 1_000_000_000;
                let mut sent = 0u64;
                while libos::time::Instant::now().as_nanos() < end {
                    if nic.space() == 0 {
                        libos::hypercall::net_kick();
                        continue;
                    }
                    nic.send(&f);
                    sent += 1;
                }
                libos::hypercall::net_kick();
                println!("{}: flooded {sent} broadcast frames", libos::name());
                return 0;
            }
            "rx-stall" => {
                // Only the TX ring is driven: the RX consumer index never
                // moves, so the ring fills with the gateway's answers and
                // stays full while more keep coming.
                let secs: u64 = libos::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
                let mut nic = RawNic::new();
                let ask = arp_request(&nic, nic.gateway);
                let end = libos::time::Instant::now().as_nanos() + secs * 1_000_000_000;
                let mut sent = 0u64;
                while libos::time::Instant::now().as_nanos() < end {
                    if nic.space() > 0 {
                        nic.send(&ask);
                        sent += 1;
                    }
                    libos::hypercall::net_kick();
                    libos::time::sleep(core::time::Duration::from_millis(20));
                }
                println!("{}: sent {sent} ARP requests with a full RX ring", libos::name());
                return 0;
            }
            "kick-storm" => {
                for _ in 0..2_000_000 {
                    libos::hypercall::net_kick();
                }
                println!("{}: kicked 2000000 times", libos::name());
                return 0;
            }
            "console-flood" => {
                let line = [b'x'; 1023];
                let line = core::str::from_utf8_unchecked(&line);
                let end = libos::time::Instant::now().as_nanos() + 3_000_000_000;
                while libos::time::Instant::now().as_nanos() < end {
                    println!("{line}");
                }
                return 0;
            }
            "hypercall-garbage" => {
                let mut x = 0x2545_f491_4f6c_dd1du64;
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let buf = b"garbage";
                for _ in 0..100_000 {
                    let (a, b, c, d, e) = (next(), next(), next(), next(), next());
                    let (nr, a0, a1) = match a % 5 {
                        0 => (abi::Hypercall::Nop as u64, b, c),
                        1 => (abi::Hypercall::Yield as u64, b, c),
                        2 => (abi::Hypercall::NetKick as u64, b, c),
                        // A deadline in the past: returns at once.
                        3 => (abi::Hypercall::Block as u64, b % 1000, c),
                        _ => (abi::Hypercall::ConsoleWrite as u64, buf.as_ptr() as u64, b % 8),
                    };
                    asm!("syscall", inlateout("rax") nr => _, in("rdi") a0, in("rsi") a1, in("rdx") c,
                         in("r10") d, in("r8") e, in("r9") a ^ e, lateout("rcx") _, lateout("r11") _, options(nostack));
                }
                println!("{}: 100000 garbage hypercalls done", libos::name());
                raw_hypercall(next() | 0x1_0000, next(), next());
            }
            "discard-text" => {
                raw_hypercall(abi::Hypercall::Discard as u64, (main as *const () as u64) & !0xfff, 4096);
            }
            "mov-ss-syscall" => {
                // With a data breakpoint armed this is the classic way into
                // a kernel with the guest's stack (CVE-2018-8897); here DR7
                // cannot be written, so it must be just a syscall.
                let ss: u64;
                asm!("mov {0:x}, ss", out(reg) ss);
                let ret: i64;
                asm!("mov ss, {ss:x}", "syscall", ss = in(reg) ss, inlateout("rax") abi::Hypercall::Nop as u64 => ret,
                     lateout("rcx") _, lateout("r11") _, options(nostack));
                println!("{}: mov ss + syscall returned {ret}", libos::name());
                return 0;
            }
            "debug-regs" => asm!("mov dr7, {}", in(reg) 0x1u64),
            "bad-stack" => asm!("mov rsp, 0x10", "push rax"),
            "direct-map-write" => core::ptr::write_volatile(0xffff_8000_0010_0000 as *mut u64, 1),
            "block-forever" => {
                let woke = libos::hypercall::block(u64::MAX);
                println!("woke with events {woke:#x}");
            }
            other => {
                println!("unknown attack {other:?}");
                return 2;
            }
        }
    }
    println!("{}: survived {attack} (the hypervisor should have stopped me)", libos::name());
    1
}
