//! Deterministic discrete-event simulation of the client's ephemeral-port pools.
//!
//! What is modelled: per pool, the number of free ports, the open connections and a FIFO of
//! TIME_WAIT entries (close times). Port *numbers* are not: Linux's even-first hashed scan
//! (net/ipv4/inet_hashtables.c `__inet_hash_connect()`) decides which port is taken, but
//! whether `connect()` succeeds depends only on whether some port of the pool is free or is a
//! TIME_WAIT entry the reuse rule lets it take over (research §1.3, §1.4, §7.3).
//!
//! Speed: the TIME_WAIT length is one constant per profile, so TIME_WAIT entries expire in the
//! order they were made — one global FIFO gives every expiry in O(1), and per-pool FIFOs give
//! the oldest entry for takeover in O(1). Workers (closed loop) and in-flight connections
//! (open loop) sit in a binary heap. When a worker fails on an exhausted pool, the run of
//! failures until the next event that could change that pool is counted arithmetically.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::profile::{OsProfile, TimeWaitCap};
use crate::workload::{ConnectionPolicy, Latency, LoadShape, Workload};
use crate::ModelError;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Longest stretch of simulated time a run may cover (7 days); a run reaching it stops and is
/// marked `truncated`.
pub const MAX_SIMULATED: Duration = Duration::from_secs(7 * 86_400);

/// Counts over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Connect attempts and keep-alive requests started (first tries and retries, each once).
    pub attempts: u64,
    /// Attempts that got a connection (a new one or a kept-alive one).
    pub successes: u64,
    /// Attempts that failed with EADDRNOTAVAIL (no usable port in the pool).
    pub addr_not_available: u64,
    /// New connections opened (successful connects).
    pub connects: u64,
    /// Requests that failed after all their retries.
    pub requests_failed: u64,
    /// TIME_WAIT entries taken over by `connect()` (Linux `TWRecycled`).
    pub time_wait_recycled: u64,
    /// Closes that skipped TIME_WAIT because the table was full (Linux `TCPTimeWaitOverflow`).
    pub time_wait_overflow: u64,
    /// TIME_WAIT entries evicted to make room (FreeBSD `maxtcptw`).
    pub time_wait_evicted: u64,
}

/// One second of the timeline. Counts are for attempts started in `[second, second + 1)`;
/// gauges are sampled at the end of that second (or at the end of the run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SecondSample {
    /// Second since the start of the run.
    pub second: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// Attempts that failed with EADDRNOTAVAIL.
    pub addr_not_available: u64,
    /// Client TIME_WAIT entries (all pools).
    pub time_wait: u64,
    /// Occupied (port, pool) slots: open connections plus TIME_WAIT entries, all pools. Under
    /// per-4-tuple scope the same port number counts once per pool.
    pub ports_in_use: u64,
}

/// Result of [`simulate`]. Field names are stable (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// The seed the run used.
    pub seed: u64,
    /// Number of pools.
    pub pools: u32,
    /// Usable ports per pool.
    pub ports_per_pool: u32,
    /// Counts over the run.
    pub totals: Totals,
    /// `addr_not_available / attempts` (0 when there were no attempts).
    pub failure_fraction: f64,
    /// Time of the first EADDRNOTAVAIL, seconds from the start.
    pub first_failure_secs: Option<f64>,
    /// Largest number of client TIME_WAIT entries at any moment.
    pub peak_time_wait: u64,
    /// Largest number of occupied ports in any one pool (never above `ports_per_pool`).
    pub peak_pool_in_use: u32,
    /// Simulated time covered, seconds.
    pub elapsed_secs: f64,
    /// Events processed (attempts plus connection ends); failed attempts counted in bulk
    /// count once each.
    pub events: u64,
    /// The run hit [`MAX_SIMULATED`] before its own limit.
    pub truncated: bool,
    /// Time one failed connect took in the run, microseconds (given, or estimated from the
    /// pool size by [`crate::failed_connect_estimate`]).
    pub failed_connect_us: f64,
    /// Per-second timeline.
    pub timeline: Vec<SecondSample>,
}

/// Simulates `workload` against `profile`, deterministically for a given `seed`.
///
/// # Errors
/// [`ModelError::InvalidWorkload`] when the workload fails [`Workload::validate`] or has no
/// limit (neither attempts nor duration).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use portlab_model::{simulate, ConnectionPolicy, Latency, Os, OsProfile, PortRange, TwReuse, Workload};
///
/// let mut linux = OsProfile::preset(Os::Linux);
/// linux.range = PortRange::new(40000, 40999)?;
/// linux.tw_reuse = TwReuse::Off;
/// let w = Workload::closed(1, Latency::fixed(Duration::from_millis(1)), ConnectionPolicy::ClientCloses)
///     .with_max_attempts(3000);
/// let r = simulate(&linux, &w, 1)?;
/// assert_eq!((r.totals.successes, r.totals.addr_not_available), (1000, 2000));
/// # Ok::<(), portlab_model::ModelError>(())
/// ```
pub fn simulate(
    profile: &OsProfile,
    workload: &Workload,
    seed: u64,
) -> Result<SimReport, ModelError> {
    workload.validate()?;
    if workload.limit.max_attempts.is_none() && workload.limit.duration.is_none() {
        return Err(ModelError::InvalidWorkload(
            "give a limit: a number of attempts (-n) or a duration".to_string(),
        ));
    }
    let mut sim = Sim::new(profile, workload, seed);
    match workload.shape {
        LoadShape::Closed { concurrency } => sim.run_closed(concurrency),
        LoadShape::Open {
            rate_per_sec,
            poisson,
        } => sim.run_open(rate_per_sec, poisson),
    }
    Ok(sim.finish())
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and fully specified, so a seed gives the
/// same run on every platform and every version of every dependency.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Exponential with the given mean, in nanoseconds.
    fn exponential_ns(&mut self, mean_ns: f64) -> u64 {
        (-mean_ns * (1.0 - self.next_f64()).ln()) as u64
    }
}

/// Request latency sampler, in nanoseconds.
#[derive(Debug, Clone, Copy)]
enum LatencyNs {
    Fixed(u64),
    Uniform { min: u64, span: u64 },
    Exponential(f64),
}

impl LatencyNs {
    fn new(l: Latency) -> Self {
        match l {
            Latency::Fixed { us } => Self::Fixed(us.saturating_mul(1000)),
            Latency::Uniform { min_us, max_us } => Self::Uniform {
                min: min_us.saturating_mul(1000),
                span: max_us.saturating_sub(min_us).saturating_mul(1000),
            },
            Latency::Exponential { mean_us } => Self::Exponential(mean_us as f64 * 1000.0),
        }
    }

    #[inline]
    fn sample(self, rng: &mut SplitMix64) -> u64 {
        match self {
            Self::Fixed(ns) => ns,
            Self::Uniform { min, span } => min + rng.next_u64() % (span + 1),
            Self::Exponential(mean) => rng.exponential_ns(mean).max(1),
        }
    }
}

/// One pool of ports.
#[derive(Debug, Clone, Default)]
struct Pool {
    /// Ports neither open nor in TIME_WAIT.
    free: u32,
    /// Close times of the live TIME_WAIT entries, oldest first.
    time_wait: VecDeque<u64>,
    /// Entries of this pool still in the global FIFO but already taken over or evicted; they
    /// are always this pool's oldest entries there.
    ghosts: u32,
}

/// Port state of all pools, with the rules of the profile.
#[derive(Debug)]
struct Ports {
    pools: Vec<Pool>,
    ports_per_pool: u32,
    /// Every TIME_WAIT entry (close time, pool), oldest first.
    expiry: VecDeque<(u64, u32)>,
    time_wait_ns: u64,
    /// Age after which `connect()` may take a TIME_WAIT entry over, when reuse applies.
    reuse_after_ns: Option<u64>,
    /// Whether a client close leaves a TIME_WAIT entry.
    client_time_wait: bool,
    cap: TimeWaitCap,
    time_wait_total: u64,
    open_total: u64,
    peak_time_wait: u64,
    peak_pool_in_use: u32,
    recycled: u64,
    overflow: u64,
    evicted: u64,
}

impl Ports {
    fn new(profile: &OsProfile, pools: u32, loopback: bool) -> Self {
        let ports_per_pool = profile.ports_per_pool();
        Self {
            pools: vec![
                Pool {
                    free: ports_per_pool,
                    ..Pool::default()
                };
                pools as usize
            ],
            ports_per_pool,
            expiry: VecDeque::new(),
            time_wait_ns: duration_ns(profile.time_wait),
            reuse_after_ns: profile
                .reuse_applies(loopback)
                .then(|| duration_ns(profile.tw_reuse_delay.min(profile.time_wait))),
            client_time_wait: profile.client_time_wait(loopback),
            cap: profile.time_wait_cap,
            time_wait_total: 0,
            open_total: 0,
            peak_time_wait: 0,
            peak_pool_in_use: 0,
            recycled: 0,
            overflow: 0,
            evicted: 0,
        }
    }

    /// Ends every TIME_WAIT entry closed at or before `now - TIME_WAIT`.
    /// include/net/tcp.h `TCP_TIMEWAIT_LEN`: the entry lives the full length, then the port is
    /// free for every 4-tuple again.
    #[inline]
    fn expire(&mut self, now: u64) {
        while let Some(&(closed, pool)) = self.expiry.front() {
            if closed + self.time_wait_ns > now {
                break;
            }
            self.expiry.pop_front();
            self.forget_oldest(pool);
        }
    }

    /// Drops the global FIFO's view of `pool`'s oldest entry: a ghost if it was taken over
    /// already, else the live entry ends and its port is free.
    #[inline]
    fn forget_oldest(&mut self, pool: u32) {
        let p = &mut self.pools[pool as usize];
        if p.ghosts > 0 {
            p.ghosts -= 1;
        } else {
            p.time_wait.pop_front();
            p.free += 1;
            self.time_wait_total -= 1;
        }
    }

    /// Takes a port in `pool` at `now`: a free one, else the oldest TIME_WAIT entry if the
    /// reuse rule allows (net/ipv4/tcp_ipv4.c `tcp_twsk_unique()`: reuse on and the entry
    /// older than `tcp_tw_reuse_delay`). Returns false for EADDRNOTAVAIL
    /// (net/ipv4/inet_hashtables.c `__inet_hash_connect()` after both parity passes).
    #[inline]
    fn acquire(&mut self, pool: u32, now: u64) -> bool {
        let p = &mut self.pools[pool as usize];
        if p.free > 0 {
            p.free -= 1;
        } else {
            match (self.reuse_after_ns, p.time_wait.front()) {
                (Some(delay), Some(&closed)) if closed + delay <= now => {
                    p.time_wait.pop_front();
                    p.ghosts += 1;
                    self.time_wait_total -= 1;
                    self.recycled += 1;
                }
                _ => return false,
            }
        }
        let in_use = self.ports_per_pool - p.free;
        self.peak_pool_in_use = self.peak_pool_in_use.max(in_use);
        self.open_total += 1;
        true
    }

    /// Closes a connection of `pool` at `now`; `client_first` when the client sends the first
    /// FIN (only the active closer holds TIME_WAIT, RFC 9293; research §3.1, D3).
    #[inline]
    fn release(&mut self, pool: u32, now: u64, client_first: bool) {
        self.open_total -= 1;
        if !(client_first && self.client_time_wait) {
            self.pools[pool as usize].free += 1;
            return;
        }
        match self.cap {
            TimeWaitCap::Overflow(cap) if self.time_wait_total >= cap => {
                // tcp_minisocks.c tcp_time_wait(): no bucket, tcp_done() — the 4-tuple is free.
                self.overflow += 1;
                self.pools[pool as usize].free += 1;
                return;
            }
            TimeWaitCap::EvictOldest(cap) if self.time_wait_total >= cap => self.evict_oldest(),
            _ => {}
        }
        self.pools[pool as usize].time_wait.push_back(now);
        self.expiry.push_back((now, pool));
        self.time_wait_total += 1;
        self.peak_time_wait = self.peak_time_wait.max(self.time_wait_total);
    }

    /// FreeBSD tcp_timewait.c `tcp_tw_2msl_scan(1)`: recycle the oldest TIME_WAIT entry.
    fn evict_oldest(&mut self) {
        while let Some((_, pool)) = self.expiry.pop_front() {
            let live = self.pools[pool as usize].ghosts == 0;
            self.forget_oldest(pool);
            if live {
                self.evicted += 1;
                return;
            }
        }
    }

    /// Earliest time after which `pool` may have a usable port without any other event: its
    /// oldest TIME_WAIT entry expires or becomes reusable. `u64::MAX` if it has none.
    fn next_change(&self, pool: u32) -> u64 {
        match self.pools[pool as usize].time_wait.front() {
            None => u64::MAX,
            Some(&closed) => {
                let expiry = closed + self.time_wait_ns;
                self.reuse_after_ns
                    .map_or(expiry, |d| expiry.min(closed + d))
            }
        }
    }

    fn in_use(&self) -> u64 {
        self.open_total + self.time_wait_total
    }
}

/// Per-second counters; rolls over at each second boundary, sampling the gauges there.
#[derive(Debug)]
struct Timeline {
    samples: Vec<SecondSample>,
    current: SecondSample,
    next_boundary: u64,
}

impl Timeline {
    /// Closes every second that ends at or before `t`.
    #[inline]
    fn roll_to(&mut self, t: u64, ports: &mut Ports) {
        while t >= self.next_boundary {
            self.close_second(self.next_boundary, ports);
            self.next_boundary += NS_PER_SEC;
        }
    }

    fn close_second(&mut self, at: u64, ports: &mut Ports) {
        ports.expire(at);
        self.current.time_wait = ports.time_wait_total;
        self.current.ports_in_use = ports.in_use();
        let next = SecondSample {
            second: self.current.second + 1,
            ..SecondSample::default()
        };
        self.samples
            .push(std::mem::replace(&mut self.current, next));
    }
}

/// Closed-loop worker.
#[derive(Debug, Clone, Copy)]
struct Worker {
    pool: u32,
    /// Holds an open connection (keep-alive, or a request in flight).
    connected: bool,
    /// A request is in flight; the worker's heap entry is its end.
    in_request: bool,
    /// Attempt number within the current request (0 = first try).
    attempt: u32,
}

/// Open-loop heap entry payload: high bit = retry (else a connection end), next 31 bits the
/// attempt number, low 32 bits the (source IP, destination) pair.
const RETRY_BIT: u64 = 1 << 63;

struct Sim<'a> {
    workload: &'a Workload,
    rng: SplitMix64,
    latency: LatencyNs,
    ports: Ports,
    timeline: Timeline,
    totals: Totals,
    first_failure: Option<u64>,
    /// Attempts still allowed.
    budget: u64,
    /// No attempt starts at or after this time.
    end: u64,
    /// Time of the last event processed.
    now: u64,
    events: u64,
    failed_connect_ns: u64,
    pool_of_pair: Vec<u32>,
    seed: u64,
}

impl<'a> Sim<'a> {
    fn new(profile: &OsProfile, workload: &'a Workload, seed: u64) -> Self {
        let pools = profile
            .scope
            .pools(workload.source_ips, workload.destinations);
        let max = duration_ns(MAX_SIMULATED);
        let pool_of_pair = (0..workload.pairs())
            .map(|pair| {
                let dst = pair % workload.destinations;
                let src = pair / workload.destinations;
                profile.scope.pool_of(src, dst, workload.destinations)
            })
            .collect();
        Self {
            workload,
            rng: SplitMix64(seed),
            latency: LatencyNs::new(workload.latency),
            ports: Ports::new(profile, pools, workload.loopback),
            timeline: Timeline {
                samples: Vec::new(),
                current: SecondSample::default(),
                next_boundary: NS_PER_SEC,
            },
            totals: Totals::default(),
            first_failure: None,
            budget: workload.limit.max_attempts.unwrap_or(u64::MAX),
            end: workload.limit.duration.map_or(max, duration_ns).min(max),
            now: 0,
            events: 0,
            failed_connect_ns: duration_ns(workload.failed_connect_for(profile.ports_per_pool()))
                .max(1),
            pool_of_pair,
            seed,
        }
    }

    /// Moves the clock to `t`: closes finished seconds, then expires TIME_WAIT entries.
    #[inline]
    fn advance(&mut self, t: u64) {
        self.timeline.roll_to(t, &mut self.ports);
        self.ports.expire(t);
        self.now = t;
    }

    #[inline]
    fn count_success(&mut self) {
        self.events += 1;
        self.totals.attempts += 1;
        self.totals.successes += 1;
        self.timeline.current.attempts += 1;
        self.timeline.current.successes += 1;
        self.budget -= 1;
    }

    /// Counts `k` failed attempts at `t`, `t + step`, … (no state changes in between).
    fn count_failures(&mut self, t: u64, step: u64, k: u64) {
        if self.first_failure.is_none() {
            self.first_failure = Some(t);
        }
        self.totals.attempts += k;
        self.totals.addr_not_available += k;
        self.budget -= k;
        self.events += k;
        let mut at = t;
        let mut left = k;
        while left > 0 {
            self.timeline.roll_to(at, &mut self.ports);
            let room = self.timeline.next_boundary - at;
            let here = left.min(room.div_ceil(step));
            self.timeline.current.attempts += here;
            self.timeline.current.addr_not_available += here;
            left -= here;
            at += here * step;
        }
        self.now = self.now.max(t + (k - 1) * step);
    }

    fn run_closed(&mut self, concurrency: u32) {
        let pairs = self.workload.pairs();
        let mut workers: Vec<Worker> = (0..concurrency)
            .map(|w| Worker {
                pool: self.pool_of_pair[(w % pairs) as usize],
                connected: false,
                in_request: false,
                attempt: 0,
            })
            .collect();
        let mut heap: BinaryHeap<Reverse<(u64, u32)>> =
            (0..concurrency).map(|w| Reverse((0, w))).collect();
        let client_first = self.workload.policy == ConnectionPolicy::ClientCloses;
        let keep_alive = self.workload.policy == ConnectionPolicy::KeepAlive;
        loop {
            let Some(mut top) = heap.peek_mut() else {
                break;
            };
            let Reverse((t, w)) = *top;
            let worker = &mut workers[w as usize];
            if !worker.in_request && (self.budget == 0 || t >= self.end) {
                std::collections::binary_heap::PeekMut::pop(top);
                continue;
            }
            if t >= self.end {
                // A request still in flight at the end: the run stops here.
                break;
            }
            self.advance(t);
            if worker.in_request {
                self.events += 1;
                worker.in_request = false;
                if !keep_alive {
                    worker.connected = false;
                    self.ports.release(worker.pool, t, client_first);
                }
                if self.budget == 0 {
                    std::collections::binary_heap::PeekMut::pop(top);
                    continue;
                }
            }
            if worker.connected || self.ports.acquire(worker.pool, t) {
                if !worker.connected {
                    self.totals.connects += 1;
                    worker.connected = true;
                }
                worker.in_request = true;
                worker.attempt = 0;
                self.count_success();
                *top = Reverse((t + self.latency.sample(&mut self.rng), w));
                continue;
            }
            // EADDRNOTAVAIL: returned synchronously by connect() (research §1.5).
            let pool = worker.pool;
            let mut attempt = worker.attempt;
            std::collections::binary_heap::PeekMut::pop(top);
            let next_other = heap.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
            let next = self.fail_closed(t, pool, &mut attempt, next_other);
            workers[w as usize].attempt = attempt;
            heap.push(Reverse((next, w)));
        }
    }

    /// A closed-loop worker failed at `t` on `pool`. Counts that failure and, when the worker
    /// would retry at once, every further failure until something could change the pool;
    /// returns the time of the worker's next attempt.
    fn fail_closed(&mut self, t: u64, pool: u32, attempt: &mut u32, next_other: u64) -> u64 {
        let retry = self.workload.retry;
        let f = self.failed_connect_ns;
        let m = u64::from(retry.retries) + 1;
        if !retry.backoff.is_zero() && *attempt < retry.retries {
            self.count_failures(t, f, 1);
            *attempt += 1;
            return t + f + duration_ns(retry.backoff_before(*attempt));
        }
        if !retry.backoff.is_zero() {
            // Last attempt of a request with backoff: the next request starts after f.
            self.count_failures(t, f, 1);
            self.totals.requests_failed += 1;
            *attempt = 0;
            return t + f;
        }
        // No backoff: the worker fails every f until the pool can change.
        let stop = next_other.min(self.ports.next_change(pool)).min(self.end);
        let k = stop.saturating_sub(t).div_ceil(f).max(1).min(self.budget);
        self.count_failures(t, f, k);
        let a = u64::from(*attempt);
        self.totals.requests_failed += (a + k) / m;
        *attempt = ((a + k) % m) as u32;
        t + k * f
    }

    fn run_open(&mut self, rate_per_sec: f64, poisson: bool) {
        let pairs = u64::from(self.workload.pairs());
        let mean_gap = 1e9 / rate_per_sec;
        let client_first = self.workload.policy == ConnectionPolicy::ClientCloses;
        let keep_alive = self.workload.policy == ConnectionPolicy::KeepAlive;
        let mut idle = vec![0u32; pairs as usize];
        let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
        let mut arrivals = 0u64;
        let mut next_arrival = 0u64;
        loop {
            let heap_next = heap.peek().map(|Reverse(e)| *e);
            let take_arrival = self.budget > 0
                && next_arrival < self.end
                && heap_next.is_none_or(|(t, _)| next_arrival <= t);
            if take_arrival {
                let t = next_arrival;
                self.advance(t);
                let pair = (arrivals % pairs) as u32;
                arrivals += 1;
                next_arrival = if poisson {
                    t + self.rng.exponential_ns(mean_gap)
                } else {
                    (arrivals as f64 * mean_gap) as u64
                };
                self.attempt_open(t, pair, 0, &mut idle, &mut heap);
                continue;
            }
            let Some((t, payload)) = heap_next else { break };
            if t >= self.end {
                break;
            }
            heap.pop();
            self.advance(t);
            let pair = (payload & u64::from(u32::MAX)) as u32;
            if payload & RETRY_BIT != 0 {
                if self.budget > 0 {
                    let attempt = ((payload & !RETRY_BIT) >> 32) as u32;
                    self.attempt_open(t, pair, attempt, &mut idle, &mut heap);
                }
                continue;
            }
            self.events += 1;
            if keep_alive {
                idle[pair as usize] += 1;
            } else {
                let pool = self.pool_of_pair[pair as usize];
                self.ports.release(pool, t, client_first);
            }
        }
    }

    fn attempt_open(
        &mut self,
        t: u64,
        pair: u32,
        attempt: u32,
        idle: &mut [u32],
        heap: &mut BinaryHeap<Reverse<(u64, u64)>>,
    ) {
        let pool = self.pool_of_pair[pair as usize];
        let reused = idle[pair as usize] > 0;
        if reused {
            idle[pair as usize] -= 1;
        }
        if reused || self.ports.acquire(pool, t) {
            if !reused {
                self.totals.connects += 1;
            }
            self.count_success();
            let done = t + self.latency.sample(&mut self.rng);
            heap.push(Reverse((done, u64::from(pair))));
            return;
        }
        self.count_failures(t, self.failed_connect_ns, 1);
        if attempt < self.workload.retry.retries {
            let next = attempt + 1;
            let at =
                t + self.failed_connect_ns + duration_ns(self.workload.retry.backoff_before(next));
            heap.push(Reverse((
                at,
                RETRY_BIT | u64::from(next) << 32 | u64::from(pair),
            )));
        } else {
            self.totals.requests_failed += 1;
        }
    }

    fn finish(mut self) -> SimReport {
        // A run ends when its attempts are used up (then at its last event) or at its duration;
        // without either it stopped at MAX_SIMULATED.
        let by_attempts = self.budget == 0 || self.workload.limit.duration.is_none();
        let end = if by_attempts { self.now } else { self.end };
        let truncated = self.budget > 0 && self.workload.limit.duration.is_none();
        self.timeline.roll_to(end, &mut self.ports);
        let second_started = self.timeline.next_boundary - NS_PER_SEC;
        if end > second_started
            || self.timeline.current.attempts > 0
            || self.timeline.samples.is_empty()
        {
            self.timeline.close_second(end, &mut self.ports);
        }
        let totals = Totals {
            time_wait_recycled: self.ports.recycled,
            time_wait_overflow: self.ports.overflow,
            time_wait_evicted: self.ports.evicted,
            ..self.totals
        };
        SimReport {
            seed: self.seed,
            pools: self.ports.pools.len() as u32,
            ports_per_pool: self.ports.ports_per_pool,
            failure_fraction: if totals.attempts == 0 {
                0.0
            } else {
                totals.addr_not_available as f64 / totals.attempts as f64
            },
            totals,
            first_failure_secs: self.first_failure.map(|t| t as f64 / 1e9),
            peak_time_wait: self.ports.peak_time_wait,
            peak_pool_in_use: self.ports.peak_pool_in_use,
            elapsed_secs: end as f64 / 1e9,
            events: self.events,
            truncated,
            failed_connect_us: self.failed_connect_ns as f64 / 1e3,
            timeline: self.timeline.samples,
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
