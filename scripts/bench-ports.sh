#!/usr/bin/env bash
# Times `portlab ports --json` against `ss -tan | wc -l` on the same network namespace holding
# 50,000+ TCP sockets, and prints the ratio (the issue's bar: portlab ≤ 0.5 × ss).
#
# Usage (as root): scripts/bench-ports.sh [CONNECTIONS_PER_HOLDER]   (default 6500 → 4 × 13,000 + 2,000 sockets)
# Needs: iproute2, hyperfine, python3. Builds portlab in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
per_holder=${1:-6500}
cargo build --release -q -p portlab
bin=$PWD/target/release/portlab
ns="pl-bench-ports-$$"
holder_pids=""
cleanup() {
  for pid in $holder_pids; do kill "$pid" 2>/dev/null || true; done
  ip netns delete "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
# The fd limit here may be as low as 20,000 per process, so four holder processes each keep
# PER_HOLDER connections open on their own listener (client + server side = 2 × N ESTABLISHED
# sockets each), and the first also leaves 2,000 client-closed connections in TIME_WAIT.
holders=4
readydir=$(mktemp -d)
for i in $(seq 0 $((holders - 1))); do
  ip netns exec "$ns" python3 - "$per_holder" "$readydir/$i" $((8080 + i)) <<'PY' &
import socket, sys, time
n, ready, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port)); l.listen(4096)
held = [l]
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port)); s, _ = l.accept(); held += [c, s]
if port == 8080:
    for _ in range(2000):
        c = socket.create_connection(("127.0.0.1", port)); s, _ = l.accept(); c.close(); s.recv(1); s.close()
open(ready, "w").write("ok")
time.sleep(600)
PY
  holder_pids+=" $!"
done
for _ in $(seq 1 240); do [ "$(ls "$readydir" | wc -l)" -eq "$holders" ] && break; sleep 0.5; done
[ "$(ls "$readydir" | wc -l)" -eq "$holders" ] || { echo "socket holders did not get ready" >&2; exit 1; }
echo "sockets in the namespace: $(ip netns exec "$ns" ss -tanH | wc -l)"
out=$(mktemp)
ip netns exec "$ns" hyperfine -N --warmup 3 --runs 30 --export-json "$out" \
  "$bin ports --json" "sh -c 'ss -tan | wc -l'" >/dev/null
python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
p, s = r[0]["mean"], r[1]["mean"]
print(f"portlab ports --json : {p*1000:8.1f} ms (± {r[0]['stddev']*1000:.1f})")
print(f"ss -tan | wc -l      : {s*1000:8.1f} ms (± {r[1]['stddev']*1000:.1f})")
print(f"ratio portlab/ss     : {p/s:8.2f}   (bar: <= 0.50)")
PY
