//! Runs scenarios: one fresh [`Sandbox`] per step with the server, the proxy (if any) and the
//! load tester inside, all of them `portlab` child processes; then turns their JSON output and
//! the sandbox's socket samples into a [`StepReport`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::anchor::{monotonic_ms, Ready, Sample};
use crate::predict::{Predictor, TIME_WAIT_SECS};
use crate::procs::Guarded;
use crate::report::{
    ErrorCount, LadderReport, LadderSettings, LoadSecond, PoolPeak, StepCounters, StepReport,
    TimelinePoint, UpstreamReport,
};
use crate::sandbox::Sandbox;
use crate::scenario::{parse_http_url, LabConfig, Path, Scenario};
use crate::text::one_line;
use crate::LabError;

/// Where `portlab serve` listens inside the sandbox (the seed's nginx on 8080). Fixed ports are
/// safe in a fresh namespace, and both lie outside the default ephemeral range.
const SERVER_ADDR: &str = "127.0.0.1:8080";
/// Where the proxy listens (the seed's `portproxy listenaddress=127.1.1.1 listenport=80`).
const FRONT_ADDR: &str = "127.1.1.1:80";
/// How long a server or proxy may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server or proxy may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on one step's load: a minute, plus a millisecond per request (5,000 requests
/// take about a second here, so this only stops a hung load tester).
fn load_timeout(requests: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(requests)
}

/// Progress of a ladder, for the caller to render.
#[derive(Debug)]
pub enum LabEvent<'a> {
    /// A step is starting.
    StepStarted {
        /// 1-based step number.
        step: usize,
        /// Number of steps.
        total: usize,
        /// What it runs.
        scenario: &'a Scenario,
    },
    /// A step finished.
    StepFinished {
        /// Number of steps.
        total: usize,
        /// Its outcome.
        report: &'a StepReport,
    },
}

/// Runs every scenario in its own sandbox, in order, and assembles the report.
///
/// # Errors
/// The first step's [`LabError`]; [`LabError::Interrupted`] after [`crate::procs::interrupt`].
pub fn run_ladder(
    config: &LabConfig,
    scenarios: &[Scenario],
    on_event: &mut dyn FnMut(&LabEvent<'_>),
) -> Result<LadderReport, LabError> {
    let started = Instant::now();
    let mut predictor = Predictor::new(&config.exe);
    let mut steps = Vec::with_capacity(scenarios.len());
    let mut ready = None;
    let total = scenarios.len();
    for (i, scenario) in scenarios.iter().enumerate() {
        on_event(&LabEvent::StepStarted {
            step: i + 1,
            total,
            scenario,
        });
        let (report, step_ready) =
            run_step_with(config, scenario, i + 1, &mut predictor).map_err(after_interrupt)?;
        on_event(&LabEvent::StepFinished {
            total,
            report: &report,
        });
        steps.push(report);
        ready.get_or_insert(step_ready);
    }
    let ready = ready.ok_or_else(|| LabError::Protocol {
        what: "ladder".to_string(),
        detail: "no step to run".to_string(),
    })?;
    let settings = LadderSettings {
        isolation: ready.isolation,
        port_range: ready.port_range,
        tw_reuse: ready.tw_reuse,
        time_wait_secs: TIME_WAIT_SECS as u64,
        requests: config.requests,
        upstream_pool: config.upstream_pool,
    };
    Ok(crate::story::assemble(
        settings,
        &ready.port_pool_settings(),
        steps,
        started.elapsed().as_secs_f64(),
    ))
}

/// Once interrupted, whatever failed did so because its processes were killed: report the
/// interruption, not the symptom (a server's stdout closing early, say).
fn after_interrupt(err: LabError) -> LabError {
    if crate::procs::interrupted() {
        LabError::Interrupted
    } else {
        err
    }
}

/// Runs one scenario in a fresh sandbox. `step` is its 1-based number in the report.
///
/// # Errors
/// As [`run_ladder`].
pub fn run_step(
    config: &LabConfig,
    scenario: &Scenario,
    step: usize,
) -> Result<StepReport, LabError> {
    let mut predictor = Predictor::new(&config.exe);
    run_step_with(config, scenario, step, &mut predictor)
        .map(|(report, _)| report)
        .map_err(after_interrupt)
}

/// The addresses of one step's topology.
struct Topology {
    server: SocketAddr,
    /// Where the load tester connects: the proxy, or the server when direct.
    front: SocketAddr,
    url: String,
}

fn run_step_with(
    config: &LabConfig,
    scenario: &Scenario,
    step: usize,
    predictor: &mut Predictor,
) -> Result<(StepReport, Ready), LabError> {
    let sandbox_config = scenario.extras.sandbox.as_ref().unwrap_or(&config.sandbox);
    let sandbox = Sandbox::create(&config.exe, sandbox_config)?;
    let ready = sandbox.ready().clone();
    let (server, server_addr, path) = start_server(&sandbox, config, scenario)?;
    let proxy = match scenario.path {
        Path::Direct => None,
        Path::Forwarder | Path::PoolingProxy => {
            Some(start_proxy(&sandbox, config, scenario, server_addr)?)
        }
    };
    let front = proxy.as_ref().map_or(server_addr, |(_, addr)| *addr);
    let topology = Topology {
        server: server_addr,
        front,
        url: format!("http://{front}{path}"),
    };
    let counters_before = sandbox.counters();
    let load_start_ms = monotonic_ms();
    let load = run_load(&sandbox, config, scenario, &topology.url)?;
    let counters = step_counters(counters_before, sandbox.counters());
    let upstream = match proxy {
        Some((proxy, _)) => Some(stop_proxy(proxy)?),
        None => None,
    };
    stop(
        server,
        if config.target.is_some() {
            "target"
        } else {
            "serve"
        },
    )?;
    let samples = sandbox.finish()?;

    let listeners_in_range = [topology.server.port(), topology.front.port()]
        .into_iter()
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .filter(|p| (ready.port_range.0..=ready.port_range.1).contains(p))
        .count() as u64;
    let range_ports = u64::from(ready.port_range.1.saturating_sub(ready.port_range.0)) + 1;
    let pool_ports = range_ports.saturating_sub(listeners_in_range);
    // From just before the load until the sandbox stopped: the TIME_WAIT entries of the last
    // connections appear as their FINs complete, a few milliseconds after the load's end.
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.monotonic_ms + 100 >= load_start_ms)
        .collect();
    let tw_reuse = u8::try_from(ready.tw_reuse).unwrap_or(2);
    let prediction = predictor.predict(
        scenario,
        ready.port_range,
        pool_ports,
        tw_reuse,
        load.summary.elapsed_secs,
    );
    let report = StepReport {
        step,
        name: scenario.name.clone(),
        fix: scenario.fix,
        path: scenario.path,
        policy: scenario.policy,
        concurrency: scenario.concurrency,
        requests: load.summary.requests,
        succeeded: load.summary.succeeded,
        failed: load.summary.failed,
        failure_fraction: ratio(load.summary.failed, load.summary.requests),
        dominant_error: load.dominant_error(),
        errors: load.error_counts(),
        elapsed_secs: load.summary.elapsed_secs,
        client_connections_opened: load.connections.opened,
        new_connections_per_sec: load.connections.new_per_sec,
        slow_connects: load.connections.slow_connects,
        upstream,
        source_ips: scenario.source_ips.clone(),
        pool_ports,
        peak_pool: peak_pool(
            &window,
            &topology,
            scenario.path,
            None,
            pool_ports,
            load_start_ms,
        ),
        leg_peaks: ["client", "upstream"]
            .into_iter()
            .filter_map(|l| {
                peak_pool(
                    &window,
                    &topology,
                    scenario.path,
                    Some(l),
                    pool_ports,
                    load_start_ms,
                )
            })
            .collect(),
        peak_time_wait_total: window.iter().map(|s| s.time_wait).max().unwrap_or(0),
        pool_full_after_secs: pool_full_after(&window, pool_ports, load_start_ms),
        predicted_failure_fraction: prediction.failure_fraction,
        prediction_source: prediction.source,
        front: topology.front,
        peak_ports_in_use: window
            .iter()
            .flat_map(|s| s.pools.iter())
            .filter(|p| leg(p.destination, &topology, scenario.path).is_some())
            .map(|p| p.used)
            .max()
            .unwrap_or(0),
        timeline: timeline(&window, &topology, scenario.path, load_start_ms),
        load_timeline: load.timeline,
        load_progress: load.telemetry.progress.points,
        counters,
        latency_us: (load.latency.p50_us, load.latency.p99_us),
        retry_attempts: load.retries.attempts,
        short_circuited: load.summary.short_circuited,
        breaker_opened: load
            .circuit_breaker
            .as_ref()
            .map_or(0, |b| b.counters.opened),
    };
    Ok((report, ready))
}

fn step_counters(
    before: Option<portlab_sockets::Counters>,
    after: Option<portlab_sockets::Counters>,
) -> StepCounters {
    match (before, after) {
        (Some(b), Some(a)) => {
            let d = a.delta_since(&b);
            StepCounters {
                listen_overflows: d.listen_overflows,
                listen_drops: d.listen_drops,
                tw_recycled: d.tw_recycled,
                out_rsts: d.out_rsts,
                retrans_segs: d.retrans_segs,
            }
        }
        _ => StepCounters::default(),
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The `{"event":"listening","address":…}` line of `portlab serve`/`proxy --json`.
#[derive(Deserialize)]
struct Listening {
    event: String,
    address: SocketAddr,
}

/// Starts the server (`portlab serve`, or the user's command) and returns it with its address
/// and the URL path to request.
fn start_server(
    sandbox: &Sandbox,
    config: &LabConfig,
    scenario: &Scenario,
) -> Result<(Guarded, SocketAddr, String), LabError> {
    if let Some(target) = &config.target {
        let (addr, path) = parse_http_url(&target.url).ok_or_else(|| LabError::Protocol {
            what: "target".to_string(),
            detail: format!("{} is not http://IP:PORT/PATH", target.url),
        })?;
        // exec: the server replaces the shell, so SIGTERM reaches it.
        let mut cmd = sandbox.command("sh");
        cmd.arg("-c").arg(format!("exec {}", target.command));
        let server = Guarded::spawn("target", &mut cmd)?;
        if let Err(err) = wait_until_serving(sandbox, config, &target.url, &server) {
            return Err(with_stderr(err, server));
        }
        return Ok((server, addr, path));
    }
    let mut cmd = sandbox.command(&config.exe);
    cmd.args(["serve", "--listen", SERVER_ADDR, "--json"])
        .args(&scenario.extras.server_args);
    let server = Guarded::spawn("serve", &mut cmd)?;
    let addr = match read_listening(&server, "serve") {
        Ok(addr) => addr,
        Err(err) => return Err(with_stderr(err, server)),
    };
    Ok((server, addr, "/".to_string()))
}

/// Asks the user's server one request at a time until it answers (connection refused while it
/// starts), for at most START_TIMEOUT. Each successful probe leaves one TIME_WAIT on the
/// client leg; there is one.
fn wait_until_serving(
    sandbox: &Sandbox,
    config: &LabConfig,
    url: &str,
    server: &Guarded,
) -> Result<(), LabError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        let mut cmd = sandbox.command(&config.exe);
        cmd.args([
            "load",
            "-n",
            "1",
            "-c",
            "1",
            "--connect-timeout",
            "1s",
            "--json",
        ])
        .arg(url);
        let probe = Guarded::spawn("probe", &mut cmd)?.finish(START_TIMEOUT)?;
        if probe.status.success() {
            return Ok(());
        }
        if server
            .next_line(Duration::from_millis(20))
            .is_ok_and(|l| l.is_none())
        {
            return Err(LabError::Protocol {
                what: "target".to_string(),
                detail: format!("the --target-cmd exited before {url} answered"),
            });
        }
    }
    Err(LabError::Protocol {
        what: "target".to_string(),
        detail: format!("{url} did not answer within {} s", START_TIMEOUT.as_secs()),
    })
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

fn start_proxy(
    sandbox: &Sandbox,
    config: &LabConfig,
    scenario: &Scenario,
    upstream: SocketAddr,
) -> Result<(Guarded, SocketAddr), LabError> {
    let mut cmd = sandbox.command(&config.exe);
    cmd.args(["proxy", "--listen", FRONT_ADDR, "--json", "--connect"])
        .arg(upstream.to_string());
    if scenario.path == Path::PoolingProxy {
        cmd.args(["--mode", "http", "--pool"])
            .arg(scenario.upstream_pool.to_string());
    }
    cmd.args(&scenario.extras.proxy_args);
    let proxy = Guarded::spawn("proxy", &mut cmd)?;
    match read_listening(&proxy, "proxy") {
        Ok(addr) => Ok((proxy, addr)),
        Err(err) => Err(with_stderr(err, proxy)),
    }
}

fn with_stderr(err: LabError, child: Guarded) -> LabError {
    match err {
        LabError::Protocol { what, detail } => {
            let stderr = child.kill_and_stderr();
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let detail = if lines.is_empty() {
                detail
            } else {
                // One line: the CLI reports errors on one line.
                format!("{detail}; its stderr: {}", lines.join(" / "))
            };
            LabError::Protocol { what, detail }
        }
        other => other,
    }
}

/// SIGTERM, then wait for the exit.
fn stop(child: Guarded, what: &str) -> Result<Vec<String>, LabError> {
    child.signal(nix::sys::signal::Signal::SIGTERM);
    let finished = child.finish(STOP_TIMEOUT)?;
    // A user's server may exit with any status on SIGTERM; portlab's own exit 0.
    if what != "target" && !finished.status.success() && finished.status.code().is_some() {
        return Err(LabError::Protocol {
            what: what.to_string(),
            detail: format!(
                "exited with {}: {}",
                finished.status,
                one_line(&finished.stderr)
            ),
        });
    }
    Ok(finished.lines)
}

/// Stops the proxy and reads its final stats event.
fn stop_proxy(proxy: Guarded) -> Result<UpstreamReport, LabError> {
    let lines = stop(proxy, "proxy")?;
    let stats = lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<ProxyStats>(l).ok())
        .find(|s| s.event == "stats")
        .ok_or_else(|| LabError::Protocol {
            what: "proxy".to_string(),
            detail: "no stats event after SIGTERM".to_string(),
        })?;
    Ok(UpstreamReport {
        // The forwarder counts connects, the pooling proxy connections opened.
        connections_opened: stats
            .upstream_connects
            .or(stats.upstream_connections_opened)
            .unwrap_or(0),
        peak_open: stats.upstream_connections_peak,
        connect_failures: stats.upstream_connect_failures,
    })
}

/// The fields of `portlab proxy --json`'s stats event that the lab reads.
#[derive(Deserialize)]
struct ProxyStats {
    event: String,
    #[serde(default)]
    upstream_connects: Option<u64>,
    #[serde(default)]
    upstream_connections_opened: Option<u64>,
    #[serde(default)]
    upstream_connections_peak: Option<u64>,
    #[serde(default)]
    upstream_connect_failures: BTreeMap<String, u64>,
}

/// The fields of `portlab load --json` (docs/load-report.schema.json) that the lab reads.
#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadJson {
    summary: LoadSummary,
    connections: LoadConnections,
    errors: Vec<LoadError>,
    timeline: Vec<LoadSecond>,
    telemetry: LoadTelemetry,
    latency: LoadLatency,
    retries: LoadRetries,
    circuit_breaker: Option<LoadBreaker>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadBreaker {
    counters: LoadBreakerCounters,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadBreakerCounters {
    opened: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadLatency {
    p50_us: u64,
    p99_us: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadRetries {
    attempts: u64,
}

/// `telemetry.progress.points` of `portlab load --json`: [ms, done, failed], about 10 Hz.
#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadTelemetry {
    progress: LoadProgress,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadProgress {
    points: Vec<(u64, u64, u64)>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadSummary {
    requests: u64,
    succeeded: u64,
    failed: u64,
    short_circuited: u64,
    elapsed_secs: f64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadConnections {
    opened: u64,
    new_per_sec: f64,
    slow_connects: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoadError {
    class: String,
    errno_name: String,
    count: u64,
    first_at_ms: Option<f64>,
}

impl LoadJson {
    fn error_counts(&self) -> Vec<ErrorCount> {
        let mut v: Vec<ErrorCount> = self
            .errors
            .iter()
            .map(|e| ErrorCount {
                class: e.class.clone(),
                errno_name: e.errno_name.clone(),
                count: e.count,
                first_at_ms: e.first_at_ms,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
        v
    }

    fn dominant_error(&self) -> Option<ErrorCount> {
        self.error_counts().into_iter().find(|e| e.count > 0)
    }
}

fn run_load(
    sandbox: &Sandbox,
    config: &LabConfig,
    scenario: &Scenario,
    url: &str,
) -> Result<LoadJson, LabError> {
    let mut cmd: Command = sandbox.command(&config.exe);
    cmd.arg("load")
        .arg("-n")
        .arg(scenario.requests.to_string())
        .arg("-c")
        .arg(scenario.concurrency.to_string())
        .arg("--connection")
        .arg(scenario.policy.cli_name())
        .arg("--json");
    if scenario.fix == Some(crate::scenario::Fix::Http2) {
        cmd.arg("-h2")
            .arg("-p")
            .arg(crate::scenario::HTTP2_STREAMS.to_string());
    }
    if !scenario.source_ips.is_empty() {
        let ips: Vec<String> = scenario
            .source_ips
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        cmd.arg("--source-ip").arg(ips.join(","));
    }
    if let Some(threads) = config.load_threads {
        cmd.arg("--threads").arg(threads.to_string());
    }
    cmd.args(&scenario.extras.load_args);
    cmd.arg(url);
    let finished = Guarded::spawn("load", &mut cmd)?.finish(load_timeout(scenario.requests))?;
    // Exit 0: all answered; 1: some failed (expected here); anything else: a real problem.
    if !matches!(finished.status.code(), Some(0 | 1)) {
        return Err(LabError::Protocol {
            what: "load".to_string(),
            detail: format!(
                "exited with {}: {}",
                finished.status,
                one_line(&finished.stderr)
            ),
        });
    }
    let text = finished.lines.join("\n");
    serde_json::from_str(&text).map_err(|e| LabError::Protocol {
        what: "load".to_string(),
        detail: format!(
            "unreadable JSON report ({e}); stderr: {}",
            one_line(&finished.stderr)
        ),
    })
}

/// Which leg a pool belongs to.
fn leg(destination: SocketAddr, topology: &Topology, path: Path) -> Option<&'static str> {
    if destination == topology.front {
        Some("client")
    } else if path != Path::Direct && destination == topology.server {
        Some("upstream")
    } else {
        None
    }
}

/// The pool with the most TIME_WAIT of the leg `only` (or of either leg), with the time the
/// leg first had a pool with every port in use.
fn peak_pool(
    window: &[&Sample],
    topology: &Topology,
    path: Path,
    only: Option<&str>,
    pool_ports: u64,
    start_ms: u64,
) -> Option<PoolPeak> {
    let on_leg = |p: &crate::anchor::PoolSample| {
        leg(p.destination, topology, path).filter(|l| only.is_none_or(|o| o == *l))
    };
    let (leg, p) = window
        .iter()
        .flat_map(|s| s.pools.iter())
        .filter_map(|p| on_leg(p).map(|l| (l, p)))
        .max_by_key(|(_, p)| (p.time_wait, p.used))?;
    let full_after_secs = window
        .iter()
        .find(|s| {
            pool_ports > 0
                && s.pools
                    .iter()
                    .any(|p| p.used >= pool_ports && on_leg(p) == Some(leg))
        })
        .map(|s| s.monotonic_ms.saturating_sub(start_ms) as f64 / 1000.0);
    Some(PoolPeak {
        leg: leg.to_string(),
        local_ip: p.local_ip,
        destination: p.destination,
        time_wait: p.time_wait,
        used: p.used,
        full_after_secs,
    })
}

fn pool_full_after(window: &[&Sample], pool_ports: u64, start_ms: u64) -> Option<f64> {
    window
        .iter()
        .find(|s| pool_ports > 0 && s.pools.iter().any(|p| p.used >= pool_ports))
        .map(|s| s.monotonic_ms.saturating_sub(start_ms) as f64 / 1000.0)
}

fn timeline(
    window: &[&Sample],
    topology: &Topology,
    path: Path,
    start_ms: u64,
) -> Vec<TimelinePoint> {
    window
        .iter()
        .map(|s| {
            let used_on = |wanted: &str| -> u64 {
                s.pools
                    .iter()
                    .filter(|p| leg(p.destination, topology, path) == Some(wanted))
                    .map(|p| p.used)
                    .sum()
            };
            TimelinePoint {
                t_ms: s.monotonic_ms as i64 - start_ms as i64,
                time_wait: s.time_wait,
                client_ports_used: used_on("client"),
                upstream_ports_used: used_on("upstream"),
            }
        })
        .collect()
}
