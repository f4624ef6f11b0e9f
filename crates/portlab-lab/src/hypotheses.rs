//! `portlab reproduce --hypotheses`: the seed's own question — why did hey fail at `-c 50`
//! and not at `-c 10`? — tested against every mechanism that makes failures depend on
//! concurrency, each on the seed's ladder in its own sandboxes, with a prediction beside every
//! measurement and a story that says which mechanisms reproduce the pattern and how to tell
//! them apart.
//!
//! Every step paces each worker at [`PER_WORKER_QPS`] (hey's `-q`) for [`STEP_SECS`], so a
//! step at concurrency c sends c × q requests per second — the new-connection rate is then
//! set by c, which is what the mechanisms are about — and every worker carries an equal share
//! of the requests, as hey's workers do (hey splits `-n` evenly over `-c`).

use std::path::Path as FsPath;
use std::time::Instant;

use serde::Serialize;

use crate::report::StepReport;
use crate::run::{run_step, LabEvent};
use crate::sandbox_config::SandboxConfig;
use crate::scenario::{source_ips, LabConfig, Path, Policy, Scenario, StepExtras};
use crate::text::{group_thousands, percent};
use crate::LabError;

/// Requests per second of each worker (`portlab load -q`).
pub const PER_WORKER_QPS: u64 = 20;
/// Length of each step at that pace, seconds (requests = c × q × this).
pub const STEP_SECS: u64 = 2;
/// The seed's concurrency without failures and the one with them (hey `-c 10`: 0 %,
/// `-c 50`: 16.8 %). Each mechanism's knob is set so its threshold falls between them, at
/// their geometric mean (≈ 22).
pub const SEED_CLEAN_C: usize = 10;
/// See [`SEED_CLEAN_C`].
pub const SEED_FAILING_C: usize = 50;
/// A measured failure share may differ from its prediction by this much (5 points).
pub const TOLERANCE: f64 = 0.05;
/// Listen backlog of the backlog hypotheses: Linux queues backlog + 1 connections
/// (include/net/sock.h `sk_acceptq_is_full()`: `ack_backlog > max_ack_backlog`), so c = 10
/// fits, c = 50 overflows, and c = 100's overflow is admitted within two SYN retransmissions
/// (1 s, then 2 s later) — before `portlab load`'s 10 s connect timeout.
pub const BACKLOG: u64 = 33;
/// The slow acceptor's pause after each accept (`serve --accept-delay`).
pub const ACCEPT_DELAY_MS: u64 = 5;
/// `serve --close-after`: requests per connection before the server closes it (nginx's
/// `keepalive_requests`, 1000 by default since 1.19.10, 100 before).
pub const CLOSE_AFTER: u64 = 10;
/// `tcp_tw_reuse_delay` of the rate-limited hypothesis, ms (the kernel default, 6.14+).
pub const TW_REUSE_DELAY_MS: u64 = 1000;

/// A mechanism that can make failures depend on concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Connections churn (the client closes first) and TIME_WAIT ports are recycled after
    /// `tcp_tw_reuse_delay`: the pool holds while c × q < ports ÷ delay.
    RateLimitedExhaustion,
    /// A burst of c connects against a small backlog and a slow acceptor,
    /// `tcp_abort_on_overflow=0`: SYNs are dropped and retransmitted.
    BacklogOverflowDrop,
    /// The same with `tcp_abort_on_overflow=1`.
    BacklogOverflowReset,
    /// Keep-alive clients through the TCP forwarder, whose one-source-IP upstream leg has
    /// fewer ports than there are clients: the extra clients are reset.
    ForwarderUpstreamLeg,
    /// The server closes each kept-alive connection after [`CLOSE_AFTER`] requests.
    ServerConnectionCap,
}

impl Mechanism {
    /// Every mechanism, in the table's order.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::RateLimitedExhaustion,
        Mechanism::BacklogOverflowDrop,
        Mechanism::BacklogOverflowReset,
        Mechanism::ForwarderUpstreamLeg,
        Mechanism::ServerConnectionCap,
    ];

    /// Short human name.
    pub fn label(self) -> &'static str {
        match self {
            Mechanism::RateLimitedExhaustion => "rate-limited exhaustion",
            Mechanism::BacklogOverflowDrop => "backlog overflow, abort_on_overflow=0",
            Mechanism::BacklogOverflowReset => "backlog overflow, abort_on_overflow=1",
            Mechanism::ForwarderUpstreamLeg => "forwarder's upstream leg",
            Mechanism::ServerConnectionCap => "server closes after N requests",
        }
    }
}

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// `portlab simulate` (open loop at c × q for the rate-limited pool; closed loop paced at
    /// q per worker for the upstream leg).
    Simulate,
    /// Arithmetic of the mechanism (backlog + 1 queued, the closer holds TIME_WAIT, …).
    Arithmetic,
}

/// One concurrency of one mechanism.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HypothesisStep {
    /// Concurrent workers (`-c`).
    pub concurrency: usize,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// `failed / requests`, 0–1.
    pub failure_fraction: f64,
    /// The prediction, 0–1.
    pub predicted_failure_fraction: f64,
    /// Where the prediction came from.
    pub basis: Basis,
    /// The most frequent failure class (`AddrNotAvailable`, `ConnectionReset`, …).
    pub dominant_error: Option<String>,
    /// Successful connects that took 1 s or more (a dropped SYN was retransmitted).
    pub slow_connects: u64,
    /// Predicted slow connects (backlog arithmetic; `None` where no SYN should be dropped).
    pub predicted_slow_connects: Option<u64>,
    /// Kernel counters of the sandbox over the step.
    pub listen_overflows: u64,
    /// TIME_WAIT entries connect() took over (`tcp_tw_reuse`).
    pub tw_recycled: u64,
    /// Most TIME_WAIT sockets in the sandbox at one sample (either side).
    pub peak_time_wait_total: u64,
    /// Most TIME_WAIT sockets on the load tester's ports (client leg) at one sample.
    pub peak_time_wait_client: u64,
    /// Upstream connects of the forwarder that failed with EADDRNOTAVAIL.
    pub upstream_addr_not_available: u64,
    /// Connections the load tester opened.
    pub connections_opened: u64,
    /// 99th percentile latency of answered requests, ms.
    pub latency_p99_ms: f64,
    /// Wall time of the load, seconds.
    pub elapsed_secs: f64,
}

/// One mechanism on the whole ladder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MechanismReport {
    /// Which mechanism.
    pub mechanism: Mechanism,
    /// Its human name.
    pub label: String,
    /// What the sandbox was set to, in one line (range, sysctls, server and load flags).
    pub setup: String,
    /// Why the knob has the value it has (from the model or the arithmetic).
    pub reasoning: String,
    /// One entry per ladder concurrency.
    pub steps: Vec<HypothesisStep>,
    /// The most frequent failure class over the ladder.
    pub dominant_error: Option<String>,
    /// What portlab saw that marks this mechanism, in one line.
    pub evidence: String,
    /// No failure at or below c = 10 and more than 5 % at c = 50 (the seed's pattern).
    pub matches_seed_pattern: bool,
    /// Every step within [`TOLERANCE`] of its prediction.
    pub within_tolerance: bool,
}

/// A remedy the seed names, tried on the rate-limited pool at c = [`SEED_FAILING_C`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Remedy {
    /// No remedy: the failing step as it is.
    None,
    /// `--retry 3 --backoff 100`: waits of 50–100, 100–200, 200–400 ms, all shorter than
    /// the 1 s the pool needs to recycle a port.
    RetryShortBackoff,
    /// `--retry 3 --backoff 600`: waits of 300–600, 600–1200, 1200–2400 ms, reaching the
    /// recycle time.
    RetryLongBackoff,
    /// `--circuit-breaker ratio=0.5,window=1s,min=20,open=1s,probes=3`.
    CircuitBreaker,
}

impl Remedy {
    /// Every remedy step, in order.
    pub const ALL: [Remedy; 4] = [
        Remedy::None,
        Remedy::RetryShortBackoff,
        Remedy::RetryLongBackoff,
        Remedy::CircuitBreaker,
    ];

    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Remedy::None => "no remedy",
            Remedy::RetryShortBackoff => "retry 3, backoff 100 ms",
            Remedy::RetryLongBackoff => "retry 3, backoff 600 ms",
            Remedy::CircuitBreaker => "circuit breaker",
        }
    }

    fn load_args(self) -> Vec<String> {
        let args: &[&str] = match self {
            Remedy::None => &[],
            Remedy::RetryShortBackoff => &["--retry", "3", "--backoff", "100"],
            Remedy::RetryLongBackoff => &["--retry", "3", "--backoff", "600"],
            Remedy::CircuitBreaker => &[
                "--circuit-breaker",
                "ratio=0.5,window=1s,min=20,open=1s,probes=3",
            ],
        };
        args.iter().map(|a| a.to_string()).collect()
    }
}

/// One remedy step: what it did to failures, latency and the pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemedyStep {
    /// Which remedy.
    pub remedy: Remedy,
    /// Its human name.
    pub label: String,
    /// Requests sent (each counted once: succeeded + failed + short-circuited).
    pub requests: u64,
    /// Requests answered.
    pub succeeded: u64,
    /// Requests whose last attempt failed.
    pub failed: u64,
    /// Requests the breaker refused without a connect.
    pub short_circuited: u64,
    /// Retry attempts (after a failed attempt).
    pub retries: u64,
    /// connect() calls that reached the pool: succeeded + failed + retries.
    pub pool_attempts: u64,
    /// Of them, those that found it empty (EADDRNOTAVAIL): failed + retries.
    pub pool_failures: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Median and 99th-percentile latency of answered requests, ms.
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// Wall time, seconds.
    pub elapsed_secs: f64,
    /// Answered requests per second.
    pub answered_per_sec: f64,
}

/// The outcome of `portlab reproduce --hypotheses`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HypothesesReport {
    /// Version of this JSON shape.
    pub schema_version: u32,
    /// Requests per second of each worker.
    pub per_worker_qps: u64,
    /// Seconds each step lasts at that pace.
    pub step_secs: u64,
    /// The mechanisms, in order.
    pub mechanisms: Vec<MechanismReport>,
    /// The seed's remedies (retry with backoff, circuit breaker) on the rate-limited pool at
    /// c = 50, each in its own sandbox.
    pub remedies: Vec<RemedyStep>,
    /// What the remedy steps show, with their numbers.
    pub remedy_story: String,
    /// Which ones reproduce the pattern, what tells them apart, what to capture.
    pub story: String,
    /// Some mechanism reproduced the pattern and every prediction held.
    pub verdict: HypothesesVerdict,
    /// Wall time, seconds.
    pub elapsed_secs: f64,
}

/// Whether the run showed what it is meant to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HypothesesVerdict {
    /// Labels of the mechanisms that reproduced the seed's pattern.
    pub reproduced_by: Vec<String>,
    /// Every measured failure share within 5 points of its prediction.
    pub predictions_hold: bool,
}

/// The sizes every mechanism derives from the seed's two concurrencies.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    /// Ports of the rate-limited pool: the crossing c = ports ÷ (q × delay) at ≈ 22.
    rate_ports: u64,
    /// Ports of the forwarder's upstream leg: one per kept-alive client up to c ≈ 22.
    upstream_ports: u64,
}

impl Knobs {
    fn new() -> Self {
        let crossing = ((SEED_CLEAN_C * SEED_FAILING_C) as f64).sqrt();
        let delay_secs = TW_REUSE_DELAY_MS as f64 / 1000.0;
        Knobs {
            rate_ports: (crossing * PER_WORKER_QPS as f64 * delay_secs).round() as u64,
            upstream_ports: crossing.round() as u64,
        }
    }
}

const RANGE_LOW: u16 = 40000;

fn range_of(ports: u64) -> (u16, u16) {
    let high = u64::from(RANGE_LOW) + ports.max(1) - 1;
    (RANGE_LOW, u16::try_from(high).unwrap_or(u16::MAX))
}

/// The scenario of `mechanism` at concurrency `c`.
fn scenario(mechanism: Mechanism, c: usize, knobs: Knobs) -> Scenario {
    let requests = c as u64 * PER_WORKER_QPS * STEP_SECS;
    let mut sandbox = SandboxConfig::default();
    let mut extras = StepExtras {
        load_args: vec!["-q".to_string(), PER_WORKER_QPS.to_string()],
        ..StepExtras::default()
    };
    let (path, policy, clients) = match mechanism {
        Mechanism::RateLimitedExhaustion => {
            sandbox.port_range = range_of(knobs.rate_ports);
            sandbox.tw_reuse = 1;
            if FsPath::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists() {
                sandbox.sysctls.push((
                    "tcp_tw_reuse_delay".to_string(),
                    TW_REUSE_DELAY_MS.to_string(),
                ));
            }
            (Path::Direct, Policy::Drop, Vec::new())
        }
        Mechanism::BacklogOverflowDrop | Mechanism::BacklogOverflowReset => {
            let abort = u8::from(mechanism == Mechanism::BacklogOverflowReset);
            sandbox
                .sysctls
                .push(("tcp_abort_on_overflow".to_string(), abort.to_string()));
            extras.server_args = vec![
                "--backlog".to_string(),
                BACKLOG.to_string(),
                "--accept-delay".to_string(),
                format!("{ACCEPT_DELAY_MS}ms"),
            ];
            (Path::Direct, Policy::KeepAlive, Vec::new())
        }
        Mechanism::ForwarderUpstreamLeg => {
            sandbox.port_range = range_of(knobs.upstream_ports);
            // Enough client IPs that the clients' own pools hold every client: only the
            // forwarder's upstream leg (one source IP) can run out.
            let ips = (100usize.max(c)).div_ceil(knobs.upstream_ports as usize) + 1;
            (Path::Forwarder, Policy::KeepAlive, source_ips(ips))
        }
        Mechanism::ServerConnectionCap => {
            extras.server_args = vec!["--close-after".to_string(), CLOSE_AFTER.to_string()];
            (Path::Forwarder, Policy::KeepAlive, Vec::new())
        }
    };
    extras.sandbox = Some(sandbox);
    Scenario {
        name: format!("{} c={c}", mechanism.label()),
        fix: None,
        path,
        policy,
        concurrency: c,
        requests,
        source_ips: clients,
        upstream_pool: 8,
        extras,
    }
}

/// Runs every mechanism on `config.ladder` (each step in its own sandbox) and assembles the
/// report. `on_event` sees each step start and finish.
///
/// # Errors
/// The first step's [`LabError`].
pub fn run_hypotheses(
    config: &LabConfig,
    on_event: &mut dyn FnMut(&LabEvent<'_>),
) -> Result<HypothesesReport, LabError> {
    let started = Instant::now();
    let knobs = Knobs::new();
    let mut config = config.clone();
    config.target = None;
    let total = Mechanism::ALL.len() * config.ladder.len();
    let mut n = 0;
    let mut mechanisms = Vec::new();
    for mechanism in Mechanism::ALL {
        let mut measured = Vec::new();
        for &c in &config.ladder {
            n += 1;
            let s = scenario(mechanism, c, knobs);
            on_event(&LabEvent::StepStarted {
                step: n,
                total,
                scenario: &s,
            });
            let mut report = run_step(&config, &s, n)?;
            report.step = n;
            on_event(&LabEvent::StepFinished {
                total,
                report: &report,
            });
            measured.push(report);
        }
        mechanisms.push(assess(&config, mechanism, knobs, &measured));
    }
    let mut remedies = Vec::new();
    let remedy_total = Remedy::ALL.len();
    for (i, remedy) in Remedy::ALL.into_iter().enumerate() {
        let mut s = scenario(Mechanism::RateLimitedExhaustion, SEED_FAILING_C, knobs);
        s.name = format!("remedy: {}", remedy.label());
        s.extras.load_args.extend(remedy.load_args());
        on_event(&LabEvent::StepStarted {
            step: i + 1,
            total: remedy_total,
            scenario: &s,
        });
        let report = run_step(&config, &s, i + 1)?;
        on_event(&LabEvent::StepFinished {
            total: remedy_total,
            report: &report,
        });
        remedies.push(remedy_step(remedy, &report));
    }
    let remedy_story = remedy_story(&remedies, knobs);
    let story = story(&mechanisms, knobs);
    let verdict = HypothesesVerdict {
        reproduced_by: mechanisms
            .iter()
            .filter(|m| m.matches_seed_pattern)
            .map(|m| m.label.clone())
            .collect(),
        predictions_hold: mechanisms.iter().all(|m| m.within_tolerance),
    };
    Ok(HypothesesReport {
        schema_version: 1,
        per_worker_qps: PER_WORKER_QPS,
        step_secs: STEP_SECS,
        mechanisms,
        remedies,
        remedy_story,
        story,
        verdict,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// Predicted failure share and slow connects of one step.
fn predict(
    config: &LabConfig,
    mechanism: Mechanism,
    knobs: Knobs,
    c: usize,
    requests: u64,
    latency_p50_us: u64,
    elapsed_secs: f64,
) -> (f64, Basis, Option<u64>) {
    match mechanism {
        Mechanism::RateLimitedExhaustion => {
            let (low, high) = range_of(knobs.rate_ports);
            // The pace is an absolute schedule (k × 1/q from the start): a worker that falls
            // behind catches up, so the demand is c × q even when the run's tail lags. A run
            // that took clearly longer than its schedule (> 10 %) could not keep the pace on
            // this machine: its demand was the rate it kept.
            let paced = c as u64 * PER_WORKER_QPS;
            let rate = if elapsed_secs > 1.1 * STEP_SECS as f64 {
                ((requests as f64 / elapsed_secs).round() as u64).clamp(1, paced)
            } else {
                paced
            };
            // A port is held for the request's latency before its TIME_WAIT starts: the
            // measured median, as the kernel-agreement grid does (scripts/model-grid.sh).
            let latency_us = latency_p50_us.max(300);
            let args = [
                "--rate".to_string(),
                rate.to_string(),
                "--latency".to_string(),
                format!("{latency_us}us"),
                "--connection".to_string(),
                "drop".to_string(),
                "--tw-reuse".to_string(),
                "1".to_string(),
                "--tw-reuse-delay-ms".to_string(),
                TW_REUSE_DELAY_MS.to_string(),
                "--range".to_string(),
                format!("{low}-{high}"),
                "-n".to_string(),
                requests.to_string(),
            ];
            match simulate(config, &args) {
                Some(f) => (f, Basis::Simulate, None),
                None => {
                    // Closed form: the pool passes ports ÷ delay connections per second.
                    let sustainable = knobs.rate_ports as f64 * 1000.0 / TW_REUSE_DELAY_MS as f64;
                    let f = (1.0 - sustainable / rate as f64).max(0.0);
                    (f, Basis::Arithmetic, None)
                }
            }
        }
        Mechanism::BacklogOverflowDrop | Mechanism::BacklogOverflowReset => {
            // The burst of c connects meets a queue of backlog + 1 and one accept; the rest
            // have their SYNs dropped (net/ipv4/tcp_input.c tcp_conn_request(): accept queue
            // full → ListenOverflows, drop — before tcp_abort_on_overflow is consulted, which
            // only resets a final ACK that finds the queue full). They are retransmitted after
            // 1 s, and the slow acceptor has drained the queue by then: slow, not failed.
            let overflow = (c as u64).saturating_sub(BACKLOG + 2);
            (0.0, Basis::Arithmetic, Some(overflow))
        }
        Mechanism::ForwarderUpstreamLeg => {
            let (low, high) = range_of(knobs.upstream_ports);
            let interval_us = 1_000_000 / PER_WORKER_QPS;
            let args = [
                "-c".to_string(),
                c.to_string(),
                "--latency".to_string(),
                format!("{interval_us}us"),
                "--failed-connect-us".to_string(),
                interval_us.to_string(),
                "--connection".to_string(),
                "keep-alive".to_string(),
                "--range".to_string(),
                format!("{low}-{high}"),
                "-n".to_string(),
                requests.to_string(),
            ];
            match simulate(config, &args) {
                Some(f) => (f, Basis::Simulate, None),
                None => {
                    let p = knobs.upstream_ports as f64;
                    (
                        ((c as f64 - p) / c as f64).max(0.0),
                        Basis::Arithmetic,
                        None,
                    )
                }
            }
        }
        // The server closes first, so it holds the TIME_WAIT on its listening port's
        // 4-tuples; the clients' ports stay free (RFC 9293 §3.6; research §1.7 D3). Even if
        // every reconnect left a TIME_WAIT on the client, requests ÷ N + c of them fit the
        // 1,000-port pool.
        Mechanism::ServerConnectionCap => (0.0, Basis::Arithmetic, None),
    }
}

fn simulate(config: &LabConfig, args: &[String]) -> Option<f64> {
    let output = std::process::Command::new(&config.exe)
        .args(["simulate", "--os", "linux", "--loopback", "--json"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    value
        .pointer("/simulation/failure_fraction")
        .and_then(serde_json::Value::as_f64)
}

fn upstream_addr_not_available(s: &StepReport) -> u64 {
    s.upstream
        .as_ref()
        .and_then(|u| u.connect_failures.get("addr_not_available"))
        .copied()
        .unwrap_or(0)
}

fn assess(
    config: &LabConfig,
    mechanism: Mechanism,
    knobs: Knobs,
    measured: &[StepReport],
) -> MechanismReport {
    let steps: Vec<HypothesisStep> = measured
        .iter()
        .map(|s| {
            let (predicted, basis, predicted_slow) = predict(
                config,
                mechanism,
                knobs,
                s.concurrency,
                s.requests,
                s.latency_us.0,
                s.elapsed_secs,
            );
            HypothesisStep {
                concurrency: s.concurrency,
                requests: s.requests,
                failed: s.failed,
                failure_fraction: s.failure_fraction,
                predicted_failure_fraction: predicted,
                basis,
                dominant_error: s.dominant_error.as_ref().map(|e| e.class.clone()),
                slow_connects: s.slow_connects,
                predicted_slow_connects: predicted_slow,
                listen_overflows: s.counters.listen_overflows,
                tw_recycled: s.counters.tw_recycled,
                peak_time_wait_total: s.peak_time_wait_total,
                peak_time_wait_client: s
                    .leg_peaks
                    .iter()
                    .filter(|p| p.leg == "client")
                    .map(|p| p.time_wait)
                    .max()
                    .unwrap_or(0),
                upstream_addr_not_available: upstream_addr_not_available(s),
                connections_opened: s.client_connections_opened,
                latency_p99_ms: s.latency_us.1 as f64 / 1000.0,
                elapsed_secs: s.elapsed_secs,
            }
        })
        .collect();
    let dominant_error = dominant(measured);
    let matches_seed_pattern = matches_pattern(&steps);
    let within_tolerance = steps
        .iter()
        .all(|s| (s.failure_fraction - s.predicted_failure_fraction).abs() <= TOLERANCE);
    MechanismReport {
        mechanism,
        label: mechanism.label().to_string(),
        setup: setup(mechanism, knobs),
        reasoning: reasoning(mechanism, knobs),
        evidence: evidence(mechanism, knobs, &steps),
        steps,
        dominant_error,
        matches_seed_pattern,
        within_tolerance,
    }
}

/// The class that failed most requests over the whole ladder.
fn dominant(measured: &[StepReport]) -> Option<String> {
    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in measured.iter().flat_map(|s| s.errors.iter()) {
        *counts.entry(e.class.as_str()).or_default() += e.count;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c.to_string())
}

/// No failure at the seed's clean concurrency (or any below it), more than 5 % at its
/// failing one (or the lowest above it). False when the ladder has neither.
fn matches_pattern(steps: &[HypothesisStep]) -> bool {
    let clean: Vec<&HypothesisStep> = steps
        .iter()
        .filter(|s| s.concurrency <= SEED_CLEAN_C)
        .collect();
    let failing = steps
        .iter()
        .filter(|s| s.concurrency >= SEED_FAILING_C)
        .min_by_key(|s| s.concurrency);
    !clean.is_empty()
        && clean.iter().all(|s| s.failed == 0)
        && failing.is_some_and(|s| s.failure_fraction > TOLERANCE)
}

fn setup(mechanism: Mechanism, knobs: Knobs) -> String {
    let q = PER_WORKER_QPS;
    match mechanism {
        Mechanism::RateLimitedExhaustion => {
            let (low, high) = range_of(knobs.rate_ports);
            format!(
                "direct; client closes each connection (drop); -q {q}; ip_local_port_range \
                 {low}-{high} ({} ports); tcp_tw_reuse 1, tcp_tw_reuse_delay {TW_REUSE_DELAY_MS} ms",
                knobs.rate_ports
            )
        }
        Mechanism::BacklogOverflowDrop | Mechanism::BacklogOverflowReset => format!(
            "direct; keep-alive; -q {q}; serve --backlog {BACKLOG} --accept-delay \
             {ACCEPT_DELAY_MS}ms; tcp_abort_on_overflow {}",
            u8::from(mechanism == Mechanism::BacklogOverflowReset)
        ),
        Mechanism::ForwarderUpstreamLeg => {
            let (low, high) = range_of(knobs.upstream_ports);
            format!(
                "keep-alive clients on several source IPs → TCP forwarder → server; -q {q}; \
                 ip_local_port_range {low}-{high} ({} ports per pool)",
                knobs.upstream_ports
            )
        }
        Mechanism::ServerConnectionCap => format!(
            "keep-alive → TCP forwarder → serve --close-after {CLOSE_AFTER}; -q {q}; 1,000 \
             ports, tcp_tw_reuse 0"
        ),
    }
}

fn reasoning(mechanism: Mechanism, knobs: Knobs) -> String {
    let q = PER_WORKER_QPS;
    let crossing = ((SEED_CLEAN_C * SEED_FAILING_C) as f64).sqrt();
    match mechanism {
        Mechanism::RateLimitedExhaustion => format!(
            "the pool passes ports ÷ reuse delay = {} new connections/s; at {q} requests/s \
             per worker the crossing is c = {:.0}, between {SEED_CLEAN_C} and \
             {SEED_FAILING_C} (their geometric mean); failure shares from portlab simulate \
             (open loop at c × {q}/s — or the rate kept, when the run fell more than 10 % behind \
             its schedule — each port held for the measured median latency)",
            group_thousands(knobs.rate_ports * 1000 / TW_REUSE_DELAY_MS),
            crossing
        ),
        Mechanism::BacklogOverflowDrop | Mechanism::BacklogOverflowReset => format!(
            "Linux queues backlog + 1 = {} connections, so c − {} connects of the opening \
             burst have their SYNs dropped and come back 1 s later; the SYN is dropped before \
             tcp_abort_on_overflow is consulted, so 1 resets only a final ACK that finds the \
             queue full (a race the serialised loopback handshake rarely loses)",
            BACKLOG + 1,
            BACKLOG + 2
        ),
        Mechanism::ForwarderUpstreamLeg => format!(
            "{} upstream ports hold {} kept-alive client connections; each further worker is \
             reset on every request (the forwarder's connect fails), so (c − {})/c fail; from \
             portlab simulate (keep-alive, paced at {q}/s per worker)",
            knobs.upstream_ports, knobs.upstream_ports, knobs.upstream_ports
        ),
        Mechanism::ServerConnectionCap => format!(
            "keep-alive becomes churn of requests ÷ {CLOSE_AFTER} connections, but the server \
             closes first and holds the TIME_WAIT; nothing should fail"
        ),
    }
}

fn evidence(mechanism: Mechanism, knobs: Knobs, steps: &[HypothesisStep]) -> String {
    let top = steps.iter().max_by_key(|s| s.concurrency);
    let Some(top) = top else {
        return String::new();
    };
    match mechanism {
        Mechanism::RateLimitedExhaustion => format!(
            "EADDRNOTAVAIL at the load tester; TIME_WAIT peak {} of {} ports; {} TIME_WAIT \
             ports recycled at c={}",
            group_thousands(top.peak_time_wait_client),
            knobs.rate_ports,
            group_thousands(top.tw_recycled),
            top.concurrency
        ),
        Mechanism::BacklogOverflowDrop | Mechanism::BacklogOverflowReset => format!(
            "ListenOverflows {} and {} connects ≥ 1 s (predicted {}) at c={}; p99 {:.0} ms; {}",
            group_thousands(top.listen_overflows),
            top.slow_connects,
            top.predicted_slow_connects.unwrap_or(0),
            top.concurrency,
            top.latency_p99_ms,
            match (top.failed, top.dominant_error.as_deref()) {
                (0, _) => "no failure".to_string(),
                (n, Some(class)) =>
                    format!("{n} failed ({class}: a final ACK found the queue full)"),
                (n, None) => format!("{n} failed"),
            }
        ),
        Mechanism::ForwarderUpstreamLeg => format!(
            "clients reset; the forwarder's upstream connect failed with EADDRNOTAVAIL {} \
             times at c={}",
            group_thousands(top.upstream_addr_not_available),
            top.concurrency
        ),
        Mechanism::ServerConnectionCap => format!(
            "{} connections for {} requests at c={}; TIME_WAIT peak {} in the sandbox, {} of \
             them on the client's ports",
            group_thousands(top.connections_opened),
            group_thousands(top.requests),
            top.concurrency,
            group_thousands(top.peak_time_wait_total),
            group_thousands(top.peak_time_wait_client)
        ),
    }
}

fn remedy_step(remedy: Remedy, s: &StepReport) -> RemedyStep {
    RemedyStep {
        remedy,
        label: remedy.label().to_string(),
        requests: s.requests,
        succeeded: s.succeeded,
        failed: s.failed,
        short_circuited: s.short_circuited,
        retries: s.retry_attempts,
        pool_attempts: s.succeeded + s.failed + s.retry_attempts,
        pool_failures: s.failed + s.retry_attempts,
        breaker_opened: s.breaker_opened,
        latency_p50_ms: s.latency_us.0 as f64 / 1000.0,
        latency_p99_ms: s.latency_us.1 as f64 / 1000.0,
        elapsed_secs: s.elapsed_secs,
        answered_per_sec: if s.elapsed_secs > 0.0 {
            s.succeeded as f64 / s.elapsed_secs
        } else {
            0.0
        },
    }
}

/// What the remedy steps show. The pool's capacity is ports ÷ reuse delay; no client-side
/// remedy raises it: retries spread the same demand over more time (failures become delay
/// only when the waits reach the recycle time), a breaker sheds it without touching the pool.
fn remedy_story(steps: &[RemedyStep], knobs: Knobs) -> String {
    let by = |r: Remedy| steps.iter().find(|s| s.remedy == r);
    let capacity = knobs.rate_ports * 1000 / TW_REUSE_DELAY_MS;
    let demand = SEED_FAILING_C as u64 * PER_WORKER_QPS;
    let mut parts = vec![format!(
        "At c={SEED_FAILING_C} the workers ask for {} new connections per second and the pool          recycles {} per second; no client-side remedy raises that.",
        group_thousands(demand),
        group_thousands(capacity)
    )];
    if let Some(s) = by(Remedy::None) {
        parts.push(format!(
            "Without a remedy {} of {} requests failed in {:.1} s, each of them a connect()              that scanned the whole empty pool.",
            group_thousands(s.failed),
            group_thousands(s.requests),
            s.elapsed_secs
        ));
    }
    if let Some(s) = by(Remedy::RetryShortBackoff) {
        parts.push(format!(
            "Retrying 3 times with waits under the 1 s recycle time ({}) still failed {}              ({}), made {} retries — {} connects found the pool empty — and stretched the run              to {:.1} s at {:.0} answers/s, the pool's rate: retries add attempts, not              capacity.",
            s.label,
            group_thousands(s.failed),
            percent(ratio(s.failed, s.requests)),
            group_thousands(s.retries),
            group_thousands(s.pool_failures),
            s.elapsed_secs,
            s.answered_per_sec
        ));
    }
    if let Some(s) = by(Remedy::RetryLongBackoff) {
        parts.push(format!(
            "With waits reaching the recycle time ({}) a retried request comes back once ports              are free: {} failed ({}) with {} retries, at the cost of latency (p99 {:.0} ms)              and a {:.1} s run — failures turned into delay.",
            s.label,
            group_thousands(s.failed),
            percent(ratio(s.failed, s.requests)),
            group_thousands(s.retries),
            s.latency_p99_ms,
            s.elapsed_secs
        ));
    }
    if let (Some(s), Some(base)) = (by(Remedy::CircuitBreaker), by(Remedy::None)) {
        parts.push(format!(
            "The circuit breaker (one per engine thread) opened {} times and refused {} requests at once: only {}              connects found the pool empty instead of {}; {} failed and {} were short-circuited              — it fails fast and spares the pool (and whatever shares it), it does not make the              requests succeed.",
            s.breaker_opened,
            group_thousands(s.short_circuited),
            group_thousands(s.pool_failures),
            group_thousands(base.pool_failures),
            group_thousands(s.failed),
            group_thousands(s.short_circuited)
        ));
    }
    parts.join(" ")
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn failures_line(m: &MechanismReport) -> String {
    m.steps
        .iter()
        .map(|s| format!("{} at c={}", percent(s.failure_fraction), s.concurrency))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The paragraph under the table.
fn story(mechanisms: &[MechanismReport], knobs: Knobs) -> String {
    let by = |m: Mechanism| mechanisms.iter().find(|r| r.mechanism == m);
    let mut parts = Vec::new();
    let reproduced: Vec<&str> = mechanisms
        .iter()
        .filter(|m| m.matches_seed_pattern)
        .map(|m| m.label.as_str())
        .collect();
    parts.push(if reproduced.is_empty() {
        "No mechanism reproduced the seed's pattern (none failed at c=10, some at c=50) in this \
         run."
            .to_string()
    } else {
        format!(
            "The seed's pattern (nothing failed at c=10, 16.8 % at c=50) is reproduced by: {}.",
            reproduced.join("; ")
        )
    });
    if let Some(m) = by(Mechanism::RateLimitedExhaustion) {
        parts.push(format!(
            "Rate-limited exhaustion ({}): with TIME_WAIT recycled after {} ms a pool of {} \
             ports passes {} new connections per second; c workers closing a connection per \
             request ask for c × {} per second, so the pool holds below c ≈ {:.0} and fails \
             with EADDRNOTAVAIL above it, as the model predicted. Its mark: EADDRNOTAVAIL (on \
             Windows WSAENOBUFS 10055 or WSAEADDRINUSE 10048, not \"actively refused\"), a \
             TIME_WAIT count at the pool's size and TWRecycled climbing.",
            failures_line(m),
            TW_REUSE_DELAY_MS,
            knobs.rate_ports,
            group_thousands(knobs.rate_ports * 1000 / TW_REUSE_DELAY_MS),
            PER_WORKER_QPS,
            ((SEED_CLEAN_C * SEED_FAILING_C) as f64).sqrt()
        ));
    }
    if let Some(m) = by(Mechanism::ForwarderUpstreamLeg) {
        parts.push(format!(
            "The forwarder's upstream leg ({}): with keep-alive the forwarder holds one upstream \
             connection per client connection from one source IP; once there are more clients \
             than upstream ports, every request of the extra workers is reset. Its mark: \
             resets at the clients while the forwarder's own log counts EADDRNOTAVAIL on \
             connect; netsh portproxy gives the same, and Windows shows it as WSAECONNRESET \
             10054 or, if the forwarder refuses before accepting, 10061 \"actively refused\".",
            failures_line(m)
        ));
    }
    if let Some(m) = by(Mechanism::BacklogOverflowDrop) {
        let reset = by(Mechanism::BacklogOverflowReset);
        parts.push(format!(
            "Backlog overflow ({}{}): on Linux a full accept queue drops the SYN, so the burst's \
             extra connects wait for the retransmission (1 s, then 3 s) and the requests are \
             slow rather than failed — ListenOverflows counts them, the connect-latency \
             histogram steps at 1 s. tcp_abort_on_overflow=1 changes little here because the \
             SYN is dropped before it is consulted. Windows answers an overflowing backlog with \
             an RST instead (listen() documentation: WSAECONNREFUSED), which hey prints as \
             \"connectex: No connection could be made because the target machine actively \
             refused it\" — the seed's very error; with a backlog of 5–200 and a slow acceptor \
             behind portproxy it would fail at c=50 and not at c=10.",
            failures_line(m),
            reset
                .map(|r| format!("; with abort 1: {}", failures_line(r)))
                .unwrap_or_default()
        ));
    }
    if let Some(m) = by(Mechanism::ServerConnectionCap) {
        parts.push(format!(
            "A server that closes after {CLOSE_AFTER} requests ({}) turns keep-alive into churn, \
             but the closer holds the TIME_WAIT, so the client's ports stay free: alone it does \
             not reproduce the pattern; it matters only when it pushes a client that closes \
             first over the rate of the first mechanism.",
            failures_line(m)
        ));
    }
    parts.push(
        "To tell them apart on your own machine, capture during a failing run: the exact \
         error text and its errno (portlab analyze --how windows lists what to collect on \
         Windows: netstat -ano, netsh int ipv4 show dynamicport tcp, Get-NetTCPConnection \
         counts by state, event IDs 4227/4231); the TIME_WAIT count towards the target \
         against the port range (exhaustion); netstat -s \"listen queue overflowed\" or \
         ListenOverflows (backlog); connect latency steps at 1 s and 3 s (dropped SYNs); and \
         the forwarder's own connect errors (its upstream leg)."
            .to_string(),
    );
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_put_each_crossing_between_the_seeds_concurrencies() {
        let k = Knobs::new();
        let crossing = k.rate_ports as f64 / PER_WORKER_QPS as f64;
        assert!(crossing > SEED_CLEAN_C as f64 && crossing < SEED_FAILING_C as f64);
        assert!(k.upstream_ports > SEED_CLEAN_C as u64 && k.upstream_ports < SEED_FAILING_C as u64);
        // The backlog: c = 10 fits the queue, c = 50 overflows it.
        assert!(SEED_CLEAN_C as u64 <= BACKLOG + 2 && SEED_FAILING_C as u64 > BACKLOG + 2);
    }

    #[test]
    fn scenarios_carry_their_sandbox_and_pace() {
        let k = Knobs::new();
        let s = scenario(Mechanism::BacklogOverflowReset, 50, k);
        assert_eq!(s.requests, 50 * PER_WORKER_QPS * STEP_SECS);
        let sandbox = s.extras.sandbox.expect("own sandbox");
        assert!(sandbox
            .sysctls
            .contains(&("tcp_abort_on_overflow".to_string(), "1".to_string())));
        assert!(s.extras.load_args.contains(&"-q".to_string()));
        let up = scenario(Mechanism::ForwarderUpstreamLeg, 100, k);
        assert_eq!(up.path, Path::Forwarder);
        // The clients' pools together hold all 100 workers.
        assert!(up.source_ips.len() as u64 * k.upstream_ports > 100);
    }

    fn step(c: usize, failed: u64, requests: u64) -> HypothesisStep {
        HypothesisStep {
            concurrency: c,
            requests,
            failed,
            failure_fraction: failed as f64 / requests as f64,
            predicted_failure_fraction: 0.0,
            basis: Basis::Arithmetic,
            dominant_error: None,
            slow_connects: 0,
            predicted_slow_connects: None,
            listen_overflows: 0,
            tw_recycled: 0,
            peak_time_wait_total: 0,
            peak_time_wait_client: 0,
            upstream_addr_not_available: 0,
            connections_opened: 0,
            latency_p99_ms: 0.0,
            elapsed_secs: 2.0,
        }
    }

    #[test]
    fn the_pattern_needs_nothing_at_ten_and_more_than_five_percent_at_fifty() {
        let seed = [step(5, 0, 200), step(10, 0, 400), step(50, 336, 2000)];
        assert!(matches_pattern(&seed));
        let everywhere = [step(10, 4, 400), step(50, 1000, 2000)];
        assert!(!matches_pattern(&everywhere));
        let too_little = [step(10, 0, 400), step(50, 100, 2000)];
        assert!(!matches_pattern(&too_little));
        assert!(!matches_pattern(&[step(50, 1000, 2000)]));
    }
}
