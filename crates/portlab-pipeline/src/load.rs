//! What a load run adds beside its engine: the port-pool sampler running while the load runs,
//! the per-second join of the engine's and the sampler's timelines, and the diagnosis of the run
//! (the run's `LoadReport` and the sampler's report turned into one `Evidence`).

use std::net::SocketAddr;
use std::time::Duration;

use portlab_diagnose::{
    diagnose, Evidence, FailureCounts, Finding, Policy, PoolEvidence, RunEvidence,
};
use portlab_load::{ConnectionPolicy, ErrorClass, LoadReport, Progress};
use portlab_sockets::{PortPoolSettings, Sampler, SamplerConfig, SamplerReport, SettingsError};
use serde::Serialize;

/// How a load run is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Run the sampler (off: no pool data, no pool diagnosis).
    pub sample: bool,
    /// How often the sampler reads the socket counts towards the target.
    pub sample_interval: Duration,
}

/// The sampler and what it needs to judge the run.
pub struct Telemetry {
    settings: PortPoolSettings,
    destinations: Vec<SocketAddr>,
    sampler: Option<Sampler>,
    progress: ProgressSeries,
}

/// Cumulative progress points (about ten a second from the engine's progress callback),
/// thinned evenly past [`MAX_PROGRESS_POINTS`] so memory stays flat: the sub-second view of
/// requests ok/failed for plots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProgressSeries {
    /// (ms since start, requests done, of which failed).
    pub points: Vec<(u64, u64, u64)>,
    #[serde(skip)]
    stride: u64,
    #[serde(skip)]
    seen: u64,
}

/// Most points kept in a [`ProgressSeries`].
pub const MAX_PROGRESS_POINTS: usize = 1024;

impl ProgressSeries {
    /// Records one progress callback.
    pub fn push(&mut self, p: &Progress) {
        let stride = self.stride.max(1);
        self.seen += 1;
        if !(self.seen - 1).is_multiple_of(stride) {
            return;
        }
        if self.points.len() == MAX_PROGRESS_POINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride = stride * 2;
        }
        self.points
            .push((p.elapsed.as_millis() as u64, p.done, p.failed));
    }

    /// Rates between consecutive points: (second, ok per second, failed per second).
    pub fn rates(&self) -> Vec<(f64, f64, f64)> {
        self.points
            .windows(2)
            .filter_map(|w| {
                let dt = w[1].0.checked_sub(w[0].0).filter(|d| *d > 0)? as f64 / 1000.0;
                let failed = w[1].2.saturating_sub(w[0].2) as f64;
                let done = w[1].1.saturating_sub(w[0].1) as f64;
                Some((
                    w[1].0 as f64 / 1000.0,
                    (done - failed).max(0.0) / dt,
                    failed / dt,
                ))
            })
            .collect()
    }
}

/// One second of the joined timeline: the load engine's counts and the sampler's maxima.
#[derive(Debug, Clone, Serialize)]
pub struct JoinedSecond {
    /// Second since the start.
    pub second: u64,
    /// Requests that succeeded in this second.
    pub succeeded: u64,
    /// Requests that failed in this second.
    pub failed: u64,
    /// Connections opened in this second.
    pub new_connections: u64,
    /// p99 latency of this second, µs.
    pub p99_us: u64,
    /// Peak TIME_WAIT sockets to the target in this second (None without a sample).
    pub time_wait: Option<u64>,
    /// Peak ESTABLISHED sockets to the target.
    pub established: Option<u64>,
    /// Peak SYN_SENT sockets to the target.
    pub syn_sent: Option<u64>,
    /// Peak ports in use in the fullest (local IP, target) pool.
    pub pool_ports_in_use: Option<u64>,
    /// Peak TIME_WAIT of the whole network namespace (sockstat).
    pub netns_time_wait: Option<u64>,
}

/// What `load` reports beside the engine's report.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryReport {
    /// Usable ports of one pool in the namespace the load ran in.
    pub pool_size: u64,
    /// The port-pool settings of that namespace.
    pub settings: PortPoolSettings,
    /// The sampler's own report (None with --no-sample or when it could not start).
    pub sampler: Option<SamplerReport>,
    /// Why there is no sampler report, if there is none.
    pub sampler_note: Option<String>,
    /// Engine timeline joined with the sampler's per-second maxima.
    pub timeline: Vec<JoinedSecond>,
    /// Findings, most severe first.
    pub diagnosis: Vec<Finding>,
    /// Cumulative requests done/failed about ten times a second.
    pub progress: ProgressSeries,
}

impl Telemetry {
    /// Reads the settings and starts the sampler towards `destination` (unless
    /// `config.sample` is off). Returns the telemetry and a note saying why there is no sampler,
    /// if there is none.
    ///
    /// # Errors
    /// When the settings cannot be read. A sampler that cannot start is not an error: the run
    /// goes on and the report says why there is no pool data.
    pub fn start(
        config: &TelemetryConfig,
        destination: SocketAddr,
    ) -> Result<(Telemetry, Option<String>), SettingsError> {
        let settings = PortPoolSettings::read()?;
        let destinations = vec![destination];
        let mut note = None;
        let sampler = if !config.sample {
            note = Some("sampling disabled (--no-sample)".to_string());
            None
        } else {
            match Sampler::start(SamplerConfig {
                destinations: destinations.clone(),
                interval: config.sample_interval,
                pool_size: u64::from(settings.usable_ephemeral_ports()),
            }) {
                Ok(sampler) => Some(sampler),
                Err(err) => {
                    note = Some(format!("sampler could not start: {err}"));
                    None
                }
            }
        };
        let mut progress = ProgressSeries::default();
        progress.push(&Progress::default()); // the start: nothing done at 0 ms
        Ok((
            Telemetry {
                settings,
                destinations,
                sampler,
                progress,
            },
            note,
        ))
    }

    /// Records one progress callback of the engine.
    pub fn on_progress(&mut self, p: &Progress) {
        self.progress.push(p);
    }

    /// Stops the sampler, joins timelines and diagnoses the run.
    pub fn finish(self, report: &LoadReport, note: Option<String>) -> TelemetryReport {
        let sampler = self.sampler.map(Sampler::stop);
        let sampler_note = note.or_else(|| sampler.as_ref().and_then(|s| s.error.clone()));
        let pool_size = u64::from(self.settings.usable_ephemeral_ports());
        let timeline = join(report, sampler.as_ref());
        let evidence = evidence(
            &self.settings,
            &self.destinations,
            report,
            sampler.as_ref(),
            pool_size,
        );
        TelemetryReport {
            progress: self.progress,
            pool_size,
            settings: self.settings,
            diagnosis: diagnose(&evidence),
            sampler,
            sampler_note,
            timeline,
        }
    }
}

fn join(report: &LoadReport, sampler: Option<&SamplerReport>) -> Vec<JoinedSecond> {
    let seconds = report
        .timeline
        .iter()
        .map(|t| t.second + 1)
        .chain(
            sampler
                .iter()
                .flat_map(|s| s.seconds.iter().map(|x| x.second + 1)),
        )
        .max()
        .unwrap_or(0);
    (0..seconds)
        .map(|second| {
            let load = report.timeline.iter().find(|t| t.second == second);
            let sample = sampler.and_then(|s| s.seconds.iter().find(|x| x.second == second));
            let detailed = sample.filter(|x| x.samples > 0);
            JoinedSecond {
                second,
                succeeded: load.map_or(0, |t| t.succeeded),
                failed: load.map_or(0, |t| t.failed),
                new_connections: load.map_or(0, |t| t.new_connections),
                p99_us: load.map_or(0, |t| t.p99_us),
                time_wait: detailed.map(|x| x.max.time_wait),
                established: detailed.map(|x| x.max.established),
                syn_sent: detailed.map(|x| x.max.syn_sent),
                pool_ports_in_use: detailed.map(|x| x.max.max_pool_ports_in_use),
                netns_time_wait: sample.map(|x| x.netns_max.tcp_time_wait),
            }
        })
        .collect()
}

fn failure_counts(report: &LoadReport) -> FailureCounts {
    let mut f = FailureCounts::default();
    for entry in &report.errors {
        let slot = match entry.class {
            ErrorClass::AddrNotAvailable => &mut f.addr_not_available,
            ErrorClass::AddrInUse => &mut f.addr_in_use,
            ErrorClass::ConnectionRefused => &mut f.connection_refused,
            ErrorClass::ConnectionReset => &mut f.connection_reset,
            ErrorClass::ConnectTimeout => &mut f.connect_timeout,
            ErrorClass::ResponseTimeout => &mut f.response_timeout,
            ErrorClass::TooManyOpenFiles => &mut f.too_many_open_files,
            ErrorClass::NoBufferSpace => &mut f.no_buffer_space,
            ErrorClass::Unreachable => &mut f.unreachable,
            ErrorClass::Protocol => &mut f.protocol,
            ErrorClass::Tls => &mut f.tls,
            ErrorClass::PermissionDenied
            | ErrorClass::ProxyRefused
            | ErrorClass::GoAway
            | ErrorClass::StreamReset
            | ErrorClass::FlowControl
            | ErrorClass::Other(_) => &mut f.other,
        };
        *slot += entry.count;
    }
    f
}

/// When the first failure of `class` (any class when `None`) happened, ms since the start.
pub fn first_failure_ms(report: &LoadReport, class: Option<ErrorClass>) -> Option<u64> {
    report
        .errors
        .iter()
        .filter(|e| class.is_none_or(|c| e.class == c))
        .filter_map(|e| e.first_at_ms)
        .min_by(f64::total_cmp)
        .map(|ms| ms as u64)
}

/// The diagnosis' evidence of one run (also each agent's, in `portlab merge`).
pub fn evidence(
    settings: &PortPoolSettings,
    destinations: &[SocketAddr],
    report: &LoadReport,
    sampler: Option<&SamplerReport>,
    pool_size: u64,
) -> Evidence {
    let destination = destinations.first().copied();
    let policy = match report.settings.connection {
        ConnectionPolicy::KeepAlive => Policy::KeepAlive,
        ConnectionPolicy::ServerCloses => Policy::ServerCloses,
        ConnectionPolicy::ClientCloses => Policy::ClientCloses,
    };
    let run = RunEvidence {
        destination,
        policy,
        concurrency: report.settings.concurrency as u64,
        source_ips: report.settings.source_ips.len().max(1) as u64,
        attempts: report.summary.requests,
        successes: report.summary.succeeded,
        failures: failure_counts(report),
        first_failure_ms: first_failure_ms(report, None),
        first_addr_not_available_ms: first_failure_ms(report, Some(ErrorClass::AddrNotAvailable)),
        duration_ms: (report.summary.elapsed_secs * 1000.0) as u64,
        connections_opened: report.connections.opened,
        slow_connects: report.connections.slow_connects,
        connect_p99_ms: (report.connections.connect_latency.count > 0)
            .then(|| report.connections.connect_latency.p99_us as f64 / 1000.0),
    };
    let pool = sampler.map(|s| PoolEvidence {
        pool_size,
        peak_time_wait: s.peak.time_wait,
        peak_ports_in_use: s.peak.max_pool_ports_in_use,
        pool_full_at_ms: s.pool_full_at_ms,
    });
    Evidence {
        settings: settings.clone(),
        loopback: destination.is_some_and(|d| d.ip().is_loopback()),
        run: Some(run),
        pool,
        counters_delta: sampler.map(|s| s.counters_delta),
        counters_interval_ms: (report.summary.elapsed_secs * 1000.0) as u64,
        snapshot: None,
    }
}
