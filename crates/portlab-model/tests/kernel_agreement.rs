//! The simulator against the real kernel, in a network namespace made by the test (root).
//!
//! One thread enters the namespace (`setns` switches only the calling thread) and runs
//! connect → accept → client close → server close loops on 127.0.0.1 with a small port range
//! and `tcp_tw_reuse` set inside the namespace only. The host's sysctls are never written.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portlab_model::{
    simulate, ConnectionPolicy, Latency, Os, OsProfile, PortRange, TwReuse, Workload,
};

/// A network namespace deleted on drop.
struct Netns {
    name: String,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "plmodel-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]).expect("ip netns add (needs root)");
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]).expect("lo up");
        ns
    }

    fn sysctl(&self, settings: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.name, "sysctl", "-qw"];
        args.extend_from_slice(settings);
        run("ip", &args)
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

#[derive(Debug, Default)]
struct Measured {
    successes: u64,
    failures: u64,
    first_failure: Option<Duration>,
    first_reuse_after_failure: Option<Duration>,
    time_wait: usize,
    latency: Duration,
}

/// One cycle: connect, accept, the client closes first, the server reads EOF and closes, so
/// the client ends in TIME_WAIT (RFC 9293; research §3.1).
fn cycle(listener: &TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let client = TcpStream::connect(addr)?;
    let (mut server, _) = listener.accept()?;
    drop(client);
    let mut buf = [0u8; 64];
    while server.read(&mut buf)? > 0 {}
    Ok(())
}

/// Runs cycles until `attempts` are made or `wall` has passed.
fn measure(listener: &TcpListener, attempts: u64, wall: Duration) -> Measured {
    let start = Instant::now();
    let mut m = Measured::default();
    for _ in 0..attempts {
        if start.elapsed() >= wall {
            break;
        }
        let t0 = Instant::now();
        match cycle(listener) {
            Ok(()) => {
                m.successes += 1;
                m.latency += t0.elapsed();
                if let Some(first) = m.first_failure {
                    m.first_reuse_after_failure
                        .get_or_insert(t0 - start - first);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                m.failures += 1;
                m.first_failure.get_or_insert(t0 - start);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    m.time_wait = count_time_wait();
    m
}

/// TIME_WAIT sockets (state 06) of this thread's namespace.
fn count_time_wait() -> usize {
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").expect("read tcp table");
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(3) == Some("06"))
        .count()
}

/// Gives the listener's bind(0) a range of its own, apart from the client's 40000.. range:
/// a bind()-ed port inside the client's range would be one port fewer for connect()
/// (research §1.3 rule 2).
fn listener_range(ns: &Netns) -> Result<(), String> {
    ns.sysctl(&["net.ipv4.ip_local_port_range=20000 20099"])
}

/// The client's range 40000..40000+ports and TIME_WAIT reuse settings.
fn configure_client(
    ns: &Netns,
    ports: u16,
    reuse: u8,
    delay_ms: Option<u32>,
) -> Result<(), String> {
    let range = format!("net.ipv4.ip_local_port_range=40000 {}", 40000 + ports - 1);
    let reuse = format!("net.ipv4.tcp_tw_reuse={reuse}");
    ns.sysctl(&[&range, &reuse])?;
    if let Some(d) = delay_ms {
        ns.sysctl(&[&format!("net.ipv4.tcp_tw_reuse_delay={d}")])?;
    }
    Ok(())
}

fn linux(ports: u16, reuse: TwReuse) -> OsProfile {
    let mut p = OsProfile::preset(Os::Linux);
    p.range = PortRange::new(40000, 40000 + ports - 1).expect("range");
    p.tw_reuse = reuse;
    p
}

#[test]
fn reuse_0_client_closes_matches_the_simulator_exactly() {
    let ns = Netns::new("r0");
    listener_range(&ns).expect("sysctl");
    let measured = ns.run_inside(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        configure_client(&ns, 500, 0, None).expect("sysctl");
        measure(&listener, 1500, Duration::from_secs(20))
    });
    assert_eq!(measured.successes, 500, "{measured:?}");
    assert_eq!(measured.failures, 1000, "{measured:?}");
    assert_eq!(measured.time_wait, 500, "{measured:?}");

    let latency = measured.latency / 500;
    let w = Workload::closed(1, Latency::fixed(latency), ConnectionPolicy::ClientCloses)
        .with_max_attempts(1500);
    let r = simulate(&linux(500, TwReuse::Off), &w, 1).expect("simulate");
    assert_eq!(r.totals.successes, measured.successes);
    assert_eq!(r.totals.addr_not_available, measured.failures);
    assert_eq!(r.peak_time_wait, measured.time_wait as u64);
    let (sim_first, real_first) = (
        r.first_failure_secs.unwrap_or(f64::NAN),
        measured.first_failure.map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    assert!(
        (sim_first - real_first).abs() <= (0.1 * real_first).max(0.2),
        "first failure: simulated {sim_first} s, measured {real_first} s"
    );
}

#[test]
fn reuse_1_takes_time_wait_over_after_the_delay_like_the_simulator() {
    let ns = Netns::new("r1");
    listener_range(&ns).expect("sysctl");
    let Ok(()) = has_tw_reuse_delay(&ns) else {
        eprintln!("skipped: this kernel has no net.ipv4.tcp_tw_reuse_delay (< 6.14)");
        return;
    };
    let measured = ns.run_inside(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        configure_client(&ns, 200, 1, Some(100)).expect("sysctl");
        measure(&listener, u64::MAX, Duration::from_millis(1000))
    });
    // Ports come back 100 ms after their close: the first reuse follows the first failure
    // by at most about one delay.
    let reuse_gap = measured
        .first_reuse_after_failure
        .expect("a port was reused");
    assert!(reuse_gap <= Duration::from_millis(150), "{measured:?}");
    // About ports / delay = 2,000 successes per second.
    let w = Workload::closed(
        1,
        Latency::fixed(measured.latency / measured.successes.max(1) as u32),
        ConnectionPolicy::ClientCloses,
    )
    .with_duration(Duration::from_millis(1000));
    let mut profile = linux(200, TwReuse::All);
    profile.tw_reuse_delay = Duration::from_millis(100);
    let r = simulate(&profile, &w, 1).expect("simulate");
    let (sim, real) = (r.totals.successes as f64, measured.successes as f64);
    assert!(
        (sim - real).abs() <= 0.1 * real,
        "successes in 1 s: simulated {sim}, measured {real} ({measured:?})"
    );
}

/// Whether this kernel has `tcp_tw_reuse_delay` (Linux 6.14+).
fn has_tw_reuse_delay(ns: &Netns) -> Result<(), String> {
    ns.sysctl(&["net.ipv4.tcp_tw_reuse_delay=1000"])
}
