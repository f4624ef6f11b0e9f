//! `portlab model`: capacity arithmetic for an OS profile and a workload — ports per pool,
//! sustainable connections per second, time to exhaustion, steady-state failure fraction —
//! next to the folk formula `ports / TIME_WAIT`. Also the profile and workload flags that
//! `portlab simulate` shares.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use portlab_model::{
    capacity, Capacity, CapacityQuery, ConnectionPolicy, Latency, LoadShape, Os, OsProfile,
    PoolScope, PortRange, RetryPolicy, RunLimit, TwReuse, Workload,
};
use serde::Serialize;

use crate::exit::usage;
use crate::style::Painter;

/// Flags that choose and override an OS profile.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// OS profile to start from: linux, windows-legacy, windows, macos, freebsd.
    #[arg(long, default_value = "linux", value_name = "OS")]
    pub os: String,
    /// Take range, tcp_tw_reuse and tcp_tw_reuse_delay from this machine (/proc/sys/net/ipv4);
    /// implies --os linux. Other flags still override.
    #[arg(long)]
    pub from_host: bool,
    /// Ephemeral-port range, LOW-HIGH (e.g. 40000-40999).
    #[arg(long, value_name = "LOW-HIGH")]
    pub range: Option<String>,
    /// Ports of the range never handed out (ip_local_reserved_ports, Windows excluded ranges).
    #[arg(long, value_name = "N")]
    pub reserved_ports: Option<u32>,
    /// TIME_WAIT length (e.g. 60s, 120s, 4m; a bare number is seconds).
    #[arg(long, value_name = "DURATION")]
    pub time_wait: Option<String>,
    /// Linux net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only.
    #[arg(long, value_name = "0|1|2")]
    pub tw_reuse: Option<u8>,
    /// Linux net.ipv4.tcp_tw_reuse_delay in milliseconds (6.14+; default 1000).
    #[arg(long, value_name = "MS")]
    pub tw_reuse_delay_ms: Option<u64>,
    /// Which connections share a pool: tuple (per source IP x destination), destination,
    /// source (bind(ip,0) before connect), global (host-wide).
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
}

/// Flags that describe the client's workload.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Closed loop: number of concurrent workers.
    #[arg(short = 'c', long, value_name = "N", conflicts_with = "rate")]
    pub concurrency: Option<u32>,
    /// Open loop: new requests per second.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Request latency: MS, or a duration (250us, 1.5ms, 2s), or MIN..MAX (uniform, ms), or
    /// exp:MEAN (exponential, ms). Default 1 ms.
    #[arg(long, value_name = "MS")]
    pub latency: Option<String>,
    /// keep-alive (reuse connections), close (server closes first: Connection: close) or
    /// drop (client closes first and holds TIME_WAIT).
    #[arg(long, value_name = "POLICY", default_value = "drop")]
    pub connection: String,
    /// Number of destinations (IP, port) the requests spread over.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub destinations: u32,
    /// Number of source IPs the client uses.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub source_ips: u32,
    /// Destinations are on loopback (tcp_tw_reuse=2 then applies).
    #[arg(long)]
    pub loopback: bool,
    /// Retries per request after EADDRNOTAVAIL.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Wait before the first retry, doubling for each further retry.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub backoff_ms: u64,
    /// Time a failed connect() takes before the worker goes on (the kernel answers at once
    /// after scanning the range). Default: 10 us + 0.12 us per port of the pool (measured).
    #[arg(long, value_name = "US")]
    pub failed_connect_us: Option<u64>,
}

/// Flags of `portlab model`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = MODEL_JSON_HELP)]
pub struct Args {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Print JSON instead of the text report.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nat: crate::cmd::model_nat::NatModelArgs,
    #[command(flatten)]
    pub scan_cost: crate::cmd::simulate::ScanCostArgs,
}

const MODEL_JSON_HELP: &str = "\
JSON (--json): {\"profile\": {os, range{low,high}, reserved_ports, time_wait_secs, scope,
tw_reuse, tw_reuse_delay_ms, timestamps, time_wait_cap, no_local_time_wait}, \"sources\": [..],
\"layout\": {source_ips, destinations, loopback, policy}, \"workload\": {..as in portlab simulate..} |
null,
\"capacity\": {ports_per_pool, pools, hold{open_secs, after_close_secs, total_secs},
sustainable_per_pool_per_sec, sustainable_total_per_sec, folk{ports, time_wait_secs,
rate_per_sec}, differences[{code, explanation}], churn{offered_per_sec,
offered_per_pool_per_sec, ports_needed_per_pool, exhausts, time_to_exhaustion_secs,
steady_state_failure_fraction, steady_state_successes_per_sec} | null},
\"slow_connect_cliff\": {factor, kind (at-half|near-full|never), fill_pct, held_ports,
skipped_for_factor, min_ports_for_step, past_half_connect_us} | null (not Linux)}";

/// Runs `portlab model`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.nat.nat {
        return crate::cmd::model_nat::run_model(&args.nat, &args.workload, args.json);
    }
    let profile = build_profile(&args.profile)?;
    let query = build_query(&args.workload)?;
    let cap = capacity(&profile, &query);
    let cost = args.scan_cost.cost()?;
    let cliff = (profile.os == Os::Linux)
        .then(|| portlab_model::slow_connect_cliff(profile.range, &cost, 10.0));
    if args.json {
        let out = ModelJson {
            profile: &profile,
            sources: profile.sources(),
            layout: Layout {
                source_ips: query.source_ips,
                destinations: query.destinations,
                loopback: query.loopback,
                policy: query.policy,
            },
            workload: query.churn.as_ref(),
            capacity: &cap,
            slow_connect_cliff: cliff.as_ref(),
        };
        crate::exit::emit(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        let mut text = render(&profile, &query, &cap, Painter::for_stdout());
        if let Some(c) = &cliff {
            text.push_str(&render_cliff(c, &cost, Painter::for_stdout()));
        }
        crate::exit::emit(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ModelJson<'a> {
    profile: &'a OsProfile,
    sources: &'a [&'static str],
    layout: Layout,
    workload: Option<&'a Workload>,
    capacity: &'a Capacity,
    slow_connect_cliff: Option<&'a portlab_model::Cliff>,
}

/// The slow-connect cliff for one destination's pool (Linux's port search).
fn render_cliff(
    c: &portlab_model::Cliff,
    cost: &portlab_model::ScanCost,
    paint: Painter,
) -> String {
    format!(
        "\n{}\n  {}\n  {}\n",
        paint.heading("Slow-connect cliff (one destination, TIME_WAIT-held ports)"),
        crate::cmd::simulate::cliff_sentence(c),
        paint.dim(&format!(
            "model: connect {:.0} us + {:.3}–{:.3} us per skipped port, dearer the longer the \
             walk (Linux 6.18, loopback); portlab simulate --fill-curve for the whole curve",
            cost.connect_base_us, cost.per_port_us, cost.per_port_max_us
        ))
    )
}

#[derive(Serialize)]
struct Layout {
    source_ips: u32,
    destinations: u32,
    loopback: bool,
    policy: ConnectionPolicy,
}

/// This machine's port-pool settings that the model needs.
#[derive(Debug, Clone, Copy)]
struct HostSettings {
    range: PortRange,
    tw_reuse: TwReuse,
    /// Absent before Linux 6.14.
    tw_reuse_delay: Option<Duration>,
}

/// Reads the settings from /proc/sys/net/ipv4 (this network namespace).
// Kept in one function until portlab-sockets' PortPoolSettings lands; then it calls that.
fn read_host_settings() -> anyhow::Result<HostSettings> {
    let read = |name: &str| {
        let path = format!("/proc/sys/net/ipv4/{name}");
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    };
    let range = read("ip_local_port_range")?
        .trim()
        .parse::<PortRange>()
        .context("parsing ip_local_port_range")?;
    let reuse_raw = read("tcp_tw_reuse")?;
    let reuse_value: u8 = reuse_raw
        .trim()
        .parse()
        .with_context(|| format!("parsing tcp_tw_reuse {:?}", reuse_raw.trim()))?;
    let tw_reuse = TwReuse::from_sysctl(reuse_value).context("reading tcp_tw_reuse")?;
    let tw_reuse_delay = match read("tcp_tw_reuse_delay") {
        Ok(text) => Some(Duration::from_millis(
            text.trim().parse().context("parsing tcp_tw_reuse_delay")?,
        )),
        Err(_) => None,
    };
    Ok(HostSettings {
        range,
        tw_reuse,
        tw_reuse_delay,
    })
}

/// Builds the profile from `--os`, `--from-host` and the overrides.
pub fn build_profile(a: &ProfileArgs) -> anyhow::Result<OsProfile> {
    let os: Os = a.os.parse().map_err(|e| usage(format!("--os: {e}")))?;
    let mut p = OsProfile::preset(os);
    if a.from_host {
        if os != Os::Linux {
            return Err(usage(
                "--from-host reads Linux settings: drop --os or use --os linux",
            ));
        }
        let host = read_host_settings()?;
        p.range = host.range;
        p.tw_reuse = host.tw_reuse;
        if let Some(delay) = host.tw_reuse_delay {
            p.tw_reuse_delay = delay;
        }
    }
    if let Some(r) = &a.range {
        p.range = r.parse().map_err(|e| usage(format!("--range: {e}")))?;
    }
    if let Some(n) = a.reserved_ports {
        p.reserved_ports = n;
    }
    if let Some(t) = &a.time_wait {
        p.time_wait = parse_duration(t, "s").map_err(|e| usage(format!("--time-wait: {e}")))?;
    }
    if let Some(v) = a.tw_reuse {
        p.tw_reuse = TwReuse::from_sysctl(v).map_err(|e| usage(format!("--tw-reuse: {e}")))?;
    }
    if let Some(ms) = a.tw_reuse_delay_ms {
        // Documented bounds of tcp_tw_reuse_delay: 1 ..= TCP_PAWS_MSL * 1000 (60,000) ms.
        if !(1..=60_000).contains(&ms) {
            return Err(usage("--tw-reuse-delay-ms must be between 1 and 60000"));
        }
        p.tw_reuse_delay = Duration::from_millis(ms);
    }
    if let Some(s) = &a.scope {
        p.scope = parse_scope(s)?;
    }
    Ok(p)
}

fn parse_scope(s: &str) -> anyhow::Result<PoolScope> {
    Ok(match s {
        "tuple" => PoolScope::Tuple,
        "destination" => PoolScope::Destination,
        "source" => PoolScope::Source,
        "global" => PoolScope::Global,
        other => {
            return Err(usage(format!(
                "--scope: unknown scope {other:?}: expected tuple, destination, source or global"
            )))
        }
    })
}

/// Builds the workload; `limit` is left empty (simulate sets it).
pub fn build_workload(a: &WorkloadArgs) -> anyhow::Result<Option<Workload>> {
    let policy: ConnectionPolicy = a
        .connection
        .parse()
        .map_err(|e| usage(format!("--connection: {e}")))?;
    let latency = match &a.latency {
        Some(text) => parse_latency(text).map_err(|e| usage(format!("--latency: {e}")))?,
        None => Latency::fixed(Duration::from_millis(1)),
    };
    let shape = match (a.concurrency, a.rate) {
        (Some(c), _) => LoadShape::Closed { concurrency: c },
        (None, Some(r)) => LoadShape::Open {
            rate_per_sec: r,
            poisson: false,
        },
        (None, None) => return Ok(None),
    };
    let w = Workload {
        shape,
        latency,
        policy,
        destinations: a.destinations,
        source_ips: a.source_ips,
        loopback: a.loopback,
        retry: RetryPolicy {
            retries: a.retries,
            backoff: Duration::from_millis(a.backoff_ms),
        },
        failed_connect: a.failed_connect_us.map(Duration::from_micros),
        limit: RunLimit {
            max_attempts: None,
            duration: None,
        },
    };
    w.validate().map_err(|e| usage(e.to_string()))?;
    Ok(Some(w))
}

fn build_query(a: &WorkloadArgs) -> anyhow::Result<CapacityQuery> {
    let churn = build_workload(a)?;
    if a.destinations == 0 || a.source_ips == 0 {
        return Err(usage("--destinations and --source-ips must be at least 1"));
    }
    Ok(CapacityQuery {
        source_ips: a.source_ips,
        destinations: a.destinations,
        loopback: a.loopback,
        policy: a
            .connection
            .parse()
            .map_err(|e| usage(format!("--connection: {e}")))?,
        churn,
    })
}

/// Parses a duration in the shared grammar ([`crate::duration`]: `120s`, `4m`, `250us`,
/// `1h30m`); a bare number is in `default_unit` (`"s"` or `"ms"`).
pub fn parse_duration(text: &str, default_unit: &str) -> Result<Duration, String> {
    let unit = if default_unit == "ms" {
        crate::duration::Unit::Millis
    } else {
        crate::duration::Unit::Secs
    };
    crate::duration::parse(text, unit)
}

/// Parses `--latency`: `MS`, a duration, `MIN..MAX` (uniform) or `exp:MEAN`.
fn parse_latency(text: &str) -> Result<Latency, String> {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if let Some(mean) = text.strip_prefix("exp:") {
        return Ok(Latency::Exponential {
            mean_us: us(parse_duration(mean, "ms")?),
        });
    }
    if let Some((lo, hi)) = text.split_once("..") {
        let (min_us, max_us) = (us(parse_duration(lo, "ms")?), us(parse_duration(hi, "ms")?));
        if min_us > max_us {
            return Err(format!("{text:?}: MIN must not exceed MAX"));
        }
        return Ok(Latency::Uniform { min_us, max_us });
    }
    Ok(Latency::Fixed {
        us: us(parse_duration(text, "ms")?),
    })
}

/// `1234567` → `1,234,567` (the shared formatter).
pub fn group(n: u64) -> String {
    crate::render::fmt_int(n)
}

/// A rate with sensible precision: `470.5`, `28,232`.
pub fn rate(r: f64) -> String {
    if r >= 1_000.0 {
        group(r.round() as u64)
    } else if r >= 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// One line describing the profile.
pub fn profile_line(p: &OsProfile) -> String {
    let reuse = if p.os == Os::Linux || p.tw_reuse != TwReuse::Off {
        format!(
            ", tcp_tw_reuse={} (delay {} ms)",
            p.tw_reuse.sysctl_value(),
            p.tw_reuse_delay.as_millis()
        )
    } else {
        String::new()
    };
    format!(
        "{}: range {} ({} ports{}), TIME_WAIT {} s, {} scope{}",
        p.os,
        p.range,
        group(u64::from(p.ports_per_pool())),
        if p.reserved_ports > 0 {
            format!(" after {} reserved", p.reserved_ports)
        } else {
            String::new()
        },
        p.time_wait.as_secs_f64(),
        p.scope,
        reuse
    )
}

/// One line describing the workload.
pub fn workload_line(w: &Workload) -> String {
    let shape = match w.shape {
        LoadShape::Closed { concurrency } => format!("closed loop, -c {concurrency}"),
        LoadShape::Open {
            rate_per_sec,
            poisson,
        } => format!(
            "open loop, {} req/s{}",
            rate(rate_per_sec),
            if poisson { " (Poisson)" } else { "" }
        ),
    };
    format!(
        "{shape}, latency {}, --connection {}, {} destination(s), {} source IP(s){}",
        w.latency,
        w.policy,
        w.destinations,
        w.source_ips,
        if w.loopback { ", loopback" } else { "" }
    )
}

fn render(p: &OsProfile, q: &CapacityQuery, c: &Capacity, paint: Painter) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}", paint.heading("portlab model"));
    let _ = writeln!(s, "  profile   {}", profile_line(p));
    if let Some(w) = &q.churn {
        let _ = writeln!(s, "  workload  {}", workload_line(w));
    }
    let _ = writeln!(s, "\n{}", paint.heading("Capacity"));
    let _ = writeln!(
        s,
        "  ports per pool        {}",
        group(u64::from(c.ports_per_pool))
    );
    let _ = writeln!(
        s,
        "  pools                 {} ({} scope; {} source IP(s) x {} destination(s))",
        c.pools, p.scope, q.source_ips, q.destinations
    );
    let _ = writeln!(
        s,
        "  port held per conn    {:.3} s open + {:.3} s after close = {:.3} s",
        c.hold.open_secs, c.hold.after_close_secs, c.hold.total_secs
    );
    match (c.sustainable_per_pool_per_sec, c.sustainable_total_per_sec) {
        (Some(per_pool), Some(total)) => {
            let _ = writeln!(
                s,
                "  sustainable           {} new conn/s per pool, {} in total",
                rate(per_pool),
                rate(total)
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "  sustainable           not limited by TIME_WAIT (see why they differ, below)"
            );
        }
    }
    let _ = writeln!(s, "\n{}", paint.heading("Seed's formula vs refined"));
    let _ = writeln!(
        s,
        "  folk     ports / TIME_WAIT = {} / {} s = {} conn/s for the host",
        group(u64::from(c.folk.ports)),
        c.folk.time_wait_secs,
        rate(c.folk.rate_per_sec)
    );
    let refined = c.sustainable_total_per_sec.map_or_else(
        || "not limited by TIME_WAIT".to_string(),
        |r| format!("{} conn/s", rate(r)),
    );
    let _ = writeln!(s, "  refined  {refined}");
    if c.differences.is_empty() {
        let _ = writeln!(
            s,
            "  {}",
            paint.dim("they agree: one pool, client closes, no reuse")
        );
    } else {
        let _ = writeln!(s, "  why they differ:");
        for d in &c.differences {
            let _ = writeln!(s, "    - {}", d.explanation);
        }
    }
    if let Some(ch) = &c.churn {
        let _ = writeln!(s, "\n{}", paint.heading("Churn"));
        let _ = writeln!(
            s,
            "  offered               {} req/s ({} in the busiest pool)",
            rate(ch.offered_per_sec),
            rate(ch.offered_per_pool_per_sec)
        );
        let _ = writeln!(
            s,
            "  ports needed          {} per pool (of {})",
            group(ch.ports_needed_per_pool.ceil() as u64),
            group(u64::from(c.ports_per_pool))
        );
        match ch.time_to_exhaustion_secs {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "  {}             first EADDRNOTAVAIL after {t:.3} s",
                    paint.bad("exhausted")
                );
                let _ = writeln!(
                    s,
                    "  steady state          {:.1} % of attempts fail; {} successful req/s",
                    ch.steady_state_failure_fraction * 100.0,
                    rate(ch.steady_state_successes_per_sec)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "  {}",
                    paint.good("the pool holds: no EADDRNOTAVAIL expected")
                );
            }
        }
    }
    let _ = writeln!(s, "\n{}", paint.heading("Sources"));
    for src in p.sources() {
        let _ = writeln!(s, "  - {}", paint.dim(src));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("120s", "s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("4m", "s"), Ok(Duration::from_secs(240)));
        assert_eq!(
            parse_duration("250us", "ms"),
            Ok(Duration::from_micros(250))
        );
        assert_eq!(parse_duration("2", "ms"), Ok(Duration::from_millis(2)));
        assert!(parse_duration("2 fortnights", "s").is_err());
        assert!(parse_duration("", "s").is_err());
    }

    #[test]
    fn latency_forms_parse() {
        assert_eq!(parse_latency("5"), Ok(Latency::Fixed { us: 5000 }));
        assert_eq!(
            parse_latency("2..8"),
            Ok(Latency::Uniform {
                min_us: 2000,
                max_us: 8000
            })
        );
        assert_eq!(
            parse_latency("exp:3"),
            Ok(Latency::Exponential { mean_us: 3000 })
        );
        assert!(parse_latency("8..2").is_err());
    }

    #[test]
    fn numbers_group_by_thousands() {
        assert_eq!(group(28_232), "28,232");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000_000), "1,000,000");
    }
}
