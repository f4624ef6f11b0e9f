//! The HTTP/1.1 reverse proxy with an upstream pool — the architectural fix for ephemeral-port
//! exhaustion behind a forwarder: however many client connections arrive (keep-alive or
//! `Connection: close`), requests travel over at most `pool` kept-alive upstream connections,
//! so the upstream leg uses at most `pool` ephemeral ports.
//!
//! Per request: parse the head (`httparse`), rewrite hop-by-hop headers (RFC 9110 §7.6.1), add
//! `Via: 1.1 portlab`, take a pooled connection (waiting when all are busy), stream the body
//! (Content-Length or chunked, passed through verbatim), read the response head within
//! `upstream_timeout`, stream the response back (a close-delimited upstream body is re-framed as
//! chunked for HTTP/1.1 clients). 502 with a reason when the upstream cannot be reached, 504
//! when it does not answer in time.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::accept::{accept_loop, ConnCounters};
use crate::http::{
    is_hop_by_hop, named_in_connection, push_chunk_size, push_decimal, BodyFraming, ChunkedScanner,
    HeadFacts, MAX_HEADERS, MAX_HEAD_BYTES,
};
use crate::net::{add, load};
use crate::pool::{CheckoutError, Lease, Pool, Upstream};
use crate::watchdog::{DeadlineSlot, Watchdog};
use crate::UpstreamErrorClass;
use portlab_load::breaker::{Admission, BreakerConfig, BreakerCounters, CircuitBreaker};

/// The breaker's lock; a panic while holding it cannot leave the machine half-updated in a
/// way that matters (it is counters and a state), so a poisoned lock is used as is.
fn lock(b: &Mutex<CircuitBreaker>) -> MutexGuard<'_, CircuitBreaker> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-buffer growth step while streaming a body, bytes.
const STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// How the reverse proxy forwards.
#[derive(Debug, Clone, Serialize)]
pub struct HttpProxyConfig {
    /// The upstream server (`--connect`).
    pub upstream: SocketAddr,
    /// Source IP of the upstream leg (`--source-ip`), bound with `IP_BIND_ADDRESS_NO_PORT`.
    pub source_ip: Option<IpAddr>,
    /// At most this many upstream connections open at once (`--pool`, ≥ 1).
    pub pool: usize,
    /// Longest wait for a pooled connection plus the upstream's response head, and longest
    /// silence while reading a response body (`--upstream-timeout`); past it the client gets 504.
    pub upstream_timeout: Duration,
    /// Give up an upstream connect after this long (`--connect-timeout`): the client gets 502.
    pub connect_timeout: Duration,
    /// At most this many client connections at once (`--max-conns`).
    pub max_conns: Option<usize>,
    /// Close a client connection that sends nothing for this long between or inside request
    /// heads (`--client-timeout`; nginx's `keepalive_timeout` is 75 s).
    pub client_idle_timeout: Duration,
    /// A circuit breaker toward the upstream (`--circuit-breaker`, portlab-load's): while
    /// open, requests are answered 503 at once without touching the pool; 502 and 504 count
    /// as failed upstream attempts.
    pub circuit_breaker: Option<BreakerConfig>,
}

impl HttpProxyConfig {
    /// A config forwarding to `upstream` over a pool of `pool` connections, 30 s upstream
    /// timeout, 10 s connect timeout, no client limit.
    pub fn new(upstream: SocketAddr, pool: usize) -> Self {
        HttpProxyConfig {
            upstream,
            source_ip: None,
            pool,
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_conns: None,
            client_idle_timeout: Duration::from_secs(60),
            circuit_breaker: None,
        }
    }

    /// Checks the values once, at the edge.
    ///
    /// # Errors
    /// [`HttpProxyConfigError`] naming the bad value.
    pub fn validate(&self) -> Result<(), HttpProxyConfigError> {
        if self.pool == 0 || self.pool > Semaphore::MAX_PERMITS {
            return Err(HttpProxyConfigError::Pool);
        }
        if self.max_conns == Some(0) {
            return Err(HttpProxyConfigError::MaxConnsZero);
        }
        if self.upstream_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.client_idle_timeout.is_zero()
        {
            return Err(HttpProxyConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

/// An [`HttpProxyConfig`] value that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpProxyConfigError {
    /// `pool` of 0 (or absurdly large).
    #[error("--pool must be at least 1")]
    Pool,
    /// `max_conns` of 0.
    #[error("--max-conns must be at least 1")]
    MaxConnsZero,
    /// A zero timeout.
    #[error("timeouts must be greater than zero")]
    ZeroTimeout,
}

/// What the reverse proxy did. Field names are the stable `--json` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpProxyStats {
    /// Client connections accepted.
    pub client_connections: u64,
    /// Client connections open when the snapshot was taken.
    pub client_connections_active: u64,
    /// Request heads parsed.
    pub requests: u64,
    /// Upstream responses forwarded completely to clients.
    pub responses: u64,
    /// Upstream connections opened over the whole run (each one ephemeral port).
    pub upstream_connections_opened: u64,
    /// Upstream connections open when the snapshot was taken (idle + busy, ≤ pool).
    pub upstream_connections_active: u64,
    /// Most upstream connections open at the same time (≤ pool).
    pub upstream_connections_peak: u64,
    /// Requests sent on a connection that had already carried a request.
    pub upstream_reuses: u64,
    /// Requests that had to wait for a free pooled connection.
    pub pool_waits: u64,
    /// Requests re-sent on a fresh connection after a pooled one turned out closed.
    pub upstream_retries: u64,
    /// Upstream connects that failed, by class.
    #[serde(serialize_with = "portlab_errors::snake_case_keys")]
    pub upstream_connect_failures: BTreeMap<UpstreamErrorClass, u64>,
    /// 502 Bad Gateway answers (upstream unreachable, reset, or malformed response).
    pub bad_gateway: u64,
    /// 504 Gateway Timeout answers.
    pub gateway_timeout: u64,
    /// Malformed client requests answered with 400 (or 431).
    pub bad_requests: u64,
    /// Clients that went away in the middle of a request or response.
    pub client_aborts: u64,
    /// Client connections closed after `client_idle_timeout` without a complete request head.
    pub client_timeouts: u64,
    /// Responses cut because the upstream failed after its head was forwarded.
    pub upstream_aborts: u64,
    /// Request body payload bytes forwarded upstream.
    pub request_body_bytes: u64,
    /// Response body payload bytes forwarded to clients.
    pub response_body_bytes: u64,
    /// accept() failures.
    pub accept_errors: u64,
    /// 503 answers of the open circuit breaker (requests that never reached the pool).
    pub short_circuited: u64,
    /// What the circuit breaker did (absent without `--circuit-breaker`).
    pub circuit_breaker: Option<BreakerCounters>,
}

#[derive(Debug, Default)]
struct Counters {
    conns: Arc<ConnCounters>,
    requests: AtomicU64,
    responses: AtomicU64,
    upstream_retries: AtomicU64,
    bad_gateway: AtomicU64,
    gateway_timeout: AtomicU64,
    bad_requests: AtomicU64,
    client_aborts: AtomicU64,
    client_timeouts: AtomicU64,
    upstream_aborts: AtomicU64,
    request_body_bytes: AtomicU64,
    response_body_bytes: AtomicU64,
    short_circuited: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    config: HttpProxyConfig,
    counters: Counters,
    /// At most `pool` kept-alive upstream connections.
    pool: Pool,
    /// `Host` value added to HTTP/1.0 requests that have none.
    upstream_host: String,
    /// The coarse clock behind `upstream_timeout`.
    watchdog: Watchdog,
    /// The upstream's circuit breaker; the lock is held only for admit/record.
    breaker: Option<Mutex<CircuitBreaker>>,
}

/// The pooling HTTP reverse proxy. Cheap to clone; clones share counters and the pool.
#[derive(Debug, Clone)]
pub struct HttpProxy {
    shared: Arc<Shared>,
}

impl HttpProxy {
    /// Validates `config` and creates an empty pool.
    ///
    /// # Errors
    /// [`HttpProxyConfigError`].
    pub fn new(config: HttpProxyConfig) -> Result<Self, HttpProxyConfigError> {
        config.validate()?;
        let shared = Shared {
            pool: Pool::new(
                Upstream {
                    addr: config.upstream,
                    source_ip: config.source_ip,
                    connect_timeout: config.connect_timeout,
                },
                config.pool,
            ),
            upstream_host: config.upstream.to_string(),
            // A tenth of the shorter timeout, at most 100 ms: timeouts fire at most 10% late.
            watchdog: Watchdog::new(
                (config.upstream_timeout.min(config.client_idle_timeout) / 10)
                    .min(Duration::from_millis(100)),
            ),
            breaker: config
                .circuit_breaker
                .map(|b| Mutex::new(CircuitBreaker::new(b))),
            config,
            counters: Counters::default(),
        };
        Ok(HttpProxy {
            shared: Arc::new(shared),
        })
    }

    /// A snapshot of the counters (callable while [`HttpProxy::run`] runs).
    pub fn stats(&self) -> HttpProxyStats {
        let c = &self.shared.counters;
        let p = &self.shared.pool.counters;
        HttpProxyStats {
            client_connections: load(&c.conns.accepted),
            client_connections_active: load(&c.conns.active),
            requests: load(&c.requests),
            responses: load(&c.responses),
            upstream_connections_opened: load(&p.opened),
            upstream_connections_active: load(&p.active),
            upstream_connections_peak: load(&p.peak),
            upstream_reuses: load(&p.reuses),
            pool_waits: load(&p.waits),
            upstream_retries: load(&c.upstream_retries),
            upstream_connect_failures: p.connect_failures.snapshot(),
            bad_gateway: load(&c.bad_gateway),
            gateway_timeout: load(&c.gateway_timeout),
            bad_requests: load(&c.bad_requests),
            client_aborts: load(&c.client_aborts),
            client_timeouts: load(&c.client_timeouts),
            upstream_aborts: load(&c.upstream_aborts),
            request_body_bytes: load(&c.request_body_bytes),
            response_body_bytes: load(&c.response_body_bytes),
            accept_errors: load(&c.conns.accept_errors),
            short_circuited: load(&c.short_circuited),
            circuit_breaker: self.shared.breaker.as_ref().map(|b| lock(b).counters()),
        }
    }

    /// Proxies connections from `listener` until `shutdown` completes, then closes every client
    /// and pooled connection and returns the final stats.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> HttpProxyStats {
        let shared = &self.shared;
        let ticker = tokio::spawn({
            let shared = Arc::clone(shared);
            async move { shared.watchdog.run().await }
        });
        accept_loop(
            listener,
            shared.config.max_conns,
            None,
            shutdown,
            &shared.counters.conns,
            |client, _peer: SocketAddr, _n| {
                let shared = Arc::clone(shared);
                async move { serve_client(client, shared).await }
            },
        )
        .await;
        ticker.abort();
        self.shared.pool.clear();
        self.stats()
    }
}

/// Runs an [`HttpProxy`] for `config` on `listener` until `shutdown`; returns its stats.
///
/// # Errors
/// [`HttpProxyConfigError`] when `config` is invalid.
pub async fn run_http_proxy(
    listener: TcpListener,
    config: HttpProxyConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<HttpProxyStats, HttpProxyConfigError> {
    Ok(HttpProxy::new(config)?.run(listener, shutdown).await)
}

async fn serve_client(client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let mut conn = ClientConn {
        client,
        shared: &shared,
        cbuf: BytesMut::with_capacity(8 * 1024),
        ubuf: BytesMut::with_capacity(8 * 1024),
        req_head: Vec::with_capacity(1024),
        out: Vec::with_capacity(8 * 1024),
        upstream_failed: false,
        deadline: shared.watchdog.slot(),
    };
    let _ = conn.run().await;
}

/// What the proxy keeps of a parsed client request.
struct Request {
    head_len: usize,
    framing: BodyFraming,
    keep_alive: bool,
    http10: bool,
    is_head: bool,
    expect_continue: bool,
}

/// What the proxy keeps of a parsed upstream response.
struct Response {
    head_len: usize,
    framing: BodyFraming,
    upstream_keep_alive: bool,
}

/// Where a forwarded body failed.
enum BodyError {
    /// Reading the source (or a malformed chunked body, or a read timeout).
    Read,
    /// Writing the destination.
    Write,
}

enum Outcome {
    KeepGoing,
    Close,
}

struct ClientConn<'a> {
    client: TcpStream,
    shared: &'a Arc<Shared>,
    /// Bytes read from the client, not yet forwarded.
    cbuf: BytesMut,
    /// Bytes read from the upstream, not yet forwarded.
    ubuf: BytesMut,
    /// The rewritten request head (kept for a retry on a fresh connection).
    req_head: Vec<u8>,
    /// Output being assembled (response head, batched body bytes).
    out: Vec<u8>,
    /// The current request ended in a 502 or 504 (a failed upstream attempt for the breaker).
    upstream_failed: bool,
    /// This connection's slot in the watchdog: every timed wait of the connection arms it.
    deadline: DeadlineSlot,
}

const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl ClientConn<'_> {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(request) = self.read_request().await? else {
                return Ok(());
            };
            add(&self.shared.counters.requests, 1);
            if request.expect_continue {
                self.client.write_all(CONTINUE_100).await?;
            }
            match self.proxy(&request).await {
                Outcome::KeepGoing => {}
                Outcome::Close => {
                    let _ = self.client.shutdown().await;
                    return Ok(());
                }
            }
        }
    }

    /// Reads and rewrites the next request head; `None` when the client closed (or sent
    /// something we answered with 400).
    async fn read_request(&mut self) -> io::Result<Option<Request>> {
        loop {
            match self.parse_request() {
                Ok(Some(request)) => {
                    self.cbuf.advance(request.head_len);
                    return Ok(Some(request));
                }
                Ok(None) if self.cbuf.len() >= MAX_HEAD_BYTES => {
                    self.reject(431, "request head too large").await;
                    return Ok(None);
                }
                Ok(None) => {}
                Err(()) => {
                    self.reject(400, "malformed request").await;
                    return Ok(None);
                }
            }
            let dog = &self.shared.watchdog;
            let deadline = dog.deadline_after(self.shared.config.client_idle_timeout);
            let read = self.client.read_buf(&mut self.cbuf);
            let Ok(read) = dog.within(&self.deadline, deadline, read).await else {
                add(&self.shared.counters.client_timeouts, 1);
                return Ok(None);
            };
            if read? == 0 {
                if !self.cbuf.is_empty() {
                    add(&self.shared.counters.client_aborts, 1);
                }
                return Ok(None);
            }
        }
    }

    /// Parses a request head from `cbuf` and writes the upstream head into `req_head`.
    fn parse_request(&mut self) -> Result<Option<Request>, ()> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(&self.cbuf, &mut slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let facts = HeadFacts::read(req.headers);
        if facts.invalid || (facts.chunked && facts.content_length.is_some()) {
            return Err(());
        }
        let version = req.version.unwrap_or(1);
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Err(());
        };
        let framing = facts.request_framing();
        let head = &mut self.req_head;
        head.clear();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_host = false;
        let mut expect_continue = false;
        copy_header_lines(&self.cbuf, req.headers, head, |h| {
            if h.name.eq_ignore_ascii_case("expect")
                && h.value.eq_ignore_ascii_case(b"100-continue")
            {
                // We answer 100 ourselves and stream the body without waiting for the upstream.
                expect_continue = framing != BodyFraming::Empty;
                return false;
            }
            if is_hop_by_hop(h.name)
                || (facts.conn_options && named_in_connection(req.headers, h.name))
            {
                return false;
            }
            has_host |= h.name.eq_ignore_ascii_case("host");
            true
        });
        if !has_host {
            push_header(head, b"Host", self.shared.upstream_host.as_bytes());
        }
        if framing == BodyFraming::Chunked {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        head.extend_from_slice(b"Via: 1.1 portlab\r\n\r\n");
        Ok(Some(Request {
            head_len,
            framing,
            keep_alive: facts.keep_alive(version),
            http10: version == 0,
            is_head: method == "HEAD",
            expect_continue,
        }))
    }

    /// Forwards one request and its response, through the circuit breaker when there is one.
    async fn proxy(&mut self, request: &Request) -> Outcome {
        let Some(breaker) = &self.shared.breaker else {
            return self.proxy_upstream(request).await;
        };
        let admission = lock(breaker).admit(std::time::Instant::now());
        if admission == Admission::ShortCircuited {
            add(&self.shared.counters.short_circuited, 1);
            let body = format!(
                "portlab proxy: circuit breaker open toward {}: too many recent upstream failures\n",
                self.shared.config.upstream
            );
            self.answer(503, "Service Unavailable", &body).await;
            return Outcome::Close;
        }
        self.upstream_failed = false;
        let outcome = self.proxy_upstream(request).await;
        lock(breaker).record(std::time::Instant::now(), admission, !self.upstream_failed);
        outcome
    }

    /// Forwards one request and its response over the pool.
    async fn proxy_upstream(&mut self, request: &Request) -> Outcome {
        let deadline = Instant::now() + self.shared.config.upstream_timeout;
        // The same deadline on the watchdog's clock, for the wait for the response head.
        let deadline_ms = self
            .shared
            .watchdog
            .deadline_after(self.shared.config.upstream_timeout);
        let mut fresh = false;
        loop {
            let mut lease = match self.shared.pool.checkout(deadline, fresh).await {
                Ok(lease) => lease,
                Err(CheckoutError::Connect(class)) => {
                    return self.bad_gateway(class.explain()).await
                }
                Err(CheckoutError::Timeout) => return self.gateway_timeout().await,
            };
            match self.send_request(&mut lease, request).await {
                Ok(()) => {}
                Err(BodyError::Read) => {
                    add(&self.shared.counters.client_aborts, 1);
                    return Outcome::Close;
                }
                Err(BodyError::Write) if lease.reused && request.framing == BodyFraming::Empty => {
                    add(&self.shared.counters.upstream_retries, 1);
                    fresh = true;
                    continue;
                }
                Err(BodyError::Write) => {
                    return self
                        .bad_gateway("upstream closed the connection while receiving the request")
                        .await
                }
            }
            self.ubuf.clear();
            match self
                .read_response_head(&mut lease, request, deadline_ms)
                .await
            {
                Ok(response) => return self.send_response(lease, request, response).await,
                Err(HeadError::Timeout) => return self.gateway_timeout().await,
                Err(HeadError::Closed) if lease.reused && request.framing == BodyFraming::Empty => {
                    add(&self.shared.counters.upstream_retries, 1);
                    fresh = true;
                }
                Err(HeadError::Closed) => {
                    return self
                        .bad_gateway("upstream closed the connection without a response")
                        .await
                }
                Err(HeadError::Malformed) => {
                    return self.bad_gateway("upstream sent a malformed response").await
                }
            }
        }
    }

    async fn send_request(
        &mut self,
        lease: &mut Lease,
        request: &Request,
    ) -> Result<(), BodyError> {
        self.out.clear();
        self.out.extend_from_slice(&self.req_head);
        let upstream = &mut lease.conn.stream;
        let sent = forward_body(
            &mut self.client,
            &mut self.cbuf,
            upstream,
            &mut self.out,
            request.framing,
            false,
            None,
        )
        .await?;
        add(&self.shared.counters.request_body_bytes, sent);
        Ok(())
    }

    async fn read_response_head(
        &mut self,
        lease: &mut Lease,
        request: &Request,
        deadline_ms: u64,
    ) -> Result<Response, HeadError> {
        loop {
            match parse_response(&self.ubuf, request.is_head, &mut self.out) {
                Ok(Some(response)) => {
                    self.ubuf.advance(response.head_len);
                    return Ok(response);
                }
                Ok(None) if self.ubuf.len() >= MAX_HEAD_BYTES => return Err(HeadError::Malformed),
                Ok(None) => {}
                Err(ParseError::Interim(len)) => {
                    // 1xx interim responses (other than 101) are not forwarded: we already sent
                    // our own 100 Continue where one was expected.
                    self.ubuf.advance(len);
                    continue;
                }
                Err(ParseError::Malformed) => return Err(HeadError::Malformed),
            }
            let read = lease.conn.stream.read_buf(&mut self.ubuf);
            match self
                .shared
                .watchdog
                .within(&self.deadline, deadline_ms, read)
                .await
            {
                Err(_) => return Err(HeadError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) if self.ubuf.is_empty() => return Err(HeadError::Closed),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(HeadError::Malformed),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn send_response(
        &mut self,
        mut lease: Lease,
        request: &Request,
        response: Response,
    ) -> Outcome {
        // A close-delimited body reaches an HTTP/1.1 client re-framed as chunked; an HTTP/1.0
        // client gets it close-delimited and loses its connection.
        let rechunk = response.framing == BodyFraming::UntilClose && !request.http10;
        let client_keep_alive =
            request.keep_alive && !(response.framing == BodyFraming::UntilClose && request.http10);
        if matches!(response.framing, BodyFraming::Chunked) || rechunk {
            self.out
                .extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        self.out.extend_from_slice(if client_keep_alive {
            b"Via: 1.1 portlab\r\nConnection: keep-alive\r\n\r\n"
        } else {
            b"Via: 1.1 portlab\r\nConnection: close\r\n\r\n"
        });
        let idle = Some((
            &self.shared.watchdog,
            &self.deadline,
            self.shared.config.upstream_timeout,
        ));
        let result = forward_body(
            &mut lease.conn.stream,
            &mut self.ubuf,
            &mut self.client,
            &mut self.out,
            response.framing,
            rechunk,
            idle,
        )
        .await;
        match result {
            Ok(bytes) => {
                add(&self.shared.counters.response_body_bytes, bytes);
                add(&self.shared.counters.responses, 1);
                let reusable = response.upstream_keep_alive
                    && response.framing != BodyFraming::UntilClose
                    && self.ubuf.is_empty();
                if reusable {
                    self.shared.pool.checkin(lease);
                }
                if client_keep_alive {
                    Outcome::KeepGoing
                } else {
                    Outcome::Close
                }
            }
            Err(BodyError::Read) => {
                add(&self.shared.counters.upstream_aborts, 1);
                Outcome::Close
            }
            Err(BodyError::Write) => {
                add(&self.shared.counters.client_aborts, 1);
                Outcome::Close
            }
        }
    }

    async fn bad_gateway(&mut self, reason: &str) -> Outcome {
        self.upstream_failed = true;
        add(&self.shared.counters.bad_gateway, 1);
        let body = format!(
            "portlab proxy: upstream {} unreachable: {reason}\n",
            self.shared.config.upstream
        );
        self.answer(502, "Bad Gateway", &body).await;
        Outcome::Close
    }

    async fn gateway_timeout(&mut self) -> Outcome {
        self.upstream_failed = true;
        add(&self.shared.counters.gateway_timeout, 1);
        let body = format!(
            "portlab proxy: upstream {} did not answer within {} ms\n",
            self.shared.config.upstream,
            self.shared.config.upstream_timeout.as_millis()
        );
        self.answer(504, "Gateway Timeout", &body).await;
        Outcome::Close
    }

    async fn reject(&mut self, status: u16, reason: &str) {
        add(&self.shared.counters.bad_requests, 1);
        let phrase = if status == 431 {
            "Request Header Fields Too Large"
        } else {
            "Bad Request"
        };
        let body = format!("portlab proxy: {reason}\n");
        self.answer(status, phrase, &body).await;
        let _ = self.client.shutdown().await;
    }

    /// Writes a small proxy-generated answer with `Connection: close`.
    async fn answer(&mut self, status: u16, phrase: &str, body: &str) {
        let text = format!(
            "HTTP/1.1 {status} {phrase}\r\nServer: portlab\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nVia: 1.1 portlab\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = self.client.write_all(text.as_bytes()).await;
    }
}

enum HeadError {
    Timeout,
    Closed,
    Malformed,
}

enum ParseError {
    /// A complete 1xx interim head of this length, to skip.
    Interim(usize),
    Malformed,
}

/// Parses a response head from `buf`; on success `out` holds the client head without its
/// framing, `Via` and `Connection` lines (the caller adds those once it knows the framing).
fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, ParseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ParseError::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Err(ParseError::Interim(head_len));
    }
    let facts = HeadFacts::read(resp.headers);
    if facts.invalid || status == 101 {
        return Err(ParseError::Malformed);
    }
    let framing = facts.response_framing(status, head_request);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    copy_header_lines(buf, resp.headers, out, |h| {
        !(is_hop_by_hop(h.name)
            || (facts.conn_options && named_in_connection(resp.headers, h.name))
            || (framing == BodyFraming::Chunked && h.name.eq_ignore_ascii_case("content-length")))
    });
    Ok(Some(Response {
        head_len,
        framing,
        upstream_keep_alive: facts.keep_alive(resp.version.unwrap_or(1)),
    }))
}

/// Appends to `out` the header lines of `headers` (parsed by httparse from `buf`) that `keep`
/// accepts, as the bytes that were read: each run of adjacent kept lines is one copy, not a
/// re-serialisation of every name and value. A line that does not end in CR LF (httparse also
/// accepts a bare LF) is written anew as `name: value` CR LF.
fn copy_header_lines(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    out: &mut Vec<u8>,
    mut keep: impl FnMut(&httparse::Header<'_>) -> bool,
) {
    let base = buf.as_ptr() as usize;
    // The pending run of kept raw lines, as a byte range of `buf`.
    let mut run = 0..0;
    for h in headers {
        // httparse's names borrow from `buf`; a line ends at the first LF after its name
        // (values cannot hold one: obsolete line folding is rejected).
        let start = (h.name.as_ptr() as usize).wrapping_sub(base);
        let line_end = buf
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
            .map(|lf| start + lf + 1)
            .filter(|&end| end >= start + 2 && buf[end - 2] == b'\r');
        let kept = keep(h);
        match line_end {
            Some(end) if kept && run.end == start && !run.is_empty() => run.end = end,
            Some(end) if kept => {
                out.extend_from_slice(&buf[run.clone()]);
                run = start..end;
            }
            _ if kept => {
                out.extend_from_slice(&buf[run.clone()]);
                run = 0..0;
                push_header(out, h.name.as_bytes(), h.value);
            }
            _ => {}
        }
    }
    out.extend_from_slice(&buf[run]);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Forwards a message body from `src` (with `buf` holding bytes already read) to `dst`, after
/// the bytes already in `out` (the head). Small messages go out in one write. Returns the
/// payload bytes forwarded. `rechunk` wraps a close-delimited body in chunked framing;
/// `read_idle` bounds each wait for `src`.
async fn forward_body(
    src: &mut TcpStream,
    buf: &mut BytesMut,
    dst: &mut TcpStream,
    out: &mut Vec<u8>,
    framing: BodyFraming,
    rechunk: bool,
    read_idle: Option<(&Watchdog, &DeadlineSlot, Duration)>,
) -> Result<u64, BodyError> {
    let mut payload = 0u64;
    match framing {
        BodyFraming::Empty => {}
        BodyFraming::Length(total) => {
            let mut left = total;
            loop {
                let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                out.extend_from_slice(&buf[..take]);
                buf.advance(take);
                left -= take as u64;
                if left == 0 {
                    break;
                }
                write_out(dst, out).await?;
                read_some(src, buf, read_idle).await?;
            }
            payload = total;
        }
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::new();
            loop {
                let used = scanner.scan(buf).map_err(|_| BodyError::Read)?;
                out.extend_from_slice(&buf[..used]);
                buf.advance(used);
                if scanner.is_done() {
                    break;
                }
                write_out(dst, out).await?;
                read_some(src, buf, read_idle).await?;
            }
            payload = scanner.data_bytes;
        }
        BodyFraming::UntilClose => loop {
            if !buf.is_empty() {
                payload += buf.len() as u64;
                if rechunk {
                    push_chunk_size(out, buf.len());
                    out.extend_from_slice(buf);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(buf);
                }
                buf.clear();
            }
            write_out(dst, out).await?;
            if read_some(src, buf, read_idle).await.is_err() {
                if rechunk {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                break;
            }
        },
    }
    write_out(dst, out).await.map(|()| payload)
}

async fn write_out(dst: &mut TcpStream, out: &mut Vec<u8>) -> Result<(), BodyError> {
    if !out.is_empty() {
        dst.write_all(out).await.map_err(|_| BodyError::Write)?;
        out.clear();
    }
    Ok(())
}

/// Reads more bytes into `buf`; EOF, an error or `idle` without data is a read failure.
async fn read_some(
    src: &mut TcpStream,
    buf: &mut BytesMut,
    idle: Option<(&Watchdog, &DeadlineSlot, Duration)>,
) -> Result<(), BodyError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(STREAM_CHUNK_BYTES);
    }
    let read = src.read_buf(buf);
    let result = match idle {
        Some((watchdog, slot, idle)) => watchdog
            .within(slot, watchdog.deadline_after(idle), read)
            .await
            .map_err(|_| BodyError::Read)?,
        None => read.await,
    };
    match result {
        Ok(0) | Err(_) => Err(BodyError::Read),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(buf: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut slots);
        assert!(resp.parse(buf).unwrap().is_complete());
        resp.headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect()
    }

    fn copied(buf: &[u8], drop: &[&str]) -> Vec<u8> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut slots);
        assert!(resp.parse(buf).unwrap().is_complete());
        let mut out = Vec::new();
        copy_header_lines(buf, resp.headers, &mut out, |h| {
            !drop.iter().any(|d| h.name.eq_ignore_ascii_case(d))
        });
        out
    }

    #[test]
    fn kept_lines_are_copied_as_read() {
        let buf = b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nETag:  \"a b\" \r\n\
                    Content-Length: 3\r\nKeep-Alive: timeout=5\r\n\r\nabc";
        assert_eq!(
            copied(buf, &["connection", "keep-alive"]),
            b"Server: x\r\nETag:  \"a b\" \r\nContent-Length: 3\r\n".to_vec()
        );
        assert_eq!(
            copied(
                buf,
                &[
                    "server",
                    "etag",
                    "content-length",
                    "connection",
                    "keep-alive"
                ]
            ),
            b""
        );
        assert_eq!(
            copied(buf, &[]),
            buf[17..buf.len() - 5].to_vec(),
            "every line kept: the head's header block byte for byte"
        );
    }

    #[test]
    fn bare_lf_lines_are_rewritten_with_crlf() {
        let buf = b"HTTP/1.1 200 OK\nA: 1\nB: 2\r\nC: 3\n\n";
        assert_eq!(headers_of(buf).len(), 3);
        assert_eq!(copied(buf, &[]), b"A: 1\r\nB: 2\r\nC: 3\r\n".to_vec());
        assert_eq!(copied(buf, &["b"]), b"A: 1\r\nC: 3\r\n".to_vec());
    }
}
