//! The small programs the NAT lab runs inside its sandbox, behind the hidden
//! `portlab __nat-tool` subcommand: a conntrack watcher (one JSON [`NatSample`] line per
//! interval until stdin closes) and a UDP echo server and one-shot UDP client for the UDP step
//! (the load engine speaks HTTP over TCP only).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use portlab_sockets::conntrack::{evicts_closing_tcp, kernel_release};
use portlab_sockets::{nat_pools, read_nat_rules, Conntrack, ConntrackStats, NatPool, NatRule};
use serde::{Deserialize, Serialize};

use crate::anchor::monotonic_ms;

/// One look at the sandbox's conntrack table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatSample {
    /// CLOCK_MONOTONIC, ms (the same clock as the anchor's samples).
    pub monotonic_ms: u64,
    /// Counters, count and max.
    pub stats: ConntrackStats,
    /// NAT pools, fullest first.
    pub pools: Vec<NatPool>,
    /// TCP entries in TIME_WAIT or CLOSE (all pools).
    pub tcp_closing: u64,
}

/// What the watcher prints: its rules once, then samples, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// First line: the NAT rules and whether closing TCP entries are evictable.
    Rules {
        /// The snat/masquerade statements.
        rules: Vec<NatRule>,
        /// Kernel ≥ 6.5.
        closing_evictable: bool,
        /// `uname -r`.
        kernel: String,
    },
    /// A sample.
    Sample(NatSample),
    /// Conntrack could not be read; the watcher exits.
    Error {
        /// One sentence.
        message: String,
    },
}

/// Runs the watcher in the caller's namespace until `input` reaches end of file.
///
/// # Errors
/// Writing to `out` failed (the reader went away).
pub fn watch(interval: Duration, input: impl AsFd, mut out: impl Write) -> std::io::Result<()> {
    let emit = |event: &WatchEvent, out: &mut dyn Write| -> std::io::Result<()> {
        let line = serde_json::to_string(event).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")?;
        out.flush()
    };
    let mut ct = match Conntrack::open() {
        Ok(ct) => ct,
        Err(e) => {
            return emit(
                &WatchEvent::Error {
                    message: e.to_string(),
                },
                &mut out,
            )
        }
    };
    let rules = read_nat_rules().unwrap_or_default();
    let ranges: Vec<_> = rules.iter().filter_map(|r| r.ports).collect();
    let kernel = kernel_release();
    let closing_evictable = evicts_closing_tcp(&kernel);
    emit(
        &WatchEvent::Rules {
            rules,
            closing_evictable,
            kernel,
        },
        &mut out,
    )?;
    loop {
        let sample = ct.stats().and_then(|stats| {
            let entries = ct.entries()?;
            Ok(NatSample {
                monotonic_ms: monotonic_ms(),
                tcp_closing: entries.iter().filter(|e| e.is_closing()).count() as u64,
                pools: nat_pools(&entries, &ranges, closing_evictable),
                stats,
            })
        });
        match sample {
            Ok(s) => emit(&WatchEvent::Sample(s), &mut out)?,
            Err(e) => {
                return emit(
                    &WatchEvent::Error {
                        message: e.to_string(),
                    },
                    &mut out,
                )
            }
        }
        if input_closed(&input, interval) {
            return Ok(());
        }
    }
}

fn input_closed(input: &impl AsFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => false,
        Ok(_) => {
            let mut buf = [0u8; 64];
            matches!(nix::unistd::read(input.as_fd(), &mut buf), Ok(0) | Err(_))
        }
        Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// The `listening` line of the UDP echo server (the same shape `portlab serve --json` prints).
#[derive(Debug, Serialize, Deserialize)]
pub struct UdpListening {
    /// Always "listening".
    pub event: String,
    /// The bound address.
    pub address: SocketAddr,
}

/// Echoes every datagram back to its sender until killed. Prints its listening line first.
///
/// # Errors
/// Binding or writing the line failed.
pub fn udp_echo(listen: SocketAddr, mut out: impl Write) -> std::io::Result<()> {
    let socket = UdpSocket::bind(listen)?;
    let line = serde_json::to_string(&UdpListening {
        event: "listening".to_string(),
        address: socket.local_addr()?,
    })
    .map_err(std::io::Error::other)?;
    writeln!(out, "{line}")?;
    out.flush()?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        let _ = socket.send_to(&buf[..n], peer);
    }
}

/// Outcome of [`udp_flows`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpFlowReport {
    /// Flows attempted (one request datagram each, from its own source port).
    pub flows: u64,
    /// Flows whose reply came back.
    pub answered: u64,
    /// Flows without a reply within the wait: dropped (at the NAT, silently).
    pub lost: u64,
    /// Flows that could not even be sent (bind/send error).
    pub send_errors: u64,
    /// Wall time, s.
    pub elapsed_secs: f64,
}

/// Runs `flows` one-shot request/reply UDP flows to `to`, one after another, flow i from
/// `source_ip:(first_port + i)` so every flow is a new conntrack entry (a reused source port
/// would be the same entry), each waiting `wait` for its reply.
pub fn udp_flows(to: SocketAddr, source: SocketAddr, flows: u64, wait: Duration) -> UdpFlowReport {
    let started = Instant::now();
    let mut report = UdpFlowReport {
        flows,
        answered: 0,
        lost: 0,
        send_errors: 0,
        elapsed_secs: 0.0,
    };
    for i in 0..flows {
        let port = u16::try_from(u64::from(source.port()) + i).unwrap_or(0);
        let outcome = (|| -> std::io::Result<bool> {
            let socket = UdpSocket::bind(SocketAddr::new(source.ip(), port))?;
            socket.set_read_timeout(Some(wait))?;
            socket.send_to(b"portlab", to)?;
            let mut buf = [0u8; 64];
            match socket.recv_from(&mut buf) {
                Ok(_) => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })();
        match outcome {
            Ok(true) => report.answered += 1,
            Ok(false) => report.lost += 1,
            Err(_) => report.send_errors += 1,
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report
}
