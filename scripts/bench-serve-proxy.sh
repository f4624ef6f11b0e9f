#!/usr/bin/env bash
# Benchmark portlab serve / proxy against their peers in ONE run on loopback, with wrk keep-alive:
#   1. nginx (1 worker, access_log off)          vs portlab serve              (need ≥ 0.8)
#   2. HAProxy mode tcp        → the same nginx  vs portlab proxy --mode tcp   (need ≥ 0.9)
#   3. HAProxy mode http, http-reuse always → nginx vs portlab proxy --mode http (need ≥ 0.9)
# Each pair runs ROUNDS times, alternating, and the best requests/s of each side counts.
# The machine has few cores, so every server or proxy gets one thread (nginx 1 worker,
# HAProxy nbthread 1, portlab --threads 1) and wrk gets WRK_THREADS threads for every run.
#
# Usage: scripts/bench-serve-proxy.sh            (builds target/release/portlab if missing)
# Env:   PORTLAB=path  DURATION=5s  CONNS=50  WRK_THREADS=2  ROUNDS=2  POOL=64
#        PAIRS="serve tcp http" (a subset runs only those pairs)
# Exit:  0 when every ratio meets its bar, 1 otherwise, 2 when a tool is missing.
set -euo pipefail

DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
ROUNDS=${ROUNDS:-2}
POOL=${POOL:-64}
PAIRS=${PAIRS:-serve tcp http}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}

for tool in wrk nginx haproxy python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (apt install $tool)" >&2; exit 2; }
done
if [[ ! -x $PORTLAB ]]; then
    (cd "$ROOT" && cargo build --release -p portlab)
fi

TMP=$(mktemp -d /tmp/portlab-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers run as an unprivileged user when started by root
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n ${KEEP_TMP:-} ]] && echo "bench: logs kept in $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most 5 s) until something answers HTTP on 127.0.0.1:$1.
wait_http() {
    for _ in $(seq 100); do
        if curl -fs -o /dev/null "http://127.0.0.1:$1/hello.html"; then return 0; fi
        sleep 0.05
    done
    echo "bench: nothing answers on port $1" >&2
    exit 1
}

# Starts "$@" in the background, records its PID.
start() {
    "$@" >"$TMP/$(basename "$1").$RANDOM.log" 2>&1 &
    PIDS+=("$!")
}

# Prints the requests/s wrk measured against port $1.
rps() {
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/hello.html" |
        awk '/^Requests\/sec:/ {print $2}'
}

NGINX=$(free_port) SERVE=$(free_port) HA_TCP=$(free_port) HA_HTTP=$(free_port)
PX_TCP=$(free_port) PX_HTTP=$(free_port)

mkdir -p "$TMP/www"
# The same body portlab serve sends (its HELLO_BODY), so both servers send the same bytes.
printf '<!DOCTYPE html>\n<html><head><title>hello</title></head><body><h1>hello from portlab serve</h1></body></html>\n' \
    >"$TMP/www/hello.html"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$NGINX; root $TMP/www; }
}
EOF
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend ft_tcp
    mode tcp
    bind 127.0.0.1:$HA_TCP
    default_backend bk_tcp
backend bk_tcp
    mode tcp
    server nginx 127.0.0.1:$NGINX
frontend ft_http
    mode http
    bind 127.0.0.1:$HA_HTTP
    default_backend bk_http
backend bk_http
    mode http
    http-reuse always
    server nginx 127.0.0.1:$NGINX maxconn $POOL
EOF

start nginx -c "$TMP/nginx.conf" -p "$TMP"
start haproxy -f "$TMP/haproxy.cfg" -db
start "$PORTLAB" serve --listen "127.0.0.1:$SERVE" --threads 1
start "$PORTLAB" proxy --listen "127.0.0.1:$PX_TCP" --connect "127.0.0.1:$NGINX" --threads 1
start "$PORTLAB" proxy --mode http --pool "$POOL" --listen "127.0.0.1:$PX_HTTP" \
    --connect "127.0.0.1:$NGINX" --threads 1
for port in $NGINX $SERVE $HA_TCP $HA_HTTP $PX_TCP $PX_HTTP; do wait_http "$port"; done

echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION keep-alive, best of $ROUNDS, $(nproc) CPUs, $(uname -r)"
echo "servers and proxies: 1 thread each (nginx 1 worker, HAProxy nbthread 1, portlab --threads 1)"
printf '%-44s %12s %12s %7s %6s\n' "pair (peer vs portlab)" "peer req/s" "portlab" "ratio" "need"
STATUS=0
compare() { # name peer_port portlab_port bar
    local best_peer=0 best_ours=0 r
    for _ in $(seq "$ROUNDS"); do
        r=$(rps "$2"); best_peer=$(awk -v a="$best_peer" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
        r=$(rps "$3"); best_ours=$(awk -v a="$best_ours" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
    done
    local ratio verdict
    ratio=$(awk -v a="$best_ours" -v b="$best_peer" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
    verdict=$(awk -v r="$ratio" -v n="$4" 'BEGIN {print (r >= n) ? "ok" : "LOW"}')
    [[ $verdict == ok ]] || STATUS=1
    printf '%-44s %12.0f %12.0f %7s %6s %s\n' "$1" "$best_peer" "$best_ours" "$ratio" "$4" "$verdict"
}
for pair in $PAIRS; do
    case $pair in
    serve) compare "nginx vs portlab serve" "$NGINX" "$SERVE" 0.8 ;;
    tcp) compare "HAProxy tcp vs portlab proxy tcp (→ nginx)" "$HA_TCP" "$PX_TCP" 0.9 ;;
    http) compare "HAProxy http vs portlab proxy http (→ nginx)" "$HA_HTTP" "$PX_HTTP" 0.9 ;;
    *) echo "bench: unknown pair $pair (serve, tcp, http)" >&2; exit 2 ;;
    esac
done
exit $STATUS
