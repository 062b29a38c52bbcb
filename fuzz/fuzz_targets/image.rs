#![no_main]
//! See `mlq::fuzzing::image`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mlq::fuzzing::image(data));
