//! Socket-table rows of each tool, one function per format. Each takes a line's
//! whitespace-separated tokens and returns `None` when the line is not a row of that format.
//! Addresses are taken from fixed token positions from the left and the PID from the right,
//! never by column offsets (Windows columns overflow, research/captures.md §4 T4–T5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::row::{
    looks_named, parse_colon_addr, parse_dot_addr, parse_host, CapState, Row, RowProblem,
};

/// What a row parser returns for a line of its format.
pub type RowResult = Result<Row, RowProblem>;

fn is_uint(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

fn row(state: CapState, local: SocketAddr, remote: SocketAddr, pid: Option<u32>) -> Row {
    Row {
        state,
        local,
        remote,
        pid,
        truncated: false,
    }
}

fn addr_pair(
    local: &str,
    remote: &str,
    parse: fn(&str) -> Option<SocketAddr>,
) -> Option<Result<(SocketAddr, SocketAddr), RowProblem>> {
    match (parse(local), parse(remote)) {
        (Some(l), Some(r)) => Some(Ok((l, r))),
        _ if looks_named(local) || looks_named(remote) => Some(Err(RowProblem::Names)),
        _ => None,
    }
}

/// Windows `netstat -an[o][b][q]`: `TCP local remote STATE [PID]` (IPv6 rows also say TCP).
/// Localised state words are read by [`CapState::from_word`]; a word it does not know is
/// settled by the row's shape: a wildcard foreign address is a listener, PID 0 with a foreign
/// port is TIME_WAIT (captures.md §1.2).
pub fn windows_netstat(tokens: &[&str]) -> Option<RowResult> {
    let proto = *tokens.first()?;
    if proto != "TCP" && proto != "UDP" {
        return None;
    }
    if tokens.len() < 3 {
        return None;
    }
    if proto == "UDP" {
        return Some(Err(RowProblem::Udp));
    }
    let (local, remote) = match addr_pair(tokens[1], tokens[2], parse_colon_addr)? {
        Ok(pair) => pair,
        Err(p) => return Some(Err(p)),
    };
    let rest = &tokens[3..];
    let (words, pid) = match rest.split_last() {
        Some((last, words)) if is_uint(last) => (words, last.parse::<u32>().ok()),
        _ => (rest, None),
    };
    if words.is_empty() {
        return None;
    }
    let joined;
    let word = match words {
        [one] => *one,
        _ => {
            joined = words.join(" ");
            joined.as_str()
        }
    };
    let state = CapState::from_word(word).unwrap_or_else(|| {
        if remote.port() == 0 && remote.ip().is_unspecified() {
            CapState::Listen
        } else if pid == Some(0) && remote.port() != 0 {
            CapState::TimeWait
        } else {
            CapState::Unknown
        }
    });
    Some(Ok(row(state, local, remote, pid)))
}

/// The header and title lines of Windows netstat in the locales of captures.md §1.2.
pub fn is_windows_netstat_title(line: &str) -> bool {
    let t = line.trim();
    matches!(
        t,
        "Active Connections"
            | "Aktive Verbindungen"
            | "Connexions actives"
            | "活动连接"
            | "Conexiones activas"
            | "Connessioni attive"
    ) || (t.starts_with("Proto") || t.starts_with("协议"))
        && !t.contains("Recv-Q")
        && !t.contains("(state)")
}

/// Linux `netstat -tan[p]` (net-tools): `tcp[6] recvq sendq local remote STATE [pid/prog]`.
pub fn linux_netstat(tokens: &[&str]) -> Option<RowResult> {
    let proto = *tokens.first()?;
    if !matches!(proto, "tcp" | "tcp6" | "udp" | "udp6") || tokens.len() < 5 {
        return None;
    }
    if !is_uint(tokens[1]) || !is_uint(tokens[2]) {
        return None;
    }
    if proto.starts_with("udp") {
        return Some(Err(RowProblem::Udp));
    }
    let (local, remote) = match addr_pair(tokens[3], tokens[4], parse_colon_addr)? {
        Ok(pair) => pair,
        Err(p) => return Some(Err(p)),
    };
    let state = CapState::from_word(tokens.get(5)?)?;
    let pid = tokens
        .get(6)
        .and_then(|t| t.split('/').next())
        .and_then(|p| p.parse().ok());
    Some(Ok(row(state, local, remote, pid)))
}

/// macOS/BSD `netstat -an[v][W] -p tcp`: `tcp4|tcp6|tcp46 recvq sendq local remote STATE …`,
/// also with `-A`'s leading socket and flowhash columns. `-v` on macOS 26 writes
/// `process:pid`; older layouts put the pid at a fixed column, which is not read.
/// `addr_width` is the column width netstat cuts addresses to (22, 18 with `-A`; 0 when
/// `-W` was seen, i.e. no cut): an address exactly that wide may have lost digits
/// (network_cmds inet.c `inetprint()`), so the row is flagged, not guessed.
pub fn macos_netstat(tokens: &[&str], addr_width: usize) -> Option<RowResult> {
    let at = tokens
        .iter()
        .take(3)
        .position(|t| matches!(*t, "tcp4" | "tcp6" | "tcp46" | "udp4" | "udp6" | "udp46"))?;
    let t = &tokens[at..];
    if t.len() < 5 || !is_uint(t[1]) || !is_uint(t[2]) {
        return None;
    }
    if t[0].starts_with("udp") {
        return Some(Err(RowProblem::Udp));
    }
    let width = if at > 0 && addr_width == 22 {
        18
    } else {
        addr_width
    };
    let truncated = width > 0 && (t[3].chars().count() == width || t[4].chars().count() == width);
    let (local, remote) = match (parse_dot_addr(t[3]), parse_dot_addr(t[4])) {
        (Some(l), Some(r)) => (l, r),
        _ if truncated => (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        ),
        _ if looks_named(t[3]) || looks_named(t[4]) => return Some(Err(RowProblem::Names)),
        _ => return None,
    };
    let state = t.get(5).and_then(|w| CapState::from_word(w))?;
    let pid = t
        .iter()
        .skip(6)
        .find_map(|tok| tok.rsplit_once(':').and_then(|(_, pid)| pid.parse().ok()));
    let mut r = row(state, local, remote, pid);
    r.truncated = truncated;
    Some(Ok(r))
}

/// Linux `ss -tan[p][o]` (also with a leading `tcp` Netid column): `STATE recvq sendq local
/// peer …`, `users:(("x",pid=1,fd=3))` for the owner.
pub fn ss(tokens: &[&str]) -> Option<RowResult> {
    let t = match tokens.first() {
        Some(&"tcp") => &tokens[1..],
        Some(&"udp") => return Some(Err(RowProblem::Udp)),
        _ => tokens,
    };
    if t.len() < 5 || !is_uint(t[1]) || !is_uint(t[2]) {
        return None;
    }
    let state = match t[0] {
        "ESTAB" => CapState::Established,
        "TIME-WAIT" => CapState::TimeWait,
        "SYN-SENT" => CapState::SynSent,
        "SYN-RECV" => CapState::SynReceived,
        "FIN-WAIT-1" => CapState::FinWait1,
        "FIN-WAIT-2" => CapState::FinWait2,
        "CLOSE-WAIT" => CapState::CloseWait,
        "LAST-ACK" => CapState::LastAck,
        "LISTEN" => CapState::Listen,
        "CLOSING" => CapState::Closing,
        "UNCONN" => CapState::Closed,
        _ => return None,
    };
    let (local, remote) = match addr_pair(t[3], t[4], parse_colon_addr)? {
        Ok(pair) => pair,
        Err(p) => return Some(Err(p)),
    };
    let pid = t.iter().skip(5).find_map(|tok| {
        let at = tok.find("pid=")?;
        let digits: String = tok[at + 4..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    });
    Some(Ok(row(state, local, remote, pid)))
}

/// Linux `/proc/net/tcp` and `tcp6`: `sl: LOCAL:PORT REM:PORT st …` in host-order hex.
pub fn proc_net_tcp(tokens: &[&str]) -> Option<RowResult> {
    if tokens.len() < 4 {
        return None;
    }
    let sl = tokens[0].strip_suffix(':')?;
    if !is_uint(sl) {
        return None;
    }
    let local = proc_addr(tokens[1])?;
    let remote = proc_addr(tokens[2])?;
    let st = u8::from_str_radix(tokens[3], 16).ok()?;
    let state = CapState::from_kernel(st)?;
    Some(Ok(row(state, local, remote, None)))
}

fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.swap_bytes(),
        )),
        32 => {
            let mut octets = [0u8; 16];
            for (i, word) in octets.chunks_exact_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(crate::row::canonical(ip), port))
}

/// `Get-NetTCPConnection` default table: `LocalAddress LocalPort RemoteAddress RemotePort
/// State [AppliedSetting] [OwningProcess]` (captures.md §1.3; OwningProcess may be missing).
pub fn get_net_tcp_table(tokens: &[&str]) -> Option<RowResult> {
    if tokens.len() < 5 || !is_uint(tokens[1]) || !is_uint(tokens[3]) {
        return None;
    }
    let state = CapState::from_word(tokens[4])?;
    let local = SocketAddr::new(parse_host(tokens[0])?, tokens[1].parse().ok()?);
    let remote = SocketAddr::new(parse_host(tokens[2])?, tokens[3].parse().ok()?);
    let pid = tokens[5..]
        .last()
        .filter(|t| is_uint(t))
        .and_then(|t| t.parse().ok());
    Some(Ok(row(state, local, remote, pid)))
}

/// Column positions of a `Get-NetTCPConnection | Export-Csv` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvColumns {
    local_address: usize,
    local_port: usize,
    remote_address: usize,
    remote_port: usize,
    state: usize,
    owning_process: Option<usize>,
}

/// Splits one CSV line (RFC 4180 quoting, no embedded line breaks).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

impl CsvColumns {
    /// Reads a CSV header; `None` unless it names the four address columns and State.
    pub fn from_header(fields: &[String]) -> Option<Self> {
        let find = |name: &str| fields.iter().position(|f| f.trim() == name);
        Some(CsvColumns {
            local_address: find("LocalAddress")?,
            local_port: find("LocalPort")?,
            remote_address: find("RemoteAddress")?,
            remote_port: find("RemotePort")?,
            state: find("State")?,
            owning_process: find("OwningProcess"),
        })
    }

    /// One data row; the state may be a name (`TimeWait`) or a number (`11`).
    pub fn row(&self, fields: &[String]) -> Option<RowResult> {
        let get = |i: usize| fields.get(i).map(|s| s.trim());
        let local = SocketAddr::new(
            parse_host(get(self.local_address)?)?,
            get(self.local_port)?.parse().ok()?,
        );
        let remote = SocketAddr::new(
            parse_host(get(self.remote_address)?)?,
            get(self.remote_port)?.parse().ok()?,
        );
        let state_text = get(self.state)?;
        let state = match state_text.parse::<u64>() {
            Ok(n) => CapState::from_msft_number(n)?,
            Err(_) => CapState::from_word(state_text)?,
        };
        let pid = self
            .owning_process
            .and_then(get)
            .and_then(|p| p.parse().ok());
        Some(Ok(row(state, local, remote, pid)))
    }
}

/// One `Get-NetTCPConnection | ConvertTo-Json` object (State as a number, or a name with
/// `-EnumsAsStrings`).
pub fn get_net_tcp_json(obj: &serde_json::Map<String, serde_json::Value>) -> Option<RowResult> {
    use serde_json::Value;
    let port = |k: &str| obj.get(k)?.as_u64().and_then(|p| u16::try_from(p).ok());
    let host = |k: &str| obj.get(k)?.as_str().and_then(parse_host);
    let local = SocketAddr::new(host("LocalAddress")?, port("LocalPort")?);
    let remote = SocketAddr::new(host("RemoteAddress")?, port("RemotePort")?);
    let state = match obj.get("State")? {
        Value::Number(n) => CapState::from_msft_number(n.as_u64()?)?,
        Value::String(s) => CapState::from_word(s)?,
        _ => return None,
    };
    let pid = obj
        .get("OwningProcess")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok());
    Some(Ok(row(state, local, remote, pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn windows_rows_english_localised_and_by_shape() {
        let r = windows_netstat(&toks(
            "  TCP    127.0.0.1:1031  127.0.0.1:1032  ESTABLISHED  10644",
        ))
        .expect("row")
        .expect("ok");
        assert_eq!(
            (r.state, r.pid, r.local.port()),
            (CapState::Established, Some(10644), 1031)
        );
        let r = windows_netstat(&toks("  TCP    0.0.0.0:102    0.0.0.0:0   ABH™REN"))
            .expect("row")
            .expect("ok");
        assert_eq!(r.state, CapState::Listen);
        let r = windows_netstat(&toks("  TCP    0.0.0.0:80  0.0.0.0:0  IN ASCOLTO  4"))
            .expect("row")
            .expect("ok");
        assert_eq!((r.state, r.pid), (CapState::Listen, Some(4)));
        // An unknown word with PID 0 and a foreign port: TIME_WAIT by shape.
        let r = windows_netstat(&toks("  TCP 10.0.0.1:50000 10.0.0.2:80 ÉTRANGE 0"))
            .expect("row")
            .expect("ok");
        assert_eq!(r.state, CapState::TimeWait);
        assert_eq!(
            windows_netstat(&toks("  UDP    [::]:5353   *:*   3404")),
            Some(Err(RowProblem::Udp))
        );
        assert_eq!(
            windows_netstat(&toks("  TCP    127.0.0.1:1031  api:1032  ESTABLISHED")),
            Some(Err(RowProblem::Names))
        );
    }

    #[test]
    fn macos_rows_and_truncation() {
        let r = macos_netstat(
            &toks("tcp4       0      0  127.0.0.1.631          *.*                    LISTEN"),
            22,
        )
        .expect("row")
        .expect("ok");
        assert_eq!(
            (r.state, r.local.port(), r.truncated),
            (CapState::Listen, 631, false)
        );
        let r = macos_netstat(
            &toks("7fb03cb94d505aed cedd0cbf tcp4 0 0  192.168.1.221.5486 140.82.113.26.443  ESTABLISHED"),
            22,
        )
        .expect("row")
        .expect("ok");
        assert!(r.truncated, "an 18-character address under -A may be cut");
        let r = macos_netstat(
            &toks(
                "tcp4 0 0 127.0.0.1.11434 *.* LISTEN 0 0 131072 131072 ollama:4242 00000 00000006",
            ),
            22,
        )
        .expect("row")
        .expect("ok");
        assert_eq!(r.pid, Some(4242));
    }

    #[test]
    fn linux_rows() {
        let r = ss(&toks(
            "TIME-WAIT 0 0 10.0.0.1:40000 10.0.0.2:80 timer:(timewait,57sec,0)",
        ))
        .expect("row")
        .expect("ok");
        assert_eq!(r.state, CapState::TimeWait);
        let r = ss(&toks(
            r#"ESTAB 0 0 [::ffff:10.1.1.1]:8081 10.1.1.2:5000 users:(("host",pid=118409,fd=20))"#,
        ))
        .expect("row")
        .expect("ok");
        assert_eq!(
            (r.pid, r.local.to_string().as_str()),
            (Some(118409), "10.1.1.1:8081")
        );
        let r = linux_netstat(&toks(
            "tcp        0      0 0.0.0.0:22   0.0.0.0:*   LISTEN      9420/Passenger Ruby",
        ))
        .expect("row")
        .expect("ok");
        assert_eq!((r.state, r.pid), (CapState::Listen, Some(9420)));
        let r = proc_net_tcp(&toks(
            "   0: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 34000 1",
        ))
        .expect("row")
        .expect("ok");
        assert_eq!(r.local.to_string(), "127.0.0.53:53");
        assert_eq!(r.state, CapState::Listen);
        let r = proc_net_tcp(&toks(
            "  1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 06 0",
        ))
        .expect("row")
        .expect("ok");
        assert_eq!(
            (r.local.to_string().as_str(), r.state),
            ("[::1]:8080", CapState::TimeWait)
        );
    }

    #[test]
    fn powershell_rows() {
        let r = get_net_tcp_table(&toks(
            "192.168.1.69    57619     172.64.154.54    443    TimeWait     0",
        ))
        .expect("row")
        .expect("ok");
        assert_eq!((r.state, r.pid), (CapState::TimeWait, Some(0)));
        let r = get_net_tcp_table(&toks("0.0.0.0  65144  0.0.0.0  0  Bound"))
            .expect("row")
            .expect("ok");
        assert_eq!((r.state, r.pid), (CapState::Bound, None));
        let header = split_csv(
            r#""LocalAddress","LocalPort","RemoteAddress","RemotePort","State","OwningProcess""#,
        );
        let cols = CsvColumns::from_header(&header).expect("header");
        let r = cols
            .row(&split_csv(r#""10.0.0.5","50001","10.0.0.9","80","11","0""#))
            .expect("row")
            .expect("ok");
        assert_eq!(r.state, CapState::TimeWait);
    }
}
