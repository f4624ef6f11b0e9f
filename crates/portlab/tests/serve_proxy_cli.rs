//! `portlab serve` and `portlab proxy` as processes: the listening line, SIGTERM, JSON stats,
//! and one-line usage errors with exit code 2.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

/// A child process killed on drop if still running.
struct Proc {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(PORTLAB)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portlab");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Proc { child, stdout }
    }

    /// Reads the `{"event":"listening","address":...}` line.
    fn listening_addr(&mut self) -> SocketAddr {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read listening line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("listening line is JSON");
        assert_eq!(event["event"], "listening");
        event["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("socket address")
    }

    /// Sends SIGTERM, waits, returns (exit code, the JSON stats event).
    fn terminate(mut self) -> (i32, serde_json::Value) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().expect("wait");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stats");
        // Interval events may still precede the final one: the stats event is the last line.
        let last = rest.trim_end().lines().last().unwrap_or("");
        let stats: serde_json::Value = serde_json::from_str(last).expect("stats line is JSON");
        assert_eq!(stats["event"], "stats");
        (status.code().expect("exit code"), stats)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portlab serve` on a free loopback port, one thread, JSON events.
fn start_serve() -> Proc {
    Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--threads",
        "1",
    ])
}

fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /hello.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    resp
}

#[test]
fn serve_and_tcp_proxy_run_until_sigterm_and_report_json() {
    let mut serve = start_serve();
    let serve_addr = serve.listening_addr();
    assert_ne!(serve_addr.port(), 0, "the real port is printed");
    let connect = serve_addr.to_string();
    let mut proxy = Proc::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &connect,
        "--json",
    ]);
    let proxy_addr = proxy.listening_addr();
    let resp = get(proxy_addr);
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("hello from portlab serve"));

    let (code, stats) = proxy.terminate();
    assert_eq!(code, 0);
    assert_eq!(stats["event"], "stats");
    assert_eq!(stats["mode"], "tcp");
    assert_eq!(stats["connections_accepted"], 1);
    assert_eq!(stats["upstream_connects"], 1);
    let (code, stats) = serve.terminate();
    assert_eq!(code, 0);
    assert_eq!(stats["requests"], 1);
}

#[test]
fn http_proxy_answers_502_when_upstream_is_down() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let connect = closed.to_string();
    let mut proxy = Proc::start(&[
        "proxy",
        "--mode",
        "http",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &connect,
        "--json",
    ]);
    let resp = get(proxy.listening_addr());
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    let (code, stats) = proxy.terminate();
    assert_eq!(code, 0);
    assert_eq!(stats["mode"], "http");
    assert_eq!(stats["bad_gateway"], 1);
    assert_eq!(stats["upstream_connect_failures"]["connection_refused"], 1);
}

fn run_expecting_usage_error(args: &[&str]) -> String {
    let out = Command::new(PORTLAB)
        .args(args)
        .output()
        .expect("run portlab");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).expect("utf8");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn usage_errors_are_one_line_with_exit_code_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let err = run_expecting_usage_error(&["serve", "--listen", &addr]);
    assert!(err.contains("in use"), "{err}");
    let err = run_expecting_usage_error(&["serve", "--listen", "not-an-address"]);
    assert!(err.contains("--listen"), "{err}");
    let err = run_expecting_usage_error(&["serve", "--listen", "127.0.0.1:0", "--fault", "boom=1"]);
    assert!(err.contains("boom"), "{err}");
    let err = run_expecting_usage_error(&["serve", "--listen", "127.0.0.1:0", "--delay", "9..3"]);
    assert!(err.contains("delay"), "{err}");
    let err = run_expecting_usage_error(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "127.0.0.1:1",
        "--mode",
        "http",
        "--pool",
        "0",
    ]);
    assert!(err.contains("--pool"), "{err}");
    let err =
        run_expecting_usage_error(&["proxy", "--connect", "[::1]:80", "--source-ip", "127.0.0.1"]);
    assert!(err.contains("famil"), "{err}");
    let err = run_expecting_usage_error(&[
        "proxy",
        "--connect",
        "127.0.0.1:1",
        "--mode",
        "http",
        "--engine",
        "uring",
    ]);
    assert!(err.contains("--engine"), "{err}");
    let err =
        run_expecting_usage_error(&["proxy", "--connect", "127.0.0.1:1", "--batch-wait", "1s"]);
    assert!(err.contains("100ms"), "{err}");
}

/// Whether this host lets processes set up io_uring (`kernel.io_uring_disabled` < 2).
fn io_uring_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map_or(true, |v| v.trim() != "2")
}

#[test]
fn tcp_proxy_runs_on_the_engine_asked_for_and_names_it() {
    let mut serve = start_serve();
    let connect = serve.listening_addr().to_string();
    let mut engines = vec![("tokio", "1")];
    if io_uring_allowed() {
        engines.push(("uring", "2"));
    }
    for (engine, threads) in engines {
        let mut proxy = Proc::start(&[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &connect,
            "--engine",
            engine,
            "--threads",
            threads,
            "--json",
        ]);
        let addr = proxy.listening_addr();
        for _ in 0..3 {
            assert!(get(addr).starts_with("HTTP/1.1 200"));
        }
        let (code, stats) = proxy.terminate();
        assert_eq!(code, 0, "{engine}");
        assert_eq!(stats["engine"], engine, "{stats}");
        assert_eq!(stats["engine_fallback"], serde_json::Value::Null, "{stats}");
        assert_eq!(stats["connections_accepted"], 3, "{stats}");
        assert_eq!(stats["connections_active"], 0, "{stats}");
        assert_eq!(stats["upstream_connects"], 3, "{stats}");
    }
    serve.terminate();
}

#[test]
fn stats_interval_prints_periodic_stats_events() {
    let mut serve = start_serve();
    let connect = serve.listening_addr().to_string();
    let mut proxy = Proc::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &connect,
        "--json",
        "--stats-interval",
        "0.05",
    ]);
    let addr = proxy.listening_addr();
    assert!(get(addr).starts_with("HTTP/1.1 200"));
    // Interval events keep coming; one of them must show the request (bounded by count).
    let mut seen = false;
    for _ in 0..200 {
        let mut line = String::new();
        proxy
            .stdout
            .read_line(&mut line)
            .expect("read interval line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        assert_eq!(event["event"], "interval");
        if event["connections_accepted"] == 1 {
            seen = true;
            break;
        }
    }
    assert!(seen, "no interval event counted the connection");
    let (code, _) = proxy.terminate();
    assert_eq!(code, 0);
    serve.terminate();
}
