//! # portlab-testkit
//!
//! Helpers for portlab's integration tests that need a real kernel with a constrained port
//! pool: [`NetNs`] creates a named network namespace (`ip netns add`), brings up loopback, sets
//! sysctls inside it only, runs commands or closures in it, and deletes it when dropped —
//! also when the test panics. Needs root (tests run as root here and in CI).
//!
//! ```no_run
//! let ns = portlab_testkit::NetNs::new("ports")?;
//! ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")?;
//! let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

use std::fs::File;
use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates `pl-<prefix>-<pid>-<n>` with loopback up.
    ///
    /// # Errors
    /// The `ip` command's failure (not root, no iproute2).
    pub fn new(prefix: &str) -> io::Result<NetNs> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("pl-{prefix}-{}-{n}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.exec_checked(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets a sysctl inside the namespace only, e.g. `("net.ipv4.tcp_tw_reuse", "0")`.
    ///
    /// # Errors
    /// The `sysctl` command's failure.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec_checked(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a command inside the namespace and returns its output if it exited 0.
    ///
    /// # Errors
    /// Spawn failure or a non-zero exit (with its stderr).
    pub fn exec_checked(&self, argv: &[&str]) -> io::Result<Output> {
        let (program, rest) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        run_checked(self.command(program).args(rest))
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns its result.
    /// Sockets created by `f` belong to the namespace and stay there after it returns.
    ///
    /// # Errors
    /// Entering the namespace failed (setns).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| io::Error::other("closure in the namespace panicked"))?
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let output = cmd.output()?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Polls `condition` every millisecond until it holds or `timeout` passes; returns whether it
/// held. The way tests wait for the kernel without sleeping for a guessed time.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
