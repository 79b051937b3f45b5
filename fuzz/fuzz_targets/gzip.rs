//! libFuzzer entry point for [`fuzz::gzip`] (built by `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::gzip(data));
