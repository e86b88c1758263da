#!/usr/bin/env bash
# test.sh — every test of the workspace: unit tests, the end-to-end tests and the short stress
# run. The end-to-end tests start the real binaries, so they are built first.
#
# Usage: scripts/test.sh [cargo test arguments...]    e.g. scripts/test.sh -- --nocapture
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
