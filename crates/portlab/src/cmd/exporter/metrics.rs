//! The metrics of one scrape: a [`ScrapeCollector`] over one host reading and its pool
//! selection, encoded with `prometheus-client`, and the conversion of that encoder's OpenMetrics
//! text into the Prometheus text format 0.0.4 the exporter serves.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use portlab_pipeline::HostReading;
use portlab_sockets::LINUX_TIME_WAIT_SECS;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The Content-Type of what `/metrics` serves: the Prometheus text format 0.0.4
/// (prometheus/docs exposition_formats.md). Not OpenMetrics: Debian 12's `promtool check
/// metrics` (2.42) reads 0.0.4 and misreads OpenMetrics counters (`x_total no help text`).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An extra source of metrics encoded into every scrape (e.g. `portlab trace`'s connect()
/// outcomes); shared, so the source keeps its state between scrapes.
pub type ExtraCollector = Arc<dyn Collector>;

/// Everything one scrape exports, already read.
#[derive(Debug)]
pub struct ScrapeData {
    /// Settings, pools and counters of the watched namespace.
    pub reading: HostReading,
    /// Pools exported on their own and the folded rest.
    pub kept: Vec<portlab_sockets::PoolUsage>,
    /// The folded rest.
    pub folded: portlab_pipeline::Folded,
    /// Local IPs exported with `portlab_bind_ports_in_use` (the most used first).
    pub bind_ips: Vec<portlab_sockets::LocalIpUsage>,
    /// Seconds the reading and selection took.
    pub duration_secs: f64,
}

impl ScrapeData {
    /// One scrape's data: `reading`, the pools chosen from it, the `max_ips` most used local
    /// IPs, and the time since `started`.
    pub fn new(
        reading: HostReading,
        kept: Vec<portlab_sockets::PoolUsage>,
        folded: portlab_pipeline::Folded,
        max_ips: usize,
        started: std::time::Instant,
    ) -> ScrapeData {
        let bind_ips = reading
            .snapshot
            .local_ips
            .iter()
            .take(max_ips)
            .cloned()
            .collect();
        ScrapeData {
            kept,
            folded,
            bind_ips,
            reading,
            duration_secs: started.elapsed().as_secs_f64(),
        }
    }
}

/// Encodes one [`ScrapeData`].
#[derive(Debug)]
struct ScrapeCollector(ScrapeData);

/// Delegates to a shared extra collector.
#[derive(Debug)]
struct Shared(ExtraCollector);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

type Labels = Vec<(&'static str, String)>;

fn pool_labels(src_ip: String, dst: Option<SocketAddr>) -> Labels {
    let (dst_ip, dst_port) = dst.map_or_else(
        || ("other".to_string(), "other".to_string()),
        |d| (d.ip().to_string(), d.port().to_string()),
    );
    vec![
        ("src_ip", src_ip),
        ("dst_ip", dst_ip),
        ("dst_port", dst_port),
    ]
}

fn with_state(mut labels: Labels, state: &'static str) -> Labels {
    labels.push(("state", state.to_string()));
    labels
}

/// One gauge family from (labels, value) rows.
fn gauge_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A counter; `name` without `_total` (the encoder appends it).
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let d = &self.0;
        let settings = &d.reading.settings;
        let usable = f64::from(settings.usable_ephemeral_ports());
        let mut build = e.encode_descriptor(
            "portlab_build",
            "portlab's version; the value is always 1.",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        gauge(
            &mut e,
            "portlab_ephemeral_ports",
            "Usable ephemeral ports of one pool: net.ipv4.ip_local_port_range minus \
             ip_local_reserved_ports (each (source IP, destination IP, destination port) has its own pool).",
            usable,
        )?;
        gauge(
            &mut e,
            "portlab_time_wait_seconds",
            "How long TIME_WAIT holds a 4-tuple on Linux (TCP_TIMEWAIT_LEN, compiled in; \
             tcp_fin_timeout does not change it).",
            f64::from(LINUX_TIME_WAIT_SECS),
        )?;
        gauge(
            &mut e,
            "portlab_tcp_tw_reuse",
            "net.ipv4.tcp_tw_reuse: 0 off, 1 connect() may take over TIME_WAIT 4-tuples, 2 loopback only.",
            f64::from(settings.tcp_tw_reuse.sysctl_value()),
        )?;
        self.encode_pools(&mut e)?;
        self.encode_bind(&mut e, usable)?;
        self.encode_counters(&mut e)?;
        gauge(
            &mut e,
            "portlab_destinations",
            "Pools exported with their own src_ip/dst_ip/dst_port labels in this scrape.",
            d.kept.len() as f64,
        )?;
        gauge(
            &mut e,
            "portlab_destinations_folded",
            "Pools folded into the src_ip=\"other\",dst_ip=\"other\",dst_port=\"other\" series \
             in this scrape (not allow-listed, not in the top K).",
            d.folded.pools as f64,
        )?;
        gauge(
            &mut e,
            "portlab_scrape_duration_seconds",
            "Seconds this scrape took to read settings, the socket table (one NETLINK_SOCK_DIAG dump) and counters.",
            d.duration_secs,
        )
    }
}

impl ScrapeCollector {
    fn encode_pools(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let d = &self.0;
        let mut in_use = Vec::with_capacity(d.kept.len() * 4 + 4);
        let mut ratio = Vec::with_capacity(d.kept.len() + 1);
        let mut rate = Vec::with_capacity(d.kept.len());
        for p in &d.kept {
            let labels = pool_labels(p.local_ip.to_string(), Some(p.destination));
            for (state, n) in [
                ("established", p.established),
                ("time_wait", p.time_wait),
                ("syn_sent", p.syn_sent),
                ("other", p.other),
            ] {
                in_use.push((with_state(labels.clone(), state), n as f64));
            }
            ratio.push((labels.clone(), p.utilisation));
            rate.push((labels, p.headroom.sustainable_rate_per_sec));
        }
        let f = &d.folded;
        if f.pools > 0 {
            let labels = pool_labels("other".to_string(), None);
            for (state, n) in [
                ("established", f.established),
                ("time_wait", f.time_wait),
                ("syn_sent", f.syn_sent),
                ("other", f.other),
            ] {
                in_use.push((with_state(labels.clone(), state), n as f64));
            }
            ratio.push((labels, f.max_utilisation));
        }
        gauge_family(
            e,
            "portlab_destination_ports_in_use",
            "Local ephemeral ports held towards a destination, by TCP state (state=\"other\": \
             FIN_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING). The \"other\" destination sums the folded pools.",
            &in_use,
        )?;
        gauge_family(
            e,
            "portlab_destination_port_utilization_ratio",
            "Ports in use in the pool divided by portlab_ephemeral_ports (0-1; TIME_WAIT counts). \
             The \"other\" destination is the highest of the folded pools.",
            &ratio,
        )?;
        gauge_family(
            e,
            "portlab_destination_max_new_connections_per_second",
            "New connections per second the pool sustains when the client closes first: usable \
             ports divided by how long TIME_WAIT blocks a port (60 s, or the tcp_tw_reuse delay \
             where reuse applies).",
            &rate,
        )
    }

    fn encode_bind(
        &self,
        e: &mut DescriptorEncoder<'_>,
        usable: f64,
    ) -> Result<(), std::fmt::Error> {
        let rows: Vec<(Labels, f64, f64)> = self
            .0
            .bind_ips
            .iter()
            .map(|ip| {
                let n = ip.distinct_ports as f64;
                (
                    vec![("src_ip", ip.local_ip.to_string())],
                    n,
                    if usable > 0.0 { n / usable } else { 1.0 },
                )
            })
            .collect();
        let counts: Vec<(Labels, f64)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
        let ratios: Vec<(Labels, f64)> = rows.into_iter().map(|r| (r.0, r.2)).collect();
        gauge_family(
            e,
            "portlab_bind_ports_in_use",
            "Distinct ephemeral port numbers in use on a local IP, any destination: the ports \
             bind(ip, 0) cannot take (bind before connect reserves a port per local IP, not per destination).",
            &counts,
        )?;
        gauge_family(
            e,
            "portlab_bind_port_utilization_ratio",
            "portlab_bind_ports_in_use divided by portlab_ephemeral_ports (0-1).",
            &ratios,
        )
    }

    fn encode_counters(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.0.reading.counters;
        counter(
            e,
            "portlab_tcp_tw_recycled",
            "TcpExt TWRecycled (/proc/net/netstat): TIME_WAIT sockets taken over by connect() under tcp_tw_reuse.",
            c.tw_recycled,
        )?;
        counter(
            e,
            "portlab_tcp_time_wait_overflow",
            "TcpExt TCPTimeWaitOverflow: TIME_WAIT sockets not created (tcp_max_tw_buckets reached or allocation failed).",
            c.tcp_time_wait_overflow,
        )?;
        counter(
            e,
            "portlab_tcp_attempt_fails",
            "Tcp AttemptFails (/proc/net/snmp): connections that went from SYN_SENT/SYN_RECV to CLOSED or LISTEN. \
             A connect() failing with EADDRNOTAVAIL is not counted here.",
            c.attempt_fails,
        )?;
        counter(
            e,
            "portlab_tcp_listen_overflows",
            "TcpExt ListenOverflows: SYNs or ACKs dropped because a listener's accept queue was full.",
            c.listen_overflows,
        )?;
        counter(
            e,
            "portlab_tcp_listen_drops",
            "TcpExt ListenDrops: connection requests a listener dropped for any reason (includes ListenOverflows).",
            c.listen_drops,
        )
    }
}

/// Encodes one scrape plus the extra collectors as Prometheus text 0.0.4.
pub fn encode(data: ScrapeData, extra: &[ExtraCollector]) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(data)));
    for source in extra {
        registry.register_collector(Box::new(Shared(Arc::clone(source))));
    }
    let mut openmetrics = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut openmetrics, &registry)?;
    Ok(to_text_004(&openmetrics))
}

/// OpenMetrics text (as `prometheus-client` writes it) → Prometheus text 0.0.4: counter
/// families are named with their `_total` sample name, info families become gauges named
/// `_info`, `# UNIT` and `# EOF` lines go. Samples are unchanged.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
        }
    }
    let rename = |name: &str| -> (String, Option<&'static str>) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), None),
            Some("info") => (format!("{name}_info"), Some("gauge")),
            _ => (name.to_string(), None),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {help}", rename(name).0);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (renamed, as_kind) = rename(name);
            let _ = writeln!(out, "# TYPE {renamed} {}", as_kind.unwrap_or(kind));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_and_info_become_text_004() {
        let om = "# HELP a_build x.\n# TYPE a_build info\na_build_info{version=\"1\"} 1\n\
                  # HELP a_fails Fails.\n# TYPE a_fails counter\na_fails_total 3\n\
                  # HELP a_g G.\n# TYPE a_g gauge\n# UNIT a_g seconds\na_g 1.5\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP a_build_info x.\n# TYPE a_build_info gauge\na_build_info{version=\"1\"} 1\n\
             # HELP a_fails_total Fails.\n# TYPE a_fails_total counter\na_fails_total 3\n\
             # HELP a_g G.\n# TYPE a_g gauge\na_g 1.5\n"
        );
    }
}
