//! The target server: HTTP/1.1 on any path with a small fixed body (the seed scenario's
//! `hello.html`), keep-alive knobs, response delays and seeded fault injection.
//!
//! Hot path: responses are built once at start-up, request heads are parsed with `httparse`
//! into uninitialised header slots, pipelined responses are batched into one write, and
//! counters are relaxed atomics.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::accept::{accept_loop, ConnCounters};
use crate::fault::{DelayRange, Dice, Fault, FaultSpec};
use crate::http::{BodyFraming, ChunkedScanner, HeadFacts, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::net::{add, load};

/// The default body: a small hello page, like the seed scenario's nginx `hello.html`.
pub const HELLO_BODY: &[u8] = b"<!DOCTYPE html>\n<html><head><title>hello</title></head>\
<body><h1>hello from portlab serve</h1></body></html>\n";

/// Largest `--body-size` accepted, bytes (1 GiB: the body is held in memory once).
pub const MAX_BODY_BYTES: usize = 1 << 30;

/// Responses up to this size are batched in the output buffer; larger ones are written
/// straight from the shared pre-built bytes.
const BATCH_LIMIT: usize = 16 * 1024;

/// How the target server answers. Build it from flags, call [`ServerConfig::validate`] (done
/// by [`Server::new`]), then run a [`Server`].
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Response body size in bytes; `None` serves [`HELLO_BODY`].
    pub body_size: Option<usize>,
    /// Keep connections open between requests (HTTP/1.1 default); `false` answers every request
    /// with `Connection: close` (`--close`).
    pub keep_alive: bool,
    /// Close a connection after this many requests (`--close-after N`, N ≥ 1).
    pub close_after: Option<u64>,
    /// Delay before each response (`--delay MS` or `MIN..MAX`).
    pub delay: Option<DelayRange>,
    /// Fractions of requests that get a fault instead of a response (`--fault`).
    pub faults: FaultSpec,
    /// Seed of the fault and delay draws (`--seed`).
    pub seed: u64,
    /// At most this many connections open at once (`--max-conns`); others wait in the backlog.
    pub max_conns: Option<usize>,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    /// Pause this long after each accept() (`--accept-delay`): a slow acceptor, so a burst of
    /// connects overflows a small listen backlog (ListenOverflows; the client's SYN is dropped
    /// and retransmitted after 1 s, 3 s, …, or reset with `tcp_abort_on_overflow=1`).
    #[serde(serialize_with = "serialize_opt_ms")]
    pub accept_delay: Option<std::time::Duration>,
}

fn serialize_opt_ms<S: serde::Serializer>(
    d: &Option<std::time::Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_size: None,
            keep_alive: true,
            close_after: None,
            delay: None,
            faults: FaultSpec::default(),
            seed: 0,
            max_conns: None,
            chunked: false,
            accept_delay: None,
        }
    }
}

/// A [`ServerConfig`] value that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerConfigError {
    /// `close_after` of 0.
    #[error("--close-after must be at least 1")]
    CloseAfterZero,
    /// `max_conns` of 0.
    #[error("--max-conns must be at least 1")]
    MaxConnsZero,
    /// `body_size` above [`MAX_BODY_BYTES`].
    #[error("--body-size {0} is larger than the 1 GiB limit")]
    BodyTooLarge(usize),
}

impl ServerConfig {
    /// Checks the values once, at the edge.
    ///
    /// # Errors
    /// [`ServerConfigError`] naming the bad value.
    pub fn validate(&self) -> Result<(), ServerConfigError> {
        if self.close_after == Some(0) {
            return Err(ServerConfigError::CloseAfterZero);
        }
        if self.max_conns == Some(0) {
            return Err(ServerConfigError::MaxConnsZero);
        }
        match self.body_size {
            Some(n) if n > MAX_BODY_BYTES => Err(ServerConfigError::BodyTooLarge(n)),
            _ => Ok(()),
        }
    }
}

/// Faults injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Connections reset (RST).
    pub reset: u64,
    /// Garbage answers.
    pub garbage: u64,
    /// Requests never answered.
    pub stall: u64,
    /// Bodies cut in the middle.
    pub close_mid_body: u64,
}

/// What the server did. Field names are the stable `--json` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections open when the snapshot was taken.
    pub connections_active: u64,
    /// Request heads parsed.
    pub requests: u64,
    /// Complete responses sent (faults excluded).
    pub responses: u64,
    /// Malformed requests answered with 400 (or 431 for an oversized head).
    pub bad_requests: u64,
    /// Request body bytes received and discarded (payload, without chunk framing).
    pub request_body_bytes: u64,
    /// Response bytes written (heads and bodies).
    pub response_bytes: u64,
    /// Connections closed by the server because of `--close-after` or `--close`.
    pub closed_by_server: u64,
    /// accept() failures (EMFILE, ENFILE, ENOBUFS, …).
    pub accept_errors: u64,
    /// Faults injected.
    pub faults: FaultCounts,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    conns: Arc<ConnCounters>,
    pub(crate) requests: AtomicU64,
    pub(crate) responses: AtomicU64,
    bad_requests: AtomicU64,
    pub(crate) request_body_bytes: AtomicU64,
    pub(crate) response_bytes: AtomicU64,
    pub(crate) closed_by_server: AtomicU64,
    fault_reset: AtomicU64,
    fault_garbage: AtomicU64,
    fault_stall: AtomicU64,
    fault_close_mid_body: AtomicU64,
}

/// The pre-built response bytes: the same head and body for every request.
#[derive(Debug)]
pub(crate) struct Responses {
    keep_alive: Bytes,
    close: Bytes,
    keep_alive_head_len: usize,
    close_head_len: usize,
    /// Head + half the body of the Content-Length response, for `close-mid-body`.
    cut: Bytes,
    /// The body alone (HTTP/2 sends it in DATA frames).
    pub(crate) body: Bytes,
}

impl Responses {
    fn build(config: &ServerConfig) -> Self {
        let body: Vec<u8> = match config.body_size {
            None => HELLO_BODY.to_vec(),
            Some(n) => HELLO_BODY.iter().copied().cycle().take(n).collect(),
        };
        let (keep_alive, keep_alive_head_len) = Self::one(&body, "keep-alive", config.chunked);
        let (close, close_head_len) = Self::one(&body, "close", config.chunked);
        let (plain, plain_head_len) = Self::one(&body, "keep-alive", false);
        let cut = plain.slice(..plain_head_len + body.len() / 2);
        Responses {
            keep_alive,
            close,
            keep_alive_head_len,
            close_head_len,
            cut,
            body: Bytes::from(body),
        }
    }

    fn one(body: &[u8], connection: &str, chunked: bool) -> (Bytes, usize) {
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", body.len())
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nServer: portlab\r\nContent-Type: text/html\r\n{framing}\r\n\
             Connection: {connection}\r\n\r\n"
        );
        let mut bytes = head.clone().into_bytes();
        if chunked {
            if !body.is_empty() {
                bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                bytes.extend_from_slice(body);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            bytes.extend_from_slice(body);
        }
        (Bytes::from(bytes), head.len())
    }
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nServer: portlab\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const HEAD_TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nServer: portlab\r\n\
Content-Length: 0\r\nConnection: close\r\n\r\n";
const GARBAGE: &[u8] =
    b"\x00\x17\xfe\xffportlab serve: injected garbage, not HTTP\r\n\x01\x02\x03\r\n\r\n";

/// Shared, read-only state of a running server plus its counters.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) responses: Responses,
    pub(crate) dice: Dice,
    pub(crate) counters: Counters,
}

/// The target server. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Validates `config` and builds the responses.
    ///
    /// # Errors
    /// [`ServerConfigError`].
    pub fn new(config: ServerConfig) -> Result<Self, ServerConfigError> {
        config.validate()?;
        let shared = Shared {
            responses: Responses::build(&config),
            dice: Dice::new(config.seed),
            config,
            counters: Counters::default(),
        };
        Ok(Server {
            shared: Arc::new(shared),
        })
    }

    /// A snapshot of the counters (callable while [`Server::run`] runs).
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            connections_accepted: load(&c.conns.accepted),
            connections_active: load(&c.conns.active),
            requests: load(&c.requests),
            responses: load(&c.responses),
            bad_requests: load(&c.bad_requests),
            request_body_bytes: load(&c.request_body_bytes),
            response_bytes: load(&c.response_bytes),
            closed_by_server: load(&c.closed_by_server),
            accept_errors: load(&c.conns.accept_errors),
            faults: FaultCounts {
                reset: load(&c.fault_reset),
                garbage: load(&c.fault_garbage),
                stall: load(&c.fault_stall),
                close_mid_body: load(&c.fault_close_mid_body),
            },
        }
    }

    /// Serves on `listener` until `shutdown` completes, then closes every connection and
    /// returns the final stats. Must run inside a tokio runtime.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> ServerStats {
        let shared = &self.shared;
        accept_loop(
            listener,
            shared.config.max_conns,
            shared.config.accept_delay,
            shutdown,
            &shared.counters.conns,
            |stream, _peer: SocketAddr, number| {
                let shared = Arc::clone(shared);
                async move { serve_connection(stream, shared, number).await }
            },
        )
        .await;
        self.stats()
    }
}

/// Runs a [`Server`] for `config` on `listener` until `shutdown`; returns its stats.
///
/// # Errors
/// [`ServerConfigError`] when `config` is invalid.
pub async fn run_server(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ServerStats, ServerConfigError> {
    Ok(Server::new(config)?.run(listener, shutdown).await)
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>, number: u64) {
    // Small responses must leave at once, not after Nagle's 40 ms delayed-ACK dance.
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(4096);
    match crate::h2c::sniff(&mut stream, &mut buf).await {
        Ok(true) => return crate::h2c::serve(stream, buf, shared).await,
        Ok(false) => {}
        Err(_) => return,
    }
    let mut conn = Connection {
        stream,
        shared: &shared,
        number,
        buf,
        out: Vec::with_capacity(4096),
        served: 0,
    };
    // Errors here are the client's (reset, broken pipe): the connection simply ends.
    let _ = conn.run().await;
}

/// What the parser learned about one request head.
struct RequestHead {
    head_len: usize,
    framing: BodyFraming,
    keep_alive: bool,
    is_head: bool,
    invalid: bool,
}

fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, httparse::Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut slots)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head_len) => {
            let facts = HeadFacts::read(req.headers);
            Ok(Some(RequestHead {
                head_len,
                framing: facts.request_framing(),
                keep_alive: facts.keep_alive(req.version.unwrap_or(1)),
                is_head: req.method == Some("HEAD"),
                invalid: facts.invalid,
            }))
        }
    }
}

struct Connection<'a> {
    stream: TcpStream,
    shared: &'a Shared,
    number: u64,
    buf: BytesMut,
    out: Vec<u8>,
    served: u64,
}

impl Connection<'_> {
    async fn run(&mut self) -> io::Result<()> {
        let counters = &self.shared.counters;
        loop {
            let head = match parse_request(&self.buf) {
                Ok(Some(head)) if !head.invalid => head,
                Ok(Some(_)) | Err(_) => return self.reject(BAD_REQUEST).await,
                Ok(None) if self.buf.len() >= MAX_HEAD_BYTES => {
                    return self.reject(HEAD_TOO_LARGE).await
                }
                Ok(None) => {
                    self.flush().await?;
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Ok(());
                    }
                    continue;
                }
            };
            self.buf.advance(head.head_len);
            add(&counters.requests, 1);
            if self.discard_body(head.framing).await.is_err() {
                return self.reject(BAD_REQUEST).await;
            }
            self.served += 1;
            if let Some(fault) =
                self.shared
                    .dice
                    .fault(&self.shared.config.faults, self.number, self.served)
            {
                self.flush().await?;
                return self.inject(fault).await;
            }
            if let Some(range) = &self.shared.config.delay {
                self.flush().await?;
                tokio::time::sleep(self.shared.dice.delay(range, self.number, self.served)).await;
            }
            let close = self.closes_after_this(head.keep_alive);
            self.respond(close, head.is_head).await?;
            if close {
                add(&counters.closed_by_server, u64::from(head.keep_alive));
                self.flush().await?;
                return self.stream.shutdown().await;
            }
            if self.buf.is_empty() {
                self.flush().await?;
            }
        }
    }

    fn closes_after_this(&self, client_keep_alive: bool) -> bool {
        let config = &self.shared.config;
        !client_keep_alive
            || !config.keep_alive
            || config.close_after.is_some_and(|n| self.served >= n)
    }

    async fn respond(&mut self, close: bool, head_only: bool) -> io::Result<()> {
        let r = &self.shared.responses;
        let (bytes, head_len) = if close {
            (&r.close, r.close_head_len)
        } else {
            (&r.keep_alive, r.keep_alive_head_len)
        };
        let bytes = if head_only {
            &bytes[..head_len]
        } else {
            &bytes[..]
        };
        add(&self.shared.counters.response_bytes, bytes.len() as u64);
        add(&self.shared.counters.responses, 1);
        if self.out.len() + bytes.len() <= BATCH_LIMIT {
            self.out.extend_from_slice(bytes);
            Ok(())
        } else {
            self.flush().await?;
            self.stream.write_all(bytes).await
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads and drops a request body; counts its payload bytes.
    async fn discard_body(&mut self, framing: BodyFraming) -> Result<(), BodyError> {
        let counter = &self.shared.counters.request_body_bytes;
        match framing {
            BodyFraming::Empty | BodyFraming::UntilClose => Ok(()),
            BodyFraming::Length(mut left) => {
                add(counter, left);
                loop {
                    let take = self
                        .buf
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.buf.advance(take);
                    left -= take as u64;
                    if left == 0 {
                        return Ok(());
                    }
                    self.read_more().await?;
                }
            }
            BodyFraming::Chunked => {
                let mut scanner = ChunkedScanner::new();
                loop {
                    let used = scanner.scan(&self.buf).map_err(|_| BodyError)?;
                    self.buf.advance(used);
                    if scanner.is_done() {
                        add(counter, scanner.data_bytes);
                        return Ok(());
                    }
                    self.read_more().await?;
                }
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), BodyError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(64 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(BodyError),
            Ok(_) => Ok(()),
        }
    }

    async fn reject(&mut self, response: &[u8]) -> io::Result<()> {
        add(&self.shared.counters.bad_requests, 1);
        self.flush().await?;
        self.stream.write_all(response).await?;
        self.stream.shutdown().await
    }

    async fn inject(&mut self, fault: Fault) -> io::Result<()> {
        let c = &self.shared.counters;
        match fault {
            Fault::Reset => {
                add(&c.fault_reset, 1);
                // SO_LINGER 0: close() sends RST instead of FIN (tcp_close(), net/ipv4/tcp.c).
                socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))?;
                Ok(())
            }
            Fault::Garbage => {
                add(&c.fault_garbage, 1);
                self.stream.write_all(GARBAGE).await?;
                self.stream.shutdown().await
            }
            Fault::Stall => {
                add(&c.fault_stall, 1);
                let mut sink = [0u8; 4096];
                while self.stream.read(&mut sink).await? > 0 {}
                Ok(())
            }
            Fault::CloseMidBody => {
                add(&c.fault_close_mid_body, 1);
                let cut = self.shared.responses.cut.clone();
                self.stream.write_all(&cut).await?;
                self.stream.shutdown().await
            }
        }
    }
}

/// A request body that ended early or was not valid chunked encoding.
#[derive(Debug)]
struct BodyError;
