//! Aggregation: each engine thread owns one [`Stats`] (no locks on the hot path) and one
//! [`SecondBucket`] for the current second of the timeline; they are merged by the caller of
//! the engine after the run (`merge`), as wrk and oha do.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::error::{ErrorClass, Phase};

/// Highest latency the histograms hold, in microseconds (one hour); larger values are clamped.
pub(crate) const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Highest HTTP status code counted individually; others land in slot 0.
const STATUS_SLOTS: usize = 1000;

/// Failures by class, each split by the phase it happened in.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorCounts {
    map: BTreeMap<ErrorClass, [u64; 3]>,
    /// When each class first happened, µs since the start of the run.
    first_us: BTreeMap<ErrorClass, u64>,
}

impl ErrorCounts {
    pub fn add(&mut self, class: ErrorClass, phase: Phase) {
        self.map.entry(class).or_default()[phase.index()] += 1;
    }

    /// Notes a failure of `class` at `at_us` since the start; keeps the earliest.
    pub fn note_time(&mut self, class: ErrorClass, at_us: u64) {
        let first = self.first_us.entry(class).or_insert(at_us);
        *first = (*first).min(at_us);
    }

    /// When `class` first happened, µs since the start.
    pub fn first_us(&self, class: ErrorClass) -> Option<u64> {
        self.first_us.get(&class).copied()
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (class, at_us) in &other.first_us {
            self.note_time(*class, *at_us);
        }
        for (class, counts) in &other.map {
            let mine = self.map.entry(*class).or_default();
            for (m, o) in mine.iter_mut().zip(counts) {
                *m += o;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (ErrorClass, [u64; 3])> + '_ {
        self.map.iter().map(|(c, n)| (*c, *n))
    }
}

/// Latency histogram in microseconds with 3 significant digits (HdrHistogram).
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits, so creation cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// Everything one engine thread counts over the whole run.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Latency of successful requests, µs, from the first attempt's (intended) start.
    pub latency: Histogram<u64>,
    /// TCP (+TLS) connect latency of successful connects, µs.
    pub connect: Histogram<u64>,
    /// Successful connects that took 1 s or more: the SYN or SYN-ACK was retransmitted (the
    /// initial RTO is 1 s, RFC 6298), which a listener dropping SYNs causes.
    pub slow_connects: u64,
    /// Responses by status code (index = code; slot 0 = out of range).
    pub status: Vec<u64>,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled_at_deadline: u64,
    /// Requests the circuit breaker refused (no network attempt for their last try).
    pub short_circuited: u64,
    /// What the thread's circuit breaker did.
    pub breaker: crate::breaker::BreakerCounters,
    /// Final failures (after retries), by class and phase.
    pub errors: ErrorCounts,
    /// Attempts that were retries (second and later attempts of a request).
    pub retry_attempts: u64,
    /// Requests that succeeded on a retry.
    pub retry_succeeded: u64,
    /// Failed attempts that were followed by a retry, by class and phase.
    pub retried_errors: ErrorCounts,
    pub connections_opened: u64,
    pub requests_on_new_connection: u64,
    pub requests_on_reused_connection: u64,
    pub closed_by_server: u64,
    pub closed_by_client: u64,
    pub body_bytes: u64,
    /// `-x` with an https target: CONNECT answers that refused the tunnel, by status (0: the
    /// proxy did not answer with HTTP).
    pub proxy_refused_status: BTreeMap<u16, u64>,
    /// TCP connect outcomes per candidate address (index in `Target::candidates`).
    pub per_address: Vec<AddressCounts>,
}

/// Connect outcomes towards one address.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressCounts {
    pub connects: u64,
    pub failures: BTreeMap<ErrorClass, u64>,
}

impl AddressCounts {
    /// Counts one failed connect of class `class` towards this address, and says whether the
    /// RFC 8305 fallback stops here: a local resource ran out (EMFILE/ENFILE, ENOBUFS), so the
    /// next address would fail the same way.
    pub fn connect_failed(&mut self, class: ErrorClass) -> bool {
        *self.failures.entry(class).or_default() += 1;
        matches!(
            class,
            ErrorClass::TooManyOpenFiles | ErrorClass::NoBufferSpace
        )
    }
}

impl Stats {
    /// The counts of candidate `index`, growing the list as needed.
    pub fn address(&mut self, index: usize) -> &mut AddressCounts {
        if self.per_address.len() <= index {
            self.per_address
                .resize_with(index + 1, AddressCounts::default);
        }
        &mut self.per_address[index]
    }

    pub fn new() -> Self {
        Self {
            latency: latency_histogram(),
            connect: latency_histogram(),
            slow_connects: 0,
            status: vec![0; STATUS_SLOTS],
            succeeded: 0,
            failed: 0,
            cancelled_at_deadline: 0,
            short_circuited: 0,
            breaker: crate::breaker::BreakerCounters::default(),
            errors: ErrorCounts::default(),
            retry_attempts: 0,
            retry_succeeded: 0,
            retried_errors: ErrorCounts::default(),
            connections_opened: 0,
            requests_on_new_connection: 0,
            requests_on_reused_connection: 0,
            closed_by_server: 0,
            closed_by_client: 0,
            body_bytes: 0,
            proxy_refused_status: BTreeMap::new(),
            per_address: Vec::new(),
        }
    }

    pub fn count_status(&mut self, status: u16) {
        let slot = usize::from(status);
        let slot = if slot < STATUS_SLOTS { slot } else { 0 };
        self.status[slot] += 1;
    }

    pub fn merge(&mut self, o: &Stats) {
        // Both histograms share bounds, so `add` cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.connect.add(&o.connect);
        for (m, x) in self.status.iter_mut().zip(&o.status) {
            *m += x;
        }
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.cancelled_at_deadline += o.cancelled_at_deadline;
        self.short_circuited += o.short_circuited;
        self.breaker.merge(&o.breaker);
        self.errors.merge(&o.errors);
        self.retry_attempts += o.retry_attempts;
        self.retry_succeeded += o.retry_succeeded;
        self.retried_errors.merge(&o.retried_errors);
        self.connections_opened += o.connections_opened;
        self.slow_connects += o.slow_connects;
        self.requests_on_new_connection += o.requests_on_new_connection;
        self.requests_on_reused_connection += o.requests_on_reused_connection;
        self.closed_by_server += o.closed_by_server;
        self.closed_by_client += o.closed_by_client;
        self.body_bytes += o.body_bytes;
        for (code, n) in &o.proxy_refused_status {
            *self.proxy_refused_status.entry(*code).or_default() += n;
        }
        for (i, a) in o.per_address.iter().enumerate() {
            let mine = self.address(i);
            mine.connects += a.connects;
            for (class, n) in &a.failures {
                *mine.failures.entry(*class).or_default() += n;
            }
        }
    }
}

/// One second of one thread's timeline. Latency precision is 2 significant digits to keep the
/// bucket small (about 13 KB); only the seconds not yet merged are in memory.
#[derive(Debug, Clone)]
pub(crate) struct SecondBucket {
    /// Seconds since the start of the run.
    pub second: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub new_connections: u64,
    pub errors: BTreeMap<ErrorClass, u64>,
    pub latency: Histogram<u32>,
}

impl SecondBucket {
    pub fn new(second: u64) -> Self {
        Self {
            second,
            succeeded: 0,
            failed: 0,
            new_connections: 0,
            errors: BTreeMap::new(),
            // Constant bounds within hdrhistogram's limits: cannot fail.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
                .unwrap_or_else(|_| unreachable!()),
        }
    }

    pub fn merge(&mut self, o: &SecondBucket) {
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.new_connections += o.new_connections;
        for (c, n) in &o.errors {
            *self.errors.entry(*c).or_default() += n;
        }
        // Counts per second stay far below u32::MAX per slot; saturation is harmless here.
        let _ = self.latency.add(&o.latency);
    }
}
