//! `wake-storm MS`: for MS ms of wall time, naps 50 µs and computes 500 µs,
//! again and again, so that every nap ends in a wake-up that may preempt a
//! neighbour; then prints `NAME: wake-storm: N naps` and exits 0. Its
//! wake-ups must buy it no more than its share of the CPU
//! (tests/tests/sched.rs).

use libos::println;
use libos::time::Instant;

const NAP_NS: u64 = 50_000;
const WORK_NS: u64 = 500_000;

pub fn run(ms: u64) -> i32 {
    let end = Instant::now().as_nanos() + ms * 1_000_000;
    let mut naps = 0u64;
    loop {
        let now = Instant::now().as_nanos();
        if now >= end {
            break;
        }
        // Clear what woke us, or every later block returns at once.
        let woke = libos::hypercall::block(now + NAP_NS);
        libos::hypercall::take_events(woke);
        naps += 1;
        let busy_until = Instant::now().as_nanos() + WORK_NS;
        while Instant::now().as_nanos() < busy_until {
            core::hint::spin_loop();
        }
    }
    println!("{}: wake-storm: {naps} naps", libos::name());
    0
}
