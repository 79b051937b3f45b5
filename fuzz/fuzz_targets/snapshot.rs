//! libFuzzer entry point for [`fuzz::snapshot`] (built by `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::snapshot(data));
