//! libFuzzer entry point for the `entry_name` target; the harness is `ferry_fuzz::entry_name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::entry_name(data));
