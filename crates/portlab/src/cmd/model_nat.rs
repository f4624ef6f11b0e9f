//! `portlab model --nat` and `portlab simulate --scope nat`: the source-NAT pool model of
//! portlab_model::nat for a NAT profile (Linux ≤ 6.4 / ≥ 6.5, AWS NAT Gateway, Azure NAT
//! Gateway, Azure LB outbound SNAT, GCP Cloud NAT): sustainable new flows per destination,
//! predicted loss, and a per-second simulation.

use std::fmt::Write as _;
use std::process::ExitCode;

use portlab_model::{
    held_flow_failures, nat_capacity, simulate_nat, NatCapacity, NatProfile, NatProtocol,
    NatSimReport, NatWorkload,
};
use serde::Serialize;

use crate::cmd::model::{parse_duration, WorkloadArgs};
use crate::exit::usage;
use crate::render::{fmt_int as group, fmt_rate};
use crate::style::Painter;

/// NAT flags of `portlab model` and `portlab simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatModelArgs {
    /// Model a source-NAT pool instead of the client's ephemeral ports (without --rate or -c:
    /// every NAT profile side by side).
    #[arg(long)]
    pub nat: bool,
    /// NAT profile: linux-6.4, linux-6.5, aws, azure-natgw, azure-lb, gcp.
    #[arg(long, value_name = "PROFILE", default_value = "linux-6.4")]
    pub nat_profile: String,
    /// Ports per pool, overriding the profile (a rule's `to :LOW-HIGH`, GCP minPortsPerVm,
    /// the Azure LB allocation).
    #[arg(long, value_name = "N")]
    pub nat_pool: Option<u64>,
    /// NAT IPs whose pools the flows use (on Linux one client IP always maps to one).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nat_ips: u64,
    /// How long each flow lives, open to close (e.g. 200ms, 30s; default 0).
    #[arg(long, value_name = "DURATION")]
    pub flow_time: Option<String>,
    /// UDP flows (the UDP hold applies; no TIME_WAIT eviction on any kernel).
    #[arg(long)]
    pub udp: bool,
    /// azure-lb: VMs in the backend pool, which sets the default ports per VM (1–50: 1,024 …
    /// 801–1,000: 32).
    #[arg(long, value_name = "N")]
    pub backend_vms: Option<u32>,
}

impl NatModelArgs {
    fn profile(&self) -> anyhow::Result<NatProfile> {
        let mut profile = self.preset()?;
        if let Some(vms) = self.backend_vms {
            if profile.key != "azure-lb" {
                return Err(usage("--backend-vms applies to --nat-profile azure-lb"));
            }
            profile.pool_ports = portlab_model::azure_lb_ports_per_vm(vms).ok_or_else(|| {
                usage(format!(
                    "--backend-vms {vms}: Azure's default allocation covers 1 to 1000 VMs"
                ))
            })?;
        }
        Ok(profile)
    }

    fn preset(&self) -> anyhow::Result<NatProfile> {
        NatProfile::preset(&self.nat_profile).ok_or_else(|| {
            usage(format!(
                "--nat-profile {}: use one of {}",
                self.nat_profile,
                NatProfile::presets()
                    .iter()
                    .map(|p| p.key)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn workload(&self, w: &WorkloadArgs, rate: f64) -> anyhow::Result<NatWorkload> {
        let flow_secs = match &self.flow_time {
            Some(t) => parse_duration(t, "s")
                .map_err(|e| usage(format!("--flow-time: {e}")))?
                .as_secs_f64(),
            None => 0.0,
        };
        if self.nat_ips == 0 || w.destinations == 0 || self.nat_pool == Some(0) {
            return Err(usage(
                "--nat-ips, --destinations and --nat-pool must be at least 1",
            ));
        }
        Ok(NatWorkload {
            protocol: if self.udp {
                NatProtocol::Udp
            } else {
                NatProtocol::Tcp
            },
            new_flows_per_sec: rate,
            flow_secs,
            destinations: u64::from(w.destinations),
            nat_ips: self.nat_ips,
        })
    }
}

#[derive(Serialize)]
struct ModelNatJson<'a> {
    profile: &'a NatProfile,
    workload: Option<&'a NatWorkload>,
    capacity: Option<&'a NatCapacity>,
    /// With -c: held concurrent flows per pool and the predicted drops.
    held: Option<Held>,
    /// Without a workload: every profile at its default pool, flows of 0 s.
    profiles: Vec<ProfileRow>,
}

#[derive(Serialize)]
struct Held {
    concurrent: u64,
    per_pool: u64,
    predicted_dropped: u64,
}

#[derive(Serialize)]
struct ProfileRow {
    key: &'static str,
    pool_ports: u64,
    hold_after_close_secs: Option<f64>,
    sustainable_per_pool_per_sec: f64,
}

/// Runs `portlab model --nat`.
pub fn run_model(nat: &NatModelArgs, w: &WorkloadArgs, json: bool) -> anyhow::Result<ExitCode> {
    let profile = nat.profile()?;
    let rate = w.rate;
    if rate.is_some_and(|r| !(r.is_finite() && r >= 0.0)) {
        return Err(usage("--rate must be a number of flows per second ≥ 0"));
    }
    let workload = rate.map(|r| nat.workload(w, r)).transpose()?;
    let capacity = workload
        .as_ref()
        .map(|wl| nat_capacity(&profile, nat.nat_pool, wl));
    let held = match w.concurrency {
        Some(c) => {
            let wl = nat.workload(w, 0.0)?;
            let pools = wl.destinations * wl.nat_ips;
            let pool = nat.nat_pool.unwrap_or(profile.pool_ports);
            let per_pool = u64::from(c).div_ceil(pools);
            Some(Held {
                concurrent: u64::from(c),
                per_pool,
                predicted_dropped: (0..pools)
                    .map(|i| {
                        let share = u64::from(c) / pools + u64::from(i < u64::from(c) % pools);
                        held_flow_failures(share, pool)
                    })
                    .sum(),
            })
        }
        None => None,
    };
    let profiles = NatProfile::presets()
        .iter()
        .map(|p| {
            let wl = NatWorkload {
                protocol: NatProtocol::Tcp,
                new_flows_per_sec: 0.0,
                flow_secs: 0.0,
                destinations: 1,
                nat_ips: 1,
            };
            ProfileRow {
                key: p.key,
                pool_ports: p.pool_ports,
                hold_after_close_secs: if p.tcp_closing_evictable {
                    Some(0.0)
                } else {
                    p.tcp_hold_after_close_secs
                },
                sustainable_per_pool_per_sec: nat_capacity(p, None, &wl)
                    .sustainable_per_pool_per_sec,
            }
        })
        .collect();
    let out = ModelNatJson {
        profile: &profile,
        workload: workload.as_ref(),
        capacity: capacity.as_ref(),
        held,
        profiles,
    };
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(&out)?)
    } else {
        render_model(&out, Painter::for_stdout())
    };
    crate::exit::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn hold_text(p: &NatProfile, udp: bool) -> String {
    if udp {
        return p
            .udp_hold_secs
            .map_or("not documented (0 s used)".to_string(), |s| {
                format!("{s:.0} s")
            });
    }
    if p.tcp_closing_evictable {
        return "0 s (closing entries evicted by a new SYN)".to_string();
    }
    p.tcp_hold_after_close_secs
        .map_or("not documented (0 s used)".to_string(), |s| {
            format!("{s:.0} s")
        })
}

fn render_model(m: &ModelNatJson<'_>, paint: Painter) -> String {
    let mut o = String::new();
    let p = m.profile;
    let _ = writeln!(
        o,
        "{}",
        paint.heading(&format!("portlab model --nat: {}", p.title))
    );
    let _ = writeln!(
        o,
        "  pool: {} ports per {}; TCP hold after close: {}; UDP hold: {}",
        group(m.capacity.map_or(p.pool_ports, |c| c.pool_ports)),
        match p.pool_key {
            portlab_model::nat::NatPoolKey::PerNatIpAndDestination =>
                "(NAT IP, destination IP, port, protocol)",
            portlab_model::nat::NatPoolKey::PerVmAndDestination => "VM (per destination inside it)",
        },
        hold_text(p, false),
        hold_text(p, true)
    );
    let _ = writeln!(o, "  exhaustion shows as: {}", p.exhaustion_signal);
    let _ = writeln!(o, "  {}", paint.dim(&format!("source: {}", p.source)));
    if let (Some(w), Some(c)) = (m.workload, m.capacity) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  each flow holds its port {:.1} s ({:.1} s open + {})",
            c.port_hold_secs,
            w.flow_secs,
            hold_text(p, w.protocol == NatProtocol::Udp)
        );
        let _ = writeln!(
            o,
            "  sustainable: {} new flows/s per pool × {} pool(s) = {}/s (η = {:.2}: {})",
            fmt_rate(c.sustainable_per_pool_per_sec),
            c.pools,
            fmt_rate(c.sustainable_total_per_sec),
            c.usable_fraction,
            if c.usable_fraction < 1.0 {
                "the kernel probes at most 248 random ports"
            } else {
                "a pool of ≤ 128 ports is searched whole"
            }
        );
        let verdict = format!(
            "  offered {} flows/s → {} ports in use per pool ({:.0} %) → {:.1} % of new flows dropped",
            fmt_rate(w.new_flows_per_sec),
            group(c.occupancy_per_pool.round() as u64),
            c.utilisation * 100.0,
            c.loss_fraction * 100.0
        );
        let _ = writeln!(
            o,
            "{}",
            if c.loss_fraction > 0.0 {
                paint.bad(&verdict)
            } else {
                paint.good(&verdict)
            }
        );
        if c.loss_fraction > 0.0 {
            let _ = writeln!(
                o,
                "  dropped SYNs are retransmitted: clients see slow connects (1 s steps), then ETIMEDOUT — never EADDRNOTAVAIL"
            );
        }
    }
    if let Some(h) = &m.held {
        let _ = writeln!(
            o,
            "\n  {} concurrent flows ({} per pool) held open: {} dropped",
            group(h.concurrent),
            group(h.per_pool),
            group(h.predicted_dropped)
        );
    }
    if m.workload.is_none() && m.held.is_none() {
        let _ = writeln!(
            o,
            "\n  {}",
            paint.heading(&format!(
                "{:<12} {:>8} {:>22} {:>22}",
                "profile", "pool", "TCP hold after close", "sustainable flows/s"
            ))
        );
        for r in &m.profiles {
            let _ = writeln!(
                o,
                "  {:<12} {:>8} {:>22} {:>22}",
                r.key,
                group(r.pool_ports),
                r.hold_after_close_secs
                    .map_or("not documented".to_string(), |s| format!("{s:.0} s")),
                if r.hold_after_close_secs.is_none() {
                    "unknown (hold undocumented)".to_string()
                } else if r.sustainable_per_pool_per_sec.is_infinite() {
                    "bounded by concurrency".to_string()
                } else {
                    fmt_rate(r.sustainable_per_pool_per_sec)
                }
            );
        }
        let _ = writeln!(
            o,
            "  {}",
            paint.dim("per pool and destination, for flows of 0 s; --rate N [--flow-time D] for a workload")
        );
    }
    o
}

/// Runs `portlab simulate --scope nat`.
pub fn run_simulate(
    nat: &NatModelArgs,
    w: &WorkloadArgs,
    duration: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let profile = nat.profile()?;
    let Some(rate) = w.rate else {
        return Err(usage(
            "simulate --scope nat needs --rate N (new flows per second)",
        ));
    };
    if !(rate.is_finite() && rate >= 0.0) {
        return Err(usage("--rate must be a number of flows per second ≥ 0"));
    }
    let secs = match duration {
        Some(d) => parse_duration(d, "s")
            .map_err(|e| usage(format!("--duration: {e}")))?
            .as_secs_f64(),
        None => return Err(usage("give a limit: --duration 10m")),
    };
    let workload = nat.workload(w, rate)?;
    let sim = simulate_nat(&profile, nat.nat_pool, &workload, secs);
    let cap = nat_capacity(&profile, nat.nat_pool, &workload);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            profile: &'a NatProfile,
            workload: &'a NatWorkload,
            prediction: &'a NatCapacity,
            simulation: &'a NatSimReport,
        }
        let text = serde_json::to_string_pretty(&Out {
            profile: &profile,
            workload: &workload,
            prediction: &cap,
            simulation: &sim,
        })?;
        crate::exit::emit(&format!("{text}\n"))?;
    } else {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "portlab simulate --scope nat: {} at {} flows/s for {:.0} s",
            profile.title,
            fmt_rate(rate),
            secs
        );
        let _ = writeln!(
            o,
            "  {} flows, {} dropped ({:.1} %; closed form at steady state {:.1} %); first drop {}; peak {} of {} ports in a pool",
            group(sim.attempts),
            group(sim.dropped),
            sim.loss_fraction * 100.0,
            cap.loss_fraction * 100.0,
            sim.first_drop_secs
                .map_or("never".to_string(), |s| format!("at {s:.1} s")),
            group(sim.peak_ports_in_use),
            group(sim.pool_ports)
        );
        let step = (sim.timeline.len() / 10).max(1);
        for s in sim.timeline.iter().step_by(step) {
            let _ = writeln!(
                o,
                "  second {:>6}: {:>8} flows, {:>8} dropped, {:>8} ports in use",
                s.second,
                group(s.attempts),
                group(s.dropped),
                group(s.ports_in_use)
            );
        }
        crate::exit::emit(&o)?;
    }
    Ok(ExitCode::SUCCESS)
}
