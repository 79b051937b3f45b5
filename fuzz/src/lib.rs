//! Fuzz targets for everything that parses guest- or tenant-supplied bytes.
//!
//! Each target is a plain `pub fn <target>(data: &[u8])` that must never
//! panic on any input; it panics (an assertion) when an invariant of the
//! code under test breaks. The same functions run under three drivers:
//!
//! - libFuzzer (`fuzz_targets/*.rs`, feature `libfuzzer`), coverage-guided,
//!   built by `cargo xtask fuzz` with sanitizer-coverage RUSTFLAGS on the
//!   stable toolchain;
//! - the short in-house run in `cargo test` ([`short_run`]: the seeds, the
//!   checked-in corpus and some thousands of mutations of them);
//! - `fuzz-seeds`, which writes [`seeds`] as files for libFuzzer's corpus.
//!
//! | target | what it feeds | invariants |
//! |---|---|---|
//! | [`image`] | `Image::parse`, `LoadedImage::load`, `Guest::create` | the load plan is sane; loading and creating a guest leak no frame |
//! | [`manifest`] | `xtask::manifest::parse`, `parse_size`, `parse_forward` | accepted manifests obey every documented bound; errors point at a real line |
//! | [`hypercall`] | `Guest::handle_exit` with arbitrary registers | never resumes at a non-canonical ip; charges stay under the limit; a stop reason reads back from its JSON; destroying returns every frame |
//! | [`ring`] | `abi::ring::Consumer` (and `Producer`) over a lying peer | no access outside the ring; lengths checked; indices move only as documented |
//! | [`switch`] | `net::switch::Switch` operations and frames | never delivers across tenants or back to the sender; counters add up |
//! | [`control`] | `control::Session` bytes and requests, over real image loading and guest creation | every answer is one line that reads back as an `abi::control::Response` and prints back the same; uploads stay within the room offered; stopping and unloading everything returns every frame |
//! | [`acpi`] | `acpi::parse` and `find_rsdp_in_bios` over tables laid out behind a harness-written RSDP and root (checksums fixed up on request), or a raw BIOS area | no panic; processors capped, enabled or online-capable, no APIC ID twice; MCFG regions ordered and aligned; every error one line naming its table |
//! | [`csum`] | `net::csum::fill` and `verify` over IPv4 frames with fuzz-written fields, overlays and cuts | no panic; `fill` touches only checksum fields and what it fills verifies; malformed frames stay unchanged |
//! | [`snapshot`] | `abi::snapshot::Snapshot::parse` over raw, resealed (length and digest made right) and `Writer`-built files | no panic; a resealed file is never "altered"; what is accepted is within every bound, `page` finds exactly its pages, and it writes back byte for byte |
//! | [`gzip`] | `Image::parse_within` (64 KiB to 16 MiB budgets) over gzip files with fuzz-written deflate streams and trailers | never allocates past the budget; refuses with the error the sizes call for |

pub mod deflate;
pub mod heap;
pub mod images;
pub mod input;
pub mod mem;
pub mod mutate;
mod targets;

pub use targets::acpi::acpi;
pub use targets::control::control;
pub use targets::csum::csum;
pub use targets::gzip::gzip;
pub use targets::hypercall::hypercall;
pub use targets::image::image;
pub use targets::manifest::manifest;
pub use targets::ring::ring;
pub use targets::snapshot::snapshot;
pub use targets::switch::switch;

/// A fuzz target: consumes one input, panics on a bug.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("image", image),
    ("manifest", manifest),
    ("hypercall", hypercall),
    ("ring", ring),
    ("switch", switch),
    ("control", control),
    ("gzip", gzip),
    ("acpi", acpi),
    ("csum", csum),
    ("snapshot", snapshot),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}

/// Seed inputs for `name`, generated in code (valid images, manifests,
/// operation sequences). Empty for an unknown name.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "image" => targets::image::seeds(),
        "manifest" => targets::manifest::seeds(),
        "hypercall" => targets::hypercall::seeds(),
        "ring" => targets::ring::seeds(),
        "switch" => targets::switch::seeds(),
        "control" => targets::control::seeds(),
        "gzip" => targets::gzip::seeds(),
        "acpi" => targets::acpi::seeds(),
        "csum" => targets::csum::seeds(),
        "snapshot" => targets::snapshot::seeds(),
        _ => Vec::new(),
    }
}

/// The checked-in corpus of `name` (`fuzz/corpus/<name>/`: hand-written
/// seeds and the inputs of crashes found and fixed).
pub fn checked_in_corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut files: Vec<_> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// What a [`short_run`] did.
#[derive(Clone, Copy, Debug)]
pub struct ShortRun {
    pub inputs: u64,
    pub seconds: f64,
}

/// Runs target `name` over its seeds, its checked-in corpus and then
/// `mutations` inputs mutated from them (deterministic: `rng_seed`).
/// A bug panics, naming the input. Panics on an unknown target.
pub fn short_run(name: &str, mutations: u64, rng_seed: u64) -> ShortRun {
    let t = target(name).unwrap_or_else(|| panic!("no fuzz target '{name}'"));
    let mut corpus = seeds(name);
    corpus.extend(checked_in_corpus(name));
    assert!(!corpus.is_empty(), "target '{name}' has no seeds");
    run_mutations(t, &corpus, mutations, rng_seed)
}

/// Runs `t` over `corpus` and then `mutations` mutated inputs. A panic in
/// `t` prints the input (hex) that caused it and propagates.
pub fn run_mutations(t: Target, corpus: &[Vec<u8>], mutations: u64, rng_seed: u64) -> ShortRun {
    let start = std::time::Instant::now();
    let mut rng = mutate::Rng::new(rng_seed);
    let mut inputs = 0;
    for i in 0..corpus.len() as u64 + mutations {
        let input = match corpus.get(i as usize) {
            Some(seed) => seed.clone(),
            None => mutate::mutate(&mut rng, corpus),
        };
        let outcome = std::panic::catch_unwind(|| t(&input));
        if let Err(panic) = outcome {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("input {i} ({} bytes) failed: {hex}", input.len());
            std::panic::resume_unwind(panic);
        }
        inputs += 1;
    }
    ShortRun { inputs, seconds: start.elapsed().as_secs_f64() }
}
