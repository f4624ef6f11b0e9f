//! `portlab reproduce --nat`: NAT source-port exhaustion reproduced in a sandbox (see
//! portlab_lab::nat), rendered as one table of prediction beside measurement, the NAT side's
//! diagnosis of the worst step, and a verdict.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use portlab_lab::nat::{
    check_nat_support, nat_plan, run_nat_lab, NatLabConfig, NatLabEvent, NatLabReport,
    NatStepReport, CLIENT_RANGE,
};
use portlab_lab::LabError;

use crate::exit;
use crate::render::{fmt_int as group, push_findings, wrap, Detail};
use crate::style::Painter;

/// Largest NAT pool the lab drives: its steps open up to 3 × pool connections from the
/// client's 10,000-port range, which must never be the limit.
pub const MAX_NAT_POOL: u64 = 1000;

/// What `reproduce --nat` takes from the command line.
#[derive(Debug, Clone)]
pub struct NatArgs {
    /// `--nat-ports LOW-HIGH`.
    pub nat_ports: Option<String>,
    /// `--nat-steps N,N`: only these steps (1-based, as numbered in the full plan).
    pub steps: Vec<usize>,
    /// `--no-fixes`.
    pub no_fixes: bool,
    /// `--json`.
    pub json: bool,
    /// `--progress`.
    pub progress: bool,
}

/// Parses `--nat-ports`: 1024 ≤ LOW ≤ HIGH < the client range, at most [`MAX_NAT_POOL`] ports.
pub fn parse_nat_ports(text: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || {
        exit::usage(format!(
            "--nat-ports {text}: use LOW-HIGH with 1024 <= LOW <= HIGH < {}, e.g. 40000-40099",
            CLIENT_RANGE.0
        ))
    };
    let (low, high) = text.split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low < 1024 || high < low || high >= CLIENT_RANGE.0 {
        return Err(bad());
    }
    let ports = u64::from(high - low) + 1;
    if ports > MAX_NAT_POOL {
        return Err(exit::usage(format!(
            "--nat-ports {text}: a pool of {} ports is larger than the lab can fill (its steps open 3 × pool connections from the client's {}-{} range); use at most {} ports, e.g. {low}-{}",
            group(ports),
            CLIENT_RANGE.0,
            CLIENT_RANGE.1,
            group(MAX_NAT_POOL),
            u64::from(low) + 99
        )));
    }
    if ports < 4 {
        return Err(exit::usage(format!(
            "--nat-ports {text}: use at least 4 ports so the ladder has distinct steps, e.g. {low}-{}",
            u64::from(low) + 99
        )));
    }
    Ok((low, high))
}

/// Runs `portlab reproduce --nat`.
pub fn run(args: NatArgs) -> anyhow::Result<ExitCode> {
    let mut config = NatLabConfig::new(portlab_lab::current_exe()?);
    if let Some(text) = &args.nat_ports {
        config.nat_ports = parse_nat_ports(text)?;
    }
    config.fixes = !args.no_fixes;
    let mut scenarios = nat_plan(&config);
    if !args.steps.is_empty() {
        let total = scenarios.len();
        if let Some(bad) = args.steps.iter().find(|n| !(1..=total).contains(n)) {
            return Err(exit::usage(format!(
                "--nat-steps {bad}: the NAT lab has steps 1 to {total}{}",
                if config.fixes { "" } else { " with --no-fixes" }
            )));
        }
        scenarios.retain(|s| args.steps.contains(&s.number));
    }
    super::reproduce::install_interrupt_handler()?;
    let usage_or = |err: LabError| -> anyhow::Error {
        match err {
            LabError::NatUnavailable(_)
            | LabError::Sandbox(portlab_lab::AnchorError::NamespacesUnavailable { .. }) => {
                exit::usage(err.to_string())
            }
            other => anyhow::Error::new(other).context("reproduce --nat"),
        }
    };
    match check_nat_support(&config) {
        Ok(()) => {}
        Err(LabError::Interrupted) => return Ok(interrupted()),
        Err(err) => return Err(usage_or(err)),
    }
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let mut on_event = |event: &NatLabEvent<'_>| {
        if show_progress {
            eprintln!("{}", progress_line(event));
        }
    };
    let report = match run_nat_lab(&config, &scenarios, &mut on_event) {
        Ok(r) => r,
        Err(LabError::Interrupted) => return Ok(interrupted()),
        Err(err) => return Err(usage_or(err)),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
        exit::emit(&format!("{text}\n"))?;
    } else {
        exit::emit(&render_text(&report, Painter::for_stdout()))?;
    }
    Ok(if report.exhaustion_reproduced && report.all_within_2pp {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILURE)
    })
}

fn interrupted() -> ExitCode {
    eprintln!("portlab: {}", LabError::Interrupted);
    ExitCode::from(130)
}

fn progress_line(event: &NatLabEvent<'_>) -> String {
    match event {
        NatLabEvent::StepStarted {
            step,
            total,
            scenario,
        } => format!(
            "portlab reproduce --nat: step {step}/{total} started: {} ({} flows, c={})",
            scenario.name, scenario.flows, scenario.concurrency
        ),
        NatLabEvent::StepFinished { total, report } => format!(
            "portlab reproduce --nat: step {}/{total} done: {} of {} failed (predicted {}) in {:.1} s",
            report.step, report.failed, report.flows, report.predicted_failures, report.elapsed_secs
        ),
    }
}

fn pct(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

const HEADERS: [&str; 11] = [
    "#",
    "step",
    "flows",
    "c",
    "dst",
    "NAT ports",
    "failed",
    "predicted",
    "insert_failed (pred.)",
    "peak pool",
    "connect p50/max",
];

fn row(s: &NatStepReport) -> [String; 11] {
    let sc = &s.scenario;
    let nat_ports = if sc.nat_ips > 1 {
        format!("{} ×{} IPs", group(sc.pool_ports()), sc.nat_ips)
    } else {
        group(sc.pool_ports())
    };
    let peak = s.nat.pools_at_peak.first().map_or("0".to_string(), |p| {
        format!("{}/{}", group(p.live + p.closing), group(p.pool_ports))
    });
    let connect = s.connect_ms.map_or("-".to_string(), |[p50, _, max]| {
        format!("{} / {} ms", fmt_ms(p50), fmt_ms(max))
    });
    [
        s.step.to_string(),
        sc.name.clone(),
        group(s.flows),
        group(sc.concurrency),
        sc.destinations.len().to_string(),
        nat_ports,
        format!("{} {}", group(s.failed), pct(s.failure_fraction)),
        format!(
            "{} {}",
            group(s.predicted_failures),
            pct(s.predicted_failure_fraction)
        ),
        format!(
            "{} ({})",
            group(s.nat.delta.insert_failed),
            group(s.nat.predicted_insert_failed)
        ),
        peak,
        connect,
    ]
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        group(ms.round() as u64)
    } else {
        format!("{ms:.1}")
    }
}

/// The human report.
pub fn render_text(r: &NatLabReport, paint: Painter) -> String {
    let mut o = String::new();
    let s = &r.settings;
    let _ = writeln!(
        o,
        "{}",
        paint.heading("portlab reproduce --nat: source-NAT port exhaustion, in a sandbox")
    );
    let _ = writeln!(
        o,
        "  sandbox: fresh {} per step; NAT rule (nft, inside only): {}",
        match s.isolation {
            Some(portlab_lab::Isolation::UserAndNetworkNamespace) => "user + network namespace",
            _ => "network namespace",
        },
        s.rule
    );
    let _ = writeln!(
        o,
        "  pool: {} ports per (NAT IP, destination); client ip_local_port_range {}-{}; kernel {} ({})",
        group(s.pool_ports),
        s.client_range.0,
        s.client_range.1,
        s.kernel,
        if s.closing_evictable {
            "≥ 6.5: closing TCP entries evictable"
        } else {
            "≤ 6.4: TIME_WAIT entries hold their port 120 s"
        }
    );
    let _ = writeln!(
        o,
        "  client: tcp_syn_retries {} ({} SYNs, then ETIMEDOUT after ~3 s); held connections stay open {:.0} s; predictions: portlab-model {}",
        s.syn_retries, s.syns_per_connect, s.hold_secs, s.profile
    );
    let _ = writeln!(o);
    render_table(&mut o, &r.steps, paint);
    render_notes(&mut o, r);
    if let Some(worst) = r
        .steps
        .iter()
        .filter(|s| !s.findings.is_empty())
        .max_by_key(|s| (s.failed, std::cmp::Reverse(s.step)))
    {
        let title = format!(
            "Diagnosis on the NAT side, step {}: {} ({} flows, c={})",
            worst.step, worst.scenario.name, worst.flows, worst.scenario.concurrency
        );
        push_findings(&mut o, &title, &worst.findings, Detail::Compact, paint);
    }
    let verdict = match (r.exhaustion_reproduced, r.all_within_2pp) {
        (true, true) => paint
            .good("NAT port exhaustion reproduced; every step within 2 points of its prediction"),
        (false, _) => paint.warn("NAT port exhaustion NOT reproduced"),
        (true, false) => {
            paint.bad("reproduced, but a step missed its prediction by more than 2 points")
        }
    };
    let _ = writeln!(
        o,
        "\n{verdict} ({} steps in {:.1} s)",
        r.steps.len(),
        r.elapsed_secs
    );
    o
}

fn render_table(o: &mut String, steps: &[NatStepReport], paint: Painter) {
    let rows: Vec<[String; 11]> = steps.iter().map(row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let right = |i: usize| !matches!(i, 1);
    let line = |cells: &[String]| -> String {
        let mut t = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if right(i) {
                t.push_str(&pad);
                t.push_str(cell);
            } else {
                t.push_str(cell);
                t.push_str(&pad);
            }
            t.push_str("  ");
        }
        t.trim_end().to_string()
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(o, "{}", paint.heading(&line(&headers)));
    for (r, s) in rows.iter().zip(steps) {
        let text = line(r);
        let _ = writeln!(
            o,
            "{}",
            if !s.within_2pp {
                paint.bad(&text)
            } else if s.failed > 0 {
                paint.warn(&text)
            } else {
                paint.good(&text)
            }
        );
    }
}

/// One line per step that says more than the table: the error class, TIME_WAIT entries left,
/// found per flow.
fn render_notes(o: &mut String, r: &NatLabReport) {
    let _ = writeln!(o);
    for s in &r.steps {
        let mut parts = Vec::new();
        if s.connect_timeouts > 0 {
            parts.push(format!(
                "{} ETIMEDOUT (first after {:.1} s), no EADDRNOTAVAIL",
                group(s.connect_timeouts),
                s.first_failure_ms.unwrap_or(0.0) / 1000.0
            ));
        } else if s.failed > 0 {
            parts.push(format!("{} flows got no reply", group(s.failed)));
        }
        if s.scenario.flow == portlab_lab::nat::NatFlow::UdpOneShot {
            parts.push(
                "UDP entries keep their NAT port for nf_conntrack_udp_timeout (30 s): no eviction"
                    .to_string(),
            );
        }
        parts.push(format!(
            "drop +{}, found +{} ({:.1}/flow), early_drop +{}",
            group(s.nat.delta.drop),
            group(s.nat.delta.found),
            s.nat.found_per_flow,
            group(s.nat.delta.early_drop)
        ));
        if s.nat.closing_at_end > 0 {
            parts.push(format!(
                "{} TIME_WAIT/CLOSE entries left in conntrack",
                group(s.nat.closing_at_end)
            ));
        }
        if s.nat.pools_at_peak.len() > 1 {
            parts.push(format!(
                "{} pools, fullest {:.0} %",
                s.nat.pools_at_peak.len(),
                s.nat.peak_utilisation * 100.0
            ));
        }
        let text = format!("{:>2}. {}", s.step, parts.join("; "));
        for (i, l) in wrap(&text, 100).iter().enumerate() {
            let _ = writeln!(o, "{}{l}", if i == 0 { " " } else { "     " });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_ports_are_checked() {
        assert_eq!(parse_nat_ports("40000-40099").ok(), Some((40000, 40099)));
        assert!(parse_nat_ports("5-3").is_err());
        assert!(parse_nat_ports("40099-40000").is_err());
        assert!(parse_nat_ports("40000-49999").is_err());
        assert!(parse_nat_ports("40000-55000").is_err());
        assert!(parse_nat_ports("40000").is_err());
        assert!(parse_nat_ports("40000-40001").is_err());
    }
}
