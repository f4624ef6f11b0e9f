//! `portlab simulate`: a deterministic discrete-event simulation of the client's port pools
//! for a workload (timeline, totals, first failure), with the closed-form prediction beside
//! it, as text, JSON or an SVG plot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use portlab_model::{
    capacity, fill_curve, simulate, Capacity, CapacityQuery, CliffKind, FillCurve, FillQuery,
    LoadShape, Os, OsProfile, ScanCost, SimReport, Workload,
};
use serde::Serialize;

use super::model::{
    build_profile, build_workload, group, parse_duration, profile_line, workload_line, ProfileArgs,
    WorkloadArgs,
};
use crate::exit::usage;
use crate::style::Painter;

/// Flags of `portlab simulate`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = SIMULATE_JSON_HELP)]
pub struct Args {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Stop after N attempts (first tries and retries each count once).
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,
    /// Stop starting attempts after this simulated time (e.g. 30s, 10m).
    #[arg(short = 'd', long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Open loop: Poisson arrivals instead of evenly spaced ones.
    #[arg(long)]
    pub poisson: bool,
    /// Seed of the random choices (latency samples, Poisson arrivals).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the whole per-second timeline (default: the first and last seconds).
    #[arg(long)]
    pub timeline: bool,
    /// Write the timeline as an SVG chart to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// NAT pool flags (with --scope nat).
    #[command(flatten)]
    pub nat: crate::cmd::model_nat::NatModelArgs,
    /// The slow-connect cliff: predict connect p50 and closed-loop requests/s (one worker,
    /// Connection: close) as one destination's pool fills, from the kernel's port search
    /// (Linux; the held ports are TIME_WAIT entries that cannot be reused).
    #[arg(long)]
    pub fill_curve: bool,
    /// With --fill-curve: fills to predict for, in percent of the range (comma-separated).
    #[arg(
        long,
        value_name = "PCT,..",
        value_delimiter = ',',
        default_value = "10,20,30,40,50,60,70,80,90",
        requires = "fill_curve"
    )]
    pub fills: Vec<f64>,
    /// With --fill-curve: how the pool was filled — kernel (a churn of unbound connects:
    /// sequential behind the kernel's cursor) or random (ports pinned at random, first
    /// parity first).
    #[arg(
        long,
        value_name = "ORDER",
        default_value = "kernel",
        requires = "fill_curve"
    )]
    pub fill_order: String,
    /// With --fill-curve: measured connects per fill point (the p50 is over these).
    #[arg(long, value_name = "N", default_value_t = 301, requires = "fill_curve")]
    pub probes: u32,
    #[command(flatten)]
    pub scan_cost: ScanCostArgs,
}

/// The cost constants of the port search (default: calibrated on Linux 6.18, loopback).
#[derive(Debug, Clone, clap::Args)]
pub struct ScanCostArgs {
    /// Connect latency when the port search takes the first port it tries, in microseconds
    /// (default 41, measured).
    #[arg(long, value_name = "US")]
    pub connect_base_us: Option<f64>,
    /// Extra connect latency per TIME_WAIT-held port the search skips, in microseconds, for a
    /// short walk that stays in the CPU caches (default 0.024, measured).
    #[arg(long, value_name = "US")]
    pub scan_per_port_us: Option<f64>,
    /// The same per-port cost for a walk far longer than --scan-scale-ports, in microseconds
    /// (default 0.426, measured); equal to --scan-per-port-us makes every port cost the same.
    #[arg(long, value_name = "US")]
    pub scan_per_port_max_us: Option<f64>,
    /// The walk length over which the mean per-port cost rises from the short-walk to the
    /// long-walk figure, in ports (default 8500, measured).
    #[arg(long, value_name = "PORTS")]
    pub scan_scale_ports: Option<f64>,
    /// The rest of one Connection: close request (send, server, response, close), in
    /// microseconds (default 118, measured).
    #[arg(long, value_name = "US")]
    pub request_us: Option<f64>,
    /// What a request costs more after a long port search evicted the CPU caches, in
    /// microseconds (default 135, measured; 0 leaves it out).
    #[arg(long, value_name = "US")]
    pub request_cold_us: Option<f64>,
}

impl ScanCostArgs {
    /// The calibrated cost with the overrides given; exit 2 for a bad figure.
    pub fn cost(&self) -> anyhow::Result<ScanCost> {
        let mut c = ScanCost::default();
        if let Some(v) = self.connect_base_us {
            c.connect_base_us = v;
        }
        if let Some(v) = self.scan_per_port_us {
            c.per_port_us = v;
        }
        if let Some(v) = self.scan_per_port_max_us {
            c.per_port_max_us = v;
        }
        if let Some(v) = self.scan_scale_ports {
            c.per_port_scale_ports = v;
        }
        if let Some(v) = self.request_us {
            c.request_us = v;
        }
        if let Some(v) = self.request_cold_us {
            c.request_cold_us = v;
        }
        c.validate().map_err(|e| usage(e.to_string()))?;
        Ok(c)
    }
}

const SIMULATE_JSON_HELP: &str = "\
JSON (--json): {\"profile\": {..as in portlab model..}, \"workload\": {shape{kind, concurrency |
rate_per_sec, poisson}, latency{kind, ..us}, policy, destinations, source_ips, loopback,
retry{retries, backoff_ms}, failed_connect_us, limit{max_attempts, duration_secs}},
\"prediction\": {..capacity as in portlab model..}, \"simulation\": {seed, pools, ports_per_pool,
totals{attempts, successes, addr_not_available, connects, requests_failed, time_wait_recycled,
time_wait_overflow, time_wait_evicted}, failure_fraction, first_failure_secs, peak_time_wait,
peak_pool_in_use, elapsed_secs, events, truncated, timeline[{second, attempts, successes,
addr_not_available, time_wait, ports_in_use}]}}

With --fill-curve: {\"profile\": {..}, \"fill_curve\": {ports, first_parity_ports, order
(kernel|random), cost{connect_base_us, per_port_us,
per_port_max_us, per_port_scale_ports, request_us, request_cold_us}, probes, seed,
points[{fill_pct, held_ports, skipped_p50, skipped_mean, connect_us (p50), connect_mean_us,
requests_per_sec, slowdown}], cliff{factor, kind (at-half|near-full|never), fill_pct,
held_ports, skipped_for_factor, min_ports_for_step, past_half_connect_us}}}";

#[derive(Serialize)]
struct SimulateJson<'a> {
    profile: &'a OsProfile,
    workload: &'a Workload,
    prediction: &'a Capacity,
    simulation: &'a SimReport,
}

/// Runs `portlab simulate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.fill_curve {
        return run_fill_curve(&args);
    }
    if args.profile.scope.as_deref() == Some("nat") {
        return crate::cmd::model_nat::run_simulate(
            &args.nat,
            &args.workload,
            args.duration.as_deref(),
            args.json,
        );
    }
    let profile = build_profile(&args.profile)?;
    let Some(mut workload) = build_workload(&args.workload)? else {
        return Err(usage(
            "give a workload: -c N (closed loop) or --rate N (open loop)",
        ));
    };
    match &mut workload.shape {
        LoadShape::Open { poisson, .. } => *poisson = args.poisson,
        LoadShape::Closed { .. } if args.poisson => {
            return Err(usage(
                "--poisson shapes open-loop arrivals: use it with --rate",
            ));
        }
        LoadShape::Closed { .. } => {}
    }
    workload.limit.max_attempts = args.requests;
    workload.limit.duration = args
        .duration
        .as_deref()
        .map(|d| parse_duration(d, "s"))
        .transpose()
        .map_err(|e| usage(format!("--duration: {e}")))?;
    if workload.limit.max_attempts.is_none() && workload.limit.duration.is_none() {
        return Err(usage("give a limit: -n N attempts or --duration 30s"));
    }
    let report = simulate(&profile, &workload, args.seed).map_err(|e| usage(e.to_string()))?;
    let prediction = capacity(&profile, &CapacityQuery::from_workload(&workload));
    if let Some(path) = &args.plot {
        plot(&report, &profile, &workload, path)
            .with_context(|| format!("writing plot {}", path.display()))?;
    }
    if args.json {
        let out = SimulateJson {
            profile: &profile,
            workload: &workload,
            prediction: &prediction,
            simulation: &report,
        };
        crate::exit::emit(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        crate::exit::emit(&render(
            &profile,
            &workload,
            &prediction,
            &report,
            args.timeline,
            Painter::for_stdout(),
        ))?;
        if let Some(path) = &args.plot {
            crate::exit::emit(&format!("plot written to {}\n", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct FillCurveJson<'a> {
    profile: &'a OsProfile,
    fill_curve: &'a FillCurve,
}

/// `portlab simulate --fill-curve`: the slow-connect cliff for the profile's range.
fn run_fill_curve(args: &Args) -> anyhow::Result<ExitCode> {
    let w = &args.workload;
    if w.rate.is_some() || w.concurrency.is_some_and(|c| c != 1) {
        return Err(usage(
            "--fill-curve models one worker (-c 1, Connection: close): drop -c/--rate",
        ));
    }
    if args.requests.is_some() || args.duration.is_some() || args.plot.is_some() {
        return Err(usage(
            "--fill-curve takes no -n/--duration/--plot: it predicts per fill point",
        ));
    }
    let profile = build_profile(&args.profile)?;
    if profile.os != Os::Linux {
        return Err(usage(
            "--fill-curve models Linux's port search (__inet_hash_connect): use --os linux",
        ));
    }
    if args.probes == 0 || args.probes > 100_000 {
        return Err(usage("--probes must be between 1 and 100000"));
    }
    let order = args
        .fill_order
        .parse()
        .map_err(|e: portlab_model::ModelError| usage(format!("--fill-order: {e}")))?;
    let query = FillQuery {
        range: profile.range,
        fills_pct: args.fills.clone(),
        order,
        cost: args.scan_cost.cost()?,
        probes: args.probes,
        seed: args.seed,
    };
    let curve = fill_curve(&query).map_err(|e| usage(format!("--fills: {e}")))?;
    if args.json {
        let out = FillCurveJson {
            profile: &profile,
            fill_curve: &curve,
        };
        crate::exit::emit(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        crate::exit::emit(&render_fill_curve(&profile, &curve, Painter::for_stdout()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render_fill_curve(p: &OsProfile, c: &FillCurve, paint: Painter) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}", paint.heading("portlab simulate --fill-curve"));
    let _ = writeln!(
        s,
        "  pool      one destination, ports {}-{} ({} ports, {} of the first parity)",
        p.range.low,
        p.range.high,
        group(u64::from(c.ports)),
        group(u64::from(c.first_parity_ports))
    );
    let _ = writeln!(
        s,
        "  fill      {}; held ports are TIME_WAIT entries that cannot be reused",
        match c.order {
            portlab_model::FillOrder::Kernel => "kernel order (a churn of unbound connects)",
            portlab_model::FillOrder::Random => "random order (pinned ports, first parity first)",
        }
    );
    let _ = writeln!(
        s,
        "  cost      connect {:.0} us + {:.3}–{:.3} us per skipped port (rising over {:.0} ports); request {:.0} us (+{:.0} us after a long walk); {} probes, seed {}",
        c.cost.connect_base_us, c.cost.per_port_us, c.cost.per_port_max_us, c.cost.per_port_scale_ports, c.cost.request_us, c.cost.request_cold_us, c.probes, c.seed
    );
    let _ = writeln!(
        s,
        "\n{}",
        paint.heading("Prediction (one worker, Connection: close)")
    );
    let _ = writeln!(
        s,
        "  {:>6} {:>8} {:>13} {:>14} {:>10} {:>10}",
        "fill", "held", "skipped p50", "connect p50", "slowdown", "req/s"
    );
    for pt in &c.points {
        let slow = format!("{:.1}x", pt.slowdown);
        let _ = writeln!(
            s,
            "  {:>5.1}% {:>8} {:>13} {:>11} us {:>10} {:>10}",
            pt.fill_pct,
            group(u64::from(pt.held_ports)),
            group(pt.skipped_p50.round() as u64),
            group(pt.connect_us.round() as u64),
            if pt.slowdown >= 10.0 {
                paint.bad(&slow)
            } else {
                slow
            },
            group(pt.requests_per_sec.round() as u64)
        );
    }
    let _ = writeln!(s, "\n  {}", cliff_sentence(&c.cliff));
    s
}

/// One sentence on where connect() slows by the cliff's factor (shared with `portlab model`).
pub fn cliff_sentence(c: &portlab_model::Cliff) -> String {
    match (c.kind, c.fill_pct) {
        (CliffKind::AtHalf, Some(f)) => format!(
            "connect() slows {:.0}x at {f:.1} % full: past half every connect walks all {} \
             first-parity ports ({} us); ranges of {} ports or more have this step",
            c.factor,
            group(u64::from(c.held_ports.unwrap_or(0))),
            group(c.past_half_connect_us.round() as u64),
            group(u64::from(c.min_ports_for_step))
        ),
        (CliffKind::NearFull, Some(f)) => format!(
            "connect() slows {:.0}x only near full, at about {f:.1} %: the step at half \
             ({:.0} us) is smaller; the step alone reaches {:.0}x from {} ports",
            c.factor,
            c.past_half_connect_us,
            c.factor,
            group(u64::from(c.min_ports_for_step))
        ),
        _ => format!(
            "connect() never slows {:.0}x: even a walk of the whole range costs less; the \
             step at half reaches {:.0}x from {} ports",
            c.factor,
            c.factor,
            group(u64::from(c.min_ports_for_step))
        ),
    }
}

fn render(
    p: &OsProfile,
    w: &Workload,
    c: &Capacity,
    r: &SimReport,
    full_timeline: bool,
    paint: Painter,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let t = &r.totals;
    let _ = writeln!(s, "{}", paint.heading("portlab simulate"));
    let _ = writeln!(s, "  profile   {}", profile_line(p));
    let _ = writeln!(s, "  workload  {}", workload_line(w));
    let _ = writeln!(
        s,
        "  run       {} pool(s) of {} ports, seed {}, {:.3} s simulated, {} events{}",
        r.pools,
        group(u64::from(r.ports_per_pool)),
        r.seed,
        r.elapsed_secs,
        group(r.events),
        if r.truncated {
            paint.warn(" (truncated at 7 days)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "\n{}", paint.heading("Totals"));
    let fails = format!(
        "{} ({:.2} %)",
        group(t.addr_not_available),
        r.failure_fraction * 100.0
    );
    let _ = writeln!(
        s,
        "  attempts {}   successes {}   EADDRNOTAVAIL {}",
        group(t.attempts),
        group(t.successes),
        if t.addr_not_available > 0 {
            paint.bad(&fails)
        } else {
            paint.good(&fails)
        }
    );
    let _ = writeln!(
        s,
        "  new connections {}   requests failed after retries {}   TIME_WAIT recycled {}",
        group(t.connects),
        group(t.requests_failed),
        group(t.time_wait_recycled)
    );
    if t.time_wait_overflow + t.time_wait_evicted > 0 {
        let _ = writeln!(
            s,
            "  TIME_WAIT overflow {}   evicted {}",
            group(t.time_wait_overflow),
            group(t.time_wait_evicted)
        );
    }
    let first = r
        .first_failure_secs
        .map_or_else(|| "none".to_string(), |f| format!("{f:.3} s"));
    let _ = writeln!(
        s,
        "  first failure {first}   peak TIME_WAIT {}   busiest pool {} / {} ports",
        group(r.peak_time_wait),
        group(u64::from(r.peak_pool_in_use)),
        group(u64::from(r.ports_per_pool))
    );
    if let Some(ch) = &c.churn {
        let predicted = ch
            .time_to_exhaustion_secs
            .map_or_else(|| "none".to_string(), |t| format!("{t:.3} s"));
        let _ = writeln!(
            s,
            "  closed form (long run): first failure {predicted}, steady-state failure fraction {:.2} %",
            ch.steady_state_failure_fraction * 100.0
        );
    }
    let _ = writeln!(s, "\n{}", paint.heading("Timeline"));
    let _ = writeln!(
        s,
        "  {:>6} {:>12} {:>12} {:>14} {:>10} {:>10}",
        "second", "attempts", "successes", "EADDRNOTAVAIL", "TIME_WAIT", "in use"
    );
    let rows = &r.timeline;
    let shown: Vec<usize> = if full_timeline || rows.len() <= 12 {
        (0..rows.len()).collect()
    } else {
        (0..6).chain(rows.len() - 6..rows.len()).collect()
    };
    let mut last = None;
    for i in shown {
        if last.is_some_and(|l: usize| i > l + 1) {
            let _ = writeln!(s, "  {:>6}", paint.dim("..."));
        }
        last = Some(i);
        let row = &rows[i];
        let _ = writeln!(
            s,
            "  {:>6} {:>12} {:>12} {:>14} {:>10} {:>10}",
            row.second,
            group(row.attempts),
            group(row.successes),
            group(row.addr_not_available),
            group(row.time_wait),
            group(row.ports_in_use)
        );
    }
    s
}

/// Draws the timeline with the shared chart: attempts, successes and EADDRNOTAVAIL per second
/// on top; TIME_WAIT and ports in use below, the pool size as the ceiling, the first failure
/// marked.
fn plot(r: &SimReport, p: &OsProfile, w: &Workload, path: &Path) -> anyhow::Result<()> {
    use crate::plot::{colors, write_svg, Series, Timeline};
    let series = |name: &str, color, get: fn(&portlab_model::SecondSample) -> u64| Series {
        name: name.to_string(),
        color,
        points: r
            .timeline
            .iter()
            .map(|s| (s.second as f64, get(s) as f64))
            .collect(),
    };
    let timeline = Timeline {
        title: format!("portlab simulate — {}, {}", p.os, workload_line(w)),
        rates: vec![
            series("attempts / s", colors::ESTABLISHED, |s| s.attempts),
            series("successes / s", colors::OK, |s| s.successes),
            series("EADDRNOTAVAIL / s", colors::FAILED, |s| {
                s.addr_not_available
            }),
        ],
        gauges: vec![
            series("TIME_WAIT", colors::TIME_WAIT, |s| s.time_wait),
            series("ports in use", colors::ESTABLISHED, |s| s.ports_in_use),
        ],
        ceiling: Some((
            format!("pool size {}", group(u64::from(p.ports_per_pool()))),
            f64::from(p.ports_per_pool()),
        )),
        marker: r
            .first_failure_secs
            .map(|t| ("first failure".to_string(), t)),
    };
    write_svg(&timeline, path)
}
