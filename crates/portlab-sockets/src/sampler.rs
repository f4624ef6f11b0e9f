//! A background sampler of the port pool towards given destinations, on its own thread beside a
//! load run and never on its hot path. It keeps per-second maxima, so its memory stays flat
//! however long the run.
//!
//! Two speeds, so its cost stays small at any table size:
//! - every tick (10 Hz by default): `/proc/net/sockstat` — the namespace's TIME_WAIT and in-use
//!   TCP socket counts, O(1) to read (net/ipv4/proc.c `sockstat_seq_show()`);
//! - the socket table filtered in the kernel to the destinations (inet_diag bytecode) and the
//!   counters: at a tick where sockstat moved since the last dump (or [`DUMP_HEARTBEAT`] after
//!   it), and never more often than keeps its CPU time under [`DUMP_BUDGET_FRACTION`] of one core
//!   (1.5 %) plus [`DUMP_BURST`]. A dump costs the kernel about a microsecond per socket in the
//!   table per address family — every namespace's sockets, not only the matching ones: the
//!   kernel walks every bucket and every socket of the established hash
//!   (`inet_diag_dump_icsk()`, net/ipv4/inet_diag.c; 2^16–2^19 buckets), which no filter avoids.
//!   So only the destinations' family is walked: with IPv4 destinations the IPv6 walk (which
//!   could only find IPv4-mapped sockets) is taken at the first dump, then only while it finds
//!   some, and otherwise at every [`V6_RECHECK`]th dump. The budget is spent before a dump, not
//!   after: a dump is taken only when the last dump's cost, and another one kept for the final
//!   dump at [`Sampler::stop`], still fit. A steady keep-alive run (sockstat flat) is thus
//!   dumped about once a second, a churning one at every tick the budget allows.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::counters::Counters;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};

use crate::diag::{destination_filter, DiagSocket, SockDiagError, SocketEntry, StateMask};
use crate::state::TcpState;

/// What one reading of the table saw towards the destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DestinationCounts {
    /// ESTABLISHED sockets to the destinations.
    pub established: u64,
    /// TIME_WAIT sockets to the destinations.
    pub time_wait: u64,
    /// SYN_SENT sockets (connects in flight; many means a slow or dropping listener).
    pub syn_sent: u64,
    /// FIN_WAIT_1/2, CLOSING, CLOSE_WAIT and LAST_ACK sockets.
    pub closing: u64,
    /// Local ports in use in the fullest pool: the largest number of sockets any one
    /// (local IP, destination) pair holds. A pool is full at `ip_local_port_range`'s size.
    pub max_pool_ports_in_use: u64,
    /// Number of (local IP, destination) pools seen.
    pub pools: u64,
}

impl DestinationCounts {
    /// Counts entries (any state but LISTEN) into totals and per-pool port use.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a SocketEntry>) -> Self {
        let mut counts = DestinationCounts::default();
        let mut per_pool: HashMap<(IpAddr, SocketAddr), u64> = HashMap::new();
        for entry in entries {
            counts.add(entry.state);
            *per_pool
                .entry((entry.local.ip(), entry.remote))
                .or_default() += 1;
        }
        counts.max_pool_ports_in_use = per_pool.values().copied().max().unwrap_or(0);
        counts.pools = per_pool.len() as u64;
        counts
    }

    fn add(&mut self, state: TcpState) {
        match state {
            TcpState::Established => self.established += 1,
            TcpState::TimeWait => self.time_wait += 1,
            TcpState::SynSent => self.syn_sent += 1,
            TcpState::Listen => {}
            _ => self.closing += 1,
        }
    }

    fn max_with(&mut self, other: &DestinationCounts) {
        self.established = self.established.max(other.established);
        self.time_wait = self.time_wait.max(other.time_wait);
        self.syn_sent = self.syn_sent.max(other.syn_sent);
        self.closing = self.closing.max(other.closing);
        self.max_pool_ports_in_use = self.max_pool_ports_in_use.max(other.max_pool_ports_in_use);
        self.pools = self.pools.max(other.pools);
    }
}

/// Share of one core the detailed dumps may use on average. A token bucket: a dump is taken at
/// a tick when the CPU time spent dumping so far (the thread's own, `CLOCK_THREAD_CPUTIME_ID`,
/// so time spent waiting for a busy core is not charged) is at most this share of the time since
/// the start plus [`DUMP_BURST`], so short runs and small tables are sampled at every tick and
/// large tables as often as the budget allows.
pub const DUMP_BUDGET_FRACTION: f64 = 0.015;

/// The burst of dump time allowed above [`DUMP_BUDGET_FRACTION`] (a few dumps of a near-empty
/// table, so a short run is still sampled at every tick). The first dump (before the run) is
/// charged to it too.
pub const DUMP_BURST: Duration = Duration::from_millis(10);

/// With IPv4 destinations and no IPv4-mapped IPv6 socket to them seen, the IPv6 table is
/// walked again at every this-many-th dump.
pub const V6_RECHECK: u64 = 10;

/// Longest time between two dumps while `/proc/net/sockstat` stays the same (the budget may
/// stretch it further on a large table): under a second, so every second of the timeline holds
/// at least one dump.
pub const DUMP_HEARTBEAT: Duration = Duration::from_millis(900);

/// The namespace-wide TCP socket counts of `/proc/net/sockstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SockStat {
    /// TCP sockets in use (not TIME_WAIT): `TCP: inuse`.
    pub tcp_in_use: u64,
    /// TIME_WAIT entries of the namespace: `TCP: tw`.
    pub tcp_time_wait: u64,
}

impl SockStat {
    /// Reads `/proc/thread-self/net/sockstat` (the caller thread's namespace).
    pub fn read() -> Option<SockStat> {
        let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").ok()?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Option<SockStat> {
        let line = text.lines().find(|l| l.starts_with("TCP:"))?;
        let mut fields = line.split_whitespace().skip(1);
        let mut stat = SockStat::default();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let value = value.parse().ok()?;
            match name {
                "inuse" => stat.tcp_in_use = value,
                "tw" => stat.tcp_time_wait = value,
                _ => {}
            }
        }
        Some(stat)
    }

    fn max_with(&mut self, other: &SockStat) {
        self.tcp_in_use = self.tcp_in_use.max(other.tcp_in_use);
        self.tcp_time_wait = self.tcp_time_wait.max(other.tcp_time_wait);
    }
}

/// The maxima of one second of samples (second 0 is the first second after `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SecondSample {
    /// Second since the sampler started.
    pub second: u64,
    /// Detailed (socket-table) samples taken in this second; 0 when only sockstat was read.
    pub samples: u32,
    /// Per-field maxima over those samples (towards the destinations).
    pub max: DestinationCounts,
    /// Namespace-wide maxima from sockstat over every tick of this second.
    pub netns_max: SockStat,
    /// TCP counters (cumulative) at the last sample of this second.
    pub counters: Counters,
}

/// One detailed sample, kept for plots at sub-second resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TickSample {
    /// Time since the sampler started, ms.
    pub at_ms: u64,
    /// TIME_WAIT sockets to the destinations.
    pub time_wait: u64,
    /// ESTABLISHED sockets to the destinations.
    pub established: u64,
    /// Ports in use in the fullest pool.
    pub pool_ports_in_use: u64,
}

/// Most detailed samples kept in [`SamplerReport::series`]; beyond it every other one is
/// dropped and the stride doubles, so memory stays flat and the whole run stays covered.
pub const MAX_TICKS: usize = 1024;

/// What the sampler saw over its life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SamplerReport {
    /// The destinations watched.
    pub destinations: Vec<SocketAddr>,
    /// Interval between samples, ms.
    pub interval_ms: u64,
    /// Detailed samples (socket-table dumps) taken.
    pub samples: u64,
    /// Sockstat readings taken (one per tick).
    pub ticks: u64,
    /// The longest gap between two detailed samples, ms (longer than `interval_ms` when dumps
    /// were slow and the budget stretched it).
    pub max_dump_gap_ms: u64,
    /// Per-second maxima, in order.
    pub seconds: Vec<SecondSample>,
    /// Detailed samples at their own times (at most [`MAX_TICKS`], evenly thinned on long runs).
    pub series: Vec<TickSample>,
    /// Maxima over the whole run (towards the destinations).
    pub peak: DestinationCounts,
    /// Namespace-wide maxima over the whole run (sockstat).
    pub netns_peak: SockStat,
    /// Time from start to the first sample whose fullest pool held `pool_size` ports or more,
    /// in ms; `None` if the pool never filled (or no pool size was given).
    pub pool_full_at_ms: Option<u64>,
    /// Counter increase from start to stop.
    pub counters_delta: Counters,
    /// Wall time spent reading the table and counters, ms (includes time the thread waited
    /// for a CPU while the load engine ran on it).
    pub busy_ms: u64,
    /// CPU time (user + system, `CLOCK_THREAD_CPUTIME_ID`) the sampler thread used over its
    /// life, µs: the sampler's own cost, kernel work of the dumps included (sock_diag answers
    /// in the caller's context). Divided by the run's length it is the share of a core.
    #[serde(default)]
    pub cpu_us: u64,
    /// The first error that stopped sampling early, if any.
    pub error: Option<String>,
}

/// Configuration of a [`Sampler`].
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Remote addresses to watch (the load run's targets). Empty: every socket.
    pub destinations: Vec<SocketAddr>,
    /// Interval between samples (100 ms for 10 Hz).
    pub interval: Duration,
    /// Usable ports of one pool (for `pool_full_at_ms`); 0 to skip.
    pub pool_size: u64,
}

/// A running sampler; [`Sampler::stop`] ends it and returns the report.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    thread: JoinHandle<SamplerReport>,
}

impl Sampler {
    /// Starts sampling on a new thread in the caller's network namespace. The first sample is
    /// taken before this returns, so the report always has a baseline.
    ///
    /// # Errors
    /// [`SockDiagError`] when the netlink socket cannot be opened, or the counters cannot be
    /// read.
    pub fn start(config: SamplerConfig) -> Result<Sampler, SockDiagError> {
        let mut socket = DiagSocket::open()?;
        let filter = destination_filter(&config.destinations);
        let baseline = Counters::read().map_err(|e| SockDiagError::Decode(e.to_string()))?;
        let start = Instant::now();
        let mut state = SamplerState::new(config, baseline, start);
        state.sample(&mut socket, filter.as_deref())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, wait) = mpsc::channel();
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("portlab-sampler".into())
            .spawn(move || state.run(&mut socket, filter.as_deref(), &stop_flag, &wait))
            .map_err(SockDiagError::Io)?;
        Ok(Sampler { stop, wake, thread })
    }

    /// Takes a last sample, stops the thread and returns what it saw.
    pub fn stop(self) -> SamplerReport {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.send(());
        self.thread.join().unwrap_or_else(|_| SamplerReport {
            error: Some("sampler thread panicked".into()),
            ..SamplerReport::default()
        })
    }
}

struct SamplerState {
    config: SamplerConfig,
    start: Instant,
    baseline: Counters,
    last_counters: Counters,
    report: SamplerReport,
    entries: Vec<SocketEntry>,
    busy: Duration,
    /// CPU time spent in dumps so far (the token bucket's spending).
    dump_busy: Duration,
    /// CPU time of the last dump: what the next one is expected to cost.
    last_dump_cost: Duration,
    /// Families whose table is walked at every dump.
    families: &'static [u8],
    /// IPv4-only destinations: the IPv6 walk (for IPv4-mapped sockets) is taken only while it
    /// finds some, or every [`V6_RECHECK`]th dump; its last findings stand in between.
    v6_occasional: bool,
    v6_entries: Vec<SocketEntry>,
    dumps: u64,
    last_dump: Option<Instant>,
    /// sockstat at the last dump: an unchanged reading lets a tick skip the dump.
    sockstat_at_dump: Option<SockStat>,
    /// Keep one detailed sample in `tick_stride` for `report.series`.
    tick_stride: u64,
}

impl SamplerState {
    fn new(config: SamplerConfig, baseline: Counters, start: Instant) -> Self {
        let all_v4 =
            !config.destinations.is_empty() && config.destinations.iter().all(|d| d.is_ipv4());
        // An IPv6 destination in IPv4-mapped form is reached by IPv4 sockets too.
        let all_v6 = !config.destinations.is_empty()
            && config.destinations.iter().all(|d| match d.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
                IpAddr::V4(_) => false,
            });
        let (families, v6_occasional): (&'static [u8], bool) = if all_v4 {
            (&[AF_INET], true)
        } else if all_v6 {
            (&[AF_INET6], false)
        } else {
            (&[AF_INET, AF_INET6], false)
        };
        let report = SamplerReport {
            destinations: config.destinations.clone(),
            interval_ms: config.interval.as_millis() as u64,
            ..SamplerReport::default()
        };
        SamplerState {
            config,
            start,
            baseline,
            last_counters: baseline,
            report,
            entries: Vec::new(),
            busy: Duration::ZERO,
            dump_busy: Duration::ZERO,
            last_dump_cost: Duration::ZERO,
            families,
            v6_occasional,
            v6_entries: Vec::new(),
            dumps: 0,
            last_dump: None,
            sockstat_at_dump: None,
            tick_stride: 1,
        }
    }

    fn run(
        mut self,
        socket: &mut DiagSocket,
        filter: Option<&[u8]>,
        stop: &AtomicBool,
        wait: &mpsc::Receiver<()>,
    ) -> SamplerReport {
        let mut next = self.start + self.config.interval;
        while !stop.load(Ordering::Acquire) {
            // Sleep until the next tick or until stop() wakes us.
            let timeout = next.saturating_duration_since(Instant::now());
            if wait.recv_timeout(timeout).is_ok() {
                break;
            }
            next += self.config.interval;
            if let Err(err) = self.tick(socket, filter, false) {
                self.report.error = Some(err.to_string());
                break;
            }
        }
        if self.report.error.is_none() {
            // A last detailed sample whatever the budget: the state at the end of the run.
            if let Err(err) = self.tick(socket, filter, true) {
                self.report.error = Some(err.to_string());
            }
        }
        self.report.counters_delta = self.last_counters.delta_since(&self.baseline);
        self.report.busy_ms = self.busy.as_millis() as u64;
        self.report.cpu_us = thread_cpu_time().as_micros() as u64;
        self.report
    }

    /// One tick: sockstat always; the filtered table and counters when the budget allows (or
    /// `force`).
    fn tick(
        &mut self,
        socket: &mut DiagSocket,
        filter: Option<&[u8]>,
        force: bool,
    ) -> Result<(), SockDiagError> {
        let began = Instant::now();
        let cpu_began = thread_cpu_time();
        let sockstat = SockStat::read();
        let at_ms = (began - self.start).as_millis() as u64;
        let allowance = (began - self.start).mul_f64(DUMP_BUDGET_FRACTION) + DUMP_BURST;
        let moved = sockstat.is_none()
            || sockstat != self.sockstat_at_dump
            || self
                .last_dump
                .is_none_or(|last| began.saturating_duration_since(last) >= DUMP_HEARTBEAT);
        // This dump's expected cost and the final dump's must both still fit.
        let fits = self.dump_busy + self.last_dump_cost * 2 <= allowance;
        let counts = if force || (moved && fits) {
            self.sockstat_at_dump = sockstat;
            let counts = self.dump(socket, filter, began)?;
            self.last_dump_cost = thread_cpu_time().saturating_sub(cpu_began);
            self.dump_busy += self.last_dump_cost;
            Some(counts)
        } else {
            None
        };
        self.busy += began.elapsed();
        self.record(at_ms, counts, sockstat.unwrap_or_default());
        Ok(())
    }

    fn dump(
        &mut self,
        socket: &mut DiagSocket,
        filter: Option<&[u8]>,
        began: Instant,
    ) -> Result<DestinationCounts, SockDiagError> {
        self.entries.clear();
        let states = StateMask::ALL.without(TcpState::Listen);
        let entries = &mut self.entries;
        for &family in self.families {
            socket.dump_family(family, states, filter, &mut |e| entries.push(e))?;
        }
        if self.v6_occasional
            && (self.dumps.is_multiple_of(V6_RECHECK) || !self.v6_entries.is_empty())
        {
            self.v6_entries.clear();
            let v6 = &mut self.v6_entries;
            socket.dump_family(AF_INET6, states, filter, &mut |e| v6.push(e))?;
        }
        self.dumps += 1;
        let counts =
            DestinationCounts::from_entries(self.entries.iter().chain(self.v6_entries.iter()));
        if let Ok(counters) = Counters::read() {
            self.last_counters = counters;
        }
        if let Some(last) = self.last_dump {
            let gap = (began - last).as_millis() as u64;
            self.report.max_dump_gap_ms = self.report.max_dump_gap_ms.max(gap);
        }
        self.last_dump = Some(began);
        Ok(counts)
    }

    /// Takes the first, detailed sample (before the thread starts).
    fn sample(
        &mut self,
        socket: &mut DiagSocket,
        filter: Option<&[u8]>,
    ) -> Result<(), SockDiagError> {
        self.tick(socket, filter, true)
    }

    fn record(&mut self, at_ms: u64, counts: Option<DestinationCounts>, sockstat: SockStat) {
        let report = &mut self.report;
        report.ticks += 1;
        report.netns_peak.max_with(&sockstat);
        let detailed = u32::from(counts.is_some());
        let counts = counts.unwrap_or_default();
        if detailed == 1 {
            report.samples += 1;
            if (report.samples - 1).is_multiple_of(self.tick_stride) {
                if report.series.len() == MAX_TICKS {
                    // Thin evenly: keep every other sample, take every other from now on.
                    let mut i = 0;
                    report.series.retain(|_| {
                        i += 1;
                        i % 2 == 1
                    });
                    self.tick_stride *= 2;
                }
                report.series.push(TickSample {
                    at_ms,
                    time_wait: counts.time_wait,
                    established: counts.established,
                    pool_ports_in_use: counts.max_pool_ports_in_use,
                });
            }
            report.peak.max_with(&counts);
            if report.pool_full_at_ms.is_none()
                && self.config.pool_size > 0
                && counts.max_pool_ports_in_use >= self.config.pool_size
            {
                report.pool_full_at_ms = Some(at_ms);
            }
        }
        let second = at_ms / 1000;
        match report.seconds.last_mut() {
            Some(last) if last.second == second => {
                last.samples += detailed;
                last.max.max_with(&counts);
                last.netns_max.max_with(&sockstat);
                last.counters = self.last_counters;
            }
            _ => report.seconds.push(SecondSample {
                second,
                samples: detailed,
                max: counts,
                netns_max: sockstat,
                counters: self.last_counters,
            }),
        }
    }
}

/// CPU time (user + system) the calling thread has used (`clock_gettime(2)` with
/// `CLOCK_THREAD_CPUTIME_ID`); zero if the clock cannot be read.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: TcpState, local: &str, remote: &str) -> SocketEntry {
        SocketEntry {
            state,
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
        }
    }

    #[test]
    fn counts_states_and_the_fullest_pool() {
        let entries = [
            entry(TcpState::TimeWait, "10.0.0.1:40000", "10.0.0.2:80"),
            entry(TcpState::TimeWait, "10.0.0.1:40001", "10.0.0.2:80"),
            entry(TcpState::Established, "10.0.0.1:40002", "10.0.0.2:80"),
            entry(TcpState::Established, "10.0.0.3:40000", "10.0.0.2:80"),
            entry(TcpState::FinWait2, "10.0.0.3:40001", "10.0.0.2:80"),
            entry(TcpState::SynSent, "10.0.0.3:40002", "10.0.0.2:81"),
        ];
        let c = DestinationCounts::from_entries(entries.iter());
        assert_eq!(
            (c.established, c.time_wait, c.syn_sent, c.closing),
            (2, 2, 1, 1)
        );
        assert_eq!(c.max_pool_ports_in_use, 3);
        assert_eq!(c.pools, 3);
    }

    #[test]
    fn parses_sockstat() {
        let text =
            "sockets: used 17\nTCP: inuse 3 orphan 0 tw 39019 alloc 3 mem 27\nUDP: inuse 0 mem 0\n";
        let stat = SockStat::parse(text).expect("parses");
        assert_eq!(
            stat,
            SockStat {
                tcp_in_use: 3,
                tcp_time_wait: 39_019
            }
        );
        assert_eq!(SockStat::parse("UDP: inuse 0\n"), None);
    }

    #[test]
    fn keeps_per_second_maxima_and_first_full_time() {
        let config = SamplerConfig {
            destinations: vec![],
            interval: Duration::from_millis(100),
            pool_size: 10,
        };
        let mut state = SamplerState::new(config, Counters::default(), Instant::now());
        let at = |tw, ports| DestinationCounts {
            time_wait: tw,
            max_pool_ports_in_use: ports,
            ..DestinationCounts::default()
        };
        let netns = |tw| SockStat {
            tcp_in_use: 1,
            tcp_time_wait: tw,
        };
        state.record(0, Some(at(1, 1)), netns(1));
        state.record(500, Some(at(5, 5)), netns(5));
        state.record(700, None, netns(9));
        state.record(900, Some(at(3, 10)), netns(3));
        state.record(1200, Some(at(2, 2)), netns(2));
        let r = &state.report;
        assert_eq!(r.samples, 4);
        assert_eq!(r.ticks, 5);
        assert_eq!(r.seconds[0].netns_max.tcp_time_wait, 9);
        assert_eq!(r.netns_peak.tcp_time_wait, 9);
        assert_eq!(r.seconds.len(), 2);
        assert_eq!(r.seconds[0].max.time_wait, 5);
        assert_eq!(r.seconds[0].max.max_pool_ports_in_use, 10);
        assert_eq!(r.seconds[0].samples, 3);
        assert_eq!(r.seconds[1].max.time_wait, 2);
        assert_eq!(r.peak.time_wait, 5);
        assert_eq!(r.pool_full_at_ms, Some(900));
        assert_eq!(r.series.len(), 4);
        assert_eq!(r.series[2].at_ms, 900);
        assert_eq!(r.series[2].pool_ports_in_use, 10);
    }

    #[test]
    fn ticks_stay_bounded_and_cover_the_run() {
        let config = SamplerConfig {
            destinations: vec![],
            interval: Duration::from_millis(1),
            pool_size: 0,
        };
        let mut state = SamplerState::new(config, Counters::default(), Instant::now());
        for i in 0..10 * MAX_TICKS as u64 {
            let counts = DestinationCounts {
                time_wait: i,
                ..DestinationCounts::default()
            };
            state.record(i, Some(counts), SockStat::default());
        }
        let ticks = &state.report.series;
        assert!(
            ticks.len() <= MAX_TICKS && ticks.len() >= MAX_TICKS / 2,
            "{}",
            ticks.len()
        );
        assert_eq!(ticks[0].at_ms, 0);
        assert!(
            ticks.last().map_or(0, |t| t.at_ms) >= 9 * MAX_TICKS as u64,
            "covers the end"
        );
        assert!(ticks.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }
}
