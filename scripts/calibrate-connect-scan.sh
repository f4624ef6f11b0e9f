#!/usr/bin/env bash
# calibrate-connect-scan.sh — the slow-connect cliff, measured: connect() p50 and closed-loop
# requests/s towards one destination while its ephemeral-port pool is 10 … 90 % full of
# TIME_WAIT entries, for a 10,000- and a 30,000-port range; then, once the simulator has the
# scan-cost model, `portlab simulate --fill-curve` for the same ranges and the ratio of each
# prediction to its measurement.
#
# Why it is slow: connect() without bind() scans the range from a hashed offset, even ports
# first, then odd (net/ipv4/inet_hashtables.c __inet_hash_connect(); research
# port-allocation.md §1.6); every taken port costs a bind-bucket and an ehash lookup. Past
# half full every connect walks all taken even ports first.
#
# Per fill point, in a fresh network namespace (tcp_tw_reuse 0, loopback, own range):
#   1. fill: python3 listens on 127.0.0.1:8080 and runs connect → accept → client close →
#      server close cycles, each leaving one client TIME_WAIT towards 127.0.0.1:8080 (the
#      destination measured next: a port held towards another destination would not count).
#      The first parity (up to half the range) is filled by the kernel itself: unbound
#      connects, so the ports are the ones its cursor hands out (sequential, small random
#      gaps). Past half, the other parity is pinned port by port with IP_LOCAL_PORT_RANGE
#      (Linux 6.3+, option 51; the bucket is owned by connect() exactly as after a normal
#      connect), at random: letting the kernel do it would cost a walk of every even port per
#      connect. The filler then reads /proc/net/tcp, re-pins every port that is not in
#      TIME_WAIT and tops up a short kernel fill, until the pool holds exactly the target
#      (at most 10 rounds; the point is skipped otherwise). The python listener then exits;
#   2. `portlab serve` on 127.0.0.1:8080 (outside both ranges);
#   3. check with `ss` that the TIME_WAIT entries are all there (they last 60 s: enough);
#   4. measure: `portlab load -c 1 --connection close -z 1.5s` (the server closes first, so
#      the measurement adds no client TIME_WAIT): connect p50 and requests/s.
# The 0 % point of each range, measured BASE_RUNS times (default 3), is the baseline: the
# median connect p50 and request time (1/req/s − p50) are passed to `simulate` (FIT=base,
# the default; FIT=none uses the model's built-in
# constants). The per-port cost is never fitted to these points: it is the model's constant,
# measured separately by PERPORT=1 (CPU and wall time per connect with the first parity full
# of TIME_WAIT or of bind()-held ports, against an empty pool; see docs/model.md).
#
# Usage: scripts/calibrate-connect-scan.sh [PORTLAB_BIN]      (root; needs ip, ss, python3, jq)
#   PORTLAB_BIN defaults to target/debug/portlab. FILLS="0 10 50 90" and RANGES="10000" limit
#   the grid; QUICK=1 is RANGES=10000 FILLS="0 20 50 80". PERPORT=1 also measures the
#   per-port cost first; SCAN_PER_PORT_US=0.45 predicts with another per-port cost (a what-if:
#   fitting it to these points makes the comparison circular). REPEAT=3 measures every fill
#   point in 3 fresh namespaces (the rounds interleaved: all points once, then again) and
#   compares the median with the prediction; the per-run values are kept in $OUT. The 0 %
#   baseline is measured BASE_RUNS times in every round, so a drift of the machine between
#   rounds moves the baseline as it moves the points. PIN=1 pins
#   the filler and `load` to CPU 0 and `serve` to CPU 1.
#   Before each point the script records the TIME_WAIT entries held outside the namespace
#   (the host's own, from `ss`, and the tw_sock_TCP slab): every namespace shares the bind
#   hash (65,536 buckets here, "TCP bind hash table entries" in dmesg), so ports another
#   namespace binds or releases during a walk lengthen the chains the walk reads.
#   Output: a table on stdout (also written to $OUT, default
#   target/connect-scan.tsv; each point's `portlab load --json` beside it as
#   connect-scan-PORTS-FILL.json). Exit 0 when every prediction is within 25 % of its
#   measurement, 1 otherwise, 2 on a set-up error. Takes about 8 min for the full grid.
#   Quiet-machine run for the record:
#     cargo build --release -p portlab && PERPORT=1 scripts/calibrate-connect-scan.sh target/release/portlab
set -euo pipefail

BIN=${1:-target/debug/portlab}
if [ "${QUICK:-0}" = 1 ]; then
  FILLS=${FILLS:-"0 20 50 80"}
  RANGES=${RANGES:-"10000"}
fi
FILLS=${FILLS:-"0 10 20 30 40 50 60 70 80 90"}
RANGES=${RANGES:-"10000 30000"}
FIT=${FIT:-base}
OUT=${OUT:-target/connect-scan.tsv}
MEASURE=${MEASURE:-1.5s}
[ -x "$BIN" ] || { echo "no portlab binary at $BIN (cargo build -p portlab)" >&2; exit 2; }
for tool in ip ss python3 jq; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }

PIN_FILL="" PIN_SERVE="" PIN_LOAD=""
if [ "${PIN:-0}" = 1 ]; then
  PIN_FILL="taskset -c 0" PIN_SERVE="taskset -c 1" PIN_LOAD="taskset -c 0"
fi
REPEAT=${REPEAT:-1}

NS="plscan-$$"
SERVER_PID=""
cleanup() {
  stop_server
  ip netns delete "$NS" 2>/dev/null || true
}
trap cleanup EXIT

FILLER=$(cat <<'PY'
# Fills one destination's pool with client TIME_WAIT entries; prints the number held.
import os, random, socket, struct, sys, time
low, ports, taken = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
IP_LOCAL_PORT_RANGE = 51
DEST = ("127.0.0.1", 8080)
lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(DEST)
lst.listen(64)

def cycle(pin=None):
    """connect, accept, client closes first, server closes: one client TIME_WAIT."""
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if pin is not None:
        c.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", pin | (pin << 16)))
    try:
        c.connect(DEST)
    except OSError:
        c.close()
        return False
    srv, _ = lst.accept()
    c.close()
    while srv.recv(64):
        pass
    srv.close()
    return True

def client_ports():
    """Local ports in the range with a socket towards DEST, by TCP state (hex code)."""
    held = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            lport = int(fields[1].split(":")[1], 16)
            rport = int(fields[2].split(":")[1], 16)
            if rport == DEST[1] and low <= lport < low + ports:
                held[lport] = fields[3]
    return held

first = [p for p in range(low, low + ports) if (p - low) % 2 == 0]
other = [p for p in range(low, low + ports) if (p - low) % 2 == 1]
random.seed(taken)
kernel_part = min(taken, len(first))
pinned = random.sample(other, taken - kernel_part) if taken > len(first) else []
for _ in range(kernel_part):
    cycle()
for p in pinned:
    cycle(p)
for _round in range(10):
    deadline = time.monotonic() + 5
    while True:  # let FIN_WAIT states settle into TIME_WAIT
        held = client_ports()
        if all(st == "06" for st in held.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    tw = {p for p, st in held.items() if st == "06"}
    want_first = set(first) if taken >= len(first) else None
    missing = [p for p in pinned if p not in tw]
    if want_first is not None:
        missing += [p for p in first if p not in tw]
    short = taken - len(tw) - len(missing)
    if not missing and short <= 0:
        break
    for p in missing:
        cycle(p)
    for _ in range(max(short, 0)):
        cycle()
print(len({p for p, st in client_ports().items() if st == "06"}))
PY
)

in_ns() { ip netns exec "$NS" "$@"; }

stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  SERVER_PID=""
}

new_ns() {
  local low=$1 high=$2
  ip netns add "$NS"
  in_ns ip link set lo up
  in_ns sysctl -qw net.ipv4.ip_local_port_range="$low $high"
  in_ns sysctl -qw net.ipv4.tcp_tw_reuse=0
  in_ns sysctl -qw net.ipv4.tcp_max_tw_buckets=262144
}

measure_point() {
  local ports=$1 fill=$2
  local low=$(( ports == 10000 ? 40000 : 30000 ))
  local high=$(( low + ports - 1 ))
  local taken=$(( ports * fill / 100 ))
  # TIME_WAIT entries outside this namespace: the host's own (ss) / all namespaces' (slab).
  local host_tw
  host_tw="$(ss -Htan state time-wait | wc -l)/$(awk '$1 == "tw_sock_TCP" {print $2}' /proc/slabinfo)"
  new_ns "$low" "$high"
  local made
  made=$(in_ns $PIN_FILL python3 -c "$FILLER" "$low" "$ports" "$taken") || made=0
  if [ "$made" != "$taken" ]; then
    echo "the filler holds $made of $taken TIME_WAIT entries at $ports ports, $fill %" >&2
    ip netns delete "$NS"; return 1
  fi
  # Not through in_ns: a backgrounded shell function is a subshell, and killing its PID would
  # leave the server running.
  ip netns exec "$NS" $PIN_SERVE "$BIN" serve --listen 127.0.0.1:8080 > /dev/null 2>&1 &
  SERVER_PID=$!
  local listening=0
  for _ in $(seq 400); do
    if in_ns ss -Hltn 2>/dev/null | grep -q '127.0.0.1:8080 '; then listening=1; break; fi
    sleep 0.05
  done
  if [ "$listening" = 0 ]; then
    echo "serve did not listen within 20 s at $ports ports, $fill %" >&2
    stop_server; ip netns delete "$NS"; return 1
  fi
  local tw
  tw=$(in_ns ss -Htan state time-wait "( dport = :8080 and sport >= :$low and sport <= :$high )" | wc -l)
  local json
  json=$(in_ns $PIN_LOAD "$BIN" load -c 1 -z "$MEASURE" --connection close --no-sample --json http://127.0.0.1:8080/ || true)
  stop_server
  ip netns delete "$NS"
  printf '%s\n' "$json" > "$(dirname "$OUT")/connect-scan-$ports-$fill.json"
  local p50 rps
  p50=$(jq -r '.connections.connect_latency.p50_us' <<<"$json")
  rps=$(jq -r '.summary.requests_per_sec' <<<"$json")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$ports" "$fill" "$tw" "$p50" "$rps" "$host_tw"
}

PERPORT_PY=$(cat <<'PY'
# CPU (this thread, user+sys) and wall time per connect cycle (server closes first, so the
# probe leaves no TIME_WAIT) on an empty pool, then with every first-parity port held by a
# client TIME_WAIT towards the destination, then (fresh) by bind()-held sockets.
import resource, socket, statistics, sys, time
low, ports, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
DEST = ("127.0.0.1", 8080)
lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(DEST)
lst.listen(64)
def cycle(client_first):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.connect(DEST)
    srv, _ = lst.accept()
    if client_first:
        c.close(); srv.recv(64); srv.close()
    else:
        srv.close(); c.recv(64); c.close()
def probe(n=200):
    cpu, wall = [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_THREAD); t0 = time.perf_counter()
        cycle(False)
        t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_THREAD)
        cpu.append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e6)
        wall.append((t1 - t0) * 1e6)
    return statistics.mean(cpu), statistics.median(wall)
empty = probe()
first = ports // 2 + ports % 2
held = []
if mode == "time-wait":
    for _ in range(first):
        cycle(True)
else:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for p in range(low, low + ports, 2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", p))
        held.append(s)
full = probe()
print(f"{mode}\t{ports}\t{empty[0]:.1f}\t{full[0]:.1f}\t{(full[0]-empty[0])/first:.3f}\t{empty[1]:.1f}\t{full[1]:.1f}\t{(full[1]-empty[1])/first:.3f}")
PY
)

if [ "${PERPORT:-0}" = 1 ]; then
  echo "per-port cost: the first parity held; mean CPU and p50 wall per connect cycle:"
  printf 'held_by\tports\tcpu_empty_us\tcpu_full_us\tcpu_per_port_us\twall_empty_us\twall_full_us\twall_per_port_us\n'
  for ports in $RANGES; do
    low=$(( ports == 10000 ? 40000 : 30000 ))
    for mode in time-wait bind; do
      new_ns "$low" "$(( low + ports - 1 ))"
      in_ns python3 -c "$PERPORT_PY" "$low" "$ports" "$mode" || echo "per-port $mode failed" >&2
      ip netns delete "$NS"
    done
  done
  echo
fi

mkdir -p "$(dirname "$OUT")"
printf 'ports\tfill_pct\ttime_wait\tconnect_p50_us\trequests_per_sec\thost_time_wait\n' > "$OUT"
# The 0 % baseline is measured BASE_RUNS times (default 3), each in a fresh namespace: the
# base connect moves by tens of µs between namespaces, and the median of three keeps one
# outlier from setting every prediction.
for round in $(seq "$REPEAT"); do
  for ports in $RANGES; do
    for fill in $FILLS; do
      runs=1
      [ "$fill" = 0 ] && runs=${BASE_RUNS:-3}
      for _ in $(seq "$runs"); do
        measure_point "$ports" "$fill" | tee -a "$OUT" || echo "skipped $ports ports, $fill %" >&2
      done
    done
  done
done

# Predictions: `portlab simulate --fill-curve` for each point, compared with its measurement.
status=0
printf '\n%-6s %5s %7s %9s %9s %6s %8s %8s %6s  %s\n' ports fill% TW p50_us pred_us ratio req/s pred ratio runs_p50_us
declare -A BASE_US REQ_US BASE_ALL REQ_ALL
while IFS=$'\t' read -r ports fill tw p50 rps _; do
  [ "$ports" = ports ] && continue
  if [ "$fill" = 0 ] && [ "$FIT" = base ]; then
    BASE_ALL[$ports]+="$p50 "
    REQ_ALL[$ports]+="$(python3 -c "print(f'{1e6/$rps - $p50:.1f}')") "
  fi
done < "$OUT"
median() { python3 -c "import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))" $1; }
for ports in "${!BASE_ALL[@]}"; do
  BASE_US[$ports]=$(median "${BASE_ALL[$ports]}")
  REQ_US[$ports]=$(median "${REQ_ALL[$ports]}")
done
# One row per (range, fill): the median of its runs (REPEAT; BASE_RUNS × REPEAT at 0 %), with
# every run's p50 beside it.
MEDIANS=$(python3 - "$OUT" <<'PY'
import statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]).read().splitlines()[1:]:
    ports, fill, tw, p50, rps = line.split("\t")[:5]
    key = (ports, fill)
    if key not in rows:
        rows[key] = []
        order.append(key)
    rows[key].append((int(tw), float(p50), float(rps)))
for key in order:
    runs = rows[key]
    tw = min(r[0] for r in runs)
    p50 = statistics.median(r[1] for r in runs)
    rps = statistics.median(r[2] for r in runs)
    each = ",".join(f"{r[1]:.0f}" for r in runs)
    print(f"{key[0]}\t{key[1]}\t{tw}\t{p50:.0f}\t{rps:.1f}\t{each}")
PY
)
[ "$REPEAT" -gt 1 ] && printf '(medians of %s runs per point; each run'"'"'s p50 in the last column)\n' "$REPEAT"
while IFS=$'\t' read -r ports fill tw p50 rps each; do
  low=$(( ports == 10000 ? 40000 : 30000 ))
  fit=()
  if [ -n "${SCAN_PER_PORT_US:-}" ]; then fit+=(--scan-per-port-us "$SCAN_PER_PORT_US"); fi
  if [ -n "${BASE_US[$ports]:-}" ]; then
    fit+=(--connect-base-us "${BASE_US[$ports]}" --request-us "${REQ_US[$ports]}")
  fi
  pred=$("$BIN" simulate --range "$low-$(( low + ports - 1 ))" --fill-curve --fills "$fill" "${fit[@]}" --json)
  pp50=$(jq -r '.fill_curve.points[0].connect_us' <<<"$pred")
  prps=$(jq -r '.fill_curve.points[0].requests_per_sec' <<<"$pred")
  r1=$(python3 -c "print(f'{$pp50/$p50:.2f}')")
  r2=$(python3 -c "print(f'{$prps/$rps:.2f}')")
  printf '%-6s %5s %7s %9s %9.0f %6s %8.0f %8.0f %6s  %s\n' "$ports" "$fill" "$tw" "$p50" "$pp50" "$r1" "$rps" "$prps" "$r2" "$each"
  python3 -c "import sys; sys.exit(0 if 0.75 <= $r1 <= 1.25 and 0.75 <= $r2 <= 1.25 else 1)" || status=1
done <<<"$MEDIANS"
if [ "$FIT" = base ]; then
  for ports in "${!BASE_US[@]}"; do
    echo "baseline ($ports ports, median of the 0 % runs ${BASE_ALL[$ports]}us): connect ${BASE_US[$ports]} us, request ${REQ_US[$ports]} us; per-port cost and growth: the model's constants" >&2
  done
fi
exit $status
