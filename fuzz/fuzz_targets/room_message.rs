//! A text frame of the room protocol: `ClientMessage::from_json` on arbitrary bytes, then each
//! parsed message handled by a `Meeting` from every kind of sender, checking its invariants.
#![no_main]

#[path = "../src/checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::room_message(data));
