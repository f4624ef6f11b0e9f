//! One reading of a host (of the caller's network namespace): settings, the socket table grouped
//! into pools, the TCP counters — and the diagnosis' evidence built from one or two readings.

use std::net::SocketAddr;
use std::time::Instant;

use portlab_diagnose::Evidence;
use portlab_sockets::{
    Counters, CountersError, PortPoolSettings, SettingsError, Snapshot, SnapshotOptions,
    SockDiagError, TableChoice,
};

/// What to read: an optional destination filter and the table interface.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Keep only the pools towards this destination (state counts stay host-wide).
    pub destination: Option<SocketAddr>,
    /// NETLINK_SOCK_DIAG (with the /proc fallback when it is absent) or /proc/net/tcp.
    pub table: TableChoice,
}

/// Why a reading failed; each names the view that could not be read. The display text is one
/// line including the cause (the binary prints it, the exporter answers it with a 500).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `/proc/sys/net/...` could not be read or parsed.
    #[error("reading the port-pool settings: {0}")]
    Settings(SettingsError),
    /// The socket table could not be read (NETLINK_SOCK_DIAG denied, /proc fallback failed).
    #[error("reading the TCP socket table: {0}")]
    Table(SockDiagError),
    /// `/proc/net/netstat` or `/proc/net/snmp` could not be read or parsed.
    #[error("reading the TCP counters: {0}")]
    Counters(CountersError),
}

/// One reading of settings, socket table and counters, taken in that order.
#[derive(Debug, Clone)]
pub struct HostReading {
    /// Port-pool settings.
    pub settings: PortPoolSettings,
    /// The socket table grouped into pools (one dump).
    pub snapshot: Snapshot,
    /// Cumulative TCP counters (since boot of the namespace).
    pub counters: Counters,
    /// When the reading finished.
    pub at: Instant,
}

impl HostReading {
    /// Reads settings, the socket table and the counters of the caller's network namespace.
    ///
    /// # Errors
    /// [`ReadError`] naming the view that failed.
    pub fn take(options: &ReadOptions) -> Result<HostReading, ReadError> {
        let settings = PortPoolSettings::read().map_err(ReadError::Settings)?;
        let snapshot_options = SnapshotOptions {
            destination: options.destination,
            table: options.table,
        };
        let snapshot = Snapshot::take(&settings, &snapshot_options).map_err(ReadError::Table)?;
        let counters = Counters::read().map_err(ReadError::Counters)?;
        Ok(HostReading {
            settings,
            snapshot,
            counters,
            at: Instant::now(),
        })
    }
}

/// The evidence of a host without a load run: the settings and pools of `reading`, and — when
/// an `earlier` reading is given — the counter increase between the two and its interval.
pub fn host_evidence(reading: &HostReading, earlier: Option<&HostReading>) -> Evidence {
    let delta = earlier.map(|e| reading.counters.delta_since(&e.counters));
    let interval_ms = earlier.map_or(0, |e| {
        (reading.at.duration_since(e.at).as_secs_f64().max(1e-6) * 1000.0) as u64
    });
    Evidence {
        settings: reading.settings.clone(),
        loopback: false,
        run: None,
        pool: None,
        counters_delta: delta,
        counters_interval_ms: interval_ms,
        snapshot: Some(reading.snapshot.clone()),
    }
}
