//! `cargo fuzz run pool_layout`: see `fuzz/checks.rs` for the oracle.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::pool_layout(data));
