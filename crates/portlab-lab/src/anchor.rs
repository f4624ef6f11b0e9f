//! The sandbox's anchor process: `portlab __sandbox-anchor`, started by [`crate::Sandbox`].
//! It leaves the host's network namespace (through a new user namespace when not root), brings
//! up loopback, writes the port-pool sysctls of its own namespace, announces itself on stdout,
//! then samples the namespace's socket table until its stdin closes. Every other process of the
//! sandbox joins its namespaces with setns(2) through `/proc/<anchor>/ns/*`.
//!
//! Protocol (JSON lines on stdout): first `{"event":"ready",...}` or `{"event":"error",...}`,
//! then one `{"event":"sample",...}` per interval ([`Sample`]).

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::sched::CloneFlags;
use portlab_sockets::{PortPoolSettings, Snapshot, SnapshotOptions};
use serde::{Deserialize, Serialize};

use crate::sandbox_config::{Isolation, SandboxConfig};

/// The hidden subcommand of the `portlab` binary that runs [`run`].
pub const ANCHOR_SUBCOMMAND: &str = "__sandbox-anchor";

/// Why the anchor could not set the sandbox up.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnchorError {
    /// unshare(2) refused a network namespace (not root) and a user namespace too.
    #[error("{message}")]
    NamespacesUnavailable {
        /// One sentence: what is missing and how to run the command.
        message: String,
    },
    /// Inside the namespace, loopback or a sysctl could not be set.
    #[error("{message}")]
    Setup {
        /// What failed, with the OS error.
        message: String,
    },
}

/// One reading of the sandbox's socket table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// CLOCK_MONOTONIC in milliseconds (shared by every process on the host, so comparable
    /// with [`monotonic_ms`] in the parent).
    pub monotonic_ms: u64,
    /// Sockets in TIME_WAIT in the whole namespace.
    pub time_wait: u64,
    /// Sockets in ESTABLISHED in the whole namespace.
    pub established: u64,
    /// Ephemeral-port pools (local IP × destination) with at least one socket.
    pub pools: Vec<PoolSample>,
}

/// One pool (local IP × destination address) in a [`Sample`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSample {
    /// Source address of the connections.
    pub local_ip: IpAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
    /// Sockets of this pool in TIME_WAIT.
    pub time_wait: u64,
    /// Ports of this pool held in any state.
    pub used: u64,
}

/// The ready announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// How the namespace was made.
    pub isolation: Isolation,
    /// `ip_local_port_range` read back inside the namespace.
    pub port_range: (u16, u16),
    /// `tcp_tw_reuse` read back inside the namespace.
    pub tw_reuse: u32,
    /// Every port-pool setting read inside the namespace (what a diagnosis reads).
    pub settings: SandboxSettings,
}

/// [`PortPoolSettings`] as read inside the sandbox, in a form that crosses the anchor's pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSettings {
    /// `ip_local_reserved_ports`, as (low, high) ranges.
    pub reserved_ports: Vec<(u16, u16)>,
    /// `tcp_tw_reuse_delay` in ms (absent before Linux 6.14).
    pub tcp_tw_reuse_delay_ms: Option<u32>,
    /// `tcp_timestamps`.
    pub tcp_timestamps: u32,
    /// `tcp_max_tw_buckets`.
    pub tcp_max_tw_buckets: u64,
    /// `tcp_fin_timeout` (FIN_WAIT_2), seconds.
    pub tcp_fin_timeout_secs: u32,
    /// `net.core.somaxconn`.
    pub somaxconn: u32,
    /// Open-file limit (soft, hard).
    pub nofile: (u64, u64),
}

impl Ready {
    /// The sandbox's settings as portlab-sockets describes a namespace's.
    pub fn port_pool_settings(&self) -> PortPoolSettings {
        let s = &self.settings;
        let range = |(low, high): (u16, u16)| portlab_sockets::PortRange { low, high };
        PortPoolSettings {
            ip_local_port_range: range(self.port_range),
            ip_local_reserved_ports: s.reserved_ports.iter().copied().map(range).collect(),
            tcp_tw_reuse: match self.tw_reuse {
                0 => portlab_sockets::TwReuse::Disabled,
                1 => portlab_sockets::TwReuse::All,
                2 => portlab_sockets::TwReuse::LoopbackOnly,
                other => portlab_sockets::TwReuse::Unknown(other),
            },
            tcp_tw_reuse_delay_ms: s.tcp_tw_reuse_delay_ms,
            tcp_timestamps: s.tcp_timestamps,
            tcp_max_tw_buckets: s.tcp_max_tw_buckets,
            tcp_fin_timeout_secs: s.tcp_fin_timeout_secs,
            somaxconn: s.somaxconn,
            nofile_soft: s.nofile.0,
            nofile_hard: s.nofile.1,
        }
    }
}

/// A line of the anchor's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AnchorEvent {
    /// The namespace is set up.
    Ready(Ready),
    /// Set-up failed; the anchor exits with code 2.
    Error(AnchorError),
    /// A socket-table reading.
    Sample(Sample),
}

/// CLOCK_MONOTONIC in milliseconds.
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Runs the anchor: sets up the namespace, writes the ready event (or the error event) to
/// `out`, then a sample every `config.sample_interval_ms` until `input` reaches end of file or
/// `out` is closed. Must run in a single-threaded process (unshare of a user namespace).
///
/// # Errors
/// The [`AnchorError`] also written as an error event.
pub fn run(
    config: &SandboxConfig,
    input: impl AsFd,
    mut out: impl Write,
) -> Result<(), AnchorError> {
    let ready = match set_up(config) {
        Ok(ready) => ready,
        Err(err) => {
            let _ = write_event(&mut out, &AnchorEvent::Error(err.clone()));
            return Err(err);
        }
    };
    if write_event(&mut out, &AnchorEvent::Ready(ready)).is_err() {
        return Ok(());
    }
    sample_until_eof(config, input, out);
    Ok(())
}

fn write_event(out: &mut impl Write, event: &AnchorEvent) -> io::Result<()> {
    let line = serde_json::to_string(event).map_err(io::Error::other)?;
    writeln!(out, "{line}")?;
    out.flush()
}

fn set_up(config: &SandboxConfig) -> Result<Ready, AnchorError> {
    let isolation = enter_namespaces()?;
    loopback_up().map_err(|e| AnchorError::Setup {
        message: format!("bringing up loopback in the sandbox: {e}"),
    })?;
    let (low, high) = config.port_range;
    write_sysctl("ip_local_port_range", &format!("{low} {high}"))?;
    write_sysctl("tcp_tw_reuse", &config.tw_reuse.to_string())?;
    for (name, value) in &config.sysctls {
        if !crate::sandbox_config::valid_sysctl_name(name) {
            return Err(AnchorError::Setup {
                message: format!("{name:?} is not a net.ipv4 sysctl name"),
            });
        }
        write_sysctl(name, value)?;
    }
    let all = PortPoolSettings::read().map_err(|e| AnchorError::Setup {
        message: format!("reading the sandbox's port-pool settings: {e}"),
    })?;
    Ok(Ready {
        isolation,
        port_range: (all.ip_local_port_range.low, all.ip_local_port_range.high),
        tw_reuse: all.tcp_tw_reuse.sysctl_value(),
        settings: SandboxSettings {
            reserved_ports: all
                .ip_local_reserved_ports
                .iter()
                .map(|r| (r.low, r.high))
                .collect(),
            tcp_tw_reuse_delay_ms: all.tcp_tw_reuse_delay_ms,
            tcp_timestamps: all.tcp_timestamps,
            tcp_max_tw_buckets: all.tcp_max_tw_buckets,
            tcp_fin_timeout_secs: all.tcp_fin_timeout_secs,
            somaxconn: all.somaxconn,
            nofile: (all.nofile_soft, all.nofile_hard),
        },
    })
}

/// Root: a new network namespace. Otherwise: a new user namespace mapping our uid/gid to 0,
/// and a network namespace owned by it (user_namespaces(7)).
fn enter_namespaces() -> Result<Isolation, AnchorError> {
    if nix::unistd::geteuid().is_root() {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
            AnchorError::NamespacesUnavailable {
                message: format!(
                "portlab reproduce needs a network namespace, but the kernel refused one even to \
                 root ({e}): run it on a host (or container started with --privileged) where \
                 `unshare -n true` works"
            ),
            }
        })?;
        return Ok(Isolation::NetworkNamespace);
    }
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET).map_err(|e| {
        AnchorError::NamespacesUnavailable {
            message: format!(
                "portlab reproduce needs a network namespace, and as a non-root user it can only \
                 get one through an unprivileged user namespace, which this system refuses \
                 ({e}): run it as root (sudo portlab reproduce) or allow user namespaces \
                 (sudo sysctl -w user.max_user_namespaces=15000, or \
                 kernel.unprivileged_userns_clone=1 on kernels that have it)"
            ),
        }
    })?;
    let setup = |what: &str, e: io::Error| AnchorError::Setup {
        message: format!("writing {what} of the sandbox's user namespace: {e}"),
    };
    std::fs::write("/proc/self/setgroups", "deny").map_err(|e| setup("setgroups", e))?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).map_err(|e| setup("uid_map", e))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).map_err(|e| setup("gid_map", e))?;
    Ok(Isolation::UserAndNetworkNamespace)
}

/// SIOCGIFFLAGS / SIOCSIFFLAGS on `lo` (what `ip link set lo up` does through netlink).
fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and a properly initialised ifreq naming an interface.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// /proc/sys/net resolves to the network namespace of the process that opens the file, so this
/// writes the sandbox's value, never the host's.
fn write_sysctl(name: &str, value: &str) -> Result<(), AnchorError> {
    let path = format!("/proc/sys/net/ipv4/{name}");
    std::fs::write(&path, value).map_err(|e| AnchorError::Setup {
        message: format!("setting {path} to {value:?} inside the sandbox: {e}"),
    })
}

/// Samples every interval; the wait between samples is a poll(2) on `input`, so end of input
/// ends the loop at once.
fn sample_until_eof(config: &SandboxConfig, input: impl AsFd, mut out: impl Write) {
    let interval = Duration::from_millis(config.sample_interval_ms.max(1));
    let settings = PortPoolSettings::read().ok();
    loop {
        if input_closed(&input, interval) {
            return;
        }
        let Some(settings) = &settings else { continue };
        let Ok(snapshot) = Snapshot::take(settings, &SnapshotOptions::default()) else {
            continue;
        };
        let sample = Sample {
            monotonic_ms: monotonic_ms(),
            time_wait: snapshot.states.time_wait,
            established: snapshot.states.established,
            pools: snapshot
                .pools
                .iter()
                .map(|p| PoolSample {
                    local_ip: p.local_ip,
                    destination: p.destination,
                    time_wait: p.time_wait,
                    used: p.used,
                })
                .collect(),
        };
        if write_event(&mut out, &AnchorEvent::Sample(sample)).is_err() {
            return;
        }
    }
}

/// Waits up to `timeout` for input; true when the input reached end of file (or failed).
fn input_closed(input: &impl AsFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => false,
        Ok(_) => {
            let mut buf = [0u8; 64];
            // Any readable state: read once; 0 bytes means end of file.
            matches!(nix::unistd::read(input.as_fd(), &mut buf), Ok(0) | Err(_))
        }
        Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}
