#!/usr/bin/env bash
# hitratio.sh — the hit ratio of the cache's eviction policy on the working-set row of the
# benchmark (issue 11): WS_N objects of WS_SIZE bytes (20,000 × 4 KiB, as
# /work/shared/bench/peers.sh and scripts/bench.sh use) behind an nginx origin that sends
# `Cache-Control: max-age=3600`, with `cached.capacity` = PCT % (25) of the working set's bytes.
#
# For each key distribution — `uniform` (random keys, as the bench's working-set row) and
# `zipf` (rank r requested with probability ∝ 1/r^ZIPF_S) — a fresh pair of release daemons
# is started, wrk (one thread, CONNS connections) sends REQUESTS requests to warm the cache up,
# then REQUESTS more are measured. The hit ratio is read from the stats counters over the
# measured phase: (proxy `arena_hits` + cached `l2_hits`) / proxy `requests`; the origin's
# share (cached `upstream_requests` / requests) is printed beside it, and so is a reference:
# the share of requests an ideal static cache holding the same number of objects (the arena's
# `arena_objects` at the end) would answer — for uniform keys objects / WS_N, for Zipf the
# popularity mass of the top ranks.
#
# Usage: scripts/hitratio.sh
# Env:   NO_BUILD=1 (use existing target/release binaries)  WS_N [20000]  WS_SIZE [4096]
#        PCT [25]  REQUESTS [200000]  ZIPF_S [0.99]  CONNS [16]  WORKERS [2]  DISTS [uniform zipf]
set -euo pipefail
export LC_ALL=C

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
WS_N=${WS_N:-20000}
WS_SIZE=${WS_SIZE:-4096}
PCT=${PCT:-25}
REQUESTS=${REQUESTS:-200000}
ZIPF_S=${ZIPF_S:-0.99}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-2}
DISTS=${DISTS:-uniform zipf}
CAPACITY=$((WS_N * WS_SIZE * PCT / 100))

for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "hitratio.sh: $tool not found" >&2; exit 2; }
done
if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p proxy -p cached)
fi
BIN="$ROOT/target/release"
T=$(mktemp -d /tmp/hitratio-XXXXXX)
chmod 755 "$T" # nginx workers run as another user when we are root
PIDS=()
NAMES=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    for n in "${NAMES[@]}"; do
        left=$(ls /dev/shm 2>/dev/null | grep -c "^$n\." || true)
        [ "$left" = 0 ] || echo "hitratio.sh: $left object(s) of $n left in /dev/shm" >&2
    done
    rm -rf "$T"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

python3 - "$T/www/ws" "$WS_N" "$WS_SIZE" <<'EOF'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d, exist_ok=True)
for i in range(n):
    with open(f"{d}/{i:05d}.bin", "wb") as f:
        f.write(os.urandom(size))
EOF

OPORT=$(free_port)
mkdir -p "$T/origin/tmp"
cat >"$T/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/origin/nginx.pid;
error_log $T/origin/error.log warn;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    client_body_temp_path $T/origin/tmp/body;
    proxy_temp_path $T/origin/tmp/proxy;
    fastcgi_temp_path $T/origin/tmp/fastcgi;
    uwsgi_temp_path $T/origin/tmp/uwsgi;
    scgi_temp_path $T/origin/tmp/scgi;
    server {
        listen 127.0.0.1:$OPORT;
        root $T/www;
        expires 1h;
    }
}
EOF
nginx -e "$T/origin/error.log" -p "$T/origin/" -c "$T/origin/nginx.conf" 2>"$T/origin/stderr.log" &
PIDS+=($!)

# wrk: exactly HR_REQUESTS responses per run (one thread), keys uniform or Zipf-ranked.
cat >"$T/keys.lua" <<'EOF'
local n = tonumber(os.getenv("HR_N"))
local want = tonumber(os.getenv("HR_REQUESTS"))
local dist = os.getenv("HR_DIST")
local s = tonumber(os.getenv("HR_ZIPF_S"))
local seed = tonumber(os.getenv("HR_SEED"))
local cdf = {}
local done = 0
function init(args)
    math.randomseed(seed)
    if dist == "zipf" then
        local sum = 0
        for i = 1, n do sum = sum + 1 / i ^ s; cdf[i] = sum end
        for i = 1, n do cdf[i] = cdf[i] / sum end
    end
end
function request()
    local k
    if dist == "zipf" then
        local u, lo, hi = math.random(), 1, n
        while lo < hi do
            local mid = math.floor((lo + hi) / 2)
            if cdf[mid] < u then lo = mid + 1 else hi = mid end
        end
        k = lo - 1
    else
        k = math.random(0, n - 1)
    end
    return wrk.format("GET", string.format("/ws/%05d.bin", k))
end
function response(status, headers, body)
    done = done + 1
    if done >= want then wrk.thread:stop() end
end
EOF

stats() { # port -> "requests arena_hits l2_hits upstream arena_objects"
    curl -sf "http://127.0.0.1:$1/__shmproxy/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin); p, c = s["proxy"], s["cached"]
print(p["requests"], p["arena_hits"], c["l2_hits"], c["upstream_requests"], c["arena_objects"], p["responses_5xx"])'
}

echo "hitratio.sh: $WS_N objects x $WS_SIZE B, cached.capacity $CAPACITY B ($PCT %), $REQUESTS warm-up + $REQUESTS measured requests per distribution, wrk -t1 -c$CONNS"
printf '%-8s %10s %9s %9s %9s %9s %8s %9s %5s\n' dist requests arena_hit l2_hit hit_ratio origin objects ideal 5xx
seed=1
for dist in $DISTS; do
    NAME=hr-$$-$dist
    NAMES+=("$NAME")
    PORT=$(free_port)
    "$BIN/cached" --instance "$NAME" --origin "http://127.0.0.1:$OPORT" --capacity "$CAPACITY" 2>"$T/cached-$dist.log" &
    PIDS+=($!)
    "$BIN/proxy" --instance "$NAME" --listen "127.0.0.1:$PORT" --workers "$WORKERS" 2>"$T/proxy-$dist.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$PORT/ws/00000.bin" && break
        sleep 0.1
    done
    for phase in warm measure; do
        read -r r0 a0 l0 u0 _ e0 < <(stats "$PORT")
        polls=1 # stats requests after this snapshot, the last one included
        # wrk's thread stops after REQUESTS answers, but wrk itself waits for -d: it is
        # stopped once the proxy counted them.
        HR_N=$WS_N HR_REQUESTS=$REQUESTS HR_DIST=$dist HR_ZIPF_S=$ZIPF_S HR_SEED=$seed \
            wrk -t1 -c"$CONNS" -d600s -s "$T/keys.lua" "http://127.0.0.1:$PORT/" >"$T/wrk-$dist-$phase.txt" 2>&1 &
        WRK=$!
        while kill -0 "$WRK" 2>/dev/null; do
            read -r r _ < <(stats "$PORT")
            polls=$((polls + 1))
            [ "$r" -ge $((r0 + polls + REQUESTS)) ] && break
            sleep 0.2
        done
        sleep 0.5
        kill -INT "$WRK" 2>/dev/null || true
        wait "$WRK" 2>/dev/null || true
        seed=$((seed + 1))
    done
    read -r r1 a1 l1 u1 objs e1 < <(stats "$PORT")
    python3 - "$dist" "$r0" "$((r1 - polls))" "$a0" "$a1" "$l0" "$l1" "$u0" "$u1" "$objs" "$WS_N" "$ZIPF_S" "$e0" "$e1" <<'EOF'
import sys
dist = sys.argv[1]
r0, r1, a0, a1, l0, l1, u0, u1, objs, n = map(int, sys.argv[2:12])
s = float(sys.argv[12]); e0, e1 = int(sys.argv[13]), int(sys.argv[14])
req = r1 - r0
arena, l2, up = a1 - a0, l1 - l0, u1 - u0
if dist == "zipf":
    w = [1 / (i ** s) for i in range(1, n + 1)]
    ideal = sum(w[:objs]) / sum(w)
else:
    ideal = objs / n
print(f"{dist:<8} {req:>10} {arena:>9} {l2:>9} {(arena + l2) / req:>9.4f} {up / req:>9.4f} {objs:>8} {ideal:>9.4f} {e1 - e0:>5}")
EOF
done
