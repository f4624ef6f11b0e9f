//! Splitting one load over N agents: [`Segment`] `I/N` (0-based, as Kubernetes numbers an
//! Indexed Job's pods in `JOB_COMPLETION_INDEX`) takes an exact, deterministic share of the
//! request count (`-n`), the connections (`-c`) and the global rate (`--rate`), such that the N
//! shares add up to the whole and no agent gets zero when the total allows.
//!
//! The arithmetic: a total `T` over `N` agents gives `T / N` to each and one more to the first
//! `T mod N` agents. Rates are split the same way in units of 1/1000 request per second, so the
//! shares add up to the whole rate to the milli-request. hey's `-q` is a rate per connection:
//! each agent keeps it, and its share of the total (`-q × -c`) follows from its share of `-c`.

use crate::config::{LoadConfig, RateLimit};

/// Agent `index` of `count` (0-based): `--segment 2/4` is the third of four agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// This agent's number, `0..count` (Kubernetes' `JOB_COMPLETION_INDEX`).
    pub index: u32,
    /// How many agents share the load.
    pub count: u32,
}

/// A segment that cannot be parsed or applied; each message is one line naming the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Not of the form `I/N`.
    #[error("bad segment {0:?}: use I/N with 0 <= I < N, e.g. --segment 0/4 (numbered like JOB_COMPLETION_INDEX)")]
    Malformed(String),
    /// `I` is not below `N`, or `N` is 0.
    #[error("segment {index}/{count} is out of range: the index runs from 0 to {max} (numbered like JOB_COMPLETION_INDEX)", max = count.saturating_sub(1))]
    OutOfRange {
        /// The index given.
        index: u32,
        /// The count given.
        count: u32,
    },
    /// A total too small to give every agent a share (e.g. `-c 2` over 4 agents).
    #[error("{what} {total} cannot be split over {count} agents: each agent needs at least {min}; raise {what} or use fewer segments")]
    TooSmall {
        /// The flag (`-n`, `-c`, `--rate`).
        what: &'static str,
        /// Its value.
        total: String,
        /// The number of agents.
        count: u32,
        /// The least each agent needs.
        min: String,
    },
}

/// Rates are split in these units per request/s (milli-requests per second).
const RATE_UNITS: f64 = 1000.0;

impl Segment {
    /// Builds a segment, checking `index < count`.
    ///
    /// # Errors
    /// [`SegmentError::OutOfRange`].
    pub fn new(index: u32, count: u32) -> Result<Segment, SegmentError> {
        if index < count {
            Ok(Segment { index, count })
        } else {
            Err(SegmentError::OutOfRange { index, count })
        }
    }

    /// Parses `I/N`.
    ///
    /// # Errors
    /// [`SegmentError::Malformed`] or [`SegmentError::OutOfRange`].
    pub fn parse(text: &str) -> Result<Segment, SegmentError> {
        let malformed = || SegmentError::Malformed(text.to_string());
        let (i, n) = text.trim().split_once('/').ok_or_else(malformed)?;
        let index = i.trim().parse().map_err(|_| malformed())?;
        let count = n.trim().parse().map_err(|_| malformed())?;
        Segment::new(index, count)
    }

    /// This agent's share of `total`: `total / count`, plus one for the first `total % count`
    /// agents. The shares of all agents add up to `total`.
    pub fn share(&self, total: u64) -> u64 {
        let n = u64::from(self.count);
        total / n + u64::from(u64::from(self.index) < total % n)
    }

    /// This agent's share of a rate in requests/s, split exactly in milli-requests per second.
    pub fn share_rate(&self, per_sec: f64) -> f64 {
        let units = (per_sec * RATE_UNITS).round().max(0.0) as u64;
        self.share(units) as f64 / RATE_UNITS
    }

    /// Rewrites `config` to this agent's share: `-n` (count mode), `-c` and `--rate`; `-q`,
    /// `-z` and everything else stay as given.
    ///
    /// # Errors
    /// [`SegmentError::TooSmall`] when a total leaves an agent with nothing: fewer connections
    /// than agents, fewer requests than connections, or less than 0.001 request/s.
    pub fn apply(&self, config: &mut LoadConfig) -> Result<(), SegmentError> {
        let too_small = |what, total: String, min: &str| SegmentError::TooSmall {
            what,
            total,
            count: self.count,
            min: min.to_string(),
        };
        let count = u64::from(self.count);
        let concurrency = config.concurrency as u64;
        if concurrency < count {
            return Err(too_small("-c", concurrency.to_string(), "one connection"));
        }
        let my_concurrency = self.share(concurrency);
        if config.duration.is_none() {
            // Every agent's -n must cover its -c. Both shares give the extra one to the first
            // agents, so n_i >= c_i for all i exactly when n/N > c/N, or when they are equal
            // and no more agents get an extra connection than get an extra request.
            let (n_each, n_extra) = (config.requests / count, config.requests % count);
            let (c_each, c_extra) = (concurrency / count, concurrency % count);
            if n_each < c_each || (n_each == c_each && c_extra > n_extra) {
                return Err(too_small(
                    "-n",
                    config.requests.to_string(),
                    "one request per connection",
                ));
            }
            config.requests = self.share(config.requests);
        }
        if let RateLimit::Global { per_sec } = config.rate {
            let share = self.share_rate(per_sec);
            if (per_sec * RATE_UNITS).round() < count as f64 {
                return Err(too_small("--rate", per_sec.to_string(), "0.001 request/s"));
            }
            config.rate = RateLimit::Global { per_sec: share };
        }
        config.concurrency = my_concurrency as usize;
        Ok(())
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(count: u32) -> impl Iterator<Item = Segment> {
        (0..count).map(move |index| Segment { index, count })
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Segment::parse("2/4"), Ok(Segment { index: 2, count: 4 }));
        assert_eq!(
            Segment::parse(" 0 / 1 "),
            Ok(Segment { index: 0, count: 1 })
        );
        assert!(matches!(
            Segment::parse("4/4"),
            Err(SegmentError::OutOfRange { .. })
        ));
        assert!(matches!(
            Segment::parse("0/0"),
            Err(SegmentError::OutOfRange { .. })
        ));
        for bad in ["", "1", "a/4", "1/b", "-1/4", "1/4/2"] {
            assert!(
                matches!(Segment::parse(bad), Err(SegmentError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn forty_thousand_over_four() {
        let shares: Vec<u64> = all(4).map(|s| s.share(40_000)).collect();
        assert_eq!(shares, [10_000; 4]);
        let shares: Vec<u64> = all(4).map(|s| s.share(10)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        let rates: Vec<f64> = all(3).map(|s| s.share_rate(1000.0)).collect();
        assert_eq!(rates, [333.334, 333.333, 333.333]);
    }

    #[test]
    fn apply_splits_counts_and_rate_and_refuses_too_small() {
        let config = LoadConfig {
            requests: 10_001,
            concurrency: 50,
            rate: RateLimit::Global { per_sec: 4000.0 },
            ..LoadConfig::default()
        };
        let mut requests = 0;
        let mut concurrency = 0;
        let mut rate = 0.0;
        for s in all(4) {
            let mut c = config.clone();
            s.apply(&mut c).expect("fits");
            requests += c.requests;
            concurrency += c.concurrency;
            if let RateLimit::Global { per_sec } = c.rate {
                rate += per_sec;
            }
        }
        assert_eq!((requests, concurrency, rate), (10_001, 50, 4000.0));
        let mut small = LoadConfig {
            concurrency: 3,
            ..LoadConfig::default()
        };
        let err = Segment::new(0, 4).unwrap().apply(&mut small).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("-c 3 cannot be split over 4 agents"));
        // n >= c always splits (both shares favour the first agents); n < c never does.
        let mut few = LoadConfig {
            requests: 6,
            concurrency: 7,
            ..LoadConfig::default()
        };
        assert!(Segment::new(2, 4).unwrap().apply(&mut few).is_err());
    }

    proptest! {
        /// Shares add up to the whole, differ by at most one, and none is zero when
        /// total >= count.
        #[test]
        fn shares_sum_to_the_whole(total in 0u64..1_000_000_000_000, count in 1u32..2000) {
            let shares: Vec<u64> = all(count).map(|s| s.share(total)).collect();
            prop_assert_eq!(shares.iter().sum::<u64>(), total);
            let (lo, hi) = (shares.iter().min().copied().unwrap_or(0), shares.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1);
            if total >= u64::from(count) {
                prop_assert!(lo >= 1);
            }
        }

        /// Rate shares add up to the rate, to the milli-request per second.
        #[test]
        fn rate_shares_sum_to_the_rate(milli in 1u64..100_000_000_000, count in 1u32..500) {
            let rate = milli as f64 / 1000.0;
            let sum_units: u64 = all(count).map(|s| (s.share_rate(rate) * 1000.0).round() as u64).sum();
            prop_assert_eq!(sum_units, milli);
        }

        /// Applied to a config, -n, -c and the total -q x -c add up over the agents, every
        /// agent can run (n_i >= c_i >= 1), and the result is the same every time.
        #[test]
        fn applied_shares_add_up(n in 1u64..10_000_000, c in 1usize..5000, count in 1u32..64, q in 1u32..1000) {
            let config = LoadConfig {
                requests: n,
                concurrency: c,
                rate: RateLimit::PerWorker { per_sec: f64::from(q) },
                ..LoadConfig::default()
            };
            let fits = all(count).all(|s| s.share(c as u64) >= 1 && s.share(n) >= s.share(c as u64));
            let mut sum_n = 0;
            let mut sum_c = 0;
            let mut sum_q = 0.0;
            for s in all(count) {
                let mut mine = config.clone();
                let result = s.apply(&mut mine);
                prop_assert_eq!(result.is_ok(), fits);
                if result.is_err() {
                    return Ok(());
                }
                let mut again = config.clone();
                s.apply(&mut again).expect("deterministic");
                prop_assert_eq!((again.requests, again.concurrency), (mine.requests, mine.concurrency));
                prop_assert!(mine.concurrency >= 1 && mine.requests >= mine.concurrency as u64);
                sum_n += mine.requests;
                sum_c += mine.concurrency;
                if let RateLimit::PerWorker { per_sec } = mine.rate {
                    sum_q += per_sec * mine.concurrency as f64;
                }
            }
            prop_assert_eq!(sum_n, n);
            prop_assert_eq!(sum_c, c);
            prop_assert_eq!(sum_q, f64::from(q) * c as f64);
        }
    }
}
