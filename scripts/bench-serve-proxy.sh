#!/usr/bin/env bash
# Benchmark portlab serve / proxy against their peers in ONE run on loopback, pinned and
# interleaved, with wrk keep-alive (-t1 -c CONNS):
#   serve  nginx (1 worker, access_log off)              vs portlab serve --threads 1   (bar ≥ 0.8)
#   tcp    HAProxy mode tcp → nginx                      vs portlab proxy (tcp; its default
#                                                           engine, io_uring here)     (bar ≥ 1.1)
#   tcp-tokio  the same                                  vs portlab proxy --engine tokio (bar ≥ 1.1)
#   http   HAProxy mode http, http-reuse always, server maxconn POOL → nginx
#                                                        vs portlab proxy --mode http --pool POOL (bar ≥ 1.1)
# Layout (2 cores): the server or proxy under test alone on core PROXY_CPU; wrk on core LOAD_CPU
# and the upstream nginx on UPSTREAM_CPU (default: LOAD_CPU too; for the serve pair, nginx is
# the server under test and moves to PROXY_CPU). On 2 cores the load core (wrk + nginx) is
# usually the busier one, which pulls the req/s ratio of the proxy pairs towards 1.0; the
# per-round busy % of both cores shows it. With a third core, UPSTREAM_CPU=2 gives nginx its own.
# Every server/proxy has one thread on its one core (nginx 1 worker, HAProxy nbthread 1 — its
# nbthread equals the cores it gets —, portlab --threads 1). Each pair runs ROUNDS rounds, the order alternating every round; per round the
# ratio portlab/peer of requests/s and of CPU per request, printed per round and as the median
# with its min–max. CPU per request: user+sys time of the process under test (/proc/PID/stat,
# threads and children included) over wrk's requests. Syscalls per request: a separate
# SYSCALL_DURATION wrk run with `perf stat -e raw_syscalls:sys_enter -p PID` on the process.
# Layout of the output and column meanings: docs/benchmarks.md.
#
# One command for the final figures (quiet machine, ~4 min):  scripts/bench-serve-proxy.sh
# Development (noisy machine, ~1 min):                       QUICK=1 scripts/bench-serve-proxy.sh
# Env:   PORTLAB=path  DURATION=5s  CONNS=50  ROUNDS=5  POOL=64  PROXY_CPU=0  LOAD_CPU=1
#        UPSTREAM_CPU=LOAD_CPU  SYSCALL_DURATION=2s  KEEP_TMP=1
#        PAIRS="serve tcp http" (a subset runs only those pairs; tcp-tokio is a further pair)
#        BATCH_WAIT=50us: portlab proxy --batch-wait (the io_uring engine's batching)
#        LATENCY=1 (default with the tcp pair): wrk --latency p50/p99 at -c1 and -c CONNS
#        through HAProxy tcp and both portlab engines, 3 interleaved rounds each (medians),
#        what the batching costs a lone request stream and a busy one
#        QUICK=1 = ROUNDS=2 DURATION=2s SYSCALL_DURATION=1s unless set.
#        QUOTA_PCT=40 caps the servers/proxies under test (both peers alike) at 40 % of a core
#        with a CFS bandwidth quota (a cgroup: v1 cpu.cfs_quota_us or v2 cpu.max), so the
#        process under test, not wrk + nginx on the load core, bounds req/s: on 2 cores the
#        only layout where the req/s ratio measures the proxy. CPU/req is unaffected.
# Exit:  0 when every median ratio meets its bar, 1 otherwise, 2 when a tool is missing.
set -euo pipefail

if [[ -n ${QUICK:-} ]]; then
    ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-2s} SYSCALL_DURATION=${SYSCALL_DURATION:-1s}
fi
DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-5}
POOL=${POOL:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-$LOAD_CPU}
SYSCALL_DURATION=${SYSCALL_DURATION:-2s}
PAIRS=${PAIRS:-serve tcp http}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}

for tool in wrk nginx haproxy python3 taskset perf curl; do
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
    if [[ -n ${QUOTA_CG:-} ]]; then rmdir "$QUOTA_CG" 2>/dev/null || true; fi
    if [[ -n ${KEEP_TMP:-} ]]; then echo "bench: logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

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

# Starts "$@" in the background on core $1, records its PID (also in LAST_PID).
start() {
    local cpu=$1
    shift
    taskset -c "$cpu" "$@" >"$TMP/$(basename "$1").$RANDOM.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# Pins process $1, its threads and its children to core $2.
pin() {
    local pid
    for pid in "$1" $(pgrep -P "$1" || true); do taskset -a -pc "$2" "$pid" >/dev/null; done
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

# Busy and idle clock ticks of core $1 ("BUSY IDLE", /proc/stat: idle and iowait count as idle).
core_ticks() {
    awk -v cpu="cpu$1" '$1 == cpu {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat
}

# Rescheduling interrupts (IPIs) core $1 has received (/proc/interrupts, RES).
core_ipis() {
    awk -v col=$(($1 + 2)) '$1 == "RES:" {print $col}' /proc/interrupts
}

# Prints "REQ_PER_SEC CPU_US_PER_REQ PROXY_CORE_BUSY_PCT LOAD_CORE_BUSY_PCT PROXY_CORE_IPI_PER_REQ"
# of one wrk run against port $1 (wrk on LOAD_CPU): the CPU process $2 (with its children)
# spent per request meanwhile, how busy each core was (whatever ran there), and how many
# wake-up IPIs per request the core under test received (each one a sleeping process woken
# from the other core, paid by the waker: a VM exit in a guest). A load core near 100 % while
# the proxy core has idle time means the run measured the load core (wrk + nginx), not the proxy.
rps() {
    local before after out pb lb pa la ib ia
    before=$(cpu_ticks "$2")
    pb=$(core_ticks "$PROXY_CPU") lb=$(core_ticks "$LOAD_CPU") ib=$(core_ipis "$PROXY_CPU")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/hello.html")
    after=$(cpu_ticks "$2")
    pa=$(core_ticks "$PROXY_CPU") la=$(core_ticks "$LOAD_CPU") ia=$(core_ipis "$PROXY_CPU")
    awk -v cpu=$((after - before)) -v hz="$TICKS_PER_SEC" -v pt="$pb $pa" -v lt="$lb $la" \
        -v ipi=$((ia - ib)) '
        function busy(t, f) {
            split(t, f, " ")
            return (f[3] - f[1] + f[4] - f[2] > 0) ? 100 * (f[3] - f[1]) / (f[3] - f[1] + f[4] - f[2]) : 0
        }
        /^Requests\/sec:/ {rate = $2}
        /requests in/ {n = $1}
        END {
            printf "%s %.3f %.0f %.0f %.3f\n", rate, (n > 0) ? cpu * 1e6 / hz / n : 0, busy(pt),
                busy(lt), (n > 0) ? ipi / n : 0
        }' <<<"$out"
}

# Prints syscalls per request of process $2 (all its threads, and its children) over a
# SYSCALL_DURATION wrk run against port $1.
syscalls_per_req() {
    local pids out calls
    pids=$(echo "$2" $(pgrep -P "$2" || true) | tr ' ' ',')
    perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$TMP/perf.$1" -- \
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$SYSCALL_DURATION" "http://127.0.0.1:$1/hello.html" >"$TMP/wrk.$1" 2>&1 || true
    calls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$TMP/perf.$1")
    awk -v calls="${calls:-0}" '/requests in/ {n = $1} END {printf "%.2f\n", (n > 0) ? calls / n : 0}' "$TMP/wrk.$1"
}

NGINX=$(free_port) SERVE=$(free_port) HA_TCP=$(free_port) HA_HTTP=$(free_port)
PX_TCP=$(free_port) PX_HTTP=$(free_port) PX_TCPT=$(free_port)

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
    keepalive_requests 100000000;
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

start "$UPSTREAM_CPU" nginx -c "$TMP/nginx.conf" -p "$TMP"
NGINX_PID=$LAST_PID
start "$PROXY_CPU" haproxy -f "$TMP/haproxy.cfg" -db
HA_PID=$LAST_PID
start "$PROXY_CPU" "$PORTLAB" serve --listen "127.0.0.1:$SERVE" --threads 1
SERVE_PID=$LAST_PID
start "$PROXY_CPU" "$PORTLAB" proxy --listen "127.0.0.1:$PX_TCP" --connect "127.0.0.1:$NGINX" --threads 1 \
    --batch-wait "${BATCH_WAIT:-50us}"
PX_TCP_PID=$LAST_PID
start "$PROXY_CPU" "$PORTLAB" proxy --engine tokio --listen "127.0.0.1:$PX_TCPT" --connect "127.0.0.1:$NGINX" --threads 1
PX_TCPT_PID=$LAST_PID
start "$PROXY_CPU" "$PORTLAB" proxy --mode http --pool "$POOL" --listen "127.0.0.1:$PX_HTTP" \
    --connect "127.0.0.1:$NGINX" --threads 1
PX_HTTP_PID=$LAST_PID
for port in $NGINX $SERVE $HA_TCP $HA_HTTP $PX_TCP $PX_HTTP $PX_TCPT; do wait_http "$port"; done

# QUOTA_PCT: one CFS-bandwidth cgroup for the processes under test (only one of them serves
# at a time, so they never share the quota). Removed on exit.
QUOTA_CG=
if [[ -n ${QUOTA_PCT:-} ]]; then
    quota_us=$((QUOTA_PCT * 1000))
    if [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        QUOTA_CG=/sys/fs/cgroup/cpu/portlab-bench-$$
        mkdir "$QUOTA_CG"
        echo 100000 >"$QUOTA_CG/cpu.cfs_period_us"
        echo "$quota_us" >"$QUOTA_CG/cpu.cfs_quota_us"
    elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
        QUOTA_CG=/sys/fs/cgroup/portlab-bench-$$
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
        mkdir "$QUOTA_CG"
        echo "$quota_us 100000" >"$QUOTA_CG/cpu.max"
    else
        echo "bench: QUOTA_PCT needs the cgroup cpu controller (v1 or v2)" >&2
        exit 2
    fi
    for pid in "$HA_PID" "$SERVE_PID" "$PX_TCP_PID" "$PX_HTTP_PID" "$PX_TCPT_PID"; do echo "$pid" >"$QUOTA_CG/cgroup.procs"; done
    echo "under test capped at $QUOTA_PCT % of a core (CFS quota, $QUOTA_CG); nginx as server under test is not capped"
fi

echo "wrk -t1 -c$CONNS -d$DURATION keep-alive, $ROUNDS interleaved rounds, $(nproc) CPUs, $(uname -r)"
echo "under test on core $PROXY_CPU (1 thread each); wrk on core $LOAD_CPU, the upstream nginx on core $UPSTREAM_CPU"
echo "req/s and CPU µs/req: medians over rounds; ratios: portlab/peer per round, median [min–max]"
RESULTS=$TMP/results.tsv
: >"$RESULTS"
compare() { # name peer_port peer_pid portlab_port portlab_pid bar
    local name=$1 round peer ours
    echo "  $name:" >&2
    # Warm-up, not measured.
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$2/hello.html" >/dev/null
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$4/hello.html" >/dev/null
    for round in $(seq "$ROUNDS"); do
        if ((round % 2)); then
            peer=$(rps "$2" "$3"); ours=$(rps "$4" "$5")
        else
            ours=$(rps "$4" "$5"); peer=$(rps "$2" "$3")
        fi
        echo "    round $round: peer $peer  portlab $ours  (req/s, CPU µs/req, busy % core under test, load core, IPIs/req)" >&2
        printf '%s\t%s\t%s\t%s\n' "$name" "$6" "${peer// /$'\t'}" "${ours// /$'\t'}" >>"$RESULTS"
    done
    printf 'sys\t%s\t%s\t%s\n' "$name" "$(syscalls_per_req "$2" "$3")" "$(syscalls_per_req "$4" "$5")" >>"$RESULTS"
}
for pair in $PAIRS; do
    case $pair in
    serve)
        pin "$NGINX_PID" "$PROXY_CPU"
        compare "nginx / portlab serve" "$NGINX" "$NGINX_PID" "$SERVE" "$SERVE_PID" 0.8
        pin "$NGINX_PID" "$UPSTREAM_CPU" ;;
    tcp) compare "HAProxy tcp / proxy tcp" "$HA_TCP" "$HA_PID" "$PX_TCP" "$PX_TCP_PID" 1.1 ;;
    tcp-tokio) compare "HAProxy tcp / tcp tokio" "$HA_TCP" "$HA_PID" "$PX_TCPT" "$PX_TCPT_PID" 1.1 ;;
    http) compare "HAProxy http / proxy http" "$HA_HTTP" "$HA_PID" "$PX_HTTP" "$PX_HTTP_PID" 1.1 ;;
    *) echo "bench: unknown pair $pair (serve, tcp, tcp-tokio, http)" >&2; exit 2 ;;
    esac
done
# p50 and p99 latency (µs) of one `wrk --latency -c $2` run against port $1.
latency() {
    taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d2s --latency "http://127.0.0.1:$1/hello.html" |
        awk 'function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1e6 }
             $1 == "50%" {p50 = us($2)} $1 == "99%" {p99 = us($2)} END {printf "%.0f %.0f", p50, p99}'
}
if [[ ${LATENCY:-} == 1 || ( -z ${LATENCY:-} && " $PAIRS " == *" tcp "* ) ]]; then
    echo "latency through the forwarders (wrk --latency, 2 s runs, median of 3 interleaved rounds; µs):"
    printf '  %-24s %9s %9s %12s %12s\n' forwarder "c1 p50" "c1 p99" "c$CONNS p50" "c$CONNS p99"
    LAT=$TMP/latency.tsv
    : >"$LAT"
    for round in 1 2 3; do
        for fw in "HAProxy tcp:$HA_TCP" "portlab tcp uring:$PX_TCP" "portlab tcp tokio:$PX_TCPT"; do
            printf '%s\t%s %s\n' "${fw%%:*}" "$(latency "${fw##*:}" 1)" "$(latency "${fw##*:}" "$CONNS")" >>"$LAT"
        done
    done
    python3 - "$LAT" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, vals = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append(list(map(float, vals.split())))
for name, rs in rows.items():
    med = [statistics.median(r[i] for r in rs) for i in range(4)]
    print(f"  {name:<24} {med[0]:>9.0f} {med[1]:>9.0f} {med[2]:>12.0f} {med[3]:>12.0f}")
PY
    echo
fi
python3 - "$RESULTS" <<'PY'
import statistics, sys
rounds, sysc, bars = {}, {}, {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "sys":
        sysc[f[1]] = (float(f[2]), float(f[3]))
        continue
    name, bar, pr, pc, pbusy, plbusy, pipi, orate, oc, obusy, olbusy, oipi = f
    bars[name] = float(bar)
    rounds.setdefault(name, []).append(tuple(map(float, (pr, pc, orate, oc, pbusy, plbusy, obusy,
                                                         olbusy, pipi, oipi))))
def spread(xs):
    xs = sorted(xs)
    return statistics.median(xs), f"{statistics.median(xs):.2f} [{xs[0]:.2f}–{xs[-1]:.2f}]"
print(f"{'pair (peer / portlab)':<27} {'peer req/s':>10} {'portlab':>9} {'ratio req/s':>19} {'bar':>4}"
      f" {'peer CPU':>9} {'portlab':>8} {'ratio CPU/req':>19} {'peer sys':>9} {'portlab':>8}")
status = 0
for name, rs in rounds.items():
    rate_ratio = [r[2] / r[0] for r in rs if r[0]]
    cpu_ratio = [r[3] / r[1] for r in rs if r[1]]
    med, txt = spread(rate_ratio)
    _, ctxt = spread(cpu_ratio) if cpu_ratio else (0, "n/a")
    ok = med >= bars[name]
    status |= not ok
    ps, os_ = sysc.get(name, (float("nan"), float("nan")))
    print(f"{name:<27} {statistics.median(r[0] for r in rs):>10.0f} {statistics.median(r[2] for r in rs):>9.0f}"
          f" {txt:>19} {bars[name]:>4} {statistics.median(r[1] for r in rs):>9.2f} {statistics.median(r[3] for r in rs):>8.2f}"
          f" {ctxt:>19} {ps:>9.2f} {os_:>8.2f} {'ok' if ok else 'LOW'}")
print("CPU: µs of CPU the server/proxy process spent per request; sys: its system calls per request")
print()
print(f"{'busy % (median), cores':<27} {'peer: under test':>17} {'load':>5} {'IPIs/req':>9}"
      f" {'portlab: under test':>20} {'load':>5} {'IPIs/req':>9}")
for name, rs in rounds.items():
    med = lambda i: statistics.median(r[i] for r in rs)
    print(f"{name:<27} {med(4):>17.0f} {med(5):>5.0f} {med(8):>9.3f} {med(6):>20.0f} {med(7):>5.0f}"
          f" {med(9):>9.3f}")
print("A load core near 100 % while the core under test idles: that run measured wrk + nginx, not the proxy;")
print("IPIs/req: wake-ups of the core under test from the other core (its process slept in epoll_wait).")
sys.exit(status)
PY
