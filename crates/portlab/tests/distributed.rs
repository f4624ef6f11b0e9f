//! A distributed run on one host: four agents, each in its own network namespace with its own
//! address on a veth to a server namespace (10.77.I.2 → 10.77.200.1; nothing leaves the host),
//! run `portlab load --segment I/4` at a common `--start-at`, and `portlab merge` makes one
//! report of them. It must count exactly what the agents and the server counted, give the
//! percentiles of one histogram of all latencies, line the timelines up by wall-clock second,
//! and — when one agent's pool runs out — name that agent and its pool. Needs root and iproute2.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use portlab_testkit::NetNs;
use serde_json::Value;

#[path = "common/schema.rs"]
mod schema;

const AGENTS: usize = 4;
const SERVER_IP: &str = "10.77.200.1";

/// The server namespace, the agents' namespaces, and `portlab serve` in the server's.
struct Lab {
    _server_ns: NetNs,
    agents: Vec<NetNs>,
    serve: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Lab {
    /// Builds the namespaces and veths; `sysctls(i)` are set in agent i's namespace only.
    fn new(sysctls: impl Fn(usize) -> Vec<(&'static str, &'static str)>) -> Lab {
        let server_ns = NetNs::new("msrv").expect("create netns (needs root)");
        server_ns
            .exec_checked(&["ip", "addr", "add", &format!("{SERVER_IP}/32"), "dev", "lo"])
            .expect("server address");
        let agents: Vec<NetNs> = (0..AGENTS)
            .map(|i| {
                let ns = NetNs::new(&format!("mag{i}")).expect("create agent netns");
                let (srv_if, agent_if) = (format!("vs{i}"), format!("va{i}"));
                // Created inside the server namespace, so names cannot clash with other tests.
                server_ns
                    .exec_checked(&[
                        "ip",
                        "link",
                        "add",
                        &srv_if,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &agent_if,
                        "netns",
                        ns.name(),
                    ])
                    .expect("veth");
                let gw = format!("10.77.{i}.1");
                server_ns
                    .exec_checked(&["ip", "addr", "add", &format!("{gw}/24"), "dev", &srv_if])
                    .expect("server side address");
                server_ns
                    .exec_checked(&["ip", "link", "set", &srv_if, "up"])
                    .expect("up");
                ns.exec_checked(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.77.{i}.2/24"),
                    "dev",
                    &agent_if,
                ])
                .expect("agent address");
                ns.exec_checked(&["ip", "link", "set", &agent_if, "up"])
                    .expect("up");
                ns.exec_checked(&["ip", "route", "add", "default", "via", &gw])
                    .expect("route");
                for (key, value) in sysctls(i) {
                    ns.sysctl(key, value).expect("sysctl");
                }
                ns
            })
            .collect();
        let mut serve = server_ns
            .command(env!("CARGO_BIN_EXE_portlab"))
            .args(["serve", "--listen", &format!("{SERVER_IP}:0"), "--json"])
            .args(["--threads", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portlab serve");
        let mut line = String::new();
        BufReader::new(serve.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let event: Value = serde_json::from_str(&line).expect("listening event");
        let url = format!("http://{}/", event["address"].as_str().expect("address"));
        Lab {
            _server_ns: server_ns,
            agents,
            serve,
            url,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Runs `load --segment I/4 ARGS --json` in every agent at once, starting together at a
    /// common wall-clock time (1.5 s ahead: room for four processes to start on a busy
    /// machine); returns the reports' paths and contents.
    fn run_agents(&self, name: &str, args: &[&str]) -> Vec<(PathBuf, Value)> {
        let start_at =
            (jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500)).to_string();
        let children: Vec<Child> = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                ns.command(env!("CARGO_BIN_EXE_portlab"))
                    .arg("load")
                    .args([
                        "--segment",
                        &format!("{i}/{AGENTS}"),
                        "--start-at",
                        &start_at,
                    ])
                    .args(["--threads", "1", "--json"])
                    .args(args)
                    .arg(&self.url)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start an agent")
            })
            .collect();
        children
            .into_iter()
            .enumerate()
            .map(|(i, child)| {
                let out = child.wait_with_output().expect("agent");
                let text = String::from_utf8(out.stdout).expect("utf-8");
                let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("agent {i}: {e}; {}", String::from_utf8_lossy(&out.stderr))
                });
                let path = self.dir.path().join(format!("{name}-{i}.json"));
                std::fs::write(&path, text).expect("write report");
                (path, report)
            })
            .collect()
    }

    /// Stops the server (SIGTERM by PID) and returns its request count.
    fn server_requests(mut self) -> u64 {
        let pid = nix::unistd::Pid::from_raw(self.serve.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let mut stats = String::new();
        let mut reader = BufReader::new(self.serve.stdout.take().expect("stdout"));
        while reader.read_line(&mut stats).expect("read") > 0 && !stats.contains("\"stats\"") {
            stats.clear();
        }
        let _ = self.serve.wait();
        let event: Value = serde_json::from_str(&stats).expect("stats event");
        event["requests"].as_u64().expect("requests")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

fn merge(reports: &[(PathBuf, Value)]) -> (Output, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_portlab"))
        .arg("merge")
        .arg("--json")
        .args(reports.iter().map(|(p, _)| p))
        .output()
        .expect("portlab merge");
    let merged = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("merge: {e}; {}", String::from_utf8_lossy(&out.stderr)));
    (out, merged)
}

fn u(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in report"))
}

fn histogram(report: &Value, pointer: &str) -> Histogram<u64> {
    let b64 = report
        .pointer(pointer)
        .and_then(Value::as_str)
        .expect("histogram");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("V2 histogram")
}

/// Every counter of the merged report is the sum of the agents' — summary, connections,
/// retries, status codes, errors by class, and the timeline's totals.
fn assert_counters_sum(agents: &[Value], merged: &Value) {
    let sum = |f: &dyn Fn(&Value) -> u64| agents.iter().map(f).sum::<u64>();
    for pointer in [
        "/summary/requests",
        "/summary/succeeded",
        "/summary/failed",
        "/summary/cancelled_at_deadline",
        "/summary/non_success_status",
        "/summary/body_bytes",
        "/latency/count",
        "/connections/opened",
        "/connections/connect_failures",
        "/connections/slow_connects",
        "/connections/requests_on_new",
        "/connections/requests_on_reused",
        "/connections/closed_by_server",
        "/connections/closed_by_client",
        "/connections/connect_latency/count",
        "/retries/attempts",
        "/retries/succeeded",
    ] {
        assert_eq!(u(merged, pointer), sum(&|a| u(a, pointer)), "{pointer}");
    }
    let status = |v: &Value, code: &str| v["status_codes"][code].as_u64().unwrap_or(0);
    for code in merged["status_codes"].as_object().expect("codes").keys() {
        assert_eq!(
            status(merged, code),
            sum(&|a| status(a, code)),
            "status {code}"
        );
    }
    let errors = |v: &Value, class: &str| -> u64 {
        v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["class"] == class)
            .filter_map(|e| e["count"].as_u64())
            .sum()
    };
    for e in merged["errors"].as_array().expect("errors") {
        let class = e["class"].as_str().expect("class");
        assert_eq!(
            errors(merged, class),
            sum(&|a| errors(a, class)),
            "errors {class}"
        );
    }
    let timeline = |v: &Value, field: &str| -> u64 {
        v["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t[field].as_u64())
            .sum()
    };
    for field in ["succeeded", "failed", "new_connections"] {
        assert_eq!(
            timeline(merged, field),
            sum(&|a| timeline(a, field)),
            "timeline {field}"
        );
    }
}

#[test]
fn four_agents_in_four_namespaces_merge_exactly() {
    let lab = Lab::new(|_| Vec::new());

    // 1. -n 40000 split four ways: exact counts and percentiles of all latencies together.
    let reports = lab.run_agents("count", &["-n", "40000", "-c", "8"]);
    let agents: Vec<Value> = reports.iter().map(|(_, r)| r.clone()).collect();
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(u(a, "/summary/requests"), 10_000, "agent {i}");
        assert_eq!(a["agent"]["source_ips"][0], format!("10.77.{i}.2"));
    }
    let (out, merged) = merge(&reports);
    assert_eq!(out.status.code(), Some(0), "{merged}");
    assert_eq!(u(&merged, "/summary/requests"), 40_000);
    assert_eq!(u(&merged, "/summary/succeeded"), 40_000);
    assert_eq!(u(&merged, "/settings/requests"), 40_000);
    assert_eq!(u(&merged, "/settings/concurrency"), 8);
    assert_counters_sum(&agents, &merged);
    let mut all = histogram(&agents[0], "/latency/hdr_histogram");
    for a in &agents[1..] {
        all.add(histogram(a, "/latency/hdr_histogram"))
            .expect("add");
    }
    for (field, q) in [
        ("p50_us", 0.5),
        ("p90_us", 0.9),
        ("p99_us", 0.99),
        ("p99_9_us", 0.999),
    ] {
        assert_eq!(
            u(&merged, &format!("/latency/{field}")),
            all.value_at_quantile(q),
            "{field}"
        );
    }
    assert_eq!(u(&merged, "/latency/max_us"), all.max());
    assert_eq!(u(&merged, "/latency/min_us"), all.min());
    assert_eq!(histogram(&merged, "/latency/hdr_histogram"), all);

    // 2. --rate 4000 split four ways: the merged timeline holds ~4,000 requests each second.
    let reports = lab.run_agents("rate", &["-n", "12000", "-c", "8", "--rate", "4000"]);
    let (_, merged) = merge(&reports);
    assert_eq!(u(&merged, "/summary/requests"), 12_000);
    let timeline = merged["timeline"].as_array().expect("timeline");
    for second in &timeline[..3] {
        let done = u(second, "/succeeded") + u(second, "/failed");
        assert!(
            done.abs_diff(4000) <= 200,
            "second {}: {done} requests, want 4,000 ± 5 %: {timeline:?}",
            second["second"]
        );
    }
    assert_eq!(lab.server_requests(), 40_000 + 12_000);
}

#[test]
fn the_merged_diagnosis_names_the_agent_whose_pool_ran_out() {
    // Agent 2 has 200 ports and no TIME_WAIT reuse; the others have the default 28,232.
    let lab = Lab::new(|i| {
        if i == 2 {
            vec![
                ("net.ipv4.ip_local_port_range", "40000 40199"),
                ("net.ipv4.tcp_tw_reuse", "0"),
            ]
        } else {
            Vec::new()
        }
    });
    let reports = lab.run_agents("drop", &["-n", "2000", "-c", "4", "--connection", "drop"]);
    let (out, merged) = merge(&reports);
    assert_eq!(out.status.code(), Some(1), "failures make exit 1");
    let schema = schema::load_report_schema();
    schema::check(&schema, &schema, &merged, "$");
    let port = lab
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let pool = format!("10.77.2.2 → {SERVER_IP}:{port}");
    assert_eq!(u(&merged, "/summary/failed"), 300, "500 asked, 200 ports");
    let first = &merged["telemetry"]["diagnosis"][0];
    assert_eq!(first["cause"], "port_exhaustion", "{first}");
    let summary = first["summary"].as_str().expect("summary");
    assert!(
        summary.contains("agent 2/4") && summary.contains(&pool),
        "{summary}"
    );
    assert!(summary.contains("(1 of 4 agents)"), "{summary}");
    let agents = merged["merge"]["agents"].as_array().expect("agents");
    let ran_out: Vec<bool> = agents
        .iter()
        .map(|a| a["pool_ran_out"].as_bool().expect("bool"))
        .collect();
    assert_eq!(ran_out, [false, false, true, false]);
    assert_eq!(agents[2]["errors"]["AddrNotAvailable"], 300);
    assert_eq!(agents[2]["pool_size"], 200);

    let text = Command::new(env!("CARGO_BIN_EXE_portlab"))
        .arg("merge")
        .args(reports.iter().map(|(p, _)| p))
        .output()
        .expect("merge");
    let text = String::from_utf8(text.stdout).expect("utf-8");
    assert!(
        text.contains("agent 2/4") && text.contains("its pool ran out"),
        "{text}"
    );
    assert_eq!(lab.server_requests(), 1700);
}
