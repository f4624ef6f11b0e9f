//! `portlab reproduce --hypotheses`: runs portlab_lab::run_hypotheses and renders its table
//! (mechanism × concurrency, measured and predicted failure shares), the evidence and set-up
//! of each mechanism, and the story.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use portlab_lab::{HypothesesReport, LabConfig, LabEvent};

use crate::exit;
use crate::render::wrap;
use crate::style::Painter;

/// Runs the hypotheses and prints them (text or JSON). Exit 0 when some mechanism reproduced
/// the seed's pattern and every prediction held, 1 otherwise.
pub fn run(
    config: &LabConfig,
    json: bool,
    on_event: &mut dyn FnMut(&LabEvent<'_>),
) -> anyhow::Result<ExitCode> {
    let report = match portlab_lab::run_hypotheses(config, on_event) {
        Ok(r) => r,
        Err(err) => return super::lab_failure(err),
    };
    if json {
        let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
        println!("{text}");
    } else {
        print!("{}", render_text(&report, Painter::for_stdout()));
    }
    let v = &report.verdict;
    Ok(if !v.reproduced_by.is_empty() && v.predictions_hold {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILURE)
    })
}

fn pct(f: f64) -> String {
    if f == 0.0 {
        "0 %".to_string()
    } else {
        format!("{:.1} %", f * 100.0)
    }
}

/// The human report.
pub fn render_text(r: &HypothesesReport, paint: Painter) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}",
        paint.heading("portlab reproduce --hypotheses: why failures at c=50 and not at c=10?")
    );
    let _ = writeln!(
        o,
        "  each step: its own sandbox; every worker paced at {} requests/s for {} s \
         (c × {} requests), as hey's workers each carry n/c",
        r.per_worker_qps,
        r.step_secs,
        r.per_worker_qps * r.step_secs
    );
    let _ = writeln!(o);
    let ladder: Vec<usize> = r
        .mechanisms
        .first()
        .map(|m| m.steps.iter().map(|s| s.concurrency).collect())
        .unwrap_or_default();
    let mut headers = vec!["mechanism".to_string()];
    headers.extend(ladder.iter().map(|c| format!("c={c}")));
    headers.extend(["dominant error".to_string(), "seed's pattern".to_string()]);
    let rows: Vec<Vec<String>> = r
        .mechanisms
        .iter()
        .map(|m| {
            let mut row = vec![m.label.clone()];
            row.extend(m.steps.iter().map(|s| {
                format!(
                    "{} ({})",
                    pct(s.failure_fraction),
                    pct(s.predicted_failure_fraction)
                )
            }));
            row.push(m.dominant_error.clone().unwrap_or_else(|| "-".to_string()));
            row.push(if m.matches_seed_pattern { "yes" } else { "no" }.to_string());
            row
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut text = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            let numeric = i > 0 && i <= ladder.len();
            if numeric {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
            text.push_str("  ");
        }
        text.trim_end().to_string()
    };
    let _ = writeln!(o, "{}", paint.heading(&line(&headers)));
    for (row, m) in rows.iter().zip(&r.mechanisms) {
        let text = line(row);
        let painted = if m.matches_seed_pattern {
            paint.bad(&text)
        } else {
            text
        };
        let _ = writeln!(o, "{painted}");
    }
    let _ = writeln!(
        o,
        " {}",
        paint.dim(
            "failed requests, measured (predicted: portlab simulate or the mechanism's arithmetic)"
        )
    );
    for (title, pick) in [("Evidence", 0usize), ("Set-up and prediction", 1usize)] {
        let _ = writeln!(o, "\n{}", paint.heading(title));
        for m in &r.mechanisms {
            let text = match pick {
                0 => {
                    let off = if m.within_tolerance {
                        String::new()
                    } else {
                        " [measured more than 5 points off the prediction]".to_string()
                    };
                    format!("{}: {}{off}", m.label, m.evidence)
                }
                _ => format!("{}: {}; {}", m.label, m.setup, m.reasoning),
            };
            for (i, l) in wrap(&text, 94).iter().enumerate() {
                let mark = if i == 0 { "-" } else { " " };
                let _ = writeln!(o, "  {mark} {l}");
            }
        }
    }
    let _ = writeln!(o, "\n{}", paint.heading("What tells them apart"));
    for l in wrap(&r.story, 96) {
        let _ = writeln!(o, "  {l}");
    }
    render_remedies(&mut o, r, paint);
    let v = &r.verdict;
    let verdict = match (v.reproduced_by.is_empty(), v.predictions_hold) {
        (false, true) => paint.good(&format!(
            "pattern reproduced by {}; every prediction within 5 points",
            v.reproduced_by.join(", ")
        )),
        (false, false) => paint.warn("pattern reproduced, but a measurement missed its prediction"),
        (true, _) => paint.warn("no mechanism reproduced the pattern in this run"),
    };
    let steps: usize = r.mechanisms.iter().map(|m| m.steps.len()).sum::<usize>() + r.remedies.len();
    let _ = writeln!(o, "\n{verdict} ({steps} steps in {:.1} s)", r.elapsed_secs);
    o
}

fn render_remedies(o: &mut String, r: &HypothesesReport, paint: Painter) {
    if r.remedies.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n{}",
        paint.heading("The seed's remedies on the failing step (rate-limited pool, c=50)")
    );
    let headers = [
        "remedy",
        "failed",
        "short-circuited",
        "retries",
        "connects on empty pool",
        "p50 ms",
        "p99 ms",
        "run s",
        "answered/s",
    ];
    let rows: Vec<[String; 9]> = r
        .remedies
        .iter()
        .map(|s| {
            [
                s.label.clone(),
                format!(
                    "{} ({})",
                    s.failed,
                    pct(s.failed as f64 / s.requests.max(1) as f64)
                ),
                s.short_circuited.to_string(),
                s.retries.to_string(),
                s.pool_failures.to_string(),
                format!("{:.1}", s.latency_p50_ms),
                format!("{:.0}", s.latency_p99_ms),
                format!("{:.1}", s.elapsed_secs),
                format!("{:.0}", s.answered_per_sec),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut text = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if i == 0 {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
            text.push_str("  ");
        }
        text.trim_end().to_string()
    };
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(o, "{}", paint.heading(&line(&head)));
    for row in &rows {
        let _ = writeln!(o, "{}", line(row));
    }
    let _ = writeln!(o);
    for l in wrap(&r.remedy_story, 96) {
        let _ = writeln!(o, "  {l}");
    }
}
