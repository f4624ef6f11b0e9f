//! The evidence a diagnosis reads: plain data filled by the caller from a load run
//! (`portlab load`), the sampler, the settings and the counters — or from a host alone
//! (`portlab doctor`).

use std::net::SocketAddr;

use portlab_sockets::{Counters, PortPoolSettings, Snapshot};
use serde::Serialize;

/// Who closes connections in the run, which decides where TIME_WAIT lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Connections reused (keep-alive).
    KeepAlive,
    /// `Connection: close`: the server closes first, TIME_WAIT lands on the server.
    ServerCloses,
    /// The client closes after each response: TIME_WAIT lands on the client.
    ClientCloses,
}

/// Failures of a run by class (the load engine's `ErrorClass`), each counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    /// EADDRNOTAVAIL: no free local port for the destination.
    pub addr_not_available: u64,
    /// EADDRINUSE: bind() found no free port (bind-before-connect) or the port is taken.
    pub addr_in_use: u64,
    /// ECONNREFUSED.
    pub connection_refused: u64,
    /// ECONNRESET / EPIPE.
    pub connection_reset: u64,
    /// connect() did not finish within the connect timeout.
    pub connect_timeout: u64,
    /// No complete response within the request timeout.
    pub response_timeout: u64,
    /// EMFILE / ENFILE.
    pub too_many_open_files: u64,
    /// ENOBUFS.
    pub no_buffer_space: u64,
    /// ENETUNREACH / EHOSTUNREACH.
    pub unreachable: u64,
    /// Malformed or truncated HTTP.
    pub protocol: u64,
    /// TLS handshake or record errors.
    pub tls: u64,
    /// Anything else.
    pub other: u64,
}

impl FailureCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.addr_not_available
            + self.addr_in_use
            + self.connection_refused
            + self.connection_reset
            + self.connect_timeout
            + self.response_timeout
            + self.too_many_open_files
            + self.no_buffer_space
            + self.unreachable
            + self.protocol
            + self.tls
            + self.other
    }

    /// Failures that mean the server (or a hop) refused, reset, timed out or spoke nonsense.
    pub fn server_side(&self) -> u64 {
        self.connection_refused + self.connection_reset + self.response_timeout + self.protocol
    }
}

/// What a load run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvidence {
    /// The first target address.
    pub destination: Option<SocketAddr>,
    /// Connection policy of the run.
    pub policy: Policy,
    /// Concurrency (-c).
    pub concurrency: u64,
    /// Source IPs used (1 without --source-ip).
    pub source_ips: u64,
    /// Requests attempted (first attempts; each counted once).
    pub attempts: u64,
    /// Requests that succeeded.
    pub successes: u64,
    /// Failures by class.
    pub failures: FailureCounts,
    /// Time of the first failure of any class since the start, ms.
    pub first_failure_ms: Option<u64>,
    /// Time of the first EADDRNOTAVAIL since the start, ms.
    pub first_addr_not_available_ms: Option<u64>,
    /// Wall time of the run, ms.
    pub duration_ms: u64,
    /// TCP connections opened (successful connects).
    pub connections_opened: u64,
    /// Connects that took 1 s or more (a SYN was retransmitted: the listener dropped it).
    pub slow_connects: u64,
    /// 99th percentile of successful connect() latency, ms, where measured.
    pub connect_p99_ms: Option<f64>,
}

impl RunEvidence {
    /// New connections per second over the run.
    pub fn connections_per_sec(&self) -> f64 {
        per_sec(self.connections_opened, self.duration_ms)
    }

    /// Steady-state churn: connections opened beyond the first `concurrency` (which a
    /// keep-alive pool opens once) per second.
    pub fn reconnects_per_sec(&self) -> f64 {
        per_sec(
            self.connections_opened.saturating_sub(self.concurrency),
            self.duration_ms,
        )
    }

    /// Connection attempts per second (opened plus those that failed before connecting).
    pub fn connect_attempts_per_sec(&self) -> f64 {
        let failed_connects = self.failures.addr_not_available
            + self.failures.addr_in_use
            + self.failures.connection_refused
            + self.failures.connect_timeout
            + self.failures.too_many_open_files
            + self.failures.no_buffer_space
            + self.failures.unreachable;
        per_sec(self.connections_opened + failed_connects, self.duration_ms)
    }
}

fn per_sec(count: u64, duration_ms: u64) -> f64 {
    if duration_ms == 0 {
        0.0
    } else {
        count as f64 * 1000.0 / duration_ms as f64
    }
}

/// What the sampler saw of the pool towards the destination during the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolEvidence {
    /// Usable ports of one pool (range less reserved ports).
    pub pool_size: u64,
    /// Peak TIME_WAIT sockets to the destination(s).
    pub peak_time_wait: u64,
    /// Peak ports in use in the fullest (local IP, destination) pool.
    pub peak_ports_in_use: u64,
    /// When the fullest pool first reached `pool_size`, ms since the start.
    pub pool_full_at_ms: Option<u64>,
}

/// Everything a diagnosis may read. Fill what you have; the rules use what is there.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// The port-pool settings of the namespace the client ran in.
    pub settings: PortPoolSettings,
    /// Whether the destination is loopback (where `tcp_tw_reuse=2` applies).
    pub loopback: bool,
    /// A load run, if there was one.
    pub run: Option<RunEvidence>,
    /// The sampler's view of the pool during the run.
    pub pool: Option<PoolEvidence>,
    /// Counter increase over the run (or over the doctor's sampling interval).
    pub counters_delta: Option<Counters>,
    /// Length of the interval `counters_delta` covers, ms.
    pub counters_interval_ms: u64,
    /// A snapshot of the host's sockets (doctor).
    pub snapshot: Option<Snapshot>,
}

impl Evidence {
    /// Sustainable new connections/s for one pool when the client closes first.
    pub fn sustainable_rate_per_sec(&self) -> f64 {
        self.settings.sustainable_rate_per_sec(self.loopback)
    }

    /// How long a closed connection blocks its port, ms.
    pub fn port_block_ms(&self) -> u32 {
        self.settings.time_wait_block_ms(self.loopback)
    }
}
