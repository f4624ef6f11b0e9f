//! `portlab serve`: the HTTP/1.1 target — any path answers with a small fixed body, with
//! keep-alive knobs, delays and seeded fault injection for reliability tests. A connection
//! that opens with the HTTP/2 preface is served as h2c (prior knowledge) on the same port.

use std::net::SocketAddr;
use std::process::ExitCode;

use portlab_serve::{DelayRange, FaultSpec, Server, ServerConfig, ServerStats};

use crate::serving;

/// Flags of `portlab serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints one line `listening on ADDR` (with --json: {\"event\":\"listening\",\"address\":ADDR}) once \
it accepts connections; with port 0 ADDR carries the port the kernel chose. Stops on SIGINT or \
SIGTERM and prints its stats (stderr, or a JSON `stats` event on stdout).

Examples:
  portlab serve --listen 127.0.0.1:0
  portlab serve --close-after 100 --delay 5..20
  portlab serve --fault reset=0.01,stall=0.001 --seed 7")]
pub struct Args {
    /// Address to listen on (IPv4 or IPv6, port 0 = any free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Response body size in bytes (default: a ~100-byte hello page).
    #[arg(long, value_name = "BYTES")]
    body_size: Option<usize>,
    /// Answer every request with `Connection: close`.
    #[arg(long)]
    close: bool,
    /// Close each connection after N requests.
    #[arg(long, value_name = "N")]
    close_after: Option<u64>,
    /// Send bodies with `Transfer-Encoding: chunked` instead of `Content-Length`.
    #[arg(long)]
    chunked: bool,
    /// Delay each response: MS, or MIN..MAX for a uniform draw (milliseconds).
    #[arg(long, value_name = "MS|MIN..MAX")]
    delay: Option<String>,
    /// Inject faults into fractions of requests, e.g. reset=0.01,garbage=0.001,stall=0.001,close-mid-body=0.001.
    #[arg(long, value_name = "SPEC")]
    fault: Option<String>,
    /// Seed for faults and delays: the same seed gives the same faults on the same requests.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Pause after each accept (e.g. 5ms): a slow acceptor, so a burst of connects overflows
    /// a small --backlog.
    #[arg(long, value_name = "DURATION", value_parser = parse_ms_duration)]
    accept_delay: Option<std::time::Duration>,
    /// Connections, backlog, threads, JSON (shared with `portlab proxy`).
    #[command(flatten)]
    listener: serving::ListenerArgs,
}

/// A duration; a bare number is milliseconds.
fn parse_ms_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(text, crate::duration::Unit::Millis)
}

impl Args {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let usage = |e: &dyn std::fmt::Display| crate::exit::usage(e.to_string());
        let delay = self
            .delay
            .as_deref()
            .map(DelayRange::parse)
            .transpose()
            .map_err(|e| usage(&e))?;
        let faults = self
            .fault
            .as_deref()
            .map(FaultSpec::parse)
            .transpose()
            .map_err(|e| usage(&e))?;
        let config = ServerConfig {
            body_size: self.body_size,
            keep_alive: !self.close,
            close_after: self.close_after,
            delay,
            faults: faults.unwrap_or_default(),
            seed: self.seed,
            max_conns: self.listener.max_conns(),
            chunked: self.chunked,
            accept_delay: self.accept_delay,
        };
        config.validate().map_err(|e| usage(&e))?;
        Ok(config)
    }
}

/// Runs `portlab serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let server = Server::new(config).map_err(|e| crate::exit::usage(e.to_string()))?;
    let runtime = serving::runtime(args.listener.threads())?;
    let stats = runtime.block_on(async {
        let listener = serving::listen(args.listen, args.listener.backlog)?;
        let shutdown = serving::shutdown_signal()?;
        serving::announce(listener.local_addr()?, args.listener.json)?;
        anyhow::Ok(server.run(listener, shutdown).await)
    })?;
    // Do not wait for blocked tasks (there are none by now) when dropping the runtime.
    runtime.shutdown_background();
    if args.listener.json {
        serving::print_event("stats", &stats)?;
    } else {
        eprint!("{}", render(&stats));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human stats report.
fn render(s: &ServerStats) -> String {
    let f = &s.faults;
    let mut text = format!(
        "portlab serve: {} connections, {} requests, {} responses, {} bad requests, \
         {} closed by server, {} accept errors\n",
        s.connections_accepted,
        s.requests,
        s.responses,
        s.bad_requests,
        s.closed_by_server,
        s.accept_errors
    );
    text.push_str(&format!(
        "  bytes: {} request body received, {} response sent\n",
        s.request_body_bytes, s.response_bytes
    ));
    if f.reset + f.garbage + f.stall + f.close_mid_body > 0 {
        text.push_str(&format!(
            "  faults injected: reset {}, garbage {}, stall {}, close-mid-body {}\n",
            f.reset, f.garbage, f.stall, f.close_mid_body
        ));
    }
    text
}
