#!/usr/bin/env bash
# Benchmark portlab serve / proxy against their peers in ONE run on loopback, with wrk keep-alive:
#   1. nginx (1 worker, access_log off)          vs portlab serve              (need ≥ 0.8)
#   2. HAProxy mode tcp        → the same nginx  vs portlab proxy --mode tcp   (need ≥ 0.9)
#   3. HAProxy mode http, http-reuse always → nginx vs portlab proxy --mode http (need ≥ 0.9)
# Each pair runs ROUNDS times, alternating, and the best requests/s of each side counts; the
# CPU each server/proxy process spends per request is printed too (it varies much less than
# req/s when other work shares the machine).
# The machine has few cores, so every server or proxy gets one thread (nginx 1 worker,
# HAProxy nbthread 1, portlab --threads 1) and wrk gets WRK_THREADS threads for every run.
#
# Usage: scripts/bench-serve-proxy.sh            (builds target/release/portlab if missing)
# Env:   PORTLAB=path  DURATION=5s  CONNS=50  WRK_THREADS=2  ROUNDS=3  POOL=64
#        PAIRS="serve tcp http" (a subset runs only those pairs)
# Exit:  0 when every ratio meets its bar, 1 otherwise, 2 when a tool is missing.
set -euo pipefail

DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
ROUNDS=${ROUNDS:-3}
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

# Starts "$@" in the background, records its PID (also in LAST_PID).
start() {
    "$@" >"$TMP/$(basename "$1").$RANDOM.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# CPU time (clock ticks, user + system) of process $1 and its children (nginx's worker).
cpu_ticks() {
    local total=0 pid fields
    for pid in "$1" $(pgrep -P "$1" || true); do
        fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
    done
    echo "$total"
}
TICKS_PER_SEC=$(getconf CLK_TCK)

# Prints "REQ_PER_SEC CPU_US_PER_REQ": wrk's rate against port $1 and the CPU process $2
# (with its children) spent per request meanwhile. The CPU cost per request is much less
# sensitive to other load on the machine than the rate.
rps() {
    local before after out
    before=$(cpu_ticks "$2")
    out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/hello.html")
    after=$(cpu_ticks "$2")
    awk -v cpu=$((after - before)) -v hz="$TICKS_PER_SEC" '
        /^Requests\/sec:/ {rate = $2}
        /requests in/ {n = $1}
        END {printf "%s %.2f\n", rate, (n > 0) ? cpu * 1e6 / hz / n : 0}' <<<"$out"
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
NGINX_PID=$LAST_PID
start haproxy -f "$TMP/haproxy.cfg" -db
HA_PID=$LAST_PID
start "$PORTLAB" serve --listen "127.0.0.1:$SERVE" --threads 1
SERVE_PID=$LAST_PID
start "$PORTLAB" proxy --listen "127.0.0.1:$PX_TCP" --connect "127.0.0.1:$NGINX" --threads 1
PX_TCP_PID=$LAST_PID
start "$PORTLAB" proxy --mode http --pool "$POOL" --listen "127.0.0.1:$PX_HTTP" \
    --connect "127.0.0.1:$NGINX" --threads 1
PX_HTTP_PID=$LAST_PID
for port in $NGINX $SERVE $HA_TCP $HA_HTTP $PX_TCP $PX_HTTP; do wait_http "$port"; done

echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION keep-alive, best of $ROUNDS, $(nproc) CPUs, $(uname -r)"
echo "servers and proxies: 1 thread each (nginx 1 worker, HAProxy nbthread 1, portlab --threads 1)"
echo "req/s: best round; cpu: µs of CPU the server/proxy process spent per request (least of rounds)"
printf '%-30s %10s %10s %6s %5s  %9s %9s\n' "pair (peer vs portlab)" "peer req/s" "portlab" "ratio" "need" \
    "peer cpu" "portlab"
STATUS=0
# Keeps the larger first field (req/s) and the smaller second field (CPU per request).
best() { awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " ");
    printf "%s %s\n", (y[1] > x[1]) ? y[1] : x[1], (x[2] == 0 || (y[2] > 0 && y[2] < x[2])) ? y[2] : x[2]}'; }
compare() { # name peer_port peer_pid portlab_port portlab_pid bar
    local peer="0 0" ours="0 0"
    for _ in $(seq "$ROUNDS"); do
        peer=$(best "$peer" "$(rps "$2" "$3")")
        ours=$(best "$ours" "$(rps "$4" "$5")")
    done
    local line
    line=$(awk -v p="$peer" -v o="$ours" -v need="$6" -v name="$1" 'BEGIN {
        split(p, a, " "); split(o, b, " "); ratio = (a[1] > 0) ? b[1] / a[1] : 0;
        printf "%-30s %10.0f %10.0f %6.2f %5s  %9.1f %9.1f %s\n", name, a[1], b[1], ratio, need,
            a[2], b[2], (ratio >= need) ? "ok" : "LOW"}')
    echo "$line"
    [[ $line == *" ok" ]] || STATUS=1
}
for pair in $PAIRS; do
    case $pair in
    serve) compare "nginx / portlab serve" "$NGINX" "$NGINX_PID" "$SERVE" "$SERVE_PID" 0.8 ;;
    tcp) compare "HAProxy tcp / proxy tcp" "$HA_TCP" "$HA_PID" "$PX_TCP" "$PX_TCP_PID" 0.9 ;;
    http) compare "HAProxy http / proxy http" "$HA_HTTP" "$HA_PID" "$PX_HTTP" "$PX_HTTP_PID" 0.9 ;;
    *) echo "bench: unknown pair $pair (serve, tcp, http)" >&2; exit 2 ;;
    esac
done
exit $STATUS
