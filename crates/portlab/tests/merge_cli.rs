//! `portlab load --segment` and `portlab merge` as a user runs them on one host (loopback):
//! segments take exact shares, `--start-at` starts at the given wall-clock time, the merged
//! JSON follows docs/load-report.schema.json, and bad input — a truncated file, another
//! command's output, mismatched reports, bad segment flags — is one line naming the problem and
//! exit 2. The many-namespace runs are in `distributed.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

#[path = "common/schema.rs"]
mod schema;

fn portlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portlab"))
        .args(args)
        .output()
        .expect("run portlab")
}

/// `portlab serve` on a free loopback port, stopped by PID on drop; keeps its listening line.
struct Serve {
    child: Child,
    url: String,
    listening_line: String,
}

impl Serve {
    fn start() -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portlab"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portlab serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let event: Value = serde_json::from_str(&line).expect("listening event");
        let addr = event["address"].as_str().expect("address").to_string();
        Serve {
            child,
            url: format!("http://{addr}/"),
            listening_line: line,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// Asserts exit 2 and one stderr line that contains `needle`.
fn assert_usage(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn segments_take_exact_shares_and_merge_follows_the_schema() {
    let server = Serve::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = server.url.as_str();
    let first = json_of(&portlab(&[
        "load",
        "--segment",
        "0/2",
        "-n",
        "1001",
        "-c",
        "3",
        "--json",
        url,
    ]));
    let second = Command::new(env!("CARGO_BIN_EXE_portlab"))
        .args([
            "load",
            "--segments",
            "2",
            "-n",
            "1001",
            "-c",
            "3",
            "--json",
            url,
        ])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .expect("portlab");
    let second = json_of(&second);
    assert_eq!(first["summary"]["requests"], 501);
    assert_eq!(first["settings"]["concurrency"], 2);
    assert_eq!(second["summary"]["requests"], 500);
    assert_eq!(second["settings"]["concurrency"], 1);
    assert_eq!(second["agent"]["segment"]["index"], 1);
    assert_eq!(second["agent"]["segment"]["count"], 2);
    assert_eq!(first["agent"]["source_ips"][0], "127.0.0.1");
    assert!(first["started_at_unix_secs"].as_f64().unwrap_or(0.0) > 1.7e9);
    let schema = schema::load_report_schema();
    schema::check(&schema, &schema, &first, "$");

    let a = write(dir.path(), "a.json", &first.to_string());
    let b = write(dir.path(), "b.json", &second.to_string());
    let (a, b) = (a.to_str().expect("path"), b.to_str().expect("path"));
    let out = portlab(&["merge", "--json", a, b]);
    assert_eq!(out.status.code(), Some(0));
    let merged = json_of(&out);
    schema::check(&schema, &schema, &merged, "$");
    assert_eq!(merged["summary"]["requests"], 1001);
    assert_eq!(merged["settings"]["concurrency"], 3);
    assert_eq!(merged["agent"], Value::Null);
    assert_eq!(merged["merge"]["reports"], 2);
    assert_eq!(merged["merge"]["missing_segments"], serde_json::json!([]));
    let text = String::from_utf8(portlab(&["merge", a, b]).stdout).expect("utf-8");
    assert!(
        text.contains("Agents (2 reports, 2 of 2 segments):"),
        "{text}"
    );
    assert!(
        text.contains("1001 requests: 1001 succeeded, 0 failed"),
        "{text}"
    );

    // One report alone: merged, with the missing segment said.
    let alone = json_of(&portlab(&["merge", "--json", a]));
    assert_eq!(alone["merge"]["missing_segments"], serde_json::json!([1]));

    // Bad input: one line naming the file, exit 2.
    let full = first.to_string();
    let cut = write(dir.path(), "cut.json", &full[..full.len() / 2]);
    assert_usage(
        &portlab(&["merge", a, cut.to_str().expect("path")]),
        "cut.json: truncated JSON",
    );
    let other = write(dir.path(), "serve.json", &server.listening_line);
    assert_usage(
        &portlab(&["merge", a, other.to_str().expect("path")]),
        "serve.json: not a `portlab load --json` report",
    );
    let mut moved = second.clone();
    moved["target"]["url"] = Value::from("http://127.0.0.1:9/elsewhere");
    let moved = write(dir.path(), "moved.json", &moved.to_string());
    let moved = moved.to_str().expect("path");
    assert_usage(
        &portlab(&["merge", a, moved]),
        "moved.json: target GET http://127.0.0.1:9/elsewhere differs",
    );
    let forced = portlab(&["merge", "--json", "--force", a, moved]);
    assert_eq!(forced.status.code(), Some(0));
    let forced = json_of(&forced);
    assert_eq!(forced["merge"]["forced"], true);
    assert_eq!(forced["merge"]["missing_segments"], serde_json::json!([]));
    assert_eq!(forced["summary"]["requests"], 1001);
    let mut old = second.clone();
    old["schema_version"] = Value::from(1);
    let old = write(dir.path(), "old.json", &old.to_string());
    assert_usage(
        &portlab(&["merge", a, old.to_str().expect("path")]),
        "old.json: schema_version 1",
    );
    assert_usage(&portlab(&["merge", a, a]), "segment 0/2 is also");
    assert_usage(
        &portlab(&["merge", &format!("{a}.missing")]),
        "a.json.missing: cannot read",
    );
    let merged_file = write(dir.path(), "merged.json", &merged.to_string());
    assert_usage(
        &portlab(&["merge", merged_file.to_str().expect("path")]),
        "merged.json: is a merged report already",
    );
}

#[test]
fn bad_segment_and_start_flags_are_one_line_and_exit_2() {
    let url = "http://127.0.0.1:9/";
    for (args, needle) in [
        (&["--segment", "4/4"][..], "out of range"),
        (&["--segment", "x"][..], "bad segment"),
        (&["--segments", "4"][..], "JOB_COMPLETION_INDEX"),
        (
            &["--segment", "0/4", "-c", "2"][..],
            "-c 2 cannot be split over 4 agents",
        ),
        (&["--start-at", "tomorrow"][..], "bad --start-at"),
        (
            &["--start-at", "2999-01-01T00:00:00Z"][..],
            "more than a day ahead",
        ),
    ] {
        let mut argv = vec!["load"];
        argv.extend_from_slice(args);
        argv.push(url);
        let out = Command::new(env!("CARGO_BIN_EXE_portlab"))
            .args(&argv)
            .env_remove("JOB_COMPLETION_INDEX")
            .output()
            .expect("portlab");
        assert_usage(&out, needle);
    }
}

#[test]
fn start_at_starts_at_the_given_wall_clock_time() {
    let server = Serve::start();
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1200);
    let report = json_of(&portlab(&[
        "load",
        "--start-at",
        &at.to_string(),
        "-n",
        "50",
        "-c",
        "1",
        "--json",
        &server.url,
    ]));
    let wanted = at.as_millisecond() as f64 / 1000.0;
    let started = report["started_at_unix_secs"].as_f64().expect("start");
    assert!(
        started >= wanted && started < wanted + 0.5,
        "started {started}, asked {wanted}"
    );
    let late = report["agent"]["start_late_ms"].as_f64().expect("late");
    assert!((0.0..500.0).contains(&late), "late by {late} ms");
}
