#!/usr/bin/env bash
# What `portlab trace` costs: new connections/s of `portlab load --connection close` against
# nginx with and without `portlab trace` running (host-wide, no filter), and trace's own CPU.
#
# Part A, overhead at full speed: $ROUNDS short rounds of `portlab load -c $CONNS -z $DURATION
#   --connection close`; load pinned to CPU 0, nginx (one worker, no master) to CPU 1, trace
#   unpinned. Each round runs every traced variant between two untraced runs (0 v1 0 v2 0 …),
#   the variants in reverse order every other round (ABBA), and compares each traced run with
#   the mean of its two untraced neighbours, so drift of the machine cancels. Prints per
#   variant the median of these paired ratios of conn/s and their spread (min–max), and — the
#   figure noise moves much less — the CPU per connection of load + nginx together (load:
#   task-clock from `perf stat` or GNU time; nginx: /proc/PID/schedstat, ns), traced ÷
#   untraced and the difference in µs per connection (what tracing costs the traced
#   processes: programs or samples, the syscall slow path), plus trace's own CPU.
# Part B, cost per event: `portlab load --rate R` for each R in $RATES (each connection is
#   about 8 tracepoint hits here — client and server are on this host — so 1,250 conn/s ≈
#   10,000 events/s and 12,500 ≈ 100,000); reports events/s seen, trace CPU % of a core, CPU
#   ns per event, lost events, and trace's CPU scaled to 10,000 connects/s.
#
# Part C, the reader at 10,000 and 100,000 events/s: a paced UDP connect() loop (2 hits per
#   call, no packets) while `trace --syscalls` runs; trace's CPU % of a core, ns per event, lost events.
#
# Part D, the kernel-side cost per event (paid by the traced process, not by trace): CPU per
#   UDP connect() of an unpaced python3 loop without and with `trace --syscalls`, paired
#   rounds (each call is 2 syscall-tracepoint hits; the slow path is included).
#
# Part F, the host-wide cost of the syscall tracepoints: CPU per syscall of dd bs=1 (an
#   unrelated process) without trace and with --syscalls / --no-syscalls on each route.
#
# Part G, the BPF route's kernel-side cost from a profile: `perf record -a -g -F $G_HZ` over a
#   full-speed `load --connection close` run while `trace --route bpf` runs, $G_ROUNDS times per
#   mode (default, --syscalls, classic program), interleaved; the samples whose call chain holds
#   a BPF program run (bpf_trace_run*, trace_call_bpf: the program, its helpers and the kernel's
#   call into it; for the classic program also the record the kernel fills,
#   perf_trace_run_bpf_submit) ÷ $G_HZ ÷ connections = CPU per connection, with both ends on
#   this host, and as % of a core at 10,000 connects/s (bar < 2 %). Unlike Part E it carries no
#   accounting overhead of its own (Part E's floor is ≈ 81 ns per run); it leaves out the syscall
#   slow path (Part F).
#
# Every traced variant runs on each route of $ROUTES (default "bpf perf": the BPF route that
# counts in kernel maps, and the perf_event_open route beside it), so A and D print one block
# per route: traced ÷ untraced conn/s (bar ≥ 0.95) and the kernel-side ns per event with the
# % of a core it makes at 10,000 connects/s (5.5 events per connection; bar < 2 %).
#
# Part E, the BPF route's kernel-side cost measured by the kernel: with
#   kernel.bpf_stats_enabled=1 (restored after), `load --rate $E_RATE --connection close` while
#   `trace --route bpf` runs; the run_time_ns / run_cnt of its four programs (from the trace
#   process's /proc/PID/fdinfo) per connection, and as % of a core at 10,000 connects/s. On a
#   busy host this overstates (a preempted program's time counts), so read it quiet.
#
# Usage: scripts/bench-trace.sh            (the full run: ~12 min with the defaults)
#        QUICK=1 scripts/bench-trace.sh    (DURATION=1s ROUNDS=3, parts A, D, E and F)
#   The BPF route's bars on a quiet machine (≈ 4 min):
#        ROUTES=bpf RATES="" FLOODS="" scripts/bench-trace.sh
#   (env: DURATION=1.5s CONNS=50 ROUNDS=12 RATES="1250 12500" FLOODS="10000 100000"
#         ROUTES="bpf perf" QUICK=1 REBUILD=1)
# Needs: root (perf_event_open on tracepoints), nginx, python3, GNU time, taskset, cargo.
set -euo pipefail

if [[ -n ${QUICK:-} ]]; then
  DURATION=${DURATION:-1s}
  ROUNDS=${ROUNDS:-3}
  RATES=${RATES:-}
  FLOODS=${FLOODS:-}
fi
DURATION=${DURATION:-1.5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-12}
ROUTES=${ROUTES:-"bpf perf"}
E_RATE=${E_RATE:-2000}
G_ROUNDS=${G_ROUNDS:-5}
G_HZ=${G_HZ:-4999}
RATES=${RATES-"1250 12500"}
FLOODS=${FLOODS-"10000 100000"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}

for tool in nginx python3 /usr/bin/time taskset; do
  command -v "$tool" >/dev/null || { echo "bench-trace: $tool is required" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "bench-trace: needs root (perf_event_open)" >&2; exit 2; }
if [[ ! -x $PORTLAB || -n ${REBUILD:-} ]]; then
  (cd "$ROOT" && cargo build --release -p portlab)
fi

WORK=$(mktemp -d /tmp/bench-trace.XXXXXX)
NGINX_PID=
TRACE_PID=
cleanup() {
  [[ -n $TRACE_PID ]] && kill "$TRACE_PID" 2>/dev/null && wait "$TRACE_PID" 2>/dev/null
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/html"
echo "hello, portlab" >"$WORK/html/hello.html"
chmod 644 "$WORK/html/hello.html"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
master_process off;
error_log $WORK/error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK;
  uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server { listen 127.0.0.1:$PORT backlog=4096; root $WORK/html; }
}
EOF
taskset -c 1 nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' &
NGINX_PID=$!
for _ in $(seq 200); do
  python3 -c 'import socket; socket.create_connection(("127.0.0.1",'"$PORT"'),0.1).close()' 2>/dev/null && break
  sleep 0.05
done
URL="http://127.0.0.1:$PORT/hello.html"

# start_trace NAME [ARGS]: starts `portlab trace --json ARGS` under GNU time, returns once it
# is attached.
start_trace() {
  local name=$1
  shift
  /usr/bin/time -f "CPU %U %S" -o "$WORK/$name.time" "$PORTLAB" trace --json "$@" \
    >"$WORK/$name.json" 2>"$WORK/$name.err" &
  TRACE_PID=$!
  for _ in $(seq 600); do
    grep -q ready "$WORK/$name.err" 2>/dev/null && return 0
    sleep 0.01 # polling for the condition "ready", bounded to 6 s
  done
  echo "bench-trace: trace did not attach: $(cat "$WORK/$name.err")" >&2
  exit 1
}
stop_trace() {
  # GNU time forwards nothing: signal trace itself (the child of time).
  local child
  child=$(ps -o pid= --ppid "$TRACE_PID" | tr -d ' ')
  kill -INT "${child:-$TRACE_PID}"
  wait "$TRACE_PID" || true
  TRACE_PID=
}

# nginx's CPU time so far, ns (/proc/PID/schedstat: on-CPU time, ns resolution).
nginx_ns() { awk '{print $1}' "/proc/$NGINX_PID/schedstat"; }

# load NAME ARGS...: one load run (JSON report, load's CPU and nginx's CPU kept under $WORK).
# Load's CPU is perf stat's task-clock when perf works (ns), else GNU time's user+sys (10 ms).
HAVE_PERF=
if command -v perf >/dev/null && perf stat -x, -e task-clock -o /dev/null -- true 2>/dev/null; then
  HAVE_PERF=1
fi
load() {
  local name=$1
  shift
  local n0
  n0=$(nginx_ns)
  if [[ -n $HAVE_PERF ]]; then
    perf stat -x, -e task-clock -o "$WORK/$name.lperf" taskset -c 0 "$PORTLAB" load \
      -c "$CONNS" -z "$DURATION" --connection close --json "$@" "$URL" >"$WORK/$name.ljson" 2>/dev/null || true
    awk -F, '/task-clock/ {printf "CPU %.6f 0\n", $1 / 1000}' "$WORK/$name.lperf" >"$WORK/$name.ltime"
  else
    /usr/bin/time -f "CPU %U %S" -o "$WORK/$name.ltime" taskset -c 0 "$PORTLAB" load \
      -c "$CONNS" -z "$DURATION" --connection close --json "$@" "$URL" >"$WORK/$name.ljson" 2>/dev/null || true
  fi
  echo "$(($(nginx_ns) - n0))" >"$WORK/$name.nginx"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
record() { # record PART NAME TRACED [RATE]
  python3 - "$WORK" "$@" >>"$RESULTS" <<'PY'
import json, sys
work, part, name, traced = sys.argv[1:5]
rate = sys.argv[5] if len(sys.argv) > 5 else "-"
def cpu(path):
    line = [l for l in open(path) if l.startswith("CPU")][0].split()
    return float(line[1]) + float(line[2])
r = json.load(open(f"{work}/{name}.ljson"))
s = r["summary"]
conns = s["succeeded"]
lcpu = cpu(f"{work}/{name}.ltime")
ncpu = int(open(f"{work}/{name}.nginx").read()) / 1e9
tcpu = events = lost = elapsed = reader = "-"
if traced != "0":
    t = json.load(open(f"{work}/{name}.json"))
    tcpu, events, lost = cpu(f"{work}/{name}.time"), t["events"], t["lost_events"]
    elapsed, reader = t["elapsed_ms"] / 1000, t["reader_cpu_ms"] / 1000
print("\t".join(str(x) for x in (part, name, traced, rate, conns, lcpu, tcpu, events, lost, elapsed, reader, s.get("requests_per_sec", 0), ncpu)))
PY
}

echo "nginx on $URL (CPU 1); load on CPU 0: -c $CONNS -z $DURATION --connection close" >&2
"$PORTLAB" load -c "$CONNS" -z 1s --connection close "$URL" >/dev/null 2>&1 || true # warm-up

# Variants: ROUTE-sys = portlab trace --route ROUTE --syscalls, ROUTE-nosys = --no-syscalls
# (the BPF route's default is nosys, the perf route's sys).
# A round is 0 v1 0 v2 … 0 (0 = no trace; forward order in odd rounds, reversed in even ones).
VARIANTS=""
for r in $ROUTES; do VARIANTS="$VARIANTS $r-sys $r-nosys"; done
# bpf-classic: the default mode with the classic tracepoint program for inet_sock_set_state
# instead of tp_btf (PORTLAB_TRACE_CLASSIC_TRACEPOINT), what tp_btf saves.
if [[ " $ROUTES " == *" bpf "* ]]; then VARIANTS="$VARIANTS bpf-classic"; fi
read -r -a VARS <<<"$VARIANTS"
echo "Part A: $ROUNDS rounds of 0 between each of ($VARIANTS), ABBA order" >&2
for round in $(seq "$ROUNDS"); do
  n=${#VARS[@]}
  order=(0)
  for i in $(seq 0 $((n - 1))); do
    if ((round % 2)); then v=${VARS[$i]}; else v=${VARS[$((n - 1 - i))]}; fi
    order+=("$v" 0)
  done
  for step in "${!order[@]}"; do
    traced=${order[$step]}
    name="a$round-$step-$traced"
    case $traced in
      0) ;;
      bpf-classic) PORTLAB_TRACE_CLASSIC_TRACEPOINT=1 start_trace "$name" --route bpf ;;
      *-nosys) start_trace "$name" --route "${traced%-nosys}" --no-syscalls ;;
      *-sys) start_trace "$name" --route "${traced%-sys}" --syscalls ;;
    esac
    load "$name"
    if [[ $traced != 0 ]]; then stop_trace; fi
    record A "$name" "$traced"
    tail -1 "$RESULTS" | awk -F'\t' '{printf "  round %s traced=%s: %8.0f conn/s, load+nginx %.1f us CPU/conn\n", "'"$round"'", $3, $12, ($6 + $13) / $5 * 1e6}' >&2
  done
done

echo "Part B: fixed rates ${RATES:-(none)}" >&2
for rate in $RATES; do
  for traced in 0 $ROUTES; do
    name="b$rate-$traced"
    if [[ $traced != 0 ]]; then start_trace "$name" --route "$traced"; fi
    load "$name" --rate "$rate"
    if [[ $traced != 0 ]]; then stop_trace; fi
    record B "$name" "$traced" "$rate"
  done
done

# Part C: the reader's cost at a given event rate, without the cost of TCP itself: a python3
# loop connect()s a UDP socket (2 tracepoint hits per call: sys_enter/sys_exit_connect, no
# packet sent) at a paced rate for $DURATION while trace runs.
echo "Part C: event floods ${FLOODS:-(none)} events/s" >&2
SECS=$(python3 -c "d='$DURATION'; print(float(d[:-1]) if d.endswith('s') else float(d))")
: >"$WORK/floods.txt"
for route in $ROUTES; do
for events in $FLOODS; do
  name="c$events-$route"
  start_trace "$name" --route "$route" --syscalls
  taskset -c 0 python3 - "$events" "$SECS" <<'PY'
import socket, sys, time
per_sec, secs = int(sys.argv[1]) // 2, float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
done = 0
while True:
    now = time.monotonic() - start
    if now >= secs:
        break
    due = int(now * per_sec)
    while done < due:
        s.connect(("127.0.0.1", 9))
        done += 1
    time.sleep(0.001)
print(done, file=sys.stderr)
PY
  stop_trace
  python3 - "$WORK/$name.json" "$WORK/$name.time" "$events" "$route" >>"$WORK/floods.txt" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"  route {sys.argv[4]}:", end="")
line = [l for l in open(sys.argv[2]) if l.startswith("CPU")][0].split()
cpu = float(line[1]) + float(line[2])
secs = t["elapsed_ms"] / 1000
print(f"  target {int(sys.argv[3]):>7,} events/s: seen {t['events'] / secs:9,.0f} events/s, trace CPU {cpu / secs * 100:5.2f} % of a core "
      f"({cpu / max(t['events'], 1) * 1e9:,.0f} ns/event; reader thread {t['reader_cpu_ms'] / 10 / secs:.2f} %), lost {t['lost_events']}")
PY
done
done

# Part D: the kernel-side cost per event, paid by the traced process: CPU per UDP connect()
# (python3, unpaced, CPU 0) without and with trace, interleaved $ROUNDS times.
echo "Part D: CPU per UDP connect() without/with trace" >&2
cat >"$WORK/flood.py" <<'PY'
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, t, end = 0, time.process_time(), time.monotonic() + 2
while time.monotonic() < end:
    for _ in range(1000):
        s.connect(("127.0.0.1", 9))
    n += 1000
print(round((time.process_time() - t) / n * 1e9))
PY
: >"$WORK/udp.tsv"
for round in $(seq "$ROUNDS"); do
  printf '0\t%s\n' "$(taskset -c 0 python3 "$WORK/flood.py")" >>"$WORK/udp.tsv"
  for route in $ROUTES; do
    start_trace "d$round-$route" --route "$route" --syscalls
    printf '%s\t%s\n' "$route" "$(taskset -c 0 python3 "$WORK/flood.py")" >>"$WORK/udp.tsv"
    stop_trace
  done
done

# Part E: the kernel's own accounting of the BPF programs (kernel.bpf_stats_enabled), in the
# default mode and with --syscalls.
: >"$WORK/bpfstats.txt"
if [[ " $ROUTES " == *" bpf "* && -w /proc/sys/kernel/bpf_stats_enabled ]]; then
  echo "Part E: bpf_stats at --rate $E_RATE" >&2
  old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
  echo 1 >/proc/sys/kernel/bpf_stats_enabled
  for mode in default --syscalls; do
    if [[ $mode == default ]]; then start_trace e --route bpf; else start_trace e --route bpf "$mode"; fi
    load e --rate "$E_RATE"
    child=$(ps -o pid= --ppid "$TRACE_PID" | tr -d ' ')
    for fd in /proc/"${child:-$TRACE_PID}"/fdinfo/*; do
      grep -q '^prog_type' "$fd" 2>/dev/null || continue
      awk '/^run_time_ns/ {t=$2} /^run_cnt/ {c=$2} END {print t, c}' "$fd"
    done >"$WORK/bpfstats.raw"
    stop_trace
    python3 - "$WORK/bpfstats.raw" "$WORK/e.ljson" "$mode" >>"$WORK/bpfstats.txt" <<'PY'
import json, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
ns, runs = sum(r[0] for r in rows), sum(r[1] for r in rows)
conns = json.load(open(sys.argv[2]))["summary"]["succeeded"]
per_conn = ns / max(conns, 1)
progs = ", ".join(f"{c / max(conns, 1):.1f} runs x {t / max(c, 1):.0f} ns" for t, c in rows if c)
print(f"  {sys.argv[3]}: {conns:,} connections, {runs:,} program runs ({runs / max(conns, 1):.1f} per connection; per program: {progs}), "
      f"{ns / max(runs, 1):.0f} ns per run, {per_conn:,.0f} ns per connection "
      f"= {per_conn * 10000 / 1e9 * 100:.2f} % of a core at 10,000 connects/s (bar < 2 %; programs only, not the tracepoint's record)")
PY
  done
  echo "$old_stats" >/proc/sys/kernel/bpf_stats_enabled
fi

# Part G: the profile of the BPF programs' cost (perf record -a -g during full-speed rounds).
: >"$WORK/profile.tsv"
if [[ " $ROUTES " == *" bpf "* && -n $HAVE_PERF && $G_ROUNDS -gt 0 ]]; then
  echo "Part G: perf profile, $G_ROUNDS rounds of (default --syscalls classic)" >&2
  for round in $(seq "$G_ROUNDS"); do
    for mode in default --syscalls classic; do
      name="g$round-${mode#--}"
      case $mode in
        default) start_trace "$name" --route bpf ;;
        classic) PORTLAB_TRACE_CLASSIC_TRACEPOINT=1 start_trace "$name" --route bpf ;;
        *) start_trace "$name" --route bpf "$mode" ;;
      esac
      perf record -q -a -g -F "$G_HZ" -o "$WORK/$name.perf" -- taskset -c 0 "$PORTLAB" load \
        -c "$CONNS" -z "$DURATION" --connection close --json "$URL" >"$WORK/$name.ljson" 2>/dev/null || true
      stop_trace
      conns=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['summary']['succeeded'])" "$WORK/$name.ljson")
      # One sample per paragraph (perf script ends each call chain with a blank line).
      perf script -i "$WORK/$name.perf" 2>/dev/null | awk -v mode="$mode" -v conns="$conns" '
        BEGIN { RS = "" }
        { n++ }
        /bpf_trace_run|trace_call_bpf|perf_trace_run_bpf_submit/ { k++ }
        END { printf "%s\t%d\t%d\t%d\n", mode, conns, k, n }' >>"$WORK/profile.tsv"
      rm -f "$WORK/$name.perf"
    done
  done
fi

# Part F: the host-wide cost of the syscall tracepoints: CPU per read()/write() syscall of an
# unrelated process (dd bs=1, 2 syscalls per byte, CPU 0) without trace and with each route
# --syscalls and --no-syscalls, interleaved $ROUNDS times, paired differences.
echo "Part F: CPU per syscall of an unrelated process (dd bs=1)" >&2
: >"$WORK/dd.tsv"
dd_ns() {
  /usr/bin/time -f "%U %S" -o "$WORK/dd.time" taskset -c 0 dd if=/dev/zero of=/dev/null bs=1 count=1000000 2>/dev/null
  awk '{printf "%.1f\n", ($1 + $2) / 2000000 * 1e9}' "$WORK/dd.time"
}
for round in $(seq "$ROUNDS"); do
  printf '0\t%s\n' "$(dd_ns)" >>"$WORK/dd.tsv"
  for route in $ROUTES; do
    for mode in --syscalls --no-syscalls; do
      start_trace "f$round" --route "$route" "$mode"
      printf '%s%s\t%s\n' "$route" "$mode" "$(dd_ns)" >>"$WORK/dd.tsv"
      stop_trace
    done
  done
done

python3 - "$RESULTS" "$ROUTES" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
A = [r for r in rows if r[0] == "A"]
B = [r for r in rows if r[0] == "B"]
def f(x):
    return float(x)
print("\nPart A: portlab load --connection close, new connections/s and CPU per connection without and with portlab trace")
print("  (each traced run against the mean of the untraced runs just before and after it)")
routes = sys.argv[2].split()
byrun = {}
for r in A:
    head, step = r[1].split("-")[0], int(r[1].split("-")[1])
    byrun[(int(head[1:]), step)] = r
def host_cpu_per_conn(r):  # load + nginx, seconds per connection
    return (f(r[5]) + f(r[12])) / max(f(r[4]), 1)
variants = [v for r in routes for v in ((f"{r}-sys", f"portlab trace --route {r} --syscalls" + (" (default)" if r == "perf" else "")), (f"{r}-nosys", f"portlab trace --route {r} --no-syscalls" + (" (default)" if r == "bpf" else "")))]
if "bpf" in routes:
    variants.append(("bpf-classic", "portlab trace --route bpf, classic tracepoint program instead of tp_btf"))
for variant, label in variants:
  ratios, cpu_ratios, cpu_deltas, trace_pct, reader_pct, ev_rates, lost = [], [], [], [], [], [], 0
  for (rd, step), t in sorted(byrun.items()):
      if t[2] != variant:
          continue
      nb = [byrun.get((rd, step - 1)), byrun.get((rd, step + 1))]
      nb = [b for b in nb if b and b[2] == "0"]
      if not nb:
          continue
      rb = statistics.mean(f(b[11]) for b in nb)
      cb = statistics.mean(host_cpu_per_conn(b) for b in nb)
      ratios.append(f(t[11]) / rb)
      cpu_ratios.append(host_cpu_per_conn(t) / cb)
      cpu_deltas.append((host_cpu_per_conn(t) - cb) * 1e6)
      trace_pct.append(f(t[6]) / f(t[9]) * 100)
      reader_pct.append(f(t[10]) / f(t[9]) * 100)
      ev_rates.append(f(t[7]) / f(t[9]))
      lost += int(t[8])
  if not ratios:
      continue
  med = statistics.median
  print(f" {label}: {len(ratios)} paired runs")
  print(f"  conn/s traced/untraced: median {med(ratios):.3f} (spread {min(ratios):.3f}-{max(ratios):.3f}; bar >= 0.95)")
  print(f"  load+nginx CPU per connection traced/untraced: median {med(cpu_ratios):.3f} (spread {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}), "
        f"{med(cpu_deltas):+.2f} us per connection (spread {min(cpu_deltas):+.2f} to {max(cpu_deltas):+.2f})")
  print(f"  trace's own CPU: median {med(trace_pct):.2f} % of a core over the run, its one-off start included "
        f"(loading and verifying the program, ~70 ms: short rounds overstate it); reader thread {med(reader_pct):.2f} %; "
        f"at {med(ev_rates):,.0f} events/s; lost {lost}")
base = [r for r in A if r[2] == "0"]
if base:
  rates = [f(r[11]) for r in base]
  cpus = [host_cpu_per_conn(r) * 1e6 for r in base]
  print(f" untraced runs: {min(rates):,.0f}-{max(rates):,.0f} conn/s, load+nginx {min(cpus):.1f}-{max(cpus):.1f} us CPU per connection")
print("\nPart B: fixed rates (portlab load --rate R --connection close)")
for r in [x for x in B if x[2] != "0"]:
    b = next((x for x in B if x[2] == "0" and x[3] == r[3]), None)
    secs = f(r[9])
    ev = f(r[7]) / secs
    pct = f(r[6]) / secs * 100
    conn_rate = f(r[11])
    ns_per_event = f(r[6]) / f(r[7]) * 1e9 if f(r[7]) else float("nan")
    at10k = pct * 10000 / conn_rate if conn_rate else float("nan")
    extra = ""
    if b:
        extra = f", load CPU/conn with/without ×{(f(r[5])/f(r[4]))/(f(b[5])/f(b[4])):.3f}"
    print(f"  route {r[2]} rate {r[3]:>6}/s: {conn_rate:8.0f} conn/s, {ev:9,.0f} events/s, trace CPU {pct:5.2f} % of a core "
          f"({ns_per_event:,.0f} ns/event, reader thread {f(r[10]):.2f} s), lost {r[8]}; "
          f"scaled to 10,000 connects/s: {at10k:.1f} % of a core{extra}")
PY
echo
echo "Part C: trace's own CPU at a given event rate (UDP connect() flood, 2 events per call)"
cat "$WORK/floods.txt"
python3 - "$WORK/udp.tsv" "$ROUTES" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
off = [int(v) for k, v in rows if k == "0"]
print("\nPart D: kernel-side cost, CPU ns per UDP connect() (2 tracepoint hits: sys_enter/exit_connect) without / with trace")
for route in sys.argv[2].split():
    on = [int(v) for k, v in rows if k == route]
    deltas = sorted(b - a for a, b in zip(off, on))
    if not deltas:
        continue
    per_event = statistics.median(deltas) / 2
    # 10,000 connects/s with both ends on this host ≈ 55,000 events/s (docs/trace.md).
    print(f"  route {route}: without {statistics.median(off)} ns, with {statistics.median(on)} ns; paired difference median "
          f"{statistics.median(deltas)} ns (spread {deltas[0]}–{deltas[-1]}) = about {per_event:.0f} ns per event "
          f"= {per_event * 55000 / 1e9 * 100:.2f} % of a core at 10,000 connects/s (bar < 2 %)")
PY
echo
echo "Part E: BPF route, kernel-side cost from kernel.bpf_stats_enabled (client and server on this host)"
cat "$WORK/bpfstats.txt"
python3 - "$WORK/profile.tsv" "$G_HZ" <<'PY'
import sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
hz = float(sys.argv[2])
if rows:
    print("\nPart G: BPF route, kernel-side cost from a perf profile (samples in BPF program runs, client and server on this host)")
for mode in dict.fromkeys(r[0] for r in rows):
    us = sorted(int(r[2]) / hz / max(int(r[1]), 1) * 1e6 for r in rows if r[0] == mode)
    share = statistics.median(int(r[2]) / max(int(r[3]), 1) * 100 for r in rows if r[0] == mode)
    m = statistics.median(us)
    print(f"  {mode}: {len(us)} runs, median {m:.2f} us per connection (spread {us[0]:.2f}-{us[-1]:.2f}) "
          f"= {m:.2f} % of a core at 10,000 connects/s (bar < 2 %); {share:.2f} % of all samples")
PY
python3 - "$WORK/dd.tsv" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("\nPart F: host-wide syscall slow path, CPU ns per syscall of dd bs=1 (not traced itself)")
base = [float(v) for k, v in rows if k == "0"]
if base:
    print(f"  without trace: median {statistics.median(base):.1f} ns")
for k in dict.fromkeys(k for k, _ in rows if k != "0"):
    on = [float(v) for kk, v in rows if kk == k]
    d = sorted(b - a for a, b in zip(base, on))
    print(f"  {k.replace('--', ' --')}: median {statistics.median(on):.1f} ns, paired difference median {statistics.median(d):+.1f} ns (spread {d[0]:+.1f} to {d[-1]:+.1f})")
PY
