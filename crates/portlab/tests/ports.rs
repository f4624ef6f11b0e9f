//! `portlab ports` against a real kernel: a test-made network namespace with a narrowed port
//! range, a known number of ESTABLISHED and TIME_WAIT sockets, counts checked exactly and
//! against `ss -tan`.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use portlab_testkit::{wait_until, NetNs};

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");
const HELD_OPEN: usize = 40;
const CLIENT_CLOSED: usize = 300;

/// Sockets made inside the namespace: `HELD_OPEN` connections kept open (client and server
/// side both ESTABLISHED) and `CLIENT_CLOSED` connections the client closed first (client side
/// in TIME_WAIT once the server closed too).
struct Made {
    _listener: TcpListener,
    _open: Vec<(TcpStream, TcpStream)>,
    server_addr: SocketAddr,
}

fn make_sockets() -> std::io::Result<Made> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server_addr = listener.local_addr()?;
    let mut open = Vec::new();
    for _ in 0..HELD_OPEN {
        let client = TcpStream::connect(server_addr)?;
        let (server, _) = listener.accept()?;
        open.push((client, server));
    }
    for _ in 0..CLIENT_CLOSED {
        let client = TcpStream::connect(server_addr)?;
        let (mut server, _) = listener.accept()?;
        drop(client); // the client is the active closer: its side goes to TIME_WAIT
        let mut buf = [0u8; 1];
        // Read the client's FIN, then close: the server's side ends in LAST_ACK → CLOSED.
        let _ = server.read(&mut buf)?;
    }
    Ok(Made {
        _listener: listener,
        _open: open,
        server_addr,
    })
}

fn ss_count(ns: &NetNs, state: &str) -> usize {
    let out = ns
        .exec_checked(&["ss", "-tanH", "state", state])
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn ports_json(ns: &NetNs, extra: &[&str]) -> serde_json::Value {
    json_of(ns.command(PORTLAB).args(["ports", "--json"]).args(extra))
}

/// Runs `cmd`, which must succeed, and parses its stdout as JSON.
fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "portlab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

#[test]
fn counts_match_the_kernel_and_ss_exactly() {
    let ns = NetNs::new("ports").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let made = ns
        .run(make_sockets)
        .expect("enter netns")
        .expect("make sockets");
    // The server sides pass LAST_ACK quickly; wait until only the expected states remain.
    let settled = wait_until(Duration::from_secs(5), || {
        ss_count(&ns, "time-wait") == CLIENT_CLOSED && ss_count(&ns, "last-ack") == 0
    });
    assert!(settled, "sockets did not settle");

    let report = ports_json(&ns, &[]);
    let states = &report["snapshot"]["states"];
    assert_eq!(states["established"], 2 * HELD_OPEN as u64);
    assert_eq!(states["time_wait"], CLIENT_CLOSED as u64);
    assert_eq!(states["listen"], 1);
    assert_eq!(states["established"], ss_count(&ns, "established") as u64);
    assert_eq!(states["time_wait"], ss_count(&ns, "time-wait") as u64);
    assert_eq!(states["listen"], ss_count(&ns, "listening") as u64);
    assert_eq!(report["snapshot"]["source"], "sock_diag");
    assert_eq!(report["settings"]["ip_local_port_range"]["low"], 40000);
    assert_eq!(report["settings"]["tcp_tw_reuse"], "disabled");

    // One pool: 127.0.0.1 → the server; the accepted server sides sit on the listener's port
    // (inside the range, from bind(0)) and must not count as ephemeral.
    let pools = report["snapshot"]["pools"].as_array().expect("pools");
    assert_eq!(pools.len(), 1, "{pools:?}");
    let pool = &pools[0];
    assert_eq!(pool["destination"], made.server_addr.to_string());
    assert_eq!(pool["established"], HELD_OPEN as u64);
    assert_eq!(pool["time_wait"], CLIENT_CLOSED as u64);
    assert_eq!(pool["used"], (HELD_OPEN + CLIENT_CLOSED) as u64);
    let expected_util = (HELD_OPEN + CLIENT_CLOSED) as f64 / 1000.0;
    assert!((pool["utilisation"].as_f64().expect("f64") - expected_util).abs() < 1e-9);
    // tcp_tw_reuse=0: TIME_WAIT blocks for 60 s; 1000 ports / 60 s.
    assert_eq!(pool["headroom"]["port_block_ms"], 60_000);
    let rate = pool["headroom"]["sustainable_rate_per_sec"]
        .as_f64()
        .expect("f64");
    assert!((rate - 1000.0 / 60.0).abs() < 1e-9);
    assert_eq!(
        pool["headroom"]["free_ports"],
        1000 - (HELD_OPEN + CLIENT_CLOSED) as u64
    );

    // The /proc fallback sees the same table.
    let via_proc = ports_json(&ns, &["--proc"]);
    assert_eq!(via_proc["snapshot"]["source"], "proc_net_tcp");
    assert_eq!(via_proc["snapshot"]["states"], report["snapshot"]["states"]);

    // From the host's namespace, --netns reads the same table, settings and pool.
    let netns_file = format!("/run/netns/{}", ns.name());
    let from_host =
        json_of(Command::new(PORTLAB).args(["ports", "--json", "--netns", &netns_file]));
    assert_eq!(
        from_host["snapshot"]["states"],
        report["snapshot"]["states"]
    );
    assert_eq!(from_host["settings"], report["settings"]);
    assert_eq!(from_host["snapshot"]["pools"][0]["used"], pool["used"]);
    let doctor = Command::new(PORTLAB)
        .args([
            "doctor",
            "--json",
            "--interval",
            "0",
            "--netns",
            &netns_file,
        ])
        .output()
        .expect("portlab runs");
    let doctor: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("valid JSON");
    assert_eq!(doctor["settings"]["ip_local_port_range"]["low"], 40000);
    assert_eq!(
        doctor["snapshot"]["states"]["time_wait"],
        CLIENT_CLOSED as u64
    );

    // --dest focuses on one destination; another destination has no pool.
    let focused = ports_json(&ns, &["--dest", &made.server_addr.to_string()]);
    assert_eq!(
        focused["snapshot"]["pools"].as_array().map(Vec::len),
        Some(1)
    );
    let elsewhere = ports_json(&ns, &["--dest", "127.0.0.1:1"]);
    assert_eq!(
        elsewhere["snapshot"]["pools"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn text_report_names_settings_pool_and_verdict() {
    let ns = NetNs::new("ports-text").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40349")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let _made = ns
        .run(make_sockets)
        .expect("enter netns")
        .expect("make sockets");
    let out = ns
        .command(PORTLAB)
        .arg("ports")
        .output()
        .expect("portlab runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("40000-40349  (350 ports, 350 usable)"),
        "{text}"
    );
    assert!(text.contains("FIN_WAIT_2 timeout"), "{text}");
    // 340 of 350 ports blocked (≥ 80 %): critical, with no colour codes off a TTY.
    assert!(text.contains("verdict: CRITICAL"), "{text}");
    assert!(!text.contains('\x1b'), "colour codes off a TTY");
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    for args in [
        vec!["ports", "--dest", "not-an-address"],
        vec!["ports", "--watch", "0"],
        vec!["ports", "--no-such-flag"],
        vec!["ports", "--top", "0"],
    ] {
        let out = Command::new(PORTLAB)
            .args(&args)
            .output()
            .expect("portlab runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("portlab: "), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn netns_that_is_not_a_namespace_is_a_usage_error() {
    for bad in ["/tmp", "/nonexistent/netns"] {
        let out = Command::new(PORTLAB)
            .args(["ports", "--netns", bad])
            .output()
            .expect("portlab runs");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("--netns") && err.contains(bad), "{err}");
    }
}

#[test]
fn reads_without_root() {
    let report = json_of(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        PORTLAB,
        "ports",
        "--json",
    ]));
    assert_eq!(
        report["snapshot"]["source"], "sock_diag",
        "netlink works unprivileged"
    );
}

#[test]
fn watch_prints_one_reading_per_interval_with_rates() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(PORTLAB)
        .args(["ports", "--json", "--watch", "0.1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("portlab starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    let second: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    child.kill().expect("stop portlab by PID");
    let _ = child.wait();
    assert!(first["counter_rates_per_sec"].is_null());
    let interval = second["counter_rates_per_sec"]["interval_secs"]
        .as_f64()
        .expect("rates");
    assert!((0.09..5.0).contains(&interval), "{interval}");
}
