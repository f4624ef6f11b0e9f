#!/usr/bin/env bash
# Benchmark `portlab load` against wrk and h2load (and hey/oha as extra columns) on one nginx,
# pinned, interleaved, with ratios and their spread. Layout and column meanings:
# docs/benchmarks.md.
#
# One command for the final figures (quiet machine, as root, ~15 min):
#   scripts/bench-load.sh
# Development (noisy machine, ~2 min):
#   QUICK=1 scripts/bench-load.sh
#
# Tables (each cell: median of ROUNDS interleaved rounds; ratios: portlab / peer within the same
# round, then the median and the min–max over rounds):
#   pinned     keep-alive, -c CONNS, one client thread: nginx (1 worker) on core SERVER_CPU,
#              each client on core CLIENT_CPU; wrk -t1, h2load --h1 -t1 (hey -cpus 1 and oha as
#              extras). req/s, CPU µs/req (user+sys), user µs/req, syscalls/req.
#   unpinned   keep-alive, -c CONNS, every tool with its default thread count (portlab: CPUs,
#              wrk/h2load: -t CPUs), nothing pinned.
#   close      `Connection: close`, -c CONNS, pinned, one thread: portlab --connection close vs
#              wrk -H "Connection: close" (hey -disable-keepalive extra); new connections/s.
#   drop       client-closes churn (portlab --connection drop, no peer has it), pinned, in a
#              network namespace with ip_local_port_range 1024 65535 and tcp_tw_reuse=1: new
#              connections/s, CPU µs per connection.
#   sampler    the port-pool sampler's cost: portlab (sampler on, as users run it) vs portlab
#              --no-sample, pinned keep-alive; the CPU/req delta × rate, and the sampler
#              thread's own CPU time (telemetry.sampler.cpu_us) as a share of a core, for every
#              portlab run of every table (bar ≤ 2 %).
#   rss        portlab's peak RSS at RSS_REQUESTS (10 M) requests and at a tenth of it (bar ≤ 16 MiB).
# Syscalls per request come from a separate SYSCALL_DURATION run of each tool under
# `perf stat -e raw_syscalls:sys_enter` (counting inherits to every thread), so the timed rounds
# carry no tracing cost.
#
# Env: ROUNDS=5 DURATION=5s CONNS=50 SERVER_CPU=0 CLIENT_CPU=1 RSS_REQUESTS=10000000
#      SYSCALL_DURATION=2s TABLES="pinned unpinned close drop sampler rss" EXTRA="hey oha"
#      ENGINE=auto|uring|tokio (passed as `portlab load --engine` when the binary has it;
#      unset = portlab's default) PORTLAB=path REBUILD=1 KEEP_TMP=1
#      QUICK=1 = ROUNDS=2 DURATION=2s RSS_REQUESTS=1000000 SYSCALL_DURATION=1s unless set.
# Needs: root (for the namespace of the drop table), nginx, wrk, h2load (nghttp2-client),
# taskset, perf, python3; hey and oha are optional.
# Exit: 0 when the run completed (bars are printed, not enforced), 2 when a tool is missing.
set -euo pipefail

if [[ -n ${QUICK:-} ]]; then
  ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-2s} RSS_REQUESTS=${RSS_REQUESTS:-1000000}
  SYSCALL_DURATION=${SYSCALL_DURATION:-1s}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
RSS_REQUESTS=${RSS_REQUESTS:-10000000}
SYSCALL_DURATION=${SYSCALL_DURATION:-2s}
TABLES=${TABLES:-pinned unpinned close drop sampler rss}
EXTRA=${EXTRA-hey oha}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}
NCPU=$(nproc)

for tool in nginx wrk h2load taskset perf python3 ip; do
  command -v "$tool" >/dev/null || { echo "bench-load: $tool is required" >&2; exit 2; }
done
OHA=$(command -v oha || true)
[[ -z $OHA && -x $HOME/.cargo/bin/oha ]] && OHA=$HOME/.cargo/bin/oha
HEY=$(command -v hey || true)
EXTRAS=()
for t in $EXTRA; do
  case $t in
    hey) [[ -n $HEY ]] && EXTRAS+=(hey) ;;
    oha) [[ -n $OHA ]] && EXTRAS+=(oha) ;;
    *) echo "bench-load: unknown EXTRA tool $t (hey, oha)" >&2; exit 2 ;;
  esac
done

if [[ ! -x $PORTLAB || -n ${REBUILD:-} ]]; then
  (cd "$ROOT" && cargo build --release -p portlab)
fi
ENGINE_ARGS=()
if [[ -n ${ENGINE:-} ]]; then
  if "$PORTLAB" load --help | grep -q -- --engine; then
    ENGINE_ARGS=(--engine "$ENGINE")
  else
    echo "bench-load: ENGINE=$ENGINE given but this portlab has no --engine; using its only engine" >&2
  fi
fi

secs() { python3 -c "import sys; d=sys.argv[1]; print(float(d[:-2])/1000 if d.endswith('ms') else float(d.rstrip('s')))" "$1"; }
SECS=$(secs "$DURATION")
SYSCALL_SECS=$(secs "$SYSCALL_DURATION")

WORK=$(mktemp -d /tmp/bench-load.XXXXXX)
chmod 755 "$WORK" # nginx workers run as an unprivileged user
NGINX_PID=
NS_NGINX_PID=
NS=
cleanup() {
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  [[ -n $NS_NGINX_PID ]] && kill "$NS_NGINX_PID" 2>/dev/null && wait "$NS_NGINX_PID" 2>/dev/null
  [[ -n $NS ]] && ip netns delete "$NS" 2>/dev/null
  if [[ -n ${KEEP_TMP:-} ]]; then echo "bench-load: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# runner.py OUT CMD...: runs CMD, writes "user_secs sys_secs maxrss_kb wall_secs" of CMD and
# its descendants (wait4's rusage, µs resolution) to OUT. The command's own output goes to stdout.
cat >"$WORK/runner.py" <<'PY'
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)
_, status, ru = os.wait4(pid, 0)
wall = time.monotonic() - t0
with open(out, "w") as f:
    f.write(f"{ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_maxrss} {wall:.6f} {os.waitstatus_to_exitcode(status)}\n")
PY

# parse.py TOOL FILE: prints "requests rate_per_sec" from a tool's output.
cat >"$WORK/parse.py" <<'PY'
import json, re, sys
tool, path = sys.argv[1], sys.argv[2]
text = open(path, errors="replace").read()
def num(pattern, default=0.0):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default
if tool in ("portlab", "nosample"):
    try:
        s = json.loads(text)["summary"]
        print(s["succeeded"], s["requests_per_sec"])
    except (ValueError, KeyError):
        print(0, 0)
elif tool == "wrk":
    print(int(num(r"(\d+) requests in")), num(r"Requests/sec:\s+([\d.]+)"))
elif tool == "h2load":
    print(int(num(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded")),
          num(r"finished in [\d.]+m?s, ([\d.]+) req/s"))
elif tool == "hey":
    n = sum(int(x) for x in re.findall(r"\[\d{3}\]\s+(\d+) responses", text))
    print(n, num(r"Requests/sec:\s+([\d.]+)"))
elif tool == "oha":
    n = sum(int(x) for x in re.findall(r"\[\d{3}\]\s+(\d+) responses", text))
    print(n, num(r"Requests/sec:\s+([\d.]+)"))
PY

mkdir -p "$WORK/html"
echo "hello, portlab" >"$WORK/html/hello.html"
chmod 644 "$WORK/html/hello.html"
# One port for keep-alive runs and one per tool for the Connection: close runs: each destination
# has its own ephemeral-port pool and TIME_WAIT set, so no tool pays for another's TIME_WAIT.
read -r PORT P_CLOSE_portlab P_CLOSE_wrk P_CLOSE_hey P_CLOSE_oha < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
nginx_conf() { # nginx_conf DIR PORT...
  local dir=$1 listens="" p
  shift
  for p in "$@"; do listens+="listen 127.0.0.1:$p; "; done
  cat <<EOF
worker_processes 1;
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  server { $listens root $WORK/html; }
}
EOF
}
wait_tcp() { # wait_tcp PORT [netns]: at most 5 s
  local i
  for i in $(seq 100); do
    if ${2:+ip netns exec "$2"} python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.1).close()' "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "bench-load: nothing listens on 127.0.0.1:$1" >&2
  exit 1
}
mkdir -p "$WORK/ng"
nginx_conf "$WORK/ng" "$PORT" "$P_CLOSE_portlab" "$P_CLOSE_wrk" "$P_CLOSE_hey" "$P_CLOSE_oha" >"$WORK/ng/nginx.conf"
# The server is started unpinned; each table pins (or unpins) it with taskset -p.
nginx -c "$WORK/ng/nginx.conf" -p "$WORK/ng" -g 'daemon off;' &
NGINX_PID=$!
wait_tcp "$PORT"
pin_server() { # pin_server CPULIST: every nginx process (master and worker)
  local pid
  for pid in "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true); do taskset -pc "$1" "$pid" >/dev/null; done
}
URL="http://127.0.0.1:$PORT/hello.html"
close_url() { local v="P_CLOSE_$1"; echo "http://127.0.0.1:${!v}/hello.html"; }

# cmd_for TABLE TOOL: the client command line (no pinning) into the CMD array.
cmd_for() {
  local table=$1 tool=$2 d=${3:-$DURATION} threads=1
  [[ $table == unpinned ]] && threads=$NCPU
  local url=$URL
  case $tool in
    portlab | nosample)
      CMD=("$PORTLAB" load "${ENGINE_ARGS[@]}" -c "$CONNS" -z "$d" --json)
      [[ $tool == nosample ]] && CMD+=(--no-sample)
      [[ $table == unpinned ]] || CMD+=(--threads 1)
      case $table in
        close) CMD+=(--connection close "$(close_url portlab)") ;;
        drop) CMD+=(--connection drop "http://127.0.0.1:$NS_PORT/hello.html") ;;
        *) CMD+=("$url") ;;
      esac ;;
    wrk)
      CMD=(wrk -t"$threads" -c"$CONNS" -d"$d")
      if [[ $table == close ]]; then CMD+=(-H "Connection: close" "$(close_url wrk)"); else CMD+=("$url"); fi ;;
    h2load)
      CMD=(h2load --h1 -t"$threads" -c"$CONNS" -D "$(secs "$d" | cut -d. -f1)" "$url") ;;
    hey)
      CMD=("$HEY" -c "$CONNS" -z "$d")
      [[ $table == unpinned ]] || CMD+=(-cpus 1)
      if [[ $table == close ]]; then CMD+=(-disable-keepalive "$(close_url hey)"); else CMD+=("$url"); fi ;;
    oha)
      CMD=("$OHA" -c "$CONNS" -z "$d" --no-tui)
      if [[ $table == close ]]; then CMD+=(--disable-keepalive "$(close_url oha)"); else CMD+=("$url"); fi ;;
  esac
}

RESULTS=$WORK/results.tsv
SAMPLER=$WORK/sampler.tsv
: >"$RESULTS"
: >"$SAMPLER"
# measure TABLE ROUND TOOL: one timed run; appends a row to RESULTS.
measure() {
  local table=$1 round=$2 tool=$3 pin=() ns=()
  cmd_for "$table" "$tool"
  [[ $table == unpinned ]] || pin=(taskset -c "$CLIENT_CPU")
  [[ $table == drop ]] && ns=(ip netns exec "$NS")
  local out=$WORK/$table-$round-$tool
  # oha wants a tty-less run and exits non-zero on some failures; the row records what it did.
  "${ns[@]}" "${pin[@]}" python3 "$WORK/runner.py" "$out.rusage" "${CMD[@]}" >"$out.out" 2>"$out.err" </dev/null || true
  local parsed rusage
  parsed=$(python3 "$WORK/parse.py" "$tool" "$out.out")
  rusage=$(cat "$out.rusage" 2>/dev/null || echo "0 0 0 0 1")
  printf '%s\t%s\t%s\t%s\t%s\n' "$table" "$round" "$tool" "$parsed" "$rusage" | tr ' ' '\t' >>"$RESULTS"
  if [[ $tool == portlab ]]; then # the sampler thread's own CPU time, as a share of the run
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
s = (r.get("telemetry") or {}).get("sampler") or {}
if "cpu_us" in s:
    print(sys.argv[2], sys.argv[3], s["cpu_us"] / 1e6 / r["summary"]["elapsed_secs"], sep="\t")' "$out.out" "$table" "$round" >>"$SAMPLER" 2>/dev/null || true
  fi
  read -r n rate <<<"$parsed"
  printf '  %-8s %-8s round %s: %9s requests %10.0f/s  cpu %s\n' "$table" "$tool" "$round" "$n" "$rate" \
    "$(awk '{printf "%.2f+%.2f s", $1, $2}' <<<"$rusage")" >&2
}

# syscalls TABLE TOOL: a separate short run under perf stat; appends "table tool syscalls requests".
SYSCALLS=$WORK/syscalls.tsv
: >"$SYSCALLS"
syscalls() {
  local table=$1 tool=$2 pin=() ns=()
  cmd_for "$table" "$tool" "$SYSCALL_DURATION"
  [[ $table == unpinned ]] || pin=(taskset -c "$CLIENT_CPU")
  [[ $table == drop ]] && ns=(ip netns exec "$NS")
  local out=$WORK/sys-$table-$tool
  "${ns[@]}" "${pin[@]}" perf stat -x, -e raw_syscalls:sys_enter -o "$out.perf" -- "${CMD[@]}" >"$out.out" 2>"$out.err" </dev/null || true
  local n calls
  n=$(python3 "$WORK/parse.py" "$tool" "$out.out" | cut -d' ' -f1)
  calls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$out.perf" 2>/dev/null)
  printf '%s\t%s\t%s\t%s\n' "$table" "$tool" "${calls:-0}" "${n:-0}" >>"$SYSCALLS"
}

# run_table TABLE TOOL...: ROUNDS interleaved rounds (the order rotates every round), then one
# syscall-count run per tool.
run_table() {
  local table=$1 round shift_by
  shift
  local tools=("$@")
  case $table in
    unpinned) pin_server "0-$((NCPU - 1))" ;;
    *) pin_server "$SERVER_CPU" ;;
  esac
  echo "table $table: ${tools[*]}, $ROUNDS rounds of $DURATION" >&2
  # Warm-up, not measured (page cache, nginx's first accept).
  local ns=()
  [[ $table == drop ]] && ns=(ip netns exec "$NS")
  cmd_for "$table" portlab 1s
  "${ns[@]}" "${CMD[@]}" >/dev/null 2>&1 || true
  for round in $(seq "$ROUNDS"); do
    shift_by=$(((round - 1) % ${#tools[@]}))
    for tool in "${tools[@]:shift_by}" "${tools[@]:0:shift_by}"; do measure "$table" "$round" "$tool"; done
  done
  for tool in "${tools[@]}"; do syscalls "$table" "$tool"; done
}

echo "nginx (1 worker) on $URL; -c $CONNS; $NCPU CPUs; $(uname -r); engine: ${ENGINE:-default}" >&2
for table in $TABLES; do
  case $table in
    pinned | unpinned) run_table "$table" portlab wrk h2load "${EXTRAS[@]}" ;;
    sampler) run_table sampler portlab nosample ;;
    close)
      run_table close portlab wrk "${EXTRAS[@]}" ;;
    drop)
      [[ $(id -u) == 0 ]] || { echo "bench-load: the drop table needs root (a namespace); skipped" >&2; continue; }
      NS="pl-bench-load-$$"
      ip netns add "$NS"
      ip netns exec "$NS" ip link set lo up
      ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
      NS_PORT=8080
      mkdir -p "$WORK/ns"
      nginx_conf "$WORK/ns" "$NS_PORT" >"$WORK/ns/nginx.conf"
      ip netns exec "$NS" taskset -c "$SERVER_CPU" nginx -c "$WORK/ns/nginx.conf" -p "$WORK/ns" -g 'daemon off;' &
      NS_NGINX_PID=$!
      wait_tcp "$NS_PORT" "$NS"
      run_table drop portlab ;;
    rss) ;;
    *) echo "bench-load: unknown table $table (pinned unpinned close drop sampler rss)" >&2; exit 2 ;;
  esac
done

RSS=$WORK/rss.tsv
: >"$RSS"
if [[ " $TABLES " == *" rss "* ]]; then
  pin_server "$SERVER_CPU"
  for n in $((RSS_REQUESTS / 10)) "$RSS_REQUESTS"; do
    echo "  rss: portlab load -n $n (keep-alive, -c $CONNS, one thread, pinned)" >&2
    taskset -c "$CLIENT_CPU" python3 "$WORK/runner.py" "$WORK/rss-$n.rusage" \
      "$PORTLAB" load "${ENGINE_ARGS[@]}" -c "$CONNS" -n "$n" --threads 1 --json "$URL" >"$WORK/rss-$n.json" 2>/dev/null || true
    python3 - "$n" "$WORK/rss-$n.rusage" "$WORK/rss-$n.json" >>"$RSS" <<'PY'
import json, sys
n, rusage, rep = sys.argv[1], sys.argv[2], sys.argv[3]
kb = int(open(rusage).read().split()[2])
try:
    s = json.load(open(rep))["summary"]
    ok, failed, rate = s["succeeded"], s["failed"], s["requests_per_sec"]
except (ValueError, KeyError, OSError):
    ok, failed, rate = 0, 0, 0.0
print(f"{n}\t{kb}\t{ok}\t{failed}\t{rate}")
PY
  done
fi

python3 - "$RESULTS" "$SYSCALLS" "$RSS" "$ROUNDS" "$DURATION" "$CONNS" "${ENGINE:-default}" "$SAMPLER" <<'PY'
import statistics, sys
results, syscalls, rss, rounds, duration, conns, engine, sampler = sys.argv[1:9]
rows = [l.rstrip("\n").split("\t") for l in open(results) if l.strip()]
# table round tool requests rate user sys maxrss wall exit
runs = {}
for t, r, tool, n, rate, user, sys_, rss_kb, wall, code in rows:
    n = int(n)
    runs.setdefault(t, {}).setdefault(tool, {})[int(r)] = {
        "n": n, "rate": float(rate),
        "cpu": (float(user) + float(sys_)) * 1e6 / n if n else float("nan"),
        "user": float(user) * 1e6 / n if n else float("nan"),
    }
sc = {}
for line in open(syscalls):
    if line.strip():
        t, tool, calls, n = line.split()
        sc[(t, tool)] = int(calls) / int(n) if int(n) else float("nan")

def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")

def spread(xs):
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return "      n/a"
    return f"{statistics.median(xs):5.2f} [{xs[0]:.2f}–{xs[-1]:.2f}]"

titles = {
    "pinned": f"keep-alive, -c {conns}, one client thread; nginx on one core, client on the other",
    "unpinned": f"keep-alive, -c {conns}, default thread counts, nothing pinned",
    "close": f"Connection: close, -c {conns}, one client thread, pinned (req/s = new connections/s)",
    "drop": f"--connection drop (client closes), -c {conns}, one thread, pinned, netns: range 1024-65535, tcp_tw_reuse=1",
    "sampler": f"keep-alive, -c {conns}, one thread, pinned: portlab (sampler on) vs portlab --no-sample",
}
unit = {"close": "conn", "drop": "conn"}
print(f"\nportlab engine: {engine}; {rounds} interleaved rounds of {duration}; medians; ratio columns: "
      "portlab/peer per round, median [min–max]")
for t in ("pinned", "unpinned", "close", "drop", "sampler"):
    if t not in runs:
        continue
    tools = runs[t]
    u = unit.get(t, "req")
    print(f"\n== {t}: {titles[t]}")
    print(f"{'tool':<8} {u + '/s':>10} {'CPU µs/' + u:>12} {'user µs/' + u:>13} {'syscalls/' + u:>14}"
          f"   {'ratio ' + u + '/s':>21} {'ratio CPU/' + u:>21} {'ratio user/' + u:>21}")
    p = tools.get("portlab", {})
    for tool, by_round in tools.items():
        vals = list(by_round.values())
        line = (f"{tool:<8} {med([v['rate'] for v in vals]):>10.0f} {med([v['cpu'] for v in vals]):>12.2f} "
                f"{med([v['user'] for v in vals]):>13.2f} {sc.get((t, tool), float('nan')):>14.2f}")
        if tool != "portlab" and p:
            common = sorted(set(p) & set(by_round))
            ratio = lambda k: spread([p[r][k] / by_round[r][k] for r in common if by_round[r][k]])
            line += f"   {ratio('rate'):>21} {ratio('cpu'):>21} {ratio('user'):>21}"
        print(line)
    print("  per round (req/s; CPU µs/req):")
    for tool, by_round in tools.items():
        print(f"    {tool:<8} " + "  ".join(f"{by_round[r]['rate']:8.0f}; {by_round[r]['cpu']:6.2f}" for r in sorted(by_round)))
share = {}
for line in open(sampler):
    if line.strip():
        t, r, frac = line.split("\t")
        share.setdefault(t, []).append(float(frac))
if share or "sampler" in runs:
    print("\n== sampler cost (bar ≤ 2 % of a core)")
    for t, xs in share.items():
        xs.sort()
        print(f"  {t:<9} sampler thread CPU: {100 * statistics.median(xs):.2f} % of a core "
              f"[{100 * xs[0]:.2f}–{100 * xs[-1]:.2f}] (telemetry.sampler.cpu_us / elapsed)")
    s = runs.get("sampler", {})
    if "portlab" in s and "nosample" in s:
        common = sorted(set(s["portlab"]) & set(s["nosample"]))
        delta = sorted((s["portlab"][r]["cpu"] - s["nosample"][r]["cpu"]) * s["portlab"][r]["rate"] / 1e6 for r in common)
        print(f"  CPU/req delta × rate (sampler on − --no-sample): {100 * statistics.median(delta):+.2f} % of a core "
              f"[{100 * delta[0]:+.2f}–{100 * delta[-1]:+.2f}] (noisy: a difference of two noisy figures)")
if t := [l.split("\t") for l in open(rss) if l.strip()]:
    print("\n== rss: portlab load -c %s --threads 1, keep-alive (bar: peak RSS ≤ 16 MiB at 10 M requests)" % conns)
    for n, kb, ok, failed, rate in t:
        print(f"  -n {int(n):>10}: peak RSS {int(kb) / 1024:6.1f} MiB; {ok} succeeded, {failed.strip()} failed, {float(rate):.0f} req/s")
print("\nbars (issue #18): pinned user/req ≤ 0.75 × wrk, CPU/req ≤ 0.95 × wrk and h2load, req/s ≥ 1.0 × wrk; "
      "close CPU/req ≤ 0.95 × wrk, conn/s ≥ 1.0 × wrk; keep-alive syscalls/req ≤ 1.0; RSS ≤ 16 MiB")
PY
