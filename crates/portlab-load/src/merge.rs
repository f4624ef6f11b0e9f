//! Merging the [`LoadReport`]s of many agents into one, without loss: counts are summed, the
//! HDR histograms are added (so percentiles are those of all requests together, not averages of
//! percentiles), per-second timelines are aligned by wall-clock second through each report's
//! `started_at_unix_secs`, errors and connection statistics are summed.
//!
//! [`ReportMerger`] folds reports one at a time ([`ReportMerger::push`]) and keeps only the
//! merged state, so memory stays flat however many reports there are.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::config::RateLimit;
use crate::error::{ErrorClass, Phase};
use crate::report::{
    encode_histogram, latency_report, percentiles, AddressReport, BreakerReport, ConnectionReport,
    ErrorEntry, LoadReport, RetryReport, SettingsReport, Summary, TimelineSecond, SCHEMA_VERSION,
};
use crate::stats::latency_histogram;

/// Why a report cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// An HDR histogram field is not valid base64 V2 (+DEFLATE) data.
    #[error("{field}: the HDR histogram does not decode ({reason})")]
    BadHistogram {
        /// The JSON field (`latency.hdr_histogram`, `connections.connect_hdr_histogram`).
        field: &'static str,
        /// What failed.
        reason: String,
    },
    /// No report was pushed.
    #[error("no report to merge")]
    Empty,
}

/// The class a JSON `class` name (and `errno`, for `Other`) stands for.
fn class_from_name(name: &str, errno: Option<i32>) -> Option<ErrorClass> {
    if name == "Other" {
        return Some(ErrorClass::Other(errno.unwrap_or(0)));
    }
    ErrorClass::from_name(name)
}

/// [`ErrorEntry`] as it is in JSON: the class by name, its meaning and side re-derived.
#[derive(Deserialize)]
struct ErrorEntryWire {
    class: String,
    errno: Option<i32>,
    errno_name: String,
    count: u64,
    first_at_ms: Option<f64>,
    #[serde(default)]
    by_phase: BTreeMap<Phase, u64>,
}

impl<'de> Deserialize<'de> for ErrorEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = ErrorEntryWire::deserialize(d)?;
        ErrorEntry::try_from(wire).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<ErrorEntryWire> for ErrorEntry {
    type Error = String;

    fn try_from(w: ErrorEntryWire) -> Result<Self, String> {
        let class = class_from_name(&w.class, w.errno)
            .ok_or_else(|| format!("unknown error class {:?}", w.class))?;
        Ok(ErrorEntry {
            class,
            errno: w.errno,
            errno_name: w.errno_name,
            meaning: class.meaning(),
            side: class.side(),
            count: w.count,
            first_at_ms: w.first_at_ms,
            by_phase: w.by_phase,
        })
    }
}

/// Decodes a histogram of the report (base64 of the V2 + DEFLATE encoding).
///
/// # Errors
/// [`MergeError::BadHistogram`] naming `field`.
pub fn decode_histogram(encoded: &str, field: &'static str) -> Result<Histogram<u64>, MergeError> {
    let bad = |reason: String| MergeError::BadHistogram { field, reason };
    if encoded.is_empty() {
        return Ok(latency_histogram());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad(e.to_string()))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| bad(format!("{e:?}")))
}

/// Failures of one class summed over agents; `first_at_unix_secs` is absolute wall time.
#[derive(Default)]
struct ErrorAccum {
    errno_name: String,
    count: u64,
    first_at_unix_secs: Option<f64>,
    by_phase: BTreeMap<Phase, u64>,
}

/// One wall-clock second of the merged timeline.
#[derive(Default)]
struct SecondAccum {
    succeeded: u64,
    failed: u64,
    new_connections: u64,
    p99_us: u64,
    errors: BTreeMap<String, u64>,
}

/// Folds reports into one. Push every report, then [`ReportMerger::finish`].
pub struct ReportMerger {
    first: Option<LoadReport>,
    reports: u64,
    start_unix_secs: f64,
    end_unix_secs: f64,
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    all_corrected: bool,
    requests: Option<u64>,
    duration_secs: Option<f64>,
    concurrency: usize,
    threads: usize,
    global_rate: f64,
    source_ips: Vec<IpAddr>,
    summary: Summary,
    status_codes: BTreeMap<u16, u64>,
    connections: ConnectionReport,
    errors: BTreeMap<ErrorClass, ErrorAccum>,
    retried_errors: BTreeMap<ErrorClass, ErrorAccum>,
    retry_attempts: u64,
    retry_succeeded: u64,
    timeline: BTreeMap<i64, SecondAccum>,
    /// The first report's breaker settings, every report's counters summed.
    breaker: Option<BreakerReport>,
    /// Connect outcomes per address, summed over reports (first-seen order).
    addresses: Vec<AddressReport>,
}

impl Default for ReportMerger {
    fn default() -> Self {
        Self::new()
    }
}

/// The wall-clock second (UNIX) that second `k` of a run started at `start` is merged into:
/// the one holding the middle of that second.
pub fn wall_second(start_unix_secs: f64, k: u64) -> i64 {
    (start_unix_secs + k as f64 + 0.5).floor() as i64
}

impl ReportMerger {
    /// An empty merger.
    pub fn new() -> Self {
        Self {
            first: None,
            reports: 0,
            start_unix_secs: f64::INFINITY,
            end_unix_secs: f64::NEG_INFINITY,
            latency: latency_histogram(),
            connect: latency_histogram(),
            all_corrected: true,
            requests: Some(0),
            duration_secs: None,
            concurrency: 0,
            threads: 0,
            global_rate: 0.0,
            source_ips: Vec::new(),
            summary: Summary {
                requests: 0,
                succeeded: 0,
                failed: 0,
                short_circuited: 0,
                cancelled_at_deadline: 0,
                non_success_status: 0,
                elapsed_secs: 0.0,
                requests_per_sec: 0.0,
                body_bytes: 0,
            },
            status_codes: BTreeMap::new(),
            connections: ConnectionReport {
                opened: 0,
                connect_failures: 0,
                slow_connects: 0,
                new_per_sec: 0.0,
                requests_on_new: 0,
                requests_on_reused: 0,
                reuse_ratio: 0.0,
                closed_by_server: 0,
                closed_by_client: 0,
                connect_latency: percentiles(&latency_histogram()),
                connect_hdr_histogram: String::new(),
            },
            errors: BTreeMap::new(),
            retried_errors: BTreeMap::new(),
            retry_attempts: 0,
            retry_succeeded: 0,
            timeline: BTreeMap::new(),
            breaker: None,
            addresses: Vec::new(),
        }
    }

    /// Reports pushed so far.
    pub fn len(&self) -> u64 {
        self.reports
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.reports == 0
    }

    /// Adds one report.
    ///
    /// # Errors
    /// [`MergeError::BadHistogram`] when a histogram does not decode; the merger is unchanged
    /// then.
    pub fn push(&mut self, r: &LoadReport) -> Result<(), MergeError> {
        let latency = decode_histogram(&r.latency.hdr_histogram, "latency.hdr_histogram")?;
        let connect = decode_histogram(
            &r.connections.connect_hdr_histogram,
            "connections.connect_hdr_histogram",
        )?;
        add_histogram(&mut self.latency, &latency, "latency.hdr_histogram")?;
        add_histogram(
            &mut self.connect,
            &connect,
            "connections.connect_hdr_histogram",
        )?;
        self.reports += 1;
        let start = r.started_at_unix_secs;
        self.start_unix_secs = self.start_unix_secs.min(start);
        self.end_unix_secs = self.end_unix_secs.max(start + r.summary.elapsed_secs);
        self.all_corrected &= r.latency.corrected_for_coordinated_omission;
        self.push_settings(&r.settings);
        self.push_summary(&r.summary);
        for (code, n) in &r.status_codes {
            *self.status_codes.entry(*code).or_default() += n;
        }
        self.push_connections(&r.connections);
        push_errors(&mut self.errors, &r.errors, start);
        push_errors(&mut self.retried_errors, &r.retries.retried_errors, start);
        self.retry_attempts += r.retries.attempts;
        self.retry_succeeded += r.retries.succeeded;
        self.push_breaker(r.circuit_breaker.as_ref());
        self.push_addresses(&r.target.addresses);
        for t in &r.timeline {
            let s = self
                .timeline
                .entry(wall_second(start, t.second))
                .or_default();
            s.succeeded += t.succeeded;
            s.failed += t.failed;
            s.new_connections += t.new_connections;
            s.p99_us = s.p99_us.max(t.p99_us);
            for (class, n) in &t.errors {
                *s.errors.entry(class.clone()).or_default() += n;
            }
        }
        if self.first.is_none() {
            let mut first = r.clone();
            first.timeline = Vec::new();
            self.first = Some(first);
        }
        Ok(())
    }

    fn push_settings(&mut self, s: &SettingsReport) {
        self.requests = self.requests.zip(s.requests).map(|(a, b)| a + b);
        self.duration_secs = match (self.duration_secs, s.duration_secs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.concurrency += s.concurrency;
        self.threads += s.threads;
        if let RateLimit::Global { per_sec } = s.rate {
            self.global_rate += per_sec;
        }
        for ip in &s.source_ips {
            if !self.source_ips.contains(ip) {
                self.source_ips.push(*ip);
            }
        }
    }

    fn push_summary(&mut self, s: &Summary) {
        let m = &mut self.summary;
        m.requests += s.requests;
        m.succeeded += s.succeeded;
        m.failed += s.failed;
        m.short_circuited += s.short_circuited;
        m.cancelled_at_deadline += s.cancelled_at_deadline;
        m.non_success_status += s.non_success_status;
        m.body_bytes += s.body_bytes;
    }

    fn push_breaker(&mut self, b: Option<&BreakerReport>) {
        match (&mut self.breaker, b) {
            (Some(into), Some(b)) => into.counters.merge(&b.counters),
            (None, Some(b)) => self.breaker = Some(b.clone()),
            (_, None) => {}
        }
    }

    fn push_addresses(&mut self, addresses: &[AddressReport]) {
        for a in addresses {
            match self.addresses.iter_mut().find(|m| m.address == a.address) {
                Some(m) => {
                    m.connects += a.connects;
                    for (class, n) in &a.failures {
                        *m.failures.entry(*class).or_default() += n;
                    }
                }
                None => self.addresses.push(a.clone()),
            }
        }
    }

    fn push_connections(&mut self, c: &ConnectionReport) {
        let m = &mut self.connections;
        m.opened += c.opened;
        m.connect_failures += c.connect_failures;
        m.slow_connects += c.slow_connects;
        m.requests_on_new += c.requests_on_new;
        m.requests_on_reused += c.requests_on_reused;
        m.closed_by_server += c.closed_by_server;
        m.closed_by_client += c.closed_by_client;
    }

    /// The merged report: settings are the sums (`-n`, `-c`, threads, `--rate`) or the first
    /// report's (policy, timeouts, `-q`); `elapsed_secs` runs from the earliest start to the
    /// latest end; a merged second's `p99_us` is the largest of the agents' p99 for that second
    /// (per-second histograms are not in the reports: an upper bound, not a merge).
    ///
    /// # Errors
    /// [`MergeError::Empty`] when nothing was pushed.
    pub fn finish(self) -> Result<LoadReport, MergeError> {
        let mut out = self.first.ok_or(MergeError::Empty)?;
        let start = self.start_unix_secs;
        let elapsed = (self.end_unix_secs - start).max(1e-9);
        out.schema_version = SCHEMA_VERSION;
        out.started_at_unix_secs = start;
        let st = &mut out.settings;
        st.requests = self.requests;
        st.duration_secs = self.duration_secs;
        st.concurrency = self.concurrency;
        st.threads = self.threads;
        if let RateLimit::Global { .. } = st.rate {
            st.rate = RateLimit::Global {
                per_sec: self.global_rate,
            };
        }
        st.source_ips = self.source_ips;
        out.summary = Summary {
            elapsed_secs: elapsed,
            requests_per_sec: self.summary.succeeded as f64 / elapsed,
            ..self.summary
        };
        out.latency = latency_report(&self.latency, self.all_corrected);
        out.status_codes = self.status_codes;
        let sent = self.connections.requests_on_new + self.connections.requests_on_reused;
        out.connections = ConnectionReport {
            new_per_sec: self.connections.opened as f64 / elapsed,
            reuse_ratio: if sent == 0 {
                0.0
            } else {
                self.connections.requests_on_reused as f64 / sent as f64
            },
            connect_latency: percentiles(&self.connect),
            connect_hdr_histogram: encode_histogram(&self.connect),
            ..self.connections
        };
        out.errors = error_entries(self.errors, start);
        out.retries = RetryReport {
            attempts: self.retry_attempts,
            succeeded: self.retry_succeeded,
            retried_errors: error_entries(self.retried_errors, start),
        };
        out.timeline = timeline(self.timeline, start);
        out.circuit_breaker = self.breaker;
        out.target.addresses = self.addresses;
        Ok(out)
    }
}

fn add_histogram(
    into: &mut Histogram<u64>,
    h: &Histogram<u64>,
    field: &'static str,
) -> Result<(), MergeError> {
    into.add(h).map_err(|e| MergeError::BadHistogram {
        field,
        reason: format!("{e:?}"),
    })
}

fn push_errors(into: &mut BTreeMap<ErrorClass, ErrorAccum>, entries: &[ErrorEntry], start: f64) {
    for e in entries {
        let a = into.entry(e.class).or_default();
        if a.errno_name.is_empty() {
            a.errno_name.clone_from(&e.errno_name);
        }
        a.count += e.count;
        if let Some(ms) = e.first_at_ms {
            let at = start + ms / 1000.0;
            a.first_at_unix_secs = Some(a.first_at_unix_secs.map_or(at, |f| f.min(at)));
        }
        for (phase, n) in &e.by_phase {
            *a.by_phase.entry(*phase).or_default() += n;
        }
    }
}

fn error_entries(errors: BTreeMap<ErrorClass, ErrorAccum>, start: f64) -> Vec<ErrorEntry> {
    let mut out: Vec<ErrorEntry> = errors
        .into_iter()
        .map(|(class, a)| ErrorEntry {
            class,
            errno: class.errno(),
            errno_name: a.errno_name,
            meaning: class.meaning(),
            side: class.side(),
            count: a.count,
            // Rounded to the µs the engine reports in.
            first_at_ms: a
                .first_at_unix_secs
                .map(|at| (((at - start) * 1e6).round() / 1e3).max(0.0)),
            by_phase: a.by_phase,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
    out
}

fn timeline(seconds: BTreeMap<i64, SecondAccum>, start: f64) -> Vec<TimelineSecond> {
    let base = wall_second(start, 0);
    let Some(&last) = seconds.keys().next_back() else {
        return Vec::new();
    };
    (base..=last)
        .map(|wall| {
            let s = seconds.get(&wall);
            TimelineSecond {
                second: (wall - base) as u64,
                succeeded: s.map_or(0, |s| s.succeeded),
                failed: s.map_or(0, |s| s.failed),
                new_connections: s.map_or(0, |s| s.new_connections),
                p99_us: s.map_or(0, |s| s.p99_us),
                errors: s.map(|s| s.errors.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_seconds_follow_the_middle_of_each_second() {
        assert_eq!(wall_second(100.001, 0), 100);
        assert_eq!(wall_second(100.999, 0), 101);
        assert_eq!(wall_second(100.4, 2), 102);
    }

    /// A report as JSON: `start` UNIX seconds, one success per second for `secs` seconds, one
    /// AddrNotAvailable at `fail_ms`.
    fn report(start: f64, secs: u64, fail_ms: f64) -> LoadReport {
        let timeline: Vec<serde_json::Value> = (0..secs)
            .map(|k| serde_json::json!({"second": k, "succeeded": 1, "failed": 0, "new_connections": 1, "p99_us": 100 * (k + 1)}))
            .collect();
        let json = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "started_at_unix_secs": start,
            "target": {"url": "http://10.0.0.1/", "method": "GET", "resolved": ["10.0.0.1:80"], "connected_to": "10.0.0.1:80"},
            "settings": {"requests": secs + 1, "duration_secs": null, "concurrency": 2, "threads": 1,
                "connection": "drop", "rate": {"kind": "global", "per_sec": 1.5},
                "request_timeout_ms": 1000, "connect_timeout_ms": 1000, "source_ips": [],
                "retries": 0, "backoff_ms": 100},
            "summary": {"requests": secs + 1, "succeeded": secs, "failed": 1, "cancelled_at_deadline": 0,
                "non_success_status": 0, "elapsed_secs": secs as f64, "requests_per_sec": 1.0, "body_bytes": 5 * secs},
            "latency": {"count": 0, "min_us": 0, "mean_us": 0.0, "p50_us": 0, "p90_us": 0, "p99_us": 0,
                "p99_9_us": 0, "max_us": 0, "buckets": [], "corrected_for_coordinated_omission": true,
                "hdr_histogram": ""},
            "status_codes": {"200": secs},
            "connections": {"opened": secs, "connect_failures": 1, "slow_connects": 0, "new_per_sec": 1.0,
                "requests_on_new": secs, "requests_on_reused": 0, "reuse_ratio": 0.0, "closed_by_server": 0,
                "closed_by_client": secs, "connect_latency": {"count": 0, "p50_us": 0, "p90_us": 0, "p99_us": 0, "max_us": 0},
                "connect_hdr_histogram": ""},
            "errors": [{"class": "AddrNotAvailable", "errno": 99, "errno_name": "EADDRNOTAVAIL", "meaning": "x",
                "side": "local", "count": 1, "first_at_ms": fail_ms, "by_phase": {"connect": 1}}],
            "retries": {"attempts": 0, "succeeded": 0, "retried_errors": []},
            "timeline": timeline,
        });
        serde_json::from_value(json).expect("a report")
    }

    #[test]
    fn timelines_align_by_wall_clock_and_first_failures_by_the_earliest_start() {
        let mut m = ReportMerger::new();
        m.push(&report(1000.0, 3, 2500.0)).expect("push");
        // Starts 1.2 s later: its second 0 is wall second 1001, its failure at 1001.7.
        m.push(&report(1001.2, 2, 500.0)).expect("push");
        let r = m.finish().expect("merged");
        let got: Vec<(u64, u64, u64)> = r
            .timeline
            .iter()
            .map(|t| (t.second, t.succeeded, t.p99_us))
            .collect();
        assert_eq!(got, [(0, 1, 100), (1, 2, 200), (2, 2, 300)]);
        assert_eq!(r.started_at_unix_secs, 1000.0);
        assert!((r.summary.elapsed_secs - 3.2).abs() < 1e-9);
        assert_eq!((r.summary.requests, r.summary.failed), (7, 2));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].count, 2);
        assert_eq!(r.errors[0].first_at_ms, Some(1700.0));
        assert_eq!(r.errors[0].meaning, ErrorClass::AddrNotAvailable.meaning());
        assert_eq!(r.status_codes[&200], 5);
        assert_eq!(r.settings.concurrency, 4);
        assert_eq!(r.settings.rate, RateLimit::Global { per_sec: 3.0 });
        assert_eq!(r.connections.connect_failures, 2);
    }

    #[test]
    fn class_names_read_back() {
        for c in ErrorClass::ALL
            .into_iter()
            .filter(|c| !matches!(c, ErrorClass::Other(_)))
        {
            assert_eq!(class_from_name(c.name(), c.errno()), Some(c));
        }
        assert_eq!(
            class_from_name("Other", Some(1)),
            Some(ErrorClass::Other(1))
        );
        assert_eq!(class_from_name("Bogus", None), None);
    }
}
