#![no_main]
//! See `mlq::fuzzing::csv`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlq::fuzzing::csv(data));
