//! libFuzzer entry point for the `parts_index` target; the harness is `ferry_fuzz::parts_index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::parts_index(data));
