//! The per-socket state machine that turns tracepoint hits into connect() outcomes per
//! (process, destination), and the cumulative counters a [`crate::TraceSnapshot`] copies.
//!
//! Kernel sequence it relies on (measured on Linux 6.18, see docs/trace.md):
//! - connect() → `tcp_v4_connect()` sets `CLOSE → SYN_SENT` on the caller's thread with
//!   `sport == 0`; the destination is already set.
//! - no free port: `__inet_hash_connect()` fails, `tcp_set_state(TCP_CLOSE)` fires
//!   `SYN_SENT → CLOSE` still with `sport == 0`, then `sys_exit_connect` returns -EADDRNOTAVAIL.
//!   The gap between the two state changes is the failed port search.
//! - SYN-ACK: `SYN_SENT → ESTABLISHED` (softirq, any task); RST or SYN timeout:
//!   `SYN_SENT → CLOSE` with the chosen port, then `inet_sk_error_report` with the errno
//!   (net/ipv4/tcp_input.c `tcp_reset()`, tcp_timer.c `tcp_write_err()`).
//! - the active closer goes `ESTABLISHED → FIN_WAIT1 (→ FIN_WAIT2) → CLOSE`; the last step is
//!   `tcp_time_wait()` handing the 4-tuple to a TIME_WAIT mini-socket (no `→ TIME_WAIT`
//!   transition is traced; net/ipv4/tcp_minisocks.c). The passive closer leaves
//!   `CLOSE_WAIT`/`LAST_ACK` for CLOSE. Only the `→ CLOSE` step is read, so the kernel filter
//!   drops the intermediate transitions.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use portlab_load::ErrorClass;
use serde::Serialize;

use crate::decode::{tcp_state as st, Event, EventKind};
use crate::procs::{ProcInfo, ProcLookup, Scope};

/// How long a socket that left SYN_SENT for CLOSE waits for its errno (an error report or the
/// connect() return) before it is counted without one.
const ERRNO_WAIT_NS: u64 = 50_000_000;

/// More distinct (process, destination) pairs than this are counted under one overflow row.
pub const MAX_FLOWS: usize = 4096;

/// Upper bounds of the failed-port-search histogram buckets, ns (the last bucket is +Inf).
pub const PORT_SEARCH_BOUNDS_NS: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 50_000_000,
];

/// A histogram of durations with fixed bucket bounds ([`PORT_SEARCH_BOUNDS_NS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DurationHistogram {
    /// Upper bound of each bucket, ns; `counts` has one more entry for +Inf.
    pub bounds_ns: Vec<u64>,
    /// Observations per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of all observations, ns.
    pub sum_ns: u64,
    /// Largest observation, ns.
    pub max_ns: u64,
}

impl DurationHistogram {
    pub(crate) fn new() -> Self {
        DurationHistogram {
            bounds_ns: PORT_SEARCH_BOUNDS_NS.to_vec(),
            counts: vec![0; PORT_SEARCH_BOUNDS_NS.len() + 1],
            ..Default::default()
        }
    }

    /// A histogram from the BPF route's counters (`counts` per bucket, not cumulative).
    pub(crate) fn from_parts(counts: Vec<u64>, count: u64, sum_ns: u64, max_ns: u64) -> Self {
        DurationHistogram {
            bounds_ns: PORT_SEARCH_BOUNDS_NS.to_vec(),
            counts,
            count,
            sum_ns,
            max_ns,
        }
    }

    /// Adds `other`'s observations (same bounds).
    pub(crate) fn merge(&mut self, other: &DurationHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    fn record(&mut self, ns: u64) {
        let i = PORT_SEARCH_BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.count += 1;
        self.sum_ns += ns;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Cumulative counts per bound (Prometheus `_bucket{le=…}`), ending with +Inf = `count`.
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }

    /// Mean observation, or None without observations.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_ns / self.count))
    }
}

/// Counts of TIME_WAIT entries per second over the last 60 s: the ports a destination's pool
/// still holds in TIME_WAIT (TCP_TIMEWAIT_LEN, include/net/tcp.h), assuming no reuse.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecondWindow {
    /// (second, count), oldest first.
    slots: VecDeque<(u64, u64)>,
}

impl SecondWindow {
    fn add(&mut self, time_ns: u64) {
        self.add_n(time_ns, 1);
    }

    fn add_n(&mut self, time_ns: u64, count: u64) {
        let sec = time_ns / 1_000_000_000;
        match self.slots.back_mut() {
            Some((s, n)) if *s == sec => *n += count,
            _ => self.slots.push_back((sec, count)),
        }
        self.trim(sec);
    }

    fn trim(&mut self, now_sec: u64) {
        while self
            .slots
            .front()
            .is_some_and(|(s, _)| s + portlab_time_wait_secs() <= now_sec)
        {
            self.slots.pop_front();
        }
    }

    fn held(&self, now_ns: u64) -> u64 {
        let now_sec = now_ns / 1_000_000_000;
        self.slots
            .iter()
            .filter(|(s, _)| s + portlab_time_wait_secs() > now_sec)
            .map(|(_, n)| n)
            .sum()
    }
}

const fn portlab_time_wait_secs() -> u64 {
    60
}

/// Cumulative counters of one (process, destination).
#[derive(Debug, Clone, Default)]
pub(crate) struct FlowCounters {
    /// Process name, read when the flow was first seen (the process may be gone later).
    pub comm: String,
    pub attempts: u64,
    pub successes: u64,
    /// errno → count, in order of first appearance.
    pub failures: Vec<(i32, u64)>,
    pub abandoned: u64,
    pub in_progress: u64,
    pub open: u64,
    pub closed_first: u64,
    pub closed_by_peer: u64,
    pub time_wait_entered: u64,
    pub time_wait_window: SecondWindow,
    pub search: DurationHistogram,
    pub first_failure_ns: Option<u64>,
}

impl FlowCounters {
    fn fail(&mut self, errno: i32, time_ns: u64) {
        match self.failures.iter_mut().find(|(e, _)| *e == errno) {
            Some((_, n)) => *n += 1,
            None => self.failures.push((errno, 1)),
        }
        self.first_failure_ns.get_or_insert(time_ns);
    }
}

/// Which (process, destination) a socket counts towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub pid: u32,
    pub dest: SocketAddr,
}

/// The row that counts flows beyond [`MAX_FLOWS`].
pub(crate) const OVERFLOW_KEY: FlowKey = FlowKey {
    pid: 0,
    dest: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Left SYN_SENT for CLOSE; waiting for the errno.
    Failed {
        closed_ns: u64,
        tuple: (SocketAddr, SocketAddr),
    },
    Established,
}

#[derive(Debug, Clone, Copy)]
struct Sock {
    key: FlowKey,
    syn_sent_ns: u64,
    phase: Phase,
}

/// A connect() call in progress on a thread.
#[derive(Debug, Clone, Copy)]
struct Call {
    sock: Option<u64>,
}

/// The aggregation: feed it events (any order within a round), advance it to a watermark, read
/// counters.
#[derive(Debug)]
pub struct Aggregator {
    scope: Scope,
    procs: ProcLookup,
    /// Events not yet processed, waiting until every CPU's ring has been read past them.
    pending: Vec<Event>,
    socks: HashMap<u64, Sock>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    errno_wait: VecDeque<(u64, u64)>,
    calls: HashMap<u32, Call>,
    pub(crate) flows: HashMap<FlowKey, FlowCounters>,
    /// connect() errors with no TCP socket change: (pid, errno) → count.
    pub(crate) socketless: HashMap<(u32, i32), u64>,
    pub(crate) search: DurationHistogram,
    pub(crate) events: u64,
    pub(crate) lost_events: u64,
    pub(crate) throttles: u64,
    pub(crate) unattributed: u64,
    pub(crate) flows_overflowed: u64,
    pub(crate) last_event_ns: u64,
}

impl Aggregator {
    /// A new aggregation counting only what `scope` selects.
    pub(crate) fn new(scope: Scope, procs: ProcLookup) -> Self {
        Aggregator {
            scope,
            procs,
            pending: Vec::new(),
            socks: HashMap::new(),
            by_tuple: HashMap::new(),
            errno_wait: VecDeque::new(),
            calls: HashMap::new(),
            flows: HashMap::new(),
            socketless: HashMap::new(),
            search: DurationHistogram::new(),
            events: 0,
            lost_events: 0,
            throttles: 0,
            unattributed: 0,
            flows_overflowed: 0,
            last_event_ns: 0,
        }
    }

    /// Queues events read from the rings (any CPU order).
    pub(crate) fn push(&mut self, events: impl IntoIterator<Item = Event>) {
        self.pending.extend(events);
    }

    /// Adds records the kernel dropped.
    pub(crate) fn lost(&mut self, n: u64) {
        self.lost_events += n;
    }

    /// A task's new name from PERF_RECORD_COMM.
    pub(crate) fn comm(&mut self, pid: u32, tid: u32, comm: &[u8]) {
        if pid == tid {
            self.procs
                .set_comm(pid, String::from_utf8_lossy(comm).into_owned());
        }
    }

    /// Reads /proc for the processes of `events` that start a connect, now rather than when the
    /// events are processed (up to ~100 ms later), so a short-lived process is still there.
    pub(crate) fn note_processes(&mut self, events: &[Event]) {
        if !self.scope.needs_proc() {
            return;
        }
        for e in events {
            let starts = matches!(
                e.kind,
                EventKind::SetState {
                    old: st::CLOSE,
                    new: st::SYN_SENT,
                    ..
                } | EventKind::ExitConnect { .. }
            );
            if starts && self.scope.pid.is_none_or(|p| p == e.pid) {
                let _ = self.procs.get(e.pid);
            }
        }
    }

    /// Processes, in time order, every queued event older than `watermark_ns` (no ring can still
    /// hold an older one), and times out sockets whose errno never came.
    pub(crate) fn advance(&mut self, watermark_ns: u64) {
        // Stable: a CPU's own events keep their ring order at equal timestamps.
        self.pending.sort_by_key(|e| e.time_ns);
        let ready = self.pending.partition_point(|e| e.time_ns < watermark_ns);
        let batch: Vec<Event> = self.pending.drain(..ready).collect();
        for event in batch {
            self.expire(event.time_ns);
            self.apply(event);
        }
        self.expire(watermark_ns);
    }

    fn apply(&mut self, e: Event) {
        self.events += 1;
        self.last_event_ns = self.last_event_ns.max(e.time_ns);
        match e.kind {
            EventKind::EnterConnect => {
                self.calls.insert(e.tid, Call { sock: None });
            }
            EventKind::ExitConnect { ret } => self.exit_connect(&e, ret),
            EventKind::ErrorReport {
                errno,
                local,
                remote,
            } => {
                if errno != 0 {
                    if let Some(sk) = self.by_tuple.remove(&(local, remote)) {
                        self.finish_failed(sk, Some(errno), e.time_ns);
                    }
                }
            }
            EventKind::SetState {
                skaddr,
                old,
                new,
                local,
                remote,
            } => self.set_state(&e, skaddr, old, new, local, remote),
        }
    }

    fn exit_connect(&mut self, e: &Event, ret: i64) {
        let Some(call) = self.calls.remove(&e.tid) else {
            return;
        };
        let errno = i32::try_from(-ret).unwrap_or(0);
        if ret >= 0 || errno == libc::EINPROGRESS {
            return;
        }
        match call.sock {
            Some(sk) => match self.socks.get(&sk).map(|s| s.phase) {
                Some(Phase::Failed { .. }) => self.finish_failed(sk, Some(errno), e.time_ns),
                // connect() gave up on this socket without a state change seen: a blocking
                // connect's ETIMEDOUT/ECONNREFUSED whose CLOSE sample did not arrive (measured:
                // it sometimes does not, docs/trace.md). Interrupted calls keep connecting.
                Some(Phase::Connecting)
                    if !matches!(errno, libc::EINTR | libc::EALREADY | libc::EAGAIN | 512) =>
                {
                    if let Some(sock) = self.socks.remove(&sk) {
                        let flow = self.flow(sock.key);
                        flow.in_progress -= 1;
                        flow.fail(errno, e.time_ns);
                    }
                }
                _ => {}
            },
            None => {
                // No TCP socket changed state in this call: a routing failure before a port was
                // chosen (ENETUNREACH), or not a TCP socket at all (unix, UDP). No destination.
                if self.scope.dest.is_none() && self.selects(e.pid) == Some(true) {
                    *self.socketless.entry((e.pid, errno)).or_default() += 1;
                }
            }
        }
    }

    fn set_state(
        &mut self,
        e: &Event,
        sk: u64,
        old: i32,
        new: i32,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        if old == st::CLOSE && new == st::SYN_SENT {
            return self.syn_sent(e, sk, remote);
        }
        let Some(sock) = self.socks.get(&sk).copied() else {
            return;
        };
        match (sock.phase, old, new) {
            (Phase::Connecting, st::SYN_SENT, st::ESTABLISHED) => {
                let flow = self.flow(sock.key);
                flow.successes += 1;
                flow.in_progress -= 1;
                flow.open += 1;
                self.set_phase(sk, Phase::Established);
            }
            (Phase::Connecting, st::SYN_SENT, st::CLOSE) => {
                let tuple = (local, remote);
                if local.port() != 0 {
                    self.by_tuple.insert(tuple, sk);
                }
                self.set_phase(
                    sk,
                    Phase::Failed {
                        closed_ns: e.time_ns,
                        tuple,
                    },
                );
                self.errno_wait.push_back((e.time_ns, sk));
            }
            // Who closed first is read from the state a connection leaves for CLOSE, so the
            // kernel filter can drop the FIN_WAIT1 and CLOSE_WAIT transitions (fewer events).
            (Phase::Established, st::FIN_WAIT1 | st::FIN_WAIT2 | st::CLOSING, st::CLOSE) => {
                let flow = self.flow(sock.key);
                flow.closed_first += 1;
                flow.time_wait_entered += 1;
                flow.time_wait_window.add(e.time_ns);
                flow.open -= 1;
                self.socks.remove(&sk);
            }
            (Phase::Established, st::CLOSE_WAIT | st::LAST_ACK, st::CLOSE) => {
                let flow = self.flow(sock.key);
                flow.closed_by_peer += 1;
                flow.open -= 1;
                self.socks.remove(&sk);
            }
            (Phase::Established, _, st::CLOSE) => {
                // Reset or aborted while established: neither side closed in order.
                self.flow(sock.key).open -= 1;
                self.socks.remove(&sk);
            }
            _ => {}
        }
    }

    fn syn_sent(&mut self, e: &Event, sk: u64, remote: SocketAddr) {
        // The kernel reuses a socket's memory: whatever we knew under this address is over.
        if let Some(old) = self.socks.get(&sk).copied() {
            match old.phase {
                Phase::Failed { .. } => self.finish_failed(sk, None, e.time_ns),
                Phase::Connecting => {
                    self.flow(old.key).in_progress -= 1;
                    self.socks.remove(&sk);
                }
                Phase::Established => {
                    self.flow(old.key).open -= 1;
                    self.socks.remove(&sk);
                }
            }
        }
        if self.scope.dest.is_some_and(|d| d != remote) {
            return;
        }
        match self.selects(e.pid) {
            Some(true) => {}
            Some(false) => return,
            None => {
                self.unattributed += 1;
                return;
            }
        }
        let mut key = FlowKey {
            pid: e.pid,
            dest: remote,
        };
        if !self.flows.contains_key(&key) && self.flows.len() >= MAX_FLOWS {
            self.flows_overflowed += 1;
            key = OVERFLOW_KEY;
        }
        if !self.flows.contains_key(&key) {
            let comm = self.comm_of(key.pid);
            self.flow(key).comm = comm;
        }
        let flow = self.flow(key);
        flow.attempts += 1;
        flow.in_progress += 1;
        self.socks.insert(
            sk,
            Sock {
                key,
                syn_sent_ns: e.time_ns,
                phase: Phase::Connecting,
            },
        );
        if let Some(call) = self.calls.get_mut(&e.tid) {
            call.sock = Some(sk);
        }
    }

    /// Counts a socket that never connected: by `errno` when one came, else EADDRNOTAVAIL when
    /// no port was chosen (the only errno of that path besides ENOMEM), else as abandoned by
    /// the process (closed while connecting, no error reported).
    fn finish_failed(&mut self, sk: u64, errno: Option<i32>, now_ns: u64) {
        let Some(sock) = self.socks.remove(&sk) else {
            return;
        };
        let Phase::Failed { closed_ns, tuple } = sock.phase else {
            return;
        };
        self.by_tuple.remove(&tuple);
        let no_port = tuple.0.port() == 0;
        let search_ns = closed_ns.saturating_sub(sock.syn_sent_ns);
        if no_port {
            self.search.record(search_ns);
        }
        let flow = self.flow(sock.key);
        flow.in_progress -= 1;
        match errno.or(no_port.then_some(libc::EADDRNOTAVAIL)) {
            Some(errno) => flow.fail(errno, now_ns),
            None => flow.abandoned += 1,
        }
        if no_port {
            flow.search.record(search_ns);
        }
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(closed_ns, sk)) = self.errno_wait.front() {
            if closed_ns + ERRNO_WAIT_NS > now_ns {
                break;
            }
            self.errno_wait.pop_front();
            let same = matches!(
                self.socks.get(&sk).map(|s| s.phase),
                Some(Phase::Failed { closed_ns: c, .. }) if c == closed_ns
            );
            if same {
                self.finish_failed(sk, None, now_ns);
            }
        }
    }

    fn set_phase(&mut self, sk: u64, phase: Phase) {
        if let Some(s) = self.socks.get_mut(&sk) {
            s.phase = phase;
        }
    }

    fn flow(&mut self, key: FlowKey) -> &mut FlowCounters {
        self.flows.entry(key).or_insert_with(|| FlowCounters {
            search: DurationHistogram::new(),
            ..Default::default()
        })
    }

    /// Replaces a flow's counters with the kernel's (BPF route; `k.comm` is the kernel's name
    /// of the task that made the first connect, `k.time_wait_window` is ignored). TIME_WAIT
    /// entries new since the last call are put in the 60 s window at `now_ns`. The name is the
    /// process's from /proc when it is still there at first sight, else the kernel's.
    pub(crate) fn set_kernel_flow(&mut self, key: FlowKey, k: FlowCounters, now_ns: u64) {
        if !self.flows.contains_key(&key) {
            let comm = if key == OVERFLOW_KEY {
                String::new()
            } else {
                match self.procs.get(key.pid) {
                    Some(p) => p.comm.clone(),
                    None => {
                        // Gone already: remember the kernel's name for its other rows too.
                        self.procs.set_comm(key.pid, k.comm.clone());
                        k.comm.clone()
                    }
                }
            };
            self.flow(key).comm = comm;
        }
        let f = self.flow(key);
        let mut time_wait_window = std::mem::take(&mut f.time_wait_window);
        let new_tw = k.time_wait_entered.saturating_sub(f.time_wait_entered);
        if new_tw > 0 {
            time_wait_window.add_n(now_ns, new_tw);
        }
        *f = FlowCounters {
            comm: std::mem::take(&mut f.comm),
            time_wait_window,
            ..k
        };
    }

    /// Whether the scope selects `pid`: None when the process is gone before we could look.
    fn selects(&mut self, pid: u32) -> Option<bool> {
        if self.scope.pid.is_some_and(|p| p != pid) {
            return Some(false);
        }
        if !self.scope.needs_proc() {
            return Some(true);
        }
        let info = self.procs.get(pid)?;
        Some(self.scope.matches(info))
    }

    /// The name of `pid` (from exec records or /proc), "?" when unknown.
    pub(crate) fn comm_of(&mut self, pid: u32) -> String {
        if pid == 0 {
            return String::new();
        }
        self.procs
            .get(pid)
            .map_or_else(|| "?".to_string(), |p: &ProcInfo| p.comm.clone())
    }

    /// TIME_WAIT entries of `key` in the last 60 s before the newest event.
    pub(crate) fn time_wait_held(&self, key: &FlowKey) -> u64 {
        self.flows
            .get(key)
            .map_or(0, |f| f.time_wait_window.held(self.last_event_ns))
    }

    /// Finishes everything: all queued events processed, sockets still waiting for an errno
    /// counted without one.
    pub(crate) fn flush(&mut self) {
        self.advance(u64::MAX - ERRNO_WAIT_NS);
    }
}

/// The errno's class, as `portlab load` counts it.
pub fn class_of(errno: i32) -> ErrorClass {
    ErrorClass::from_errno(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::{ProcInfo, ProcLookup, Scope};

    const SK: u64 = 0xffff_0000_0000_1000;

    fn agg() -> Aggregator {
        let mut procs = ProcLookup::fixed();
        procs.insert(
            4711,
            ProcInfo {
                comm: "java".into(),
                netns: Some(1),
                cgroup: Some("/app".into()),
            },
        );
        Aggregator::new(Scope::default(), procs)
    }

    fn ev(t: u64, kind: EventKind) -> Event {
        Event {
            time_ns: t,
            pid: 4711,
            tid: 4712,
            kind,
        }
    }

    fn state(t: u64, sk: u64, old: i32, new: i32, sport: u16, dest: &str) -> Event {
        ev(
            t,
            EventKind::SetState {
                skaddr: sk,
                old,
                new,
                local: SocketAddr::new("10.0.0.1".parse().unwrap(), sport),
                remote: dest.parse().unwrap(),
            },
        )
    }

    const D: &str = "10.0.0.5:443";

    fn only_flow(a: &Aggregator) -> FlowCounters {
        assert_eq!(a.flows.len(), 1);
        a.flows.values().next().unwrap().clone()
    }

    #[test]
    fn a_failed_port_search_counts_eaddrnotavail_with_its_duration() {
        let mut a = agg();
        a.push([
            ev(100, EventKind::EnterConnect),
            state(1_000, SK, st::CLOSE, st::SYN_SENT, 0, D),
            state(58_000, SK, st::SYN_SENT, st::CLOSE, 0, D),
            ev(59_000, EventKind::ExitConnect { ret: -99 }),
        ]);
        a.advance(1_000_000);
        let f = only_flow(&a);
        assert_eq!((f.attempts, f.successes, f.in_progress), (1, 0, 0));
        assert_eq!(f.failures, vec![(libc::EADDRNOTAVAIL, 1)]);
        assert_eq!(f.search.count, 1);
        assert_eq!(f.search.max_ns, 57_000);
        assert_eq!(a.search.counts[6], 1, "57 µs falls in the ≤ 100 µs bucket");
    }

    #[test]
    fn refused_comes_from_the_error_report_even_out_of_cpu_order() {
        let mut a = agg();
        // The SYN_SENT → CLOSE and the error report come from another CPU's ring first.
        a.push([
            state(5_000, SK, st::SYN_SENT, st::CLOSE, 40000, D),
            ev(
                5_100,
                EventKind::ErrorReport {
                    errno: libc::ECONNREFUSED,
                    local: "10.0.0.1:40000".parse().unwrap(),
                    remote: D.parse().unwrap(),
                },
            ),
        ]);
        a.push([
            ev(100, EventKind::EnterConnect),
            state(1_000, SK, st::CLOSE, st::SYN_SENT, 0, D),
            ev(6_000, EventKind::ExitConnect { ret: -111 }),
        ]);
        a.advance(10_000);
        let f = only_flow(&a);
        assert_eq!(f.failures, vec![(libc::ECONNREFUSED, 1)], "counted once");
        assert_eq!(f.search.count, 0, "a port was chosen: no failed search");
        assert!(a.socketless.is_empty());
    }

    #[test]
    fn success_then_active_close_enters_time_wait() {
        let mut a = agg();
        a.push([
            state(1, SK, st::CLOSE, st::SYN_SENT, 0, D),
            state(2, SK, st::SYN_SENT, st::ESTABLISHED, 40002, D),
            // The kernel filter drops these two; they change nothing when they come.
            state(3, SK, st::ESTABLISHED, st::FIN_WAIT1, 40002, D),
            state(4, SK, st::FIN_WAIT1, st::FIN_WAIT2, 40002, D),
            state(5, SK, st::FIN_WAIT2, st::CLOSE, 40002, D),
            // The same memory becomes a new socket that the peer closes first.
            state(6, SK, st::CLOSE, st::SYN_SENT, 0, D),
            state(7, SK, st::SYN_SENT, st::ESTABLISHED, 40004, D),
            state(8, SK, st::CLOSE_WAIT, st::LAST_ACK, 40004, D),
            state(9, SK, st::LAST_ACK, st::CLOSE, 40004, D),
            // A third that is reset while established.
            state(10, SK, st::CLOSE, st::SYN_SENT, 0, D),
            state(11, SK, st::SYN_SENT, st::ESTABLISHED, 40006, D),
        ]);
        a.advance(100);
        let f = only_flow(&a);
        assert_eq!((f.attempts, f.successes, f.time_wait_entered), (3, 3, 1));
        assert_eq!((f.closed_first, f.closed_by_peer, f.open), (1, 1, 1));
        a.push([state(12, SK, st::ESTABLISHED, st::CLOSE, 40006, D)]);
        a.advance(100);
        let f = only_flow(&a);
        assert_eq!((f.closed_first, f.closed_by_peer, f.open), (1, 1, 0));
        assert_eq!(a.time_wait_held(a.flows.keys().next().unwrap()), 1);
    }

    #[test]
    fn no_errno_after_close_means_abandoned_unless_no_port() {
        let mut a = agg();
        a.push([
            state(1, SK, st::CLOSE, st::SYN_SENT, 0, D),
            state(2, SK, st::SYN_SENT, st::CLOSE, 40000, D),
        ]);
        a.advance(10);
        assert_eq!(only_flow(&a).in_progress, 1, "still waiting for the errno");
        a.advance(ERRNO_WAIT_NS + 10);
        let f = only_flow(&a);
        assert_eq!((f.abandoned, f.in_progress), (1, 0));
        assert!(f.failures.is_empty());
    }

    #[test]
    fn a_blocking_connects_errno_counts_even_without_its_close_sample() {
        let mut a = agg();
        a.push([
            ev(1, EventKind::EnterConnect),
            state(2, SK, st::CLOSE, st::SYN_SENT, 0, D),
            ev(3_000, EventKind::ExitConnect { ret: -110 }),
            // The CLOSE sample arriving after all changes nothing.
            state(3_001, SK, st::SYN_SENT, st::CLOSE, 40000, D),
        ]);
        a.advance(ERRNO_WAIT_NS * 3);
        let f = only_flow(&a);
        assert_eq!(f.failures, vec![(libc::ETIMEDOUT, 1)]);
        assert_eq!((f.in_progress, f.abandoned), (0, 0));
    }

    #[test]
    fn without_syscall_events_no_port_still_means_eaddrnotavail() {
        let mut a = agg();
        a.push([
            state(1, SK, st::CLOSE, st::SYN_SENT, 0, D),
            state(9_000, SK, st::SYN_SENT, st::CLOSE, 0, D),
        ]);
        a.advance(ERRNO_WAIT_NS + 10_000);
        let f = only_flow(&a);
        assert_eq!(f.failures, vec![(libc::EADDRNOTAVAIL, 1)]);
        assert_eq!(
            (f.abandoned, f.search.count, f.search.max_ns),
            (0, 1, 8_999)
        );
    }

    #[test]
    fn socketless_errors_and_filters() {
        let mut a = agg();
        a.push([
            ev(1, EventKind::EnterConnect),
            ev(2, EventKind::ExitConnect { ret: -101 }),
            ev(3, EventKind::EnterConnect),
            ev(4, EventKind::ExitConnect { ret: -115 }),
        ]);
        a.advance(10);
        assert_eq!(a.socketless.get(&(4711, libc::ENETUNREACH)), Some(&1));
        assert_eq!(a.socketless.len(), 1, "EINPROGRESS is not a failure");

        let mut b = Aggregator::new(
            Scope {
                dest: Some("10.0.0.6:80".parse().unwrap()),
                ..Scope::default()
            },
            ProcLookup::fixed(),
        );
        b.push([state(1, SK, st::CLOSE, st::SYN_SENT, 0, D)]);
        b.advance(10);
        assert!(b.flows.is_empty(), "another destination is filtered out");
    }

    #[test]
    fn histogram_cumulative_ends_at_count() {
        let mut h = DurationHistogram::new();
        for ns in [500, 1_000, 1_001, 60_000_000] {
            h.record(ns);
        }
        let c = h.cumulative();
        assert_eq!(c[0], 2, "≤ 1 µs includes the bound");
        assert_eq!(*c.last().unwrap(), 4);
        assert_eq!(h.counts[14], 1, "above 50 ms goes to +Inf");
    }
}
