#![no_main]
//! See `mlq::fuzzing::multipart`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlq::fuzzing::multipart(data));
