//! The guest side of `cargo xtask bench`. The first argument picks the
//! benchmark; each prints one JSON line and exits 0.
//!
//! | arguments             | prints                                                             |
//! |-----------------------|--------------------------------------------------------------------|
//! | `hypercall N [ROUNDS]` | `{"bench":"hypercall","iterations":N,"rounds":R,"cycles_per_call":X,"min_cycles_per_call":Y,"round_cycles_per_call":[...]}` |
//! | `first`               | `{"bench":"first","tsc":T,"ns":NS}`: the TSC at the first line of main, and the monotonic clock just after |
//! | `sleep-lateness N PERIOD_US` | `{"bench":"sleep-lateness","iterations":N,"warmup":W,"period_us":P,"lateness_us":{"p50":..,"p99":..,"max":..,"mean":..}}` (see `latency`) |
//! | `spin`                | nothing: computes forever                                          |
//!
//! `hypercall`: a warm-up of max(N/10, 1000) `nop` hypercalls, then ROUNDS
//! (default 7) rounds of N, each timed with `rdtsc` around the loop.
//! `cycles_per_call` is the **median** of the rounds' cycles per call (a
//! round hit by a timer interrupt or by QEMU's translator does not move it);
//! the minimum is reported too. The Linux peer (`xtask/src/peer/peer.c`)
//! measures `getppid` the same way.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod latency;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use libos::println;

libos::main!(main);

use libos::time::rdtsc;

fn number(arg: Option<&str>, what: &str) -> u64 {
    match arg.and_then(|a| a.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => panic!("expected a positive number for {what}, got {arg:?}"),
    }
}

fn hypercall(n: u64, rounds: u64) {
    for _ in 0..(n / 10).max(1000) {
        libos::hypercall::nop();
    }
    let mut per_call: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = rdtsc();
            for _ in 0..n {
                libos::hypercall::nop();
            }
            (rdtsc() - start) as f64 / n as f64
        })
        .collect();
    let each: Vec<String> = per_call.iter().map(|c| format!("{c:.1}")).collect();
    per_call.sort_unstable_by(f64::total_cmp);
    let mid = per_call.len() / 2;
    let median = if per_call.len() % 2 == 1 { per_call[mid] } else { (per_call[mid - 1] + per_call[mid]) / 2.0 };
    println!(
        r#"{{"bench":"hypercall","iterations":{n},"rounds":{rounds},"cycles_per_call":{median:.1},"min_cycles_per_call":{:.1},"round_cycles_per_call":[{}]}}"#,
        per_call[0],
        each.join(",")
    );
}

fn main() -> i32 {
    let tsc = rdtsc();
    let args: Vec<&str> = libos::args().collect();
    match args.first().copied() {
        Some("first") => {
            let ns = libos::time::Instant::now().as_nanos();
            println!(r#"{{"bench":"first","tsc":{tsc},"ns":{ns}}}"#);
        }
        Some("hypercall") => {
            let n = number(args.get(1).copied(), "N");
            let rounds = args.get(2).map_or(7, |r| number(Some(r), "ROUNDS"));
            hypercall(n, rounds);
        }
        Some("sleep-lateness") => latency::sleep_lateness(number(args.get(1).copied(), "N"), number(args.get(2).copied(), "PERIOD_US")),
        Some("spin") => latency::spin(),
        other => {
            println!("unknown benchmark {other:?} (expected `hypercall N [ROUNDS]`, `first`, `sleep-lateness N PERIOD_US` or `spin`)");
            return 2;
        }
    }
    0
}
