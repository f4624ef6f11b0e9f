//! The catalogue of remedies, per OS, with their effect, their caveats and where the fact comes
//! from, and the folklore corrections portlab prints beside them. Every Linux command here is
//! checked by a test that asks the kernel for the sysctl key it names.

use serde::Serialize;

/// Which operating system a remedy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Os {
    /// Any OS: an application or architecture change.
    Any,
    /// Linux.
    Linux,
    /// Windows (Vista / Server 2008 and later unless said otherwise).
    Windows,
    /// macOS.
    Macos,
}

impl Os {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Os::Any => "any OS",
            Os::Linux => "Linux",
            Os::Windows => "Windows",
            Os::Macos => "macOS",
        }
    }
}

/// One thing to do about a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remedy {
    /// The OS it applies to.
    pub os: Os,
    /// What to do, in a few words.
    pub action: String,
    /// The command or setting, where there is one.
    pub command: Option<String>,
    /// What it changes.
    pub effect: String,
    /// What it costs or needs.
    pub caveat: String,
    /// Where the fact comes from.
    pub source: &'static str,
}

/// A piece of folklore and what is true instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Correction {
    /// What is often said.
    pub claim: &'static str,
    /// What is true.
    pub truth: &'static str,
    /// Where that comes from.
    pub source: &'static str,
}

const IP_SYSCTL: &str =
    "Linux Documentation/networking/ip-sysctl.rst (ip_local_port_range, tcp_tw_reuse, tcp_tw_reuse_delay)";
const TW_UNIQUE: &str = "Linux net/ipv4/tcp_ipv4.c tcp_twsk_unique(): TIME_WAIT takeover needs reuse, timestamps and the reuse delay";
const HASH_CONNECT: &str =
    "Linux net/ipv4/inet_hashtables.c __inet_hash_connect(): connect() picks a port per 4-tuple";
const BIND_NO_PORT: &str =
    "man 7 ip, IP_BIND_ADDRESS_NO_PORT (Linux 4.2): bind(ip, 0) without reserving a port";
const MS_PORT_EXHAUSTION: &str =
    "Microsoft Learn, \"Troubleshoot port exhaustion issues\" (netsh int ipv4 set dynamicport)";
const MS_TCP_PARAMS: &str = "Microsoft, TCP/IP registry reference: TcpTimedWaitDelay (30-300 s; documented default 240 s or 120 s by version)";
const XNU_PORTRANGE: &str =
    "XNU bsd/netinet/in_pcb.c and ip_input.c: net.inet.ip.portrange.first/last (49152-65535)";
const XNU_MSL: &str = "XNU bsd/netinet/tcp_timer.h: TIME_WAIT = 2 x net.inet.tcp.msl (15 s) = 30 s";
const TCP_CLOSE_LINGER: &str =
    "socket(7) SO_LINGER; Linux net/ipv4/tcp.c __tcp_close(): linger 0 sends RST, no TIME_WAIT";
const RFC_9112: &str = "RFC 9112 section 9.3 (persistent connections)";
const NGINX_UPSTREAM: &str = "nginx ngx_http_upstream_module: keepalive; HAProxy http-reuse";
const LISTEN_BACKLOG: &str = "listen(2) backlog, capped by net.core.somaxconn; Linux net/ipv4/tcp_ipv4.c tcp_v4_syn_recv_sock() counts ListenOverflows";
const RLIMIT: &str = "getrlimit(2) RLIMIT_NOFILE; EMFILE in socket(2)";

/// A [`Remedy`] from its parts (also the NAT findings' remedies).
pub(crate) fn remedy(
    os: Os,
    action: &str,
    command: Option<&str>,
    effect: &str,
    caveat: &str,
    source: &'static str,
) -> Remedy {
    Remedy {
        os,
        action: action.to_string(),
        command: command.map(str::to_string),
        effect: effect.to_string(),
        caveat: caveat.to_string(),
        source,
    }
}

/// Remedies for ephemeral-port exhaustion and TIME_WAIT pressure on the client side, the real
/// fix first. `widen_to` is the range the Linux command proposes.
pub fn port_exhaustion() -> Vec<Remedy> {
    vec![
        remedy(
            Os::Any,
            "Reuse connections: HTTP keep-alive with a connection pool",
            Some("portlab load --connection keep-alive …  (in apps: one shared HTTP client/pool)"),
            "A pooled connection carries thousands of requests on one port; churn and TIME_WAIT drop to almost nothing. This is the real fix.",
            "Needs the server to allow keep-alive; size the pool to the concurrency.",
            RFC_9112,
        ),
        remedy(
            Os::Any,
            "Put a reverse proxy with upstream keep-alive in front instead of a port forwarder",
            Some("portlab proxy --mode http --pool 64 …  (nginx: keepalive 64 in the upstream block; HAProxy: http-reuse)"),
            "Clients may still open and close connections, but the proxy carries their requests over a small pool of upstream connections.",
            "One more hop; a TCP-level forwarder (netsh portproxy, socat) opens one upstream connection per client connection and does not help.",
            NGINX_UPSTREAM,
        ),
        remedy(
            Os::Any,
            "Spread connections over more source IPs (or more destination ports/IPs)",
            Some("portlab load --source-ip 10.0.0.5,10.0.0.6 …  (apps: bind(ip, 0) with IP_BIND_ADDRESS_NO_PORT)"),
            "Each (source IP, destination) pair has its own pool on Linux, so N source IPs give N times the ports.",
            "bind(ip, 0) without IP_BIND_ADDRESS_NO_PORT reserves the port for all destinations and makes things worse; Windows and macOS pools are host-wide.",
            BIND_NO_PORT,
        ),
        remedy(
            Os::Linux,
            "Widen the ephemeral port range",
            Some("sysctl -w net.ipv4.ip_local_port_range=\"15000 65000\""),
            "50,001 ports per pool instead of 28,232: about 1.8 times the sustainable rate.",
            "Keep clear of ports your services listen on (or list them in net.ipv4.ip_local_reserved_ports); per network namespace; persist in /etc/sysctl.d.",
            IP_SYSCTL,
        ),
        remedy(
            Os::Linux,
            "Let connect() reuse TIME_WAIT ports (tcp_tw_reuse=1)",
            Some("sysctl -w net.ipv4.tcp_tw_reuse=1"),
            "A TIME_WAIT 4-tuple becomes reusable after tcp_tw_reuse_delay (1 s) instead of 60 s: the sustainable rate rises about 60-fold.",
            "Needs net.ipv4.tcp_timestamps=1 on both ends; helps outgoing connections only (the active closer's side), does nothing for a server; the default 2 already does this for loopback.",
            TW_UNIQUE,
        ),
        remedy(
            Os::Linux,
            "Shorten the TIME_WAIT reuse delay (Linux 6.14+)",
            Some("sysctl -w net.ipv4.tcp_tw_reuse_delay=100"),
            "With tcp_tw_reuse on, a port is reusable 100 ms after the last segment instead of 1 s.",
            "Only with tcp_tw_reuse=1 (or 2 on loopback) and timestamps; the key is absent before Linux 6.14.",
            IP_SYSCTL,
        ),
        remedy(
            Os::Windows,
            "Widen the dynamic port range",
            Some("netsh int ipv4 set dynamicport tcp start=10000 num=55535"),
            "55,535 ports instead of 16,384 (host-wide on Windows, shared by all destinations).",
            "This widens the range only; it does not change the TIME_WAIT length. Check reserved blocks first: netsh int ipv4 show excludedportrange protocol=tcp.",
            MS_PORT_EXHAUSTION,
        ),
        remedy(
            Os::Windows,
            "Shorten TIME_WAIT (TcpTimedWaitDelay)",
            Some("reg add HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters /v TcpTimedWaitDelay /t REG_DWORD /d 30 /f"),
            "TIME_WAIT of 30 s instead of the default (120 s or 240 s by Windows version): ports return 4-8 times sooner.",
            "Takes effect after a reboot; below 2 x MSL late segments of an old connection can corrupt a new one.",
            MS_TCP_PARAMS,
        ),
        remedy(
            Os::Macos,
            "Widen the ephemeral port range",
            Some("sudo sysctl -w net.inet.ip.portrange.first=32768"),
            "32,768 ports instead of 16,384 (held exclusively per local address, shared by all destinations).",
            "Not persistent across reboots unless set in /etc/sysctl.conf.",
            XNU_PORTRANGE,
        ),
        remedy(
            Os::Macos,
            "Shorten TIME_WAIT via the MSL",
            Some("sudo sysctl -w net.inet.tcp.msl=5000"),
            "TIME_WAIT is 2 x MSL: 10 s instead of 30 s.",
            "Value in ms; shorter than real network delays risks old segments corrupting new connections.",
            XNU_MSL,
        ),
        remedy(
            Os::Any,
            "Close with SO_LINGER {on, 0} (abortive close)",
            Some("setsockopt(fd, SOL_SOCKET, SO_LINGER, {l_onoff=1, l_linger=0}) before close()"),
            "close() sends RST and frees the port at once: no TIME_WAIT.",
            "Unsent and in-flight data is lost and the peer sees a reset; a last resort, not a fix.",
            TCP_CLOSE_LINGER,
        ),
        remedy(
            Os::Any,
            "Lower the concurrency or the connection rate",
            Some("portlab load -c 10 …  or  --rate N with N below the sustainable rate"),
            "Keeps churn under ports / TIME_WAIT, the rate one pool sustains.",
            "Treats the symptom: less throughput.",
            HASH_CONNECT,
        ),
    ]
}

/// Remedies for a listener whose accept queue overflows.
pub fn listen_queue() -> Vec<Remedy> {
    vec![
        remedy(
            Os::Any,
            "Accept faster or add server capacity",
            None,
            "The accept queue drains as fast as it fills; SYNs are no longer dropped.",
            "A server that accepts slowly (blocked event loop, too few workers) is the usual cause.",
            LISTEN_BACKLOG,
        ),
        remedy(
            Os::Linux,
            "Raise the listen backlog and its cap",
            Some("sysctl -w net.core.somaxconn=4096"),
            "A longer accept queue absorbs bursts of connects.",
            "The server must also pass a larger backlog to listen() (nginx: listen … backlog=4096); per network namespace.",
            LISTEN_BACKLOG,
        ),
        remedy(
            Os::Linux,
            "Raise the SYN backlog",
            Some("sysctl -w net.ipv4.tcp_max_syn_backlog=8192"),
            "More half-open connections are kept while the server catches up.",
            "Helps only with SYN_RECV pressure, not with a full accept queue.",
            IP_SYSCTL,
        ),
    ]
}

/// Remedies for EMFILE/ENFILE.
pub fn fd_limit() -> Vec<Remedy> {
    vec![
        remedy(
            Os::Linux,
            "Raise the open-file limit of the client process",
            Some("ulimit -n 65536   (systemd: LimitNOFILE=65536)"),
            "Each socket is one file descriptor; the limit caps concurrent connections.",
            "The hard limit caps what ulimit can set; fs.nr_open caps the hard limit.",
            RLIMIT,
        ),
        remedy(
            Os::Any,
            "Lower the concurrency below the descriptor limit",
            Some("portlab load -c N  with N well under the soft limit"),
            "Fewer sockets open at once.",
            "Less throughput.",
            RLIMIT,
        ),
    ]
}

/// Remedies when the server refuses, resets or times out.
pub fn server_side() -> Vec<Remedy> {
    vec![remedy(
        Os::Any,
        "Look at the server, not at the client's ports",
        None,
        "Refused connects mean nothing listens (or a firewall rejects); resets and timeouts come from the server or a hop in between.",
        "Check the server's logs, its accept loop and its limits (max connections, worker count, timeouts).",
        LISTEN_BACKLOG,
    )]
}

/// The folklore portlab corrects wherever port exhaustion is discussed.
pub fn corrections() -> Vec<Correction> {
    vec![
        Correction {
            claim: "Lower net.ipv4.tcp_fin_timeout to shorten TIME_WAIT",
            truth: "tcp_fin_timeout is the FIN_WAIT_2 timeout of orphaned sockets; TIME_WAIT is TCP_TIMEWAIT_LEN, 60 s compiled into Linux",
            source: "Linux include/net/tcp.h TCP_TIMEWAIT_LEN; ip-sysctl.rst tcp_fin_timeout",
        },
        Correction {
            claim: "Enable net.ipv4.tcp_tw_recycle",
            truth: "tcp_tw_recycle was removed in Linux 4.12 (it broke clients behind NAT); the key no longer exists",
            source: "Linux commit 4396e46187ca \"tcp: remove tcp_tw_recycle\"",
        },
        Correction {
            claim: "netsh int ipv4 set dynamicport changes the TIME_WAIT time",
            truth: "it widens the dynamic port range only; TIME_WAIT is TcpTimedWaitDelay in the registry",
            source: MS_PORT_EXHAUSTION,
        },
        Correction {
            claim: "Linux has one global pool of ephemeral ports",
            truth: "connect() without bind() picks a port per 4-tuple: each (source IP, destination IP, port) has the whole range",
            source: HASH_CONNECT,
        },
        Correction {
            claim: "Port exhaustion shows up as \"connection refused\"",
            truth: "on Linux it is EADDRNOTAVAIL (\"Cannot assign requested address\") from connect(); refused means nothing listens",
            source: HASH_CONNECT,
        },
    ]
}
