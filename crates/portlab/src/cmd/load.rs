//! `portlab load`: hey-compatible HTTP load generation with every failure counted and
//! classified. Flags → `LoadConfig` (validated once) → engine → text or JSON report.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use portlab_load::{ConnectionPolicy, EngineChoice, LoadConfig, LoadReport, Progress, RateLimit};

use crate::cmd::load_telemetry;
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

/// Load engines on the command line (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// io_uring when a ring can be set up and the plan is plain HTTP/1.1, tokio otherwise.
    Auto,
    /// io_uring (Linux ≥ 5.11) for plain HTTP/1.1; TLS, -x and --h2 still run on tokio.
    Uring,
    /// The portable engine: a tokio runtime per thread.
    Tokio,
}

/// The engine `--engine` named, else the one `PORTLAB_ENGINE` names, else `auto` (`load` and
/// `proxy`).
///
/// # Errors
/// A usage error (exit 2) when `PORTLAB_ENGINE` names no engine.
pub fn engine_or_env(flag: Option<EngineChoice>) -> anyhow::Result<EngineChoice> {
    match flag {
        Some(choice) => Ok(choice),
        None => Ok(EngineChoice::from_env()
            .map_err(|v| {
                exit::usage(format!(
                    "PORTLAB_ENGINE={v:?} names no engine: use auto, uring or tokio"
                ))
            })?
            .unwrap_or_default()),
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    /// Human report.
    Text,
    /// One JSON object (schema: docs/load-report.schema.json).
    Json,
    /// hey's `-o csv`: one line per finished request, streamed as the run goes (columns in
    /// docs/load.md), then nothing else on stdout.
    Csv,
}

/// Flags of `portlab load` (hey's, plus connection policy, source addresses and retries).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "hey's spellings work as in hey (Go flags: one dash or two, -flag=value): \
-disable-keepalive, -h2, -host, -cpus, -o csv, -x ... A single-dash word that is no flag of \
portlab load is refused (exit 2) rather than read as a short flag with a value.\n\n\
Exit status: 0 when every request got a response, 1 when any request \
failed (see \"Errors by class\") or was short-circuited by --circuit-breaker, 2 for bad input.\n\nExamples:\n  portlab load -n 10000 -c 50 \
http://127.0.0.1:8080/\n  portlab load -z 30s -c 100 --connection drop http://127.0.0.1:8080/\n  \
portlab load -z 10s --rate 5000 --json http://127.0.0.1:8080/ > run.json\n  \
portlab load -n 1000 -c 10 -disable-keepalive -host example.com http://127.0.0.1:8080/"
)]
pub struct Args {
    /// Target URL (http:// or https://). The host is resolved once; connects try its addresses
    /// in RFC 8305 order, falling back to the next on failure.
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
    /// Rate limit per worker, requests/s (hey's -q: the total is -q × -c; 0 = no limit).
    #[arg(short = 'q', long = "qps", conflicts_with = "rate")]
    pub qps: Option<f64>,
    /// Global rate, requests/s (open model); latency is measured from the intended send time
    /// (coordinated-omission corrected, like wrk2).
    #[arg(long = "rate")]
    pub rate: Option<f64>,
    /// HTTP method (upper-cased, as hey does: -m post sends POST).
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
    /// User-Agent header (default portlab/VERSION).
    #[arg(short = 'U', long = "user-agent")]
    pub user_agent: Option<String>,
    /// Host header (overrides the URL's host; hey's -host).
    #[arg(long = "host")]
    pub host: Option<String>,
    /// Request timeout in seconds, or a duration (10s, 500ms); 0 means no timeout (as hey).
    #[arg(short = 't', long = "timeout", default_value = "20", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Connect timeout (TCP + TLS handshake).
    #[arg(long = "connect-timeout", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Same as --connection close (hey's flag).
    #[arg(long = "disable-keepalive", conflicts_with = "connection")]
    pub disable_keepalive: bool,
    /// hey's flag; portlab never asks for compression (it sends no Accept-Encoding), so this
    /// changes nothing.
    #[arg(long = "disable-compression")]
    pub disable_compression: bool,
    /// hey's flag; portlab never follows redirects (a 3xx is counted as the response), so this
    /// changes nothing.
    #[arg(long = "disable-redirects")]
    pub disable_redirects: bool,
    /// HTTP proxy, http://HOST:PORT or HOST:PORT: http URLs are sent in absolute form, https
    /// through a CONNECT tunnel; failures on the proxy leg are reported on the proxy's side.
    #[arg(short = 'x', long = "proxy", value_name = "URL")]
    pub proxy: Option<String>,
    /// HTTP/2 (hey's -h2): ALPN h2 over TLS, prior knowledge (h2c) over http://. -c is then
    /// the number of connections, each carrying -p streams at once (oha's model; hey's Go
    /// client multiplexes all -c workers over one connection: use -c 1 -p N for that).
    #[arg(long = "h2")]
    pub h2: bool,
    /// HTTP/2 streams in flight per connection (with -h2): -c × -p requests at once.
    #[arg(short = 'p', long = "streams", default_value_t = 1, value_name = "N")]
    pub streams: usize,
    /// Engine: io_uring (batched submission, fewer system calls) or tokio; the report names the
    /// one that ran. Default: $PORTLAB_ENGINE, else auto.
    #[arg(long = "engine", value_enum, value_name = "ENGINE")]
    pub engine: Option<EngineArg>,
    /// io_uring engine (Linux ≥ 6.12): with 8 or more operations in flight, how long one wait
    /// gathers completions after the first, so an engine thread wakes once per batch of
    /// responses (a latency may include up to this long of client-side wait). 0 turns it off.
    /// A duration (200us, 1ms; a bare number is ms), at most 100ms. Default:
    /// $PORTLAB_URING_MIN_WAIT_US (µs), else 200us.
    #[arg(long = "batch-wait", value_name = "DURATION", value_parser = crate::duration::batch_wait)]
    pub batch_wait: Option<std::time::Duration>,
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
    /// Hold each connection open (idle) this long after its response, before --connection
    /// applies (e.g. 10s): long-lived concurrent flows, as a NAT sees them. -n N -c N --hold D
    /// keeps N connections open at once for D.
    #[arg(long = "hold", value_parser = parse_duration, value_name = "DURATION")]
    pub hold: Option<Duration>,
    /// Engine threads (each with its own connections); default: available CPUs, at most -c.
    /// hey's -cpus is the same.
    #[arg(long = "threads", visible_alias = "cpus")]
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
    /// Distributed runs: --segment, --segments, --start-at.
    #[command(flatten)]
    pub agent: crate::cmd::load_agent::AgentArgs,
}

/// The JSON document: the engine's report, plus `telemetry` (sampler, joined timeline,
/// diagnosis).
#[derive(serde::Serialize)]
struct RunOutput<'a> {
    #[serde(flatten)]
    report: &'a LoadReport,
    agent: &'a crate::cmd::load_agent::AgentIdentity,
    telemetry: &'a load_telemetry::TelemetryReport,
}

/// Runs `portlab load`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let json = args.json || args.output == OutputArg::Json;
    let csv = !args.json && args.output == OutputArg::Csv;
    let telemetry_args = args.telemetry.clone();
    let agent_args = args.agent.clone();
    let mut config = build_config(args)?;
    let segment = agent_args.apply(&mut config)?;
    agent_args.check_start()?;
    let plan = config.validate().map_err(|e| exit::usage(e.to_string()))?;
    let late_ms = agent_args.wait_for_start(std::io::stderr().is_terminal());
    let (mut telemetry, note) = load_telemetry::start(&telemetry_args, &plan)?;
    let mut bar = ProgressBar::new(&plan.config);
    let mut on_progress = |p: &Progress| {
        bar.update(p);
        telemetry.on_progress(p);
    };
    let report = if csv {
        let mut out = CsvOut::start();
        let report =
            portlab_load::run_with_records(&plan, &mut on_progress, &mut |batch| out.write(batch))
                .context("running the load")?;
        out.finish()?;
        report
    } else {
        portlab_load::run(&plan, &mut on_progress).context("running the load")?
    };
    bar.finish();
    let telemetry = telemetry.finish(&report, note);
    if let Some(path) = &telemetry_args.plot {
        load_telemetry::write_plot(path, &report, &telemetry)?;
    }
    let agent = agent_args.identity(&plan, segment, late_ms);
    if csv {
        // stdout holds only the CSV, as hey's; the outcome goes to stderr.
        eprint!("{}", csv_summary(&report));
    } else if json {
        let combined = RunOutput {
            report: &report,
            agent: &agent,
            telemetry: &telemetry,
        };
        let text = serde_json::to_string_pretty(&combined).context("serializing the report")?;
        crate::exit::emit(&format!("{text}\n"))?;
    } else {
        let painter = Painter::for_stdout();
        let mut text = render_text(&report, painter);
        crate::cmd::load_agent::push_text(&mut text, &agent);
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
    if let Some(ua) = args.user_agent {
        headers.push(("User-Agent".to_string(), ua));
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
        // hey: -q 0 (its default) means no rate limit.
        (Some(0.0), _) => RateLimit::Unlimited,
        (Some(q), _) => RateLimit::PerWorker { per_sec: q },
        (None, Some(r)) => RateLimit::Global { per_sec: r },
        (None, None) => RateLimit::Unlimited,
    };
    let engine = engine_or_env(args.engine.map(|e| match e {
        EngineArg::Auto => EngineChoice::Auto,
        EngineArg::Uring => EngineChoice::Uring,
        EngineArg::Tokio => EngineChoice::Tokio,
    }))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(LoadConfig {
        url: args.url,
        method: args.method.to_ascii_uppercase(),
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
        hold: args.hold,
        proxy: args.proxy,
        http2: args.h2,
        streams: args.streams,
        batch_wait: args
            .batch_wait
            .unwrap_or_else(|| LoadConfig::default().batch_wait),
        engine,
    })
}

fn parse_breaker(spec: &str) -> Result<portlab_load::BreakerConfig, String> {
    portlab_load::BreakerConfig::parse(spec).map_err(|e| e.to_string())
}

/// Parses `30s`, `500ms`, `2m`, `1h30m`, `1.5s` or a bare number of seconds (the shared
/// grammar of [`crate::duration`]).
fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::secs(s)
}

/// `-t`: as [`parse_duration`]; 0 means no timeout (hey: "use 0 for infinite"), taken as
/// [`crate::duration::MAX`].
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    Ok(if d.is_zero() { crate::duration::MAX } else { d })
}

/// hey's `-o csv` header (requester/print.go): durations in seconds, `%4.4f`.
const CSV_HEADER: &str =
    "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n";

/// `-o csv` on stdout, written batch by batch as the engine hands them over (never held).
/// A closed pipe (`| head`) stops the output quietly; the run goes on and is counted.
struct CsvOut {
    out: std::io::BufWriter<std::io::Stdout>,
    error: Option<std::io::Error>,
    line: String,
}

impl CsvOut {
    fn start() -> Self {
        let mut me = Self {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            error: None,
            line: String::with_capacity(128),
        };
        me.put(CSV_HEADER.as_bytes());
        me
    }

    fn put(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(bytes) {
                self.error = Some(e);
            }
        }
    }

    fn write(&mut self, batch: &[portlab_load::RequestRecord]) {
        use std::fmt::Write as _;
        let s = |us: u64| us as f64 / 1e6;
        for r in batch {
            self.line.clear();
            let _ = writeln!(
                self.line,
                "{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{:.4}",
                s(r.total_us),
                s(r.connect_us),
                0.0,
                s(r.write_us),
                s(r.delay_us),
                s(r.read_us),
                r.status,
                s(r.offset_us)
            );
            let line = std::mem::take(&mut self.line);
            self.put(line.as_bytes());
            self.line = line;
        }
    }

    fn finish(mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
        match self.error {
            Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(e).context("writing the CSV to stdout"))
            }
            _ => Ok(()),
        }
    }
}

/// The one stderr line after `-o csv`: the outcome, and failures by class (the CSV, like
/// hey's, lists successful requests only).
fn csv_summary(r: &LoadReport) -> String {
    let s = &r.summary;
    let mut line = format!(
        "portlab load: {} requests, {} succeeded, {} failed",
        s.requests, s.succeeded, s.failed
    );
    if s.cancelled_at_deadline > 0 {
        line.push_str(&format!(
            ", {} cancelled at the deadline",
            s.cancelled_at_deadline
        ));
    }
    let classes: Vec<String> = r
        .errors
        .iter()
        .map(|e| format!("{} {} ({})", e.count, e.class, e.errno_name))
        .collect();
    if !classes.is_empty() {
        line.push_str(&format!(": {}", classes.join(", ")));
    }
    line.push('\n');
    line
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
    if t.addresses.len() > 1 || t.addresses.iter().any(|a| !a.failures.is_empty()) {
        for a in &t.addresses {
            let failures: Vec<String> = a
                .failures
                .iter()
                .map(|(class, n)| format!("{n} {class}"))
                .collect();
            let failed = if failures.is_empty() {
                String::new()
            } else {
                format!(", connects failed: {}", failures.join(", "))
            };
            let _ = writeln!(o, "  {}: {} connects{failed}", a.address, a.connects);
        }
    }
    if let Some(p) = &r.proxy {
        let how = if p.tunnel {
            "CONNECT tunnel per connection"
        } else {
            "absolute-form requests"
        };
        let _ = writeln!(o, "  via HTTP proxy {} ({}), {how}", p.url, p.address);
        for (code, n) in &p.refused_by_status {
            let _ = writeln!(o, "  proxy refused {n} tunnels with status {code}");
        }
    }
    let st = &r.settings;
    let _ = writeln!(
        o,
        "  HTTP/{}, connection {}, -c {}, {} stream{} per connection, {} thread{}, {} engine{}",
        st.http_version,
        st.connection.name(),
        st.concurrency,
        st.streams_per_connection,
        if st.streams_per_connection == 1 {
            ""
        } else {
            "s"
        },
        st.threads,
        if st.threads == 1 { "" } else { "s" },
        st.engine,
        match &st.engine_fallback {
            Some(why) => format!(" (io_uring not used: {why})"),
            None => String::new(),
        }
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
        assert_eq!(parse_timeout("0"), Ok(crate::duration::MAX));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    }
}
