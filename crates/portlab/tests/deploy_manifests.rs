//! The shipped deployment files, validated offline: Kubernetes manifests against the Kubernetes
//! schemas (`kubernetes-validate --strict`, PyPI), the systemd unit with `systemd-analyze
//! verify`, and the files no local validator knows (ServiceMonitor, kubernetes_sd scrape config)
//! parsed as YAML with their load-bearing fields checked.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn check(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (installed by .ci/run)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn kubernetes_manifests_validate_strictly_against_the_schemas() {
    let dir = deploy().join("kubernetes");
    let files = [
        "namespace.yaml",
        "daemonset.yaml",
        "service.yaml",
        "sidecar-example.yaml",
    ];
    let text = check(
        Command::new("kubernetes-validate")
            .args(["--strict", "--no-warn"])
            .args(files.iter().map(|f| dir.join(f))),
    );
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "{text}"
    );
}

#[test]
fn servicemonitor_and_scrape_config_name_the_service_port() {
    let dir = deploy().join("kubernetes");
    // PyYAML comes with kubernetes-validate.
    let script = r#"
import sys, yaml
sm = yaml.safe_load(open(sys.argv[1]))
assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor", sm
assert sm["spec"]["endpoints"][0]["port"] == "metrics", sm
svc = yaml.safe_load(open(sys.argv[2]))
assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"], (sm, svc)
assert svc["spec"]["ports"][0]["name"] == "metrics" and svc["spec"]["ports"][0]["port"] == 7919
cfg = yaml.safe_load(open(sys.argv[3]))
jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
assert "portlab-exporter;metrics" in str(jobs["portlab"]["relabel_configs"]), jobs
print("ok")
"#;
    let text = check(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir.join("servicemonitor.yaml"))
            .arg(dir.join("service.yaml"))
            .arg(dir.join("prometheus-scrape-config.yaml")),
    );
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn systemd_unit_verifies_with_the_built_binary() {
    let unit = std::fs::read_to_string(deploy().join("systemd/portlab-exporter.service"))
        .expect("read the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/portlab exporter"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portlab-exporter.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/portlab", env!("CARGO_BIN_EXE_portlab")),
    )
    .expect("write the unit");
    check(Command::new("systemd-analyze").arg("verify").arg(&path));
}
