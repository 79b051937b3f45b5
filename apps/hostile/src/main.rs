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
#![no_std]
#![no_main]

extern crate alloc;

mod flags;

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
}

impl RawNic {
    fn new() -> Self {
        // SAFETY: the start page is mapped read-only for the guest's life.
        let info: abi::NicInfo =
            unsafe { core::ptr::read_volatile((abi::layout::START_PAGE + abi::layout::NIC_INFO_OFFSET) as *const abi::NicInfo) };
        if info.magic != abi::NIC_MAGIC {
            println!("{}: no vNIC", libos::name());
            libos::exit(2);
        }
        let m = info.mac;
        Self { mac: [m[0], m[1], m[2], m[3], m[4], m[5]], ipv4: info.ipv4, gateway: info.gateway, slots: info.ring_slots, prod: 0 }
    }

    fn index(offset: usize) -> *mut u32 {
        (abi::layout::EVENT_PAGE + abi::layout::NIC_TX_INDICES + offset as u64) as *mut u32
    }

    fn space(&self) -> u32 {
        // SAFETY: the shared page is mapped read-write; aligned u32.
        let cons = unsafe { core::ptr::read_volatile(Self::index(abi::ring::CONS_OFFSET)) };
        self.slots - self.prod.wrapping_sub(cons).min(self.slots)
    }

    fn send(&mut self, f: &[u8]) {
        self.send_len(f.len() as u16, f);
    }

    /// Writes `f` into the next slot with length field `len` and publishes it.
    fn send_len(&mut self, len: u16, f: &[u8]) {
        let slot = abi::layout::NIC_TX_RING + u64::from(self.prod % self.slots) * abi::ring::SLOT_SIZE as u64;
        // SAFETY: the slot lies in the TX ring, mapped read-write.
        unsafe {
            core::ptr::write_volatile(slot as *mut u16, len);
            core::ptr::copy_nonoverlapping(f.as_ptr(), (slot + 2) as *mut u8, f.len());
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

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let big = [depth; 64];
    core::hint::black_box(&big);
    recurse(depth + 1) + big[3]
}

fn main() -> i32 {
    let attack = libos::args().next().unwrap_or("");
    println!("{}: trying {attack}", libos::name());
    if attack.starts_with("df-") || attack == "keep-secret" {
        return flags::run(attack, libos::args().nth(1));
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
                nic.send_len(0xffff, &frame(nic.mac, [0xff; 6], 60));
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
