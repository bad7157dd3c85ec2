//! A room link: `Signer::verify` and `verify_any_room` on arbitrary strings, and the payload
//! parser on arbitrary bytes signed with the secret.
#![no_main]

#[path = "../src/checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::token(data));
