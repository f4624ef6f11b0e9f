//! What to run: [`LoadConfig`] as built from the command line, checked once by
//! [`LoadConfig::validate`] into a [`Plan`] (URL parsed, host resolved, request bytes built) so
//! the engine never re-checks.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

use crate::http::build_request;

/// Who closes the TCP connection, which decides on which side TIME_WAIT lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionPolicy {
    /// Keep-alive (`keep-alive`): up to `concurrency` connections, each reused for many requests.
    #[default]
    KeepAlive,
    /// `close`: every request carries `Connection: close`; the client waits for the server's FIN
    /// before closing, so the server is the active closer and holds TIME_WAIT (hey's
    /// `--disable-keepalive`).
    ServerCloses,
    /// `drop`: the client closes the connection itself right after each response (a plain
    /// close(), no RST), so TIME_WAIT lands on the client: the pattern that exhausts ephemeral
    /// ports (RFC 9293 §3.6: the side that closes first enters TIME-WAIT).
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
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
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
    /// The address connections go to: the first resolved one.
    pub addr: SocketAddr,
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
        let target = parse_target(&self.url)?;
        for ip in &self.source_ips {
            if ip.is_ipv4() != target.addr.is_ipv4() {
                return Err(ConfigError::SourceFamily {
                    source_ip: *ip,
                    target: target.addr,
                });
            }
        }
        let path = request_path(&self.url)?;
        let head_request = self.method.eq_ignore_ascii_case("HEAD");
        let request = build_request(&self, &target, &path);
        let threads = self.threads.min(self.concurrency).max(1);
        Ok(Plan {
            config: self,
            target,
            request,
            head_request,
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
    Ok(Target {
        url: raw.to_string(),
        tls,
        host,
        port,
        resolved,
        addr,
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
