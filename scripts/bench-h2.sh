#!/usr/bin/env bash
# Benchmark `portlab load -h2` against h2load (Debian `nghttp2-client`) on the same nginx with
# HTTP/2 on, in one run.
#
# One nginx (1 worker, access_log off, `return 200` of a small body) listens with HTTP/2 on
# a free loopback port: cleartext h2c with prior knowledge (MODE=h2c, the default) or TLS with
# ALPN h2 (MODE=tls). nginx is pinned to CPU $SERVER_CPU, both clients to CPU $CLIENT_CPU with
# one thread each, so they compete for the same core the same way. Each round runs, for
# $DURATION each, at -c $CONNS connections × $STREAMS streams:
#   h2load -c $CONNS -m $STREAMS -t 1 -D SECS URL
#   portlab load -h2 -c $CONNS -p $STREAMS --threads 1 -z DURATION URL
# The order alternates between rounds. Client CPU (user+sys) comes from /usr/bin/time.
# Prints, per round, requests/s and CPU µs per request for both, then the ratios
# portlab/h2load (median and min..max over rounds). The target is req/s ratio ≥ 0.9.
#
# Usage: scripts/bench-h2.sh   (env: DURATION=5 CONNS=10 STREAMS=10 ROUNDS=5 MODE=h2c
#                               SERVER_CPU=0 CLIENT_CPU=1 PORTLAB=target/release/portlab)
# Needs: nginx, h2load, openssl (MODE=tls), python3, taskset, GNU time (/usr/bin/time).
set -euo pipefail

DURATION=${DURATION:-5}
CONNS=${CONNS:-10}
STREAMS=${STREAMS:-10}
ROUNDS=${ROUNDS:-5}
MODE=${MODE:-h2c}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORTLAB=${PORTLAB:-$ROOT/target/release/portlab}

for tool in nginx h2load python3 taskset /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-h2: $tool is required" >&2; exit 2; }
done
if [[ ! -x $PORTLAB || -n ${REBUILD:-} ]]; then
  (cd "$ROOT" && cargo build --release -p portlab)
fi

WORK=$(mktemp -d /tmp/bench-h2.XXXXXX)
NGINX_PID=
cleanup() {
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# nginx ≥ 1.25.1 has `http2 on;`; older ones (Debian 12: 1.22) take `listen … http2`.
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if python3 -c "import sys; v=tuple(map(int,'$NGINX_VERSION'.split('.'))); sys.exit(0 if v>=(1,25,1) else 1)"; then
  H2_LISTEN=""; H2_DIRECTIVE="http2 on;"
else
  H2_LISTEN=" http2"; H2_DIRECTIVE=""
fi
if [[ $MODE == tls ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  LISTEN="127.0.0.1:$PORT ssl$H2_LISTEN"
  TLS="ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;"
  URL="https://127.0.0.1:$PORT/hello"
  INSECURE=--insecure
else
  LISTEN="127.0.0.1:$PORT$H2_LISTEN"
  TLS=""
  URL="http://127.0.0.1:$PORT/hello"
  INSECURE=
fi
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
error_log $WORK/error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  http2_max_concurrent_streams 1024;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK;
  uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server {
    listen $LISTEN; $H2_DIRECTIVE $TLS
    location / { return 200 "hello, portlab\n"; }
  }
}
EOF
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" \
  -g 'daemon off; master_process off;' 2>"$WORK/nginx.stderr" &
NGINX_PID=$!
for _ in $(seq 100); do
  python3 -c 'import socket; socket.create_connection(("127.0.0.1",'"$PORT"'),0.1).close()' 2>/dev/null && break
  sleep 0.05
done

run_h2load() { # round
  /usr/bin/time -f '%U %S' -o "$WORK/h2load.$1.time" taskset -c "$CLIENT_CPU" \
    h2load -c "$CONNS" -m "$STREAMS" -t 1 -D "$DURATION" "$URL" >"$WORK/h2load.$1.out"
}
run_portlab() { # round
  /usr/bin/time -f '%U %S' -o "$WORK/portlab.$1.time" taskset -c "$CLIENT_CPU" \
    "$PORTLAB" load -h2 -c "$CONNS" -p "$STREAMS" --threads 1 -z "${DURATION}s" $INSECURE \
    --json "$URL" >"$WORK/portlab.$1.json" || true
}

echo "bench-h2: nginx $NGINX_VERSION ($MODE, CPU $SERVER_CPU), clients on CPU $CLIENT_CPU," \
  "-c $CONNS × $STREAMS streams, ${DURATION}s × $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then run_h2load "$round"; run_portlab "$round"
  else run_portlab "$round"; run_h2load "$round"; fi
done

python3 - "$WORK" "$ROUNDS" <<'PY'
import json, re, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def cpu(path):
    u, s = open(path).read().split()[-2:]
    return float(u) + float(s)
rows = []
for r in range(1, rounds + 1):
    out = open(f"{work}/h2load.{r}.out").read()
    rps_h = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    done_h = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out).group(2))
    rep = json.load(open(f"{work}/portlab.{r}.json"))
    s = rep["summary"]
    rps_p = s["requests_per_sec"]
    cpu_h, cpu_p = cpu(f"{work}/h2load.{r}.time"), cpu(f"{work}/portlab.{r}.time")
    us_h, us_p = cpu_h / max(done_h, 1) * 1e6, cpu_p / max(s["succeeded"], 1) * 1e6
    assert rep["settings"]["streams_per_connection"] > 0
    rows.append((rps_h, rps_p, us_h, us_p, s["failed"], rep["connections"]["opened"]))
    print(f"round {r}: h2load {rps_h:10,.0f} req/s {us_h:6.2f} µs CPU/req | "
          f"portlab {rps_p:10,.0f} req/s {us_p:6.2f} µs CPU/req "
          f"({s['failed']} failed, {rep['connections']['opened']} connections)")
ratio = [p / h for h, p, *_ in rows]
cpu_ratio = [up / uh for _, _, uh, up, *_ in rows]
med = statistics.median
print(f"req/s   portlab/h2load: median {med(ratio):.3f} (min {min(ratio):.3f}, max {max(ratio):.3f})"
      f"  target >= 0.9: {'met' if med(ratio) >= 0.9 else 'NOT met'}")
print(f"CPU/req portlab/h2load: median {med(cpu_ratio):.3f} (min {min(cpu_ratio):.3f}, max {max(cpu_ratio):.3f})")
print(f"medians: h2load {med(r[0] for r in rows):,.0f} req/s, {med(r[2] for r in rows):.2f} µs CPU/req; "
      f"portlab {med(r[1] for r in rows):,.0f} req/s, {med(r[3] for r in rows):.2f} µs CPU/req")
PY
