#!/usr/bin/env bash
# What a scrape of `portlab exporter` costs at 50,000 sockets, beside `ss -tan` reading the same
# table (the peer: the same NETLINK_SOCK_DIAG dump, printed instead of grouped), in one network
# namespace, interleaved over ROUNDS rounds, both pinned to one core. Then the CPU share at a
# 15 s scrape interval and the exporter's memory over SCRAPES scrapes.
#
# The issue's bars: a scrape at 50,000 sockets ≤ 50 ms; ≤ 1 % of a core at a 15 s interval;
# memory flat over 10,000 scrapes.
#
# Sockets: holder processes open N/2 client connections to a listener (backlog 65535, never
# accepted), so the table holds N sockets (N/2 clients + N/2 queued server sides) that stay put
# for the whole run — TIME_WAIT would expire after 60 s.
#
# Usage (as root): scripts/bench-exporter.sh [ROUNDS] [SCRAPES] [SOCKETS]   (defaults 5 10000 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
scrapes=${2:-10000}
sockets=${3:-50000}
cargo build --release -q -p portlab
bin=$PWD/target/release/portlab
ns="pl-bench-exporter-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns delete "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.core.somaxconn=65535

# Holders: open files are capped (RLIMIT_NOFILE hard limit, 20,000 on the measured machine),
# so the client sockets are spread over several processes of at most 10,000 each.
clients=$((sockets / 2))
per=10000
ip netns exec "$ns" python3 -c '
import socket, time
lst = socket.socket(); lst.bind(("127.0.0.1", 8080)); lst.listen(65535)
time.sleep(3600)  # bounded; killed by PID at the end
' &
pids+=($!)
for _ in $(seq 1 100); do ip netns exec "$ns" ss -Hltn | grep -q ':8080 ' && break; sleep 0.05; done
readies=()
while [ "$clients" -gt 0 ]; do
  n=$(( clients < per ? clients : per ))
  clients=$((clients - n))
  ready=$(mktemp)
  readies+=("$ready")
  ip netns exec "$ns" python3 - "$n" "$ready" <<'PY' &
import resource, socket, sys, time
n, ready = int(sys.argv[1]), sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [socket.create_connection(("127.0.0.1", 8080)) for _ in range(n)]
open(ready, "w").write("ok")
time.sleep(3600)  # bounded; killed by PID at the end
PY
  pids+=($!)
done
for ready in "${readies[@]}"; do
  for _ in $(seq 1 600); do [ -s "$ready" ] && break; sleep 0.1; done
  [ -s "$ready" ] || { echo "a holder did not open its sockets" >&2; exit 1; }
done
echo "TCP sockets in the namespace: $(ip netns exec "$ns" ss -tanH | wc -l)"

ip netns exec "$ns" taskset -c 1 "$bin" exporter --listen 127.0.0.1:7919 >/dev/null 2>&1 &
exporter_pid=$!
pids+=("$exporter_pid")
# The same exporter free to use both cores (as deployed): its IPv4 and IPv6 dumps run in parallel.
ip netns exec "$ns" "$bin" exporter --listen 127.0.0.1:7920 >/dev/null 2>&1 &
pids+=($!)
for port in 7919 7920; do
  for _ in $(seq 1 100); do ip netns exec "$ns" bash -c ": </dev/tcp/127.0.0.1/$port" 2>/dev/null && break; sleep 0.05; done
done

# Interleaved rounds, per round: 20 scrapes of the pinned exporter, 20 of the unpinned one, 20
# `ss -tanH` dumps (pinned), and 20 kernel floors: a raw NETLINK_SOCK_DIAG dump of each family
# with a bytecode that rejects every socket, so the kernel walks its table and fills nothing —
# what any sock_diag reader pays at this table size. Times in ms.
ip netns exec "$ns" taskset -c 1 python3 - "$rounds" <<'PY'
import http.client, socket, statistics, struct, subprocess, sys, time
rounds = int(sys.argv[1])
conns = {port: http.client.HTTPConnection("127.0.0.1", port) for port in (7919, 7920)}
def scrape(port):
    conn = conns[port]
    t = time.perf_counter(); conn.request("GET", "/metrics"); r = conn.getresponse(); body = r.read()
    assert r.status == 200, body[:200]
    ms = (time.perf_counter() - t) * 1000
    inner = [float(l.split()[1]) * 1000 for l in body.decode().splitlines()
             if l.startswith("portlab_scrape_duration_seconds ")]
    return ms, inner
def ss():
    t = time.perf_counter()
    subprocess.run(["taskset", "-c", "1", "ss", "-tanH"], stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t) * 1000
# inet_diag bytecode "sport >= 65535 and sport <= 0": {S_GE, yes 8, no 20 = reject}{0,0,65535}
# {S_LE, yes 8 = accept, no 12 = reject}{0,0,0}; offsets per net/ipv4/inet_diag.c inet_diag_bc_audit()
REJECT_ALL = struct.pack("=BBHBBH", 2, 8, 20, 0, 0, 65535) + struct.pack("=BBHBBH", 3, 8, 12, 0, 0, 0)
def floor_dump():
    t = time.perf_counter()
    for family in (socket.AF_INET, socket.AF_INET6):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)  # NETLINK_SOCK_DIAG
        body = struct.pack("=BBBBI", family, 6, 0, 0, 0xffffffff) + b"\0" * 40 + b"\xff" * 8
        body += struct.pack("=HH", 4 + len(REJECT_ALL), 1) + REJECT_ALL
        s.send(struct.pack("=IHHII", 16 + len(body), 20, 1 | 0x300, 1, 0) + body)
        done = False
        while not done:
            data = s.recv(65536)
            off = 0
            while off < len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == 2:  # NLMSG_ERROR: the bytecode was refused
                    raise SystemExit(f"kernel floor dump refused: errno {-struct.unpack_from('=i', data, off + 16)[0]}")
                if kind == 3:  # NLMSG_DONE
                    done = True; break
                off += (length + 3) & ~3
        s.close()
    return (time.perf_counter() - t) * 1000
for port in conns: scrape(port)  # warm-up
pinned, free, inner_pinned, inner_free, peer, floor = [], [], [], [], [], []
for _ in range(rounds):
    for _ in range(20):
        ms, inner = scrape(7919); pinned.append(ms); inner_pinned += inner
    for _ in range(20):
        ms, inner = scrape(7920); free.append(ms); inner_free += inner
    peer += [ss() for _ in range(20)]
    floor += [floor_dump() for _ in range(20)]
per_round = lambda xs: [statistics.median(xs[i*20:(i+1)*20]) for i in range(rounds)]
med = statistics.median
p95 = lambda xs: sorted(xs)[int(len(xs) * 0.95)]
ratios = [e / p for e, p in zip(per_round(pinned), per_round(peer))]
floor_ratios = [e / f for e, f in zip(per_round(pinned), per_round(floor))]
print(f"scrape, pinned to 1 core  : median {med(pinned):6.1f} ms  p95 {p95(pinned):6.1f} ms  (bar: <= 50 ms)")
print(f"  of which reading        : median {med(inner_pinned):6.1f} ms  (portlab_scrape_duration_seconds)")
print(f"scrape, free on 2 cores   : median {med(free):6.1f} ms  p95 {p95(free):6.1f} ms  (reading {med(inner_free):.1f} ms)")
print(f"ss -tanH (peer, pinned)   : median {med(peer):6.1f} ms")
print(f"kernel floor (walk only)  : median {med(floor):6.1f} ms  (IPv4 + IPv6 dumps that match no socket)")
print(f"scrape / ss per round     : {' '.join(f'{r:.2f}' for r in ratios)}  median {med(ratios):.2f}")
print(f"scrape / floor per round  : {' '.join(f'{r:.2f}' for r in floor_ratios)}  median {med(floor_ratios):.2f}")
PY

# CPU at a 15 s interval: one scrape, then the rest of the 15 s idle; two windows.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$exporter_pid/stat"; }
hz=$(getconf CLK_TCK)
for w in 1 2; do
  before=$(cpu_ticks); start=$(date +%s.%N)
  ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7919; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3 >/dev/null'
  sleep_left=$(python3 -c "import time,sys; print(max(0, 15 - (time.time() - float(sys.argv[1]))))" "$start")
  sleep "$sleep_left"
  after=$(cpu_ticks)
  python3 -c "import sys; t=(int(sys.argv[2])-int(sys.argv[1]))/int(sys.argv[3]); print(f'CPU window {sys.argv[4]}: {t*1000:.0f} ms of CPU in 15 s = {t/15*100:.2f} % of a core (bar: <= 1 %)')" "$before" "$after" "$hz" "$w"
done

# Memory over SCRAPES scrapes (keep-alive connection), RSS sampled along the way.
ip netns exec "$ns" python3 - "$scrapes" "$exporter_pid" <<'PY'
import http.client, sys
n, pid = int(sys.argv[1]), sys.argv[2]
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
conn = http.client.HTTPConnection("127.0.0.1", 7919)
marks = sorted({10, 100, n // 10, n // 4, n // 2, 3 * n // 4, n})
samples = []
for i in range(1, n + 1):
    conn.request("GET", "/metrics"); r = conn.getresponse(); r.read()
    assert r.status == 200
    if i in marks:
        samples.append((i, rss_kib()))
        print(f"RSS after {i} scrapes: {samples[-1][1] / 1024:.1f} MiB", flush=True)
first = dict(samples)[n // 10]
print(f"growth from scrape {n // 10} to {n}: {(samples[-1][1] - first) / 1024:+.2f} MiB")
PY
