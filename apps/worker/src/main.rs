//! Workloads that exercise the scheduler and the clock. The first argument
//! picks one:
//!
//! | arguments     | what it does                                                   |
//! |---------------|----------------------------------------------------------------|
//! | `count N`     | counts to N, prints `counted to N`, exits 0                    |
//! | `busy MS`     | spins for MS milliseconds of wall time, prints `busy for NS ns` |
//! | `sleep MS`    | sleeps MS ms (async), prints `slept NS ns`                     |
//! | `tasks`       | spawns tasks sleeping until 30, 10 and 20 ms from one instant, prints the order they finished |
//! | `tick MS N`   | wakes every MS ms N times; prints `ticked N times, late by at most US us` |
//! | `fpu SEED N`  | runs an N-step floating-point recurrence twice and prints whether both agree |
//! | `counter MS N` | every MS ms prints `counter: K` for K = 1..=N, then exits 0 (a snapshot's test: restored, it goes on from its count) |
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use libos::println;
use libos::task::{join_all, sleep, sleep_until, spawn};
use libos::time::Instant;

libos::main!(async main);

fn number(arg: Option<&str>) -> u64 {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("expected a number, got {arg:?}"))
}

async fn main() -> i32 {
    let args: Vec<&str> = libos::args().collect();
    match args.first().copied() {
        Some("count") => {
            let n = number(args.get(1).copied());
            let mut i = 0u64;
            while i < n {
                i = core::hint::black_box(i + 1);
            }
            println!("counted to {i}");
        }
        Some("busy") => {
            let window = Duration::from_millis(number(args.get(1).copied()));
            let start = Instant::now();
            let mut spins = 0u64;
            while start.elapsed() < window {
                spins = core::hint::black_box(spins + 1);
            }
            println!("busy for {} ns", start.elapsed().as_nanos());
        }
        Some("sleep") => {
            let start = Instant::now();
            sleep(Duration::from_millis(number(args.get(1).copied()))).await;
            println!("slept {} ns", start.elapsed().as_nanos());
        }
        Some("tick") => {
            // A victim that must keep its rhythm: how late is it ever woken?
            let period = Duration::from_millis(number(args.get(1).copied()));
            let n = number(args.get(2).copied());
            let mut next = Instant::now() + period;
            let mut worst = Duration::ZERO;
            for _ in 0..n {
                libos::task::sleep_until(next).await;
                worst = worst.max(Instant::now().duration_since(next));
                next = next + period;
            }
            println!("ticked {n} times, late by at most {} us", worst.as_micros());
        }
        Some("counter") => {
            // Deadlines advance by the period, as `tick`'s: the count is
            // all the state there is, so a restored guest shows where it
            // went on from.
            let period = Duration::from_millis(number(args.get(1).copied()));
            let n = number(args.get(2).copied());
            let mut next = Instant::now() + period;
            for k in 1..=n {
                sleep_until(next).await;
                println!("counter: {k}");
                next = next + period;
            }
        }
        Some("tasks") => {
            let start = Instant::now();
            let handles: Vec<_> = [30u64, 10, 20]
                .into_iter()
                .map(|ms| {
                    // Deadlines from one instant: were each task to sleep
                    // from its own first poll, a preemption between two
                    // first polls could reorder them.
                    let deadline = start + Duration::from_millis(ms);
                    spawn(async move {
                        sleep_until(deadline).await;
                        println!("task {ms} done");
                        ms
                    })
                })
                .collect();
            let results = join_all(handles).await;
            println!("joined {results:?} after {} ms", start.elapsed().as_millis());
        }
        Some("fpu") => {
            // SSE registers hold the state across preemptions; if another
            // guest's (or the hypervisor's) state leaked in, the runs differ.
            let seed = number(args.get(1).copied()) as f64;
            let n = number(args.get(2).copied());
            let run = || {
                let (mut a, mut b) = (seed, 1.0 / (seed + 1.0));
                for i in 0..n {
                    a = core::hint::black_box(a * 1.000_000_1 + b);
                    b = core::hint::black_box(b * 0.999_999_9 + (i & 7) as f64 * 1e-9);
                }
                (a, b)
            };
            let (first, second) = (run(), run());
            if first == second {
                println!("fpu ok {:e}", first.0);
            } else {
                println!("fpu MISMATCH {first:?} {second:?}");
                return 1;
            }
        }
        other => {
            println!("unknown workload {other:?}");
            return 2;
        }
    }
    0
}
