//! Shared by the tests that trace the whole host (`trace`, `doctor --trace`, `exporter
//! --trace`): the lock that runs them one at a time, the namespace whose pool a churn exhausts
//! exactly, and the python3 churn loop they trace.

#![allow(dead_code)]

use std::net::TcpListener;

use portlab_testkit::NetNs;

/// A fresh namespace (`prefix`-named) whose pool of 1,000 ports (40000–40999) a churn toward
/// one destination exhausts exactly: tcp_tw_reuse=0, and tcp_rfc1337=1 because the server's
/// occasional RST would otherwise kill a TIME_WAIT entry (RFC 1337 assassination; the default
/// 0 let 1,002 connects succeed, measured) and free a port.
pub fn exhaustible_namespace(prefix: &str) -> NetNs {
    let ns = NetNs::new(prefix).expect("create netns (needs root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
        .expect("sysctl");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").expect("sysctl");
    ns.sysctl("net.ipv4.tcp_rfc1337", "1").expect("sysctl");
    ns
}

/// A TCP listener on `addr` with an accept backlog of `backlog`, in the caller's namespace.
pub fn listen(addr: &str, backlog: i32) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Holds an exclusive lock so tracing tests run one at a time: each tracer sees the whole
/// host, so the others' connect storms are kept out of its rings.
pub struct Serial(#[allow(dead_code)] std::fs::File);

/// Blocks until this process holds the tracing tests' lock (released on drop).
pub fn serial() -> Serial {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("portlab-trace-tests.lock"))
        .expect("lock file");
    // SAFETY: flock on a descriptor we own; blocks until the other test releases it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock");
    Serial(file)
}

/// python3 -c CHURN PORT N: connect to 127.0.0.1:PORT N times, closing each at once (the client
/// closes first), and print its own counts by errno as JSON (pid, comm, ok, eaddrnotavail, other).
pub const CHURN: &str = r#"
import errno, json, os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ok = ana = other = 0
for _ in range(n):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        ok += 1
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            ana += 1
        else:
            other += 1
    s.close()
comm = open("/proc/self/comm").read().strip()
print(json.dumps({"pid": os.getpid(), "comm": comm, "ok": ok, "eaddrnotavail": ana, "other": other}))
"#;
