//! `cargo xtask test`: the host tests and the QEMU integration tests
//! (`cargo test`), with the time they took.

use std::time::Instant;

use anyhow::Result;

/// Runs `cargo test ARGS` after making sure QEMU and containerd are there.
pub fn run(args: &[String]) -> Result<()> {
    xtask::ensure_qemu()?;
    xtask::ensure_containerd()?;
    let start = Instant::now();
    let result = xtask::run(xtask::cargo().arg("test").args(args));
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(()) => eprintln!("xtask test: all tests passed ({secs:.1} s)"),
        Err(_) => eprintln!("xtask test: FAILED ({secs:.1} s)"),
    }
    result
}
