//! A background sampler of the port pool towards given destinations: it reads the socket table
//! (filtered in the kernel to those destinations) and the TCP counters at a fixed interval on
//! its own thread, beside a load run and never on its hot path, and keeps per-second maxima so
//! its memory stays flat however long the run.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::counters::Counters;
use crate::diag::{destination_filter, DiagSocket, SockDiagError, SocketEntry, StateMask};
use crate::state::TcpState;

/// What one reading of the table saw towards the destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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

/// The maxima of one second of samples (second 0 is the first second after `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SecondSample {
    /// Second since the sampler started.
    pub second: u64,
    /// Samples taken in this second.
    pub samples: u32,
    /// Per-field maxima over those samples.
    pub max: DestinationCounts,
    /// TCP counters (cumulative) at the last sample of this second.
    pub counters: Counters,
}

/// What the sampler saw over its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplerReport {
    /// The destinations watched.
    pub destinations: Vec<SocketAddr>,
    /// Interval between samples, ms.
    pub interval_ms: u64,
    /// Samples taken.
    pub samples: u64,
    /// Per-second maxima, in order.
    pub seconds: Vec<SecondSample>,
    /// Maxima over the whole run.
    pub peak: DestinationCounts,
    /// Time from start to the first sample whose fullest pool held `pool_size` ports or more,
    /// in ms; `None` if the pool never filled (or no pool size was given).
    pub pool_full_at_ms: Option<u64>,
    /// Counter increase from start to stop.
    pub counters_delta: Counters,
    /// Wall time spent reading the table, ms (the sampler's own cost).
    pub busy_ms: u64,
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
            destinations: Vec::new(),
            interval_ms: 0,
            samples: 0,
            seconds: Vec::new(),
            peak: DestinationCounts::default(),
            pool_full_at_ms: None,
            counters_delta: Counters::default(),
            busy_ms: 0,
            error: Some("sampler thread panicked".into()),
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
}

impl SamplerState {
    fn new(config: SamplerConfig, baseline: Counters, start: Instant) -> Self {
        let report = SamplerReport {
            destinations: config.destinations.clone(),
            interval_ms: config.interval.as_millis() as u64,
            samples: 0,
            seconds: Vec::new(),
            peak: DestinationCounts::default(),
            pool_full_at_ms: None,
            counters_delta: Counters::default(),
            busy_ms: 0,
            error: None,
        };
        SamplerState {
            config,
            start,
            baseline,
            last_counters: baseline,
            report,
            entries: Vec::new(),
            busy: Duration::ZERO,
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
            if let Err(err) = self.sample(socket, filter) {
                self.report.error = Some(err.to_string());
                break;
            }
        }
        if self.report.error.is_none() {
            if let Err(err) = self.sample(socket, filter) {
                self.report.error = Some(err.to_string());
            }
        }
        self.report.counters_delta = self.last_counters.delta_since(&self.baseline);
        self.report.busy_ms = self.busy.as_millis() as u64;
        self.report
    }

    fn sample(
        &mut self,
        socket: &mut DiagSocket,
        filter: Option<&[u8]>,
    ) -> Result<(), SockDiagError> {
        let began = Instant::now();
        self.entries.clear();
        let states = StateMask::ALL.without(TcpState::Listen);
        let entries = &mut self.entries;
        socket.dump(states, filter, &mut |e| entries.push(e))?;
        let counts = DestinationCounts::from_entries(self.entries.iter());
        if let Ok(counters) = Counters::read() {
            self.last_counters = counters;
        }
        let now = Instant::now();
        self.busy += now - began;
        let at_ms = (began - self.start).as_millis() as u64;
        self.record(at_ms, counts);
        Ok(())
    }

    fn record(&mut self, at_ms: u64, counts: DestinationCounts) {
        let report = &mut self.report;
        report.samples += 1;
        report.peak.max_with(&counts);
        if report.pool_full_at_ms.is_none()
            && self.config.pool_size > 0
            && counts.max_pool_ports_in_use >= self.config.pool_size
        {
            report.pool_full_at_ms = Some(at_ms);
        }
        let second = at_ms / 1000;
        match report.seconds.last_mut() {
            Some(last) if last.second == second => {
                last.samples += 1;
                last.max.max_with(&counts);
                last.counters = self.last_counters;
            }
            _ => report.seconds.push(SecondSample {
                second,
                samples: 1,
                max: counts,
                counters: self.last_counters,
            }),
        }
    }
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
        state.record(0, at(1, 1));
        state.record(500, at(5, 5));
        state.record(900, at(3, 10));
        state.record(1200, at(2, 2));
        let r = &state.report;
        assert_eq!(r.samples, 4);
        assert_eq!(r.seconds.len(), 2);
        assert_eq!(r.seconds[0].max.time_wait, 5);
        assert_eq!(r.seconds[0].max.max_pool_ports_in_use, 10);
        assert_eq!(r.seconds[0].samples, 3);
        assert_eq!(r.seconds[1].max.time_wait, 2);
        assert_eq!(r.peak.time_wait, 5);
        assert_eq!(r.pool_full_at_ms, Some(900));
    }
}
