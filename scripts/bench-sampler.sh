#!/usr/bin/env bash
# What the port-pool sampler costs a load run, in figures noise hardly moves: `portlab load`
# (keep-alive, -c 50, one engine thread pinned to CLIENT_CPU, fixed -n) against `portlab serve`
# in a network namespace that holds TW_SOCKETS TIME_WAIT sockets to the target, with the
# sampler (default, 10 Hz) and with --no-sample, alternated over ROUNDS rounds. Printed:
#   - the sampler thread's own CPU time (telemetry.sampler.cpu_us) as a share of a core — the
#     bar of #18 is ≤ 2 %;
#   - the load process's CPU time per request (user+sys, getrusage via /usr/bin/time), sampler
#     on vs off, and their difference × the request rate as a share of a core (the sampler's
#     cost seen from outside, cache effects included; noisier than the first figure);
#   - dumps taken and ticks.
# A dump's cost grows with every TCP socket of the host (all namespaces: the kernel walks the
# whole established hash), so the TIME_WAIT sockets made here make it a worst case.
#
# Usage (as root): scripts/bench-sampler.sh
# Env: ROUNDS=5 N=300000 TW_SOCKETS=50000 CLIENT_CPU=1 SERVER_CPU=0 ENGINE=auto
#      PORTLAB=path (a built binary: no cargo build)
#      QUICK=1 = ROUNDS=3 N=100000 TW_SOCKETS=20000 unless set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${QUICK:-} ]]; then
  ROUNDS=${ROUNDS:-3} N=${N:-100000} TW_SOCKETS=${TW_SOCKETS:-20000}
fi
ROUNDS=${ROUNDS:-5}
N=${N:-300000}
TW_SOCKETS=${TW_SOCKETS:-50000}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
ENGINE=${ENGINE:-auto}
if [[ -z ${PORTLAB:-} ]]; then cargo build --release -q -p portlab; fi
bin=${PORTLAB:-$PWD/target/release/portlab}
ns="pl-bench-sampler-$$"
server_pid=""
out=$(mktemp)
res=$(mktemp)
cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
  ip netns delete "$ns" 2>/dev/null || true
  rm -f "$out" "$res"
}
trap cleanup EXIT INT TERM
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=0
ip netns exec "$ns" taskset -c "$SERVER_CPU" "$bin" serve --listen 127.0.0.1:8080 >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do ip netns exec "$ns" bash -c ': </dev/tcp/127.0.0.1/8080' 2>/dev/null && break; sleep 0.05; done
# Client-closed connections to the target: TIME_WAIT sockets for the next 60 s.
ip netns exec "$ns" "$bin" load --connection drop -n "$TW_SOCKETS" -c 50 --no-sample http://127.0.0.1:8080/ >/dev/null || true
echo "TIME_WAIT sockets to the target: $(ip netns exec "$ns" ss -tanH state time-wait | wc -l); host TCP: $(sed -n 's/^TCP: //p' /proc/net/sockstat)"
# One run: prints "mode cpu_us_per_req req_per_sec sampler_share samples ticks".
one() {
  local mode=$1; shift
  ip netns exec "$ns" /usr/bin/time -f '%U %S' -o "$res" taskset -c "$CLIENT_CPU" \
    "$bin" load --engine "$ENGINE" --threads 1 -c 50 -n "$N" --json "$@" http://127.0.0.1:8080/ > "$out"
  python3 - "$mode" "$out" "$res" "$N" <<'PY'
import json, sys
mode, out, res, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(out))
user, sys_ = (float(x) for x in open(res).read().split()[-2:])
e = r["summary"]["elapsed_secs"]
s = (r.get("telemetry") or {}).get("sampler") or {}
print(mode, (user + sys_) * 1e6 / n, r["summary"]["requests_per_sec"],
      s.get("cpu_us", 0) / (e * 1e6), s.get("samples", 0), s.get("ticks", 0))
PY
}
rows=()
for _ in $(seq 1 "$ROUNDS"); do
  rows+=("$(one on)")
  rows+=("$(one off --no-sample)")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
on, off = [], []
for line in sys.stdin:
    m, cpu, rps, share, samples, ticks = line.split()
    (on if m == "on" else off).append((float(cpu), float(rps), float(share), int(samples), int(ticks)))
def med(xs): return st.median(xs)
def rng(xs): return f"[{min(xs):.2f}–{max(xs):.2f}]"
share = [100 * r[2] for r in on]
print(f"sampler thread CPU : {med(share):.2f} % of a core {rng(share)}   (bar: <= 2 %)")
cpu_on, cpu_off = [r[0] for r in on], [r[0] for r in off]
print(f"load CPU/req       : sampler on {med(cpu_on):.2f} µs {rng(cpu_on)}, --no-sample {med(cpu_off):.2f} µs {rng(cpu_off)}")
delta = [100 * (a[0] - b[0]) * a[1] / 1e6 for a, b in zip(on, off)]
print(f"CPU/req delta × rate: {med(delta):+.2f} % of a core {rng(delta)}   (difference of two noisy figures)")
print(f"req/s              : on {med([r[1] for r in on]):.0f}, off {med([r[1] for r in off]):.0f}")
print(f"dumps / ticks      : {med([r[3] for r in on]):.0f} / {med([r[4] for r in on]):.0f} per run (median)")
'
