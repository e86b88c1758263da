//! Replays every input kept under `fuzz/regressions/<target>/` (inputs that once made a fuzz
//! target fail) and `fuzz/seeds/<target>/` (the starting corpus) through the same oracles the
//! `cargo fuzz` targets use (`fuzz/checks.rs`), so `cargo test` guards what fuzzing found
//! without needing a nightly toolchain or libFuzzer.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

/// A fuzz oracle: panics when its invariant does not hold for the input.
type Oracle = fn(&[u8]);

const TARGETS: &[(&str, Oracle)] = &[
    ("request_head", checks::request_head),
    ("doorbell", checks::doorbell),
    ("stream_heads", checks::stream_heads),
    ("pool_layout", checks::pool_layout),
    ("policy", checks::policy),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files of `fuzz/<kind>/<target>/`, sorted (README files skipped).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(fuzz_dir().join(kind).join(target))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".md"))
    });
    v.sort();
    v
}

/// Runs every input of `kind` through its target's oracle; reports all failures at once.
fn replay(kind: &str) -> usize {
    let mut failures = Vec::new();
    let mut n = 0;
    for (target, check) in TARGETS {
        for path in inputs(kind, target) {
            let data = fs::read(&path).unwrap();
            n += 1;
            if let Err(e) = panic::catch_unwind(|| check(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target}: {}: {msg}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} input(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

#[test]
fn regressions_stay_fixed() {
    let n = replay("regressions");
    assert!(
        n >= 1,
        "no regression inputs found under {}",
        fuzz_dir().display()
    );
}

#[test]
fn seed_corpus_passes_the_oracles() {
    let n = replay("seeds");
    assert!(
        n >= TARGETS.len(),
        "seed corpus missing under {}",
        fuzz_dir().display()
    );
}

/// The replays above are not vacuous: the code under test does refuse known-bad inputs.
#[test]
fn oracles_reject_what_they_should() {
    // A request head the parser must refuse is never Complete.
    let smuggle =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(
        common::request::parse_head(&checks::LIMITS, smuggle),
        common::request::Parsed::Error(common::request::RejectReason::LengthAndChunked)
    ));
    // A corrupted doorbell is refused.
    let mut d = common::protocol::Doorbell {
        kind: common::protocol::Kind::Request,
        index: 1,
        generation: 2,
        request_id: 3,
        pool_id: 4,
    }
    .encode();
    d[6] = 9;
    assert!(common::protocol::Doorbell::decode(&d).is_err());
    // A layout whose length is one byte short is refused, one that matches is accepted.
    assert!(common::pool::check_layout(4, 4, 4096, 4096, 4096 + 4 * 4096 - 1).is_err());
    assert!(common::pool::check_layout(4, 4, 4096, 4096, 4096 + 4 * 4096).is_ok());
}
