#!/usr/bin/env bash
# run.sh — build shmproxy (release) and run both daemons in the foreground.
#
# Starts target/release/cached and target/release/proxy with the repository's configuration
# (shmproxy.toml; flags override it) and prints where the proxy listens. Ctrl-C or SIGTERM
# stops both: SIGTERM by pid, SIGKILL after 5 s. If either daemon exits on its own, the other
# is stopped and run.sh exits non-zero.
#
# Usage: scripts/run.sh [--origin URL] [--listen ADDR:PORT] [OPTIONS...]
#   --origin URL            cache this origin (http(s)://host[:port][/prefix]) instead of
#                           www/; repeat it for several servers of the same site
#   --tls-ca-file FILE      PEM trust anchors for https origins signed by a private CA
#   --listen ADDR:PORT      where the proxy listens                  [127.0.0.1:8080]
#   --config FILE           configuration of both daemons            [shmproxy.toml]
#   --instance NAME         instance name of both daemons            [shmproxy]
#   cached:  --root DIR [www/]  --capacity BYTES  --max-object-size BYTES  --cached-threads N
#   proxy:   --workers N  --segments N  --segment-size BYTES  --proxy-threads N
# Options take their value as the next argument or after '=' (--listen=0.0.0.0:8080).
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

STOP_GRACE_SECS=5
config=shmproxy.toml
listen=""
instance=""
common_args=()
cached_args=()
proxy_args=()
cached_pid=""
proxy_pid=""

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

die() {
    echo "run.sh: $*" >&2
    exit 2
}

log() {
    echo "run.sh: $*" >&2
}

# Sorts the command line into the arguments of each daemon.
parse_args() {
    while (($#)); do
        local opt=$1 val=""
        case $opt in
            -h | --help) usage; exit 0 ;;
            --*=*) val=${opt#*=}; opt=${opt%%=*} ;;
            --*) (($# >= 2)) || die "$opt needs a value"; val=$2; shift ;;
            *) die "unexpected argument '$opt' (see --help)" ;;
        esac
        shift
        case $opt in
            --config) config=$val ;;
            --instance) instance=$val; common_args+=(--instance "$val") ;;
            --origin | --tls-ca-file | --root | --capacity | --max-object-size) cached_args+=("$opt" "$val") ;;
            --cached-threads) cached_args+=(--threads "$val") ;;
            --listen) listen=$val; proxy_args+=(--listen "$val") ;;
            --workers | --segments | --segment-size) proxy_args+=("$opt" "$val") ;;
            --proxy-threads) proxy_args+=(--threads "$val") ;;
            *) die "unknown option $opt (see --help)" ;;
        esac
    done
}

# Prints the value of KEY in [SECTION] of a TOML file ("" = top level); plain `key = value`
# lines only, which is all shmproxy.toml uses for these keys.
toml_get() {
    local file=$1 section=$2 key=$3
    [[ -f $file ]] || return 0
    awk -v want="$section" -v key="$key" '
        /^[[:space:]]*\[/ { sec = $0; gsub(/[][[:space:]]/, "", sec); next }
        sec == want && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub(/^[^=]*=[[:space:]]*/, ""); sub(/[[:space:]]*#.*$/, ""); gsub(/"/, "")
            print; exit
        }' "$file"
}

running() {
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null
}

# SIGKILLs a daemon and its direct children (the proxy's workers).
kill_hard() {
    local pid=$1 children
    children=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)
    kill -KILL "$pid" 2>/dev/null || true
    local child
    for child in $children; do
        kill -KILL "$child" 2>/dev/null || true
    done
}

# Stops both daemons (SIGTERM, then SIGKILL after the grace period) and reaps them.
# Returns non-zero if one of them had to be killed or exited with a failure.
stop_daemons() {
    local pid pids=() status=0
    for pid in "$proxy_pid" "$cached_pid"; do
        if running "$pid"; then
            pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    local tick
    for ((tick = 0; tick < STOP_GRACE_SECS * 10; tick++)); do
        local any=0
        for pid in "${pids[@]}"; do
            if running "$pid"; then any=1; fi
        done
        ((any)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if running "$pid"; then
            log "pid $pid still running ${STOP_GRACE_SECS}s after SIGTERM: sending SIGKILL"
            kill_hard "$pid"
            status=1
        fi
        local rc=0
        wait "$pid" 2>/dev/null || rc=$?
        if ((rc != 0)); then
            log "pid $pid exited with status $rc"
            status=1
        fi
    done
    cached_pid=""
    proxy_pid=""
    report_leftovers
    return "$status"
}

report_leftovers() {
    local left
    left=$(compgen -G "/dev/shm/$instance.*" || true)
    if [[ -n $left ]]; then
        log "warning: IPC objects left behind: $(echo "$left" | tr '\n' ' ')"
    fi
}

# shellcheck disable=SC2317 # invoked by the INT/TERM traps
on_signal() {
    trap '' INT TERM # a second Ctrl-C must not interrupt the stop
    log "$1: stopping both daemons"
    local status=0
    stop_daemons || status=1
    trap - EXIT
    exit "$status"
}

# A daemon exited by itself: say which, stop the other, fail.
on_daemon_exit() {
    local status=$1 name=proxy
    if ! running "$cached_pid"; then
        name=cached
    fi
    log "$name exited unexpectedly (status $status): stopping the other daemon"
    stop_daemons || true
    trap - EXIT
    exit 1
}

main() {
    parse_args "$@"
    [[ -f $config ]] || die "configuration file $config not found"
    # The built-in document root is /var/www/shmproxy: serve the repository's www/ unless the
    # command line or the file names another root.
    local file_root
    file_root=$(toml_get "$config" cached root)
    if [[ ! " ${cached_args[*]} " =~ " --root " && ( -z $file_root || $file_root == /var/www/shmproxy ) ]]; then
        cached_args+=(--root "$PWD/www")
    fi
    cargo build --release --workspace --bins
    listen=${listen:-$(toml_get "$config" proxy listen)}
    listen=${listen:-127.0.0.1:8080}
    instance=${instance:-$(toml_get "$config" "" instance)}
    instance=${instance:-shmproxy}

    trap 'on_signal SIGINT' INT
    trap 'on_signal SIGTERM' TERM
    trap 'stop_daemons || true' EXIT
    target/release/cached --config "$config" "${common_args[@]}" "${cached_args[@]}" &
    cached_pid=$!
    target/release/proxy --config "$config" "${common_args[@]}" "${proxy_args[@]}" &
    proxy_pid=$!
    log "instance $instance: proxy (pid $proxy_pid) listening on http://$listen/," \
        "cached pid $cached_pid — Ctrl-C stops both"

    local status=0
    wait -n || status=$?
    on_daemon_exit "$status"
}

main "$@"
