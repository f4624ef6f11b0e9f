#!/usr/bin/env bash
# Times `portlab merge` over 1,000 agent reports and reads its peak memory (the issue's bar:
# under 2 s and under 100 MiB). The reports are real: four `portlab load --segment I/4 -z 5s
# --rate 2000` runs at once against `portlab serve` on loopback (sampler on, so each report carries its
# timeline, sampler seconds and ticks), copied to 1,000 files as segments 0..999 of 1,000 with
# start times spread over a second. Several rounds, text and JSON output interleaved; prints
# wall time, CPU time (user + sys: what a busy shared machine does not inflate) and peak RSS.
#
# Usage: scripts/bench-merge.sh [REPORTS] [ROUNDS]   (default 1000 5)
#        SEED_DURATION=30s scripts/bench-merge.sh   (longer seed runs: bigger reports)
# Needs: python3, GNU time (/usr/bin/time) or bash's own timing. Builds portlab in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
reports=${1:-1000}
rounds=${2:-5}
seed_duration=${SEED_DURATION:-5s}
cargo build --release -q -p portlab
bin=$PWD/target/release/portlab
work=$(mktemp -d)
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin" serve --listen 127.0.0.1:0 --json > "$work/serve.out" 2>/dev/null &
serve_pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url="http://$(grep -o '127.0.0.1:[0-9]*' "$work/serve.out")/"
start_at=$(date -u -d '+1 second' +%Y-%m-%dT%H:%M:%SZ)
load_pids=()
for i in 0 1 2 3; do
  "$bin" load --segment "$i/4" --start-at "$start_at" -z "$seed_duration" --rate 2000 -c 8 \
    --threads 1 --json "$url" > "$work/seed-$i.json" &
  load_pids+=($!)
done
wait "${load_pids[@]}" || true
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""

python3 - "$work" "$reports" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
seeds = [json.load(open(f"{work}/seed-{i}.json")) for i in range(4)]
for i in range(n):
    r = dict(seeds[i % 4])
    r["started_at_unix_secs"] = seeds[i % 4]["started_at_unix_secs"] + (i % 100) / 100.0
    agent = dict(r["agent"]); agent["segment"] = {"index": i, "count": n}
    agent["hostname"] = f"portlab-load-{i}"
    r["agent"] = agent
    with open(f"{work}/report-{i:04}.json", "w") as f:
        json.dump(r, f, indent=2)
PY
size=$(du -sh "$work" | cut -f1)
one=$(stat -c %s "$work/report-0000.json")
echo "merging $reports reports ($size on disk, $one bytes each), $rounds rounds"

measure() { # prints "elapsed_s cpu_s max_rss_kib"
  { /usr/bin/time -f '%e %U %S %M' "$bin" merge "$@" "$work"/report-*.json > /dev/null; } 2>&1 \
    | tail -1 | awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }'
}
wall=(); cpu=(); rss=()
for r in $(seq "$rounds"); do
  for mode in text json; do
    if [ "$mode" = json ]; then read -r t c m < <(measure --json); else read -r t c m < <(measure); fi
    wall+=("$t"); cpu+=("$c"); rss+=("$m")
    echo "round $r $mode: ${t} s wall, ${c} s CPU, $((m / 1024)) MiB"
  done
done
python3 - "${wall[*]}" "${cpu[*]}" "${rss[*]}" <<'PY'
import statistics as st, sys
wall = [float(x) for x in sys.argv[1].split()]
cpu = [float(x) for x in sys.argv[2].split()]
rss = [int(x) for x in sys.argv[3].split()]
print(f"wall: median {st.median(wall):.2f} s (min {min(wall):.2f}, max {max(wall):.2f})")
print(f"CPU (user+sys): median {st.median(cpu):.2f} s (min {min(cpu):.2f}, max {max(cpu):.2f})")
print(f"peak memory: {max(rss)/1024:.1f} MiB (max RSS over all rounds)")
ok = max(wall) < 2.0 and max(rss) / 1024 < 100
print("bar (< 2 s wall, < 100 MiB):", "met" if ok else "NOT met (see CPU time if the machine is busy)")
PY
