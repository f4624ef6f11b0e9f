//! The upstream connection pool of the HTTP reverse proxy: at most `size` connections open
//! at once (idle + busy), idle ones reused last-in first-out, new ones opened only by a caller
//! holding a permit that found no idle connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::net::{add, connect_upstream, ClassCounters};
use crate::UpstreamErrorClass;

/// Pool counters, shared with every open connection (which keeps the `active` gauge right).
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    /// Connections opened over the whole run.
    pub(crate) opened: AtomicU64,
    /// Connections open now (idle + busy).
    pub(crate) active: AtomicU64,
    /// Most connections open at the same time.
    pub(crate) peak: AtomicU64,
    /// Checkouts served by an already-used connection.
    pub(crate) reuses: AtomicU64,
    /// Checkouts that had to wait for a permit.
    pub(crate) waits: AtomicU64,
    /// Failed connects, by class.
    pub(crate) connect_failures: ClassCounters,
}

/// Where and how the pool connects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) source_ip: Option<IpAddr>,
    pub(crate) connect_timeout: Duration,
}

/// An open upstream connection.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub(crate) stream: TcpStream,
    counters: Arc<PoolCounters>,
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamConn {
    /// An idle connection is usable if reading from it would block: EOF means the upstream
    /// closed it while idle, data means it sent something unasked.
    fn is_idle_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A connection taken from the pool with the permit that allows it. Dropping it closes the
/// connection; [`Pool::checkin`] keeps it for the next request.
pub(crate) struct Lease {
    pub(crate) conn: UpstreamConn,
    /// The connection had carried a request before.
    pub(crate) reused: bool,
    _permit: OwnedSemaphorePermit,
}

/// Why no upstream connection could be had.
pub(crate) enum CheckoutError {
    /// connect() failed.
    Connect(UpstreamErrorClass),
    /// No permit or no connection before the deadline.
    Timeout,
}

/// The pool.
#[derive(Debug)]
pub(crate) struct Pool {
    upstream: Upstream,
    idle: Mutex<Vec<UpstreamConn>>,
    permits: Arc<Semaphore>,
    pub(crate) counters: Arc<PoolCounters>,
}

impl Pool {
    /// An empty pool of at most `size` connections to `upstream`.
    pub(crate) fn new(upstream: Upstream, size: usize) -> Self {
        Pool {
            upstream,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
            counters: Arc::default(),
        }
    }

    /// Takes an idle connection (unless `fresh`) or opens one, waiting for a free slot until
    /// `deadline`.
    pub(crate) async fn checkout(
        &self,
        deadline: Instant,
        fresh: bool,
    ) -> Result<Lease, CheckoutError> {
        let permit = self.permit(deadline).await?;
        if !fresh {
            while let Some(conn) = self.pop_idle() {
                if conn.is_idle_alive() {
                    add(&self.counters.reuses, 1);
                    return Ok(Lease {
                        conn,
                        reused: true,
                        _permit: permit,
                    });
                }
            }
        }
        let up = self.upstream;
        let connect = connect_upstream(up.addr, up.source_ip, up.connect_timeout);
        match tokio::time::timeout_at(deadline, connect).await {
            Ok(Ok(stream)) => Ok(Lease {
                conn: self.track(stream),
                reused: false,
                _permit: permit,
            }),
            Ok(Err(err)) => {
                let class = UpstreamErrorClass::from_io(&err);
                self.counters.connect_failures.add(class);
                Err(CheckoutError::Connect(class))
            }
            Err(_) => Err(CheckoutError::Timeout),
        }
    }

    async fn permit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, CheckoutError> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(permit);
        }
        add(&self.counters.waits, 1);
        let wait = Arc::clone(&self.permits).acquire_owned();
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(CheckoutError::Timeout),
        }
    }

    /// Returns a connection whose last response was read completely; its permit is released
    /// only after the connection is back in the idle list.
    pub(crate) fn checkin(&self, lease: Lease) {
        let Lease { conn, _permit, .. } = lease;
        self.lock_idle().push(conn);
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        self.lock_idle().clear();
    }

    fn pop_idle(&self) -> Option<UpstreamConn> {
        self.lock_idle().pop()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<UpstreamConn>> {
        // A panic while holding the lock cannot leave the Vec inconsistent: keep using it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track(&self, stream: TcpStream) -> UpstreamConn {
        let c = &self.counters;
        add(&c.opened, 1);
        let now = c.active.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak.fetch_max(now, Ordering::Relaxed);
        UpstreamConn {
            stream,
            counters: Arc::clone(&self.counters),
        }
    }
}
