//! libFuzzer entry point for the `manifest` target; the harness is `ferry_fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::manifest(data));
