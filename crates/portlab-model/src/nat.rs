//! A model of a source-NAT port pool: P ports per pool key (a NAT IP and a destination — IP,
//! port, protocol — for Linux, AWS and Azure NAT Gateway; a VM for GCP Cloud NAT and Azure LB
//! outbound rules), each flow holding its port for its lifetime D plus the NAT's hold after
//! close T. Capacity: occupancy O = λ·(D + T) < η·P (Little's law), so the sustainable rate of
//! new flows per pool is λ_max = η·P / (D + T); concurrent flows beyond η·P are dropped (the
//! client sees ETIMEDOUT after its SYN retransmits).
//!
//! η = 1 for ranges of at most 128 ports (the kernel searches all of them); for larger ranges
//! the kernel probes at most 128+64+32+16+8 = 248 random ports, so a new flow may be dropped
//! while a few ports are still free: P(drop) ≈ u^248 at utilisation u, η ≈ 0.98
//! (net/netfilter/nf_nat_core.c `nf_nat_l4proto_unique_tuple()`, Linux 6.12;
//! research/nat-conntrack.md §1.4, §5.3).

use serde::Serialize;

/// What one pool of NAT ports is shared by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatPoolKey {
    /// One pool per (NAT IP, destination IP, destination port, protocol).
    PerNatIpAndDestination,
    /// One pool per VM (GCP Cloud NAT's `minPortsPerVm`, Azure LB outbound allocation), per
    /// destination inside it.
    PerVmAndDestination,
}

/// A NAT implementation's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatProfile {
    /// Name used on the command line (`--nat-profile`).
    pub key: &'static str,
    /// Display name.
    pub title: &'static str,
    /// Ports per pool.
    pub pool_ports: u64,
    /// What a pool is shared by.
    pub pool_key: NatPoolKey,
    /// How long a closed TCP flow keeps its port (TIME_WAIT or the NAT's reuse timer), s.
    /// `None`: not documented (the model then uses 0 and says so).
    pub tcp_hold_after_close_secs: Option<f64>,
    /// Whether a new flow may take over a closing entry's port (Linux ≥ 6.5).
    pub tcp_closing_evictable: bool,
    /// How long a UDP flow keeps its port after its last packet, s.
    pub udp_hold_secs: Option<f64>,
    /// NAT IPs one gateway may have (more IPs help only many clients on Linux; on cloud NATs
    /// they add pools).
    pub max_nat_ips: u32,
    /// Where to see exhaustion.
    pub exhaustion_signal: &'static str,
    /// Sources of the numbers.
    pub source: &'static str,
}

impl NatProfile {
    /// Every preset, in the order `portlab model --nat` lists them.
    pub fn presets() -> Vec<NatProfile> {
        vec![
            NatProfile {
                key: "linux-6.4",
                title: "Linux SNAT/MASQUERADE, kernel ≤ 6.4 (Debian 12, Ubuntu 22.04, EKS AL2)",
                pool_ports: 64_512,
                pool_key: NatPoolKey::PerNatIpAndDestination,
                tcp_hold_after_close_secs: Some(120.0),
                tcp_closing_evictable: false,
                udp_hold_secs: Some(30.0),
                max_nat_ips: 1,
                exhaustion_signal: "conntrack -S: insert_failed and drop rising; portlab doctor",
                source: "nf_nat_core.c nf_nat_l4proto_unique_tuple() (default 1024-65535); nf_conntrack_proto_tcp.c tcp_timeouts[TIME_WAIT] = 120 s; nf_conntrack_proto_udp.c 30 s",
            },
            NatProfile {
                key: "linux-6.5",
                title: "Linux SNAT/MASQUERADE, kernel ≥ 6.5 (closing TCP entries evictable)",
                pool_ports: 64_512,
                pool_key: NatPoolKey::PerNatIpAndDestination,
                tcp_hold_after_close_secs: Some(0.0),
                tcp_closing_evictable: true,
                udp_hold_secs: Some(30.0),
                max_nat_ips: 1,
                exhaustion_signal: "conntrack -S: insert_failed and drop rising; portlab doctor",
                source: "commit 4589725502871e \"netfilter: snat: evict closing tcp entries on reply tuple collision\" (v6.5); UDP has no eviction (measured on 6.18)",
            },
            NatProfile {
                key: "aws",
                title: "AWS NAT Gateway",
                pool_ports: 55_000,
                pool_key: NatPoolKey::PerNatIpAndDestination,
                tcp_hold_after_close_secs: None,
                tcp_closing_evictable: false,
                udp_hold_secs: None,
                max_nat_ips: 8,
                exhaustion_signal: "CloudWatch ErrorPortAllocation > 0 (and PacketsDropCount)",
                source: "docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-basics.html: up to 55,000 simultaneous connections per IP to each unique destination; up to 8 IPs",
            },
            NatProfile {
                key: "azure-natgw",
                title: "Azure NAT Gateway",
                pool_ports: 50_000,
                pool_key: NatPoolKey::PerNatIpAndDestination,
                tcp_hold_after_close_secs: Some(65.0),
                tcp_closing_evictable: false,
                udp_hold_secs: Some(65.0),
                max_nat_ips: 16,
                exhaustion_signal: "SNAT Connection Count, state \"failed\" > 0",
                source: "learn.microsoft.com/azure/nat-gateway/nat-gateway-resource: 50,000 concurrent connections per public IP to the same destination; port reuse after 65 s (TCP FIN, UDP); up to 16 IPs",
            },
            NatProfile {
                key: "azure-lb",
                title: "Azure Load Balancer outbound SNAT (default port allocation by backend pool size; 1,024 ports for 1-50 VMs)",
                pool_ports: 1_024,
                pool_key: NatPoolKey::PerVmAndDestination,
                tcp_hold_after_close_secs: None,
                tcp_closing_evictable: false,
                udp_hold_secs: None,
                max_nat_ips: 1,
                exhaustion_signal: "SnatConnectionCount with ConnectionState = failed; Used/Allocated SNAT Ports",
                source: "learn.microsoft.com/azure/load-balancer/load-balancer-outbound-connections: ports per VM by pool size 1-50: 1,024; 51-100: 512; 101-200: 256; 201-400: 128; 401-800: 64; 801-1,000: 32",
            },
            NatProfile {
                key: "gcp",
                title: "GCP Cloud NAT (static allocation, minPortsPerVm default)",
                pool_ports: 64,
                pool_key: NatPoolKey::PerVmAndDestination,
                tcp_hold_after_close_secs: Some(120.0),
                tcp_closing_evictable: false,
                udp_hold_secs: Some(30.0),
                max_nat_ips: 1,
                exhaustion_signal: "Sent packets dropped count, reason OUT_OF_RESOURCES; logs allocation_status=DROPPED",
                source: "cloud.google.com/nat/docs/ports-and-addresses: minPortsPerVm 64; Compute API RouterNat tcpTimeWaitTimeoutSec 120, udpIdleTimeoutSec 30",
            },
        ]
    }

    /// The preset named `key`.
    pub fn preset(key: &str) -> Option<NatProfile> {
        Self::presets().into_iter().find(|p| p.key == key)
    }

    /// The profile's hold after close for `protocol`, s (0 when evictable or undocumented).
    pub fn hold_secs(&self, protocol: NatProtocol) -> f64 {
        match protocol {
            NatProtocol::Tcp if self.tcp_closing_evictable => 0.0,
            NatProtocol::Tcp => self.tcp_hold_after_close_secs.unwrap_or(0.0),
            NatProtocol::Udp => self.udp_hold_secs.unwrap_or(0.0),
        }
    }
}

/// Protocol of the flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatProtocol {
    /// TCP.
    Tcp,
    /// UDP request/reply.
    Udp,
}

/// Flows through the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NatWorkload {
    /// Protocol.
    pub protocol: NatProtocol,
    /// New flows per second, over all destinations.
    pub new_flows_per_sec: f64,
    /// How long each flow lives (handshake to close), s.
    pub flow_secs: f64,
    /// Distinct destinations the flows spread over evenly (each has its own pool).
    pub destinations: u64,
    /// NAT IPs whose pools the flows use (1 for a single client IP on Linux).
    pub nat_ips: u64,
}

/// What the model predicts for one pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatCapacity {
    /// Ports per pool.
    pub pool_ports: u64,
    /// Usable fraction η of the pool (1 up to 128 ports, 0.98 above).
    pub usable_fraction: f64,
    /// Seconds a flow holds its port: lifetime + hold after close.
    pub port_hold_secs: f64,
    /// Whether the hold after close is documented for this profile.
    pub hold_documented: bool,
    /// Pools the workload spreads over (destinations × NAT IPs).
    pub pools: u64,
    /// Steady-state ports in use per pool, λ_pool·(D + T).
    pub occupancy_per_pool: f64,
    /// Occupancy ÷ usable ports.
    pub utilisation: f64,
    /// Sustainable new flows per second per pool, η·P/(D + T) (∞ when D + T = 0).
    pub sustainable_per_pool_per_sec: f64,
    /// The same for the whole workload (× pools).
    pub sustainable_total_per_sec: f64,
    /// Predicted fraction of new flows dropped at steady state.
    pub loss_fraction: f64,
}

/// Ports per VM (per frontend IP) of Azure Load Balancer's default outbound allocation for a
/// backend pool of `vms` VMs: 1–50: 1,024; 51–100: 512; 101–200: 256; 201–400: 128;
/// 401–800: 64; 801–1,000: 32 (learn.microsoft.com azure/load-balancer/
/// load-balancer-outbound-connections, "default port allocation"). `None` outside 1–1,000.
pub fn azure_lb_ports_per_vm(vms: u32) -> Option<u64> {
    Some(match vms {
        1..=50 => 1024,
        51..=100 => 512,
        101..=200 => 256,
        201..=400 => 128,
        401..=800 => 64,
        801..=1000 => 32,
        _ => return None,
    })
}

/// The usable fraction η of a pool of `ports` (see the module doc).
pub fn usable_fraction(ports: u64) -> f64 {
    if ports <= 128 {
        1.0
    } else {
        0.98
    }
}

/// Steady-state capacity of `profile` (with `pool_ports` overriding its pool size when given)
/// under `workload`.
pub fn nat_capacity(
    profile: &NatProfile,
    pool_ports: Option<u64>,
    workload: &NatWorkload,
) -> NatCapacity {
    let ports = pool_ports.unwrap_or(profile.pool_ports).max(1);
    let eta = usable_fraction(ports);
    let hold = profile.hold_secs(workload.protocol);
    let documented = match workload.protocol {
        NatProtocol::Tcp => {
            profile.tcp_closing_evictable || profile.tcp_hold_after_close_secs.is_some()
        }
        NatProtocol::Udp => profile.udp_hold_secs.is_some(),
    };
    let port_hold_secs = workload.flow_secs.max(0.0) + hold;
    let pools = workload.destinations.max(1) * workload.nat_ips.max(1);
    let rate_per_pool = workload.new_flows_per_sec.max(0.0) / pools as f64;
    let occupancy = rate_per_pool * port_hold_secs;
    let usable = eta * ports as f64;
    let sustainable = if port_hold_secs > 0.0 {
        usable / port_hold_secs
    } else {
        f64::INFINITY
    };
    NatCapacity {
        pool_ports: ports,
        usable_fraction: eta,
        port_hold_secs,
        hold_documented: documented,
        pools,
        occupancy_per_pool: occupancy,
        utilisation: occupancy / usable,
        sustainable_per_pool_per_sec: sustainable,
        sustainable_total_per_sec: sustainable * pools as f64,
        loss_fraction: if occupancy > usable {
            (occupancy - usable) / occupancy
        } else {
            0.0
        },
    }
}

/// Flows dropped when `concurrent` flows to one destination are held open at once through a
/// pool of `pool_ports` ports: every flow beyond the pool (the kernel maps one client IP to one
/// NAT IP, so extra NAT IPs do not add ports for it). Exact for pools of ≤ 128 ports.
pub fn held_flow_failures(concurrent: u64, pool_ports: u64) -> u64 {
    concurrent.saturating_sub(pool_ports)
}

/// Flows dropped when `flows` short flows to one destination run one after another within the
/// profile's hold: TCP on an evicting kernel loses none; otherwise every flow beyond the pool
/// fails until the hold expires.
pub fn sequential_flow_failures(
    profile: &NatProfile,
    protocol: NatProtocol,
    flows: u64,
    pool_ports: u64,
) -> u64 {
    if protocol == NatProtocol::Tcp && profile.tcp_closing_evictable {
        0
    } else {
        flows.saturating_sub(pool_ports)
    }
}

/// One second of a NAT simulation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NatSecond {
    /// Second since the start.
    pub second: u64,
    /// New flows that arrived.
    pub attempts: u64,
    /// Of them, dropped at the NAT (no free port in their pool).
    pub dropped: u64,
    /// Ports in use in the fullest pool at the end of the second.
    pub ports_in_use: u64,
}

/// Result of [`simulate_nat`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatSimReport {
    /// Pools simulated (destinations × NAT IPs).
    pub pools: u64,
    /// Ports per pool and the usable share (η·P, rounded down).
    pub pool_ports: u64,
    /// Usable ports per pool.
    pub usable_ports: u64,
    /// Flows attempted.
    pub attempts: u64,
    /// Flows dropped.
    pub dropped: u64,
    /// `dropped ÷ attempts`.
    pub loss_fraction: f64,
    /// When the first flow was dropped, s.
    pub first_drop_secs: Option<f64>,
    /// Most ports in use in one pool.
    pub peak_ports_in_use: u64,
    /// Per-second timeline.
    pub timeline: Vec<NatSecond>,
}

/// Longest simulated run, s (the timeline has one entry per second).
pub const MAX_NAT_SIM_SECS: f64 = 86_400.0;

/// Deterministic simulation of `workload` through `profile`'s pools for `duration_secs`:
/// flows arrive evenly spaced, round-robin over the pools; a flow takes a port for its
/// lifetime plus the hold after close, or is dropped when its pool has no usable port left
/// (the kernel's SYN is dropped; the client sees a timeout). Flows beyond 10 million are not
/// simulated (the rate × duration is capped).
pub fn simulate_nat(
    profile: &NatProfile,
    pool_ports: Option<u64>,
    workload: &NatWorkload,
    duration_secs: f64,
) -> NatSimReport {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let cap = nat_capacity(profile, pool_ports, workload);
    let usable = (cap.usable_fraction * cap.pool_ports as f64)
        .floor()
        .max(1.0) as u64;
    let pools = cap.pools.max(1) as usize;
    let duration = duration_secs.clamp(0.0, MAX_NAT_SIM_SECS);
    let rate = workload.new_flows_per_sec.max(0.0);
    let total = ((rate * duration).floor() as u64).min(10_000_000);
    let hold_us = (cap.port_hold_secs * 1e6) as u64;
    let mut releases: Vec<BinaryHeap<Reverse<u64>>> = vec![BinaryHeap::new(); pools];
    let seconds = duration.ceil() as usize;
    let mut timeline: Vec<NatSecond> = (0..seconds.max(1))
        .map(|s| NatSecond {
            second: s as u64,
            attempts: 0,
            dropped: 0,
            ports_in_use: 0,
        })
        .collect();
    let mut report = NatSimReport {
        pools: pools as u64,
        pool_ports: cap.pool_ports,
        usable_ports: usable,
        attempts: 0,
        dropped: 0,
        loss_fraction: 0.0,
        first_drop_secs: None,
        peak_ports_in_use: 0,
        timeline: Vec::new(),
    };
    for i in 0..total {
        let t_us = (i as f64 / rate * 1e6) as u64;
        let pool = &mut releases[(i % pools as u64) as usize];
        while pool.peek().is_some_and(|Reverse(r)| *r <= t_us) {
            pool.pop();
        }
        let second = ((t_us / 1_000_000) as usize).min(timeline.len() - 1);
        let slot = &mut timeline[second];
        slot.attempts += 1;
        report.attempts += 1;
        if (pool.len() as u64) < usable {
            pool.push(Reverse(t_us + hold_us));
        } else {
            slot.dropped += 1;
            report.dropped += 1;
            report.first_drop_secs.get_or_insert(t_us as f64 / 1e6);
        }
        let in_use = pool.len() as u64;
        slot.ports_in_use = slot.ports_in_use.max(in_use);
        report.peak_ports_in_use = report.peak_ports_in_use.max(in_use);
    }
    report.loss_fraction = if report.attempts == 0 {
        0.0
    } else {
        report.dropped as f64 / report.attempts as f64
    };
    report.timeline = timeline;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(key: &str) -> NatProfile {
        NatProfile::preset(key).unwrap()
    }

    #[test]
    fn linux_default_sustains_537_new_flows_per_second_per_destination() {
        let w = NatWorkload {
            protocol: NatProtocol::Tcp,
            new_flows_per_sec: 100.0,
            flow_secs: 0.0,
            destinations: 1,
            nat_ips: 1,
        };
        let c = nat_capacity(&linux("linux-6.4"), None, &w);
        assert!((c.sustainable_per_pool_per_sec - 0.98 * 64_512.0 / 120.0).abs() < 0.01);
        assert_eq!(c.loss_fraction, 0.0);
        let small = nat_capacity(&linux("linux-6.4"), Some(100), &w);
        assert!((small.sustainable_per_pool_per_sec - 100.0 / 120.0).abs() < 1e-9);
        assert!(small.loss_fraction > 0.99);
    }

    #[test]
    fn gcp_default_sustains_about_half_a_flow_per_second() {
        let w = NatWorkload {
            protocol: NatProtocol::Tcp,
            new_flows_per_sec: 1.0,
            flow_secs: 0.0,
            destinations: 1,
            nat_ips: 1,
        };
        let c = nat_capacity(&linux("gcp"), None, &w);
        assert!((c.sustainable_per_pool_per_sec - 64.0 / 120.0).abs() < 1e-9);
    }

    #[test]
    fn evicting_kernels_bound_tcp_by_concurrency_only() {
        let p = linux("linux-6.5");
        assert_eq!(sequential_flow_failures(&p, NatProtocol::Tcp, 300, 100), 0);
        assert_eq!(sequential_flow_failures(&p, NatProtocol::Udp, 150, 100), 50);
        assert_eq!(
            sequential_flow_failures(&linux("linux-6.4"), NatProtocol::Tcp, 300, 100),
            200
        );
        assert_eq!(held_flow_failures(150, 100), 50);
        assert_eq!(held_flow_failures(90, 100), 0);
    }

    #[test]
    fn azure_lb_allocation_follows_the_backend_pool_size() {
        assert_eq!(azure_lb_ports_per_vm(1), Some(1024));
        assert_eq!(azure_lb_ports_per_vm(51), Some(512));
        assert_eq!(azure_lb_ports_per_vm(400), Some(128));
        assert_eq!(azure_lb_ports_per_vm(1000), Some(32));
        assert_eq!(azure_lb_ports_per_vm(0), None);
        assert_eq!(azure_lb_ports_per_vm(1001), None);
    }

    #[test]
    fn every_preset_names_its_source_and_signal() {
        for p in NatProfile::presets() {
            assert!(
                !p.source.is_empty() && !p.exhaustion_signal.is_empty(),
                "{}",
                p.key
            );
            assert!(p.pool_ports > 0);
        }
        assert!(NatProfile::preset("nope").is_none());
    }

    #[test]
    fn simulation_agrees_with_the_closed_form_at_steady_state() {
        // Pool 100, TIME_WAIT 120 s: 0.83 flows/s sustainable; 2/s loses ~58 % at steady state.
        let w = NatWorkload {
            protocol: NatProtocol::Tcp,
            new_flows_per_sec: 2.0,
            flow_secs: 0.0,
            destinations: 1,
            nat_ips: 1,
        };
        let p = linux("linux-6.4");
        let sim = simulate_nat(&p, Some(100), &w, 1200.0);
        let cap = nat_capacity(&p, Some(100), &w);
        assert_eq!(sim.first_drop_secs, Some(50.0));
        assert!(
            (sim.loss_fraction - cap.loss_fraction).abs() < 0.06,
            "{} vs {}",
            sim.loss_fraction,
            cap.loss_fraction
        );
        // The same churn on an evicting kernel loses nothing.
        let ok = simulate_nat(&linux("linux-6.5"), Some(100), &w, 600.0);
        assert_eq!(ok.dropped, 0);
    }

    proptest::proptest! {
        #[test]
        fn loss_is_a_fraction_and_grows_with_rate(rate in 0.0f64..1e6, d in 0.0f64..1e3, ports in 1u64..70_000) {
            let w = |r| NatWorkload { protocol: NatProtocol::Tcp, new_flows_per_sec: r, flow_secs: d, destinations: 1, nat_ips: 1 };
            let p = linux("linux-6.4");
            let a = nat_capacity(&p, Some(ports), &w(rate));
            let b = nat_capacity(&p, Some(ports), &w(rate * 2.0));
            proptest::prop_assert!((0.0..=1.0).contains(&a.loss_fraction));
            proptest::prop_assert!(b.loss_fraction >= a.loss_fraction - 1e-12);
        }
    }
}
