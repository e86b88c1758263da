#!/usr/bin/env bash
# stress.sh — the segment-pool stress test, on release builds.
#
# Builds every binary of the workspace in release mode, then runs target/release/stress with
# the given arguments: by default the full sweep (1, 2, 7 and 64 segments × 1 KiB, 16 KiB and
# 1 MiB segments) through the real proxy and cached, verifying every body by SHA-256 and the
# pool's free segments. Exit status is stress's: non-zero on any error, mismatch or leak.
#
# Usage: scripts/stress.sh [--short | --long] [--shapes 1x1K,64x1M] [--clients N]
#                          [--requests N] [--duration SECS] ...   (see scripts/stress.sh --help)
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --release --workspace --bins
exec target/release/stress "$@"
