//! The benchmarks run end to end on their short setting and write
//! well-formed JSON with both sides' figures. (They are not timed here:
//! figures come from `cargo xtask bench`, see README.)

use xtask::bench::{BenchArgs, Which, report_path};

fn run(which: Which) -> serde_json::Value {
    let args = BenchArgs { which, quick: true, accel: xtask::Accel::Auto, smp: 1, memory: "512M".into(), linux_append: None };
    let path = report_path(which);
    let _ = std::fs::remove_file(&path);
    xtask::bench::run(&args).unwrap_or_else(|e| panic!("bench {which:?} failed: {e:#}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0, "{what} = {x}");
    x
}

// One test, so the two benchmarks never run side by side and disturb each other.
#[test]
fn hypercall_and_boot_benchmarks_measure_both_sides_and_write_json() {
    let h = run(Which::Hypercall);
    assert_eq!(h["bench"], "hypercall");
    let ours = positive(&h["ours"]["cycles_per_call"], "our cycles per hypercall");
    let linux = positive(&h["linux"]["cycles_per_call"], "Linux cycles per getppid");
    let ratio = positive(&h["ratio"], "ratio");
    assert!((ratio - ours / linux).abs() < 0.01 * ratio + 0.01, "ratio {ratio} != {ours} / {linux}");

    let b = run(Which::Boot);
    assert_eq!(b["bench"], "boot");
    let rows = b["ours"].as_array().expect("ours is a list of runs");
    assert!(!rows.is_empty());
    for row in rows {
        positive(&row["guests"], "guests");
        positive(&row["per_guest_us"], "per guest");
    }
    positive(&b["linux"]["median_us"], "Linux fork+exec median");
}
