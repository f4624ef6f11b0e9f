//! `portlab exporter` as a process: what /metrics serves (format, promtool's verdict), that its
//! values equal `portlab ports --json` for the same namespace, the failed scrape and its retry,
//! one-line usage errors, and the shipped alert rules under promtool.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::exporter::{get, parse, promtool_check_metrics, value, Proc, PORTLAB};
use portlab_testkit::{wait_until, NetNs};
use serde_json::Value;

fn exporter(args: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(PORTLAB);
    cmd.args(["exporter", "--listen", "127.0.0.1:0"]).args(args);
    Proc::start_listening(cmd)
}

/// Sockets held in a namespace: established connections to one port, client-closed ones (in
/// TIME_WAIT) to another. Returned so they stay open.
struct Held {
    _listeners: Vec<TcpListener>,
    _established: Vec<TcpStream>,
}

fn hold_sockets(ns: &NetNs, established: usize, time_wait: usize) -> Held {
    ns.run(move || {
        let a = TcpListener::bind("127.0.0.1:7000").expect("bind 7000");
        let b = TcpListener::bind("127.0.0.1:7001").expect("bind 7001");
        let held: Vec<TcpStream> = (0..established)
            .map(|_| TcpStream::connect("127.0.0.1:7000").expect("connect 7000"))
            .collect();
        for _ in 0..time_wait {
            let client = TcpStream::connect("127.0.0.1:7001").expect("connect 7001");
            let (server, _) = b.accept().expect("accept");
            drop(client); // the client closes first: TIME_WAIT lands on its side
            drop(server);
        }
        Held {
            _listeners: vec![a, b],
            _established: held,
        }
    })
    .expect("run in the namespace")
}

fn pool_namespace(prefix: &str) -> NetNs {
    let ns = NetNs::new(prefix).expect("namespace (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    ns
}

#[test]
fn metrics_equal_ports_json_for_the_watched_namespace() {
    let ns = pool_namespace("expeq");
    let _held = hold_sockets(&ns, 30, 20);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = ns
                .command("ss")
                .args(["-Htan", "state", "time-wait"])
                .output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().count() == 20)
        }),
        "20 TIME_WAIT sockets in the namespace"
    );
    let netns = format!("/var/run/netns/{}", ns.name());
    // The exporter listens in this (the test's) namespace and watches the other one.
    let (_exp, addr) = exporter(&["--netns", &netns, "--top", "1000", "--floor", "0"]);
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let samples = parse(&answer.body);
    let out = ns
        .command(PORTLAB)
        .args(["ports", "--json"])
        .output()
        .expect("ports");
    let ports: Value = serde_json::from_slice(&out.stdout).expect("ports JSON");

    assert_eq!(
        value(&samples, "portlab_ephemeral_ports", &[]),
        ports["usable_ephemeral_ports"].as_f64()
    );
    assert_eq!(
        value(&samples, "portlab_ephemeral_ports", &[]),
        Some(1000.0)
    );
    assert_eq!(value(&samples, "portlab_tcp_tw_reuse", &[]), Some(0.0));
    let pools = ports["snapshot"]["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 2, "{pools:?}");
    assert_eq!(
        value(&samples, "portlab_destinations", &[]),
        Some(pools.len() as f64)
    );
    assert_eq!(
        value(&samples, "portlab_destinations_folded", &[]),
        Some(0.0)
    );
    for pool in pools {
        let dst: SocketAddr = pool["destination"]
            .as_str()
            .expect("dst")
            .parse()
            .expect("addr");
        let (ip, port) = (dst.ip().to_string(), dst.port().to_string());
        let src = pool["local_ip"].as_str().expect("src");
        let labels = [
            ("src_ip", src),
            ("dst_ip", ip.as_str()),
            ("dst_port", port.as_str()),
        ];
        for (state, field) in [
            ("established", "established"),
            ("time_wait", "time_wait"),
            ("syn_sent", "syn_sent"),
            ("other", "other"),
        ] {
            let mut with_state = labels.to_vec();
            with_state.push(("state", state));
            assert_eq!(
                value(&samples, "portlab_destination_ports_in_use", &with_state),
                pool[field].as_f64(),
                "{dst} {state}"
            );
        }
        assert_eq!(
            value(
                &samples,
                "portlab_destination_port_utilization_ratio",
                &labels
            ),
            pool["utilisation"].as_f64(),
            "{dst}"
        );
        assert_eq!(
            value(
                &samples,
                "portlab_destination_max_new_connections_per_second",
                &labels
            ),
            pool["headroom"]["sustainable_rate_per_sec"].as_f64(),
            "{dst}"
        );
    }
    assert_eq!(
        value(
            &samples,
            "portlab_destination_ports_in_use",
            &[("dst_port", "7000"), ("state", "established")]
        ),
        Some(30.0)
    );
    assert_eq!(
        value(
            &samples,
            "portlab_destination_ports_in_use",
            &[("dst_port", "7001"), ("state", "time_wait")]
        ),
        Some(20.0)
    );
    for ip in ports["snapshot"]["local_ips"]
        .as_array()
        .expect("local_ips")
    {
        let src = ip["local_ip"].as_str().expect("ip");
        assert_eq!(
            value(&samples, "portlab_bind_ports_in_use", &[("src_ip", src)]),
            ip["distinct_ports"].as_f64()
        );
    }
    let counters = &ports["counters"];
    for (metric, field) in [
        ("portlab_tcp_tw_recycled_total", "tw_recycled"),
        (
            "portlab_tcp_time_wait_overflow_total",
            "tcp_time_wait_overflow",
        ),
        ("portlab_tcp_attempt_fails_total", "attempt_fails"),
        ("portlab_tcp_listen_overflows_total", "listen_overflows"),
        ("portlab_tcp_listen_drops_total", "listen_drops"),
    ] {
        assert_eq!(
            value(&samples, metric, &[]),
            counters[field].as_f64(),
            "{metric}"
        );
    }
}

#[test]
fn metrics_are_text_004_that_promtool_accepts_and_the_landing_page_links_them() {
    let ns = pool_namespace("exptxt");
    let _held = hold_sockets(&ns, 5, 0);
    let netns = format!("/var/run/netns/{}", ns.name());
    let (_exp, addr) = exporter(&["--netns", &netns]);
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(!answer.body.contains("# EOF"), "0.0.4, not OpenMetrics");
    promtool_check_metrics(&answer.body);
    let samples = parse(&answer.body);
    // 5 of 1,000 ports is under the default 1 % floor: folded, not exported on its own.
    assert_eq!(
        value(&samples, "portlab_destinations_folded", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "portlab_destination_ports_in_use",
            &[("dst_ip", "other"), ("state", "established")]
        ),
        Some(5.0)
    );
    assert!(value(&samples, "portlab_build_info", &[]).is_some());
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.body.contains("href=\"/metrics\""));
    assert_eq!(get(addr, "/nope").status, 404);
}

#[test]
fn allow_listed_destination_is_exported_below_the_floor() {
    let ns = pool_namespace("expallow");
    let _held = hold_sockets(&ns, 3, 0);
    let netns = format!("/var/run/netns/{}", ns.name());
    let (_exp, addr) = exporter(&["--netns", &netns, "--destination", "127.0.0.0/8:7000"]);
    let samples = parse(&get(addr, "/metrics").body);
    assert_eq!(
        value(
            &samples,
            "portlab_destination_ports_in_use",
            &[("dst_port", "7000"), ("state", "established")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(&samples, "portlab_destinations_folded", &[]),
        Some(0.0)
    );
}

#[test]
fn a_failed_reading_answers_500_with_the_reason_and_the_next_scrape_retries() {
    // The exporter runs in a private mount namespace where the test can hide a /proc/sys file
    // behind garbage: the reading fails as it would under a policy that denies it.
    let garbage = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(garbage.path(), "garbage\n").expect("write");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        PORTLAB,
        "exporter",
        "--listen",
        "127.0.0.1:0",
    ]);
    let (exp, addr) = Proc::start_listening(cmd);
    assert_eq!(get(addr, "/metrics").status, 200);
    let target = "/proc/sys/net/ipv4/ip_local_port_range";
    let pid = exp.pid().to_string();
    let mount = Command::new("nsenter")
        .args(["-t", &pid, "-m", "mount", "--bind"])
        .arg(garbage.path())
        .arg(target)
        .status()
        .expect("nsenter mount");
    assert!(mount.success());
    let failed = get(addr, "/metrics");
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(
        failed
            .body
            .starts_with("scrape failed: reading the port-pool settings"),
        "{}",
        failed.body
    );
    assert_eq!(
        get(addr, "/metrics").status,
        500,
        "still failing, still serving"
    );
    let umount = Command::new("nsenter")
        .args(["-t", &pid, "-m", "umount", target])
        .status()
        .expect("nsenter umount");
    assert!(umount.success());
    let again = get(addr, "/metrics");
    assert_eq!(again.status, 200, "the next scrape retries: {}", again.body);
    assert!(again.body.contains("portlab_ephemeral_ports "));
}

fn usage_error(args: &[&str]) -> String {
    let out = Command::new(PORTLAB)
        .arg("exporter")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("portlab");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: one line: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}");
    stderr
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let e = usage_error(&["--listen", "not-an-address"]);
    assert!(e.contains("--listen"), "{e}");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let e = usage_error(&["--listen", &addr]);
    assert!(e.contains("in use") || e.contains("another process"), "{e}");
    let e = usage_error(&["--listen", "127.0.0.1:0", "--netns", "/nonexistent/ns"]);
    assert!(e.contains("--netns /nonexistent/ns"), "{e}");
    let e = usage_error(&["--listen", "127.0.0.1:0", "--netns", "/etc/hostname"]);
    assert!(e.contains("not a network namespace"), "{e}");
    let e = usage_error(&["--destination", "10.0.0.0/33"]);
    assert!(e.contains("bad destination matcher"), "{e}");
    let e = usage_error(&["--floor", "2"]);
    assert!(e.contains("ratio"), "{e}");
    let e = usage_error(&["--hold-down", "soon"]);
    assert!(e.contains("duration"), "{e}");
}

fn promtool(args: &[&str]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "portlab-alerts.yml"]);
    promtool(&["test", "rules", "portlab-alerts.test.yml"]);
}

#[test]
fn serves_unprivileged_as_in_the_daemonset() {
    // The DaemonSet and the systemd unit run it as an unprivileged user with no capabilities.
    let ns = pool_namespace("expuser");
    let _held = hold_sockets(&ns, 12, 0);
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        PORTLAB,
        "exporter",
        "--listen",
        "127.0.0.1:0",
    ]);
    let (_exp, addr) = Proc::start_listening(cmd);
    let answer = ns
        .run(move || get(addr, "/metrics"))
        .expect("run in the namespace");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let samples = parse(&answer.body);
    assert_eq!(
        value(
            &samples,
            "portlab_destination_ports_in_use",
            &[("dst_port", "7000"), ("state", "established")]
        ),
        Some(12.0)
    );
}
