//! # portlab-sockets
//!
//! The kernel's view of the ephemeral-port pool of a Linux host (or of the network namespace
//! the caller runs in):
//!
//! - [`PortPoolSettings`] — `ip_local_port_range`, reserved ports, `tcp_tw_reuse` and its delay,
//!   timestamps, `tcp_max_tw_buckets`, `tcp_fin_timeout` (the FIN_WAIT_2 timeout, not TIME_WAIT),
//!   `somaxconn` and the open-file limit, from `/proc/sys`.
//! - [`Counters`] — TWRecycled, TCPTimeWaitOverflow, ListenOverflows, ListenDrops, ActiveOpens,
//!   AttemptFails, EstabResets … from `/proc/net/netstat` and `/proc/net/snmp`.
//! - [`Snapshot`] — every TCP socket read through NETLINK_SOCK_DIAG (inet_diag, as `ss` reads
//!   them; /proc/net/tcp as a fallback), counted by [`TcpState`] and grouped into pools per
//!   (local IP, destination) with utilisation and [`Headroom`].
//! - [`Conntrack`] — the conntrack table of a network namespace through ctnetlink: per-CPU
//!   statistics, count and limit, the entries, and [`nat_pools`] grouping source-NAT entries
//!   per (protocol, NAT IP, destination); [`read_nat_rules`] sizes the pools from nftables.
//!
//! Nothing here prints; the `portlab` binary renders these values.
//!
//! ```no_run
//! use portlab_sockets::{PortPoolSettings, Snapshot, SnapshotOptions};
//!
//! let settings = PortPoolSettings::read()?;
//! let snapshot = Snapshot::take(&settings, &SnapshotOptions::default())?;
//! println!("{} sockets in TIME_WAIT", snapshot.states.time_wait);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod conntrack;
pub mod counters;
pub mod diag;
pub mod natrules;
pub mod sampler;
pub mod settings;
pub mod snapshot;
pub mod state;

pub use conntrack::{
    nat_pools, Conntrack, ConntrackError, ConntrackStats, CtEntry, CtTcpState, L4Protocol, NatPool,
    NatPortRange, StatCounters,
};
pub use counters::{Counters, CountersError};
pub use diag::{SockDiagError, SocketEntry, StateMask, TableSource};
pub use natrules::{read_nat_rules, NatRule, NatRulesError};
pub use sampler::{
    DestinationCounts, Sampler, SamplerConfig, SamplerReport, SecondSample, SockStat, TickSample,
};
pub use settings::{PortPoolSettings, PortRange, SettingsError, TwReuse, LINUX_TIME_WAIT_SECS};
pub use snapshot::{
    Headroom, LocalIpUsage, PoolUsage, Risk, Snapshot, SnapshotOptions, TableChoice,
};
pub use state::{StateCounts, TcpState};
