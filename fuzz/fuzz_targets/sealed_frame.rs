//! A binary frame of a sealed room: `balint_proto::sealed::decode` on arbitrary bytes, and the
//! round trip of whatever decodes.
#![no_main]

#[path = "../src/checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::sealed_frame(data));
