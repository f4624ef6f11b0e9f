//! The TCP forwarder — portlab's `netsh interface portproxy`: every client connection gets its
//! own upstream connection (so every client connection costs an ephemeral port on the upstream
//! leg, exactly what portproxy shows), bytes are relayed unchanged, and a half-close on one
//! side (FIN) is passed on as `shutdown(SHUT_WR)` on the other.
//!
//! Small messages are copied through a 16 KiB buffer per direction; bulk transfers go
//! socket → pipe → socket with `splice(2)` (HAProxy's `splice-auto`), never through user space,
//! with a pipe taken from a pool only by a direction that switches (see `splice.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::accept::{accept_loop, ConnCounters};
use crate::net::{add, connect_upstream, load, ClassCounters};
use crate::splice::{relay, PipePool, Relayed};
use crate::UpstreamErrorClass;

/// Where and how the forwarder connects.
#[derive(Debug, Clone, Serialize)]
pub struct TcpProxyConfig {
    /// The upstream address (`--connect`), IPv4 or IPv6 whatever the listener's family.
    pub upstream: SocketAddr,
    /// Source IP of the upstream leg (`--source-ip`), bound with `IP_BIND_ADDRESS_NO_PORT`.
    pub source_ip: Option<IpAddr>,
    /// Give up an upstream connect after this long (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// At most this many client connections at once (`--max-conns`).
    pub max_conns: Option<usize>,
}

impl TcpProxyConfig {
    /// A config forwarding to `upstream` with a 10 s connect timeout and no limits.
    pub fn new(upstream: SocketAddr) -> Self {
        TcpProxyConfig {
            upstream,
            source_ip: None,
            connect_timeout: Duration::from_secs(10),
            max_conns: None,
        }
    }
}

/// What the forwarder did. Field names are the stable `--json` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpProxyStats {
    /// Client connections accepted.
    pub connections_accepted: u64,
    /// Client connections open when the snapshot was taken.
    pub connections_active: u64,
    /// Upstream connects that succeeded (one per client connection).
    pub upstream_connects: u64,
    /// Upstream connects that failed, by class (`addr_not_available` = the upstream leg ran out
    /// of ephemeral ports).
    #[serde(serialize_with = "portlab_errors::snake_case_keys")]
    pub upstream_connect_failures: BTreeMap<UpstreamErrorClass, u64>,
    /// Relays that ended with an error (reset by either side), by class.
    #[serde(serialize_with = "portlab_errors::snake_case_keys")]
    pub relay_errors: BTreeMap<UpstreamErrorClass, u64>,
    /// Bytes relayed from clients to the upstream.
    pub bytes_client_to_upstream: u64,
    /// Bytes relayed from the upstream to clients.
    pub bytes_upstream_to_client: u64,
    /// accept() failures.
    pub accept_errors: u64,
    /// Empty `splice(2)` pipes kept for the next connections (two file descriptors each, at
    /// most 64; closed when the forwarder stops).
    pub relay_pipes_idle: u64,
}

impl TcpProxyStats {
    /// Total failed upstream connects.
    pub fn upstream_connect_failures_total(&self) -> u64 {
        self.upstream_connect_failures.values().sum()
    }
}

#[derive(Debug, Default)]
struct Counters {
    conns: Arc<ConnCounters>,
    upstream_connects: AtomicU64,
    connect_failures: ClassCounters,
    relay_errors: ClassCounters,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    config: TcpProxyConfig,
    counters: Counters,
    /// Pipes for the `splice(2)` relay.
    pipes: PipePool,
}

/// The TCP forwarder. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    shared: Arc<Shared>,
}

impl TcpProxy {
    /// A forwarder for `config`.
    pub fn new(config: TcpProxyConfig) -> Self {
        TcpProxy {
            shared: Arc::new(Shared {
                config,
                counters: Counters::default(),
                pipes: PipePool::default(),
            }),
        }
    }

    /// A snapshot of the counters (callable while [`TcpProxy::run`] runs).
    pub fn stats(&self) -> TcpProxyStats {
        let c = &self.shared.counters;
        TcpProxyStats {
            connections_accepted: load(&c.conns.accepted),
            connections_active: load(&c.conns.active),
            upstream_connects: load(&c.upstream_connects),
            upstream_connect_failures: c.connect_failures.snapshot(),
            relay_errors: c.relay_errors.snapshot(),
            bytes_client_to_upstream: load(&c.to_upstream),
            bytes_upstream_to_client: load(&c.to_client),
            accept_errors: load(&c.conns.accept_errors),
            relay_pipes_idle: self.shared.pipes.idle() as u64,
        }
    }

    /// Forwards connections from `listener` until `shutdown` completes, then closes every
    /// connection and returns the final stats.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> TcpProxyStats {
        let shared = &self.shared;
        accept_loop(
            listener,
            shared.config.max_conns,
            None,
            shutdown,
            &shared.counters.conns,
            |client, _peer: SocketAddr, _n| {
                let shared = Arc::clone(shared);
                async move { forward(client, shared).await }
            },
        )
        .await;
        self.shared.pipes.clear();
        self.stats()
    }
}

/// Runs a [`TcpProxy`] for `config` on `listener` until `shutdown`; returns its stats.
pub async fn run_tcp_proxy(
    listener: TcpListener,
    config: TcpProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> TcpProxyStats {
    TcpProxy::new(config).run(listener, shutdown).await
}

async fn forward(client: TcpStream, shared: Arc<Shared>) {
    let c = &shared.counters;
    let _ = client.set_nodelay(true);
    let config = &shared.config;
    let upstream =
        match connect_upstream(config.upstream, config.source_ip, config.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(err) => {
                c.connect_failures.add(UpstreamErrorClass::from_io(&err));
                // The client learns of the failure as a reset, as with portproxy.
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                return;
            }
        };
    add(&c.upstream_connects, 1);
    let mut relayed = Relayed::default();
    let result = relay(&client, &upstream, &shared.pipes, &mut relayed).await;
    add(&c.to_client, relayed.to_client);
    add(&c.to_upstream, relayed.to_upstream);
    if let Err(err) = result {
        relay_failed(c, &err, &client, &upstream);
    }
}

/// Counts a relay error and passes the reset on: both sides close with RST rather than FIN.
fn relay_failed(c: &Counters, err: &io::Error, client: &TcpStream, upstream: &TcpStream) {
    c.relay_errors.add(UpstreamErrorClass::from_io(err));
    let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
    let _ = socket2::SockRef::from(upstream).set_linger(Some(Duration::ZERO));
}
