//! What only the engine switch decides: connect timeouts and cancellation of connects at the
//! run deadline (SYNs dropped by nftables in a namespace), on both engines; and the automatic
//! fallback to tokio for plans the io_uring engine does not run.

mod common;

use std::time::Duration;

use common::*;
use portlab_load::{ConnectionPolicy, EngineChoice, LoadConfig};
use portlab_testkit::NetNs;

per_engine!(
    dropped_syns_are_connect_timeouts,
    connects_in_flight_at_the_deadline_are_cancelled
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
