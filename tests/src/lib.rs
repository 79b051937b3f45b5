//! Helpers shared by the integration tests in `tests/tests/`: boot a
//! manifest under QEMU and look at what the console says; run a private
//! containerd ([`containerd::Containerd`]).
//!
//! Images are built once per test binary however many tests boot them;
//! every boot gets its own bundle file and its own QEMU, killed at the
//! timeout or when the test ends.
#![forbid(unsafe_code)]

pub mod containerd;
pub mod records;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use xtask::manifest::{Guest, KIB, MIB, Manifest};
pub use xtask::{Result, RunOutput, workspace_root};

/// A manifest for the boot helpers: TOML text (`image` paths relative to
/// the workspace root; for tests of what the parser refuses, or written
/// out as a file would be) or one built with the manifest types
/// ([`Guest::app`]).
pub trait ToManifest {
    fn to_source(self) -> xtask::ManifestSource;
}

impl ToManifest for &str {
    fn to_source(self) -> xtask::ManifestSource {
        xtask::ManifestSource::Text { text: self.to_string(), base_dir: workspace_root().to_path_buf() }
    }
}

impl ToManifest for &String {
    fn to_source(self) -> xtask::ManifestSource {
        self.as_str().to_source()
    }
}

impl ToManifest for Manifest {
    fn to_source(self) -> xtask::ManifestSource {
        xtask::ManifestSource::Built(self)
    }
}

impl ToManifest for &Manifest {
    fn to_source(self) -> xtask::ManifestSource {
        xtask::ManifestSource::Built(self.clone())
    }
}

/// Boots the guests of `manifest` (exit when idle, 1 CPU, 512 MiB,
/// KVM only where it can run us, else TCG) and returns what happened.
/// `image` paths in the manifest are relative to the workspace root.
/// Panics if the manifest is refused or something fails to build.
pub fn boot(manifest: impl ToManifest, timeout_secs: u64) -> RunOutput {
    try_boot(manifest, timeout_secs).unwrap_or_else(|e| panic!("could not boot: {e:#}"))
}

/// Like [`boot`], but returns refusals (a bad manifest, a failed build) as
/// errors; `format!("{e:#}")` gives the whole message.
pub fn try_boot(manifest: impl ToManifest, timeout_secs: u64) -> Result<RunOutput> {
    try_boot_smp(manifest, timeout_secs, 1)
}

/// Like [`boot`], typing `input` on the hypervisor's console two seconds
/// after QEMU starts.
pub fn boot_with_input(manifest: impl ToManifest, timeout_secs: u64, input: &str) -> RunOutput {
    let run = || -> Result<RunOutput> {
        xtask::ensure_qemu()?;
        let prepared = xtask::prepare(&config(manifest, 1))?;
        xtask::run_captured_with_input(&prepared, Duration::from_secs(timeout_secs), input.as_bytes(), Duration::from_secs(2))
    };
    run().unwrap_or_else(|e| panic!("could not boot: {e:#}"))
}

fn config(manifest: impl ToManifest, cpus: u32) -> xtask::RunConfig {
    xtask::RunConfig {
        manifest: manifest.to_source(),
        exit_when_idle: true,
        smp: cpus,
        // The speculation mitigations' path runs in every test, although
        // TCG's CPU does not need it.
        force_mitigations: true,
        ..xtask::RunConfig::default()
    }
}

/// Like [`boot`], on a machine with `cpus` CPUs.
pub fn boot_smp(manifest: impl ToManifest, timeout_secs: u64, cpus: u32) -> RunOutput {
    try_boot_smp(manifest, timeout_secs, cpus).unwrap_or_else(|e| panic!("could not boot: {e:#}"))
}

fn try_boot_smp(manifest: impl ToManifest, timeout_secs: u64, cpus: u32) -> Result<RunOutput> {
    xtask::ensure_qemu()?;
    let prepared = xtask::prepare(&config(manifest, cpus))?;
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

/// A QEMU running in the background (for tests that talk to guests from
/// the host), on xtask's runner ([`xtask::runner::Qemu`]): killed when
/// dropped, also when the test panics.
pub struct Live {
    qemu: xtask::runner::Qemu,
    /// Everything the console printed so far.
    pub console: String,
    _prepared: xtask::Prepared,
}

impl Live {
    /// Boots `manifest` on `cpus` CPUs and returns at once.
    pub fn start(manifest: impl ToManifest, cpus: u32) -> Live {
        Self::start_with_memory(manifest, cpus, None)
    }

    /// Like [`Live::start`], with `memory` (e.g. `"1G"`) instead of the default.
    pub fn start_with_memory(manifest: impl ToManifest, cpus: u32, memory: Option<&str>) -> Live {
        Self::start_with(manifest, cpus, |cfg| {
            if let Some(m) = memory {
                cfg.memory = m.to_string();
            }
        })
    }

    /// Like [`Live::start`], with `nic` as the uplink's NIC.
    pub fn start_with_nic(manifest: impl ToManifest, cpus: u32, nic: xtask::Nic) -> Live {
        Self::start_with(manifest, cpus, |cfg| cfg.nic = nic)
    }

    /// Like [`Live::start`], with the machine's settings changed by `set`
    /// (e.g. how it boots, its chipset).
    pub fn start_with(manifest: impl ToManifest, cpus: u32, set: impl FnOnce(&mut xtask::RunConfig)) -> Live {
        Self::start_edited(manifest, cpus, set, |_| {})
    }

    /// Like [`Live::start_with`], with QEMU's arguments then changed by
    /// `edit` (a device xtask's command line does not offer).
    pub fn start_edited(
        manifest: impl ToManifest,
        cpus: u32,
        set: impl FnOnce(&mut xtask::RunConfig),
        edit: impl FnOnce(&mut Vec<String>),
    ) -> Live {
        xtask::ensure_qemu().expect("QEMU");
        let mut cfg = config(manifest, cpus);
        cfg.exit_when_idle = false;
        set(&mut cfg);
        let mut prepared = xtask::prepare(&cfg).unwrap_or_else(|e| panic!("could not prepare: {e:#}"));
        edit(&mut prepared.qemu_args);
        let options = xtask::runner::Options { input: xtask::runner::Input::Piped, ..Default::default() };
        let qemu = xtask::runner::Qemu::spawn(&prepared.qemu_args, options).expect("starting QEMU");
        Live { qemu, console: String::new(), _prepared: prepared }
    }

    /// Types `text` on the hypervisor's console (e.g. `"stats\n"`).
    pub fn send(&mut self, text: &str) {
        self.qemu.send(text.as_bytes()).expect("writing to QEMU's console");
    }

    /// Waits until a console line contains `needle`; false after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let console = &mut self.console;
        let found = self.qemu.wait_for(
            |line| {
                console.push_str(line);
                console.push('\n');
                line.contains(needle)
            },
            timeout,
        );
        found.is_some()
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
/// KiB the end's summary (`[hv] no guests left: ...; F KiB free, H KiB
/// taken by the heap`) says are free or were taken by the hypervisor's
/// heap as it grew: every frame the guests held is one or the other, so
/// this equals what was free at boot when none leaked.
pub fn free_at_end_kib(console: &str) -> Option<u64> {
    let end = console.lines().find(|l| l.starts_with("[hv] no guests left: "))?;
    let tail = end.rsplit_once("; ")?.1;
    tail.split(", ").map(|p| p.split(' ').next()?.parse::<u64>().ok()).sum()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Sends `msg` to 127.0.0.1:`port` (a forward to an echo guest) and
/// returns as many bytes as come back, waiting at most 20 s.
pub fn echo(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// A hypervisor `run --detach` booted, shut down when dropped.
pub struct Detached(pub xtask::ctl::Instance);

impl Detached {
    /// Boots `manifest` detached (2 CPUs) with its files in `dir`;
    /// `force_mitigations` as `run --force-mitigations`. Returns once the
    /// hypervisor answers.
    pub fn start(dir: &Path, manifest: Manifest, force_mitigations: bool) -> Detached {
        xtask::ensure_qemu().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let cfg = xtask::RunConfig {
            manifest: xtask::ManifestSource::Built(manifest),
            smp: 2,
            bundle: Some(dir.join("bundle.bin")),
            detach: Some(dir.to_path_buf()),
            force_mitigations,
            ..xtask::RunConfig::default()
        };
        Detached(xtask::ctl::detach(&xtask::prepare(&cfg).unwrap(), dir).unwrap())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}
