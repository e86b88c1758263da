#!/usr/bin/env bash
# stress.sh — the segment-pool stress test, on release builds.
#
# Builds every binary of the workspace in release mode, then runs target/release/stress with
# the given arguments: by default the full sweep (1, 2, 7 and 64 segments × 1 KiB, 16 KiB and
# 1 MiB segments) through the real proxy and cached, verifying every body by SHA-256 and the
# pool's free segments. Exit status is stress's: non-zero on any error, mismatch or leak.
#
# --chaos instead kills (kill -9) a random proxy worker, cached or proxy master 120 times under
# load from 16 clients, restoring each, with every completed response SHA-256 verified, then
# checks that the pool is all free and /dev/shm held only the instance's objects (issue 4).
# --chaos --origin serves the same files from an origin server instead of a document root, so
# hits come from the shared arena; the arena is audited afterwards (issue 11).
# --pin-kills N kills a worker holding arena pins N times, then audits the arena (issue 11).
#
# Usage: scripts/stress.sh [--short | --long] [--shapes 1x1K,64x1M] [--clients N]
#                          [--requests N] [--duration SECS] ...   (see scripts/stress.sh --help)
#        scripts/stress.sh --chaos [--short] [--origin] [--kills N] [--kill-interval SECS]
#                          [--victims worker,cached,master] [--shapes 16x64K] ...
#        scripts/stress.sh --pin-kills 100
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --release --workspace --bins
exec target/release/stress "$@"
