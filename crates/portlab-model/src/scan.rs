//! The slow-connect cliff: the port search of `connect()` without `bind()` and what it costs
//! as one destination's pool fills.
//!
//! Linux picks the source port of an unbound `connect()` in `__inet_hash_connect()`
//! (net/ipv4/inet_hashtables.c; research `port-allocation.md` §1.6). [`PortWalk`] is that
//! function for one destination, step for step:
//!
//! - `remaining` is the range's size rounded down to even; the start is
//!   `offset = (table_perturb[index] + hash) % remaining`, made even (`offset &= ~1`);
//! - first pass: ports `low + offset, +2, +4, …` (wrapping by `remaining`), i.e. the ports of
//!   `low`'s parity; then `offset + 1` and the same walk over the other parity;
//! - a port whose bind bucket belongs to `connect()` and whose 4-tuple towards this destination
//!   is still in TIME_WAIT is skipped (with `tcp_tw_reuse` 0 `check_established()` refuses it);
//!   a port with no bucket is taken;
//! - on success the per-destination cursor advances:
//!   `table_perturb[index] += max(i, get_random_u32_below(8) * 2) + 2`, `i` being the position
//!   (in ports, steps of 2) where the pass found the port. So a churn fill is sequential behind
//!   the cursor, with random gaps of up to 14 ports, and below half a connect scans about one
//!   port; past half every connect walks all ports of the first parity before the second pass.
//!
//! Cost: [`ScanCost`] — a base connect latency plus a fixed cost per skipped port. The per-port
//! cost is that of a TIME_WAIT-held port: since Linux 6.15 (Eric Dumazet, "tcp: use RCU
//! lookup in __inet_hash_connect()", net-next 2025-03) the lock-free pre-check finds the
//! 4-tuple in TIME_WAIT, *breaks out* to the locked path (`spin_lock_bh` on the bind-hash
//! bucket, then `__inet_check_established()` again under the ehash lock) and only then moves
//! on, so a TIME_WAIT-held port costs both lookups. A port held by `bind()` (bucket
//! `fastreuse >= 0`) or by a live connection is skipped by the RCU pre-check alone and costs
//! less; the model does not cover those.
//!
//! [`fill_curve`] predicts connect p50 and closed-loop (one worker, `Connection: close`)
//! requests/s at given fills; [`slow_connect_cliff`] gives the fill at which connect() slows
//! by a factor (10× in `portlab model`).

use serde::Serialize;

use crate::sim::SplitMix64;
use crate::{ModelError, PortRange};

/// The cost of one `connect()` and one request, as a function of the ports its port search
/// skipped.
///
/// Calibrated by `scripts/calibrate-connect-scan.sh` on Linux 6.18 (loopback, release build
/// of portlab, quiet 2-core machine); see docs/model.md, "The slow-connect cliff".
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScanCost {
    /// Connect latency (SYN to established, as `portlab load` measures it) when the search
    /// takes the first port it tries, in microseconds.
    pub connect_base_us: f64,
    /// Extra connect latency per TIME_WAIT-held port the search skips, in microseconds, for a
    /// short walk (what the ports cost while they stay in the CPU caches).
    pub per_port_us: f64,
    /// The same per-port cost for a walk far longer than [`ScanCost::per_port_scale_ports`],
    /// in microseconds: a long walk touches more bind buckets and TIME_WAIT sockets than the
    /// caches hold, so each port costs a memory access or more.
    pub per_port_max_us: f64,
    /// The walk length, in ports, over which the mean per-port cost rises from
    /// `per_port_us` towards `per_port_max_us`: over a walk of `s` ports the mean is
    /// `max − (max − per_port) × e^(−s / scale)`.
    pub per_port_scale_ports: f64,
    /// The rest of one closed-loop `Connection: close` request (send, server, response, close),
    /// in microseconds.
    pub request_us: f64,
    /// What the rest of a request costs more after a long walk, in microseconds: the walk
    /// evicted from the CPU caches what the request path uses (on the lab machine a 1 MiB L2
    /// per core, about 300 bytes of bind bucket, TIME_WAIT socket and hash buckets touched per
    /// skipped port), so the send, the server and the close run cold. It rises with the walk
    /// as `request_cold_us × (1 − e^(−s / COLD_SCALE_PORTS))`: nothing below half full (a
    /// connect skips about one port), all of it past half.
    pub request_cold_us: f64,
}

/// The walk length, in ports, over which [`ScanCost::request_cold_us`] sets in: a walk of a
/// few thousand TIME_WAIT-held ports touches more than a 1 MiB L2 cache holds.
pub const COLD_SCALE_PORTS: f64 = 1_000.0;

impl ScanCost {
    /// Linux 6.18 on loopback, measured on the project's 2-core lab machine: base and request
    /// time from quiet calibration runs at low fill (connect p50 34–52 µs, median 41;
    /// 4,984–7,046 req/s, median ≈ 6,300); the per-port cost from one quiet calibration run
    /// past half full (`scripts/calibrate-connect-scan.sh`, 2026-12-01 13:20: the median
    /// connect over 50–90 % fill was 1.10 ms for 5,000 first-parity ports and 5.44 ms for
    /// 15,000, i.e. 0.203 and 0.357 µs per port) and a churn fill past half (55,001 ports:
    /// 11.2–11.5 ms for 27,500, 0.41 µs per port), fitted by the three constants; the short-
    /// walk cost, 0.024 µs, is what a bind()-held port costs (0.025–0.036 µs measured by
    /// `PERPORT=1`). The next run, not used in the fit, is the check (docs/model.md). The
    /// cold request, 135 µs, from the quiet run of 15:31 (REPEAT=3): past half, a request
    /// (1 / req/s − connect p50) took 84–138 µs (median 128) more than at 0 % with 10,000
    /// ports and 95–172 µs (median 143) with 30,000, whatever the walk's length.
    pub const LINUX_LOOPBACK: ScanCost = ScanCost {
        connect_base_us: 41.0,
        per_port_us: 0.024,
        per_port_max_us: 0.426,
        per_port_scale_ports: 8_500.0,
        request_us: 118.0,
        request_cold_us: 135.0,
    };

    /// Mean cost of one skipped port over a walk of `skipped` ports, in microseconds.
    pub fn mean_per_port_us(&self, skipped: f64) -> f64 {
        let rise = (-skipped / self.per_port_scale_ports).exp();
        self.per_port_max_us - (self.per_port_max_us - self.per_port_us) * rise
    }

    /// Connect latency after skipping `skipped` ports, in microseconds:
    /// `base + skipped × mean_per_port_us(skipped)`.
    pub fn connect_us(&self, skipped: f64) -> f64 {
        self.connect_base_us + skipped * self.mean_per_port_us(skipped)
    }

    /// Skipped ports that make a connect cost `extra_us` more than the base (the inverse of
    /// [`ScanCost::connect_us`], which grows with `skipped`); infinite when skipping costs
    /// nothing.
    pub fn skipped_for_extra(&self, extra_us: f64) -> f64 {
        if extra_us <= 0.0 {
            return 0.0;
        }
        if self.per_port_max_us <= 0.0 {
            return f64::INFINITY;
        }
        let extra = |s: f64| s * self.mean_per_port_us(s);
        let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
        while extra(hi) < extra_us {
            hi *= 2.0;
        }
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if extra(mid) < extra_us {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// The rest of a request after a walk of `skipped` ports, in microseconds:
    /// `request_us + request_cold_us × (1 − e^(−skipped / COLD_SCALE_PORTS))`.
    pub fn request_after_us(&self, skipped: f64) -> f64 {
        self.request_us + self.request_cold_us * (1.0 - (-skipped / COLD_SCALE_PORTS).exp())
    }

    /// Closed-loop requests per second (one worker) when a connect takes `connect_us` after
    /// skipping `skipped` ports: `1e6 / (connect_us + request_after_us(skipped))`.
    pub fn requests_per_sec(&self, connect_us: f64, skipped: f64) -> f64 {
        1e6 / (connect_us + self.request_after_us(skipped))
    }

    /// Checks that every figure is finite, the base and request time positive and the
    /// per-port cost not negative.
    ///
    /// # Errors
    /// [`ModelError::InvalidWorkload`] naming the bad figure.
    pub fn validate(&self) -> Result<(), ModelError> {
        let ok = |v: f64, zero_ok: bool| v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0));
        if !ok(self.connect_base_us, false) {
            return Err(ModelError::InvalidWorkload(
                "connect base must be a positive number of microseconds".into(),
            ));
        }
        if !ok(self.per_port_us, true) {
            return Err(ModelError::InvalidWorkload(
                "per-port scan cost must be zero or more microseconds".into(),
            ));
        }
        if !(ok(self.per_port_max_us, true) && self.per_port_max_us >= self.per_port_us) {
            return Err(ModelError::InvalidWorkload(
                "the long-walk per-port cost must be at least the short-walk one".into(),
            ));
        }
        if !ok(self.per_port_scale_ports, false) {
            return Err(ModelError::InvalidWorkload(
                "the per-port cost's scale must be a positive number of ports".into(),
            ));
        }
        if !ok(self.request_us, false) {
            return Err(ModelError::InvalidWorkload(
                "request time must be a positive number of microseconds".into(),
            ));
        }
        if !ok(self.request_cold_us, true) {
            return Err(ModelError::InvalidWorkload(
                "the cold request's extra time must be zero or more microseconds".into(),
            ));
        }
        Ok(())
    }
}

impl Default for ScanCost {
    fn default() -> Self {
        Self::LINUX_LOOPBACK
    }
}

/// One port search of [`PortWalk::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The port taken.
    pub port: u16,
    /// Taken ports the search passed over before it.
    pub skipped: u32,
    /// 1 when the first-parity pass found it, 2 for the other parity.
    pub pass: u8,
}

/// `__inet_hash_connect()` for one destination: the ports held towards it and the kernel's
/// per-destination cursor (`table_perturb[index]` plus the destination's hash).
///
/// Ports are held until [`release`](Self::release)d (a TIME_WAIT entry lasts 60 s; a fill and
/// its measurement take seconds, so nothing expires). Bitsets per parity make a walk over
/// taken ports cost one word per 64 ports.
#[derive(Debug, Clone)]
pub struct PortWalk {
    low: u16,
    /// Ports in the range (`high - low + 1`).
    ports: u32,
    /// The kernel's `remaining`: `ports` rounded down to even (when above 1).
    remaining: u32,
    /// Held ports by parity of `port - low`, indexed by `(port - low) / 2`.
    held: [Vec<u64>; 2],
    held_count: u32,
    perturb: u32,
    hash: u32,
    rng: SplitMix64,
}

impl PortWalk {
    /// An empty pool over `range`; `seed` draws the destination's hash, the cursor's start
    /// and the kernel's random cursor increments.
    pub fn new(range: PortRange, seed: u64) -> Self {
        let ports = range.len();
        let remaining = if ports > 1 { ports & !1 } else { ports };
        let words = |n: u32| vec![0u64; (n as usize).div_ceil(64)];
        let mut rng = SplitMix64(seed ^ 0x005E_EDC0_DE0F_5CA4);
        let hash = rng.next_u64() as u32;
        let perturb = rng.next_u64() as u32;
        Self {
            low: range.low,
            ports,
            remaining,
            held: [words(ports.div_ceil(2)), words(ports / 2)],
            held_count: 0,
            perturb,
            hash,
            rng,
        }
    }

    /// Ports in the range.
    pub fn ports(&self) -> u32 {
        self.ports
    }

    /// Ports held now.
    pub fn held(&self) -> u32 {
        self.held_count
    }

    /// Ports of the first pass's parity (that of the range's low end).
    pub fn first_parity_ports(&self) -> u32 {
        self.ports.div_ceil(2)
    }

    fn slot(&self, port: u16) -> Option<(usize, usize)> {
        let x = u32::from(port).checked_sub(u32::from(self.low))?;
        (x < self.ports).then_some(((x & 1) as usize, (x / 2) as usize))
    }

    /// Whether `port` is held.
    pub fn is_held(&self, port: u16) -> bool {
        self.slot(port)
            .is_some_and(|(c, i)| self.held[c][i / 64] >> (i % 64) & 1 == 1)
    }

    /// Holds `port` without a search, as a socket pinned by `IP_LOCAL_PORT_RANGE` of one
    /// port does; returns false when it is outside the range or already held.
    pub fn hold(&mut self, port: u16) -> bool {
        match self.slot(port) {
            Some((c, i)) if self.held[c][i / 64] >> (i % 64) & 1 == 0 => {
                self.held[c][i / 64] |= 1 << (i % 64);
                self.held_count += 1;
                true
            }
            _ => false,
        }
    }

    /// Frees `port` (its TIME_WAIT entry expired, or the connection closed without one).
    pub fn release(&mut self, port: u16) {
        if let Some((c, i)) = self.slot(port) {
            if self.held[c][i / 64] >> (i % 64) & 1 == 1 {
                self.held[c][i / 64] &= !(1 << (i % 64));
                self.held_count -= 1;
            }
        }
    }

    /// First free slot in `class` among `len` slots from `start`, as an offset from `start`.
    fn first_free(&self, class: usize, start: usize, len: usize) -> Option<usize> {
        let bits = &self.held[class];
        let mut i = start;
        let end = start + len;
        while i < end {
            let word = !bits[i / 64] >> (i % 64);
            let room = (64 - i % 64).min(end - i);
            let masked = if room == 64 {
                word
            } else {
                word & ((1u64 << room) - 1)
            };
            if masked != 0 {
                return Some(i - start + masked.trailing_zeros() as usize);
            }
            i += room;
        }
        None
    }

    /// One pass from `offset`: the visit index of the first free port and its port number.
    fn pass(&self, offset: u32) -> Option<(u32, u16)> {
        let visits = self.remaining.div_ceil(2);
        // Segment 1: offset, offset+2, … while below the range's end.
        let first = visits.min((self.ports - offset).div_ceil(2));
        let class = (offset & 1) as usize;
        if let Some(k) = self.first_free(class, (offset / 2) as usize, first as usize) {
            let x = offset + 2 * k as u32;
            return Some((k as u32, self.low + x as u16));
        }
        // Segment 2: the kernel wrapped `port -= remaining` and goes on in steps of 2.
        let rest = visits - first;
        if rest == 0 {
            return None;
        }
        let x0 = offset + 2 * first - self.remaining;
        let k = self.first_free((x0 & 1) as usize, (x0 / 2) as usize, rest as usize)?;
        let x = x0 + 2 * k as u32;
        Some((first + k as u32, self.low + x as u16))
    }

    /// One unbound `connect()` towards the destination: searches as the kernel does, holds the
    /// port found and advances the cursor; `None` is EADDRNOTAVAIL (every port held).
    pub fn connect(&mut self) -> Option<Scan> {
        let mut offset = self.perturb.wrapping_add(self.hash) % self.remaining;
        offset &= !1;
        let visits = self.remaining.div_ceil(2);
        let (k, port, pass) = match self.pass(offset) {
            Some((k, port)) => (k, port, 1u8),
            None if self.remaining > 1 => {
                offset += 1;
                let (k, port) = self.pass(offset)?;
                (k, port, 2u8)
            }
            None => return None,
        };
        let skipped = if pass == 1 { k } else { visits + k };
        self.advance(2 * k);
        self.hold(port);
        Some(Scan {
            port,
            skipped,
            pass,
        })
    }

    /// `i = max_t(int, i, get_random_u32_below(8) * 2); table_perturb[index] += i + 2;`
    fn advance(&mut self, i: u32) {
        let noise = (self.rng.next_u64() % 8) as u32 * 2;
        self.perturb = self.perturb.wrapping_add(i.max(noise) + 2);
    }

    /// The literal kernel loop (one port at a time, no bitset tricks), for tests that check
    /// [`connect`](Self::connect) against it. Same effects as `connect`.
    #[doc(hidden)]
    pub fn connect_brute_force(&mut self) -> Option<Scan> {
        let low = u32::from(self.low);
        let high = low + self.ports; // exclusive, as after the kernel's `high++`
        let remaining = self.remaining;
        let mut offset = self.perturb.wrapping_add(self.hash) % remaining;
        offset &= !1;
        let mut skipped = 0;
        let mut pass = 1u8;
        loop {
            let mut port = low + offset;
            let mut i = 0;
            while i < remaining {
                if port >= high {
                    port -= remaining;
                }
                if !self.is_held(port as u16) {
                    self.advance(i);
                    self.hold(port as u16);
                    return Some(Scan {
                        port: port as u16,
                        skipped,
                        pass,
                    });
                }
                skipped += 1;
                i += 2;
                port += 2;
            }
            offset += 1;
            if offset & 1 == 1 && remaining > 1 && pass == 1 {
                pass = 2;
                continue;
            }
            return None;
        }
    }
}

/// How the pool was filled before the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FillOrder {
    /// As a churn of unbound connects fills it: each port found by the kernel's search from
    /// the cursor (sequential with small random gaps; all first-parity ports before any other).
    Kernel,
    /// Ports of the first parity taken at random, then ports of the other parity at random
    /// (ports pinned one by one, e.g. with `IP_LOCAL_PORT_RANGE`).
    Random,
}

impl std::str::FromStr for FillOrder {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kernel" => Ok(Self::Kernel),
            "random" => Ok(Self::Random),
            other => Err(ModelError::InvalidWorkload(format!(
                "unknown fill order {other:?}: expected kernel or random"
            ))),
        }
    }
}

/// What [`fill_curve`] predicts for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillQuery {
    /// The ephemeral-port range (one destination's pool).
    pub range: PortRange,
    /// Fills to predict for, in percent of the range (0 ≤ fill < 100).
    pub fills_pct: Vec<f64>,
    /// How the pool was filled.
    pub order: FillOrder,
    /// The cost constants.
    pub cost: ScanCost,
    /// Measured connects per fill point (each holds its port only while it lasts, as with
    /// `Connection: close`); the p50 is over these.
    pub probes: u32,
    /// Seed of the destination hash, cursor and random choices.
    pub seed: u64,
}

impl FillQuery {
    /// The usual grid: fills 10, 20, … 90 %, kernel order, calibrated cost, 301 probes.
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            fills_pct: (1..=9).map(|i| f64::from(i) * 10.0).collect(),
            order: FillOrder::Kernel,
            cost: ScanCost::default(),
            probes: 301,
            seed: 1,
        }
    }
}

/// The prediction at one fill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillPoint {
    /// Fill in percent of the range.
    pub fill_pct: f64,
    /// Ports held (TIME_WAIT entries towards the destination) before the measurement.
    pub held_ports: u32,
    /// Median of the ports each measured connect skipped.
    pub skipped_p50: f64,
    /// Mean of the ports each measured connect skipped.
    pub skipped_mean: f64,
    /// Predicted connect latency p50, in microseconds.
    pub connect_us: f64,
    /// Predicted mean connect latency, in microseconds.
    pub connect_mean_us: f64,
    /// Predicted closed-loop requests/s with one worker and `Connection: close`
    /// (1 / (mean connect + request time)).
    pub requests_per_sec: f64,
    /// `connect_us` over the empty pool's connect latency.
    pub slowdown: f64,
}

/// [`fill_curve`]'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillCurve {
    /// Ports in the range.
    pub ports: u32,
    /// Ports of the first pass's parity: past this many held, every connect walks them all.
    pub first_parity_ports: u32,
    /// How the pool was filled.
    pub order: FillOrder,
    /// The cost constants used.
    pub cost: ScanCost,
    /// Measured connects per point.
    pub probes: u32,
    /// Seed used.
    pub seed: u64,
    /// One entry per requested fill, in the order given.
    pub points: Vec<FillPoint>,
    /// Where connect() slows by 10×.
    pub cliff: Cliff,
}

/// Predicts connect latency and closed-loop requests/s at each fill of `q`: per point a fresh
/// pool is filled (in `q.order`) and `q.probes` connects are measured, each releasing its port
/// before the next (the server closes first, so the measurement adds no TIME_WAIT).
///
/// # Errors
/// [`ModelError::InvalidWorkload`] for a fill outside 0 ≤ fill < 100, no probes or a bad cost.
pub fn fill_curve(q: &FillQuery) -> Result<FillCurve, ModelError> {
    q.cost.validate()?;
    if q.probes == 0 {
        return Err(ModelError::InvalidWorkload(
            "give at least one probe connect".into(),
        ));
    }
    if let Some(bad) = q
        .fills_pct
        .iter()
        .find(|f| !(f.is_finite() && (0.0..100.0).contains(*f)))
    {
        return Err(ModelError::InvalidWorkload(format!(
            "fill {bad} % is outside 0 ≤ fill < 100"
        )));
    }
    let ports = q.range.len();
    let points = q
        .fills_pct
        .iter()
        .enumerate()
        .map(|(n, &fill)| {
            let held = ((f64::from(ports) * fill / 100.0).round() as u32).min(ports - 1);
            let seed = q.seed.wrapping_add(n as u64).wrapping_mul(0x9E37_79B9);
            let mut walk = filled(q.range, held, q.order, seed);
            let mut skipped: Vec<u32> = (0..q.probes)
                .filter_map(|_| {
                    let s = walk.connect()?;
                    walk.release(s.port);
                    Some(s.skipped)
                })
                .collect();
            skipped.sort_unstable();
            let p50 = median(&skipped);
            let mean = skipped.iter().map(|&s| f64::from(s)).sum::<f64>() / skipped.len() as f64;
            let connect_us = q.cost.connect_us(p50);
            let connect_mean_us = q.cost.connect_us(mean);
            FillPoint {
                fill_pct: fill,
                held_ports: held,
                skipped_p50: p50,
                skipped_mean: mean,
                connect_us,
                connect_mean_us,
                requests_per_sec: q.cost.requests_per_sec(connect_mean_us, mean),
                slowdown: connect_us / q.cost.connect_base_us,
            }
        })
        .collect();
    Ok(FillCurve {
        ports,
        first_parity_ports: ports.div_ceil(2),
        order: q.order,
        cost: q.cost,
        probes: q.probes,
        seed: q.seed,
        points,
        cliff: slow_connect_cliff(q.range, &q.cost, 10.0),
    })
}

fn median(sorted: &[u32]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        f64::from(sorted[n / 2])
    } else {
        (f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0
    }
}

/// A pool over `range` with `held` ports taken in `order`.
pub fn filled(range: PortRange, held: u32, order: FillOrder, seed: u64) -> PortWalk {
    let mut walk = PortWalk::new(range, seed);
    let held = held.min(walk.ports());
    match order {
        FillOrder::Kernel => {
            for _ in 0..held {
                if walk.connect().is_none() {
                    break;
                }
            }
        }
        FillOrder::Random => {
            let mut rng = SplitMix64(seed ^ 0xF111_0D3E);
            let low = u32::from(range.low);
            let mut left = held;
            for parity in 0..2u32 {
                let mut class: Vec<u32> = (parity..walk.ports()).step_by(2).collect();
                let take = left.min(class.len() as u32) as usize;
                // Partial Fisher–Yates: the first `take` entries are a uniform sample.
                for i in 0..take {
                    let j = i + (rng.next_u64() % (class.len() - i) as u64) as usize;
                    class.swap(i, j);
                    walk.hold((low + class[i]) as u16);
                }
                left -= take as u32;
            }
        }
    }
    walk
}

/// Why and where connect() slows by a factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CliffKind {
    /// Once every first-parity port is held, each connect walks them all: the step at half
    /// full alone reaches the factor.
    AtHalf,
    /// The step at half is smaller; the factor is reached in the second pass as the other
    /// parity fills too (estimate: randomly placed ports).
    NearFull,
    /// Even the last free port costs less than the factor.
    Never,
}

/// Where connect() slows by [`factor`](Self::factor) compared with an empty pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cliff {
    /// The slowdown asked about (10 in `portlab model`).
    pub factor: f64,
    /// Which case applies.
    pub kind: CliffKind,
    /// Fill (percent of the range) from which connect p50 is at least `factor` × the empty
    /// pool's; `None` with [`CliffKind::Never`].
    pub fill_pct: Option<f64>,
    /// Held ports at that fill.
    pub held_ports: Option<u32>,
    /// Skipped ports that cost `factor` × the base connect.
    pub skipped_for_factor: f64,
    /// Smallest range whose step at half full reaches the factor.
    pub min_ports_for_step: u32,
    /// Connect latency once all first-parity ports are held, in microseconds.
    pub past_half_connect_us: f64,
}

/// The fill at which connect p50 is `factor` × the empty pool's, with the kernel's fill order:
/// just past half full when the first-parity walk alone costs that much
/// (`connect_us(ports/2) ≥ factor × base`), otherwise an estimate in the second pass.
pub fn slow_connect_cliff(range: PortRange, cost: &ScanCost, factor: f64) -> Cliff {
    let ports = range.len();
    let first = ports.div_ceil(2);
    let second = ports - first;
    let need = cost.skipped_for_extra((factor - 1.0) * cost.connect_base_us);
    let min_ports_for_step = if need.is_finite() {
        (2.0 * need.ceil()).min(f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    };
    let past_half_connect_us = cost.connect_us(f64::from(first));
    let (kind, held) = if f64::from(first) >= need {
        (CliffKind::AtHalf, Some(first))
    } else if second > 0 && f64::from(ports - 1) >= need {
        // Second pass over `second` ports of which `f` are free at random: the median run to
        // the first free one is about ln 2 × (second + 1) / (f + 1) ports.
        let run = need - f64::from(first);
        let free = ((std::f64::consts::LN_2 * f64::from(second + 1) / run) - 1.0)
            .floor()
            .clamp(1.0, f64::from(second));
        (CliffKind::NearFull, Some(ports - free as u32))
    } else {
        (CliffKind::Never, None)
    };
    Cliff {
        factor,
        kind,
        fill_pct: held.map(|h| 100.0 * f64::from(h) / f64::from(ports)),
        held_ports: held,
        skipped_for_factor: need,
        min_ports_for_step,
        past_half_connect_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(low: u16, n: u32) -> PortRange {
        PortRange::new(low, (u32::from(low) + n - 1) as u16).unwrap()
    }

    #[test]
    fn the_walk_matches_the_literal_kernel_loop() {
        for &n in &[1u32, 2, 3, 4, 5, 7, 64, 65, 127, 130, 1001, 1024] {
            for seed in 0..8u64 {
                let r = range(40000, n);
                let mut fast = PortWalk::new(r, seed);
                let mut slow = PortWalk::new(r, seed);
                // Random pins first (holes anywhere), then connects until the pool is full,
                // with a few releases on the way.
                let mut rng = SplitMix64(seed);
                for _ in 0..n / 3 {
                    let p = 40000 + (rng.next_u64() % u64::from(n)) as u16;
                    fast.hold(p);
                    slow.hold(p);
                }
                for step in 0..(2 * n + 4) {
                    let a = fast.connect();
                    let b = slow.connect_brute_force();
                    assert_eq!(a, b, "n={n} seed={seed} step={step}");
                    if step % 7 == 3 {
                        if let Some(s) = a {
                            fast.release(s.port);
                            slow.release(s.port);
                        }
                    }
                }
                // With an odd range `remaining` is one short, and a pass from some offsets
                // never reaches the top port (the literal loop agrees): full but for one.
                let full = if n % 2 == 0 || n == 1 { n } else { n - 1 };
                assert!(fast.held() >= full, "n={n}: held {}", fast.held());
                if fast.held() == n {
                    assert_eq!(fast.connect(), None, "EADDRNOTAVAIL on a full pool");
                }
            }
        }
    }

    #[test]
    fn even_ports_fill_first_and_then_every_connect_walks_them() {
        let r = range(40000, 1000);
        let mut w = PortWalk::new(r, 3);
        for _ in 0..500 {
            let s = w.connect().unwrap();
            assert_eq!(s.port % 2, 0, "first pass takes low's parity");
            assert_eq!(s.pass, 1);
        }
        let s = w.connect().unwrap();
        assert_eq!((s.pass, s.skipped, s.port % 2), (2, 500, 1));
    }

    #[test]
    fn below_half_a_kernel_fill_scans_about_one_port() {
        let mut q = FillQuery::new(range(40000, 10_000));
        q.fills_pct = vec![10.0, 40.0, 50.0, 90.0];
        let c = fill_curve(&q).unwrap();
        assert!(c.points[0].skipped_p50 <= 1.0, "{:?}", c.points[0]);
        assert!(c.points[1].skipped_p50 <= 3.0, "{:?}", c.points[1]);
        for p in &c.points[2..] {
            assert!(p.skipped_p50 >= 5000.0, "{p:?}");
            assert!(p.slowdown > 15.0, "{p:?}");
        }
        assert_eq!(c.cliff.kind, CliffKind::AtHalf);
        assert_eq!(c.cliff.fill_pct, Some(50.0));
    }

    #[test]
    fn a_random_fill_below_half_scans_a_geometric_run() {
        let mut q = FillQuery::new(range(40000, 10_000));
        q.order = FillOrder::Random;
        q.fills_pct = vec![45.0];
        let c = fill_curve(&q).unwrap();
        // 4,500 of 5,000 even ports held at random: about 10 ports per free one.
        let p = &c.points[0];
        assert!((4.0..=14.0).contains(&p.skipped_mean), "{p:?}");
    }

    #[test]
    fn small_ranges_reach_ten_times_late_or_never() {
        let cost = ScanCost::default();
        let big = slow_connect_cliff(range(32768, 28_232), &cost, 10.0);
        assert_eq!(big.kind, CliffKind::AtHalf);
        assert_eq!(big.fill_pct, Some(50.0));
        let step = big.min_ports_for_step;
        assert!((4500..6500).contains(&step), "{step}");
        let mid = slow_connect_cliff(range(40000, step * 3 / 4), &cost, 10.0);
        assert_eq!(mid.kind, CliffKind::NearFull);
        assert!(mid.fill_pct.unwrap() > 90.0, "{mid:?}");
        let small = slow_connect_cliff(range(40000, 500), &cost, 10.0);
        assert_eq!(small.kind, CliffKind::Never);
    }

    #[test]
    fn a_request_after_a_long_walk_runs_cold_and_below_half_it_does_not() {
        let cost = ScanCost::default();
        // Below half a connect skips about one port: the request costs what it costs at 0 %.
        assert!((cost.request_after_us(1.0) - cost.request_us) < 0.2);
        // Past half (5,000 ports or more skipped) all of the cold term is there.
        let cold = cost.request_after_us(5_000.0) - cost.request_us;
        assert!((cold - cost.request_cold_us).abs() < 1.0, "{cold}");
        let past = cost.requests_per_sec(cost.connect_us(5_000.0), 5_000.0);
        let without = 1e6 / (cost.connect_us(5_000.0) + cost.request_us);
        assert!(past < without * 0.92, "{past} vs {without}");
        let no_cold = ScanCost {
            request_cold_us: 0.0,
            ..cost
        };
        assert!(no_cold.validate().is_ok());
        let negative = ScanCost {
            request_cold_us: -1.0,
            ..cost
        };
        assert!(negative.validate().is_err());
    }

    #[test]
    fn bad_fills_are_refused() {
        let mut q = FillQuery::new(range(40000, 100));
        q.fills_pct = vec![100.0];
        assert!(fill_curve(&q).is_err());
        q.fills_pct = vec![f64::NAN];
        assert!(fill_curve(&q).is_err());
    }
}
