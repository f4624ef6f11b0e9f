//! Socket plumbing shared by the server and both proxies: listeners with a chosen backlog,
//! upstream connects with an optional source IP, and per-class failure counters.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::UpstreamErrorClass;

/// Backlog used when the caller does not choose one (Linux caps it at `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// A listener could not be set up on `addr`.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address we tried to bind.
    pub addr: SocketAddr,
    /// The socket(), bind() or listen() error.
    #[source]
    pub source: io::Error,
}

impl BindError {
    /// True when the failure is the user's to fix (address in use, not local, privileged port):
    /// the CLI reports those as usage errors (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self.source.kind(),
            io::ErrorKind::AddrInUse
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::PermissionDenied
                | io::ErrorKind::InvalidInput
        )
    }
}

/// Binds a non-blocking TCP listener on `addr` with `SO_REUSEADDR` (so a restarted server
/// does not trip over its own TIME_WAIT sockets) and the given listen backlog.
/// An IPv6 address listens on IPv6 only (`IPV6_V6ONLY`), so `[::]` and `0.0.0.0` can coexist.
///
/// # Errors
/// [`BindError`] carrying the address and the errno (EADDRINUSE, EACCES, EADDRNOTAVAIL, …).
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, BindError> {
    let wrap = |source| BindError { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(wrap)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(wrap)?;
    }
    socket.set_reuse_address(true).map_err(wrap)?;
    socket.set_nonblocking(true).map_err(wrap)?;
    socket.bind(&addr.into()).map_err(wrap)?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(wrap)?;
    Ok(socket.into())
}

/// `IP_BIND_ADDRESS_NO_PORT` (include/uapi/linux/in.h: 24): bind() fixes only the source IP
/// and leaves the port choice to connect(), which keeps the per-4-tuple port pool instead of
/// reserving a port for every destination.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Connects to `upstream`, from `source_ip` when given (bound with
/// `IP_BIND_ADDRESS_NO_PORT`, then `ip:0`), within `timeout`. Sets `TCP_NODELAY`.
///
/// # Errors
/// The socket/bind/connect error (classify it with [`UpstreamErrorClass::from_io`]); a timeout
/// is `ErrorKind::TimedOut`.
pub async fn connect_upstream(
    upstream: SocketAddr,
    source_ip: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if upstream.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source_ip {
        bind_source_ip(&socket, ip)?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(upstream)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream connect timed out",
            ))
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn bind_source_ip(socket: &TcpSocket, ip: IpAddr) -> io::Result<()> {
    bind_source_ip_raw(std::os::fd::AsFd::as_fd(socket), ip)
}

/// Binds the unconnected TCP socket `socket` to `ip:0` with `IP_BIND_ADDRESS_NO_PORT` set, so the
/// port is still chosen by connect() per destination.
///
/// # Errors
/// setsockopt(2)'s or bind(2)'s error (EADDRNOTAVAIL: `ip` is not on this host).
pub(crate) fn bind_source_ip_raw(
    socket: std::os::fd::BorrowedFd<'_>,
    ip: IpAddr,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket the caller owns, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket2::SockRef::from(&socket).bind(&SocketAddr::new(ip, 0).into())
}

/// One counter per [`UpstreamErrorClass`], shared between connection tasks.
#[derive(Debug, Default)]
pub(crate) struct ClassCounters([AtomicU64; UpstreamErrorClass::ALL.len()]);

impl ClassCounters {
    pub(crate) fn add(&self, class: UpstreamErrorClass) {
        self.0[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The non-zero counters, keyed by class.
    pub(crate) fn snapshot(&self) -> BTreeMap<UpstreamErrorClass, u64> {
        UpstreamErrorClass::ALL
            .iter()
            .filter_map(|&class| {
                let n = self.0[class.index()].load(Ordering::Relaxed);
                (n > 0).then_some((class, n))
            })
            .collect()
    }
}

/// Reads an atomic counter (Relaxed: counters are statistics, not synchronisation).
pub(crate) fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Adds to an atomic counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
