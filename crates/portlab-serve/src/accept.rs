//! The accept loop shared by the server and both proxies: an optional connection limit
//! (a semaphore permit is taken before accept(), so excess clients wait in the kernel's
//! backlog, as mini-redis does), one task per connection, and a shutdown that stops accepting,
//! aborts the open connections and waits until their sockets are closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::net::add;

/// The connection counters every listener keeps.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    /// Connections accepted.
    pub(crate) accepted: AtomicU64,
    /// Connections whose task is still running.
    pub(crate) active: AtomicU64,
    /// accept() failures.
    pub(crate) accept_errors: AtomicU64,
}

/// Decrements the active gauge when a connection task ends or is aborted.
struct ActiveConn(Arc<ConnCounters>);

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` completes, running `handle(stream, peer, number)` for
/// each (number counts from 1 in accept order), at most `max_conns` at once, pausing
/// `accept_delay` after each accept (a slow acceptor: the rest wait in the backlog). Counts accepted,
/// active and failed accepts in `conns`; on fd or memory exhaustion the loop pauses briefly
/// instead of spinning.
pub(crate) async fn accept_loop<S, H, Fut>(
    listener: TcpListener,
    max_conns: Option<usize>,
    accept_delay: Option<Duration>,
    shutdown: S,
    conns: &Arc<ConnCounters>,
    mut handle: H,
) where
    S: Future<Output = ()>,
    H: FnMut(TcpStream, SocketAddr, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = max_conns.map(|n| Arc::new(Semaphore::new(n)));
    let mut tasks = JoinSet::new();
    let mut accepted = 0u64;
    tokio::pin!(shutdown);
    loop {
        let permit = match &limit {
            None => None,
            Some(sem) => tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = sem.clone().acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
            },
        };
        let accepted_conn = tokio::select! {
            biased;
            () = &mut shutdown => break,
            result = listener.accept() => result,
        };
        let (stream, peer) = match accepted_conn {
            Ok(conn) => conn,
            Err(err) => {
                add(&conns.accept_errors, 1);
                if is_resource_exhaustion(&err) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        accepted += 1;
        add(&conns.accepted, 1);
        add(&conns.active, 1);
        let active = ActiveConn(Arc::clone(conns));
        let conn = handle(stream, peer, accepted);
        tasks.spawn(async move {
            conn.await;
            drop((permit, active));
        });
        while tasks.try_join_next().is_some() {}
        if let Some(pause) = accept_delay {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
    drop(listener);
    tasks.shutdown().await;
}

/// Out of descriptors or memory: an accept loop pauses rather than spins.
pub(crate) fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
