//! The io_uring engine of the TCP forwarder (Linux ≥ 5.19; `--engine uring`, the default where a
//! ring can be set up): each engine thread owns one ring and runs every connection pair it
//! accepted as a small state machine, without tasks, wakers or epoll registrations.
//!
//! Per message one `recv` on the source; when it completes, a `send` of what it read to the
//! other side linked to the next `recv` (`IOSQE_IO_LINK`: the recv is issued when the send has
//! completed, so the buffer is free, and `MSG_WAITALL` makes a short send fail the link), both
//! in the next `io_uring_enter`. The submissions and completions of all connections share one
//! `io_uring_enter` (submit-and-wait, `IORING_ENTER_EXT_ARG`), and with
//! `IORING_FEAT_MIN_TIMEOUT` (6.12), while [`BATCH_MIN_ACTIVE`] or more connections moved data
//! in the last [`ACTIVITY_WINDOW`], a wait gathers the completions that arrive within
//! `--batch-wait` ([`crate::TcpProxyConfig::batch_wait_us`]) of the first: one wake-up per batch of messages rather than one
//! per message — the epoll forwarder's `epoll_wait` + `recv` + `send` per message become a
//! fraction of one system call. Fewer active connections, where a batch could not gather
//! anything, never wait.
//!
//! The relay's rules are the tokio engine's (`splice.rs`): small messages are copied through a
//! 16 KiB buffer per direction; a read that fills it switches that direction to `splice(2)`
//! through a pipe from the shared [`PipePool`] (readiness from `IORING_OP_POLL_ADD`, the
//! splices themselves non-blocking system calls, as in the tokio engine: io_uring's own
//! `IORING_OP_SPLICE` always runs on a blocking worker thread); EOF on one side becomes
//! `shutdown(SHUT_WR)` on the other; the first error of either direction resets both sides
//! (`SO_LINGER` 0) and is counted by class. An upstream connect is `IORING_OP_CONNECT` linked to
//! an `IORING_OP_LINK_TIMEOUT` of `--connect-timeout`. A connection is closed only when every
//! operation that names it has completed (pending ones are cancelled with
//! `IORING_OP_ASYNC_CANCEL`, `IORING_ASYNC_CANCEL_FD | _ALL`), so no buffer is freed or
//! descriptor reused under the kernel.
//!
//! The listener is shared: each thread keeps a few `IORING_OP_ACCEPT` armed on it, and at most
//! its share of `--max-conns` connections open (the limit split evenly between threads).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use crate::accept::is_resource_exhaustion;
use crate::net::{add, bind_source_ip_raw};
use crate::splice::{splice_nonblocking, Pipe, COPY_BUFFER_BYTES, SPLICE_CHUNK_BYTES};
use crate::tcp_proxy::Shared;
use crate::UpstreamErrorClass;

/// Connections that moved data within an [`ACTIVITY_WINDOW`] from which waits gather batches.
const BATCH_MIN_ACTIVE: u32 = 8;

/// The window over which active connections are counted.
const ACTIVITY_WINDOW: Duration = Duration::from_millis(10);

/// Accepts each thread keeps armed on the listener (fewer when its connection share is near).
const ACCEPTS_ARMED: usize = 4;

/// Free connection slots that keep their buffers for the next connection (2 × 16 KiB each).
const SLOTS_KEPT_WARM: usize = 256;

/// `IORING_RECVSEND_POLL_FIRST` (include/uapi/linux/io_uring.h), in the recv's `ioprio`: the
/// recv after a forwarded message arms its poll at once, as the answer cannot be there yet.
const POLL_FIRST: u16 = 1;

// Operation kinds in the low 7 bits of `user_data`, the direction in bit 7, the slot's
// generation (bumped when the slot is freed) in bits 8–31 and the slot index above.
const OP_ACCEPT: u64 = 1;
const OP_ACCEPT_PAUSE: u64 = 2;
const OP_STOP: u64 = 3;
const OP_CONNECT: u64 = 4;
const OP_CONNECT_TIMEOUT: u64 = 5;
const OP_RECV: u64 = 6;
const OP_SEND: u64 = 7;
const OP_POLL_IN: u64 = 8;
const OP_POLL_OUT: u64 = 9;
const OP_CANCEL: u64 = 10;
/// Cancels of the thread's accepts at stop: nothing waits for them but the final drain.
const OP_LISTENER_CANCEL: u64 = 11;

fn user_data(slot: usize, generation: u32, dir: usize, kind: u64) -> u64 {
    ((slot as u64) << 32) | (u64::from(generation & 0xFF_FFFF) << 8) | ((dir as u64) << 7) | kind
}

/// Whether this kernel runs the forwarder's ring: set-up allowed (`io_uring_disabled`,
/// seccomp), `IORING_FEAT_EXT_ARG` (5.11) for the wait with a timeout, and
/// `IORING_FEAT_RECVSEND_BUNDLE` (6.10, which implies 5.19's `ASYNC_CANCEL_FD`/`_ALL` and
/// `POLL_FIRST`).
///
/// # Errors
/// The ring set-up error, or `Unsupported` naming the missing feature.
pub(crate) fn probe() -> io::Result<()> {
    let ring = IoUring::new(4)?;
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    if !params.is_feature_recvsend_bundle() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel lacks io_uring's cancel-by-descriptor (Linux 5.19; checked as 6.10's \
             IORING_FEAT_RECVSEND_BUNDLE)",
        ));
    }
    Ok(())
}

/// A ring for one thread: single issuer + deferred task running (6.1) when the kernel has
/// them, so completions are processed only inside our `io_uring_enter`, in one batch.
///
/// # Errors
/// `io_uring_setup(2)`'s error (ENOMEM under a low `RLIMIT_MEMLOCK` on old kernels, EPERM).
pub(crate) fn build_ring() -> io::Result<IoUring> {
    let entries = 4096;
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
}

/// One direction of a connection pair: 0 = client → upstream, 1 = upstream → client.
#[derive(Debug, Default)]
struct Dir {
    /// The copy buffer ([`COPY_BUFFER_BYTES`]); empty while the slot is cold.
    buf: Box<[u8]>,
    recv_inflight: bool,
    /// The recv in flight was linked behind a send.
    linked: bool,
    /// Bytes of `buf` the send in flight carries.
    sending: usize,
    /// EOF seen and passed on.
    done: bool,
    /// A pipe was asked for once (out of descriptors, the direction copies to the end).
    asked: bool,
    /// Splice mode: the pipe and the bytes it holds.
    pipe: Option<Pipe>,
    in_pipe: usize,
}

impl Dir {
    fn reset(&mut self, warm: bool) {
        let buf = std::mem::take(&mut self.buf);
        *self = Dir::default();
        if warm {
            self.buf = buf;
        }
    }
}

/// One connection pair.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    /// The last activity window in which this connection moved data.
    active_window: u64,
    client: RawFd,
    upstream: RawFd,
    /// Operations that name this slot and have not completed.
    inflight: u32,
    closing: bool,
    dirs: [Dir; 2],
}

/// Runs one engine thread: accepts on `listener` until a read of `stop` (an `EFD_SEMAPHORE`
/// eventfd) completes, then closes its connections (FIN, as the tokio engine's abort does) and
/// returns when every operation has completed.
///
/// # Errors
/// An `io_uring_enter` failure other than a timeout or a signal; the thread's connections are
/// then left open (their buffers leaked on purpose: the kernel may still use them).
pub(crate) fn thread_main(
    ring: IoUring,
    listener: RawFd,
    stop: RawFd,
    cap: usize,
    batch_wait_us: u32,
    cx: &Shared,
) -> io::Result<()> {
    let batch_wait_us = if ring.params().is_feature_min_timeout() {
        batch_wait_us
    } else {
        0
    };
    let mut lp = Loop {
        ring,
        pending: Vec::with_capacity(256),
        cqes: Vec::with_capacity(256),
        slots: Vec::new(),
        free: Vec::new(),
        live: 0,
        cap,
        accepts_armed: 0,
        accept_paused: false,
        outstanding: 0,
        stopping: false,
        listener,
        stop_fd: stop,
        stop_buf: Box::new(0),
        upstream: Box::new(socket2::SockAddr::from(cx.config.upstream)),
        connect_ts: Box::new(types::Timespec::from(cx.config.connect_timeout)),
        pause_ts: Box::new(types::Timespec::from(Duration::from_millis(10))),
        batch_wait_us,
        window: 1,
        window_start: Instant::now(),
        active_now: 0,
        active_before: 0,
        cx,
    };
    let result = lp.run();
    if result.is_err() {
        // Operations may still point into the slots' buffers, the addresses and the
        // timespecs: leak the whole loop (the ring with them) rather than free any of it under
        // the kernel.
        std::mem::forget(lp);
    }
    result
}

struct Loop<'a> {
    ring: IoUring,
    /// Submissions of this pass, pushed to the ring before the next enter.
    pending: Vec<squeue::Entry>,
    cqes: Vec<(u64, i32)>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots holding a connection.
    live: usize,
    /// This thread's share of `--max-conns`.
    cap: usize,
    accepts_armed: usize,
    accept_paused: bool,
    /// Operations submitted and not yet reaped (all kinds).
    outstanding: usize,
    stopping: bool,
    listener: RawFd,
    stop_fd: RawFd,
    stop_buf: Box<u64>,
    /// The upstream's address, as connect(2) takes it (boxed: the kernel reads it later).
    upstream: Box<socket2::SockAddr>,
    connect_ts: Box<types::Timespec>,
    pause_ts: Box<types::Timespec>,
    batch_wait_us: u32,
    /// The current activity window (counts from 1; a slot's 0 is "never").
    window: u64,
    window_start: Instant,
    /// Connections that moved data in the current window and in the one before.
    active_now: u32,
    active_before: u32,
    cx: &'a Shared,
}

impl Loop<'_> {
    fn run(&mut self) -> io::Result<()> {
        let read = opcode::Read::new(
            types::Fd(self.stop_fd),
            (&mut *self.stop_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(user_data(0, 0, 0, OP_STOP));
        self.push(read);
        loop {
            self.arm_accepts();
            if self.stopping && self.outstanding == 0 && self.pending.is_empty() {
                return Ok(());
            }
            self.enter()?;
            self.reap();
        }
    }

    fn push(&mut self, entry: squeue::Entry) {
        self.pending.push(entry);
        self.outstanding += 1;
    }

    /// Pushes this pass's submissions and waits for at least one completion (a batch of them
    /// while [`Loop::batching`]).
    fn enter(&mut self) -> io::Result<()> {
        let (want, min_wait_us) = if self.batch_wait_us > 0 && self.batching() {
            (self.outstanding.min(1 << 16), self.batch_wait_us)
        } else {
            (1, 0)
        };
        // SAFETY: every buffer, address and timespec an entry points to lives in a slot or in
        // the loop until its completion is reaped; slots are freed only when no operation names
        // them.
        unsafe {
            portlab_load::ring::submit_and_wait(
                &mut self.ring,
                &mut self.pending,
                Duration::from_secs(1),
                want,
                min_wait_us,
            )
        }
    }

    /// Whether this wait gathers a batch: enough connections moved data lately.
    fn batching(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= ACTIVITY_WINDOW {
            let windows = (now.duration_since(self.window_start).as_nanos()
                / ACTIVITY_WINDOW.as_nanos()) as u64;
            self.active_before = if windows == 1 { self.active_now } else { 0 };
            self.active_now = 0;
            self.window += windows;
            self.window_start = if windows == 1 {
                self.window_start + ACTIVITY_WINDOW
            } else {
                now
            };
        }
        self.active_now.max(self.active_before) >= BATCH_MIN_ACTIVE
    }

    /// Counts slot `i` as active in this window.
    fn moved_data(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if slot.active_window != self.window {
            slot.active_window = self.window;
            self.active_now += 1;
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &cqes {
            self.outstanding -= 1;
            let kind = data & 0x7F;
            let dir = ((data >> 7) & 1) as usize;
            let generation = ((data >> 8) & 0xFF_FFFF) as u32;
            let i = (data >> 32) as usize;
            match kind {
                OP_ACCEPT => self.on_accept(res),
                OP_ACCEPT_PAUSE => self.accept_paused = false,
                OP_STOP => self.on_stop(),
                OP_LISTENER_CANCEL => {}
                _ => {
                    let Some(slot) = self.slots.get_mut(i) else {
                        continue;
                    };
                    if slot.generation & 0xFF_FFFF != generation {
                        continue;
                    }
                    slot.inflight -= 1;
                    if slot.closing {
                        self.maybe_free(i);
                        continue;
                    }
                    match kind {
                        OP_CONNECT => self.on_connect(i, res),
                        OP_RECV => self.on_recv(i, dir, res),
                        OP_SEND => self.on_send(i, dir, res),
                        OP_POLL_IN => self.splice_in(i, dir),
                        OP_POLL_OUT => self.splice_out(i, dir),
                        _ => {} // the connect's link timeout, cancels
                    }
                }
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn arm_accepts(&mut self) {
        while !self.stopping
            && !self.accept_paused
            && self.accepts_armed < ACCEPTS_ARMED
            && self.live + self.accepts_armed < self.cap
        {
            let accept = opcode::Accept::new(
                types::Fd(self.listener),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(0, 0, 0, OP_ACCEPT));
            self.push(accept);
            self.accepts_armed += 1;
        }
    }

    fn on_accept(&mut self, res: i32) {
        self.accepts_armed -= 1;
        let conns = &self.cx.counters.conns;
        if res < 0 {
            if self.stopping || res == -libc::ECANCELED {
                return;
            }
            add(&conns.accept_errors, 1);
            if is_resource_exhaustion(&io::Error::from_raw_os_error(-res)) {
                // Out of descriptors or memory: pause instead of spinning, as the tokio engine.
                self.accept_paused = true;
                let pause = opcode::Timeout::new(&*self.pause_ts as *const types::Timespec)
                    .build()
                    .user_data(user_data(0, 0, 0, OP_ACCEPT_PAUSE));
                self.push(pause);
            }
            return;
        }
        if self.stopping {
            // SAFETY: a descriptor accept just gave us and nobody else holds.
            unsafe { libc::close(res) };
            return;
        }
        add(&conns.accepted, 1);
        add(&conns.active, 1);
        self.start(res);
    }

    /// A slot for a new client connection, its upstream socket made and its connect submitted.
    fn start(&mut self, client: RawFd) {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        self.live += 1;
        let slot = &mut self.slots[i];
        slot.client = client;
        slot.upstream = -1;
        set_nodelay(client);
        let upstream = match upstream_socket(self.cx.config.upstream, self.cx.config.source_ip) {
            Ok(fd) => fd,
            Err(err) => {
                self.cx
                    .counters
                    .connect_failures
                    .add(UpstreamErrorClass::from_io(&err));
                // The client learns of the failure as a reset, as with portproxy.
                self.begin_close(i, true);
                return;
            }
        };
        let slot = &mut self.slots[i];
        slot.upstream = upstream;
        let generation = slot.generation;
        slot.inflight += 2;
        let connect = opcode::Connect::new(
            types::Fd(upstream),
            self.upstream.as_ptr().cast(),
            self.upstream.len(),
        )
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(user_data(i, generation, 0, OP_CONNECT));
        let timeout = opcode::LinkTimeout::new(&*self.connect_ts as *const types::Timespec)
            .build()
            .user_data(user_data(i, generation, 0, OP_CONNECT_TIMEOUT));
        self.push(connect);
        self.push(timeout);
    }

    fn on_connect(&mut self, i: usize, res: i32) {
        if res < 0 {
            let class = if res == -libc::ECANCELED {
                // The link timeout fired (our own cancels come only with `closing` set).
                UpstreamErrorClass::ConnectTimeout
            } else {
                UpstreamErrorClass::from_errno(-res)
            };
            self.cx.counters.connect_failures.add(class);
            self.begin_close(i, true);
            return;
        }
        add(&self.cx.counters.upstream_connects, 1);
        for dir in 0..2 {
            let d = &mut self.slots[i].dirs[dir];
            if d.buf.is_empty() {
                d.buf = vec![0u8; COPY_BUFFER_BYTES].into_boxed_slice();
            }
            self.arm_recv(i, dir, false);
        }
    }

    /// Adds `n` bytes written by direction `dir` to the live byte counters.
    fn count_moved(&self, dir: usize, n: usize) {
        let c = &self.cx.counters;
        add(
            if dir == 0 {
                &c.to_upstream
            } else {
                &c.to_client
            },
            n as u64,
        );
    }

    /// The source and destination descriptors of direction `dir` of slot `i`.
    fn ends(&self, i: usize, dir: usize) -> (RawFd, RawFd) {
        let s = &self.slots[i];
        if dir == 0 {
            (s.client, s.upstream)
        } else {
            (s.upstream, s.client)
        }
    }

    fn recv_entry(&mut self, i: usize, dir: usize, poll_first: bool) -> squeue::Entry {
        let (src, _) = self.ends(i, dir);
        let slot = &mut self.slots[i];
        let generation = slot.generation;
        let d = &mut slot.dirs[dir];
        d.recv_inflight = true;
        slot.inflight += 1;
        let mut recv = opcode::Recv::new(types::Fd(src), d.buf.as_mut_ptr(), d.buf.len() as u32);
        if poll_first {
            recv = recv.ioprio(POLL_FIRST);
        }
        recv.build()
            .user_data(user_data(i, generation, dir, OP_RECV))
    }

    /// The next read of direction `dir`: a recv in copy mode, a poll for input in splice mode.
    fn arm_recv(&mut self, i: usize, dir: usize, poll_first: bool) {
        if self.slots[i].dirs[dir].pipe.is_some() {
            let (src, _) = self.ends(i, dir);
            self.arm_poll(i, dir, src, libc::POLLIN, OP_POLL_IN);
        } else {
            let recv = self.recv_entry(i, dir, poll_first);
            self.push(recv);
        }
    }

    fn arm_poll(&mut self, i: usize, dir: usize, fd: RawFd, events: i16, kind: u64) {
        let slot = &mut self.slots[i];
        slot.inflight += 1;
        let poll = opcode::PollAdd::new(types::Fd(fd), events as u32)
            .build()
            .user_data(user_data(i, slot.generation, dir, kind));
        self.push(poll);
    }

    fn send_entry(&mut self, i: usize, dir: usize, n: usize, link: bool) -> squeue::Entry {
        let (_, dst) = self.ends(i, dir);
        let slot = &mut self.slots[i];
        let generation = slot.generation;
        let d = &mut slot.dirs[dir];
        d.sending = n;
        slot.inflight += 1;
        let send = opcode::Send::new(types::Fd(dst), d.buf.as_ptr(), n as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .user_data(user_data(i, generation, dir, OP_SEND));
        if link {
            send.flags(squeue::Flags::IO_LINK)
        } else {
            send
        }
    }

    fn on_recv(&mut self, i: usize, dir: usize, res: i32) {
        let d = &mut self.slots[i].dirs[dir];
        d.recv_inflight = false;
        let linked = std::mem::take(&mut d.linked);
        if res == -libc::ECANCELED && linked {
            // The send it was linked behind failed; on_send handles that.
            return;
        }
        if res < 0 {
            self.fail(i, -res);
            return;
        }
        if res == 0 {
            self.eof(i, dir);
            return;
        }
        let n = res as usize;
        self.moved_data(i);
        let d = &mut self.slots[i].dirs[dir];
        if n == d.buf.len() && !d.asked {
            d.asked = true;
            d.pipe = self.cx.pipes.take().ok();
        }
        if self.slots[i].dirs[dir].pipe.is_some() {
            // Switching to splice: the next read is a poll, after this send.
            let send = self.send_entry(i, dir, n, false);
            self.push(send);
        } else {
            let send = self.send_entry(i, dir, n, true);
            let recv = self.recv_entry(i, dir, true);
            self.slots[i].dirs[dir].linked = true;
            self.push(send);
            self.push(recv);
        }
    }

    fn on_send(&mut self, i: usize, dir: usize, res: i32) {
        let sent = std::mem::take(&mut self.slots[i].dirs[dir].sending);
        if res < 0 {
            self.fail(i, -res);
            return;
        }
        self.count_moved(dir, res as usize);
        if (res as usize) < sent {
            // MSG_WAITALL: a short send means the socket failed after part of it (the linked
            // recv is cancelled); the error itself is the socket's pending one.
            let (_, dst) = self.ends(i, dir);
            self.fail(i, pending_error(dst));
            return;
        }
        if !self.slots[i].dirs[dir].recv_inflight {
            self.arm_recv(i, dir, true);
        }
    }

    /// Splice mode, source readable: socket → pipe, then drain.
    fn splice_in(&mut self, i: usize, dir: usize) {
        let (src, _) = self.ends(i, dir);
        let Some(pipe_write) = self.slots[i].dirs[dir]
            .pipe
            .as_ref()
            .map(|p| p.write.as_raw_fd())
        else {
            return;
        };
        match splice_nonblocking(src, pipe_write, SPLICE_CHUNK_BYTES) {
            Ok(0) => self.eof(i, dir),
            Ok(n) => {
                self.slots[i].dirs[dir].in_pipe = n;
                self.splice_out(i, dir);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.arm_poll(i, dir, src, libc::POLLIN, OP_POLL_IN);
            }
            Err(e) => self.fail(i, e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Splice mode: pipe → destination until the pipe is empty, then the next read.
    fn splice_out(&mut self, i: usize, dir: usize) {
        let (_, dst) = self.ends(i, dir);
        loop {
            let d = &self.slots[i].dirs[dir];
            let Some(pipe_read) = d.pipe.as_ref().map(|p| p.read.as_raw_fd()) else {
                return;
            };
            if d.in_pipe == 0 {
                break;
            }
            match splice_nonblocking(pipe_read, dst, d.in_pipe) {
                Ok(n) => {
                    self.slots[i].dirs[dir].in_pipe -= n;
                    self.count_moved(dir, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.arm_poll(i, dir, dst, libc::POLLOUT, OP_POLL_OUT);
                    return;
                }
                Err(e) => {
                    self.fail(i, e.raw_os_error().unwrap_or(libc::EIO));
                    return;
                }
            }
        }
        let (src, _) = self.ends(i, dir);
        self.arm_poll(i, dir, src, libc::POLLIN, OP_POLL_IN);
    }

    /// EOF on the source of `dir`: pass the half-close on; both done, close the pair.
    fn eof(&mut self, i: usize, dir: usize) {
        let (_, dst) = self.ends(i, dir);
        let d = &mut self.slots[i].dirs[dir];
        d.done = true;
        if let Some(pipe) = d.pipe.take() {
            // Every splice_out drained it before the next read: it is empty.
            self.cx.pipes.give_back(pipe);
        }
        // SAFETY: shutdown(2) on a socket this slot owns.
        if unsafe { libc::shutdown(dst, libc::SHUT_WR) } != 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            // The peer already went away entirely: nothing left to tell it.
            if errno != libc::ENOTCONN {
                self.fail(i, errno);
                return;
            }
        }
        if self.slots[i].dirs.iter().all(|d| d.done) {
            self.begin_close(i, false);
        }
    }

    /// A relay error: counted by class; both sides reset.
    fn fail(&mut self, i: usize, errno: i32) {
        self.cx
            .counters
            .relay_errors
            .add(UpstreamErrorClass::from_errno(errno));
        self.begin_close(i, true);
    }

    /// Starts closing slot `i` (with RST when `reset`): cancels what is in flight; the
    /// descriptors are closed once nothing names them.
    fn begin_close(&mut self, i: usize, reset: bool) {
        let slot = &mut self.slots[i];
        if slot.closing {
            return;
        }
        slot.closing = true;
        if reset {
            for fd in [slot.client, slot.upstream] {
                if fd >= 0 {
                    set_linger_zero(fd);
                }
            }
            // A pipe may hold bytes: close it rather than pool it.
            for d in &mut slot.dirs {
                d.pipe = None;
            }
        }
        if slot.inflight > 0 {
            let generation = slot.generation;
            for fd in [slot.client, slot.upstream] {
                if fd >= 0 {
                    slot.inflight += 1;
                    let cancel =
                        opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                            .build()
                            .user_data(user_data(i, generation, 0, OP_CANCEL));
                    self.pending.push(cancel);
                    self.outstanding += 1;
                }
            }
        }
        self.maybe_free(i);
    }

    fn maybe_free(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if !slot.closing || slot.inflight > 0 {
            return;
        }
        for fd in [slot.client, slot.upstream] {
            if fd >= 0 {
                // SAFETY: descriptors this slot owns; no operation names them any more.
                unsafe { libc::close(fd) };
            }
        }
        let warm = self.free.len() < SLOTS_KEPT_WARM;
        for d in &mut slot.dirs {
            // Only an empty pipe is pooled; one that may hold bytes is closed.
            if let Some(pipe) = d.pipe.take().filter(|_| d.in_pipe == 0) {
                self.cx.pipes.give_back(pipe);
            }
            d.reset(warm);
        }
        slot.generation = slot.generation.wrapping_add(1);
        slot.client = -1;
        slot.upstream = -1;
        slot.closing = false;
        self.free.push(i);
        self.live -= 1;
        self.cx
            .counters
            .conns
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stop: no more accepts; every connection closed (FIN), as the tokio engine's abort.
    fn on_stop(&mut self) {
        self.stopping = true;
        if self.accepts_armed > 0 {
            let cancel =
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(self.listener)).all())
                    .build()
                    .user_data(user_data(0, 0, 0, OP_LISTENER_CANCEL));
            self.push(cancel);
        }
        for i in 0..self.slots.len() {
            if self.slots[i].client >= 0 && !self.slots[i].closing {
                self.begin_close(i, false);
            }
        }
    }
}

/// A new upstream socket (`socket(2)`, `TCP_NODELAY`, the `--source-ip` bind), not connected.
/// Both sockets of a pair are non-blocking (io_uring polls them either way): the splice path's
/// `splice(2)` calls must return EAGAIN on a full or empty socket, not sleep the whole ring.
fn upstream_socket(upstream: SocketAddr, source_ip: Option<std::net::IpAddr>) -> io::Result<RawFd> {
    use std::os::fd::{AsFd, IntoRawFd};
    let domain = socket2::Domain::for_address(upstream);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking(), None)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = source_ip {
        bind_source_ip_raw(socket.as_fd(), ip)?;
    }
    Ok(socket.into_raw_fd())
}

/// Runs `f` on socket `fd` through socket2.
fn with_socket<R>(fd: RawFd, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> R {
    // SAFETY: `fd` is a socket the calling slot owns and keeps open for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&fd))
}

fn set_nodelay(fd: RawFd) {
    let _ = with_socket(fd, |s| s.set_tcp_nodelay(true));
}

/// `SO_LINGER` 0: the close resets the connection (RST) instead of a FIN.
fn set_linger_zero(fd: RawFd) {
    let _ = with_socket(fd, |s| s.set_linger(Some(Duration::ZERO)));
}

/// The socket's pending error (`SO_ERROR`), or EPIPE when none is left to read.
fn pending_error(fd: RawFd) -> i32 {
    with_socket(fd, |s| s.take_error())
        .ok()
        .flatten()
        .and_then(|e| e.raw_os_error())
        .unwrap_or(libc::EPIPE)
}
