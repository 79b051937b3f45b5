//! `cargo xtask test`: the host tests and the QEMU integration tests
//! (`cargo test`), with the time they took.

use std::time::Instant;

use anyhow::Result;

/// Runs `cargo test ARGS` after making sure QEMU, containerd, protoc
/// (which the CRI test's client is built with), GRUB's ISO tools and OVMF
/// (the boot matrix) are there. Says which tests skip themselves here.
pub fn run(args: &[String]) -> Result<()> {
    xtask::ensure_qemu()?;
    xtask::ensure_containerd()?;
    xtask::ensure_protoc()?;
    xtask::iso::ensure_grub()?;
    xtask::iso::ensure_ovmf()?;
    if !xtask::host_has_hardware_virtualization() {
        eprintln!(
            "xtask test: no VT-x/AMD-V here (no vmx/svm in /proc/cpuinfo, or no /dev/kvm): the KVM cells (machines::kvm_*) skip themselves"
        );
    }
    let start = Instant::now();
    let result = xtask::run(xtask::cargo().arg("test").args(args));
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(()) => eprintln!("xtask test: all tests passed ({secs:.1} s)"),
        Err(_) => eprintln!("xtask test: FAILED ({secs:.1} s)"),
    }
    result
}
