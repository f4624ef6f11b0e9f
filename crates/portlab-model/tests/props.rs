//! Invariants of the simulator over random small workloads (proptest).

use std::time::Duration;

use portlab_model::{
    simulate, ConnectionPolicy, Latency, LoadShape, Os, OsProfile, PoolScope, PortRange,
    RetryPolicy, RunLimit, TwReuse, Workload,
};
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = ConnectionPolicy> {
    prop_oneof![
        Just(ConnectionPolicy::KeepAlive),
        Just(ConnectionPolicy::ServerCloses),
        Just(ConnectionPolicy::ClientCloses),
    ]
}

fn latency() -> impl Strategy<Value = Latency> {
    prop_oneof![
        (1u64..5_000).prop_map(|us| Latency::Fixed { us }),
        (1u64..2_000, 0u64..5_000).prop_map(|(min_us, extra)| Latency::Uniform {
            min_us,
            max_us: min_us + extra
        }),
        (1u64..5_000).prop_map(|mean_us| Latency::Exponential { mean_us }),
    ]
}

fn profile() -> impl Strategy<Value = OsProfile> {
    (
        1u16..300,
        prop_oneof![
            Just(TwReuse::Off),
            Just(TwReuse::All),
            Just(TwReuse::LoopbackOnly)
        ],
        prop_oneof![
            Just(PoolScope::Tuple),
            Just(PoolScope::Destination),
            Just(PoolScope::Source),
            Just(PoolScope::Global)
        ],
        1u64..3_000,
        1u64..20,
    )
        .prop_map(|(ports, tw_reuse, scope, delay_ms, tw_secs)| {
            let mut p = OsProfile::preset(Os::Linux);
            p.range = PortRange {
                low: 40000,
                high: 40000 + ports - 1,
            };
            p.tw_reuse = tw_reuse;
            p.scope = scope;
            p.tw_reuse_delay = Duration::from_millis(delay_ms);
            p.time_wait = Duration::from_secs(tw_secs);
            p
        })
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        prop_oneof![
            (1u32..400).prop_map(|concurrency| LoadShape::Closed { concurrency }),
            (1.0f64..20_000.0, any::<bool>()).prop_map(|(rate_per_sec, poisson)| LoadShape::Open {
                rate_per_sec,
                poisson
            }),
        ],
        latency(),
        policy(),
        1u32..4,
        1u32..3,
        any::<bool>(),
        0u32..3,
        0u64..5,
        1u64..500,
        100u64..20_000,
    )
        .prop_map(
            |(
                shape,
                latency,
                policy,
                destinations,
                source_ips,
                loopback,
                retries,
                backoff_ms,
                fail_us,
                n,
            )| {
                Workload {
                    shape,
                    latency,
                    policy,
                    destinations,
                    source_ips,
                    loopback,
                    retry: RetryPolicy {
                        retries,
                        backoff: Duration::from_millis(backoff_ms),
                    },
                    failed_connect: Some(Duration::from_micros(fail_us)),
                    limit: RunLimit {
                        max_attempts: Some(n),
                        duration: Some(Duration::from_secs(30)),
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn attempts_are_conserved_and_pools_never_overflow(p in profile(), w in workload(), seed in any::<u64>()) {
        let r = simulate(&p, &w, seed).expect("valid workload");
        let t = &r.totals;
        prop_assert_eq!(t.successes + t.addr_not_available, t.attempts);
        prop_assert!(t.attempts <= w.limit.max_attempts.unwrap_or(u64::MAX));
        prop_assert!(r.peak_pool_in_use <= r.ports_per_pool);
        let sum_attempts: u64 = r.timeline.iter().map(|s| s.attempts).sum();
        let sum_ok: u64 = r.timeline.iter().map(|s| s.successes).sum();
        let sum_fail: u64 = r.timeline.iter().map(|s| s.addr_not_available).sum();
        prop_assert_eq!((sum_attempts, sum_ok, sum_fail), (t.attempts, t.successes, t.addr_not_available));
        for s in &r.timeline {
            prop_assert!(s.ports_in_use <= u64::from(r.ports_per_pool) * u64::from(r.pools));
            prop_assert!(s.time_wait <= s.ports_in_use);
        }
        prop_assert!(r.peak_time_wait <= u64::from(r.ports_per_pool) * u64::from(r.pools));
        prop_assert!(t.connects <= t.successes);
    }

    #[test]
    fn same_seed_same_run(p in profile(), w in workload(), seed in any::<u64>()) {
        let a = simulate(&p, &w, seed).expect("valid workload");
        let b = simulate(&p, &w, seed).expect("valid workload");
        prop_assert_eq!(&a.totals, &b.totals);
        prop_assert_eq!(&a.timeline, &b.timeline);
        prop_assert_eq!(a.first_failure_secs, b.first_failure_secs);
    }

    #[test]
    fn keep_alive_within_the_pool_never_fails(p in profile(), mut w in workload(), c in 1u32..300, seed in any::<u64>()) {
        // Closed loop, keep-alive, at most `ports` workers in each pool.
        let ports = p.ports_per_pool();
        w.shape = LoadShape::Closed { concurrency: c.min(ports) };
        w.policy = ConnectionPolicy::KeepAlive;
        let r = simulate(&p, &w, seed).expect("valid workload");
        prop_assert_eq!(r.totals.addr_not_available, 0);
    }

    #[test]
    fn widening_the_range_never_adds_failures(
        p in profile(),
        extra in 1u16..300,
        c in 1u32..200,
        latency_us in 1u64..3_000,
        policy in policy(),
        n in 100u64..20_000,
        destinations in 1u32..3,
    ) {
        let mut w = Workload::closed(c, Latency::Fixed { us: latency_us }, policy).with_max_attempts(n);
        w.destinations = destinations;
        w.failed_connect = Some(Duration::from_micros(50));
        let mut wider = p.clone();
        wider.range.high = p.range.high + extra;
        let narrow = simulate(&p, &w, 1).expect("valid workload");
        let wide = simulate(&wider, &w, 1).expect("valid workload");
        prop_assert!(
            wide.totals.addr_not_available <= narrow.totals.addr_not_available,
            "narrow {:?} wide {:?}", narrow.totals, wide.totals
        );
    }
}
