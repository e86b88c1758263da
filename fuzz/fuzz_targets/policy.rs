//! `cargo fuzz run policy`: see `fuzz/checks.rs` for the oracle.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::policy(data));
