#!/usr/bin/env bash
# fuzz.sh — build and run every cargo-fuzz target of fuzz/ for a given number of executions.
#
# Targets (oracles in fuzz/checks.rs): request_head (the client request-head reader),
# doorbell (the mq message decoder), stream_heads (request/response heads in a segment),
# pool_layout (the pool header's layout validator), policy (HTTP dates, header values and
# cached's cache-policy functions: never a panic, consistent answers).
#
# Usage: scripts/fuzz.sh [RUNS] [TARGET...]          RUNS defaults to 10000000; all targets.
# Env:   FUZZ_TOOLCHAIN  +nightly if a nightly toolchain is installed, else stable with
#                        RUSTC_BOOTSTRAP=1 (libFuzzer needs nightly-only flags)
#        SANITIZER       address (default) | none   (`--sanitizer none` is ~2-3x faster)
#        JOBS            parallel libFuzzer jobs per target (default 1; this box has 2 cores)
#        MAX_TIME        seconds per target, 0 = no limit (default 0)
#        FUZZ_LOG        summary file (default fuzz/fuzz-summary.txt)
#
# Each target keeps its corpus in fuzz/corpus/<target> (git-ignored) and starts from the
# committed seeds in fuzz/seeds/<target>. A crash leaves its input in fuzz/artifacts/<target>/;
# copy it to fuzz/regressions/<target>/ so that `cargo test` replays it
# (tests/fuzz_regressions.rs). Exit status: 0 when every target ran to the end without a crash.
set -uo pipefail
export LC_ALL=C

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"

RUNS=${1:-10000000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(request_head doorbell stream_heads pool_layout policy)
SANITIZER=${SANITIZER:-address}
JOBS=${JOBS:-1}
MAX_TIME=${MAX_TIME:-0}
FUZZ_LOG=${FUZZ_LOG:-$ROOT/fuzz/fuzz-summary.txt}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz || exit 2
fi
if [ -z "${FUZZ_TOOLCHAIN+x}" ]; then
    if rustup run nightly rustc --version >/dev/null 2>&1; then FUZZ_TOOLCHAIN=+nightly; else FUZZ_TOOLCHAIN=; fi
fi
if [ -z "$FUZZ_TOOLCHAIN" ]; then
    export RUSTC_BOOTSTRAP=1 # stable rustc accepts -Z flags with this
fi
FUZZ=(cargo $FUZZ_TOOLCHAIN fuzz)

echo "fuzz.sh: $(rustc $FUZZ_TOOLCHAIN --version), sanitizer=$SANITIZER, runs=$RUNS, jobs=$JOBS" | tee -a "$FUZZ_LOG"
status=0
for t in "${TARGETS[@]}"; do
    "${FUZZ[@]}" build --sanitizer "$SANITIZER" "$t" >/dev/null 2>&1 || { echo "fuzz.sh: build of $t failed" >&2; exit 2; }
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$ROOT/fuzz/fuzz-$t.log"
    args=(-runs="$RUNS" -max_total_time="$MAX_TIME" -print_final_stats=1)
    [ "$t" = request_head ] && args+=(-dict="$ROOT/fuzz/http.dict")
    [ "$t" = policy ] && args+=(-dict="$ROOT/fuzz/policy.dict")
    [ "$JOBS" -gt 1 ] && args+=(-jobs="$JOBS" -workers="$JOBS")
    # With -jobs each job runs RUNS executions; without, the single process does.
    start=$(date +%s)
    "${FUZZ[@]}" run --sanitizer "$SANITIZER" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    execs=$(grep -ho 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    [ -z "$execs" ] && execs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1)
    crashes=$(ls "artifacts/$t" 2>/dev/null | grep -c -E '^(crash|leak|timeout|oom)-' || true)
    corpus=$(ls "corpus/$t" | wc -l)
    line="$t: rc=$rc execs=${execs:-?} seconds=$secs crashes=$crashes corpus=$corpus"
    echo "$line" | tee -a "$FUZZ_LOG"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        grep -E 'panicked|SUMMARY|Test unit written' "$log" | head -5
    fi
done
exit $status
