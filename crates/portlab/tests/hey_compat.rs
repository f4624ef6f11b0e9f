//! `portlab load` as a drop-in for hey: hey's usage examples and every hey flag, spelled as in
//! hey (Go flags: `-disable-keepalive`, `-host`, `-cpus`), run against `portlab serve` (what
//! the server counted: connections, requests, body bytes) or a recording server (what the
//! server saw: Host, method, headers, body), with the meaning checked in the JSON report.
//! And, with Debian's `hey` installed, the same command lines through hey and portlab.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

fn portlab(args: &[&str]) -> Output {
    Command::new(PORTLAB)
        .args(args)
        .output()
        .expect("run portlab")
}

/// `portlab load ARGS --json URL`, expecting success; the report.
fn load_json(args: &[&str], url: &str) -> Value {
    let mut all = vec!["load"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", url]);
    let out = portlab(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

/// `portlab serve --json` on a free port, stopped by SIGTERM to read its stats.
struct Serve {
    child: Child,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Serve {
    fn start() -> Serve {
        Serve::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Serve {
        let mut child = Command::new(PORTLAB)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--threads",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn portlab serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("listening line");
        let event: Value = serde_json::from_str(&line).expect("JSON");
        let addr = event["address"].as_str().expect("address").to_string();
        Serve {
            child,
            stdout,
            url: format!("http://{addr}/"),
        }
    }

    /// Stops the server; its final stats event.
    fn stats(mut self) -> Value {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.child.wait().expect("wait");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("stats");
        serde_json::from_str(rest.trim_end().lines().last().unwrap_or("")).expect("stats JSON")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request as the recording server saw it.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 server that records every request and answers 200 "ok".
fn recorder() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || record(stream, &log));
        }
    });
    (format!("http://{addr}/path?q=1"), seen)
}

fn record(stream: TcpStream, log: &Mutex<Vec<Seen>>) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if !matches!(reader.read_line(&mut request_line), Ok(1..)) {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if !matches!(reader.read_line(&mut line), Ok(1..)) {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let close = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        log.lock().expect("lock").push(Seen {
            request_line: request_line.trim_end().to_string(),
            headers,
            body,
        });
        let resp: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if writer.write_all(resp).is_err() || close {
            return;
        }
    }
}

/// The requests the recorder saw during `portlab load ARGS --json URL`, and the report.
fn seen_by_recorder(args: &[&str]) -> (Vec<Seen>, Value) {
    let (url, seen) = recorder();
    let report = load_json(args, &url);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len() as u64,
        report["summary"]["succeeded"].as_u64().expect("n")
    );
    (seen, report)
}

#[test]
fn hey_usage_examples_run_with_heys_meaning() {
    // `hey URL`: hey's defaults, 200 requests over 50 workers, keep-alive.
    let serve = Serve::start();
    let r = load_json(&[], &serve.url);
    assert_eq!(r["summary"]["requests"], 200);
    assert_eq!(r["summary"]["succeeded"], 200);
    assert_eq!(r["settings"]["concurrency"], 50);
    assert_eq!(r["settings"]["connection"], "keep-alive");
    assert_eq!(r["connections"]["opened"], 50);
    // hey -n 300 -c 10 -disable-keepalive: one connection per request.
    let r = load_json(&["-n", "300", "-c", "10", "-disable-keepalive"], &serve.url);
    assert_eq!(r["summary"]["succeeded"], 300);
    assert_eq!(r["connections"]["opened"], 300);
    assert_eq!(r["connections"]["requests_on_reused"], 0);
    assert_eq!(r["settings"]["connection"], "close");
    let stats = serve.stats();
    assert_eq!(stats["connections_accepted"], 50 + 300);
    assert_eq!(stats["requests"], 200 + 300);

    // hey's -h text: -z 10s -z 3m; -H "Accept: text/html" -H "Content-Type: application/xml".
    let serve = Serve::start();
    let r = load_json(&["-z", "300ms", "-c", "2"], &serve.url);
    assert_eq!(r["settings"]["duration_secs"], 0.3);
    assert!(r["settings"]["requests"].is_null());
    let elapsed = r["summary"]["elapsed_secs"].as_f64().expect("secs");
    assert!((0.3..3.0).contains(&elapsed), "{elapsed}");
    drop(serve);
    let (seen, _) = seen_by_recorder(&[
        "-n",
        "4",
        "-c",
        "2",
        "-H",
        "Accept: text/html",
        "-H",
        "Content-Type: application/xml",
    ]);
    for s in &seen {
        assert_eq!(s.header("accept"), Some("text/html"));
        assert_eq!(s.header("content-type"), Some("application/xml"));
        assert_eq!(s.request_line, "GET /path?q=1 HTTP/1.1");
    }
}

#[test]
fn every_hey_request_flag_reaches_the_server() {
    let body_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(body_file.path(), b"from a file").expect("write");
    let file = body_file.path().to_str().expect("utf-8");
    let (seen, r) = seen_by_recorder(&[
        "-n",
        "6",
        "-c",
        "2",
        "-m",
        "post",
        "-d",
        "hello",
        "-T",
        "application/json",
        "-A",
        "text/plain",
        "-a",
        "user:pass",
        "-host",
        "example.com",
        "-U",
        "hey-compat/1",
        "-disable-compression",
        "-disable-redirects",
    ]);
    assert_eq!(r["target"]["method"], "POST");
    assert_eq!(seen.len(), 6);
    for s in &seen {
        assert_eq!(s.request_line, "POST /path?q=1 HTTP/1.1");
        assert_eq!(s.header("host"), Some("example.com"), "-host");
        assert_eq!(s.header("content-type"), Some("application/json"), "-T");
        assert_eq!(s.header("accept"), Some("text/plain"), "-A");
        assert_eq!(s.header("authorization"), Some("Basic dXNlcjpwYXNz"), "-a");
        assert_eq!(s.header("user-agent"), Some("hey-compat/1"), "-U");
        assert_eq!(s.header("accept-encoding"), None, "-disable-compression");
        assert_eq!(s.body, b"hello", "-d");
    }
    let (seen, _) = seen_by_recorder(&["-n", "2", "-c", "1", "-m", "PUT", "-D", file]);
    assert!(seen.iter().all(|s| s.body == b"from a file"), "-D");
    assert!(seen.iter().all(|s| s.request_line.starts_with("PUT ")));

    // -x: the proxy gets the absolute URL (RFC 9112 §3.2.2), the target is named in Host.
    let (proxy_url, proxy_seen) = recorder();
    let proxy = proxy_url.trim_end_matches("/path?q=1");
    let r = load_json(&["-n", "3", "-c", "1", "-x", proxy], "http://127.0.0.1:9/x");
    assert_eq!(r["summary"]["succeeded"], 3);
    assert_eq!(r["proxy"]["tunnel"], false);
    assert_eq!(
        r["target"]["connected_to"].as_str(),
        Some(proxy.trim_start_matches("http://"))
    );
    let seen = proxy_seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.request_line, "GET http://127.0.0.1:9/x HTTP/1.1");
        assert_eq!(s.header("host"), Some("127.0.0.1:9"));
    }
}

#[test]
fn every_hey_run_flag_has_heys_meaning() {
    let serve = Serve::start();
    let url = serve.url.clone();
    // -n, -c, -cpus, -t (seconds; 0 = no timeout), Go's `-flag=value` and `--flag`.
    let r = load_json(&["-n=40", "--c", "4", "-cpus", "1", "-t", "3"], &url);
    assert_eq!(r["summary"]["requests"], 40);
    assert_eq!(r["settings"]["concurrency"], 4);
    assert_eq!(r["settings"]["threads"], 1, "-cpus");
    assert_eq!(r["settings"]["request_timeout_ms"], 3000, "-t");
    assert_eq!(r["connections"]["opened"], 4);
    let r = load_json(&["-n", "2", "-c", "1", "-t", "0"], &url);
    assert!(r["settings"]["request_timeout_ms"].as_u64() > Some(86_400_000));
    // -q is per worker: -q 20 -c 2 for 1 s is about 40 requests, not 20.
    let r = load_json(&["-q", "20", "-c", "2", "-z", "1s"], &url);
    assert_eq!(r["settings"]["rate"]["kind"], "per_worker");
    let n = r["summary"]["succeeded"].as_u64().expect("n");
    assert!((36..=42).contains(&n), "-q 20 -c 2 -z 1s gave {n} requests");
    // -q 0 is hey's "no limit".
    let r = load_json(&["-n", "20", "-c", "2", "-q", "0"], &url);
    assert_eq!(r["settings"]["rate"]["kind"], "unlimited");
    // -disable-keepalive=false is Go's way of saying keep-alive on.
    let r = load_json(&["-n", "20", "-c", "2", "-disable-keepalive=false"], &url);
    assert_eq!(r["connections"]["opened"], 2);
    let stats = serve.stats();
    assert_eq!(stats["bad_requests"], 0);
}

#[test]
fn csv_output_has_heys_columns_and_one_line_per_success() {
    let serve = Serve::start();
    let out = portlab(&["load", "-n", "50", "-c", "5", "-o", "csv", &serve.url]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 50);
    let mut new_connections = 0;
    for row in &rows {
        assert_eq!(row.len(), 8, "{row:?}");
        assert_eq!(row[6], "200");
        let v: Vec<f64> = [0, 1, 2, 3, 4, 5, 7]
            .iter()
            .map(|&i| row[i].parse().expect("number"))
            .collect();
        // response-time covers write + delay + read (4-decimal rounding aside).
        assert!(v[0] + 0.0003 >= v[3] + v[4] + v[5], "{row:?}");
        new_connections += u32::from(v[1] > 0.0);
        assert!(row[0].contains('.') && row[0].split('.').nth(1).map(str::len) == Some(4));
    }
    // Only the 5 requests that opened a connection can have a dial time.
    assert!(new_connections <= 5, "{new_connections}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("50 succeeded, 0 failed"), "{stderr}");
}

#[test]
fn what_portlab_cannot_honour_fails_with_exit_2_naming_the_flag() {
    for (args, named) in [
        (
            &["load", "-disable-foo", "http://127.0.0.1:9/"][..],
            "-disable-foo",
        ),
        (
            &["load", "-h2=maybe", "http://127.0.0.1:9/"][..],
            "-h2=maybe",
        ),
        (
            &["load", "-h2", "--retry", "1", "http://127.0.0.1:9/"][..],
            "-h2",
        ),
        (
            &["load", "-h2", "-disable-keepalive", "http://127.0.0.1:9/"][..],
            "-h2",
        ),
        (&["load", "-p", "10", "http://127.0.0.1:9/"][..], "-h2"),
        (
            &[
                "load",
                "-x",
                "socks5://127.0.0.1:1080",
                "http://127.0.0.1:9/",
            ][..],
            "proxy",
        ),
    ] {
        let out = portlab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// hey and portlab, same command line, same server: the same request count and status
/// distribution; with -disable-keepalive the same connection count. (With keep-alive, Go's
/// Transport dials a spare connection whenever a request finds no idle one, so hey opens
/// between -c and 2·-c connections where portlab opens exactly -c.)
#[test]
fn hey_and_portlab_agree_on_the_same_command_line() {
    let hey = which("hey").expect("hey is not installed: apt-get install hey (see .ci/run)");
    for args in [
        &["-n", "300", "-c", "10"][..],
        &["-n", "300", "-c", "10", "-disable-keepalive"][..],
        &[
            "-n",
            "120",
            "-c",
            "4",
            "-m",
            "POST",
            "-d",
            "hello",
            "-host",
            "example.com",
        ][..],
    ] {
        let serve = Serve::start();
        let out = Command::new(&hey)
            .args(args)
            .arg(&serve.url)
            .output()
            .expect("run hey");
        assert!(out.status.success(), "hey {args:?}");
        let hey_text = String::from_utf8_lossy(&out.stdout).to_string();
        let hey_stats = serve.stats();

        let serve = Serve::start();
        let r = load_json(args, &serve.url);
        let ours = serve.stats();

        let n: u64 = args[1].parse().expect("n");
        let c: u64 = args[3].parse().expect("c");
        assert_eq!(hey_stats["requests"], n, "hey {args:?}");
        assert_eq!(ours["requests"], n, "portlab {args:?}");
        assert_eq!(r["summary"]["succeeded"], n);
        assert!(
            hey_text.contains(&format!("[200]\t{n} responses")),
            "{hey_text}"
        );
        assert_eq!(r["status_codes"]["200"], n);
        assert_eq!(hey_stats["request_body_bytes"], ours["request_body_bytes"]);
        let hey_conns = hey_stats["connections_accepted"].as_u64().expect("conns");
        let our_conns = ours["connections_accepted"].as_u64().expect("conns");
        assert_eq!(
            our_conns,
            r["connections"]["opened"].as_u64().expect("opened")
        );
        if args.contains(&"-disable-keepalive") {
            assert_eq!(hey_conns, n, "hey {args:?}");
            assert_eq!(our_conns, n, "portlab {args:?}");
        } else {
            assert_eq!(our_conns, c, "portlab {args:?}");
            assert!(
                (c..=2 * c).contains(&hey_conns),
                "hey {args:?}: {hey_conns}"
            );
        }
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn h2_multiplexes_streams_over_few_connections() {
    // hey -h2 runs its workers over one connection: -c 1 -p 50 is that, -n 2000 requests.
    let serve = Serve::start();
    let r = load_json(&["-h2", "-n", "2000", "-c", "1", "-p", "50"], &serve.url);
    assert_eq!(r["settings"]["http_version"], "2");
    assert_eq!(r["settings"]["streams_per_connection"], 50);
    assert_eq!(r["summary"]["succeeded"], 2000);
    assert_eq!(r["connections"]["opened"], 1);
    assert_eq!(r["connections"]["requests_on_reused"], 1999);
    let stats = serve.stats();
    assert_eq!(stats["connections_accepted"], 1, "one TCP connection");
    assert_eq!(stats["requests"], 2000);
    assert_eq!(stats["responses"], 2000);

    // POST bodies go in DATA frames.
    let serve = Serve::start();
    let r = load_json(
        &[
            "-h2", "-n", "40", "-c", "2", "-p", "4", "-m", "POST", "-d", "hello",
        ],
        &serve.url,
    );
    assert_eq!(r["summary"]["succeeded"], 40);
    assert_eq!(serve.stats()["request_body_bytes"], 200);
}

#[test]
fn h2_goaway_failures_are_classified_and_every_request_counted_once() {
    // The server sends GOAWAY after 100 streams per connection; streams the client had
    // already sent past it fail as GoAway and the slot reconnects.
    let serve = Serve::start_with(&["--close-after", "100"]);
    let out = portlab(&[
        "load", "-h2", "-n", "1000", "-c", "2", "-p", "20", "--json", &serve.url,
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let s = &r["summary"];
    let ok = s["succeeded"].as_u64().expect("ok");
    let failed = s["failed"].as_u64().expect("failed");
    assert_eq!(ok + failed, 1000);
    assert_eq!(out.status.code(), Some(if failed > 0 { 1 } else { 0 }));
    for e in r["errors"].as_array().expect("errors") {
        assert_eq!(e["class"], "GoAway", "{e}");
    }
    let opened = r["connections"]["opened"].as_u64().expect("opened");
    assert!(opened >= 10, "at most 100 streams per connection: {opened}");
    let stats = serve.stats();
    assert_eq!(
        stats["responses"], ok,
        "the server answered exactly the successes"
    );
    assert_eq!(stats["connections_accepted"], opened);
}
