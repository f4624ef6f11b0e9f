//! Scenario files: one TOML per case under `tests/scenarios/`, with the profile, the workload
//! and the expected results. Every expected field that is present must match.

use std::path::Path;
use std::time::Duration;

use portlab_model::{
    capacity, simulate, CapacityQuery, ConnectionPolicy, Latency, LoadShape, Os, OsProfile,
    PoolScope, RetryPolicy, RunLimit, TimeWaitCap, TwReuse, Workload,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    profile: ProfileSpec,
    workload: WorkloadSpec,
    #[serde(default)]
    expected: Expected,
    #[serde(default)]
    expected_capacity: ExpectedCapacity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSpec {
    os: String,
    range: Option<String>,
    time_wait_secs: Option<f64>,
    tw_reuse: Option<u8>,
    tw_reuse_delay_ms: Option<u64>,
    scope: Option<String>,
    reserved_ports: Option<u32>,
    max_tw_buckets: Option<u64>,
    maxtcptw: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadSpec {
    concurrency: Option<u32>,
    rate_per_sec: Option<f64>,
    latency_us: u64,
    connection: String,
    #[serde(default = "one")]
    destinations: u32,
    #[serde(default = "one")]
    source_ips: u32,
    #[serde(default)]
    loopback: bool,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    backoff_ms: u64,
    failed_connect_us: Option<u64>,
    requests: Option<u64>,
    duration_secs: Option<u64>,
    #[serde(default = "one_u64")]
    seed: u64,
}

fn one() -> u32 {
    1
}

fn one_u64() -> u64 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    attempts: Option<u64>,
    successes: Option<u64>,
    addr_not_available: Option<u64>,
    connects: Option<u64>,
    requests_failed: Option<u64>,
    time_wait_recycled: Option<u64>,
    time_wait_overflow: Option<u64>,
    time_wait_evicted: Option<u64>,
    first_failure_secs: Option<f64>,
    no_failure: Option<bool>,
    peak_time_wait: Option<u64>,
    peak_pool_in_use: Option<u32>,
    pools: Option<u32>,
    elapsed_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedCapacity {
    ports_per_pool: Option<u32>,
    pools: Option<u32>,
    folk_rate_per_sec: Option<f64>,
    sustainable_total_per_sec: Option<f64>,
    not_limited_by_time_wait: Option<bool>,
    time_to_exhaustion_secs: Option<f64>,
    steady_state_failure_fraction: Option<f64>,
    differences: Option<Vec<String>>,
}

fn profile_of(spec: &ProfileSpec) -> OsProfile {
    let os: Os = spec.os.parse().expect("os");
    let mut p = OsProfile::preset(os);
    if let Some(r) = &spec.range {
        p.range = r.parse().expect("range");
    }
    if let Some(t) = spec.time_wait_secs {
        p.time_wait = Duration::from_secs_f64(t);
    }
    if let Some(v) = spec.tw_reuse {
        p.tw_reuse = TwReuse::from_sysctl(v).expect("tw_reuse");
    }
    if let Some(ms) = spec.tw_reuse_delay_ms {
        p.tw_reuse_delay = Duration::from_millis(ms);
    }
    if let Some(s) = &spec.scope {
        p.scope = match s.as_str() {
            "tuple" => PoolScope::Tuple,
            "destination" => PoolScope::Destination,
            "source" => PoolScope::Source,
            "global" => PoolScope::Global,
            other => panic!("unknown scope {other}"),
        };
    }
    if let Some(n) = spec.reserved_ports {
        p.reserved_ports = n;
    }
    if let Some(cap) = spec.max_tw_buckets {
        p.time_wait_cap = TimeWaitCap::Overflow(cap);
    }
    if let Some(cap) = spec.maxtcptw {
        p.time_wait_cap = TimeWaitCap::EvictOldest(cap);
    }
    p
}

fn workload_of(spec: &WorkloadSpec) -> Workload {
    let shape = match (spec.concurrency, spec.rate_per_sec) {
        (Some(concurrency), None) => LoadShape::Closed { concurrency },
        (None, Some(rate_per_sec)) => LoadShape::Open {
            rate_per_sec,
            poisson: false,
        },
        _ => panic!("give exactly one of concurrency and rate_per_sec"),
    };
    Workload {
        shape,
        latency: Latency::Fixed {
            us: spec.latency_us,
        },
        policy: spec
            .connection
            .parse::<ConnectionPolicy>()
            .expect("connection"),
        destinations: spec.destinations,
        source_ips: spec.source_ips,
        loopback: spec.loopback,
        retry: RetryPolicy {
            retries: spec.retries,
            backoff: Duration::from_millis(spec.backoff_ms),
        },
        failed_connect: spec.failed_connect_us.map(Duration::from_micros),
        limit: RunLimit {
            max_attempts: spec.requests,
            duration: spec.duration_secs.map(Duration::from_secs),
        },
    }
}

fn check_f64(name: &str, file: &str, expected: Option<f64>, got: Option<f64>) {
    if let Some(e) = expected {
        let g = got.unwrap_or_else(|| panic!("{file}: {name}: expected {e}, got none"));
        assert!(
            (e - g).abs() <= 1e-6 * e.abs().max(1.0),
            "{file}: {name}: expected {e}, got {g}"
        );
    }
}

fn check_eq<T: PartialEq + std::fmt::Debug>(name: &str, file: &str, expected: Option<T>, got: T) {
    if let Some(e) = expected {
        assert_eq!(e, got, "{file}: {name}");
    }
}

fn run_scenario(path: &Path) {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).expect("read scenario");
    let sc: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(!sc.description.is_empty(), "{file}: description");
    let profile = profile_of(&sc.profile);
    let workload = workload_of(&sc.workload);

    let e = &sc.expected;
    if workload.limit.max_attempts.is_some() || workload.limit.duration.is_some() {
        let r = simulate(&profile, &workload, sc.workload.seed).expect("simulate");
        let t = &r.totals;
        check_eq("attempts", &file, e.attempts, t.attempts);
        check_eq("successes", &file, e.successes, t.successes);
        check_eq(
            "addr_not_available",
            &file,
            e.addr_not_available,
            t.addr_not_available,
        );
        check_eq("connects", &file, e.connects, t.connects);
        check_eq(
            "requests_failed",
            &file,
            e.requests_failed,
            t.requests_failed,
        );
        check_eq(
            "time_wait_recycled",
            &file,
            e.time_wait_recycled,
            t.time_wait_recycled,
        );
        check_eq(
            "time_wait_overflow",
            &file,
            e.time_wait_overflow,
            t.time_wait_overflow,
        );
        check_eq(
            "time_wait_evicted",
            &file,
            e.time_wait_evicted,
            t.time_wait_evicted,
        );
        check_f64(
            "first_failure_secs",
            &file,
            e.first_failure_secs,
            r.first_failure_secs,
        );
        if e.no_failure == Some(true) {
            assert_eq!(r.first_failure_secs, None, "{file}: no_failure");
        }
        check_eq("peak_time_wait", &file, e.peak_time_wait, r.peak_time_wait);
        check_eq(
            "peak_pool_in_use",
            &file,
            e.peak_pool_in_use,
            r.peak_pool_in_use,
        );
        check_eq("pools", &file, e.pools, r.pools);
        check_f64("elapsed_secs", &file, e.elapsed_secs, Some(r.elapsed_secs));
    }

    let ec = &sc.expected_capacity;
    let c = capacity(&profile, &CapacityQuery::from_workload(&workload));
    check_eq(
        "capacity.ports_per_pool",
        &file,
        ec.ports_per_pool,
        c.ports_per_pool,
    );
    check_eq("capacity.pools", &file, ec.pools, c.pools);
    check_f64(
        "capacity.folk_rate_per_sec",
        &file,
        ec.folk_rate_per_sec,
        Some(c.folk.rate_per_sec),
    );
    check_f64(
        "capacity.sustainable_total_per_sec",
        &file,
        ec.sustainable_total_per_sec,
        c.sustainable_total_per_sec,
    );
    if ec.not_limited_by_time_wait == Some(true) {
        assert_eq!(
            c.sustainable_total_per_sec, None,
            "{file}: not_limited_by_time_wait"
        );
    }
    let churn = c.churn.as_ref();
    check_f64(
        "capacity.time_to_exhaustion_secs",
        &file,
        ec.time_to_exhaustion_secs,
        churn.and_then(|ch| ch.time_to_exhaustion_secs),
    );
    check_f64(
        "capacity.steady_state_failure_fraction",
        &file,
        ec.steady_state_failure_fraction,
        churn.map(|ch| ch.steady_state_failure_fraction),
    );
    if let Some(codes) = &ec.differences {
        let got: Vec<String> = c.differences.iter().map(|d| d.code.to_string()).collect();
        assert_eq!(codes, &got, "{file}: differences");
    }
}

#[test]
fn every_scenario_file_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenario directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 8,
        "expected at least 8 scenarios, found {}",
        paths.len()
    );
    for path in &paths {
        run_scenario(path);
    }
}
