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
//! | `ring-lie`    | (needs a vNIC) claims 1000 frames in its 32-slot TX ring and kicks |
#![no_std]
#![no_main]

extern crate alloc;

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

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let big = [depth; 64];
    core::hint::black_box(&big);
    recurse(depth + 1) + big[3]
}

fn main() -> i32 {
    let attack = libos::args().next().unwrap_or("");
    println!("{}: trying {attack}", libos::name());
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
