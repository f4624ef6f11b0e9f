//! Real ephemeral-port exhaustion, seen as such: in a network namespace made by the test with
//! `ip_local_port_range = 40000 40999` (1,000 ports) and `tcp_tw_reuse = 0`, `portlab load
//! --connection drop -n 3000 -c 1` against nginx gets exactly 1,000 responses and 2,000
//! AddrNotAvailable failures (each closed connection leaves its port in TIME_WAIT for 60 s);
//! keep-alive gets all 3,000, and so does `close` (the server closes first and holds
//! TIME_WAIT). Needs root, iproute2 and nginx (Debian packages).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use portlab_testkit::NetNs;
use serde_json::Value;

/// A namespace with 1,000 ephemeral ports and no TIME_WAIT reuse (sysctls inside it only).
fn pool_namespace() -> NetNs {
    let ns = NetNs::new("load").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    ns
}

/// nginx inside the namespace, one process, killed by PID on drop.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(ns: &NetNs, ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let listens: String = ports
            .iter()
            .map(|p| format!("listen 127.0.0.1:{p}; "))
            .collect();
        let conf = format!(
            "error_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ {listens} location / {{ return 200 \"hello\\n\"; }} }} }}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write conf");
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = ns
            .command(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx in the namespace");
        let server = Self { child, _dir: dir };
        // Wait for the listeners without connecting (a probe connection would take a port).
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let out = ns.command("ss").args(["-Hltn"]).output().expect("ss");
            let text = String::from_utf8_lossy(&out.stdout);
            if ports
                .iter()
                .all(|p| text.contains(&format!("127.0.0.1:{p} ")))
            {
                break;
            }
            assert!(
                Instant::now() < end,
                "nginx did not listen in the namespace: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(ns: &NetNs, engine: &str, args: &[&str]) -> (Option<i32>, Value) {
    let out = ns
        .command(env!("CARGO_BIN_EXE_portlab"))
        .arg("load")
        .args(["--engine", engine])
        .args(args)
        .arg("--json")
        .output()
        .expect("portlab");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON report: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn class_count(report: &Value, class: &str) -> u64 {
    report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["class"] == class)
        .filter_map(|e| e["count"].as_u64())
        .sum()
}

#[test]
fn drop_policy_exhausts_the_port_range_and_keep_alive_does_not_tokio() {
    drop_policy_exhausts_the_port_range_and_keep_alive_does_not("tokio");
}

#[test]
fn drop_policy_exhausts_the_port_range_and_keep_alive_does_not_uring() {
    drop_policy_exhausts_the_port_range_and_keep_alive_does_not("uring");
}

fn drop_policy_exhausts_the_port_range_and_keep_alive_does_not(engine: &str) {
    let ns = pool_namespace();
    // Three listening ports: each destination port has its own pool of 1,000 ephemeral ports
    // (connect() picks ports per 4-tuple), so the two runs do not share TIME_WAIT entries.
    let _nginx = Nginx::start(&ns, &[8080, 8081, 8082]);

    let (code, r) = load(
        &ns,
        engine,
        &[
            "--connection",
            "drop",
            "-n",
            "3000",
            "-c",
            "1",
            "http://127.0.0.1:8080/",
        ],
    );
    assert_eq!(r["summary"]["succeeded"], 1000, "{}", r["summary"]);
    assert_eq!(r["summary"]["failed"], 2000);
    assert_eq!(class_count(&r, "AddrNotAvailable"), 2000, "{}", r["errors"]);
    let entry = &r["errors"][0];
    assert_eq!(entry["errno_name"], "EADDRNOTAVAIL");
    assert_eq!(entry["by_phase"]["connect"], 2000);
    assert!(entry["meaning"]
        .as_str()
        .is_some_and(|m| m.contains("ephemeral ports exhausted")));
    assert_eq!(r["connections"]["closed_by_client"], 1000);
    assert_eq!(code, Some(1), "failures give exit status 1");
    assert_eq!(r["settings"]["engine"], engine);

    let (code, r) = load(
        &ns,
        engine,
        &[
            "--connection",
            "keep-alive",
            "-n",
            "3000",
            "-c",
            "1",
            "http://127.0.0.1:8081/",
        ],
    );
    assert_eq!(r["summary"]["succeeded"], 3000, "{}", r["errors"]);
    assert_eq!(r["summary"]["failed"], 0);
    assert_eq!(code, Some(0));

    // `close`: the server closes first, so TIME_WAIT lands on the server side and the
    // client's 1,000 ports are never used up.
    let (code, r) = load(
        &ns,
        engine,
        &[
            "--connection",
            "close",
            "-n",
            "3000",
            "-c",
            "1",
            "http://127.0.0.1:8082/",
        ],
    );
    assert_eq!(r["summary"]["succeeded"], 3000, "{}", r["errors"]);
    assert_eq!(r["connections"]["opened"], 3000);
    assert_eq!(r["connections"]["closed_by_server"], 3000);
    assert_eq!(code, Some(0));
}
