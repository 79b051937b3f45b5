//! The short fuzz run that `cargo test` (and so `cargo xtask test`) does:
//! every target over its seeds, its checked-in corpus (regression inputs
//! included) and a few thousand deterministic mutations. A target that
//! panics fails its test. The long, coverage-guided runs are
//! `cargo xtask fuzz` (see fuzz/README.md).

/// Mutated inputs per target: keeps the whole file to a few seconds in a
/// debug build on two cores.
const MUTATIONS: u64 = 10_000;

fn run(name: &str) {
    run_n(name, MUTATIONS);
}

fn run_n(name: &str, mutations: u64) {
    // A different sequence on every day would hide flakiness; a fixed one
    // per target keeps failures reproducible.
    let seed = name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let r = fuzz::short_run(name, mutations, seed);
    eprintln!("{name}: {} inputs in {:.2} s", r.inputs, r.seconds);
}

#[test]
fn image() {
    run("image");
}

#[test]
fn manifest() {
    run("manifest");
}

#[test]
fn hypercall() {
    run("hypercall");
}

#[test]
fn ring() {
    run("ring");
}

#[test]
fn switch() {
    run("switch");
}

#[test]
fn csum() {
    run("csum");
}

/// Fewer: its inputs inflate to up to 1.25 MiB, and the hypervisor's
/// CRC-32 over that (and the TOML parse of a hostile hermit.toml) takes a
/// while unoptimised: about 3 ms an input on average, four times the image
/// target's.
#[test]
fn gzip() {
    run_n("gzip", 2_000);
}

#[test]
fn snapshot() {
    run("snapshot");
}

#[test]
fn control() {
    run("control");
}

/// Fewer: its inputs carry QEMU's DSDTs (7 and 11 KB), which the
/// checksum and the `\_S5_` search go through byte by byte, unoptimised:
/// about 0.7 ms an input.
#[test]
fn acpi() {
    run_n("acpi", 4_000);
}

#[test]
fn every_target_has_a_short_run() {
    let names: Vec<&str> = fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["image", "manifest", "hypercall", "ring", "switch", "control", "gzip", "acpi", "csum", "snapshot"]);
}

#[test]
#[should_panic(expected = "no fuzz target")]
fn an_unknown_target_fails() {
    fuzz::short_run("nonexistent", 1, 1);
}

/// The harness can fail: a target that panics on some mutated input
/// fails the run.
#[test]
#[should_panic(expected = "planted bug")]
fn a_panicking_target_fails_the_run() {
    fn buggy(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == [0xab, 0xcd]), "planted bug");
    }
    fuzz::run_mutations(buggy, &[vec![0; 8], vec![0xab; 4]], 100_000, 7);
}
