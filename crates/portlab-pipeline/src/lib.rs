//! # portlab-pipeline
//!
//! The one path from kernel views (and load runs) to findings, shared by every consumer:
//! `portlab load`, `portlab doctor`, `portlab exporter` (and later `trace` and `merge`).
//!
//! - [`HostReading`] — one reading of a host (its network namespace): port-pool settings, the
//!   socket table grouped into pools (one NETLINK_SOCK_DIAG dump) and the TCP counters.
//!   [`host_evidence`] turns one or two readings into the diagnosis' [`Evidence`].
//! - [`Telemetry`] — what a load run adds beside its engine: the sampler, the per-second join
//!   of engine and sampler timelines ([`JoinedSecond`]), and the diagnosis of the run
//!   ([`TelemetryReport`]).
//! - [`select`] — which pools an exporter scrape exports: an always-kept allow-list, the top K
//!   above a floor held down for a while, everything else folded into one "other" series.
//!
//! ## Why a crate of its own
//! DESIGN.md's data flow is one-way: the leaves (`portlab-sockets`, `portlab-load`, later
//! `portlab-trace`) know nothing of their callers, and `portlab-diagnose` reads only their
//! outputs turned into one `Evidence` type. The join itself — read the leaves, convert their
//! outputs into `Evidence`, call `diagnose` — belongs to neither side: put into a leaf it would
//! make the leaf know the diagnosis; put into `portlab-diagnose` it would make the diagnosis know
//! the load engine's report. So it sits above both, below the binary: this crate depends on the
//! leaves and on the diagnosis, and nothing below it depends on it. Rendering (text, JSON, SVG,
//! Prometheus exposition) stays in the binary; nothing here prints.
//!
//! ```no_run
//! use portlab_pipeline::{host_evidence, HostReading, ReadOptions};
//!
//! let reading = HostReading::take(&ReadOptions::default())?;
//! let findings = portlab_diagnose::diagnose(&host_evidence(&reading, None));
//! println!("{} pools, {} findings", reading.snapshot.pools.len(), findings.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod host;
pub mod load;
pub mod select;

pub use host::{host_evidence, HostReading, ReadError, ReadOptions};
pub use load::{
    JoinedSecond, ProgressSeries, Telemetry, TelemetryConfig, TelemetryReport, MAX_PROGRESS_POINTS,
};
pub use portlab_diagnose::Evidence;
pub use select::{Folded, Matcher, MatcherError, PoolSelector, SelectConfig, Selection};
