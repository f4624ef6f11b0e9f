//! Predicts when and how badly a client runs out of TCP ephemeral ports.
//!
//! - [`OsProfile`]: an OS's ephemeral-port range, TIME_WAIT length, [`PoolScope`] (which
//!   connections share a pool of ports) and TIME_WAIT reuse rules ([`TwReuse`]); presets for
//!   Linux, Windows (legacy and Vista+), macOS and FreeBSD with their sources.
//! - [`capacity`]: closed-form arithmetic — ports per pool, sustainable new connections per
//!   second, number of pools, time to exhaustion and steady-state failure fraction for a churn,
//!   and the folk formula `ports / TIME_WAIT` beside the refined answer with the reasons they
//!   differ.
//! - [`simulate`]: a deterministic, seeded discrete-event simulation of a [`Workload`]
//!   (closed loop with `-c` workers or open loop at a rate; keep-alive, server closes or client
//!   closes; destinations, source IPs, retries) giving a [`SimReport`] with a per-second
//!   timeline.
//! - [`nat`]: a source-NAT port pool (Linux ≤ 6.4 / ≥ 6.5, AWS, Azure NAT Gateway, Azure LB
//!   SNAT, GCP Cloud NAT profiles): sustainable new flows per destination and predicted loss.
//! - [`scan`]: the slow-connect cliff — `__inet_hash_connect()`'s port search walked port by
//!   port, its cost as one destination's pool fills ([`fill_curve`]) and the fill at which
//!   connect() slows by 10× ([`slow_connect_cliff`]).
//!
//! The kernel facts behind the model, with their sources, are in the project's research notes
//! (`research/port-allocation.md`); each one is cited where the code relies on it.
//!
//! # Example
//! ```
//! use portlab_model::{capacity, CapacityQuery, ConnectionPolicy, Os, OsProfile, TwReuse};
//!
//! let mut linux = OsProfile::preset(Os::Linux);
//! linux.tw_reuse = TwReuse::Off;
//! let query = CapacityQuery {
//!     source_ips: 1,
//!     destinations: 1,
//!     loopback: false,
//!     policy: ConnectionPolicy::ClientCloses,
//!     churn: None,
//! };
//! let c = capacity(&linux, &query);
//! // The seed's number: 28,232 ports / 60 s.
//! assert!((c.folk.rate_per_sec - 470.53).abs() < 0.01);
//! ```
#![warn(missing_docs)]

mod capacity;
pub mod nat;
mod profile;
pub mod scan;
mod sim;
mod workload;

pub use capacity::{
    capacity, Capacity, CapacityQuery, ChurnOutcome, Difference, FolkFormula, PortHold,
};
pub use nat::{
    azure_lb_ports_per_vm, held_flow_failures, nat_capacity, sequential_flow_failures,
    simulate_nat, NatCapacity, NatProfile, NatProtocol, NatSecond, NatSimReport, NatWorkload,
};
pub use profile::{Os, OsProfile, PoolScope, PortRange, TimeWaitCap, TwReuse};
pub use scan::{
    fill_curve, slow_connect_cliff, Cliff, CliffKind, FillCurve, FillOrder, FillPoint, FillQuery,
    PortWalk, ScanCost,
};
pub use sim::{simulate, SecondSample, SimReport, Totals, MAX_SIMULATED};
pub use workload::{
    failed_connect_estimate, ConnectionPolicy, Latency, LoadShape, RetryPolicy, RunLimit, Workload,
};

use std::time::Duration;

/// Errors from building profiles and workloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A port range whose low end is 0 or above its high end.
    #[error("invalid port range {low}-{high}: need 1 <= low <= high <= 65535")]
    InvalidRange {
        /// Low end given.
        low: u16,
        /// High end given.
        high: u16,
    },
    /// A port range that does not parse.
    #[error("cannot parse port range {0:?}: expected LOW-HIGH, e.g. 40000-40999")]
    RangeSyntax(String),
    /// An OS name without a preset.
    #[error("unknown OS {0:?}: expected linux, windows-legacy, windows, macos or freebsd")]
    UnknownOs(String),
    /// A `tcp_tw_reuse` value other than 0, 1, 2.
    #[error("tcp_tw_reuse must be 0, 1 or 2, not {0}")]
    TwReuse(u8),
    /// A connection policy name that is not known.
    #[error("unknown connection policy {0:?}: expected keep-alive, close or drop")]
    UnknownPolicy(String),
    /// A workload that cannot be simulated; the text names the field.
    #[error("invalid workload: {0}")]
    InvalidWorkload(String),
}

fn serde_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn serde_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn serde_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn serde_opt_micros<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e6)),
        None => s.serialize_none(),
    }
}
