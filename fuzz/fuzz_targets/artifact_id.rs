//! libFuzzer entry point for the `artifact_id` target; the harness is `ferry_fuzz::artifact_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::artifact_id(data));
