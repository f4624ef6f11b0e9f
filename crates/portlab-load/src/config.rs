//! What to run: [`LoadConfig`] as built from the command line, checked once by
//! [`LoadConfig::validate`] into a [`Plan`] (URL parsed, host resolved, request bytes built) so
//! the engine never re-checks.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::build_request;

/// Who closes the TCP connection, which decides on which side TIME_WAIT lands. In JSON by
/// its command-line name ([`ConnectionPolicy::name`]), as docs/load-report.schema.json says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionPolicy {
    /// Keep-alive (`keep-alive`): up to `concurrency` connections, each reused for many requests.
    #[default]
    KeepAlive,
    /// `close`: every request carries `Connection: close`; the client waits for the server's FIN
    /// before closing, so the server is the active closer and holds TIME_WAIT (hey's
    /// `--disable-keepalive`).
    #[serde(rename = "close")]
    ServerCloses,
    /// `drop`: the client closes the connection itself right after each response (a plain
    /// close(), no RST), so TIME_WAIT lands on the client: the pattern that exhausts ephemeral
    /// ports (RFC 9293 §3.6: the side that closes first enters TIME-WAIT).
    #[serde(rename = "drop")]
    ClientCloses,
}

impl ConnectionPolicy {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            ConnectionPolicy::KeepAlive => "keep-alive",
            ConnectionPolicy::ServerCloses => "close",
            ConnectionPolicy::ClientCloses => "drop",
        }
    }
}

/// How fast requests are started.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RateLimit {
    /// Closed model: each connection sends its next request as soon as the previous one ends.
    #[default]
    Unlimited,
    /// hey's `-q`: each of the `concurrency` workers sends at most this many requests per second.
    /// Latency is measured from the actual send time.
    PerWorker {
        /// Requests per second per worker.
        per_sec: f64,
    },
    /// `--rate`: open model, a global schedule of this many requests per second. Latency is
    /// measured from the intended send time, so queueing behind slow responses is counted
    /// (coordinated-omission correction, as wrk2 does).
    Global {
        /// Requests per second for the whole run.
        per_sec: f64,
    },
}

/// Which engine runs a plan (`--engine`; default from `PORTLAB_ENGINE`, else `auto`).
///
/// The io_uring engine ([`EngineChoice::Uring`]) runs plain-TCP HTTP/1.1 plans (every connection
/// policy, `-n`/`-z`, `-q`/`--rate`, `--retry`, `--circuit-breaker`, `--hold`, `--source-ip`,
/// `-o csv`); plans it does not run (TLS, `-x` proxies, HTTP/2) go to the tokio engine, and the
/// report names the engine that ran and why ([`crate::SettingsReport::engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// io_uring for the plans it supports when a ring can be set up, tokio otherwise (the
    /// report's `engine_fallback` says why: the plan, or the ring set-up error).
    #[default]
    Auto,
    /// io_uring for every plan it supports (the others run on tokio); a run fails at start
    /// when no ring can be set up (`io_uring_disabled`, seccomp, kernel < 5.11).
    Uring,
    /// The portable engine: one current-thread tokio runtime per engine thread.
    Tokio,
}

impl EngineChoice {
    /// The name used on the command line, in `PORTLAB_ENGINE` and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Uring => "uring",
            EngineChoice::Tokio => "tokio",
        }
    }

    /// Parses `auto`, `uring` or `tokio` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(EngineChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Some(EngineChoice::Uring),
            "tokio" => Some(EngineChoice::Tokio),
            _ => None,
        }
    }

    /// The choice named by the `PORTLAB_ENGINE` environment variable: `Ok(None)` when unset
    /// or empty, `Err(value)` when it names no engine.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var("PORTLAB_ENGINE") {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Self::parse(&v).map(Some).ok_or(v),
            Err(_) => Ok(None),
        }
    }
}

/// A load run as the user asked for it. Build it from flags, then call [`LoadConfig::validate`].
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Target URL, `http://` or `https://`.
    pub url: String,
    /// HTTP method (`GET`, `POST`, `HEAD`, ...).
    pub method: String,
    /// Extra request headers, in order, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Request body (empty for none).
    pub body: Vec<u8>,
    /// `Content-Type` of the body, if any.
    pub content_type: Option<String>,
    /// Number of requests (`-n`); ignored when `duration` is set (as hey does).
    pub requests: u64,
    /// Run for this long instead of a request count (`-z`).
    pub duration: Option<Duration>,
    /// Number of concurrent connections / workers (`-c`).
    pub concurrency: usize,
    /// OS threads running the engine, each with its own connections and statistics.
    pub threads: usize,
    /// Pacing of requests.
    pub rate: RateLimit,
    /// Time allowed for a response, from the end of connecting to the last body byte (`-t`).
    pub request_timeout: Duration,
    /// Time allowed for TCP connect (plus the TLS handshake for https).
    pub connect_timeout: Duration,
    /// Connection policy (`--connection`).
    pub policy: ConnectionPolicy,
    /// Local addresses to spread connections over, round-robin (`--source-ip`).
    pub source_ips: Vec<IpAddr>,
    /// Extra attempts per request after a failure (`--retry`).
    pub retries: u32,
    /// Base of the exponential backoff between attempts (`--backoff`); the n-th retry waits
    /// `base * 2^(n-1)`, jittered to 50–100 %.
    pub backoff: Duration,
    /// `--circuit-breaker`: refuse attempts at once while too many recent ones failed
    /// ([`crate::breaker`]); one breaker per engine thread.
    pub circuit_breaker: Option<crate::breaker::BreakerConfig>,
    /// Skip TLS certificate verification (`--insecure`).
    pub insecure: bool,
    /// Keep each connection open this long after its response before the policy applies
    /// (`--hold`): concurrent long-lived flows, as NAT and conntrack see them. The hold is not
    /// part of the request's latency; it ends early at the run deadline.
    pub hold: Option<Duration>,
    /// HTTP proxy (`-x`), `http://HOST:PORT` or `HOST:PORT`: `http://` targets are requested in
    /// absolute form through it (RFC 9112 §3.2.2), `https://` targets through a `CONNECT`
    /// tunnel (RFC 9110 §9.3.6).
    pub proxy: Option<String>,
    /// HTTP/2 (`-h2`): ALPN `h2` over TLS, prior knowledge (h2c, RFC 9113 §3.3) over `http://`.
    pub http2: bool,
    /// HTTP/2 streams in flight per connection (`-p`, as oha's): `concurrency × streams`
    /// requests run at once over `concurrency` connections. 1 without `-h2`.
    pub streams: usize,
    /// Engine to run the plan on (`--engine`).
    pub engine: EngineChoice,
    /// io_uring engine (Linux ≥ 6.12, `IORING_FEAT_MIN_TIMEOUT`): with 8 or more operations in
    /// flight, how long a wait gathers completions after the first one (`--batch-wait`; at most
    /// 100 ms; zero turns batching off). A response's latency can then include up to this long
    /// on the client side, the price of one wake-up per batch of responses. Default:
    /// `PORTLAB_URING_MIN_WAIT_US` (µs), else [`DEFAULT_BATCH_WAIT`].
    pub batch_wait: Duration,
}

/// Default of [`LoadConfig::batch_wait`]: 200 µs.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_micros(200);

/// Longest [`LoadConfig::batch_wait`] the engine applies.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(100);

/// `PORTLAB_URING_MIN_WAIT_US` (µs; unset or not a number: [`DEFAULT_BATCH_WAIT`]).
fn batch_wait_from_env() -> Duration {
    std::env::var("PORTLAB_URING_MIN_WAIT_US")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(DEFAULT_BATCH_WAIT, Duration::from_micros)
        .min(MAX_BATCH_WAIT)
}

impl Default for LoadConfig {
    /// hey's defaults: 200 requests, 50 workers, 20 s timeout, GET.
    fn default() -> Self {
        Self {
            url: String::new(),
            method: "GET".to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            content_type: None,
            requests: 200,
            duration: None,
            concurrency: 50,
            threads: 2,
            rate: RateLimit::Unlimited,
            request_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            policy: ConnectionPolicy::KeepAlive,
            source_ips: Vec::new(),
            retries: 0,
            backoff: Duration::from_millis(100),
            circuit_breaker: None,
            insecure: false,
            hold: None,
            proxy: None,
            http2: false,
            streams: 1,
            // The whole test suite can run per engine: PORTLAB_ENGINE=tokio|uring|auto.
            engine: EngineChoice::from_env().ok().flatten().unwrap_or_default(),
            batch_wait: batch_wait_from_env(),
        }
    }
}

/// A configuration the engine cannot run. Each message is one line naming the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL did not parse.
    #[error("malformed URL {url:?}: {reason}")]
    MalformedUrl {
        /// The URL as given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// Scheme other than http/https.
    #[error("unsupported scheme {0:?}: use http:// or https://")]
    UnsupportedScheme(String),
    /// The URL has no host.
    #[error("URL {0:?} has no host")]
    MissingHost(String),
    /// The host name did not resolve.
    #[error("cannot resolve host {host:?}: {reason}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver message.
        reason: String,
    },
    /// A header name or value is not valid HTTP/1.1.
    #[error("bad header {0:?}: use \"Name: value\" with a token name and no line breaks")]
    BadHeader(String),
    /// The method is not an HTTP token.
    #[error("bad method {0:?}: use an HTTP token such as GET or POST")]
    BadMethod(String),
    /// A numeric setting out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The `-x` proxy is not `http://HOST:PORT` or `HOST:PORT`.
    #[error("bad proxy {0:?}: use -x http://HOST:PORT or -x HOST:PORT")]
    BadProxy(String),
    /// A `--source-ip` address of another family than the target.
    #[error("source address {source_ip} is not of the same family as the target {target}")]
    SourceFamily {
        /// The local address.
        source_ip: IpAddr,
        /// The target address.
        target: SocketAddr,
    },
}

/// Where requests go, resolved once.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// `true` for https.
    pub tls: bool,
    /// Host name (or literal address) from the URL, used for `Host:` and TLS SNI.
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
    /// Every address the host resolved to, in resolver order.
    pub resolved: Vec<SocketAddr>,
    /// The order connects try them in: families interleaved, starting with the resolver's
    /// first (RFC 8305 §4), only the families of `--source-ip` when given. A connect that
    /// fails moves on to the next; the last address that worked is tried first next time.
    pub dial_order: Vec<SocketAddr>,
    /// The first address of `dial_order`.
    pub addr: SocketAddr,
    /// The `-x` proxy, when requests go through one.
    pub proxy: Option<ProxyTarget>,
}

/// An HTTP proxy that connections go to instead of the target (`-x`).
#[derive(Debug, Clone, Serialize)]
pub struct ProxyTarget {
    /// The proxy as given.
    pub url: String,
    /// Host name or address of the proxy.
    pub host: String,
    /// Proxy port (80 when the URL names none).
    pub port: u16,
    /// The proxy's first resolved address: TCP connections go there.
    pub addr: SocketAddr,
    /// `true` when the target is https: each connection first opens a `CONNECT host:port`
    /// tunnel; `false`: requests carry the absolute URL.
    pub tunnel: bool,
}

impl Target {
    /// Where TCP connections go first: the proxy when there is one, else the target's first
    /// address in dial order.
    pub fn dial_addr(&self) -> SocketAddr {
        self.proxy.as_ref().map_or(self.addr, |p| p.addr)
    }

    /// Every address a connect may try, in order: the proxy's, or the target's `dial_order`.
    pub fn candidates(&self) -> &[SocketAddr] {
        match &self.proxy {
            Some(p) => std::slice::from_ref(&p.addr),
            None => &self.dial_order,
        }
    }

    /// `host:port` as a request authority (brackets around IPv6 literals).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The parts of an HTTP/2 request, checked once (RFC 9113 §8.3: pseudo-headers from the URI;
/// `Host` becomes `:authority`; connection-specific headers are not sent, §8.2.2).
#[derive(Debug, Clone)]
pub struct H2Request {
    /// `:method`.
    pub method: http::Method,
    /// `:scheme`, `:authority` and `:path`.
    pub uri: http::Uri,
    /// Regular headers.
    pub headers: http::HeaderMap,
    /// Request body (empty: the HEADERS frame ends the stream).
    pub body: bytes::Bytes,
}

/// A validated run, ready for [`crate::run`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The configuration as given.
    pub config: LoadConfig,
    /// Resolved target.
    pub target: Target,
    /// The request, serialized once (head and body).
    pub request: Vec<u8>,
    /// `true` for HEAD requests (responses carry no body).
    pub head_request: bool,
    /// The HTTP/2 request template (`-h2`), built once.
    pub h2: Option<H2Request>,
    /// Threads actually used (at most `concurrency`).
    pub threads: usize,
}

impl LoadConfig {
    /// Checks every value, parses the URL, resolves the host once and builds the request bytes.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad value.
    pub fn validate(self) -> Result<Plan, ConfigError> {
        self.check_numbers()?;
        check_token(&self.method).map_err(|_| ConfigError::BadMethod(self.method.clone()))?;
        for (name, value) in &self.headers {
            if check_token(name).is_err()
                || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
            {
                return Err(ConfigError::BadHeader(format!("{name}: {value}")));
            }
        }
        let mut target = parse_target(&self.url)?;
        if let Some(proxy) = &self.proxy {
            target.proxy = Some(parse_proxy(proxy, target.tls)?);
        }
        if let Some(first) = self.source_ips.first() {
            // Only destinations of the source addresses' family can be reached from them.
            let family = first.is_ipv4();
            let dial = target.dial_addr();
            for ip in &self.source_ips {
                if ip.is_ipv4() != family {
                    return Err(ConfigError::SourceFamily {
                        source_ip: *ip,
                        target: dial,
                    });
                }
            }
            if target.proxy.is_some() {
                if dial.is_ipv4() != family {
                    return Err(ConfigError::SourceFamily {
                        source_ip: *first,
                        target: dial,
                    });
                }
            } else {
                target.dial_order.retain(|a| a.is_ipv4() == family);
                match target.dial_order.first() {
                    Some(&a) => target.addr = a,
                    None => {
                        return Err(ConfigError::SourceFamily {
                            source_ip: *first,
                            target: dial,
                        })
                    }
                }
            }
        }
        let mut path = request_path(&self.url)?;
        if target.proxy.as_ref().is_some_and(|p| !p.tunnel) {
            // Absolute form towards a proxy (RFC 9112 §3.2.2).
            path = format!("http://{}{path}", target.authority());
        }
        let head_request = self.method.eq_ignore_ascii_case("HEAD");
        let request = build_request(&self, &target, &path);
        let threads = self.threads.min(self.concurrency).max(1);
        let h2 = if self.http2 {
            Some(h2_request(&self, &target, &request_path(&self.url)?)?)
        } else {
            None
        };
        Ok(Plan {
            config: self,
            target,
            request,
            head_request,
            h2,
            threads,
        })
    }

    fn check_numbers(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::OutOfRange(msg.to_string()));
        if self.concurrency == 0 {
            return bad("-c must be at least 1");
        }
        if self.threads == 0 {
            return bad("--threads must be at least 1");
        }
        match self.duration {
            Some(d) if d.is_zero() => return bad("-z must be longer than 0s"),
            Some(_) => {}
            None if self.requests == 0 => return bad("-n must be at least 1"),
            None if self.requests < self.concurrency as u64 => {
                return bad("-n cannot be less than -c (each worker needs at least one request)")
            }
            None => {}
        }
        let rate = match self.rate {
            RateLimit::Unlimited => None,
            RateLimit::PerWorker { per_sec } | RateLimit::Global { per_sec } => Some(per_sec),
        };
        if let Some(r) = rate {
            if !(r.is_finite() && r > 0.0) {
                return bad("rate must be a positive number of requests per second");
            }
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be longer than 0");
        }
        if self.streams == 0 {
            return bad("-p must be at least 1");
        }
        if self.streams > 1 && !self.http2 {
            return bad(
                "-p (streams per connection) needs -h2: HTTP/1.1 carries one request at a time",
            );
        }
        if self.http2 && self.policy != ConnectionPolicy::KeepAlive {
            return bad(
                "-disable-keepalive / --connection close|drop cannot be combined with -h2: \
                        HTTP/2 keeps its connections (choose their number with -c)",
            );
        }
        if self.http2 && self.retries > 0 {
            return bad("--retry is not supported with -h2 yet");
        }
        Ok(())
    }
}

/// Parses an http(s) URL and resolves its host once.
fn parse_target(raw: &str) -> Result<Target, ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::MalformedUrl {
        url: raw.to_string(),
        reason: e.to_string(),
    })?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(ConfigError::UnsupportedScheme(other.to_string())),
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(ConfigError::MissingHost(raw.to_string())),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let resolved: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ConfigError::Resolve {
            host: host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let Some(&addr) = resolved.first() else {
        return Err(ConfigError::Resolve {
            host,
            reason: "no addresses".to_string(),
        });
    };
    let dial_order = rfc8305_order(&resolved);
    let addr = dial_order.first().copied().unwrap_or(addr);
    Ok(Target {
        url: raw.to_string(),
        tls,
        host,
        port,
        resolved,
        dial_order,
        addr,
        proxy: None,
    })
}

/// Interleaves address families, starting with the family of the first address, keeping the
/// resolver's order within each family (RFC 8305 §4: "the first address should be of the
/// preferred family, the second of the other, and so on"); duplicates dropped.
pub(crate) fn rfc8305_order(resolved: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(resolved.len());
    for a in resolved {
        if !unique.contains(a) {
            unique.push(*a);
        }
    }
    let Some(first) = unique.first() else {
        return unique;
    };
    let first_v4 = first.is_ipv4();
    let (mut preferred, mut other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        unique.iter().partition(|a| a.is_ipv4() == first_v4);
    preferred.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(unique.len());
    loop {
        match (preferred.pop(), other.pop()) {
            (None, None) => return out,
            (p, o) => out.extend(p.into_iter().chain(o)),
        }
    }
}

/// Parses `-x`: `http://HOST[:PORT]` (port 80 by default) or `HOST:PORT`, resolved once.
fn parse_proxy(raw: &str, tunnel: bool) -> Result<ProxyTarget, ConfigError> {
    let bad = || ConfigError::BadProxy(raw.to_string());
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|_| bad())?;
    if url.scheme() != "http" || !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(bad());
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(bad()),
    };
    let port = url.port().unwrap_or(80);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ConfigError::Resolve {
            host: host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ConfigError::Resolve {
            host: host.clone(),
            reason: "no addresses".to_string(),
        })?;
    Ok(ProxyTarget {
        url: raw.to_string(),
        host,
        port,
        addr,
        tunnel,
    })
}

/// The HTTP/2 request of a run.
fn h2_request(config: &LoadConfig, target: &Target, path: &str) -> Result<H2Request, ConfigError> {
    if target.proxy.as_ref().is_some_and(|p| !p.tunnel) {
        return Err(ConfigError::OutOfRange(
            "-h2 through -x needs an https:// target (a CONNECT tunnel); cleartext h2c cannot \
             go through an HTTP/1.1 proxy"
                .to_string(),
        ));
    }
    let bad = |what: String| ConfigError::BadHeader(what);
    let method = http::Method::from_bytes(config.method.as_bytes())
        .map_err(|_| ConfigError::BadMethod(config.method.clone()))?;
    let mut authority = target.authority();
    let default_port = if target.tls { 443 } else { 80 };
    if target.port == default_port {
        authority = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
    }
    let mut headers = http::HeaderMap::new();
    let mut has_user_agent = false;
    for (name, value) in &config.headers {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "host" => {
                authority = value.clone();
                continue;
            }
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => {
                continue
            }
            "user-agent" => has_user_agent = true,
            _ => {}
        }
        let n = http::HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| bad(format!("{name}: {value}")))?;
        let v = http::HeaderValue::from_str(value).map_err(|_| bad(format!("{name}: {value}")))?;
        headers.append(n, v);
    }
    if !has_user_agent {
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("portlab/", env!("CARGO_PKG_VERSION"))),
        );
    }
    if let Some(ct) = &config.content_type {
        if !headers.contains_key(http::header::CONTENT_TYPE) {
            let v =
                http::HeaderValue::from_str(ct).map_err(|_| bad(format!("Content-Type: {ct}")))?;
            headers.insert(http::header::CONTENT_TYPE, v);
        }
    }
    let scheme = if target.tls { "https" } else { "http" };
    let uri: http::Uri =
        format!("{scheme}://{authority}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| ConfigError::MalformedUrl {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
    Ok(H2Request {
        method,
        uri,
        headers,
        body: bytes::Bytes::from(config.body.clone()),
    })
}

fn request_path(raw: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::MalformedUrl {
        url: raw.to_string(),
        reason: e.to_string(),
    })?;
    let mut path = url.path().to_string();
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(path)
}

/// RFC 9110 §5.6.2 token: visible ASCII except delimiters.
fn check_token(s: &str) -> Result<(), ()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_in_json_as_on_the_command_line() {
        for p in [
            ConnectionPolicy::KeepAlive,
            ConnectionPolicy::ServerCloses,
            ConnectionPolicy::ClientCloses,
        ] {
            let json = serde_json::to_string(&p).expect("serialize");
            assert_eq!(json, format!("\"{}\"", p.name()));
            assert_eq!(
                serde_json::from_str::<ConnectionPolicy>(&json).ok(),
                Some(p)
            );
        }
    }

    fn cfg(url: &str) -> LoadConfig {
        LoadConfig {
            url: url.to_string(),
            requests: 10,
            concurrency: 2,
            ..Default::default()
        }
    }

    #[test]
    fn valid_http_url_builds_a_plan() {
        let plan = cfg("http://127.0.0.1:8080/a?b=1")
            .validate()
            .expect("valid");
        assert_eq!(plan.target.addr, "127.0.0.1:8080".parse().expect("addr"));
        let req = String::from_utf8(plan.request).expect("ascii");
        assert!(
            req.starts_with("GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn dial_order_interleaves_families_from_the_resolvers_first() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let got = rfc8305_order(&[
            a("[::1]:80"),
            a("[::2]:80"),
            a("[::3]:80"),
            a("10.0.0.1:80"),
            a("[::1]:80"),
            a("10.0.0.2:80"),
        ]);
        let want = [
            "[::1]:80",
            "10.0.0.1:80",
            "[::2]:80",
            "10.0.0.2:80",
            "[::3]:80",
        ];
        assert_eq!(got, want.map(a));
        assert_eq!(rfc8305_order(&[a("10.0.0.1:80")]), [a("10.0.0.1:80")]);
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert!(matches!(
            cfg("not a url").validate(),
            Err(ConfigError::MalformedUrl { .. })
        ));
        assert!(matches!(
            cfg("ftp://127.0.0.1/").validate(),
            Err(ConfigError::UnsupportedScheme(_))
        ));
        let mut c = cfg("http://127.0.0.1/");
        c.headers.push(("Bad Name".into(), "x".into()));
        assert!(matches!(c.validate(), Err(ConfigError::BadHeader(_))));
        let mut c = cfg("http://127.0.0.1/");
        c.concurrency = 0;
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange(_))));
        let mut c = cfg("http://127.0.0.1/");
        c.concurrency = 20;
        assert!(matches!(c.validate(), Err(ConfigError::OutOfRange(_))));
        assert!(matches!(
            cfg("http://no-such-host.invalid/").validate(),
            Err(ConfigError::Resolve { .. })
        ));
    }
}
