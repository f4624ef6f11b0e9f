//! `portlab exporter --trace` against a process that is not portlab: a python3 loop in a
//! namespace made by the test (1,000 ephemeral ports, tcp_tw_reuse=0) exhausts its pool toward
//! one destination; /metrics must show exactly that process's own EADDRNOTAVAIL failures and
//! successes under the names the shipped alert PortlabConnectAddrNotAvail uses, and promtool
//! must accept the output, and the shipped Grafana dashboard must chart only what is served.
//! Needs root, iproute2, python3 and promtool.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::exporter::{
    check_grafana_dashboard, get, parse, promtool_check_metrics, value, Proc, PORTLAB,
};
use common::trace::{exhaustible_namespace, listen, serial, CHURN};
use portlab_testkit::wait_until;
use serde_json::Value;

#[test]
fn exporter_trace_counts_a_python_loops_own_failures_and_successes() {
    let ns = exhaustible_namespace("exptr");
    let listener = ns
        .run(|| listen("127.0.0.1:8080", 4096))
        .expect("enter netns")
        .expect("bind");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.read_to_end(&mut Vec::new());
        }
    });
    let _serial = serial();
    let netns = format!("/var/run/netns/{}", ns.name());
    let mut cmd = Command::new(PORTLAB);
    cmd.args([
        "exporter",
        "--listen",
        "127.0.0.1:0",
        "--trace",
        "--netns",
        &netns,
    ]);
    // The listening line comes after the tracer attached.
    let (_exp, addr) = Proc::start_listening(cmd);

    let out = ns
        .command("python3")
        .arg("-c")
        .arg(CHURN)
        .args(["8080", "1300"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counts: Value = serde_json::from_str(stdout.trim()).expect("python3 JSON");
    let ok = counts["ok"].as_u64().expect("ok") as f64;
    let ana = counts["eaddrnotavail"].as_u64().expect("eaddrnotavail") as f64;
    assert_eq!(counts["other"], 0, "{counts}");
    assert_eq!((ok, ana), (1000.0, 300.0), "the pool has 1,000 ports");

    let dst = [("dst_ip", "127.0.0.1"), ("dst_port", "8080")];
    let failures = |s: &_| {
        value(
            s,
            "portlab_connect_failures_total",
            &[dst[0], dst[1], ("errno", "EADDRNOTAVAIL")],
        )
    };
    // The tracer orders events for ~100 ms before they count: wait for them, with a deadline.
    let mut body = String::new();
    let settled = wait_until(Duration::from_secs(10), || {
        body = get(addr, "/metrics").body;
        let s = parse(&body);
        failures(&s) == Some(ana)
            && value(&s, "portlab_connections_opened_total", &dst) == Some(ok)
            && value(&s, "portlab_time_wait_entered_total", &dst) == Some(ok)
    });
    let samples = parse(&body);
    assert!(
        settled,
        "metrics never matched the process's counts {counts}:\n{body}"
    );
    // Exactly, not at least: nothing else in the namespace, no double counting.
    assert_eq!(failures(&samples), Some(ana));
    assert_eq!(
        value(
            &samples,
            "portlab_failed_port_search_duration_seconds_count",
            &[]
        ),
        Some(ana)
    );
    assert_eq!(
        value(&samples, "portlab_trace_lost_events_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "portlab_connect_failures_total",
            &[("dst_ip", "other"), ("errno", "EADDRNOTAVAIL")]
        ),
        None,
        "one destination, nothing folded: {body}"
    );
    assert!(body.contains("# TYPE portlab_connect_failures_total counter"));
    assert!(body.contains("# TYPE portlab_failed_port_search_duration_seconds histogram"));
    assert!(!body.contains("{}"), "no empty label sets");
    promtool_check_metrics(&body);
    // With the tracer on, every family the shipped dashboard charts is served.
    check_grafana_dashboard(&body);
}

#[test]
fn trace_without_privileges_or_with_a_stray_flag_is_one_line_and_exit_2() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            PORTLAB,
            "exporter",
            "--listen",
            "127.0.0.1:0",
            "--trace",
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CAP_PERFMON") && err.contains("root"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "no listening line before the failure"
    );
}
