#![no_main]
//! See `mlq::fuzzing::zip`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlq::fuzzing::zip(data));
