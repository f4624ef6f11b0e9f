//! `portlab trace`: every connect() on this host by process and destination, from kernel
//! tracepoints — attempts, successes, failures by errno, failed port-search time, who closes
//! first and the TIME_WAIT that leaves. A live view on a TTY, a summary and the diagnosis at
//! the end (duration reached, Ctrl-C or SIGTERM).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use portlab_diagnose::{diagnose_with_trace, Evidence, FailureCounts, Finding, Severity};
use portlab_diagnose::{TraceEvidence, TracedFlow};
use portlab_load::ErrorClass;
use portlab_trace::{Filter, FlowReport, Route, Syscalls, TraceError, TraceSnapshot, Tracer};
use serde::Serialize;

use crate::cmd::model::parse_duration;
use crate::exit::usage;
use crate::render::{fmt_int, push_findings, Detail};
use crate::style::Painter;

/// Flags of `portlab trace`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reads the tracepoints sock:inet_sock_set_state and sock:inet_sk_error_report, plus
syscalls:sys_{enter,exit}_connect on the perf route or with --syscalls (no kprobes). Route `bpf`
(the default when it loads): a BPF program built into portlab counts in kernel maps, nothing is
copied per event; route `perf`: perf_event_open rings read and aggregated in user space. The
report names the route and says when connect() returns were not traced. Needs
root, or CAP_BPF + CAP_PERFMON (perf route: CAP_PERFMON). Counts are cumulative since the
start; lost events are reported.

Exit code: 0 when no finding is critical, 1 when one is (e.g. EADDRNOTAVAIL seen), 2 for bad
flags or missing privileges.

Examples:
  portlab trace                                   every process, until Ctrl-C
  portlab trace --dest 10.0.0.5:443 --duration 60s
  portlab trace --pid 4711 --json --duration 10s
  portlab trace --netns /run/netns/blue          one network namespace
  portlab trace --cgroup /sys/fs/cgroup/system.slice/app.service")]
pub struct Args {
    /// Count only connects to this destination.
    #[arg(long, value_name = "ADDR:PORT")]
    dest: Option<SocketAddr>,

    /// Count only connects of this process (thread-group id).
    #[arg(long, value_name = "N", conflicts_with = "cgroup")]
    pid: Option<u32>,

    /// Count only processes in this cgroup (v2) or below it.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,

    /// Count only processes in this network namespace (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,

    /// Stop after this long (e.g. 10s, 5m); without it, trace until Ctrl-C.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,

    /// Refresh the live view this often (TTY only).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    interval: String,

    /// How many (process, destination) rows to show.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    top: u16,

    /// Ring-buffer pages per CPU (4 KiB each, rounded up to a power of two) on the perf route;
    /// raise it when events are lost.
    #[arg(long, value_name = "PAGES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=65536))]
    ring_pages: u32,

    /// Also trace sys_enter/sys_exit_connect (the default on the perf route only): adds the
    /// errno of bound sockets' synchronous failures and connect() errors without a TCP socket,
    /// but puts every syscall of every process on the host on the kernel's tracing slow path
    /// (≈ 100 ns each, docs/trace.md).
    #[arg(long, conflicts_with = "no_syscalls")]
    syscalls: bool,

    /// Never trace sys_enter/sys_exit_connect, on either route (the BPF route's default).
    #[arg(long)]
    no_syscalls: bool,

    /// How to read the tracepoints: bpf (count in kernel maps), perf (copy every event to
    /// user space), auto (bpf when it loads, else perf).
    #[arg(long, value_enum, default_value_t = RouteArg::Auto)]
    route: RouteArg,

    /// Print one JSON object (schema portlab.trace/1, docs/trace.md) instead of text.
    #[arg(long)]
    json: bool,
}

/// `--route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteArg {
    /// BPF when it loads, else perf.
    Auto,
    /// A BPF program counts in kernel maps; fails when it cannot load.
    Bpf,
    /// perf_event_open rings, aggregated in user space.
    Perf,
}

impl From<RouteArg> for Route {
    fn from(r: RouteArg) -> Route {
        match r {
            RouteArg::Auto => Route::Auto,
            RouteArg::Bpf => Route::Bpf,
            RouteArg::Perf => Route::Perf,
        }
    }
}

#[derive(Debug, Serialize)]
struct FilterReport {
    dest: Option<SocketAddr>,
    pid: Option<u32>,
    cgroup: Option<PathBuf>,
    netns: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct TraceReport<'a> {
    schema: &'static str,
    filter: FilterReport,
    /// CPU time of the whole portlab process (reader, rendering), ms.
    cpu_ms: u64,
    /// Why `--route auto` fell back to perf (null when BPF runs or perf was asked for).
    bpf_unavailable: Option<&'a str>,
    #[serde(flatten)]
    snapshot: &'a TraceSnapshot,
    destinations: Vec<portlab_trace::DestinationTotals>,
    findings: &'a [Finding],
}

/// Runs `portlab trace`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let duration = args
        .duration
        .as_deref()
        .map(|d| parse_duration(d, "s").map_err(|e| usage(format!("--duration: {e}"))))
        .transpose()?;
    let interval = parse_duration(&args.interval, "s")
        .map_err(|e| usage(format!("--interval: {e}")))?
        .max(Duration::from_millis(100));
    let signals = block_stop_signals()?;
    let filter = Filter {
        dest: args.dest,
        pid: args.pid,
        cgroup: args.cgroup.clone(),
        netns: args.netns.clone(),
        ring_pages: args.ring_pages as usize,
        syscalls: if args.syscalls {
            Syscalls::On
        } else if args.no_syscalls {
            Syscalls::Off
        } else {
            Syscalls::Auto
        },
        route: args.route.into(),
    };
    let tracer = start(filter)?;
    let route = tracer.route();
    let bpf_unavailable = tracer.bpf_unavailable().map(str::to_string);
    // One line: scripts and tests wait for the first line ending in "ready".
    eprintln!(
        "portlab trace: route {}{}, attached to {} tracepoints on {} CPUs; ready{}",
        route.name(),
        bpf_unavailable
            .as_deref()
            .map(|why| format!(" (BPF route unavailable: {why})"))
            .unwrap_or_default(),
        if tracer.syscalls() { 4 } else { 2 },
        online_cpus(),
        match duration {
            Some(d) => format!(" (for {:.1} s)", d.as_secs_f64()),
            None => " (Ctrl-C for the summary)".to_string(),
        }
    );
    let live = !args.json && std::io::stdout().is_terminal();
    let started = Instant::now();
    let p = Painter::for_stdout();
    loop {
        let remaining = duration.map(|d| d.saturating_sub(started.elapsed()));
        if remaining == Some(Duration::ZERO) {
            break;
        }
        let wait = remaining.map_or(interval, |r| r.min(interval));
        if wait_for_signal(&signals, wait) {
            break;
        }
        if live {
            let snap = tracer.snapshot();
            let mut s = String::from("\x1b[H\x1b[2J");
            s.push_str(&render_snapshot(
                &snap,
                &args,
                "live, Ctrl-C for the summary",
                p,
            ));
            crate::exit::emit(&s)?;
        }
    }
    let snap = tracer.stop();
    let evidence = Evidence::host(settings_of(args.netns.as_deref())?);
    let findings = diagnose_with_trace(&evidence, &trace_evidence(&snap));
    let critical = findings.iter().any(|f| f.severity == Severity::Critical);
    if args.json {
        let report = TraceReport {
            schema: "portlab.trace/1",
            filter: FilterReport {
                dest: args.dest,
                pid: args.pid,
                cgroup: args.cgroup.clone(),
                netns: args.netns.clone(),
            },
            cpu_ms: process_cpu_ms(),
            bpf_unavailable: bpf_unavailable.as_deref(),
            snapshot: &snap,
            destinations: snap.destinations(),
            findings: &findings,
        };
        let text = serde_json::to_string(&report).context("encoding JSON")?;
        crate::exit::emit(&format!("{text}\n"))?;
    } else {
        let mut s = if live {
            "\x1b[H\x1b[2J".to_string()
        } else {
            String::new()
        };
        s.push_str(&render_snapshot(&snap, &args, "summary", p));
        push_findings(&mut s, "Diagnosis", &findings, Detail::Compact, p);
        crate::exit::emit(&s)?;
    }
    Ok(if critical {
        ExitCode::from(crate::exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Starts a tracer; missing privileges become a usage error (exit 2) naming what is needed.
pub fn start(filter: Filter) -> anyhow::Result<Tracer> {
    Tracer::start(filter).map_err(|err| match err {
        TraceError::PermissionDenied(what) => usage(format!(
            "trace needs root, or CAP_PERFMON and CAP_BPF, to read kernel tracepoints ({what})"
        )),
        TraceError::Filter(msg) => usage(msg),
        TraceError::Bpf(msg) => usage(format!(
            "--route bpf: {msg}; use --route perf (or auto, which falls back to it)"
        )),
        other => anyhow::Error::new(other).context("attaching to the connect() tracepoints"),
    })
}

/// The port-pool settings of the traced namespace (`--netns`), else of ours: /proc/sys/net
/// shows the namespace of the task that reads it, so a thread enters the namespace first.
fn settings_of(
    netns: Option<&std::path::Path>,
) -> anyhow::Result<portlab_sockets::PortPoolSettings> {
    let Some(path) = netns else {
        return portlab_sockets::PortPoolSettings::read().context("reading port settings");
    };
    let path = path.to_path_buf();
    std::thread::spawn(move || -> anyhow::Result<_> {
        crate::netns::enter(&path)?;
        portlab_sockets::PortPoolSettings::read().context("reading port settings")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("reading the namespace's settings panicked"))?
}

fn online_cpus() -> usize {
    portlab_trace::perf::online_cpus().map_or(0, |c| c.len())
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) so the main loop can
/// wait for them with a timeout and still print the summary.
fn block_stop_signals() -> anyhow::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    Ok(set)
}

/// Waits up to `timeout` for SIGINT/SIGTERM; true when one came.
fn wait_for_signal(set: &nix::sys::signal::SigSet, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: set and ts are valid for the call; the siginfo out-pointer may be NULL.
    let rc = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    rc > 0
}

fn process_cpu_ms() -> u64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// The trace as diagnosis evidence.
pub fn trace_evidence(snap: &TraceSnapshot) -> TraceEvidence {
    TraceEvidence {
        duration_ms: snap.elapsed_ms,
        lost_events: snap.lost_events,
        flows: snap.flows.iter().map(traced_flow).collect(),
    }
}

fn traced_flow(f: &FlowReport) -> TracedFlow {
    let mut failures = FailureCounts::default();
    for x in &f.failures {
        let slot = match x.class {
            ErrorClass::AddrNotAvailable => &mut failures.addr_not_available,
            ErrorClass::AddrInUse => &mut failures.addr_in_use,
            ErrorClass::ConnectionRefused => &mut failures.connection_refused,
            ErrorClass::ConnectionReset => &mut failures.connection_reset,
            ErrorClass::ConnectTimeout => &mut failures.connect_timeout,
            ErrorClass::TooManyOpenFiles => &mut failures.too_many_open_files,
            ErrorClass::NoBufferSpace => &mut failures.no_buffer_space,
            ErrorClass::Unreachable => &mut failures.unreachable,
            _ => &mut failures.other,
        };
        *slot += x.count;
    }
    let h = &f.failed_port_search;
    TracedFlow {
        pid: f.pid,
        comm: f.comm.clone(),
        destination: Some(f.destination),
        attempts: f.attempts,
        successes: f.successes,
        failures,
        closed_first: f.closed_first,
        closed_by_peer: f.closed_by_peer,
        time_wait_entered: f.time_wait_entered,
        time_wait_held: f.time_wait_held,
        failed_port_searches: h.count,
        failed_port_search_mean_us: h.mean().map(|d| d.as_secs_f64() * 1e6),
        failed_port_search_max_us: (h.count > 0).then(|| h.max_ns as f64 / 1000.0),
    }
}

fn scope_line(args: &Args) -> String {
    let mut parts = Vec::new();
    if let Some(d) = args.dest {
        parts.push(format!("to {d}"));
    }
    if let Some(pid) = args.pid {
        parts.push(format!("process {pid}"));
    }
    if let Some(c) = &args.cgroup {
        parts.push(format!("cgroup {}", c.display()));
    }
    if let Some(n) = &args.netns {
        parts.push(format!("namespace {}", n.display()));
    }
    if parts.is_empty() {
        "every process in every network namespace".to_string()
    } else {
        parts.join(", ")
    }
}

/// The table of flows with the header lines; shared by the live view, the summary and
/// `doctor --trace`.
pub fn render_table(snap: &TraceSnapshot, top: usize, p: Painter) -> String {
    let secs = snap.elapsed_ms as f64 / 1000.0;
    let mut s = format!(
        "{} events · tracer CPU {:.2} s ({:.1} % of one core)\n",
        fmt_int(snap.events),
        snap.reader_cpu_ms as f64 / 1000.0,
        if secs > 0.0 {
            snap.reader_cpu_ms as f64 / 10.0 / secs
        } else {
            0.0
        }
    );
    if snap.lost_events > 0 {
        let why = match snap.route {
            Route::Bpf => "hits the kernel ran no program for, or a full map",
            // A snapshot names the route that ran; perf is the one with rings.
            Route::Perf | Route::Auto => "a ring buffer was full; raise --ring-pages",
        };
        s.push_str(&format!(
            "{}\n",
            p.bad(&format!(
                "lost {} events ({why}): the counts below are lower bounds",
                fmt_int(snap.lost_events)
            ))
        ));
    } else {
        s.push_str("lost 0 events\n");
    }
    if snap.throttles > 0 {
        s.push_str(&format!(
            "{}\n",
            p.bad(&format!(
                "the kernel throttled sampling {} times (kernel.perf_event_max_sample_rate): events were dropped uncounted, the counts below are lower bounds",
                fmt_int(snap.throttles)
            ))
        ));
    }
    if snap.unattributed > 0 {
        s.push_str(&format!(
            "{} connects of processes that exited before their namespace/cgroup could be read were not counted\n",
            fmt_int(snap.unattributed)
        ));
    }
    if snap.flows.is_empty() {
        s.push_str("\nno TCP connect() seen yet\n");
        return s;
    }
    s.push_str(&format!(
        "\n{}\n",
        p.heading(&format!(
            "{:>8}  {:<15} {:<22} {:>9} {:>9} {:>9}  {:>9} {:>9}  {:<28} {}",
            "PID",
            "COMM",
            "DESTINATION",
            "ATTEMPTS",
            "CONNECTED",
            "FAILED",
            "TIME_WAIT",
            "TW HELD",
            "ERRNOS",
            "FAILED PORT SEARCH"
        ))
    ));
    for f in snap.flows.iter().take(top) {
        let errnos = if f.failures.is_empty() {
            "-".to_string()
        } else {
            f.failures
                .iter()
                .map(|x| format!("{} {}", x.errno_name, fmt_int(x.count)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let search = match f.failed_port_search.mean() {
            Some(mean) => format!(
                "mean {}, max {}",
                fmt_dur(mean),
                fmt_dur(Duration::from_nanos(f.failed_port_search.max_ns))
            ),
            None => "-".to_string(),
        };
        let failed = fmt_int(f.failures_total);
        let failed = if f.failures_total > 0 {
            p.bad(&format!("{failed:>9}"))
        } else {
            format!("{failed:>9}")
        };
        s.push_str(&format!(
            "{:>8}  {:<15} {:<22} {:>9} {:>9} {failed}  {:>9} {:>9}  {:<28} {search}\n",
            f.pid,
            truncate(&f.comm, 15),
            f.destination.to_string(),
            fmt_int(f.attempts),
            fmt_int(f.successes),
            fmt_int(f.time_wait_entered),
            fmt_int(f.time_wait_held),
            errnos,
        ));
    }
    if snap.flows.len() > top {
        s.push_str(&format!(
            "… {} more (process, destination) pairs (--top, or --json for all)\n",
            snap.flows.len() - top
        ));
    }
    let h = &snap.failed_port_search;
    if h.count > 0 {
        s.push_str(&format!(
            "\nfailed port searches: {}, mean {}, longest {} (CLOSE→SYN_SENT … SYN_SENT→CLOSE with no port chosen)\n",
            fmt_int(h.count),
            h.mean().map_or("-".into(), fmt_dur),
            fmt_dur(Duration::from_nanos(h.max_ns))
        ));
    }
    for x in snap.socketless_failures.iter().take(5) {
        s.push_str(&format!(
            "{} × {} from {} ({}) with no TCP socket involved (a routing failure, or a unix/UDP socket)\n",
            fmt_int(x.failures.count),
            x.failures.errno_name,
            x.pid,
            x.comm
        ));
    }
    s
}

fn render_snapshot(snap: &TraceSnapshot, args: &Args, what: &str, p: Painter) -> String {
    let mut s = format!(
        "{} — {:.1} s, {}, route {} ({what})\n",
        p.heading("portlab trace"),
        snap.elapsed_ms as f64 / 1000.0,
        scope_line(args),
        snap.route.name()
    );
    if !snap.syscalls {
        s.push_str(
            "connect() returns not traced (--syscalls adds them): a bound socket's synchronous \
             failure counts as abandoned, connect() errors without a TCP socket are not seen\n",
        );
    }
    s.push_str(&render_table(snap, usize::from(args.top), p));
    s
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_dur(Duration::from_nanos(57_000)), "57 µs");
        assert_eq!(fmt_dur(Duration::from_micros(1_250)), "1.25 ms");
    }
}
