//! A minimal closed-loop HTTP/1.1 client for `scripts/model-grid.sh`, standing in for
//! `portlab load` until that command exists: `C` threads share `N` attempts; thread `w` talks
//! to destination `w % D` (as `portlab simulate` assigns workers); each attempt connects (or
//! reuses a kept-alive connection), sends one GET and reads the response; then, per policy,
//! keeps the connection (`keep-alive`), waits for the server to close (`close`, sent as
//! `Connection: close`) or closes first (`drop`).
//!
//! Usage: `grid_client N C drop|close|keep-alive ADDR:PORT...` — prints one JSON object:
//! successes, failures (EADDRNOTAVAIL), other_errors, first_failure_secs, elapsed_secs,
//! latency_mean_ms, latency_mean_ms_before_first_failure (per thread, before its own first
//! failure), failed_connect_mean_us.
//!
//! Per-thread counters, merged at the end; the only shared state is the attempt budget.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// errno EADDRNOTAVAIL on Linux.
const EADDRNOTAVAIL: i32 = 99;

#[derive(Default)]
struct Stats {
    ok: u64,
    fail: u64,
    other: u64,
    first_fail: Option<Duration>,
    latency: Duration,
    fail_time: Duration,
    /// Successful requests that ended before this thread's first failure, and their time.
    ok_before_fail: u64,
    latency_before_fail: Duration,
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    KeepAlive,
    Close,
    Drop,
}

fn main() {
    match run() {
        Ok(json) => println!("{json}"),
        Err(msg) => {
            eprintln!("grid_client: {msg}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: grid_client N C drop|close|keep-alive ADDR:PORT...".into());
    }
    let n: i64 = args[0].parse().map_err(|_| "N must be a number")?;
    let c: usize = args[1].parse().map_err(|_| "C must be a number")?;
    let policy = match args[2].as_str() {
        "keep-alive" => Policy::KeepAlive,
        "close" => Policy::Close,
        "drop" => Policy::Drop,
        other => return Err(format!("unknown policy {other}")),
    };
    let dests: Vec<SocketAddr> = args[3..]
        .iter()
        .map(|a| a.parse().map_err(|_| format!("bad address {a}")))
        .collect::<Result<_, _>>()?;
    let budget = AtomicI64::new(n);
    let start = Instant::now();
    let stats: Vec<Stats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..c)
            .map(|w| {
                let dst = dests[w % dests.len()];
                let budget = &budget;
                s.spawn(move || worker(dst, policy, budget, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = Stats::default();
    for st in stats {
        total.ok += st.ok;
        total.fail += st.fail;
        total.other += st.other;
        total.latency += st.latency;
        total.fail_time += st.fail_time;
        total.ok_before_fail += st.ok_before_fail;
        total.latency_before_fail += st.latency_before_fail;
        total.first_fail = match (total.first_fail, st.first_fail) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let opt = |v: Option<f64>| v.map_or("null".to_string(), |x| format!("{x}"));
    Ok(format!(
        "{{\"successes\": {}, \"failures\": {}, \"other_errors\": {}, \"first_failure_secs\": {}, \
         \"elapsed_secs\": {}, \"latency_mean_ms\": {}, \"latency_mean_ms_before_first_failure\": {}, \
         \"failed_connect_mean_us\": {}}}",
        total.ok,
        total.fail,
        total.other,
        opt(total.first_fail.map(|d| d.as_secs_f64())),
        elapsed.as_secs_f64(),
        total.latency.as_secs_f64() * 1e3 / total.ok.max(1) as f64,
        total.latency_before_fail.as_secs_f64() * 1e3 / total.ok_before_fail.max(1) as f64,
        opt((total.fail > 0).then(|| total.fail_time.as_secs_f64() * 1e6 / total.fail as f64)),
    ))
}

fn worker(dst: SocketAddr, policy: Policy, budget: &AtomicI64, start: Instant) -> Stats {
    let request: &[u8] = if policy == Policy::Close {
        b"GET / HTTP/1.1\r\nHost: grid\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: grid\r\n\r\n"
    };
    let mut st = Stats::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = [0u8; 4096];
    while budget.fetch_sub(1, Ordering::Relaxed) > 0 {
        let t0 = Instant::now();
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(dst) {
                Ok(s) => s,
                Err(e) => {
                    if e.raw_os_error() == Some(EADDRNOTAVAIL) {
                        st.fail += 1;
                        st.fail_time += t0.elapsed();
                        st.first_fail.get_or_insert(t0 - start);
                    } else {
                        st.other += 1;
                    }
                    continue;
                }
            },
        };
        match exchange(&mut stream, request, &mut buf, policy) {
            Ok(()) => {
                st.ok += 1;
                if policy == Policy::KeepAlive {
                    conn = Some(stream);
                } else {
                    // For `drop` this close() sends the first FIN (the client holds TIME_WAIT);
                    // for `close` the server's FIN came first. Its cost is part of the request.
                    drop(stream);
                }
                let took = t0.elapsed();
                st.latency += took;
                if st.first_fail.is_none() {
                    st.ok_before_fail += 1;
                    st.latency_before_fail += took;
                }
            }
            Err(_) => st.other += 1,
        }
    }
    st
}

/// Sends the request and reads one response (headers + Content-Length body); for `close`
/// also reads to EOF, so the server's FIN arrives before the client closes.
fn exchange(
    s: &mut TcpStream,
    request: &[u8],
    buf: &mut [u8],
    policy: Policy,
) -> std::io::Result<()> {
    s.write_all(request)?;
    let mut have = 0usize;
    let need = loop {
        let got = s.read(&mut buf[have..])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += got;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let body = content_length(&buf[..end]).unwrap_or(0);
            break end + 4 + body;
        }
        if have == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    };
    while have < need {
        let got = s.read(&mut buf[have..])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += got;
    }
    if policy == Policy::Close {
        while s.read(buf)? > 0 {}
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}
