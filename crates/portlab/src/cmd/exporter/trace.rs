//! `portlab exporter --trace`: connect() outcomes per destination from an in-process
//! [`portlab_trace::Tracer`], as a `prometheus-client` [`Collector`] the exporter encodes into
//! every scrape (the `run_with` seam). portlab-trace knows nothing of Prometheus; this adapter
//! maps its cumulative [`TraceSnapshot`] onto counters (docs/trace.md "Library API").
//!
//! Cardinality follows the exporter's rules, adapted to counters: destinations matching an
//! allow-list `--destination` matcher always have their own series; of the others, the K
//! (`--top`) with the most failures (then attempts) get their own series the first scrape they
//! rank, and keep it for the exporter's lifetime (a counter series that vanished and whose
//! count moved into "other" would read as a burst of new failures); everything else, and the
//! tracer's overflow row (pid 0, `0.0.0.0:0`, after 4,096 flows), is summed into
//! `dst_ip="other",dst_port="other"`. That sum also keeps the counts a destination had before
//! it got its own series, so "other" never goes down.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use portlab_pipeline::Matcher;
use portlab_trace::{DestinationTotals, TraceSnapshot, Tracer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// The destination of the tracer's overflow row.
const OVERFLOW: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Cumulative counts of one destination (or of "other").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Failures by errno name (`EADDRNOTAVAIL`).
    pub failures: BTreeMap<String, u64>,
    /// Handshakes completed.
    pub successes: u64,
    /// Connections that entered TIME_WAIT (this host closed first).
    pub time_wait_entered: u64,
}

impl Counts {
    fn of(d: &DestinationTotals) -> Counts {
        let mut failures = BTreeMap::new();
        for f in &d.failures {
            *failures.entry(f.errno_name.clone()).or_default() += f.count;
        }
        Counts {
            failures,
            successes: d.successes,
            time_wait_entered: d.time_wait_entered,
        }
    }

    fn add(&mut self, other: &Counts) {
        for (errno, n) in &other.failures {
            *self.failures.entry(errno.clone()).or_default() += n;
        }
        self.successes += other.successes;
        self.time_wait_entered += other.time_wait_entered;
    }

    #[cfg(test)]
    fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Which destinations have their own series; sticky, so every exported counter is monotonic.
#[derive(Debug)]
pub(crate) struct Chooser {
    allow: Vec<Matcher>,
    top_k: usize,
    /// Destinations promoted through the top K, with the counts "other" held for them in the
    /// last scrape before (kept in "other" so it never goes down).
    promoted: BTreeMap<SocketAddr, Counts>,
    /// Counts of the destinations folded into "other" in the last scrape.
    last_folded: BTreeMap<SocketAddr, Counts>,
}

/// One scrape's rows: own series, then the folded rest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rows {
    pub own: Vec<(SocketAddr, Counts)>,
    pub other: Counts,
}

impl Chooser {
    pub fn new(allow: Vec<Matcher>, top_k: usize) -> Chooser {
        Chooser {
            allow,
            top_k,
            promoted: BTreeMap::new(),
            last_folded: BTreeMap::new(),
        }
    }

    fn allowed(&self, d: SocketAddr) -> bool {
        d != OVERFLOW && self.allow.iter().any(|m| m.matches(d))
    }

    /// Splits cumulative per-destination totals into own series and "other".
    pub fn rows(&mut self, totals: &[DestinationTotals]) -> Rows {
        // Fill free top-K slots with the busiest destinations not yet exported.
        let free = self.top_k.saturating_sub(self.promoted.len());
        if free > 0 {
            let mut candidates: Vec<(u64, u64, SocketAddr)> = totals
                .iter()
                .filter(|d| {
                    d.destination != OVERFLOW
                        && !self.allowed(d.destination)
                        && !self.promoted.contains_key(&d.destination)
                })
                .map(|d| {
                    let failures = d.failures.iter().map(|f| f.count).sum();
                    (failures, d.attempts, d.destination)
                })
                .collect();
            candidates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            for (_, _, dest) in candidates.into_iter().take(free) {
                let held = self.last_folded.get(&dest).cloned().unwrap_or_default();
                self.promoted.insert(dest, held);
            }
        }
        let mut own = Vec::new();
        let mut other = Counts::default();
        for held in self.promoted.values() {
            other.add(held);
        }
        let mut folded = BTreeMap::new();
        for d in totals {
            let counts = Counts::of(d);
            if self.allowed(d.destination) || self.promoted.contains_key(&d.destination) {
                // Its own series carries the whole count.
                own.push((d.destination, counts));
            } else {
                other.add(&counts);
                folded.insert(d.destination, counts);
            }
        }
        self.last_folded = folded;
        Rows { own, other }
    }
}

/// The collector: the tracer, and the choice of destinations kept between scrapes.
pub struct TraceCollector {
    tracer: Tracer,
    chooser: Mutex<Chooser>,
}

impl std::fmt::Debug for TraceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceCollector").finish_non_exhaustive()
    }
}

impl TraceCollector {
    /// Wraps a started tracer; `allow` and `top_k` are the exporter's `--destination` and `--top`.
    pub fn new(tracer: Tracer, allow: Vec<Matcher>, top_k: usize) -> TraceCollector {
        TraceCollector {
            tracer,
            chooser: Mutex::new(Chooser::new(allow, top_k)),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

fn dst_labels(dst: Option<SocketAddr>) -> Labels {
    let (ip, port) = dst.map_or_else(
        || ("other".to_string(), "other".to_string()),
        |d| (d.ip().to_string(), d.port().to_string()),
    );
    vec![("dst_ip", ip), ("dst_port", port)]
}

/// A counter family; `name` without `_total` (the encoder appends it to the samples and
/// `to_text_004` to the family).
fn counter_family(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels; `name` without `_total`.
fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// Encodes one snapshot with the rows chosen from it.
pub(crate) fn encode_snapshot(
    e: &mut DescriptorEncoder<'_>,
    snap: &TraceSnapshot,
    rows: &Rows,
) -> Result<(), std::fmt::Error> {
    let all: Vec<(Option<SocketAddr>, &Counts)> = rows
        .own
        .iter()
        .map(|(d, c)| (Some(*d), c))
        .chain(std::iter::once((None, &rows.other)))
        .collect();
    let mut failures = Vec::new();
    let mut opened = Vec::new();
    let mut time_wait = Vec::new();
    for (dst, c) in &all {
        let labels = dst_labels(*dst);
        for (errno, n) in &c.failures {
            let mut l = labels.clone();
            l.push(("errno", errno.clone()));
            failures.push((l, *n));
        }
        opened.push((labels.clone(), c.successes));
        time_wait.push((labels, c.time_wait_entered));
    }
    counter_family(
        e,
        "portlab_connect_failures",
        "connect() calls that failed, by destination and errno (EADDRNOTAVAIL: no free \
         ephemeral port), from kernel tracepoints (portlab exporter --trace).",
        &failures,
    )?;
    counter_family(
        e,
        "portlab_connections_opened",
        "TCP handshakes this host's connect() calls completed (SYN_SENT to ESTABLISHED), by destination.",
        &opened,
    )?;
    counter_family(
        e,
        "portlab_time_wait_entered",
        "Connections to a destination that entered TIME_WAIT here (this host closed first): \
         each holds its ephemeral port for 60 s without tcp_tw_reuse.",
        &time_wait,
    )?;
    let h = &snap.failed_port_search;
    let buckets: Vec<(f64, u64)> = h
        .bounds_ns
        .iter()
        .map(|b| *b as f64 / 1e9)
        .chain(std::iter::once(f64::MAX))
        .zip(h.counts.iter().copied())
        .collect();
    let mut metric = e.encode_descriptor(
        "portlab_failed_port_search_duration_seconds",
        "Time the kernel spent searching the ephemeral range before a connect() failed with \
         EADDRNOTAVAIL (CLOSE to SYN_SENT until SYN_SENT to CLOSE), all destinations.",
        None,
        MetricType::Histogram,
    )?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_ns as f64 / 1e9,
        h.count,
        &buckets,
        None,
    )?;
    counter(
        e,
        "portlab_trace_lost_events",
        "Events the tracer lost: records dropped because a ring buffer was full (perf route, \
         PERF_RECORD_LOST), or hits the kernel ran no program for and inserts into a full map (BPF \
         route); while this rises the counters above are lower bounds.",
        snap.lost_events,
    )?;
    counter(
        e,
        "portlab_trace_throttles",
        "Times the kernel throttled the tracepoints (PERF_RECORD_THROTTLE) and dropped events \
         uncounted; while this rises the counters above are lower bounds.",
        snap.throttles,
    )
}

impl Collector for TraceCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.tracer.snapshot();
        let rows = self
            .chooser
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rows(&snap.destinations());
        encode_snapshot(&mut e, &snap, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portlab_trace::ErrnoCount;

    fn totals(dest: &str, ok: u64, ana: u64) -> DestinationTotals {
        DestinationTotals {
            destination: dest.parse().expect("addr"),
            attempts: ok + ana,
            successes: ok,
            failures: if ana > 0 {
                vec![ErrnoCount {
                    errno: libc::EADDRNOTAVAIL,
                    errno_name: "EADDRNOTAVAIL".into(),
                    class: portlab_load::ErrorClass::from_errno(libc::EADDRNOTAVAIL),
                    count: ana,
                }]
            } else {
                Vec::new()
            },
            time_wait_entered: ok,
        }
    }

    fn own(rows: &Rows) -> Vec<String> {
        rows.own.iter().map(|(d, _)| d.to_string()).collect()
    }

    #[test]
    fn allow_list_top_k_and_the_overflow_row_fold_as_documented() {
        let allow = vec!["10.0.0.0/8:443".parse().expect("matcher")];
        let mut c = Chooser::new(allow, 1);
        let rows = c.rows(&[
            totals("0.0.0.0:0", 7, 7),
            totals("10.0.0.5:443", 1, 0),
            totals("192.0.2.1:80", 5, 3),
            totals("192.0.2.2:80", 9, 1),
        ]);
        // Allow-listed, then the one with most failures; the rest and the overflow row folded.
        assert_eq!(own(&rows), ["10.0.0.5:443", "192.0.2.1:80"]);
        let other = rows.other;
        assert_eq!(other.successes, 16);
        assert_eq!(other.failures["EADDRNOTAVAIL"], 8);
    }

    #[test]
    fn every_series_only_grows_when_destinations_change_rank() {
        let mut c = Chooser::new(Vec::new(), 1);
        let first = c.rows(&[totals("192.0.2.1:80", 1, 0), totals("192.0.2.2:80", 1, 0)]);
        assert_eq!(own(&first), ["192.0.2.1:80"]);
        // 192.0.2.2 now fails far more, but the slot is taken: it stays in "other", and
        // 192.0.2.1 keeps its series.
        let second = c.rows(&[totals("192.0.2.1:80", 2, 0), totals("192.0.2.2:80", 5, 900)]);
        assert_eq!(own(&second), ["192.0.2.1:80"]);
        assert_eq!(second.own[0].1.successes, 2);
        let (a, b) = (&first.other, &second.other);
        assert!(b.successes >= a.successes && b.failures_total() >= a.failures_total());
        // Promoted later (a slot frees only for new exporters, so: K=2 and a latecomer), a
        // destination keeps its earlier folded counts inside "other", which does not drop.
        let mut c = Chooser::new(Vec::new(), 2);
        let one = c.rows(&[totals("192.0.2.1:80", 1, 0)]);
        assert_eq!(
            one.other,
            Counts::default(),
            "first seen and promoted: nothing folded"
        );
        let mut c = Chooser::new(vec!["192.0.2.9:80".parse().expect("m")], 0);
        let folded = c.rows(&[totals("192.0.2.3:80", 4, 2)]);
        assert_eq!(folded.other.successes, 4);
        c.top_k = 1;
        let promoted = c.rows(&[totals("192.0.2.3:80", 6, 2)]);
        assert_eq!(own(&promoted), ["192.0.2.3:80"]);
        assert_eq!(promoted.own[0].1.successes, 6);
        assert_eq!(promoted.other.successes, 4, "other keeps what it showed");
    }
}
