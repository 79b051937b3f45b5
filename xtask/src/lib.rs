//! `cargo xtask`: builds the hypervisor and guest images, boots them under
//! QEMU, and runs the tests.
//!
//! The library half is what the integration tests use to boot machines:
//! [`prepare`] builds and packs everything a [`RunConfig`] names, and
//! [`run_captured`] boots it with a timeout and returns the console text.
//! Every QEMU (ours, the benchmarks' Linux peer, detached or not) runs
//! through [`runner::Qemu`], whose module doc states the kill and timeout
//! rules.
//!
//! Every external command is echoed as `$ cmd args` on stderr before it runs.
//! Nested cargo calls run in the workspace root with the outer cargo's
//! `CARGO*`/`RUST*` variables removed.
#![forbid(unsafe_code)]

pub mod bench;
mod build;
mod cmd;
pub mod ctl;
pub mod install;
pub mod iso;
pub mod lint;
pub mod linux;
pub mod manifest;
pub mod metrics;
pub mod oci;
pub mod pack;
mod qemu;
/// QEMU's monitor, for host port forwards: the shim's own module, one copy
/// for both.
#[path = "../../shim/src/qmp.rs"]
pub mod qmp;
pub mod runner;
pub mod symbolize;
pub mod tap;

use std::path::Path;

pub use anyhow::{Error, Result};

pub use build::{
    App, GUEST_RUSTFLAGS, SHIM_BINARY, TARGET, app_elf, apps, build_app, build_apps, build_external, build_hypervisor, build_shim,
    hypervisor_rustflags,
};
pub use cmd::{cargo, echo, run};
pub use install::{ensure_containerd, ensure_protoc};
pub use qemu::{
    Accel, Boot, Chipset, MAX_SMP, ManifestSource, Nic, Prepared, QEMU, RunConfig, check_exit, ensure_qemu,
    host_has_hardware_virtualization, prepare, run_captured, run_captured_with_input, run_interactive,
};
pub use runner::RunOutput;

/// The workspace root (the directory above `xtask/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lies inside the workspace")
}
