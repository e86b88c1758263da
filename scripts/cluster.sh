#!/usr/bin/env bash
# cluster.sh — a shmproxy cluster on this machine, in network namespaces: N caching nodes
# behind HAProxy (balance uri, hash-type consistent, health checks on /__shmproxy/health, from
# deploy/haproxy.cfg), an origin (a shmproxy pair serving www/) and, with --shield, a shield
# node between the nodes and the origin. Builds release first; needs root (ip netns) and
# HAProxy (apt-get install -y haproxy; installed when missing).
#
# Every part runs in its own namespace, joined by veth pairs to one bridge that lives in a
# namespace of its own too: the addresses (10.231.0.0/24) exist only inside, and nothing
# reaches a real network. Ctrl-C, SIGTERM or an exit tears it all down: the processes by
# pid (SIGTERM, SIGKILL after 5 s), the namespaces, and any IPC object left behind.
#
# Usage: scripts/cluster.sh [--nodes N] [--shield]
#   --nodes N    caching nodes behind HAProxy (1 ..= 50)          [3]
#   --shield     put a shield node between the nodes and the origin
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

nodes=3
shield=0
STOP_GRACE_SECS=5
NET=10.231.0
# Namespace and instance names carry our pid: two clusters (or the e2e tests) can coexist.
tag="cl$$"
work=""
pids=()
namespaces=()
instances=()

die() {
    echo "cluster.sh: $*" >&2
    exit 2
}

log() {
    echo "cluster.sh: $*" >&2
}

while (($#)); do
    case $1 in
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --nodes) (($# >= 2)) || die "--nodes needs a value"; nodes=$2; shift ;;
        --nodes=*) nodes=${1#*=} ;;
        --shield) shield=1 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= 50)) || die "--nodes: 1 ..= 50 (got $nodes)"
((EUID == 0)) || die "needs root (ip netns add)"

teardown() {
    local status=$?
    trap - EXIT INT TERM
    local pid deadline
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_GRACE_SECS))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    local ns inst
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    # A daemon stopped by SIGKILL leaves its objects: removed by their known names.
    for inst in "${instances[@]}"; do
        rm -f /dev/shm/"$inst".* 2>/dev/null || true
        [[ -d /dev/mqueue ]] && rm -f /dev/mqueue/"$inst".req 2>/dev/null || true
    done
    [[ -n $work ]] && rm -rf -- "$work"
    log "stopped; namespaces, processes and IPC objects removed"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v haproxy >/dev/null; then
    log "installing haproxy (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy
fi
cargo build --release --bins -p proxy -p cached
bin=$PWD/target/release
work=$(mktemp -d "/tmp/shmproxy-cluster.XXXXXX")

# The bridge, in a namespace of its own.
hub="${tag}hub"
ip netns add "$hub"
namespaces+=("$hub")
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up

# join NAME HOST: a namespace NAME at $NET.HOST on the bridge.
join() {
    local ns="$tag$1" host=$2
    ip netns add "$ns"
    namespaces+=("$ns")
    ip -n "$hub" link add "p$host" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "p$host" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$NET.$host/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# pair NAME HOST NODE CACHED_ARGS...: a shmproxy pair in namespace NAME, node NODE.
pair() {
    local name=$1 host=$2 node=$3
    shift 3
    local ns="$tag$name" inst="$tag$name"
    instances+=("$inst")
    ip netns exec "$ns" "$bin/cached" --config "$PWD/shmproxy.toml" --instance "$inst" \
        --node "$node" "$@" >"$work/$name-cached.log" 2>&1 &
    pids+=($!)
    ip netns exec "$ns" "$bin/proxy" --config "$PWD/shmproxy.toml" --instance "$inst" \
        --node "$node" --listen "$NET.$host:8080" --stats-allow "127.0.0.0/8,$NET.2/32" \
        --workers 1 --drain-ms 3s >"$work/$name-proxy.log" 2>&1 &
    pids+=($!)
}

join lb 2
join origin 3
pair origin 3 origin --root "$PWD/www"
upstream="http://$NET.3:8080"
if ((shield)); then
    join shield 4
    pair shield 4 shield --origin "$upstream"
    upstream="http://$NET.4:8080"
fi
servers=""
for ((i = 1; i <= nodes; i++)); do
    join "n$i" $((10 + i))
    pair "n$i" $((10 + i)) "n$i" --origin "$upstream"
    servers+="    server n$i $NET.$((10 + i)):8080 check"$'\n'
done

# deploy/haproxy.cfg with our bind address and servers, plus a stats page.
{
    awk -v bind="    bind $NET.2:8080" -v servers="$servers" '
        /^[[:space:]]*bind[[:space:]]/ { print bind; next }
        /^[[:space:]]*server[[:space:]]/ { if (!done) printf "%s", servers; done = 1; next }
        { print }' deploy/haproxy.cfg
    printf '\nfrontend stats\n    bind %s.2:8404\n    stats enable\n    stats uri /stats\n' "$NET"
} >"$work/haproxy.cfg"
haproxy -c -q -f "$work/haproxy.cfg"
ip netns exec "${tag}lb" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)

# Ready when HAProxy sees every node up (its stats as CSV, read with bash's /dev/tcp from
# inside the balancer's namespace: no client tool needed).
servers_up() {
    ip netns exec "${tag}lb" bash -c '
        exec 3<>"/dev/tcp/$1/8404" || exit 1
        printf "GET /stats;csv HTTP/1.0\r\n\r\n" >&3
        cat <&3' _ "$NET.2" 2>/dev/null |
        awk -F, '$1 == "nodes" && $2 ~ /^n[0-9]+$/ && $18 == "UP" { n++ } END { print n + 0 }'
}
deadline=$((SECONDS + 30))
up=0
while ((SECONDS < deadline)); do
    up=$(servers_up) || up=0
    ((up == nodes)) && break
    sleep 0.5
done
((up == nodes)) || log "warning: $up of $nodes nodes up after 30 s (logs in $work)"

cat <<EOF
cluster.sh: $nodes node(s)$( ((shield)) && echo " behind a shield") are serving; HAProxy listens on $NET.2:8080
  in namespace ${tag}lb. Point a client there from inside it, e.g.
    ip netns exec ${tag}lb curl -si http://$NET.2:8080/index.html
  nodes: $(for ((i = 1; i <= nodes; i++)); do printf 'n%d=%s.%d ' "$i" "$NET" $((10 + i)); done)(namespaces $tag<node>)
  health: ip netns exec ${tag}lb curl -s http://$NET.11:8080/__shmproxy/health
  HAProxy stats: ip netns exec ${tag}lb curl -s 'http://$NET.2:8404/stats;csv'
  logs: $work
Ctrl-C stops everything.
EOF
# Until Ctrl-C, or until a process exits on its own.
while true; do
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { log "pid $pid exited (logs in $work)"; exit 1; }
    done
    sleep 1
done
