//! Building the hypervisor binary and the guest apps.
//!
//! Both are freestanding ELF files built with the stable toolchain for
//! `x86_64-unknown-linux-gnu` with the flags below (see docs/ARCHITECTURE.md).
//! Each build happens at most once per process, however many threads ask.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{cargo, run};
use crate::{pack, workspace_root};

/// The target triple every bare-metal piece is built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// RUSTFLAGS for the hypervisor, whose linker script is `hypervisor/hypervisor.ld`.
pub fn hypervisor_rustflags(root: &Path) -> String {
    let script = root.join("hypervisor/hypervisor.ld");
    [
        "-C relocation-model=static",
        "-C code-model=kernel",
        "-C link-arg=-nostartfiles",
        "-C link-arg=-nostdlib",
        "-C link-arg=-static",
        "-C link-arg=-no-pie",
        "-C link-arg=-Wl,--build-id=none",
        &format!("-C link-arg=-T{}", script.display()),
    ]
    .join(" ")
}

/// RUSTFLAGS for guest apps: static, non-PIE, 4 KiB-aligned segments with
/// code apart from data (so text pages can be shared read-only).
pub const GUEST_RUSTFLAGS: &str = "-C relocation-model=static -C link-arg=-nostartfiles -C link-arg=-nostdlib \
     -C link-arg=-static -C link-arg=-no-pie -C link-arg=-Wl,-z,max-page-size=4096 \
     -C link-arg=-Wl,-z,separate-code -C link-arg=-Wl,--build-id=none";

/// Cargo options for every bare-metal build (`--release`): the whole
/// program optimised as one unit (fat LTO, one codegen unit), as
/// Firecracker builds its releases. Calls across crates (the switch, the
/// rings, the scheduler; smoltcp and the libos in a guest) are inlined:
/// the 64 KiB frames of `bench net`'s switch row go through 10% faster
/// under TCG, where every call and return costs a lookup. Here rather than
/// in Cargo.toml's release profile, which the host's release builds (the
/// shim, the fuzzers) share.
pub const BARE_METAL_PROFILE: [&str; 4] = ["--config", "profile.release.lto=\"fat\"", "--config", "profile.release.codegen-units=1"];

/// Locks `m`, ignoring poisoning (a panicked build left nothing half-cached).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds the hypervisor and returns the path of its ELF
/// (`target/hv/x86_64-unknown-linux-gnu/release/hypervisor`).
pub fn build_hypervisor() -> Result<PathBuf> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = lock(&BUILT);
    if let Some(path) = &*built {
        return Ok(path.clone());
    }
    let root = workspace_root();
    if root.to_string_lossy().contains(char::is_whitespace) {
        bail!("the workspace path {} contains whitespace, which RUSTFLAGS cannot carry", root.display());
    }
    run(cargo()
        .args(["build", "--release", "-p", "hypervisor", "--bin", "hypervisor", "--features", "bare-metal"])
        .args(BARE_METAL_PROFILE)
        .args(["--target", TARGET, "--target-dir", "target/hv"])
        .env("RUSTFLAGS", hypervisor_rustflags(root)))?;
    let path = root.join("target/hv").join(TARGET).join("release/hypervisor");
    *built = Some(path.clone());
    Ok(path)
}

/// The containerd shim's binary name (`shim/`): containerd finds the
/// runtime `io.containerd.hive.v1` on `PATH` by it.
pub const SHIM_BINARY: &str = "containerd-shim-hive-v1";

/// Builds the containerd shim (a host binary, debug profile) and returns
/// its path (`target/debug/containerd-shim-hive-v1`).
pub fn build_shim() -> Result<PathBuf> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = lock(&BUILT);
    if let Some(path) = &*built {
        return Ok(path.clone());
    }
    run(cargo().args(["build", "-p", "shim", "--bin", SHIM_BINARY]))?;
    let path = workspace_root().join("target/debug").join(SHIM_BINARY);
    *built = Some(path.clone());
    Ok(path)
}

/// The apps under `apps/` (directories with a Cargo.toml), sorted.
pub fn apps() -> Result<Vec<String>> {
    let dir = workspace_root().join("apps");
    let mut apps = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.join("Cargo.toml").is_file()
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            apps.push(name.to_string());
        }
    }
    apps.sort();
    Ok(apps)
}

/// Builds apps (one cargo invocation for all of them) and packs each into a
/// Hermit image `target/guests/<app>.hermit`; returns the image paths in the
/// order asked.
pub fn build_apps(names: &[&str]) -> Result<Vec<PathBuf>> {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let known = apps()?;
    for name in names {
        if !known.iter().any(|a| a == name) {
            bail!("app '{name}' does not exist (apps: {})", known.join(", "));
        }
    }
    let mut guard = lock(&BUILT);
    let built = guard.get_or_insert_with(HashMap::new);
    let mut missing: Vec<&str> = names.iter().copied().filter(|n| !built.contains_key(*n)).collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        let mut cmd = cargo();
        cmd.args(["build", "--release"]).args(BARE_METAL_PROFILE);
        for app in &missing {
            cmd.args(["-p", app]);
        }
        cmd.args(["--target", TARGET, "--target-dir", "target/guest"]).env("RUSTFLAGS", GUEST_RUSTFLAGS);
        run(&mut cmd)?;
        let root = workspace_root();
        for app in missing {
            let elf_path = app_elf(app);
            let elf = fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
            let image = pack::hermit_image(app, &elf, &[]).with_context(|| format!("packing {app}"))?;
            let path = root.join("target/guests").join(format!("{app}.hermit"));
            pack::write_atomically(&path, &image)?;
            built.insert(app.to_string(), path);
        }
    }
    Ok(names.iter().map(|n| built[*n].clone()).collect())
}

/// The ELF `build_apps` built for `app` (with its DWARF, for symbolizing).
pub fn app_elf(app: &str) -> PathBuf {
    workspace_root().join("target/guest").join(TARGET).join("release").join(app)
}

/// A guest crate to build: an app under `apps/`, or a crate outside this
/// workspace (`--path DIR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum App {
    Workspace(String),
    Path(PathBuf),
}

/// Builds `app` into its Hermit image; returns its name and the image's
/// path (`target/guests/<name>.hermit`).
pub fn build_app(app: &App) -> Result<(String, PathBuf)> {
    match app {
        App::Workspace(name) => Ok((name.clone(), build_apps(&[name.as_str()])?.remove(0))),
        App::Path(dir) => build_external(dir),
    }
}

/// Builds the guest crate in `dir`, which lies outside this workspace (its
/// own `Cargo.toml`, depending on `libos` by path or git), with the flags
/// and target of the apps under `apps/`, into `target/ext/<name>`, and
/// packs it into `target/guests/<name>.hermit`, where `<name>` is its
/// package name. Returns the name and the image's path.
///
/// cargo runs in `dir`, so the crate's own `.cargo/config.toml` and lock
/// file count, not ours. What such a crate needs is in README's "A guest in
/// its own repository".
pub fn build_external(dir: &Path) -> Result<(String, PathBuf)> {
    if !dir.join("Cargo.toml").is_file() {
        bail!("{}: no Cargo.toml there (--path takes the directory of a guest crate)", dir.display());
    }
    // Absolute: cargo runs in `dir`.
    let dir = &fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let toml: toml::Table = text.parse().with_context(|| format!("parsing {}", manifest.display()))?;
    let Some(name) = toml.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) else {
        bail!("{}: no [package] name (--path takes a guest crate, not a workspace)", manifest.display());
    };
    let name = name.to_string();
    if apps()?.contains(&name) {
        bail!(
            "{}: package `{name}` has the name of this workspace's apps/{name}, whose image is also \
             target/guests/{name}.hermit; rename the package",
            manifest.display()
        );
    }
    let root = workspace_root();
    let target_dir = root.join("target/ext").join(&name);
    // The libos needs our copy of smoltcp (libos/smoltcp/PATCHES.md: a
    // TCP peer could otherwise crash the guest); a crate outside the
    // workspace does not see our [patch], so it is given on the command line.
    let smoltcp = toml::Value::String(root.join("libos/smoltcp").display().to_string());
    let mut cmd = cargo();
    cmd.current_dir(dir)
        .args(["build", "--release"])
        .args(BARE_METAL_PROFILE)
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--bin", &name, "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .arg("--config")
        .arg(format!("patch.crates-io.smoltcp.path={smoltcp}"))
        .env("RUSTFLAGS", GUEST_RUSTFLAGS);
    if let Err(e) = run(&mut cmd) {
        // The two things a crate outside the workspace most likely lacks.
        let mut hints = String::new();
        let above = dir.ancestors().skip(1).find(|a| a.join("Cargo.toml").is_file());
        if let (false, Some(above)) = (toml.contains_key("workspace"), above) {
            hints +=
                &format!("\n  hint: it has no [workspace] table, so cargo takes it for a member of {}", above.join("Cargo.toml").display());
        }
        let panic = toml.get("profile").and_then(|p| p.get("release")).and_then(|r| r.get("panic")).and_then(|p| p.as_str());
        if panic != Some("abort") {
            hints += "\n  hint: it does not set panic = \"abort\" in [profile.release]; the libos has no unwinder";
        }
        bail!("building the guest crate {}: {e:#}{hints}", manifest.display());
    }
    let elf_path = target_dir.join(TARGET).join("release").join(&name);
    let elf = fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
    let image = pack::hermit_image(&name, &elf, &[]).with_context(|| format!("packing {name}"))?;
    let path = root.join("target/guests").join(format!("{name}.hermit"));
    pack::write_atomically(&path, &image)?;
    Ok((name, path))
}
