//! [`LoadReport`]: the plain-data result of a run (Serialize; field names are stable and
//! documented in `docs/load-report.schema.json`). Built from the merged per-thread statistics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{ConnectionPolicy, Plan, RateLimit};
use crate::error::{ErrorClass, Phase, Side};
use crate::stats::{ErrorCounts, SecondBucket, Stats};

/// Version of the JSON layout; bumped on any incompatible change. 2 added
/// `started_at_unix_secs` (and, in the binary, `agent` and `merge`) so reports of many agents
/// merge without loss.
pub const SCHEMA_VERSION: u32 = 2;

/// The result of a load run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Layout version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Wall-clock time the run started, seconds since the UNIX epoch (µs precision): what
    /// aligns the timelines of agents when their reports are merged. 0 in version-1 reports.
    #[serde(default)]
    pub started_at_unix_secs: f64,
    /// Where the requests went.
    pub target: TargetReport,
    /// The settings the run used.
    pub settings: SettingsReport,
    /// Counts and rates.
    pub summary: Summary,
    /// Latency of successful requests.
    pub latency: LatencyReport,
    /// Responses by HTTP status code (all complete responses, whatever the code).
    pub status_codes: BTreeMap<u16, u64>,
    /// Connections opened, reused and closed.
    pub connections: ConnectionReport,
    /// Requests that finally failed (after any retries), by class; largest count first.
    pub errors: Vec<ErrorEntry>,
    /// Retries, reported apart from first attempts.
    pub retries: RetryReport,
    /// The circuit breaker's settings and what it did (absent without `--circuit-breaker`).
    #[serde(default)]
    pub circuit_breaker: Option<BreakerReport>,
    /// One entry per second of the run, from second 0.
    pub timeline: Vec<TimelineSecond>,
    /// `-x`: the HTTP proxy every connection went to (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyReport>,
}

/// The HTTP proxy of a run (`-x`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyReport {
    /// The proxy as given.
    pub url: String,
    /// The proxy's address (every TCP connection went there).
    pub address: SocketAddr,
    /// `true`: each connection opened a `CONNECT` tunnel (https target); `false`: requests
    /// carried the absolute URL (http target).
    pub tunnel: bool,
    /// CONNECT answers that refused a tunnel, by status code (0: not an HTTP answer); each is
    /// a `ProxyRefused` failure in `errors`.
    pub refused_by_status: BTreeMap<u16, u64>,
}

/// The target as resolved once before the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    /// URL as given.
    pub url: String,
    /// HTTP method.
    pub method: String,
    /// Every address the host resolved to.
    pub resolved: Vec<SocketAddr>,
    /// The address most connections went to: the first in dial order unless connects to it
    /// failed over to another, or the proxy's with `-x`.
    pub connected_to: SocketAddr,
    /// Every address connects tried, in dial order (RFC 8305 §4 with `--source-ip` families
    /// only; the proxy alone with `-x`), with what happened there.
    #[serde(default)]
    pub addresses: Vec<AddressReport>,
}

/// TCP connect outcomes towards one address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddressReport {
    /// IP:port.
    pub address: SocketAddr,
    /// Successful TCP connects.
    pub connects: u64,
    /// Failed TCP connects by class (a failure followed by a successful fallback to the next
    /// address counts here, not as a failed request).
    pub failures: BTreeMap<ErrorClass, u64>,
}

/// Settings of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsReport {
    /// `-n` (absent in duration mode).
    pub requests: Option<u64>,
    /// `-z` in seconds (absent in count mode).
    pub duration_secs: Option<f64>,
    /// `-c`.
    pub concurrency: usize,
    /// Engine threads.
    pub threads: usize,
    /// Connection policy.
    pub connection: ConnectionPolicy,
    /// Pacing.
    pub rate: RateLimit,
    /// `-t` in milliseconds.
    pub request_timeout_ms: u64,
    /// `--connect-timeout` in milliseconds.
    pub connect_timeout_ms: u64,
    /// `--source-ip` addresses.
    pub source_ips: Vec<std::net::IpAddr>,
    /// `--retry`.
    pub retries: u32,
    /// `--backoff` in milliseconds.
    pub backoff_ms: u64,
    /// HTTP version spoken: `"1.1"`, or `"2"` with `-h2`.
    #[serde(default = "http_1_1")]
    pub http_version: String,
    /// Requests in flight per connection: `-p` with `-h2` (HTTP/2 streams), 1 for HTTP/1.1.
    #[serde(default = "one_stream")]
    pub streams_per_connection: usize,
    /// Engine that ran: `"uring"` (io_uring) or `"tokio"`.
    #[serde(default = "tokio_engine")]
    pub engine: String,
    /// Why the tokio engine ran although io_uring was asked for or automatic (`"TLS"`,
    /// `"HTTP/2"`, `"an HTTP proxy"`, or the ring set-up error); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_fallback: Option<String>,
}

fn tokio_engine() -> String {
    "tokio".to_string()
}

/// The circuit breaker of a run (one per engine thread, counters summed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerReport {
    /// Its knobs.
    pub settings: crate::breaker::BreakerConfig,
    /// Attempts allowed, probes, attempts short-circuited, times opened and closed again.
    /// `short_circuited` here counts refused attempts; `summary.short_circuited` the requests
    /// that ended refused (a retry refused after a failed first try ends its request too).
    pub counters: crate::breaker::BreakerCounters,
}

/// Counts and rates. Accounting:
/// `requests = succeeded + failed + short_circuited + cancelled_at_deadline`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Requests started (each counted once, whatever its number of attempts).
    pub requests: u64,
    /// Requests that got a complete HTTP response (any status code).
    pub succeeded: u64,
    /// Requests whose last attempt failed; see `errors`.
    pub failed: u64,
    /// Duration mode only: requests in flight when the deadline came, abandoned uncounted in
    /// latency (neither success nor failure).
    pub cancelled_at_deadline: u64,
    /// Requests the circuit breaker refused without a network attempt (`--circuit-breaker`).
    #[serde(default)]
    pub short_circuited: u64,
    /// Responses with status 400 or above (included in `succeeded`).
    pub non_success_status: u64,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
    /// `succeeded / elapsed_secs`.
    pub requests_per_sec: f64,
    /// Response body bytes received.
    pub body_bytes: u64,
}

/// Latency percentiles and histogram (µs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Requests measured (successful ones).
    pub count: u64,
    /// Fastest.
    pub min_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p99_9_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Ten equal-width buckets between fastest and slowest (as hey prints).
    pub buckets: Vec<HistogramBucket>,
    /// `true` when latency was measured from the intended send time (`--rate`).
    pub corrected_for_coordinated_omission: bool,
    /// The full HDR histogram: V2 + DEFLATE encoding, base64 (the HdrHistogram log format),
    /// so runs can be merged later.
    pub hdr_histogram: String,
}

/// One bucket of the latency histogram.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// Upper bound of the bucket, µs (inclusive).
    pub upper_us: u64,
    /// Requests in the bucket.
    pub count: u64,
}

/// Connection statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// Successful connects.
    pub opened: u64,
    /// Failed connects (counted in `errors` with phase `connect`).
    pub connect_failures: u64,
    /// Successful connects that took 1 s or more (SYN retransmitted: the listener dropped it).
    pub slow_connects: u64,
    /// `opened / elapsed_secs`.
    pub new_per_sec: f64,
    /// Request attempts sent on a fresh connection.
    pub requests_on_new: u64,
    /// Request attempts sent on a reused (kept-alive) connection.
    pub requests_on_reused: u64,
    /// `requests_on_reused / (requests_on_new + requests_on_reused)`.
    pub reuse_ratio: f64,
    /// Connections the server closed (Connection: close, close-delimited body, or waited-for FIN).
    pub closed_by_server: u64,
    /// Connections the client closed first after a response (`--connection drop`).
    pub closed_by_client: u64,
    /// Connect latency of successful connects (TCP, plus TLS for https), µs.
    pub connect_latency: Percentiles,
    /// Connect-latency HDR histogram (V2 + DEFLATE, base64).
    pub connect_hdr_histogram: String,
}

/// A compact percentile set, µs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th.
    pub p90_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// Failures of one class. Deserialized by class name (`merge::ErrorEntryWire`), with
/// `meaning` and `side` re-derived from the class.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    /// Class name (`AddrNotAvailable`, ..., `Other`).
    pub class: ErrorClass,
    /// errno number when one stands for the class (`Other` keeps its own).
    pub errno: Option<i32>,
    /// Symbolic errno name(s) or a tag (`EADDRNOTAVAIL`, `http`, `tls`).
    pub errno_name: String,
    /// Plain-language meaning.
    pub meaning: &'static str,
    /// Local, remote, proxy (`-x`) or unknown side.
    pub side: Side,
    /// Failures of this class.
    pub count: u64,
    /// When this class first happened, ms since the start of the run (µs precision).
    pub first_at_ms: Option<f64>,
    /// Split of `count` by phase (`connect`, `write`, `read`); phases with 0 are omitted.
    pub by_phase: BTreeMap<Phase, u64>,
}

/// Retries (`--retry`), apart from first attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryReport {
    /// Attempts after the first, over all requests.
    pub attempts: u64,
    /// Requests that succeeded on a retry.
    pub succeeded: u64,
    /// Failed attempts that were retried, by class.
    pub retried_errors: Vec<ErrorEntry>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineSecond {
    /// Seconds since start.
    pub second: u64,
    /// Requests completed successfully in this second.
    pub succeeded: u64,
    /// Requests failed in this second.
    pub failed: u64,
    /// Connections opened in this second.
    pub new_connections: u64,
    /// 99th-percentile latency of this second's successes, µs (2 significant digits).
    pub p99_us: u64,
    /// Failures of this second by class (absent when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
}

impl TimelineSecond {
    pub(crate) fn from_bucket(b: &SecondBucket) -> Self {
        let p99_us = if b.latency.is_empty() {
            0
        } else {
            b.latency.value_at_quantile(0.99)
        };
        Self {
            second: b.second,
            succeeded: b.succeeded,
            failed: b.failed,
            new_connections: b.new_connections,
            p99_us,
            errors: b.errors.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
        }
    }
}

/// Builds the report from merged statistics.
pub(crate) fn build(
    plan: &Plan,
    stats: &Stats,
    started_at: SystemTime,
    elapsed: Duration,
    timeline: Vec<TimelineSecond>,
) -> LoadReport {
    let c = &plan.config;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let status_codes: BTreeMap<u16, u64> = stats
        .status
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| (code as u16, *n))
        .collect();
    let non_success_status = status_codes
        .iter()
        .filter(|(code, _)| **code >= 400 || **code == 0)
        .map(|(_, n)| n)
        .sum();
    let connect_failures = stats
        .errors
        .iter()
        .chain(stats.retried_errors.iter())
        .map(|(_, by_phase)| by_phase[Phase::Connect.index()])
        .sum();
    let sent = stats.requests_on_new_connection + stats.requests_on_reused_connection;
    let proxied = plan.target.proxy.is_some();
    LoadReport {
        schema_version: SCHEMA_VERSION,
        started_at_unix_secs: started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        target: TargetReport {
            url: plan.target.url.clone(),
            method: c.method.clone(),
            resolved: plan.target.resolved.clone(),
            connected_to: busiest(plan, stats),
            addresses: plan
                .target
                .candidates()
                .iter()
                .enumerate()
                .map(|(i, &address)| {
                    let counts = stats.per_address.get(i);
                    AddressReport {
                        address,
                        connects: counts.map_or(0, |c| c.connects),
                        failures: counts.map(|c| c.failures.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
        },
        settings: SettingsReport {
            requests: c.duration.is_none().then_some(c.requests),
            duration_secs: c.duration.map(|d| d.as_secs_f64()),
            concurrency: c.concurrency,
            threads: plan.threads,
            connection: c.policy,
            rate: c.rate,
            request_timeout_ms: c.request_timeout.as_millis() as u64,
            connect_timeout_ms: c.connect_timeout.as_millis() as u64,
            source_ips: c.source_ips.clone(),
            retries: c.retries,
            backoff_ms: c.backoff.as_millis() as u64,
            http_version: if c.http2 { "2" } else { "1.1" }.to_string(),
            streams_per_connection: if c.http2 { c.streams } else { 1 },
            engine: tokio_engine(),
            engine_fallback: None,
        },
        summary: Summary {
            requests: stats.succeeded
                + stats.failed
                + stats.short_circuited
                + stats.cancelled_at_deadline,
            succeeded: stats.succeeded,
            failed: stats.failed,
            cancelled_at_deadline: stats.cancelled_at_deadline,
            short_circuited: stats.short_circuited,
            non_success_status,
            elapsed_secs: secs,
            requests_per_sec: stats.succeeded as f64 / secs,
            body_bytes: stats.body_bytes,
        },
        latency: latency_report(&stats.latency, matches!(c.rate, RateLimit::Global { .. })),
        status_codes,
        connections: ConnectionReport {
            opened: stats.connections_opened,
            connect_failures,
            slow_connects: stats.slow_connects,
            new_per_sec: stats.connections_opened as f64 / secs,
            requests_on_new: stats.requests_on_new_connection,
            requests_on_reused: stats.requests_on_reused_connection,
            reuse_ratio: if sent == 0 {
                0.0
            } else {
                stats.requests_on_reused_connection as f64 / sent as f64
            },
            closed_by_server: stats.closed_by_server,
            closed_by_client: stats.closed_by_client,
            connect_latency: percentiles(&stats.connect),
            connect_hdr_histogram: encode_histogram(&stats.connect),
        },
        errors: error_entries(&stats.errors, proxied),
        retries: RetryReport {
            attempts: stats.retry_attempts,
            succeeded: stats.retry_succeeded,
            retried_errors: error_entries(&stats.retried_errors, proxied),
        },
        circuit_breaker: c.circuit_breaker.map(|settings| BreakerReport {
            settings,
            counters: stats.breaker,
        }),
        timeline,
        proxy: plan.target.proxy.as_ref().map(|p| ProxyReport {
            url: p.url.clone(),
            address: p.addr,
            tunnel: p.tunnel,
            refused_by_status: stats.proxy_refused_status.clone(),
        }),
    }
}

/// The candidate most connects went to (the first on a tie or with none).
fn busiest(plan: &Plan, stats: &Stats) -> SocketAddr {
    let candidates = plan.target.candidates();
    let mut best = 0;
    for (i, c) in stats.per_address.iter().enumerate() {
        if i < candidates.len() && c.connects > stats.per_address[best].connects {
            best = i;
        }
    }
    candidates
        .get(best)
        .copied()
        .unwrap_or(plan.target.dial_addr())
}

pub(crate) fn latency_report(h: &Histogram<u64>, corrected: bool) -> LatencyReport {
    let empty = h.is_empty();
    let q = |quantile: f64| {
        if empty {
            0
        } else {
            h.value_at_quantile(quantile)
        }
    };
    LatencyReport {
        count: h.len(),
        min_us: if empty { 0 } else { h.min() },
        mean_us: if empty { 0.0 } else { h.mean() },
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p99_9_us: q(0.999),
        max_us: if empty { 0 } else { h.max() },
        buckets: linear_buckets(h),
        corrected_for_coordinated_omission: corrected,
        hdr_histogram: encode_histogram(h),
    }
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let empty = h.is_empty();
    let q = |quantile: f64| {
        if empty {
            0
        } else {
            h.value_at_quantile(quantile)
        }
    };
    Percentiles {
        count: h.len(),
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        max_us: if empty { 0 } else { h.max() },
    }
}

/// Ten equal-width buckets from min to max; counts come from the HDR histogram, so a bucket
/// edge is exact to 3 significant digits.
fn linear_buckets(h: &Histogram<u64>) -> Vec<HistogramBucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = (h.min(), h.max());
    let width = ((hi - lo) / 10).max(1);
    let mut out = Vec::with_capacity(10);
    let mut low = lo;
    for i in 0..10 {
        let upper = if i == 9 {
            hi
        } else {
            (lo + width * (i + 1)).min(hi)
        };
        if upper < low {
            break;
        }
        let count = h.count_between(low, upper);
        out.push(HistogramBucket {
            upper_us: upper,
            count,
        });
        low = h.next_non_equivalent(upper);
        if upper == hi {
            break;
        }
    }
    out
}

pub(crate) fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(&bytes),
        Err(_) => String::new(),
    }
}

/// Entries by class. With a proxy (`proxied`) the peer of every connection is the proxy, so
/// failures that point away from this host point at the proxy — except TLS, which runs end to
/// end through the tunnel.
fn error_entries(errors: &ErrorCounts, proxied: bool) -> Vec<ErrorEntry> {
    let side = |class: ErrorClass| match class.side() {
        Side::Remote | Side::Unknown if proxied && class != ErrorClass::Tls => Side::Proxy,
        other => other,
    };
    let mut out: Vec<ErrorEntry> = errors
        .iter()
        .map(|(class, by_phase)| ErrorEntry {
            class,
            errno: class.errno(),
            errno_name: class.errno_name(),
            meaning: class.meaning(),
            side: side(class),
            count: by_phase.iter().sum(),
            first_at_ms: errors.first_us(class).map(|us| us as f64 / 1000.0),
            by_phase: Phase::ALL
                .iter()
                .filter(|p| by_phase[p.index()] > 0)
                .map(|p| (*p, by_phase[p.index()]))
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
    out
}

/// `settings.http_version` of a report written before HTTP/2 existed.
fn http_1_1() -> String {
    "1.1".to_string()
}

/// `settings.streams_per_connection` of a report written before HTTP/2 existed.
fn one_stream() -> usize {
    1
}
