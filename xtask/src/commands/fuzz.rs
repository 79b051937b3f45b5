//! `cargo xtask fuzz <target>|all [--runs N] [--time SECS]`: coverage-guided
//! fuzzing with libFuzzer (`libfuzzer-sys`) on the stable toolchain.
//!
//! cargo-fuzz needs nightly only for `-Zsanitizer`; the coverage
//! instrumentation libFuzzer feeds on is LLVM's SanitizerCoverage pass,
//! which stable rustc runs with `-Cpasses=sancov-module` and `-Cllvm-args`.
//! So we build the `fuzz` crate's binaries with those flags (and
//! `--cfg fuzzing`, debug assertions and overflow checks) for an explicit
//! `--target`, so that build scripts and proc macros stay uninstrumented,
//! into `target/fuzz/build`. No AddressSanitizer: the code under test is
//! safe Rust, where a memory error would show as a panic anyway.
//!
//! For each target: generated seeds go to `target/fuzz/corpus/<target>/`
//! (libFuzzer adds what it finds there), `fuzz/corpus/<target>/` (checked
//! in: hand-written seeds and regression inputs) is read too, crashes land
//! in `target/fuzz/artifacts/<target>/`, and libFuzzer's output in
//! `target/fuzz/logs/<target>.log`.
//!
//! A module of the `cargo xtask` binary (not of the library).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// The fuzz targets (the `fuzz` crate's `fuzz_<name>` binaries).
pub const TARGETS: &[&str] = &["image", "manifest", "hypercall", "ring", "switch", "control", "gzip", "acpi", "csum", "snapshot"];

/// SanitizerCoverage as cargo-fuzz sets it up, minus the nightly-only parts.
pub const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

const HOST: &str = "x86_64-unknown-linux-gnu";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// A target (image, manifest, hypercall, ring, switch, control, gzip, acpi, csum, snapshot) or `all`.
    pub target: String,
    /// Stop each target after this many inputs.
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// Stop each target after this many seconds (default 60 when --runs is not given).
    #[arg(long, value_name = "SECS")]
    pub time: Option<u64>,
}

/// What one campaign did.
#[derive(Debug)]
pub struct Outcome {
    pub target: String,
    pub inputs: u64,
    pub seconds: f64,
    pub execs_per_sec: f64,
    pub corpus: usize,
    pub crashes: Vec<PathBuf>,
}

/// One campaign's figures as a table row.
fn row(o: &Outcome) -> String {
    format!("{:<10} {:>12} {:>9.0} {:>10.0} {:>7} {:>8}", o.target, o.inputs, o.seconds, o.execs_per_sec, o.corpus, o.crashes.len())
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.target == "all" {
        TARGETS.to_vec()
    } else if TARGETS.contains(&args.target.as_str()) {
        vec![args.target.as_str()]
    } else {
        bail!("no fuzz target '{}' (targets: {}, or all)", args.target, TARGETS.join(", "));
    };
    let time = match (args.runs, args.time) {
        (None, None) => Some(60),
        (_, t) => t,
    };
    let root = xtask::workspace_root();
    let dir = root.join("target/fuzz");

    // Seeds, with a plain build.
    xtask::run(xtask::cargo().args(["run", "-q", "-p", "fuzz", "--bin", "fuzz-seeds", "--"]).arg(dir.join("corpus")).args(&targets))?;
    // The instrumented libFuzzer binaries (only those: `fuzz-seeds` has no
    // libFuzzer runtime to link the coverage hooks against).
    let mut build = xtask::cargo();
    build.env("RUSTFLAGS", RUSTFLAGS).env("CARGO_TARGET_DIR", dir.join("build")).args([
        "build",
        "--release",
        "-p",
        "fuzz",
        "--features",
        "libfuzzer",
        "--target",
        HOST,
    ]);
    for t in &targets {
        build.arg("--bin").arg(format!("fuzz_{t}"));
    }
    xtask::run(&mut build)?;

    let mut outcomes = Vec::new();
    for t in &targets {
        let o = campaign(&dir, root, t, args.runs, time)?;
        eprintln!("fuzz: {}", row(&o));
        outcomes.push(o);
    }
    println!("{:<10} {:>12} {:>9} {:>10} {:>7} {:>8}", "target", "inputs", "seconds", "exec/s", "corpus", "crashes");
    for o in &outcomes {
        println!("{}", row(o));
    }
    let crashes: Vec<String> = outcomes.iter().flat_map(|o| &o.crashes).map(|p| p.display().to_string()).collect();
    if !crashes.is_empty() {
        bail!(
            "fuzzing found {} crash(es); reproduce with the binary in target/fuzz/build and the input:\n  {}",
            crashes.len(),
            crashes.join("\n  ")
        );
    }
    Ok(())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    v
}

/// Longest input libFuzzer makes for `target`: firmware tables need room
/// for a whole DSDT (QEMU q35's alone is 11 KB), snapshots for a few
/// pages (4 KiB each); the rest stay small, which keeps them fast.
fn max_len(target: &str) -> u32 {
    if matches!(target, "acpi" | "snapshot") { 32 * 1024 } else { 8192 }
}

/// Runs one target; returns what libFuzzer reported.
fn campaign(dir: &Path, root: &Path, target: &str, runs: Option<u64>, time: Option<u64>) -> Result<Outcome> {
    let bin = dir.join(format!("build/{HOST}/release/fuzz_{target}"));
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&artifacts)?;
    std::fs::create_dir_all(&logs)?;
    let before = files(&artifacts);

    let mut cmd = Command::new(&bin);
    cmd.arg(&corpus);
    let checked_in = root.join("fuzz/corpus").join(target);
    if checked_in.is_dir() {
        cmd.arg(&checked_in);
    }
    let mut prefix = artifacts.as_os_str().to_owned();
    prefix.push("/");
    let mut artifact_prefix = std::ffi::OsString::from("-artifact_prefix=");
    artifact_prefix.push(prefix);
    cmd.arg(artifact_prefix)
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-max_len={}", max_len(target)));
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    if let Some(t) = time {
        cmd.arg(format!("-max_total_time={t}"));
    }
    let log = logs.join(format!("{target}.log"));
    // One file, both streams, in order.
    let file = std::fs::File::create(&log)?;
    cmd.stdout(file.try_clone()?).stderr(file);
    xtask::echo(&cmd);
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("could not start {}", bin.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let stat = |key: &str| -> Option<u64> {
        text.lines().rev().find_map(|l| l.strip_prefix(&format!("stat::{key}:"))).and_then(|v| v.trim().parse().ok())
    };
    let crashes: Vec<PathBuf> = files(&artifacts).into_iter().filter(|p| !before.contains(p)).collect();
    // libFuzzer exits 72 when interrupted (Ctrl-C), after its final stats.
    let interrupted = status.code() == Some(72);
    if interrupted {
        eprintln!("fuzz {target}: interrupted");
    } else if !status.success() && crashes.is_empty() {
        bail!("fuzz_{target} failed ({status}) without leaving an input; see {}", log.display());
    }
    let inputs = stat("number_of_executed_units").unwrap_or(0);
    Ok(Outcome {
        target: target.to_string(),
        inputs,
        seconds,
        execs_per_sec: stat("average_exec_per_sec").map_or(inputs as f64 / seconds.max(1e-9), |v| v as f64),
        corpus: files(&corpus).len(),
        crashes,
    })
}
