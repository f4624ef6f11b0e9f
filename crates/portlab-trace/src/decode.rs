//! Decoding the raw tracepoint records (PERF_SAMPLE_RAW) into [`Event`]s, with field offsets
//! taken from the tracefs format files ([`Layouts::from_formats`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::tracefs::{EventFormat, TraceFs};
use crate::TraceError;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod tcp_state {
    /// TCP_ESTABLISHED
    pub const ESTABLISHED: i32 = 1;
    /// TCP_SYN_SENT
    pub const SYN_SENT: i32 = 2;
    /// TCP_FIN_WAIT1
    pub const FIN_WAIT1: i32 = 4;
    /// TCP_FIN_WAIT2
    pub const FIN_WAIT2: i32 = 5;
    /// TCP_CLOSE
    pub const CLOSE: i32 = 7;
    /// TCP_CLOSE_WAIT
    pub const CLOSE_WAIT: i32 = 8;
    /// TCP_LAST_ACK
    pub const LAST_ACK: i32 = 9;
    /// TCP_CLOSING
    pub const CLOSING: i32 = 11;
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// One decoded tracepoint hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC time of the hit, ns.
    pub time_ns: u64,
    /// Process (thread-group) id of the task that was running.
    pub pid: u32,
    /// Thread id of the task that was running.
    pub tid: u32,
    /// What happened.
    pub kind: EventKind,
}

/// The tracepoints portlab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `sock:inet_sock_set_state` for a TCP socket.
    SetState {
        /// Kernel address of the socket (identifies it while it lives).
        skaddr: u64,
        /// State before.
        old: i32,
        /// State after.
        new: i32,
        /// Local address and port (port 0 before one is chosen).
        local: SocketAddr,
        /// Remote address and port.
        remote: SocketAddr,
    },
    /// `sock:inet_sk_error_report` for a TCP socket: an asynchronous error.
    ErrorReport {
        /// errno (positive), 0 for reports without an error.
        errno: i32,
        /// Local address and port.
        local: SocketAddr,
        /// Remote address and port.
        remote: SocketAddr,
    },
    /// `syscalls:sys_enter_connect`.
    EnterConnect,
    /// `syscalls:sys_exit_connect` with the return value (0 or -errno).
    ExitConnect {
        /// Return value.
        ret: i64,
    },
}

/// Offsets of one of the two socket tracepoints (they share field names).
#[derive(Debug, Clone, Copy)]
struct SockFields {
    sport: usize,
    dport: usize,
    family: usize,
    protocol: usize,
    saddr: usize,
    daddr: usize,
    saddr_v6: usize,
    daddr_v6: usize,
}

impl SockFields {
    fn from(f: &EventFormat) -> Result<SockFields, TraceError> {
        Ok(SockFields {
            sport: f.field("sport", 2)?,
            dport: f.field("dport", 2)?,
            family: f.field("family", 2)?,
            protocol: f.field("protocol", 2)?,
            saddr: f.field("saddr", 4)?,
            daddr: f.field("daddr", 4)?,
            saddr_v6: f.field("saddr_v6", 16)?,
            daddr_v6: f.field("daddr_v6", 16)?,
        })
    }

    /// (local, remote), or None for a protocol other than TCP or an unknown family.
    fn endpoints(&self, raw: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
        if u16_at(raw, self.protocol)? != IPPROTO_TCP {
            return None;
        }
        let sport = u16_at(raw, self.sport)?;
        let dport = u16_at(raw, self.dport)?;
        let (s, d) = match u16_at(raw, self.family)? {
            AF_INET => (
                IpAddr::V4(Ipv4Addr::from(arr::<4>(raw, self.saddr)?)),
                IpAddr::V4(Ipv4Addr::from(arr::<4>(raw, self.daddr)?)),
            ),
            AF_INET6 => (
                v6(arr::<16>(raw, self.saddr_v6)?),
                v6(arr::<16>(raw, self.daddr_v6)?),
            ),
            _ => return None,
        };
        Some((SocketAddr::new(s, sport), SocketAddr::new(d, dport)))
    }
}

/// An IPv6 address; v4-mapped ones (`::ffff:10.0.0.5`, an AF_INET6 socket talking IPv4) as
/// the IPv4 address, so one destination has one name.
fn v6(bytes: [u8; 16]) -> IpAddr {
    let ip = Ipv6Addr::from(bytes);
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

/// Record layouts of the four tracepoints on the running kernel.
#[derive(Debug, Clone)]
pub struct Layouts {
    /// Tracepoint ids, in the order [`Layouts::ids`] lists them.
    set_state_id: u16,
    error_report_id: u16,
    enter_connect_id: u16,
    exit_connect_id: u16,
    skaddr: usize,
    oldstate: usize,
    newstate: usize,
    set_state: SockFields,
    error: usize,
    error_report: SockFields,
    ret: usize,
}

/// The tracepoints read, as (system, event).
pub const TRACEPOINTS: [(&str, &str); 4] = [
    ("sock", "inet_sock_set_state"),
    ("sock", "inet_sk_error_report"),
    ("syscalls", "sys_enter_connect"),
    ("syscalls", "sys_exit_connect"),
];

impl Layouts {
    /// Reads the four format files.
    ///
    /// # Errors
    /// A tracepoint missing, unreadable, or with fields of unexpected sizes.
    pub fn read(fs: &TraceFs) -> Result<Layouts, TraceError> {
        let [a, b, c, d] = TRACEPOINTS.map(|(sys, ev)| fs.event(sys, ev));
        Layouts::from_formats(&a?, &b?, &c?, &d?)
    }

    /// Builds the layouts from parsed formats (set_state, error_report, enter, exit).
    ///
    /// # Errors
    /// A field missing or of unexpected size.
    pub fn from_formats(
        set_state: &EventFormat,
        error_report: &EventFormat,
        enter: &EventFormat,
        exit: &EventFormat,
    ) -> Result<Layouts, TraceError> {
        Ok(Layouts {
            set_state_id: set_state.id,
            error_report_id: error_report.id,
            enter_connect_id: enter.id,
            exit_connect_id: exit.id,
            skaddr: set_state.field("skaddr", 8)?,
            oldstate: set_state.field("oldstate", 4)?,
            newstate: set_state.field("newstate", 4)?,
            set_state: SockFields::from(set_state)?,
            error: error_report.field("error", 4)?,
            error_report: SockFields::from(error_report)?,
            ret: exit.field("ret", 8)?,
        })
    }

    /// Tracepoint ids: set_state, error_report, sys_enter_connect, sys_exit_connect.
    pub fn ids(&self) -> [u16; 4] {
        [
            self.set_state_id,
            self.error_report_id,
            self.enter_connect_id,
            self.exit_connect_id,
        ]
    }

    /// Whether the records have the layout bpf/trace.bpf.c declares (the one of Linux 4.16
    /// to 6.18 on 64-bit); the BPF route is not used otherwise.
    pub fn matches_bpf_program(&self) -> bool {
        let sock = |f: &SockFields, base: usize| {
            (
                f.sport, f.dport, f.family, f.protocol, f.saddr, f.daddr, f.saddr_v6, f.daddr_v6,
            ) == (
                base,
                base + 2,
                base + 4,
                base + 6,
                base + 8,
                base + 12,
                base + 16,
                base + 32,
            )
        };
        (
            self.skaddr,
            self.oldstate,
            self.newstate,
            self.error,
            self.ret,
        ) == (8, 16, 20, 8, 16)
            && sock(&self.set_state, 24)
            && sock(&self.error_report, 12)
    }

    /// Decodes one raw record; None for another tracepoint, a non-TCP socket or a short record.
    pub fn decode(&self, raw: &[u8]) -> Option<EventKind> {
        let id = u16_at(raw, 0)?;
        if id == self.set_state_id {
            let (local, remote) = self.set_state.endpoints(raw)?;
            Some(EventKind::SetState {
                skaddr: u64::from_ne_bytes(arr::<8>(raw, self.skaddr)?),
                old: i32::from_ne_bytes(arr::<4>(raw, self.oldstate)?),
                new: i32::from_ne_bytes(arr::<4>(raw, self.newstate)?),
                local,
                remote,
            })
        } else if id == self.error_report_id {
            let (local, remote) = self.error_report.endpoints(raw)?;
            Some(EventKind::ErrorReport {
                errno: i32::from_ne_bytes(arr::<4>(raw, self.error)?),
                local,
                remote,
            })
        } else if id == self.enter_connect_id {
            Some(EventKind::EnterConnect)
        } else if id == self.exit_connect_id {
            Some(EventKind::ExitConnect {
                ret: i64::from_ne_bytes(arr::<8>(raw, self.ret)?),
            })
        } else {
            None
        }
    }
}

fn arr<const N: usize>(raw: &[u8], offset: usize) -> Option<[u8; N]> {
    raw.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn u16_at(raw: &[u8], offset: usize) -> Option<u16> {
    arr::<2>(raw, offset).map(u16::from_ne_bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn format(name: &str, id: u16, fields: &[(&str, usize, usize)]) -> EventFormat {
        let mut text = format!("name: {name}\nID: {id}\nformat:\n");
        text.push_str("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n");
        for (f, off, size) in fields {
            text.push_str(&format!(
                "\tfield:x {f};\toffset:{off};\tsize:{size};\tsigned:0;\n"
            ));
        }
        EventFormat::parse(&text).unwrap()
    }

    /// The layouts of Linux 6.18 (ids as on the measured machine).
    pub(crate) fn layouts_6_18() -> Layouts {
        let sock = |base: usize| {
            vec![
                ("sport", base, 2),
                ("dport", base + 2, 2),
                ("family", base + 4, 2),
                ("protocol", base + 6, 2),
                ("saddr", base + 8, 4),
                ("daddr", base + 12, 4),
                ("saddr_v6", base + 16, 16),
                ("daddr_v6", base + 32, 16),
            ]
        };
        let mut ss = vec![("skaddr", 8, 8), ("oldstate", 16, 4), ("newstate", 20, 4)];
        ss.extend(sock(24));
        let mut er = vec![("error", 8, 4)];
        er.extend(sock(12));
        Layouts::from_formats(
            &format("inet_sock_set_state", 2287, &ss),
            &format("inet_sk_error_report", 2286, &er),
            &format("sys_enter_connect", 2230, &[("fd", 16, 8)]),
            &format("sys_exit_connect", 2229, &[("ret", 16, 8)]),
        )
        .unwrap()
    }

    /// A 72-byte `inet_sock_set_state` record (6.18 layout).
    pub(crate) fn set_state_record(
        skaddr: u64,
        old: i32,
        new: i32,
        local: ([u8; 4], u16),
        remote: ([u8; 4], u16),
    ) -> Vec<u8> {
        let mut r = vec![0u8; 72];
        r[0..2].copy_from_slice(&2287u16.to_ne_bytes());
        r[8..16].copy_from_slice(&skaddr.to_ne_bytes());
        r[16..20].copy_from_slice(&old.to_ne_bytes());
        r[20..24].copy_from_slice(&new.to_ne_bytes());
        r[24..26].copy_from_slice(&local.1.to_ne_bytes());
        r[26..28].copy_from_slice(&remote.1.to_ne_bytes());
        r[28..30].copy_from_slice(&AF_INET.to_ne_bytes());
        r[30..32].copy_from_slice(&IPPROTO_TCP.to_ne_bytes());
        r[32..36].copy_from_slice(&local.0);
        r[36..40].copy_from_slice(&remote.0);
        r
    }

    #[test]
    fn decodes_a_failed_port_search() {
        // SYN_SENT → CLOSE with sport 0 towards 10.0.0.5:443: a connect() that found no port.
        let raw = set_state_record(
            0xffff_8880_1234_5678,
            2,
            7,
            ([10, 0, 0, 1], 0),
            ([10, 0, 0, 5], 443),
        );
        let got = layouts_6_18().decode(&raw).unwrap();
        assert_eq!(
            got,
            EventKind::SetState {
                skaddr: 0xffff_8880_1234_5678,
                old: tcp_state::SYN_SENT,
                new: tcp_state::CLOSE,
                local: "10.0.0.1:0".parse().unwrap(),
                remote: "10.0.0.5:443".parse().unwrap(),
            }
        );
    }

    #[test]
    fn decodes_v4_mapped_v6_as_v4_and_skips_other_protocols() {
        let l = layouts_6_18();
        let mut raw = set_state_record(1, 7, 2, ([0; 4], 0), ([0; 4], 80));
        raw[28..30].copy_from_slice(&AF_INET6.to_ne_bytes());
        let mapped: [u8; 16] = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        raw[56..72].copy_from_slice(&mapped);
        match l.decode(&raw) {
            Some(EventKind::SetState { remote, .. }) => {
                assert_eq!(remote, "192.0.2.7:80".parse().unwrap())
            }
            other => panic!("{other:?}"),
        }
        raw[30..32].copy_from_slice(&132u16.to_ne_bytes()); // SCTP
        assert_eq!(l.decode(&raw), None);
    }

    #[test]
    fn short_or_foreign_records_are_skipped() {
        let l = layouts_6_18();
        let raw = set_state_record(1, 7, 2, ([0; 4], 0), ([0; 4], 80));
        assert_eq!(l.decode(&raw[..30]), None);
        assert_eq!(l.decode(&[0xff, 0xff, 0, 0]), None);
        assert_eq!(l.decode(&[]), None);
        let mut exit = vec![0u8; 24];
        exit[0..2].copy_from_slice(&2229u16.to_ne_bytes());
        exit[16..24].copy_from_slice(&(-99i64).to_ne_bytes());
        assert_eq!(l.decode(&exit), Some(EventKind::ExitConnect { ret: -99 }));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = layouts_6_18().decode(&raw);
        }
    }
}
