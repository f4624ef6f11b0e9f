//! Kernel TCP counters that tell port exhaustion from its look-alikes, read from
//! `/proc/net/netstat` (TcpExt, the `LINUX_MIB_*` counters of include/uapi/linux/snmp.h) and
//! `/proc/net/snmp` (Tcp, RFC 4022's MIB) of the caller's network namespace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors reading the counters.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    /// A /proc file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A counter the kernel always exports was missing.
    #[error("{path} has no {section} counter {name}")]
    Missing {
        /// The file read.
        path: PathBuf,
        /// `TcpExt` or `Tcp`.
        section: &'static str,
        /// The counter's name.
        name: &'static str,
    },
}

/// Counter values (cumulative since boot or netns creation, or a delta over a run when
/// produced by [`Counters::delta_since`]).
///
/// Field names are stable: they are part of `portlab ports --json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counters {
    /// TcpExt TWRecycled: TIME_WAIT 4-tuples taken over by a new connect() (`tcp_tw_reuse`).
    pub tw_recycled: u64,
    /// TcpExt TW: TIME_WAIT sockets that ran their full timer.
    pub tw_expired: u64,
    /// TcpExt TCPTimeWaitOverflow: closing sockets destroyed without TIME_WAIT because
    /// `tcp_max_tw_buckets` was reached.
    pub tcp_time_wait_overflow: u64,
    /// TcpExt ListenOverflows: SYNs or final ACKs dropped because an accept queue was full.
    pub listen_overflows: u64,
    /// TcpExt ListenDrops: all drops at listeners (includes ListenOverflows).
    pub listen_drops: u64,
    /// Tcp ActiveOpens: connect() calls that sent a SYN (SYN_SENT entered).
    pub active_opens: u64,
    /// Tcp PassiveOpens: connections accepted from SYN_RECV.
    pub passive_opens: u64,
    /// Tcp AttemptFails: active opens that failed (RST or timeout in SYN_SENT/SYN_RECV).
    pub attempt_fails: u64,
    /// Tcp EstabResets: ESTABLISHED/CLOSE_WAIT connections reset.
    pub estab_resets: u64,
    /// Tcp OutRsts: RST segments sent.
    pub out_rsts: u64,
    /// Tcp RetransSegs: segments retransmitted.
    pub retrans_segs: u64,
}

impl Counters {
    /// Reads the counters of the caller's network namespace.
    ///
    /// # Errors
    /// [`CountersError`] when a file cannot be read or lacks a counter.
    pub fn read() -> Result<Self, CountersError> {
        // thread-self: /proc/net follows the main thread, which may sit in another namespace.
        Self::read_from(
            Path::new("/proc/thread-self/net/netstat"),
            Path::new("/proc/thread-self/net/snmp"),
        )
    }

    /// Reads the counters from files laid out as `/proc/net/netstat` and `/proc/net/snmp`.
    ///
    /// # Errors
    /// As [`Counters::read`].
    pub fn read_from(netstat: &Path, snmp: &Path) -> Result<Self, CountersError> {
        let netstat_text = read(netstat)?;
        let snmp_text = read(snmp)?;
        let ext = |name| lookup(&netstat_text, "TcpExt", name, netstat);
        let tcp = |name| lookup(&snmp_text, "Tcp", name, snmp);
        Ok(Self {
            tw_recycled: ext("TWRecycled")?,
            tw_expired: ext("TW")?,
            tcp_time_wait_overflow: ext("TCPTimeWaitOverflow")?,
            listen_overflows: ext("ListenOverflows")?,
            listen_drops: ext("ListenDrops")?,
            active_opens: tcp("ActiveOpens")?,
            passive_opens: tcp("PassiveOpens")?,
            attempt_fails: tcp("AttemptFails")?,
            estab_resets: tcp("EstabResets")?,
            out_rsts: tcp("OutRsts")?,
            retrans_segs: tcp("RetransSegs")?,
        })
    }

    /// The increase of every counter since `earlier` (saturating at 0 if a counter went back,
    /// which happens only across a netns or boot change).
    pub fn delta_since(&self, earlier: &Counters) -> Counters {
        Counters {
            tw_recycled: self.tw_recycled.saturating_sub(earlier.tw_recycled),
            tw_expired: self.tw_expired.saturating_sub(earlier.tw_expired),
            tcp_time_wait_overflow: self
                .tcp_time_wait_overflow
                .saturating_sub(earlier.tcp_time_wait_overflow),
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
            active_opens: self.active_opens.saturating_sub(earlier.active_opens),
            passive_opens: self.passive_opens.saturating_sub(earlier.passive_opens),
            attempt_fails: self.attempt_fails.saturating_sub(earlier.attempt_fails),
            estab_resets: self.estab_resets.saturating_sub(earlier.estab_resets),
            out_rsts: self.out_rsts.saturating_sub(earlier.out_rsts),
            retrans_segs: self.retrans_segs.saturating_sub(earlier.retrans_segs),
        }
    }
}

fn read(path: &Path) -> Result<String, CountersError> {
    fs::read_to_string(path).map_err(|source| CountersError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Finds `name` in the two-line block of `section` ("Tcp: A B C" followed by "Tcp: 1 2 3").
fn lookup(
    text: &str,
    section: &'static str,
    name: &'static str,
    path: &Path,
) -> Result<u64, CountersError> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let found = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .find(|(n, _)| *n == name)
            // Tcp's MaxConn is -1: counters we read are never negative, but parse as i64 to
            // accept the line.
            .and_then(|(_, v)| v.parse::<i64>().ok());
        if let Some(value) = found {
            return Ok(value.max(0) as u64);
        }
    }
    Err(CountersError::Missing {
        path: path.to_path_buf(),
        section,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
Tcp: 1 200 120000 -1 1500 700 3 9 4 100 100 17 0 21 0\n";
    const NETSTAT: &str =
        "TcpExt: SyncookiesSent TW TWRecycled TCPTimeWaitOverflow ListenOverflows ListenDrops\n\
TcpExt: 0 4000 12 47 5 6\nIpExt: InNoRoutes\nIpExt: 0\n";

    #[test]
    fn parses_annotated_fixtures() {
        let dir = tempfile::tempdir().expect("temp dir");
        let netstat = dir.path().join("netstat");
        let snmp = dir.path().join("snmp");
        fs::write(&netstat, NETSTAT).expect("write");
        fs::write(&snmp, SNMP).expect("write");
        let c = Counters::read_from(&netstat, &snmp).expect("parses");
        assert_eq!(c.tw_expired, 4000);
        assert_eq!(c.tw_recycled, 12);
        assert_eq!(c.tcp_time_wait_overflow, 47);
        assert_eq!(c.listen_overflows, 5);
        assert_eq!(c.listen_drops, 6);
        assert_eq!(c.active_opens, 1500);
        assert_eq!(c.passive_opens, 700);
        assert_eq!(c.attempt_fails, 3);
        assert_eq!(c.estab_resets, 9);
        assert_eq!(c.out_rsts, 21);
        assert_eq!(c.retrans_segs, 17);
    }

    #[test]
    fn missing_counter_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let netstat = dir.path().join("netstat");
        let snmp = dir.path().join("snmp");
        fs::write(&netstat, "TcpExt: TW\nTcpExt: 1\n").expect("write");
        fs::write(&snmp, SNMP).expect("write");
        let err = Counters::read_from(&netstat, &snmp).expect_err("TWRecycled is missing");
        assert!(err.to_string().contains("TWRecycled"), "{err}");
    }

    #[test]
    fn delta_subtracts_and_saturates() {
        let later = Counters {
            active_opens: 10,
            tw_recycled: 1,
            ..Counters::default()
        };
        let earlier = Counters {
            active_opens: 4,
            tw_recycled: 3,
            ..Counters::default()
        };
        let d = later.delta_since(&earlier);
        assert_eq!(d.active_opens, 6);
        assert_eq!(d.tw_recycled, 0);
    }

    #[test]
    fn reads_this_hosts_counters() {
        Counters::read().expect("/proc/net/netstat and snmp are readable");
    }
}
