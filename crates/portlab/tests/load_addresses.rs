//! Every resolved address is used: a connect that fails moves on to the next address in
//! RFC 8305 order, each outcome is reported per address, and a request fails (once) only when
//! every address failed. The name resolves to ::1, 127.0.0.1 and 127.0.0.2 inside a network
//! namespace through `/etc/netns/NAME/hosts`, which `ip netns exec` mounts over /etc/hosts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use portlab_testkit::NetNs;
use serde_json::Value;

const PORTLAB: &str = env!("CARGO_BIN_EXE_portlab");

/// `/etc/netns/NAME/hosts`, removed on drop.
struct Hosts(std::path::PathBuf);

impl Hosts {
    fn new(ns: &NetNs, text: &str) -> Hosts {
        let dir = std::path::Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NAME");
        std::fs::write(dir.join("hosts"), text).expect("write hosts");
        Hosts(dir)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `portlab serve` inside `ns` on `listen`; killed on drop.
struct Serve(Child);

impl Serve {
    fn start(ns: &NetNs, listen: &str) -> Serve {
        let mut child = ns
            .command(PORTLAB)
            .args(["serve", "--listen", listen, "--json", "--threads", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        assert!(line.contains("listening"), "{line}");
        Serve(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(ns: &NetNs, engine: &str, url: &str) -> (Option<i32>, Value) {
    let out = ns
        .command(PORTLAB)
        .args([
            "load",
            "--engine",
            engine,
            "-n",
            "60",
            "-c",
            "2",
            "--threads",
            "1",
            "-disable-keepalive",
            "--json",
            url,
        ])
        .output()
        .expect("run load");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code(), report)
}

#[test]
fn connects_fall_back_to_the_next_address_and_are_reported_per_address_tokio() {
    connects_fall_back_to_the_next_address_and_are_reported_per_address("tokio");
}

#[test]
fn connects_fall_back_to_the_next_address_and_are_reported_per_address_uring() {
    connects_fall_back_to_the_next_address_and_are_reported_per_address("uring");
}

fn connects_fall_back_to_the_next_address_and_are_reported_per_address(engine: &str) {
    let ns = NetNs::new("addrs").expect("netns");
    let _hosts = Hosts::new(&ns, "::1 multi\n127.0.0.2 multi\n127.0.0.1 multi\n");
    let _serve = Serve::start(&ns, "127.0.0.1:8080");
    let (code, r) = load(&ns, engine, "http://multi:8080/");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["summary"]["succeeded"], 60);
    let t = &r["target"];
    let addrs: Vec<&str> = t["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a["address"].as_str().expect("address"))
        .collect();
    // Families interleaved from the resolver's first: v6, v4, v4.
    assert_eq!(addrs[0], "[::1]:8080");
    assert_eq!(addrs.len(), 3);
    assert_eq!(t["connected_to"], "127.0.0.1:8080");
    let v6 = &t["addresses"][0];
    assert_eq!(v6["connects"], 0);
    let refused = v6["failures"]["ConnectionRefused"]
        .as_u64()
        .expect("refused");
    // The address that worked is tried first afterwards: only the first connects of the two
    // slots paid for ::1, not all 60.
    assert!((1..=2).contains(&refused), "{refused}");
    let ok: u64 = t["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a["connects"].as_u64().expect("connects"))
        .sum();
    assert_eq!(ok, 60, "-disable-keepalive: one connect per request");
}

#[test]
fn a_request_fails_once_when_every_address_refuses_tokio() {
    a_request_fails_once_when_every_address_refuses("tokio");
}

#[test]
fn a_request_fails_once_when_every_address_refuses_uring() {
    a_request_fails_once_when_every_address_refuses("uring");
}

fn a_request_fails_once_when_every_address_refuses(engine: &str) {
    let ns = NetNs::new("addrs").expect("netns");
    let _hosts = Hosts::new(&ns, "::1 multi\n127.0.0.1 multi\n");
    let (code, r) = load(&ns, engine, "http://multi:8080/");
    assert_eq!(code, Some(1));
    assert_eq!(r["summary"]["failed"], 60);
    assert_eq!(r["errors"][0]["class"], "ConnectionRefused");
    assert_eq!(r["errors"][0]["count"], 60);
    for a in r["target"]["addresses"].as_array().expect("addresses") {
        assert_eq!(a["failures"]["ConnectionRefused"], 60, "{a}");
    }
}
