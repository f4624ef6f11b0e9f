//! Fault injection and response delays for the target server, drawn from a seeded hash of
//! (seed, connection number, request number) so that a run is reproducible request by request
//! whatever the scheduling of connections over threads.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// A fault the server can inject instead of a normal response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Close with `SO_LINGER` 0: the client sees a TCP RST (ECONNRESET).
    Reset,
    /// Send bytes that are not HTTP, then close.
    Garbage,
    /// Never answer: keep the connection open and read until the client gives up.
    Stall,
    /// Send the head and half the body (Content-Length promises all of it), then close.
    CloseMidBody,
}

/// Fractions of requests (0.0–1.0 each, sum ≤ 1.0) that receive each fault.
///
/// Parsed from `reset=0.01,garbage=0.001,stall=0.001,close-mid-body=0.001`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FaultSpec {
    /// Fraction answered with a TCP reset.
    pub reset: f64,
    /// Fraction answered with garbage bytes.
    pub garbage: f64,
    /// Fraction never answered.
    pub stall: f64,
    /// Fraction whose body is cut in the middle.
    pub close_mid_body: f64,
}

/// A `--fault` or `--delay` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `name=value` with an unknown name.
    #[error("unknown fault `{0}` (expected reset, garbage, stall or close-mid-body)")]
    UnknownFault(String),
    /// A part that is not `name=value` or a value that is not a fraction in 0..=1.
    #[error("bad fault `{0}`: expected NAME=FRACTION with FRACTION between 0 and 1")]
    BadFraction(String),
    /// The fractions add up to more than 1.
    #[error("fault fractions add up to more than 1")]
    SumAboveOne,
    /// A delay that is not `MS` or `MIN..MAX` (milliseconds, MIN ≤ MAX).
    #[error("bad delay `{0}`: expected MS or MIN..MAX in milliseconds")]
    BadDelay(String),
}

impl FaultSpec {
    /// Parses `reset=0.01,garbage=0.001,stall=0.001,close-mid-body=0.001` (any subset, any order).
    ///
    /// # Errors
    /// [`SpecError`] naming the part that is wrong.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut spec = FaultSpec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| SpecError::BadFraction(part.to_string()))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| SpecError::BadFraction(part.to_string()))?;
            match name.trim() {
                "reset" => spec.reset = value,
                "garbage" => spec.garbage = value,
                "stall" => spec.stall = value,
                "close-mid-body" | "close_mid_body" => spec.close_mid_body = value,
                other => return Err(SpecError::UnknownFault(other.to_string())),
            }
        }
        if spec.total() > 1.0 + 1e-9 {
            return Err(SpecError::SumAboveOne);
        }
        Ok(spec)
    }

    /// Sum of all fractions.
    pub fn total(&self) -> f64 {
        self.reset + self.garbage + self.stall + self.close_mid_body
    }

    /// True when no fault is configured (the server skips the draw entirely).
    pub fn is_none(&self) -> bool {
        self.total() <= 0.0
    }

    /// The fault for a uniform draw `u` in [0, 1), if any.
    fn pick(&self, u: f64) -> Option<Fault> {
        let mut edge = self.reset;
        if u < edge {
            return Some(Fault::Reset);
        }
        edge += self.garbage;
        if u < edge {
            return Some(Fault::Garbage);
        }
        edge += self.stall;
        if u < edge {
            return Some(Fault::Stall);
        }
        edge += self.close_mid_body;
        if u < edge {
            return Some(Fault::CloseMidBody);
        }
        None
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reset={},garbage={},stall={},close-mid-body={}",
            self.reset, self.garbage, self.stall, self.close_mid_body
        )
    }
}

/// A response delay: fixed (`min_ms == max_ms`) or uniform in `min_ms..=max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DelayRange {
    /// Smallest delay, milliseconds.
    pub min_ms: u64,
    /// Largest delay, milliseconds.
    pub max_ms: u64,
}

impl DelayRange {
    /// Parses `MS` or `MIN..MAX` (milliseconds).
    ///
    /// # Errors
    /// [`SpecError::BadDelay`].
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadDelay(text.to_string());
        let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
        let (min_ms, max_ms) = match text.split_once("..") {
            Some((lo, hi)) => (number(lo)?, number(hi.trim_start_matches('='))?),
            None => {
                let ms = number(text)?;
                (ms, ms)
            }
        };
        if min_ms > max_ms {
            return Err(bad());
        }
        Ok(DelayRange { min_ms, max_ms })
    }

    fn pick(&self, draw: u64) -> Duration {
        let span = self.max_ms - self.min_ms;
        let ms = if span == 0 {
            self.min_ms
        } else {
            self.min_ms + draw % (span + 1)
        };
        Duration::from_millis(ms)
    }
}

/// Deterministic per-request randomness: the same (seed, connection, request) always gives
/// the same draws.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dice {
    seed: u64,
}

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Dice { seed }
    }

    fn draw(&self, conn: u64, request: u64, salt: u64) -> u64 {
        splitmix64(
            self.seed
                ^ splitmix64(conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ splitmix64(request ^ salt)),
        )
    }

    /// The fault for request `request` (1-based) of connection `conn` (1-based, accept order).
    pub(crate) fn fault(&self, spec: &FaultSpec, conn: u64, request: u64) -> Option<Fault> {
        if spec.is_none() {
            return None;
        }
        // 53 random bits → uniform f64 in [0, 1).
        let u = (self.draw(conn, request, 0x0F) >> 11) as f64 / (1u64 << 53) as f64;
        spec.pick(u)
    }

    /// The delay before answering request `request` of connection `conn`.
    pub(crate) fn delay(&self, range: &DelayRange, conn: u64, request: u64) -> Duration {
        range.pick(self.draw(conn, request, 0xD1))
    }
}

/// SplitMix64 finalizer (Steele, Lea, Flood 2014): a cheap, well-mixed 64-bit hash.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_spec() {
        let spec =
            FaultSpec::parse("reset=0.01,garbage=0.001,stall=0.002,close-mid-body=0.003").unwrap();
        assert_eq!(spec.reset, 0.01);
        assert_eq!(spec.garbage, 0.001);
        assert_eq!(spec.stall, 0.002);
        assert_eq!(spec.close_mid_body, 0.003);
        assert!(matches!(
            FaultSpec::parse("boom=0.1"),
            Err(SpecError::UnknownFault(_))
        ));
        assert!(matches!(
            FaultSpec::parse("reset=2"),
            Err(SpecError::BadFraction(_))
        ));
        assert!(matches!(
            FaultSpec::parse("reset"),
            Err(SpecError::BadFraction(_))
        ));
        assert_eq!(
            FaultSpec::parse("reset=0.6,stall=0.6"),
            Err(SpecError::SumAboveOne)
        );
    }

    #[test]
    fn parses_delay() {
        assert_eq!(
            DelayRange::parse("5").unwrap(),
            DelayRange {
                min_ms: 5,
                max_ms: 5
            }
        );
        assert_eq!(
            DelayRange::parse("5..20").unwrap(),
            DelayRange {
                min_ms: 5,
                max_ms: 20
            }
        );
        assert!(DelayRange::parse("20..5").is_err());
        assert!(DelayRange::parse("x").is_err());
    }

    #[test]
    fn fault_fractions_hold_over_many_draws() {
        let spec = FaultSpec {
            reset: 0.1,
            garbage: 0.2,
            ..FaultSpec::default()
        };
        let dice = Dice::new(42);
        let mut resets = 0;
        let mut garbage = 0;
        for conn in 1..=100 {
            for req in 1..=100 {
                match dice.fault(&spec, conn, req) {
                    Some(Fault::Reset) => resets += 1,
                    Some(Fault::Garbage) => garbage += 1,
                    Some(other) => panic!("unexpected {other:?}"),
                    None => {}
                }
            }
        }
        assert!((800..1200).contains(&resets), "resets {resets}");
        assert!((1700..2300).contains(&garbage), "garbage {garbage}");
    }

    #[test]
    fn delays_stay_in_range() {
        let range = DelayRange {
            min_ms: 3,
            max_ms: 7,
        };
        let dice = Dice::new(1);
        let seen: std::collections::BTreeSet<_> = (1..200)
            .map(|r| dice.delay(&range, 1, r).as_millis())
            .collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
    }
}
