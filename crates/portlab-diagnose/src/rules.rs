//! The rules: one function per cause, each reading only the evidence that tells it apart.

use portlab_sockets::{Risk, TwReuse, LINUX_TIME_WAIT_SECS};

use crate::evidence::{Evidence, Policy, PoolEvidence, RunEvidence};
use crate::remedies;
use crate::{Cause, Finding, Severity};

/// Turns evidence into findings, most severe first. Always returns at least one finding: when
/// nothing is wrong, a [`Cause::Healthy`] one with the headroom.
pub fn diagnose(evidence: &Evidence) -> Vec<Finding> {
    let mut findings: Vec<Finding> = [
        port_exhaustion(evidence),
        time_wait_pressure(evidence),
        listen_queue_overflow(evidence),
        fd_limit(evidence),
        server_side(evidence),
    ]
    .into_iter()
    .flatten()
    .collect();
    if findings.iter().all(|f| f.severity == Severity::Info) {
        findings.push(healthy(evidence));
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cause.cmp(&b.cause)));
    findings
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub(crate) fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn rate(r: f64) -> String {
    if r >= 1000.0 {
        int(r.round() as u64)
    } else if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn dest_name(run: Option<&RunEvidence>) -> String {
    run.and_then(|r| r.destination)
        .map_or_else(|| "the destination".to_string(), |d| d.to_string())
}

/// "usable ports ÷ 60 s TIME_WAIT (tcp_tw_reuse=0)" — why the sustainable rate is what it is.
fn rate_reason(e: &Evidence) -> String {
    let usable = int(u64::from(e.settings.usable_ephemeral_ports()));
    let block = e.port_block_ms();
    if block >= LINUX_TIME_WAIT_SECS * 1000 {
        let why = match e.settings.tcp_tw_reuse {
            TwReuse::Disabled => "tcp_tw_reuse=0".to_string(),
            TwReuse::LoopbackOnly => "tcp_tw_reuse=2 covers loopback only".to_string(),
            _ if e.settings.tcp_timestamps == 0 => "tcp_timestamps=0 rules out reuse".to_string(),
            other => format!("tcp_tw_reuse={}", other.sysctl_value()),
        };
        format!("{usable} ports ÷ 60 s TIME_WAIT, {why}")
    } else {
        format!("{usable} ports ÷ {block} ms tcp_tw_reuse_delay")
    }
}

fn range_line(e: &Evidence, source_ips: u64) -> String {
    let r = e.settings.ip_local_port_range;
    format!(
        "pool: ip_local_port_range {}-{} = {} usable ports per (local IP, destination); {} source IP{}",
        r.low,
        r.high,
        int(u64::from(e.settings.usable_ephemeral_ports())),
        source_ips,
        if source_ips == 1 { "" } else { "s" }
    )
}

fn policy_line(policy: Policy) -> &'static str {
    match policy {
        Policy::ClientCloses => {
            "policy: the client closed every connection first, so each one left a TIME_WAIT on this host for 60 s"
        }
        Policy::ServerCloses => {
            "policy: Connection: close, so the server closed first and TIME_WAIT landed on the server; ports here were held by open or closing connections"
        }
        Policy::KeepAlive => {
            "policy: keep-alive, yet connections were opened and closed (the server or errors closed them)"
        }
    }
}

fn port_exhaustion(e: &Evidence) -> Option<Finding> {
    if let Some(run) = &e.run {
        let ana = run.failures.addr_not_available + run.failures.addr_in_use;
        if ana > 0 {
            return Some(exhaustion_from_run(e, run, ana));
        }
    }
    let snapshot = e.snapshot.as_ref()?;
    let pool = snapshot
        .pools
        .iter()
        .find(|p| p.headroom.risk == Risk::Exhausted)?;
    Some(Finding {
        cause: Cause::PortExhaustion,
        severity: Severity::Critical,
        summary: format!(
            "{} has no free ephemeral port towards {}: connect() fails with EADDRNOTAVAIL now",
            pool.local_ip, pool.destination
        ),
        evidence: vec![
            range_line(e, 1),
            format!(
                "{} → {}: {} ports used ({} TIME_WAIT, {} ESTABLISHED) of {} usable",
                pool.local_ip,
                pool.destination,
                int(pool.used),
                int(pool.time_wait),
                int(pool.established),
                int(u64::from(e.settings.usable_ephemeral_ports()))
            ),
            format!(
                "recent churn ≈ {}/s (TIME_WAIT ÷ 60 s) against {}/s sustainable ({})",
                rate(pool.headroom.churn_estimate_per_sec),
                rate(pool.headroom.sustainable_rate_per_sec),
                rate_reason(e)
            ),
        ],
        remedies: remedies::port_exhaustion(),
        corrections: remedies::corrections(),
    })
}

fn exhaustion_from_run(e: &Evidence, run: &RunEvidence, failed: u64) -> Finding {
    let dest = dest_name(Some(run));
    let errno = if run.failures.addr_not_available >= run.failures.addr_in_use {
        "EADDRNOTAVAIL"
    } else {
        "EADDRINUSE"
    };
    let mut evidence = vec![
        format!(
            "{} of {} requests ({:.1} %) failed with {errno}: no free local port for {dest}",
            int(failed),
            int(run.attempts),
            pct(failed, run.attempts)
        ),
        range_line(e, run.source_ips),
    ];
    if let Some(pool) = &e.pool {
        evidence.push(format!(
            "TIME_WAIT to {dest} peaked at {} ({:.0} % of the {}-port pool); the fullest pool held {} ports",
            int(pool.peak_time_wait),
            pct(pool.peak_time_wait, pool.pool_size),
            int(pool.pool_size),
            int(pool.peak_ports_in_use)
        ));
        if let Some(full) = pool.pool_full_at_ms {
            evidence.push(format!("the pool was full at {} into the run", secs(full)));
        }
    }
    if let Some(first) = run.first_addr_not_available_ms {
        evidence.push(format!("first {errno} at {} into the run", secs(first)));
    }
    evidence.push(format!(
        "churn: {}/s connection attempts against {}/s sustainable ({})",
        rate(run.connect_attempts_per_sec()),
        rate(e.sustainable_rate_per_sec()),
        rate_reason(e)
    ));
    evidence.push(policy_line(run.policy).to_string());
    if let Some(line) = slow_scan_line(run, e.pool.as_ref()) {
        evidence.push(line);
    }
    if errno == "EADDRINUSE" {
        evidence.push(
            "EADDRINUSE means bind() found no free port: bind(ip, 0) before connect() reserves a port for every destination; use IP_BIND_ADDRESS_NO_PORT".to_string(),
        );
    }
    Finding {
        cause: Cause::PortExhaustion,
        severity: Severity::Critical,
        summary: format!(
            "The client ran out of ephemeral ports for {dest}: {:.1} % of requests failed with {errno} because closed connections held their ports in TIME_WAIT",
            pct(failed, run.attempts)
        ),
        evidence,
        remedies: remedies::port_exhaustion(),
        corrections: remedies::corrections(),
    }
}

/// Connect latency this high next to a pool filled past half is the kernel's port search:
/// connect() tries the even ports of the range first and, once they are taken, scans all of
/// them before each free odd one (net/ipv4/inet_hashtables.c `__inet_hash_connect()`;
/// research/port-allocation.md §1.6). Measured here with 55,001 ports to one destination:
/// connect p50 0.37 ms at 24,000 TIME_WAIT, 57 ms at 36,000 (and 24,600 → 474 requests/s).
const SLOW_SCAN_P99_MS: f64 = 20.0;
/// Below this many ports a full scan is too short to show in connect latency.
const SLOW_SCAN_MIN_POOL: u64 = 10_000;

fn slow_scan_line(run: &RunEvidence, pool: Option<&PoolEvidence>) -> Option<String> {
    let p99 = run.connect_p99_ms.filter(|ms| *ms >= SLOW_SCAN_P99_MS)?;
    let pool = pool.filter(|p| {
        p.pool_size >= SLOW_SCAN_MIN_POOL && p.peak_ports_in_use * 100 >= p.pool_size * 45
    })?;
    Some(format!(
        "connect() itself slowed (p99 {p99:.0} ms) while {} of {} ports were taken: past half the range, connect() scans the taken even ports before each free odd one",
        int(pool.peak_ports_in_use),
        int(pool.pool_size)
    ))
}

fn time_wait_pressure(e: &Evidence) -> Option<Finding> {
    if let Some(run) = &e.run {
        if run.failures.addr_not_available + run.failures.addr_in_use > 0 {
            return None; // already exhausted: finding 1
        }
        return pressure_from_run(e, run);
    }
    let snapshot = e.snapshot.as_ref()?;
    let pool = snapshot
        .pools
        .iter()
        .find(|p| matches!(p.headroom.risk, Risk::Warning | Risk::Critical))?;
    let h = &pool.headroom;
    let mut evidence = vec![
        range_line(e, 1),
        format!(
            "{} → {}: {} of {} ports blocked ({} TIME_WAIT, {} ESTABLISHED), {} free",
            pool.local_ip,
            pool.destination,
            int(pool.blocked),
            int(u64::from(e.settings.usable_ephemeral_ports())),
            int(pool.time_wait),
            int(pool.established),
            int(h.free_ports)
        ),
        format!(
            "recent churn ≈ {}/s (TIME_WAIT ÷ 60 s) against {}/s sustainable ({})",
            rate(h.churn_estimate_per_sec),
            rate(h.sustainable_rate_per_sec),
            rate_reason(e)
        ),
    ];
    if h.churn_estimate_per_sec > 0.0 {
        evidence.push(format!(
            "headroom: at this churn the {} free ports last ≈ {:.0} s",
            int(h.free_ports),
            h.free_ports as f64 / h.churn_estimate_per_sec
        ));
    }
    Some(Finding {
        cause: Cause::TimeWaitPressure,
        severity: Severity::Warning,
        summary: format!(
            "{} → {} holds {:.0} % of its ephemeral ports; connects will fail with EADDRNOTAVAIL if churn keeps up",
            pool.local_ip,
            pool.destination,
            pool.utilisation * 100.0
        ),
        evidence,
        remedies: remedies::port_exhaustion(),
        corrections: remedies::corrections(),
    })
}

fn pressure_from_run(e: &Evidence, run: &RunEvidence) -> Option<Finding> {
    let pool = e.pool.as_ref()?;
    let churn = run.reconnects_per_sec();
    let sustainable = e.sustainable_rate_per_sec();
    let fill = pct(pool.peak_ports_in_use, pool.pool_size);
    let client_holds_tw =
        run.policy == Policy::ClientCloses || pool.peak_time_wait * 10 >= pool.pool_size;
    if !(fill >= 50.0 || (client_holds_tw && churn > 0.5 * sustainable)) {
        return None;
    }
    let dest = dest_name(Some(run));
    let free = pool.pool_size.saturating_sub(pool.peak_ports_in_use);
    let mut evidence = vec![
        range_line(e, run.source_ips),
        format!(
            "the fullest pool to {dest} held {} of {} ports ({fill:.0} %); TIME_WAIT peaked at {}",
            int(pool.peak_ports_in_use),
            int(pool.pool_size),
            int(pool.peak_time_wait)
        ),
        format!(
            "churn: {}/s new connections against {}/s sustainable ({})",
            rate(churn),
            rate(sustainable),
            rate_reason(e)
        ),
    ];
    if churn > sustainable && churn > 0.0 {
        evidence.push(format!(
            "headroom: at {}/s the {} free ports last ≈ {:.1} s; a run longer than that fails with EADDRNOTAVAIL",
            rate(churn),
            int(free),
            free as f64 / churn
        ));
    }
    evidence.push(policy_line(run.policy).to_string());
    if let Some(line) = slow_scan_line(run, e.pool.as_ref()) {
        evidence.push(line);
    }
    Some(Finding {
        cause: Cause::TimeWaitPressure,
        severity: Severity::Warning,
        summary: if churn > sustainable {
            format!(
                "No port failures yet, but TIME_WAIT filled {fill:.0} % of the pool to {dest}; at this churn it will run out"
            )
        } else {
            format!(
                "No port failures: new connections to {dest} run at {:.0} % of the rate the pool sustains, close to its limit",
                churn * 100.0 / sustainable.max(f64::MIN_POSITIVE)
            )
        },
        evidence,
        remedies: remedies::port_exhaustion(),
        corrections: remedies::corrections(),
    })
}

fn listen_queue_overflow(e: &Evidence) -> Option<Finding> {
    let counters = e.counters_delta.as_ref();
    let overflows = counters.map_or(0, |c| c.listen_overflows);
    let drops = counters.map_or(0, |c| c.listen_drops);
    let (slow, timeouts, response_timeouts, ana) = e.run.as_ref().map_or((0, 0, 0, 0), |r| {
        (
            r.slow_connects,
            r.failures.connect_timeout,
            r.failures.response_timeout,
            r.failures.addr_not_available,
        )
    });
    if overflows == 0 && drops == 0 && slow == 0 && timeouts == 0 {
        return None;
    }
    if e.run.is_some() && ana > 0 && timeouts == 0 && slow == 0 {
        return None; // drops without slow connects next to exhaustion: not the story
    }
    let mut evidence = Vec::new();
    if overflows + drops > 0 {
        evidence.push(format!(
            "ListenOverflows +{} and ListenDrops +{} {}: an accept queue was full and SYNs or final ACKs were dropped",
            int(overflows),
            int(drops),
            if e.run.is_some() { "during the run".to_string() } else { format!("in {}", secs(e.counters_interval_ms)) }
        ));
    }
    if slow > 0 {
        evidence.push(format!(
            "{} connects took 1 s or more: the SYN was retransmitted (after 1 s, then 3 s), which a dropping listener causes",
            int(slow)
        ));
    }
    if timeouts > 0 {
        evidence.push(format!("{} connects timed out", int(timeouts)));
    }
    if response_timeouts > 0 && overflows + drops > 0 {
        evidence.push(format!(
            "{} requests timed out waiting for a response: their connection looked open to the client while the server had not accepted it yet",
            int(response_timeouts)
        ));
    }
    if let Some(pool) = &e.pool {
        evidence.push(format!(
            "no port shortage: the fullest pool held {} of {} ports",
            int(pool.peak_ports_in_use),
            int(pool.pool_size)
        ));
    }
    evidence.push(format!(
        "net.core.somaxconn = {} caps every listen() backlog",
        e.settings.somaxconn
    ));
    let failed = timeouts
        + if overflows + drops > 0 {
            response_timeouts
        } else {
            0
        };
    let severity = if failed > 0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        cause: Cause::ListenQueueOverflow,
        severity,
        summary: "The server's accept queue overflowed: the kernel dropped connection attempts, so connects were slow or timed out — a server-side limit, not a port shortage".to_string(),
        evidence,
        remedies: remedies::listen_queue(),
        corrections: Vec::new(),
    })
}

fn fd_limit(e: &Evidence) -> Option<Finding> {
    let run = e.run.as_ref()?;
    let n = run.failures.too_many_open_files;
    if n == 0 {
        return None;
    }
    Some(Finding {
        cause: Cause::FileDescriptorLimit,
        severity: Severity::Critical,
        summary: format!(
            "{} requests failed with EMFILE/ENFILE: the client ran out of file descriptors, not ports",
            int(n)
        ),
        evidence: vec![
            format!("{} of {} requests ({:.1} %) failed with EMFILE/ENFILE", int(n), int(run.attempts), pct(n, run.attempts)),
            format!(
                "open-file limit of the client: {} soft / {} hard; concurrency {}",
                int(e.settings.nofile_soft),
                int(e.settings.nofile_hard),
                int(run.concurrency)
            ),
        ],
        remedies: remedies::fd_limit(),
        corrections: Vec::new(),
    })
}

fn server_side(e: &Evidence) -> Option<Finding> {
    let run = e.run.as_ref()?;
    let f = &run.failures;
    let n = f.server_side() + f.unreachable;
    if n == 0 {
        return None;
    }
    let dest = dest_name(Some(run));
    let (what, count) = [
        ("refused", f.connection_refused),
        ("reset", f.connection_reset),
        ("timed out", f.response_timeout),
        ("answered malformed HTTP", f.protocol),
        ("unreachable", f.unreachable),
    ]
    .into_iter()
    .max_by_key(|(_, c)| *c)
    .unwrap_or(("failed", n));
    let mut evidence = Vec::new();
    for (label, count, meaning) in [
        (
            "ECONNREFUSED",
            f.connection_refused,
            "nothing listens on the port (or a firewall rejects)",
        ),
        (
            "ECONNRESET",
            f.connection_reset,
            "the server or a hop reset the connection",
        ),
        (
            "response timeout",
            f.response_timeout,
            "no complete response within the request timeout",
        ),
        (
            "protocol",
            f.protocol,
            "malformed or truncated HTTP from the server",
        ),
        ("unreachable", f.unreachable, "no route to the destination"),
    ] {
        if count > 0 {
            evidence.push(format!("{} × {label}: {meaning}", int(count)));
        }
    }
    if f.addr_not_available == 0 {
        evidence.push("no EADDRNOTAVAIL: the client's port pool was not the problem".to_string());
    }
    if e.counters_delta.is_some_and(|c| c.listen_overflows > 0) {
        evidence.push(
            "the listen-queue overflow found above explains timeouts: connections the server never accepted"
                .to_string(),
        );
    }
    let share = pct(n, run.attempts);
    Some(Finding {
        cause: Cause::ServerSide,
        severity: if share >= 1.0 { Severity::Critical } else { Severity::Warning },
        summary: format!(
            "{} of {} requests ({share:.1} %) failed on the server's side: mostly {what} ({}) at {dest}",
            int(n),
            int(run.attempts),
            int(count)
        ),
        evidence,
        remedies: remedies::server_side(),
        corrections: Vec::new(),
    })
}

fn healthy(e: &Evidence) -> Finding {
    let sustainable = e.sustainable_rate_per_sec();
    let mut evidence = vec![format!(
        "sustainable rate per pool when the client closes first: {}/s ({})",
        rate(sustainable),
        rate_reason(e)
    )];
    let summary = if let Some(run) = &e.run {
        evidence.insert(
            0,
            format!(
                "{} of {} requests succeeded; {} connections opened ({}/s)",
                int(run.successes),
                int(run.attempts),
                int(run.connections_opened),
                rate(run.connections_per_sec())
            ),
        );
        if let Some(pool) = &e.pool {
            evidence.push(format!(
                "the fullest pool held {} of {} ports; TIME_WAIT peaked at {}",
                int(pool.peak_ports_in_use),
                int(pool.pool_size),
                int(pool.peak_time_wait)
            ));
        }
        format!(
            "Healthy: no port, descriptor or server failures; headroom {}/s new connections against {}/s used",
            rate(sustainable),
            rate(run.connections_per_sec())
        )
    } else {
        if let Some(pool) = e.snapshot.as_ref().and_then(|s| s.worst_pool()) {
            evidence.push(format!(
                "busiest pool {} → {}: {} of {} ports used",
                pool.local_ip,
                pool.destination,
                int(pool.used),
                int(u64::from(e.settings.usable_ephemeral_ports()))
            ));
        }
        "Healthy: no pool is near exhaustion and no listener is dropping connections".to_string()
    };
    if e.settings.tcp_timestamps == 0 {
        evidence.push(
            "tcp_timestamps=0: TIME_WAIT reuse is impossible even with tcp_tw_reuse".to_string(),
        );
    }
    Finding {
        cause: Cause::Healthy,
        severity: Severity::Info,
        summary,
        evidence,
        remedies: Vec::new(),
        corrections: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{FailureCounts, PoolEvidence};
    use portlab_sockets::{Counters, PortPoolSettings, PortRange};

    fn settings() -> PortPoolSettings {
        PortPoolSettings {
            ip_local_port_range: PortRange {
                low: 40000,
                high: 40999,
            },
            ip_local_reserved_ports: vec![],
            tcp_tw_reuse: TwReuse::Disabled,
            tcp_tw_reuse_delay_ms: Some(1000),
            tcp_timestamps: 1,
            tcp_max_tw_buckets: 131_072,
            tcp_fin_timeout_secs: 60,
            somaxconn: 4096,
            nofile_soft: 1024,
            nofile_hard: 4096,
        }
    }

    fn run(policy: Policy, failures: FailureCounts) -> RunEvidence {
        RunEvidence {
            destination: "127.0.0.1:8080".parse().ok(),
            policy,
            concurrency: 10,
            source_ips: 1,
            attempts: 3000,
            successes: 3000 - failures.total(),
            failures,
            first_failure_ms: Some(800),
            first_addr_not_available_ms: (failures.addr_not_available > 0).then_some(800),
            duration_ms: 1500,
            connections_opened: 1000,
            slow_connects: 0,
            connect_p99_ms: Some(0.5),
        }
    }

    /// A sampled pool: usable ports, TIME_WAIT peak, ports-in-use peak, when it filled.
    fn pool(size: u64, time_wait: u64, in_use: u64, full_at_ms: Option<u64>) -> PoolEvidence {
        PoolEvidence {
            pool_size: size,
            peak_time_wait: time_wait,
            peak_ports_in_use: in_use,
            pool_full_at_ms: full_at_ms,
        }
    }

    fn evidence(run: Option<RunEvidence>, pool: Option<PoolEvidence>) -> Evidence {
        Evidence {
            settings: settings(),
            loopback: true,
            run,
            pool,
            counters_delta: Some(Counters::default()),
            counters_interval_ms: 1500,
            snapshot: None,
        }
    }

    #[test]
    fn exhaustion_is_the_top_finding_with_numbers() {
        let failures = FailureCounts {
            addr_not_available: 2000,
            ..FailureCounts::default()
        };
        let pool = pool(1000, 995, 1000, Some(780));
        let findings = diagnose(&evidence(
            Some(run(Policy::ClientCloses, failures)),
            Some(pool),
        ));
        let top = &findings[0];
        assert_eq!(top.cause, Cause::PortExhaustion);
        assert_eq!(top.severity, Severity::Critical);
        let text = top.evidence.join("\n");
        assert!(
            text.contains("2,000 of 3,000 requests (66.7 %) failed with EADDRNOTAVAIL"),
            "{text}"
        );
        assert!(
            text.contains("TIME_WAIT to 127.0.0.1:8080 peaked at 995"),
            "{text}"
        );
        assert!(text.contains("first EADDRNOTAVAIL at 0.80 s"), "{text}");
        assert!(
            text.contains("1,000 ports ÷ 60 s TIME_WAIT, tcp_tw_reuse=0"),
            "{text}"
        );
        assert!(!top.remedies.is_empty() && !top.corrections.is_empty());
        assert!(findings.iter().all(|f| f.cause != Cause::Healthy));
    }

    #[test]
    fn slow_connects_in_a_filling_pool_are_named_as_the_port_scan() {
        let pool = pool(55_001, 36_000, 36_050, None);
        let mut r = run(Policy::ClientCloses, FailureCounts::default());
        r.connections_opened = 36_000;
        r.duration_ms = 60_000;
        r.connect_p99_ms = Some(145.0);
        let text = diagnose(&evidence(Some(r.clone()), Some(pool.clone())))[0]
            .evidence
            .join("\n");
        assert!(
            text.contains("connect() itself slowed (p99 145 ms) while 36,050 of 55,001"),
            "{text}"
        );
        // In a small pool slow connects are not the scan.
        let small = PoolEvidence {
            pool_size: 1000,
            peak_ports_in_use: 700,
            ..pool
        };
        let text = diagnose(&evidence(Some(r), Some(small)))[0]
            .evidence
            .join("\n");
        assert!(!text.contains("itself slowed"), "{text}");
    }

    #[test]
    fn keep_alive_run_is_healthy() {
        let pool = pool(1000, 0, 10, None);
        let mut r = run(Policy::KeepAlive, FailureCounts::default());
        r.connections_opened = 10;
        let findings = diagnose(&evidence(Some(r), Some(pool)));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].cause, Cause::Healthy);
    }

    #[test]
    fn pressure_without_failures_warns_with_headroom() {
        let pool = pool(1000, 700, 710, None);
        let mut r = run(Policy::ClientCloses, FailureCounts::default());
        r.connections_opened = 700;
        r.duration_ms = 1000;
        let findings = diagnose(&evidence(Some(r), Some(pool)));
        assert_eq!(findings[0].cause, Cause::TimeWaitPressure);
        assert!(
            findings[0].summary.contains("will run out"),
            "{}",
            findings[0].summary
        );
        let text = findings[0].evidence.join("\n");
        assert!(text.contains("290 free ports last ≈ 0.4 s"), "{text}");
    }

    #[test]
    fn pressure_below_the_sustainable_rate_does_not_predict_failure() {
        let pool = pool(1000, 700, 710, None);
        let mut r = run(Policy::ClientCloses, FailureCounts::default());
        r.connections_opened = 710;
        r.duration_ms = 1000;
        let mut e = evidence(Some(r), Some(pool));
        e.settings.tcp_tw_reuse = TwReuse::All; // 1,000 ports ÷ 1 s = 1,000/s sustainable
        let findings = diagnose(&e);
        assert_eq!(findings[0].cause, Cause::TimeWaitPressure);
        assert!(
            findings[0].summary.contains("run at 70 %"),
            "{}",
            findings[0].summary
        );
        assert!(!findings[0].summary.contains("will run out"));
    }

    #[test]
    fn dropped_syns_are_listen_overflow_not_exhaustion() {
        let failures = FailureCounts {
            connect_timeout: 40,
            ..FailureCounts::default()
        };
        let mut r = run(Policy::KeepAlive, failures);
        r.slow_connects = 25;
        let mut e = evidence(Some(r), Some(pool(1000, 0, 50, None)));
        e.counters_delta = Some(Counters {
            listen_overflows: 30,
            listen_drops: 30,
            ..Counters::default()
        });
        let findings = diagnose(&e);
        assert_eq!(findings[0].cause, Cause::ListenQueueOverflow);
        assert!(findings.iter().all(|f| f.cause != Cause::PortExhaustion));
    }

    #[test]
    fn refused_connections_are_the_servers_side() {
        let failures = FailureCounts {
            connection_refused: 3000,
            ..FailureCounts::default()
        };
        let findings = diagnose(&evidence(Some(run(Policy::KeepAlive, failures)), None));
        assert_eq!(findings[0].cause, Cause::ServerSide);
        assert!(findings[0].summary.contains("refused"));
        assert!(findings[0]
            .evidence
            .iter()
            .any(|l| l.contains("port pool was not the problem")));
    }

    #[test]
    fn emfile_is_the_descriptor_limit() {
        let failures = FailureCounts {
            too_many_open_files: 12,
            ..FailureCounts::default()
        };
        let findings = diagnose(&evidence(Some(run(Policy::KeepAlive, failures)), None));
        assert_eq!(findings[0].cause, Cause::FileDescriptorLimit);
    }
}
