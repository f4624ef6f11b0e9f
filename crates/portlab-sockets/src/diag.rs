//! The TCP socket table through NETLINK_SOCK_DIAG (inet_diag, the interface `ss` uses:
//! net/ipv4/inet_diag.c, man 7 sock_diag), with the state filter applied in the kernel, and a
//! fallback to `/proc/net/tcp{,6}` for kernels or sandboxes without it.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
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
        "NETLINK_SOCK_DIAG denied ({0}); run with the needed permission or use the /proc fallback"
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
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(classify_open_error)?;
    socket.bind_auto().map_err(classify_open_error)?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(classify_open_error)?;
    let mut buffer = vec![0u8; RECV_BUFFER_BYTES];
    for family in [AF_INET, AF_INET6] {
        send_dump_request(&socket, family, states)?;
        receive_dump(&socket, &mut buffer, &mut visit)?;
    }
    Ok(())
}

fn classify_open_error(err: io::Error) -> SockDiagError {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => SockDiagError::PermissionDenied(err),
        _ => SockDiagError::Open(err),
    }
}

fn send_dump_request(socket: &Socket, family: u8, states: StateMask) -> Result<(), SockDiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(states.bits()),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(SockDiagError::Io)?;
    Ok(())
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
///
/// # Errors
/// [`SockDiagError::Proc`] when a file cannot be read. A missing `tcp6` (IPv6 disabled) is
/// not an error.
pub fn for_each_socket_proc(
    states: StateMask,
    mut visit: impl FnMut(SocketEntry),
) -> Result<(), SockDiagError> {
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
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
    fn state_mask_holds_exactly_its_states() {
        let mask = StateMask::of(&[TcpState::TimeWait, TcpState::Established]);
        assert!(mask.contains(TcpState::TimeWait));
        assert!(!mask.contains(TcpState::Listen));
        assert!(StateMask::ALL.contains(TcpState::NewSynRecv));
    }
}
