#!/usr/bin/env bash
# model-grid.sh — does `portlab simulate` agree with the real kernel?
#
# For each scenario of a grid (range size, concurrency, connection policy, tcp_tw_reuse,
# one or two destinations) this script makes a private network namespace with its own
# sysctls, starts nginx on 127.0.0.1:8080 (and :8081 = a second destination) inside it, runs
# a real client against it, then runs `portlab simulate` for the same workload and compares:
#   - failure fraction (EADDRNOTAVAIL / attempts): must agree within ±2 percentage points;
#   - first-failure time: within 10 % or 200 ms.
# The simulator is given what it cannot know in advance, measured in the same run: the mean
# request latency before the first failure (later, workers spinning on EADDRNOTAVAIL contend
# on the kernel's bind-hash locks and slow the successful connects down, which the simulator
# does not model; portlab load reports only the mean) and the time a failed connect() takes,
# derived from the run's own time accounting.
#
# Clients:
#   CLIENT=rust (default) — crates/portlab-model/examples/grid_client.rs (std threads, one
#                           blocking socket each), built here if missing;
#   CLIENT=python         — the same loop in python3 (slower, noisier: the GIL);
#   CLIENT=load           — `portlab load URL... -n N -c C --connection P --json`.
#
# Usage: scripts/model-grid.sh [PORTLAB_BIN]       (root; needs ip, nginx, jq, python3)
#   PORTLAB_BIN defaults to target/debug/portlab (build it first: cargo build -p portlab).
#   SCENARIOS="name1 name2" limits the grid; KEEP_TMP=1 keeps the work directory;
#   PORTLAB_LOAD=BIN runs `load` from another binary; VERBOSE=1 prints each measurement.
# Exit code: 0 when every scenario agrees, 1 otherwise, 2 on a set-up error.
set -euo pipefail

# ---------------------------------------------------------------------------------------
# jq paths into `portlab load --json` output (CLIENT=load), from the load branch's
# docs/load-report.schema.json (schema_version 1). CHECK THEM if that schema changes.
# `portlab load` takes one URL, so two destinations run as two load processes of c/2 workers
# and n/2 requests each, in the same namespace (the port pools are the namespace's).
LOAD_JQ_SUCCESSES='.summary.succeeded'
LOAD_JQ_FAILURES='([.errors[] | select(.class == "AddrNotAvailable") | .count] | add // 0)'
# Each error class carries `first_at_ms` (µs precision) since the start of the run.
LOAD_JQ_FIRST_FAILURE_SECS='([.errors[] | select(.class == "AddrNotAvailable") | .first_at_ms] | min | if . == null then null else . / 1000 end)'
LOAD_FIRST_FAILURE_RESOLUTION_SECS=0
LOAD_JQ_ELAPSED_SECS='.summary.elapsed_secs'
# The median: the mean is pulled up by the slow tail once workers contend on an exhausted range.
LOAD_JQ_LATENCY_MEAN_MS='(.latency.p50_us / 1000)'
# ---------------------------------------------------------------------------------------

PORTLAB=${1:-target/debug/portlab}
PORTLAB_LOAD=${PORTLAB_LOAD:-$PORTLAB}   # the binary with `load`, if not the same one
CLIENT=${CLIENT:-rust}
GRID_CLIENT=${GRID_CLIENT:-target/release/examples/grid_client}
FRACTION_TOLERANCE_POINTS=2
FIRST_FAILURE_REL=0.10
FIRST_FAILURE_ABS_SECS=0.2
RESOLUTION=0
[[ $CLIENT == load ]] && RESOLUTION=$LOAD_FIRST_FAILURE_RESOLUTION_SECS

# name range_size concurrency policy tw_reuse tw_reuse_delay_ms destinations requests
GRID=(
  "drop-r1000-c1-reuse0        1000 1 drop       0 1000 1 3000"
  "drop-r500-c4-reuse0-2dst     500 4 drop       0 1000 2 3000"
  "drop-r4000-c8-reuse0        4000 8 drop       0 1000 1 6000"
  "close-r1000-c4-reuse0       1000 4 close      0 1000 1 6000"
  "keepalive-r500-c8-reuse0     500 8 keep-alive 0 1000 1 6000"
  "drop-r1000-c1-reuse1        1000 1 drop       1  500 1 20000"
  "drop-r1000-c4-reuse1-2dst   1000 4 drop       1 1000 2 20000"
)

die() { echo "model-grid: $*" >&2; exit 2; }
[[ $EUID -eq 0 ]] || die "needs root (creates network namespaces)"
command -v jq >/dev/null || die "needs jq"
command -v python3 >/dev/null || die "needs python3"
command -v nginx >/dev/null || die "needs nginx (apt-get install nginx)"
[[ -x $PORTLAB ]] || die "no portlab binary at $PORTLAB (cargo build -p portlab)"
if [[ $CLIENT == rust && ! -x $GRID_CLIENT ]]; then
  cargo build -q --release --example grid_client -p portlab-model || die "cannot build grid_client"
fi

WORK=$(mktemp -d /tmp/model-grid.XXXXXX)
NAMESPACES=()
SERVER_PIDS=()
cleanup() {
  local pid ns
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  [[ ${KEEP_TMP:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# nginx inside the namespace. Fixed ports are safe here: the namespace is private, and 8080 /
# 8081 lie outside the client's range (a bind()-ed port inside it would be one port fewer for
# connect(): research §1.3 rule 2, experiment E2c). nginx answers keep-alive requests and
# waits for the client to close (so `drop` leaves TIME_WAIT on the client); on
# "Connection: close" it closes first (TIME_WAIT on the server, research D3).
start_nginx() { # ns dir dests
  local ns=$1 dir=$2 dests=$3 listen="listen 127.0.0.1:8080;"
  [[ $dests == 2 ]] && listen+=" listen 127.0.0.1:8081;"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
worker_rlimit_nofile 70000;
events { worker_connections 65000; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server { $listen default_type text/plain; location / { return 200 "ok"; } }
}
CONF
  ip netns exec "$ns" nginx -p "$dir" -c "$dir/nginx.conf" &
  SERVER_PIDS+=($!)
}

wait_for_listeners() { # ns count
  local i
  for ((i = 0; i < 200; i++)); do
    [[ $(ip netns exec "$1" ss -Hltn 'sport >= :8080 and sport <= :8081' | wc -l) -ge $2 ]] && return 0
    sleep 0.05
  done
  return 1
}

# The python client: N attempts shared by C threads; thread w talks to destination w % D
# (as portlab simulate assigns workers). Prints one JSON object.
cat >"$WORK/client.py" <<'PY'
import errno, json, socket, sys, threading, time
n, c, policy = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dests = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[4:]]
lock = threading.Lock()
state = {"left": n, "ok": 0, "fail": 0, "other": 0, "first": None, "lat": 0.0, "failt": 0.0,
         "ok0": 0, "lat0": 0.0}
hdr = b"close" if policy == "close" else b"keep-alive"
REQ = b"GET / HTTP/1.1\r\nHost: grid\r\nConnection: " + hdr + b"\r\n\r\n"
start = time.perf_counter()
def take():
    with lock:
        if state["left"] <= 0:
            return False
        state["left"] -= 1
        return True
def exchange(s):
    s.sendall(REQ)
    buf = b""
    while not buf.endswith(b"ok"):
        data = s.recv(4096)
        if not data:
            raise ConnectionError("closed early")
        buf += data
def worker(w):
    dst = dests[w % len(dests)]
    sock = None
    while take():
        t0 = time.perf_counter()
        if sock is None:
            s = socket.socket()
            try:
                s.connect(dst)
            except OSError as e:
                t1 = time.perf_counter()
                s.close()
                with lock:
                    if e.errno == errno.EADDRNOTAVAIL:
                        state["fail"] += 1
                        state["failt"] += t1 - t0
                        if state["first"] is None:
                            state["first"] = t0 - start
                    else:
                        state["other"] += 1
                continue
            sock = s
        try:
            exchange(sock)
            if policy == "close":
                while sock.recv(4096):
                    pass
        except OSError:
            with lock:
                state["other"] += 1
            sock.close(); sock = None
            continue
        if policy != "keep-alive":
            sock.close(); sock = None
        t1 = time.perf_counter()
        with lock:
            state["ok"] += 1
            state["lat"] += t1 - t0
            if state["first"] is None:
                state["ok0"] += 1
                state["lat0"] += t1 - t0
    if sock is not None:
        sock.close()
threads = [threading.Thread(target=worker, args=(w,)) for w in range(c)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.perf_counter() - start
print(json.dumps({
    "successes": state["ok"], "failures": state["fail"], "other_errors": state["other"],
    "first_failure_secs": state["first"], "elapsed_secs": elapsed,
    "latency_mean_ms": 1000 * state["lat"] / max(state["ok"], 1),
    "latency_mean_ms_before_first_failure": 1000 * state["lat0"] / max(state["ok0"], 1),
    "failed_connect_mean_us": 1e6 * state["failt"] / state["fail"] if state["fail"] else None,
}))
PY

# run_measured NS N C POLICY ADDR:PORT... -> JSON with successes, failures, first_failure_secs,
# elapsed_secs, latency_mean_ms, failed_connect_mean_us (null if unknown)
run_measured() {
  local ns=$1 n=$2 c=$3 policy=$4; shift 4
  if [[ $CLIENT == rust ]]; then
    ip netns exec "$ns" timeout 300 "$GRID_CLIENT" "$n" "$c" "$policy" "$@"
  elif [[ $CLIENT == python ]]; then
    ip netns exec "$ns" timeout 300 python3 "$WORK/client.py" "$n" "$c" "$policy" "$@"
  else
    local d=$# i=0 p pids=()
    for p in "$@"; do
      i=$((i + 1))
      ip netns exec "$ns" timeout 300 "$PORTLAB_LOAD" load "http://$p/" -n $((n / d)) \
        -c $((c / d)) --connection "$policy" --json >"$WORK/load.$i.json" &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    # Merge the runs.
    jq -s -c "map({s: ($LOAD_JQ_SUCCESSES), f: ($LOAD_JQ_FAILURES),
                   first: ($LOAD_JQ_FIRST_FAILURE_SECS), e: ($LOAD_JQ_ELAPSED_SECS),
                   l: ($LOAD_JQ_LATENCY_MEAN_MS)})
      | {successes: (map(.s) | add), failures: (map(.f) | add),
         first_failure_secs: ([.[].first | select(. != null)] | min),
         elapsed_secs: (map(.e) | max),
         latency_mean_ms: ((map(.s * .l) | add) / ([(map(.s) | add), 1] | max))}" \
      "$WORK"/load.*.json
    rm -f "$WORK"/load.*.json
  fi
}

printf '%-28s %7s %7s %8s %7s %9s %9s %8s  %s\n' scenario "lat_ms" "lat1_ms" "fail_us" \
  "meas_ff" "pred_ff" "meas_1st" "pred_1st" verdict
all_ok=1
idx=0
for row in "${GRID[@]}"; do
  read -r name size conc policy reuse delay dests n <<<"$row"
  idx=$((idx + 1))
  if [[ -n ${SCENARIOS:-} && " $SCENARIOS " != *" $name "* ]]; then continue; fi
  ns="pl-grid-$$-$idx"
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  ip -n "$ns" link set lo up
  low=40000; high=$((low + size - 1))
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="$low $high" \
    net.ipv4.tcp_tw_reuse="$reuse" net.ipv4.tcp_tw_reuse_delay="$delay"
  start_nginx "$ns" "$WORK/$name" "$dests"
  wait_for_listeners "$ns" "$dests" || die "$name: nginx did not start (see $WORK/$name/logs)"
  ports=(127.0.0.1:8080)
  [[ $dests == 2 ]] && ports+=(127.0.0.1:8081)
  measured=$(run_measured "$ns" "$n" "$conc" "$policy" "${ports[@]}")
  # Two predictions, each from the measured input that decides it:
  # - failure fraction: the run's mean latency, and the failed-connect cost that the run's
  #   own time accounting leaves, (c x elapsed - successes x mean latency) / failures, so
  #   that the simulated run spends its time like the real one, whatever the client's
  #   overheads (and the slower successful connects while others spin on EADDRNOTAVAIL,
  #   which the simulator does not model);
  # - first-failure time: the latency before the first failure (when the client reports it).
  lat_ms=$(jq -r '.latency_mean_ms' <<<"$measured")
  lat1_ms=$(jq -r '.latency_mean_ms_before_first_failure // .latency_mean_ms' <<<"$measured")
  fail_us=$(jq -r --argjson c "$conc" --argjson lat "$lat_ms" '
    if .failures > 0 then
      ([($c * .elapsed_secs * 1e6 - .successes * $lat * 1e3) / .failures, 1] | max | floor)
    else "null" end' <<<"$measured")
  fail_flag=()
  [[ $fail_us == null ]] || fail_flag=(--failed-connect-us "$fail_us")
  simulate() { # latency_ms
    "$PORTLAB" simulate --range "$low-$high" --tw-reuse "$reuse" --tw-reuse-delay-ms "$delay" \
      -c "$conc" --latency "${1}ms" --connection "$policy" --destinations "$dests" --loopback \
      -n "$n" "${fail_flag[@]}" --json
  }
  predicted=$(simulate "$lat_ms")
  predicted_first=$(simulate "$lat1_ms" | jq '.simulation.first_failure_secs')
  predicted=$(jq -c --argjson f "$predicted_first" '.simulation.first_failure_secs = $f' \
    <<<"$predicted")
  [[ $fail_us == null ]] && fail_us=$(jq -r '.simulation.failed_connect_us' <<<"$predicted")
  verdict=$(jq -rn --argjson m "$measured" --argjson p "$predicted" \
    --argjson tol "$FRACTION_TOLERANCE_POINTS" --argjson rel "$FIRST_FAILURE_REL" \
    --argjson abs "$FIRST_FAILURE_ABS_SECS" --argjson res "$RESOLUTION" '
    ($m.successes + $m.failures) as $att
    | (if $att > 0 then $m.failures / $att else 0 end) as $mff
    | ($p.simulation.failure_fraction) as $pff
    | ($m.first_failure_secs) as $m1 | ($p.simulation.first_failure_secs) as $p1
    | (((($mff - $pff) * 100) | fabs) <= $tol) as $ok_ff
    | (if $m1 == null and $p1 == null then true
       elif $m1 == null or $p1 == null then false
       else ([$abs, $rel * $m1] | max) as $tol1
         | ($p1 >= $m1 - $tol1 and $p1 <= $m1 + $res + $tol1) end) as $ok_1st
    | [($mff * 100 | . * 100 | round / 100), ($pff * 100 | . * 100 | round / 100),
       ($m1 // "-"), ($p1 // "-"),
       (if $ok_ff and $ok_1st then "agree" else "DIFFER" end)] | @tsv')
  IFS=$'\t' read -r mff pff m1 p1 ok <<<"$verdict"
  [[ $ok == agree ]] || all_ok=0
  fmt_secs() { [[ $1 == - ]] && echo - || printf '%.3f' "$1"; }
  printf '%-28s %7.3f %7.3f %8.0f %6s%% %8s%% %9s %9s  %s\n' "$name" "$lat_ms" "$lat1_ms" "$fail_us" \
    "$mff" "$pff" "$(fmt_secs "$m1")" "$(fmt_secs "$p1")" "$ok"
  [[ ${VERBOSE:-0} == 1 ]] && echo "  measured: $measured"
  kill "${SERVER_PIDS[-1]}" 2>/dev/null || true
  wait "${SERVER_PIDS[-1]}" 2>/dev/null || true
  ip netns del "$ns"
done
[[ $all_ok == 1 ]] && exit 0 || exit 1
