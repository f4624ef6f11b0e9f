//! The simulator against answers worked out by hand, and against the kernel experiments of
//! research §1.7.

use std::time::Duration;

use portlab_model::{
    capacity, failed_connect_estimate, simulate, CapacityQuery, ConnectionPolicy, Latency, Os,
    OsProfile, PortRange, RetryPolicy, SimReport, TimeWaitCap, TwReuse, Workload,
};

fn linux(ports: u16, reuse: TwReuse) -> OsProfile {
    let mut p = OsProfile::preset(Os::Linux);
    p.range = PortRange::new(40000, 40000 + ports - 1).expect("valid range");
    p.tw_reuse = reuse;
    p
}

fn ms(n: u64) -> Latency {
    Latency::fixed(Duration::from_millis(n))
}

fn run(p: &OsProfile, w: &Workload) -> SimReport {
    simulate(p, w, 7).expect("valid workload")
}

fn close_to(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn one_worker_drop_1000_ports_gives_1000_successes_then_failures() {
    let w = Workload::closed(1, ms(1), ConnectionPolicy::ClientCloses).with_max_attempts(3000);
    let r = run(&linux(1000, TwReuse::Off), &w);
    assert_eq!(r.totals.attempts, 3000);
    assert_eq!(r.totals.successes, 1000);
    assert_eq!(r.totals.addr_not_available, 2000);
    assert_eq!(r.first_failure_secs, Some(1.0));
    assert_eq!(r.peak_time_wait, 1000);
    assert_eq!(r.peak_pool_in_use, 1000);
}

#[test]
fn lockstep_workers_fail_after_floor_ports_over_c_rounds() {
    let w = Workload::closed(3, ms(2), ConnectionPolicy::ClientCloses).with_max_attempts(1200);
    let r = run(&linux(1000, TwReuse::Off), &w);
    assert_eq!(r.totals.successes, 1000);
    // 333 full rounds of 3 connects, 2 ms each; the 334th round has one port left.
    assert_eq!(r.first_failure_secs, Some(0.666));
    let c = capacity(
        &linux(1000, TwReuse::Off),
        &CapacityQuery::from_workload(&w),
    );
    let predicted = c.churn.and_then(|ch| ch.time_to_exhaustion_secs);
    assert_eq!(predicted.map(|t| (t * 1e6).round() / 1e6), Some(0.666));
}

#[test]
fn tw_reuse_1_sustains_ports_per_reuse_delay() {
    // Research §1.7 C2/C3: with tcp_tw_reuse=1 the rate is ports / tcp_tw_reuse_delay.
    let mut p = linux(1000, TwReuse::All);
    p.tw_reuse_delay = Duration::from_millis(1000);
    let w = Workload::closed(1, ms(1), ConnectionPolicy::ClientCloses)
        .with_duration(Duration::from_secs(10));
    let r = run(&p, &w);
    // Each port cycles every 1 s + 1 ms: about 999 successes per second.
    assert!(
        r.totals.successes > 9_900 && r.totals.successes <= 10_000,
        "{:?}",
        r.totals
    );
    assert_eq!(r.totals.time_wait_recycled, r.totals.successes - 1000);
    assert_eq!(r.first_failure_secs, Some(1.0));
    let last = r.timeline.last().map_or(0, |s| s.successes);
    assert!((990..=1000).contains(&last), "{last}");
}

#[test]
fn tw_reuse_2_applies_only_on_loopback() {
    let p = linux(100, TwReuse::LoopbackOnly);
    let mut w = Workload::closed(1, ms(1), ConnectionPolicy::ClientCloses)
        .with_duration(Duration::from_secs(5));
    let off_loopback = run(&p, &w);
    w.loopback = true;
    let on_loopback = run(&p, &w);
    assert_eq!(off_loopback.totals.successes, 100);
    assert!(
        on_loopback.totals.successes > 450,
        "{:?}",
        on_loopback.totals
    );
}

#[test]
fn server_closes_and_keep_alive_never_fail_within_the_pool() {
    for policy in [ConnectionPolicy::ServerCloses, ConnectionPolicy::KeepAlive] {
        let w = Workload::closed(100, ms(1), policy).with_max_attempts(200_000);
        let r = run(&linux(100, TwReuse::Off), &w);
        assert_eq!(r.totals.addr_not_available, 0, "{policy}");
        assert_eq!(r.totals.successes, 200_000, "{policy}");
        assert_eq!(r.peak_time_wait, 0, "{policy}");
    }
    let w = Workload::closed(100, ms(1), ConnectionPolicy::KeepAlive).with_max_attempts(200_000);
    assert_eq!(run(&linux(100, TwReuse::Off), &w).totals.connects, 100);
}

#[test]
fn keep_alive_beyond_the_pool_fails_the_extra_workers() {
    let w = Workload::closed(12, ms(1), ConnectionPolicy::KeepAlive)
        .with_duration(Duration::from_secs(1));
    let r = run(&linux(10, TwReuse::Off), &w);
    assert_eq!(r.totals.connects, 10);
    assert_eq!(r.totals.successes, 10 * 1000);
    assert_eq!(r.first_failure_secs, Some(0.0));
}

#[test]
fn open_loop_exhausts_at_ports_over_rate_and_recovers_after_time_wait() {
    let w = Workload::open(10.0, ms(1), ConnectionPolicy::ClientCloses)
        .with_duration(Duration::from_secs(600));
    let r = run(&linux(100, TwReuse::Off), &w);
    assert_eq!(r.first_failure_secs, Some(10.0));
    assert_eq!(r.totals.attempts, 6000);
    // 100 ports in the first 10 s, then 100 per 60 s (+1 ms) from t = 60 s.
    let expected = 100.0 + 540.0 * 100.0 / 60.001;
    assert!(
        close_to(r.totals.successes as f64, expected, 0.02 * expected),
        "{} vs {expected}",
        r.totals.successes
    );
    let c = capacity(&linux(100, TwReuse::Off), &CapacityQuery::from_workload(&w));
    let ch = c.churn.expect("churn");
    assert_eq!(ch.time_to_exhaustion_secs, Some(10.0));
    // Steady state 1 - (100 / 60.001) / 10.
    assert!(close_to(ch.steady_state_failure_fraction, 0.8333, 1e-3));
}

#[test]
fn tuple_scope_multiplies_pools_and_global_scope_does_not() {
    let mut w = Workload::closed(2, ms(1), ConnectionPolicy::ClientCloses).with_max_attempts(1000);
    w.destinations = 2;
    let tuple = run(&linux(100, TwReuse::Off), &w);
    assert_eq!((tuple.pools, tuple.totals.successes), (2, 200));
    let mut windows = OsProfile::preset(Os::Windows);
    windows.range = PortRange::new(50000, 50099).expect("valid range");
    let global = run(&windows, &w);
    assert_eq!((global.pools, global.totals.successes), (1, 100));
}

#[test]
fn linux_max_tw_buckets_overflow_frees_ports_like_experiment_d1() {
    // Research §1.7 D1: tcp_max_tw_buckets=3, 10 ports, 50 cycles: all succeed, 3 TIME_WAIT.
    let mut p = linux(10, TwReuse::Off);
    p.time_wait_cap = TimeWaitCap::Overflow(3);
    let w = Workload::closed(1, ms(1), ConnectionPolicy::ClientCloses).with_max_attempts(50);
    let r = run(&p, &w);
    assert_eq!(r.totals.successes, 50);
    assert_eq!(r.peak_time_wait, 3);
    assert_eq!(r.totals.time_wait_overflow, 47);
}

#[test]
fn freebsd_evicts_the_oldest_time_wait_instead_of_failing() {
    let mut p = OsProfile::preset(Os::Freebsd);
    p.range = PortRange::new(40000, 40009).expect("valid range");
    p.time_wait_cap = TimeWaitCap::EvictOldest(5);
    let w = Workload::closed(1, ms(1), ConnectionPolicy::ClientCloses).with_max_attempts(40);
    let r = run(&p, &w);
    assert_eq!(r.totals.successes, 40);
    assert_eq!(r.totals.time_wait_evicted, 35);
    assert_eq!(r.peak_time_wait, 5);
}

#[test]
fn retries_with_backoff_count_every_attempt_once() {
    let mut w = Workload::closed(1, ms(1), ConnectionPolicy::ClientCloses).with_max_attempts(16);
    w.retry = RetryPolicy {
        retries: 2,
        backoff: Duration::from_millis(10),
    };
    w.failed_connect = Some(Duration::from_micros(100));
    let r = run(&linux(10, TwReuse::Off), &w);
    assert_eq!(r.totals.successes, 10);
    assert_eq!(r.totals.addr_not_available, 6);
    assert_eq!(r.totals.requests_failed, 2);
    assert_eq!(r.first_failure_secs, Some(0.01));
    // Request 1: fail at 10 ms, retry after 0.1 + 10 ms, then after 0.1 + 20 ms, then a new
    // request 0.1 ms later: the sixth failure is at 10 + 2 * (30.2 + 0.1) - 0.1 ms.
    assert!(close_to(r.elapsed_secs, 0.0705, 1e-6), "{}", r.elapsed_secs);
}

#[test]
fn failed_connect_estimate_matches_the_measurement_at_1000_ports() {
    assert_eq!(failed_connect_estimate(1000), Duration::from_micros(130));
}

#[test]
fn duration_limit_stops_attempts_and_timeline_covers_it() {
    let w = Workload::open(100.0, ms(5), ConnectionPolicy::ServerCloses)
        .with_duration(Duration::from_secs(3));
    let r = run(&linux(1000, TwReuse::Off), &w);
    assert_eq!(r.totals.attempts, 300);
    assert_eq!(r.timeline.len(), 3);
    assert!(r.timeline.iter().all(|s| s.attempts == 100));
    assert_eq!(r.elapsed_secs, 3.0);
}
