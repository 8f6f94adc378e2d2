//! libFuzzer entry point for the `checkin` target; the harness is `ferry_fuzz::checkin`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::checkin(data));
