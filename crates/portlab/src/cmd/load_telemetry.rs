//! What `portlab load` adds beside the engine, on the binary's side: the telemetry flags, the
//! SVG plot and the text sections. The sampler, the joined timeline and the diagnosis of the run
//! live in `portlab_pipeline::load`, shared with the other commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use portlab_load::{LoadReport, Plan};
use portlab_pipeline::{load::first_failure_ms, TelemetryConfig};
pub use portlab_pipeline::{Telemetry, TelemetryReport};

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

/// Reads the settings and starts the sampler towards the plan's target (unless --no-sample).
///
/// # Errors
/// When the settings cannot be read.
pub fn start(args: &TelemetryArgs, plan: &Plan) -> anyhow::Result<(Telemetry, Option<String>)> {
    let config = TelemetryConfig {
        sample: !args.no_sample,
        sample_interval: args.sample_interval,
    };
    Telemetry::start(&config, plan.target.addr).context("reading the port-pool settings")
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
                    "{} table samples (every {} ms, longest gap {} ms), {} sockstat ticks, sampler busy {} ms, CPU {:.1} ms",
                    r.samples,
                    r.interval_ms,
                    r.max_dump_gap_ms,
                    r.ticks,
                    r.busy_ms,
                    r.cpu_us as f64 / 1000.0
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
