#![no_main]
//! See `mlq::fuzzing::params`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlq::fuzzing::params(data));
