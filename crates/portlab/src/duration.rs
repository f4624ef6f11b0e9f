//! One duration vocabulary for every command's flags: the `humantime` grammar (`30s`, `500ms`,
//! `1.5s`, `2m30s`, `1h 30m`, `250us`), which also reads every duration Go's `time.ParseDuration`
//! accepts in practice (`-z 10s`, `-z 3m`, `1h30m`), plus a bare number taken in the flag's
//! default unit (`-t 20` is 20 seconds, as in hey; `--latency 2` is 2 ms in `model`).

use std::time::Duration;

/// Longest duration any flag accepts: 10⁷ s (about 116 days) — beyond it `Instant` arithmetic
/// and per-second timelines stop making sense.
pub const MAX: Duration = Duration::from_secs(10_000_000);

/// The unit of a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds (`-z 30`, `-t 20`, `--interval 1`).
    Secs,
    /// Milliseconds (`--latency 2`, `--delay 5`).
    Millis,
}

/// Parses `text` as a duration: humantime's grammar, or a bare (decimal) number in `bare`.
///
/// # Errors
/// One line naming the text and giving examples, for empty, malformed, negative or
/// out-of-range (> [`MAX`]) input.
pub fn parse(text: &str, bare: Unit) -> Result<Duration, String> {
    let t = text.trim();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let value: f64 = t
            .parse()
            .map_err(|_| format!("cannot parse {text:?} as a duration (e.g. 30s, 500ms, 2m)"))?;
        let secs = match bare {
            Unit::Secs => value,
            Unit::Millis => value / 1e3,
        };
        Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is out of range"))?
    } else {
        humantime::parse_duration(t).map_err(|e| {
            format!("cannot parse {text:?} as a duration ({e}); use e.g. 30s, 500ms, 2m, 1h30m")
        })?
    };
    if d > MAX {
        return Err(format!(
            "{text:?} is out of range (at most {})",
            humantime::format_duration(MAX)
        ));
    }
    Ok(d)
}

/// [`parse`] with bare numbers in seconds — the `value_parser` of most duration flags.
///
/// # Errors
/// As [`parse`].
pub fn secs(text: &str) -> Result<Duration, String> {
    parse(text, Unit::Secs)
}

/// [`secs`], refusing zero (for intervals and timeouts that must be positive).
///
/// # Errors
/// As [`parse`], or when the duration is zero.
pub fn positive_secs(text: &str) -> Result<Duration, String> {
    let d = secs(text)?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than 0"));
    }
    Ok(d)
}

/// `--batch-wait` of `load` and `proxy` (io_uring's batched waits): [`parse`] with bare numbers
/// in milliseconds, at most [`portlab_load::MAX_BATCH_WAIT`] (100 ms); zero is allowed (off).
///
/// # Errors
/// As [`parse`], or when the duration is longer than 100 ms.
pub fn batch_wait(text: &str) -> Result<Duration, String> {
    let d = parse(text, Unit::Millis)?;
    if d > portlab_load::MAX_BATCH_WAIT {
        return Err(format!("{text:?} is more than 100ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let ok = |t: &str, u, d: Duration| assert_eq!(parse(t, u), Ok(d), "{t}");
        ok("30s", Unit::Secs, Duration::from_secs(30));
        ok("500ms", Unit::Secs, Duration::from_millis(500));
        ok("2m", Unit::Secs, Duration::from_secs(120));
        ok("1h30m", Unit::Secs, Duration::from_secs(5400));
        ok("1h 30m", Unit::Secs, Duration::from_secs(5400));
        ok("1.5s", Unit::Secs, Duration::from_millis(1500));
        ok("250us", Unit::Secs, Duration::from_micros(250));
        ok("5", Unit::Secs, Duration::from_secs(5));
        ok("0.25", Unit::Secs, Duration::from_millis(250));
        ok("2", Unit::Millis, Duration::from_millis(2));
        ok("0", Unit::Secs, Duration::ZERO);
        for bad in ["", "5x", "abc", "-1s", "1e3", "200d"] {
            assert!(parse(bad, Unit::Secs).is_err(), "{bad}");
        }
        assert!(positive_secs("0s").is_err());
    }
}
