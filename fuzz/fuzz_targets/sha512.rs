//! libFuzzer entry point for the `sha512` target; the harness is `ferry_fuzz::sha512`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::sha512(data));
