//! `cargo fuzz run stream_heads`: see `fuzz/checks.rs` for the oracle.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::stream_heads(data));
