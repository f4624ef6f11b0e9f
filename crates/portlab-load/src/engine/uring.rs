//! The io_uring engine (Linux ≥ 5.11): each engine thread owns one ring and runs every one of
//! its connection slots as a small state machine, without tasks, wakers or timer entries.
//!
//! Per request a `send` linked to a `recv` (`IOSQE_IO_LINK`: the recv is issued when the send
//! completes, and is cancelled when it fails) goes into the submission queue; the submissions
//! of all connections and the completions of all of them share one `io_uring_enter`
//! (submit-and-wait with a timeout, `IORING_ENTER_EXT_ARG`), so a busy thread makes well under
//! one system call per request. With `--connection close`/`drop` the socket is made with
//! `socket(2)` (as the tokio engine does, so `--source-ip` binding is shared) and connected,
//! read and closed through the ring (`IORING_OP_CONNECT`, `IORING_OP_CLOSE`).
//!
//! Timeouts: each slot holds one deadline (connect timeout, request timeout or the run's end);
//! the loop compares the earliest of them with the clock it reads once per pass and, when one
//! has passed, cancels that slot's operations (`IORING_OP_ASYNC_CANCEL`). Pacing (`-q`,
//! `--rate`), backoff and `--hold` waits sit in one binary heap.
//!
//! Accounting, statistics, timeline, progress, records and the circuit breaker are the tokio
//! engine's own ([`Worker`]), and failures are classified the same way: a negative completion
//! is `-errno`, mapped by [`ErrorClass::from_errno`] and tagged with the phase it happened in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};
use tokio::time::Instant;

use super::{clamp_us, Engine, Fail, ThreadSetup, Timing, Worker, READ_BUF, SLOW_CONNECT_US};
use crate::breaker::Admission;
use crate::config::{ConnectionPolicy, EngineChoice, Plan};
use crate::error::{ErrorClass, Phase};
use crate::http::{Response, ResponseParser, Step};

/// Why `plan` cannot run on this engine, if it cannot.
fn unsupported(plan: &Plan) -> Option<&'static str> {
    if plan.config.http2 {
        Some("HTTP/2")
    } else if plan.target.tls {
        Some("TLS")
    } else if plan.target.proxy.is_some() {
        Some("an HTTP proxy")
    } else {
        None
    }
}

/// Picks the engine for `plan`, and why tokio runs when io_uring was wanted: `auto` and `uring`
/// run io_uring for the plans it supports when a ring can be set up; `auto` falls back to
/// tokio (saying why) when it cannot, `uring` fails.
///
/// # Errors
/// The ring set-up error, when `--engine uring` was asked for and no ring can be made.
pub(super) fn choose(plan: &Plan) -> io::Result<(Engine, Option<String>)> {
    let choice = plan.config.engine;
    if choice == EngineChoice::Tokio {
        return Ok((Engine::Tokio, None));
    }
    if let Some(why) = unsupported(plan) {
        return Ok((Engine::Tokio, Some(why.to_string())));
    }
    match probe() {
        Ok(()) => Ok((Engine::Uring, None)),
        Err(e) if choice == EngineChoice::Uring => Err(e),
        Err(e) => Ok((Engine::Tokio, Some(format!("io_uring unavailable: {e}")))),
    }
}

/// Sets up (and drops) a small ring: fails when `io_uring_disabled` or a seccomp filter forbid
/// it, or when the kernel lacks `IORING_FEAT_EXT_ARG` (5.11), which the wait with a timeout needs.
fn probe() -> io::Result<()> {
    let ring = IoUring::new(4)?;
    if ring.params().is_feature_ext_arg() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
        ))
    }
}

/// A ring with room for every slot's operations: a slot has at most a send, a recv, two
/// cancels and a close outstanding. Single issuer + deferred task running (6.1) when the kernel
/// has them: completions are then processed only inside our `io_uring_enter`, in one batch.
fn build_ring(slots: usize) -> io::Result<IoUring> {
    let entries = (slots * 4 + 16).next_power_of_two().min(1 << 15) as u32;
    let cq = entries.saturating_mul(2);
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))
}

// Operation kinds in the low byte of `user_data`; the slot index is in the high 32 bits and
// the slot's generation (bumped per exchange) in between, so a late completion never hits the
// next operation of the same slot.
const OP_CONNECT: u64 = 1;
const OP_SEND: u64 = 2;
const OP_RECV: u64 = 3;
/// Cancels and closes: nothing waits for them but the final drain.
const OP_UNTRACKED: u64 = 4;

/// `IORING_RECVSEND_POLL_FIRST` (include/uapi/linux/io_uring.h), in the recv's `ioprio`.
const POLL_FIRST: u16 = 1;

fn user_data(slot: usize, generation: u32, kind: u64) -> u64 {
    ((slot as u64) << 32) | (u64::from(generation & 0xFF_FFFF) << 8) | kind
}

/// Where a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On the ready queue: takes its next request on the next pass.
    Ready,
    /// In the timer heap.
    Waiting(Wake),
    /// `IORING_OP_CONNECT` in flight.
    Connecting,
    /// Send and/or recv in flight.
    Exchanging,
    /// `--connection close`: reading until the server's FIN.
    WaitFin,
    /// Its share of the run is over.
    Finished,
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// A paced request's send time (`-q`, `--rate`); latency from `when` if `corrected`.
    Start { when: Instant, corrected: bool },
    /// The backoff before a retry is over.
    Retry,
    /// The backoff would outlast the run: the request is cancelled at the deadline.
    CancelAtDeadline,
    /// `--hold` is over: apply the connection policy.
    Hold,
}

/// What an expired deadline (or a failure seen while operations are still in flight) means
/// once the slot's operations are all reaped.
#[derive(Debug, Clone, Copy)]
enum End {
    Fail(Fail),
    /// The run's deadline (duration mode): counted as cancelled.
    Cancelled,
    /// The connect timeout towards one address: the next address is tried.
    ConnectTimeout,
    /// Waiting for the server's FIN took longer than the request timeout: just close.
    Close,
}

/// One connection slot (a hey "worker").
struct Slot {
    state: State,
    /// The connection's socket, -1 without one.
    fd: RawFd,
    generation: u32,
    /// Connect, send and recv operations not yet reaped.
    inflight: u8,
    /// Decided outcome waiting for `inflight` to reach 0.
    end: Option<End>,
    deadline: Option<Instant>,
    on_expiry: End,
    buf: Box<[u8]>,
    start: usize,
    filled: usize,
    parser: ResponseParser,
    /// Request bytes sent so far.
    sent: usize,
    /// Start of the request (intended with `--rate`).
    began: Instant,
    retry: u32,
    admission: Option<Admission>,
    timing: Timing,
    reused: bool,
    own_next: u64,
    /// Target of the connect in flight (its address must live until the connect completes).
    addr: socket2::SockAddr,
    addr_index: usize,
    /// Addresses tried by this connect so far.
    addr_tries: usize,
    connect_began: Instant,
    response: Option<Response>,
}

impl Slot {
    fn new(now: Instant, head_request: bool) -> Self {
        Self {
            state: State::Ready,
            fd: -1,
            generation: 0,
            inflight: 0,
            end: None,
            deadline: None,
            on_expiry: End::Close,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            filled: 0,
            parser: ResponseParser::new(head_request),
            sent: 0,
            began: now,
            retry: 0,
            admission: None,
            timing: Timing::default(),
            reused: false,
            own_next: 0,
            addr: socket2::SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            addr_index: 0,
            addr_tries: 0,
            connect_began: now,
            response: None,
        }
    }
}

/// Operations in flight from which a thread's waits gather completions
/// ([`crate::LoadConfig::batch_wait`]).
const BATCH_MIN_INFLIGHT: usize = 8;

/// Runs one engine thread on a ring; the thread's statistics go out through [`Worker::finish`].
pub(super) fn thread_main(setup: ThreadSetup) -> io::Result<()> {
    let connections = setup.share.connections;
    let worker = Worker::new(setup);
    let ring = match build_ring(connections) {
        Ok(r) => r,
        Err(e) => {
            // Probed before the threads started, so this is rare (memlock limits): every
            // request slot of this thread would be lost, so fail the run.
            worker.panicked.set(true);
            worker.finish();
            return Err(e);
        }
    };
    let now = Instant::now();
    let mut lp = Loop {
        ring,
        pending: Vec::with_capacity(connections * 2 + 8),
        cqes: Vec::with_capacity(connections * 4 + 8),
        slots: (0..connections)
            .map(|_| Slot::new(now, worker.plan.head_request))
            .collect(),
        ready: (0..connections).collect(),
        timers: BinaryHeap::new(),
        next_check: None,
        live: connections,
        outstanding: 0,
        record: worker.records_tx.is_some(),
        now,
        poll_first: false,
        skip_send_cqe: false,
        min_wait_us: 0,
        w: &worker,
    };
    // 6.10 (RECVSEND_BUNDLE) implies 5.19's POLL_FIRST; older kernels reject unknown recv flags.
    lp.poll_first = lp.ring.params().is_feature_recvsend_bundle();
    // -o csv times the write, which needs the send's completion.
    lp.skip_send_cqe = lp.ring.params().is_feature_skip_cqe_on_success() && !lp.record;
    if lp.ring.params().is_feature_min_timeout() {
        let wait =
            lp.w.plan
                .config
                .batch_wait
                .min(crate::config::MAX_BATCH_WAIT);
        lp.min_wait_us = wait.as_micros() as u32;
    }
    let result = lp.run();
    if result.is_err() {
        // Operations may still point into the slots' buffers: never free them under the kernel.
        std::mem::forget(std::mem::take(&mut lp.slots));
        worker.panicked.set(true);
    }
    drop(lp);
    worker.finish();
    result
}

/// One thread's event loop.
struct Loop<'w> {
    ring: IoUring,
    /// Submissions of this pass, pushed to the ring before the next enter.
    pending: Vec<squeue::Entry>,
    /// Completions of this pass: (user_data, result).
    cqes: Vec<(u64, i32)>,
    slots: Vec<Slot>,
    ready: VecDeque<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Earliest armed deadline (a lower bound: scans recompute it).
    next_check: Option<Instant>,
    /// Slots not yet finished.
    live: usize,
    /// Operations submitted and not yet reaped (all kinds).
    outstanding: usize,
    record: bool,
    /// The clock, read once per pass and at each response (the start of the next request).
    now: Instant,
    /// `IORING_RECVSEND_POLL_FIRST` (5.19): a recv right after its send arms the poll at once
    /// instead of first trying a read that cannot succeed yet.
    poll_first: bool,
    /// `IOSQE_CQE_SKIP_SUCCESS` (5.17) on sends: only a failed send posts a completion.
    skip_send_cqe: bool,
    /// How long a wait may gather completions after the first (µs; 0: return at the first).
    min_wait_us: u32,
    w: &'w Worker,
}

impl Loop<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut next_tick = self.w.start + Duration::from_millis(250);
        loop {
            // Bounded: a slot re-queues itself at most once per pass (short-circuits).
            for _ in 0..self.ready.len() {
                let Some(i) = self.ready.pop_front() else {
                    break;
                };
                self.next_request(i);
            }
            if self.live == 0 && self.outstanding == 0 && self.pending.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            self.now = now;
            while let Some(Reverse((at, i))) = self.timers.peek().copied() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.wake(i, now);
            }
            if self.next_check.is_some_and(|d| d <= now) {
                self.expire(now);
            }
            if now >= next_tick {
                next_tick += Duration::from_millis(250);
                self.w.publish();
                self.w
                    .flush_to(now.saturating_duration_since(self.w.start).as_secs());
            }
            let mut wake_at = next_tick;
            if let Some(Reverse((at, _))) = self.timers.peek() {
                wake_at = wake_at.min(*at);
            }
            if let Some(d) = self.next_check {
                wake_at = wake_at.min(d);
            }
            let wait = if self.ready.is_empty() {
                wake_at.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            self.enter(wait)?;
            self.now = Instant::now();
            self.reap();
        }
    }

    /// Pushes this pass's submissions and waits up to `wait` for at least one completion.
    fn enter(&mut self, wait: Duration) -> io::Result<()> {
        // Batched wake-ups: with BATCH_MIN_INFLIGHT operations or more in flight, wait for all
        // of them but return once `min_wait_us` has passed with at least one completion
        // (IORING_FEAT_MIN_TIMEOUT, 6.12); a thread then wakes once per batch of responses
        // rather than once per response (about 0.06 instead of 1 system call per request).
        let (want, min_wait_us) =
            if self.min_wait_us > 0 && !wait.is_zero() && self.outstanding >= BATCH_MIN_INFLIGHT {
                (self.outstanding.min(1 << 16), self.min_wait_us)
            } else {
                (1, 0)
            };
        // SAFETY: every buffer and address an entry points to lives in a slot (or the plan)
        // until its completion is reaped; slots are never freed earlier.
        unsafe {
            crate::ring::submit_and_wait(&mut self.ring, &mut self.pending, wait, want, min_wait_us)
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &cqes {
            let kind = data & 0xFF;
            // Every completion settles one counted operation. A send with SKIP_SUCCESS was not
            // counted (only its failure posts), but its failure cancels the linked recv, which
            // then posts nothing (`REQ_F_SKIP_LINK_CQES`, io_uring/timeout.c `io_fail_links`):
            // the send's completion stands for the recv's, counted in `outstanding` and in
            // the slot's `inflight`. Waiting for the recv's own was the `reproduce` hang.
            self.outstanding = self.outstanding.saturating_sub(1);
            if kind == OP_UNTRACKED {
                continue;
            }
            let i = (data >> 32) as usize;
            let generation = ((data >> 8) & 0xFF_FFFF) as u32;
            if i >= self.slots.len() || generation != self.slots[i].generation & 0xFF_FFFF {
                continue;
            }
            self.slots[i].inflight = self.slots[i].inflight.saturating_sub(1);
            match kind {
                OP_CONNECT => self.on_connect(i, res),
                OP_SEND => self.on_send(i, res),
                OP_RECV => self.on_recv(i, res),
                _ => {}
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn push(&mut self, entry: squeue::Entry) {
        self.outstanding += 1;
        self.pending.push(entry);
    }

    fn arm(&mut self, i: usize, deadline: Instant, on_expiry: End) {
        let s = &mut self.slots[i];
        s.deadline = Some(deadline);
        s.on_expiry = on_expiry;
        if self.next_check.is_none_or(|d| deadline < d) {
            self.next_check = Some(deadline);
        }
    }

    /// Cancels the operations of every slot whose deadline has passed; recomputes the earliest.
    fn expire(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for i in 0..self.slots.len() {
            let Some(d) = self.slots[i].deadline else {
                continue;
            };
            if d > now {
                next = Some(next.map_or(d, |n| n.min(d)));
                continue;
            }
            let s = &mut self.slots[i];
            s.deadline = None;
            if s.inflight == 0 || s.end.is_some() {
                continue;
            }
            s.end = Some(s.on_expiry);
            let generation = s.generation;
            let kinds: &[u64] = match s.state {
                State::Connecting => &[OP_CONNECT],
                State::Exchanging => &[OP_SEND, OP_RECV],
                _ => &[OP_RECV],
            };
            for &kind in kinds {
                let target = user_data(i, generation, kind);
                self.push(
                    opcode::AsyncCancel::new(target)
                        .build()
                        .user_data(OP_UNTRACKED),
                );
            }
        }
        self.next_check = next;
    }

    fn add_timer(&mut self, i: usize, at: Instant, wake: Wake) {
        self.slots[i].state = State::Waiting(wake);
        self.timers.push(Reverse((at, i)));
    }

    fn wake(&mut self, i: usize, now: Instant) {
        let State::Waiting(wake) = self.slots[i].state else {
            return;
        };
        match wake {
            Wake::Start { when, corrected } => {
                self.slots[i].began = if corrected { when } else { now };
                self.slots[i].retry = 0;
                self.attempt(i);
            }
            Wake::Retry => self.attempt(i),
            Wake::CancelAtDeadline => {
                self.w.record_cancelled();
                self.finish_slot(i);
            }
            Wake::Hold => self.apply_policy(i),
        }
    }

    /// Takes the slot's next request (or ends the slot).
    fn next_request(&mut self, i: usize) {
        let mut own_next = self.slots[i].own_next;
        let now = self.now;
        let next = self.w.take_next_at(now, &mut own_next);
        self.slots[i].own_next = own_next;
        match next {
            None => self.finish_slot(i),
            Some(None) => {
                self.slots[i].began = now;
                self.slots[i].retry = 0;
                self.attempt(i);
            }
            Some(Some((when, corrected))) => {
                if when > now {
                    self.add_timer(i, when, Wake::Start { when, corrected });
                } else {
                    self.slots[i].began = if corrected { when } else { now };
                    self.slots[i].retry = 0;
                    self.attempt(i);
                }
            }
        }
    }

    fn finish_slot(&mut self, i: usize) {
        self.close(i);
        if self.slots[i].state != State::Finished {
            self.slots[i].state = State::Finished;
            self.live -= 1;
        }
    }

    /// One attempt of the slot's request: connect if needed, then the exchange.
    fn attempt(&mut self, i: usize) {
        let admission = self.w.admit();
        if admission == Some(Admission::ShortCircuited) {
            self.w.record_short_circuited();
            // Refusing takes no time: the request ends; the next one waits for the next pass.
            self.slots[i].state = State::Ready;
            self.ready.push_back(i);
            return;
        }
        let s = &mut self.slots[i];
        s.admission = admission;
        s.timing = Timing::default();
        s.reused = s.fd >= 0;
        if s.reused {
            self.send(i);
        } else {
            let candidates = self.w.plan.target.candidates().len().max(1);
            s.connect_began = Instant::now();
            s.addr_index = self.w.preferred_addr.get() % candidates;
            s.addr_tries = 0;
            self.connect(i);
        }
    }

    /// Connects to the slot's current candidate address.
    fn connect(&mut self, i: usize) {
        let addr = self.w.plan.target.candidates()[self.slots[i].addr_index];
        let fd = match self.w.new_socket(addr) {
            Ok(socket) => socket.into_raw_fd(),
            Err(e) => return self.fail_now(i, Fail::io(&e, Phase::Connect)),
        };
        let (limit, is_deadline) = self.w.limit(self.w.plan.config.connect_timeout);
        let on_expiry = if is_deadline {
            End::Cancelled
        } else {
            End::ConnectTimeout
        };
        self.arm(i, limit, on_expiry);
        let s = &mut self.slots[i];
        s.fd = fd;
        s.addr = socket2::SockAddr::from(addr);
        s.generation = s.generation.wrapping_add(1);
        s.state = State::Connecting;
        s.inflight = 1;
        let entry = opcode::Connect::new(types::Fd(fd), s.addr.as_ptr().cast(), s.addr.len())
            .build()
            .user_data(user_data(i, s.generation, OP_CONNECT));
        self.push(entry);
    }

    fn on_connect(&mut self, i: usize, res: i32) {
        let s = &mut self.slots[i];
        s.deadline = None;
        let outcome = match s.end.take() {
            Some(End::Cancelled) => {
                self.close(i);
                self.w.record_cancelled();
                return self.finish_slot(i);
            }
            Some(_) => Err(ErrorClass::ConnectTimeout),
            None if res >= 0 => Ok(()),
            None => Err(ErrorClass::from_errno(-res)),
        };
        let index = s.addr_index;
        match outcome {
            Ok(()) => {
                self.w.preferred_addr.set(index);
                let micros = clamp_us(s.connect_began.elapsed());
                if self.record {
                    s.timing.connect_us = s.connect_began.elapsed().as_micros() as u64;
                }
                {
                    let mut st = self.w.stats.borrow_mut();
                    st.address(index).connects += 1;
                    st.connections_opened += 1;
                    st.slow_connects += u64::from(micros >= SLOW_CONNECT_US);
                    let _ = st.connect.record(micros);
                }
                self.w.bucket_for(Instant::now()).new_connections += 1;
                self.send(i);
            }
            Err(class) => {
                let local = self
                    .w
                    .stats
                    .borrow_mut()
                    .address(index)
                    .connect_failed(class);
                self.close(i);
                let candidates = self.w.plan.target.candidates().len();
                let s = &mut self.slots[i];
                s.addr_tries += 1;
                if local || s.addr_tries >= candidates {
                    self.fail_now(
                        i,
                        Fail {
                            class,
                            phase: Phase::Connect,
                        },
                    );
                } else {
                    s.addr_index = (s.addr_index + 1) % candidates;
                    self.connect(i);
                }
            }
        }
    }

    /// Sends the request (a send linked to the first recv).
    fn send(&mut self, i: usize) {
        {
            let mut st = self.w.stats.borrow_mut();
            if self.slots[i].reused {
                st.requests_on_reused_connection += 1;
            } else {
                st.requests_on_new_connection += 1;
            }
        }
        let (limit, is_deadline) = self
            .w
            .limit_at(self.now, self.w.plan.config.request_timeout);
        let on_expiry = if is_deadline {
            End::Cancelled
        } else {
            End::Fail(Fail {
                class: ErrorClass::ResponseTimeout,
                phase: Phase::Read,
            })
        };
        self.arm(i, limit, on_expiry);
        let request = &self.w.plan.request;
        let s = &mut self.slots[i];
        if self.record {
            s.timing.sent_at = Some(Instant::now());
        }
        s.parser = ResponseParser::new(self.w.plan.head_request);
        s.start = 0;
        s.filled = 0;
        s.sent = 0;
        s.generation = s.generation.wrapping_add(1);
        s.state = State::Exchanging;
        let fd = types::Fd(s.fd);
        let mut link = squeue::Flags::IO_LINK;
        if self.skip_send_cqe {
            link |= squeue::Flags::SKIP_SUCCESS;
            s.inflight = 1;
        } else {
            s.inflight = 2;
        }
        let send = opcode::Send::new(fd, request.as_ptr(), request.len() as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .flags(link)
            .user_data(user_data(i, s.generation, OP_SEND));
        let recv = opcode::Recv::new(fd, s.buf.as_mut_ptr(), s.buf.len() as u32)
            .ioprio(if self.poll_first { POLL_FIRST } else { 0 })
            .build()
            .user_data(user_data(i, s.generation, OP_RECV));
        if self.skip_send_cqe {
            // Posts no completion unless it fails, and then none for the recv: the pair is
            // one operation in `outstanding` and in `inflight` (see `reap`).
            self.pending.push(send);
        } else {
            self.push(send);
        }
        self.push(recv);
    }

    fn on_send(&mut self, i: usize, res: i32) {
        let len = self.w.plan.request.len();
        let record = self.record;
        let s = &mut self.slots[i];
        if s.end.is_none() {
            if res < 0 {
                s.end = Some(End::Fail(Fail {
                    class: ErrorClass::from_errno(-res),
                    phase: Phase::Write,
                }));
            } else if (res as usize) < len {
                // MSG_WAITALL: io_uring retries short sends, so a short one means the peer is gone.
                s.end = Some(End::Fail(Fail {
                    class: ErrorClass::ConnectionReset,
                    phase: Phase::Write,
                }));
            } else {
                s.sent = len;
                if record {
                    s.timing.wrote_at = Some(Instant::now());
                }
            }
        }
        if s.inflight == 0 && s.end.is_some() {
            self.finish_ops(i);
        }
    }

    fn on_recv(&mut self, i: usize, res: i32) {
        if self.slots[i].state == State::WaitFin {
            return self.on_fin_recv(i, res);
        }
        let s = &mut self.slots[i];
        if s.end.is_none() {
            if res < 0 {
                s.end = Some(End::Fail(Fail {
                    class: ErrorClass::from_errno(-res),
                    phase: Phase::Read,
                }));
            } else if res == 0 {
                match s.parser.finish_at_eof() {
                    Some(resp) => return self.response_done(i, resp),
                    None => s.end = Some(End::Fail(Fail::protocol(Phase::Read))),
                }
            } else {
                if self.record {
                    s.timing.first_byte_at.get_or_insert_with(Instant::now);
                }
                // A recv that filled all the room it had may have left bytes in the socket.
                let drained = (res as usize) < s.buf.len() - s.filled;
                s.filled += res as usize;
                match s.parser.feed(&s.buf[s.start..s.filled]) {
                    Err(_) => s.end = Some(End::Fail(Fail::protocol(Phase::Read))),
                    Ok(Step::Done { consumed, response }) => {
                        s.start += consumed;
                        return self.response_done(i, response);
                    }
                    Ok(Step::NeedMore { consumed }) => {
                        s.start += consumed;
                        if s.start == s.filled {
                            s.start = 0;
                            s.filled = 0;
                        }
                        if s.filled == s.buf.len() {
                            if s.start == 0 {
                                // A head larger than the buffer.
                                s.end = Some(End::Fail(Fail::protocol(Phase::Read)));
                            } else {
                                s.buf.copy_within(s.start..s.filled, 0);
                                s.filled -= s.start;
                                s.start = 0;
                            }
                        }
                        if s.end.is_none() {
                            return self.recv_more(i, drained);
                        }
                    }
                }
            }
        }
        if s.inflight == 0 {
            self.finish_ops(i);
        }
    }

    /// Another recv into the free end of the buffer; `drained`: the socket had nothing more, so
    /// wait for readiness before reading.
    fn recv_more(&mut self, i: usize, drained: bool) {
        let poll_first = if drained && self.poll_first {
            POLL_FIRST
        } else {
            0
        };
        let s = &mut self.slots[i];
        s.inflight += 1;
        let free = &mut s.buf[s.filled..];
        let entry = opcode::Recv::new(types::Fd(s.fd), free.as_mut_ptr(), free.len() as u32)
            .ioprio(poll_first)
            .build()
            .user_data(user_data(i, s.generation, OP_RECV));
        self.push(entry);
    }

    /// A complete response: counted at once (the latency ends here), then `--hold` and the
    /// connection policy.
    fn response_done(&mut self, i: usize, resp: Response) {
        let done_at = Instant::now();
        self.now = done_at;
        let s = &mut self.slots[i];
        s.deadline = None;
        s.response = Some(resp);
        if s.inflight > 0 {
            // Cannot happen (the recv is linked after the send), but never reuse a slot with
            // an operation in flight: wait for it and fail the request cleanly.
            s.end = Some(End::Fail(Fail::protocol(Phase::Read)));
            return;
        }
        self.w.breaker_record(s.admission, true);
        self.w.record_ok(s.began, resp, done_at, s.retry > 0);
        self.w.record_request(s.began, &resp, done_at, &s.timing);
        if let Some(hold) = self.w.plan.config.hold {
            let (until, _) = self.w.limit(hold);
            self.add_timer(i, until, Wake::Hold);
        } else {
            self.apply_policy(i);
        }
    }

    /// Keeps the connection for the next request, waits for the server's FIN, or closes.
    fn apply_policy(&mut self, i: usize) {
        let s = &mut self.slots[i];
        let Some(resp) = s.response.take() else {
            return self.next_request(i);
        };
        let leftover = s.filled > s.start;
        let policy = self.w.plan.config.policy;
        let server_closes = !resp.reusable;
        if policy == ConnectionPolicy::KeepAlive && resp.reusable && !leftover {
            return self.next_request(i);
        }
        if policy == ConnectionPolicy::ServerCloses && server_closes && s.fd >= 0 {
            let (limit, _) = self.w.limit(self.w.plan.config.request_timeout);
            self.arm(i, limit, End::Close);
            let s = &mut self.slots[i];
            s.state = State::WaitFin;
            s.generation = s.generation.wrapping_add(1);
            s.start = 0;
            s.filled = 0;
            return self.recv_more(i, false);
        }
        self.close_counted(i, server_closes);
    }

    fn on_fin_recv(&mut self, i: usize, res: i32) {
        let s = &mut self.slots[i];
        if s.end.is_none() && res > 0 {
            return self.recv_more(i, false);
        }
        s.end = None;
        s.deadline = None;
        self.close_counted(i, true);
    }

    /// Closes after a response (plain close(): FIN, not RST) and takes the next request.
    fn close_counted(&mut self, i: usize, server_closes: bool) {
        self.close(i);
        {
            let mut st = self.w.stats.borrow_mut();
            if server_closes {
                st.closed_by_server += 1;
            } else {
                st.closed_by_client += 1;
            }
        }
        self.next_request(i);
    }

    fn close(&mut self, i: usize) {
        let fd = std::mem::replace(&mut self.slots[i].fd, -1);
        if fd >= 0 {
            self.push(
                opcode::Close::new(types::Fd(fd))
                    .build()
                    .user_data(OP_UNTRACKED),
            );
        }
    }

    /// Every operation of the slot is reaped and its outcome decided.
    fn finish_ops(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.deadline = None;
        // Nothing of this exchange may reach the slot's next one.
        s.generation = s.generation.wrapping_add(1);
        match s.end.take() {
            Some(End::Fail(fail)) => {
                self.close(i);
                self.failed(i, fail);
            }
            Some(End::Cancelled) => {
                self.close(i);
                self.w.record_cancelled();
                self.finish_slot(i);
            }
            Some(End::ConnectTimeout) => {
                // Only connects carry this outcome, and they are finished in `on_connect`.
                self.close(i);
                self.failed(
                    i,
                    Fail {
                        class: ErrorClass::ConnectTimeout,
                        phase: Phase::Connect,
                    },
                );
            }
            Some(End::Close) | None => {
                self.close(i);
                self.next_request(i);
            }
        }
    }

    /// A failure decided with nothing in flight.
    fn fail_now(&mut self, i: usize, fail: Fail) {
        self.close(i);
        self.failed(i, fail);
    }

    /// Retries after the backoff, or counts the failure and moves on.
    fn failed(&mut self, i: usize, fail: Fail) {
        let s = &mut self.slots[i];
        s.deadline = None;
        if s.retry < self.w.plan.config.retries {
            self.w.breaker_record(s.admission, false);
            self.w.record_retried(fail);
            s.retry += 1;
            match self.w.backoff_until(s.retry) {
                Ok(wake) => self.add_timer(i, wake, Wake::Retry),
                Err(deadline) => self.add_timer(i, deadline, Wake::CancelAtDeadline),
            }
        } else {
            self.w.breaker_record(s.admission, false);
            self.w.record_failure(fail);
            // Next pass: a failure found without I/O (socket() with EMFILE) must not recurse
            // through every remaining request.
            s.state = State::Ready;
            self.ready.push_back(i);
        }
    }
}
