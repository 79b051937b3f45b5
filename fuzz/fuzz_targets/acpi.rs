//! libFuzzer entry point for [`fuzz::acpi`] (built by `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::acpi(data));
