//! A circuit breaker (Nygard, *Release It!*; the closed → open → half-open machine of
//! Hystrix, resilience4j and Envoy's outlier ejection): while the share of failed attempts in
//! a sliding window stays under a threshold, every attempt goes through (closed); once it
//! reaches the threshold over enough attempts, attempts are refused at once without touching
//! the network (open, "short-circuited") for an open interval; then a few probe attempts go
//! through (half-open): if they all succeed the breaker closes with an empty window, if one
//! fails it opens again.
//!
//! The machine takes the time as an argument, so it is deterministic and tested without
//! sleeping; it holds no lock: the load engine keeps one per engine thread, the HTTP proxy one
//! behind a mutex for its upstream.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use portlab_load::breaker::{Admission, BreakerConfig, CircuitBreaker};
//!
//! let config = BreakerConfig::parse("ratio=0.5,window=1s,min=4,open=2s,probes=1").unwrap();
//! let mut b = CircuitBreaker::new(config);
//! let t0 = Instant::now();
//! for _ in 0..4 {
//!     let a = b.admit(t0);
//!     b.record(t0, a, false);
//! }
//! assert_eq!(b.admit(t0), Admission::ShortCircuited);
//! assert_eq!(b.admit(t0 + Duration::from_secs(2)), Admission::Probe);
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Number of buckets the sliding window is cut into (its resolution is window ÷ this).
const BUCKETS: usize = 10;

/// The knobs of a breaker (`--circuit-breaker SPEC`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Open when failed ÷ attempts in the window reaches this share (0 < ratio ≤ 1).
    pub failure_ratio: f64,
    /// Length of the sliding window of outcomes.
    #[serde(serialize_with = "ms", deserialize_with = "ms_back")]
    pub window: Duration,
    /// Attempts the window must hold before it may open (so three failures of three do not
    /// trip it at start-up).
    pub min_requests: u32,
    /// How long the breaker stays open before probing.
    #[serde(serialize_with = "ms", deserialize_with = "ms_back")]
    pub open_for: Duration,
    /// Probe attempts let through when half-open; all must succeed to close.
    pub half_open_probes: u32,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// [`ms`] read back (reports merged by `portlab merge`).
fn ms_back<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = f64::deserialize(d)?;
    Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
}

impl Default for BreakerConfig {
    /// 50 % failures over a 1 s window of at least 20 attempts; open 1 s; 3 probes.
    fn default() -> Self {
        BreakerConfig {
            failure_ratio: 0.5,
            window: Duration::from_secs(1),
            min_requests: 20,
            open_for: Duration::from_secs(1),
            half_open_probes: 3,
        }
    }
}

/// A `--circuit-breaker` spec that cannot be used; the text says which key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--circuit-breaker {spec:?}: {reason} (keys: ratio=0.5,window=1s,min=20,open=1s,probes=3)")]
pub struct BreakerSpecError {
    /// The spec given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl BreakerConfig {
    /// Parses `KEY=VALUE,...` over the defaults: `ratio` (0–1 or a percentage `50%`),
    /// `window`, `open` (durations: `500ms`, `2s`, a bare number is milliseconds), `min`,
    /// `probes` (integers ≥ 1). An empty spec gives the defaults.
    ///
    /// # Errors
    /// [`BreakerSpecError`] naming the key.
    pub fn parse(spec: &str) -> Result<Self, BreakerSpecError> {
        let bad = |reason: String| BreakerSpecError {
            spec: spec.to_string(),
            reason,
        };
        let mut c = BreakerConfig::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("{item:?} is not KEY=VALUE")))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "ratio" => {
                    let (num, scale) = match value.strip_suffix('%') {
                        Some(n) => (n.trim(), 100.0),
                        None => (value, 1.0),
                    };
                    let r: f64 = num
                        .parse()
                        .map_err(|_| bad(format!("ratio {value:?} is not a number")))?;
                    let r = r / scale;
                    if !(r > 0.0 && r <= 1.0) {
                        return Err(bad(format!(
                            "ratio {value:?} must be above 0 and at most 1"
                        )));
                    }
                    c.failure_ratio = r;
                }
                "window" | "open" => {
                    let d = parse_duration(value)
                        .ok_or_else(|| bad(format!("{key} {value:?} is not a duration")))?;
                    if d.is_zero() {
                        return Err(bad(format!("{key} must be longer than 0")));
                    }
                    if key == "window" {
                        c.window = d;
                    } else {
                        c.open_for = d;
                    }
                }
                "min" | "probes" => {
                    let n: u32 =
                        value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            bad(format!("{key} {value:?} must be an integer ≥ 1"))
                        })?;
                    if key == "min" {
                        c.min_requests = n;
                    } else {
                        c.half_open_probes = n;
                    }
                }
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        Ok(c)
    }
}

/// `500ms`, `2s`, `1.5s`, `250us`, `1m`; a bare number is milliseconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Attempts go through; outcomes are counted in the window.
    Closed,
    /// Attempts are refused until `until`.
    Open {
        /// When the open interval ends.
        #[serde(skip)]
        until: Instant,
    },
    /// `in_flight` probes are out, `passed` have succeeded.
    HalfOpen {
        /// Probes let through and not yet recorded.
        in_flight: u32,
        /// Probes that succeeded.
        passed: u32,
    },
}

/// What the breaker says to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead as a probe (its outcome decides).
    Probe,
    /// Open (or half-open with every probe out): fail at once without a network attempt.
    ShortCircuited,
}

/// What a breaker did over a run. Accounting: every admitted attempt is recorded once, so
/// `allowed + probes = recorded successes + recorded failures` once every attempt has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BreakerCounters {
    /// Attempts let through while closed.
    pub allowed: u64,
    /// Probe attempts let through while half-open.
    pub probes: u64,
    /// Attempts refused without touching the network.
    pub short_circuited: u64,
    /// Times the breaker opened (from closed, or from half-open after a failed probe).
    pub opened: u64,
    /// Times it closed again after its probes succeeded.
    pub closed: u64,
}

impl BreakerCounters {
    /// Adds another breaker's counters (one per engine thread).
    pub fn merge(&mut self, o: &BreakerCounters) {
        self.allowed += o.allowed;
        self.probes += o.probes;
        self.short_circuited += o.short_circuited;
        self.opened += o.opened;
        self.closed += o.closed;
    }
}

/// Outcomes of one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Index of the slice (time since the breaker's epoch ÷ slice length) it holds.
    slice: u64,
    attempts: u32,
    failures: u32,
}

/// The machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    epoch: Option<Instant>,
    buckets: [Bucket; BUCKETS],
    counters: BreakerCounters,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: BreakerState::Closed,
            epoch: None,
            buckets: [Bucket::default(); BUCKETS],
            counters: BreakerCounters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state (an open breaker whose interval is over is reported open until the
    /// next [`CircuitBreaker::admit`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// What it did so far.
    pub fn counters(&self) -> BreakerCounters {
        self.counters
    }

    /// Asks to make an attempt at `now`. Every `Allowed` or `Probe` must be followed by one
    /// [`CircuitBreaker::record`] of the attempt's outcome.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let BreakerState::Open { until } = self.state {
            if now < until {
                self.counters.short_circuited += 1;
                return Admission::ShortCircuited;
            }
            self.state = BreakerState::HalfOpen {
                in_flight: 0,
                passed: 0,
            };
        }
        match &mut self.state {
            BreakerState::Closed => {
                self.counters.allowed += 1;
                Admission::Allowed
            }
            BreakerState::HalfOpen { in_flight, passed } => {
                if *in_flight + *passed < self.config.half_open_probes {
                    *in_flight += 1;
                    self.counters.probes += 1;
                    Admission::Probe
                } else {
                    self.counters.short_circuited += 1;
                    Admission::ShortCircuited
                }
            }
            BreakerState::Open { .. } => {
                self.counters.short_circuited += 1;
                Admission::ShortCircuited
            }
        }
    }

    /// Records the outcome of an attempt that `admit` let through as `admission`.
    /// A `ShortCircuited` admission records nothing.
    pub fn record(&mut self, now: Instant, admission: Admission, success: bool) {
        match admission {
            Admission::ShortCircuited => {}
            Admission::Allowed => {
                // An attempt admitted while closed may end after the breaker opened: it still
                // counts in the window (which is cleared when the breaker closes again).
                self.count(now, success);
                if self.state == BreakerState::Closed && self.should_open(now) {
                    self.open(now);
                }
            }
            Admission::Probe => {
                if let BreakerState::HalfOpen { in_flight, passed } = &mut self.state {
                    *in_flight = in_flight.saturating_sub(1);
                    if !success {
                        self.open(now);
                    } else {
                        *passed += 1;
                        if *passed >= self.config.half_open_probes {
                            self.state = BreakerState::Closed;
                            self.buckets = [Bucket::default(); BUCKETS];
                            self.counters.closed += 1;
                        }
                    }
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.config.open_for,
        };
        self.counters.opened += 1;
    }

    fn slice_len_ns(&self) -> u64 {
        (self.config.window.as_nanos() as u64 / BUCKETS as u64).max(1)
    }

    fn slice_of(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_nanos() as u64 / self.slice_len_ns()
    }

    fn count(&mut self, now: Instant, success: bool) {
        let slice = self.slice_of(now);
        let b = &mut self.buckets[(slice % BUCKETS as u64) as usize];
        if b.slice != slice {
            *b = Bucket {
                slice,
                attempts: 0,
                failures: 0,
            };
        }
        b.attempts += 1;
        b.failures += u32::from(!success);
    }

    /// Attempts and failures in the window ending at `now`.
    fn window(&mut self, now: Instant) -> (u32, u32) {
        let slice = self.slice_of(now);
        self.buckets
            .iter()
            .filter(|b| b.slice + (BUCKETS as u64) > slice && b.slice <= slice)
            .fold((0, 0), |(a, f), b| (a + b.attempts, f + b.failures))
    }

    fn should_open(&mut self, now: Instant) -> bool {
        let (attempts, failures) = self.window(now);
        attempts >= self.config.min_requests
            && f64::from(failures) >= self.config.failure_ratio * f64::from(attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig::parse("ratio=0.5,window=1s,min=4,open=2s,probes=2").expect("spec")
    }

    fn attempt(b: &mut CircuitBreaker, now: Instant, ok: bool) -> Admission {
        let a = b.admit(now);
        b.record(now, a, ok);
        a
    }

    #[test]
    fn specs_parse_over_the_defaults_and_name_the_bad_key() {
        assert_eq!(
            BreakerConfig::parse("").expect("empty"),
            BreakerConfig::default()
        );
        let c = BreakerConfig::parse("ratio=25%, open=500ms").expect("spec");
        assert!((c.failure_ratio - 0.25).abs() < 1e-12);
        assert_eq!(c.open_for, Duration::from_millis(500));
        assert_eq!(c.min_requests, 20);
        for bad in [
            "ratio=0",
            "ratio=2",
            "window=0s",
            "min=0",
            "probes=x",
            "colour=red",
            "open",
        ] {
            let err = BreakerConfig::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("--circuit-breaker"), "{err}");
        }
    }

    #[test]
    fn opens_only_over_enough_attempts_at_the_ratio() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        // Three failures of three: below min=4, stays closed.
        for _ in 0..3 {
            assert_eq!(attempt(&mut b, t, false), Admission::Allowed);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // The fourth makes 4 of 4 ≥ 50 %.
        attempt(&mut b, t, false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert_eq!(
            b.admit(t + Duration::from_millis(1999)),
            Admission::ShortCircuited
        );
        assert_eq!(b.counters().opened, 1);
    }

    #[test]
    fn successes_keep_it_closed_and_old_failures_slide_out() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..3 {
            attempt(&mut b, t, false);
        }
        // 1.5 s later the three failures have left the 1 s window: one more fails, 1 of 1.
        let later = t + Duration::from_millis(1500);
        for _ in 0..3 {
            attempt(&mut b, later, true);
        }
        attempt(&mut b, later, false);
        // 1 failure of 4 < 50 %.
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_probes_close_it_or_open_it_again() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..4 {
            attempt(&mut b, t, false);
        }
        let t2 = t + Duration::from_secs(2);
        let p1 = b.admit(t2);
        let p2 = b.admit(t2);
        assert_eq!((p1, p2), (Admission::Probe, Admission::Probe));
        // Both probes out: further attempts are refused.
        assert_eq!(b.admit(t2), Admission::ShortCircuited);
        b.record(t2, p1, true);
        b.record(t2, p2, false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(attempt(&mut b, t3, true), Admission::Probe);
        assert_eq!(attempt(&mut b, t3, true), Admission::Probe);
        assert_eq!(b.state(), BreakerState::Closed);
        let c = b.counters();
        assert_eq!((c.opened, c.closed, c.probes), (2, 1, 4));
        assert_eq!(c.short_circuited, 1);
        // Closed with an empty window: one failure does not reopen it.
        attempt(&mut b, t3, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn every_admission_is_counted_once() {
        // A pseudo-random stream of outcomes and times: allowed + probes + short-circuited
        // equals the number of admits.
        let t = Instant::now();
        let mut b = CircuitBreaker::new(cfg());
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let n = 5000u64;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let now = t + Duration::from_millis(i * 3);
            attempt(&mut b, now, !x.is_multiple_of(3));
        }
        let c = b.counters();
        assert_eq!(c.allowed + c.probes + c.short_circuited, n);
    }
}
