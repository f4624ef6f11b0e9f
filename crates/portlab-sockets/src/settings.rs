//! The kernel settings that decide the size and turnover of the ephemeral-port pool, read from
//! `/proc/sys/net` of the calling process's network namespace (all of them are per-netns since
//! Linux 4.x–5.x; see research/port-allocation.md §3.6) and the process's open-file limit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors reading the port-pool settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A file under /proc/sys could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file under /proc/sys held something other than what the kernel writes there.
    #[error("parsing {path}: unexpected content {content:?}")]
    Parse {
        /// The file that failed.
        path: PathBuf,
        /// What it held (trimmed).
        content: String,
    },
}

/// An inclusive range of ports, as `ip_local_port_range` and `ip_local_reserved_ports` write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub low: u16,
    /// Last port of the range (inclusive).
    pub high: u16,
}

impl PortRange {
    /// Number of ports in the range (`high - low + 1`), 0 if the range is inverted.
    pub fn len(&self) -> u32 {
        if self.high < self.low {
            0
        } else {
            u32::from(self.high) - u32::from(self.low) + 1
        }
    }

    /// True when the range holds no port.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

/// What `net.ipv4.tcp_tw_reuse` allows connect() to do with a TIME_WAIT 4-tuple
/// (Documentation/networking/ip-sysctl.rst; net/ipv4/tcp_ipv4.c `tcp_twsk_unique()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwReuse {
    /// 0: never take over a TIME_WAIT 4-tuple; the port stays blocked for the full 60 s.
    Disabled,
    /// 1: take over any TIME_WAIT 4-tuple older than `tcp_tw_reuse_delay` (needs timestamps).
    All,
    /// 2 (default since Linux 4.18): as 1, but only for loopback traffic.
    LoopbackOnly,
    /// A value the kernel does not document.
    Unknown(u32),
}

impl TwReuse {
    fn from_sysctl(value: u32) -> Self {
        match value {
            0 => TwReuse::Disabled,
            1 => TwReuse::All,
            2 => TwReuse::LoopbackOnly,
            other => TwReuse::Unknown(other),
        }
    }

    /// The sysctl value.
    pub fn sysctl_value(self) -> u32 {
        match self {
            TwReuse::Disabled => 0,
            TwReuse::All => 1,
            TwReuse::LoopbackOnly => 2,
            TwReuse::Unknown(v) => v,
        }
    }

    /// Whether a connect() to a destination (loopback or not) may take over TIME_WAIT entries.
    pub fn applies(self, loopback: bool) -> bool {
        match self {
            TwReuse::All => true,
            TwReuse::LoopbackOnly => loopback,
            TwReuse::Disabled | TwReuse::Unknown(_) => false,
        }
    }
}

/// The port-pool settings of one network namespace.
///
/// Field names are stable: they are part of `portlab ports --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortPoolSettings {
    /// `net.ipv4.ip_local_port_range`: the ephemeral ports connect() and bind(0) choose from
    /// (IPv6 uses the same range).
    pub ip_local_port_range: PortRange,
    /// `net.ipv4.ip_local_reserved_ports`: ports automatic allocation skips.
    pub ip_local_reserved_ports: Vec<PortRange>,
    /// `net.ipv4.tcp_tw_reuse`.
    pub tcp_tw_reuse: TwReuse,
    /// `net.ipv4.tcp_tw_reuse_delay` in ms (Linux 6.14+); `None` on older kernels, where the
    /// delay is "the next whole second" (≤ 1 s).
    pub tcp_tw_reuse_delay_ms: Option<u32>,
    /// `net.ipv4.tcp_timestamps` (0 off, 1 on with random offsets, 2 on without); TIME_WAIT reuse
    /// needs timestamps.
    pub tcp_timestamps: u32,
    /// `net.ipv4.tcp_max_tw_buckets`: beyond this many TIME_WAIT sockets the kernel destroys
    /// closing sockets at once (counted as TCPTimeWaitOverflow).
    pub tcp_max_tw_buckets: u64,
    /// `net.ipv4.tcp_fin_timeout` in seconds. This is the FIN_WAIT_2 timeout of orphaned
    /// sockets; it does NOT shorten TIME_WAIT, which is fixed at 60 s (`TCP_TIMEWAIT_LEN`).
    pub tcp_fin_timeout_secs: u32,
    /// `net.core.somaxconn`: the cap on a listener's accept-queue backlog.
    pub somaxconn: u32,
    /// Soft `RLIMIT_NOFILE` of this process: one socket is one file descriptor.
    pub nofile_soft: u64,
    /// Hard `RLIMIT_NOFILE` of this process.
    pub nofile_hard: u64,
}

/// TIME_WAIT length on Linux: `TCP_TIMEWAIT_LEN` (60 s) in include/net/tcp.h, compiled in.
pub const LINUX_TIME_WAIT_SECS: u32 = 60;

impl PortPoolSettings {
    /// Reads the settings of the caller's network namespace from `/proc/sys`.
    ///
    /// # Errors
    /// [`SettingsError`] when a required file is missing or malformed. `tcp_tw_reuse_delay` is
    /// optional (absent before Linux 6.14).
    pub fn read() -> Result<Self, SettingsError> {
        Self::read_from(Path::new("/proc/sys"))
    }

    /// Reads the settings from a directory laid out as `/proc/sys` (used by tests).
    ///
    /// # Errors
    /// As [`PortPoolSettings::read`].
    pub fn read_from(root: &Path) -> Result<Self, SettingsError> {
        let ipv4 = root.join("net/ipv4");
        let range_path = ipv4.join("ip_local_port_range");
        let range_text = read_text(&range_path)?;
        let ip_local_port_range = parse_port_range_pair(&range_text)
            .ok_or_else(|| parse_error(&range_path, &range_text))?;
        let reserved_path = ipv4.join("ip_local_reserved_ports");
        let reserved_text = read_text(&reserved_path)?;
        let ip_local_reserved_ports = parse_port_list(&reserved_text)
            .ok_or_else(|| parse_error(&reserved_path, &reserved_text))?;
        let delay_path = ipv4.join("tcp_tw_reuse_delay");
        let tcp_tw_reuse_delay_ms = if delay_path.exists() {
            Some(read_number(&delay_path)?)
        } else {
            None
        };
        let (nofile_soft, nofile_hard) = nofile_limits();
        Ok(Self {
            ip_local_port_range,
            ip_local_reserved_ports,
            tcp_tw_reuse: TwReuse::from_sysctl(read_number(&ipv4.join("tcp_tw_reuse"))?),
            tcp_tw_reuse_delay_ms,
            tcp_timestamps: read_number(&ipv4.join("tcp_timestamps"))?,
            tcp_max_tw_buckets: read_number(&ipv4.join("tcp_max_tw_buckets"))?,
            tcp_fin_timeout_secs: read_number(&ipv4.join("tcp_fin_timeout"))?,
            somaxconn: read_number(&root.join("net/core/somaxconn"))?,
            nofile_soft,
            nofile_hard,
        })
    }

    /// Ports of the range that automatic allocation may hand out: the range minus the
    /// reserved ports that fall inside it.
    pub fn usable_ephemeral_ports(&self) -> u32 {
        let range = self.ip_local_port_range;
        let reserved: u32 = self
            .ip_local_reserved_ports
            .iter()
            .map(|r| {
                let low = r.low.max(range.low);
                let high = r.high.min(range.high);
                PortRange { low, high }.len()
            })
            .sum();
        range.len().saturating_sub(reserved)
    }

    /// How long a TIME_WAIT entry blocks its 4-tuple for a new connect() to a destination, in
    /// milliseconds: 60 s without reuse, `tcp_tw_reuse_delay` (1 s before 6.14) where reuse
    /// applies and timestamps are on (net/ipv4/tcp_ipv4.c `tcp_twsk_unique()`).
    pub fn time_wait_block_ms(&self, loopback_destination: bool) -> u32 {
        if self.tcp_timestamps != 0 && self.tcp_tw_reuse.applies(loopback_destination) {
            self.tcp_tw_reuse_delay_ms.unwrap_or(1000).max(1)
        } else {
            LINUX_TIME_WAIT_SECS * 1000
        }
    }

    /// The new-connection rate one pool (local IP × destination 4-tuple space) sustains when the
    /// client closes first: usable ports ÷ how long each port stays blocked, in connections/s.
    pub fn sustainable_rate_per_sec(&self, loopback_destination: bool) -> f64 {
        let block_secs = f64::from(self.time_wait_block_ms(loopback_destination)) / 1000.0;
        f64::from(self.usable_ephemeral_ports()) / block_secs
    }
}

fn read_text(path: &Path) -> Result<String, SettingsError> {
    fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(path: &Path, content: &str) -> SettingsError {
    SettingsError::Parse {
        path: path.to_path_buf(),
        content: content.trim().to_string(),
    }
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, SettingsError> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| parse_error(path, &text))
}

/// Parses `ip_local_port_range` ("32768\t60999").
fn parse_port_range_pair(text: &str) -> Option<PortRange> {
    let mut parts = text.split_whitespace();
    let low = parts.next()?.parse().ok()?;
    let high = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(PortRange { low, high })
}

/// Parses `ip_local_reserved_ports` ("" or "8080,40000-40010").
fn parse_port_list(text: &str) -> Option<Vec<PortRange>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| match item.split_once('-') {
            Some((low, high)) => Some(PortRange {
                low: low.trim().parse().ok()?,
                high: high.trim().parse().ok()?,
            }),
            None => {
                let port = item.trim().parse().ok()?;
                Some(PortRange {
                    low: port,
                    high: port,
                })
            }
        })
        .collect()
}

fn nofile_limits() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc == 0 {
        (limit.rlim_cur, limit.rlim_max)
    } else {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_range_and_reserved_list() {
        assert_eq!(
            parse_port_range_pair("32768\t60999\n"),
            Some(PortRange {
                low: 32768,
                high: 60999
            })
        );
        assert_eq!(parse_port_range_pair("1 2 3"), None);
        assert_eq!(parse_port_list("\n"), Some(vec![]));
        assert_eq!(
            parse_port_list("8080,40000-40010\n"),
            Some(vec![
                PortRange {
                    low: 8080,
                    high: 8080
                },
                PortRange {
                    low: 40000,
                    high: 40010
                }
            ])
        );
        assert_eq!(parse_port_list("80,x"), None);
    }

    fn settings(reuse: TwReuse) -> PortPoolSettings {
        PortPoolSettings {
            ip_local_port_range: PortRange {
                low: 32768,
                high: 60999,
            },
            ip_local_reserved_ports: vec![PortRange {
                low: 32760,
                high: 32777,
            }],
            tcp_tw_reuse: reuse,
            tcp_tw_reuse_delay_ms: Some(1000),
            tcp_timestamps: 1,
            tcp_max_tw_buckets: 262_144,
            tcp_fin_timeout_secs: 60,
            somaxconn: 4096,
            nofile_soft: 1024,
            nofile_hard: 4096,
        }
    }

    #[test]
    fn usable_ports_subtract_only_reserved_ports_inside_the_range() {
        // 28,232 ports in the default range; 32768..=32777 (10 ports) of the reserved block
        // fall inside it.
        assert_eq!(settings(TwReuse::Disabled).usable_ephemeral_ports(), 28_222);
    }

    #[test]
    fn sustainable_rate_follows_tw_reuse_scope() {
        let off = settings(TwReuse::Disabled);
        assert!((off.sustainable_rate_per_sec(false) - 28_222.0 / 60.0).abs() < 1e-9);
        let loopback = settings(TwReuse::LoopbackOnly);
        assert_eq!(loopback.time_wait_block_ms(true), 1000);
        assert_eq!(loopback.time_wait_block_ms(false), 60_000);
        let mut all = settings(TwReuse::All);
        assert_eq!(all.time_wait_block_ms(false), 1000);
        all.tcp_timestamps = 0;
        assert_eq!(
            all.time_wait_block_ms(false),
            60_000,
            "reuse needs timestamps"
        );
    }

    #[test]
    fn reads_this_hosts_proc_sys() {
        let read = PortPoolSettings::read().expect("/proc/sys is readable");
        assert!(!read.ip_local_port_range.is_empty());
        assert!(read.somaxconn > 0);
        assert!(read.nofile_soft > 0);
    }
}
