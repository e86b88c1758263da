//! `cargo fuzz run request_head`: see `fuzz/checks.rs` for the oracle.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::request_head(data));
