//! `cargo xtask lint`: the checks `.ci/run` runs before the tests.
//!
//! - `cargo fmt --all --check` (the style is `rustfmt.toml`);
//! - clippy with `-D warnings` on the host crates (every target: libraries,
//!   binaries, tests, examples);
//! - clippy with `-D warnings` on the freestanding crates, each built the way
//!   `cargo xtask build` and `build-app` build it (the hypervisor binary with
//!   its linker script, libos and the apps with the guest flags), into the
//!   same target directories, so a lint run after a build checks only what
//!   changed.

use anyhow::{Result, bail};

use crate::{GUEST_RUSTFLAGS, TARGET, apps, cargo, hypervisor_rustflags, workspace_root};

/// Runs every check, all of them even when one fails, and fails if any did.
pub fn lint() -> Result<()> {
    let root = workspace_root();
    let mut failed = Vec::new();
    let mut check = |what: &str, cmd: &mut std::process::Command| {
        if crate::run(cmd).is_err() {
            failed.push(what.to_string());
        }
    };
    check("formatting (run `cargo fmt --all`)", cargo().args(["fmt", "--all", "--check"]));
    check("clippy on the host crates", cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]));
    check(
        "clippy on the hypervisor binary",
        cargo()
            .args(["clippy", "--release", "-p", "hypervisor", "--bin", "hypervisor", "--features", "bare-metal"])
            .args(["--target", TARGET, "--target-dir", "target/hv", "--", "-D", "warnings"])
            .env("RUSTFLAGS", hypervisor_rustflags(root)),
    );
    let mut guests = cargo();
    guests.args(["clippy", "--release", "-p", "libos"]);
    for app in apps()? {
        guests.args(["-p", &app]);
    }
    guests.args(["--target", TARGET, "--target-dir", "target/guest", "--", "-D", "warnings"]).env("RUSTFLAGS", GUEST_RUSTFLAGS);
    check("clippy on libos and the apps", &mut guests);
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    eprintln!("xtask lint: formatting and clippy clean");
    Ok(())
}
