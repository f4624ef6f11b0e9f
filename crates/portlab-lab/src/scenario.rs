//! What the lab runs: [`LabConfig`] (one struct built from the command line) and the
//! [`Scenario`] steps that [`plan`] derives from it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Serialize;

use crate::sandbox_config::SandboxConfig;

/// The way from the load tester to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Load tester → server.
    Direct,
    /// Load tester → TCP forwarder (`portlab proxy --mode tcp`, like `netsh interface
    /// portproxy`: one upstream connection per client connection) → server.
    Forwarder,
    /// Load tester → HTTP reverse proxy with a pool of kept-alive upstream connections
    /// (`portlab proxy --mode http --pool N`) → server.
    PoolingProxy,
}

impl Path {
    /// Short human name: `direct`, `forwarder`, `pooling proxy`.
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Forwarder => "forwarder",
            Path::PoolingProxy => "pooling proxy",
        }
    }
}

/// Who closes the load tester's connections (`portlab load --connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Reuse connections.
    KeepAlive,
    /// `Connection: close`: the server side closes first and holds the TIME_WAIT.
    Close,
    /// The client closes after each response and holds the TIME_WAIT (the failing policy).
    Drop,
}

impl Policy {
    /// The `--connection` value of `portlab load` and `portlab simulate`.
    pub fn cli_name(self) -> &'static str {
        match self {
            Policy::KeepAlive => "keep-alive",
            Policy::Close => "close",
            Policy::Drop => "drop",
        }
    }
}

/// Which remedy a step demonstrates (`None` for the incident steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fix {
    /// The load tester keeps connections alive.
    KeepAlive,
    /// A pooling reverse proxy replaces the forwarder.
    PoolingProxy,
    /// The load tester spreads its connections over more source IPs (more port pools).
    SourceIps,
    /// HTTP/2 multiplexing: one kept-alive connection carries 100 streams at once
    /// ([`HTTP2_STREAMS`]), so the whole load takes one ephemeral port per leg.
    Http2,
}

/// Streams in flight on the HTTP/2 fix step's one connection.
pub const HTTP2_STREAMS: usize = 100;

impl Fix {
    /// Human name of the fix.
    pub fn label(self) -> &'static str {
        match self {
            Fix::KeepAlive => "keep-alive",
            Fix::PoolingProxy => "pooling proxy",
            Fix::SourceIps => "source IPs",
            Fix::Http2 => "HTTP/2",
        }
    }
}

/// A server the user provides instead of `portlab serve`: started in every step's sandbox with
/// `sh -c COMMAND`, then reached at `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The URL the load tester asks (`http://ADDR:PORT/PATH`, inside the sandbox).
    pub url: String,
    /// The shell command that starts the server in the foreground.
    pub command: String,
}

/// Everything the lab needs, built once from the command line.
#[derive(Debug, Clone, Serialize)]
pub struct LabConfig {
    /// The `portlab` executable to run inside the sandboxes.
    pub exe: PathBuf,
    /// Sysctls and sampling of every sandbox.
    pub sandbox: SandboxConfig,
    /// Concurrency of each incident step (default 5, 10, 50, 100 as in the seed).
    pub ladder: Vec<usize>,
    /// Requests per step (default 5,000 as in the seed).
    pub requests: u64,
    /// Skip the forwarder: the load tester talks to the server directly.
    pub direct: bool,
    /// Upstream connections of the pooling proxy.
    pub upstream_pool: usize,
    /// Source IPs of the source-IP fix; `None`: enough pools for every request plus one.
    pub source_ips: Option<usize>,
    /// Source IPs of the load tester in the other steps: 1 is one client host (its own leg
    /// runs out with the forwarder's); more stand for many clients, so that only the
    /// forwarder's upstream leg runs out and the clients see resets, as in the seed.
    pub client_ips: usize,
    /// Run the fix steps after the incident steps.
    pub fixes: bool,
    /// The user's server instead of `portlab serve`.
    pub target: Option<Target>,
    /// `--threads` of `portlab load` (default: its own).
    pub load_threads: Option<usize>,
}

impl LabConfig {
    /// The seed's defaults: ladder 5, 10, 50, 100; 5,000 requests per step; forwarder; 1,000
    /// ports; `tcp_tw_reuse` 0; fixes on; a pool of 8 upstream connections.
    pub fn new(exe: PathBuf) -> Self {
        LabConfig {
            exe,
            sandbox: SandboxConfig::default(),
            ladder: vec![5, 10, 50, 100],
            requests: 5000,
            direct: false,
            upstream_pool: 8,
            source_ips: None,
            client_ips: 1,
            fixes: true,
            target: None,
            load_threads: None,
        }
    }

    /// Ports in the sandbox's `ip_local_port_range`.
    pub fn range_ports(&self) -> u64 {
        let (low, high) = self.sandbox.port_range;
        u64::from(high.saturating_sub(low)) + 1
    }
}

/// One step of the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Short name: `incident c=50`, `fix: keep-alive`.
    pub name: String,
    /// The remedy this step shows, if any.
    pub fix: Option<Fix>,
    /// Direct, forwarder or pooling proxy.
    pub path: Path,
    /// Who closes the load tester's connections.
    pub policy: Policy,
    /// Concurrent connections of the load tester.
    pub concurrency: usize,
    /// Requests to send.
    pub requests: u64,
    /// Source IPs of the load tester (empty: the kernel's choice, 127.0.0.1).
    pub source_ips: Vec<IpAddr>,
    /// Upstream pool size of the pooling proxy.
    pub upstream_pool: usize,
    /// What this step adds to the defaults (the hypotheses' server and load flags, sysctls).
    pub extras: StepExtras,
}

/// Flags and settings one step adds to the lab's defaults. Empty for the incident ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StepExtras {
    /// Further `portlab serve` flags (`--backlog 33`, `--accept-delay 5ms`, `--close-after 10`).
    pub server_args: Vec<String>,
    /// Further `portlab load` flags (`-q 20`, `--retry 3`, `--circuit-breaker …`).
    pub load_args: Vec<String>,
    /// Further `portlab proxy` flags.
    pub proxy_args: Vec<String>,
    /// This step's own sandbox settings instead of [`LabConfig::sandbox`].
    pub sandbox: Option<SandboxConfig>,
}

/// The steps for `config`: one incident step per ladder concurrency (policy `drop` through the
/// forwarder, or direct with `config.direct`), then — at the highest concurrency — keep-alive,
/// the pooling proxy in place of the forwarder, and more source IPs (direct: the forwarder's
/// upstream leg has one source IP). With one client IP the pooling-proxy step's client asks
/// `Connection: close` (the proxy then holds the client leg's TIME_WAIT on its listening port,
/// which takes no ephemeral port; with `drop` the client's own pool would run out whatever the
/// proxy does); with several client IPs it keeps `drop`.
pub fn plan(config: &LabConfig) -> Vec<Scenario> {
    let incident_path = if config.direct {
        Path::Direct
    } else {
        Path::Forwarder
    };
    let clients = if config.client_ips > 1 {
        source_ips(config.client_ips)
    } else {
        Vec::new()
    };
    let step = |name: String, fix, path, policy, concurrency, source_ips| Scenario {
        name,
        fix,
        path,
        policy,
        concurrency,
        requests: config.requests,
        source_ips,
        upstream_pool: config.upstream_pool,
        extras: StepExtras::default(),
    };
    let mut steps: Vec<Scenario> = config
        .ladder
        .iter()
        .map(|&c| {
            step(
                format!("incident c={c}"),
                None,
                incident_path,
                Policy::Drop,
                c,
                clients.clone(),
            )
        })
        .collect();
    if !config.fixes {
        return steps;
    }
    let top = config.ladder.iter().copied().max().unwrap_or(100);
    steps.push(step(
        "fix: keep-alive".to_string(),
        Some(Fix::KeepAlive),
        incident_path,
        Policy::KeepAlive,
        top,
        clients.clone(),
    ));
    if !config.direct {
        steps.push(step(
            "fix: pooling proxy".to_string(),
            Some(Fix::PoolingProxy),
            Path::PoolingProxy,
            if clients.is_empty() {
                Policy::Close
            } else {
                Policy::Drop
            },
            top,
            clients.clone(),
        ));
    }
    let ips = config
        .source_ips
        .unwrap_or_else(|| default_source_ips(config.requests, config.range_ports()));
    steps.push(step(
        format!("fix: {ips} source IPs"),
        Some(Fix::SourceIps),
        Path::Direct,
        Policy::Drop,
        top,
        source_ips(ips),
    ));
    // portlab serve speaks h2c; a server of the user's (--target-cmd) may not.
    if config.target.is_none() {
        steps.push(step(
            format!("fix: HTTP/2, 1 connection, {HTTP2_STREAMS} streams"),
            Some(Fix::Http2),
            incident_path,
            Policy::KeepAlive,
            1,
            clients.clone(),
        ));
    }
    steps
}

/// Splits `http://IP:PORT[/PATH]` into the address and the path (`/` when absent). `None` for
/// anything else: a sandbox has no DNS, so the host must be an IP address.
pub fn parse_http_url(url: &str) -> Option<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = authority.parse::<SocketAddr>().ok().or_else(|| {
        authority
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 80))
    })?;
    Some((addr, path))
}

/// Enough pools for every request to get a port, plus one for headroom (at most 254).
fn default_source_ips(requests: u64, ports: u64) -> usize {
    let pools = requests.div_ceil(ports.max(1)) + 1;
    usize::try_from(pools.clamp(2, 254)).unwrap_or(254)
}

/// 127.0.0.1 … 127.0.0.N: all of 127.0.0.0/8 is local on Linux's loopback, so no address has
/// to be added.
pub(crate) fn source_ips(n: usize) -> Vec<IpAddr> {
    (1..=n.clamp(1, 254))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_the_seed_ladder_then_three_fixes() {
        let config = LabConfig::new(PathBuf::from("portlab"));
        let steps = plan(&config);
        let concurrency: Vec<usize> = steps.iter().map(|s| s.concurrency).collect();
        assert_eq!(concurrency, [5, 10, 50, 100, 100, 100, 100, 1]);
        assert_eq!(steps[7].fix, Some(Fix::Http2));
        assert_eq!(steps[7].path, Path::Forwarder);
        assert!(steps[..4]
            .iter()
            .all(|s| s.policy == Policy::Drop && s.path == Path::Forwarder && s.fix.is_none()));
        assert_eq!(steps[4].fix, Some(Fix::KeepAlive));
        assert_eq!(steps[5].path, Path::PoolingProxy);
        // 5,000 requests over 1,000-port pools: 5 pools are just enough, 6 leave headroom.
        assert_eq!(steps[6].source_ips.len(), 6);
        assert_eq!(
            steps[6].source_ips[5],
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))
        );
    }

    #[test]
    fn many_clients_keep_dropping_through_the_pooling_proxy() {
        let mut config = LabConfig::new(PathBuf::from("portlab"));
        config.client_ips = 6;
        let steps = plan(&config);
        assert!(steps[..4].iter().all(|s| s.source_ips.len() == 6));
        assert_eq!(steps[5].path, Path::PoolingProxy);
        assert_eq!(steps[5].policy, Policy::Drop);
        assert_eq!(steps[5].source_ips.len(), 6);
    }

    #[test]
    fn urls_need_an_ip_address() {
        let (addr, path) = parse_http_url("http://127.0.0.1:8080/hello.html").expect("valid");
        assert_eq!(addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(path, "/hello.html");
        assert_eq!(
            parse_http_url("http://127.0.0.1").map(|(a, p)| (a.port(), p)),
            Some((80, "/".to_string()))
        );
        assert!(parse_http_url("http://nginx.lab/").is_none());
        assert!(parse_http_url("https://127.0.0.1/").is_none());
    }

    #[test]
    fn direct_plan_has_no_pooling_proxy_step() {
        let mut config = LabConfig::new(PathBuf::from("portlab"));
        config.direct = true;
        config.ladder = vec![50];
        let steps = plan(&config);
        assert_eq!(steps.len(), 4);
        assert!(steps.iter().all(|s| s.path == Path::Direct));
    }
}
