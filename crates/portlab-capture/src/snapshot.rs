//! One captured socket table aggregated as it streams by: counts by state, bitmaps of the
//! local ports held (any state, TIME_WAIT, LISTEN, BOUND) for the host-wide pools of Windows
//! and macOS, destinations and owning processes; and, for Linux tables, the rows themselves
//! so portlab-sockets groups them per 4-tuple exactly as `portlab ports` does.

use std::collections::HashMap;
use std::net::SocketAddr;

use portlab_sockets::SocketEntry;
use serde::Serialize;

use crate::row::{CapState, Row};
use crate::Format;

/// Destinations kept per snapshot; further ones are counted together.
const MAX_DESTINATIONS: usize = 100_000;
/// Processes kept per snapshot.
const MAX_PROCESSES: usize = 100_000;

/// One bit per port number.
#[derive(Clone)]
pub struct PortBits(Box<[u64; 1024]>);

impl Default for PortBits {
    fn default() -> Self {
        PortBits(Box::new([0; 1024]))
    }
}

impl std::fmt::Debug for PortBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortBits({} set)", self.count_in(0, u16::MAX))
    }
}

impl PortBits {
    /// Marks a port.
    pub fn insert(&mut self, port: u16) {
        self.0[usize::from(port / 64)] |= 1 << (port % 64);
    }

    /// Whether a port is marked.
    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port / 64)] & (1 << (port % 64)) != 0
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
                u64::from((self.0[w] & !except.0[w] & mask).count_ones())
            })
            .sum()
    }
}

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
    /// Linux rows for portlab-sockets' grouping.
    pub linux_entries: Vec<SocketEntry>,
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
            linux_entries: Vec::new(),
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
        if self.format.os() == crate::SourceOs::Linux {
            if let Some(state) = row.state.tcp_state() {
                self.linux_entries.push(SocketEntry {
                    state,
                    local: row.local,
                    remote: row.remote,
                });
            }
        }
        let port = row.local.port();
        if row.state == CapState::Listen {
            self.ports_listen.insert(port);
        }
        if self.format.os() == crate::SourceOs::Linux {
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
    }
}
