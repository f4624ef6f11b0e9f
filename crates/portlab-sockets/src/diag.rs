//! The TCP socket table through NETLINK_SOCK_DIAG (inet_diag, the interface `ss` uses:
//! net/ipv4/inet_diag.c, man 7 sock_diag), with the state filter applied in the kernel, and a
//! fallback to `/proc/net/tcp{,6}` for kernels or sandboxes without it.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};
use serde::Serialize;

use crate::state::TcpState;

/// One TCP socket of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketEntry {
    /// Its state.
    pub state: TcpState,
    /// Local address and port (IPv4-mapped IPv6 addresses are shown as IPv4).
    pub local: SocketAddr,
    /// Remote address and port (unspecified with port 0 for listeners).
    pub remote: SocketAddr,
}

/// Which interface the table was read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableSource {
    /// NETLINK_SOCK_DIAG with the state filter applied in the kernel.
    SockDiag,
    /// `/proc/net/tcp` and `/proc/net/tcp6`, filtered in user space (slower, no atomicity).
    ProcNetTcp,
}

/// Errors reading the socket table.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The kernel refused the netlink socket or the dump (EPERM/EACCES), e.g. under a seccomp
    /// or LSM policy.
    #[error(
        "NETLINK_SOCK_DIAG denied ({0}): allow it (seccomp/LSM policy, container capabilities) or read /proc/net/tcp instead (`portlab ports --proc`)"
    )]
    PermissionDenied(io::Error),
    /// The netlink socket could not be opened (kernel without CONFIG_INET_DIAG, …).
    #[error("opening a NETLINK_SOCK_DIAG socket: {0}")]
    Open(io::Error),
    /// Sending the dump request or receiving its answer failed.
    #[error("talking to NETLINK_SOCK_DIAG: {0}")]
    Io(io::Error),
    /// The kernel answered the dump with an error code.
    #[error("NETLINK_SOCK_DIAG answered with error {0}")]
    Kernel(io::Error),
    /// A message from the kernel could not be decoded.
    #[error("decoding a NETLINK_SOCK_DIAG message: {0}")]
    Decode(String),
    /// The /proc fallback could not be read either.
    #[error("reading {path}: {source}")]
    Proc {
        /// The file that failed.
        path: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

/// A set of TCP states, as the kernel's `idiag_states` bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMask(u32);

impl StateMask {
    /// Every state, including request sockets (`TCP_NEW_SYN_RECV`), as `ss -a` dumps them.
    pub const ALL: StateMask = StateMask(0x1ffe);

    /// The mask holding exactly `states`.
    pub fn of(states: &[TcpState]) -> Self {
        StateMask(states.iter().fold(0, |mask, s| mask | s.mask_bit()))
    }

    /// True when `state` is in the set.
    pub fn contains(self, state: TcpState) -> bool {
        self.0 & state.mask_bit() != 0
    }

    /// The set less `state`.
    pub fn without(self, state: TcpState) -> Self {
        StateMask(self.0 & !state.mask_bit())
    }

    /// The raw `idiag_states` bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// Size of one recv buffer. The kernel fills dump skbs of up to 32 KiB
/// (net/netlink/af_netlink.c `netlink_dump()` grows them to the reader's last buffer size,
/// capped at 32 KiB), so a larger buffer only wastes memory.
const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// Visits every TCP socket (IPv4, then IPv6) whose state is in `states`, read through
/// NETLINK_SOCK_DIAG with the filter applied in the kernel.
///
/// # Errors
/// [`SockDiagError`]; `PermissionDenied` when the kernel refuses the socket or the dump.
pub fn for_each_socket_netlink(
    states: StateMask,
    mut visit: impl FnMut(SocketEntry),
) -> Result<(), SockDiagError> {
    DiagSocket::open()?.dump(states, None, &mut visit)
}

/// Reads every TCP socket whose state is in `states`: the IPv4 and the IPv6 dump run in
/// parallel on two threads when the process may run on two CPUs, one after the other
/// otherwise.
///
/// Most of a dump's cost is the kernel's walk of the established hash: each dump visits every
/// TCP socket of every namespace (net/ipv4/tcp_diag.c `tcp_diag_dump()` checks the namespace,
/// state and family of each), so the IPv6 dump of a host with only IPv4 sockets costs about
/// as much as the walk part of the IPv4 one (a dump that matches no socket still costs about
/// 1 µs per socket in the table on the measured machine). Running the two families on two
/// cores hides one walk without adding any; splitting one family into halves would walk the
/// table once more per half. Both netlink sockets are opened on the calling thread, so both
/// dumps read the caller's network namespace. Like `ss`, the result is not one atomic
/// snapshot: a socket that changes state during the dump may be seen in either state.
///
/// # Errors
/// As [`for_each_socket_netlink`].
pub fn read_table_parallel(states: StateMask) -> Result<Vec<SocketEntry>, SockDiagError> {
    let mut v4 = DiagSocket::open()?;
    let mut v6 = DiagSocket::open()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut entries = Vec::new();
    if cpus < 2 {
        v4.dump_family(AF_INET, states, None, &mut |e| entries.push(e))?;
        v6.dump_family(AF_INET6, states, None, &mut |e| entries.push(e))?;
        return Ok(entries);
    }
    std::thread::scope(|scope| {
        let ipv6 = scope.spawn(move || {
            let mut found = Vec::new();
            v6.dump_family(AF_INET6, states, None, &mut |e| found.push(e))
                .map(|()| found)
        });
        let mine = v4.dump_family(AF_INET, states, None, &mut |e| entries.push(e));
        let theirs = ipv6
            .join()
            .map_err(|_| SockDiagError::Decode("dump thread panicked".into()))?;
        mine?;
        entries.extend(theirs?);
        Ok(entries)
    })
}

/// An open NETLINK_SOCK_DIAG socket with its receive buffer, reusable for many dumps (the
/// sampler dumps ten times a second).
#[derive(Debug)]
pub struct DiagSocket {
    socket: Socket,
    buffer: Vec<u8>,
}

impl DiagSocket {
    /// Opens the socket in the caller's network namespace.
    ///
    /// # Errors
    /// `PermissionDenied` or `Open`.
    pub fn open() -> Result<Self, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(classify_open_error)?;
        socket.bind_auto().map_err(classify_open_error)?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(classify_open_error)?;
        Ok(Self {
            socket,
            buffer: vec![0u8; RECV_BUFFER_BYTES],
        })
    }

    /// Dumps the TCP sockets (IPv4 then IPv6) whose state is in `states` and that pass the
    /// optional inet_diag `bytecode` filter (see [`destination_filter`]), both applied in the
    /// kernel.
    ///
    /// # Errors
    /// [`SockDiagError`]; an invalid bytecode is refused by the kernel with EINVAL (`Kernel`).
    pub fn dump(
        &mut self,
        states: StateMask,
        bytecode: Option<&[u8]>,
        visit: &mut impl FnMut(SocketEntry),
    ) -> Result<(), SockDiagError> {
        for family in [AF_INET, AF_INET6] {
            self.dump_family(family, states, bytecode, visit)?;
        }
        Ok(())
    }

    /// One address family's part (`AF_INET` or `AF_INET6`) of [`DiagSocket::dump`]: the
    /// kernel walks the whole established hash once per family, so a caller that knows which
    /// family its sockets are in halves the cost by dumping only that one.
    pub(crate) fn dump_family(
        &mut self,
        family: u8,
        states: StateMask,
        bytecode: Option<&[u8]>,
        visit: &mut impl FnMut(SocketEntry),
    ) -> Result<(), SockDiagError> {
        send_dump_request(&self.socket, family, states, bytecode)?;
        receive_dump(&self.socket, &mut self.buffer, visit)
    }
}

fn classify_open_error(err: io::Error) -> SockDiagError {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => SockDiagError::PermissionDenied(err),
        _ => SockDiagError::Open(err),
    }
}

// inet_diag bytecode (include/uapi/linux/inet_diag.h): ops of 4 bytes {code, yes, no}; a port
// comparison is two ops, the second carrying the port in `no`. `yes`/`no` are byte offsets
// from the op; landing exactly on the end accepts the socket, 4 bytes past it rejects it. The
// kernel's audit (`inet_diag_bc_audit()`) requires the chain of `yes` offsets to visit every
// op and end exactly at the end, and every `no` target to lie on that chain.
const BC_JMP: u8 = 1;
const BC_D_COND: u8 = 8;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

fn put_op(out: &mut [u8], code: u8, yes: u8, no: u16, port: Option<u16>) {
    out[0] = code;
    out[1] = yes;
    out[2..4].copy_from_slice(&no.to_ne_bytes());
    if let Some(port) = port {
        out[4] = 0;
        out[5] = 0;
        out[6..8].copy_from_slice(&port.to_ne_bytes());
    }
}

/// Sends a SOCK_DIAG_BY_FAMILY dump request, with an INET_DIAG_REQ_BYTECODE filter when one
/// is given. netlink-packet-sock-diag has no encoder for request attributes, so the message is
/// laid out here: nlmsghdr (16) + inet_diag_req_v2 (56) + optional nlattr (4) + bytecode.
fn send_dump_request(
    socket: &Socket,
    family: u8,
    states: StateMask,
    bytecode: Option<&[u8]>,
) -> Result<(), SockDiagError> {
    let attr_len = bytecode.map_or(0, |b| 4 + b.len());
    let total = 16 + 56 + attr_len;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    msg.extend_from_slice(&states.bits().to_ne_bytes());
    // inet_diag_sockid: ports, addresses, interface all zero = no identity filter; the cookie
    // INET_DIAG_NOCOOKIE (all ones) is ignored.
    msg.extend_from_slice(&[0u8; 40]);
    msg.extend_from_slice(&[0xff; 8]);
    if let Some(bytecode) = bytecode {
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        msg.extend_from_slice(bytecode);
    }
    socket.send(&msg, 0).map_err(SockDiagError::Io)?;
    Ok(())
}

/// An inet_diag bytecode that accepts the sockets whose remote end is one of `destinations`
/// (address and port; an IPv4 destination also matches its IPv4-mapped IPv6 form, as
/// `inet_diag_bc_run()` compares them). Shape, for destinations A, B, C:
/// ```text
/// D_COND A  yes → JMP   no → D_COND B
/// JMP                   no → accept
/// D_COND B  yes → JMP   no → D_COND C
/// JMP                   no → accept
/// D_COND C  yes → accept (end)   no → reject
/// ```
/// Returns `None` for an empty list (no filter).
pub fn destination_filter(destinations: &[SocketAddr]) -> Option<Vec<u8>> {
    let (last, rest) = destinations.split_last()?;
    let cond_len = |d: &SocketAddr| 4 + 8 + if d.is_ipv4() { 4 } else { 16 };
    let total: usize = rest.iter().map(|d| cond_len(d) + 4).sum::<usize>() + cond_len(last);
    let mut bc = Vec::with_capacity(total);
    for dest in rest {
        let len = cond_len(dest);
        put_cond(&mut bc, dest, len as u8, (len + 4) as u16);
        let remaining = total - bc.len();
        // JMP: `yes` is never taken; `no` lands on the end: accept.
        let mut jmp = [0u8; 4];
        put_op(&mut jmp, BC_JMP, 4, remaining as u16, None);
        bc.extend_from_slice(&jmp);
    }
    let remaining = total - bc.len();
    put_cond(&mut bc, last, remaining as u8, (remaining + 4) as u16);
    debug_assert_eq!(bc.len(), total);
    Some(bc)
}

/// Appends a D_COND op with its `inet_diag_hostcond` {family, prefix_len, port, addr}.
fn put_cond(bc: &mut Vec<u8>, dest: &SocketAddr, yes: u8, no: u16) {
    bc.push(BC_D_COND);
    bc.push(yes);
    bc.extend_from_slice(&no.to_ne_bytes());
    let (family, prefix_len) = if dest.is_ipv4() {
        (AF_INET, 32)
    } else {
        (AF_INET6, 128)
    };
    bc.push(family);
    bc.push(prefix_len);
    bc.extend_from_slice(&[0, 0]);
    bc.extend_from_slice(&i32::from(dest.port()).to_ne_bytes());
    match dest.ip() {
        IpAddr::V4(v4) => bc.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bc.extend_from_slice(&v6.octets()),
    }
}

/// Reads the multipart answer of one dump until NLMSG_DONE.
fn receive_dump(
    socket: &Socket,
    buffer: &mut [u8],
    visit: &mut impl FnMut(SocketEntry),
) -> Result<(), SockDiagError> {
    loop {
        let received = socket
            .recv(&mut &mut buffer[..], 0)
            .map_err(SockDiagError::Io)?;
        let mut offset = 0;
        while offset < received {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..received])
                .map_err(|e| SockDiagError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let header = &response.header;
                    if let Some(state) = TcpState::from_kernel(header.state) {
                        visit(SocketEntry {
                            state,
                            local: endpoint(
                                header.socket_id.source_address,
                                header.socket_id.source_port,
                            ),
                            remote: endpoint(
                                header.socket_id.destination_address,
                                header.socket_id.destination_port,
                            ),
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => {
                    let err = error.to_io();
                    return Err(match err.raw_os_error() {
                        Some(libc::EPERM) | Some(libc::EACCES) => {
                            SockDiagError::PermissionDenied(err)
                        }
                        _ => SockDiagError::Kernel(err),
                    });
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Builds a socket address, showing IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) as IPv4.
fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(ip, port)
}

/// Visits every TCP socket whose state is in `states` by parsing `/proc/net/tcp` and
/// `/proc/net/tcp6` (net/ipv4/tcp_ipv4.c `tcp4_seq_show()`); the filter runs in user space.
/// The files are read through `/proc/thread-self/net`, because `/proc/net` follows the
/// process's main thread and would show another namespace to a thread that entered one.
///
/// # Errors
/// [`SockDiagError::Proc`] when a file cannot be read. A missing `tcp6` (IPv6 disabled) is
/// not an error.
pub fn for_each_socket_proc(
    states: StateMask,
    mut visit: impl FnMut(SocketEntry),
) -> Result<(), SockDiagError> {
    for path in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound && path.ends_with('6') => continue,
            Err(source) => return Err(SockDiagError::Proc { path, source }),
        };
        for entry in text.lines().skip(1).filter_map(parse_proc_line) {
            if states.contains(entry.state) {
                visit(entry);
            }
        }
    }
    Ok(())
}

/// Parses one line of /proc/net/tcp{,6}: `sl local_address rem_address st …`, addresses as
/// hex words in host byte order, ports as big-endian hex.
fn parse_proc_line(line: &str) -> Option<SocketEntry> {
    let mut fields = line.split_whitespace().skip(1);
    let local = parse_proc_endpoint(fields.next()?)?;
    let remote = parse_proc_endpoint(fields.next()?)?;
    let state = TcpState::from_kernel(u8::from_str_radix(fields.next()?, 16).ok()?)?;
    Some(SocketEntry {
        state,
        local,
        remote,
    })
}

fn parse_proc_endpoint(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(address, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(address.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(endpoint(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        // 127.0.0.1:40000 -> 127.0.0.1:8080 in TIME_WAIT (06), as x86 (little-endian) writes it.
        let line = "   0: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000";
        let entry = parse_proc_line(line).expect("parses");
        assert_eq!(entry.state, TcpState::TimeWait);
        assert_eq!(entry.local, "127.0.0.1:40000".parse().expect("addr"));
        assert_eq!(entry.remote, "127.0.0.1:8080".parse().expect("addr"));
    }

    #[test]
    fn parses_ipv6_and_maps_v4_mapped_addresses() {
        // ::1 port 80, ESTABLISHED.
        let line = "0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:9C41 01 0 0 0";
        let entry = parse_proc_line(line).expect("parses");
        assert_eq!(entry.local, "[::1]:80".parse().expect("addr"));
        // ::ffff:127.0.0.1 becomes 127.0.0.1.
        let mapped = "0: 0000000000000000FFFF00000100007F:0050 0000000000000000FFFF00000100007F:9C41 0A 0 0 0";
        let entry = parse_proc_line(mapped).expect("parses");
        assert_eq!(entry.local, "127.0.0.1:80".parse().expect("addr"));
        assert_eq!(entry.state, TcpState::Listen);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse_proc_line("garbage"), None);
        assert_eq!(parse_proc_line("0: 0100007F:XYZ 0100007F:1F90 06"), None);
        assert_eq!(parse_proc_line("0: 0100007F:9C40 0100007F:1F90 FF"), None);
    }

    #[test]
    fn denial_and_absence_are_told_apart() {
        let denied = classify_open_error(io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(denied, SockDiagError::PermissionDenied(_)));
        assert!(denied.to_string().contains("--proc"), "{denied}");
        let absent = classify_open_error(io::Error::from_raw_os_error(libc::EPROTONOSUPPORT));
        assert!(matches!(absent, SockDiagError::Open(_)));
    }

    #[test]
    fn state_mask_holds_exactly_its_states() {
        let mask = StateMask::of(&[TcpState::TimeWait, TcpState::Established]);
        assert!(mask.contains(TcpState::TimeWait));
        assert!(!mask.contains(TcpState::Listen));
        assert!(StateMask::ALL.contains(TcpState::NewSynRecv));
    }
}
