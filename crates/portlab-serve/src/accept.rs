//! The accept loop shared by the server and both proxies: an optional connection limit
//! (a semaphore permit is taken before accept(), so excess clients wait in the kernel's
//! backlog, as mini-redis does), one task per connection, and a shutdown that stops accepting,
//! aborts the open connections and waits until their sockets are closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::net::add;

/// Accepts connections until `shutdown` completes, running `handle(stream, peer, number)` for
/// each (number counts from 1 in accept order). Failed accepts are counted in `accept_errors`;
/// on fd or memory exhaustion the loop pauses briefly instead of spinning.
pub(crate) async fn accept_loop<S, H, Fut>(
    listener: TcpListener,
    limit: Option<Arc<Semaphore>>,
    shutdown: S,
    accept_errors: &AtomicU64,
    mut handle: H,
) where
    S: Future<Output = ()>,
    H: FnMut(TcpStream, SocketAddr, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
                add(accept_errors, 1);
                if is_resource_exhaustion(&err) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        accepted += 1;
        let conn = handle(stream, peer, accepted);
        tasks.spawn(async move {
            conn.await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    tasks.shutdown().await;
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
