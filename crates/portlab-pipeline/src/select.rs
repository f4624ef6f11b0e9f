//! Which pools an exporter scrape exports with their own labels, so the number of series stays
//! bounded however many destinations a host talks to:
//!
//! 1. every pool whose destination matches the allow-list ([`Matcher`]) is always exported;
//! 2. of the rest, the `top_k` most utilised at or above `floor_ratio` are exported, and a pool
//!    that was in that top K stays exported for `hold_down` after it drops out (so series do not
//!    flap at the edge), at most `top_k` such held pools;
//! 3. everything else is folded into one aggregate ([`Folded`]): ports in use summed per state,
//!    utilisation the maximum, and the number of pools folded.
//!
//! A pool that is no longer in the socket table is not exported at all: values are fresh per
//! scrape (prometheus/docs writing_exporters.md: "create new metrics each time").

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use portlab_sockets::PoolUsage;

/// One allow-list entry: which destinations are always exported.
///
/// Forms (`--destination`): `10.0.0.5:443` and `[2001:db8::5]:443` (one destination),
/// `10.0.0.5` (any port of one host), `10.0.0.0/8` and `2001:db8::/32` (any port in a network),
/// `10.0.0.0/8:443` and `[2001:db8::/32]:443` (one port in a network), `*:443` (one port on any
/// host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matcher {
    /// The destination network (`None`: any address).
    pub net: Option<IpNet>,
    /// The destination port (`None`: any port).
    pub port: Option<u16>,
}

/// An allow-list entry that does not parse; the message says which forms are accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad destination matcher {0:?}: use ADDR:PORT, ADDR, CIDR, CIDR:PORT or *:PORT \
     (e.g. 10.0.0.5:443, 10.0.0.0/8, [2001:db8::/32]:443, *:443)"
)]
pub struct MatcherError(pub String);

impl Matcher {
    /// Whether `destination` is covered.
    pub fn matches(&self, destination: SocketAddr) -> bool {
        let ip = canonical(destination.ip());
        self.port.is_none_or(|p| p == destination.port())
            && self.net.is_none_or(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4 (the snapshot shows them so too).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(canonical(ip))
}

impl FromStr for Matcher {
    type Err = MatcherError;

    fn from_str(text: &str) -> Result<Matcher, MatcherError> {
        let bad = || MatcherError(text.to_string());
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        let trimmed = text.trim();
        if let Some(p) = trimmed.strip_prefix("*:") {
            return Ok(Matcher {
                net: None,
                port: Some(port(p)?),
            });
        }
        if let Ok(addr) = trimmed.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad());
            }
            return Ok(Matcher {
                net: Some(host_net(addr.ip())),
                port: Some(addr.port()),
            });
        }
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return Ok(Matcher {
                net: Some(host_net(ip)),
                port: None,
            });
        }
        if let Ok(net) = trimmed.parse::<IpNet>() {
            return Ok(Matcher {
                net: Some(net.trunc()),
                port: None,
            });
        }
        // CIDR:PORT, bracketed for IPv6.
        let (net, p) = match trimmed.strip_prefix('[') {
            Some(rest) => rest.split_once("]:").ok_or_else(bad)?,
            None => trimmed.rsplit_once(':').ok_or_else(bad)?,
        };
        let net = net.parse::<IpNet>().map_err(|_| bad())?;
        Ok(Matcher {
            net: Some(net.trunc()),
            port: Some(port(p)?),
        })
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net, self.port) {
            (None, None) => f.write_str("*"),
            (None, Some(p)) => write!(f, "*:{p}"),
            (Some(net), None) => write!(f, "{net}"),
            (Some(IpNet::V6(net)), Some(p)) => write!(f, "[{net}]:{p}"),
            (Some(net), Some(p)) => write!(f, "{net}:{p}"),
        }
    }
}

/// How pools are chosen; see the module doc.
#[derive(Debug, Clone)]
pub struct SelectConfig {
    /// Destinations always exported.
    pub allow: Vec<Matcher>,
    /// How many other pools are exported by utilisation.
    pub top_k: usize,
    /// Utilisation (0–1) a pool needs to enter the top K.
    pub floor_ratio: f64,
    /// How long a pool stays exported after it leaves the top K.
    pub hold_down: Duration,
}

impl Default for SelectConfig {
    /// No allow-list, top 20 at ≥ 1 % utilisation, held 5 minutes.
    fn default() -> Self {
        SelectConfig {
            allow: Vec::new(),
            top_k: 20,
            floor_ratio: 0.01,
            hold_down: Duration::from_secs(300),
        }
    }
}

/// The pools that were not exported on their own, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Folded {
    /// How many (local IP, destination) pools were folded.
    pub pools: u64,
    /// Sum of their ESTABLISHED sockets.
    pub established: u64,
    /// Sum of their TIME_WAIT sockets.
    pub time_wait: u64,
    /// Sum of their SYN_SENT sockets.
    pub syn_sent: u64,
    /// Sum of their sockets in other states (FIN_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING).
    pub other: u64,
    /// The highest utilisation among them (0–1).
    pub max_utilisation: f64,
}

/// What one scrape exports.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// Pools exported with their own labels (allow-listed first, then by utilisation).
    pub kept: Vec<&'a PoolUsage>,
    /// Everything else.
    pub folded: Folded,
}

type PoolKey = (IpAddr, SocketAddr);

/// Chooses pools per scrape and remembers when each was last in the top K.
#[derive(Debug, Clone)]
pub struct PoolSelector {
    config: SelectConfig,
    last_in_top: HashMap<PoolKey, Instant>,
}

impl PoolSelector {
    /// A selector with no history.
    pub fn new(config: SelectConfig) -> Self {
        PoolSelector {
            config,
            last_in_top: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SelectConfig {
        &self.config
    }

    /// Chooses from `pools` (any order) at `now`.
    pub fn select<'a>(&mut self, pools: &'a [PoolUsage], now: Instant) -> Selection<'a> {
        let hold = self.config.hold_down;
        self.last_in_top
            .retain(|_, at| now.saturating_duration_since(*at) <= hold);
        let (mut kept, mut rest): (Vec<&PoolUsage>, Vec<&PoolUsage>) = pools
            .iter()
            .partition(|p| self.config.allow.iter().any(|m| m.matches(p.destination)));
        rest.sort_by(|a, b| {
            b.utilisation
                .total_cmp(&a.utilisation)
                .then(a.destination.cmp(&b.destination))
                .then(a.local_ip.cmp(&b.local_ip))
        });
        let mut top = 0;
        let mut held = 0;
        let mut folded = Folded::default();
        for pool in rest {
            let key = (pool.local_ip, pool.destination);
            if top < self.config.top_k && pool.utilisation >= self.config.floor_ratio {
                top += 1;
                self.last_in_top.insert(key, now);
                kept.push(pool);
            } else if held < self.config.top_k && self.last_in_top.contains_key(&key) {
                held += 1;
                kept.push(pool);
            } else {
                folded.pools += 1;
                folded.established += pool.established;
                folded.time_wait += pool.time_wait;
                folded.syn_sent += pool.syn_sent;
                folded.other += pool.other;
                folded.max_utilisation = folded.max_utilisation.max(pool.utilisation);
            }
        }
        Selection { kept, folded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portlab_sockets::{Headroom, Risk};

    fn pool(dst: &str, used: u64) -> PoolUsage {
        PoolUsage {
            local_ip: "10.0.0.1".parse().expect("ip"),
            destination: dst.parse().expect("dst"),
            loopback: false,
            established: used,
            time_wait: 0,
            syn_sent: 0,
            other: 0,
            used,
            blocked: used,
            utilisation: used as f64 / 1000.0,
            headroom: Headroom {
                port_block_ms: 60_000,
                sustainable_rate_per_sec: 1000.0 / 60.0,
                churn_estimate_per_sec: 0.0,
                free_ports: 1000 - used,
                risk: Risk::Ok,
            },
        }
    }

    fn m(text: &str) -> Matcher {
        text.parse().expect(text)
    }

    #[test]
    fn matchers_parse_every_documented_form() {
        let d = |s: &str| s.parse::<SocketAddr>().expect(s);
        assert!(m("10.0.0.5:443").matches(d("10.0.0.5:443")));
        assert!(!m("10.0.0.5:443").matches(d("10.0.0.5:80")));
        assert!(m("10.0.0.5").matches(d("10.0.0.5:80")));
        assert!(m("10.0.0.0/8").matches(d("10.9.9.9:1")));
        assert!(!m("10.0.0.0/8").matches(d("11.0.0.1:1")));
        assert!(m("10.0.0.0/8:443").matches(d("10.1.2.3:443")));
        assert!(!m("10.0.0.0/8:443").matches(d("10.1.2.3:444")));
        assert!(m("*:443").matches(d("192.0.2.1:443")));
        assert!(m("[2001:db8::/32]:443").matches(d("[2001:db8::9]:443")));
        assert!(m("2001:db8::/32").matches(d("[2001:db8::9]:1")));
        assert!(m("[::1]:8080").matches(d("[::1]:8080")));
        // IPv4-mapped destinations match IPv4 matchers.
        assert!(m("10.0.0.0/8").matches(d("[::ffff:10.0.0.1]:80")));
        assert_eq!(m("10.1.2.3/8:443").to_string(), "10.0.0.0/8:443");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.5:0",
            "*:x",
            "host:80",
            "10.0.0.5:70000",
            "[::1",
        ] {
            let err = bad.parse::<Matcher>().expect_err(bad);
            assert!(err.to_string().contains("CIDR"), "{err}");
        }
    }

    #[test]
    fn allow_list_always_top_k_above_floor_rest_folded() {
        let pools = vec![
            pool("10.0.0.9:80", 1), // below the floor but allow-listed
            pool("10.0.0.2:80", 900),
            pool("10.0.0.3:80", 800),
            pool("10.0.0.4:80", 700),
            pool("10.0.0.5:80", 5), // below the 1 % floor
        ];
        let mut s = PoolSelector::new(SelectConfig {
            allow: vec![m("10.0.0.9:80")],
            top_k: 2,
            ..SelectConfig::default()
        });
        let sel = s.select(&pools, Instant::now());
        let kept: Vec<String> = sel.kept.iter().map(|p| p.destination.to_string()).collect();
        assert_eq!(kept, ["10.0.0.9:80", "10.0.0.2:80", "10.0.0.3:80"]);
        assert_eq!(sel.folded.pools, 2);
        assert_eq!(sel.folded.established, 705);
        assert!((sel.folded.max_utilisation - 0.7).abs() < 1e-9);
    }

    #[test]
    fn a_pool_leaving_the_top_k_is_held_then_folded() {
        let t0 = Instant::now();
        let mut s = PoolSelector::new(SelectConfig {
            top_k: 1,
            hold_down: Duration::from_secs(300),
            ..SelectConfig::default()
        });
        let first = vec![pool("10.0.0.2:80", 900), pool("10.0.0.3:80", 100)];
        assert_eq!(s.select(&first, t0).kept.len(), 1);
        // .3 overtakes .2: .2 is held, nothing folded.
        let second = vec![pool("10.0.0.2:80", 100), pool("10.0.0.3:80", 900)];
        let sel = s.select(&second, t0 + Duration::from_secs(60));
        assert_eq!(sel.kept.len(), 2);
        assert_eq!(sel.folded.pools, 0);
        // Past the hold-down .2 is folded.
        let sel = s.select(&second, t0 + Duration::from_secs(361));
        assert_eq!(sel.kept.len(), 1);
        assert_eq!(sel.kept[0].destination.to_string(), "10.0.0.3:80");
        assert_eq!(sel.folded.pools, 1);
        // A pool that went away is not exported at all.
        let sel = s.select(&[], t0 + Duration::from_secs(362));
        assert!(sel.kept.is_empty());
        assert_eq!(sel.folded, Folded::default());
    }
}
