//! The socket table read from a real kernel in a test-made network namespace.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};

use portlab_sockets::diag::{for_each_socket_netlink, for_each_socket_proc, read_table_parallel};
use portlab_sockets::{SocketEntry, StateMask, TcpState};
use portlab_testkit::NetNs;

type Held = Vec<TcpStream>;

/// IPv4 and IPv6 connections between listeners on both sides of port 40500 and clients with
/// ephemeral ports all over 40000–40999.
fn make_sockets() -> std::io::Result<(Vec<TcpListener>, Held)> {
    let mut listeners = Vec::new();
    let mut held = Vec::new();
    for addr in [
        "127.0.0.1:0",
        "127.0.0.1:20000",
        "127.0.0.1:50000",
        "[::1]:0",
    ] {
        let listener = TcpListener::bind(addr)?;
        let target: SocketAddr = listener.local_addr()?;
        for _ in 0..60 {
            held.push(TcpStream::connect(target)?);
            held.push(listener.accept()?.0);
        }
        listeners.push(listener);
    }
    Ok((listeners, held))
}

fn key(e: &SocketEntry) -> (SocketAddr, SocketAddr, TcpState) {
    (e.local, e.remote, e.state)
}

#[test]
fn parallel_halves_cover_the_table_exactly_once() {
    let ns = NetNs::new("diag").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    let _made = ns
        .run(make_sockets)
        .expect("enter netns")
        .expect("make sockets");

    let (single, parallel, via_proc) = ns
        .run(|| {
            let mut single = Vec::new();
            for_each_socket_netlink(StateMask::ALL, |e| single.push(e)).expect("dump");
            let parallel = read_table_parallel(StateMask::ALL, 40500).expect("parallel dump");
            let mut via_proc = Vec::new();
            for_each_socket_proc(StateMask::ALL, |e| via_proc.push(e)).expect("proc");
            (single, parallel, via_proc)
        })
        .expect("enter netns");

    // 4 listeners + 4 × 60 connections × 2 sides.
    assert_eq!(single.len(), 4 + 4 * 60 * 2);
    assert_eq!(parallel.len(), single.len(), "each socket exactly once");
    let single_set: HashSet<_> = single.iter().map(key).collect();
    let parallel_set: HashSet<_> = parallel.iter().map(key).collect();
    assert_eq!(single_set.len(), single.len());
    assert_eq!(parallel_set, single_set);
    let proc_set: HashSet<_> = via_proc.iter().map(key).collect();
    assert_eq!(proc_set, single_set);
    assert_eq!(
        single.iter().filter(|e| e.local.is_ipv6()).count(),
        1 + 60 * 2
    );
}

#[test]
fn state_filter_runs_in_the_kernel() {
    let ns = NetNs::new("diag-state").expect("create netns (needs root)");
    let _made = ns
        .run(make_sockets)
        .expect("enter netns")
        .expect("make sockets");
    let listeners = ns
        .run(|| {
            let mut seen = Vec::new();
            for_each_socket_netlink(StateMask::of(&[TcpState::Listen]), |e| seen.push(e))
                .expect("dump");
            seen
        })
        .expect("enter netns");
    assert_eq!(listeners.len(), 4);
    assert!(listeners.iter().all(|e| e.state == TcpState::Listen));
}
