//! A binary frame from a client: `balint_proto::sync::decode_frame`, then `Board::handle_frame`
//! for a reader and a writer, and the decoded updates applied as if relayed by another node.
#![no_main]

#[path = "../src/checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::sync_frame(data));
