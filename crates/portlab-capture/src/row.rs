//! One socket-table row as every OS's tools print it, reduced to a canonical state, two
//! addresses and an owner; and the address and state spellings of each tool.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portlab_sockets::TcpState;
use serde::Serialize;

/// A TCP state under its canonical name (`ESTABLISHED`, `TIME_WAIT`, `BOUND`, …), the names
/// `sockets.by_state` uses in `analyze --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CapState {
    /// Connection open.
    Established,
    /// Active open, SYN sent.
    SynSent,
    /// Passive open, SYN received (`SYN_RCVD`, `SYN-RECV`).
    SynReceived,
    /// Local side closed first, FIN sent.
    FinWait1,
    /// Local FIN acknowledged, waiting for the peer's.
    FinWait2,
    /// The active closer's 2 × MSL wait.
    TimeWait,
    /// Closed (`CLOSED`, `UNCONN`).
    Closed,
    /// Peer closed first, waiting for the application.
    CloseWait,
    /// Passive closer's FIN sent.
    LastAck,
    /// Listening (`LISTENING`, `LISTEN`, `Listen`).
    Listen,
    /// Both sides closed at once.
    Closing,
    /// Windows: a socket handle holds the port without a connection (`netstat -q`,
    /// `Get-NetTCPConnection` state 100).
    Bound,
    /// Windows: the control block is being deleted (`DeleteTCB`, state 12).
    DeleteTcb,
    /// A state word the parser does not know and the row's shape did not settle.
    Unknown,
}

impl CapState {
    /// All states in report order.
    pub const ALL: [CapState; 14] = [
        CapState::Established,
        CapState::TimeWait,
        CapState::SynSent,
        CapState::SynReceived,
        CapState::FinWait1,
        CapState::FinWait2,
        CapState::CloseWait,
        CapState::LastAck,
        CapState::Closing,
        CapState::Closed,
        CapState::Listen,
        CapState::Bound,
        CapState::DeleteTcb,
        CapState::Unknown,
    ];

    /// The canonical name (`TIME_WAIT`).
    pub fn name(self) -> &'static str {
        match self {
            CapState::Established => "ESTABLISHED",
            CapState::SynSent => "SYN_SENT",
            CapState::SynReceived => "SYN_RECEIVED",
            CapState::FinWait1 => "FIN_WAIT_1",
            CapState::FinWait2 => "FIN_WAIT_2",
            CapState::TimeWait => "TIME_WAIT",
            CapState::Closed => "CLOSED",
            CapState::CloseWait => "CLOSE_WAIT",
            CapState::LastAck => "LAST_ACK",
            CapState::Listen => "LISTEN",
            CapState::Closing => "CLOSING",
            CapState::Bound => "BOUND",
            CapState::DeleteTcb => "DELETE_TCB",
            CapState::Unknown => "UNKNOWN",
        }
    }

    /// The Linux kernel state, for rows grouped by portlab-sockets (`None` for the
    /// Windows-only states).
    pub fn tcp_state(self) -> Option<TcpState> {
        Some(match self {
            CapState::Established => TcpState::Established,
            CapState::SynSent => TcpState::SynSent,
            CapState::SynReceived => TcpState::SynRecv,
            CapState::FinWait1 => TcpState::FinWait1,
            CapState::FinWait2 => TcpState::FinWait2,
            CapState::TimeWait => TcpState::TimeWait,
            CapState::Closed => TcpState::Close,
            CapState::CloseWait => TcpState::CloseWait,
            CapState::LastAck => TcpState::LastAck,
            CapState::Listen => TcpState::Listen,
            CapState::Closing => TcpState::Closing,
            CapState::Bound | CapState::DeleteTcb | CapState::Unknown => return None,
        })
    }

    /// From a Linux kernel state number (`/proc/net/tcp` `st`, include/net/tcp_states.h).
    pub fn from_kernel(st: u8) -> Option<Self> {
        Some(match TcpState::from_kernel(st)? {
            TcpState::Established => CapState::Established,
            TcpState::SynSent => CapState::SynSent,
            TcpState::SynRecv | TcpState::NewSynRecv => CapState::SynReceived,
            TcpState::FinWait1 => CapState::FinWait1,
            TcpState::FinWait2 => CapState::FinWait2,
            TcpState::TimeWait => CapState::TimeWait,
            TcpState::Close => CapState::Closed,
            TcpState::CloseWait => CapState::CloseWait,
            TcpState::LastAck => CapState::LastAck,
            TcpState::Listen => CapState::Listen,
            TcpState::Closing => CapState::Closing,
        })
    }

    /// From `MSFT_NetTCPConnection.State` as `ConvertTo-Json` writes it: 1 Closed … 12
    /// DeleteTCB (MicrosoftDocs/win32 msft-nettcpconnection.md), 100 Bound
    /// (windows-powershell-docs#500).
    pub fn from_msft_number(n: u64) -> Option<Self> {
        Some(match n {
            1 => CapState::Closed,
            2 => CapState::Listen,
            3 => CapState::SynSent,
            4 => CapState::SynReceived,
            5 => CapState::Established,
            6 => CapState::FinWait1,
            7 => CapState::FinWait2,
            8 => CapState::CloseWait,
            9 => CapState::Closing,
            10 => CapState::LastAck,
            11 => CapState::TimeWait,
            12 => CapState::DeleteTcb,
            100 => CapState::Bound,
            _ => return None,
        })
    }

    /// From any tool's state word: Windows netstat (English and the localised words of
    /// research/captures.md §1.2), PowerShell enum names, BSD `tcpstates[]`, `ss` and Linux
    /// netstat. Case-insensitive; `-`, `_` and spaces are ignored.
    pub fn from_word(word: &str) -> Option<Self> {
        // The spellings of nearly every row, without building a key.
        let fast = match word {
            "TIME_WAIT" | "TIME-WAIT" | "TimeWait" => Some(CapState::TimeWait),
            "ESTABLISHED" | "ESTAB" | "Established" => Some(CapState::Established),
            "LISTENING" | "LISTEN" | "Listen" => Some(CapState::Listen),
            "BOUND" | "Bound" => Some(CapState::Bound),
            "CLOSE_WAIT" | "CLOSE-WAIT" | "CloseWait" => Some(CapState::CloseWait),
            "SYN_SENT" | "SYN-SENT" | "SynSent" => Some(CapState::SynSent),
            _ => None,
        };
        if fast.is_some() {
            return fast;
        }
        let mut key = String::with_capacity(word.len());
        for ch in word.chars() {
            if ch.is_alphanumeric() {
                key.extend(ch.to_uppercase());
            } else if !matches!(ch, '_' | '-' | ' ') {
                // `ABH™REN`: the OEM byte of Ö read as cp1252 (captures.md §1.2).
                key.push('?');
            }
        }
        Some(match key.as_str() {
            "ESTABLISHED" | "ESTAB" | "HERGESTELLT" | "ESTABLECIDO" | "STABILITO" => {
                CapState::Established
            }
            "SYNSENT" | "SYNSEND" | "SYNGESENDET" => CapState::SynSent,
            "SYNRECEIVED" | "SYNRECV" | "SYNRCVD" | "SYNEMPFANGEN" => CapState::SynReceived,
            "FINWAIT1" | "FINWARTEN1" => CapState::FinWait1,
            "FINWAIT2" | "FINWARTEN2" => CapState::FinWait2,
            "TIMEWAIT" | "TIMEDWAIT" | "WARTEND" => CapState::TimeWait,
            "CLOSED" | "CLOSE" | "UNCONN" => CapState::Closed,
            "CLOSEWAIT" | "SCHLIESSENWARTEN" => CapState::CloseWait,
            "LASTACK" => CapState::LastAck,
            "LISTENING" | "LISTEN" | "ESCUCHANDO" | "INASCOLTO" => CapState::Listen,
            "CLOSING" | "SCHLIESSEND" => CapState::Closing,
            "BOUND" => CapState::Bound,
            "DELETETCB" => CapState::DeleteTcb,
            k if k.starts_with("ABH") && k.chars().count() == 7 => CapState::Listen,
            _ => return None,
        })
    }
}

/// One socket from a captured table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Canonical state.
    pub state: CapState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified, port 0 for listeners and BOUND rows).
    pub remote: SocketAddr,
    /// Owning process id where the capture has one (Windows `-o`, OwningProcess; ss `pid=`).
    pub pid: Option<u32>,
    /// An address was cut by the tool (macOS netstat without `-W`): the ports may be wrong,
    /// so the row counts by state only, never in a pool.
    pub truncated: bool,
}

/// Why a row-shaped line was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowProblem {
    /// A host or service name instead of a number (captured without `-n`).
    Names,
    /// A UDP row (counted apart; only TCP holds TCP ports).
    Udp,
}

/// Parses `a.b.c.d:p`, `[v6%zone]:p`, `*:*`, `:::22`, `0.0.0.0:*`, `*:22` (Windows, `ss`,
/// Linux netstat). `*` as port reads as 0. IPv4-mapped IPv6 becomes IPv4.
pub fn parse_colon_addr(text: &str) -> Option<SocketAddr> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest.find(']')?;
        let port = rest[close + 1..].strip_prefix(':')?;
        (&rest[..close], port)
    } else {
        let colon = text.rfind(':')?;
        (&text[..colon], &text[colon + 1..])
    };
    let port = parse_port(port)?;
    let ip = parse_host(host)?;
    Some(SocketAddr::new(ip, port))
}

/// Parses BSD `a.b.c.d.port`, `::1.631`, `fe80::1%lo0.88`, `*.*`, `*.22` (macOS netstat):
/// the port follows the last dot.
pub fn parse_dot_addr(text: &str) -> Option<SocketAddr> {
    let dot = text.rfind('.')?;
    let (host, port) = (&text[..dot], &text[dot + 1..]);
    let port = parse_port(port)?;
    let ip = parse_host(host)?;
    Some(SocketAddr::new(ip, port))
}

fn parse_port(text: &str) -> Option<u16> {
    if text == "*" {
        return Some(0);
    }
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A bare host: IPv4, IPv6 (zone id dropped), `*` or empty (wildcard).
pub fn parse_host(host: &str) -> Option<IpAddr> {
    if host == "*" || host.is_empty() {
        return Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    let host = host.split('%').next().unwrap_or(host);
    if host == "::" {
        return Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    let ip: IpAddr = host.parse().ok()?;
    Some(canonical(ip))
}

/// IPv4-mapped IPv6 addresses as IPv4, so `[::ffff:10.0.0.1]` groups with `10.0.0.1`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a token looks like an address a tool printed with a name instead of a number
/// (`api:1032`, `:ssh`, `host.https`).
pub fn looks_named(text: &str) -> bool {
    text.chars().any(|c| c.is_ascii_alphabetic())
        && !text.starts_with('[')
        && !text.contains("::")
        && text.chars().any(|c| c == ':' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_every_tool() {
        let a = |s: &str| parse_colon_addr(s).map(|a| a.to_string());
        assert_eq!(a("0.0.0.0:135").as_deref(), Some("0.0.0.0:135"));
        assert_eq!(a("[::1]:1025").as_deref(), Some("[::1]:1025"));
        assert_eq!(
            a("[fe80::244e:2f1e:2096:62b2%9]:1900").as_deref(),
            Some("[fe80::244e:2f1e:2096:62b2]:1900")
        );
        assert_eq!(a("*:*").as_deref(), Some("0.0.0.0:0"));
        assert_eq!(a(":::22").as_deref(), Some("[::]:22"));
        assert_eq!(
            a("[::ffff:10.1.2.3]:8081").as_deref(),
            Some("10.1.2.3:8081")
        );
        assert_eq!(a("127.0.0.53%lo:53").as_deref(), Some("127.0.0.53:53"));
        assert_eq!(a("api:1032"), None);
        let d = |s: &str| parse_dot_addr(s).map(|a| a.to_string());
        assert_eq!(
            d("192.168.1.221.54860").as_deref(),
            Some("192.168.1.221:54860")
        );
        assert_eq!(d("::1.631").as_deref(), Some("[::1]:631"));
        assert_eq!(d("fe80::1%lo0.88").as_deref(), Some("[fe80::1]:88"));
        assert_eq!(d("*.*").as_deref(), Some("0.0.0.0:0"));
        assert_eq!(d("x.https"), None);
    }

    #[test]
    fn state_words_of_every_locale() {
        assert_eq!(CapState::from_word("LISTENING"), Some(CapState::Listen));
        assert_eq!(CapState::from_word("ABHÖREN"), Some(CapState::Listen));
        assert_eq!(CapState::from_word("ABH™REN"), Some(CapState::Listen));
        assert_eq!(CapState::from_word("WARTEND"), Some(CapState::TimeWait));
        assert_eq!(CapState::from_word("TIME-WAIT"), Some(CapState::TimeWait));
        assert_eq!(CapState::from_word("TimeWait"), Some(CapState::TimeWait));
        assert_eq!(CapState::from_word("IN ASCOLTO"), Some(CapState::Listen));
        assert_eq!(CapState::from_word("SYN_RCVD"), Some(CapState::SynReceived));
        assert_eq!(
            CapState::from_word("FIN_WARTEN_2"),
            Some(CapState::FinWait2)
        );
        assert_eq!(CapState::from_word("Bound"), Some(CapState::Bound));
        assert_eq!(CapState::from_word("nonsense"), None);
        assert_eq!(CapState::from_msft_number(11), Some(CapState::TimeWait));
        assert_eq!(CapState::from_msft_number(100), Some(CapState::Bound));
    }
}
