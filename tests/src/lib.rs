//! Helpers shared by the integration tests in `tests/tests/`: boot a
//! manifest under QEMU and look at what the console says.
//!
//! Images are built once per test binary however many tests boot them;
//! every boot gets its own bundle file and its own QEMU, killed at the
//! timeout or when the test ends.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use xtask::{Result, RunOutput, workspace_root};

/// Boots the guests of `manifest_toml` (exit when idle, 1 CPU, 512 MiB,
/// KVM only where it can run us, else TCG) and returns what happened.
/// `image` paths in the manifest are relative to the workspace root.
/// Panics if the manifest is refused or something fails to build.
pub fn boot(manifest_toml: &str, timeout_secs: u64) -> RunOutput {
    try_boot(manifest_toml, timeout_secs).unwrap_or_else(|e| panic!("could not boot: {e:#}"))
}

/// Like [`boot`], but returns refusals (a bad manifest, a failed build) as
/// errors; `format!("{e:#}")` gives the whole message.
pub fn try_boot(manifest_toml: &str, timeout_secs: u64) -> Result<RunOutput> {
    try_boot_smp(manifest_toml, timeout_secs, 1)
}

/// Like [`boot`], typing `input` on the hypervisor's console two seconds
/// after QEMU starts.
pub fn boot_with_input(manifest_toml: &str, timeout_secs: u64, input: &str) -> RunOutput {
    let run = || -> Result<RunOutput> {
        xtask::ensure_qemu()?;
        let prepared = xtask::prepare(&config(manifest_toml, 1))?;
        xtask::run_captured_with_input(&prepared, Duration::from_secs(timeout_secs), input.as_bytes(), Duration::from_secs(2))
    };
    run().unwrap_or_else(|e| panic!("could not boot: {e:#}"))
}

fn config(manifest_toml: &str, cpus: u32) -> xtask::RunConfig {
    xtask::RunConfig {
        manifest: xtask::ManifestSource::Text { text: manifest_toml.to_string(), base_dir: workspace_root().to_path_buf() },
        exit_when_idle: true,
        smp: cpus,
        ..xtask::RunConfig::default()
    }
}

/// Like [`boot`], on a machine with `cpus` CPUs.
pub fn boot_smp(manifest_toml: &str, timeout_secs: u64, cpus: u32) -> RunOutput {
    try_boot_smp(manifest_toml, timeout_secs, cpus).unwrap_or_else(|e| panic!("could not boot: {e:#}"))
}

fn try_boot_smp(manifest_toml: &str, timeout_secs: u64, cpus: u32) -> Result<RunOutput> {
    xtask::ensure_qemu()?;
    let prepared = xtask::prepare(&config(manifest_toml, cpus))?;
    xtask::run_captured(&prepared, Duration::from_secs(timeout_secs))
}

/// Writes `data` to a fresh file under `target/itest/` whose name ends in
/// `name` (e.g. a hand-made bad image) and returns its absolute path, for
/// use as `image = "..."` in a manifest.
pub fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = workspace_root().join("target/itest");
    std::fs::create_dir_all(&dir).expect("creating target/itest");
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}
