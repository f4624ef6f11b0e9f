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
    let elapsed = step.elapsed_secs.max(1e-3);
    let per_second = |get: fn(&portlab_lab::LoadSecond) -> u64| -> Vec<(f64, f64)> {
        let buckets: Vec<(u64, u64)> = step
            .load_timeline
            .iter()
            .map(|s| (s.second, get(s)))
            .collect();
        second_steps(&buckets, elapsed)
    };
    let progress_rate = |failed: bool| -> Vec<(f64, f64)> {
        let points: Vec<(u64, u64)> = step
            .load_progress
            .iter()
            .map(|&(ms, done, fails)| {
                (
                    ms,
                    if failed {
                        fails
                    } else {
                        done.saturating_sub(fails)
                    },
                )
            })
            .collect();
        progress_steps(&points)
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

/// Per-second counts as a step line over the whole run: each second's count divided by the
/// part of that second the load ran, drawn from its start to its end — a run shorter than a
/// second is one level from 0 to its end, not one point. A last second covering under a tenth
/// of a second is merged into the one before (its rate would rest on a handful of requests).
fn second_steps(buckets: &[(u64, u64)], elapsed_secs: f64) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64, f64)> = Vec::new(); // (start, end, count)
    for &(second, count) in buckets {
        let start = second as f64;
        let end = (start + 1.0).min(elapsed_secs);
        if end <= start {
            // Counted after the measured end (the last completions): add to the last span.
            if let Some(last) = spans.last_mut() {
                last.2 += count as f64;
            }
            continue;
        }
        spans.push((start, end, count as f64));
    }
    if spans.len() > 1 {
        if let Some(&(start, end, count)) = spans.last() {
            if end - start < 0.1 {
                spans.pop();
                if let Some(prev) = spans.last_mut() {
                    prev.1 = end;
                    prev.2 += count;
                }
            }
        }
    }
    spans
        .iter()
        .flat_map(|&(start, end, count)| {
            let rate = count / (end - start);
            [(start, rate), (end, rate)]
        })
        .collect()
}

/// Rates between cumulative progress points `(ms, count)` (about 10 Hz), as a step line from
/// each window's start to its end. The load publishes its last completions at its end, so a last window much
/// shorter than the others would spike: it is merged into the window before.
fn progress_steps(points: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let mut windows: Vec<(u64, u64, u64)> = points
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| (w[0].0, w[1].0, w[1].1.saturating_sub(w[0].1)))
        .collect();
    if windows.len() > 2 {
        let mut lengths: Vec<u64> = windows.iter().map(|w| w.1 - w.0).collect();
        lengths.sort_unstable();
        let median = lengths[lengths.len() / 2];
        if let Some(&(start, end, count)) = windows.last() {
            if (end - start) * 2 < median {
                // Merged: the window before now ends at `end` and carries both counts.
                windows.pop();
                if let Some(prev) = windows.last_mut() {
                    prev.1 = end;
                    prev.2 += count;
                }
            }
        }
    }
    windows
        .iter()
        .flat_map(|&(start, end, count)| {
            let rate = count as f64 / ((end - start) as f64 / 1000.0);
            [(start as f64 / 1000.0, rate), (end as f64 / 1000.0, rate)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_second_run_is_one_level_over_the_whole_run() {
        let steps = second_steps(&[(0, 400)], 0.5);
        assert_eq!(steps, vec![(0.0, 800.0), (0.5, 800.0)]);
    }

    #[test]
    fn a_sliver_of_a_last_second_joins_the_one_before() {
        // 2.05 s: the third bucket covers 0.05 s with 30 requests (600/s if scaled alone).
        let steps = second_steps(&[(0, 1000), (1, 1000), (2, 30)], 2.05);
        assert_eq!(steps.len(), 4);
        let (end, rate) = steps[3];
        assert!((end - 2.05).abs() < 1e-9);
        assert!((rate - 1030.0 / 1.05).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn counts_after_the_end_go_to_the_last_second() {
        let steps = second_steps(&[(0, 100), (1, 5)], 1.0);
        assert_eq!(steps, vec![(0.0, 105.0), (1.0, 105.0)]);
    }

    #[test]
    fn a_short_last_progress_window_does_not_spike() {
        // 100 ms windows at 1,000/s, then 10 ms holding 50 completions published at the end.
        let points = [(0, 0), (100, 100), (200, 200), (300, 300), (310, 350)];
        let rates = progress_steps(&points);
        assert_eq!(rates.len(), 6);
        assert_eq!(rates[0], (0.0, 1000.0));
        let (t, last) = rates[5];
        assert!((t - 0.31).abs() < 1e-9);
        assert!((last - 150.0 / 0.11).abs() < 1e-6, "{last}");
        assert!(rates.iter().all(|&(_, r)| r < 1400.0), "{rates:?}");
    }
}
