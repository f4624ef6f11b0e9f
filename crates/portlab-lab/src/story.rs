//! Turns the steps into the ladder's conclusions: the worst step, its diagnosis (cause,
//! evidence, remedies shown by the fix steps), the verdict, and a paragraph in plain words with
//! the measured numbers. Strings only; nothing is printed here.

use portlab_diagnose::{Cause, Evidence, FailureCounts, PoolEvidence, RunEvidence};
use portlab_sockets::PortPoolSettings;

use crate::report::{Diagnosis, LadderReport, LadderSettings, StepReport, Verdict};
use crate::scenario::{Fix, Path, Policy};
use crate::text::{group_thousands, percent};

/// Version of the `portlab reproduce --json` shape.
const SCHEMA_VERSION: u32 = 1;

pub(crate) fn assemble(
    settings: LadderSettings,
    pool_settings: &PortPoolSettings,
    steps: Vec<StepReport>,
    elapsed_secs: f64,
) -> LadderReport {
    let worst = steps
        .iter()
        .filter(|s| s.failed > 0)
        .max_by(|a, b| a.failure_fraction.total_cmp(&b.failure_fraction))
        .map(|s| s.step);
    let worst_step = worst.and_then(|n| steps.iter().find(|s| s.step == n));
    let verdict = Verdict {
        incident_reproduced: steps.iter().any(|s| s.fix.is_none() && s.failed > 0),
        fixes_hold: steps
            .iter()
            .filter(|s| s.fix.is_some())
            .all(|s| s.failed == 0),
    };
    let diagnosis = match worst_step {
        Some(w) => diagnose(&settings, pool_settings, w, &steps),
        None => clean_diagnosis(&settings, &steps),
    };
    let story = story(&settings, worst_step, &steps);
    LadderReport {
        schema_version: SCHEMA_VERSION,
        settings,
        steps,
        worst_step: worst,
        diagnosis,
        story,
        verdict,
        elapsed_secs,
    }
}

fn sustainable_per_sec(settings: &LadderSettings, pool_ports: u64) -> f64 {
    let block_secs = if settings.tw_reuse == 0 {
        settings.time_wait_secs as f64
    } else {
        1.0
    };
    pool_ports as f64 / block_secs
}

/// What portlab-diagnose needs to know about a step, measured in its sandbox.
fn evidence_of(pool_settings: &PortPoolSettings, w: &StepReport) -> Evidence {
    let mut failures = FailureCounts::default();
    for e in &w.errors {
        let slot = match e.class.as_str() {
            "AddrNotAvailable" => &mut failures.addr_not_available,
            "AddrInUse" => &mut failures.addr_in_use,
            "ConnectionRefused" => &mut failures.connection_refused,
            "ConnectionReset" => &mut failures.connection_reset,
            "ConnectTimeout" => &mut failures.connect_timeout,
            "ResponseTimeout" => &mut failures.response_timeout,
            "TooManyOpenFiles" => &mut failures.too_many_open_files,
            "NoBufferSpace" => &mut failures.no_buffer_space,
            "Unreachable" => &mut failures.unreachable,
            "Protocol" => &mut failures.protocol,
            "Tls" => &mut failures.tls,
            _ => &mut failures.other,
        };
        *slot += e.count;
    }
    let run = RunEvidence {
        destination: Some(w.front),
        policy: match w.policy {
            Policy::KeepAlive => portlab_diagnose::Policy::KeepAlive,
            Policy::Close => portlab_diagnose::Policy::ServerCloses,
            Policy::Drop => portlab_diagnose::Policy::ClientCloses,
        },
        concurrency: w.concurrency as u64,
        source_ips: w.source_ips.len().max(1) as u64,
        attempts: w.requests,
        successes: w.succeeded,
        failures,
        first_failure_ms: w
            .errors
            .iter()
            .filter_map(|e| e.first_at_ms)
            .reduce(f64::min)
            .map(|ms| ms as u64),
        first_addr_not_available_ms: w
            .errors
            .iter()
            .find(|e| e.class == "AddrNotAvailable")
            .and_then(|e| e.first_at_ms)
            .map(|ms| ms as u64),
        duration_ms: (w.elapsed_secs * 1000.0) as u64,
        connections_opened: w.client_connections_opened,
        slow_connects: w.slow_connects,
        connect_p99_ms: None,
    };
    // The load tester's own leg (the upstream leg has its own evidence).
    let client_peak = w.leg_peaks.iter().find(|p| p.leg == "client");
    let pool = PoolEvidence {
        pool_size: w.pool_ports,
        peak_time_wait: client_peak.map_or(0, |p| p.time_wait),
        peak_ports_in_use: client_peak.map_or(0, |p| p.used),
        pool_full_at_ms: client_peak
            .and_then(|p| p.full_after_secs)
            .map(|s| (s * 1000.0) as u64),
    };
    Evidence {
        settings: pool_settings.clone(),
        loopback: true,
        run: Some(run),
        pool: Some(pool),
        counters_delta: None,
        counters_interval_ms: 0,
        snapshot: None,
    }
}

/// Upstream connects that failed with EADDRNOTAVAIL at the forwarder.
fn upstream_addr_not_available(w: &StepReport) -> u64 {
    w.upstream
        .as_ref()
        .and_then(|u| u.connect_failures.get("addr_not_available"))
        .copied()
        .unwrap_or(0)
}

fn client_addr_not_available(w: &StepReport) -> u64 {
    w.errors
        .iter()
        .filter(|e| e.class == "AddrNotAvailable")
        .map(|e| e.count)
        .sum()
}

/// Whether the forwarder's upstream leg, not the load tester's own, ran out of ports.
fn upstream_ran_out(w: &StepReport) -> bool {
    upstream_addr_not_available(w) > client_addr_not_available(w)
}

/// The forwarder as the client of the server: its upstream connects, the failures it counted
/// and the upstream pool the sandbox saw.
fn upstream_evidence_of(pool_settings: &PortPoolSettings, w: &StepReport) -> Option<Evidence> {
    let u = w.upstream.as_ref()?;
    let peak = w.leg_peaks.iter().find(|p| p.leg == "upstream")?;
    let failures = FailureCounts {
        addr_not_available: upstream_addr_not_available(w),
        other: u.connect_failures.values().sum::<u64>() - upstream_addr_not_available(w),
        ..FailureCounts::default()
    };
    let attempts = u.connections_opened + failures.total();
    let run = RunEvidence {
        destination: Some(peak.destination),
        // The forwarder closes its upstream connection when the client hangs up.
        policy: portlab_diagnose::Policy::ClientCloses,
        concurrency: w.concurrency as u64,
        source_ips: 1,
        attempts,
        successes: u.connections_opened,
        failures,
        first_failure_ms: None,
        first_addr_not_available_ms: None,
        duration_ms: (w.elapsed_secs * 1000.0) as u64,
        connections_opened: u.connections_opened,
        slow_connects: 0,
        connect_p99_ms: None,
    };
    let pool = PoolEvidence {
        pool_size: w.pool_ports,
        peak_time_wait: peak.time_wait,
        peak_ports_in_use: peak.used,
        pool_full_at_ms: peak.full_after_secs.map(|s| (s * 1000.0) as u64),
    };
    Some(Evidence {
        run: Some(run),
        pool: Some(pool),
        ..evidence_of(pool_settings, w)
    })
}

fn diagnose(
    settings: &LadderSettings,
    pool_settings: &PortPoolSettings,
    w: &StepReport,
    steps: &[StepReport],
) -> Diagnosis {
    let client = portlab_diagnose::diagnose(&evidence_of(pool_settings, w));
    let upstream = if upstream_ran_out(w) {
        upstream_evidence_of(pool_settings, w)
            .map(|e| portlab_diagnose::diagnose(&e))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let seen_by = w
        .dominant_error
        .as_ref()
        .map_or("failures".to_string(), |e| {
            format!("{} ({})", e.class, e.errno_name)
        });
    let (summary, evidence, findings) = match upstream.first() {
        Some(f) if f.cause == Cause::PortExhaustion => (
            format!(
                "Step {} ({}): the forwarder ran out of ephemeral ports for its upstream \
                 connections: {} upstream connects failed with EADDRNOTAVAIL, and the forwarder \
                 closed those clients' connections, which the load tester saw as {seen_by}. {}.",
                w.step,
                w.name,
                group_thousands(upstream_addr_not_available(w)),
                f.summary
                    .replacen("The client", "The forwarder, as a client,", 1)
            ),
            f.evidence.clone(),
            upstream.into_iter().chain(client).collect::<Vec<_>>(),
        ),
        _ => {
            let top = client.first().filter(|f| f.cause != Cause::Healthy);
            let summary = match top {
                Some(f) => format!("Step {} ({}): {}.", w.step, w.name, f.summary),
                None => format!(
                    "Step {} ({}) failed {} of {} requests, mostly with {seen_by}.",
                    w.step,
                    w.name,
                    group_thousands(w.failed),
                    group_thousands(w.requests),
                ),
            };
            let evidence = top.map(|f| f.evidence.clone()).unwrap_or_default();
            (summary, evidence, client)
        }
    };
    let remedies = steps
        .iter()
        .filter_map(|s| s.fix.map(|f| (f, s)))
        .map(|(fix, s)| remedy_line(fix, s))
        .collect();
    Diagnosis {
        summary,
        evidence,
        sandbox_evidence: lab_evidence(settings, w),
        remedies,
        findings,
    }
}

/// What only the lab knows: which leg filled, the proxy's upstream leg, the prediction.
fn lab_evidence(settings: &LadderSettings, w: &StepReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(p) = &w.peak_pool {
        lines.push(format!(
            "busiest pool: {} → {} ({} leg), {} TIME_WAIT of {} ports",
            p.local_ip,
            p.destination,
            p.leg,
            group_thousands(p.time_wait),
            group_thousands(w.pool_ports)
        ));
    }
    if let Some(u) = &w.upstream {
        let failures: u64 = u.connect_failures.values().sum();
        lines.push(format!(
            "the {} opened {} upstream connections, one per client connection, each closed by \
             the {} when the client hung up ({} upstream connects failed)",
            w.path.label(),
            group_thousands(u.connections_opened),
            w.path.label(),
            group_thousands(failures)
        ));
    }
    lines.push(format!(
        "model: {} predicted ({}); measured {}; sandbox ip_local_port_range {}-{}, \
         tcp_tw_reuse {}",
        percent(w.predicted_failure_fraction),
        match w.prediction_source {
            crate::PredictionSource::Simulate => "portlab simulate",
            crate::PredictionSource::ClosedForm => "closed-form estimate",
        },
        percent(w.failure_fraction),
        settings.port_range.0,
        settings.port_range.1,
        settings.tw_reuse
    ));
    lines
}

fn remedy_line(fix: Fix, s: &StepReport) -> String {
    let outcome = if s.failed == 0 {
        format!("none of {} requests failed", group_thousands(s.requests))
    } else {
        format!(
            "{} of {} requests still failed",
            group_thousands(s.failed),
            group_thousands(s.requests)
        )
    };
    let how = match fix {
        Fix::KeepAlive => format!(
            "Keep connections alive: {} connections carried the load",
            group_thousands(s.client_connections_opened)
        ),
        Fix::PoolingProxy => format!(
            "Replace the forwarder with a pooling reverse proxy: {} upstream connections",
            group_thousands(s.upstream.as_ref().map_or(0, |u| u.connections_opened))
        ),
        Fix::SourceIps => format!(
            "Spread connections over {} source IPs ({} ports per destination)",
            s.source_ips.len(),
            group_thousands(s.pool_ports * s.source_ips.len() as u64)
        ),
        Fix::Http2 => format!(
            "Multiplex over HTTP/2: {} connection{} carried {} streams at once",
            group_thousands(s.client_connections_opened),
            if s.client_connections_opened == 1 {
                ""
            } else {
                "s"
            },
            crate::scenario::HTTP2_STREAMS
        ),
    };
    format!("{how}; {outcome} (step {}).", s.step)
}

fn clean_diagnosis(settings: &LadderSettings, steps: &[StepReport]) -> Diagnosis {
    let peak = steps
        .iter()
        .map(StepReport::peak_time_wait)
        .max()
        .unwrap_or(0);
    Diagnosis {
        findings: Vec::new(),
        sandbox_evidence: Vec::new(),
        summary: "No step failed: the port pools never ran out.".to_string(),
        evidence: vec![format!(
            "Highest TIME_WAIT in one pool: {}; ip_local_port_range {}–{}, tcp_tw_reuse {}.",
            group_thousands(peak),
            settings.port_range.0,
            settings.port_range.1,
            settings.tw_reuse
        )],
        remedies: Vec::new(),
    }
}

/// The paragraph: what the worst step did, why it failed, and what each fix changed.
fn story(settings: &LadderSettings, worst: Option<&StepReport>, steps: &[StepReport]) -> String {
    let mut parts = Vec::new();
    match worst {
        Some(w) => {
            parts.push(incident_sentences(settings, w));
            parts.extend(concurrency_sentence(settings, steps));
        }
        None => parts.push(format!(
            "No request failed in any step: the {}-port pools never filled.",
            group_thousands(steps.first().map_or(0, |s| s.pool_ports))
        )),
    }
    for s in steps {
        if let Some(fix) = s.fix {
            parts.push(fix_sentence(fix, s));
        }
    }
    parts.join(" ")
}

fn incident_sentences(settings: &LadderSettings, w: &StepReport) -> String {
    let mut text = format!(
        "At c={}, the load tester needed a new connection for every one of its {} requests and \
         closed each one itself",
        w.concurrency,
        group_thousands(w.requests)
    );
    if let (Path::Forwarder, Some(u)) = (w.path, &w.upstream) {
        let failed: u64 = u.connect_failures.values().sum();
        let tried = if failed > 0 {
            format!(
                "{} tried, {} opened",
                group_thousands(u.connections_opened + failed),
                group_thousands(u.connections_opened)
            )
        } else {
            group_thousands(u.connections_opened)
        };
        text.push_str(&format!(
            "; the forwarder opened one upstream connection for each client connection \
             ({tried}) and closed it when the client hung up"
        ));
    }
    text.push_str(&format!(
        ". Each close left a TIME_WAIT for {} s on the side that closed first{}.",
        settings.time_wait_secs,
        if w.path == Path::Forwarder {
            ": the client leg and the forwarder's upstream leg alike"
        } else {
            ""
        }
    ));
    if upstream_ran_out(w) {
        text.push_str(&upstream_ending(settings, w));
        return text;
    }
    match w.pool_full_after_secs {
        Some(t) if t > 0.0 => text.push_str(&format!(
            " {} connections got through before the {}-port pool filled, {:.2} s into the run \
             (about {} new connections/s, while one pool sustains {:.1}/s)",
            group_thousands(w.client_connections_opened),
            group_thousands(w.pool_ports),
            t,
            group_thousands((w.pool_ports as f64 / t) as u64),
            sustainable_per_sec(settings, w.pool_ports)
        )),
        _ => text.push_str(&format!(
            " The busiest pool reached {} TIME_WAIT of {} ports",
            group_thousands(w.peak_time_wait()),
            group_thousands(w.pool_ports)
        )),
    }
    match &w.dominant_error {
        Some(e) => text.push_str(&format!(
            "; from then on connect() failed at once: {} of {} requests ({}) failed, {} of them \
             with {} ({}).",
            group_thousands(w.failed),
            group_thousands(w.requests),
            percent(w.failure_fraction),
            group_thousands(e.count),
            e.errno_name,
            e.class
        )),
        None => text.push('.'),
    }
    text
}

/// The forwarder's upstream pool ran out while the clients' did not (many client IPs).
fn upstream_ending(settings: &LadderSettings, w: &StepReport) -> String {
    let peak = w.leg_peaks.iter().find(|p| p.leg == "upstream");
    let filled = match peak.and_then(|p| p.full_after_secs) {
        Some(t) if t > 0.0 => format!(
            "filled {:.2} s into the run (about {} new connections/s, while it sustains \
             {:.1}/s)",
            t,
            group_thousands((w.pool_ports as f64 / t) as u64),
            sustainable_per_sec(settings, w.pool_ports)
        ),
        _ => format!(
            "reached {} TIME_WAIT",
            group_thousands(peak.map_or(0, |p| p.time_wait))
        ),
    };
    let seen = w.dominant_error.as_ref().map_or(String::new(), |e| {
        format!(
            ", {} of them as {} ({})",
            group_thousands(e.count),
            e.class,
            e.errno_name
        )
    });
    format!(
        " The {} clients' pools had room, but the forwarder's one {}-port pool towards the \
         server {filled}; from then on its upstream connect() failed with EADDRNOTAVAIL ({} \
         times) and it closed the client's connection instead: {} of {} requests ({}) failed{seen} \
         — the error the client sees is not the cause, which sits one hop away.",
        w.source_ips.len().max(1),
        group_thousands(w.pool_ports),
        group_thousands(upstream_addr_not_available(w)),
        group_thousands(w.failed),
        group_thousands(w.requests),
        percent(w.failure_fraction),
    )
}

/// When several incident steps ran, whether their outcome tracked the concurrency.
fn concurrency_sentence(settings: &LadderSettings, steps: &[StepReport]) -> Option<String> {
    let incidents: Vec<&StepReport> = steps.iter().filter(|s| s.fix.is_none()).collect();
    let (first, last) = (incidents.first()?, incidents.last()?);
    if incidents.len() < 2 || incidents.iter().any(|s| s.failed == 0) {
        return None;
    }
    let low = incidents.iter().map(|s| s.succeeded).min()?;
    let high = incidents.iter().map(|s| s.succeeded).max()?;
    // Within 2 % of each other: the pool, not the concurrency, set the limit.
    if high - low > high / 50 {
        return None;
    }
    Some(format!(
        "Concurrency did not matter: from c={} to c={}, {} requests got through each time. \
         The limit is new connections per {} s against the pool, not connections at once.",
        first.concurrency,
        last.concurrency,
        if low == high {
            group_thousands(low)
        } else {
            format!("{}–{}", group_thousands(low), group_thousands(high))
        },
        settings.time_wait_secs
    ))
}

fn fix_sentence(fix: Fix, s: &StepReport) -> String {
    let outcome = if s.failed == 0 {
        "none failed".to_string()
    } else {
        format!("{} still failed", group_thousands(s.failed))
    };
    match fix {
        Fix::KeepAlive => format!(
            "With keep-alive, {} connections carried all {} requests and {outcome}.",
            group_thousands(s.client_connections_opened),
            group_thousands(s.requests)
        ),
        Fix::PoolingProxy => format!(
            "With a pooling proxy in place of the forwarder, {} upstream connections carried \
             all {} requests and {outcome}{}.",
            group_thousands(s.upstream.as_ref().map_or(0, |u| u.connections_opened)),
            group_thousands(s.requests),
            match s.policy {
                Policy::Close =>
                    " (the client asked Connection: close, so its TIME_WAIT sat on \
                                  the proxy's listening port, which takes no ephemeral port)",
                Policy::Drop => " although the clients still closed every connection",
                Policy::KeepAlive => "",
            }
        ),
        Fix::SourceIps => format!(
            "Spread over {} source IPs, still closing every connection, the load tester had {} \
             ports to one destination; the busiest pool peaked at {} TIME_WAIT and {outcome}.",
            s.source_ips.len(),
            group_thousands(s.pool_ports * s.source_ips.len() as u64),
            group_thousands(s.peak_time_wait())
        ),
        Fix::Http2 => format!(
            "Over HTTP/2, {} connection{} with {} streams in flight carried all {} requests \
             and {outcome}.",
            group_thousands(s.client_connections_opened),
            if s.client_connections_opened == 1 {
                ""
            } else {
                "s"
            },
            crate::scenario::HTTP2_STREAMS,
            group_thousands(s.requests)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ErrorCount, PoolPeak, UpstreamReport};
    use crate::sandbox_config::Isolation;

    fn settings() -> LadderSettings {
        LadderSettings {
            isolation: Isolation::NetworkNamespace,
            port_range: (40000, 40999),
            tw_reuse: 0,
            time_wait_secs: 60,
            requests: 5000,
            upstream_pool: 8,
        }
    }

    fn pool_settings() -> PortPoolSettings {
        let ready = crate::anchor::Ready {
            isolation: Isolation::NetworkNamespace,
            port_range: (40000, 40999),
            tw_reuse: 0,
            settings: crate::anchor::SandboxSettings {
                reserved_ports: Vec::new(),
                tcp_tw_reuse_delay_ms: Some(1000),
                tcp_timestamps: 1,
                tcp_max_tw_buckets: 131072,
                tcp_fin_timeout_secs: 60,
                somaxconn: 4096,
                nofile: (1024, 1024),
            },
        };
        ready.port_pool_settings()
    }

    fn peak(leg: &str, dest: &str, time_wait: u64) -> PoolPeak {
        PoolPeak {
            leg: leg.to_string(),
            local_ip: "127.0.0.1".parse().expect("ip"),
            destination: dest.parse().expect("addr"),
            time_wait,
            used: time_wait,
            full_after_secs: (time_wait == 1000).then_some(0.25),
        }
    }

    /// A forwarder step: `client_failed` requests failed at the client's connect(),
    /// `upstream_failed` at the forwarder's (seen by the client as resets).
    fn step(n: usize, fix: Option<Fix>, client_failed: u64, upstream_failed: u64) -> StepReport {
        let failed = client_failed + upstream_failed;
        let mut errors = Vec::new();
        if client_failed > 0 {
            errors.push(ErrorCount {
                class: "AddrNotAvailable".into(),
                errno_name: "EADDRNOTAVAIL".into(),
                count: client_failed,
                first_at_ms: Some(250.0),
            });
        }
        if upstream_failed > 0 {
            errors.push(ErrorCount {
                class: "ConnectionReset".into(),
                errno_name: "ECONNRESET/EPIPE".into(),
                count: upstream_failed,
                first_at_ms: Some(250.0),
            });
        }
        let upstream = UpstreamReport {
            connections_opened: 5000 - failed,
            peak_open: None,
            connect_failures: [("addr_not_available".to_string(), upstream_failed)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
        };
        let client_tw = if client_failed > 0 { 1000 } else { 300 };
        let upstream_tw = if failed > 0 { 1000 } else { 300 };
        StepReport {
            step: n,
            name: format!("step {n}"),
            fix,
            path: Path::Forwarder,
            policy: Policy::Drop,
            concurrency: 100,
            requests: 5000,
            succeeded: 5000 - failed,
            failed,
            failure_fraction: failed as f64 / 5000.0,
            dominant_error: errors.first().cloned(),
            errors,
            elapsed_secs: 0.5,
            client_connections_opened: 5000 - client_failed,
            new_connections_per_sec: 2000.0,
            slow_connects: 0,
            upstream: Some(upstream),
            source_ips: Vec::new(),
            pool_ports: 1000,
            peak_pool: Some(peak("client", "127.1.1.1:80", client_tw)),
            leg_peaks: vec![
                peak("client", "127.1.1.1:80", client_tw),
                peak("upstream", "127.0.0.1:8080", upstream_tw),
            ],
            peak_time_wait_total: client_tw + upstream_tw,
            pool_full_after_secs: (failed > 0).then_some(0.25),
            predicted_failure_fraction: failed as f64 / 5000.0,
            prediction_source: crate::PredictionSource::ClosedForm,
            front: "127.1.1.1:80".parse().expect("addr"),
            peak_ports_in_use: 1000,
            timeline: Vec::new(),
            load_timeline: Vec::new(),
            load_progress: Vec::new(),
            counters: Default::default(),
            latency_us: (0, 0),
            retry_attempts: 0,
            short_circuited: 0,
            breaker_opened: 0,
        }
    }

    #[test]
    fn client_leg_exhaustion_is_diagnosed_and_told_with_the_numbers() {
        let steps = vec![step(1, None, 4000, 0), step(2, Some(Fix::KeepAlive), 0, 0)];
        let r = assemble(settings(), &pool_settings(), steps, 3.0);
        assert_eq!(r.worst_step, Some(1));
        assert!(r.verdict.incident_reproduced && r.verdict.fixes_hold);
        assert_eq!(r.diagnosis.findings[0].cause, Cause::PortExhaustion);
        assert!(
            r.diagnosis.summary.contains("127.1.1.1:80"),
            "{}",
            r.diagnosis.summary
        );
        for needle in [
            "the 1,000-port pool filled, 0.25 s into the run",
            "4,000 of 5,000 requests (80.0 %) failed",
            "With keep-alive",
            "none failed",
        ] {
            assert!(r.story.contains(needle), "{needle:?} not in {}", r.story);
        }
    }

    #[test]
    fn upstream_leg_exhaustion_is_blamed_on_the_forwarder() {
        let steps = vec![
            step(1, None, 0, 4000),
            step(2, Some(Fix::PoolingProxy), 0, 0),
        ];
        let r = assemble(settings(), &pool_settings(), steps, 3.0);
        assert!(
            r.diagnosis
                .summary
                .contains("the forwarder ran out of ephemeral ports"),
            "{}",
            r.diagnosis.summary
        );
        assert!(
            r.diagnosis.evidence[0].contains("127.0.0.1:8080"),
            "{:?}",
            r.diagnosis.evidence
        );
        assert!(r.story.contains("one hop away"), "{}", r.story);
    }

    #[test]
    fn a_failing_fix_fails_the_verdict() {
        let steps = vec![step(1, None, 4000, 0), step(2, Some(Fix::SourceIps), 10, 0)];
        let r = assemble(settings(), &pool_settings(), steps, 3.0);
        assert!(r.verdict.incident_reproduced);
        assert!(!r.verdict.fixes_hold);
    }
}
