//! NAT and conntrack findings, on the NAT host ([`diagnose_nat`] over a [`NatEvidence`]) and on
//! the client behind it ([`loss_beyond_host`], one of [`crate::diagnose`]'s rules).
//!
//! Told apart (research/nat-conntrack.md §1.8–1.10, §5.2; net/netfilter/nf_conntrack_core.c,
//! nf_nat_core.c):
//! - NAT port exhaustion towards a destination: `insert_failed` and `drop` rise while that
//!   destination's pool is full (≥ 95 %); never called so without a full pool.
//! - The SNAT clash race: `insert_failed` with every pool far from full (< 50 %).
//! - Conntrack table full: drops without `insert_failed`, `early_drop` rising, count ≈ max;
//!   hits every destination at once.
//! - UDP clashes resolved (`clash_resolve`) without drops: informational.

use portlab_sockets::{ConntrackStats, L4Protocol, NatPool, NatRule, StatCounters};
use serde::Serialize;

use crate::evidence::Evidence;
use crate::remedies::{remedy, Os, Remedy};
use crate::{Cause, Finding, Severity};

const SRC_NAT_CORE: &str =
    "net/netfilter/nf_nat_core.c: nf_nat_l4proto_unique_tuple(), get_unique_tuple() (Linux 6.12)";
const SRC_CT_CORE: &str =
    "net/netfilter/nf_conntrack_core.c: __nf_conntrack_alloc(), early_drop() (Linux 6.12)";
const SRC_CLOUD: &str = "AWS NAT Gateway CloudWatch metrics (docs.aws.amazon.com/vpc/latest/userguide/vpc-nat-gateway-cloudwatch.html); Azure NAT Gateway / Load Balancer SNAT metrics (learn.microsoft.com/azure/nat-gateway/nat-metrics); GCP Cloud NAT monitoring (cloud.google.com/nat/docs/monitoring)";
const SRC_RACE: &str = "XING engineering, \"A reason for unexplained connection timeouts on Kubernetes/Docker\" (2018); iptables-extensions(8) MASQUERADE --random-fully";

/// A pool at or above this utilisation, with clash drops, is exhausted.
pub const EXHAUSTED_UTILISATION: f64 = 0.95;
/// Clash drops with every pool below this utilisation are the SNAT race.
pub const RACE_UTILISATION: f64 = 0.5;

/// What the NAT host showed over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NatEvidence {
    /// Counter increase over the interval (sum over CPUs).
    pub stats_delta: StatCounters,
    /// Length of the interval, ms.
    pub interval_ms: u64,
    /// Table entries and limit at the fullest moment.
    pub count: u64,
    /// `nf_conntrack_max`.
    pub max: u64,
    /// NAT pools at the fullest moment, fullest first.
    pub pools: Vec<NatPool>,
    /// The NAT rules, where read.
    pub rules: Vec<NatRule>,
    /// Whether closing TCP entries are evictable (Linux ≥ 6.5).
    pub closing_evictable: bool,
    /// New flows the NAT rules saw over the interval, where known (the rule counters or the
    /// client's attempts), to express `found` per new flow.
    pub new_flows: Option<u64>,
}

impl NatEvidence {
    /// Evidence from two stats reads and the pools of the fullest moment.
    pub fn from_stats(
        before: &ConntrackStats,
        after: &ConntrackStats,
        interval_ms: u64,
        pools: Vec<NatPool>,
    ) -> NatEvidence {
        NatEvidence {
            stats_delta: after.total.delta(&before.total),
            interval_ms,
            count: after.count.max(before.count),
            max: after.max,
            pools,
            ..NatEvidence::default()
        }
    }
}

fn int(n: u64) -> String {
    crate::rules::int(n)
}

fn per_sec(n: u64, ms: u64) -> String {
    if ms == 0 {
        format!("+{}", int(n))
    } else {
        format!("+{} ({:.1}/s)", int(n), n as f64 * 1000.0 / ms as f64)
    }
}

fn pool_name(p: &NatPool) -> String {
    format!("{}/{} via {}", p.destination, p.protocol.name(), p.nat_ip)
}

fn pool_line(p: &NatPool) -> String {
    let range = p
        .range
        .map_or("kernel default 1024-65535".to_string(), |r| {
            format!("{}-{}", r.low, r.high)
        });
    format!(
        "pool {}: {} live + {} closing of {} ports ({range}) → {:.0} % used, headroom {}, {} client IP(s)",
        pool_name(p),
        int(p.live),
        int(p.closing),
        int(p.pool_ports),
        p.utilisation * 100.0,
        int(p.headroom),
        int(p.client_ips)
    )
}

/// Findings for a NAT host, most severe first. Empty when nothing is wrong (no NAT finding).
pub fn diagnose_nat(e: &NatEvidence) -> Vec<Finding> {
    // A full pool without drops is no finding: flows to it may still succeed (closing entries
    // evicted, flows ending); `portlab ports` shows its utilisation.
    let mut findings: Vec<Finding> = [table_full(e), port_exhaustion(e), snat_race(e)]
        .into_iter()
        .flatten()
        .collect();
    findings.extend(udp_clash(e));
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cause.cmp(&b.cause)));
    findings
}

fn counters_line(e: &NatEvidence) -> String {
    let d = &e.stats_delta;
    format!(
        "conntrack counters over {:.1} s: insert_failed {}, drop {}, early_drop {}, found {}, clash_resolve {}",
        e.interval_ms as f64 / 1000.0,
        per_sec(d.insert_failed, e.interval_ms),
        per_sec(d.drop, e.interval_ms),
        per_sec(d.early_drop, e.interval_ms),
        per_sec(d.found, e.interval_ms),
        per_sec(d.clash_resolve, e.interval_ms)
    )
}

fn table_line(e: &NatEvidence) -> String {
    format!(
        "table: {} of {} entries ({:.1} %)",
        int(e.count),
        int(e.max),
        if e.max == 0 {
            0.0
        } else {
            e.count as f64 * 100.0 / e.max as f64
        }
    )
}

fn table_is_full(e: &NatEvidence) -> bool {
    e.max > 0 && e.count as f64 >= 0.95 * e.max as f64
}

fn table_full(e: &NatEvidence) -> Option<Finding> {
    let d = &e.stats_delta;
    let drops_without_clash = d.drop.saturating_sub(d.insert_failed);
    if d.early_drop == 0 && !(drops_without_clash > 0 && table_is_full(e)) {
        return None;
    }
    let severity = if drops_without_clash > 0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        cause: Cause::ConntrackTableFull,
        severity,
        summary: format!(
            "The conntrack table is full ({} of {} entries): new flows to every destination are {} — not NAT port exhaustion",
            int(e.count),
            int(e.max),
            if drops_without_clash > 0 { "dropped" } else { "evicting unreplied and closing entries (early_drop)" }
        ),
        evidence: vec![
            counters_line(e),
            table_line(e),
            format!(
                "{} drops without insert_failed: the kernel could not allocate an entry (\"nf_conntrack: table full, dropping packet\" in dmesg), a clash is not the cause",
                int(drops_without_clash)
            ),
        ],
        remedies: vec![
            remedy(Os::Linux, "Raise the table limit", Some("sysctl -w net.netfilter.nf_conntrack_max=524288"),
                "More flows fit before early_drop and drops start.", "Global (set in the host namespace; read-only in containers); each entry costs ~300 bytes of kernel memory; raise nf_conntrack_buckets (hashsize) with it.", SRC_CT_CORE),
            remedy(Os::Linux, "Shorten what holds entries", Some("sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=86400"),
                "Idle established flows (5 days by default) and TIME_WAIT (120 s) leave the table sooner.", "Per network namespace; a flow idle longer than the timeout loses its NAT mapping.", SRC_CT_CORE),
        ],
        corrections: Vec::new(),
    })
}

fn port_exhaustion(e: &NatEvidence) -> Option<Finding> {
    let d = &e.stats_delta;
    if d.insert_failed == 0 {
        return None;
    }
    let full: Vec<&NatPool> = e
        .pools
        .iter()
        .filter(|p| p.utilisation >= EXHAUSTED_UTILISATION)
        .collect();
    let worst = *full.first()?;
    let mut evidence = vec![counters_line(e)];
    evidence.extend(full.iter().take(5).map(|p| pool_line(p)));
    if let Some(flows) = e.new_flows.filter(|n| *n > 0) {
        evidence.push(format!(
            "found per new flow: {:.1} (probes that hit a taken NAT tuple)",
            d.found as f64 / flows as f64
        ));
    }
    evidence.push(format!(
        "each dropped SYN is retransmitted and dropped again: insert_failed counts SYNs, not connections ({} SYNs)",
        int(d.insert_failed)
    ));
    evidence.push(table_line(e));
    let many_clients = worst.client_ips > 1;
    let mut remedies = vec![
        remedy(Os::Any, "Reuse connections", None,
            "Keep-alive or a connection pool (HTTP client pool, a pooling proxy) needs one NAT port per pooled connection instead of one per request.",
            "The pool must be sized to the concurrency the destination needs.", SRC_NAT_CORE),
        remedy(Os::Linux, "Widen the NAT port range", Some("nft: … snat to <ip>:1024-65535  (or drop the port range: the kernel default is 1024-65535)"),
            "A pool per destination has as many ports as the range.", "Ports in the range must not be needed by local services on the NAT IP.", SRC_NAT_CORE),
        remedy(Os::Any, "Spread over more destination IPs or ports", None,
            "Each (destination IP, port) has its own pool of NAT ports.", "Needs the service to listen on several addresses or ports (or several backends).", SRC_NAT_CORE),
    ];
    remedies.push(if many_clients {
        remedy(Os::Linux, "Add NAT IPs", Some("nft: … snat to <ip1>-<ipN>:<ports>"),
            "Different client IPs hash to different NAT IPs, so the total grows.", "One client IP always maps to the same NAT IP (jhash of src, dst): this does not help a single client.", SRC_NAT_CORE)
    } else {
        remedy(Os::Linux, "Not a fix here: more NAT IPs", None,
            "With one client IP, the kernel maps every flow of that client to one NAT IP (jhash of client and destination): extra NAT IPs stay unused.", "Helps only when many client IPs share the NAT.", SRC_NAT_CORE)
    });
    remedies.push(cloud_remedy());
    Some(Finding {
        cause: Cause::NatPortExhaustion,
        severity: Severity::Critical,
        summary: format!(
            "NAT port exhaustion towards {}: the pool is at {:.0} % ({} of {} ports) and new flows are dropped silently (clients see ETIMEDOUT, not EADDRNOTAVAIL)",
            pool_name(worst),
            worst.utilisation * 100.0,
            int(worst.blocking),
            int(worst.pool_ports)
        ),
        evidence,
        remedies,
        corrections: Vec::new(),
    })
}

fn snat_race(e: &NatEvidence) -> Option<Finding> {
    let d = &e.stats_delta;
    if d.insert_failed == 0 || table_is_full(e) {
        return None;
    }
    let fullest = e.pools.first().map_or(0.0, |p| p.utilisation);
    if fullest >= EXHAUSTED_UTILISATION {
        return None;
    }
    let fully_random = e
        .rules
        .iter()
        .any(|r| r.flags.iter().any(|f| f == "fully-random" || f == "random"));
    let (severity, summary) = if fullest < RACE_UTILISATION {
        (
            Severity::Warning,
            format!(
                "SNAT clash race: {} inserts failed while every NAT pool was below {:.0} % (fullest {:.0} %) — two CPUs picked the same NAT tuple; the loser's SYN is retransmitted 1 s later",
                int(d.insert_failed),
                RACE_UTILISATION * 100.0,
                fullest * 100.0
            ),
        )
    } else {
        (
            Severity::Warning,
            format!(
                "{} SNAT inserts failed with the fullest pool at {:.0} %: not full, so not exhaustion yet — a near-full pool's random search (≤ 248 probes) or the clash race",
                int(d.insert_failed),
                fullest * 100.0
            ),
        )
    };
    let mut evidence = vec![counters_line(e)];
    evidence.extend(e.pools.iter().take(3).map(pool_line));
    evidence.push(table_line(e));
    evidence.push(if fully_random {
        "the NAT rule already uses random/fully-random port selection".to_string()
    } else {
        "the NAT rules use port preservation (no random/fully-random flag)".to_string()
    });
    Some(Finding {
        cause: Cause::SnatClashRace,
        severity,
        summary,
        evidence,
        remedies: vec![remedy(
            Os::Linux,
            "Randomise NAT port selection",
            Some("nft: … masquerade fully-random   (iptables: -j MASQUERADE --random-fully)"),
            "Each new flow starts its search at a random port, so parallel flows rarely pick the same tuple.",
            "Gives up port preservation; Kubernetes, flannel and Calico set it.",
            SRC_RACE,
        )],
        corrections: Vec::new(),
    })
}

fn udp_clash(e: &NatEvidence) -> Option<Finding> {
    let d = &e.stats_delta;
    if d.clash_resolve == 0 || d.drop > 0 {
        return None;
    }
    Some(Finding {
        cause: Cause::UdpClashResolved,
        severity: Severity::Info,
        summary: format!(
            "{} UDP clashes resolved without a drop (parallel packets of one flow, e.g. DNS A+AAAA): handled by the kernel",
            int(d.clash_resolve)
        ),
        evidence: vec![counters_line(e)],
        remedies: Vec::new(),
        corrections: Vec::new(),
    })
}

fn cloud_remedy() -> Remedy {
    remedy(
        Os::Any,
        "Behind a cloud NAT, read its own counter",
        None,
        "AWS NAT Gateway: CloudWatch ErrorPortAllocation; Azure NAT Gateway / LB outbound: SNAT Connection Count with state \"failed\"; GCP Cloud NAT: dropped sent packets with reason OUT_OF_RESOURCES.",
        "Cloud NATs do not show on this host; AWS: 55,000 ports per NAT IP per destination, Azure NAT Gateway 50,000, GCP 64 per VM by default.",
        SRC_CLOUD,
    )
}

/// Client-side rule: connects timed out (ETIMEDOUT) or needed SYN retransmits (≥ 1 s), with no
/// local cause — no EADDRNOTAVAIL, the local pool healthy, no listen-queue overflow counted —
/// so the SYNs were lost beyond this host: at a NAT (silent drop on a clash) or at the server's
/// listen backlog.
pub(crate) fn loss_beyond_host(e: &Evidence) -> Option<Finding> {
    let run = e.run.as_ref()?;
    let f = &run.failures;
    let timeouts = f.connect_timeout;
    let slow = run.slow_connects;
    if timeouts == 0 && slow == 0 {
        return None;
    }
    if f.addr_not_available + f.addr_in_use + f.too_many_open_files > 0 {
        return None;
    }
    let counters = e.counters_delta.as_ref();
    if counters.is_some_and(|c| c.listen_overflows + c.listen_drops > 0) {
        return None; // the listen-queue rule has the proof
    }
    let pool_ok = e
        .pool
        .as_ref()
        .is_none_or(|p| p.peak_ports_in_use * 2 < p.pool_size.max(1));
    if !pool_ok {
        return None;
    }
    let mut evidence = Vec::new();
    if timeouts > 0 {
        evidence.push(format!(
            "{} of {} connects failed with ETIMEDOUT{}: no SYN/ACK ever came back",
            int(timeouts),
            int(run.attempts),
            run.first_failure_ms.map_or(String::new(), |ms| format!(
                ", the first after {:.1} s",
                ms as f64 / 1000.0
            ))
        ));
    }
    if slow > 0 {
        evidence.push(format!(
            "{} connects took 1 s or more (p99 {}): SYNs were retransmitted at ~1 s steps, so earlier SYNs were lost",
            int(slow),
            run.connect_p99_ms
                .map_or("n/a".to_string(), |ms| format!("{:.0} ms", ms))
        ));
    }
    evidence.push("no EADDRNOTAVAIL, no EMFILE: nothing failed locally".to_string());
    evidence.push("behind a cloud NAT, read its counter: AWS NAT Gateway ErrorPortAllocation; Azure SNAT Connection Count, state failed; GCP Cloud NAT sent packets dropped, reason OUT_OF_RESOURCES".to_string());
    if let Some(p) = &e.pool {
        evidence.push(format!(
            "local port pool healthy: the fullest held {} of {} ports",
            int(p.peak_ports_in_use),
            int(p.pool_size)
        ));
    }
    if counters.is_some() {
        evidence.push(
            "ListenOverflows/ListenDrops +0 here: no local listener dropped them".to_string(),
        );
    }
    Some(Finding {
        cause: Cause::LossBeyondHost,
        severity: if timeouts > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary: "SYNs were lost beyond this host: check the NAT (or the server's listen backlog) — a full NAT pool drops SYNs silently, so the client sees ETIMEDOUT, never EADDRNOTAVAIL".to_string(),
        evidence,
        remedies: vec![
            remedy(Os::Linux, "On a Linux NAT host (Docker/Kubernetes node, NAT instance)", Some("portlab doctor   (or: conntrack -S; conntrack -C)"),
                "Shows the NAT pools per destination with utilisation and insert_failed/drop rates.", "Run it on the NAT host, in the namespace doing the NAT.", SRC_NAT_CORE),
            cloud_remedy(),
            remedy(Os::Linux, "On the server", Some("nstat -az TcpExtListenOverflows TcpExtListenDrops"),
                "Rising counters mean the server's accept queue drops the SYNs instead.", "Read them on the server host, in its namespace.", "net/ipv4/tcp_ipv4.c: tcp_v4_syn_recv_sock()"),
        ],
        corrections: Vec::new(),
    })
}

/// Whether a pool's protocol is UDP (no TIME_WAIT eviction for UDP on any kernel).
pub fn is_udp(p: &NatPool) -> bool {
    p.protocol == L4Protocol::Udp
}

#[cfg(test)]
mod tests {
    use super::*;
    use portlab_sockets::NatPortRange;

    fn pool(live: u64, ports: u64, clients: u64) -> NatPool {
        NatPool {
            protocol: L4Protocol::Tcp,
            nat_ip: "127.0.0.1".parse().unwrap(),
            destination: "127.0.0.2:8080".parse().unwrap(),
            live,
            closing: 0,
            pool_ports: ports,
            range: Some(NatPortRange {
                low: 40000,
                high: 40000 + ports as u16 - 1,
            }),
            blocking: live,
            utilisation: live as f64 / ports as f64,
            headroom: ports.saturating_sub(live),
            client_ips: clients,
        }
    }

    fn ev(insert_failed: u64, drop: u64, early_drop: u64, pools: Vec<NatPool>) -> NatEvidence {
        NatEvidence {
            stats_delta: StatCounters {
                insert_failed,
                drop,
                early_drop,
                ..Default::default()
            },
            interval_ms: 5000,
            count: 100,
            max: 262_144,
            pools,
            ..Default::default()
        }
    }

    #[test]
    fn full_pool_with_clash_drops_is_exhaustion() {
        let f = diagnose_nat(&ev(150, 150, 0, vec![pool(100, 100, 1)]));
        assert_eq!(f[0].cause, Cause::NatPortExhaustion);
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].summary.contains("127.0.0.2:8080/tcp"),
            "{}",
            f[0].summary
        );
        assert!(f[0].summary.contains("100 %"), "{}", f[0].summary);
        assert!(f[0]
            .remedies
            .iter()
            .any(|r| r.action.starts_with("Not a fix")));
    }

    #[test]
    fn a_blip_without_a_full_pool_is_never_exhaustion() {
        let f = diagnose_nat(&ev(3, 3, 0, vec![pool(20, 100, 1)]));
        assert_eq!(f[0].cause, Cause::SnatClashRace);
        assert!(f.iter().all(|f| f.cause != Cause::NatPortExhaustion));
        let f = diagnose_nat(&ev(3, 3, 0, vec![pool(80, 100, 1)]));
        assert!(f.iter().all(|f| f.cause != Cause::NatPortExhaustion));
    }

    #[test]
    fn drops_without_insert_failed_at_a_full_table_are_table_full() {
        let mut e = ev(0, 40, 500, vec![pool(10, 100, 1)]);
        e.count = 262_144;
        let f = diagnose_nat(&e);
        assert_eq!(f[0].cause, Cause::ConntrackTableFull);
        assert!(f.iter().all(|f| f.cause != Cause::NatPortExhaustion));
        let early_only = diagnose_nat(&ev(0, 0, 500, vec![]));
        assert_eq!(early_only[0].cause, Cause::ConntrackTableFull);
        assert_eq!(early_only[0].severity, Severity::Warning);
    }

    #[test]
    fn a_full_pool_without_drops_is_no_finding() {
        assert!(diagnose_nat(&ev(0, 0, 0, vec![pool(50, 100, 1)])).is_empty());
        assert!(diagnose_nat(&ev(0, 0, 0, vec![pool(100, 100, 1)])).is_empty());
    }

    #[test]
    fn resolved_udp_clashes_are_informational() {
        let mut e = ev(0, 0, 0, vec![]);
        e.stats_delta.clash_resolve = 4;
        let f = diagnose_nat(&e);
        assert_eq!(f[0].cause, Cause::UdpClashResolved);
        assert_eq!(f[0].severity, Severity::Info);
    }
}
