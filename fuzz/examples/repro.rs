//! Runs one target over input files: `cargo run -p fuzz --example repro -- TARGET FILE...`.
fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().expect("usage: repro TARGET FILE...");
    let t = fuzz::target(&name).expect("no such target");
    for f in args {
        let data = std::fs::read(&f).expect("read");
        eprintln!("{f}: {} bytes", data.len());
        t(&data);
    }
}
