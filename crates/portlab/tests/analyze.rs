//! `portlab analyze` on the fixture corpus (tests/fixtures/analyze/, see its README), on
//! generated captures, on bad input, and on a capture the test makes in a network namespace
//! during a real exhaustion, compared with `portlab ports --json` taken at the same moment.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};

use portlab_testkit::NetNs;
use serde_json::Value;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

fn fixture(name: &str) -> String {
    let p: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "tests",
        "fixtures",
        "analyze",
        name,
    ]
    .iter()
    .collect();
    p.to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(PORTLAB)
        .arg("analyze")
        .args(args)
        .output()
        .expect("portlab runs")
}

fn json(args: &[&str]) -> (Value, Option<i32>) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (doc, out.status.code())
}

fn causes(doc: &Value) -> Vec<String> {
    doc["diagnosis"]
        .as_array()
        .expect("diagnosis")
        .iter()
        .map(|f| f["cause"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_seed_refusal_is_not_called_port_exhaustion() {
    let (doc, code) = json(&[&fixture("windows-seed-refused.txt")]);
    assert_eq!(doc["os"], "windows");
    assert_eq!(
        code,
        Some(1),
        "refusals of 4,879 requests are a critical finding"
    );
    assert!(
        !causes(&doc).contains(&"port_exhaustion".to_string()),
        "{:?}",
        causes(&doc)
    );
    let top = &doc["diagnosis"][0];
    assert_eq!(top["cause"], "server_side");
    let summary = top["summary"].as_str().expect("summary");
    assert!(summary.starts_with("Not port exhaustion"), "{summary}");
    assert!(summary.contains("accept backlog"), "{summary}");
    let evidence = top["evidence"].to_string();
    assert!(
        evidence.contains("10055 (WSAENOBUFS) or 10048 (WSAEADDRINUSE), and none were captured")
    );
    assert!(evidence.contains("iphlpsvc"));
    // Mixed file: netstat, netsh dynamicport and portproxy, hey's output.
    let formats = doc["captures"][0]["format"].to_string();
    for f in [
        "windows-netstat",
        "netsh-dynamicport",
        "netsh-portproxy",
        "error-lines",
    ] {
        assert!(formats.contains(f), "{formats}");
    }
    assert_eq!(doc["settings"]["portproxy"][0]["connect_port"], 80);
    assert_eq!(doc["sockets"]["by_state"]["TIME_WAIT"], 310);
    assert_eq!(doc["errors"][0]["class"], "ConnectionRefused");
    assert_eq!(doc["errors"][0]["os_code"], 10061);
    assert_eq!(doc["errors"][0]["count"], 4879);
    // 310 TIME_WAIT + 50 hey + 50 portproxy outbound sockets + the RPC listener 49664.
    assert_eq!(doc["pools"][0]["scope"], "host");
    assert_eq!(doc["pools"][0]["in_use"], 411);
    // The forwarder's two legs told apart, and its owner named from `-b`.
    let roles: Vec<(String, String)> = doc["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| (d["destination"].to_string(), d["role"].to_string()))
        .collect();
    assert!(
        roles.contains(&("\"127.0.0.1:8080\"".into(), "\"portproxy-listen\"".into())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&("\"127.0.0.1:80\"".into(), "\"portproxy-connect\"".into())),
        "{roles:?}"
    );
    let forwarder = doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == 3156)
        .expect("pid 3156");
    assert_eq!(forwarder["name"], "svchost.exe");
}

#[test]
fn wsaenobufs_with_the_range_full_of_time_wait_is_critical_exhaustion() {
    let (doc, code) = json(&[&fixture("windows-10055-exhausted.txt")]);
    assert_eq!(code, Some(1));
    let top = &doc["diagnosis"][0];
    assert_eq!(
        (top["cause"].as_str(), top["severity"].as_str()),
        (Some("port_exhaustion"), Some("critical"))
    );
    assert_eq!(doc["settings"]["port_range"]["low"], 60000);
    assert_eq!(doc["settings"]["time_wait_secs"], 120);
    assert_eq!(doc["pools"][0]["in_use"], 1000);
    assert_eq!(doc["pools"][0]["size"], 1000);
    let commands = top["remedies"].to_string();
    assert!(
        commands.contains("netsh int ipv4 set dynamicport tcp start="),
        "{commands}"
    );
    assert!(commands.contains("TcpTimedWaitDelay"));
    assert!(
        !commands.contains("sysctl -w"),
        "no Linux commands for a Windows capture"
    );
    let folklore = top["corrections"].to_string();
    assert!(folklore.contains("autotuninglevel") && folklore.contains("MaxUserPort"));
}

#[test]
fn the_default_windows_range_full_of_time_wait_with_10055_is_exhaustion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("netstat.txt");
    let mut text = String::from("\r\nActive Connections\r\n\r\n  Proto  Local Address          Foreign Address        State           PID\r\n");
    for port in 49152..=65535u32 {
        text.push_str(&format!(
            "  TCP    10.0.0.5:{port:<17}10.0.0.9:443           TIME_WAIT       0\r\n"
        ));
    }
    text.push_str("Post \"https://10.0.0.9/api\": dial tcp 10.0.0.9:443: connectex: An operation on a socket could not be performed because the system lacked sufficient buffer space or because a queue was full.\r\n");
    std::fs::write(&path, text).expect("write");
    let (doc, code) = json(&[path.to_str().expect("path")]);
    assert_eq!(code, Some(1));
    assert_eq!(doc["diagnosis"][0]["cause"], "port_exhaustion");
    assert_eq!(doc["pools"][0]["in_use"], 16384);
    assert_eq!(doc["pools"][0]["utilisation"], 1.0);
    let notes = doc["settings"]["notes"].to_string();
    assert!(
        notes.contains("assumed Windows Vista+ default 49152-65535"),
        "{notes}"
    );
}

#[test]
fn what_the_windows_how_script_captures_is_read_whole() {
    let (doc, code) = json(&[&fixture("windows-how-capture.txt")]);
    assert_eq!(code, Some(1));
    assert_eq!(doc["captures"][0]["encoding"], "utf-8-bom");
    let formats = doc["captures"][0]["format"].to_string();
    for f in [
        "netsh-dynamicport",
        "netsh-excludedportrange",
        "get-nettcpsetting",
        "reg-query",
        "windows-events",
    ] {
        assert!(formats.contains(f), "{formats}");
    }
    assert_eq!(doc["settings"]["port_range"]["low"], 10000);
    assert_eq!(doc["settings"]["port_range"]["high"], 65534);
    assert_eq!(doc["settings"]["excluded_ports"], 161);
    assert_eq!(doc["settings"]["usable_ports"], 55535 - 161);
    assert_eq!(doc["settings"]["time_wait_secs"], 60);
    assert_eq!(doc["settings"]["max_user_port"], 65534);
    assert_eq!(doc["settings"]["auto_reuse_ports"], 0);
    assert_eq!(doc["events"]["event_4227"], 2);
    assert_eq!(doc["timeline"]["points"].as_array().map(Vec::len), Some(3));
    assert_eq!(doc["unclassified_lines"], 0);
    assert_eq!(doc["diagnosis"][0]["cause"], "port_exhaustion");
    assert!(doc["diagnosis"][0]["evidence"]
        .to_string()
        .contains("event 4227"));
}

#[test]
fn encodings_and_locales() {
    let (de, _) = json(&[&fixture("windows-netstat-de-cp850.txt")]);
    assert_eq!(de["captures"][0]["encoding"], "cp850");
    assert_eq!(de["sockets"]["by_state"]["LISTEN"], 3);
    assert_eq!(de["sockets"]["by_state"]["TIME_WAIT"], 2);
    assert_eq!(de["sockets"]["by_state"]["CLOSE_WAIT"], 1);
    assert_eq!(de["sockets"]["udp_rows"], 1);
    let (ps, code) = json(&[&fixture("get-nettcpconnection-utf16le.txt")]);
    assert_eq!(code, Some(0));
    assert_eq!(ps["captures"][0]["encoding"], "utf-16le");
    assert_eq!(ps["sockets"]["by_state"]["BOUND"], 20);
    assert_eq!(ps["pools"][0]["bound"], 20);
    assert_eq!(ps["processes"][0]["pid"], 18732);
    let (csv, _) = json(&[&fixture("get-nettcpconnection.csv")]);
    assert_eq!(csv["sockets"]["by_state"]["TIME_WAIT"], 30);
    let (js, _) = json(&[&fixture("get-nettcpconnection.json")]);
    assert_eq!(js["captures"][0]["encoding"], "utf-16le");
    assert_eq!(js["sockets"]["by_state"]["TIME_WAIT"], 25);
    assert_eq!(js["sockets"]["by_state"]["BOUND"], 1);
}

#[test]
fn macos_truncation_is_flagged_and_timelines_predict() {
    let (mac, _) = json(&[&fixture("macos-netstat-an-truncated.txt")]);
    assert_eq!(mac["os"], "macos");
    assert_eq!(mac["sockets"]["truncated_rows"], 2);
    assert_eq!(mac["settings"]["time_wait_secs"], 30);
    let (mac2, _) = json(&[&fixture("macos-netstat-anvW-2-snapshots.txt")]);
    assert_eq!(mac2["captures"][0]["snapshots"], 2);
    let growth = mac2["timeline"]["growth_per_sec"].as_f64().expect("growth");
    assert!((growth - 400.0 / 30.0).abs() < 1e-6, "{growth}");
    assert_eq!(mac2["errors"][0]["class"], "AddrNotAvailable");
    assert_eq!(mac2["diagnosis"][0]["cause"], "port_exhaustion");
    let (win, _) = json(&[&fixture("windows-timeline-3-snapshots.txt")]);
    assert_eq!(win["timeline"]["points"].as_array().map(Vec::len), Some(3));
    let growth = win["timeline"]["growth_per_sec"].as_f64().expect("growth");
    assert!((growth - 400.0 / 30.0).abs() < 0.1, "{growth}");
    let ttf = win["timeline"]["time_to_full_secs"].as_f64().expect("ttf");
    // 2,000 - 1,220 ports left at ~13.3/s.
    assert!((ttf - 58.5).abs() < 1.0, "{ttf}");
    assert_eq!(win["diagnosis"][0]["cause"], "time_wait_pressure");
}

#[test]
fn error_lines_of_many_runtimes_and_unclassified_ones_are_counted() {
    let (doc, _) = json(&[&fixture("errors-many-runtimes.txt")]);
    assert_eq!(doc["unclassified_lines"], 2);
    assert_eq!(
        doc["unclassified_examples"].as_array().map(Vec::len),
        Some(2)
    );
    let errors = doc["errors"].as_array().expect("errors");
    let total: u64 = errors
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum();
    // wrk 157+89+12, 9 single lines (the ::1 one kept apart as a look-alike) and k6's timeout.
    assert_eq!(total, 157 + 89 + 12 + 10, "{errors:?}");
    let text =
        String::from_utf8_lossy(&run(&[&fixture("errors-many-runtimes.txt")]).stdout).to_string();
    assert!(text.contains("2 error lines not classified"), "{text}");
    assert!(text.contains("flux capacitor"), "{text}");
}

#[test]
fn bad_input_is_one_line_naming_the_file_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").expect("write");
    let binary = dir.path().join("a.out");
    std::fs::write(&binary, b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00").expect("write");
    let other = dir.path().join("poem.txt");
    std::fs::write(&other, "Roses are red\nviolets are blue\n").expect("write");
    let missing = dir.path().join("missing.txt");
    for (path, what) in [
        (&empty, "empty file"),
        (&binary, "binary data"),
        (&other, "no socket table"),
        (&missing, "cannot open"),
    ] {
        let p = path.to_str().expect("path");
        let out = run(&[p]);
        assert_eq!(out.status.code(), Some(2), "{p}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(p) && stderr.contains(what), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    // --format forces one format: a Windows netstat read as ss holds nothing readable.
    let out = run(&["--format", "ss", &fixture("windows-netstat-de-cp850.txt")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no socket table"));
    let (forced, _) = json(&[
        "--format",
        "windows-netstat",
        "--os",
        "windows",
        &fixture("windows-netstat-de-cp850.txt"),
    ]);
    assert_eq!(forced["sockets"]["rows"], 8);
    // --encoding overrides the sniffing: read as UTF-16LE the bytes make no rows.
    let out = run(&[
        "--encoding",
        "utf-16le",
        &fixture("windows-netstat-de-cp850.txt"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--format", "nonsense", &fixture("linux-ss-tanp.txt")]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn how_prints_the_capture_commands() {
    let out = run(&["--how", "windows"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "-Encoding utf8",
        "netstat -anoq",
        "foreach ($i in 1..3)",
        "Start-Sleep -Seconds 30",
        "netsh int ipv4 show excludedportrange protocol=tcp",
        "netsh interface portproxy show all",
        "Id=4227,4231",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let mac = String::from_utf8_lossy(&run(&["--how", "macos"]).stdout).to_string();
    assert!(mac.contains("netstat -anvW -p tcp") && mac.contains("net.inet.tcp.msl"));
}

#[test]
fn stdin_and_several_files() {
    let mut child = Command::new(PORTLAB)
        .args([
            "analyze",
            "--json",
            "-",
            &fixture("errors-many-runtimes.txt"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"  TCP    10.0.0.5:50001   10.0.0.9:80   TIME_WAIT   0\r\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["captures"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["captures"][0]["file"], "-");
    assert_eq!(doc["os"], "windows");
}

/// Fills a 200-port pool inside a namespace (tcp_tw_reuse=0, client closes first) until
/// connect() fails with EADDRNOTAVAIL, then captures `ss -tan` and `/proc/net/tcp{,6}` and
/// takes `portlab ports --json` at the same moment (TIME_WAIT lasts 60 s; nothing moves before).
#[test]
fn a_lab_capture_during_exhaustion_counts_what_ports_counts() {
    let ns = NetNs::new("analyze").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40199")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let (failed_with, _listener) = ns
        .run(|| {
            // A fixed port outside the range: bind(0) would take one of the 200.
            let listener = TcpListener::bind("127.0.0.1:18080").expect("bind");
            let addr: SocketAddr = listener.local_addr().expect("addr");
            let mut errno = None;
            for _ in 0..400 {
                match TcpStream::connect(addr) {
                    Ok(client) => {
                        let (server, _) = listener.accept().expect("accept");
                        drop(client); // active close: TIME_WAIT on the client's port
                        drop(server);
                    }
                    Err(e) => {
                        errno = e.raw_os_error();
                        break;
                    }
                }
            }
            (errno, listener)
        })
        .expect("enter netns");
    assert_eq!(failed_with, Some(libc_eaddrnotavail()), "the pool ran out");
    // Let the server sides pass LAST_ACK: poll until ss shows no LAST-ACK (bounded).
    let settled = portlab_testkit::wait_until(std::time::Duration::from_secs(5), || {
        let out = ns
            .exec_checked(&["ss", "-tanH", "state", "last-ack"])
            .expect("ss");
        out.stdout.is_empty()
    });
    assert!(settled);
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("lab-ss.txt");
    let ss = ns.exec_checked(&["ss", "-tan"]).expect("ss");
    let sysctl = ns
        .exec_checked(&[
            "sysctl",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_tw_reuse",
        ])
        .expect("sysctl");
    let ports = ns
        .command(PORTLAB)
        .args(["ports", "--json"])
        .output()
        .expect("ports");
    let proc_tcp = ns
        .exec_checked(&["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        .expect("cat");
    let mut text = ss.stdout.clone();
    text.extend_from_slice(&sysctl.stdout);
    std::fs::write(&capture, &text).expect("write");
    let proc_capture = dir.path().join("lab-proc.txt");
    let mut ptext = proc_tcp.stdout.clone();
    ptext.extend_from_slice(&sysctl.stdout);
    std::fs::write(&proc_capture, &ptext).expect("write");
    if let Ok(out_dir) = std::env::var("PORTLAB_WRITE_FIXTURES") {
        std::fs::write(
            PathBuf::from(&out_dir).join("linux-lab-exhaustion-ss.txt"),
            &text,
        )
        .expect("fixture");
        std::fs::write(
            PathBuf::from(&out_dir).join("linux-lab-exhaustion-ports.json"),
            &ports.stdout,
        )
        .expect("fixture");
    }
    let live: Value = serde_json::from_slice(&ports.stdout).expect("ports json");
    for path in [&capture, &proc_capture] {
        let (doc, code) = json(&[path.to_str().expect("path")]);
        assert_eq!(doc["os"], "linux");
        assert_eq!(code, Some(1), "an exhausted pool is critical");
        assert_eq!(doc["diagnosis"][0]["cause"], "port_exhaustion");
        let captured = &doc["linux_snapshot"];
        assert_eq!(captured["states"], live["snapshot"]["states"], "{path:?}");
        assert_eq!(captured["pools"], live["snapshot"]["pools"], "{path:?}");
        assert_eq!(
            captured["local_ips"], live["snapshot"]["local_ips"],
            "{path:?}"
        );
        assert_eq!(doc["pools"][0]["in_use"], 200);
        assert_eq!(doc["pools"][0]["time_wait"], 200);
    }
}

fn libc_eaddrnotavail() -> i32 {
    99
}

/// The committed lab capture (made by the test above with PORTLAB_WRITE_FIXTURES) still
/// counts what `portlab ports --json` counted at that moment.
#[test]
fn the_committed_lab_capture_matches_its_ports_json() {
    let (doc, code) = json(&[&fixture("linux-lab-exhaustion-ss.txt")]);
    assert_eq!(code, Some(1));
    let live: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("linux-lab-exhaustion-ports.json")).expect("read"),
    )
    .expect("json");
    assert_eq!(doc["linux_snapshot"]["states"], live["snapshot"]["states"]);
    assert_eq!(doc["linux_snapshot"]["pools"], live["snapshot"]["pools"]);
    assert_eq!(
        doc["settings"]["port_range"]["low"],
        live["settings"]["ip_local_port_range"]["low"]
    );
}
