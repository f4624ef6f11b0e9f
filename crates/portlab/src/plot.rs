//! SVG timelines (plotters): rates per second on top, socket gauges below with the pool size
//! as a ceiling line and the first failure marked. Shared by `load --plot`, `simulate --plot`
//! and `reproduce --plot`.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Line colour.
    pub color: RGBColor,
    /// (second, value) points.
    pub points: Vec<(f64, f64)>,
}

/// Colours used across portlab's charts.
pub mod colors {
    use plotters::style::RGBColor;
    /// Successful requests.
    pub const OK: RGBColor = RGBColor(34, 139, 34);
    /// Failures.
    pub const FAILED: RGBColor = RGBColor(200, 30, 30);
    /// TIME_WAIT.
    pub const TIME_WAIT: RGBColor = RGBColor(160, 40, 160);
    /// ESTABLISHED / ports in use.
    pub const ESTABLISHED: RGBColor = RGBColor(30, 30, 30);
    /// The pool-size ceiling.
    pub const CEILING: RGBColor = RGBColor(230, 120, 0);
}

/// A two-panel timeline.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Caption over the chart.
    pub title: String,
    /// Top panel: per-second rates.
    pub rates: Vec<Series>,
    /// Bottom panel: socket counts.
    pub gauges: Vec<Series>,
    /// Horizontal line in the bottom panel (label, value), e.g. the pool size.
    pub ceiling: Option<(String, f64)>,
    /// Vertical line on both panels (label, second), e.g. the first failure.
    pub marker: Option<(String, f64)>,
}

fn max_y(series: &[Series]) -> f64 {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
}

fn max_x(series: &[Series]) -> f64 {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max)
}

/// Writes the timeline as an SVG file.
///
/// # Errors
/// When the file cannot be written.
pub fn write_svg(timeline: &Timeline, path: &Path) -> anyhow::Result<()> {
    draw(timeline, path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn draw(t: &Timeline, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&t.title, ("sans-serif", 18))?;
    let (top, bottom) = root.split_vertically(340);
    let last = max_x(&t.rates).max(max_x(&t.gauges));
    // Room after the last point: a tenth for short runs, a second for long ones.
    let seconds = if last <= 10.0 {
        (last * 1.1).max(0.5)
    } else {
        last + 1.0
    };
    let ceiling = t.ceiling.as_ref().map_or(0.0, |c| c.1);
    panel(
        &top,
        "requests / connections per second",
        &t.rates,
        seconds,
        max_y(&t.rates),
        None,
        t.marker.as_ref(),
    )?;
    panel(
        &bottom,
        "sockets to the target",
        &t.gauges,
        seconds,
        max_y(&t.gauges).max(ceiling),
        t.ceiling.as_ref(),
        t.marker.as_ref(),
    )?;
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    y_desc: &str,
    series: &[Series],
    seconds: f64,
    y_max: f64,
    ceiling: Option<&(String, f64)>,
    marker: Option<&(String, f64)>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let y_top = (y_max * 1.1).max(1.0);
    // Short runs: hundredths or tenths of a second on the axis (and dots, below, so single
    // points show).
    let decimals = if seconds <= 2.0 {
        2
    } else if seconds <= 10.0 {
        1
    } else {
        0
    };
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..y_top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.decimals$}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if s.points.len() <= 60 {
            chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
    }
    if let Some((label, value)) = ceiling {
        let color = colors::CEILING;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, *value), (seconds, *value)],
                8,
                5,
                color.stroke_width(2),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some((label, second)) = marker {
        let color = colors::FAILED;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(*second, 0.0), (*second, y_top)],
                4,
                4,
                color.stroke_width(1),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y - 6), (x, y + 6)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, color: RGBColor, values: &[f64]) -> Series {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, *v))
            .collect();
        Series {
            name: name.to_string(),
            color,
            points,
        }
    }

    #[test]
    fn writes_an_svg_with_every_series_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.svg");
        let timeline = Timeline {
            title: "test".into(),
            rates: vec![
                series("ok", colors::OK, &[10.0, 20.0, 5.0]),
                series("failed", colors::FAILED, &[0.0, 0.0, 30.0]),
            ],
            gauges: vec![series("TIME_WAIT", colors::TIME_WAIT, &[10.0, 30.0, 35.0])],
            ceiling: Some(("pool size 35".into(), 35.0)),
            marker: Some(("first failure".into(), 1.5)),
        };
        write_svg(&timeline, &path).expect("writes");
        let svg = std::fs::read_to_string(&path).expect("read");
        for label in [
            "ok",
            "failed",
            "TIME_WAIT",
            "pool size 35",
            "first failure",
            "test",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
