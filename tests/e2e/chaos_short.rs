//! The stress tool's short chaos mode (issue 4, acceptance 4): under load from keep-alive and
//! fresh connections, 15 `kill -9`s of a random proxy worker, `cached` or proxy master, each
//! restored before the next; every completed response SHA-256 verified (0 mismatches), the pool
//! entirely free afterwards, `/dev/shm` holding only the live instance's objects during the run
//! and nothing after the stop (the tool checks all of it and exits non-zero otherwise).

use shmproxy_tests::harness::with_deadline;
use std::process::Command;
use std::time::Duration;

#[test]
fn chaos_short_mode_passes() {
    with_deadline(Duration::from_secs(240), || {
        let out = Command::new(env!("CARGO_BIN_EXE_stress"))
            .args(["--chaos", "--short"])
            .output()
            .expect("running the stress tool");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "stress --chaos --short failed ({:?})\n--- stdout\n{report}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = report
            .lines()
            .find(|l| l.starts_with("chaos summary:"))
            .unwrap_or_else(|| panic!("no summary line in\n{report}"));
        assert!(
            summary.contains("kills 15 ")
                && summary.contains("mismatches 0,")
                && summary.contains("leaks 0,")
                && summary.ends_with(": OK"),
            "{summary}"
        );
    });
}
