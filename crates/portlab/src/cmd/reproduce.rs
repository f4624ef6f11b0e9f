//! `portlab reproduce`: the seed incident (load tester → port forwarder → server) reproduced in
//! a sandbox at rising concurrency, then its fixes; one table, the worst step's diagnosis and a
//! story with the measured numbers. Also the hidden `__sandbox-anchor` the sandbox runs.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use portlab_lab::{LabConfig, LabError, LabEvent, LadderReport, SandboxConfig, StepReport, Target};

use crate::exit;
use crate::style::Painter;

mod hypotheses;
mod plot;

/// Exit code after SIGINT/SIGTERM (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

/// Flags of `portlab reproduce`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each step runs in a fresh network namespace (a user namespace too when not root) whose own \
ip_local_port_range and tcp_tw_reuse are set; the host's settings are never touched, and every \
process and namespace is gone when the command ends, also on Ctrl-C.

Steps: one per --ladder concurrency with the load tester closing each connection (drop) through \
the TCP forwarder; then, at the highest concurrency, the fixes: keep-alive, a pooling reverse \
proxy instead of the forwarder, and more source IPs.

Exit status: 0 when the incident reproduced and every fix step answered every request; 1 when \
not (or a step could not run); 2 for bad flags or when no namespace can be made; 130 on Ctrl-C.

Examples:
  portlab reproduce
  portlab reproduce --ladder 50 -n 2000 --json > lab.json
  portlab reproduce --range 40000-44999 --tw-reuse 1
  portlab reproduce --plot lab-plots/
  portlab reproduce --client-ips 6     # many clients: only the forwarder's upstream runs out
  portlab reproduce --nat --nat-ports 40000-40099   # NAT source-port exhaustion instead
  portlab reproduce --target http://127.0.0.1:8080/ --target-cmd 'nginx -g \"daemon off;\"'")]
pub struct Args {
    /// Concurrency of each incident step (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5,10,50,100",
        value_name = "C,C,..."
    )]
    ladder: Vec<usize>,
    /// Requests per step.
    #[arg(
        short = 'n',
        long = "requests",
        default_value_t = 5000,
        value_name = "N"
    )]
    requests: u64,
    /// ip_local_port_range inside the sandbox.
    #[arg(long, default_value = "40000-40999", value_name = "LOW-HIGH")]
    range: String,
    /// tcp_tw_reuse inside the sandbox: 0 off, 1 on, 2 loopback only.
    #[arg(long, default_value_t = 0, value_name = "0|1|2")]
    tw_reuse: u8,
    /// No forwarder: the load tester talks to the server directly.
    #[arg(long)]
    no_proxy: bool,
    /// Upstream connections of the pooling proxy in the pooling-proxy step.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pool: usize,
    /// Source IPs of the source-IP step (default: enough for every request, plus one).
    #[arg(long, value_name = "N")]
    source_ips: Option<usize>,
    /// Source IPs of the load tester in the incident steps (127.0.0.1…N): several stand for
    /// many clients, whose own pools then have room, so only the forwarder's upstream leg runs
    /// out and the clients see resets, as in the seed.
    #[arg(long, default_value_t = 1, value_name = "N")]
    client_ips: usize,
    /// Run only the incident steps.
    #[arg(long)]
    no_fixes: bool,
    /// URL of your own server inside the sandbox (needs --target-cmd), e.g. http://127.0.0.1:8080/.
    #[arg(long, requires = "target_cmd", value_name = "URL")]
    target: Option<String>,
    /// Shell command that starts your server in the foreground, run in every step's sandbox.
    #[arg(long, requires = "target", value_name = "CMD")]
    target_cmd: Option<String>,
    /// Print the whole result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write one SVG timeline per step (DIR/step-N.svg).
    #[arg(long, value_name = "DIR")]
    plot: Option<std::path::PathBuf>,
    /// Print a progress line per step on stderr (default: only when stderr is a terminal).
    #[arg(long)]
    progress: bool,
    /// Reproduce source-NAT port exhaustion instead (containers, cloud NAT): a NAT rule with
    /// a small pool inside the sandbox; uses --nat-ports, --nat-steps, --no-fixes, --json,
    /// --progress.
    #[arg(long)]
    nat: bool,
    /// Port range of the sandbox's NAT rule (with --nat; at most 1,000 ports).
    #[arg(long, value_name = "LOW-HIGH")]
    nat_ports: Option<String>,
    /// Run only these steps of --nat, numbered as its table numbers them (e.g. 4,5).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    nat_steps: Vec<usize>,
    /// Instead of the incident ladder: test each mechanism that makes failures depend on
    /// concurrency (rate-limited exhaustion, backlog overflow, the forwarder's upstream leg,
    /// a server closing after N requests) on the --ladder, each step in its own sandbox and
    /// paced at 20 requests/s per worker for 2 s; -n, --range and --tw-reuse do not apply.
    #[arg(long, conflicts_with_all = ["target", "plot"])]
    hypotheses: bool,
}

impl Args {
    fn config(&self) -> anyhow::Result<LabConfig> {
        let exe = portlab_lab::current_exe()?;
        let mut config = LabConfig::new(exe);
        config.sandbox = SandboxConfig {
            port_range: parse_range(&self.range)?,
            tw_reuse: self.tw_reuse,
            ..SandboxConfig::default()
        };
        if self.tw_reuse > 2 {
            return Err(exit::usage("--tw-reuse must be 0, 1 or 2"));
        }
        if self.ladder.is_empty() || self.ladder.contains(&0) {
            return Err(exit::usage(
                "--ladder needs concurrencies of at least 1, e.g. --ladder 5,10,50,100",
            ));
        }
        if self.requests == 0 {
            return Err(exit::usage("-n must be at least 1"));
        }
        if self.pool == 0 {
            return Err(exit::usage("--pool must be at least 1"));
        }
        if let Some(n) = self.source_ips {
            if !(1..=254).contains(&n) {
                return Err(exit::usage("--source-ips must be between 1 and 254"));
            }
        }
        if !(1..=254).contains(&self.client_ips) {
            return Err(exit::usage("--client-ips must be between 1 and 254"));
        }
        config.client_ips = self.client_ips;
        config.ladder = self.ladder.clone();
        config.requests = self.requests;
        config.direct = self.no_proxy;
        config.upstream_pool = self.pool;
        config.source_ips = self.source_ips;
        config.fixes = !self.no_fixes;
        if let (Some(url), Some(command)) = (&self.target, &self.target_cmd) {
            if portlab_lab::parse_http_url(url).is_none() {
                return Err(exit::usage(format!(
                    "--target {url}: use http://IP:PORT/PATH (the sandbox has no DNS)"
                )));
            }
            config.target = Some(Target {
                url: url.clone(),
                command: command.clone(),
            });
        }
        Ok(config)
    }
}

fn parse_range(text: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || {
        exit::usage(format!(
            "--range {text}: use LOW-HIGH with 1024 <= LOW < HIGH <= 65535, e.g. 40000-40999"
        ))
    };
    let (low, high) = text.split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low < 1024 || high <= low {
        return Err(bad());
    }
    Ok((low, high))
}

/// Runs `portlab reproduce`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if (args.nat_ports.is_some() || !args.nat_steps.is_empty()) && !args.nat {
        return Err(exit::usage(
            "--nat-ports and --nat-steps set up the NAT lab: add --nat (portlab reproduce --nat --nat-ports 40000-40099)",
        ));
    }
    if args.nat {
        return super::reproduce_nat::run(super::reproduce_nat::NatArgs {
            nat_ports: args.nat_ports.clone(),
            steps: args.nat_steps.clone(),
            no_fixes: args.no_fixes,
            json: args.json,
            progress: args.progress,
        });
    }
    let config = args.config()?;
    let scenarios = portlab_lab::plan(&config);
    install_interrupt_handler()?;
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let mut on_event = |event: &LabEvent<'_>| {
        if show_progress {
            eprintln!("{}", progress_line(event));
        }
    };
    if args.hypotheses {
        return hypotheses::run(&config, args.json, &mut on_event);
    }
    let report = match portlab_lab::run_ladder(&config, &scenarios, &mut on_event) {
        Ok(report) => report,
        Err(err) => return lab_failure(err),
    };
    let plots = match &args.plot {
        Some(dir) => plot::write_all(&report.steps, dir)?,
        None => Vec::new(),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
        println!("{text}");
    } else {
        print!("{}", render_text(&report, Painter::for_stdout()));
        if let Some(dir) = &args.plot {
            println!("{} timelines written to {}", plots.len(), dir.display());
        }
    }
    let v = report.verdict;
    Ok(if v.incident_reproduced && v.fixes_hold {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILURE)
    })
}

/// The exit for a lab error: 130 after Ctrl-C, 2 when no namespace can be made, else the error.
fn lab_failure(err: LabError) -> anyhow::Result<ExitCode> {
    match err {
        LabError::Interrupted => {
            eprintln!("portlab: {}", LabError::Interrupted);
            Ok(ExitCode::from(INTERRUPTED))
        }
        err @ LabError::Sandbox(portlab_lab::AnchorError::NamespacesUnavailable { .. }) => {
            Err(exit::usage(err.to_string()))
        }
        err => Err(anyhow::Error::new(err).context("reproduce")),
    }
}

/// SIGINT and SIGTERM go to one thread that stops every child of the lab; the ladder then
/// returns `Interrupted` and its guards reap what is left. Blocking the signals here, before
/// any other thread exists, makes every later thread inherit the block.
pub(crate) fn install_interrupt_handler() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            while set.wait().is_ok() {
                portlab_lab::procs::interrupt();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn progress_line(event: &LabEvent<'_>) -> String {
    match event {
        LabEvent::StepStarted {
            step,
            total,
            scenario,
        } => format!(
            "portlab reproduce: step {step}/{total} started: {} ({}, {}, c={}, n={})",
            scenario.name,
            scenario.path.label(),
            scenario.policy.cli_name(),
            scenario.concurrency,
            scenario.requests
        ),
        LabEvent::StepFinished { total, report } => format!(
            "portlab reproduce: step {}/{total} done: {} of {} failed in {:.2} s",
            report.step, report.failed, report.requests, report.elapsed_secs
        ),
    }
}

/// Runs the hidden `portlab __sandbox-anchor` (see portlab_lab::anchor).
pub fn run_anchor(args: AnchorArgs) -> anyhow::Result<ExitCode> {
    let config = SandboxConfig {
        port_range: parse_range(&args.range)?,
        tw_reuse: args.tw_reuse,
        sample_interval_ms: args.sample_ms,
        sysctls: args
            .sysctl
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout().lock();
    Ok(match portlab_lab::anchor::run(&config, stdin, stdout) {
        Ok(()) => ExitCode::SUCCESS,
        // The error was reported on stdout as an event; the parent prints it.
        Err(_) => ExitCode::from(exit::USAGE),
    })
}

/// Flags of the hidden sandbox anchor (set by portlab-lab, not by users).
#[derive(Debug, clap::Args)]
pub struct AnchorArgs {
    /// ip_local_port_range to set inside the namespace.
    #[arg(long)]
    range: String,
    /// tcp_tw_reuse to set inside the namespace.
    #[arg(long)]
    tw_reuse: u8,
    /// Milliseconds between socket-table samples.
    #[arg(long, default_value_t = 20)]
    sample_ms: u64,
    /// Further net.ipv4 sysctl to set inside the namespace, NAME=VALUE (repeatable).
    #[arg(long)]
    sysctl: Vec<String>,
}

use crate::render::{fmt_int as group, push_findings, wrap, Detail};

fn pct(fraction: f64) -> String {
    format!("{:.1} %", fraction * 100.0)
}

/// The human report: settings line, table, diagnosis, story, verdict.
pub fn render_text(r: &LadderReport, paint: Painter) -> String {
    let mut o = String::new();
    let s = &r.settings;
    let ports = u64::from(s.port_range.1 - s.port_range.0) + 1;
    let isolation = match s.isolation {
        portlab_lab::Isolation::NetworkNamespace => "network namespace",
        portlab_lab::Isolation::UserAndNetworkNamespace => "user + network namespace",
    };
    let _ = writeln!(
        o,
        "{}",
        paint.heading("portlab reproduce: port exhaustion through a port forwarder, in a sandbox")
    );
    let _ = writeln!(
        o,
        "  sandbox: fresh {isolation} per step; ip_local_port_range {}-{} ({} ports), \
         tcp_tw_reuse {}, TIME_WAIT {} s",
        s.port_range.0,
        s.port_range.1,
        group(ports),
        s.tw_reuse,
        s.time_wait_secs
    );
    let _ = writeln!(o);
    render_table(&mut o, &r.steps, paint);
    render_diagnosis(&mut o, r, paint);
    let _ = writeln!(o, "\n{}", paint.heading("What happened"));
    for line in wrap(&r.story, 96) {
        let _ = writeln!(o, "  {line}");
    }
    let v = r.verdict;
    let verdict = match (v.incident_reproduced, v.fixes_hold) {
        (true, true) => paint.good("incident reproduced; every fix held"),
        (false, _) => paint.warn("incident NOT reproduced: no incident step failed"),
        (true, false) => paint.bad("incident reproduced, but a fix step still failed"),
    };
    let _ = writeln!(
        o,
        "\n{verdict} ({} steps in {:.1} s)",
        r.steps.len(),
        r.elapsed_secs
    );
    o
}

const HEADERS: [&str; 11] = [
    "#",
    "step",
    "path",
    "policy",
    "c",
    "requests",
    "failed",
    "dominant error",
    "peak TIME_WAIT / pool",
    "new conn/s",
    "predicted",
];

fn table_row(s: &StepReport) -> [String; 11] {
    let peak = match &s.peak_pool {
        Some(p) => format!(
            "{} / {} ({})",
            group(p.time_wait),
            group(s.pool_ports),
            p.leg
        ),
        None => format!("0 / {}", group(s.pool_ports)),
    };
    [
        s.step.to_string(),
        s.name.clone(),
        s.path.label().to_string(),
        s.policy.cli_name().to_string(),
        s.concurrency.to_string(),
        group(s.requests),
        format!("{} {}", group(s.failed), pct(s.failure_fraction)),
        dominant_cell(s),
        peak,
        group(s.new_connections_per_sec as u64),
        pct(s.predicted_failure_fraction),
    ]
}

/// The load tester's dominant class, and the forwarder's EADDRNOTAVAIL behind it when that is
/// what the client's resets stand for.
fn dominant_cell(s: &StepReport) -> String {
    let upstream = s
        .upstream
        .as_ref()
        .and_then(|u| u.connect_failures.get("addr_not_available"))
        .copied()
        .unwrap_or(0);
    match &s.dominant_error {
        None => "-".to_string(),
        Some(e) if upstream > 0 && e.class != "AddrNotAvailable" => {
            format!("{} < upstream EADDRNOTAVAIL", e.class)
        }
        Some(e) => e.class.clone(),
    }
}

fn render_table(o: &mut String, steps: &[StepReport], paint: Painter) {
    let rows: Vec<[String; 11]> = steps.iter().map(table_row).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let right = |i: usize| matches!(i, 0 | 4 | 5 | 6 | 9 | 10);
    let line = |cells: &[String]| -> String {
        let mut text = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if right(i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
            text.push_str("  ");
        }
        text.trim_end().to_string()
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(o, "{}", paint.heading(&line(&headers)));
    for (row, step) in rows.iter().zip(steps) {
        let text = line(row);
        let painted = if step.failed > 0 {
            paint.bad(&text)
        } else {
            paint.good(&text)
        };
        let _ = writeln!(o, "{painted}");
    }
    if let Some(first) = steps.first() {
        let source = match first.prediction_source {
            portlab_lab::PredictionSource::Simulate => "portlab simulate",
            portlab_lab::PredictionSource::ClosedForm => "closed-form estimate (portlab-lab)",
        };
        let _ = writeln!(o, " {}", paint.dim(&format!("predicted: {source}")));
    }
}

fn render_diagnosis(o: &mut String, r: &LadderReport, paint: Painter) {
    let d = &r.diagnosis;
    let worst = r
        .worst_step
        .and_then(|n| r.steps.iter().find(|s| s.step == n));
    let Some(w) = worst.filter(|_| !d.findings.is_empty()) else {
        let _ = writeln!(o, "\n{}", paint.heading("Diagnosis"));
        for line in wrap(&d.summary, 96) {
            let _ = writeln!(o, "  {line}");
        }
        return;
    };
    let title = format!(
        "Diagnosis of the worst step, {}: {} ({}, {}, c={})",
        w.step,
        w.name,
        w.path.label(),
        w.policy.cli_name(),
        w.concurrency
    );
    push_findings(o, &title, &d.findings, Detail::Compact, paint);
    let _ = writeln!(o, "  {}", paint.heading("In the sandbox"));
    // The lab's conclusion, where it says more than the first finding (the forwarder's
    // upstream leg ran out, not the load tester's).
    if !d.findings.iter().any(|f| d.summary.contains(&f.summary)) {
        bullet(o, &d.summary);
    }
    for line in &d.sandbox_evidence {
        bullet(o, line);
    }
    if !d.remedies.is_empty() {
        let _ = writeln!(o, "  {}", paint.heading("Fixes, as measured"));
        for rem in &d.remedies {
            bullet(o, rem);
        }
    }
}

fn bullet(o: &mut String, text: &str) {
    for (i, line) in wrap(text, 92).iter().enumerate() {
        let mark = if i == 0 { "-" } else { " " };
        let _ = writeln!(o, "    {mark} {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject_nonsense() {
        assert_eq!(parse_range("40000-40999").ok(), Some((40000, 40999)));
        assert!(parse_range("40999-40000").is_err());
        assert!(parse_range("80-90").is_err());
        assert!(parse_range("40000").is_err());
    }
}
