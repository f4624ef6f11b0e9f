//! `portlab analyze FILE...`: the pool report and the diagnosis from text captured on a
//! Windows, macOS or Linux host (socket tables, settings, error lines), under the rules of the
//! OS the text came from. Parsing lives in portlab-capture, the findings in portlab-diagnose
//! (`captured`); this file reads the files, builds the evidence and renders.

use std::process::ExitCode;

use anyhow::Context;
use portlab_capture::report::{Analysis, ErrorSummary, SnapshotReport};
use portlab_capture::{analyze, read_capture, AnalyzeOptions, Format, SourceOs, TextEncoding};
use portlab_diagnose::captured::{
    diagnose_captured, CapturedError, CapturedEvidence, FailedCall, HostPool,
};
use portlab_diagnose::{Evidence, Finding, Os, Severity};
use portlab_load::ErrorClass;
use serde::Serialize;

use crate::render::{fmt_int, fmt_rate, push_findings, Detail};
use crate::style::Painter;

/// Flags of `portlab analyze`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reads: Windows netstat -an[o][b][q] (any locale, UTF-16LE or OEM code page, CRLF),
Get-NetTCPConnection (table, Export-Csv, ConvertTo-Json), netsh dynamicport / excludedportrange /
portproxy, Get-NetTCPSetting, reg query …\\Tcpip\\Parameters, Tcpip events 4227/4231; macOS
netstat -an[v][W] -p tcp and sysctl; Linux ss -tan[po], netstat -tan[p], /proc/net/tcp[6] and
sysctl; error lines of hey, oha, wrk, ab, k6, curl, Go, Node.js, Python, Java, .NET and nginx.
Each file is detected per section; repeated tables are snapshots of a timeline.

Pools: Windows and macOS hold an ephemeral port exclusively host-wide (one pool for all
destinations); Linux has one pool per (local IP, destination).

Exit code: 0 no critical finding, 1 a critical finding, 2 nothing readable or bad flags.

Examples:
  portlab analyze --how windows            the commands to capture everything analyze reads
  portlab analyze capture.txt hey.txt      a capture and the load tester's output
  portlab analyze --json capture.txt       machine-readable (fields: docs/analyze-json.md)
  type netstat.txt | portlab analyze -     from stdin")]
pub struct Args {
    /// Capture files; `-` reads stdin. Several files are read in order (a timeline when they
    /// hold snapshots).
    #[arg(value_name = "FILE", required_unless_present = "how")]
    files: Vec<String>,

    /// Print the commands that capture everything analyze reads on that OS, and exit.
    #[arg(long, value_name = "OS", value_parser = ["windows", "macos", "linux"])]
    how: Option<String>,

    /// Read every file as this format only (default: detect per line and section).
    #[arg(long, value_name = "NAME", value_parser = format_names())]
    format: Option<String>,

    /// Decode every file with this encoding (default: sniff BOM, UTF-16, UTF-8, else cp850).
    #[arg(long, value_name = "NAME", value_parser = ["utf-8", "utf-16le", "utf-16be", "cp850", "cp437", "cp866"])]
    encoding: Option<String>,

    /// The OS the capture came from (default: detected from the formats and error numbers).
    #[arg(long, value_name = "OS", value_parser = ["windows", "macos", "linux"])]
    os: Option<String>,

    /// Windows TIME_WAIT in seconds when no TcpTimedWaitDelay was captured (documented as
    /// 240 s on current Windows, 120 s in older references).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=300))]
    time_wait: Option<u32>,

    /// Seconds between snapshots that carry no timestamp line (e.g. `netstat -ano 30`).
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    interval: Option<f64>,

    /// How many destinations, processes and pools to list.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    top: u16,

    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

fn format_names() -> Vec<&'static str> {
    Format::ALL.iter().map(|f| f.name()).collect()
}

fn parse_interval(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(secs)
    } else {
        Err(format!(
            "{text} s is out of range; use 0 < SECS <= 86400 (e.g. --interval 30)"
        ))
    }
}

/// The JSON document of `portlab analyze --json` (docs/analyze-json.md).
#[derive(Debug, Serialize)]
struct AnalyzeJson<'a> {
    schema: &'static str,
    os: SourceOs,
    os_reason: &'a str,
    captures: &'a [portlab_capture::report::CaptureInfo],
    settings: &'a portlab_capture::report::ResolvedSettings,
    sockets: Option<Sockets<'a>>,
    pools: &'a [portlab_capture::PoolReport],
    destinations: &'a [portlab_capture::report::DestinationReport],
    processes: &'a [portlab_capture::report::ProcessReport],
    timeline: Option<&'a portlab_capture::report::Timeline>,
    snapshots: &'a [SnapshotReport],
    errors: Vec<ErrorJson<'a>>,
    unclassified_lines: u64,
    unclassified_examples: &'a [String],
    other_lines: u64,
    events: portlab_capture::EventCounts,
    linux_snapshot: Option<&'a portlab_sockets::Snapshot>,
    diagnosis: &'a [Finding],
}

#[derive(Debug, Serialize)]
struct Sockets<'a> {
    by_state: &'a std::collections::BTreeMap<&'static str, u64>,
    rows: u64,
    truncated_rows: u64,
    named_rows: u64,
    udp_rows: u64,
}

#[derive(Debug, Serialize)]
struct ErrorJson<'a> {
    class: ErrorClass,
    os_code: Option<i32>,
    os: Option<SourceOs>,
    call: Option<portlab_capture::errors::Call>,
    count: u64,
    lines: u64,
    destination: Option<std::net::SocketAddr>,
    example: &'a str,
}

/// Runs `portlab analyze`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(os) = &args.how {
        crate::exit::emit(how(os))?;
        return Ok(ExitCode::SUCCESS);
    }
    let format = args.format.as_deref().and_then(Format::from_name);
    let encoding = args.encoding.as_deref().and_then(TextEncoding::from_name);
    let mut captures = Vec::new();
    let mut stdin_used = false;
    for file in &args.files {
        let capture = if file == "-" {
            if stdin_used {
                return Err(crate::exit::usage("- (stdin) can be given only once"));
            }
            stdin_used = true;
            read_capture("-", std::io::stdin().lock(), format, encoding)
        } else {
            let f = std::fs::File::open(file)
                .map_err(|e| crate::exit::usage(format!("{file}: cannot open: {e}")))?;
            if f.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(crate::exit::usage(format!(
                    "{file}: is a directory; give the capture files inside it"
                )));
            }
            read_capture(file, f, format, encoding)
        };
        captures.push(capture.map_err(|e| crate::exit::usage(e.to_string()))?);
    }
    let options = AnalyzeOptions {
        os: args.os.as_deref().and_then(SourceOs::from_name),
        windows_time_wait_secs: args.time_wait,
        interval_secs: args.interval,
    };
    let analysis = analyze(captures, &options).map_err(|e| crate::exit::usage(e.to_string()))?;
    let evidence = evidence_of(&analysis);
    let findings = diagnose_captured(&evidence);
    let critical = findings.iter().any(|f| f.severity == Severity::Critical);
    let top = usize::from(args.top);
    if args.json {
        let last = analysis.snapshots.last();
        let doc = AnalyzeJson {
            schema: "portlab.analyze/1",
            os: analysis.os,
            os_reason: &analysis.os_reason,
            captures: &analysis.captures,
            settings: &analysis.settings,
            sockets: last.map(|s| Sockets {
                by_state: &s.by_state,
                rows: s.rows,
                truncated_rows: s.truncated_rows,
                named_rows: s.named_rows,
                udp_rows: s.udp_rows,
            }),
            pools: &analysis.pools,
            destinations: last.map_or(&[], |s| s.destinations.as_slice()),
            processes: last.map_or(&[], |s| s.processes.as_slice()),
            timeline: analysis.timeline.as_ref(),
            snapshots: &analysis.snapshots,
            errors: analysis.errors.iter().map(error_json).collect(),
            unclassified_lines: analysis.unclassified_lines,
            unclassified_examples: &analysis.unclassified_examples,
            other_lines: analysis.other_lines,
            events: analysis.events,
            linux_snapshot: analysis.linux_snapshot.as_ref(),
            diagnosis: &findings,
        };
        crate::exit::emit(&format!(
            "{}\n",
            serde_json::to_string(&doc).context("encoding JSON")?
        ))?;
    } else {
        crate::exit::emit(&render(&analysis, &findings, top, Painter::for_stdout()))?;
    }
    Ok(if critical {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn error_json(e: &ErrorSummary) -> ErrorJson<'_> {
    ErrorJson {
        class: e.class,
        os_code: e.os_code,
        os: e.os,
        call: e.call,
        count: e.count,
        lines: e.lines,
        destination: e.destination,
        example: &e.example,
    }
}

fn diagnose_os(os: SourceOs) -> Os {
    match os {
        SourceOs::Windows => Os::Windows,
        SourceOs::Macos => Os::Macos,
        SourceOs::Linux => Os::Linux,
    }
}

fn call_of(call: Option<portlab_capture::errors::Call>) -> Option<FailedCall> {
    use portlab_capture::errors::Call;
    call.map(|c| match c {
        Call::Connect => FailedCall::Connect,
        Call::Bind => FailedCall::Bind,
        Call::Listen => FailedCall::Listen,
        Call::Read => FailedCall::Read,
        Call::Write => FailedCall::Write,
    })
}

/// The evidence the captured-text rules read, from the analysis.
fn evidence_of(a: &Analysis) -> CapturedEvidence {
    let last = a.snapshots.last();
    let host_pool = match a.os {
        SourceOs::Linux => None,
        _ => a
            .pools
            .iter()
            .find(|p| p.scope == "host")
            .map(|p| HostPool {
                range_low: a.settings.port_range.low,
                range_high: a.settings.port_range.high,
                size: p.size,
                excluded_ports: a.settings.excluded_ports,
                in_use: p.in_use,
                time_wait: p.time_wait,
                bound: p.bound,
                time_wait_secs: a.settings.time_wait_secs,
                time_wait_assumed: a.settings.time_wait_assumed,
                bound_visible: last.is_some_and(|s| {
                    s.by_state.contains_key("BOUND") || s.format.starts_with("get-nettcpconnection")
                }),
            }),
    };
    let linux = match (&a.settings.linux, &a.linux_snapshot) {
        (Some(settings), Some(snapshot)) => Some(Evidence {
            settings: settings.clone(),
            loopback: false,
            run: None,
            pool: None,
            counters_delta: None,
            counters_interval_ms: 0,
            snapshot: Some(snapshot.clone()),
        }),
        _ => None,
    };
    let listening_ports = listening_ports(a);
    CapturedEvidence {
        os: diagnose_os(a.os),
        host_pool,
        linux,
        errors: a
            .errors
            .iter()
            .map(|e| CapturedError {
                kind: e.class,
                os_code: e.os_code,
                call: call_of(e.call),
                count: e.count,
                destination: e.destination,
                ipv6_loopback: e.ipv6_loopback,
                example: e.example.clone(),
            })
            .collect(),
        event_4227: a.events.event_4227,
        event_4231: a.events.event_4231,
        portproxy: a
            .settings
            .portproxy
            .iter()
            .map(|r| {
                format!(
                    "{}:{} → {}:{}",
                    r.listen_address, r.listen_port, r.connect_address, r.connect_port
                )
            })
            .collect(),
        listening_ports,
        growth: a
            .timeline
            .as_ref()
            .and_then(|t| Some((t.growth_per_sec?, t.time_to_full_secs))),
        table_captured: !a.snapshots.is_empty(),
    }
}

/// Listening ports of the last table, for the ports the errors name.
fn listening_ports(a: &Analysis) -> Vec<u16> {
    a.errors
        .iter()
        .filter_map(|e| e.destination.map(|d| d.port()))
        .filter(|port| {
            a.snapshots
                .last()
                .is_some_and(|s| s.listening_ports.contains(port))
        })
        .collect()
}

fn render(a: &Analysis, findings: &[Finding], top: usize, p: Painter) -> String {
    let mut s = String::with_capacity(8192);
    s.push_str(&p.heading("portlab analyze"));
    s.push_str(&format!(
        " — captured {} host ({})\n",
        a.os.name(),
        a.os_reason
    ));
    for c in &a.captures {
        s.push_str(&format!(
            "  {}: {} lines, {}, {} snapshot{}; {}\n",
            c.file,
            fmt_int(c.lines),
            c.encoding.map_or("?", |e| e.name()),
            c.snapshots,
            if c.snapshots == 1 { "" } else { "s" },
            if c.format.is_empty() {
                "no known format".to_string()
            } else {
                c.format.join(", ")
            }
        ));
    }
    push_settings(&mut s, a, p);
    if let Some(last) = a.snapshots.last() {
        push_sockets(&mut s, last, p);
        push_pools(&mut s, a, last, top, p);
    } else {
        s.push_str(&format!(
            "\n{}\n  no socket table captured\n",
            p.heading("TCP sockets")
        ));
    }
    push_timeline(&mut s, a, p);
    push_errors(&mut s, a, p);
    push_findings(&mut s, "Diagnosis", findings, Detail::AllInFull, p);
    s
}

fn push_settings(s: &mut String, a: &Analysis, p: Painter) {
    let st = &a.settings;
    s.push_str(&format!("\n{}\n", p.heading("Settings")));
    s.push_str(&format!(
        "  port range {}-{}: {} ports, {} usable; TIME_WAIT {} s\n",
        st.port_range.low,
        st.port_range.high,
        fmt_int(u64::from(st.port_range.high - st.port_range.low) + 1),
        fmt_int(st.usable_ports),
        st.time_wait_secs
    ));
    for note in &st.notes {
        s.push_str(&format!("  {}\n", p.dim(note)));
    }
    for r in &st.portproxy {
        s.push_str(&format!(
            "  portproxy {}:{} → {}:{} (one outbound connection per accepted one)\n",
            r.listen_address, r.listen_port, r.connect_address, r.connect_port
        ));
    }
}

fn push_sockets(s: &mut String, snap: &SnapshotReport, p: Painter) {
    s.push_str(&format!(
        "\n{} {}\n",
        p.heading("TCP sockets"),
        p.dim(&format!(
            "(last snapshot{}; {})",
            snap.taken_at
                .as_deref()
                .map_or(String::new(), |t| format!(" {t}")),
            snap.format
        ))
    ));
    let line: Vec<String> = snap
        .by_state
        .iter()
        .map(|(k, v)| format!("{k} {}", fmt_int(*v)))
        .collect();
    s.push_str(&format!(
        "  {}\n  total {}\n",
        line.join("  "),
        fmt_int(snap.rows)
    ));
    if snap.truncated_rows > 0 {
        s.push_str(&format!(
            "  {}\n",
            p.warn(&format!(
                "{} rows have an address netstat cut to its column width (no -W): counted by state only, not in pools or destinations; capture with netstat -anvW",
                fmt_int(snap.truncated_rows)
            ))
        ));
    }
    if snap.named_rows > 0 {
        s.push_str(&format!(
            "  {}\n",
            p.warn(&format!(
                "{} rows show names instead of addresses (captured without -n): not counted",
                fmt_int(snap.named_rows)
            ))
        ));
    }
}

fn push_pools(s: &mut String, a: &Analysis, snap: &SnapshotReport, top: usize, p: Painter) {
    let scope = match a.os {
        SourceOs::Linux => "one per (local IP, destination): connect() shares a port across destinations",
        _ => "one host-wide pool: each outbound socket holds its port exclusively, for every destination",
    };
    s.push_str(&format!(
        "\n{} {}\n",
        p.heading("Pools"),
        p.dim(&format!("({scope})"))
    ));
    if snap.pools.is_empty() {
        s.push_str("  no socket holds an ephemeral port\n");
    }
    for pool in snap.pools.iter().take(top) {
        let who = match (pool.local_ip, pool.destination) {
            (Some(ip), Some(d)) => format!("{ip} → {d}"),
            _ => "host".to_string(),
        };
        let extra = if pool.scope == "host" {
            format!(
                " ({} listening, {} BOUND)",
                fmt_int(pool.listeners),
                fmt_int(pool.bound)
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  {who}: {} of {} ports in use ({:.1} %), {} by TIME_WAIT{extra}; {} free\n",
            fmt_int(pool.in_use),
            fmt_int(pool.size),
            pool.utilisation * 100.0,
            fmt_int(pool.time_wait),
            fmt_int(pool.free)
        ));
    }
    if let Some(pool) = snap.pools.first() {
        s.push_str(&format!(
            "\n{}\n  sustains {} new connections/s when the client closes first ({} ports ÷ {} s TIME_WAIT); recent churn ≈ {}/s (TIME_WAIT ÷ {} s)\n",
            p.heading("Headroom"),
            fmt_rate(pool.sustainable_rate_per_sec),
            fmt_int(pool.size),
            a.settings.time_wait_secs,
            fmt_rate(pool.churn_estimate_per_sec),
            a.settings.time_wait_secs
        ));
    }
    if !snap.destinations.is_empty() {
        s.push_str(&format!(
            "\n{} {}\n",
            p.heading("Busiest destinations"),
            p.dim("(client-side rows)")
        ));
        for d in snap.destinations.iter().take(top) {
            let role = match d.role {
                Some("portproxy-listen") => "  ← portproxy listen: the clients' leg",
                Some(_) => "  ← portproxy connect: the forwarder's leg, one per client connection",
                None => "",
            };
            s.push_str(&format!(
                "  {:<28} ESTABLISHED {:>7}  TIME_WAIT {:>7}  other {:>6}{role}\n",
                d.destination.to_string(),
                fmt_int(d.counts.established),
                fmt_int(d.counts.time_wait),
                fmt_int(d.counts.other)
            ));
        }
    }
    if !snap.processes.is_empty() {
        s.push_str(&format!(
            "\n{} {}\n",
            p.heading("Owning processes"),
            p.dim("(TIME_WAIT rows carry PID 0 and are not attributed)")
        ));
        for pr in snap.processes.iter().take(top) {
            s.push_str(&format!(
                "  PID {:<8} {:<16} {:>7} sockets ({} ESTABLISHED, {} BOUND)\n",
                pr.pid,
                pr.name.as_deref().unwrap_or(""),
                fmt_int(pr.counts.sockets),
                fmt_int(pr.counts.established),
                fmt_int(pr.counts.bound)
            ));
        }
    }
}

fn push_timeline(s: &mut String, a: &Analysis, p: Painter) {
    let Some(t) = &a.timeline else { return };
    s.push_str(&format!("\n{}\n", p.heading("Timeline")));
    for pt in &t.points {
        s.push_str(&format!(
            "  {:>8}  in use {:>7}  TIME_WAIT {:>7}\n",
            if t.note.is_some() {
                format!("#{}", pt.at_secs as u64)
            } else {
                format!("+{:.0} s", pt.at_secs)
            },
            fmt_int(pt.in_use),
            fmt_int(pt.time_wait)
        ));
    }
    match (t.growth_per_sec, t.time_to_full_secs) {
        (Some(g), Some(ttf)) => s.push_str(&format!(
            "  growth {g:.1} ports/s: the pool is full in ≈ {ttf:.0} s at that rate\n"
        )),
        (Some(g), None) => s.push_str(&format!("  growth {g:.1} ports/s: not filling\n")),
        _ => {}
    }
    if let Some(note) = &t.note {
        s.push_str(&format!("  {}\n", p.dim(note)));
    }
}

fn push_errors(s: &mut String, a: &Analysis, p: Painter) {
    if a.errors.is_empty() && a.unclassified_lines == 0 {
        return;
    }
    s.push_str(&format!("\n{}\n", p.heading("Errors")));
    for e in &a.errors {
        let code = e.os_code.map_or(String::new(), |c| format!(" {c}"));
        let os = e.os.map_or(String::new(), |o| format!(" ({})", o.name()));
        let example: String = e.example.trim().chars().take(110).collect();
        s.push_str(&format!(
            "  {:>8} × {}{code}{os}: {example}\n",
            fmt_int(e.count),
            e.class.name()
        ));
    }
    if a.unclassified_lines > 0 {
        s.push_str(&format!(
            "  {}\n",
            p.warn(&format!(
                "{} error lines not classified (first ones below; all counted in --json):",
                fmt_int(a.unclassified_lines)
            ))
        ));
        for ex in a.unclassified_examples.iter().take(5) {
            let ex: String = ex.chars().take(110).collect();
            s.push_str(&format!("    {ex}\n"));
        }
    }
}

/// The capture commands per OS (`--how`).
fn how(os: &str) -> &'static str {
    match os {
        "windows" => HOW_WINDOWS,
        "macos" => HOW_MACOS,
        _ => HOW_LINUX,
    }
}

const HOW_WINDOWS: &str = r####"# portlab analyze --how windows
# Paste into an elevated Windows PowerShell on the host while the problem happens.
# Takes three socket snapshots 30 s apart, then the settings; writes UTF-8 to portlab-capture.txt.
& {
  foreach ($i in 1..3) {
    Get-Date -Format o
    netstat -anoq
    if ($i -lt 3) { Start-Sleep -Seconds 30 }
  }
  "### netsh int ipv4 show dynamicport tcp"; netsh int ipv4 show dynamicport tcp
  "### netsh int ipv6 show dynamicport tcp"; netsh int ipv6 show dynamicport tcp
  netsh int ipv4 show excludedportrange protocol=tcp
  netsh interface portproxy show all
  reg query HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters
  Get-NetTCPSetting | Select-Object SettingName,DynamicPortRange*,AutoReusePortRange* | ConvertTo-Json
  Get-WinEvent -FilterHashtable @{LogName='System';ProviderName='Tcpip';Id=4227,4231} -MaxEvents 50 -ErrorAction SilentlyContinue |
    Select-Object TimeCreated,Id | ConvertTo-Json
} *>&1 | Out-File -Encoding utf8 portlab-capture.txt
# Save the load tester's or application's output too (hey, wrk, logs), e.g. hey ... > hey.txt
# Then, anywhere portlab runs:  portlab analyze portlab-capture.txt hey.txt
"####;

const HOW_MACOS: &str = r####"# portlab analyze --how macos
# Paste into Terminal on the Mac while the problem happens (-W keeps addresses whole).
# Takes three socket snapshots 30 s apart, then the settings; writes portlab-capture.txt.
{
  for i in 1 2 3; do
    date
    netstat -anvW -p tcp
    [ "$i" -lt 3 ] && sleep 30
  done
  sysctl net.inet.ip.portrange.first net.inet.ip.portrange.last net.inet.tcp.msl net.inet.tcp.randomize_ports
} > portlab-capture.txt 2>&1
# Save the load tester's or application's output too, e.g. hey ... > hey.txt
# Then:  portlab analyze portlab-capture.txt hey.txt
"####;

const HOW_LINUX: &str = r####"# portlab analyze --how linux
# Paste into a shell on the host (root shows process owners) while the problem happens.
# Takes three socket snapshots 30 s apart, then the settings; writes portlab-capture.txt.
# (On the host itself, portlab ports and portlab doctor read all this live.)
{
  for i in 1 2 3; do
    date --iso-8601=seconds
    ss -tanp
    [ "$i" -lt 3 ] && sleep 30
  done
  sysctl net.ipv4.ip_local_port_range net.ipv4.ip_local_reserved_ports net.ipv4.tcp_tw_reuse \
    net.ipv4.tcp_timestamps net.ipv4.tcp_fin_timeout net.ipv4.tcp_max_tw_buckets net.core.somaxconn
} > portlab-capture.txt 2>&1
# Save the load tester's or application's output too, e.g. hey ... > hey.txt
# Then:  portlab analyze portlab-capture.txt hey.txt
"####;
