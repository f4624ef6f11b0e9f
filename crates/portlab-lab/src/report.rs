//! The lab's results as plain data: one [`StepReport`] per step, gathered in a
//! [`LadderReport`] with the worst step's [`Diagnosis`] and the story. Field names are stable:
//! they are `portlab reproduce --json`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::predict::PredictionSource;
use crate::sandbox_config::Isolation;
use crate::scenario::{Fix, Path, Policy};

/// Failures of one class, as `portlab load` counted them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCount {
    /// `portlab load`'s class name (`AddrNotAvailable`, `ConnectionReset`, …).
    pub class: String,
    /// errno name (`EADDRNOTAVAIL`) or a description.
    pub errno_name: String,
    /// Requests that failed with it.
    pub count: u64,
    /// When it first happened, ms since the start of the load.
    pub first_at_ms: Option<f64>,
}

/// The proxy's upstream leg, from its stats at the end of the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct UpstreamReport {
    /// Upstream connections the proxy opened.
    pub connections_opened: u64,
    /// Most upstream connections open at once (pooling proxy only).
    pub peak_open: Option<u64>,
    /// Upstream connect failures by class (`addr_not_available` = its ports ran out).
    pub connect_failures: BTreeMap<String, u64>,
}

/// The pool (local IP × destination) that held the most TIME_WAIT sockets during a step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolPeak {
    /// `client` (load tester → front) or `upstream` (proxy → server).
    pub leg: String,
    /// Source address.
    pub local_ip: IpAddr,
    /// Destination.
    pub destination: SocketAddr,
    /// Its TIME_WAIT sockets at the peak.
    pub time_wait: u64,
    /// Its ports in use (any state) at the peak.
    pub used: u64,
    /// Seconds from the start of the load until a pool of this leg had every port in use.
    pub full_after_secs: Option<f64>,
}

/// One socket-table sample, relative to the start of the load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelinePoint {
    /// Milliseconds since the load started (negative: just before).
    pub t_ms: i64,
    /// TIME_WAIT sockets in the whole sandbox.
    pub time_wait: u64,
    /// Ports in use on the client leg (all its pools).
    pub client_ports_used: u64,
    /// Ports in use on the upstream leg (proxy → server), 0 when direct.
    pub upstream_ports_used: u64,
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    /// 1-based position in the ladder.
    pub step: usize,
    /// `incident c=50`, `fix: keep-alive`, …
    pub name: String,
    /// The remedy shown, if any.
    pub fix: Option<Fix>,
    /// Direct, forwarder or pooling proxy.
    pub path: Path,
    /// Who closed the load tester's connections.
    pub policy: Policy,
    /// Concurrent connections of the load tester.
    pub concurrency: usize,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// `failed / requests`, 0–1.
    pub failure_fraction: f64,
    /// The most frequent failure class, if any failed.
    pub dominant_error: Option<ErrorCount>,
    /// Every failure class.
    pub errors: Vec<ErrorCount>,
    /// Wall time of the load, seconds.
    pub elapsed_secs: f64,
    /// Connections the load tester opened.
    pub client_connections_opened: u64,
    /// The load tester's new connections per second.
    pub new_connections_per_sec: f64,
    /// Successful connects that took 1 s or more (a SYN was retransmitted: a listener dropped
    /// it).
    pub slow_connects: u64,
    /// The proxy's upstream leg (absent when direct).
    pub upstream: Option<UpstreamReport>,
    /// Source IPs of the load tester (pools on the client leg).
    pub source_ips: Vec<IpAddr>,
    /// Usable ports of one pool: the sandbox's range minus listening ports inside it.
    pub pool_ports: u64,
    /// The pool with the most TIME_WAIT sockets at its peak, if any socket was seen.
    pub peak_pool: Option<PoolPeak>,
    /// The same per leg: `client`, and `upstream` behind a proxy.
    pub leg_peaks: Vec<PoolPeak>,
    /// Most TIME_WAIT sockets in the whole sandbox at one sample.
    pub peak_time_wait_total: u64,
    /// Seconds from the start of the load until a pool first had all its ports in use.
    pub pool_full_after_secs: Option<f64>,
    /// Predicted failure fraction, 0–1.
    pub predicted_failure_fraction: f64,
    /// Which model predicted it.
    pub prediction_source: PredictionSource,
    /// Where the load tester connected (the proxy, or the server when direct).
    pub front: SocketAddr,
    /// Most ports in use in one pool of either leg at one sample.
    pub peak_ports_in_use: u64,
    /// Socket-table samples during the step.
    pub timeline: Vec<TimelinePoint>,
    /// The load tester's per-second counts (from `portlab load --json`).
    pub load_timeline: Vec<LoadSecond>,
    /// The load tester's cumulative progress about ten times a second: (ms since its start,
    /// requests done, of which failed) — the sub-second view for plots.
    pub load_progress: Vec<(u64, u64, u64)>,
    /// Kernel counters of the sandbox over the step (its own network namespace).
    pub counters: StepCounters,
    /// Request latency of the answered requests, microseconds: (p50, p99).
    pub latency_us: (u64, u64),
    /// Retries the load tester made (`--retry`), counted apart from first attempts.
    pub retry_attempts: u64,
    /// Requests the load tester's circuit breaker refused without a connect.
    pub short_circuited: u64,
    /// Times the load tester's circuit breaker opened.
    pub breaker_opened: u64,
}

/// Kernel counters of a step's sandbox (deltas of `/proc/net/netstat` and `/proc/net/snmp`
/// inside its namespace, from just before the load to after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct StepCounters {
    /// TcpExt ListenOverflows: SYNs or final ACKs dropped because an accept queue was full.
    pub listen_overflows: u64,
    /// TcpExt ListenDrops: every drop at a listener (includes ListenOverflows).
    pub listen_drops: u64,
    /// TcpExt TWRecycled: TIME_WAIT entries taken over by connect() (`tcp_tw_reuse`).
    pub tw_recycled: u64,
    /// Tcp OutRsts: resets sent (by any socket of the sandbox).
    pub out_rsts: u64,
    /// Tcp RetransSegs: segments retransmitted (dropped SYNs come back as retransmissions).
    pub retrans_segs: u64,
}

/// One second of the load tester's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(default)]
pub struct LoadSecond {
    /// Seconds since the start (0-based).
    pub second: u64,
    /// Requests answered in that second.
    pub succeeded: u64,
    /// Requests failed in that second.
    pub failed: u64,
    /// Connections opened in that second.
    pub new_connections: u64,
}

impl StepReport {
    /// Peak TIME_WAIT of the busiest pool (0 when no socket was seen).
    pub fn peak_time_wait(&self) -> u64 {
        self.peak_pool.as_ref().map_or(0, |p| p.time_wait)
    }
}

/// Settings every step shared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LadderSettings {
    /// How the sandboxes isolated the network.
    pub isolation: Isolation,
    /// `ip_local_port_range` inside the sandboxes.
    pub port_range: (u16, u16),
    /// `tcp_tw_reuse` inside the sandboxes.
    pub tw_reuse: u32,
    /// TIME_WAIT length, seconds (60 on Linux, compiled in).
    pub time_wait_secs: u64,
    /// Requests per step.
    pub requests: u64,
    /// Upstream pool of the pooling proxy.
    pub upstream_pool: usize,
}

/// Cause, evidence and remedies for the worst step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    /// One sentence naming the cause (portlab-diagnose's top finding for the worst step).
    pub summary: String,
    /// Measured facts that support it (the finding's evidence lines).
    pub evidence: Vec<String>,
    /// What only the lab saw: which leg filled, the proxy's upstream leg, the prediction.
    pub sandbox_evidence: Vec<String>,
    /// What removed it, as measured by the fix steps.
    pub remedies: Vec<String>,
    /// Every finding of portlab-diagnose for the worst step, with remedies per OS.
    pub findings: Vec<portlab_diagnose::Finding>,
}

/// Whether the run showed what it is meant to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Some incident step failed requests.
    pub incident_reproduced: bool,
    /// Every fix step answered every request.
    pub fixes_hold: bool,
}

/// The whole result of `portlab reproduce`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LadderReport {
    /// Version of this JSON shape.
    pub schema_version: u32,
    /// Shared settings.
    pub settings: LadderSettings,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// 1-based number of the step with the highest failure fraction (none if nothing failed).
    pub worst_step: Option<usize>,
    /// Diagnosis of the worst step (or of a clean run).
    pub diagnosis: Diagnosis,
    /// One paragraph in plain words with the measured numbers.
    pub story: String,
    /// Outcome summary (the exit status follows it).
    pub verdict: Verdict,
    /// Wall time of the whole ladder, seconds.
    pub elapsed_secs: f64,
}
