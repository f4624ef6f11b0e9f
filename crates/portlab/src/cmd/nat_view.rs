//! The NAT part of `portlab ports` and `portlab doctor`: conntrack of the namespace the command
//! runs in (run it on the NAT host — a Docker/Kubernetes node, a NAT instance — or inside a
//! namespace with `ip netns exec NAME portlab doctor`), read through ctnetlink: count and
//! limit, counters and their rates, NAT pools per (protocol, NAT IP, destination) sized from
//! the nftables rules.

use std::fmt::Write as _;
use std::time::Instant;

use portlab_diagnose::NatEvidence;
use portlab_sockets::conntrack::{evicts_closing_tcp, kernel_release};
use portlab_sockets::{
    nat_pools, read_nat_rules, Conntrack, ConntrackError, ConntrackStats, NatPool, NatRule,
    StatCounters,
};
use serde::Serialize;

use crate::render::fmt_int as group;
use crate::style::Painter;

/// One reading of conntrack, or why there is none. Part of `ports --json` and `doctor --json`
/// as `nat` (docs/ports-json.md).
#[derive(Debug, Clone, Serialize)]
pub struct NatSection {
    /// Whether conntrack could be read in this namespace.
    pub available: bool,
    /// Why not, or what is missing (no nft: pools sized by the kernel default).
    pub note: Option<String>,
    /// `uname -r`.
    pub kernel: String,
    /// Closing TCP entries evictable on a SNAT clash (Linux ≥ 6.5).
    pub closing_evictable: bool,
    /// Counters, count and max.
    pub stats: ConntrackStats,
    /// Source-NAT entries in the table.
    pub nat_entries: u64,
    /// NAT pools, fullest first.
    pub pools: Vec<NatPool>,
    /// The snat/masquerade rules.
    pub rules: Vec<NatRule>,
    /// Counter increase per second since the previous reading (doctor, ports --watch).
    pub rates_per_sec: Option<NatRates>,
    #[serde(skip)]
    at: Option<Instant>,
}

/// Counter increase per second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NatRates {
    /// Interval, s.
    pub interval_secs: f64,
    /// insert_failed/s.
    pub insert_failed: f64,
    /// drop/s.
    pub drop: f64,
    /// early_drop/s.
    pub early_drop: f64,
    /// found/s.
    pub found: f64,
    /// clash_resolve/s.
    pub clash_resolve: f64,
}

impl NatSection {
    /// Reads conntrack in the caller's namespace; never fails (an unreadable conntrack is a
    /// section with `available: false` and the reason).
    pub fn read() -> NatSection {
        let kernel = kernel_release();
        let closing_evictable = evicts_closing_tcp(&kernel);
        let mut section = NatSection {
            available: false,
            note: None,
            kernel,
            closing_evictable,
            stats: ConntrackStats::default(),
            nat_entries: 0,
            pools: Vec::new(),
            rules: Vec::new(),
            rates_per_sec: None,
            at: Some(Instant::now()),
        };
        let read = Conntrack::open().and_then(|mut ct| Ok((ct.stats()?, ct.entries()?)));
        let (stats, entries) = match read {
            Ok(r) => r,
            Err(e) => {
                section.note = Some(match e {
                    ConntrackError::Unavailable(_) => {
                        "no conntrack in this namespace (no NAT or stateful rule loaded it)"
                            .to_string()
                    }
                    other => other.to_string(),
                });
                return section;
            }
        };
        match read_nat_rules() {
            Ok(rules) => section.rules = rules,
            Err(e) => section.note = Some(e.to_string()),
        }
        let ranges: Vec<_> = section.rules.iter().filter_map(|r| r.ports).collect();
        section.nat_entries = entries.iter().filter(|e| e.is_src_nat()).count() as u64;
        section.pools = nat_pools(&entries, &ranges, closing_evictable);
        section.stats = stats;
        section.available = true;
        section
    }

    /// Adds the rates since `earlier`.
    pub fn with_rates_since(mut self, earlier: &NatSection) -> NatSection {
        if let (Some(a), Some(b)) = (earlier.at, self.at) {
            let secs = (b - a).as_secs_f64().max(1e-6);
            let d = self.stats.total.delta(&earlier.stats.total);
            self.rates_per_sec = Some(NatRates {
                interval_secs: secs,
                insert_failed: d.insert_failed as f64 / secs,
                drop: d.drop as f64 / secs,
                early_drop: d.early_drop as f64 / secs,
                found: d.found as f64 / secs,
                clash_resolve: d.clash_resolve as f64 / secs,
            });
        }
        self
    }

    /// The diagnosis input between `earlier` and this reading (pools of the fuller one).
    pub fn evidence_since(&self, earlier: &NatSection) -> NatEvidence {
        let interval_ms = match (earlier.at, self.at) {
            (Some(a), Some(b)) => (b - a).as_millis() as u64,
            _ => 0,
        };
        let fuller = |s: &NatSection| s.pools.first().map_or(0, |p| p.blocking);
        let pools = if fuller(earlier) > fuller(self) {
            earlier.pools.clone()
        } else {
            self.pools.clone()
        };
        let mut e = NatEvidence::from_stats(&earlier.stats, &self.stats, interval_ms, pools);
        e.rules = self.rules.clone();
        e.closing_evictable = self.closing_evictable;
        e
    }

    fn delta(&self) -> Option<StatCounters> {
        self.rates_per_sec.map(|r| StatCounters {
            insert_failed: (r.insert_failed * r.interval_secs).round() as u64,
            drop: (r.drop * r.interval_secs).round() as u64,
            early_drop: (r.early_drop * r.interval_secs).round() as u64,
            found: (r.found * r.interval_secs).round() as u64,
            clash_resolve: (r.clash_resolve * r.interval_secs).round() as u64,
            ..StatCounters::default()
        })
    }
}

/// Appends the "NAT (conntrack)" section; nothing when conntrack is not in use here.
pub fn push_text(s: &mut String, n: &NatSection, top: usize, p: Painter) {
    if !n.available {
        return;
    }
    if n.stats.count == 0 && n.rules.is_empty() && n.stats.total == StatCounters::default() {
        let _ = writeln!(
            s,
            "\n{} no entries, no NAT rules, no drops in this network namespace",
            p.heading("NAT (conntrack):")
        );
        return;
    }
    let _ = writeln!(
        s,
        "\n{}",
        p.heading("NAT (conntrack, this network namespace)")
    );
    let t = &n.stats.total;
    let _ = writeln!(
        s,
        "  table {} of {} entries ({:.1} %), {} source-NAT; kernel {} ({})",
        group(n.stats.count),
        group(n.stats.max),
        n.stats.fill_ratio() * 100.0,
        group(n.nat_entries),
        n.kernel,
        if n.closing_evictable {
            "closing TCP entries evictable"
        } else {
            "TIME_WAIT entries hold their NAT port 120 s"
        }
    );
    let _ = writeln!(
        s,
        "  since boot: insert_failed {}, drop {}, early_drop {}, found {}, clash_resolve {} ({} CPUs)",
        group(t.insert_failed),
        group(t.drop),
        group(t.early_drop),
        group(t.found),
        group(t.clash_resolve),
        n.stats.per_cpu.len()
    );
    if let (Some(r), Some(d)) = (n.rates_per_sec, n.delta()) {
        let _ = writeln!(
            s,
            "  last {:.1} s: insert_failed +{} ({:.1}/s), drop +{} ({:.1}/s), early_drop +{}, found +{}",
            r.interval_secs,
            group(d.insert_failed),
            r.insert_failed,
            group(d.drop),
            r.drop,
            group(d.early_drop),
            group(d.found)
        );
    }
    for rule in &n.rules {
        let _ = writeln!(
            s,
            "  rule ({} {}): {}{}{}",
            rule.table,
            rule.chain,
            rule.kind,
            rule.addr
                .as_ref()
                .map_or(String::new(), |a| format!(" to {a}")),
            match rule.ports {
                Some(r) => format!(
                    " ports {}-{} ({} per destination)",
                    r.low,
                    r.high,
                    group(r.len())
                ),
                None => " ports 1024-65535 (kernel default, port preservation)".to_string(),
            } + &if rule.flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", rule.flags.join(", "))
            }
        );
    }
    if let Some(note) = &n.note {
        let _ = writeln!(s, "  {}", p.dim(note));
    }
    if n.pools.is_empty() {
        let _ = writeln!(s, "  no source-NAT flows now");
        return;
    }
    let _ = writeln!(
        s,
        "  {}",
        p.heading(&format!(
            "{:<5} {:<16} {:<24} {:>7} {:>8} {:>7} {:>7} {:>9} {:>8}",
            "proto",
            "NAT IP",
            "destination",
            "live",
            "closing",
            "pool",
            "used",
            "headroom",
            "clients"
        ))
    );
    for pool in n.pools.iter().take(top) {
        let line = format!(
            "{:<5} {:<16} {:<24} {:>7} {:>8} {:>7} {:>6.1}% {:>9} {:>8}",
            pool.protocol.name(),
            pool.nat_ip.to_string(),
            pool.destination.to_string(),
            group(pool.live),
            group(pool.closing),
            group(pool.pool_ports),
            pool.utilisation * 100.0,
            group(pool.headroom),
            group(pool.client_ips)
        );
        let painted = if pool.utilisation >= 0.95 {
            p.bad(&line)
        } else if pool.utilisation >= 0.5 {
            p.warn(&line)
        } else {
            line
        };
        let _ = writeln!(s, "  {painted}");
    }
    if n.pools.len() > top {
        let _ = writeln!(
            s,
            "  … {} more pools (--top)",
            group((n.pools.len() - top) as u64)
        );
    }
}
