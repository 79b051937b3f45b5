//! libFuzzer entry point for [`fuzz::hypercall`] (built by `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::hypercall(data));
