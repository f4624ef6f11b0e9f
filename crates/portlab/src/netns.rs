//! `--netns PATH`: reading another network namespace (a pod's, a sandbox's) from this host.
//!
//! The calling thread joins the namespace with setns(2) (CLONE_NEWNET) before any kernel
//! handle is opened. What follows the thread then reads that namespace: sysctls under
//! /proc/sys/net (resolved against the opener's namespace), netlink sockets it opens
//! (NETLINK_SOCK_DIAG, ctnetlink), and /proc/self/net, which follows the thread-group leader
//! (the main thread, where commands run). Sockets opened before stay in the caller's
//! namespace: the exporter's listener is bound first for that reason.
//! Needs CAP_SYS_ADMIN in the namespace's owning user namespace (root here).

use std::fs::File;
use std::path::Path;

/// Moves the calling thread into the network namespace at `path` (`/run/netns/NAME` or
/// `/proc/PID/ns/net`).
///
/// # Errors
/// A usage error (exit 2) naming `--netns` and the path when the file cannot be opened or is
/// not a network namespace, or when setns(2) is refused (EPERM without CAP_SYS_ADMIN).
pub fn enter(path: &Path) -> anyhow::Result<()> {
    let fix = "give a network namespace file such as /run/netns/NAME or /proc/PID/ns/net";
    let file = File::open(path)
        .map_err(|e| crate::exit::usage(format!("--netns {}: {e}; {fix}", path.display())))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        let why = match e {
            nix::errno::Errno::EINVAL => "not a network namespace file".to_string(),
            nix::errno::Errno::EPERM => "entering it needs CAP_SYS_ADMIN (run as root)".to_string(),
            other => other.desc().to_string(),
        };
        crate::exit::usage(format!("--netns {}: {why}; {fix}", path.display()))
    })
}
