#!/usr/bin/env bash
# Benchmark `portlab load` against wrk, hey and oha on the same nginx, in one run.
#
# Starts one nginx (1 worker, access_log off) serving a small hello.html on a free loopback
# port, then runs, one after another, each for $DURATION with -c $CONNS:
#   keep-alive:       wrk -t2, portlab load, hey, oha (if ~/.cargo/bin/oha or oha on PATH)
#   Connection: close: wrk -H "Connection: close", portlab --connection close,
#                      hey --disable-keepalive, oha --disable-keepalive
# Client CPU (user+sys) comes from /usr/bin/time. Prints requests/s, CPU µs per request and
# the ratios portlab/peer. Then measures portlab's peak RSS for two run lengths (flat = no
# per-request memory).
#
# The runs are interleaved over $ROUNDS rounds (tool after tool, round after round) and each
# cell of the table is the median round, so a noisy neighbour on a shared machine skews all
# tools alike instead of one.
#
# Usage: scripts/bench-load.sh   (env: DURATION=5s CONNS=50 ROUNDS=3 RSS_SHORT=200000 RSS_LONG=2000000)
# Needs: nginx, wrk, hey (Debian packages), python3, GNU time (/usr/bin/time), cargo.
set -euo pipefail

DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
RSS_SHORT=${RSS_SHORT:-200000}
RSS_LONG=${RSS_LONG:-2000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}

for tool in nginx wrk hey python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-load: $tool is required" >&2; exit 2; }
done
OHA=$(command -v oha || true)
[[ -z $OHA && -x $HOME/.cargo/bin/oha ]] && OHA=$HOME/.cargo/bin/oha

if [[ ! -x $PORTLAB || -n ${REBUILD:-} ]]; then
  (cd "$ROOT" && cargo build --release -p portlab)
fi

WORK=$(mktemp -d /tmp/bench-load.XXXXXX)
NGINX_PID=
cleanup() {
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/html"
echo "hello, portlab" >"$WORK/html/hello.html"
chmod 644 "$WORK/html/hello.html"
# Five ports: one for keep-alive runs, one per tool for the Connection: close runs. Each
# destination port has its own ephemeral-port pool and TIME_WAIT set (per 4-tuple), so a
# close run does not pay for the tens of thousands of TIME_WAIT entries the previous tool left.
read -r PORT P_WRK P_PORTLAB P_HEY P_OHA < <(python3 -c '
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
    listen 127.0.0.1:$PORT; listen 127.0.0.1:$P_WRK; listen 127.0.0.1:$P_PORTLAB;
    listen 127.0.0.1:$P_HEY; listen 127.0.0.1:$P_OHA;
    root $WORK/html;
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' &
NGINX_PID=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/hello.html" >/dev/null 2>&1 && break
  python3 -c 'import socket; socket.create_connection(("127.0.0.1",'"$PORT"'),0.1).close()' 2>/dev/null && break
  sleep 0.05
done
URL="http://127.0.0.1:$PORT/hello.html"
SECS=$(python3 -c "import sys; d='$DURATION'; print(float(d[:-1]) if d.endswith('s') else float(d))")

# run NAME MODE CMD...: runs CMD under GNU time; the parser below reads its output.
RESULTS=$WORK/results.tsv
: >"$RESULTS"
run() {
  local name=$1 mode=$2
  shift 2
  local out=$WORK/$name-$mode.out
  /usr/bin/time -f "CPU %U %S MAXRSS %M" -o "$WORK/$name-$mode.time" "$@" >"$out" 2>&1 || true
  local cpu
  cpu=$(awk '/^CPU/ {print $2 + $3}' "$WORK/$name-$mode.time")
  cp "$out" "$WORK/last-$name-$mode.out"
  local requests
  requests=$(python3 - "$name" "$out" <<'PY'
import json, re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path, errors="replace").read()
if name == "portlab":
    r = json.loads(text)
    print(r["summary"]["succeeded"])
elif name == "wrk":
    m = re.search(r"(\d+) requests in", text)
    print(m.group(1) if m else 0)
else:  # hey and oha: sum the status code distribution
    print(sum(int(n) for n in re.findall(r"\[\d{3}\]\s+(\d+) responses", text)))
PY
)
  printf '%s\t%s\t%s\t%s\n' "$name" "$mode" "$requests" "$cpu" >>"$RESULTS"
  printf '  %-8s %-10s %10s requests  cpu %6.2f s\n' "$name" "$mode" "$requests" "$cpu" >&2
}

echo "nginx on $URL; each run: -c $CONNS for $DURATION" >&2
# Warm-up (not measured).
"$PORTLAB" load -c "$CONNS" -z 1s "$URL" >/dev/null 2>&1 || true

close_url() { echo "http://127.0.0.1:$1/hello.html"; }
run_tool() { # run_tool TOOL MODE
  local tool=$1 mode=$2 url=$URL
  case $tool in
    wrk)
      [[ $mode == close ]] && { run wrk close wrk -t2 -c"$CONNS" -d"$DURATION" -H "Connection: close" "$(close_url "$P_WRK")"; return; }
      run wrk keepalive wrk -t2 -c"$CONNS" -d"$DURATION" "$url" ;;
    portlab)
      [[ $mode == close ]] && { run portlab close "$PORTLAB" load -c "$CONNS" -z "$DURATION" --connection close --json "$(close_url "$P_PORTLAB")"; return; }
      run portlab keepalive "$PORTLAB" load -c "$CONNS" -z "$DURATION" --json "$url" ;;
    hey)
      [[ $mode == close ]] && { run hey close hey -c "$CONNS" -z "$DURATION" -disable-keepalive "$(close_url "$P_HEY")"; return; }
      run hey keepalive hey -c "$CONNS" -z "$DURATION" "$url" ;;
    oha)
      [[ -z $OHA ]] && return
      [[ $mode == close ]] && { run oha close "$OHA" -c "$CONNS" -z "$DURATION" --no-tui --disable-keepalive "$(close_url "$P_OHA")"; return; }
      run oha keepalive "$OHA" -c "$CONNS" -z "$DURATION" --no-tui "$url" ;;
  esac
}

TOOLS=(wrk portlab hey oha)
for round in $(seq "$ROUNDS"); do
  # Rotate the order each round so no tool always runs first or right after another.
  shift_by=$(( (round - 1) % ${#TOOLS[@]} ))
  order=("${TOOLS[@]:shift_by}" "${TOOLS[@]:0:shift_by}")
  echo "round $round/$ROUNDS: ${order[*]}" >&2
  for mode in keepalive close; do
    for tool in "${order[@]}"; do run_tool "$tool" "$mode"; done
  done
done

python3 - "$RESULTS" "$SECS" <<'PY'
import sys
import statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
secs = float(sys.argv[2])
runs = {}
for n, m, r, c in rows:
    runs.setdefault((n, m), []).append((int(r), float(c)))
# Median round by request count (its CPU goes with it).
data = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
# Paired ratios: portlab / tool within the same round (same machine conditions), then median.
def paired(mode, tool):
    p, t = runs.get(("portlab", mode), []), runs.get((tool, mode), [])
    rr = sorted(pr / tr for (pr, _), (tr, _) in zip(p, t) if tr)
    cr = sorted((pc / pr) / (tc / tr) for (pr, pc), (tr, tc) in zip(p, t) if pr and tr and tc)
    med = lambda xs: xs[len(xs) // 2] if xs else float("nan")
    return med(rr), med(cr)
print(f"\n{len(next(iter(runs.values())))} rounds; requests per round:")
for (n, m), v in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"  {m:<10} {n:<8} " + " ".join(f"{r:>8}" for r, _ in v))
print()
print("\nreq/s and CPU/req: median round; ratios: median over rounds of portlab/tool in the same round")
print(f"{'mode':<10} {'tool':<8} {'req/s (close: new conn/s)':>26} {'CPU µs/req':>11} {'portlab/tool req/s':>19} {'portlab/tool CPU/req':>21}")
for mode in ("keepalive", "close"):
    p = data.get(("portlab", mode))
    for tool in ("portlab", "wrk", "hey", "oha"):
        if (tool, mode) not in data:
            continue
        r, c = data[(tool, mode)]
        rate = r / secs
        cpu_per = c / r * 1e6 if r else float("inf")
        if p and tool != "portlab" and r:
            rr, cr = paired(mode, tool)
            ratio, cratio = f"{rr:.2f}", f"{cr:.2f}"
        else:
            ratio = cratio = "-"
        print(f"{mode:<10} {tool:<8} {rate:>26.0f} {cpu_per:>11.2f} {ratio:>19} {cratio:>21}")
print("\nspeed bar: keep-alive req/s ratio vs wrk >= 1.00 and CPU/req ratio vs wrk <= 1.00; close: new conn/s ratio vs wrk >= 1.00")
PY

echo >&2
echo "peak RSS of portlab load -c $CONNS (keep-alive):" >&2
for n in "$RSS_SHORT" "$RSS_LONG"; do
  /usr/bin/time -f "%M" -o "$WORK/rss-$n" "$PORTLAB" load -c "$CONNS" -n "$n" --json "$URL" >"$WORK/rss-$n.json"
  python3 - "$n" "$WORK/rss-$n" "$WORK/rss-$n.json" <<'PY'
import json, sys
n, rss_path, rep = sys.argv[1], sys.argv[2], sys.argv[3]
kb = int(open(rss_path).read().split()[-1])
r = json.load(open(rep))["summary"]
print(f"  -n {int(n):>10}: peak RSS {kb / 1024:6.1f} MiB, {r['succeeded']} succeeded, {r['failed']} failed, {r['requests_per_sec']:.0f} req/s")
PY
done
