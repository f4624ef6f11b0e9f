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
            let parallel = read_table_parallel(StateMask::ALL).expect("parallel dump");
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

#[test]
fn destination_filter_selects_client_sides_of_chosen_destinations() {
    use portlab_sockets::diag::{destination_filter, DiagSocket};
    let ns = NetNs::new("diag-dest").expect("create netns (needs root)");
    let (listeners, _held) = ns
        .run(make_sockets)
        .expect("enter netns")
        .expect("make sockets");
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    for chosen in [vec![addrs[0]], vec![addrs[1], addrs[3]], addrs.clone()] {
        let filter = destination_filter(&chosen).expect("non-empty");
        let seen = ns
            .run(move || {
                let mut seen = Vec::new();
                DiagSocket::open()
                    .expect("open")
                    .dump(StateMask::ALL, Some(&filter), &mut |e| seen.push(e))
                    .expect("the kernel accepts the bytecode");
                seen
            })
            .expect("enter netns");
        assert_eq!(seen.len(), 60 * chosen.len(), "{chosen:?}");
        assert!(seen.iter().all(|e| chosen.contains(&e.remote)));
    }
}

#[test]
fn sampler_sees_time_wait_build_up_and_the_pool_fill() {
    use portlab_sockets::{Sampler, SamplerConfig};
    use std::io::Read;
    use std::time::Duration;
    let ns = NetNs::new("sampler").expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40199")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    let report = ns
        .run(|| {
            let listener = TcpListener::bind("127.0.0.1:20000").expect("bind");
            let dest = listener.local_addr().expect("addr");
            let sampler = Sampler::start(SamplerConfig {
                destinations: vec![dest],
                interval: Duration::from_millis(20),
                pool_size: 200,
            })
            .expect("sampler starts");
            let mut connected = 0;
            for _ in 0..250 {
                // Connect until the 200-port pool is exhausted (EADDRNOTAVAIL).
                let Ok(client) = TcpStream::connect(dest) else {
                    break;
                };
                let (mut server, _) = listener.accept().expect("accept");
                drop(client);
                let _ = server.read(&mut [0u8; 1]);
                connected += 1;
            }
            (connected, sampler.stop())
        })
        .expect("enter netns");
    let (connected, report) = report;
    assert_eq!(connected, 200, "the pool holds exactly 200 ports");
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(
        report.peak.time_wait, 200,
        "the final sample sees every TIME_WAIT"
    );
    assert_eq!(report.peak.max_pool_ports_in_use, 200);
    assert_eq!(
        report.netns_peak.tcp_time_wait, 200,
        "sockstat sees the namespace's TIME_WAIT"
    );
    assert!(report.ticks >= report.samples);
    assert!(report.pool_full_at_ms.is_some());
    assert_eq!(report.counters_delta.active_opens, 200);
    assert!(report.samples >= 2);
    // The thread's own CPU time: it dumped 200 sockets at least once, and it cannot have used
    // more CPU than it had wall time.
    assert!(report.cpu_us > 0, "sampler CPU time is measured");
    assert!(
        report.cpu_us <= report.busy_ms * 1000 + 100_000,
        "CPU {} µs within its wall time {} ms",
        report.cpu_us,
        report.busy_ms
    );
}

#[test]
fn sampler_of_an_ipv4_destination_counts_ipv4_mapped_ipv6_sockets_too() {
    // The sampler walks only the IPv4 table for IPv4 destinations, plus the IPv6 one while it
    // holds IPv4-mapped sockets to them (::ffff:127.0.0.1): both kinds use the pool.
    use portlab_sockets::{Sampler, SamplerConfig};
    use std::time::Duration;
    let ns = NetNs::new("sampmap").expect("create netns (needs root)");
    let report = ns
        .run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let dest = listener.local_addr().expect("addr");
            let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", dest.port())
                .parse()
                .expect("mapped");
            let mut held = Vec::new();
            for target in [dest, dest, dest, mapped, mapped] {
                held.push(TcpStream::connect(target).expect("connect"));
                held.push(listener.accept().expect("accept").0);
            }
            let sampler = Sampler::start(SamplerConfig {
                destinations: vec![dest],
                interval: Duration::from_millis(10),
                pool_size: 0,
            })
            .expect("sampler starts");
            let report = sampler.stop();
            drop(held);
            report
        })
        .expect("enter netns");
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.peak.established, 5, "{:?}", report.peak);
    // One pool: the mapped sockets' local address is shown as IPv4 too.
    assert_eq!(report.peak.pools, 1, "{:?}", report.peak);
}
