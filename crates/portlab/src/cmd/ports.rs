//! `portlab ports`: the ephemeral-port pool of this host (of the caller's network namespace):
//! settings, sockets by state, usage per (local IP, destination) pool, headroom and counters.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use portlab_pipeline::ReadOptions;
use portlab_sockets::{
    Counters, PoolUsage, PortPoolSettings, Risk, Snapshot, TableChoice, TableSource, TwReuse,
    LINUX_TIME_WAIT_SECS,
};
use serde::Serialize;

use crate::render::{fmt_int, fmt_rate};
use crate::style::Painter;

/// Flags of `portlab ports`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Pools: connect() without bind() picks a local port per 4-tuple, so each (local IP, destination)
pair has its own pool of ip_local_port_range ports. Utilisation is used ports / usable ports.

Examples:
  portlab ports                          this host's pool, top 10 destinations
  portlab ports --dest 10.0.0.5:443      focus on one destination
  portlab ports --watch 1                refresh every second until Ctrl-C
  portlab ports --netns /proc/4242/ns/net  a pod's (or any namespace's) pools
  portlab ports --json | jq .pools[0]    machine-readable (fields: docs/ports-json.md)")]
pub struct Args {
    /// Show only the pools towards this destination (e.g. 10.0.0.5:443 or [::1]:8080).
    #[arg(long, value_name = "ADDR:PORT")]
    dest: Option<SocketAddr>,

    /// How many pools to list, most utilised first.
    #[arg(long, default_value_t = 10, value_name = "N")]
    top: usize,

    /// Print one JSON object (with --watch: one per line) instead of the text report.
    #[arg(long)]
    json: bool,

    /// Refresh at this interval (seconds, or a duration: 1s, 500ms) until Ctrl-C; shows
    /// per-second rates.
    #[arg(long, value_name = "DURATION", value_parser = parse_watch_secs)]
    watch: Option<f64>,

    /// Read /proc/net/tcp{,6} instead of NETLINK_SOCK_DIAG (slower; for comparison).
    #[arg(long)]
    proc: bool,

    /// Read the pools, sysctls and counters of this network namespace (/run/netns/NAME or
    /// /proc/PID/ns/net, e.g. a pod's) instead of this process's (root).
    #[arg(long, value_name = "PATH")]
    netns: Option<std::path::PathBuf>,
}

fn parse_watch_secs(text: &str) -> Result<f64, String> {
    let secs = crate::duration::secs(text)?.as_secs_f64();
    if secs.is_finite() && secs >= 0.05 {
        Ok(secs)
    } else {
        Err(format!(
            "{text} s is too short; use at least 0.05 s (e.g. --watch 1)"
        ))
    }
}

/// The JSON document of `portlab ports --json` (documented in docs/ports-json.md).
#[derive(Debug, Serialize)]
struct PortsReport<'a> {
    /// Schema version of this document.
    schema: &'static str,
    settings: &'a PortPoolSettings,
    usable_ephemeral_ports: u32,
    destination_filter: Option<SocketAddr>,
    snapshot: &'a Snapshot,
    counters: &'a Counters,
    /// Counter increase per second since the previous refresh (--watch only).
    counter_rates_per_sec: Option<CounterRates>,
    verdict: Verdict,
    /// Conntrack and NAT pools of this namespace.
    nat: &'a crate::cmd::nat_view::NatSection,
}

#[derive(Debug, Clone, Serialize)]
struct Verdict {
    risk: Risk,
    summary: String,
}

/// Counter deltas divided by the refresh interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CounterRates {
    pub interval_secs: f64,
    active_opens: f64,
    attempt_fails: f64,
    tw_recycled: f64,
    tcp_time_wait_overflow: f64,
    listen_overflows: f64,
    estab_resets: f64,
}

impl CounterRates {
    /// Counter increase per second between two readings.
    pub fn between(earlier: &Counters, later: &Counters, interval: Duration) -> Self {
        let d = later.delta_since(earlier);
        let secs = interval.as_secs_f64().max(1e-6);
        CounterRates {
            interval_secs: secs,
            active_opens: d.active_opens as f64 / secs,
            attempt_fails: d.attempt_fails as f64 / secs,
            tw_recycled: d.tw_recycled as f64 / secs,
            tcp_time_wait_overflow: d.tcp_time_wait_overflow as f64 / secs,
            listen_overflows: d.listen_overflows as f64 / secs,
            estab_resets: d.estab_resets as f64 / secs,
        }
    }
}

/// One reading of settings, socket table and counters (the shared pipeline's).
pub use portlab_pipeline::HostReading as Reading;

/// What to show: the `--dest`, `--top` and `--proc` flags.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Only pools towards this destination.
    pub dest: Option<SocketAddr>,
    /// How many pools the text lists.
    pub top: usize,
    /// Read /proc instead of netlink.
    pub proc: bool,
}

/// Reads settings, the socket table (grouped into pools) and the counters.
pub fn read(view: View) -> anyhow::Result<Reading> {
    let options = ReadOptions {
        destination: view.dest,
        table: if view.proc {
            TableChoice::Proc
        } else {
            TableChoice::Auto
        },
    };
    Ok(Reading::take(&options)?)
}

/// Runs `portlab ports`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.top == 0 {
        return Err(crate::exit::usage(
            "--top must be at least 1 (e.g. --top 10)",
        ));
    }
    if let Some(path) = &args.netns {
        crate::netns::enter(path)?;
    }
    let painter = Painter::for_stdout();
    let mut previous: Option<Reading> = None;
    let mut previous_nat: Option<crate::cmd::nat_view::NatSection> = None;
    let clear_screen = args.watch.is_some() && !args.json && std::io::stdout().is_terminal();
    let view = View {
        dest: args.dest,
        top: args.top,
        proc: args.proc,
    };
    loop {
        let reading = read(view)?;
        let mut nat = crate::cmd::nat_view::NatSection::read();
        if let Some(earlier) = &previous_nat {
            nat = nat.with_rates_since(earlier);
        }
        let rates = previous
            .as_ref()
            .map(|p| CounterRates::between(&p.counters, &reading.counters, reading.at - p.at));
        let mut out = std::io::stdout().lock();
        let rendered = if args.json {
            let report = PortsReport {
                schema: "portlab.ports/1",
                settings: &reading.settings,
                usable_ephemeral_ports: reading.settings.usable_ephemeral_ports(),
                destination_filter: args.dest,
                snapshot: &reading.snapshot,
                counters: &reading.counters,
                counter_rates_per_sec: rates,
                verdict: verdict(&reading.settings, &reading.snapshot),
                nat: &nat,
            };
            let mut text = serde_json::to_string(&report).context("encoding JSON")?;
            text.push('\n');
            text
        } else {
            let mut text = render_text(&reading, rates, view, painter);
            crate::cmd::nat_view::push_text(&mut text, &nat, view.top, painter);
            text
        };
        if clear_screen {
            // Cursor home + clear screen: refresh in place like top/watch.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        if let Err(err) = out
            .write_all(rendered.as_bytes())
            .and_then(|()| out.flush())
        {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(err).context("writing the report");
        }
        let Some(secs) = args.watch else {
            return Ok(ExitCode::SUCCESS);
        };
        drop(out);
        previous = Some(reading);
        previous_nat = Some(nat);
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
}

fn verdict(settings: &PortPoolSettings, snapshot: &Snapshot) -> Verdict {
    let Some(pool) = snapshot.worst_pool() else {
        return Verdict {
            risk: Risk::Ok,
            summary: format!(
                "no socket holds an ephemeral port; each destination can take {} new connections/s \
                 when the client closes first",
                fmt_rate(settings.sustainable_rate_per_sec(false))
            ),
        };
    };
    let h = &pool.headroom;
    let who = format!("{} → {}", pool.local_ip, pool.destination);
    let summary = match h.risk {
        Risk::Exhausted => format!(
            "EXHAUSTED: {who} has no free port; connect() fails with EADDRNOTAVAIL until TIME_WAIT \
             entries expire ({} in TIME_WAIT)",
            pool.time_wait
        ),
        Risk::Critical | Risk::Warning => format!(
            "{}: {who} holds {} of {} ports ({:.0} %); {} free; churn ≈ {}/s (TIME_WAIT ÷ 60 s) against {}/s sustainable{}",
            if h.risk == Risk::Critical { "CRITICAL" } else { "WARNING" },
            fmt_int(pool.blocked),
            fmt_int(u64::from(settings.usable_ephemeral_ports())),
            pool.blocked as f64 * 100.0 / f64::from(settings.usable_ephemeral_ports().max(1)),
            h.free_ports,
            fmt_rate(h.churn_estimate_per_sec),
            fmt_rate(h.sustainable_rate_per_sec),
            time_to_fill(h.free_ports, h.churn_estimate_per_sec, h.port_block_ms)
        ),
        Risk::Ok => format!(
            "OK: busiest pool {who} uses {:.1} % of its ports; churn ≈ {}/s against {}/s sustainable",
            pool.utilisation * 100.0,
            fmt_rate(h.churn_estimate_per_sec),
            fmt_rate(h.sustainable_rate_per_sec)
        ),
    };
    Verdict {
        risk: h.risk,
        summary,
    }
}

/// "; at this churn the free ports last ≈ N s" when TIME_WAIT blocks ports for the full 60 s
/// (every close now takes a port out of the pool for longer than the estimate looks ahead).
fn time_to_fill(free_ports: u64, churn_per_sec: f64, block_ms: u32) -> String {
    if churn_per_sec <= 0.0 || block_ms < LINUX_TIME_WAIT_SECS * 1000 {
        return String::new();
    }
    format!(
        "; at this churn the free ports last ≈ {:.0} s",
        free_ports as f64 / churn_per_sec
    )
}

/// The text report: settings, sockets, pools, headroom, counters.
pub fn render_text(
    reading: &Reading,
    rates: Option<CounterRates>,
    view: View,
    p: Painter,
) -> String {
    let mut s = String::with_capacity(4096);
    let (settings, snap) = (&reading.settings, &reading.snapshot);
    s.push_str(&p.heading("portlab ports"));
    s.push_str(&format!(
        " — ephemeral-port pool of network namespace {}\n\n",
        netns_id()
    ));
    push_settings(&mut s, settings, p);
    push_states(&mut s, snap, p);
    push_pools(&mut s, settings, snap, view, p);
    push_headroom(&mut s, settings, snap, p);
    push_counters(&mut s, &reading.counters, rates, p);
    s
}

/// The caller's network namespace as `ls -l /proc/self/ns/net` shows it (`net:[4026531840]`).
fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "(unknown)".to_string())
}

fn push_settings(s: &mut String, st: &PortPoolSettings, p: Painter) {
    let range = st.ip_local_port_range;
    let reserved = if st.ip_local_reserved_ports.is_empty() {
        "none".to_string()
    } else {
        st.ip_local_reserved_ports
            .iter()
            .map(|r| {
                if r.low == r.high {
                    r.low.to_string()
                } else {
                    format!("{}-{}", r.low, r.high)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let reuse = match st.tcp_tw_reuse {
        TwReuse::Disabled => "0 (off: TIME_WAIT blocks a 4-tuple for 60 s)".to_string(),
        TwReuse::All => "1 (connect() may take over TIME_WAIT 4-tuples)".to_string(),
        TwReuse::LoopbackOnly => "2 (takeover for loopback traffic only)".to_string(),
        TwReuse::Unknown(v) => format!("{v} (undocumented value)"),
    };
    let delay = st
        .tcp_tw_reuse_delay_ms
        .map_or("not in this kernel (< 6.14): up to 1 s".to_string(), |ms| {
            format!("{ms} ms")
        });
    s.push_str(&p.heading("Settings"));
    s.push('\n');
    let rows = [
        (
            "ip_local_port_range",
            format!(
                "{}-{}  ({} ports, {} usable)",
                range.low,
                range.high,
                fmt_int(u64::from(range.len())),
                fmt_int(u64::from(st.usable_ephemeral_ports()))
            ),
        ),
        ("ip_local_reserved_ports", reserved),
        ("tcp_tw_reuse", reuse),
        ("tcp_tw_reuse_delay", delay),
        (
            "tcp_timestamps",
            format!(
                "{}{}",
                st.tcp_timestamps,
                if st.tcp_timestamps == 0 {
                    "  (off: TIME_WAIT reuse impossible)"
                } else {
                    ""
                }
            ),
        ),
        ("tcp_max_tw_buckets", fmt_int(st.tcp_max_tw_buckets)),
        (
            "tcp_fin_timeout",
            format!(
                "{} s  (FIN_WAIT_2 timeout; TIME_WAIT is fixed at {LINUX_TIME_WAIT_SECS} s)",
                st.tcp_fin_timeout_secs
            ),
        ),
        ("somaxconn", st.somaxconn.to_string()),
        (
            "open-file limit",
            format!(
                "{} soft / {} hard",
                fmt_int(st.nofile_soft),
                fmt_int(st.nofile_hard)
            ),
        ),
    ];
    for (name, value) in rows {
        s.push_str(&format!("  {name:<24}{value}\n"));
    }
}

fn push_states(s: &mut String, snap: &Snapshot, p: Painter) {
    let via = match snap.source {
        TableSource::SockDiag => "NETLINK_SOCK_DIAG",
        TableSource::ProcNetTcp => "/proc/net/tcp{,6}",
    };
    s.push_str(&format!(
        "\n{} {}\n",
        p.heading("TCP sockets"),
        p.dim(&format!("(IPv4 + IPv6, via {via})"))
    ));
    if let Some(note) = &snap.source_note {
        s.push_str(&format!("  {}\n", p.warn(&format!("note: {note}"))));
    }
    let c = &snap.states;
    let cells = [
        ("ESTAB", c.established),
        ("TIME-WAIT", c.time_wait),
        ("SYN-SENT", c.syn_sent),
        ("SYN-RECV", c.syn_recv),
        ("FIN-WAIT-1", c.fin_wait1),
        ("FIN-WAIT-2", c.fin_wait2),
        ("CLOSE-WAIT", c.close_wait),
        ("LAST-ACK", c.last_ack),
        ("CLOSING", c.closing),
        ("LISTEN", c.listen),
    ];
    let line: Vec<String> = cells
        .iter()
        .filter(|(name, n)| *n > 0 || matches!(*name, "ESTAB" | "TIME-WAIT" | "SYN-SENT"))
        .map(|(name, n)| format!("{name} {}", fmt_int(*n)))
        .collect();
    s.push_str(&format!("  {}\n", line.join("  ")));
    s.push_str(&format!(
        "  total {}  (IPv4 {}, IPv6 {}); {} hold an ephemeral local port\n",
        fmt_int(c.total()),
        fmt_int(snap.ipv4_sockets),
        fmt_int(snap.ipv6_sockets),
        fmt_int(snap.ephemeral_sockets)
    ));
}

fn push_pools(s: &mut String, st: &PortPoolSettings, snap: &Snapshot, args: View, p: Painter) {
    let title = match args.dest {
        Some(dest) => format!("Pools towards {dest}"),
        None => "Pools".to_string(),
    };
    let shown = snap.pools.len().min(args.top);
    s.push_str(&format!(
        "\n{} {}\n",
        p.heading(&title),
        p.dim(&format!(
            "(local IP × destination; {} of {} ports usable each; top {shown} of {})",
            fmt_int(u64::from(st.usable_ephemeral_ports())),
            fmt_int(u64::from(st.ip_local_port_range.len())),
            snap.pools.len()
        ))
    ));
    if snap.pools.is_empty() {
        s.push_str("  no socket holds an ephemeral local port");
        s.push_str(if args.dest.is_some() {
            " towards this destination\n"
        } else {
            "\n"
        });
        return;
    }
    s.push_str(&format!(
        "  {:<22} {:<28} {:>7} {:>9} {:>8} {:>6} {:>7} {:>7} {:>12}  {}\n",
        "LOCAL IP",
        "DESTINATION",
        "ESTAB",
        "TIME-WAIT",
        "SYN-SENT",
        "OTHER",
        "USED",
        "UTIL",
        "SUSTAINABLE",
        "RISK"
    ));
    for pool in snap.pools.iter().take(args.top) {
        s.push_str(&format!(
            "  {:<22} {:<28} {:>7} {:>9} {:>8} {:>6} {:>7} {:>6.1}% {:>10}/s  {}\n",
            pool.local_ip.to_string(),
            pool.destination.to_string(),
            fmt_int(pool.established),
            fmt_int(pool.time_wait),
            fmt_int(pool.syn_sent),
            fmt_int(pool.other),
            fmt_int(pool.used),
            pool.utilisation * 100.0,
            fmt_rate(pool.headroom.sustainable_rate_per_sec),
            paint_risk(pool.headroom.risk, p)
        ));
    }
    let ips = &snap.local_ips;
    if !ips.is_empty() {
        let parts: Vec<String> = ips
            .iter()
            .take(4)
            .map(|u| format!("{} {} ports", u.local_ip, fmt_int(u.distinct_ports)))
            .collect();
        s.push_str(&format!(
            "  {}\n",
            p.dim(&format!(
                "distinct ephemeral ports per local IP (the limit if apps bind() before connect()): {}",
                parts.join(", ")
            ))
        ));
    }
}

fn push_headroom(s: &mut String, st: &PortPoolSettings, snap: &Snapshot, p: Painter) {
    s.push_str(&format!("\n{}\n", p.heading("Headroom")));
    let v = verdict(st, snap);
    if let Some(pool) = snap.worst_pool() {
        s.push_str(&format!("  {}\n", explain_rate(st, pool)));
    } else {
        s.push_str(&format!(
            "  per destination: {} new connections/s (non-loopback), {}/s (loopback)\n",
            fmt_rate(st.sustainable_rate_per_sec(false)),
            fmt_rate(st.sustainable_rate_per_sec(true))
        ));
    }
    let line = format!("verdict: {}", v.summary);
    s.push_str(&format!("  {}\n", paint_by_risk(v.risk, &line, p)));
}

fn explain_rate(st: &PortPoolSettings, pool: &PoolUsage) -> String {
    let h = &pool.headroom;
    let why = if h.port_block_ms >= LINUX_TIME_WAIT_SECS * 1000 {
        let reason = match st.tcp_tw_reuse {
            TwReuse::LoopbackOnly => "tcp_tw_reuse=2 covers loopback only",
            TwReuse::Disabled => "tcp_tw_reuse=0",
            _ if st.tcp_timestamps == 0 => "tcp_timestamps=0 prevents reuse",
            _ => "no TIME_WAIT reuse",
        };
        format!(
            "{} ports ÷ 60 s TIME_WAIT ({reason})",
            fmt_int(u64::from(st.usable_ephemeral_ports()))
        )
    } else {
        format!(
            "{} ports ÷ {} ms tcp_tw_reuse_delay (TIME_WAIT reuse applies)",
            fmt_int(u64::from(st.usable_ephemeral_ports())),
            h.port_block_ms
        )
    };
    format!(
        "busiest pool {} → {}: sustains {} new connections/s = {why}; {} ports free now",
        pool.local_ip,
        pool.destination,
        fmt_rate(h.sustainable_rate_per_sec),
        fmt_int(h.free_ports)
    )
}

fn push_counters(s: &mut String, c: &Counters, rates: Option<CounterRates>, p: Painter) {
    match rates {
        Some(r) => {
            s.push_str(&format!(
                "\n{} {}\n",
                p.heading("Counters"),
                p.dim(&format!(
                    "(per second over the last {:.1} s)",
                    r.interval_secs
                ))
            ));
            s.push_str(&format!(
                "  ActiveOpens {:.1}/s  AttemptFails {:.1}/s  TWRecycled {:.1}/s  TCPTimeWaitOverflow {:.1}/s  ListenOverflows {:.1}/s  EstabResets {:.1}/s\n",
                r.active_opens, r.attempt_fails, r.tw_recycled, r.tcp_time_wait_overflow, r.listen_overflows, r.estab_resets
            ));
        }
        None => {
            s.push_str(&format!(
                "\n{} {}\n",
                p.heading("Counters"),
                p.dim("(since boot or network-namespace creation)")
            ));
            s.push_str(&format!(
                "  TWRecycled {}  TCPTimeWaitOverflow {}  ListenOverflows {}  ListenDrops {}\n  ActiveOpens {}  AttemptFails {}  EstabResets {}\n",
                fmt_int(c.tw_recycled),
                fmt_int(c.tcp_time_wait_overflow),
                fmt_int(c.listen_overflows),
                fmt_int(c.listen_drops),
                fmt_int(c.active_opens),
                fmt_int(c.attempt_fails),
                fmt_int(c.estab_resets)
            ));
        }
    }
}

fn paint_risk(risk: Risk, p: Painter) -> String {
    let text = match risk {
        Risk::Ok => "ok",
        Risk::Warning => "warning",
        Risk::Critical => "critical",
        Risk::Exhausted => "EXHAUSTED",
    };
    paint_by_risk(risk, text, p)
}

fn paint_by_risk(risk: Risk, text: &str, p: Painter) -> String {
    match risk {
        Risk::Ok => p.good(text),
        Risk::Warning => p.warn(text),
        Risk::Critical | Risk::Exhausted => p.bad(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_interval_must_be_positive() {
        assert!(parse_watch_secs("0").is_err());
        assert!(parse_watch_secs("-1").is_err());
        assert!(parse_watch_secs("abc").is_err());
        assert_eq!(parse_watch_secs("2"), Ok(2.0));
        assert_eq!(parse_watch_secs("0.5s"), Ok(0.5));
    }
}
