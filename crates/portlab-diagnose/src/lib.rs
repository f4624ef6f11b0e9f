//! # portlab-diagnose
//!
//! Evidence in, findings out. [`diagnose`] reads an [`Evidence`] — what a load run counted,
//! what the sampler saw of the port pool, the settings and counter deltas, or a host snapshot
//! for `portlab doctor` — and returns [`Finding`]s, most severe first. Each finding names a
//! [`Cause`], a one-sentence summary, evidence lines with numbers and the [`Remedy`]s that are
//! correct for each OS, with the folklore they replace ([`Correction`]).
//!
//! The causes told apart:
//! 1. ephemeral-port exhaustion on the client ([`Cause::PortExhaustion`]),
//! 2. TIME_WAIT pressure before failures ([`Cause::TimeWaitPressure`]),
//! 3. a listener's accept queue overflowing ([`Cause::ListenQueueOverflow`]),
//! 4. the file-descriptor limit ([`Cause::FileDescriptorLimit`]),
//! 5. the server refusing, resetting or timing out ([`Cause::ServerSide`]),
//! 6. healthy, with the headroom ([`Cause::Healthy`]),
//! 7. connects lost beyond this host — a NAT or the server ([`Cause::LossBeyondHost`]).
//!
//! On a NAT host, [`diagnose_nat`] reads a [`NatEvidence`] (conntrack counters and NAT pools)
//! and tells NAT port exhaustion, the SNAT clash race, a full conntrack table and resolved UDP
//! clashes apart ([`nat`]).
//!
//! Nothing here prints; the `portlab` binary renders findings.
//!
//! ```
//! use portlab_diagnose::{diagnose, Cause, Evidence};
//! # fn settings() -> portlab_sockets::PortPoolSettings { portlab_sockets::PortPoolSettings::read().unwrap() }
//! let evidence = Evidence {
//!     settings: settings(),
//!     loopback: false,
//!     run: None,
//!     pool: None,
//!     counters_delta: None,
//!     counters_interval_ms: 0,
//!     snapshot: None,
//! };
//! let findings = diagnose(&evidence);
//! assert_eq!(findings[0].cause, Cause::Healthy);
//! ```
#![warn(missing_docs)]

pub mod agents;
pub mod captured;
pub mod evidence;
pub mod nat;
pub mod remedies;
mod rules;
pub mod trace;

pub use agents::{combine as combine_agents, AgentFindings};
pub use evidence::{Evidence, FailureCounts, Policy, PoolEvidence, RunEvidence};
pub use nat::{diagnose_nat, NatEvidence};
pub use remedies::{Correction, Os, Remedy};
pub use rules::diagnose;
pub use trace::{diagnose_with_trace, TraceEvidence, TracedFlow};

use serde::Serialize;

/// What a finding says went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The client ran out of ephemeral ports for a destination (EADDRNOTAVAIL).
    PortExhaustion,
    /// TIME_WAIT fills the pool faster than it drains; failures are near.
    TimeWaitPressure,
    /// A listener's accept queue overflowed: SYNs dropped, connects slow or timing out.
    ListenQueueOverflow,
    /// The process ran out of file descriptors (EMFILE/ENFILE).
    FileDescriptorLimit,
    /// The server (or a hop) refused, reset, timed out or answered garbage.
    ServerSide,
    /// Nothing of the above.
    Healthy,
    /// Connects timed out or needed SYN retransmits with nothing failing locally: the SYNs
    /// were lost beyond this host (a NAT, the server's backlog).
    LossBeyondHost,
    /// A NAT pool (protocol, NAT IP, destination) is full: new flows are dropped.
    NatPortExhaustion,
    /// SNAT inserts failed with the pools far from full: the clash race.
    SnatClashRace,
    /// The conntrack table is full: drops and early drops for every destination.
    ConntrackTableFull,
    /// UDP clashes resolved by the kernel without drops (informational).
    UdpClashResolved,
}

impl Cause {
    /// A short title.
    pub fn title(self) -> &'static str {
        match self {
            Cause::PortExhaustion => "Ephemeral-port exhaustion (client side)",
            Cause::TimeWaitPressure => "TIME_WAIT pressure",
            Cause::ListenQueueOverflow => "Listen-queue overflow at the server",
            Cause::FileDescriptorLimit => "File-descriptor limit",
            Cause::ServerSide => "Server refusing, resetting or timing out",
            Cause::Healthy => "Healthy",
            Cause::LossBeyondHost => "Connection attempts lost beyond this host",
            Cause::NatPortExhaustion => "NAT port exhaustion",
            Cause::SnatClashRace => "SNAT clash race",
            Cause::ConntrackTableFull => "Conntrack table full",
            Cause::UdpClashResolved => "UDP clashes resolved",
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information (healthy, headroom).
    Info,
    /// Failures are near, or a few happened.
    Warning,
    /// Requests are failing because of this.
    Critical,
}

/// One conclusion with its evidence and remedies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// What went wrong.
    pub cause: Cause,
    /// How bad.
    pub severity: Severity,
    /// One sentence.
    pub summary: String,
    /// Lines of evidence, each with its numbers.
    pub evidence: Vec<String>,
    /// What to do, per OS.
    pub remedies: Vec<Remedy>,
    /// Folklore that does not help, and what is true.
    pub corrections: Vec<Correction>,
}
