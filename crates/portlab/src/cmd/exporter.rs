//! `portlab exporter`: per-destination port-pool metrics for Prometheus. Each scrape of
//! `/metrics` takes one reading of the watched network namespace through the shared pipeline
//! (`portlab_pipeline::HostReading`: settings, one NETLINK_SOCK_DIAG dump, counters), chooses
//! the pools to export (allow-list, top K with hold-down, the rest folded) and encodes them with
//! `prometheus-client`. A failed reading answers 500 with the reason; the next scrape retries.

mod metrics;
mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use portlab_pipeline::{HostReading, Matcher, PoolSelector, ReadOptions, SelectConfig};

pub use metrics::{ExtraCollector, CONTENT_TYPE};

/// Flags of `portlab exporter`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Metrics (docs/exporter.md): portlab_destination_port_utilization_ratio{src_ip,dst_ip,dst_port},
portlab_destination_ports_in_use{...,state}, portlab_destination_max_new_connections_per_second,
portlab_bind_ports_in_use{src_ip}, portlab_ephemeral_ports, portlab_tcp_tw_reuse, kernel counters.
With --trace: portlab_connect_failures_total{dst_ip,dst_port,errno}, portlab_connections_opened_total,
portlab_time_wait_entered_total, portlab_failed_port_search_duration_seconds, portlab_trace_lost_events_total.
Served as Prometheus text format 0.0.4. Alert rules: deploy/prometheus/portlab-alerts.yml.

Cardinality: pools matching --destination are always exported; of the rest the --top most
utilised at or above --floor, each held --hold-down after it drops out; all others are folded
into one series with src_ip, dst_ip and dst_port \"other\".

Examples:
  portlab exporter                                   serve 127.0.0.1:7919/metrics
  portlab exporter --listen 0.0.0.0:7919             let Prometheus scrape from elsewhere
  portlab exporter --destination 10.0.0.0/8:443      always export pools to port 443 in 10/8
  portlab exporter --netns /proc/4242/ns/net         watch a pod's namespace (listen stays here)
  sudo portlab exporter --trace                      also count connect() failures by errno")]
pub struct Args {
    /// Address to serve /metrics on (port 0 picks a free port; the line on stdout names it).
    #[arg(long, default_value = "127.0.0.1:7919", value_name = "ADDR:PORT")]
    listen: SocketAddr,

    /// Destinations always exported (repeatable): ADDR:PORT, ADDR, CIDR, CIDR:PORT or *:PORT.
    #[arg(long = "destination", value_name = "MATCHER", value_parser = parse_matcher)]
    destinations: Vec<Matcher>,

    /// How many other pools to export, most utilised first (also caps portlab_bind_ports_in_use's local IPs).
    #[arg(long, default_value_t = 20, value_name = "K", value_parser = clap::value_parser!(u16).range(1..=1000))]
    top: u16,

    /// Utilisation (0-1) a pool needs to enter the top K.
    #[arg(long, default_value_t = 0.01, value_name = "RATIO", value_parser = parse_ratio)]
    floor: f64,

    /// How long a pool stays exported after it leaves the top K (e.g. 5m, 30s, 0s).
    #[arg(long = "hold-down", default_value = "5m", value_name = "DURATION", value_parser = parse_duration)]
    hold_down: Duration,

    /// Watch this network namespace instead of the caller's: a bind-mounted namespace such as
    /// /run/netns/NAME or /proc/PID/ns/net. The listening socket stays in the caller's.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,

    /// Read /proc/net/tcp{,6} instead of NETLINK_SOCK_DIAG (slower, not atomic).
    #[arg(long)]
    proc: bool,

    /// Also export connect() outcomes per destination from kernel tracepoints (as `portlab
    /// trace`; needs root or CAP_PERFMON): portlab_connect_failures_total{dst_ip,dst_port,errno},
    /// portlab_connections_opened_total, portlab_time_wait_entered_total,
    /// portlab_failed_port_search_duration_seconds, portlab_trace_lost_events_total. With
    /// --netns, only processes in that namespace are counted.
    #[arg(long)]
    trace: bool,

    /// With --trace, leave out the syscall tracepoints on the perf route too (the BPF route
    /// leaves them out by default: they slow every syscall on the host by ~100 ns,
    /// docs/trace.md); EADDRNOTAVAIL, refusals and timeouts are still counted.
    #[arg(long)]
    trace_no_syscalls: bool,
}

fn parse_matcher(text: &str) -> Result<Matcher, String> {
    text.parse()
        .map_err(|e: portlab_pipeline::MatcherError| e.to_string())
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "'{text}' is not a ratio from 0 to 1 (e.g. --floor 0.05)"
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |i| text.split_at(i));
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("'{text}' is not a duration (e.g. 5m, 30s, 0s)")),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && (0.0..=86_400.0).contains(&(n * scale)) => {
            Ok(Duration::from_secs_f64(n * scale))
        }
        _ => Err(format!(
            "'{text}' is not a duration from 0s to 24h (e.g. 5m)"
        )),
    }
}

/// Runs `portlab exporter`: portlab's own metrics, plus connect() tracing with `--trace`.
///
/// # Errors
/// Usage errors (exit 2) for bad flags, and for `--trace` without root/CAP_PERFMON.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.trace_no_syscalls && !args.trace {
        return Err(crate::exit::usage(
            "--trace-no-syscalls only applies with --trace; add --trace or drop it",
        ));
    }
    let mut extra: Vec<ExtraCollector> = Vec::new();
    if args.trace {
        // Attached before the listening line is printed: every connect after it is counted.
        let tracer = crate::cmd::trace::start(portlab_trace::Filter {
            netns: args.netns.clone(),
            syscalls: if args.trace_no_syscalls {
                portlab_trace::Syscalls::Off
            } else {
                portlab_trace::Syscalls::Auto
            },
            ..portlab_trace::Filter::default()
        })?;
        extra.push(std::sync::Arc::new(trace::TraceCollector::new(
            tracer,
            args.destinations.clone(),
            usize::from(args.top),
        )));
    }
    run_with(args, extra)
}

/// Runs `portlab exporter`, encoding `extra` collectors into every scrape after portlab's own
/// metrics. This is the seam for other in-process sources (e.g. `portlab trace`'s connect()
/// outcomes): the caller builds them before this call, i.e. in the caller's network namespace
/// (a source that must see the `--netns` namespace opens its kernel handles on its first
/// `encode`, which runs on the thread that switched); they keep their own state between scrapes
/// (interior mutability: `encode` takes `&self`), bound their own label values, and name their
/// metrics `portlab_…` without clashing with the ones documented in docs/exporter.md.
pub fn run_with(args: Args, extra: Vec<ExtraCollector>) -> anyhow::Result<ExitCode> {
    let listener = bind(args.listen)?;
    let local = listener.local_addr().context("reading the bound address")?;
    if let Some(path) = &args.netns {
        crate::netns::enter(path)?;
    }
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("starting the HTTP server on {local}: {e}"))?;
    let mut exporter = Exporter {
        selector: PoolSelector::new(SelectConfig {
            allow: args.destinations,
            top_k: usize::from(args.top),
            floor_ratio: args.floor,
            hold_down: args.hold_down,
        }),
        options: ReadOptions {
            destination: None,
            table: if args.proc {
                portlab_sockets::TableChoice::Proc
            } else {
                portlab_sockets::TableChoice::Auto
            },
        },
        extra,
    };
    crate::serving::announce(local, false)?;
    for request in server.incoming_requests() {
        let response = exporter.answer(request.method(), request.url());
        // A scraper that went away mid-answer is not the exporter's failure.
        let _ = request.respond(response);
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds the listener before any namespace switch, so it stays in the caller's namespace.
fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() {
        eprintln!("portlab: warning: listening on {addr}, which other hosts can reach");
    }
    let listener = portlab_serve::bind_listener(addr, 128).map_err(crate::serving::bind_error)?;
    listener
        .set_nonblocking(false)
        .context("making the listener blocking")?;
    Ok(listener)
}

struct Exporter {
    selector: PoolSelector,
    options: ReadOptions,
    extra: Vec<ExtraCollector>,
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| unreachable!("static header {name}"))
}

fn text(status: u16, content_type: &str, body: String) -> Response {
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
}

impl Exporter {
    fn answer(&mut self, method: &tiny_http::Method, url: &str) -> Response {
        use tiny_http::Method;
        if !matches!(method, Method::Get | Method::Head) {
            return text(
                405,
                "text/plain; charset=utf-8",
                "only GET and HEAD are served\n".into(),
            )
            .with_header(header("Allow", "GET, HEAD"));
        }
        let path = url.split('?').next().unwrap_or(url);
        match path {
            "/metrics" => match self.scrape() {
                Ok(body) => text(200, CONTENT_TYPE, body),
                Err(why) => {
                    eprintln!("portlab: scrape failed: {why}");
                    text(
                        500,
                        "text/plain; charset=utf-8",
                        format!("scrape failed: {why}\n"),
                    )
                }
            },
            "/" => text(200, "text/html; charset=utf-8", landing_page()),
            _ => text(
                404,
                "text/plain; charset=utf-8",
                "not found; metrics are at /metrics\n".into(),
            ),
        }
    }

    /// One reading, one selection, one encoding.
    fn scrape(&mut self) -> Result<String, String> {
        let started = Instant::now();
        let reading = HostReading::take(&self.options).map_err(|e| e.to_string())?;
        let selection = self.selector.select(&reading.snapshot.pools, reading.at);
        // Only the exported pools are copied; the reading then moves into the data.
        let kept = selection.kept.iter().map(|p| (*p).clone()).collect();
        let folded = selection.folded;
        let max_ips = self.selector.config().top_k;
        let data = metrics::ScrapeData::new(reading, kept, folded, max_ips, started);
        metrics::encode(data, &self.extra).map_err(|_| "encoding the metrics failed".to_string())
    }
}

fn landing_page() -> String {
    format!(
        "<!doctype html><html><head><title>portlab exporter</title></head><body>\
         <h1>portlab exporter {}</h1><p>Per-destination ephemeral-port pool metrics: \
         <a href=\"/metrics\">/metrics</a> (Prometheus text format 0.0.4).</p>\
         <p>Alert rules: deploy/prometheus/portlab-alerts.yml; metrics and runbook: docs/exporter.md.</p>\
         </body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}
