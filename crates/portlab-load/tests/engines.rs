//! What only the engine switch decides: connect timeouts and cancellation of connects at the
//! run deadline (SYNs dropped by nftables in a namespace), on both engines; and the automatic
//! fallback to tokio for plans the io_uring engine does not run.

mod common;

use std::time::Duration;

use common::*;
use std::io::Write;

use portlab_load::{ConnectionPolicy, EngineChoice, LoadConfig, Phase, RateLimit};
use portlab_testkit::NetNs;

per_engine!(
    dropped_syns_are_connect_timeouts,
    connects_in_flight_at_the_deadline_are_cancelled,
    a_reset_between_paced_requests_fails_the_next_send_and_the_run_ends
);

/// A namespace whose output hook drops every TCP SYN to port 9: connects hang until timed out.
fn blackhole() -> NetNs {
    let ns = NetNs::new("blackhole").expect("create netns (needs root)");
    ns.exec_checked(&["nft", "add", "table", "inet", "pl"])
        .expect("nft table");
    ns.exec_checked(&[
        "nft",
        "add chain inet pl out { type filter hook output priority 0; }",
    ])
    .expect("nft chain");
    ns.exec_checked(&["nft", "add rule inet pl out tcp dport 9 drop"])
        .expect("nft rule");
    ns
}

fn dropped_syns_are_connect_timeouts() {
    let ns = blackhole();
    let mut cfg = config("http://127.0.0.1:9/", 6, 3, ConnectionPolicy::KeepAlive);
    cfg.connect_timeout = Duration::from_millis(150);
    let report = ns.run(move || run(cfg)).expect("run in the namespace");
    assert_accounted(&report, 6);
    assert_eq!(report.summary.failed, 6);
    assert_eq!(
        errors_of(&report, "ConnectTimeout"),
        6,
        "{:?}",
        report.errors
    );
    let e = &report.errors[0];
    assert_eq!(e.by_phase.values().sum::<u64>(), 6);
    assert_eq!(report.connections.connect_failures, 6);
    // Two rounds of 150 ms per connection slot (6 requests over 3 slots), not 6 × 150 ms.
    assert!(report.summary.elapsed_secs < 2.0, "{:?}", report.summary);
}

fn connects_in_flight_at_the_deadline_are_cancelled() {
    let ns = blackhole();
    let cfg = LoadConfig {
        duration: Some(Duration::from_millis(300)),
        ..config("http://127.0.0.1:9/", 0, 4, ConnectionPolicy::ClientCloses)
    };
    let report = ns.run(move || run(cfg)).expect("run in the namespace");
    let s = &report.summary;
    assert_eq!(s.cancelled_at_deadline, 4, "{s:?}");
    assert_eq!((s.succeeded, s.failed), (0, 0), "{s:?}");
    assert!(s.elapsed_secs < 2.0, "{s:?}");
}

/// Runs `cfg` on a thread of the current namespace; panics when the run outlasts `limit` (a
/// hung engine fails the test instead of hanging the suite).
fn run_within(cfg: LoadConfig, limit: Duration) -> portlab_load::LoadReport {
    let (tx, rx) = std::sync::mpsc::channel();
    // Threads inherit the namespace of the thread that spawns them (and so do the engine's).
    std::thread::spawn(move || {
        let _ = tx.send(run(cfg));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("the load run did not end within {limit:?}: {e}"))
}

/// The hang `portlab reproduce` met on the io_uring engine, in small: a server (in a namespace
/// with `tcp_tw_reuse = 0` and a 40-port pool, as the reproduce sandboxes have) answers the
/// first request of each connection and then resets it, as `portlab proxy` does to its client
/// leg when its upstream connect fails. The paced (`-q`) client finds the reset on its idle
/// kept-alive connection when it sends the next request: that send fails (ECONNRESET/EPIPE).
/// With `IOSQE_CQE_SKIP_SUCCESS` on the send, the failure cancels the linked recv without a
/// completion (`REQ_F_SKIP_LINK_CQES`, io_uring/timeout.c `io_fail_links`); an engine that
/// waits for it never ends the run.
fn a_reset_between_paced_requests_fails_the_next_send_and_the_run_ends() {
    let ns = NetNs::new("rstpace").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40039")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let n = 120;
    // The engine is the test thread's choice: read it here, not on the namespace's thread.
    let engine = engine();
    let report = ns
        .run(move || {
            let server = TestServer::start(|s, _| {
                ok(s);
                // Wait until the response has left before the RST (SO_LINGER 0) goes out.
                let _ = s.flush();
                reset(s)
            });
            let mut cfg = config(&server.url(), n, 6, ConnectionPolicy::KeepAlive);
            cfg.rate = RateLimit::PerWorker { per_sec: 100.0 };
            cfg.engine = engine;
            let report = run_within(cfg, Duration::from_secs(20));
            (
                report,
                server.requests.load(std::sync::atomic::Ordering::SeqCst),
            )
        })
        .expect("run in the namespace");
    let (report, served) = report;
    assert_accounted(&report, n);
    let s = &report.summary;
    // Each connection answers once: successes are the connections the server read a request
    // on, and every other request failed on the reset connection (at write or at read).
    assert!(s.succeeded > 0 && s.failed > 0, "{s:?}");
    assert!(s.succeeded <= served, "{s:?} served {served}");
    // Some of them at the send: the path that hung.
    let at_write: u64 = report
        .errors
        .iter()
        .filter(|e| e.class.name() == "ConnectionReset")
        .filter_map(|e| e.by_phase.get(&Phase::Write))
        .sum();
    assert!(at_write > 0, "{:?}", report.errors);
    assert!(s.elapsed_secs < 10.0, "{s:?}");
}

/// Needs a kernel and a sandbox that allow io_uring (as every `::uring` test does).
#[test]
fn plans_io_uring_does_not_run_fall_back_to_tokio() {
    // h2c (HTTP/2 by prior knowledge) to a refusing port: runs, on tokio, and says why.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = LoadConfig {
        http2: true,
        engine: EngineChoice::Uring,
        ..config(
            &format!("http://127.0.0.1:{port}/"),
            4,
            2,
            ConnectionPolicy::KeepAlive,
        )
    };
    let report = run(cfg);
    assert_accounted(&report, 4);
    assert_eq!(report.settings.engine, "tokio");
    assert_eq!(report.settings.engine_fallback.as_deref(), Some("HTTP/2"));
    // auto: the same fallback, named; and a plain HTTP/1.1 plan runs on io_uring.
    let h2c = |engine| LoadConfig {
        http2: true,
        engine,
        ..config(
            &format!("http://127.0.0.1:{port}/"),
            4,
            2,
            ConnectionPolicy::KeepAlive,
        )
    };
    let report = run(h2c(EngineChoice::Auto));
    assert_eq!(report.settings.engine, "tokio");
    assert_eq!(report.settings.engine_fallback.as_deref(), Some("HTTP/2"));
    let report = run(LoadConfig {
        engine: EngineChoice::Auto,
        ..config(
            &format!("http://127.0.0.1:{port}/"),
            4,
            2,
            ConnectionPolicy::KeepAlive,
        )
    });
    assert_accounted(&report, 4);
    assert_eq!(report.settings.engine, "uring");
    assert_eq!(report.settings.engine_fallback, None);
    let cfg = LoadConfig {
        engine: EngineChoice::Tokio,
        ..config(
            &format!("http://127.0.0.1:{port}/"),
            4,
            2,
            ConnectionPolicy::KeepAlive,
        )
    };
    let report = run(cfg);
    assert_eq!(report.settings.engine, "tokio");
    assert_eq!(report.settings.engine_fallback, None);
}
