//! The stress tool's short chaos mode (issue 4, acceptance 4): under load from keep-alive and
//! fresh connections, 15 `kill -9`s of a random proxy worker, `cached` or proxy master, each
//! restored before the next; every completed response SHA-256 verified (0 mismatches), the pool
//! entirely free afterwards, `/dev/shm` holding only the live instance's objects during the run
//! and nothing after the stop (the tool checks all of it and exits non-zero otherwise). With
//! `--origin` (issue 11, acceptance 5) the files come from an origin, so hits are served from the
//! arena, which must pass an audit afterwards with no pin left.

use shmproxy_tests::harness::with_deadline;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn chaos_short_mode_passes() {
    chaos_short(&["--chaos", "--short"]);
}

#[test]
fn chaos_short_mode_passes_with_hits_from_the_arena() {
    let report = chaos_short(&["--chaos", "--short", "--origin"]);
    let arena = report
        .lines()
        .find(|l| l.trim_start().starts_with("arena:"))
        .unwrap_or_else(|| panic!("no arena line in\n{report}"));
    assert!(arena.contains(" 0 pin slots in use"), "{arena}");
}

/// Runs the stress tool with `args`, checks its summary line, returns its report.
fn chaos_short(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let report = Arc::new(Mutex::new(String::new()));
    let out_report = Arc::clone(&report);
    with_deadline(Duration::from_secs(240), move || {
        let out = Command::new(env!("CARGO_BIN_EXE_stress"))
            .args(&args)
            .output()
            .expect("running the stress tool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "stress {args:?} failed ({:?})\n--- stdout\n{text}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = text
            .lines()
            .find(|l| l.starts_with("chaos summary:"))
            .unwrap_or_else(|| panic!("no summary line in\n{text}"));
        assert!(
            summary.contains("kills 15 ")
                && summary.contains("mismatches 0,")
                && summary.contains("leaks 0,")
                && summary.ends_with(": OK"),
            "{summary}"
        );
        *out_report.lock().unwrap() = text;
    });
    let text = report.lock().unwrap().clone();
    text
}
