#!/usr/bin/env bash
# bench-tls.sh — 1 KiB misses through a plain-HTTP origin and through an HTTPS one.
#
# Builds release, generates a CA and a server certificate for 127.0.0.1 (openssl, in a
# temporary directory), starts nginx as the origin on two free loopback ports (one plain,
# one TLS, the same 1 KiB file), then for each origin starts cached (--origin, with
# --tls-ca-file for the TLS one) and the proxy under a unique instance name and runs wrk
# with a fresh path per request, so every request is a miss that goes upstream. Runs
# alternate plain/TLS RUNS times; the medians and the ratio TLS/plain are printed. The
# origin's count of accepted connections (nginx stub_status) beside the number of upstream
# requests shows that the pool reuses connections. Everything started is stopped by pid; nothing is left in /dev/shm.
#
# Usage: scripts/bench-tls.sh            knobs: RUNS [3] DURATION [5] CONNS [32] NO_BUILD=1
set -euo pipefail
export LC_ALL=C

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
for tool in cargo curl openssl nginx wrk python3; do
    command -v "$tool" >/dev/null || {
        echo "bench-tls.sh: missing tool: $tool (apt-get install -y nginx wrk openssl)" >&2
        exit 2
    }
done

work=$(mktemp -d /tmp/bench-tls.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -f "$work/nginx.pid" ]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --bins -q)
fi

# A CA and a certificate for 127.0.0.1 signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$work/srv.key" -out "$work/srv.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/ext"
openssl x509 -req -in "$work/srv.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/srv.pem" 2>/dev/null

mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/obj"
plain=$(free_port)
tls=$(free_port)
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    server {
        listen 127.0.0.1:$plain;
        listen 127.0.0.1:$tls ssl;
        ssl_certificate $work/srv.pem;
        ssl_certificate_key $work/srv.key;
        root $work/www;
        location = /__status { stub_status; }
        location / { try_files /obj =404; add_header Cache-Control "max-age=600"; }
    }
}
EOF
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"

cat >"$work/fresh.lua" <<'EOF'
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", "/obj/" .. math.random(1, 1e9) .. "-" .. n)
end
EOF

accepts() { curl -s "http://127.0.0.1:$plain/__status" | awk 'NR == 3 {print $1}'; }

# run_one NAME URL [cached args...]: prints requests/s.
run_one() {
    local name=$1 url=$2
    shift 2
    local inst="btls-$$-$name" port
    port=$(free_port)
    "$ROOT/target/release/cached" --instance "$inst" --origin "$url" "$@" \
        >"$work/cached-$name.log" 2>&1 &
    local cpid=$!
    "$ROOT/target/release/proxy" --instance "$inst" --listen "127.0.0.1:$port" \
        >"$work/proxy-$name.log" 2>&1 &
    local ppid=$!
    pids+=("$cpid" "$ppid")
    local before
    before=$(accepts)
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/obj/warm" && break
        sleep 0.1
    done
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$work/fresh.lua" "http://127.0.0.1:$port/" \
        | awk '/Requests\/sec/ {print $2}'
    local conns
    conns=$(curl -s "http://127.0.0.1:$port/__shmproxy/stats" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); c=d.get("cached",d); print(c.get("upstream_requests",0), c.get("upstream_errors",0))')
    echo "$name: upstream requests, errors: $conns; origin connections: $(($(accepts) - before - 1))" >&2
    kill "$ppid" "$cpid"
    wait "$ppid" "$cpid" 2>/dev/null || true
}

declare -a P T
for i in $(seq "$RUNS"); do
    P+=("$(run_one plain "http://127.0.0.1:$plain")")
    T+=("$(run_one tls "https://127.0.0.1:$tls" --tls-ca-file "$work/ca.pem")")
    echo "run $i: plain ${P[-1]} req/s, tls ${T[-1]} req/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${P[@]}")
mt=$(median "${T[@]}")
printf '1 KiB misses, wrk -c%s %ss, %s runs: plain %s req/s (runs %s), TLS %s req/s (runs %s), TLS/plain %s\n' \
    "$CONNS" "$DURATION" "$RUNS" "$mp" "${P[*]}" "$mt" "${T[*]}" \
    "$(awk -v a="$mt" -v b="$mp" 'BEGIN {printf "%.2f", a/b}')"
