//! `portlab reproduce --plot DIR`: one SVG timeline per step through the shared chart
//! (`crate::plot`): the load tester's requests and new connections per second on top; ports in
//! use on the client and upstream legs and TIME_WAIT in the sandbox below, against the pool.

use std::path::{Path, PathBuf};

use anyhow::Context;
use portlab_lab::{StepReport, TimelinePoint};

use crate::plot::{colors, write_svg, Series, Timeline};

/// Writes `DIR/step-N.svg` for every step; returns the paths written.
///
/// # Errors
/// The directory cannot be created or a file cannot be written.
pub fn write_all(steps: &[StepReport], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    steps
        .iter()
        .map(|step| {
            let path = dir.join(format!("step-{}.svg", step.step));
            write_svg(&timeline(step), &path)?;
            Ok(path)
        })
        .collect()
}

fn timeline(step: &StepReport) -> Timeline {
    // Per-second counts as rates over the part of each second the load ran, at its middle:
    // most steps last under a second, where "per second" would otherwise be one point at 1 s.
    let elapsed = step.elapsed_secs.max(1e-3);
    let per_second = |get: fn(&portlab_lab::LoadSecond) -> u64| -> Vec<(f64, f64)> {
        step.load_timeline
            .iter()
            .filter_map(|s| {
                let start = s.second as f64;
                let len = (start + 1.0).min(elapsed) - start;
                (len > 0.0).then(|| (start + len / 2.0, get(s) as f64 / len))
            })
            .collect()
    };
    // Rates between the load's progress points (about 10 Hz) when it reported them.
    let progress_rate = |failed: bool| -> Vec<(f64, f64)> {
        step.load_progress
            .windows(2)
            .filter_map(|w| {
                let dt = w[1].0.checked_sub(w[0].0).filter(|d| *d > 0)? as f64 / 1000.0;
                let fails = w[1].2.saturating_sub(w[0].2) as f64;
                let done = w[1].1.saturating_sub(w[0].1) as f64;
                let v = if failed {
                    fails
                } else {
                    (done - fails).max(0.0)
                };
                Some((w[1].0 as f64 / 1000.0, v / dt))
            })
            .collect()
    };
    let fine = step.load_progress.len() > 2;
    let samples: Vec<&TimelinePoint> = step.timeline.iter().filter(|p| p.t_ms >= 0).collect();
    let gauge = |get: fn(&TimelinePoint) -> u64| -> Vec<(f64, f64)> {
        samples
            .iter()
            .map(|p| (p.t_ms as f64 / 1000.0, get(p) as f64))
            .collect()
    };
    let mut gauges = vec![
        Series {
            name: "client leg: ports in use".to_string(),
            color: colors::ESTABLISHED,
            points: gauge(|p| p.client_ports_used),
        },
        Series {
            name: "TIME_WAIT (whole sandbox)".to_string(),
            color: colors::TIME_WAIT,
            points: gauge(|p| p.time_wait),
        },
    ];
    if step.upstream.is_some() {
        gauges.push(Series {
            name: "upstream leg: ports in use".to_string(),
            color: plotters::style::RGBColor(40, 90, 200),
            points: gauge(|p| p.upstream_ports_used),
        });
    }
    Timeline {
        title: format!(
            "step {}: {} ({}, {}, c={}) — {} of {} failed",
            step.step,
            step.name,
            step.path.label(),
            step.policy.cli_name(),
            step.concurrency,
            step.failed,
            step.requests
        ),
        rates: vec![
            Series {
                name: "answered/s".to_string(),
                color: colors::OK,
                points: if fine {
                    progress_rate(false)
                } else {
                    per_second(|s| s.succeeded)
                },
            },
            Series {
                name: "failed/s".to_string(),
                color: colors::FAILED,
                points: if fine {
                    progress_rate(true)
                } else {
                    per_second(|s| s.failed)
                },
            },
            Series {
                name: "new connections/s".to_string(),
                color: colors::ESTABLISHED,
                points: per_second(|s| s.new_connections),
            },
        ],
        gauges,
        ceiling: Some((
            format!("pool: {} ports per destination", step.pool_ports),
            step.pool_ports as f64,
        )),
        marker: step
            .pool_full_after_secs
            .map(|t| ("pool full".to_string(), t)),
    }
}
