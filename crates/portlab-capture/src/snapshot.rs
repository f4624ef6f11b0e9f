//! One captured socket table aggregated as it streams by: counts by state, bitmaps of the
//! local ports held (any state, TIME_WAIT, LISTEN, BOUND) for the host-wide pools of Windows
//! and macOS, destinations and owning processes; and, for Linux tables, the rows themselves
//! so portlab-sockets groups them per 4-tuple exactly as `portlab ports` does.

use hashbrown::HashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::row::{CapState, Row};
use crate::Format;

/// Destinations kept per snapshot; further ones are counted together.
const MAX_DESTINATIONS: usize = 100_000;
/// Processes kept per snapshot.
const MAX_PROCESSES: usize = 100_000;

/// A set of port numbers: nothing while empty, one bit per port while it is filled, and, once
/// its snapshot is finished, runs of consecutive ports where those are smaller (ephemeral
/// ports are mostly handed out in order), so thousands of snapshots stay small.
#[derive(Clone, Default)]
pub struct PortBits(Repr);

#[derive(Clone, Default)]
enum Repr {
    #[default]
    Empty,
    Dense(Box<[u64; 1024]>),
    /// Sorted, disjoint, non-adjacent inclusive runs.
    Runs(Vec<(u16, u16)>),
}

impl std::fmt::Debug for PortBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortBits({} set)", self.count_in(0, u16::MAX))
    }
}

impl PortBits {
    fn dense(&mut self) -> &mut [u64; 1024] {
        if !matches!(self.0, Repr::Dense(_)) {
            let mut words = Box::new([0u64; 1024]);
            if let Repr::Runs(runs) = &self.0 {
                for &(a, b) in runs {
                    for p in a..=b {
                        words[usize::from(p / 64)] |= 1 << (p % 64);
                    }
                }
            }
            self.0 = Repr::Dense(words);
        }
        match &mut self.0 {
            Repr::Dense(words) => words,
            _ => unreachable!("made dense above"),
        }
    }

    /// Marks a port.
    pub fn insert(&mut self, port: u16) {
        self.dense()[usize::from(port / 64)] |= 1 << (port % 64);
    }

    /// Whether a port is marked.
    pub fn contains(&self, port: u16) -> bool {
        match &self.0 {
            Repr::Empty => false,
            Repr::Dense(w) => w[usize::from(port / 64)] & (1 << (port % 64)) != 0,
            Repr::Runs(runs) => {
                let i = runs.partition_point(|(a, _)| *a <= port);
                i > 0 && runs[i - 1].1 >= port
            }
        }
    }

    /// Stores the set as runs when that takes less memory than the bitmap.
    pub fn compact(&mut self) {
        let Repr::Dense(words) = &self.0 else { return };
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for (i, &w) in words.iter().enumerate() {
            if w == 0 {
                continue;
            }
            for bit in 0..64u16 {
                if w & (1 << bit) != 0 {
                    let p = (i as u16) * 64 + bit;
                    match runs.last_mut() {
                        Some(last) if last.1.checked_add(1) == Some(p) => last.1 = p,
                        _ => runs.push((p, p)),
                    }
                    if runs.len() * 4 >= 8192 {
                        return; // the bitmap is smaller
                    }
                }
            }
        }
        runs.shrink_to_fit();
        self.0 = if runs.is_empty() {
            Repr::Empty
        } else {
            Repr::Runs(runs)
        };
    }

    /// Marked ports in `low..=high`.
    pub fn count_in(&self, low: u16, high: u16) -> u64 {
        self.count_in_except(&PortBits::default(), low, high)
    }

    /// Marked ports in `low..=high` that are not marked in `except`.
    pub fn count_in_except(&self, except: &PortBits, low: u16, high: u16) -> u64 {
        if low > high {
            return 0;
        }
        match &self.0 {
            Repr::Empty => 0,
            Repr::Runs(runs) => runs
                .iter()
                .map(|&(a, b)| {
                    let (a, b) = (a.max(low), b.min(high));
                    if a > b {
                        0
                    } else if matches!(except.0, Repr::Empty) {
                        u64::from(b - a) + 1
                    } else {
                        (a..=b).filter(|p| !except.contains(*p)).count() as u64
                    }
                })
                .sum(),
            Repr::Dense(words) => {
                let (first, last) = (usize::from(low / 64), usize::from(high / 64));
                (first..=last)
                    .map(|w| {
                        let mut mask = u64::MAX;
                        if w == first {
                            mask &= u64::MAX << (low % 64);
                        }
                        if w == last {
                            mask &= u64::MAX >> (63 - high % 64);
                        }
                        let not = match &except.0 {
                            Repr::Empty => 0,
                            Repr::Dense(e) => e[w],
                            Repr::Runs(_) => (0..64u16)
                                .filter(|bit| except.contains((w as u16) * 64 + bit))
                                .fold(0u64, |acc, bit| acc | 1 << bit),
                        };
                        u64::from((words[w] & !not & mask).count_ones())
                    })
                    .sum()
            }
        }
    }

    /// The marked ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|p| self.contains(*p))
    }
}

/// The local ports of one Linux (local IP, destination) pool by state class, two bytes per
/// socket: grouped into portlab-sockets' pools only once the settings (which a capture may
/// hold after its tables) are known.
#[derive(Debug, Clone, Default)]
pub struct LinuxPoolPorts {
    /// ESTABLISHED, TIME_WAIT, SYN_SENT, any other state.
    pub by_class: [Vec<u16>; 4],
}

/// The state portlab-sockets counts each class under.
pub const LINUX_CLASS_STATES: [portlab_sockets::TcpState; 4] = [
    portlab_sockets::TcpState::Established,
    portlab_sockets::TcpState::TimeWait,
    portlab_sockets::TcpState::SynSent,
    portlab_sockets::TcpState::FinWait1,
];

/// Per-destination counts (rows whose local port is above the remote port: the client side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DestinationCounts {
    /// ESTABLISHED rows.
    pub established: u64,
    /// TIME_WAIT rows.
    pub time_wait: u64,
    /// Rows in any other state.
    pub other: u64,
}

/// Per-process counts (Windows `-o`, OwningProcess; TIME_WAIT rows carry PID 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessCounts {
    /// Rows owned.
    pub sockets: u64,
    /// Of those, BOUND.
    pub bound: u64,
    /// Of those, ESTABLISHED.
    pub established: u64,
}

/// A socket table read from a capture.
#[derive(Debug, Clone)]
pub struct CapturedTable {
    /// File it came from.
    pub file: String,
    /// Its format.
    pub format: Format,
    /// Timestamp line before it, as seconds (local time; only differences are used).
    pub taken_at_secs: Option<f64>,
    /// The timestamp line as written.
    pub taken_at_text: Option<String>,
    /// Rows by canonical state.
    pub states: [u64; CapState::ALL.len()],
    /// Rows of a TCP socket (all states).
    pub rows: u64,
    /// Rows whose address was cut by the tool (counted by state only).
    pub truncated_rows: u64,
    /// Rows with names instead of numbers (not counted; capture with `-n`).
    pub named_rows: u64,
    /// UDP rows (not counted).
    pub udp_rows: u64,
    /// Local ports held by any row.
    pub ports_any: PortBits,
    /// Local ports held by a TIME_WAIT row.
    pub ports_time_wait: PortBits,
    /// Local ports of listeners.
    pub ports_listen: PortBits,
    /// Local ports of BOUND rows.
    pub ports_bound: PortBits,
    /// Client-side rows per destination.
    pub destinations: HashMap<SocketAddr, DestinationCounts>,
    /// Client-side rows whose destination did not fit in `destinations`.
    pub destinations_overflow: u64,
    /// Rows per owning process.
    pub processes: HashMap<u32, ProcessCounts>,
    /// Executable names of PIDs (`netstat -b` owner lines).
    pub process_names: HashMap<u32, String>,
    /// Linux: ports per (local IP, destination) pool for portlab-sockets' grouping.
    pub linux_pools: HashMap<(std::net::IpAddr, SocketAddr), LinuxPoolPorts>,
    /// Linux: rows with an IPv4 (or IPv4-mapped) local address, and IPv6 ones.
    pub linux_families: (u64, u64),
}

fn state_index(state: CapState) -> usize {
    CapState::ALL.iter().position(|s| *s == state).unwrap_or(0)
}

impl CapturedTable {
    /// An empty table.
    pub fn new(file: &str, format: Format, taken_at: Option<(f64, String)>) -> Self {
        let (secs, text) = taken_at.map_or((None, None), |(s, t)| (Some(s), Some(t)));
        CapturedTable {
            file: file.to_string(),
            format,
            taken_at_secs: secs,
            taken_at_text: text,
            states: [0; CapState::ALL.len()],
            rows: 0,
            truncated_rows: 0,
            named_rows: 0,
            udp_rows: 0,
            ports_any: PortBits::default(),
            ports_time_wait: PortBits::default(),
            ports_listen: PortBits::default(),
            ports_bound: PortBits::default(),
            destinations: HashMap::new(),
            destinations_overflow: 0,
            processes: HashMap::new(),
            process_names: HashMap::new(),
            linux_pools: HashMap::new(),
            linux_families: (0, 0),
        }
    }

    /// Rows in `state`.
    pub fn count(&self, state: CapState) -> u64 {
        self.states[state_index(state)]
    }

    /// Adds one row.
    pub fn add(&mut self, row: &Row) {
        self.rows += 1;
        self.states[state_index(row.state)] += 1;
        if row.truncated {
            self.truncated_rows += 1;
            return;
        }
        let port = row.local.port();
        if row.state == CapState::Listen {
            self.ports_listen.insert(port);
        }
        if self.format.os() == crate::SourceOs::Linux {
            self.add_linux(row);
            return;
        }
        self.ports_any.insert(port);
        match row.state {
            CapState::TimeWait => self.ports_time_wait.insert(port),
            CapState::Bound => self.ports_bound.insert(port),
            _ => {}
        }
        // A same-host connection's far end is a local port too: a server-side TIME_WAIT
        // (local :8080, foreign :49152 on this host) blocks that ephemeral port for the client
        // (research/captures.md §5.1, the tailscale#20039 capture).
        let remote_port = row.remote.port();
        if remote_port != 0 && (row.remote.ip().is_loopback() || row.remote.ip() == row.local.ip())
        {
            self.ports_any.insert(remote_port);
            if row.state == CapState::TimeWait {
                self.ports_time_wait.insert(remote_port);
            }
        }
        if remote_port != 0 && port > remote_port && row.state != CapState::Listen {
            self.add_destination(row);
        }
        if let Some(pid) = row.pid.filter(|p| *p != 0) {
            if self.processes.len() < MAX_PROCESSES || self.processes.contains_key(&pid) {
                let p = self.processes.entry(pid).or_default();
                p.sockets += 1;
                p.bound += u64::from(row.state == CapState::Bound);
                p.established += u64::from(row.state == CapState::Established);
            }
        }
    }

    fn add_linux(&mut self, row: &Row) {
        if row.state.tcp_state().is_none() {
            return;
        }
        if row.local.is_ipv4() {
            self.linux_families.0 += 1;
        } else {
            self.linux_families.1 += 1;
        }
        let class = match row.state {
            CapState::Listen => return,
            CapState::Established => 0,
            CapState::TimeWait => 1,
            CapState::SynSent => 2,
            _ => 3,
        };
        self.linux_pools
            .entry((row.local.ip(), row.remote))
            .or_default()
            .by_class[class]
            .push(row.local.port());
    }

    /// Ends the table: only the busiest destinations and processes are kept, so a capture of
    /// thousands of snapshots stays small.
    pub fn seal(&mut self, keep: usize) {
        if self.destinations.len() > keep {
            let mut all: Vec<_> = self.destinations.drain().collect();
            all.sort_by_key(|(d, c)| {
                (std::cmp::Reverse(c.established + c.time_wait + c.other), *d)
            });
            all.truncate(keep);
            self.destinations = all.into_iter().collect();
        }
        if self.processes.len() > keep {
            let mut all: Vec<_> = self.processes.drain().collect();
            all.sort_by_key(|(pid, c)| (std::cmp::Reverse(c.sockets), *pid));
            all.truncate(keep);
            self.processes = all.into_iter().collect();
            let kept: std::collections::HashSet<u32> = self.processes.keys().copied().collect();
            self.process_names.retain(|pid, _| kept.contains(pid));
        }
        self.destinations.shrink_to_fit();
        self.processes.shrink_to_fit();
        for bits in [
            &mut self.ports_any,
            &mut self.ports_time_wait,
            &mut self.ports_listen,
            &mut self.ports_bound,
        ] {
            bits.compact();
        }
        for pool in self.linux_pools.values_mut() {
            for ports in &mut pool.by_class {
                ports.shrink_to_fit();
            }
        }
    }

    fn add_destination(&mut self, row: &Row) {
        if self.destinations.len() >= MAX_DESTINATIONS
            && !self.destinations.contains_key(&row.remote)
        {
            self.destinations_overflow += 1;
            return;
        }
        let d = self.destinations.entry(row.remote).or_default();
        match row.state {
            CapState::Established => d.established += 1,
            CapState::TimeWait => d.time_wait += 1,
            _ => d.other += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ranges_across_words() {
        let mut bits = PortBits::default();
        let mut except = PortBits::default();
        for p in [0u16, 63, 64, 1000, 49152, 65535] {
            bits.insert(p);
        }
        except.insert(1000);
        assert_eq!(bits.count_in(0, u16::MAX), 6);
        assert_eq!(bits.count_in(63, 64), 2);
        assert_eq!(bits.count_in(64, 65534), 3);
        assert_eq!(bits.count_in_except(&except, 0, u16::MAX), 5);
        assert_eq!(bits.count_in(65535, 65535), 1);
        assert_eq!(bits.count_in(2, 1), 0);
        // The same answers once stored as runs.
        let mut runs = bits.clone();
        runs.compact();
        assert!(matches!(runs.0, Repr::Runs(_)));
        for (low, high) in [(0, u16::MAX), (63, 64), (64, 65534), (65535, 65535), (2, 1)] {
            assert_eq!(
                runs.count_in(low, high),
                bits.count_in(low, high),
                "{low}-{high}"
            );
        }
        assert_eq!(runs.count_in_except(&except, 0, u16::MAX), 5);
        assert!(runs.contains(63) && runs.contains(64) && !runs.contains(65));
        let mut except_runs = except.clone();
        except_runs.compact();
        assert_eq!(bits.count_in_except(&except_runs, 0, u16::MAX), 5);
        assert_eq!(
            runs.ports().collect::<Vec<_>>(),
            vec![0, 63, 64, 1000, 49152, 65535]
        );
        // A run-stored set can grow again.
        runs.insert(65);
        assert_eq!(runs.count_in(0, u16::MAX), 7);
    }
}
