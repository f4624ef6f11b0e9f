//! Plain-data snapshots of the aggregation ([`TraceSnapshot`]): cumulative since the tracer
//! started, so a poller (the exporter) can turn them into Prometheus counters directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use portlab_load::ErrorClass;
use serde::Serialize;

use crate::aggregate::{Aggregator, DurationHistogram, FlowCounters, FlowKey};

/// Failures with one errno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrnoCount {
    /// errno (positive), e.g. 99.
    pub errno: i32,
    /// Symbolic name, e.g. `EADDRNOTAVAIL`.
    pub errno_name: String,
    /// The class `portlab load` counts it under.
    pub class: ErrorClass,
    /// How many connects failed with it.
    pub count: u64,
}

impl ErrnoCount {
    fn new(errno: i32, count: u64) -> Self {
        ErrnoCount {
            errno,
            errno_name: errno_name(errno),
            class: ErrorClass::from_errno(errno),
            count,
        }
    }
}

/// Symbolic errno name (`EADDRNOTAVAIL`), `errno N` for an unnamed one.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPIPE => "EPIPE",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENOMEM => "ENOMEM",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOENT => "ENOENT",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        _ => return ErrorClass::Other(errno).errno_name(),
    };
    name.to_string()
}

/// connect() outcomes of one process towards one destination, since the tracer started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowReport {
    /// Process id (thread-group id); 0 for the overflow row.
    pub pid: u32,
    /// Process name (`comm`), `?` when it exited before it could be read.
    pub comm: String,
    /// Destination (remote address and port); `0.0.0.0:0` for the overflow row.
    pub destination: SocketAddr,
    /// connect() attempts that reached the TCP layer (CLOSE → SYN_SENT).
    pub attempts: u64,
    /// Handshakes completed (SYN_SENT → ESTABLISHED).
    pub successes: u64,
    /// Failed connects by errno, most frequent first.
    pub failures: Vec<ErrnoCount>,
    /// Sum of `failures`.
    pub failures_total: u64,
    /// Closed by the process while connecting, no error reported (its own connect timeout).
    pub abandoned: u64,
    /// Still connecting (or waiting for their errno) at the snapshot.
    pub in_progress: u64,
    /// Connections open now (established, not yet closed).
    pub open: u64,
    /// Connections this process closed first (they left FIN_WAIT1/FIN_WAIT2/CLOSING for CLOSE):
    /// it is the active closer.
    pub closed_first: u64,
    /// Connections the peer closed first (they left CLOSE_WAIT/LAST_ACK for CLOSE).
    pub closed_by_peer: u64,
    /// Connections that entered TIME_WAIT on this host (active close completed).
    pub time_wait_entered: u64,
    /// TIME_WAIT entries of the last 60 s: ports of this pool still held in TIME_WAIT (without
    /// tcp_tw_reuse).
    pub time_wait_held: u64,
    /// Duration of the failed port searches (connects that found no free port).
    pub failed_port_search: DurationHistogram,
    /// First failure, ms after the tracer started.
    pub first_failure_ms: Option<u64>,
}

impl FlowReport {
    /// Failures of one errno.
    pub fn failures_with(&self, errno: i32) -> u64 {
        self.failures
            .iter()
            .filter(|f| f.errno == errno)
            .map(|f| f.count)
            .sum()
    }
}

/// connect() errors that came with no TCP socket change: routing failures before a port was
/// chosen (ENETUNREACH), or sockets that are not TCP (unix, UDP). Their destination is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketlessFailures {
    /// Process id.
    pub pid: u32,
    /// Process name.
    pub comm: String,
    /// The errno and its count.
    pub failures: ErrnoCount,
}

/// Totals per destination over all processes: the exporter's label set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationTotals {
    /// Destination.
    pub destination: SocketAddr,
    /// Attempts.
    pub attempts: u64,
    /// Successful connects (`portlab_connections_opened_total`).
    pub successes: u64,
    /// Failures by errno (`portlab_connect_failures_total{errno}`).
    pub failures: Vec<ErrnoCount>,
    /// TIME_WAIT entries (`portlab_time_wait_entered_total`).
    pub time_wait_entered: u64,
}

/// Everything the tracer counted since it started. Cumulative: counters never go down.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSnapshot {
    /// Time since the tracer was attached, ms.
    pub elapsed_ms: u64,
    /// Tracepoint hits processed.
    pub events: u64,
    /// Records the kernel dropped because a ring was full (PERF_RECORD_LOST). Counts above are
    /// then lower bounds.
    pub lost_events: u64,
    /// Times the kernel throttled a tracepoint event (PERF_RECORD_THROTTLE): samples were
    /// dropped without a count until it unthrottled. Counts are lower bounds when > 0.
    pub throttles: u64,
    /// Connects of processes that exited before their namespace or cgroup could be read, so a
    /// `--netns`/`--cgroup` filter could not decide; not counted in `flows`.
    pub unattributed: u64,
    /// Connects counted in the overflow row because `flows` reached its limit.
    pub flows_overflowed: u64,
    /// Per (process, destination), most failures first.
    pub flows: Vec<FlowReport>,
    /// Failed port searches of all flows.
    pub failed_port_search: DurationHistogram,
    /// connect() errors without a TCP socket (no destination).
    pub socketless_failures: Vec<SocketlessFailures>,
    /// CPU time of the tracer's reader thread, ms.
    pub reader_cpu_ms: u64,
    /// How the tracepoints were read: `bpf` (kernel maps) or `perf` (rings).
    pub route: crate::Route,
    /// Whether `sys_enter_connect`/`sys_exit_connect` were traced ([`crate::Syscalls`]): when
    /// false, a bound socket's synchronous failure counts as `abandoned` (no errno) and
    /// connect() errors without a TCP socket are not seen.
    pub syscalls: bool,
    /// BPF route: the program type reading sock:inet_sock_set_state, `tp_btf` (BTF raw
    /// tracepoint, no record built per hit) or `tracepoint` (the classic fallback); None on
    /// the perf route.
    pub bpf_set_state_program: Option<&'static str>,
    /// Why the BPF route fell back to the classic tracepoint program (None otherwise).
    pub bpf_tp_btf_unavailable: Option<String>,
}

impl TraceSnapshot {
    /// Sums of `flows` per destination, sorted by destination.
    pub fn destinations(&self) -> Vec<DestinationTotals> {
        let mut by: BTreeMap<SocketAddr, (u64, u64, BTreeMap<i32, u64>, u64)> = BTreeMap::new();
        for f in &self.flows {
            let e = by.entry(f.destination).or_default();
            e.0 += f.attempts;
            e.1 += f.successes;
            for x in &f.failures {
                *e.2.entry(x.errno).or_default() += x.count;
            }
            e.3 += f.time_wait_entered;
        }
        by.into_iter()
            .map(
                |(destination, (attempts, successes, failures, tw))| DestinationTotals {
                    destination,
                    attempts,
                    successes,
                    failures: failures
                        .into_iter()
                        .map(|(e, n)| ErrnoCount::new(e, n))
                        .collect(),
                    time_wait_entered: tw,
                },
            )
            .collect()
    }

    /// The flow of `pid` towards `destination`.
    pub fn flow(&self, pid: u32, destination: SocketAddr) -> Option<&FlowReport> {
        self.flows
            .iter()
            .find(|f| f.pid == pid && f.destination == destination)
    }
}

pub(crate) fn snapshot(agg: &mut Aggregator, elapsed_ms: u64, start_ns: u64) -> TraceSnapshot {
    let keys: Vec<(FlowKey, FlowCounters)> =
        agg.flows.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut flows: Vec<FlowReport> = keys
        .into_iter()
        .map(|(k, c)| flow_report(agg, k, c, start_ns))
        .collect();
    flows.sort_by(|a, b| {
        b.failures_total
            .cmp(&a.failures_total)
            .then(b.attempts.cmp(&a.attempts))
            .then(a.pid.cmp(&b.pid))
            .then(a.destination.cmp(&b.destination))
    });
    let mut socketless: Vec<SocketlessFailures> = agg
        .socketless
        .clone()
        .into_iter()
        .map(|((pid, errno), n)| SocketlessFailures {
            pid,
            comm: agg.comm_of(pid),
            failures: ErrnoCount::new(errno, n),
        })
        .collect();
    socketless.sort_by(|a, b| {
        b.failures
            .count
            .cmp(&a.failures.count)
            .then(a.pid.cmp(&b.pid))
    });
    TraceSnapshot {
        elapsed_ms,
        events: agg.events,
        lost_events: agg.lost_events,
        throttles: agg.throttles,
        unattributed: agg.unattributed,
        flows_overflowed: agg.flows_overflowed,
        flows,
        failed_port_search: agg.search.clone(),
        socketless_failures: socketless,
        reader_cpu_ms: 0,
        route: crate::Route::Perf,
        syscalls: true,
        bpf_set_state_program: None,
        bpf_tp_btf_unavailable: None,
    }
}

fn flow_report(agg: &mut Aggregator, k: FlowKey, c: FlowCounters, start_ns: u64) -> FlowReport {
    let mut failures: Vec<ErrnoCount> = c
        .failures
        .iter()
        .map(|&(e, n)| ErrnoCount::new(e, n))
        .collect();
    failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.errno.cmp(&b.errno)));
    FlowReport {
        pid: k.pid,
        comm: if c.comm.is_empty() || c.comm == "?" {
            agg.comm_of(k.pid)
        } else {
            c.comm.clone()
        },
        destination: k.dest,
        attempts: c.attempts,
        successes: c.successes,
        failures_total: failures.iter().map(|f| f.count).sum(),
        failures,
        abandoned: c.abandoned,
        in_progress: c.in_progress,
        open: c.open,
        closed_first: c.closed_first,
        closed_by_peer: c.closed_by_peer,
        time_wait_entered: c.time_wait_entered,
        time_wait_held: agg.time_wait_held(&k),
        failed_port_search: c.search,
        first_failure_ms: c
            .first_failure_ns
            .map(|t| t.saturating_sub(start_ns) / 1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EADDRNOTAVAIL), "EADDRNOTAVAIL");
        assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(libc::EPIPE), "EPIPE");
        assert_eq!(errno_name(libc::EHOSTUNREACH), "EHOSTUNREACH");
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(4242), "errno 4242");
    }
}
