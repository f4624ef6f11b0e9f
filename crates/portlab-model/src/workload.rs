//! Workloads: how a client opens, uses and closes connections (closed loop with `-c` workers
//! or open loop at a fixed rate), where it connects, and when it stops.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::ModelError;

/// Who closes a connection, which decides who holds the TIME_WAIT.
///
/// Only the side that sends the first FIN enters TIME_WAIT (RFC 9293 state machine;
/// research §3.1, experiment D3).
///
/// Serialized with the CLI names of `portlab load --connection`: `keep-alive`, `close`, `drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnectionPolicy {
    /// One connection per worker (or per idle slot), reused for every request.
    #[serde(rename = "keep-alive")]
    KeepAlive,
    /// `Connection: close`: the server closes first, TIME_WAIT lands on the server and the
    /// client's port is free as soon as the connection ends.
    #[serde(rename = "close")]
    ServerCloses,
    /// The client drops the connection after each response: the client holds TIME_WAIT.
    #[serde(rename = "drop")]
    ClientCloses,
}

impl ConnectionPolicy {
    /// The CLI name, as `portlab load --connection` spells it: `keep-alive`, `close`, `drop`.
    pub fn cli_name(self) -> &'static str {
        match self {
            Self::KeepAlive => "keep-alive",
            Self::ServerCloses => "close",
            Self::ClientCloses => "drop",
        }
    }
}

impl fmt::Display for ConnectionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl std::str::FromStr for ConnectionPolicy {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep-alive" | "keepalive" => Ok(Self::KeepAlive),
            "close" | "server-closes" => Ok(Self::ServerCloses),
            "drop" | "client-closes" => Ok(Self::ClientCloses),
            other => Err(ModelError::UnknownPolicy(other.to_string())),
        }
    }
}

/// Distribution of the time one request holds its connection (connect to response).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Latency {
    /// Always the same.
    Fixed {
        /// Request time in microseconds.
        us: u64,
    },
    /// Uniform between two bounds (inclusive).
    Uniform {
        /// Lower bound, microseconds.
        min_us: u64,
        /// Upper bound, microseconds.
        max_us: u64,
    },
    /// Exponential with the given mean (memoryless service times).
    Exponential {
        /// Mean, microseconds.
        mean_us: u64,
    },
}

impl Latency {
    /// A fixed latency.
    pub fn fixed(d: Duration) -> Self {
        Self::Fixed { us: duration_us(d) }
    }

    /// Mean of the distribution.
    pub fn mean(&self) -> Duration {
        Duration::from_micros(match *self {
            Self::Fixed { us } => us,
            Self::Uniform { min_us, max_us } => (min_us + max_us) / 2,
            Self::Exponential { mean_us } => mean_us,
        })
    }

    /// Smallest value the distribution yields.
    pub fn min(&self) -> Duration {
        Duration::from_micros(match *self {
            Self::Fixed { us } => us,
            Self::Uniform { min_us, .. } => min_us,
            Self::Exponential { .. } => 0,
        })
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        match *self {
            Self::Fixed { us } => write!(f, "{} ms", ms(us)),
            Self::Uniform { min_us, max_us } => {
                write!(f, "uniform {}..{} ms", ms(min_us), ms(max_us))
            }
            Self::Exponential { mean_us } => write!(f, "exponential, mean {} ms", ms(mean_us)),
        }
    }
}

/// Closed loop (a fixed number of workers, each waiting for its response) or open loop
/// (arrivals at a rate, whatever the responses do).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LoadShape {
    /// `-c` workers; each starts its next request as soon as the previous one ends.
    Closed {
        /// Number of workers.
        concurrency: u32,
    },
    /// New requests arrive at `rate_per_sec`, evenly spaced or as a Poisson process.
    Open {
        /// Mean arrival rate, requests per second.
        rate_per_sec: f64,
        /// Exponential inter-arrival times (seeded) instead of even spacing.
        poisson: bool,
    },
}

/// Retries after a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries per request after the first attempt (0 = no retry).
    pub retries: u32,
    /// Wait before retry k (k = 1, 2, …) is `backoff × 2^(k−1)`; zero retries at once.
    #[serde(rename = "backoff_ms", serialize_with = "crate::serde_millis")]
    pub backoff: Duration,
}

impl RetryPolicy {
    /// No retries.
    pub const NONE: Self = Self {
        retries: 0,
        backoff: Duration::ZERO,
    };

    /// The wait before retry number `k` (1-based), doubling from `backoff`, capped at 2^20×.
    pub fn backoff_before(&self, k: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << k.saturating_sub(1).min(20))
    }
}

/// When a run stops: after a number of attempts, after a duration, or whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunLimit {
    /// Stop starting attempts after this many (first tries and retries each count once).
    pub max_attempts: Option<u64>,
    /// Stop starting attempts at this simulated time.
    #[serde(rename = "duration_secs", serialize_with = "crate::serde_opt_secs")]
    pub duration: Option<Duration>,
}

/// A client workload for [`crate::capacity`] and [`crate::simulate`].
///
/// Requests spread over `source_ips × destinations` (source IP, destination) pairs round
/// robin: closed-loop worker `w` (open-loop request `k`) uses destination `w % destinations`
/// and source IP `(w / destinations) % source_ips`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    /// Closed or open loop.
    pub shape: LoadShape,
    /// Request time distribution (how long a connection is busy per request).
    pub latency: Latency,
    /// Keep-alive, server closes, or client closes.
    pub policy: ConnectionPolicy,
    /// Distinct destinations (IP, port).
    pub destinations: u32,
    /// Distinct source IPs of the client.
    pub source_ips: u32,
    /// Destinations are on loopback (decides `tcp_tw_reuse = 2`).
    pub loopback: bool,
    /// Retries after EADDRNOTAVAIL.
    pub retry: RetryPolicy,
    /// Time a failed `connect()` takes before the worker can go on; `None` uses
    /// [`failed_connect_estimate`] for the pool size. The kernel returns EADDRNOTAVAIL
    /// synchronously after scanning the whole range (research §1.5, §1.6), so the cost grows
    /// with the range.
    #[serde(
        rename = "failed_connect_us",
        serialize_with = "crate::serde_opt_micros"
    )]
    pub failed_connect: Option<Duration>,
    /// When to stop.
    pub limit: RunLimit,
}

impl Workload {
    /// A closed-loop workload with one destination, one source IP, no retries.
    pub fn closed(concurrency: u32, latency: Latency, policy: ConnectionPolicy) -> Self {
        Self {
            shape: LoadShape::Closed { concurrency },
            latency,
            policy,
            destinations: 1,
            source_ips: 1,
            loopback: false,
            retry: RetryPolicy::NONE,
            failed_connect: None,
            limit: RunLimit {
                max_attempts: None,
                duration: None,
            },
        }
    }

    /// An open-loop workload at `rate_per_sec`, evenly spaced, one destination, one source IP.
    pub fn open(rate_per_sec: f64, latency: Latency, policy: ConnectionPolicy) -> Self {
        Self {
            shape: LoadShape::Open {
                rate_per_sec,
                poisson: false,
            },
            ..Self::closed(1, latency, policy)
        }
    }

    /// Sets the attempt limit (`-n`).
    pub fn with_max_attempts(mut self, n: u64) -> Self {
        self.limit.max_attempts = Some(n);
        self
    }

    /// Sets the duration limit.
    pub fn with_duration(mut self, d: Duration) -> Self {
        self.limit.duration = Some(d);
        self
    }

    /// Checks the workload once, at the edge, so the simulator never re-checks. The run limit
    /// is checked by [`crate::simulate`] (the capacity arithmetic needs none).
    ///
    /// # Errors
    /// [`ModelError::InvalidWorkload`] naming the field that is wrong.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: &str| Err(ModelError::InvalidWorkload(msg.to_string()));
        match self.shape {
            LoadShape::Closed { concurrency: 0 } => {
                return bad("concurrency must be at least 1");
            }
            LoadShape::Closed { concurrency } if concurrency > 10_000_000 => {
                return bad("concurrency above 10,000,000 workers is not supported");
            }
            LoadShape::Open { rate_per_sec, .. }
                if !(rate_per_sec.is_finite() && rate_per_sec > 0.0 && rate_per_sec <= 1e9) =>
            {
                return bad("rate must be a number of requests per second in (0, 1e9]");
            }
            _ => {}
        }
        if let Latency::Uniform { min_us, max_us } = self.latency {
            if min_us > max_us {
                return bad("latency range must have min <= max");
            }
        }
        if self.latency.mean().is_zero() {
            return bad("latency must be above zero (a request takes some time)");
        }
        if self.destinations == 0 || self.source_ips == 0 {
            return bad("destinations and source IPs must be at least 1");
        }
        if u64::from(self.destinations) * u64::from(self.source_ips) > 1_000_000 {
            return bad("source IPs x destinations above 1,000,000 pairs is not supported");
        }
        if self.failed_connect.is_some_and(|d| d.is_zero()) {
            return bad("a failed connect must take some time (failed_connect > 0)");
        }
        if self
            .limit
            .duration
            .is_some_and(|d| d > Duration::from_secs(7 * 86_400))
        {
            return bad("duration above 7 days is not supported");
        }
        Ok(())
    }

    /// The cost of a failed connect for a pool of `ports_per_pool` ports: the given one, else
    /// [`failed_connect_estimate`].
    pub fn failed_connect_for(&self, ports_per_pool: u32) -> Duration {
        self.failed_connect
            .unwrap_or_else(|| failed_connect_estimate(ports_per_pool))
    }

    /// Number of (source IP, destination) pairs.
    pub fn pairs(&self) -> u32 {
        self.destinations.max(1) * self.source_ips.max(1)
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Estimated time of one failed `connect()` (socket, connect, close) when every port of a pool
/// of `ports_per_pool` ports is in TIME_WAIT: 10 µs + 0.12 µs per port.
///
/// Measured on Linux 6.18 in a private network namespace, loopback, `tcp_tw_reuse = 0`, one
/// client thread (python3, which adds ≈ 7 µs per socket): 133 µs at 1,000 ports with every
/// port in TIME_WAIT; with the pool held by open connections instead 34 µs at 500, 58 µs at
/// 1,000 and 216 µs at 4,000 ports. The cost is the linear scan in
/// net/ipv4/inet_hashtables.c `__inet_hash_connect()` over both parity halves; concurrent
/// failing clients contend on the bind-hash locks and take longer (2.1 ms at 4,000 ports with
/// 8 threads on 2 cores). For the default Linux range this gives ≈ 3.4 ms, in line with the
/// 2–8 ms connect() times reported at 20,000 of 28,232 ports (research §1.6).
pub fn failed_connect_estimate(ports_per_pool: u32) -> Duration {
    Duration::from_nanos(10_000 + 120 * u64::from(ports_per_pool))
}
