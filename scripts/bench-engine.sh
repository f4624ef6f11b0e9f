#!/usr/bin/env bash
# Per-request cost of portlab's two load engines (io_uring, tokio) against wrk and h2load --h1,
# on one nginx, pinned: nginx (1 worker) on core $SERVER_CPU, every client with ONE thread on
# core $CLIENT_CPU. Issue 18's figures:
#   keep-alive c=$CONNS:            requests/s, CPU µs per request (user, user+sys), syscalls/request
#   Connection: close c=$CONNS:     new connections/s, CPU µs per request, syscalls/request
# CPU (user and sys seconds) and system calls (raw_syscalls:sys_enter) come from `perf stat`
# around each client process; requests from each tool's own output. Tools run interleaved,
# round after round; the table shows the median round and the spread (min–max) of each ratio.
# Then the peak RSS of `portlab load --engine uring -n $RSS_N` (issue: ≤ 16 MiB at 10 M).
#
# Usage:  scripts/bench-engine.sh                  (ROUNDS=5 DURATION=5s CONNS=50)
#         QUICK=1 scripts/bench-engine.sh          (ROUNDS=2 DURATION=2s, no RSS run)
#         ROUNDS=7 RSS_N=10000000 scripts/bench-engine.sh
# Env: SERVER_CPU=0 CLIENT_CPU=1 PORTLAB=target/release/portlab MODES="keep-alive close"
# Needs: nginx, wrk, perf, python3, /usr/bin/time; h2load (nghttp2-client) if present.
set -euo pipefail

if [[ -n ${QUICK:-} ]]; then
  ROUNDS=${ROUNDS:-2}
  DURATION=${DURATION:-2s}
  RSS_N=${RSS_N:-0}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
RSS_N=${RSS_N:-10000000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
MODES=${MODES:-keep-alive close}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}

for tool in nginx wrk perf python3 taskset /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-engine: $tool is required" >&2; exit 2; }
done
H2LOAD=$(command -v h2load || true)
if [[ ! -x $PORTLAB ]]; then
  (cd "$ROOT" && cargo build --release -p portlab)
fi

WORK=$(mktemp -d /tmp/bench-engine.XXXXXX)
NGINX_PID=
cleanup() {
  if [[ -n $NGINX_PID ]]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/html"
echo "hello, portlab" >"$WORK/html/hello.html"
chmod 644 "$WORK/html/hello.html"
# One port for keep-alive, one per tool for close runs (separate TIME_WAIT sets per 4-tuple).
read -r PORT P1 P2 P3 P4 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
error_log $WORK/error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK;
  uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server {
    listen 127.0.0.1:$PORT; listen 127.0.0.1:$P1; listen 127.0.0.1:$P2;
    listen 127.0.0.1:$P3; listen 127.0.0.1:$P4;
    root $WORK/html;
  }
}
EOF
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' &
NGINX_PID=$!
for _ in $(seq 100); do
  python3 -c 'import socket; socket.create_connection(("127.0.0.1",'"$PORT"'),0.1).close()' 2>/dev/null && break
  sleep 0.05
done

secs=${DURATION%s}
# run NAME MODE ROUND CMD...: runs CMD pinned under perf stat; writes WORK/NAME.MODE.ROUND.{out,perf}.
run() {
  local name=$1 mode=$2 round=$3
  shift 3
  perf stat -e raw_syscalls:sys_enter -o "$WORK/$name.$mode.$round.perf" -- \
    timeout $((secs + 30)) taskset -c "$CLIENT_CPU" "$@" >"$WORK/$name.$mode.$round.out" 2>&1 || true
}

for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    if [[ $mode == keep-alive ]]; then
      url="http://127.0.0.1:$PORT/hello.html"
      run wrk "$mode" "$round" wrk -t1 -c"$CONNS" -d"$DURATION" "$url"
      run uring "$mode" "$round" "$PORTLAB" load --engine uring --threads 1 -c "$CONNS" -z "$DURATION" --json "$url"
      run tokio "$mode" "$round" "$PORTLAB" load --engine tokio --threads 1 -c "$CONNS" -z "$DURATION" --json "$url"
      [[ -z $H2LOAD ]] || run h2load "$mode" "$round" "$H2LOAD" --h1 -t1 -c"$CONNS" -D"$secs" "$url"
    else
      run wrk "$mode" "$round" wrk -t1 -c"$CONNS" -d"$DURATION" -H "Connection: close" "http://127.0.0.1:$P1/hello.html"
      run uring "$mode" "$round" "$PORTLAB" load --engine uring --threads 1 -c "$CONNS" -z "$DURATION" --connection close --json "http://127.0.0.1:$P2/hello.html"
      run tokio "$mode" "$round" "$PORTLAB" load --engine tokio --threads 1 -c "$CONNS" -z "$DURATION" --connection close --json "http://127.0.0.1:$P3/hello.html"
      # (h2load --h1 with Connection: close does not stop at -D: keep-alive only, as the issue asks.)
    fi
  done
done

WORK=$WORK ROUNDS=$ROUNDS MODES=$MODES python3 - <<'PY'
import json, os, re, statistics
work, rounds, modes = os.environ["WORK"], int(os.environ["ROUNDS"]), os.environ["MODES"].split()
def parse(name, mode, r):
    base = f"{work}/{name}.{mode}.{r}"
    try:
        out = open(base + ".out").read(); perf = open(base + ".perf").read()
    except FileNotFoundError:
        return None
    user = float(re.search(r"([\d.]+) seconds user", perf).group(1))
    sys_ = float(re.search(r"([\d.]+) seconds sys", perf).group(1))
    calls = int(re.search(r"([\d,]+)\s+raw_syscalls:sys_enter", perf).group(1).replace(",", ""))
    wall = float(re.search(r"([\d.]+) seconds time elapsed", perf).group(1))
    if name == "wrk":
        m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        if not m: return None
        n = int(m.group(1)); dur = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
        n_ok = n - sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    elif name == "h2load":
        m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
        t = re.search(r"finished in ([\d.]+)(m?s)", out)
        if not m or not t: return None
        n = int(m.group(3)); n_ok = n; dur = float(t.group(1)) / (1000 if t.group(2) == "ms" else 1)
    else:
        try:
            j = json.loads(out[out.index("{"):])
        except ValueError:
            return None
        n = j["summary"]["succeeded"] + j["summary"]["failed"]; n_ok = j["summary"]["succeeded"]
        dur = j["summary"]["elapsed_secs"]
        if j["settings"]["engine"] != name:
            print(f"  warning: {name} round {r} ran on {j['settings']['engine']}")
    if n == 0: return None
    return {"rps": n_ok / dur, "user_us": user / n * 1e6, "cpu_us": (user + sys_) / n * 1e6,
            "sys_per_req": calls / n, "ok": n_ok, "n": n, "wall": wall}
tools = ["wrk", "uring", "tokio", "h2load"]
for mode in modes:
    print(f"\n== {mode}, c=50, one client thread pinned, nginx 1 worker pinned; {rounds} rounds ==")
    data = {t: [parse(t, mode, r) for r in range(1, rounds + 1)] for t in tools}
    print(f"{'tool':8} {'req/s':>9} {'user µs/req':>12} {'CPU µs/req':>11} {'syscalls/req':>13}   (medians)")
    for t in tools:
        rows = [x for x in data[t] if x]
        if not rows: continue
        med = lambda k: statistics.median(x[k] for x in rows)
        print(f"{t:8} {med('rps'):9.0f} {med('user_us'):12.2f} {med('cpu_us'):11.2f} {med('sys_per_req'):13.2f}")
    for t in ["uring", "tokio"]:
        for peer in ["wrk", "h2load"]:
            pairs = [(a, b) for a, b in zip(data[t], data[peer]) if a and b]
            if not pairs: continue
            def ratio(k):
                rs = [a[k] / b[k] for a, b in pairs]
                return f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})"
            print(f"  {t}/{peer}: req/s {ratio('rps')}, user CPU/req {ratio('user_us')}, "
                  f"CPU/req {ratio('cpu_us')}, syscalls/req {ratio('sys_per_req')}")
PY

if [[ ${RSS_N:-0} -gt 0 ]]; then
  /usr/bin/time -f "%M" -o "$WORK/rss" taskset -c "$CLIENT_CPU" "$PORTLAB" load --engine uring --threads 1 \
    -c "$CONNS" -n "$RSS_N" --json "http://127.0.0.1:$PORT/hello.html" >/dev/null
  echo "peak RSS, --engine uring -n $RSS_N -c $CONNS: $(( $(cat "$WORK/rss") / 1024 )) MiB"
fi
