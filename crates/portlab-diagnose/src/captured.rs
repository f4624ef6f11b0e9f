//! Findings for text captured on another host (`portlab analyze`): the pool in the OS's scope
//! (one host-wide pool on Windows and macOS), the error lines with the OS's own numbers, the
//! Windows Tcpip events and the portproxy rules, weighed against each other. A refusal is an
//! answer from a listener and never port exhaustion; Windows says exhaustion with 10055
//! (WSAENOBUFS, event 4231) or 10048 (WSAEADDRINUSE at connect, event 4227)
//! (research/error-strings.md §0.1–0.2, port-allocation.md §4.4). Linux captures go through
//! the same rules as `portlab doctor` ([`crate::diagnose`]) for their pools.

use serde::Serialize;

use portlab_errors::ErrorClass;

use crate::remedies::{self, Correction, Os, Remedy};
use crate::{diagnose, Cause, Evidence, Finding, Severity};

/// The call that failed, where the line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailedCall {
    /// connect() / ConnectEx.
    Connect,
    /// An implicit or explicit bind() of a client.
    Bind,
    /// A server's bind/listen: a look-alike.
    Listen,
    /// read / recv.
    Read,
    /// write / send.
    Write,
}

/// One class of captured errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapturedError {
    /// Class: the errno or error kind the line names, in the taxonomy every portlab component
    /// counts by (`portlab-errors`); serialized by its snake_case spelling
    /// (`"addr_not_available"`).
    #[serde(serialize_with = "snake_case_class")]
    pub kind: ErrorClass,
    /// The OS's error number (99, 49, 10055 …).
    pub os_code: Option<i32>,
    /// The failed call.
    pub call: Option<FailedCall>,
    /// Failures counted.
    pub count: u64,
    /// Destination named in the first line.
    pub destination: Option<std::net::SocketAddr>,
    /// EADDRNOTAVAIL towards IPv6 loopback.
    pub ipv6_loopback: bool,
    /// The first line.
    pub example: String,
}

/// The host-wide pool of a Windows or macOS capture (the latest snapshot).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPool {
    /// Range low.
    pub range_low: u16,
    /// Range high.
    pub range_high: u16,
    /// Usable ports (range less excluded blocks).
    pub size: u64,
    /// Ports taken out by excluded blocks.
    pub excluded_ports: u64,
    /// Distinct ports held.
    pub in_use: u64,
    /// Of those, by TIME_WAIT.
    pub time_wait: u64,
    /// Of those, by BOUND sockets.
    pub bound: u64,
    /// TIME_WAIT length used, s.
    pub time_wait_secs: u32,
    /// Whether that length was assumed (not captured).
    pub time_wait_assumed: bool,
    /// Whether the table showed BOUND rows could be seen (`-q` or Get-NetTCPConnection).
    pub bound_visible: bool,
}

/// Everything `analyze` hands the rules.
#[derive(Debug, Clone, Serialize)]
pub struct CapturedEvidence {
    /// OS of the capture (Windows, Macos or Linux).
    pub os: Os,
    /// Windows/macOS host-wide pool, when a table was captured.
    pub host_pool: Option<HostPool>,
    /// Linux: evidence for the per-4-tuple rules (settings and the last snapshot).
    pub linux: Option<Evidence>,
    /// Errors by class.
    pub errors: Vec<CapturedError>,
    /// Tcpip event 4227 count.
    pub event_4227: u64,
    /// Tcpip event 4231 count.
    pub event_4231: u64,
    /// portproxy rules as `listen → connect`.
    pub portproxy: Vec<String>,
    /// Ports listening in the last table (to tell "nothing listens" from "backlog full").
    pub listening_ports: Vec<u16>,
    /// Growth of ports in use over the snapshots, per second, and the time to full, s.
    pub growth: Option<(f64, Option<f64>)>,
    /// Whether any socket table was captured.
    pub table_captured: bool,
}

impl CapturedEvidence {
    fn count(&self, pred: impl Fn(&CapturedError) -> bool) -> u64 {
        self.errors
            .iter()
            .filter(|e| pred(e))
            .map(|e| e.count)
            .sum()
    }

    fn first(&self, pred: impl Fn(&CapturedError) -> bool) -> Option<&CapturedError> {
        self.errors.iter().find(|e| pred(e))
    }

    /// Failures whose number means "no free ephemeral port" on this OS.
    fn is_exhaustion(&self, e: &CapturedError) -> bool {
        let client_call = !matches!(e.call, Some(FailedCall::Listen));
        match self.os {
            Os::Windows => match e.kind {
                ErrorClass::NoBufferSpace => client_call,
                // 10048 from connect is the TIME_WAIT collision of event 4227; from bind to a
                // fixed port it is a server look-alike.
                ErrorClass::AddrInUse => client_call && !matches!(e.call, Some(FailedCall::Bind)),
                _ => false,
            },
            Os::Macos => {
                matches!(e.kind, ErrorClass::AddrNotAvailable) && client_call
                    || matches!(e.kind, ErrorClass::AddrInUse)
                        && matches!(e.call, Some(FailedCall::Connect))
            }
            _ => {
                matches!(e.kind, ErrorClass::AddrNotAvailable) && client_call && !e.ipv6_loopback
                    || matches!(e.kind, ErrorClass::AddrInUse)
                        && matches!(e.call, Some(FailedCall::Bind))
            }
        }
    }
}

/// Turns captured evidence into findings, most severe first; at least one (healthy).
pub fn diagnose_captured(e: &CapturedEvidence) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(linux) = &e.linux {
        findings.extend(
            diagnose(linux)
                .into_iter()
                .filter(|f| f.cause != Cause::Healthy),
        );
    }
    findings.extend(exhaustion(e));
    findings.extend(host_pressure(e));
    findings.extend(refused(e));
    findings.extend(resets_and_timeouts(e));
    findings.extend(fd_limit(e));
    if findings.iter().all(|f| f.severity == Severity::Info) {
        findings.push(healthy(e));
    }
    for f in &mut findings {
        f.remedies.retain(|r| r.os == Os::Any || r.os == e.os);
        let port_finding = matches!(f.cause, Cause::PortExhaustion | Cause::TimeWaitPressure);
        match e.os {
            Os::Windows if port_finding => f.corrections = windows_corrections(),
            Os::Macos if port_finding => f.corrections = macos_corrections(),
            _ => f.corrections.retain(|c| !c.claim.contains("netsh")),
        }
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.cause.cmp(&b.cause)));
    merge_same_cause(findings)
}

/// The Linux rules and the error lines can both find exhaustion: one finding, all evidence.
fn merge_same_cause(findings: Vec<Finding>) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for f in findings {
        match out
            .iter_mut()
            .find(|o| o.cause == f.cause && f.cause == Cause::PortExhaustion)
        {
            Some(first) => {
                for line in f.evidence {
                    if !first.evidence.contains(&line) {
                        first.evidence.push(line);
                    }
                }
            }
            None => out.push(f),
        }
    }
    out
}

fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn connects(n: u64) -> String {
    if n == 1 {
        "1 connect".to_string()
    } else {
        format!("{} connects", int(n))
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn code_name(e: &CapturedError) -> String {
    let name = match (e.kind, e.os_code) {
        (ErrorClass::NoBufferSpace, Some(10055)) => "WSAENOBUFS",
        (ErrorClass::AddrInUse, Some(10048)) => "WSAEADDRINUSE",
        (ErrorClass::AddrNotAvailable, Some(10049)) => "WSAEADDRNOTAVAIL",
        (ErrorClass::ConnectionRefused, Some(10061)) => "WSAECONNREFUSED",
        (ErrorClass::ConnectionReset, Some(10054)) => "WSAECONNRESET",
        (ErrorClass::ConnectTimeout, Some(10060)) => "WSAETIMEDOUT",
        (ErrorClass::TooManyOpenFiles, Some(10024)) => "WSAEMFILE",
        (ErrorClass::AddrNotAvailable, _) => "EADDRNOTAVAIL",
        (ErrorClass::AddrInUse, _) => "EADDRINUSE",
        (ErrorClass::ConnectionRefused, _) => "ECONNREFUSED",
        (ErrorClass::ConnectionReset, _) => "ECONNRESET",
        (ErrorClass::ConnectTimeout, _) => "connect timeout",
        (ErrorClass::ResponseTimeout, _) => "response timeout",
        (ErrorClass::TooManyOpenFiles, _) => "EMFILE",
        (ErrorClass::NoBufferSpace, _) => "ENOBUFS",
        (ErrorClass::Unreachable, _) => "unreachable",
        (ErrorClass::Protocol, _) => "protocol",
        (ErrorClass::Tls, _) => "TLS",
        (ErrorClass::PermissionDenied, Some(10013)) => "WSAEACCES",
        (ErrorClass::PermissionDenied, _) => "EACCES/EPERM",
        (ErrorClass::ProxyRefused, _) => "proxy refused",
        (ErrorClass::GoAway, _) => "HTTP/2 GOAWAY",
        (ErrorClass::StreamReset, _) => "HTTP/2 RST_STREAM",
        (ErrorClass::FlowControl, _) => "HTTP/2 flow control",
        (ErrorClass::Other(_), _) => "other",
    };
    match e.os_code {
        Some(code) => format!("{name} {code}"),
        None => name.to_string(),
    }
}

fn cut(text: &str) -> String {
    let t: String = text.trim().chars().take(160).collect();
    if t.len() < text.trim().len() {
        format!("{t}…")
    } else {
        t
    }
}

fn pool_line(p: &HostPool, os: Os) -> String {
    format!(
        "host-wide pool ({}: every outbound socket holds its port exclusively, whatever the destination): {} of {} usable ports held ({:.1} %), {} by TIME_WAIT{}; range {}-{}{}",
        os.name(),
        int(p.in_use),
        int(p.size),
        pct(p.in_use, p.size),
        int(p.time_wait),
        if p.bound > 0 { format!(", {} BOUND", int(p.bound)) } else { String::new() },
        p.range_low,
        p.range_high,
        if p.excluded_ports > 0 { format!(" less {} excluded", int(p.excluded_ports)) } else { String::new() }
    )
}

fn headroom_line(p: &HostPool) -> String {
    let rate = p.size as f64 / f64::from(p.time_wait_secs.max(1));
    format!(
        "headroom: {} ports ÷ {} s TIME_WAIT{} = {:.0} new connections/s sustainable when the client closes first; {} ports free now",
        int(p.size),
        p.time_wait_secs,
        if p.time_wait_assumed { " (assumed)" } else { "" },
        rate,
        int(p.size.saturating_sub(p.in_use))
    )
}

fn exhaustion(e: &CapturedEvidence) -> Option<Finding> {
    let failures = e.count(|x| e.is_exhaustion(x));
    let events = e.event_4227 + e.event_4231;
    let full = e
        .host_pool
        .as_ref()
        .filter(|p| p.size > 0 && p.in_use >= p.size);
    if failures == 0 && events == 0 && full.is_none() {
        return None;
    }
    let mut evidence = Vec::new();
    for x in e.errors.iter().filter(|x| e.is_exhaustion(x)) {
        evidence.push(format!(
            "{} × {}: \"{}\"",
            int(x.count),
            code_name(x),
            cut(&x.example)
        ));
    }
    if e.event_4231 > 0 {
        evidence.push(format!(
            "{} × Tcpip event 4231: the global TCP port space was exhausted",
            int(e.event_4231)
        ));
    }
    if e.event_4227 > 0 {
        evidence.push(format!("{} × Tcpip event 4227: a local port was reused while its 4-tuple to the same remote endpoint was still in TIME_WAIT", int(e.event_4227)));
    }
    if e.os == Os::Windows && failures > 0 {
        evidence.push("on Windows, connect() without a free dynamic port fails with 10055 WSAENOBUFS (event 4231), and with 10048 WSAEADDRINUSE when the chosen port's 4-tuple is still in TIME_WAIT (event 4227)".to_string());
    }
    if let Some(p) = &e.host_pool {
        evidence.push(pool_line(p, e.os));
        evidence.push(headroom_line(p));
        if failures + events > 0 && p.in_use * 2 < p.size {
            let hidden = match (e.os, p.bound_visible) {
                (Os::Windows, false) => ", or the ports are held by BOUND sockets that netstat -ano hides (capture netstat -anoq or Get-NetTCPConnection)",
                _ => "",
            };
            evidence.push(format!(
                "the captured table shows the pool only {:.0} % full: it was taken at another moment than the failures{hidden}",
                pct(p.in_use, p.size),
            ));
            let collisions =
                e.event_4227 + e.count(|x| e.is_exhaustion(x) && x.kind == ErrorClass::AddrInUse);
            if e.os == Os::Windows && collisions > 0 {
                evidence.push("10048 / event 4227 is a collision with a TIME_WAIT 4-tuple to the same remote endpoint: it strikes once the ports in use towards that destination wrap around, before the whole range is held".to_string());
            }
        }
    } else if !e.table_captured {
        evidence.push("no socket table captured: the errors alone say exhaustion; a netstat -anoq taken during the failures shows who holds the ports".to_string());
    }
    if let Some((growth, Some(ttf))) = e.growth.filter(|(g, _)| *g > 0.0) {
        evidence.push(format!("over the snapshots the ports in use grew by {growth:.1}/s: full in ≈ {ttf:.0} s at that rate"));
    }
    let summary = match (failures > 0, full.is_some()) {
        (true, true) => format!(
            "Ephemeral-port exhaustion: {} failed for lack of a local port and the host-wide pool is full",
            connects(failures)
        ),
        (true, false) => format!(
            "Ephemeral-port exhaustion: {} failed with the {} error for no free local port",
            connects(failures),
            e.os.name()
        ),
        (false, true) => "Ephemeral-port exhaustion: every usable port of the host-wide pool is held; new outbound connections fail now".to_string(),
        (false, false) => "Ephemeral-port exhaustion: the Tcpip event log says the port space ran out".to_string(),
    };
    Some(Finding {
        cause: Cause::PortExhaustion,
        severity: Severity::Critical,
        summary,
        evidence,
        remedies: os_remedies(e.os, !e.portproxy.is_empty()),
        corrections: remedies::corrections(),
    })
}

fn host_pressure(e: &CapturedEvidence) -> Option<Finding> {
    let p = e.host_pool.as_ref()?;
    if e.count(|x| e.is_exhaustion(x)) > 0 || e.event_4231 + e.event_4227 > 0 {
        return None;
    }
    if p.in_use >= p.size || p.in_use * 2 < p.size {
        return None;
    }
    let mut evidence = vec![pool_line(p, e.os), headroom_line(p)];
    if let Some((growth, ttf)) = e.growth {
        match ttf {
            Some(t) if growth > 0.0 => evidence.push(format!(
                "over the snapshots the ports in use grew by {growth:.1}/s: full in ≈ {t:.0} s at that rate"
            )),
            _ => evidence.push(format!("over the snapshots the ports in use changed by {growth:.1}/s: not growing")),
        }
    }
    Some(Finding {
        cause: Cause::TimeWaitPressure,
        severity: Severity::Warning,
        summary: format!(
            "The host-wide pool is {:.0} % held; no port failures were captured, but new outbound connections fail once it is full",
            pct(p.in_use, p.size)
        ),
        evidence,
        remedies: os_remedies(e.os, !e.portproxy.is_empty()),
        corrections: remedies::corrections(),
    })
}

fn refused(e: &CapturedEvidence) -> Option<Finding> {
    let n = e.count(|x| x.kind == ErrorClass::ConnectionRefused);
    if n == 0 {
        return None;
    }
    let first = e.first(|x| x.kind == ErrorClass::ConnectionRefused)?;
    let exhaustion = e.count(|x| e.is_exhaustion(x));
    let mut evidence = vec![format!(
        "{} × {}: \"{}\"",
        int(n),
        code_name(first),
        cut(&first.example)
    )];
    evidence.push(match e.os {
        Os::Windows => format!(
            "a refusal is an answer from the listener: the client had a local port, sent its SYN and got a reset back. Windows reports port exhaustion as 10055 (WSAENOBUFS) or 10048 (WSAEADDRINUSE){}",
            if exhaustion == 0 { ", and none were captured" } else { "" }
        ),
        _ => format!(
            "a refusal is an answer from the listener: the client had a local port and got a reset to its SYN; {} reports port exhaustion as EADDRNOTAVAIL{}",
            e.os.name(),
            if exhaustion == 0 { ", and none were captured" } else { "" }
        ),
    });
    if let Some(p) = &e.host_pool {
        evidence.push(format!(
            "the host-wide pool held {} of {} ports ({:.1} %), {} TIME_WAIT: far from the {} it would take to run out",
            int(p.in_use),
            int(p.size),
            pct(p.in_use, p.size),
            int(p.time_wait),
            int(p.size)
        ));
    }
    let port = first.destination.map(|d| d.port());
    let listening = port.filter(|p| e.listening_ports.contains(p));
    for rule in &e.portproxy {
        evidence.push(format!(
            "netsh portproxy {rule}: the IP Helper service (iphlpsvc) accepts on the listen side and opens one new connection to the connect side per client, so two listeners stand in the path"
        ));
    }
    match (port, listening, e.table_captured) {
        (Some(p), Some(_), _) => evidence.push(format!(
            "port {p} is LISTENING in the captured table: something listens, so a full accept backlog is the likelier cause than nothing listening"
        )),
        (Some(p), None, true) => evidence.push(format!(
            "no listener on port {p} in the captured table: if the table is from this host and moment, nothing was listening there"
        )),
        _ => {}
    }
    let candidate = match e.os {
        Os::Windows => {
            evidence.push("on Windows a listener whose accept backlog is full answers new SYNs with a reset, which the client reports exactly like \"nothing listening\" (WSAECONNREFUSED 10061; Winsock listen() documentation)".to_string());
            if e.portproxy.is_empty() {
                "the server's accept backlog"
            } else {
                "the forwarder's (iphlpsvc portproxy) or the server's accept backlog"
            }
        }
        Os::Macos => "the server's accept backlog (macOS drops or resets when it is full) or a listener that is gone",
        _ => "a listener that is gone or not yet up (a full Linux backlog drops SYNs and shows as timeouts, not refusals, unless tcp_abort_on_overflow=1)",
    };
    evidence.push(format!("candidate to check: {candidate}"));
    evidence.push(if e.os == Os::Windows {
        "what settles it: (1) a netstat -anoq taken while the refusals happen shows the port LISTENING; (2) the refusals grow with concurrency (-c 10 vs -c 50) and stop when the load goes to the server directly instead of through the forwarder; (3) netstat -s -p tcp shows Reset Connections and Failed Connection Attempts rising during the run".to_string()
    } else {
        "what settles it: the port LISTENING in a table taken during the failures; refusals that grow with concurrency; the server's listen backlog (ss -ltn: Send-Q is the backlog, Recv-Q the queue)".to_string()
    });
    Some(Finding {
        cause: Cause::ServerSide,
        severity: if n >= 10 { Severity::Critical } else { Severity::Warning },
        summary: format!(
            "Not port exhaustion: {} connection attempts were refused by the listener ({}); check {candidate}",
            int(n),
            code_name(first)
        ),
        evidence,
        remedies: refused_remedies(e.os, !e.portproxy.is_empty()),
        corrections: vec![Correction {
            claim: "Actively refused under load means the client ran out of ports",
            truth: "a refusal is a reset from the listener: the client had its port. Windows reports exhaustion as 10055 WSAENOBUFS or 10048 WSAEADDRINUSE, Linux as EADDRNOTAVAIL",
            source: "Winsock listen() reference (WSAECONNREFUSED when the queue is full); KB 196271 (WSAENOBUFS 10055)",
        }],
    })
}

/// The server's answer was not a complete response: HTTP/1.1 framing or an early close, or
/// an HTTP/2 GOAWAY, RST_STREAM or flow-control error (the peer's answer, not the socket's).
fn is_protocol(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Protocol
            | ErrorClass::GoAway
            | ErrorClass::StreamReset
            | ErrorClass::FlowControl
    )
}

fn resets_and_timeouts(e: &CapturedEvidence) -> Option<Finding> {
    let resets = e.count(|x| x.kind == ErrorClass::ConnectionReset);
    let connect_timeouts = e.count(|x| x.kind == ErrorClass::ConnectTimeout);
    let response_timeouts = e.count(|x| x.kind == ErrorClass::ResponseTimeout);
    let protocol = e.count(|x| is_protocol(x.kind));
    let n = resets + connect_timeouts + response_timeouts + protocol;
    if n == 0 {
        return None;
    }
    let mut evidence = Vec::new();
    for x in e.errors.iter().filter(|x| {
        is_protocol(x.kind)
            || matches!(
                x.kind,
                ErrorClass::ConnectionReset
                    | ErrorClass::ConnectTimeout
                    | ErrorClass::ResponseTimeout
            )
    }) {
        evidence.push(format!(
            "{} × {}: \"{}\"",
            int(x.count),
            code_name(x),
            cut(&x.example)
        ));
    }
    if resets > 0 {
        evidence.push("resets come from the server or a hop (a forwarder, a load balancer, a NAT whose mapping expired), not from the client's port pool".to_string());
    }
    if connect_timeouts > 0 {
        evidence.push("connect timeouts mean SYNs went unanswered: a full Linux accept queue drops them, so can a NAT or conntrack table that is full, or a firewall".to_string());
    }
    if response_timeouts > 0 {
        evidence.push("response timeouts: the connection was open but no complete answer came in time (a slow or stalled server)".to_string());
    }
    let worst = [
        (resets, "reset"),
        (connect_timeouts, "connect timeouts"),
        (response_timeouts, "response timeouts"),
        (protocol, "closed early"),
    ]
    .into_iter()
    .max_by_key(|(c, _)| *c)
    .map_or("failed", |(_, w)| w);
    Some(Finding {
        cause: Cause::ServerSide,
        severity: if n >= 10 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary: format!(
            "{} requests failed on the server's side of the path: mostly {worst}",
            int(n)
        ),
        evidence,
        remedies: remedies::server_side(),
        corrections: Vec::new(),
    })
}

fn fd_limit(e: &CapturedEvidence) -> Option<Finding> {
    let n = e.count(|x| x.kind == ErrorClass::TooManyOpenFiles);
    let first = e.first(|x| x.kind == ErrorClass::TooManyOpenFiles)?;
    Some(Finding {
        cause: Cause::FileDescriptorLimit,
        severity: Severity::Critical,
        summary: format!(
            "{} failures with {}: the process ran out of descriptors, not ports",
            int(n),
            code_name(first)
        ),
        evidence: vec![format!("{} × \"{}\"", int(n), cut(&first.example))],
        remedies: remedies::fd_limit(),
        corrections: Vec::new(),
    })
}

fn healthy(e: &CapturedEvidence) -> Finding {
    let mut evidence = Vec::new();
    if let Some(p) = &e.host_pool {
        evidence.push(pool_line(p, e.os));
        evidence.push(headroom_line(p));
    }
    if e.errors.is_empty() {
        evidence.push("no error lines captured".to_string());
    }
    Finding {
        cause: Cause::Healthy,
        severity: Severity::Info,
        summary: "Healthy: the captured pool is not near exhaustion and no failures point at ports"
            .to_string(),
        evidence,
        remedies: Vec::new(),
        corrections: Vec::new(),
    }
}

const MS_LISTEN: &str =
    "Winsock listen() reference: a full queue makes the client receive WSAECONNREFUSED";
const MS_PORTPROXY: &str = "Microsoft Learn, netsh interface portproxy: connections are relayed \"after establishing a separate TCP connection\"";

const MS_PORT_SCALABILITY: &str = "Microsoft Learn, SO_PORT_SCALABILITY: wildcard ports are otherwise limited to the dynamic range no matter the number of local IP addresses";
const XNU_PCBBIND: &str =
    "XNU bsd/netinet/in_pcb.c in_pcbbind(): a port is taken per local address";

fn os_remedies(os: Os, portproxy: bool) -> Vec<Remedy> {
    let mut list = remedies::port_exhaustion();
    // The generic "more source IPs" remedy is the Linux per-4-tuple story; on Windows and
    // macOS only an explicit bind to each address gives it its own ports.
    let source_ips = match os {
        Os::Windows => Some(Remedy {
            os: Os::Windows,
            action: "Spread connections over several local IP addresses, binding each socket with SO_PORT_SCALABILITY".to_string(),
            command: Some("setsockopt(s, SOL_SOCKET, SO_PORT_SCALABILITY, 1) then bind(s, {local_ip_n, 0}) before connect()".to_string()),
            effect: "Each local address gets the whole dynamic range; without it Windows shares one range among all addresses.".to_string(),
            caveat: "An application change; ports taken this way are not available to sockets without the option, and Microsoft now points to SO_REUSE_UNICASTPORT.".to_string(),
            source: MS_PORT_SCALABILITY,
        }),
        Os::Macos => Some(Remedy {
            os: Os::Macos,
            action: "Spread connections over several local IP addresses, binding each socket to one".to_string(),
            command: Some("bind(s, {local_ip_n, 0}) before connect()".to_string()),
            effect: "XNU takes a port per local address, so each address has its own 16,384 ports.".to_string(),
            caveat: "An application change; the addresses must route to the destination.".to_string(),
            source: XNU_PCBBIND,
        }),
        _ => None,
    };
    if let Some(r) = source_ips {
        if let Some(at) = list.iter().position(|x| {
            x.action
                .starts_with("Spread connections over more source IPs")
        }) {
            list[at] = r;
        }
    }
    if os == Os::Windows && portproxy {
        list.insert(
            1,
            Remedy {
                os: Os::Windows,
                action: "Replace netsh portproxy with a reverse proxy that pools upstream connections".to_string(),
                command: Some("netsh interface portproxy delete v4tov4 listenport=<port> listenaddress=<addr>  (then nginx/HAProxy with upstream keepalive on that port)".to_string()),
                effect: "portproxy opens one new upstream connection, and so takes one more dynamic port, for every client connection; a pooling proxy carries many requests on a few.".to_string(),
                caveat: "The clients' own connections still take ports on the client host; keep-alive there is the real fix.".to_string(),
                source: MS_PORTPROXY,
            },
        );
    }
    list
}

fn refused_remedies(os: Os, portproxy: bool) -> Vec<Remedy> {
    let mut list = vec![Remedy {
        os: Os::Any,
        action: "Raise the listener's accept backlog, or make it accept faster".to_string(),
        command: Some("nginx: listen 8080 backlog=4096;  (apps: listen(fd, SOMAXCONN) and a non-blocking accept loop)".to_string()),
        effect: "Bursts of connects wait in the queue instead of being refused.".to_string(),
        caveat: "Linux also caps it with net.core.somaxconn; a slow accept loop fills any queue.".to_string(),
        source: MS_LISTEN,
    }];
    if os == Os::Windows && portproxy {
        list.push(Remedy {
            os: Os::Windows,
            action: "Take netsh portproxy out of the path: point the load at the server, or use a reverse proxy".to_string(),
            command: Some("netsh interface portproxy show all   (then target the connect address directly, or run nginx/HAProxy in its place)".to_string()),
            effect: "One listener fewer that can refuse, and no second connection per client.".to_string(),
            caveat: "Needs the server reachable directly (firewall, binding address).".to_string(),
            source: MS_PORTPROXY,
        });
    }
    list.push(Remedy {
        os: Os::Any,
        action: "Lower the concurrency to below what the listener accepts".to_string(),
        command: Some("hey -c 10 …  (or portlab load -c 10 …)".to_string()),
        effect: "Fewer simultaneous connects than the backlog holds.".to_string(),
        caveat: "Treats the symptom.".to_string(),
        source: MS_LISTEN,
    });
    list.retain(|r| r.os == Os::Any || r.os == os);
    list
}

/// Folklore about macOS ports, corrected (printed with macOS port findings).
pub fn macos_corrections() -> Vec<Correction> {
    vec![
        Correction {
            claim: "Like Linux, macOS gives each destination its own range of ports",
            truth: "XNU binds the ephemeral port before the destination is known and takes a port no other socket on the address holds: one pool of 16,384 ports (49152-65535) for all destinations, TIME_WAIT included",
            source: "XNU bsd/netinet/in_pcb.c in_pcbconnect() / in_pcbbind()",
        },
        Correction {
            claim: "Port exhaustion shows up as connection refused",
            truth: "on macOS it is EADDRNOTAVAIL 49 (\"Can't assign requested address\"); a refusal is a reset from the listener",
            source: "XNU in_pcbbind() returns EADDRNOTAVAIL; FreeBSD lib/libc/gen/errlst.c",
        },
    ]
}

/// Folklore about Windows ports, corrected (printed with Windows port findings).
pub fn windows_corrections() -> Vec<Correction> {
    vec![
        Correction {
            claim: "netsh int ipv4 set dynamicport changes the TIME_WAIT time",
            truth: "it widens the dynamic port range only; TIME_WAIT is TcpTimedWaitDelay in the registry",
            source: "Microsoft Learn, \"Troubleshoot port exhaustion issues\"",
        },
        Correction {
            claim: "Port exhaustion shows up as actively refused (10061)",
            truth: "Windows reports a connect without a free dynamic port as 10055 WSAENOBUFS (event 4231) or 10048 WSAEADDRINUSE (event 4227); 10061 is a reset from the listener",
            source: "KB 196271 (WSAENOBUFS 10055); KB for event 4227 (WSAEADDRINUSE 10048)",
        },
        Correction {
            claim: "netsh int tcp set global autotuninglevel=highlyrestricted fixes port or TIME_WAIT problems",
            truth: "autotuninglevel sets Receive Window Auto-Tuning (how far the TCP receive window may grow); it changes no timeout, no port range and no TIME_WAIT",
            source: "Microsoft Learn, netsh interface tcp set global: autotuninglevel = Receive Window Auto-Tuning level",
        },
        Correction {
            claim: "Raise MaxUserPort to get more ephemeral ports",
            truth: "MaxUserPort set the top of the 1025-5000 range up to Windows Server 2003; since Vista the range is a start and a number set with netsh int ipv4 set dynamicport tcp (KB 929851), and netsh int ipv4 show dynamicport tcp shows what applies. Microsoft documents no effect of MaxUserPort on Vista and later",
            source: "Microsoft KB 929851 \"The default dynamic port range for TCP/IP has changed in Windows Vista and in Windows Server 2008\"",
        },
    ]
}

fn snake_case_class<S: serde::Serializer>(class: &ErrorClass, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(class.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorClass, code: i32, count: u64, example: &str) -> CapturedError {
        CapturedError {
            kind,
            os_code: Some(code),
            call: Some(FailedCall::Connect),
            count,
            destination: "127.0.0.1:8080".parse().ok(),
            ipv6_loopback: false,
            example: example.to_string(),
        }
    }

    fn pool(in_use: u64, time_wait: u64) -> HostPool {
        HostPool {
            range_low: 49152,
            range_high: 65535,
            size: 16384,
            excluded_ports: 0,
            in_use,
            time_wait,
            bound: 0,
            time_wait_secs: 240,
            time_wait_assumed: true,
            bound_visible: false,
        }
    }

    fn evidence(errors: Vec<CapturedError>, host_pool: Option<HostPool>) -> CapturedEvidence {
        CapturedEvidence {
            os: Os::Windows,
            host_pool,
            linux: None,
            errors,
            event_4227: 0,
            event_4231: 0,
            portproxy: vec!["0.0.0.0:8080 → 127.0.0.1:80".to_string()],
            listening_ports: vec![8080],
            growth: None,
            table_captured: true,
        }
    }

    #[test]
    fn the_seed_refusal_is_not_exhaustion() {
        let e = evidence(
            vec![err(ErrorClass::ConnectionRefused, 10061, 4879, "connectex: No connection could be made because the target machine actively refused it.")],
            Some(pool(420, 380)),
        );
        let findings = diagnose_captured(&e);
        assert!(
            findings.iter().all(|f| f.cause != Cause::PortExhaustion),
            "{findings:#?}"
        );
        let top = &findings[0];
        assert_eq!(top.cause, Cause::ServerSide);
        assert!(
            top.summary.starts_with("Not port exhaustion"),
            "{}",
            top.summary
        );
        let text = top.evidence.join("\n");
        assert!(
            text.contains("10055 (WSAENOBUFS) or 10048 (WSAEADDRINUSE), and none were captured"),
            "{text}"
        );
        assert!(text.contains("accept backlog"), "{text}");
        assert!(text.contains("port 8080 is LISTENING"), "{text}");
        assert!(top
            .remedies
            .iter()
            .all(|r| matches!(r.os, Os::Any | Os::Windows)));
    }

    #[test]
    fn wsaenobufs_with_a_full_range_is_critical_exhaustion() {
        let e = evidence(
            vec![err(ErrorClass::NoBufferSpace, 10055, 200, "bind: An operation on a socket could not be performed because the system lacked sufficient buffer space or because a queue was full.")],
            Some(pool(16384, 16380)),
        );
        let findings = diagnose_captured(&e);
        let top = &findings[0];
        assert_eq!(
            (top.cause, top.severity),
            (Cause::PortExhaustion, Severity::Critical)
        );
        assert!(top.summary.contains("pool is full"), "{}", top.summary);
        let commands: Vec<&str> = top
            .remedies
            .iter()
            .filter_map(|r| r.command.as_deref())
            .collect();
        assert!(
            commands
                .iter()
                .any(|c| c.starts_with("netsh int ipv4 set dynamicport tcp start=")),
            "{commands:?}"
        );
        assert!(commands.iter().any(|c| c.contains("TcpTimedWaitDelay")));
        assert!(
            !commands.iter().any(|c| c.starts_with("sysctl")),
            "no Linux commands for Windows"
        );
        assert!(top
            .corrections
            .iter()
            .any(|c| c.claim.contains("autotuninglevel")));
        assert!(top
            .corrections
            .iter()
            .any(|c| c.claim.contains("MaxUserPort")));
    }

    #[test]
    fn half_full_pool_without_errors_warns() {
        let findings = diagnose_captured(&evidence(Vec::new(), Some(pool(9000, 8000))));
        assert_eq!(findings[0].cause, Cause::TimeWaitPressure);
        let healthy = diagnose_captured(&evidence(Vec::new(), Some(pool(100, 10))));
        assert_eq!(healthy[0].cause, Cause::Healthy);
    }
}
