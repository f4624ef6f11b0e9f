//! Error lines of load testers and runtimes mapped to an [`ErrorClass`] and the OS whose
//! numbers and texts they carry (research/error-strings.md): EADDRNOTAVAIL is 99 on Linux,
//! 49 on macOS and WSAEADDRNOTAVAIL 10049 on Windows, where port exhaustion reads 10055
//! (WSAENOBUFS) or 10048 (WSAEADDRINUSE). Matching is case-insensitive on the texts each
//! runtime prints (Go lowercases, CPython strips the period, localised Windows texts).

use portlab_load::ErrorClass;
use serde::Serialize;

use crate::SourceOs;

/// The call an error line says failed, where it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// connect()/ConnectEx (`connect:`, `connectex:`, `apr_socket_connect`, `: connect`).
    Connect,
    /// bind(): on Windows Go binds the wildcard before ConnectEx, so `bind:` with 10055 is
    /// still the implicit bind of a client (error-strings.md §0.1).
    Bind,
    /// listen()/a server's bind to a fixed port: a server look-alike.
    Listen,
    /// read()/recv()/wsarecv.
    Read,
    /// write()/send()/wsasend.
    Write,
}

/// One classified error line (or one hey/oha distribution line with its count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorHit {
    /// The class.
    pub class: ErrorClass,
    /// The OS the numbers or texts prove, where they do.
    pub os: Option<SourceOs>,
    /// The OS's error number (errno, WSA code) where the line has or implies one.
    pub os_code: Option<i32>,
    /// The failed call, where the line says.
    pub call: Option<Call>,
    /// How many failures the line stands for (hey `[2376]`, wrk `connect 157`).
    pub count: u64,
    /// The destination was IPv6 loopback: EADDRNOTAVAIL there is "no IPv6", not exhaustion
    /// (error-strings.md §12 rule 1).
    pub ipv6_loopback: bool,
}

struct Rule {
    needles: &'static [&'static str],
    class: ErrorClass,
    os: Option<SourceOs>,
    code: Option<i32>,
}

const W: Option<SourceOs> = Some(SourceOs::Windows);

/// Windows texts (FormatMessage en-US and the localised ones of error-strings.md §10), JDK and
/// libuv spellings. Checked before the Unix texts: `Address already in use: connect` is Java
/// on Windows.
const WINDOWS_RULES: &[Rule] = &[
    Rule {
        needles: &[
            "lacked sufficient buffer space",
            "maximum connections reached",
            "wsaenobufs",
            "10055",
            "-4060",
            "系统缓冲区空间不足",
        ],
        class: ErrorClass::NoBufferSpace,
        os: W,
        code: Some(10055),
    },
    Rule {
        needles: &[
            "only one usage of each socket address",
            "address already in use: connect",
            "wsaeaddrinuse",
            "10048",
            "-4091",
            "nur jeweils einmal verwendet",
            "solo se permite un uso de cada",
            "只允许使用一次",
            "只允 许使用一次",
        ],
        class: ErrorClass::AddrInUse,
        os: W,
        code: Some(10048),
    },
    Rule {
        needles: &[
            "not valid in its context",
            "wsaeaddrnotavail",
            "10049",
            "-4090",
        ],
        class: ErrorClass::AddrNotAvailable,
        os: W,
        code: Some(10049),
    },
    Rule {
        needles: &[
            "actively refused",
            "connection refused: connect",
            "connection refused: no further information",
            "wsaeconnrefused",
            "10061",
            "-4078",
            "积极拒绝",
            "expressément refusée",
            "denegó expresamente",
            "отверг запрос",
            "によって拒否されたため",
        ],
        class: ErrorClass::ConnectionRefused,
        os: W,
        code: Some(10061),
    },
    Rule {
        needles: &[
            "forcibly closed by the remote host",
            "aborted by the software in your host",
            "wsaeconnreset",
            "10054",
            "10053",
            "-4077",
        ],
        class: ErrorClass::ConnectionReset,
        os: W,
        code: Some(10054),
    },
    Rule {
        needles: &[
            "did not properly respond after a period of time",
            "connection timed out: connect",
            "wsaetimedout",
            "10060",
            "-4039",
            "没有正确答复",
        ],
        class: ErrorClass::ConnectTimeout,
        os: W,
        code: Some(10060),
    },
    Rule {
        needles: &["too many open sockets", "wsaemfile", "10024", "-4066"],
        class: ErrorClass::TooManyOpenFiles,
        os: W,
        code: Some(10024),
    },
    Rule {
        needles: &[
            "attempted to an unreachable",
            "wsaehostunreach",
            "wsaenetunreach",
            "10065",
            "10051",
        ],
        class: ErrorClass::Unreachable,
        os: W,
        code: Some(10065),
    },
    Rule {
        needles: &["forbidden by its access permissions", "wsaeacces", "10013"],
        class: ErrorClass::Other(10013),
        os: W,
        code: Some(10013),
    },
];

/// Unix texts (glibc, musl, BSD libc, Go's lowercase tables). The code is filled from the
/// number in the line, or from the OS the text proves.
const UNIX_RULES: &[(&[&str], ErrorClass)] = &[
    (
        &[
            "cannot assign requested address",
            "can't assign requested address",
            "address not available",
            "eaddrnotavail",
        ],
        ErrorClass::AddrNotAvailable,
    ),
    (
        &["address already in use", "address in use", "eaddrinuse"],
        ErrorClass::AddrInUse,
    ),
    (
        &[
            "too many open files",
            "no file descriptors available",
            "emfile",
            "enfile",
        ],
        ErrorClass::TooManyOpenFiles,
    ),
    (
        &["no buffer space available", "enobufs"],
        ErrorClass::NoBufferSpace,
    ),
    (
        &["connection refused", "econnrefused", "connect call failed"],
        ErrorClass::ConnectionRefused,
    ),
    (
        &[
            "connection reset by peer",
            "econnreset",
            "broken pipe",
            "epipe",
            "socket hang up",
            "connection aborted",
            "software caused connection abort",
        ],
        ErrorClass::ConnectionReset,
    ),
    (
        &[
            "connection timed out",
            "operation timed out",
            "etimedout",
            "i/o timeout",
            "connect timeout",
        ],
        ErrorClass::ConnectTimeout,
    ),
    (
        &[
            "context deadline exceeded",
            "client.timeout exceeded",
            "awaiting headers",
            "request timeout",
            "timeout specified has expired",
            "aborted due to deadline",
            "upstream timed out",
            "timed out",
        ],
        ErrorClass::ResponseTimeout,
    ),
    (
        &[
            "no route to host",
            "network is unreachable",
            "host is unreachable",
            "network unreachable",
            "ehostunreach",
            "enetunreach",
        ],
        ErrorClass::Unreachable,
    ),
    (
        &["tls:", "tls handshake", "certificate", "ssl routines"],
        ErrorClass::Tls,
    ),
    (
        &[
            ": eof",
            "unexpected eof",
            "server closed idle connection",
            "remote end closed connection",
            "prematurely closed",
            "malformed http",
            "empty reply from server",
        ],
        ErrorClass::Protocol,
    ),
];

/// Per class: (Linux errno, BSD/macOS errno).
fn unix_codes(class: ErrorClass) -> Option<(i32, i32)> {
    Some(match class {
        ErrorClass::AddrNotAvailable => (99, 49),
        ErrorClass::AddrInUse => (98, 48),
        ErrorClass::ConnectionRefused => (111, 61),
        ErrorClass::ConnectionReset => (104, 54),
        ErrorClass::ConnectTimeout => (110, 60),
        ErrorClass::TooManyOpenFiles => (24, 24),
        ErrorClass::NoBufferSpace => (105, 55),
        ErrorClass::Unreachable => (113, 65),
        _ => return None,
    })
}

/// Whether a line reads like an error at all (for counting the ones not classified).
pub fn looks_like_error(lower: &str) -> bool {
    const WORDS: &[&str] = &[
        "error",
        "exception",
        "failed",
        "failure",
        "errno",
        "refused",
        "timeout",
        "timed out",
        "unable to",
        "cannot",
        "can't",
        "wsa",
        "[crit]",
        "[alert]",
        "[emerg]",
        "panic",
    ];
    WORDS.iter().any(|w| lower.contains(w))
}

/// The count prefix of a hey/oha "Error distribution" line: `  [2376]\tGet …`, `[200] …`.
pub fn distribution_count(line: &str) -> Option<(u64, &str)> {
    let t = line.trim_start();
    let rest = t.strip_prefix('[')?;
    let close = rest.find(']')?;
    let n = rest[..close].trim().parse().ok()?;
    Some((n, rest[close + 1..].trim_start()))
}

/// wrk's `Socket errors: connect 157, read 89, write 0, timeout 12` (wrk prints no errno).
pub fn wrk_socket_errors(line: &str) -> Option<Vec<ErrorHit>> {
    let rest = line.trim().strip_prefix("Socket errors:")?;
    let mut hits = Vec::new();
    for part in rest.split(',') {
        let mut words = part.split_whitespace();
        let (Some(kind), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = n.parse::<u64>() else {
            continue;
        };
        if count == 0 {
            continue;
        }
        let (class, call) = match kind {
            "connect" => (ErrorClass::Other(0), Some(Call::Connect)),
            "read" => (ErrorClass::ConnectionReset, Some(Call::Read)),
            "write" => (ErrorClass::ConnectionReset, Some(Call::Write)),
            "timeout" => (ErrorClass::ResponseTimeout, None),
            _ => continue,
        };
        hits.push(ErrorHit {
            class,
            os: None,
            os_code: None,
            call,
            count,
            ipv6_loopback: false,
        });
    }
    Some(hits)
}

/// Classifies one error line; `None` when no rule matches.
pub fn classify(line: &str) -> Option<ErrorHit> {
    let (count, text) = distribution_count(line).unwrap_or((1, line));
    let lower = text.to_lowercase();
    let call = call_of(&lower);
    let ipv6_loopback = lower.contains("[::1]") || lower.contains("(::1)");
    for rule in WINDOWS_RULES {
        if rule.needles.iter().any(|n| contains_token(&lower, n)) {
            return Some(ErrorHit {
                class: rule.class,
                os: rule.os,
                os_code: rule.code,
                call,
                count,
                ipv6_loopback,
            });
        }
    }
    for (needles, class) in UNIX_RULES {
        if needles.iter().any(|n| lower.contains(n)) {
            let (os, os_code) = unix_os_and_code(&lower, *class);
            return Some(ErrorHit {
                class: *class,
                os,
                os_code,
                call,
                count,
                ipv6_loopback,
            });
        }
    }
    None
}

/// A number needle matches only as a whole number (`10055`, not `110055`); a text needle
/// anywhere.
fn contains_token(hay: &str, needle: &str) -> bool {
    if !needle.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return hay.contains(needle);
    }
    let bytes = hay.as_bytes();
    let mut from = 0;
    while let Some(pos) = hay[from..].find(needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        let digit = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_digit());
        // `:10061` is a port number, not an error code.
        let in_address = before.is_some_and(|b| b == b':' || b == b'.');
        if !digit(before) && !digit(after) && !in_address {
            return true;
        }
        from = end;
    }
    false
}

fn call_of(lower: &str) -> Option<Call> {
    if lower.contains("listen") || lower.contains("jvm_bind") || lower.contains("bind on address") {
        Some(Call::Listen)
    } else if lower.contains("bind:") || lower.contains("bind local") || lower.contains("bind(") {
        Some(Call::Bind)
    } else if lower.contains("connect") {
        Some(Call::Connect)
    } else if lower.contains("read") || lower.contains("recv") {
        Some(Call::Read)
    } else if lower.contains("write") || lower.contains("send") {
        Some(Call::Write)
    } else {
        None
    }
}

fn unix_os_and_code(lower: &str, class: ErrorClass) -> (Option<SourceOs>, Option<i32>) {
    let Some((linux, bsd)) = unix_codes(class) else {
        return (None, None);
    };
    let numbers = numbers_in(lower);
    if linux != bsd {
        if numbers.contains(&linux) || numbers.contains(&-linux) {
            return (Some(SourceOs::Linux), Some(linux));
        }
        if numbers.contains(&bsd) || numbers.contains(&-bsd) {
            return (Some(SourceOs::Macos), Some(bsd));
        }
    }
    // Texts that prove the libc: BSD "Can't assign", glibc "Cannot assign"; BSD "Operation
    // timed out" is also musl's, so it proves nothing (error-strings.md §12 rule 4).
    if lower.contains("can't assign requested address") {
        return (Some(SourceOs::Macos), Some(bsd));
    }
    if lower.contains("cannot assign requested address") {
        return (Some(SourceOs::Linux), Some(linux));
    }
    (None, None)
}

fn numbers_in(text: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_digit() || (ch == '-' && current.is_empty()) {
            current.push(ch);
        } else {
            if let Ok(n) = current.parse::<i32>() {
                out.push(n);
            }
            current.clear();
            if out.len() >= 32 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(line: &str) -> ErrorHit {
        classify(line).unwrap_or_else(|| panic!("unclassified: {line}"))
    }

    #[test]
    fn the_seed_line_is_a_windows_refusal() {
        let h = hit("  [4879]\tGet \"http://127.0.0.1:8080/\": dial tcp 127.0.0.1:8080: connectex: No connection could be made because the target machine actively refused it.");
        assert_eq!(h.class, ErrorClass::ConnectionRefused);
        assert_eq!(
            (h.os, h.os_code, h.count),
            (Some(SourceOs::Windows), Some(10061), 4879)
        );
        assert_eq!(h.call, Some(Call::Connect));
    }

    #[test]
    fn windows_exhaustion_signatures() {
        let h = hit("dial tcp 192.168.1.2:80: bind: An operation on a socket could not be performed because the system lacked sufficient buffer space or because a queue was full.");
        assert_eq!(
            (h.class, h.os_code, h.call),
            (ErrorClass::NoBufferSpace, Some(10055), Some(Call::Bind))
        );
        let h = hit("System.Net.Sockets.SocketException (10048): Only one usage of each socket address (protocol/network address/port) is normally permitted.");
        assert_eq!((h.class, h.os_code), (ErrorClass::AddrInUse, Some(10048)));
        let h = hit("java.net.BindException: Address already in use: connect");
        assert_eq!(
            (h.class, h.os),
            (ErrorClass::AddrInUse, Some(SourceOs::Windows))
        );
        let h =
            hit("Error: connect ENOBUFS 127.0.0.1:443 - Local (undefined:undefined) errno: -4060");
        assert_eq!(
            (h.class, h.os),
            (ErrorClass::NoBufferSpace, Some(SourceOs::Windows))
        );
        let h = hit(
            "Failed to listen: The requested address is not valid in its context. (os error 10049)",
        );
        assert_eq!(
            (h.class, h.call),
            (ErrorClass::AddrNotAvailable, Some(Call::Listen))
        );
    }

    #[test]
    fn unix_numbers_tell_the_os() {
        let h = hit("dial tcp 127.0.0.1:31363: connect: cannot assign requested address");
        assert_eq!(
            (h.class, h.os, h.os_code),
            (
                ErrorClass::AddrNotAvailable,
                Some(SourceOs::Linux),
                Some(99)
            )
        );
        let h = hit("dial tcp 127.0.0.1:10088: connect: can't assign requested address");
        assert_eq!((h.os, h.os_code), (Some(SourceOs::Macos), Some(49)));
        let h = hit("  [200] Connection refused (os error 61)");
        assert_eq!(
            (h.class, h.os, h.count),
            (ErrorClass::ConnectionRefused, Some(SourceOs::Macos), 200)
        );
        let h = hit("apr_socket_connect(): Cannot assign requested address (99)");
        assert_eq!(h.os_code, Some(99));
        let h = hit("curl: (7) Failed to connect to 127.0.0.1 port 20170: Connection refused");
        assert_eq!(h.class, ErrorClass::ConnectionRefused);
        let h = hit("2019/01/14 23:55:50 [crit] 88#88: *1 connect() to [::1]:8080 failed (99: Address not available)");
        assert!(h.ipv6_loopback);
        let h = hit("  [7420]\tGet http://localhost/sleep: net/http: request canceled (Client.Timeout exceeded while awaiting headers)");
        assert_eq!((h.class, h.count), (ErrorClass::ResponseTimeout, 7420));
        let h = hit("  [2376]\tGet http://localhost/sleep: EOF");
        assert_eq!(h.class, ErrorClass::Protocol);
        assert!(classify("Requests/sec: 1234.5").is_none());
    }

    #[test]
    fn wrk_counts_by_kind() {
        let hits = wrk_socket_errors("  Socket errors: connect 157, read 89, write 0, timeout 12")
            .expect("wrk line");
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].count, 157);
    }
}
