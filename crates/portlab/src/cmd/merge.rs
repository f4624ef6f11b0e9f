//! `portlab merge`: the `portlab load --json` reports of many agents (the pods of a Kubernetes
//! Indexed Job, say) merged into one report in `load`'s own text and JSON format: counts summed
//! exactly, histograms merged, timelines aligned by wall-clock second, a line per agent and
//! the diagnosis over every agent's evidence. Reports are read one at a time and folded, so
//! memory stays flat however many there are.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use portlab_diagnose::{combine_agents, diagnose, AgentFindings, Cause, Evidence, Severity};
use portlab_load::merge::wall_second;
use portlab_load::{LoadReport, ReportMerger, Segment, SCHEMA_VERSION};
use portlab_sockets::{PortPoolSettings, SamplerReport};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::cmd::load::render_text;
use crate::cmd::load_agent::AgentIdentity;
use crate::cmd::load_telemetry::{self, TelemetryReport};
use crate::exit;
use crate::render::fmt_int;
use crate::style::Painter;
use portlab_pipeline::load::{JoinedSecond, ProgressSeries};

/// Flags of `portlab merge`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Merges `portlab load --json` reports of one target (the agents of a distributed run, e.g. \
`portlab load --segment I/N`) into one report in load's format. Refuses (exit 2) reports of \
different targets or schema versions, and a segment given twice, unless --force.

Exit status: 0 when every request of every agent got a response, 1 when any failed, 2 for bad \
input (a file that is not a load report, truncated JSON, mismatched reports).

Examples:
  portlab merge report-*.json
  portlab merge --json reports/*.json > merged.json")]
pub struct Args {
    /// The reports (`portlab load --json` output), one file per agent.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Print the merged report as JSON (docs/load-report.schema.json) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Merge even reports of different targets or schema versions, or repeated segments.
    #[arg(long)]
    pub force: bool,
}

/// `merge` in the JSON report: which reports were merged, and one line per agent.
#[derive(Debug, Clone, Serialize)]
pub struct MergeInfo {
    /// Reports merged.
    pub reports: u64,
    /// The segment count the agents ran with (`--segment I/N`'s N), if they ran segments.
    pub segments: Option<u32>,
    /// Segment indexes of `0..segments` that no report covered.
    pub missing_segments: Vec<u32>,
    /// Whether `--force` was given.
    pub forced: bool,
    /// One entry per report, in the order given.
    pub agents: Vec<AgentLine>,
}

/// One agent of a merged run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentLine {
    /// The report file.
    pub file: String,
    /// How the diagnosis names the agent: segment, host, source IP(s) → target.
    pub label: String,
    /// Host name (pod name).
    pub hostname: String,
    /// Source addresses its connections left from.
    pub source_ips: Vec<IpAddr>,
    /// Its segment, if any.
    pub segment: Option<Segment>,
    /// When it started, UNIX seconds.
    pub started_at_unix_secs: f64,
    /// How long after `--start-at` it started, ms (None without `--start-at`).
    pub start_late_ms: Option<f64>,
    /// Requests it ran.
    pub requests: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Of which failed.
    pub failed: u64,
    /// Its own successful requests per second.
    pub requests_per_sec: f64,
    /// Its failures by class.
    pub errors: BTreeMap<String, u64>,
    /// Usable ports of one pool in its namespace.
    pub pool_size: u64,
    /// Peak ports in use in its fullest (source IP, target) pool, when sampled.
    pub pool_peak_ports_in_use: Option<u64>,
    /// When that pool first filled, ms after the agent's start.
    pub pool_full_at_ms: Option<u64>,
    /// Peak TIME_WAIT sockets to the target, when sampled.
    pub peak_time_wait: Option<u64>,
    /// Its pool ran out: EADDRNOTAVAIL/EADDRINUSE failures, or the sampler saw it full.
    pub pool_ran_out: bool,
    /// The cause of its most severe finding, unless healthy.
    pub worst_finding: Option<Cause>,
}

/// The JSON document: load's layout, with `agent` null and `merge` added.
#[derive(Serialize)]
struct MergedOutput<'a> {
    #[serde(flatten)]
    report: &'a LoadReport,
    agent: Option<()>,
    merge: &'a MergeInfo,
    telemetry: &'a TelemetryReport,
}

/// What a merge reads beside the engine's report, and enough to tell a load report from
/// anything else before reading it in full.
#[derive(Deserialize)]
struct Head {
    schema_version: Option<u32>,
    summary: Option<IgnoredAny>,
    latency: Option<IgnoredAny>,
    merge: Option<IgnoredAny>,
    #[serde(default)]
    agent: Option<AgentIdentity>,
    telemetry: Option<TelemetryIn>,
}

/// The part of `telemetry` a merge reads: the pool and the sampler.
#[derive(Deserialize)]
struct TelemetryIn {
    pool_size: u64,
    settings: PortPoolSettings,
    sampler: Option<SamplerReport>,
}

/// One file, read and checked.
struct Input {
    file: String,
    report: LoadReport,
    agent: Option<AgentIdentity>,
    telemetry: Option<TelemetryIn>,
}

/// What the first report fixes for the others.
struct Reference {
    file: String,
    schema_version: u32,
    method: String,
    url: String,
    segments: Option<u32>,
}

/// Per-second sampler maxima summed (or maxed) over agents, by wall-clock second.
#[derive(Default, Clone, Copy)]
struct PoolSecond {
    time_wait: u64,
    established: u64,
    syn_sent: u64,
    pool_ports_in_use: u64,
    netns_time_wait: u64,
    detailed: bool,
    sampled: bool,
}

/// Runs `portlab merge`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut merger = ReportMerger::new();
    let mut reference: Option<Reference> = None;
    let mut seen_segments: BTreeMap<u32, String> = BTreeMap::new();
    let mut agents: Vec<AgentLine> = Vec::with_capacity(args.files.len());
    let mut findings: Vec<AgentFindings> = Vec::with_capacity(args.files.len());
    let mut pools: BTreeMap<i64, PoolSecond> = BTreeMap::new();
    let mut smallest_pool: Option<(u64, PortPoolSettings)> = None;
    // One buffer for every file's text: no fresh allocation (and page faults) per report.
    let mut text = String::new();
    for path in &args.files {
        let input = read_input(path, &mut text)?;
        let reference = reference.get_or_insert_with(|| Reference {
            file: input.file.clone(),
            schema_version: input.report.schema_version,
            method: input.report.target.method.clone(),
            url: input.report.target.url.clone(),
            segments: input
                .agent
                .as_ref()
                .and_then(|a| a.segment)
                .map(|s| s.count),
        });
        if !args.force {
            check_against(&input, reference, &seen_segments)?;
        }
        if let Some(s) = input.agent.as_ref().and_then(|a| a.segment) {
            seen_segments
                .entry(s.index)
                .or_insert_with(|| input.file.clone());
        }
        merger
            .push(&input.report)
            .map_err(|e| exit::usage(format!("{}: {e}", input.file)))?;
        if let Some(t) = &input.telemetry {
            if smallest_pool
                .as_ref()
                .is_none_or(|(size, _)| t.pool_size < *size)
            {
                smallest_pool = Some((t.pool_size, t.settings.clone()));
            }
            add_pool_seconds(&mut pools, &input.report, t.sampler.as_ref());
        }
        let label = label(&input);
        let agent_findings = input
            .telemetry
            .as_ref()
            .map(|t| diagnose(&agent_evidence(&input.report, t)))
            .unwrap_or_default();
        agents.push(agent_line(&input, &label, &agent_findings));
        findings.push(AgentFindings {
            agent: label,
            findings: agent_findings,
        });
    }
    let report = merger
        .finish()
        .map_err(|e| exit::usage(format!("nothing merged: {e}")))?;
    let segments = reference.as_ref().and_then(|r| r.segments);
    let info = MergeInfo {
        reports: agents.len() as u64,
        segments,
        missing_segments: segments.map_or_else(Vec::new, |n| {
            (0..n).filter(|i| !seen_segments.contains_key(i)).collect()
        }),
        forced: args.force,
        agents,
    };
    let (pool_size, settings) = match smallest_pool {
        Some(p) => p,
        None => (
            0,
            PortPoolSettings::read().context("reading this host's port-pool settings")?,
        ),
    };
    let telemetry = TelemetryReport {
        pool_size,
        settings,
        sampler: None,
        sampler_note: Some(format!(
            "merged from {} reports: each agent's own pool is in \"Agents\" (merge.agents in JSON)",
            info.reports
        )),
        timeline: join(&report, &pools),
        diagnosis: combine_agents(&findings),
        progress: ProgressSeries::default(),
    };
    print(&args, &report, &info, &telemetry)?;
    Ok(if report.summary.failed > 0 {
        ExitCode::from(exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(
    args: &Args,
    report: &LoadReport,
    info: &MergeInfo,
    telemetry: &TelemetryReport,
) -> anyhow::Result<()> {
    if args.json {
        let out = MergedOutput {
            report,
            agent: None,
            merge: info,
            telemetry,
        };
        let text = serde_json::to_string_pretty(&out).context("serializing the report")?;
        exit::emit(&format!("{text}\n"))
    } else {
        let painter = Painter::for_stdout();
        let mut text = render_text(report, painter);
        push_agents(&mut text, info, painter);
        load_telemetry::push_text(&mut text, telemetry, painter);
        exit::emit(&text)
    }
}

/// Reads and parses one report; every failure is one usage-error line naming the file.
fn read_input(path: &Path, text: &mut String) -> anyhow::Result<Input> {
    use std::io::Read as _;
    let file = path.display().to_string();
    let fail = |what: String| exit::usage(format!("{file}: {what}"));
    text.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(text))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let text = text.as_str();
    // Two passes over the text (the head, then the engine's report) cost less than one pass
    // through serde's buffering `flatten`.
    let head: Head = serde_json::from_str(text).map_err(|e| fail(json_problem(&e)))?;
    let (Some(version), Some(_), Some(_)) = (head.schema_version, head.summary, head.latency)
    else {
        return Err(fail(
            "not a `portlab load --json` report (no schema_version, summary and latency; the output of another command?)"
                .to_string(),
        ));
    };
    if head.merge.is_some() {
        return Err(fail(
            "is a merged report already; merge the agents' own reports instead".to_string(),
        ));
    }
    let report: LoadReport = serde_json::from_str(text).map_err(|e| {
        fail(format!(
            "not a valid schema_version {version} load report: {e}"
        ))
    })?;
    Ok(Input {
        file,
        report,
        agent: head.agent,
        telemetry: head.telemetry,
    })
}

fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => format!(
            "truncated JSON (ends at line {} column {}): the report was cut short",
            e.line(),
            e.column()
        ),
        Category::Syntax => format!("not valid JSON: {e}"),
        Category::Data => {
            "not a `portlab load --json` report (not a JSON object of that layout)".to_string()
        }
        Category::Io => format!("cannot read: {e}"),
    }
}

/// Refuses a report that does not belong with the first one (exit 2 unless --force).
fn check_against(
    input: &Input,
    reference: &Reference,
    seen_segments: &BTreeMap<u32, String>,
) -> anyhow::Result<()> {
    let fail = |what: String| exit::usage(format!("{}: {what} (or pass --force)", input.file));
    let r = &input.report;
    if r.schema_version != SCHEMA_VERSION {
        return Err(fail(format!(
            "schema_version {}, but this portlab merges version {SCHEMA_VERSION}; re-run the agent with this build",
            r.schema_version
        )));
    }
    if r.schema_version != reference.schema_version {
        return Err(fail(format!(
            "schema_version {} differs from {}'s {}",
            r.schema_version, reference.file, reference.schema_version
        )));
    }
    if r.target.url != reference.url || r.target.method != reference.method {
        return Err(fail(format!(
            "target {} {} differs from {}'s {} {}; merge reports of one target",
            r.target.method, r.target.url, reference.file, reference.method, reference.url
        )));
    }
    let segment = input.agent.as_ref().and_then(|a| a.segment);
    match (segment, reference.segments) {
        (Some(s), Some(n)) if s.count != n => Err(fail(format!(
            "segment {s} is not one of {}'s {n} segments",
            reference.file
        ))),
        (Some(s), Some(_)) => match seen_segments.get(&s.index) {
            Some(other) => Err(fail(format!(
                "segment {s} is also {other}'s; give each agent's report once"
            ))),
            None => Ok(()),
        },
        (Some(s), None) => Err(fail(format!(
            "segment {s}, but {} ran no segment",
            reference.file
        ))),
        (None, Some(n)) => Err(fail(format!(
            "ran no segment, but {} is one of {n}",
            reference.file
        ))),
        (None, None) => Ok(()),
    }
}

/// The agent's evidence for the diagnosis: the same as `load` builds for its own run (one
/// small function, so it follows load's evidence wherever that lives).
fn agent_evidence(report: &LoadReport, t: &TelemetryIn) -> Evidence {
    portlab_pipeline::load::evidence(
        &t.settings,
        &[report.target.connected_to],
        report,
        t.sampler.as_ref(),
        t.pool_size,
    )
}

/// `2/4 host 10.0.0.2 → 10.0.9.1:80`: segment, host, and the pool (source IP → target).
fn label(input: &Input) -> String {
    let target: SocketAddr = input.report.target.connected_to;
    let Some(a) = &input.agent else {
        return format!("{} → {target}", input.file);
    };
    let ips: Vec<String> = a.source_ips.iter().map(ToString::to_string).collect();
    let ips = if ips.is_empty() {
        "?".to_string()
    } else {
        ips.join(",")
    };
    match a.segment {
        Some(s) => format!("agent {s} {} {ips} → {target}", a.hostname),
        None => format!("agent {} {ips} → {target}", a.hostname),
    }
}

fn agent_line(input: &Input, label: &str, findings: &[portlab_diagnose::Finding]) -> AgentLine {
    let r = &input.report;
    let sampler = input.telemetry.as_ref().and_then(|t| t.sampler.as_ref());
    let errors: BTreeMap<String, u64> = r
        .errors
        .iter()
        .map(|e| (e.class.to_string(), e.count))
        .collect();
    let port_failures: u64 = r
        .errors
        .iter()
        .filter(|e| {
            matches!(
                e.class,
                portlab_load::ErrorClass::AddrNotAvailable | portlab_load::ErrorClass::AddrInUse
            )
        })
        .map(|e| e.count)
        .sum();
    let pool_full_at_ms = sampler.and_then(|s| s.pool_full_at_ms);
    AgentLine {
        file: input.file.clone(),
        label: label.to_string(),
        hostname: input
            .agent
            .as_ref()
            .map_or_else(String::new, |a| a.hostname.clone()),
        source_ips: input
            .agent
            .as_ref()
            .map_or_else(Vec::new, |a| a.source_ips.clone()),
        segment: input.agent.as_ref().and_then(|a| a.segment),
        started_at_unix_secs: r.started_at_unix_secs,
        start_late_ms: input.agent.as_ref().and_then(|a| a.start_late_ms),
        requests: r.summary.requests,
        succeeded: r.summary.succeeded,
        failed: r.summary.failed,
        requests_per_sec: r.summary.requests_per_sec,
        errors,
        pool_size: input.telemetry.as_ref().map_or(0, |t| t.pool_size),
        pool_peak_ports_in_use: sampler.map(|s| s.peak.max_pool_ports_in_use),
        pool_full_at_ms,
        peak_time_wait: sampler.map(|s| s.peak.time_wait),
        pool_ran_out: port_failures > 0 || pool_full_at_ms.is_some(),
        worst_finding: findings
            .iter()
            .filter(|f| f.cause != Cause::Healthy && f.severity > Severity::Info)
            .max_by_key(|f| f.severity)
            .map(|f| f.cause),
    }
}

/// Adds an agent's sampled seconds to the wall-clock seconds of the merge (sampler second k
/// is taken as engine second k, as `load` joins them).
fn add_pool_seconds(
    pools: &mut BTreeMap<i64, PoolSecond>,
    report: &LoadReport,
    sampler: Option<&SamplerReport>,
) {
    let Some(sampler) = sampler else { return };
    for x in &sampler.seconds {
        let p = pools
            .entry(wall_second(report.started_at_unix_secs, x.second))
            .or_default();
        p.sampled = true;
        p.netns_time_wait += x.netns_max.tcp_time_wait;
        if x.samples > 0 {
            p.detailed = true;
            p.time_wait += x.max.time_wait;
            p.established += x.max.established;
            p.syn_sent += x.max.syn_sent;
            p.pool_ports_in_use = p.pool_ports_in_use.max(x.max.max_pool_ports_in_use);
        }
    }
}

/// The merged timeline joined with the agents' pools: socket counts summed over agents (each
/// agent's per-second peak), the fullest pool the largest of any agent's.
fn join(report: &LoadReport, pools: &BTreeMap<i64, PoolSecond>) -> Vec<JoinedSecond> {
    let base = wall_second(report.started_at_unix_secs, 0);
    report
        .timeline
        .iter()
        .map(|t| {
            let p = pools
                .get(&(base + t.second as i64))
                .copied()
                .unwrap_or_default();
            let detailed = |v: u64| p.detailed.then_some(v);
            JoinedSecond {
                second: t.second,
                succeeded: t.succeeded,
                failed: t.failed,
                new_connections: t.new_connections,
                p99_us: t.p99_us,
                time_wait: detailed(p.time_wait),
                established: detailed(p.established),
                syn_sent: detailed(p.syn_sent),
                pool_ports_in_use: detailed(p.pool_ports_in_use),
                netns_time_wait: p.sampled.then_some(p.netns_time_wait),
            }
        })
        .collect()
}

/// A start this much after `--start-at` is pointed out (its seconds line up with the others'
/// later ones, so the merged timeline's first seconds lack its load).
const LATE_START_MS: f64 = 1000.0;

/// Agents listed one per line in the text report; past it, only (that many of) those with
/// failures are.
const TEXT_AGENTS: usize = 32;

/// The "Agents" section: one line per agent, its pool, and whether it ran out.
fn push_agents(s: &mut String, info: &MergeInfo, p: Painter) {
    let segments = match info.segments {
        Some(n) => format!(
            ", {} of {n} segments",
            n as usize - info.missing_segments.len()
        ),
        None => String::new(),
    };
    s.push_str(&format!(
        "\n{}\n",
        p.heading(&format!("Agents ({} reports{segments}):", info.reports))
    ));
    if !info.missing_segments.is_empty() {
        let missing: Vec<String> = info.missing_segments.iter().map(u32::to_string).collect();
        s.push_str(&format!(
            "  {}\n",
            p.warn(&format!(
                "missing segments: {} (their share of the load is not in this report)",
                missing.join(", ")
            ))
        ));
    }
    // Past TEXT_AGENTS agents, those with failures come first, up to TEXT_AGENTS lines.
    let many = info.agents.len() > TEXT_AGENTS;
    let shown: Vec<&AgentLine> = info
        .agents
        .iter()
        .filter(|a| !many || a.failed > 0)
        .take(TEXT_AGENTS)
        .collect();
    for a in &shown {
        s.push_str(&format!("  {}\n", agent_text(a, p)));
    }
    let failing = info.agents.iter().filter(|a| a.failed > 0).count();
    let hidden_failing = failing - shown.iter().filter(|a| a.failed > 0).count();
    let hidden_healthy = if many { info.agents.len() - failing } else { 0 };
    if hidden_failing + hidden_healthy > 0 {
        s.push_str(&format!(
            "  {}\n",
            p.dim(&format!(
                "{hidden_failing} more agents with failures and {hidden_healthy} without (see --json: merge.agents)"
            ))
        ));
    }
}

fn agent_text(a: &AgentLine, p: Painter) -> String {
    let counts = format!(
        "{} requests, {} failed, {:.1} req/s",
        fmt_int(a.requests),
        fmt_int(a.failed),
        a.requests_per_sec
    );
    let pool = match a.pool_peak_ports_in_use {
        Some(peak) => {
            let full = a.pool_full_at_ms.map_or_else(
                || "never full".to_string(),
                |ms| format!("full at {:.2} s", ms as f64 / 1000.0),
            );
            format!(
                "pool {} of {} ports ({full})",
                fmt_int(peak),
                fmt_int(a.pool_size)
            )
        }
        None => format!("pool of {} ports (not sampled)", fmt_int(a.pool_size)),
    };
    let mut line = format!("{}: {counts}; {pool}", a.label);
    if !a.errors.is_empty() {
        let errors: Vec<String> = a
            .errors
            .iter()
            .map(|(c, n)| format!("{c} {}", fmt_int(*n)))
            .collect();
        line.push_str(&format!("; {}", errors.join(", ")));
    }
    if let Some(late) = a.start_late_ms.filter(|ms| *ms >= LATE_START_MS) {
        line.push_str(&format!(
            "; {}",
            p.warn(&format!("started {:.1} s after --start-at", late / 1000.0))
        ));
    }
    if a.pool_ran_out {
        line.push_str(&format!(" — {}", p.bad("its pool ran out")));
    }
    line
}
