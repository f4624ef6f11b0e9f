//! deploy/kubernetes/load-job.yaml is a valid Indexed Job for the Kubernetes versions it
//! claims (checked offline against the bundled OpenAPI schemas of the PyPI package
//! `kubernetes-validate`, which .ci/run installs), its completions, parallelism and
//! `--segments` agree, and its container arguments are a `portlab load` command line this
//! build accepts.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/kubernetes/load-job.yaml"
);

/// Oldest version the manifest supports (backoffLimitPerIndex is beta, on by default, from
/// 1.29) and the validator's newest.
const VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

#[test]
fn load_job_validates_against_the_kubernetes_schemas() {
    for version in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version, MANIFEST])
            .output()
            .unwrap_or_else(|e| {
                panic!("kubernetes-validate not runnable ({e}): pip install kubernetes-validate (see .ci/run)")
            });
        assert!(
            out.status.success(),
            "Kubernetes {version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn field(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not in the manifest"))
        .trim()
        .to_string()
}

#[test]
fn load_job_arguments_are_a_load_command_this_build_accepts() {
    let text = std::fs::read_to_string(Path::new(MANIFEST)).expect("manifest");
    assert_eq!(field(&text, "completionMode:"), "Indexed");
    let completions = field(&text, "completions:");
    assert_eq!(field(&text, "parallelism:"), completions);
    // The args line is a flow sequence of double-quoted strings: JSON.
    let args: Vec<String> = serde_json::from_str::<Value>(&field(&text, "args:"))
        .expect("args as JSON")
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    let segments = args
        .iter()
        .position(|a| a == "--segments")
        .map(|i| args[i + 1].clone());
    assert_eq!(segments.as_deref(), Some(completions.as_str()));
    // A start far ahead stops the run right after the flags are parsed and split, with its
    // own message: everything before it was accepted.
    let argv: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("$(START_AT)", "2999-01-01T00:00:00Z")
                .replace("$(TARGET)", "http://127.0.0.1:9/")
        })
        .collect();
    let n: u32 = completions.parse().expect("number");
    for (index, expected) in [
        (0, "more than a day ahead"),
        (n - 1, "more than a day ahead"),
        (n, "out of range"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portlab"))
            .args(&argv)
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .output()
            .expect("portlab");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "index {index}: {err}");
    }
}
