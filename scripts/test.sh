#!/usr/bin/env bash
# test.sh — every test of the workspace: unit tests, the end-to-end tests and the short stress
# run, after installing the tools they drive (Debian packages) where they are missing. The
# end-to-end tests start the real binaries, so they are built first. Ends with one line summing
# every test binary's result.
#
# Usage: scripts/test.sh [cargo test arguments...]    e.g. scripts/test.sh -- --nocapture
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
# Tools the tests drive: chromium (the dashboard test), promtool (the metrics test), tmux
# (the pseudo-terminal of the `proxy stats --watch` test) and haproxy (the cluster test).
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v promtool >/dev/null || need+=(prometheus)
command -v tmux >/dev/null || need+=(tmux)
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
