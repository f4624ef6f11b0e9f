//! Exact accounting against misbehaving servers: with -n N, succeeded + failed = N whatever the
//! server does (dies mid-run, resets, answers garbage, stalls past the timeout), and each
//! failure lands in the right class.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

per_engine!(
    server_dying_mid_run_is_counted_exactly,
    connection_refused_counts_every_slot,
    resets_are_classified_and_counted,
    garbage_responses_are_protocol_errors,
    truncated_body_is_a_protocol_error,
    stalls_past_timeout_are_response_timeouts,
    duration_mode_reports_in_flight_requests_as_cancelled,
    retries_are_reported_apart_from_first_attempts
);
use portlab_load::{ConnectionPolicy, LoadConfig};

fn server_dying_mid_run_is_counted_exactly() {
    // Answers 300 requests; requests after that are held unanswered until the test has closed
    // the listener, then their connections are closed without a response. Every later connect
    // is refused. Holding the requests makes the order deterministic.
    let dead = Arc::new(AtomicBool::new(false));
    let dead_in_server = dead.clone();
    let mut server = TestServer::start(move |s, n| {
        if n < 300 {
            return ok(s);
        }
        let end = Instant::now() + Duration::from_secs(10);
        while !dead_in_server.load(Ordering::SeqCst) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let url = server.url();
    let requests = server.requests.clone();
    // Built here: the runner thread does not see this test's engine choice.
    let cfg = config(&url, 2000, 4, ConnectionPolicy::ClientCloses);
    let runner = std::thread::spawn(move || run(cfg));
    let deadline = Instant::now() + Duration::from_secs(20);
    while requests.load(Ordering::SeqCst) <= 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    server.stop();
    dead.store(true, Ordering::SeqCst);
    let report = runner.join().expect("runner");
    assert_accounted(&report, 2000);
    assert_eq!(report.summary.succeeded, 300, "{:?}", report.summary);
    assert!(errors_of(&report, "Protocol") >= 1, "{:?}", report.errors);
    assert!(
        errors_of(&report, "ConnectionRefused") >= 1500,
        "{:?}",
        report.errors
    );
}

fn connection_refused_counts_every_slot() {
    // Bind then drop a listener: its port refuses connections.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let report = run(config(
        &format!("http://127.0.0.1:{port}/"),
        500,
        5,
        ConnectionPolicy::KeepAlive,
    ));
    assert_accounted(&report, 500);
    assert_eq!(report.summary.failed, 500);
    assert_eq!(errors_of(&report, "ConnectionRefused"), 500);
    let e = &report.errors[0];
    assert_eq!(e.errno_name, "ECONNREFUSED");
    assert_eq!(e.by_phase.values().sum::<u64>(), 500);
    assert_eq!(report.connections.connect_failures, 500);
}

fn resets_are_classified_and_counted() {
    // Every third request is answered with a RST instead of a response.
    let server = TestServer::start(|s, n| if n % 3 == 2 { reset(s) } else { ok(s) });
    let report = run(config(&server.url(), 900, 3, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 900);
    assert_eq!(report.summary.failed, 300, "{:?}", report.errors);
    let resets = errors_of(&report, "ConnectionReset") + errors_of(&report, "Protocol");
    assert_eq!(resets, 300, "{:?}", report.errors);
    assert!(errors_of(&report, "ConnectionReset") > 0);
}

fn garbage_responses_are_protocol_errors() {
    let server = TestServer::start(|s, _| {
        let _ = s.write_all(b"this is not http at all\r\n\r\n");
        false
    });
    let report = run(config(&server.url(), 200, 4, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 200);
    assert_eq!(errors_of(&report, "Protocol"), 200, "{:?}", report.errors);
}

fn truncated_body_is_a_protocol_error() {
    let server = TestServer::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
        false
    });
    let report = run(config(&server.url(), 50, 2, ConnectionPolicy::KeepAlive));
    assert_accounted(&report, 50);
    assert_eq!(errors_of(&report, "Protocol"), 50);
}

fn stalls_past_timeout_are_response_timeouts() {
    // Every other request gets no answer; the connection stays open until the client gives up.
    let server = TestServer::start(|s, n| {
        if n % 2 == 1 {
            // Hold the connection: wait for the client to close it (read returns 0 or error).
            let mut buf = [0u8; 64];
            let _ = std::io::Read::read(s, &mut buf);
            false
        } else {
            ok(s)
        }
    });
    let mut cfg = config(&server.url(), 40, 4, ConnectionPolicy::KeepAlive);
    cfg.request_timeout = Duration::from_millis(200);
    let report = run(cfg);
    assert_accounted(&report, 40);
    assert_eq!(errors_of(&report, "ResponseTimeout"), report.summary.failed);
    assert!(report.summary.failed >= 10, "{:?}", report.summary);
}

fn duration_mode_reports_in_flight_requests_as_cancelled() {
    // The server never answers: every request is in flight when the 300 ms deadline comes.
    let server = TestServer::start(|s, _| {
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(s, &mut buf);
        false
    });
    let cfg = LoadConfig {
        duration: Some(Duration::from_millis(300)),
        ..config(&server.url(), 0, 6, ConnectionPolicy::KeepAlive)
    };
    let report = run(cfg);
    let s = &report.summary;
    assert_eq!(s.cancelled_at_deadline, 6, "{s:?}");
    assert_eq!((s.succeeded, s.failed), (0, 0));
    assert_eq!(s.requests, 6);
    assert!(s.elapsed_secs < 2.0);
}

fn retries_are_reported_apart_from_first_attempts() {
    // Even-numbered requests are reset; with one retry every request ends in success.
    let server = TestServer::start(|s, n| if n % 2 == 0 { reset(s) } else { ok(s) });
    let mut cfg = config(&server.url(), 100, 1, ConnectionPolicy::ClientCloses);
    cfg.retries = 1;
    cfg.backoff = Duration::from_millis(1);
    cfg.threads = 1;
    let report = run(cfg);
    assert_accounted(&report, 100);
    assert_eq!(report.summary.succeeded, 100);
    assert_eq!(report.retries.attempts, 100);
    assert_eq!(report.retries.succeeded, 100);
    let retried: u64 = report.retries.retried_errors.iter().map(|e| e.count).sum();
    assert_eq!(retried, 100);
}
