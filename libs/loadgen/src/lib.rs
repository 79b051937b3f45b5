//! What the load-generator guests (`apps/echo-bench`, `apps/http-load`)
//! share: the latency [`Histogram`], how long a run lasts ([`Length`],
//! [`Until`]), the connection [`Slots`] a run's phases take their
//! connections from, and the switch benchmark's frames ([`rawframe`]). `no_std` with `alloc`, free of the libos, so it is
//! tested on the host (`cargo test -p loadgen`); the Linux peer's C load
//! generators (`xtask/src/peer/net.c`) have the same histogram buckets.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod hist;
pub mod length;
pub mod rawframe;
pub mod slots;

pub use hist::Histogram;
pub use length::{Length, Until};
pub use slots::Slots;
