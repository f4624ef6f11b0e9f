//! OS profiles: the ephemeral-port range, TIME_WAIT length, pool scope and TIME_WAIT reuse rules
//! of each operating system, with the source of every default.
//!
//! Facts and their status (verified in source, by experiment, or reported) are collected in the
//! project's research notes, `research/port-allocation.md` §1, §3, §4, §5 and §7.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::ModelError;

/// An inclusive range of local ports, e.g. Linux's default 32768–60999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    /// First port of the range (inclusive).
    pub low: u16,
    /// Last port of the range (inclusive).
    pub high: u16,
}

impl PortRange {
    /// Builds a range; `low` must not exceed `high` and port 0 is not a port.
    ///
    /// # Errors
    /// [`ModelError::InvalidRange`] when `low > high` or `low == 0`.
    pub fn new(low: u16, high: u16) -> Result<Self, ModelError> {
        if low == 0 || low > high {
            return Err(ModelError::InvalidRange { low, high });
        }
        Ok(Self { low, high })
    }

    /// Number of ports in the range (`high - low + 1`).
    pub fn len(self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// Always false: a valid range holds at least one port (kept for clippy's `len` rule).
    pub fn is_empty(self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl std::str::FromStr for PortRange {
    type Err = ModelError;

    /// Parses `LOW-HIGH` (also `LOW HIGH` or `LOW\tHIGH`, the format of
    /// `/proc/sys/net/ipv4/ip_local_port_range`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::RangeSyntax(s.to_string());
        let mut parts = s
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty());
        let low = parts
            .next()
            .ok_or_else(bad)?
            .parse::<u16>()
            .map_err(|_| bad())?;
        let high = parts
            .next()
            .ok_or_else(bad)?
            .parse::<u16>()
            .map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Self::new(low, high)
    }
}

/// Which connections share one pool of local ports.
///
/// A pool is the set of connections among which a local port can be held only once. The
/// scope decides how many pools a workload gets (see [`PoolScope::pools`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolScope {
    /// One pool per (source IP, destination IP, destination port): Linux and FreeBSD 13+
    /// `connect()` without `bind()`. The same local port serves different destinations.
    /// Source: net/ipv4/inet_hashtables.c `__inet_hash_connect()` + `__inet_check_established()`
    /// (the accept test is the 4-tuple); FreeBSD sys/netinet/in_pcb.c `in_pcb_lport_dest()`.
    Tuple,
    /// One pool per destination (IP, port), shared by all source IPs — e.g. when a source NAT
    /// maps every source IP to one address before the port is chosen.
    Destination,
    /// One pool per source IP, shared by all destinations: Linux `bind(ip, 0)` before
    /// `connect()` without `IP_BIND_ADDRESS_NO_PORT` (net/ipv4/inet_connection_sock.c
    /// `inet_csk_find_open_port()`; exhaustion is then `EADDRINUSE` from bind()).
    Source,
    /// One pool for the whole host: Windows (Microsoft Learn, SO_PORT_SCALABILITY: wildcard
    /// ports are limited to the dynamic range "no matter the number of IP addresses") and
    /// macOS (bsd/netinet/in_pcb.c `in_pcbbind()` picks a port unused by any PCB).
    Global,
}

impl PoolScope {
    /// Number of pools a workload with `source_ips` source addresses and `destinations`
    /// destinations (IP, port) spreads over. Inputs of 0 are treated as 1.
    pub fn pools(self, source_ips: u32, destinations: u32) -> u32 {
        let (s, d) = (source_ips.max(1), destinations.max(1));
        match self {
            Self::Tuple => s.saturating_mul(d),
            Self::Destination => d,
            Self::Source => s,
            Self::Global => 1,
        }
    }

    /// Index of the pool that the pair (source `src`, destination `dst`) draws from, in
    /// `0..pools(source_ips, destinations)`.
    pub fn pool_of(self, src: u32, dst: u32, destinations: u32) -> u32 {
        match self {
            Self::Tuple => src * destinations.max(1) + dst,
            Self::Destination => dst,
            Self::Source => src,
            Self::Global => 0,
        }
    }
}

impl fmt::Display for PoolScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tuple => "tuple",
            Self::Destination => "destination",
            Self::Source => "source",
            Self::Global => "global",
        })
    }
}

/// Linux `net.ipv4.tcp_tw_reuse`: may `connect()` take over a local TIME_WAIT entry of the
/// same 4-tuple? Source: net/ipv4/tcp_ipv4.c `tcp_twsk_unique()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TwReuse {
    /// 0: never; a TIME_WAIT entry holds its 4-tuple for the whole TIME_WAIT length.
    Off,
    /// 1: always, once the entry is older than `tcp_tw_reuse_delay` (needs TCP timestamps).
    All,
    /// 2 (the default since commit 79e9fed46058, Linux 4.18): only for loopback traffic
    /// (127.0.0.0/8, ::1, or bound to `lo`).
    LoopbackOnly,
}

impl TwReuse {
    /// The sysctl value (0, 1 or 2).
    pub fn sysctl_value(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::All => 1,
            Self::LoopbackOnly => 2,
        }
    }

    /// From the sysctl value.
    ///
    /// # Errors
    /// [`ModelError::TwReuse`] for values other than 0, 1, 2.
    pub fn from_sysctl(value: u8) -> Result<Self, ModelError> {
        match value {
            0 => Ok(Self::Off),
            1 => Ok(Self::All),
            2 => Ok(Self::LoopbackOnly),
            other => Err(ModelError::TwReuse(other)),
        }
    }

    /// Whether reuse applies to traffic that is (`loopback = true`) or is not on loopback.
    pub fn applies(self, loopback: bool) -> bool {
        match self {
            Self::Off => false,
            Self::All => true,
            Self::LoopbackOnly => loopback,
        }
    }
}

/// What happens when the table of TIME_WAIT entries is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "limit")]
pub enum TimeWaitCap {
    /// No limit is modelled.
    None,
    /// Linux `tcp_max_tw_buckets`: a connection closing while the table holds the limit skips
    /// TIME_WAIT and frees its 4-tuple at once (net/ipv4/tcp_minisocks.c `tcp_time_wait()`,
    /// counter `TCPTimeWaitOverflow`; research §3.3, experiment D1).
    Overflow(u64),
    /// FreeBSD `net.inet.tcp.maxtcptw`: the oldest TIME_WAIT entry is recycled to make room
    /// (sys/netinet/tcp_timewait.c `tcp_tw_2msl_scan(1)`; research §5.2).
    EvictOldest(u64),
}

/// The operating system a profile describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Os {
    /// Linux (≥ 6.14 for `tcp_tw_reuse_delay`; ≤ 6.13 behaves as a delay of 0–1 s).
    Linux,
    /// Windows XP / Server 2003 and earlier (dynamic range 1025–5000).
    WindowsLegacy,
    /// Windows Vista / Server 2008 and later (dynamic range 49152–65535).
    Windows,
    /// macOS (XNU).
    Macos,
    /// FreeBSD 13 and later.
    Freebsd,
}

impl Os {
    /// Every OS with a preset, in the order of `--os` help.
    pub const ALL: [Os; 5] = [
        Os::Linux,
        Os::WindowsLegacy,
        Os::Windows,
        Os::Macos,
        Os::Freebsd,
    ];

    /// The `--os` name (`linux`, `windows-legacy`, `windows`, `macos`, `freebsd`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::WindowsLegacy => "windows-legacy",
            Self::Windows => "windows",
            Self::Macos => "macos",
            Self::Freebsd => "freebsd",
        }
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Os {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Os::ALL
            .into_iter()
            .find(|os| os.name() == s)
            .ok_or_else(|| ModelError::UnknownOs(s.to_string()))
    }
}

/// Everything about an OS's ephemeral-port allocator that decides when `connect()` fails.
///
/// Build one with [`OsProfile::preset`] and override fields as needed; every preset lists its
/// sources in [`OsProfile::sources`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OsProfile {
    /// The OS this profile started from.
    pub os: Os,
    /// Ephemeral-port range used by `connect()` without `bind()`.
    pub range: PortRange,
    /// Ports inside the range that are never handed out (Linux `ip_local_reserved_ports`,
    /// Windows excluded port ranges). Subtracted from every pool.
    pub reserved_ports: u32,
    /// How long the active closer keeps a connection in TIME_WAIT.
    #[serde(rename = "time_wait_secs", serialize_with = "crate::serde_secs")]
    pub time_wait: Duration,
    /// Which connections share a pool.
    pub scope: PoolScope,
    /// TIME_WAIT takeover by `connect()` (Linux only; `Off` elsewhere).
    pub tw_reuse: TwReuse,
    /// Age after which a TIME_WAIT entry may be taken over when reuse applies (Linux ≥ 6.14
    /// `tcp_tw_reuse_delay`, default 1000 ms; ≤ 6.13: the next whole second, i.e. 0–1 s).
    #[serde(rename = "tw_reuse_delay_ms", serialize_with = "crate::serde_millis")]
    pub tw_reuse_delay: Duration,
    /// Whether TCP timestamps are negotiated (Linux takeover requires them,
    /// `tw_ts_recent_stamp != 0` in `tcp_twsk_unique()`).
    pub timestamps: bool,
    /// Limit on TIME_WAIT entries and what happens at the limit.
    pub time_wait_cap: TimeWaitCap,
    /// No TIME_WAIT for connections to a local peer (FreeBSD `net.inet.tcp.nolocaltimewait`,
    /// default 1 since FreeBSD 14.0; research §5.2).
    pub no_local_time_wait: bool,
}

impl OsProfile {
    /// The default profile of `os`.
    ///
    /// - `linux`: 32768–60999 (28,232 ports, `inet_init_net()` in net/ipv4/af_inet.c; the odd
    ///   upper end since commit 07f4c90062f8), TIME_WAIT 60 s (`TCP_TIMEWAIT_LEN` in
    ///   include/net/tcp.h, not tunable), per-4-tuple pools, `tcp_tw_reuse = 2`
    ///   (`tcp_sk_init()`), `tcp_tw_reuse_delay = 1000` ms (Linux 6.14, commit ca6a6f93867a).
    ///   `tcp_max_tw_buckets` defaults to half the established hash (e.g. 131,072): not modelled
    ///   unless set.
    /// - `windows-legacy`: 1025–5000 (3,976 ports, `MaxUserPort` default 5000), TIME_WAIT 240 s
    ///   (`TcpTimedWaitDelay` default in the Windows 2000 registry reference, technet cc938217;
    ///   the Server 2003 reference cc757512 says 120 s), one host-wide pool.
    /// - `windows`: 49152–65535 (16,384 ports, Vista / Server 2008+, per IANA), TIME_WAIT 240 s
    ///   ("4 minutes (default)" in Microsoft Learn "Troubleshoot port exhaustion issues", the
    ///   current Windows 10+ article; older references say 120 s — override with
    ///   `--time-wait`), one host-wide pool (auto-reuse port range disabled by default).
    /// - `macos`: 49152–65535, TIME_WAIT 2 × MSL = 2 × 15 s = 30 s (bsd/netinet/tcp_timer.h
    ///   `TCPTV_MSL`), one pool per local address, modelled as host-wide.
    /// - `freebsd`: 10000–65535 (55,536 ports, `IPPORT_EPHEMERALFIRST/LAST` in
    ///   sys/netinet/in.h), TIME_WAIT 2 × 30 s = 60 s, per-4-tuple pools (FreeBSD 13+),
    ///   `maxtcptw` ≈ 27,767 with LRU eviction, no TIME_WAIT to local peers (14.0+).
    pub fn preset(os: Os) -> Self {
        let linux = Self {
            os,
            range: PortRange {
                low: 32768,
                high: 60999,
            },
            reserved_ports: 0,
            time_wait: Duration::from_secs(60),
            scope: PoolScope::Tuple,
            tw_reuse: TwReuse::LoopbackOnly,
            tw_reuse_delay: Duration::from_millis(1000),
            timestamps: true,
            time_wait_cap: TimeWaitCap::None,
            no_local_time_wait: false,
        };
        let host_wide = Self {
            tw_reuse: TwReuse::Off,
            scope: PoolScope::Global,
            ..linux.clone()
        };
        match os {
            Os::Linux => linux,
            Os::WindowsLegacy => Self {
                range: PortRange {
                    low: 1025,
                    high: 5000,
                },
                time_wait: Duration::from_secs(240),
                ..host_wide
            },
            Os::Windows => Self {
                range: PortRange {
                    low: 49152,
                    high: 65535,
                },
                time_wait: Duration::from_secs(240),
                ..host_wide
            },
            Os::Macos => Self {
                range: PortRange {
                    low: 49152,
                    high: 65535,
                },
                time_wait: Duration::from_secs(30),
                ..host_wide
            },
            Os::Freebsd => Self {
                range: PortRange {
                    low: 10000,
                    high: 65535,
                },
                scope: PoolScope::Tuple,
                // tcp_timewait.c: maxtcptw = min(max((last - first) / 2, 32), maxsockets / 5);
                // with the default range (65535 - 10000) / 2 = 27,767.
                time_wait_cap: TimeWaitCap::EvictOldest(27_767),
                no_local_time_wait: true,
                ..host_wide
            },
        }
    }

    /// Usable ports in one pool: the range minus reserved ports (at least 0).
    pub fn ports_per_pool(&self) -> u32 {
        self.range.len().saturating_sub(self.reserved_ports)
    }

    /// Whether a client-side TIME_WAIT entry may be taken over after
    /// [`tw_reuse_delay`](Self::tw_reuse_delay) for traffic to a loopback (`true`) or a
    /// non-loopback peer. Needs TCP timestamps (net/ipv4/tcp_ipv4.c `tcp_twsk_unique()`).
    pub fn reuse_applies(&self, loopback: bool) -> bool {
        self.timestamps && self.tw_reuse.applies(loopback)
    }

    /// Whether an active close by the client leaves a TIME_WAIT entry at all.
    pub fn client_time_wait(&self, loopback: bool) -> bool {
        !(self.time_wait.is_zero() || self.no_local_time_wait && loopback)
    }

    /// How long a port closed by the client stays unavailable to the next `connect()` of the
    /// same pool: the reuse delay when takeover applies, else the full TIME_WAIT length, or
    /// zero when no TIME_WAIT is kept.
    pub fn client_close_hold(&self, loopback: bool) -> Duration {
        if !self.client_time_wait(loopback) {
            Duration::ZERO
        } else if self.reuse_applies(loopback) {
            self.tw_reuse_delay.min(self.time_wait)
        } else {
            self.time_wait
        }
    }

    /// Sources behind this profile's defaults, one line each (kernel file and function, or
    /// vendor page).
    pub fn sources(&self) -> &'static [&'static str] {
        match self.os {
            Os::Linux => &[
                "net/ipv4/af_inet.c inet_init_net(): ip_local_port_range 32768-60999",
                "include/net/tcp.h TCP_TIMEWAIT_LEN (60*HZ): TIME_WAIT is 60 s, not tunable",
                "net/ipv4/inet_hashtables.c __inet_hash_connect(), __inet_check_established(): a port is accepted when its 4-tuple is unused (per-4-tuple pools)",
                "net/ipv4/tcp_ipv4.c tcp_twsk_unique(): tcp_tw_reuse 1 / 2 (loopback only) takes over TIME_WAIT after tcp_tw_reuse_delay (6.14+, default 1000 ms)",
                "net/ipv4/tcp_ipv4.c tcp_sk_init(): tcp_tw_reuse defaults to 2 in every netns",
            ],
            Os::WindowsLegacy => &[
                "Microsoft KB 929851 / MaxUserPort: dynamic ports 1025-5000 before Vista",
                "Windows 2000 TCP/IP registry reference (technet cc938217): TcpTimedWaitDelay default 240 s (Server 2003 reference cc757512: 120 s)",
                "Microsoft Learn, SO_PORT_SCALABILITY: ephemeral ports limited host-wide, whatever the number of IP addresses",
            ],
            Os::Windows => &[
                "Microsoft Learn, Troubleshoot port exhaustion issues: dynamic range 49152-65535 since Vista; ports return after 4 minutes (default)",
                "Microsoft Learn, SO_PORT_SCALABILITY / event 4231: one global TCP port space",
                "Get-NetTCPSetting: AutoReusePortRangeNumberOfPorts 0 disables 4-tuple sharing (default on stock installs, reported)",
            ],
            Os::Macos => &[
                "xnu bsd/netinet/in_pcb.c: portrange.first/last 49152-65535; in_pcbbind() picks a port unused by any PCB (no 4-tuple sharing)",
                "xnu bsd/netinet/tcp_timer.h TCPTV_MSL = 15 s; TIME_WAIT = 2 * MSL = 30 s",
            ],
            Os::Freebsd => &[
                "sys/netinet/in.h IPPORT_EPHEMERALFIRST/LAST: 10000-65535",
                "sys/netinet/in_pcb.c in_pcb_lport_dest() (13+): 4-tuple lookup, ports shared across destinations",
                "sys/netinet/tcp_timewait.c: TIME_WAIT = 2 * msl (30 s) = 60 s; maxtcptw LRU eviction",
                "FreeBSD 14.0 release notes: net.inet.tcp.nolocaltimewait defaults to 1",
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_ranges_match_the_documented_sizes() {
        assert_eq!(OsProfile::preset(Os::Linux).ports_per_pool(), 28_232);
        assert_eq!(OsProfile::preset(Os::WindowsLegacy).ports_per_pool(), 3_976);
        assert_eq!(OsProfile::preset(Os::Windows).ports_per_pool(), 16_384);
        assert_eq!(OsProfile::preset(Os::Macos).ports_per_pool(), 16_384);
        assert_eq!(OsProfile::preset(Os::Freebsd).ports_per_pool(), 55_536);
    }

    #[test]
    fn range_parses_dash_and_proc_formats() {
        assert_eq!(
            "40000-40999".parse::<PortRange>().ok().map(PortRange::len),
            Some(1000)
        );
        assert_eq!(
            "32768\t60999\n"
                .parse::<PortRange>()
                .ok()
                .map(PortRange::len),
            Some(28_232)
        );
        assert!("5000-1000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("1-2-3".parse::<PortRange>().is_err());
        assert!("abc".parse::<PortRange>().is_err());
    }

    #[test]
    fn reuse_needs_loopback_for_value_two_and_timestamps() {
        let mut p = OsProfile::preset(Os::Linux);
        assert_eq!(p.client_close_hold(false), Duration::from_secs(60));
        assert_eq!(p.client_close_hold(true), Duration::from_millis(1000));
        p.timestamps = false;
        assert_eq!(p.client_close_hold(true), Duration::from_secs(60));
    }

    #[test]
    fn scopes_count_pools() {
        assert_eq!(PoolScope::Tuple.pools(2, 3), 6);
        assert_eq!(PoolScope::Destination.pools(2, 3), 3);
        assert_eq!(PoolScope::Source.pools(2, 3), 2);
        assert_eq!(PoolScope::Global.pools(2, 3), 1);
        assert_eq!(PoolScope::Tuple.pool_of(1, 2, 3), 5);
    }
}
