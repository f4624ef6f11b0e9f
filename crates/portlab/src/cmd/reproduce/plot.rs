//! `portlab reproduce --plot DIR`: one SVG timeline per step — ports in use on the client and
//! upstream legs and TIME_WAIT sockets in the sandbox, against the pool size.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use portlab_lab::{StepReport, TimelinePoint};

/// A plotted line: legend, colour, and the value it takes from each sample.
type Series = (&'static str, RGBColor, fn(&TimelinePoint) -> u64);

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
            plot_step(step, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

fn plot_step(step: &StepReport, path: &Path) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let points: Vec<&TimelinePoint> = step.timeline.iter().filter(|p| p.t_ms >= 0).collect();
    let end_secs = points
        .last()
        .map_or(1.0, |p| p.t_ms as f64 / 1000.0)
        .max(0.1);
    let top = points
        .iter()
        .map(|p| {
            p.time_wait
                .max(p.client_ports_used)
                .max(p.upstream_ports_used)
        })
        .max()
        .unwrap_or(0)
        .max(step.pool_ports)
        .max(1) as f64;
    let caption = format!(
        "step {}: {} ({}, {}, c={}) — {} of {} failed",
        step.step,
        step.name,
        step.path.label(),
        step.policy.cli_name(),
        step.concurrency,
        step.failed,
        step.requests
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..end_secs, 0f64..top * 1.08)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("sockets / ports")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    let series: [Series; 3] = [
        ("client leg: ports in use", BLUE, |p| p.client_ports_used),
        ("upstream leg: ports in use", RGBColor(230, 120, 0), |p| {
            p.upstream_ports_used
        }),
        ("TIME_WAIT (whole sandbox)", MAGENTA, |p| p.time_wait),
    ];
    for (name, color, get) in series {
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|p| (p.t_ms as f64 / 1000.0, get(p) as f64)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    let pool = step.pool_ports as f64;
    chart
        .draw_series(LineSeries::new([(0.0, pool), (end_secs, pool)], RED))
        .map_err(|e| err(&e))?
        .label(format!("pool: {} ports per destination", step.pool_ports))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
