//! The segment-pool stress tool in its short mode: several pool shapes, a mix of files from
//! 0 B to 16 MiB plus a missing one, every body verified by SHA-256, the pool all free and
//! nothing left in /dev/shm afterwards (the tool checks and exits non-zero otherwise).

use shmproxy_tests::harness::with_deadline;
use std::process::Command;
use std::time::Duration;

#[test]
fn stress_short_mode_passes() {
    with_deadline(Duration::from_secs(240), || {
        let out = Command::new(env!("CARGO_BIN_EXE_stress"))
            .arg("--short")
            .output()
            .expect("running the stress tool");
        assert!(
            out.status.success(),
            "stress --short failed ({:?})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("overall") && report.contains("OK"),
            "{report}"
        );
    });
}
