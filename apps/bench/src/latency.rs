//! The guest side of `cargo xtask bench latency`: how late a sleeper
//! wakes beside CPU-bound neighbours, and the neighbours themselves. The
//! Linux peer's `sleep-lateness` (`xtask/src/peer/latency.c`) measures the
//! same way: read the clock, sleep the period, read it again.

use alloc::vec::Vec;
use core::time::Duration;
use libos::println;
use libos::time::{Instant, sleep};

/// `sleep-lateness N PERIOD_US`: max(N/10, 10) unmeasured sleeps (the
/// guest's start-up, and QEMU translating the code, are not what is
/// measured), then N sleeps of PERIOD_US; each one's lateness is its wake
/// time less (its start + the period). Prints
/// `{"bench":"sleep-lateness","iterations":N,"warmup":W,"period_us":P,
/// "lateness_us":{"p50":..,"p99":..,"max":..,"mean":..}}` (nearest-rank
/// quantiles).
pub fn sleep_lateness(n: u64, period_us: u64) {
    let period = Duration::from_micros(period_us);
    let once = || {
        let start = Instant::now();
        sleep(period);
        Instant::now().duration_since(start + period).as_nanos() as u64
    };
    let warmup = (n / 10).max(10);
    (0..warmup).for_each(|_| {
        once();
    });
    let mut late: Vec<u64> = (0..n).map(|_| once()).collect();
    late.sort_unstable();
    // The nearest rank of per-mille q: the ceil(q * n / 1000)-th smallest.
    let rank = |q: u64| late[(q * n).div_ceil(1000).clamp(1, n) as usize - 1] as f64 / 1e3;
    let mean = late.iter().sum::<u64>() as f64 / n as f64 / 1e3;
    println!(
        r#"{{"bench":"sleep-lateness","iterations":{n},"warmup":{warmup},"period_us":{period_us},"lateness_us":{{"p50":{:.1},"p99":{:.1},"max":{:.1},"mean":{mean:.1}}}}}"#,
        rank(500),
        rank(990),
        rank(1000)
    );
}

/// `spin`: computes forever (a CPU-bound neighbour; the benchmark stops
/// the machine when the sleeper is done).
pub fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = core::hint::black_box(x.wrapping_add(1));
    }
}
