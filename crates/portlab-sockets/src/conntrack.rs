//! Connection tracking (netfilter conntrack) read through ctnetlink (`NETLINK_NETFILTER`,
//! subsystem `NFNL_SUBSYS_CTNETLINK`; net/netfilter/nf_conntrack_netlink.c), the interface
//! `conntrack -S/-C/-L` uses: per-CPU statistics, the table's count and limit, and the table
//! itself. Everything is per network namespace: a [`Conntrack`] handle reads the namespace it
//! was opened in ([`Conntrack::open`] for the caller's, [`Conntrack::open_in`] for another).
//!
//! On top of the dump, [`nat_pools`] groups source-NAT entries into pools keyed by
//! (protocol, NAT IP, destination): the kernel needs the *reply* tuple (destination ↔ NAT IP,
//! NAT port) to be unique, so each such key has its own set of NAT ports
//! (net/netfilter/nf_nat_core.c: `nf_nat_used_tuple()`, `nf_nat_l4proto_unique_tuple()`).
//!
//! Messages are framed and decoded with `netlink-packet-netfilter` (the same netlink-packet
//! stack as sock_diag); the statistics messages, which that crate leaves undecoded, are read
//! here from their attributes (`ctnetlink_ct_stat_cpu_fill_info()`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol,
    Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NetlinkAddr};
use serde::{Deserialize, Serialize};

/// `IPCTNL_MSG_CT_GET_STATS_CPU` (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const MSG_GET_STATS_CPU: u8 = 4;
/// `IPCTNL_MSG_CT_GET_STATS`.
const MSG_GET_STATS: u8 = 5;
/// `CTA_STATS_GLOBAL_ENTRIES`, `CTA_STATS_GLOBAL_MAX_ENTRIES`.
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;
/// `IPS_SRC_NAT` and `IPS_DST_NAT` of `enum ip_conntrack_status`
/// (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// See [`IPS_SRC_NAT`].
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `IPS_ASSURED`: replies seen and the flow kept (not early-dropped first).
pub const IPS_ASSURED: u32 = 1 << 2;
/// Receive buffer: dumps arrive in skbs of up to 32 KiB.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// Ports of the kernel's default SNAT range when the rule names none and the original port is
/// ≥ 1024: 1024–65535 (`nf_nat_l4proto_unique_tuple()`).
pub const DEFAULT_NAT_PORTS: u64 = 64_512;

/// Errors reading conntrack.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The kernel refused (no CAP_NET_ADMIN in the namespace's user namespace, or a policy).
    #[error(
        "ctnetlink denied ({0}): reading conntrack needs CAP_NET_ADMIN in the network namespace (run as root)"
    )]
    PermissionDenied(io::Error),
    /// No conntrack in this kernel or namespace (module not loaded, CONFIG_NF_CT_NETLINK off).
    #[error(
        "no conntrack here ({0}): the kernel has no nf_conntrack_netlink, or no NAT/conntrack rule has loaded conntrack in this namespace"
    )]
    Unavailable(io::Error),
    /// Opening, sending or receiving failed.
    #[error("talking to ctnetlink: {0}")]
    Io(io::Error),
    /// Entering the namespace failed.
    #[error("entering network namespace {path}: {source}")]
    Namespace {
        /// The namespace file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A message could not be decoded.
    #[error("decoding a ctnetlink message: {0}")]
    Decode(String),
}

/// The per-CPU counters of `conntrack -S`, summed or for one CPU. Counters only grow (they
/// wrap at 2³²); take [`StatCounters::delta`] between two reads.
///
/// Meanings (net/netfilter/nf_conntrack_core.c, nf_nat_core.c, Linux 6.12):
/// `found` — a NAT or clash probe hit a taken tuple; `insert_failed` — confirming a new entry
/// lost a clash (NAT port exhaustion, the SNAT race, a too-long chain); `drop` — a packet
/// dropped by conntrack (clash, table full); `early_drop` — an entry evicted because the table
/// was full; `clash_resolve` — a UDP clash resolved without a drop; `insert` counts only
/// entries created through ctnetlink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCounters {
    /// `CTA_STATS_FOUND`.
    pub found: u64,
    /// `CTA_STATS_INVALID`.
    pub invalid: u64,
    /// `CTA_STATS_INSERT`.
    pub insert: u64,
    /// `CTA_STATS_INSERT_FAILED`.
    pub insert_failed: u64,
    /// `CTA_STATS_DROP`.
    pub drop: u64,
    /// `CTA_STATS_EARLY_DROP`.
    pub early_drop: u64,
    /// `CTA_STATS_ERROR`.
    pub error: u64,
    /// `CTA_STATS_SEARCH_RESTART`.
    pub search_restart: u64,
    /// `CTA_STATS_CLASH_RES`.
    pub clash_resolve: u64,
    /// `CTA_STATS_CHAIN_TOOLONG`.
    pub chain_toolong: u64,
}

impl StatCounters {
    /// `self - earlier`, counter by counter, allowing for 32-bit wrap-around.
    pub fn delta(&self, earlier: &StatCounters) -> StatCounters {
        let d = |now: u64, then: u64| {
            if now >= then {
                now - then
            } else {
                (now + (1u64 << 32)).saturating_sub(then)
            }
        };
        StatCounters {
            found: d(self.found, earlier.found),
            invalid: d(self.invalid, earlier.invalid),
            insert: d(self.insert, earlier.insert),
            insert_failed: d(self.insert_failed, earlier.insert_failed),
            drop: d(self.drop, earlier.drop),
            early_drop: d(self.early_drop, earlier.early_drop),
            error: d(self.error, earlier.error),
            search_restart: d(self.search_restart, earlier.search_restart),
            clash_resolve: d(self.clash_resolve, earlier.clash_resolve),
            chain_toolong: d(self.chain_toolong, earlier.chain_toolong),
        }
    }

    fn add(&mut self, other: &StatCounters) {
        self.found += other.found;
        self.invalid += other.invalid;
        self.insert += other.insert;
        self.insert_failed += other.insert_failed;
        self.drop += other.drop;
        self.early_drop += other.early_drop;
        self.error += other.error;
        self.search_restart += other.search_restart;
        self.clash_resolve += other.clash_resolve;
        self.chain_toolong += other.chain_toolong;
    }

    fn set(&mut self, kind: u16, value: u64) {
        // CTA_STATS_* (enum ctattr_stats_cpu).
        match kind {
            2 => self.found = value,
            4 => self.invalid = value,
            8 => self.insert = value,
            9 => self.insert_failed = value,
            10 => self.drop = value,
            11 => self.early_drop = value,
            12 => self.error = value,
            13 => self.search_restart = value,
            14 => self.clash_resolve = value,
            15 => self.chain_toolong = value,
            _ => {}
        }
    }
}

/// One CPU's counters (`conntrack -S` prints one line per CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// The CPU (the reply's `res_id`).
    pub cpu: u16,
    /// Its counters.
    pub counters: StatCounters,
}

/// Statistics of the namespace's conntrack table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConntrackStats {
    /// Per CPU, in CPU order.
    pub per_cpu: Vec<CpuStats>,
    /// Sum over CPUs.
    pub total: StatCounters,
    /// Entries in this namespace's table now (`nf_conntrack_count`).
    pub count: u64,
    /// The table limit (`nf_conntrack_max`; global, read-only in child namespaces).
    pub max: u64,
}

impl ConntrackStats {
    /// `count ÷ max` (0 when max is unknown).
    pub fn fill_ratio(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.count as f64 / self.max as f64
        }
    }
}

/// Layer-4 protocol of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
    /// Anything else, by IP protocol number.
    Other(u8),
}

impl L4Protocol {
    /// "tcp", "udp", "icmp" or the number.
    pub fn name(self) -> String {
        match self {
            L4Protocol::Tcp => "tcp".to_string(),
            L4Protocol::Udp => "udp".to_string(),
            L4Protocol::Icmp => "icmp".to_string(),
            L4Protocol::Other(n) => n.to_string(),
        }
    }
}

/// A conntrack TCP state (`enum tcp_conntrack`, include/uapi/linux/netfilter/nf_conntrack_tcp.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CtTcpState {
    /// TCP_CONNTRACK_NONE.
    None,
    /// SYN seen, no answer yet.
    SynSent,
    /// SYN/ACK seen.
    SynRecv,
    /// ESTABLISHED.
    Established,
    /// A FIN seen.
    FinWait,
    /// FIN from the reply side only.
    CloseWait,
    /// Both FINs, last ACK pending.
    LastAck,
    /// TIME_WAIT: 120 s by default (`nf_conntrack_tcp_timeout_time_wait`).
    TimeWait,
    /// After an RST: 10 s.
    Close,
    /// Simultaneous open.
    SynSent2,
    /// An unknown value.
    Other(u8),
}

impl CtTcpState {
    fn from_kernel(v: u8) -> Self {
        match v {
            0 => CtTcpState::None,
            1 => CtTcpState::SynSent,
            2 => CtTcpState::SynRecv,
            3 => CtTcpState::Established,
            4 => CtTcpState::FinWait,
            5 => CtTcpState::CloseWait,
            6 => CtTcpState::LastAck,
            7 => CtTcpState::TimeWait,
            8 => CtTcpState::Close,
            9 => CtTcpState::SynSent2,
            n => CtTcpState::Other(n),
        }
    }

    /// TIME_WAIT or CLOSE: the flow is over, the entry only holds its tuple until it expires
    /// (or, for SNAT on Linux ≥ 6.5, until a new SYN evicts it:
    /// `nf_nat_used_tuple_harder()`, commit 4589725502871e).
    pub fn is_closing(self) -> bool {
        matches!(self, CtTcpState::TimeWait | CtTcpState::Close)
    }
}

/// One direction's addresses of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtTuple {
    /// Source address and port (port 0 for protocols without ports).
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

/// One entry of the table (a line of `conntrack -L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtEntry {
    /// Protocol.
    pub protocol: L4Protocol,
    /// The original direction (client → destination before NAT).
    pub original: CtTuple,
    /// The reply direction (destination → NAT IP:NAT port after SNAT).
    pub reply: CtTuple,
    /// TCP state, for TCP.
    pub tcp_state: Option<CtTcpState>,
    /// `CTA_STATUS` bits (`IPS_*`).
    pub status: u32,
    /// Seconds until the entry expires.
    pub timeout_secs: u32,
}

impl CtEntry {
    /// Whether source NAT was applied (`IPS_SRC_NAT`).
    pub fn is_src_nat(&self) -> bool {
        self.status & IPS_SRC_NAT != 0
    }

    /// For a source-NAT entry, the pool it takes a port from and the port:
    /// (NAT IP = reply destination, destination = reply source, NAT port).
    pub fn nat_binding(&self) -> Option<(IpAddr, SocketAddr, u16)> {
        self.is_src_nat()
            .then(|| (self.reply.dst.ip(), self.reply.src, self.reply.dst.port()))
    }

    /// TCP in TIME_WAIT or CLOSE.
    pub fn is_closing(&self) -> bool {
        self.tcp_state.is_some_and(CtTcpState::is_closing)
    }
}

/// An open ctnetlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Conntrack {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl Conntrack {
    /// Opens ctnetlink in the caller's network namespace.
    ///
    /// # Errors
    /// [`ConntrackError::PermissionDenied`], [`ConntrackError::Unavailable`],
    /// [`ConntrackError::Io`].
    pub fn open() -> Result<Conntrack, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(classify)?;
        socket.bind_auto().map_err(classify)?;
        socket.connect(&NetlinkAddr::new(0, 0)).map_err(classify)?;
        Ok(Conntrack {
            socket,
            buffer: vec![0u8; RECV_BUFFER_BYTES],
            sequence: 0,
        })
    }

    /// Opens ctnetlink in the network namespace of `netns` (a `/proc/PID/ns/net` or
    /// `/run/netns/NAME` file): a short-lived thread joins it, opens the socket and exits; the
    /// socket keeps reading that namespace. Needs CAP_SYS_ADMIN over the namespace (root).
    ///
    /// # Errors
    /// [`ConntrackError::Namespace`] when the namespace cannot be entered; as [`Conntrack::open`].
    pub fn open_in(netns: &Path) -> Result<Conntrack, ConntrackError> {
        let path = netns.display().to_string();
        let file = File::open(netns).map_err(|source| ConntrackError::Namespace {
            path: path.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsRawFd;
                    // SAFETY: setns on an open namespace descriptor, on this thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                        return Err(ConntrackError::Namespace {
                            path,
                            source: io::Error::last_os_error(),
                        });
                    }
                    Conntrack::open()
                })
                .join()
                .unwrap_or_else(|_| Err(ConntrackError::Decode("namespace thread panicked".into())))
        })
    }

    /// Per-CPU counters, their sum, and the table's count and limit (`conntrack -S` and
    /// `conntrack -C`).
    ///
    /// # Errors
    /// As [`Conntrack::open`]; [`ConntrackError::Decode`].
    pub fn stats(&mut self) -> Result<ConntrackStats, ConntrackError> {
        let mut per_cpu = Vec::new();
        self.request(MSG_GET_STATS_CPU, NLM_F_REQUEST | NLM_F_DUMP)?;
        self.receive(&mut |message| {
            if let Some((cpu, attrs)) = other_message(message, MSG_GET_STATS_CPU) {
                let mut counters = StatCounters::default();
                for (kind, value) in attrs {
                    counters.set(kind, value);
                }
                per_cpu.push(CpuStats { cpu, counters });
            }
        })?;
        let mut count = 0;
        let mut max = 0;
        self.request(MSG_GET_STATS, NLM_F_REQUEST)?;
        // One message, flagged NLM_F_MULTI but never followed by NLMSG_DONE
        // (ctnetlink_stat_ct()): stop after it.
        self.receive_one(&mut |message| {
            if let Some((_, attrs)) = other_message(message, MSG_GET_STATS) {
                for (kind, value) in attrs {
                    match kind {
                        CTA_STATS_GLOBAL_ENTRIES => count = value,
                        CTA_STATS_GLOBAL_MAX_ENTRIES => max = value,
                        _ => {}
                    }
                }
            }
        })?;
        per_cpu.sort_by_key(|c| c.cpu);
        let mut total = StatCounters::default();
        for c in &per_cpu {
            total.add(&c.counters);
        }
        Ok(ConntrackStats {
            per_cpu,
            total,
            count,
            max,
        })
    }

    /// Every IPv4 and IPv6 entry of the table (`conntrack -L`), passed to `visit`.
    ///
    /// # Errors
    /// As [`Conntrack::stats`].
    pub fn dump(&mut self, visit: &mut dyn FnMut(CtEntry)) -> Result<(), ConntrackError> {
        for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
            let message = NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                ConntrackMessage::Get(Vec::new()),
            );
            self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
            self.receive(&mut |message| {
                if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) =
                    &message.inner
                {
                    if let Some(entry) = entry_of(attrs) {
                        visit(entry);
                    }
                }
            })?;
        }
        Ok(())
    }

    /// The whole table as a vector.
    ///
    /// # Errors
    /// As [`Conntrack::dump`].
    pub fn entries(&mut self) -> Result<Vec<CtEntry>, ConntrackError> {
        let mut out = Vec::new();
        self.dump(&mut |e| out.push(e))?;
        Ok(out)
    }

    fn request(&mut self, message_type: u8, flags: u16) -> Result<(), ConntrackError> {
        let message = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            NetfilterMessageInner::Other {
                subsys: NetfilterSubsystem::Conntrack,
                message_type,
                attributes: Vec::new(),
            },
        );
        self.send(message, flags)
    }

    fn send(&mut self, message: NetfilterMessage, flags: u16) -> Result<(), ConntrackError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::from(message));
        message.finalize();
        let mut buf = vec![0u8; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(classify)?;
        Ok(())
    }

    /// Reads the answer of a dump until NLMSG_DONE.
    fn receive(&mut self, visit: &mut dyn FnMut(&NetfilterMessage)) -> Result<(), ConntrackError> {
        self.receive_until(visit, false)
    }

    /// Reads the one message of a plain request (or its error).
    fn receive_one(
        &mut self,
        visit: &mut dyn FnMut(&NetfilterMessage),
    ) -> Result<(), ConntrackError> {
        self.receive_until(visit, true)
    }

    fn receive_until(
        &mut self,
        visit: &mut dyn FnMut(&NetfilterMessage),
        single: bool,
    ) -> Result<(), ConntrackError> {
        loop {
            let received = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(classify)?;
            let batch = &self.buffer[..received.min(self.buffer.len())];
            if decode_batch(batch, single, visit)? == Batch::Finished {
                return Ok(());
            }
        }
    }
}

/// Whether an answer goes on after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Batch {
    Finished,
    More,
}

/// Decodes one recv()'s worth of netlink messages, passing each ctnetlink message to `visit`.
/// Finished at NLMSG_DONE, after the first message when `single`, or when the batch was not
/// multipart; an NLMSG_ERROR becomes the matching [`ConntrackError`].
fn decode_batch(
    buf: &[u8],
    single: bool,
    visit: &mut dyn FnMut(&NetfilterMessage),
) -> Result<Batch, ConntrackError> {
    let mut offset = 0;
    let mut multipart = false;
    while offset < buf.len() {
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..])
            .map_err(|e| ConntrackError::Decode(e.to_string()))?;
        let length = message.header.length as usize;
        multipart |= message.header.flags & netlink_packet_core::NLM_F_MULTIPART != 0;
        match message.payload {
            NetlinkPayload::InnerMessage(inner) => {
                visit(&inner);
                if single {
                    return Ok(Batch::Finished);
                }
            }
            NetlinkPayload::Done(_) => return Ok(Batch::Finished),
            NetlinkPayload::Error(error) => return Err(classify(error.to_io())),
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok(if multipart {
        Batch::More
    } else {
        Batch::Finished
    })
}

fn classify(err: io::Error) -> ConntrackError {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => ConntrackError::PermissionDenied(err),
        Some(libc::EPROTONOSUPPORT) | Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) => {
            ConntrackError::Unavailable(err)
        }
        _ => ConntrackError::Io(err),
    }
}

/// A statistics message: its `res_id` (the CPU) and its be32 attributes.
fn other_message(message: &NetfilterMessage, want: u8) -> Option<(u16, Vec<(u16, u64)>)> {
    // netlink-packet-netfilter decodes the ctnetlink subsystem but leaves the statistics
    // messages as `ConntrackMessage::Other` with raw attributes.
    let NetfilterMessageInner::Conntrack(ConntrackMessage::Other {
        message_type,
        attributes,
    }) = &message.inner
    else {
        return None;
    };
    if *message_type != want {
        return None;
    }
    let attrs = attributes
        .iter()
        .filter_map(|nla| {
            use netlink_packet_core::Nla;
            let mut value = vec![0u8; nla.value_len()];
            nla.emit_value(&mut value);
            let be: [u8; 4] = value.get(..4)?.try_into().ok()?;
            Some((nla.kind(), u64::from(u32::from_be_bytes(be))))
        })
        .collect();
    Some((message.header.res_id, attrs))
}

fn entry_of(attrs: &[ConntrackAttribute]) -> Option<CtEntry> {
    let mut original = None;
    let mut reply = None;
    let mut protocol = None;
    let mut tcp_state = None;
    let mut status = 0;
    let mut timeout_secs = 0;
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => {
                let (tuple, proto) = tuple_of(t)?;
                original = Some(tuple);
                protocol = Some(proto);
            }
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple_of(t)?.0),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for info in infos {
                    if let ProtoInfo::TCP(tcp) = info {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                tcp_state = Some(CtTcpState::from_kernel(*s));
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::CtaStatus(s) => status = s.bits(),
            ConntrackAttribute::CtaTimeout(t) => timeout_secs = *t,
            _ => {}
        }
    }
    Some(CtEntry {
        protocol: protocol?,
        original: original?,
        reply: reply?,
        tcp_state,
        status,
        timeout_secs,
    })
}

fn tuple_of(tuples: &[Tuple]) -> Option<(CtTuple, L4Protocol)> {
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let (mut src, mut dst) = (unspecified, unspecified);
    let (mut sport, mut dport) = (0u16, 0u16);
    let mut proto = None;
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = *a,
                        IPTuple::DestinationAddress(a) => dst = *a,
                        _ => {}
                    }
                }
            }
            Tuple::Proto(parts) => {
                for p in parts {
                    match p {
                        ProtoTuple::Protocol(p) => proto = Some(protocol_of(*p)),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        CtTuple {
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
        },
        proto?,
    ))
}

fn protocol_of(p: Protocol) -> L4Protocol {
    match p {
        Protocol::Tcp => L4Protocol::Tcp,
        Protocol::Udp => L4Protocol::Udp,
        Protocol::Icmp => L4Protocol::Icmp,
        other => L4Protocol::Other(u8::from(other)),
    }
}

/// A source-NAT port range of a rule (from [`crate::natrules`]), used to size pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatPortRange {
    /// First port.
    pub low: u16,
    /// Last port (inclusive).
    pub high: u16,
}

impl NatPortRange {
    /// Ports in the range.
    pub fn len(&self) -> u64 {
        u64::from(self.high.saturating_sub(self.low)) + 1
    }

    /// Never empty (low ≤ high is checked where ranges are made); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.high < self.low
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

/// One NAT pool: the source-NAT entries sharing (protocol, NAT IP, destination).
///
/// Field names are part of `portlab ports --json` (`nat.pools`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatPool {
    /// Protocol.
    pub protocol: L4Protocol,
    /// The address the NAT rewrote sources to.
    pub nat_ip: IpAddr,
    /// The destination address and port.
    pub destination: SocketAddr,
    /// Entries of flows still open (TCP before TIME_WAIT; every UDP entry).
    pub live: u64,
    /// TCP entries in TIME_WAIT or CLOSE.
    pub closing: u64,
    /// Ports the NAT can use for this key: the rule's range that holds the entries' NAT
    /// ports, or the kernel default 64,512 (1024–65535).
    pub pool_ports: u64,
    /// The range `pool_ports` came from; `None` = the kernel default.
    pub range: Option<NatPortRange>,
    /// Entries that block a port for a new flow: `live`, plus `closing` when closing TCP
    /// entries cannot be evicted (Linux < 6.5, or UDP).
    pub blocking: u64,
    /// `blocking ÷ pool_ports`.
    pub utilisation: f64,
    /// `pool_ports − blocking` (0 when full).
    pub headroom: u64,
    /// Distinct client (original source) IPs.
    pub client_ips: u64,
}

/// Groups the source-NAT entries of `entries` into pools, fullest first. `ranges` are the
/// NAT rules' port ranges (an entry's pool is sized by the first range holding its NAT port;
/// otherwise by [`DEFAULT_NAT_PORTS`]); `closing_evictable` is whether closing TCP entries
/// free their port for a new SYN (Linux ≥ 6.5).
pub fn nat_pools(
    entries: &[CtEntry],
    ranges: &[NatPortRange],
    closing_evictable: bool,
) -> Vec<NatPool> {
    type Key = (L4Protocol, IpAddr, SocketAddr);
    struct Acc {
        live: u64,
        closing: u64,
        range: Option<NatPortRange>,
        clients: std::collections::BTreeSet<IpAddr>,
    }
    let mut pools: BTreeMap<Key, Acc> = BTreeMap::new();
    for e in entries {
        let Some((nat_ip, destination, port)) = e.nat_binding() else {
            continue;
        };
        let acc = pools
            .entry((e.protocol, nat_ip, destination))
            .or_insert(Acc {
                live: 0,
                closing: 0,
                range: None,
                clients: Default::default(),
            });
        if e.is_closing() {
            acc.closing += 1;
        } else {
            acc.live += 1;
        }
        if acc.range.is_none() {
            acc.range = ranges.iter().copied().find(|r| r.contains(port));
        }
        acc.clients.insert(e.original.src.ip());
    }
    let mut out: Vec<NatPool> = pools
        .into_iter()
        .map(|((protocol, nat_ip, destination), a)| {
            let pool_ports = a.range.map_or(DEFAULT_NAT_PORTS, |r| r.len());
            let evictable = closing_evictable && protocol == L4Protocol::Tcp;
            let blocking = a.live + if evictable { 0 } else { a.closing };
            NatPool {
                protocol,
                nat_ip,
                destination,
                live: a.live,
                closing: a.closing,
                pool_ports,
                range: a.range,
                blocking,
                utilisation: blocking as f64 / pool_ports as f64,
                headroom: pool_ports.saturating_sub(blocking),
                client_ips: a.clients.len() as u64,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.utilisation
            .total_cmp(&a.utilisation)
            .then(a.destination.cmp(&b.destination))
    });
    out
}

/// Whether this kernel evicts closing TCP entries on a SNAT clash: Linux ≥ 6.5
/// (commit 4589725502871e "netfilter: snat: evict closing tcp entries on reply tuple
/// collision"). `release` is `uname -r`, e.g. "6.18.44-…".
pub fn evicts_closing_tcp(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 5)
}

/// The running kernel's release (`/proc/sys/kernel/osrelease`), or "" when unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        proto: L4Protocol,
        client: &str,
        dst: &str,
        nat: &str,
        state: Option<CtTcpState>,
    ) -> CtEntry {
        let client: SocketAddr = client.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let nat: SocketAddr = nat.parse().unwrap();
        CtEntry {
            protocol: proto,
            original: CtTuple { src: client, dst },
            reply: CtTuple { src: dst, dst: nat },
            tcp_state: state,
            status: IPS_SRC_NAT,
            timeout_secs: 100,
        }
    }

    #[test]
    fn pools_are_keyed_by_protocol_nat_ip_and_destination() {
        let range = NatPortRange {
            low: 40000,
            high: 40099,
        };
        let est = Some(CtTcpState::Established);
        let tw = Some(CtTcpState::TimeWait);
        let entries = vec![
            entry(
                L4Protocol::Tcp,
                "127.0.0.1:50000",
                "127.0.0.2:8080",
                "127.0.0.1:40000",
                est,
            ),
            entry(
                L4Protocol::Tcp,
                "127.0.0.1:50001",
                "127.0.0.2:8080",
                "127.0.0.1:40001",
                tw,
            ),
            entry(
                L4Protocol::Tcp,
                "127.0.0.1:50002",
                "127.0.0.2:8081",
                "127.0.0.1:40000",
                est,
            ),
            entry(
                L4Protocol::Udp,
                "127.0.0.1:50003",
                "127.0.0.2:8080",
                "127.0.0.1:40000",
                None,
            ),
        ];
        let pools = nat_pools(&entries, &[range], true);
        assert_eq!(pools.len(), 3);
        let p = pools
            .iter()
            .find(|p| p.protocol == L4Protocol::Tcp && p.destination.port() == 8080)
            .unwrap();
        assert_eq!(
            (p.live, p.closing, p.blocking, p.pool_ports),
            (1, 1, 1, 100)
        );
        // Before 6.5 the TIME_WAIT entry blocks its port too.
        let old = nat_pools(&entries, &[range], false);
        let p = old
            .iter()
            .find(|p| p.protocol == L4Protocol::Tcp && p.destination.port() == 8080)
            .unwrap();
        assert_eq!(p.blocking, 2);
    }

    #[test]
    fn pools_without_a_ranged_rule_get_the_kernel_default() {
        let e = entry(
            L4Protocol::Tcp,
            "10.0.0.2:5000",
            "1.2.3.4:443",
            "192.0.2.1:5000",
            None,
        );
        let pools = nat_pools(
            &[e],
            &[NatPortRange {
                low: 40000,
                high: 40099,
            }],
            true,
        );
        assert_eq!(pools[0].pool_ports, DEFAULT_NAT_PORTS);
        assert!(pools[0].range.is_none());
    }

    #[test]
    fn entries_without_snat_are_not_pooled() {
        let mut e = entry(
            L4Protocol::Tcp,
            "10.0.0.2:5000",
            "1.2.3.4:443",
            "10.0.0.2:5000",
            None,
        );
        e.status = 0;
        assert!(nat_pools(&[e], &[], true).is_empty());
    }

    #[test]
    fn counter_deltas_survive_wraparound() {
        let then = StatCounters {
            insert_failed: u64::from(u32::MAX) - 1,
            ..Default::default()
        };
        let now = StatCounters {
            insert_failed: 3,
            ..Default::default()
        };
        assert_eq!(now.delta(&then).insert_failed, 5);
    }

    /// One GET_STATS_CPU reply as the kernel sends it (Linux 6.18, captured with strace):
    /// nlmsghdr {len 100, type 0x0104 = CTNETLINK<<8 | GET_STATS_CPU, flags NLM_F_MULTI, seq 1},
    /// nfgenmsg {AF_UNSPEC, v0, res_id = CPU 1 (big endian)}, then ten be32 CTA_STATS_* NLAs,
    /// followed by NLMSG_DONE.
    fn stats_cpu_reply() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&100u32.to_ne_bytes()); // nlmsg_len
        b.extend_from_slice(&0x0104u16.to_ne_bytes()); // type
        b.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        b.extend_from_slice(&1u32.to_ne_bytes()); // seq
        b.extend_from_slice(&4242u32.to_ne_bytes()); // pid
        b.extend_from_slice(&[0, 0, 0, 1]); // nfgenmsg: family, version, res_id = 1 (be16)
                                            // (kind, value): found 10751, invalid 0, insert 0, insert_failed 150, drop 150,
                                            // early_drop 0, error 0, search_restart 0, clash_resolve 2, chaintoolong 0.
        for (kind, value) in [
            (2u16, 10751u32),
            (4, 0),
            (8, 0),
            (9, 150),
            (10, 150),
            (11, 0),
            (12, 0),
            (13, 0),
            (14, 2),
            (15, 0),
        ] {
            b.extend_from_slice(&8u16.to_ne_bytes());
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(&value.to_be_bytes());
        }
        assert_eq!(b.len(), 100);
        // NLMSG_DONE: len 20, type 3, NLM_F_MULTI, an int 0.
        b.extend_from_slice(&20u32.to_ne_bytes());
        b.extend_from_slice(&3u16.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&4242u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    #[test]
    fn decodes_a_per_cpu_stats_reply() {
        let mut cpus = Vec::new();
        let batch = decode_batch(&stats_cpu_reply(), false, &mut |m| {
            if let Some((cpu, attrs)) = other_message(m, MSG_GET_STATS_CPU) {
                let mut c = StatCounters::default();
                for (k, v) in attrs {
                    c.set(k, v);
                }
                cpus.push((cpu, c));
            }
        })
        .unwrap();
        assert_eq!(batch, Batch::Finished);
        assert_eq!(cpus.len(), 1);
        let (cpu, c) = cpus[0];
        assert_eq!(cpu, 1);
        assert_eq!(
            (c.found, c.insert_failed, c.drop, c.clash_resolve),
            (10751, 150, 150, 2)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode_batch(&bytes, false, &mut |m| {
                if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = &m.inner {
                    let _ = entry_of(attrs);
                }
                let _ = other_message(m, MSG_GET_STATS_CPU);
            });
        }

        #[test]
        fn a_truncated_reply_is_an_error_or_partial_never_a_panic(cut in 0usize..120) {
            let full = stats_cpu_reply();
            let _ = decode_batch(&full[..cut.min(full.len())], false, &mut |_| {});
        }
    }

    #[test]
    fn eviction_starts_at_6_5() {
        assert!(evicts_closing_tcp("6.18.44-fc-v1045"));
        assert!(evicts_closing_tcp("6.5.0"));
        assert!(!evicts_closing_tcp("6.1.0-27-amd64"));
        assert!(!evicts_closing_tcp("5.15.0-1063-aws"));
        assert!(!evicts_closing_tcp("garbage"));
    }
}
