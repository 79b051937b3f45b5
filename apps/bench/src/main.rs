//! The guest side of `cargo xtask bench`. The first argument picks the
//! benchmark; each prints one JSON line and exits 0.
//!
//! | arguments             | prints                                                             |
//! |-----------------------|--------------------------------------------------------------------|
//! | `hypercall N [ROUNDS]` | three lines `{"bench":B,"iterations":N,"rounds":R,"cycles_per_call":X,"min_cycles_per_call":Y,"round_cycles_per_call":[...]}`, B = `hypercall` (`nop`), `block_pending` (`block` with an event pending), `clock` (`Instant::now`) |
//! | `first`               | `{"bench":"first","tsc":T,"ns":NS}`: the TSC at the first line of main, and the monotonic clock just after |
//! | `sleep-lateness N PERIOD_US` | `{"bench":"sleep-lateness","iterations":N,"warmup":W,"period_us":P,"lateness_us":{"p50":..,"p99":..,"max":..,"mean":..}}` (see `latency`) |
//! | `spin`                | nothing: computes forever                                          |
//! | `memcpy SIZE[,...] MS` | per size, `{"bench":"memcpy","bytes":S,"copies":N,"duration_ms":T,"copies_per_sec":C,"gbytes_per_sec":G}`: one buffer of SIZE bytes copied to another (both stay in cache) over and over for MS ms, the yardstick of `bench net`'s switch row |
//!
//! `hypercall`: for each of the three calls, a warm-up of max(N/10, 1000)
//! calls, then ROUNDS (default 7) rounds of N, each timed with `rdtsc`
//! around the loop.
//! `cycles_per_call` is the **median** of the rounds' cycles per call (a
//! round hit by a timer interrupt or by QEMU's translator does not move it);
//! the minimum is reported too. The Linux peer (`xtask/src/peer/peer.c`)
//! measures `getppid`, `poll` on a readable eventfd and `clock_gettime`
//! the same way.
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

/// The event bit the `block_pending` row keeps set (one the libos leaves
/// alone: not a timer or the NIC).
const EVENT: u64 = 1 << 63;

fn number(arg: Option<&str>, what: &str) -> u64 {
    match arg.and_then(|a| a.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => panic!("expected a positive number for {what}, got {arg:?}"),
    }
}

/// A warm-up of max(N/10, 1000) calls of `call`, then `rounds` rounds of
/// `n`, each timed with rdtsc; prints `{"bench":NAME,...}` with the
/// median and the minimum of the rounds' cycles per call.
fn time_calls(name: &str, n: u64, rounds: u64, call: impl Fn()) {
    for _ in 0..(n / 10).max(1000) {
        call();
    }
    let mut per_call: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = rdtsc();
            for _ in 0..n {
                call();
            }
            (rdtsc() - start) as f64 / n as f64
        })
        .collect();
    let each: Vec<String> = per_call.iter().map(|c| format!("{c:.1}")).collect();
    per_call.sort_unstable_by(f64::total_cmp);
    let mid = per_call.len() / 2;
    let median = if per_call.len() % 2 == 1 { per_call[mid] } else { (per_call[mid - 1] + per_call[mid]) / 2.0 };
    println!(
        r#"{{"bench":"{name}","iterations":{n},"rounds":{rounds},"cycles_per_call":{median:.1},"min_cycles_per_call":{:.1},"round_cycles_per_call":[{}]}}"#,
        per_call[0],
        each.join(",")
    );
}

/// The three rows of `bench hypercall`: a null hypercall, a `block` that
/// returns at once because an event is pending, and a read of the clock
/// (the time page: no hypercall at all).
fn hypercall(n: u64, rounds: u64) {
    time_calls("hypercall", n, rounds, libos::hypercall::nop);
    // An event bit set by the guest itself stays pending (`block` returns
    // the bits without clearing them), so every `block` returns at once.
    libos::hypercall::raise_own_events(EVENT);
    time_calls("block_pending", n, rounds, || {
        core::hint::black_box(libos::hypercall::block(u64::MAX));
    });
    libos::hypercall::take_events(EVENT);
    time_calls("clock", n, rounds, || {
        core::hint::black_box(libos::time::Instant::now());
    });
}

/// `memcpy`: copies `size` bytes from one buffer to another, again and
/// again for `ms` milliseconds (the clock read every 16 copies).
fn memcpy(size: usize, ms: u64) {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = alloc::vec![0u8; size];
    let start = libos::time::Instant::now();
    let end = start.saturating_add(core::time::Duration::from_millis(ms));
    let mut copies = 0u64;
    while libos::time::Instant::now() < end {
        for _ in 0..16 {
            dst.copy_from_slice(core::hint::black_box(&src));
            core::hint::black_box(&mut dst);
        }
        copies += 16;
    }
    let secs = start.elapsed().as_nanos() as f64 / 1e9;
    println!(
        r#"{{"bench":"memcpy","bytes":{size},"copies":{copies},"duration_ms":{:.1},"copies_per_sec":{:.1},"gbytes_per_sec":{:.4}}}"#,
        secs * 1e3,
        copies as f64 / secs,
        (copies * size as u64) as f64 / secs / 1e9
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
        Some("memcpy") => {
            let sizes = args.get(1).map(|s| s.split(',').map(|n| number(Some(n), "SIZE")).collect::<Vec<_>>());
            let ms = number(args.get(2).copied(), "MS");
            for size in sizes.unwrap_or_default() {
                memcpy(size as usize, ms);
            }
        }
        other => {
            println!(
                "unknown benchmark {other:?} (expected `hypercall N [ROUNDS]`, `first`, `sleep-lateness N PERIOD_US`, `spin` or `memcpy SIZE[,...] MS`)"
            );
            return 2;
        }
    }
    0
}
