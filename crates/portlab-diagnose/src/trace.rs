//! Findings from traced connect() outcomes (`portlab trace`, `portlab doctor --trace`): which
//! process failed towards which destination, with which errno, and who closes first.
//! [`diagnose_with_trace`] adds them to the host's findings.

use std::net::SocketAddr;

use serde::Serialize;

use crate::evidence::{Evidence, FailureCounts};
use crate::{remedies, rules, Cause, Finding, Severity};

/// connect() outcomes of one process towards one destination, as traced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TracedFlow {
    /// Process id.
    pub pid: u32,
    /// Process name (`comm`).
    pub comm: String,
    /// Destination.
    pub destination: Option<SocketAddr>,
    /// connect() attempts.
    pub attempts: u64,
    /// Handshakes completed.
    pub successes: u64,
    /// Failed connects by class (ETIMEDOUT counts as `connect_timeout`).
    pub failures: FailureCounts,
    /// Connections the process closed first (it holds the TIME_WAIT).
    pub closed_first: u64,
    /// Connections the peer closed first.
    pub closed_by_peer: u64,
    /// Connections that entered TIME_WAIT on this host.
    pub time_wait_entered: u64,
    /// TIME_WAIT entries of the last 60 s (ports still held).
    pub time_wait_held: u64,
    /// Failed port searches: how many, mean and longest, µs.
    pub failed_port_searches: u64,
    /// Mean failed port search, µs.
    pub failed_port_search_mean_us: Option<f64>,
    /// Longest failed port search, µs.
    pub failed_port_search_max_us: Option<f64>,
}

/// What a trace of the host saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TraceEvidence {
    /// How long the trace ran, ms.
    pub duration_ms: u64,
    /// Events the kernel dropped (counts are lower bounds when > 0).
    pub lost_events: u64,
    /// Per (process, destination).
    pub flows: Vec<TracedFlow>,
}

impl Evidence {
    /// Evidence of a host with only its settings known (no load run, no snapshot): what a
    /// trace's findings are read against.
    pub fn host(settings: portlab_sockets::PortPoolSettings) -> Evidence {
        Evidence {
            settings,
            loopback: false,
            run: None,
            pool: None,
            counters_delta: None,
            counters_interval_ms: 0,
            snapshot: None,
        }
    }
}

/// At most this many flows get a finding of their own; the rest are summed in the last line.
const MAX_FLOW_FINDINGS: usize = 5;

/// The host's findings ([`rules::diagnose`] over `evidence`) plus one per traced flow that
/// failed, most severe first; the Healthy finding is dropped when the trace found failures.
pub fn diagnose_with_trace(evidence: &Evidence, trace: &TraceEvidence) -> Vec<Finding> {
    let mut findings = rules::diagnose(evidence);
    let mut traced: Vec<Finding> = trace
        .flows
        .iter()
        .filter(|f| f.failures.total() > 0)
        .take(MAX_FLOW_FINDINGS)
        .map(|f| flow_finding(evidence, trace, f))
        .collect();
    if traced.is_empty() {
        return findings;
    }
    if traced.iter().any(|f| f.severity > Severity::Info) {
        findings.retain(|f| f.cause != Cause::Healthy);
    }
    findings.append(&mut traced);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cause.cmp(&b.cause)));
    findings
}

fn flow_finding(e: &Evidence, trace: &TraceEvidence, f: &TracedFlow) -> Finding {
    let dest = f
        .destination
        .map_or_else(|| "an unknown destination".to_string(), |d| d.to_string());
    let secs = trace.duration_ms as f64 / 1000.0;
    let who = format!("process {} ({})", f.pid, f.comm);
    let local = f.failures.addr_not_available + f.failures.addr_in_use;
    let mut evidence = vec![format!(
        "{who}: {} connect() attempts to {dest}, {} succeeded, {} failed in {secs:.0} s",
        rules::int(f.attempts),
        rules::int(f.successes),
        rules::int(f.failures.total())
    )];
    evidence.extend(errno_lines(&f.failures));
    evidence.push(closer_line(f));
    if trace.lost_events > 0 {
        evidence.push(format!(
            "lost {} events (dropped by the kernel, or a full ring or map): counts are lower bounds",
            rules::int(trace.lost_events)
        ));
    }
    if local > 0 {
        if let (Some(mean), Some(max)) = (f.failed_port_search_mean_us, f.failed_port_search_max_us)
        {
            evidence.push(format!(
                "each failed connect() first searched the whole port range: mean {}, longest {} ({} searches)",
                us(mean),
                us(max),
                rules::int(f.failed_port_searches)
            ));
        }
        let usable = u64::from(e.settings.usable_ephemeral_ports());
        evidence.push(format!(
            "{} TIME_WAIT entries to {dest} in the last 60 s against {} usable ports (ip_local_port_range {}-{} of the namespace traced; without --netns, of the caller's)",
            rules::int(f.time_wait_held),
            rules::int(usable),
            e.settings.ip_local_port_range.low,
            e.settings.ip_local_port_range.high
        ));
        return Finding {
            cause: Cause::PortExhaustion,
            severity: Severity::Critical,
            summary: format!(
                "{who} failed {} connects to {dest} with EADDRNOTAVAIL in {secs:.0} s; {}",
                rules::int(local),
                closer_clause(f)
            ),
            evidence,
            remedies: remedies::port_exhaustion(),
            corrections: remedies::corrections(),
        };
    }
    let remote = f.failures.total();
    Finding {
        cause: Cause::ServerSide,
        severity: if remote * 100 >= f.attempts.max(1) {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary: format!(
            "{who} failed {} of {} connects to {dest} ({}); its port pool is not the problem",
            rules::int(remote),
            rules::int(f.attempts),
            main_errno(&f.failures)
        ),
        evidence,
        remedies: remedies::server_side(),
        corrections: Vec::new(),
    }
}

fn errno_lines(c: &FailureCounts) -> Vec<String> {
    [
        (
            c.addr_not_available,
            "EADDRNOTAVAIL",
            "no free ephemeral port for this destination",
        ),
        (
            c.addr_in_use,
            "EADDRINUSE",
            "the bound local port or 4-tuple was taken",
        ),
        (
            c.connection_refused,
            "ECONNREFUSED",
            "answered with RST: nothing listens there, or a firewall rejects",
        ),
        (
            c.connect_timeout,
            "ETIMEDOUT",
            "no SYN-ACK after every SYN retry (tcp_syn_retries): dropped SYNs or a dead host",
        ),
        (
            c.connection_reset,
            "ECONNRESET",
            "reset during the handshake",
        ),
        (c.unreachable, "ENETUNREACH/EHOSTUNREACH", "no route"),
        (
            c.no_buffer_space,
            "ENOBUFS/ENOMEM",
            "the kernel ran out of memory for the socket",
        ),
        (c.other, "other errno", "see --json for the numbers"),
    ]
    .into_iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, name, meaning)| format!("{} × {name}: {meaning}", rules::int(n)))
    .collect()
}

fn main_errno(c: &FailureCounts) -> &'static str {
    [
        (c.connection_refused, "mostly ECONNREFUSED"),
        (c.connect_timeout, "mostly ETIMEDOUT"),
        (c.connection_reset, "mostly ECONNRESET"),
        (c.unreachable, "mostly unreachable"),
        (c.no_buffer_space, "mostly ENOBUFS"),
        (c.other, "other errnos"),
    ]
    .into_iter()
    .max_by_key(|(n, _)| *n)
    .map_or("failures", |(_, s)| s)
}

fn closer_clause(f: &TracedFlow) -> String {
    let closes = f.closed_first + f.closed_by_peer;
    if closes == 0 {
        "none of its connections closed while traced, so open connections hold the ports".into()
    } else if f.closed_first * 10 >= closes * 9 {
        "it closes every connection first, so each one leaves a TIME_WAIT here for 60 s".into()
    } else if f.closed_by_peer * 10 >= closes * 9 {
        "the peer closes first, so TIME_WAIT is on the peer and open connections hold the ports"
            .into()
    } else {
        format!(
            "it closes {:.0} % of its connections first (each leaves a TIME_WAIT here)",
            f.closed_first as f64 * 100.0 / closes as f64
        )
    }
}

fn closer_line(f: &TracedFlow) -> String {
    format!(
        "closes: {} by this process first (active closer; {} entered TIME_WAIT), {} by the peer first",
        rules::int(f.closed_first),
        rules::int(f.time_wait_entered),
        rules::int(f.closed_by_peer)
    )
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portlab_sockets::PortPoolSettings;

    fn evidence() -> Evidence {
        Evidence::host(PortPoolSettings::read().unwrap())
    }

    fn flow(ana: u64, refused: u64) -> TracedFlow {
        TracedFlow {
            pid: 4711,
            comm: "java".into(),
            destination: Some("10.0.0.5:443".parse().unwrap()),
            attempts: 1000 + ana + refused,
            successes: 1000,
            failures: FailureCounts {
                addr_not_available: ana,
                connection_refused: refused,
                ..FailureCounts::default()
            },
            closed_first: 1000,
            time_wait_entered: 1000,
            time_wait_held: 1000,
            failed_port_searches: ana,
            failed_port_search_mean_us: Some(210.0),
            failed_port_search_max_us: Some(1200.0),
            ..TracedFlow::default()
        }
    }

    #[test]
    fn eaddrnotavail_names_the_process_and_the_closer() {
        let trace = TraceEvidence {
            duration_ms: 60_000,
            lost_events: 120,
            flows: vec![flow(12_400, 0)],
        };
        let f = diagnose_with_trace(&evidence(), &trace);
        assert_eq!(f[0].cause, Cause::PortExhaustion);
        assert_eq!(
            f[0].summary,
            "process 4711 (java) failed 12,400 connects to 10.0.0.5:443 with EADDRNOTAVAIL in 60 s; it closes every connection first, so each one leaves a TIME_WAIT here for 60 s"
        );
        assert!(f[0].evidence.iter().any(|l| l.contains("lost 120 events")));
        assert!(f[0]
            .evidence
            .iter()
            .any(|l| l.contains("mean 210 µs, longest 1.20 ms")));
        assert!(f.iter().all(|x| x.cause != Cause::Healthy));
    }

    #[test]
    fn refusals_are_the_servers_side_and_quiet_traces_stay_healthy() {
        let trace = TraceEvidence {
            duration_ms: 10_000,
            lost_events: 0,
            flows: vec![flow(0, 30)],
        };
        let f = diagnose_with_trace(&evidence(), &trace);
        let s = f.iter().find(|x| x.cause == Cause::ServerSide).unwrap();
        assert!(s.summary.contains("mostly ECONNREFUSED"), "{}", s.summary);
        let quiet = TraceEvidence {
            flows: vec![flow(0, 0)],
            ..trace
        };
        let f = diagnose_with_trace(&evidence(), &quiet);
        assert!(f
            .iter()
            .all(|x| x.cause != Cause::ServerSide && x.cause != Cause::PortExhaustion));
    }
}
