//! # portlab-lab
//!
//! Reproduces TCP ephemeral-port exhaustion on demand, in a sandbox, and shows the fixes work.
//! The lab orchestrates the `portlab` binary itself as child processes (`serve`, `proxy`,
//! `load`, `simulate`), so it depends only on their command-line flags and JSON output:
//!
//! - [`Sandbox`] — a fresh network namespace (through a user namespace when not root) with its
//!   own `ip_local_port_range` and `tcp_tw_reuse`, anchored by a `portlab __sandbox-anchor`
//!   process that also samples the namespace's socket table ([`anchor`]). The host's sysctls
//!   are never written; every process is killed when the sandbox or the run ends ([`procs`]).
//! - [`Scenario`] — one step: path (direct, TCP forwarder, pooling HTTP proxy), connection
//!   policy, concurrency, requests, source IPs. [`plan`] builds the ladder of the seed incident
//!   (load tester → port forwarder → server at rising concurrency, client closes first) and
//!   its fixes (keep-alive, pooling proxy, more source IPs).
//! - [`LadderReport`] — per step: failures, dominant error class, peak TIME_WAIT against the
//!   pool, new connections/s, predicted failure %; then the worst step's diagnosis and a plain
//!   story. Plain data: the binary renders it as text, JSON or SVG.
//!
//! [`nat`] is the source-NAT variant (`portlab reproduce --nat`): a NAT rule with a small pool
//! inside the sandbox, held connections, short connections and UDP flows through it, the
//! conntrack counters and NAT pools beside each prediction.
//!
//! Module dependencies run one way: `text` and `sandbox_config` (plain helpers and data) ←
//! `anchor` ← `sandbox` ← `run`; `scenario` ← `predict` ← `report` ← `story` ← `run`.
//!
//! Each step runs in its own sandbox, because TIME_WAIT entries of one step would block the
//! next one's ports for 60 s.
//!
//! ```no_run
//! use portlab_lab::{plan, run_ladder, LabConfig};
//!
//! let config = LabConfig::new(portlab_lab::current_exe()?);
//! let report = run_ladder(&config, &plan(&config), &mut |_event| {})?;
//! println!("worst step: {:?}", report.worst_step);
//! # Ok::<(), portlab_lab::LabError>(())
//! ```
#![warn(missing_docs)]

pub mod anchor;
pub mod hypotheses;
pub mod nat;
pub mod nat_tools;
mod predict;
pub mod procs;
mod report;
mod run;
mod sandbox;
mod sandbox_config;
mod scenario;
mod story;
mod text;

pub use anchor::{AnchorError, Ready, Sample, SandboxSettings, ANCHOR_SUBCOMMAND};
pub use hypotheses::{
    run_hypotheses, HypothesesReport, Mechanism, MechanismReport, Remedy, RemedyStep,
};
pub use predict::{closed_form_failure_fraction, Prediction, PredictionSource};
pub use report::{
    Diagnosis, ErrorCount, LadderReport, LadderSettings, LoadSecond, PoolPeak, StepCounters,
    StepReport, TimelinePoint, UpstreamReport, Verdict,
};
pub use run::{run_ladder, run_step, LabEvent};
pub use sandbox::{current_exe, Sandbox};
pub use sandbox_config::{Isolation, SandboxConfig};
pub use scenario::{
    parse_http_url, plan, Fix, LabConfig, Path, Policy, Scenario, StepExtras, Target,
};
pub use text::group_thousands;

/// Errors of a lab run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The sandbox could not be made; the message is one sentence saying what is missing and
    /// how to run the command.
    #[error("{0}")]
    Sandbox(#[from] AnchorError),
    /// A child process could not be started.
    #[error("starting {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The OS error (setns refused, executable missing, …).
        source: std::io::Error,
    },
    /// A child process said something unexpected or failed.
    #[error("{what}: {detail}")]
    Protocol {
        /// Which process.
        what: String,
        /// What it printed or how it exited.
        detail: String,
    },
    /// A child did not answer in time.
    #[error("timed out after {secs:.1} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        secs: f64,
    },
    /// An I/O operation of the lab itself failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The run was interrupted (SIGINT/SIGTERM); every child has been stopped.
    #[error("interrupted; every process of the sandbox was stopped")]
    Interrupted,
    /// The sandbox cannot do NAT (no `nft`, no kernel NAT or conntrack); one sentence.
    #[error("{0}")]
    NatUnavailable(String),
}
