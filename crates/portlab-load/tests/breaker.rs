//! The circuit breaker against a pool that runs out: in a namespace made by the test with 100
//! ephemeral ports and `tcp_tw_reuse = 0`, a load whose client closes first gets exactly 100
//! answers; then connect() fails with EADDRNOTAVAIL until the breaker opens, and the rest of
//! the requests are short-circuited without touching the pool. Every request is counted once
//! (`requests = succeeded + failed + short_circuited`), every network attempt once
//! (`allowed + probes = succeeded + failed + retries`). Needs root and iproute2.

mod common;

use std::time::Duration;

use common::{assert_accounted, config, errors_of, ok, run, TestServer};

per_engine!(
    the_breaker_spares_the_exhausted_pool_and_counts_exactly,
    retries_with_a_breaker_count_every_attempt_once,
    without_a_breaker_every_request_hits_the_pool
);
use portlab_load::{BreakerConfig, ConnectionPolicy, LoadReport, RateLimit};
use portlab_testkit::NetNs;

const PORTS: u64 = 100;

fn pool_namespace(prefix: &str) -> NetNs {
    let ns = NetNs::new(prefix).expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    ns
}

/// Runs `n` requests with the client closing first, in a fresh 100-port namespace; returns
/// the report and the ports connect() can use (the test server's own port, bound to port 0,
/// comes from the same range and is then off limits to connect()).
fn exhaust(
    prefix: &str,
    n: u64,
    edit: impl FnOnce(&mut portlab_load::LoadConfig) + Send + 'static,
) -> (LoadReport, u64) {
    let ns = pool_namespace(prefix);
    // The engine is the test thread's choice: read it here, not on the namespace's thread.
    let engine = common::engine();
    ns.run(move || {
        let server = TestServer::start(|s, _| ok(s));
        let listener_in_range = (40000..=40099).contains(&server.addr.port());
        let mut cfg = config(&server.url(), n, 4, ConnectionPolicy::ClientCloses);
        cfg.engine = engine;
        edit(&mut cfg);
        (run(cfg), PORTS - u64::from(listener_in_range))
    })
    .expect("run in the namespace")
}

fn network_attempts(r: &LoadReport) -> u64 {
    let c = r.circuit_breaker.as_ref().expect("breaker report").counters;
    c.allowed + c.probes
}

fn the_breaker_spares_the_exhausted_pool_and_counts_exactly() {
    let n = 2000;
    let (r, usable) = exhaust("brk", n, |c| {
        c.circuit_breaker = Some(
            BreakerConfig::parse("ratio=0.5,window=10s,min=10,open=10s,probes=1").expect("spec"),
        );
    });
    assert_accounted(&r, n);
    let s = &r.summary;
    // The pool gives exactly its 100 ports, then nothing for 60 s.
    assert_eq!(s.succeeded, usable, "{s:?}");
    assert_eq!(errors_of(&r, "AddrNotAvailable"), s.failed);
    assert!(s.short_circuited > 0, "{s:?}");
    let c = r.circuit_breaker.as_ref().expect("breaker").counters;
    assert!(c.opened >= 1, "{c:?}");
    // Each of the engine's threads opens once its window holds as many failures as
    // successes: at most about 100 failed connects instead of 1,900.
    assert!(s.failed <= usable + 20, "{s:?}");
    assert_eq!(network_attempts(&r), s.succeeded + s.failed);
    assert_eq!(c.short_circuited, s.short_circuited);
}

fn retries_with_a_breaker_count_every_attempt_once() {
    let n = 600;
    let (r, usable) = exhaust("brkr", n, |c| {
        c.retries = 2;
        c.backoff = Duration::from_millis(1);
        c.rate = RateLimit::PerWorker { per_sec: 500.0 };
        c.circuit_breaker = Some(
            BreakerConfig::parse("ratio=0.5,window=10s,min=10,open=50ms,probes=2").expect("spec"),
        );
    });
    assert_accounted(&r, n);
    let s = &r.summary;
    assert_eq!(s.succeeded, usable, "{s:?}");
    assert!(r.retries.attempts > 0, "{:?}", r.retries);
    // Every network attempt ended once: a success, a final failure or a retried failure.
    assert_eq!(
        network_attempts(&r),
        s.succeeded + s.failed + r.retries.attempts,
        "{s:?} {:?} {:?}",
        r.retries,
        r.circuit_breaker
    );
    // With a 50 ms open interval the breaker probed and, the pool still empty, reopened.
    let c = r.circuit_breaker.as_ref().expect("breaker").counters;
    assert!(c.opened >= 2 && c.probes >= 1 && c.closed == 0, "{c:?}");
}

fn without_a_breaker_every_request_hits_the_pool() {
    let n = 600;
    let (r, usable) = exhaust("nobrk", n, |_| {});
    assert_accounted(&r, n);
    assert_eq!(r.summary.succeeded, usable);
    assert_eq!(r.summary.failed, n - usable);
    assert_eq!(r.summary.short_circuited, 0);
    assert!(r.circuit_breaker.is_none());
}
