//! libFuzzer entry point for [`fuzz::csum`] (built by `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::csum(data));
