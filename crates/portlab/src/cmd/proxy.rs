//! `portlab proxy`: the TCP port forwarder (`--mode tcp`, the `netsh interface portproxy`
//! equivalent: one upstream connection, hence one ephemeral port, per client connection) and the
//! HTTP reverse proxy with an upstream pool (`--mode http`, the fix).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use portlab_load::EngineChoice;
use portlab_serve::{
    HttpProxy, HttpProxyConfig, HttpProxyStats, TcpProxy, TcpProxyConfig, TcpProxyStats,
    UpstreamErrorClass,
};
use serde::Serialize;

use crate::serving;

/// Which proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Byte-transparent TCP forwarder: one upstream connection per client connection.
    Tcp,
    /// HTTP/1.1 reverse proxy over a pool of at most --pool kept-alive upstream connections.
    Http,
}

/// Engine of the TCP forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineArg {
    /// io_uring when a ring can be set up, tokio otherwise (stats: engine_fallback says why).
    Auto,
    /// io_uring, or fail at start.
    Uring,
    /// The portable engine: tokio tasks over epoll.
    Tokio,
}

/// Flags of `portlab proxy`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints one line `listening on ADDR` (with --json: {\"event\":\"listening\",\"address\":ADDR}). \
Stops on SIGINT or SIGTERM and prints its stats (stderr, or a JSON `stats` event on stdout); \
--stats-interval prints them periodically too. Upstream connect failures are counted by class: \
addr_not_available means the upstream leg ran out of ephemeral ports. The tcp stats name the \
relay engine: engine (uring or tokio), engine_fallback (why tokio ran when io_uring was wanted), \
engine_error (an io_uring thread that failed mid-run).

Examples:
  portlab proxy --listen 127.1.1.1:80 --connect 127.0.0.1:8080          # portproxy v4tov4
  portlab proxy --listen [::1]:8081 --connect 127.0.0.1:8080            # v6tov4
  portlab proxy --mode http --pool 8 --listen 127.0.0.1:8081 --connect 127.0.0.1:8080")]
pub struct Args {
    /// Address to listen on (IPv4 or IPv6, port 0 = any free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Upstream address to forward to (IPv4 or IPv6).
    #[arg(long, value_name = "ADDR:PORT")]
    connect: SocketAddr,
    /// tcp: forward bytes; http: reverse proxy with an upstream pool.
    #[arg(long, value_enum, default_value_t = Mode::Tcp)]
    mode: Mode,
    /// Source IP for upstream connections (bound with IP_BIND_ADDRESS_NO_PORT).
    #[arg(long, value_name = "IP")]
    source_ip: Option<IpAddr>,
    /// http mode: most upstream connections open at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pool: usize,
    /// http mode: how long to wait for a pooled connection and the response head (then 504);
    /// a duration (30s, 500ms) or seconds.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::duration::positive_secs)]
    upstream_timeout: Duration,
    /// http mode: how long a client connection may stay silent before it is closed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::duration::positive_secs)]
    client_timeout: Duration,
    /// How long to wait for an upstream connect (http mode answers 502 past it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::duration::positive_secs)]
    connect_timeout: Duration,
    /// tcp mode: the relay engine. io_uring relays with a fraction of a system call per message;
    /// the stats name the engine that ran. Default: $PORTLAB_ENGINE, else auto.
    #[arg(long, value_enum, value_name = "ENGINE")]
    engine: Option<EngineArg>,
    /// tcp mode, io_uring (Linux ≥ 6.12): while 8 or more connections moved data in the last
    /// 10 ms, one wait gathers the completions that arrive this long after the first, so the
    /// forwarder wakes once per batch of messages (a message may wait up to this long; fewer
    /// busy connections never wait). 0 turns batching off. A duration (50us, 1ms; a bare
    /// number is ms).
    #[arg(long, value_name = "DURATION", default_value = "50us", value_parser = crate::duration::batch_wait)]
    batch_wait: Duration,
    /// Print stats at this interval while running (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::positive_secs)]
    stats_interval: Option<Duration>,
    /// Connections, backlog, threads, JSON (shared with `portlab serve`).
    #[command(flatten)]
    listener: serving::ListenerArgs,
    /// http mode: circuit breaker toward the upstream: while open, answer 503 at once without
    /// touching the pool. SPEC as for `portlab load --circuit-breaker`
    /// (ratio=0.5,window=1s,min=20,open=1s,probes=3); 502 and 504 count as failures.
    #[arg(
        long = "circuit-breaker",
        value_name = "SPEC",
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = parse_breaker
    )]
    circuit_breaker: Option<portlab_load::BreakerConfig>,
}

/// Either proxy, behind one interface for the run loop.
#[derive(Clone)]
enum Proxy {
    Tcp(TcpProxy),
    Http(HttpProxy),
}

/// Stats of either proxy, tagged with the mode in JSON.
#[derive(Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Stats {
    Tcp(TcpProxyStats),
    Http(HttpProxyStats),
}

impl Proxy {
    fn stats(&self) -> Stats {
        match self {
            Proxy::Tcp(p) => Stats::Tcp(p.stats()),
            Proxy::Http(p) => Stats::Http(p.stats()),
        }
    }

    async fn run(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Stats {
        match self {
            Proxy::Tcp(p) => Stats::Tcp(p.run(listener, shutdown).await),
            Proxy::Http(p) => Stats::Http(p.run(listener, shutdown).await),
        }
    }
}

fn build(args: &Args) -> anyhow::Result<Proxy> {
    let connect_timeout = args.connect_timeout;
    if let Some(ip) = args.source_ip {
        if ip.is_ipv4() != args.connect.is_ipv4() {
            return Err(crate::exit::usage(format!(
                "--source-ip {ip} and --connect {} are of different IP families",
                args.connect
            )));
        }
    }
    if args.mode == Mode::Tcp && args.circuit_breaker.is_some() {
        return Err(crate::exit::usage(
            "--circuit-breaker needs --mode http (a TCP forwarder cannot answer 503)",
        ));
    }
    if args.mode == Mode::Http && args.engine.is_some_and(|e| e != EngineArg::Tokio) {
        return Err(crate::exit::usage(
            "--engine uring|auto needs --mode tcp (the HTTP proxy runs on tokio)",
        ));
    }
    let engine = match (args.mode, args.engine) {
        (Mode::Http, _) => EngineChoice::Tokio,
        (Mode::Tcp, flag) => crate::cmd::load::engine_or_env(flag.map(|e| match e {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::Uring => EngineChoice::Uring,
            EngineArg::Tokio => EngineChoice::Tokio,
        }))?,
    };
    Ok(match args.mode {
        Mode::Tcp => {
            let proxy = TcpProxy::new(TcpProxyConfig {
                upstream: args.connect,
                source_ip: args.source_ip,
                connect_timeout,
                max_conns: args.listener.max_conns(),
                engine,
                threads: args.listener.threads(),
                batch_wait_us: args.batch_wait.as_micros() as u32,
            });
            let stats = proxy.stats();
            if engine == EngineChoice::Uring {
                if let Some(why) = stats.engine_fallback {
                    anyhow::bail!("--engine uring: {why}");
                }
            }
            Proxy::Tcp(proxy)
        }
        Mode::Http => {
            let config = HttpProxyConfig {
                upstream: args.connect,
                source_ip: args.source_ip,
                pool: args.pool,
                upstream_timeout: args.upstream_timeout,
                connect_timeout,
                max_conns: args.listener.max_conns(),
                client_idle_timeout: args.client_timeout,
                circuit_breaker: args.circuit_breaker,
            };
            Proxy::Http(HttpProxy::new(config).map_err(|e| crate::exit::usage(e.to_string()))?)
        }
    })
}

/// Runs `portlab proxy`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let proxy = build(&args)?;
    let interval = args.stats_interval;
    // The io_uring forwarder runs its own threads: the runtime only waits for signals.
    let runtime_threads = match &proxy {
        Proxy::Tcp(p) if p.stats().engine == "uring" => 1,
        _ => args.listener.threads(),
    };
    let runtime = serving::runtime(runtime_threads)?;
    let json = args.listener.json;
    let stats = runtime.block_on(async {
        let listener = serving::listen(args.listen, args.listener.backlog)?;
        let shutdown = serving::shutdown_signal()?;
        serving::announce(listener.local_addr()?, json)?;
        if let Some(every) = interval {
            tokio::spawn(report_every(proxy.clone(), every, json));
        }
        anyhow::Ok(proxy.run(listener, shutdown).await)
    })?;
    runtime.shutdown_background();
    print_stats("stats", &stats, json)?;
    Ok(ExitCode::SUCCESS)
}

async fn report_every(proxy: Proxy, every: Duration, json: bool) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if print_stats("interval", &proxy.stats(), json).is_err() {
            return;
        }
    }
}

fn print_stats(event: &str, stats: &Stats, json: bool) -> anyhow::Result<()> {
    if json {
        serving::print_event(event, stats)
    } else {
        eprint!("{}", render(stats));
        Ok(())
    }
}

/// The human stats report.
fn render(stats: &Stats) -> String {
    match stats {
        Stats::Tcp(s) => render_tcp(s),
        Stats::Http(s) => render_http(s),
    }
}

fn render_tcp(s: &TcpProxyStats) -> String {
    let mut text = format!(
        "portlab proxy (tcp, {} engine): {} connections accepted ({} open), {} upstream connects, \
         {} upstream connect failures\n",
        s.engine,
        s.connections_accepted,
        s.connections_active,
        s.upstream_connects,
        s.upstream_connect_failures_total()
    );
    if let Some(why) = &s.engine_fallback {
        text.push_str(&format!("  tokio engine: {why}\n"));
    }
    if let Some(e) = &s.engine_error {
        text.push_str(&format!("  engine failure: {e}\n"));
    }
    push_failures(&mut text, &s.upstream_connect_failures);
    text.push_str(&format!(
        "  bytes: {} client→upstream, {} upstream→client\n",
        s.bytes_client_to_upstream, s.bytes_upstream_to_client
    ));
    if !s.relay_errors.is_empty() {
        let list: Vec<String> = s
            .relay_errors
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        text.push_str(&format!("  relays ended by error: {}\n", list.join(", ")));
    }
    text
}

fn render_http(s: &HttpProxyStats) -> String {
    let mut text = format!(
        "portlab proxy (http): {} client connections, {} requests, {} responses\n",
        s.client_connections, s.requests, s.responses
    );
    text.push_str(&format!(
        "  upstream: {} connections opened (peak {} open), {} reuses, {} pool waits, {} retries\n",
        s.upstream_connections_opened,
        s.upstream_connections_peak,
        s.upstream_reuses,
        s.pool_waits,
        s.upstream_retries
    ));
    text.push_str(&format!(
        "  answered by the proxy: {} × 502, {} × 504, {} × 400; {} client aborts, \
         {} idle clients closed, {} upstream aborts\n",
        s.bad_gateway,
        s.gateway_timeout,
        s.bad_requests,
        s.client_aborts,
        s.client_timeouts,
        s.upstream_aborts
    ));
    push_failures(&mut text, &s.upstream_connect_failures);
    if let Some(b) = &s.circuit_breaker {
        text.push_str(&format!(
            "  circuit breaker: {} requests answered 503 without the pool; opened {} times, \
             closed {} times after {} probes\n",
            s.short_circuited, b.opened, b.closed, b.probes
        ));
    }
    text
}

fn parse_breaker(spec: &str) -> Result<portlab_load::BreakerConfig, String> {
    portlab_load::BreakerConfig::parse(spec).map_err(|e| e.to_string())
}

fn push_failures(
    text: &mut String,
    failures: &std::collections::BTreeMap<UpstreamErrorClass, u64>,
) {
    for (class, n) in failures {
        text.push_str(&format!(
            "  upstream connect failed {n} × {class}: {}\n",
            class.explain()
        ));
    }
}
