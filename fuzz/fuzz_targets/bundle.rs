//! libFuzzer entry point for the `bundle` target; the harness is `ferry_fuzz::bundle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::bundle(data));
