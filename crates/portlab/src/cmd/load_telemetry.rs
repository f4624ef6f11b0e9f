//! What `portlab load` adds beside the engine: the port-pool sampler running while the load
//! runs, the joined per-second timeline, the diagnosis of the run and its SVG plot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use portlab_diagnose::{
    diagnose, Evidence, FailureCounts, Finding, Policy, PoolEvidence, RunEvidence,
};
use portlab_load::{ConnectionPolicy, ErrorClass, LoadReport, Plan, Progress};
use portlab_sockets::{PortPoolSettings, Sampler, SamplerConfig, SamplerReport};
use serde::Serialize;

use crate::plot::{self, colors, Series, Timeline};

/// Telemetry flags of `portlab load`.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Do not watch the port pool while loading (no sampler thread, no diagnosis of the pool).
    #[arg(long = "no-sample")]
    pub no_sample: bool,
    /// How often the sampler reads the socket counts towards the target (e.g. 100ms, 1s).
    #[arg(long = "sample-interval", default_value = "100ms", value_parser = parse_interval)]
    pub sample_interval: Duration,
    /// Draw the timeline (requests ok/failed per second, TIME_WAIT and ESTABLISHED to the
    /// target, the pool size, the first failure) to this SVG file.
    #[arg(long = "plot", value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 100ms)"))?;
    let secs = value * scale;
    if (0.01..=60.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{text} is out of range; use 10ms to 60s"))
    }
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
    fn rates(&self) -> Vec<(f64, f64, f64)> {
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
    /// Reads the settings and starts the sampler (unless --no-sample).
    ///
    /// # Errors
    /// When the settings cannot be read. A sampler that cannot start is not an error: the run
    /// goes on and the report says why there is no pool data.
    pub fn start(args: &TelemetryArgs, plan: &Plan) -> anyhow::Result<(Telemetry, Option<String>)> {
        let settings = PortPoolSettings::read().context("reading the port-pool settings")?;
        let destinations = vec![plan.target.addr];
        let mut note = None;
        let sampler = if args.no_sample {
            note = Some("sampling disabled (--no-sample)".to_string());
            None
        } else {
            match Sampler::start(SamplerConfig {
                destinations: destinations.clone(),
                interval: args.sample_interval,
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
fn first_failure_ms(report: &LoadReport, class: Option<ErrorClass>) -> Option<u64> {
    report
        .errors
        .iter()
        .filter(|e| class.is_none_or(|c| e.class == c))
        .filter_map(|e| e.first_at_ms)
        .min_by(f64::total_cmp)
        .map(|ms| ms as u64)
}

fn evidence(
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

/// Writes the run's timeline as an SVG.
///
/// # Errors
/// When the file cannot be written.
pub fn write_plot(
    path: &std::path::Path,
    report: &LoadReport,
    t: &TelemetryReport,
) -> anyhow::Result<()> {
    let series = t.sampler.as_ref().map_or(&[][..], |s| &s.series[..]);
    let gauge = |name: &str, color, get: fn(&portlab_sockets::TickSample) -> u64| Series {
        name: name.to_string(),
        color,
        points: series
            .iter()
            .map(|x| (x.at_ms as f64 / 1000.0, get(x) as f64))
            .collect(),
    };
    let rates = t.progress.rates();
    let first_failure = first_failure_ms(report, None).map(|ms| ms as f64 / 1000.0);
    let rate_series = |name: &str, color, get: fn(&(f64, f64, f64)) -> f64| Series {
        name: name.to_string(),
        color,
        points: rates.iter().map(|r| (r.0, get(r))).collect(),
    };
    let timeline = Timeline {
        title: format!(
            "portlab load {} — {} connections, -c {}",
            report.target.url,
            report.settings.connection.name(),
            report.settings.concurrency
        ),
        rates: vec![
            rate_series("ok / s", colors::OK, |r| r.1),
            rate_series("failed / s", colors::FAILED, |r| r.2),
        ],
        gauges: vec![
            gauge("TIME_WAIT to target", colors::TIME_WAIT, |x| x.time_wait),
            gauge("ESTABLISHED to target", colors::ESTABLISHED, |x| {
                x.established
            }),
        ],
        ceiling: Some((format!("pool size {}", t.pool_size), t.pool_size as f64)),
        marker: first_failure.map(|s| ("first failure".to_string(), s)),
    };
    plot::write_svg(&timeline, path)
}

/// Appends the "Port pool" and "Diagnosis" sections to the text report.
pub fn push_text(s: &mut String, t: &TelemetryReport, p: crate::style::Painter) {
    use crate::render::{fmt_int, push_findings, Detail};
    s.push_str(&format!(
        "\n{}\n",
        p.heading("Port pool (sampled during the run)")
    ));
    match &t.sampler {
        Some(r) => {
            let dest = r
                .destinations
                .first()
                .map_or_else(String::new, |d| d.to_string());
            s.push_str(&format!(
                "  target {dest}: TIME_WAIT peak {}, ESTABLISHED peak {}, SYN_SENT peak {}\n",
                fmt_int(r.peak.time_wait),
                fmt_int(r.peak.established),
                fmt_int(r.peak.syn_sent)
            ));
            let full = r.pool_full_at_ms.map_or_else(
                || "never full".to_string(),
                |ms| format!("full at {:.2} s", ms as f64 / 1000.0),
            );
            s.push_str(&format!(
                "  fullest pool: {} of {} ports ({full}); namespace TIME_WAIT peak {}\n",
                fmt_int(r.peak.max_pool_ports_in_use),
                fmt_int(t.pool_size),
                fmt_int(r.netns_peak.tcp_time_wait)
            ));
            let c = &r.counters_delta;
            s.push_str(&format!(
                "  counters over the run: ActiveOpens +{}  AttemptFails +{}  TWRecycled +{}  ListenOverflows +{}  ListenDrops +{}  TCPTimeWaitOverflow +{}\n",
                fmt_int(c.active_opens),
                fmt_int(c.attempt_fails),
                fmt_int(c.tw_recycled),
                fmt_int(c.listen_overflows),
                fmt_int(c.listen_drops),
                fmt_int(c.tcp_time_wait_overflow)
            ));
            s.push_str(&format!(
                "  {}\n",
                p.dim(&format!(
                    "{} table samples (every {} ms, longest gap {} ms), {} sockstat ticks, sampler busy {} ms",
                    r.samples, r.interval_ms, r.max_dump_gap_ms, r.ticks, r.busy_ms
                ))
            ));
        }
        None => {
            let why = t.sampler_note.as_deref().unwrap_or("no sampler");
            s.push_str(&format!("  {why}\n"));
        }
    }
    push_findings(s, "Diagnosis", &t.diagnosis, Detail::Compact, p);
}
