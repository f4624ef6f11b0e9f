//! Pacing (`-q` per worker, `--rate` global with coordinated-omission correction) and
//! `--source-ip` round-robin over local addresses.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

per_engine!(
    global_rate_paces_the_whole_run,
    coordinated_omission_is_corrected_under_a_stall,
    per_worker_qps_limits_each_worker,
    source_ips_are_used_round_robin
);
use portlab_load::{ConnectionPolicy, RateLimit};

fn global_rate_paces_the_whole_run() {
    let server = TestServer::start(|s, _| ok(s));
    let mut cfg = config(&server.url(), 300, 4, ConnectionPolicy::KeepAlive);
    cfg.rate = RateLimit::Global { per_sec: 1000.0 };
    let report = run(cfg);
    assert_accounted(&report, 300);
    // 300 requests at 1,000/s: the last is scheduled at 299 ms.
    let secs = report.summary.elapsed_secs;
    assert!((0.28..1.5).contains(&secs), "elapsed {secs}");
    assert!(report.latency.corrected_for_coordinated_omission);
}

fn coordinated_omission_is_corrected_under_a_stall() {
    // One connection; the 5th response is delayed 300 ms. At 200 requests/s the requests
    // scheduled during the stall queue behind it; measured from their intended send times,
    // many of them must show the stall (an uncorrected client would show one slow request).
    let server = TestServer::start(|s, n| {
        if n == 5 {
            std::thread::sleep(Duration::from_millis(300));
        }
        ok(s)
    });
    let mut cfg = config(&server.url(), 100, 1, ConnectionPolicy::KeepAlive);
    cfg.threads = 1;
    cfg.rate = RateLimit::Global { per_sec: 200.0 };
    let report = run(cfg);
    assert_accounted(&report, 100);
    // 60 requests are due during the 300 ms stall; at least a quarter of them wait > 100 ms.
    assert!(
        report.latency.p90_us > 100_000,
        "p90 {} µs",
        report.latency.p90_us
    );
}

fn per_worker_qps_limits_each_worker() {
    let server = TestServer::start(|s, _| ok(s));
    let mut cfg = config(&server.url(), 40, 2, ConnectionPolicy::KeepAlive);
    cfg.rate = RateLimit::PerWorker { per_sec: 50.0 };
    let report = run(cfg);
    assert_accounted(&report, 40);
    // Each of 2 workers sends 20 requests at 50/s: the last at 380 ms.
    let secs = report.summary.elapsed_secs;
    assert!((0.36..2.0).contains(&secs), "elapsed {secs}");
    assert!(!report.latency.corrected_for_coordinated_omission);
}

fn source_ips_are_used_round_robin() {
    let peers: Arc<Mutex<Vec<IpAddr>>> = Arc::default();
    let seen = peers.clone();
    let server = TestServer::start(move |s, _| {
        if let Ok(peer) = s.peer_addr() {
            if let Ok(mut v) = seen.lock() {
                v.push(peer.ip());
            }
        }
        ok(s)
    });
    let a: IpAddr = "127.0.0.1".parse().expect("ip");
    let b: IpAddr = "127.0.0.2".parse().expect("ip");
    let mut cfg = config(&server.url(), 40, 1, ConnectionPolicy::ClientCloses);
    cfg.threads = 1;
    cfg.source_ips = vec![a, b];
    let report = run(cfg);
    assert_accounted(&report, 40);
    assert_eq!(report.summary.succeeded, 40, "{:?}", report.errors);
    let peers = peers.lock().expect("lock");
    assert_eq!(peers.iter().filter(|ip| **ip == a).count(), 20);
    assert_eq!(peers.iter().filter(|ip| **ip == b).count(), 20);
}
