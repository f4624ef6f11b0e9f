#!/usr/bin/env bash
# Times `portlab analyze --json` on a generated 500,000-line Windows `netstat -ano` capture
# (CRLF, TIME_WAIT and ESTABLISHED rows to 40 destinations) against the shell one-liners people
# run on such a file (`grep -c TIME_WAIT`, an awk count by state), pinned to one core, in
# interleaved rounds; prints the median, the spread and the ratios (the issue's bar: ≤ 1 s).
# Then streams a 1 GiB capture (UTF-8, and UTF-16LE with a BOM as PowerShell 5.1 writes it) and
# prints the peak resident memory (the bar: < 64 MiB).
#
# Usage: scripts/bench-analyze.sh [ROUNDS] [--no-gib]   (default 7 rounds)
# Needs: python3, taskset, /usr/bin/time. Builds portlab in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
gib=1
[ "${2:-}" = "--no-gib" ] && gib=0
cargo build --release -q -p portlab
bin=$PWD/target/release/portlab
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gen() { # gen LINES FILE [utf-16le [ROWS_PER_SNAPSHOT]]
  python3 - "$1" "$2" "${3:-utf-8}" "${4:-0}" <<'PY'
import sys
n, path, enc, per = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
head = "\r\nActive Connections\r\n\r\n  Proto  Local Address          Foreign Address        State           PID\r\n"
with open(path, "wb") as f:
    if enc == "utf-16le":
        f.write(b"\xff\xfe")
    buf = [head]
    for i in range(n - 4):
        if per and i % per == 0 and i:
            buf.append(f"Tue 12/01/2026 {10 + i // per // 3600 % 12:02d}:{i // per // 60 % 60:02d}:{i // per % 60:02d}.00\r\n" + head)
        port = 49152 + i % 16384
        dst = f"10.20.{i % 40}.{1 + i % 7}:443"
        if i % 10 == 0:
            buf.append(f"  TCP    10.0.0.5:{port:<17}{dst:<23}ESTABLISHED     {4000 + i % 13}\r\n")
        else:
            buf.append(f"  TCP    10.0.0.5:{port:<17}{dst:<23}TIME_WAIT       0\r\n")
        if len(buf) >= 20000:
            f.write("".join(buf).encode(enc)); buf = []
    f.write("".join(buf).encode(enc))
PY
}

gen 500000 "$work/netstat-500k.txt"
echo "capture: $(wc -l < "$work/netstat-500k.txt") lines, $(du -h "$work/netstat-500k.txt" | cut -f1)"

time_one() { # prints wall seconds of one run, pinned to CPU 1
  local start end
  start=$(date +%s.%N)
  taskset -c 1 "$@" >/dev/null || true # analyze exits 1 on a critical finding
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.6f\n", b - a }'
}

declare -a t_portlab t_grep t_awk
for r in $(seq 1 "$rounds"); do
  t_portlab+=("$(time_one "$bin" analyze --json "$work/netstat-500k.txt")")
  t_grep+=("$(time_one grep -c TIME_WAIT "$work/netstat-500k.txt")")
  t_awk+=("$(time_one awk '$1=="TCP"{n[$4]++} END{for(s in n) print s, n[s]}' "$work/netstat-500k.txt")")
done
python3 - "${t_portlab[*]}" "${t_grep[*]}" "${t_awk[*]}" <<'PY'
import statistics, sys
p, g, a = ([float(x) for x in s.split()] for s in sys.argv[1:4])
def show(name, xs):
    print(f"{name:<42} median {statistics.median(xs)*1000:8.1f} ms  min {min(xs)*1000:7.1f}  max {max(xs)*1000:7.1f}")
show("portlab analyze --json (500k lines)", p)
show("grep -c TIME_WAIT", g)
show("awk count by state", a)
ratios = [x / y for x, y in zip(p, a)]
print(f"ratio portlab/awk: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
print(f"bar: portlab median <= 1000 ms -> {'met' if statistics.median(p) <= 1.0 else 'NOT met'}")
PY

if [ "$gib" = 1 ]; then
  for case in utf-8:0 utf-16le:0 utf-8:5000; do
    enc=${case%:*}
    per=${case#*:}
    lines=14000000
    [ "$enc" = utf-16le ] && lines=7000000
    gen "$lines" "$work/big.txt" "$enc" "$per"
    size=$(du -h "$work/big.txt" | cut -f1)
    /usr/bin/time -f "%M %e" -o "$work/time.txt" taskset -c 1 "$bin" analyze --json "$work/big.txt" >/dev/null || true
    # The last line holds the numbers (a non-zero exit adds a "Command exited" line first).
    read -r kib secs < <(tail -n 1 "$work/time.txt")
    shape="one snapshot"
    [ "$per" != 0 ] && shape="a snapshot every $per rows"
    echo "1 GiB capture ($enc, $size, $lines lines, $shape): peak RSS $((kib / 1024)) MiB, ${secs} s (bar: < 64 MiB)"
    rm -f "$work/big.txt"
  done
fi
