//! `portlab load`: hey-compatible HTTP load generation with every failure counted and
//! classified. Flags → `LoadConfig` (validated once) → engine → text or JSON report.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use portlab_load::{ConnectionPolicy, LoadConfig, LoadReport, Progress, RateLimit};

use crate::cmd::load_telemetry::{self, Telemetry};
use crate::exit;
use crate::style::Painter;

/// Connection policy names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Reuse up to -c connections (default).
    KeepAlive,
    /// Send `Connection: close`; the server closes first and holds TIME_WAIT (hey's --disable-keepalive).
    Close,
    /// The client closes after each response: TIME_WAIT lands on the client (exhausts ports).
    Drop,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    /// Human report.
    Text,
    /// One JSON object (schema: docs/load-report.schema.json).
    Json,
}

/// Flags of `portlab load` (hey's, plus connection policy, source addresses and retries).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every request got a response, 1 when any request \
failed (see \"Errors by class\") or was short-circuited by --circuit-breaker, 2 for bad input.\n\nExamples:\n  portlab load -n 10000 -c 50 \
http://127.0.0.1:8080/\n  portlab load -z 30s -c 100 --connection drop http://127.0.0.1:8080/\n  \
portlab load -z 10s --rate 5000 --json http://127.0.0.1:8080/ > run.json"
)]
pub struct Args {
    /// Target URL (http:// or https://). The host is resolved once.
    pub url: String,
    /// Number of requests to run (ignored with -z).
    #[arg(short = 'n', long = "requests", default_value_t = 200)]
    pub requests: u64,
    /// Number of concurrent connections (hey's workers).
    #[arg(short = 'c', long = "concurrency", default_value_t = 50)]
    pub concurrency: usize,
    /// Run for this long instead of -n (e.g. 30s, 500ms, 2m). Requests in flight at the end are
    /// reported as "cancelled at deadline".
    #[arg(short = 'z', long = "duration", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Rate limit per worker, requests/s (hey's -q: the total is -q × -c).
    #[arg(short = 'q', long = "qps", conflicts_with = "rate")]
    pub qps: Option<f64>,
    /// Global rate, requests/s (open model); latency is measured from the intended send time
    /// (coordinated-omission corrected, like wrk2).
    #[arg(long = "rate")]
    pub rate: Option<f64>,
    /// HTTP method.
    #[arg(short = 'm', long = "method", default_value = "GET")]
    pub method: String,
    /// Request header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(short = 'd', long = "body", conflicts_with = "body_file")]
    pub body: Option<String>,
    /// File whose content is the request body.
    #[arg(short = 'D', long = "body-file")]
    pub body_file: Option<std::path::PathBuf>,
    /// Content-Type of the body.
    #[arg(short = 'T', long = "content-type")]
    pub content_type: Option<String>,
    /// Accept header.
    #[arg(short = 'A', long = "accept")]
    pub accept: Option<String>,
    /// Basic authentication, USER:PASSWORD.
    #[arg(short = 'a', long = "basic-auth")]
    pub basic_auth: Option<String>,
    /// Host header (overrides the URL's host).
    #[arg(long = "host")]
    pub host: Option<String>,
    /// Request timeout in seconds, or a duration (10s, 500ms); 0 means one hour.
    #[arg(short = 't', long = "timeout", default_value = "20", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Connect timeout (TCP + TLS handshake).
    #[arg(long = "connect-timeout", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Same as --connection close (hey's flag).
    #[arg(long = "disable-keepalive", conflicts_with = "connection")]
    pub disable_keepalive: bool,
    /// Who closes connections: keep-alive, close (server closes, TIME_WAIT on the server),
    /// drop (client closes after each response, TIME_WAIT on the client).
    #[arg(long = "connection", value_enum)]
    pub connection: Option<PolicyArg>,
    /// Local addresses to spread connections over, round-robin (ADDR[,ADDR...]); bound with
    /// IP_BIND_ADDRESS_NO_PORT so ports are still chosen per destination.
    #[arg(long = "source-ip", value_delimiter = ',')]
    pub source_ip: Vec<IpAddr>,
    /// Retry a failed request up to N times (retries are reported apart from first attempts).
    #[arg(long = "retry", default_value_t = 0)]
    pub retry: u32,
    /// Backoff base in milliseconds: the k-th retry waits BASE·2^(k-1), jittered to 50–100 %.
    #[arg(long = "backoff", default_value_t = 100)]
    pub backoff_ms: u64,
    /// Circuit breaker: refuse requests at once (short-circuited, no connect) while too many
    /// recent attempts failed. SPEC: ratio=0.5,window=1s,min=20,open=1s,probes=3 (any
    /// subset; these are the defaults). One breaker per engine thread.
    #[arg(
        long = "circuit-breaker",
        value_name = "SPEC",
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = parse_breaker
    )]
    pub circuit_breaker: Option<portlab_load::BreakerConfig>,
    /// Skip TLS certificate verification.
    #[arg(long = "insecure")]
    pub insecure: bool,
    /// Engine threads (each with its own connections); default: available CPUs, at most -c.
    #[arg(long = "threads")]
    pub threads: Option<usize>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: OutputArg,
    /// Same as -o json.
    #[arg(long = "json")]
    pub json: bool,
    /// Port-pool telemetry, diagnosis and plot.
    #[command(flatten)]
    pub telemetry: crate::cmd::load_telemetry::TelemetryArgs,
}

/// The JSON document: the engine's report, plus `telemetry` (sampler, joined timeline,
/// diagnosis).
#[derive(serde::Serialize)]
struct RunOutput<'a> {
    #[serde(flatten)]
    report: &'a LoadReport,
    telemetry: &'a load_telemetry::TelemetryReport,
}

/// Runs `portlab load`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let json = args.json || args.output == OutputArg::Json;
    let telemetry_args = args.telemetry.clone();
    let config = build_config(args)?;
    let plan = config.validate().map_err(|e| exit::usage(e.to_string()))?;
    let (mut telemetry, note) = Telemetry::start(&telemetry_args, &plan)?;
    let mut bar = ProgressBar::new(&plan.config);
    let report = portlab_load::run(&plan, &mut |p| {
        bar.update(p);
        telemetry.on_progress(p);
    })
    .context("running the load")?;
    bar.finish();
    let telemetry = telemetry.finish(&report, note);
    if let Some(path) = &telemetry_args.plot {
        load_telemetry::write_plot(path, &report, &telemetry)?;
    }
    if json {
        let combined = RunOutput {
            report: &report,
            telemetry: &telemetry,
        };
        let text = serde_json::to_string_pretty(&combined).context("serializing the report")?;
        crate::exit::emit(&format!("{text}\n"))?;
    } else {
        let painter = Painter::for_stdout();
        let mut text = render_text(&report, painter);
        load_telemetry::push_text(&mut text, &telemetry, painter);
        crate::exit::emit(&text)?;
    }
    Ok(
        if report.summary.failed + report.summary.short_circuited > 0 {
            ExitCode::from(exit::FAILURE)
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn build_config(args: Args) -> anyhow::Result<LoadConfig> {
    let mut headers = Vec::with_capacity(args.headers.len() + 3);
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            return Err(exit::usage(format!(
                "bad header {h:?}: use -H \"Name: value\""
            )));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    if let Some(a) = args.accept {
        headers.push(("Accept".to_string(), a));
    }
    if let Some(host) = args.host {
        headers.push(("Host".to_string(), host));
    }
    if let Some(auth) = args.basic_auth {
        if !auth.contains(':') {
            return Err(exit::usage("bad -a value: use USER:PASSWORD"));
        }
        let token = base64::engine::general_purpose::STANDARD.encode(auth.as_bytes());
        headers.push(("Authorization".to_string(), format!("Basic {token}")));
    }
    let body = match (args.body, args.body_file) {
        (Some(b), _) => b.into_bytes(),
        (None, Some(path)) => std::fs::read(&path)
            .map_err(|e| exit::usage(format!("cannot read body file {}: {e}", path.display())))?,
        (None, None) => Vec::new(),
    };
    let policy = match (args.disable_keepalive, args.connection) {
        (true, _) | (false, Some(PolicyArg::Close)) => ConnectionPolicy::ServerCloses,
        (false, Some(PolicyArg::Drop)) => ConnectionPolicy::ClientCloses,
        (false, Some(PolicyArg::KeepAlive) | None) => ConnectionPolicy::KeepAlive,
    };
    let rate = match (args.qps, args.rate) {
        (Some(q), _) => RateLimit::PerWorker { per_sec: q },
        (None, Some(r)) => RateLimit::Global { per_sec: r },
        (None, None) => RateLimit::Unlimited,
    };
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(LoadConfig {
        url: args.url,
        method: args.method,
        headers,
        body,
        content_type: args.content_type,
        requests: args.requests,
        duration: args.duration,
        concurrency: args.concurrency,
        threads: args.threads.unwrap_or(cpus),
        rate,
        request_timeout: args.timeout,
        connect_timeout: args.connect_timeout,
        policy,
        source_ips: args.source_ip,
        retries: args.retry,
        backoff: Duration::from_millis(args.backoff_ms),
        circuit_breaker: args.circuit_breaker,
        insecure: args.insecure,
    })
}

fn parse_breaker(spec: &str) -> Result<portlab_load::BreakerConfig, String> {
    portlab_load::BreakerConfig::parse(spec).map_err(|e| e.to_string())
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 30s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    Ok(if d.is_zero() {
        Duration::from_secs(3600)
    } else {
        d
    })
}

/// indicatif progress on stderr, only when stderr is a terminal.
struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    by_time: bool,
}

impl ProgressBar {
    fn new(config: &LoadConfig) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                by_time: false,
            };
        }
        let (len, by_time) = match config.duration {
            Some(d) => (d.as_millis() as u64, true),
            None => (config.requests, false),
        };
        let bar = indicatif::ProgressBar::new(len);
        let template = if by_time {
            "{spinner} [{elapsed_precise}] [{bar:30}] {msg}"
        } else {
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self {
            bar: Some(bar),
            by_time,
        }
    }

    fn update(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        let secs = p.elapsed.as_secs_f64().max(1e-3);
        if self.by_time {
            bar.set_position(p.elapsed.as_millis() as u64);
        } else {
            bar.set_position(p.done);
        }
        bar.set_message(format!(
            "{} done, {:.0} req/s, {} errors",
            p.done,
            p.done as f64 / secs,
            p.failed
        ));
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn secs(us: u64) -> String {
    format!("{:.4} secs", us as f64 / 1e6)
}

/// Latency with a unit that keeps three significant places for sub-second values.
fn latency(us: u64) -> String {
    if us < 1_000_000 {
        format!("{:.3} ms", us as f64 / 1e3)
    } else {
        format!("{:.3} secs", us as f64 / 1e6)
    }
}

/// The human report, in hey's order with connection and error sections added.
pub fn render_text(r: &LoadReport, paint: Painter) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let s = &r.summary;
    let l = &r.latency;
    let _ = writeln!(o, "\n{}", paint.heading("Summary:"));
    let _ = writeln!(o, "  Total:\t{:.4} secs", s.elapsed_secs);
    let _ = writeln!(o, "  Slowest:\t{}", secs(l.max_us));
    let _ = writeln!(o, "  Fastest:\t{}", secs(l.min_us));
    let _ = writeln!(o, "  Average:\t{}", secs(l.mean_us as u64));
    let _ = writeln!(o, "  Requests/sec:\t{:.1}", s.requests_per_sec);
    let _ = writeln!(o, "  Total data:\t{} bytes", s.body_bytes);
    let outcome = format!(
        "{} requests: {} succeeded, {} failed",
        s.requests, s.succeeded, s.failed
    );
    let outcome = if s.failed > 0 {
        paint.bad(&outcome)
    } else {
        paint.good(&outcome)
    };
    let _ = writeln!(o, "  {outcome}");
    if let Some(b) = &r.circuit_breaker {
        let c = &b.counters;
        let note = format!(
            "{} short-circuited by the circuit breaker (no connect); it opened {} times, \
             closed {} times after {} probes; {} attempts went through",
            s.short_circuited,
            c.opened,
            c.closed,
            c.probes,
            c.allowed + c.probes
        );
        let _ = writeln!(o, "  {}", paint.warn(&note));
    }
    if s.cancelled_at_deadline > 0 {
        let note = format!(
            "{} in flight at the deadline, cancelled (not counted as failures)",
            s.cancelled_at_deadline
        );
        let _ = writeln!(o, "  {}", paint.warn(&note));
    }
    if !l.buckets.is_empty() {
        let _ = writeln!(o, "\n{}", paint.heading("Response time histogram:"));
        let top = l.buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1);
        for b in &l.buckets {
            let bar = "■".repeat((b.count * 40 / top) as usize);
            let _ = writeln!(o, "  {:>12} [{}]\t|{}", latency(b.upper_us), b.count, bar);
        }
        let _ = writeln!(o, "\n{}", paint.heading("Latency distribution:"));
        for (label, v) in [
            ("50%", l.p50_us),
            ("90%", l.p90_us),
            ("99%", l.p99_us),
            ("99.9%", l.p99_9_us),
            ("max", l.max_us),
        ] {
            let _ = writeln!(o, "  {label:>5} in {}", latency(v));
        }
        if l.corrected_for_coordinated_omission {
            let _ = writeln!(
                o,
                "  {}",
                paint
                    .dim("(measured from intended send times: corrected for coordinated omission)")
            );
        }
    }
    if !r.status_codes.is_empty() {
        let _ = writeln!(o, "\n{}", paint.heading("Status code distribution:"));
        for (code, n) in &r.status_codes {
            let _ = writeln!(o, "  [{code}]\t{n} responses");
        }
    }
    render_connections(&mut o, r, paint);
    render_errors(&mut o, r, paint);
    let t = &r.target;
    let resolved: Vec<String> = t.resolved.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(o, "\n{}", paint.heading("Target:"));
    let _ = writeln!(
        o,
        "  {} {} → {} (resolved: {})",
        t.method,
        t.url,
        t.connected_to,
        resolved.join(", ")
    );
    let st = &r.settings;
    let _ = writeln!(
        o,
        "  connection {}, -c {}, {} thread{}",
        st.connection.name(),
        st.concurrency,
        st.threads,
        if st.threads == 1 { "" } else { "s" }
    );
    o
}

fn render_connections(o: &mut String, r: &LoadReport, paint: Painter) {
    use std::fmt::Write as _;
    let c = &r.connections;
    let _ = writeln!(o, "\n{}", paint.heading("Connections:"));
    let _ = writeln!(
        o,
        "  Opened:\t{} ({:.1} new/s), {} failed to connect",
        c.opened, c.new_per_sec, c.connect_failures
    );
    let _ = writeln!(
        o,
        "  Reuse:\t{:.2}% of requests on a kept-alive connection ({} on new, {} on reused)",
        c.reuse_ratio * 100.0,
        c.requests_on_new,
        c.requests_on_reused
    );
    let _ = writeln!(
        o,
        "  Closed by:\tserver {}, client {}",
        c.closed_by_server, c.closed_by_client
    );
    let cl = &c.connect_latency;
    if cl.count > 0 {
        let _ = writeln!(
            o,
            "  Connect:\tp50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            cl.p50_us as f64 / 1e3,
            cl.p90_us as f64 / 1e3,
            cl.p99_us as f64 / 1e3,
            cl.max_us as f64 / 1e3
        );
    }
}

fn render_errors(o: &mut String, r: &LoadReport, paint: Painter) {
    use std::fmt::Write as _;
    if !r.errors.is_empty() {
        let _ = writeln!(o, "\n{}", paint.heading("Errors by class:"));
        for e in &r.errors {
            let phases: Vec<String> = e
                .by_phase
                .iter()
                .map(|(p, n)| format!("{p:?} {n}").to_lowercase())
                .collect();
            let _ = writeln!(
                o,
                "  [{}]\t{} ({}, {} side; {}): {}",
                e.count,
                paint.bad(&e.class.to_string()),
                e.errno_name,
                format!("{:?}", e.side).to_lowercase(),
                phases.join(", "),
                e.meaning
            );
        }
    }
    let failing: Vec<u64> = r
        .timeline
        .iter()
        .filter(|t| t.failed > 0)
        .map(|t| t.second)
        .collect();
    if let (Some(first), Some(last)) = (failing.first(), failing.last()) {
        let _ = writeln!(
            o,
            "  failures in {} of {} seconds, first in second {first}, last in second {last}",
            failing.len(),
            r.timeline.len()
        );
    }
    let rt = &r.retries;
    if rt.attempts > 0 {
        let _ = writeln!(o, "\n{}", paint.heading("Retries:"));
        let _ = writeln!(
            o,
            "  {} retry attempts, {} requests succeeded on a retry",
            rt.attempts, rt.succeeded
        );
        for e in &rt.retried_errors {
            let _ = writeln!(
                o,
                "  [{}]\t{} ({}) before a retry",
                e.count, e.class, e.errno_name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_timeout("0"), Ok(Duration::from_secs(3600)));
    }
}
