//! TCP states as the kernel numbers them, and counts of sockets per state.
//!
//! Numbers from include/net/tcp_states.h; names as `ss` prints them (misc/ss.c `sstate_name`).

use serde::Serialize;

/// A TCP socket state, numbered as in include/net/tcp_states.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    /// Connection open (1).
    Established,
    /// Active open, SYN sent, waiting for SYN-ACK (2).
    SynSent,
    /// Passive open, SYN received (3).
    SynRecv,
    /// Local side closed first, FIN sent (4).
    FinWait1,
    /// Local FIN acknowledged, waiting for the peer's FIN (5); bounded by `tcp_fin_timeout`.
    FinWait2,
    /// Active closer's 2×MSL wait, 60 s on Linux (6, `TCP_TIMEWAIT_LEN` in include/net/tcp.h).
    TimeWait,
    /// Closed (7).
    Close,
    /// Peer closed first; waiting for the local application to close (8).
    CloseWait,
    /// Passive closer sent its FIN, waiting for the ACK (9).
    LastAck,
    /// Listening socket (10).
    Listen,
    /// Both sides closed at once (11).
    Closing,
    /// Request socket of a half-open passive connection (12, `TCP_NEW_SYN_RECV`); `ss` shows it
    /// as SYN-RECV.
    NewSynRecv,
}

impl TcpState {
    /// All states, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state for a kernel state number (1..=12), `None` for anything else.
    pub fn from_kernel(value: u8) -> Option<Self> {
        match value {
            1..=12 => Some(Self::ALL[usize::from(value) - 1]),
            _ => None,
        }
    }

    /// The kernel's number for this state.
    pub fn kernel_number(self) -> u8 {
        // ALL is in kernel order starting at 1; the position is the number minus one.
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// The bit of this state in an inet_diag `idiag_states` mask.
    pub fn mask_bit(self) -> u32 {
        1 << self.kernel_number()
    }

    /// The name `ss` prints for this state (`TIME-WAIT`, `ESTAB`, …).
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }
}

/// Number of TCP sockets in each state (IPv4 and IPv6 together).
///
/// Field names are stable: they are part of `portlab ports --json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// ESTABLISHED.
    pub established: u64,
    /// SYN_SENT.
    pub syn_sent: u64,
    /// SYN_RECV, including request sockets (`TCP_NEW_SYN_RECV`), as `ss` counts them.
    pub syn_recv: u64,
    /// FIN_WAIT_1.
    pub fin_wait1: u64,
    /// FIN_WAIT_2.
    pub fin_wait2: u64,
    /// TIME_WAIT.
    pub time_wait: u64,
    /// CLOSE (unconnected).
    pub close: u64,
    /// CLOSE_WAIT.
    pub close_wait: u64,
    /// LAST_ACK.
    pub last_ack: u64,
    /// LISTEN.
    pub listen: u64,
    /// CLOSING.
    pub closing: u64,
}

impl StateCounts {
    /// Counts one socket in `state`.
    pub fn add(&mut self, state: TcpState) {
        *self.slot(state) += 1;
    }

    /// The count for `state`.
    pub fn get(&self, state: TcpState) -> u64 {
        let mut copy = *self;
        *copy.slot(state)
    }

    /// All sockets counted.
    pub fn total(&self) -> u64 {
        self.established
            + self.syn_sent
            + self.syn_recv
            + self.fin_wait1
            + self.fin_wait2
            + self.time_wait
            + self.close
            + self.close_wait
            + self.last_ack
            + self.listen
            + self.closing
    }

    fn slot(&mut self, state: TcpState) -> &mut u64 {
        match state {
            TcpState::Established => &mut self.established,
            TcpState::SynSent => &mut self.syn_sent,
            TcpState::SynRecv | TcpState::NewSynRecv => &mut self.syn_recv,
            TcpState::FinWait1 => &mut self.fin_wait1,
            TcpState::FinWait2 => &mut self.fin_wait2,
            TcpState::TimeWait => &mut self.time_wait,
            TcpState::Close => &mut self.close,
            TcpState::CloseWait => &mut self.close_wait,
            TcpState::LastAck => &mut self.last_ack,
            TcpState::Listen => &mut self.listen,
            TcpState::Closing => &mut self.closing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_round_trip() {
        for (i, state) in TcpState::ALL.iter().enumerate() {
            assert_eq!(state.kernel_number() as usize, i + 1);
            assert_eq!(TcpState::from_kernel(i as u8 + 1), Some(*state));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
        assert_eq!(TcpState::TimeWait.mask_bit(), 1 << 6);
    }

    #[test]
    fn counts_fold_new_syn_recv_into_syn_recv() {
        let mut counts = StateCounts::default();
        counts.add(TcpState::NewSynRecv);
        counts.add(TcpState::SynRecv);
        counts.add(TcpState::TimeWait);
        assert_eq!(counts.syn_recv, 2);
        assert_eq!(counts.get(TcpState::TimeWait), 1);
        assert_eq!(counts.total(), 3);
    }
}
