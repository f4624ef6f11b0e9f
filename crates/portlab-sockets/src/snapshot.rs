//! A snapshot of the ephemeral-port pool: every TCP socket counted by state, and the sockets
//! whose local port is ephemeral grouped into pools — one pool per (local IP, destination),
//! because connect() without bind() picks a port per 4-tuple (net/ipv4/inet_hashtables.c
//! `__inet_hash_connect()`), so the same local port serves many destinations.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::diag::{self, SockDiagError, SocketEntry, StateMask, TableSource};
use crate::settings::{PortPoolSettings, LINUX_TIME_WAIT_SECS};
use crate::state::{StateCounts, TcpState};

/// Where to read the socket table from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableChoice {
    /// NETLINK_SOCK_DIAG, falling back to /proc/net/tcp{,6} (with a note) if it is unavailable;
    /// an error ([`SockDiagError::PermissionDenied`]) if it is denied.
    #[default]
    Auto,
    /// /proc/net/tcp{,6} only.
    Proc,
}

/// What a snapshot covers.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Keep only the pools whose destination is this address (IPv4-mapped IPv6 compared as
    /// IPv4). State counts always cover the whole table.
    pub destination: Option<SocketAddr>,
    /// Which interface to read.
    pub table: TableChoice,
}

/// How close a pool is to exhaustion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Under half the pool blocked and churn well under the sustainable rate.
    Ok,
    /// Half the pool or more blocked, or churn at 80 % or more of the sustainable rate.
    Warning,
    /// 80 % or more of the pool blocked.
    Critical,
    /// Every usable port blocked: connect() fails with EADDRNOTAVAIL now.
    Exhausted,
}

/// Usage of one pool: the ephemeral ports one local IP holds towards one destination.
///
/// Field names are stable: they are part of `portlab ports --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolUsage {
    /// Local address of the sockets.
    pub local_ip: IpAddr,
    /// Remote address and port (the destination of the 4-tuples).
    pub destination: SocketAddr,
    /// Whether the 4-tuples are loopback traffic (where `tcp_tw_reuse=2` applies).
    pub loopback: bool,
    /// Sockets in ESTABLISHED.
    pub established: u64,
    /// Sockets in TIME_WAIT.
    pub time_wait: u64,
    /// Sockets in SYN_SENT.
    pub syn_sent: u64,
    /// Sockets in any other state (FIN_WAIT_1/2, CLOSE_WAIT, LAST_ACK, CLOSING, …).
    pub other: u64,
    /// All of the above: local ports of this pool in use.
    pub used: u64,
    /// Ports a new connect() cannot take now: `used`, less the TIME_WAIT entries when
    /// `tcp_tw_reuse` lets connect() take them over (after `tcp_tw_reuse_delay`).
    pub blocked: u64,
    /// `used` ÷ usable ephemeral ports (0.0–1.0; may exceed 1.0 if the range was narrowed
    /// while the sockets were open).
    pub utilisation: f64,
    /// Headroom of this pool.
    pub headroom: Headroom,
}

/// The new-connection rate a pool sustains and how close it runs to it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Headroom {
    /// How long a closed connection blocks its port for this destination, in ms:
    /// 60,000 (TIME_WAIT) or `tcp_tw_reuse_delay` where reuse applies.
    pub port_block_ms: u32,
    /// Sustainable new connections per second when the client closes first: usable ports ÷
    /// port block time.
    pub sustainable_rate_per_sec: f64,
    /// Estimated recent active-close rate: TIME_WAIT entries ÷ 60 s (each lives 60 s, so by
    /// Little's law their count is rate × 60 s).
    pub churn_estimate_per_sec: f64,
    /// Ports still free for a new connect() now.
    pub free_ports: u64,
    /// The verdict.
    pub risk: Risk,
}

/// Ephemeral ports in use per local IP (distinct port numbers, any destination): the scope
/// that matters when applications bind() before connect().
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalIpUsage {
    /// The local address.
    pub local_ip: IpAddr,
    /// Distinct ephemeral port numbers in use on it.
    pub distinct_ports: u64,
    /// Sockets with an ephemeral local port on it.
    pub sockets: u64,
}

/// One reading of the socket table, grouped for the port-pool view.
///
/// Field names are stable: they are part of `portlab ports --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// When it was taken, ms since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Which interface the table came from.
    pub source: TableSource,
    /// Why the fallback was used, when it was.
    pub source_note: Option<String>,
    /// Every TCP socket (IPv4 and IPv6) by state.
    pub states: StateCounts,
    /// IPv4 sockets (IPv4-mapped IPv6 sockets count as IPv4).
    pub ipv4_sockets: u64,
    /// IPv6 sockets.
    pub ipv6_sockets: u64,
    /// Sockets holding an ephemeral local port (client side of connections).
    pub ephemeral_sockets: u64,
    /// Pools, most utilised first (ties by destination).
    pub pools: Vec<PoolUsage>,
    /// Ephemeral ports per local IP, most used first.
    pub local_ips: Vec<LocalIpUsage>,
}

impl Snapshot {
    /// Reads the socket table of the caller's network namespace and groups it.
    ///
    /// # Errors
    /// [`SockDiagError`] when neither NETLINK_SOCK_DIAG nor /proc/net/tcp can be read.
    pub fn take(
        settings: &PortPoolSettings,
        options: &SnapshotOptions,
    ) -> Result<Snapshot, SockDiagError> {
        let mut entries = Vec::new();
        let (source, source_note) = read_table(options.table, &mut entries)?;
        let mut snapshot = Self::from_entries(settings, &entries, options.destination);
        snapshot.source = source;
        snapshot.source_note = source_note;
        Ok(snapshot)
    }

    /// Groups already-read entries (used by [`Snapshot::take`] and by tests).
    pub fn from_entries(
        settings: &PortPoolSettings,
        entries: &[SocketEntry],
        destination: Option<SocketAddr>,
    ) -> Snapshot {
        let range = settings.ip_local_port_range;
        // A port held by a listener is a bind() user's port; connect()'s autobind never takes it
        // (inet_hashtables.c: buckets with fastreuse >= 0 are skipped), so sockets on such a
        // port are accepted server-side connections, not ephemeral ones.
        let listener_ports: HashSet<u16> = entries
            .iter()
            .filter(|e| e.state == TcpState::Listen)
            .map(|e| e.local.port())
            .collect();
        let mut states = StateCounts::default();
        let (mut ipv4_sockets, mut ipv6_sockets, mut ephemeral_sockets) = (0, 0, 0);
        let mut pools: HashMap<(IpAddr, SocketAddr), PoolCounts> = HashMap::new();
        let mut per_ip: HashMap<IpAddr, (PortBitmap, u64)> = HashMap::new();
        for entry in entries {
            states.add(entry.state);
            if entry.local.is_ipv4() {
                ipv4_sockets += 1;
            } else {
                ipv6_sockets += 1;
            }
            let port = entry.local.port();
            if entry.state == TcpState::Listen
                || !range.contains(port)
                || listener_ports.contains(&port)
            {
                continue;
            }
            ephemeral_sockets += 1;
            let (bitmap, sockets) = per_ip.entry(entry.local.ip()).or_default();
            bitmap.insert(port);
            *sockets += 1;
            if destination.is_some_and(|d| d != entry.remote) {
                continue;
            }
            pools
                .entry((entry.local.ip(), entry.remote))
                .or_default()
                .add(entry.state);
        }
        let mut pools: Vec<PoolUsage> = pools
            .into_iter()
            .map(|((local_ip, destination), counts)| counts.usage(settings, local_ip, destination))
            .collect();
        pools.sort_by(|a, b| {
            b.utilisation
                .total_cmp(&a.utilisation)
                .then(a.destination.cmp(&b.destination))
                .then(a.local_ip.cmp(&b.local_ip))
        });
        let mut local_ips: Vec<LocalIpUsage> = per_ip
            .into_iter()
            .map(|(local_ip, (bitmap, sockets))| LocalIpUsage {
                local_ip,
                distinct_ports: bitmap.count(),
                sockets,
            })
            .collect();
        local_ips.sort_by(|a, b| {
            b.distinct_ports
                .cmp(&a.distinct_ports)
                .then(a.local_ip.cmp(&b.local_ip))
        });
        Snapshot {
            taken_at_unix_ms: unix_ms_now(),
            source: TableSource::SockDiag,
            source_note: None,
            states,
            ipv4_sockets,
            ipv6_sockets,
            ephemeral_sockets,
            pools,
            local_ips,
        }
    }

    /// The pool closest to exhaustion, if any socket holds an ephemeral port.
    pub fn worst_pool(&self) -> Option<&PoolUsage> {
        self.pools.iter().max_by(|a, b| {
            a.headroom
                .risk
                .cmp(&b.headroom.risk)
                .then(a.utilisation.total_cmp(&b.utilisation))
        })
    }
}

fn read_table(
    choice: TableChoice,
    entries: &mut Vec<SocketEntry>,
) -> Result<(TableSource, Option<String>), SockDiagError> {
    if choice == TableChoice::Proc {
        diag::for_each_socket_proc(StateMask::ALL, |e| entries.push(e))?;
        return Ok((
            TableSource::ProcNetTcp,
            Some("/proc/net/tcp{,6} requested".into()),
        ));
    }
    match diag::read_table_parallel(StateMask::ALL) {
        Ok(read) => {
            *entries = read;
            Ok((TableSource::SockDiag, None))
        }
        // Unavailable (no inet_diag in this kernel): fall back with a note. Denied is an error
        // the caller reports: a silent fallback would hide a policy the user should know of.
        Err(netlink_err @ SockDiagError::Open(_)) => {
            entries.clear();
            diag::for_each_socket_proc(StateMask::ALL, |e| entries.push(e)).map_err(
                |proc_err| {
                    SockDiagError::Decode(format!("{netlink_err}; fallback failed too: {proc_err}"))
                },
            )?;
            let note = format!("{netlink_err}; read /proc/net/tcp{{,6}} instead (not atomic)");
            Ok((TableSource::ProcNetTcp, Some(note)))
        }
        Err(other) => Err(other),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PoolCounts {
    established: u64,
    time_wait: u64,
    syn_sent: u64,
    other: u64,
}

impl PoolCounts {
    fn add(&mut self, state: TcpState) {
        match state {
            TcpState::Established => self.established += 1,
            TcpState::TimeWait => self.time_wait += 1,
            TcpState::SynSent => self.syn_sent += 1,
            _ => self.other += 1,
        }
    }

    fn usage(
        self,
        settings: &PortPoolSettings,
        local_ip: IpAddr,
        destination: SocketAddr,
    ) -> PoolUsage {
        let loopback = local_ip.is_loopback() || destination.ip().is_loopback();
        let used = self.established + self.time_wait + self.syn_sent + self.other;
        let port_block_ms = settings.time_wait_block_ms(loopback);
        let tw_reusable = port_block_ms < LINUX_TIME_WAIT_SECS * 1000;
        let blocked = if tw_reusable {
            used - self.time_wait
        } else {
            used
        };
        let usable = u64::from(settings.usable_ephemeral_ports());
        let sustainable_rate_per_sec = settings.sustainable_rate_per_sec(loopback);
        let churn_estimate_per_sec = self.time_wait as f64 / f64::from(LINUX_TIME_WAIT_SECS);
        let blocked_fraction = if usable == 0 {
            1.0
        } else {
            blocked as f64 / usable as f64
        };
        let risk = risk_of(
            blocked_fraction,
            churn_estimate_per_sec,
            sustainable_rate_per_sec,
        );
        PoolUsage {
            local_ip,
            destination,
            loopback,
            established: self.established,
            time_wait: self.time_wait,
            syn_sent: self.syn_sent,
            other: self.other,
            used,
            blocked,
            utilisation: if usable == 0 {
                1.0
            } else {
                used as f64 / usable as f64
            },
            headroom: Headroom {
                port_block_ms,
                sustainable_rate_per_sec,
                churn_estimate_per_sec,
                free_ports: usable.saturating_sub(blocked),
                risk,
            },
        }
    }
}

fn risk_of(blocked_fraction: f64, churn_per_sec: f64, sustainable_per_sec: f64) -> Risk {
    if blocked_fraction >= 1.0 {
        Risk::Exhausted
    } else if blocked_fraction >= 0.8 {
        Risk::Critical
    } else if blocked_fraction >= 0.5 || churn_per_sec >= 0.8 * sustainable_per_sec {
        Risk::Warning
    } else {
        Risk::Ok
    }
}

/// One bit per port number.
#[derive(Debug, Clone)]
struct PortBitmap(Box<[u64; 1024]>);

impl Default for PortBitmap {
    fn default() -> Self {
        PortBitmap(Box::new([0; 1024]))
    }
}

impl PortBitmap {
    fn insert(&mut self, port: u16) {
        self.0[usize::from(port / 64)] |= 1 << (port % 64);
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{PortRange, TwReuse};

    fn settings(reuse: TwReuse) -> PortPoolSettings {
        PortPoolSettings {
            ip_local_port_range: PortRange {
                low: 40000,
                high: 40099,
            },
            ip_local_reserved_ports: vec![],
            tcp_tw_reuse: reuse,
            tcp_tw_reuse_delay_ms: Some(1000),
            tcp_timestamps: 1,
            tcp_max_tw_buckets: 262_144,
            tcp_fin_timeout_secs: 60,
            somaxconn: 4096,
            nofile_soft: 1024,
            nofile_hard: 4096,
        }
    }

    fn entry(state: TcpState, local: &str, remote: &str) -> SocketEntry {
        SocketEntry {
            state,
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
        }
    }

    #[test]
    fn groups_by_local_ip_and_destination_and_skips_server_sides() {
        let mut entries = vec![
            entry(TcpState::Listen, "0.0.0.0:40090", "0.0.0.0:0"),
            // Accepted connection on a listener's port inside the range: not ephemeral.
            entry(TcpState::Established, "10.0.0.1:40090", "10.0.0.9:5555"),
            // Outside the range: not ephemeral.
            entry(TcpState::Established, "10.0.0.1:22", "10.0.0.9:6000"),
        ];
        for port in 40000..40060u16 {
            entries.push(entry(
                TcpState::TimeWait,
                &format!("10.0.0.1:{port}"),
                "10.0.0.2:80",
            ));
        }
        for port in 40000..40010u16 {
            entries.push(entry(
                TcpState::Established,
                &format!("10.0.0.1:{port}"),
                "10.0.0.3:80",
            ));
        }
        entries.push(entry(TcpState::SynSent, "10.0.0.1:40070", "10.0.0.2:80"));
        let snap = Snapshot::from_entries(&settings(TwReuse::LoopbackOnly), &entries, None);
        assert_eq!(snap.states.time_wait, 60);
        assert_eq!(snap.states.established, 12);
        assert_eq!(snap.ephemeral_sockets, 71);
        assert_eq!(snap.pools.len(), 2);
        let top = &snap.pools[0];
        assert_eq!(top.destination, "10.0.0.2:80".parse().expect("addr"));
        assert_eq!((top.time_wait, top.syn_sent, top.used), (60, 1, 61));
        assert!((top.utilisation - 0.61).abs() < 1e-9);
        // Non-loopback with tcp_tw_reuse=2: TIME_WAIT blocks for 60 s.
        assert_eq!(top.blocked, 61);
        assert_eq!(top.headroom.port_block_ms, 60_000);
        assert_eq!(top.headroom.risk, Risk::Warning);
        assert_eq!(top.headroom.free_ports, 39);
        // 60 distinct ports on 10.0.0.1 (the 10 to .3 reuse numbers held towards .2).
        assert_eq!(snap.local_ips[0].distinct_ports, 61);
        assert_eq!(snap.local_ips[0].sockets, 71);
    }

    #[test]
    fn loopback_time_wait_is_reusable_under_tw_reuse_2() {
        let entries: Vec<_> = (40000..40100u16)
            .map(|port| {
                entry(
                    TcpState::TimeWait,
                    &format!("127.0.0.1:{port}"),
                    "127.0.0.1:8080",
                )
            })
            .collect();
        let loopback = Snapshot::from_entries(&settings(TwReuse::LoopbackOnly), &entries, None);
        assert_eq!(loopback.pools[0].blocked, 0);
        assert_eq!(loopback.pools[0].headroom.port_block_ms, 1000);
        let off = Snapshot::from_entries(&settings(TwReuse::Disabled), &entries, None);
        assert_eq!(off.pools[0].blocked, 100);
        assert_eq!(off.pools[0].headroom.risk, Risk::Exhausted);
        assert_eq!(
            off.worst_pool().map(|p| p.headroom.risk),
            Some(Risk::Exhausted)
        );
    }

    #[test]
    fn destination_filter_keeps_only_that_pool_but_all_state_counts() {
        let entries = vec![
            entry(TcpState::Established, "10.0.0.1:40001", "10.0.0.2:80"),
            entry(TcpState::Established, "10.0.0.1:40002", "10.0.0.3:80"),
        ];
        let dest = "10.0.0.3:80".parse().ok();
        let snap = Snapshot::from_entries(&settings(TwReuse::Disabled), &entries, dest);
        assert_eq!(snap.pools.len(), 1);
        assert_eq!(
            snap.pools[0].destination,
            "10.0.0.3:80".parse().expect("addr")
        );
        assert_eq!(snap.states.established, 2);
    }
}
