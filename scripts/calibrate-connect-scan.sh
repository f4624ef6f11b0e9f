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
#   1. `portlab serve` on 127.0.0.1:8080 (outside both ranges);
#   2. fill: python3 opens one connection per chosen port with IP_LOCAL_PORT_RANGE set to that
#      one port (Linux 6.3+, option 51: no scan, but the port's bucket is owned by connect()
#      exactly as after a normal connect) and closes it first, leaving a client TIME_WAIT.
#      Ports are chosen as the kernel fills them: random even ports first, then odd ones;
#   3. wait until `ss` shows the TIME_WAIT entries (they last 60 s: enough to measure);
#   4. measure: `portlab load -c 1 --connection close -z 1.5s` (the server closes first, so
#      the measurement adds no client TIME_WAIT): connect p50 and requests/s.
#
# Usage: scripts/calibrate-connect-scan.sh [PORTLAB_BIN]      (root; needs ip, ss, python3, jq)
#   PORTLAB_BIN defaults to target/debug/portlab. FILLS="10 50 90" and RANGES="10000" limit
#   the grid. Output: a table on stdout (also written to $OUT, default
#   target/connect-scan.tsv). Exit 0 when every prediction is within 25 % of its measurement,
#   1 otherwise, 2 on a set-up error.
set -euo pipefail

BIN=${1:-target/debug/portlab}
FILLS=${FILLS:-"10 20 30 40 50 60 70 80 90"}
RANGES=${RANGES:-"10000 30000"}
OUT=${OUT:-target/connect-scan.tsv}
MEASURE=${MEASURE:-1.5s}
[ -x "$BIN" ] || { echo "no portlab binary at $BIN (cargo build -p portlab)" >&2; exit 2; }
for tool in ip ss python3 jq; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }

NS="plscan-$$"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  ip netns delete "$NS" 2>/dev/null || true
}
trap cleanup EXIT

FILLER=$(cat <<'PY'
import random, socket, struct, sys
low, ports, taken = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
IP_LOCAL_PORT_RANGE = 51
even = [p for p in range(low, low + ports) if p % 2 == low % 2]
odd = [p for p in range(low, low + ports) if p % 2 != low % 2]
random.seed(taken)
chosen = random.sample(even, min(taken, len(even)))
if taken > len(even):
    chosen += random.sample(odd, taken - len(even))
made = 0
for p in chosen:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", p | (p << 16)))
    try:
        s.connect(("127.0.0.1", 8080))
        made += 1
    except OSError as e:
        print(f"port {p}: {e}", file=sys.stderr)
    s.close()
print(made)
PY
)

in_ns() { ip netns exec "$NS" "$@"; }

measure_point() {
  local ports=$1 fill=$2
  local low=$(( ports == 10000 ? 40000 : 30000 ))
  local high=$(( low + ports - 1 ))
  local taken=$(( ports * fill / 100 ))
  ip netns add "$NS"
  in_ns ip link set lo up
  in_ns sysctl -qw net.ipv4.ip_local_port_range="$low $high"
  in_ns sysctl -qw net.ipv4.tcp_tw_reuse=0
  in_ns sysctl -qw net.ipv4.tcp_max_tw_buckets=262144
  in_ns "$BIN" serve --listen 127.0.0.1:8080 > /dev/null 2>&1 &
  SERVER_PID=$!
  local listening=0
  for _ in $(seq 400); do
    if in_ns ss -Hltn 2>/dev/null | grep -q '127.0.0.1:8080 '; then listening=1; break; fi
    sleep 0.05
  done
  if [ "$listening" = 0 ]; then
    echo "serve did not listen within 20 s at $ports ports, $fill %" >&2
    kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    ip netns delete "$NS"; return 1
  fi
  local made
  made=$(in_ns python3 -c "$FILLER" "$low" "$ports" "$taken" 2>/dev/null)
  made=${made:-0}
  if [ "$made" -lt $(( taken * 95 / 100 )) ]; then
    echo "the filler placed only $made of $taken TIME_WAIT entries at $ports ports, $fill %" >&2
    kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    ip netns delete "$NS"; return 1
  fi
  # The server closes on EOF; wait for the client TIME_WAIT entries to appear.
  local tw=0
  for _ in $(seq 200); do
    tw=$(in_ns ss -Htan state time-wait '( dport = :8080 )' | wc -l)
    [ "$tw" -ge "$made" ] && break
    sleep 0.05
  done
  local json
  json=$(in_ns "$BIN" load -c 1 -z "$MEASURE" --connection close --no-sample --json http://127.0.0.1:8080/ || true)
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  ip netns delete "$NS"
  local p50 rps
  p50=$(jq -r '.connections.connect_latency.p50_us' <<<"$json")
  rps=$(jq -r '.summary.requests_per_sec' <<<"$json")
  printf '%s\t%s\t%s\t%s\t%s\n' "$ports" "$fill" "$tw" "$p50" "$rps"
}

mkdir -p "$(dirname "$OUT")"
printf 'ports\tfill_pct\ttime_wait\tconnect_p50_us\trequests_per_sec\n' > "$OUT"
for ports in $RANGES; do
  for fill in $FILLS; do
    measure_point "$ports" "$fill" | tee -a "$OUT" || echo "skipped $ports ports, $fill %" >&2
  done
done

# Predictions: portlab simulate --fill-curve for each range, compared point by point — only
# once the simulator has the scan-cost model (not yet: see docs/model.md, "The slow-connect
# cliff"); until then the script only measures.
if ! "$BIN" simulate --help | grep -q -- '--fill-curve'; then
  echo "portlab simulate has no --fill-curve yet: measurements only (in $OUT)" >&2
  exit 0
fi
status=0
printf '\n%-6s %5s %9s %11s %11s %9s %9s %9s %9s\n' ports fill% TW p50_us pred_us ratio req/s pred ratio
while IFS=$'\t' read -r ports fill tw p50 rps; do
  [ "$ports" = ports ] && continue
  low=$(( ports == 10000 ? 40000 : 30000 ))
  pred=$("$BIN" simulate --range "$low-$(( low + ports - 1 ))" --fill-curve --fills "$fill" --json)
  pp50=$(jq -r '.fill_curve.points[0].connect_us' <<<"$pred")
  prps=$(jq -r '.fill_curve.points[0].requests_per_sec' <<<"$pred")
  r1=$(python3 -c "print(f'{$pp50/$p50:.2f}')")
  r2=$(python3 -c "print(f'{$prps/$rps:.2f}')")
  printf '%-6s %5s %9s %11s %11.0f %9s %9.0f %9.0f %9s\n' "$ports" "$fill" "$tw" "$p50" "$pp50" "$r1" "$rps" "$prps" "$r2"
  python3 -c "import sys; sys.exit(0 if 0.75 <= $r1 <= 1.25 and 0.75 <= $r2 <= 1.25 else 1)" || status=1
done < "$OUT"
exit $status
