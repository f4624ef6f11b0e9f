//! From what the files held to the pool report: the OS, the settings (as captured, and what was
//! assumed), pools in that OS's scope, headroom, a timeline over the snapshots, the error
//! summary. Pool scope and TIME_WAIT per OS from research/port-allocation.md §7.2: Windows and
//! macOS hold an ephemeral port exclusively host-wide (XNU: per local address at best), Linux
//! per 4-tuple; TIME_WAIT is TcpTimedWaitDelay (default 240 s per Microsoft's current page,
//! 120 s per the Server 2003 reference) on Windows, 2 × `net.inet.tcp.msl` (30 s) on macOS,
//! 60 s on Linux.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use portlab_load::ErrorClass;
use portlab_sockets::{PortPoolSettings, PortRange, Snapshot, TwReuse, LINUX_TIME_WAIT_SECS};
use serde::Serialize;

use crate::errors::Call;
use crate::reader::{EventCounts, FileCapture};
use crate::row::CapState;
use crate::settings::{CapturedSettings, ExcludedRange, PortProxyRule};
use crate::snapshot::{CapturedTable, DestinationCounts, PortBits, ProcessCounts};
use crate::{CaptureError, Format, SourceOs, TextEncoding};

/// Windows' Vista+ default dynamic range (KB 929851).
pub const WINDOWS_DEFAULT_RANGE: (u16, u16) = (49152, 65535);
/// macOS default `net.inet.ip.portrange.first/last` (XNU in_pcb.c).
pub const MACOS_DEFAULT_RANGE: (u16, u16) = (49152, 65535);
/// macOS default `net.inet.tcp.msl`, ms (XNU tcp_timer.h).
pub const MACOS_DEFAULT_MSL_MS: u32 = 15_000;
/// Linux default `ip_local_port_range`.
pub const LINUX_DEFAULT_RANGE: (u16, u16) = (32768, 60999);

/// Choices the user makes on the command line.
#[derive(Debug, Clone, Default)]
pub struct AnalyzeOptions {
    /// Force the OS instead of detecting it.
    pub os: Option<SourceOs>,
    /// Windows TIME_WAIT when no TcpTimedWaitDelay was captured (default 240 s).
    pub windows_time_wait_secs: Option<u32>,
    /// Seconds between snapshots that carry no timestamp line.
    pub interval_secs: Option<f64>,
}

/// One capture file.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureInfo {
    /// File name (`-` for stdin).
    pub file: String,
    /// Formats found, by `--format` name.
    pub format: Vec<&'static str>,
    /// Encoding read with.
    pub encoding: Option<TextEncoding>,
    /// Socket tables (snapshots) in it.
    pub snapshots: usize,
    /// Lines read.
    pub lines: u64,
    /// Lines cut at 64 KiB.
    pub cut_lines: u64,
    /// JSON objects that were not understood.
    pub bad_json_objects: u64,
}

/// A port range `low..=high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    /// First port.
    pub low: u16,
    /// Last port.
    pub high: u16,
}

/// The settings the report uses.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedSettings {
    /// The ephemeral (dynamic) port range.
    pub port_range: Range,
    /// Ports of the range inside excluded blocks (Windows) or reserved (Linux).
    pub excluded_ports: u64,
    /// Excluded blocks as captured.
    pub excluded_blocks: Vec<ExcludedRange>,
    /// Ports a new connection can get: range less excluded.
    pub usable_ports: u64,
    /// How long a closed connection's port stays blocked, s.
    pub time_wait_secs: u32,
    /// Whether `time_wait_secs` is an assumption (nothing captured said it).
    pub time_wait_assumed: bool,
    /// Where each number came from, or what was assumed, one line each.
    pub notes: Vec<String>,
    /// portproxy rules (Windows).
    pub portproxy: Vec<PortProxyRule>,
    /// `MaxUserPort` when captured.
    pub max_user_port: Option<u32>,
    /// `AutoReusePortRangeNumberOfPorts` when captured (0: auto-reuse off).
    pub auto_reuse_ports: Option<u32>,
    /// Linux: the settings portlab-sockets groups with.
    pub linux: Option<PortPoolSettings>,
}

/// One pool: the host-wide one (Windows, macOS) or one (local IP, destination) pool (Linux).
#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    /// `host` (exclusive host-wide) or `4-tuple` (per local IP and destination).
    pub scope: &'static str,
    /// Local IP of a Linux pool.
    pub local_ip: Option<IpAddr>,
    /// Destination of a Linux pool.
    pub destination: Option<SocketAddr>,
    /// Distinct local ports of the range held (listeners and BOUND included on Windows/macOS).
    pub in_use: u64,
    /// Of those, held by TIME_WAIT.
    pub time_wait: u64,
    /// Of those, held by listeners.
    pub listeners: u64,
    /// Of those, held by BOUND sockets.
    pub bound: u64,
    /// Usable ports of the pool.
    pub size: u64,
    /// `in_use` ÷ `size`.
    pub utilisation: f64,
    /// Ports free now.
    pub free: u64,
    /// New connections per second the pool sustains when the client closes first.
    pub sustainable_rate_per_sec: f64,
    /// Recent close rate estimated from TIME_WAIT (count ÷ TIME_WAIT length).
    pub churn_estimate_per_sec: f64,
}

/// A destination's client-side sockets.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationReport {
    /// Remote address.
    pub destination: SocketAddr,
    /// Its part in a `netsh portproxy` rule: `portproxy-listen` (the clients' leg) or
    /// `portproxy-connect` (the forwarder's own outbound leg, one per client connection).
    pub role: Option<&'static str>,
    /// Counts.
    #[serde(flatten)]
    pub counts: DestinationCounts,
}

/// An owning process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// PID.
    pub pid: u32,
    /// Executable, from `netstat -b` owner lines.
    pub name: Option<String>,
    /// Counts.
    #[serde(flatten)]
    pub counts: ProcessCounts,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// File.
    pub file: String,
    /// Format.
    pub format: &'static str,
    /// The timestamp line, as written.
    pub taken_at: Option<String>,
    /// Seconds since the first snapshot (from timestamps, or `--interval`).
    pub at_secs: Option<f64>,
    /// Rows by canonical state name.
    pub by_state: BTreeMap<&'static str, u64>,
    /// TCP rows.
    pub rows: u64,
    /// Rows whose address the tool cut (macOS without `-W`): counted by state only.
    pub truncated_rows: u64,
    /// Rows with names instead of numbers (captured without `-n`): not counted.
    pub named_rows: u64,
    /// UDP rows (not counted).
    pub udp_rows: u64,
    /// Pools, fullest first.
    pub pools: Vec<PoolReport>,
    /// Busiest destinations (client-side rows).
    pub destinations: Vec<DestinationReport>,
    /// Owning processes with the most sockets (Windows).
    pub processes: Vec<ProcessReport>,
    /// Local ports with a listener.
    #[serde(skip)]
    pub listening_ports: Vec<u16>,
}

/// One point of the timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the first snapshot.
    pub at_secs: f64,
    /// Ports in use in the fullest pool.
    pub in_use: u64,
    /// TIME_WAIT rows.
    pub time_wait: u64,
}

/// Growth over several snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// Points in order.
    pub points: Vec<TimelinePoint>,
    /// Least-squares slope of ports in use, per second.
    pub growth_per_sec: Option<f64>,
    /// Seconds from the last snapshot until the pool is full at that rate.
    pub time_to_full_secs: Option<f64>,
    /// Why there are no rates, when there are none.
    pub note: Option<String>,
}

/// One error class as the captures counted it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorSummary {
    /// Class (the load engine's names).
    pub class: ErrorClass,
    /// OS error number (errno or WSA code).
    pub os_code: Option<i32>,
    /// OS the number or text proves.
    pub os: Option<SourceOs>,
    /// The failed call, where said.
    pub call: Option<Call>,
    /// Failures counted (hey/oha counts included).
    pub count: u64,
    /// Lines that said so.
    pub lines: u64,
    /// Destination named in the first line, where it names one.
    pub destination: Option<SocketAddr>,
    /// EADDRNOTAVAIL towards IPv6 loopback (no IPv6), not exhaustion.
    pub ipv6_loopback: bool,
    /// The first such line.
    pub example: String,
}

/// The whole analysis.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// The OS the captures came from.
    pub os: SourceOs,
    /// Why that OS.
    pub os_reason: String,
    /// Files read.
    pub captures: Vec<CaptureInfo>,
    /// Settings used.
    pub settings: ResolvedSettings,
    /// Every snapshot.
    pub snapshots: Vec<SnapshotReport>,
    /// Pools of the last snapshot (the latest state), fullest first.
    pub pools: Vec<PoolReport>,
    /// Linux: the last snapshot grouped by portlab-sockets (as `portlab ports --json`).
    pub linux_snapshot: Option<Snapshot>,
    /// Timeline, with two or more snapshots.
    pub timeline: Option<Timeline>,
    /// Errors by class, most first.
    pub errors: Vec<ErrorSummary>,
    /// Error-like lines no rule classified.
    pub unclassified_lines: u64,
    /// The first of them.
    pub unclassified_examples: Vec<String>,
    /// Lines of no known format (not error-like).
    pub other_lines: u64,
    /// The first of them.
    pub other_examples: Vec<String>,
    /// Windows Tcpip events.
    pub events: EventCounts,
}

/// Builds the analysis from the files read.
///
/// # Errors
/// None today beyond an empty input list, reported as [`CaptureError::Empty`].
pub fn analyze(
    files: Vec<FileCapture>,
    options: &AnalyzeOptions,
) -> Result<Analysis, CaptureError> {
    if files.is_empty() {
        return Err(CaptureError::Empty { file: "-".into() });
    }
    let (os, os_reason) = detect_os(&files, options.os);
    let mut captured = CapturedSettings::default();
    let mut captures = Vec::new();
    let mut tables = Vec::new();
    let mut errors: Vec<(crate::errors::ErrorHit, String, u64)> = Vec::new();
    let (mut unclassified, mut unclassified_examples) = (0, Vec::new());
    let (mut other, mut other_examples) = (0, Vec::new());
    let mut events = EventCounts::default();
    for f in files {
        captures.push(CaptureInfo {
            file: f.file.clone(),
            format: f.formats.iter().map(|x| x.name()).collect(),
            encoding: f.encoding,
            snapshots: f.tables.len(),
            lines: f.lines,
            cut_lines: f.cut_lines,
            bad_json_objects: f.bad_json_objects,
        });
        captured.merge(f.settings);
        tables.extend(f.tables);
        errors.extend(f.errors);
        unclassified += f.unclassified.0;
        unclassified_examples.extend(f.unclassified.1);
        other += f.other_lines.0;
        other_examples.extend(f.other_lines.1);
        events.event_4227 += f.events.event_4227;
        events.event_4231 += f.events.event_4231;
    }
    unclassified_examples.truncate(20);
    other_examples.truncate(20);
    let settings = resolve_settings(os, &captured, options);
    let mut snapshots = Vec::new();
    let mut linux_snapshot = None;
    let first_time = tables.iter().find_map(|t| t.taken_at_secs);
    for (i, table) in tables.iter().enumerate() {
        let at_secs = match (table.taken_at_secs, first_time, options.interval_secs) {
            (Some(t), Some(first), _) => Some(t - first),
            (_, _, Some(step)) => Some(i as f64 * step),
            _ => None,
        };
        let (report, linux) = snapshot_report(os, &settings, table, at_secs);
        if i + 1 == tables.len() {
            linux_snapshot = linux;
        }
        snapshots.push(report);
    }
    let pools = snapshots
        .last()
        .map(|s| s.pools.clone())
        .unwrap_or_default();
    let timeline = timeline(&snapshots, &settings);
    Ok(Analysis {
        os,
        os_reason,
        captures,
        settings,
        snapshots,
        pools,
        linux_snapshot,
        timeline,
        errors: summarise_errors(errors),
        unclassified_lines: unclassified,
        unclassified_examples,
        other_lines: other,
        other_examples,
        events,
    })
}

fn detect_os(files: &[FileCapture], forced: Option<SourceOs>) -> (SourceOs, String) {
    if let Some(os) = forced {
        return (os, "--os".to_string());
    }
    let mut votes: HashMap<SourceOs, (u64, Format)> = HashMap::new();
    for f in files {
        for t in &f.tables {
            let v = votes.entry(t.format.os()).or_insert((0, t.format));
            v.0 += 1_000_000 + t.rows;
        }
        for fmt in f
            .formats
            .iter()
            .filter(|x| **x != Format::ErrorLines && !x.is_table())
        {
            let v = votes.entry(fmt.os()).or_insert((0, *fmt));
            v.0 += 1000;
        }
        for (hit, _, _) in &f.errors {
            if let Some(os) = hit.os {
                votes.entry(os).or_insert((0, Format::ErrorLines)).0 += 1;
            }
        }
    }
    match votes
        .into_iter()
        .max_by_key(|(os, (n, _))| (*n, *os == SourceOs::Windows))
    {
        Some((os, (_, Format::ErrorLines))) => (os, "the error numbers and texts".to_string()),
        Some((os, (_, fmt))) => (os, format!("{} output", fmt.name())),
        None => (
            SourceOs::Windows,
            "nothing OS-specific captured: assumed Windows".to_string(),
        ),
    }
}

fn resolve_settings(os: SourceOs, c: &CapturedSettings, o: &AnalyzeOptions) -> ResolvedSettings {
    let mut notes = Vec::new();
    let mut time_wait_assumed = false;
    let (range, time_wait_secs, linux) = match os {
        SourceOs::Windows => {
            let range = match c.dynamic_port_v4 {
                Some((start, num)) if num > 0 => {
                    let high = (u32::from(start) + num - 1).min(65535) as u16;
                    notes.push(format!(
                        "dynamic port range {start}-{high} ({num} ports) from {}",
                        c.dynamic_port_source.unwrap_or("netsh")
                    ));
                    (start, high)
                }
                _ => {
                    notes.push("no dynamic-port settings captured: assumed Windows Vista+ default 49152-65535".to_string());
                    WINDOWS_DEFAULT_RANGE
                }
            };
            if let Some((s6, n6)) = c.dynamic_port_v6 {
                notes.push(format!(
                    "IPv6 dynamic range {s6} + {n6} ports (the pool below uses the IPv4 range)"
                ));
            }
            let tw = match (c.tcp_timed_wait_delay_secs, o.windows_time_wait_secs) {
                (Some(s), _) => {
                    notes.push(format!("TIME_WAIT {s} s from TcpTimedWaitDelay"));
                    s
                }
                (None, Some(s)) => {
                    notes.push(format!(
                        "no TcpTimedWaitDelay captured: TIME_WAIT {s} s from --time-wait"
                    ));
                    s
                }
                (None, None) => {
                    time_wait_assumed = true;
                    notes.push("no TcpTimedWaitDelay captured: assumed TIME_WAIT 240 s (Microsoft's port-exhaustion page: 4 minutes; the Server 2003 reference says 120 s: --time-wait 120)".to_string());
                    240
                }
            };
            if let Some(m) = c.max_user_port {
                notes.push(format!("MaxUserPort = {m} captured: it set the top of the pre-Vista range; since Vista the range is netsh's start+number (KB 929851)"));
            }
            if c.auto_reuse_ports == Some(0) {
                notes.push("AutoReusePortRangeNumberOfPorts = 0: ports are not shared per 4-tuple (auto-reuse off, the default)".to_string());
            }
            (range, tw, None)
        }
        SourceOs::Macos => {
            let range = match (c.macos_first, c.macos_last) {
                (Some(f), Some(l)) if f <= l => {
                    notes.push(format!("net.inet.ip.portrange {f}-{l} from sysctl"));
                    (f, l)
                }
                _ => {
                    notes.push(
                        "no net.inet.ip.portrange captured: assumed macOS default 49152-65535"
                            .to_string(),
                    );
                    MACOS_DEFAULT_RANGE
                }
            };
            let msl = c.macos_msl_ms.unwrap_or_else(|| {
                time_wait_assumed = true;
                notes.push(
                    "no net.inet.tcp.msl captured: assumed 15000 ms (TIME_WAIT 30 s)".to_string(),
                );
                MACOS_DEFAULT_MSL_MS
            });
            if c.macos_msl_ms.is_some() {
                notes.push(format!(
                    "TIME_WAIT 2 x net.inet.tcp.msl {msl} ms = {} s",
                    2 * msl / 1000
                ));
            }
            (range, (2 * msl / 1000).max(1), None)
        }
        SourceOs::Linux => {
            let s = linux_settings(c, &mut notes);
            let r = s.ip_local_port_range;
            ((r.low, r.high), LINUX_TIME_WAIT_SECS, Some(s))
        }
    };
    let mut excluded_bits = PortBits::default();
    for block in &c.excluded {
        for p in block.low.max(range.0)..=block.high.min(range.1) {
            excluded_bits.insert(p);
        }
    }
    let mut excluded_ports = if range.0 <= range.1 {
        excluded_bits.count_in(range.0, range.1)
    } else {
        0
    };
    if let Some(l) = &linux {
        excluded_ports =
            u64::from(l.ip_local_port_range.len()) - u64::from(l.usable_ephemeral_ports());
    }
    if !c.excluded.is_empty() {
        notes.push(format!(
            "{} excluded blocks remove {excluded_ports} ports of the range",
            c.excluded.len()
        ));
    }
    let size = u64::from(range.1.saturating_sub(range.0)) + 1;
    ResolvedSettings {
        port_range: Range {
            low: range.0,
            high: range.1,
        },
        excluded_ports,
        excluded_blocks: c.excluded.clone(),
        usable_ports: size.saturating_sub(excluded_ports),
        time_wait_secs,
        time_wait_assumed,
        notes,
        portproxy: c.portproxy.clone(),
        max_user_port: c.max_user_port,
        auto_reuse_ports: c.auto_reuse_ports,
        linux,
    }
}

/// Linux settings from captured sysctls, kernel defaults for the rest (said in `notes`).
fn linux_settings(c: &CapturedSettings, notes: &mut Vec<String>) -> PortPoolSettings {
    let get = |k: &str| c.linux.get(k).map(String::as_str);
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    let range = get("net.ipv4.ip_local_port_range")
        .and_then(|v| {
            let mut it = v.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some(PortRange {
                low: it.next()??,
                high: it.next()??,
            })
        })
        .unwrap_or_else(|| {
            notes.push(
                "no net.ipv4.ip_local_port_range captured: assumed the default 32768-60999"
                    .to_string(),
            );
            PortRange {
                low: LINUX_DEFAULT_RANGE.0,
                high: LINUX_DEFAULT_RANGE.1,
            }
        });
    let reserved = get("net.ipv4.ip_local_reserved_ports")
        .map(|v| {
            v.split(',')
                .filter_map(|part| {
                    let part = part.trim();
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    Some(PortRange {
                        low: a.trim().parse().ok()?,
                        high: b.trim().parse().ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let tw_reuse = match num("net.ipv4.tcp_tw_reuse") {
        Some(0) => TwReuse::Disabled,
        Some(1) => TwReuse::All,
        Some(2) => TwReuse::LoopbackOnly,
        Some(n) => TwReuse::Unknown(n as u32),
        None => {
            notes.push(
                "no net.ipv4.tcp_tw_reuse captured: assumed the default 2 (loopback only)"
                    .to_string(),
            );
            TwReuse::LoopbackOnly
        }
    };
    PortPoolSettings {
        ip_local_port_range: range,
        ip_local_reserved_ports: reserved,
        tcp_tw_reuse: tw_reuse,
        tcp_tw_reuse_delay_ms: Some(num("net.ipv4.tcp_tw_reuse_delay").unwrap_or(1000) as u32),
        tcp_timestamps: num("net.ipv4.tcp_timestamps").unwrap_or(1) as u32,
        tcp_max_tw_buckets: num("net.ipv4.tcp_max_tw_buckets").unwrap_or(262_144),
        tcp_fin_timeout_secs: num("net.ipv4.tcp_fin_timeout").unwrap_or(60) as u32,
        somaxconn: num("net.core.somaxconn").unwrap_or(4096) as u32,
        nofile_soft: 0,
        nofile_hard: 0,
    }
}

fn snapshot_report(
    os: SourceOs,
    settings: &ResolvedSettings,
    t: &CapturedTable,
    at_secs: Option<f64>,
) -> (SnapshotReport, Option<Snapshot>) {
    let by_state = CapState::ALL
        .iter()
        .filter(|s| t.count(**s) > 0)
        .map(|s| (s.name(), t.count(*s)))
        .collect();
    let (pools, linux) = match (&settings.linux, os) {
        (Some(ls), SourceOs::Linux) => {
            let snap = linux_snapshot(ls, t);
            let pools = snap.pools.iter().map(|p| linux_pool(p, ls)).collect();
            (pools, Some(snap))
        }
        _ => (vec![host_pool(settings, t)], None),
    };
    let mut destinations: Vec<DestinationReport> = t
        .destinations
        .iter()
        .map(|(d, c)| DestinationReport {
            destination: *d,
            role: portproxy_role(&settings.portproxy, *d),
            counts: *c,
        })
        .collect();
    destinations.sort_by(|a, b| {
        let total = |c: &DestinationCounts| c.established + c.time_wait + c.other;
        total(&b.counts)
            .cmp(&total(&a.counts))
            .then(a.destination.cmp(&b.destination))
    });
    destinations.truncate(10);
    let mut processes: Vec<ProcessReport> = t
        .processes
        .iter()
        .map(|(pid, c)| ProcessReport {
            pid: *pid,
            name: t.process_names.get(pid).cloned(),
            counts: *c,
        })
        .collect();
    processes.sort_by(|a, b| {
        b.counts
            .sockets
            .cmp(&a.counts.sockets)
            .then(a.pid.cmp(&b.pid))
    });
    processes.truncate(10);
    (
        SnapshotReport {
            file: t.file.clone(),
            format: t.format.name(),
            taken_at: t.taken_at_text.clone(),
            at_secs,
            by_state,
            rows: t.rows,
            truncated_rows: t.truncated_rows,
            named_rows: t.named_rows,
            udp_rows: t.udp_rows,
            pools,
            destinations,
            processes,
            listening_ports: (0..=u16::MAX)
                .filter(|p| t.ports_listen.contains(*p))
                .collect(),
        },
        linux,
    )
}

/// Which leg of a portproxy rule a destination is.
fn portproxy_role(rules: &[PortProxyRule], d: SocketAddr) -> Option<&'static str> {
    let matches = |addr: &str, port: u16| {
        port == d.port()
            && (addr == "*"
                || addr
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified() || ip == d.ip())
                || (addr.eq_ignore_ascii_case("localhost") && d.ip().is_loopback()))
    };
    rules.iter().find_map(|r| {
        if matches(&r.listen_address, r.listen_port) {
            Some("portproxy-listen")
        } else if matches(&r.connect_address, r.connect_port) {
            Some("portproxy-connect")
        } else {
            None
        }
    })
}

fn host_pool(s: &ResolvedSettings, t: &CapturedTable) -> PoolReport {
    let (low, high) = (s.port_range.low, s.port_range.high);
    let mut excluded = PortBits::default();
    for b in &s.excluded_blocks {
        for p in b.low.max(low)..=b.high.min(high) {
            excluded.insert(p);
        }
    }
    let count = |bits: &PortBits| bits.count_in_except(&excluded, low, high);
    let in_use = count(&t.ports_any);
    let time_wait = count(&t.ports_time_wait);
    let size = s.usable_ports;
    let tw = f64::from(s.time_wait_secs.max(1));
    PoolReport {
        scope: "host",
        local_ip: None,
        destination: None,
        in_use,
        time_wait,
        listeners: count(&t.ports_listen),
        bound: count(&t.ports_bound),
        size,
        utilisation: if size == 0 {
            1.0
        } else {
            in_use as f64 / size as f64
        },
        free: size.saturating_sub(in_use),
        sustainable_rate_per_sec: size as f64 / tw,
        churn_estimate_per_sec: time_wait as f64 / tw,
    }
}

/// Groups a Linux table as `portlab ports` does: each pool's sockets (with the listeners, whose
/// ports are not ephemeral) go through `Snapshot::from_entries`, one pool at a time so memory
/// stays at one pool's sockets; distinct ports per local IP are counted across pools as
/// from_entries counts them.
fn linux_snapshot(ls: &PortPoolSettings, t: &CapturedTable) -> Snapshot {
    use portlab_sockets::{LocalIpUsage, SocketEntry, StateCounts, TableSource, TcpState};
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let listeners: Vec<SocketEntry> = t
        .ports_listen
        .ports()
        .map(|port| SocketEntry {
            state: TcpState::Listen,
            local: SocketAddr::from(([0, 0, 0, 0], port)),
            remote: unspecified,
        })
        .collect();
    let range = ls.ip_local_port_range;
    let mut pools = Vec::new();
    let mut per_ip: HashMap<IpAddr, (PortBits, u64)> = HashMap::new();
    let mut entries = Vec::new();
    for ((local_ip, destination), ports) in &t.linux_pools {
        entries.clear();
        entries.extend_from_slice(&listeners);
        for (class, list) in ports.by_class.iter().enumerate() {
            for &port in list {
                entries.push(SocketEntry {
                    state: crate::snapshot::LINUX_CLASS_STATES[class],
                    local: SocketAddr::new(*local_ip, port),
                    remote: *destination,
                });
                if range.contains(port) && !t.ports_listen.contains(port) {
                    let (bits, sockets) = per_ip.entry(*local_ip).or_default();
                    bits.insert(port);
                    *sockets += 1;
                }
            }
        }
        pools.extend(Snapshot::from_entries(ls, &entries, None).pools);
    }
    pools.sort_by(|a, b| {
        b.utilisation
            .total_cmp(&a.utilisation)
            .then(a.destination.cmp(&b.destination))
            .then(a.local_ip.cmp(&b.local_ip))
    });
    let mut local_ips: Vec<LocalIpUsage> = per_ip
        .into_iter()
        .map(|(local_ip, (bits, sockets))| LocalIpUsage {
            local_ip,
            distinct_ports: bits.count_in(0, u16::MAX),
            sockets,
        })
        .collect();
    local_ips.sort_by(|a, b| {
        b.distinct_ports
            .cmp(&a.distinct_ports)
            .then(a.local_ip.cmp(&b.local_ip))
    });
    let mut states = StateCounts::default();
    for state in CapState::ALL {
        if let Some(ts) = state.tcp_state() {
            let n = t.count(state);
            let slot = match ts {
                TcpState::Established => &mut states.established,
                TcpState::SynSent => &mut states.syn_sent,
                TcpState::SynRecv | TcpState::NewSynRecv => &mut states.syn_recv,
                TcpState::FinWait1 => &mut states.fin_wait1,
                TcpState::FinWait2 => &mut states.fin_wait2,
                TcpState::TimeWait => &mut states.time_wait,
                TcpState::Close => &mut states.close,
                TcpState::CloseWait => &mut states.close_wait,
                TcpState::LastAck => &mut states.last_ack,
                TcpState::Listen => &mut states.listen,
                TcpState::Closing => &mut states.closing,
            };
            *slot += n;
        }
    }
    let ephemeral_sockets = local_ips.iter().map(|u| u.sockets).sum();
    Snapshot {
        taken_at_unix_ms: t.taken_at_secs.map_or(0, |s| (s * 1000.0).max(0.0) as u64),
        source: TableSource::ProcNetTcp,
        source_note: Some(format!("captured text ({})", t.format.name())),
        states,
        ipv4_sockets: t.linux_families.0,
        ipv6_sockets: t.linux_families.1,
        ephemeral_sockets,
        pools,
        local_ips,
    }
}

fn linux_pool(p: &portlab_sockets::PoolUsage, s: &PortPoolSettings) -> PoolReport {
    let size = u64::from(s.usable_ephemeral_ports());
    PoolReport {
        scope: "4-tuple",
        local_ip: Some(p.local_ip),
        destination: Some(p.destination),
        in_use: p.used,
        time_wait: p.time_wait,
        listeners: 0,
        bound: 0,
        size,
        utilisation: p.utilisation,
        free: p.headroom.free_ports,
        sustainable_rate_per_sec: p.headroom.sustainable_rate_per_sec,
        churn_estimate_per_sec: p.headroom.churn_estimate_per_sec,
    }
}

fn timeline(snapshots: &[SnapshotReport], s: &ResolvedSettings) -> Option<Timeline> {
    if snapshots.len() < 2 {
        return None;
    }
    let fullest = |snap: &SnapshotReport| snap.pools.iter().map(|p| p.in_use).max().unwrap_or(0);
    let size = snapshots
        .last()
        .and_then(|x| x.pools.first())
        .map_or(s.usable_ports, |p| p.size);
    let timed: Vec<TimelinePoint> = snapshots
        .iter()
        .filter_map(|x| {
            Some(TimelinePoint {
                at_secs: x.at_secs?,
                in_use: fullest(x),
                time_wait: x.by_state.get("TIME_WAIT").copied().unwrap_or(0),
            })
        })
        .collect();
    if timed.len() < 2 || timed.last().map(|p| p.at_secs) == timed.first().map(|p| p.at_secs) {
        let points = snapshots
            .iter()
            .enumerate()
            .map(|(i, x)| TimelinePoint {
                at_secs: i as f64,
                in_use: fullest(x),
                time_wait: x.by_state.get("TIME_WAIT").copied().unwrap_or(0),
            })
            .collect();
        return Some(Timeline {
            points,
            growth_per_sec: None,
            time_to_full_secs: None,
            note: Some("snapshots carry no timestamps: give --interval SECS for rates (points are numbered 0, 1, 2…)".to_string()),
        });
    }
    let n = timed.len() as f64;
    let mean_t = timed.iter().map(|p| p.at_secs).sum::<f64>() / n;
    let mean_u = timed.iter().map(|p| p.in_use as f64).sum::<f64>() / n;
    let cov: f64 = timed
        .iter()
        .map(|p| (p.at_secs - mean_t) * (p.in_use as f64 - mean_u))
        .sum();
    let var: f64 = timed.iter().map(|p| (p.at_secs - mean_t).powi(2)).sum();
    let growth = if var > 0.0 { cov / var } else { 0.0 };
    let last = timed.last().map_or(0, |p| p.in_use);
    let time_to_full = (growth > 0.0).then(|| size.saturating_sub(last) as f64 / growth);
    Some(Timeline {
        points: timed,
        growth_per_sec: Some(growth),
        time_to_full_secs: time_to_full,
        note: None,
    })
}

fn summarise_errors(hits: Vec<(crate::errors::ErrorHit, String, u64)>) -> Vec<ErrorSummary> {
    let mut by_key: BTreeMap<(ErrorClass, Option<i32>, Option<Call>, bool), ErrorSummary> =
        BTreeMap::new();
    for (hit, line, lines) in hits {
        let key = (hit.class, hit.os_code, hit.call, hit.ipv6_loopback);
        let e = by_key.entry(key).or_insert_with(|| ErrorSummary {
            class: hit.class,
            os_code: hit.os_code,
            os: hit.os,
            call: hit.call,
            count: 0,
            lines: 0,
            destination: destination_in(&line),
            ipv6_loopback: hit.ipv6_loopback,
            example: crate::errors::distribution_count(&line)
                .map_or(line.as_str(), |(_, rest)| rest)
                .chars()
                .take(300)
                .collect(),
        });
        e.count += hit.count;
        e.lines += lines;
    }
    let mut out: Vec<ErrorSummary> = by_key.into_values().collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.count));
    out
}

/// The first `ip:port` in a line (`dial tcp 127.0.0.1:8080:`, `connect ECONNREFUSED 127.0.0.1:9999`).
fn destination_in(line: &str) -> Option<SocketAddr> {
    line.split(|c: char| c.is_whitespace() || c == '"' || c == '(' || c == ')' || c == ',')
        .filter_map(|tok| {
            let tok = tok.trim_end_matches([':', '.', ';']);
            let tok = tok.rsplit("//").next().unwrap_or(tok);
            let tok = tok.split('/').next().unwrap_or(tok);
            crate::row::parse_colon_addr(tok).filter(|a| a.port() != 0 && !a.ip().is_unspecified())
        })
        .next()
}
