//! `portlab doctor` on a real kernel: an exhausted pool in a test-made namespace is the top
//! finding (exit 1); an idle namespace is healthy (exit 0).

use std::io::Read;
use std::net::{TcpListener, TcpStream};

use portlab_testkit::NetNs;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

fn doctor_json(ns: &NetNs) -> (Option<i32>, serde_json::Value) {
    let out = ns
        .command(PORTLAB)
        .args(["doctor", "--json", "--interval", "0"])
        .output()
        .expect("portlab runs");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), json)
}

#[test]
fn exhausted_pool_is_the_top_finding() {
    let ns = NetNs::new("doctor").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40199")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let (code, healthy) = doctor_json(&ns);
    assert_eq!(code, Some(0));
    assert_eq!(healthy["findings"][0]["cause"], "healthy");

    let held = ns
        .run(|| -> std::io::Result<(TcpListener, u32)> {
            let listener = TcpListener::bind("127.0.0.1:20000")?;
            let mut made = 0;
            // Exhaust the 200-port pool with client-closed connections (TIME_WAIT).
            while let Ok(client) = TcpStream::connect("127.0.0.1:20000") {
                let (mut server, _) = listener.accept()?;
                drop(client);
                let _ = server.read(&mut [0u8; 1])?;
                made += 1;
                assert!(made <= 200, "the pool must hold no more than 200 ports");
            }
            Ok((listener, made))
        })
        .expect("enter netns")
        .expect("sockets");
    assert_eq!(held.1, 200);
    let (code, report) = doctor_json(&ns);
    assert_eq!(code, Some(1), "critical finding → exit 1");
    let top = &report["findings"][0];
    assert_eq!(top["cause"], "port_exhaustion");
    assert_eq!(top["severity"], "critical");
    let evidence = top["evidence"].to_string();
    assert!(
        evidence.contains("200 ports used (200 TIME_WAIT"),
        "{evidence}"
    );
    assert!(top["remedies"].as_array().is_some_and(|r| r.len() >= 5));
}
