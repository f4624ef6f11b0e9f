//! NAT source-port exhaustion on the real kernel: `reproduce --nat` steps in sandboxes (a NAT
//! rule with a 100-port pool inside a fresh namespace), the conntrack reader against
//! `conntrack -S/-C`, a full conntrack table, bad input, and Ctrl-C mid-run. Every test checks
//! that no process of its run survives and that the host's nftables ruleset is unchanged.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portlab_diagnose::{diagnose_nat, Cause, NatEvidence, Severity};
use portlab_lab::nat::{nat_plan, run_nat_step, NatFlow, NatLabConfig};
use portlab_sockets::conntrack::{kernel_release, Conntrack};
use portlab_testkit::{wait_until, NetNs};

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

fn host_ruleset() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft runs (install nftables)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes whose environment carries our marker (everything the lab started inherits it).
fn processes_with(marker: &str) -> Vec<u32> {
    let needle = format!("PORTLAB_TEST_MARK={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

fn mark(name: &str) -> String {
    let m = format!("nat-{name}-{}", std::process::id());
    // nextest runs each test in its own process: the variable reaches only this test's children.
    std::env::set_var("PORTLAB_TEST_MARK", &m);
    m
}

fn assert_no_leftovers(marker: &str) {
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(marker).is_empty()),
        "processes of the run survived it: {:?}",
        processes_with(marker)
    );
}

fn config() -> NatLabConfig {
    NatLabConfig::new(PathBuf::from(PORTLAB))
}

#[test]
fn held_connections_beyond_the_pool_time_out_and_the_nat_side_names_exhaustion() {
    let m = mark("held");
    let rules_before = host_ruleset();
    let config = config();
    let plan = nat_plan(&config);
    let scenario = plan
        .iter()
        .find(|s| s.flow == NatFlow::HeldTcp && s.fix.is_none() && s.concurrency == 150)
        .expect("the 150-connection step");
    let r = run_nat_step(&config, scenario, 1).expect("step runs");
    assert_eq!((r.succeeded, r.failed), (100, 50), "{r:#?}");
    assert_eq!(r.connect_timeouts, 50, "the failures are ETIMEDOUT");
    // Each failed connect sent 3 SYNs (tcp_syn_retries=1 on ≥ 6.5; 2 before), each dropped.
    let syns = portlab_lab::nat::syns_per_connect(&kernel_release());
    assert_eq!(r.nat.delta.insert_failed, 50 * syns, "{:#?}", r.nat);
    assert_eq!(r.nat.delta.drop, 50 * syns, "{:#?}", r.nat);
    assert_eq!(r.nat.delta.early_drop, 0);
    let top = &r.findings[0];
    assert_eq!(top.cause, Cause::NatPortExhaustion, "{:#?}", r.findings);
    assert_eq!(top.severity, Severity::Critical);
    assert!(
        top.summary.contains("127.0.0.2:8080/tcp"),
        "{}",
        top.summary
    );
    assert!(top.summary.contains("100 %"), "{}", top.summary);
    let pool = &r.nat.pools_at_peak[0];
    assert_eq!((pool.live, pool.pool_ports), (100, 100), "{pool:#?}");
    assert!(r.within_2pp);
    assert_no_leftovers(&m);
    assert_eq!(host_ruleset(), rules_before, "the host's ruleset changed");
}

#[test]
fn three_destinations_have_a_pool_each_and_no_nat_finding() {
    let m = mark("spread");
    let config = config();
    let plan = nat_plan(&config);
    let scenario = plan
        .iter()
        .find(|s| s.flow == NatFlow::HeldTcp && s.destinations.len() == 3)
        .expect("the three-destination step");
    let r = run_nat_step(&config, scenario, 1).expect("step runs");
    assert_eq!((r.flows, r.failed), (300, 0), "{r:#?}");
    assert_eq!(r.nat.delta.insert_failed, 0);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!(r.nat.pools_at_peak.len(), 3, "{:#?}", r.nat.pools_at_peak);
    assert!(r.nat.pools_at_peak.iter().all(|p| p.live == 100));
    assert_no_leftovers(&m);
}

/// `conntrack -S` sums, read the way the CLI prints them (`insert_failed=N` per CPU line).
fn conntrack_cli_total(ns: &NetNs, key: &str) -> u64 {
    let out = ns.exec_checked(&["conntrack", "-S"]).expect("conntrack -S");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn nat_ns(name: &str) -> NetNs {
    let ns = NetNs::new(name).expect("netns (needs root)");
    ns.exec_checked(&[
        "nft",
        "add table ip t; add chain ip t post { type nat hook postrouting priority srcnat; policy accept; }; \
         add rule ip t post ip daddr 127.0.0.2 meta l4proto udp snat to 127.0.0.1:40000-40009",
    ])
    .expect("nft rule in the namespace");
    ns
}

#[test]
fn the_conntrack_reader_agrees_with_the_conntrack_tool() {
    let ns = nat_ns("ctread");
    // 15 one-shot UDP flows through a 10-port pool: 10 entries, 5 insert_failed. A datagram
    // dropped by conntrack on local output fails sendto() with EPERM (NF_DROP).
    let refused = ns
        .run(|| {
            (0..15u16)
                .filter(|i| {
                    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50000 + i))
                        .expect("bind");
                    s.send_to(b"x", "127.0.0.2:9")
                        .is_err_and(|e| e.raw_os_error() == Some(libc::EPERM))
                })
                .count()
        })
        .expect("enter netns");
    assert_eq!(refused, 5);
    let path = PathBuf::from(format!("/var/run/netns/{}", ns.name()));
    let mut ct = Conntrack::open_in(&path).expect("ctnetlink in the namespace");
    let stats = ct.stats().expect("stats");
    let entries = ct.entries().expect("dump");
    assert_eq!(
        stats.total.insert_failed,
        conntrack_cli_total(&ns, "insert_failed")
    );
    assert_eq!(stats.total.drop, conntrack_cli_total(&ns, "drop"));
    assert_eq!(stats.total.insert_failed, 5, "{stats:#?}");
    let count = ns.exec_checked(&["conntrack", "-C"]).expect("conntrack -C");
    let cli_count: u64 = String::from_utf8_lossy(&count.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(stats.count, cli_count);
    assert_eq!(entries.len() as u64, cli_count);
    assert_eq!(stats.per_cpu.len(), conntrack_lines(&ns));
    let pools = portlab_sockets::nat_pools(
        &entries,
        &[portlab_sockets::NatPortRange {
            low: 40000,
            high: 40009,
        }],
        true,
    );
    assert_eq!(pools.len(), 1);
    assert_eq!((pools[0].live, pools[0].pool_ports), (10, 10));
    assert_eq!(pools[0].destination.to_string(), "127.0.0.2:9");
}

fn conntrack_lines(ns: &NetNs) -> usize {
    let out = ns.exec_checked(&["conntrack", "-S"]).expect("conntrack -S");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cpu="))
        .count()
}

#[test]
fn a_full_conntrack_table_is_table_full_not_port_exhaustion() {
    // nf_conntrack_max is read-only in a child namespace (EINVAL), so fill the table instead:
    // one unreplied UDP flow per destination 127.1.x.y, dropped on input, past the global max.
    let ns = nat_ns("ctfull");
    ns.exec_checked(&[
        "nft",
        "add chain ip t in { type filter hook input priority 0; policy accept; }; add rule ip t in udp dport 9 drop",
    ])
    .expect("drop rule");
    let path = PathBuf::from(format!("/var/run/netns/{}", ns.name()));
    let mut ct = Conntrack::open_in(&path).expect("ctnetlink");
    let before = ct.stats().expect("stats");
    let max = before.max;
    assert!(max > 0 && max <= 4_000_000, "max {max}");
    let started = Instant::now();
    let flows = max + max / 10;
    ns.run(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..flows {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i as u32);
            let _ = s.send_to(b"x", SocketAddrV4::new(ip, 9));
        }
    })
    .expect("enter netns");
    let after = ct.stats().expect("stats");
    let interval_ms = started.elapsed().as_millis() as u64;
    let findings = diagnose_nat(&NatEvidence::from_stats(
        &before,
        &after,
        interval_ms,
        Vec::new(),
    ));
    assert!(after.total.early_drop > 0, "{after:#?}");
    assert_eq!(
        findings[0].cause,
        Cause::ConntrackTableFull,
        "{findings:#?}"
    );
    assert!(findings.iter().all(|f| f.cause != Cause::NatPortExhaustion));
    drop(ns); // frees the entries with the namespace
}

fn portlab(args: &[&str]) -> std::process::Output {
    Command::new(PORTLAB)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run portlab")
}

#[test]
fn bad_nat_input_is_one_line_and_exit_2() {
    for args in [
        &["reproduce", "--nat", "--nat-ports", "5-3"][..],
        &["reproduce", "--nat", "--nat-ports", "40000-49999"],
        &["reproduce", "--nat", "--nat-steps", "13"],
        &["reproduce", "--nat-ports", "40000-40099"],
    ] {
        let out = portlab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("nat"), "{args:?}: {stderr}");
        if args.len() == 4 {
            assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        }
    }
    // No nft: the sandbox cannot do NAT.
    let out = Command::new(PORTLAB)
        .args(["reproduce", "--nat"])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run portlab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nftables"), "{stderr}");
}

#[test]
fn sigint_mid_nat_run_leaves_no_rule_namespace_or_process() {
    let m = mark("sigint");
    let rules_before = host_ruleset();
    let mut child = Command::new(PORTLAB)
        .args(["reproduce", "--nat", "--no-fixes", "--progress"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no 'started' line in 30 s: {seen:?}");
        };
        let started = line.contains("step 1/") && line.contains("started");
        seen.push(line);
        if started {
            break;
        }
    }
    // Wait until the step's load tester runs (its connections are held), then interrupt.
    assert!(
        wait_until(Duration::from_secs(15), || {
            processes_with(&m).iter().any(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"load"))
            })
        }),
        "no load tester started"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit 20 s after SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130), "{seen:?}");
    assert_no_leftovers(&m);
    assert_eq!(host_ruleset(), rules_before);
}

/// A NAT host with a 100-port pool, a server behind it, tcp_syn_retries=1 for the client.
fn nat_host(name: &str) -> (NetNs, std::process::Child) {
    let ns = NetNs::new(name).expect("netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "50000 59999")
        .expect("range");
    ns.sysctl("net.ipv4.tcp_syn_retries", "1")
        .expect("syn retries");
    ns.exec_checked(&[
        "nft",
        "add table ip t; add chain ip t post { type nat hook postrouting priority srcnat; policy accept; }; \
         add rule ip t post ip daddr 127.0.0.2 meta l4proto tcp snat to 127.0.0.1:40000-40099",
    ])
    .expect("nft rule in the namespace");
    let mut server = ns
        .command(PORTLAB)
        .args(["serve", "--json", "--listen", "127.0.0.2:8080"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut first = String::new();
    BufReader::new(server.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("listening line");
    assert!(first.contains("listening"), "{first}");
    (ns, server)
}

#[test]
fn doctor_on_the_nat_host_and_load_on_the_client_both_point_at_the_nat() {
    let (ns, mut server) = nat_host("ctdoctor");
    let load = ns
        .command(PORTLAB)
        .args(["load", "--json", "-n", "150", "-c", "150", "--hold", "6s"])
        .args(["--connection", "drop", "--connect-timeout", "30s"])
        .arg("http://127.0.0.2:8080/")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("load");
    let path = PathBuf::from(format!("/var/run/netns/{}", ns.name()));
    let mut ct = Conntrack::open_in(&path).expect("ctnetlink");
    assert!(
        wait_until(Duration::from_secs(5), || ct.entries().is_ok_and(|e| e
            .iter()
            .filter(|e| e.is_src_nat())
            .count()
            == 100)),
        "the pool never filled"
    );
    let doctor = ns
        .command(PORTLAB)
        .args(["doctor", "--json", "--interval", "1.5"])
        .output()
        .expect("doctor");
    assert_eq!(doctor.status.code(), Some(1), "critical finding → exit 1");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("doctor JSON");
    let top = &report["findings"][0];
    assert_eq!(
        top["cause"], "nat_port_exhaustion",
        "{:#}",
        report["findings"]
    );
    assert!(top["summary"]
        .as_str()
        .unwrap()
        .contains("127.0.0.2:8080/tcp"));
    let pool = &report["nat"]["pools"][0];
    assert_eq!(pool["live"], 100);
    assert_eq!(pool["pool_ports"], 100);
    assert_eq!(pool["utilisation"], 1.0);
    let out = load.wait_with_output().expect("load ends");
    let _ = server.kill();
    let _ = server.wait();
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("load JSON");
    assert_eq!(run["summary"]["failed"], 50);
    let diagnosis = &run["telemetry"]["diagnosis"];
    assert_eq!(diagnosis[0]["cause"], "loss_beyond_host", "{diagnosis:#}");
    let text = diagnosis[0].to_string();
    assert!(text.contains("ErrorPortAllocation") && text.contains("OUT_OF_RESOURCES"));
    assert!(diagnosis
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["cause"] != "port_exhaustion" && f["cause"] != "listen_queue_overflow"));
}

#[test]
fn load_hold_keeps_every_connection_open_at_once() {
    let ns = NetNs::new("hold").expect("netns (needs root)");
    let mut server = ns
        .command(PORTLAB)
        .args(["serve", "--json", "--listen", "127.0.0.1:8080"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut first = String::new();
    BufReader::new(server.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("listening line");
    let load = ns
        .command(PORTLAB)
        .args(["load", "--json", "-n", "40", "-c", "40", "--hold", "3s"])
        .args(["--connection", "drop", "http://127.0.0.1:8080/"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("load");
    // All 40 client connections are open at the same time (each held after its response).
    let established = || {
        ns.exec_checked(&[
            "ss",
            "-Htn",
            "state",
            "established",
            "dst",
            "127.0.0.1:8080",
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(3), || established() == 40),
        "not 40 held connections: {}",
        established()
    );
    let out = load.wait_with_output().expect("load ends");
    let _ = server.kill();
    let _ = server.wait();
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(run["summary"]["succeeded"], 40);
    assert_eq!(run["connections"]["opened"], 40);
    assert_eq!(run["connections"]["closed_by_client"], 40);
    let elapsed = run["summary"]["elapsed_secs"].as_f64().unwrap();
    assert!(elapsed >= 3.0, "the hold ended early: {elapsed} s");
    // The hold is not part of the latency.
    assert!(
        run["latency"]["max_us"].as_u64().unwrap_or(u64::MAX) < 1_000_000,
        "{:#}",
        run["latency"]
    );
}

#[test]
fn unprivileged_nat_lab_runs_in_a_user_namespace_where_the_host_allows_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let m = mark("nobody");
    // A copy nobody can execute: the build directory may sit where nobody cannot enter.
    let dir = tempfile::Builder::new()
        .prefix("portlab-nat-exe-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.path().join("portlab");
    std::fs::copy(PORTLAB, &exe).expect("copy");
    let probe = Command::new("unshare")
        .args(["-Urn", "true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .expect("unshare");
    let rules_before = host_ruleset();
    let out = Command::new(&exe)
        .args(["reproduce", "--nat", "--nat-steps", "4", "--json"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .expect("run as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if probe.success() {
        assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(r["settings"]["isolation"], "user_and_network_namespace");
        assert_eq!(r["steps"][0]["failed"], 50);
        assert_eq!(r["steps"][0]["findings"][0]["cause"], "nat_port_exhaustion");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert_no_leftovers(&m);
    assert_eq!(host_ruleset(), rules_before);
}
