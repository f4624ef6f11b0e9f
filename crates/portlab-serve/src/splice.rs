//! Relay of a TCP connection pair that moves bulk transfers with `splice(2)` through pipes, as
//! HAProxy's `option splice-auto` does: small messages (a read that does not fill
//! [`COPY_BUFFER_BYTES`]) are copied through a user-space buffer, which costs less than the
//! pipe's page bookkeeping; from the first read that fills it on, that direction goes
//! socket → pipe → socket inside the kernel and never through user space. A direction takes
//! its pipe from a [`PipePool`] only when it switches, so a connection of small messages holds
//! no pipe (no `pipe2(2)`, no four extra descriptors); a drained pipe goes back to the pool
//! when its direction ends. When no pipe can be had (out of descriptors) the direction keeps
//! copying.
//!
//! Semantics match `tokio::io::copy_bidirectional`: EOF on one side becomes
//! `shutdown(SHUT_WR)` on the other and the other direction carries on; the first error of
//! either direction ends the relay with that error.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of one `splice(2)` call: the default pipe capacity (16 pages).
pub(crate) const SPLICE_CHUNK_BYTES: usize = 64 * 1024;

/// Empty pipes a [`PipePool`] keeps for reuse, at most this many (two descriptors each).
pub(crate) const MAX_POOLED_PIPES: usize = 64;

/// One pipe: the read end and the write end.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

impl Pipe {
    /// A new non-blocking pipe (`pipe2(O_NONBLOCK | O_CLOEXEC)`).
    ///
    /// # Errors
    /// `pipe2(2)`'s error (EMFILE/ENFILE when out of descriptors).
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }
}

/// Empty pipes of finished relays, kept so a connection churn does not pay `pipe2(2)` and two
/// `close(2)` per direction per connection (HAProxy keeps such a pool too, `maxpipes`).
#[derive(Debug, Default)]
pub(crate) struct PipePool {
    idle: Mutex<Vec<Pipe>>,
}

impl PipePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle pipe, or a new one.
    ///
    /// # Errors
    /// `pipe2(2)`'s error (EMFILE/ENFILE when out of descriptors).
    pub(crate) fn take(&self) -> io::Result<Pipe> {
        match self.lock().pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Keeps an empty pipe for reuse (closes it when the pool is full).
    pub(crate) fn give_back(&self, pipe: Pipe) {
        let mut idle = self.lock();
        if idle.len() < MAX_POOLED_PIPES {
            idle.push(pipe);
        }
    }

    /// Idle pipes held now.
    pub(crate) fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Closes every idle pipe.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// `splice(2)` of at most `len` bytes from `from` to `to`, non-blocking.
pub(crate) fn splice_nonblocking(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors the caller keeps open; null offsets (both are a
    // socket or a pipe, which have no file position).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads of at most this many bytes go through a user-space buffer; a read that fills it
/// switches that direction to `splice(2)` (HAProxy's `splice-auto` rule): for small messages a
/// copy is cheaper than the pipe's page bookkeeping, for bulk transfers the copy is the cost.
pub(crate) const COPY_BUFFER_BYTES: usize = 16 * 1024;

/// Relays `src` → `dst` until EOF on `src`, then shuts `dst`'s write side. Small reads are
/// copied; from the first read that fills [`COPY_BUFFER_BYTES`] on, bytes go through a pipe
/// taken from `pool` (given back, empty, at EOF; closed on an error, when it may hold bytes).
/// `moved` counts the bytes written to `dst` as they go (live stats; the total survives an
/// error).
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pool: &PipePool,
    moved: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut pipe: Option<Pipe> = None;
    // A pipe is asked for once: out of descriptors, the direction copies to the end.
    let mut asked = false;
    loop {
        let n = match &pipe {
            Some(pipe) => splice_in(src, pipe).await?,
            None => read_in(src, &mut buf).await?,
        };
        if n == 0 {
            // Every splice_out drained the pipe before the next read: it is empty.
            if let Some(pipe) = pipe.take() {
                pool.give_back(pipe);
            }
            // EOF: pass the half-close on, as copy_bidirectional does.
            return match socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
                Ok(()) => Ok(()),
                // The peer already went away entirely: nothing left to tell it.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                Err(e) => Err(e),
            };
        }
        match &pipe {
            Some(pipe) => splice_out(pipe, dst, n, moved).await?,
            None => {
                write_out(dst, &buf[..n], moved).await?;
                if n == buf.len() && !asked {
                    asked = true;
                    pipe = pool.take().ok();
                }
            }
        }
    }
}

/// Reads what `src` has into `buf` (0 at EOF). A short read clears tokio's readiness, as in
/// [`splice_in`], so the next read waits for epoll rather than paying a `recv` for EAGAIN.
async fn read_in(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let len = buf.len();
    loop {
        src.readable().await?;
        let mut short = None;
        let read = src.try_io(Interest::READABLE, || {
            // SAFETY: `buf` is valid for writes of `len` bytes; `src` stays open.
            let n = unsafe { libc::recv(src.as_raw_fd(), buf.as_mut_ptr().cast(), len, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n > 0 && n < len {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (read, short) {
            (_, Some(n)) | (Ok(n), None) => return Ok(n),
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
            (Err(e), None) => return Err(e),
        }
    }
}

/// Writes all of `data` to `dst`.
async fn write_out(dst: &TcpStream, mut data: &[u8], moved: &AtomicU64) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                data = &data[m..];
                moved.fetch_add(m as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Socket → pipe (0 at EOF). The pipe is empty here, so EAGAIN means the socket has no data. A
/// short splice means the socket is drained too: the closure reports it as WouldBlock so tokio
/// clears the readiness (as its own reads do after a short read) and the next call waits for
/// epoll instead of paying one more splice that would return EAGAIN.
async fn splice_in(src: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    loop {
        src.readable().await?;
        let mut short = None;
        let moved = src.try_io(Interest::READABLE, || {
            let n =
                splice_nonblocking(src.as_raw_fd(), pipe.write.as_raw_fd(), SPLICE_CHUNK_BYTES)?;
            if n > 0 && n < SPLICE_CHUNK_BYTES {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (moved, short) {
            (_, Some(n)) | (Ok(n), None) => return Ok(n),
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
            (Err(e), None) => return Err(e),
        }
    }
}

/// Pipe → socket, until the `n` bytes in the pipe are out. EAGAIN means the socket's send
/// buffer is full.
async fn splice_out(pipe: &Pipe, dst: &TcpStream, n: usize, moved: &AtomicU64) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        dst.writable().await?;
        match dst.try_io(Interest::WRITABLE, || {
            splice_nonblocking(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                left -= m;
                moved.fetch_add(m as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where [`relay`] counts the bytes it moved in each direction, as it moves them (so a stats
/// snapshot sees a transfer under way, and an error loses nothing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relayed<'a> {
    /// Bytes written to the upstream (read from the client).
    pub(crate) to_upstream: &'a AtomicU64,
    /// Bytes written to the client (read from the upstream).
    pub(crate) to_client: &'a AtomicU64,
}

/// Relays both directions between `client` and `upstream` (copying small messages, splicing
/// bulk through pipes of `pool`) until both have sent EOF (`Ok`) or either fails (`Err`, the
/// first error). The byte counts are added to `relayed` as they go, either way.
///
/// # Errors
/// The first I/O error of either direction (a reset is `ConnectionReset`).
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    pool: &PipePool,
    relayed: Relayed<'_>,
) -> io::Result<()> {
    TryJoin2::new(
        one_way(client, upstream, pool, relayed.to_upstream),
        one_way(upstream, client, pool, relayed.to_client),
    )
    .await
}

/// Which branch of a [`TryJoin2`] asked to be polled (bit 0: first, bit 1: second), and the
/// task to wake for it.
#[derive(Debug, Default)]
struct JoinWakes {
    woken: AtomicU8,
    task: Mutex<Option<Waker>>,
}

/// The waker a [`TryJoin2`] hands to one branch: it marks the branch and wakes the task.
struct BranchWaker {
    wakes: Arc<JoinWakes>,
    bit: u8,
}

impl Wake for BranchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.woken.fetch_or(self.bit, Ordering::AcqRel);
        if let Some(task) = lock_waker(&self.wakes.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

fn lock_waker(m: &Mutex<Option<Waker>>) -> std::sync::MutexGuard<'_, Option<Waker>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `try_join!` of the two directions of a relay, except that a wake-up polls only the branch
/// it was for: a message one way does not re-poll the other way's read readiness (with
/// `try_join!` that second poll — the join's `MaybeDone` and tokio's `Readiness` — was about
/// 4 % of the keep-alive forwarder's CPU). Ends with the first error, like `try_join!`.
struct TryJoin2<A, B> {
    a: Option<Pin<Box<A>>>,
    b: Option<Pin<Box<B>>>,
    wakes: Arc<JoinWakes>,
    waker_a: Waker,
    waker_b: Waker,
}

impl<A, B> TryJoin2<A, B>
where
    A: Future<Output = io::Result<()>>,
    B: Future<Output = io::Result<()>>,
{
    fn new(a: A, b: B) -> Self {
        let wakes = Arc::new(JoinWakes {
            woken: AtomicU8::new(0b11),
            task: Mutex::new(None),
        });
        let branch = |bit| {
            Waker::from(Arc::new(BranchWaker {
                wakes: Arc::clone(&wakes),
                bit,
            }))
        };
        TryJoin2 {
            a: Some(Box::pin(a)),
            b: Some(Box::pin(b)),
            waker_a: branch(0b01),
            waker_b: branch(0b10),
            wakes,
        }
    }
}

impl<A, B> Future for TryJoin2<A, B>
where
    A: Future<Output = io::Result<()>>,
    B: Future<Output = io::Result<()>>,
{
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut task = lock_waker(&self.wakes.task);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // Taken after the task's waker is in place: a branch woken later wakes the task again.
        let woken = self.wakes.woken.swap(0, Ordering::AcqRel);
        let this = &mut *self;
        if woken & 0b01 != 0 {
            poll_branch(&mut this.a, &this.waker_a)?;
        }
        if woken & 0b10 != 0 {
            poll_branch(&mut this.b, &this.waker_b)?;
        }
        if this.a.is_none() && this.b.is_none() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Polls one branch of a [`TryJoin2`] with its own waker, if it has not finished; a branch that
/// finishes is dropped. Its error, if any, is returned.
fn poll_branch<F>(branch: &mut Option<Pin<Box<F>>>, waker: &Waker) -> io::Result<()>
where
    F: Future<Output = io::Result<()>>,
{
    if let Some(f) = branch.as_mut() {
        if let Poll::Ready(result) = f.as_mut().poll(&mut Context::from_waker(waker)) {
            *branch = None;
            result?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn try_join2_polls_only_the_woken_branch() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let polls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let b_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a = async move {
            rx.await.map_err(|_| io::Error::other("dropped"))?;
            Ok(())
        };
        let b = std::future::poll_fn({
            let (polls, release, b_waker) = (polls.clone(), release.clone(), b_waker.clone());
            move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                *lock_waker(&b_waker) = Some(cx.waker().clone());
                if release.load(Ordering::SeqCst) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        });
        let join = tokio::spawn(TryJoin2::new(a, b));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lock_waker(&b_waker).is_none() {
            assert!(std::time::Instant::now() < deadline, "never polled");
            tokio::task::yield_now().await;
        }
        tx.send(()).expect("send");
        // Branch a completes on its wake-up; b, never woken, is not polled again.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        release.store(true, Ordering::SeqCst);
        lock_waker(&b_waker).take().expect("b's waker").wake();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), join)
            .await
            .expect("the join ends once b is woken and ready")
            .expect("task");
        assert!(result.is_ok());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_closes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (mut client, client_side) = pair(&listener).await;
        let (upstream_side, mut upstream) = pair(&listener).await;
        let pool = std::sync::Arc::new(PipePool::default());
        let relay_pool = std::sync::Arc::clone(&pool);
        let relay_task = tokio::spawn(async move {
            let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
            let relayed = Relayed {
                to_upstream: &to_upstream,
                to_client: &to_client,
            };
            let result = relay(&client_side, &upstream_side, &relay_pool, relayed).await;
            (
                result.is_ok(),
                to_upstream.into_inner(),
                to_client.into_inner(),
            )
        });
        // More than one pipe's worth each way, so the loop runs many times.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        upstream
            .read_to_end(&mut got)
            .await
            .expect("upstream reads to EOF");
        assert_eq!(
            got, big,
            "client → upstream bytes arrive unchanged, then EOF"
        );
        upstream.write_all(b"reply").await.expect("reply");
        upstream.shutdown().await.expect("upstream half-close");
        assert_eq!(writer.await.expect("writer"), b"reply");
        let (ok, to_upstream, to_client) = relay_task.await.expect("relay");
        assert!(ok);
        assert_eq!(
            pool.idle(),
            1,
            "the bulk direction's drained pipe is back in the pool; the 5-byte reply took none"
        );
        assert_eq!((to_upstream, to_client), (300_000, 5));
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (client, client_side) = pair(&listener).await;
        let (upstream_side, _upstream) = pair(&listener).await;
        let pool = std::sync::Arc::new(PipePool::default());
        let relay_pool = std::sync::Arc::clone(&pool);
        let relay_task = tokio::spawn(async move {
            let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
            let relayed = Relayed {
                to_upstream: &to_upstream,
                to_client: &to_client,
            };
            relay(&client_side, &upstream_side, &relay_pool, relayed).await
        });
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(client); // RST
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), relay_task)
            .await
            .expect("relay ends after the reset although the upstream stays open")
            .expect("task");
        assert!(result.is_err(), "a reset is an error: {result:?}");
        assert_eq!(
            pool.idle(),
            0,
            "no bulk data: no pipe was taken, none is pooled"
        );
    }
}
