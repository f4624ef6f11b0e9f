//! portlab-errors: one failure taxonomy for every portlab component that opens connections —
//! the load engine (`portlab-load`), and the TCP forwarder and HTTP reverse proxy
//! (`portlab-serve`). Every failed attempt is mapped from its errno (or error kind) to one
//! [`ErrorClass`], counted by enum and never by message text, so a report groups 2,000
//! EADDRNOTAVAIL failures on one line instead of one line per local port.
//!
//! Two spellings of each class are stable: [`ErrorClass::name`] (`"AddrNotAvailable"`, the
//! `Serialize` form, used by `portlab load --json`) and [`ErrorClass::as_str`]
//! (`"addr_not_available"`, used as map keys by `portlab serve`/`proxy --json`; serialize such
//! maps with [`snake_case_keys`]).
//!
//! ```
//! use portlab_errors::{ErrorClass, Side};
//! let err = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
//! let class = ErrorClass::from_io(&err);
//! assert_eq!(class, ErrorClass::AddrNotAvailable);
//! assert_eq!((class.name(), class.as_str()), ("AddrNotAvailable", "addr_not_available"));
//! assert_eq!(class.side(), Side::Local);
//! ```

use std::fmt;
use std::io;

use serde::{Serialize, Serializer};

/// Why a request attempt failed. Built from `io::Error::raw_os_error()` (Linux errno values from
/// `include/uapi/asm-generic/errno*.h`) or from the engine's own timeouts and parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// EADDRNOTAVAIL from connect(): no free ephemeral port for this 4-tuple
    /// (net/ipv4/inet_hashtables.c: `__inet_hash_connect()` returns -EADDRNOTAVAIL).
    AddrNotAvailable,
    /// EADDRINUSE: the local address/port is taken (bind() to a busy port, or a bound socket's
    /// 4-tuple clash at connect()).
    AddrInUse,
    /// ECONNREFUSED: the peer answered the SYN with a RST (nothing listening, or backlog full on
    /// some systems).
    ConnectionRefused,
    /// ECONNRESET or EPIPE: the peer reset or closed the connection while we were writing or
    /// reading.
    ConnectionReset,
    /// connect() (TCP handshake, plus TLS handshake for https) took longer than the connect
    /// timeout, or failed with ETIMEDOUT.
    ConnectTimeout,
    /// The response did not arrive completely within the request timeout.
    ResponseTimeout,
    /// EMFILE or ENFILE: the process or system ran out of file descriptors.
    TooManyOpenFiles,
    /// ENOBUFS (or ENOMEM from the socket layer): the kernel could not allocate socket memory.
    NoBufferSpace,
    /// ENETUNREACH or EHOSTUNREACH: no route to the destination.
    Unreachable,
    /// The server closed the connection before a complete response, or sent bytes that are not a
    /// valid HTTP/1.1 response.
    Protocol,
    /// The TLS handshake or a TLS record failed (certificate, alert, bad record).
    Tls,
    /// EACCES or EPERM: a firewall rule (netfilter REJECT with admin-prohibited, or a
    /// cgroup/LSM hook) or a permission check refused the operation.
    PermissionDenied,
    /// The HTTP proxy (`-x`) answered `CONNECT` with a status other than 2xx, or not with HTTP.
    ProxyRefused,
    /// HTTP/2: the server sent GOAWAY (RFC 9113 §6.8) and the request's stream was above its
    /// last processed stream id, or the connection ended with an error before the response.
    GoAway,
    /// HTTP/2: the server reset the request's stream with RST_STREAM (RFC 9113 §6.4), e.g.
    /// REFUSED_STREAM above its SETTINGS_MAX_CONCURRENT_STREAMS.
    StreamReset,
    /// HTTP/2 flow control: the peer granted no window for the request body within the
    /// request timeout, or it reported FLOW_CONTROL_ERROR (RFC 9113 §5.2, §6.9).
    FlowControl,
    /// Any other errno, kept by number (0: an error without errno).
    Other(i32),
}

/// Which side of the connection a failure points at (pingora's `ErrorSource` idea): the local
/// host (ports, descriptors, memory) or the remote server and the path to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A local resource ran out or a local setting refused the operation.
    Local,
    /// The server or the network path failed.
    Remote,
    /// The HTTP proxy the requests go through (`-x`), or the path to it.
    Proxy,
    /// Could be either.
    Unknown,
}

impl ErrorClass {
    /// Every class once, in declaration order (`Other` as `Other(0)`); `ALL[c.index()]` is
    /// `c` for every class but `Other(n)`, which shares the last slot.
    pub const ALL: [ErrorClass; 17] = [
        ErrorClass::AddrNotAvailable,
        ErrorClass::AddrInUse,
        ErrorClass::ConnectionRefused,
        ErrorClass::ConnectionReset,
        ErrorClass::ConnectTimeout,
        ErrorClass::ResponseTimeout,
        ErrorClass::TooManyOpenFiles,
        ErrorClass::NoBufferSpace,
        ErrorClass::Unreachable,
        ErrorClass::Protocol,
        ErrorClass::Tls,
        ErrorClass::PermissionDenied,
        ErrorClass::ProxyRefused,
        ErrorClass::GoAway,
        ErrorClass::StreamReset,
        ErrorClass::FlowControl,
        ErrorClass::Other(0),
    ];

    /// The class whose [`ErrorClass::name`] is `name` (`"Other"` is `Other(0)`).
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Position in [`ErrorClass::ALL`], for arrays of counters (every `Other(n)` is the last).
    pub fn index(self) -> usize {
        match self {
            ErrorClass::AddrNotAvailable => 0,
            ErrorClass::AddrInUse => 1,
            ErrorClass::ConnectionRefused => 2,
            ErrorClass::ConnectionReset => 3,
            ErrorClass::ConnectTimeout => 4,
            ErrorClass::ResponseTimeout => 5,
            ErrorClass::TooManyOpenFiles => 6,
            ErrorClass::NoBufferSpace => 7,
            ErrorClass::Unreachable => 8,
            ErrorClass::Protocol => 9,
            ErrorClass::Tls => 10,
            ErrorClass::PermissionDenied => 11,
            ErrorClass::ProxyRefused => 12,
            ErrorClass::GoAway => 13,
            ErrorClass::StreamReset => 14,
            ErrorClass::FlowControl => 15,
            ErrorClass::Other(_) => 16,
        }
    }

    /// Maps an I/O error to its class by errno (`raw_os_error`), falling back to the error kind
    /// for errors that carry no errno (rustls errors, unexpected EOF, timeouts).
    pub fn from_io(err: &io::Error) -> Self {
        if let Some(errno) = err.raw_os_error() {
            return Self::from_errno(errno);
        }
        match err.kind() {
            io::ErrorKind::TimedOut => ErrorClass::ConnectTimeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => ErrorClass::ConnectionReset,
            io::ErrorKind::ConnectionRefused => ErrorClass::ConnectionRefused,
            io::ErrorKind::AddrNotAvailable => ErrorClass::AddrNotAvailable,
            io::ErrorKind::AddrInUse => ErrorClass::AddrInUse,
            io::ErrorKind::PermissionDenied => ErrorClass::PermissionDenied,
            io::ErrorKind::UnexpectedEof => ErrorClass::Protocol,
            io::ErrorKind::InvalidData if is_tls_error(err) => ErrorClass::Tls,
            io::ErrorKind::InvalidData => ErrorClass::Protocol,
            _ => ErrorClass::Other(0),
        }
    }

    /// Maps a Linux errno to its class.
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::EADDRNOTAVAIL => ErrorClass::AddrNotAvailable,
            libc::EADDRINUSE => ErrorClass::AddrInUse,
            libc::ECONNREFUSED => ErrorClass::ConnectionRefused,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => ErrorClass::ConnectionReset,
            libc::ETIMEDOUT => ErrorClass::ConnectTimeout,
            libc::EMFILE | libc::ENFILE => ErrorClass::TooManyOpenFiles,
            libc::ENOBUFS | libc::ENOMEM => ErrorClass::NoBufferSpace,
            libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN => ErrorClass::Unreachable,
            libc::EACCES | libc::EPERM => ErrorClass::PermissionDenied,
            other => ErrorClass::Other(other),
        }
    }

    /// Stable name used in text and JSON (`"AddrNotAvailable"`, `"Other"`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::AddrNotAvailable => "AddrNotAvailable",
            ErrorClass::AddrInUse => "AddrInUse",
            ErrorClass::ConnectionRefused => "ConnectionRefused",
            ErrorClass::ConnectionReset => "ConnectionReset",
            ErrorClass::ConnectTimeout => "ConnectTimeout",
            ErrorClass::ResponseTimeout => "ResponseTimeout",
            ErrorClass::TooManyOpenFiles => "TooManyOpenFiles",
            ErrorClass::NoBufferSpace => "NoBufferSpace",
            ErrorClass::Unreachable => "Unreachable",
            ErrorClass::Protocol => "Protocol",
            ErrorClass::Tls => "Tls",
            ErrorClass::PermissionDenied => "PermissionDenied",
            ErrorClass::ProxyRefused => "ProxyRefused",
            ErrorClass::GoAway => "GoAway",
            ErrorClass::StreamReset => "StreamReset",
            ErrorClass::FlowControl => "FlowControl",
            ErrorClass::Other(_) => "Other",
        }
    }

    /// The snake_case name (`"addr_not_available"`), the stable key of the server's and the
    /// proxies' JSON stats (`upstream_connect_failures`, `relay_errors`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::AddrNotAvailable => "addr_not_available",
            ErrorClass::AddrInUse => "addr_in_use",
            ErrorClass::ConnectionRefused => "connection_refused",
            ErrorClass::ConnectionReset => "connection_reset",
            ErrorClass::ConnectTimeout => "connect_timeout",
            ErrorClass::ResponseTimeout => "response_timeout",
            ErrorClass::TooManyOpenFiles => "too_many_open_files",
            ErrorClass::NoBufferSpace => "no_buffer_space",
            ErrorClass::Unreachable => "unreachable",
            ErrorClass::Protocol => "protocol",
            ErrorClass::Tls => "tls",
            ErrorClass::PermissionDenied => "permission_denied",
            ErrorClass::ProxyRefused => "proxy_refused",
            ErrorClass::GoAway => "go_away",
            ErrorClass::StreamReset => "stream_reset",
            ErrorClass::FlowControl => "flow_control",
            ErrorClass::Other(_) => "other",
        }
    }

    /// The errno number behind the class, when one errno stands for it (the first listed when
    /// several map to the class, e.g. ECONNRESET for `ConnectionReset`).
    pub fn errno(self) -> Option<i32> {
        match self {
            ErrorClass::AddrNotAvailable => Some(libc::EADDRNOTAVAIL),
            ErrorClass::AddrInUse => Some(libc::EADDRINUSE),
            ErrorClass::ConnectionRefused => Some(libc::ECONNREFUSED),
            ErrorClass::ConnectionReset => Some(libc::ECONNRESET),
            ErrorClass::TooManyOpenFiles => Some(libc::EMFILE),
            ErrorClass::NoBufferSpace => Some(libc::ENOBUFS),
            ErrorClass::Unreachable => Some(libc::ENETUNREACH),
            ErrorClass::PermissionDenied => Some(libc::EACCES),
            ErrorClass::Other(0) => None,
            ErrorClass::Other(n) => Some(n),
            ErrorClass::ConnectTimeout
            | ErrorClass::ResponseTimeout
            | ErrorClass::Protocol
            | ErrorClass::ProxyRefused
            | ErrorClass::GoAway
            | ErrorClass::StreamReset
            | ErrorClass::FlowControl
            | ErrorClass::Tls => None,
        }
    }

    /// Symbolic errno name(s) for the class (`"EADDRNOTAVAIL"`, `"ECONNRESET/EPIPE"`), or a
    /// short tag for failures that have no errno (`"timeout"`, `"http"`, `"tls"`).
    pub fn errno_name(self) -> String {
        let fixed = match self {
            ErrorClass::AddrNotAvailable => "EADDRNOTAVAIL",
            ErrorClass::AddrInUse => "EADDRINUSE",
            ErrorClass::ConnectionRefused => "ECONNREFUSED",
            ErrorClass::ConnectionReset => "ECONNRESET/EPIPE",
            ErrorClass::ConnectTimeout => "ETIMEDOUT/connect timeout",
            ErrorClass::ResponseTimeout => "response timeout",
            ErrorClass::TooManyOpenFiles => "EMFILE/ENFILE",
            ErrorClass::NoBufferSpace => "ENOBUFS",
            ErrorClass::Unreachable => "ENETUNREACH/EHOSTUNREACH",
            ErrorClass::Protocol => "http",
            ErrorClass::Tls => "tls",
            ErrorClass::PermissionDenied => "EACCES/EPERM",
            ErrorClass::ProxyRefused => "proxy CONNECT status",
            ErrorClass::GoAway => "h2 GOAWAY",
            ErrorClass::StreamReset => "h2 RST_STREAM",
            ErrorClass::FlowControl => "h2 flow control",
            ErrorClass::Other(0) => "no errno",
            ErrorClass::Other(n) => return errno_symbol(n),
        };
        fixed.to_string()
    }

    /// What the failure means, in plain words, for the report.
    pub fn meaning(self) -> &'static str {
        match self {
            ErrorClass::AddrNotAvailable => {
                "no free local port for this destination: ephemeral ports exhausted"
            }
            ErrorClass::AddrInUse => {
                "local address and port already in use (a bound port or 4-tuple is taken)"
            }
            ErrorClass::ConnectionRefused => {
                "the server refused the connection: nothing listening, or its queue is full"
            }
            ErrorClass::ConnectionReset => {
                "the server (or a middlebox) reset or closed the connection"
            }
            ErrorClass::ConnectTimeout => {
                "the connection was not established within the connect timeout"
            }
            ErrorClass::ResponseTimeout => "the response did not arrive within the request timeout",
            ErrorClass::TooManyOpenFiles => {
                "out of file descriptors: raise `ulimit -n` or lower the concurrency"
            }
            ErrorClass::NoBufferSpace => "the kernel ran out of socket buffer memory",
            ErrorClass::Unreachable => "no route to the destination network or host",
            ErrorClass::Protocol => {
                "the server closed the connection before a full response, or sent invalid HTTP"
            }
            ErrorClass::Tls => "the TLS handshake or a TLS record failed",
            ErrorClass::PermissionDenied => {
                "a firewall rule or a permission check refused the connection"
            }
            ErrorClass::ProxyRefused => {
                "the HTTP proxy refused to open a CONNECT tunnel to the target (non-2xx answer)"
            }
            ErrorClass::GoAway => {
                "HTTP/2: the server sent GOAWAY (or the connection failed) before answering"
            }
            ErrorClass::StreamReset => "HTTP/2: the server reset the stream (RST_STREAM)",
            ErrorClass::FlowControl => {
                "HTTP/2: flow control stalled (no window granted in time, or FLOW_CONTROL_ERROR)"
            }
            ErrorClass::Other(_) => "another operating-system error",
        }
    }

    /// One line for a proxy's upstream leg (`portlab proxy` text stats): what the class means
    /// there, with its errno.
    pub fn explain(self) -> &'static str {
        match self {
            ErrorClass::AddrNotAvailable => {
                "no free local port for this destination: ephemeral ports exhausted (EADDRNOTAVAIL)"
            }
            ErrorClass::AddrInUse => "source address already in use (EADDRINUSE)",
            ErrorClass::ConnectionRefused => "upstream refused the connection (ECONNREFUSED)",
            ErrorClass::ConnectionReset => "upstream reset the connection (ECONNRESET)",
            ErrorClass::ConnectTimeout => "upstream did not answer in time (ETIMEDOUT)",
            ErrorClass::TooManyOpenFiles => "out of file descriptors (EMFILE/ENFILE)",
            ErrorClass::NoBufferSpace => "kernel out of socket buffer space (ENOBUFS)",
            ErrorClass::Unreachable => "no route to the upstream (EHOSTUNREACH/ENETUNREACH)",
            ErrorClass::PermissionDenied => "connect refused by a permission check (EACCES/EPERM)",
            ErrorClass::ResponseTimeout
            | ErrorClass::Protocol
            | ErrorClass::Tls
            | ErrorClass::ProxyRefused
            | ErrorClass::GoAway
            | ErrorClass::StreamReset
            | ErrorClass::FlowControl => self.meaning(),
            ErrorClass::Other(_) => "other error",
        }
    }

    /// Whose side the failure points at.
    pub fn side(self) -> Side {
        match self {
            ErrorClass::AddrNotAvailable
            | ErrorClass::AddrInUse
            | ErrorClass::TooManyOpenFiles
            | ErrorClass::NoBufferSpace
            | ErrorClass::PermissionDenied => Side::Local,
            ErrorClass::ProxyRefused => Side::Proxy,
            ErrorClass::ConnectionRefused
            | ErrorClass::ConnectionReset
            | ErrorClass::ResponseTimeout
            | ErrorClass::Protocol
            | ErrorClass::GoAway
            | ErrorClass::StreamReset
            | ErrorClass::FlowControl
            | ErrorClass::Tls => Side::Remote,
            ErrorClass::ConnectTimeout | ErrorClass::Unreachable | ErrorClass::Other(_) => {
                Side::Unknown
            }
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorClass::Other(n) => write!(f, "Other({n})"),
            other => f.write_str(other.name()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ErrorClass {
    /// From [`ErrorClass::name`]; `"Other"` reads as `Other(0)` (reports keep the errno beside
    /// the class).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ErrorClass::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error class {name:?}")))
    }
}

impl Serialize for ErrorClass {
    /// As [`ErrorClass::name`] (`"AddrNotAvailable"`).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Serializes a count per class keyed by [`ErrorClass::as_str`] (`{"addr_not_available": 3}`),
/// summing `Other(n)` of every `n` under `"other"`. Use with
/// `#[serde(serialize_with = "portlab_errors::snake_case_keys")]`.
///
/// # Errors
/// Those of the serializer.
pub fn snake_case_keys<S: Serializer>(
    map: &std::collections::BTreeMap<ErrorClass, u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut by_name: Vec<(&'static str, u64)> = Vec::with_capacity(map.len());
    for (class, n) in map {
        match by_name.iter_mut().find(|(k, _)| *k == class.as_str()) {
            Some((_, total)) => *total += n,
            None => by_name.push((class.as_str(), *n)),
        }
    }
    let mut out = serializer.serialize_map(Some(by_name.len()))?;
    for (k, v) in by_name {
        out.serialize_entry(k, &v)?;
    }
    out.end()
}

fn is_tls_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// Symbolic name of an errno not covered by a class, for `Other(n)`.
fn errno_symbol(n: i32) -> String {
    let name = match n {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ENOTCONN => "ENOTCONN",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETRESET => "ENETRESET",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EPROTO => "EPROTO",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EALREADY => "EALREADY",
        libc::EISCONN => "EISCONN",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_class() {
        let cases = [
            (libc::EADDRNOTAVAIL, ErrorClass::AddrNotAvailable),
            (libc::EADDRINUSE, ErrorClass::AddrInUse),
            (libc::ECONNREFUSED, ErrorClass::ConnectionRefused),
            (libc::ECONNRESET, ErrorClass::ConnectionReset),
            (libc::EPIPE, ErrorClass::ConnectionReset),
            (libc::ETIMEDOUT, ErrorClass::ConnectTimeout),
            (libc::EMFILE, ErrorClass::TooManyOpenFiles),
            (libc::ENFILE, ErrorClass::TooManyOpenFiles),
            (libc::ENOBUFS, ErrorClass::NoBufferSpace),
            (libc::ENETUNREACH, ErrorClass::Unreachable),
            (libc::EHOSTUNREACH, ErrorClass::Unreachable),
            (libc::EPERM, ErrorClass::PermissionDenied),
            (libc::ENETDOWN, ErrorClass::Unreachable),
            (libc::EPROTO, ErrorClass::Other(libc::EPROTO)),
        ];
        for (errno, class) in cases {
            let err = io::Error::from_raw_os_error(errno);
            assert_eq!(ErrorClass::from_io(&err), class, "errno {errno}");
        }
    }

    #[test]
    fn classes_without_errno_come_from_kind() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(ErrorClass::from_io(&eof), ErrorClass::Protocol);
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(ErrorClass::from_io(&tls), ErrorClass::Tls);
    }

    #[test]
    fn names_and_meanings_are_stable() {
        let c = ErrorClass::AddrNotAvailable;
        assert_eq!(c.errno_name(), "EADDRNOTAVAIL");
        assert!(c.meaning().contains("ephemeral ports exhausted"));
        assert_eq!(c.side(), Side::Local);
        assert_eq!(ErrorClass::Other(libc::EPERM).errno_name(), "EPERM");
        assert_eq!(ErrorClass::ProxyRefused.side(), Side::Proxy);
        assert_eq!(ErrorClass::Other(4242).errno_name(), "errno 4242");
        assert_eq!(ErrorClass::Other(7).to_string(), "Other(7)");
    }

    #[test]
    fn all_is_indexed_and_both_spellings_are_unique() {
        for (i, class) in ErrorClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), i);
        }
        assert_eq!(ErrorClass::Other(99).index(), ErrorClass::Other(0).index());
        let mut names: Vec<_> = ErrorClass::ALL.iter().map(|c| c.name()).collect();
        let mut snakes: Vec<_> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        names.dedup();
        snakes.sort_unstable();
        snakes.dedup();
        assert_eq!((names.len(), snakes.len()), (17, 17));
    }

    #[test]
    fn snake_case_maps_sum_other() {
        #[derive(Serialize)]
        struct S {
            #[serde(serialize_with = "snake_case_keys")]
            m: std::collections::BTreeMap<ErrorClass, u64>,
        }
        let m = [
            (ErrorClass::AddrNotAvailable, 3),
            (ErrorClass::Other(5), 1),
            (ErrorClass::Other(7), 2),
        ]
        .into_iter()
        .collect();
        let json = serde_json::to_string(&S { m }).expect("json");
        assert_eq!(json, r#"{"m":{"addr_not_available":3,"other":3}}"#);
    }
}
