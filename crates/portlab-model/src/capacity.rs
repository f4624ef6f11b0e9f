//! Capacity arithmetic: ports per pool, sustainable new connections per second, number of
//! pools, and — for a given churn — time until a pool is exhausted and the steady-state
//! failure fraction. Also the folk formula `ports / TIME_WAIT` beside the refined answer, with
//! the reasons they differ.
//!
//! The closed forms assume the workload spreads evenly over its (source IP, destination) pairs
//! and use the busiest pool for the time to exhaustion. The simulator ([`crate::simulate`])
//! gives exact answers for latency distributions, retries and small runs.

use std::time::Duration;

use serde::Serialize;

use crate::profile::{OsProfile, TimeWaitCap};
use crate::workload::{ConnectionPolicy, LoadShape, Workload};

/// What to compute a capacity for: the layout of the client and, optionally, its churn.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityQuery {
    /// Distinct source IPs.
    pub source_ips: u32,
    /// Distinct destinations (IP, port).
    pub destinations: u32,
    /// Destinations on loopback (for `tcp_tw_reuse = 2` and FreeBSD `nolocaltimewait`).
    pub loopback: bool,
    /// Who closes.
    pub policy: ConnectionPolicy,
    /// The churn, when known (`--rate`, or `-c` with a latency).
    pub churn: Option<Workload>,
}

impl CapacityQuery {
    /// The layout and churn of a workload.
    pub fn from_workload(w: &Workload) -> Self {
        Self {
            source_ips: w.source_ips,
            destinations: w.destinations,
            loopback: w.loopback,
            policy: w.policy,
            churn: Some(w.clone()),
        }
    }
}

/// The folk formula from the seed notes: `max_rate = ports / TIME_WAIT`, one pool per host.
#[derive(Debug, Clone, Serialize)]
pub struct FolkFormula {
    /// Ports in the range.
    pub ports: u32,
    /// TIME_WAIT length, seconds.
    pub time_wait_secs: f64,
    /// `ports / time_wait_secs`, new connections per second.
    pub rate_per_sec: f64,
}

/// How long one connection keeps its client port under the query's policy.
#[derive(Debug, Clone, Serialize)]
pub struct PortHold {
    /// While the connection is open (mean request latency; 0 when no churn is given).
    pub open_secs: f64,
    /// After the client closes: TIME_WAIT length, the reuse delay when takeover applies, or 0
    /// when the server closes first (or no TIME_WAIT is kept).
    pub after_close_secs: f64,
    /// Sum of the two.
    pub total_secs: f64,
}

/// The outcome of a given churn.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnOutcome {
    /// New connections (or requests, with keep-alive) per second the workload asks for in
    /// total when nothing fails.
    pub offered_per_sec: f64,
    /// The same for the busiest pool.
    pub offered_per_pool_per_sec: f64,
    /// Ports the busiest pool would need in steady state (open + held after close).
    pub ports_needed_per_pool: f64,
    /// Whether the busiest pool runs out of ports.
    pub exhausts: bool,
    /// Seconds from the start until the first EADDRNOTAVAIL, if the pool runs out.
    pub time_to_exhaustion_secs: Option<f64>,
    /// Fraction of connect attempts failing once the run is in steady state (0..1).
    /// In a closed loop, failed attempts return at once and the worker tries again, so this
    /// fraction depends on `failed_connect` and the retry backoff.
    pub steady_state_failure_fraction: f64,
    /// Successful requests per second in steady state, all pools.
    pub steady_state_successes_per_sec: f64,
}

/// One reason the refined answer differs from the folk formula.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Stable code: `pools`, `server-closes`, `keep-alive`, `tw-reuse`, `tw-reuse-loopback-only`,
    /// `open-time`, `reserved-ports`, `time-wait-cap`, `no-local-time-wait`.
    pub code: &'static str,
    /// One sentence for people.
    pub explanation: String,
}

/// Capacity of a profile for a query.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Usable ports per pool.
    pub ports_per_pool: u32,
    /// Number of pools the workload spreads over.
    pub pools: u32,
    /// How long one connection holds its port.
    pub hold: PortHold,
    /// New connections per second one pool sustains without failures (`ports / hold`);
    /// `None` when closing does not consume ports (keep-alive, server closes with no latency
    /// given, or TIME_WAIT capped below the pool).
    pub sustainable_per_pool_per_sec: Option<f64>,
    /// The same for all pools together.
    pub sustainable_total_per_sec: Option<f64>,
    /// The seed's formula, for comparison.
    pub folk: FolkFormula,
    /// Why the refined answer differs from the folk formula.
    pub differences: Vec<Difference>,
    /// Outcome of the churn, when one was given.
    pub churn: Option<ChurnOutcome>,
}

/// Computes the capacity of `profile` for `query`.
///
/// Example: Linux defaults, one destination, client closes, `tcp_tw_reuse = 0` →
/// 28,232 ports / 60 s ≈ 470.5 new connections per second.
pub fn capacity(profile: &OsProfile, query: &CapacityQuery) -> Capacity {
    let ports = profile.ports_per_pool();
    let pools = profile.scope.pools(query.source_ips, query.destinations);
    let latency = query
        .churn
        .as_ref()
        .map_or(Duration::ZERO, |w| w.latency.mean());
    let after_close = match query.policy {
        ConnectionPolicy::ClientCloses => profile.client_close_hold(query.loopback),
        ConnectionPolicy::ServerCloses | ConnectionPolicy::KeepAlive => Duration::ZERO,
    };
    let hold = PortHold {
        open_secs: latency.as_secs_f64(),
        after_close_secs: after_close.as_secs_f64(),
        total_secs: (latency + after_close).as_secs_f64(),
    };
    let tw_cap_per_pool = tw_cap_per_pool(profile, query, pools);
    let churns_ports = query.policy != ConnectionPolicy::KeepAlive
        && hold.total_secs > 0.0
        && tw_cap_per_pool.is_none_or(|cap| cap >= f64::from(ports));
    let sustainable = churns_ports.then(|| f64::from(ports) / hold.total_secs);
    let folk = FolkFormula {
        ports: profile.range.len(),
        time_wait_secs: profile.time_wait.as_secs_f64(),
        rate_per_sec: f64::from(profile.range.len()) / profile.time_wait.as_secs_f64().max(1e-9),
    };
    let churn = query
        .churn
        .as_ref()
        .map(|w| churn_outcome(w, ports, pools, &hold, tw_cap_per_pool, profile));
    Capacity {
        ports_per_pool: ports,
        pools,
        differences: differences(profile, query, pools, &hold, tw_cap_per_pool),
        sustainable_total_per_sec: sustainable.map(|s| s * f64::from(pools)),
        sustainable_per_pool_per_sec: sustainable,
        hold,
        folk,
        churn,
    }
}

/// TIME_WAIT entries one pool can hold under a global cap, shared evenly by the pools.
fn tw_cap_per_pool(profile: &OsProfile, query: &CapacityQuery, pools: u32) -> Option<f64> {
    if query.policy != ConnectionPolicy::ClientCloses || !profile.client_time_wait(query.loopback) {
        return None;
    }
    match profile.time_wait_cap {
        TimeWaitCap::None => None,
        TimeWaitCap::Overflow(cap) | TimeWaitCap::EvictOldest(cap) => {
            Some(cap as f64 / f64::from(pools))
        }
    }
}

/// Share of the load that the busiest pool gets, from the round-robin pair assignment.
fn busiest_pool_share(units: u64, w: &Workload, profile: &OsProfile) -> u64 {
    let pairs = u64::from(w.pairs());
    let pools = profile.scope.pools(w.source_ips, w.destinations) as usize;
    let mut per_pool = vec![0u64; pools.max(1)];
    for pair in 0..pairs {
        let share = units / pairs + u64::from(pair < units % pairs);
        let dst = (pair % u64::from(w.destinations)) as u32;
        let src = (pair / u64::from(w.destinations)) as u32;
        let pool = profile.scope.pool_of(src, dst, w.destinations) as usize;
        if let Some(slot) = per_pool.get_mut(pool) {
            *slot += share;
        }
    }
    per_pool.into_iter().max().unwrap_or(0)
}

fn churn_outcome(
    w: &Workload,
    ports: u32,
    pools: u32,
    hold: &PortHold,
    tw_cap_per_pool: Option<f64>,
    profile: &OsProfile,
) -> ChurnOutcome {
    let ports_f = f64::from(ports);
    let latency = hold.open_secs.max(1e-9);
    let after_close = hold.after_close_secs;
    // Ports held after close are bounded by the TIME_WAIT cap when there is one.
    let held_after_close = |rate: f64| {
        let held = rate * after_close;
        tw_cap_per_pool.map_or(held, |cap| held.min(cap))
    };
    match w.shape {
        LoadShape::Closed { concurrency } => {
            let busiest = busiest_pool_share(u64::from(concurrency), w, profile) as f64;
            let rate_pool = busiest / latency;
            let needed = busiest + held_after_close(rate_pool);
            let exhausts = needed > ports_f;
            // Workers start together: each round of `busiest` connects takes one latency, so
            // the pool runs dry after floor(ports / busiest) rounds.
            let time_to_exhaustion = exhausts.then(|| {
                if busiest > ports_f {
                    0.0
                } else {
                    (ports_f / busiest).floor() * latency
                }
            });
            let fail_cycle = mean_failed_attempt_secs(w, ports);
            // Steady state per pool: successes limited to ports / hold; workers not busy with a
            // successful request spin on failures, one per `fail_cycle`.
            let (successes, failures) = if exhausts {
                let s = match tw_cap_per_pool {
                    _ if w.policy != ConnectionPolicy::ClientCloses => {
                        ports_f.min(busiest) / latency
                    }
                    None => ports_f / hold.total_secs.max(1e-9),
                    // Closes beyond the cap free their port at once: what is left for open
                    // connections is the pool minus the capped TIME_WAIT entries.
                    Some(cap) => (ports_f - cap.min(ports_f)).min(busiest) / latency,
                };
                let idle = (busiest - s * latency).max(0.0);
                (s, idle / fail_cycle)
            } else {
                (rate_pool, 0.0)
            };
            let total_rate = f64::from(concurrency) / latency;
            ChurnOutcome {
                offered_per_sec: total_rate,
                offered_per_pool_per_sec: rate_pool,
                ports_needed_per_pool: needed,
                exhausts,
                time_to_exhaustion_secs: time_to_exhaustion,
                steady_state_failure_fraction: fraction(failures, successes),
                steady_state_successes_per_sec: if exhausts {
                    successes * f64::from(pools)
                } else {
                    total_rate
                },
            }
        }
        LoadShape::Open { rate_per_sec, .. } => {
            // Scale to integers to reuse the round-robin share; 1e6 units keep 6 digits.
            let scaled = busiest_pool_share(1_000_000, w, profile) as f64 / 1_000_000.0;
            let rate_pool = rate_per_sec * scaled;
            let needed = rate_pool * latency + held_after_close(rate_pool);
            let exhausts = needed > ports_f;
            let served = if exhausts {
                rate_pool * ports_f / needed
            } else {
                rate_pool
            };
            ChurnOutcome {
                offered_per_sec: rate_per_sec,
                offered_per_pool_per_sec: rate_pool,
                ports_needed_per_pool: needed,
                exhausts,
                time_to_exhaustion_secs: exhausts.then(|| ports_f / rate_pool),
                steady_state_failure_fraction: fraction(rate_pool - served, served),
                steady_state_successes_per_sec: (served / scaled.max(1e-12)).min(rate_per_sec),
            }
        }
    }
}

/// Mean time between two failed attempts of one worker: the failed connect itself plus the
/// backoff, averaged over a request's `1 + retries` attempts.
fn mean_failed_attempt_secs(w: &Workload, ports: u32) -> f64 {
    let attempts = f64::from(w.retry.retries) + 1.0;
    let backoff: f64 = (1..=w.retry.retries)
        .map(|k| w.retry.backoff_before(k).as_secs_f64())
        .sum();
    (w.failed_connect_for(ports).as_secs_f64() + backoff / attempts).max(1e-9)
}

fn fraction(failures: f64, successes: f64) -> f64 {
    if failures + successes <= 0.0 {
        0.0
    } else {
        (failures / (failures + successes)).clamp(0.0, 1.0)
    }
}

fn differences(
    profile: &OsProfile,
    query: &CapacityQuery,
    pools: u32,
    hold: &PortHold,
    tw_cap_per_pool: Option<f64>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut add = |code: &'static str, explanation: String| {
        out.push(Difference { code, explanation });
    };
    if pools > 1 {
        add(
            "pools",
            format!(
                "{} scope: {} source IP(s) x {} destination(s) give {pools} independent pools of \
                 {} ports each, not one pool for the host",
                profile.scope,
                query.source_ips,
                query.destinations,
                profile.ports_per_pool()
            ),
        );
    }
    if profile.reserved_ports > 0 {
        add(
            "reserved-ports",
            format!(
                "{} reserved port(s) are never handed out",
                profile.reserved_ports
            ),
        );
    }
    match query.policy {
        ConnectionPolicy::ServerCloses => add(
            "server-closes",
            "the server closes first, so TIME_WAIT lands on the server; the client's port is \
             free as soon as the connection ends"
                .to_string(),
        ),
        ConnectionPolicy::KeepAlive => add(
            "keep-alive",
            "keep-alive reuses connections: ports are held, not churned; the limit is \
             concurrent connections <= ports per pool"
                .to_string(),
        ),
        ConnectionPolicy::ClientCloses => client_close_differences(profile, query, &mut add),
    }
    if query.policy != ConnectionPolicy::KeepAlive
        && hold.open_secs > 0.01 * hold.after_close_secs.max(1e-9)
        && hold.open_secs > 0.0
    {
        add(
            "open-time",
            format!(
                "each connection also holds its port while open ({:.3} s per request)",
                hold.open_secs
            ),
        );
    }
    if let Some(cap) = tw_cap_per_pool {
        if cap < f64::from(profile.ports_per_pool()) {
            add(
                "time-wait-cap",
                format!(
                    "TIME_WAIT entries are capped (about {cap:.0} per pool): closes beyond the \
                     cap do not hold a port, so TIME_WAIT alone cannot exhaust the pool"
                ),
            );
        }
    }
    out
}

fn client_close_differences(
    profile: &OsProfile,
    query: &CapacityQuery,
    add: &mut impl FnMut(&'static str, String),
) {
    if !profile.client_time_wait(query.loopback) {
        add(
            "no-local-time-wait",
            "no TIME_WAIT is kept for a local peer (FreeBSD nolocaltimewait=1)".to_string(),
        );
    } else if profile.reuse_applies(query.loopback) {
        add(
            "tw-reuse",
            format!(
                "tcp_tw_reuse={} lets connect() take over a TIME_WAIT port after {} ms \
                 (tcp_tw_reuse_delay, needs TCP timestamps) instead of waiting {} s",
                profile.tw_reuse.sysctl_value(),
                profile.tw_reuse_delay.as_millis(),
                profile.time_wait.as_secs_f64()
            ),
        );
    } else if profile.tw_reuse == crate::TwReuse::LoopbackOnly && profile.timestamps {
        add(
            "tw-reuse-loopback-only",
            "tcp_tw_reuse=2 (the Linux default) applies to loopback only, so TIME_WAIT lasts \
             the full length here; tests on 127.0.0.1 would hide this"
                .to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Os, TwReuse};
    use crate::workload::Latency;

    fn query(policy: ConnectionPolicy) -> CapacityQuery {
        CapacityQuery {
            source_ips: 1,
            destinations: 1,
            loopback: false,
            policy,
            churn: None,
        }
    }

    #[test]
    fn closed_loop_drop_exhausts_after_ports_rounds() {
        let mut p = OsProfile::preset(Os::Linux);
        p.range = crate::PortRange::new(40000, 40999).unwrap_or(p.range);
        p.tw_reuse = TwReuse::Off;
        let w = Workload::closed(
            1,
            Latency::fixed(Duration::from_millis(1)),
            ConnectionPolicy::ClientCloses,
        );
        let c = capacity(&p, &CapacityQuery::from_workload(&w));
        let churn = c.churn.expect("churn given");
        assert!(churn.exhausts);
        let t = churn.time_to_exhaustion_secs.unwrap_or(f64::NAN);
        assert!((t - 1.0).abs() < 1e-9, "{t}");
        // 1000 ports / 60.001 s of successes against one failure per 130 µs.
        assert!(churn.steady_state_failure_fraction > 0.99);
    }

    #[test]
    fn server_closes_does_not_churn_ports() {
        let p = OsProfile::preset(Os::Linux);
        let c = capacity(&p, &query(ConnectionPolicy::ServerCloses));
        assert_eq!(c.sustainable_per_pool_per_sec, None);
        assert!(c.differences.iter().any(|d| d.code == "server-closes"));
    }

    #[test]
    fn freebsd_tw_cap_prevents_time_wait_exhaustion() {
        let p = OsProfile::preset(Os::Freebsd);
        let c = capacity(&p, &query(ConnectionPolicy::ClientCloses));
        assert_eq!(c.sustainable_per_pool_per_sec, None);
        assert!(c.differences.iter().any(|d| d.code == "time-wait-cap"));
    }
}
