//! The real thing end to end: Debian's Prometheus server scraping `portlab exporter` every
//! second inside a test namespace (1,000 ephemeral ports, tcp_tw_reuse=0) with the shipped alert
//! rules, while `portlab load --connection drop` exhausts one destination's pool and a
//! keep-alive run uses another. Checked through Prometheus's HTTP API: the utilisation series of
//! the exhausted destination reached ≥ 0.95 and PortlabDestinationPoolCritical fires for it;
//! the keep-alive destination's series exists and never had an alert, pending or firing.
//!
//! Takes about 75 s: the critical alert has `for: 1m`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::exporter::{get, Answer, Proc, PORTLAB};
use portlab_testkit::NetNs;
use serde_json::Value;

const PROMETHEUS: &str = "127.0.0.1:9090";

/// GET from inside the namespace (its loopback is not the test's).
fn ns_get(ns: &NetNs, addr: SocketAddr, path: &str) -> Answer {
    let path = path.to_string();
    ns.run(move || get(addr, &path))
        .expect("run in the namespace")
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query (empty when the query fails).
fn query(ns: &NetNs, promql: &str) -> Vec<Value> {
    let prom: SocketAddr = PROMETHEUS.parse().expect("addr");
    let answer = ns_get(ns, prom, &format!("/api/v1/query?query={}", encode(promql)));
    serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

fn sample_value(result: &Value) -> f64 {
    result["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Polls `probe` every 200 ms until it returns Some or `deadline` passes.
fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn in_ns(ns: &NetNs, args: &[&str]) -> Command {
    let mut cmd = ns.command(PORTLAB);
    cmd.args(args);
    cmd
}

#[test]
fn prometheus_fires_the_critical_alert_on_an_exhausted_pool_and_not_on_keep_alive() {
    let ns = NetNs::new("exprom").expect("namespace (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let (_drop_target, _) =
        Proc::start_listening(in_ns(&ns, &["serve", "--listen", "127.0.0.1:8080"]));
    let (_keep_target, _) =
        Proc::start_listening(in_ns(&ns, &["serve", "--listen", "127.0.0.1:8081"]));
    let (_exporter, exporter) = Proc::start_listening(in_ns(
        &ns,
        &[
            "exporter",
            "--listen",
            "127.0.0.1:7919",
            "--destination",
            "127.0.0.1:8081",
        ],
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/portlab-alerts.yml"
    );
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         rule_files: [{rules:?}]\n\
         scrape_configs:\n  - job_name: portlab\n    static_configs: [{{targets: [\"{exporter}\"]}}]\n"
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write config");
    let _prometheus = Proc {
        child: ns
            .command("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package prometheus)"),
    };
    let prom: SocketAddr = PROMETHEUS.parse().expect("addr");
    wait_for("Prometheus ready", Duration::from_secs(60), || {
        let ready = ns.run(move || {
            std::net::TcpStream::connect(prom).is_ok() && get(prom, "/-/ready").status == 200
        });
        ready.ok().filter(|r| *r)
    });
    wait_for(
        "a first scrape of the exporter",
        Duration::from_secs(30),
        || query(&ns, "up{job=\"portlab\"} == 1").first().cloned(),
    );

    // Exhaustion: the client closes each connection, so every request leaves a TIME_WAIT entry
    // on the client's 1,000 ports towards :8080 for 60 s; at 300/s the pool is full within
    // seconds and stays full while the load runs (bounded at 120 s; killed when done), apart
    // from the dip when the first burst of TIME_WAIT entries expires together 60 s later —
    // which the shipped rule rides out (max_over_time).
    let _exhaust = Proc {
        child: in_ns(
            &ns,
            &[
                "load",
                "--connection",
                "drop",
                "--rate",
                "300",
                "-c",
                "4",
                "-z",
                "120s",
                "--no-sample",
                "http://127.0.0.1:8080/",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the drop load"),
    };
    // Keep-alive to :8081 meanwhile: 5 connections carry every request.
    let keep = in_ns(
        &ns,
        &[
            "load",
            "--connection",
            "keep-alive",
            "--rate",
            "200",
            "-c",
            "5",
            "-z",
            "5s",
            "--json",
            "http://127.0.0.1:8081/",
        ],
    )
    .output()
    .expect("keep-alive load");
    assert_eq!(
        keep.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&keep.stderr)
    );

    let alert = wait_for(
        "PortlabDestinationPoolCritical firing for 127.0.0.1:8080",
        Duration::from_secs(150),
        || {
            let answer = ns_get(&ns, prom, "/api/v1/alerts");
            let alerts: Value = serde_json::from_str(&answer.body).ok()?;
            alerts["data"]["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "PortlabDestinationPoolCritical"
                        && a["labels"]["dst_port"] == "8080"
                        && a["state"] == "firing"
                })
                .cloned()
        },
    );
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["dst_ip"], "127.0.0.1");
    let description = alert["annotations"]["description"].as_str().unwrap_or("");
    // 1,000 ports ÷ 60 s TIME_WAIT (tcp_tw_reuse=0) ≈ 17 new connections/s.
    assert!(
        description.contains("Sustainable rate about 17 new connections/s"),
        "{description}"
    );

    let peak = query(
        &ns,
        "max_over_time(portlab_destination_port_utilization_ratio{dst_ip=\"127.0.0.1\",dst_port=\"8080\"}[5m])",
    );
    assert_eq!(peak.len(), 1, "{peak:?}");
    assert!(sample_value(&peak[0]) >= 0.95, "{peak:?}");

    // The keep-alive destination was scraped (allow-listed) and never alerted, not even pending.
    let keep_peak = query(
        &ns,
        "max_over_time(portlab_destination_port_utilization_ratio{dst_port=\"8081\"}[5m])",
    );
    assert_eq!(keep_peak.len(), 1, "{keep_peak:?}");
    assert!(sample_value(&keep_peak[0]) < 0.05, "{keep_peak:?}");
    let keep_in_use = query(
        &ns,
        "max_over_time(portlab_destination_ports_in_use{dst_port=\"8081\",state=\"established\"}[5m])",
    );
    assert!(
        keep_in_use.first().is_some_and(|v| sample_value(v) >= 1.0),
        "{keep_in_use:?}"
    );
    let keep_alerts = query(&ns, "count_over_time(ALERTS{dst_port=\"8081\"}[10m])");
    assert!(
        keep_alerts.is_empty(),
        "keep-alive pool alerted: {keep_alerts:?}"
    );
}
