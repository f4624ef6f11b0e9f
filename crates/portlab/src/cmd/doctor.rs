//! `portlab doctor`: the diagnosis for a host without generating load — settings, current
//! pool usage per destination, counters (since boot, and their rate over a short interval),
//! then findings and remedies.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use portlab_diagnose::{diagnose, diagnose_nat, Finding, Severity};
use portlab_pipeline::host_evidence;

use crate::cmd::nat_view::NatSection;
use serde::Serialize;

use crate::cmd::ports::{self, CounterRates, View};
use crate::render::{push_findings, Detail};
use crate::style::Painter;

/// Flags of `portlab doctor`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit code: 0 when healthy or only warnings, 1 when a finding is critical, 2 for bad flags.

Examples:
  portlab doctor                       this host, counters watched for 1 s
  portlab doctor --dest 10.0.0.5:443   focus on one destination
  portlab doctor --interval 5 --json   watch counters for 5 s; machine-readable
  portlab doctor --trace 10s           also trace every connect() for 10 s (root)
  portlab doctor --netns /run/netns/blue   another namespace (a pod's: /proc/PID/ns/net)")]
pub struct Args {
    /// Look only at the pools towards this destination.
    #[arg(long, value_name = "ADDR:PORT")]
    dest: Option<SocketAddr>,

    /// How long to watch the counters (ListenOverflows, ActiveOpens …) for their current rate:
    /// seconds or a duration (5s, 500ms); 0 skips the wait.
    #[arg(long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
    interval: f64,

    /// How many pools to list.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    top: u16,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,

    /// Also trace every connect() on the host for this long (e.g. 10s) and add what failed,
    /// per process and destination, to the diagnosis (root or CAP_PERFMON + CAP_BPF).
    #[arg(long, value_name = "DURATION")]
    trace: Option<String>,

    /// Examine this network namespace (/run/netns/NAME or /proc/PID/ns/net, e.g. a pod's)
    /// instead of this process's: its pools, sysctls, counters and NAT; with --trace, only the
    /// connects of processes in it (root).
    #[arg(long, value_name = "PATH")]
    netns: Option<std::path::PathBuf>,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    let secs = crate::duration::secs(text)?.as_secs_f64();
    if secs.is_finite() && (0.0..=300.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!(
            "{text} s is out of range; use 0 to 300 (e.g. --interval 1)"
        ))
    }
}

#[derive(Debug, Serialize)]
struct DoctorReport<'a> {
    schema: &'static str,
    settings: &'a portlab_sockets::PortPoolSettings,
    snapshot: &'a portlab_sockets::Snapshot,
    counters: &'a portlab_sockets::Counters,
    counter_rates_per_sec: Option<CounterRates>,
    findings: &'a [Finding],
    /// Conntrack and NAT pools of this namespace.
    nat: &'a crate::cmd::nat_view::NatSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a portlab_trace::TraceSnapshot>,
}

/// Runs `portlab doctor`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.netns {
        crate::netns::enter(path)?;
    }
    let view = View {
        dest: args.dest,
        top: usize::from(args.top),
        proc: false,
    };
    let trace_for = args
        .trace
        .as_deref()
        .map(|d| {
            crate::cmd::model::parse_duration(d, "s")
                .map_err(|e| crate::exit::usage(format!("--trace: {e}")))
        })
        .transpose()?;
    let tracer = match trace_for {
        Some(_) => Some(crate::cmd::trace::start(portlab_trace::Filter {
            dest: args.dest,
            netns: args.netns.clone(),
            ..Default::default()
        })?),
        None => None,
    };
    if let Some(d) = trace_for {
        eprintln!(
            "portlab doctor: tracing every connect() for {:.0} s; ready",
            d.as_secs_f64()
        );
    }
    let trace_started = std::time::Instant::now();
    let before = ports::read(view)?;
    let nat_before = NatSection::read();
    let mut reading = None;
    let mut nat = None;
    if args.interval > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(args.interval));
        reading = Some(ports::read(view)?);
        nat = Some(NatSection::read().with_rates_since(&nat_before));
    }
    let nat_findings = match &nat {
        Some(after) if after.available => diagnose_nat(&after.evidence_since(&nat_before)),
        _ => Vec::new(),
    };
    let nat = nat.unwrap_or(nat_before);
    let (reading, earlier) = match reading {
        Some(after) => (after, Some(before)),
        None => (before, None),
    };
    let rates = earlier
        .as_ref()
        .map(|e| CounterRates::between(&e.counters, &reading.counters, reading.at - e.at));
    let evidence = host_evidence(&reading, earlier.as_ref());
    let trace = tracer.map(|t| {
        let left = trace_for
            .unwrap_or_default()
            .saturating_sub(trace_started.elapsed());
        std::thread::sleep(left);
        t.stop()
    });
    let mut findings = match &trace {
        Some(snap) => portlab_diagnose::diagnose_with_trace(
            &evidence,
            &crate::cmd::trace::trace_evidence(snap),
        ),
        None => diagnose(&evidence),
    };
    if nat_findings.iter().any(|f| f.severity > Severity::Info) {
        findings.retain(|f| f.cause != portlab_diagnose::Cause::Healthy);
    }
    findings.extend(nat_findings);
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let critical = findings.iter().any(|f| f.severity == Severity::Critical);
    if args.json {
        let report = DoctorReport {
            schema: "portlab.doctor/1",
            settings: &reading.settings,
            snapshot: &reading.snapshot,
            counters: &reading.counters,
            counter_rates_per_sec: rates,
            findings: &findings,
            nat: &nat,
            trace: trace.as_ref(),
        };
        crate::exit::emit(&format!(
            "{}\n",
            serde_json::to_string(&report).context("encoding JSON")?
        ))?;
    } else {
        let p = Painter::for_stdout();
        let mut s = ports::render_text(&reading, rates, view, p);
        crate::cmd::nat_view::push_text(&mut s, &nat, view.top, p);
        if let Some(snap) = &trace {
            s.push_str(&format!(
                "\n{}\n",
                p.heading(&format!(
                    "connect() outcomes traced for {:.1} s",
                    snap.elapsed_ms as f64 / 1000.0
                ))
            ));
            s.push_str(&crate::cmd::trace::render_table(
                snap,
                usize::from(args.top),
                p,
            ));
        }
        push_findings(&mut s, "Diagnosis", &findings, Detail::Full, p);
        crate::exit::emit(&s)?;
    }
    Ok(if critical {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
