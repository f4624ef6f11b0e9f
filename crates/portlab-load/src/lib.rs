//! portlab-load: an HTTP/1.1 and HTTP/2 (+TLS, + HTTP proxy) load generator that counts and
//! classifies every failure.
//!
//! A user who saw failures under load runs the same load through this engine and gets, besides
//! throughput and latency, an exact account of every request: with `-n N`,
//! `succeeded + failed = N`, each failure mapped from its errno to an [`ErrorClass`]
//! (EADDRNOTAVAIL → [`ErrorClass::AddrNotAvailable`], "ephemeral ports exhausted"), plus the
//! connection statistics and the per-second timeline a diagnosis needs.
//!
//! Main types:
//! - [`LoadConfig`] → [`LoadConfig::validate`] → [`Plan`]: settings checked once at the edge.
//! - [`ConnectionPolicy`]: keep-alive, server closes (`Connection: close`), client closes.
//! - [`run`]: the engine (one current-thread tokio runtime per OS thread, no shared locks).
//!   HTTP/2 (`LoadConfig::http2`, on the `h2` crate) keeps `streams` requests in flight per
//!   connection; [`run_with_records`] also streams per-request timings (hey's `-o csv`).
//! - Connects try every resolved address in RFC 8305 order ([`Target::dial_order`]), or go
//!   through an HTTP proxy ([`ProxyTarget`]: absolute form, or a CONNECT tunnel for https).
//! - [`LoadReport`]: plain data (Serialize, Deserialize), HDR histograms included.
//! - [`Segment`]: agent `I/N`'s exact share of a load run over many agents;
//!   [`ReportMerger`]: their reports merged into one without loss.
//!
//! ```no_run
//! use portlab_load::{LoadConfig, ConnectionPolicy};
//! let plan = LoadConfig {
//!     url: "http://127.0.0.1:8080/".into(),
//!     requests: 3000,
//!     concurrency: 1,
//!     policy: ConnectionPolicy::ClientCloses,
//!     ..LoadConfig::default()
//! }
//! .validate()?;
//! let report = portlab_load::run(&plan, &mut |_progress| {})?;
//! assert_eq!(report.summary.succeeded + report.summary.failed, 3000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod breaker;
mod config;
mod engine;
mod error;
mod http;
pub mod merge;
mod report;
pub mod ring;
pub mod segment;
mod stats;
mod tls;

pub use breaker::{BreakerConfig, BreakerCounters, CircuitBreaker};
pub use config::{
    ConfigError, ConnectionPolicy, EngineChoice, LoadConfig, Plan, ProxyTarget, RateLimit, Target,
    DEFAULT_BATCH_WAIT, MAX_BATCH_WAIT,
};
pub use engine::{run, run_with_records, LoadError, Progress, RequestRecord};
pub use error::{ErrorClass, Phase, Side};
pub use merge::{MergeError, ReportMerger};
pub use report::{
    AddressReport, BreakerReport, ConnectionReport, ErrorEntry, HistogramBucket, LatencyReport,
    LoadReport, Percentiles, ProxyReport, RetryReport, SettingsReport, Summary, TargetReport,
    TimelineSecond, SCHEMA_VERSION,
};
pub use segment::{Segment, SegmentError};
