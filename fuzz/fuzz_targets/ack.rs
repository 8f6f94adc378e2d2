//! libFuzzer entry point for the `ack` target; the harness is `ferry_fuzz::ack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::ack(data));
