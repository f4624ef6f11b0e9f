//! The engine: N OS threads, each with a current-thread tokio runtime and its own connections,
//! statistics and timeline bucket (no locks shared between threads). A thread's share of `-n`
//! is a plain counter that its connection tasks draw from, so every request slot is taken
//! exactly once and ends as a success, a classified failure, or (duration mode only) a
//! cancellation at the deadline. The calling thread merges the per-second buckets as they
//! arrive and calls the progress callback.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

use crate::breaker::{Admission, CircuitBreaker};
use crate::config::{ConnectionPolicy, Plan, RateLimit};
use crate::error::{ErrorClass, Phase};
use crate::http::{Response, ResponseParser, Step};
use crate::report::{self, LoadReport, TimelineSecond};
use crate::stats::{SecondBucket, Stats, MAX_LATENCY_US};

mod http2;
mod uring;

/// Read buffer per connection slot; a response head must fit in it.
const READ_BUF: usize = 16 * 1024;
/// Completions between two updates of the shared progress counters (a power of two).
const PROGRESS_BATCH: u64 = 64;
/// A connect this slow had its SYN (or SYN-ACK) retransmitted: the initial RTO is 1 s
/// (RFC 6298 §2; Linux TCP_TIMEOUT_INIT).
const SLOW_CONNECT_US: u64 = 1_000_000;
/// How often the calling thread wakes to merge the timeline and report progress.
const TICK: Duration = Duration::from_millis(100);
/// How often the calling thread drains per-request records (`-o csv`).
const RECORD_POLL: Duration = Duration::from_millis(5);

/// Records sent per batch to the caller of [`run_with_records`].
const RECORD_BATCH: usize = 256;
/// Batches in flight between engine threads and the caller before the engine threads wait
/// (streamed output: memory stays bounded whatever the run's length).
const RECORD_QUEUE: usize = 64;

/// Timings of one successful request, as hey's `-o csv` prints them (µs). A request that
/// reused a kept-alive connection has `connect_us = 0`. DNS is resolved once before the run,
/// so there is no per-request DNS time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request started, µs since the start of the run (hey's `offset`).
    pub offset_us: u64,
    /// Whole request, from its (intended) start to the last body byte (hey's `response-time`).
    pub total_us: u64,
    /// TCP connect (+ proxy tunnel + TLS handshake) when the request opened its connection
    /// (hey's `DNS+dialup`).
    pub connect_us: u64,
    /// Writing the request (hey's `Request-write`).
    pub write_us: u64,
    /// From the request written to the first response byte (hey's `Response-delay`).
    pub delay_us: u64,
    /// From the first response byte to the last (hey's `Response-read`).
    pub read_us: u64,
    /// HTTP status code.
    pub status: u16,
}

/// Instants of one attempt, filled only when records are asked for.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    connect_us: u64,
    sent_at: Option<Instant>,
    wrote_at: Option<Instant>,
    first_byte_at: Option<Instant>,
}

/// Live counters for a progress display, summed over threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Requests finished (succeeded + failed) so far.
    pub done: u64,
    /// Of which failed.
    pub failed: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

/// Why the engine could not run at all (failures of requests are never errors: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A thread or its runtime could not be created.
    #[error("starting engine thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    /// `--engine uring` (or `PORTLAB_ENGINE=uring`) but no io_uring instance could be set up
    /// (`/proc/sys/kernel/io_uring_disabled`, a seccomp filter, or a kernel older than 5.11).
    #[error(
        "--engine uring: cannot set up an io_uring instance ({0}); use --engine auto or tokio"
    )]
    Ring(#[source] std::io::Error),
    /// An engine thread panicked (a bug).
    #[error("an engine thread stopped unexpectedly")]
    WorkerPanicked,
}

/// Runs the load described by `plan`, calling `on_progress` about ten times a second from the
/// calling thread, and returns the report.
///
/// # Errors
/// [`LoadError`] when the engine cannot start; request failures are counted in the report.
pub fn run(plan: &Plan, on_progress: &mut dyn FnMut(&Progress)) -> Result<LoadReport, LoadError> {
    run_inner(plan, on_progress, None)
}

/// [`run`], also calling `on_requests` from the calling thread with the timings of every
/// successful request, in batches as they finish (hey's `-o csv`). Engine threads wait when
/// the caller falls behind by more than a few thousand records, so memory stays bounded.
///
/// # Errors
/// As [`run`].
pub fn run_with_records(
    plan: &Plan,
    on_progress: &mut dyn FnMut(&Progress),
    on_requests: &mut dyn FnMut(&[RequestRecord]),
) -> Result<LoadReport, LoadError> {
    run_inner(plan, on_progress, Some(on_requests))
}

/// Where [`run_with_records`] hands record batches.
type RecordSink<'a> = &'a mut dyn FnMut(&[RequestRecord]);

fn run_inner(
    plan: &Plan,
    on_progress: &mut dyn FnMut(&Progress),
    mut on_requests: Option<RecordSink<'_>>,
) -> Result<LoadReport, LoadError> {
    let plan = Arc::new(plan.clone());
    let tls = if plan.target.tls {
        Some(
            crate::tls::connector(&plan.target.host, plan.config.insecure, plan.config.http2)
                .map_err(LoadError::Tls)?,
        )
    } else {
        None
    };
    let threads = plan.threads;
    let counters: Arc<Vec<ThreadCounters>> =
        Arc::new((0..threads).map(|_| ThreadCounters::default()).collect());
    let (tx, rx) = mpsc::channel::<Msg>();
    let (records_tx, records_rx) = match on_requests {
        Some(_) => {
            let (t, r) = mpsc::sync_channel::<Vec<RequestRecord>>(RECORD_QUEUE);
            (Some(t), Some(r))
        }
        None => (None, None),
    };
    let (engine, engine_fallback) = uring::choose(&plan).map_err(LoadError::Ring)?;
    let start = Instant::now();
    let started_at = std::time::SystemTime::now();
    let shares = split_shares(&plan, threads);
    let mut handles = Vec::with_capacity(threads);
    for (index, share) in shares.into_iter().enumerate() {
        let setup = ThreadSetup {
            index,
            plan: plan.clone(),
            share,
            tls: tls.clone(),
            start,
            counters: counters.clone(),
            tx: tx.clone(),
            records_tx: records_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("portlab-load-{index}"))
            .spawn(move || match engine {
                Engine::Uring => uring::thread_main(setup),
                Engine::Tokio => thread_main(setup),
            })
            .map_err(LoadError::Spawn)?;
        handles.push(handle);
    }
    drop(tx);
    drop(records_tx);
    // With records, wake often enough that engine threads never wait on a full queue.
    let poll = if records_rx.is_some() {
        RECORD_POLL
    } else {
        TICK
    };
    let mut records = records_rx.as_ref().zip(on_requests.as_mut());
    let mut drain = |block: bool| {
        if let Some((rx, sink)) = records.as_mut() {
            if block {
                // Every sender is dropped when its thread ends: this ends with the threads.
                for batch in rx.iter() {
                    sink(&batch);
                }
            } else {
                for batch in rx.try_iter() {
                    sink(&batch);
                }
            }
        }
    };
    let (stats, timeline) = collect(
        &rx,
        threads,
        start,
        &counters,
        on_progress,
        &mut drain,
        poll,
    );
    drain(true);
    let elapsed = start.elapsed();
    for h in handles {
        h.join()
            .map_err(|_| LoadError::WorkerPanicked)?
            .map_err(LoadError::Spawn)?;
    }
    let stats = stats.ok_or(LoadError::WorkerPanicked)?;
    let mut report = report::build(&plan, &stats, started_at, elapsed, timeline);
    report.settings.engine = engine.name().to_string();
    report.settings.engine_fallback = engine_fallback;
    Ok(report)
}

/// The engine a run's threads use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// [`uring`]: one io_uring per thread, every connection a state machine.
    Uring,
    /// One current-thread tokio runtime per thread, one task per connection.
    Tokio,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Tokio => "tokio",
        }
    }
}

/// Messages from engine threads to the calling thread.
enum Msg {
    /// A finished second of one thread's timeline.
    Second(usize, Box<SecondBucket>),
    /// A thread's final statistics.
    Done(usize, Box<Stats>),
}

/// Per-thread progress counters, padded to a cache line so threads do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ThreadCounters {
    done: AtomicU64,
    failed: AtomicU64,
    finished: AtomicBool,
}

/// A thread's share of the run.
#[derive(Debug, Clone, Copy)]
struct Share {
    connections: usize,
    /// Requests to start; `u64::MAX` in duration mode.
    requests: u64,
    /// `--rate` share of this thread, requests/s.
    global_rate: Option<f64>,
}

/// Splits connections, requests and the global rate over threads in proportion, exactly
/// (the parts add up to the whole).
fn split_shares(plan: &Plan, threads: usize) -> Vec<Share> {
    let c = plan.config.concurrency;
    let n = plan.config.requests;
    let mut out = Vec::with_capacity(threads);
    let mut cum = 0usize;
    for i in 0..threads {
        let conns = c / threads + usize::from(i < c % threads);
        let requests = if plan.config.duration.is_some() {
            u64::MAX
        } else {
            let before = (u128::from(n) * cum as u128 / c as u128) as u64;
            let after = (u128::from(n) * (cum + conns) as u128 / c as u128) as u64;
            after - before
        };
        let global_rate = match plan.config.rate {
            RateLimit::Global { per_sec } => Some(per_sec * conns as f64 / c as f64),
            _ => None,
        };
        cum += conns;
        out.push(Share {
            connections: conns,
            requests,
            global_rate,
        });
    }
    out
}

/// Receives timeline buckets and final stats until every thread is done.
fn collect(
    rx: &mpsc::Receiver<Msg>,
    threads: usize,
    start: Instant,
    counters: &[ThreadCounters],
    on_progress: &mut dyn FnMut(&Progress),
    drain_records: &mut dyn FnMut(bool),
    poll: Duration,
) -> (Option<Stats>, Vec<TimelineSecond>) {
    let mut merger = TimelineMerger::new(threads);
    let mut total: Option<Stats> = None;
    let mut remaining = threads;
    let mut next_tick = std::time::Instant::now() + TICK;
    while remaining > 0 {
        drain_records(false);
        let wait = next_tick.saturating_duration_since(std::time::Instant::now());
        // With records, wake often enough that engine threads never wait on a full queue.
        let wait = wait.min(poll);
        match rx.recv_timeout(wait) {
            Ok(Msg::Second(t, bucket)) => merger.push(t, *bucket),
            Ok(Msg::Done(t, stats)) => {
                merger.thread_done(t);
                remaining -= 1;
                match &mut total {
                    Some(acc) => acc.merge(&stats),
                    None => total = Some(*stats),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every sender is gone: a thread died without sending Done.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if std::time::Instant::now() >= next_tick {
            next_tick += TICK;
            on_progress(&snapshot(counters, start));
        }
    }
    on_progress(&snapshot(counters, start));
    (if remaining == 0 { total } else { None }, merger.finish())
}

fn snapshot(counters: &[ThreadCounters], start: Instant) -> Progress {
    let mut p = Progress {
        elapsed: start.elapsed(),
        ..Progress::default()
    };
    for c in counters {
        p.done += c.done.load(Ordering::Relaxed);
        p.failed += c.failed.load(Ordering::Relaxed);
    }
    p
}

/// Merges per-thread seconds into one timeline. A second is final once every thread still
/// running has sent a later one (each thread sends its seconds in increasing order), so only
/// a few seconds are ever held.
struct TimelineMerger {
    pending: BTreeMap<u64, SecondBucket>,
    latest: Vec<Option<u64>>,
    done: Vec<bool>,
    out: Vec<TimelineSecond>,
}

impl TimelineMerger {
    fn new(threads: usize) -> Self {
        Self {
            pending: BTreeMap::new(),
            latest: vec![None; threads],
            done: vec![false; threads],
            out: Vec::new(),
        }
    }

    fn push(&mut self, thread: usize, bucket: SecondBucket) {
        self.latest[thread] = Some(bucket.second);
        match self.pending.get_mut(&bucket.second) {
            Some(acc) => acc.merge(&bucket),
            None => {
                self.pending.insert(bucket.second, bucket);
            }
        }
        self.release();
    }

    fn thread_done(&mut self, thread: usize) {
        self.done[thread] = true;
        self.release();
    }

    /// Emits every second no running thread can still add to: a thread's sends are strictly
    /// increasing, so a second at or below every running thread's latest send is complete.
    fn release(&mut self) {
        let mut limit = u64::MAX;
        for (latest, done) in self.latest.iter().zip(&self.done) {
            if !done {
                match latest {
                    Some(s) => limit = limit.min(*s),
                    None => return,
                }
            }
        }
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let bucket = entry.remove();
            self.emit(&bucket);
        }
    }

    fn emit(&mut self, bucket: &SecondBucket) {
        let next = self.out.last().map_or(0, |s| s.second + 1);
        for second in next..bucket.second {
            self.out
                .push(TimelineSecond::from_bucket(&SecondBucket::new(second)));
        }
        self.out.push(TimelineSecond::from_bucket(bucket));
    }

    fn finish(mut self) -> Vec<TimelineSecond> {
        while let Some((_, bucket)) = self.pending.pop_first() {
            self.emit(&bucket);
        }
        self.out
    }
}

/// What a thread needs to start.
struct ThreadSetup {
    index: usize,
    plan: Arc<Plan>,
    share: Share,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    start: Instant,
    counters: Arc<Vec<ThreadCounters>>,
    tx: mpsc::Sender<Msg>,
    records_tx: Option<mpsc::SyncSender<Vec<RequestRecord>>>,
}

fn thread_main(setup: ThreadSetup) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let connections = setup.share.connections;
    let worker = Rc::new(Worker::new(setup));
    local.block_on(&rt, async {
        let ticker = tokio::task::spawn_local(ticker(worker.clone()));
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            tasks.push(if worker.plan.config.http2 {
                tokio::task::spawn_local(http2::h2_slot(worker.clone()))
            } else {
                tokio::task::spawn_local(connection_slot(worker.clone()))
            });
        }
        for t in tasks {
            // A panicking task is a bug; its slot's requests would be lost, so surface it.
            if t.await.is_err() {
                worker.panicked.set(true);
            }
        }
        ticker.abort();
    });
    worker.finish();
    Ok(())
}

/// State shared by the connection tasks of one thread (single-threaded: `Cell`/`RefCell`).
struct Worker {
    index: usize,
    plan: Arc<Plan>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    start: Instant,
    deadline: Option<Instant>,
    /// Request slots left to start.
    remaining: Cell<u64>,
    /// Next index of the global (`--rate`) schedule and its interval.
    schedule_next: Cell<u64>,
    schedule_interval_secs: Option<f64>,
    per_worker_interval_secs: Option<f64>,
    source_next: Cell<usize>,
    /// Index in the target's candidates of the address that last connected (tried first).
    preferred_addr: Cell<usize>,
    rng: Cell<u64>,
    stats: RefCell<Stats>,
    bucket: RefCell<SecondBucket>,
    completions: Cell<u64>,
    counters: Arc<Vec<ThreadCounters>>,
    tx: mpsc::Sender<Msg>,
    panicked: Cell<bool>,
    /// `-o csv`: where record batches go, and the batch being filled.
    records_tx: Option<mpsc::SyncSender<Vec<RequestRecord>>>,
    records: RefCell<Vec<RequestRecord>>,
    /// `--circuit-breaker`: this thread's breaker.
    breaker: Option<RefCell<CircuitBreaker>>,
}

/// How one request attempt ended.
enum Attempt {
    Ok(Response, Instant, Timing),
    Failed(Fail),
    /// The run's deadline came first (duration mode).
    Cancelled,
}

/// A classified failure.
#[derive(Debug, Clone, Copy)]
struct Fail {
    class: ErrorClass,
    phase: Phase,
}

impl Fail {
    fn io(err: &std::io::Error, phase: Phase) -> Self {
        Self {
            class: ErrorClass::from_io(err),
            phase,
        }
    }
    fn protocol(phase: Phase) -> Self {
        Self {
            class: ErrorClass::Protocol,
            phase,
        }
    }
}

/// A live connection.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The read buffer of a connection slot, reused across connections and requests.
struct ReadBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Worker {
    fn new(s: ThreadSetup) -> Self {
        let c = &s.plan.config;
        let per_worker_interval_secs = match c.rate {
            RateLimit::PerWorker { per_sec } => Some(1.0 / per_sec),
            _ => None,
        };
        let deadline = c.duration.map(|d| s.start + d);
        let breaker = c
            .circuit_breaker
            .map(|b| RefCell::new(CircuitBreaker::new(b)));
        Self {
            index: s.index,
            schedule_interval_secs: s.share.global_rate.map(|r| 1.0 / r),
            per_worker_interval_secs,
            deadline,
            remaining: Cell::new(s.share.requests),
            schedule_next: Cell::new(0),
            source_next: Cell::new(s.index),
            preferred_addr: Cell::new(0),
            rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ (s.index as u64 + 1)),
            stats: RefCell::new(Stats::new()),
            bucket: RefCell::new(SecondBucket::new(0)),
            completions: Cell::new(0),
            start: s.start,
            plan: s.plan,
            tls: s.tls,
            counters: s.counters,
            tx: s.tx,
            panicked: Cell::new(false),
            records: RefCell::new(if s.records_tx.is_some() {
                Vec::with_capacity(RECORD_BATCH)
            } else {
                Vec::new()
            }),
            records_tx: s.records_tx,
            breaker,
        }
    }

    /// Takes the next request slot and waits for its send time. Returns the intended start
    /// time for `--rate` (latency is measured from it), `Some(None)` otherwise, or `None`
    /// when the run is over for this connection.
    async fn next_request(&self, own_next: &mut u64) -> Option<Option<Instant>> {
        match self.take_next(own_next)? {
            None => Some(None),
            Some((when, corrected)) => {
                if when > Instant::now() {
                    tokio::time::sleep_until(when).await;
                }
                Some(corrected.then_some(when))
            }
        }
    }

    /// Takes the next request slot without waiting: `None` when the run is over for this
    /// connection; `Some(None)` to send at once; `Some(Some((when, corrected)))` to send at
    /// `when` (paced), latency measured from `when` if `corrected` (`--rate`).
    fn take_next(&self, own_next: &mut u64) -> Option<Option<(Instant, bool)>> {
        self.take_next_at(Instant::now(), own_next)
    }

    /// [`Worker::take_next`] with the clock already read.
    fn take_next_at(&self, now: Instant, own_next: &mut u64) -> Option<Option<(Instant, bool)>> {
        let left = self.remaining.get();
        if left == 0 {
            return None;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        let (when, corrected) = if let Some(interval) = self.schedule_interval_secs {
            let k = self.schedule_next.get();
            self.schedule_next.set(k + 1);
            (
                self.start + Duration::from_secs_f64(k as f64 * interval),
                true,
            )
        } else if let Some(interval) = self.per_worker_interval_secs {
            let k = *own_next;
            *own_next += 1;
            (
                self.start + Duration::from_secs_f64(k as f64 * interval),
                false,
            )
        } else {
            self.take_slot(left);
            return Some(None);
        };
        if self.deadline.is_some_and(|d| when >= d) {
            return None;
        }
        self.take_slot(left);
        Some(Some((when, corrected)))
    }

    fn take_slot(&self, left: u64) {
        if self.deadline.is_none() {
            self.remaining.set(left - 1);
        }
    }

    /// The earlier of `now + timeout` and the run deadline, and whether the deadline is it.
    fn limit(&self, timeout: Duration) -> (Instant, bool) {
        self.limit_at(Instant::now(), timeout)
    }

    /// [`Worker::limit`] from `now`.
    fn limit_at(&self, now: Instant, timeout: Duration) -> (Instant, bool) {
        let t = now + timeout;
        match self.deadline {
            Some(d) if d <= t => (d, true),
            _ => (t, false),
        }
    }

    /// One attempt: connect if needed, send, read the response, apply the connection policy.
    async fn attempt(&self, conn: &mut Option<Conn>, io: &mut ReadBuf) -> Attempt {
        let reused = conn.is_some();
        let mut timing = Timing::default();
        let record = self.records_tx.is_some();
        if !reused {
            let began = record.then(Instant::now);
            match self.connect().await {
                Ok(c) => *conn = Some(c),
                Err(a) => return a,
            }
            if let Some(b) = began {
                timing.connect_us = b.elapsed().as_micros() as u64;
            }
        }
        if record {
            timing.sent_at = Some(Instant::now());
        }
        let timing_ref = record.then_some(&mut timing);
        let Some(c) = conn.as_mut() else {
            return Attempt::Failed(Fail::protocol(Phase::Connect));
        };
        {
            let mut s = self.stats.borrow_mut();
            if reused {
                s.requests_on_reused_connection += 1;
            } else {
                s.requests_on_new_connection += 1;
            }
        }
        let (limit, is_deadline) = self.limit(self.plan.config.request_timeout);
        let result = match c {
            Conn::Plain(s) => {
                timeout_at(
                    limit,
                    exchange(
                        s,
                        &self.plan.request,
                        io,
                        self.plan.head_request,
                        timing_ref,
                    ),
                )
                .await
            }
            Conn::Tls(s) => {
                let req = &self.plan.request;
                timeout_at(
                    limit,
                    exchange(&mut **s, req, io, self.plan.head_request, timing_ref),
                )
                .await
            }
        };
        match result {
            Err(_) => {
                *conn = None;
                if is_deadline {
                    Attempt::Cancelled
                } else {
                    Attempt::Failed(Fail {
                        class: ErrorClass::ResponseTimeout,
                        phase: Phase::Read,
                    })
                }
            }
            Ok(Err(fail)) => {
                *conn = None;
                Attempt::Failed(fail)
            }
            Ok(Ok(resp)) => {
                let done_at = Instant::now();
                self.after_response(conn, io, resp).await;
                Attempt::Ok(resp, done_at, timing)
            }
        }
    }

    /// Applies the connection policy once a response is complete.
    async fn after_response(&self, conn: &mut Option<Conn>, io: &mut ReadBuf, resp: Response) {
        if let Some(hold) = self.plan.config.hold {
            // `--hold`: the connection stays open (idle) before the policy closes or reuses it.
            let (until, _) = self.limit(hold);
            tokio::time::sleep_until(until).await;
        }
        let leftover = io.end > io.start;
        let policy = self.plan.config.policy;
        let server_closes = !resp.reusable;
        if policy == ConnectionPolicy::KeepAlive && resp.reusable && !leftover {
            return;
        }
        if policy == ConnectionPolicy::ServerCloses && server_closes {
            // Wait for the server's FIN so that the server is the active closer and holds
            // TIME_WAIT; a server that never closes is given up on at the request timeout.
            if let Some(c) = conn.as_mut() {
                let (limit, _) = self.limit(self.plan.config.request_timeout);
                let _ = timeout_at(limit, c.wait_for_fin(io)).await;
            }
        }
        // Plain close(): FIN, not RST (no SO_LINGER 0), so a client that closes first goes
        // through TIME_WAIT as real applications do.
        *conn = None;
        let mut s = self.stats.borrow_mut();
        if server_closes {
            s.closed_by_server += 1;
        } else {
            // `drop`, or a server that ignored `Connection: close`, or unsolicited bytes after
            // the response: the client closes first.
            s.closed_by_client += 1;
        }
    }

    /// Opens a connection (with `--source-ip` binding and TLS when asked), bounded by the
    /// connect timeout (per address) and the run deadline. A TCP connect that fails moves on
    /// to the target's next address in dial order (RFC 8305 §4), each outcome counted for its
    /// address; the request fails only when every address failed (with the last class), or at
    /// once when the failure is local and would hit every address alike (descriptors, memory).
    async fn connect(&self) -> Result<Conn, Attempt> {
        let began = Instant::now();
        let fail = |e: &std::io::Error| Attempt::Failed(Fail::io(e, Phase::Connect));
        let candidates = self.plan.target.candidates();
        let first = self.preferred_addr.get() % candidates.len().max(1);
        let mut last = ErrorClass::Other(0);
        let mut connected = None;
        let (mut limit, mut is_deadline) = self.limit(self.plan.config.connect_timeout);
        for k in 0..candidates.len() {
            let index = (first + k) % candidates.len();
            let addr = candidates[index];
            let socket = self.new_socket(addr).map_err(|e| fail(&e))?;
            (limit, is_deadline) = self.limit(self.plan.config.connect_timeout);
            let class = match timeout_at(limit, socket.connect(addr)).await {
                Err(_) if is_deadline => return Err(Attempt::Cancelled),
                Err(_) => ErrorClass::ConnectTimeout,
                Ok(Err(e)) => ErrorClass::from_io(&e),
                Ok(Ok(s)) => {
                    self.preferred_addr.set(index);
                    self.stats.borrow_mut().address(index).connects += 1;
                    connected = Some(s);
                    break;
                }
            };
            last = class;
            if self.stats.borrow_mut().address(index).connect_failed(class) {
                break;
            }
        }
        let timed_out = || {
            if is_deadline {
                Attempt::Cancelled
            } else {
                Attempt::Failed(Fail {
                    class: ErrorClass::ConnectTimeout,
                    phase: Phase::Connect,
                })
            }
        };
        let Some(mut stream) = connected else {
            return Err(Attempt::Failed(Fail {
                class: last,
                phase: Phase::Connect,
            }));
        };
        if self.plan.target.proxy.as_ref().is_some_and(|p| p.tunnel) {
            match timeout_at(limit, open_tunnel(&mut stream, &self.plan.target)).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(TunnelError::Io(e))) => return Err(fail(&e)),
                Ok(Err(TunnelError::Refused(status))) => {
                    *self
                        .stats
                        .borrow_mut()
                        .proxy_refused_status
                        .entry(status)
                        .or_default() += 1;
                    return Err(Attempt::Failed(Fail {
                        class: ErrorClass::ProxyRefused,
                        phase: Phase::Connect,
                    }));
                }
                Ok(Ok(())) => {}
            }
        }
        let conn = match &self.tls {
            None => Conn::Plain(stream),
            Some((connector, name)) => {
                let _ = stream.set_nodelay(true);
                match timeout_at(limit, connector.connect(name.clone(), stream)).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(e)) => {
                        let class = match ErrorClass::from_io(&e) {
                            ErrorClass::Other(0) | ErrorClass::Protocol => ErrorClass::Tls,
                            c => c,
                        };
                        return Err(Attempt::Failed(Fail {
                            class,
                            phase: Phase::Connect,
                        }));
                    }
                    Ok(Ok(s)) => Conn::Tls(Box::new(s)),
                }
            }
        };
        let micros = clamp_us(began.elapsed());
        let mut s = self.stats.borrow_mut();
        s.connections_opened += 1;
        s.slow_connects += u64::from(micros >= SLOW_CONNECT_US);
        let _ = s.connect.record(micros);
        drop(s);
        self.bucket_for(Instant::now()).new_connections += 1;
        Ok(conn)
    }

    /// A non-blocking TCP socket; with `--source-ip`, bound to the next address round-robin
    /// with IP_BIND_ADDRESS_NO_PORT so the port is still chosen at connect() per 4-tuple
    /// (net/ipv4/inet_hashtables.c: a port bound early is exclusive to the local address).
    fn new_socket(&self, target: SocketAddr) -> std::io::Result<TcpSocket> {
        let ips = &self.plan.config.source_ips;
        if ips.is_empty() {
            return if target.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            };
        }
        let i = self.source_next.get();
        self.source_next.set(i.wrapping_add(1));
        let ip = ips[i % ips.len()];
        let domain = socket2::Domain::for_address(target);
        let socket = socket2::Socket::new(
            domain,
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(ip, 0).into())?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }

    /// Sleeps the backoff before retry number `retry` (1-based): base · 2^(retry−1), jittered to
    /// 50–100 %. Returns `false` when the run deadline comes first.
    async fn backoff(&self, retry: u32) -> bool {
        match self.backoff_until(retry) {
            Ok(wake) => {
                tokio::time::sleep_until(wake).await;
                true
            }
            Err(deadline) => {
                tokio::time::sleep_until(deadline).await;
                false
            }
        }
    }

    /// When the backoff before retry number `retry` (1-based) ends: `Ok(wake)`, or
    /// `Err(run deadline)` when the deadline comes first (the request is then cancelled there).
    fn backoff_until(&self, retry: u32) -> Result<Instant, Instant> {
        let base = self.plan.config.backoff.as_secs_f64()
            * 2f64.powi(retry.saturating_sub(1).min(30) as i32);
        let jitter = 0.5 + 0.5 * self.next_random();
        let wake = Instant::now() + Duration::from_secs_f64((base * jitter).min(3600.0));
        match self.deadline {
            Some(d) if wake >= d => Err(d),
            _ => Ok(wake),
        }
    }

    /// xorshift64*: cheap jitter, no shared state.
    fn next_random(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The timeline bucket for the second containing `now`, flushing the previous one.
    fn bucket_for(&self, now: Instant) -> std::cell::RefMut<'_, SecondBucket> {
        let second = now.saturating_duration_since(self.start).as_secs();
        self.flush_to(second);
        self.bucket.borrow_mut()
    }

    /// Sends the current bucket if it is older than `second`.
    fn flush_to(&self, second: u64) {
        let mut b = self.bucket.borrow_mut();
        if b.second < second {
            let old = std::mem::replace(&mut *b, SecondBucket::new(second));
            // The receiver lives until every thread is done; a failed send means it is gone.
            let _ = self.tx.send(Msg::Second(self.index, Box::new(old)));
        }
    }

    fn record_ok(&self, began: Instant, resp: Response, done_at: Instant, retried: bool) {
        let micros = clamp_us(done_at.saturating_duration_since(began));
        {
            let mut s = self.stats.borrow_mut();
            s.succeeded += 1;
            s.retry_succeeded += u64::from(retried);
            s.body_bytes += resp.body_bytes;
            s.count_status(resp.status);
            let _ = s.latency.record(micros);
        }
        {
            let mut b = self.bucket_for(done_at);
            b.succeeded += 1;
            let _ = b.latency.record(micros);
        }
        self.completed();
    }

    /// `-o csv`: keeps the request's timings, sending a full batch to the caller.
    fn record_request(&self, began: Instant, resp: &Response, done_at: Instant, t: &Timing) {
        let Some(tx) = &self.records_tx else { return };
        let us = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_micros() as u64,
            _ => 0,
        };
        let rec = RequestRecord {
            offset_us: began.saturating_duration_since(self.start).as_micros() as u64,
            total_us: done_at.saturating_duration_since(began).as_micros() as u64,
            connect_us: t.connect_us,
            write_us: us(t.sent_at, t.wrote_at),
            delay_us: us(t.wrote_at, t.first_byte_at),
            read_us: us(t.first_byte_at, Some(done_at)),
            status: resp.status,
        };
        let mut batch = self.records.borrow_mut();
        batch.push(rec);
        if batch.len() >= RECORD_BATCH {
            let full = std::mem::replace(&mut *batch, Vec::with_capacity(RECORD_BATCH));
            // Blocks while the caller is behind (bounded memory); an error means it is gone.
            let _ = tx.send(full);
        }
    }

    fn record_failure(&self, fail: Fail) {
        let now = Instant::now();
        {
            let mut s = self.stats.borrow_mut();
            s.failed += 1;
            s.errors.add(fail.class, fail.phase);
            let at_us = clamp_us(now.saturating_duration_since(self.start));
            s.errors.note_time(fail.class, at_us);
        }
        {
            let mut b = self.bucket_for(now);
            b.failed += 1;
            *b.errors.entry(fail.class).or_default() += 1;
        }
        self.completed();
    }

    fn record_retried(&self, fail: Fail) {
        let mut s = self.stats.borrow_mut();
        s.retry_attempts += 1;
        s.retried_errors.add(fail.class, fail.phase);
    }

    /// Asks the breaker (if any) for an attempt now.
    fn admit(&self) -> Option<Admission> {
        self.breaker
            .as_ref()
            .map(|b| b.borrow_mut().admit(std::time::Instant::now()))
    }

    /// Tells the breaker how an attempt it admitted ended.
    fn breaker_record(&self, admission: Option<Admission>, success: bool) {
        if let (Some(b), Some(a)) = (&self.breaker, admission) {
            b.borrow_mut().record(std::time::Instant::now(), a, success);
        }
    }

    /// A request refused by the breaker: counted apart from failures, no network attempt.
    fn record_short_circuited(&self) {
        self.stats.borrow_mut().short_circuited += 1;
        self.completed();
    }

    fn record_cancelled(&self) {
        self.stats.borrow_mut().cancelled_at_deadline += 1;
    }

    /// Publishes progress every [`PROGRESS_BATCH`] completions.
    fn completed(&self) {
        let n = self.completions.get() + 1;
        self.completions.set(n);
        if n & (PROGRESS_BATCH - 1) == 0 {
            self.publish();
        }
    }

    fn publish(&self) {
        let s = self.stats.borrow();
        let c = &self.counters[self.index];
        c.done.store(
            s.succeeded + s.failed + s.short_circuited,
            Ordering::Relaxed,
        );
        c.failed.store(s.failed, Ordering::Relaxed);
    }

    /// Sends the last bucket and the thread's statistics.
    fn finish(&self) {
        self.publish();
        if let Some(tx) = &self.records_tx {
            let rest = std::mem::take(&mut *self.records.borrow_mut());
            if !rest.is_empty() {
                let _ = tx.send(rest);
            }
        }
        self.counters[self.index]
            .finished
            .store(true, Ordering::Relaxed);
        let last = std::mem::replace(&mut *self.bucket.borrow_mut(), SecondBucket::new(0));
        let _ = self.tx.send(Msg::Second(self.index, Box::new(last)));
        if !self.panicked.get() {
            let mut stats = std::mem::replace(&mut *self.stats.borrow_mut(), Stats::new());
            if let Some(b) = &self.breaker {
                stats.breaker = b.borrow().counters();
            }
            let _ = self.tx.send(Msg::Done(self.index, Box::new(stats)));
        }
    }
}

/// Publishes progress and closes timeline seconds while the connections work.
async fn ticker(w: Rc<Worker>) {
    let mut next = w.start + Duration::from_millis(250);
    loop {
        tokio::time::sleep_until(next).await;
        next += Duration::from_millis(250);
        w.publish();
        w.flush_to(Instant::now().saturating_duration_since(w.start).as_secs());
    }
}

/// One connection slot (a hey "worker"): sends requests one after another on its connection,
/// reconnecting as the policy or failures require, until the slots of its thread run out.
async fn connection_slot(w: Rc<Worker>) {
    let mut io = ReadBuf {
        buf: vec![0; READ_BUF].into_boxed_slice(),
        start: 0,
        end: 0,
    };
    let mut conn: Option<Conn> = None;
    let mut own_next = 0u64;
    let retries = w.plan.config.retries;
    while let Some(intended) = w.next_request(&mut own_next).await {
        let began = intended.unwrap_or_else(Instant::now);
        let mut retry = 0u32;
        loop {
            let admission = w.admit();
            if admission == Some(Admission::ShortCircuited) {
                w.record_short_circuited();
                // Refusing takes no time: let the other connections and the ticker run.
                tokio::task::yield_now().await;
                break;
            }
            match w.attempt(&mut conn, &mut io).await {
                Attempt::Ok(resp, done_at, timing) => {
                    w.breaker_record(admission, true);
                    w.record_ok(began, resp, done_at, retry > 0);
                    w.record_request(began, &resp, done_at, &timing);
                    break;
                }
                Attempt::Cancelled => {
                    w.record_cancelled();
                    return;
                }
                Attempt::Failed(fail) if retry < retries => {
                    w.breaker_record(admission, false);
                    w.record_retried(fail);
                    retry += 1;
                    if !w.backoff(retry).await {
                        w.record_cancelled();
                        return;
                    }
                }
                Attempt::Failed(fail) => {
                    w.breaker_record(admission, false);
                    w.record_failure(fail);
                    break;
                }
            }
        }
    }
}

impl Conn {
    /// Policy `close`: reads (and discards) until the server's FIN, so the server closes first.
    async fn wait_for_fin(&mut self, io: &mut ReadBuf) {
        loop {
            let n = match self {
                Conn::Plain(s) => s.read(&mut io.buf[..]).await,
                Conn::Tls(s) => s.read(&mut io.buf[..]).await,
            };
            if !matches!(n, Ok(1..)) {
                return;
            }
        }
    }
}

/// Why a CONNECT tunnel could not be opened.
enum TunnelError {
    Io(std::io::Error),
    /// The proxy's status (0: not an HTTP answer, or it closed first).
    Refused(u16),
}

/// Largest CONNECT answer head we read from a proxy.
const MAX_TUNNEL_HEAD: usize = 8 * 1024;

/// Opens a tunnel through an HTTP proxy: `CONNECT host:port` (RFC 9110 §9.3.6), then reads the
/// answer head; any 2xx means the connection now carries bytes to the target. The target
/// sends nothing before the TLS client speaks, so whatever arrives is the proxy's answer; bytes
/// after its head are a protocol error (status 0).
async fn open_tunnel(
    stream: &mut TcpStream,
    target: &crate::config::Target,
) -> Result<(), TunnelError> {
    let authority = target.authority();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(TunnelError::Io)?;
    let mut head = [0u8; MAX_TUNNEL_HEAD];
    let mut len = 0;
    loop {
        if len == head.len() {
            return Err(TunnelError::Refused(0));
        }
        match stream.read(&mut head[len..]).await {
            Ok(0) => return Err(TunnelError::Refused(0)),
            Ok(n) => len += n,
            Err(e) => return Err(TunnelError::Io(e)),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&head[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(end)) => {
                return match parsed.code {
                    Some(200..=299) if end == len => Ok(()),
                    Some(200..=299) | None => Err(TunnelError::Refused(0)),
                    Some(code) => Err(TunnelError::Refused(code)),
                };
            }
            Err(_) => return Err(TunnelError::Refused(0)),
        }
    }
}

/// Writes the request and reads one complete response.
async fn exchange<S>(
    s: &mut S,
    request: &[u8],
    io: &mut ReadBuf,
    head_request: bool,
    mut timing: Option<&mut Timing>,
) -> Result<Response, Fail>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(request)
        .await
        .map_err(|e| Fail::io(&e, Phase::Write))?;
    s.flush().await.map_err(|e| Fail::io(&e, Phase::Write))?;
    if let Some(t) = timing.as_deref_mut() {
        t.wrote_at = Some(Instant::now());
    }
    io.start = 0;
    io.end = 0;
    let mut parser = ResponseParser::new(head_request);
    loop {
        if io.end == io.buf.len() {
            if io.start == 0 {
                return Err(Fail::protocol(Phase::Read)); // head larger than the buffer
            }
            io.buf.copy_within(io.start..io.end, 0);
            io.end -= io.start;
            io.start = 0;
        }
        let n = s
            .read(&mut io.buf[io.end..])
            .await
            .map_err(|e| Fail::io(&e, Phase::Read))?;
        if n == 0 {
            return parser.finish_at_eof().ok_or(Fail::protocol(Phase::Read));
        }
        if let Some(t) = timing.as_deref_mut() {
            t.first_byte_at.get_or_insert_with(Instant::now);
        }
        io.end += n;
        match parser
            .feed(&io.buf[io.start..io.end])
            .map_err(|_| Fail::protocol(Phase::Read))?
        {
            Step::NeedMore { consumed } => {
                io.start += consumed;
                if io.start == io.end {
                    io.start = 0;
                    io.end = 0;
                }
            }
            Step::Done { consumed, response } => {
                io.start += consumed;
                return Ok(response);
            }
        }
    }
}

fn clamp_us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}

/// Sets IP_BIND_ADDRESS_NO_PORT (Linux ≥ 4.2, include/uapi/linux/in.h: 24).
fn set_bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd owned by `socket`, pointer to a live c_int of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadConfig;

    fn plan(requests: u64, concurrency: usize, rate: RateLimit) -> Plan {
        LoadConfig {
            url: "http://127.0.0.1:9/".into(),
            requests,
            concurrency,
            threads: 3,
            rate,
            ..LoadConfig::default()
        }
        .validate()
        .expect("valid")
    }

    #[test]
    fn shares_add_up_exactly() {
        for (n, c) in [(1000, 50), (7, 7), (1001, 10), (10_000_000, 3), (5, 4)] {
            let p = plan(n, c, RateLimit::Global { per_sec: 999.0 });
            let shares = split_shares(&p, p.threads);
            assert_eq!(
                shares.iter().map(|s| s.requests).sum::<u64>(),
                n,
                "n={n} c={c}"
            );
            assert_eq!(shares.iter().map(|s| s.connections).sum::<usize>(), c);
            let rate: f64 = shares.iter().filter_map(|s| s.global_rate).sum();
            assert!((rate - 999.0).abs() < 1e-6);
            assert!(shares.iter().all(|s| s.requests >= s.connections as u64));
        }
    }

    fn bucket(second: u64, succeeded: u64) -> SecondBucket {
        let mut b = SecondBucket::new(second);
        b.succeeded = succeeded;
        b
    }

    #[test]
    fn timeline_merges_threads_and_fills_gaps() {
        let mut m = TimelineMerger::new(2);
        m.push(0, bucket(0, 5));
        assert!(m.out.is_empty(), "thread 1 has not reported second 0 yet");
        m.push(1, bucket(0, 7));
        assert_eq!(m.out.len(), 1);
        assert_eq!(m.out[0].succeeded, 12);
        m.push(0, bucket(3, 1)); // thread 0 was idle in seconds 1 and 2
        m.push(1, bucket(2, 2));
        m.thread_done(1);
        m.thread_done(0);
        let out = m.finish();
        let seconds: Vec<u64> = out.iter().map(|s| s.second).collect();
        assert_eq!(seconds, vec![0, 1, 2, 3]);
        let ok: Vec<u64> = out.iter().map(|s| s.succeeded).collect();
        assert_eq!(ok, vec![12, 0, 2, 1]);
    }
}
