#!/usr/bin/env bash
# soak.sh — the soak test (issue 4, acceptance 9): N requests (default 1,000,000) from C
# concurrent keep-alive clients (default 100) against the real release daemons, then a report
# of errors and of the RSS and open file descriptors of every shmproxy process (master,
# workers, cached) at start and end.
#
# Load: ApacheBench (`ab`, package apache2-utils), one `ab -k` per object so the mix covers a
# small object, one a little over a chunk slot, and one over a whole segment (several chunks).
# MODE=files (the default): the objects are files of a document root: the first request of
# each crosses the shared-memory pipeline (segment lease, doorbell, cached's cache, chunked
# handoff), and cached then publishes the file in the arena, so the later ones are arena hits
# (a worker stats the file and sends it from shared memory). MODE=origin: the same objects
# come from an origin server (python3's http.server, `Cache-Control: max-age=86400`), so the
# workers answer every hit from the arena without a stat. `arena_hits` is in the stats line.
# `ab` checks each response's length against the first one (a short or wrong-sized body is a
# "Failed request").
#
# RSS and fds are sampled after a warm-up (so allocator arenas and caches are populated) and
# at the end; samples every SAMPLE_SECS go to $OUT/samples.csv.
#
# Usage: scripts/soak.sh [REQUESTS] [CLIENTS]
# Env:   MODE [files] or origin   NO_BUILD=1 (use existing target/release binaries)  WORKERS [2]
#        THREADS [64]  SEGMENTS [128]  SEGMENT_SIZE [262144]  CACHED_THREADS [128]
#        WARMUP [20000]  SAMPLE_SECS [10]  OUT [/tmp/soak-PID]
#        RSS_SLACK_KB [16384] growth of any process's RSS above which the run fails
# Exit status: 0 when there were no errors, no fd growth and no RSS growth past the slack.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${1:-1000000}
CLIENTS=${2:-100}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-64}
SEGMENTS=${SEGMENTS:-128}
SEGMENT_SIZE=${SEGMENT_SIZE:-262144}
CACHED_THREADS=${CACHED_THREADS:-128}
WARMUP=${WARMUP:-20000}
SAMPLE_SECS=${SAMPLE_SECS:-10}
RSS_SLACK_KB=${RSS_SLACK_KB:-16384}
OUT=${OUT:-/tmp/soak-$$}
MODE=${MODE:-files}
case "$MODE" in files | origin) ;; *) echo "soak.sh: MODE is files or origin, not $MODE" >&2; exit 2 ;; esac
NAME=soak-$$
mkdir -p "$OUT/www"

for tool in ab python3; do
    command -v "$tool" >/dev/null || { echo "soak.sh: $tool not found (apt-get install -y apache2-utils python3)" >&2; exit 2; }
done
if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release --workspace --bins)
fi
BIN="$ROOT/target/release"

# The objects: name and size.
OBJECTS=(small.txt:1024 slot.bin:70000 multi.bin:700000 page.html:16384)
for o in "${OBJECTS[@]}"; do
    head -c "${o#*:}" /dev/urandom >"$OUT/www/${o%%:*}"
done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$OUT/soak.toml" <<EOF
[proxy]
EOF

CACHED_PID=""
PROXY_PID=""
ORIGIN_PID=""
cleanup() {
    for p in $PROXY_PID $CACHED_PID $ORIGIN_PID; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $PROXY_PID $CACHED_PID; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    local left
    left=$(ls /dev/shm 2>/dev/null | grep -c "^$NAME\." || true)
    [ "$left" = 0 ] || echo "soak.sh: $left object(s) of $NAME left in /dev/shm" >&2
}
trap cleanup EXIT

SOURCE=(--root "$OUT/www")
if [ "$MODE" = origin ]; then
    OPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    python3 - "$OPORT" "$OUT/www" 2>"$OUT/origin.log" <<'EOF' &
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def end_headers(self):
        self.send_header("Cache-Control", "max-age=86400")
        super().end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                functools.partial(H, directory=sys.argv[2])).serve_forever()
EOF
    ORIGIN_PID=$!
    SOURCE=(--origin "http://127.0.0.1:$OPORT")
fi
"$BIN/cached" --instance "$NAME" "${SOURCE[@]}" --threads "$CACHED_THREADS" 2>"$OUT/cached.log" &
CACHED_PID=$!
"$BIN/proxy" --config "$OUT/soak.toml" --instance "$NAME" --listen "127.0.0.1:$PORT" \
    --workers "$WORKERS" --threads "$THREADS" --segments "$SEGMENTS" \
    --segment-size "$SEGMENT_SIZE" 2>"$OUT/proxy.log" &
PROXY_PID=$!
for _ in $(seq 200); do
    code=$(python3 - "$PORT" <<'EOF' 2>/dev/null || true
import sys, http.client
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("GET", "/small.txt"); print(c.getresponse().status)
EOF
)
    [ "$code" = 200 ] && break
    sleep 0.1
done
[ "$code" = 200 ] || { echo "soak.sh: daemons not serving"; cat "$OUT"/*.log; exit 2; }

# pid role rss_kb fds for every shmproxy process.
sample() {
    local pids="$PROXY_PID $(pgrep -P "$PROXY_PID" | tr '\n' ' ') $CACHED_PID"
    for p in $pids; do
        local role=worker
        [ "$p" = "$PROXY_PID" ] && role=master
        [ "$p" = "$CACHED_PID" ] && role=cached
        local rss fds
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        fds=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
        echo "$p $role $rss $fds"
    done
}
stats() {
    python3 - "$PORT" <<'EOF'
import sys, json, http.client
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
c.request("GET", "/__shmproxy/stats"); s = json.load(c.getresponse())
p, q = s["pool"], s["proxy"]
print(f"pool free {p['free']}/{p['segments']} in_use {p['in_use']} quarantined {p['quarantined']}; "
      f"requests {q['requests']} 2xx {q['responses_2xx']} 4xx {q['responses_4xx']} 5xx {q['responses_5xx']} "
      f"worker_restarts {q['worker_restarts']} transfers_aborted {q['transfers_aborted']} "
      f"pool_acquire_timeouts {q['pool_acquire_timeouts']} arena_hits {q['arena_hits']}")
EOF
}

run_ab() { # requests clients -> one ab per object, summary lines in $OUT/ab-*.txt
    local n=$1 c=$2 k=${#OBJECTS[@]} i=0 pids=()
    for o in "${OBJECTS[@]}"; do
        local share=$(( n / k + (i < n % k ? 1 : 0) )) conc=$(( c / k + (i < c % k ? 1 : 0) ))
        ab -k -q -r -s 30 -n "$share" -c "$conc" "http://127.0.0.1:$PORT/${o%%:*}" >"$OUT/ab-$3-${o%%:*}.txt" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    local rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return $rc
}

echo "soak.sh: $MODE mode, instance $NAME on 127.0.0.1:$PORT, $WORKERS workers × $THREADS threads, pool $SEGMENTS × $SEGMENT_SIZE; output in $OUT"
sample >"$OUT/launch.txt"
run_ab "$WARMUP" "$CLIENTS" warmup || true
sample >"$OUT/start.txt"
echo "t_s pid role rss_kb fds" >"$OUT/samples.csv"
t0=$(date +%s)
(
    while sleep "$SAMPLE_SECS"; do
        sample | sed "s/^/$(( $(date +%s) - t0 )) /" >>"$OUT/samples.csv"
    done
) &
SAMPLER=$!
ab_rc=0
run_ab "$REQUESTS" "$CLIENTS" main || ab_rc=$?
kill "$SAMPLER" 2>/dev/null || true
secs=$(( $(date +%s) - t0 ))
sleep 1 # let keep-alive connections close
sample >"$OUT/end.txt"

complete=0 failed=0 non2xx=0
for f in "$OUT"/ab-main-*.txt; do
    c=$(awk '/^Complete requests:/ {print $3}' "$f"); complete=$((complete + ${c:-0}))
    x=$(awk '/^Failed requests:/ {print $3}' "$f"); failed=$((failed + ${x:-0}))
    x=$(awk '/^Non-2xx responses:/ {print $3}' "$f"); non2xx=$((non2xx + ${x:-0}))
    grep -qE '^Complete requests' "$f" || { echo "soak.sh: ab failed:"; tail -5 "$f"; failed=$((failed + 1)); }
done

echo
echo "== soak: $REQUESTS requests, $CLIENTS clients, ${secs}s ($(( complete / (secs > 0 ? secs : 1) )) req/s)"
echo "completed $complete  failed $failed  non-2xx $non2xx  (ab exit $ab_rc)"
echo "stats: $(stats)"
printf '%-8s %-7s %12s %12s %9s %9s %9s\n' pid role rss_start_kb rss_end_kb rss_delta fds_start fds_end
status=0
while read -r pid role rss fds; do
    read -r _ _ rss2 fds2 < <(grep "^$pid " "$OUT/end.txt" || echo "$pid $role 0 0")
    if ! grep -q "^$pid " "$OUT/end.txt"; then
        printf '%-8s %-7s %12s %12s %9s %9s %9s\n' "$pid" "$role" "$rss" gone - "$fds" gone
        status=1
        continue
    fi
    d=$((rss2 - rss))
    printf '%-8s %-7s %12s %12s %9s %9s %9s\n' "$pid" "$role" "$rss" "$rss2" "$d" "$fds" "$fds2"
    [ "$fds2" -gt "$fds" ] && { echo "   fd growth in $role $pid"; status=1; }
    [ "$d" -gt "$RSS_SLACK_KB" ] && { echo "   RSS of $role $pid grew by $d KiB (> $RSS_SLACK_KB)"; status=1; }
done <"$OUT/start.txt"
grep -v -f <(awk '{print "^"$1" "}' "$OUT/start.txt") "$OUT/end.txt" | sed 's/^/new process at end: /' || true
echo "(at launch, before warm-up: $(awk '{printf "%s %s %s KiB %s fds; ", $2, $1, $3, $4}' "$OUT/launch.txt"))"
[ "$complete" -eq "$REQUESTS" ] && [ "$failed" -eq 0 ] && [ "$non2xx" -eq 0 ] || status=1
echo "soak: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
