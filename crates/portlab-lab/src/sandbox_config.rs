//! What a sandbox is asked to be ([`SandboxConfig`]) and how it was made ([`Isolation`]):
//! plain data shared by the anchor inside the namespace and the [`crate::Sandbox`] outside.

use serde::{Deserialize, Serialize};

/// How a sandbox isolates its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A network namespace (the lab runs as root).
    NetworkNamespace,
    /// A user namespace mapping the caller to root, owning a network namespace (no root needed
    /// where unprivileged user namespaces are allowed).
    UserAndNetworkNamespace,
}

/// The sysctls a sandbox sets inside its namespace, and how often it samples its sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// `net.ipv4.ip_local_port_range` inside the sandbox, (low, high) inclusive.
    pub port_range: (u16, u16),
    /// `net.ipv4.tcp_tw_reuse` inside the sandbox: 0 off, 1 on, 2 loopback only.
    pub tw_reuse: u8,
    /// Interval between two socket-table samples, in milliseconds.
    pub sample_interval_ms: u64,
    /// Further `net.ipv4.*` sysctls set inside the sandbox, as (name under
    /// `/proc/sys/net/ipv4/`, value): e.g. (`tcp_abort_on_overflow`, `1`),
    /// (`tcp_tw_reuse_delay`, `1000`). Names are `[a-z0-9_]+`.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

impl Default for SandboxConfig {
    /// 1,000 ports (40000–40999), no TIME_WAIT reuse, a sample every 20 ms, no other sysctl.
    fn default() -> Self {
        SandboxConfig {
            port_range: (40000, 40999),
            tw_reuse: 0,
            sample_interval_ms: 20,
            sysctls: Vec::new(),
        }
    }
}

/// Whether `name` may name a file under `/proc/sys/net/ipv4/` (no path separators, no dots).
pub fn valid_sysctl_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
