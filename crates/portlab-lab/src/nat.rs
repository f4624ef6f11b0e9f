//! `portlab reproduce --nat`: source-NAT port exhaustion reproduced in a sandbox. Each step gets
//! a fresh network namespace (so a fresh conntrack table) holding
//! - a source-NAT rule with a small pool, applied with `nft` inside the namespace only
//!   (`ip daddr { 127.0.0.2, 127.0.0.3 } meta l4proto { tcp, udp } snat to 127.0.0.1:LOW-HIGH`;
//!   loopback cannot MASQUERADE, research/nat-conntrack.md §1.1, §3.3),
//! - the client's own pool (ip_local_port_range 50000–59999) outside the NAT range, so the
//!   NAT, not the client, is the limit, and `tcp_syn_retries=1` so a dropped connect fails with
//!   ETIMEDOUT after 3 s instead of 133 s,
//! - servers on 127.0.0.2:8080, 127.0.0.3:8080, 127.0.0.2:8081 (TCP) and 127.0.0.2:9000 (UDP),
//! - a conntrack watcher ([`crate::nat_tools::watch`]) sampling counters and NAT pools,
//! - the load: `portlab load --hold` for held connections, short connections, keep-alive, the
//!   pooling proxy, or [`crate::nat_tools::udp_flows`] for one-shot UDP flows.
//!
//! Every step reports its prediction (portlab-model's NAT arithmetic) beside the measurement,
//! and the NAT side's diagnosis ([`portlab_diagnose::diagnose_nat`]). The namespace, its rule
//! and every process are gone when the step ends, also on Ctrl-C (see [`crate::procs`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use portlab_diagnose::{diagnose_nat, Cause, Finding, NatEvidence};
use portlab_model::{held_flow_failures, sequential_flow_failures, NatProfile, NatProtocol};
use portlab_sockets::conntrack::{evicts_closing_tcp, kernel_release};
use portlab_sockets::{NatPool, StatCounters};
use serde::{Deserialize, Serialize};

use crate::nat_tools::{NatSample, UdpFlowReport, WatchEvent};
use crate::procs::Guarded;
use crate::sandbox::Sandbox;
use crate::sandbox_config::SandboxConfig;
use crate::LabError;

/// The client's ephemeral range inside the sandbox: outside any sensible NAT range.
pub const CLIENT_RANGE: (u16, u16) = (50000, 59999);
/// `tcp_syn_retries` inside the sandbox: a dropped connect fails after 3 s.
pub const SYN_RETRIES: u8 = 1;
/// Seconds until connect() gives up with `tcp_syn_retries=1` (the kernel's model timeout,
/// (2^(retries+1) − 1) × 1 s, net/ipv4/tcp_timer.c `tcp_model_timeout()`).
pub const SYN_TIMEOUT_SECS: f64 = 3.0;
/// How long held connections stay open: past every failing connect's ETIMEDOUT.
pub const HOLD_SECS: f64 = SYN_TIMEOUT_SECS + 2.0;
const PRIMARY: &str = "127.0.0.2:8080";
const DESTINATIONS: [&str; 3] = ["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.2:8081"];
const UDP_DESTINATION: &str = "127.0.0.2:9000";
const PROXY_FRONT: &str = "127.1.1.1:80";
const TABLE: &str = "portlab_nat";
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a UDP flow waits for its reply on loopback before it counts as lost.
const UDP_WAIT: Duration = Duration::from_millis(50);

/// SYNs a connect sends before ETIMEDOUT with [`SYN_RETRIES`]: 3 on Linux ≥ 6.5, whose first
/// retransmits are 1 s apart (`tcp_syn_linear_timeouts=4`): at 0, 1 and 2 s; 2 before (0, 1 s).
pub fn syns_per_connect(kernel: &str) -> u64 {
    if evicts_closing_tcp(kernel) {
        3
    } else {
        2
    }
}

/// What the NAT lab runs.
#[derive(Debug, Clone)]
pub struct NatLabConfig {
    /// The `portlab` executable run inside the sandbox.
    pub exe: PathBuf,
    /// The NAT rule's port range (inclusive).
    pub nat_ports: (u16, u16),
    /// Run the fix steps too.
    pub fixes: bool,
}

impl NatLabConfig {
    /// Defaults: pool 40000–40099 (100 ports), fixes on.
    pub fn new(exe: PathBuf) -> Self {
        NatLabConfig {
            exe,
            nat_ports: (40000, 40099),
            fixes: true,
        }
    }

    /// Ports in the NAT pool.
    pub fn pool_ports(&self) -> u64 {
        u64::from(self.nat_ports.1 - self.nat_ports.0) + 1
    }
}

/// The kind of flows a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatFlow {
    /// Concurrent TCP connections, each held open [`HOLD_SECS`] after its response.
    HeldTcp,
    /// Short TCP connections one after another, the client closing each.
    ShortTcp,
    /// Requests on a few kept-alive connections.
    KeepAlive,
    /// Held client connections to a pooling HTTP proxy whose upstream pool crosses the NAT.
    PoolingProxy,
    /// One-shot UDP request/reply flows, one after another, each from a new source port.
    UdpOneShot,
}

/// Which fix (or non-fix) a step measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatFix {
    /// Reuse connections (keep-alive).
    KeepAlive,
    /// A pooling proxy in front of the NAT.
    PoolingProxy,
    /// A NAT range twice as wide.
    WiderRange,
    /// Spread over more destinations.
    MoreDestinations,
    /// More NAT IPs for one client IP: not a fix.
    MoreNatIps,
}

/// One step of the NAT lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatScenario {
    /// Its number in the full plan (1-based), kept when steps are selected.
    pub number: usize,
    /// Short name.
    pub name: String,
    /// Flows it runs.
    pub flow: NatFlow,
    /// The fix it measures, if any.
    pub fix: Option<NatFix>,
    /// Flows (TCP connections or requests, UDP flows) in total.
    pub flows: u64,
    /// Concurrent connections (1 for sequential steps).
    pub concurrency: u64,
    /// Destinations the flows spread over evenly.
    pub destinations: Vec<SocketAddr>,
    /// The NAT range of this step.
    pub nat_ports: (u16, u16),
    /// NAT IPs of the rule (127.0.0.11… when more than one; 127.0.0.1 otherwise).
    pub nat_ips: u8,
}

impl NatScenario {
    /// Ports in this step's NAT range.
    pub fn pool_ports(&self) -> u64 {
        u64::from(self.nat_ports.1 - self.nat_ports.0) + 1
    }

    /// The nft script for this step (one argument to `nft`).
    pub fn nft_script(&self) -> String {
        let to = if self.nat_ips > 1 {
            format!("127.0.0.11-127.0.0.{}", 10 + self.nat_ips)
        } else {
            "127.0.0.1".to_string()
        };
        format!(
            "add table ip {TABLE}; \
             add chain ip {TABLE} post {{ type nat hook postrouting priority srcnat; policy accept; }}; \
             add rule ip {TABLE} post ip daddr {{ 127.0.0.2, 127.0.0.3 }} meta l4proto {{ tcp, udp }} snat to {to}:{}-{}",
            self.nat_ports.0, self.nat_ports.1
        )
    }

    /// The rule as `nft list ruleset` shows it.
    pub fn rule_text(&self) -> String {
        let script = self.nft_script();
        let rule = script.rsplit("post ").next().unwrap_or_default();
        rule.to_string()
    }

    /// Failures predicted by portlab-model's NAT arithmetic on this kernel.
    pub fn predicted_failures(&self, profile: &NatProfile) -> u64 {
        let pool = self.pool_ports();
        let k = self.destinations.len().max(1) as u64;
        match self.flow {
            NatFlow::HeldTcp => (0..k)
                .map(|i| held_flow_failures(share(self.concurrency, k, i), pool))
                .sum(),
            NatFlow::ShortTcp => {
                sequential_flow_failures(profile, NatProtocol::Tcp, self.flows, pool)
            }
            NatFlow::UdpOneShot => {
                sequential_flow_failures(profile, NatProtocol::Udp, self.flows, pool)
            }
            NatFlow::KeepAlive => held_flow_failures(self.concurrency, pool),
            // The proxy's upstream pool (8 connections) is all the NAT sees.
            NatFlow::PoolingProxy => held_flow_failures(PROXY_POOL, pool),
        }
    }
}

/// Upstream connections of the pooling proxy step.
pub const PROXY_POOL: u64 = 8;

/// The i-th of k even shares of n (the first ones get the remainder).
fn share(n: u64, k: u64, i: u64) -> u64 {
    n / k + u64::from(i < n % k)
}

fn addr(s: &str) -> SocketAddr {
    // Constants of this module; parse cannot fail.
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 2], 8080)))
}

/// The default steps for a pool of P ports: held connections at P/2, 0.9·P, P, 1.5·P to one
/// destination; 3·P over three destinations; 3·P short TCP connections; 1.5·P UDP flows; then
/// (with `fixes`) keep-alive, the pooling proxy, a range twice as wide, two destinations, and
/// the non-fix of three NAT IPs.
pub fn nat_plan(config: &NatLabConfig) -> Vec<NatScenario> {
    let p = config.pool_ports();
    let one = vec![addr(PRIMARY)];
    let step =
        |name: &str, flow, fix, flows, concurrency, destinations: Vec<SocketAddr>| NatScenario {
            number: 0,
            name: name.to_string(),
            flow,
            fix,
            flows,
            concurrency,
            destinations,
            nat_ports: config.nat_ports,
            nat_ips: 1,
        };
    let mut steps = Vec::new();
    for c in [p / 2, p * 9 / 10, p, p * 3 / 2] {
        steps.push(step(
            "held, one destination",
            NatFlow::HeldTcp,
            None,
            c,
            c,
            one.clone(),
        ));
    }
    steps.push(step(
        "held, three destinations",
        NatFlow::HeldTcp,
        None,
        3 * p,
        3 * p,
        DESTINATIONS.iter().map(|d| addr(d)).collect(),
    ));
    steps.push(step(
        "short TCP connections",
        NatFlow::ShortTcp,
        None,
        3 * p,
        1,
        one.clone(),
    ));
    steps.push(step(
        "one-shot UDP flows",
        NatFlow::UdpOneShot,
        None,
        p * 3 / 2,
        1,
        vec![addr(UDP_DESTINATION)],
    ));
    if !config.fixes {
        return number(steps);
    }
    let c = p * 3 / 2;
    steps.push(step(
        "fix: keep-alive",
        NatFlow::KeepAlive,
        Some(NatFix::KeepAlive),
        c,
        p / 2,
        one.clone(),
    ));
    steps.push(step(
        "fix: pooling proxy",
        NatFlow::PoolingProxy,
        Some(NatFix::PoolingProxy),
        c,
        c,
        one.clone(),
    ));
    let mut wider = step(
        "fix: NAT range ×2",
        NatFlow::HeldTcp,
        Some(NatFix::WiderRange),
        c,
        c,
        one.clone(),
    );
    let high = u64::from(config.nat_ports.0) + 2 * p - 1;
    wider.nat_ports.1 = u16::try_from(high.min(u64::from(CLIENT_RANGE.0) - 1)).unwrap_or(u16::MAX);
    steps.push(wider);
    steps.push(step(
        "fix: two destinations",
        NatFlow::HeldTcp,
        Some(NatFix::MoreDestinations),
        c,
        c,
        DESTINATIONS[..2].iter().map(|d| addr(d)).collect(),
    ));
    let mut ips = step(
        "not a fix: three NAT IPs",
        NatFlow::HeldTcp,
        Some(NatFix::MoreNatIps),
        c,
        c,
        one,
    );
    ips.nat_ips = 3;
    steps.push(ips);
    number(steps)
}

fn number(mut steps: Vec<NatScenario>) -> Vec<NatScenario> {
    for (i, s) in steps.iter_mut().enumerate() {
        s.number = i + 1;
    }
    steps
}

/// Conntrack side of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatSide {
    /// Counter increase over the step (all CPUs).
    pub delta: StatCounters,
    /// Predicted insert_failed (= drop): failures × SYNs per connect (TCP) or lost flows (UDP).
    pub predicted_insert_failed: u64,
    /// Most NAT entries of one pool at once (live + closing).
    pub peak_pool_entries: u64,
    /// The fullest pool's utilisation at its peak (blocking ÷ ports).
    pub peak_utilisation: f64,
    /// Every pool at its own fullest moment, fullest first.
    pub pools_at_peak: Vec<NatPool>,
    /// TCP TIME_WAIT/CLOSE entries at the end of the step.
    pub closing_at_end: u64,
    /// Table entries at the end, and the limit.
    pub count_at_end: u64,
    /// `nf_conntrack_max`.
    pub max: u64,
    /// found ÷ new flows attempted.
    pub found_per_flow: f64,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatStepReport {
    /// 1-based.
    pub step: usize,
    /// What ran.
    pub scenario: NatScenario,
    /// Flows attempted.
    pub flows: u64,
    /// Flows that succeeded.
    pub succeeded: u64,
    /// Flows that failed.
    pub failed: u64,
    /// Of them, connects that ended in ETIMEDOUT (TCP).
    pub connect_timeouts: u64,
    /// `failed ÷ flows`.
    pub failure_fraction: f64,
    /// Predicted failures.
    pub predicted_failures: u64,
    /// `predicted ÷ flows`.
    pub predicted_failure_fraction: f64,
    /// |measured − predicted| ≤ 2 percentage points.
    pub within_2pp: bool,
    /// Connect latency of successful connects, ms (p50, p99, max); TCP only.
    pub connect_ms: Option<[f64; 3]>,
    /// When the first failure came, ms after the start.
    pub first_failure_ms: Option<f64>,
    /// What conntrack saw.
    pub nat: NatSide,
    /// The NAT host's diagnosis of this step.
    pub findings: Vec<Finding>,
    /// Wall time of the step, s.
    pub elapsed_secs: f64,
    /// How the step's sandbox was made (a user namespace too when not root).
    pub isolation: crate::Isolation,
}

/// Settings shared by every step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatLabSettings {
    /// `uname -r`.
    pub kernel: String,
    /// Closing TCP entries evictable on a clash (≥ 6.5).
    pub closing_evictable: bool,
    /// The NAT range of the incident steps.
    pub nat_ports: (u16, u16),
    /// Its size.
    pub pool_ports: u64,
    /// The rule of the incident steps, as nft lists it.
    pub rule: String,
    /// The client's ip_local_port_range.
    pub client_range: (u16, u16),
    /// tcp_syn_retries inside the sandbox.
    pub syn_retries: u8,
    /// SYNs per failed connect.
    pub syns_per_connect: u64,
    /// How long held connections stay open, s.
    pub hold_secs: f64,
    /// The model profile used for predictions.
    pub profile: String,
    /// How the sandboxes were made (the first step's).
    pub isolation: Option<crate::Isolation>,
}

/// The whole NAT lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatLabReport {
    /// Version of this document's shape (docs/reproduce-nat-json.md): 1.
    pub schema_version: u32,
    /// Shared settings.
    pub settings: NatLabSettings,
    /// Steps in order.
    pub steps: Vec<NatStepReport>,
    /// The held step beyond the pool failed and was diagnosed as NAT port exhaustion.
    pub exhaustion_reproduced: bool,
    /// Every step's measurement within 2 points of its prediction.
    pub all_within_2pp: bool,
    /// Wall time, s.
    pub elapsed_secs: f64,
}

/// Progress of the NAT lab.
#[derive(Debug)]
pub enum NatLabEvent<'a> {
    /// A step is starting.
    StepStarted {
        /// 1-based.
        step: usize,
        /// Steps in all.
        total: usize,
        /// What it runs.
        scenario: &'a NatScenario,
    },
    /// A step finished.
    StepFinished {
        /// Steps in all.
        total: usize,
        /// Its outcome.
        report: &'a NatStepReport,
    },
}

/// The model profile of the running kernel.
pub fn kernel_profile(kernel: &str) -> NatProfile {
    let key = if evicts_closing_tcp(kernel) {
        "linux-6.5"
    } else {
        "linux-6.4"
    };
    NatProfile::preset(key).unwrap_or_else(|| NatProfile::presets().remove(0))
}

/// Checks that a sandbox can hold a NAT rule (nft present, kernel NAT support), so a run
/// fails with one sentence before any step.
///
/// # Errors
/// [`LabError::NatUnavailable`]; the sandbox's own errors.
pub fn check_nat_support(config: &NatLabConfig) -> Result<(), LabError> {
    let scenario = nat_plan(config).remove(0);
    let sandbox = Sandbox::create(&config.exe, &sandbox_config())?;
    apply_rule(&sandbox, &scenario)?;
    sandbox.finish().map(|_| ())
}

fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        port_range: CLIENT_RANGE,
        tw_reuse: 0,
        sample_interval_ms: 500,
        sysctls: Vec::new(),
    }
}

/// Runs every scenario in its own sandbox and assembles the report.
///
/// # Errors
/// The first step's [`LabError`]; [`LabError::Interrupted`] after Ctrl-C.
pub fn run_nat_lab(
    config: &NatLabConfig,
    scenarios: &[NatScenario],
    on_event: &mut dyn FnMut(&NatLabEvent<'_>),
) -> Result<NatLabReport, LabError> {
    let started = Instant::now();
    let kernel = kernel_release();
    let profile = kernel_profile(&kernel);
    let mut steps = Vec::new();
    let total = scenarios.len();
    for (i, scenario) in scenarios.iter().enumerate() {
        on_event(&NatLabEvent::StepStarted {
            step: i + 1,
            total,
            scenario,
        });
        let report = run_nat_step(config, scenario, scenario.number.max(1)).map_err(|e| {
            if crate::procs::interrupted() {
                LabError::Interrupted
            } else {
                e
            }
        })?;
        on_event(&NatLabEvent::StepFinished {
            total,
            report: &report,
        });
        steps.push(report);
    }
    let first = nat_plan(config).remove(0);
    let exhaustion_reproduced = steps.iter().any(|s| {
        s.scenario.fix.is_none()
            && s.scenario.flow == NatFlow::HeldTcp
            && s.failed > 0
            && s.findings
                .first()
                .is_some_and(|f| f.cause == Cause::NatPortExhaustion)
    });
    Ok(NatLabReport {
        schema_version: 1,
        settings: NatLabSettings {
            closing_evictable: evicts_closing_tcp(&kernel),
            syns_per_connect: syns_per_connect(&kernel),
            kernel,
            nat_ports: config.nat_ports,
            pool_ports: config.pool_ports(),
            rule: first.rule_text(),
            client_range: CLIENT_RANGE,
            syn_retries: SYN_RETRIES,
            hold_secs: HOLD_SECS,
            profile: profile.key.to_string(),
            isolation: steps.first().map(|s| s.isolation),
        },
        all_within_2pp: steps.iter().all(|s| s.within_2pp),
        exhaustion_reproduced,
        steps,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// Runs one scenario in a fresh sandbox. `step` is its 1-based number.
///
/// # Errors
/// As [`run_nat_lab`].
pub fn run_nat_step(
    config: &NatLabConfig,
    scenario: &NatScenario,
    step: usize,
) -> Result<NatStepReport, LabError> {
    let started = Instant::now();
    let kernel = kernel_release();
    let profile = kernel_profile(&kernel);
    let sandbox = Sandbox::create(&config.exe, &sandbox_config())?;
    let isolation = sandbox.ready().isolation;
    let mut sysctl = sandbox.command("sysctl");
    sysctl.args(["-qw", &format!("net.ipv4.tcp_syn_retries={SYN_RETRIES}")]);
    run_to_end("sysctl", &mut sysctl)?;
    apply_rule(&sandbox, scenario)?;
    let servers = start_servers(&sandbox, config, scenario)?;
    let proxy = match scenario.flow {
        NatFlow::PoolingProxy => Some(start_proxy(&sandbox, config)?),
        _ => None,
    };
    let watcher = start_watcher(&sandbox, config)?;
    let baseline = watcher.first.clone();
    let rules = watcher.rules.clone();
    let outcome = run_flows(&sandbox, config, scenario)?;
    let samples = watcher.stop()?;
    drop(proxy);
    drop(servers);
    sandbox.finish()?;

    let last = samples.last().unwrap_or(&baseline);
    let delta = last.stats.total.delta(&baseline.stats.total);
    let pools_at_peak = peak_pools(&samples);
    let count_at_peak = samples.iter().map(|s| s.stats.count).max().unwrap_or(0);
    let interval_ms = last.monotonic_ms.saturating_sub(baseline.monotonic_ms);
    let mut evidence = NatEvidence::from_stats(
        &baseline.stats,
        &last.stats,
        interval_ms,
        pools_at_peak.clone(),
    );
    evidence.count = count_at_peak;
    evidence.rules = rules;
    evidence.closing_evictable = evicts_closing_tcp(&kernel);
    evidence.new_flows = Some(outcome.flows);
    let findings = diagnose_nat(&evidence);
    let predicted = scenario.predicted_failures(&profile);
    let per_failure = match scenario.flow {
        NatFlow::UdpOneShot => 1,
        _ => syns_per_connect(&kernel),
    };
    let fraction = |n: u64| {
        if outcome.flows == 0 {
            0.0
        } else {
            n as f64 / outcome.flows as f64
        }
    };
    let failure_fraction = fraction(outcome.failed);
    let predicted_failure_fraction = fraction(predicted);
    Ok(NatStepReport {
        step,
        scenario: scenario.clone(),
        flows: outcome.flows,
        succeeded: outcome.succeeded,
        failed: outcome.failed,
        connect_timeouts: outcome.connect_timeouts,
        failure_fraction,
        predicted_failures: predicted,
        predicted_failure_fraction,
        within_2pp: (failure_fraction - predicted_failure_fraction).abs() <= 0.02 + 1e-9,
        connect_ms: outcome.connect_ms,
        first_failure_ms: outcome.first_failure_ms,
        nat: NatSide {
            delta,
            predicted_insert_failed: predicted * per_failure,
            peak_pool_entries: pools_at_peak
                .iter()
                .map(|p| p.live + p.closing)
                .max()
                .unwrap_or(0),
            peak_utilisation: pools_at_peak.first().map_or(0.0, |p| p.utilisation),
            pools_at_peak,
            closing_at_end: last.tcp_closing,
            count_at_end: last.stats.count,
            max: last.stats.max,
            found_per_flow: if outcome.flows == 0 {
                0.0
            } else {
                delta.found as f64 / outcome.flows as f64
            },
        },
        findings,
        elapsed_secs: started.elapsed().as_secs_f64(),
        isolation,
    })
}

/// Each pool at its own fullest moment (most blocking entries, then most entries), fullest
/// first: pools of different destinations fill at different times.
fn peak_pools(samples: &[NatSample]) -> Vec<NatPool> {
    let mut best: std::collections::BTreeMap<(String, std::net::IpAddr, SocketAddr), NatPool> =
        std::collections::BTreeMap::new();
    for pool in samples.iter().flat_map(|s| s.pools.iter()) {
        let key = (pool.protocol.name(), pool.nat_ip, pool.destination);
        let rank = |p: &NatPool| (p.blocking, p.live + p.closing);
        match best.get(&key) {
            Some(b) if rank(b) >= rank(pool) => {}
            _ => {
                best.insert(key, pool.clone());
            }
        }
    }
    let mut pools: Vec<NatPool> = best.into_values().collect();
    pools.sort_by(|a, b| {
        b.utilisation
            .total_cmp(&a.utilisation)
            .then(a.destination.cmp(&b.destination))
    });
    pools
}

/// Runs a command in the sandbox to its end; a non-zero exit is an error with its stderr.
fn run_to_end(what: &str, cmd: &mut Command) -> Result<(), LabError> {
    let finished = Guarded::spawn(what, cmd)?.finish(START_TIMEOUT)?;
    if finished.status.success() {
        Ok(())
    } else {
        Err(LabError::Protocol {
            what: what.to_string(),
            detail: crate::text::one_line(&finished.stderr),
        })
    }
}

fn apply_rule(sandbox: &Sandbox, scenario: &NatScenario) -> Result<(), LabError> {
    let mut cmd = sandbox.command("nft");
    cmd.arg(scenario.nft_script());
    match Guarded::spawn("nft", &mut cmd) {
        Err(LabError::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NatUnavailable(
                "nft not found: install nftables (Debian: apt-get install nftables) to run reproduce --nat".to_string(),
            ))
        }
        Err(e) => return Err(e),
        Ok(nft) => {
            let finished = nft.finish(START_TIMEOUT)?;
            if !finished.status.success() {
                return Err(LabError::NatUnavailable(format!(
                    "the kernel refused the sandbox's NAT rule ({}): reproduce --nat needs nf_tables with NAT (CONFIG_NF_NAT, CONFIG_NFT_NAT) and conntrack",
                    crate::text::one_line(&finished.stderr)
                )));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Listening {
    event: String,
    address: SocketAddr,
}

fn read_listening(child: &Guarded, what: &str) -> Result<SocketAddr, LabError> {
    let line = child.next_line(START_TIMEOUT)?;
    match line.as_deref().map(serde_json::from_str::<Listening>) {
        Some(Ok(l)) if l.event == "listening" => Ok(l.address),
        _ => Err(LabError::Protocol {
            what: what.to_string(),
            detail: format!("expected a listening event, got {line:?}"),
        }),
    }
}

fn start_servers(
    sandbox: &Sandbox,
    config: &NatLabConfig,
    scenario: &NatScenario,
) -> Result<Vec<Guarded>, LabError> {
    let mut servers = Vec::new();
    for dest in &scenario.destinations {
        let mut cmd = sandbox.command(&config.exe);
        if scenario.flow == NatFlow::UdpOneShot {
            cmd.args(["__nat-tool", "udp-echo", "--listen"])
                .arg(dest.to_string());
        } else {
            cmd.args(["serve", "--json", "--listen"])
                .arg(dest.to_string());
        }
        let server = Guarded::spawn("server", &mut cmd)?;
        read_listening(&server, "server")?;
        servers.push(server);
    }
    Ok(servers)
}

fn start_proxy(sandbox: &Sandbox, config: &NatLabConfig) -> Result<Guarded, LabError> {
    let mut cmd = sandbox.command(&config.exe);
    cmd.args([
        "proxy",
        "--listen",
        PROXY_FRONT,
        "--json",
        "--connect",
        PRIMARY,
        "--mode",
        "http",
        "--pool",
    ])
    .arg(PROXY_POOL.to_string());
    let proxy = Guarded::spawn("proxy", &mut cmd)?;
    read_listening(&proxy, "proxy")?;
    Ok(proxy)
}

struct Watcher {
    child: Guarded,
    rules: Vec<portlab_sockets::NatRule>,
    first: NatSample,
}

fn start_watcher(sandbox: &Sandbox, config: &NatLabConfig) -> Result<Watcher, LabError> {
    let mut cmd = sandbox.command(&config.exe);
    cmd.args(["__nat-tool", "watch", "--interval-ms", "50"]);
    let child = Guarded::spawn("conntrack watcher", &mut cmd)?;
    let mut rules = None;
    loop {
        let line = child
            .next_line(START_TIMEOUT)?
            .ok_or_else(|| LabError::Protocol {
                what: "conntrack watcher".to_string(),
                detail: "exited before its first sample".to_string(),
            })?;
        match serde_json::from_str::<WatchEvent>(&line) {
            Ok(WatchEvent::Rules { rules: r, .. }) => rules = Some(r),
            Ok(WatchEvent::Sample(first)) => {
                return Ok(Watcher {
                    child,
                    rules: rules.unwrap_or_default(),
                    first,
                })
            }
            Ok(WatchEvent::Error { message }) => {
                return Err(LabError::NatUnavailable(message));
            }
            Err(e) => {
                return Err(LabError::Protocol {
                    what: "conntrack watcher".to_string(),
                    detail: format!("{e}: {line}"),
                })
            }
        }
    }
}

impl Watcher {
    /// Waits for one sample after the load (the final state), then stops the watcher.
    fn stop(mut self) -> Result<Vec<NatSample>, LabError> {
        let after = crate::anchor::monotonic_ms();
        let mut samples = vec![self.first.clone()];
        let deadline = Instant::now() + Duration::from_secs(2);
        // Samples arrive while the load ran; read until one postdates the load.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.child.next_line(left)? else {
                break;
            };
            if let Ok(WatchEvent::Sample(s)) = serde_json::from_str::<WatchEvent>(&line) {
                let done = s.monotonic_ms > after;
                samples.push(s);
                if done {
                    break;
                }
            }
        }
        self.child.close_stdin();
        let finished = self.child.finish(START_TIMEOUT)?;
        samples.extend(finished.lines.iter().filter_map(|l| {
            match serde_json::from_str::<WatchEvent>(l) {
                Ok(WatchEvent::Sample(s)) => Some(s),
                _ => None,
            }
        }));
        Ok(samples)
    }
}

/// What the flows of a step did, from the client's side.
#[derive(Debug, Default)]
struct FlowOutcome {
    flows: u64,
    succeeded: u64,
    failed: u64,
    connect_timeouts: u64,
    connect_ms: Option<[f64; 3]>,
    first_failure_ms: Option<f64>,
}

#[derive(Deserialize)]
struct LoadJson {
    summary: LoadSummary,
    connections: LoadConnections,
    errors: Vec<LoadError>,
}

#[derive(Deserialize)]
struct LoadSummary {
    requests: u64,
    succeeded: u64,
    failed: u64,
}

#[derive(Deserialize)]
struct LoadConnections {
    connect_latency: Option<LoadLatency>,
}

#[derive(Deserialize)]
struct LoadLatency {
    count: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Deserialize)]
struct LoadError {
    class: String,
    count: u64,
    first_at_ms: Option<f64>,
}

fn run_flows(
    sandbox: &Sandbox,
    config: &NatLabConfig,
    scenario: &NatScenario,
) -> Result<FlowOutcome, LabError> {
    if scenario.flow == NatFlow::UdpOneShot {
        return run_udp(sandbox, config, scenario);
    }
    let k = scenario.destinations.len().max(1) as u64;
    let mut loads = Vec::new();
    for (i, dest) in scenario.destinations.iter().enumerate() {
        let n = share(scenario.flows, k, i as u64);
        let c = share(scenario.concurrency, k, i as u64).max(1);
        let url = match scenario.flow {
            NatFlow::PoolingProxy => format!("http://{PROXY_FRONT}/"),
            _ => format!("http://{dest}/"),
        };
        let mut cmd = sandbox.command(&config.exe);
        cmd.args(["load", "--json", "-n", &n.to_string(), "-c", &c.to_string()])
            .args(["--connect-timeout", "60s", "-t", "60s"]);
        match scenario.flow {
            NatFlow::HeldTcp | NatFlow::PoolingProxy => {
                cmd.args(["--connection", "drop", "--hold"])
                    .arg(format!("{HOLD_SECS}s"));
            }
            NatFlow::ShortTcp => {
                cmd.args(["--connection", "drop"]);
            }
            NatFlow::KeepAlive => {
                cmd.args(["--connection", "keep-alive"]);
            }
            NatFlow::UdpOneShot => {}
        }
        cmd.arg(url);
        loads.push(Guarded::spawn("load", &mut cmd)?);
    }
    let mut out = FlowOutcome::default();
    let mut p50: Option<(u64, u64)> = None;
    let timeout = Duration::from_secs(120);
    for load in loads {
        let finished = load.finish(timeout)?;
        let text = finished.lines.join("\n");
        let json: LoadJson = serde_json::from_str(&text).map_err(|e| LabError::Protocol {
            what: "load".to_string(),
            detail: format!("{e}; stderr: {}", crate::text::one_line(&finished.stderr)),
        })?;
        out.flows += json.summary.requests;
        out.succeeded += json.summary.succeeded;
        out.failed += json.summary.failed;
        for e in &json.errors {
            if e.class == "ConnectTimeout" {
                out.connect_timeouts += e.count;
            }
            if let Some(t) = e.first_at_ms {
                out.first_failure_ms = Some(out.first_failure_ms.map_or(t, |f: f64| f.min(t)));
            }
        }
        if let Some(l) = json.connections.connect_latency.filter(|l| l.count > 0) {
            let ms = |us: u64| us as f64 / 1000.0;
            let [_, p99, max] = out.connect_ms.unwrap_or([0.0; 3]);
            let (p, n) = p50.map_or((l.p50_us, l.count), |(p, n)| {
                if l.count > n {
                    (l.p50_us, l.count)
                } else {
                    (p, n)
                }
            });
            p50 = Some((p, n));
            out.connect_ms = Some([ms(p), p99.max(ms(l.p99_us)), max.max(ms(l.max_us))]);
        }
    }
    Ok(out)
}

fn run_udp(
    sandbox: &Sandbox,
    config: &NatLabConfig,
    scenario: &NatScenario,
) -> Result<FlowOutcome, LabError> {
    let dest = scenario
        .destinations
        .first()
        .copied()
        .unwrap_or(addr(UDP_DESTINATION));
    let mut cmd = sandbox.command(&config.exe);
    cmd.args(["__nat-tool", "udp-flows", "--to"])
        .arg(dest.to_string())
        .args(["--source", &format!("127.0.0.1:{}", CLIENT_RANGE.0)])
        .args(["-n", &scenario.flows.to_string()])
        .args(["--wait-ms", &UDP_WAIT.as_millis().to_string()]);
    let finished = Guarded::spawn("udp client", &mut cmd)?.finish(Duration::from_secs(120))?;
    let text = finished.lines.join("\n");
    let r: UdpFlowReport = serde_json::from_str(&text).map_err(|e| LabError::Protocol {
        what: "udp client".to_string(),
        detail: format!("{e}; stderr: {}", crate::text::one_line(&finished.stderr)),
    })?;
    Ok(FlowOutcome {
        flows: r.flows,
        succeeded: r.answered,
        failed: r.lost + r.send_errors,
        ..FlowOutcome::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_predicts_max_zero_c_minus_pool() {
        let config = NatLabConfig::new(PathBuf::from("portlab"));
        let plan = nat_plan(&config);
        let linux = NatProfile::preset("linux-6.5").unwrap();
        let predicted: Vec<u64> = plan.iter().map(|s| s.predicted_failures(&linux)).collect();
        // held 50/90/100/150, 300 over three, 300 short, 150 UDP, keep-alive, proxy, ×2,
        // two destinations, three NAT IPs.
        assert_eq!(predicted, vec![0, 0, 0, 50, 0, 0, 50, 0, 0, 0, 0, 50]);
        let old = NatProfile::preset("linux-6.4").unwrap();
        assert_eq!(plan[5].predicted_failures(&old), 200);
    }

    #[test]
    fn the_rule_names_the_range_and_the_nat_ips() {
        let config = NatLabConfig::new(PathBuf::from("portlab"));
        let plan = nat_plan(&config);
        assert!(plan[0]
            .nft_script()
            .ends_with("snat to 127.0.0.1:40000-40099"));
        let last = plan.last().unwrap();
        assert!(last
            .nft_script()
            .contains("snat to 127.0.0.11-127.0.0.13:40000-40099"));
        let wider = plan
            .iter()
            .find(|s| s.fix == Some(NatFix::WiderRange))
            .unwrap();
        assert_eq!(wider.nat_ports, (40000, 40199));
        assert!(plan[0].rule_text().starts_with("ip daddr"));
    }

    #[test]
    fn shares_add_up() {
        for (n, k) in [(150u64, 2u64), (300, 3), (7, 3)] {
            assert_eq!((0..k).map(|i| share(n, k, i)).sum::<u64>(), n);
        }
    }
}
