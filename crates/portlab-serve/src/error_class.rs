//! Classification of upstream-leg failures by errno, so that a proxy whose upstream leg runs
//! out of ephemeral ports says so instead of printing an opaque message.
//!
//! This is a small self-contained enum for now; `portlab-load` has its own `ErrorClass` and
//! the two are meant to be unified later.

use std::fmt;
use std::io;

use serde::Serialize;

/// Why a connect (or relay) on the upstream leg failed, derived from the errno.
///
/// Serialized in snake_case (`"addr_not_available"`), which is the stable name used in
/// `--json` output and as map keys in the stats structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamErrorClass {
    /// `EADDRNOTAVAIL`: connect() found no free local port for this destination
    /// (net/ipv4/inet_hashtables.c: `__inet_hash_connect()` returns it when every port of
    /// `ip_local_port_range` is taken for the 4-tuple), or `--source-ip` is not local.
    AddrNotAvailable,
    /// `EADDRINUSE`: bind() of the source address failed (the port is held for all
    /// destinations once bound without `IP_BIND_ADDRESS_NO_PORT`).
    AddrInUse,
    /// `ECONNREFUSED`: nothing listens on the upstream address (RST to our SYN).
    ConnectionRefused,
    /// `ECONNRESET` / `EPIPE` / `ECONNABORTED`: the upstream reset the connection.
    ConnectionReset,
    /// `ETIMEDOUT` or our own connect timeout: no answer to the SYN in time.
    ConnectTimeout,
    /// `EMFILE` / `ENFILE`: out of file descriptors (process or system limit).
    TooManyOpenFiles,
    /// `ENOBUFS` / `ENOMEM`: the kernel could not allocate socket memory.
    NoBufferSpace,
    /// `EHOSTUNREACH` / `ENETUNREACH` / `ENETDOWN`: no route to the upstream.
    Unreachable,
    /// `EACCES` / `EPERM`: a firewall or a permission check refused the operation.
    PermissionDenied,
    /// Any other errno (or an error without one).
    Other,
}

impl UpstreamErrorClass {
    /// Every class, in declaration order (index = `self as usize`).
    pub const ALL: [UpstreamErrorClass; 10] = [
        Self::AddrNotAvailable,
        Self::AddrInUse,
        Self::ConnectionRefused,
        Self::ConnectionReset,
        Self::ConnectTimeout,
        Self::TooManyOpenFiles,
        Self::NoBufferSpace,
        Self::Unreachable,
        Self::PermissionDenied,
        Self::Other,
    ];

    /// Classifies an errno value (`libc::E*`).
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::EADDRNOTAVAIL => Self::AddrNotAvailable,
            libc::EADDRINUSE => Self::AddrInUse,
            libc::ECONNREFUSED => Self::ConnectionRefused,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => Self::ConnectionReset,
            libc::ETIMEDOUT => Self::ConnectTimeout,
            libc::EMFILE | libc::ENFILE => Self::TooManyOpenFiles,
            libc::ENOBUFS | libc::ENOMEM => Self::NoBufferSpace,
            libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENETDOWN => Self::Unreachable,
            libc::EACCES | libc::EPERM => Self::PermissionDenied,
            _ => Self::Other,
        }
    }

    /// Classifies an I/O error by its errno, falling back on its kind (our own timeouts
    /// carry `ErrorKind::TimedOut` and no errno).
    pub fn from_io(err: &io::Error) -> Self {
        if let Some(errno) = err.raw_os_error() {
            return Self::from_errno(errno);
        }
        match err.kind() {
            io::ErrorKind::TimedOut => Self::ConnectTimeout,
            io::ErrorKind::ConnectionRefused => Self::ConnectionRefused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Self::ConnectionReset,
            io::ErrorKind::AddrNotAvailable => Self::AddrNotAvailable,
            io::ErrorKind::AddrInUse => Self::AddrInUse,
            io::ErrorKind::PermissionDenied => Self::PermissionDenied,
            _ => Self::Other,
        }
    }

    /// The stable snake_case name used in JSON (`"addr_not_available"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddrNotAvailable => "addr_not_available",
            Self::AddrInUse => "addr_in_use",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionReset => "connection_reset",
            Self::ConnectTimeout => "connect_timeout",
            Self::TooManyOpenFiles => "too_many_open_files",
            Self::NoBufferSpace => "no_buffer_space",
            Self::Unreachable => "unreachable",
            Self::PermissionDenied => "permission_denied",
            Self::Other => "other",
        }
    }

    /// One line for a human: what the class means for the upstream leg.
    pub fn explain(self) -> &'static str {
        match self {
            Self::AddrNotAvailable => {
                "no free local port for this destination: ephemeral ports exhausted (EADDRNOTAVAIL)"
            }
            Self::AddrInUse => "source address already in use (EADDRINUSE)",
            Self::ConnectionRefused => "upstream refused the connection (ECONNREFUSED)",
            Self::ConnectionReset => "upstream reset the connection (ECONNRESET)",
            Self::ConnectTimeout => "upstream did not answer in time (ETIMEDOUT)",
            Self::TooManyOpenFiles => "out of file descriptors (EMFILE/ENFILE)",
            Self::NoBufferSpace => "kernel out of socket buffer space (ENOBUFS)",
            Self::Unreachable => "no route to the upstream (EHOSTUNREACH/ENETUNREACH)",
            Self::PermissionDenied => "connect refused by a permission check (EACCES/EPERM)",
            Self::Other => "other error",
        }
    }
}

impl fmt::Display for UpstreamErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_class() {
        assert_eq!(
            UpstreamErrorClass::from_errno(libc::EADDRNOTAVAIL),
            UpstreamErrorClass::AddrNotAvailable
        );
        assert_eq!(
            UpstreamErrorClass::from_io(&io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            UpstreamErrorClass::ConnectionRefused
        );
        assert_eq!(
            UpstreamErrorClass::from_io(&io::Error::from(io::ErrorKind::TimedOut)),
            UpstreamErrorClass::ConnectTimeout
        );
        assert_eq!(
            UpstreamErrorClass::from_errno(9999),
            UpstreamErrorClass::Other
        );
    }

    #[test]
    fn all_is_indexed_by_discriminant() {
        for (i, class) in UpstreamErrorClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
    }
}
