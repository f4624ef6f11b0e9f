//! What `portlab serve` and `portlab proxy` share: the tokio runtime, the listening socket
//! (with one-line errors and the non-loopback warning), the SIGINT/SIGTERM shutdown, and the
//! "listening on" line scripts read.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use portlab_serve::{bind_listener, BindError};
use serde::Serialize;

/// The flags `portlab serve` and `portlab proxy` share (clap `flatten`): how many connections,
/// the listen backlog, worker threads and JSON output.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Serve at most N client connections at once; others wait in the listen backlog.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: Option<u64>,
    /// Listen backlog (capped by net.core.somaxconn).
    #[arg(long, value_name = "N", default_value_t = portlab_serve::DEFAULT_BACKLOG)]
    pub backlog: u32,
    /// Worker threads (default: the CPUs available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// JSON lines on stdout: the listening event, then stats events.
    #[arg(long)]
    pub json: bool,
}

impl ListenerArgs {
    /// `--max-conns` as a count.
    pub fn max_conns(&self) -> Option<usize> {
        self.max_conns
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// `--threads`, or the CPUs available.
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(default_threads, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
    }
}

/// Builds the runtime: one thread runs a `current_thread` runtime (no cross-thread wake-ups),
/// more run the multi-thread scheduler with that many workers.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// The default worker count: the CPUs this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Binds `addr` (inside the runtime, so tokio can register it). Address in use, not local or
/// privileged port → usage error (exit 2). Warns once on stderr when `addr` is not loopback.
pub fn listen(addr: SocketAddr, backlog: u32) -> anyhow::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        eprintln!("portlab: warning: listening on {addr}, which other hosts can reach");
    }
    let std_listener = bind_listener(addr, backlog).map_err(bind_error)?;
    tokio::net::TcpListener::from_std(std_listener).context("registering the listener")
}

pub(crate) fn bind_error(err: BindError) -> anyhow::Error {
    if err.is_usage() {
        let hint = match err.source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another process listens there; pick another port or port 0)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            std::io::ErrorKind::AddrNotAvailable => " (that IP is not assigned to this host)",
            _ => "",
        };
        crate::exit::usage(format!("{err}{hint}"))
    } else {
        anyhow::Error::new(err)
    }
}

/// Completes on the first SIGINT or SIGTERM. Handlers are installed when this is called, so
/// call it before announcing the address.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// One JSON line on stdout: `{"event": EVENT, ...fields of value}`.
#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    event: &'a str,
    #[serde(flatten)]
    value: &'a T,
}

/// Prints a JSON-lines event on stdout and flushes.
pub fn print_event<T: Serialize>(event: &str, value: &T) -> anyhow::Result<()> {
    let line = serde_json::to_string(&Event { event, value }).context("encoding JSON")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// Prints the one line with the bound address (the real port when 0 was asked): text
/// `listening on ADDR`, or the JSON event `{"event":"listening","address":"ADDR"}`.
pub fn announce(addr: SocketAddr, json: bool) -> anyhow::Result<()> {
    if json {
        #[derive(Serialize)]
        struct Listening {
            address: SocketAddr,
        }
        print_event("listening", &Listening { address: addr })
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")
            .and_then(|()| out.flush())
            .context("writing to stdout")
    }
}
