//! `portlab model` and `portlab simulate` end to end: JSON fields, text report, plot, exit codes.

use std::process::{Command, Output};

fn portlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portlab"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run portlab")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = portlab(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn model_json_gives_the_seed_numbers() {
    let linux = json(&["model", "--tw-reuse", "0", "--json"]);
    let folk = linux["capacity"]["folk"]["rate_per_sec"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((folk - 470.533).abs() < 0.001, "{folk}");
    assert_eq!(linux["capacity"]["ports_per_pool"], 28_232);
    let windows = json(&["model", "--os", "windows-legacy", "--json"]);
    let folk = windows["capacity"]["folk"]["rate_per_sec"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((folk - 16.567).abs() < 0.001, "{folk}");
    assert_eq!(windows["profile"]["scope"], "global");
}

#[test]
fn model_text_explains_why_the_folk_formula_is_off() {
    let out = portlab(&[
        "model",
        "--destinations",
        "2",
        "--loopback",
        "-c",
        "50",
        "--latency",
        "1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("why they differ"), "{text}");
    assert!(text.contains("2 independent pools"), "{text}");
    assert!(text.contains("tcp_tw_reuse=2"), "{text}");
    assert!(text.contains("Churn"), "{text}");
}

#[test]
fn simulate_json_matches_the_closed_form_case() {
    let v = json(&[
        "simulate",
        "--range",
        "40000-40999",
        "--tw-reuse",
        "0",
        "-c",
        "1",
        "--latency",
        "1",
        "--connection",
        "drop",
        "-n",
        "3000",
        "--json",
    ]);
    let sim = &v["simulation"];
    assert_eq!(sim["totals"]["successes"], 1000);
    assert_eq!(sim["totals"]["addr_not_available"], 2000);
    assert_eq!(sim["first_failure_secs"], 1.0);
    assert_eq!(v["prediction"]["churn"]["time_to_exhaustion_secs"], 1.0);
    assert!(sim["timeline"].as_array().is_some_and(|t| t.len() == 2));
}

#[test]
fn simulate_writes_an_svg_plot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("timeline.svg");
    let path_text = path.to_string_lossy().to_string();
    let out = portlab(&[
        "simulate",
        "--range",
        "40000-40099",
        "--tw-reuse",
        "0",
        "--rate",
        "20",
        "--duration",
        "30s",
        "--plot",
        &path_text,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&path).expect("plot written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    assert!(svg.contains("EADDRNOTAVAIL") && svg.contains("TIME_WAIT"));
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    for args in [
        &["model", "--range", "5000-1000"][..],
        &["model", "--os", "plan9"],
        &["model", "--tw-reuse", "3"],
        &["model", "--time-wait", "soon"],
        &["simulate", "-c", "4"],
        &["simulate", "-c", "0", "-n", "10"],
        &["simulate", "--rate", "-5", "-n", "10"],
        &["model", "--os", "windows", "--from-host"],
        &["simulate", "-c", "2", "-n", "10", "--poisson"],
    ] {
        let out = portlab(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("portlab: "), "{args:?}: {err}");
    }
}

#[test]
fn fill_curve_json_has_the_cliff_past_half() {
    let v = json(&[
        "simulate",
        "--range",
        "40000-49999",
        "--fill-curve",
        "--fills",
        "20,60",
        "--json",
    ]);
    let points = v["fill_curve"]["points"].as_array().expect("points");
    assert_eq!(points.len(), 2);
    let low = points[0]["connect_us"].as_f64().unwrap();
    let high = points[1]["connect_us"].as_f64().unwrap();
    assert!(low < 50.0 && high > 600.0, "{low} {high}");
    assert_eq!(points[1]["skipped_p50"].as_f64(), Some(5000.0));
    let rps = points[1]["requests_per_sec"].as_f64().unwrap();
    assert!((600.0..1500.0).contains(&rps), "{rps}");
    assert_eq!(v["fill_curve"]["cliff"]["kind"], "at-half");
    let model = json(&["model", "--range", "40000-49999", "--json"]);
    assert_eq!(model["slow_connect_cliff"]["fill_pct"].as_f64(), Some(50.0));
}

#[test]
fn fill_curve_refuses_bad_input_in_one_line() {
    for args in [
        &["simulate", "--fill-curve", "--fills", "100"][..],
        &["simulate", "--fill-curve", "--fill-order", "sideways"][..],
        &["simulate", "--fill-curve", "-c", "50"][..],
        &["simulate", "--fill-curve", "--os", "windows"][..],
        &["simulate", "--fill-curve", "--scan-per-port-us", "-1"][..],
    ] {
        let out = portlab(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
