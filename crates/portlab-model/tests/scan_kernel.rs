//! The slow-connect cliff against the real kernel, in a namespace made by the test (root):
//! one destination's pool filled by unbound connects (the kernel's own fill), connect() timed
//! below and past half full, compared with `portlab_model::fill_curve`.
//!
//! Timed in CPU time of the connecting thread (`CLOCK_THREAD_CPUTIME_ID`): the port search
//! runs in the caller's context, so a loaded machine stretches the wall clock (the walk calls
//! `cond_resched()` per port) but hardly the CPU time. The bands are wide on purpose: the test
//! checks the order of magnitude, the calibration script the 25 %.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use portlab_model::{fill_curve, FillOrder, FillQuery, PortRange, ScanCost};
use portlab_testkit::NetNs;

const LOW: u16 = 40000;
const PORTS: u32 = 6000;
const DEST: &str = "127.0.0.1:8080";

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// connect → accept → client closes → server closes: one client TIME_WAIT towards DEST.
fn hold_one(listener: &TcpListener) -> std::io::Result<()> {
    let client = TcpStream::connect(DEST)?;
    let (mut server, _) = listener.accept()?;
    drop(client);
    let mut buf = [0u8; 16];
    while server.read(&mut buf)? > 0 {}
    Ok(())
}

/// Median CPU time of `n` connect() calls; the server closes first, so no TIME_WAIT is left.
fn probe(listener: &TcpListener, n: usize) -> f64 {
    let mut us: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = thread_cpu();
            let client = TcpStream::connect(DEST).expect("probe connect");
            let spent = thread_cpu() - t0;
            let (server, _) = listener.accept().expect("accept");
            drop(server);
            let mut c = client;
            let mut buf = [0u8; 16];
            while c.read(&mut buf).unwrap_or(0) > 0 {}
            spent.as_secs_f64() * 1e6
        })
        .collect();
    us.sort_by(f64::total_cmp);
    us[n / 2]
}

fn time_wait_towards_dest() -> usize {
    // This thread's namespace (/proc/net is the main thread's): "sl local rem st ..."; 1F90 is port 8080, 06 is TIME_WAIT.
    std::fs::read_to_string("/proc/thread-self/net/tcp")
        .expect("read /proc/thread-self/net/tcp")
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(":1F90") && f[3] == "06"
        })
        .count()
}

#[test]
fn past_half_full_connect_walks_the_first_parity_as_predicted() {
    let ns = NetNs::new("scan").expect("netns (needs root)");
    let high = u32::from(LOW) + PORTS - 1;
    ns.sysctl("net.ipv4.ip_local_port_range", &format!("{LOW} {high}"))
        .unwrap();
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let (empty, below, past, tw) = ns
        .run(|| {
            let listener = TcpListener::bind(DEST).expect("listen");
            let empty = probe(&listener, 41);
            for _ in 0..(PORTS * 2 / 5) {
                hold_one(&listener).expect("fill below half");
            }
            let below = probe(&listener, 41);
            for _ in 0..(PORTS / 2 - PORTS * 2 / 5) {
                hold_one(&listener).expect("fill to half");
            }
            let past = probe(&listener, 41);
            (empty, below, past, time_wait_towards_dest())
        })
        .expect("run in namespace");
    assert!(
        tw as u32 >= PORTS / 2 - 10,
        "the fill left {tw} TIME_WAIT entries, not {}",
        PORTS / 2
    );

    let range = PortRange::new(LOW, high as u16).unwrap();
    let mut q = FillQuery::new(range);
    q.fills_pct = vec![40.0, 50.0];
    q.order = FillOrder::Kernel;
    let curve = fill_curve(&q).unwrap();
    let cost = ScanCost::default();
    let predicted_extra = curve.points[1].connect_us - cost.connect_base_us;
    let measured_extra = past - empty;
    eprintln!(
        "connect CPU p50: empty {empty:.1} us, 40 % {below:.1} us, 50 % {past:.1} us; \
         extra past half measured {measured_extra:.0} us, predicted {predicted_extra:.0} us"
    );
    // Below half the kernel's fill is sequential behind its cursor: about one port scanned.
    assert!(curve.points[0].skipped_p50 <= 3.0);
    assert!(
        below < empty * 3.0 + 20.0,
        "40 % full already slow: {below:.1} us vs {empty:.1} us empty"
    );
    // Past half every connect walks all 3,000 even ports: the model's order of magnitude.
    assert!(
        (predicted_extra / 4.0..=predicted_extra * 4.0).contains(&measured_extra),
        "past half: {measured_extra:.0} us extra, predicted {predicted_extra:.0} us"
    );
    assert!(past > empty * 5.0, "no cliff: {past:.1} vs {empty:.1} us");
}
