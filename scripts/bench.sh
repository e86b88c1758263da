#!/usr/bin/env bash
# bench.sh — shmproxy side by side with nginx and Varnish (../shared/bench/peers.sh).
#
# Builds release, starts cached (origin http://127.0.0.1:19000, which peers.sh starts) and
# the proxy on a free loopback port under a unique instance name, runs peers.sh with
# OURS/OURS_PIDS pointing at it, prints peers.sh's table, then the ratio of shmproxy's
# figure to the best peer's for every row the acceptance criteria name, and the RSS/PSS of
# every shmproxy process after the run (right after it, and again after SHM_SETTLE seconds,
# when idle segments have given their pages back), beside the bytes stored (the arena's plus
# the bodies cached holds itself, from the stats) and the acceptance limit stored + 64 MiB.
# Everything it started is stopped by pid at exit and
# nothing of the instance is left in /dev/shm or the mqueue namespace.
#
# shmproxy starts first and answers 503 until peers.sh's origin exists: peers.sh only checks
# that OURS answers HTTP, and warms every object up itself once its origin is running.
#
# Usage: scripts/bench.sh [--quick] [RESULTS_FILE]     (default /tmp/bench-results.md)
#   --quick (or QUICK=1): DURATION=3 BIG_RUNS=1 AB_N=5000 AB_TLIMIT=10 unless set.
#
# Knobs passed through to peers.sh: DURATION CONNS AB_N AB_C AB_TLIMIT HERD BIG_RUNS PEERS
#   NGINX VARNISHD NGINX_SENDFILE NGINX_HTTP_EXTRA VARNISH_EXTRA.
# shmproxy knobs (defaults sized for this 2-core box):
#   SHM_WORKERS [1]  SHM_THREADS [256] per worker  SHM_SEGMENTS [256]  SHM_SEGMENT_SIZE [1048576]
#   SHM_CHUNK_SLOTS [2]  SHM_CACHED_THREADS [256]  SHM_CAPACITY [268435456]
#   SHM_HEURISTIC_TTL_MS [600000] (the peers' 10-minute default for objects without Cache-Control)
#   SHM_MAX_OBJECT [134217728] (64 MiB objects are stored, as Varnish stores them)
#   SHM_PORT [a free one]  SHM_INSTANCE [bench-PID]  NO_BUILD=1 (use the existing binaries)
#   SHM_SETTLE [7] seconds idle before the second memory reading (segments free for 5 s
#   give their pages back)
#   PEERS_SH [<repo>/../shared/bench/peers.sh]  KEEP_LOGS=1 (leave the daemons' logs in /tmp)
# HERD concurrent requests each hold a proxy thread, a segment and a cached thread while the
# origin sleeps, so SHM_WORKERS*SHM_THREADS, SHM_SEGMENTS and SHM_CACHED_THREADS stay >= HERD
# (measured: 2x8 proxy threads with 32 cached threads made the herd cost 2 origin fetches
# and 1.07 s; 64 cached threads: 2 fetches, 1.16 s).
# One worker, not two: wrk/ab/curl take one of the two cores, and two workers' pollers then
# compete with it for the other (wrk -c64, alternating, 1 worker vs 2: 1 KiB hit p99 1.6-1.7
# vs 4.3-4.9 ms at 68-78k vs 63-84k req/s; 64 KiB, 1 MiB, Connection: close, ab and 64 MiB
# the same within the noise).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=${QUICK:-0}
RESULTS=""
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "bench.sh: unknown option $arg" >&2; exit 2 ;;
        *) RESULTS=$arg ;;
    esac
done
RESULTS=${RESULTS:-/tmp/bench-results.md}
if [ "$QUICK" = 1 ]; then
    export DURATION=${DURATION:-3} BIG_RUNS=${BIG_RUNS:-1} AB_N=${AB_N:-5000} AB_TLIMIT=${AB_TLIMIT:-10}
fi
# Make every pass-through knob visible to peers.sh (unset ones stay unset).
for k in DURATION CONNS AB_N AB_C AB_TLIMIT HERD BIG_RUNS PEERS NGINX VARNISHD NGINX_SENDFILE \
    NGINX_HTTP_EXTRA VARNISH_EXTRA; do
    if [ -n "${!k+x}" ]; then export "${k?}"; fi
done

PEERS_SH=${PEERS_SH:-$ROOT/../shared/bench/peers.sh}
SHM_WORKERS=${SHM_WORKERS:-1}
SHM_THREADS=${SHM_THREADS:-256}
SHM_SEGMENTS=${SHM_SEGMENTS:-256}
SHM_SEGMENT_SIZE=${SHM_SEGMENT_SIZE:-1048576}
SHM_CHUNK_SLOTS=${SHM_CHUNK_SLOTS:-2}
SHM_HEURISTIC_TTL_MS=${SHM_HEURISTIC_TTL_MS:-600000}
SHM_CACHED_THREADS=${SHM_CACHED_THREADS:-256}
SHM_CAPACITY=${SHM_CAPACITY:-268435456}
SHM_MAX_OBJECT=${SHM_MAX_OBJECT:-134217728}
INSTANCE=${SHM_INSTANCE:-bench-$$}
ORIGIN=http://127.0.0.1:19000

log() { printf '[%s] bench: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -r "$PEERS_SH" ] || die "peers.sh not found at $PEERS_SH (set PEERS_SH)"
for tool in cargo curl python3 awk nginx varnishd wrk ab; do
    command -v "$tool" >/dev/null || command -v "/usr/sbin/$tool" >/dev/null ||
        die "missing tool: $tool (apt-get install -y nginx varnish wrk apache2-utils)"
done

# ---------------------------------------------------------------- build
if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --workspace --bins) >&2 || die "build failed"
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ ! -x "$BIN/proxy" ] || [ ! -x "$BIN/cached" ]; then die "no binaries in $BIN"; fi

# ---------------------------------------------------------------- processes and cleanup
T=$(mktemp -d "${TMPDIR:-/tmp}/shmbench.XXXXXXXX")
CACHED_PID=""
MASTER_PID=""
PEERS_PID=""

alive() { # PID -> true if it exists and is not a zombie
    local st
    st=$(sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

children_of() { # PID -> its live descendants
    ps -e -o pid= -o ppid= | awk -v root="$1" '
        { par[$1] = $2 }
        END { keep[root] = 1
              do { grew = 0; for (p in par) if (!(p in keep) && (par[p] in keep)) { keep[p] = 1; grew = 1 } } while (grew)
              for (p in keep) if (p != root) print p }'
}

mq_unlink() { # NAME -> 0 if a queue of that name existed (and is now gone)
    python3 - "$1" <<'EOF'
import ctypes, ctypes.util, sys
rt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
sys.exit(0 if rt.mq_unlink(sys.argv[1].encode()) == 0 else 1)
EOF
}

cleanup() {
    local rc=$? p all=() left
    set +e
    trap - EXIT INT TERM
    if [ -n "$PEERS_PID" ] && alive "$PEERS_PID"; then
        kill -TERM "$PEERS_PID" 2>/dev/null # peers.sh stops its own servers by pid
        for _ in $(seq 150); do alive "$PEERS_PID" || break; sleep 0.1; done
    fi
    for p in $MASTER_PID $CACHED_PID; do
        alive "$p" || continue
        all+=("$p")
        mapfile -t -O "${#all[@]}" all < <(children_of "$p")
    done
    for p in $MASTER_PID $CACHED_PID; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 100); do # graceful stop: up to 10 s
        left=0
        for p in "${all[@]}"; do alive "$p" && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for p in "${all[@]}"; do
        if alive "$p"; then
            log "pid $p did not stop in 10 s: SIGKILL"
            kill -KILL "$p" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    # A graceful stop leaves nothing behind; say so loudly if it did, then remove it anyway.
    left=$(find /dev/shm -maxdepth 1 -name "$INSTANCE.*" -printf '%f ' 2>/dev/null)
    if [ -n "$left" ]; then
        log "LEAK: left in /dev/shm after stop: $left(removing)"
        find /dev/shm -maxdepth 1 -name "$INSTANCE.*" -delete
    fi
    if mq_unlink "/$INSTANCE.req"; then log "LEAK: message queue /$INSTANCE.req was left (removed)"; fi
    if [ "${KEEP_LOGS:-0}" = 1 ] || [ "$rc" != 0 ]; then
        log "daemon logs kept in $T"
    else
        rm -rf -- "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=${SHM_PORT:-$(free_port)}
case $PORT in 19000 | 19001 | 19002 | 19003) PORT=$(free_port) ;; esac
ADDR=127.0.0.1:$PORT

# Keys without a flag go in a config file (flags win over the file). The peers keep objects
# without Cache-Control for 10 minutes (nginx proxy_cache_valid 10m, varnishd -t 600); the
# origin's files carry ETag and Last-Modified, so RFC 9111 allows a heuristic lifetime and
# SHM_HEURISTIC_TTL_MS gives the same 10 minutes.
cat > "$T/shmproxy.toml" <<EOF
instance = "$INSTANCE"
[proxy]
chunk_slots = $SHM_CHUNK_SLOTS
[cached]
heuristic_ttl_ms = $SHM_HEURISTIC_TTL_MS
EOF

log "starting cached (instance $INSTANCE, origin $ORIGIN, $SHM_CACHED_THREADS threads, capacity $SHM_CAPACITY)"
"$BIN/cached" --config "$T/shmproxy.toml" --instance "$INSTANCE" --origin "$ORIGIN" \
    --threads "$SHM_CACHED_THREADS" --capacity "$SHM_CAPACITY" \
    --max-object-size "$SHM_MAX_OBJECT" >"$T/cached.log" 2>&1 &
CACHED_PID=$!
log "starting proxy on $ADDR ($SHM_WORKERS workers x $SHM_THREADS threads, $SHM_SEGMENTS x $SHM_SEGMENT_SIZE B segments, $SHM_CHUNK_SLOTS slots)"
"$BIN/proxy" --config "$T/shmproxy.toml" --instance "$INSTANCE" --listen "$ADDR" \
    --workers "$SHM_WORKERS" --threads "$SHM_THREADS" --segments "$SHM_SEGMENTS" \
    --segment-size "$SHM_SEGMENT_SIZE" >"$T/proxy.log" 2>&1 &
MASTER_PID=$!

up=0
for _ in $(seq 100); do
    alive "$CACHED_PID" || { cat "$T/cached.log" >&2; die "cached exited"; }
    alive "$MASTER_PID" || { cat "$T/proxy.log" >&2; die "proxy exited"; }
    # Until peers.sh starts the origin, a 503 or 502 is the expected answer.
    if curl -s -o /dev/null --max-time 1 "http://$ADDR/"; then up=1; break; fi
    sleep 0.1
done
[ "$up" = 1 ] || die "proxy does not answer on $ADDR"
log "shmproxy up: master $MASTER_PID (workers: $(children_of "$MASTER_PID" | tr '\n' ' ')), cached $CACHED_PID"

# ---------------------------------------------------------------- run the peers benchmark
log "running $PEERS_SH (DURATION=${DURATION:-10} BIG_RUNS=${BIG_RUNS:-5} AB_N=${AB_N:-100000})"
OURS=$ADDR OURS_PIDS="$MASTER_PID $CACHED_PID" bash "$PEERS_SH" "$T/peers.md" >"$T/peers.out" 2>"$T/peers.log" &
PEERS_PID=$!
tail -f --pid="$PEERS_PID" "$T/peers.log" >&2 &
TAIL_PID=$!
peers_rc=0
wait "$PEERS_PID" || peers_rc=$?
PEERS_PID=""
kill "$TAIL_PID" 2>/dev/null || true
wait "$TAIL_PID" 2>/dev/null || true
if [ "$peers_rc" != 0 ] || [ ! -s "$T/peers.md" ]; then
    cat "$T/peers.out" >&2
    die "peers.sh failed (exit $peers_rc)"
fi

# ---------------------------------------------------------------- memory after the run
mem_line() { # PID... -> "procs rss_kib pss_kib"
    local p n=0 rss=0 pss=0 v
    for p in "$@"; do
        [ -r "/proc/$p/status" ] || continue
        n=$((n + 1))
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null); rss=$((rss + ${v:-0}))
        v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null); pss=$((pss + ${v:-0}))
    done
    echo "$n $rss $pss"
}
PROCS=("$MASTER_PID")
mapfile -t -O 1 PROCS < <(children_of "$MASTER_PID")
PROCS+=("$CACHED_PID")
mem_detail() {
    local p out=""
    for p in "${PROCS[@]}"; do
        [ -r "/proc/$p/status" ] || continue
        out+="$(awk '/^Name:/ { n = $2 } /^VmRSS:/ { r = $2 } END { printf "%s %.1f", n, r / 1024 }' "/proc/$p/status")"
        out+="/$(awk '/^Pss:/ { t = $2 } /^Pss_Anon:/ { a = $2 } /^Pss_Shmem:/ { s = $2 }
            END { printf "%.1f MiB (anon %.1f, shm %.1f)", t / 1024, a / 1024, s / 1024 }' \
            "/proc/$p/smaps_rollup" 2>/dev/null); "
    done
    echo "$out"
}
stored_bytes() { # stats JSON -> "arena_bytes stored_body_bytes" (what the cache stores, once)
    python3 -c '
import json, sys
try:
    c = json.loads(sys.stdin.read())["cached"]
    print(c.get("arena_bytes", 0), c.get("stored_body_bytes", 0))
except Exception:
    print("0 0")'
}
read -r MEM_N MEM_RSS MEM_PSS < <(mem_line "${PROCS[@]}")
MEM_DETAIL=$(mem_detail)
STATS=$(curl -s --max-time 2 "http://$ADDR/__shmproxy/stats" || true)
read -r ARENA_B BODY_B < <(echo "$STATS" | stored_bytes)
SHM_SETTLE=${SHM_SETTLE:-7}
log "memory: waiting ${SHM_SETTLE}s idle for the second reading"
sleep "$SHM_SETTLE"
read -r _ _ MEM_PSS2 < <(mem_line "${PROCS[@]}")
MEM_DETAIL2=$(mem_detail)
read -r ARENA_B2 BODY_B2 < <(curl -s --max-time 2 "http://$ADDR/__shmproxy/stats" | stored_bytes)
pss_line() { # WHEN PSS_KIB ARENA_BYTES BODY_BYTES -> the acceptance line (issue 11, 2)
    awk -v w="$1" -v p="$2" -v a="$3" -v b="$4" 'BEGIN {
        pss = p / 1024; st = (a + b) / 1048576; d = pss - st
        printf "%s: sum PSS %.1f MiB, bytes stored %.1f MiB (arena %.1f + cached bodies %.1f), PSS - stored %.1f MiB; limit stored + 64 MiB: %s\n",
            w, pss, st, a / 1048576, b / 1048576, d, (d <= 64 ? "ok" : "OVER") }'
}

# ---------------------------------------------------------------- ratios
# Row value of column "ours" and of the best peer column, from peers.sh's markdown table.
# better=hi|lo; field=1 or 2 picks "a / b" cells (p50 / p99).
ratio_rows() {
    awk -F'|' '
        function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
        function lastpart(s,   a, n) { n = split(s, a, "/"); return trim(a[n]) }
        function isnum(s) { return s ~ /^[0-9]+(\.[0-9]+)?$/ }
        # spec = better (hi|lo) | target ratio | short name | only this peer ("" = any)
        function classify(l) {
            if (l == "1 KiB keep-alive: req/s") return "hi|1.1|1 KiB keep-alive req/s|"
            if (l == "64 KiB keep-alive: MiB/s") return "hi|1.0|64 KiB keep-alive MiB/s|"
            if (l == "1 MiB keep-alive: MiB/s") return "hi|1.0|1 MiB keep-alive MiB/s|"
            if (l ~ /^64 MiB, [0-9]+ sequential curl: median MiB\/s$/) return "hi|1.0|64 MiB download MiB/s (median)|"
            if (l == "1 KiB wrk Connection: close: req/s") return "hi|1.0|1 KiB Connection: close req/s|"
            if (l ~ /^1 KiB ab -c[0-9]+ \(no keep-alive\): req\/s$/) return "hi|1.0|ab -c (no keep-alive) req/s|"
            if (l == "herd: HTTP 200 answers / wall s") return "lo|1.0|herd wall s (vs varnish)|varnish"
            if (l == "1 KiB keep-alive: p50 / p99 ms") return "lo|1.0|1 KiB keep-alive p99 ms|"
            if (l == "64 KiB keep-alive: p50 / p99 ms") return "lo|1.0|64 KiB keep-alive p99 ms|"
            if (l == "1 MiB keep-alive: p50 / p99 ms") return "lo|1.0|1 MiB keep-alive p99 ms|"
            if (l == "1 KiB wrk Connection: close: p50 / p99 ms") return "lo|1.0|Connection: close p99 ms|"
            if (l == "1 KiB Vary: Accept-Encoding keep-alive: req/s") return "hi|1.1|1 KiB Vary keep-alive req/s|"
            if (l == "1 KiB Vary: Accept-Encoding keep-alive: p50 / p99 ms") return "lo|1.0|1 KiB Vary keep-alive p99 ms|"
            if (l ~ /^working set [0-9]+ x [0-9]+ B, random keys: req\/s$/) return "hi|1.1|working set req/s|"
            if (l == "working set: p50 / p99 ms") return "lo|1.0|working set p99 ms|"
            return ""
        }
        BEGIN { printf "| row | ours | best peer | ratio | target | ok |\n|---|---:|---:|---:|---:|---|\n" }
        /^\| metric \|/ {
            for (i = 3; i < NF; i++) { c = trim($i); sub(/ .*/, "", c); col[i] = c }
            next
        }
        /^\| / {
            label = trim($2)
            if (label == "herd: origin hits (ideal 1)") {
                for (i = 3; i < NF; i++) if (col[i] == "ours") hits = trim($i)
                next
            }
            spec = classify(label)
            if (spec == "") next
            split(spec, s, "|")
            ours = "NA"; best = "NA"; bestname = "-"
            for (i = 3; i < NF; i++) {
                v = s[1] == "lo" ? lastpart($i) : trim($i)
                if (col[i] == "ours") { ours = v; continue }
                if (s[4] != "" && col[i] != s[4]) continue
                if (!isnum(v)) continue
                if (best == "NA" || (s[1] == "hi" ? v + 0 > best + 0 : v + 0 < best + 0)) { best = v; bestname = col[i] }
            }
            r = "NA"; ok = "?"
            if (isnum(ours) && isnum(best) && ours + 0 > 0 && best + 0 > 0) {
                r = s[1] == "hi" ? ours / best : best / ours
                ok = r + 1e-9 >= s[2] ? "yes" : "NO"
                r = sprintf("%.2f", r)
            }
            printf "| %s | %s | %s (%s) | %s | >= %s | %s |\n", s[3], ours, best, bestname, r, s[2], ok
        }
        END {
            printf "| herd origin fetches | %s | 1 (ideal) | - | = 1 | %s |\n", (hits == "" ? "NA" : hits), (hits == "1" ? "yes" : "NO")
        }' "$1"
}

{
    cat "$T/peers.md"
    echo
    echo "## shmproxy vs the best peer"
    echo
    echo "- shmproxy: $SHM_WORKERS workers x $SHM_THREADS threads, $SHM_SEGMENTS x $SHM_SEGMENT_SIZE B segments, $SHM_CHUNK_SLOTS chunk slots, cached $SHM_CACHED_THREADS threads, capacity $SHM_CAPACITY B, max object $SHM_MAX_OBJECT B, hits from the shared arena of the same capacity; commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [ -n "$(git status --porcelain -uno 2>/dev/null)" ] && echo ' (+ uncommitted changes)')"
    echo "- ratio = ours / best peer for throughput rows, best peer / ours for latency and wall-time rows (so >= 1 means shmproxy wins)"
    echo
    ratio_rows "$T/peers.md"
    echo
    cap_mib=$(awk -v c="$SHM_CAPACITY" 'BEGIN { printf "%.0f", c / 1048576 }')
    rss_mib=$(awk -v k="$MEM_RSS" 'BEGIN { printf "%.1f", k / 1024 }')
    echo "Memory after the run: $MEM_N processes, sum VmRSS $rss_mib MiB, sum PSS $(awk -v k="$MEM_PSS" 'BEGIN { printf "%.1f", k / 1024 }') MiB (shared segment pages count once per process in RSS, split in PSS); limit capacity + 32 = $((cap_mib + 32)) MiB: $(awk -v r="$rss_mib" -v l="$((cap_mib + 32))" 'BEGIN { print (r <= l ? "ok" : "OVER") }')"
    echo
    echo "Per process (VmRSS/PSS): $MEM_DETAIL"
    echo
    pss_line "Right after the run" "$MEM_PSS" "$ARENA_B" "$BODY_B"
    echo
    pss_line "After ${SHM_SETTLE} s idle" "$MEM_PSS2" "$ARENA_B2" "$BODY_B2"
    echo
    echo "Per process after ${SHM_SETTLE} s idle (VmRSS/PSS): $MEM_DETAIL2"
    if [ -n "$STATS" ]; then
        echo
        echo "shmproxy counters after the run (/__shmproxy/stats):"
        echo
        echo '```'
        echo "$STATS" | head -c 4000
        echo
        echo '```'
    fi
} > "$T/report.md"

mkdir -p "$(dirname -- "$RESULTS")"
cp "$T/report.md" "$RESULTS"
cat "$T/report.md"
log "report written to $RESULTS"
