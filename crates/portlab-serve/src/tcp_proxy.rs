//! The TCP forwarder — portlab's `netsh interface portproxy`: every client connection gets its
//! own upstream connection (so every client connection costs an ephemeral port on the upstream
//! leg, exactly what portproxy shows), bytes are relayed unchanged, and a half-close on one
//! side (FIN) is passed on as `shutdown(SHUT_WR)` on the other.
//!
//! Small messages are copied through a 16 KiB buffer per direction; bulk transfers go
//! socket → pipe → socket with `splice(2)` (HAProxy's `splice-auto`), never through user space,
//! with a pipe taken from a pool only by a direction that switches (see `splice.rs`).
//!
//! Two engines run it ([`TcpProxyConfig::engine`]): io_uring (`uring_proxy.rs`, the default
//! where a ring can be set up: one ring per thread, no tasks, a fraction of a system call per
//! message) and tokio (one task per connection pair on the caller's runtime, epoll readiness).
//! Both keep the same counters, error classes and relay rules.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portlab_load::EngineChoice;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::accept::{accept_loop, ConnCounters};
use crate::net::{add, connect_upstream, load, ClassCounters};
use crate::splice::{relay, PipePool, Relayed};
use crate::uring_proxy;
use crate::UpstreamErrorClass;

/// Default of [`TcpProxyConfig::batch_wait_us`], µs.
pub const DEFAULT_BATCH_WAIT_US: u32 = 50;

/// Where and how the forwarder connects.
#[derive(Debug, Clone, Serialize)]
pub struct TcpProxyConfig {
    /// The upstream address (`--connect`), IPv4 or IPv6 whatever the listener's family.
    pub upstream: SocketAddr,
    /// Source IP of the upstream leg (`--source-ip`), bound with `IP_BIND_ADDRESS_NO_PORT`.
    pub source_ip: Option<IpAddr>,
    /// Give up an upstream connect after this long (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// At most this many client connections at once (`--max-conns`; with io_uring split
    /// evenly between the engine threads).
    pub max_conns: Option<usize>,
    /// Which engine relays (`--engine`): `auto` runs io_uring when a ring can be set up
    /// (Linux ≥ 5.19 with `IORING_FEAT_EXT_ARG`, not forbidden by `io_uring_disabled` or
    /// seccomp) and tokio otherwise; `uring` asks for io_uring (the stats'
    /// `engine_fallback` says why tokio ran when it could not); `tokio` runs on the caller's
    /// runtime.
    pub engine: EngineChoice,
    /// io_uring engine threads, one ring each (the tokio engine uses the caller's runtime).
    pub threads: usize,
    /// io_uring engine: how long (µs) a wait gathers completions after the first one arrived
    /// (`--batch-wait`; Linux ≥ 6.12, `IORING_FEAT_MIN_TIMEOUT`, else 0): one wake-up per
    /// batch of messages, at the price of up to this long in the forwarder per message.
    pub batch_wait_us: u32,
}

impl TcpProxyConfig {
    /// A config forwarding to `upstream` with a 10 s connect timeout, no limits, and the
    /// engine from `PORTLAB_ENGINE` (else `auto`) on one thread.
    pub fn new(upstream: SocketAddr) -> Self {
        TcpProxyConfig {
            upstream,
            source_ip: None,
            connect_timeout: Duration::from_secs(10),
            max_conns: None,
            engine: EngineChoice::from_env().ok().flatten().unwrap_or_default(),
            threads: 1,
            batch_wait_us: DEFAULT_BATCH_WAIT_US,
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
    /// The engine that relays: `uring` or `tokio`.
    pub engine: String,
    /// Why tokio relays although io_uring was wanted (`auto`/`uring`), e.g.
    /// `io_uring unavailable: Operation not permitted (os error 1)`.
    pub engine_fallback: Option<String>,
    /// An io_uring engine thread that failed mid-run (its connections were left open).
    pub engine_error: Option<String>,
}

impl TcpProxyStats {
    /// Total failed upstream connects.
    pub fn upstream_connect_failures_total(&self) -> u64 {
        self.upstream_connect_failures.values().sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) conns: Arc<ConnCounters>,
    pub(crate) upstream_connects: AtomicU64,
    pub(crate) connect_failures: ClassCounters,
    pub(crate) relay_errors: ClassCounters,
    pub(crate) to_upstream: AtomicU64,
    pub(crate) to_client: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: TcpProxyConfig,
    pub(crate) counters: Counters,
    /// Pipes for the `splice(2)` relay.
    pub(crate) pipes: PipePool,
    /// Whether io_uring relays, and why not when it was wanted; set at [`TcpProxy::new`],
    /// changed by [`TcpProxy::run`] if the rings cannot be built.
    engine: Mutex<(bool, Option<String>)>,
    /// The first io_uring thread failure.
    engine_error: Mutex<Option<String>>,
}

/// The TCP forwarder. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    shared: Arc<Shared>,
}

impl TcpProxy {
    /// A forwarder for `config`; picks the engine (see [`TcpProxyConfig::engine`]).
    pub fn new(config: TcpProxyConfig) -> Self {
        let engine = match config.engine {
            EngineChoice::Tokio => (false, None),
            EngineChoice::Auto | EngineChoice::Uring => match uring_proxy::probe() {
                Ok(()) => (true, None),
                Err(e) => (false, Some(format!("io_uring unavailable: {e}"))),
            },
        };
        TcpProxy {
            shared: Arc::new(Shared {
                config,
                counters: Counters::default(),
                pipes: PipePool::default(),
                engine: Mutex::new(engine),
                engine_error: Mutex::new(None),
            }),
        }
    }

    /// A snapshot of the counters (callable while [`TcpProxy::run`] runs).
    pub fn stats(&self) -> TcpProxyStats {
        let c = &self.shared.counters;
        let (uring, engine_fallback) = lock(&self.shared.engine).clone();
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
            engine: if uring { "uring" } else { "tokio" }.to_string(),
            engine_fallback,
            engine_error: lock(&self.shared.engine_error).clone(),
        }
    }

    /// Forwards connections from `listener` until `shutdown` completes, then closes every
    /// connection and returns the final stats.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> TcpProxyStats {
        if !lock(&self.shared.engine).0 {
            return self.run_tokio(listener, shutdown).await;
        }
        match self.run_uring(listener, shutdown).await {
            Ok(()) => {
                self.shared.pipes.clear();
                self.stats()
            }
            Err((listener, shutdown, why)) => {
                *lock(&self.shared.engine) = (false, Some(why));
                self.run_tokio(listener, shutdown).await
            }
        }
    }

    async fn run_tokio(
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

    /// The io_uring engine: `threads` OS threads, each with its own ring, accepting on the
    /// shared listener until `shutdown`; then they close their connections and are joined.
    /// Each thread first builds its ring (IORING_SETUP_SINGLE_ISSUER ties a ring to the thread
    /// that made it) and says whether it could; only when all could does the listener leave
    /// tokio. Otherwise the listener and the shutdown come back untouched, with the reason, so
    /// the caller runs tokio instead.
    async fn run_uring<S: Future<Output = ()>>(
        &self,
        listener: TcpListener,
        shutdown: S,
    ) -> Result<(), (TcpListener, S, String)> {
        let config = &self.shared.config;
        let mut threads = config.threads.max(1);
        if let Some(max) = config.max_conns {
            threads = threads.min(max.max(1));
        }
        let stop = match eventfd() {
            Ok(stop) => Arc::new(stop),
            Err(e) => return Err((listener, shutdown, format!("io_uring unavailable: {e}"))),
        };
        let mut handles = Vec::with_capacity(threads);
        let mut starts = Vec::with_capacity(threads);
        let mut failure = None;
        for k in 0..threads {
            let cap = config.max_conns.map_or(usize::MAX, |max| {
                max / threads + usize::from(k < max % threads)
            });
            let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&stop));
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<Arc<OwnedFd>>(1);
            let spawned = std::thread::Builder::new()
                .name(format!("portlab-proxy-uring-{k}"))
                .spawn(move || {
                    let ring = match uring_proxy::build_ring() {
                        Ok(ring) => {
                            let _ = ready_tx.send(Ok(()));
                            ring
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    // No listener comes when another thread failed: end without accepting.
                    let Ok(listener) = go_rx.recv() else {
                        return;
                    };
                    let batch_wait_us = shared.config.batch_wait_us;
                    let result = uring_proxy::thread_main(
                        ring,
                        listener.as_raw_fd(),
                        stop.as_raw_fd(),
                        cap,
                        batch_wait_us,
                        &shared,
                    );
                    if let Err(e) = result {
                        lock(&shared.engine_error)
                            .get_or_insert_with(|| format!("io_uring engine thread: {e}"));
                    }
                });
            match spawned {
                Ok(h) => {
                    handles.push(h);
                    starts.push((ready_rx, go_tx));
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let mut gos = Vec::with_capacity(starts.len());
        for (ready_rx, go_tx) in starts {
            match ready_rx.await {
                Ok(Ok(())) => gos.push(go_tx),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some("engine thread ended".to_string())),
            }
        }
        let join = move || {
            for h in handles {
                let _ = h.join();
            }
        };
        if let Some(why) = failure {
            drop(gos); // the threads that built a ring end without a listener
            let _ = tokio::task::spawn_blocking(join).await;
            return Err((listener, shutdown, format!("io_uring unavailable: {why}")));
        }
        let guard = StopGuard {
            stop,
            threads: gos.len() as u64,
        };
        match listener.into_std() {
            Ok(l) => {
                let listener = Arc::new(OwnedFd::from(l));
                for go in gos {
                    let _ = go.send(Arc::clone(&listener));
                }
                shutdown.await;
            }
            // into_std only fails to leave tokio's epoll: nothing is left to serve with.
            Err(e) => {
                drop(gos);
                *lock(&self.shared.engine_error) = Some(format!("taking the listener: {e}"));
            }
        }
        drop(guard);
        let _ = tokio::task::spawn_blocking(join).await;
        Ok(())
    }
}

/// Tells every io_uring thread to stop when dropped (at shutdown, or when `run` is cancelled).
struct StopGuard {
    stop: Arc<OwnedFd>,
    threads: u64,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let n = self.threads;
        // SAFETY: write(2) of 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.stop.as_raw_fd(), (&n as *const u64).cast(), 8) };
    }
}

/// An `EFD_SEMAPHORE` eventfd: each thread's read of it takes one of the stop count.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let relayed = Relayed {
        to_upstream: &c.to_upstream,
        to_client: &c.to_client,
    };
    let result = relay(&client, &upstream, &shared.pipes, relayed).await;
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
