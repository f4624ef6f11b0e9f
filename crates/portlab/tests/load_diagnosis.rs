//! `portlab load` says why requests failed, on a real kernel: port exhaustion in a test-made
//! namespace (1,000 ports, `tcp_tw_reuse=0`) is the top finding with the evidence; keep-alive
//! is healthy; a listener with a backlog of 1 that accepts slowly is a listen-queue overflow,
//! not exhaustion.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portlab_testkit::NetNs;
use serde_json::Value;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

/// `portlab serve` inside the namespace, stopped by PID on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(ns: &NetNs) -> Server {
    let mut child = ns
        .command(PORTLAB)
        // A fixed port outside the ephemeral range: a listener bound inside the range would
        // take its port out of the client's pool (connect() skips bind() owners' ports).
        .args(["serve", "--listen", "127.0.0.1:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("portlab serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line.split_whitespace().last().expect("address").to_string();
    Server {
        child,
        url: format!("http://{addr}/"),
    }
}

fn pool_ns(name: &str) -> NetNs {
    let ns = NetNs::new(name).expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    ns
}

fn load_json(ns: &NetNs, args: &[&str]) -> Value {
    let out = ns
        .command(PORTLAB)
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .expect("runs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn class_count(report: &Value, class: &str) -> u64 {
    report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["class"] == class)
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn exhaustion_is_the_top_finding_and_keep_alive_is_healthy() {
    let ns = pool_ns("diag-drop");
    let server = serve(&ns);
    let report = load_json(
        &ns,
        &[
            "--connection",
            "drop",
            "-n",
            "3000",
            "-c",
            "10",
            &server.url,
        ],
    );
    assert_eq!(class_count(&report, "AddrNotAvailable"), 2000);
    let top = &report["telemetry"]["diagnosis"][0];
    assert_eq!(top["cause"], "port_exhaustion", "{top}");
    let peak = report["telemetry"]["sampler"]["peak"]["time_wait"]
        .as_u64()
        .expect("peak");
    assert!(
        (980..=1000).contains(&peak),
        "TIME_WAIT peak {peak} within 2 % of 1,000"
    );
    let evidence = top["evidence"].to_string();
    assert!(evidence.contains("2,000 of 3,000 requests"), "{evidence}");
    assert!(evidence.contains("peaked at"), "{evidence}");

    // Keep-alive in a fresh namespace (the first one's pool is full of TIME_WAIT for 60 s).
    let ns = pool_ns("diag-ka");
    let server = serve(&ns);
    let report = load_json(
        &ns,
        &[
            "--connection",
            "keep-alive",
            "-n",
            "3000",
            "-c",
            "10",
            &server.url,
        ],
    );
    assert_eq!(report["summary"]["succeeded"], 3000);
    let findings = report["telemetry"]["diagnosis"]
        .as_array()
        .expect("findings");
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["cause"], "healthy");
}

/// A listener with a backlog of 1 whose owner accepts one connection every 50 ms and answers
/// it: SYNs beyond the queue are dropped, clients retransmit them after 1 s. Runs until `stop`
/// is set, 30 s at most.
fn slow_acceptor(stop: Arc<AtomicBool>) -> std::io::Result<(std::thread::JoinHandle<()>, String)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(
        &"127.0.0.1:8080"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
            .into(),
    )?;
    socket.listen(1)?;
    socket.set_nonblocking(true)?;
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr()?;
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50)); // the slowness under test
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                std::thread::spawn(move || answer(&mut stream));
            }
        }
    });
    Ok((handle, format!("http://{addr}/")))
}

fn answer(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

#[test]
fn slow_acceptor_is_listen_queue_overflow_not_exhaustion() {
    let ns = pool_ns("diag-backlog");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop);
    let (acceptor, url) = ns
        .run(move || slow_acceptor(stop_flag))
        .expect("enter netns")
        .expect("listener");
    let report = load_json(
        &ns,
        &[
            "--connection",
            "close",
            "-n",
            "30",
            "-c",
            "30",
            "-t",
            "4s",
            &url,
        ],
    );
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    let findings = report["telemetry"]["diagnosis"]
        .as_array()
        .expect("findings");
    assert_eq!(
        findings[0]["cause"], "listen_queue_overflow",
        "{findings:?}"
    );
    assert!(findings.iter().all(|f| f["cause"] != "port_exhaustion"));
    assert!(
        report["telemetry"]["sampler"]["counters_delta"]["listen_overflows"].as_u64() > Some(0)
    );
}
